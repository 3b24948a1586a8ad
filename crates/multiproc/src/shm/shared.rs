//! `SharedMemory`: raw bytes shared between processes.
#![allow(unsafe_code)]

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::layout::{ChannelHeader, ObjectHeader, SegmentHeader};
use super::named::{self, Name};
use super::segment::Segment;
use super::{OutOfBounds, ShmError};
use crate::wire::codec;

/// A block of bytes shared between processes: Python's `shared_memory.SharedMemory`.
///
/// An *anonymous* segment ([`new`](SharedMemory::new)) exists only as long as some
/// process holds a handle to it (or maps it), and leaves nothing behind however its
/// users end, `SIGKILL` included. Pass it to other processes as a [`spawn`](crate::spawn)
/// argument or through a pipe or queue.
///
/// A *named* segment ([`create`](SharedMemory::create)) is `/dev/shm/<name>`, which any
/// process of the same user can [`open`](SharedMemory::open), Python's
/// `SharedMemory(name=...)` included. Its creator removes the name when its last handle
/// is dropped (handles that come back to it, from a child or through a queue, and those
/// it opens by name count too), and if it ends first (it returns from `main` with handles left, or it is
/// killed, alone, with its fork server, or with its whole process group), multiproc
/// removes the name on its behalf: a small tracker process of its own session does,
/// started when the creator first creates a named segment, which needs
/// [`init`](crate::init) in the creating program. It ignores `SIGTERM`, `SIGHUP` and
/// `SIGQUIT`: only a `SIGKILL` of every process of the program's cgroup (a container
/// stop past its grace, `systemctl kill -s KILL`, the OOM killer's group kill) takes the
/// tracker too and leaves the name, as it would with CPython. A process that only opened a segment never
/// removes it; a CPython process that opens one does, as it exits, unless it opened it
/// with `track=False` (Python 3.13 and later): before 3.13, and by default since, its
/// resource tracker unlinks every segment the process opened by name, taking the name
/// from a multiproc creator still using it.
///
/// The bytes have no lock: [`read`](SharedMemory::read) and
/// [`write`](SharedMemory::write) copy ranges, and coordinating writers is up to the
/// program (a [`Lock`](crate::Lock), or an [`Array`](crate::Array) for typed data with
/// its own lock). A read racing a write (from another thread or process) is no data
/// race: it may see some bytes of the write and not others, but each 8-byte-aligned
/// word of the segment (offsets that are multiples of 8) is read and written whole, the
/// bytes of a word that a range covers only in part included (a write of bytes 1 to 7
/// is seen all or nothing by a read of bytes 0 to 7).
///
/// # Examples
///
/// ```no_run
/// use multiproc::SharedMemory;
///
/// fn fill(shm: SharedMemory) {
///     shm.write(0, b"hello from the child").unwrap();
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _guard = multiproc::init();
/// let shm = SharedMemory::new(4096)?;
/// multiproc::spawn(fill, shm.clone())?.join()?;
/// let mut buf = [0u8; 20];
/// shm.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello from the child");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    inner: Arc<Inner>,
}

struct Inner {
    seg: Segment,
    name: Option<Name>,
}

impl SharedMemory {
    /// A new anonymous segment of `size` zeroed bytes.
    ///
    /// # Errors
    ///
    /// [`ShmError::InvalidArgument`] for a size of 0; or if the memory cannot be had.
    pub fn new(size: usize) -> Result<SharedMemory, ShmError> {
        check_size(size)?;
        let seg = Segment::create("multiproc-shared-memory", size)?;
        Ok(SharedMemory::adopt(seg, None))
    }

