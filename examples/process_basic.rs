//! Two named worker processes each log as they start, sleep two seconds, and log as they
//! end, with Python's `%(processName)s: %(message)s` format.
//!
//! The Python program:
//!
//! ```python
//! import logging, multiprocessing, time
//!
//! logging.basicConfig(level=logging.DEBUG, format="%(processName)s: %(message)s")
//!
//! def worker():
//!     logging.info("Starting")
//!     time.sleep(2)
//!     logging.info("Exiting")
//!
//! if __name__ == "__main__":
//!     worker_1 = multiprocessing.Process(name="worker1", target=worker)
//!     worker_2 = multiprocessing.Process(name="renamed worker", target=worker)
//!     worker_1.start()
//!     worker_2.start()
//!     worker_1.join()
//!     worker_2.join()
//! ```
//!
//! Output, on stderr (the two workers' lines in either order within each pair):
//!
//! ```text
//! worker1: Starting
//! renamed worker: Starting
//! worker1: Exiting
//! renamed worker: Exiting
//! ```
//!
//! `init_with(multiproc::log::init)` is the one line of logging setup: it runs in every
//! process, children included, so they log like the parent.

use multiproc::Builder;
use multiproc_examples::sleep;

fn worker(_: ()) {
    tracing::info!("Starting");
    sleep(2.0);
    tracing::info!("Exiting");
}

pub fn run() {
    let worker_1 = Builder::new()
        .name("worker1")
        .spawn(worker, ())
        .expect("start worker1");
    let worker_2 = Builder::new()
        .name("renamed worker")
        .spawn(worker, ())
        .expect("start renamed worker");
    worker_1.join().expect("worker1");
    worker_2.join().expect("renamed worker");
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init_with(multiproc::log::init);
    run();
}
