//! [`Imap`] and [`ImapUnordered`]: lazy maps over a pool, with bounded work in flight,
//! as iterators and as async streams ([`ImapStream`]). The feeding logic is shared by
//! both pools through [`Backend`].

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TaskError;
use super::task::{self, Slots};
use super::worker::TaskEntry;
use super::{DEPTH_MAX, Pool, encode_job};
use crate::ipc::channel::Received;

/// How a lazy map hands one item to its pool.
pub(crate) trait Backend<A> {
    /// What a finished task delivers.
    type Raw: Send + 'static;
    /// What it takes to drop a submitted task nobody will read.
    type Handle;

    /// Tasks kept in flight at most.
    fn window(&self) -> usize;

    /// Submits `item`; its outcome is delivered to `stream` under `slot`.
    fn submit(
        &self,
        item: A,
        slot: usize,
        stream: &Arc<Slots<Self::Raw>>,
    ) -> Result<Self::Handle, TaskError>;

    /// Submits several items at once; by default one by one. Each is submitted or
    /// refused with its error.
    fn submit_all(
        &self,
        items: Vec<(usize, A)>,
        stream: &Arc<Slots<Self::Raw>>,
    ) -> Vec<(usize, Result<Self::Handle, TaskError>)> {
        items
            .into_iter()
            .map(|(slot, item)| (slot, self.submit(item, slot, stream)))
            .collect()
    }

    /// Drops tasks that were submitted and will not be read.
    fn discard(&self, handles: Vec<Self::Handle>);

    /// A panic caught while the last [`submit_all`](Self::submit_all) encoded an item
    /// (its `Serialize`): that item was refused, the others submitted, and the panic
    /// goes on to the caller from here.
    fn take_panic(&self) -> Option<Box<dyn std::any::Any + Send>> {
        None
    }

    /// Called while waiting for an outcome: may deliver outcomes.
    fn help(&self) {}

    /// Whether the calling thread is the one that routes outcomes when nobody else
    /// does (a callback the pool's thread runs).
    fn routes_here(&self) -> bool {
        false
    }
}

/// What both iterators share: the input, the tasks in flight, their outcomes.
pub(crate) struct Feed<B: Backend<A>, A, I> {
    backend: B,
    input: I,
    input_done: bool,
    stream: Arc<Slots<B::Raw>>,
    /// The tasks submitted and not yet yielded, by slot (oldest first).
    handles: VecDeque<(usize, B::Handle)>,
    next_slot: usize,
    yielded: usize,
    _arg: PhantomData<fn(A)>,
}

impl<B: Backend<A>, A, I: Iterator<Item = A>> Feed<B, A, I> {
    pub(crate) fn new(backend: B, input: I, ordered: bool) -> Self {
        Feed {
            backend,
            input,
            input_done: false,
            stream: Slots::new(ordered),
            handles: VecDeque::new(),
            next_slot: 0,
            yielded: 0,
            _arg: PhantomData,
        }
    }

