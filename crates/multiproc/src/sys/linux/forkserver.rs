//! The fork server: a single-threaded process that forks children on request.
//!
//! Because it never has a second thread, a child forked from it may do anything (allocate,
//! take locks) before running its call or executing the program afresh. Its children's
//! parent-death signal follows its one thread, so daemon children die with it; it exits
//! (killing its daemon children first) as soon as its connection to the parent closes,
//! which happens when the parent exits or is killed. It reaps its children through
//! pidfds and writes each one's exit status to a pipe the parent reads.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::fd;
use super::proc::{self as process, Termination};
use crate::bootstrap::wire::{self, ForkReply, ForkRequest, Launch};
use crate::bootstrap::{self, BOOTSTRAP_FAILURE, SERVER_TOKEN};
use crate::ipc::framing::Conn;

/// Where a child finds its call channel and its parent's death pipe.
const CHANNEL_FD: RawFd = 3;
const DEATH_FD: RawFd = 4;

/// Which side of a fork this is.
#[derive(Debug)]
pub(crate) enum Forked {
    Parent(u32),
    Child,
}

/// Forks, but only if the calling thread is the process's only thread: then no other
/// thread can hold a lock or be mid-update, and none can appear before the fork since
/// only this thread could create it. `Ok(None)` if the process has other threads.
pub(crate) fn fork_if_single_threaded() -> io::Result<Option<Forked>> {
    if process::thread_count() != Some(1) {
        return Ok(None);
    }
    // SAFETY: the process has exactly one thread, the caller, so the child is an exact
    // copy of a consistent process.
    unsafe { fork_unchecked() }.map(Some)
}

/// `fork()`.
///
/// # Safety
///
/// In the child only the calling thread exists. Anything another thread was doing is
/// frozen half-done: a lock it held stays locked forever. The caller must ensure that the
/// child touches no state another thread might have been using at the moment of the
/// fork (or that there is no other thread).
pub(crate) unsafe fn fork_unchecked() -> io::Result<Forked> {
    // SAFETY: `fork` itself is always safe to call; what the child may do afterwards is
    // the caller's obligation, stated above.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid.unsigned_abs())),
    }
}

/// Starts a fork server by executing this program with a server token. `control` is the
/// server's end of its connection, `death` the parent's death pipe for its children.
pub(crate) fn exec_server(control: OwnedFd, death: OwnedFd) -> io::Result<(u32, OwnedFd)> {
    let token = bootstrap::format_token(process::getpid(), CHANNEL_FD, Some(DEATH_FD));
    let (control_raw, death_raw) = (control.as_raw_fd(), death.as_raw_fd());
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("multiproc-forkserver")
        .env(SERVER_TOKEN, token)
        .env_remove(bootstrap::CHILD_TOKEN)
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before `exec` and calls only
    // async-signal-safe functions (`fcntl`, `dup2`); it allocates nothing.
    unsafe {
        command.pre_exec(move || place_raw(&[control_raw, death_raw]));
    }
    let child = command.spawn()?;
    drop((control, death));
    let pid = child.id();
    // The server cannot be reaped before we wait for it, so `pid` is still its pid.
    let pidfd = process::pidfd_open(pid)?;
    Ok((pid, pidfd))
}

