//! Pools: [`Pool`] (worker processes) and [`ThreadPool`] (threads), with Python's
//! `Pool`/`Executor` surface. See `README.md` beside this file for how the process pool
//! survives its workers.

mod completion;
mod engine;
mod error;
mod executor;
mod fallible;
mod iter;
mod options;
mod retry;
pub(crate) mod task;
mod thread;
pub(crate) mod tickets;
mod timers;
pub(crate) mod worker;

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use completion::{AsCompleted, Return, as_completed, wait_tasks};
pub use error::{Failure, PoolError, TaskError};
pub use executor::Executor;
pub use iter::{Imap, ImapStream, ImapUnordered};
#[cfg(feature = "redis")]
pub(crate) use options::Delay;
pub use options::TaskOptions;
pub use retry::{Jitter, RetryPolicy};
pub use task::Task;
pub use thread::{ThreadImap, ThreadImapStream, ThreadPool, ThreadPoolBuilder};

use crate::ipc::channel::Received;
use crate::process::{Limits, SpawnError, StartMethod};
use crate::sys;
use crate::wire::codec::{self, Encoded, Kept};
use engine::{Config, OpenMap, PerTask, PoolInner};
pub(crate) use engine::{DEPTH_MAX, DEPTH_MIN};
use task::{Cancel, Cell, FromWorker, Sink, Slots};
use worker::JOB_HEADER;
use worker::{Chunk, ChunkWith, OneTask, TaskEntry};

/// Builds a [`Pool`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
    start_method: Option<StartMethod>,
    init: Option<Result<(TaskEntry, Kept), PoolError>>,
    max_tasks_per_child: Option<u64>,
    task_timeout: Option<Duration>,
    retry: RetryPolicy,
    name: String,
    limits: Limits,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            processes: None,
            start_method: None,
            init: None,
            max_tasks_per_child: None,
            task_timeout: None,
            retry: RetryPolicy::never(),
            name: "PoolWorker".into(),
            limits: Limits::new(),
        }
    }
}

impl PoolBuilder {
    /// The number of worker processes (default: [`cpu_count`](crate::cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// How workers are started (default: the process-wide start method).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Runs `f(args)` once in each worker before it takes tasks (Python's
    /// `initializer`/`initargs`), for example to open a connection kept in a static.
    ///
    /// If the initializer fails (panics) in three workers in a row (with no task run,
    /// whatever its outcome, in between), the pool stops trying: its tasks fail with
    /// [`TaskError::PoolBroken`].
    pub fn initializer<A>(mut self, f: fn(A), args: A) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.init = Some(match sys::entry::<OneTask, A, ()>(f) {
            Err(_) => Err(PoolError::Spawn(SpawnError::NotInExecutable)),
            Ok(entry) => codec::encode(&args)
                .map(|arg| (entry, Kept::new(arg)))
                .map_err(|e| PoolError::InvalidArgument(format!("initializer: {e}"))),
        });
        self
    }

    /// Replaces a worker after it has run this many tasks (Python's
    /// `maxtasksperchild`), to bound what leaks in long-lived workers.
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// A task that runs longer is stopped by killing its worker (which is replaced);
    /// it fails with [`TaskError::TimedOut`], or is retried if the retry policy says so.
    /// In a map, each item is a task: the timeout counts from the item's start, not
    /// from its chunk's (so it does not depend on the chunk size). A chunk's own work
    /// is timed as an item: the decoding of its arguments (before its first item
    /// starts) and the encoding of its results (after its last item) are each given the
    /// timeout.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Which failed tasks run again, and when (default: none). In a map, what a retry
    /// runs again is the chunk: an item retried (its worker died, it outran the task
    /// timeout, or its failure is one the policy retries) has the items before it in
    /// its chunk, which had run, run again with it. Items whose side effects must not
    /// repeat want [`map_chunked`](Pool::map_chunked) with chunks of 1, or no retry.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The prefix of the workers' names (default `PoolWorker`: `PoolWorker-1`, ...).
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.name = prefix.into();
        self
    }

    /// Resource limits each worker runs under (see [`Limits`]): memory (a cgroup per
    /// worker where one can be made), CPU time (counted per task: a worker's allowance
    /// starts afresh with each task, and with each item of a map, and again for the
    /// encoding of a chunk's results), open files, ... A
    /// task that runs into one fails
    /// with [`TaskError::LimitExceeded`] (not retried by default: it would likely run
    /// into it again), and a worker a limit ended is replaced; the other tasks go on.
    ///
    /// A worker's memory is its own and its tasks' together, one task at a time: what a
    /// task leaves allocated (a cache in a static) counts against the next.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use multiproc::{Limit, Limits, Pool, TaskError};
    ///
    /// fn render(page: u32) -> usize {
    ///     // ... code that may loop or allocate without bound on some inputs ...
    ///     page as usize
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let _guard = multiproc::init();
    /// let pool = Pool::builder()
    ///     .processes(4)
    ///     .limits(Limits::new().memory(512 << 20).cpu_time(Duration::from_secs(10)))
    ///     .build()?;
    /// for task in (0..100).map(|page| pool.submit(render, page)).collect::<Result<Vec<_>, _>>()? {
    ///     match task.wait() {
    ///         Ok(bytes) => println!("{bytes}"),
    ///         Err(TaskError::LimitExceeded { limit: Limit::Memory, .. }) => eprintln!("too big"),
    ///         Err(e) => eprintln!("{e}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    ///
    /// [`PoolError::InvalidArgument`] for zero workers, a zero `max_tasks_per_child` or
    /// `task_timeout`, or an initializer whose argument does not encode;
    /// [`PoolError::Spawn`] if a worker cannot be started (including
    /// [`SpawnError::NotInitialized`](crate::SpawnError::NotInitialized) without
    /// [`init`](crate::init)).
    pub fn build(self) -> Result<Pool, PoolError> {
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        let invalid = |why: &str| Err(PoolError::InvalidArgument(why.into()));
        if processes == 0 {
            return invalid("a pool needs at least one worker process");
        }
        if self.max_tasks_per_child == Some(0) {
            return invalid("max_tasks_per_child must be at least 1");
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return invalid("task_timeout must be longer than zero");
        }
        let init = match self.init {
            Some(Err(e)) => return Err(e),
            Some(Ok(init)) => Some(init),
            None => None,
        };
        if !crate::bootstrap::initialized() {
            return Err(PoolError::Spawn(SpawnError::NotInitialized));
        }
        // Checked once here, as each worker's start would.
        let armed = self.limits.plan(false)?.armed;
        let config = Config {
            processes,
            start_method: self.start_method,
            init,
            max_tasks_per_child: self.max_tasks_per_child,
            task_timeout: self.task_timeout,
            retry: self.retry,
            name: self.name,
            identity: crate::bootstrap::exe_identity()?,
            limits: self.limits,
            armed,
        };
        let (inner, engine) = PoolInner::start(config)?;
        Ok(Pool {
            inner,
            engine: Some(engine),
        })
    }
}

