//! The server: serves each authenticated connection on its own thread (the accepting
//! and the handshakes are `accept.rs`'s), so a client blocked in a lock or a queue never
//! stalls another; and frees the objects no client refers to any more (`refs.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::ErasedObject;
use super::accept::{self, DoorSettings, Listener};
use super::local::{self, Local, LocalEnd, Slot};
use super::objects::{Peer, Served};
use super::protocol::{self, FrameError, Framed, Kind, RefOp, Request, Response, Stream};
use super::refs::RefTable;
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

/// How a server serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerSettings {
    /// The largest request, in bytes.
    pub(crate) max_frame: u32,
    /// How long a handshake may take, in all.
    pub(crate) handshake_timeout: Duration,
    /// Handshakes in progress at most (`None`: a quarter of the descriptor limit, at
    /// most 1024).
    pub(crate) max_handshakes: Option<usize>,
    /// TCP keepalive for clients' connections.
    pub(crate) keepalive: Option<Duration>,
}

/// Everything the connection threads share.
pub(crate) struct Shared {
    key: Vec<u8>,
    max_frame: u32,
    door: DoorSettings,
    objects: RwLock<HashMap<u64, Arc<Served>>>,
    names: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    /// Live connections per client session, and the references each holds: a session
    /// whose last connection closes is a client that is gone; its locks are released
    /// as "owner died", and objects only it referred to are freed.
    refs: Mutex<RefTable>,
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

/// Handshakes in progress at most, by default: enough for a burst of clients, and a
/// quarter of the descriptors at most, so that half-open connections never take the
/// ones authenticated clients need.
fn default_max_handshakes() -> usize {
    crate::sys::fd_limit().map_or(1024, |n| {
        usize::try_from(n / 4).unwrap_or(1024).clamp(16, 1024)
    })
}

impl Shared {
    pub(crate) fn new(
        key: Vec<u8>,
        settings: ServerSettings,
        ctors: HashMap<String, Ctor>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            key,
            max_frame: settings.max_frame,
            door: DoorSettings {
                handshake_timeout: settings.handshake_timeout,
                max_handshakes: settings
                    .max_handshakes
                    .unwrap_or_else(default_max_handshakes),
                keepalive: settings.keepalive,
            },
            objects: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            refs: Mutex::new(RefTable::default()),
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
        accept::run(self, listener, self.door);
    }

    /// Whether the server is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The authentication key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// Stops accepting, and closes every connection.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for stream in unpoisoned::lock(&self.conns).values() {
            stream.shutdown();
        }
    }

    /// Counts a new connection of `session`, before the client is told it is
    /// authenticated: from then on the client may count on the server knowing it.
    pub(crate) fn connected(&self, session: u64) {
        unpoisoned::lock(&self.refs).connected(session);
    }

    /// Serves an authenticated connection of `session` (counted by
    /// [`connected`](Self::connected)) on a thread of its own.
    pub(crate) fn start_session(self: &Arc<Self>, stream: Stream, session: u64) {
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("multiproc-manager".into())
            .spawn(move || shared.serve(stream, session));
        if let Err(e) = spawned {
            tracing::warn!("manager: cannot start a connection thread: {e}");
            self.session_closed(session);
        }
    }

    fn serve(self: Arc<Self>, stream: Stream, session: u64) {
        let peer = stream.peer();
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            unpoisoned::lock(&self.conns).insert(conn_id, clone);
        }
        let mut conn = Framed::new(stream);
        self.serve_session(&mut conn, session, &peer);
        self.session_closed(session);
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
            if !request.answered() {
                if let Request::Refs(ops) = request {
                    self.apply_refs(session, ops);
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
            // No deadline on the server's reads.
            Err(FrameError::TimedOut) => return Next::End,
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

    /// A connection of `session` closed: if it was the last, the client is gone.
    pub(crate) fn session_closed(&self, session: u64) {
        let (ended, freed) = unpoisoned::lock(&self.refs).disconnected(session);
        self.free(&freed);
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

    fn apply_refs(&self, session: u64, ops: Vec<RefOp>) {
        let freed = unpoisoned::lock(&self.refs).apply(session, ops);
        self.free(&freed);
    }

    /// Forgets objects no client refers to any more. A call already running on one
    /// finishes on its own handle to it.
    fn free(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut objects = unpoisoned::write(&self.objects);
        for id in ids {
            objects.remove(id);
        }
    }

    fn handle(&self, request: Request, peer: &Peer<'_>) -> Response {
        match request {
            Request::Create {
                kind,
                name,
                tag,
                init,
            } => self.create(kind, name, tag, &init.0, peer.session),
            Request::Ping => Response::Unit,
            Request::Count => Response::Len(unpoisoned::read(&self.objects).len() as u64),
            // Not answered (see `serve_session`).
            Request::Refs(_) => Response::Unit,
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

    /// Creates an object for `session` (which holds a reference to it), or opens the
    /// one named `name`.
    fn create(
        &self,
        kind: Kind,
        name: Option<String>,
        tag: String,
        init: &[u8],
        session: u64,
    ) -> Response {
        // Held across creation, so two clients creating one name get one object.
        let mut names = unpoisoned::lock(&self.names);
        if let Some(name) = &name
            && let Some(&id) = names.get(name)
        {
            let objects = unpoisoned::read(&self.objects);
            // Named objects are pinned: never freed while the server runs.
            let Some(o) = objects.get(&id) else {
                return Response::Fault(protocol::Fault::NoSuchObject(id));
            };
            if o.kind != kind || o.tag != tag {
                return Response::Fault(protocol::Fault::WrongType {
                    name: name.clone(),
                    expected: format!("{} of {tag}", kind.name()),
                    found: format!("{} of {}", o.kind.name(), o.tag),
                });
            }
            unpoisoned::lock(&self.refs).created(id, session, true);
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
        unpoisoned::lock(&self.refs).created(id, session, name.is_some());
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
                Listener::Tcp(std::net::TcpListener::from(fd))
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
