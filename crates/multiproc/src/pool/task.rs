//! [`Task`]: a pool task's eventual result, to wait for or to await; and the sinks the
//! pools deliver results into.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;

use super::TaskError;
use super::worker::OUTCOME_HEADER;
use crate::ipc::channel::Received;
use crate::sync::raw::spin_until;
use crate::sync::unpoisoned;
use crate::wire::codec;

/// How long a waiter spins before it sleeps: results of short tasks often arrive within
/// it, and then nobody makes a system call.
const SPIN: Duration = Duration::from_micros(20);

/// Where a pool puts a finished task's outcome.
pub(crate) trait Sink<T>: Send + Sync {
    /// Delivers the outcome of the task in `slot`.
    fn deliver(&self, slot: usize, outcome: Result<T, TaskError>);

    /// Delivers several outcomes at once (a map's, routed in one batch).
    fn deliver_many(&self, outcomes: Vec<(usize, Result<T, TaskError>)>) {
        for (slot, outcome) in outcomes {
            self.deliver(slot, outcome);
        }
    }
}

/// One task's outcome, once it is there.
pub(crate) struct Cell<T> {
    state: Mutex<CellState<T>>,
    ready: Condvar,
    /// Set once the outcome is in (for waiters that spin without the lock).
    done: AtomicBool,
}

struct CellState<T> {
    outcome: Option<Result<T, TaskError>>,
    /// The outcome was taken by a waiter.
    taken: bool,
    waker: Option<Waker>,
    sleepers: usize,
}

