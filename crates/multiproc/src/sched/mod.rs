//! [`Scheduler`]: jobs on an interval, a cron expression or once, run on a process
//! [`Pool`] or a [`ThreadPool`]; what Python users reach for APScheduler or Celery beat
//! for.
//!
//! Fire times come from the [`Schedule`] alone, never from when a run happened, so
//! nothing drifts. A run that is late (the scheduler was busy, the machine asleep, the
//! program down with a `JobStore` (feature `sqlite`) keeping its jobs) starts if
//! it is within the job's misfire grace, and is reported
//! [`Missed`](EventKind::Missed) otherwise; several due runs coalesce as the job says;
//! a job never has more than `max_instances` runs in flight (in one scheduler:
//! schedulers sharing a job store count their own); failed runs retry per a
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
//! let scheduler = Scheduler::builder().thread_pool(ThreadPool::new(2)?).build()?;
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
mod engine;
mod error;
mod job;
mod schedule;
#[cfg(feature = "sqlite")]
mod store;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use crossbeam_channel::Receiver;

pub use self::clock::{Clock, ManualClock};
use self::engine::Shared;
pub use self::error::ScheduleError;
pub use self::job::{Coalesce, EventKind, Job, JobEvent, MissReason, RunContext};
pub use self::schedule::Schedule;
#[cfg(feature = "sqlite")]
pub use self::store::JobStore;
use crate::pool::{Pool, ThreadPool};

/// Builds a [`Scheduler`]: its executors, clock and job store.
#[derive(Default)]
#[must_use = "a builder does nothing until `build` is called"]
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
    /// lease fires the cluster jobs, and each (job, fire time) is submitted once. Jobs
    /// that run in the program's own pools ([`Job::process`], [`Job::thread`]) are
    /// each scheduler's own, and run on every one.
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
    pub fn build_manual(self) -> Scheduler {
        Scheduler {
            shared: Arc::new(Shared::new(
                self.clock,
                self.pool,
                self.threads,
                #[cfg(feature = "sqlite")]
                self.store,
                #[cfg(feature = "redis")]
                self.cluster,
            )),
            thread: None,
        }
    }

    /// A scheduler that fires jobs on a thread of its own.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidArgument`] if the thread cannot be started.
    pub fn build(self) -> Result<Scheduler, ScheduleError> {
        let mut scheduler = self.build_manual();
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
/// Dropping the scheduler stops it and drops its pools, which ends the runs in flight on
/// its process pool (their workers are killed); a run on its thread pool cannot be
/// stopped (a thread cannot be killed), and dropping waits for it, as dropping a
/// [`ThreadPool`] does. Runs that were [`Started`](EventKind::Started) but still
/// waited in a pool's queue for a free worker or thread do not run, as a pool's
/// queued tasks do not when it is dropped; none of these runs is reported ended
/// (with a store, the next scheduler on it reports them interrupted). Use
/// [`shutdown`](Self::shutdown) to let runs finish.
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
#[non_exhaustive]
pub struct JobInfo {
    /// The job's name.
    pub name: String,
    /// Its schedule, in words.
    pub schedule: String,
    /// When it fires next, if it does.
    pub next_fire: Option<DateTime<Utc>>,
    /// Runs in flight (those waiting for their jitter or for a retry included).
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
    /// [`ScheduleError::Duplicate`] for a name already scheduled (a finished job kept
    /// only while another scheduler on the store holds one of its times, listed with no
    /// next fire time, is replaced),
    /// [`ScheduleError::NoExecutor`] when the scheduler lacks the pool the job runs on,
    /// [`ScheduleError::IntervalTooShort`] and the other schedule errors, a store error, or
    /// [`ScheduleError::ShutDown`].
    pub fn add(&self, job: Job) -> Result<(), ScheduleError> {
        self.shared.add(job)
    }

    /// Unschedules the job named `name`; runs in flight finish, and are not retried;
    /// runs waiting for their jitter, and failed runs waiting for their retry, do not
    /// start (each is reported [`Missed`](EventKind::Missed) with
    /// [`MissReason::Removed`]). A job added later under the same
    /// name is another job: the old one's runs hold none of its instances
    /// (`max_instances`), and on a job store it starts afresh (the store forgets the
    /// removed job). Whether it was there.
    pub fn remove(&self, name: &str) -> bool {
        self.shared.remove(name)
    }

    /// The scheduled jobs, in the order they were added.
    pub fn jobs(&self) -> Vec<JobInfo> {
        self.shared.jobs()
    }

    /// When the job named `name` fires next.
    pub fn next_fire(&self, name: &str) -> Option<DateTime<Utc>> {
        self.shared.next_fire(name)
    }

    /// A stream of every job event from now on. Each call makes a new subscriber; a
    /// dropped receiver costs nothing. One that is not read keeps at most 100,000
    /// events: later ones are dropped for it (with a warning) until it reads again,
    /// rather than grow without bound. The stream ends when the scheduler goes (dropped,
    /// or [`shutdown`](Self::shutdown), after the runs it waits for): the receiver is
    /// disconnected once it has read the last events, the runs missed at the shutdown
    /// among them, so `for event in events` ends.
    pub fn events(&self) -> Receiver<JobEvent> {
        self.shared.subscribe()
    }

    /// Handles everything due by the clock now: finished runs, retries, due fire
    /// times. Returns how many runs it started. A scheduler made with
    /// [`SchedulerBuilder::build_manual`] fires only here; on one with a thread of its own
    /// this is a way to know that everything due by now has been handled.
    pub fn run_pending(&self) -> usize {
        self.shared.run_pending()
    }

    /// The process pool jobs run on, if any.
    pub fn pool(&self) -> Option<&Pool> {
        self.shared.pool.as_ref()
    }

    /// The thread pool jobs run on, if any.
    pub fn thread_pool(&self) -> Option<&ThreadPool> {
        self.shared.threads.as_ref()
    }

    /// Stops firing jobs. With `wait`, first waits for runs in flight to finish (runs
    /// that wait for their jitter or retry are not started: each is reported
    /// [`Missed`](EventKind::Missed) with [`MissReason::ShutDown`]). Then the pools are dropped: runs still in flight on
    /// the process pool end with their workers; those on the thread pool are waited for
    /// (see [`Scheduler`]). Called from a run of a thread job (one that stops its
    /// scheduler), it waits for the runs on the pool's other threads, not for that one,
    /// and the runs queued behind them end [`Cancelled`](crate::TaskError::Cancelled) (they
    /// could not start while it waits); the calling run's outcome is not reported (the
    /// scheduler is gone when it ends: with a job store, the next scheduler on it
    /// reports it [`Interrupted`](EventKind::Interrupted)). A drop, or
    /// `shutdown(false)`, from a run waits for no run.
    pub fn shutdown(mut self, wait: bool) {
        self.stop_thread();
        if wait {
            self.shared.finish_runs();
        }
    }

    fn stop_thread(&mut self) {
        self.shared.stop();
        if let Some(thread) = self.thread.take() {
            crate::sync::unpoisoned::join(thread);
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop_thread();
        // What was reported is settled in the store; runs still in flight stay
        // started, and the next scheduler on the store reports them interrupted.
        self.shared.flush();
        // Runs waiting for their jitter or retry will not start here: said so.
        self.shared.drop_waiting();
    }
}
