//! How long a blocking operation may wait: every one has a plain, `try_` and `_timeout`
//! form, and they all come down to this.

use std::time::{Duration, Instant};

/// How long an operation may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Not at all.
    No,
    /// Until then.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

impl Wait {
    /// From a timeout; one too long to represent waits as long as it takes.
    pub(crate) fn timeout(t: Duration) -> Self {
        Instant::now()
            .checked_add(t)
            .map_or(Wait::Forever, Wait::Until)
    }

    /// The deadline: now for `No`, none for `Forever`.
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Wait::No => Some(Instant::now()),
            Wait::Until(d) => Some(d),
            Wait::Forever => None,
        }
    }

    /// Whether the time to wait is over.
    pub(crate) fn passed(self) -> bool {
        match self {
            Wait::No => true,
            Wait::Until(d) => Instant::now() >= d,
            Wait::Forever => false,
        }
    }
}
