//! Synchronisation across processes.

pub(crate) mod barrier;
pub(crate) mod condition;
pub(crate) mod event;
pub(crate) mod lock;
pub(crate) mod mutex;
pub(crate) mod raw;
pub(crate) mod semaphore;
