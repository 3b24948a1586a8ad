//! The fork server: a single-threaded process that forks children on request.
//!
//! Because it never has a second thread, a child forked from it may do anything (allocate,
//! take locks) before running its call or executing the program afresh. Its children's
//! parent-death signal follows its one thread, so daemon children die with it; it exits
//! (killing its daemon children first) as soon as its connection to the parent closes,
//! which happens when the parent exits or is killed. It reaps its children through
//! pidfds and writes each one's exit status to a pipe the parent reads.
//!
//! Once asked for a child, it keeps one *spare* forked ahead of time: a child that has
//! done the work every child does after a fork (descriptors closed, pages faulted in)
//! and waits for its assignment. The next request goes to the spare, and the server
//! forks the following spare after replying, so the fork is off the requester's path.
//! A spare dies with the server (its parent-death signal is set) until it is assigned.

use std::io;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};

use super::fd;
use super::launch::{
    CHANNEL_FD, DEATH_FD, ServerInfo, become_requested, close_from, exit_now, fork_unchecked,
    place_raw,
};
use super::proc as process;
use crate::bootstrap::messages::{self, ForkReply, ForkRequest, Refusal};
use crate::bootstrap::{self, BOOTSTRAP_FAILURE};
use crate::sys::{Forked, WaitStatus};
use crate::wire::framing::Conn;

/// One child of the server.
struct Kid {
    pid: u32,
    pidfd: OwnedFd,
    daemon: bool,
    /// Where to report its exit; `None` while it is a spare.
    status: Option<OwnedFd>,
    /// The connection a spare waits on for its assignment; `None` once assigned.
    spare: Option<Conn>,
}

