//! The lock behind `Lock`, `RLock`, `Value` and `Array`: the robust raw lock of
//! [`raw`](super::raw), plus what those types add on top: re-entrancy for `RLock`, and a
//! flag that keeps an owner's death for the next `lock()` when an operation that cannot
//! report it (`Value::load`) took the lock over.

use std::marker::PhantomData;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use super::raw::Acquired;
use super::{LockResult, OwnerDied, TryLockError, TryLockResult};
use crate::deadline::Deadline;
use crate::shm::layout::MutexWords;
use crate::sys;

/// The lock, held by this thread; released when dropped. Not `Send`: the lock belongs to
/// the thread that took it.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    words: &'a MutexWords,
    reentrant: bool,
    _thread_bound: PhantomData<std::sync::MutexGuard<'static, ()>>,
}

impl<'a> Held<'a> {
    /// Releases the lock for good, whatever the re-entrancy count (for `Condition::wait`,
    /// which releases and retakes it): returns the count to restore.
    pub(crate) fn release_all(&self) -> u32 {
        let count = if self.reentrant {
            self.words.count.swap(0, Relaxed)
        } else {
            1
        };
        self.words.lock.unlock();
        count
    }

    /// Takes the lock again after [`release_all`](Self::release_all).
    pub(crate) fn retake(&self, count: u32, wait: Deadline) -> Option<Acquired> {
        let got = raw_take(self.words, wait)?;
        if self.reentrant {
            self.words.count.store(count, Relaxed);
        }
        Some(got)
    }
}

impl Drop for Held<'_> {
    #[inline]
    fn drop(&mut self) {
        // Only an `RLock` counts its holds; for the others `count` stays untouched, and
        // the uncontended path is one CAS to lock and one store to unlock.
        if self.reentrant {
            if self.words.count.load(Relaxed) > 1 {
                self.words.count.fetch_sub(1, Relaxed);
                return;
            }
            self.words.count.store(0, Relaxed);
        }
        self.words.lock.unlock();
    }
}

/// A hold of the lock of shared data (`Value`'s, `Array`'s), from which references to
/// the data are made: counted on its thread while it lives, so that a thread that
/// leaks one does not have its lock taken over in this process once it has ended (see
/// [`leaked`](super::leaked)).
#[derive(Debug)]
pub(crate) struct DataHeld<'a> {
    _held: Held<'a>,
}

impl<'a> DataHeld<'a> {
    #[inline]
    pub(crate) fn new(held: Held<'a>) -> Self {
        super::leaked::enter();
        DataHeld { _held: held }
    }
}

impl Drop for DataHeld<'_> {
    #[inline]
    fn drop(&mut self) {
        super::leaked::leave();
    }
}

#[inline]
fn raw_take(words: &MutexWords, wait: Deadline) -> Option<Acquired> {
    match wait {
        Deadline::Now => words.lock.try_lock(),
        Deadline::At(t) => words.lock.lock(Some(t)),
        Deadline::Never => words.lock.lock(None),
    }
}