/// Moves `fds` to descriptors 3, 4, ... (not close-on-exec). Async-signal-safe: first
/// duplicates every source above the targets so that no source is overwritten before it
/// is copied, then `dup2`s into place.
fn place_raw(fds: &[RawFd]) -> io::Result<()> {
    let mut high = [0 as RawFd; 8];
    if fds.len() > high.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let floor = CHANNEL_FD + high.len() as RawFd;
    for (slot, &fd) in high.iter_mut().zip(fds) {
        // SAFETY: plain descriptor syscall on a descriptor this process owns.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        *slot = dup;
    }
    for (i, &fd) in high.iter().take(fds.len()).enumerate() {
        // SAFETY: as above; `dup2` onto a low descriptor closes whatever was there in this
        // (child) process only.
        if unsafe { libc::dup2(fd, CHANNEL_FD + i as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Closes every descriptor from `first` up.
fn close_from(first: RawFd) {
    // SAFETY: `close_range` only closes descriptors; the ones it closes are not used
    // afterwards (callers own nothing at or above `first` any more).
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= first)
            .collect(),
        Err(_) => return,
    };
    for fd in open {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
}

/// Takes ownership of a descriptor that this process inherited at a known number.
pub(crate) fn adopt_inherited_fd(raw: RawFd) -> Option<OwnedFd> {
    // SAFETY: `F_GETFD` only inspects the descriptor table.
    if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open, and this process was started with it for exactly
    // this purpose (the token names it); nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    fd::set_cloexec(fd.as_fd(), true).ok()?;
    Some(fd)
}

/// One child of the server.
struct Kid {
    pidfd: OwnedFd,
    status: OwnedFd,
    daemon: bool,
}

/// Runs the fork server on `control` until the parent goes away. Never returns.
pub(crate) fn serve(control: OwnedFd, death: Option<OwnedFd>) -> ! {
    if process::thread_count() != Some(1) {
        eprintln!("multiproc: the fork server must be single-threaded; exiting");
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
            eprintln!("multiproc: fork server setup failed: {e}");
            exit_now(BOOTSTRAP_FAILURE)
        }
    };
    process::set_name("mp-forkserver");
    // Ctrl-C goes to the whole foreground group; the parent decides what it means.
    // SAFETY: setting a signal to be ignored installs no handler code.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    // The server writes statuses to pipes whose reader may be gone; whatever the program
    // chose for SIGPIPE, that must not kill the server. Children get the choice back.
    // SAFETY: as above.
    let sigpipe = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    raise_fd_limit();
    let me = process::getpid();
    // Never changes in the server; children compare the requested environment with it.
    let env = wire::env_block(std::env::vars_os());
    let mut conn = Conn::new(control, wire::MAX_CONTROL);
    let mut kids: Vec<Kid> = Vec::new();
    loop {
        let ready = {
            let mut fds = Vec::with_capacity(kids.len() + 1);
            fds.push(conn.fd());
            fds.extend(kids.iter().map(|k| k.pidfd.as_fd()));
            match fd::wait_readable(&fds, None) {
                Ok(ready) => ready,
                Err(_) => break,
            }
        };
        // Reap first, newest last, so indices stay valid while removing.
        for i in (0..kids.len()).rev() {
            if ready[i + 1].ready()
                && let Ok(Some(status)) = process::try_reap(kids[i].pidfd.as_fd())
            {
                let kid = kids.swap_remove(i);
                // The parent may have stopped listening; nothing to do then.
                let _ = fd::write_all(kid.status.as_fd(), &status.to_bytes());
            }
        }
        if ready[0].ready() {
            match conn.recv(None) {
                Ok(frame) if frame.tag == wire::FORK => {
                    let server = Server {
                        pid: me,
                        sigpipe,
                        env: &env.0,
                        death: death.as_ref(),
                    };
                    let reply = fork_child(&server, &frame.body, frame.fds, &mut kids);
                    let (reply, pidfd): (ForkReply, Option<OwnedFd>) = match reply {
                        Ok((pid, pidfd)) => (Ok(pid), Some(pidfd)),
                        Err(e) => (Err(e), None),
                    };
                    let body = postcard::to_stdvec(&reply).unwrap_or_default();
                    let fds: Vec<_> = pidfd.iter().map(AsFd::as_fd).collect();
                    if conn.send(wire::FORKED, &[&body], &fds).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                // The parent closed the connection (it exited or was killed), or broke
                // the protocol: either way, stop.
                Err(_) => break,
            }
        }
    }
    for kid in kids.iter().filter(|k| k.daemon) {
        let _ = process::send_signal(kid.pidfd.as_fd(), process::SIGKILL);
    }
    exit_now(0)
}

/// Handles one request: forks a child and sets it up. In the parent (the server),
/// returns the child's pid and a pidfd for the requester.
/// What a child takes from the server it was forked from.
struct Server<'a> {
    pid: u32,
    /// The program's own SIGPIPE disposition, which the server replaced.
    sigpipe: libc::sighandler_t,
    /// The server's environment, as a block.
    env: &'a [u8],
    death: Option<&'a OwnedFd>,
}

fn fork_child(
    server: &Server<'_>,
    body: &[u8],
    fds: Vec<OwnedFd>,
    kids: &mut Vec<Kid>,
) -> Result<(u32, OwnedFd), String> {
    let request: ForkRequest =
        postcard::from_bytes(body).map_err(|e| format!("malformed request: {e}"))?;
    let [channel, status, stdin, stdout, stderr]: [OwnedFd; 5] = fds
        .try_into()
        .map_err(|fds: Vec<OwnedFd>| format!("request carried {} descriptors, not 5", fds.len()))?;
    // SAFETY: the server is single-threaded (checked when it started; it never creates
    // threads), so the child is a consistent copy.
    match unsafe { fork_unchecked() } {
        Err(e) => Err(format!("fork failed: {e}")),
        Ok(Forked::Child) => {
            drop(status);
            child_after_fork(server, request, channel, [stdin, stdout, stderr])
        }
        Ok(Forked::Parent(pid)) => {
            drop((channel, stdin, stdout, stderr));
            // Our own child: it cannot be reaped before we wait, so the pid is still its.
            let pidfd = process::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
            let theirs = fd::dup(pidfd.as_fd()).map_err(|e| format!("dup: {e}"))?;
            kids.push(Kid {
                pidfd,
                status,
                daemon: request.daemon,
            });
            Ok((pid, theirs))
        }
    }
}

/// The child, right after the server forked it: set up descriptors, signals, name,
/// directory and environment, then run the call or execute the program afresh.
fn child_after_fork(
    server: &Server<'_>,
    request: ForkRequest,
    channel: OwnedFd,
    stdio: [OwnedFd; 3],
) -> ! {
    let server_pid = server.pid;
    let death = server.death.and_then(|d| fd::dup(d.as_fd()).ok());
    // SAFETY: restores the default action, and the program's own choice for SIGPIPE
    // (which is a disposition, not handler code: `SIG_IGN` or `SIG_DFL` before `main`).
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGPIPE, server.sigpipe);
    }
    if request.daemon {
        // A daemon dies with the server, which dies with the parent.
        match process::kill_me_with_parent(server_pid) {
            Ok(true) => {}
            _ => exit_now(BOOTSTRAP_FAILURE),
        }
    }
    let [stdin, stdout, stderr] = stdio;
    let has_death = death.is_some();
    let mut order: Vec<RawFd> = vec![
        stdin.into_raw_fd(),
        stdout.into_raw_fd(),
        stderr.into_raw_fd(),
        channel.into_raw_fd(),
    ];
    if let Some(death) = death {
        order.push(death.into_raw_fd());
    }
    if let Err(e) = place_at_zero(&order) {
        eprintln!("multiproc: child setup failed: {e}");
        exit_now(BOOTSTRAP_FAILURE);
    }
    close_from(order.len() as RawFd);
    // SAFETY: `place_at_zero` put the call channel at CHANNEL_FD; nothing else owns it.
    let channel = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    // SAFETY: likewise for the death pipe at DEATH_FD, when there is one.
    let death = has_death.then(|| unsafe { OwnedFd::from_raw_fd(DEATH_FD) });
    process::set_name(&request.name);
    if let Some(dir) = &request.cwd {
        let dir = OsString::from_vec(dir.0.clone());
        if let Err(e) = std::env::set_current_dir(&dir) {
            let why = format!("cannot change directory to {}: {e}", dir.to_string_lossy());
            bootstrap::fail_on(channel, &why);
        }
    }
    match request.launch {
        Launch::Fork => {
            // SAFETY: this process has one thread (forked from the single-threaded
            // server), so nothing can read the environment concurrently.
            unsafe { replace_env(&request.env.0, Some(server.env)) };
            let _ = fd::set_cloexec(channel.as_fd(), true);
            if let Some(death) = &death {
                let _ = fd::set_cloexec(death.as_fd(), true);
            }
            bootstrap::run_forked(channel, death)
        }
        Launch::Exec => {
            let token =
                bootstrap::format_token(server_pid, CHANNEL_FD, has_death.then_some(DEATH_FD));
            let why = exec_self(&request.name, &request.env.0, &token);
            bootstrap::fail_on(channel, &format!("cannot execute /proc/self/exe: {why}"))
        }
    }
}