/// Runs the fork server on `control` until the parent goes away. Never returns.
/// `executed`: the server was started by executing the program (rather than forked).
pub(crate) fn serve(control: OwnedFd, death: Option<OwnedFd>, executed: bool) -> ! {
    if process::thread_count() != Some(1) {
        super::write_stderr(b"multiproc: the fork server must be single-threaded; exiting\n");
        exit_now(BOOTSTRAP_FAILURE);
    }
    // Descriptors the parent's state held are closed below with everything else; the
    // copies of that state in this process must forget them rather than close them twice.
    bootstrap::forget_inherited_state();
    // Keep stdio, the connection and the death pipe; close whatever else the parent had
    // open, so the server holds nothing the parent later closes.
    let (control, death) = match keep_only(control, death) {
        Ok(kept) => kept,
        Err(e) => {
            super::write_stderr(format!("multiproc: fork server setup failed: {e}\n").as_bytes());
            exit_now(BOOTSTRAP_FAILURE)
        }
    };
    process::set_name("mp-forkserver");
    if executed {
        process::set_cmdline("mp-forkserver");
    }
    // SAFETY: setting signals to be ignored installs no handler code. Ctrl-C goes to the
    // whole foreground group and the parent decides what it means; the server writes
    // statuses to pipes whose reader may be gone, whatever the program chose for
    // SIGPIPE (children get that choice back).
    let sigpipe = unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN)
    };
    super::raise_fd_limit();
    // Never changes in the server; children compare the requested environment with it.
    let env = messages::env_block(std::env::vars_os());
    let info = ServerInfo {
        pid: process::getpid(),
        executed,
        sigpipe,
        env: &env.0,
    };
    let mut conn = Conn::new(control, messages::MAX_CONTROL);
    let mut kids: Vec<Kid> = Vec::new();
    let mut keep_spare = false;
    let mut tracked: Vec<messages::Tracked> = Vec::new();
    loop {
        let missing_spare = keep_spare && !kids.iter().any(|k| k.spare.is_some());
        let ready = {
            let mut fds = Vec::with_capacity(kids.len() + 1);
            fds.push(conn.fd());
            fds.extend(kids.iter().map(|k| k.pidfd.as_fd()));
            // With a spare to make, only look; a request already waiting goes first.
            let deadline = missing_spare.then(std::time::Instant::now);
            match fd::wait_readable(&fds, deadline) {
                Ok(ready) => ready,
                Err(_) => break,
            }
        };
        if missing_spare && !ready.iter().any(|r| r.ready()) {
            match fork_spare(&info, death.as_ref()) {
                Ok(kid) => kids.push(kid),
                // Requests are forked on demand until a spare can be made.
                Err(_) => keep_spare = false,
            }
            continue;
        }
        // Reap from the end, so that removing keeps the indices of those not yet seen.
        for i in (0..kids.len()).rev() {
            if ready[i + 1].ready()
                && let Ok(Some(status)) = process::try_reap(kids[i].pidfd.as_fd())
            {
                let kid = kids.swap_remove(i);
                if let Some(pipe) = kid.status {
                    // The parent may have stopped listening; nothing to do then.
                    let _ = fd::write_all(pipe.as_fd(), &status.to_bytes());
                }
            }
        }
        if ready[0].ready() {
            // The first frame, then any that arrived with it: those are already read
            // from the socket, which polling would not report again.
            let mut next = conn.recv(None).map(Some);
            while let Ok(Some(frame)) = next {
                match frame.tag {
                    messages::FORK => {
                        let reply =
                            start_child(&info, &frame.body, frame.fds, death.as_ref(), &mut kids);
                        let (reply, pidfd): (ForkReply, Option<OwnedFd>) = match reply {
                            Ok((pid, pidfd)) => (Ok(pid), Some(pidfd)),
                            Err(e) => (Err(e), None),
                        };
                        let body = postcard::to_stdvec(&reply).unwrap_or_default();
                        let fds: Vec<_> = pidfd.iter().map(AsFd::as_fd).collect();
                        if let Err(e) = conn.send(messages::FORKED, &[&body], &fds) {
                            next = Err(e.into());
                            break;
                        }
                        keep_spare = true;
                    }
                    messages::TRACK => {
                        if let Ok(t) = postcard::from_bytes::<messages::Tracked>(&frame.body) {
                            tracked.push(t);
                        }
                    }
                    messages::UNTRACK => {
                        if let Ok(t) = postcard::from_bytes::<messages::Tracked>(&frame.body) {
                            tracked.retain(|x| *x != t);
                        }
                    }
                    _ => {}
                }
                next = conn.buffered_frame();
            }
            // The parent closed the connection (it exited or was killed), or broke the
            // protocol: either way, stop.
            if next.is_err() {
                break;
            }
        }
    }
    let doomed: Vec<&Kid> = kids
        .iter()
        .filter(|k| k.daemon || k.spare.is_some())
        .collect();
    for kid in &doomed {
        let _ = process::send_signal(kid.pidfd.as_fd(), process::SIGKILL);
    }
    // The parent is gone: the named segments it created and did not unlink go too.
    for t in &tracked {
        super::mem::shm_unlink_if(&t.name, (t.dev, t.ino));
    }
    // Reap them (for a second at most), so that none is seen running, re-parented,
    // after this server is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    for kid in &doomed {
        // A pidfd becomes readable when its process has exited.
        if fd::wait_readable(&[kid.pidfd.as_fd()], Some(deadline)).is_ok() {
            let _ = process::try_reap(kid.pidfd.as_fd());
        }
    }
    exit_now(0)
}

/// Handles one request: hands it to the spare, or forks a child for it. Returns the
/// child's pid and a pidfd for the requester.
fn start_child(
    info: &ServerInfo<'_>,
    body: &[u8],
    fds: Vec<OwnedFd>,
    death: Option<&OwnedFd>,
    kids: &mut Vec<Kid>,
) -> Result<(u32, OwnedFd), Refusal> {
    let request: ForkRequest = postcard::from_bytes(body)
        .map_err(|e| Refusal::other(format!("malformed request: {e}")))?;
    let [channel, status, stdin, stdout, stderr]: [OwnedFd; 5] =
        fds.try_into().map_err(|fds: Vec<OwnedFd>| {
            Refusal::other(format!("request carried {} descriptors, not 5", fds.len()))
        })?;
    if let Some(kid) = kids.iter_mut().find(|k| k.spare.is_some()) {
        let mut spare = kid.spare.take();
        let passed = [
            channel.as_fd(),
            stdin.as_fd(),
            stdout.as_fd(),
            stderr.as_fd(),
        ];
        // A spare that was killed cannot take it; it is reaped like any child.
        if let Some(Ok(())) = spare
            .as_mut()
            .map(|s| s.send(messages::FORK, &[body], &passed))
        {
            kid.status = Some(status);
            kid.daemon = request.daemon;
            let pidfd = fd::dup(kid.pidfd.as_fd()).map_err(|e| Refusal::os("dup", &e))?;
            return Ok((kid.pid, pidfd));
        }
    }
    // SAFETY: the server is single-threaded (checked when it started; it never creates
    // threads), so the child is a consistent copy.
    match unsafe { fork_unchecked() } {
        Err(e) => Err(Refusal::os("fork failed", &e)),
        Ok(Forked::Child) => {
            drop(status);
            let death = death.and_then(|d| fd::dup(d.as_fd()).ok());
            become_requested(info, &request, channel, [stdin, stdout, stderr], death)
        }
        Ok(Forked::Parent(pid)) => {
            drop((channel, stdin, stdout, stderr));
            let kid = new_kid(pid, Some(status), request.daemon, None)?;
            let pidfd = fd::dup(kid.pidfd.as_fd()).map_err(|e| Refusal::os("dup", &e))?;
            kids.push(kid);
            Ok((pid, pidfd))
        }
    }
}

