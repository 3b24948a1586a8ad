//! The door: accepts connections and runs their handshakes, many at once on one thread,
//! and hands each authenticated connection to a thread of its own.
//!
//! A connection still in its handshake costs a descriptor and a few bytes here, never a
//! thread: the accepting thread polls the listener and every half-open connection, and
//! reads what each has sent without blocking. Each handshake has one deadline for the
//! whole of it (a peer that sends a byte at a time gains nothing), and at most
//! `max_handshakes` are in progress: a new connection past that drops the oldest. A
//! client that has authenticated is never touched by any of this, so a slowloris or a
//! burst of connections costs other clients little but the CPU the polling takes.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Address;
use super::local::Nearby;
use super::protocol::{self, Handshake, Refused, Step, Stream};
use super::server::Shared;

/// Connections accepted at most per turn of the loop, so that handshakes in progress
/// are read between the connections of a burst.
const ACCEPT_BATCH: usize = 64;
/// How long the loop sleeps when it cannot accept for want of descriptors and has no
/// half-open connection to drop.
const OUT_OF_DESCRIPTORS: Duration = Duration::from_millis(50);
/// The longest the loop polls without looking whether the server is stopping.
const STOP_CHECK: Duration = Duration::from_secs(1);

/// A bound listening socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
}

/// A Unix socket file a server bound, by its path and what the file system says of it
/// then (device, inode, change time): removed only while the path still names that file,
/// not one another server bound there after finding this one stale (its server killed).
/// The change time tells a new file that got the inode of one just removed from it.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: std::path::PathBuf,
    id: (u64, u64, i64, i64),
}

impl SocketFile {
    /// The socket file at `path`, as it is now.
    pub(crate) fn of(path: &std::path::Path) -> Option<SocketFile> {
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(SocketFile {
            path: path.to_path_buf(),
            id: file_id(&m)?,
        })
    }

    /// Removes the file, if its path still names it.
    pub(crate) fn remove(&self) {
        let m = std::fs::symlink_metadata(&self.path).ok();
        if m.and_then(|m| file_id(&m)) == Some(self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A file's device, inode and change time.
#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> Option<(u64, u64, i64, i64)> {
    None
}

/// Whether `path` is a socket that nobody listens on: a connection to it is refused.
#[cfg(not(unix))]
fn stale(_: &std::path::Path) -> bool {
    false
}

/// Whether `path` is a socket that nobody listens on: a connection to it is refused.
/// Elsewhere than Linux, with a connection that may wait for a listener's full queue.
#[cfg(all(unix, not(target_os = "linux")))]
fn stale(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
}

/// The look does not wait: a listener whose queue is full (a server that does not
/// accept) answers `EAGAIN`, and counts as listening.
#[cfg(target_os = "linux")]
fn stale(path: &std::path::Path) -> bool {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        return false;
    }
    let Ok(sock) = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = SocketAddrUnix::new(path) else {
        return false;
    };
    rustix::net::connect(&sock, &addr) == Err(rustix::io::Errno::CONNREFUSED)
}

/// The path clients are given for a Unix socket bound at `path`: the path from the
/// root, where a relative one would name another file (or none) for a client in another
/// directory (a child given a `current_dir`), and for this process after a `chdir`,
/// which then left its socket behind as it stopped. The path as given where the whole
/// one does not fit the 107 bytes a socket's path holds (a relative path is how a
/// socket deep in the tree is bound at all), or where the working directory is gone.
/// Clients' addresses go through it too (`Client::get`), so that one server is one
/// client in a process, whichever form the program named it by.
#[cfg(unix)]
pub(crate) fn whole_path(path: &std::path::Path) -> std::borrow::Cow<'_, std::path::Path> {
    use std::os::unix::ffi::OsStrExt;
    if !path.is_relative() {
        return std::borrow::Cow::Borrowed(path);
    }
    match std::path::absolute(path) {
        Ok(whole) if whole.as_os_str().as_bytes().len() <= 107 => std::borrow::Cow::Owned(whole),
        _ => std::borrow::Cow::Borrowed(path),
    }
}

/// `address` as its server gives it to clients (see [`whole_path`]).
pub(crate) fn for_clients(address: &Address) -> Address {
    match address {
        #[cfg(unix)]
        Address::Unix(path) => Address::Unix(whole_path(path).into_owned()),
        other => other.clone(),
    }
}

