//! The scheduler against a controllable clock: intervals without drift, cron across
//! daylight-saving changes in a real time zone, misfire and coalesce policies,
//! max_instances with a slow job, retries (a worker process that dies included), bad
//! input, and (feature `sqlite`) the job store across a restart, with two schedulers
//! racing, and corrupt.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, tempdir, trial};
use crossbeam_channel::Receiver;
use multiproc::chrono::{DateTime, TimeZone, Utc};
use multiproc::sched::{
    Coalesce, EventKind, Job, JobEvent, ManualClock, MissReason, Schedule, Scheduler,
};
use multiproc::{Pool, RetryPolicy, ScheduleError, TaskError, ThreadPool};

const T: Duration = Duration::from_secs(30);

fn main() {
    #[allow(unused_mut)]
    let mut tests = vec![
        trial("interval_without_drift", interval_without_drift),
        trial("cron_across_dst_spring_forward", cron_spring_forward),
        trial("cron_across_dst_fall_back", cron_fall_back),
        trial("misfire_and_coalesce_policies", misfire_and_coalesce),
        trial(
            "long_downtime_counted_at_once",
            long_downtime_counted_at_once,
        ),
        trial("max_instances_with_slow_job", max_instances_with_slow_job),
        trial("once_in_the_past", once_in_the_past),
        trial("jitter_delays_the_start_only", jitter_delays_the_start_only),
        trial("retry_after_panics", retry_after_panics),
        trial("retry_after_worker_died", retry_after_worker_died),
        trial("bad_input_clear_errors", bad_input_clear_errors),
        trial(
            "background_thread_follows_clock",
            background_thread_follows_clock,
        ),
        trial("remove_and_shutdown_wait", remove_and_shutdown_wait),
    ];
    #[cfg(feature = "sqlite")]
    tests.extend([
        trial("store_survives_restart", store::survives_restart),
        trial("store_two_schedulers_race", store::two_schedulers_race),
        trial("store_long_downtime", store::long_downtime_on_a_store),
        trial("store_corrupt_and_foreign", store::corrupt_and_foreign),
        trial(
            "store_changed_schedule_starts_afresh",
            store::changed_schedule,
        ),
    ]);
    common::main_checked(
        tests,
        |_| {},
        Duration::from_secs(300),
        common::no_new_dev_shm,
    );
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn at(n: i64) -> DateTime<Utc> {
    t0() + multiproc::chrono::Duration::seconds(n)
}

/// A scheduler on a manual clock at `t0`, fired by `run_pending` only.
fn manual() -> (Scheduler, ManualClock, Receiver<JobEvent>) {
    let clock = ManualClock::new(t0());
    let s = Scheduler::builder()
        .thread_pool(ThreadPool::new(2).unwrap())
        .clock(clock.clone())
        .build_manual();
    let events = s.events();
    (s, clock, events)
}

fn next(events: &Receiver<JobEvent>) -> JobEvent {
    events.recv_timeout(T).expect("an event within the timeout")
}

/// Everything pending handled, and the events it produced (run completions arrive from
/// pool threads: `settle` waits for `finishes` of them).
fn settle(s: &Scheduler, events: &Receiver<JobEvent>, finishes: usize) -> Vec<JobEvent> {
    let mut out = Vec::new();
    let done = eventually(T, || {
        s.run_pending();
        out.extend(events.try_iter());
        out.iter().filter(|e| is_end(e)).count() >= finishes
    });
    assert!(done, "runs did not finish: {out:?}");
    out
}

fn is_end(e: &JobEvent) -> bool {
    matches!(
        e.kind,
        EventKind::Succeeded { .. } | EventKind::Failed { retry_in: None, .. }
    )
}

fn started(events: &[JobEvent]) -> Vec<DateTime<Utc>> {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Started { .. }))
        .map(|e| e.scheduled)
        .collect()
}

fn missed(events: &[JobEvent]) -> Vec<(DateTime<Utc>, u64, DateTime<Utc>, MissReason)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Missed {
                count,
                last,
                reason,
            } => Some((e.scheduled, count, last, reason)),
            _ => None,
        })
        .collect()
}

