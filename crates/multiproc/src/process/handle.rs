//! `JoinHandle` and what the parent keeps about each child.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::limits::Armed;
use super::registry;
use super::{ExitStatus, ProcessError, Signal};
use crate::bootstrap::{self, RemotePanic, looking, messages};
use crate::ipc::channel::Payload;
use crate::shm::segment::{Room, View};
use crate::sync::unpoisoned;
use crate::sys::{self, AsFd, OwnedFd, WaitStatus};
use crate::wire::codec;
use crate::wire::codec::CodecError;
use crate::wire::framing::{Conn, RecvFrameError};

/// How the parent learns that a child ended.
#[derive(Debug)]
pub(crate) enum StatusSource {
    /// The fork server reaped it and writes its status to this pipe.
    Relay(Arc<OwnedFd>),
    /// A direct child of this process (forked by `spawn_fork`): reaped through its pidfd.
    Direct,
    /// Its fork server is gone (the status pipe reached its end): its pidfd says when it
    /// ends, and how is unknown, unless it came to this process (see
    /// `ChildRecord::orphan_ended`).
    Orphaned,
}

/// How a child ended, as far as the parent can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Known(WaitStatus),
    /// The fork server died before reporting (someone killed it).
    Unknown,
}

struct Status {
    source: StatusSource,
    ended: Option<Ended>,
    /// What the parent keeps for a child forked from it until it has ended (see
    /// [`HeldAcrossFork`]).
    kept: Option<Box<dyn Send + Sync>>,
    /// The fork server reported an out-of-memory kill in the child's cgroup.
    oom_killed: bool,
    /// When the child, orphaned, was first seen exited and not yet come to this
    /// process, which adopts orphans (see `ChildRecord::orphan_ended`).
    orphan_seen: Option<Instant>,
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Status")
            .field("source", &self.source)
            .field("ended", &self.ended)
            .field("kept", &self.kept.is_some())
            .field("oom_killed", &self.oom_killed)
            .field("orphan_seen", &self.orphan_seen)
            .finish()
    }
}

/// What a layer above keeps alive in a parent for a child that `spawn_fork` forks, until
/// the child has ended: the manager's references to the objects this process's proxies
/// name (`manager/proxy.rs`), so that a proxy moved into the closure, whose parent's
/// copy goes when the fork returns, does not free its object before the child uses it.
/// The layer installs [`set_hold_across_fork`] (this layer names no caller); what it
/// returns holds that layer's lock, which `spawn_fork` holds across the fork as it does
/// its own.
pub(crate) trait HeldAcrossFork {
    /// After the fork, in the parent: lets the lock go, and returns what the parent
    /// keeps, and what it lets go of once `spawn_fork`'s own locks are let go (a last
    /// reference's drop may talk to its server).
    fn forked(self: Box<Self>) -> (Box<dyn Send + Sync>, Box<dyn Send>);

    /// After the fork, in the child, before its function runs: lets the lock go, forgets
    /// what the parent keeps (without dropping it: its drop may take locks another
    /// thread of the parent held at the fork), and lets go of the layer's copies of the
    /// parent's connections, whose ends the parent's peers watch.
    fn in_child(self: Box<Self>);
}

static HOLD_ACROSS_FORK: std::sync::OnceLock<fn() -> Box<dyn HeldAcrossFork>> =
    std::sync::OnceLock::new();

/// Installs what `spawn_fork` keeps for its children (once; later calls change nothing).
pub(crate) fn set_hold_across_fork(hold: fn() -> Box<dyn HeldAcrossFork>) {
    let _ = HOLD_ACROSS_FORK.set(hold);
}

/// What the installed layer holds across a fork now, if one is installed.
pub(super) fn hold_across_fork() -> Option<Box<dyn HeldAcrossFork>> {
    HOLD_ACROSS_FORK.get().map(|hold| hold())
}

/// What the child sent back.
#[derive(Debug)]
enum Outcome {
    Returned(Payload, Vec<OwnedFd>),
    Panicked(RemotePanic),
    Failed(String),
    Unencodable(String),
    /// What the child sent could not be taken in here.
    Unreceivable(String),
    /// The child panicked, and its report (in a memory file) could not be taken in
    /// here, for the reason given.
    PanicUnreceivable(String),
    Corrupt(String),
}

/// The parent's end of the call channel.
#[derive(Debug)]
pub(crate) struct Channel {
    conn: Conn,
    started: bool,
    /// The child's resource limits are in force (`messages::LIMITED`).
    limited: bool,
    /// Waits look for the child's messages before they sleep (see
    /// `bootstrap::looking`): for children of the fork server, not for forked ones.
    looks: bool,
    closed: bool,
    outcome: Option<Outcome>,
}

impl Channel {
    /// `started`: the call is running already (a forked child runs at once).
    pub(crate) fn new(conn: Conn, started: bool) -> Self {
        Channel {
            conn,
            started,
            limited: false,
            // Only a forked child runs its call at once: the others are the server's.
            looks: !started,
            closed: false,
            outcome: None,
        }
    }

