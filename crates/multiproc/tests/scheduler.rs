//! The scheduler against a controllable clock: intervals without drift, cron across
//! daylight-saving changes in a real time zone, misfire and coalesce policies,
//! max_instances with a slow job, retries (a worker process that dies included), bad
//! input, and (feature `sqlite`) the job store across a restart, with two schedulers
//! racing, corrupt, of the earlier layout, and with its scheduler's process SIGKILLed at
//! random moments over many restarts (no time runs twice, none is lost unreported).

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
        trial(
            "a_run_that_shuts_its_scheduler_down_waiting_returns",
            a_run_that_shuts_its_scheduler_down_waiting_returns,
        ),
        trial("cron_across_dst_spring_forward", cron_spring_forward),
        trial("cron_across_dst_fall_back", cron_fall_back),
        trial("misfire_and_coalesce_policies", misfire_and_coalesce),
        trial(
            "long_downtime_counted_at_once",
            long_downtime_counted_at_once,
        ),
        trial(
            "a_cron_jobs_long_downtime_is_one_event",
            a_cron_jobs_long_downtime_is_one_event,
        ),
        trial(
            "a_per_second_cron_jobs_long_downtime_is_walked_in_steps",
            a_per_second_cron_jobs_long_downtime_is_walked_in_steps,
        ),
        trial(
            "backlog_longer_than_a_pass_runs_once",
            backlog_longer_than_a_pass_runs_once,
        ),
        trial(
            "one_run_pending_handles_a_backlog_longer_than_a_pass",
            one_run_pending_handles_a_backlog_longer_than_a_pass,
        ),
        trial(
            "run_pending_does_not_chase_a_clock_that_moves_during_its_passes",
            run_pending_does_not_chase_a_moving_clock,
        ),
        trial("max_instances_with_slow_job", max_instances_with_slow_job),
        trial("once_in_the_past", once_in_the_past),
        trial(
            "interval_starting_in_the_past",
            interval_starting_in_the_past,
        ),
        trial("jitter_delays_the_start_only", jitter_delays_the_start_only),
        trial(
            "a_jittered_run_past_its_grace_is_reported_too_late",
            a_jittered_run_past_its_grace_is_reported_too_late,
        ),
        trial(
            "runs_waiting_for_jitter_or_retry_at_shutdown_are_reported",
            runs_waiting_at_shutdown_are_reported,
        ),
        trial("retry_after_panics", retry_after_panics),
        trial("retry_after_worker_died", retry_after_worker_died),
        trial(
            "a_panic_launching_a_run_fails_that_run_only",
            panic_launching_a_run,
        ),
        trial(
            "a_panic_taking_a_runs_outcome_fails_that_run_only",
            a_panic_taking_a_runs_outcome_fails_that_run_only,
        ),
        trial(
            "a_call_back_from_code_the_scheduler_runs_fails_clearly",
            a_call_back_from_code_the_scheduler_runs_fails_clearly,
        ),
        trial("bad_input_clear_errors", bad_input_clear_errors),
        trial(
            "background_thread_follows_clock",
            background_thread_follows_clock,
        ),
        trial("remove_and_shutdown_wait", remove_and_shutdown_wait),
        trial(
            "the_event_stream_ends_when_the_scheduler_goes",
            the_event_stream_ends_when_the_scheduler_goes,
        ),
        trial("a_job_added_again_is_another_job", added_again),
        trial(
            "a_subscriber_behind_still_gets_the_runs_missed_at_the_shutdown",
            a_subscriber_behind_still_gets_the_runs_missed_at_the_shutdown,
        ),
    ];
    #[cfg(feature = "sqlite")]
    tests.extend([
        trial("store_survives_restart", store::survives_restart),
        trial("store_two_schedulers_race", store::two_schedulers_race),
        trial("store_long_downtime", store::long_downtime_on_a_store),
        trial(
            "store_a_cron_jobs_long_downtime",
            store::a_cron_jobs_long_downtime_on_a_store,
        ),
        trial("store_corrupt_and_foreign", store::corrupt_and_foreign),
        trial(
            "store_changed_schedule_starts_afresh",
            store::changed_schedule,
        ),
        trial(
            "store_claimed_never_started_is_due_again",
            store::claimed_never_started_is_due_again,
        ),
        trial(
            "store_a_removed_jobs_recovered_times_are_reported",
            store::a_removed_jobs_recovered_times_are_reported,
        ),
        trial(
            "store_live_scheduler_keeps_its_claims",
            store::live_scheduler_keeps_its_claims,
        ),
        trial(
            "store_a_live_scheduler_takes_over_what_a_gone_one_left",
            store::live_scheduler_takes_over_what_a_gone_one_left,
        ),
        trial(
            "store_a_scheduler_takes_over_what_one_dropped_in_a_live_process_left",
            store::takes_over_what_one_dropped_in_a_live_process_left,
        ),
        trial(
            "store_a_live_scheduler_takes_over_a_once_time_a_gone_one_claimed",
            store::live_scheduler_takes_over_a_once_time_a_gone_one_claimed,
        ),
        trial(
            "store_started_run_is_reported_interrupted",
            store::started_run_is_reported_interrupted,
        ),
        trial("store_layout_1_is_upgraded", store::layout_1_is_upgraded),
        trial(
            "store_reported_time_is_reported_again_not_run",
            store::reported_time_is_reported_again_not_run,
        ),
        trial(
            "store_scheduler_killed_at_random_moments",
            store::killed_at_random_moments,
        ),
        trial(
            "store_busy_runs_wait_for_it",
            store::busy_store_runs_wait_for_it,
        ),
        trial(
            "store_a_jittered_run_held_by_a_busy_store_past_its_grace_is_reported",
            store::a_jittered_run_held_by_a_busy_store_past_its_grace_is_reported,
        ),
        trial(
            "store_a_time_held_back_by_a_busy_store_is_reported",
            store::a_time_held_back_by_a_busy_store_is_reported,
        ),
        trial(
            "store_with_a_manual_clock_at_the_end_of_time",
            store::manual_clock_at_the_end_of_time,
        ),
        trial(
            "store_refuses_a_first_time_it_cannot_keep",
            store::refuses_a_first_time_it_cannot_keep,
        ),
        trial("store_forgets_a_removed_job", store::forgets_a_removed_job),
        trial(
            "store_a_job_added_again_keeps_anothers_open_runs",
            store::a_job_added_again_keeps_anothers_open_runs,
        ),
        trial(
            "store_cron_job_down_before_its_first_fire",
            store::cron_down_before_its_first_fire,
        ),
        trial(
            "store_a_cron_jobs_last_time_came_while_it_was_down",
            store::a_cron_jobs_last_time_came_while_it_was_down,
        ),
        trial(
            "store_a_spent_cron_jobs_interrupted_run_is_reported",
            store::a_spent_cron_jobs_interrupted_run_is_reported,
        ),
    ]);
    common::main_checked(
        tests,
        helpers,
        Duration::from_secs(300),
        common::no_new_dev_shm,
    );
}

