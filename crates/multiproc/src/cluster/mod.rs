//! The Pool's surface on Redis Streams (feature `redis`): [`Worker`] nodes on many hosts
//! run tasks that any [`Cluster`] client submits, with the same [`Task`](crate::Task) handle as
//! the local pools; Python users know the shape from Celery, RQ and Dramatiq.
//!
//! The engine is Redis (7.0 or later, or Valkey) through the `redis`
//! crate: a queue is a stream read by a consumer group, delays and retries wait in a
//! sorted set, results are keys written once. multiproc adds no broker of its own.
//! A server is named by a URL: `redis://[user:password@]host[:port][/db]`, `rediss://`
//! for TLS, `unix:///path`; every connection speaks RESP2, whatever a `protocol`
//! parameter of the URL asks for. A user allowed no `@dangerous` command runs
//! everything: the server's version is read from `INFO`, or from `HELLO` where `INFO`
//! is refused, its limits from `CONFIG GET`, or Redis's defaults where that is
//! refused; where `CLIENT UNBLOCK` is refused, a stop waits for a blocked read to end
//! on its own (its block time) instead of cutting it short.
//! How it works, and why, is in `README.md` beside this file.
//!
//! # Declaring a task
//!
//! A function pointer does not cross machines, so a task is declared once, in code the
//! client and the worker both build, with a name both sides share:
//!
//! ```
//! use multiproc::cluster::TaskDef;
//!
//! pub const SQUARE: TaskDef<u64, u64> = TaskDef::new("demo.square");
//! ```
//!
//! Every message carries the name and a hash of the argument and result types, so a
//! client and a worker built from code that disagrees on them refuse each other with a
//! clear error ([`TaskError::DeadLettered`]) instead of misreading the bytes.
//!
//! # A worker node
//!
//! The user's own binary: [`Worker::builder`] names the tasks it runs and
//! [`WorkerBuilder::run`] serves until `SIGTERM` or `SIGINT`; [`WorkerBuilder::build`]
//! starts a node that [`WorkerHandle::shutdown`] stops.
//! Each task runs in a crash-proof local [`Pool`](crate::Pool): a task that segfaults,
//! aborts or is killed by the OOM killer fails (and is retried or dead-lettered); the
//! node goes on.
//!
//! ```no_run
//! use std::time::Duration;
//! use multiproc::cluster::{TaskDef, Worker};
//!
//! pub const SQUARE: TaskDef<u64, u64> = TaskDef::new("demo.square");
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let _guard = multiproc::init();
//!     Worker::builder("redis://127.0.0.1:6379")
//!         .queue("default")
//!         .processes(4)
//!         .lease(Duration::from_secs(30))
//!         .register(SQUARE, square)
//!         .run()?;
//!     Ok(())
//! }
//! ```
//!
//! # A client
//!
//! ```no_run
//! use std::time::Duration;
//! use multiproc::cluster::{Cluster, TaskDef, TaskOptions};
//!
//! pub const SQUARE: TaskDef<u64, u64> = TaskDef::new("demo.square");
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = Cluster::connect("redis://127.0.0.1:6379")?;
//! let task = cluster.submit(SQUARE, 7)?; // the same Task handle as the pools
//! assert_eq!(task.wait()?, 49);
//! let squares: Vec<u64> = cluster.map(SQUARE, 0..1000u64)?; // batched, in order
//! let later = cluster.submit_with(SQUARE, 8, TaskOptions::new().countdown(Duration::from_secs(5)))?;
//! assert_eq!(later.wait()?, 64);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **At least once.** A task is acked only after its outcome is written. A worker
//!   renews the lease of each task it holds (a third of the lease period, all its tasks
//!   in one call); a task whose lease ran out (its worker died, hangs, or was paused) is
//!   reclaimed by another worker. Acks and result writes are checked against the
//!   owner and the delivery count on the server, so a worker that lost a lease cannot
//!   ack late, and stops that task. Tasks should be idempotent; an idempotency key
//!   ([`TaskOptions::idempotency_key`]) makes submitting the same work twice safe.
//! - **Results are written once**, with a time to live, and the waiting client is woken
//!   through its reply list (no polling).
//! - **Poison tasks end.** A task that crashes its process (or loses its worker) on
//!   every delivery is dead-lettered after [`WorkerBuilder::max_deliveries`], and its
//!   `Task` fails with [`TaskError::DeadLettered`] naming the last error. A message no
//!   worker can run (corrupt, unknown name, other types, too large) is dead-lettered at
//!   once; the worker goes on.
//! - **Delays and retries live in Redis** (a sorted set promoted atomically by any
//!   worker, timed by the server's clock), never in a worker's memory: they survive
//!   restarts of workers and clients.
//!
//! [`TaskError::DeadLettered`]: crate::TaskError::DeadLettered

