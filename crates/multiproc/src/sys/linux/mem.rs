//! Shared memory and doorbells: memfd segments, mappings, eventfds.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::event::EventfdFlags;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use crate::sys::FdKind;

/// Fails with `FileTooLarge` if a file of `len` bytes is over this process's file-size
/// limit (`RLIMIT_FSIZE`, `ulimit -f`, systemd's `LimitFSIZE=`). A memory file is a file
/// to the kernel: sized (or written) past the limit, it sends the process `SIGXFSZ`,
/// whose default action ends it (CPython ignores the signal at start-up, and gets its
/// `EFBIG` instead). Asked before each size a memory file is given.
fn within_file_size_limit(len: u64) -> io::Result<()> {
    match rustix::process::getrlimit(rustix::process::Resource::Fsize).current {
        Some(limit) if len > limit => Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "{len} bytes of shared memory is over this process's file-size limit of \
                 {limit} bytes (RLIMIT_FSIZE, `ulimit -f`); a memory file is a file to it"
            ),
        )),
        _ => Ok(()),
    }
}

/// An anonymous shared-memory file of `len` bytes: it exists only while a descriptor or
/// a mapping refers to it, so it can never be left behind, whatever happens to the
/// processes using it. Its size is sealed.
pub(crate) fn memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    within_file_size_limit(len)?;
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    // A process that could shrink the file would make every other process's reads of
    // the mapping fault (SIGBUS); sealing the size rules that out. And no process may
    // seal it further: one that sealed it against writes would make every later
    // writable mapping fail, in every process that receives it.
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// An anonymous shared-memory file of `len` bytes that may grow but never shrink (an
/// unbounded channel's): mappings of the bytes it has can never fault.
pub(crate) fn memfd_growable(name: &str, len: u64) -> io::Result<OwnedFd> {
    within_file_size_limit(len)?;
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)?;
    Ok(fd)
}

/// Makes the file behind `fd` `len` bytes long, if it is shorter.
pub(crate) fn grow(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    if file_len(fd)? < len {
        within_file_size_limit(len)?;
        rustix::fs::ftruncate(fd, len)?;
    }
    Ok(())
}

/// Frees the memory of `len` bytes at `offset` of a memory file, keeping its size (the
/// range reads as zeros afterwards).
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )?;
    Ok(())
}

/// Whether the memfd cannot shrink (so a mapping of the bytes it has cannot turn into
/// SIGBUS), growing or not.
pub(crate) fn shrink_sealed(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK))
}

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_size as u64)
}

/// Whether the memfd's size is sealed (so a mapping of it cannot turn into SIGBUS).
pub(crate) fn size_sealed(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK | SealFlags::GROW))
}

/// Whether the memfd is sealed against any change: size and contents.
pub(crate) fn fully_sealed(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_get_seals(fd)
        .is_ok_and(|s| s.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE))
}

/// A memfd holding `bytes`, sealed against any change: a message that another process
/// can map and read while the sender is free to exit.
pub(crate) fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    within_file_size_limit(bytes.len() as u64)?;
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, bytes.len() as u64)?;
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::pwrite(&fd, &bytes[done..], done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// Maps `len` bytes of `fd`, shared; read-write, or read-only (as a file sealed against
/// writes must be).
pub(crate) fn map_shared(
    fd: BorrowedFd<'_>,
    len: usize,
    writable: bool,
) -> io::Result<NonNull<u8>> {
    map_shared_at(fd, 0, len, writable, false)
}

/// Maps `len` bytes of `fd` from `offset` (a multiple of the page size), shared. With
/// `populate`, every page is entered in this process's page tables now (allocated if
/// the file has none there yet), in this one system call, instead of by a fault at the
/// first touch of each page (or of each 16 pages read).
pub(crate) fn map_shared_at(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    writable: bool,
    populate: bool,
) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
    }
    // SAFETY: a fresh mapping chosen by the kernel (no address hint), so it overlaps
    // nothing that exists; the caller owns it and unmaps it with `unmap`.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            if writable {
                ProtFlags::READ | ProtFlags::WRITE
            } else {
                ProtFlags::READ
            },
            if populate {
                MapFlags::SHARED | MapFlags::POPULATE
            } else {
                MapFlags::SHARED
            },
            fd,
            offset,
        )
    }?;
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Address space for a mapping of `len` bytes (more than nothing), taken ahead of it:
/// no access, no memory committed. What a process short of address space (its
/// `RLIMIT_AS`, its limit of mappings) cannot get, it learns here, before it takes
/// something it could then not map off a socket. Unmapped with [`unmap`], or taken
/// over by [`map_shared_over`].
pub(crate) fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
    }
    // SAFETY: a fresh mapping chosen by the kernel (no address hint), so it overlaps
    // nothing that exists; the caller owns it.
    let ptr = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Maps the first `len` bytes of `fd`, shared and read-only, in place of the
