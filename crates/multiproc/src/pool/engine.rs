//! The process pool's engine: what the [`Pool`](super::Pool) handle drives. Tasks are
//! registered and dispatched to workers (`submit`, `pump`), queued jobs are stolen back
//! from a worker stuck on a long task (`steal`), and the engine's thread routes
//! outcomes to tasks, notices dead workers and replaces them, enforces task timeouts,
//! runs retries when their delay is over, and retires workers when the pool is closed.
//! How it survives its workers is in `README.md` beside this file.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

use super::error::Failure;
use super::retry::RetryPolicy;
use super::task::{Cancel, Help, Sink};
use super::tickets::{TicketState, Tickets};
use super::worker::TaskEntry;
use super::worker::{
    self, CONTEXT_DROP, CONTEXT_PUT, CONTROL, JOB_HEADER, JobHeader, OUTCOME_HEADER, OutcomeHeader,
    RETIRE, WorkerArgs, kind,
};
use super::{PoolError, TaskError};
use crate::bootstrap::RemotePanic;
use crate::deadline::Deadline;
use crate::ipc::channel::{self, MAX_SLEEP, RawReceiver, RawSender, Received, RecvFail, SendFail};
use crate::process::{Armed, Builder, JoinHandle, Limits, StartMethod};
use crate::sync::unpoisoned;
use crate::sys::{self, AsFd, OwnedFd};
use crate::wire::codec::{CodecError, Counts, Encoded, Kept};
/// Jobs a worker holds at least (one running, one waiting), and at most.
pub(crate) const DEPTH_MIN: usize = 2;
pub(crate) const DEPTH_MAX: usize = 128;
/// A worker is kept this busy: it holds as many jobs as it runs in this time.
const DEPTH_TARGET: Duration = Duration::from_micros(200);
/// A worker whose task has run this long while another worker idles gives its queued
/// tasks to the idle one (so a short task never waits behind a long one).
const STEAL_AFTER: Duration = Duration::from_millis(1);
/// How often a worker whose job ring had no room while it held no task is tried again
/// (see [`PoolInner::timers`]).
const STALLED_RETRY: Duration = Duration::from_millis(1);
/// How long a worker may hold a task it has not begun, while another worker idles,
/// before its tasks go to that one (it is stopped, or its initializer still runs).
const STALL_AFTER: Duration = Duration::from_millis(20);
/// Consecutive workers that fail to start (or whose initializer fails) before the pool
/// gives up.
const MAX_START_FAILURES: u32 = 3;
/// A ready worker that ends this soon after it said so, before it was sent any task,
/// did not start properly (something its initializer set going kills it); one that
/// ends later, idle, was ended from outside (an operator, the OOM killer) and is only
/// replaced.
const START_WINDOW: Duration = Duration::from_secs(1);
/// How long a killed worker of a pool that failed to start may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Numbers worker names: `PoolWorker-1`, `PoolWorker-2`, ... across all pools.
static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

/// What the pool was built with.
pub(super) struct Config {
    pub(super) processes: usize,
    pub(super) start_method: Option<StartMethod>,
    pub(super) init: Option<(TaskEntry, Kept)>,
    pub(super) max_tasks_per_child: Option<u64>,
    pub(super) task_timeout: Option<Duration>,
    pub(super) retry: RetryPolicy,
    pub(super) name: String,
    pub(super) identity: [u64; 6],
    /// Resource limits of each worker, and what tells a task that ran into one.
    pub(super) limits: Limits,
    pub(super) armed: Armed,
}

/// Everything the pool handle, the engine thread and tasks share.
pub(crate) struct PoolInner {
    config: Config,
    tickets: Tickets,
    results_rx: RawReceiver,
    /// Cloned into each worker.
    results_tx: RawSender,
    /// Wakes the engine thread.
    bell: OwnedFd,
    state: Mutex<State>,
    /// Signalled when the pool finishes (for `join`).
    changed: Condvar,
    /// Threads routing outcomes themselves while they wait (see [`PoolInner::helper`]).
    helpers: AtomicUsize,
    /// Held (shared) from taking outcomes off the channel until they are routed, and
    /// (exclusive) by `reap` while it settles dead workers' tasks: an outcome another
    /// thread has taken but not yet routed is routed first, rather than its task failed
    /// as its worker's death. Threads that route do not wait for each other.
    routing: RwLock<()>,
    /// The engine thread, once it runs.
    engine_thread: OnceLock<ThreadId>,
    /// After a worker failed to start: when to try again (monotonic ns; 0: at once).
    retry_start_at: AtomicU64,
    /// When a callback of the engine thread last did the engine's chores (`help`).
    chores_at: AtomicU64,
    /// Outcomes routed and not handed over yet, each with the number of the batch it
    /// came in (see [`PoolInner::deliver`]), and how many (changed under its lock; read
    /// without it, so that a helper's look at an empty list touches nothing another
    /// thread writes).
    undelivered: Mutex<Undelivered>,
    undelivered_len: AtomicUsize,
    /// Batches of outcomes being handed over (waiting in `undelivered`, or their
    /// callbacks running) that a `join` waits for: all but those a `join` in one of
    /// their callbacks let go (see [`PoolInner::let_go_handing_here`]).
    handing: AtomicUsize,
    /// Threads in [`PoolInner::wait_finished`]: the last batch handed over wakes them.
    finish_waiters: AtomicUsize,
    /// The last batch number given.
    batches: AtomicU64,
    /// While an outcome waits for room for its descriptors (see [`NO_ROOM_RETRY`]):
    /// when to try to take it again (monotonic ns; 0: none waits). Set and cleared
    /// under the state lock, with `State::no_room_since`.
    no_room_retry_at: AtomicU64,
    /// While an outcome waits for room: when an outcome was last taken off the channel
    /// (monotonic ns), by whichever thread; the wait is counted from then.
    last_taken: AtomicU64,
    /// The results channel failed and the pool gave up: nothing is taken off it any
    /// more (what is there can be neither trusted nor taken, and its tasks have
    /// failed).
    channel_failed: AtomicBool,
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
    /// `shutdown` cancelled the tasks not started: a retry due later is cancelled too.
    cancel_pending: bool,
    /// Why the pool gave up, if it did.
    broken: Option<String>,
    /// Workers that failed to start or initialise since a worker last reported a task's
    /// outcome, whatever it was.
    start_failures: u32,
    /// The engine has finished: no tasks, no workers.
    finished: bool,
    /// Since when the next outcome has waited for room for its descriptors (monotonic
    /// ns).
    no_room_since: Option<u64>,
    /// Outcomes decided while the lock was held, handed over once it is released
    /// (`PoolInner::release`): a task's callbacks may call back into the pool.
    deferred: Vec<Delivery>,
    /// The contexts of `map_with` calls under way: the control job that gives one to a
    /// worker (header room included).
    contexts: FxHashMap<u64, Kept>,
    next_context: u64,
    /// Maps under way (see [`PoolInner::open_map`]).
    open_maps: usize,
    /// First reports of workers not yet in the table, by pid, and when they were
    /// routed (see [`Early`]).
    early: Vec<(u64, Early, Instant)>,
    /// The results channel's producers' lock as last seen held (see
    /// [`PoolInner::watch_results_lock`]).
    results_held: Option<HeldLook>,
    /// When the engine next looks at that lock (`None`: at once).
    results_look_due: Option<Instant>,
}

/// The results channel's producers' lock, seen held by `holder` at the last look;
/// seen stopped holding it since `stopped`.
#[derive(Clone, Copy)]
struct HeldLook {
    holder: u64,
    stopped: Option<Instant>,
}

/// How often the engine looks at the results channel's producers' lock: one seen with
/// the same thread at two looks in a row has that thread looked at in `/proc`.
const HELD_LOOK: Duration = Duration::from_millis(10);
/// How long a worker may stay stopped (`SIGSTOP`) holding the results channel's
/// producers' lock before it is killed: every other worker's outcome waits for it.
const STOPPED_HOLDER_GRACE: Duration = Duration::from_secs(1);

/// A new worker's first report, routed before the worker was put in the table (a thread
/// routing outcomes while it waits can take it as the worker starts): kept until the
/// worker is, rather than lost. A worker never marked ready that dies in a task counts
/// as one that failed to start, and three make the pool give up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Early {
    Ready,
    InitFailed,
}

/// The most early reports kept: those of workers that never made it into the table (a
/// pool terminated meanwhile) go first.
const EARLY_KEPT: usize = 64;

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
            cancel_pending: false,
            broken: None,
            start_failures: 0,
            finished: false,
            no_room_since: None,
            deferred: Vec::new(),
            contexts: FxHashMap::default(),
            next_context: 1,
            open_maps: 0,
            early: Vec::new(),
            results_held: None,
            results_look_due: None,
        }
    }
}

/// One worker process, as the pool sees it.
struct Worker {
    handle: JoinHandle<()>,
    /// Its job channel; `None` once it is being retired (it was told to exit, and
    /// exits when the channel has no sender left too).
    jobs: Option<RawSender>,
    /// Being retired, and its channel had no room for the word: tried again with the
    /// stalled workers (its channel is kept open until then).
    retire_due: bool,
    /// Tasks sent to it, in order, not yet finished.
    in_flight: VecDeque<u64>,
    /// Tasks sent to it and not taken back.
    assigned: u64,
    /// It was sent a task (whether or not it was taken back since).
    sent: bool,
    /// How many tasks it may hold.
    depth: usize,
    /// Smoothed time from dispatch to result, in ns.
    turnaround_ns: f64,
    /// The pool killed it, because of this task, with this error for it.
    killed_for: Option<(u64, KillReason)>,
    /// Its job channel refused a job (full or gone): skip it until it reports again, or,
    /// holding no task, until the next look of [`PoolInner::timers`].
    stalled: bool,
    /// It has been sent its last task (`max_tasks_per_child`).
    retiring: bool,
    /// Its current task has run long while other workers idled: its queued tasks were
    /// taken back, and it gets no more until it reports.
    slow: bool,
    /// Tickets of jobs taken back from it: freed when it reports skipping them (or dies).
    /// With the counts of the copies it holds (see `TaskRec::transit`).
    stolen: Vec<(u32, Counts)>,
    /// The `map_with` contexts it was sent.
    contexts: FxHashSet<u64>,
    /// Contexts whose maps are over that it was not yet told to drop (its job channel
    /// was full): told before its next job.
    drops_due: Vec<u64>,
    /// It reported that it could not get ready (counted then, not again as it ends).
    failed_to_start: bool,
    /// It reported that it is ready (its initializer returned).
    ready: bool,
    /// When it reported so.
    ready_at: Option<Instant>,
    /// The first task it holds, seen not yet begun, and when that was first seen.
    unstarted_front: Option<(u64, Instant)>,
}

impl Worker {
    /// Takes in its first report.
    fn heard(&mut self, report: Early) {
        match report {
            Early::Ready => {
                self.ready = true;
                self.ready_at = Some(Instant::now());
                self.slow = false;
            }
            Early::InitFailed => self.failed_to_start = true,
        }
    }
}

impl State {
    /// Keeps the first report of a worker not yet in the table.
    fn keep_early(&mut self, pid: u64, report: Early) {
        if self.early.len() >= EARLY_KEPT {
            self.early.remove(0);
        }
        self.early.push((pid, report, Instant::now()));
    }

