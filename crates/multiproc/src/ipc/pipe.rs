//! Typed pipes: [`pipe`] (simplex) and [`duplex`] (Python's `Pipe(duplex=True)`).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::channel::{self, Deadline, RawReceiver, RawSender, RecvFail, SendFail};
use super::{RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError};
use crate::wire::codec;
use crate::wire::codec::CodecError;

/// Sends typed messages into a pipe. Clone it to send from several threads or
/// processes; pass it to [`spawn`](crate::spawn) (or through another pipe or queue) to
/// hand it to another process.
pub struct Sender<T> {
    pub(crate) raw: RawSender,
    _t: PhantomData<fn(T)>,
}

/// Receives typed messages from a pipe. Clone it to receive from several threads or
/// processes (each message goes to exactly one of them).
pub struct Receiver<T> {
    pub(crate) raw: RawReceiver,
    _t: PhantomData<fn() -> T>,
}

/// Creates a pipe: what the [`Sender`] sends, the [`Receiver`] receives, in order, between
/// any threads and processes that hold them.
///
/// Messages travel through shared memory (a 4 MiB ring, which bounds what waits in the
/// pipe: `send` waits while it is full); large ones (and ones that carry other
/// multiproc handles) through a side socket, with large bodies in a sealed memory file,
/// each holding room in the ring for its bytes, up to 2 MiB (so at most two messages of
/// over 2 MiB wait at once). A message whose `send` returned `Ok` is delivered even if its sender exits or is
/// killed right after; when every sender is gone, receivers get `Disconnected` once the
/// pipe is empty.
///
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let (tx, rx) = multiproc::pipe::<String>()?;
/// let child = multiproc::spawn(|tx: multiproc::Sender<String>| {
///     tx.send("hello from the child".to_string()).unwrap();
/// }, tx)?;
/// assert_eq!(rx.recv()?, "hello from the child");
/// child.join()?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// The operating system refused shared memory or descriptors.
pub fn pipe<T>() -> std::io::Result<(Sender<T>, Receiver<T>)> {
    let (tx, rx) = channel::channel(channel::DEFAULT_RING, None)?;
    Ok((Sender::from_raw(tx), Receiver::from_raw(rx)))
}

/// Creates a two-way pipe (Python's `Pipe(duplex=True)`): each [`Connection`] sends what
/// the other receives. The first end sends `A` and receives `B`.
///
/// # Errors
///
/// The operating system refused shared memory or descriptors.
pub fn duplex<A, B>() -> std::io::Result<(Connection<A, B>, Connection<B, A>)> {
    let (a_tx, a_rx) = pipe::<A>()?;
    let (b_tx, b_rx) = pipe::<B>()?;
    Ok((
        Connection { tx: a_tx, rx: b_rx },
        Connection { tx: b_tx, rx: a_rx },
    ))
}

impl<T> Sender<T> {
    pub(crate) fn from_raw(raw: RawSender) -> Self {
        Sender {
            raw,
            _t: PhantomData,
        }
    }

    /// Messages waiting in the pipe (an estimate while others send and receive).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every receiver is gone, so nothing sent can be received.
    pub fn is_disconnected(&self) -> bool {
        self.raw.is_disconnected()
    }
}

