//! A pool of five worker processes squares the numbers 0 to 9.
//!
//! The Python program:
//!
//! ```python
//! from multiprocessing import Pool
//!
//! def square(x):
//!     return x * x
//!
//! if __name__ == "__main__":
//!     with Pool(5) as p:
//!         print(p.map(square, range(10)))
//! ```
//!
//! Output:
//!
//! ```text
//! [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
//! 1 task failed: the worker running the task died (killed by SIGABRT); the others: [0, 1, 4, 16, 25]
//! ```
//!
//! The second line is what Python's `Pool` cannot do: one task crashes its worker, the
//! pool replaces the worker, and only that task fails (CPython's `Pool.map` hangs
//! forever here; `ProcessPoolExecutor` fails every pending task with `BrokenProcessPool`).

use multiproc::{Pool, TaskError};

fn square(x: u64) -> u64 {
    x * x
}

/// Squares, except that 3 crashes the process it runs in, as a failed assertion in
/// native code would.
fn square_or_crash(x: u64) -> u64 {
    if x == 3 {
        std::process::abort();
    }
    x * x
}

pub fn run() {
    let pool = Pool::new(5).expect("pool");
    println!("{:?}", pool.map(square, 0..10).expect("map"));

    let tasks: Vec<_> = (0..6)
        .map(|x| pool.submit(square_or_crash, x).expect("submit"))
        .collect();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for task in tasks {
        match task.wait() {
            Ok(v) => ok.push(v),
            Err(e @ TaskError::WorkerDied(_)) => failed.push(e),
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    for e in &failed {
        println!("1 task failed: {e}; the others: {ok:?}");
    }
    pool.join();
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
