//! The codec: serde in multiproc's format, descriptors carried alongside.
//!
//! Every value that crosses a process boundary goes through here, so the format can be
//! changed in one place. It is postcard 1.x's documented format with integers wider
//! than a byte written whole (`wire/encoder.rs` says why), written and read by an
//! encoder and a decoder of our own (`wire/decoder.rs`), held against postcard's in
//! tests and fuzzing. The decoder returns errors (never panics) on malformed input and
//! bounds its preallocation by what the input can hold.

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;

use super::decoder::Decoder;
use super::encoder;
use crate::sys::{self, BorrowedFd, OwnedFd};

/// A value could not be encoded or decoded for another process.
///
/// Arguments and return values travel as [serde](https://serde.rs) data; this is the
/// error when a `Serialize` implementation fails, or when the bytes that arrive do not
/// decode as the expected type (for instance, the two sides disagree on the type, or
/// the type's `Deserialize` needs a self-describing format: see the crate's
/// documentation, "Processes").
/// [`source`](std::error::Error::source) is serde's own error, when there is one in
/// this process (a failure reported by another process comes as its message only).
#[derive(Clone, Debug)]
pub struct CodecError {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl CodecError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        CodecError {
            message: message.into(),
            source: None,
        }
    }

    /// An error described by `message` and caused by `source`.
    pub(crate) fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CodecError {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Two errors are equal when they say the same thing (the source is not compared: it
/// explains the message, and a copy received from another process has none).
impl PartialEq for CodecError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for CodecError {}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An encoded value: its bytes and the descriptors that travel with it.
///
/// A handle that is counted in shared memory while it exists (a channel's receiving
/// end: its senders see "disconnected" when the count falls to 0) adds one count as it
/// is encoded, for the copy on its way; the decode that makes that copy takes the count
/// over. One encoding holds one count for one decode: a copy made with
/// [`try_clone`](Self::try_clone) adds its own, and an encoding kept to be copied (sent
/// or decoded more than once) is held in a [`Kept`], which gives its count back when
/// dropped. `counts` names what this encoding added, in this process (empty for one
/// that came from another process).
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) counts: Counts,
}

impl Encoded {
    /// An encoding with no descriptors (so no counted handle).
    pub(crate) fn plain(bytes: Vec<u8>) -> Encoded {
        Encoded {
            bytes,
            fds: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// A copy, with duplicates of the descriptors and counts of its own for the decode
    /// it is for.
    pub(crate) fn try_clone(&self) -> std::io::Result<Encoded> {
        let mut fds = Vec::with_capacity(self.fds.len());
        for fd in &self.fds {
            fds.push(sys::dup(sys::AsFd::as_fd(fd))?);
        }
        Ok(Encoded {
            bytes: self.bytes.clone(),
            fds,
            counts: self.counts.again(),
        })
    }

    /// Drops an encoding that no decode will see (a send that failed), giving back the
    /// counts it holds.
    pub(crate) fn discard(self) {
        self.counts.give_back();
    }

    /// Its bytes, if it holds no descriptors (plain data, for where handles cannot go:
    /// a manager, another machine); otherwise `None`, and the encoding is discarded.
    pub(crate) fn into_plain(self) -> Option<Vec<u8>> {
        if self.fds.is_empty() {
            Some(self.bytes)
        } else {
            self.discard();
            None
        }
    }
}

/// A count kept in shared memory while a handle exists (a channel's receivers): an
/// encoding of the handle holds one for the decode it is on its way to.
pub(crate) trait InFlight: Send + Sync {
    fn add(&self);
    fn give_back(&self);
}

/// The counts an encoding holds (see [`Encoded`]).
#[derive(Default, Clone)]
pub(crate) struct Counts(Vec<Arc<dyn InFlight>>);

impl Counts {
    /// As many counts again, for another copy.
    pub(crate) fn again(&self) -> Counts {
        for c in &self.0 {
            c.add();
        }
        self.clone()
    }

    /// Gives the counts back (the copy they were for will not be decoded).
    pub(crate) fn give_back(self) {
        for c in &self.0 {
            c.give_back();
        }
    }
}

impl fmt::Debug for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counts({})", self.0.len())
    }
}