    /// Reads what the child sends until its outcome arrives, it hangs up or it ends
    /// (`pidfd`: a process it forked may hold a copy of the channel). `learn`: a join
    /// waiting for the outcome, whose looks teach the shared look budgets; a read of
    /// what is there now (a `wait`) teaches them nothing.
    fn pump(
        &mut self,
        deadline: Option<Instant>,
        pidfd: sys::BorrowedFd<'_>,
        learn: bool,
    ) -> Result<(), ProcessError> {
        while self.outcome.is_none() && !self.closed {
            let look = if self.started {
                &looking::OUTCOME
            } else {
                &looking::STARTED
            };
            let got = looking::recv_from_child(
                &mut self.conn,
                deadline,
                (self.looks && learn).then_some(look),
                pidfd,
            );
            let frame = match got {
                Ok(frame) => frame,
                Err(RecvFrameError::Timeout) => return Err(ProcessError::Timeout),
                Err(RecvFrameError::Corrupt(why)) => {
                    self.outcome = Some(Outcome::Corrupt(why));
                    self.closed = true;
                    break;
                }
                // What the child sent carried descriptors, and none was free here to
                // take them in: its outcome is lost, and said to be, rather than the
                // child seeming to have ended without one.
                Err(RecvFrameError::Io(e)) if sys::descriptors_lost(&e) => {
                    self.outcome = Some(Outcome::Unreceivable(e.to_string()));
                    self.closed = true;
                    break;
                }
                Err(RecvFrameError::Closed | RecvFrameError::Truncated | RecvFrameError::Io(_)) => {
                    self.closed = true;
                    break;
                }
            };
            let text = || String::from_utf8_lossy(&frame.body).into_owned();
            self.outcome = match frame.tag {
                messages::STARTED => {
                    self.started = true;
                    None
                }
                messages::LIMITED => {
                    self.limited = true;
                    None
                }
                messages::RETURNED => {
                    Some(Outcome::Returned(Payload::Owned(frame.body), frame.fds))
                }
                messages::RETURNED_IN_FILE => Some(
                    in_file(&frame.body, frame.fds, "returned value").map_or_else(
                        |o| o,
                        |(view, fds)| Outcome::Returned(Payload::Mapped(view), fds),
                    ),
                ),
                messages::PANICKED => Some(panicked(&frame.body)),
                messages::PANICKED_IN_FILE => {
                    Some(match in_file(&frame.body, frame.fds, "panic report") {
                        Ok((view, _)) => panicked(view.bytes()),
                        // A panic all the same, not a value that did not come.
                        Err(Outcome::Unreceivable(why)) => Outcome::PanicUnreceivable(why),
                        Err(other) => other,
                    })
                }
                messages::FAILED => Some(Outcome::Failed(text())),
                messages::UNENCODABLE => Some(Outcome::Unencodable(text())),
                tag => Some(Outcome::Corrupt(format!("unexpected message tag {tag}"))),
            };
        }
        Ok(())
    }
}

/// A panic report as the child sent it.
fn panicked(body: &[u8]) -> Outcome {
    match messages::decode_panic(body) {
        Ok(p) => Outcome::Panicked(p),
        Err(e) => Outcome::Corrupt(format!("undecodable panic report: {e}")),
    }
}

/// An outcome in a memory file (a returned value or a panic report, `what`: see
/// [`messages::RETURNED_IN_FILE`]): mapped, into address space taken first, with the
/// descriptors that came after the file; or the outcome that it could not be.
fn in_file(
    body: &[u8],
    mut fds: Vec<OwnedFd>,
    what: &str,
) -> Result<(View, Vec<OwnedFd>), Outcome> {
    let len = <[u8; 8]>::try_from(body)
        .ok()
        .map(u64::from_le_bytes)
        .and_then(|l| usize::try_from(l).ok());
    let Some(len) = len else {
        return Err(Outcome::Corrupt(format!(
            "a {what} in a memory file of no length"
        )));
    };
    if fds.is_empty() {
        return Err(Outcome::Corrupt(format!(
            "a {what} in a memory file without its file"
        )));
    }
    let file = fds.remove(0);
    let room = Room::take(len).map_err(|e| {
        Outcome::Unreceivable(format!(
            "no address space to map the {what} of {len} bytes: {e}"
        ))
    })?;
    match View::open_in(file, room) {
        Ok(view) => Ok((view, fds)),
        Err(e) => Err(Outcome::Corrupt(format!("the {what}'s memory file: {e}"))),
    }
}

/// Everything the parent keeps about one child. Shared by its `JoinHandle`, the registry
/// of live children and [`ChildProcess`] views.
#[derive(Debug)]
pub(crate) struct ChildRecord {
    pid: u32,
    /// The process that started it, its parent: the only one that reads its outcome and
    /// status (see [`parent_only`](Self::parent_only)).
    parent: u32,
    name: String,
    daemon: bool,
    /// It leads a process group of its own (`Builder::process_group`).
    group: bool,
    pidfd: OwnedFd,
    status: Mutex<Status>,
    channel: Mutex<Option<Channel>>,
    /// The resource limits it runs under.
    armed: Armed,
    /// Its handle was dropped unjoined: the registry forgets it once it has ended and
    /// nothing else (a [`ChildProcess`]) holds it.
    detached: std::sync::atomic::AtomicBool,
    /// The parent's ends of its piped stdio that the handle's owner has not taken: kept
    /// here rather than in the handle, so that the exit's join can close them (a
    /// `std::process::exit` leaves the handle, and whatever it held, in place).
    stdio: Mutex<ParentStdio>,
}

/// The parent's ends of a child's piped stdin, stdout and stderr, those not taken.
#[derive(Debug, Default)]
struct ParentStdio {
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
}

impl ChildRecord {
    pub(crate) fn new(
        pid: u32,
        name: String,
        daemon: bool,
        pidfd: OwnedFd,
        source: StatusSource,
        channel: Channel,
        armed: Armed,
    ) -> Self {
        ChildRecord {
            pid,
            parent: sys::getpid(),
            name,
            daemon,
            group: false,
            pidfd,
            status: Mutex::new(Status {
                source,
                ended: None,
                kept: None,
                oom_killed: false,
                orphan_seen: None,
            }),
            channel: Mutex::new(Some(channel)),
            armed,
            detached: std::sync::atomic::AtomicBool::new(false),
            stdio: Mutex::new(ParentStdio::default()),
        }
    }

    /// Keeps the parent's ends of its piped stdio (`None` where not piped).
    pub(crate) fn with_stdio(self, fds: [Option<OwnedFd>; 3]) -> Self {
        let (stdin, stdout, stderr) = sys::child_stdio(fds);
        ChildRecord {
            stdio: Mutex::new(ParentStdio {
                stdin,
                stdout,
                stderr,
            }),
            ..self
        }
    }

    /// Closes the parent's end of a piped stdin not taken, as
    /// `std::process::Child::wait` does before it waits: a child that reads its input
    /// to the end ends.
    pub(crate) fn close_stdin(&self) {
        drop(unpoisoned::lock(&self.stdio).stdin.take());
    }

