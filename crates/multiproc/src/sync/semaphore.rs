//! `Semaphore` and `BoundedSemaphore`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::OverRelease;
use super::lock::object_handle;
use super::raw::{RECHECK, wait_for};
use crate::deadline::Deadline;
use crate::shm::ShmError;
use crate::shm::layout::SemaphoreWords;
use crate::shm::object::{Kind, Object, Shape};
use crate::sys;

/// A counting semaphore shared by processes and threads: Python's `Semaphore`.
///
/// [`acquire`](Semaphore::acquire) takes a permit, waiting while there is none, and
/// returns a [`SemaphorePermit`] that gives it back when dropped;
/// [`release`](Semaphore::release) adds a permit, as Python's `release()` does, for
/// permits taken and then [`forget`](SemaphorePermit::forget)-ed.
///
/// Permits have no owner: a process that dies holding one does not give it back (as in
/// Python). Where a holder's death must not lose the permit, use a [`Lock`](crate::Lock).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let slots = multiproc::Semaphore::new(2)?;
/// let a = slots.acquire();
/// let b = slots.acquire();
/// assert!(slots.try_acquire().is_none());
/// drop(a);
/// assert!(slots.try_acquire().is_some());
/// # drop(b);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    obj: Arc<Object>,
}

object_handle!(Semaphore, Kind::Semaphore);

impl Semaphore {
    /// The most permits a semaphore can count.
    pub const MAX_PERMITS: u32 = i32::MAX as u32;

    /// A semaphore with `permits` permits.
    ///
    /// # Errors
    ///
    /// [`ShmError::InvalidArgument`] above [`MAX_PERMITS`](Self::MAX_PERMITS); or if the
    /// shared memory cannot be created.
    pub fn new(permits: u32) -> Result<Semaphore, ShmError> {
        Semaphore::with_bound(permits, Semaphore::MAX_PERMITS, Kind::Semaphore)
    }

    /// A semaphore of `permits` that counts up to `bound`, of `kind` (a bounded one's
    /// handle decodes only as a `BoundedSemaphore`, a plain one's only as a
    /// `Semaphore`: each would break the other's promise on releases past the start).
    fn with_bound(permits: u32, bound: u32, kind: Kind) -> Result<Semaphore, ShmError> {
        if permits > Semaphore::MAX_PERMITS {
            return Err(ShmError::InvalidArgument(format!(
                "a semaphore of {permits} permits (at most {})",
                Semaphore::MAX_PERMITS
            )));
        }
        let shape = Shape::plain(kind, std::mem::size_of::<SemaphoreWords>());
        let obj = Object::new(shape, |o| {
            let w: &SemaphoreWords = o.words();
            w.value.store(permits, SeqCst);
            w.bound.store(bound, SeqCst);
        })?;
        Ok(Semaphore { obj: Arc::new(obj) })
    }

    fn words(&self) -> &SemaphoreWords {
        self.obj.words()
    }

    /// Takes a permit, waiting as long as it takes.
    pub fn acquire(&self) -> SemaphorePermit<'_> {
        loop {
            if self.take(Deadline::Never) {
                return self.permit();
            }
        }
    }

    /// Takes a permit if one is available.
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        self.take(Deadline::Now).then(|| self.permit())
    }

    /// Takes a permit, waiting at most `timeout`; `None` if none came.
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphorePermit<'_>> {
        self.take(Deadline::after(timeout)).then(|| self.permit())
    }

    /// Adds a permit (waking a waiter). The count saturates at
    /// [`MAX_PERMITS`](Self::MAX_PERMITS).
    pub fn release(&self) {
        let _ = give(self.words());
    }

    /// Permits available now (others may take them at any moment).
    pub fn available_permits(&self) -> u32 {
        self.words().value.load(SeqCst)
    }

    fn permit(&self) -> SemaphorePermit<'_> {
        SemaphorePermit {
            words: self.words(),
        }
    }

    fn take(&self, wait: Deadline) -> bool {
        take(self.words(), wait)
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("available", &self.available_permits())
            .finish()
    }
}

/// A semaphore whose count may not rise above its initial value: Python's
/// `BoundedSemaphore`. Releasing more than was acquired is an [`OverRelease`] error:
/// [`release`](Self::release) returns it, and so does
/// [`SemaphorePermit::release`] (a permit given back by `release` already); a permit
/// dropped then, which cannot return it, leaves the count at the bound and logs it
/// (`tracing`, at error level).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sem = multiproc::BoundedSemaphore::new(1)?;
/// sem.acquire().forget();
/// sem.release()?;
/// assert!(sem.release().is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct BoundedSemaphore {
    inner: Semaphore,
}

impl serde::Serialize for BoundedSemaphore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.inner.obj.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let obj = crate::shm::object::Object::deserialize(
            d,
            Kind::BoundedSemaphore,
            crate::shm::object::Elem::NONE,
        )?;
        Ok(BoundedSemaphore {
            inner: Semaphore { obj: Arc::new(obj) },
        })
    }
}

impl BoundedSemaphore {
    /// A semaphore with `permits` permits, never more.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::new`].
    pub fn new(permits: u32) -> Result<BoundedSemaphore, ShmError> {
        Ok(BoundedSemaphore {
            inner: Semaphore::with_bound(permits, permits, Kind::BoundedSemaphore)?,
        })
    }

