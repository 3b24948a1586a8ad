//! [`Scheduler`]: jobs on an interval, a cron expression or once, run on a process
//! [`Pool`] or a [`ThreadPool`]; what Python users reach for APScheduler or Celery beat
//! for.
//!
//! Fire times come from the [`Schedule`] alone, never from when a run happened, so
//! nothing drifts. A run that is late (the scheduler was busy, the machine asleep, the
//! program down with a `JobStore` (feature `sqlite`) keeping its jobs) starts if
//! it is within the job's misfire grace, and is reported
//! [`Missed`](EventKind::Missed) otherwise; several due runs coalesce as the job says;
//! a job never has more than `max_instances` runs in flight; failed runs retry per a
//! [`RetryPolicy`](crate::RetryPolicy). Every run and every miss is an event on
//! [`Scheduler::events`] and a `tracing` event: nothing is dropped silently.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use multiproc::sched::{Job, Schedule, Scheduler};
//! use multiproc::ThreadPool;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scheduler = Scheduler::builder().thread_pool(ThreadPool::new(2)?).start()?;
//! let events = scheduler.events();
//! scheduler.add(Job::thread("tick", Schedule::every(Duration::from_secs(1)), || {
//!     println!("tick");
//! }))?;
//! for event in events.iter().take(4) {
//!     println!("{} {:?}", event.job, event.kind);
//! }
//! # Ok(())
//! # }
//! ```

mod clock;
mod job;
mod schedule;
#[cfg(feature = "sqlite")]
mod store;

use std::collections::HashMap;
use std::fmt;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossbeam_channel::Receiver;
use indexmap::IndexMap;

use self::clock::Signal;
pub use self::clock::{Clock, ManualClock};
pub use self::job::{Coalesce, EventKind, Job, JobEvent, MissReason};
use self::job::{Running, Target};
pub use self::schedule::Schedule;
#[cfg(feature = "sqlite")]
pub use self::store::JobStore;
use crate::error::{ScheduleError, TaskError};
use crate::hub::Hub;
use crate::pool::{Pool, ThreadPool};
use crate::sync::lock;

/// At most this many due times of one job are looked at in one pass; more (a per-second
/// job after a long downtime) are handled in the passes that follow at once.
const MAX_DUE_PER_PASS: usize = 10_000;

/// How long a scheduler's leader lease on a cluster lasts without renewal; it is
/// renewed at every pass, and a scheduler with cluster jobs passes at least every
/// third of it.
#[cfg(feature = "redis")]
const LEADER_LEASE: Duration = Duration::from_secs(3);

/// Builds a [`Scheduler`]: its executors, clock and job store.
#[derive(Default)]
pub struct SchedulerBuilder {
    pool: Option<Pool>,
    threads: Option<ThreadPool>,
    clock: Clock,
    #[cfg(feature = "sqlite")]
    store: Option<JobStore>,
    #[cfg(feature = "redis")]
    cluster: Option<crate::cluster::Cluster>,
}

impl fmt::Debug for SchedulerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerBuilder")
            .field("pool", &self.pool.is_some())
            .field("thread_pool", &self.threads.is_some())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl SchedulerBuilder {
    /// The process pool that [`Job::process`] jobs run on.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The thread pool that [`Job::thread`] jobs run on.
    pub fn thread_pool(mut self, pool: ThreadPool) -> Self {
        self.threads = Some(pool);
        self
    }

    /// The cluster that [`Job::cluster`] jobs are submitted to (feature `redis`). Any
    /// number of schedulers may target one cluster queue: the one holding its leader
    /// lease fires the jobs, and each (job, fire time) is submitted once.
    #[cfg(feature = "redis")]
    pub fn cluster(mut self, cluster: crate::cluster::Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Where the scheduler reads the time (default: the system clock). A
    /// [`ManualClock`] makes schedules testable without waiting.
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Keeps jobs' fire times in `store`, so that a restarted program resumes its
    /// schedules (runs missed while it was down are handled by each job's misfire and
    /// coalesce policies), and so that two schedulers on one store never both fire the
    /// same job for the same time.
    #[cfg(feature = "sqlite")]
    pub fn store(mut self, store: JobStore) -> Self {
        self.store = Some(store);
        self
    }

    /// A scheduler that fires jobs only when [`Scheduler::run_pending`] is called (the
    /// style of Python's `schedule` package), with no thread of its own.
    pub fn build(self) -> Scheduler {
        let signal = Arc::new(Signal::default());
        self.clock.subscribe(&signal);
        Scheduler {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                woken: Mutex::new(Vec::new()),
                signal,
                clock: self.clock,
                pool: self.pool,
                threads: self.threads,
                hub: Hub::new(),
                stop: AtomicBool::new(false),
                #[cfg(feature = "sqlite")]
                store: self.store.map(Mutex::new),
                #[cfg(feature = "redis")]
                cluster: self.cluster,
                #[cfg(feature = "redis")]
                id: scheduler_id(),
            }),
            thread: None,
        }
    }

    /// A scheduler that fires jobs on a thread of its own.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidArgument`] if the thread cannot be started.
    pub fn start(self) -> Result<Scheduler, ScheduleError> {
        let mut scheduler = self.build();
        let shared = Arc::clone(&scheduler.shared);
        let thread = std::thread::Builder::new()
            .name("multiproc-scheduler".into())
            .spawn(move || shared.run())
            .map_err(|e| ScheduleError::InvalidArgument(format!("scheduler thread: {e}")))?;
        scheduler.thread = Some(thread);
        Ok(scheduler)
    }
}