/// A pool of worker processes that run functions: Python's `multiprocessing.Pool` and
/// `ProcessPoolExecutor`, without their failure modes.
///
/// Tasks are plain functions (`fn(A) -> R`, closures that capture nothing included),
/// with arguments and results that serde can encode; handles such as a
/// [`Queue`](crate::Queue) can be arguments too. [`map`](Pool::map) runs a function on
/// every item of an iterator (chunked automatically); [`imap`](Pool::imap) and
/// [`imap_unordered`](Pool::imap_unordered) do so lazily, with bounded work in flight;
/// [`submit`](Pool::submit) returns a [`Task`] to wait for or to await.
///
/// A worker that dies while running a task (a crash, `abort()`, `exit`, `SIGKILL`, the
/// OOM killer) fails that task only, with [`TaskError::WorkerDied`] (or runs it again,
/// per the [`RetryPolicy`]); the pool starts a replacement and every other task
/// completes. A task that runs past the [`task_timeout`](PoolBuilder::task_timeout) is
/// stopped by killing its worker. A panic fails its task with
/// [`TaskError::Panicked`], and the worker goes on. Workers are daemon processes: they
/// die with the program, however it ends.
///
/// Ctrl-C is the program's to decide: a terminal sends `SIGINT` to every process of
/// its foreground group, and the workers do nothing with it (a handler that does
/// nothing; an initializer may choose otherwise). A program that does not handle it
/// ends, its workers with it; one that does can let the running tasks finish. A task's
/// system calls that a handled signal interrupts and the kernel does not restart (a
/// `poll`, a read with a timeout) return `EINTR` then, as they would in any program that
/// handles a signal. Programs a task runs (`std::process::Command`) and processes it
/// spawns stop on Ctrl-C as usual.
///
/// Dropping a pool terminates it: its workers are killed and reaped, and tasks not yet
/// finished fail with [`TaskError::PoolClosed`]. Call [`join`](Pool::join) first to let
/// them finish.
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let pool = multiproc::Pool::new(4)?;
/// let squares = pool.map(square, 0..10)?;
/// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// let task = pool.submit(square, 12)?;
/// assert_eq!(task.wait()?, 144);
/// # Ok(())
/// # }
/// ```
pub struct Pool {
    inner: Arc<PoolInner>,
    /// The engine's thread (see `engine.rs`).
    engine: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (tasks, closed) = self.inner.summary();
        f.debug_struct("Pool")
            .field("processes", &self.inner.processes())
            .field("tasks", &tasks)
            .field("closed", &closed)
            .finish()
    }
}

