//! The dispatcher: one thread serves the quick requests of every local connection (a
//! dict get, a list push, a lock release), looking at each connection's request channel
//! in turn, and lends a connection to its own thread for a request that may take long
//! (a lock acquire or queue get that waits, a custom type's method, a copy of a whole
//! object). The thread serves that one request and gives the connection back.
//!
//! Why one thread rather than a thread per connection: two clients and two connection
//! threads on two CPUs meant four threads taking turns through `sched_yield`, two
//! switches per call (about 3 µs a call). One dispatcher that spins while requests keep
//! coming and clients that spin a little before yielding leave three threads, and a
//! dispatcher on its own CPU answers each client without a switch. See
//! `manager/README.md`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::local::{Local, LocalEnd};
use super::objects::Peer;
use super::protocol::{Op, Request, Response};
use super::server::Shared;
use crate::deadline::Deadline;
use crate::sync::raw::AdaptiveSpin;
use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};

/// How long the dispatcher looks again and again, after the last request it served,
/// before it sleeps: long enough to catch a client's next call while the client runs,
/// short next to a sleep and a wake-up. It spins for as much of it as spinning pays
/// off (see `AdaptiveSpin`), and yields between looks for the rest.
const SPIN: Duration = Duration::from_micros(30);

/// How often the dispatcher asks the kernel whether each client is still there while
/// it has work (while it sleeps, a client that goes wakes it).
const LIVENESS_CHECK: Duration = Duration::from_millis(100);

/// A local connection while the dispatcher serves it.
pub(crate) struct Joined {
    pub(crate) local: Local,
    session: u64,
    peer: String,
    /// Its connection thread, waiting for a request to serve or for the end.
    thread: Sender<Handoff>,
}

impl Joined {
    pub(crate) fn new(local: Local, session: u64, peer: &str, thread: Sender<Handoff>) -> Self {
        Joined {
            local,
            session,
            peer: peer.to_owned(),
            thread,
        }
    }
}

/// What the dispatcher hands a connection's thread.
pub(crate) enum Handoff {
    /// Serve this request (it may wait), answer it, then give the connection back.
    Serve(Joined, Request),
    /// Send this answer (the client's channel had no room for it), then give the
    /// connection back.
    Answer(Joined, Response),
    /// The connection is over: the client went, broke the rules, or the server stops
    /// (the dispatcher has dropped the channels).
    End,
}

/// Hands `joined` to its thread with `what`; a thread that is gone drops it.
fn hand(joined: Joined, what: impl FnOnce(Joined) -> Handoff) {
    let thread = joined.thread.clone();
    let _ = thread.send(what(joined));
}

/// The way to the dispatcher thread.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    inbox: Sender<Joined>,
    /// Rung after something is put in `inbox` or the server starts stopping, in case
    /// the dispatcher sleeps.
    wake: Arc<OwnedFd>,
}

impl Dispatcher {
    /// Starts the dispatcher thread for `shared`.
    pub(crate) fn start(shared: &Arc<Shared>) -> std::io::Result<Dispatcher> {
        let (inbox, taken) = crossbeam_channel::unbounded();
        let wake = Arc::new(sys::doorbell()?);
        let (shared, bell) = (Arc::clone(shared), Arc::clone(&wake));
        std::thread::Builder::new()
            .name("multiproc-manager-dispatch".into())
            .spawn(move || run(&shared, &taken, bell.as_fd()))?;
        Ok(Dispatcher { inbox, wake })
    }

    /// Gives the dispatcher a connection to serve: a new one, or one back from its
    /// thread. `Err` gives it back if the dispatcher is gone.
    pub(crate) fn join(&self, joined: Joined) -> Result<(), Joined> {
        self.inbox.send(joined).map_err(|e| e.into_inner())?;
        sys::ring(self.wake.as_fd());
        Ok(())
    }