/// An encoding kept to be sent or decoded more than once (a pool's job, kept until the
/// task ends to send it again; a retried argument): every use is a
/// [`try_clone`](Encoded::try_clone) with counts of its own, and the encoding's own
/// counts are given back when it is dropped, in the process that made it.
#[derive(Debug)]
pub(crate) struct Kept {
    encoded: Encoded,
    pid: u32,
}

impl Kept {
    pub(crate) fn new(encoded: Encoded) -> Kept {
        Kept {
            encoded,
            pid: sys::process_id(),
        }
    }
}

impl Kept {
    /// The copy this encoding was made for is on its way to its one decode (a child's
    /// call, sent): its counts go with it.
    pub(crate) fn hand_over(mut self) {
        drop(std::mem::take(&mut self.encoded.counts));
    }
}

impl std::ops::Deref for Kept {
    type Target = Encoded;
    fn deref(&self) -> &Encoded {
        &self.encoded
    }
}

impl std::ops::DerefMut for Kept {
    fn deref_mut(&mut self) -> &mut Encoded {
        &mut self.encoded
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // A forked child that drops a copy it inherited gives nothing back.
        if self.pid == sys::process_id() {
            std::mem::take(&mut self.encoded.counts).give_back();
        }
    }
}

/// An encoded value travels inside another one as its bytes and its descriptors, each
/// descriptor through the outer message's list (as handles' descriptors do). Its counts
/// (see [`Encoded`]) go with it, not added to the outer encoding's: an outer encoding
/// that holds one must be decoded once at most (a worker's start arguments are), or be
/// made again for each use.
impl Serialize for Encoded {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&BytesRef(&self.bytes))?;
        let mut indices = Vec::with_capacity(self.fds.len());
        for fd in &self.fds {
            indices.push(pass_fd(sys::AsFd::as_fd(fd)).map_err(serde::ser::Error::custom)?);
        }
        t.serialize_element(&indices)?;
        t.end()
    }
}

impl<'de> serde::Deserialize<'de> for Encoded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (bytes, indices): (Bytes, Vec<u32>) = serde::Deserialize::deserialize(d)?;
        let mut fds = Vec::with_capacity(indices.len());
        for i in indices {
            fds.push(take_fd(i).map_err(refuse::<D::Error>)?);
        }
        Ok(Encoded {
            bytes: bytes.0,
            fds,
            counts: Counts::default(),
        })
    }
}

/// Borrowed bytes written as one serde byte string (not a sequence of numbers).
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Bytes that serde encodes as one block rather than element by element.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(Visit)
    }
}

/// Where a handle's descriptors go while a value is encoded on this thread.
enum Outgoing {
    /// Into the message (with the counts its handles added: see [`Encoded`]).
    Collect(Vec<OwnedFd>, Counts),
    /// Nowhere: only counted (measuring a value, or writing one known to have none).
    Count(usize),
}

thread_local! {
    /// Descriptors of the value being encoded on this thread, if one is.
    static OUTGOING: RefCell<Option<Outgoing>> = const { RefCell::new(None) };
    /// Whether `OUTGOING` holds a context: a cheap check for the fast path.
    static ENCODING: Cell<bool> = const { Cell::new(false) };
    /// Descriptors of the value being decoded on this thread, if one is.
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    /// Whether the value being serialized on this thread is only measured, not sent.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Whether the value being decoded on this thread came with no descriptors (then
    /// `INCOMING` is not set up for it: see [`decode_seed`]).
    static NO_FDS: Cell<bool> = const { Cell::new(false) };
}

/// Touches this thread's coding state, so that the thread-locals that need a destructor
/// are registered. The fork server calls it once: the children it forks inherit the
/// registration rather than each making it (a walk of the loader's tables) on its first
/// encode and decode.
pub(crate) fn register_thread_state() {
    OUTGOING.with(|_| ());
    INCOMING.with(|_| ());
}

/// For a handle's `Serialize`: whether this serialization only measures the value (or
/// looks for why it failed), where a handle that is counted as it is sent (a manager
/// proxy) refuses, so that it is encoded in a context that holds its count.
pub(crate) fn measuring() -> bool {
    MEASURING.with(Cell::get)
}

