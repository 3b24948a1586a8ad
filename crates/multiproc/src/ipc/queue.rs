//! [`Queue`] and [`JoinableQueue`]: Python's multi-producer, multi-consumer queues.

use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::channel::{self, Deadline, RawReceiver, RawSender};
use super::pipe::{self, Failed, Missed};
use super::{RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError};
use crate::sync::raw::RECHECK;
use crate::sys;

/// A queue that any number of threads and processes put into and get from (Python's
/// `multiprocessing.Queue`). Clone it, or pass it to [`spawn`](crate::spawn), to share
/// it; every item is delivered to exactly one getter, in the order it was put.
///
/// Unlike Python's queue there is no feeder thread: an item whose `put` returned `Ok`
/// is in shared memory, delivered even if the putting process exits or is killed right
/// after. A process killed in the middle of a `put` or `get` neither blocks the others
/// nor corrupts the queue (one killed while it took an item that travels beside the
/// ring, below, loses that item with it).
///
/// `Queue::new()` is unbounded, as Python's `Queue()` is: `put` never waits for room.
/// Items go into a 4 MiB ring in shared memory; when it is full, into overflow segments
/// of the same memory (4 MiB each, made as needed and given back once read), so a
/// program may put everything before it starts its consumers. The exception: items that
/// travel beside the ring, on the queue's socket (those over 2 MiB, and those carrying
/// handles such as an `Event`, a `Lock` or a `Sender`), wait once its kernel buffer is
/// full, until a consumer takes one: with the default buffer (208 KiB) it held 278
/// items that were a handle alone, 93 that carried 1 KB besides, 7 that carried 30 KB
/// (an item that carries a handle and is up to 32 KiB travels in the socket's message
/// itself; a larger one in a memory file of its own). A blocking `put` that
/// finds the ring full first gives the consumers up to a millisecond to make room in it
/// (consumers that keep up then read from memory they have just read, not from new
/// pages); `try_put` and `put_async` go on at once. `bounded(n)` holds at most `n` items, and its
/// `put` waits while it is full.
///
/// # Examples
///
/// ```no_run
/// use multiproc::Queue;
///
/// fn consumer(q: Queue<Option<u32>>) -> u32 {
///     let mut sum = 0;
///     while let Some(n) = q.get().unwrap() {
///         sum += n;
///     }
///     sum
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let q = Queue::new()?;
/// let child = multiproc::spawn(consumer, q.clone())?;
/// for n in 1..=10 {
///     q.put(Some(n))?;
/// }
/// q.put(None)?; // the sentinel
/// assert_eq!(child.join()?, 55);
/// # Ok(())
/// # }
/// ```
pub struct Queue<T> {
    tx: Option<RawSender>,
    rx: RawReceiver,
    _t: std::marker::PhantomData<fn(T) -> T>,
}

impl<T> Queue<T> {
    /// An unbounded queue (Python's `Queue()`): `put` never waits for room (at most a
    /// millisecond for consumers to make some in its ring, see [`Queue`]); what is put
    /// waits in shared memory that grows as needed, up to 24,576 segments of the ring's
    /// size (96 GiB with the default ring) or what the machine's memory holds, whichever
    /// is less (past it, `put` fails with an I/O error, and the item comes back).
    ///
    /// # Errors
    ///
    /// The operating system refused shared memory or descriptors.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = channel::unbounded(channel::DEFAULT_RING)?;
        Ok(Queue {
            tx: Some(tx),
            rx,
            _t: std::marker::PhantomData,
        })
    }

    /// A queue of at most `n` items (at least 1): `put` waits while it is full. Its
    /// items are kept in one 4 MiB ring (an item of over 2 MiB travels beside it, in a
    /// memory file of its own, and holds 2 MiB of the ring meanwhile), so items that
    /// together need more also make `put` wait, before `n` are queued: at most two
    /// items of over 2 MiB wait at once.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn bounded(n: usize) -> std::io::Result<Self> {
        let (tx, rx) = channel::channel(channel::DEFAULT_RING, Some(n as u64))?;
        Ok(Queue {
            tx: Some(tx),
            rx,
            _t: std::marker::PhantomData,
        })
    }

    /// Items waiting (Python's `qsize()`; an estimate while others put and get).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the queue holds (`None` for the unbounded `Queue::new()`).
    pub fn capacity(&self) -> Option<usize> {
        self.rx.capacity()
    }

    /// Whether the queue holds as many items as its [`capacity`](Self::capacity). A
    /// bounded queue's ring may be full before that, of large items: `try_put` says so
    /// then, where this does not.
    pub fn is_full(&self) -> bool {
        self.capacity().is_some_and(|c| self.len() >= c)
    }

    /// This handle will put nothing more (Python's `close()`). Once every handle that
    /// could put is closed, dropped, or gone with its process, getters receive
    /// `Disconnected` when the queue is empty. Later puts through this handle fail.
    pub fn close(&mut self) {
        self.tx = None;
    }

    fn sender(&self) -> Option<&RawSender> {
        self.tx.as_ref()
    }

    pub(crate) fn raw_receiver(&self) -> &RawReceiver {
        &self.rx
    }
}

