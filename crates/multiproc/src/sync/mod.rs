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

/// Waits once on `cv` with `guard` (until `deadline`, or as long as it takes; a wake-up
/// may be spurious), taking the lock over from a thread that panicked, as [`lock`]
/// does. `Err` with the guard, without waiting, once `deadline` has passed.
pub(crate) fn wait_on<'a, T>(
    cv: &std::sync::Condvar,
    guard: std::sync::MutexGuard<'a, T>,
    deadline: Option<std::time::Instant>,
) -> Result<std::sync::MutexGuard<'a, T>, std::sync::MutexGuard<'a, T>> {
    use std::sync::PoisonError;
    match deadline {
        None => Ok(cv.wait(guard).unwrap_or_else(PoisonError::into_inner)),
        Some(d) => {
            let left = d.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(guard);
            }
            Ok(cv
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0)
        }
    }
}
