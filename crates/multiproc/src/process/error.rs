//! Why a process could not be started, or produced no value.

use std::io;
use std::path::PathBuf;

use super::status::Signal;
use crate::bootstrap::RemotePanic;
use crate::wire::codec::CodecError;

/// What `NotInExecutable` says, wherever a function is refused for it.
pub(crate) const NOT_IN_EXECUTABLE: &str = "the function to run is not part of the main executable";

/// Why a process could not be started. No child is left behind when `spawn` fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// `multiproc::init()` has not been called in this process.
    #[error("multiproc::init() must be called at the start of main before spawning")]
    NotInitialized,
    /// The arguments could not be encoded.
    #[error("could not encode the arguments: {0}")]
    Codec(CodecError),
    /// The function is not part of the main executable (it lives in a shared library),
    /// so another process cannot find it.
    #[error("{}", NOT_IN_EXECUTABLE)]
    NotInExecutable,
    /// Spawning would nest processes deeper than the limit.
    #[error("process nesting is limited to {limit} levels")]
    TooDeep {
        /// The limit.
        limit: u32,
    },
    /// The directory the child should run in is not usable.
    #[error("cannot run in {}: {source}", path.display())]
    CurrentDir {
        /// The directory.
        path: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// Processes cannot be created on this platform.
    #[error("unsupported on this platform: {0}")]
    Unsupported(&'static str),
    /// This process's exit work has begun (the guard from `init()` was dropped at the end
    /// of `main`, or the process is exiting): no process is started any more.
    #[error("the program is exiting: no process can be started any more")]
    Exiting,
    /// The operating system refused (out of processes, descriptors or memory, or the
    /// fork server could not be started).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a child process produced no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The function panicked.
    #[error("{0}")]
    Panicked(RemotePanic),
    /// The process exited (`std::process::exit`) before the function returned.
    #[error("the process exited with code {0} before returning")]
    Exited(i32),
    /// The process was killed by a signal: it crashed (`SIGSEGV`, `SIGABRT`, ...) or was
    /// killed (`SIGKILL`, `SIGTERM`).
    #[error("the process was killed by {0}")]
    Signaled(Signal),
    /// The process ran into one of its resource limits ([`Limits`](crate::Limits)):
    /// which, and how that showed (the signal that ended it, or its own report).
    #[error("the process ran into its {limit} limit: {detail}")]
    LimitExceeded {
        /// The limit.
        limit: super::Limit,
        /// How it showed.
        detail: String,
    },
    /// The process ended before its call started, or how it ended is unknown (its fork
    /// server died, or its status was taken by a handler of the program's own before it
    /// could be read: its call may have run), for the reason given.
    #[error("the process was lost: {0}")]
    Lost(String),
    /// The return value could not be encoded in the child or decoded here.
    #[error("could not transfer the return value: {0}")]
    Codec(CodecError),
    /// `join_timeout` ran out of time; the process is still running.
    #[error("timed out waiting for the process")]
    Timeout,
    /// The process was already joined.
    #[error("the process was already joined")]
    Joined,
    /// This process is not the child's parent: it holds copies of the parent's handle or
    /// views because it was forked from the parent after the child started (by
    /// [`spawn_fork`](crate::Builder::spawn_fork), or a fork of the program's own). Only
    /// the parent joins or waits for its child, as in Python ("can only join a child
    /// process"): the outcome and the exit status come once, to the parent, and a read
    /// here would take them from it. Nothing was read.
    #[error(
        "process {pid} is not a child of this process (this one was forked from its parent \
         since it started): only its parent can join or wait for it"
    )]
    NotParent {
        /// The child's process id.
        pid: u32,
    },
    /// Waiting for the process failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ProcessError {
    /// Whether this is [`ProcessError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProcessError::Timeout)
    }

    /// The remote panic, if the function panicked.
    pub fn panic(&self) -> Option<&RemotePanic> {
        match self {
            ProcessError::Panicked(p) => Some(p),
            _ => None,
        }
    }
}
