//! The supervisor's engine: the state the [`Supervisor`](super::Supervisor) handle and
//! its thread share, and the supervising loop (children started, their exits reaped,
//! restarts per policy and strategy within the intensity, backoff, graceful stops).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::de::DeserializeOwned;

use super::{
    ChildExit, ChildSpec, ChildState, ChildStatus, Restart, Strategy, SupervisorError,
    SupervisorEvent,
};
use crate::broadcast::Broadcast;
use crate::pool::RetryPolicy;
use crate::process::{JoinHandle, ProcessError};
use crate::sync::unpoisoned;
use crate::sys;

/// How often the supervisor looks at its children and its orders when nothing happens.
const TICK: Duration = Duration::from_millis(50);
/// How often the supervisor looks at a process group it is waiting for.
const GROUP_POLL: Duration = Duration::from_millis(10);
/// How long a stop waits for a process group to end once it was sent `SIGKILL`.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A running child, whatever its return type.
pub(super) trait Child: Send {
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
        exit_of(self, |_| Ok(()))
    }

    fn signal(&self, signal: i32) {
        // The whole group when the child has made it (what it started there too), and
        // the child itself, through its pidfd, where the group may not hold it: before
        // it made the group, or after it moved to another (`setpgid`), when a send to
        // the group reached only its other members (or their zombies) and succeeded all
        // the same. A `SIGKILL` goes both ways always (once the child has ended the
        // pidfd's does nothing).
        let pid = self.pid();
        let grouped = matches!(sys::signal_group(pid, signal), Ok(true));
        if signal == sys::SIGKILL || !grouped || !sys::in_group(pid, pid) {
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

/// How the child of `handle` ended, once it has (without blocking): normally if its
/// function returned a value `judge` accepts (or it exited with status 0 before
/// returning one); otherwise why.
fn exit_of<R: DeserializeOwned + Send + 'static>(
    handle: &mut JoinHandle<R>,
    judge: impl FnOnce(R) -> Result<(), String>,
) -> Option<ChildExit> {
    if handle.is_alive() {
        return None;
    }
    let status = handle.exit_status();
    let (normal, reason) = match handle.join_timeout(Duration::ZERO) {
        Err(ProcessError::Timeout) => return None,
        Ok(value) => match judge(value) {
            Ok(()) => (true, "returned".to_string()),
            Err(why) => (false, why),
        },
        Err(ProcessError::Exited(0)) => (true, "returned".to_string()),
        Err(e) => (false, e.to_string()),
    };
    Some(ChildExit {
        normal,
        status,
        reason,
    })
}

/// The child of [`ChildSpec::new_fallible`]: its function returning `Err` is an
/// abnormal end.
pub(super) struct Fallible<T, E>(pub(super) JoinHandle<Result<T, E>>);

impl<T, E> Child for Fallible<T, E>
where
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + std::fmt::Display + Send + 'static,
{
    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn try_exit(&mut self) -> Option<ChildExit> {
        exit_of(&mut self.0, |r| {
            r.map(drop).map_err(|e| format!("returned an error: {e}"))
        })
    }

    fn signal(&self, signal: i32) {
        Child::signal(&self.0, signal);
    }

    fn as_waitable(&self) -> &dyn crate::Waitable {
        &self.0
    }
}

/// How the supervisor ended, kept so that every waiter gets it.
#[derive(Clone)]
enum Outcome {
    Stopped,
    /// The supervising thread panicked (the message).
    Panicked(String),
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
            Outcome::Panicked(why) => Err(SupervisorError::Panicked(why)),
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

pub(super) struct Shared {
    status: Mutex<Vec<ChildStatus>>,
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
    stop: AtomicBool,
    events: Broadcast<SupervisorEvent>,
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
pub(super) struct Supervising {
    slots: Vec<Slot>,
    strategy: Strategy,
    max_restarts: u32,
    period: Duration,
    backoff: RetryPolicy,
    reset_after: Duration,
    /// When recent restarts happened, for the intensity.
    recent: Vec<Instant>,
    /// Process groups whose leader (a child) has ended while other members live on:
    /// they got `SIGTERM` and get `SIGKILL` at the end of their grace.
    lingering: Vec<Lingering>,
    shared: Arc<Shared>,
}

/// A process group left behind by a child that ended.
struct Lingering {
    pgid: u32,
    /// The slot whose child led it: not started again while the group lingers.
    slot: usize,
    /// `None`: a grace too long to add to the clock, which never ends.
    kill_at: Option<Instant>,
    /// When it was first sent `SIGKILL`: what is left of it [`KILL_WAIT`] later is
    /// left behind.
    killed_at: Option<Instant>,
}

/// When the lingering groups next need looking at: at the end of a grace, and every
/// [`GROUP_POLL`] once it has passed (killed, they are waited for until gone or
/// [`KILL_WAIT`] has passed; a wait of nothing spun the thread through that time).
fn lingering_due(lingering: &[Lingering], now: Instant) -> impl Iterator<Item = Duration> + '_ {
    lingering.iter().filter_map(|g| g.kill_at).map(move |at| {
        let left = at.saturating_duration_since(now);
        if left.is_zero() { GROUP_POLL } else { left }
    })
}

/// One look at the lingering groups: forgets those gone, sends `SIGKILL` to those past
/// their grace, and leaves behind (said so) those that `SIGKILL` has not ended within
/// [`KILL_WAIT`] of the first. Done by the supervising thread between its passes, and
/// every [`GROUP_POLL`] while it stops a child (a stop lasts up to the child's grace:
/// a group whose own grace ended meanwhile was killed only after it, or, were the stop
/// longer than the grace and `KILL_WAIT`, left behind without a kill).
fn tend_groups(lingering: &mut Vec<Lingering>, now: Instant) {
    lingering.retain_mut(|g| {
        if !sys::group_alive(g.pgid) {
            sys::reap_adopted(g.pgid);
            return false;
        }
        if g.killed_at
            .is_some_and(|at| now.saturating_duration_since(at) >= KILL_WAIT)
        {
            // As in `stop_slot`: what `SIGKILL` does not end is left behind.
            tracing::warn!(
                pgid = g.pgid,
                "a process group outlives SIGKILL; left behind"
            );
            return false;
        }
        if g.kill_at.is_some_and(|at| now >= at) {
            let _ = sys::signal_group(g.pgid, sys::SIGKILL);
            g.killed_at.get_or_insert(now);
        }
        true
    });
}

impl Supervising {
    /// The supervising thread: supervises until told to stop, every child is done or
    /// intensity is exceeded, then stops every child and tells the waiters. A panic
    /// there (user code runs on it: a restart clones and encodes the child's
    /// arguments) ends it the same way, with the panic as the outcome: waiters must
    /// not wait for a thread that is gone, nor children outlive their supervisor.
    fn run(mut self) {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.supervise()))
            .unwrap_or_else(|p| Outcome::Panicked(crate::bootstrap::caught_panic(p).to_string()));
        let ended = catch_unwind(AssertUnwindSafe(|| self.end(&outcome)));
        let outcome = match ended {
            Ok(()) => outcome,
            Err(p) => {
                // The stop was cut short (user code runs there too: a child's return
                // value is decoded): what it had not stopped is killed, runs no code,
                // and the end is told as any other (a subscriber waits for `Stopped`).
                self.kill_all();
                let outcome = Outcome::Panicked(crate::bootstrap::caught_panic(p).to_string());
                // Nor may the telling keep the waiters from the outcome (a tracing
                // subscriber of the program's runs in it).
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.announce(&outcome))) {
                    crate::bootstrap::drop_payload(payload);
                }
                outcome
            }
        };
        *unpoisoned::lock(&self.shared.outcome) = Some(outcome);
        self.shared.done.notify_all();
    }

    /// Supervises until the supervisor ends; how.
    fn supervise(&mut self) -> Outcome {
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break Outcome::Stopped;
            }
            if let Some(gave_up) = self.reap_exits() {
                break gave_up;
            }
            // A stop asked for while an exit was handled (stopping the siblings of a
            // child that ended takes up to their grace) starts nothing more.
            if self.shared.stop.load(Ordering::Acquire) {
                break Outcome::Stopped;
            }
            self.tend_lingering(false);
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
        }
    }

    /// Stops every child and says how the supervisor ended.
    fn end(&mut self, outcome: &Outcome) {
        let all: Vec<usize> = (0..self.slots.len()).collect();
        self.stop_slots(&all);
        self.tend_lingering(true);
        self.announce(outcome);
    }

    /// Publishes the children's last status and tells subscribers how the supervisor
    /// ended (runs no user code).
    fn announce(&self, outcome: &Outcome) {
        let mut last = Vec::new();
        if let Outcome::GaveUp { .. } | Outcome::Panicked(_) = outcome {
            let reason = outcome.clone().into_result().err().map(|e| e.to_string());
            tracing::error!("supervisor gave up: {}", reason.as_deref().unwrap_or(""));
            last.push(SupervisorEvent::GaveUp {
                reason: reason.unwrap_or_default(),
            });
        }
        self.publish();
        last.push(SupervisorEvent::Stopped);
        // The outcome first: a subscriber that reads `Stopped` and asks at once finds
        // the supervisor ended (`is_running`, `wait`).
        *unpoisoned::lock(&self.shared.outcome) = Some(outcome.clone());
        self.shared.done.notify_all();
        // Told even to a subscriber too far behind for other events; then the streams
        // end.
        self.shared.events.close(&last);
    }

    /// Sleeps until a child ends, a restart is due, or a tick passes.
    fn sleep(&self) {
        let now = Instant::now();
        // A slot whose last run's group lingers is looked at every `GROUP_POLL` for the
        // group's end, and so are those held behind it (`start_due`): due, they would
        // wake this thread at once, again and again.
        let lingers = |i: usize| self.lingering.iter().any(|l| l.slot == i);
        let first_held = (0..self.slots.len())
            .find(|&i| matches!(self.slots[i].state, SlotState::Waiting(_)) && lingers(i));
        let held = |i: usize| {
            lingers(i)
                || (self.strategy != Strategy::OneForOne && first_held.is_some_and(|h| i > h))
        };
        let next_restart = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                SlotState::Waiting(at) if held(i) => {
                    Some(at.saturating_duration_since(now).max(GROUP_POLL))
                }
                SlotState::Waiting(at) => Some(at.saturating_duration_since(now)),
                _ => None,
            })
            .chain(lingering_due(&self.lingering, now))
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
        // A restart is counted once it started (one that failed to start is tried
        // again, and counted then).
        if matches!(slot.state, SlotState::Waiting(_)) {
            slot.restarts += 1;
        }
        slot.child = Some(child);
        slot.state = SlotState::Running;
        slot.started = Instant::now();
        // Only once it is in its slot: a `tracing` subscriber that panics would
        // otherwise drop the handle of a child no stop can reach.
        tracing::trace!(child = %slot.spec.name, pid, "child started");
        self.shared.events.send(SupervisorEvent::Started {
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
            let grace = slot.spec.grace;
            let name = slot.spec.name.clone();
            // Its group's members are in hand before anything is said of it.
            self.linger(i, pid, grace);
            if exit.normal {
                tracing::trace!(child = %name, pid, "child ended: {exit}");
            } else {
                tracing::warn!(child = %name, pid, "child ended: {exit}");
            }
            // Its status says so, what comes next included (restarting, or done), before
            // the event goes, and before its siblings' stop (up to their grace): a
            // subscriber that looked at the status on the event found the child still
            // running, under the pid that had ended, and then stopped (as by the
            // supervisor).
            let event = SupervisorEvent::Exited {
                child: name,
                pid,
                exit: exit.clone(),
            };
            if let Some(gave_up) = self.ended(i, exit, Some(event)) {
                return Some(gave_up);
            }
        }
        None
    }

    /// Child `i` ended with `exit` (or could not be started): restart per policy.
    /// `event` (its `Exited`) goes once its status says what comes next.
    fn ended(
        &mut self,
        i: usize,
        exit: ChildExit,
        event: Option<SupervisorEvent>,
    ) -> Option<Outcome> {
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
        let announce = |this: &Self, event: Option<SupervisorEvent>| {
            this.publish();
            if let Some(event) = event {
                this.shared.events.send(event);
            }
        };
        if !restart {
            slot.state = SlotState::Done;
            announce(self, event);
            return None;
        }
        self.recent.retain(|t| now.duration_since(*t) < self.period);
        self.recent.push(now);
        if self.recent.len() as u32 > self.max_restarts {
            // Stopped: the supervisor gives up, and stops every child.
            let child = slot.spec.name.clone();
            announce(self, event);
            return Some(Outcome::GaveUp {
                restarts: self.recent.len() as u32,
                max: self.max_restarts,
                period: self.period,
                child,
                exit: exit.reason,
            });
        }
        let slot = &mut self.slots[i];
        slot.in_a_row += 1;
        let delay = self.backoff.delay(slot.in_a_row);
        let name = slot.spec.name.clone();
        let affected: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![i],
            Strategy::OneForAll => (0..self.slots.len()).collect(),
            Strategy::RestForOne => (i..self.slots.len()).collect(),
        };
        let siblings: Vec<usize> = affected.iter().copied().filter(|&j| j != i).collect();
        // A sibling already waiting for a restart of its own (it ended first) is
        // restarted once, counted once, and not before its own backoff is over: the
        // children restarting together (in order) wait for the latest of their delays.
        let waiting_until = siblings
            .iter()
            .filter_map(|&j| match self.slots[j].state {
                SlotState::Waiting(at) => Some(at),
                _ => None,
            })
            .max();
        // A sibling that ran long enough has its backoff reset, as its own end after
        // such a run would: stopped for another's crash, it did not crash in a row.
        for &j in &siblings {
            let s = &mut self.slots[j];
            if matches!(s.state, SlotState::Running)
                && now.duration_since(s.started) >= self.reset_after
            {
                s.in_a_row = 0;
            }
        }
        // Its status says it restarts while its siblings stop (up to their grace), the
        // time left counted from now until they have: it showed as stopped by the
        // supervisor.
        self.slots[i].state = SlotState::Waiting(crate::deadline::later_than(now, delay));
        announce(self, event);
        self.stop_slots(&siblings);
        // The delay counts from the end of the siblings' stop (up to their grace), not
        // from the crash: a stop longer than the delay left none.
        let stopped = Instant::now();
        let own = crate::deadline::later_than(stopped, delay);
        let at = waiting_until.map_or(own, |w| w.max(own));
        // Every sibling but a temporary one starts again, one that had ended (done) too,
        // as OTP's do: what the children restart together for is their start in
        // order (a transient set-up child before the service that needs it), and
        // whether one that ended did so before the crash or during the stop was down
        // to the order in which the supervisor saw the two ends.
        for j in affected {
            let s = &mut self.slots[j];
            if j != i && s.spec.restart == Restart::Temporary {
                s.state = SlotState::Done;
                continue;
            }
            s.state = SlotState::Waiting(at);
        }
        let after = at.saturating_duration_since(stopped);
        tracing::info!(child = %name, ?after, "restarting");
        self.shared
            .events
            .send(SupervisorEvent::Restarting { child: name, after });
        None
    }

    /// Starts the children whose backoff is over, in order.
    fn start_due(&mut self) -> Option<Outcome> {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if !matches!(self.slots[i].state, SlotState::Waiting(at) if at <= now) {
                continue;
            }
            if self.lingering.iter().any(|l| l.slot == i) {
                // Its last run's group is still there: not yet, nor (the children
                // starting in order) those after it, unless each restarts alone.
                if self.strategy == Strategy::OneForOne {
                    continue;
                }
                break;
            }
            if let Err(e) = self.spawn(i) {
                // A start that failed is a child that failed at once: the backoff grows
                // (it is reset only by a child that ran for `reset_after`). Now, not as
                // the start began: one that took a while to fail (a fork server that
                // answered late) would read as a run that lasted, and reset it.
                self.slots[i].started = Instant::now();
                let exit = ChildExit {
                    normal: false,
                    status: None,
                    reason: e.to_string(),
                };
                if let Some(gave_up) = self.ended(i, exit, None) {
                    return Some(gave_up);
                }
            }
        }
        None
    }

    /// Kills every child still running, and its process group, and the groups still
    /// lingering, without waiting (and without decoding anything).
    fn kill_all(&mut self) {
        for slot in &mut self.slots {
            if let Some(child) = slot.child.take() {
                child.signal(sys::SIGKILL);
            }
            if !matches!(slot.state, SlotState::Done) {
                slot.state = SlotState::Stopped;
            }
        }
        for l in self.lingering.drain(..) {
            let _ = sys::signal_group(l.pgid, sys::SIGKILL);
        }
    }

    /// As [`Self::stop_slots`], for a build that failed: a panic there (user code runs:
    /// a child's return value is decoded and dropped) kills what it had not stopped, as
    /// a panic in the supervising thread's stop does, rather than leave those children
    /// running with no supervisor and the panic escaping `build`.
    fn stop_or_kill(&mut self, which: &[usize]) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.stop_slots(which))) {
            crate::bootstrap::drop_payload(payload);
            self.kill_all();
        }
    }

    /// Stops the running children among `which` in reverse order, one after another
    /// (as Erlang's supervisors do): a child that the ones before it depend on is still
    /// there while they stop.
    fn stop_slots(&mut self, which: &[usize]) {
        for &i in which.iter().rev() {
            self.stop_slot(i);
            // Each one stopped shows as such at once, not once all are.
            self.publish();
        }
    }

    /// Stops the child of slot `i` if it runs: `SIGTERM` to its process group, then
    /// `SIGKILL` to the group if it is still alive after the child's grace. A child
    /// counts as stopped when its leader has ended and no other member of its group
    /// lives: a leader that dies on `SIGTERM` does not let a member that ignores it
    /// outlive the stop.
    fn stop_slot(&mut self, i: usize) {
        let start = Instant::now();
        let slot = &mut self.slots[i];
        if !matches!(slot.state, SlotState::Done) {
            slot.state = SlotState::Stopped;
        }
        let Some(child) = slot.child.as_mut() else {
            return;
        };
        let pgid = child.pid();
        let mut ended = None;
        if let Some(exit) = child.try_exit() {
            // It ended on its own before this stop (a sibling's crash while another
            // child's stop held the supervisor, or just before a shutdown): reported as
            // a child that ends on its own is, and its group is stopped as below.
            slot.last_exit = Some(exit.clone());
            if exit.normal {
                tracing::trace!(child = %slot.spec.name, pid = pgid, "child ended: {exit}");
            } else {
                tracing::warn!(child = %slot.spec.name, pid = pgid, "child ended: {exit}");
            }
            // After the trace: a panic there leaves its group to the end's kill.
            slot.child = None;
            // Started again with the others all the same (as OTP does): it may have
            // ended because of the crash that the restart is for (a stage of a pipeline
            // whose input closed), and a transient one that returned normally would
            // then be done, the restart short of it. Its status says it stopped before
            // the event goes (below; it showed as running, under the pid that had
            // ended).
            ended = Some(SupervisorEvent::Exited {
                child: slot.spec.name.clone(),
                pid: pgid,
                exit,
            });
            // Its id names its group while a member lives: looked at first, as for a
            // child that ends while the supervisor watches (`linger`).
            if sys::group_alive(pgid) {
                let _ = sys::signal_group(pgid, sys::SIGTERM);
            }
        } else {
            child.signal(sys::SIGTERM);
        }
        if let Some(event) = ended {
            self.publish();
            self.shared.events.send(event);
        }
        let slot = &mut self.slots[i];
        // A grace too long to add to the clock never ends.
        let kill_at = start.checked_add(slot.spec.grace);
        loop {
            let now = Instant::now();
            tend_groups(&mut self.lingering, now);
            let past_grace = kill_at.is_some_and(|at| now >= at);
            // A member that `SIGKILL` does not end (one the supervisor may not signal,
            // or stuck in the kernel) is left behind, said so, rather than hold the
            // stop of every other child for ever.
            if kill_at
                .and_then(|at| at.checked_add(KILL_WAIT))
                .is_some_and(|at| now >= at)
            {
                tracing::warn!(
                    child = %slot.spec.name,
                    pgid,
                    "the child's process group outlives SIGKILL; left behind"
                );
                // Its handle goes with it: the slot is free for a new start, and the
                // old process's end, whenever it comes, is not taken for the new one's.
                slot.child = None;
                return;
            }
            if let Some(child) = slot.child.as_mut() {
                if let Some(exit) = child.try_exit() {
                    slot.last_exit = Some(exit);
                    slot.child = None;
                } else if past_grace {
                    child.signal(sys::SIGKILL);
                }
            }
            if slot.child.is_none() {
                if !sys::group_alive(pgid) {
                    sys::reap_adopted(pgid);
                    return;
                }
                if past_grace {
                    let _ = sys::signal_group(pgid, sys::SIGKILL);
                }
            }
            // Wake when the child ends, or at the grace's end.
            let timeout = kill_at
                .map(|at| at.saturating_duration_since(now))
                .filter(|d| !d.is_zero())
                .unwrap_or(TICK)
                .min(GROUP_POLL);
            match slot.child.as_ref() {
                Some(child) if crate::wait(&[child.as_waitable()], Some(timeout)).is_ok() => {}
                // Only the group left (a group gives no readiness to wait on): look
                // again soon.
                _ => thread::sleep(timeout),
            }
        }
    }

    /// Child `pgid`'s leader (of slot `slot`) ended; if members of its group live on,
    /// they get `SIGTERM` now and `SIGKILL` after `grace`, and the slot starts again only
    /// once they are gone (a new run would meet the old one's processes: a port still
    /// held, a lock file still there).
    fn linger(&mut self, slot: usize, pgid: u32, grace: Duration) {
        if sys::group_alive(pgid) && matches!(sys::signal_group(pgid, sys::SIGTERM), Ok(true)) {
            self.lingering.push(Lingering {
                pgid,
                slot,
                kill_at: Instant::now().checked_add(grace),
                killed_at: None,
            });
            tracing::trace!(pgid, "child ended; its process group lives on: SIGTERM");
        } else {
            sys::reap_adopted(pgid);
        }
    }

    /// Forgets the lingering groups that are gone and kills those past their grace;
    /// with `finish`, waits until none is left.
    fn tend_lingering(&mut self, finish: bool) {
        loop {
            let now = Instant::now();
            tend_groups(&mut self.lingering, now);
            if !finish || self.lingering.is_empty() {
                return;
            }
            let next = self
                .lingering
                .iter()
                .filter_map(|g| g.kill_at)
                .map(|at| at.saturating_duration_since(now))
                .filter(|d| !d.is_zero())
                .min()
                .unwrap_or(GROUP_POLL);
            thread::sleep(next.min(GROUP_POLL));
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
        *unpoisoned::lock(&self.shared.status) = status;
    }
}

