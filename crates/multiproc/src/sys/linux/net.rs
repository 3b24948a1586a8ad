//! Socket options of TCP connections and listeners.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use rustix::net::sockopt;

/// Turns on TCP keepalive so that a peer that stops answering (a partition, a host that
/// is gone) is given up about `give_up` after it last answered: probes start after half
/// of it, then every sixth of it (at least a second apart); `TCP_USER_TIMEOUT` of
/// `give_up` bounds both the probes and data this side sent that was never
/// acknowledged. The connection then fails with `ETIMEDOUT`.
pub(crate) fn set_keepalive(fd: BorrowedFd<'_>, give_up: Duration) -> io::Result<()> {
    let second = Duration::from_secs(1);
    sockopt::set_socket_keepalive(fd, true)?;
    sockopt::set_tcp_keepidle(fd, (give_up / 2).max(second))?;
    sockopt::set_tcp_keepintvl(fd, (give_up / 6).max(second))?;
    sockopt::set_tcp_keepcnt(fd, 3)?;
    let ms = u32::try_from(give_up.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
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
