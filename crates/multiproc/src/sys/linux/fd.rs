//! File descriptors: pipes, socket pairs, descriptor passing and polling with deadlines.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::sys::Readiness;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// Most descriptors one `sendmsg` may carry (`SCM_MAX_FD` in the kernel).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// A connected pair of `AF_UNIX` stream sockets, close-on-exec.
pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A pipe, close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// `/dev/null`, opened read-write and close-on-exec.
pub(crate) fn dev_null() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// A close-on-exec duplicate of `fd`.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// Clears or sets close-on-exec on `fd`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec {
        FdFlags::CLOEXEC
    } else {
        FdFlags::empty()
    };
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

/// Room for the control message of the most descriptors one message carries: on the
/// stack, so that sending allocates nothing.
const RIGHTS_SPACE: [MaybeUninit<u8>; rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))] =
    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];

/// The control message passing `fds` (none if empty), in `space`.
fn rights<'a>(
    space: &'a mut [MaybeUninit<u8>],
    fds: &'a [BorrowedFd<'a>],
) -> io::Result<SendAncillaryBuffer<'a, 'a, 'a>> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_FDS_PER_MESSAGE} descriptors fit in one message"),
        ));
    }
    let len = if fds.is_empty() {
        0
    } else {
        rustix::cmsg_space!(ScmRights(fds.len()))
    };
    let mut control = SendAncillaryBuffer::new(&mut space[..len]);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("descriptor control buffer too small"));
    }
    Ok(control)
}

/// How many bytes a send on an empty Unix stream socket takes without waiting: half its
/// send buffer (`SO_SNDBUF`, which `net.core.wmem_default` sets), the most one of its
/// messages holds; the first is allocated however full the buffer is.
pub(crate) fn send_room(sock: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::net::sockopt::socket_send_buffer_size(sock)? / 2)
}

/// Sends `bufs` (and, with the first byte, `fds`) on a socket. Returns the number of bytes
/// written, which may be short; never raises `SIGPIPE`. With `nonblocking`, returns
/// `WouldBlock` when the socket has no room.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<usize> {
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    if fds.is_empty() {
        return retry(|| rustix::net::sendmsg(sock, bufs, &mut Default::default(), flags));
    }
    let mut space = RIGHTS_SPACE;
    let mut control = rights(&mut space, fds)?;
    retry(|| rustix::net::sendmsg(sock, bufs, &mut control, flags))
}

/// Receives into `buf`, appending any passed descriptors (close-on-exec) to `fds`.
///
/// Returns `Ok(0)` at end of stream. With `nonblocking`, returns `WouldBlock` when
/// nothing is ready.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<usize> {
    match recv_keeping_bytes(sock, buf, fds, nonblocking)? {
        (_, true) => Err(lost_descriptors_error()),
        (n, false) => Ok(n),
    }
}

/// As [`recv_with_fds`], but a receive whose passed descriptors were lost still says
/// how many bytes it took (with `true`): a reader of a stream keeps in step with it.
pub(crate) fn recv_keeping_bytes(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<(usize, bool)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let msg =
        retry(|| rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags))?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok((msg.bytes, msg.flags.contains(ReturnFlags::CTRUNC)))
}

/// A receive whose passed descriptors found no room in this process (or no room in its
/// control buffer): the kernel closed those that did not fit, and the bytes the receive
/// took off the socket are gone with its answer.
#[derive(Debug)]
struct DescriptorsLost;

impl std::fmt::Display for DescriptorsLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "descriptors passed with a message were lost: this process had no descriptor \
             free to take them in (Too many open files)",
        )
    }
}

impl std::error::Error for DescriptorsLost {}

/// The error of a receive that lost the descriptors passed with it.
pub(crate) fn lost_descriptors_error() -> io::Error {
    io::Error::other(DescriptorsLost)
}

/// Whether `e` is a receive that lost the descriptors passed with it: from
/// [`recv_with_fds`], what it read is lost too, so a stream it read from is out of step
/// (a connection's framing reads with [`recv_keeping_bytes`] and stays in step).
pub(crate) fn descriptors_lost(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<DescriptorsLost>())
}

/// Whether this process could take in `n` more descriptors now: `Err` (`EMFILE` or
/// `ENFILE`) if not. A message's passed descriptors are installed as it is received,
/// and those that find no room are closed by the kernel, the message taken all the
/// same: a receiver asks this first and leaves the message where it is. Another thread
/// may take the room between the question and the receive. `fd` is duplicated `n` times
/// to find out, and the duplicates closed.
pub(crate) fn room_for_descriptors(fd: BorrowedFd<'_>, n: usize) -> io::Result<()> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(rustix::io::fcntl_dupfd_cloexec(fd, 0)?);
    }
    Ok(())
}

