//! [`daemonize`]: detach a long-running service from its terminal.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::DaemonError;
use crate::bootstrap;
use crate::sys::{self, AsFd, Forked, OwnedFd};

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
    /// removed when the [`Daemon`] is dropped. A relative path is taken from the
    /// directory `daemonize` is called in, not from the daemon's
    /// [`working_dir`](Self::working_dir).
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
    /// The pid file (its absolute path), if there is one.
    pub fn pidfile(&self) -> Option<&Path> {
        self.pidfile.as_ref().map(|(p, _)| p.as_path())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some((path, lock)) = self.pidfile.take() {
            // Removed while the lock is still held. A copy that opened the file before
            // and takes the lock after finds the name gone or another file's, and
            // starts over on the file now there (see `lock_pidfile`). Only if the name
            // is still this file's: one removed meanwhile (an init script's `rm`, a
            // cleaner of /tmp) may have been made again by a newer daemon, which runs on.
            let ours = sys::open_file_id(&lock).ok();
            if ours.is_some() && sys::path_id(&path).ok() == ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Turns this program into a daemon, like python-daemon's `DaemonContext`: it forks,
/// the child starts a new session (`setsid`, so it has no controlling terminal) and forks
/// again (so it can never get one), then changes directory, sets the umask, points stdin
/// at `/dev/null` and stdout and stderr at the given files, and writes and locks the
/// pid file. The original process exits with status 0 once the daemon is set up, or
/// returns the error if setting it up failed (and removes the pid file it had made);
/// in the daemon, this returns. Output still in stdout's buffer (or C's) is written out
/// before the first fork, where it was going, and not again by the daemon.
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
    if !sys::SUPPORTED {
        return Err(DaemonError::Unsupported);
    }
    detach(&options)
}

/// How often [`lock_pidfile`] starts over on a pid file replaced under it before it
/// gives up.
const PIDFILE_TRIES: u32 = 10;

/// Opens and locks the pid file at `path`, made absolute (the daemon changes directory,
/// and removes the file by this name when it ends). A copy that ends removes its pid
/// file while it holds the lock; one that opened the file before that and locks it
/// after holds a file no longer at `path`, and starts over on the file there now.
fn lock_pidfile(path: &Path) -> Result<(PathBuf, File), DaemonError> {
    let path = std::path::absolute(path).map_err(io_err("find the pid file"))?;
    for _ in 0..PIDFILE_TRIES {
        let mut open = OpenOptions::new();
        open.read(true).write(true).create(true).truncate(false);
        sys::set_create_mode(&mut open, 0o644);
        let mut file = open.open(&path).map_err(io_err("open the pid file"))?;
        if !sys::try_lock_file(&file).map_err(io_err("lock the pid file"))? {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(DaemonError::AlreadyRunning {
                path,
                pid: text.trim().parse().ok(),
            });
        }
        let locked = sys::open_file_id(&file).map_err(io_err("lock the pid file"))?;
        match sys::path_id(&path) {
            Ok(now) if now == locked => {
                // A stale pid (a daemon SIGKILLed) goes at once: a second starter that
                // finds the lock taken while this one sets up reads no pid, rather than
                // a dead one that may be another process's by now.
                file.set_len(0).map_err(io_err("lock the pid file"))?;
                return Ok((path, file));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("lock the pid file")(e)),
        }
    }
    Err(DaemonError::Io {
        step: "lock the pid file",
        source: io::Error::other(format!(
            "{} was replaced {PIDFILE_TRIES} times while it was being locked",
            path.display()
        )),
    })
}

fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Io { step, source }
}

fn open_log(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    sys::set_create_mode(&mut options, 0o640);
    options.open(path)
}

/// Runs [`daemonize`]'s steps: the double fork, the new session, directory, umask,
/// standard streams and the locked pid file. Returns the daemon (with its locked pid
/// file) in the daemon; the original process exits, or returns the error.
fn detach(options: &DaemonOptions) -> Result<Daemon, DaemonError> {
    // Everything that can fail for a reason the caller should see is done here first,
    // where an error can still be returned. The pid file is the daemon's from the
    // moment it is locked: a step that fails in this process drops it, which removes
    // the file (still locked), as the daemon's end does; a failed start leaves no empty
    // pid file behind. (The forked processes end with `exit_now`, which drops nothing.)
    let mut daemon = Daemon {
        pidfile: match &options.pidfile {
            Some(path) => Some(lock_pidfile(path)?),
            None => None,
        },
    };
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(io_err("open /dev/null"))?;
    let stdout = match &options.stdout {
        Some(p) => open_log(p).map_err(io_err("open the stdout file"))?,
        None => null.try_clone().map_err(io_err("open /dev/null"))?,
    };
    let stderr = match &options.stderr {
        Some(p) => open_log(p).map_err(io_err("open the stderr file"))?,
        None => null.try_clone().map_err(io_err("open /dev/null"))?,
    };
    let (status_read, status_write) = sys::pipe().map_err(io_err("make a pipe"))?;

    // Output left unwritten would be written twice: by this process as it exits, and by
    // the daemon, into its own stdout, at its next flush.
    sys::flush_stdio();
    let Some(forked) = sys::fork_if_single_threaded().map_err(io_err("fork"))? else {
        return Err(DaemonError::Threads(sys::thread_count().unwrap_or(0)));
    };
    if let Forked::Parent(pid) = forked {
        drop(status_write);
        // The first child exits as soon as it has forked the daemon.
        let _ = sys::wait_child(pid);
        let report = read_report(&status_read);
        return match report.strip_prefix("ok") {
            Some(_) => std::process::exit(0),
            None if report.is_empty() => Err(DaemonError::Io {
                step: "start the daemon",
                source: io::Error::other("the daemon ended before it was set up"),
            }),
            None => Err(DaemonError::Io {
                step: "set up the daemon",
                source: io::Error::other(report),
            }),
        };
    }
    drop(status_read);
    // The first child: a new session, without a terminal, then the daemon proper, which
    // is not a session leader and so can never acquire a controlling terminal.
    let mut status = status_write;
    let fail = |status: &mut OwnedFd, what: &str, e: &dyn std::fmt::Display| -> ! {
        let _ = sys::write_all(status.as_fd(), format!("{what}: {e}").as_bytes());
        sys::exit_now(1)
    };
    if let Err(e) = sys::new_session() {
        fail(&mut status, "setsid", &e);
    }
    match sys::fork_if_single_threaded() {
        Ok(Some(Forked::Child)) => {}
        Ok(Some(Forked::Parent(_))) => sys::exit_now(0),
        Ok(None) => fail(&mut status, "fork", &"the first child has threads"),
        Err(e) => fail(&mut status, "fork", &e),
    }
    if let Err(e) = std::env::set_current_dir(&options.working_dir) {
        let what = format!("change directory to {}", options.working_dir.display());
        fail(&mut status, &what, &e);
    }
    sys::set_umask(options.umask);
    if let Err(e) = sys::redirect_stdio(&null, &stdout, &stderr) {
        fail(&mut status, "redirect the standard streams", &e);
    }
    if let Some((_, file)) = &mut daemon.pidfile {
        let written = file
            .set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", sys::getpid()).as_bytes()))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            fail(&mut status, "write the pid file", &e);
        }
    }
    let _ = sys::write_all(status.as_fd(), b"ok");
    Ok(daemon)
}

/// What the daemon reported on the status pipe: `ok`, or why it failed (empty if it
/// ended without a word).
fn read_report(pipe: &OwnedFd) -> String {
    let mut report = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n @ 1..) = sys::read(pipe.as_fd(), &mut buf) {
        report.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&report).into_owned()
}
