//! [`Clock`]: where the scheduler reads the time, and [`ManualClock`], a clock that only
//! moves when told to (for tests of schedules that span hours or days).

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crate::sync::unpoisoned;
use chrono::{DateTime, Utc};

/// The longest the scheduler sleeps on the system clock before it looks at the time
/// again, so that a clock set forward or back is noticed within this.
const MAX_NAP: Duration = Duration::from_secs(1);

/// The time source of a [`Scheduler`](crate::sched::Scheduler): the system clock (the
/// default) or a [`ManualClock`].
#[derive(Clone, Default)]
pub struct Clock(Source);

#[derive(Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<Manual>),
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::system()"),
            Source::Manual(m) => write!(f, "ManualClock({})", unpoisoned::lock(&m.state).now),
        }
    }
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// The time now, by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Source::System => Utc::now(),
            Source::Manual(m) => unpoisoned::lock(&m.state).now,
        }
    }

    /// Has `signal` notified whenever this clock moves (a manual clock only).
    pub(crate) fn subscribe(&self, signal: &Arc<Notifier>) {
        if let Source::Manual(m) = &self.0 {
            unpoisoned::lock(&m.state)
                .signals
                .push(Arc::downgrade(signal));
        }
    }

    /// Sleeps until `until` by this clock (`None`: until notified), or until `signal`
    /// is notified, whichever comes first.
    pub(crate) fn sleep(&self, signal: &Notifier, until: Option<DateTime<Utc>>) {
        let nap = match (&self.0, until) {
            (Source::System, Some(t)) => (t - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            // Due already (the next pass of a backlog walked in passes): no nap, as by
            // the system's clock, unless it never comes (a manual clock moved to the
            // calendar's end would have the scheduler look again and again). A later
            // time comes only with a move of the clock, which notifies.
            (Source::Manual(m), Some(t))
                if !never_comes(t) && t <= unpoisoned::lock(&m.state).now =>
            {
                Duration::ZERO
            }
            _ => MAX_NAP,
        };
        signal.wait(nap.min(MAX_NAP));
    }
}

/// Whether `t` is the calendar's end, where a delay past what the calendar holds is put
/// (`engine::later`): a time that does not come, whatever a clock reads.
pub(super) fn never_comes(t: DateTime<Utc>) -> bool {
    t == DateTime::<Utc>::MAX_UTC
}

#[derive(Debug)]
struct Manual {
    state: Mutex<ManualState>,
}

#[derive(Debug)]
struct ManualState {
    now: DateTime<Utc>,
    signals: Vec<Weak<Notifier>>,
}

/// A clock that stands still until [`advance`](Self::advance) or [`set`](Self::set)
/// moves it: a scheduler on it fires a month of jobs in milliseconds, so schedule
/// arithmetic (drift, daylight-saving changes, misfires) can be tested without waiting.
///
/// Clones share one time. Give a clone to
/// [`SchedulerBuilder::clock`](crate::sched::SchedulerBuilder::clock).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::sched::{Clock, ManualClock};
/// use multiproc::chrono::{TimeZone, Utc};
///
/// let manual = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 8, 6, 0, 0).unwrap());
/// let clock = Clock::from(manual.clone());
/// manual.advance(Duration::from_secs(90));
/// assert_eq!(clock.now(), Utc.with_ymd_and_hms(2026, 3, 8, 6, 1, 30).unwrap());
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Manual>);

impl ManualClock {
    /// A clock that reads `start` until moved.
    pub fn new(start: impl Into<DateTime<Utc>>) -> ManualClock {
        ManualClock(Arc::new(Manual {
            state: Mutex::new(ManualState {
                now: start.into(),
                signals: Vec::new(),
            }),
        }))
    }

    /// The time it reads.
    pub fn now(&self) -> DateTime<Utc> {
        unpoisoned::lock(&self.0.state).now
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.update(|now| {
            now.checked_add_signed(by)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
    }

    /// Sets the clock to `to` (backwards too, like a wall clock being corrected).
    pub fn set(&self, to: impl Into<DateTime<Utc>>) {
        let to = to.into();
        self.update(|_| to);
    }

    fn update(&self, f: impl FnOnce(DateTime<Utc>) -> DateTime<Utc>) {
        let signals: Vec<Arc<Notifier>> = {
            let mut st = unpoisoned::lock(&self.0.state);
            st.now = f(st.now);
            st.signals.retain(|s| s.strong_count() > 0);
            st.signals.iter().filter_map(Weak::upgrade).collect()
        };
        for s in signals {
            s.notify();
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Clock {
        Clock(Source::Manual(manual.0))
    }
}

/// A wake-up call: set by whoever has news for a sleeping loop, consumed by the loop.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Notifier {
    pub(crate) fn notify(&self) {
        *unpoisoned::lock(&self.set) = true;
        self.cv.notify_all();
    }

    /// Waits at most `timeout` for a notification, and consumes it.
    pub(crate) fn wait(&self, timeout: Duration) {
        let mut set = unpoisoned::lock(&self.set);
        if !*set {
            set = unpoisoned::wait_timeout(&self.cv, set, timeout);
        }
        *set = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A sleep until a time a manual clock has passed already returns at once, as by the
    /// system's clock (it napped a whole second: a background scheduler on a manual
    /// clock moved far ahead took a second for each pass of its backlog after the
    /// first). One until a later time waits for a move of the clock.
    #[test]
    fn a_manual_clock_does_not_nap_past_a_due_time() {
        let start = Utc.with_ymd_and_hms(2026, 3, 8, 6, 0, 0).unwrap();
        let manual = ManualClock::new(start);
        let clock = Clock::from(manual.clone());
        let signal = Arc::new(Notifier::default());
        clock.subscribe(&signal);
        let began = std::time::Instant::now();
        clock.sleep(&signal, Some(start));
        clock.sleep(&signal, Some(start - chrono::Duration::seconds(1)));
        let took = began.elapsed();
        assert!(took < Duration::from_millis(500), "napped {took:?}");
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                manual.advance(Duration::from_secs(60));
            });
            let began = std::time::Instant::now();
            clock.sleep(&signal, Some(start + chrono::Duration::seconds(60)));
            let took = began.elapsed();
            assert!(took >= Duration::from_millis(100), "woke after {took:?}");
        });
        // The calendar's end, where a delay past it lands, never comes: a clock moved
        // there waits for a move (the scheduler looked again at once, for ever).
        manual.set(DateTime::<Utc>::MAX_UTC);
        // The set's own notification, taken.
        signal.wait(Duration::ZERO);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                manual.set(start);
            });
            let began = std::time::Instant::now();
            clock.sleep(&signal, Some(DateTime::<Utc>::MAX_UTC));
            let took = began.elapsed();
            assert!(took >= Duration::from_millis(100), "woke after {took:?}");
        });
    }
}
