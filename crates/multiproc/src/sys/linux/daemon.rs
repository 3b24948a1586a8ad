//! Detaching a daemon: double fork, new session, directory, umask, standard streams and
//! a locked pid file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

use rustix::fs::{FlockOperation, Mode};
use rustix::process::{Pid, WaitOptions};

use super::launch::{exit_now, fork_if_single_threaded};
use super::proc::{getpid, thread_count};
use crate::supervise::DaemonError;
use crate::supervise::DaemonOptions;
use crate::sys::{Forked, pipe};

fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Io { step, source }
}

fn open_log(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Runs [`daemonize`](crate::daemonize)'s steps. Returns the locked pid file in the
/// daemon; the original process exits, or returns the error.
pub(crate) fn detach(options: &DaemonOptions) -> Result<Option<File>, DaemonError> {
    // Everything that can fail for a reason the caller should see is done here first,
    // where an error can still be returned.
    let pidfile = match &options.pidfile {
        Some(path) => {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(io_err("open the pid file"))?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(DaemonError::AlreadyRunning {
                        path: path.clone(),
                        pid: text.trim().parse().ok(),
                    });
                }
                Err(e) => return Err(io_err("lock the pid file")(e.into())),
            }
            Some(file)
        }
        None => None,
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
    let (status_read, status_write) = pipe().map_err(io_err("make a pipe"))?;

    let Some(forked) = fork_if_single_threaded().map_err(io_err("fork"))? else {
        return Err(DaemonError::Threads(thread_count().unwrap_or(0)));
    };
    if let Forked::Parent(pid) = forked {
        drop(status_write);
        // The first child exits as soon as it has forked the daemon.
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        }
        let mut report = String::new();
        let _ = File::from(status_read).read_to_string(&mut report);
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
    let mut status = File::from(status_write);
    let fail = |status: &mut File, what: &str, e: &dyn std::fmt::Display| -> ! {
        let _ = write!(status, "{what}: {e}");
        exit_now(1)
    };
    if let Err(e) = rustix::process::setsid() {
        fail(&mut status, "setsid", &e);
    }
    match fork_if_single_threaded() {
        Ok(Some(Forked::Child)) => {}
        Ok(Some(Forked::Parent(_))) => exit_now(0),
        Ok(None) => fail(&mut status, "fork", &"the first child has threads"),
        Err(e) => fail(&mut status, "fork", &e),
    }
    if let Err(e) = std::env::set_current_dir(&options.working_dir) {
        let what = format!("change directory to {}", options.working_dir.display());
        fail(&mut status, &what, &e);
    }
    rustix::process::umask(Mode::from_bits_truncate(options.umask));
    let streams = rustix::stdio::dup2_stdin(null.as_fd())
        .and_then(|()| rustix::stdio::dup2_stdout(stdout.as_fd()))
        .and_then(|()| rustix::stdio::dup2_stderr(stderr.as_fd()));
    if let Err(e) = streams {
        fail(&mut status, "redirect the standard streams", &e);
    }
    let mut pidfile = pidfile;
    if let Some(file) = &mut pidfile {
        let written = file
            .set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", getpid()).as_bytes()))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            fail(&mut status, "write the pid file", &e);
        }
    }
    let _ = status.write_all(b"ok");
    Ok(pidfile)
}