    /// Closes every piped stdio end not taken (the handle goes).
    pub(crate) fn close_stdio(&self) {
        drop(std::mem::take(&mut *unpoisoned::lock(&self.stdio)));
    }

    /// As [`close_stdio`](Self::close_stdio), unless a thread holds them (it is taking
    /// one, or closing them): at the exit, where nobody will read the child's output any
    /// more, and a child blocked writing to a full pipe, or reading its input to the
    /// end, would hold the exit for ever. It must not wait: an exit called from a
    /// signal handler may have interrupted this very thread's take.
    pub(crate) fn close_stdio_at_exit(&self) {
        if let Some(mut stdio) = unpoisoned::try_lock(&self.stdio) {
            drop(std::mem::take(&mut *stdio));
        }
    }

    /// Refuses, in any process but its parent, what reads its outcome or its status: a
    /// process forked from the parent after the child started (by `spawn_fork`, or a
    /// fork of the program's own) holds copies of the parent's handles, views, call
    /// channel and status pipe, and what it read there the parent would never get
    /// (its join then said the status was lost).
    fn parent_only(&self) -> Result<(), ProcessError> {
        if sys::getpid() == self.parent {
            Ok(())
        } else {
            Err(ProcessError::NotParent { pid: self.pid })
        }
    }

    /// Notes whether it leads a process group of its own.
    pub(crate) fn leading_group(mut self, group: bool) -> Self {
        self.group = group;
        self
    }

    /// Forgets what is kept for it, without dropping it (in a forked child: it is the
    /// parent's). Takes no lock.
    pub(crate) fn forget_kept(&mut self) {
        let st = match self.status.get_mut() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::forget(st.kept.take());
    }

    /// Keeps `kept` until the child's end is known (see [`HeldAcrossFork`]).
    pub(crate) fn keep_until_ended(&self, kept: Option<Box<dyn Send + Sync>>) {
        unpoisoned::lock(&self.status).kept = kept;
    }

    /// Whether it leads a process group of its own.
    pub(crate) fn leads_group(&self) -> bool {
        self.group
    }

