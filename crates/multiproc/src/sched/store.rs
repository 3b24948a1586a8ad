//! [`JobStore`]: a SQLite file that keeps each job's schedule and last fire time, so a
//! restarted scheduler resumes where it stopped and two schedulers on one file never
//! fire the same (job, time) twice.
//!
//! Each fire time a scheduler takes for a run is a record, `claimed` by it (its owner:
//! this boot of the machine, its process's identity, and the store's number in the
//! process), then `started` just before its run is handed to the executor (or
//! `reported`, with its reason, just before it is reported missed), then `settled` once
//! the run ended or the report was out. A scheduler that adds a job takes over the
//! records of owners that are gone: times claimed and never started are due again; runs
//! started and never settled are reported interrupted; times reported and never settled
//! are reported again. Nothing started or reported is run again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::engine::{LateRange, Loaded, Mark, Orphans, Report};
use super::schedule::{Kind, Schedule};
use super::{MissReason, ScheduleError};
use crate::sync::unpoisoned;
use crate::sys;

/// The layout version this code writes (SQLite's `user_version`). Version 1 (no state
/// and no owner per fire record) is upgraded in place when opened.
const VERSION: i64 = 2;

/// How many settled fire records a job keeps (the unique key guards recent times; older
/// ones are behind every scheduler's last fire time anyway).
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
    state INTEGER NOT NULL DEFAULT 2,
    owner TEXT,
    first_ns INTEGER,
    count INTEGER,
    PRIMARY KEY (job, scheduled_ns)
);
";

/// From layout 1. Its records were handled as that version handled them (run, reported,
/// or lost with a killed process; it could not tell), so they are settled.
const UPGRADE_FROM_1: &str = "
ALTER TABLE fires ADD COLUMN state INTEGER NOT NULL DEFAULT 2;
ALTER TABLE fires ADD COLUMN owner TEXT;
ALTER TABLE fires ADD COLUMN first_ns INTEGER;
ALTER TABLE fires ADD COLUMN count INTEGER;
";

/// A fire record's state: taken by a scheduler, its run not handed to an executor yet.
const CLAIMED: i64 = 0;
/// Its run was handed to an executor; its outcome is not recorded yet.
const STARTED: i64 = 1;
/// Its run ended, or its report (missed, interrupted) is out: nothing more to do.
const SETTLED: i64 = 2;
/// About to be reported missed, too late (then settled once the report is out). A
/// record of times too late handled without a record each (a downtime) is at the last
/// of them, with the first (`first_ns`) and how many (`count`).
const REPORTED_TOO_LATE: i64 = 3;
/// About to be reported missed, coalesced.
const REPORTED_COALESCED: i64 = 4;
/// About to be reported missed, over `max_instances`.
const REPORTED_MAX_INSTANCES: i64 = 5;

impl Mark {
    fn state(self) -> i64 {
        match self {
            Mark::Started => STARTED,
            Mark::Reported(MissReason::TooLate) => REPORTED_TOO_LATE,
            Mark::Reported(MissReason::Coalesced) => REPORTED_COALESCED,
            Mark::Reported(MissReason::MaxInstances) => REPORTED_MAX_INSTANCES,
            // Never marked: a shutdown leaves its record as it was, for the next
            // scheduler on the store.
            Mark::Reported(MissReason::ShutDown) => CLAIMED,
            // Never marked: the removed job's records go with it.
            Mark::Reported(MissReason::Removed) => CLAIMED,
            Mark::Settled => SETTLED,
        }
    }
}

/// The stores open in this process, by number: an owner in this process is alive while
/// its store is open.
static OPEN: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

/// A new store's number, and its name for its claims: `MACHINE/BOOT/PROCESS/NUMBER`.
fn new_owner() -> (u64, String) {
    let number = NEXT_STORE.fetch_add(1, Ordering::Relaxed);
    unpoisoned::lock(&OPEN).push(number);
    let owner = format!(
        "{}/{}/{}/{number}",
        sys::machine_id(),
        sys::boot_id(),
        sys::process_identity()
    );
    (number, owner)
}

/// Whether the owner of a claim is gone: of another boot of this machine, a process
/// that ended, or a store of this process that was closed. An owner on another machine
/// (a file shared between machines) is never taken for gone: this machine cannot check
/// it. An owner that does not parse was not written by this code and counts as gone;
/// one without a machine (`BOOT/PROCESS/NUMBER`, as earlier versions wrote) is taken to
/// be of this machine. Where processes cannot be checked (not Linux), another process
/// counts as alive: its claims are never taken.
fn owner_gone(owner: &str) -> bool {
    owner_gone_on(owner, &sys::machine_id(), &sys::boot_id())
}

