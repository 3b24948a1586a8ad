//! Shared memory.

mod error;
pub(crate) mod layout;
pub(crate) mod named;
pub(crate) mod object;
pub(crate) mod ring;
pub(crate) mod segment;
pub(crate) mod shared;
pub(crate) mod value;

pub use error::{OutOfBounds, ShmError};
