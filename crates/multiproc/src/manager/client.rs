//! The client side: one `Client` per (address, key, settings) in a process, holding idle
//! authenticated connections. A call takes an idle connection (or opens one), so threads
//! call concurrently and a call that blocks on the server (a lock, a queue get) holds
//! only its own connection.
//!
//! Every call has a deadline (the call timeout, plus the operation's own wait), and TCP
//! connections have keepalive, so a server that stops answering, or a network that
//! drops everything, ends a call with an error instead of a hang.
//!
//! Changes to the references the process holds (`refs.rs` on the server) queue in an
//! outbox and travel on a connection of their own, the *anchor*: written without
//! waiting (a proxy's `Drop` never blocks), never answered, and open as long as the
//! process holds proxies, so the server counts the process as alive while it does,
//! whatever happens to the connections calls use.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Address;
use super::ManagerError;
use super::local::{self, Answer, Local, Nearby, Slot};
use super::protocol::{self, FrameError, Framed, RefOp, Request, Response, Stream, Wait};
use crate::sync::unpoisoned;
use crate::wire::{codec, encoder};

/// Local connections (on shared-memory channels) a process keeps to one server, at
/// most: a process whose many threads call at once opens as many connections, and each
/// local one holds [`local::FDS_PER_LOCAL`] descriptors. Connections past it stay on
/// the socket.
const MAX_LOCAL: usize = 16;
/// Tries to open a connection whose handshake the server cut short (a server dropping
/// the oldest half-open connections under a flood of them does).
const OPEN_TRIES: u32 = 3;

/// The default call timeout: how long a call waits for the server's answer beyond the
/// operation's own wait.
pub(crate) const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The default TCP keepalive: how long a peer that stopped answering is kept.
pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// How a client talks to its server. Proxies carry it, so a process that receives one
/// talks to the server the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ClientSettings {
    /// How long a call waits for an answer beyond its own wait (`None`: for ever).
    pub(crate) call_timeout: Option<Duration>,
    /// TCP keepalive (`None`: off).
    pub(crate) keepalive: Option<Duration>,
    /// Whether connections move onto shared-memory channels when the server is on
    /// this machine.
    pub(crate) local_transport: bool,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            keepalive: Some(DEFAULT_KEEPALIVE),
            local_transport: true,
        }
    }
}

/// This process's session id, and the process it is of.
static SESSION: Mutex<Option<(u32, u64)>> = Mutex::new(None);

/// This process's session id (new in a forked child): how the server tells client
/// processes apart, to release the locks and references of one that dies.
pub(crate) fn session() -> u64 {
    let pid = crate::sys::process_id();
    let mut s = unpoisoned::lock(&SESSION);
    match *s {
        Some((p, id)) if p == pid => id,
        _ => {
            let mut bytes = [0u8; 8];
            // Randomness failing leaves a pid-derived id, unique among live processes.
            let id = match getrandom::fill(&mut bytes) {
                Ok(()) => u64::from_le_bytes(bytes),
                Err(_) => u64::from(pid) << 32 | u64::from(fastrand::u32(..)),
            };
            *s = Some((pid, id));
            id
        }
    }
}

/// This thread's id within its process: with the session, a lock's owner.
pub(crate) fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

pub(crate) struct Client {
    pub(crate) address: Address,
    pub(crate) key: Vec<u8>,
    pub(crate) settings: ClientSettings,
    /// Idle connections, and the pid that opened them (a forked child must not share
    /// its parent's connections).
    idle: Mutex<(u32, Vec<ClientConn>)>,
    /// Local connections open.
    locals: Arc<AtomicUsize>,
    /// Whether the server's nearby listener could not be reached: the server is on
    /// another machine, and connections stay on TCP.
    far: AtomicBool,
    /// Reference changes not yet in a frame, and the process they belong to (a forked
    /// child starts afresh: what it inherited is its parent's to send).
    queued: Mutex<(u32, Vec<RefOp>)>,
    /// Set (under the `queued` lock) when changes are queued, cleared (under it and the
    /// anchor's) when none is queued or half-written: a call looks at the anchor only
    /// while it is set, and otherwise takes no lock for it.
    refs_due: AtomicBool,
    /// Set when a reference the server counted for this session was made (a create, an
    /// open by name) and the anchor could not be opened for it (the server busy with
    /// handshakes, no descriptor free): the next calls open it, before they are made,
    /// until one has. Without, the session rested on the connections calls use, and the
    /// first of them closed (a call timed out) ended it: the server freed the objects
    /// and released the locks of a process that still held them.
    anchor_due: AtomicBool,
    /// The connection they go on, and the process it belongs to. Held while it opens
    /// (which waits for the server); a `Drop` that finds it held leaves its change
    /// queued for the holder or the next call.
    anchor: Mutex<(u32, Option<Anchor>)>,
}

/// A call's deadline (`None`: none), read from the clock when first asked for. A call
/// over shared-memory channels that finds an idle connection with room for its request
/// asks only once the request is sent, while the server works on it: a look at the
/// clock costs about 30 ns on a virtual machine, which every call would otherwise add
/// to its round trip (`multiproc-bench loop manager_one`). A call on a socket asks
/// before it writes (a write may block).
pub(crate) struct CallDeadline {
    timeout: Option<Duration>,
    at: std::cell::OnceCell<Option<Instant>>,
}

impl CallDeadline {
    /// A deadline `timeout` after it is first asked for.
    pub(crate) fn new(timeout: Option<Duration>) -> Self {
        CallDeadline {
            timeout,
            at: std::cell::OnceCell::new(),
        }
    }

    /// The deadline: the same at every ask.
    pub(crate) fn get(&self) -> Option<Instant> {
        *self
            .at
            .get_or_init(|| self.timeout.and_then(|t| Instant::now().checked_add(t)))
    }
}

/// When [`Client::flush`] opens an anchor.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Never: from a proxy's `Drop`.
    Never,
    /// When there is something to send: before a call, by its deadline (`None`: the
    /// handshake timeout).
    IfQueued(Option<Instant>),
    /// Now: the process holds a proxy.
    Always,
    /// When there is something to send, giving the server a short while: the client
    /// itself is dropped, and this is the last chance.
    Last,
}