impl Pool {
    /// A pool of `processes` workers, with the default settings.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for a pool with other settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.inner.processes()
    }

    /// The pids of the workers alive now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner.worker_pids()
    }

    /// Runs `f(args)` in a worker and returns a [`Task`] for its result (Python's
    /// `apply_async` and `Executor.submit`).
    ///
    /// `f` is a function or a closure that captures nothing, as for
    /// [`spawn`](crate::spawn); a capturing closure does not compile (a
    /// [`ThreadPool`] takes those):
    ///
    /// ```compile_fail,E0308
    /// let _guard = multiproc::init();
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let offset = 1u32;
    /// let task = pool.submit(move |x: u32| x + offset, 41);
    /// ```
    ///
    /// # Errors
    ///
    /// [`TaskError::PoolClosed`] after [`close`](Self::close);
    /// [`TaskError::Codec`] if `args` does not encode; [`TaskError::PoolBroken`].
    #[doc(alias = "apply_async")]
    pub fn submit<A, R>(&self, f: fn(A) -> R, args: A) -> Result<Task<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_task(entry(f, false)?, &args, task::decode::<R>, None)
    }

    /// As [`submit`](Self::submit), with options of its own: a timeout (the worker is
    /// killed past it), a retry policy, a delay ([`TaskOptions`]; Celery's
    /// `apply_async(countdown=..)`). A delayed task waits in the pool, not in a worker.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`TaskError::InvalidArgument`] for a zero timeout or
    /// a cluster's option (an idempotency key, a queue).
    pub fn submit_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        opts: TaskOptions,
    ) -> Result<Task<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let per_task = per_task(&opts, None)?;
        self.submit_task(entry(f, false)?, &args, task::decode::<R>, per_task)
    }

    /// Runs a function that fails with its own error: an `Err` is the task's failure,
    /// [`TaskError::Failed`] carrying the error (its text, its encoding, and the value:
    /// see [`Failure`]), which the retry policy sees as any other failure (Celery's
    /// `autoretry_for`; by default [`RetryPolicy`] retries it). An `Ok` is the task's
    /// value.
    ///
    /// ```no_run
    /// use multiproc::{Pool, RetryPolicy, TaskError, TaskOptions};
    ///
    /// #[derive(Debug, serde::Serialize, serde::Deserialize)]
    /// struct Busy(u32);
    ///
    /// impl std::fmt::Display for Busy {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         write!(f, "busy for {} s", self.0)
    ///     }
    /// }
    ///
    /// fn fetch(url: String) -> Result<usize, Busy> {
    ///     if url.is_empty() { Err(Busy(3)) } else { Ok(url.len()) }
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let _guard = multiproc::init();
    /// let pool = Pool::new(2)?;
    /// match pool.submit_fallible(fetch, String::new())?.wait() {
    ///     Err(TaskError::Failed(f)) => assert_eq!(f.decode::<Busy>()?.0, 3),
    ///     other => panic!("{other:?}"),
    /// }
    /// // Retried on its own error only when it says it is busy:
    /// let policy = RetryPolicy::attempts(3).retry_if(|e| {
    ///     e.failure().is_some_and(|f| f.downcast_ref::<Busy>().is_some())
    /// });
    /// let task = pool.submit_fallible_with(fetch, "x".into(), TaskOptions::new().retry(policy))?;
    /// assert_eq!(task.wait()?, 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub fn submit_fallible<A, T, E>(
        &self,
        f: fn(A) -> Result<T, E>,
        args: A,
    ) -> Result<Task<T>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + std::fmt::Display + Send + Sync + 'static,
    {
        self.submit_fallible_with(f, args, TaskOptions::new())
    }

    /// As [`submit_fallible`](Self::submit_fallible), with options of its own (see
    /// [`submit_with`](Self::submit_with)).
    ///
    /// # Errors
    ///
    /// As [`submit_with`](Self::submit_with).
    pub fn submit_fallible_with<A, T, E>(
        &self,
        f: fn(A) -> Result<T, E>,
        args: A,
        opts: TaskOptions,
    ) -> Result<Task<T>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + std::fmt::Display + Send + Sync + 'static,
    {
        let per_task = per_task(&opts, Some(fallible::failure_in::<E>))?;
        self.submit_task(
            entry(f, false)?,
            &args,
            fallible::decode_ok::<T, E>,
            per_task,
        )
    }

    fn submit_task<A: Serialize, R>(
        &self,
        entry: TaskEntry,
        args: &A,
        decode: fn(Received) -> Result<R, TaskError>,
        per_task: Option<Box<PerTask>>,
    ) -> Result<Task<R>, TaskError>
    where
        R: Send + 'static,
    {
        let payload = encode_job(args)?;
        let cell = Cell::encoded(decode);
        let sink: Arc<dyn Sink<Received>> = Arc::new(FromWorker(Arc::clone(&cell)));
        let id = self.inner.submit(entry, payload, sink, 0, per_task)?;
        let pool: Weak<dyn Cancel> = Arc::downgrade(&self.inner) as Weak<dyn Cancel>;
        Ok(Task::new(cell, id, Some(pool)))
    }

    /// Runs `f(args)` in a worker and waits for the result (Python's `apply`).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and the [`TaskError`] the task ended with.
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit(f, args)?.wait()
    }

    /// As [`apply`](Self::apply), waiting at most `timeout` (Python's
    /// `apply_async(..).get(timeout)`). A task not done by then is cancelled (stopped,
    /// if it runs): nobody could wait for it any more.
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply), plus [`TaskError::Timeout`].
    pub fn apply_timeout<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        timeout: Duration,
    ) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut task = self.submit(f, args)?;
        let out = task.wait_timeout(timeout);
        if matches!(out, Err(TaskError::Timeout)) {
            task.cancel();
        }
        out
    }

    /// Runs `f` on every item, in chunks (about sixteen per worker: more than Python's
    /// four, so that the workers start sooner and the parent decodes one chunk while
    /// they run the next; see [`map_chunked`](Self::map_chunked) to choose), and
    /// returns the results in order.
    ///
    /// # Errors
    ///
    /// The first failure in item order: a panic, a worker that died running the chunk
    /// with that item, ... Items after it may or may not have run.
    pub fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_until(f, items, None)
    }

    /// As [`map`](Self::map), with `chunk_size` items per task (Python's `chunksize`).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn map_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunk_size: usize,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_opened(
            self.inner.open_map(),
            f,
            items,
            Some(chunk_size),
            None,
            &mut |_| {},
        )
    }

    /// As [`map`](Self::map), waiting at most `timeout` for all the results (Python's
    /// `map_async(..).get(timeout)`). The chunks not done by then are cancelled
    /// (stopped, if they run): nobody could read their results any more.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), plus [`TaskError::Timeout`].
    pub fn map_timeout<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        timeout: Duration,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_until(f, items, Instant::now().checked_add(timeout))
    }

    /// `map` with the default chunking, waiting until `deadline`.
    fn map_until<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        deadline: Option<Instant>,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_opened(self.inner.open_map(), f, items, None, deadline, &mut |_| {})
    }

    /// As [`map`](Self::map), showing an `indicatif` progress bar on stderr that
    /// advances as results come in, in the items' order (a slow first chunk holds it
    /// while later ones finish); a map that fails leaves the bar where it stopped.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    #[cfg(feature = "progress")]
    pub fn map_with_progress<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        // Open before the items are taken (see `map_opened`).
        let open = self.inner.open_map();
        let items: Vec<A> = items.into_iter().collect();
        // No bar for a map refused at once (the pool is closed).
        let bar = open
            .is_ok()
            .then(|| indicatif::ProgressBar::new(items.len() as u64));
        let out = self.map_opened(open, f, items, None, None, &mut |n| {
            if let Some(bar) = &bar {
                bar.inc(n as u64);
            }
        });
        if let Some(bar) = &bar {
            thread::end_bar(bar, out.is_ok());
        }
        out
    }

    /// Maps `f` over the items, the map opened (or refused: `open`, taken before the
    /// first item is, so that a map called before `close` runs whole however long its
    /// iterator takes to give its items). A map of no items returns none, refused or
    /// not.
    fn map_opened<A, R, I>(
        &self,
        open: Result<OpenMap<'_>, TaskError>,
        f: fn(A) -> R,
        items: I,
        chunk_size: Option<usize>,
        deadline: Option<Instant>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return Ok(Vec::new());
        }
        let open = open?;
        let key = (entry(f, true)?, 0);
        self.map_items(open, key, items, chunk_size, deadline, progress)
    }

    /// Runs `f(&ctx, item)` on every item, in chunks, and returns the results in order:
    /// Python's `functools.partial` or initializer pattern without globals. The context
    /// is encoded once and sent once to each worker that runs a chunk of the map (not
    /// once per item or per chunk), and decoded there once; the workers drop it when
    /// the map is over. Use it for what every call needs and is costly to send: a
    /// model, a lookup table, a configuration.
    ///
    /// ```no_run
    /// use std::collections::HashMap;
    ///
    /// fn price(rates: &HashMap<String, f64>, (currency, amount): (String, f64)) -> f64 {
    ///     amount * rates.get(&currency).copied().unwrap_or(f64::NAN)
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let _guard = multiproc::init();
    /// let pool = multiproc::Pool::new(2)?;
    /// let rates = HashMap::from([("EUR".to_string(), 1.1), ("GBP".to_string(), 1.3)]);
    /// let orders = vec![("EUR".to_string(), 10.0), ("GBP".to_string(), 2.0)];
    /// let prices = pool.map_with(rates, price, orders)?;
    /// assert_eq!(prices, [11.0, 2.6]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map); [`TaskError::Codec`] if the context does not encode (or,
    /// for every item, does not decode in a worker).
    pub fn map_with<C, A, R, I>(
        &self,
        ctx: C,
        f: fn(&C, A) -> R,
        items: I,
    ) -> Result<Vec<R>, TaskError>
    where
        C: Serialize + DeserializeOwned + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let open = self.inner.open_map();
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return Ok(Vec::new());
        }
        let open = open?;
        let entry = sys::entry_with_context::<ChunkWith, C, A, R>(f)
            .map_err(|_| TaskError::NotInExecutable)?;
        // A chunk names its context: the worker reads these words as a context entry.
        let entry = TaskEntry::from_words(entry.to_words());
        let context = self.inner.add_context(encode_job(&ctx)?);
        // Dropped by the workers however the map ends, by an unwind too.
        struct Ends<'a>(&'a PoolInner, u64);
        impl Drop for Ends<'_> {
            fn drop(&mut self) {
                self.0.end_context(self.1);
            }
        }
        let _ends = Ends(&self.inner, context);
        self.map_items(open, (entry, context), items, None, None, &mut |_| {})
    }

    /// Sends the items in chunks of `chunk_size` (by default chosen for how many there
    /// are) as jobs of `entry` (with `context`, for `map_with`) and collects the
    /// results in order, until `deadline`. `open`: the map, counted open since before
    /// its caller took the first item (its chunks go on after a `close`).
    ///
    /// Each chunk is taken from the iterator into one reused vector, encoded, and
    /// dropped: the items are never all held at once (for 100,000 `u64`s, collecting
    /// them first cost the parent 800 KB of fresh pages, about 200 page faults, per
    /// map). The length the iterator gives only sizes the chunks: one that yields more
    /// or fewer items than it said still has every item mapped, and only those. An
    /// iterator that does not know its length (a filter) is collected first.
    fn map_items<A, R>(
        &self,
        open: OpenMap<'_>,
        (entry, context): (TaskEntry, u64),
        items: impl Iterator<Item = A>,
        chunk_size: Option<usize>,
        deadline: Option<Instant>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let len = match items.size_hint() {
            (low, Some(high)) if low == high => low,
            _ => {
                // Pushed one by one: `collect` would trust the iterator's lower bound.
                let mut all = Vec::new();
                for item in items {
                    all.push(item);
                }
                let key = (entry, context);
                return self.map_items(open, key, all.into_iter(), chunk_size, deadline, progress);
            }
        };
        let chunk_size = chunk_size
            .unwrap_or_else(|| default_chunk(len, self.processes()))
            .max(1);
        let stream = Slots::<Received>::new(true);
        let sink: Arc<dyn Sink<Received>> = stream.clone();
        // The tasks submitted; those not yet sent to a worker are taken back if this
        // returns early, or unwinds (from the iterator, say).
        let mut ids = Submitted {
            inner: &self.inner,
            ids: Vec::new(),
            from: 0,
        };
        // Its chunks go on after a `close` (not after a `terminate`).
        let _open = open;
        let mut feed = Feed {
            items,
            chunk: Vec::with_capacity(chunk_size.min(len).min(1 << 16)),
            chunk_size,
            more: true,
            expect: 64,
            sizes: Vec::new(),
            ahead: 0,
            batch: 1,
            workers: self.processes().max(1),
        };
        let mut out = Vec::new();
        // A length that the iterator got wrong is no reason to fail.
        let _ = out.try_reserve(len);
        let helper = self.inner.helper();
        let mut slot = 0;
        loop {
            ids.from = slot;
            feed.top_up(slot, &mut |jobs| {
                let submitted = self
                    .inner
                    .submit_many((entry, context), jobs, &sink, true)?;
                ids.ids.extend(submitted);
                Ok(())
            })?;
            let Some(&(expected, bytes)) = feed.sizes.get(slot) else {
                break;
            };
            let Some((_, outcome)) = stream.take_until(Some(slot), deadline, &helper) else {
                // Cancelled, running ones stopped: nothing left for the guard to take back.
                for &id in &ids.ids[slot..] {
                    self.inner.cancel(id);
                }
                ids.from = ids.ids.len();
                return Err(TaskError::Timeout);
            };
            feed.ahead -= bytes;
            // Straight into `out`: no vector per chunk (for trivial tasks, building one
            // and moving it over was most of a map's time, in page faults as much as
            // in copies).
            let before = out.len();
            // The slots this chunk's values go to, faulted in at once if they are fresh.
            let spare = out.spare_capacity_mut();
            let fill = expected.min(spare.len());
            sys::prefault(&mut spare[..fill]);
            task::decode_chunk_into(outcome, &mut out)?;
            if out.len() - before != expected {
                return Err(TaskError::Codec(crate::CodecError::new(format!(
                    "a chunk of {expected} items came back with {} results",
                    out.len() - before
                ))));
            }
            progress(expected);
            slot += 1;
        }
        ids.from = feed.sizes.len();
        Ok(out)
    }

    /// Runs `f` on every item, one task each, lazily: items are taken from `items` as
    /// results are consumed, with a bounded number in flight, so an endless iterator
    /// works. Results come in item order (Python's `imap`). If `items` panics, the
    /// panic reaches the `next` that asked for items; the items it gave before still
    /// run, and a caller that catches the panic and goes on gets their results, then
    /// the end.
    ///
    /// For a progress bar, wrap the iterator with `indicatif`'s `ProgressIterator`
    /// (`pool.imap(f, items).progress_count(n)`): it advances as results are consumed.
    ///
    /// # Errors
    ///
    /// The iterator yields each item's own `Result`; if `f` cannot be named in the
    /// executable, every item fails with [`TaskError::NotInExecutable`].
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, entry(f, false), items.into_iter())
    }

    /// As [`imap`](Self::imap), with results in the order tasks finish (Python's
    /// `imap_unordered`).
    pub fn imap_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> ImapUnordered<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        ImapUnordered::new(self, entry(f, false), items.into_iter())
    }

    /// Refuses new tasks; those already submitted run to the end, then the workers exit.
    /// A `map` called before counts as submitted whole: its chunks go on being sent as
    /// it needs them, and the pool finishes after it, as in Python. An `imap`'s items
    /// not yet sent fail with [`TaskError::PoolClosed`]: it sends them only as its
    /// results are consumed, so a pool held open for it would make a `join` called
    /// before they are consumed wait forever.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Closes the pool and waits until every task has finished, every outcome has been
    /// handed over (the callbacks that run on other threads, one that cancelled its
    /// task or one that routes outcomes as it waits, included), and every worker has
    /// exited.
    ///
    /// Called from a callback that another thread runs (one that cancelled its task,
    /// say), it waits for all of that but the outcomes that thread is handing over: those
    /// wait for the callback. Called from a callback the pool's own thread runs, it only closes the pool: that
    /// thread finishes it, and cannot while it waits. So too from a callback run by a
    /// thread whose `map` of this pool is under way (it routes outcomes while it waits,
    /// running their callbacks): the pool finishes only after that map.
    pub fn join(&self) {
        self.close();
        if self.inner.finishing_waits_for_caller() {
            return;
        }
        self.inner.wait_finished(None);
    }

    /// As [`join`](Self::join), for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`PoolError::Timeout`] if tasks still run: the pool stays closed and can be
    /// joined again. [`PoolError::InvalidArgument`] if called from a callback the pool's
    /// own thread runs, or one run by a thread inside a `map` of this pool (the wait
    /// could only time out); the pool is closed.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), PoolError> {
        self.close();
        if self.inner.finishing_waits_for_caller() {
            return Err(PoolError::InvalidArgument(
                "join_timeout called from a callback run by the pool's own thread, or by a \
                 thread inside a map of the pool, which the pool's end would wait for"
                    .into(),
            ));
        }
        if self
            .inner
            .wait_finished(Instant::now().checked_add(timeout))
        {
            Ok(())
        } else {
            Err(PoolError::Timeout)
        }
    }

    /// Python's `Executor.shutdown(wait, cancel_futures)`: closes the pool; with
    /// `cancel_pending`, tasks not yet started end as [`TaskError::Cancelled`] (running
    /// ones finish; one that fails is not retried, and ends `Cancelled`); with `wait`, waits until every task has finished and every worker
    /// has exited ([`join`](Self::join)).
    pub fn shutdown(&self, wait: bool, cancel_pending: bool) {
        self.close();
        if cancel_pending {
            self.inner.cancel_pending();
        }
        if wait {
            self.join();
        }
    }

    /// Stops at once: kills the workers; tasks not finished fail with
    /// [`TaskError::PoolClosed`].
    pub fn terminate(&self) {
        self.inner.terminate();
    }

    pub(crate) fn inner(&self) -> &Arc<PoolInner> {
        &self.inner
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.terminate();
        if let Some(engine) = self.engine.take() {
            crate::sync::unpoisoned::join(engine);
        }
    }
}

