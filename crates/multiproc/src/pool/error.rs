//! Why a pool task produced no value, or a pool could not be built.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::RemotePanic;
use crate::process::{ExitStatus, SpawnError};
use crate::wire::codec::{self, CodecError};

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
    /// The task ran longer than its timeout (the pool's task timeout, or its own from
    /// [`TaskOptions::timeout`](crate::TaskOptions::timeout)). A process pool kills the
    /// task's worker (and replaces it); a thread pool's closure runs on, its result
    /// unread.
    #[error("the task ran longer than its timeout")]
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
    /// The pool cannot keep workers: its initializer fails in every new worker, a
    /// worker ends before it begins any task it was given (a memory cap too small for
    /// its start-up, say), or processes cannot be started. Every task fails this way
    /// from then on.
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
    /// The task returned an error value (a task submitted with `submit_fallible`, or a
    /// cluster task registered as fallible): the [`Failure`] keeps the error itself.
    /// Also a remote failure this build has no variant for, with its message only.
    #[error("the task failed: {0}")]
    Failed(Failure),
    /// A cluster task was moved to its queue's dead-letter stream: it crashed or lost
    /// its worker on every delivery up to the cap, or no worker could run it (unknown
    /// name, other argument or result types, a message over the size cap). Why, with its
    /// last error.
    #[error("the task was dead-lettered: {0}")]
    DeadLettered(String),
    /// A wait with a timeout ran out of time. After [`Task::wait_timeout`] the task goes
    /// on and its handle can be waited for again; after a pool's `apply_timeout` or
    /// `map_timeout`, which leave nothing to wait with, what had not finished was
    /// cancelled. (Not to be confused with [`TimedOut`](Self::TimedOut): the task itself
    /// ran too long.)
    ///
    /// [`Task::wait_timeout`]: crate::Task::wait_timeout
    #[error("the wait timed out")]
    Timeout,
    /// The task's result was already taken by an earlier wait.
    #[error("the task's result was already taken")]
    Taken,
    /// An option the executor cannot honour (a cluster's queue given to a local pool,
    /// a zero timeout, ...).
    #[error("invalid task option: {0}")]
    InvalidArgument(String),
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
            | (NotInExecutable, NotInExecutable)
            | (Timeout, Timeout)
            | (Taken, Taken) => true,
            (Codec(a), Codec(b)) => a == b,
            (Failed(a), Failed(b)) => a == b,
            (PoolBroken(a), PoolBroken(b))
            | (DeadLettered(a), DeadLettered(b))
            | (InvalidArgument(a), InvalidArgument(b)) => a == b,
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

    /// Whether a wait ran out of time ([`TaskError::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, TaskError::Timeout)
    }

    /// Whether the task was cancelled ([`TaskError::Cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled)
    }

    /// The error a fallible task returned, for [`TaskError::Failed`].
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            TaskError::Failed(f) => Some(f),
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

/// The error value a fallible task returned (`submit_fallible`), as
/// [`TaskError::Failed`] carries it: its `Display` text, its serde encoding, and, when
/// the error was made or decoded in this process, the value itself.
///
/// Get the typed error back with [`decode`](Self::decode) (from its encoding: works
/// whichever pool, process or machine ran the task) or [`downcast_ref`](Self::downcast_ref)
/// (no decoding; the value is there when the task ran on a [`ThreadPool`] or when the
/// pool's engine decoded it to format its message).
///
/// [`ThreadPool`]: crate::ThreadPool
///
/// # Examples
///
/// ```
/// use multiproc::{Failure, TaskError, ThreadPool};
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// enum Parse {
///     Empty,
/// }
///
/// impl std::fmt::Display for Parse {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("empty input")
///     }
/// }
///
/// let pool = ThreadPool::new(1)?;
/// let task = pool.submit_fallible(|| Err::<u32, _>(Parse::Empty))?;
/// match task.wait() {
///     Err(TaskError::Failed(failure)) => {
///         assert_eq!(failure.message(), "empty input");
///         assert_eq!(failure.decode::<Parse>()?, Parse::Empty);
///         assert_eq!(failure.downcast_ref::<Parse>(), Some(&Parse::Empty));
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Failure {
    message: String,
    /// The error's type name (as this build's compiler writes it), when known.
    type_name: Option<String>,
    /// The error's encoding, when it was sent (or made) with one.
    encoded: Option<Arc<[u8]>>,
    /// The error itself, when it was made or decoded in this process.
    value: Option<Arc<dyn Any + Send + Sync>>,
}