/// Runs `f` as a pass that measures, not sends.
fn measure<R>(f: impl FnOnce() -> R) -> R {
    /// Puts the flag back, also when `f` unwinds (a `Serialize` that panics).
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            MEASURING.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(MEASURING.with(|m| m.replace(true)));
    f()
}

/// For a handle's `Deserialize`: fails the decode for the reason given, which
/// [`decode`] reports.
pub(crate) fn refuse<E: serde::de::Error>(why: impl std::fmt::Display) -> E {
    E::custom(why)
}

/// Runs `f` with an empty outgoing-descriptor list, returning what it collected (and
/// restoring any list of an encode in progress around it).
fn collecting<R>(f: impl FnOnce() -> R) -> (R, (Vec<OwnedFd>, Counts)) {
    match with_outgoing(Outgoing::Collect(Vec::new(), Counts::default()), f) {
        (r, Outgoing::Collect(fds, counts)) => (r, (fds, counts)),
        (r, Outgoing::Count(_)) => (r, Default::default()),
    }
}

fn with_outgoing<R>(sink: Outgoing, f: impl FnOnce() -> R) -> (R, Outgoing) {
    /// Puts back the state of the encode in progress around this one (if any), also
    /// when `f` unwinds (a `Serialize` that panics): the descriptors collected so far
    /// are closed then, not left for the next encode on this thread, and the counts
    /// added are given back.
    struct Restore {
        outer: Option<Option<Outgoing>>,
        was: bool,
    }
    impl Restore {
        /// The collected sink, with the outer state put back.
        fn finish(&mut self) -> Option<Outgoing> {
            let outer = self.outer.take()?;
            OUTGOING.with(|o| {
                o.try_borrow_mut()
                    .ok()
                    .and_then(|mut o| std::mem::replace(&mut *o, outer))
            })
        }
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(Outgoing::Collect(_, counts)) = self.finish() {
                counts.give_back();
            }
            ENCODING.with(|e| e.set(self.was));
        }
    }
    let mut restore = Restore {
        outer: Some(OUTGOING.with(|o| o.borrow_mut().replace(sink))),
        was: ENCODING.with(|e| e.replace(true)),
    };
    let r = f();
    let sink = restore.finish();
    drop(restore);
    (r, sink.unwrap_or(Outgoing::Count(0)))
}

/// The encoded length of a value that carries no descriptors and encodes to at most
/// `most` bytes, measured without encoding it; `None` if it carries some, is longer
/// (found without measuring the rest: a large value is walked once more only up to
/// `most`), does not encode, or an encode is in progress on this thread: then the
/// caller takes the general path.
///
/// Outside an encode, a handle's `Serialize` fails (see [`pass_fd`]), so measuring
/// without any context is itself the test for descriptors.
pub(crate) fn inline_len<T: Serialize + ?Sized>(value: &T, most: usize) -> Option<usize> {
    if ENCODING.with(Cell::get) {
        return None;
    }
    measure(|| encoder::len_up_to(value, most))
}

/// Encodes a value that [`inline_len`] measured into `buf`, which must be exactly that
/// long. False if it did not fit exactly (its encoding changed meanwhile): a pipe's send
/// then leaves the slot unsent and encodes the value the general way.
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> bool {
    let len = buf.len();
    matches!(encoder::to_slice(value, buf), Ok(n) if n == len)
}

/// Encodes a value.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, CodecError> {
    encode_with_prefix(&[], value)
}

/// Encodes a value after `prefix` (a header the caller fills in later), in one buffer.
pub(crate) fn encode_with_prefix<T: Serialize + ?Sized>(
    prefix: &[u8],
    value: &T,
) -> Result<Encoded, CodecError> {
    // Room for a small value past the prefix: growing from exactly the prefix would
    // reallocate on the first byte.
    encode_sized(prefix, value, 64)
}

