//! `Condition`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{Lock, LockGuard};
use super::raw::{Acquired, RECHECK};
use super::{LockResult, OwnerDied, TryLockResult};
use crate::deadline::Deadline;
use crate::shm::ShmError;
use crate::shm::layout::ConditionWords;
use crate::shm::object::{Elem, Kind, Object, Shape};
use crate::sys;

/// A condition variable over a [`Lock`], shared by processes and threads: Python's
/// `Condition`.
///
/// Take the lock with [`lock`](Condition::lock), check the state it protects, and
/// [`wait`](Condition::wait) (which releases the lock while asleep and takes it again
/// before returning) until another thread changes the state and calls
/// [`notify`](Condition::notify) or [`notify_all`](Condition::notify_all). A wait may
/// also end without a notification, so check the state in a loop, or use
/// [`wait_while`](Condition::wait_while).
///
/// If a process dies holding the lock, the next waiter to take it back gets
/// [`OwnerDied`] with its guard, as with [`Lock::lock`].
///
/// # Examples
///
/// ```no_run
/// use multiproc::{Condition, Value};
///
/// fn producer((cond, items): (Condition, Value<u32>)) {
///     for _ in 0..10 {
///         let _held = cond.lock().unwrap();
///         items.store(items.load() + 1);
///         cond.notify();
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _guard = multiproc::init();
/// let cond = Condition::new()?;
/// let items = Value::new(0u32)?;
/// let child = multiproc::spawn(producer, (cond.clone(), items.clone()))?;
/// let held = cond.lock().unwrap();
/// let _held = cond.wait_while(held, || items.load() < 10).unwrap();
/// # drop(_held);
/// child.join()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Condition {
    lock: Lock,
    obj: Arc<Object>,
}

/// Whether a timed wait on a [`Condition`] ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// Whether the wait ended because the timeout passed.
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

