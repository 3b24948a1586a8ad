//! The segment tracker: a small process that unlinks the named shared-memory segments
//! a process created if that process ends without unlinking them, however it ends.
//!
//! A process gets one the first time it creates a named segment: its fork server forks
//! it (the server is single-threaded, so the fork is sound, and it already holds the
//! process's death pipe). The tracker leads a session of its own, so a signal to the
//! program's process group (`kill -9 -PGID`, Ctrl-C) does not reach it; it has no
//! parent-death signal, so the server's death does not take it along; it keeps nothing
//! but its connection to the process and the death pipe. It learns of segments created
//! and unlinked (`TRACK`, `UNTRACK`), and when the process is gone (the death pipe
//! hangs up, or the connection closes) it unlinks every name still tracked that refers
//! to the same file (device and inode: a segment re-created under the name by someone
//! else is left alone), and exits. The process's exit work closes the connection and
//! waits for it, before stopping the fork server, which reaps it. The protocol is in
//! `README.md` beside this file.

use std::io;
use std::time::{Duration, Instant};

use super::BOOTSTRAP_FAILURE;
use super::forkserver::{ForkServer, keep_only};
use super::messages::{self, Tracked};
use crate::sys::{self, AsFd, OwnedFd};
use crate::wire::framing::{Conn, Frame};

/// The tracker's name in `ps`.
pub(crate) const NAME: &str = "mp-shmtracker";

/// How long the exit work waits for the tracker to unlink what is left and exit.
const FINISH_GRACE: Duration = Duration::from_secs(2);

/// This process's segment tracker, as the process sees it.
#[derive(Debug)]
pub(crate) struct SegmentTracker {
    pid: u32,
    pidfd: OwnedFd,
    conn: Conn,
}

impl SegmentTracker {
    /// Has `server` fork a tracker for this process, and tells it of `tracked` (what an
    /// earlier tracker, now dead, was tracking).
    pub(crate) fn start(server: &mut ForkServer, tracked: &[Tracked]) -> io::Result<Self> {
        let (ours, theirs) = sys::stream_pair()?;
        let (pid, pidfd) = server.start_tracker(theirs.as_fd())?;
        drop(theirs);
        tracing::trace!(pid, "segment tracker started");
        let mut tracker = SegmentTracker {
            pid,
            pidfd,
            conn: Conn::new(ours, messages::MAX_CONTROL),
        };
        for t in tracked {
            // Not a "peer gone" error: that would read as the server's death.
            tracker.send(messages::TRACK, t).map_err(|e| {
                io::Error::other(format!(
                    "the new segment tracker did not take the list: {e}"
                ))
            })?;
        }
        Ok(tracker)
    }

    /// Tells the tracker of a segment created (`TRACK`) or unlinked (`UNTRACK`) here.
    pub(crate) fn send(&mut self, tag: u8, tracked: &Tracked) -> io::Result<()> {
        let body = postcard::to_stdvec(tracked).map_err(io::Error::other)?;
        self.conn.send(tag, &[&body], &[])
    }

    /// Closes the connection, which has the tracker unlink what is still tracked and
    /// exit, and waits for that (a while at most). Reaps it if it has become this
    /// process's child (this process is a subreaper and the server is gone); otherwise
    /// the server reaps it.
    pub(crate) fn finish(self) {
        let SegmentTracker { pid, pidfd, conn } = self;
        drop(conn);
        let deadline = Instant::now() + FINISH_GRACE;
        let exited =
            sys::wait_readable(&[pidfd.as_fd()], Some(deadline)).is_ok_and(|r| r[0].ready());
        if !exited {
            tracing::trace!(pid, "segment tracker did not exit in time; leaving it");
        }
        let _ = sys::try_reap(pidfd.as_fd());
    }
}

/// The tracker's life, in the process the fork server just forked: `socket` is its
/// connection to the process it tracks for, `death` that process's death pipe.
/// `executed`: the server was started by executing the program, so the command line
/// `ps` shows is the server's to change. Never returns.
pub(crate) fn serve(socket: OwnedFd, death: Option<OwnedFd>, executed: bool) -> ! {
    // Out of the program's process group and session: a signal to the group must not
    // reach it. A fork's child is never a group leader, so this cannot fail.
    let _ = sys::new_session();
    // It must outlive the server (a fork clears the signal; this says so).
    let _ = sys::clear_parent_death_signal();
    let Ok((socket, death)) = keep_only(socket, death) else {
        sys::exit_now(BOOTSTRAP_FAILURE)
    };
    sys::set_name(NAME);
    if executed {
        sys::set_cmdline(NAME);
    }
    let mut conn = Conn::new(socket, messages::MAX_CONTROL);
    let mut tracked: Vec<Tracked> = Vec::new();
    loop {
        let ready = {
            let mut fds = vec![conn.fd()];
            fds.extend(death.as_ref().map(AsFd::as_fd));
            match sys::wait_readable(&fds, None) {
                Ok(ready) => ready,
                Err(_) => break,
            }
        };
        if ready[0].ready() {
            // A frame, and any that arrived with it; the end of the connection (the
            // process exited, or was killed) ends the loop.
            let mut next = conn.recv(None).map(Some);
            while let Ok(Some(frame)) = next {
                apply(&mut tracked, &frame);
                next = conn.buffered_frame();
            }
            if next.is_err() {
                break;
            }
        } else if ready.get(1).is_some_and(|r| r.ready()) {
            // The process is gone, though a copy of its end of the connection lives on
            // (in a child forked at that instant): what it sent is here already.
            while let Ok(frame) = conn.recv(Some(Instant::now())) {
                apply(&mut tracked, &frame);
            }
            break;
        }
    }
    for t in &tracked {
        sys::shm_unlink_if(&t.name, (t.dev, t.ino));
    }
    sys::exit_now(0)
}

/// Applies a `TRACK` or an `UNTRACK`; ignores anything else.
fn apply(tracked: &mut Vec<Tracked>, frame: &Frame) {
    let Ok(t) = postcard::from_bytes::<Tracked>(&frame.body) else {
        return;
    };
    match frame.tag {
        messages::TRACK if !tracked.contains(&t) => tracked.push(t),
        messages::UNTRACK => tracked.retain(|x| *x != t),
        _ => {}
    }
}