/// reservation at `at` (from [`reserve`], of the same `len`). Replacing a mapping by
/// one of the same size asks the kernel for no more address space (it may ask for more
/// mappings, where the reservation had merged with neighbours of the same kind).
/// On an error the range may be left unmapped in part (kernels before 6.12 unmapped
/// the old range first): the caller then must not unmap it (another thread may have
/// mapped something there since).
///
/// # Safety
///
/// `at` and `len` are exactly those of a live reservation from [`reserve`] that the
/// caller owns, and nothing refers into it.
pub(crate) unsafe fn map_shared_over(
    fd: BorrowedFd<'_>,
    at: NonNull<u8>,
    len: usize,
) -> io::Result<()> {
    // SAFETY: `MAP_FIXED` replaces only the caller's own reservation (guaranteed by
    // the caller), which nothing refers into.
    unsafe {
        rustix::mm::mmap(
            at.as_ptr().cast(),
            len,
            ProtFlags::READ,
            MapFlags::SHARED | MapFlags::FIXED,
            fd,
            0,
        )
    }?;
    Ok(())
}

/// Unmaps a mapping made by [`map_shared`].
///
/// # Safety
///
/// `ptr` and `len` are exactly those of a live mapping from [`map_shared`], and nothing
/// refers into it any more.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: guaranteed by the caller.
    let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
}

/// A doorbell: an eventfd, non-blocking and close-on-exec.
pub(crate) fn doorbell() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Rings a doorbell: whoever polls it wakes up.
pub(crate) fn ring(bell: BorrowedFd<'_>) {
    // Can only fail if the counter would overflow, and then it is already ringing.
    let _ = rustix::io::write(bell, &1u64.to_ne_bytes());
}

/// Silences a doorbell (resets its counter) so that polling it blocks again.
pub(crate) fn silence(bell: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(bell, &mut buf) {
            Err(Errno::INTR) => {}
            _ => return,
        }
    }
}