    /// Takes the early reports of the worker `pid`, started at `began`: those routed
    /// before then were another process's, which had the pid before it.
    fn take_early(&mut self, pid: u64, began: Instant) -> Vec<Early> {
        let mut taken = Vec::new();
        self.early.retain(|&(p, report, at)| {
            if p == pid && at >= began {
                taken.push(report);
            }
            p != pid
        });
        taken
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillReason {
    TimedOut,
    Cancelled,
    Terminated,
    /// It stayed stopped holding the results channel's producers' lock.
    StoppedHolding,
}

/// What one submission asks beyond the pool's settings (`submit_with`).
#[derive(Clone, Debug, Default)]
pub(super) struct PerTask {
    /// Instead of the pool's `task_timeout`.
    pub(super) timeout: Option<Duration>,
    /// Instead of the pool's retry policy.
    pub(super) retry: Option<RetryPolicy>,
    /// Not before then.
    pub(super) not_before: Option<Instant>,
    /// For a fallible task: finds an `Err` in a returned value (the encoded `Result`)
    /// and makes it a failure.
    pub(super) fallible: Option<FailureCheck>,
}

/// The worker with process id `pid` (reports about a worker itself carry its pid).
fn worker_with_pid(st: &mut State, pid: u64) -> Option<&mut Worker> {
    st.workers
        .iter_mut()
        .flatten()
        .find(|w| u64::from(w.handle.pid()) == pid)
}

/// Debug builds only, for a test: how long the engine waits between starting a worker
/// and putting it in its table (`MULTIPROC_TEST_WORKER_START_DELAY_MS`), so that the
/// worker's first report arrives meanwhile.
fn test_start_delay() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        let ms = std::env::var("MULTIPROC_TEST_WORKER_START_DELAY_MS").ok()?;
        ms.parse().ok().map(Duration::from_millis)
    })
}

/// Looks at a fallible task's encoded `Result`: the failure, if it is an `Err`.
pub(super) type FailureCheck = fn(&[u8]) -> Option<Failure>;

/// A task the pool knows about.
struct TaskRec {
    entry: TaskEntry,
    /// Its own settings, if any (boxed: most tasks have none).
    per_task: Option<Box<PerTask>>,
    /// The `map_with` context its worker needs (0: none).
    context: u64,
    /// The job, header room included; kept until the task ends, to send it again if its
    /// worker dies before starting it, or to retry it.
    payload: Kept,
    sink: Arc<dyn Sink<Received>>,
    slot: usize,
    /// Runs so far that ended in failure.
    attempts: u32,
    worker: Option<usize>,
    ticket: Option<(u32, u32)>,
    /// Its outcome was delivered already (cancelled); only the ticket is left to free.
    delivered: bool,
    /// Nobody will read its outcome (its `map` failed, its `imap` was dropped) while it
    /// ran: a failed run is not retried.
    discarded: bool,
    /// Ready workers that died while it was the next task they were to begin.
    lost_unstarted: u32,
    /// The counts (see [`Encoded`]) the copy of its job sent to its worker holds, while
    /// that worker may still skip the copy without decoding it (the task was taken back
    /// or cancelled before it began, or the worker died first): they come back then.
    transit: Counts,
}

impl PoolInner {
    /// A task's panic as its error: one under a limit that it ran into (an open-files
    /// limit's `EMFILE`) is that limit's.
    pub(super) fn panic_error(&self, panic: RemotePanic) -> TaskError {
        match self.config.armed.panicked(&panic) {
            Some((limit, detail)) => TaskError::LimitExceeded { limit, detail },
            None => TaskError::Panicked(panic),
        }
    }