/// What a child forked straight from its parent sets up before running its function.
#[derive(Debug)]
pub(crate) struct ForkedChildSetup {
    pub(crate) stdio: [OwnedFd; 3],
    pub(crate) cwd: Option<std::path::PathBuf>,
    /// The complete new environment (a block), when the builder changed it.
    pub(crate) env: Option<wire::Bytes>,
    /// Ask for `SIGKILL` when the forking thread (the parent's main thread) ends.
    pub(crate) parent_death: Option<u32>,
    /// Death pipe to watch on a thread of its own.
    pub(crate) watchdog: Option<OwnedFd>,
}

/// Sets up a child forked straight from its parent (`Builder::spawn_fork`).
pub(crate) fn setup_forked_child(setup: ForkedChildSetup) -> Result<(), String> {
    if let Some(parent) = setup.parent_death
        && !process::kill_me_with_parent(parent).map_err(|e| format!("prctl: {e}"))?
    {
        return Err("the parent exited during the fork".into());
    }
    let raw = setup.stdio.map(IntoRawFd::into_raw_fd);
    place_at_zero(&raw).map_err(|e| format!("stdio setup: {e}"))?;
    if let Some(dir) = &setup.cwd {
        std::env::set_current_dir(dir)
            .map_err(|e| format!("cannot change directory to {}: {e}", dir.display()))?;
    }
    if let Some(env) = &setup.env {
        // SAFETY: the caller of `spawn_fork` guarantees that no other thread held the
        // environment at the fork, and the child has only this thread so far.
        unsafe { replace_env(&env.0, None) };
    }
    if let Some(death) = setup.watchdog {
        process::spawn_death_watchdog(death).map_err(|e| format!("watchdog thread: {e}"))?;
    }
    Ok(())
}