impl<T: Serialize> Queue<T> {
    /// Puts an item, waiting while a bounded queue is full (an unbounded one never is).
    ///
    /// As with [`Sender::send`](crate::Sender::send), a small item is serialized while
    /// the queue's send lock is held: its `Serialize` must not put on the same queue nor
    /// wait for a thread that may be putting on it.
    ///
    /// # Errors
    ///
    /// The item comes back: this handle is closed, it could not be encoded, or the
    /// system refused (for an unbounded queue, another segment of shared memory: a
    /// file size limit, or no address space left; memory that runs out as messages
    /// are written is met by the kernel's out-of-memory killer, as any write is).
    pub fn put(&self, value: T) -> Result<(), SendError<T>> {
        pipe::send_error(put(self.sender(), value, Deadline::Never, false))
    }

    /// Puts a copy of an item the caller keeps, as Python's `put` does: the item is
    /// encoded straight into the queue's shared memory, so a large one (a buffer that
    /// is sent again and again, say) is not cloned first. Waits as [`put`](Self::put)
    /// does. A handle in the item (a `Sender`, a `Queue`) is put as a copy too, as by
    /// `clone` then `put`: the caller's stays open.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put); the error holds the reference (so it borrows the item:
    /// `map_err` it, or take [`SendError::into_inner`](crate::SendError::into_inner),
    /// to return it further than the item lives).
    pub fn put_ref<'v>(&self, value: &'v T) -> Result<(), SendError<&'v T>> {
        pipe::send_error(put(self.sender(), value, Deadline::Never, false))
    }

    /// Puts an item without blocking the thread: the `async` form of [`put`](Self::put)
    /// (asyncio's `await queue.put(item)`), usable from any async runtime. On a full
    /// bounded queue it waits on the queue's doorbell, which getters ring when they
    /// take an item and a putter waits.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put).
    pub async fn put_async(&self, value: T) -> Result<(), SendError<T>> {
        put_async(self.sender(), value, false).await
    }

    /// Puts an item if there is room now (Python's `put_nowait`).
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put), plus [`TrySendError::Full`].
    pub fn try_put(&self, value: T) -> Result<(), TrySendError<T>> {
        put(self.sender(), value, Deadline::Now, false).map_err(|(v, e)| match e {
            Failed::Full => TrySendError::Full(v),
            Failed::Disconnected => TrySendError::Disconnected(v),
            Failed::Codec(c) => TrySendError::Codec(v, c),
            Failed::Io(io) => TrySendError::Io(v, io),
        })
    }

    /// Puts an item, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put), plus [`SendTimeoutError::Timeout`].
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        put(self.sender(), value, Deadline::after(timeout), false).map_err(|(v, e)| match e {
            Failed::Full => SendTimeoutError::Timeout(v),
            Failed::Disconnected => SendTimeoutError::Disconnected(v),
            Failed::Codec(c) => SendTimeoutError::Codec(v, c),
            Failed::Io(io) => SendTimeoutError::Io(v, io),
        })
    }
}

async fn put_async<T: Serialize>(
    tx: Option<&RawSender>,
    value: T,
    unfinished: bool,
) -> Result<(), SendError<T>> {
    let sent = match tx {
        Some(tx) => pipe::send_async(tx, value, unfinished).await,
        None => Err((value, Failed::Disconnected)),
    };
    pipe::send_error(sent)
}