fn helpers(mode: &str) {
    match mode {
        #[cfg(feature = "sqlite")]
        "store_scheduler" => store::helper_store_scheduler(),
        #[cfg(feature = "sqlite")]
        "store_report_then_hang" => store::helper_report_then_hang(),
        #[cfg(feature = "sqlite")]
        "store_claim_then_drop" => store::helper_claim_then_drop(),
        other => panic!("unknown helper mode {other}"),
    }
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

/// A thread job's run that shuts its scheduler down, waiting (a job that stops the
/// scheduler once its work is done): the shutdown waits for the scheduler's other run
/// in flight on another thread, and returns. It waited for ever for the run that called
/// it. With one thread, the run queued behind the caller's is cancelled (it could not
/// start while the caller waits: the shutdown waited for ever for it too).
fn a_run_that_shuts_its_scheduler_down_waiting_returns() {
    for threads in [2, 1] {
        let (s, clock, events) = background(threads);
        let slot = Arc::new(Mutex::new(None::<Scheduler>));
        let other_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (go_tx, go) = crossbeam_channel::bounded::<()>(1);
        let (done_tx, done) = crossbeam_channel::bounded::<bool>(1);
        let theirs = Arc::clone(&slot);
        let ended = Arc::clone(&other_ended);
        s.add(Job::thread("stopper", Schedule::once(at(10)), move || {
            let _ = go.recv_timeout(T);
            let taken = theirs.lock().unwrap().take();
            if let Some(s) = taken {
                s.shutdown(true);
                let _ = done_tx.send(ended.load(Ordering::SeqCst));
            }
        }))
        .unwrap();
        let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
        let ended = Arc::clone(&other_ended);
        s.add(Job::thread("other", Schedule::once(at(11)), move || {
            let _ = started_tx.send(());
            std::thread::sleep(Duration::from_millis(300));
            ended.store(true, Ordering::SeqCst);
        }))
        .unwrap();
        *slot.lock().unwrap() = Some(s);
        clock.set(at(10));
        let started_run = |name: &str| {
            let name = name.to_string();
            move |e: JobEvent| e.job == name && matches!(e.kind, EventKind::Started { .. })
        };
        assert!(eventually(T, || events
            .try_iter()
            .any(started_run("stopper"))));
        clock.set(at(11));
        // The other run is handed to the pool (with one thread, queued behind the
        // stopper), and with two threads running.
        assert!(eventually(T, || events
            .try_iter()
            .any(started_run("other"))));
        if threads == 2 {
            started.recv_timeout(T).unwrap();
        }
        go_tx.send(()).unwrap();
        let waited = done.recv_timeout(T);
        assert_eq!(
            waited,
            Ok(threads == 2),
            "{threads} threads: the shutdown did not return, or returned before the other run ended"
        );
        if threads == 1 {
            assert!(started.try_recv().is_err(), "the queued run started");
            let cancelled = |e: &JobEvent| {
                e.job == "other"
                    && matches!(&e.kind, EventKind::Failed { error, .. } if matches!(**error, TaskError::Cancelled))
            };
            let mut seen = Vec::new();
            assert!(
                eventually(T, || {
                    seen.extend(events.try_iter());
                    seen.iter().any(cancelled)
                }),
                "{seen:?}"
            );
        }
    }
}

/// A scheduler on a manual clock at `t0`, with its own thread and a thread pool of
/// `threads`.
fn background(threads: usize) -> (Scheduler, ManualClock, Receiver<JobEvent>) {
    let clock = ManualClock::new(t0());
    let s = Scheduler::builder()
        .thread_pool(ThreadPool::new(threads).unwrap())
        .clock(clock.clone())
        .build()
        .unwrap();
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
    // A list of hours counts as repeating: no 02:30 that day, as documented.
    let from = utc(2026, 3, 7, 12, 0);
    assert_eq!(
        cron_fires("30 2,14 * * *", "America/New_York", from, 3),
        vec![
            utc(2026, 3, 7, 19, 30), // 14:30 EST
            utc(2026, 3, 8, 18, 30), // 14:30 EDT (02:30 does not exist)
            utc(2026, 3, 9, 6, 30),  // 02:30 EDT
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

/// Minutes from `t0`.
fn minutes(n: i64) -> DateTime<Utc> {
    t0() + multiproc::chrono::Duration::minutes(n)
}

/// A cron job's long downtime is one event too, with its default grace (one period,
/// which for cron is the time to the next fire time): a time is too late once the next
/// one is due. Each pass listed 10,000 times as runnable and found them too late one by
/// one: an event per pass.
fn a_cron_jobs_long_downtime_is_one_event() {
    let (s, clock, events) = manual();
    s.add(Job::thread(
        "minutely",
        Schedule::cron("* * * * *").unwrap(),
        || (),
    ))
    .unwrap();
    assert_eq!(s.next_fire("minutely"), Some(minutes(1)));
    clock.set(minutes(25_000) + multiproc::chrono::Duration::seconds(30));
    let evs = settle(&s, &events, 1);
    assert_eq!(
        missed(&evs),
        vec![(minutes(1), 24_999, minutes(24_999), MissReason::TooLate)]
    );
    assert_eq!(started(&evs), vec![minutes(25_000)]);
    assert_eq!(s.next_fire("minutely"), Some(minutes(25_001)));
}

/// A per-second cron job after about three days away (250,000 times): the times too
/// late are walked 100,000 a pass at most, each pass reporting its own, one after
/// another within one `run_pending`, and every time is counted once. One pass walked
/// them all: 31.5 million steps for a year away, some 9 s with the scheduler's state
/// locked, no other job firing and no call on the scheduler returning.
fn a_per_second_cron_jobs_long_downtime_is_walked_in_steps() {
    let (s, clock, events) = manual();
    s.add(Job::thread(
        "secondly",
        Schedule::cron("* * * * * *").unwrap(),
        || (),
    ))
    .unwrap();
    assert_eq!(s.next_fire("secondly"), Some(at(1)));
    clock.set(at(250_000) + multiproc::chrono::Duration::milliseconds(500));
    let evs = settle(&s, &events, 1);
    assert_eq!(
        missed(&evs),
        vec![
            (at(1), 100_000, at(100_000), MissReason::TooLate),
            (at(100_001), 100_000, at(200_000), MissReason::TooLate),
            (at(200_001), 49_999, at(249_999), MissReason::TooLate),
        ]
    );
    assert_eq!(started(&evs), vec![at(250_000)]);
    assert_eq!(s.next_fire("secondly"), Some(at(250_001)));
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

/// More due times than the scheduler takes in one pass (10,000), all within the grace:
/// a coalescing job still runs once, for the latest (or earliest) time of them all, and
/// every other time is reported coalesced, none twice.
fn backlog_longer_than_a_pass_runs_once() {
    let (s, clock, events) = manual();
    let day = secs(86_400);
    let every = || Schedule::every(secs(1));
    s.add(Job::thread("latest", every(), || ()).misfire_grace(day))
        .unwrap();
    s.add(
        Job::thread("earliest", every(), || ())
            .misfire_grace(day)
            .coalesce(Coalesce::Earliest),
    )
    .unwrap();
    // Due: 1 ..= 25,000 s, three passes' worth.
    clock.set(at(25_000));
    let mut evs = settle(&s, &events, 2);
    s.run_pending();
    evs.extend(events.try_iter());
    for (job, ran, first_coalesced, last_coalesced) in [
        ("latest", at(25_000), at(1), at(24_999)),
        ("earliest", at(1), at(2), at(25_000)),
    ] {
        let of: Vec<JobEvent> = evs.iter().filter(|e| e.job == job).cloned().collect();
        assert_eq!(started(&of), vec![ran], "{job}: {of:?}");
        let coalesced = missed(&of);
        assert!(
            coalesced.iter().all(|m| m.3 == MissReason::Coalesced),
            "{job}: {coalesced:?}"
        );
        // Consecutive ranges, from the first coalesced time to the last, with no gap
        // and no time twice.
        let mut expect = first_coalesced;
        for &(first, count, last, _) in &coalesced {
            assert_eq!(first, expect, "{job}: {coalesced:?}");
            assert_eq!(last, first + secs(count - 1), "{job}: {coalesced:?}");
            expect = last + secs(1);
        }
        assert_eq!(expect, last_coalesced + secs(1), "{job}: {coalesced:?}");
        assert_eq!(s.next_fire(job), Some(at(25_001)));
    }
}

/// One `run_pending` handles everything due: a backlog of 25,000 times (three passes'
/// worth) runs its latest time at once, as a manual scheduler called once a minute
/// expects.
fn one_run_pending_handles_a_backlog_longer_than_a_pass() {
    let (s, clock, events) = manual();
    s.add(Job::thread("latest", Schedule::every(secs(1)), || ()).misfire_grace(secs(86_400)))
        .unwrap();
    clock.set(at(25_000));
    assert_eq!(s.run_pending(), 1);
    let evs = settle(&s, &events, 1);
    assert_eq!(started(&evs), vec![at(25_000)], "{evs:?}");
    assert_eq!(s.next_fire("latest"), Some(at(25_001)));
}

/// A pass that takes longer than a job's period (a store or a cluster slow to answer)
/// is not repeated: `run_pending` handles what was due when it was called and returns,
/// however far the clock moves while it works. Here another thread moves the clock a
/// second at a time without pause, so every pass ends with the next time of an
/// every-second job already due: a `run_pending` that looked only at the clock after
/// each pass ran one more pass, and started one more run, up to its 1,000 passes.
fn run_pending_does_not_chase_a_moving_clock() {
    use std::sync::atomic::AtomicBool;
    let (s, clock, events) = manual();
    s.add(Job::thread("tick", Schedule::every(secs(1)), || ()).max_instances(10_000))
        .unwrap();
    clock.set(at(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (clock, stop) = (clock.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < T {
                clock.advance(secs(1));
            }
        })
    };
    let started = s.run_pending();
    stop.store(true, Ordering::Relaxed);
    mover.join().unwrap();
    // One pass: the time due when it began, and at most one more that came due before
    // it read the clock (the others it finds too late, with a one-second grace).
    assert!(
        (1..=2).contains(&started),
        "run_pending started {started} runs"
    );
    drop(events);
}

fn max_instances_with_slow_job() {
    let (s, clock, events) = background(2);
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

/// An interval whose start is already past when the job is added: its times since then
/// are late runs, as a past `once` is. The last (5 s late, within the default grace of
/// one period) runs at once; the ten before it are reported missed, in one event; the
/// next is on the start's grid.
fn interval_starting_in_the_past() {
    let (s, _clock, events) = manual();
    s.add(Job::thread(
        "tick",
        Schedule::every(secs(10)).starting_at(at(-105)),
        || (),
    ))
    .unwrap();
    let evs = settle(&s, &events, 1);
    assert_eq!(started(&evs), vec![at(-5)]);
    assert_eq!(
        missed(&evs),
        vec![(at(-105), 10, at(-15), MissReason::TooLate)]
    );
    assert_eq!(s.next_fire("tick"), Some(at(5)));
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

/// A run that waited out its jitter, looked at again only past the job's grace (the
/// machine suspended, the clock stepped forward), is reported too late, and the time
/// due then takes its instance. (It started however late it was, and the time due
/// then was reported missed for want of an instance.)
fn a_jittered_run_past_its_grace_is_reported_too_late() {
    let (s, clock, events) = manual();
    s.add(
        Job::thread("spread", Schedule::every(secs(100)), || ())
            .jitter(secs(5))
            .misfire_grace(secs(10)),
    )
    .unwrap();
    clock.set(at(100));
    s.run_pending();
    assert_eq!(s.jobs()[0].running, 1, "waiting out its jitter");
    clock.set(at(200));
    s.run_pending();
    let evs: Vec<_> = events.try_iter().collect();
    assert!(started(&evs).is_empty(), "{evs:?}");
    assert_eq!(
        missed(&evs),
        vec![(at(100), 1, at(100), MissReason::TooLate)]
    );
    assert_eq!(s.jobs()[0].running, 1, "200 s waiting out its jitter");
    clock.set(at(205));
    let evs = settle(&s, &events, 1);
    assert_eq!(started(&evs), vec![at(200)], "{evs:?}");
}

/// A run waiting for its jitter and a failed run waiting for its retry when the
/// scheduler shuts down are each reported missed, not dropped without a word.
/// A job whose runs panic, each retried 30 s later, twice.
fn failing(name: &str, schedule: Schedule) -> Job {
    Job::thread(name, schedule, || -> () {
        panic!("fails");
    })
    .retry(
        RetryPolicy::attempts(3)
            .backoff(secs(30), 1.0, secs(30))
            .retry_if(|e| matches!(e, TaskError::Panicked(_))),
    )
}

fn runs_waiting_at_shutdown_are_reported() {
    let (s, clock, events) = manual();
    s.add(Job::thread("spread", Schedule::every(secs(100)), || ()).jitter(secs(50)))
        .unwrap();
    // Removed while its run waits for its jitter, and while a failed run waits for its
    // retry: those runs are reported at the removal, and are no runs the shutdown
    // missed.
    s.add(Job::thread("removed", Schedule::every(secs(100)), || ()).jitter(secs(50)))
        .unwrap();
    s.add(failing("failing", Schedule::every(secs(100))))
        .unwrap();
    s.add(failing("failing_removed", Schedule::every(secs(100))))
        .unwrap();
    clock.set(at(100));
    // The failing runs fail once and wait for their retries; the others wait out their
    // jitter.
    let mut evs = Vec::new();
    assert!(eventually(T, || {
        s.run_pending();
        evs.extend(events.try_iter());
        evs.iter()
            .filter(|e| matches!(e.kind, EventKind::Failed { .. }))
            .count()
            == 2
    }));
    assert!(s.remove("removed"));
    assert!(s.remove("failing_removed"));
    s.shutdown(true);
    evs.extend(events.try_iter());
    let missed = |reason: MissReason| {
        let mut v: Vec<(String, DateTime<Utc>)> = evs
            .iter()
            .filter(|e| {
                matches!(
                    &e.kind,
                    EventKind::Missed { count: 1, reason: r, .. } if *r == reason
                )
            })
            .map(|e| (e.job.clone(), e.scheduled))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        missed(MissReason::ShutDown),
        [
            ("failing".to_string(), at(100)),
            ("spread".to_string(), at(100))
        ],
        "{evs:?}"
    );
    assert_eq!(
        missed(MissReason::Removed),
        [
            ("failing_removed".to_string(), at(100)),
            ("removed".to_string(), at(100))
        ],
        "{evs:?}"
    );
}

/// A subscriber that keeps as many events unread as a subscriber may (later ones are
/// dropped for it) still gets the runs missed at the shutdown, the stream's last
/// events, before its end.
fn a_subscriber_behind_still_gets_the_runs_missed_at_the_shutdown() {
    let (s, clock, watch) = manual();
    let behind = s.events();
    // A run that holds the job's only instance until told: each later fire time is one
    // `Missed` event.
    let (release, gate) = crossbeam_channel::bounded::<()>(1);
    s.add(
        Job::thread(
            "busy",
            Schedule::every(Duration::from_millis(1)),
            move || {
                let _ = gate.recv_timeout(T);
            },
        )
        .max_instances(1),
    )
    .unwrap();
    let mut steps = 0;
    while behind.len() < 100_000 {
        steps += 1;
        assert!(
            steps < 300_000,
            "{} events after {steps} steps",
            behind.len()
        );
        clock.advance(Duration::from_millis(1));
        s.run_pending();
        while watch.try_recv().is_ok() {}
    }
    assert!(s.remove("busy"));
    let start = clock.now() + multiproc::chrono::Duration::seconds(1);
    s.add(failing("failing", Schedule::once(start))).unwrap();
    clock.advance(secs(1));
    assert!(eventually(T, || {
        s.run_pending();
        watch
            .try_iter()
            .any(|e| matches!(e.kind, EventKind::Failed { .. }))
    }));
    release.send(()).unwrap();
    s.shutdown(true);
    let rest = read_to_the_end(behind).expect("the stream ended within 30 s");
    assert!(
        rest.iter().any(|e| e.job == "failing"
            && e.scheduled == start
            && matches!(
                e.kind,
                EventKind::Missed {
                    reason: MissReason::ShutDown,
                    ..
                }
            )),
        "the run waiting for its retry was not reported to the subscriber behind"
    );
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

/// Job arguments whose `Clone` panics the first time (the scheduler clones them on its
/// own thread, as it hands each run to the pool).
#[derive(serde::Serialize, serde::Deserialize)]
struct PanicsOnce(u32);

static CLONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Clone for PanicsOnce {
    fn clone(&self) -> Self {
        if !CLONED.swap(true, Ordering::SeqCst) {
            panic!("refusing the first clone");
        }
        PanicsOnce(self.0)
    }
}

fn unwrap_panics_once(p: PanicsOnce) -> u32 {
    p.0
}

/// A panic in the user's code that the scheduler's thread runs to launch a run (the
/// arguments' `Clone` or `Serialize`) fails that run with `Panicked`; the scheduler's
/// thread goes on, and the job's next time runs (its instance was given back).
fn panic_launching_a_run() {
    let clock = ManualClock::new(t0());
    let s = Scheduler::builder()
        .pool(Pool::new(1).unwrap())
        .clock(clock.clone())
        .build()
        .unwrap();
    let events = s.events();
    s.add(
        Job::process(
            "touchy",
            Schedule::every(secs(10)),
            unwrap_panics_once,
            PanicsOnce(5),
        )
        .max_instances(1),
    )
    .unwrap();
    first_run_panics_the_next_succeeds(&clock, &events, "refusing the first clone");
    s.shutdown(true);
}

/// The job of a scheduler on `clock` (at `t0`, every 10 s) is due: its run there fails
/// with a panic saying `message`, the one 10 s later succeeds.
fn first_run_panics_the_next_succeeds(
    clock: &ManualClock,
    events: &Receiver<JobEvent>,
    message: &str,
) {
    clock.set(at(10));
    assert!(matches!(
        next(events).kind,
        EventKind::Started { attempt: 1 }
    ));
    match next(events).kind {
        EventKind::Failed { error, .. } => assert!(
            matches!(&*error, TaskError::Panicked(p) if p.message().contains(message)),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
    clock.set(at(20));
    let kinds: Vec<EventKind> = (0..2).map(|_| next(events).kind).collect();
    assert!(
        matches!(
            kinds[..],
            [
                EventKind::Started { attempt: 1 },
                EventKind::Succeeded { attempt: 1 }
            ]
        ),
        "{kinds:?}"
    );
}

/// A run's result whose `Drop` panics (the scheduler's thread drops it as it takes the
/// outcome).
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("cannot be dropped");
    }
}

/// A panic as the scheduler's thread takes a run's outcome (the result's `Drop`, a
/// process job's `Deserialize`) fails that run with `Panicked`; the thread goes on: the
/// job's next time runs, and `shutdown(true)` returns (the thread was gone, the run
/// never finished, and `shutdown(true)` waited for it for ever).
fn a_panic_taking_a_runs_outcome_fails_that_run_only() {
    let (s, clock, events) = background(1);
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    s.add(Job::thread(
        "touchy",
        Schedule::every(secs(10)),
        move || {
            // Made on the first run only: a value made and dropped on the pool's thread
            // would panic there.
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Some(PanicsWhenDropped)
            } else {
                None
            }
        },
    ))
    .unwrap();
    first_run_panics_the_next_succeeds(&clock, &events, "cannot be dropped");
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        s.shutdown(true);
        done_tx.send(()).unwrap();
    });
    assert!(
        done.recv_timeout(T).is_ok(),
        "shutdown(true) never returned"
    );
}

/// A retry policy's predicate that calls back into its scheduler (`jobs`) as the
/// scheduler decides on a retry, holding its state: the call panics, saying why, and
/// the failure stands as for any predicate that panics (the call waited for ever for
/// the lock its own thread held, and the scheduler hung).
fn a_call_back_from_code_the_scheduler_runs_fails_clearly() {
    let clock = ManualClock::new(t0());
    let s = Arc::new(
        Scheduler::builder()
            .thread_pool(ThreadPool::new(1).unwrap())
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let events = s.events();
    let w = Arc::downgrade(&s);
    s.add(
        Job::thread("fails", Schedule::every(secs(10)), || -> u32 {
            panic!("failed on purpose")
        })
        .retry(
            RetryPolicy::attempts(3)
                .retry_if(move |_| w.upgrade().is_some_and(|s| s.jobs().is_empty())),
        ),
    )
    .unwrap();
    clock.set(at(10));
    assert!(matches!(
        next(&events).kind,
        EventKind::Started { attempt: 1 }
    ));
    match next(&events).kind {
        EventKind::Failed {
            attempt: 1,
            retry_in,
            ..
        } => assert_eq!(retry_in, None),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.jobs().len(), 1, "the scheduler answers");
    let s = Arc::try_unwrap(s).unwrap_or_else(|_| panic!("the predicate kept the scheduler"));
    s.shutdown(true);
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
    // A grace of zero, or under a millisecond, would miss (nearly) every run: the
    // scheduler wakes after a due time, some microseconds to milliseconds after it.
    for grace in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
    ] {
        assert!(matches!(
            s.add(Job::thread("x", Schedule::every(secs(1)), || ()).misfire_grace(grace)),
            Err(ScheduleError::InvalidArgument(m)) if m.contains("misfire_grace")
        ));
    }
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
    let (s, clock, events) = background(1);
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
    // Every time is started, however late this machine runs it, so the times seen are
    // consecutive.
    s.add(
        Job::thread("fast", Schedule::every(Duration::from_millis(50)), || ())
            .misfire_grace(secs(60))
            .coalesce(Coalesce::All)
            .max_instances(100),
    )
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

/// Reads `events` on a thread of its own until the stream ends; the events read, or
/// `None` when it had not ended within `T`.
fn read_to_the_end(events: Receiver<JobEvent>) -> Option<Vec<JobEvent>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(events.iter().collect::<Vec<_>>());
    });
    rx.recv_timeout(T).ok()
}

/// A loop over a scheduler's events ends when the scheduler goes, after the last events
/// (the runs the shutdown missed among them), whether it was shut down or dropped, with
/// or without its own thread; a receiver that was never read ends too.
fn the_event_stream_ends_when_the_scheduler_goes() {
    let (s, clock, events) = background(1);
    let idle = s.events();
    s.add(Job::thread("a", Schedule::every(secs(10)), || ()).jitter(secs(5)))
        .unwrap();
    clock.set(at(10));
    // Its run waits out its jitter (0 to 5 s of a clock that no longer moves): the
    // shutdown reports it missed, or it ran at once (a jitter of 0).
    let reader = std::thread::spawn(move || read_to_the_end(events));
    assert!(eventually(T, || s.jobs()[0].next_fire == Some(at(20))));
    s.shutdown(true);
    let seen = reader
        .join()
        .unwrap()
        .expect("the stream ended within 30 s");
    assert!(
        seen.iter().any(|e| e.scheduled == at(10)
            && matches!(
                e.kind,
                EventKind::Missed {
                    reason: MissReason::ShutDown,
                    ..
                } | EventKind::Started { .. }
            )),
        "{seen:?}"
    );
    let left = read_to_the_end(idle).expect("an unread receiver ends too");
    assert_eq!(left.len(), seen.len(), "{left:?} against {seen:?}");

    // Dropped rather than shut down, and fired by run_pending only.
    let (s, clock, events) = manual();
    s.add(Job::thread("b", Schedule::every(secs(10)), || ()))
        .unwrap();
    clock.set(at(10));
    settle(&s, &events, 1);
    drop(s);
    assert_eq!(
        read_to_the_end(events).map(|rest| rest.len()),
        Some(0),
        "the stream of a dropped scheduler ends"
    );
}

/// A job removed and added again under its name is a new job: a run of the old one
/// that ends does not free an instance of the new one (`max_instances`), and a retry
/// of the old one does not run the new one's function.
fn added_again() {
    let (s, clock, events) = manual();
    let wait_for = |want: &dyn Fn(&JobEvent) -> bool| -> JobEvent {
        let mut seen = Vec::new();
        let mut found = None;
        let hit = eventually(T, || {
            s.run_pending();
            for e in events.try_iter() {
                if found.is_none() && want(&e) {
                    found = Some(e);
                } else {
                    seen.push(e);
                }
            }
            found.is_some()
        });
        assert!(hit, "not seen; events: {seen:?}");
        found.unwrap()
    };
    let (old_go, old_wait) = crossbeam_channel::unbounded::<()>();
    s.add(
        Job::thread("x", Schedule::every(secs(10)), move || {
            old_wait.recv_timeout(T).expect("released");
        })
        .max_instances(1),
    )
    .unwrap();
    clock.set(at(10));
    wait_for(&|e| matches!(e.kind, EventKind::Started { .. }) && e.scheduled == at(10));
    assert!(s.remove("x"));
    let (new_go, new_wait) = crossbeam_channel::unbounded::<()>();
    let new_runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&new_runs);
    s.add(
        Job::thread("x", Schedule::every(secs(10)), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            new_wait.recv_timeout(T).expect("released");
        })
        .max_instances(1),
    )
    .unwrap();
    clock.set(at(20));
    wait_for(&|e| matches!(e.kind, EventKind::Started { .. }) && e.scheduled == at(20));
    // The old run ends while the new one runs: the new job still holds its instance.
    old_go.send(()).unwrap();
    wait_for(&|e| matches!(e.kind, EventKind::Succeeded { .. }) && e.scheduled == at(10));
    assert_eq!(s.jobs()[0].running, 1, "{:?}", s.jobs());
    clock.set(at(30));
    let e = wait_for(&|e| e.scheduled == at(30));
    assert!(
        matches!(
            e.kind,
            EventKind::Missed {
                reason: MissReason::MaxInstances,
                ..
            }
        ),
        "the new job ran twice at once: {e:?}"
    );
    new_go.send(()).unwrap();
    wait_for(&|e| matches!(e.kind, EventKind::Succeeded { .. }) && e.scheduled == at(20));
    assert!(s.remove("x"));

    // An old run's retry, due after the job was added again, does not run.
    s.add(
        Job::thread("y", Schedule::every(secs(100)), || -> u32 {
            panic!("fails")
        })
        .retry(
            RetryPolicy::attempts(3)
                .backoff(secs(5), 1.0, secs(5))
                .retry_if(|e| matches!(e, TaskError::Panicked(_))),
        ),
    )
    .unwrap();
    // Added at 30 s: it first fires at 130 s, and retries 5 s after.
    clock.set(at(130));
    wait_for(&|e| matches!(e.kind, EventKind::Failed { .. }) && e.scheduled == at(130));
    assert!(s.remove("y"));
    let y_runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&y_runs);
    s.add(Job::thread("y", Schedule::every(secs(1000)), move || {
        counted.fetch_add(1, Ordering::SeqCst);
    }))
    .unwrap();
    // The retry is due: a run would be started (and its event sent) by this pass.
    clock.set(at(140));
    assert_eq!(s.run_pending(), 0, "the old job's retry ran");
    let late: Vec<JobEvent> = events.try_iter().collect();
    assert!(
        !late
            .iter()
            .any(|e| matches!(e.kind, EventKind::Started { .. })),
        "the old job's retry ran the new job's function: {late:?}"
    );
    s.shutdown(true);
    assert_eq!(y_runs.load(Ordering::SeqCst), 0);
    assert_eq!(new_runs.load(Ordering::SeqCst), 1);
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

    /// A store in a new directory named for `name`, and a scheduler on it whose
    /// [`tick_job`] ran at 10 s: the directory, the store's file, the clock, and the
    /// scheduler with its events.
    fn ticked_at_10(
        name: &str,
    ) -> (
        std::path::PathBuf,
        std::path::PathBuf,
        ManualClock,
        (Scheduler, Receiver<JobEvent>),
    ) {
        let dir = tempdir(name);
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let (s, events) = on_store(&db, &clock);
        s.add(tick_job()).unwrap();
        clock.set(at(10));
        assert_eq!(started(&settle(&s, &events, 1)), vec![at(10)]);
        (dir, db, clock, (s, events))
    }

    /// A store that cannot be written (another process holds its lock past the busy
    /// timeout) when a time is due: the time waits for it, and runs once it answers,
    /// rather than being dropped without an event.
    /// A store in a new directory named for `name`, and a scheduler on it whose
    /// [`tick_job`] was due at 10 s while another connection held the store locked:
    /// nothing ran, nothing was reported. The store is free again.
    fn busy_at_10(
        name: &str,
    ) -> (
        std::path::PathBuf,
        ManualClock,
        (Scheduler, Receiver<JobEvent>),
    ) {
        let dir = tempdir(name);
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let (s, events) = on_store(&db, &clock);
        s.add(tick_job()).unwrap();
        let blocker = rusqlite::Connection::open(&db).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        clock.set(at(10));
        assert_eq!(s.run_pending(), 0, "ran without its record");
        assert!(events.try_iter().next().is_none());
        blocker.execute_batch("COMMIT").unwrap();
        drop(blocker);
        (dir, clock, (s, events))
    }

    pub fn busy_store_runs_wait_for_it() {
        let (dir, clock, (s, events)) = busy_at_10("busy");
        clock.set(at(11));
        let evs = settle(&s, &events, 1);
        assert_eq!(started(&evs), vec![at(10)], "{evs:?}");
        assert_eq!(s.next_fire("tick"), Some(at(20)));
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A run that waited out its jitter while the store was busy waits for the store (its
    /// start is recorded first), and once the store answers starts only within the
    /// job's grace of when it was to start: past it, it is reported too late, as a time
    /// claimed and held is (it started however late it was, holding its instance).
    pub fn a_jittered_run_held_by_a_busy_store_past_its_grace_is_reported() {
        let dir = tempdir("busy-jitter");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let (s, events) = on_store(&db, &clock);
        let job = Job::thread("spread", Schedule::every(secs(100)), || ())
            .jitter(secs(5))
            .misfire_grace(secs(10));
        s.add(job).unwrap();
        clock.set(at(100));
        s.run_pending();
        assert_eq!(s.jobs()[0].running, 1, "waiting for its jitter");
        let blocker = rusqlite::Connection::open(&db).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        clock.set(at(106));
        assert_eq!(s.run_pending(), 0, "ran without its record");
        blocker.execute_batch("COMMIT").unwrap();
        drop(blocker);
        clock.set(at(150));
        s.run_pending();
        let evs: Vec<JobEvent> = events.try_iter().collect();
        assert!(started(&evs).is_empty(), "started 45 s late: {evs:?}");
        assert_eq!(
            missed(&evs),
            vec![(at(100), 1, at(100), MissReason::TooLate)],
            "{evs:?}"
        );
        assert_eq!(s.jobs()[0].running, 0, "its instance is held");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A due time whose claim failed (the store busy) is run or reported once the store
    /// answers, also when the next pass comes after its grace: kept aside while the
    /// job's next time moved on, it was dropped by that pass, which reported the times
    /// between as too late and marked the store past them (`Missed` of 20 alone, and
    /// nothing of 10).
    pub fn a_time_held_back_by_a_busy_store_is_reported() {
        let (dir, clock, (s, events)) = busy_at_10("busy-late");
        clock.set(at(35));
        let evs = settle(&s, &events, 1);
        assert_eq!(started(&evs), vec![at(30)], "{evs:?}");
        assert_eq!(
            missed(&evs),
            vec![(at(10), 2, at(20), MissReason::TooLate)],
            "{evs:?}"
        );
        assert_eq!(s.next_fire("tick"), Some(at(40)));
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A manual clock moved to the end of time (`advance(Duration::MAX)` saturates) with
    /// a store whose records wait to be settled: the pass handles it (the job's backlog
    /// reported as missed) rather than panicking on the time it would look again at.
    pub fn manual_clock_at_the_end_of_time() {
        let (dir, _db, clock, (s, events)) = ticked_at_10("end-of-time");
        clock.advance(Duration::MAX);
        s.run_pending();
        s.run_pending();
        assert!(
            events.try_iter().all(|e| e.scheduled > at(10)),
            "only later times are reported"
        );
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A store keeps times as nanoseconds in 64 bits (the years 1677 to 2262): a job
    /// whose first time is outside them is refused as it is added, and the store keeps
    /// nothing of it. A one-off run in 1600 was taken, then failed at each pass (every
    /// 100 ms, for ever), never run nor reported.
    pub fn refuses_a_first_time_it_cannot_keep() {
        let dir = tempdir("unkeepable");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let (s, events) = on_store(&db, &clock);
        let long_ago = Utc.with_ymd_and_hms(1600, 1, 1, 0, 0, 0).unwrap();
        let centuries = Duration::from_secs(300 * 366 * 86_400);
        for schedule in [Schedule::once(long_ago), Schedule::every(centuries)] {
            let added = s.add(Job::thread("far", schedule, || ()));
            assert!(
                matches!(&added, Err(ScheduleError::InvalidArgument(m)) if m.contains("1677-2262")),
                "{added:?}"
            );
        }
        assert_eq!(s.run_pending(), 0);
        assert!(events.try_iter().next().is_none());
        assert!(s.jobs().is_empty());
        drop((s, events));
        // Nothing of it was kept: added again as a job the store can keep, it is new.
        let (s, events) = on_store(&db, &clock);
        s.add(Job::thread("far", Schedule::every(secs(10)), || ()))
            .unwrap();
        assert_eq!(s.next_fire("far"), Some(at(10)));
        drop((s, events));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A job removed and added again under its name is another job on a store too: it
    /// starts a period after it is added, with nothing of the old one's due (its row
    /// was kept: the old job's times since its last run were reported missed and one
    /// ran at once), and a restart resumes the new one.
    pub fn forgets_a_removed_job() {
        let (dir, db, clock, (s, events)) = ticked_at_10("removed");
        assert!(s.remove("tick"));
        clock.set(at(55));
        s.add(tick_job()).unwrap();
        assert_eq!(s.next_fire("tick"), Some(at(65)), "{:?}", s.jobs());
        assert_eq!(s.run_pending(), 0);
        let evs: Vec<JobEvent> = events.try_iter().collect();
        assert!(evs.is_empty(), "the old job's times: {evs:?}");
        clock.set(at(65));
        assert_eq!(started(&settle(&s, &events, 1)), vec![at(65)]);
        drop((s, events));
        clock.set(at(70));
        let (s, events) = on_store(&db, &clock);
        s.add(tick_job()).unwrap();
        assert_eq!(s.next_fire("tick"), Some(at(75)));
        assert!(events.try_iter().next().is_none());
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An hourly cron job whose program stops before its first fire time, and is back
    /// three and a half hours later: the times due while it was down are handled by its
    /// policies (the latest runs, the others are reported coalesced), not skipped
    /// without a word (it resumed from the time of the restart).
    pub fn cron_down_before_its_first_fire() {
        let dir = tempdir("cron-first");
        let db = dir.join("jobs.db");
        let hours = |h: i64| t0() + multiproc::chrono::Duration::hours(h);
        let clock = ManualClock::new(at(10));
        let job = || {
            Job::thread("hourly", Schedule::cron("0 * * * *").unwrap(), || ())
                .misfire_grace(Duration::from_secs(4 * 3600))
        };
        {
            let (s, _events) = on_store(&db, &clock);
            s.add(job()).unwrap();
            assert_eq!(s.next_fire("hourly"), Some(hours(1)));
        }
        clock.set(hours(3) + multiproc::chrono::Duration::minutes(30));
        let (s, events) = on_store(&db, &clock);
        s.add(job()).unwrap();
        let evs = settle(&s, &events, 1);
        assert_eq!(started(&evs), vec![hours(3)], "{evs:?}");
        assert_eq!(
            missed(&evs),
            vec![(hours(1), 2, hours(2), MissReason::Coalesced)]
        );
        assert_eq!(s.next_fire("hourly"), Some(hours(4)));
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A cron job whose last fire time came while its program was down: added again at
    /// the restart, that time is handled (it ran, within its grace), rather than the job
    /// refused as one that never fires. Once it has none left, adding it is refused,
    /// and nothing runs or is reported.
    pub fn a_cron_jobs_last_time_came_while_it_was_down() {
        let dir = tempdir("cron-last");
        let db = dir.join("jobs.db");
        let hours = |h: i64| t0() + multiproc::chrono::Duration::hours(h);
        let clock = ManualClock::new(at(10));
        // Seconds, minutes, hours, day, month, weekday, year: 2026-01-01 01:00 UTC only.
        let job = || {
            Job::thread(
                "new-year",
                Schedule::cron("0 0 1 1 1 * 2026").unwrap(),
                || (),
            )
            .misfire_grace(Duration::from_secs(3600))
        };
        {
            let (s, _events) = on_store(&db, &clock);
            s.add(job()).unwrap();
            assert_eq!(s.next_fire("new-year"), Some(hours(1)));
        }
        clock.set(hours(1) + multiproc::chrono::Duration::minutes(5));
        {
            let (s, events) = on_store(&db, &clock);
            s.add(job())
                .expect("its last time came while it was down: still to handle");
            let evs = settle(&s, &events, 1);
            assert_eq!(started(&evs), vec![hours(1)], "{evs:?}");
            assert_eq!(s.next_fire("new-year"), None);
        }
        clock.set(hours(2));
        for _ in 0..2 {
            let (s, events) = on_store(&db, &clock);
            assert!(matches!(s.add(job()), Err(ScheduleError::NeverFires(_))));
            assert_eq!(s.run_pending(), 0);
            assert!(events.try_iter().next().is_none());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    type Hold = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

    /// A job whose runs count themselves in `runs`, each held (for a second at most)
    /// while `hold` holds true.
    fn held_job(name: &str, schedule: Schedule, runs: &Arc<AtomicU32>, hold: &Hold) -> Job {
        let (runs, hold) = (Arc::clone(runs), Arc::clone(hold));
        Job::thread(name, schedule, move || {
            runs.fetch_add(1, Ordering::SeqCst);
            let (held, released) = &*hold;
            let held = held.lock().unwrap();
            let _ = released
                .wait_timeout_while(held, Duration::from_secs(1), |held| *held)
                .unwrap();
        })
    }

    /// A cron job whose last time was running when its scheduler went: added again
    /// with no time left, its run is reported interrupted (it was refused as never
    /// firing, the run neither reported nor its record ever settled), and the start
    /// after that refuses it.
    pub fn a_spent_cron_jobs_interrupted_run_is_reported() {
        let dir = tempdir("cron-spent");
        let db = dir.join("jobs.db");
        let hours = |h: i64| t0() + multiproc::chrono::Duration::hours(h);
        let clock = ManualClock::new(at(10));
        let runs = Arc::new(AtomicU32::new(0));
        // The run is held (for a second at most) past its scheduler's drop.
        let hold = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
        let once = || Schedule::cron("0 0 1 1 1 * 2026").unwrap();
        let job = || held_job("new-year", once(), &runs, &hold);
        {
            let (s, events) = on_store(&db, &clock);
            s.add(job()).unwrap();
            clock.set(hours(1));
            assert_eq!(s.run_pending(), 1);
            let evs: Vec<_> = events.try_iter().collect();
            assert_eq!(started(&evs), vec![hours(1)]);
            assert!(eventually(T, || runs.load(Ordering::SeqCst) == 1));
        }
        *hold.0.lock().unwrap() = false;
        hold.1.notify_all();
        clock.set(hours(2));
        {
            let (s, events) = on_store(&db, &clock);
            s.add(job())
                .expect("a run left by a gone scheduler is still to report");
            let evs: Vec<_> = events.try_iter().collect();
            assert_eq!(evs.len(), 1, "{evs:?}");
            assert!(matches!(evs[0].kind, EventKind::Interrupted));
            assert_eq!(evs[0].scheduled, hours(1));
            assert_eq!(s.next_fire("new-year"), None);
            assert_eq!(s.run_pending(), 0);
        }
        let (s, events) = on_store(&db, &clock);
        assert!(matches!(s.add(job()), Err(ScheduleError::NeverFires(_))));
        assert!(events.try_iter().next().is_none());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
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

    /// A job on a store whose program stops at `t0` and is back at `back`: the times
    /// due meanwhile are reported as `missed` says (one event), the last runs
    /// (`started`), and nothing is due or reported again after another restart.
    fn downtime_on_a_store(
        name: &str,
        job: impl Fn() -> Job,
        back: DateTime<Utc>,
        missed_once: (DateTime<Utc>, u64, DateTime<Utc>),
        runs: DateTime<Utc>,
    ) {
        let dir = tempdir(name);
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        {
            let (s, _events) = on_store(&db, &clock);
            s.add(job()).unwrap();
        }
        clock.set(back);
        {
            let (s, events) = on_store(&db, &clock);
            s.add(job()).unwrap();
            let evs = settle(&s, &events, 1);
            let (first, count, last) = missed_once;
            assert_eq!(
                missed(&evs),
                vec![(first, count, last, MissReason::TooLate)]
            );
            assert_eq!(started(&evs), vec![runs]);
        }
        // Back at once: nothing is due again, nothing is reported twice.
        let (s, events) = on_store(&db, &clock);
        s.add(job()).unwrap();
        s.run_pending();
        assert_eq!(events.try_iter().count(), 0);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The same long downtime on a store: one update, not a row per missed time, and
    /// the times handled are not handled again after a restart.
    pub fn long_downtime_on_a_store() {
        let ms = |n: i64| t0() + multiproc::chrono::Duration::milliseconds(n);
        downtime_on_a_store(
            "downtime",
            || Job::thread("fast", Schedule::every(Duration::from_millis(1)), || ()),
            ms(3_600_000) + multiproc::chrono::Duration::microseconds(500),
            (ms(1), 3_599_999, ms(3_599_999)),
            ms(3_600_000),
        );
    }

    /// The same for a cron job (its times too late were claimed one record each).
    pub fn a_cron_jobs_long_downtime_on_a_store() {
        downtime_on_a_store(
            "cron-downtime",
            || Job::thread("minutely", Schedule::cron("* * * * *").unwrap(), || ()),
            minutes(25_000) + multiproc::chrono::Duration::seconds(30),
            (minutes(1), 24_999, minutes(24_999)),
            minutes(25_000),
        );
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
        // A good store that another process holds locked past the busy timeout (10 s)
        // says so, and not that it is no job store.
        let good = dir.join("good.db");
        drop(on_store(&good, &ManualClock::new(t0())));
        let holder = rusqlite::Connection::open(&good).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        match JobStore::open(&good) {
            Err(ScheduleError::Store(why)) => {
                assert!(!why.contains("not a job store"), "{why}");
                assert!(why.contains("locked"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        holder.execute_batch("ROLLBACK").unwrap();
        drop(holder);
        assert!(JobStore::open(&good).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    pub fn changed_schedule() {
        let (dir, db, clock, first) = ticked_at_10("changed");
        drop(first);
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

    /// A job removed while it holds a time that a gone scheduler claimed and never
    /// started (recovered from the store, not handed to its jitter yet): the time is
    /// reported as `Removed`, as a run waiting for its jitter is, rather than dropped
    /// with the job's records.
    pub fn a_removed_jobs_recovered_times_are_reported() {
        let dir = tempdir("removed-recovered");
        let db = dir.join("jobs.db");
        let job = || tick_job().jitter(secs(5)).misfire_grace(secs(25));
        let clock = ManualClock::new(t0());
        {
            let (s, events) = on_store(&db, &clock);
            s.add(job()).unwrap();
            clock.set(at(10));
            s.run_pending();
            let evs: Vec<_> = events.try_iter().collect();
            assert!(evs.is_empty(), "claimed, waiting for its jitter: {evs:?}");
        }
        clock.set(at(13));
        let (s, events) = on_store(&db, &clock);
        s.add(job()).unwrap();
        assert!(s.remove("tick"));
        let evs: Vec<_> = events.try_iter().collect();
        assert_eq!(
            missed(&evs),
            vec![(at(10), 1, at(10), MissReason::Removed)],
            "{evs:?}"
        );
        assert!(started(&evs).is_empty(), "{evs:?}");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A scheduler gone (here: dropped) while a run it claimed waited for its jitter:
    /// the next scheduler on the store runs the time if it is within the misfire grace,
    /// and reports it too late otherwise. Nothing is lost.
    pub fn claimed_never_started_is_due_again() {
        let dir = tempdir("unstarted");
        let db = dir.join("jobs.db");
        let job = || tick_job().jitter(secs(5)).misfire_grace(secs(25));
        let claim_and_go = |clock: &ManualClock| {
            let (s, events) = on_store(&db, clock);
            s.add(job()).unwrap();
            clock.set(at(10));
            s.run_pending();
            let evs: Vec<_> = events.try_iter().collect();
            assert!(evs.is_empty(), "claimed, waiting for its jitter: {evs:?}");
        };
        // Back within the grace: the time runs, late.
        let clock = ManualClock::new(t0());
        claim_and_go(&clock);
        clock.set(at(13));
        let (s, events) = on_store(&db, &clock);
        s.add(job()).unwrap();
        s.run_pending(); // handed to its jitter again, from 13 s
        clock.set(at(18)); // past the longest jitter
        let evs = settle(&s, &events, 1);
        assert_eq!(started(&evs), vec![at(10)]);
        assert!(missed(&evs).is_empty(), "{evs:?}");
        drop(s);
        // Back too late: reported with the other times too late, and the rest run as
        // the job says (the latest; the others coalesced).
        std::fs::remove_file(&db).unwrap();
        let clock = ManualClock::new(t0());
        claim_and_go(&clock);
        clock.set(at(50));
        let (s, events) = on_store(&db, &clock);
        s.add(job()).unwrap();
        s.run_pending();
        clock.set(at(55));
        let evs = settle(&s, &events, 1);
        assert_eq!(
            missed(&evs),
            vec![
                (at(10), 2, at(20), MissReason::TooLate),
                (at(30), 2, at(40), MissReason::Coalesced)
            ]
        );
        assert_eq!(started(&evs), vec![at(50)]);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A scheduler that adds the job while the one that claimed a time is alive leaves
    /// the claim alone: the time starts once, by its owner.
    pub fn live_scheduler_keeps_its_claims() {
        let dir = tempdir("live-owner");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let job = || tick_job().jitter(secs(5)).misfire_grace(secs(25));
        let (a, ea) = on_store(&db, &clock);
        a.add(job()).unwrap();
        clock.set(at(10));
        a.run_pending();
        let (b, eb) = on_store(&db, &clock);
        b.add(job()).unwrap();
        clock.set(at(16));
        b.run_pending();
        let evs = settle(&a, &ea, 1);
        assert_eq!(started(&evs), vec![at(10)]);
        let from_b: Vec<_> = eb.try_iter().collect();
        assert!(
            from_b.is_empty(),
            "the live owner's claim was taken: {from_b:?}"
        );
        drop((a, b));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A scheduler sharing its store with one that goes (dropped here; killed alike)
    /// while a time it claimed waits for its jitter runs that time, without the job
    /// being added again.
    pub fn live_scheduler_takes_over_what_a_gone_one_left() {
        takes_over_a_gone_ones_claim("adopt", false, || {
            tick_job().jitter(secs(3)).misfire_grace(secs(25))
        });
    }

    /// The same for a `once` job: the scheduler whose claim of the job's one time was
    /// refused (the other had it) keeps the job while the other holds that time
    /// unsettled, and takes the time over once the other is gone (it dropped the job as
    /// done, as it had nothing left to fire: the time was neither run nor reported by
    /// anyone); once the time is settled, the job is done.
    pub fn live_scheduler_takes_over_a_once_time_a_gone_one_claimed() {
        takes_over_a_gone_ones_claim("adopt-once", true, || {
            Job::thread("tick", Schedule::once(at(10)), || ())
                .jitter(secs(3))
                .misfire_grace(secs(25))
        });
    }

    /// Two schedulers on one store with `job` (due at 10 s, with a jitter of 3 s): the
    /// first claims 10 s and is dropped while it waits out its jitter; the second runs
    /// 10 s, and then (`once`) has nothing of the job left.
    fn takes_over_a_gone_ones_claim(name: &str, once: bool, job: fn() -> Job) {
        let dir = tempdir(name);
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let (a, ea) = on_store(&db, &clock);
        a.add(job()).unwrap();
        let (b, eb) = on_store(&db, &clock);
        b.add(job()).unwrap();
        clock.set(at(10));
        a.run_pending();
        b.run_pending();
        assert_eq!(
            a.jobs()[0].running,
            1,
            "a claimed 10 s and waits out its jitter"
        );
        let kept: Vec<_> = b.jobs().into_iter().map(|j| (j.name, j.running)).collect();
        assert_eq!(kept, [("tick".to_string(), 0)], "b keeps the job");
        if once {
            // Kept only for a's time, it is done here: added again, it starts afresh
            // (not refused as a duplicate).
            b.add(job()).unwrap();
            b.run_pending();
        }
        drop(a);
        assert!(
            ea.try_iter().any(|e| matches!(
                e.kind,
                EventKind::Missed {
                    reason: MissReason::ShutDown,
                    ..
                }
            )),
            "a said it did not start 10 s"
        );
        clock.set(at(16));
        // b takes a's claim over within seconds, and waits out its own jitter for it.
        assert!(eventually(T, || {
            b.run_pending();
            b.jobs().first().is_some_and(|j| j.running == 1)
        }));
        clock.set(at(19));
        let evs = settle(&b, &eb, 1);
        assert_eq!(started(&evs), vec![at(10)]);
        if once {
            // Settled by b: nothing is left of the job anywhere, and b lets it go.
            assert!(eventually(T, || {
                b.run_pending();
                b.jobs().is_empty()
            }));
        }
        drop(b);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A scheduler on the store `MP_DB` claims [`tick_job`]'s 10 s (jittered) and is
    /// dropped while it waits out the jitter; the process stays.
    pub fn helper_claim_then_drop() {
        let clock = ManualClock::new(t0());
        let (s, _events) = on_store(
            std::path::Path::new(&std::env::var("MP_DB").unwrap()),
            &clock,
        );
        s.add(tick_job().jitter(secs(3)).misfire_grace(secs(25)))
            .unwrap();
        clock.set(at(10));
        s.run_pending();
        assert_eq!(
            s.jobs()[0].running,
            1,
            "10 s claimed, waiting out its jitter"
        );
        drop(s);
        say_and_wait_to_be_killed("dropped");
    }

    /// Helper modes' end: says `what` on stdout, then waits for the test to kill it.
    fn say_and_wait_to_be_killed(what: &str) -> ! {
        println!("{what}");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Starts helper `mode` on the store `db`, and waits for it to say `what`.
    fn store_helper(mode: &str, db: &std::path::Path, what: &str) -> common::Helper {
        let h = common::Helper::start_with(
            mode,
            std::env::current_exe().unwrap(),
            &[("MP_DB", db.to_str().unwrap())],
        );
        h.expect(what, T);
        h
    }

    /// A scheduler dropped in a process that goes on lets its claims go: a scheduler of
    /// another process on the store takes its claimed 10 s over and runs it. (Its claims
    /// stayed held for as long as its process lived: the time was neither run nor
    /// reported.)
    pub fn takes_over_what_one_dropped_in_a_live_process_left() {
        let dir = TempDir(tempdir("dropped-live"));
        let db = dir.0.join("jobs.db");
        let mut h = store_helper("store_claim_then_drop", &db, "dropped");
        let clock = ManualClock::new(at(16));
        let (s, events) = on_store(&db, &clock);
        s.add(tick_job().jitter(secs(3)).misfire_grace(secs(25)))
            .unwrap();
        // Taken over, and its own jitter waited out.
        assert!(eventually(T, || {
            s.run_pending();
            s.jobs().first().is_some_and(|j| j.running == 1)
        }));
        clock.set(at(19));
        let evs = settle(&s, &events, 1);
        assert_eq!(started(&evs), vec![at(10)], "{evs:?}");
        let left = h.kill_tree(T);
        assert!(left.is_empty(), "left running after the kill: {left:?}");
    }

    /// A run whose outcome its scheduler never saw (dropped with the run in flight) is
    /// reported interrupted by the next scheduler on the store, once, and not run again.
    pub fn started_run_is_reported_interrupted() {
        let dir = tempdir("interrupted");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let runs = Arc::new(AtomicU32::new(0));
        // The first run is held (for a second at most) past its scheduler's drop, so
        // that it is still in flight when the scheduler settles what it saw end.
        let hold = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
        let job = || held_job("tick", Schedule::every(secs(10)), &runs, &hold);
        {
            let (s, events) = on_store(&db, &clock);
            s.add(job()).unwrap();
            clock.set(at(10));
            assert_eq!(s.run_pending(), 1);
            assert_eq!(
                started(&events.try_iter().collect::<Vec<_>>()),
                vec![at(10)]
            );
            assert!(eventually(T, || runs.load(Ordering::SeqCst) == 1));
            // Dropped without a pass that would see the run end, and before it ends.
        }
        *hold.0.lock().unwrap() = false;
        hold.1.notify_all();
        clock.set(at(12));
        {
            let (s, events) = on_store(&db, &clock);
            s.add(job()).unwrap();
            let evs: Vec<_> = events.try_iter().collect();
            assert_eq!(evs.len(), 1, "{evs:?}");
            assert!(matches!(evs[0].kind, EventKind::Interrupted) && evs[0].scheduled == at(10));
            s.run_pending();
            assert!(
                events.try_iter().next().is_none(),
                "nothing more is due at 12 s"
            );
            clock.set(at(20));
            assert_eq!(started(&settle(&s, &events, 1)), vec![at(20)]);
        }
        // Reported once: the scheduler that reported it settled it.
        let (s, events) = on_store(&db, &clock);
        s.add(job()).unwrap();
        s.run_pending();
        let evs: Vec<_> = events.try_iter().collect();
        assert!(evs.is_empty(), "{evs:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "10 s ran once, and 20 s");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A job removed and added again by one scheduler keeps the record of the run
    /// another scheduler on the store started and has not settled: once that one is
    /// gone, the next scheduler reports the run interrupted. (The add deleted the
    /// record: the run was never reported.)
    pub fn a_job_added_again_keeps_anothers_open_runs() {
        let dir = tempdir("added-again");
        let db = dir.join("jobs.db");
        let clock = ManualClock::new(t0());
        let runs = Arc::new(AtomicU32::new(0));
        // B's run is held (for a second at most) past B's drop.
        let hold = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
        let job = || held_job("tick", Schedule::every(secs(10)), &runs, &hold);
        {
            let (b, _eb) = on_store(&db, &clock);
            b.add(job()).unwrap();
            clock.set(at(10));
            assert_eq!(b.run_pending(), 1);
            assert!(eventually(T, || runs.load(Ordering::SeqCst) == 1));
            let (a, _ea) = on_store(&db, &clock);
            a.add(job()).unwrap();
            assert!(a.remove("tick"));
            a.add(job()).unwrap();
        }
        *hold.0.lock().unwrap() = false;
        hold.1.notify_all();
        clock.set(at(12));
        let (c, events) = on_store(&db, &clock);
        c.add(job()).unwrap();
        let evs: Vec<_> = events.try_iter().collect();
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert!(matches!(evs[0].kind, EventKind::Interrupted) && evs[0].scheduled == at(10));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        drop(c);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Helper mode: a scheduler on the store `MP_DB`, by a manual clock at 20 s, with a
    /// job every 10 s whose runs never end and that allows one at a time: 10 s starts,
    /// 20 s is reported missed (max_instances). Then it waits to be killed, before the
    /// pass that would settle the report.
    pub fn helper_report_then_hang() {
        let clock = ManualClock::new(t0());
        let s = Scheduler::builder()
            .thread_pool(ThreadPool::new(1).unwrap())
            .clock(clock.clone())
            .store(JobStore::open(std::env::var("MP_DB").unwrap()).unwrap())
            .build_manual();
        let events = s.events();
        let job = Job::thread("tick", Schedule::every(secs(10)), || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .misfire_grace(secs(100))
        .max_instances(1)
        .coalesce(Coalesce::All);
        s.add(job).unwrap();
        clock.set(at(20));
        s.run_pending();
        let evs: Vec<_> = events.try_iter().collect();
        assert_eq!(started(&evs), vec![at(10)], "{evs:?}");
        assert_eq!(
            missed(&evs),
            vec![(at(20), 1, at(20), MissReason::MaxInstances)]
        );
        say_and_wait_to_be_killed("reported");
    }

    /// A scheduler killed after it reported a time missed, before the report was
    /// settled in the store: the next scheduler on the store reports the time again (the
    /// first report may not have reached anyone) and does not run it; the run that was
    /// in flight is reported interrupted.
    pub fn reported_time_is_reported_again_not_run() {
        let dir = TempDir(tempdir("reported"));
        let db = dir.0.join("jobs.db");
        let mut h = store_helper("store_report_then_hang", &db, "reported");
        let left = h.kill_tree(T);
        assert!(left.is_empty(), "left running after the kill: {left:?}");
        let clock = ManualClock::new(at(25));
        let (s, events) = on_store(&db, &clock);
        s.add(tick_job().misfire_grace(secs(100))).unwrap();
        s.run_pending();
        let evs: Vec<_> = events.try_iter().collect();
        assert_eq!(
            missed(&evs),
            vec![(at(20), 1, at(20), MissReason::MaxInstances)]
        );
        let interrupted: Vec<_> = evs
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Interrupted))
            .map(|e| e.scheduled)
            .collect();
        assert_eq!(interrupted, vec![at(10)]);
        assert!(started(&evs).is_empty(), "a reported time ran: {evs:?}");
        clock.set(at(30));
        assert_eq!(started(&settle(&s, &events, 1)), vec![at(30)]);
        drop(s);
        // Both settled: a third scheduler has nothing to report.
        let (s, events) = on_store(&db, &clock);
        s.add(tick_job().misfire_grace(secs(100))).unwrap();
        s.run_pending();
        let evs: Vec<_> = events.try_iter().collect();
        assert!(evs.is_empty(), "{evs:?}");
    }

    /// A store of the first layout (no state per fire record) is upgraded when opened
    /// and resumes where it stood; a store of a later layout is refused.
    pub fn layout_1_is_upgraded() {
        let dir = tempdir("layout1");
        let db = dir.join("jobs.db");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch(
                "CREATE TABLE jobs (name TEXT PRIMARY KEY, schedule TEXT NOT NULL,
                     start_ns INTEGER, last_fired_ns INTEGER);
                 CREATE TABLE fires (job TEXT NOT NULL, scheduled_ns INTEGER NOT NULL,
                     PRIMARY KEY (job, scheduled_ns));
                 PRAGMA user_version = 1;",
            )
            .unwrap();
            let ns = |t: DateTime<Utc>| t.timestamp_nanos_opt().unwrap();
            conn.execute(
                "INSERT INTO jobs VALUES ('tick', ?1, ?2, ?3)",
                rusqlite::params![Schedule::every(secs(10)).to_string(), ns(t0()), ns(at(30))],
            )
            .unwrap();
            conn.execute("INSERT INTO fires VALUES ('tick', ?1)", [ns(at(30))])
                .unwrap();
        }
        let clock = ManualClock::new(at(45));
        {
            let (s, events) = on_store(&db, &clock);
            s.add(tick_job()).unwrap();
            assert_eq!(started(&settle(&s, &events, 1)), vec![at(40)]);
        }
        let conn = rusqlite::Connection::open(&db).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let unsettled: i64 = conn
            .query_row("SELECT count(*) FROM fires WHERE state < 2", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(unsettled, 0, "the old record counts as settled");
        conn.pragma_update(None, "user_version", 3).unwrap();
        drop(conn);
        match JobStore::open(&db) {
            Err(ScheduleError::Store(why)) => {
                assert!(why.contains("unknown layout version 3"), "{why}");
            }
            other => panic!("a later layout was opened: {other:?}"),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The random-kill test's job: every 40 ms, each run waits 30 ms of jitter (so a
    /// claimed time often waits to be handed over when the kill lands) and takes 25 ms
    /// on the single thread of its pool (so started runs often wait or run then).
    const PERIOD: Duration = Duration::from_millis(40);
    const JITTER: Duration = Duration::from_millis(30);
    const WORK: Duration = Duration::from_millis(25);
    const GRACE: Duration = Duration::from_millis(250);

    /// Appends one line (one write, to a file opened for appending: lines of processes
    /// never mix, and a kill never leaves half a line).
    fn append(file: &std::fs::File, line: String) {
        use std::io::Write;
        (&*file).write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn ns(t: DateTime<Utc>) -> i64 {
        t.timestamp_nanos_opt().unwrap()
    }

    /// Helper mode: a scheduler on the store `MP_DB` with one job whose run appends
    /// `ran TIME` to `MP_OUT`; every event is appended there too, after each pass and
    /// before the next (the store settles a time's record a pass after its event, so
    /// no report is lost to a kill). Runs until killed, or for `MP_RUN_MS` and then
    /// stops cleanly.
    pub fn helper_store_scheduler() {
        let var = |name: &str| std::env::var(name).unwrap();
        let out = Arc::new(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(var("MP_OUT"))
                .unwrap(),
        );
        let epoch = DateTime::from_timestamp_nanos(var("MP_EPOCH_NS").parse().unwrap());
        let run_for = Duration::from_millis(var("MP_RUN_MS").parse().unwrap());
        let s = Scheduler::builder()
            .thread_pool(ThreadPool::new(1).unwrap())
            .store(JobStore::open(var("MP_DB")).unwrap())
            .build_manual();
        let events = s.events();
        let log = |events: &Receiver<JobEvent>| {
            for e in events.try_iter() {
                let t = ns(e.scheduled);
                let line = match e.kind {
                    EventKind::Missed {
                        count,
                        last,
                        reason,
                    } => format!("missed {t} {count} {} {reason:?}", ns(last)),
                    EventKind::Interrupted => format!("interrupted {t}"),
                    EventKind::Started { attempt } => format!("started {t} {attempt}"),
                    other => format!("event {t} {other:?}"),
                };
                append(&out, line);
            }
        };
        let file = Arc::clone(&out);
        let job = Job::thread_with(
            "tick",
            Schedule::every(PERIOD).starting_at(epoch),
            move |run| {
                std::thread::sleep(WORK);
                append(&file, format!("ran {}", ns(run.scheduled)));
            },
        )
        .jitter(JITTER)
        .misfire_grace(GRACE)
        .coalesce(Coalesce::All)
        .max_instances(3);
        s.add(job).unwrap();
        log(&events);
        println!("ready {}", ns(Utc::now()));
        let begun = std::time::Instant::now();
        while run_for.is_zero() || begun.elapsed() < run_for {
            s.run_pending();
            log(&events);
            std::thread::sleep(Duration::from_millis(2));
        }
        s.shutdown(true);
        log(&events);
        println!("done");
    }

    /// Removes a directory when dropped, whatever the test did.
    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A scheduler process SIGKILLed at random moments, 40 times, each time restarted
    /// on the same store; then one that runs and stops cleanly. No fire time ran twice,
    /// and every fire time up to the last restart was run or reported (missed, or
    /// interrupted: started, outcome unknown).
    pub fn killed_at_random_moments() {
        let dir = TempDir(tempdir("kills"));
        let db = dir.0.join("jobs.db");
        let out = dir.0.join("out.log");
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let epoch = ns(Utc::now()) + 100_000_000;
        let exe = std::env::current_exe().unwrap();
        let start = |run_ms: u64| {
            let env = [
                ("MP_DB", db.to_str().unwrap().to_string()),
                ("MP_OUT", out.to_str().unwrap().to_string()),
                ("MP_EPOCH_NS", epoch.to_string()),
                ("MP_RUN_MS", run_ms.to_string()),
            ];
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            common::Helper::start_with("store_scheduler", exe.clone(), &env)
        };
        // What each kill left behind, read from the store: the times claimed and neither
        // started nor reported (the window this is about) and how far the log had got;
        // how many runs were started and not settled; how many reports not settled.
        let (mut claimed_at_kill, mut unsettled, mut reports) =
            (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..40 {
            let mut h = start(0);
            h.expect("ready", T);
            std::thread::sleep(Duration::from_millis(rng.u64(20..400)));
            let left = h.kill_tree(T);
            assert!(left.is_empty(), "left running after the kill: {left:?}");
            let logged = std::fs::read_to_string(&out).unwrap().len();
            let conn = rusqlite::Connection::open(&db).unwrap();
            let times_in = |states: &str| -> Vec<i64> {
                let mut q = conn
                    .prepare(&format!(
                        "SELECT scheduled_ns FROM fires WHERE state IN ({states})"
                    ))
                    .unwrap();
                q.query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            };
            claimed_at_kill.push((times_in("0"), logged));
            unsettled.push(times_in("1").len());
            reports.push(times_in("3, 4, 5").len());
            drop(conn);
            std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
        }
        let mut h = start(1500);
        let last_restart: i64 = h.expect("ready ", T).parse().unwrap();
        h.expect("done", T);
        assert!(h.wait(T).success(), "{}", h.stderr_now());

        /// What a stretch of the log says: each run (how many times), the runs reported
        /// interrupted, the missed reports (first, count, last).
        #[derive(Default)]
        struct Log {
            ran: std::collections::BTreeMap<i64, u32>,
            interrupted: std::collections::BTreeSet<i64>,
            missed: Vec<(i64, u64, i64)>,
        }
        impl Log {
            fn read(text: &str) -> Log {
                let mut log = Log::default();
                for line in text.lines() {
                    let f: Vec<&str> = line.split(' ').collect();
                    match f[0] {
                        "ran" => *log.ran.entry(f[1].parse().unwrap()).or_default() += 1,
                        "interrupted" => {
                            log.interrupted.insert(f[1].parse().unwrap());
                        }
                        "missed" => log.missed.push((
                            f[1].parse().unwrap(),
                            f[2].parse().unwrap(),
                            f[3].parse().unwrap(),
                        )),
                        _ => {}
                    }
                }
                log
            }
            fn reported_missed(&self, t: i64) -> bool {
                self.missed
                    .iter()
                    .any(|&(first, _, last)| first <= t && t <= last)
            }
        }
        let text = std::fs::read_to_string(&out).unwrap();
        let log = Log::read(&text);
        let context = format!(
            "seed {seed}; claimed, not started, per kill {:?}; started, not settled, per \
             kill {unsettled:?}; reported, not settled, per kill {reports:?}",
            claimed_at_kill
                .iter()
                .map(|(c, _)| c.len())
                .collect::<Vec<_>>()
        );
        let twice: Vec<_> = log.ran.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "ran more than once: {twice:?}; {context}");
        let period = PERIOD.as_nanos() as i64;
        let due: Vec<i64> = (0..)
            .map(|k| epoch + k * period)
            .take_while(|&t| t <= last_restart)
            .collect();
        let unaccounted: Vec<i64> = due
            .iter()
            .copied()
            .filter(|t| !log.ran.contains_key(t) && !log.interrupted.contains(t))
            .collect();
        let lost: Vec<i64> = unaccounted
            .iter()
            .copied()
            .filter(|&t| !log.reported_missed(t))
            .collect();
        assert!(
            lost.is_empty(),
            "{} of {} due times neither ran nor were reported: {lost:?}; {context}",
            lost.len(),
            due.len()
        );
        let reported: u64 = log.missed.iter().map(|m| m.1).sum();
        assert!(
            reported >= unaccounted.len() as u64,
            "{} times reported missed, {} not run; {context}",
            reported,
            unaccounted.len()
        );
        // The kills in the window: a time claimed, neither started nor reported. Such a
        // time had not run when the kill landed, and a later scheduler ran it, or
        // reported it missed, or started it and was killed in turn.
        let (mut kills_in_window, mut window_ran, mut window_missed, mut window_interrupted) =
            (0, 0, 0, 0);
        for (claimed, logged) in &claimed_at_kill {
            let before = Log::read(&text[..*logged]);
            let after = Log::read(&text[*logged..]);
            if !claimed.is_empty() {
                kills_in_window += 1;
            }
            for &t in claimed {
                assert!(
                    !before.ran.contains_key(&t),
                    "{t} ran and was still claimed, not started; {context}"
                );
                if after.ran.contains_key(&t) {
                    window_ran += 1;
                } else if after.reported_missed(t) {
                    window_missed += 1;
                } else if after.interrupted.contains(&t) {
                    // Started by the next scheduler, which was killed in turn.
                    window_interrupted += 1;
                } else {
                    let history: Vec<&str> = text
                        .lines()
                        .filter(|l| l.contains(&t.to_string()))
                        .collect();
                    panic!(
                        "{t}, claimed when its scheduler was killed (log at {logged}), was \
                         lost: {history:?}; {context}"
                    );
                }
            }
        }
        let kills_unsettled = unsettled.iter().filter(|&&n| n > 0).count();
        let kills_reporting = reports.iter().filter(|&&n| n > 0).count();
        println!(
            "{} due times: {} ran, {} more reported interrupted, {} reported missed; of 40 \
             kills, {kills_in_window} landed between a claim and its start (their {} times: \
             {window_ran} run by a later scheduler, {window_missed} reported missed, \
             {window_interrupted} started by one killed in turn), \
             {kills_unsettled} between a start and its settling, {kills_reporting} between \
             a report and its settling ({context})",
            due.len(),
            due.iter().filter(|t| log.ran.contains_key(t)).count(),
            due.iter()
                .filter(|t| !log.ran.contains_key(t) && log.interrupted.contains(t))
                .count(),
            unaccounted.len(),
            window_ran + window_missed + window_interrupted,
        );
        assert!(
            kills_in_window > 0,
            "no kill landed in the window: {context}"
        );
        assert!(kills_unsettled > 0, "no kill left a started run: {context}");
    }
}