fn owner_gone_on(owner: &str, machine: &str, this_boot: &str) -> bool {
    let parts: Vec<&str> = owner.split('/').collect();
    let (owner_machine, boot, process, number) = match parts[..] {
        [m, b, p, n] => (m, b, p, n),
        [b, p, n] => (machine, b, p, n),
        _ => return true,
    };
    let (Ok(process), Ok(number)) = (process.parse::<u64>(), number.parse::<u64>()) else {
        return true;
    };
    if owner_machine != machine {
        return false;
    }
    if boot != this_boot {
        return true;
    }
    if process == sys::process_identity() {
        return !unpoisoned::lock(&OPEN).contains(&number);
    }
    !sys::identity_alive(process)
}

/// Whether `owner` is one this machine may take over once it is gone, as
/// [`owner_gone_on`] reads it: of this machine (`machine`); one without a machine, or
/// that does not parse, counts as this machine's.
fn of_this_machine(owner: &str, machine: &str) -> bool {
    match owner.split('/').collect::<Vec<_>>()[..] {
        [m, _, p, n] => m == machine || p.parse::<u64>().is_err() || n.parse::<u64>().is_err(),
        _ => true,
    }
}

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
/// A scheduler killed at any moment neither runs a time twice nor loses one silently.
/// Each fire time's record says how far it got: claimed, then started (written just
/// before its run is handed to the pool) or reported (written just before it is
/// reported [`Missed`](super::EventKind::Missed), with the reason; the times too late
/// after a downtime are one record, with the first time and the count), then settled
/// (the run ended, or the event was sent). The next scheduler that adds the job on the
/// same file, once the one that claimed them is gone (its process ended, or its store
/// was dropped: it lets them go as it drops), runs the times claimed but never started if they are within the job's
/// misfire grace (otherwise reports them missed as usual), reports the runs started
/// but never settled [`Interrupted`](super::EventKind::Interrupted) (they may or may
/// not have finished, and are not run again), and reports the reported times again.
/// A record is settled 100 ms after its event was sent, so a subscriber has the time to
/// take the event; a scheduler killed in between has the next one report the time
/// again (an event may be repeated, a run never). Liveness is checked on this machine
/// (process identity and boot id): share a store file between machines and a claim of
/// the other machine's scheduler is never taken over (but those it let go as its store
/// dropped, which any scheduler on the file takes). Schedulers sharing a file on one
/// machine must see one another's processes (one PID namespace): one in another
/// container would take the other's live claims for a dead owner's. A machine without a
/// machine id (`/etc/machine-id`, missing in many container images) is known by its
/// host name: a container made again under another host name counts as another
/// machine, and its predecessor's claims are never taken over.
///
/// A store that fails (locked by another process past its 10 s busy timeout, a full
/// disk) holds the times it could not record: they wait, are looked at again every
/// 100 ms, and run (or are reported missed, past their grace) once it answers.
///
/// The file's layout is version 2. A file of version 1 (multiproc before fire records
/// had a state) is upgraded in place when opened: its records count as settled, since
/// that version could not tell. A file of a later version is refused with
/// [`ScheduleError::Store`] rather than misread.
///
/// Jobs themselves (their functions) are code, not data: the program adds them again at
/// each start, and the store supplies where their schedules stand.
pub struct JobStore {
    conn: Connection,
    path: PathBuf,
    /// This store's number among those open in this process.
    number: u64,
    /// Whose claims this store's are.
    owner: String,
    /// The file was prepared: a store whose open failed has no claims to let go.
    ready: bool,
}