fn put<T: Serialize>(
    tx: Option<&RawSender>,
    value: T,
    wait: Deadline,
    unfinished: bool,
) -> Result<(), (T, Failed)> {
    match tx {
        Some(tx) => pipe::send(tx, value, wait, unfinished),
        None => Err((value, Failed::Disconnected)),
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the next item, waiting until there is one.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] when the queue is empty and no handle that could put
    /// remains (all closed, dropped or gone); [`RecvError::Codec`] when an item does not
    /// decode as `T` (it is consumed).
    pub fn get(&self) -> Result<T, RecvError> {
        pipe::recv(&self.rx, Deadline::Never).map_err(|m| match m {
            Missed::Empty | Missed::Disconnected => RecvError::Disconnected,
            Missed::Codec(c) => RecvError::Codec(c),
            Missed::Io(e) => RecvError::Io(e),
        })
    }

    /// Takes the next item without blocking the thread: the `async` form of
    /// [`get`](Self::get), usable from any async runtime.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_async(&self) -> Result<T, RecvError> {
        pipe::recv_async(&self.rx).await.map_err(|m| match m {
            Missed::Empty | Missed::Disconnected => RecvError::Disconnected,
            Missed::Codec(c) => RecvError::Codec(c),
            Missed::Io(e) => RecvError::Io(e),
        })
    }

    /// Takes the next item if there is one (Python's `get_nowait`).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), plus [`TryRecvError::Empty`].
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        pipe::recv(&self.rx, Deadline::Now).map_err(|m| match m {
            Missed::Empty => TryRecvError::Empty,
            Missed::Disconnected => TryRecvError::Disconnected,
            Missed::Codec(c) => TryRecvError::Codec(c),
            Missed::Io(e) => TryRecvError::Io(e),
        })
    }

    /// Takes the next item, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), plus [`RecvTimeoutError::Timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        pipe::recv(&self.rx, Deadline::after(timeout)).map_err(|m| match m {
            Missed::Empty => RecvTimeoutError::Timeout,
            Missed::Disconnected => RecvTimeoutError::Disconnected,
            Missed::Codec(c) => RecvTimeoutError::Codec(c),
            Missed::Io(e) => RecvTimeoutError::Io(e),
        })
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
            _t: std::marker::PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.len())
            .field("closed", &self.tx.is_none())
            .finish_non_exhaustive()
    }
}

/// One channel's descriptors once, and both tokens: 9 descriptors a handle (see
/// `channel::serialize_pair`).
impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        channel::serialize_pair(self.tx.as_ref(), &self.rx, s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (tx, rx) = channel::deserialize_pair(d)?;
        Ok(Queue {
            tx,
            rx,
            _t: std::marker::PhantomData,
        })
    }
}

/// A [`Queue`] that also counts unfinished tasks (Python's `JoinableQueue`): every `put`
/// adds one, every [`task_done`](Self::task_done) removes one, and
/// [`join`](Self::join) waits until none is left.
///
/// A producer killed in the middle of a `put` adds its task only with its item: either
/// neither counts, or the next `put` or `get` finishes the put that was half-way and
/// both are there. A consumer that dies between `get` and `task_done` leaves its task
/// unfinished, as in Python: `join` then waits, and
/// [`join_timeout`](Self::join_timeout) bounds the wait. So does one killed in the
/// middle of a `get` of an item that travels beside the ring (over 2 MiB, or carrying
/// handles): the item is lost with it (see [`Queue`]), its task still counted; a
/// program that may lose consumers so calls `task_done` for the items it knows are
/// lost, or joins with a timeout.
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

/// [`JoinableQueue::task_done`] was called more times than items were put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than items were put")]
pub struct TaskDoneError;

impl<T> JoinableQueue<T> {
    /// As [`Queue::new`].
    ///
    /// # Errors
    ///
    /// As [`Queue::new`].
    pub fn new() -> std::io::Result<Self> {
        Queue::new().map(|queue| JoinableQueue { queue })
    }

    /// As [`Queue::bounded`].
    ///
    /// # Errors
    ///
    /// As [`Queue::new`].
    pub fn bounded(n: usize) -> std::io::Result<Self> {
        Queue::bounded(n).map(|queue| JoinableQueue { queue })
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// As [`Queue::close`].
    pub fn close(&mut self) {
        self.queue.close();
    }

    pub(crate) fn queue(&self) -> &Queue<T> {
        &self.queue
    }

    /// Tasks put and not yet marked done.
    pub fn unfinished(&self) -> u64 {
        channel::tasks_unfinished(self.queue.rx.header())
    }

    /// Marks one task done (one item that a `get` returned has been processed).
    ///
    /// # Errors
    ///
    /// [`TaskDoneError`] if no task was unfinished.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let h = self.queue.rx.header();
        let mut done = h.tasks_done.load(SeqCst);
        loop {
            // Tasks put only grow, so a count read after `done` is at least `done`.
            if h.produced.0.tasks.load(SeqCst) <= done {
                return Err(TaskDoneError);
            }
            match h
                .tasks_done
                .compare_exchange(done, done + 1, SeqCst, SeqCst)
            {
                Ok(_) => break,
                Err(now) => done = now,
            }
        }
        channel::wake_joiners_if_done(h);
        Ok(())
    }