/// Moves `fds` to descriptors 0, 1, 2, ... in order (not close-on-exec).
fn place_at_zero(fds: &[RawFd]) -> io::Result<()> {
    let floor = 16 as RawFd;
    let mut high = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: descriptor syscalls on descriptors this process owns.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor.max(fds.len() as RawFd)) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was released by `into_raw_fd` and is now duplicated; closing the
        // original is what the caller meant.
        unsafe { libc::close(fd) };
        high.push(dup);
    }
    for (i, &fd) in high.iter().enumerate() {
        // SAFETY: as above; `dup2` replaces descriptor `i` of this child only.
        if unsafe { libc::dup2(fd, i as RawFd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the environment exactly `env` (an environment block), touching only the
/// variables that differ. `current` is this process's environment as a block, when known.
///
/// # Safety
///
/// No other thread may read or write the environment meanwhile.
unsafe fn replace_env(env: &[u8], current: Option<&[u8]>) {
    let current = match current {
        // The usual case: the parent's environment is what the server started with.
        Some(current) if current == env => return,
        Some(current) => current.to_vec(),
        None => wire::env_block(std::env::vars_os()).0,
    };
    let wanted: BTreeMap<&[u8], &[u8]> = wire::env_entries(env).collect();
    let had: BTreeMap<&[u8], &[u8]> = wire::env_entries(&current).collect();
    for key in had.keys().filter(|k| !wanted.contains_key(*k)) {
        // SAFETY: the caller guarantees no concurrent environment access.
        unsafe { std::env::remove_var(OsStr::from_bytes(key)) };
    }
    for (key, value) in &wanted {
        if had.get(key) != Some(value) {
            // SAFETY: as above.
            unsafe { std::env::set_var(OsStr::from_bytes(key), OsStr::from_bytes(value)) };
        }
    }
}

/// Executes `/proc/self/exe` with `env` plus the child token; returns only on failure.
fn exec_self(name: &str, env: &[u8], token: &str) -> io::Error {
    let argv0 = CString::new(name.replace('\0', " ")).unwrap_or_default();
    let mut envp: Vec<CString> = wire::env_entries(env)
        .filter(|(k, _)| *k != bootstrap::CHILD_TOKEN.as_bytes())
        .filter_map(|(k, v)| CString::new([k, b"=", v].concat()).ok())
        .collect();
    if let Ok(t) = CString::new(format!("{}={token}", bootstrap::CHILD_TOKEN)) {
        envp.push(t);
    }
    let argv = [argv0.as_ptr(), std::ptr::null()];
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: every pointer is to a NUL-terminated string kept alive above, and both
    // arrays end with a null pointer.
    unsafe {
        libc::execve(
            c"/proc/self/exe".as_ptr(),
            argv.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    };
    io::Error::last_os_error()
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

/// Each child costs the server two descriptors; lift its soft limit to the hard one.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Flushes C stdio and exits without running atexit handlers (which belong to the
/// process this one was forked from).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `fflush(NULL)` flushes every C stream; `_exit` ends the process at once.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(code)
    }
}

/// Reads the status a fork server wrote for a child: five bytes, or `None` at end of
/// file (the server died before reporting).
pub(crate) fn read_status(status: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<Termination>> {
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        let n = fd::read(status, &mut buf[got..])?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
    }
    Ok(Termination::from_bytes(buf))
}
