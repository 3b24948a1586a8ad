//! Shared-memory segments: the raw layer. Everything that turns an address in a shared
//! mapping into a Rust reference or copies bytes in and out of one is here, checked.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};

/// Types that may live in shared memory and be used through a `&` reference from many
/// processes at once: every bit pattern is a valid value, they have no pointers, and
/// they change only through interior mutability with atomic operations.
///
/// # Safety
///
/// Implement only for `#[repr(C)]` types made of atomics (and of other `SharedWords`),
/// with no padding that matters, no `Drop` and no pointers: another process may write
/// any bytes into them at any time.
pub(crate) unsafe trait SharedWords: Sync {}

// SAFETY: atomics accept every bit pattern and are only changed atomically.
unsafe impl SharedWords for AtomicU32 {}
// SAFETY: as above.
unsafe impl SharedWords for AtomicU64 {}

/// A shared mapping of an anonymous memory file (memfd): it exists while a process maps
/// it or holds its descriptor, and vanishes with the last one, however that process
/// ends. Its size is sealed, so no process can shrink it under another's mapping. The
/// mapped bytes are reached through its [`Region`].
pub(crate) struct Segment {
    fd: OwnedFd,
    region: Region,
}

/// Mapped shared bytes: a whole segment, or a range of a memory file mapped apart (an
/// unbounded channel's overflow). Unmapped when dropped; holds no descriptor.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping stays valid for the region's life wherever it is used from, and
// the region hands out only `&` references to `SharedWords` (atomics) and copies made
// through raw pointers.
unsafe impl Send for Region {}
// SAFETY: as above: nothing in it needs exclusive access.
unsafe impl Sync for Region {}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("fd", &self.fd)
            .field("len", &self.region.len)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Segment {
    type Target = Region;

    fn deref(&self) -> &Region {
        &self.region
    }
}