/// Runs [`Job`]s on their [`Schedule`]s; see the [module docs](self).
///
/// Dropping the scheduler stops it and drops its pools, which ends runs in flight; use
/// [`shutdown`](Self::shutdown) to let them finish.
pub struct Scheduler {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("jobs", &self.jobs())
            .field("background", &self.thread.is_some())
            .finish()
    }
}

/// A scheduled job as the scheduler sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job's name.
    pub name: String,
    /// Its schedule, in words.
    pub schedule: String,
    /// When it fires next, if it does.
    pub next_fire: Option<DateTime<Utc>>,
    /// Runs in flight (retries waiting included).
    pub running: usize,
}

impl Scheduler {
    /// A builder: executors, clock, store.
    pub fn builder() -> SchedulerBuilder {
        SchedulerBuilder::default()
    }

    /// Schedules `job`.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Duplicate`] for a name already scheduled,
    /// [`ScheduleError::NoExecutor`] when the scheduler lacks the pool the job runs on,
    /// [`ScheduleError::ZeroInterval`] and the other schedule errors, a store error, or
    /// [`ScheduleError::ShutDown`].
    pub fn add(&self, job: Job) -> Result<(), ScheduleError> {
        let shared = &self.shared;
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
        let mut st = lock(&shared.state);
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

    /// Unschedules the job named `name`; runs in flight finish. Whether it was there.
    pub fn remove(&self, name: &str) -> bool {
        let removed = lock(&self.shared.state).jobs.shift_remove(name).is_some();
        self.shared.signal.notify();
        removed
    }

    /// The scheduled jobs, in the order they were added.
    pub fn jobs(&self) -> Vec<JobInfo> {
        let st = lock(&self.shared.state);
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

    /// When the job named `name` fires next.
    pub fn next_fire(&self, name: &str) -> Option<DateTime<Utc>> {
        lock(&self.shared.state).jobs.get(name).and_then(|j| j.next)
    }

    /// A stream of every job event from now on. Each call makes a new subscriber; a
    /// dropped receiver costs nothing.
    pub fn events(&self) -> Receiver<JobEvent> {
        self.shared.hub.subscribe()
    }

    /// Handles everything due by the clock now: finished runs, retries, due fire
    /// times. Returns how many runs it started. A scheduler made with
    /// [`SchedulerBuilder::build`] fires only here; on a started one this is a way to
    /// know that everything due by now has been handled.
    pub fn run_pending(&self) -> usize {
        self.shared.process(true).0
    }

    /// The process pool jobs run on, if any.
    pub fn pool(&self) -> Option<&Pool> {
        self.shared.pool.as_ref()
    }

    /// The thread pool jobs run on, if any.
    pub fn thread_pool(&self) -> Option<&ThreadPool> {
        self.shared.threads.as_ref()
    }

    /// Stops firing jobs. With `wait`, first waits for runs in flight to finish (retries
    /// not yet started are dropped). Then the pools are dropped.
    pub fn shutdown(mut self, wait: bool) {
        self.stop_thread();
        if wait {
            loop {
                self.shared.process(false);
                if lock(&self.shared.state).runs.is_empty() {
                    break;
                }
                self.shared.signal.wait(Duration::from_millis(100));
            }
        }
    }

    fn stop_thread(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.signal.notify();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

struct Shared {
    state: Mutex<State>,
    /// Runs whose task woke their waker: look at them next pass.
    woken: Mutex<Vec<u64>>,
    signal: Arc<Signal>,
    clock: Clock,
    pool: Option<Pool>,
    threads: Option<ThreadPool>,
    hub: Hub<JobEvent>,
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
            lock(&shared.woken).push(self.run);
            shared.signal.notify();
        }
    }
}

impl Shared {
    fn run(self: Arc<Self>) {
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
        self.hub.send(JobEvent {
            job: job.to_string(),
            scheduled,
            at,
            kind,
        });
    }

    /// One pass: finished runs, due timers, due fire times (when `fire`). Returns how
    /// many runs started and when the next thing is due.
    fn process(self: &Arc<Self>, fire: bool) -> (usize, Option<DateTime<Utc>>) {
        let now = self.clock.now();
        let mut st = lock(&self.state);
        let woken = mem::take(&mut *lock(&self.woken));
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
            st.jobs.retain(|_, js| js.next.is_some() || js.running > 0);
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
        let mut dues = std::mem::take(&mut js.deferred);
        let mut next = js.next;
        while let Some(t) = next {
            if t > now || dues.len() >= MAX_DUE_PER_PASS {
                break;
            }
            dues.push(t);
            next = js.job.schedule.next_after(t);
        }
        if dues.is_empty() {
            return 0;
        }
        js.next = next;
        let claimed = match self.claim(name, &dues) {
            // (On a cluster, times an earlier leader fired are not fired again.)
            Ok(Some(c)) => self.unfired(name, c),
            Ok(None) => {
                // Not ours to fire now (another scheduler leads): kept until the leader
                // has fired them, in case it dies first.
                js.deferred = self.unfired(name, dues);
                return 0;
            }
            Err(e) => {
                tracing::error!(job = name, "job store failed; due runs not started: {e}");
                return 0;
            }
        };
        let (mut runnable, mut too_late) = (Vec::new(), Vec::new());
        for t in claimed {
            let grace = js.job.misfire_grace.or_else(|| default_grace(&js.job, t));
            let late = (now - t).to_std().unwrap_or(Duration::ZERO);
            if grace.is_some_and(|g| late > g) {
                too_late.push(t);
            } else {
                runnable.push(t);
            }
        }
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
        self.missed(name, &too_late, MissReason::TooLate, now);
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
                let run = job::ClusterRun {
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
            return lock(store).load(name, key, fresh);
        }
        let _ = (name, key);
        Ok((fresh, None))
    }

    /// The times of `dues` that no scheduler has submitted yet.
    #[cfg(feature = "redis")]
    fn unfired(&self, name: &str, dues: Vec<DateTime<Utc>>) -> Vec<DateTime<Utc>> {
        let Some(cluster) = &self.cluster else {
            return dues;
        };
        let keys: Vec<String> = dues.iter().map(|t| job::cluster_key(name, *t, 1)).collect();
        match cluster.submitted(&keys) {
            Ok(done) => dues
                .into_iter()
                .zip(done)
                .filter_map(|(t, done)| (!done).then_some(t))
                .collect(),
            Err(_) => dues,
        }
    }

    #[cfg(not(feature = "redis"))]
    #[allow(clippy::unused_self)]
    fn unfired(&self, _: &str, dues: Vec<DateTime<Utc>>) -> Vec<DateTime<Utc>> {
        dues
    }

    /// Which of `dues` this scheduler fires (with a store, another scheduler may have);
    /// `None` when another scheduler leads the cluster and the times wait.
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "redis")),
        allow(clippy::unused_self)
    )]
    fn claim(
        &self,
        name: &str,
        dues: &[DateTime<Utc>],
    ) -> Result<Option<Vec<DateTime<Utc>>>, ScheduleError> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.cluster {
            match cluster.lead(&self.id, LEADER_LEASE) {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::warn!(
                        job = name,
                        "cannot reach the cluster for the leader lease: {e}"
                    );
                    return Ok(None);
                }
            }
        }
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.store {
            return lock(store).claim(name, dues).map(Some);
        }
        let _ = name;
        Ok(Some(dues.to_vec()))
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
