//! A thread pool runs submitted closures; the results are collected as they finish.
//!
//! The Python program:
//!
//! ```python
//! from concurrent.futures import ThreadPoolExecutor, as_completed
//!
//! def square(x):
//!     return x * x
//!
//! with ThreadPoolExecutor(max_workers=4) as executor:
//!     futures = [executor.submit(square, i) for i in range(10)]
//!     results = [f.result() for f in futures]
//! print(results)
//! ```
//!
//! Output:
//!
//! ```text
//! [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
//! a panicking task: process 'MainProcess/ThreadPool-1-2' (pid 4242) panicked: no square for 13
//! ```
//!
//! (The thread named in the second line is whichever ran it, and the pid is this
//! process's; Rust's panic hook also
//! prints the panic to stderr, as it does for any thread.)

use multiproc::ThreadPool;

fn square(x: u64) -> u64 {
    if x == 13 {
        panic!("no square for {x}");
    }
    x * x
}

pub fn run() {
    let pool = ThreadPool::new(4).expect("thread pool");
    let tasks: Vec<_> = (0..10)
        .map(|i| pool.submit(move || square(i)).expect("submit"))
        .collect();
    let results: Vec<u64> = tasks.into_iter().map(|t| t.wait().expect("task")).collect();
    println!("{results:?}");

    // A panic fails its own task; the thread goes on serving others.
    match pool.apply(|| square(13)) {
        Err(e) => println!("a panicking task: {e}"),
        Ok(v) => println!("unexpected: {v}"),
    }
    pool.join();
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    run();
}
