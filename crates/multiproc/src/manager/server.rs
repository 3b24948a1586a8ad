//! The server: serves each authenticated connection on its own thread (the accepting
//! and the handshakes are `accept.rs`'s), so a client blocked in a lock or a queue never
//! stalls another; local connections' quick requests go through the dispatcher
//! (`dispatch.rs`); and frees the objects no client refers to any more (`refs.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use super::accept::{self, DoorSettings, Listener};
use super::dispatch::{Dispatcher, Handoff, Joined};
use super::local::{self, Local, Nearby, Slot};
use super::objects::{Peer, Served};
use super::protocol::{self, FrameError, Framed, Kind, RefOp, Request, Response, Stream};
use super::refs::RefTable;
use super::{ErasedObject, NotMade};
use crate::sync::unpoisoned;
use crate::wire::codec;
use rustc_hash::FxHashMap;

/// Makes a registered custom object from its encoded initial value.
pub(crate) type Ctor = fn(&[u8]) -> Result<Box<dyn ErasedObject>, NotMade>;

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
    objects: RwLock<FxHashMap<u64, Arc<Served>>>,
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
    /// Started with the first local connection; `None` if its thread could not start
    /// (connections then stay on their sockets).
    dispatcher: OnceLock<Option<Dispatcher>>,
    /// The name of the nearby listener beside a TCP one, told to clients that ask for
    /// the local transport over TCP.
    nearby: OnceLock<Nearby>,
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

