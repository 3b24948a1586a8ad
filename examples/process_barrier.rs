//! Three processes arrive at a barrier one after the other; none goes on until all
//! three are there.
//!
//! The Python program:
//!
//! ```python
//! import multiprocessing, time
//!
//! def worker(barrier, i):
//!     time.sleep(i * 0.5)
//!     print(f"Worker {i} waiting at the barrier")
//!     barrier.wait()
//!     print(f"Worker {i} passed the barrier")
//!
//! if __name__ == "__main__":
//!     barrier = multiprocessing.Barrier(3)
//!     procs = [multiprocessing.Process(target=worker, args=(barrier, i)) for i in range(3)]
//!     for p in procs:
//!         p.start()
//!     for p in procs:
//!         p.join()
//! ```
//!
//! Output (the last three lines in any order):
//!
//! ```text
//! Worker 0 waiting at the barrier
//! Worker 1 waiting at the barrier
//! Worker 2 waiting at the barrier
//! Worker 2 passed the barrier (the last to arrive: the leader)
//! Worker 0 passed the barrier
//! Worker 1 passed the barrier
//! ```
//!
//! A party is known to the barrier once it has waited on it: if a worker that waited
//! before (a loop of phases) dies before it arrives again, Python's would wait forever;
//! here the others get `BarrierError::Broken`. One that dies before its first wait
//! cannot be told from a slow one: `wait_timeout` covers that.

use multiproc::Barrier;
use multiproc_examples::sleep;

fn worker((barrier, i): (Barrier, u32)) {
    sleep(f64::from(i) * 0.5);
    println!("Worker {i} waiting at the barrier");
    let passed = barrier.wait().expect("the barrier broke");
    if passed.is_leader() {
        println!("Worker {i} passed the barrier (the last to arrive: the leader)");
    } else {
        println!("Worker {i} passed the barrier");
    }
}

pub fn run() {
    let barrier = Barrier::new(3).expect("barrier");
    let procs: Vec<_> = (0..3)
        .map(|i| multiproc::spawn(worker, (barrier.clone(), i)).expect("start"))
        .collect();
    for p in procs {
        p.join().expect("worker");
    }
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
