//! Synchronisation across processes.

pub(crate) mod barrier;
pub(crate) mod condition;
mod error;
pub(crate) mod event;
pub(crate) mod lock;
pub(crate) mod mutex;
pub(crate) mod raw;
pub(crate) mod semaphore;
pub(crate) mod value;

pub use error::{BarrierError, LockResult, OverRelease, OwnerDied, TryLockError, TryLockResult};

/// Locks a thread mutex, taking it over from a thread that panicked while holding it:
/// the state it guards is kept consistent by its users, and a panic elsewhere must not
/// take the pools, the scheduler or the supervisor down with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
