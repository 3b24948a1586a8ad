//! Pools: [`Pool`] (worker processes) and [`ThreadPool`] (threads), with Python's
//! `Pool`/`Executor` surface. See `README.md` beside this file for how the process pool
//! survives its workers.

mod error;
mod iter;
mod manager;
mod retry;
pub(crate) mod task;
mod thread;
pub(crate) mod tickets;
pub(crate) mod worker;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{PoolError, TaskError};
pub use iter::{Imap, ImapUnordered};
pub use retry::{Jitter, RetryPolicy};
pub use task::Task;
pub use thread::{ThreadPool, ThreadPoolBuilder};

use crate::ipc::channel::{self, RawReceiver, RawSender, Received, SendFail};
use crate::process::{Builder, JoinHandle, SpawnError, StartMethod};
use crate::sync::lock;
use crate::sys::{self, Entry, OwnedFd};
use crate::wait::Wait;
use crate::wire::codec::{self, Encoded};
use task::{Cancel, Cell, Sink, Stream};
use tickets::{TicketState, Tickets};
use worker::{JOB_HEADER, JobHeader, WorkerArgs};

/// Jobs a worker holds at least (one running, one waiting), and at most.
const DEPTH_MIN: usize = 2;
const DEPTH_MAX: usize = 128;
/// A worker is kept this busy: it holds as many jobs as it runs in this time.
const DEPTH_TARGET: Duration = Duration::from_micros(200);
/// A worker whose task has run this long while another worker idles gives its queued
/// tasks to the idle one (so a short task never waits behind a long one).
const STEAL_AFTER: Duration = Duration::from_millis(1);
/// Consecutive workers that fail to start (or whose initializer fails) before the pool
/// gives up.
const MAX_START_FAILURES: u32 = 3;

/// Numbers worker names: `PoolWorker-1`, `PoolWorker-2`, ... across all pools.
static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