/// Whether `e` says that no descriptor was free (in this process, or in the system).
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether `e` says that no address space was left to map something (`ENOMEM`: the
/// process's `RLIMIT_AS`, its limit of mappings, or the system's memory).
pub(crate) fn out_of_address_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOMEM)
}

/// Sends one message on a sequenced-packet socket without blocking: `WouldBlock` when
/// the socket's buffer is full.
pub(crate) fn send_packet(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = RIGHTS_SPACE;
    let mut control = rights(&mut space, fds)?;
    retry(|| {
        rustix::net::sendmsg(
            sock,
            bufs,
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )
    })
}

/// Looks at the start of the next message on a sequenced-packet socket without taking
/// it (and without its descriptors). `Ok(None)` when there is none.
pub(crate) fn peek_packet(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut control = RecvAncillaryBuffer::new(&mut []);
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
    match retry(|| rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags)) {
        Ok(msg) => Ok(Some(msg.bytes)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until `fd` can be written, `gone` (the other end's liveness pipe, if any) hangs
/// up, or `deadline` passes. True if writable (or failed: the write says how).
pub(crate) fn wait_writable(
    fd: BorrowedFd<'_>,
    gone: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let mut both = [
        PollFd::new(&fd, PollFlags::OUT),
        PollFd::new(gone.as_ref().unwrap_or(&fd), PollFlags::IN),
    ];
    let fds = if gone.is_some() {
        &mut both[..]
    } else {
        &mut both[..1]
    };
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match rustix::event::poll(fds, timeout.as_ref()) {
            Ok(n) => {
                return Ok(n > 0
                    && fds[0]
                        .revents()
                        .intersects(PollFlags::OUT | PollFlags::ERR | PollFlags::HUP));
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `buf` to a pipe or file descriptor.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = retry(|| rustix::io::write(fd, buf))?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Reads into `buf`; `Ok(0)` at end of file. With `nonblocking`, the descriptor must be
/// polled first (pipes here are blocking; callers poll before reading).
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| rustix::io::read(fd, &mut *buf))
}

/// Waits until one of `fds` is readable or hung up, or `deadline` passes (`None`: forever).
///
/// Returns the readiness of each descriptor, all not ready on timeout.
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<Readiness>> {
    let mut pollfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    loop {
        let timeout = match deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                Some(Timespec {
                    tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                    tv_nsec: i64::from(left.subsec_nanos()),
                })
            }
        };
        match rustix::event::poll(&mut pollfds, timeout.as_ref()) {
            Ok(_) => break,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pollfds
        .iter()
        .map(|p| {
            let r = p.revents();
            Readiness {
                readable: r.intersects(PollFlags::IN | PollFlags::ERR),
                hangup: r.intersects(PollFlags::HUP | PollFlags::NVAL),
            }
        })
        .collect())
}

/// Whether a send of descriptors failed because too many are in flight for this user
/// (`ETOOMANYREFS`: those sent and not yet read, in every Unix socket, count against
/// the sender's `RLIMIT_NOFILE`, for a user without `CAP_SYS_RESOURCE`): a reader's
/// progress makes room, as for a full socket.
pub(crate) fn too_many_in_flight(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ETOOMANYREFS)
}

/// Whether `fd` is readable or hung up right now.
pub(crate) fn poll_now(fd: BorrowedFd<'_>) -> io::Result<Readiness> {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(
            &mut fds,
            Some(&Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        ) {
            Ok(_) => break,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let r = fds[0].revents();
    Ok(Readiness {
        readable: r.intersects(PollFlags::IN | PollFlags::ERR),
        hangup: r.intersects(PollFlags::HUP | PollFlags::NVAL),
    })
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Borrows every descriptor of a slice.
pub(crate) fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

/// The process id and user id of the process at the other end of a connected Unix
/// socket, as of when it connected (`SO_PEERCRED`; the pid as this process's pid
/// namespace sees it, 0 for a process outside it).
///
/// Read into the C library's `ucred` by hand: rustix's `UCred` holds the pid as a
/// non-zero number, and the kernel gives 0 for a peer in a pid namespace this process
/// cannot see (a container sharing the host's network but not its processes), which
/// made reading it undefined behaviour.
pub(crate) fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a `ucred` the call writes at most `len` bytes of, and `len` is
    // its size; the descriptor is borrowed for the call.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid.unsigned_abs(), cred.uid))
}

/// This process's real user id.
pub(crate) fn user_id() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A socket address in Linux's abstract namespace: no file, gone with its last socket.
pub(crate) fn abstract_socket_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

/// Moves `fds` to descriptors `first`, `first + 1`, ... (not close-on-exec), for a
/// child between `fork` and `exec`: async-signal-safe and allocation-free. Every source
/// is first duplicated above the targets, so that none is overwritten before it is
/// copied; the sources stay open (they are close-on-exec).
pub(super) fn place_raw(fds: &[RawFd], first: RawFd) -> io::Result<()> {
    let mut high = [0 as RawFd; 8];
    if fds.len() > high.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let floor = first + high.len() as RawFd;
    for (slot, &fd) in high.iter_mut().zip(fds) {
        // SAFETY: plain descriptor syscall on a descriptor this process owns.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        *slot = dup;
    }
    for (i, &fd) in high.iter().take(fds.len()).enumerate() {
        // SAFETY: as above; `dup2` onto a low descriptor closes whatever was there in this
        // (child) process only.
        if unsafe { libc::dup2(fd, first + i as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `fds` this process's descriptors `first`, `first + 1`, ... in order (not
/// close-on-exec), and returns them there; the originals are closed. Whatever was open
/// at those numbers is closed: the caller owns them (a process setting up its standard
/// streams and the descriptors its protocol expects).
pub(crate) fn renumber(fds: Vec<OwnedFd>, first: RawFd) -> io::Result<Vec<OwnedFd>> {
    place(fds, first, false)
}

/// Keeps the descriptors below `first`, and `fds` renumbered to `first`, `first + 1`,
/// ...; closes every other. For a process that starts a life of its own here (a fork
/// server, a child before its call): a descriptor something else in the process still
/// owns would be closed under it, so the caller forgets what it inherited first.
pub(crate) fn keep_only(fds: Vec<OwnedFd>, first: RawFd) -> io::Result<Vec<OwnedFd>> {
    let count = fds.len() as RawFd;
    let kept = place(fds, first, true)?;
    close_from(first + count);
    Ok(kept)
}

/// Moves each of `fds` to its number (`first + i`) straight, with one `dup2`, where no
/// other still to move is there; one already there stays (made inheritable). Moves that
/// wait on each other in a cycle are broken by copying one source above every target.
/// A child's set-up moves five descriptors this way with five or so system calls,
/// against four each when every one went above the targets first. `closing_above`:
/// sources at or above the last target are left open, for the caller to close with
/// the rest.
fn place(fds: Vec<OwnedFd>, first: RawFd, closing_above: bool) -> io::Result<Vec<OwnedFd>> {
    let count = fds.len();
    let end = first.saturating_add(count as RawFd);
    let target = |i: usize| first + i as RawFd;
    let mut pending: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut placed: Vec<Option<OwnedFd>> = (0..count).map(|_| None).collect();
    let release = |fd: OwnedFd| {
        if closing_above && fd.as_raw_fd() >= end {
            // Closed with the rest by the caller's `close_range`.
            let _ = fd.into_raw_fd();
        }
    };
    loop {
        let mut moved = false;
        for i in 0..count {
            let Some(src) = pending[i].as_ref() else {
                continue;
            };
            let to = target(i);
            if src.as_raw_fd() == to {
                set_cloexec(src.as_fd(), false)?;
                placed[i] = pending[i].take();
                moved = true;
                continue;
            }
            // Another source is still at `to`: it moves first.
            if pending
                .iter()
                .flatten()
                .any(|other| other.as_raw_fd() == to)
            {
                continue;
            }
            // SAFETY: `dup2` onto `to` closes whatever was open there, which the caller
            // owns (stated above) and which is no source still to move (checked).
            if unsafe { libc::dup2(src.as_raw_fd(), to) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `dup2` just opened `to` as a copy of `src`; nothing else owns it.
            placed[i] = Some(unsafe { OwnedFd::from_raw_fd(to) });
            if let Some(src) = pending[i].take() {
                release(src);
            }
            moved = true;
        }
        if pending.iter().all(Option::is_none) {
            break;
        }
        if !moved {
            // Only cycles are left: one source goes above every target.
            let i = pending.iter().position(Option::is_some).unwrap_or(0);
            if let Some(src) = pending[i].take() {
                let high = rustix::io::fcntl_dupfd_cloexec(&src, end.max(16))?;
                pending[i] = Some(high);
            }
        }
    }
    Ok(placed.into_iter().flatten().collect())
}

/// Closes every descriptor from `first` up.
fn close_from(first: RawFd) {
    // SAFETY: `close_range` only closes descriptors; the ones it closes are not used
    // afterwards (`keep_only`'s caller owns nothing at or above `first` any more).
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= first)
            .collect(),
        Err(_) => return,
    };
    for fd in open {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
}

/// The identity (device, inode) of the file open at descriptor `raw`, which this
/// process inherited; `None` if nothing is open there.
pub(crate) fn inherited_fd_id(raw: RawFd) -> Option<(u64, u64)> {
    // SAFETY: `F_GETFD` only inspects the descriptor table.
    if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open (checked above) and stays open for the one `fstat`
    // this borrow lasts: no other thread runs yet when tokens are read, and none closes
    // descriptors it does not own.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    super::mem::file_id(fd).ok()
}

/// Takes ownership of a descriptor that this process inherited at a known number.
pub(crate) fn adopt_inherited_fd(raw: RawFd) -> Option<OwnedFd> {
    inherited_fd_id(raw)?;
    // SAFETY: the descriptor is open, and this process was started with it for exactly
    // this purpose (the token names it and its identity); nothing else in the process
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_cloexec(fd.as_fd(), true).ok()?;
    Some(fd)
}

/// Gives up ownership of `fd` without closing it: for the standard streams, which stay
/// open at 0, 1 and 2 for the life of the process.
pub(crate) fn leave_open(fd: OwnedFd) {
    let _ = fd.into_raw_fd();
}

/// Takes an exclusive lock on `file` (`flock`) without waiting: `false` if another
/// open file description holds one.
pub(crate) fn try_lock_file(file: &std::fs::File) -> io::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Makes `stdin`, `stdout` and `stderr` this process's descriptors 0, 1 and 2.
pub(crate) fn redirect_stdio(
    stdin: &std::fs::File,
    stdout: &std::fs::File,
    stderr: &std::fs::File,
) -> io::Result<()> {
    rustix::stdio::dup2_stdin(stdin)?;
    rustix::stdio::dup2_stdout(stdout)?;
    rustix::stdio::dup2_stderr(stderr)?;
    Ok(())
}

/// The permissions a file `options` creates gets (before the umask).
pub(crate) fn set_create_mode(options: &mut std::fs::OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file open at `raw` (device, inode), if any.
    fn id_at(raw: RawFd) -> Option<(u64, u64)> {
        inherited_fd_id(raw)
    }

    fn cloexec_at(raw: RawFd) -> bool {
        // SAFETY: `F_GETFD` only inspects the descriptor table.
        unsafe { libc::fcntl(raw, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    /// A new descriptor (a pipe's read end) at exactly `raw`.
    fn open_at(raw: RawFd) -> OwnedFd {
        let (r, _w) = pipe().unwrap();
        // SAFETY: the test owns the numbers from 300 up, which nothing else uses.
        let got = unsafe { libc::dup3(r.as_raw_fd(), raw, libc::O_CLOEXEC) };
        assert_eq!(got, raw);
        // SAFETY: just opened there, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(raw) }
    }

    /// Sources at `at` go to 300, 301, ...: each lands on its own target, inheritable,
    /// and every source that is not a target is closed.
    fn check(at: &[RawFd]) {
        let fds: Vec<OwnedFd> = at.iter().map(|&raw| open_at(raw)).collect();
        let ids: Vec<_> = at.iter().map(|&raw| id_at(raw).unwrap()).collect();
        let placed = renumber(fds, 300).unwrap();
        for (i, fd) in placed.iter().enumerate() {
            let to = 300 + i as RawFd;
            assert_eq!(fd.as_raw_fd(), to, "{at:?}");
            assert_eq!(id_at(to), Some(ids[i]), "{at:?}: descriptor {i}");
            assert!(!cloexec_at(to), "{at:?}: {to} is close-on-exec");
        }
        for &raw in at {
            if !(300..300 + at.len() as RawFd).contains(&raw) {
                assert_eq!(id_at(raw), None, "{at:?}: source {raw} left open");
            }
        }
    }

    #[test]
    fn renumber_moves_each_straight_and_breaks_cycles() {
        check(&[310, 311, 312]); // apart from the targets
        check(&[300, 311, 302]); // some already in place
        check(&[301, 300]); // a swap
        check(&[301, 302, 300]); // a three-cycle
        check(&[301, 310, 300, 303]); // a chain into a cycle, one in place
        check(&[302, 300, 301, 320, 304]); // as a child's set-up receives them
    }
}