    /// Takes a permit, waiting as long as it takes.
    pub fn acquire(&self) -> SemaphorePermit<'_> {
        self.inner.acquire()
    }

    /// Takes a permit if one is available.
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        self.inner.try_acquire()
    }

    /// Takes a permit, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphorePermit<'_>> {
        self.inner.acquire_timeout(timeout)
    }

    /// Gives back a permit taken and forgotten.
    ///
    /// # Errors
    ///
    /// [`OverRelease`] if every permit is already available; nothing changes then.
    pub fn release(&self) -> Result<(), OverRelease> {
        give(self.inner.words())
    }

    /// Permits available now.
    pub fn available_permits(&self) -> u32 {
        self.inner.available_permits()
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphore")
            .field("available", &self.available_permits())
            .field("bound", &self.inner.words().bound.load(SeqCst))
            .finish()
    }
}

/// A permit taken from a [`Semaphore`] or [`BoundedSemaphore`]; given back when dropped.
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct SemaphorePermit<'a> {
    words: &'a SemaphoreWords,
}

impl SemaphorePermit<'_> {
    /// Keeps the permit taken: it comes back only through `release`.
    pub fn forget(self) {
        std::mem::forget(self);
    }

    /// Gives the permit back, as dropping it does, and says whether it could: a
    /// [`BoundedSemaphore`]'s permit finds every permit available if `release` was
    /// called for it already (Python's `ValueError` as the `with` block ends).
    ///
    /// # Errors
    ///
    /// [`OverRelease`] if the semaphore is at its bound (a plain [`Semaphore`]'s is
    /// [`MAX_PERMITS`](Semaphore::MAX_PERMITS)); nothing changes then.
    pub fn release(self) -> Result<(), OverRelease> {
        let words = self.words;
        std::mem::forget(self);
        give(words)
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        // At the bound only if `release` was called for this very permit already; the
        // count stays at the bound then, and the error, which a drop cannot return, is
        // said ([`SemaphorePermit::release`] returns it).
        if let Err(e) = give(self.words) {
            tracing::error!(
                "a semaphore's permit dropped at the semaphore's bound: {e} (release was called for a permit still held)"
            );
        }
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").finish_non_exhaustive()
    }
}

fn try_take(w: &SemaphoreWords) -> bool {
    let mut v = w.value.load(SeqCst);
    while v > 0 {
        match w.value.compare_exchange_weak(v, v - 1, SeqCst, SeqCst) {
            Ok(_) => return true,
            Err(now) => v = now,
        }
    }
    false
}

/// Takes a permit, waiting as `wait` says; whether it got one.
fn take(w: &SemaphoreWords, wait: Deadline) -> bool {
    // A release wakes one sleeper: one being killed may take the wake-up with it.
    wait_for(
        &w.value,
        0,
        &w.sleepers,
        wait.instant(),
        Some(RECHECK),
        || try_take(w),
    )
}

/// Adds a permit unless the count is at its bound; wakes a sleeper.
fn give(w: &SemaphoreWords) -> Result<(), OverRelease> {
    let bound = w.bound.load(SeqCst);
    let mut v = w.value.load(SeqCst);
    loop {
        if v >= bound {
            return Err(OverRelease { bound });
        }
        match w.value.compare_exchange_weak(v, v + 1, SeqCst, SeqCst) {
            Ok(_) => break,
            Err(now) => v = now,
        }
    }
    if w.sleepers.load(SeqCst) > 0 {
        sys::futex_wake(&w.value, 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::resend;

    /// A permit given back by `release` too finds the semaphore at its bound: its own
    /// release says so, its drop leaves the count there.
    #[test]
    fn a_permit_released_twice_is_an_over_release() {
        let s = BoundedSemaphore::new(1).unwrap();
        let p = s.acquire();
        s.release().unwrap();
        assert_eq!(p.release(), Err(OverRelease { bound: 1 }));
        assert_eq!(s.available_permits(), 1);
        let p = s.acquire();
        s.release().unwrap();
        drop(p);
        assert_eq!(s.available_permits(), 1);
        let p = s.acquire();
        assert_eq!(s.available_permits(), 0);
        assert_eq!(p.release(), Ok(()));
        assert_eq!(s.available_permits(), 1);
    }

    /// A plain semaphore's handle does not decode as a bounded one, nor the other way
    /// round: each would break the other's promise (a bounded one that let its count
    /// rise past its start, a plain one that dropped releases at a bound).
    #[test]
    fn a_handle_decodes_only_as_its_own_kind() {
        let plain = Semaphore::new(1).unwrap();
        let err = resend::<_, BoundedSemaphore>(&plain).unwrap_err();
        assert!(err.contains("Semaphore"), "{err}");
        let bounded = BoundedSemaphore::new(1).unwrap();
        let err = resend::<_, Semaphore>(&bounded).unwrap_err();
        assert!(err.contains("BoundedSemaphore"), "{err}");
        // Each as itself.
        let same: BoundedSemaphore = resend(&bounded).unwrap();
        same.acquire().forget();
        bounded.release().unwrap();
        assert!(same.release().is_err());
        let same: Semaphore = resend(&plain).unwrap();
        same.release();
        assert!(plain.try_acquire().is_some());
    }
}