/// Builds a [`Pool`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    processes: Option<usize>,
    start_method: Option<StartMethod>,
    init: Option<Result<(Entry, Encoded), PoolError>>,
    max_tasks_per_child: Option<u64>,
    task_timeout: Option<Duration>,
    retry: RetryPolicy,
    name: String,
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
    /// If the initializer fails (panics) in three workers in a row, the pool stops
    /// trying: its tasks fail with [`TaskError::PoolBroken`].
    pub fn initializer<A>(mut self, f: fn(A), args: A) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.init = Some(match sys::task_entry::<A, ()>(f, false) {
            Err(_) => Err(PoolError::Spawn(SpawnError::NotInExecutable)),
            Ok(entry) => codec::encode(&args)
                .map(|arg| (entry, arg))
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
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Which failed tasks run again, and when (default: none).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The prefix of the workers' names (default `PoolWorker`: `PoolWorker-1`, ...).
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.name = prefix.into();
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
        let identity = crate::bootstrap::exe_identity()?;
        let capacity = processes * DEPTH_MAX;
        let tickets =
            Tickets::new(capacity).map_err(|e| PoolError::Io(std::io::Error::other(e)))?;
        let (results_tx, results_rx) = channel::channel(channel::DEFAULT_RING, None)?;
        let inner = Arc::new(PoolInner {
            config: Config {
                processes,
                start_method: self.start_method,
                init,
                max_tasks_per_child: self.max_tasks_per_child,
                task_timeout: self.task_timeout,
                retry: self.retry,
                name: self.name,
                identity,
            },
            tickets,
            results_rx,
            results_tx,
            bell: sys::doorbell()?,
            state: Mutex::new(State::new(processes, capacity)),
            changed: Condvar::new(),
        });
        for index in 0..processes {
            let worker = inner.start_worker(index)?;
            lock(&inner.state).workers[index] = Some(worker);
        }
        let manager = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("multiproc-pool".into())
                .spawn(move || manager::run(&inner))?
        };
        Ok(Pool {
            inner,
            manager: Some(manager),
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
    manager: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner.state);
        f.debug_struct("Pool")
            .field("processes", &self.inner.config.processes)
            .field("tasks", &st.tasks.len())
            .field("closed", &st.closed)
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
        self.inner.config.processes
    }

    /// The pids of the workers alive now.
    pub fn worker_pids(&self) -> Vec<u32> {
        lock(&self.inner.state)
            .workers
            .iter()
            .flatten()
            .map(|w| w.handle.pid())
            .collect()
    }

    /// Runs `f(args)` in a worker and returns a [`Task`] for its result (Python's
    /// `apply_async` and `Executor.submit`).
    ///
    /// # Errors
    ///
    /// [`TaskError::PoolClosed`] after [`close`](Self::close);
    /// [`TaskError::Codec`] if `args` does not encode; [`TaskError::PoolBroken`].
    pub fn submit<A, R>(&self, f: fn(A) -> R, args: A) -> Result<Task<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let entry = entry(f, false)?;
        let payload = encode_job(&args)?;
        let cell = Cell::<Received>::new();
        let id = self.inner.submit(entry, payload, cell.clone(), 0)?;
        let pool: Weak<dyn Cancel> = Arc::downgrade(&self.inner) as Weak<dyn Cancel>;
        Ok(Task::process(cell, id, pool))
    }

    /// Runs `f(args)` in a worker and waits for the result (Python's `apply`).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and the [`TaskError`] the task ended with.
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.submit(f, args)?.wait()
    }

    /// Runs `f` on every item, in chunks (Python's default: about four chunks per
    /// worker), and returns the results in order.
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
        let items: Vec<A> = items.into_iter().collect();
        let chunk = items.len().div_ceil(self.processes() * 4).max(1);
        self.map_chunked(f, items, chunk)
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
        self.map_inner(f, items, chunk_size, &mut |_| {})
    }

    /// As [`map`](Self::map), showing an `indicatif` progress bar on stderr that
    /// advances as chunks finish.
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
        let items: Vec<A> = items.into_iter().collect();
        let bar = indicatif::ProgressBar::new(items.len() as u64);
        let chunk = items.len().div_ceil(self.processes() * 4).max(1);
        let out = self.map_inner(f, items, chunk, &mut |n| bar.inc(n as u64));
        bar.finish();
        out
    }

    fn map_inner<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunk_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = items.into_iter().collect();
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let entry = entry(f, true)?;
        let stream = Stream::<Received>::new();
        let chunks: Vec<&[A]> = items.chunks(chunk_size.max(1)).collect();
        let jobs = chunks
            .iter()
            .enumerate()
            .map(|(slot, chunk)| encode_job(chunk).map(|payload| (slot, payload)))
            .collect::<Result<Vec<_>, _>>()?;
        let sink: Arc<dyn Sink<Received>> = stream.clone();
        let ids = self.inner.submit_many(entry, jobs, &sink)?;
        let mut out = Vec::with_capacity(items.len());
        for slot in 0..chunks.len() {
            let (_, outcome) = stream.take(Some(slot), &|| {
                self.inner.drain_results();
            });
            let results = match task::decode::<Vec<Result<R, crate::RemotePanic>>>(outcome) {
                Ok(results) => results,
                Err(e) => {
                    self.inner.discard(&ids[slot..]);
                    return Err(e);
                }
            };
            progress(results.len());
            for r in results {
                match r {
                    Ok(v) => out.push(v),
                    Err(panic) => {
                        self.inner.discard(&ids[slot..]);
                        return Err(TaskError::Panicked(panic));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs `f` on every item, one task each, lazily: items are taken from `items` as
    /// results are consumed, with a bounded number in flight, so an endless iterator
    /// works. Results come in item order (Python's `imap`).
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
    pub fn close(&self) {
        lock(&self.inner.state).closed = true;
        self.inner.ring();
    }

    /// Closes the pool and waits until every task has finished and every worker has
    /// exited.
    pub fn join(&self) {
        self.close();
        self.inner.wait_finished(None);
    }

    /// As [`join`](Self::join), for at most `timeout`; whether the pool has finished.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.close();
        self.inner
            .wait_finished(Instant::now().checked_add(timeout))
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
        if let Some(manager) = self.manager.take() {
            let _ = manager.join();
        }
    }
}

/// The function's entry for workers.
fn entry<A, R>(f: fn(A) -> R, chunked: bool) -> Result<Entry, TaskError>
where
    A: DeserializeOwned,
    R: Serialize,
{
    sys::task_entry(f, chunked).map_err(|_| TaskError::NotInExecutable)
}

/// Encodes a task's argument after room for the job header.
fn encode_job<A: Serialize + ?Sized>(args: &A) -> Result<Encoded, TaskError> {
    codec::encode_with_prefix(&[0; JOB_HEADER], args).map_err(TaskError::Codec)
}

/// What the pool was built with.
struct Config {
    processes: usize,
    start_method: Option<StartMethod>,
    init: Option<(Entry, Encoded)>,
    max_tasks_per_child: Option<u64>,
    task_timeout: Option<Duration>,
    retry: RetryPolicy,
    name: String,
    identity: [u64; 6],
}

/// Everything the pool handle, the manager thread and tasks share.
pub(crate) struct PoolInner {
    config: Config,
    tickets: Tickets,
    results_rx: RawReceiver,
    /// Cloned into each worker.
    results_tx: RawSender,
    /// Wakes the manager.
    bell: OwnedFd,
    state: Mutex<State>,
    /// Signalled when the pool finishes (for `join`).
    changed: Condvar,
}

struct State {
    /// One slot per worker; `None` while a replacement is being started.
    workers: Vec<Option<Worker>>,
    /// By id (sequential numbers: hashed with Fx, not SipHash, which costs more per
    /// task than the rest of the bookkeeping).
    tasks: FxHashMap<u64, TaskRec>,
    /// Tasks waiting for a worker, oldest first.
    pending: VecDeque<u64>,
    /// Retries waiting for their delay.
    delayed: Vec<(Instant, u64)>,
    free_tickets: Vec<u32>,
    generations: Vec<u32>,
    next_id: u64,
    closed: bool,
    terminated: bool,
    /// Why the pool gave up, if it did.
    broken: Option<String>,
    /// Workers that failed to start or initialise since a task last succeeded.
    start_failures: u32,
    /// The manager has finished: no tasks, no workers.
    finished: bool,
}

impl State {
    fn new(processes: usize, tickets: usize) -> Self {
        State {
            workers: (0..processes).map(|_| None).collect(),
            tasks: FxHashMap::default(),
            pending: VecDeque::new(),
            delayed: Vec::new(),
            free_tickets: (0..tickets as u32).rev().collect(),
            generations: vec![0; tickets],
            next_id: 1,
            closed: false,
            terminated: false,
            broken: None,
            start_failures: 0,
            finished: false,
        }
    }
}

/// One worker process, as the pool sees it.
struct Worker {
    handle: JoinHandle<()>,
    /// Its job channel; `None` once it is being retired (it exits when the channel
    /// has no sender left).
    jobs: Option<RawSender>,
    /// Tasks sent to it, in order, not yet finished.
    in_flight: VecDeque<u64>,
    /// Tasks ever sent to it.
    assigned: u64,
    /// How many tasks it may hold.
    depth: usize,
    /// Smoothed time from dispatch to result, in ns.
    turnaround_ns: f64,
    /// The pool killed it, because of this task, with this error for it.
    killed_for: Option<(u64, KillReason)>,
    /// Its job channel refused a job (full or gone): skip it until it reports again.
    stalled: bool,
    /// It has been sent its last task (`max_tasks_per_child`).
    retiring: bool,
    /// Its current task has run long while other workers idled: its queued tasks were
    /// taken back, and it gets no more until it reports.
    slow: bool,
    /// Tickets of jobs taken back from it: freed when it reports skipping them (or dies).
    stolen: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillReason {
    TimedOut,
    Cancelled,
    Terminated,
}

/// A task the pool knows about.
struct TaskRec {
    entry: Entry,
    /// The job, header room included; kept until the task ends, to send it again if its
    /// worker dies before starting it, or to retry it.
    payload: Encoded,
    sink: Arc<dyn Sink<Received>>,
    slot: usize,
    /// Runs so far that ended in failure.
    attempts: u32,
    worker: Option<usize>,
    ticket: Option<(u32, u32)>,
    /// Its outcome was delivered already (cancelled); only the ticket is left to free.
    delivered: bool,
}

impl PoolInner {
    /// Registers a task and sends it to a worker if one has room. Returns its id.
    fn submit(
        &self,
        entry: Entry,
        payload: Encoded,
        sink: Arc<dyn Sink<Received>>,
        slot: usize,
    ) -> Result<u64, TaskError> {
        let mut st = lock(&self.state);
        let id = self.register(&mut st, entry, payload, sink, slot)?;
        self.pump(&mut st);
        Ok(id)
    }

    /// Registers tasks (under one lock) and sends them to workers with room. Returns
    /// their ids, or the error that refused them all.
    fn submit_many(
        &self,
        entry: Entry,
        jobs: Vec<(usize, Encoded)>,
        sink: &Arc<dyn Sink<Received>>,
    ) -> Result<Vec<u64>, TaskError> {
        let mut st = lock(&self.state);
        let mut ids = Vec::with_capacity(jobs.len());
        for (slot, payload) in jobs {
            ids.push(self.register(&mut st, entry, payload, Arc::clone(sink), slot)?);
        }
        self.pump(&mut st);
        Ok(ids)
    }

    /// Adds a task to the queue.
    fn register(
        &self,
        st: &mut State,
        entry: Entry,
        payload: Encoded,
        sink: Arc<dyn Sink<Received>>,
        slot: usize,
    ) -> Result<u64, TaskError> {
        if let Some(why) = &st.broken {
            return Err(TaskError::PoolBroken(why.clone()));
        }
        if st.closed {
            return Err(TaskError::PoolClosed);
        }
        let id = st.next_id;
        st.next_id += 1;
        st.tasks.insert(
            id,
            TaskRec {
                entry,
                payload,
                sink,
                slot,
                attempts: 0,
                worker: None,
                ticket: None,
                delivered: false,
            },
        );
        st.pending.push_back(id);
        Ok(id)
    }

    /// Sends pending tasks to workers with room.
    fn pump(&self, st: &mut State) {
        let State {
            workers,
            tasks,
            pending,
            free_tickets,
            generations,
            ..
        } = st;
        while let Some(&id) = pending.front() {
            let Some(w) = pick_worker(workers) else {
                return;
            };
            let Some(ticket) = free_tickets.pop() else {
                return;
            };
            pending.pop_front();
            let (Some(rec), Some(Some(worker))) = (tasks.get_mut(&id), workers.get_mut(w)) else {
                free_tickets.push(ticket);
                continue;
            };
            let generation = {
                let g = &mut generations[ticket as usize];
                *g = g.wrapping_add(1).max(1);
                *g
            };
            self.tickets.queue(ticket, generation);
            JobHeader {
                id,
                ticket,
                generation,
                entry: rec.entry,
            }
            .write(&mut rec.payload.bytes[..JOB_HEADER]);
            let sent = match &worker.jobs {
                Some(jobs) => send_job(jobs, &rec.payload),
                None => Err(SendFail::Disconnected),
            };
            match sent {
                Ok(()) => {
                    rec.worker = Some(w);
                    rec.ticket = Some((ticket, generation));
                    worker.in_flight.push_back(id);
                    worker.assigned += 1;
                    if self
                        .config
                        .max_tasks_per_child
                        .is_some_and(|max| worker.assigned >= max)
                    {
                        // Its last task: it is retired once that is done.
                        worker.retiring = true;
                    }
                }
                Err(SendFail::Io(e)) => {
                    // The job cannot be sent at all (out of memory or descriptors): the
                    // task fails rather than wait forever.
                    self.tickets.free(ticket);
                    free_tickets.push(ticket);
                    if let Some(rec) = tasks.remove(&id) {
                        rec.sink
                            .deliver(rec.slot, Err(TaskError::Io(std::sync::Arc::new(e))));
                    }
                }
                Err(SendFail::Full | SendFail::Disconnected) => {
                    // Another worker takes it; this one is looked at again when it
                    // reports (or is replaced).
                    worker.stalled = true;
                    self.tickets.free(ticket);
                    free_tickets.push(ticket);
                    pending.push_front(id);
                }
            }
        }
    }

    /// Removes tasks nobody will read (a `map` that failed half-way): queued ones are
    /// dropped; running ones finish and their results are thrown away.
    fn discard(&self, ids: &[u64]) {
        let mut st = lock(&self.state);
        for id in ids {
            if let Some(pos) = st.pending.iter().position(|p| p == id) {
                st.pending.remove(pos);
                st.tasks.remove(id);
            }
        }
    }

    /// Kills every worker and fails every task.
    fn terminate(&self) {
        let mut st = lock(&self.state);
        if st.terminated {
            return;
        }
        st.terminated = true;
        st.closed = true;
        st.pending.clear();
        st.delayed.clear();
        for w in st.workers.iter_mut().flatten() {
            w.jobs = None;
            let _ = w.handle.kill();
            if w.killed_for.is_none() {
                w.killed_for = w.in_flight.front().map(|&id| (id, KillReason::Terminated));
            }
        }
        for rec in st.tasks.values_mut() {
            if !rec.delivered {
                rec.delivered = true;
                rec.sink.deliver(rec.slot, Err(TaskError::PoolClosed));
            }
        }
        drop(st);
        self.ring();
    }

    /// Wakes the manager.
    fn ring(&self) {
        sys::ring(sys::AsFd::as_fd(&self.bell));
    }

    /// Waits until the manager has finished (no tasks, no workers), or `deadline`.
    fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.finished {
                return true;
            }
            st = match deadline {
                None => self
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Takes queued tasks back from workers stuck on a long task while another worker
    /// idles, and sends them elsewhere. Returns when to look again, if ever.
    fn steal(&self, st: &mut State) -> Option<Instant> {
        let idle = |w: &Worker| {
            w.in_flight.is_empty() && w.jobs.is_some() && !w.retiring && w.killed_for.is_none()
        };
        if !st.pending.is_empty() || !st.workers.iter().flatten().any(idle) {
            return None;
        }
        let now = Instant::now();
        let now_ns = sys::monotonic_ns();
        let limit = STEAL_AFTER.as_nanos() as u64;
        let mut next = None::<Instant>;
        let mut taken = Vec::new();
        let State { workers, tasks, .. } = st;
        for w in workers.iter_mut().flatten() {
            if w.in_flight.len() < 2 || w.killed_for.is_some() {
                continue;
            }
            let front = tasks.get(&w.in_flight[0]).and_then(|r| r.ticket);
            let Some((ticket, generation)) = front else {
                continue;
            };
            let TicketState::Running(started) = self.tickets.state(ticket, generation) else {
                continue;
            };
            let ran = if started == 0 {
                0
            } else {
                now_ns.saturating_sub(started)
            };
            if ran < limit {
                let at = now + Duration::from_nanos(limit - ran);
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            w.slow = true;
            while w.in_flight.len() > 1 {
                let id = w.in_flight[1];
                let Some(rec) = tasks.get_mut(&id) else {
                    break;
                };
                let (Some((ticket, generation)), false) = (rec.ticket, rec.delivered) else {
                    break;
                };
                if self.tickets.cancel(ticket, generation) != TicketState::Cancelled {
                    // It started: the long task is over.
                    break;
                }
                w.in_flight.remove(1);
                w.stolen.push(ticket);
                w.assigned -= 1;
                rec.ticket = None;
                rec.worker = None;
                taken.push(id);
            }
            if let Some(max) = self.config.max_tasks_per_child {
                w.retiring = w.assigned >= max;
            }
        }
        if !taken.is_empty() {
            tracing::trace!(tasks = taken.len(), "tasks taken back from a busy worker");
            st.pending.extend(taken);
            self.pump(st);
        }
        next
    }

    /// Starts worker number `index`.
    fn start_worker(&self, index: usize) -> Result<Worker, PoolError> {
        let (jobs_tx, jobs_rx) = channel::channel(channel::DEFAULT_RING, None)?;
        let init = match &self.config.init {
            Some((entry, arg)) => Some((*entry, arg.try_clone()?)),
            None => None,
        };
        let args = WorkerArgs {
            identity: self.config.identity,
            jobs: jobs_rx,
            results: self.results_tx.clone(),
            tickets: self.tickets.clone(),
            init,
        };
        let n = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        let mut builder = Builder::new()
            .name(format!("{}-{n}", self.config.name))
            .daemon(true);
        if let Some(method) = self.config.start_method {
            builder = builder.start_method(method);
        }
        let handle = builder.spawn(worker::worker_main, args)?;
        tracing::trace!(pid = handle.pid(), index, "pool worker started");
        Ok(Worker {
            handle,
            jobs: Some(jobs_tx),
            in_flight: VecDeque::new(),
            assigned: 0,
            depth: DEPTH_MIN,
            turnaround_ns: 0.0,
            killed_for: None,
            stalled: false,
            retiring: false,
            slow: false,
            stolen: Vec::new(),
        })
    }
}

impl Cancel for PoolInner {
    fn help(&self) {
        self.drain_results();
    }

    fn cancel(&self, id: u64) -> bool {
        let mut st = lock(&self.state);
        let Some(rec) = st.tasks.get(&id) else {
            return false;
        };
        if rec.delivered {
            return false;
        }
        match (rec.worker, rec.ticket) {
            // Not sent to a worker yet.
            (None, _) | (_, None) => {
                st.pending.retain(|p| *p != id);
                st.delayed.retain(|(_, p)| *p != id);
                if let Some(rec) = st.tasks.remove(&id) {
                    rec.sink.deliver(rec.slot, Err(TaskError::Cancelled));
                }
                true
            }
            (Some(w), Some((ticket, generation))) => {
                match self.tickets.cancel(ticket, generation) {
                    // Its worker will skip it (and say so, which frees the ticket).
                    TicketState::Cancelled => {
                        if let Some(rec) = st.tasks.get_mut(&id) {
                            rec.delivered = true;
                            rec.sink.deliver(rec.slot, Err(TaskError::Cancelled));
                        }
                        true
                    }
                    // Running: only killing its worker stops it.
                    TicketState::Running(_) => {
                        if let Some(Some(worker)) = st.workers.get_mut(w)
                            && worker.killed_for.is_none()
                        {
                            worker.killed_for = Some((id, KillReason::Cancelled));
                            let _ = worker.handle.kill();
                            drop(st);
                            self.ring();
                            return true;
                        }
                        false
                    }
                    TicketState::Queued | TicketState::Other => false,
                }
            }
        }
    }
}

/// The worker with room that holds the fewest jobs.
fn pick_worker(workers: &[Option<Worker>]) -> Option<usize> {
    workers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.as_ref().map(|w| (i, w)))
        .filter(|(_, w)| {
            w.jobs.is_some()
                && !w.stalled
                && !w.retiring
                && !w.slow
                && w.killed_for.is_none()
                && w.in_flight.len() < w.depth
        })
        .min_by_key(|(_, w)| w.in_flight.len())
        .map(|(i, _)| i)
}

/// Sends a job without giving it up: straight from its buffer into the ring when it can,
/// otherwise a copy (with duplicated descriptors) on the side.
fn send_job(jobs: &RawSender, payload: &Encoded) -> Result<(), SendFail> {
    if payload.fds.is_empty() && jobs.fits_inline(payload.bytes.len()) {
        let mut fill = |buf: &mut [u8]| {
            buf.copy_from_slice(&payload.bytes);
            true
        };
        return jobs.send_inline(payload.bytes.len(), &mut fill, Wait::No, false);
    }
    let copy = payload.try_clone().map_err(SendFail::Io)?;
    jobs.send(copy, Wait::No, false).map_err(|(_, e)| e)
}
