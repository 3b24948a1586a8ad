//! Shared memory, raw: segments (anonymous and named), the layout of every shared
//! structure (the channel ring's included), shared objects, typed copies, and `SharedMemory`.

mod error;
pub(crate) mod layout;
pub(crate) mod named;
pub(crate) mod object;
pub(crate) mod segment;
pub(crate) mod shared;
pub(crate) mod typed;

pub use error::{OutOfBounds, ShmError};