/// A map's chunks, taken from its iterator, encoded and submitted as the map goes:
/// enough ahead of the results that every worker has the next chunk waiting, and no
/// more. Encoding every chunk first held them all at once (a 100,000-item map of
/// `u64`s: 32 buffers, 300 KB as varints, 800 KB written whole, and as much again of
/// results waiting to be decoded),
/// and a parent whose heap had not grown that far before paid a page fault for each
/// fresh page, on the path every result waits on; a few chunks ahead reuse the same
/// few buffers.
struct Feed<I, A> {
    items: I,
    /// The chunk being filled (reused).
    chunk: Vec<A>,
    chunk_size: usize,
    /// Whether the iterator may have more.
    more: bool,
    /// Bytes to allocate for the next chunk's encoding: the last one's, and some.
    expect: usize,
    /// Per chunk submitted: its item count and encoded size.
    sizes: Vec<(usize, usize)>,
    /// Encoded bytes of the chunks submitted and not yet decoded.
    ahead: usize,
    /// Chunks to encode before the next submission: 1, 2, 4, ... up to [`MAX_BATCH`],
    /// so that the workers start on the first chunk while the next are encoded, and a
    /// map of many small chunks takes the pool's lock only once per few thousand.
    batch: usize,
    workers: usize,
}

/// Encoded bytes a map keeps ahead of its results, at least (see [`Feed`]).
const MAP_AHEAD: usize = 64 << 10;
/// The most chunks one submission of a map holds (see [`Feed`]). A top-up of tiny
/// chunks stops at [`MAP_AHEAD`] bytes, a few thousand chunks, so the batch, which
/// doubles once per submission, would only grow on: with no cap it reached 2^29 in a
/// map of 100,000 one-item chunks, and the vector gathering a submission, sized for the
/// batch, asked for 30 GB.
const MAX_BATCH: usize = 4096;

