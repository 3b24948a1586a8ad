//! [`ThreadPool`]: the pool surface on threads, taking closures (Python's
//! `multiprocessing.dummy.Pool` and `ThreadPoolExecutor`).

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::iter::{Backend, Feed};
use super::task::{Cancel, Cell, Sink, Slots};
use super::{DEPTH_MIN, Task};
use super::{PoolError, TaskError};
use crate::bootstrap::RemotePanic;
use crate::sync::unpoisoned;

/// Jobs per thread a lazy map keeps in flight.
const THREAD_WINDOW: usize = 8;

/// Numbers thread pools: `ThreadPool-1-0`, `ThreadPool-2-0`, ...
static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

/// A queued job: called with `None` to run it, with an error to fail it unrun.
type Job = Box<dyn FnOnce(Option<TaskError>) + Send>;

type Init = Arc<dyn Fn() + Send + Sync>;

/// Builds a [`ThreadPool`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ThreadPoolBuilder {
    threads: Option<usize>,
    init: Option<Init>,
    name: Option<String>,
    stack_size: Option<usize>,
}

impl fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("threads", &self.threads)
            .field("initializer", &self.init.is_some())
            .field("name", &self.name)
            .field("stack_size", &self.stack_size)
            .finish()
    }
}

impl ThreadPoolBuilder {
    /// The number of threads (default: [`cpu_count`](crate::cpu_count)).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Runs `f` once in each thread before it takes tasks (Python's `initializer`). If
    /// it panics, the pool is broken: queued and later tasks fail with
    /// [`TaskError::PoolBroken`].
    pub fn initializer(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.init = Some(Arc::new(f));
        self
    }

    /// The prefix of the threads' names (default `ThreadPool-<n>`: `ThreadPool-1-0`,
    /// `ThreadPool-1-1`, ...).
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.name = Some(prefix.into());
        self
    }

    /// The threads' stack size in bytes (default: as [`std::thread`]).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Starts the threads.
    ///
    /// # Errors
    ///
    /// [`PoolError::InvalidArgument`] for zero threads; [`PoolError::Io`] if a thread
    /// cannot be started.
    pub fn build(self) -> Result<ThreadPool, PoolError> {
        let threads = self.threads.unwrap_or_else(crate::cpu_count);
        if threads == 0 {
            return Err(PoolError::InvalidArgument(
                "a pool needs at least one thread".into(),
            ));
        }
        let prefix = self
            .name
            .unwrap_or_else(|| format!("ThreadPool-{}", NEXT_POOL.fetch_add(1, Ordering::Relaxed)));
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let shared = Arc::new(Shared {
            tx: Mutex::new(Some(tx)),
            rx,
            state: Mutex::new(State {
                live: 0,
                terminated: false,
                broken: None,
            }),
            exited: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let mut builder = std::thread::Builder::new().name(format!("{prefix}-{index}"));
            if let Some(size) = self.stack_size {
                builder = builder.stack_size(size);
            }
            let worker = Arc::clone(&shared);
            let init = self.init.clone();
            unpoisoned::lock(&shared.state).live += 1;
            match builder.spawn(move || worker.serve(init)) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    unpoisoned::lock(&shared.state).live -= 1;
                    let pool = ThreadPool {
                        shared,
                        handles: Mutex::new(handles),
                        threads,
                    };
                    drop(pool);
                    return Err(PoolError::Io(e));
                }
            }
        }
        Ok(ThreadPool {
            shared,
            handles: Mutex::new(handles),
            threads,
        })
    }
}

/// What the pool handle and its threads share.
struct Shared {
    /// `None` once closed: the threads exit when the queue is empty.
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    state: Mutex<State>,
    /// Signalled when a thread exits.
    exited: Condvar,
}

struct State {
    live: usize,
    terminated: bool,
    broken: Option<String>,
}

impl Shared {
    /// A thread's life: the initializer, then jobs until the queue closes.
    fn serve(&self, init: Option<Init>) {
        let init_ok = match init {
            None => true,
            Some(init) => match catch_panic(|| init()) {
                Ok(()) => true,
                Err(e) => {
                    self.fail_all(Some(format!("the initializer failed: {e}")));
                    false
                }
            },
        };
        if init_ok {
            while let Ok(job) = self.rx.recv() {
                job(self.refusal());
            }
        }
        let mut st = unpoisoned::lock(&self.state);
        st.live -= 1;
        self.exited.notify_all();
    }

