//! Shared objects: a lock, an event, a barrier, a value or an array, each in a segment
//! of its own that starts with a header saying what it is.
//!
//! Every process that maps an object checks the header against what it expects (the
//! kind, and for values and arrays the element type's size, alignment and name) and the
//! segment's size against the header, so a handle decoded as the wrong type, or a named
//! segment that holds something else, is an error rather than memory misread.
//!
//! Objects travel between processes as their memory file's descriptor (see
//! `wire::codec`); anonymous ones are sealed memfds that vanish with their last user.

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ShmError;
use super::layout::ObjectHeader;
use super::named::{self, Name};
use super::segment::{Segment, SharedWords};
use crate::sys;
use crate::wire::codec;

/// What an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    Lock = 1,
    RLock = 2,
    Semaphore = 3,
    Event = 4,
    Condition = 5,
    Barrier = 6,
    Value = 7,
    Array = 8,
    Tickets = 9,
    BoundedSemaphore = 10,
}

impl Kind {
    /// The fewest bytes of words an object of this kind has: a header that claims
    /// fewer would have the object's words overlap its data, or run past the segment.
    fn min_words(self) -> usize {
        use crate::shm::layout::{
            BarrierWords, ConditionWords, EventWords, MutexWords, SemaphoreWords,
        };
        match self {
            Kind::Lock | Kind::RLock | Kind::Value | Kind::Array => {
                std::mem::size_of::<MutexWords>()
            }
            Kind::Semaphore | Kind::BoundedSemaphore => std::mem::size_of::<SemaphoreWords>(),
            Kind::Event => std::mem::size_of::<EventWords>(),
            Kind::Condition => std::mem::size_of::<ConditionWords>(),
            Kind::Barrier => std::mem::size_of::<BarrierWords>(),
            Kind::Tickets => 0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Lock => "Lock",
            Kind::RLock => "RLock",
            Kind::Semaphore => "Semaphore",
            Kind::Event => "Event",
            Kind::Condition => "Condition",
            Kind::Barrier => "Barrier",
            Kind::Value => "Value",
            Kind::Array => "Array",
            Kind::Tickets => "pool ticket table",
            Kind::BoundedSemaphore => "BoundedSemaphore",
        }
    }

    fn from_u32(v: u32) -> Option<Kind> {
        [
            Kind::Lock,
            Kind::RLock,
            Kind::Semaphore,
            Kind::Event,
            Kind::Condition,
            Kind::Barrier,
            Kind::Value,
            Kind::Array,
            Kind::Tickets,
            Kind::BoundedSemaphore,
        ]
        .into_iter()
        .find(|k| *k as u32 == v)
    }
}

/// The element type of a value or array, as the header records it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Elem {
    size: usize,
    align: usize,
    name: &'static str,
}

impl Elem {
    /// Objects without data.
    pub(crate) const NONE: Elem = Elem {
        size: 0,
        align: 1,
        name: "",
    };

    pub(crate) fn of<T>() -> Elem {
        Elem {
            size: std::mem::size_of::<T>(),
            align: std::mem::align_of::<T>(),
            name: std::any::type_name::<T>(),
        }
    }

    /// FNV-1a of the type's name: two programs built from the same source agree on it.
    fn hash(&self) -> u64 {
        if self.name.is_empty() {
            return 0;
        }
        self.name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

/// The shape of an object: what it is, how many bytes of words it has after the
/// header, and its data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) kind: Kind,
    pub(crate) words: usize,
    pub(crate) elem: Elem,
    pub(crate) len: usize,
}

impl Shape {
    /// An object of `kind` with `words` bytes of state and no data.
    pub(crate) fn plain(kind: Kind, words: usize) -> Shape {
        Shape {
            kind,
            words,
            elem: Elem::NONE,
            len: 0,
        }
    }

    /// Right after the words, so that a small value shares the cache line of its lock
    /// (one line moves between processes per locked update, not two).
    fn data_offset(&self) -> Option<usize> {
        let align = self.elem.align.max(16);
        (ObjectHeader::WORDS_OFFSET + self.words)
            .checked_next_multiple_of(align)
            .filter(|_| align.is_power_of_two())
    }