fn new_kid(
    pid: u32,
    status: Option<OwnedFd>,
    daemon: bool,
    spare: Option<Conn>,
) -> Result<Kid, Refusal> {
    // Our own child: it cannot be reaped before we wait, so the pid is still its.
    let pidfd = process::pidfd_open(pid).map_err(|e| Refusal::os("pidfd_open", &e))?;
    Ok(Kid {
        pid,
        pidfd,
        daemon,
        status,
        spare,
    })
}

/// Forks a spare child that waits for its assignment.
fn fork_spare(info: &ServerInfo<'_>, death: Option<&OwnedFd>) -> io::Result<Kid> {
    let (ours, theirs) = fd::stream_pair()?;
    // SAFETY: as in `start_child`: the server is single-threaded.
    match unsafe { fork_unchecked() }? {
        Forked::Child => {
            drop(ours);
            let death = death.and_then(|d| fd::dup(d.as_fd()).ok());
            spare(info, theirs, death)
        }
        Forked::Parent(pid) => {
            drop(theirs);
            new_kid(
                pid,
                None,
                false,
                Some(Conn::new(ours, messages::MAX_CONTROL)),
            )
            .map_err(Refusal::into_io)
        }
    }
}

/// A spare: waits for one assignment, then becomes that child. Exits if the server goes
/// away or retires it.
fn spare(info: &ServerInfo<'_>, control: OwnedFd, death: Option<OwnedFd>) -> ! {
    if !matches!(process::kill_me_with_parent(info.pid), Ok(true)) {
        exit_now(0);
    }
    let Ok((control, death)) = keep_only(control, death) else {
        exit_now(BOOTSTRAP_FAILURE)
    };
    process::set_name("mp-spare");
    let mut conn = Conn::new(control, messages::MAX_CONTROL);
    let frame = match conn.recv(None) {
        Ok(frame) if frame.tag == messages::FORK => frame,
        _ => exit_now(0),
    };
    let Ok(request) = postcard::from_bytes::<ForkRequest>(&frame.body) else {
        exit_now(BOOTSTRAP_FAILURE)
    };
    let Ok([channel, stdin, stdout, stderr]) = <[OwnedFd; 4]>::try_from(frame.fds) else {
        exit_now(BOOTSTRAP_FAILURE)
    };
    drop(conn);
    become_requested(info, &request, channel, [stdin, stdout, stderr], death)
}

/// Keeps stdio, `control` and `death`; closes every other descriptor. The kept ones are
/// renumbered to 3 and 4.
fn keep_only(control: OwnedFd, death: Option<OwnedFd>) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    let has_death = death.is_some();
    let mut raw = vec![control.into_raw_fd()];
    if let Some(d) = death {
        raw.push(d.into_raw_fd());
    }
    place_raw(&raw)?;
    // The originals (unless they were already in place) are closed with the rest.
    close_from(CHANNEL_FD + if has_death { 2 } else { 1 });
    // SAFETY: `place_raw` put the connection at CHANNEL_FD; nothing else owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    // SAFETY: likewise for the death pipe.
    let death = has_death.then(|| unsafe { OwnedFd::from_raw_fd(DEATH_FD) });
    fd::set_cloexec(control.as_fd(), true)?;
    if let Some(d) = &death {
        fd::set_cloexec(d.as_fd(), true)?;
    }
    Ok((control, death))
}

/// Reads the status a fork server wrote for a child: five bytes, or `None` at end of
/// file (the server died before reporting).
pub(crate) fn read_status(status: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<WaitStatus>> {
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        let n = fd::read(status, &mut buf[got..])?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
    }
    Ok(WaitStatus::from_bytes(buf))
}
