//! Shared memory.

pub(crate) mod layout;
pub(crate) mod ring;
pub(crate) mod segment;