/// As [`encode_with_prefix`], into a buffer with room for `expect` bytes after the
/// prefix to begin with (the size of a similar value encoded before: growing a buffer
/// as it fills copies a large value about twice over).
pub(crate) fn encode_sized<T: Serialize + ?Sized>(
    prefix: &[u8],
    value: &T,
    expect: usize,
) -> Result<Encoded, CodecError> {
    // A caller that expects a large value (one like it was) goes the general way at
    // once, without measuring the first `PLAIN_MOST` bytes for nothing.
    if let Some(bytes) = (expect <= PLAIN_MOST)
        .then(|| encode_plain(prefix, value))
        .flatten()
    {
        return Ok(Encoded::plain(bytes));
    }
    let mut buf = Vec::with_capacity(prefix.len() + expect);
    buf.extend_from_slice(prefix);
    match collecting(|| encoder::to_vec(value, buf)) {
        (Ok(bytes), (fds, counts)) => Ok(Encoded { bytes, fds, counts }),
        (Err(e), (_, counts)) => {
            counts.give_back();
            Err(CodecError::with_source(
                format!("cannot encode a `{}`: {e}", std::any::type_name::<T>()),
                e,
            ))
        }
    }
}

/// The most bytes [`encode_plain`] measures before it leaves a value to the general
/// path.
const PLAIN_MOST: usize = 4096;

/// `prefix` and the encoding of a small value that holds no descriptor, or `None`. The
/// general path sets up, and takes down, this thread's list for the descriptors of
/// handles in the value (two thread-locals behind `RefCell`s and a guard for unwinds:
/// about as long as encoding a small value itself). A value that measures at most
/// [`PLAIN_MOST`] bytes with no list set up has no such handle (theirs refuses to
/// encode without one), so it is written straight into a buffer of its size, as a
/// pipe's message is written into the ring ([`inline_len`]); measurements are in the
/// channel README ("Codec"). `None` for a larger value (measuring it whole first could
/// cost as much as writing it), one that refuses, and within another encode (whose
/// list a handle must join). A
/// value whose encoding changes between the passes (its `Serialize` reads state that
/// changes) is written as the second pass finds it; one that refuses only in the second
/// pass goes the general way, a third pass, as a message that no longer fits a pipe's
/// ring does.
fn encode_plain<T: Serialize + ?Sized>(prefix: &[u8], value: &T) -> Option<Vec<u8>> {
    if ENCODING.with(Cell::get) {
        return None;
    }
    let len = measure(|| encoder::len_up_to(value, PLAIN_MOST))?;
    let mut buf = Vec::with_capacity(prefix.len() + len);
    buf.extend_from_slice(prefix);
    encoder::to_vec(value, buf).ok()
}

/// Decodes a value of type `T`, handing `fds` to the handles in it; trailing bytes are
/// an error, since they mean the two sides disagree on the type. Descriptors no handle
/// claimed are closed.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, CodecError> {
    decode_seed(std::marker::PhantomData::<T>, bytes, fds)
}

/// As [`decode`], through a `seed` (which may, say, push what it decodes into a vector
/// of the caller's rather than build a value of its own).
pub(crate) fn decode_seed<'de, S: serde::de::DeserializeSeed<'de>>(
    seed: S,
    bytes: &'de [u8],
    fds: Vec<OwnedFd>,
) -> Result<S::Value, CodecError> {
    /// Puts back the descriptors of the decode in progress around this one (if any),
    /// also when a `Deserialize` unwinds: those this decode did not hand out are closed
    /// then, not left for the next decode on this thread.
    struct Restore(Option<Option<Vec<Option<OwnedFd>>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(outer) = self.0.take() {
                INCOMING.with(|i| {
                    if let Ok(mut i) = i.try_borrow_mut() {
                        *i = outer;
                    }
                });
            }
        }
    }
    /// Puts back whether the decode around this one had descriptors.
    struct RestoreNoFds(bool);
    impl Drop for RestoreNoFds {
        fn drop(&mut self) {
            NO_FDS.with(|n| n.set(self.0));
        }
    }
    let what = std::any::type_name::<S::Value>();
    let mut de = Decoder::new(bytes);
    // Most messages carry no descriptor: a flag then says so to any handle in it (it
    // finds its descriptor missing), which costs far less than setting up the list.
    let result = if fds.is_empty() {
        let _no_fds = RestoreNoFds(NO_FDS.with(|n| n.replace(true)));
        seed.deserialize(&mut de)
    } else {
        let _no_fds = RestoreNoFds(NO_FDS.with(|n| n.replace(false)));
        let _restore =
            Restore(Some(INCOMING.with(|i| {
                i.borrow_mut().replace(fds.into_iter().map(Some).collect())
            })));
        seed.deserialize(&mut de)
    };
    let value =
        result.map_err(|e| CodecError::with_source(format!("cannot decode a `{what}`: {e}"), e))?;
    let rest = de.rest();
    if !rest.is_empty() {
        return Err(CodecError::new(format!(
            "cannot decode a `{what}`: {} bytes left over, so the sender's type differs",
            rest.len()
        )));
    }
    Ok(value)
}