    /// Starts the engine: the shared state, a worker per process, and the engine's
    /// thread. Returns the state the handle shares and the thread to join.
    pub(super) fn start(
        config: Config,
    ) -> Result<(Arc<PoolInner>, std::thread::JoinHandle<()>), PoolError> {
        let processes = config.processes;
        let capacity = processes.checked_mul(DEPTH_MAX).ok_or_else(|| {
            PoolError::InvalidArgument(format!("{processes} worker processes are too many"))
        })?;
        let tickets =
            Tickets::new(capacity).map_err(|e| PoolError::Io(std::io::Error::other(e)))?;
        let (results_tx, results_rx) = channel::channel(channel::DEFAULT_RING, None)?;
        let inner = Arc::new(PoolInner {
            config,
            tickets,
            results_rx,
            results_tx,
            bell: sys::doorbell()?,
            state: Mutex::new(State::new(processes, capacity)),
            changed: Condvar::new(),
            helpers: AtomicUsize::new(0),
            routing: RwLock::new(()),
            engine_thread: OnceLock::new(),
            retry_start_at: AtomicU64::new(0),
            chores_at: AtomicU64::new(0),
            undelivered: Mutex::new(Undelivered::default()),
            undelivered_len: AtomicUsize::new(0),
            handing: AtomicUsize::new(0),
            finish_waiters: AtomicUsize::new(0),
            batches: AtomicU64::new(0),
            no_room_retry_at: AtomicU64::new(0),
            last_taken: AtomicU64::new(0),
            channel_failed: AtomicBool::new(false),
        });
        // The workers already started go with a pool that was never made, reaped now
        // rather than holding their descriptors until some later spawn prunes them.
        let unmade = |e: PoolError| {
            let started: Vec<Worker> = unpoisoned::lock(&inner.state)
                .workers
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            for mut worker in started {
                worker.jobs = None;
                let _ = worker.handle.kill();
                let _ = worker.handle.join_timeout(REAP_TIMEOUT);
            }
            e
        };
        for index in 0..processes {
            let worker = inner.start_worker(index).map_err(unmade)?;
            unpoisoned::lock(&inner.state).workers[index] = Some(worker);
        }
        let thread = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("multiproc-pool".into())
                .spawn(move || run(&inner))
                .map_err(|e| unmade(PoolError::Io(e)))?
        };
        Ok((inner, thread))
    }

    /// The number of worker processes.
    pub(super) fn processes(&self) -> usize {
        self.config.processes
    }

    /// Tasks the pool knows about, and whether it is closed: for `Debug`.
    pub(super) fn summary(&self) -> (usize, bool) {
        let st = unpoisoned::lock(&self.state);
        (st.tasks.len(), st.closed)
    }

    /// The pids of the workers alive now.
    pub(super) fn worker_pids(&self) -> Vec<u32> {
        unpoisoned::lock(&self.state)
            .workers
            .iter()
            .flatten()
            .map(|w| w.handle.pid())
            .collect()
    }

    /// Refuses new tasks; those submitted run to the end, then the workers exit.
    pub(super) fn close(&self) {
        unpoisoned::lock(&self.state).closed = true;
        self.ring();
    }

    /// A map starting: until the guard is dropped, its chunks are accepted even after
    /// the pool is closed, and a closed pool does not finish. A map feeds its chunks as
    /// it goes (`Feed` in `pool/mod.rs`); one called before `close` still runs to its
    /// end, as Python's does (its task handler feeds a map's chunks after `close`
    /// too). `terminate` ends it.
    pub(super) fn open_map(&self) -> Result<OpenMap<'_>, TaskError> {
        let mut st = unpoisoned::lock(&self.state);
        refuses(&st, false)?;
        st.open_maps += 1;
        drop(st);
        let _ = MAPPING.try_with(|m| m.borrow_mut().push(self.addr()));
        Ok(OpenMap(self))
    }

    fn addr(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    /// Whether a wait for the pool to finish would wait for the calling thread itself:
    /// it is the pool's own thread (in a callback), or it runs a callback while its own
    /// `map` of the pool is open (a map's caller routes outcomes as it waits).
    pub(super) fn finishing_waits_for_caller(&self) -> bool {
        self.on_engine_thread()
            || MAPPING
                .try_with(|m| m.borrow().contains(&self.addr()))
                .unwrap_or(false)
    }

    /// Registers a task and sends it to a worker if one has room. Returns its id.
    pub(super) fn submit(
        &self,
        entry: TaskEntry,
        payload: Encoded,
        sink: Arc<dyn Sink<Received>>,
        slot: usize,
        per_task: Option<Box<PerTask>>,
    ) -> Result<u64, TaskError> {
        let delayed = per_task.as_ref().is_some_and(|p| p.not_before.is_some());
        let mut st = unpoisoned::lock(&self.state);
        if let Err(e) = refuses(&st, false) {
            payload.discard();
            return Err(e);
        }
        let id = self.register(&mut st, (entry, 0), payload, sink, slot, per_task)?;
        self.pump(&mut st);
        self.release(st);
        if delayed {
            // The engine's thread keeps the time.
            self.ring();
        }
        Ok(id)
    }

    /// Releases the state lock, then hands over the outcomes decided under it.
    fn release(&self, mut st: std::sync::MutexGuard<'_, State>) {
        let deferred = std::mem::take(&mut st.deferred);
        if deferred.is_empty() {
            return;
        }
        // Counted while the tasks' removal is not yet seen by anyone: a `join` that
        // finds the pool finished once the lock is let go waits for them.
        let handing = self.handing_from_here();
        drop(st);
        self.deliver(deferred, handing);
    }

    /// Registers tasks (under one lock) and sends them to workers with room. Returns
    /// their ids, or the error that refused them all.
    /// `context`: the `map_with` context the jobs run with (0: none; see
    /// [`add_context`](Self::add_context)).
    /// `in_map`: the jobs are chunks of a map under way (the caller holds an
    /// [`OpenMap`]), accepted after a `close`.
    pub(super) fn submit_many(
        &self,
        (entry, context): (TaskEntry, u64),
        jobs: Vec<(usize, Encoded)>,
        sink: &Arc<dyn Sink<Received>>,
        in_map: bool,
    ) -> Result<Vec<u64>, TaskError> {
        let mut st = unpoisoned::lock(&self.state);
        if let Err(e) = refuses(&st, in_map) {
            jobs.into_iter().for_each(|(_, job)| job.discard());
            return Err(e);
        }
        let mut ids = Vec::with_capacity(jobs.len());
        for (slot, payload) in jobs {
            ids.push(self.register(
                &mut st,
                (entry, context),
                payload,
                Arc::clone(sink),
                slot,
                None,
            )?);
        }
        self.pump(&mut st);
        self.release(st);
        Ok(ids)
    }

    /// Adds a task to the queue.
    fn register(
        &self,
        st: &mut State,
        (entry, context): (TaskEntry, u64),
        payload: Encoded,
        sink: Arc<dyn Sink<Received>>,
        slot: usize,
        per_task: Option<Box<PerTask>>,
    ) -> Result<u64, TaskError> {
        let id = st.next_id;
        st.next_id += 1;
        let not_before = per_task.as_ref().and_then(|p| p.not_before);
        st.tasks.insert(
            id,
            TaskRec {
                entry,
                per_task,
                context,
                payload: Kept::new(payload),
                sink,
                slot,
                attempts: 0,
                worker: None,
                ticket: None,
                delivered: false,
                discarded: false,
                lost_unstarted: 0,
                transit: Counts::default(),
            },
        );
        match not_before {
            Some(at) if at > Instant::now() => st.delayed.push((at, id)),
            _ => st.pending.push_back(id),
        }
        Ok(id)
    }

    /// Registers the context of a `map_with` (its encoding, header room included): its
    /// chunks name it, and each worker that runs one is sent it first. Its id.
    pub(super) fn add_context(&self, mut payload: Encoded) -> u64 {
        let mut st = unpoisoned::lock(&self.state);
        let id = st.next_context;
        st.next_context += 1;
        JobHeader {
            id,
            ticket: CONTROL,
            generation: CONTEXT_PUT,
            entry: TaskEntry::from_words([0, 0]),
            context: id,
        }
        .write(&mut payload.bytes[..JOB_HEADER]);
        st.contexts.insert(id, Kept::new(payload));
        id
    }

    /// The `map_with` of context `id` is over: workers that have it are told to drop it
    /// (one whose job channel is full is told before its next job: the context, a model
    /// or a table, stayed in it until it exited).
    pub(super) fn end_context(&self, id: u64) {
        let mut st = unpoisoned::lock(&self.state);
        st.contexts.remove(&id);
        for w in st.workers.iter_mut().flatten() {
            if w.contexts.remove(&id) {
                w.drops_due.push(id);
                w.send_drops();
            }
        }
    }

    /// Sends pending tasks to workers with room.
    fn pump(&self, st: &mut State) {
        let State {
            workers,
            tasks,
            pending,
            free_tickets,
            generations,
            deferred,
            contexts,
            ..
        } = st;
        for w in workers.iter_mut().flatten() {
            w.send_drops();
        }
        // A task sent with a timeout shorter than the engine's longest sleep: the engine
        // looks at it (it may be asleep, with nothing else to time).
        let mut timed = false;
        while let Some(&id) = pending.front() {
            let Some(w) = pick_worker(workers) else {
                break;
            };
            let Some(ticket) = free_tickets.pop() else {
                break;
            };
            pending.pop_front();
            let (Some(rec), Some(Some(worker))) = (tasks.get_mut(&id), workers.get_mut(w)) else {
                free_tickets.push(ticket);
                continue;
            };
            if rec.context != 0 && !worker.contexts.contains(&rec.context) {
                // The worker gets the map's context before its first chunk of it.
                let Some(put) = contexts.get(&rec.context) else {
                    // Its map was given up; nobody reads it.
                    free_tickets.push(ticket);
                    if let Some(rec) = tasks.remove(&id) {
                        deferred.push((rec.sink, rec.slot, Err(TaskError::Cancelled)));
                    }
                    continue;
                };
                let sent = match &worker.jobs {
                    Some(jobs) => send_job(jobs, put),
                    None => Err(SendFail::Disconnected),
                };
                match sent {
                    Ok(_) => {
                        worker.contexts.insert(rec.context);
                        // Reading it may be what kills the worker: not a failed start.
                        worker.sent = true;
                    }
                    Err(SendFail::Io(e)) => {
                        free_tickets.push(ticket);
                        if let Some(rec) = tasks.remove(&id) {
                            deferred.push((rec.sink, rec.slot, Err(TaskError::Io(Arc::new(e)))));
                        }
                        continue;
                    }
                    Err(SendFail::Full | SendFail::Disconnected) => {
                        worker.stalled = true;
                        free_tickets.push(ticket);
                        pending.push_front(id);
                        continue;
                    }
                }
            }
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
                context: rec.context,
            }
            .write(&mut rec.payload.bytes[..JOB_HEADER]);
            let sent = match &worker.jobs {
                Some(jobs) => send_job(jobs, &rec.payload),
                None => Err(SendFail::Disconnected),
            };
            match sent {
                Ok(transit) => {
                    timed |= rec
                        .per_task
                        .as_ref()
                        .and_then(|p| p.timeout)
                        .or(self.config.task_timeout)
                        .is_some_and(|t| t < MAX_SLEEP);
                    rec.transit = transit;
                    rec.worker = Some(w);
                    rec.ticket = Some((ticket, generation));
                    worker.in_flight.push_back(id);
                    worker.assigned += 1;
                    worker.sent = true;
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
                        deferred.push((rec.sink, rec.slot, Err(TaskError::Io(Arc::new(e)))));
                    }
                }
                Err(SendFail::Full | SendFail::Disconnected) => {
                    // Another worker takes it; this one is looked at again when it
                    // reports (or is replaced), or, holding no task, at the next look
                    // of `timers`.
                    worker.stalled = true;
                    self.tickets.free(ticket);
                    free_tickets.push(ticket);
                    pending.push_front(id);
                }
            }
        }
        if timed {
            self.ring();
        }
    }

    /// Removes tasks nobody will read (a `map` that failed half-way, an `imap` dropped):
    /// queued ones are dropped, those sent to a worker and not begun are skipped by it;
    /// running ones finish and their results are thrown away.
    pub(super) fn discard(&self, ids: &[u64]) {
        let mut st = unpoisoned::lock(&self.state);
        for id in ids {
            if let Some(pos) = st.pending.iter().position(|p| p == id) {
                st.pending.remove(pos);
                st.tasks.remove(id);
            } else if let Some(pos) = st.delayed.iter().position(|(_, p)| p == id) {
                st.delayed.remove(pos);
                st.tasks.remove(id);
            } else if let Some(rec) = st.tasks.get_mut(id)
                && !rec.delivered
                && let Some((ticket, generation)) = rec.ticket
                && self.tickets.cancel(ticket, generation) == TicketState::Cancelled
            {
                // Sent to a worker and not started: it skips the job and says so, which
                // frees the ticket and the record.
                rec.delivered = true;
            } else if let Some(rec) = st.tasks.get_mut(id) {
                // Running: it finishes, and a failure is its end.
                rec.discarded = true;
            }
        }
    }

    /// Cancels every task not yet sent to a worker (Python's `shutdown(cancel_futures=
    /// True)`): they end as `Cancelled`; running ones go on.
    pub(super) fn cancel_pending(&self) {
        let mut st = unpoisoned::lock(&self.state);
        st.cancel_pending = true;
        let mut ids: Vec<u64> = st.pending.drain(..).collect();
        ids.extend(st.delayed.drain(..).map(|(_, id)| id));
        for id in ids {
            if let Some(rec) = st.tasks.remove(&id) {
                st.deferred
                    .push((rec.sink, rec.slot, Err(TaskError::Cancelled)));
            }
        }
        // Sent to a worker and not started: its ticket is taken first (the worker then
        // skips the job and says so, which frees the ticket).
        let State {
            tasks, deferred, ..
        } = &mut *st;
        for rec in tasks.values_mut() {
            if rec.delivered {
                continue;
            }
            if let Some((ticket, generation)) = rec.ticket
                && self.tickets.cancel(ticket, generation) == TicketState::Cancelled
            {
                rec.delivered = true;
                deferred.push((Arc::clone(&rec.sink), rec.slot, Err(TaskError::Cancelled)));
            }
        }
        self.release(st);
        self.ring();
    }

    /// Kills every worker and fails every task.
    pub(super) fn terminate(&self) {
        let mut st = unpoisoned::lock(&self.state);
        if st.terminated {
            return;
        }
        st.terminated = true;
        st.closed = true;
        let mut never_sent: Vec<u64> = st.pending.drain(..).collect();
        never_sent.extend(st.delayed.drain(..).map(|(_, id)| id));
        st.early.clear();
        for w in st.workers.iter_mut().flatten() {
            w.jobs = None;
            let _ = w.handle.kill();
            if w.killed_for.is_none() {
                w.killed_for = w.in_flight.front().map(|&id| (id, KillReason::Terminated));
            }
        }
        let State {
            tasks, deferred, ..
        } = &mut *st;
        // Tasks no worker holds: their records (and arguments) go now, not with the
        // pool; those sent to a worker go once it is reaped.
        for id in never_sent {
            if let Some(rec) = tasks.remove(&id)
                && !rec.delivered
            {
                deferred.push((rec.sink, rec.slot, Err(TaskError::PoolClosed)));
            }
        }
        for rec in tasks.values_mut() {
            if !rec.delivered {
                rec.delivered = true;
                deferred.push((Arc::clone(&rec.sink), rec.slot, Err(TaskError::PoolClosed)));
            }
        }
        self.release(st);
        self.ring();
    }

    /// Wakes the engine thread.
    fn ring(&self) {
        sys::ring(sys::AsFd::as_fd(&self.bell));
    }

    /// Makes the calling thread, which is about to wait for a map's results, route the
    /// outcomes itself while it spins. Meanwhile the engine thread neither spins on the
    /// result channel nor sleeps on its doorbell (so workers need not wake it and it
    /// takes no CPU from them), draining it only every [`HELPED_NAP`]: a map of 32
    /// chunks had it woken for each outcome, to find that the waiting thread had mostly
    /// routed it already. Once the last helper sleeps or leaves, the engine is woken to
    /// watch the channel again.
    pub(super) fn helper(&self) -> Helper<'_> {
        self.helpers.fetch_add(1, Ordering::SeqCst);
        Helper {
            inner: self,
            on: std::cell::Cell::new(true),
        }
    }

    fn stop_helping(&self) {
        if self.helpers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.ring();
        }
    }

    /// Whether the calling thread is the engine's (a callback it runs).
    pub(super) fn on_engine_thread(&self) -> bool {
        self.engine_thread
            .get()
            .is_some_and(|&id| id == std::thread::current().id())
    }

    /// Waits until the engine has finished (no tasks, no workers) and every outcome
    /// has been handed over (callbacks run on other threads, a cancelling one's or one
    /// routing outcomes as it waits, included), or `deadline`.
    pub(super) fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        self.let_go_handing_here();
        let mut st = unpoisoned::lock(&self.state);
        let _waiting = Counted::enter(&self.finish_waiters);
        loop {
            if st.finished && self.handing.load(Ordering::SeqCst) == 0 {
                return true;
            }
            st = match unpoisoned::wait_until(&self.changed, st, deadline) {
                Ok(st) => st,
                Err(_) => return false,
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
            if w.killed_for.is_some() {
                continue;
            }
            // Its first task that is still wanted: those before it were cancelled (or
            // dropped with their `imap`) before they began, and it skips them.
            let Some(front_at) = w
                .in_flight
                .iter()
                .position(|id| tasks.get(id).is_some_and(|r| !r.delivered))
            else {
                continue;
            };
            let front = tasks.get(&w.in_flight[front_at]).and_then(|r| r.ticket);
            let Some((ticket, generation)) = front else {
                continue;
            };
            // How long it has been at its first task, how long it may be before its
            // tasks go to the idle worker, and how many it keeps: the one it runs, or
            // none.
            let (waited, limit, keep) = match self.tickets.state(ticket, generation) {
                TicketState::Running(_) if w.in_flight.len() < front_at + 2 => continue,
                TicketState::Running(0) => (0, limit, front_at + 1),
                TicketState::Running(started) => {
                    (now_ns.saturating_sub(started), limit, front_at + 1)
                }
                // It has not begun the first task it holds (a worker that is free begins
                // the next at once): it is stopped (SIGSTOP), still starting (a slow
                // initializer), or waiting for something else (a lock held by a stopped
                // worker).
                TicketState::Queued => {
                    let front = w.in_flight[front_at];
                    let since = match w.unstarted_front {
                        Some((id, since)) if id == front => since,
                        _ => w.unstarted_front.insert((front, now)).1,
                    };
                    let stall = STALL_AFTER.as_nanos() as u64;
                    let waited = now.saturating_duration_since(since).as_nanos() as u64;
                    // One that is ready, holds nothing before it, and is running or
                    // faulting in pages is on its way there, reading a large job or a
                    // map's context: that job may be what kills it (too large for a
                    // memory cap), and the death must count against the job, not go
                    // unnoticed as the job moves on. It keeps that one (the tasks
                    // behind it go), and is looked at again a stall later. Looked at
                    // once a stall is long.
                    let on_its_way = waited >= stall
                        && w.ready
                        && front_at == 0
                        && matches!(sys::process_state(w.handle.pid()), Some('R' | 'D'));
                    if on_its_way {
                        w.unstarted_front = Some((front, now));
                        (waited, stall, front_at + 1)
                    } else {
                        (waited, stall, front_at)
                    }
                }
                _ => continue,
            };
            if waited < limit {
                let at = now + Duration::from_nanos(limit - waited);
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            w.slow = true;
            let mut at = keep;
            while at < w.in_flight.len() {
                let id = w.in_flight[at];
                let Some(rec) = tasks.get_mut(&id) else {
                    at += 1;
                    continue;
                };
                let (Some((ticket, generation)), false) = (rec.ticket, rec.delivered) else {
                    // Cancelled before it began: the worker skips it.
                    at += 1;
                    continue;
                };
                if self.tickets.cancel(ticket, generation) != TicketState::Cancelled {
                    // It started: the long task is over.
                    break;
                }
                w.in_flight.remove(at);
                w.stolen.push((ticket, std::mem::take(&mut rec.transit)));
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
        // The initializer argument's copy holds counts of its own (see `Encoded`), which
        // travel inside the worker's arguments: a start that fails gives them back.
        let init_counts = init.as_ref().map(|(_, arg)| arg.counts.clone());
        let args = WorkerArgs {
            identity: self.config.identity,
            jobs: jobs_rx,
            results: self.results_tx.clone(),
            tickets: self.tickets.clone(),
            init,
            cpu_per_task: self.config.limits.cpu(),
            timed: self.config.task_timeout.is_some(),
        };
        let n = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        let mut builder = Builder::new()
            .name(format!("{}-{n}", self.config.name))
            .daemon(true)
            .limits(self.config.limits.clone());
        if let Some(method) = self.config.start_method {
            builder = builder.start_method(method);
        }
        let handle = match builder.spawn(worker::worker_main, args) {
            Ok(handle) => handle,
            Err(e) => {
                init_counts.into_iter().for_each(Counts::give_back);
                return Err(e.into());
            }
        };
        tracing::trace!(pid = handle.pid(), index, "pool worker started");
        Ok(Worker {
            handle,
            jobs: Some(jobs_tx),
            in_flight: VecDeque::new(),
            assigned: 0,
            sent: false,
            depth: DEPTH_MIN,
            turnaround_ns: 0.0,
            killed_for: None,
            stalled: false,
            retire_due: false,
            retiring: false,
            slow: false,
            stolen: Vec::new(),
            contexts: FxHashSet::default(),
            drops_due: Vec::new(),
            failed_to_start: false,
            ready: false,
            ready_at: None,
            unstarted_front: None,
        })
    }
}

/// Debug builds only, for a test: the first N drops of a context (N in
/// `MULTIPROC_TEST_REFUSE_CONTEXT_DROPS`) are refused as a full job channel refuses them.
#[cfg(debug_assertions)]
fn refuse_a_drop_for_a_test() -> bool {
    static LEFT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    LEFT.get_or_init(|| {
        AtomicU64::new(
            std::env::var("MULTIPROC_TEST_REFUSE_CONTEXT_DROPS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        )
    })
    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
    .is_ok()
}

impl Worker {
    /// Lets the worker go: it is told to exit, and its job channel closed. Closing alone
    /// would not end it while another process holds a copy of the channel's sender (a
    /// child the program forked with `spawn_fork` holds every descriptor it had): the
    /// worker's slot would stay taken, no replacement would start, and `join` would
    /// wait for that child. Sent only where it fits now: a worker whose channel is full
    /// may hold a map's context it has not taken yet (no task): it is marked stalled,
    /// and tried again at the engine's looks, as such a worker is.
    fn retire(&mut self) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        self.retiring = true;
        let mut retire = vec![0; JOB_HEADER];
        JobHeader {
            id: 0,
            ticket: CONTROL,
            generation: RETIRE,
            entry: TaskEntry::from_words([0, 0]),
            context: 0,
        }
        .write(&mut retire);
        if let Err(SendFail::Full) = send_job(jobs, &Encoded::plain(retire)) {
            self.retire_due = true;
            self.stalled = true;
            return;
        }
        self.retire_due = false;
        self.jobs = None;
    }

    /// Tells the worker to drop the contexts of maps that are over, as far as its job
    /// channel has room; one that has none now is marked stalled, so that it is tried
    /// again (when it reports, or at the engine's next look if it holds no task).
    fn send_drops(&mut self) {
        if self.drops_due.is_empty() {
            return;
        }
        let Some(jobs) = &self.jobs else {
            // Being retired: it exits, and its contexts with it.
            self.drops_due.clear();
            return;
        };
        let mut sent = 0;
        for &id in &self.drops_due {
            let mut drop_it = vec![0; JOB_HEADER];
            JobHeader {
                id,
                ticket: CONTROL,
                generation: CONTEXT_DROP,
                entry: TaskEntry::from_words([0, 0]),
                context: id,
            }
            .write(&mut drop_it);
            #[cfg(debug_assertions)]
            if refuse_a_drop_for_a_test() {
                self.stalled = true;
                break;
            }
            match send_job(jobs, &Encoded::plain(drop_it)) {
                Ok(_) => sent += 1,
                // Full: later. Gone: it exits, and its contexts with it. A failure to
                // write a header's few bytes in the ring is neither: given up.
                Err(SendFail::Full) => {
                    self.stalled = true;
                    break;
                }
                Err(SendFail::Disconnected) => {
                    sent = self.drops_due.len();
                    break;
                }
                Err(SendFail::Io(e)) => {
                    tracing::debug!("pool: a worker cannot be told to drop a context: {e}");
                    sent += 1;
                }
            }
        }
        self.drops_due.drain(..sent);
    }
}

impl Cancel for PoolInner {
    fn help(&self) {
        if self.on_engine_thread() {
            // A callback the engine thread runs waits for a task: what the engine does
            // besides routing is done here too (once a millisecond at most), or a task
            // needing it (a new worker, a retry or countdown that comes due, a timeout)
            // would wait for ever.
            let now = sys::monotonic_ns();
            let last = self.chores_at.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= CHORES_EVERY.as_nanos() as u64 {
                self.chores_at.store(now, Ordering::Relaxed);
                self.reap();
                self.timers();
                self.replace_workers_when_due();
            }
        }
        self.drain_results();
    }

    fn helps(&self) -> bool {
        true
    }

    fn routes_here(&self) -> bool {
        self.on_engine_thread()
    }

    fn is_running(&self, id: u64) -> bool {
        let st = unpoisoned::lock(&self.state);
        st.tasks
            .get(&id)
            .filter(|r| !r.delivered)
            .and_then(|r| r.ticket)
            .is_some_and(|(t, g)| {
                matches!(
                    self.tickets.state(t, g),
                    TicketState::Running(_) | TicketState::Finished(_) | TicketState::Killing
                )
            })
    }

    fn cancel(&self, id: u64) -> bool {
        self.cancel_as(id, false)
    }

    fn cancel_unstarted(&self, id: u64) -> bool {
        self.cancel_as(id, true)
    }
}

impl PoolInner {
    /// Cancels task `id` (see [`Cancel::cancel`]); `unstarted`: only if it has not
    /// started (a running task's worker is not killed).
    fn cancel_as(&self, id: u64, unstarted: bool) -> bool {
        let mut st = unpoisoned::lock(&self.state);
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
                    st.deferred
                        .push((rec.sink, rec.slot, Err(TaskError::Cancelled)));
                }
                self.release(st);
                true
            }
            (Some(w), Some((ticket, generation))) => {
                match self.tickets.cancel(ticket, generation) {
                    // Its worker will skip it (and say so, which frees the ticket).
                    TicketState::Cancelled => {
                        let State {
                            tasks, deferred, ..
                        } = &mut *st;
                        if let Some(rec) = tasks.get_mut(&id) {
                            rec.delivered = true;
                            deferred.push((
                                Arc::clone(&rec.sink),
                                rec.slot,
                                Err(TaskError::Cancelled),
                            ));
                        }
                        self.release(st);
                        true
                    }
                    // Running: only killing its worker stops it, unless it ends first
                    // (then its outcome is on its way, and the worker may be running
                    // its next task).
                    TicketState::Running(_) if unstarted => false,
                    TicketState::Running(_) => {
                        if let Some(Some(worker)) = st.workers.get_mut(w)
                            && worker.killed_for.is_none()
                            && self.tickets.kill(ticket, generation) == TicketState::Killing
                        {
                            worker.killed_for = Some((id, KillReason::Cancelled));
                            let _ = worker.handle.kill();
                            drop(st);
                            self.ring();
                            return true;
                        }
                        false
                    }
                    TicketState::Queued
                    | TicketState::Finished(_)
                    | TicketState::Killing
                    | TicketState::Other => false,
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
/// The counts the copy sent holds (see `TaskRec::transit`).
fn send_job(jobs: &RawSender, payload: &Encoded) -> Result<Counts, SendFail> {
    if payload.fds.is_empty() && jobs.fits_inline(payload.bytes.len()) {
        let mut fill = |buf: &mut [u8]| {
            buf.copy_from_slice(&payload.bytes);
            true
        };
        // A copy like any other: the counts the job holds (a manager proxy's, in one
        // without descriptors) are added for it.
        let counts = payload.counts.again();
        return match jobs.send_inline(payload.bytes.len(), &mut fill, Deadline::Now, false) {
            Ok(()) => Ok(counts),
            Err(e) => {
                counts.give_back();
                Err(e)
            }
        };
    }
    let copy = payload.try_clone().map_err(SendFail::Io)?;
    let counts = copy.counts.clone();
    match jobs.send(copy, Deadline::Now, false) {
        Ok(()) => Ok(counts),
        Err((copy, e)) => {
            copy.discard();
            Err(e)
        }
    }
}

/// Why the pool takes no new tasks, if it takes none: it gave up, or it is closed (but
/// for the chunks of a map under way, `in_map`, until it is terminated, or its tasks
/// not started are cancelled: those chunks are cancelled too).
fn refuses(st: &State, in_map: bool) -> Result<(), TaskError> {
    if let Some(why) = &st.broken {
        return Err(TaskError::PoolBroken(why.clone()));
    }
    if st.closed && (st.terminated || !in_map) {
        return Err(TaskError::PoolClosed);
    }
    if st.cancel_pending {
        return Err(TaskError::Cancelled);
    }
    Ok(())
}

/// A map under way ([`PoolInner::open_map`]).
pub(super) struct OpenMap<'a>(&'a PoolInner);

thread_local! {
    /// The pools (by address) whose `map` this thread is in: a `join` in a callback it
    /// runs meanwhile would wait for that map.
    static MAPPING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for OpenMap<'_> {
    fn drop(&mut self) {
        let addr = self.0.addr();
        let _ = MAPPING.try_with(|m| {
            let mut m = m.borrow_mut();
            if let Some(i) = m.iter().rposition(|&a| a == addr) {
                m.swap_remove(i);
            }
        });
        let mut st = unpoisoned::lock(&self.0.state);
        st.open_maps -= 1;
        let last = st.open_maps == 0 && st.closed;
        drop(st);
        if last {
            // A closed pool may finish now.
            self.0.ring();
        }
    }
}

/// A thread routing outcomes while it waits ([`PoolInner::helper`]).
pub(super) struct Helper<'a> {
    inner: &'a PoolInner,
    /// Whether it counts as helping now (not while it sleeps).
    on: std::cell::Cell<bool>,
}

impl Help for Helper<'_> {
    fn help(&self) {
        // On the pool's own thread (in a callback), the engine's other chores too.
        Cancel::help(self.inner);
    }

    fn helping(&self, on: bool) {
        if self.on.replace(on) != on {
            if on {
                self.inner.helpers.fetch_add(1, Ordering::SeqCst);
            } else {
                self.inner.stop_helping();
            }
        }
    }
}

impl Drop for Helper<'_> {
    fn drop(&mut self) {
        if self.on.get() {
            self.inner.stop_helping();
        }
    }
}

/// While a map's caller routes outcomes, the engine thread still drains the results
/// channel this often: for other tasks' waiters and callbacks while that caller
/// encodes or decodes its own chunks (or runs a callback that waits).
const HELPED_NAP: Duration = Duration::from_millis(1);
/// How long the engine thread spins for outcomes before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
/// While outcomes keep it busy, the engine thread still looks for dead workers this often.
const REAP_EVERY: Duration = Duration::from_millis(20);
/// After a worker failed to start, the next attempt waits this long.
const START_RETRY: Duration = Duration::from_millis(100);
/// How often a callback of the engine thread that waits does the engine's chores.
const CHORES_EVERY: Duration = Duration::from_millis(1);
/// An outcome that carries descriptors (a result too large for the ring travels in a
/// memory file of its own, handles in a result as descriptors) cannot be taken while
/// this process has no room for them, nor one in a memory file while it has no address
/// space to map it (see [`Lacks`]): it stays in the channel, and is tried again this
/// often...
const NO_ROOM_RETRY: Duration = Duration::from_millis(10);
/// ...for this long (counted again from each outcome taken), after which the pool
/// gives up (every task fails with `PoolBroken`, saying why), as it does after workers
/// that cannot be started. Meanwhile dead workers are settled only once the outcome is
/// taken: it may be one of theirs.
const NO_ROOM_PATIENCE: Duration = Duration::from_secs(5);

/// What this process lacks to take the next outcome in (see [`NO_ROOM_RETRY`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lacks {
    /// A free descriptor (`EMFILE`, `ENFILE`).
    Descriptors,
    /// Address space to map its memory file (`ENOMEM`: the process's `RLIMIT_AS`, its
    /// limit of mappings).
    AddressSpace,
}

