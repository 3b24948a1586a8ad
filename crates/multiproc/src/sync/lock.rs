//! `Lock` and `RLock`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::mutex::{self, Held};
use super::{LockResult, TryLockResult};
use crate::deadline::Deadline;
use crate::shm::ShmError;
use crate::shm::layout::MutexWords;
use crate::shm::object::{Kind, Object, Shape};

/// Implements `Serialize` and `Deserialize` for a handle that is one shared object.
macro_rules! object_handle {
    ($ty:ident, $kind:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.obj.serialize(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let obj = $crate::shm::object::Object::deserialize(
                    d,
                    $kind,
                    $crate::shm::object::Elem::NONE,
                )?;
                Ok($ty {
                    obj: std::sync::Arc::new(obj),
                })
            }
        }
    };
}
pub(crate) use object_handle;

/// A lock shared by processes and threads: Python's `multiprocessing.Lock` and
/// `threading.Lock`, robust against owners that die holding it.
///
/// [`lock`](Lock::lock) returns a guard that releases the lock when dropped. If the
/// thread that held the lock died holding it (its process crashed, was killed, or the
/// thread ended without dropping the guard), the next `lock` returns the guard inside
/// [`OwnerDied`](crate::OwnerDied): the lock is held as usual, and what it protects may
/// be half-updated. Waiters never hang on a dead owner, with one exception: a thread
/// that ended while it had leaked (`mem::forget`) the guard of a [`Value`](crate::Value)
/// or [`Array`](crate::Array) keeps every lock it held, this one included, held for the
/// other threads of its process, for the life of the process (taking them over there
/// could make a second `&mut` of the data its leaked guard lends). An owner is a thread
/// known by its id and start time: a process that replaces its program (`exec`) while
/// one of its threads holds a guard keeps the lock held as long as the new program
/// runs, for the kernel gives the thread that execs the old main thread's id and start
/// time; drop the guard before an `exec`.
///
/// A handle is cheap to clone (clones are the same lock), and can be passed to
/// [`spawn`](crate::spawn) or sent through a pipe or queue: the receiving process gets
/// the same lock.
///
/// # Examples
///
/// ```no_run
/// use multiproc::Lock;
///
/// fn report(lock: Lock) {
///     let _held = lock.lock().unwrap_or_else(|died| died.into_inner());
///     println!("only one process prints at a time");
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _guard = multiproc::init();
/// let lock = Lock::new()?;
/// let children: Vec<_> = (0..3)
///     .map(|_| multiproc::spawn(report, lock.clone()))
///     .collect::<Result<_, _>>()?;
/// for child in children {
///     child.join()?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Lock {
    pub(crate) obj: Arc<Object>,
}

object_handle!(Lock, Kind::Lock);

impl Lock {
    /// A new lock, unlocked.
    ///
    /// # Errors
    ///
    /// If the shared memory for it cannot be created (out of memory or descriptors).
    pub fn new() -> Result<Lock, ShmError> {
        new_mutex(Kind::Lock).map(|obj| Lock { obj })
    }

    #[inline]
    pub(crate) fn words(&self) -> &MutexWords {
        self.obj.words()
    }

    #[inline]
    fn guard<'a>(&'a self, held: Held<'a>) -> LockGuard<'a> {
        LockGuard {
            held,
            lock: &self.obj,
        }
    }

