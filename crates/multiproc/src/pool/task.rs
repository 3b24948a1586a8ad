//! [`Task`]: a task's eventual result, to wait for, to await, or to be told about; and
//! the cells and sinks the executors deliver outcomes into.
//!
//! Every source of tasks (the process pool, the thread pool, the cluster client) puts
//! one task's outcome into a [`Cell`] and gives the `Task` a canceller ([`Cancel`]); a
//! new source is a constructor, and everything that waits (`wait`, `await`,
//! [`on_done`](Task::on_done), `as_completed`, `wait_tasks`, `multiproc::wait`) works the
//! same for all of them. A process pool's value arrives encoded and is decoded by
//! whoever first needs it as an `R`: the thread that takes it, or the one that runs the
//! callbacks.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;

use super::TaskError;
use super::worker::OUTCOME_HEADER;
use crate::ipc::channel::Received;
use crate::select::{Completion, Source, Waitable, Watch, private};
use crate::sync::raw::spin_until;
use crate::sync::unpoisoned;
use crate::wire::codec;

/// A waiter's part in routing outcomes: what it does while it spins, and when it stops
/// and starts doing so (see `PoolInner::helper`). A plain closure only routes.
pub(crate) trait Help {
    /// Routes the outcomes waiting, if this waiter can.
    fn help(&self);
    /// The waiter is about to sleep (`false`), or is back (`true`).
    fn helping(&self, _on: bool) {}
}

impl<F: Fn()> Help for F {
    fn help(&self) {
        self();
    }
}

/// How long a waiter spins before it sleeps: results of short tasks often arrive within
/// it, and then nobody makes a system call.
const SPIN: Duration = Duration::from_micros(20);
/// A waiter on a source that routes outcomes on waiting threads too (the process pool)
/// helps this often while it sleeps: so a wait makes progress even when the pool's own
/// thread cannot route (it runs a done-callback that waits for another task).
pub(crate) const HELP_EVERY: Duration = Duration::from_millis(10);

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

type Callback<R> = Box<dyn FnOnce(&Result<R, TaskError>) + Send>;
type Decode<R> = fn(Received) -> Result<R, TaskError>;

/// Where a cell stands (its `done` word).
const PENDING: u8 = 0;
const SUCCEEDED: u8 = 1;
const FAILED: u8 = 2;
const CANCELLED: u8 = 3;

/// A value as a cell holds it.
enum Held<R> {
    Value(R),
    /// As a worker process sent it, decoded when first needed.
    Encoded(Received),
}

/// One task's outcome, once it is there.
pub(crate) struct Cell<R> {
    state: Mutex<CellState<R>>,
    ready: Condvar,
    /// `PENDING` until the outcome is in, then how it ended (for waiters that spin
    /// without the lock, and for `wait_tasks`' `FirstException`).
    done: AtomicU8,
    /// For a value that arrives encoded.
    decode: Option<Decode<R>>,
    /// An encoded value is being decoded (without the lock): whether it fails, and so
    /// the task, is not known until it is done.
    decoding: AtomicBool,
    /// Threads waiting for that to be known (see [`Cell::settle`]).
    settlers: AtomicUsize,
}

/// The last holder of a cell drops what it still holds: an outcome nobody took (its
/// `Task` dropped, a done-callback having kept the value decoded), callbacks never run.
/// That is user code running on whichever thread lets go last, often the pool's own
/// delivering thread; a `Drop` that panics there is reported, not let loose on that
/// thread (the process pool's thread ended, and its results were no longer routed; a
/// thread pool's thread ended, and `join` waited for ever).
impl<R> Drop for Cell<R> {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let left = (state.outcome.take(), std::mem::take(&mut state.callbacks));
        if let Err(caught) = crate::bootstrap::catching(move || drop(left)) {
            tracing::warn!("dropping a task's unclaimed result panicked: {caught}");
        }
    }
}

struct CellState<R> {
    outcome: Option<Result<Held<R>, TaskError>>,
    /// The outcome is out, lent to callbacks that run now (without the lock); it comes
    /// back when they return.
    lent: bool,
    /// The outcome was taken by a waiter.
    taken: bool,
    waker: Option<Waker>,
    sleepers: usize,
    callbacks: Vec<Callback<R>>,
    watchers: Vec<(Weak<dyn Watch>, usize)>,
}

/// What to do once the lock is released: wake the future, tell the watchers.
struct Fire {
    waker: Option<Waker>,
    watchers: Vec<(Weak<dyn Watch>, usize)>,
    failed: bool,
}