    /// Submits items until the window is full or the input ends; once it is full, only
    /// after half of it has been consumed, so that items go in batches.
    fn fill(&mut self) {
        let window = self.backend.window();
        let in_flight = self.next_slot - self.yielded;
        if self.input_done || (in_flight > 0 && in_flight > window / 2) {
            return;
        }
        let mut batch = Vec::new();
        while self.next_slot - self.yielded < window {
            // An input that panics ends there: the items it gave before are submitted
            // (they are counted as given), then the panic goes on to the caller, and a
            // caller that catches it gets their outcomes, then the end (it waited for
            // ever for items counted and never submitted).
            let input = &mut self.input;
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input.next())) {
                Ok(Some(item)) => {
                    batch.push((self.next_slot, item));
                    self.next_slot += 1;
                }
                Ok(None) => {
                    self.input_done = true;
                    break;
                }
                Err(panic) => {
                    self.input_done = true;
                    // The input's panic goes on; one of an item's encoding is dropped.
                    let submitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.submit(batch);
                    }));
                    if let Err(other) = submitted {
                        crate::bootstrap::drop_payload(other);
                    }
                    std::panic::resume_unwind(panic);
                }
            }
        }
        self.submit(batch);
    }

    /// Submits `batch`; an item that cannot be is yielded as its failure. An item whose
    /// encoding panicked is one: the others are submitted, and the panic goes on to the
    /// caller, who, catching it, gets every outcome (that item's failure among them)
    /// and the rest of the input (a panic out of the encoding of the whole batch lost
    /// the batch, and a caller that caught it waited for ever for its outcomes).
    fn submit(&mut self, batch: Vec<(usize, A)>) {
        for (slot, submitted) in self.backend.submit_all(batch, &self.stream) {
            match submitted {
                Ok(handle) => self.handles.push_back((slot, handle)),
                // Yielded in its place, like any other outcome.
                Err(e) => {
                    use super::task::Sink;
                    self.stream.deliver(slot, Err(e));
                }
            }
        }
        if let Some(panic) = self.backend.take_panic() {
            std::panic::resume_unwind(panic);
        }
    }

    /// The next outcome: of the oldest slot (`ordered`) or of whichever finished first.
    pub(crate) fn next_outcome(&mut self, ordered: bool) -> Option<Result<B::Raw, TaskError>> {
        self.next_outcome_until(ordered, None)
    }

    /// As [`next_outcome`](Self::next_outcome), waiting until `deadline` at most:
    /// `Some(Err(Timeout))` then, and the outcome stays for the next call.
    pub(crate) fn next_outcome_until(
        &mut self,
        ordered: bool,
        deadline: Option<Instant>,
    ) -> Option<Result<B::Raw, TaskError>> {
        self.fill();
        if self.yielded == self.next_slot {
            return None;
        }
        let backend = &self.backend;
        let Some((slot, outcome)) =
            self.stream
                .take_until(ordered.then_some(self.yielded), deadline, &|| {
                    backend.help()
                })
        else {
            return Some(Err(TaskError::Timeout));
        };
        Some(self.yield_slot(slot, outcome))
    }

    /// The next outcome, for an async consumer: `Pending` (with the waker registered)
    /// while none is there. The pool's thread routes the outcomes and wakes the task:
    /// a poll routes none itself, as a blocking `next` does, for routing runs the
    /// callbacks of the tasks it routes, whatever they wait for, on the runtime's
    /// thread; unless it is polled on the pool's thread (in a callback): nothing else
    /// routes then, and the poll waits for the outcome, routing, as `next` does, 10 ms
    /// at most, then wakes the task to be polled again.
    pub(crate) fn poll_outcome(
        &mut self,
        ordered: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<B::Raw, TaskError>>> {
        self.fill();
        if self.yielded == self.next_slot {
            return Poll::Ready(None);
        }
        if self.backend.routes_here() {
            // Nobody else routes while this thread waits, and nobody would wake it: the
            // outcome is waited for here, routing as a blocking `next` does, a while at a
            // time, as `Task`'s poll does: the executor gets its thread back in between
            // (a timeout, another branch of a `select!`). (`Timeout` is never an
            // outcome, only a wait's end.)
            let until = Instant::now() + super::task::HELP_EVERY;
            return match self.next_outcome_until(ordered, Some(until)) {
                Some(Err(TaskError::Timeout)) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                other => Poll::Ready(other),
            };
        }
        match self.stream.poll_take(ordered.then_some(self.yielded), cx) {
            Poll::Ready((slot, outcome)) => Poll::Ready(Some(self.yield_slot(slot, outcome))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn yield_slot(
        &mut self,
        slot: usize,
        outcome: Result<B::Raw, TaskError>,
    ) -> Result<B::Raw, TaskError> {
        self.yielded += 1;
        if let Some(pos) = self.handles.iter().position(|&(s, _)| s == slot) {
            self.handles.remove(pos);
        }
        outcome
    }

    fn in_flight(&self) -> usize {
        self.handles.len()
    }
}

impl<B: Backend<A>, A, I> Drop for Feed<B, A, I> {
    fn drop(&mut self) {
        // Tasks not yet started are dropped; running ones finish unread.
        let handles = self.handles.drain(..).map(|(_, h)| h).collect();
        self.backend.discard(handles);
    }
}

/// Feeds a process pool: one task per item, running a function known by its entry.
pub(crate) struct ProcessBackend<'p> {
    pool: &'p Pool,
    entry: Result<TaskEntry, TaskError>,
    /// See [`Backend::take_panic`]. (A mutex, not a cell: the iterators over a pool
    /// are `Sync` where their input is.)
    panicked: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl<A: Serialize> Backend<A> for ProcessBackend<'_> {
    type Raw = Received;
    type Handle = u64;

    fn window(&self) -> usize {
        self.pool.processes() * DEPTH_MAX
    }

    fn submit(
        &self,
        item: A,
        slot: usize,
        stream: &Arc<Slots<Received>>,
    ) -> Result<u64, TaskError> {
        let entry = self.entry.clone()?;
        let payload = encode_job(&item)?;
        self.pool
            .inner()
            .submit(entry, payload, stream.clone(), slot, None)
    }

    fn submit_all(
        &self,
        items: Vec<(usize, A)>,
        stream: &Arc<Slots<Received>>,
    ) -> Vec<(usize, Result<u64, TaskError>)> {
        let entry = match &self.entry {
            Ok(entry) => *entry,
            Err(e) => {
                return items
                    .into_iter()
                    .map(|(s, _)| (s, Err(e.clone())))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut jobs = Vec::with_capacity(items.len());
        for (slot, item) in items {
            let encoded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode_job(&item)));
            match encoded {
                Ok(Ok(payload)) => jobs.push((slot, payload)),
                Ok(Err(e)) => out.push((slot, Err(e))),
                Err(panic) => {
                    let why = crate::bootstrap::payload_message(&*panic);
                    let e =
                        crate::CodecError::new(format!("the argument's Serialize panicked: {why}"));
                    out.push((slot, Err(TaskError::Codec(e))));
                    // The first goes on to the caller; a later one is dropped here.
                    let mut first = crate::sync::unpoisoned::lock(&self.panicked);
                    match &*first {
                        Some(_) => crate::bootstrap::drop_payload(panic),
                        None => *first = Some(panic),
                    }
                }
            }
        }
        let slots: Vec<usize> = jobs.iter().map(|&(s, _)| s).collect();
        let sink: Arc<dyn super::task::Sink<Received>> = stream.clone();
        match self
            .pool
            .inner()
            .submit_many((entry, 0), jobs, &sink, false)
        {
            Ok(ids) => out.extend(slots.into_iter().zip(ids.into_iter().map(Ok))),
            Err(e) => out.extend(slots.into_iter().map(|s| (s, Err(e.clone())))),
        }
        out
    }

    fn discard(&self, handles: Vec<u64>) {
        self.pool.inner().discard(&handles);
    }

    fn take_panic(&self) -> Option<Box<dyn std::any::Any + Send>> {
        crate::sync::unpoisoned::lock(&self.panicked).take()
    }

    fn help(&self) {
        // On the pool's own thread (in a callback), the engine's other chores too.
        super::task::Cancel::help(&**self.pool.inner());
    }

    fn routes_here(&self) -> bool {
        self.pool.inner().on_engine_thread()
    }
}

/// The iterator of [`Pool::imap`]: each item's result, in item order (and, as
/// [`ImapUnordered`], of [`Pool::imap_unordered`]: in the order they finish).
pub struct Imap<'p, A: Serialize, R, I, const ORDERED: bool = true> {
    feed: Feed<ProcessBackend<'p>, A, I>,
    _result: PhantomData<fn() -> R>,
}

/// The iterator of [`Pool::imap_unordered`]: each item's result, in the order they
/// finish.
pub type ImapUnordered<'p, A, R, I> = Imap<'p, A, R, I, false>;

impl<'p, A, R, I, const ORDERED: bool> Imap<'p, A, R, I, ORDERED>
where
    A: Serialize,
    I: Iterator<Item = A>,
{
    pub(super) fn new(pool: &'p Pool, entry: Result<TaskEntry, TaskError>, input: I) -> Self {
        Imap {
            feed: Feed::new(
                ProcessBackend {
                    pool,
                    entry,
                    panicked: std::sync::Mutex::new(None),
                },
                input,
                ORDERED,
            ),
            _result: PhantomData,
        }
    }
}

impl<'p, A, R, I, const ORDERED: bool> Imap<'p, A, R, I, ORDERED>
where
    A: Serialize,
    R: DeserializeOwned,
    I: Iterator<Item = A>,
{
    /// The next result, waiting at most `timeout` for it (Python's
    /// `IMapIterator.next(timeout)`): `Some(Err(TaskError::Timeout))` if it is not
    /// there by then, and the iterator goes on (the next call waits for the same item).
    /// `None` once every item has been yielded.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, TaskError>> {
        self.feed
            .next_outcome_until(ORDERED, Instant::now().checked_add(timeout))
            .map(task::decode_outcome)
    }

    /// The same map as an async stream (`futures_core::Stream`, which tokio's,
    /// futures' and smol's stream helpers drive): each result as it is ready, in the
    /// iterator's order, without blocking the runtime's thread.
    ///
    /// ```no_run
    /// use futures_lite::StreamExt;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let _guard = multiproc::init();
    /// let pool = multiproc::Pool::new(2)?;
    /// let total = futures_lite::future::block_on(async {
    ///     let mut results = pool.imap_unordered(square, 0..100u64).into_stream();
    ///     let mut total = 0;
    ///     while let Some(r) = results.next().await {
    ///         total += r.unwrap();
    ///     }
    ///     total
    /// });
    /// assert_eq!(total, (0..100u64).map(|x| x * x).sum::<u64>());
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_stream(self) -> ImapStream<'p, A, R, I, ORDERED> {
        ImapStream { imap: self }
    }
}

