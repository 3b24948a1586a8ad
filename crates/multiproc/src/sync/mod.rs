//! Synchronisation across processes.

pub(crate) mod barrier;
pub(crate) mod condition;
mod error;
pub(crate) mod event;
pub(crate) mod leaked;
pub(crate) mod lock;
pub(crate) mod mutex;
pub(crate) mod raw;
pub(crate) mod semaphore;
pub(crate) mod unpoisoned;
pub(crate) mod value;

pub use error::{BarrierError, LockResult, OverRelease, OwnerDied, TryLockError, TryLockResult};
