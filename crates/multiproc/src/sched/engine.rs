//! The scheduler's engine: the state the [`Scheduler`](super::Scheduler) handle and its
//! thread share, and the firing pass (due times, misfires, coalescing, instance limits,
//! jitter and retries, runs polled as futures).

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::Receiver;
use indexmap::IndexMap;

use super::clock::{Clock, Notifier, never_comes};
use super::job::{Coalesce, EventKind, Job, JobEvent, MissReason, RunContext, Running, Target};
use super::schedule::{self, Late, Schedule};
#[cfg(feature = "sqlite")]
use super::store::JobStore;
use super::{JobInfo, ScheduleError};
use crate::broadcast::Broadcast;
use crate::pool::TaskError;
use crate::pool::{Pool, ThreadPool};
use crate::sync::unpoisoned;

/// The least misfire grace a job may have (see [`Job::misfire_grace`]).
const MIN_GRACE: Duration = Duration::from_millis(1);
/// At most this many due times of one job are looked at in one pass; more (a per-second
/// job after a long downtime) are handled in the passes that follow at once.
const MAX_DUE_PER_PASS: usize = 10_000;

/// Passes of one [`Shared::run_pending`] at most.
const MAX_PASSES: usize = 1_000;

/// How often a scheduler with a job store looks for the records of schedulers gone
/// from it.
#[cfg(feature = "sqlite")]
const ADOPT_EVERY: Duration = Duration::from_secs(5);

/// How long after its event a fire time's record is settled in the job store: the time
/// a subscriber on another thread has to take the event before a crash would no longer
/// have the next scheduler report the time again.
const SETTLE_AFTER: Duration = Duration::from_millis(100);

/// How long a scheduler's leader lease on a cluster lasts without renewal; it is
/// renewed at every pass, and a scheduler with cluster jobs passes at least every
/// third of it.
#[cfg(feature = "redis")]
const LEADER_LEASE: Duration = Duration::from_secs(3);

/// How long a follower keeps a cluster job's due times that no scheduler has submitted
/// (see [`Shared::fire_due`]): ten leases.
const FOLLOWER_KEEPS: Duration = Duration::from_secs(30);

/// What the scheduler handle and its thread share.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Runs whose task woke their waker: look at them next pass.
    woken: Mutex<Vec<u64>>,
    signal: Arc<Notifier>,
    clock: Clock,
    pub(super) pool: Option<Pool>,
    pub(super) threads: Option<ThreadPool>,
    events: Broadcast<JobEvent>,
    stop: AtomicBool,
    #[cfg(feature = "sqlite")]
    store: Option<Mutex<JobStore>>,
    #[cfg(feature = "redis")]
    cluster: Option<crate::cluster::Cluster>,
    /// This scheduler's name for the cluster's leader lease.
    #[cfg(feature = "redis")]
    id: String,
}

/// A random name for a scheduler.
#[cfg(feature = "redis")]
fn scheduler_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{hex}", std::process::id())
}

/// `now + delay`, or for a delay past what the calendar holds, its end (a time that
/// does not come).
fn later(now: DateTime<Utc>, delay: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The scheduler's state, locked by this thread ([`Shared::lock_state`]); the thread is
/// known to hold it until the guard goes.
struct StateGuard<'a> {
    guard: std::sync::MutexGuard<'a, State>,
    outer: *const Shared,
}

thread_local! {
    /// The scheduler whose state this thread holds locked, if any (null: none).
    static HOLDING: std::cell::Cell<*const Shared> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(self.outer));
    }
}

#[derive(Default)]
struct State {
    jobs: IndexMap<String, JobState>,
    runs: HashMap<u64, Run>,
    timers: Vec<Timer>,
    next_run: u64,
    /// The number the next job added gets: a job removed and added again under its
    /// name is another job, and the runs, retries and jitter waits of the one before
    /// are not the new one's.
    next_gen: u64,
    /// Fire times handled (their run ended, or they were reported), with when: settled
    /// in the job store [`SETTLE_AFTER`] later. Empty without a store.
    settle: Vec<(String, DateTime<Utc>, Instant)>,
    /// When the records of schedulers gone from the job store were last looked for.
    #[cfg(feature = "sqlite")]
    adopted_at: Option<Instant>,
}

impl JobState {
    /// Whether the job has nothing of its own left, and is kept only while another
    /// scheduler on the store holds one of its times (see `Shared::held_elsewhere`).
    fn kept_for_peers(&self) -> bool {
        self.held_elsewhere_at.is_some()
            && self.next.is_none()
            && self.running == 0
            && self.deferred.is_empty()
            && self.recovered.is_empty()
    }
}

impl State {
    /// Job `name`, if it is the one numbered `generation` (not one removed since).
    fn job(&mut self, name: &str, generation: u64) -> Option<&mut JobState> {
        self.jobs
            .get_mut(name)
            .filter(|js| js.generation == generation)
    }
}

struct JobState {
    job: Job,
    /// Which job of this name it is (see `State::next_gen`).
    generation: u64,
    next: Option<DateTime<Utc>>,
    running: usize,
    /// Due times another scheduler may fire (it held the cluster's leader lease): looked
    /// at again until this scheduler leads, so none is lost when the leader dies.
    deferred: Vec<DateTime<Utc>>,
    /// Times a scheduler on the same store claimed and never started before it was gone:
    /// claimed by this one now, and handled as due at the next pass.
    recovered: Vec<DateTime<Utc>>,
    /// The job store failed on this job's due times, or the cluster could not say who
    /// leads: they wait (in `next`, `deferred` or `recovered`) and are looked at again
    /// then, not before.
    store_retry_at: Option<DateTime<Utc>>,
    /// A pass found more due times than it takes (`MAX_DUE_PER_PASS`) and one of them
    /// started: the passes that take the rest coalesce them as well (`Coalesce::Earliest`
    /// runs one time of the whole backlog, not one a pass).
    ran_in_backlog: bool,
    /// When the store was last asked whether another scheduler on it holds a time of
    /// this job unsettled (see `Shared::held_elsewhere`), once the job had nothing
    /// left of its own.
    held_elsewhere_at: Option<Instant>,
}

/// Where a job stands when it is added (from the store, if there is one).
pub(super) struct Loaded {
    /// The schedule (an interval keeps its stored start).
    pub(super) schedule: Schedule,
    /// The last fire time handled.
    pub(super) last: Option<DateTime<Utc>>,
    /// When the job was first added (with no fire time handled since, a job that is not
    /// an interval is due from then: a downtime before its first fire is not lost).
    pub(super) since: DateTime<Utc>,
    /// What schedulers on the store that are gone left unfinished.
    pub(super) orphans: Orphans,
}

/// What a scheduler records in its store of a fire time it claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mark {
    /// The run is about to be handed to the executor.
    Started,
    /// The time is about to be reported missed, for this reason.
    Reported(MissReason),
    /// The run ended, or the report is out.
    Settled,
}

