//! Synchronisation across processes.

pub(crate) mod raw;