impl Condition {
    /// A condition with a new lock of its own.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn new() -> Result<Condition, ShmError> {
        Condition::with_lock(&Lock::new()?)
    }

    /// A condition over `lock`, which other conditions or code may share.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn with_lock(lock: &Lock) -> Result<Condition, ShmError> {
        let shape = Shape::plain(Kind::Condition, std::mem::size_of::<ConditionWords>());
        Ok(Condition {
            lock: lock.clone(),
            obj: Arc::new(Object::new(shape, |_| {})?),
        })
    }

    fn words(&self) -> &ConditionWords {
        self.obj.words()
    }

    /// The lock the condition is over.
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// Takes the lock: [`Lock::lock`].
    ///
    /// # Errors
    ///
    /// As [`Lock::lock`].
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        self.lock.lock()
    }

    /// Takes the lock if it is free: [`Lock::try_lock`].
    ///
    /// # Errors
    ///
    /// As [`Lock::try_lock`].
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        self.lock.try_lock()
    }

    /// Takes the lock, waiting at most `timeout`: [`Lock::lock_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Lock::lock_timeout`].
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        self.lock.lock_timeout(timeout)
    }

    /// Releases the lock held by `guard`, sleeps until notified, and takes the lock
    /// again.
    ///
    /// # Errors
    ///
    /// [`OwnerDied`] (holding the guard) if, while this thread slept, a thread died
    /// holding the lock.
    ///
    /// # Panics
    ///
    /// If `guard` holds another lock than this condition's.
    pub fn wait<'a>(&self, guard: LockGuard<'a>) -> LockResult<LockGuard<'a>> {
        self.sleep(guard, None).map(|(g, _)| g).map_err(|e| {
            let (g, _) = e.into_inner();
            OwnerDied::new(g)
        })
    }

    /// As [`wait`](Self::wait), for at most `timeout`. The timeout bounds the wait for
    /// a notification: the lock is then taken back however long its holder keeps it
    /// (as with std's `Condvar` and Python's `Condition`: the guard is returned holding
    /// it), so a holder that is stopped, or holds it for long, holds the return up.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    pub fn wait_timeout<'a>(
        &self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> LockResult<(LockGuard<'a>, WaitTimeoutResult)> {
        self.sleep(guard, Instant::now().checked_add(timeout))
    }

    /// Waits while `condition()` is true (checked with the lock held), then returns the
    /// guard: Python's `wait_for(predicate)` with the predicate negated, as in std.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait); the guard in the error still holds the lock.
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    pub fn wait_while<'a>(
        &self,
        mut guard: LockGuard<'a>,
        mut condition: impl FnMut() -> bool,
    ) -> LockResult<LockGuard<'a>> {
        while condition() {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// As [`wait_while`](Self::wait_while), for at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    pub fn wait_timeout_while<'a>(
        &self,
        mut guard: LockGuard<'a>,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> LockResult<(LockGuard<'a>, WaitTimeoutResult)> {
        let deadline = Instant::now().checked_add(timeout);
        while condition() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok((guard, WaitTimeoutResult(true)));
            }
            guard = self.sleep(guard, deadline)?.0;
        }
        Ok((guard, WaitTimeoutResult(false)))
    }

    /// Wakes one thread waiting on this condition, if any.
    ///
    /// A waiter that was killed as it waited stays counted among the waiters (nothing
    /// can take it off): from then on a notification made while it is the only one
    /// counted is kept for the next waiter, and one made later may end a wait more than
    /// it would have; such a wait ends as if notified. Check the state in a loop, as
    /// the type's docs say, or use [`wait_while`](Self::wait_while).
    pub fn notify(&self) {
        self.wake(1);
    }

    /// Wakes every thread waiting on this condition.
    pub fn notify_all(&self) {
        self.wake(u32::MAX);
    }

    fn wake(&self, n: u32) {
        let w = self.words();
        w.seq.fetch_add(1, SeqCst);
        let waiters = w.waiters.load(SeqCst);
        if waiters > 0 {
            // One claim per waiter this wakes, never more than there are waiters.
            let _ = w.unclaimed.fetch_update(SeqCst, SeqCst, |u| {
                Some(u.saturating_add(n).min(waiters.max(u)))
            });
            sys::futex_wake(&w.seq, n);
        }
    }

    fn sleep<'a>(
        &self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> LockResult<(LockGuard<'a>, WaitTimeoutResult)> {
        assert!(
            guard.lock.same_as(&self.lock.obj),
            "Condition::wait with the guard of another lock"
        );
        let w = self.words();
        // Counted before the sequence is read, and both before the lock is released: a
        // notifier that takes the lock after that sees us, and one that does not hold
        // the lock either moved the sequence before we read it (its notification is
        // before this wait) or sees us counted, and leaves a claim.
        w.waiters.fetch_add(1, SeqCst);
        let seq = w.seq.load(SeqCst);
        let count = guard.held.release_all();
        // Notified when it takes a claim, which a notification leaves for each waiter it
        // is for, once the sequence has moved since the wait began: woken by it, or
        // finding it moved before it slept, or at a look every `RECHECK` (a claim still
        // there then belongs to a waiter that was woken and then killed before it took
        // it; without the look, that notification would be lost to the waiters left). A
        // wake-up that finds no claim (it went to another waiter, or a signal) sleeps
        // again. Timed out when the whole timeout passed without a claim, whether or not
        // others were notified meanwhile.
        let claim = || {
            w.unclaimed
                .fetch_update(SeqCst, SeqCst, |u| u.checked_sub(1))
                .is_ok()
        };
        let mut seen = seq;
        let timed_out = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break true;
            }
            let nap = left.map_or(RECHECK, |l| l.min(RECHECK));
            sys::futex_wait(&w.seq, seen, Some(nap));
            let now = w.seq.load(SeqCst);
            if now != seq && claim() {
                break false;
            }
            seen = now;
        };
        w.waiters.fetch_sub(1, SeqCst);
        let got = loop {
            if let Some(got) = guard.held.retake(count, Deadline::Never) {
                break got;
            }
        };
        if timed_out {
            // Claims no waiter is left to take (notified as it timed out) go, so that no
            // later waiter takes one for a notification before its time. Trimmed with
            // the lock held again: waiters are counted only under it, so the count can
            // fall meanwhile but not rise, and no claim a notification left a waiter
            // still counted goes (trimmed before, a waiter that came between the count's
            // read and the update could lose its claim, and sleep through its
            // notification). A claim can still be left over (the count includes a
            // notified waiter that has taken its claim and not yet left): a later wait
            // then ends without a notification, which waits allow.
            let _ = w.unclaimed.fetch_update(SeqCst, SeqCst, |u| {
                let waiters = w.waiters.load(SeqCst);
                (u > waiters).then_some(waiters)
            });
        }
        let timed_out = WaitTimeoutResult(timed_out);
        match got {
            Acquired::Clean => Ok((guard, timed_out)),
            Acquired::OwnerDied => Err(OwnerDied::new((guard, timed_out))),
        }
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

/// How a condition travels: its lock and its own words.
impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Words<'a>(&'a Object);
        impl Serialize for Words<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
        (&self.lock, Words(&self.obj)).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Words(Object);
        impl<'de> Deserialize<'de> for Words {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Object::deserialize(d, Kind::Condition, Elem::NONE).map(Words)
            }
        }
        let (lock, Words(obj)) = <(Lock, Words)>::deserialize(d)?;
        Ok(Condition {
            lock,
            obj: Arc::new(obj),
        })
    }
}