impl<I: Iterator<Item = A>, A: Serialize> Feed<I, A> {
    /// Whether chunk `next` (the next to decode) leaves too little ahead: fewer than
    /// two chunks per worker, or half of [`MAP_AHEAD`].
    fn low(&self, next: usize) -> bool {
        self.more && (self.sizes.len() - next < 2 * self.workers || self.ahead < MAP_AHEAD / 2)
    }

    /// Whether enough is ahead of chunk `next` again: four chunks per worker and
    /// [`MAP_AHEAD`] bytes.
    fn full(&self, next: usize) -> bool {
        !self.more || (self.sizes.len() - next >= 4 * self.workers && self.ahead >= MAP_AHEAD)
    }

    /// Encodes and submits chunks, if what is ahead of chunk `next` ran low, until it
    /// is full again (or the items end).
    fn top_up(
        &mut self,
        next: usize,
        submit: &mut dyn FnMut(Vec<(usize, Encoded)>) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        if !self.low(next) {
            return Ok(());
        }
        while !self.full(next) {
            // Sized for what a top-up of tiny chunks holds at most, not the batch.
            let mut jobs = Unsent(Vec::with_capacity(self.batch.min(MAX_BATCH / 8)));
            while jobs.0.len() < self.batch && !self.full(next) {
                // One by one: `extend` would reserve what the iterator claims.
                for item in self.items.by_ref().take(self.chunk_size) {
                    self.chunk.push(item);
                }
                // A short chunk means the iterator said `None`: nothing follows.
                self.more = self.chunk.len() == self.chunk_size;
                if self.chunk.is_empty() {
                    break;
                }
                // Sized as the chunk before, with room to spare.
                let payload = encode_job_sized(self.chunk.as_slice(), self.expect)?;
                let took = payload.bytes.len() - JOB_HEADER;
                self.expect = took + took / 8;
                jobs.0.push((self.sizes.len(), payload));
                self.sizes.push((self.chunk.len(), took));
                self.ahead += took;
                self.chunk.clear();
            }
            if jobs.0.is_empty() {
                break;
            }
            submit(std::mem::take(&mut jobs.0))?;
            self.batch = (self.batch * 2).min(MAX_BATCH);
        }
        Ok(())
    }
}