    /// Data offset and total size, or why the object cannot exist.
    fn size(&self) -> Result<(usize, usize), ShmError> {
        let too_big = || {
            ShmError::InvalidArgument(format!(
                "{} of {} elements of {} bytes does not fit in memory",
                self.kind.name(),
                self.len,
                self.elem.size
            ))
        };
        // A mapping is aligned to a page: data aligned to more could not be placed.
        if self.elem.align > MAX_ALIGN {
            return Err(ShmError::InvalidArgument(format!(
                "elements aligned to {} bytes: shared memory aligns data to {MAX_ALIGN} bytes \
                 at most",
                self.elem.align
            )));
        }
        let offset = self.data_offset().ok_or_else(too_big)?;
        let total = self
            .elem
            .size
            .checked_mul(self.len)
            .and_then(|d| d.checked_add(offset))
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(too_big)?;
        Ok((offset, total))
    }
}

/// The most an element may be aligned to: the smallest page (every mapping starts on
/// one).
const MAX_ALIGN: usize = 4096;

/// A mapped shared object.
pub(crate) struct Object {
    seg: Segment,
    kind: Kind,
    len: usize,
    data_offset: usize,
    name: Option<Name>,
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("kind", &self.kind)
            .field("len", &self.len)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Object {
    /// A new anonymous object; `init` sets its words before any other process can see
    /// it.
    pub(crate) fn new(shape: Shape, init: impl FnOnce(&Object)) -> Result<Object, ShmError> {
        let (data_offset, total) = shape.size()?;
        let seg = Segment::create(&format!("multiproc-{}", shape.kind.name()), total)?;
        Ok(Object::initialise(seg, shape, data_offset, None, init))
    }

    /// A new named object (see `shm::named`); this process is its creator.
    pub(crate) fn create_named(
        name: &str,
        shape: Shape,
        init: impl FnOnce(&Object),
    ) -> Result<Object, ShmError> {
        let (data_offset, total) = shape.size()?;
        let (fd, name) = named::create(name, total)?;
        let seg = Segment::map_named(fd, total)?;
        Ok(Object::initialise(
            seg,
            shape,
            data_offset,
            Some(name),
            init,
        ))
    }

    fn initialise(
        seg: Segment,
        shape: Shape,
        data_offset: usize,
        name: Option<Name>,
        init: impl FnOnce(&Object),
    ) -> Object {
        let obj = Object {
            seg,
            kind: shape.kind,
            len: shape.len,
            data_offset,
            name,
        };
        let h = obj.header();
        h.kind.store(shape.kind as u32, Relaxed);
        h.version.store(ObjectHeader::VERSION, Relaxed);
        h.elem_size.store(shape.elem.size as u64, Relaxed);
        h.elem_align.store(shape.elem.align as u64, Relaxed);
        h.type_hash.store(shape.elem.hash(), Relaxed);
        h.len.store(shape.len as u64, Relaxed);
        h.data_offset.store(data_offset as u64, Relaxed);
        let mut name = [0u8; 64];
        let n = shape.elem.name.len().min(64);
        name[..n].copy_from_slice(&shape.elem.name.as_bytes()[..n]);
        for (word, chunk) in h.type_name.iter().zip(name.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            word.store(u64::from_le_bytes(b), Relaxed);
        }
        init(&obj);
        // Last: an opener that sees the magic sees everything above.
        h.magic.store(ObjectHeader::MAGIC, Release);
        obj
    }

    /// Opens the named object `name`, which must be a `kind` of `elem`s.
    pub(crate) fn open_named(name: &str, kind: Kind, elem: Elem) -> Result<Object, ShmError> {
        let (fd, len, name) = named::open(name)?;
        if len < ObjectHeader::WORDS_OFFSET {
            return Err(mismatch(
                name.as_str(),
                format!("{len} bytes, too small to be a multiproc object"),
            ));
        }
        let seg = Segment::map_named(fd, len)?;
        // The creator may be initialising it right now.
        let until = Instant::now() + named::BEING_CREATED;
        while seg.at::<ObjectHeader>(0).magic.load(Acquire) == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        Object::validate(seg, kind, elem, Some(name))
    }

    /// Checks a mapped segment's header against what the caller expects.
    fn validate(
        seg: Segment,
        kind: Kind,
        elem: Elem,
        name: Option<Name>,
    ) -> Result<Object, ShmError> {
        let what = match &name {
            Some(n) => format!("segment {:?}", n.as_str()),
            None => format!("received {}", kind.name()),
        };
        let h: &ObjectHeader = seg.at(0);
        let magic = h.magic.load(Acquire);
        if magic == 0 {
            return Err(mismatch(
                &what,
                "never initialised (its creator may have died creating it)".into(),
            ));
        }
        if magic != ObjectHeader::MAGIC {
            return Err(mismatch(&what, "not a multiproc object".into()));
        }
        let version = h.version.load(Relaxed);
        if version != ObjectHeader::VERSION {
            return Err(mismatch(
                &what,
                format!(
                    "made by another version of multiproc (object layout {version}, this one's {})",
                    ObjectHeader::VERSION
                ),
            ));
        }
        let found = h.kind.load(Relaxed);
        if found != kind as u32 {
            let found = Kind::from_u32(found).map_or("an unknown object", Kind::name);
            return Err(mismatch(
                &what,
                format!("holds a {found}, expected {}", kind.name()),
            ));
        }
        let (size, align) = (h.elem_size.load(Relaxed), h.elem_align.load(Relaxed));
        if size != elem.size as u64
            || align != elem.align as u64
            || h.type_hash.load(Relaxed) != elem.hash()
        {
            return Err(mismatch(
                &what,
                format!(
                    "holds `{}` (size {size}, align {align}), not `{}` (size {}, align {})",
                    stored_type_name(h),
                    elem.name,
                    elem.size,
                    elem.align
                ),
            ));
        }
        let len = usize::try_from(h.len.load(Relaxed)).unwrap_or(usize::MAX);
        let words = usize::try_from(h.data_offset.load(Relaxed))
            .unwrap_or(usize::MAX)
            .saturating_sub(ObjectHeader::WORDS_OFFSET);
        let shape = Shape {
            kind,
            words,
            elem,
            len,
        };
        if words < kind.min_words() {
            return Err(mismatch(
                &what,
                format!(
                    "a corrupt header ({words} bytes of words, a {} has {})",
                    kind.name(),
                    kind.min_words()
                ),
            ));
        }
        let expected = shape
            .size()
            .ok()
            .filter(|&(offset, _)| offset as u64 == h.data_offset.load(Relaxed));
        match expected {
            Some((data_offset, total)) if total == seg.len() => Ok(Object {
                seg,
                kind,
                len,
                data_offset,
                name,
            }),
            Some((_, total)) => Err(mismatch(
                &what,
                format!("{} bytes, but its header describes {total}", seg.len()),
            )),
            None => Err(mismatch(&what, "a corrupt header".into())),
        }
    }

    fn header(&self) -> &ObjectHeader {
        self.seg.at(0)
    }

    /// The object's words.
    #[inline]
    pub(crate) fn words<W: SharedWords>(&self) -> &W {
        self.seg.at(ObjectHeader::WORDS_OFFSET)
    }

    /// The `W` at `offset` in the segment (for objects with variable-length words).
    #[inline]
    pub(crate) fn at<W: SharedWords>(&self, offset: usize) -> &W {
        self.seg.at(offset)
    }

    /// How many bytes of words the object has (data offset less the header).
    pub(crate) fn words_len(&self) -> usize {
        self.data_offset - ObjectHeader::WORDS_OFFSET
    }

    /// Elements in the data area.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The segment and where the data starts in it: for `shm::typed`.
    #[inline]
    pub(crate) fn data(&self) -> (&Segment, usize) {
        (&self.seg, self.data_offset)
    }

    /// The name of a named object.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_ref().map(Name::as_str)
    }

