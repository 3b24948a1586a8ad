//! File descriptors: pipes, socket pairs, descriptor passing and polling with deadlines.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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

/// Sends `bufs` (and, with the first byte, `fds`) on a socket. Returns the number of bytes
/// written, which may be short; never raises `SIGPIPE`.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.is_empty() {
        return retry(|| {
            rustix::net::sendmsg(sock, bufs, &mut Default::default(), SendFlags::NOSIGNAL)
        });
    }
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_FDS_PER_MESSAGE} descriptors fit in one message"),
        ));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("descriptor control buffer too small"));
    }
    retry(|| rustix::net::sendmsg(sock, bufs, &mut control, SendFlags::NOSIGNAL))
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
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::other("passed descriptors were truncated"));
    }
    Ok(msg.bytes)
}

/// Sends one message on a sequenced-packet socket without blocking: `WouldBlock` when
/// the socket's buffer is full.
pub(crate) fn send_packet(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("descriptor control buffer too small"));
    }
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

/// Waits until `fd` can be written, or `deadline` passes. True if writable.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
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

/// A socket address in Linux's abstract namespace: no file, gone with its last socket.
pub(crate) fn abstract_socket_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}
