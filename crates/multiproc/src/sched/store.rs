//! [`JobStore`]: a SQLite file that keeps each job's schedule and last fire time, so a
//! restarted scheduler resumes where it stopped and two schedulers on one file never
//! fire the same (job, time) twice.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::ScheduleError;
use super::schedule::{Kind, Schedule};

/// The layout version this code writes (SQLite's `user_version`).
const VERSION: i64 = 1;

/// How many fire records a job keeps (the unique key guards recent times; older ones are
/// behind every scheduler's last fire time anyway).
const KEEP_FIRES: i64 = 1_000;

const SCHEMA: &str = "
CREATE TABLE jobs (
    name TEXT PRIMARY KEY,
    schedule TEXT NOT NULL,
    start_ns INTEGER,
    last_fired_ns INTEGER
);
CREATE TABLE fires (
    job TEXT NOT NULL,
    scheduled_ns INTEGER NOT NULL,
    PRIMARY KEY (job, scheduled_ns)
);
";

fn store_err(e: rusqlite::Error) -> ScheduleError {
    ScheduleError::Store(e.to_string())
}

fn to_ns(t: DateTime<Utc>) -> Result<i64, ScheduleError> {
    t.timestamp_nanos_opt()
        .ok_or_else(|| ScheduleError::Store(format!("{t} is outside the years 1677-2262")))
}

fn from_ns(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

/// A SQLite job store (feature `sqlite`): give it to
/// [`SchedulerBuilder::store`](super::SchedulerBuilder::store).
///
/// It keeps, per job name, the schedule (in words) and the last fire time handled. When
/// a job is added under a name the store knows with the same schedule, the scheduler
/// resumes from the stored time: the runs due while the program was down are handled by
/// the job's misfire grace and coalesce policy (run or reported missed, never silently
/// dropped). A changed schedule starts afresh. Each fire time handled is recorded under
/// a unique (job, time) key in the same transaction that moves the job's last fire time,
/// so two schedulers sharing the file never both fire one (job, time).
///
/// Jobs themselves (their functions) are code, not data: the program adds them again at
/// each start, and the store supplies where their schedules stand.
pub struct JobStore {
    conn: Connection,
    path: PathBuf,
}

impl fmt::Debug for JobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobStore")
            .field("path", &self.path)
            .finish()
    }
}

impl JobStore {
    /// Opens the store at `path`, creating it if there is no file.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Store`]: the file cannot be opened, is not a SQLite database
    /// (corrupt), or is a database of something else.
    pub fn open(path: impl AsRef<Path>) -> Result<JobStore, ScheduleError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path).map_err(store_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(store_err)?;
        let mut store = JobStore { conn, path };
        store.prepare()?;
        Ok(store)
    }

    fn prepare(&mut self) -> Result<(), ScheduleError> {
        let bad = |why: &str| {
            ScheduleError::Store(format!("{} is not a job store: {why}", self.path.display()))
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| bad(&e.to_string()))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| bad(&e.to_string()))?;
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| bad(&e.to_string()))?;
        match (version, tables) {
            (0, 0) => {
                tx.execute_batch(SCHEMA).map_err(store_err)?;
                tx.pragma_update(None, "user_version", VERSION)
                    .map_err(store_err)?;
            }
            (VERSION, _) => {
                tx.query_row(
                    "SELECT count(*) FROM jobs JOIN fires ON fires.job = jobs.name",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| bad(&e.to_string()))?;
            }
            (0, _) => return Err(bad("it holds other tables")),
            (v, _) => return Err(bad(&format!("unknown layout version {v}"))),
        }
        tx.commit().map_err(store_err)
    }

    /// Where job `name` stands: its schedule (an interval keeps its stored start) and the
    /// last fire time handled; records `fresh` if the store does not know the job under
    /// the schedule `key`.
    pub(super) fn load(
        &mut self,
        name: &str,
        key: &str,
        fresh: Schedule,
    ) -> Result<(Schedule, Option<DateTime<Utc>>), ScheduleError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let row: Option<(String, Option<i64>, Option<i64>)> = tx
            .query_row(
                "SELECT schedule, start_ns, last_fired_ns FROM jobs WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(store_err)?;
        let result = match row {
            Some((stored, start, last)) if stored == key => {
                let schedule = match (fresh.0, start) {
                    (Kind::Every { period, .. }, Some(start)) => Schedule(Kind::Every {
                        period,
                        start: Some(from_ns(start)),
                    }),
                    (kind, _) => Schedule(kind),
                };
                (schedule, last.map(from_ns))
            }
            _ => {
                let start = match &fresh.0 {
                    Kind::Every { start: Some(s), .. } => Some(to_ns(*s)?),
                    _ => None,
                };
                tx.execute(
                    "INSERT INTO jobs (name, schedule, start_ns, last_fired_ns)
                     VALUES (?1, ?2, ?3, NULL)
                     ON CONFLICT (name) DO UPDATE
                     SET schedule = ?2, start_ns = ?3, last_fired_ns = NULL",
                    params![name, key, start],
                )
                .map_err(store_err)?;
                tx.execute("DELETE FROM fires WHERE job = ?1", params![name])
                    .map_err(store_err)?;
                (fresh, None)
            }
        };
        tx.commit().map_err(store_err)?;
        Ok(result)
    }

    /// Claims the fire times in `dues` (ascending) that no scheduler has handled: records
    /// each under the unique (job, time) key and moves the job's last fire time, in one
    /// transaction. Returns the claimed ones.
    /// Moves the last fire time `name` handled to `through` (when it is earlier), in one
    /// `BEGIN IMMEDIATE` transaction; returns what it was. Fire times too late to run
    /// are handled this way, without a row each: a long downtime is one update.
    pub(super) fn claim_through(
        &mut self,
        name: &str,
        through: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ScheduleError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT last_fired_ns FROM jobs WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(store_err)?
            .flatten();
        let through_ns = to_ns(through)?;
        if last.is_none_or(|l| l < through_ns) {
            tx.execute(
                "UPDATE jobs SET last_fired_ns = ?2 WHERE name = ?1",
                params![name, through_ns],
            )
            .map_err(store_err)?;
        }
        tx.commit().map_err(store_err)?;
        Ok(last.map(DateTime::from_timestamp_nanos))
    }

    pub(super) fn claim(
        &mut self,
        name: &str,
        dues: &[DateTime<Utc>],
    ) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT last_fired_ns FROM jobs WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(store_err)?
            .flatten();
        let mut claimed = Vec::new();
        let mut newest = last;
        {
            let mut insert = tx
                .prepare_cached("INSERT OR IGNORE INTO fires (job, scheduled_ns) VALUES (?1, ?2)")
                .map_err(store_err)?;
            for &t in dues {
                let ns = to_ns(t)?;
                if last.is_some_and(|l| ns <= l) {
                    continue;
                }
                if insert.execute(params![name, ns]).map_err(store_err)? == 1 {
                    claimed.push(t);
                }
                newest = Some(newest.map_or(ns, |n| n.max(ns)));
            }
        }
        tx.execute(
            "UPDATE jobs SET last_fired_ns = ?2 WHERE name = ?1",
            params![name, newest],
        )
        .map_err(store_err)?;
        tx.execute(
            "DELETE FROM fires WHERE job = ?1 AND scheduled_ns < (
                 SELECT scheduled_ns FROM fires WHERE job = ?1
                 ORDER BY scheduled_ns DESC LIMIT 1 OFFSET ?2)",
            params![name, KEEP_FIRES],
        )
        .map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(claimed)
    }
}