impl Segment {
    /// A new segment of `len` bytes, zeroed.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Self> {
        let fd = sys::memfd(name, len as u64)?;
        Self::map(fd, len)
    }

    /// Maps a segment received from another process. Refuses one whose size is not
    /// sealed (it could shrink under the mapping) or is not `len`.
    pub(crate) fn open(fd: OwnedFd, len: usize) -> io::Result<Self> {
        if !sys::size_sealed(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory whose size is not sealed",
            ));
        }
        let actual = sys::file_len(fd.as_fd())?;
        if actual != len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared memory of {actual} bytes, expected {len}"),
            ));
        }
        Self::map(fd, len)
    }

    /// A new segment of `len` bytes, zeroed, whose file may grow (never shrink) past
    /// what is mapped: an unbounded channel's.
    pub(crate) fn create_growable(name: &str, len: usize) -> io::Result<Self> {
        let fd = sys::memfd_growable(name, len as u64)?;
        Self::map(fd, len)
    }

    /// Maps the first `len` bytes of a growable segment received from another process.
    /// Refuses one that could shrink, or is shorter than `len`.
    pub(crate) fn open_growable(fd: OwnedFd, len: usize) -> io::Result<Self> {
        if !sys::shrink_sealed(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory that may shrink",
            ));
        }
        let actual = sys::file_len(fd.as_fd())?;
        if actual < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared memory of {actual} bytes, expected at least {len}"),
            ));
        }
        Self::map(fd, len)
    }

    /// Maps a named segment (which cannot be sealed: see `shm::named`) of `len` bytes.
    pub(crate) fn map_named(fd: OwnedFd, len: usize) -> io::Result<Self> {
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        let ptr = sys::map_shared(fd.as_fd(), len, true)?;
        Ok(Segment {
            fd,
            region: Region { ptr, len },
        })
    }

    /// Maps `len` bytes of this segment's file from `offset` (a multiple of the page
    /// size), checking that the file is that long; it must not shrink (a growable
    /// segment's cannot). With `populate`, its pages are all entered in this process's
    /// page tables now (see [`sys::map_shared_at`]).
    pub(crate) fn map_range(&self, offset: u64, len: usize, populate: bool) -> io::Result<Region> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > sys::file_len(self.fd.as_fd()).unwrap_or(0)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a range past the end of the shared memory",
            ));
        }
        let ptr = sys::map_shared_at(self.fd.as_fd(), offset, len, true, populate)?;
        Ok(Region { ptr, len })
    }

    /// The memory file, to pass to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Region {
    /// Its size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The `T` at `offset`.
    ///
    /// # Panics
    ///
    /// If `T` does not fit there or `offset` is not aligned for it: offsets are
    /// constants of the layouts built on top of this, so that is a bug in multiproc.
    #[inline]
    pub(crate) fn at<T: SharedWords>(&self, offset: usize) -> &T {
        let size = std::mem::size_of::<T>();
        assert!(
            offset.checked_add(size).is_some_and(|end| end <= self.len),
            "shared object out of the segment"
        );
        assert_eq!(
            offset % std::mem::align_of::<T>(),
            0,
            "misaligned shared object"
        );
        // SAFETY: in bounds and aligned (checked above, the mapping being page-aligned),
        // mapped for as long as `self` lives (the reference cannot outlive it), and
        // `SharedWords` types are valid for any bytes and only change atomically, so a
        // shared reference is sound even while other processes use the same memory.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<T>() }
    }

    /// Copies `src` into the segment at `offset`.
    ///
    /// # Panics
    ///
    /// If the range is outside the segment (callers compute ranges from validated
    /// lengths; this is the last line of defence).
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: in bounds (checked). The range is shared memory, not a Rust object:
        // the protocols above give this process sole use of it for the time of the
        // copy; a process that breaks them can only garble the bytes, which readers
        // validate. No reference into the mapping is created.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len());
        }
    }

    /// Copies from the segment at `offset` into `dst`.
    ///
    /// # Panics
    ///
    /// As for [`write`](Self::write).
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: as in `write`: in bounds, no reference into the mapping, and the
        // protocol makes the range stable while it is copied.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
    }

    /// Copies `src` into the segment at `offset` while other threads, of this process
    /// or another, may read or write the same bytes (the unlocked
    /// `SharedMemory::write`): every access to the mapping is an atomic one (relaxed),
    /// so such a race mixes bytes of the two copies rather than being a data race, and
    /// each 8-byte-aligned word of the range is written whole.
    ///
    /// Every access is to a whole 8-byte-aligned word, whatever the range: the bytes of
    /// a word the range covers only in part are merged into it (compare-and-swap), so
    /// that no two racing copies ever touch the same memory with atomics of different
    /// sizes (which Rust's memory model does not allow).
    ///
    /// # Panics
    ///
    /// As for [`write`](Self::write).
    pub(crate) fn write_racing(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        self.words(offset, src.len(), |i, within, word| {
            let part = &src[i..i + within.len()];
            if within.len() == 8 {
                let mut whole = [0; 8];
                whole.copy_from_slice(part);
                word.store(u64::from_ne_bytes(whole), Relaxed);
                return;
            }
            let mut now = word.load(Relaxed);
            loop {
                let mut bytes = now.to_ne_bytes();
                bytes[within.clone()].copy_from_slice(part);
                match word.compare_exchange_weak(now, u64::from_ne_bytes(bytes), Relaxed, Relaxed) {
                    Ok(_) => return,
                    Err(seen) => now = seen,
                }
            }
        });
    }

    /// Copies from the segment at `offset` into `dst` while other threads may write the
    /// same bytes: the counterpart of [`write_racing`](Self::write_racing), each
    /// 8-byte-aligned word read whole (a word the range covers in part too).
    ///
    /// # Panics
    ///
    /// As for [`write`](Self::write).
    pub(crate) fn read_racing(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        self.words(offset, dst.len(), |i, within, word| {
            let bytes = word.load(Relaxed).to_ne_bytes();
            dst[i..i + within.len()].copy_from_slice(&bytes[within]);
        });
    }

    /// Calls `each` for every 8-byte-aligned word that `offset..offset + len` (checked)
    /// covers, in order: with where the word's part of the range starts in the range,
    /// which of the word's bytes it is, and the word.
    fn words(
        &self,
        offset: usize,
        len: usize,
        mut each: impl FnMut(usize, std::ops::Range<usize>, &AtomicU64),
    ) {
        // The mapping starts on a page, so the words that hold the range's first and
        // last bytes are mapped whole (a mapping is whole pages) even where the range
        // does not reach their ends.
        debug_assert!(self.ptr.as_ptr().addr().is_multiple_of(8));
        let mut i = 0;
        while i < len {
            let within = self.ptr(offset + i).addr() % 8;
            let n = (8 - within).min(len - i);
            let at = self.ptr(offset + i - within);
            // SAFETY: 8-aligned, and within the mapping's pages (above); the mapping
            // lives as long as `self`, and is only reached through raw pointers and
            // 8-byte atomics here.
            let word = unsafe { AtomicU64::from_ptr(at.cast()) };
            each(i, within..within + n, word);
            i += n;
        }
    }

    fn check(&self, offset: usize, len: usize) {
        self.check_range(offset, len);
    }

    /// Panics unless `offset..offset + len` lies within the segment.
    #[inline]
    pub(crate) fn check_range(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "access outside the shared segment"
        );
    }

    /// A raw pointer to the byte at `offset` (checked by the caller with
    /// [`check_range`](Self::check_range) before any use).
    #[inline]
    pub(crate) fn ptr(&self, offset: usize) -> *mut u8 {
        self.ptr.as_ptr().wrapping_add(offset)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Segment::map` or `map_range`; every reference
        // into it borrows `self`, so none is left.
        unsafe { sys::unmap(self.ptr, self.len) };
    }
}

/// Maps a read-only view of a whole sealed memory file (a large message), for reading
/// once. Unmapped when dropped.
pub(crate) struct View {
    ptr: NonNull<u8>,
    len: usize,
    _fd: OwnedFd,
}

impl View {
    /// Maps `fd`, which must be a memfd sealed against any change and as long as
    /// `room`, in place of `room`.
    pub(crate) fn open_in(fd: OwnedFd, room: Room) -> io::Result<Self> {
        if !sys::fully_sealed(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a message in shared memory that is not sealed against changes",
            ));
        }
        if sys::file_len(fd.as_fd())? != room.len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a message in shared memory of another length than announced",
            ));
        }
        if room.len > 0 {
            // SAFETY: `room` is a live reservation of `room.len` bytes that this owns
            // and nothing refers into.
            if let Err(e) = unsafe { sys::map_shared_over(fd.as_fd(), room.ptr, room.len) } {
                // The range may be partly unmapped now, and partly another's: left as it
                // is (address space lost, no memory), never unmapped.
                std::mem::forget(room);
                return Err(e);
            }
        }
        // The mapping is the view's now: unmapped by its `Drop`.
        let room = std::mem::ManuallyDrop::new(room);
        Ok(View {
            ptr: room.ptr,
            len: room.len,
            _fd: fd,
        })
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes (or empty with a dangling,
        // aligned pointer) and lives as long as `self`. The file is sealed against
        // writes and resizing (checked in `open_in`), so no process can change the bytes
        // behind this shared slice, and reading cannot fault.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// Address space taken ahead for a [`View`] (see [`sys::reserve`]): a receiver that
/// cannot have it learns so before it takes a message off its socket, and the message
/// stays there for a later receive. Unmapped when dropped unused.
pub(crate) struct Room {
    ptr: NonNull<u8>,
    len: usize,
}

impl Room {
    /// Room for `len` bytes (none taken for nothing).
    pub(crate) fn take(len: usize) -> io::Result<Self> {
        let ptr = if len == 0 {
            NonNull::dangling()
        } else {
            sys::reserve(len)?
        };
        Ok(Room { ptr, len })
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the reservation made in `take`, which nothing refers into.
            unsafe { sys::unmap(self.ptr, self.len) };
        }
    }
}

// SAFETY: address space with no access: nothing in it to share or to race on.
unsafe impl Send for Room {}

impl Drop for View {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `open`; `bytes` borrows `self`, so no slice
            // into it remains.
            unsafe { sys::unmap(self.ptr, self.len) };
        }
    }
}

// SAFETY: as for `Segment`.
unsafe impl Send for View {}
// SAFETY: as for `Segment`.
unsafe impl Sync for View {}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View").field("len", &self.len).finish()
    }
}