impl Failure {
    /// A failure carrying `error`: its text, its encoding and the value.
    ///
    /// # Errors
    ///
    /// The error does not encode (or holds a handle such as a queue, which cannot be
    /// kept apart from its process).
    pub fn new<E>(error: E) -> Result<Failure, CodecError>
    where
        E: Serialize + fmt::Display + Send + Sync + 'static,
    {
        let Some(encoded) = codec::encode(&error)?.into_plain() else {
            return Err(CodecError::new(format!(
                "a task's error of type `{}` holds a handle (a queue, a lock...): it must be plain data",
                std::any::type_name::<E>()
            )));
        };
        Ok(Failure {
            message: error.to_string(),
            type_name: Some(std::any::type_name::<E>().to_string()),
            encoded: Some(encoded.into()),
            value: Some(Arc::new(error)),
        })
    }

    /// A failure known by its text only (a remote failure this build has no variant
    /// for): [`decode`](Self::decode) has nothing to decode.
    pub fn message_only(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            type_name: None,
            encoded: None,
            value: None,
        }
    }

    /// A failure from its parts, as they travel: text, type name, encoding.
    pub(crate) fn from_parts(message: String, type_name: Option<String>, encoded: Vec<u8>) -> Self {
        Failure {
            message,
            type_name,
            encoded: Some(encoded.into()),
            value: None,
        }
    }

    /// The same failure, holding the decoded value (so that `downcast_ref` finds it).
    pub(crate) fn with_value<E: Send + Sync + 'static>(mut self, value: E) -> Self {
        self.value = Some(Arc::new(value));
        self
    }

    /// The error's `Display` text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error's type name, as the compiler of the build that made it writes it (a
    /// hint for logs, not a stable identifier).
    pub fn type_name(&self) -> Option<&str> {
        self.type_name.as_deref()
    }

    /// The error's serde encoding in multiproc's format (postcard's, with integers wider
    /// than a byte written whole), if it has one: [`decode`](Self::decode) reads it.
    pub fn encoded(&self) -> Option<&[u8]> {
        self.encoded.as_deref()
    }

    /// Decodes the error as an `E`.
    ///
    /// # Errors
    ///
    /// The failure carries no encoding (a remote failure known by its text), or its
    /// encoding is not an `E`.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, CodecError> {
        match &self.encoded {
            Some(bytes) => codec::decode::<E>(bytes, Vec::new()),
            None => Err(CodecError::new(format!(
                "the failure \"{}\" carries no encoded error to decode",
                self.message
            ))),
        }
    }

    /// The error as an `E`, without decoding, when this process holds the value: a
    /// [`ThreadPool`](crate::ThreadPool) task's error, or one the pool decoded with the
    /// type the task was submitted with.
    pub fn downcast_ref<E: Any>(&self) -> Option<&E> {
        self.value.as_deref().and_then(|v| v.downcast_ref::<E>())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("message", &self.message)
            .field("type_name", &self.type_name)
            .field("encoded", &self.encoded.as_ref().map(|e| e.len()))
            .finish_non_exhaustive()
    }
}

/// Equal when they say the same thing the same way: text and encoding (the value
/// held, if any, is the decoded encoding).
impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message && self.encoded == other.encoded
    }
}

impl Eq for Failure {}

/// Why a pool could not be built, or did not finish in time.
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
    /// `join_timeout` ran out of time: tasks are still running; the pool is closed and
    /// can be joined again.
    #[error("the pool did not finish in time")]
    Timeout,
}

impl PoolError {
    /// Whether `join_timeout` ran out of time ([`PoolError::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, PoolError::Timeout)
    }
}