    /// Waits until every task put has been marked done.
    pub fn join(&self) {
        self.join_until(None);
    }

    /// Waits at most `timeout` until every task put has been marked done; returns
    /// whether they all were.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.join_until(Instant::now().checked_add(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> bool {
        let h = self.queue.rx.header();
        loop {
            let epoch = h.sleepers.0.join_epoch.load(SeqCst);
            if channel::tasks_unfinished(h) == 0 {
                return true;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return false,
                },
                None => None,
            };
            h.sleepers.0.joiners.fetch_add(1, SeqCst);
            if channel::tasks_unfinished(h) != 0 {
                // A look every `RECHECK`: a `task_done` killed between counting the last
                // task done and waking the joiners leaves them asleep otherwise.
                let nap = left.map_or(RECHECK, |l| l.min(RECHECK));
                sys::futex_wait(&h.sleepers.0.join_epoch, epoch, Some(nap));
            }
            h.sleepers.0.joiners.fetch_sub(1, SeqCst);
        }
    }
}

impl<T: Serialize> JoinableQueue<T> {
    /// As [`Queue::put`]; the item counts as an unfinished task.
    ///
    /// # Errors
    ///
    /// As [`Queue::put`].
    pub fn put(&self, value: T) -> Result<(), SendError<T>> {
        pipe::send_error(put(self.queue.sender(), value, Deadline::Never, true))
    }

    /// As [`Queue::put_ref`]; the item counts as an unfinished task.
    ///
    /// # Errors
    ///
    /// As [`Queue::put`].
    pub fn put_ref<'v>(&self, value: &'v T) -> Result<(), SendError<&'v T>> {
        pipe::send_error(put(self.queue.sender(), value, Deadline::Never, true))
    }

    /// As [`Queue::put_async`]; the item counts as an unfinished task.
    ///
    /// # Errors
    ///
    /// As [`Queue::put`].
    pub async fn put_async(&self, value: T) -> Result<(), SendError<T>> {
        put_async(self.queue.sender(), value, true).await
    }

    /// As [`Queue::try_put`]; the item counts as an unfinished task.
    ///
    /// # Errors
    ///
    /// As [`Queue::try_put`].
    pub fn try_put(&self, value: T) -> Result<(), TrySendError<T>> {
        put(self.queue.sender(), value, Deadline::Now, true).map_err(|(v, e)| match e {
            Failed::Full => TrySendError::Full(v),
            Failed::Disconnected => TrySendError::Disconnected(v),
            Failed::Codec(c) => TrySendError::Codec(v, c),
            Failed::Io(io) => TrySendError::Io(v, io),
        })
    }

    /// As [`Queue::put_timeout`]; the item counts as an unfinished task.
    ///
    /// # Errors
    ///
    /// As [`Queue::put_timeout`].
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        put(self.queue.sender(), value, Deadline::after(timeout), true).map_err(|(v, e)| match e {
            Failed::Full => SendTimeoutError::Timeout(v),
            Failed::Disconnected => SendTimeoutError::Disconnected(v),
            Failed::Codec(c) => SendTimeoutError::Codec(v, c),
            Failed::Io(io) => SendTimeoutError::Io(v, io),
        })
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// As [`Queue::get`].
    ///
    /// An item taken that does not decode ([`RecvError::Codec`], and the `Codec` errors
    /// of the other gets) was taken all the same and still counts as unfinished, as in
    /// Python: mark it done with [`task_done`](Self::task_done) once it is dealt with,
    /// or [`join`](Self::join) waits for it for ever.
    ///
    /// # Errors
    ///
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T, RecvError> {
        self.queue.get()
    }

    /// As [`Queue::get_async`].
    ///
    /// # Errors
    ///
    /// As [`Queue::get`].
    pub async fn get_async(&self) -> Result<T, RecvError> {
        self.queue.get_async().await
    }

    /// As [`Queue::try_get`].
    ///
    /// # Errors
    ///
    /// As [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        self.queue.try_get()
    }

    /// As [`Queue::get_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.queue.get_timeout(timeout)
    }
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("len", &self.len())
            .field("unfinished", &self.unfinished())
            .finish_non_exhaustive()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize(d).map(|queue| JoinableQueue { queue })
    }
}
