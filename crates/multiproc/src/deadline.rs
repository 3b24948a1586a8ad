//! How long a blocking operation may wait: every one has a plain, `try_` and `_timeout`
//! form, and they all come down to a [`Deadline`].

use std::time::{Duration, Instant};

/// How long an operation may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// Not at all: the deadline is now.
    Now,
    /// Until then.
    At(Instant),
    /// As long as it takes.
    Never,
}

impl Deadline {
    /// From a timeout; one too long to represent waits a century (see [`later`]). It is
    /// never `Never`: a timed wait stays one (a `lock_timeout` by the thread that holds
    /// a lock returns at once, where the untimed `lock` would wait for ever).
    pub(crate) fn after(t: Duration) -> Self {
        Deadline::At(later(t))
    }

    /// The deadline as an instant: now for `Now`, none for `Never`.
    pub(crate) fn instant(self) -> Option<Instant> {
        match self {
            Deadline::Now => Some(Instant::now()),
            Deadline::At(d) => Some(d),
            Deadline::Never => None,
        }
    }

    /// Whether the time to wait is over.
    pub(crate) fn passed(self) -> bool {
        match self {
            Deadline::Now => true,
            Deadline::At(d) => Instant::now() >= d,
            Deadline::Never => false,
        }
    }
}

/// The longest wait kept as asked: a century (the clock may not reach `Duration::MAX`).
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `wait` after `from`, or as long as the clock allows: a wait too long to add to the
/// clock (`Duration::MAX`, "never") is kept as a century, where `Instant + Duration`
/// would panic.
pub(crate) fn later_than(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait.min(FOREVER)).unwrap_or(from)
}

/// `wait` from now, as [`later_than`] says.
pub(crate) fn later(wait: Duration) -> Instant {
    later_than(Instant::now(), wait)
}