    /// Creates the named segment `name` (`/dev/shm/<name>`; a leading `/` is ignored)
    /// of `size` zeroed bytes. This process becomes its creator (see above).
    ///
    /// # Errors
    ///
    /// [`ShmError::AlreadyExists`], [`ShmError::InvalidName`],
    /// [`ShmError::InvalidArgument`] for a size of 0, or if the segment cannot be
    /// created. Its memory is taken here, all of it (`/dev/shm` is a tmpfs): a segment
    /// that does not fit there (a file system of limited size: 64 MiB in a Docker
    /// container unless `--shm-size` says otherwise) is [`ShmError::Io`] of kind
    /// [`StorageFull`](std::io::ErrorKind::StorageFull), saying how much room there is,
    /// rather than a `SIGBUS` in whichever process first touches a page past the room
    /// (what a segment only sized, as Python's `SharedMemory` makes it, gives). Where the
    /// memory itself runs short, the kernel's answer (an error of kind
    /// [`OutOfMemory`](std::io::ErrorKind::OutOfMemory), or a memory cgroup's OOM killer)
    /// comes here too.
    pub fn create(name: &str, size: usize) -> Result<SharedMemory, ShmError> {
        check_size(size)?;
        let (fd, name) = named::create(name, size)?;
        let seg = Segment::map_named(fd, size)?;
        Ok(SharedMemory::adopt(seg, Some(name)))
    }

    /// Opens the existing named segment `name`, whatever its size.
    ///
    /// # Errors
    ///
    /// [`ShmError::NotFound`], [`ShmError::InvalidName`], or [`ShmError::Mismatch`] if
    /// the segment is empty (after waiting up to a second for a creator that has just
    /// made it to give it its size), or if it holds a multiproc object, a named
    /// [`Value`](crate::Value) or [`Array`](crate::Array): their bytes are handed out as
    /// `&mut T` under their lock, which bytes written here would change beneath (open
    /// those with their own `open_named`). Such an object is told by its header, which
    /// its creator writes last: opened in the moment between its creator giving it its
    /// size and finishing its header, one is taken for plain bytes.
    pub fn open(name: &str) -> Result<SharedMemory, ShmError> {
        let (fd, size, name) = named::open(name)?;
        if size == 0 {
            return Err(ShmError::Mismatch {
                what: format!("segment {:?}", name.as_str()),
                why: "it is empty".into(),
            });
        }
        let seg = Segment::map_named(fd, size)?;
        if holds_multiprocs_own(&seg) {
            return Err(ShmError::Mismatch {
                what: format!("segment {:?}", name.as_str()),
                why: "it holds a multiproc Value or Array: open it with Value::open_named \
                      or Array::open_named"
                    .into(),
            });
        }
        Ok(SharedMemory::adopt(seg, Some(name)))
    }

    /// Opens the existing named segment `name`, which must be exactly `size` bytes.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), and [`ShmError::Mismatch`] if the size differs.
    pub fn open_sized(name: &str, size: usize) -> Result<SharedMemory, ShmError> {
        let shm = SharedMemory::open(name)?;
        if shm.len() != size {
            return Err(ShmError::Mismatch {
                what: format!("segment {name:?}"),
                why: format!("{} bytes, not {size}", shm.len()),
            });
        }
        Ok(shm)
    }

    fn adopt(seg: Segment, name: Option<Name>) -> SharedMemory {
        SharedMemory {
            inner: Arc::new(Inner { seg, name }),
        }
    }