    /// Whether its handle was dropped unjoined.
    pub(crate) fn is_detached(&self) -> bool {
        self.detached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The resource limit the child ran into, if it ended because of one, and how that
    /// showed.
    pub(crate) fn limit_exceeded(&self) -> Option<(super::Limit, String)> {
        self.limit_exceeded_by(Instant::now() + RELAY_GRACE)
    }

    /// As [`limit_exceeded`](Self::limit_exceeded), waiting for a relayed status until
    /// `by` at most (see [`ended_by`](Self::ended_by)).
    pub(crate) fn limit_exceeded_by(&self, by: Instant) -> Option<(super::Limit, String)> {
        self.limit_by(by, false)
    }

    /// As [`limit_exceeded_by`](Self::limit_exceeded_by), for a pool worker: its
    /// status for a next task's descriptors it had no room for is read as its
    /// open-files limit too.
    pub(crate) fn worker_limit_exceeded_by(&self, by: Instant) -> Option<(super::Limit, String)> {
        self.limit_by(by, true)
    }

    fn limit_by(&self, by: Instant, worker: bool) -> Option<(super::Limit, String)> {
        let ended = self.ended_by(by)?;
        let oom_killed = unpoisoned::lock(&self.status).oom_killed;
        match ended {
            Ended::Known(status) => self
                .armed
                .ended(status, oom_killed)
                .or_else(|| worker.then(|| self.armed.worker_ended(status)).flatten()),
            Ended::Unknown => None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Readable once the process has ended.
    pub(crate) fn pidfd(&self) -> sys::BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// Sends the call on the channel (after the child exists: a call too large for an
    /// empty socket's buffer). A child that died meanwhile is not an error here:
    /// joining it reports what happened. Any other failure (the kernel refusing the
    /// descriptors or the memory, a frame sent in part) is: the child, which would wait
    /// for ever for a call that cannot come whole, is killed first.
    pub(crate) fn send_call(&self, parts: &[&[u8]], fds: &[OwnedFd]) -> std::io::Result<()> {
        let mut channel = unpoisoned::lock(&self.channel);
        let Some(ch) = channel.as_mut() else {
            return Ok(());
        };
        let fds = sys::borrow_all(fds);
        let sent = if call_send_fails() {
            Err(std::io::Error::other(
                "too many references: cannot splice (a test's failing send)",
            ))
        } else {
            ch.conn.send(messages::CALL, parts, &fds)
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) if bootstrap::is_peer_gone(&e) => {
                tracing::trace!(pid = self.pid, "call not delivered: {e}");
                Ok(())
            }
            Err(e) => {
                drop(channel);
                let _ = self.signal(sys::SIGKILL);
                Err(std::io::Error::new(
                    e.kind(),
                    format!("the call could not be sent to the child: {e}"),
                ))
            }
        }
    }

    /// Whether its status still comes through the fork server's pipe. Reads what the
    /// pipe holds first, without waiting: the status, or the end that says the server
    /// died.
    fn relay_open(&self) -> bool {
        let mut st = unpoisoned::lock(&self.status);
        let StatusSource::Relay(pipe) = &st.source else {
            return false;
        };
        if st.ended.is_none() && matches!(sys::poll_now(pipe.as_fd()), Ok(r) if r.ready()) {
            let pipe = Arc::clone(pipe);
            st.ended = self.relayed(&mut st, &pipe, Some(Instant::now()));
        }
        matches!(st.source, StatusSource::Relay(_))
    }

    /// What to watch, from a future, to learn that joining may have progressed: the
    /// pidfd (the process ended), the fork server's status pipe, and the call channel
    /// while the outcome is still to come (a large result is only sent as it is read;
    /// once the outcome is in, the channel, at its end, would be readable for good).
    /// Whether the channel is among them.
    ///
    /// Without an outcome, joining needs the exit status, and a relayed status comes
    /// after the exit: the pidfd, readable for good from the exit on, is left out then,
    /// so that a future waiting for a status the server has yet to send sleeps.
    fn watchers(&self) -> std::io::Result<(Vec<sys::Watched>, bool)> {
        let mut out = Vec::with_capacity(3);
        let relay = match &unpoisoned::lock(&self.status).source {
            StatusSource::Relay(pipe) => {
                out.push(sys::Watched::new(pipe.as_fd())?);
                true
            }
            StatusSource::Direct | StatusSource::Orphaned => false,
        };
        let channel = unpoisoned::lock(&self.channel);
        let pending = channel
            .as_ref()
            .is_some_and(|ch| ch.outcome.is_none() && !ch.closed);
        let outcome_in = channel.as_ref().is_some_and(|ch| ch.outcome.is_some());
        if !relay || pending || outcome_in {
            out.push(sys::Watched::new(self.pidfd.as_fd())?);
        }
        if let Some(ch) = channel.as_ref().filter(|_| pending) {
            out.push(sys::Watched::new(ch.conn.fd())?);
        }
        Ok((out, pending))
    }

    /// Whether the outcome is still to come through the call channel.
    fn outcome_pending(&self) -> bool {
        unpoisoned::lock(&self.channel)
            .as_ref()
            .is_some_and(|ch| ch.outcome.is_none() && !ch.closed)
    }

    /// A duplicate of the call channel's descriptor while the outcome is still to come,
    /// for a wait to watch while it sleeps, then close (see
    /// [`take_outcome_now`](Self::take_outcome_now)): held longer, it would keep the
    /// channel open after the handle dropped it to let a child blocked on sending go.
    pub(crate) fn outcome_watch(&self) -> Option<OwnedFd> {
        self.parent_only().ok()?;
        let channel = self.channel.try_lock().ok()?;
        let ch = channel.as_ref()?;
        (ch.outcome.is_none() && !ch.closed)
            .then(|| sys::dup(ch.conn.fd()).ok())
            .flatten()
    }

    /// Reads what the call channel holds now, without waiting: a result larger than the
    /// socket's buffer that a child sends on the socket (one that could not make a
    /// memory file for it) is only sent as it is read, so that child does not end until
    /// someone reads. Whether the outcome is still to come. A thread that
    /// joins meanwhile reads it (the channel is busy then): nothing is done.
    pub(crate) fn take_outcome_now(&self) -> bool {
        if self.parent_only().is_err() {
            return false;
        }
        let Ok(mut channel) = self.channel.try_lock() else {
            return false;
        };
        let Some(ch) = channel.as_mut() else {
            return false;
        };
        if ch.outcome.is_none()
            && !ch.closed
            && matches!(sys::poll_now(ch.conn.fd()), Ok(r) if r.ready())
        {
            let _ = ch.pump(Some(Instant::now()), self.pidfd.as_fd(), false);
        }
        ch.outcome.is_none() && !ch.closed
    }

    /// Drops the parent's end of the call channel (nobody will read the result).
    pub(crate) fn close_channel(&self) {
        drop(unpoisoned::lock(&self.channel).take());
    }

    /// As [`close_channel`](Self::close_channel), unless a thread holds the channel: one
    /// that joins the child holds it until the child has sent its outcome or ended, and
    /// reads what the child sends meanwhile, so the child is not held up by a send
    /// nobody reads; and unless it holds the outcome already (a join lets go of it
    /// between the outcome and the child's end, and found the outcome gone: its
    /// value lost, the join said the fork server died). The exit's clean-up, which
    /// must not wait for such a join (a daemon that ignores `SIGTERM` would otherwise
    /// never get its `SIGKILL`; an exit from a signal handler that interrupted this very
    /// thread's join would wait for ever).
    pub(crate) fn close_channel_unless_read(&self) {
        // A thread that holds it for a moment (a look at whether the child ended, a
        // join whose timeout comes) is given 100 ms to let go; one that holds it
        // longer is a join, which reads what the child sends.
        let until = Instant::now() + Duration::from_millis(100);
        let mut channel = loop {
            match self.channel.try_lock() {
                Ok(channel) => break channel,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        if channel.as_ref().is_some_and(|ch| ch.outcome.is_some()) {
            return;
        }
        drop(channel.take());
    }

    /// How the child ended, if it has. Does not block while it runs; once it has exited,
    /// waits (briefly) for the fork server to report its status.
    pub(crate) fn ended(&self) -> Option<Ended> {
        self.ended_by(Instant::now() + RELAY_GRACE)
    }

    /// How the child ended, if it has and its status is in by `by`: an exited child's
    /// status relayed by the fork server is waited for until then, no longer (`by` in
    /// the past: only what is there now).
    pub(crate) fn ended_by(&self, by: Instant) -> Option<Ended> {
        // What was kept for the child, let go once it has ended: after the status lock,
        // and after the registry's if this thread holds it (a manager's client, its last
        // reference gone, says goodbye to its server).
        let mut released = None;
        let ended = self.ended_by_locked(by, &mut released);
        if let Some(kept) = released {
            super::registry::release(kept);
        }
        ended
    }

    /// [`ended_by`](Self::ended_by), leaving in `released` what was kept for the child
    /// once it has ended.
    fn ended_by_locked(
        &self,
        by: Instant,
        released: &mut Option<Box<dyn Send + Sync>>,
    ) -> Option<Ended> {
        let waiting_on = {
            let mut st = unpoisoned::lock(&self.status);
            // Outside the parent, only what it knew at the fork.
            if st.ended.is_some() || self.parent_only().is_err() {
                return st.ended;
            }
            let mut waiting_on = None;
            st.ended = match &st.source {
                StatusSource::Relay(pipe) => {
                    let pipe = Arc::clone(pipe);
                    let reported = matches!(sys::poll_now(pipe.as_fd()), Ok(r) if r.ready());
                    if reported {
                        self.relayed(&mut st, &pipe, Some(Instant::now()))
                    } else {
                        if self.exited() && by > Instant::now() {
                            waiting_on = Some(pipe);
                        }
                        None
                    }
                }
                StatusSource::Orphaned => self.orphan_ended(&mut st),
                // A child that has ended but cannot be waited for was reaped by the
                // kernel (this program ignores SIGCHLD) or by a handler of its own:
                // how it ended is lost.
                StatusSource::Direct => match sys::try_reap(self.pidfd.as_fd()) {
                    Ok(status) => status.map(Ended::Known),
                    Err(_) if self.exited() => Some(Ended::Unknown),
                    Err(_) => None,
                },
            };
            if st.ended.is_some() {
                *released = st.kept.take();
            }
            match waiting_on {
                Some(pipe) => pipe,
                None => return st.ended,
            }
        };
        // Exited, its status not yet relayed: waited for without the lock, which
        // `is_alive`, `kill` and the rest take (a server that is stopped or slow would
        // hold them all).
        let _ = sys::wait_readable(&[waiting_on.as_fd()], Some(by));
        let mut st = unpoisoned::lock(&self.status);
        if st.ended.is_none() {
            st.ended = match &st.source {
                StatusSource::Relay(pipe) => {
                    let pipe = Arc::clone(pipe);
                    self.relayed(&mut st, &pipe, Some(Instant::now()))
                }
                // Another thread saw the server die meanwhile.
                StatusSource::Orphaned => self.orphan_ended(&mut st),
                StatusSource::Direct => None,
            };
        }
        st.ended
    }

    /// Reads the status the fork server relays through `pipe`, waiting until `deadline`
    /// for it; at the pipe's end (the server died before reporting) the child is
    /// orphaned from then on, and its end, once its pidfd shows it, is `Unknown`.
    fn relayed(&self, st: &mut Status, pipe: &OwnedFd, deadline: Option<Instant>) -> Option<Ended> {
        // Nothing to read yet (a server that has not reaped the child, or cannot): no
        // answer by the deadline, rather than a read that waits as long as the server.
        if !matches!(sys::wait_readable(&[pipe.as_fd()], deadline), Ok(r) if r[0].ready()) {
            return None;
        }
        match bootstrap::read_status(pipe.as_fd()) {
            Ok(Some(reaped)) => {
                st.oom_killed = reaped.oom_killed;
                Some(Ended::Known(reaped.status))
            }
            Ok(None) | Err(_) => {
                st.source = StatusSource::Orphaned;
                self.orphan_ended(st)
            }
        }
    }

    /// How a child whose fork server is gone ended, if it has: its status if it came to
    /// this process, which reaps it then (a subreaper, or PID 1 in a container, gets the
    /// children of a dead server: they stayed zombies, their statuses said lost), else
    /// `Unknown` once its pidfd shows the exit.
    fn orphan_ended(&self, st: &mut Status) -> Option<Ended> {
        match sys::try_reap(self.pidfd.as_fd()) {
            Ok(Some(status)) => Some(Ended::Known(status)),
            Ok(None) => None,
            Err(_) if !self.exited() => None,
            // The server's files close (its status pipes end) before its children are
            // handed on: a process that adopts orphans gives the child a moment to
            // come (not ended yet meanwhile; nothing here waits).
            Err(_) if sys::adopts_orphans() => {
                let seen = *st.orphan_seen.get_or_insert_with(Instant::now);
                (seen.elapsed() >= ADOPTION).then_some(Ended::Unknown)
            }
            Err(_) => Some(Ended::Unknown),
        }
    }

    /// Whether the process has exited (reported or not).
    fn exited(&self) -> bool {
        matches!(sys::poll_now(self.pidfd.as_fd()), Ok(r) if r.ready())
    }

    /// Waits until the process has exited, without needing its status: the pidfd says so
    /// as soon as it happens, before the fork server has reaped it and reported.
    fn wait_exited(&self, deadline: Option<Instant>) -> Result<(), ProcessError> {
        if matches!(unpoisoned::lock(&self.status).source, StatusSource::Direct) {
            // A direct child must be reaped by us, which needs its status anyway.
            return self.wait(deadline).map(drop);
        }
        if sys::wait_readable(&[self.pidfd.as_fd()], deadline)?[0].ready() {
            // An orphan that came here is reaped, or waited for while it may still come
            // (see `orphan_ended`).
            if self.ended_by(Instant::now()).is_none()
                && matches!(
                    unpoisoned::lock(&self.status).source,
                    StatusSource::Orphaned
                )
            {
                let _ = self.wait(deadline);
            }
            Ok(())
        } else {
            Err(ProcessError::Timeout)
        }
    }

    /// Waits until the child has ended (and is reaped), or `deadline` passes.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Result<Ended, ProcessError> {
        self.parent_only()?;
        loop {
            // What is in now: a status still on its way is waited for below, without
            // the status lock held (a `wait` under a runtime's poll never sleeps).
            if let Some(ended) = self.ended_by(Instant::now()) {
                return Ok(ended);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ProcessError::Timeout);
            }
            let (pipe, orphaned) = match &unpoisoned::lock(&self.status).source {
                StatusSource::Relay(pipe) => (Some(Arc::clone(pipe)), false),
                StatusSource::Direct => (None, false),
                StatusSource::Orphaned => (None, true),
            };
            let fd = match &pipe {
                Some(pipe) => pipe.as_fd(),
                None => self.pidfd.as_fd(),
            };
            // A forked child's end is waited for asleep: its parent's CPU, idle, is
            // where the kernel moves it when the other CPUs are busy (looking measured
            // 12% slower under one busy loop, `loop spawn_fork`).
            let ready = match &pipe {
                Some(_) => looking::readable(fd, deadline, &looking::ENDED)?,
                None => sys::wait_readable(&[fd], deadline)?[0].ready(),
            };
            if !ready {
                return Err(ProcessError::Timeout);
            }
            if let Some(pipe) = pipe {
                let mut st = unpoisoned::lock(&self.status);
                if st.ended.is_none() {
                    st.ended = self.relayed(&mut st, &pipe, deadline);
                }
            } else if orphaned {
                // Exited (its pidfd stays readable), and it may still come to this
                // process: looked for again in a moment, not at once.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Whether the process is still running.
    pub(crate) fn is_alive(&self) -> bool {
        // The pidfd becomes readable when the process exits, before anyone reaps it; a
        // direct child is reaped on the way, so that it leaves no zombie.
        if unpoisoned::lock(&self.status).ended.is_some() || self.exited() {
            let source = match unpoisoned::lock(&self.status).source {
                StatusSource::Direct => Some(true),
                StatusSource::Orphaned => Some(false),
                StatusSource::Relay(_) => None,
            };
            match source {
                Some(true) => {
                    let _ = self.ended();
                }
                // Never waits (see `orphan_ended`): callers hold locks of their own.
                Some(false) => {
                    let _ = self.ended_by(Instant::now());
                }
                None => {}
            }
            return false;
        }
        true
    }

    /// Sends a signal; a process that already ended is left alone.
    pub(crate) fn signal(&self, signal: i32) -> std::io::Result<()> {
        if unpoisoned::lock(&self.status).ended.is_some() {
            return Ok(());
        }
        sys::send_signal(self.pidfd.as_fd(), signal)
    }

    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.exit_status_by(Instant::now() + RELAY_GRACE)
    }

    /// As [`exit_status`](Self::exit_status), waiting for a relayed status until `by`
    /// at most (see [`ended_by`](Self::ended_by)).
    pub(crate) fn exit_status_by(&self, by: Instant) -> Option<ExitStatus> {
        match self.ended_by(by)? {
            Ended::Known(t) => Some(ExitStatus::from_sys(t)),
            Ended::Unknown => None,
        }
    }

    /// Waits for the outcome and the exit, then turns them into the join result.
    fn join<R: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<R, ProcessError> {
        self.parent_only()?;
        // A look with no time left (a future's poll) teaches the shared look budgets
        // nothing: counted as a look that ran out, each poll made blocking joins
        // elsewhere in the process stop looking before they sleep.
        let learn = deadline.is_none_or(|d| d > Instant::now());
        let has_outcome = match unpoisoned::lock(&self.channel).as_mut() {
            Some(ch) => {
                ch.pump(deadline, self.pidfd.as_fd(), learn)?;
                ch.outcome.is_some()
            }
            None => false,
        };
        // With the outcome in hand, only the exit itself is awaited; without one, how the
        // process ended is the answer.
        let ended = if has_outcome {
            self.wait_exited(deadline)?;
            None
        } else {
            Some(self.wait(deadline)?)
        };
        let channel = unpoisoned::lock(&self.channel).take();
        registry::remove(self);
        let (started, limited, outcome) =
            channel.map_or((false, false, None), |c| (c.started, c.limited, c.outcome));
        let exceeded = |(limit, detail)| ProcessError::LimitExceeded { limit, detail };
        // A memory cap too small for the child's own start-up is the cap's doing too, as
        // its cgroup's out-of-memory count shows; other ends count only once the limits
        // are in force (an abort before them need not be an allocation that failed;
        // after them, the arguments' decoding may be what ran into the cap).
        if outcome.is_none()
            && let Some(limit) = self.limit_exceeded()
            && (started || limited || unpoisoned::lock(&self.status).oom_killed)
        {
            return Err(exceeded(limit));
        }
        match outcome {
            Some(Outcome::Returned(body, fds)) => {
                codec::decode::<R>(&body, fds).map_err(ProcessError::Codec)
            }
            Some(Outcome::Panicked(p)) => Err(match self.armed.panicked(&p) {
                Some(limit) => exceeded(limit),
                None => ProcessError::Panicked(p),
            }),
            // What the child says went wrong as it took its call (its arguments, its
            // directory, its channel).
            Some(Outcome::Failed(why)) => Err(ProcessError::Lost(format!(
                "{why}, before its call started"
            ))),
            Some(Outcome::Unencodable(why)) => Err(ProcessError::Codec(CodecError::new(format!(
                "the child could not encode its return value: {why}"
            )))),
            Some(Outcome::Corrupt(why)) => Err(ProcessError::Codec(CodecError::new(format!(
                "the child sent a corrupt message: {why}"
            )))),
            Some(Outcome::Unreceivable(why)) => Err(ProcessError::Codec(CodecError::new(format!(
                "the child's outcome (its return value, or its panic's report) could not be received: {why}"
            )))),
            Some(Outcome::PanicUnreceivable(why)) => Err(ProcessError::Panicked(RemotePanic::new(
                self.name.clone(),
                self.pid,
                format!("(the child panicked; its report could not be received: {why})"),
                None,
                None,
            ))),
            None => Err(match ended {
                Some(Ended::Known(WaitStatus::Exited(code))) if started => {
                    ProcessError::Exited(code)
                }
                Some(Ended::Known(WaitStatus::Signaled(sig))) if started => {
                    ProcessError::Signaled(Signal::from_raw(sig))
                }
                Some(Ended::Known(t)) => ProcessError::Lost(format!(
                    "{} before its call started",
                    ExitStatus::from_sys(t)
                )),
                Some(Ended::Unknown) | None => ProcessError::Lost(
                    if matches!(unpoisoned::lock(&self.status).source, StatusSource::Direct) {
                        "the process ended, but its status was taken before it could be read \
                         (this program ignores SIGCHLD, or a handler of its own reaps children)"
                    } else {
                        "the fork server died, so how the process ended is unknown"
                    }
                    .into(),
                ),
            }),
        }
    }
}

/// How often an awaited handle that could not watch its process (no descriptor left)
/// looks again.
const LOOK_AGAIN: Duration = Duration::from_millis(10);

/// A moment an awaited handle waits before it looks again, having no descriptor to
/// watch its process with (see [`crate::timer::wake_at`]).
#[derive(Debug)]
struct Later {
    at: Instant,
}

impl Later {
    fn start() -> Later {
        Later {
            at: crate::deadline::later(LOOK_AGAIN),
        }
    }

    /// Ready once the moment has passed; otherwise the task is woken then.
    fn poll(&self, cx: &Context<'_>) -> Poll<std::io::Result<()>> {
        if Instant::now() >= self.at {
            return Poll::Ready(Ok(()));
        }
        match crate::timer::wake_at(self.at, cx.waker().clone()) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// How long an exited child's status may take to arrive from the fork server.
const RELAY_GRACE: Duration = Duration::from_secs(1);

/// How long a process that adopts orphans looks for the child of a dead fork server to
/// come to it (see `ChildRecord::orphan_ended`).
const ADOPTION: Duration = Duration::from_millis(100);

/// What an awaited handle watches (see `ChildRecord::watchers`), and which of those
/// can stay readable for good: the fork server's status pipe once it has ended, the call
/// channel once the outcome is in. Either is watched no more then.
#[derive(Debug)]
struct Watchers {
    fds: Vec<sys::Watched>,
    relay: bool,
    channel: bool,
}

/// An owned permission to join a child process: the process counterpart of
/// [`std::thread::JoinHandle`].
///
/// Dropping the handle does not stop the process: like a Python `Process` object going
/// out of scope, it keeps running (a non-daemon child is joined when the program exits;
/// a daemon is terminated then). Its return value is discarded.
pub struct JoinHandle<R> {
    record: Arc<ChildRecord>,
    joined: bool,
    /// Registered with the async reactor the first time the handle is polled.
    watchers: Option<Watchers>,
    /// When a poll could not register them (no descriptor left): when to look again.
    later: Option<Later>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("pid", &self.record.pid)
            .field("name", &self.record.name)
            .field("daemon", &self.record.daemon)
            .finish_non_exhaustive()
    }
}

impl<R> JoinHandle<R> {
    pub(crate) fn new(record: Arc<ChildRecord>) -> Self {
        JoinHandle {
            record,
            joined: false,
            watchers: None,
            later: None,
            _result: PhantomData,
        }
    }

    pub(crate) fn record(&self) -> &Arc<ChildRecord> {
        &self.record
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    /// The process name (`Process-1` unless [`Builder::name`](crate::Builder::name) set
    /// one).
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Whether this is a daemon process.
    pub fn is_daemon(&self) -> bool {
        self.record.daemon
    }

    /// Whether the process is still running.
    pub fn is_alive(&self) -> bool {
        self.record.is_alive()
    }

    /// How the process ended, or `None` while it runs (Python's `exitcode`). In a
    /// process forked from the parent since the child started (see
    /// [`ProcessError::NotParent`]), what the parent knew at the fork.
    ///
    /// A child started by the fork server has its status reported by the server: one
    /// that has just exited is waited for up to a second for that report (and `None`
    /// then if the server did not make it, though [`is_alive`](Self::is_alive) is
    /// false).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.record.exit_status()
    }

    /// Asks the process to stop with `SIGTERM`. It may catch or ignore the signal; follow
    /// with [`join_timeout`](Self::join_timeout) and [`kill`](Self::kill) to be sure.
    ///
    /// # Errors
    ///
    /// The signal could not be sent (a process that already ended is not an error).
    pub fn terminate(&self) -> std::io::Result<()> {
        self.record.signal(sys::SIGTERM)
    }

    /// Kills the process with `SIGKILL`.
    ///
    /// # Errors
    ///
    /// The signal could not be sent (a process that already ended is not an error).
    pub fn kill(&self) -> std::io::Result<()> {
        self.record.signal(sys::SIGKILL)
    }

    /// A view of this child that can be kept or cloned without the right to join it.
    pub fn process(&self) -> ChildProcess {
        ChildProcess {
            record: Arc::clone(&self.record),
        }
    }

    /// The writing end of the child's stdin, if it was [`Stdio::piped`](crate::Stdio::piped).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        unpoisoned::lock(&self.record.stdio).stdin.take()
    }

    /// The reading end of the child's stdout, if it was [`Stdio::piped`](crate::Stdio::piped).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        unpoisoned::lock(&self.record.stdio).stdout.take()
    }

    /// The reading end of the child's stderr, if it was [`Stdio::piped`](crate::Stdio::piped).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        unpoisoned::lock(&self.record.stdio).stderr.take()
    }
}

impl<R: DeserializeOwned> JoinHandle<R> {
    /// Waits for the process to end and returns what its function returned. A piped
    /// stdin not taken ([`take_stdin`](Self::take_stdin)) is closed first, as
    /// [`std::process::Child::wait`] does (and an `await`, at its first poll, as
    /// tokio's `Child::wait`; not `join_timeout`, after which the handle stays usable).
    ///
    /// # Errors
    ///
    /// [`ProcessError`] says why there is no value: the function panicked (with its
    /// message, location and backtrace), the process exited or was killed by a signal
    /// (a crash such as `SIGSEGV`, or `SIGKILL`), it was lost (before the call started,
    /// or how it ended is unknown),
    /// or the value could not be decoded. [`ProcessError::NotParent`] in a process that
    /// is not its parent (one forked from the parent since the child started, which
    /// holds a copy of the handle): only the parent reads the value.
    pub fn join(mut self) -> Result<R, ProcessError> {
        // As `std::process::Child::wait` does: a piped stdin not taken is closed before
        // the wait, so that a child reading its input to the end ends (it was waited
        // for for ever, the handle holding the pipe's writer).
        self.record.close_stdin();
        self.join_until(None)
    }

    /// Like [`join`](Self::join), but gives up after `timeout` with
    /// [`ProcessError::Timeout`], leaving the process running and the handle usable.
    ///
    /// # Errors
    ///
    /// As for [`join`](Self::join), plus `Timeout`; after a result has been returned,
    /// [`ProcessError::Joined`] (not after `Timeout` or `NotParent`).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, ProcessError> {
        // A timeout too long to add to the clock is no timeout.
        self.join_until(Instant::now().checked_add(timeout))
    }

    fn join_until(&mut self, deadline: Option<Instant>) -> Result<R, ProcessError> {
        if self.joined {
            return Err(ProcessError::Joined);
        }
        let result = self.record.join(deadline);
        if !matches!(
            result,
            Err(ProcessError::Timeout | ProcessError::NotParent { .. })
        ) {
            self.joined = true;
        }
        result
    }
}

/// A `JoinHandle` is a future of the join's result, under any async runtime: it is woken
/// by the process's pidfd (and by its result channel, which a large result fills as it
/// is read) through async-io's reactor, which runs on a thread of its own when no smol
/// executor drives it. No thread waits per child.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let child = multiproc::spawn(|x: u64| x * 2, 21)?;
/// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
/// assert_eq!(runtime.block_on(child)?, 42);
/// # Ok(())
/// # }
/// ```
///
/// Polled after it returned its result, it returns [`ProcessError::Joined`].
impl<R: DeserializeOwned> Future for JoinHandle<R> {
    type Output = Result<R, ProcessError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Nothing in a handle is pinned: it is moved freely.
        let this = self.get_mut();
        // As `join` (and tokio's `Child::wait`): a piped stdin not taken is closed.
        this.record.close_stdin();
        loop {
            match this.join_until(Some(Instant::now())) {
                Err(ProcessError::Timeout) => {}
                done => return Poll::Ready(done),
            }
            // A status pipe that reached its end (the server died) is readable for good:
            // watched no more once the record has seen that.
            if this.watchers.as_ref().is_some_and(|w| {
                (w.relay && !this.record.relay_open())
                    || (w.channel && !this.record.outcome_pending())
            }) {
                this.watchers = None;
            }
            if this.watchers.is_none() {
                let relay = this.record.relay_open();
                match this.record.watchers() {
                    Ok((fds, channel)) => {
                        this.watchers = Some(Watchers {
                            fds,
                            relay,
                            channel,
                        })
                    }
                    // No descriptor left to watch with (the process at its limit): looked
                    // at again in a moment, as a blocking join needs none. It ended with
                    // `Io`, the handle consumed by an `await` and the value lost.
                    Err(e) if sys::out_of_descriptors(&e) => {
                        match this.later.get_or_insert_with(Later::start).poll(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(())) => {
                                this.later = None;
                                continue;
                            }
                            // No thread to wake it either.
                            Poll::Ready(Err(_)) => return Poll::Ready(Err(ProcessError::Io(e))),
                        }
                    }
                    Err(e) => return Poll::Ready(Err(ProcessError::Io(e))),
                }
            }
            let mut woken = false;
            for w in this.watchers.iter().flat_map(|w| &w.fds) {
                match w.poll_readable(cx) {
                    Poll::Ready(Ok(())) => woken = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ProcessError::Io(e))),
                    Poll::Pending => {}
                }
            }
            if !woken {
                return Poll::Pending;
            }
        }
    }
}

