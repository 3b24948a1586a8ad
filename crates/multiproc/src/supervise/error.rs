//! Why a supervisor failed or refused, or `daemonize` failed.

use std::io;

use crate::process::SpawnError;

/// Why a [`Supervisor`](crate::Supervisor) failed or refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// Children crashed more often than the intensity allows: the supervisor stopped
    /// every child and gave up.
    #[error(
        "{restarts} restarts needed within {period:?}, at most {max} allowed; the last for {child} ({exit})"
    )]
    Intensity {
        /// Restarts counted in the period, the one refused included.
        restarts: u32,
        /// The most allowed.
        max: u32,
        /// The period.
        period: std::time::Duration,
        /// The child whose exit was one too many.
        child: String,
        /// How it ended.
        exit: String,
    },
    /// A child could not be started.
    #[error("cannot start child {child:?}: {source}")]
    Spawn {
        /// The child.
        child: String,
        /// Why.
        source: SpawnError,
    },
    /// A setting is out of range (no children, two children of one name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The wait timed out; the supervisor runs on.
    #[error("timed out")]
    Timeout,
    /// Code run on the supervising thread panicked (a child's arguments' `Clone` or
    /// `Serialize`, when a restart encodes them): every child was stopped, and the
    /// supervisor ended.
    #[error("the supervising thread panicked: {0}")]
    Panicked(String),
}

/// Why [`daemonize`](crate::daemonize) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another process holds the pid file's lock: a copy of the service runs already.
    #[error("already running (pid file {path} is locked{})", match .pid { Some(p) => format!(" by pid {p}"), None => String::new() })]
    AlreadyRunning {
        /// The pid file.
        path: std::path::PathBuf,
        /// The pid written in it, if readable.
        pid: Option<u32>,
    },
    /// [`init`](crate::init) was called first: its fork server would not follow the
    /// daemon.
    #[error("daemonize must be called before multiproc::init()")]
    AfterInit,
    /// The process has threads besides the caller, so it cannot fork safely.
    #[error("daemonize must be called while the process has one thread (it has {0})")]
    Threads(usize),
    /// The operating system refused a step (fork, setsid, a file).
    #[error("{step}: {source}")]
    Io {
        /// The step.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Not available on this platform.
    #[error("daemonize is not supported on this platform")]
    Unsupported,
}