impl fmt::Debug for JobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobStore")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for JobStore {
    fn drop(&mut self) {
        // Its claims may be taken over by a store opened after it: one of this process
        // knows it from `OPEN`; for one of another, its records not settled are let go
        // under an owner that reads as gone (one that does not parse). Kept under its
        // own name, they stayed held for as long as this process lived: times it
        // claimed were neither run nor reported, its runs cut short never reported
        // interrupted.
        unpoisoned::lock(&OPEN).retain(|&n| n != self.number);
        if !self.ready {
            return;
        }
        let _ = self.conn.busy_timeout(RELEASE_WAIT);
        // Looked for first, without the file's write lock: most stores hold nothing
        // unsettled as they drop.
        let holds = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM fires WHERE owner = ?1 AND state <> ?2)",
            params![self.owner, SETTLED],
            |r| r.get::<_, bool>(0),
        );
        let released = format!("released {}", self.owner.replace('/', " "));
        let let_go = holds.and_then(|holds| {
            if !holds {
                return Ok(0);
            }
            self.conn.execute(
                "UPDATE fires SET owner = ?2 WHERE owner = ?1 AND state <> ?3",
                params![self.owner, released, SETTLED],
            )
        });
        if let Err(e) = let_go {
            tracing::warn!(
                "job store {}: its claims stay held until this process ends: {e}",
                self.path.display()
            );
        }
    }
}

/// How long a store being dropped waits for the file's lock to let its claims go.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

