//! [`ThreadPool`]: the pool surface on threads, taking closures (Python's
//! `multiprocessing.dummy.Pool` and `ThreadPoolExecutor`).

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::fallible;
use super::iter::{Backend, Feed};
use super::retry::RetryPolicy;
use super::task::{Cancel, Cell, Sink, Slots};
use super::timers::{Kind, Timers};
use super::{DEPTH_MIN, Task, TaskOptions};
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

/// What a task of `submit_with` runs, again on a retry.
type Work<T> = Box<dyn FnMut() -> Result<T, TaskError> + Send>;

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
    /// [`PoolError::InvalidArgument`] for zero threads, more than the system allows
    /// (`kernel.threads-max`), or a name holding a NUL byte; [`PoolError::Io`] if a
    /// thread cannot be started.
    pub fn build(self) -> Result<ThreadPool, PoolError> {
        let threads = self.threads.unwrap_or_else(crate::cpu_count);
        if threads == 0 {
            return Err(PoolError::InvalidArgument(
                "a pool needs at least one thread".into(),
            ));
        }
        // Refused at once rather than by starting threads until the system has none
        // left (for the whole process, and its other pools, meanwhile).
        if let Some(max) = std::fs::read_to_string("/proc/sys/kernel/threads-max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            && threads > max
        {
            return Err(PoolError::InvalidArgument(format!(
                "{threads} threads are more than this system allows (kernel.threads-max is {max})"
            )));
        }
        let prefix = self
            .name
            .unwrap_or_else(|| format!("ThreadPool-{}", NEXT_POOL.fetch_add(1, Ordering::Relaxed)));
        // `std`'s thread builder panics on one.
        if prefix.contains('\0') {
            return Err(PoolError::InvalidArgument(format!(
                "a thread's name cannot hold a NUL byte: {prefix:?}"
            )));
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let shared = Arc::new(Shared {
            tx: Mutex::new(Some(tx)),
            rx,
            state: Mutex::new(State {
                live: 0,
                terminated: false,
                closing: false,
                held: 0,
                cancel_pending: false,
                broken: None,
            }),
            exited: Condvar::new(),
            timers: Timers::new(format!("{prefix}-timers")),
            detached: Mutex::new(Vec::new()),
        });
        let mut handles = Vec::with_capacity(threads.min(1024));
        for index in 0..threads {
            let mut builder = std::thread::Builder::new().name(format!("{prefix}-{index}"));
            if let Some(size) = self.stack_size {
                builder = builder.stack_size(size);
            }
            let worker = Arc::clone(&shared);
            let init = self.init.clone();
            shared.enter();
            match builder.spawn(move || worker.serve(init)) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    shared.exit();
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

thread_local! {
    /// On a pool's thread, that pool ([`Shared::id`]); 0 elsewhere. Waiting for the
    /// pool's threads to exit from one of them would wait for itself.
    static ON_POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What the pool handle and its threads share.
struct Shared {
    /// `None` once closed: the threads exit when the queue is empty.
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    state: Mutex<State>,
    /// Signalled when a thread exits.
    exited: Condvar,
    /// Delays, retry delays and timeouts of `submit_with` tasks.
    timers: Timers,
    /// Threads that deliver timed-out tasks' outcomes (see [`Ctl::time_out`]), joined
    /// with the pool's own.
    detached: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

struct State {
    live: usize,
    terminated: bool,
    /// Closed while tasks may still be queued or come back to the queue (after a delay
    /// or a failed run): the queue closes when the last of them is done.
    closing: bool,
    /// Tasks not finished yet: counted from their submission until done for good, their
    /// callbacks run (see [`Hold`]).
    held: usize,
    /// `shutdown` cancels the tasks not started: those waiting for a delay, and retries
    /// due from now on, end as cancelled.
    cancel_pending: bool,
    broken: Option<String>,
}

impl Shared {
    /// A thread's life: the initializer, then jobs until the queue closes.
    fn serve(&self, init: Option<Init>) {
        ON_POOL.with(|p| p.set(self.id()));
        let init_ok = match init {
            None => true,
            Some(init) => match catch_panic(|| init()) {
                Ok(()) => true,
                Err(e) => {
                    self.fail_all(Some(format!("the initializer failed: {e}")));
                    // And those waiting for a countdown or a retry: they waited out
                    // their time, then failed, while `join` had returned.
                    self.timers.refuse_starts();
                    false
                }
            },
        };
        if init_ok {
            while let Ok(job) = self.rx.recv() {
                run_job(job, self.refusal());
            }
        }
        self.exit();
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
            run_job(job, self.refusal());
        }
    }

    /// With a cancelling `shutdown` under way: cancels the tasks still queued, here
    /// (their callbacks run on this thread), as the pool's threads would
    /// ([`refusal`](Self::refusal)). A `join` in the callback of a task this pool ends
    /// does so too before it waits: a running task it waits for may wait for one of
    /// them, which the pool's threads, busy, would not reach, nor the shutting-down
    /// thread, should it be the one in that callback.
    fn cancel_queued(&self) {
        if !self.cancels_pending() {
            return;
        }
        while let Ok(job) = self.rx.try_recv() {
            run_job(job, self.refusal().or(Some(TaskError::Cancelled)));
        }
    }

    /// Whether `shutdown` cancelled the tasks not started.
    fn cancels_pending(&self) -> bool {
        unpoisoned::lock(&self.state).cancel_pending
    }

    /// Why jobs are no longer run, if they are not. After a `shutdown` that cancelled
    /// the tasks not started, a job queued since (a submission that passed its check as
    /// the shutdown ran) is cancelled too, as those were.
    fn refusal(&self) -> Option<TaskError> {
        let st = unpoisoned::lock(&self.state);
        match (&st.broken, st.terminated) {
            (Some(why), _) => Some(TaskError::PoolBroken(why.clone())),
            (None, true) => Some(TaskError::PoolClosed),
            (None, false) if st.cancel_pending => Some(TaskError::Cancelled),
            (None, false) => None,
        }
    }

    /// Why a new task is refused.
    fn closed_error(&self) -> TaskError {
        match &unpoisoned::lock(&self.state).broken {
            Some(why) => TaskError::PoolBroken(why.clone()),
            None => TaskError::PoolClosed,
        }
    }

    /// Queues a job of a task counted already ([`hold_new`](Self::hold_new)): it goes
    /// in while the pool closes, until the queue is closed.
    fn send(&self, job: Job) -> Result<(), Box<(Job, TaskError)>> {
        let tx = unpoisoned::lock(&self.tx);
        match &*tx {
            Some(tx) => tx
                .send(job)
                .map_err(|e| Box::new((e.0, TaskError::PoolClosed))),
            None => {
                drop(tx);
                Err(Box::new((job, self.closed_error())))
            }
        }
    }

    /// Queues `work`, whose outcome goes to `sink` under `slot`. Returns what cancels it
    /// while it is queued. `in_map`: a chunk of a map held open
    /// ([`hold_map`](Self::hold_map)).
    fn push<T, W>(
        self: &Arc<Self>,
        sink: Arc<dyn Sink<T>>,
        slot: usize,
        work: W,
        in_map: bool,
    ) -> Result<Weak<dyn Cancel>, TaskError>
    where
        T: Send + 'static,
        W: FnOnce() -> Result<T, TaskError> + Send + 'static,
    {
        self.hold_new(in_map)?;
        let ctl = Ctl::held(sink, slot, self);
        let handle = Arc::downgrade(&ctl) as Weak<dyn Cancel>;
        let hold = ctl.hold.clone();
        // Let go once done: by the job, or by whoever ended it first (a cancel, once its
        // callbacks are done).
        let job: Job = Box::new(move |refused| {
            if let Some(e) = refused {
                ctl.finish_for_good(Err(e));
            } else if ctl.start(1) {
                ctl.complete_for_good(work());
            }
        });
        if let Err(refused) = self.send(job) {
            // Closed by a `terminate` meanwhile: refused unqueued, as before its count.
            if let Some(hold) = hold {
                hold.let_go();
            }
            return Err(refused.1);
        }
        Ok(handle)
    }

    /// Counts a new task among those the queue stays open for; refused once the pool
    /// closes (`in_map`: a chunk of a map counted already, refused only once the pool
    /// is terminated or broken, as its map was submitted whole).
    fn hold_new(&self, in_map: bool) -> Result<(), TaskError> {
        let mut st = unpoisoned::lock(&self.state);
        if (st.closing && !in_map) || st.terminated || st.broken.is_some() {
            drop(st);
            return Err(self.closed_error());
        }
        st.held += 1;
        Ok(())
    }

    /// Counts a map among the tasks the queue stays open for while its chunks are
    /// queued, so that a `close` meanwhile lets every chunk in (a map called before
    /// `close` counts as submitted whole, as in Python); refused once the pool closes.
    fn hold_map(self: &Arc<Self>) -> Result<MapHold, TaskError> {
        self.hold_new(false)?;
        Ok(MapHold(Arc::clone(self)))
    }

    /// Queues a task of `submit_with`: run at its time, timed out, retried.
    fn push_with<T: Send + 'static>(
        self: &Arc<Self>,
        sink: Arc<dyn Sink<T>>,
        work: Work<T>,
        opts: &TaskOptions,
    ) -> Result<Weak<dyn Cancel>, TaskError> {
        opts.check_local()?;
        self.hold_new(false)?;
        let ctl = Ctl::held(sink, 0, self);
        let handle = Arc::downgrade(&ctl) as Weak<dyn Cancel>;
        let run = Run {
            ctl,
            work,
            retry: opts.retry.clone(),
            timeout: opts.timeout,
            attempts: 0,
            pool: Arc::downgrade(self),
        };
        match opts.not_before() {
            Some(at) => run.queue_at(self, at),
            None => run.queue_now(self),
        }
        Ok(handle)
    }

    /// A task is done for good: the queue may close now.
    fn release(&self) {
        let close = {
            let mut st = unpoisoned::lock(&self.state);
            st.held -= 1;
            st.closing && st.held == 0
        };
        if close {
            unpoisoned::lock(&self.tx).take();
        }
    }

    /// Refuses new tasks; queued ones still run, then the threads exit.
    fn close(&self) {
        let now = {
            let mut st = unpoisoned::lock(&self.state);
            st.closing = true;
            st.held == 0
        };
        if now {
            unpoisoned::lock(&self.tx).take();
        }
    }

    /// Who this pool is, for [`ON_POOL`].
    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Whether the calling thread is one of this pool's (a task of it runs there).
    fn on_own_thread(&self) -> bool {
        ON_POOL.with(std::cell::Cell::get) == self.id()
    }

    /// Runs `job` on a thread of its own, counted as one of the pool's (the caller
    /// counted it, [`enter`](Self::enter); a `join` from there does not wait for itself;
    /// `join`, `join_timeout` and the drop wait for it as for the others) and joined
    /// with them; at once if no thread can be started.
    fn detach(self: &Arc<Self>, job: impl FnOnce() + Send + 'static) {
        let job = Arc::new(Mutex::new(Some(job)));
        let theirs = Arc::clone(&job);
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("mp-timed-out".into())
            .spawn(move || {
                ON_POOL.with(|p| p.set(shared.id()));
                if let Some(job) = unpoisoned::lock(&theirs).take() {
                    deliver_caught(job);
                }
                shared.exit();
            });
        match spawned {
            Ok(handle) => {
                let mut detached = unpoisoned::lock(&self.detached);
                detached.retain(|h| !h.is_finished());
                detached.push(handle);
            }
            Err(e) => {
                self.exit();
                tracing::warn!("a thread pool delivers a timeout on its timer thread: {e}");
                if let Some(job) = unpoisoned::lock(&job).take() {
                    deliver_caught(job);
                }
            }
        }
    }

    /// A thread of the pool is about to start: one more for `join` to wait for.
    fn enter(&self) {
        unpoisoned::lock(&self.state).live += 1;
    }

    /// A thread of the pool ends: one fewer for `join` to wait for.
    fn exit(&self) {
        let mut st = unpoisoned::lock(&self.state);
        st.live -= 1;
        self.exited.notify_all();
    }

    /// Lets go of the tasks of this pool whose outcome the calling thread is delivering
    /// (a `join` in one's callback: see [`DELIVERING`]); whether there were any.
    fn let_go_deliveries_here(&self) -> bool {
        let here: Vec<Arc<Hold>> = DELIVERING
            .try_with(|d| {
                d.borrow()
                    .iter()
                    .filter(|h| std::ptr::eq(h.pool.as_ptr(), self))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let any = !here.is_empty();
        for hold in here {
            hold.let_go();
        }
        any
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

/// One job's state, shared by the job and its [`Task`] (for `cancel`).
struct Ctl<T> {
    progress: Arc<Progress>,
    sink: Arc<dyn Sink<T>>,
    slot: usize,
    /// Counted among the tasks that keep the pool's queue open until it is let go (see
    /// [`Ctl::let_go`]): every task of a pool.
    hold: Option<Arc<Hold>>,
}

/// A map's place among those that keep its pool's queue open, while its chunks are
/// queued ([`Shared::hold_map`]); let go when dropped (also when the items' iterator
/// panics).
struct MapHold(Arc<Shared>);

impl Drop for MapHold {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A task's place among those that keep its pool's queue open.
pub(super) struct Hold {
    held: AtomicBool,
    pool: Weak<Shared>,
}

impl Hold {
    /// Once, whoever calls first.
    fn let_go(&self) {
        if self.held.swap(false, Ordering::AcqRel)
            && let Some(shared) = self.pool.upgrade()
        {
            shared.release();
        }
    }
}

thread_local! {
    /// The held tasks whose outcome this thread is delivering (their callbacks run):
    /// a `join` in a callback lets them go first, as it would otherwise wait for the
    /// very task it runs for.
    static DELIVERING: std::cell::RefCell<Vec<Arc<Hold>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Deliveries under way on this thread (see [`DELIVERING`]), until dropped.
pub(super) struct Delivering(Vec<Arc<Hold>>);

impl Delivering {
    fn enter(hold: Option<&Arc<Hold>>) -> Self {
        Delivering::enter_all(hold.cloned())
    }

    /// The deliveries of tasks this thread ends one after another (those `shutdown`
    /// cancels): a `join` in the callback of any of them lets go of them all, the
    /// later ones included, which it would otherwise wait for while they wait for it.
    pub(super) fn enter_all(holds: impl IntoIterator<Item = Arc<Hold>>) -> Self {
        let holds: Vec<Arc<Hold>> = holds
            .into_iter()
            .filter(|h| h.held.load(Ordering::Acquire))
            .collect();
        if !holds.is_empty() {
            let _ = DELIVERING.try_with(|d| d.borrow_mut().extend(holds.iter().cloned()));
        }
        Delivering(holds)
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let _ = DELIVERING.try_with(|d| {
            let mut d = d.borrow_mut();
            for h in &self.0 {
                if let Some(i) = d.iter().rposition(|x| Arc::ptr_eq(x, h)) {
                    d.remove(i);
                }
            }
        });
    }
}

/// Where a job is, apart from its outcome: what a timer looks at to learn whether its
/// timeout still matters, without holding (and maybe dropping, under the timers' lock)
/// the job and what it delivers to.
///
/// The state (`QUEUED`, `RUNNING`, `DONE`) and which run of the task this is (for a
/// timeout set by an earlier run) are one word, changed together: a timeout of run 1
/// that read the run apart from the state could end run 2, started in between, as
/// timed out.
#[derive(Debug)]
struct Progress(AtomicU64);

impl Progress {
    fn new() -> Progress {
        Progress(AtomicU64::new(u64::from(QUEUED)))
    }

    fn split(word: u64) -> (u32, u8) {
        ((word >> 8) as u32, word as u8)
    }

    fn state(&self) -> u8 {
        Progress::split(self.0.load(Ordering::Acquire)).1
    }

    /// Whether run `run` of the task may still be going on (its timeout then matters).
    fn runs(&self, run: u32) -> bool {
        let (now, state) = Progress::split(self.0.load(Ordering::Acquire));
        now == run && state != DONE
    }

    /// Moves the state from `from` to `to` if `run` (any run: `None`) is the current
    /// one, making `set_run` (if any) the current run; whether it did.
    fn change(&self, run: Option<u32>, from: u8, to: u8, set_run: Option<u32>) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (now, state) = Progress::split(word);
                (state == from && run.is_none_or(|r| r == now))
                    .then(|| u64::from(set_run.unwrap_or(now)) << 8 | u64::from(to))
            })
            .is_ok()
    }
}

impl<T> Ctl<T> {
    fn new(sink: Arc<dyn Sink<T>>, slot: usize) -> Arc<Self> {
        Arc::new(Ctl {
            progress: Arc::new(Progress::new()),
            sink,
            slot,
            hold: None,
        })
    }

    /// A task counted among those that keep `pool`'s queue open until it is done for
    /// good ([`Shared::hold_new`] counted it).
    fn held(sink: Arc<dyn Sink<T>>, slot: usize, pool: &Arc<Shared>) -> Arc<Self> {
        let mut ctl = Ctl::new(sink, slot);
        if let Some(c) = Arc::get_mut(&mut ctl) {
            c.hold = Some(Arc::new(Hold {
                held: AtomicBool::new(true),
                pool: Arc::downgrade(pool),
            }));
        }
        ctl
    }

    /// The pool of the task.
    fn pool(&self) -> Option<Arc<Shared>> {
        self.hold.as_ref().and_then(|h| h.pool.upgrade())
    }

    /// The task is done for good (or cancelled, though a run or a timer still holds
    /// its work): the pool no longer waits for it. Once, whichever comes first: a
    /// task cancelled while it waits for its start (`countdown`, `eta`) or for a retry
    /// would otherwise keep `join` waiting until that time.
    fn let_go(&self) {
        if let Some(hold) = &self.hold {
            hold.let_go();
        }
    }

    fn swap(&self, from: u8, to: u8) -> bool {
        self.progress.change(None, from, to, None)
    }

    /// Starts run `run`; false if the job was cancelled (or failed) meanwhile.
    fn start(&self, run: u32) -> bool {
        self.progress.change(None, QUEUED, RUNNING, Some(run))
    }

    /// Ends a job that has not started with `outcome`; whether it had not started. Its
    /// callbacks run on the calling thread (one that cancels, the timer thread), where
    /// a `join` lets go of the task first (see [`DELIVERING`]).
    fn finish(&self, outcome: Result<T, TaskError>) -> bool {
        let won = self.swap(QUEUED, DONE);
        if won {
            let _delivering = Delivering::enter(self.hold.as_ref());
            self.sink.deliver(self.slot, outcome);
        }
        won
    }

    /// [`finish`](Self::finish), and the task is let go if it was this call that ended it
    /// (otherwise whoever did lets it go, once its callbacks are done).
    fn finish_for_good(&self, outcome: Result<T, TaskError>) -> bool {
        let won = self.finish(outcome);
        if won {
            self.let_go();
        }
        won
    }

    /// [`complete`](Self::complete), and the task is let go if this run ended it (a
    /// timeout's delivery lets it go otherwise).
    fn complete_for_good(&self, outcome: Result<T, TaskError>) {
        if self.complete(outcome) {
            self.let_go();
        }
    }

    /// Ends a run with its outcome, unless the task ended otherwise meanwhile (it timed
    /// out: the timeout's delivery lets it go); whether it did.
    fn complete(&self, outcome: Result<T, TaskError>) -> bool {
        let won = self.swap(RUNNING, DONE);
        if won {
            self.sink.deliver(self.slot, outcome);
        }
        won
    }
}

impl<T: Send + 'static> Ctl<T> {
    /// The timeout of run `run` is up: the task ends as timed out if that run still
    /// goes on. It is the pool's timer thread that calls this, which every delay,
    /// retry and timeout of the pool waits for: the outcome is delivered (and the
    /// done-callbacks, user code that may wait, for a countdown task of the same pool,
    /// say, run) on a thread of its own, which the pool's `join` and drop wait for. The
    /// task is let go once they are done (not when its closure returns, which may be
    /// first): a `join` returns only after them.
    fn time_out(&self, run: u32) {
        // The delivering thread is counted among the pool's before the run is ended:
        // after a `terminate` the run's own thread may exit as soon as its closure
        // returns, and a drop or `join` seeing no thread left would not wait for the
        // delivery.
        let pool = self.pool();
        if let Some(shared) = &pool {
            shared.enter();
        }
        if !self.progress.change(Some(run), RUNNING, DONE, None) {
            if let Some(shared) = &pool {
                shared.exit();
            }
            return;
        }
        let (sink, slot, hold) = (Arc::clone(&self.sink), self.slot, self.hold.clone());
        let deliver = move || {
            {
                // On the timer thread if no thread could be started: a `join` in a
                // callback there lets the task go first.
                let _delivering = Delivering::enter(hold.as_ref());
                sink.deliver(slot, Err(TaskError::TimedOut));
            }
            if let Some(hold) = hold {
                hold.let_go();
            }
        };
        match pool {
            Some(shared) => shared.detach(deliver),
            None => deliver(),
        }
    }
}

impl<T: Send> Cancel for Ctl<T> {
    fn cancel(&self, _id: u64) -> bool {
        let cancelled = self.finish_for_good(Err(TaskError::Cancelled));
        if cancelled {
            // A task waiting for its time (a countdown, a retry's delay) holds an entry
            // of the timers, with its closure.
            if let Some(shared) = self.pool() {
                shared.timers.ended();
            }
        }
        cancelled
    }

    fn is_running(&self, _id: u64) -> bool {
        self.progress.state() == RUNNING
    }
}

/// A task of `submit_with`, between its runs.
struct Run<T> {
    ctl: Arc<Ctl<T>>,
    work: Work<T>,
    retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    /// Runs so far that failed.
    attempts: u32,
    pool: Weak<Shared>,
}

impl<T: Send + 'static> Run<T> {
    /// Queues the next run now.
    fn queue_now(self, shared: &Shared) {
        if shared.cancels_pending() {
            return self.fail(TaskError::Cancelled);
        }
        let job: Job = Box::new(move |refused| self.go(refused));
        if let Err(refused) = shared.send(job) {
            let (job, e) = *refused;
            run_job(job, Some(e));
        }
    }

    /// Queues the next run at `at` (on the pool's timer thread).
    fn queue_at(self, shared: &Shared, at: Instant) {
        if shared.cancels_pending() {
            return self.fail(TaskError::Cancelled);
        }
        let pool = self.pool.clone();
        // Cancelled meanwhile: the entry, and the closure it holds, may go unrun.
        let progress = Arc::clone(&self.ctl.progress);
        let live = Box::new(move || progress.state() != DONE);
        let hold = self.ctl.hold.clone();
        let action = Box::new(move |stopping: bool| match pool.upgrade() {
            Some(shared) if !stopping => self.queue_now(&shared),
            Some(shared) if shared.cancels_pending() => self.fail(TaskError::Cancelled),
            // Broken (an initializer failed) or terminated.
            Some(shared) => self.fail(shared.closed_error()),
            None => self.fail(TaskError::PoolClosed),
        });
        if let Err(e) = shared
            .timers
            .at_while(at, Kind::Start(hold), action, Some(live))
        {
            tracing::warn!(
                "a thread pool's timer thread could not start (this delay or timeout is not kept; the next tries again): {e}"
            );
        }
    }

    /// Ends the task unrun (queued or waiting to be) with `error`.
    fn fail(self, error: TaskError) {
        // Ended by someone else meanwhile (a cancel): they let it go, once its
        // callbacks are done.
        self.ctl.finish_for_good(Err(error));
    }

    /// A job's body: runs the work once, then ends the task or queues a retry.
    fn go(mut self, refused: Option<TaskError>) {
        if let Some(e) = refused {
            return self.fail(e);
        }
        let Some(shared) = self.pool.upgrade() else {
            return self.fail(TaskError::PoolClosed);
        };
        // Numbered as it starts, in one change: the timer of the run before cannot time
        // this one out.
        let run = self.attempts + 1;
        if !self.ctl.start(run) {
            // Cancelled while it waited: the cancel lets it go, once its callbacks are
            // done.
            return;
        }
        if let Some(timeout) = self.timeout {
            let ctl = Arc::downgrade(&self.ctl);
            let at = super::options::later(timeout);
            let progress = Arc::clone(&self.ctl.progress);
            let live = Box::new(move || progress.runs(run));
            let action = Box::new(move |stopping: bool| {
                if let (false, Some(ctl)) = (stopping, ctl.upgrade()) {
                    ctl.time_out(run);
                }
            });
            if let Err(e) = shared
                .timers
                .at_while(at, Kind::Timeout, action, Some(live))
            {
                tracing::warn!(
                    "a thread pool's timer thread could not start (this delay or timeout is not kept; the next tries again): {e}"
                );
            }
        }
        let outcome = catch_panic(&mut self.work).and_then(|r| r);
        if let Err(e) = &outcome {
            let policy = self.retry.as_ref();
            // A run that timed out still holds its thread: it is not run again.
            if !matches!(e, TaskError::TimedOut)
                && policy.is_some_and(|p| p.should_retry(run, e))
                && self.ctl.swap(RUNNING, QUEUED)
            {
                let delay = policy.map_or(Duration::ZERO, |p| p.delay(run));
                tracing::debug!(attempt = run, ?delay, "retrying a thread pool task: {e}");
                self.attempts = run;
                return if delay.is_zero() {
                    self.queue_now(&shared)
                } else {
                    self.queue_at(&shared, super::options::later(delay))
                };
            }
        }
        self.ctl.complete_for_good(outcome);
    }
}

/// Delivers a timed-out task's outcome (its callbacks run caught already): whatever
/// else panics there is reported, not let loose on the thread that delivers.
fn deliver_caught(deliver: impl FnOnce()) {
    if let Err(caught) = crate::bootstrap::catching(deliver) {
        tracing::warn!("delivering a thread pool task's timeout panicked: {caught}");
    }
}

/// Runs a queued job (`refused`: ends its task unrun with that error). The task's own
/// code runs caught inside it, but what the job drops runs here: a result nobody waits
/// for any more (its `Task` dropped), the closure of a task ended unrun. A `Drop` that
/// panics there is reported and the thread goes on: the panic ended the thread, which
/// the pool still counted as live, and `join` and the pool's drop waited for ever.
fn run_job(job: Job, refused: Option<TaskError>) {
    if let Err(caught) = crate::bootstrap::catching(|| job(refused)) {
        tracing::warn!(
            "a thread pool task's closure or unclaimed result panicked as it was dropped: {caught}"
        );
    }
}

/// Runs `f`, turning a panic into [`TaskError::Panicked`] (named after this thread).
fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, TaskError> {
    crate::bootstrap::catching(f).map_err(|caught| {
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
/// [`Pool`](crate::Pool) a running task cannot be cancelled, and one that times out
/// ([`TaskOptions::timeout`]) runs on unread; a crash takes the whole process: use
/// [`Pool`](crate::Pool) for code that may crash or hang.
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
    #[doc(alias = "apply_async")]
    pub fn submit<R, F>(&self, f: F) -> Result<Task<R>, TaskError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let cell = Cell::<R>::new();
        let handle = self
            .shared
            .push(cell.clone(), 0, move || catch_panic(f), false)?;
        Ok(Task::new(cell, 0, Some(handle)))
    }

    /// As [`submit`](Self::submit), with options of its own ([`TaskOptions`]): a delay,
    /// a retry policy, a timeout. A retry runs `f` again, so it is `FnMut`. A task
    /// that times out ends as [`TaskError::TimedOut`] at once, but its thread cannot be
    /// stopped: the closure runs on and its value is dropped (and such a run is not
    /// retried). Delays and timeouts are kept by one timer thread per pool, started
    /// with the first.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`TaskError::InvalidArgument`] for a zero timeout or
    /// a cluster's option.
    pub fn submit_with<R, F>(&self, mut f: F, opts: TaskOptions) -> Result<Task<R>, TaskError>
    where
        F: FnMut() -> R + Send + 'static,
        R: Send + 'static,
    {
        let cell = Cell::<R>::new();
        let work: Work<R> = Box::new(move || Ok(f()));
        let handle = self.shared.push_with(cell.clone(), work, &opts)?;
        Ok(Task::new(cell, 0, Some(handle)))
    }

    /// Runs a closure that fails with its own error: an `Err` is the task's failure,
    /// [`TaskError::Failed`], carrying the error (see [`Failure`](crate::Failure):
    /// `downcast_ref` finds the value, `decode` its encoding). The same as
    /// [`Pool::submit_fallible`](crate::Pool::submit_fallible), for closures.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub fn submit_fallible<T, E, F>(&self, f: F) -> Result<Task<T>, TaskError>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Serialize + DeserializeOwned + fmt::Display + Send + Sync + 'static,
    {
        let cell = Cell::<T>::new();
        let run = move || catch_panic(f).and_then(|r| r.map_err(fallible::failed));
        let handle = self.shared.push(cell.clone(), 0, run, false)?;
        Ok(Task::new(cell, 0, Some(handle)))
    }

    /// As [`submit_fallible`](Self::submit_fallible), with options of its own (see
    /// [`submit_with`](Self::submit_with)): the retry policy sees the `Err` as
    /// [`TaskError::Failed`].
    ///
    /// # Errors
    ///
    /// As [`submit_with`](Self::submit_with).
    pub fn submit_fallible_with<T, E, F>(
        &self,
        mut f: F,
        opts: TaskOptions,
    ) -> Result<Task<T>, TaskError>
    where
        F: FnMut() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Serialize + DeserializeOwned + fmt::Display + Send + Sync + 'static,
    {
        let cell = Cell::<T>::new();
        let work: Work<T> = Box::new(move || f().map_err(fallible::failed));
        let handle = self.shared.push_with(cell.clone(), work, &opts)?;
        Ok(Task::new(cell, 0, Some(handle)))
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

    /// As [`apply`](Self::apply), waiting at most `timeout`. A task still queued then
    /// is cancelled; one running cannot be stopped and runs on, unread.
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply), plus [`TaskError::Timeout`].
    pub fn apply_timeout<R, F>(&self, f: F, timeout: Duration) -> Result<R, TaskError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut task = self.submit(f)?;
        let out = task.wait_timeout(timeout);
        if matches!(out, Err(TaskError::Timeout)) {
            task.cancel();
        }
        out
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
        self.map_until(f, items, None)
    }

    /// As [`map`](Self::map), waiting at most `timeout` for all the results. Chunks
    /// still queued then are cancelled; running ones cannot be stopped and run on,
    /// unread.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), plus [`TaskError::Timeout`].
    pub fn map_timeout<T, R, F, I>(
        &self,
        f: F,
        items: I,
        timeout: Duration,
    ) -> Result<Vec<R>, TaskError>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        self.map_until(f, items, Instant::now().checked_add(timeout))
    }

    /// `map` with the default chunking, waiting until `deadline`.
    fn map_until<T, R, F, I>(
        &self,
        f: F,
        items: I,
        deadline: Option<Instant>,
    ) -> Result<Vec<R>, TaskError>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        // Counted from the call: an iterator that gives its items only after a
        // `close` elsewhere still makes a map called before it.
        let open = self.shared.hold_map()?;
        let items: Vec<T> = items.into_iter().collect();
        let chunk = items.len().div_ceil(self.threads * 4).max(1);
        self.map_inner(open, f, items, chunk, deadline, &mut |_| {})
    }

    /// As [`map`](Self::map), with a context every call gets by reference (Python's
    /// `functools.partial`, or an initializer that sets a global): `f(&ctx, item)`.
    /// On threads the context is shared, not copied; [`Pool::map_with`] sends it once to
    /// each worker process.
    ///
    /// [`Pool::map_with`]: crate::Pool::map_with
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn map_with<C, T, R, F, I>(&self, ctx: C, f: F, items: I) -> Result<Vec<R>, TaskError>
    where
        C: Send + Sync + 'static,
        F: Fn(&C, T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        let ctx = Arc::new(ctx);
        self.map(move |item| f(&ctx, item), items)
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
        let open = self.shared.hold_map()?;
        self.map_inner(open, f, items, chunk_size, None, &mut |_| {})
    }

    /// As [`map`](Self::map), showing an `indicatif` progress bar on stderr that
    /// advances as results come in, in the items' order; a map that fails leaves the bar
    /// where it stopped.
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
        let open = self.shared.hold_map()?;
        let items: Vec<T> = items.into_iter().collect();
        let bar = indicatif::ProgressBar::new(items.len() as u64);
        let chunk = items.len().div_ceil(self.threads * 4).max(1);
        let out = self.map_inner(open, f, items, chunk, None, &mut |n| bar.inc(n as u64));
        end_bar(&bar, out.is_ok());
        out
    }

    /// Queues the chunks of a map held open by `open` (let go once they are all
    /// queued), then takes their results in order.
    fn map_inner<T, R, F, I>(
        &self,
        open: MapHold,
        f: F,
        items: I,
        chunk_size: usize,
        deadline: Option<Instant>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<R>, TaskError>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        let f = Arc::new(f);
        let stream = Slots::<Vec<R>>::new(true);
        let mut input = items.into_iter().peekable();
        let mut handles = Vec::new();
        while input.peek().is_some() {
            let chunk: Vec<T> = input.by_ref().take(chunk_size.max(1)).collect();
            let f = Arc::clone(&f);
            let run = move || catch_panic(|| chunk.into_iter().map(|x| f(x)).collect());
            match self.shared.push(stream.clone(), handles.len(), run, true) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    cancel_all(&handles);
                    return Err(e);
                }
            }
        }
        drop(open);
        let mut out = Vec::new();
        for slot in 0..handles.len() {
            let Some((_, outcome)) = stream.take_until(Some(slot), deadline, &|| {}) else {
                cancel_all(&handles[slot..]);
                return Err(TaskError::Timeout);
            };
            match outcome {
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
    pub fn imap<T, R, F, I>(&self, f: F, items: I) -> ThreadImap<'_, T, R, I::IntoIter>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        ThreadImap::new(self, Arc::new(f), items.into_iter())
    }

    /// As [`imap`](Self::imap), with results in the order tasks finish (Python's
    /// `imap_unordered`).
    pub fn imap_unordered<T, R, F, I>(
        &self,
        f: F,
        items: I,
    ) -> ThreadImap<'_, T, R, I::IntoIter, false>
    where
        F: Fn(T) -> R + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
        I: IntoIterator<Item = T>,
    {
        ThreadImap::new(self, Arc::new(f), items.into_iter())
    }

    /// Refuses new tasks; queued ones still run (and delayed or retried ones of
    /// [`submit_with`](Self::submit_with)), then the threads exit. A `map` called
    /// before counts as submitted whole, as in Python: its chunks still queued, and
    /// those of items its iterator gives only afterwards, go in and run; a `join`
    /// waits for its iterator to end (one over an endless iterator, or over a channel
    /// whose sender the joining thread holds, is ended by
    /// [`terminate`](Self::terminate) only).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes the pool and waits until every task has finished and every thread has
    /// exited.
    ///
    /// Called from one of the pool's own tasks, it only closes the pool: the task
    /// calling it is one that has not finished, and waiting for it would wait for ever.
    /// Called from the done-callback of a task that a cancelling
    /// [`shutdown`](Self::shutdown) ended, it first cancels the tasks still queued, here
    /// (their callbacks run on the calling thread): a running task may wait for one.
    pub fn join(&self) {
        let delivering = self.shared.let_go_deliveries_here();
        self.close();
        if self.shared.on_own_thread() {
            return;
        }
        if delivering {
            self.shared.cancel_queued();
        }
        self.shared.wait_exited(None);
        self.reap();
    }

    /// As [`join`](Self::join), waiting at most `timeout` (the callbacks of the tasks
    /// it cancels first, called from a callback as `join` says, count against it but
    /// are not cut short).
    ///
    /// # Errors
    ///
    /// [`PoolError::Timeout`] if tasks still run: the pool stays closed and can be
    /// joined again. [`PoolError::InvalidArgument`] if called from one of the pool's
    /// own tasks (which has not finished: the wait could only time out); the pool is
    /// closed.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), PoolError> {
        let deadline = Instant::now().checked_add(timeout);
        let delivering = self.shared.let_go_deliveries_here();
        self.close();
        if self.shared.on_own_thread() {
            return Err(PoolError::InvalidArgument(
                "join_timeout called from one of the pool's own tasks, which would wait for itself"
                    .into(),
            ));
        }
        if delivering {
            self.shared.cancel_queued();
        }
        if self.shared.wait_exited(deadline) {
            self.reap();
            Ok(())
        } else {
            Err(PoolError::Timeout)
        }
    }

    /// Refuses new tasks and fails the queued ones (and those waiting for their
    /// countdown or a retry) with [`TaskError::PoolClosed`]. Running tasks finish
    /// (threads cannot be stopped); one whose timeout passes still ends as
    /// [`TaskError::TimedOut`] then, its closure running on.
    pub fn terminate(&self) {
        self.shared.fail_all(None);
        self.shared.timers.refuse_starts();
    }

    /// Python's `Executor.shutdown(wait, cancel_futures)`: closes the pool; with
    /// `cancel_pending`, tasks not yet started end as [`TaskError::Cancelled`] (running
    /// ones finish; one that fails is not retried, and ends `Cancelled`; one submitted
    /// by another thread as the shutdown runs is cancelled too); with `wait`, waits until every task has finished and every thread
    /// has exited ([`join`](Self::join); not from one of the pool's own tasks). The
    /// cancelled tasks' callbacks run on the calling thread (or on a thread of the pool
    /// that takes a queued one while a callback waits), and may `join` the pool: that
    /// cancels the queued tasks still there and waits for the running tasks, not for
    /// those waiting for their time.
    pub fn shutdown(&self, wait: bool, cancel_pending: bool) {
        self.close();
        if cancel_pending {
            unpoisoned::lock(&self.shared.state).cancel_pending = true;
            // The tasks waiting for their time are taken out first and listed as
            // delivered here, then the queued ones are cancelled (a running task may
            // wait for one of those), then the waiting ones: a `join` in any of their
            // callbacks lets go of the waiting ones still to come, rather than wait
            // for their time, or for ever for this thread; a join cancels the queued
            // ones still there before it waits. Queued ones left behind
            // while a callback waits are taken by the pool's threads, cancelled too.
            let starts = self.shared.timers.take_starts_refusing();
            let _delivering = Delivering::enter_all(starts.holds());
            self.shared.cancel_queued();
            starts.cancel();
        }
        if wait {
            self.join();
        }
    }

    fn reap(&self) {
        for handle in unpoisoned::lock(&self.handles).drain(..) {
            unpoisoned::join(handle);
        }
        // Taken out first: a delivery may end a task whose callback drops the pool.
        let detached = std::mem::take(&mut *unpoisoned::lock(&self.shared.detached));
        for handle in detached {
            unpoisoned::join(handle);
        }
    }
}

impl ThreadPool {
    /// Whether the calling thread is one of this pool's (a task of it runs there).
    pub(crate) fn on_own_thread(&self) -> bool {
        self.shared.on_own_thread()
    }
}

impl Drop for ThreadPool {
    /// Fails the queued tasks and waits for the running ones to finish; dropped by
    /// one of the pool's own tasks (holding the last handle), it waits for none: the
    /// threads end on their own once their tasks are done.
    fn drop(&mut self) {
        self.terminate();
        if self.shared.on_own_thread() {
            return;
        }
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

/// A shared closure of a lazy map.
type MapFn<T, R> = Arc<dyn Fn(T) -> R + Send + Sync>;

/// Feeds a thread pool: one job per item, running a shared closure.
struct ThreadBackend<'p, T, R> {
    pool: &'p ThreadPool,
    f: MapFn<T, R>,
}

impl<T, R> Backend<T> for ThreadBackend<'_, T, R>
where
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
            .push(stream.clone(), slot, move || catch_panic(|| f(item)), false)
    }

    fn discard(&self, handles: Vec<Weak<dyn Cancel>>) {
        cancel_all(&handles);
    }
}

