//! The server: accepts connections, authenticates each, and serves each on its own
//! thread, so a client blocked in a lock or a queue never stalls another.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::local::{self, Local, LocalEnd, Slot};
use super::objects::{Peer, Served};
use super::protocol::{self, FrameError, Framed, Kind, Refused, Request, Response, Stream};
use super::{Address, ErasedObject};
use crate::deadline::Deadline;
use crate::sync::unpoisoned;
use crate::wire::codec;

/// How often a connection thread waiting on a local client's channel looks whether the
/// server is stopping.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What a connection thread does next.
enum Next {
    Request(Request),
    /// Nothing came yet (a local connection): look again.
    Idle,
    /// The connection is over.
    End,
}

/// Makes a registered custom object from its encoded initial value.
pub(crate) type Ctor = fn(&[u8]) -> Result<Box<dyn ErasedObject>, String>;

/// A bound listening socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
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
                let l = std::os::unix::net::UnixListener::bind(path)?;
                Ok((Listener::Unix(l), address.clone()))
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

/// Everything the connection threads share.
pub(crate) struct Shared {
    key: Vec<u8>,
    max_frame: u32,
    objects: RwLock<HashMap<u64, Arc<Served>>>,
    names: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    /// Live connections per client session: a session whose last connection closes is a
    /// client that is gone, and its locks are released as "owner died".
    sessions: Mutex<HashMap<u64, usize>>,
    ctors: HashMap<String, Ctor>,
    conns: Mutex<HashMap<u64, Stream>>,
    next_conn: AtomicU64,
    /// Local connections open, and how many the descriptor limit allows.
    locals: Arc<AtomicUsize>,
    max_locals: usize,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(key: Vec<u8>, max_frame: u32, ctors: HashMap<String, Ctor>) -> Arc<Self> {
        Arc::new(Shared {
            key,
            max_frame,
            objects: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            ctors,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            locals: Arc::new(AtomicUsize::new(0)),
            // Half the descriptors at most, the rest for sockets and everything else.
            max_locals: crate::sys::fd_limit().map_or(usize::MAX, |n| {
                usize::try_from(n / 2).unwrap_or(usize::MAX) / local::FDS_PER_LOCAL
            }),
            stopping: AtomicBool::new(false),
        })
    }

