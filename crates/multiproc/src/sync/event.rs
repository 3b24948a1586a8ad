//! `Event`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::raw::{RECHECK, wait_for};
use crate::deadline::Deadline;
use crate::shm::ShmError;
use crate::shm::layout::EventWords;
use crate::shm::object::{Elem, Kind, Object, Shape};
use crate::sys::{self, AsFd, OwnedFd};
use crate::wire::codec;

/// The flag word's bit that says it is raised.
const SET: u32 = 1;

/// The longest an async waiter sleeps before it looks again: the doorbell is shared by
/// every async waiter, and one that silences it (finding the flag down) can, in a
/// narrow window (a `set` then a `clear` between its looks), leave another asleep.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// A flag that processes and threads can wait on: Python's `Event`.
///
/// [`set`](Event::set) raises it and wakes every waiter; [`clear`](Event::clear) lowers
/// it; [`wait`](Event::wait) returns once it is raised, also when it was lowered again
/// before the waiter woke (a `set` then `clear` releases the waiters of the moment, as
/// Python's `threading.Event` does).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::Event;
///
/// fn worker(ready: Event) -> bool {
///     ready.wait_timeout(Duration::from_secs(10))
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _guard = multiproc::init();
/// let ready = Event::new()?;
/// let child = multiproc::spawn(worker, ready.clone())?;
/// ready.set();
/// assert!(child.join()?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Event {
    obj: Arc<Object>,
    /// Rung by `set` when an async waiter sleeps (an eventfd, shared by every process
    /// holding the event: it travels with the handle).
    bell: Arc<OwnedFd>,
}

/// How an event travels: the shared object and its doorbell.
#[derive(Serialize)]
struct WireOut<'a> {
    obj: ObjectOut<'a>,
    bell: u32,
}

struct ObjectOut<'a>(&'a Object);

impl Serialize for ObjectOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[derive(Deserialize)]
struct WireIn {
    obj: ObjectIn,
    bell: u32,
}

struct ObjectIn(Object);

impl<'de> Deserialize<'de> for ObjectIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Object::deserialize(d, Kind::Event, Elem::NONE).map(ObjectIn)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bell = codec::pass_fd(self.bell.as_fd()).map_err(serde::ser::Error::custom)?;
        WireOut {
            obj: ObjectOut(&self.obj),
            bell,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireIn::deserialize(d)?;
        let bell = codec::take_fd(wire.bell).map_err(codec::refuse)?;
        // A doorbell, as the sender says: another descriptor read as one (a pipe nobody
        // writes to) held a timed wait for ever.
        if sys::fd_kind(bell.as_fd()) != sys::FdKind::Doorbell {
            return Err(codec::refuse("an Event's bell that is not a doorbell"));
        }
        Ok(Event {
            obj: Arc::new(wire.obj.0),
            bell: Arc::new(bell),
        })
    }
}

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    ///
    /// If the shared memory for it cannot be created.
    pub fn new() -> Result<Event, ShmError> {
        let shape = Shape::plain(Kind::Event, std::mem::size_of::<EventWords>());
        Ok(Event {
            obj: Arc::new(Object::new(shape, |_| {})?),
            bell: Arc::new(sys::doorbell().map_err(ShmError::Io)?),
        })
    }

    fn words(&self) -> &EventWords {
        self.obj.words()
    }

    /// Raises the flag and wakes every waiter.
    pub fn set(&self) {
        let w = self.words();
        // Raised, and counted as one more raising (the count wraps).
        let raised = w.flag.fetch_update(SeqCst, SeqCst, |v| {
            (v & SET == 0).then_some(((v >> 1).wrapping_add(1) << 1) | SET)
        });
        if raised.is_ok() {
            if w.sleepers.load(SeqCst) > 0 {
                sys::futex_wake(&w.flag, u32::MAX);
            }
            if w.async_sleepers.load(SeqCst) > 0 {
                sys::ring(self.bell.as_fd());
            }
        }
    }

    /// Lowers the flag.
    pub fn clear(&self) {
        self.words().flag.fetch_and(!SET, SeqCst);
    }

    /// Whether the flag is raised.
    pub fn is_set(&self) -> bool {
        self.words().flag.load(SeqCst) & SET != 0
    }

    /// Waits until the flag is raised (or was raised since the wait began).
    pub fn wait(&self) {
        while !self.wait_until(Deadline::Never) {}
    }

    /// Waits at most `timeout` for the flag; whether it is raised, or was raised since
    /// the wait began.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Deadline::after(timeout))
    }

    /// Whether the flag is raised, or was raised since it read `since`.
    fn raised_since(&self, since: u32) -> bool {
        let now = self.words().flag.load(SeqCst);
        now & SET != 0 || now != since
    }

    /// Waits until the flag is raised without blocking the thread: the `async` form of
    /// [`wait`](Self::wait), usable from any async runtime. It sleeps on the event's
    /// doorbell (an eventfd `set` rings when an async waiter sleeps), through
    /// async-io's reactor.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let _guard = multiproc::init();
    /// let ready = multiproc::Event::new()?;
    /// let child = multiproc::spawn(|e: multiproc::Event| e.set(), ready.clone())?;
    /// futures_lite::future::block_on(ready.wait_async())?;
    /// child.join()?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The reactor could not watch the doorbell (out of descriptors).
    pub async fn wait_async(&self) -> std::io::Result<()> {
        let w = self.words();
        let since = w.flag.load(SeqCst);
        loop {
            if self.raised_since(since) {
                return Ok(());
            }
            // Counted first, then a last look: `set` raises the flag, then looks at the
            // count (both sequentially consistent), so one of us sees the other.
            let _counted = Counted(&w.async_sleepers);
            w.async_sleepers.fetch_add(1, SeqCst);
            if self.raised_since(since) {
                return Ok(());
            }
            sys::readable_any(&[self.bell.as_fd()], Instant::now() + MAX_SLEEP).await?;
            // Raised: the bell is left rung for the other async waiters, in every
            // process (silenced here, those whose reactor had not yet looked found it
            // quiet, and slept on to `MAX_SLEEP`; the first waiter to wake in a process
            // silenced it for the rest). A later waiter that finds it rung with the flag
            // down silences it.
            if self.raised_since(since) {
                return Ok(());
            }
            sys::silence(self.bell.as_fd());
            // A `set` between that look and the silence rang for them all: again.
            if self.raised_since(since) {
                sys::ring(self.bell.as_fd());
                return Ok(());
            }
        }
    }

    fn wait_until(&self, wait: Deadline) -> bool {
        let w = self.words();
        // The kernel sleeps only while the word is what it was: a raising since (even
        // one lowered again) changes it. A look every `RECHECK`: a `set` killed between
        // raising the flag and waking the sleepers leaves them asleep otherwise.
        let since = w.flag.load(SeqCst);
        wait_for(
            &w.flag,
            since,
            &w.sleepers,
            wait.instant(),
            Some(RECHECK),
            || self.raised_since(since),
        )
    }
}