    /// Whether two handles map the same object.
    pub(crate) fn same_as(&self, other: &Object) -> bool {
        std::ptr::eq(self.header(), other.header())
            || sys::file_id(self.seg.fd()).ok() == sys::file_id(other.seg.fd()).ok()
    }

    /// Writes the handle for another process: the segment's size, its name if it has
    /// one, and its descriptor.
    pub(crate) fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fd = codec::pass_fd(self.seg.fd()).map_err(serde::ser::Error::custom)?;
        WireObject {
            kind: self.kind as u32,
            size: self.seg.len() as u64,
            name: self.name().map(str::to_string),
            fd,
        }
        .serialize(s)
    }

    /// Reads a handle written by [`serialize`](Self::serialize), checking that it is a
    /// `kind` of `elem`s.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
        elem: Elem,
    ) -> Result<Object, D::Error> {
        let wire = WireObject::deserialize(d)?;
        let fd = codec::take_fd(wire.fd).map_err(codec::refuse)?;
        let size = usize::try_from(wire.size)
            .ok()
            .filter(|&s| s >= ObjectHeader::WORDS_OFFSET)
            .ok_or_else(|| codec::refuse::<D::Error>("a shared object of an impossible size"))?;
        let seg = named::map_received(fd, size, wire.name.as_deref()).map_err(codec::refuse)?;
        let name = wire.name.map(|name| Name::received(name, seg.fd()));
        Object::validate(seg, kind, elem, name).map_err(codec::refuse)
    }
}

