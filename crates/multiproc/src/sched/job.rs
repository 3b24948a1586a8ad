//! [`Job`]: what a scheduler runs, on which executor, under which policies; and the
//! events a run produces.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::schedule::Schedule;
use crate::pool::RetryPolicy;
use crate::pool::TaskError;
use crate::pool::{Pool, ThreadPool};

/// A started run: resolves when the task ends.
pub(crate) type Running = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

/// Starts one run of a job on an executor of type `E`.
pub(crate) type Start<E> = Arc<dyn Fn(&E, &RunContext) -> Result<Running, TaskError> + Send + Sync>;

/// Which run a job's function is called for: given to the function of a
/// [`Job::thread_with`] job.
///
/// The fire time is what a run records to tell, later, whether it happened: after a
/// crash, the scheduler reports a run whose outcome it never recorded
/// [`Interrupted`](EventKind::Interrupted) (it may or may not have finished).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunContext {
    /// The job's name.
    pub job: String,
    /// The fire time the run is for: the schedule's, whatever the run's jitter or
    /// lateness.
    pub scheduled: DateTime<Utc>,
    /// Which attempt of the run (from 1; above 1 for a retry).
    pub attempt: u32,
    /// Which of the job's additions it is a run of (a job removed and added again under
    /// its name is another).
    pub(crate) generation: u64,
}

thread_local! {
    /// On a thread of the scheduler's thread pool, while it runs a thread job: which run
    /// (see [`current_run`]).
    static CURRENT_RUN: std::cell::RefCell<Option<RunContext>> =
        const { std::cell::RefCell::new(None) };
}

/// The thread job's run that the calling thread is running, if any: a shutdown that
/// waits for the runs in flight does not wait for the one that called it.
pub(super) fn current_run() -> Option<RunContext> {
    CURRENT_RUN.with(|r| r.borrow().clone())
}

/// Marks the calling thread as running `run` until dropped (also by a panic).
struct CurrentRun(Option<RunContext>);

impl CurrentRun {
    fn enter(run: &RunContext) -> CurrentRun {
        CurrentRun(CURRENT_RUN.with(|r| r.replace(Some(run.clone()))))
    }
}

impl Drop for CurrentRun {
    fn drop(&mut self) {
        let before = self.0.take();
        CURRENT_RUN.with(|r| *r.borrow_mut() = before);
    }
}

impl RunContext {
    pub(crate) fn new(
        job: &str,
        generation: u64,
        scheduled: DateTime<Utc>,
        attempt: u32,
    ) -> RunContext {
        RunContext {
            job: job.to_string(),
            scheduled,
            attempt,
            generation,
        }
    }
}

/// Starts one run of a cluster job: submitted once per (job, fire time, attempt)
/// whatever the number of schedulers, and only while this scheduler leads.
#[cfg(feature = "redis")]
pub(crate) type ClusterStart = Arc<
    dyn Fn(&crate::cluster::Cluster, &ClusterRun<'_>) -> Result<Running, TaskError> + Send + Sync,
>;

/// The idempotency key of one run of a cluster job.
#[cfg(feature = "redis")]
pub(crate) fn cluster_key(job: &str, scheduled: DateTime<Utc>, attempt: u32) -> String {
    format!("sched:{job}:{}:{attempt}", scheduled.timestamp_millis())
}

/// Which run a [`ClusterStart`] submits.
#[cfg(feature = "redis")]
pub(crate) struct ClusterRun<'a> {
    pub(crate) job: &'a str,
    pub(crate) scheduled: DateTime<Utc>,
    pub(crate) attempt: u32,
    /// The scheduler's id, which must still hold the leader lease.
    pub(crate) leader: &'a str,
}

/// Starts one run of a job on its executor.
#[derive(Clone)]
pub(crate) enum Target {
    Process(Start<Pool>),
    Thread(Start<ThreadPool>),
    #[cfg(feature = "redis")]
    Cluster(ClusterStart),
}

/// Which of several due runs of one job to start when more than one is due at once
/// (the scheduler was busy, asleep or down): the others are reported
/// [`Missed`](EventKind::Missed) with [`MissReason::Coalesced`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Coalesce {
    /// One run, for the earliest due time.
    Earliest,
    /// One run, for the latest due time (the default).
    #[default]
    Latest,
    /// Every due run.
    All,
}