impl<T: Serialize> Sender<T> {
    /// Sends a message, waiting while the pipe is full.
    ///
    /// Receivers dropped or closed are seen at once (but for a receiving handle sent in
    /// a message that was never decoded: it counts as a receiver until the kernel is
    /// asked, as below). Receivers whose processes were killed cannot say so: a send finds out from the kernel once every 1024 sends
    /// into the pipe from this process and whenever it would wait, so a few sends into
    /// a pipe nobody reads any more can still succeed ([`is_disconnected`](Self::is_disconnected) asks the
    /// kernel each time).
    ///
    /// A small message is serialized straight into the pipe's shared memory, while the
    /// pipe's send lock is held: the value's `Serialize` must not send on the same pipe
    /// (that panics, saying so, rather than wait for ever) nor wait for a thread that
    /// may be sending on it.
    ///
    /// # Errors
    ///
    /// The message comes back: every receiver is gone, it could not be encoded, or the
    /// system refused.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        send_error(send(&self.raw, value, Deadline::Never, false))
    }

    /// Sends a copy of a message the caller keeps: it is encoded straight into the
    /// pipe's shared memory, so a large one is not cloned first. Waits as
    /// [`send`](Self::send) does. A handle in the message (a `Sender`, a `Queue`) is
    /// sent as a copy too, as by `clone` then `send`: the caller's stays open.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); the error holds the reference (so it borrows the
    /// message: `map_err` it, or take [`SendError::into_inner`], to return it further
    /// than the message lives).
    pub fn send_ref<'v>(&self, value: &'v T) -> Result<(), SendError<&'v T>> {
        send_error(send(&self.raw, value, Deadline::Never, false))
    }

    /// Sends a message without blocking the thread: the `async` form of
    /// [`send`](Self::send), usable from any async runtime. It waits for room on the
    /// pipe's doorbell, which receivers ring when they take a message and a sender
    /// waits.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_async(&self, value: T) -> Result<(), SendError<T>> {
        send_error(send_async(&self.raw, value, false).await)
    }

    /// Sends a message if there is room now.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), plus [`TrySendError::Full`].
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        send(&self.raw, value, Deadline::Now, false).map_err(|(v, e)| match e {
            Failed::Full => TrySendError::Full(v),
            Failed::Disconnected => TrySendError::Disconnected(v),
            Failed::Codec(c) => TrySendError::Codec(v, c),
            Failed::Io(io) => TrySendError::Io(v, io),
        })
    }

    /// Sends a message, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), plus [`SendTimeoutError::Timeout`].
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        send(&self.raw, value, Deadline::after(timeout), false).map_err(|(v, e)| match e {
            Failed::Full => SendTimeoutError::Timeout(v),
            Failed::Disconnected => SendTimeoutError::Disconnected(v),
            Failed::Codec(c) => SendTimeoutError::Codec(v, c),
            Failed::Io(io) => SendTimeoutError::Io(v, io),
        })
    }
}

/// Why a typed send failed, before it becomes the caller's error type.
#[derive(Debug)]
pub(crate) enum Failed {
    Full,
    Disconnected,
    Codec(CodecError),
    Io(std::io::Error),
}

/// The error of a send that may wait as long as it takes, from what [`send`] returned.
pub(super) fn send_error<V>(sent: Result<(), (V, Failed)>) -> Result<(), SendError<V>> {
    sent.map_err(|(v, e)| match e {
        Failed::Full | Failed::Disconnected => SendError::Disconnected(v),
        Failed::Codec(c) => SendError::Codec(v, c),
        Failed::Io(io) => SendError::Io(v, io),
    })
}

/// Encodes and sends; `unfinished` counts the message for `JoinableQueue::join`.
///
/// A message without descriptors that fits in the ring is serialized straight into
/// it (its size is measured first); others are encoded and go through the side socket.
pub(crate) fn send<T: Serialize>(
    raw: &RawSender,
    value: T,
    wait: Deadline,
    unfinished: bool,
) -> Result<(), (T, Failed)> {
    let fail = |fail: SendFail| match fail {
        SendFail::Full => Failed::Full,
        SendFail::Disconnected => Failed::Disconnected,
        SendFail::Io(e) => Failed::Io(e),
    };
    if let Some(len) =
        codec::inline_len(&value, raw.inline_most()).filter(|&len| raw.fits_inline(len))
    {
        // A value whose encoding changed size since it was measured (its `Serialize`
        // reads state another thread changes) goes the general way, encoded once.
        let resized = std::cell::Cell::new(false);
        let mut fill = |buf: &mut [u8]| {
            let fits = codec::encode_into(&value, buf);
            resized.set(!fits);
            fits
        };
        match raw.send_inline(len, &mut fill, wait, unfinished) {
            Ok(()) => return Ok(()),
            Err(SendFail::Io(_)) if resized.get() => {}
            Err(e) => return Err((value, fail(e))),
        }
    }
    let encoded = match codec::encode(&value) {
        Ok(e) => e,
        Err(e) => return Err((value, Failed::Codec(e))),
    };
    raw.send(encoded, wait, unfinished).map_err(|(encoded, e)| {
        encoded.discard();
        (value, fail(e))
    })
}

