//! Why a schedule or a job was refused, or the job store failed.

/// Why a schedule or a job was refused, or the job store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// A cron expression croner cannot parse.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron {
        /// The expression.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A time zone that is not in the IANA database.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    /// An interval shorter than [`Schedule::MIN_PERIOD`](crate::sched::Schedule::MIN_PERIOD)
    /// (zero included): a job cannot run that often, and a scheduler asked to would
    /// only spin reporting missed runs.
    #[error("an interval of {period:?} is shorter than the shortest allowed, {min:?}")]
    IntervalTooShort {
        /// The interval asked for.
        period: std::time::Duration,
        /// The shortest allowed.
        min: std::time::Duration,
    },
    /// An interval too long to add to a date.
    #[error("the interval {0:?} is too long")]
    IntervalTooLong(std::time::Duration),
    /// A cron expression that matches no time (such as February 30th), or none after
    /// where its job stands (when it was added, or, with a job store, the last time the
    /// job handled: a year gone by).
    #[error("{0} never fires")]
    NeverFires(String),
    /// A job of that name is already scheduled.
    #[error("a job named {0:?} is already scheduled")]
    Duplicate(String),
    /// The job runs on an executor the scheduler was not given (a process job needs a
    /// [`Pool`](crate::Pool), a thread job a [`ThreadPool`](crate::ThreadPool)).
    #[error("job {job:?} needs a {needs}, and the scheduler has none")]
    NoExecutor {
        /// The job.
        job: String,
        /// What it needs.
        needs: &'static str,
    },
    /// A setting is out of range (a job name that is empty, `max_instances` of zero).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The job store cannot be opened, is not a job store, or failed.
    #[error("job store: {0}")]
    Store(String),
    /// The scheduler has been shut down.
    #[error("the scheduler has shut down")]
    ShutDown,
}