impl Fire {
    fn run(self) {
        if let Some(w) = self.waker {
            w.wake();
        }
        for (w, key) in self.watchers {
            if let Some(w) = w.upgrade() {
                w.notify(key, self.failed);
            }
        }
    }
}

impl<R> Cell<R> {
    /// A cell for a value delivered as an `R`.
    pub(crate) fn new() -> Arc<Self> {
        Self::with(None)
    }

    /// A cell for a value a worker process sends encoded; `decode` makes the `R`.
    pub(crate) fn encoded(decode: Decode<R>) -> Arc<Self> {
        Self::with(Some(decode))
    }

    fn with(decode: Option<Decode<R>>) -> Arc<Self> {
        Arc::new(Cell {
            state: Mutex::new(CellState {
                outcome: None,
                lent: false,
                taken: false,
                waker: None,
                sleepers: 0,
                callbacks: Vec::new(),
                watchers: Vec::new(),
            }),
            ready: Condvar::new(),
            done: AtomicU8::new(PENDING),
            decode,
            decoding: AtomicBool::new(false),
            settlers: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, CellState<R>> {
        unpoisoned::lock(&self.state)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire) != PENDING
    }

    fn is_cancelled(&self) -> bool {
        self.done.load(Ordering::Acquire) == CANCELLED
    }

    /// Lets go of the lock and makes the outcome `held` (taken out under it) an `R`,
    /// decoding a value that came encoded: one that does not decode fails the task (its
    /// `done` code says so, for `wait_tasks`' `FirstException`), and a `settle` meanwhile
    /// waits to know.
    fn resolved(
        &self,
        st: MutexGuard<'_, CellState<R>>,
        held: Result<Held<R>, TaskError>,
    ) -> Result<R, TaskError> {
        let encoded = matches!(held, Ok(Held::Encoded(_)));
        if encoded {
            self.decoding.store(true, Ordering::SeqCst);
        }
        drop(st);
        let value = self.resolve(held);
        if encoded {
            if value.is_err() {
                self.done.store(FAILED, Ordering::Release);
            }
            self.decoding.store(false, Ordering::SeqCst);
            if self.settlers.load(Ordering::SeqCst) > 0 {
                // Under the lock they look at the flag under: none misses it.
                let _st = self.lock();
                self.ready.notify_all();
            }
        }
        value
    }

    fn resolve(&self, held: Result<Held<R>, TaskError>) -> Result<R, TaskError> {
        match held? {
            Held::Value(v) => Ok(v),
            Held::Encoded(received) => match self.decode {
                // A result type's `Deserialize` that panics is this task's error, not
                // the end of the thread that decodes (the pool's, for a callback).
                Some(decode) => {
                    crate::bootstrap::catching(|| decode(received)).unwrap_or_else(decode_panicked)
                }
                None => Err(TaskError::Codec(crate::CodecError::new(
                    "an encoded result for a task that expects a value",
                ))),
            },
        }
    }

    /// Stores the first outcome and says who to tell.
    fn store(&self, st: &mut CellState<R>, outcome: Result<Held<R>, TaskError>) -> Fire {
        let code = code_of(&outcome);
        st.outcome = Some(outcome);
        self.done.store(code, Ordering::Release);
        if st.sleepers > 0 {
            self.ready.notify_all();
        }
        Fire {
            waker: st.waker.take(),
            watchers: std::mem::take(&mut st.watchers),
            failed: code == FAILED,
        }
    }

    /// Delivers the outcome (the first one wins). Callbacks run first, on this thread,
    /// without any lock of the cell held; the task counts as done while they run (as a
    /// Python future is finished before its callbacks are called: a callback that waits
    /// for a set of tasks holding its own would wait for itself), and its value is
    /// there for waiters once they return.
    fn put(&self, outcome: Result<Held<R>, TaskError>) {
        let mut st = self.lock();
        if self.is_done() || st.lent || st.taken {
            return;
        }
        if st.callbacks.is_empty() {
            let fire = self.store(&mut st, outcome);
            drop(st);
            fire.run();
            return;
        }
        st.lent = true;
        let callbacks = std::mem::take(&mut st.callbacks);
        let value = self.resolved(st, outcome);
        let code = code_of(&value);
        // Told now: those that want only to know it is done; those that take the value
        // (`as_completed`) once the callbacks give it back.
        let watchers = {
            let mut st = self.lock();
            self.done.store(code, Ordering::Release);
            let (now, later) = std::mem::take(&mut st.watchers)
                .into_iter()
                .partition(|(w, _)| !w.upgrade().is_some_and(|w| w.wants_value()));
            st.watchers = later;
            now
        };
        Fire {
            waker: None,
            watchers,
            failed: code == FAILED,
        }
        .run();
        self.run_lent(value, callbacks, true);
    }

    /// Runs callbacks with the outcome lent to them (and any added meanwhile), then
    /// puts it back: as the first delivery (`first`) or after a late `on_done`.
    fn run_lent(&self, value: Result<R, TaskError>, mut callbacks: Vec<Callback<R>>, first: bool) {
        loop {
            for cb in callbacks {
                run_callback(cb, &value);
            }
            let mut st = self.lock();
            if !st.callbacks.is_empty() {
                callbacks = std::mem::take(&mut st.callbacks);
                continue;
            }
            st.lent = false;
            let held = value.map(Held::Value);
            let fire = if first {
                self.store(&mut st, held)
            } else {
                st.outcome = Some(held);
                if st.sleepers > 0 {
                    self.ready.notify_all();
                }
                // Watchers that waited for the value while a late callback had it.
                Fire {
                    waker: st.waker.take(),
                    watchers: std::mem::take(&mut st.watchers),
                    failed: matches!(self.done.load(Ordering::Acquire), FAILED),
                }
            };
            drop(st);
            fire.run();
            return;
        }
    }

    /// Runs `cb` once with the outcome: when it arrives, or now (on this thread) if it
    /// is there already. A value already taken by a waiter is reported as `Taken`.
    fn on_done(&self, cb: Callback<R>) {
        let mut st = self.lock();
        if !self.is_done() || st.lent {
            st.callbacks.push(cb);
            return;
        }
        let Some(held) = st.outcome.take() else {
            drop(st);
            run_callback(cb, &Err(TaskError::Taken));
            return;
        };
        st.lent = true;
        let value = self.resolved(st, held);
        self.run_lent(value, vec![cb], false);
    }

    /// Whether the task failed, its value decoded first if it came encoded (on this
    /// thread, without the cell's lock, as a callback's is): a value that does not
    /// decode is the task's failure (`Codec`), which `wait_tasks`' `FirstException`
    /// must see as one. A value lent to callbacks or taken is left as it is.
    pub(crate) fn settle(&self) -> bool {
        let mut st = self.lock();
        // Another thread decoding the value (a waiter's take, a callback's delivery):
        // whether it fails is known once it is done.
        self.settlers.fetch_add(1, Ordering::SeqCst);
        while self.decoding.load(Ordering::SeqCst) {
            st = unpoisoned::wait(&self.ready, st);
        }
        self.settlers.fetch_sub(1, Ordering::SeqCst);
        if st.lent || !matches!(st.outcome, Some(Ok(Held::Encoded(_)))) {
            return self.done.load(Ordering::Acquire) == FAILED;
        }
        let Some(held) = st.outcome.take() else {
            return false;
        };
        st.lent = true;
        let value = self.resolved(st, held);
        let failed = value.is_err();
        self.run_lent(value, Vec::new(), false);
        failed
    }

    /// Registers `watch` to be told (under `key`) when the task finishes (when its value
    /// can be taken, for a watcher that [wants it](Watch::wants_value)); if it has,
    /// says so at once instead: `Some(failed)`.
    pub(crate) fn watch(&self, watch: Weak<dyn Watch>, key: usize) -> Option<bool> {
        let mut st = self.lock();
        let code = self.done.load(Ordering::Acquire);
        // Done, unless the watcher takes the value and callbacks have it.
        if code != PENDING && !(st.lent && watch.upgrade().is_some_and(|w| w.wants_value())) {
            return Some(code == FAILED);
        }
        st.watchers.push((watch, key));
        None
    }

    /// Removes `watch`, if it is still registered.
    pub(crate) fn unwatch(&self, watch: &Weak<dyn Watch>) {
        self.lock()
            .watchers
            .retain(|(w, _)| !Weak::ptr_eq(w, watch));
    }

    /// Waits until the outcome is there (or `deadline` passes); whether it is. `help`
    /// is called while spinning, and, with `helping`, every `HELP_EVERY` of sleep.
    fn wait_until(&self, deadline: Option<Instant>, help: &dyn Fn(), helping: bool) -> bool {
        let spin_end = Instant::now() + SPIN;
        let done = || {
            help();
            self.is_done()
        };
        if spin_until(spin_end.min(deadline.unwrap_or(spin_end)), done) {
            return true;
        }
        let mut st = self.lock();
        loop {
            if self.is_done() {
                return true;
            }
            let until = match (helping, deadline) {
                (false, d) => d,
                (true, None) => Some(Instant::now() + HELP_EVERY),
                (true, Some(d)) => Some(d.min(Instant::now() + HELP_EVERY)),
            };
            st.sleepers += 1;
            st = match unpoisoned::wait_until(&self.ready, st, until) {
                Ok(st) | Err(st) => st,
            };
            st.sleepers -= 1;
            if self.is_done() {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            if helping {
                drop(st);
                help();
                st = self.lock();
            }
        }
    }

    /// Takes the outcome, waiting for it until `deadline`.
    fn take(
        &self,
        deadline: Option<Instant>,
        help: &dyn Fn(),
        helping: bool,
    ) -> Result<R, TaskError> {
        if !self.wait_until(deadline, help, helping) {
            return Err(TaskError::Timeout);
        }
        let mut st = self.lock();
        loop {
            if let Some(outcome) = st.outcome.take() {
                st.taken = true;
                return self.resolved(st, outcome);
            }
            if st.taken {
                return Err(TaskError::Taken);
            }
            // Lent to callbacks (or, never, not there yet): they give it back.
            st.sleepers += 1;
            let timed_out;
            (st, timed_out) = match unpoisoned::wait_until(&self.ready, st, deadline) {
                Ok(st) => (st, false),
                Err(st) => (st, true),
            };
            st.sleepers -= 1;
            if timed_out && st.outcome.is_none() && !st.taken {
                return Err(TaskError::Timeout);
            }
        }
    }

    /// Lets go of the waker of a future that is gone (its `Task` dropped): kept, it held
    /// the runtime's task (and what that holds) until this one ends, for ever if it
    /// never does.
    fn forget_waker(&self) {
        let waker = self.lock().waker.take();
        drop(waker);
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<R, TaskError>> {
        let mut st = self.lock();
        if !st.lent {
            if let Some(outcome) = st.outcome.take() {
                st.taken = true;
                return Poll::Ready(self.resolved(st, outcome));
            }
            if st.taken {
                return Poll::Ready(Err(TaskError::Taken));
            }
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The `done` code of an outcome.
fn code_of<T>(outcome: &Result<T, TaskError>) -> u8 {
    match outcome {
        Ok(_) => SUCCEEDED,
        Err(TaskError::Cancelled) => CANCELLED,
        Err(_) => FAILED,
    }
}

/// Runs a done-callback; a panic in it is reported and goes no further (it must not
/// take down the pool's thread that delivered the outcome).
fn run_callback<R>(cb: Callback<R>, value: &Result<R, TaskError>) {
    if let Err(caught) = crate::bootstrap::catching(|| cb(value)) {
        tracing::warn!("a task's done-callback panicked: {caught}");
    }
}

impl<R: Send> Completion for Cell<R> {
    fn is_complete(&self) -> bool {
        self.is_done()
    }

    fn watch(&self, watch: Weak<dyn Watch>, key: usize) -> Option<bool> {
        Cell::watch(self, watch, key)
    }

    fn unwatch(&self, watch: &Weak<dyn Watch>) {
        Cell::unwatch(self, watch);
    }
}

/// A task's completion, helping its source (see [`Completion::help`]).
impl<R: Send> Completion for Task<R> {
    fn is_complete(&self) -> bool {
        self.cell.is_done()
    }

    fn watch(&self, watch: Weak<dyn Watch>, key: usize) -> Option<bool> {
        self.cell.watch(watch, key)
    }

    fn unwatch(&self, watch: &Weak<dyn Watch>) {
        self.cell.unwatch(watch);
    }

    fn help(&self) -> bool {
        match self.helper() {
            Some(source) if source.helps() => {
                source.help();
                true
            }
            _ => false,
        }
    }

    fn helper_key(&self) -> Option<usize> {
        self.helper()
            .filter(|source| source.helps())
            .map(|source| Arc::as_ptr(&source).cast::<()>().addr())
    }
}

impl<R: Send> Sink<R> for Cell<R> {
    fn deliver(&self, _slot: usize, outcome: Result<R, TaskError>) {
        self.put(outcome.map(Held::Value));
    }
}

/// The sink of one process-pool task: the worker's encoded result goes into the task's
/// cell as it is, decoded when first needed.
pub(crate) struct FromWorker<R>(pub(crate) Arc<Cell<R>>);

impl<R: Send> Sink<Received> for FromWorker<R> {
    fn deliver(&self, _slot: usize, outcome: Result<Received, TaskError>) {
        self.0.put(outcome.map(Held::Encoded));
    }
}

/// Outcomes of many tasks (`map`, `imap`), by slot.
pub(crate) struct Slots<T> {
    /// Whether consumers take by slot (then nothing is kept in arrival order: an
    /// endless ordered `imap` would keep a word per item it ever had).
    ordered: bool,
    state: Mutex<StreamState<T>>,
    ready: Condvar,
    /// Outcomes delivered so far (for waiters that spin without the lock).
    delivered: AtomicUsize,
}

struct StreamState<T> {
    /// By slot, for ordered consumers.
    by_slot: FxHashMap<usize, Result<T, TaskError>>,
    /// In arrival order, for unordered ones (empty for ordered ones).
    arrived: VecDeque<usize>,
    sleepers: usize,
    /// An async consumer to wake.
    waker: Option<Waker>,
}

impl<T> Slots<T> {
    /// Outcomes for consumers that take them by slot (`ordered`) or as they arrive.
    pub(crate) fn new(ordered: bool) -> Arc<Self> {
        Arc::new(Slots {
            ordered,
            state: Mutex::new(StreamState {
                by_slot: FxHashMap::default(),
                arrived: VecDeque::new(),
                sleepers: 0,
                waker: None,
            }),
            ready: Condvar::new(),
            delivered: AtomicUsize::new(0),
        })
    }

    /// Takes the outcome of `slot` (or, with `None`, of whichever slot finished first),
    /// waiting for it until `deadline` at most (`None` then); while it spins, it calls
    /// `help` (which may deliver outcomes).
    pub(crate) fn take_until(
        &self,
        slot: Option<usize>,
        deadline: Option<Instant>,
        help: &dyn Help,
    ) -> Option<(usize, Result<T, TaskError>)> {
        let mut spun = false;
        loop {
            let seen = self.delivered.load(Ordering::Acquire);
            let mut st = unpoisoned::lock(&self.state);
            if let Some(found) = Self::take_locked(&mut st, slot) {
                return Some(found);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            if !spun {
                // Spin (without the lock) until something new is delivered.
                drop(st);
                spun = true;
                let end = Instant::now() + SPIN;
                let arrived = || {
                    help.help();
                    self.delivered.load(Ordering::Acquire) != seen
                };
                if spin_until(deadline.map_or(end, |d| d.min(end)), arrived) {
                    spun = false;
                }
                continue;
            }
            st.sleepers += 1;
            help.helping(false);
            // Woken by an outcome, or every `HELP_EVERY` to route outcomes itself: the
            // pool's own thread may be the one waiting here (a done-callback that maps).
            let until = crate::deadline::later(HELP_EVERY);
            let mut st = match unpoisoned::wait_until(
                &self.ready,
                st,
                deadline.map(|d| d.min(until)).or(Some(until)),
            ) {
                Ok(st) | Err(st) => st,
            };
            st.sleepers -= 1;
            help.helping(true);
            if let Some(found) = Self::take_locked(&mut st, slot) {
                return Some(found);
            }
            drop(st);
            help.help();
            spun = false;
        }
    }

    /// Takes the outcome of `slot` (or of whichever finished first) if it is there;
    /// otherwise the task's waker is woken when an outcome arrives.
    pub(crate) fn poll_take(
        &self,
        slot: Option<usize>,
        cx: &mut Context<'_>,
    ) -> Poll<(usize, Result<T, TaskError>)> {
        let mut st = unpoisoned::lock(&self.state);
        if let Some(found) = Self::take_locked(&mut st, slot) {
            return Poll::Ready(found);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
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
            if st.by_slot.insert(slot, outcome).is_none() && !self.ordered {
                st.arrived.push_back(slot);
            }
        }
        self.delivered.fetch_add(n, Ordering::Release);
        if st.sleepers > 0 {
            self.ready.notify_all();
        }
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What a task's source does for its handle: a pool, a thread pool's job, a cluster
/// client.
pub(crate) trait Cancel: Send + Sync {
    /// Cancels task `id`; whether it will end as `Cancelled`.
    fn cancel(&self, id: u64) -> bool;

    /// Cancels task `id` if it has not started; whether it will end as `Cancelled`.
    /// Sources that cannot tell do nothing. (A cluster's worker uses it.)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn cancel_unstarted(&self, _id: u64) -> bool {
        false
    }

    /// Whether task `id` is running now (not queued, not finished). Sources that
    /// cannot tell say no.
    fn is_running(&self, _id: u64) -> bool {
        false
    }

    /// Called by a thread waiting for a task: may deliver outcomes.
    fn help(&self) {}

    /// Whether [`help`](Self::help) does something (a waiter then also helps while it
    /// sleeps, now and then).
    fn helps(&self) -> bool {
        false
    }

    /// Whether the calling thread is the source's own (a callback it runs): nothing
    /// else routes its outcomes while this thread waits, nor wakes it.
    fn routes_here(&self) -> bool {
        false
    }
}

/// The sources of some tasks that route outcomes on the threads waiting for them (each
/// once): what a wait for any of the tasks helps. A wait in a callback on one pool's
/// own thread for tasks of several pools must help that one, whichever task comes
/// first.
pub(crate) struct Helpers(Vec<Arc<dyn Cancel>>);

impl Helpers {
    pub(crate) fn of<'t, R: 't>(tasks: impl IntoIterator<Item = &'t Task<R>>) -> Self {
        let mut all: Vec<Arc<dyn Cancel>> = Vec::new();
        for source in tasks.into_iter().filter_map(Task::helper) {
            let same =
                |a: &Arc<dyn Cancel>| std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(&source));
            if source.helps() && !all.iter().any(same) {
                all.push(source);
            }
        }
        Helpers(all)
    }

    pub(crate) fn help(&self) {
        for source in &self.0 {
            source.help();
        }
    }
}

/// The result of a task submitted to a [`Pool`](crate::Pool) or
/// [`ThreadPool`](crate::ThreadPool) (or, with the `redis` feature, to a cluster):
/// Python's `AsyncResult` and `concurrent.futures.Future`.
///
/// [`wait`](Task::wait) blocks for it and [`wait_timeout`](Task::wait_timeout) for at
/// most a while; a `Task` is also a [`Future`], so it can be awaited under any async
/// runtime; [`on_done`](Task::on_done) runs a callback with the outcome; and many tasks
/// are waited for together with [`as_completed`](crate::as_completed),
/// [`wait_tasks`](crate::wait_tasks) or [`wait`](crate::wait). Dropping a `Task` does
/// not cancel it: the task runs and its result is thrown away.
#[must_use = "a task's result or error is only seen through its Task"]
pub struct Task<R> {
    cell: Arc<Cell<R>>,
    id: u64,
    source: Option<Weak<dyn Cancel>>,
}

impl<R> Task<R> {
    /// The task's id at its source (a cluster client's local id).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn source_id(&self) -> u64 {
        self.id
    }
}

impl<R> fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("done", &self.is_done())
            .finish()
    }
}

impl<R> Drop for Task<R> {
    fn drop(&mut self) {
        self.cell.forget_waker();
    }
}

impl<R> Task<R> {
    /// A task whose outcome `cell` receives; `source` cancels it (by `id`), says
    /// whether it runs, and may help a waiter by delivering outcomes.
    pub(crate) fn new(cell: Arc<Cell<R>>, id: u64, source: Option<Weak<dyn Cancel>>) -> Self {
        Task { cell, id, source }
    }

    pub(crate) fn cell(&self) -> &Arc<Cell<R>> {
        &self.cell
    }

    /// Whether the task has finished (its result is ready, or it failed; its
    /// done-callbacks may still be running, as in Python).
    pub fn is_done(&self) -> bool {
        self.cell.is_done()
    }

    /// Whether the task ended cancelled (Python's `Future.cancelled()`).
    pub fn is_cancelled(&self) -> bool {
        self.cell.is_cancelled()
    }

    /// Whether the task is running now: started, not finished (Python's
    /// `Future.running()`). A cluster client does not follow its tasks' runs on their
    /// workers and says no until they finish.
    pub fn is_running(&self) -> bool {
        !self.is_done()
            && self
                .source
                .as_ref()
                .and_then(Weak::upgrade)
                .is_some_and(|s| s.is_running(self.id))
    }

    /// Cancels the task: one still queued is removed; one a worker process is running
    /// is stopped by killing that worker (the pool replaces it). A thread pool cannot
    /// stop a running task. A cluster stops a running task at its worker's next lease
    /// renewal, and one that ends before then ends cancelled all the same (its value or
    /// failure is dropped), as a pool's does when the cancel comes first. Returns
    /// whether the task will end as [`TaskError::Cancelled`]: a queued one at once (its
    /// callbacks run on this thread, or on one routing outcomes as it waits); a running
    /// one of a process pool once its worker is gone (so that nothing
    /// of it runs after a wait returned: [`is_cancelled`](Self::is_cancelled) and
    /// [`is_done`](Self::is_done) say no until then).
    pub fn cancel(&self) -> bool {
        self.cancel_by(|source, id| source.cancel(id))
    }

    /// As [`cancel`](Self::cancel), for a task that has not started only: one running
    /// is left to run (its worker is not killed). A cluster's worker hands back the
    /// tasks its pool has not started when it stops.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn cancel_unstarted(&self) -> bool {
        self.cancel_by(|source, id| source.cancel_unstarted(id))
    }

    /// Cancels the task through its source with `how`; whether it will end cancelled.
    fn cancel_by(&self, how: impl FnOnce(&dyn Cancel, u64) -> bool) -> bool {
        if self.is_done() {
            return false;
        }
        let cancelled = self
            .source
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|p| how(&*p, self.id));
        // An outcome that came while the cancel was on its way (to a cluster's server)
        // is the task's.
        cancelled && (!self.is_done() || self.is_cancelled())
    }

    /// Runs `callback` once with the task's outcome (Python's
    /// `Future.add_done_callback`): when the task finishes, on the thread that delivers
    /// its outcome (the pool's own thread, or a thread waiting on the same pool that
    /// hands it over; a thread pool's task that timed out, a thread of its own; a cluster
    /// client's task, the client's delivering thread), with no
    /// lock of multiproc's held, so the callback may submit tasks or
    /// even wait for one (though the pool's thread delivers nothing else meanwhile:
    /// keep callbacks short, as Python asks); or at once, on this thread, if the task
    /// has finished already. Callbacks run before waiters ([`wait`](Self::wait), an
    /// `.await`) get the outcome; the task counts as done
    /// ([`is_done`](Self::is_done), [`wait_tasks`](crate::wait_tasks),
    /// [`as_completed`](crate::as_completed)) while they run, as a Python future is
    /// finished before its callbacks are called. A callback added after the value was taken
    /// by [`wait`](Self::wait) gets [`TaskError::Taken`]. A callback that panics is
    /// reported (a `tracing` warning) and changes nothing else.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = multiproc::ThreadPool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// let task = pool.submit(|| 6 * 7)?;
    /// task.on_done(move |outcome| tx.send(*outcome.as_ref().unwrap()).unwrap());
    /// assert_eq!(rx.recv()?, 42);
    /// assert_eq!(task.wait()?, 42); // the value is still there
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "add_done_callback")]
    pub fn on_done(&self, callback: impl FnOnce(&Result<R, TaskError>) + Send + 'static) {
        self.cell.on_done(Box::new(callback));
    }

    /// Waits for the task and returns its result.
    ///
    /// # Errors
    ///
    /// The [`TaskError`] the task ended with.
    pub fn wait(self) -> Result<R, TaskError> {
        self.take(None)
    }

    /// Waits at most `timeout` for the task and returns its result (Python's
    /// `Future.result(timeout)`). On [`TaskError::Timeout`] the task goes on and this
    /// handle can wait again.
    ///
    /// # Errors
    ///
    /// [`TaskError::Timeout`]; the [`TaskError`] the task ended with; after a result
    /// was returned, [`TaskError::Taken`].
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<R, TaskError> {
        self.take(Instant::now().checked_add(timeout))
    }

    fn take(&self, deadline: Option<Instant>) -> Result<R, TaskError> {
        let source = self.helper();
        let help = || {
            if let Some(s) = &source {
                s.help();
            }
        };
        let helping = source.as_ref().is_some_and(|s| s.helps());
        self.cell.take(deadline, &help, helping)
    }

    /// The source, which a waiter helps by routing outcomes itself.
    pub(crate) fn helper(&self) -> Option<Arc<dyn Cancel>> {
        self.source.as_ref().and_then(Weak::upgrade)
    }
}

/// Decodes a worker's result.
pub(crate) fn decode<R: DeserializeOwned>(received: Received) -> Result<R, TaskError> {
    let bytes = received
        .bytes
        .get(OUTCOME_HEADER..)
        .ok_or_else(|| TaskError::Codec(crate::CodecError::new("a truncated result")))?;
    codec::decode::<R>(bytes, received.fds).map_err(TaskError::Codec)
}

/// A result type's `Deserialize` that panicked: the error of the task (or the map) whose
/// result it decoded, not the end of the thread that decodes (the caller's, or the
/// pool's for a callback).
fn decode_panicked<T>(caught: crate::RemotePanic) -> Result<T, TaskError> {
    Err(TaskError::Codec(crate::CodecError::new(format!(
        "decoding the result panicked: {caught}"
    ))))
}

/// Decodes a chunk's values (a sequence of `R`, as a worker's `run_chunk` writes them),
/// pushing them straight into `out`, with no vector of its own.
pub(crate) fn decode_chunk_into<R: DeserializeOwned>(
    outcome: Result<Received, TaskError>,
    out: &mut Vec<R>,
) -> Result<(), TaskError> {
    let received = outcome?;
    let bytes = received
        .bytes
        .get(OUTCOME_HEADER..)
        .ok_or_else(|| TaskError::Codec(crate::CodecError::new("a truncated result")))?;
    crate::bootstrap::catching(|| {
        codec::decode_seed(PushAll { out }, bytes, received.fds).map_err(TaskError::Codec)
    })
    .unwrap_or_else(decode_panicked)
}

/// Reads a sequence of `R`, pushing each into `out`.
struct PushAll<'a, R> {
    out: &'a mut Vec<R>,
}

