//! [`Supervisor`]: keeps long-running child processes alive, restarting them per policy
//! (what supervisord and Erlang/OTP supervisors do); and [`daemonize`], which detaches a
//! service from its terminal.

mod daemon;
mod error;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::daemon::{Daemon, DaemonOptions, daemonize};
pub use self::error::{DaemonError, SupervisorError};
use crate::hub::Hub;
use crate::pool::{Jitter, RetryPolicy};
use crate::process::{Builder, JoinHandle};
use crate::process::{ExitStatus, ProcessError, SpawnError};
use crate::sync::lock;
use crate::sys;

/// How often the supervisor looks at its children and its orders when nothing happens.
const TICK: Duration = Duration::from_millis(50);

/// When a child that ended is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Restart {
    /// Always (the default): a service that should never stop.
    #[default]
    Permanent,
    /// Only if it ended abnormally: a panic, a signal, a non-zero exit. A child whose
    /// function returned (or that called `exit(0)`) is done.
    Transient,
    /// Never: a one-off job run under supervision for its clean stop.
    Temporary,
}

/// Which children restart when one must.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Only the child that ended (the default).
    #[default]
    OneForOne,
    /// Every child: the others are stopped (in reverse start order) and all start again
    /// in order. For children that cannot work without each other.
    OneForAll,
    /// The child that ended and every child started after it: for a pipeline whose later
    /// stages depend on the earlier ones.
    RestForOne,
}

type Start = Arc<dyn Fn(&str) -> Result<Box<dyn Child>, SpawnError> + Send + Sync>;

/// A child of a [`Supervisor`]: its name, the function it runs, when it restarts and how
/// long it gets to stop.
///
/// Each child runs `f(args)` in a daemon process (it never outlives the supervisor's
/// process, even one killed with `SIGKILL`) that leads its own process group, so that
/// stopping it also stops whatever it started.
#[derive(Clone)]
pub struct ChildSpec {
    name: String,
    start: Start,
    restart: Restart,
    grace: Duration,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A child named `name` (also its process name) running `f(args)`; permanent, with
    /// 5 seconds to stop after `SIGTERM`.
    pub fn new<A, R>(name: impl Into<String>, f: fn(A) -> R, args: A) -> ChildSpec
    where
        A: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let start = move |name: &str| -> Result<Box<dyn Child>, SpawnError> {
            let handle = Builder::new()
                .name(name)
                .daemon(true)
                .process_group(true)
                .spawn(f, args.clone())?;
            Ok(Box::new(handle))
        };
        ChildSpec {
            name: name.into(),
            start: Arc::new(start),
            restart: Restart::Permanent,
            grace: Duration::from_secs(5),
        }
    }

    /// When the child restarts.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// How long the child has to stop after `SIGTERM` before its process group is
    /// killed with `SIGKILL`.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A running child, whatever its return type.
trait Child: Send {
    fn pid(&self) -> u32;
    /// How it ended, once it has (without blocking).
    fn try_exit(&mut self) -> Option<ChildExit>;
    fn signal(&self, signal: i32);
    fn as_waitable(&self) -> &dyn crate::Waitable;
}

impl<R: DeserializeOwned + Send + 'static> Child for JoinHandle<R> {
    fn pid(&self) -> u32 {
        JoinHandle::pid(self)
    }

    fn try_exit(&mut self) -> Option<ChildExit> {
        if self.is_alive() {
            return None;
        }
        let status = self.exit_status();
        match self.join_timeout(Duration::ZERO) {
            Err(ProcessError::Timeout) => None,
            Ok(_) | Err(ProcessError::Exited(0)) => Some(ChildExit {
                normal: true,
                status,
                reason: "returned".into(),
            }),
            Err(e) => Some(ChildExit {
                normal: false,
                status,
                reason: e.to_string(),
            }),
        }
    }

    fn signal(&self, signal: i32) {
        // The whole group when the child has made it; the child alone before that.
        if !matches!(sys::signal_group(self.pid(), signal), Ok(true)) {
            let _ = if signal == sys::SIGKILL {
                self.kill()
            } else {
                self.terminate()
            };
        }
    }

    fn as_waitable(&self) -> &dyn crate::Waitable {
        self
    }
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildExit {
    /// Its function returned (or it exited with code 0).
    pub normal: bool,
    /// The exit code or signal, when known.
    pub status: Option<ExitStatus>,
    /// In words: `returned`, the panic message, `killed by SIGSEGV`, ...
    pub reason: String,
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Where a child stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// Running as process `pid`.
    Running {
        /// Its process id.
        pid: u32,
    },
    /// Waiting out its backoff before it starts again.
    Restarting {
        /// Time left.
        after: Duration,
    },
    /// Ended and not to be restarted (a transient child that returned, a temporary one).
    Done,
    /// Stopped by the supervisor.
    Stopped,
}