    /// Wakes the dispatcher (to see that the server is stopping).
    pub(crate) fn wake(&self) {
        sys::ring(self.wake.as_fd());
    }
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("session", &self.session)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Whether serving `request` may take long: it may wait (for a lock, an item, room,
/// an event, other parties), runs a registered type's code, or copies or drops a whole
/// object's contents.
/// Such a request is served on its connection's own thread, so that it never holds up
/// the other connections.
fn may_take_long(request: &Request) -> bool {
    let at_once = |timeout: &Option<Duration>| *timeout == Some(Duration::ZERO);
    match request {
        Request::Create { .. } => true,
        Request::Call { op, .. } => match op {
            Op::Acquire { timeout, .. }
            | Op::Take { timeout }
            | Op::Put { timeout, .. }
            | Op::Wait { timeout } => !at_once(timeout),
            Op::CondWait { .. }
            | Op::BarrierWait { .. }
            | Op::Custom(_)
            | Op::Clear
            | Op::Values
            | Op::Keys
            | Op::Items
            | Op::Update(_)
            | Op::Extend(_) => true,
            _ => false,
        },
        Request::Ping | Request::Count | Request::Local | Request::Refs(_) => false,
    }
}

/// The dispatcher's loop: runs until the server stops.
fn run(shared: &Shared, inbox: &Receiver<Joined>, wake: BorrowedFd<'_>) {
    let mut conns: Vec<Joined> = Vec::new();
    let mut last_served = Instant::now();
    let mut last_check = Instant::now();
    let spin = AdaptiveSpin::new(SPIN);
    loop {
        loop {
            match inbox.try_recv() {
                Ok(joined) => {
                    conns.push(joined);
                    last_served = Instant::now();
                }
                Err(TryRecvError::Empty) => break,
                // The server's state is gone: nothing will join any more.
                Err(TryRecvError::Disconnected) if conns.is_empty() => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        if shared.stopping() {
            for joined in conns.drain(..) {
                hand(joined, |_| Handoff::End);
            }
            // Those given back from now on end at once (see `Shared::serve_local`).
            while let Ok(joined) = inbox.try_recv() {
                hand(joined, |_| Handoff::End);
            }
            return;
        }
        let served = serve_round(shared, &mut conns);
        let now = Instant::now();
        if served {
            last_served = now;
        }
        if now.duration_since(last_check) >= LIVENESS_CHECK {
            last_check = now;
            end_gone(&mut conns, |_| true);
        }
        if served {
            continue;
        }
        if now.duration_since(last_served) < SPIN {
            let came = spin.wait(last_served + SPIN, || {
                conns.iter().any(|c| c.local.has_request()) || !inbox.is_empty()
            });
            if came {
                continue;
            }
        }
        let woke = sleep(&conns, inbox, wake);
        sys::silence(wake);
        // Those whose client hung up (and only those: a poll per connection costs a
        // system call each).
        end_gone(&mut conns, |i| {
            woke.get(1 + 2 * i + 1).is_some_and(|r| r.ready())
        });
        last_served = Instant::now();
    }
}

/// Serves at most one request of each connection; true if any came.
fn serve_round(shared: &Shared, conns: &mut Vec<Joined>) -> bool {
    let mut served = false;
    let mut i = 0;
    while i < conns.len() {
        if !conns[i].local.has_request() {
            i += 1;
            continue;
        }
        let next = conns[i]
            .local
            .next_request(shared.max_frame(), Deadline::Now);
        let request = match next {
            Ok(Some(request)) => request,
            Ok(None) => {
                i += 1;
                continue;
            }
            Err(end) => {
                if let LocalEnd::Refused(why) = end {
                    tracing::warn!("manager: closing {}: {why}", conns[i].peer);
                }
                hand(conns.swap_remove(i), |_| Handoff::End);
                continue;
            }
        };
        served = true;
        if may_take_long(&request) {
            hand(conns.swap_remove(i), |j| Handoff::Serve(j, request));
            continue;
        }
        let joined = &conns[i];
        // A panic here (a registered type's `Drop`, when a reference change frees its
        // object) ends this connection, as it ended the connection's own thread before
        // there was a dispatcher, and the others go on.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match request {
            Request::Refs(ops) => {
                shared.apply_refs(joined.session, ops);
                Ok(None)
            }
            request => {
                let gone = || joined.local.client_gone();
                shared
                    .handle_now(
                        request,
                        &Peer {
                            session: joined.session,
                            gone: &gone,
                        },
                    )
                    .map(Some)
            }
        }));
        let answered = match outcome {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(response))) => joined.local.respond_now(response),
            // Its object is busy (another operation holds it): served on its thread.
            Ok(Err(request)) => {
                hand(conns.swap_remove(i), |j| Handoff::Serve(j, request));
                continue;
            }
            Err(payload) => {
                crate::bootstrap::drop_payload(payload);
                tracing::error!("manager: closing {}: serving it panicked", joined.peer);
                Err(None)
            }
        };
        match answered {
            Ok(()) => i += 1,
            Err(Some(response)) => hand(conns.swap_remove(i), |j| Handoff::Answer(j, response)),
            Err(None) => hand(conns.swap_remove(i), |_| Handoff::End),
        }
    }
    served
}

