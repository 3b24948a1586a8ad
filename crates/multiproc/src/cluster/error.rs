//! The cluster's errors: why connecting, submitting or running a worker failed.

use std::io;

use crate::pool::PoolError;
use crate::wire::codec::CodecError;

/// Why a [`Cluster`](super::Cluster) or [`Worker`](super::Worker) call failed.
///
/// A task's own failure is a [`TaskError`](crate::TaskError), returned by its
/// [`Task`](crate::Task); this is about reaching Redis and the calls themselves.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The URL is not a Redis URL this build can use (`redis://`, `rediss://`,
    /// `unix://`, `redis+unix://`).
    #[error("invalid Redis URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, with any password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached (refused, unreachable, timed out, TLS failed).
    #[error("cannot connect to Redis at {addr}: {reason}")]
    Connect {
        /// Where, with any password masked.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server refused the credentials (password or ACL user).
    #[error("Redis refused the credentials: {0}")]
    Auth(String),
    /// A Redis command failed, or the connection broke in the middle of one.
    #[error("Redis: {0}")]
    Redis(String),
    /// The server is reachable but cannot serve for now: it is loading its data after a
    /// restart, is a replica that became read-only in a failover, is out of memory, is
    /// busy running a script, or refuses writes (`MISCONF` after a failed save,
    /// `NOREPLICAS` with fewer replicas than `min-replicas-to-write`). The same call may
    /// succeed later.
    #[error("Redis cannot serve now: {0}")]
    Unavailable(String),
    /// The server is older than the cluster needs (Redis 7.0 or Valkey).
    #[error("the Redis server is too old: {0}")]
    Unsupported(String),
    /// A value could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An encoded task is larger than the configured cap.
    #[error("the encoded task is {size} bytes; the cap is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap ([`ClusterBuilder::max_message`](super::ClusterBuilder::max_message),
        /// or less where the server takes no larger value).
        max: usize,
    },
    /// A setting is out of range, or two tasks were registered under one name.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The worker's local pool could not be started.
    #[error("cannot start the worker's pool: {0}")]
    Pool(#[from] PoolError),
    /// The worker stopped on its own while the node ran: its local pool gave up (its
    /// processes kept ending before they took a task, or could not be started), the
    /// server came to refuse its Redis user the scripts that finish tasks or renew
    /// leases (`NOPERM`), or one of the node's threads panicked (a bug). The node stopped, its tasks handed back
    /// to the queue, or where that could not be done (a thread gone) run again
    /// elsewhere once their leases lapse
    /// ([`WorkerHandle::broken`](super::WorkerHandle::broken)).
    #[error("the worker stopped on its own: {0}")]
    PoolBroken(String),
    /// A task failed (from [`Cluster::apply`](super::Cluster::apply) and
    /// [`Cluster::map`](super::Cluster::map), which wait for tasks).
    #[error(transparent)]
    Task(#[from] crate::TaskError),
    /// The operating system refused (threads, signals).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ClusterError {
    /// Whether the error is about reaching the server (rather than a refused request):
    /// it could not be reached, the connection broke, or its reply did not come in
    /// time. A call that failed so may have been carried out (a submission queued, a
    /// cancel made): the server never said.
    pub fn is_connection(&self) -> bool {
        self.is_unanswered()
    }

    /// Whether the same call may succeed later: the server could not be reached, the
    /// connection broke, or the server cannot serve for now.
    pub(crate) fn is_transient(&self) -> bool {
        self.is_unanswered() || matches!(self, ClusterError::Unavailable(_))
    }

    /// Whether the server refused the command under its user's rules (`NOPERM`): the
    /// same call would be refused again until they change.
    pub(crate) fn is_permission_refusal(&self) -> bool {
        matches!(self, ClusterError::Redis(m) if m.starts_with(NOPERM))
    }

    /// Whether the server did not answer: it could not be reached, the connection
    /// broke, or the reply did not come in time (not a refusal such as out of memory,
    /// which refuses some commands and serves others).
    pub(crate) fn is_unanswered(&self) -> bool {
        match self {
            ClusterError::Connect { .. } => true,
            ClusterError::Redis(m) => m.starts_with(LOST),
            _ => false,
        }
    }
}

/// How the message of a connection that broke mid-command starts.
const LOST: &str = "connection lost: ";

/// A Redis error as a [`ClusterError`].
pub(crate) fn redis_err(e: &redis::RedisError) -> ClusterError {
    match e.kind() {
        redis::ErrorKind::AuthenticationFailed => ClusterError::Auth(e.to_string()),
        _ if e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() => {
            ClusterError::Redis(format!("{LOST}{e}"))
        }
        // LOADING, TRYAGAIN, MASTERDOWN, CLUSTERDOWN and READONLY, as redis-rs sorts
        // them; BUSY (a script runs too long), OOM, MISCONF (writes stopped after a
        // failed save) and NOREPLICAS (too few replicas for `min-replicas-to-write`),
        // which it leaves unsorted: a server that refuses writes for now, whose
        // refused finishes are kept and sent again (they were dropped, and the tasks
        // ran again).
        _ if matches!(
            e.retry_method(),
            redis::RetryMethod::WaitAndRetry | redis::RetryMethod::RefreshSlotsAndRetry
        ) || matches!(e.code(), Some("BUSY" | "OOM" | "MISCONF" | "NOREPLICAS")) =>
        {
            ClusterError::Unavailable(e.to_string())
        }
        // Refused under the user's rules: said with the server's own code, which
        // `is_permission_refusal` looks for.
        _ if e.code() == Some("NOPERM") => {
            ClusterError::Redis(format!("{NOPERM} {}", e.detail().unwrap_or_default()))
        }
        _ => ClusterError::Redis(e.to_string()),
    }
}

/// How the message of a command refused under the user's rules starts.
const NOPERM: &str = "NOPERM";