fn interval_without_drift() {
    let (s, clock, events) = manual();
    s.add(Job::thread("tick", Schedule::every(secs(10)), || ()))
        .unwrap();
    assert_eq!(s.next_fire("tick"), Some(at(10)));
    clock.advance(secs(7));
    assert!(settle(&s, &events, 0).is_empty());
    // Uneven steps, late wake-ups: fire times stay on the 10 s grid.
    let mut fired = Vec::new();
    for step in [7, 13, 3, 9, 1, 10] {
        clock.advance(secs(step));
        let evs = settle(&s, &events, started_count_due(&s, &clock));
        fired.extend(started(&evs));
    }
    assert_eq!(fired, vec![at(10), at(20), at(30), at(40), at(50)]);
    assert_eq!(s.next_fire("tick"), Some(at(60)));
    // A thousand periods later, still on the grid, however late the wake-up.
    clock.set(at(10_004));
    let evs = settle(&s, &events, 1);
    assert_eq!(started(&evs), vec![at(10_000)]);
    assert_eq!(s.next_fire("tick"), Some(at(10_010)));
}

/// How many runs `run_pending` is about to start (at most one per job here).
fn started_count_due(s: &Scheduler, clock: &ManualClock) -> usize {
    s.jobs()
        .iter()
        .filter(|j| j.next_fire.is_some_and(|t| t <= clock.now()))
        .count()
}

