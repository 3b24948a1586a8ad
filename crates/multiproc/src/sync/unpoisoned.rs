//! std's thread locks, taken over from a thread that panicked while holding them: the
//! state they guard is kept consistent by its users, and a panic elsewhere (a user's
//! task, a subscriber's callback) must not take the pools, the scheduler, the
//! supervisor, the manager or the bootstrap down with it.

use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::{Duration, Instant};

/// Locks `m`.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `m` if no other thread holds it (`None` otherwise): for code that must not
/// wait (at an exit, in a forked child, where the holder may never let go).
pub(crate) fn try_lock<T: ?Sized>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Locks `rw` for reading.
pub(crate) fn read<T: ?Sized>(rw: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rw.read().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `rw` for writing.
pub(crate) fn write<T: ?Sized>(rw: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rw.write().unwrap_or_else(PoisonError::into_inner)
}

/// Waits once on `cv` with `guard` (a wake-up may be spurious).
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Waits once on `cv` with `guard`, at most `timeout`.
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, timeout)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

/// Waits once on `cv` with `guard`, until `deadline` or as long as it takes. `Err` with
/// the guard, without waiting, once `deadline` has passed.
pub(crate) fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> Result<MutexGuard<'a, T>, MutexGuard<'a, T>> {
    match deadline {
        None => Ok(wait(cv, guard)),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(guard);
            }
            Ok(wait_timeout(cv, guard, left))
        }
    }
}

/// Joins `thread`, unless it is the calling thread (an object dropped by its own
/// thread, the last reference going with a task, say): that one is detached, as joining
/// it would fail (`EDEADLK`, a panic in std). A panic in the joined thread is not
/// passed on.
pub(crate) fn join<T>(thread: std::thread::JoinHandle<T>) {
    if thread.thread().id() != std::thread::current().id() {
        let _ = thread.join();
    }
}