/// For a handle's `Serialize`: adds a duplicate of `fd` to the value being encoded and
/// returns its index. Fails outside multiproc's own encoding (a handle written with
/// another serde format could not carry its descriptor).
pub(crate) fn pass_fd(fd: BorrowedFd<'_>) -> Result<u32, String> {
    OUTGOING.with(|o| match o.borrow_mut().as_mut() {
        Some(Outgoing::Count(n)) => {
            *n += 1;
            Ok((*n - 1) as u32)
        }
        Some(Outgoing::Collect(list, _)) if list.len() < sys::MAX_FDS_PER_MESSAGE => {
            let dup = sys::dup(fd).map_err(|e| format!("cannot duplicate a descriptor: {e}"))?;
            list.push(dup);
            Ok((list.len() - 1) as u32)
        }
        Some(Outgoing::Collect(..)) => Err(format!(
            "a message can carry at most {} descriptors",
            sys::MAX_FDS_PER_MESSAGE
        )),
        None => Err(
            "multiproc handles can only be sent through multiproc (spawn arguments, \
                     results, pipes and queues), not encoded with another serde format"
                .into(),
        ),
    })
}

/// For a counted handle's `Serialize`: when the value is really being sent, adds one
/// count for the copy on its way, held by the encoding (see [`Encoded`]). Whether it
/// did: not outside multiproc's own encoding (another serde format), where the caller
/// counts by itself if it must.
pub(crate) fn count_in_flight(count: Arc<dyn InFlight>) -> bool {
    OUTGOING.with(|o| {
        if let Some(Outgoing::Collect(_, counts)) = o.borrow_mut().as_mut() {
            count.add();
            counts.0.push(count);
            true
        } else {
            false
        }
    })
}

/// For a handle's `Deserialize`: takes the descriptor at `index` of the value being
/// decoded. Each index can be taken once.
pub(crate) fn take_fd(index: u32) -> Result<OwnedFd, String> {
    if NO_FDS.with(Cell::get) {
        return Err(missing_fd(index));
    }
    INCOMING.with(|i| match i.borrow_mut().as_mut() {
        Some(list) => match list.get_mut(index as usize) {
            Some(slot) => slot.take().ok_or_else(|| {
                format!(
                    "descriptor {index} of the message is claimed twice (a corrupt or \
                     forged message)"
                )
            }),
            None => Err(missing_fd(index)),
        },
        None => Err("multiproc handles can only be received through multiproc".into()),
    })
}

fn missing_fd(index: u32) -> String {
    format!("descriptor {index} is missing from the message")
}