/// Fires a cron job step by step from `from` and returns its fire times.
fn cron_fires(expr: &str, tz: &str, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let clock = ManualClock::new(from);
    let s = Scheduler::builder()
        .thread_pool(ThreadPool::new(1).unwrap())
        .clock(clock.clone())
        .build_manual();
    let events = s.events();
    s.add(Job::thread("cron", Schedule::cron_in(expr, tz).unwrap(), || ()).max_instances(1000))
        .unwrap();
    let mut fires = Vec::new();
    for _ in 0..n {
        let next = s.next_fire("cron").expect("a next fire time");
        clock.set(next);
        s.run_pending();
        let evs: Vec<_> = events.try_iter().collect();
        assert_eq!(started(&evs), vec![next], "events: {evs:?}");
        fires.push(next);
    }
    fires
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn cron_spring_forward() {
    // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT.
    let from = utc(2026, 3, 7, 12, 0);
    // A fixed time inside the skipped hour fires at the first instant after the jump.
    assert_eq!(
        cron_fires("30 2 * * *", "America/New_York", from, 3),
        vec![
            utc(2026, 3, 8, 7, 0),  // 03:00 EDT (02:30 does not exist)
            utc(2026, 3, 9, 6, 30), // 02:30 EDT
            utc(2026, 3, 10, 6, 30),
        ]
    );
    // A repeating expression has no times in the skipped hour.
    let from = utc(2026, 3, 8, 6, 10); // 01:10 EST
    assert_eq!(
        cron_fires("*/30 * * * *", "America/New_York", from, 3),
        vec![
            utc(2026, 3, 8, 6, 30), // 01:30 EST
            utc(2026, 3, 8, 7, 0),  // 03:00 EDT
            utc(2026, 3, 8, 7, 30), // 03:30 EDT
        ]
    );
}

fn cron_fall_back() {
    // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:xx happens twice.
    let from = utc(2026, 10, 31, 12, 0);
    assert_eq!(
        cron_fires("30 1 * * *", "America/New_York", from, 3),
        vec![
            utc(2026, 11, 1, 5, 30), // 01:30 EDT, once (not again at 01:30 EST)
            utc(2026, 11, 2, 6, 30), // 01:30 EST
            utc(2026, 11, 3, 6, 30),
        ]
    );
    let from = utc(2026, 11, 1, 3, 30); // 23:30 EDT
    assert_eq!(
        cron_fires("0 * * * *", "America/New_York", from, 4),
        vec![
            utc(2026, 11, 1, 4, 0), // 00:00 EDT
            utc(2026, 11, 1, 5, 0), // 01:00 EDT
            utc(2026, 11, 1, 7, 0), // 02:00 EST: 01:00 fires once
            utc(2026, 11, 1, 8, 0),
        ]
    );
    // UTC has no such changes: a six-field (seconds) expression.
    assert_eq!(
        cron_fires("*/20 * * * * *", "UTC", utc(2026, 11, 1, 1, 0), 3),
        vec![
            utc(2026, 11, 1, 1, 0) + multiproc::chrono::Duration::seconds(20),
            utc(2026, 11, 1, 1, 0) + multiproc::chrono::Duration::seconds(40),
            utc(2026, 11, 1, 1, 1),
        ]
    );
}

fn misfire_and_coalesce() {
    let (s, clock, events) = manual();
    let every = || Schedule::every(secs(10));
    let grace = secs(25);
    s.add(Job::thread("latest", every(), || ()).misfire_grace(grace))
        .unwrap();
    s.add(
        Job::thread("earliest", every(), || ())
            .misfire_grace(grace)
            .coalesce(Coalesce::Earliest),
    )
    .unwrap();
    s.add(
        Job::thread("all", every(), || ())
            .misfire_grace(grace)
            .coalesce(Coalesce::All),
    )
    .unwrap();
    s.add(
        Job::thread("all3", every(), || ())
            .misfire_grace(grace)
            .coalesce(Coalesce::All)
            .max_instances(3),
    )
    .unwrap();
    // Asleep for a minute: due at 10..60; 10, 20 and 30 are more than 25 s late.
    clock.set(at(60));
    let evs = settle(&s, &events, 1 + 1 + 1 + 3);
    let of =
        |job: &str| -> Vec<JobEvent> { evs.iter().filter(|e| e.job == job).cloned().collect() };
    let too_late = (at(10), 3, at(30), MissReason::TooLate);
    assert_eq!(started(&of("latest")), vec![at(60)]);
    assert_eq!(
        missed(&of("latest")),
        vec![too_late, (at(40), 2, at(50), MissReason::Coalesced)]
    );
    assert_eq!(started(&of("earliest")), vec![at(40)]);
    assert_eq!(
        missed(&of("earliest")),
        vec![too_late, (at(50), 2, at(60), MissReason::Coalesced)]
    );
    assert_eq!(started(&of("all")), vec![at(40)]);
    assert_eq!(
        missed(&of("all")),
        vec![too_late, (at(50), 2, at(60), MissReason::MaxInstances)]
    );
    assert_eq!(started(&of("all3")), vec![at(40), at(50), at(60)]);
    assert_eq!(missed(&of("all3")), vec![too_late]);
    // The default grace is one period: 11 s late is a miss, 9 s is not.
    s.add(Job::thread("default", Schedule::every(secs(10)), || ()))
        .unwrap(); // first fire at 70
    clock.set(at(81));
    let evs: Vec<_> = settle(&s, &events, 4)
        .into_iter()
        .filter(|e| e.job == "default")
        .collect();
    assert_eq!(started(&evs), vec![at(80)]);
    assert_eq!(missed(&evs), vec![(at(70), 1, at(70), MissReason::TooLate)]);
}

/// A 1 ms job after a day away: the 86.4 million missed times are one event with the
/// exact count (they are counted, not walked), and the next run is on the grid.
fn long_downtime_counted_at_once() {
    let (s, clock, events) = manual();
    let ms = |n: i64| t0() + multiproc::chrono::Duration::milliseconds(n);
    s.add(Job::thread(
        "fast",
        Schedule::every(Duration::from_millis(1)),
        || (),
    ))
    .unwrap();
    assert_eq!(s.next_fire("fast"), Some(ms(1)));
    // A day later, plus half a millisecond.
    clock.set(ms(86_400_000) + multiproc::chrono::Duration::microseconds(500));
    let evs = settle(&s, &events, 1);
    // Due: 1 ms ..= 86,400,000 ms. Within the grace (one period): the last one, which
    // runs; the 86,399,999 before it are missed, in one event.
    assert_eq!(
        missed(&evs),
        vec![(ms(1), 86_399_999, ms(86_399_999), MissReason::TooLate)]
    );
    assert_eq!(started(&evs), vec![ms(86_400_000)]);
    assert_eq!(s.next_fire("fast"), Some(ms(86_400_001)));
}

fn max_instances_with_slow_job() {
    let clock = ManualClock::new(t0());
    let s = Scheduler::builder()
        .thread_pool(ThreadPool::new(2).unwrap())
        .clock(clock.clone())
        .build()
        .unwrap();
    let events = s.events();
    let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    s.add(Job::thread("slow", Schedule::every(secs(10)), move || {
        counter.fetch_add(1, Ordering::SeqCst);
        release_rx.recv_timeout(T).expect("released");
    }))
    .unwrap();
    clock.set(at(10));
    let e = next(&events);
    assert!(matches!(e.kind, EventKind::Started { .. }) && e.scheduled == at(10));
    // Still running at the next fire time: that run is not started twice.
    clock.set(at(20));
    let e = next(&events);
    assert!(
        matches!(
            e.kind,
            EventKind::Missed {
                reason: MissReason::MaxInstances,
                count: 1,
                ..
            }
        ) && e.scheduled == at(20),
        "{e:?}"
    );
    assert_eq!(s.jobs()[0].running, 1);
    release_tx.send(()).unwrap();
    let e = next(&events);
    assert!(matches!(e.kind, EventKind::Succeeded { .. }) && e.scheduled == at(10));
    clock.set(at(30));
    let e = next(&events);
    assert!(matches!(e.kind, EventKind::Started { .. }) && e.scheduled == at(30));
    release_tx.send(()).unwrap();
    let e = next(&events);
    assert!(matches!(e.kind, EventKind::Succeeded { .. }));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    s.shutdown(true);
}

fn once_in_the_past() {
    let (s, _clock, events) = manual();
    // Late by 5 s: a once job has no period, so by default it runs however late.
    s.add(Job::thread("late", Schedule::once(at(-5)), || ()))
        .unwrap();
    // Late by a minute, with 10 s of grace: reported missed.
    s.add(Job::thread("too late", Schedule::once(at(-60)), || ()).misfire_grace(secs(10)))
        .unwrap();
    let evs = settle(&s, &events, 1);
    let late: Vec<_> = evs.iter().filter(|e| e.job == "late").cloned().collect();
    assert_eq!(started(&late), vec![at(-5)]);
    let too_late: Vec<_> = evs
        .iter()
        .filter(|e| e.job == "too late")
        .cloned()
        .collect();
    assert!(started(&too_late).is_empty());
    assert_eq!(
        missed(&too_late),
        vec![(at(-60), 1, at(-60), MissReason::TooLate)]
    );
    // Done: a once job leaves the scheduler after its run.
    s.run_pending();
    assert!(s.jobs().is_empty(), "{:?}", s.jobs());
}

fn jitter_delays_the_start_only() {
    let (s, clock, events) = manual();
    s.add(Job::thread("spread", Schedule::every(secs(100)), || ()).jitter(secs(50)))
        .unwrap();
    clock.set(at(100));
    s.run_pending();
    // Due, but waiting out its random delay: nothing started, the instance slot taken.
    assert!(started(&events.try_iter().collect::<Vec<_>>()).is_empty());
    assert_eq!(s.jobs()[0].running, 1);
    clock.set(at(150)); // the longest the jitter can be
    let evs = settle(&s, &events, 1);
    let start = evs
        .iter()
        .find(|e| matches!(e.kind, EventKind::Started { .. }))
        .expect("started after its jitter");
    assert_eq!(
        start.scheduled,
        at(100),
        "the scheduled time stays the schedule's"
    );
    assert_eq!(start.at, at(150));
    assert_eq!(s.next_fire("spread"), Some(at(200)));
}

fn retry_after_panics() {
    let (s, clock, events) = manual();
    let tries = Arc::new(AtomicU32::new(0));
    let t = Arc::clone(&tries);
    s.add(
        Job::thread("flaky", Schedule::every(secs(60)), move || {
            if t.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("not yet");
            }
        })
        .retry(
            RetryPolicy::attempts(3)
                .backoff(secs(1), 2.0, secs(10))
                .retry_if(|e| matches!(e, TaskError::Panicked(_))),
        ),
    )
    .unwrap();
    clock.set(at(60));
    let mut log = Vec::new();
    let wait_for = |log: &mut Vec<JobEvent>, want: fn(&EventKind) -> bool| {
        let hit = eventually(T, || {
            s.run_pending();
            while let Ok(e) = events.try_recv() {
                let hit = want(&e.kind);
                log.push(e);
                if hit {
                    return true;
                }
            }
            false
        });
        assert!(hit, "{log:?}");
    };
    wait_for(&mut log, |k| matches!(k, EventKind::Failed { .. }));
    clock.advance(secs(1));
    wait_for(&mut log, |k| matches!(k, EventKind::Failed { .. }));
    clock.advance(secs(1)); // the second delay is 2 s: not yet
    s.run_pending();
    assert!(events.try_iter().next().is_none());
    clock.advance(secs(1));
    wait_for(&mut log, |k| matches!(k, EventKind::Succeeded { .. }));
    let kinds: Vec<String> = log
        .iter()
        .map(|e| match &e.kind {
            EventKind::Started { attempt } => format!("start {attempt}"),
            EventKind::Failed {
                attempt, retry_in, ..
            } => format!("fail {attempt} {retry_in:?}"),
            EventKind::Succeeded { attempt } => format!("ok {attempt}"),
            EventKind::Missed { .. } => "missed".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "start 1",
            "fail 1 Some(1s)",
            "start 2",
            "fail 2 Some(2s)",
            "start 3",
            "ok 3"
        ]
    );
    assert!(log.iter().all(|e| e.scheduled == at(60)));
}