/// How a lock was taken.
#[derive(Debug)]
pub(crate) enum Got<'a> {
    Clean(Held<'a>),
    /// From an owner that died holding it (now, or earlier through [`take_quietly`]).
    OwnerDied(Held<'a>),
}

/// Takes the lock; `None` if it is held (past the deadline). `reentrant`: if this
/// thread holds it already, count one more hold (`RLock`); otherwise that is a
/// deadlock, reported as `None` when not waiting forever.
///
/// # Panics
///
/// When waiting forever for a non-re-entrant lock this thread holds: it would never be
/// granted; or for a re-entrant one this thread holds `u32::MAX` times: its count would
/// overflow (as std's `ReentrantLock` does; otherwise `None`).
#[inline]
pub(crate) fn take(words: &MutexWords, reentrant: bool, wait: Deadline) -> Option<Got<'_>> {
    let held = || Held {
        words,
        reentrant,
        _thread_bound: PhantomData,
    };
    // The lock word is read by the CAS anyway; whether this thread holds it already
    // matters only when it is taken.
    if words.lock.is_locked() && words.lock.held_by_me() {
        if reentrant {
            // Only the holder writes the count while it holds the lock.
            let count = words.count.load(Relaxed);
            if count == u32::MAX {
                if let Deadline::Never = wait {
                    panic!(
                        "an RLock was locked again by a thread that holds it u32::MAX times: its count would overflow"
                    );
                }
                return None;
            }
            words.count.store(count + 1, Relaxed);
            return Some(Got::Clean(held()));
        }
        if let Deadline::Never = wait {
            panic!(
                "a multiproc lock (a Lock, or a Value's or Array's) was locked again by the thread holding it (use an RLock, or the guard you hold)"
            );
        }
        return None;
    }
    let got = raw_take(words, wait)?;
    if reentrant {
        words.count.store(1, Relaxed);
    }
    // The flag is taken either way: left set beside a death the raw lock reports, it
    // would report a death again to a later owner that met none.
    let kept = words.died.load(Relaxed) != 0 && words.died.swap(0, SeqCst) != 0;
    let died = got == Acquired::OwnerDied || kept;
    Some(if died {
        Got::OwnerDied(held())
    } else {
        Got::Clean(held())
    })
}

/// [`take`], waiting as long as it takes.
#[inline]
pub(crate) fn take_forever(words: &MutexWords, reentrant: bool) -> Got<'_> {
    loop {
        if let Some(got) = take(words, reentrant, Deadline::Never) {
            return got;
        }
    }
}

/// Takes the lock for an operation that cannot report an owner's death: if there was
/// one, it is kept for the next [`take`].
#[inline]
pub(crate) fn take_quietly(words: &MutexWords) -> Held<'_> {
    keep_death(words, take_forever(words, false))
}

/// [`take_quietly`] if the lock is free now (or its holder died); `None` if it is held.
pub(crate) fn try_take_quietly(words: &MutexWords) -> Option<Held<'_>> {
    take(words, false, Deadline::Now).map(|got| keep_death(words, got))
}

/// The hold, with an owner's death kept for the next [`take`] to report.
fn keep_death<'a>(words: &'a MutexWords, got: Got<'a>) -> Held<'a> {
    match got {
        Got::Clean(held) => held,
        Got::OwnerDied(held) => {
            words.died.store(1, SeqCst);
            held
        }
    }
}

/// [`take_forever`] as a [`LockResult`] of `G`.
#[inline]
pub(crate) fn lock<'a, G>(
    words: &'a MutexWords,
    reentrant: bool,
    guard: impl FnOnce(Held<'a>) -> G,
) -> LockResult<G> {
    match take_forever(words, reentrant) {
        Got::Clean(held) => Ok(guard(held)),
        Got::OwnerDied(held) => Err(OwnerDied::new(guard(held))),
    }
}

/// [`take`] as a [`TryLockResult`] of `G`.
pub(crate) fn try_lock<'a, G>(
    words: &'a MutexWords,
    reentrant: bool,
    wait: Deadline,
    guard: impl FnOnce(Held<'a>) -> G,
) -> TryLockResult<G> {
    match take(words, reentrant, wait) {
        Some(Got::Clean(held)) => Ok(guard(held)),
        Some(Got::OwnerDied(held)) => Err(TryLockError::OwnerDied(OwnerDied::new(guard(held)))),
        None => Err(TryLockError::WouldBlock),
    }
}

/// Whether a thread holds the lock.
#[inline]
pub(crate) fn is_locked(words: &MutexWords) -> bool {
    words.lock.is_locked()
}

/// Whether the calling thread holds the lock.
pub(crate) fn held_by_me(words: &MutexWords) -> bool {
    words.lock.held_by_me() && sys::thread_identity() != 0
}
