//! Starting processes: forking, executing this program again, and setting a new child up
//! (descriptors, signals, name, directory, environment) before it runs its call.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::fd;
use super::proc as process;
use crate::bootstrap::messages::{self, ForkRequest, Launch};
use crate::bootstrap::{self, BOOTSTRAP_FAILURE, SERVER_TOKEN};
use crate::sys::{Forked, ForkedChildSetup};

/// Where a child finds its call channel and its parent's death pipe.
pub(super) const CHANNEL_FD: RawFd = 3;
pub(super) const DEATH_FD: RawFd = 4;

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
    let token = bootstrap::format_token(
        CHANNEL_FD,
        Some(DEATH_FD),
        super::mem::file_id(control.as_fd())?,
    );
    let (control_raw, death_raw) = (control.as_raw_fd(), death.as_raw_fd());
    let mut command = Command::new("/proc/self/exe");
    command
        // Room for the server's children to put their own names in `ps`.
        .arg0(format!("multiproc-forkserver{:48}", ""))
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
pub(super) fn place_raw(fds: &[RawFd]) -> io::Result<()> {
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
pub(super) fn close_from(first: RawFd) {
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

/// The identity (device, inode) of the file open at descriptor `raw`, which this
/// process inherited; `None` if nothing is open there.
pub(crate) fn inherited_fd_id(raw: RawFd) -> Option<(u64, u64)> {
    // SAFETY: `F_GETFD` only inspects the descriptor table.
    if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open (checked above) and stays open for the one `fstat`
    // this borrow lasts: no other thread runs yet when tokens are read, and none closes
    // descriptors it does not own.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    super::mem::file_id(fd).ok()
}

/// Takes ownership of a descriptor that this process inherited at a known number.
pub(crate) fn adopt_inherited_fd(raw: RawFd) -> Option<OwnedFd> {
    inherited_fd_id(raw)?;
    // SAFETY: the descriptor is open, and this process was started with it for exactly
    // this purpose (the token names it and its identity); nothing else in the process
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    fd::set_cloexec(fd.as_fd(), true).ok()?;
    Some(fd)
}

/// What a child of the fork server takes from it.
pub(super) struct ServerInfo<'a> {
    pub(super) pid: u32,
    /// The server was started by executing the program: its command line is its own,
    /// and each child writes its name there (otherwise children show the program's).
    pub(super) executed: bool,
    /// The program's own SIGPIPE disposition, which the server replaced.
    pub(super) sigpipe: libc::sighandler_t,
    /// The server's environment, as a block.
    pub(super) env: &'a [u8],
}

/// Turns a fresh child of the fork server (just forked, or a spare just assigned) into
/// the requested process: signals, parent-death signal, descriptors, name, directory and
/// environment; then runs the call, or executes the program afresh. `death` is the
/// parent's death pipe. Never returns.
pub(super) fn become_requested(
    server: &ServerInfo<'_>,
    request: &ForkRequest,
    channel: OwnedFd,
    stdio: [OwnedFd; 3],
    death: Option<OwnedFd>,
) -> ! {
    // SAFETY: restores the default action, and the program's own choice for SIGPIPE
    // (which is a disposition, not handler code: `SIG_IGN` or `SIG_DFL` before `main`).
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGPIPE, server.sigpipe);
    }
    // A daemon dies with the server, which dies with the parent; other children do not.
    let parent_alive = if request.daemon {
        process::kill_me_with_parent(server.pid)
    } else {
        process::clear_parent_death_signal().map(|()| true)
    };
    if !matches!(parent_alive, Ok(true))
        || (request.process_group && process::lead_process_group().is_err())
    {
        exit_now(BOOTSTRAP_FAILURE);
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
        super::write_stderr(format!("multiproc: child setup failed: {e}\n").as_bytes());
        exit_now(BOOTSTRAP_FAILURE);
    }
    close_from(order.len() as RawFd);
    // SAFETY: `place_at_zero` put the call channel at CHANNEL_FD; nothing else owns it.
    let channel = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    // SAFETY: likewise for the death pipe at DEATH_FD, when there is one.
    let death = has_death.then(|| unsafe { OwnedFd::from_raw_fd(DEATH_FD) });
    process::set_name(&request.name);
    if server.executed {
        process::set_cmdline(&request.name);
    }
    if let Some(dir) = &request.cwd {
        let dir = OsString::from_vec(dir.0.clone());
        if let Err(e) = std::env::set_current_dir(&dir) {
            let why = format!("cannot change directory to {}: {e}", dir.to_string_lossy());
            bootstrap::fail_on(channel, &why);
        }
    }
    match request.launch {
        Launch::Fork => {
            // SAFETY: this process has one thread (it is a fork of the single-threaded
            // server), so nothing can read the environment concurrently.
            unsafe { replace_env(&request.env.0, Some(server.env)) };
            let _ = fd::set_cloexec(channel.as_fd(), true);
            if let Some(death) = &death {
                let _ = fd::set_cloexec(death.as_fd(), true);
            }
            bootstrap::child::run_forked(channel, death)
        }
        Launch::Exec => {
            let token = match super::mem::file_id(channel.as_fd()) {
                Ok(id) => bootstrap::format_token(CHANNEL_FD, has_death.then_some(DEATH_FD), id),
                Err(e) => bootstrap::fail_on(channel, &format!("fstat of the call channel: {e}")),
            };
            let why = exec_self(&request.name, &request.env.0, &token);
            bootstrap::fail_on(channel, &format!("cannot execute /proc/self/exe: {why}"))
        }
    }
}

/// Sets up a child forked straight from its parent (`Builder::spawn_fork`).
pub(crate) fn setup_forked_child(setup: ForkedChildSetup) -> Result<(), String> {
    if let Some(parent) = setup.parent_death
        && !process::kill_me_with_parent(parent).map_err(|e| format!("prctl: {e}"))?
    {
        return Err("the parent exited during the fork".into());
    }
    if setup.process_group {
        process::lead_process_group().map_err(|e| format!("setpgid: {e}"))?;
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
    for fd in high {
        // SAFETY: the temporary duplicates made above, no longer needed.
        unsafe { libc::close(fd) };
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
        None => messages::env_block(std::env::vars_os()).0,
    };
    let wanted: BTreeMap<&[u8], &[u8]> = messages::env_entries(env).collect();
    let had: BTreeMap<&[u8], &[u8]> = messages::env_entries(&current).collect();
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
    let mut envp: Vec<CString> = messages::env_entries(env)
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

/// Flushes C stdio and exits without running atexit handlers (which belong to the
/// process this one was forked from).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `fflush(NULL)` flushes every C stream; `_exit` ends the process at once.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(code)
    }
}
