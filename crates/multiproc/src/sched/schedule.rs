//! [`Schedule`]: when a job fires. Fire times come from the schedule alone (an interval
//! counted from a fixed start, a cron expression in a time zone, one instant), never from
//! when the previous run happened, so a schedule does not drift.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::ScheduleError;

/// When a job fires: every period, on a cron expression in a time zone, or once.
///
/// # Daylight-saving time
///
/// A cron expression names wall-clock times in its zone. When clocks jump forward, a
/// time that does not exist that day fires at the first instant after the jump if the
/// expression names one fixed time of day, a single value in each of its second,
/// minute and hour fields (`30 2 * * *` fires at 03:00 on that day), and not at all
/// otherwise, with no event for it (`*/15 * * * *` has no 02:15 that day, nor do
/// `30 2,14 * * *` and `0,30 2 * * *` any 02:xx: a list of values counts as repeating).
/// When clocks fall back, a wall-clock time that happens twice fires once, at its first
/// occurrence: a repeating expression skips the hour's second pass (an hourly job has
/// two hours between runs there, one every 15 minutes 75 minutes). An interval (`every`)
/// counts real time and ignores the zone.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::sched::Schedule;
///
/// let _ = Schedule::every(Duration::from_secs(10));
/// let _ = Schedule::cron_in("0 9 * * MON-FRI", "Europe/Berlin").unwrap();
/// assert!(Schedule::cron("61 * * * *").is_err());
/// assert!(Schedule::cron_in("0 9 * * *", "Mars/Olympus_Mons").is_err());
/// ```
#[derive(Clone)]
pub struct Schedule(pub(crate) Kind);

#[derive(Clone)]
pub(crate) enum Kind {
    Every {
        period: Duration,
        start: Option<DateTime<Utc>>,
    },
    Cron {
        cron: Arc<Cron>,
        tz: Tz,
        expr: String,
    },
    Once(DateTime<Utc>),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Every {
                period,
                start: None,
            } => write!(f, "every {period:?}"),
            Kind::Every {
                period,
                start: Some(s),
            } => write!(f, "every {period:?} from {}", s.to_rfc3339()),
            Kind::Cron { expr, tz, .. } => write!(f, "cron {expr:?} in {tz}"),
            Kind::Once(at) => write!(f, "once at {}", at.to_rfc3339()),
        }
    }
}

impl Schedule {
    /// The shortest period [`every`](Self::every) accepts: one millisecond.
    pub const MIN_PERIOD: Duration = Duration::from_millis(1);

    /// Every `period`, counted from when the job is added (first fire one period later),
    /// or from [`starting_at`](Self::starting_at). A period shorter than
    /// [`MIN_PERIOD`](Self::MIN_PERIOD) is refused when the job is added.
    pub fn every(period: Duration) -> Schedule {
        Schedule(Kind::Every {
            period,
            start: None,
        })
    }

    /// For [`every`](Self::every): fire at `start`, then every period after it.
    /// Other schedules are returned unchanged.
    ///
    /// A start already past when the job is added makes the times since then late runs,
    /// as for [`once`](Self::once): those within the job's
    /// [`misfire_grace`](crate::sched::Job::misfire_grace) (one period unless set) run
    /// at once, coalesced as the job says, and the older ones are reported
    /// [`Missed`](crate::sched::EventKind::Missed) (`TooLate`), all in one event. (Python's
    /// APScheduler skips them without a word.) To start on the grid without them, give
    /// a start that is not past.
    pub fn starting_at(self, start: impl Into<DateTime<Utc>>) -> Schedule {
        match self.0 {
            Kind::Every { period, .. } => Schedule(Kind::Every {
                period,
                start: Some(start.into()),
            }),
            other => Schedule(other),
        }
    }

    /// On a cron expression, in UTC: five fields (minute hour day-of-month month
    /// day-of-week) or six (seconds first), with names (`MON`, `JAN`), ranges, lists,
    /// steps, `L`, `#` and `W` as [`croner`] reads them.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Cron`] for an expression croner cannot parse.
    pub fn cron(expr: &str) -> Result<Schedule, ScheduleError> {
        Schedule::cron_tz(expr, Tz::UTC)
    }