/// A connected pair of `AF_UNIX` sequenced-packet sockets (message boundaries kept,
/// any number of processes may hold either end), close-on-exec.
pub(crate) fn packet_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Creates the named POSIX shared-memory segment `/dev/shm/<name>`, empty (see
/// [`shm_reserve`]), readable and writable by this user only. Fails if it exists.
pub(crate) fn shm_create(name: &str) -> io::Result<OwnedFd> {
    use rustix::shm;
    Ok(shm::open(
        name,
        shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )?)
}

/// How much of a named segment [`shm_reserve`] allocates at a time (at about 0.4 ms a
/// MiB, a few ms): a signal that arrives meanwhile may make the kernel undo the piece it
/// was allocating (`EINTR`; tmpfs has done so for any signal, Linux 6.18 did not for a
/// handled one here), and the piece is tried again at half the size, down to
/// [`RESERVE_PIECE_LEAST`], so that signals coming faster than a piece takes (a
/// profiler's timer) cannot keep it from ever being done.
const RESERVE_PIECE: u64 = 8 << 20;

/// The smallest piece [`shm_reserve`] allocates at a time, but the last.
const RESERVE_PIECE_LEAST: u64 = 64 << 10;

/// Gives the empty named segment behind `fd` its `len` bytes, with all their memory
/// taken now, and its size set only once they are all there (an opener waits while a
/// segment is empty). `/dev/shm` is a file system of limited size (half the memory by
/// default; 64 MiB in a Docker container), and a file only sized there gets its pages as
/// processes first touch them: one that finds the file system full then is a `SIGBUS`
/// in whichever process touched it, long after the segment was made. Allocated ahead, a
/// segment that does not fit is its creator's error instead (`StorageFull`, saying how
/// much room there is); where the memory itself runs short, the kernel's answer (an
/// `OutOfMemory` error, or a memory cgroup's OOM killer) comes at creation too. A file
/// system that cannot allocate ahead gets its size alone. (The memfds of anonymous
/// segments live on no such file system, and are limited only by the memory itself.)
pub(crate) fn shm_reserve(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    // Before the memory is taken (allocating ahead is not checked against the limit).
    within_file_size_limit(len)?;
    let (mut at, mut size) = (0, RESERVE_PIECE);
    while at < len {
        let piece = size.min(len - at);
        match rustix::fs::fallocate(fd, FallocateFlags::KEEP_SIZE, at, piece) {
            Ok(()) => {
                at += piece;
                size = (size * 2).min(RESERVE_PIECE);
            }
            Err(Errno::INTR) => size = (size / 2).max(RESERVE_PIECE_LEAST),
            Err(Errno::OPNOTSUPP) => break,
            Err(Errno::NOSPC) => {
                let room = rustix::fs::fstatvfs(fd)
                    .map(|v| {
                        let (free, size) = (v.f_bavail * v.f_frsize, v.f_blocks * v.f_frsize);
                        format!(" ({free} bytes of its {size} are free)")
                    })
                    .unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "no room for {len} bytes in /dev/shm{room}; a container's /dev/shm is \
                         small unless made larger (Docker: --shm-size)"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::ftruncate(fd, len)?;
    Ok(())
}

/// How many bytes of memory or disk the file behind `fd` has allocated.
pub(crate) fn file_allocated(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_blocks as u64 * 512)
}

/// Where the named segment `name` (validated: no `/`) is.
fn shm_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/dev/shm").join(name)
}

/// Opens the existing named segment `/dev/shm/<name>` for reading and writing. A
/// symbolic link there is not followed (`/dev/shm` is writable by everyone, as `/tmp`
/// is: another user's link to one of the caller's files would have it mapped and
/// written; glibc's `shm_open` adds `O_NOFOLLOW` too, rustix's does not), and only a
/// regular file is a segment.
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        shm_path(name),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("/dev/shm/{name} is a symbolic link, not a shared memory segment"),
        ),
        e => e.into(),
    })?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("/dev/shm/{name} is not a regular file, not a shared memory segment"),
        ));
    }
    Ok(fd)
}

/// Removes the name of a segment (those that map it keep it).
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    Ok(rustix::shm::unlink(name)?)
}

/// The device and inode of the file behind `fd`: what tells two files of one name apart.
pub(crate) fn file_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// What `fd` is (see [`FdKind`]).
pub(crate) fn fd_kind(fd: BorrowedFd<'_>) -> FdKind {
    use rustix::fs::{FileType, OFlags};
    let (Ok(st), Ok(flags)) = (rustix::fs::fstat(fd), rustix::fs::fcntl_getfl(fd)) else {
        return FdKind::Other;
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Fifo if flags.contains(OFlags::WRONLY) => FdKind::PipeWriter,
        FileType::Fifo if !flags.intersects(OFlags::WRONLY | OFlags::RDWR) => FdKind::PipeReader,
        FileType::Socket => match rustix::net::sockopt::socket_type(fd) {
            Ok(rustix::net::SocketType::SEQPACKET) => FdKind::PacketSocket,
            _ => FdKind::Other,
        },
        // An eventfd lives on the anonymous-inode file system (with epoll, timer, signal
        // and pid descriptors, which refuse writes): a write of 0 adds nothing to its
        // counter, and is the one write the others take. (Asked without `/proc`, which
        // a sandbox or a setup function's mount namespace may not have.)
        _ if flags.contains(OFlags::NONBLOCK) && flags.contains(OFlags::RDWR) => {
            const ANON_INODE_FS_MAGIC: u64 = 0x0904_1934;
            let anon =
                rustix::fs::fstatfs(fd).is_ok_and(|fs| fs.f_type as u64 == ANON_INODE_FS_MAGIC);
            if anon && rustix::io::write(fd, &0u64.to_ne_bytes()) == Ok(8) {
                FdKind::Doorbell
            } else {
                FdKind::Other
            }
        }
        _ => FdKind::Other,
    }
}

/// The device and inode of this process's current directory.
pub(crate) fn cwd_id() -> io::Result<(u64, u64)> {
    path_id(std::path::Path::new("."))
}

/// The device and inode of an open file.
pub(crate) fn open_file_id(file: &std::fs::File) -> io::Result<(u64, u64)> {
    file_id(std::os::fd::AsFd::as_fd(file))
}

