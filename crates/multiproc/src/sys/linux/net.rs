//! Socket options of TCP connections and listeners, and connecting Unix sockets.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::sockopt;

/// Where a Unix stream socket connects: a path, or a name in the abstract namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) enum UnixTarget<'a> {
    Path(&'a std::path::Path),
    Abstract(&'a [u8]),
}

/// Connects a Unix stream socket to `target`, giving up at `until`. A plain `connect`
/// to a listener whose queue of connections not yet accepted is full (its server
/// stopped, or not accepting) waits without end; a non-blocking one says so at once
/// (`EAGAIN`) and is tried again, more and more seldom, until `until`.
pub(crate) fn connect_unix(
    target: UnixTarget<'_>,
    until: Instant,
) -> io::Result<std::os::unix::net::UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = match target {
        UnixTarget::Path(path) => SocketAddrUnix::new(path)?,
        UnixTarget::Abstract(name) => SocketAddrUnix::new_abstract_name(name)?,
    };
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let mut pause = Duration::from_millis(1);
    loop {
        match rustix::net::connect(&sock, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the server takes no new connections (its queue stays full)",
                    ));
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
    rustix::io::ioctl_fionbio(&sock, false)?;
    Ok(std::os::unix::net::UnixStream::from(sock))
}

/// Turns on TCP keepalive so that a peer that stops answering (a partition, a host that
/// is gone) is given up about `give_up` after it last answered: probes start after half
/// of it, then every sixth of it (at least a second apart); `TCP_USER_TIMEOUT` of
/// `give_up` bounds both the probes and data this side sent that was never
/// acknowledged. The connection then fails with `ETIMEDOUT`. The kernel takes at most
/// 32,767 s before the first probe and between probes, and about 24.8 days of
/// `TCP_USER_TIMEOUT`: a longer `give_up` (`Duration::MAX` for "never") is held to
/// those, so a dead peer is given up within about 36 hours rather than the kernel's
/// default of 2 h 11 min that a refused setting would leave.
pub(crate) fn set_keepalive(fd: BorrowedFd<'_>, give_up: Duration) -> io::Result<()> {
    let second = Duration::from_secs(1);
    // `MAX_TCP_KEEPIDLE` and `MAX_TCP_KEEPINTVL`.
    let most = Duration::from_secs(32_767);
    sockopt::set_socket_keepalive(fd, true)?;
    sockopt::set_tcp_keepidle(fd, (give_up / 2).clamp(second, most))?;
    sockopt::set_tcp_keepintvl(fd, (give_up / 6).clamp(second, most))?;
    sockopt::set_tcp_keepcnt(fd, 3)?;
    // An `int` of milliseconds for the kernel: more than `i32::MAX` is refused.
    let ms = u32::try_from(give_up.as_millis())
        .unwrap_or(u32::MAX)
        .clamp(1, i32::MAX.unsigned_abs());
    sockopt::set_tcp_user_timeout(fd, ms)?;
    Ok(())
}

/// Listens again with the longest queue of connections not yet accepted that the system
/// allows (`net.core.somaxconn`): std listens with 128, and past that a burst of
/// connections has its handshakes dropped and retried a second later.
pub(crate) fn listen_backlog(fd: BorrowedFd<'_>) -> io::Result<()> {
    // A listening socket may listen again to change its queue; the kernel caps the
    // length at `somaxconn`.
    rustix::net::listen(fd, i32::MAX)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Every `give_up`, however long, is set: none leaves the kernel's defaults.
    #[test]
    fn keepalive_of_any_length_is_set() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = stream.as_fd();
        for (give_up, idle, user_ms) in [
            (Duration::from_secs(30), 15, 30_000),
            (Duration::from_secs(24 * 3600), 32_767, 86_400_000),
            (Duration::MAX, 32_767, i32::MAX.unsigned_abs()),
        ] {
            set_keepalive(fd, give_up).unwrap();
            assert!(sockopt::socket_keepalive(fd).unwrap());
            assert_eq!(sockopt::tcp_keepidle(fd).unwrap().as_secs(), idle);
            assert_eq!(sockopt::tcp_user_timeout(fd).unwrap(), user_ms);
        }
    }
}
