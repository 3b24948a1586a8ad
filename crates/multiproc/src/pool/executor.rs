//! [`Executor`]: the surface [`Pool`], [`ThreadPool`] and the cluster client share, so
//! that library code can be generic over where its work runs.

use std::error::Error;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Pool, Task, TaskError, TaskOptions, ThreadPool};
use crate::wire::codec::{self, Kept};

/// Where tasks run: a [`Pool`] of processes, a [`ThreadPool`], or (feature `redis`) a
/// `cluster::Cluster` of machines; Python's `concurrent.futures.Executor`.
///
/// A task's function is named by [`Func`](Self::Func): a plain `fn(A) -> R` on the
/// pools (the common denominator: a process pool cannot take a capturing closure, and
/// a thread pool takes any `fn`), a `cluster::TaskDef<A, R>` on a cluster (a function
/// pointer does not cross machines). Generic code takes the function as an
/// `E::Func<A, R>` from its caller, who knows the executor. Arguments and results are
/// serde values that can be sent (the bounds of the process pool and the cluster
/// together).
///
/// # Examples
///
/// ```
/// use multiproc::{Executor, TaskError, ThreadPool};
///
/// /// Sums the squares, wherever the executor runs them.
/// fn sum_of_squares<E: Executor>(ex: &E, square: E::Func<u64, u64>) -> Result<u64, E::Error>
/// where
///     E::Func<u64, u64>: Copy,
/// {
///     let first = ex.submit(square, 3)?.wait().map_err(E::Error::from)?;
///     let rest = ex.map(square, 4..6)?;
///     Ok(first + rest.iter().sum::<u64>())
/// }
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = ThreadPool::new(2)?;
/// assert_eq!(sum_of_squares(&pool, square)?, 9 + 16 + 25);
/// pool.shutdown(true, false);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Executor {
    /// What names a task's function here.
    type Func<A, R>;
    /// Why a submission (or a map) fails: [`TaskError`] on the pools, a
    /// `ClusterError` on a cluster (which can also fail to reach Redis).
    type Error: Error + From<TaskError>;

    /// Runs `f(args)` and returns a [`Task`] for its result (Python's `submit`).
    ///
    /// # Errors
    ///
    /// The task could not be submitted (a closed pool, arguments that do not encode,
    /// ...).
    fn submit<A, R>(&self, f: Self::Func<A, R>, args: A) -> Result<Task<R>, Self::Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static;

    /// As [`submit`](Self::submit), with options of its own ([`TaskOptions`]).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and options the executor refuses.
    fn submit_with<A, R>(
        &self,
        f: Self::Func<A, R>,
        args: A,
        opts: TaskOptions,
    ) -> Result<Task<R>, Self::Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static;

    /// Runs `f` on every item and returns the results in order (Python's `map`).
    ///
    /// # Errors
    ///
    /// A submission error, or the first failure in item order.
    fn map<A, R, I>(&self, f: Self::Func<A, R>, items: I) -> Result<Vec<R>, Self::Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>;

    /// Runs `f` on every item lazily, with bounded work in flight; each item's own
    /// result, in item order (Python's `imap`).
    fn imap<A, R, I>(
        &self,
        f: Self::Func<A, R>,
        items: I,
    ) -> impl Iterator<Item = Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>;

    /// Python's `Executor.shutdown(wait, cancel_futures)`: refuses new tasks; with
    /// `cancel_pending`, tasks not yet started end as [`TaskError::Cancelled`] (on the
    /// local pools, so do tasks submitted by another thread as the shutdown runs, and
    /// retries of running tasks that fail); with `wait`, returns once every task has
    /// finished.
    ///
    /// Unlike Python's executors, which run their pending tasks after
    /// `shutdown(wait=False)` until the interpreter exits, an executor dropped early
    /// ends its tasks then, as its own drop does: a [`ThreadPool`] fails those still
    /// queued with [`TaskError::PoolClosed`] (and waits for the running ones), a
    /// [`Pool`] terminates (its queued tasks fail, its workers are killed), a cluster
    /// client stops waiting (its tasks fail here with `PoolClosed`, though workers may
    /// still run them). Keep the executor until the tasks are done (`shutdown(true,
    /// ..)`, or the tasks' `wait`) before dropping it.
    fn shutdown(&self, wait: bool, cancel_pending: bool);
}

impl Executor for Pool {
    type Func<A, R> = fn(A) -> R;
    type Error = TaskError;

    fn submit<A, R>(&self, f: fn(A) -> R, args: A) -> Result<Task<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Pool::submit(self, f, args)
    }

    fn submit_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        opts: TaskOptions,
    ) -> Result<Task<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Pool::submit_with(self, f, args, opts)
    }

    fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Pool::map(self, f, items)
    }

    fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> impl Iterator<Item = Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Pool::imap(self, f, items)
    }

    fn shutdown(&self, wait: bool, cancel_pending: bool) {
        Pool::shutdown(self, wait, cancel_pending);
    }
}

impl Executor for ThreadPool {
    type Func<A, R> = fn(A) -> R;
    type Error = TaskError;

    fn submit<A, R>(&self, f: fn(A) -> R, args: A) -> Result<Task<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ThreadPool::submit(self, move || f(args))
    }

    /// A retried run needs its argument again: the argument is encoded once at
    /// submission (with a retry policy only) and decoded for each retry.
    fn submit_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        opts: TaskOptions,
    ) -> Result<Task<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let again = match &opts.retry {
            Some(_) => Some(Kept::new(codec::encode(&args).map_err(TaskError::Codec)?)),
            None => None,
        };
        let mut first = Some(args);
        ThreadPool::submit_fallible_with(
            self,
            move || -> Result<R, ArgsError> {
                let args = match (first.take(), &again) {
                    (Some(a), _) => a,
                    (None, Some(encoded)) => {
                        let copy = encoded.try_clone().map_err(|e| ArgsError(e.to_string()))?;
                        codec::decode(&copy.bytes, copy.fds)
                            .map_err(|e| ArgsError(e.to_string()))?
                    }
                    (None, None) => return Err(ArgsError("no argument left for a retry".into())),
                };
                Ok(f(args))
            },
            opts,
        )
    }

    fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        ThreadPool::map(self, f, items)
    }

    fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> impl Iterator<Item = Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        ThreadPool::imap(self, f, items)
    }

    fn shutdown(&self, wait: bool, cancel_pending: bool) {
        ThreadPool::shutdown(self, wait, cancel_pending);
    }
}

/// A retried run's argument could not be made again from its encoding.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ArgsError(String);

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the argument of a retried run does not decode: {}",
            self.0
        )
    }
}