/// Encodes and sends without blocking the thread: waits for room (a bounded channel
/// that is full, a full side socket) on the senders' doorbell through async-io's
/// reactor.
// On other targets nothing can be watched (an uninhabited readiness): what follows the
// wait is unreachable there, and the compiler says the value kept for it is unread.
#[cfg_attr(not(target_os = "linux"), allow(unused_assignments))]
pub(crate) async fn send_async<T: Serialize>(
    raw: &RawSender,
    mut value: T,
    unfinished: bool,
) -> Result<(), (T, Failed)> {
    // One non-blocking try, waiting for the producers' lock only briefly (the thread
    // is the executor's); whether it gave up on that lock rather than found no room.
    let try_send = |value: T| {
        let polling = channel::Polling::begin();
        let sent = send(raw, value, Deadline::Now, unfinished);
        let held = polling.lock_gave_up();
        (sent, held)
    };
    // While the lock stays held (a holder stopped, say), the looks space out, up to the
    // longest sleep.
    let mut held_up = channel::HELD_UP;
    loop {
        let mut held = match try_send(value) {
            (Err((v, Failed::Full)), held) => {
                value = v;
                held
            }
            (done, _) => return done,
        };
        let now = std::time::Instant::now();
        if !held {
            // Counted among the waiting senders (so receivers ring), try once more,
            // then wait for the bell, the receivers' end, or the longest sleep.
            let mut sleeping = raw.sleeping();
            held = match try_send(value) {
                (Err((v, Failed::Full)), held) => {
                    value = v;
                    held
                }
                (done, _) => return done,
            };
            if !held {
                held_up = channel::HELD_UP;
                sleeping.arm(true);
                let woke =
                    crate::sys::readable_any(&raw.writability(), now + channel::MAX_SLEEP).await;
                sleeping.arm(false);
                if let Err(e) = woke {
                    return Err((value, Failed::Io(e)));
                }
                continue;
            }
        }
        // Another producer holds the lock: nobody rings for its release, so the future
        // looks again in a moment.
        if let Err(e) = crate::sys::readable_any(&[], now + held_up).await {
            return Err((value, Failed::Io(e)));
        }
        held_up = (held_up * 2).min(channel::MAX_SLEEP);
    }
}

impl<T> Receiver<T> {
    pub(crate) fn from_raw(raw: RawReceiver) -> Self {
        Receiver {
            raw,
            _t: PhantomData,
        }
    }