/// A child's status, from [`Supervisor::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// The child's name.
    pub name: String,
    /// Where it stands.
    pub state: ChildState,
    /// How many times it has been restarted.
    pub restarts: u32,
    /// How it ended last, if it has.
    pub last_exit: Option<ChildExit>,
}

/// What a supervisor did, from [`Supervisor::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A child started.
    Started {
        /// The child.
        child: String,
        /// Its process id.
        pid: u32,
    },
    /// A child ended (not stopped by the supervisor).
    Exited {
        /// The child.
        child: String,
        /// Its process id.
        pid: u32,
        /// How.
        exit: ChildExit,
    },
    /// A child will start again after `after`.
    Restarting {
        /// The child.
        child: String,
        /// Its backoff.
        after: Duration,
    },
    /// Restart intensity was exceeded: every child was stopped.
    GaveUp {
        /// Why, in words.
        reason: String,
    },
    /// The supervisor stopped (asked to, or every child is done).
    Stopped,
}

/// Builds a [`Supervisor`].
#[derive(Debug)]
pub struct SupervisorBuilder {
    children: Vec<ChildSpec>,
    strategy: Strategy,
    max_restarts: u32,
    period: Duration,
    backoff: RetryPolicy,
    reset_after: Duration,
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        SupervisorBuilder {
            children: Vec::new(),
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            period: Duration::from_secs(30),
            backoff: RetryPolicy::attempts(u32::MAX)
                .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(30))
                .jitter(Jitter::Equal),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl SupervisorBuilder {
    /// Adds a child; children start in the order they are added and stop in reverse.
    pub fn child(mut self, spec: ChildSpec) -> Self {
        self.children.push(spec);
        self
    }

    /// Which children restart together (default [`Strategy::OneForOne`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// At most `max_restarts` restarts within any `period` (default 5 in 30 s); one more
    /// and the supervisor stops every child and fails with
    /// [`SupervisorError::Intensity`], rather than restart a broken service forever.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Delay before a restart: `base` the first time, doubling for each restart in a
    /// row, at most `max` (default 100 ms to 30 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = self.backoff.backoff(base, 2.0, max);
        self
    }

    /// How backoff delays are randomised (default [`Jitter::Equal`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.backoff = self.backoff.jitter(jitter);
        self
    }

    /// A child that ran this long before it ended restarts after the base delay again
    /// (default 10 s): backoff grows only while a child keeps failing fast.
    pub fn reset_after(mut self, stable: Duration) -> Self {
        self.reset_after = stable;
        self
    }

    /// Starts every child, in order, and the supervising thread.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::InvalidArgument`] for no children or two of one name;
    /// [`SupervisorError::Spawn`] if a child cannot be started (those already started
    /// are stopped again).
    pub fn start(self) -> Result<Supervisor, SupervisorError> {
        if self.children.is_empty() {
            return Err(SupervisorError::InvalidArgument(
                "a supervisor needs at least one child".into(),
            ));
        }
        for (i, c) in self.children.iter().enumerate() {
            if self.children[..i].iter().any(|o| o.name == c.name) {
                return Err(SupervisorError::InvalidArgument(format!(
                    "two children named {:?}",
                    c.name
                )));
            }
        }
        let shared = Arc::new(Shared {
            status: Mutex::new(Vec::new()),
            outcome: Mutex::new(None),
            done: Condvar::new(),
            stop: AtomicBool::new(false),
            hub: Hub::new(),
        });
        let mut sup = Supervising {
            slots: self
                .children
                .into_iter()
                .map(|spec| Slot {
                    spec,
                    child: None,
                    state: SlotState::Stopped,
                    started: Instant::now(),
                    in_a_row: 0,
                    restarts: 0,
                    last_exit: None,
                })
                .collect(),
            strategy: self.strategy,
            max_restarts: self.max_restarts,
            period: self.period,
            backoff: self.backoff,
            reset_after: self.reset_after,
            recent: Vec::new(),
            shared: Arc::clone(&shared),
        };
        for i in 0..sup.slots.len() {
            if let Err(e) = sup.spawn(i) {
                sup.stop_slots(&(0..i).collect::<Vec<_>>());
                return Err(e);
            }
        }
        sup.publish();
        let thread = thread::Builder::new()
            .name("multiproc-supervisor".into())
            .spawn(move || sup.run())
            .map_err(|e| SupervisorError::InvalidArgument(format!("supervisor thread: {e}")))?;
        Ok(Supervisor {
            shared,
            thread: Some(thread),
        })
    }
}

