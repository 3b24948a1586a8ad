//! The scheduler's engine: the state the [`Scheduler`](super::Scheduler) handle and its
//! thread share, and the firing pass (due times, misfires, coalescing, instance limits,
//! jitter and retries, runs polled as futures).

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossbeam_channel::Receiver;
use indexmap::IndexMap;

use super::clock::{Clock, Notifier};
use super::job::{Coalesce, EventKind, Job, JobEvent, MissReason, Running, Target};
use super::schedule::{self, Schedule};
#[cfg(feature = "sqlite")]
use super::store::JobStore;
use super::{JobInfo, ScheduleError};
use crate::broadcast::Broadcast;
use crate::pool::TaskError;
use crate::pool::{Pool, ThreadPool};
use crate::sync::unpoisoned;

/// At most this many due times of one job are looked at in one pass; more (a per-second
/// job after a long downtime) are handled in the passes that follow at once.
const MAX_DUE_PER_PASS: usize = 10_000;

/// How long a scheduler's leader lease on a cluster lasts without renewal; it is
/// renewed at every pass, and a scheduler with cluster jobs passes at least every
/// third of it.
#[cfg(feature = "redis")]
const LEADER_LEASE: Duration = Duration::from_secs(3);

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

#[derive(Default)]
struct State {
    jobs: IndexMap<String, JobState>,
    runs: HashMap<u64, Run>,
    timers: Vec<Timer>,
    next_run: u64,
}

struct JobState {
    job: Job,
    next: Option<DateTime<Utc>>,
    running: usize,
    /// Due times another scheduler may fire (it held the cluster's leader lease): looked
    /// at again until this scheduler leads, so none is lost when the leader dies.
    deferred: Vec<DateTime<Utc>>,
}

struct Run {
    job: String,
    scheduled: DateTime<Utc>,
    attempt: u32,
    task: Running,
    waker: Waker,
}

