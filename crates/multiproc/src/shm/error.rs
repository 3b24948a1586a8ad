//! Why a shared object or segment could not be made, opened or indexed.

use std::io;

use serde::{Deserialize, Serialize};

/// Why a shared object or segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// An argument is out of range (a `Barrier` of zero parties, a segment of zero bytes,
    /// an array too large for the address space, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A name that cannot name a shared-memory segment.
    #[error("invalid shared-memory name {name:?}: {why}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No segment has this name.
    #[error("no shared-memory segment named {0:?}")]
    NotFound(String),
    /// A segment with this name already exists.
    #[error("a shared-memory segment named {0:?} already exists")]
    AlreadyExists(String),
    /// The segment is not what was asked for: not made by multiproc, another kind of
    /// object, of another size than its header says, or holding another type.
    #[error("shared memory {what}: {why}")]
    Mismatch {
        /// Which segment.
        what: String,
        /// How it differs.
        why: String,
    },
    /// Shared memory is not available on this platform.
    #[error("unsupported on this platform: shared memory needs Linux")]
    Unsupported,
    /// The operating system refused (out of memory or descriptors, permissions).
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for ShmError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::Unsupported {
            ShmError::Unsupported
        } else {
            ShmError::Io(e)
        }
    }
}

/// An index or range outside an [`Array`](crate::Array).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("index {index} (+{count}) out of range for an array of {len}")]
pub struct OutOfBounds {
    /// The first index asked for.
    pub index: usize,
    /// How many elements from there.
    pub count: usize,
    /// The array's length.
    pub len: usize,
}

impl OutOfBounds {
    /// `Ok` if `count` elements from `index` fit in `len`.
    pub(crate) fn check(index: usize, count: usize, len: usize) -> Result<(), OutOfBounds> {
        if index.checked_add(count).is_some_and(|end| end <= len) {
            Ok(())
        } else {
            Err(OutOfBounds { index, count, len })
        }
    }
}