/// The fire times of a job that schedulers on the same store left unfinished when they
/// were gone (killed, or dropped), now this scheduler's.
#[derive(Debug, Default)]
pub(super) struct Orphans {
    /// Claimed, never started: due.
    pub(super) unstarted: Vec<DateTime<Utc>>,
    /// Started, outcome never recorded: reported interrupted, not run again.
    pub(super) interrupted: Vec<DateTime<Utc>>,
    /// Being reported missed: reported again, not run.
    pub(super) reported: Vec<Report>,
}

impl Orphans {
    /// Whether a gone scheduler left nothing to handle.
    pub(super) fn is_empty(&self) -> bool {
        self.unstarted.is_empty() && self.interrupted.is_empty() && self.reported.is_empty()
    }
}

/// Which of the times too late after a downtime a scheduler reports (the first, and how
/// many), given the last time handled before (see `JobStore::claim_through`).
pub(super) type LateRange<'a> = &'a dyn Fn(Option<DateTime<Utc>>) -> Option<(DateTime<Utc>, u64)>;

/// Fire times reported missed (a record of them in a job store).
#[derive(Debug)]
pub(super) struct Report {
    /// The first of them.
    pub(super) first: DateTime<Utc>,
    /// The last of them (the record's time).
    pub(super) last: DateTime<Utc>,
    /// How many.
    pub(super) count: u64,
    /// Why they were missed.
    pub(super) reason: MissReason,
}

struct Run {
    job: String,
    generation: u64,
    scheduled: DateTime<Utc>,
    attempt: u32,
    task: Running,
    waker: Waker,
}

/// A run to start later: after its jitter, or a retry after its delay.
struct Timer {
    at: DateTime<Utc>,
    job: String,
    generation: u64,
    scheduled: DateTime<Utc>,
    attempt: u32,
    /// For a first attempt held by a failing store once its jitter was over: when it was
    /// to start. Once the store answers, it starts only within the job's grace of then.
    held_since: Option<DateTime<Utc>>,
}

struct RunWaker {
    run: u64,
    shared: Weak<Shared>,
}

impl Wake for RunWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            unpoisoned::lock(&shared.woken).push(self.run);
            shared.signal.notify();
        }
    }
}