/// Chunks of a map encoded and not yet submitted: if they never are (a later chunk of
/// the batch does not encode, the items' iterator panics), the counts their encodings
/// hold (a channel's receivers among the items) are given back, as a send that fails
/// gives them back; kept, they left those channels' senders never told that nobody
/// receives.
struct Unsent(Vec<(usize, Encoded)>);

impl Drop for Unsent {
    fn drop(&mut self) {
        for (_, job) in self.0.drain(..) {
            job.discard();
        }
    }
}

/// The tasks of a map: those from `from` on that are not yet sent to a worker are
/// taken back when it is dropped (the map returned early, or unwound).
struct Submitted<'a> {
    inner: &'a PoolInner,
    ids: Vec<u64>,
    from: usize,
}

impl Drop for Submitted<'_> {
    fn drop(&mut self) {
        if let Some(left) = self.ids.get(self.from..).filter(|l| !l.is_empty()) {
            self.inner.discard(left);
        }
    }
}

/// Items per chunk when a map does not say: about sixteen chunks per worker. Python's
/// four left the workers waiting while the parent encoded the first chunk and the parent
/// decoding the last while the workers idled: 100,000 trivial tasks on 2 workers took
/// 25 ns per item in chunks of 12,500 and 11–14 ns in chunks of 3,125 (a loop of maps,
/// medians of 40). Tasks that take long are balanced better too.
fn default_chunk(items: usize, processes: usize) -> usize {
    items.div_ceil(processes.max(1) * 16).max(1)
}