mod client;
mod conn;
mod envelope;
mod error;
mod keys;
mod scripts;
mod worker;

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use client::{Cluster, ClusterBuilder, ClusterImap, ClusterImapUnordered};
pub use error::ClusterError;
pub use worker::{Worker, WorkerBuilder, WorkerHandle};

pub(crate) use crate::pool::Delay;
pub use crate::pool::TaskOptions;

#[cfg(fuzzing)]
pub(crate) use envelope::decode_any;

/// A task both sides know by name: the argument type `A`, the result type `R`.
///
/// Declare it once as a `const` in code the client and the worker share; register
/// the function on the worker with [`WorkerBuilder::register`].
///
/// # Examples
///
/// ```
/// use multiproc::cluster::TaskDef;
///
/// pub const RESIZE: TaskDef<(String, u32), Vec<u8>> = TaskDef::new("images.resize");
/// assert_eq!(RESIZE.name(), "images.resize");
/// ```
pub struct TaskDef<A, R> {
    name: &'static str,
    version: u64,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for TaskDef<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, R> Copy for TaskDef<A, R> {}

impl<A, R> fmt::Debug for TaskDef<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskDef")
            .field("name", &self.name)
            .field("args", &std::any::type_name::<A>())
            .field("result", &std::any::type_name::<R>())
            .finish()
    }
}

impl<A, R> TaskDef<A, R> {
    /// A task named `name`.
    pub const fn new(name: &'static str) -> Self {
        TaskDef {
            name,
            version: 0,
            _types: PhantomData,
        }
    }

    /// The same task with a schema version of your own: bump it when the encoding of
    /// `A` or `R` changes without their type names changing (a field added to a
    /// struct), so that old and new builds refuse each other.
    pub const fn version(self, version: u64) -> Self {
        TaskDef {
            name: self.name,
            version,
            _types: PhantomData,
        }
    }

    /// The task's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The schema hash every message of this task carries: of the names of `A` and `R`
    /// (as this build's compiler writes them) and the version. `std::any::type_name`
    /// is not promised to stay the same across compiler versions, so clients and
    /// workers built with different toolchains may refuse each other's tasks (they are
    /// dead-lettered, their clients told why): build a queue's programs with one
    /// toolchain, or upgrade clients and workers together. Nor is it unique: two
    /// layouts of one type path (a struct of two versions of a dependency) hash the
    /// same, which [`version`](Self::version) is there to tell apart.
    pub fn schema(&self) -> u64 {
        let mut h = Sha256::new();
        h.update(std::any::type_name::<A>().as_bytes());
        h.update(b"\0->\0");
        h.update(std::any::type_name::<R>().as_bytes());
        h.update(self.version.to_le_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_le_bytes(b)
    }
}

/// The options only a cluster takes (see [`TaskOptions`] for the others).
impl TaskOptions {
    /// Submitting again with the same key (from any client, while the key's record
    /// or the first one's outcome lives: the submitting client's result time to live
    /// from the task's time (its submission, or the end of its countdown, or its eta;
    /// a retry's wait and the worker's result time to live after it), and the record
    /// lapses with the outcome) does not queue the
    /// task again: the new [`Task`](crate::Task) gets the first one's outcome. Once
    /// both are gone (or the record lapsed while the first run went on), a repeat runs
    /// the task again and gets its own outcome. A cluster's option: a local pool
    /// refuses it.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sends the task to this queue instead of the client's. A cluster's option: a
    /// local pool refuses it.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    pub(crate) fn leader(mut self, id: String) -> Self {
        self.leader = Some(id);
        self
    }
}

/// A queue's state ([`Cluster::stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Tasks waiting for a worker.
    pub waiting: u64,
    /// Tasks a worker holds (running, or queued in its local pool).
    pub in_flight: u64,
    /// Tasks waiting for their time (countdown, eta, retry delay).
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead_lettered: u64,
    /// Workers that have sent a heartbeat, most recent first.
    pub workers: Vec<WorkerInfo>,
}

/// A worker node as its heartbeat describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its consumer name (host, pid and a random part).
    pub name: String,
    /// What it says about itself: `host=... pid=... processes=... lease_ms=...`.
    pub description: String,
    /// How long ago its last heartbeat was, by the server's clock. A worker renews
    /// every third of its lease; one silent for much longer is dead or paused.
    pub since_heartbeat: Duration,
}

/// A message in a queue's dead-letter stream ([`Cluster::dead_letters`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its id in the dead-letter stream (for [`Cluster::requeue_dead`]).
    pub id: String,
    /// Why it was dead-lettered, with the task's last error.
    pub reason: String,
    /// The task's id, when the message could be read.
    pub task: Option<String>,
    /// The task's name, when the message could be read.
    pub name: Option<String>,
}