/// How an object travels.
#[derive(Serialize, Deserialize)]
struct WireObject {
    kind: u32,
    size: u64,
    name: Option<String>,
    fd: u32,
}

fn mismatch(what: &str, why: String) -> ShmError {
    ShmError::Mismatch {
        what: what.to_string(),
        why,
    }
}

fn stored_type_name(h: &ObjectHeader) -> String {
    let bytes: Vec<u8> = h
        .type_name
        .iter()
        .flat_map(|w| w.load(Relaxed).to_le_bytes())
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Array, Barrier, Lock, Value};
    use proptest::prelude::*;

    /// Elements aligned to more than a page.
    #[derive(Clone, Copy)]
    #[repr(C, align(8192))]
    struct OverAligned([u8; 8192]);
    // SAFETY: bytes only, no padding (size 8192 at alignment 8192), valid for any bits.
    #[allow(unsafe_code)]
    unsafe impl bytemuck::Zeroable for OverAligned {}
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe impl bytemuck::Pod for OverAligned {}

    /// A type aligned to more than a page is refused with why (it panicked, "misaligned
    /// shared data", wherever the mapping fell short of its alignment).
    #[test]
    #[allow(unsafe_code)]
    fn elements_aligned_past_a_page_are_refused() {
        let why = |r: Result<(), ShmError>| match r {
            Err(ShmError::InvalidArgument(why)) => why,
            other => panic!("{other:?}"),
        };
        let big = OverAligned([1; 8192]);
        assert!(why(Value::new(big).map(drop)).contains("aligned to 8192 bytes"));
        assert!(why(Array::<OverAligned>::new(3).map(drop)).contains("4096 bytes at most"));
        #[derive(Clone, Copy)]
        #[repr(C, align(4096))]
        struct PageAligned([u8; 4096]);
        // SAFETY: as for `OverAligned`.
        unsafe impl bytemuck::Zeroable for PageAligned {}
        // SAFETY: as above.
        unsafe impl bytemuck::Pod for PageAligned {}
        let v = Value::new(PageAligned([2; 4096])).unwrap();
        assert_eq!(v.lock().unwrap().0[4095], 2);
    }

    use crate::wire::codec::resend;

    /// Overwrites bytes of the segment behind a handle, from `at`.
    fn scribble<A: Serialize>(handle: &A, at: usize, bytes: &[u8]) {
        let encoded = codec::encode(handle).unwrap();
        let fd = encoded.fds.into_iter().next().unwrap();
        let len = sys::file_len(sys::AsFd::as_fd(&fd)).unwrap() as usize;
        let seg = Segment::open(fd, len).unwrap();
        seg.write(at, &bytes[..bytes.len().min(len - at)]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever another process writes over an object's header and words, receiving
        /// the object fails cleanly or gives one that works: no panic, no access outside
        /// the segment.
        #[test]
        fn corrupt_objects_are_refused_or_safe(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            keep_magic in any::<bool>(),
            words_only in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if keep_magic && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&ObjectHeader::MAGIC.to_le_bytes());
            }
            // The whole segment, or only what follows the header (which then passes the
            // checks, and the primitive runs on garbage state).
            let at = if words_only { ObjectHeader::WORDS_OFFSET } else { 0 };
            let v = Value::new(1u64).unwrap();
            scribble(&v, at, &bytes);
            if let Ok(w) = resend::<_, Value<u64>>(&v) {
                let _ = w.try_lock().map(|g| *g);
            } else {
                prop_assert!(!words_only, "an intact header was refused");
            }
            let a = Array::<u32>::new(10).unwrap();
            scribble(&a, at, &bytes);
            if let Ok(b) = resend::<_, Array<u32>>(&a) {
                let _ = b.try_lock().map(|g| g.len());
            }
            let barrier = Barrier::new(3).unwrap();
            scribble(&barrier, at, &bytes);
            if let Ok(b) = resend::<_, Barrier>(&barrier) {
                let _ = b.wait_timeout(std::time::Duration::ZERO);
                b.reset();
            }
            let lock = Lock::new().unwrap();
            scribble(&lock, at, &bytes);
            if let Ok(l) = resend::<_, Lock>(&lock) {
                let _ = l.try_lock().map(drop);
            }
        }
    }
}
