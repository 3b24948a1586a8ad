//! Five daemon processes increment a managed value under a managed lock, once a second,
//! while the main process sleeps five seconds and exits.
//!
//! The Python program:
//!
//! ```python
//! import logging, multiprocessing, time
//!
//! logging.basicConfig(level=logging.INFO, format="%(processName)s: %(message)s")
//!
//! def worker(value, lock):
//!     while True:
//!         with lock:
//!             value.value += 1
//!             logging.info("value is now %d", value.value)
//!         time.sleep(1)
//!
//! if __name__ == "__main__":
//!     with multiprocessing.Manager() as manager:
//!         value = manager.Value("i", 0)
//!         lock = manager.Lock()
//!         for _ in range(5):
//!             multiprocessing.Process(target=worker, args=(value, lock), daemon=True).start()
//!         time.sleep(5)
//!         logging.info("value is %d after 5 s", value.value)
//! ```
//!
//! Output (the order of the workers varies; the value counts up to about 25):
//!
//! ```text
//! Process-2: value is now 1
//! Process-3: value is now 2
//! Process-4: value is now 3
//! Process-5: value is now 4
//! Process-6: value is now 5
//! Process-2: value is now 6
//! ...
//! MainProcess: value is 25 after 5 s
//! MainProcess: the manager is stopped; 5 workers saw it go and exited
//! ```
//!
//! (`Process-1` is the manager's server, named `SyncManager` here as in Python.) In
//! Python, when the manager stops under the workers, each dies with a
//! `BrokenPipeError` or `EOFError` traceback, or hangs in `lock.acquire()` if it stopped
//! while they waited. Here every call on a proxy of a stopped manager returns
//! `ManagerError::Disconnected` at once, so the workers notice and exit cleanly.

use multiproc::Manager;
use multiproc::manager::{LockProxy, ValueProxy};
use multiproc_examples::sleep;

/// Increments the value once a second until the manager goes; returns how many times.
fn worker((value, lock): (ValueProxy<i32>, LockProxy)) -> u32 {
    let mut done = 0;
    loop {
        let step = (|| {
            let _held = lock.lock()?.unwrap_or_else(|died| died.into_inner());
            let now = value.get()? + 1;
            value.set(now)?;
            tracing::info!("value is now {now}");
            Ok::<_, multiproc::ManagerError>(())
        })();
        match step {
            Ok(()) => done += 1,
            Err(e) if e.is_disconnected() => return done,
            Err(e) => panic!("manager call failed: {e}"),
        }
        sleep(1.0);
    }
}

pub fn run() {
    let manager = Manager::start().expect("start the manager");
    let value = manager.value(0i32).expect("value");
    let lock = manager.lock().expect("lock");
    let workers: Vec<_> = (0..5)
        .map(|_| {
            multiproc::Builder::new()
                .daemon(true)
                .spawn(worker, (value.clone(), lock.clone()))
                .expect("start a worker")
        })
        .collect();
    sleep(5.0);
    tracing::info!("value is {} after 5 s", value.get().expect("value"));
    manager.shutdown();
    let exited = workers
        .into_iter()
        .filter_map(|mut w| w.join_timeout(std::time::Duration::from_secs(10)).ok())
        .count();
    tracing::info!("the manager is stopped; {exited} workers saw it go and exited");
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init_with(multiproc::log::init);
    run();
}