    /// Closes the queue and fails every queued job; with `broken`, later submissions
    /// fail with that reason.
    fn fail_all(&self, broken: Option<String>) {
        {
            let mut st = unpoisoned::lock(&self.state);
            st.terminated = true;
            if broken.is_some() && st.broken.is_none() {
                st.broken = broken;
            }
        }
        unpoisoned::lock(&self.tx).take();
        while let Ok(job) = self.rx.try_recv() {
            job(self.refusal());
        }
    }

    /// Why jobs are no longer run, if they are not.
    fn refusal(&self) -> Option<TaskError> {
        let st = unpoisoned::lock(&self.state);
        match (&st.broken, st.terminated) {
            (Some(why), _) => Some(TaskError::PoolBroken(why.clone())),
            (None, true) => Some(TaskError::PoolClosed),
            (None, false) => None,
        }
    }

    /// Queues `work`, whose outcome goes to `sink` under `slot`. Returns what cancels it
    /// while it is queued.
    fn push<T, W>(
        &self,
        sink: Arc<dyn Sink<T>>,
        slot: usize,
        work: W,
    ) -> Result<Weak<dyn Cancel>, TaskError>
    where
        T: Send + 'static,
        W: FnOnce() -> Result<T, TaskError> + Send + 'static,
    {
        let ctl = Arc::new(Ctl {
            state: AtomicU8::new(QUEUED),
            sink,
            slot,
        });
        let handle = Arc::downgrade(&ctl) as Weak<dyn Cancel>;
        let job: Job = Box::new(move |refused| {
            if let Some(e) = refused {
                ctl.finish(Err(e));
            } else if ctl
                .state
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let outcome = work();
                ctl.state.store(DONE, Ordering::Release);
                ctl.sink.deliver(ctl.slot, outcome);
            }
        });
        let tx = unpoisoned::lock(&self.tx);
        match &*tx {
            Some(tx) => {
                tx.send(job).map_err(|_| TaskError::PoolClosed)?;
                Ok(handle)
            }
            None => Err(match &unpoisoned::lock(&self.state).broken {
                Some(why) => TaskError::PoolBroken(why.clone()),
                None => TaskError::PoolClosed,
            }),
        }
    }

    /// Waits until every thread has exited, or `deadline`; whether they have.
    fn wait_exited(&self, deadline: Option<Instant>) -> bool {
        let mut st = unpoisoned::lock(&self.state);
        while st.live > 0 {
            st = match unpoisoned::wait_until(&self.exited, st, deadline) {
                Ok(st) => st,
                Err(_) => return false,
            };
        }
        true
    }
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

/// One queued job's state, shared by the job and its [`Task`] (for `cancel`).
struct Ctl<T> {
    state: AtomicU8,
    sink: Arc<dyn Sink<T>>,
    slot: usize,
}

impl<T> Ctl<T> {
    /// Ends a job that has not started with `outcome`; whether it had not started.
    fn finish(&self, outcome: Result<T, TaskError>) -> bool {
        let won = self
            .state
            .compare_exchange(QUEUED, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.sink.deliver(self.slot, outcome);
        }
        won
    }
}

impl<T: Send> Cancel for Ctl<T> {
    fn cancel(&self, _id: u64) -> bool {
        self.finish(Err(TaskError::Cancelled))
    }
}

/// Runs `f`, turning a panic into [`TaskError::Panicked`] (named after this thread).
fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, TaskError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let caught = crate::bootstrap::caught_panic(&*payload);
        let thread = std::thread::current();
        TaskError::Panicked(RemotePanic::new(
            format!(
                "{}/{}",
                caught.process_name(),
                thread.name().unwrap_or("<unnamed>")
            ),
            caught.pid(),
            caught.message().to_owned(),
            caught.location().cloned(),
            caught.backtrace().map(str::to_owned),
        ))
    })
}

