//! [`daemonize`]: detach a long-running service from its terminal.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::DaemonError;
use crate::{bootstrap, sys};

/// How [`daemonize`] sets the service up.
#[derive(Clone, Debug)]
#[must_use = "options do nothing until given to `daemonize`"]
pub struct DaemonOptions {
    pub(crate) pidfile: Option<PathBuf>,
    pub(crate) working_dir: PathBuf,
    pub(crate) umask: u32,
    pub(crate) stdout: Option<PathBuf>,
    pub(crate) stderr: Option<PathBuf>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            pidfile: None,
            working_dir: PathBuf::from("/"),
            umask: 0o027,
            stdout: None,
            stderr: None,
        }
    }
}

impl DaemonOptions {
    /// The defaults: no pid file, directory `/`, umask `027`, stdout and stderr to
    /// `/dev/null`.
    pub fn new() -> Self {
        DaemonOptions::default()
    }

    /// Writes the daemon's pid to `path` and holds a lock on it for the daemon's life, so
    /// that a second copy refuses to start ([`DaemonError::AlreadyRunning`]). The file is
    /// removed when the [`Daemon`] is dropped.
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pidfile = Some(path.into());
        self
    }

    /// The directory the daemon runs in (default `/`, so it holds no mount busy).
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = dir.into();
        self
    }

    /// The daemon's file mode creation mask (default `0o027`).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = mask;
        self
    }

    /// Appends the daemon's stdout to `path` (created if missing).
    pub fn stdout(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout = Some(path.into());
        self
    }

    /// Appends the daemon's stderr to `path` (created if missing).
    pub fn stderr(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr = Some(path.into());
        self
    }
}

/// The running daemon's hold on its pid file; dropping it removes the file.
#[derive(Debug)]
pub struct Daemon {
    pidfile: Option<(PathBuf, File)>,
}

impl Daemon {
    /// The pid file, if there is one.
    pub fn pidfile(&self) -> Option<&Path> {
        self.pidfile.as_ref().map(|(p, _)| p.as_path())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some((path, _lock)) = self.pidfile.take() {
            // Removed while the lock is still held, so no second copy can take it between.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Turns this program into a daemon, like python-daemon's `DaemonContext`: it forks,
/// the child starts a new session (`setsid`, so it has no controlling terminal) and forks
/// again (so it can never get one), then changes directory, sets the umask, points stdin
/// at `/dev/null` and stdout and stderr at the given files, and writes and locks the
/// pid file. The original process exits with status 0 once the daemon is set up, or
/// returns the error if setting it up failed; in the daemon, this returns.
///
/// Call it first in `main`, before [`init`](crate::init): the daemon then starts its
/// own fork server, and its children are ordinary multiproc children. In a process that
/// multiproc started as a child it does nothing and returns.
///
/// # Errors
///
/// [`DaemonError::AlreadyRunning`] when the pid file is locked by a running copy;
/// [`DaemonError::AfterInit`] after `init`; [`DaemonError::Threads`] when other threads
/// run (forking them is unsound); [`DaemonError::Io`] when a step fails (the error of
/// a step taken in the daemon is reported by the original process).
///
/// # Examples
///
/// ```no_run
/// use multiproc::{DaemonOptions, daemonize};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let _daemon = daemonize(
///         DaemonOptions::new()
///             .pidfile("/run/user/1000/myservice.pid")
///             .stdout("/tmp/myservice.log")
///             .stderr("/tmp/myservice.log"),
///     )?;
///     let _guard = multiproc::init();
///     // ... serve until told to stop
///     Ok(())
/// }
/// ```
pub fn daemonize(options: DaemonOptions) -> Result<Daemon, DaemonError> {
    if bootstrap::started_by_multiproc() {
        return Ok(Daemon { pidfile: None });
    }
    if bootstrap::initialized() {
        return Err(DaemonError::AfterInit);
    }
    let lock = sys::detach(&options)?;
    Ok(Daemon {
        pidfile: options.pidfile.zip(lock),
    })
}