/// The device and inode of the file at `path` (its links followed).
pub(crate) fn path_id(path: &std::path::Path) -> io::Result<(u64, u64)> {
    let st = rustix::fs::stat(path)?;
    Ok((st.st_dev, st.st_ino))
}

/// Unlinks the segment `name` if it is still the file `id` (not one created since under
/// the same name). Looked at by its path, which takes no descriptor: a process out of
/// them (or denied reading the file) still removes its segment.
pub(crate) fn shm_unlink_if(name: &str, id: (u64, u64)) {
    if let Ok(st) = rustix::fs::statat(
        rustix::fs::CWD,
        shm_path(name),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) && (st.st_dev, st.st_ino) == id
    {
        let _ = rustix::shm::unlink(name);
    }
}

/// Faults in the pages wholly inside `spare` (memory about to be written, such as the
/// part of a vector's spare capacity the next values go to) with one system call, when
/// there are at least 4 of them: cheaper than taking each page's fault as it is first
/// written (on the benchmark's virtual machine, 1.9 µs a page against 2.7; pages
/// already present cost next to nothing). The contents are left as they are.
pub(crate) fn prefault<T>(spare: &mut [std::mem::MaybeUninit<T>]) {
    let page = rustix::param::page_size();
    let start = spare.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(spare);
    let (first, last) = (start.next_multiple_of(page), end / page * page);
    if last <= first || last - first < 4 * page {
        return;
    }
    // SAFETY: the range lies inside memory this process owns (borrowed mutably, so no
    // one else uses it now); populating it changes no byte of it, only whether its
    // pages are present. An error (a kernel before 5.14) leaves it to ordinary faults.
    let _ = unsafe {
        rustix::mm::madvise(
            first as *mut std::ffi::c_void,
            last - first,
            rustix::mm::Advice::LinuxPopulateWrite,
        )
    };
}

/// A word in a page of memory shared with every process this one forks from now on;
/// it stays mapped for the life of the process (and of its forks).
pub(crate) fn shared_word() -> io::Result<&'static std::sync::atomic::AtomicU64> {
    let fd = memfd("multiproc-shared-word", 4096)?;
    let page = map_shared(fd.as_fd(), 4096, true)?;
    // SAFETY: a fresh, page-aligned, zeroed, read-write mapping that is never unmapped,
    // so the reference is valid forever; other processes reach it only through atomics.
    Ok(unsafe { &*page.as_ptr().cast::<std::sync::atomic::AtomicU64>() })
}

/// The executable mapping of a file that holds the code of this function (the program's
/// own code, or that of the shared library multiproc was linked into), as `[start,
/// end)`, and how many mappings this process has, read from `/proc/self/maps`; `None`
/// if that code is not mapped from a file (a process forked from one whose code was
/// moved already).
fn own_code_range() -> Option<((usize, usize), usize)> {
    let here = code_on_huge_pages as fn() -> io::Result<usize> as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let range = maps.lines().find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let (range, perms) = (fields.next()?, fields.next()?);
        let inode = fields.nth(2)?;
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).ok()?,
            usize::from_str_radix(hi, 16).ok()?,
        );
        (perms.starts_with("r-x") && inode != "0" && (lo..hi).contains(&here)).then_some((lo, hi))
    })?;
    Some((range, maps.lines().count()))
}

/// Whether no page of the mapping that starts at `lo` differs from its file: none is a
/// private copy (`Anonymous: 0 kB` in `/proc/self/smaps`), as a breakpoint or a uprobe
/// written into the code would make one. Such a page must not be copied: the kernel
/// knows a uprobe's trap only in the file's mapping, and one met elsewhere is a
/// `SIGTRAP` that ends the process.
fn code_is_the_files(lo: usize) -> bool {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return false;
    };
    // The kernel writes addresses with at least 8 hex digits.
    let head = format!("{lo:08x}-");
    smaps
        .lines()
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| {
            l.split_ascii_whitespace()
                .next()
                .is_some_and(|f| f.ends_with(':'))
        })
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .is_some_and(|kb| kb.trim() == "0 kB")
}

/// Huge pages are 2 MiB on x86-64, the one architecture this moves code on.
const HUGE_PAGE: usize = 2 << 20;

/// `MADV_COLLAPSE` (Linux 6.1): make a range one huge page each 2 MiB, now, or fail.
/// (Not in the `libc` crate for every C library it binds.)
const MADV_COLLAPSE: libc::c_int = 25;