    /// Messages waiting in the pipe (an estimate while others send and receive).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a receive failed, before it becomes the caller's error type.
pub(crate) enum Missed {
    Empty,
    Disconnected,
    Codec(CodecError),
    Io(std::io::Error),
}

/// Receives and decodes.
pub(crate) fn recv<T: DeserializeOwned>(raw: &RawReceiver, wait: Deadline) -> Result<T, Missed> {
    let mut decode = |bytes: &[u8], fds| codec::decode::<T>(bytes, fds);
    match raw.recv_with(wait, &mut decode) {
        Ok(decoded) => decoded.map_err(Missed::Codec),
        Err(RecvFail::Empty) => Err(Missed::Empty),
        Err(RecvFail::Disconnected) => Err(Missed::Disconnected),
        Err(RecvFail::Broken(why)) => Err(Missed::Codec(CodecError::new(why))),
        Err(RecvFail::Io(e)) => Err(Missed::Io(e)),
    }
}

/// Receives and decodes without blocking the thread.
// Where nothing can be waited for (other targets), every wait fails and the loop never
// comes round to read the flag reset below.
#[cfg_attr(not(target_os = "linux"), allow(unused_assignments))]
pub(crate) async fn recv_async<T: DeserializeOwned>(raw: &RawReceiver) -> Result<T, Missed> {
    let mut looked_again = false;
    // One non-blocking try, waiting for the consumers' lock only briefly (the thread is
    // the executor's: a lock held up is looked at again after `HELD_UP`, below).
    let try_recv = || {
        let _polling = channel::Polling::begin();
        recv(raw, Deadline::Now)
    };
    loop {
        match try_recv() {
            Err(Missed::Empty) => {}
            done => return done,
        }
        // Counted among the sleepers (so senders ring), look once more, then wait.
        let mut sleeping = raw.sleeping();
        let now = std::time::Instant::now();
        if raw.ready() {
            // Come as it looked: once more at once. Still there and not to be had, it
            // waits a moment, giving the executor its thread back (looking again and
            // again, the future never returned while a stopped process held the
            // message up, and froze a single-threaded runtime).
            if !std::mem::replace(&mut looked_again, true) {
                continue;
            }
            crate::sys::readable_any(&[], now + channel::HELD_UP)
                .await
                .map_err(Missed::Io)?;
            continue;
        }
        looked_again = false;
        sleeping.arm(true);
        let woke = crate::sys::readable_any(&raw.readiness(), now + channel::MAX_SLEEP).await;
        sleeping.arm(false);
        woke.map_err(Missed::Io)?;
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Receives a message, waiting until one arrives or every sender is gone.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] when the pipe is empty and every sender is gone
    /// (dropped, exited or killed); [`RecvError::Codec`] when a message does not decode
    /// as `T` (it is consumed; the next call moves on).
    pub fn recv(&self) -> Result<T, RecvError> {
        recv(&self.raw, Deadline::Never).map_err(|m| match m {
            Missed::Empty | Missed::Disconnected => RecvError::Disconnected,
            Missed::Codec(c) => RecvError::Codec(c),
            Missed::Io(e) => RecvError::Io(e),
        })
    }

    /// Receives a message if one is waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), plus [`TryRecvError::Empty`].
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        recv(&self.raw, Deadline::Now).map_err(|m| match m {
            Missed::Empty => TryRecvError::Empty,
            Missed::Disconnected => TryRecvError::Disconnected,
            Missed::Codec(c) => TryRecvError::Codec(c),
            Missed::Io(e) => TryRecvError::Io(e),
        })
    }

    /// Receives a message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), plus [`RecvTimeoutError::Timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        recv(&self.raw, Deadline::after(timeout)).map_err(|m| match m {
            Missed::Empty => RecvTimeoutError::Timeout,
            Missed::Disconnected => RecvTimeoutError::Disconnected,
            Missed::Codec(c) => RecvTimeoutError::Codec(c),
            Missed::Io(e) => RecvTimeoutError::Io(e),
        })
    }

    /// Receives a message without blocking the thread: the `async` form of
    /// [`recv`](Self::recv), usable from any async runtime.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn recv_async(&self) -> Result<T, RecvError> {
        recv_async(&self.raw).await.map_err(|m| match m {
            Missed::Empty | Missed::Disconnected => RecvError::Disconnected,
            Missed::Codec(c) => RecvError::Codec(c),
            Missed::Io(e) => RecvError::Io(e),
        })
    }

    /// Receives until every sender is gone. The iteration also ends at a message that
    /// does not decode, or a system error; [`recv`](Self::recv) tells which.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// Receives what is waiting now, without blocking.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }
}

/// A blocking iterator over a [`Receiver`]'s messages.
#[derive(Debug)]
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T: DeserializeOwned> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// A non-blocking iterator over a [`Receiver`]'s waiting messages.
#[derive(Debug)]
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T: DeserializeOwned> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

impl<'a, T: DeserializeOwned> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

/// One end of a [`duplex`] pipe: sends `S`, receives `R`.
pub struct Connection<S, R> {
    tx: Sender<S>,
    rx: Receiver<R>,
}