impl Lacks {
    /// What a failed take says is lacking, if it is room (the outcome then waits in
    /// the channel).
    fn of(e: &io::Error) -> Option<Self> {
        if sys::out_of_descriptors(e) {
            Some(Lacks::Descriptors)
        } else if sys::out_of_address_space(e) {
            Some(Lacks::AddressSpace)
        } else {
            None
        }
    }
}

/// What a batch of outcomes taken off the channel held.
enum Drained {
    Some,
    Nothing,
    /// The next outcome waits for room for its descriptors; those before it (if the
    /// flag says so) were routed.
    Held(bool),
    /// The channel failed; the pool gave up.
    Broken,
}

/// What a round of [`PoolInner::replace_workers`] did.
enum Replaced {
    /// No worker is missing (or none is to be started).
    All,
    /// One was started, and more are missing.
    More,
    /// A start failed: tried again later.
    Failed,
}

/// An outcome to hand to its task once the state lock is released.
type Delivery = (Arc<dyn Sink<Received>>, usize, Result<Received, TaskError>);

/// The engine's thread.
fn run(inner: &Arc<PoolInner>) {
    let _ = inner.engine_thread.set(std::thread::current().id());
    let mut last_reap = Instant::now();
    let mut reap_now = true;
    loop {
        let busy = inner.drain_results();
        if reap_now || last_reap.elapsed() >= REAP_EVERY {
            inner.reap();
            last_reap = Instant::now();
        }
        let next_timer = inner.timers();
        let retry_start = inner.replace_workers_when_due();
        if inner.finish_if_done() {
            return;
        }
        let until = retry_start.map_or(next_timer, |t| next_timer.min(t));
        reap_now = !busy && inner.sleep(until);
    }
}