/// The iterator of [`ThreadPool::imap`] (and, with `ORDERED = false`, of
/// [`ThreadPool::imap_unordered`]): each item's own result.
pub struct ThreadImap<'p, T, R, I, const ORDERED: bool = true>
where
    T: Send + 'static,
    R: Send + 'static,
{
    feed: Feed<ThreadBackend<'p, T, R>, T, I>,
}

impl<'p, T, R, I, const ORDERED: bool> ThreadImap<'p, T, R, I, ORDERED>
where
    T: Send + 'static,
    R: Send + 'static,
    I: Iterator<Item = T>,
{
    fn new(pool: &'p ThreadPool, f: MapFn<T, R>, items: I) -> Self {
        ThreadImap {
            feed: Feed::new(ThreadBackend { pool, f }, items, ORDERED),
        }
    }

    /// The next result, waiting at most `timeout`: `Some(Err(TaskError::Timeout))` if
    /// it is not there by then, and the iterator goes on.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, TaskError>> {
        self.feed
            .next_outcome_until(ORDERED, Instant::now().checked_add(timeout))
    }

    /// The same map as an async stream (see [`Imap::into_stream`](crate::Imap::into_stream)).
    pub fn into_stream(self) -> ThreadImapStream<'p, T, R, I, ORDERED> {
        ThreadImapStream { imap: self }
    }
}