/// The process's pidfd (Python's `Process.sentinel`): readable once the process has
/// ended, to poll or register with an event loop of your own.
impl<R> AsFd for JoinHandle<R> {
    fn as_fd(&self) -> sys::BorrowedFd<'_> {
        self.record.pidfd()
    }
}

/// The process's pidfd (Python's `Process.sentinel`), as for [`JoinHandle`].
impl AsFd for ChildProcess {
    fn as_fd(&self) -> sys::BorrowedFd<'_> {
        self.record.pidfd()
    }
}

impl<R> Drop for JoinHandle<R> {
    fn drop(&mut self) {
        // The pipe ends not taken go with the handle, as they did when it held them.
        self.record.close_stdio();
        if !self.joined {
            // The result will never be read: let a child blocked on sending it go.
            self.record.close_channel();
            self.record
                .detached
                .store(true, std::sync::atomic::Ordering::Relaxed);
            registry::detached();
        }
    }
}

/// A child process, without its result: from [`active_children`](crate::active_children)
/// or [`JoinHandle::process`]. Cloning it is cheap.
#[derive(Clone)]
pub struct ChildProcess {
    pub(crate) record: Arc<ChildRecord>,
}

impl fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcess")
            .field("pid", &self.record.pid)
            .field("name", &self.record.name)
            .field("daemon", &self.record.daemon)
            .finish()
    }
}