impl<'de, R: DeserializeOwned> serde::de::DeserializeSeed<'de> for PushAll<'_, R> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, R: DeserializeOwned> serde::de::Visitor<'de> for PushAll<'_, R> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence of values")
    }

    fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        // (The caller reserved room for the chunk; a length read from the wire is not
        // trusted with an allocation.)
        while let Some(value) = seq.next_element::<R>()? {
            self.out.push(value);
        }
        Ok(())
    }
}

/// Decodes a worker's outcome, or passes its error on.
pub(crate) fn decode_outcome<R: DeserializeOwned>(
    outcome: Result<Received, TaskError>,
) -> Result<R, TaskError> {
    let received = outcome?;
    crate::bootstrap::catching(|| decode(received)).unwrap_or_else(decode_panicked)
}

impl<R: Send> private::Sealed for Task<R> {
    fn source(&self) -> Source<'_> {
        Source::task(self)
    }
}

impl<R: Send> Waitable for Task<R> {}

impl<R> Future for Task<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.helper().is_some_and(|source| source.routes_here()) {
            // Polled on the pool's own thread (in a callback): nobody else routes the
            // outcome while it waits, and nobody would wake it. The outcome is waited
            // for here, routing, as `wait` does, a while at a time: the executor gets
            // its thread back in between (a timeout, another branch of a `select!`).
            // (`Timeout` is never an outcome: only a wait's end, the outcome not in
            // or lent to a callback.)
            return match self.take(Some(Instant::now() + HELP_EVERY)) {
                Err(TaskError::Timeout) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                done => Poll::Ready(done),
            };
        }
        self.cell.poll_take(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn callbacks_run_once_before_and_after_delivery() {
        let cell = Cell::<u32>::new();
        let task = Task::new(cell.clone(), 0, None);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        task.on_done(move |o| {
            assert_eq!(o.as_ref().ok(), Some(&7));
            r.fetch_add(1, Ordering::SeqCst);
        });
        cell.deliver(0, Ok(7));
        cell.deliver(0, Ok(8)); // a second delivery is ignored
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let r = Arc::clone(&runs);
        task.on_done(move |o| {
            assert_eq!(o.as_ref().ok(), Some(&7));
            r.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 11);
        let mut task = task;
        assert_eq!(task.wait_timeout(Duration::ZERO), Ok(7));
        assert_eq!(task.wait_timeout(Duration::ZERO), Err(TaskError::Taken));
        let r = Arc::clone(&runs);
        task.on_done(move |o| {
            assert_eq!(o, &Err(TaskError::Taken));
            r.fetch_add(100, Ordering::SeqCst);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 111);
    }

    /// Outcomes taken leave nothing behind, taken by slot or as they arrive: an endless
    /// ordered `imap` kept a word per item it ever had in the arrival queue, which only
    /// unordered takes emptied.
    #[test]
    fn slots_keep_nothing_once_taken() {
        for ordered in [true, false] {
            let slots = Slots::<u32>::new(ordered);
            for i in 0..10_000 {
                slots.deliver(i, Ok(i as u32));
                let taken = slots.take_until(ordered.then_some(i), None, &|| {});
                assert_eq!(taken, Some((i, Ok(i as u32))));
            }
            let st = unpoisoned::lock(&slots.state);
            assert_eq!(
                (st.by_slot.len(), st.arrived.len()),
                (0, 0),
                "ordered: {ordered}"
            );
        }
    }

    #[test]
    fn a_timeout_leaves_the_task_usable() {
        let cell = Cell::<u32>::new();
        let mut task = Task::new(cell.clone(), 0, None);
        assert_eq!(
            task.wait_timeout(Duration::from_millis(10)),
            Err(TaskError::Timeout)
        );
        cell.deliver(0, Err(TaskError::Cancelled));
        assert!(task.is_cancelled());
        assert_eq!(task.wait(), Err(TaskError::Cancelled));
    }
}
