//! Why a pool task produced no value, or a pool could not be built.

use std::io;
use std::sync::Arc;

use crate::bootstrap::RemotePanic;
use crate::process::{ExitStatus, SpawnError};
use crate::wire::codec::CodecError;

/// Why a pool task produced no value. Each is about that task only: the pool and its
/// other tasks go on.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked (the worker survives and serves the next task).
    #[error("{0}")]
    Panicked(RemotePanic),
    /// The worker process running the task died: it crashed (`SIGSEGV`, `abort()`), was
    /// killed (`SIGKILL`, the OOM killer) or exited. How it ended, if known.
    #[error("the worker running the task died ({})", match .0 {
        Some(status) => status.to_string(),
        None => "how is unknown".to_string(),
    })]
    WorkerDied(Option<ExitStatus>),
    /// The task ran into a resource limit of its worker
    /// ([`PoolBuilder::limits`](crate::PoolBuilder::limits)): which, and how that showed.
    /// A worker the limit ended is replaced.
    #[error("the task ran into its worker's {limit} limit: {detail}")]
    LimitExceeded {
        /// The limit.
        limit: crate::process::Limit,
        /// How it showed (the signal that ended the worker, or the task's own report).
        detail: String,
    },
    /// The task ran longer than the pool's task timeout; its worker was killed.
    #[error("the task ran longer than the pool's task timeout; its worker was killed")]
    TimedOut,
    /// The task was cancelled.
    #[error("the task was cancelled")]
    Cancelled,
    /// The arguments or the result could not be encoded or decoded.
    #[error("{0}")]
    Codec(CodecError),
    /// The pool was closed or terminated before the task could run.
    #[error("the pool is closed")]
    PoolClosed,
    /// The pool cannot keep workers: its initializer fails in every new worker, or
    /// processes cannot be started. Every task fails this way from then on.
    #[error("the pool is broken: {0}")]
    PoolBroken(String),
    /// The function is not part of the main executable (it lives in a shared library),
    /// so a worker cannot find it: the same error as
    /// [`SpawnError::NotInExecutable`].
    #[error("{}", crate::process::NOT_IN_EXECUTABLE)]
    NotInExecutable,
    /// The operating system refused to hand the task to a worker (out of memory or
    /// descriptors).
    #[error("cannot send the task to a worker: {0}")]
    Io(Arc<io::Error>),
    /// The task returned an error value (a cluster task registered as fallible), or
    /// failed on a remote worker in a way this build has no variant for.
    #[error("the task failed: {0}")]
    Failed(String),
    /// A cluster task was moved to its queue's dead-letter stream: it crashed or lost
    /// its worker on every delivery up to the cap, or no worker could run it (unknown
    /// name, other argument or result types, a message over the size cap). Why, with its
    /// last error.
    #[error("the task was dead-lettered: {0}")]
    DeadLettered(String),
}

/// Equal when they report the same thing: I/O errors by kind and message (an
/// `io::Error` has no equality of its own).
impl PartialEq for TaskError {
    fn eq(&self, other: &Self) -> bool {
        use TaskError::*;
        match (self, other) {
            (Panicked(a), Panicked(b)) => a == b,
            (WorkerDied(a), WorkerDied(b)) => a == b,
            (TimedOut, TimedOut)
            | (Cancelled, Cancelled)
            | (PoolClosed, PoolClosed)
            | (NotInExecutable, NotInExecutable) => true,
            (Codec(a), Codec(b)) => a == b,
            (PoolBroken(a), PoolBroken(b))
            | (Failed(a), Failed(b))
            | (DeadLettered(a), DeadLettered(b)) => a == b,
            (
                LimitExceeded {
                    limit: a,
                    detail: x,
                },
                LimitExceeded {
                    limit: b,
                    detail: y,
                },
            ) => a == b && x == y,
            (Io(a), Io(b)) => a.kind() == b.kind() && a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for TaskError {}

impl TaskError {
    /// How the worker ended, for [`TaskError::WorkerDied`].
    pub fn worker_exit(&self) -> Option<ExitStatus> {
        match self {
            TaskError::WorkerDied(status) => *status,
            _ => None,
        }
    }

    /// Whether the task was dead-lettered ([`TaskError::DeadLettered`]).
    pub fn is_dead_lettered(&self) -> bool {
        matches!(self, TaskError::DeadLettered(_))
    }

    /// The remote panic, for [`TaskError::Panicked`].
    pub fn panic(&self) -> Option<&RemotePanic> {
        match self {
            TaskError::Panicked(p) => Some(p),
            _ => None,
        }
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A setting is out of range (zero workers, ...).
    #[error("invalid pool setting: {0}")]
    InvalidArgument(String),
    /// A worker process could not be started.
    #[error("cannot start a worker: {0}")]
    Spawn(#[from] SpawnError),
    /// The operating system refused (shared memory, descriptors, threads).
    #[error(transparent)]
    Io(#[from] io::Error),
}