/// Keeps child processes alive: restarts them per their [`Restart`] policy and the
/// [`Strategy`], with exponential backoff and jitter, within a restart intensity; stops
/// them gracefully (`SIGTERM`, a grace period, then `SIGKILL` of the process group).
///
/// Dropping the supervisor stops every child.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::{ChildSpec, Restart, Supervisor};
///
/// fn serve(port: u16) {
///     // ... a service that might crash
/// #   let _ = port;
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let supervisor = Supervisor::builder()
///     .child(ChildSpec::new("web", serve, 8080))
///     .child(ChildSpec::new("metrics", serve, 9090).restart(Restart::Transient))
///     .intensity(10, Duration::from_secs(60))
///     .start()?;
/// for child in supervisor.status() {
///     println!("{}: {:?}", child.name, child.state);
/// }
/// supervisor.wait()?; // until every child is done, or intensity is exceeded
/// # Ok(())
/// # }
/// ```
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("children", &self.status())
            .finish()
    }
}

impl Supervisor {
    /// A builder: children, strategy, intensity, backoff.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }

    /// Every child's status, in start order.
    pub fn status(&self) -> Vec<ChildStatus> {
        lock(&self.shared.status).clone()
    }

    /// A stream of what the supervisor does from now on.
    pub fn events(&self) -> Receiver<SupervisorEvent> {
        self.shared.hub.subscribe()
    }

    /// Whether the supervisor still runs (it stops when asked, when every child is done,
    /// or when intensity is exceeded).
    pub fn is_running(&self) -> bool {
        lock(&self.shared.outcome).is_none()
    }