/// How long a client being dropped gives its server to take the reference changes it
/// still has (a process that received proxies and dropped them unused, say).
const LAST_CHANCE: Duration = Duration::from_secs(1);

/// How long a call gives the opening of an anchor that could not be opened before (see
/// `Client::anchor_due`), ahead of its own request: a server that answers opens one in
/// about a millisecond.
const ANCHOR_RETRY: Duration = Duration::from_millis(200);

/// The connection reference changes travel on (non-blocking once authenticated).
struct Anchor {
    stream: Stream,
    /// The frame being written, and how much of it is written.
    frame: Vec<u8>,
    written: usize,
    /// What that frame holds: sent again on a new anchor if this one breaks half-way.
    in_frame: Vec<RefOp>,
    /// The most changes one frame holds: the server's `max_frame` would refuse more
    /// (it closes the connection, and the same frame would go again, for ever).
    most_ops: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The process's client for `address`, `key` and `settings`.
    pub(crate) fn get(address: &Address, key: &[u8], settings: ClientSettings) -> Arc<Client> {
        // One client per server, whichever form the program named its socket by.
        let address = &super::accept::for_clients(address);
        // The clients looked at are let go after the lock (declared before it, dropped
        // after it): one whose last handle is dropped meanwhile would run its `Drop`,
        // which takes the lock, here. Looked for under the lock that the new one is
        // added under: two threads that looked before either added made two clients.
        let mut looked: Vec<Arc<Client>> = Vec::new();
        let mut clients = unpoisoned::lock(&CLIENTS);
        clients.retain(|c| c.strong_count() > 0);
        looked.extend(clients.iter().filter_map(Weak::upgrade));
        if let Some(c) = looked
            .iter()
            .find(|c| c.address == *address && c.key == key && c.settings == settings)
        {
            return Arc::clone(c);
        }
        let pid = crate::sys::process_id();
        let c = Arc::new(Client {
            address: address.clone(),
            key: key.to_vec(),
            settings,
            idle: Mutex::new((pid, Vec::new())),
            locals: Arc::new(AtomicUsize::new(0)),
            far: AtomicBool::new(false),
            queued: Mutex::new((pid, Vec::new())),
            refs_due: AtomicBool::new(false),
            anchor_due: AtomicBool::new(false),
            anchor: Mutex::new((pid, None)),
        });
        static GOODBYE: std::sync::Once = std::sync::Once::new();
        GOODBYE.call_once(|| crate::bootstrap::at_exit_say_goodbye(leave_at_exit));
        super::proxy::hold_across_forks();
        clients.push(Arc::downgrade(&c));
        c
    }

    fn checkout(&self, deadline: &CallDeadline) -> Result<ClientConn, ManagerError> {
        {
            let mut idle = unpoisoned::lock(&self.idle);
            #[cfg(debug_assertions)]
            hold_for_a_test();
            let pid = crate::sys::process_id();
            if idle.0 != pid {
                *idle = (pid, Vec::new());
            }
            if let Some(conn) = idle.1.pop() {
                return Ok(conn);
            }
        }
        self.open(deadline.get(), true)
    }

    fn checkin(&self, mut conn: ClientConn) {
        conn.framed.shed();
        let mut idle = unpoisoned::lock(&self.idle);
        if idle.0 == crate::sys::process_id() {
            idle.1.push(conn);
        }
    }