impl PoolInner {
    /// Routes every outcome waiting; whether there was any. The engine thread calls it, and so
    /// does a thread waiting for a map's results (it has nothing better to do, and
    /// routing them itself saves handing them over between threads).
    pub(super) fn drain_results(&self) -> bool {
        let mut any = self.deliver_undelivered();
        loop {
            // Nothing to route: the common case of a thread that helps while it waits,
            // without touching `routing`, which the engine thread uses as well.
            let retry_at = self.no_room_retry_at.load(Ordering::Relaxed);
            if self.results_rx.len() == 0 {
                if retry_at != 0 {
                    // Another thread took the outcome that waited.
                    self.note_room(None);
                }
                return any;
            }
            if self.channel_failed.load(Ordering::Relaxed)
                || (retry_at != 0 && sys::monotonic_ns() < retry_at)
            {
                return any;
            }
            let mut deliveries = Vec::new();
            let handing = self.handing_from_here();
            let drained = {
                let _routing = unpoisoned::read(&self.routing);
                self.route_batch(&mut deliveries)
            };
            // Outside both locks: a task's callbacks may call back into the pool.
            self.deliver(deliveries, handing);
            match drained {
                Drained::Some => any = true,
                Drained::Nothing => return any,
                Drained::Held(routed) => return any || routed,
                Drained::Broken => return true,
            }
        }
    }

    /// Takes up to 256 outcomes off the channel and routes them; called with `routing`
    /// held (either way).
    fn route_batch(&self, deliveries: &mut Vec<Delivery>) -> Drained {
        if self.channel_failed.load(Ordering::Relaxed) {
            return Drained::Broken;
        }
        let mut batch = Vec::new();
        let mut corrupt = None;
        let mut no_room = None;
        while batch.len() < 256 {
            match self.results_rx.try_recv_owned() {
                Ok(Some(msg)) => {
                    if self.no_room_retry_at.load(Ordering::Relaxed) != 0 {
                        self.last_taken
                            .store(sys::monotonic_ns(), Ordering::Relaxed);
                    }
                    batch.push(msg);
                }
                Ok(None) | Err(RecvFail::Empty | RecvFail::Disconnected) => break,
                Err(RecvFail::Broken(why)) => {
                    corrupt = Some(why);
                    break;
                }
                Err(RecvFail::Io(e)) if Lacks::of(&e).is_some() => {
                    no_room = Lacks::of(&e);
                    break;
                }
                Err(RecvFail::Io(e)) => {
                    corrupt = Some(e.to_string());
                    break;
                }
            }
        }
        if corrupt.is_none() {
            corrupt = self.note_room(no_room);
        }
        if let Some(why) = corrupt {
            // Workers share this channel and something scribbled over it (a task's
            // memory corruption, most likely): no outcome can be trusted to arrive any
            // more. Waiting would hang every task, so the pool fails them all.
            let mut st = unpoisoned::lock(&self.state);
            for msg in batch {
                self.route(&mut st, msg, deliveries);
            }
            self.channel_failed.store(true, Ordering::Relaxed);
            st.no_room_since = None;
            self.no_room_retry_at.store(0, Ordering::Relaxed);
            self.give_up(
                &mut st,
                format!("the workers' result channel failed: {why}"),
                deliveries,
            );
            deliveries.append(&mut st.deferred);
            return Drained::Broken;
        }
        if batch.is_empty() {
            return if no_room.is_some() {
                Drained::Held(false)
            } else {
                Drained::Nothing
            };
        }
        let mut st = unpoisoned::lock(&self.state);
        for msg in batch {
            self.route(&mut st, msg, deliveries);
        }
        self.pump(&mut st);
        deliveries.append(&mut st.deferred);
        if no_room.is_some() {
            Drained::Held(true)
        } else {
            Drained::Some
        }
    }