impl<A, R, I, const ORDERED: bool> Iterator for Imap<'_, A, R, I, ORDERED>
where
    A: Serialize,
    R: DeserializeOwned,
    I: Iterator<Item = A>,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.feed.next_outcome(ORDERED).map(task::decode_outcome)
    }
}

/// [`Imap`] or [`ImapUnordered`] as an async stream ([`Imap::into_stream`]).
pub struct ImapStream<'p, A: Serialize, R, I, const ORDERED: bool = true> {
    imap: Imap<'p, A, R, I, ORDERED>,
}

/// Nothing in it is pinned (its parts are moved freely), whatever the input iterator.
impl<A: Serialize, R, I, const ORDERED: bool> Unpin for ImapStream<'_, A, R, I, ORDERED> {}

impl<A, R, I, const ORDERED: bool> futures_core::Stream for ImapStream<'_, A, R, I, ORDERED>
where
    A: Serialize,
    R: DeserializeOwned,
    I: Iterator<Item = A>,
{
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.imap
            .feed
            .poll_outcome(ORDERED, cx)
            .map(|o| o.map(task::decode_outcome))
    }
}

impl<A: Serialize, R, I: Iterator<Item = A>, const ORDERED: bool> fmt::Debug
    for ImapStream<'_, A, R, I, ORDERED>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapStream")
            .field("imap", &self.imap)
            .finish()
    }
}

impl<A: Serialize, R, I: Iterator<Item = A>, const ORDERED: bool> fmt::Debug
    for Imap<'_, A, R, I, ORDERED>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(if ORDERED { "Imap" } else { "ImapUnordered" })
            .field("in_flight", &self.feed.in_flight())
            .field("yielded", &self.feed.yielded)
            .finish()
    }
}