/// A job for a [`Scheduler`](super::Scheduler): a name (unique in the scheduler), a
/// [`Schedule`], the work, and how late, overlapping and failed runs are handled.
///
/// Defaults: a run may start up to one period late (`misfire_grace`; for a cron job the
/// time to its next fire, for a `once` job without limit); several due runs coalesce into
/// the latest; at most one instance runs at a time (a slow run is not started twice); no
/// jitter; no retry.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::sched::{Coalesce, Job, Schedule};
/// use multiproc::RetryPolicy;
///
/// fn backup(dir: String) -> u64 {
///     dir.len() as u64
/// }
///
/// let job = Job::process("backup", Schedule::cron("0 3 * * *").unwrap(), backup, "/srv".into())
///     .misfire_grace(Duration::from_secs(3600))
///     .coalesce(Coalesce::Earliest)
///     .retry(RetryPolicy::attempts(3));
/// assert_eq!(job.name(), "backup");
/// ```
#[derive(Clone)]
#[must_use = "a job does nothing until it is added to a scheduler"]
pub struct Job {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    pub(crate) target: Target,
    pub(crate) misfire_grace: Option<Duration>,
    pub(crate) coalesce: Coalesce,
    pub(crate) max_instances: usize,
    pub(crate) jitter: Duration,
    pub(crate) retry: RetryPolicy,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .field(
                "runs_on",
                &match self.target {
                    Target::Process(_) => "Pool",
                    Target::Thread(_) => "ThreadPool",
                    #[cfg(feature = "redis")]
                    Target::Cluster(_) => "Cluster",
                },
            )
            .field("misfire_grace", &self.misfire_grace)
            .field("coalesce", &self.coalesce)
            .field("max_instances", &self.max_instances)
            .field("jitter", &self.jitter)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Job {
    fn with_target(name: impl Into<String>, schedule: Schedule, target: Target) -> Job {
        Job {
            name: name.into(),
            schedule,
            target,
            misfire_grace: None,
            coalesce: Coalesce::default(),
            max_instances: 1,
            jitter: Duration::ZERO,
            retry: RetryPolicy::never(),
        }
    }

    /// A job that runs `f(args)` in a worker of the scheduler's process
    /// [`Pool`](crate::Pool): a crash, a hang (with the pool's `task_timeout`) or a leak
    /// stays in the worker.
    pub fn process<A, R>(name: impl Into<String>, schedule: Schedule, f: fn(A) -> R, args: A) -> Job
    where
        A: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let start = move |pool: &Pool, _: &RunContext| -> Result<Running, TaskError> {
            let task = pool.submit(f, args.clone())?;
            Ok(Box::pin(async move { task.await.map(drop) }))
        };
        Job::with_target(name, schedule, Target::Process(Arc::new(start)))
    }

    /// A job that runs the closure `f` on a thread of the scheduler's
    /// [`ThreadPool`](crate::ThreadPool).
    pub fn thread<R, F>(name: impl Into<String>, schedule: Schedule, f: F) -> Job
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: Send + 'static,
    {
        Job::thread_with(name, schedule, move |_| f())
    }

    /// Like [`thread`](Self::thread), and `f` is told which run it is for: the job, the
    /// fire time, the attempt (a [`RunContext`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::sched::{Job, Schedule};
    ///
    /// let job = Job::thread_with("report", Schedule::every(Duration::from_secs(60)), |run| {
    ///     println!("the report due at {} (attempt {})", run.scheduled, run.attempt);
    /// });
    /// assert_eq!(job.name(), "report");
    /// ```
    pub fn thread_with<R, F>(name: impl Into<String>, schedule: Schedule, f: F) -> Job
    where
        F: Fn(RunContext) -> R + Send + Sync + 'static,
        R: Send + 'static,
    {
        let f = Arc::new(f);
        let start = move |pool: &ThreadPool, run: &RunContext| -> Result<Running, TaskError> {
            let (f, run) = (Arc::clone(&f), run.clone());
            let task = pool.submit(move || {
                let _running = CurrentRun::enter(&run);
                f(run)
            })?;
            Ok(Box::pin(async move { task.await.map(drop) }))
        };
        Job::with_target(name, schedule, Target::Thread(Arc::new(start)))
    }

    /// A job that submits `def(args)` to the scheduler's
    /// [`Cluster`](crate::cluster::Cluster) (feature `redis`), for any worker node to
    /// run. Any number of schedulers may hold the same job against one Redis: the one
    /// holding the queue's leader lease fires it, and each (job, fire time) is submitted
    /// once (an idempotency key checked with the lease in one atomic step), so a fire
    /// time is neither lost when a leader dies nor submitted twice. Its task then runs
    /// at least once, as every cluster task does: a run whose worker lost the task's
    /// lease (died, hung, or was paused past it) runs again.
    #[cfg(feature = "redis")]
    pub fn cluster<A, R>(
        name: impl Into<String>,
        schedule: Schedule,
        def: crate::cluster::TaskDef<A, R>,
        args: A,
    ) -> Job
    where
        A: Serialize + Clone + Send + Sync + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let start = move |cluster: &crate::cluster::Cluster,
                          run: &ClusterRun<'_>|
              -> Result<Running, TaskError> {
            let key = cluster_key(run.job, run.scheduled, run.attempt);
            let opts = crate::cluster::TaskOptions::new()
                .idempotency_key(key)
                .leader(run.leader.to_string());
            let task = cluster.submit_with(def, args.clone(), opts).map_err(|e| {
                TaskError::Failed(crate::pool::Failure::message_only(format!(
                    "cannot submit: {e}"
                )))
            })?;
            Ok(Box::pin(async move { task.await.map(drop) }))
        };
        Job::with_target(name, schedule, Target::Cluster(Arc::new(start)))
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job's schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// How late a run may start; a run later than this is reported
    /// [`Missed`](EventKind::Missed) with [`MissReason::TooLate`] instead. At least a
    /// millisecond ([`Scheduler::add`](crate::sched::Scheduler::add) refuses less with
    /// `InvalidArgument`: the scheduler wakes after a due time, never exactly at it but
    /// some microseconds to milliseconds after, so nearly every run would be missed).
    pub fn misfire_grace(mut self, grace: Duration) -> Job {
        self.misfire_grace = Some(grace);
        self
    }