    /// Keeps the count of how long the next outcome has waited for room (`no_room`:
    /// it still does, lacking that), from when it began to wait or an outcome was last
    /// taken; the reason to give up once that is [`NO_ROOM_PATIENCE`].
    fn note_room(&self, no_room: Option<Lacks>) -> Option<String> {
        if no_room.is_none() && self.no_room_retry_at.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut st = unpoisoned::lock(&self.state);
        let Some(lacks) = no_room else {
            st.no_room_since = None;
            self.no_room_retry_at.store(0, Ordering::Relaxed);
            return None;
        };
        let now = sys::monotonic_ns();
        let since = *st.no_room_since.get_or_insert_with(|| {
            match lacks {
                Lacks::Descriptors => tracing::warn!(
                    "pool: no descriptor free in this process to take a worker's result \
                     in; it waits (for {NO_ROOM_PATIENCE:?} at most)"
                ),
                Lacks::AddressSpace => tracing::warn!(
                    "pool: no address space in this process to map a worker's result in; \
                     it waits (for {NO_ROOM_PATIENCE:?} at most)"
                ),
            }
            now
        });
        // Another thread may have taken one since (and not said so yet).
        let since = since.max(self.last_taken.load(Ordering::Relaxed));
        let patience = u64::try_from(NO_ROOM_PATIENCE.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(since) >= patience {
            return Some(match lacks {
                Lacks::Descriptors => format!(
                    "this process has had no descriptor free for {NO_ROOM_PATIENCE:?} to \
                     take a worker's result in (a result over 2 MiB travels in a memory file \
                     of its own, handles in it as descriptors): close descriptors, or raise \
                     the limit (`ulimit -n`)"
                ),
                Lacks::AddressSpace => format!(
                    "this process has had no address space for {NO_ROOM_PATIENCE:?} to map a \
                     worker's result in (a result over 2 MiB travels in a memory file of its \
                     own): free memory, or raise the limit (`ulimit -v`)"
                ),
            });
        }
        let retry = u64::try_from(NO_ROOM_RETRY.as_nanos()).unwrap_or(u64::MAX);
        self.no_room_retry_at
            .store(now.saturating_add(retry), Ordering::Relaxed);
        drop(st);
        None
    }

    /// Handles one outcome.
    fn route(&self, st: &mut State, msg: Received, out: &mut Vec<Delivery>) {
        let Some(header) = OutcomeHeader::read(&msg.bytes) else {
            return;
        };
        let body = &msg.bytes[OUTCOME_HEADER..];
        let text = || String::from_utf8_lossy(body).into_owned();
        if header.kind == kind::READY {
            match worker_with_pid(st, header.id) {
                Some(w) => w.heard(Early::Ready),
                None => st.keep_early(header.id, Early::Ready),
            }
            return;
        }
        if header.kind == kind::INIT_FAILED {
            let why = text();
            tracing::trace!("a pool worker could not start: {why}");
            match worker_with_pid(st, header.id) {
                Some(w) => w.heard(Early::InitFailed),
                None => st.keep_early(header.id, Early::InitFailed),
            }
            self.start_failed(st, why, out);
            return;
        }
        let current = st.tasks.get(&header.id).and_then(|r| r.ticket);
        if current.is_none_or(|(ticket, _)| ticket != header.ticket) {
            // A job taken back from a slow worker, which skipped it: free its ticket.
            for w in st.workers.iter_mut().flatten() {
                if let Some(pos) = w.stolen.iter().position(|&(t, _)| t == header.ticket) {
                    // Skipped, not decoded: the copy's counts come back.
                    w.stolen.swap_remove(pos).1.give_back();
                    // Heard from: it takes tasks again (all of them may have been taken
                    // back, and it has no other outcome to report), and it has read a job
                    // (its ring has room again: a send refused as the ring was full of
                    // such skipped jobs is not held against it for good).
                    w.slow = false;
                    w.stalled = false;
                    self.tickets.free(header.ticket);
                    st.free_tickets.push(header.ticket);
                    break;
                }
            }
            return;
        }
        let Some(rec) = st.tasks.get_mut(&header.id) else {
            return;
        };
        // Begun (its copy decoded), or skipped: its counts are taken over, or come back.
        let transit = std::mem::take(&mut rec.transit);
        if header.kind == kind::CANCELLED {
            transit.give_back();
        }
        let service_ns = match rec.ticket {
            Some((ticket, generation)) => {
                let started = match self.tickets.state(ticket, generation) {
                    TicketState::Running(t) | TicketState::Finished(t) if t > 0 => Some(t),
                    _ => None,
                };
                self.tickets.free(ticket);
                st.free_tickets.push(ticket);
                started.map(|t| sys::monotonic_ns().saturating_sub(t))
            }
            None => None,
        };
        rec.ticket = None;
        if let Some(w) = rec.worker.take()
            && let Some(Some(worker)) = st.workers.get_mut(w)
        {
            if let Some(pos) = worker.in_flight.iter().position(|&id| id == header.id) {
                worker.in_flight.remove(pos);
            }
            worker.stalled = false;
            worker.slow = false;
            if let Some(ns) = service_ns {
                worker.turnaround_ns = if worker.turnaround_ns == 0.0 {
                    ns as f64
                } else {
                    0.8 * worker.turnaround_ns + 0.2 * ns as f64
                };
                let per_target = DEPTH_TARGET.as_nanos() as f64 / worker.turnaround_ns.max(1.0);
                worker.depth = (per_target.ceil() as usize).clamp(DEPTH_MIN, DEPTH_MAX);
            }
            if worker.retiring && worker.in_flight.is_empty() {
                worker.retire();
            }
        }
        let id = header.id;
        let delivered = rec.delivered;
        let fallible = rec.per_task.as_ref().and_then(|p| p.fallible);
        // A worker ran the task, however it ended: the starts that failed before were
        // not in a row with any that fail after (a task that panicked, or whose
        // arguments did not decode, left them counting on until the pool broke).
        st.start_failures = 0;
        let error = match header.kind {
            kind::RETURNED => fallible
                .and_then(|check| check(body))
                .map(TaskError::Failed),
            kind::PANICKED => Some(match codec_panic(body) {
                Ok(p) => self.panic_error(p),
                Err(e) => TaskError::Codec(e),
            }),
            kind::BAD_ARGS | kind::UNENCODABLE => Some(TaskError::Codec(CodecError::new(text()))),
            // The ticket was cancelled first: the task was told already.
            _ => Some(TaskError::Cancelled),
        };
        if delivered {
            st.tasks.remove(&id);
            return;
        }
        match error {
            None => {
                if let Some(rec) = st.tasks.remove(&id) {
                    out.push((rec.sink, rec.slot, Ok(msg)));
                }
            }
            Some(e) => self.fail_or_retry(st, id, e, out),
        }
    }

    /// A run of task `id` failed with `error`: it runs again if the retry policy says so,
    /// otherwise the error is its outcome.
    fn fail_or_retry(&self, st: &mut State, id: u64, error: TaskError, out: &mut Vec<Delivery>) {
        let Some(rec) = st.tasks.get_mut(&id) else {
            return;
        };
        rec.attempts += 1;
        let policy = rec
            .per_task
            .as_ref()
            .and_then(|p| p.retry.as_ref())
            .unwrap_or(&self.config.retry);
        if !st.terminated && !rec.discarded && policy.should_retry(rec.attempts, &error) {
            if st.cancel_pending {
                // A retry due after a `shutdown` that cancelled the tasks not started
                // is one of them (as on a `ThreadPool`).
                if let Some(rec) = st.tasks.remove(&id) {
                    out.push((rec.sink, rec.slot, Err(TaskError::Cancelled)));
                }
                return;
            }
            let delay = policy.delay(rec.attempts);
            tracing::debug!(
                task = id,
                attempt = rec.attempts,
                ?delay,
                "retrying: {error}"
            );
            if delay.is_zero() {
                st.pending.push_front(id);
            } else {
                // A delay too long for the clock (a policy's `Duration::MAX`) waits as
                // long as the clock allows.
                st.delayed.push((super::options::later(delay), id));
            }
            return;
        }
        if let Some(rec) = st.tasks.remove(&id) {
            out.push((rec.sink, rec.slot, Err(error)));
        }
    }

    /// A worker could not start, or its initializer failed. After too many in a row,
    /// the pool gives up and fails every task.
    fn start_failed(&self, st: &mut State, why: String, out: &mut Vec<Delivery>) {
        st.start_failures += 1;
        if st.start_failures < MAX_START_FAILURES || st.broken.is_some() {
            return;
        }
        self.give_up(st, why, out);
    }

    /// The pool cannot go on: every task fails with `PoolBroken(why)`, later submits
    /// are refused, and the workers are stopped (`SIGKILL`: a task still running would
    /// run to its end, its result unread, and a join wait for it), as Python's
    /// executor terminates the workers of a broken pool.
    fn give_up(&self, st: &mut State, why: String, out: &mut Vec<Delivery>) {
        if st.broken.is_some() {
            return;
        }
        tracing::warn!("the pool gives up: {why}");
        st.broken = Some(why.clone());
        st.early.clear();
        st.pending.clear();
        st.delayed.clear();
        for (_, rec) in st.tasks.drain() {
            if !rec.delivered {
                out.push((rec.sink, rec.slot, Err(TaskError::PoolBroken(why.clone()))));
            }
            if let Some((ticket, generation)) = rec.ticket {
                // A copy no worker began is never decoded now (its worker is killed
                // below): its counts come back. One begun was decoded, and its worker
                // holds them.
                if self.tickets.cancel(ticket, generation) == TicketState::Cancelled {
                    rec.transit.give_back();
                }
                self.tickets.free(ticket);
                st.free_tickets.push(ticket);
            }
        }
        for w in st.workers.iter_mut().flatten() {
            w.in_flight.clear();
            w.jobs = None;
            let _ = w.handle.kill();
        }
    }

    /// Replaces workers that have died: their unstarted tasks go to other workers,
    /// their running task fails (or is retried).
    fn reap(&self) {
        let (dead, records): (Vec<usize>, Vec<_>) = {
            let st = unpoisoned::lock(&self.state);
            st.workers
                .iter()
                .enumerate()
                .filter_map(|(i, w)| {
                    w.as_ref()
                        .filter(|w| !w.handle.is_alive())
                        .map(|w| (i, Arc::clone(w.handle.record())))
                })
                .unzip()
        };
        if dead.is_empty() {
            return;
        }
        // How each ended, relayed by the fork server just after the exit, is waited for
        // here (a second at most), before the locks: threads routing outcomes, and an
        // async consumer's poll, take them. Read under them below, what is in by then
        // is used (a status still not relayed is not waited for again).
        for record in records {
            let _ = record.exit_status();
        }
        // Outcomes a dead worker sent before it died are credited first, those on the
        // channel and those another thread is routing (it holds `routing` until done).
        let routing = unpoisoned::write(&self.routing);
        let mut deliveries = Vec::new();
        let handing = self.handing_from_here();
        let held = loop {
            match self.route_batch(&mut deliveries) {
                Drained::Some => {}
                Drained::Held(_) => break true,
                Drained::Nothing | Drained::Broken => break false,
            }
        };
        // One of the dead may have sent the outcome that waits for room for its
        // descriptors: they are settled once it is taken, as the engine looks again;
        // at once if every task is decided already (the pool was terminated, or gave
        // up).
        if held {
            let decided = {
                let st = unpoisoned::lock(&self.state);
                st.terminated || st.broken.is_some()
            };
            if !decided {
                drop(routing);
                self.deliver(deliveries, handing);
                return;
            }
        }
        let mut handles = Vec::new();
        {
            let mut st = unpoisoned::lock(&self.state);
            for i in dead {
                let Some(w) = st.workers[i].take() else {
                    continue;
                };
                // Read above, outside the locks: what is in by now.
                let now = Instant::now();
                let status = w.handle.record().exit_status_by(now);
                let exceeded = w.handle.record().worker_limit_exceeded_by(now);
                tracing::trace!(pid = w.handle.pid(), ?status, "pool worker ended");
                let mut unstarted = Vec::new();
                // Whether its death is charged to a task it had begun.
                let mut charged = false;
                for &id in &w.in_flight {
                    let Some(rec) = st.tasks.get_mut(&id) else {
                        continue;
                    };
                    rec.worker = None;
                    let transit = std::mem::take(&mut rec.transit);
                    let ticket = rec.ticket.take();
                    let delivered = rec.delivered;
                    let state = match ticket {
                        Some((ticket, generation)) => {
                            let s = self.tickets.state(ticket, generation);
                            self.tickets.free(ticket);
                            st.free_tickets.push(ticket);
                            s
                        }
                        None => TicketState::Other,
                    };
                    // A copy it never began (or that was cancelled before it began)
                    // was never decoded.
                    if matches!(state, TicketState::Queued | TicketState::Cancelled) {
                        transit.give_back();
                    }
                    if delivered {
                        st.tasks.remove(&id);
                        continue;
                    }
                    match state {
                        TicketState::Queued => unstarted.push(id),
                        _ => {
                            charged |=
                                matches!(state, TicketState::Running(_) | TicketState::Finished(_));
                            let error = match w.killed_for {
                                Some((k, KillReason::TimedOut)) if k == id => TaskError::TimedOut,
                                Some((k, KillReason::Cancelled)) if k == id => TaskError::Cancelled,
                                Some((_, KillReason::Terminated)) => TaskError::PoolClosed,
                                _ => match exceeded.clone() {
                                    Some((limit, detail)) => {
                                        TaskError::LimitExceeded { limit, detail }
                                    }
                                    None => TaskError::WorkerDied(status),
                                },
                            };
                            let cancelled = matches!(error, TaskError::Cancelled);
                            if cancelled {
                                if let Some(rec) = st.tasks.remove(&id) {
                                    deliveries.push((rec.sink, rec.slot, Err(error)));
                                }
                            } else {
                                self.fail_or_retry(&mut st, id, error, &mut deliveries);
                            }
                        }
                    }
                }
                let blameless = w.killed_for.is_none() && !st.terminated;
                // A ready worker that died before beginning the next task it was sent:
                // that task may be what kills it (a message too large for its memory
                // cap, say). Sent to as many workers as a pool may fail to start, it
                // fails, rather than go from one dying worker to the next for ever. Not
                // when the worker died in a task it had begun (that task fails for it):
                // a worker reads its next task only once it has sent the last outcome,
                // and a task queued behind crashing ones would fail unrun.
                if w.ready
                    && !charged
                    && blameless
                    && let Some(&next) = unstarted.first()
                    && let Some(rec) = st.tasks.get_mut(&next)
                {
                    rec.lost_unstarted += 1;
                    if rec.lost_unstarted >= MAX_START_FAILURES {
                        unstarted.remove(0);
                        let error = match exceeded.clone() {
                            Some((limit, detail)) => TaskError::LimitExceeded { limit, detail },
                            None => TaskError::WorkerDied(status),
                        };
                        tracing::warn!(
                            "a task failed: {MAX_START_FAILURES} workers died before they could begin it ({error})"
                        );
                        self.fail_or_retry(&mut st, next, error, &mut deliveries);
                    }
                }
                // In their original order, ahead of tasks submitted since.
                for id in unstarted.into_iter().rev() {
                    st.pending.push_front(id);
                }
                // A worker that died before it was ready, or soon after it, before it was
                // sent any task, did not start properly (the tasks it was sent would go
                // to a successor that dies the same way, for ever); also one that exited
                // cleanly while it was still wanted (its initializer called `exit(0)`):
                // only a worker being retired may. An idle worker killed from outside
                // (`SIGKILL`, `SIGTERM`, `SIGINT`) later is only replaced: three such kills must
                // not break the pool; one that crashes or exits of itself, however late,
                // counts (else a worker whose initializer set something going that ends
                // it a while later would be started again for ever).
                let soon = w.ready_at.is_none_or(|at| at.elapsed() < START_WINDOW);
                // Not its own memory cap (a worker that grows until it kills itself would
                // be started again for ever); a status not relayed in time (the OOM
                // killer's doing, most likely) counts as a kill.
                let killed = exceeded.is_none()
                    && status.is_none_or(|s| {
                        s.signal().is_some_and(|sig| {
                            [crate::Signal::KILL, crate::Signal::TERM, crate::Signal::INT]
                                .contains(&sig)
                        })
                    });
                if (!w.ready || (!w.sent && (soon || !killed)))
                    && blameless
                    && !w.failed_to_start
                    && (w.jobs.is_some() || status.is_none_or(|s| !s.success()))
                {
                    // A memory cap too small for a worker's start-up says so.
                    let how = match &exceeded {
                        Some((limit, detail)) if *limit == crate::process::Limit::Memory => {
                            format!("its {limit} limit: {detail}")
                        }
                        _ => status.map_or_else(|| "unknown status".into(), |s| s.to_string()),
                    };
                    let why = format!("a worker ended before taking any task ({how})");
                    self.start_failed(&mut st, why, &mut deliveries);
                }
                for (ticket, transit) in w.stolen {
                    transit.give_back();
                    self.tickets.free(ticket);
                    st.free_tickets.push(ticket);
                }
                handles.push(w.handle);
            }
            self.pump(&mut st);
            deliveries.append(&mut st.deferred);
        }
        drop(routing);
        self.deliver(deliveries, handing);
        for h in handles {
            // Dead already: this only reaps it.
            let mut h = h;
            let _ = h.join_timeout(Duration::from_secs(5));
        }
    }

    /// Kills workers whose task ran out of time, and queues retries whose delay is
    /// over. Returns when to look again.
    fn timers(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + MAX_SLEEP;
        let mut st = unpoisoned::lock(&self.state);
        if !st.delayed.is_empty() {
            let mut due = Vec::new();
            st.delayed.retain(|&(at, id)| {
                if at <= now {
                    due.push(id);
                    false
                } else {
                    next = next.min(at);
                    true
                }
            });
            for id in due.into_iter().rev() {
                st.pending.push_front(id);
            }
            self.pump(&mut st);
        }
        // A worker whose job ring had no room while it held no task (a map's large
        // context it has not taken yet fills it) reports nothing that would end its
        // stall: it is tried again at every look, one every `STALLED_RETRY` while that
        // lasts, until the ring has room.
        let unheard = |w: &Worker| w.stalled && w.in_flight.is_empty() && w.killed_for.is_none();
        if st.workers.iter().flatten().any(unheard) {
            for w in st.workers.iter_mut().flatten() {
                if unheard(w) {
                    w.stalled = false;
                    if w.retire_due {
                        w.retire();
                    }
                }
            }
            self.pump(&mut st);
            if st.workers.iter().flatten().any(unheard) {
                next = next.min(now + STALLED_RETRY);
            }
        }
        if let Some(at) = self.steal(&mut st) {
            next = next.min(at);
        }
        {
            let now_ns = sys::monotonic_ns();
            let State { workers, tasks, .. } = &mut *st;
            for w in workers.iter_mut().flatten() {
                if w.killed_for.is_some() {
                    continue;
                }
                let Some(&id) = w.in_flight.front() else {
                    continue;
                };
                let Some(rec) = tasks.get(&id) else {
                    continue;
                };
                let timeout = rec
                    .per_task
                    .as_ref()
                    .and_then(|p| p.timeout)
                    .or(self.config.task_timeout);
                let (Some(timeout), Some((ticket, generation))) = (timeout, rec.ticket) else {
                    continue;
                };
                let limit = timeout.as_nanos().min(u64::MAX as u128) as u64;
                let state = self.tickets.state(ticket, generation);
                let TicketState::Running(started) = state else {
                    if state == TicketState::Queued && timeout < MAX_SLEEP {
                        // Not begun: it cannot run out sooner than this.
                        next = next.min(now + timeout);
                    }
                    continue;
                };
                if started == 0 {
                    next = next.min(now + Duration::from_millis(1));
                    continue;
                }
                let ran = now_ns.saturating_sub(self.tickets.timed_from(ticket, started));
                if ran >= limit {
                    if self.tickets.kill(ticket, generation) != TicketState::Killing {
                        // It ended just now: its outcome is on its way.
                        continue;
                    }
                    tracing::debug!(task = id, pid = w.handle.pid(), "task timed out");
                    w.killed_for = Some((id, KillReason::TimedOut));
                    let _ = w.handle.kill();
                    next = now;
                } else {
                    next = next.min(now + Duration::from_nanos(limit - ran));
                }
            }
        }
        if let Some(at) = self.watch_results_lock(&mut st, now) {
            next = next.min(at);
        }
        self.release(st);
        next
    }

    /// Kills a worker seen stopped (`SIGSTOP`, state `T`) holding the results
    /// channel's producers' lock at every look for [`STOPPED_HOLDER_GRACE`] (looks
    /// [`HELD_LOOK`] apart; while it is, the senders wait, so reading the lock's word
    /// costs them nothing): every other worker's outcome waits for that lock, and
    /// their tasks, finished, are no longer timed, so the pool would wait for a
    /// `SIGCONT`. The next sender takes the lock over from the dead; the killed
    /// worker's tasks fail as any dead worker's do (`WorkerDied`, or retried), its
    /// outcome lost. One stopped by a debugger (a tracer) is left alone. Returns when
    /// to look again.
    fn watch_results_lock(&self, st: &mut State, now: Instant) -> Option<Instant> {
        // The lock's word sits on the line every sender writes: read at most once a
        // look, since each read takes the line from the workers.
        if let Some(due) = st.results_look_due
            && now < due
        {
            return st.results_held.map(|_| due);
        }
        let due = now + HELD_LOOK;
        st.results_look_due = Some(due);
        let Some(holder) = self.results_tx.producers_lock_holder() else {
            st.results_held = None;
            return None;
        };
        let look = match st.results_held {
            Some(look) if look.holder == holder => look,
            _ => {
                st.results_held = Some(HeldLook {
                    holder,
                    stopped: None,
                });
                return Some(due);
            }
        };
        if !sys::identity_alive(holder) {
            // Died holding it: the next sender takes it over.
            st.results_held = None;
            return None;
        }
        if !sys::identity_stopped_by_signal(holder) {
            st.results_held = Some(HeldLook {
                holder,
                stopped: None,
            });
            return Some(due);
        }
        let stopped = look.stopped.unwrap_or(now);
        st.results_held = Some(HeldLook {
            stopped: Some(stopped),
            ..look
        });
        if now < stopped + STOPPED_HOLDER_GRACE {
            // Looked at again at each look: one that runs meanwhile (stopped and
            // continued by a throttling tool, say) starts the grace over.
            return Some(due);
        }
        // (One that ended may have given its pid to the holder.)
        let Some(worker) = st
            .workers
            .iter_mut()
            .flatten()
            .find(|w| w.handle.is_alive() && sys::identity_in_process(holder, w.handle.pid()))
        else {
            // Not a worker of this pool (a process a task started): looked at again
            // after another grace.
            st.results_held = Some(HeldLook {
                holder,
                stopped: Some(now),
            });
            let at = now + STOPPED_HOLDER_GRACE;
            st.results_look_due = Some(at);
            return Some(at);
        };
        if worker.killed_for.is_some() {
            return None;
        }
        tracing::warn!(
            pid = worker.handle.pid(),
            "a pool worker stopped for {STOPPED_HOLDER_GRACE:?} holding the lock the workers \
             need to send outcomes was killed"
        );
        let front = worker.in_flight.front().copied().unwrap_or(0);
        worker.killed_for = Some((front, KillReason::StoppedHolding));
        let _ = worker.handle.kill();
        st.results_held = None;
        None
    }

    /// Starts workers for empty slots. False if one failed to start.
    /// [`replace_workers`](Self::replace_workers), unless a worker failed to start less
    /// than `START_RETRY` ago; when to try again, if one did.
    fn replace_workers_when_due(&self) -> Option<Instant> {
        let now = sys::monotonic_ns();
        let at = self.retry_start_at.load(Ordering::SeqCst);
        if now < at {
            return Some(Instant::now() + Duration::from_nanos(at - now));
        }
        match self.replace_workers() {
            Replaced::All => {
                self.retry_start_at.store(0, Ordering::SeqCst);
                return None;
            }
            // The next at once, once the engine has looked at the rest.
            Replaced::More => {
                self.retry_start_at.store(0, Ordering::SeqCst);
                return Some(Instant::now());
            }
            Replaced::Failed => {}
        }
        let again = now + START_RETRY.as_nanos() as u64;
        self.retry_start_at.store(again, Ordering::SeqCst);
        Some(Instant::now() + START_RETRY)
    }

    /// Starts a missing worker, one at a time: a start is a fork-server round trip, or
    /// an exec, and while it lasts the engine keeps no timeout, reaps no worker and
    /// starts no retry (many workers lost at once, each start in turn, held every
    /// timeout that long).
    fn replace_workers(&self) -> Replaced {
        let missing: Vec<usize> = {
            let st = unpoisoned::lock(&self.state);
            if st.terminated || st.broken.is_some() || (st.closed && st.tasks.is_empty()) {
                return Replaced::All;
            }
            st.workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.is_none())
                .map(|(i, _)| i)
                .collect()
        };
        let mut missing = missing.into_iter();
        while let Some(i) = missing.next() {
            // Outcomes are routed meanwhile (a start is a fork-server round trip, or an
            // exec): a first report that comes before the worker is in the table is
            // kept for it (see `Early`).
            let began = Instant::now();
            match self.start_worker(i) {
                Ok(worker) => {
                    if let Some(delay) = test_start_delay() {
                        std::thread::sleep(delay);
                    }
                    let mut st = unpoisoned::lock(&self.state);
                    let early = st.take_early(u64::from(worker.handle.pid()), began);
                    // Terminated, or given up on (its workers killed) by another thread
                    // while this one started: the new worker goes too.
                    if st.terminated || st.broken.is_some() {
                        let _ = worker.handle.kill();
                        let mut h = worker.handle;
                        drop(st);
                        let _ = h.join_timeout(Duration::from_secs(5));
                        return Replaced::All;
                    }
                    if st.workers[i].is_some() {
                        // Filled meanwhile, by a callback of this pool's thread that
                        // waited for a task and replaced workers itself (see `help`).
                        drop(st);
                        let _ = worker.handle.kill();
                        let mut h = worker.handle;
                        let _ = h.join_timeout(Duration::from_secs(5));
                        continue;
                    }
                    let mut worker = worker;
                    early.into_iter().for_each(|report| worker.heard(report));
                    st.workers[i] = Some(worker);
                    self.pump(&mut st);
                    self.release(st);
                    if missing.len() > 0 {
                        return Replaced::More;
                    }
                }
                Err(e) => {
                    let mut deliveries = Vec::new();
                    let handing = self.handing_from_here();
                    self.start_failed(
                        &mut unpoisoned::lock(&self.state),
                        format!("cannot start a worker: {e}"),
                        &mut deliveries,
                    );
                    self.deliver(deliveries, handing);
                    return Replaced::Failed;
                }
            }
        }
        Replaced::All
    }

