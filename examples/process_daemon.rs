//! Daemon and non-daemon processes: `worker1` is a daemon, `renamed worker` is not.
//!
//! The Python program:
//!
//! ```python
//! import logging, multiprocessing, sys, time
//!
//! logging.basicConfig(level=logging.DEBUG, format="%(processName)s: %(message)s")
//!
//! def worker():
//!     logging.info("Starting")
//!     time.sleep(2)
//!     logging.info("Exiting")
//!
//! if __name__ == "__main__":
//!     daemon = multiprocessing.Process(name="worker1", target=worker, daemon=True)
//!     other = multiprocessing.Process(name="renamed worker", target=worker)
//!     other.start()
//!     daemon.start()
//!     if "--no-join" not in sys.argv:
//!         daemon.join()
//!         other.join()
//! ```
//!
//! Joined (`cargo run --example process_daemon`), both run to the end:
//!
//! ```text
//! renamed worker: Starting
//! worker1: Starting
//! renamed worker: Exiting
//! worker1: Exiting
//! ```
//!
//! Without joins (`cargo run --example process_daemon -- --no-join`), `main` returns at
//! once. At exit, daemon children are terminated first and the others joined, as in
//! Python, so the non-daemon's lines appear and the daemon's do not:
//!
//! ```text
//! renamed worker: Starting
//! renamed worker: Exiting
//! ```
//!
//! (The daemon is terminated microseconds after it was started. Now and then it has
//! already logged `worker1: Starting` by then; it never gets to `Exiting`.)
//!
//! Unlike Python, a daemon child dies with its parent even when the parent is killed
//! with `SIGKILL`.

use multiproc::Builder;
use multiproc_examples::sleep;

fn worker(_: ()) {
    tracing::info!("Starting");
    sleep(2.0);
    tracing::info!("Exiting");
}

/// Starts both workers; joins them if `join`.
pub fn run(join: bool) {
    let other = Builder::new()
        .name("renamed worker")
        .spawn(worker, ())
        .expect("start");
    let daemon = Builder::new()
        .name("worker1")
        .daemon(true)
        .spawn(worker, ())
        .expect("start");
    if join {
        daemon.join().expect("worker1");
        other.join().expect("renamed worker");
    }
    // Otherwise the handles are dropped and this process moves on: when it exits, the
    // daemon is terminated and the other child is joined.
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init_with(multiproc::log::init);
    run(!std::env::args().any(|a| a == "--no-join"));
}