    /// Takes the lock, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`OwnerDied`](crate::OwnerDied) (holding the guard) if the previous owner died
    /// holding the lock.
    ///
    /// # Panics
    ///
    /// If the calling thread holds the lock already: that would never end. Use
    /// [`RLock`] where a thread must take a lock again.
    #[inline]
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        mutex::lock(self.words(), false, |held| self.guard(held))
    }

    /// Takes the lock if it is free (or its owner died).
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`](crate::TryLockError::WouldBlock) if another thread
    /// (or this one) holds it; `OwnerDied` as for [`lock`](Self::lock).
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        mutex::try_lock(self.words(), false, Deadline::Now, |held| self.guard(held))
    }

    /// Takes the lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if it was still held when the timeout passed (at once if this
    /// thread holds it); `OwnerDied` as for [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        mutex::try_lock(self.words(), false, Deadline::after(timeout), |held| {
            self.guard(held)
        })
    }

    /// Whether some thread holds the lock (it may have died holding it).
    pub fn is_locked(&self) -> bool {
        mutex::is_locked(self.words())
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("locked", &self.is_locked())
            .finish()
    }
}

/// Proof that a [`Lock`] is held; dropping it releases the lock. It cannot be sent to
/// another thread: the lock belongs to the thread that took it.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    pub(crate) held: Held<'a>,
    /// The lock's object, to check which lock a guard holds.
    pub(crate) lock: &'a Object,
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

/// A re-entrant lock shared by processes and threads: the thread that holds it may take
/// it again, and it is released when every guard is dropped. Python's `RLock`.
///
/// Otherwise as [`Lock`]: robust against owners that die holding it, cheap to clone,
/// and usable from any process it is passed to.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let lock = multiproc::RLock::new()?;
/// let outer = lock.lock().unwrap_or_else(|died| died.into_inner());
/// let inner = lock.lock().unwrap_or_else(|died| died.into_inner());
/// drop(inner);
/// assert!(lock.is_locked());
/// drop(outer);
/// assert!(!lock.is_locked());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RLock {
    obj: Arc<Object>,
}

object_handle!(RLock, Kind::RLock);

impl RLock {
    /// A new re-entrant lock, unlocked.
    ///
    /// # Errors
    ///
    /// If the shared memory for it cannot be created.
    pub fn new() -> Result<RLock, ShmError> {
        new_mutex(Kind::RLock).map(|obj| RLock { obj })
    }

    #[inline]
    fn words(&self) -> &MutexWords {
        self.obj.words()
    }

    /// Takes the lock (once more, if this thread holds it), waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`OwnerDied`](crate::OwnerDied) (holding the guard) if the previous owner died
    /// holding the lock; the count of its holds is forgotten.
    ///
    /// # Panics
    ///
    /// If this thread holds it `u32::MAX` times already (guards forgotten, most
    /// likely): the count would overflow, as std's `ReentrantLock` says.
    #[inline]
    pub fn lock(&self) -> LockResult<RLockGuard<'_>> {
        mutex::lock(self.words(), true, RLockGuard::new)
    }

    /// Takes the lock if it is free, or held by this thread, or its owner died.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if another thread holds it (or this one, `u32::MAX` times already);
    /// `OwnerDied` as for [`lock`](Self::lock).
    pub fn try_lock(&self) -> TryLockResult<RLockGuard<'_>> {
        mutex::try_lock(self.words(), true, Deadline::Now, RLockGuard::new)
    }

    /// Takes the lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if another thread still held it when the timeout passed (or this
    /// one holds it `u32::MAX` times already); `OwnerDied` as for [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        mutex::try_lock(
            self.words(),
            true,
            Deadline::after(timeout),
            RLockGuard::new,
        )
    }

    /// Whether some thread holds the lock.
    pub fn is_locked(&self) -> bool {
        mutex::is_locked(self.words())
    }

    /// Whether the calling thread holds the lock.
    pub fn is_owned(&self) -> bool {
        mutex::held_by_me(self.words())
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("locked", &self.is_locked())
            .finish()
    }
}

/// One hold of an [`RLock`]; the lock is released when the last one is dropped.
#[must_use = "the hold ends as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    _held: Held<'a>,
}

impl<'a> RLockGuard<'a> {
    #[inline]
    fn new(held: Held<'a>) -> Self {
        RLockGuard { _held: held }
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}

/// The shared object of a lock.
pub(crate) fn new_mutex(kind: Kind) -> Result<Arc<Object>, ShmError> {
    let shape = Shape::plain(kind, std::mem::size_of::<MutexWords>());
    Ok(Arc::new(Object::new(shape, |_| {})?))
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use super::RLock;
    use crate::sync::error::TryLockError;

    #[test]
    fn an_rlock_held_u32_max_times_is_not_taken_again() {
        let l = RLock::new().unwrap();
        let outer = l.lock().unwrap();
        // As if this thread held it u32::MAX times.
        l.words().count.store(u32::MAX, Relaxed);
        assert!(matches!(l.try_lock(), Err(TryLockError::WouldBlock)));
        assert!(matches!(
            l.lock_timeout(Duration::ZERO),
            Err(TryLockError::WouldBlock)
        ));
        assert!(catch_unwind(AssertUnwindSafe(|| drop(l.lock()))).is_err());
        assert_eq!(l.words().count.load(Relaxed), u32::MAX);
        assert!(l.is_owned());
        l.words().count.store(1, Relaxed);
        drop(outer);
        assert!(!l.is_locked());
    }
}