    /// Retires the workers of a closed pool with nothing left to do; says whether the
    /// pool has finished (no workers left, and nothing more will come).
    fn finish_if_done(&self) -> bool {
        let mut st = unpoisoned::lock(&self.state);
        let idle = st.tasks.is_empty() && st.pending.is_empty() && st.open_maps == 0;
        if st.closed && (idle || st.terminated) {
            for w in st.workers.iter_mut().flatten() {
                w.retire();
            }
            if st.workers.iter().all(Option::is_none) {
                st.finished = true;
                self.changed.notify_all();
                return true;
            }
        }
        false
    }

    /// Sleeps until an outcome arrives, a worker ends, the pool is told something, or
    /// `until`. Whether a worker may have ended.
    // On other targets nothing can be watched (an uninhabited readiness): what follows
    // the wait is unreachable there, and the compiler says `sleeping` is unread.
    #[cfg_attr(not(target_os = "linux"), allow(unused_assignments))]
    fn sleep(&self, until: Instant) -> bool {
        // A waiting thread routes the outcomes (see `helper`): it wakes this one when it
        // stops.
        let helped = self.helpers.load(Ordering::SeqCst) > 0;
        let until = if helped {
            until.min(Instant::now() + HELPED_NAP)
        } else {
            until
        };
        // An outcome that waits for room for its descriptors is looked at again on
        // a timer, not when the channel is ready: it is.
        let held = self.no_room_retry_at.load(Ordering::Relaxed) != 0;
        let until = if held {
            until.min(Instant::now() + NO_ROOM_RETRY)
        } else {
            until
        };
        let watch = !helped && !held && !self.channel_failed.load(Ordering::Relaxed);
        let mut sleeping = None;
        if watch {
            let spin_end = Instant::now() + SPIN;
            // (The pool holds a sender itself: the senders are never all gone.)
            if crate::sync::raw::spin_until(spin_end, || self.results_rx.len() > 0) {
                return false;
            }
            sleeping = Some(self.results_rx.sleeping());
            if self.results_rx.len() > 0 {
                return false;
            }
        }
        // The workers' records (not the state lock, which others need meanwhile) keep
        // their pidfds open while this sleeps.
        let records: Vec<_> = unpoisoned::lock(&self.state)
            .workers
            .iter()
            .flatten()
            .map(|w| Arc::clone(w.handle.record()))
            .collect();
        let mut fds = vec![self.bell.as_fd()];
        if watch {
            fds.extend(self.results_rx.readiness());
        }
        let first_worker = fds.len();
        // While an outcome waits for room, dead workers are settled only once it is
        // taken: their pidfds, readable for good, would end every sleep at once.
        if !held {
            fds.extend(records.iter().map(|r| r.pidfd()));
        }
        let ready = sys::wait_readable(&fds, Some(until)).unwrap_or_default();
        drop(sleeping);
        sys::silence(self.bell.as_fd());
        ready.iter().skip(first_worker).any(|r| r.ready())
            || ready.first().is_some_and(|r| r.ready())
    }
}