impl<T, R, I, const ORDERED: bool> Iterator for ThreadImap<'_, T, R, I, ORDERED>
where
    T: Send + 'static,
    R: Send + 'static,
    I: Iterator<Item = T>,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.feed.next_outcome(ORDERED)
    }
}

impl<T, R, I, const ORDERED: bool> fmt::Debug for ThreadImap<'_, T, R, I, ORDERED>
where
    T: Send + 'static,
    R: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(if ORDERED {
            "ThreadImap"
        } else {
            "ThreadImapUnordered"
        })
        .finish_non_exhaustive()
    }
}

/// [`ThreadImap`] as an async stream ([`ThreadImap::into_stream`]).
pub struct ThreadImapStream<'p, T, R, I, const ORDERED: bool = true>
where
    T: Send + 'static,
    R: Send + 'static,
{
    imap: ThreadImap<'p, T, R, I, ORDERED>,
}

/// Nothing in it is pinned (its parts are moved freely), whatever the input iterator.
impl<T, R, I, const ORDERED: bool> Unpin for ThreadImapStream<'_, T, R, I, ORDERED>
where
    T: Send + 'static,
    R: Send + 'static,
{
}

impl<T, R, I, const ORDERED: bool> futures_core::Stream for ThreadImapStream<'_, T, R, I, ORDERED>
where
    T: Send + 'static,
    R: Send + 'static,
    I: Iterator<Item = T>,
{
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().imap.feed.poll_outcome(ORDERED, cx)
    }
}

impl<T, R, I, const ORDERED: bool> fmt::Debug for ThreadImapStream<'_, T, R, I, ORDERED>
where
    T: Send + 'static,
    R: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadImapStream").finish_non_exhaustive()
    }
}

/// Ends a map's progress bar: full for a map that returned its results, left where it
/// stopped for one that failed (`finish` drew it full either way).
#[cfg(feature = "progress")]
pub(crate) fn end_bar(bar: &indicatif::ProgressBar, done: bool) {
    if done {
        bar.finish();
    } else {
        bar.abandon();
    }
}