impl Listener {
    /// Binds `address` (a TCP port of 0 picks a free one); returns the listener and the
    /// address clients connect to.
    pub(crate) fn bind(address: &Address) -> io::Result<(Listener, Address)> {
        match address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let bound = l.local_addr()?;
                Ok((Listener::Tcp(l), Address::Tcp(bound)))
            }
            #[cfg(unix)]
            Address::Unix(path) => {
                let whole = whole_path(path);
                let l = match std::os::unix::net::UnixListener::bind(path) {
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse && stale(path) => {
                        // A server that ended without removing its socket (killed, or
                        // its process ended by a signal while it served for ever):
                        // nobody listens there, so it is removed and bound anew.
                        tracing::debug!(path = %path.display(), "removing a stale socket");
                        std::fs::remove_file(path)?;
                        std::os::unix::net::UnixListener::bind(path)?
                    }
                    other => other?,
                };
                Ok((Listener::Unix(l), Address::Unix(whole.into_owned())))
            }
            #[cfg(unix)]
            Address::Abstract(name) => {
                let a = crate::sys::abstract_socket_addr(name)?;
                let l = std::os::unix::net::UnixListener::bind_addr(&a)?;
                Ok((Listener::Unix(l), address.clone()))
            }
            #[allow(unreachable_patterns)]
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kind of address is not supported on this platform",
            )),
        }
    }

    /// Non-blocking, with the longest queue of connections the system allows.
    fn prepare(&self) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            match self {
                Listener::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    crate::sys::listen_backlog(l.as_fd())
                }
                Listener::Unix(l) => {
                    l.set_nonblocking(true)?;
                    crate::sys::listen_backlog(l.as_fd())
                }
            }
        }
        #[cfg(not(unix))]
        {
            match self {
                Listener::Tcp(l) => l.set_nonblocking(true),
            }
        }
    }

    /// For a TCP listener on Linux, a second one in the abstract socket namespace under
    /// a fresh name, and that name: a client on this machine that connected over TCP
    /// is told the name and moves to it, and from there onto shared-memory channels
    /// (see `local.rs`). `None` for other listeners, or when it cannot be bound.
    pub(crate) fn nearby(&self) -> Option<(Listener, Nearby)> {
        #[cfg(target_os = "linux")]
        if let Listener::Tcp(_) = self {
            let mut tag = [0u8; 8];
            if let Err(e) = getrandom::fill(&mut tag) {
                tracing::debug!("manager: no nearby listener: {e}");
                return None;
            }
            let name = format!(
                "multiproc-manager-{}-{:016x}",
                crate::sys::process_id(),
                u64::from_le_bytes(tag)
            )
            .into_bytes();
            return match Listener::bind(&Address::Abstract(name.clone())) {
                Ok((l, _)) => Some((
                    l,
                    Nearby {
                        name,
                        pid: crate::sys::process_id(),
                        uid: crate::sys::user_id(),
                    },
                )),
                Err(e) => {
                    tracing::debug!("manager: no nearby listener: {e}");
                    None
                }
            };
        }
        None
    }

    #[cfg(unix)]
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            #[cfg(unix)]
            Listener::Unix(l) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }
}

/// What the door needs to know.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DoorSettings {
    /// How long a handshake may take, in all.
    pub(crate) handshake_timeout: Duration,
    /// Handshakes in progress at most.
    pub(crate) max_handshakes: usize,
    /// TCP keepalive for accepted connections (see `sys::set_keepalive`).
    pub(crate) keepalive: Option<Duration>,
}

/// A connection in its handshake.
struct HalfOpen {
    stream: Stream,
    handshake: Handshake,
    deadline: Instant,
}

/// What reading a half-open connection came to.
enum Outcome {
    /// Nothing more to read now.
    Waiting,
    /// Authenticated: send `reply`, and serve it.
    Accepted { session: u64, reply: Vec<u8> },
    /// Refused or broken: close it.
    Closed,
}

/// Accepts and serves connections on `listeners` until the server stops.
pub(crate) fn run(shared: &Arc<Shared>, listeners: &[&Listener], settings: DoorSettings) {
    for listener in listeners {
        if let Err(e) = listener.prepare() {
            tracing::warn!("manager: cannot prepare the listener: {e}");
        }
    }
    let mut half_open: VecDeque<HalfOpen> = VecDeque::new();
    while !shared.stopping() {
        let now = Instant::now();
        // Deadlines are in accepting order: the oldest first.
        while half_open.front().is_some_and(|h| h.deadline <= now) {
            if let Some(h) = half_open.pop_front() {
                tracing::debug!(
                    "manager: {} did not complete its handshake within {:?}",
                    h.stream.peer(),
                    settings.handshake_timeout
                );
            }
        }
        let until = half_open
            .front()
            .map_or(now + STOP_CHECK, |h| h.deadline.min(now + STOP_CHECK));
        let (accept, readable) = match wait(listeners, &half_open, until) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("manager: polling connections failed: {e}");
                std::thread::sleep(OUT_OF_DESCRIPTORS);
                continue;
            }
        };
        if shared.stopping() {
            break;
        }
        // Handshakes first: they are older than anything waiting to be accepted.
        let readable = readable.into_iter().chain(std::iter::repeat(false));
        for (mut h, ready) in std::mem::take(&mut half_open).into_iter().zip(readable) {
            if !ready {
                half_open.push_back(h);
                continue;
            }
            match advance(&mut h, shared.key(), shared.max_frame()) {
                Outcome::Waiting => half_open.push_back(h),
                Outcome::Closed => {}
                Outcome::Accepted { session, reply } => {
                    // Counted before the client hears that it is in: it may open its
                    // next connection, or drop this one, at once.
                    shared.connected(session);
                    match send_now(&h.stream, &reply).and_then(|()| h.stream.set_nonblocking(false))
                    {
                        Ok(()) => shared.start_session(h.stream, session),
                        Err(e) => {
                            tracing::debug!(
                                "manager: handshake with {} failed: {e}",
                                h.stream.peer()
                            );
                            shared.session_closed(session);
                        }
                    }
                }
            }
        }
        for (listener, _) in listeners.iter().zip(accept).filter(|(_, ready)| *ready) {
            accept_some(listener, &mut half_open, settings);
        }
    }
}