/// An async waiter counted; uncounted when it stops waiting (or is dropped).
struct Counted<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An async waiter woken by a `set` leaves the doorbell rung for the other async
    /// waiters (in other processes, each with a reactor of its own): it silenced the
    /// bell, and a waiter whose reactor looked after that slept on to `MAX_SLEEP`
    /// (100 ms) with the flag up.
    #[test]
    fn a_woken_async_waiter_leaves_the_bell_rung_for_the_others() {
        let event = Event::new().unwrap();
        let waiter = {
            let event = event.clone();
            std::thread::spawn(move || futures_lite::future::block_on(event.wait_async()))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while event.words().async_sleepers.load(SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the waiter never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        event.set();
        waiter.join().unwrap().unwrap();
        assert!(
            sys::poll_now(event.bell.as_fd()).unwrap().readable,
            "the bell was silenced with the flag up"
        );
        // A waiter that finds it rung with the flag down silences it, and sleeps.
        event.clear();
        let late = futures_lite::future::block_on(futures_lite::future::or(
            async { event.wait_async().await.map(|()| true) },
            async {
                async_io::Timer::after(Duration::from_millis(50)).await;
                Ok(false)
            },
        ));
        assert!(!late.unwrap(), "a waiter returned with the flag down");
        assert!(!sys::poll_now(event.bell.as_fd()).unwrap().readable);
    }

    /// An Event's handle whose bell is not a doorbell (a pipe nobody writes to, which a
    /// timed wait would have read and waited on for ever) is refused.
    #[test]
    fn a_bell_that_is_not_a_doorbell_is_refused() {
        let event = Event::new().unwrap();
        let again: Event = codec::resend(&event).unwrap();
        again.set();
        assert!(event.is_set());
        let mut enc = codec::encode(&event).unwrap();
        assert_eq!(enc.fds.len(), 2, "the bell, then the object's segment");
        let (reader, _writer) = sys::pipe().unwrap();
        enc.fds[0] = reader;
        let fds = std::mem::take(&mut enc.fds);
        let err = codec::decode::<Event>(&enc.bytes, fds)
            .map(drop)
            .unwrap_err();
        assert!(err.to_string().contains("not a doorbell"), "{err}");
    }
}