/// What the builder settles.
pub(super) struct Settings {
    pub(super) strategy: Strategy,
    pub(super) max_restarts: u32,
    pub(super) period: Duration,
    pub(super) backoff: RetryPolicy,
    pub(super) reset_after: Duration,
}

impl Supervising {
    /// Starts the supervising thread, then every child, in order. Returns the state the
    /// handle shares and the thread to join.
    pub(super) fn start(
        children: Vec<ChildSpec>,
        settings: Settings,
    ) -> Result<(Arc<Shared>, thread::JoinHandle<()>), SupervisorError> {
        let shared = Arc::new(Shared {
            status: Mutex::new(Vec::new()),
            outcome: Mutex::new(None),
            done: Condvar::new(),
            stop: AtomicBool::new(false),
            events: Broadcast::new(),
        });
        let mut sup = Supervising {
            slots: children
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
            strategy: settings.strategy,
            max_restarts: settings.max_restarts,
            period: settings.period,
            backoff: settings.backoff,
            reset_after: settings.reset_after,
            recent: Vec::new(),
            lingering: Vec::new(),
            shared: Arc::clone(&shared),
        };
        // The thread is started first, and handed the supervisor once every child has
        // started: a thread that cannot be started then leaves no child unsupervised.
        let (hand_over, handed) = std::sync::mpsc::sync_channel::<Supervising>(1);
        let thread = thread::Builder::new()
            .name("multiproc-supervisor".into())
            .spawn(move || {
                if let Ok(sup) = handed.recv() {
                    sup.run();
                }
            })
            .map_err(|e| SupervisorError::InvalidArgument(format!("supervisor thread: {e}")))?;
        for i in 0..sup.slots.len() {
            // User code runs here (the arguments' `Clone` and `Serialize`): a panic
            // fails the build as a failed start does, the children started before it
            // stopped, rather than leave them running with no supervisor.
            let started = catch_unwind(AssertUnwindSafe(|| sup.spawn(i))).unwrap_or_else(|p| {
                Err(SupervisorError::Panicked(
                    crate::bootstrap::caught_panic(p).to_string(),
                ))
            });
            if let Err(e) = started {
                // Slot `i` too: its child may have started before the panic.
                sup.stop_or_kill(&(0..=i).collect::<Vec<_>>());
                drop(hand_over);
                let _ = thread.join();
                return Err(e);
            }
        }
        sup.publish();
        if let Err(std::sync::mpsc::SendError(mut sup)) = hand_over.send(sup) {
            // Only a thread that ended without taking it gives the supervisor back.
            sup.stop_or_kill(&(0..sup.slots.len()).collect::<Vec<_>>());
            let _ = thread.join();
            return Err(SupervisorError::InvalidArgument(
                "the supervisor thread ended before it started".into(),
            ));
        }
        Ok((shared, thread))
    }
}