/// Ends the connections at the indices `look` picks whose client is gone (with no
/// request left to read).
fn end_gone(conns: &mut Vec<Joined>, look: impl Fn(usize) -> bool) {
    let picked: Vec<bool> = (0..conns.len()).map(look).collect();
    let mut i = conns.len();
    while i > 0 {
        i -= 1;
        let joined = &conns[i];
        if picked[i] && !joined.local.has_request() && joined.local.client_gone() {
            hand(conns.swap_remove(i), |_| Handoff::End);
        }
    }
}

/// Sleeps until a request comes, a client goes, something joins or the server stops
/// (the wake bell), or [`LIVENESS_CHECK`] passes. Returns the poll's answer: the wake
/// bell first, then each connection's doorbell and liveness pipe.
fn sleep(conns: &[Joined], inbox: &Receiver<Joined>, wake: BorrowedFd<'_>) -> Vec<sys::Readiness> {
    // Counted among each channel's sleepers, so that clients ring; then one more look,
    // since a request may have come in between.
    let _sleeping: Vec<_> = conns.iter().map(|c| c.local.sleeping()).collect();
    if !inbox.is_empty() || conns.iter().any(|c| c.local.has_request()) {
        return Vec::new();
    }
    let mut fds = Vec::with_capacity(1 + 2 * conns.len());
    fds.push(wake);
    for c in conns {
        fds.extend(c.local.readiness());
    }
    sys::wait_readable(&fds, Some(Instant::now() + LIVENESS_CHECK)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::protocol::{self, Framed, Request};
    use super::super::{DictProxy, Manager, Server, client, local};

    /// An in-process server, a client of it, and a dict holding one entry.
    fn served_dict() -> (Server, Manager, DictProxy<u32, u32>) {
        let server = Manager::builder()
            .call_timeout(Some(Duration::from_secs(30)))
            .serve()
            .unwrap();
        let m = server.manager().unwrap();
        let d = m.dict::<u32, u32>().unwrap();
        d.insert(0, 0).unwrap();
        (server, m, d)
    }

    /// A local connection of `m`'s, opened by hand.
    fn raw_local(m: &Manager) -> (Framed, local::Local) {
        let until = Instant::now() + Duration::from_secs(30);
        let mut framed = Framed::new(client::connect(m.address(), until).unwrap());
        protocol::client_handshake(&mut framed, m.authkey(), client::session(), until).unwrap();
        match local::request(&mut framed, until).unwrap() {
            local::Answer::Channels(l) => (framed, l),
            _ => panic!("no local connection"),
        }
    }

    /// Bytes that are no request, on a local connection: the dispatcher closes that
    /// connection (and only it) and serves the others.
    #[test]
    fn a_malformed_request_closes_only_its_connection() {
        let (_server, m, d) = served_dict();
        let (framed, rude) = raw_local(&m);
        assert!(!rude.server_gone());
        assert!(rude.send_raw(&[0xff; 9]));
        let until = Instant::now() + Duration::from_secs(10);
        while !rude.server_gone() && Instant::now() < until {
            std::thread::yield_now();
        }
        assert!(rude.server_gone(), "the connection was not closed");
        assert_eq!(
            rude.answers_waiting(),
            0,
            "a malformed request was answered"
        );
        d.insert(1, 1).unwrap();
        assert_eq!(d.len().unwrap(), 2);
        drop((framed, rude));
    }

    /// A client that sends requests and never reads the answers fills its answer
    /// channel: the dispatcher lends that connection to its thread to wait for room, and
    /// goes on serving everyone else.
    #[test]
    fn a_client_that_reads_no_answers_stalls_no_one() {
        let (_server, m, d) = served_dict();

        let until = Instant::now() + Duration::from_secs(30);
        let (framed, rude) = raw_local(&m);
        // Until its requests stop going in: the server stopped taking them, since its
        // answer channel is full (more than a thousand answers wait, and nothing went in
        // for a while: a server thread starved for a moment is not taken for that).
        let mut sent = 0u32;
        let mut refused_since: Option<Instant> = None;
        while Instant::now() < until && sent < 1_000_000 {
            if rude.send_only(&Request::Ping) {
                sent += 1;
                refused_since = None;
            } else if refused_since.get_or_insert_with(Instant::now).elapsed()
                > Duration::from_millis(300)
                && rude.answers_waiting() > 1000
            {
                break;
            }
        }
        assert!(
            rude.answers_waiting() > 1000,
            "{sent} requests sent, {} answers waiting",
            rude.answers_waiting()
        );

        let t = Instant::now();
        for i in 0..1000 {
            d.insert(i, i).unwrap();
        }
        assert_eq!(d.len().unwrap(), 1000);
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        // The rude client goes: its connection ends, the others go on.
        drop(rude);
        drop(framed);
        d.insert(7, 7).unwrap();
        assert_eq!(d.get(&7).unwrap(), Some(7));
    }
}
