//! The `process_pool` program on a cluster: squares 0 to 9 on whatever worker nodes
//! serve the queue (start `cluster_worker` first), then six tasks of which one crashes
//! its process on every delivery.
//!
//! ```text
//! cargo run --example cluster_client -- redis://127.0.0.1:6379
//! ```
//!
//! The Python (Celery) program:
//!
//! ```python
//! from tutorial import square
//!
//! print([r.get() for r in [square.delay(x) for x in range(10)]])
//! ```
//!
//! Output:
//!
//! ```text
//! [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
//! 1 task failed: the task was dead-lettered: 3 deliveries were lost, its process dead or its worker lost (the cap is 3); last: the worker running the task died (killed by SIGABRT); the others: [0, 1, 4, 16, 25]
//! ```
//!
//! The second line is what Celery does not do: the crashed task is not lost, is not
//! redelivered forever, and its caller is told why.

use multiproc::TaskError;
use multiproc::cluster::Cluster;
use multiproc_examples::cluster_tasks::{SQUARE, SQUARE_OR_CRASH};

pub fn run(url: &str) {
    let cluster = Cluster::connect(url).expect("connect");
    println!("{:?}", cluster.map(SQUARE, 0..10u64).expect("map"));

    let tasks: Vec<_> = (0..6u64)
        .map(|x| cluster.submit(SQUARE_OR_CRASH, x).expect("submit"))
        .collect();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for task in tasks {
        match task.wait() {
            Ok(v) => ok.push(v),
            Err(e @ TaskError::DeadLettered(_)) => failed.push(e),
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    for e in &failed {
        println!("1 task failed: {e}; the others: {ok:?}");
    }
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    run(&url);
}
