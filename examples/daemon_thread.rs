//! A daemon thread prints every second while the main thread sleeps five seconds; when
//! the main thread ends, the process ends and takes the daemon thread with it.
//!
//! The Python program:
//!
//! ```python
//! import threading, time
//!
//! def background():
//!     while True:
//!         print("daemon thread: still here")
//!         time.sleep(1)
//!
//! threading.Thread(target=background, daemon=True).start()
//! time.sleep(5)
//! print("main thread: done; the daemon thread ends with the process")
//! ```
//!
//! Output (the daemon prints about five times):
//!
//! ```text
//! daemon thread: still here (1)
//! daemon thread: still here (2)
//! daemon thread: still here (3)
//! daemon thread: still here (4)
//! daemon thread: still here (5)
//! main thread: done; the daemon thread ends with the process
//! ```
//!
//! A Rust thread that is not joined is a daemon thread: returning from `main` ends the
//! process and every thread in it. (Python's non-daemon threads, which keep a program
//! alive, are Rust threads that `main` joins.)

use multiproc_examples::sleep;

pub fn run() {
    std::thread::spawn(|| {
        for n in 1.. {
            println!("daemon thread: still here ({n})");
            sleep(1.0);
        }
    });
    sleep(5.0);
    println!("main thread: done; the daemon thread ends with the process");
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