impl<T> Cell<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Cell {
            state: Mutex::new(CellState {
                outcome: None,
                taken: false,
                waker: None,
                sleepers: 0,
            }),
            ready: Condvar::new(),
            done: AtomicBool::new(false),
        })
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until the outcome is there (or `deadline` passes); whether it is.
    fn wait_until(&self, deadline: Option<Instant>, help: &dyn Fn()) -> bool {
        let spin_end = Instant::now() + SPIN;
        let done = || {
            help();
            self.is_done()
        };
        if spin_until(spin_end.min(deadline.unwrap_or(spin_end)), done) {
            return true;
        }
        let mut st = unpoisoned::lock(&self.state);
        loop {
            if st.outcome.is_some() || st.taken {
                return true;
            }
            st.sleepers += 1;
            st = match unpoisoned::wait_until(&self.ready, st, deadline) {
                Ok(st) => st,
                Err(mut st) => {
                    st.sleepers -= 1;
                    return false;
                }
            };
            st.sleepers -= 1;
        }
    }

    /// Takes the outcome, waiting for it.
    fn take(&self, help: &dyn Fn()) -> Result<T, TaskError> {
        loop {
            self.wait_until(None, help);
            let mut st = unpoisoned::lock(&self.state);
            if let Some(outcome) = st.outcome.take() {
                st.taken = true;
                return outcome;
            }
            if st.taken {
                return Err(TaskError::PoolClosed);
            }
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<T, TaskError>> {
        let mut st = unpoisoned::lock(&self.state);
        if let Some(outcome) = st.outcome.take() {
            st.taken = true;
            return Poll::Ready(outcome);
        }
        if st.taken {
            return Poll::Ready(Err(TaskError::PoolClosed));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T: Send> Sink<T> for Cell<T> {
    fn deliver(&self, _slot: usize, outcome: Result<T, TaskError>) {
        let waker = {
            let mut st = unpoisoned::lock(&self.state);
            if st.outcome.is_some() || st.taken {
                return;
            }
            st.outcome = Some(outcome);
            self.done.store(true, Ordering::Release);
            if st.sleepers > 0 {
                self.ready.notify_all();
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Outcomes of many tasks (`map`, `imap`), by slot.
pub(crate) struct Slots<T> {
    state: Mutex<StreamState<T>>,
    ready: Condvar,
    /// Outcomes delivered so far (for waiters that spin without the lock).
    delivered: AtomicUsize,
}

struct StreamState<T> {
    /// By slot, for ordered consumers.
    by_slot: FxHashMap<usize, Result<T, TaskError>>,
    /// In arrival order, for unordered ones.
    arrived: VecDeque<usize>,
    sleepers: usize,
}

impl<T> Slots<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Slots {
            state: Mutex::new(StreamState {
                by_slot: FxHashMap::default(),
                arrived: VecDeque::new(),
                sleepers: 0,
            }),
            ready: Condvar::new(),
            delivered: AtomicUsize::new(0),
        })
    }

    /// Takes the outcome of `slot` (or, with `None`, of whichever slot finished first),
    /// waiting for it; while it spins, it calls `help` (which may deliver outcomes).
    pub(crate) fn take(
        &self,
        slot: Option<usize>,
        help: &dyn Fn(),
    ) -> (usize, Result<T, TaskError>) {
        let mut spun = false;
        loop {
            let seen = self.delivered.load(Ordering::Acquire);
            let mut st = unpoisoned::lock(&self.state);
            if let Some(found) = Self::take_locked(&mut st, slot) {
                return found;
            }
            if !spun {
                // Spin (without the lock) until something new is delivered.
                drop(st);
                spun = true;
                let end = Instant::now() + SPIN;
                let arrived = || {
                    help();
                    self.delivered.load(Ordering::Acquire) != seen
                };
                if spin_until(end, arrived) {
                    spun = false;
                }
                continue;
            }
            st.sleepers += 1;
            let mut st = unpoisoned::wait(&self.ready, st);
            st.sleepers -= 1;
            if let Some(found) = Self::take_locked(&mut st, slot) {
                return found;
            }
            spun = false;
        }
    }

    fn take_locked(
        st: &mut StreamState<T>,
        slot: Option<usize>,
    ) -> Option<(usize, Result<T, TaskError>)> {
        let slot = match slot {
            Some(s) => s,
            None => loop {
                let s = st.arrived.pop_front()?;
                if st.by_slot.contains_key(&s) {
                    break s;
                }
            },
        };
        st.by_slot.remove(&slot).map(|o| (slot, o))
    }
}

impl<T: Send> Sink<T> for Slots<T> {
    fn deliver(&self, slot: usize, outcome: Result<T, TaskError>) {
        self.insert(std::iter::once((slot, outcome)));
    }

    fn deliver_many(&self, outcomes: Vec<(usize, Result<T, TaskError>)>) {
        self.insert(outcomes);
    }
}

impl<T> Slots<T> {
    /// Stores outcomes under one lock, with one wake-up: the consumer takes the same lock
    /// for every item.
    fn insert(&self, outcomes: impl IntoIterator<Item = (usize, Result<T, TaskError>)>) {
        let mut st = unpoisoned::lock(&self.state);
        let mut n = 0;
        for (slot, outcome) in outcomes {
            n += 1;
            if st.by_slot.insert(slot, outcome).is_none() {
                st.arrived.push_back(slot);
            }
        }
        self.delivered.fetch_add(n, Ordering::Release);
        if st.sleepers > 0 {
            self.ready.notify_all();
        }
    }
}

/// Something that can cancel its tasks by id: a pool.
pub(crate) trait Cancel: Send + Sync {
    /// Cancels task `id`; whether it will end as `Cancelled`.
    fn cancel(&self, id: u64) -> bool;

    /// Called by a thread waiting for a task: may deliver outcomes.
    fn help(&self) {}
}

/// The result of a task submitted to a [`Pool`](crate::Pool) or
/// [`ThreadPool`](crate::ThreadPool) (or, with the `redis` feature, to a cluster):
/// Python's `AsyncResult` and `Future`.
///
/// [`wait`](Task::wait) blocks for it; a `Task` is also a [`Future`], so it can be
/// awaited under any async runtime. Dropping a `Task` does not cancel it: the task runs
/// and its result is thrown away.
#[must_use = "a task's result or error is only seen through its Task"]
pub struct Task<R> {
    inner: Inner<R>,
    id: u64,
    pool: Option<Weak<dyn Cancel>>,
}

enum Inner<R> {
    /// Encoded by a worker process; decoded by whoever takes it, with the function
    /// chosen when the task was submitted (where `R` was known to decode).
    Process(Arc<Cell<Received>>, Decode<R>),
    /// A thread pool's value.
    Thread(Arc<Cell<R>>),
}

type Decode<R> = fn(Result<Received, TaskError>) -> Result<R, TaskError>;

impl<R> fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("done", &self.is_done())
            .finish()
    }
}

impl<R> Task<R> {
    pub(crate) fn process(cell: Arc<Cell<Received>>, id: u64, pool: Weak<dyn Cancel>) -> Self
    where
        R: DeserializeOwned,
    {
        Task {
            inner: Inner::Process(cell, decode::<R>),
            id,
            pool: Some(pool),
        }
    }

    pub(crate) fn thread(cell: Arc<Cell<R>>, id: u64, pool: Option<Weak<dyn Cancel>>) -> Self {
        Task {
            inner: Inner::Thread(cell),
            id,
            pool,
        }
    }

    /// Whether the task has finished (its result is ready, or it failed).
    pub fn is_done(&self) -> bool {
        match &self.inner {
            Inner::Process(c, _) => c.is_done(),
            Inner::Thread(c) => c.is_done(),
        }
    }

    /// Waits at most `timeout` for the task to finish; whether it has. The result is
    /// then taken with [`wait`](Self::wait) (Python's `AsyncResult.wait(timeout)`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let pool = self.helper();
        let help = || {
            if let Some(p) = &pool {
                p.help();
            }
        };
        match &self.inner {
            Inner::Process(c, _) => c.wait_until(deadline, &help),
            Inner::Thread(c) => c.wait_until(deadline, &help),
        }
    }

    /// Cancels the task: one still queued is removed; one a worker process is running
    /// is stopped by killing that worker (the pool replaces it). A thread pool cannot
    /// stop a running task. Returns whether the task will end as
    /// [`TaskError::Cancelled`].
    pub fn cancel(&self) -> bool {
        if self.is_done() {
            return false;
        }
        self.pool
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|p| p.cancel(self.id))
    }

    /// Waits for the task and returns its result.
    ///
    /// # Errors
    ///
    /// The [`TaskError`] the task ended with.
    pub fn wait(self) -> Result<R, TaskError> {
        let pool = self.helper();
        let help = || {
            if let Some(p) = &pool {
                p.help();
            }
        };
        match &self.inner {
            Inner::Process(c, decode) => decode(c.take(&help)),
            Inner::Thread(c) => c.take(&help),
        }
    }

    /// The process pool, which a waiter helps by routing outcomes itself.
    fn helper(&self) -> Option<Arc<dyn Cancel>> {
        match self.inner {
            Inner::Process(..) => self.pool.as_ref().and_then(Weak::upgrade),
            Inner::Thread(_) => None,
        }
    }
}

/// Decodes a worker's result.
pub(crate) fn decode<R: DeserializeOwned>(
    outcome: Result<Received, TaskError>,
) -> Result<R, TaskError> {
    let received = outcome?;
    let bytes = received
        .bytes
        .get(OUTCOME_HEADER..)
        .ok_or_else(|| TaskError::Codec(crate::CodecError::new("a truncated result")))?;
    codec::decode::<R>(bytes, received.fds).map_err(TaskError::Codec)
}

impl<R> Future for Task<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &self.get_mut().inner {
            Inner::Process(c, decode) => c.poll_take(cx).map(*decode),
            Inner::Thread(c) => c.poll_take(cx),
        }
    }
}