    /// Waits until the supervisor stops.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Intensity`] if it gave up; a start failure of a restart.
    pub fn wait(&self) -> Result<(), SupervisorError> {
        let mut outcome = lock(&self.shared.outcome);
        loop {
            if let Some(o) = &*outcome {
                return o.clone().into_result();
            }
            outcome = self
                .shared
                .done
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Like [`wait`](Self::wait), at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait), and [`SupervisorError::Timeout`] if it still runs.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), SupervisorError> {
        let deadline = Instant::now() + timeout;
        let mut outcome = lock(&self.shared.outcome);
        loop {
            if let Some(o) = &*outcome {
                return o.clone().into_result();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SupervisorError::Timeout);
            }
            outcome = self
                .shared
                .done
                .wait_timeout(outcome, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Stops every child (in reverse start order, each gracefully) and the supervisor.
    /// Returns how the supervisor ended: `Ok` unless it had already given up.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    pub fn stop(mut self) -> Result<(), SupervisorError> {
        self.stop_now();
        self.wait()
    }

    fn stop_now(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// How the supervisor ended, kept so that every waiter gets it.
#[derive(Clone)]
enum Outcome {
    Stopped,
    GaveUp {
        restarts: u32,
        max: u32,
        period: Duration,
        child: String,
        exit: String,
    },
}

impl Outcome {
    fn into_result(self) -> Result<(), SupervisorError> {
        match self {
            Outcome::Stopped => Ok(()),
            Outcome::GaveUp {
                restarts,
                max,
                period,
                child,
                exit,
            } => Err(SupervisorError::Intensity {
                restarts,
                max,
                period,
                child,
                exit,
            }),
        }
    }
}

struct Shared {
    status: Mutex<Vec<ChildStatus>>,
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
    stop: AtomicBool,
    hub: Hub<SupervisorEvent>,
}

enum SlotState {
    Running,
    Waiting(Instant),
    Done,
    Stopped,
}

struct Slot {
    spec: ChildSpec,
    child: Option<Box<dyn Child>>,
    state: SlotState,
    started: Instant,
    /// Restarts in a row without a stable run, for the backoff.
    in_a_row: u32,
    restarts: u32,
    last_exit: Option<ChildExit>,
}

/// The supervising thread's state.
struct Supervising {
    slots: Vec<Slot>,
    strategy: Strategy,
    max_restarts: u32,
    period: Duration,
    backoff: RetryPolicy,
    reset_after: Duration,
    /// When recent restarts happened, for the intensity.
    recent: Vec<Instant>,
    shared: Arc<Shared>,
}

impl Supervising {
    fn run(mut self) {
        let outcome = loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break Outcome::Stopped;
            }
            if let Some(gave_up) = self.reap_exits() {
                break gave_up;
            }
            if let Some(gave_up) = self.start_due() {
                break gave_up;
            }
            self.publish();
            if self
                .slots
                .iter()
                .all(|s| matches!(s.state, SlotState::Done))
            {
                break Outcome::Stopped;
            }
            self.sleep();
        };
        let all: Vec<usize> = (0..self.slots.len()).collect();
        self.stop_slots(&all);
        if let Outcome::GaveUp { .. } = &outcome {
            let reason = outcome.clone().into_result().err().map(|e| e.to_string());
            tracing::error!("supervisor gave up: {}", reason.as_deref().unwrap_or(""));
            self.shared.hub.send(SupervisorEvent::GaveUp {
                reason: reason.unwrap_or_default(),
            });
        }
        self.publish();
        self.shared.hub.send(SupervisorEvent::Stopped);
        *lock(&self.shared.outcome) = Some(outcome);
        self.shared.done.notify_all();
    }

    /// Sleeps until a child ends, a restart is due, or a tick passes.
    fn sleep(&self) {
        let now = Instant::now();
        let next_restart = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Waiting(at) => Some(at.saturating_duration_since(now)),
                _ => None,
            })
            .min()
            .unwrap_or(TICK);
        let waitables: Vec<&dyn crate::Waitable> = self
            .slots
            .iter()
            .filter_map(|s| s.child.as_ref().map(|c| c.as_waitable()))
            .collect();
        let timeout = next_restart.min(TICK);
        if waitables.is_empty() || crate::wait(&waitables, Some(timeout)).is_err() {
            thread::sleep(timeout);
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), SupervisorError> {
        let slot = &mut self.slots[i];
        let child =
            (slot.spec.start)(&slot.spec.name).map_err(|source| SupervisorError::Spawn {
                child: slot.spec.name.clone(),
                source,
            })?;
        let pid = child.pid();
        tracing::debug!(child = %slot.spec.name, pid, "child started");
        slot.child = Some(child);
        slot.state = SlotState::Running;
        slot.started = Instant::now();
        self.shared.hub.send(SupervisorEvent::Started {
            child: slot.spec.name.clone(),
            pid,
        });
        Ok(())
    }