    /// The name of a named segment (without the leading `/`).
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_ref().map(Name::as_str)
    }

    /// Whether this process created the (named) segment, and so removes its name.
    pub fn is_creator(&self) -> bool {
        self.inner.name.as_ref().is_some_and(Name::is_creator)
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.inner.seg.len()
    }

    /// Whether it has no bytes (never: segments are not empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if the range is not inside the segment; `buf` is untouched then.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, buf.len())?;
        self.inner.seg.read_racing(offset, buf);
        Ok(())
    }

    /// Copies `data` into the segment at `offset`.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if the range is not inside the segment; nothing is written then.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, data.len())?;
        self.inner.seg.write_racing(offset, data);
        Ok(())
    }

    /// A pointer to the first byte, valid for [`len`](Self::len) bytes while this
    /// handle (or a clone) lives in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.seg.ptr(0)
    }

    /// The bytes, as a slice.
    ///
    /// # Safety
    ///
    /// While the slice lives, no thread in any process may write the segment (another
    /// process writing at the same time is a data race).
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`; the caller
        // guarantees nobody writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The bytes, as a mutable slice.
    ///
    /// # Safety
    ///
    /// While the slice lives, no other thread in any process may read or write the
    /// segment, and no other slice of it may exist in this one.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the mapping is `len` writable bytes and lives as long as `self`; the
        // caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    fn check(&self, offset: usize, count: usize) -> Result<(), OutOfBounds> {
        OutOfBounds::check(offset, count, self.len())
    }
}

fn check_size(size: usize) -> Result<(), ShmError> {
    if size == 0 || size > isize::MAX as usize {
        return Err(ShmError::InvalidArgument(format!(
            "a shared-memory segment of {size} bytes"
        )));
    }
    Ok(())
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name())
            .field("len", &self.len())
            .finish()
    }
}

/// How a segment travels: its size, name and descriptor.
#[derive(Serialize, Deserialize)]
struct WireShared {
    size: u64,
    name: Option<String>,
    fd: u32,
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fd = codec::pass_fd(self.inner.seg.fd()).map_err(serde::ser::Error::custom)?;
        WireShared {
            size: self.len() as u64,
            name: self.name().map(str::to_string),
            fd,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireShared::deserialize(d)?;
        let fd = codec::take_fd(wire.fd).map_err(codec::refuse)?;
        let size = usize::try_from(wire.size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| {
                codec::refuse::<D::Error>("a shared-memory segment of an impossible size")
            })?;
        let seg = named::map_received(fd, size, wire.name.as_deref()).map_err(codec::refuse)?;
        // As `open` does: a handle of a multiproc object (whose bytes are handed out as
        // `&mut T` under its lock) or of a channel (whose ring is lent out as slices
        // while a message is copied in or out) read as a segment's (their handles
        // travel alike enough) is refused.
        if holds_multiprocs_own(&seg) {
            return Err(codec::refuse(
                "a handle of a multiproc Value, Array, queue or pipe, decoded as a SharedMemory",
            ));
        }
        let name = wire.name.map(|name| Name::received(name, seg.fd()));
        Ok(SharedMemory::adopt(seg, name))
    }
}

/// Whether `seg` starts with the header of a multiproc object, channel or channel
/// segment.
fn holds_multiprocs_own(seg: &Segment) -> bool {
    let mut magic = [0u8; 8];
    if seg.len() < magic.len() {
        return false;
    }
    seg.read_racing(0, &mut magic);
    [
        ObjectHeader::MAGIC,
        ChannelHeader::MAGIC,
        SegmentHeader::MAGIC,
    ]
    .contains(&u64::from_le_bytes(magic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::resend;

    /// A `Value`'s handle travels as its kind and then what a segment's handle holds:
    /// read as a kind and a `SharedMemory`, it gave safe code plain writes to the lock
    /// and the bytes that the value's guard hands out as `&mut T`. It is refused, as
    /// `SharedMemory::open` refuses the segment of a named one. So is a pipe's, whose
    /// size and first descriptor read as a segment's (with plain writes to the ring
    /// that a send or a receive lends out as slices).
    #[test]
    fn an_objects_handle_is_not_a_segments() {
        let value = crate::Value::new(5u64).unwrap();
        let err = resend::<_, (u32, SharedMemory)>(&value).unwrap_err();
        assert!(err.contains("decoded as a SharedMemory"), "{err}");
        let (tx, _rx) = crate::pipe::<u64>().unwrap();
        let err = resend::<_, (SharedMemory, [u32; 7])>(&tx).unwrap_err();
        assert!(err.contains("decoded as a SharedMemory"), "{err}");
        // A segment's own handle, and one that happens to be written with other bytes.
        let seg = SharedMemory::new(64).unwrap();
        seg.write(0, &[1; 16]).unwrap();
        let again: SharedMemory = resend(&seg).unwrap();
        let mut read = [0; 16];
        again.read(0, &mut read).unwrap();
        assert_eq!(read, [1; 16]);
    }
}