fn codec_panic(body: &[u8]) -> Result<RemotePanic, CodecError> {
    crate::wire::codec::decode::<RemotePanic>(body, Vec::new())
}

/// What waits in [`PoolInner::undelivered`].
#[derive(Default)]
struct Undelivered {
    /// The outcomes, each with its batch's number.
    items: VecDeque<(u64, Delivery)>,
    /// Per batch not handed over whole: its outcomes left (waiting or running their
    /// callbacks), and whether a `join` in one of its callbacks let it go.
    left: FxHashMap<u64, (usize, bool)>,
}

thread_local! {
    /// The batches whose outcomes this thread is handing over (a callback of one runs),
    /// with their pool's address: a `join` in such a callback lets them go, as it would
    /// otherwise wait for the very callback it runs in, and for the rest of its batch,
    /// which this thread hands over only once that callback returns.
    static HANDING: std::cell::RefCell<Vec<(usize, u64)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A batch's place among those a `join` waits for ([`PoolInner::handing`]), taken
/// before its outcomes are decided under the state lock, so that no moment passes
/// where a task has left the state and its outcome is counted nowhere; given up if no
/// batch comes of it (dropped), or the batch's once it is in `undelivered`.
struct Handing<'a>(&'a PoolInner);

impl Drop for Handing<'_> {
    fn drop(&mut self) {
        self.0.handed(1);
    }
}

/// One more on a count, until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A run of `n` outcomes of batch `batch` being handed over on this thread; counted
/// as handed over when dropped (also if a sink's delivery unwinds).
struct HandingRun<'a> {
    inner: &'a PoolInner,
    batch: u64,
    n: usize,
}

impl<'a> HandingRun<'a> {
    fn enter(inner: &'a PoolInner, batch: u64, n: usize) -> Self {
        let _ = HANDING.try_with(|h| h.borrow_mut().push((inner.addr(), batch)));
        HandingRun { inner, batch, n }
    }
}

impl Drop for HandingRun<'_> {
    fn drop(&mut self) {
        let _ = HANDING.try_with(|h| h.borrow_mut().pop());
        let finished = {
            let mut waiting = unpoisoned::lock(&self.inner.undelivered);
            match waiting.left.get_mut(&self.batch) {
                Some((left, let_go)) => {
                    *left = left.saturating_sub(self.n);
                    let finished = *left == 0 && !*let_go;
                    if *left == 0 {
                        waiting.left.remove(&self.batch);
                    }
                    finished
                }
                None => false,
            }
        };
        if finished {
            self.inner.handed(1);
        }
    }
}

impl PoolInner {
    /// A place among the batches a `join` waits for, for the outcomes the caller is
    /// about to decide (see [`Handing`]).
    fn handing_from_here(&self) -> Handing<'_> {
        self.handing.fetch_add(1, Ordering::SeqCst);
        Handing(self)
    }

    /// `batches` that a `join` waits for have been handed over (or let go): the last
    /// wakes the threads waiting for the pool to finish.
    fn handed(&self, batches: usize) {
        if self.handing.fetch_sub(batches, Ordering::SeqCst) == batches
            && self.finish_waiters.load(Ordering::SeqCst) > 0
        {
            // Under the lock their look at the count is made under: none misses it.
            let _st = unpoisoned::lock(&self.state);
            self.changed.notify_all();
        }
    }

    /// Lets go of the batches whose outcomes this thread is handing over (a `join` in
    /// one of their callbacks: see [`HANDING`]).
    pub(super) fn let_go_handing_here(&self) {
        let here: Vec<u64> = HANDING
            .try_with(|h| {
                h.borrow()
                    .iter()
                    .filter(|(addr, _)| *addr == self.addr())
                    .map(|(_, batch)| *batch)
                    .collect()
            })
            .unwrap_or_default();
        if here.is_empty() {
            return;
        }
        let mut freed = 0;
        {
            let mut waiting = unpoisoned::lock(&self.undelivered);
            for batch in here {
                if let Some((_, let_go)) = waiting.left.get_mut(&batch)
                    && !*let_go
                {
                    *let_go = true;
                    freed += 1;
                }
            }
        }
        if freed > 0 {
            self.handed(freed);
        }
    }

    /// Hands outcomes over, each run of outcomes for the same sink (a map's) at once.
    /// A task's callbacks run as its outcome is handed over, and may wait for another
    /// task whose outcome came in the same batch: the batch waits in `undelivered`
    /// meanwhile, where every thread that helps the pool (the callback's own wait
    /// included) hands outcomes over too. (Kept in the caller's list, they were out of
    /// every wait's reach, a frame up the stack.) The caller hands over only its own
    /// batch: a thread that does not help (a stream's poll, a submission) runs no other
    /// task's callbacks.
    ///
    /// `handing`: the batch's place among those a `join` waits for, taken before the
    /// outcomes were decided (see [`handing_from_here`](Self::handing_from_here)).
    fn deliver(&self, deliveries: Vec<Delivery>, handing: Handing<'_>) {
        if deliveries.is_empty() {
            return;
        }
        let batch = self.batches.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut waiting = unpoisoned::lock(&self.undelivered);
            waiting.left.insert(batch, (deliveries.len(), false));
            // Counted since `handing` was taken: now the batch's, until handed over.
            std::mem::forget(handing);
            waiting
                .items
                .extend(deliveries.into_iter().map(|d| (batch, d)));
            self.undelivered_len
                .store(waiting.items.len(), Ordering::Release);
        }
        self.hand_over(Some(batch));
    }

    /// Hands over whatever waits in `undelivered` (a helper's part); whether there was
    /// any.
    fn deliver_undelivered(&self) -> bool {
        self.hand_over(None)
    }

    /// Hands over the outcomes of batch `only` (`None`: of any batch) that wait in
    /// `undelivered`; whether there were any.
    fn hand_over(&self, only: Option<u64>) -> bool {
        let mine = |b: u64| only.is_none_or(|o| o == b);
        let mut any = false;
        while self.undelivered_len.load(Ordering::Acquire) != 0 {
            let (sink, run, batch) = {
                let mut waiting = unpoisoned::lock(&self.undelivered);
                let items = &mut waiting.items;
                let Some(at) = items.iter().position(|(b, _)| mine(*b)) else {
                    return any;
                };
                let Some((batch, (sink, slot, outcome))) = items.remove(at) else {
                    return any;
                };
                let mut run = vec![(slot, outcome)];
                while items.get(at).is_some_and(|(b, (next, ..))| {
                    *b == batch && std::ptr::addr_eq(Arc::as_ptr(next), Arc::as_ptr(&sink))
                }) {
                    if let Some((_, (_, slot, outcome))) = items.remove(at) {
                        run.push((slot, outcome));
                    }
                }
                self.undelivered_len.store(items.len(), Ordering::Release);
                (sink, run, batch)
            };
            let _handing = HandingRun::enter(self, batch, run.len());
            sink.deliver_many(run);
            any = true;
        }
        any
    }
}