    /// Opens and authenticates a new connection, by `deadline` and within the handshake
    /// timeout; with `local`, over a Unix socket, moves it onto shared-memory channels.
    fn open(&self, deadline: Option<Instant>, local: bool) -> Result<ClientConn, ManagerError> {
        let started = Instant::now();
        let limit = started + protocol::DEFAULT_HANDSHAKE_TIMEOUT;
        let until = deadline.map_or(limit, |d| d.min(limit));
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_open(until, local) {
                // Cut short after connecting: the server may have dropped this
                // connection to make room under a flood of others. Again, while there
                // is time.
                Err(Opening::Cut(_)) if tries < OPEN_TRIES && Instant::now() < until => {}
                Err(Opening::Cut(e) | Opening::Failed(e)) => {
                    return Err(match e {
                        ManagerError::Unresponsive(_) => {
                            ManagerError::Unresponsive(whole_ms(until.duration_since(started)))
                        }
                        e => e,
                    });
                }
                Ok(conn) => return Ok(conn),
            }
        }
    }

    /// [`open`](Self::open) once. A TCP connection whose server says it has a nearby
    /// listener (it is on this machine, or may be) moves there: that connection is
    /// opened and moved onto channels, and the TCP one closes. If the nearby listener
    /// cannot be reached (the server is on another machine, or in another network
    /// namespace) or is not the server's process, or the server has none, this client
    /// stays on TCP and does not look for it again; if the move fails otherwise (the
    /// server busy with handshakes, say), this connection stays on TCP.
    fn try_open(&self, until: Instant, local: bool) -> Result<ClientConn, Opening> {
        let (conn, nearby) = self.try_open_at(&self.address, None, until, local)?;
        let Some(near) = nearby else {
            return Ok(conn);
        };
        let address = Address::Abstract(near.name.clone());
        match self.try_open_at(&address, Some(&near), until, true) {
            Ok((moved, _)) if moved.local.is_some() => Ok(moved),
            Ok(_) => Ok(conn),
            Err(Opening::Cut(e) | Opening::Failed(e)) => {
                tracing::debug!("manager: this connection stays on TCP: {e}");
                Ok(conn)
            }
        }
    }

    /// Connects to `address` and authenticates, first checking that the process there
    /// is `expected` (the server's nearby listener); with `local`, asks for the local
    /// transport: the connection, and the server's nearby listener if it answered with
    /// one.
    fn try_open_at(
        &self,
        address: &Address,
        expected: Option<&Nearby>,
        until: Instant,
        local: bool,
    ) -> Result<(ClientConn, Option<Nearby>), Opening> {
        let stream = connect(address, until).map_err(|e| {
            if expected.is_some() && unreachable(&e) {
                self.go_far(&format!("its nearby listener cannot be reached: {e}"));
            }
            // A connection not made in time (the server's queue full, or a TCP peer
            // that does not answer) is a server that does not answer, not one that is
            // gone: `open` names the time it was given.
            Opening::Failed(if e.kind() == io::ErrorKind::TimedOut {
                ManagerError::Unresponsive(Duration::ZERO)
            } else {
                ManagerError::from_io(e)
            })
        })?;
        if let Some(near) = expected {
            let found = stream.peer_credentials();
            if !matches!(found, Ok(ids) if ids == (near.pid, near.uid)) {
                let why = match found {
                    Ok((pid, uid)) => {
                        let why = format!(
                            "process {pid} of user {uid} listens at its nearby name, not the server (process {} of user {})",
                            near.pid, near.uid
                        );
                        // Another process took the name (or the server is in another
                        // pid namespace): worth an operator's look.
                        tracing::warn!("manager: staying on TCP to {}: {why}", self.address);
                        why
                    }
                    Err(e) => format!("no credentials at its nearby name: {e}"),
                };
                self.go_far(&why);
                return Err(Opening::Failed(ManagerError::Protocol(why)));
            }
        }
        let failed = |e: io::Error| Opening::Failed(ManagerError::Io(e));
        if let Err(e) = stream.set_keepalive(self.settings.keepalive) {
            tracing::debug!("manager: no TCP keepalive: {e}");
        }
        // A server that stops reading (stopped, or its buffers full) makes a write wait
        // no longer than a read would.
        stream
            .set_write_timeout(self.settings.call_timeout)
            .map_err(failed)?;
        let mut framed = Framed::new(stream);
        let max_frame = protocol::client_handshake(&mut framed, &self.key, session(), until)
            .map_err(|e| {
                if e.is_disconnected() {
                    Opening::Cut(e)
                } else {
                    Opening::Failed(e)
                }
            })?;
        let (mut channels, mut nearby) = (None, None);
        // Over TCP the server's answer is at best where to go, and the channels come on
        // the connection made there, which takes a slot of its own: this one only
        // checks that one is free.
        let over_tcp = !address.is_local();
        let slot =
            (local && self.settings.local_transport && !(over_tcp && self.far.load(Relaxed)))
                .then(|| Slot::take(&self.locals, MAX_LOCAL))
                .flatten();
        if let Some(slot) = slot {
            framed.arm(Some(until)).map_err(|e| {
                Opening::Failed(frame_error(e, until.duration_since(Instant::now())))
            })?;
            match local::request(&mut framed, until)
                .map_err(|e| Opening::Failed(read_timed_out(e)))?
            {
                Answer::Channels(l) if !over_tcp => channels = Some((l, slot)),
                Answer::Channels(_) => {}
                Answer::Nearby(near) if over_tcp => nearby = Some(near),
                Answer::Nearby(_) => {}
                Answer::Socket if over_tcp => self.go_far("it has no nearby listener"),
                Answer::Socket => {}
            }
        }
        framed
            .arm(None)
            .map_err(|e| Opening::Failed(frame_error(e, Duration::ZERO)))?;
        Ok((
            ClientConn {
                framed,
                local: channels,
                max_frame,
            },
            nearby,
        ))
    }

    /// This client stays on TCP from now on, for `why`.
    fn go_far(&self, why: &str) {
        if !self.far.swap(true, Relaxed) {
            tracing::debug!("manager: staying on TCP to {}: {why}", self.address);
        }
    }

    /// Checks that the server answers.
    pub(crate) fn ping(&self) -> Result<(), ManagerError> {
        match self.call(&Request::Ping)? {
            Response::Unit => Ok(()),
            r => Err(ManagerError::Protocol(format!(
                "unexpected answer to a ping: {r:?}"
            ))),
        }
    }

    /// Sends `request` and waits for the response (within the call timeout, plus the
    /// operation's own wait); a fault is an error. Reference changes queued before it
    /// go first.
    pub(crate) fn call(&self, request: &Request) -> Result<Response, ManagerError> {
        let wait = match request {
            Request::Call { op, .. } => op.wait(),
            _ => Wait::None,
        };
        let deadline = CallDeadline::new(match (self.settings.call_timeout, wait) {
            (None, _) | (_, Wait::Unbounded) => None,
            (Some(t), Wait::None) => Some(t),
            (Some(t), Wait::Up(w)) => Some(t.saturating_add(w)),
        });
        // Opening the anchor for them counts against the call's own deadline; only
        // briefly for an anchor that could not be opened before (the server busy with
        // handshakes): the call goes on without it, on the connection it has, rather
        // than spend its deadline on it (what is queued waits for a later flush).
        let anchor_due = self.anchor_due.load(Ordering::Acquire);
        if anchor_due || self.refs_due.load(Ordering::Acquire) {
            let until = if anchor_due {
                let brief = Instant::now() + ANCHOR_RETRY;
                Some(deadline.get().map_or(brief, |d| d.min(brief)))
            } else {
                deadline.get()
            };
            self.flush(Open::IfQueued(until));
        }
        let mut conn = self.checkout(&deadline)?;
        // Nothing was sent: the connection goes back as it was.
        if let Some(e) = conn.refuses(request) {
            self.checkin(conn);
            return Err(e);
        }
        // A connection that failed or timed out is dropped, not put back: an answer
        // that comes late would be read as the next call's.
        let response = conn.call(request, &deadline, self.settings.call_timeout)?;
        self.checkin(conn);
        match response {
            Response::Fault(f) => Err(f.into()),
            r => Ok(r),
        }
    }

    /// Queues reference changes and sends what can go without waiting.
    pub(crate) fn send_refs(&self, ops: impl IntoIterator<Item = RefOp>) {
        {
            let mut queued = self.queued();
            queued.1.extend(ops);
            if !queued.1.is_empty() {
                self.refs_due.store(true, Ordering::Release);
            }
        }
        self.flush(Open::Never);
    }

    /// Opens the anchor if there is none, so that reference changes made later (in
    /// `Drop`, which never opens connections) can go at once.
    pub(crate) fn anchor(&self) {
        self.anchor_due.store(true, Ordering::Release);
        self.flush(Open::Always);
    }

    /// The queue, emptied in a forked child.
    fn queued(&self) -> std::sync::MutexGuard<'_, (u32, Vec<RefOp>)> {
        let mut queued = unpoisoned::lock(&self.queued);
        let pid = crate::sys::process_id();
        if queued.0 != pid {
            *queued = (pid, Vec::new());
        }
        queued
    }

    /// Writes queued reference changes on the anchor as far as it takes them without
    /// waiting, opening it first as `open` says (which waits for the server, as a
    /// call does).
    fn flush(&self, open: Open) {
        self.flush_until(open, None);
    }

    /// As [`flush`](Self::flush), and with `drain`, waits until then for the anchor to
    /// take what it did not take at once: the last word of a client or of a process
    /// (its `Leave` above all), which no later flush would send. A connection closed
    /// with a frame cut short loses that frame (the server drops it), and a session that
    /// ends without `Leave` loses the proxies its process sent and no receiver has taken
    /// in yet.
    fn flush_until(&self, open: Open, drain: Option<Instant>) {
        // A thread that holds the anchor (writing, or opening it) sends what is queued
        // before it lets go, and looks again after: a change queued by a thread that
        // found the anchor held is sent by the holder. Nobody waits for it.
        while self.flush_once(open, drain) && !self.queued().1.is_empty() {}
    }

    /// One turn of [`flush_until`](Self::flush_until): false if another thread holds
    /// the anchor, or there is none to write on.
    fn flush_once(&self, open: Open, drain: Option<Instant>) -> bool {
        let Some(mut anchor) = unpoisoned::try_lock(&self.anchor) else {
            return false;
        };
        let pid = crate::sys::process_id();
        if anchor.0 != pid {
            // The parent's connection: its copy here is closed, the parent's stays.
            *anchor = (pid, None);
        }
        if anchor.1.is_some() {
            self.anchor_due.store(false, Ordering::Release);
        }
        let busy = |a: &Option<Anchor>| a.as_ref().is_some_and(|a| !a.in_frame.is_empty());
        if !busy(&anchor.1) {
            let queued = self.queued();
            if queued.1.is_empty() {
                self.refs_due.store(false, Ordering::Release);
                let wanted = anchor.1.is_none()
                    && matches!(open, Open::IfQueued(_))
                    && self.anchor_due.load(Ordering::Acquire);
                if open != Open::Always && !wanted {
                    return true;
                }
            }
        }
        if anchor.1.is_none() {
            let deadline = match open {
                Open::Never => return false,
                Open::Last => Some(Instant::now() + LAST_CHANCE),
                Open::IfQueued(deadline) => deadline,
                Open::Always => None,
            };
            match self.open_anchor(deadline) {
                Ok(a) => anchor.1 = Some(a),
                Err(e) => {
                    tracing::debug!("manager: cannot open a connection for references: {e}");
                    return false;
                }
            }
        }
        let Some(a) = anchor.1.as_mut() else {
            return false;
        };
        self.anchor_due.store(false, Ordering::Release);
        // Written until nothing is queued, or the anchor takes no more (and `drain`
        // has passed).
        let written = loop {
            match self.write_refs(a) {
                Ok(()) if !a.in_frame.is_empty() => {}
                done => break done,
            }
            let Some(until) = drain.filter(|d| *d > Instant::now()) else {
                break Ok(());
            };
            if let Err(e) = a.stream.wait_writable(until) {
                break Err(e);
            }
        };
        if let Err(e) = written {
            // Broken: what its frame held goes again, on the next anchor (the server
            // drops a frame cut short).
            tracing::debug!("manager: the connection for references failed: {e}");
            let mut again = std::mem::take(&mut a.in_frame);
            let mut queued = self.queued();
            again.append(&mut queued.1);
            queued.1 = again;
            self.refs_due.store(true, Ordering::Release);
            anchor.1 = None;
            return false;
        }
        // What the anchor did not take now (its buffer full) waits for the next turn.
        a.in_frame.is_empty()
    }

    /// Writes frames of queued changes until the anchor takes no more or nothing is
    /// left.
    fn write_refs(&self, a: &mut Anchor) -> io::Result<()> {
        loop {
            if a.in_frame.is_empty() {
                // The first changes queued, as many as a frame holds; the rest stay
                // queued, in order, for the next frames.
                let ops = {
                    let mut queued = self.queued();
                    let n = queued.1.len().min(a.most_ops);
                    let rest = queued.1.split_off(n);
                    std::mem::replace(&mut queued.1, rest)
                };
                if ops.is_empty() {
                    return Ok(());
                }
                let encoded =
                    codec::encode(&Request::Refs(ops.clone())).map_err(io::Error::other)?;
                a.frame = protocol::frame(&encoded.bytes)?;
                a.written = 0;
                a.in_frame = ops;
            }
            match (&a.stream).write(&a.frame[a.written..]) {
                Ok(n) => {
                    a.written += n;
                    if a.written == a.frame.len() {
                        a.in_frame.clear();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// At the exit, once a report of proxies in flight is written on the anchor: a
    /// ping on it, which the server answers after it has applied everything the anchor
    /// carried before (one connection's frames are served in order, by one thread). A
    /// `spawn_fork` child's parent lets go of what it kept for the child once it sees
    /// the child's end, and that release, applied before the child's report, freed
    /// what the child had passed on. The anchor is put back after the answer: a thread
    /// still running that changed references without one would open another
    /// connection, and a new connection makes the session live again, which drops what
    /// the report kept in flight once the process ends. Gives up at `until`, or if the
    /// anchor's last frame is not all written.
    fn settle_at_exit(&self, until: Instant) {
        let Some(mut anchor) = unpoisoned::try_lock(&self.anchor) else {
            return;
        };
        if anchor.0 != crate::sys::process_id() {
            return;
        }
        let Some(a) = anchor.1.take_if(|a| a.in_frame.is_empty()) else {
            return;
        };
        drop(anchor);
        let most_ops = a.most_ops;
        let mut framed = Framed::new(a.stream);
        let settled = (|| -> Result<bool, FrameError> {
            let left = until.saturating_duration_since(Instant::now());
            let stream = framed.stream();
            stream.set_nonblocking(false).map_err(FrameError::Io)?;
            stream
                .set_write_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(FrameError::Io)?;
            framed.send(&Request::Ping).map_err(FrameError::Io)?;
            framed.recv_by(protocol::HANDSHAKE_MAX, Some(until))?;
            Ok(matches!(
                codec::decode::<Response>(&framed.body, Vec::new()),
                Ok(Response::Unit)
            ))
        })();
        match settled {
            Ok(true) => {
                let stream = framed.into_stream();
                if stream.set_nonblocking(true).is_ok()
                    && let Some(mut anchor) = unpoisoned::try_lock(&self.anchor)
                    && anchor.0 == crate::sys::process_id()
                    && anchor.1.is_none()
                {
                    anchor.1 = Some(Anchor {
                        stream,
                        frame: Vec::new(),
                        written: 0,
                        in_frame: Vec::new(),
                        most_ops,
                    });
                }
            }
            Ok(false) => tracing::debug!("manager: an unexpected answer to the last ping"),
            Err(e) => tracing::debug!("manager: the last ping was not answered: {e:?}"),
        }
    }

    fn open_anchor(&self, deadline: Option<Instant>) -> Result<Anchor, ManagerError> {
        let conn = self.open(deadline, false)?;
        let most_ops = refs_per_frame(conn.max_frame);
        let stream = conn.framed.into_stream();
        stream.set_nonblocking(true).map_err(ManagerError::Io)?;
        Ok(Anchor {
            stream,
            frame: Vec::new(),
            written: 0,
            in_frame: Vec::new(),
            most_ops,
        })
    }
}

/// How many reference changes fit in one frame of at most `max_frame` bytes: the
/// request's own bytes and its list's length counted at their largest, each change at
/// the largest a change encodes to. At least one (a server takes at least 1024 bytes).
fn refs_per_frame(max_frame: u32) -> usize {
    let largest = [
        RefOp::Hold {
            id: u64::MAX,
            from: Some(u64::MAX),
        },
        RefOp::Release {
            id: u64::MAX,
            sent: u64::MAX,
        },
        RefOp::Pin { id: u64::MAX },
    ]
    .iter()
    .filter_map(|op| encoder::len_of(op).ok())
    .max()
    .unwrap_or(32);
    let overhead = encoder::len_of(&Request::Refs(Vec::new())).unwrap_or(16) + 16;
    let room = usize::try_from(max_frame)
        .unwrap_or(usize::MAX)
        .saturating_sub(overhead);
    (room / largest.max(1)).max(1)
}

/// In builds with debug assertions, for tests: a thread named
/// `multiproc-test-holds-idle:PATH` holds a client's idle connections for half a second
/// as it checks one out (what another thread's call does for a moment), having created
/// the file `PATH` to say so, so that a test can fork while it does.
#[cfg(debug_assertions)]
fn hold_for_a_test() {
    let thread = std::thread::current();
    if let Some(marker) = thread
        .name()
        .and_then(|n| n.strip_prefix("multiproc-test-holds-idle:"))
    {
        let _ = std::fs::write(marker, b"");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// This process's clients (one per server, key and settings).
static CLIENTS: Mutex<Vec<Weak<Client>>> = Mutex::new(Vec::new());

/// The clients alive now (the dead ones' entries removed): to look at, and to drop
/// without the lock held.
fn live_clients() -> Vec<Arc<Client>> {
    let mut clients = unpoisoned::lock(&CLIENTS);
    clients.retain(|c| c.strong_count() > 0);
    clients.iter().filter_map(Weak::upgrade).collect()
}

/// The clients' state that `spawn_fork` holds across the fork (with the references'
/// list, `proxy.rs`), so that no other thread holds any of it at the fork: the list of
/// clients, each client's idle connections and queued reference changes, and the
/// session id. A lock another thread held at the fork stays locked in the child for
/// ever, and the child's first call (which checks out an idle connection), a proxy it
/// drops or passes on (which queues a change, or writes the session id) waited on it
/// for ever. Each is held only for moments, and no other lock is taken under one, so
/// none is waited for long. (An anchor is held while it writes to the server, which
/// may take a while: it is tried only, in the child; see [`forget_parents_connections`].)
pub(crate) struct HeldClients {
    session: MutexGuard<'static, Option<(u32, u64)>>,
    clients: MutexGuard<'static, Vec<Weak<Client>>>,
    each: Vec<HeldClient>,
}

impl HeldClients {
    /// In the parent, after the fork: lets go of every lock, and returns the clients,
    /// to be dropped once the caller's own locks are let go too (another thread may have
    /// dropped its handle meanwhile, and a client's last handle going says `Leave`,
    /// which takes these locks).
    pub(crate) fn release(self) -> Vec<Arc<Client>> {
        let HeldClients {
            session,
            clients,
            each,
        } = self;
        drop((session, clients));
        each.into_iter()
            .map(
                |HeldClient {
                     idle,
                     queued,
                     client,
                 }| {
                    drop((idle, queued));
                    client
                },
            )
            .collect()
    }
}

/// One client's locks held across a fork, and the client they are of.
struct HeldClient {
    // Declared before `client`: dropped before the client they borrow from.
    idle: MutexGuard<'static, (u32, Vec<ClientConn>)>,
    queued: MutexGuard<'static, (u32, Vec<RefOp>)>,
    client: Arc<Client>,
}

impl HeldClient {
    #[allow(unsafe_code)]
    fn lock(client: Arc<Client>) -> Self {
        let idle = unpoisoned::lock(&client.idle);
        let queued = unpoisoned::lock(&client.queued);
        // SAFETY: the guards borrow from the client in the `Arc`'s allocation, which
        // `client`, dropped after them (field order), keeps alive and in place; they
        // never leave this struct.
        let (idle, queued) = unsafe {
            (
                std::mem::transmute::<
                    MutexGuard<'_, (u32, Vec<ClientConn>)>,
                    MutexGuard<'static, (u32, Vec<ClientConn>)>,
                >(idle),
                std::mem::transmute::<
                    MutexGuard<'_, (u32, Vec<RefOp>)>,
                    MutexGuard<'static, (u32, Vec<RefOp>)>,
                >(queued),
            )
        };
        HeldClient {
            idle,
            queued,
            client,
        }
    }
}

/// Takes the clients' state for `spawn_fork` to hold across the fork (see
/// [`HeldClients`]); the child then finds every client (see
/// [`forget_parents_connections`]). Taken after the references' list.
pub(crate) fn hold_clients() -> HeldClients {
    let clients = unpoisoned::lock(&CLIENTS);
    let each = clients
        .iter()
        .filter_map(Weak::upgrade)
        .map(HeldClient::lock)
        .collect();
    HeldClients {
        session: unpoisoned::lock(&SESSION),
        clients,
        each,
    }
}

/// In a `spawn_fork` child, before its function runs (`held`: the clients' state, held
/// across the fork): lets go of the child's copies of the parent's connections (the
/// idle ones and the anchor) and of the parent's queued reference changes, which each
/// client otherwise dropped only at the child's first call to its server. The server
/// learns that a session ended from its connections closing: while a child that made
/// no call lived with those copies, a parent SIGKILLed holding a lock kept it, and its
/// references. Passed over, and kept until the child ends: a client's anchor that
/// another thread of the parent held at the fork (a flush of reference changes), the
/// connections such threads had in use (in their memory, out of the child's reach),
/// and those of a client another thread was dropping.
pub(crate) fn forget_parents_connections(held: HeldClients) {
    let HeldClients {
        session,
        clients,
        each,
    } = held;
    drop((session, clients));
    let pid = crate::sys::process_id();
    let mut live = Vec::with_capacity(each.len());
    for HeldClient {
        mut idle,
        mut queued,
        client,
    } in each
    {
        if idle.0 != pid {
            *idle = (pid, Vec::new());
        }
        if queued.0 != pid {
            *queued = (pid, Vec::new());
        }
        drop((idle, queued));
        if let Some(mut anchor) = unpoisoned::try_lock(&client.anchor)
            && anchor.0 != pid
        {
            *anchor = (pid, None);
        }
        live.push(client);
    }
    // Dropped: the child has this thread alone, and the other handles of these clients
    // are in its memory, so hardly any is the last (one whose other handle a thread of
    // the parent dropped between this look and the fork is: with no connection of the
    // child's, it says nothing; one the child drops later says `Leave` and closes the
    // connections it made, as any client does).
    drop(live);
}

/// At a normal exit (`bootstrap::exit_function`): each client of this process says
/// `Leave` on its anchor, as its `Drop` would, after what its live proxies sent
/// ([`proxy::in_flight_at_exit`]), so that proxies the process sent and no receiver has
/// taken in yet keep their objects. A client or proxy alive at the exit never drops: a
/// `spawn_fork` child has its parent's in its memory, and a proxy it inherited and
/// passed on (returned, put on a queue) was freed with its session, or once its parent
/// let go of what it kept for the child, before its receiver took it in. A client that
/// has no anchor yet opens one if it has anything to say (the child only passed proxies
/// on, or took one in without a call: its `Hold`, which settles its sender's count, was
/// queued for its first call); and with proxies in flight it asks the server to answer
/// once it has applied it all ([`settle_at_exit`]), so that the report is in before the
/// process's end is seen. Never waits for a lock: one held (by another thread of a
/// parent at its fork) is passed over; a server that does not answer is given
/// [`LAST_CHANCE`] in all.
///
/// [`proxy::in_flight_at_exit`]: super::proxy::in_flight_at_exit
/// [`settle_at_exit`]: Client::settle_at_exit
fn leave_at_exit() {
    let Some(clients) = unpoisoned::try_lock(&CLIENTS) else {
        return;
    };
    let live: Vec<Arc<Client>> = clients.iter().filter_map(Weak::upgrade).collect();
    drop(clients);
    let pid = crate::sys::process_id();
    // One second for all of them: a process with clients of several stalled servers
    // waits no longer than with one.
    let until = Instant::now() + LAST_CHANCE;
    for c in &live {
        let anchored = unpoisoned::try_lock(&c.anchor)
            .is_some_and(|a| matches!(&*a, (p, Some(_)) if *p == pid));
        let Some(mut queued) = unpoisoned::try_lock(&c.queued) else {
            continue;
        };
        if queued.0 != pid {
            *queued = (pid, Vec::new());
        }
        queued.1.extend(super::proxy::in_flight_at_exit(c));
        let in_flight = queued
            .1
            .iter()
            .any(|op| matches!(op, RefOp::Release { sent, .. } if *sent > 0));
        if !anchored && queued.1.is_empty() {
            continue;
        }
        queued.1.push(RefOp::Leave);
        c.refs_due.store(true, Ordering::Release);
        drop(queued);
        c.flush_until(Open::IfQueued(Some(until)), Some(until));
        if in_flight {
            c.settle_at_exit(until);
        }
    }
    // The process ends: a client whose last other handle went meanwhile is not dropped
    // here (its `Drop` may wait for its server).
    std::mem::forget(live);
}

impl Drop for Client {
    fn drop(&mut self) {
        // The last word on references; what does not go now is settled when the
        // processes that sent the proxies end. It ends with `Leave` (this process lets
        // go on purpose: proxies it sent stay until received), where there is a word
        // to say or a connection to say it on.
        // The session is the process's: only its last client of this server leaves.
        let pid = crate::sys::process_id();
        let anchored = matches!(&*unpoisoned::lock(&self.anchor), (p, Some(_)) if *p == pid);
        let last = !live_clients().iter().any(|c| c.address == self.address);
        {
            let mut queued = self.queued();
            if last && (anchored || !queued.1.is_empty()) {
                queued.1.push(RefOp::Leave);
            }
        }
        self.flush_until(Open::Last, Some(Instant::now() + LAST_CHANCE));
    }
}

/// Whether connecting failed because nothing listens there (or cannot, on this
/// platform), rather than for a reason that may pass.
fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Unsupported
            | io::ErrorKind::PermissionDenied
    )
}

/// Why a connection could not be opened.
enum Opening {
    /// The server closed it during the handshake.
    Cut(ManagerError),
    /// Anything else.
    Failed(ManagerError),
}

/// An authenticated connection: its socket, and for a local client the shared-memory
/// channels its calls travel through.
#[derive(Debug)]
pub(crate) struct ClientConn {
    framed: Framed,
    local: Option<(Local, Slot)>,
    /// The largest request the server takes (its `max_frame`, told in the handshake).
    max_frame: u32,
}

impl ClientConn {
    /// Why `request` is not sent at all: it is larger than the server takes (it would
    /// drop the connection, which would say nothing of why). One that does not encode
    /// fails in [`call`](Self::call), with its reason.
    fn refuses(&self, request: &Request) -> Option<ManagerError> {
        let most = usize::try_from(self.max_frame).unwrap_or(usize::MAX);
        if encoder::len_up_to(request, most).is_some() {
            return None;
        }
        let size = encoder::len_of(request).ok()?;
        Some(ManagerError::InvalidArgument(format!(
            "a request of {size} bytes is larger than the manager takes (its max_frame, {} bytes)",
            self.max_frame
        )))
    }

    fn call(
        &mut self,
        request: &Request,
        deadline: &CallDeadline,
        call_timeout: Option<Duration>,
    ) -> Result<Response, ManagerError> {
        let waited = call_timeout.unwrap_or_default();
        if let Some((local, _)) = &self.local {
            return local.call(request, deadline, waited);
        }
        // Read before the send: a write that blocks (a server that does not read) counts
        // against the deadline.
        let deadline = deadline.get();
        let conn = &mut self.framed;
        conn.send(request).map_err(|e| match e.kind() {
            // The write timeout: the server does not read.
            io::ErrorKind::WouldBlock => ManagerError::Unresponsive(waited),
            _ => ManagerError::from_io(e),
        })?;
        conn.recv_by(u32::MAX, deadline)
            .map_err(|e| frame_error(e, waited))?;
        codec::decode(&conn.body, Vec::new()).map_err(|e| {
            ManagerError::Protocol(format!("the server sent a malformed response: {e}"))
        })
    }
}

/// `d` to the nearest millisecond: the time an opening was given, as a user set it. A
/// call's deadline is read a moment before the opening starts, so the time left is the
/// call timeout less a few hundred nanoseconds ("1.49999987s" for 1.5 s).
fn whole_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().saturating_add(500_000) / 1_000_000;
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A frame that could not be read, as the caller sees it.
fn frame_error(e: FrameError, waited: Duration) -> ManagerError {
    match e {
        FrameError::Closed => ManagerError::Disconnected,
        FrameError::Oversized(n) => {
            ManagerError::Protocol(format!("the server sent a frame of {n} bytes"))
        }
        FrameError::Io(e) => ManagerError::from_io(e),
        FrameError::TimedOut => ManagerError::Unresponsive(waited),
    }
}

/// A read that hit the socket's timeout is the server not answering in time.
fn read_timed_out(e: ManagerError) -> ManagerError {
    match e {
        ManagerError::Io(io) if io.kind() == io::ErrorKind::WouldBlock => {
            ManagerError::Unresponsive(Duration::ZERO)
        }
        e => e,
    }
}

/// A plain connection to `address`, by `until`.
pub(crate) fn connect(address: &Address, until: Instant) -> io::Result<Stream> {
    match address {
        Address::Tcp(a) => {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let s = std::net::TcpStream::connect_timeout(a, left)?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        // By `until` (a server that takes no connections must not hold the call
        // beyond it).
        #[cfg(target_os = "linux")]
        Address::Unix(path) => Ok(Stream::Unix(crate::sys::connect_unix(
            crate::sys::UnixTarget::Path(path),
            until,
        )?)),
        #[cfg(target_os = "linux")]
        Address::Abstract(name) => Ok(Stream::Unix(crate::sys::connect_unix(
            crate::sys::UnixTarget::Abstract(name),
            until,
        )?)),
        #[cfg(all(unix, not(target_os = "linux")))]
        Address::Unix(path) => Ok(Stream::Unix(std::os::unix::net::UnixStream::connect(path)?)),
        #[allow(unreachable_patterns)]
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kind of address is not supported on this platform",
        )),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};

    use super::super::accept::Listener;
    use super::super::protocol::{Request, Response};
    use super::super::server::{ServerSettings, Shared};
    use super::{Address, CallDeadline, Client, ClientSettings, ManagerError, Nearby};

    const T: Duration = Duration::from_secs(30);

    /// Threads that ask at once for the client of one address get one client (each
    /// looked before any added, and two threads could make two: two anchors, two
    /// pools of connections, two caps on local connections).
    #[test]
    fn threads_asking_at_once_share_one_client() {
        for round in 0..3000u16 {
            let address = Address::Abstract(format!("no-server-{round}").into_bytes());
            let start = std::sync::Barrier::new(8);
            let got: Vec<Arc<Client>> = std::thread::scope(|s| {
                let asks: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            Client::get(&address, b"key", ClientSettings::default())
                        })
                    })
                    .collect();
                asks.into_iter().map(|a| a.join().unwrap()).collect()
            });
            assert!(
                got.iter().all(|c| Arc::ptr_eq(c, &got[0])),
                "round {round}: several clients for one address"
            );
        }
    }

    /// An in-process server on a TCP port of loopback, telling clients that its nearby
    /// listener is `advertised` if given; stopped and joined when dropped.
    struct TcpServer {
        shared: Arc<Shared>,
        address: Address,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl TcpServer {
        fn start(advertised: Option<Nearby>) -> TcpServer {
            let (listener, address) =
                Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
            let shared = Shared::new(
                b"key".to_vec(),
                ServerSettings {
                    max_frame: 1 << 20,
                    handshake_timeout: T,
                    max_handshakes: None,
                    keepalive: None,
                },
                HashMap::new(),
            );
            if let Some(nearby) = advertised {
                shared.advertise(nearby);
            }
            let runner = Arc::clone(&shared);
            let thread = std::thread::spawn(move || runner.run(&listener));
            TcpServer {
                shared,
                address,
                thread: Some(thread),
            }
        }

        fn client(&self, local_transport: bool) -> Arc<Client> {
            let settings = ClientSettings {
                local_transport,
                ..ClientSettings::default()
            };
            Client::get(&self.address, b"key", settings)
        }
    }

    impl Drop for TcpServer {
        fn drop(&mut self) {
            self.shared.stop();
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn ping(c: &Client, conn: &mut super::ClientConn) {
        let answer = conn.call(
            &Request::Ping,
            &CallDeadline::new(Some(T)),
            c.settings.call_timeout,
        );
        assert!(matches!(answer, Ok(Response::Unit)), "{answer:?}");
    }

    /// A server that takes the connection and never answers it: the opening fails at
    /// its deadline with `Unresponsive`, which names the time it was given as it was
    /// set, not that less the moment before the opening started.
    #[test]
    fn an_unanswered_opening_names_the_time_it_was_given() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = Address::Tcp(silent.local_addr().unwrap());
        let c = Client::get(&address, b"key", ClientSettings::default());
        let t = Instant::now();
        match c.open(Some(Instant::now() + Duration::from_millis(300)), true) {
            Err(e @ ManagerError::Unresponsive(_)) => {
                assert_eq!(e.to_string(), "the manager did not answer within 300ms");
            }
            other => panic!("opening to a silent server: {other:?}"),
        }
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < T,
            "gave up after {waited:?}"
        );
    }

    /// A client of a TCP address whose server is on this machine moves to the server's
    /// nearby listener and onto shared-memory channels; with the local transport off,
    /// it stays on TCP.
    #[test]
    fn a_tcp_client_on_the_servers_machine_moves_onto_channels() {
        let server = TcpServer::start(None);
        let c = server.client(true);
        let mut conn = c.open(Some(Instant::now() + T), true).unwrap();
        assert!(conn.local.is_some(), "the connection stayed on TCP");
        assert!(matches!(conn.framed.stream(), super::Stream::Unix(_)));
        ping(&c, &mut conn);
        assert!(!c.far.load(Relaxed));

        let c = server.client(false);
        let mut conn = c.open(Some(Instant::now() + T), true).unwrap();
        assert!(conn.local.is_none(), "the local transport is off");
        assert!(matches!(conn.framed.stream(), super::Stream::Tcp(_)));
        ping(&c, &mut conn);
    }

    /// The nearby listener asks for the key as the TCP one does: a client with another
    /// key is refused there too.
    #[test]
    fn the_nearby_listener_refuses_a_wrong_key() {
        let server = TcpServer::start(None);
        // Bound by the accept thread as it starts; a client's first connection waits
        // for it.
        let c = server.client(true);
        drop(c.open(Some(Instant::now() + T), true).unwrap());
        let name = server.shared.nearby().expect("a nearby listener").name;
        let nearby = Address::Abstract(name);
        let stranger = Client::get(&nearby, b"not the key", ClientSettings::default());
        match stranger.open(Some(Instant::now() + T), true) {
            Err(ManagerError::Auth(_)) => {}
            other => panic!("a wrong key on the nearby listener: {other:?}"),
        }
        let friend = Client::get(&nearby, b"key", ClientSettings::default());
        let mut conn = friend.open(Some(Instant::now() + T), true).unwrap();
        assert!(conn.local.is_some());
        ping(&friend, &mut conn);
    }

    /// A client that cannot reach the nearby listener the server names (as on another
    /// machine) stays on TCP, calls as well, and does not look for it again.
    #[test]
    fn a_tcp_client_that_cannot_reach_the_nearby_listener_stays_on_tcp() {
        let server = TcpServer::start(Some(Nearby {
            name: b"multiproc-test-a-listener-nowhere".to_vec(),
            pid: crate::sys::process_id(),
            uid: crate::sys::user_id(),
        }));
        stays_on_tcp(&server);
    }

    /// A client that finds another process at the nearby name than the server said
    /// (one that bound the name to relay the handshake and read the calls, say) does
    /// not talk to it: it stays on TCP.
    #[test]
    fn a_tcp_client_talks_to_no_impostor_at_the_nearby_name() {
        let name = format!("multiproc-test-impostor-{}", std::process::id()).into_bytes();
        let (impostor, _) = Listener::bind(&Address::Abstract(name.clone())).unwrap();
        let server = TcpServer::start(Some(Nearby {
            name,
            pid: crate::sys::process_id() + 1,
            uid: crate::sys::user_id(),
        }));
        stays_on_tcp(&server);
        // Nothing was said to the impostor: it has a connection waiting, no bytes.
        let Listener::Unix(l) = impostor else {
            unreachable!("an abstract listener is a Unix socket")
        };
        l.set_nonblocking(true).unwrap();
        let (mut s, _) = l.accept().expect("the client connected, then left");
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            matches!(std::io::Read::read(&mut s, &mut buf), Ok(0)),
            "the client said something"
        );
    }

    fn stays_on_tcp(server: &TcpServer) {
        let c = server.client(true);
        let mut conn = c.open(Some(Instant::now() + T), true).unwrap();
        assert!(conn.local.is_none());
        assert!(matches!(conn.framed.stream(), super::Stream::Tcp(_)));
        assert!(c.far.load(Relaxed), "the client would look again");
        ping(&c, &mut conn);
        let mut again = c.open(Some(Instant::now() + T), true).unwrap();
        assert!(again.local.is_none());
        ping(&c, &mut again);
    }
}