/// Sends a value through the codec as it travels between processes (its descriptors
/// duplicated, then taken by the decoding side), for unit tests of handles; a failure
/// as its message.
#[cfg(test)]
pub(crate) fn resend<A: Serialize, B: DeserializeOwned>(a: &A) -> Result<B, String> {
    let encoded = encode(a).map_err(|e| e.to_string())?;
    decode(&encoded.bytes, encoded.fds).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Measuring for a ring stops at the ring's limit: a large value is not walked
    /// whole to learn that it is too large.
    #[test]
    fn an_inline_measure_stops_at_its_limit() {
        struct Counted(Cell<usize>);
        impl Serialize for Counted {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.set(self.0.get() + 1);
                s.serialize_u64(u64::MAX)
            }
        }
        let value: Vec<Counted> = (0..100_000).map(|_| Counted(Cell::new(0))).collect();
        let walked = || value.iter().map(|c| c.0.get()).sum::<usize>();
        assert_eq!(inline_len(&value, 1 << 10), None);
        assert!(walked() <= 1 << 10, "{} items measured", walked());
        let small = &value[..10];
        assert_eq!(inline_len(small, 1 << 10), encoder::len_of(small).ok());
    }

    #[test]
    fn custom_serialize_errors_keep_their_message() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no, thank you"))
            }
        }
        let nested = vec![(1u8, Some(Refuses))];
        let e = encode(&nested).unwrap_err();
        assert!(e.message().contains("no, thank you"), "{e}");
        assert!(e.message().contains("Refuses"), "{e}");
    }

    #[test]
    fn descriptors_need_multiproc_encoding() {
        let (r, _w) = sys::pipe().unwrap();
        assert!(pass_fd(sys::AsFd::as_fd(&r)).is_err());
        assert!(take_fd(0).is_err());
        let (index, (fds, _)) = collecting(|| pass_fd(sys::AsFd::as_fd(&r)));
        assert_eq!((index, fds.len()), (Ok(0), 1));
    }

    /// A descriptor in a value, as a handle carries one.
    #[derive(Debug)]
    struct Fd(OwnedFd);

    impl Serialize for Fd {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            pass_fd(sys::AsFd::as_fd(&self.0))
                .map_err(serde::ser::Error::custom)?
                .serialize(s)
        }
    }

    impl<'de> serde::Deserialize<'de> for Fd {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let index = u32::deserialize(d)?;
            take_fd(index).map(Fd).map_err(serde::de::Error::custom)
        }
    }

    /// Whether `a` and `b` are the same open file.
    fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
        sys::file_id(sys::AsFd::as_fd(a)).unwrap() == sys::file_id(sys::AsFd::as_fd(b)).unwrap()
    }

    /// A small value with a descriptor in it is not written the short way (measured
    /// without a descriptor list, it refuses): its descriptor travels with it.
    #[test]
    fn a_small_value_with_a_descriptor_carries_it() {
        let (r, _w) = sys::pipe().unwrap();
        let value = (7u8, Fd(sys::dup(sys::AsFd::as_fd(&r)).unwrap()));
        let encoded = encode(&value).unwrap();
        assert_eq!(encoded.fds.len(), 1);
        let (n, fd) = decode::<(u8, Fd)>(&encoded.bytes, encoded.fds).unwrap();
        assert_eq!(n, 7);
        assert!(same_file(&fd.0, &r));
        let plain = encode(&(7u8, 9u64)).unwrap();
        assert!(plain.fds.is_empty());
        assert_eq!(
            decode::<(u8, u64)>(&plain.bytes, plain.fds).unwrap(),
            (7, 9)
        );
    }

    /// A message that says it holds a descriptor and came without any fails to decode,
    /// saying so.
    #[test]
    fn a_descriptor_missing_from_a_message_is_an_error() {
        let (r, _w) = sys::pipe().unwrap();
        let encoded = encode(&Fd(r)).unwrap();
        let e = decode::<Fd>(&encoded.bytes, Vec::new()).unwrap_err();
        assert!(e.message().contains("descriptor 0 is missing"), "{e}");
    }

    /// A message whose handles claim one descriptor twice (corrupt, or forged) says so:
    /// it said the descriptor was missing, though it came.
    #[test]
    fn a_descriptor_claimed_twice_is_an_error() {
        let (r, w) = sys::pipe().unwrap();
        let mut encoded = encode(&(Fd(r), Fd(w))).unwrap();
        // Each index is a whole little-endian `u32`: the second now names the first.
        assert_eq!(encoded.bytes, [0, 0, 0, 0, 1, 0, 0, 0]);
        encoded.bytes[4] = 0;
        let e = decode::<(Fd, Fd)>(&encoded.bytes, encoded.fds).unwrap_err();
        assert!(
            e.message()
                .contains("descriptor 0 of the message is claimed twice"),
            "{e}"
        );
    }

    /// A value whose `Deserialize` decodes another message (without descriptors) while
    /// its own message's descriptors wait: the inner decode finds its descriptor
    /// missing, and takes none of the outer message's.
    #[test]
    fn a_decode_without_descriptors_inside_one_with_them_takes_none_of_theirs() {
        #[derive(Debug)]
        struct DecodesInner(Result<Fd, CodecError>);
        impl<'de> serde::Deserialize<'de> for DecodesInner {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let inner = Bytes::deserialize(d)?;
                Ok(DecodesInner(decode::<Fd>(&inner.0, Vec::new())))
            }
        }
        let (r, _w) = sys::pipe().unwrap();
        let inner = encode(&Fd(sys::dup(sys::AsFd::as_fd(&r)).unwrap())).unwrap();
        let outer = encode(&(
            Bytes(inner.bytes),
            Fd(sys::dup(sys::AsFd::as_fd(&r)).unwrap()),
        ))
        .unwrap();
        assert_eq!(outer.fds.len(), 1);
        let (nested, fd) = decode::<(DecodesInner, Fd)>(&outer.bytes, outer.fds).unwrap();
        let e = nested.0.unwrap_err();
        assert!(e.message().contains("descriptor 0 is missing"), "{e}");
        assert!(same_file(&fd.0, &r));
    }

    /// The other way round: a message without descriptors whose `Deserialize` decodes
    /// one with a descriptor gets it there, and its own handle, after that decode,
    /// still finds its descriptor missing.
    #[test]
    fn a_decode_with_descriptors_inside_one_without_them_leaves_it_without() {
        #[derive(Debug)]
        struct DecodesInner;
        impl<'de> serde::Deserialize<'de> for DecodesInner {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let inner = Bytes::deserialize(d)?;
                let (r, _w) = sys::pipe().unwrap();
                decode::<Fd>(&inner.0, vec![r])
                    .map(|_: Fd| DecodesInner)
                    .map_err(|e| serde::de::Error::custom(format!("the inner decode: {e}")))
            }
        }
        let (r, _w) = sys::pipe().unwrap();
        let inner = encode(&Fd(sys::dup(sys::AsFd::as_fd(&r)).unwrap())).unwrap();
        let outer = encode(&(Bytes(inner.bytes), Fd(r))).unwrap();
        let e = decode::<(DecodesInner, Fd)>(&outer.bytes, Vec::new()).unwrap_err();
        assert!(!e.message().contains("the inner decode"), "{e}");
        assert!(e.message().contains("descriptor 0 is missing"), "{e}");
    }

    /// A value whose encoding changes from one pass to the next (its `Serialize` sees
    /// state that changes) still comes out whole: as the pass that wrote it saw it.
    #[test]
    fn a_value_whose_encoding_changes_between_passes_comes_out_whole() {
        struct Grows(std::cell::Cell<usize>);
        impl Serialize for Grows {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.set(self.0.get() + 1);
                vec![1u8; self.0.get()].serialize(s)
            }
        }
        let value = Grows(std::cell::Cell::new(0));
        let encoded = encode(&value).unwrap();
        let passes = value.0.get();
        assert!(passes >= 2, "{passes} passes");
        assert_eq!(
            decode::<Vec<u8>>(&encoded.bytes, encoded.fds).unwrap(),
            vec![1u8; passes]
        );
    }

    /// Measuring up to a limit stops soon after the limit, however long the value.
    #[test]
    fn measuring_up_to_a_limit_stops_there() {
        struct Counted<'a>(&'a std::cell::Cell<usize>, usize);
        impl Serialize for Counted<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(Some(self.1))?;
                for i in 0..self.1 {
                    self.0.set(self.0.get() + 1);
                    seq.serialize_element(&(i as u64))?;
                }
                seq.end()
            }
        }
        let looked = std::cell::Cell::new(0);
        assert_eq!(encoder::len_up_to(&Counted(&looked, 1_000_000), 800), None);
        assert!(looked.get() <= 101, "{} elements measured", looked.get());
        let small = Counted(&looked, 10);
        assert_eq!(
            encoder::len_up_to(&small, 800),
            encoder::len_of(&small).ok()
        );
        let big = encode(&Counted(&looked, 100_000)).unwrap();
        assert_eq!(
            decode::<Vec<u64>>(&big.bytes, big.fds).unwrap().len(),
            100_000
        );
    }

    #[test]
    fn mismatched_types_are_errors() {
        let bytes = encode(&(1u32, 2u32, 3u32)).unwrap().bytes;
        assert!(decode::<String>(&bytes, Vec::new()).is_err());
        assert!(decode::<u32>(&bytes, Vec::new()).is_err());
        assert_eq!(
            decode::<(u32, u32, u32)>(&bytes, Vec::new()).unwrap(),
            (1, 2, 3)
        );
    }
}