/// Puts the part of this program's code that fills whole 2 MiB blocks of the address
/// space on huge pages of anonymous memory: the same bytes at the same addresses, read
/// and executable, never writable. A process forked afterwards maps that code with one
/// page-table entry per block, copied by `fork`, instead of taking a page fault per
/// 64 KiB it runs and unmapping each page again as it exits. Returns how many bytes
/// moved: 0 when no whole block lies in the code, when the kernel cannot give huge
/// pages for it now, when a page of it was written (a breakpoint, a uprobe), or on an
/// architecture other than x86-64 (arm64's branch target protection is a property of
/// the file's mapping, which a copy would drop); the code is then left as it was.
///
/// Costs: 2 MiB of memory per block, for the life of this process (its forks share
/// it), and in core dumps; a profiler that reads this process's mappings after the move
/// (`perf record -p`) sees that code as anonymous memory, and uprobes placed in it
/// afterwards do not fire in this process or its forks.
///
/// Only for a process with one thread (the fork server): see `to_huge_pages`.
pub(crate) fn code_on_huge_pages() -> io::Result<usize> {
    if !cfg!(target_arch = "x86_64") || super::thread_count() != Some(1) {
        return Ok(0);
    }
    let Some(((lo, hi), mappings)) = own_code_range() else {
        return Ok(0);
    };
    // Looked at before the copy and after it: a trap written and taken away again
    // between the two looks would not show in the second alone.
    if !code_is_the_files(lo) {
        return Ok(0);
    }
    // The move unmaps the code first, then moves the copy there; it fails in between
    // (leaving no code where the thread returns to) if the process is near its limit of
    // mappings, so that limit is kept well away from.
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|l| l.trim().parse::<usize>().ok());
    if limit.is_none_or(|limit| mappings + 64 > limit) {
        return Ok(0);
    }
    // SAFETY: `[lo, hi)` is this program's code, mapped readable and never written;
    // this process runs one thread; the bytes moved are the file's (checked after the
    // copy, in `to_huge_pages`), the same at the same addresses.
    unsafe { to_huge_pages(lo, hi, || code_is_the_files(lo)) }
}