/// Polls the listeners and every half-open connection until one is readable or
/// `until`: on which listeners to accept, and which connections to read.
fn wait(
    listeners: &[&Listener],
    half_open: &VecDeque<HalfOpen>,
    until: Instant,
) -> io::Result<(Vec<bool>, Vec<bool>)> {
    #[cfg(unix)]
    {
        let mut fds = Vec::with_capacity(listeners.len() + half_open.len());
        fds.extend(listeners.iter().map(|l| l.fd()));
        fds.extend(half_open.iter().map(|h| h.stream.fd()));
        let ready: Vec<bool> = crate::sys::wait_readable(&fds, Some(until))?
            .iter()
            .map(|r| r.ready())
            .collect();
        let (accept, readable) = ready.split_at(listeners.len().min(ready.len()));
        Ok((accept.to_vec(), readable.to_vec()))
    }
    #[cfg(not(unix))]
    {
        // Without poll: look at everything after a short nap.
        std::thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(10)),
        );
        Ok((vec![true; listeners.len()], vec![true; half_open.len()]))
    }
}

/// Accepts what is waiting (a batch at most), sends each its challenge, and drops the
/// oldest half-open connections past the cap.
fn accept_some(listener: &Listener, half_open: &mut VecDeque<HalfOpen>, settings: DoorSettings) {
    for _ in 0..ACCEPT_BATCH {
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, say: the connection stays queued, so drop the
                // oldest handshake to make room, or wait for connections to end.
                tracing::warn!("manager: accept failed: {e}");
                match half_open.pop_front() {
                    Some(h) => drop_busy(h),
                    None => std::thread::sleep(OUT_OF_DESCRIPTORS),
                }
                return;
            }
        };
        match greet(stream, settings) {
            Ok(h) => half_open.push_back(h),
            Err(e) => tracing::debug!("manager: a new connection failed: {e}"),
        }
        while half_open.len() > settings.max_handshakes.max(1) {
            if let Some(h) = half_open.pop_front() {
                tracing::debug!(
                    "manager: dropped {}: {} handshakes in progress",
                    h.stream.peer(),
                    settings.max_handshakes
                );
                drop_busy(h);
            }
        }
    }
}

/// Closes a handshake dropped to make room, telling its client so if its socket takes
/// the few bytes at once: a client that answered then tries again, rather than take the
/// close for a refusal of its key.
fn drop_busy(h: HalfOpen) {
    let _ = send_now(&h.stream, &protocol::busy_frame());
}

/// Sets a new connection up and sends it the server's challenge.
fn greet(stream: Stream, settings: DoorSettings) -> io::Result<HalfOpen> {
    stream.set_nonblocking(true)?;
    if let Err(e) = stream.set_keepalive(settings.keepalive) {
        tracing::debug!("manager: no TCP keepalive: {e}");
    }
    let (handshake, hello) = Handshake::start()?;
    // A new socket's send buffer is empty: the few bytes go at once, or not at all.
    send_now(&stream, &hello)?;
    Ok(HalfOpen {
        stream,
        handshake,
        deadline: crate::deadline::later(settings.handshake_timeout),
    })
}

/// Writes `bytes` without waiting; a socket that cannot take them all now is broken.
fn send_now(stream: &Stream, bytes: &[u8]) -> io::Result<()> {
    let mut w = stream;
    match w.write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "the peer does not read",
        )),
        Err(e) => Err(e),
    }
}

/// Reads what a half-open connection has sent, and acts on a complete answer.
fn advance(h: &mut HalfOpen, key: &[u8], max_frame: u32) -> Outcome {
    let mut buf = [0u8; 128];
    loop {
        let want = h.handshake.wanted().min(buf.len());
        let n = match h.stream.read(&mut buf[..want]) {
            Ok(0) => return Outcome::Closed,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Waiting,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("manager: handshake with {} failed: {e}", h.stream.peer());
                return Outcome::Closed;
            }
        };
        match h.handshake.feed(&buf[..n], key, max_frame) {
            Step::More => {}
            Step::Accepted { session, reply } => return Outcome::Accepted { session, reply },
            Step::Refused(why, reply) => {
                if let Some(reply) = reply {
                    let _ = send_now(&h.stream, &reply);
                }
                match why {
                    Refused::BadKey => tracing::warn!(
                        "manager: refused {}: wrong authentication key",
                        h.stream.peer()
                    ),
                    Refused::Broken(why) => {
                        tracing::warn!("manager: handshake with {} failed: {why}", h.stream.peer())
                    }
                }
                return Outcome::Closed;
            }
        }
    }
}