impl Shared {
    /// Locks the scheduler's state. User code runs under it (a retry policy's
    /// `retry_if`, a job's arguments' `Clone` and `Serialize`, a result's `Deserialize`
    /// and `Drop`, the `Drop` of what a removed job held, tracing subscribers); a call
    /// back into this scheduler from there (`remove`, `jobs`, `add`...) would wait for
    /// ever for the lock its own thread holds: it panics instead, saying so. Where the
    /// scheduler catches that code's panics, the run fails or the predicate counts as
    /// false; elsewhere the panic goes on (to the caller of `remove`, say).
    fn lock_state(&self) -> StateGuard<'_> {
        let me: *const Shared = self;
        if HOLDING.with(std::cell::Cell::get) == me {
            panic!(
                "a scheduler was called from code it runs while it holds its state (a \
                 retry_if predicate, a job's arguments' Clone or Serialize, a result's \
                 Deserialize or Drop): that call would wait for ever"
            );
        }
        let guard = unpoisoned::lock(&self.state);
        let outer = HOLDING.with(|h| h.replace(me));
        StateGuard { guard, outer }
    }

    pub(super) fn new(
        clock: Clock,
        pool: Option<Pool>,
        threads: Option<ThreadPool>,
        #[cfg(feature = "sqlite")] store: Option<JobStore>,
        #[cfg(feature = "redis")] cluster: Option<crate::cluster::Cluster>,
    ) -> Shared {
        let signal = Arc::new(Notifier::default());
        clock.subscribe(&signal);
        Shared {
            state: Mutex::new(State::default()),
            woken: Mutex::new(Vec::new()),
            signal,
            clock,
            pool,
            threads,
            events: Broadcast::new(),
            stop: AtomicBool::new(false),
            #[cfg(feature = "sqlite")]
            store: store.map(Mutex::new),
            #[cfg(feature = "redis")]
            cluster,
            #[cfg(feature = "redis")]
            id: scheduler_id(),
        }
    }

    /// Schedules `job` (see [`Scheduler::add`](super::Scheduler::add)).
    pub(super) fn add(&self, job: Job) -> Result<(), ScheduleError> {
        let shared = self;
        if shared.stop.load(Ordering::Acquire) {
            return Err(ScheduleError::ShutDown);
        }
        if job.name.is_empty() {
            return Err(ScheduleError::InvalidArgument("a job needs a name".into()));
        }
        if job.max_instances == 0 {
            return Err(ScheduleError::InvalidArgument(
                "max_instances must be at least 1".into(),
            ));
        }
        if job.misfire_grace.is_some_and(|g| g < MIN_GRACE) {
            // The scheduler wakes after a due time, never at it (some microseconds to
            // milliseconds after): nearly every run would be late.
            return Err(ScheduleError::InvalidArgument(format!(
                "misfire_grace must be at least {MIN_GRACE:?}: the scheduler wakes after a \
                 due time, and nearly every run would be missed"
            )));
        }
        let needs = match job.target {
            Target::Process(_) if shared.pool.is_none() => Some("Pool"),
            Target::Thread(_) if shared.threads.is_none() => Some("ThreadPool"),
            #[cfg(feature = "redis")]
            Target::Cluster(_) if shared.cluster.is_none() => Some("Cluster"),
            _ => None,
        };
        if let Some(needs) = needs {
            return Err(ScheduleError::NoExecutor {
                job: job.name,
                needs,
            });
        }
        let now = shared.clock.now();
        let mut st = shared.lock_state();
        // A job kept only for a time another scheduler holds (`held_elsewhere`) is done
        // here: added again, it starts afresh (and takes that time over as any job
        // added does, should its holder be gone).
        if st
            .jobs
            .get(&job.name)
            .is_some_and(|js| !js.kept_for_peers())
        {
            return Err(ScheduleError::Duplicate(job.name));
        }
        let key = job.schedule.to_string();
        let fresh = job.schedule.resolve(now)?;
        let Loaded {
            schedule,
            last: last_fired,
            since,
            orphans,
        } = shared.load(&job.name, &key, fresh, now)?;
        // Without a store, where the job stands is now. A store checked it already,
        // before recording anything, and let a spent job through only with records a
        // gone scheduler left, which are handled below.
        if orphans.is_empty() {
            schedule.refuse_if_spent(last_fired.unwrap_or(since))?;
        }
        let next = match (last_fired, schedule.once_at()) {
            (Some(last), _) => schedule.next_after(last),
            (None, Some(at)) => Some(at),
            (None, None) => match &schedule.0 {
                schedule::Kind::Every { start, .. } => *start,
                _ => schedule.next_after(since),
            },
        };
        tracing::debug!(job = %job.name, schedule = %schedule, "job added");
        let name = job.name.clone();
        let recovered = shared.report_orphans(&mut st, &name, orphans, now);
        let generation = st.next_gen;
        st.next_gen += 1;
        st.jobs.insert(
            name,
            JobState {
                job: Job { schedule, ..job },
                generation,
                next,
                running: 0,
                deferred: Vec::new(),
                recovered,
                store_retry_at: None,
                ran_in_backlog: false,
                held_elsewhere_at: None,
            },
        );
        drop(st);
        shared.signal.notify();
        Ok(())
    }

    /// Unschedules a job, forgetting it in the store too (a job added later under its
    /// name is another job); whether it was there.
    pub(super) fn remove(&self, name: &str) -> bool {
        // The state stays locked while the store forgets the job (as `add` holds it
        // while the store loads one): an `add` of the same name in between would find
        // the old row, and then lose its own records to the `forget`.
        let mut st = self.lock_state();
        let removed = st.jobs.shift_remove(name);
        // Its runs waiting for their jitter or retry do not start: each is reported. So
        // are the times it claimed in its store and has not started (recovered from a
        // scheduler that stopped, or waiting for the store), whose records the store
        // forgets with the job. (Times kept while another scheduler leads the cluster
        // are that leader's, which runs or reports them.)
        let (waiting, mut recovered): (Vec<Timer>, Vec<DateTime<Utc>>) = match &removed {
            Some(js) => {
                let (waiting, rest) = mem::take(&mut st.timers)
                    .into_iter()
                    .partition(|t| t.job == name && t.generation == js.generation);
                st.timers = rest;
                (waiting, js.recovered.clone())
            }
            None => (Vec::new(), Vec::new()),
        };
        recovered.sort_unstable();
        recovered.dedup();
        let removed = removed.is_some();
        #[cfg(feature = "sqlite")]
        if removed
            && let Some(store) = &self.store
            && let Err(e) = unpoisoned::lock(store).forget(name)
        {
            tracing::error!(
                job = name,
                "job store failed; the removed job stays in it: {e}"
            );
        }
        drop(st);
        let now = self.clock.now();
        for t in waiting {
            let kind = EventKind::Missed {
                count: 1,
                last: t.scheduled,
                reason: MissReason::Removed,
            };
            self.emit(name, t.scheduled, now, kind);
        }
        self.missed(name, &recovered, MissReason::Removed, now);
        self.signal.notify();
        removed
    }

    /// The scheduled jobs, in the order they were added.
    pub(super) fn jobs(&self) -> Vec<JobInfo> {
        let st = self.lock_state();
        st.jobs
            .iter()
            .map(|(name, js)| JobInfo {
                name: name.clone(),
                schedule: js.job.schedule.to_string(),
                next_fire: js.next,
                running: js.running,
            })
            .collect()
    }

    /// When a job fires next.
    pub(super) fn next_fire(&self, name: &str) -> Option<DateTime<Utc>> {
        self.lock_state().jobs.get(name).and_then(|j| j.next)
    }

    /// A new subscriber to the job events.
    pub(super) fn subscribe(&self) -> Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Stops firing: the thread (if any) ends its loop, and `add` refuses.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.signal.notify();
    }

    /// Waits for the runs in flight to finish, handling their outcomes. Called from a
    /// run on the scheduler's own thread pool, it does not wait for that run, which
    /// cannot end while its thread waits here (it waited for ever), and the runs queued
    /// on the pool are cancelled (with every other thread busy, they could not start
    /// either); the runs on its other threads are waited for.
    pub(super) fn finish_runs(self: &Arc<Self>) {
        let own = self
            .threads
            .as_ref()
            .filter(|t| t.on_own_thread())
            .and_then(|pool| {
                pool.shutdown(false, true);
                super::job::current_run()
            });
        let others_done = |st: &State| {
            st.runs.values().all(|r| {
                own.as_ref().is_some_and(|o| {
                    r.job == o.job
                        && r.generation == o.generation
                        && r.scheduled == o.scheduled
                        && r.attempt == o.attempt
                })
            })
        };
        loop {
            self.process(false);
            if others_done(&self.lock_state()) {
                break;
            }
            self.signal.wait(Duration::from_millis(100));
        }
    }

    /// Handles everything due by the clock now: a backlog longer than a pass can take
    /// (`MAX_DUE_PER_PASS` times of a job to run, `schedule::MAX_WALK` of a cron job's
    /// times too late) takes several, one after another (at most `MAX_PASSES`: 10
    /// million times of a job to run, 100 million too late; a later call goes on).
    /// Returns how many runs started.
    pub(super) fn run_pending(self: &Arc<Self>) -> usize {
        let mut started = 0;
        for _ in 0..MAX_PASSES {
            let before = self.clock.now();
            let (n, wake_at) = self.process(true);
            started += n;
            // Due by the time the pass began (a backlog), and still by the clock after
            // it: a pass that took long (a server that does not answer) does not make
            // what it set for later due, nor does a clock stepped back.
            if wake_at.is_none_or(|at| at > before.min(self.clock.now()) || never_comes(at)) {
                break;
            }
        }
        started
    }

    pub(super) fn run(self: Arc<Self>) {
        while !self.stop.load(Ordering::Acquire) {
            let (_, wake_at) = self.process(true);
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            self.clock.sleep(&self.signal, wake_at);
        }
    }

    fn emit(&self, job: &str, scheduled: DateTime<Utc>, at: DateTime<Utc>, kind: EventKind) {
        self.events.send(traced(job, scheduled, at, kind));
    }

    /// One pass: finished runs, due timers, due fire times (when `fire`). Returns how
    /// many runs started and when the next thing is due.
    pub(super) fn process(self: &Arc<Self>, fire: bool) -> (usize, Option<DateTime<Utc>>) {
        // The leader lease is renewed at every pass (every second at least while a
        // cluster job is held), before the runs whose jitter or retry delay is over are
        // submitted under it, and outside the state lock (the call may wait for Redis,
        // its response timeout at most: the time is read after it).
        let mut lead = if fire { self.pass_lead() } else { None };
        let now = self.clock.now();
        let mut st = self.lock_state();
        self.flush_settled(&mut st, false);
        if fire {
            self.adopt_orphans(&mut st, now);
        }
        let woken = mem::take(&mut *unpoisoned::lock(&self.woken));
        for id in woken {
            self.poll_run(&mut st, id, now);
        }
        let mut started = 0;
        if fire {
            let (due, waiting): (Vec<Timer>, Vec<Timer>) = mem::take(&mut st.timers)
                .into_iter()
                .partition(|t| t.at <= now);
            st.timers = waiting;
            // A job removed while its run waited (another of its name may have been
            // added since): the time is done with.
            let (due, orphaned): (Vec<Timer>, Vec<Timer>) = due
                .into_iter()
                .partition(|t| st.job(&t.job, t.generation).is_some());
            for t in orphaned {
                self.settle_later(&mut st, &t.job, &[t.scheduled]);
            }
            // A first attempt (it waited for its jitter) is recorded as started before
            // it is handed over; a retry's run was already. One later than the job's
            // grace past its time (the jittered one), because a failing store held it
            // or because this pass came late (a machine suspended, a clock stepped
            // forward), is reported too late instead, as a time claimed late is. (Past
            // a late pass it started however late it was, holding the instance that
            // the time due then needed.)
            let too_late = |st: &State, t: &Timer| {
                let since = t.held_since.unwrap_or(t.at);
                let Some(js) = st
                    .jobs
                    .get(&t.job)
                    .filter(|js| js.generation == t.generation)
                else {
                    return false;
                };
                let grace = js
                    .job
                    .misfire_grace
                    .or_else(|| default_grace(&js.job, t.scheduled));
                let late = (now - since).to_std().unwrap_or(Duration::ZERO);
                grace.is_some_and(|g| late > g)
            };
            let firsts: Vec<(String, DateTime<Utc>, Mark)> = due
                .iter()
                .filter(|t| t.attempt == 1)
                .map(|t| {
                    let mark = if too_late(&st, t) {
                        Mark::Reported(MissReason::TooLate)
                    } else {
                        Mark::Started
                    };
                    (t.job.clone(), t.scheduled, mark)
                })
                .collect();
            let marked = self.mark(&firsts, "due runs wait for it");
            for t in due {
                if t.attempt == 1 && !marked {
                    // The store failed: the run waits for it (holding its instance).
                    st.timers.push(Timer {
                        at: later(now, SETTLE_AFTER),
                        held_since: t.held_since.or(Some(t.at)),
                        ..t
                    });
                    continue;
                }
                if t.attempt == 1 && too_late(&st, &t) {
                    if let Some(js) = st.job(&t.job, t.generation) {
                        js.running = js.running.saturating_sub(1);
                    }
                    self.missed(&t.job, &[t.scheduled], MissReason::TooLate, now);
                    self.settle_later(&mut st, &t.job, &[t.scheduled]);
                    continue;
                }
                started += self.launch(&mut st, &t.job, t.generation, t.scheduled, t.attempt, now);
            }
            let names: Vec<String> = st.jobs.keys().cloned().collect();
            for name in names {
                started += self.fire_due(&mut st, &name, now, &mut lead);
            }
            // A `once` job that has fired and finished is done (unless another
            // scheduler on the store holds one of its times: see `held_elsewhere`).
            st.jobs.retain(|name, js| {
                js.next.is_some()
                    || js.running > 0
                    || !js.deferred.is_empty()
                    || !js.recovered.is_empty()
                    || self.held_elsewhere(name, js)
            });
        }
        // A job whose store failed is looked at again when it said, not before (and
        // then, with due times kept waiting for it, not later either: a claim that
        // failed left its next time in the future).
        let next_job = st
            .jobs
            .values()
            .filter_map(|j| match (j.next, j.store_retry_at) {
                (Some(_), Some(retry)) if !j.deferred.is_empty() => Some(retry),
                (Some(next), Some(retry)) => Some(next.max(retry)),
                (next, None) => next,
                (None, retry) => retry,
            })
            .min();
        let next_timer = st.timers.iter().map(|t| t.at).min();
        // Records waiting to be settled, and times recovered from a store, are looked
        // at again soon.
        let soon = (!st.settle.is_empty() || st.jobs.values().any(|j| !j.recovered.is_empty()))
            .then(|| later(now, SETTLE_AFTER));
        let wake_at = [next_job, next_timer, soon].into_iter().flatten().min();
        // The records of schedulers gone from the store are looked for again soon.
        #[cfg(feature = "sqlite")]
        let wake_at = if self.store.is_some() && !st.jobs.is_empty() {
            let soon = later(now, ADOPT_EVERY);
            Some(wake_at.map_or(soon, |w| w.min(soon)))
        } else {
            wake_at
        };
        // Deferred times, and the leader lease, are looked at again soon.
        #[cfg(feature = "redis")]
        let wake_at = if self.cluster.is_some() && !st.jobs.is_empty() {
            let soon = later(now, LEADER_LEASE / 3);
            Some(wake_at.map_or(soon, |w| w.min(soon)))
        } else {
            wake_at
        };
        (started, wake_at)
    }

    /// Handles the due fire times of job `name`, with what this pass found of the
    /// cluster's leader lease (`None`: not asked yet; asked here then). Returns how many
    /// runs started.
    fn fire_due(
        self: &Arc<Self>,
        st: &mut State,
        name: &str,
        now: DateTime<Utc>,
        pass_lead: &mut Option<Option<bool>>,
    ) -> usize {
        let Some(js) = st.jobs.get_mut(name) else {
            return 0;
        };
        if js.store_retry_at.is_some_and(|at| now < at) {
            return 0;
        }
        js.store_retry_at = None;
        let generation = js.generation;
        let deferred_before = js.deferred.clone();
        let first = js.next.filter(|&t| t <= now);
        if first.is_none() && js.deferred.is_empty() && js.recovered.is_empty() {
            return 0;
        }
        // One grace for every due time, where it does not depend on the time: then the
        // times too late are only counted (arithmetically for an interval), however
        // long the downtime was.
        let fixed_grace = match (&js.job.misfire_grace, &js.job.schedule.0) {
            (Some(g), _) => Some(Some(*g)),
            (None, schedule::Kind::Every { period, .. }) => Some(Some(*period)),
            (None, schedule::Kind::Once(_)) => Some(None),
            (None, schedule::Kind::Cron { .. }) => None,
        };
        // A cron job's default grace (one period) is the time to its next fire time:
        // past it, a time is counted with those too late, as with a fixed grace (one
        // event, and no record each, for a downtime of thousands of times).
        let late = match fixed_grace {
            Some(grace) => grace
                .and_then(|g| chrono::Duration::from_std(g).ok())
                .and_then(|g| now.checked_sub_signed(g))
                .map_or(Late::Never, Late::Before),
            None => Late::OnceNextDue,
        };
        let dues = match first {
            Some(first) => js.job.schedule.dues(first, now, late, MAX_DUE_PER_PASS),
            None => schedule::Dues::none(js.next),
        };
        js.next = dues.next;
        // The cap stopped this pass short of `now`: more due times follow at once.
        let backlog = js.next.is_some_and(|t| t <= now);
        let ran_before = js.ran_in_backlog;
        js.ran_in_backlog = backlog && ran_before;
        // Times kept from passes when another scheduler led the cluster come first.
        let mut due = mem::take(&mut js.deferred);
        due.extend(dues.runnable);
        // A cluster job is fired by the scheduler that leads the cluster; a job that
        // runs in this program's own pools is this scheduler's, whatever it leads.
        #[cfg(feature = "redis")]
        let led = matches!(js.job.target, Target::Cluster(_));
        #[cfg(not(feature = "redis"))]
        let led = false;
        let lead = if led {
            *pass_lead.get_or_insert_with(|| self.leads())
        } else {
            Some(true)
        };
        if lead.is_none() {
            // Nobody can be known to lead (Redis unreachable): for this job the pass did
            // not come, and it looks again a third of a lease later from its first due
            // time. The times that turn too late meanwhile are reported then, by whoever
            // leads (the job's next time moved past them here, and no scheduler ever
            // reported them).
            js.next = first.or(js.next);
            js.deferred = deferred_before;
            js.ran_in_backlog = ran_before;
            #[cfg(feature = "redis")]
            {
                js.store_retry_at = Some(later(now, LEADER_LEASE / 3));
            }
            return 0;
        }
        if lead != Some(true) {
            // Not ours to fire now: kept until the leader has submitted them, in case it
            // dies first. A live leader handles each due time (submits it, or reports
            // it missed) in the pass that renews its lease, within a lease of the time
            // at most; so a time older than a few leases, while another scheduler
            // holds the lease, was the leader's, submitted or reported. Those are let
            // go: times a leader reported missed are never submitted, and a follower
            // that kept them would keep more with each pass. A leader that died leaves
            // younger ones, which this scheduler runs or reports once it leads.
            due.retain(|&t| (now - t).to_std().unwrap_or(Duration::ZERO) <= FOLLOWER_KEEPS);
            // A job due more often than a pass can look at keeps the latest times only.
            let over = due.len().saturating_sub(MAX_DUE_PER_PASS);
            due.drain(..over);
            js.deferred = self.unfired(name, due);
            return 0;
        }
        // Only a cluster job's times can have been submitted by another scheduler: a
        // local job's runs are this scheduler's alone, and ask Redis nothing (a paused
        // server held each of its fires for a response timeout, under the state lock).
        let due = if led { self.unfired(name, due) } else { due };
        // Times kept from passes this scheduler followed in, at or before this pass's
        // last time too late, are too late as well, and reported with those: left among
        // the times to claim, the store's mark past them (`claim_through`) made `claim`
        // refuse them, neither run nor reported.
        let (kept_late, due): (Vec<_>, Vec<_>) = match (first, dues.last_late) {
            (Some(_), Some(last_late)) => due.into_iter().partition(|&t| t <= last_late),
            _ => (Vec::new(), due),
        };
        let mut too_late = TooLate::default();
        // Times too late handled without a record each (a downtime): one record of
        // those this scheduler reports, so that a successor reports them if it dies
        // before its report is out.
        let mut range_at = None;
        if let (Some(first), Some(last_late)) = (first, dues.last_late) {
            let schedule = &js.job.schedule;
            let range = |handled: Option<DateTime<Utc>>| {
                let mut range = TooLate::default();
                match handled {
                    // Another scheduler on the same store handled some of them already.
                    Some(handled) if handled >= last_late => {}
                    Some(handled) if handled >= first => {
                        range.add_counted(schedule, handled, last_late, dues.late);
                    }
                    _ => range.add(first, last_late, dues.late),
                }
                for &t in &kept_late {
                    if handled.is_none_or(|h| t > h) {
                        range.add(t, t, 1);
                    }
                }
                range.first.map(|f| (f, range.count))
            };
            match self.claim_through(name, last_late, &range) {
                Ok(Some((first, count))) => {
                    too_late.add(first, last_late, count);
                    range_at = Some(last_late);
                }
                Ok(None) => {}
                Err(e) => {
                    // Everything stays as it was, to be looked at again shortly: the
                    // times are run or reported once the store answers.
                    tracing::error!(job = name, "job store failed; due runs wait for it: {e}");
                    js.next = Some(first);
                    js.deferred = deferred_before;
                    js.ran_in_backlog = ran_before;
                    js.store_retry_at = Some(later(now, SETTLE_AFTER));
                    return 0;
                }
            }
        }
        if due.is_empty() && js.recovered.is_empty() {
            self.missed_range(name, &too_late, MissReason::TooLate, now);
            self.settle_later(st, name, &range_at.into_iter().collect::<Vec<_>>());
            return 0;
        }
        let mut claimed = match self.claim(name, &due) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(job = name, "job store failed; due runs wait for it: {e}");
                // Looked at again from the first of them, as if this pass had not come:
                // kept aside while the job's next time moved on, they were dropped by a
                // later pass that reported the times between as too late (the store
                // then marked past them), neither run nor reported.
                js.next = first.or(js.next);
                js.deferred = deferred_before;
                js.ran_in_backlog = ran_before;
                js.store_retry_at = Some(later(now, SETTLE_AFTER));
                self.missed_range(name, &too_late, MissReason::TooLate, now);
                self.settle_later(st, name, &range_at.into_iter().collect::<Vec<_>>());
                return 0;
            }
        };
        // Times an earlier scheduler claimed and never started are due like the others.
        claimed.append(&mut js.recovered);
        claimed.sort_unstable();
        claimed.dedup();
        let mut runnable = Vec::new();
        let mut claimed_late = Vec::new();
        for t in claimed {
            let grace = match fixed_grace {
                Some(g) => g,
                None => default_grace(&js.job, t),
            };
            let late = (now - t).to_std().unwrap_or(Duration::ZERO);
            if grace.is_some_and(|g| late > g) {
                too_late.add(t, t, 1);
                claimed_late.push(t);
            } else {
                runnable.push(t);
            }
        }
        // A backlog longer than a pass is coalesced as one: the earliest time of its
        // first pass runs, or the latest of its last, and no other.
        let (run, coalesced) = match js.job.coalesce {
            _ if runnable.is_empty() => (Vec::new(), Vec::new()),
            Coalesce::All => (runnable, Vec::new()),
            Coalesce::Earliest if ran_before => (Vec::new(), runnable),
            Coalesce::Earliest => {
                let rest = runnable.split_off(1);
                (runnable, rest)
            }
            Coalesce::Latest if backlog => (Vec::new(), runnable),
            Coalesce::Latest => {
                let last = runnable.pop().into_iter().collect();
                (last, runnable)
            }
        };
        js.ran_in_backlog = backlog && (ran_before || !run.is_empty());
        let (max, jitter) = (js.job.max_instances, js.job.jitter);
        let mut over_max = Vec::new();
        let mut to_start = Vec::new();
        for t in run {
            if js.running >= max {
                over_max.push(t);
            } else {
                js.running += 1;
                to_start.push(t);
            }
        }
        // Recorded before they are reported, or handed over (a first attempt that waits
        // for its jitter is recorded when it is handed over): a scheduler that dies
        // after this never has them run again, and has the next one report them.
        let starting: &[DateTime<Utc>] = if jitter.is_zero() { &to_start } else { &[] };
        let mut marks = Vec::new();
        for (times, mark) in [
            (&claimed_late[..], Mark::Reported(MissReason::TooLate)),
            (&coalesced[..], Mark::Reported(MissReason::Coalesced)),
            (&over_max[..], Mark::Reported(MissReason::MaxInstances)),
            (starting, Mark::Started),
        ] {
            marks.extend(times.iter().map(|&t| (name.to_string(), t, mark)));
        }
        let marked = self.mark(&marks, "due runs wait for it");
        self.missed_range(name, &too_late, MissReason::TooLate, now);
        self.missed(name, &coalesced, MissReason::Coalesced, now);
        self.missed(name, &over_max, MissReason::MaxInstances, now);
        let reported: Vec<DateTime<Utc>> = claimed_late
            .into_iter()
            .chain(range_at)
            .chain(coalesced)
            .chain(over_max)
            .collect();
        self.settle_later(st, name, &reported);
        if jitter.is_zero() && !marked {
            // Claimed, not started: they wait for the store, as times recovered do.
            if let Some(js) = st.jobs.get_mut(name) {
                js.running = js.running.saturating_sub(to_start.len());
                js.recovered.extend(to_start);
                js.store_retry_at = Some(later(now, SETTLE_AFTER));
                // Nothing of this backlog ran: its earliest time, now recovered, is
                // still the one to run (`Coalesce::Earliest`), not coalesced away.
                js.ran_in_backlog = ran_before;
            }
            return 0;
        }
        let mut started = 0;
        for t in to_start {
            if jitter.is_zero() {
                started += self.launch(st, name, generation, t, 1, now);
            } else {
                let delay = jitter.mul_f64(fastrand::f64());
                st.timers.push(Timer {
                    at: later(now, delay),
                    job: name.to_string(),
                    generation,
                    scheduled: t,
                    attempt: 1,
                    held_since: None,
                });
            }
        }
        started
    }

    fn missed_range(&self, job: &str, late: &TooLate, reason: MissReason, now: DateTime<Utc>) {
        if let (Some(first), Some(last)) = (late.first, late.last) {
            let kind = EventKind::Missed {
                count: late.count,
                last,
                reason,
            };
            self.emit(job, first, now, kind);
        }
    }

    fn missed(&self, job: &str, times: &[DateTime<Utc>], reason: MissReason, now: DateTime<Utc>) {
        if let (Some(first), Some(last)) = (times.first(), times.last()) {
            let kind = EventKind::Missed {
                count: times.len() as u64,
                last: *last,
                reason,
            };
            self.emit(job, *first, now, kind);
        }
    }

    /// Starts attempt `attempt` of the run of `name` scheduled for `scheduled`, whose
    /// instance slot is already counted. Returns 1 if it started.
    fn launch(
        self: &Arc<Self>,
        st: &mut State,
        name: &str,
        generation: u64,
        scheduled: DateTime<Utc>,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> usize {
        let Some(js) = st.job(name, generation) else {
            // Removed while its run waited for its jitter or retry.
            return 0;
        };
        let run = RunContext::new(name, generation, scheduled, attempt);
        // The user's code runs here (the arguments' `Clone` and `Serialize`): a panic
        // fails this run, as one in the run itself does, rather than ending the
        // scheduler's thread (no job would fire again) with the run's instance held.
        let launched = crate::bootstrap::catching(|| match &js.job.target {
            Target::Process(start) => self
                .pool
                .as_ref()
                .ok_or(TaskError::PoolClosed)
                .and_then(|p| start(p, &run)),
            Target::Thread(start) => self
                .threads
                .as_ref()
                .ok_or(TaskError::PoolClosed)
                .and_then(|p| start(p, &run)),
            #[cfg(feature = "redis")]
            Target::Cluster(start) => {
                let run = super::job::ClusterRun {
                    job: name,
                    scheduled,
                    attempt,
                    leader: &self.id,
                };
                self.cluster
                    .as_ref()
                    .ok_or(TaskError::PoolClosed)
                    .and_then(|c| start(c, &run))
            }
        });
        let task = launched.unwrap_or_else(|caught| Err(TaskError::Panicked(caught)));
        self.emit(name, scheduled, now, EventKind::Started { attempt });
        let id = st.next_run;
        st.next_run += 1;
        match task {
            Ok(task) => {
                let waker = Waker::from(Arc::new(RunWaker {
                    run: id,
                    shared: Arc::downgrade(self),
                }));
                st.runs.insert(
                    id,
                    Run {
                        job: name.to_string(),
                        generation,
                        scheduled,
                        attempt,
                        task,
                        waker,
                    },
                );
                self.poll_run(st, id, now);
            }
            Err(e) => self.finished(st, name, generation, scheduled, attempt, Err(e), now),
        }
        1
    }

    fn poll_run(&self, st: &mut State, id: u64, now: DateTime<Utc>) {
        let Some(run) = st.runs.get_mut(&id) else {
            return;
        };
        let waker = run.waker.clone();
        let mut cx = Context::from_waker(&waker);
        // User code runs in the poll (the result's `Deserialize`, and its `Drop`): a
        // panic there fails the run, as one in the job does, rather than end this
        // thread with the run never finished (a `shutdown(true)` waited for it for
        // ever). The task is not polled again.
        let polled = crate::bootstrap::catching(|| run.task.as_mut().poll(&mut cx))
            .unwrap_or_else(|caught| Poll::Ready(Err(TaskError::Panicked(caught))));
        if let Poll::Ready(outcome) = polled
            && let Some(run) = st.runs.remove(&id)
        {
            self.finished(
                st,
                &run.job,
                run.generation,
                run.scheduled,
                run.attempt,
                outcome,
                now,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finished(
        &self,
        st: &mut State,
        name: &str,
        generation: u64,
        scheduled: DateTime<Utc>,
        attempt: u32,
        outcome: Result<(), TaskError>,
        now: DateTime<Utc>,
    ) {
        // A run of a job removed since (another of its name may have been added) is
        // not retried, and holds none of the new job's instances.
        let js = st.job(name, generation);
        match outcome {
            Ok(()) => {
                self.emit(name, scheduled, now, EventKind::Succeeded { attempt });
                if let Some(js) = js {
                    js.running = js.running.saturating_sub(1);
                }
                self.settle_later(st, name, &[scheduled]);
            }
            Err(error) => {
                let retry = js.as_ref().and_then(|js| {
                    let policy = &js.job.retry;
                    policy
                        .should_retry(attempt, &error)
                        .then(|| policy.delay(attempt))
                });
                let kind = EventKind::Failed {
                    attempt,
                    error: Arc::new(error),
                    retry_in: retry,
                };
                self.emit(name, scheduled, now, kind);
                match (retry, js) {
                    (Some(delay), Some(_)) => st.timers.push(Timer {
                        at: later(now, delay),
                        job: name.to_string(),
                        generation,
                        scheduled,
                        attempt: attempt + 1,
                        held_since: None,
                    }),
                    (_, js) => {
                        if let Some(js) = js {
                            js.running = js.running.saturating_sub(1);
                        }
                        self.settle_later(st, name, &[scheduled]);
                    }
                }
            }
        }
    }

    /// The job's fire times handled by an earlier run of the program, from the store.
    #[cfg_attr(not(feature = "sqlite"), allow(clippy::unused_self))]
    fn load(
        &self,
        name: &str,
        key: &str,
        fresh: Schedule,
        now: DateTime<Utc>,
    ) -> Result<Loaded, ScheduleError> {
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store {
            // A store keeps times as nanoseconds since 1970 in 64 bits: a first time it
            // cannot write would fail at each pass, its run never made nor reported.
            let first = fresh.once_at().or_else(|| fresh.next_after(now));
            if let Some(t) = first.filter(|t| t.timestamp_nanos_opt().is_none()) {
                return Err(ScheduleError::InvalidArgument(format!(
                    "job {name:?}: its first time, {t}, is outside the years 1677-2262 \
                     that a job store keeps"
                )));
            }
            return unpoisoned::lock(store).load(name, key, fresh, now);
        }
        let _ = (name, key);
        Ok(Loaded {
            schedule: fresh,
            last: None,
            since: now,
            orphans: Orphans::default(),
        })
    }

    /// Records `marks` (job, time, how far it got) in the store, if there is one, in
    /// one transaction. False if the store failed (said in a `tracing` error, with
    /// `unless`, what does not happen then): runs about to start must not start; they
    /// stay claimed, and wait for the store (or a scheduler that comes after).
    #[cfg_attr(not(feature = "sqlite"), allow(clippy::unused_self))]
    fn mark(&self, marks: &[(String, DateTime<Utc>, Mark)], unless: &str) -> bool {
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store
            && !marks.is_empty()
            && let Err(e) = unpoisoned::lock(store).mark(marks)
        {
            tracing::error!("job store failed; {unless}: {e}");
            return false;
        }
        let _ = (marks, unless);
        true
    }

    /// Queues `times` of job `name` to be settled in the store (their run ended, or
    /// they were reported): after [`SETTLE_AFTER`], so that subscribers have taken the
    /// event first.
    #[cfg_attr(not(feature = "sqlite"), allow(clippy::unused_self))]
    fn settle_later(&self, st: &mut State, name: &str, times: &[DateTime<Utc>]) {
        #[cfg(feature = "sqlite")]
        if self.store.is_some() {
            let at = Instant::now();
            st.settle
                .extend(times.iter().map(|&t| (name.to_string(), t, at)));
        }
        let _ = (st, name, times);
    }

    /// Settles in the store the records queued at least [`SETTLE_AFTER`] ago (`all`:
    /// every one). Those the store fails to take wait for the next pass.
    #[cfg_attr(not(feature = "sqlite"), allow(clippy::unused_self))]
    fn flush_settled(&self, st: &mut State, all: bool) {
        if st.settle.is_empty() {
            return;
        }
        // One instant for choosing and for forgetting: a record that ripens while the
        // store writes is settled at the next pass, not forgotten.
        let now = Instant::now();
        let ripe = |at: &Instant| all || now.saturating_duration_since(*at) >= SETTLE_AFTER;
        let marks: Vec<_> = st
            .settle
            .iter()
            .filter(|(_, _, at)| ripe(at))
            .map(|(job, t, _)| (job.clone(), *t, Mark::Settled))
            .collect();
        if self.mark(&marks, "records not settled yet") {
            st.settle.retain(|(_, _, at)| !ripe(at));
        }
    }

    /// Reports what other schedulers on the store left of job `name` when they were
    /// gone (runs interrupted, reports not settled); returns the times they claimed
    /// and never started, due now.
    fn report_orphans(
        &self,
        st: &mut State,
        name: &str,
        orphans: Orphans,
        now: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        for &t in &orphans.interrupted {
            self.emit(name, t, now, EventKind::Interrupted);
        }
        self.settle_later(st, name, &orphans.interrupted);
        for reason in [
            MissReason::TooLate,
            MissReason::Coalesced,
            MissReason::MaxInstances,
        ] {
            let mut range = TooLate::default();
            let mut times = Vec::new();
            for r in orphans.reported.iter().filter(|r| r.reason == reason) {
                range.add(r.first, r.last, r.count);
                times.push(r.last);
            }
            self.missed_range(name, &range, reason, now);
            self.settle_later(st, name, &times);
        }
        orphans.unstarted
    }

    /// Whether job `name`, which has nothing left of its own to run (a `once` job, or a
    /// cron expression's last time), is to be kept because another scheduler on the
    /// store holds one of its times unsettled: the time whose claim this one was
    /// refused, say, claimed by a scheduler that may still die before it runs it. Kept,
    /// the job's records are taken over when that one is gone (`adopt_orphans`), as
    /// for a job that fires again; dropped, the time was neither run nor reported, by
    /// anyone. Asked of the store at most every [`ADOPT_EVERY`] (a store that fails
    /// keeps the job, to be asked again).
    #[cfg_attr(not(feature = "sqlite"), allow(clippy::unused_self))]
    fn held_elsewhere(&self, name: &str, js: &mut JobState) -> bool {
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store {
            if js
                .held_elsewhere_at
                .is_some_and(|at| at.elapsed() < ADOPT_EVERY)
            {
                return true;
            }
            js.held_elsewhere_at = Some(Instant::now());
            return match unpoisoned::lock(store).held_elsewhere(name) {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(
                        job = name,
                        "job store failed while looking for runs of other schedulers: {e}"
                    );
                    true
                }
            };
        }
        let _ = (name, js);
        false
    }

    /// Every [`ADOPT_EVERY`], takes over the records that schedulers gone from the job
    /// store left (killed, or dropped with runs in flight), as adding a job does: a
    /// scheduler that shares its store with one that died handles what that one left
    /// without waiting for a job to be added again.
    #[cfg_attr(not(feature = "sqlite"), allow(clippy::unused_self))]
    fn adopt_orphans(&self, st: &mut State, now: DateTime<Utc>) {
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store {
            let due = st.adopted_at.is_none_or(|at| at.elapsed() >= ADOPT_EVERY);
            if !due || st.jobs.is_empty() {
                return;
            }
            st.adopted_at = Some(Instant::now());
            let names: Vec<String> = st.jobs.keys().cloned().collect();
            let adopted = match unpoisoned::lock(store).adopt(&names) {
                Ok(adopted) => adopted,
                Err(e) => {
                    tracing::warn!("job store failed while looking for orphaned runs: {e}");
                    return;
                }
            };
            for (name, orphans) in adopted {
                let recovered = self.report_orphans(st, &name, orphans, now);
                if let Some(js) = st.jobs.get_mut(&name) {
                    js.recovered.extend(recovered);
                }
            }
        }
        let _ = (st, now);
    }

    /// Settles every record still queued: the scheduler is stopping.
    pub(super) fn flush(&self) {
        self.flush_settled(&mut self.lock_state(), true);
    }

    /// Reports the runs that wait for their jitter or their retry as missed: the
    /// scheduler is going away and will not start them.
    pub(super) fn drop_waiting(&self) {
        let timers = {
            let mut st = self.lock_state();
            let timers = mem::take(&mut st.timers);
            // Those of a job removed since were done with at its removal (its waiting
            // runs do not start): no shutdown to report for them.
            timers
                .into_iter()
                .filter(|t| st.job(&t.job, t.generation).is_some())
                .collect::<Vec<_>>()
        };
        let now = self.clock.now();
        let last: Vec<JobEvent> = timers
            .into_iter()
            .map(|t| {
                let kind = EventKind::Missed {
                    count: 1,
                    last: t.scheduled,
                    reason: MissReason::ShutDown,
                };
                traced(&t.job, t.scheduled, now, kind)
            })
            .collect();
        // The stream's last events, sent to every subscriber however many it keeps
        // unread (a subscriber behind by as many as it keeps missed them), and its end.
        self.events.close(&last);
    }

    /// Whether this scheduler fires a cluster job now: `Some(true)` while it holds the
    /// queue's leader lease (taken or renewed here), `Some(false)` while another
    /// scheduler does, `None` when the cluster cannot say; always without a cluster.
    #[cfg_attr(not(feature = "redis"), allow(clippy::unused_self))]
    fn leads(&self) -> Option<bool> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.cluster {
            return match cluster.lead(&self.id, LEADER_LEASE) {
                Ok(lead) => Some(lead.is_some()),
                Err(e) => {
                    tracing::warn!("cannot reach the cluster for the leader lease: {e}");
                    None
                }
            };
        }
        Some(true)
    }

    /// [`leads`](Self::leads), asked at the start of a pass while this scheduler holds a
    /// cluster job: a leader keeps its lease between fire times, so that the runs it
    /// fired and that wait for their jitter or a retry are submitted under it (they
    /// failed, "no longer holds the leader lease", once the lease had run out with
    /// nothing due), and the lease does not go from one live scheduler to another at
    /// fire times. `None` (not asked) without a cluster job.
    #[cfg_attr(not(feature = "redis"), allow(clippy::unused_self))]
    fn pass_lead(&self) -> Option<Option<bool>> {
        #[cfg(feature = "redis")]
        if self.cluster.is_some()
            && self
                .lock_state()
                .jobs
                .values()
                .any(|js| matches!(js.job.target, Target::Cluster(_)))
        {
            return Some(self.leads());
        }
        None
    }

    /// The times of `due` that no scheduler has submitted to the cluster yet (all of
    /// them without a cluster).
    #[cfg(feature = "redis")]
    fn unfired(&self, name: &str, due: Vec<DateTime<Utc>>) -> Vec<DateTime<Utc>> {
        let Some(cluster) = &self.cluster else {
            return due;
        };
        let keys: Vec<String> = due
            .iter()
            .map(|t| super::job::cluster_key(name, *t, 1))
            .collect();
        match cluster.submitted(&keys) {
            Ok(done) => due
                .into_iter()
                .zip(done)
                .filter_map(|(t, done)| (!done).then_some(t))
                .collect(),
            Err(_) => due,
        }
    }

    #[cfg(not(feature = "redis"))]
    #[allow(clippy::unused_self)]
    fn unfired(&self, _: &str, due: Vec<DateTime<Utc>>) -> Vec<DateTime<Utc>> {
        due
    }

    /// Marks every fire time of `name` up to `through` handled (too late to run), in one
    /// step; returns those this scheduler reports (the first, and how many), as `range`
    /// finds them from the last time handled before, if the store knew one.
    fn claim_through(
        &self,
        name: &str,
        through: DateTime<Utc>,
        range: LateRange<'_>,
    ) -> Result<Option<(DateTime<Utc>, u64)>, ScheduleError> {
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store {
            return unpoisoned::lock(store).claim_through(name, through, range);
        }
        let _ = (name, through);
        Ok(range(None))
    }

    fn claim(
        &self,
        name: &str,
        dues: &[DateTime<Utc>],
    ) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store {
            return unpoisoned::lock(store).claim(name, dues);
        }
        let _ = name;
        Ok(dues.to_vec())
    }
}