impl ChildProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    /// The process name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Whether this is a daemon process.
    pub fn is_daemon(&self) -> bool {
        self.record.daemon
    }

    /// Whether the process is still running.
    pub fn is_alive(&self) -> bool {
        self.record.is_alive()
    }

    /// How the process ended, or `None` while it runs. In a process forked from the
    /// parent since the child started (see [`ProcessError::NotParent`]), what the parent
    /// knew at the fork. Waits for the fork server's report as
    /// [`JoinHandle::exit_status`] does.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.record.exit_status()
    }

    /// Waits until the process ends, at most `timeout` (`None`: as long as it takes).
    ///
    /// # Errors
    ///
    /// [`ProcessError::Timeout`] if it is still running; [`ProcessError::Io`] if waiting
    /// failed; [`ProcessError::NotParent`] in a process that is not its parent (one
    /// forked from the parent since the child started).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Option<ExitStatus>, ProcessError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        Ok(match self.record.wait(deadline)? {
            Ended::Known(t) => Some(ExitStatus::from_sys(t)),
            Ended::Unknown => None,
        })
    }

    /// Sends `SIGTERM`.
    ///
    /// # Errors
    ///
    /// The signal could not be sent.
    pub fn terminate(&self) -> std::io::Result<()> {
        self.record.signal(sys::SIGTERM)
    }

    /// Sends `SIGKILL`.
    ///
    /// # Errors
    ///
    /// The signal could not be sent.
    pub fn kill(&self) -> std::io::Result<()> {
        self.record.signal(sys::SIGKILL)
    }
}

/// Debug builds only, for a test: `MULTIPROC_TEST_CALL_SEND_FAILS` in the environment
/// makes the send of a call after its child exists fail as the kernel may refuse it
/// (`ETOOMANYREFS`: too many descriptors in flight, which root is never told).
fn call_send_fails() -> bool {
    cfg!(debug_assertions) && std::env::var_os("MULTIPROC_TEST_CALL_SEND_FAILS").is_some()
}