/// A run to start later: after its jitter, or a retry after its delay.
struct Timer {
    at: DateTime<Utc>,
    job: String,
    scheduled: DateTime<Utc>,
    attempt: u32,
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
        let mut st = unpoisoned::lock(&shared.state);
        if st.jobs.contains_key(&job.name) {
            return Err(ScheduleError::Duplicate(job.name));
        }
        let key = job.schedule.to_string();
        let fresh = job.schedule.resolve(now)?;
        let (schedule, last_fired) = shared.load(&job.name, &key, fresh)?;
        let next = match (last_fired, schedule.once_at()) {
            (Some(last), _) => schedule.next_after(last),
            (None, Some(at)) => Some(at),
            (None, None) => match &schedule.0 {
                schedule::Kind::Every { start, .. } => *start,
                _ => schedule.next_after(now),
            },
        };
        tracing::debug!(job = %job.name, schedule = %schedule, "job added");
        let name = job.name.clone();
        st.jobs.insert(
            name,
            JobState {
                job: Job { schedule, ..job },
                next,
                running: 0,
                deferred: Vec::new(),
            },
        );
        drop(st);
        shared.signal.notify();
        Ok(())
    }

    /// Unschedules a job; whether it was there.
    pub(super) fn remove(&self, name: &str) -> bool {
        let removed = unpoisoned::lock(&self.state)
            .jobs
            .shift_remove(name)
            .is_some();
        self.signal.notify();
        removed
    }

    /// The scheduled jobs, in the order they were added.
    pub(super) fn jobs(&self) -> Vec<JobInfo> {
        let st = unpoisoned::lock(&self.state);
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
        unpoisoned::lock(&self.state)
            .jobs
            .get(name)
            .and_then(|j| j.next)
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

    /// Waits for the runs in flight to finish, handling their outcomes.
    pub(super) fn finish_runs(self: &Arc<Self>) {
        loop {
            self.process(false);
            if unpoisoned::lock(&self.state).runs.is_empty() {
                break;
            }
            self.signal.wait(Duration::from_millis(100));
        }
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
        }
        self.events.send(JobEvent {
            job: job.to_string(),
            scheduled,
            at,
            kind,
        });
    }

    /// One pass: finished runs, due timers, due fire times (when `fire`). Returns how
    /// many runs started and when the next thing is due.
    pub(super) fn process(self: &Arc<Self>, fire: bool) -> (usize, Option<DateTime<Utc>>) {
        let now = self.clock.now();
        let mut st = unpoisoned::lock(&self.state);
        let woken = mem::take(&mut *unpoisoned::lock(&self.woken));
        for id in woken {
            self.poll_run(&mut st, id, now);
        }
        let mut started = 0;
        if fire {
            let (due, later): (Vec<Timer>, Vec<Timer>) = mem::take(&mut st.timers)
                .into_iter()
                .partition(|t| t.at <= now);
            st.timers = later;
            for t in due {
                started += self.launch(&mut st, &t.job, t.scheduled, t.attempt, now);
            }
            let names: Vec<String> = st.jobs.keys().cloned().collect();
            for name in names {
                started += self.fire_due(&mut st, &name, now);
            }
            // A `once` job that has fired and finished is done.
            st.jobs
                .retain(|_, js| js.next.is_some() || js.running > 0 || !js.deferred.is_empty());
        }
        let next_job = st.jobs.values().filter_map(|j| j.next).min();
        let next_timer = st.timers.iter().map(|t| t.at).min();
        let wake_at = match (next_job, next_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Deferred times, and the leader lease, are looked at again soon.
        #[cfg(feature = "redis")]
        let wake_at = if self.cluster.is_some() && !st.jobs.is_empty() {
            let soon = now + chrono::Duration::from_std(LEADER_LEASE / 3).unwrap_or_default();
            Some(wake_at.map_or(soon, |w| w.min(soon)))
        } else {
            wake_at
        };
        (started, wake_at)
    }

    /// Handles the due fire times of job `name`. Returns how many runs started.
    fn fire_due(self: &Arc<Self>, st: &mut State, name: &str, now: DateTime<Utc>) -> usize {
        let Some(js) = st.jobs.get_mut(name) else {
            return 0;
        };
        let first = js.next.filter(|&t| t <= now);
        if first.is_none() && js.deferred.is_empty() {
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
        let late_before = fixed_grace
            .flatten()
            .and_then(|g| chrono::Duration::from_std(g).ok())
            .and_then(|g| now.checked_sub_signed(g));
        let dues = match first {
            Some(first) => js
                .job
                .schedule
                .dues(first, now, late_before, MAX_DUE_PER_PASS),
            None => schedule::Dues::none(js.next),
        };
        js.next = dues.next;
        // Times kept from passes when another scheduler led the cluster come first.
        let mut due = mem::take(&mut js.deferred);
        due.extend(dues.runnable);
        if !self.leads(name) {
            // Not ours to fire now: kept until the leader has submitted them, in case it
            // dies first. (Times too late are the leader's to report.)
            js.deferred = self.unfired(name, due);
            return 0;
        }
        let due = self.unfired(name, due);
        let mut too_late = TooLate::default();
        if let (Some(first), Some(last_late)) = (first, dues.last_late) {
            match self.claim_through(name, last_late) {
                // Another scheduler on the same store handled some of them already.
                Ok(Some(handled)) if handled >= last_late => {}
                Ok(Some(handled)) if handled >= first => {
                    too_late.add_counted(&js.job.schedule, handled, last_late, dues.late);
                }
                Ok(_) => too_late.add(first, last_late, dues.late),
                Err(e) => {
                    tracing::error!(job = name, "job store failed; due runs not started: {e}");
                    return 0;
                }
            }
        }
        if due.is_empty() {
            self.missed_range(name, &too_late, MissReason::TooLate, now);
            return 0;
        }
        let claimed = match self.claim(name, &due) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(job = name, "job store failed; due runs not started: {e}");
                return 0;
            }
        };
        let mut runnable = Vec::new();
        for t in claimed {
            let grace = match fixed_grace {
                Some(g) => g,
                None => default_grace(&js.job, t),
            };
            let late = (now - t).to_std().unwrap_or(Duration::ZERO);
            if grace.is_some_and(|g| late > g) {
                too_late.add(t, t, 1);
            } else {
                runnable.push(t);
            }
        }
        self.missed_range(name, &too_late, MissReason::TooLate, now);
        let (run, coalesced) = match js.job.coalesce {
            _ if runnable.is_empty() => (Vec::new(), Vec::new()),
            Coalesce::All => (runnable, Vec::new()),
            Coalesce::Earliest => {
                let rest = runnable.split_off(1);
                (runnable, rest)
            }
            Coalesce::Latest => {
                let last = runnable.pop().into_iter().collect();
                (last, runnable)
            }
        };
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
        self.missed(name, &coalesced, MissReason::Coalesced, now);
        self.missed(name, &over_max, MissReason::MaxInstances, now);
        let mut started = 0;
        for t in to_start {
            if jitter.is_zero() {
                started += self.launch(st, name, t, 1, now);
            } else {
                let delay = jitter.mul_f64(fastrand::f64());
                st.timers.push(Timer {
                    at: now + chrono::Duration::from_std(delay).unwrap_or_default(),
                    job: name.to_string(),
                    scheduled: t,
                    attempt: 1,
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
        scheduled: DateTime<Utc>,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> usize {
        let Some(js) = st.jobs.get(name) else {
            // Removed while its run waited for its jitter or retry.
            return 0;
        };
        let task = match &js.job.target {
            Target::Process(start) => self
                .pool
                .as_ref()
                .ok_or(TaskError::PoolClosed)
                .and_then(|p| start(p)),
            Target::Thread(start) => self
                .threads
                .as_ref()
                .ok_or(TaskError::PoolClosed)
                .and_then(|p| start(p)),
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
        };
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
                        scheduled,
                        attempt,
                        task,
                        waker,
                    },
                );
                self.poll_run(st, id, now);
            }
            Err(e) => self.finished(st, name, scheduled, attempt, Err(e), now),
        }
        1
    }

    fn poll_run(&self, st: &mut State, id: u64, now: DateTime<Utc>) {
        let Some(run) = st.runs.get_mut(&id) else {
            return;
        };
        let waker = run.waker.clone();
        let mut cx = Context::from_waker(&waker);
        if let Poll::Ready(outcome) = run.task.as_mut().poll(&mut cx)
            && let Some(run) = st.runs.remove(&id)
        {
            self.finished(st, &run.job, run.scheduled, run.attempt, outcome, now);
        }
    }

    fn finished(
        &self,
        st: &mut State,
        name: &str,
        scheduled: DateTime<Utc>,
        attempt: u32,
        outcome: Result<(), TaskError>,
        now: DateTime<Utc>,
    ) {
        let js = st.jobs.get_mut(name);
        match outcome {
            Ok(()) => {
                self.emit(name, scheduled, now, EventKind::Succeeded { attempt });
                if let Some(js) = js {
                    js.running = js.running.saturating_sub(1);
                }
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
                        at: now + chrono::Duration::from_std(delay).unwrap_or_default(),
                        job: name.to_string(),
                        scheduled,
                        attempt: attempt + 1,
                    }),
                    (_, Some(js)) => js.running = js.running.saturating_sub(1),
                    (_, None) => {}
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
    ) -> Result<(Schedule, Option<DateTime<Utc>>), ScheduleError> {
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store {
            return unpoisoned::lock(store).load(name, key, fresh);
        }
        let _ = (name, key);
        Ok((fresh, None))
    }

    /// Which of `dues` this scheduler fires (with a store, another scheduler may have).
    #[cfg_attr(not(feature = "sqlite"), allow(clippy::unused_self))]
    /// Whether this scheduler fires now: always, but on a cluster only while it holds
    /// the queue's leader lease (taken or renewed here).
    #[cfg_attr(not(feature = "redis"), allow(clippy::unused_self))]
    fn leads(&self, name: &str) -> bool {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.cluster {
            return match cluster.lead(&self.id, LEADER_LEASE) {
                Ok(lead) => lead.is_some(),
                Err(e) => {
                    tracing::warn!(
                        job = name,
                        "cannot reach the cluster for the leader lease: {e}"
                    );
                    false
                }
            };
        }
        let _ = name;
        true
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
    /// step; returns the last time handled before, if the store knew one.
    fn claim_through(
        &self,
        name: &str,
        through: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ScheduleError> {
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store {
            return unpoisoned::lock(store).claim_through(name, through);
        }
        let _ = (name, through);
        Ok(None)
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
                Some(last + chrono::Duration::nanoseconds(1)),
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