/// Replaces the whole 2 MiB blocks of the mapped range `[lo, hi)` by huge pages of
/// anonymous memory holding the same bytes, read-only and executable, if `copy_ok`
/// says, once they are copied, that the copy may serve. Returns how many bytes moved,
/// or the error that left the range as it was.
///
/// # Safety
/// `[lo, hi)` is mapped and readable, and nothing writes to it. Whatever runs or reads
/// there must be indifferent to the pages under it being replaced by others holding the
/// same bytes: the move is one system call, but the kernel unmaps the range before it
/// moves the copy there, so no other thread may run or read there meanwhile, and the
/// move failing in between (for want of kernel memory, or at the limit of mappings)
/// leaves nothing there.
unsafe fn to_huge_pages(lo: usize, hi: usize, copy_ok: impl FnOnce() -> bool) -> io::Result<usize> {
    let (start, end) = (lo.next_multiple_of(HUGE_PAGE), hi / HUGE_PAGE * HUGE_PAGE);
    if end <= start {
        return Ok(0);
    }
    let len = end - start;
    // SAFETY: `copy` is a new private anonymous mapping of this function's own, aligned
    // by unmapping its unaligned ends; the copy reads the caller's readable range. The
    // move (`mremap` onto the range's addresses) replaces those pages in one system
    // call by pages holding the same bytes, with no write access, as the caller allows;
    // on any failure before it, the copy is unmapped and the range left as it was.
    unsafe {
        let raw = rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len + HUGE_PAGE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )? as usize;
        let copy = raw.next_multiple_of(HUGE_PAGE);
        if copy > raw {
            let _ = rustix::mm::munmap(raw as *mut std::ffi::c_void, copy - raw);
        }
        let tail = (copy + len) as *mut std::ffi::c_void;
        let _ = rustix::mm::munmap(tail, raw + HUGE_PAGE - copy);
        let copy = copy as *mut std::ffi::c_void;
        let give_up = |e: io::Error| {
            let _ = rustix::mm::munmap(copy, len);
            e
        };
        rustix::mm::madvise(copy, len, rustix::mm::Advice::LinuxHugepage)
            .map_err(|e| give_up(e.into()))?;
        std::ptr::copy_nonoverlapping(start as *const u8, copy.cast::<u8>(), len);
        if !copy_ok() {
            return Err(give_up(io::Error::other("the code is not the file's")));
        }
        // Huge pages for all of it, or none: 4 KiB anonymous pages of code would cost
        // every fork a copy of each page's entry, and every exit an unmapping of each.
        if libc::madvise(copy, len, MADV_COLLAPSE) != 0 {
            return Err(give_up(io::Error::last_os_error()));
        }
        rustix::mm::mprotect(
            copy,
            len,
            rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::EXEC,
        )
        .map_err(|e| give_up(e.into()))?;
        rustix::mm::mremap_fixed(
            copy,
            len,
            len,
            rustix::mm::MremapFlags::MAYMOVE,
            start as *mut std::ffi::c_void,
        )
        .map_err(|e| give_up(e.into()))?;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_memory_file_takes_no_more_seals() {
        // A process holding the descriptor that sealed it against writes would make
        // every later writable mapping fail, in every process that receives it.
        for fd in [
            memfd("t", 4096).unwrap(),
            memfd_growable("t", 4096).unwrap(),
        ] {
            let sealed = rustix::fs::fcntl_add_seals(&fd, SealFlags::FUTURE_WRITE);
            assert_eq!(sealed, Err(rustix::io::Errno::PERM));
        }
    }

    /// Whether every page of `[start, start + len)` (page-aligned) is resident.
    fn resident(start: usize, len: usize) -> bool {
        let mut pages = vec![0u8; len.div_ceil(4096)];
        // SAFETY: a page-aligned range of this process's memory; `pages` has one byte
        // per page.
        let r = unsafe { libc::mincore(start as *mut libc::c_void, len, pages.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        pages.iter().all(|p| p & 1 == 1)
    }

    /// An anonymous private mapping of `len` bytes (base-size pages) of its own: a
    /// vector's allocation could come from heap memory that another test running in
    /// this process touched and freed (the allocator serves large blocks from its heap
    /// once a large block was freed).
    struct Fresh(*mut libc::c_void, usize);

    impl Fresh {
        fn new(len: usize) -> Fresh {
            // SAFETY: a new anonymous mapping; nothing else refers to it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
            // SAFETY: the mapping just made; the advice changes no byte.
            unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
            Fresh(p, len)
        }

        fn slots(&mut self) -> &mut [std::mem::MaybeUninit<u64>] {
            // SAFETY: the mapping is `len` bytes, page-aligned, readable and writable,
            // and borrowed mutably through `self` for the slice's lifetime.
            unsafe { std::slice::from_raw_parts_mut(self.0.cast(), self.1 / 8) }
        }
    }

    impl Drop for Fresh {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, no longer borrowed.
            unsafe { libc::munmap(self.0, self.1) };
        }
    }

    #[test]
    fn prefault_brings_pages_in_and_changes_nothing() {
        let mut fresh = Fresh::new(8 << 20);
        let spare = fresh.slots();
        for (i, slot) in spare.iter_mut().enumerate().step_by(777) {
            slot.write(i as u64 ^ 0x5a5a);
        }
        // The writes, 6,216 bytes apart, skip about one page in three.
        let start = spare.as_ptr() as usize + 64 * 4096;
        assert!(
            !resident(start, 16 * 4096),
            "untouched pages are not yet there"
        );
        prefault(spare);
        assert!(resident(start, 16 * 4096), "prefaulted pages are there");
        for (i, slot) in fresh.slots().iter().enumerate().step_by(777) {
            // SAFETY: written above.
            assert_eq!(unsafe { slot.assume_init() }, i as u64 ^ 0x5a5a);
        }
        // Fewer than four whole pages: left alone.
        let mut small = Fresh::new(1 << 20);
        let spare = &mut small.slots()[..1024];
        let at = spare.as_ptr() as usize;
        prefault(spare);
        assert!(!resident(at, 4096), "a small range is not populated");
    }

    /// Whether the kernel makes a fresh 2 MiB block of anonymous memory one huge page
    /// when asked (`MADV_COLLAPSE`, Linux 6.1, with huge pages not switched off).
    fn kernel_collapses() -> bool {
        // Not a `Fresh` mapping: those are kept off huge pages.
        // SAFETY: a new anonymous mapping of this function's own, unmapped at its end;
        // the block written and collapsed lies inside it.
        unsafe {
            let region = libc::mmap(
                std::ptr::null_mut(),
                2 * HUGE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(region, libc::MAP_FAILED);
            let block = (region as usize).next_multiple_of(HUGE_PAGE) as *mut libc::c_void;
            block.cast::<u8>().write_bytes(1, HUGE_PAGE);
            let collapsed = libc::madvise(block, HUGE_PAGE, MADV_COLLAPSE) == 0;
            libc::munmap(region, 2 * HUGE_PAGE);
            collapsed
        }
    }

    /// The `/proc/self/smaps` entry of the mapping that starts at `start`: its header
    /// line and its `AnonHugePages` in kB.
    fn smaps_entry(start: usize) -> (String, u64) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{start:08x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        let header = lines.next().unwrap().to_owned();
        let huge = lines
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        (header, huge)
    }

    #[test]
    fn code_moves_to_huge_pages_with_its_bytes() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        // Three pages before a 2 MiB boundary to two past the second boundary after it:
        // two whole blocks, and ends that cannot move.
        let page = rustix::param::page_size();
        let (before, after) = (3 * page, 2 * page);
        let len = before + 2 * HUGE_PAGE + after;
        let mut exe = std::fs::File::open("/proc/self/exe").unwrap();
        let mut contents = vec![0; len];
        exe.read_exact(&mut contents)
            .expect("the test program is too small");
        let reserved = Fresh::new(len + 2 * HUGE_PAGE);
        let block = (reserved.0 as usize + before).next_multiple_of(HUGE_PAGE);
        let lo = block - before;
        // SAFETY: inside a reservation of this test's own; the file is mapped over it.
        let mapped = unsafe {
            libc::mmap(
                lo as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                exe.as_raw_fd(),
                0,
            )
        };
        assert_eq!(mapped as usize, lo, "mmap: {}", io::Error::last_os_error());
        let whole_file = |what: &str| {
            let (head, huge) = smaps_entry(lo);
            assert!(
                head.starts_with(&format!("{lo:x}-{:x} ", lo + len)) && head.contains('/'),
                "{what}: {head}"
            );
            assert_eq!(huge, 0, "{what}");
        };
        assert!(code_is_the_files(lo));
        // A copy refused once made (the code was written meanwhile) leaves all as it was.
        // SAFETY: a mapping of this test's own, read-only, which nothing runs.
        let refused = unsafe { to_huge_pages(lo, lo + len, || false) };
        assert!(refused.is_err());
        whole_file("after a refused copy");
        // SAFETY: as above.
        let moved = unsafe { to_huge_pages(lo, lo + len, || true) };
        // SAFETY: still mapped, with the same bytes whether they moved or not.
        let now = unsafe { std::slice::from_raw_parts(lo as *const u8, len) };
        assert!(now == contents, "the bytes changed");
        match moved {
            Ok(n) => {
                assert_eq!(n, 2 * HUGE_PAGE);
                let (head, _) = smaps_entry(lo);
                assert!(
                    head.starts_with(&format!("{lo:x}-{block:x} ")) && head.contains('/'),
                    "the unaligned start stays the file's: {head}"
                );
                let (head, huge) = smaps_entry(block);
                assert!(head.contains(" r-xp ") && !head.contains('/'), "{head}");
                assert_eq!(huge, 4096, "{head}");
                let (head, _) = smaps_entry(block + 2 * HUGE_PAGE);
                assert!(
                    head.contains('/'),
                    "the unaligned end stays the file's: {head}"
                );
            }
            Err(e) => {
                assert!(!kernel_collapses(), "no huge pages: {e}");
                whole_file("after a failed move");
            }
        }
    }

    /// A page of code written in this process (as a breakpoint or a uprobe writes one)
    /// is told apart from code that is all the file's.
    #[test]
    fn written_code_is_not_the_files() {
        use std::os::fd::AsRawFd;
        let page = rustix::param::page_size();
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        // SAFETY: a new private mapping of the file; written below, then unmapped.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                4 * page,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                exe.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            assert!(code_is_the_files(at as usize));
            assert_eq!(
                libc::mprotect(at, 4 * page, libc::PROT_READ | libc::PROT_WRITE),
                0
            );
            let byte = at.cast::<u8>().add(page);
            byte.write(byte.read() ^ 0xff);
            assert_eq!(
                libc::mprotect(at, 4 * page, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
            assert!(!code_is_the_files(at as usize));
            libc::munmap(at, 4 * page);
        }
    }
}