    /// Accepts and serves connections until [`stop`](Self::stop).
    pub(crate) fn run(self: &Arc<Self>, listener: &Listener) {
        while !self.stopping.load(Ordering::Acquire) {
            let stream = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("manager: accept failed: {e}");
                    // Out of descriptors, say: let connections end before trying again.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
            };
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            let shared = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("multiproc-manager".into())
                .spawn(move || shared.serve(stream));
            if let Err(e) = spawned {
                tracing::warn!("manager: cannot start a connection thread: {e}");
            }
        }
    }

    /// Stops accepting, and closes every connection.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for stream in unpoisoned::lock(&self.conns).values() {
            stream.shutdown();
        }
    }

    fn serve(self: Arc<Self>, stream: Stream) {
        let peer = stream.peer();
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            unpoisoned::lock(&self.conns).insert(conn_id, clone);
        }
        let mut conn = Framed::new(stream);
        let _ = conn
            .stream()
            .set_read_timeout(Some(protocol::HANDSHAKE_TIMEOUT));
        match protocol::server_handshake(&mut conn, &self.key) {
            Ok(session) => {
                let _ = conn.stream().set_read_timeout(None);
                *unpoisoned::lock(&self.sessions).entry(session).or_insert(0) += 1;
                self.serve_session(&mut conn, session, &peer);
                self.session_closed(session);
            }
            Err(Refused::BadKey) => {
                tracing::warn!("manager: refused {peer}: wrong authentication key");
            }
            Err(Refused::Broken(why)) => {
                tracing::warn!("manager: handshake with {peer} failed: {why}");
            }
        }
        unpoisoned::lock(&self.conns).remove(&conn_id);
    }

    fn serve_session(&self, conn: &mut Framed, session: u64, peer: &str) {
        let mut local: Option<(Local, Slot)> = None;
        loop {
            let request = match &local {
                None => self.next_on_socket(conn, peer),
                Some((l, _)) => self.next_local(l, peer),
            };
            let request = match request {
                Next::Request(r) => r,
                Next::Idle => continue,
                Next::End => return,
            };
            if matches!(request, Request::Local) && local.is_none() {
                let slot = Slot::take(&self.locals, self.max_locals);
                match local::offer(conn, slot.is_some()) {
                    Ok(l) => local = l.zip(slot),
                    Err(e) => {
                        tracing::debug!("manager: connection from {peer} failed: {e}");
                        return;
                    }
                }
                continue;
            }
            let response = {
                let gone = || {
                    conn.stream().peer_gone()
                        || local.as_ref().is_some_and(|(l, _)| l.client_gone())
                };
                self.handle(
                    request,
                    &Peer {
                        session,
                        gone: &gone,
                    },
                )
            };
            if self.stopping.load(Ordering::Acquire) {
                // A call that waited until the server stopped: its caller reads that
                // the server is gone, not a timeout.
                return;
            }
            let sent = match &local {
                None => conn.send(&response).is_ok(),
                Some((l, _)) => l.respond(&response),
            };
            if !sent {
                return;
            }
        }
    }

    /// The next request on the socket.
    fn next_on_socket(&self, conn: &mut Framed, peer: &str) -> Next {
        match conn.recv(self.max_frame) {
            Ok(()) => {}
            Err(FrameError::Closed) => return Next::End,
            Err(FrameError::Oversized(n)) => {
                tracing::warn!(
                    "manager: closing {peer}: a frame of {n} bytes is over the limit of {}",
                    self.max_frame
                );
                return Next::End;
            }
            Err(FrameError::Io(e)) => {
                if !self.stopping.load(Ordering::Acquire) {
                    tracing::debug!("manager: connection from {peer} failed: {e}");
                }
                return Next::End;
            }
        }
        match codec::decode(&conn.body, Vec::new()) {
            Ok(r) => Next::Request(r),
            Err(e) => {
                tracing::warn!("manager: closing {peer}: malformed request: {e}");
                Next::End
            }
        }
    }

    /// The next request on a local connection's channel; `Idle` now and then while
    /// none comes, so that a stopping server ends the connection.
    fn next_local(&self, local: &Local, peer: &str) -> Next {
        let next = local.next_request(self.max_frame, Deadline::after(STOP_CHECK));
        if self.stopping.load(Ordering::Acquire) {
            // Not served: the client reads that the server is gone.
            return Next::End;
        }
        match next {
            Ok(Some(r)) => Next::Request(r),
            Ok(None) => Next::Idle,
            Err(LocalEnd::Closed) => Next::End,
            Err(LocalEnd::Refused(why)) => {
                tracing::warn!("manager: closing {peer}: {why}");
                Next::End
            }
        }
    }

    fn session_closed(&self, session: u64) {
        let ended = {
            let mut sessions = unpoisoned::lock(&self.sessions);
            match sessions.get_mut(&session) {
                Some(1) => {
                    sessions.remove(&session);
                    true
                }
                Some(n) => {
                    *n -= 1;
                    false
                }
                None => false,
            }
        };
        if ended {
            let objects: Vec<_> = unpoisoned::read(&self.objects)
                .values()
                .filter(|o| matches!(o.kind, Kind::Lock | Kind::RLock | Kind::Condition))
                .cloned()
                .collect();
            for o in objects {
                o.session_ended(session);
            }
        }
    }

    fn handle(&self, request: Request, peer: &Peer<'_>) -> Response {
        match request {
            Request::Create {
                kind,
                name,
                tag,
                init,
            } => self.create(kind, name, tag, &init.0),
            Request::Ping => Response::Unit,
            // A connection moves once (the first time is answered in `serve_session`).
            Request::Local => Response::Fault(protocol::Fault::Unsupported {
                op: "moving to shared memory".into(),
                kind: "connection already moved".into(),
            }),
            Request::Call { id, op } => {
                let object = unpoisoned::read(&self.objects).get(&id).cloned();
                match object {
                    Some(o) => o.call(op, peer),
                    None => Response::Fault(protocol::Fault::NoSuchObject(id)),
                }
            }
        }
    }

    fn create(&self, kind: Kind, name: Option<String>, tag: String, init: &[u8]) -> Response {
        // Held across creation, so two clients creating one name get one object.
        let mut names = unpoisoned::lock(&self.names);
        if let Some(name) = &name
            && let Some(&id) = names.get(name)
        {
            let objects = unpoisoned::read(&self.objects);
            let o = &objects[&id];
            if o.kind != kind || o.tag != tag {
                return Response::Fault(protocol::Fault::WrongType {
                    name: name.clone(),
                    expected: format!("{} of {tag}", kind.name()),
                    found: format!("{} of {}", o.kind.name(), o.tag),
                });
            }
            return Response::Id(id);
        }
        let custom = if kind == Kind::Custom {
            let Some(ctor) = self.ctors.get(&tag) else {
                return Response::Fault(protocol::Fault::Unregistered(tag));
            };
            match ctor(init) {
                Ok(o) => Some(o),
                Err(e) => return Response::Fault(protocol::Fault::BadInit(e)),
            }
        } else {
            None
        };
        let object = match Served::new(kind, tag, init, custom) {
            Ok(o) => o,
            Err(f) => return Response::Fault(f),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        unpoisoned::write(&self.objects).insert(id, Arc::new(object));
        if let Some(name) = name {
            names.insert(name, id);
        }
        Response::Id(id)
    }
}

/// A listener sent to the server process (its descriptor travels with the arguments).
#[derive(Debug)]
pub(crate) struct PassedListener(pub(crate) Listener);

impl serde::Serialize for PassedListener {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let (tcp, fd) = match &self.0 {
                Listener::Tcp(l) => (true, l.as_fd()),
                Listener::Unix(l) => (false, l.as_fd()),
            };
            let index = codec::pass_fd(fd).map_err(serde::ser::Error::custom)?;
            serde::Serialize::serialize(&(tcp, index), s)
        }
        #[cfg(not(unix))]
        {
            let _ = s;
            Err(serde::ser::Error::custom(
                "listeners cannot be passed on this platform",
            ))
        }
    }
}

impl<'de> serde::Deserialize<'de> for PassedListener {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (tcp, index): (bool, u32) = serde::Deserialize::deserialize(d)?;
        let fd = codec::take_fd(index).map_err(codec::refuse::<D::Error>)?;
        #[cfg(unix)]
        {
            Ok(PassedListener(if tcp {
                Listener::Tcp(TcpListener::from(fd))
            } else {
                Listener::Unix(std::os::unix::net::UnixListener::from(fd))
            }))
        }
        #[cfg(not(unix))]
        {
            let _ = (tcp, fd);
            Err(codec::refuse::<D::Error>(
                "listeners cannot be passed on this platform",
            ))
        }
    }
}