/// A pool of threads that run closures: Python's `multiprocessing.dummy.Pool` and
/// `ThreadPoolExecutor`, with the same surface as [`Pool`](crate::Pool).
///
/// Tasks are closures (`FnOnce` for [`submit`](Self::submit), `Fn` shared by every
/// item for the maps); nothing is encoded. A panic fails its task with
/// [`TaskError::Panicked`] and the thread goes on. Threads cannot be killed, so unlike
/// [`Pool`](crate::Pool) a running task cannot be cancelled or timed out, and a crash
/// takes the whole process: use [`Pool`](crate::Pool) for code that may crash or hang.
///
/// Dropping the pool fails the tasks still queued with [`TaskError::PoolClosed`] and
/// waits for the running ones (their threads cannot be stopped). Call
/// [`join`](Self::join) first to let every task finish.
///
/// # Examples
///
/// ```
/// use multiproc::ThreadPool;
///
/// let pool = ThreadPool::new(4)?;
/// let offset = 10;
/// let task = pool.submit(move || 2 + offset)?;
/// assert_eq!(task.wait()?, 12);
/// assert_eq!(pool.map(|x: u64| x * x, 0..5)?, [0, 1, 4, 9, 16]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Mutex<Vec<std::thread::JoinHandle<()>>>,
    threads: usize,
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .field("queued", &self.shared.rx.len())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` threads.
    ///
    /// # Errors
    ///
    /// As [`ThreadPoolBuilder::build`].
    pub fn new(threads: usize) -> Result<ThreadPool, PoolError> {
        ThreadPool::builder().threads(threads).build()
    }

    /// A builder for a pool with other settings.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder {
            threads: None,
            init: None,
            name: None,
            stack_size: None,
        }
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a pool thread and returns a [`Task`] for its result (Python's
    /// `apply_async` and `Executor.submit`).
    ///
    /// # Errors
    ///
    /// [`TaskError::PoolClosed`] after [`close`](Self::close) or
    /// [`terminate`](Self::terminate); [`TaskError::PoolBroken`] after an initializer
    /// failed.
    pub fn submit<R, F>(&self, f: F) -> Result<Task<R>, TaskError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let cell = Cell::<R>::new();
        let handle = self.shared.push(cell.clone(), 0, move || catch_panic(f))?;
        Ok(Task::thread(cell, 0, Some(handle)))
    }

    /// Runs `f` on a pool thread and waits for its result (Python's `apply`).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and [`TaskError::Panicked`].
    pub fn apply<R, F>(&self, f: F) -> Result<R, TaskError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit(f)?.wait()
    }

    /// Runs `f` on every item, in chunks (about four per thread), and returns the results
    /// in order.
    ///
    /// # Errors
    ///
    /// The first failure in item order; items after it may or may not have run.
    pub fn map<T, R, F, I>(&self, f: F, items: I) -> Result<Vec<R>, TaskError>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        let items: Vec<T> = items.into_iter().collect();
        let chunk = items.len().div_ceil(self.threads * 4).max(1);
        self.map_inner(f, items, chunk, &mut |_| {})
    }

    /// As [`map`](Self::map), with `chunk_size` items per task.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn map_chunked<T, R, F, I>(
        &self,
        f: F,
        items: I,
        chunk_size: usize,
    ) -> Result<Vec<R>, TaskError>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        self.map_inner(f, items, chunk_size, &mut |_| {})
    }

    /// As [`map`](Self::map), showing an `indicatif` progress bar on stderr.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    #[cfg(feature = "progress")]
    pub fn map_with_progress<T, R, F, I>(&self, f: F, items: I) -> Result<Vec<R>, TaskError>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        let items: Vec<T> = items.into_iter().collect();
        let bar = indicatif::ProgressBar::new(items.len() as u64);
        let chunk = items.len().div_ceil(self.threads * 4).max(1);
        let out = self.map_inner(f, items, chunk, &mut |n| bar.inc(n as u64));
        bar.finish();
        out
    }

    fn map_inner<T, R, F, I>(
        &self,
        f: F,
        items: I,
        chunk_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<R>, TaskError>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        let f = Arc::new(f);
        let stream = Slots::<Vec<R>>::new();
        let mut input = items.into_iter().peekable();
        let mut handles = Vec::new();
        while input.peek().is_some() {
            let chunk: Vec<T> = input.by_ref().take(chunk_size.max(1)).collect();
            let f = Arc::clone(&f);
            let run = move || catch_panic(|| chunk.into_iter().map(|x| f(x)).collect());
            match self.shared.push(stream.clone(), handles.len(), run) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    cancel_all(&handles);
                    return Err(e);
                }
            }
        }
        let mut out = Vec::new();
        for slot in 0..handles.len() {
            match stream.take(Some(slot), &|| {}).1 {
                Ok(results) => {
                    progress(results.len());
                    out.extend(results);
                }
                Err(e) => {
                    cancel_all(&handles[slot..]);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Runs `f` on every item, one task each, lazily with bounded work in flight (an
    /// endless iterator works); results in item order (Python's `imap`).
    pub fn imap<'p, T, R, F, I>(
        &'p self,
        f: F,
        items: I,
    ) -> impl Iterator<Item = Result<R, TaskError>> + 'p
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'p,
    {
        self.lazy(f, items.into_iter(), true)
    }

    /// As [`imap`](Self::imap), with results in the order tasks finish (Python's
    /// `imap_unordered`).
    pub fn imap_unordered<'p, T, R, F, I>(
        &'p self,
        f: F,
        items: I,
    ) -> impl Iterator<Item = Result<R, TaskError>> + 'p
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'p,
    {
        self.lazy(f, items.into_iter(), false)
    }

    fn lazy<T, R, F, I>(&self, f: F, items: I, ordered: bool) -> Lazy<ThreadBackend<'_, F, R>, T, I>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: Iterator<Item = T>,
    {
        Lazy {
            feed: Feed::new(self.backend(f), items),
            ordered,
        }
    }

    fn backend<T, R, F>(&self, f: F) -> ThreadBackend<'_, F, R>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        ThreadBackend {
            pool: self,
            f: Arc::new(f),
            _result: std::marker::PhantomData,
        }
    }

    /// Refuses new tasks; queued ones still run, then the threads exit.
    pub fn close(&self) {
        unpoisoned::lock(&self.shared.tx).take();
    }

    /// Closes the pool and waits until every task has finished and every thread has
    /// exited.
    pub fn join(&self) {
        self.close();
        self.shared.wait_exited(None);
        self.reap();
    }

    /// As [`join`](Self::join), for at most `timeout`; whether the pool has finished.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.close();
        let done = self.shared.wait_exited(Instant::now().checked_add(timeout));
        if done {
            self.reap();
        }
        done
    }

    /// Refuses new tasks and fails the queued ones with [`TaskError::PoolClosed`].
    /// Running tasks finish (threads cannot be stopped).
    pub fn terminate(&self) {
        self.shared.fail_all(None);
    }

    fn reap(&self) {
        for handle in unpoisoned::lock(&self.handles).drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.terminate();
        self.shared.wait_exited(None);
        self.reap();
    }
}

fn cancel_all(handles: &[Weak<dyn Cancel>]) {
    for h in handles {
        if let Some(ctl) = h.upgrade() {
            ctl.cancel(0);
        }
    }
}

/// Feeds a thread pool: one job per item, running a shared closure.
struct ThreadBackend<'p, F, R> {
    pool: &'p ThreadPool,
    f: Arc<F>,
    _result: std::marker::PhantomData<fn() -> R>,
}

impl<T, R, F> Backend<T> for ThreadBackend<'_, F, R>
where
    F: Fn(T) -> R + Send + Sync + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    type Raw = R;
    type Handle = Weak<dyn Cancel>;

    fn window(&self) -> usize {
        self.pool.threads * THREAD_WINDOW.max(DEPTH_MIN)
    }

    fn submit(
        &self,
        item: T,
        slot: usize,
        stream: &Arc<Slots<R>>,
    ) -> Result<Weak<dyn Cancel>, TaskError> {
        let f = Arc::clone(&self.f);
        self.pool
            .shared
            .push(stream.clone(), slot, move || catch_panic(|| f(item)))
    }

    fn discard(&self, handles: Vec<Weak<dyn Cancel>>) {
        cancel_all(&handles);
    }
}

/// The iterator of [`ThreadPool::imap`] and [`ThreadPool::imap_unordered`].
struct Lazy<B: Backend<T>, T, I> {
    feed: Feed<B, T, I>,
    ordered: bool,
}

impl<B: Backend<T>, T, I: Iterator<Item = T>> Iterator for Lazy<B, T, I> {
    type Item = Result<B::Raw, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.feed.next_outcome(self.ordered)
    }
}
