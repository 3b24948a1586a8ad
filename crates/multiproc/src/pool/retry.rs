//! [`RetryPolicy`]: when and after how long a failed task runs again.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;

use super::TaskError;

/// How a retry delay is randomised, so that many tasks failing together do not all
/// come back at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly the computed delay.
    #[default]
    None,
    /// A random delay between zero and the computed one.
    Full,
    /// Half the computed delay, plus a random part of the other half.
    Equal,
}

type RetryIf = Arc<dyn Fn(&TaskError) -> bool + Send + Sync>;

/// When a failed task is run again, and after how long: at most `max_attempts` runs in
/// all, with delays growing from `base` by `factor` up to `max_delay`, randomised by
/// `jitter`, for the failures `retry_if` accepts (by default a worker that died, a task
/// that timed out, and a fallible task that returned an error value, on a pool or a
/// cluster; not a panic, which would most likely happen again).
///
/// The delays come from [`backon`]'s exponential schedule.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Jitter, RetryPolicy, TaskError};
///
/// let policy = RetryPolicy::attempts(3)
///     .backoff(Duration::from_millis(10), 2.0, Duration::from_secs(1))
///     .jitter(Jitter::None);
/// assert_eq!(policy.delay(1), Duration::from_millis(10));
/// assert_eq!(policy.delay(2), Duration::from_millis(20));
/// assert!(policy.should_retry(1, &TaskError::TimedOut));
/// assert!(!policy.should_retry(3, &TaskError::TimedOut)); // three runs in all
/// assert!(!policy.should_retry(1, &TaskError::Cancelled));
/// ```
#[derive(Clone)]
#[must_use = "a policy does nothing until given to a pool, a job or a supervisor"]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    factor: f32,
    max_delay: Duration,
    jitter: Jitter,
    retry_if: Option<RetryIf>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::never()
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("base", &self.base)
            .field("factor", &self.factor)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .field("custom_retry_if", &self.retry_if.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// One attempt: nothing is retried (the default).
    pub fn never() -> Self {
        RetryPolicy::attempts(1)
    }

    /// At most `max_attempts` runs in all (at least one), 100 ms apart at first, the
    /// delay doubling up to 30 s, without jitter.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            base: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: Jitter::None,
            retry_if: None,
        }
    }

    /// Delays: `base` before the first retry, then multiplied by `factor` (at least 1)
    /// each time, never more than `max_delay`.
    pub fn backoff(mut self, base: Duration, factor: f32, max_delay: Duration) -> Self {
        self.base = base;
        self.factor = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self.max_delay = max_delay.max(base);
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Which failures are retried (instead of the default: a worker that died, a task
    /// that timed out, and a fallible task that returned an error). A predicate that
    /// panics counts as `false`: the failure stands, and the panic is logged (it runs on
    /// the pool's own thread, which it must not end).
    /// It may run while the executor holds a lock of its own (a process pool's state):
    /// it must decide from the error alone, and not call into that executor (a submit, a
    /// wait), which would wait for the lock for ever. A [`Scheduler`](crate::Scheduler)'s
    /// predicate that calls into its scheduler panics, saying so, instead (the failure
    /// stands).
    pub fn retry_if(mut self, f: impl Fn(&TaskError) -> bool + Send + Sync + 'static) -> Self {
        self.retry_if = Some(Arc::new(f));
        self
    }

    /// Base delay, factor, longest delay and jitter (to send the policy to a worker).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (Duration, f32, Duration, Jitter) {
        (self.base, self.factor, self.max_delay, self.jitter)
    }

    /// The most runs of one task.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether a task that has run `attempts` times and failed with `error` runs again.
    pub fn should_retry(&self, attempts: u32, error: &TaskError) -> bool {
        attempts < self.max_attempts
            && match &self.retry_if {
                Some(f) => crate::bootstrap::catching(|| f(error)).unwrap_or_else(|caught| {
                    tracing::warn!(
                        "a retry policy's retry_if panicked, so the failure stands: {caught}"
                    );
                    false
                }),
                None => matches!(
                    error,
                    TaskError::WorkerDied(_) | TaskError::TimedOut | TaskError::Failed(_)
                ),
            }
    }

    /// The delay before retry number `retry` (1 for the first retry), jitter included.
    pub fn delay(&self, retry: u32) -> Duration {
        let schedule = backon::ExponentialBuilder::new()
            .with_min_delay(self.base)
            .with_factor(self.factor)
            .with_max_delay(self.max_delay)
            .without_max_times()
            .build();
        // Stepped through until the schedule stops growing (at its most, or a factor
        // that does not grow it): a retry number from a message (a cluster task's
        // attempt count) may be billions.
        let mut computed = self.base;
        for (i, d) in schedule.take(retry.max(1) as usize).enumerate() {
            let settled = i > 0 && d <= computed;
            computed = d;
            if settled || d >= self.max_delay {
                break;
            }
        }
        match self.jitter {
            Jitter::None => computed,
            Jitter::Full => computed.mul_f64(fastrand::f64()),
            Jitter::Equal => computed / 2 + (computed / 2).mul_f64(fastrand::f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retry number in the billions (from a message) costs no more than a small one,
    /// and gives the schedule's most; a factor that does not grow it gives the base.
    #[test]
    fn a_huge_retry_number_is_quick() {
        let ms = Duration::from_millis;
        let policy = RetryPolicy::attempts(u32::MAX).backoff(ms(10), 2.0, ms(60_000));
        let t = std::time::Instant::now();
        assert_eq!(policy.delay(u32::MAX), ms(60_000));
        assert_eq!(policy.delay(1), ms(10));
        assert!((ms(39)..ms(41)).contains(&policy.delay(3)));
        let flat = policy.clone().backoff(ms(10), 1.0, ms(60_000));
        assert_eq!(flat.delay(u32::MAX), ms(10));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
}
