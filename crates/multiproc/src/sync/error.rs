//! What taking a lock, releasing a semaphore or waiting at a barrier can report.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The lock was taken from a process (or thread) that died holding it.
///
/// What the lock protects may be half-updated; the guard inside is valid and holds the
/// lock, so the new owner can repair the data (or not) and carry on. Only the next owner
/// is told: afterwards the lock works as before. The counterpart of `EOWNERDEAD` from a
/// robust `pthread` mutex, and of [`std::sync::PoisonError`].
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G) -> Self {
        OwnerDied { guard }
    }

    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// A reference to the guard.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// A mutable reference to the guard.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied").finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the previous owner of the lock died holding it")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// What taking a lock gives: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = Result<G, OwnerDied<G>>;

/// Why [`Lock::try_lock`](crate::Lock::try_lock) or
/// [`Lock::lock_timeout`](crate::Lock::lock_timeout) (and their kin) returned no plain
/// guard.
pub enum TryLockError<G> {
    /// The lock was taken, from an owner that died holding it.
    OwnerDied(OwnerDied<G>),
    /// Another thread holds the lock (and held it until the timeout, for the `_timeout`
    /// forms).
    WouldBlock,
}

impl<G> TryLockError<G> {
    /// Whether the lock was held by another thread.
    pub fn is_would_block(&self) -> bool {
        matches!(self, TryLockError::WouldBlock)
    }
}

impl<G> From<OwnerDied<G>> for TryLockError<G> {
    fn from(e: OwnerDied<G>) -> Self {
        TryLockError::OwnerDied(e)
    }
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::OwnerDied(e) => f.debug_tuple("OwnerDied").field(e).finish(),
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::OwnerDied(e) => e.fmt(f),
            TryLockError::WouldBlock => f.write_str("the lock is held by another thread"),
        }
    }
}

impl<G> std::error::Error for TryLockError<G> {}

/// What trying to take a lock gives.
pub type TryLockResult<G> = Result<G, TryLockError<G>>;

/// [`BoundedSemaphore::release`](crate::BoundedSemaphore::release) would raise the count
/// above its initial value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("semaphore released more times than acquired (its bound is {bound})")]
pub struct OverRelease {
    /// The initial (and highest) count.
    pub bound: u32,
}

/// Why [`Barrier::wait`](crate::Barrier::wait) returned without the barrier being
/// passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken: it was aborted or reset, a waiter timed out, or a party
    /// died. It stays broken until [`reset`](crate::Barrier::reset).
    #[error("the barrier is broken")]
    Broken,
    /// This wait timed out; the barrier is now broken for the others.
    #[error("timed out waiting at the barrier (which is now broken)")]
    Timeout,
    /// More distinct threads use the barrier than it has parties, and all of them live.
    #[error("more threads wait at the barrier than it has parties")]
    TooManyParties,
}
