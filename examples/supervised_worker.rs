//! A worker process that crashes now and then is restarted by a supervisor, with a
//! backoff that grows while it keeps crashing; after a while the main process stops it
//! gracefully.
//!
//! The Python program (a hand-written supervision loop, as supervisord does for a
//! program):
//!
//! ```python
//! import logging, multiprocessing, os, time
//!
//! logging.basicConfig(level=logging.INFO, format="%(processName)s: %(message)s")
//!
//! def worker():
//!     steps = 2 + os.getpid() % 3
//!     for n in range(1, steps + 1):
//!         logging.info("working (%d of %d)", n, steps)
//!         time.sleep(0.5)
//!     raise RuntimeError("something broke")
//!
//! if __name__ == "__main__":
//!     delay, deadline = 0.1, time.time() + 6
//!     while time.time() < deadline:
//!         p = multiprocessing.Process(target=worker, name="worker")
//!         p.start()
//!         p.join()
//!         logging.info("worker exited with %s; restarting in %.1fs", p.exitcode, delay)
//!         time.sleep(delay)
//!         delay = min(delay * 2, 5)
//! ```
//!
//! Output (how many steps each run takes varies):
//!
//! ```text
//! worker: working (1 of 3)
//! worker: working (2 of 3)
//! worker: working (3 of 3)
//! MainProcess: child ended: process 'worker' (pid 4242) panicked at ...: something broke child=worker pid=4242
//! MainProcess: restarting child=worker after=76.2ms
//! worker: working (1 of 2)
//! ...
//! MainProcess: status: worker running (pid 4250), restarted 3 times
//! MainProcess: stopped; the backoff delays were [76ms, 189ms, 378ms]
//! ```
//!
//! The supervisor also counts restarts against an intensity (here at most 10 in a
//! minute, then it gives up and says so rather than restart a broken service forever),
//! resets the backoff once a run has been stable, and stops a child with `SIGTERM`, a
//! grace period, then `SIGKILL` of its whole process group.

use std::time::Duration;

use multiproc::{ChildSpec, ChildState, Supervisor, SupervisorEvent};
use multiproc_examples::{paced, sleep};

fn worker(_: ()) {
    let steps = 2 + std::process::id() % 3;
    for n in 1..=steps {
        tracing::info!("working ({n} of {steps})");
        sleep(0.5);
    }
    panic!("something broke");
}

pub fn run() {
    let supervisor = Supervisor::builder()
        .child(ChildSpec::new("worker", worker, ()).shutdown_grace(Duration::from_secs(2)))
        .backoff(paced(0.1), paced(5.0))
        .reset_after(paced(10.0))
        .intensity(10, Duration::from_secs(60))
        .build()
        .expect("start the supervisor");
    let events = supervisor.events();
    // The supervisor logs each exit and restart itself; the event stream is for code
    // that reacts to them. Here: collect the backoff delays.
    let watcher = std::thread::spawn(move || {
        events
            .iter()
            .filter_map(|e| match e {
                SupervisorEvent::Restarting { after, .. } => Some(after),
                _ => None,
            })
            .collect::<Vec<Duration>>()
    });
    sleep(6.0);
    for child in supervisor.status() {
        match child.state {
            ChildState::Running { pid } => tracing::info!(
                "status: {} running (pid {pid}), restarted {} times",
                child.name,
                child.restarts
            ),
            other => tracing::info!(
                "status: {} {other:?}, restarted {} times",
                child.name,
                child.restarts
            ),
        }
    }
    supervisor
        .shutdown()
        .expect("the supervisor ran within its intensity");
    let delays = watcher.join().expect("the event watcher");
    tracing::info!("stopped; the backoff delays were {delays:.0?}");
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init_with(multiproc::log::init);
    run();
}