impl JobStore {
    /// Opens the store at `path`, creating it if there is no file. A store written by an
    /// earlier version of multiproc (layout 1) is upgraded in place: its fire records
    /// count as settled, and that version refuses the file from then on ("unknown
    /// layout version 2").
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Store`]: the file cannot be opened, is not a SQLite database
    /// (corrupt), is a database of something else, or was written by a later version of
    /// multiproc (an unknown layout version), each saying "not a job store"; or another
    /// process held it locked for longer than 10 s, or it cannot be written (each as
    /// SQLite says).
    pub fn open(path: impl AsRef<Path>) -> Result<JobStore, ScheduleError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path).map_err(store_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(store_err)?;
        let (number, owner) = new_owner();
        let mut store = JobStore {
            conn,
            path,
            number,
            owner,
            ready: false,
        };
        store.prepare()?;
        store.ready = true;
        Ok(store)
    }

    fn prepare(&mut self) -> Result<(), ScheduleError> {
        let path = self.path.display().to_string();
        let bad = |why: &str| ScheduleError::Store(format!("{path} is not a job store: {why}"));
        // Only a file that is not a database (or a corrupt one) is not a job store: a
        // store locked by another process past the busy timeout, or one that cannot be
        // written (a read-only file or mount), says so as it is (it said "not a job
        // store", and a good store could be thrown away as corrupt).
        let looked = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                bad(&e.to_string())
            }
            _ => ScheduleError::Store(format!("{path}: {e}")),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(looked)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(looked)?;
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(looked)?;
        // The tables and columns a layout's queries need are there.
        let check = |tx: &Transaction<'_>, columns: &str| {
            tx.query_row(
                &format!(
                    "SELECT count(*), {columns} FROM jobs JOIN fires ON fires.job = jobs.name"
                ),
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| bad(&e.to_string()))
        };
        match (version, tables) {
            (0, 0) => {
                tx.execute_batch(SCHEMA).map_err(store_err)?;
                tx.pragma_update(None, "user_version", VERSION)
                    .map_err(store_err)?;
            }
            (1, _) => {
                check(&tx, "max(scheduled_ns), max(last_fired_ns)")?;
                tx.execute_batch(UPGRADE_FROM_1).map_err(store_err)?;
                tx.pragma_update(None, "user_version", VERSION)
                    .map_err(store_err)?;
            }
            (VERSION, _) => {
                check(&tx, "max(state), max(owner), max(first_ns), max(count)")?;
            }
            (0, _) => return Err(bad("it holds other tables")),
            (v, _) => {
                return Err(bad(&format!(
                    "unknown layout version {v} (written by a later version of multiproc?)"
                )));
            }
        }
        tx.commit().map_err(store_err)
    }

    /// Where job `name` stands: its schedule (an interval keeps its stored start), the
    /// last fire time handled, and the records of schedulers that are gone, now this
    /// store's (see [`Orphans`]); records `fresh` if the store does not know the job
    /// under the schedule `key`. A changed schedule starts afresh: its old records are
    /// deleted, once the runs started under it and the reports made under it that were
    /// never settled are taken (to be reported); times claimed under it and never
    /// started go with it. Those of other schedulers that are not gone stay theirs.
    pub(super) fn load(
        &mut self,
        name: &str,
        key: &str,
        fresh: Schedule,
        now: DateTime<Utc>,
    ) -> Result<Loaded, ScheduleError> {
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
        let orphans = take_orphans(&tx, name, &self.owner)?;
        let result = match row {
            Some((stored, start, last)) if stored == key => {
                let schedule = match (fresh.0, start) {
                    (Kind::Every { period, .. }, Some(start)) => Schedule(Kind::Every {
                        period,
                        start: Some(from_ns(start)),
                    }),
                    (kind, _) => Schedule(kind),
                };
                Loaded {
                    schedule,
                    last: last.map(from_ns),
                    // A job stored by an earlier version has no start unless it is an
                    // interval: it is due from now, as it was then.
                    since: start.map_or(now, from_ns),
                    orphans,
                }
            }
            _ => {
                // An interval's start; for other jobs, when they were added, which a
                // restart before their first fire time resumes from.
                let start = match &fresh.0 {
                    Kind::Every { start: Some(s), .. } => to_ns(*s)?,
                    _ => to_ns(now)?,
                };
                tx.execute(
                    "INSERT INTO jobs (name, schedule, start_ns, last_fired_ns)
                     VALUES (?1, ?2, ?3, NULL)
                     ON CONFLICT (name) DO UPDATE
                     SET schedule = ?2, start_ns = ?3, last_fired_ns = NULL",
                    params![name, key, start],
                )
                .map_err(store_err)?;
                delete_fires_but_others_open(&tx, name, &self.owner)?;
                Loaded {
                    schedule: fresh,
                    last: None,
                    since: now,
                    orphans: Orphans {
                        unstarted: Vec::new(),
                        ..orphans
                    },
                }
            }
        };
        // Refused before anything is recorded (the transaction is rolled back): a cron
        // job with no time left from where it stands, and nothing a gone scheduler
        // left of it to handle (a time it claimed and never started, a run it started,
        // a report it made: those are handled, and the job is refused at the next
        // start). One whose last time came while the program was down still has that
        // time to handle.
        if result.orphans.is_empty() {
            result
                .schedule
                .refuse_if_spent(result.last.unwrap_or(result.since))?;
        }
        tx.commit().map_err(store_err)?;
        Ok(result)
    }

    /// Takes over the records of jobs `names` whose owners are gone (see
    /// [`Orphans`]), in one transaction; the jobs that had any, with them.
    pub(super) fn adopt(
        &mut self,
        names: &[String],
    ) -> Result<Vec<(String, Orphans)>, ScheduleError> {
        // Looked for first without taking the file's write lock (that every scheduler
        // sharing the file would take every few seconds), which is taken only when a
        // gone owner left something.
        let owners: Vec<(String, String)> = {
            let mut query = self
                .conn
                .prepare_cached(
                    "SELECT DISTINCT job, owner FROM fires WHERE state <> ?1 AND owner IS NOT ?2",
                )
                .map_err(store_err)?;
            query
                .query_map(params![SETTLED, self.owner], |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    ))
                })
                .map_err(store_err)?
                .collect::<Result<_, _>>()
                .map_err(store_err)?
        };
        if !owners
            .iter()
            .any(|(job, owner)| names.contains(job) && owner_gone(owner))
        {
            return Ok(Vec::new());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let mut adopted = Vec::new();
        for name in names {
            let orphans = take_orphans(&tx, name, &self.owner)?;
            if !(orphans.unstarted.is_empty()
                && orphans.interrupted.is_empty()
                && orphans.reported.is_empty())
            {
                adopted.push((name.clone(), orphans));
            }
        }
        tx.commit().map_err(store_err)?;
        Ok(adopted)
    }

    /// Whether another owner that this store could take over once it is gone (one of
    /// this machine: see [`owner_gone`]) holds a fire record of job `name` not settled
    /// yet (claimed, started, or reported).
    pub(super) fn held_elsewhere(&self, name: &str) -> Result<bool, ScheduleError> {
        let mut query = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT owner FROM fires WHERE job = ?1 AND state <> ?2 AND owner IS NOT ?3",
            )
            .map_err(store_err)?;
        let owners = query
            .query_map(params![name, SETTLED, self.owner], |r| {
                r.get::<_, Option<String>>(0)
            })
            .map_err(store_err)?;
        let machine = sys::machine_id();
        for owner in owners {
            if owner
                .map_err(store_err)?
                .is_none_or(|o| of_this_machine(&o, &machine))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Forgets job `name` (it was removed): its row and its fire records, but the
    /// records of runs that other schedulers on the store started and have not
    /// settled, which they still settle (or a scheduler after them reports).
    pub(super) fn forget(&mut self, name: &str) -> Result<(), ScheduleError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        tx.execute("DELETE FROM jobs WHERE name = ?1", params![name])
            .map_err(store_err)?;
        delete_fires_but_others_open(&tx, name, &self.owner)?;
        tx.commit().map_err(store_err)
    }

    /// Moves the last fire time `name` handled to `through` (when it is earlier), in one
    /// `BEGIN IMMEDIATE` transaction. Fire times too late to run are handled this way,
    /// without a record each: a long downtime is one update. `range` says, from the last
    /// fire time handled before, which of them this store reports (the first, and how
    /// many): they are recorded, in the same transaction, as one record at `through`,
    /// reported (see [`REPORTED_TOO_LATE`]). Returns that range.
    pub(super) fn claim_through(
        &mut self,
        name: &str,
        through: DateTime<Utc>,
        range: LateRange<'_>,
    ) -> Result<Option<(DateTime<Utc>, u64)>, ScheduleError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let last = last_fired(&tx, name)?;
        let through_ns = to_ns(through)?;
        if last.is_some_and(|l| l >= through_ns) {
            // Another scheduler on the store handled them all.
            return Ok(None);
        }
        tx.execute(
            "UPDATE jobs SET last_fired_ns = ?2 WHERE name = ?1",
            params![name, through_ns],
        )
        .map_err(store_err)?;
        let reported = range(last.map(from_ns));
        if let Some((first, count)) = reported {
            tx.execute(
                "INSERT OR REPLACE INTO fires (job, scheduled_ns, state, owner, first_ns, count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name,
                    through_ns,
                    REPORTED_TOO_LATE,
                    self.owner,
                    to_ns(first)?,
                    i64::try_from(count).unwrap_or(i64::MAX)
                ],
            )
            .map_err(store_err)?;
        }
        tx.commit().map_err(store_err)?;
        Ok(reported)
    }

    /// Claims the fire times in `dues` (ascending) that no scheduler has handled: records
    /// each, claimed by this store, under the unique (job, time) key and moves the job's
    /// last fire time, in one transaction. Returns the claimed ones.
    pub(super) fn claim(
        &mut self,
        name: &str,
        dues: &[DateTime<Utc>],
    ) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let last = last_fired(&tx, name)?;
        let mut claimed = Vec::new();
        let mut newest = last;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO fires (job, scheduled_ns, state, owner)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(store_err)?;
            for &t in dues {
                let ns = to_ns(t)?;
                if last.is_some_and(|l| ns <= l) {
                    continue;
                }
                if insert
                    .execute(params![name, ns, CLAIMED, self.owner])
                    .map_err(store_err)?
                    == 1
                {
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
            "DELETE FROM fires WHERE job = ?1 AND state = ?3 AND scheduled_ns < (
                 SELECT scheduled_ns FROM fires WHERE job = ?1
                 ORDER BY scheduled_ns DESC LIMIT 1 OFFSET ?2)",
            params![name, KEEP_FIRES, SETTLED],
        )
        .map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(claimed)
    }

    /// Records how far the runs of this store's claims got, in one transaction: each
    /// `(job, time, mark)`.
    pub(super) fn mark(
        &mut self,
        marks: &[(String, DateTime<Utc>, Mark)],
    ) -> Result<(), ScheduleError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE fires SET state = ?3 WHERE job = ?1 AND scheduled_ns = ?2 AND owner = ?4",
                )
                .map_err(store_err)?;
            for (job, t, mark) in marks {
                update
                    .execute(params![job, to_ns(*t)?, mark.state(), self.owner])
                    .map_err(store_err)?;
            }
        }
        tx.commit().map_err(store_err)
    }
}

/// The last fire time job `name` handled, as nanoseconds.
fn last_fired(tx: &Transaction<'_>, name: &str) -> Result<Option<i64>, ScheduleError> {
    Ok(tx
        .query_row(
            "SELECT last_fired_ns FROM jobs WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()
        .map_err(store_err)?
        .flatten())
}

/// Deletes job `name`'s fire records but those other owners have not settled, which
/// they still settle, or a scheduler after them reports (those of gone owners are
/// taken over by the next scheduler that adds the job or looks for them). (A job added afresh deleted them too: a run another scheduler had
/// started was never reported if that one went, and a `once` job's time it held was
/// claimed and run again.)
fn delete_fires_but_others_open(
    tx: &Transaction<'_>,
    name: &str,
    owner: &str,
) -> Result<(), ScheduleError> {
    tx.execute(
        "DELETE FROM fires WHERE job = ?1 AND (state = ?2 OR owner IS ?3)",
        params![name, SETTLED, owner],
    )
    .map(drop)
    .map_err(store_err)
}

/// Takes over job `name`'s records whose owner is gone, for `owner`: returns them by
/// state, each list ascending.
fn take_orphans(tx: &Transaction<'_>, name: &str, owner: &str) -> Result<Orphans, ScheduleError> {
    type Row = (i64, i64, Option<String>, Option<i64>, Option<i64>);
    let open: Vec<Row> = {
        let mut query = tx
            .prepare_cached(
                "SELECT scheduled_ns, state, owner, first_ns, count FROM fires
                 WHERE job = ?1 AND state <> ?2 AND owner IS NOT ?3 ORDER BY scheduled_ns",
            )
            .map_err(store_err)?;
        query
            .query_map(params![name, SETTLED, owner], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(store_err)?
            .collect::<Result<_, _>>()
            .map_err(store_err)?
    };
    let mut gone: Vec<(String, bool)> = Vec::new();
    let mut orphans = Orphans::default();
    let mut take = tx
        .prepare_cached("UPDATE fires SET owner = ?3 WHERE job = ?1 AND scheduled_ns = ?2")
        .map_err(store_err)?;
    for (ns, state, by, first, count) in open {
        let by = by.unwrap_or_default();
        let is_gone = match gone.iter().find(|(o, _)| *o == by) {
            Some((_, g)) => *g,
            None => {
                let g = owner_gone(&by);
                gone.push((by, g));
                g
            }
        };
        if !is_gone {
            continue;
        }
        take.execute(params![name, ns, owner]).map_err(store_err)?;
        let t = from_ns(ns);
        let mut report = |reason| {
            let first = first.map_or(t, from_ns);
            let count = count.map_or(1, |c| u64::try_from(c).unwrap_or(0));
            orphans.reported.push(Report {
                first,
                last: t,
                count,
                reason,
            });
        };
        match state {
            CLAIMED => orphans.unstarted.push(t),
            REPORTED_TOO_LATE => report(MissReason::TooLate),
            REPORTED_COALESCED => report(MissReason::Coalesced),
            REPORTED_MAX_INSTANCES => report(MissReason::MaxInstances),
            // Started (or a state this code does not write): it may have run.
            _ => orphans.interrupted.push(t),
        }
    }
    Ok(orphans)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims are taken from owners gone on this machine only: another boot of it, a
    /// process that ended, a closed store of this process; never from another machine
    /// sharing the file, whatever its boot and processes.
    #[test]
    fn owners_on_another_machine_are_never_gone() {
        let (machine, boot) = ("m1", "b1");
        let me = sys::process_identity();
        let dead = u64::MAX;
        let gone = |owner: &str| owner_gone_on(owner, machine, boot);
        assert!(
            gone(&format!("m1/b0/{me}/1")),
            "another boot of this machine"
        );
        assert!(gone(&format!("m1/b1/{dead}/1")), "a process that ended");
        assert!(
            gone(&format!("m1/b1/{me}/{dead}")),
            "a store never opened here"
        );
        assert!(
            !gone(&format!("m2/b0/{me}/1")),
            "another machine, another boot"
        );
        assert!(
            !gone(&format!("m2/b1/{dead}/1")),
            "another machine's process"
        );
        // Written without a machine: this machine's.
        assert!(gone(&format!("b0/{me}/1")));
        assert!(gone(&format!("b1/{dead}/1")));
        assert!(gone("not an owner"));
        assert!(gone("m1/b1/x/1"));
        // Its own store, open: alive.
        let (number, owner) = new_owner();
        assert!(!owner_gone(&owner), "{owner}");
        unpoisoned::lock(&OPEN).retain(|&n| n != number);
        assert!(owner_gone(&owner), "{owner}, closed");
        // Owners whose records this machine could take over, once gone (those a
        // finished job is kept for): of this machine, or read as this machine's.
        for (owner, ours) in [
            ("m1/b0/1/1", true),
            ("m2/b1/1/1", false),
            ("b0/1/1", true),
            ("not an owner", true),
            ("m2/b1/x/1", true),
        ] {
            assert_eq!(of_this_machine(owner, machine), ours, "{owner}");
        }
    }
}
