//! A daemon process prints every second while the main process sleeps five seconds;
//! when the main process ends, the daemon is terminated.
//!
//! The Python program:
//!
//! ```python
//! import multiprocessing, time
//!
//! def background():
//!     while True:
//!         print("daemon process: still here")
//!         time.sleep(1)
//!
//! if __name__ == "__main__":
//!     multiprocessing.Process(target=background, daemon=True).start()
//!     time.sleep(5)
//!     print("main process: done; the daemon is terminated as it exits")
//! ```
//!
//! Output (the daemon prints about five times):
//!
//! ```text
//! daemon process: still here (1)
//! ...
//! daemon process: still here (5)
//! main process: done; the daemon (pid 4242) is terminated as it exits
//! ```
//!
//! Python terminates daemon children at a normal exit only: if the main process is
//! killed (`SIGKILL`, the OOM killer), its daemons live on as orphans. A multiproc
//! daemon child is also gone within moments of its parent dying in any way.

use multiproc_examples::sleep;

fn background(_: ()) {
    for n in 1.. {
        println!("daemon process: still here ({n})");
        sleep(1.0);
    }
}

pub fn run() {
    let daemon = multiproc::Builder::new()
        .name("background")
        .daemon(true)
        .spawn(background, ())
        .expect("start the daemon");
    sleep(5.0);
    println!(
        "main process: done; the daemon (pid {}) is terminated as it exits",
        daemon.pid()
    );
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