/// Fire times too late to run, as a count and the first and last of them.
#[derive(Default)]
struct TooLate {
    count: u64,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
}

impl TooLate {
    fn add(&mut self, first: DateTime<Utc>, last: DateTime<Utc>, count: u64) {
        self.count += count;
        self.first = Some(self.first.map_or(first, |f| f.min(first)));
        self.last = Some(self.last.map_or(last, |l| l.max(last)));
    }

    /// Adds the due times after `handled` up to `last`, of `schedule` (another
    /// scheduler handled those up to `handled`); `at_most` is how many were due.
    fn add_counted(
        &mut self,
        schedule: &Schedule,
        handled: DateTime<Utc>,
        last: DateTime<Utc>,
        at_most: u64,
    ) {
        if let Some(first) = schedule.next_after(handled).filter(|&t| t <= last) {
            let dues = schedule.dues(
                first,
                last,
                Late::Before(last + chrono::Duration::nanoseconds(1)),
                0,
            );
            self.add(first, last, dues.late.min(at_most));
        }
    }
}

/// How late a run may start when the job does not say: one period.
fn default_grace(job: &Job, fire: DateTime<Utc>) -> Option<Duration> {
    match &job.schedule.0 {
        schedule::Kind::Every { period, .. } => Some(*period),
        schedule::Kind::Cron { .. } => job
            .schedule
            .next_after(fire)
            .and_then(|next| (next - fire).to_std().ok()),
        schedule::Kind::Once(_) => None,
    }
}

/// A job event, also logged with `tracing`.
fn traced(job: &str, scheduled: DateTime<Utc>, at: DateTime<Utc>, kind: EventKind) -> JobEvent {
    match &kind {
        EventKind::Started { attempt } => {
            tracing::trace!(job, %scheduled, attempt, "run started");
        }
        EventKind::Succeeded { attempt } => {
            tracing::trace!(job, %scheduled, attempt, "run succeeded");
        }
        EventKind::Failed {
            attempt,
            error,
            retry_in,
        } => tracing::warn!(job, %scheduled, attempt, ?retry_in, "run failed: {error}"),
        EventKind::Missed {
            count,
            last,
            reason,
        } => tracing::warn!(job, %scheduled, count, %last, ?reason, "runs missed"),
        EventKind::Interrupted => {
            tracing::warn!(job, %scheduled, "run interrupted: its outcome was never recorded");
        }
    }
    JobEvent {
        job: job.to_string(),
        scheduled,
        at,
        kind,
    }
}
