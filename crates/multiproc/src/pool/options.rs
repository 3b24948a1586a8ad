//! [`TaskOptions`]: what one submission asks beyond its executor's settings.

use std::time::{Duration, Instant, SystemTime};

use super::RetryPolicy;
use super::TaskError;

/// When a submitted task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delay {
    Now,
    /// After this long (on a cluster, by the Redis server's clock).
    Countdown(Duration),
    /// At this time (milliseconds since the Unix epoch).
    Eta(u64),
}

/// Options of one submission (`submit_with` on a [`Pool`](crate::Pool), a
/// [`ThreadPool`](crate::ThreadPool) or, with the `redis` feature, a cluster): a
/// timeout, a retry policy and a delay, as Celery's `apply_async` takes them. A cluster
/// also takes an idempotency key and a queue (`cluster::Cluster::submit_with`); a local
/// pool refuses those with [`TaskError::InvalidArgument`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{RetryPolicy, TaskOptions, ThreadPool};
///
/// let opts = TaskOptions::new()
///     .countdown(Duration::from_millis(20))
///     .retry(RetryPolicy::attempts(3))
///     .timeout(Duration::from_secs(60));
/// let pool = ThreadPool::new(1)?;
/// let task = pool.submit_with(|| 2 + 2, opts)?;
/// assert_eq!(task.wait()?, 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct TaskOptions {
    pub(crate) delay: Delay,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) timeout: Option<Duration>,
    #[cfg(feature = "redis")]
    pub(crate) idempotency_key: Option<String>,
    #[cfg(feature = "redis")]
    pub(crate) queue: Option<String>,
    /// Reject the submission unless this scheduler still holds the leader lease.
    #[cfg(feature = "redis")]
    pub(crate) leader: Option<String>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions::new()
    }
}

impl TaskOptions {
    /// No delay, the executor's retry policy and timeout (on a cluster: no idempotency
    /// key, the client's queue).
    pub fn new() -> Self {
        TaskOptions {
            delay: Delay::Now,
            retry: None,
            timeout: None,
            #[cfg(feature = "redis")]
            idempotency_key: None,
            #[cfg(feature = "redis")]
            queue: None,
            #[cfg(feature = "redis")]
            leader: None,
        }
    }

    /// Runs the task no earlier than `delay` from now (Celery's `countdown`; on a
    /// cluster, by the Redis server's clock).
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.delay = Delay::Countdown(delay);
        self
    }

    /// Runs the task no earlier than `at` (a [`SystemTime`] or a
    /// `chrono::DateTime<Utc>`). A time in the past runs it now.
    pub fn eta(mut self, at: impl Into<SystemTime>) -> Self {
        let ms = at
            .into()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.delay = Delay::Eta(ms);
        self
    }

    /// How the task is retried when it fails, instead of the executor's policy. On a
    /// cluster the policy travels as data, without its `retry_if` predicate (code does
    /// not cross machines): workers apply the default predicate.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// A run longer than this fails with [`TaskError::TimedOut`] (or is retried per the
    /// policy), instead of the executor's task timeout. A process pool or a cluster
    /// kills the task's process; a [`ThreadPool`](crate::ThreadPool) cannot stop a
    /// thread: the task ends as timed out at once and its closure runs on, unread, and
    /// is not run again whatever the policy (the run still holds its thread).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// When the task may start, as an instant of this process's clock (`None`: now).
    pub(crate) fn not_before(&self) -> Option<Instant> {
        match self.delay {
            Delay::Now => None,
            // A wait too long for the clock waits as long as the clock allows (a
            // century), rather than not at all.
            Delay::Countdown(d) => Some(later(d)),
            Delay::Eta(ms) => {
                let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                (!left.is_zero()).then(|| later(left))
            }
        }
    }

    /// Checks the timeout, for pools and clusters alike: none, or longer than zero.
    pub(crate) fn check_timeout(&self) -> Result<(), String> {
        if self.timeout == Some(Duration::ZERO) {
            return Err("a task timeout must be longer than zero".into());
        }
        Ok(())
    }

    /// Checks the options a local pool takes: no cluster option, no zero timeout.
    pub(crate) fn check_local(&self) -> Result<(), TaskError> {
        self.check_timeout().map_err(TaskError::InvalidArgument)?;
        #[cfg(feature = "redis")]
        if self.idempotency_key.is_some() || self.queue.is_some() {
            return Err(TaskError::InvalidArgument(
                "an idempotency key and a queue are a cluster's options; a local pool has neither"
                    .into(),
            ));
        }
        Ok(())
    }
}

pub(crate) use crate::deadline::later;