fn crash_once(flag: String) -> u32 {
    if std::fs::remove_file(&flag).is_ok() {
        std::process::abort();
    }
    7
}

fn retry_after_worker_died() {
    let dir = tempdir("retry");
    let flag = dir.join("crash").to_string_lossy().into_owned();
    std::fs::write(&flag, b"").unwrap();
    let clock = ManualClock::new(t0());
    let s = Scheduler::builder()
        .pool(Pool::new(1).unwrap())
        .clock(clock.clone())
        .build()
        .unwrap();
    let events = s.events();
    s.add(
        Job::process("crashy", Schedule::every(secs(10)), crash_once, flag)
            .retry(RetryPolicy::attempts(2).backoff(Duration::ZERO, 1.0, Duration::ZERO)),
    )
    .unwrap();
    clock.set(at(10));
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        kinds.push(next(&events).kind);
    }
    assert!(matches!(kinds[0], EventKind::Started { attempt: 1 }));
    match &kinds[1] {
        EventKind::Failed {
            attempt: 1,
            error,
            retry_in: Some(_),
        } => assert!(matches!(**error, TaskError::WorkerDied(_)), "{error}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(kinds[2], EventKind::Started { attempt: 2 }));
    assert!(matches!(kinds[3], EventKind::Succeeded { attempt: 2 }));
    s.shutdown(true);
    std::fs::remove_dir_all(dir).unwrap();
}

fn bad_input_clear_errors() {
    assert!(matches!(
        Schedule::cron("every tuesday"),
        Err(ScheduleError::Cron { .. })
    ));
    assert!(matches!(
        Schedule::cron("61 * * * *"),
        Err(ScheduleError::Cron { .. })
    ));
    assert!(matches!(
        Schedule::cron_in("0 9 * * *", "Mars/Olympus_Mons"),
        Err(ScheduleError::TimeZone(_))
    ));
    let (s, _clock, _events) = manual();
    let never = Schedule::cron("0 0 30 2 *").unwrap(); // February 30th
    let started = std::time::Instant::now();
    assert!(matches!(
        s.add(Job::thread("never", never, || ())),
        Err(ScheduleError::NeverFires(_))
    ));
    assert!(started.elapsed() < T);
    for period in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
    ] {
        assert!(matches!(
            s.add(Job::thread("short", Schedule::every(period), || ())),
            Err(ScheduleError::IntervalTooShort { min, .. }) if min == Schedule::MIN_PERIOD
        ));
    }
    assert!(matches!(
        s.add(Job::thread("", Schedule::every(secs(1)), || ())),
        Err(ScheduleError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.add(Job::thread("x", Schedule::every(secs(1)), || ()).max_instances(0)),
        Err(ScheduleError::InvalidArgument(_))
    ));
    s.add(Job::thread("dup", Schedule::every(secs(1)), || ()))
        .unwrap();
    assert!(matches!(
        s.add(Job::thread("dup", Schedule::every(secs(2)), || ())),
        Err(ScheduleError::Duplicate(_))
    ));
    fn noop(_: ()) {}
    assert!(matches!(
        s.add(Job::process("proc", Schedule::every(secs(1)), noop, ())),
        Err(ScheduleError::NoExecutor { needs: "Pool", .. })
    ));
    // Nothing refused was scheduled.
    let names: Vec<String> = s.jobs().into_iter().map(|j| j.name).collect();
    assert_eq!(names, ["dup"]);
}

fn background_thread_follows_clock() {
    // The scheduler's own thread wakes when a manual clock moves, and on the system
    // clock fires a short interval on time.
    let clock = ManualClock::new(t0());
    let s = Scheduler::builder()
        .thread_pool(ThreadPool::new(1).unwrap())
        .clock(clock.clone())
        .build()
        .unwrap();
    let events = s.events();
    s.add(Job::thread("a", Schedule::every(secs(3600)), || ()))
        .unwrap();
    clock.advance(secs(3600));
    let e = next(&events);
    assert!(matches!(e.kind, EventKind::Started { .. }) && e.scheduled == at(3600));
    drop(s);

    let s = Scheduler::builder()
        .thread_pool(ThreadPool::new(1).unwrap())
        .build()
        .unwrap();
    let events = s.events();
    s.add(Job::thread(
        "fast",
        Schedule::every(Duration::from_millis(50)),
        || (),
    ))
    .unwrap();
    let mut times = Vec::new();
    while times.len() < 3 {
        let e = next(&events);
        if matches!(e.kind, EventKind::Started { .. }) {
            // Never early, and on time: not a second late (the scheduler sleeps until
            // the next fire time, not in one-second steps).
            let late = e.at - e.scheduled;
            assert!(
                late >= multiproc::chrono::Duration::zero(),
                "started {late} early"
            );
            assert!(
                late < multiproc::chrono::Duration::seconds(1),
                "started {late} late"
            );
            times.push(e.scheduled);
        }
    }
    let step = multiproc::chrono::Duration::milliseconds(50);
    assert_eq!(times[1] - times[0], step);
    assert_eq!(times[2] - times[1], step);
}

fn remove_and_shutdown_wait() {
    let clock = ManualClock::new(t0());
    let s = Scheduler::builder()
        .thread_pool(ThreadPool::new(1).unwrap())
        .clock(clock.clone())
        .build_manual();
    let done = Arc::new(Mutex::new(false));
    let d = Arc::clone(&done);
    s.add(Job::thread("slow", Schedule::every(secs(10)), move || {
        std::thread::sleep(Duration::from_millis(200));
        *d.lock().unwrap() = true;
    }))
    .unwrap();
    s.add(Job::thread("gone", Schedule::every(secs(10)), || ()))
        .unwrap();
    assert!(s.remove("gone"));
    assert!(!s.remove("gone"));
    clock.set(at(10));
    assert_eq!(s.run_pending(), 1);
    s.shutdown(true);
    assert!(
        *done.lock().unwrap(),
        "shutdown(true) waits for runs in flight"
    );
}

#[cfg(feature = "sqlite")]
mod store {
    use super::*;
    use multiproc::sched::JobStore;

    fn on_store(path: &std::path::Path, clock: &ManualClock) -> (Scheduler, Receiver<JobEvent>) {
        let s = Scheduler::builder()
            .thread_pool(ThreadPool::new(1).unwrap())
            .clock(clock.clone())
            .store(JobStore::open(path).unwrap())
            .build_manual();
        let events = s.events();
        (s, events)
    }

    fn tick_job() -> Job {
        Job::thread("tick", Schedule::every(secs(10)), || ())
    }

    pub fn survives_restart() {
        let dir = tempdir("restart");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        {
            let (s, events) = on_store(&db, &clock);
            s.add(tick_job()).unwrap();
            let mut fired = Vec::new();
            for n in [10, 20, 30] {
                clock.set(at(n));
                fired.extend(started(&settle(&s, &events, 1)));
            }
            assert_eq!(fired, vec![at(10), at(20), at(30)]);
        } // the program stops at 35 s...
        clock.set(at(95)); // ...and is back a minute later.
        let (s, events) = on_store(&db, &clock);
        s.add(tick_job()).unwrap();
        // The interval keeps its original start: the next time is on the old grid.
        let evs = settle(&s, &events, 1);
        assert_eq!(
            missed(&evs),
            vec![(at(40), 5, at(80), MissReason::TooLate)],
            "runs due while down are reported, per the misfire grace"
        );
        assert_eq!(started(&evs), vec![at(90)]);
        assert_eq!(s.next_fire("tick"), Some(at(100)));
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The same long downtime on a store: one update, not a row per missed time, and
    /// the times handled are not handled again after a restart.
    pub fn long_downtime_on_a_store() {
        let dir = tempdir("downtime");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let ms = |n: i64| t0() + multiproc::chrono::Duration::milliseconds(n);
        let job = || Job::thread("fast", Schedule::every(Duration::from_millis(1)), || ());
        {
            let (s, _events) = on_store(&db, &clock);
            s.add(job()).unwrap();
        }
        clock.set(ms(3_600_000) + multiproc::chrono::Duration::microseconds(500));
        {
            let (s, events) = on_store(&db, &clock);
            s.add(job()).unwrap();
            let evs = settle(&s, &events, 1);
            assert_eq!(
                missed(&evs),
                vec![(ms(1), 3_599_999, ms(3_599_999), MissReason::TooLate)]
            );
            assert_eq!(started(&evs), vec![ms(3_600_000)]);
        }
        // Back at once: nothing is due again, nothing is reported twice.
        let (s, events) = on_store(&db, &clock);
        s.add(job()).unwrap();
        s.run_pending();
        assert_eq!(events.try_iter().count(), 0);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    pub fn two_schedulers_race() {
        let dir = tempdir("race");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let (a, ea) = on_store(&db, &clock);
        let (b, eb) = on_store(&db, &clock);
        let job = || tick_job().max_instances(1000);
        a.add(job()).unwrap();
        b.add(job()).unwrap();
        for n in 1..=50 {
            clock.set(at(n * 10));
            std::thread::scope(|scope| {
                scope.spawn(|| a.run_pending());
                scope.spawn(|| b.run_pending());
            });
        }
        let mut all: Vec<DateTime<Utc>> = started(&ea.try_iter().collect::<Vec<_>>());
        let from_b = started(&eb.try_iter().collect::<Vec<_>>());
        assert!(!all.is_empty() || !from_b.is_empty());
        all.extend(from_b);
        all.sort();
        let want: Vec<_> = (1..=50).map(|n| at(n * 10)).collect();
        assert_eq!(all, want, "each (job, time) fired exactly once");
        drop((a, b));
        std::fs::remove_dir_all(dir).unwrap();
    }

    pub fn corrupt_and_foreign() {
        let dir = tempdir("corrupt");
        let garbage = dir.join("garbage.db");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        match JobStore::open(&garbage) {
            Err(ScheduleError::Store(why)) => assert!(why.contains("not a job store"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A SQLite database of something else is not taken over.
        let foreign = dir.join("foreign.db");
        rusqlite::Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY)")
            .unwrap();
        match JobStore::open(&foreign) {
            Err(ScheduleError::Store(why)) => assert!(why.contains("other tables"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A job store whose header was overwritten.
        let damaged = dir.join("damaged.db");
        {
            let (s, _) = on_store(&damaged, &ManualClock::new(t0()));
            s.add(tick_job()).unwrap();
        }
        let mut bytes = std::fs::read(&damaged).unwrap();
        bytes[..100].fill(0xff);
        std::fs::write(&damaged, bytes).unwrap();
        assert!(matches!(
            JobStore::open(&damaged),
            Err(ScheduleError::Store(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    pub fn changed_schedule() {
        let dir = tempdir("changed");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        {
            let (s, events) = on_store(&db, &clock);
            s.add(tick_job()).unwrap();
            clock.set(at(10));
            assert_eq!(started(&settle(&s, &events, 1)), vec![at(10)]);
        }
        clock.set(at(100));
        let (s, events) = on_store(&db, &clock);
        s.add(Job::thread("tick", Schedule::every(secs(7)), || ()))
            .unwrap();
        // A new schedule: nothing is owed from the old one.
        assert!(settle(&s, &events, 0).is_empty());
        assert_eq!(s.next_fire("tick"), Some(at(107)));
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