    /// On a cron expression in an IANA time zone such as `"America/New_York"`; see
    /// [`cron`](Self::cron) and the daylight-saving rules above.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Cron`] for a bad expression, [`ScheduleError::TimeZone`] for a
    /// zone that is not in the IANA database.
    pub fn cron_in(expr: &str, time_zone: &str) -> Result<Schedule, ScheduleError> {
        let tz =
            Tz::from_str(time_zone).map_err(|_| ScheduleError::TimeZone(time_zone.to_string()))?;
        Schedule::cron_tz(expr, tz)
    }

    fn cron_tz(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let cron = Cron::from_str(expr).map_err(|e| ScheduleError::Cron {
            expr: expr.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Schedule(Kind::Cron {
            cron: Arc::new(cron),
            tz,
            expr: expr.to_string(),
        }))
    }

    /// Once, at `at`. A time already past when the job is added is a late run: it runs
    /// at once, unless the job's [`misfire_grace`](crate::sched::Job::misfire_grace) is
    /// shorter than how late it is, and then it is reported missed.
    pub fn once(at: impl Into<DateTime<Utc>>) -> Schedule {
        Schedule(Kind::Once(at.into()))
    }

    /// Checks what can only be checked when the job is added, and fixes the start of an
    /// interval that has none to `now`.
    pub(crate) fn resolve(&self, now: DateTime<Utc>) -> Result<Schedule, ScheduleError> {
        match &self.0 {
            Kind::Every { period, start } => {
                if *period < Schedule::MIN_PERIOD {
                    return Err(ScheduleError::IntervalTooShort {
                        period: *period,
                        min: Schedule::MIN_PERIOD,
                    });
                }
                let step = chrono::Duration::from_std(*period)
                    .map_err(|_| ScheduleError::IntervalTooLong(*period))?;
                let start = match start {
                    Some(s) => *s,
                    None => now
                        .checked_add_signed(step)
                        .ok_or(ScheduleError::IntervalTooLong(*period))?,
                };
                Ok(Schedule(Kind::Every {
                    period: *period,
                    start: Some(start),
                }))
            }
            // Whether a cron expression has a time left depends on where the job stands,
            // which a store may say (a time that came while the program was down): see
            // `refuse_if_spent`.
            Kind::Cron { .. } | Kind::Once(_) => Ok(self.clone()),
        }
    }

    /// Refuses a cron schedule with no fire time after `from` (where its job stands: the
    /// last time handled, or when it was added): `NeverFires`, such as February 30th, or
    /// a year gone by.
    pub(crate) fn refuse_if_spent(&self, from: DateTime<Utc>) -> Result<(), ScheduleError> {
        match &self.0 {
            Kind::Cron { .. } if self.next_after(from).is_none() => {
                Err(ScheduleError::NeverFires(self.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// The first fire time after `t` (strictly), or `None` when there is none. For a
    /// [`resolve`](Self::resolve)d schedule only; `Once` fires at its time however late.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.0 {
            Kind::Every { period, start } => {
                let start = (*start)?;
                if t < start {
                    return Some(start);
                }
                let step = nanos(chrono::Duration::from_std(*period).ok()?);
                let k = nanos(t - start) / step + 1;
                plus_nanos(start, k.checked_mul(step)?)
            }
            Kind::Cron { cron, tz, .. } => cron_next(cron, tz, t),
            Kind::Once(at) => (*at > t).then_some(*at),
        }
    }

    /// The fire times from `first` (a fire time) up to `now`, split into those too
    /// `late` to run (only counted: how many, and the last) and the others (listed, at
    /// most `cap` of them); and the fire time after what was taken. An interval is
    /// counted arithmetically, however many periods a long downtime spans; cron and
    /// once schedules are walked (at most one time per second), at most [`MAX_WALK`]
    /// times too late a call.
    pub(crate) fn dues(
        &self,
        first: DateTime<Utc>,
        now: DateTime<Utc>,
        late: Late,
        cap: usize,
    ) -> Dues {
        let mut dues = Dues {
            late: 0,
            last_late: None,
            runnable: Vec::new(),
            next: Some(first),
        };
        if first > now {
            return dues;
        }
        if let Kind::Every { period, .. } = &self.0
            && let Ok(step) = chrono::Duration::from_std(*period)
        {
            let late_before = match late {
                Late::Never => None,
                Late::Before(b) => Some(b),
                // Too late once the next time is due too: before now less a period.
                Late::OnceNextDue => now.checked_sub_signed(step),
            };
            let step = nanos(step);
            let at = |k: i128| plus_nanos(first, k.checked_mul(step)?);
            // Times first + k·step for k in 0..total are due.
            let total = nanos(now - first) / step + 1;
            let late = match late_before {
                Some(b) if b > first => ((nanos(b - first) + step - 1) / step).min(total),
                _ => 0,
            };
            let take = (total - late).min(cap as i128);
            dues.late = u64::try_from(late).unwrap_or(u64::MAX);
            dues.last_late = (late > 0).then(|| at(late - 1)).flatten();
            dues.runnable = (late..late + take).filter_map(at).collect();
            dues.next = at(late + take);
            return dues;
        }
        let mut next = Some(first);
        while let Some(t) = next {
            if t > now {
                break;
            }
            let after = self.next_after(t);
            let too_late = match late {
                Late::Never => false,
                Late::Before(b) => t < b,
                Late::OnceNextDue => after.is_some_and(|a| a < now),
            };
            if too_late {
                if dues.late == MAX_WALK {
                    // The rest in the passes after this one: `t` is the next.
                    break;
                }
                dues.late += 1;
                dues.last_late = Some(t);
            } else if dues.runnable.len() < cap {
                dues.runnable.push(t);
            } else {
                break;
            }
            next = after;
        }
        dues.next = next;
        dues
    }

    /// Where a `Once` schedule's only time is.
    pub(crate) fn once_at(&self) -> Option<DateTime<Utc>> {
        match &self.0 {
            Kind::Once(at) => Some(*at),
            _ => None,
        }
    }
}

/// The most times too late that one [`Schedule::dues`] walks through (a cron
/// schedule's; an interval's are counted at once): about 30 ms of the scheduler's time
/// (275 ns a time, a per-second expression in release), its state locked meanwhile. A
/// year away from a per-second job was 31.5 million steps in one pass, some 9 s during
/// which no other job fired and no call on the scheduler returned; it is now a pass per
/// 100,000 of them, each reported as it goes.
pub(crate) const MAX_WALK: u64 = 100_000;

/// Which due times are too late to run (see [`Schedule::dues`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Late {
    /// None.
    Never,
    /// Those before this instant: a grace that is the same for every time.
    Before(DateTime<Utc>),
    /// Those whose next fire time is due too: a grace of one period, which for a cron
    /// schedule differs from one time to the next (an expression that fires at 9:00
    /// and 17:00: eight hours, then sixteen).
    OnceNextDue,
}

/// What [`Schedule::dues`] found.
#[derive(Debug)]
pub(crate) struct Dues {
    /// How many due times were too late, and the last of them.
    pub(crate) late: u64,
    pub(crate) last_late: Option<DateTime<Utc>>,
    /// The others, in order.
    pub(crate) runnable: Vec<DateTime<Utc>>,
    /// The first fire time not taken.
    pub(crate) next: Option<DateTime<Utc>>,
}

impl Dues {
    /// Nothing due; the next fire time stays `next`.
    pub(crate) fn none(next: Option<DateTime<Utc>>) -> Dues {
        Dues {
            late: 0,
            last_late: None,
            runnable: Vec::new(),
            next,
        }
    }
}

fn nanos(d: chrono::Duration) -> i128 {
    i128::from(d.num_seconds()) * 1_000_000_000 + i128::from(d.subsec_nanos())
}

/// `t` plus `n` nanoseconds (which may be more than an `i64` of them holds: an
/// interval started over 292 years ago), or `None` past the calendar's end.
fn plus_nanos(t: DateTime<Utc>, n: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(n.div_euclid(1_000_000_000)).ok()?;
    let sub = n.rem_euclid(1_000_000_000) as i64;
    t.checked_add_signed(chrono::Duration::try_seconds(secs)?)?
        .checked_add_signed(chrono::Duration::nanoseconds(sub))
}

/// The first time after `t` that `cron` names in `tz`. croner resolves a wall-clock time
/// that happens twice to its first occurrence; from a `t` inside the second one that
/// can be at or before `t`, so the search moves on to the later occurrence, or past it.
fn cron_next(cron: &Cron, tz: &Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Within two days of the calendar's ends the wall-clock time may not exist in `tz`
    // (its offset past the last day), and croner reads it unchecked (a panic): no fire
    // time is there to find anyway, a year of searching short of the end.
    let margin = chrono::Duration::days(2);
    if t.checked_add_signed(margin).is_none() || t.checked_sub_signed(margin).is_none() {
        return None;
    }
    // Cron times are whole seconds: search from the second `t` is in (croner would keep
    // the fraction).
    let mut from = t.trunc_subsecs(0).with_timezone(tz);
    for _ in 0..10_000 {
        let found = cron.find_next_occurrence(&from, false).ok()?;
        let found_utc = found.with_timezone(&Utc);
        if found_utc > t {
            return Some(found_utc);
        }
        let later = tz.from_local_datetime(&found.naive_local()).latest()?;
        if later.with_timezone(&Utc) > t && cron.is_time_matching(&later).unwrap_or(false) {
            return Some(later.with_timezone(&Utc));
        }
        // Step to the next wall-clock second after the found one, in its later offset.
        let next_naive = found.naive_local() + chrono::Duration::seconds(1);
        from = tz
            .from_local_datetime(&next_naive)
            .latest()
            .unwrap_or_else(|| later + chrono::Duration::seconds(1));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A cron schedule looked at from the calendar's ends (a manual clock moved as far
    /// as it goes) has no next time, in any time zone (east of UTC at the end, west at
    /// the start, the local time does not exist: croner panicked reading it).
    #[test]
    fn cron_at_the_ends_of_the_calendar_has_no_next_time() {
        for (zone, t) in [
            ("Asia/Tokyo", DateTime::<Utc>::MAX_UTC),
            ("Pacific/Kiritimati", DateTime::<Utc>::MAX_UTC),
            ("America/Los_Angeles", DateTime::<Utc>::MIN_UTC),
            ("UTC", DateTime::<Utc>::MAX_UTC),
        ] {
            let schedule = Schedule::cron_in("0 9 * * *", zone).unwrap();
            assert_eq!(schedule.next_after(t), None, "{zone}");
            assert!(
                matches!(
                    schedule.refuse_if_spent(t),
                    Err(ScheduleError::NeverFires(_))
                ),
                "{zone}"
            );
        }
    }

    /// A cron schedule's downtime is walked [`MAX_WALK`] times too late a call at most,
    /// the next call going on from where the last stopped: two days of a per-second
    /// expression (172,800 times) take two calls, and between them every time is
    /// counted once.
    #[test]
    fn a_long_cron_downtime_is_walked_in_steps() {
        let s = Schedule::cron("* * * * * *").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 10, 30, 0).unwrap();
        let first = now - chrono::Duration::days(2) + chrono::Duration::seconds(1);
        let one = s.dues(first, now, Late::OnceNextDue, 8);
        assert_eq!(one.late, MAX_WALK);
        assert!(one.runnable.is_empty(), "{:?}", one.runnable);
        let resume = first + chrono::Duration::seconds(MAX_WALK as i64);
        assert_eq!(one.last_late, Some(resume - chrono::Duration::seconds(1)));
        assert_eq!(one.next, Some(resume));
        let two = s.dues(resume, now, Late::OnceNextDue, 8);
        // Too late: all but the last two (one is too late once the time after it has
        // passed).
        assert_eq!(one.late + two.late, 2 * 86_400 - 2);
        let second = chrono::Duration::seconds(1);
        assert_eq!(two.runnable, vec![now - second, now]);
        assert_eq!(two.next, Some(now + chrono::Duration::seconds(1)));
    }

    /// An interval started centuries ago (more nanoseconds than an `i64` holds) still
    /// has its next fire time on its grid, and its downtime's times are counted.
    #[test]
    fn an_interval_started_centuries_ago_keeps_firing() {
        let start = Utc.with_ymd_and_hms(1600, 1, 1, 0, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 10, 30, 0).unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let s = Schedule::every(hour)
            .starting_at(start)
            .resolve(now)
            .unwrap();
        let next = s.next_after(now).expect("a next fire time");
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 12, 4, 11, 0, 0).unwrap());
        let dues = s.dues(
            start,
            now,
            Late::Before(now - chrono::Duration::hours(2)),
            8,
        );
        let hours = (now - start).num_hours() as u64;
        assert_eq!(dues.late + dues.runnable.len() as u64, hours + 1);
        assert_eq!(dues.runnable.len(), 2, "{dues:?}");
        assert_eq!(dues.last_late, Some(now - chrono::Duration::minutes(150)));
        assert_eq!(dues.next, Some(next));
    }
}