    /// Handles children that ended. `Some` when intensity was exceeded.
    fn reap_exits(&mut self) -> Option<Outcome> {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            let Some(exit) = child.try_exit() else {
                continue;
            };
            let pid = child.pid();
            slot.child = None;
            tracing::warn!(child = %slot.spec.name, pid, "child ended: {exit}");
            self.shared.hub.send(SupervisorEvent::Exited {
                child: slot.spec.name.clone(),
                pid,
                exit: exit.clone(),
            });
            if let Some(gave_up) = self.ended(i, exit) {
                return Some(gave_up);
            }
        }
        None
    }

    /// Child `i` ended with `exit` (or could not be started): restart per policy.
    fn ended(&mut self, i: usize, exit: ChildExit) -> Option<Outcome> {
        let now = Instant::now();
        let slot = &mut self.slots[i];
        if now.duration_since(slot.started) >= self.reset_after {
            slot.in_a_row = 0;
        }
        let restart = match slot.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !exit.normal,
            Restart::Temporary => false,
        };
        slot.last_exit = Some(exit.clone());
        if !restart {
            slot.state = SlotState::Done;
            return None;
        }
        self.recent.retain(|t| now.duration_since(*t) < self.period);
        self.recent.push(now);
        if self.recent.len() as u32 > self.max_restarts {
            return Some(Outcome::GaveUp {
                restarts: self.recent.len() as u32,
                max: self.max_restarts,
                period: self.period,
                child: slot.spec.name.clone(),
                exit: exit.reason,
            });
        }
        slot.in_a_row += 1;
        let delay = self.backoff.delay(slot.in_a_row);
        let name = slot.spec.name.clone();
        let affected: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![i],
            Strategy::OneForAll => (0..self.slots.len()).collect(),
            Strategy::RestForOne => (i..self.slots.len()).collect(),
        };
        let siblings: Vec<usize> = affected.iter().copied().filter(|&j| j != i).collect();
        self.stop_slots(&siblings);
        for j in affected {
            let s = &mut self.slots[j];
            if j != i && s.spec.restart == Restart::Temporary {
                s.state = SlotState::Done;
                continue;
            }
            if matches!(s.state, SlotState::Done) && j != i {
                continue;
            }
            s.restarts += 1;
            s.state = SlotState::Waiting(now + delay);
        }
        tracing::info!(child = %name, ?delay, "restarting");
        self.shared.hub.send(SupervisorEvent::Restarting {
            child: name,
            after: delay,
        });
        None
    }

    /// Starts the children whose backoff is over, in order.
    fn start_due(&mut self) -> Option<Outcome> {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if !matches!(self.slots[i].state, SlotState::Waiting(at) if at <= now) {
                continue;
            }
            if let Err(e) = self.spawn(i) {
                let exit = ChildExit {
                    normal: false,
                    status: None,
                    reason: e.to_string(),
                };
                if let Some(gave_up) = self.ended(i, exit) {
                    return Some(gave_up);
                }
            }
        }
        None
    }

    /// Stops the running children among `which`, in reverse order, together: `SIGTERM`
    /// to each process group, then `SIGKILL` to those still running after their grace.
    fn stop_slots(&mut self, which: &[usize]) {
        let start = Instant::now();
        let mut stopping: Vec<usize> = Vec::new();
        for &i in which.iter().rev() {
            let slot = &mut self.slots[i];
            if let Some(child) = &slot.child {
                child.signal(sys::SIGTERM);
                stopping.push(i);
            }
            if !matches!(slot.state, SlotState::Done) {
                slot.state = SlotState::Stopped;
            }
        }
        while !stopping.is_empty() {
            let now = Instant::now();
            stopping.retain(|&i| {
                let slot = &mut self.slots[i];
                let Some(child) = slot.child.as_mut() else {
                    return false;
                };
                if let Some(exit) = child.try_exit() {
                    slot.last_exit = Some(exit);
                    slot.child = None;
                    return false;
                }
                if now.duration_since(start) >= slot.spec.grace {
                    child.signal(sys::SIGKILL);
                }
                true
            });
            // Wake when one of them ends, or at the next grace deadline.
            let next_deadline = stopping
                .iter()
                .map(|&i| (start + self.slots[i].spec.grace).saturating_duration_since(now))
                .filter(|d| !d.is_zero())
                .min()
                .unwrap_or(TICK);
            let waitables: Vec<&dyn crate::Waitable> = stopping
                .iter()
                .filter_map(|&i| self.slots[i].child.as_ref().map(|c| c.as_waitable()))
                .collect();
            if !waitables.is_empty() {
                let _ = crate::wait(&waitables, Some(next_deadline.min(TICK)));
            }
        }
    }

    fn publish(&self) {
        let now = Instant::now();
        let status = self
            .slots
            .iter()
            .map(|s| ChildStatus {
                name: s.spec.name.clone(),
                state: match (&s.state, &s.child) {
                    (SlotState::Running, Some(c)) => ChildState::Running { pid: c.pid() },
                    (SlotState::Waiting(at), _) => ChildState::Restarting {
                        after: at.saturating_duration_since(now),
                    },
                    (SlotState::Done, _) => ChildState::Done,
                    _ => ChildState::Stopped,
                },
                restarts: s.restarts,
                last_exit: s.last_exit.clone(),
            })
            .collect();
        *lock(&self.shared.status) = status;
    }
}