    /// Which of several due runs start; see [`Coalesce`].
    pub fn coalesce(mut self, coalesce: Coalesce) -> Job {
        self.coalesce = coalesce;
        self
    }

    /// How many runs of this job may be in flight at once (at least 1; default 1), in
    /// the scheduler that holds it (schedulers sharing a job store count their own). A
    /// due run beyond it is reported [`Missed`](EventKind::Missed) with
    /// [`MissReason::MaxInstances`].
    pub fn max_instances(mut self, n: usize) -> Job {
        self.max_instances = n;
        self
    }

    /// Starts each run after a random delay of up to `jitter`, so that many jobs due at
    /// one time do not start together. The scheduled time in events stays the schedule's.
    /// A run waiting for its delay is in flight: it counts toward
    /// [`max_instances`](Self::max_instances), as a retry waiting for its delay does, so
    /// that runs never pile up behind their delays; with a jitter longer than the job's
    /// period, a time that comes while the last one still waits is
    /// [`Missed`](EventKind::Missed) with [`MissReason::MaxInstances`] unless
    /// `max_instances` allows for it (APScheduler's jitter moves the time itself, and
    /// counts a run only once it starts). A run whose delay is over but that the
    /// scheduler looks at again only later than the [misfire
    /// grace](Self::misfire_grace) past it (a machine suspended, a clock stepped
    /// forward) is missed as [`MissReason::TooLate`], as a time due that late is.
    pub fn jitter(mut self, jitter: Duration) -> Job {
        self.jitter = jitter;
        self
    }

    /// Runs a failed run again per `policy` (by default, after the worker died, the task
    /// timed out, or a fallible task returned an error, a failed cluster submit
    /// included; not after a panic: see [`RetryPolicy::retry_if`]). A run waiting to be
    /// retried still counts toward [`max_instances`](Self::max_instances).
    pub fn retry(mut self, policy: RetryPolicy) -> Job {
        self.retry = policy;
        self
    }
}

/// Why a due run did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissReason {
    /// It was due longer ago than the job's misfire grace.
    TooLate,
    /// Another due run of the job started in its place (see [`Coalesce`]).
    Coalesced,
    /// The job had `max_instances` runs in flight.
    MaxInstances,
    /// The scheduler shut down (or was dropped) while the run waited for its jitter, or
    /// a failed run for its retry. With a job store, a scheduler that adds the job on
    /// the store later may still run it (a waiting first attempt), or reports it
    /// [`Interrupted`](EventKind::Interrupted) (a waiting retry).
    ShutDown,
    /// The job was removed ([`Scheduler::remove`](crate::sched::Scheduler::remove))
    /// while the run waited for its jitter, or a failed run for its retry, or before
    /// times it had claimed in its job store started (times a stopped scheduler
    /// claimed and never started, say).
    Removed,
}

/// What happened to a job.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum EventKind {
    /// A run started: it was handed to its pool (or submitted to its cluster), where it
    /// may wait for a free worker or thread (a hand-off that failed is followed by the
    /// run's [`Failed`](EventKind::Failed)); `attempt` counts from 1 (above 1 for a
    /// retry).
    Started {
        /// Which attempt of this run.
        attempt: u32,
    },
    /// A run ended well.
    Succeeded {
        /// Which attempt.
        attempt: u32,
    },
    /// A run failed. `retry_in` is the delay before it runs again, or `None` if it will
    /// not.
    Failed {
        /// Which attempt.
        attempt: u32,
        /// How it failed.
        error: Arc<TaskError>,
        /// When it runs again, if it does.
        retry_in: Option<Duration>,
    },
    /// `count` due runs, from the one scheduled for the event's time to `last`, did not
    /// start, for `reason`.
    Missed {
        /// How many.
        count: u64,
        /// The last of them.
        last: DateTime<Utc>,
        /// Why.
        reason: MissReason,
    },
    /// A run that a scheduler on the same job store started, and whose outcome it never
    /// recorded: its process ended first (killed, say), or it was dropped with the run
    /// in flight. The run may or may not have finished; it is not run again. Reported
    /// by the next scheduler that adds the job on the store, or within seconds by one
    /// sharing the store that has the job (feature `sqlite`).
    Interrupted,
}

/// An event of a job's life, from [`Scheduler::events`](super::Scheduler::events).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JobEvent {
    /// The job.
    pub job: String,
    /// The fire time the event is about (the first, for a batch of missed runs).
    pub scheduled: DateTime<Utc>,
    /// When it happened, by the scheduler's clock.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
}
