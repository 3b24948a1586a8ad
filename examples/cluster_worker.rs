//! A worker node of a cluster: serves the tutorial's tasks from a Redis queue until
//! `SIGTERM` or Ctrl-C, in a pool of five processes (`cluster_client` submits them).
//!
//! ```text
//! cargo run --example cluster_worker -- redis://127.0.0.1:6379
//! ```
//!
//! The Python (Celery) program:
//!
//! ```python
//! from celery import Celery
//!
//! app = Celery("tutorial", broker="redis://127.0.0.1:6379", backend="redis://127.0.0.1:6379")
//!
//! @app.task
//! def square(x):
//!     return x * x
//!
//! # celery -A tutorial worker --concurrency 5
//! ```
//!
//! Output (until stopped):
//!
//! ```text
//! MainProcess: worker serving redis://127.0.0.1:6379, queue "default"
//! MainProcess: worker stopped
//! ```
//!
//! Unlike Celery's default, a task whose process crashes is not lost, and one that
//! crashes on every delivery ends in the dead-letter stream instead of coming back
//! forever.

use std::time::Duration;

use multiproc::cluster::Worker;
use multiproc_examples::cluster_tasks::{SQUARE, SQUARE_OR_CRASH, square, square_or_crash};

/// Serves until `SIGTERM`/`SIGINT`.
pub fn serve(url: String) {
    tracing::info!("worker serving {url}, queue \"default\"");
    Worker::builder(&url)
        .processes(5)
        .lease(Duration::from_secs(10))
        .register(SQUARE, square)
        .register(SQUARE_OR_CRASH, square_or_crash)
        .run()
        .expect("worker");
    tracing::info!("worker stopped");
}

#[allow(dead_code)]
fn main() {
    let _guard = multiproc::init_with(multiproc::log::init);
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    serve(url);
}
