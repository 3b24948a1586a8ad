//! Five threads run a worker that prints, sleeps two seconds and prints again; the main
//! thread joins them. The threading twin of `process_basic`.
//!
//! The Python program:
//!
//! ```python
//! import threading, time
//!
//! def worker(num):
//!     print(f"Worker {num} starting")
//!     time.sleep(2)
//!     print(f"Worker {num} finished")
//!
//! threads = []
//! for i in range(5):
//!     t = threading.Thread(target=worker, args=(i,))
//!     threads.append(t)
//!     t.start()
//! for t in threads:
//!     t.join()
//! print("All threads are done")
//! ```
//!
//! Output (the workers' lines in any order within each group):
//!
//! ```text
//! Worker 0 starting
//! Worker 1 starting
//! Worker 2 starting
//! Worker 3 starting
//! Worker 4 starting
//! Worker 0 finished
//! Worker 1 finished
//! Worker 2 finished
//! Worker 3 finished
//! Worker 4 finished
//! All threads are done
//! ```

use multiproc_examples::sleep;

fn worker(num: u32) {
    println!("Worker {num} starting");
    sleep(2.0);
    println!("Worker {num} finished");
}

pub fn run() {
    let threads: Vec<_> = (0..5)
        .map(|i| std::thread::spawn(move || worker(i)))
        .collect();
    for t in threads {
        t.join().expect("worker thread panicked");
    }
    println!("All threads are done");
}

#[allow(dead_code)]
fn main() {
    run();
}