impl Shared {
    /// Every child's status, in start order.
    pub(super) fn status(&self) -> Vec<ChildStatus> {
        unpoisoned::lock(&self.status).clone()
    }

    /// A new subscriber to the events.
    pub(super) fn subscribe(&self) -> Receiver<SupervisorEvent> {
        self.events.subscribe()
    }

    /// Whether the supervisor still runs.
    pub(super) fn is_running(&self) -> bool {
        unpoisoned::lock(&self.outcome).is_none()
    }

    /// Asks the supervising thread to stop every child and end.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits until the supervisor has ended, or `deadline` (then `Timeout`).
    pub(super) fn wait(&self, deadline: Option<Instant>) -> Result<(), SupervisorError> {
        let mut outcome = unpoisoned::lock(&self.outcome);
        loop {
            if let Some(o) = &*outcome {
                return o.clone().into_result();
            }
            outcome = match unpoisoned::wait_until(&self.done, outcome, deadline) {
                Ok(outcome) => outcome,
                Err(_) => return Err(SupervisorError::Timeout),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group killed and not yet gone is looked at every `GROUP_POLL`, not at once.
    #[test]
    fn a_killed_group_is_polled_not_spun_on() {
        let now = Instant::now();
        let group = |kill_at| Lingering {
            pgid: 1,
            slot: 0,
            kill_at,
            killed_at: None,
        };
        let lingering = [
            group(now.checked_sub(Duration::from_secs(1))),
            group(Some(now + Duration::from_secs(3))),
            group(None),
        ];
        let due: Vec<_> = lingering_due(&lingering, now).collect();
        assert_eq!(due, [GROUP_POLL, Duration::from_secs(3)]);
    }
}