impl<S: Serialize, R: DeserializeOwned> Connection<S, R> {
    /// Sends to the other end. See [`Sender::send`].
    ///
    /// # Errors
    ///
    /// As [`Sender::send`].
    pub fn send(&self, value: S) -> Result<(), SendError<S>> {
        self.tx.send(value)
    }

    /// Receives from the other end. See [`Receiver::recv`].
    ///
    /// # Errors
    ///
    /// As [`Receiver::recv`].
    pub fn recv(&self) -> Result<R, RecvError> {
        self.rx.recv()
    }

    /// See [`Receiver::recv_async`].
    ///
    /// # Errors
    ///
    /// As [`Receiver::recv`].
    pub async fn recv_async(&self) -> Result<R, RecvError> {
        self.rx.recv_async().await
    }

    /// See [`Sender::send_async`].
    ///
    /// # Errors
    ///
    /// As [`Sender::send`].
    pub async fn send_async(&self, value: S) -> Result<(), SendError<S>> {
        self.tx.send_async(value).await
    }

    /// See [`Receiver::try_recv`].
    ///
    /// # Errors
    ///
    /// As [`Receiver::try_recv`].
    pub fn try_recv(&self) -> Result<R, TryRecvError> {
        self.rx.try_recv()
    }

    /// See [`Receiver::recv_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Receiver::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }
}

impl<S, R> Connection<S, R> {
    /// The sending half.
    pub fn sender(&self) -> &Sender<S> {
        &self.tx
    }

    /// The receiving half.
    pub fn receiver(&self) -> &Receiver<R> {
        &self.rx
    }

    /// Both halves.
    pub fn split(self) -> (Sender<S>, Receiver<R>) {
        (self.tx, self.rx)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender::from_raw(self.raw.clone())
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver::from_raw(self.raw.clone())
    }
}

impl<S, R> Clone for Connection<S, R> {
    fn clone(&self) -> Self {
        Connection {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<S, R> fmt::Debug for Connection<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl<T> Serialize for Sender<T> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        self.raw.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawSender::deserialize(d).map(Sender::from_raw)
    }
}

impl<T> Serialize for Receiver<T> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        self.raw.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawReceiver::deserialize(d).map(Receiver::from_raw)
    }
}

impl<S, R> Serialize for Connection<S, R> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        (&self.tx, &self.rx).serialize(s)
    }
}

impl<'de, S, R> Deserialize<'de> for Connection<S, R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (tx, rx) = <(Sender<S>, Receiver<R>)>::deserialize(d)?;
        Ok(Connection { tx, rx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serializes as one more byte each time.
    struct Growing(AtomicUsize);

    impl Serialize for Growing {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            s.collect_seq(std::iter::repeat_n(7u8, n))
        }
    }

    /// A value whose encoding changes size between its measure and its write is sent
    /// as the write found it, not failed.
    #[test]
    fn a_value_that_changes_size_as_it_is_written_is_sent() {
        let (tx, rx) = pipe::<Vec<u8>>().unwrap();
        send(&tx.raw, Growing(AtomicUsize::new(3)), Deadline::Now, false)
            .map_err(|(_, e)| e)
            .expect("sent");
        let got = rx.try_recv().unwrap();
        assert!(got.len() > 3 && got.iter().all(|&b| b == 7), "{got:?}");
    }

    /// A ring another process corrupted fails every receive as `InvalidData`, not as a
    /// message that did not decode (which is consumed, and which a loop may skip: it
    /// spun there for ever).
    #[test]
    fn a_corrupt_ring_is_not_a_message_that_did_not_decode() {
        let (tx, rx) = pipe::<u64>().unwrap();
        tx.send(7).unwrap();
        tx.send(8).unwrap();
        // The first record's kind, one no record has.
        rx.raw.scribble(4, &99u32.to_le_bytes());
        for _ in 0..3 {
            match rx.recv() {
                Err(RecvError::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                    assert!(e.to_string().contains("corrupt"), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Io(_))));
    }
}