/// The id of a server's first object (the next ones count up from it): random, from
/// 2^32 to 2^62, rather than 1. A proxy names its object by address and id only, and
/// its client reconnects to whatever server listens at the address with the key: after
/// a restart there, a proxy of the earlier server would otherwise name an object of the
/// new one (its first objects had the same ids) and read or change it, and the
/// references its process still reported would count on it. With ids drawn apart, such
/// a proxy's calls fail [`NoSuchObject`](super::ManagerError::NoSuchObject) and its
/// reports are dropped (two servers' first ids fall within a few billion of each
/// other once in about 2^29 restarts).
fn first_object_id() -> u64 {
    let mut bytes = [0u8; 8];
    let random = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // Randomness failing: the clock and the pid, apart from one restart to the next.
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ u64::from(crate::sys::process_id()).rotate_left(40)
        }
    };
    (1 << 32) | (random >> 2)
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
            objects: RwLock::new(FxHashMap::default()),
            names: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(first_object_id()),
            refs: Mutex::new(RefTable::default()),
            ctors,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            locals: Arc::new(AtomicUsize::new(0)),
            // Half the descriptors at most, the rest for sockets and everything else.
            max_locals: crate::sys::fd_limit().map_or(usize::MAX, |n| {
                usize::try_from(n / 2).unwrap_or(usize::MAX) / local::FDS_PER_LOCAL
            }),
            dispatcher: OnceLock::new(),
            nearby: OnceLock::new(),
            stopping: AtomicBool::new(false),
        })
    }

    /// Accepts and serves connections until [`stop`](Self::stop).
    /// A TCP listener gets a nearby one beside it (see [`Listener::nearby`]), which
    /// closes when this returns.
    pub(crate) fn run(self: &Arc<Self>, listener: &Listener) {
        let nearby = listener.nearby();
        let mut listeners = vec![listener];
        if let Some((l, near)) = &nearby {
            let _ = self.nearby.set(near.clone());
            listeners.push(l);
        }
        accept::run(self, &listeners, self.door);
    }

    /// For tests: tells clients over TCP that the nearby listener is at `name` (one
    /// that does not exist, say) instead of where [`run`](Self::run) puts it.
    #[cfg(test)]
    pub(crate) fn advertise(&self, nearby: Nearby) {
        self.nearby
            .set(nearby)
            .expect("advertised before the server runs");
    }

    /// For tests: the name of the nearby listener, once [`run`](Self::run) has bound it.
    #[cfg(test)]
    pub(crate) fn nearby(&self) -> Option<Nearby> {
        self.nearby.get().cloned()
    }

    /// Whether the server is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The authentication key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// The largest request, in bytes.
    pub(crate) fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Stops accepting, and closes every connection.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for stream in unpoisoned::lock(&self.conns).values() {
            stream.shutdown();
        }
        if let Some(Some(d)) = self.dispatcher.get() {
            d.wake();
        }
    }

    /// The dispatcher, started on first use.
    fn dispatcher(self: &Arc<Self>) -> Option<&Dispatcher> {
        self.dispatcher
            .get_or_init(|| {
                Dispatcher::start(self)
                    .inspect_err(|e| {
                        tracing::warn!("manager: cannot start the dispatcher thread: {e}");
                    })
                    .ok()
            })
            .as_ref()
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
            let mut conns = unpoisoned::lock(&self.conns);
            // A stop that looked at the connections before this one was listed: it is
            // closed here (else its thread, and the objects, stay until the client
            // closes it).
            if self.stopping() {
                clone.shutdown();
            }
            conns.insert(conn_id, clone);
        }
        let mut conn = Framed::new(stream);
        // A panic (one the handlers do not catch) ends this connection, and the
        // session is told, so that its locks are released as for any connection.
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.serve_session(&mut conn, session, &peer);
        }));
        if let Err(payload) = served {
            crate::bootstrap::drop_payload(payload);
            tracing::error!("manager: closing {peer}: serving it panicked");
        }
        self.session_closed(session);
        unpoisoned::lock(&self.conns).remove(&conn_id);
    }

    fn serve_session(self: &Arc<Self>, conn: &mut Framed, session: u64, peer: &str) {
        loop {
            let Some(request) = self.next_on_socket(conn, peer) else {
                return;
            };
            if matches!(request, Request::Local) {
                // Over TCP the answer is at most where to go: no slot is taken and no
                // dispatcher started for it.
                let over_unix = conn.stream().passes_descriptors();
                let slot = over_unix
                    .then(|| Slot::take(&self.locals, self.max_locals))
                    .flatten();
                let refused = if !over_unix {
                    None
                } else if slot.is_none() {
                    Some("the server has as many local connections as its descriptor limit allows")
                } else if self.dispatcher().is_none() {
                    Some("the server could not start its dispatcher thread")
                } else {
                    None
                };
                match local::offer(conn, refused, self.nearby.get()) {
                    Ok(Some(l)) => return self.serve_local(conn, l, session, peer),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!("manager: connection from {peer} failed: {e}");
                        return;
                    }
                }
            }
            if let Request::Refs(ops) = request {
                self.apply_refs(session, ops);
                continue;
            }
            let gone = || conn.stream().peer_gone();
            let response = self.handle(
                request,
                &Peer {
                    session,
                    gone: &gone,
                },
            );
            if self.stopping.load(Ordering::Acquire) {
                // A call that waited until the server stopped: its caller reads that
                // the server is gone, not a timeout.
                return;
            }
            if conn.send(&response).is_err() {
                return;
            }
        }
    }

    /// A local connection: the dispatcher serves it, and lends it back to this thread
    /// for each request that may take long (see `dispatch.rs`). The socket stays open,
    /// unread, to learn that the client died while such a request waits.
    fn serve_local(self: &Arc<Self>, conn: &Framed, local: Local, session: u64, peer: &str) {
        let Some(dispatcher) = self.dispatcher() else {
            return;
        };
        let (thread, handoffs) = crossbeam_channel::bounded(1);
        let joined = Joined::new(local, session, peer, thread);
        if dispatcher.join(joined).is_err() {
            return;
        }
        // Ends (and the connection with it) when the dispatcher ends it or is gone.
        while let Ok(handoff) = handoffs.recv() {
            let (joined, response) = match handoff {
                Handoff::Serve(joined, request) => {
                    let gone = || conn.stream().peer_gone() || joined.local.client_gone();
                    let response = self.handle(
                        request,
                        &Peer {
                            session,
                            gone: &gone,
                        },
                    );
                    (joined, response)
                }
                Handoff::Answer(joined, response) => (joined, response),
                Handoff::End => return,
            };
            // A call that waited until the server stopped is not answered (its caller
            // reads that the server is gone), as on a socket.
            if self.stopping()
                || !joined.local.respond(&response, || self.stopping())
                || dispatcher.join(joined).is_err()
            {
                return;
            }
        }
    }

    /// The next request on the socket; `None` when the connection is over.
    fn next_on_socket(&self, conn: &mut Framed, peer: &str) -> Option<Request> {
        match conn.recv(self.max_frame) {
            Ok(()) => {}
            Err(FrameError::Closed) => return None,
            Err(FrameError::Oversized(n)) => {
                tracing::warn!(
                    "manager: closing {peer}: a frame of {n} bytes is over the limit of {}",
                    self.max_frame
                );
                return None;
            }
            // No deadline on the server's reads.
            Err(FrameError::TimedOut) => return None,
            Err(FrameError::Io(e)) => {
                if !self.stopping.load(Ordering::Acquire) {
                    tracing::debug!("manager: connection from {peer} failed: {e}");
                }
                return None;
            }
        }
        let decoded = codec::decode(&conn.body, Vec::new());
        conn.shed();
        match decoded {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("manager: closing {peer}: malformed request: {e}");
                None
            }
        }
    }

    /// A connection of `session` closed: if it was the last, the client is gone, and
    /// the locks it held are let go (marked as a holder's that died).
    pub(crate) fn session_closed(&self, session: u64) {
        let (ended, freed) = unpoisoned::lock(&self.refs).disconnected(session);
        self.free(&freed);
        if ended {
            self.let_go_of_locks(session);
        }
    }

    /// The locks that ended `session` held are let go, unless it is back.
    fn let_go_of_locks(&self, session: u64) {
        let objects: Vec<_> = unpoisoned::read(&self.objects)
            .values()
            .filter(|o| matches!(o.kind, Kind::Lock | Kind::RLock | Kind::Condition))
            .cloned()
            .collect();
        // Under the table's lock, which a new connection takes to be counted: a
        // process whose session ended may connect again at once (a loop that opens a
        // manager, locks, lets go, drops it), and a lock it took again on its new
        // connection was let go here too, while it held it, for another process to
        // take as a dead holder's. A session that is back is its process's again: what
        // it holds stays. (The objects are looked up first: where objects are made, the
        // table's lock is taken after theirs.)
        let refs = unpoisoned::lock(&self.refs);
        if refs.is_connected(session) {
            return;
        }
        for o in objects {
            o.session_ended(session);
        }
        drop(refs);
    }

    pub(crate) fn apply_refs(&self, session: u64, ops: Vec<RefOp>) {
        let freed = unpoisoned::lock(&self.refs).apply(session, ops);
        self.free(&freed);
    }

    /// Forgets objects no client refers to any more. A call already running on one
    /// finishes on its own handle to it. They are dropped after the table's lock is
    /// let go (a large one's drop holds up no call), each on its own: a registered
    /// type's `Drop` that panics is logged, and the rest of the work goes on (the end
    /// of a session would otherwise stop there, its locks held for good).
    fn free(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let freed: Vec<_> = {
            let mut objects = unpoisoned::write(&self.objects);
            ids.iter().filter_map(|id| objects.remove(id)).collect()
        };
        for object in freed {
            if let Err(payload) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(object)))
            {
                crate::bootstrap::drop_payload(payload);
                tracing::error!("manager: dropping a freed object panicked");
            }
        }
    }

    /// As [`handle`](Self::handle), for the dispatcher, which must not wait for an
    /// object's lock: `Err(request)` back while another operation holds it.
    pub(crate) fn handle_now(
        &self,
        request: Request,
        peer: &Peer<'_>,
    ) -> Result<Response, Request> {
        match request {
            Request::Call { id, op } => {
                let object = unpoisoned::read(&self.objects).get(&id).cloned();
                match object {
                    Some(o) => o.try_call(op, peer).map_err(|op| Request::Call { id, op }),
                    None => Ok(Response::Fault(protocol::Fault::NoSuchObject(id))),
                }
            }
            request => Ok(self.handle(request, peer)),
        }
    }

    pub(crate) fn handle(&self, request: Request, peer: &Peer<'_>) -> Response {
        match request {
            Request::Create {
                kind,
                name,
                tag,
                init,
            } => self.create(kind, name, tag, &init.0, peer.session),
            Request::Ping => Response::Unit,
            Request::Count => Response::Len(unpoisoned::read(&self.objects).len() as u64),
            // Not answered (see `serve_session` and the dispatcher).
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
        // Held across the creation of a named object, so two clients creating one name
        // get one object; an unnamed one (the usual case) waits for no one's
        // constructor.
        let mut names = name.as_ref().map(|_| unpoisoned::lock(&self.names));
        if let (Some(name), Some(names)) = (&name, &names)
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
                Err(NotMade::BadInit(e)) => return Response::Fault(protocol::Fault::BadInit(e)),
                Err(NotMade::Panicked(e)) => return Response::Fault(protocol::Fault::Panicked(e)),
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
        if let (Some(name), Some(names)) = (name, names.as_mut()) {
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

#[cfg(test)]
mod tests {
    use super::super::protocol::Op;
    use super::*;

    /// A session that ends and is back (its process connected again) before its end is
    /// handled keeps the lock it took on its new connection: another process cannot
    /// take it (it took it, as a dead holder's). Once the session ends for good, the
    /// lock is let go, and the next taker is told its holder died.
    #[test]
    fn a_session_back_before_its_end_is_handled_keeps_its_locks() {
        let shared = Shared::new(
            vec![7; 32],
            ServerSettings {
                max_frame: 1 << 20,
                handshake_timeout: Duration::from_secs(1),
                max_handshakes: Some(4),
                keepalive: None,
            },
            HashMap::new(),
        );
        const P: u64 = (1 << 32) | 1;
        const Q: u64 = (1 << 32) | 2;
        shared.connected(P);
        shared.connected(Q);
        // Named: the end of the session does not free it.
        let id = match shared.create(Kind::Lock, Some("L".into()), String::new(), &[], P) {
            Response::Id(id) => id,
            r => panic!("{r:?}"),
        };
        let lock = Arc::clone(unpoisoned::read(&shared.objects).get(&id).unwrap());
        let gone = || false;
        let acquire = |session| {
            let op = Op::Acquire {
                thread: 1,
                timeout: Some(Duration::ZERO),
            };
            lock.call(
                op,
                &Peer {
                    session,
                    gone: &gone,
                },
            )
        };
        // P's last connection closes, and P is back and takes the lock before the end
        // is handled.
        let (ended, _) = unpoisoned::lock(&shared.refs).disconnected(P);
        assert!(ended);
        shared.connected(P);
        assert!(matches!(
            acquire(P),
            Response::Acquired { owner_died: false }
        ));
        shared.let_go_of_locks(P);
        assert!(
            matches!(acquire(Q), Response::TimedOut),
            "P's lock was taken from it"
        );
        // P ends for good.
        shared.session_closed(P);
        assert!(matches!(
            acquire(Q),
            Response::Acquired { owner_died: true }
        ));
    }
}