/// The function's entry for workers.
fn entry<A, R>(f: fn(A) -> R, chunked: bool) -> Result<TaskEntry, TaskError>
where
    A: DeserializeOwned,
    R: Serialize,
{
    if chunked {
        sys::entry::<Chunk, A, R>(f)
    } else {
        sys::entry::<OneTask, A, R>(f)
    }
    .map_err(|_| TaskError::NotInExecutable)
}

/// A submission's own settings, for the engine (`None` if it has none).
fn per_task(
    opts: &TaskOptions,
    fallible: Option<engine::FailureCheck>,
) -> Result<Option<Box<PerTask>>, TaskError> {
    opts.check_local()?;
    let per_task = PerTask {
        timeout: opts.timeout,
        retry: opts.retry.clone(),
        not_before: opts.not_before(),
        fallible,
    };
    let plain = per_task.timeout.is_none()
        && per_task.retry.is_none()
        && per_task.not_before.is_none()
        && per_task.fallible.is_none();
    Ok((!plain).then(|| Box::new(per_task)))
}

/// Encodes a task's argument after room for the job header.
fn encode_job<A: Serialize + ?Sized>(args: &A) -> Result<Encoded, TaskError> {
    encode_job_sized(args, 64)
}

/// As [`encode_job`], in a buffer with room for `expect` bytes of argument to begin
/// with.
fn encode_job_sized<A: Serialize + ?Sized>(args: &A, expect: usize) -> Result<Encoded, TaskError> {
    codec::encode_sized(&[0; JOB_HEADER], args, expect).map_err(TaskError::Codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a feed of `n` `u64`s in chunks of `chunk` to its end, taking results one by
    /// one as a map does; returns, per submission, the chunks it held and how far
    /// ahead of the next result the feed was once it was done.
    fn drive(n: u64, chunk: usize, workers: usize) -> Vec<(Vec<usize>, usize, usize)> {
        let mut feed = Feed {
            items: 0..n,
            chunk: Vec::new(),
            chunk_size: chunk,
            more: true,
            expect: 64,
            sizes: Vec::new(),
            ahead: 0,
            batch: 1,
            workers,
        };
        let mut log = Vec::new();
        let mut next = 0;
        let mut taken = 0u64;
        let mut chunks = 0;
        loop {
            let mut batches = Vec::new();
            feed.top_up(next, &mut |jobs| {
                // Every item exactly once, in order, each chunk in its slot.
                for (slot, payload) in &jobs {
                    let items: Vec<u64> =
                        codec::decode(&payload.bytes[JOB_HEADER..], Vec::new()).unwrap();
                    assert_eq!(*slot, chunks);
                    chunks += 1;
                    assert_eq!(items.first().copied(), Some(taken));
                    taken += items.len() as u64;
                }
                batches.push(jobs.len());
                Ok(())
            })
            .unwrap();
            if !batches.is_empty() {
                log.push((batches, feed.sizes.len() - next, feed.ahead));
            }
            let Some(&(_, bytes)) = feed.sizes.get(next) else {
                break;
            };
            feed.ahead -= bytes;
            next += 1;
        }
        assert_eq!(taken, n);
        assert_eq!(feed.ahead, 0);
        log
    }

    #[test]
    fn a_map_feeds_chunks_a_bounded_way_ahead_of_its_results() {
        // 100,000 `u64`s in 32 chunks of 25 KB: the first submission holds
        // one chunk, the next two, ... until four chunks per worker and `MAP_AHEAD`
        // bytes are out; then top-ups come once fewer than two per worker or half the
        // bytes are left, never all 32 at once.
        let log = drive(100_000, 3125, 2);
        let (first, ahead, bytes) = &log[0];
        assert_eq!(first[..3], [1, 2, 4], "{log:?}");
        assert!(*ahead >= 8 && *bytes >= MAP_AHEAD, "{log:?}");
        assert!(*ahead < 32, "everything was encoded at once: {log:?}");
        assert!(log.len() > 2, "{log:?}");
        for (_, ahead, bytes) in &log[1..log.len() - 1] {
            assert!(*ahead >= 8 && *bytes >= MAP_AHEAD, "{log:?}");
        }
        // Tiny chunks: the bytes decide, and a top-up is one batch of many chunks, not
        // a lock per chunk.
        let log = drive(20_000, 1, 2);
        let submissions: usize = log.iter().map(|(b, _, _)| b.len()).sum();
        assert!(
            submissions < 200,
            "{submissions} submissions for 20,000 chunks"
        );
        // A million tiny chunks: each top-up is a batch of thousands (the bytes bound
        // it), and the batch stops growing (it doubled at every top-up, and the vector
        // gathering a submission was allocated for the whole batch: this ran out of
        // memory).
        let log = drive(1_000_000, 1, 2);
        let largest = log.iter().flat_map(|(b, _, _)| b).max().copied();
        assert!(
            largest.is_some_and(|n| n > 1000 && n <= MAX_BATCH),
            "{largest:?}"
        );
        assert!(log.len() < 1000, "{} submissions", log.len());
        // Fewer items than one chunk (a length byte and five `u64`s), and none at all.
        assert_eq!(drive(5, 3125, 2), [(vec![1], 1, 1 + 5 * 8)]);
        assert!(drive(0, 3125, 2).is_empty());
    }
}
