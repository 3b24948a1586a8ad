//! A job runs every ten seconds, and another on a cron expression, while the main
//! process does its own work; then the scheduler shuts down, letting a run in flight
//! finish.
//!
//! The Python program (with the `schedule` package; APScheduler is similar):
//!
//! ```python
//! import logging, schedule, time
//!
//! logging.basicConfig(level=logging.INFO, format="%(processName)s: %(message)s")
//!
//! def report():
//!     logging.info("report: collecting numbers")
//!
//! schedule.every(10).seconds.do(report)
//! for step in range(1, 6):
//!     logging.info("main: working, step %d", step)
//!     schedule.run_pending()
//!     time.sleep(5)
//! ```
//!
//! Output (the cron job's count depends on when the program starts within a minute):
//!
//! ```text
//! MainProcess: main: working, step 1
//! MainProcess: main: working, step 2
//! SchedulerPool-1: report: collecting numbers in a worker process
//! MainProcess: job report: run scheduled for 12:00:10 succeeded
//! MainProcess: main: working, step 3
//! MainProcess: job every-15s: run scheduled for 12:00:15 succeeded
//! ...
//! MainProcess: main: done; 2 reports ran
//! ```
//!
//! Python's `schedule` runs the job in the main thread, only when the program calls
//! `run_pending`, and computes each next run from when the last one ended, so the
//! schedule drifts by the job's duration every time. Here the job runs in a worker
//! process (a crash or a leak stays there), fire times come from the schedule alone,
//! and a run that cannot happen on time is reported, not silently dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use multiproc::Pool;
use multiproc::sched::{EventKind, Job, Schedule, Scheduler};
use multiproc_examples::{paced, sleep};

fn report(_: ()) {
    tracing::info!("report: collecting numbers in a worker process");
}

pub fn run() {
    let pool = Pool::builder()
        .processes(1)
        .name("SchedulerPool")
        .build()
        .expect("start the pool");
    let scheduler = Scheduler::builder()
        .pool(pool)
        .build()
        .expect("start the scheduler");
    let events = scheduler.events();
    scheduler
        .add(Job::process(
            "report",
            Schedule::every(paced(10.0)),
            report,
            (),
        ))
        .expect("add the report job");
    scheduler
        .add(Job::process(
            "every-15s",
            Schedule::cron("*/15 * * * * *").expect("a valid cron expression"),
            report,
            (),
        ))
        .expect("add the cron job");
    let reports = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&reports);
    let watcher = std::thread::spawn(move || {
        for e in events.iter() {
            let when = e.scheduled.format("%H:%M:%S");
            match e.kind {
                EventKind::Succeeded { .. } => {
                    if e.job == "report" {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    tracing::info!("job {}: run scheduled for {when} succeeded", e.job);
                }
                EventKind::Failed { ref error, .. } => {
                    tracing::warn!("job {}: run scheduled for {when} failed: {error}", e.job);
                }
                EventKind::Missed { count, reason, .. } => {
                    tracing::warn!(
                        "job {}: {count} run(s) from {when} missed: {reason:?}",
                        e.job
                    );
                }
                // Starts, and any kind of event added later.
                _ => {}
            }
        }
    });
    for step in 1..=5 {
        tracing::info!("main: working, step {step}");
        sleep(5.0);
    }
    scheduler.shutdown(true);
    watcher.join().expect("the event watcher");
    tracing::info!("main: done; {} reports ran", reports.load(Ordering::SeqCst));
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init_with(multiproc::log::init);
    run();
}
