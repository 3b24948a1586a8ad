//! Processes: pids, pidfds, signals, exit statuses, names, threads and the executable's
//! identity.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::sys::WaitStatus;

/// `SIGTERM`, for [`send_signal`].
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// `SIGKILL`, for [`send_signal`].
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// This process's id.
pub(crate) fn getpid() -> u32 {
    rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs()
}

/// Lifts this process's soft limit on open descriptors to the hard one: for servers,
/// whose descriptors grow with their clients (a fork server's two per child, a
/// manager's per connection).
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Sets this process's soft limit on open descriptors to `soft` (`None`: unlimited),
/// within its hard limit; nothing if it is that already.
pub(crate) fn set_fd_limit(soft: Option<u64>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let soft = match (soft, limit.maximum) {
        (Some(s), Some(max)) => Some(s.min(max)),
        (s, None) => s,
        (None, max) => max,
    };
    if limit.current != soft {
        limit.current = soft;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Grows this process's descriptor table to hold `n` descriptors (fewer if its limit is
/// lower), for a process about to start threads that will open many. The kernel grows
/// the table as descriptors are opened, doubling it past 64, 128, ...; in a process with
/// threads each growth waits for an RCU grace period (12–30 ms measured here), which
/// lands on whichever call opens that descriptor. With one thread, it costs nothing.
pub(crate) fn reserve_fd_table(n: u64) {
    let top = fd_limit().map_or(n, |limit| limit.min(n));
    let Ok(min) = rustix::fd::RawFd::try_from(top.saturating_sub(1)) else {
        return;
    };
    if let Ok(null) = super::fd::dev_null() {
        // Dropped at once: the table keeps its size.
        let _ = rustix::io::fcntl_dupfd_cloexec(&null, min);
    }
}

/// The most descriptors this process may have open (its soft limit); `None`: no limit.
pub(crate) fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Whether the calling thread is the process's main thread.
pub(crate) fn is_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// Number of threads in this process, as procfs counts them; `None` if unreadable.
pub(crate) fn thread_count() -> Option<usize> {
    // One `statx`: procfs counts a process's threads in its `task` directory's link
    // count (two plus one per thread). Reading `stat` takes an open, a `statx` and
    // several reads, on every fork of the fork server.
    if let Ok(task) = rustix::fs::stat("/proc/self/task")
        && task.st_nlink >= 3
    {
        return usize::try_from(task.st_nlink - 2).ok();
    }
    let stat = read_proc("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold anything, so count fields
    // from the last ')'. `num_threads` is field 20, the 18th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(17)?.parse().ok()
}

/// A small `/proc` file (a `stat`, say), read at once into a buffer on the stack:
/// procfs reports no size, so `read_to_string` would read it in doubling pieces from 32
/// bytes (six reads for a `stat`).
pub(crate) fn read_proc(path: &str) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    // Longer than a `stat` ever is: read the rest the general way.
                    let mut text = String::from_utf8_lossy(&buf).into_owned();
                    file.read_to_string(&mut text).ok()?;
                    return Some(text);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Opens a pidfd for `pid`, a child of this process not yet reaped (so the pid is still
/// its). If none can be had (no descriptor or memory left, a sandbox that refuses the
/// call), the child is killed and reaped before the error returns: a child nobody can
/// wait for would run on unseen, and stay a zombie. Unless the error says that `pid`
/// names no process to wait for (`ESRCH`: one reaped already, where `SIGCHLD` is
/// ignored or a `waitpid(-1)` elsewhere took it, so that the number may be another
/// process's by now; `ENOENT`, or `EINVAL` on older kernels: a thread, not a process):
/// nothing is sent to it then.
pub(crate) fn child_pidfd(pid: u32) -> io::Result<OwnedFd> {
    let p = to_pid(pid)?;
    rustix::process::pidfd_open(p, PidfdFlags::empty())
        .inspect_err(|e| {
            if !matches!(*e, Errno::SRCH | Errno::NOENT | Errno::INVAL) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
                let _ = wait_child(pid);
            }
        })
        .map_err(io::Error::from)
}

/// Sends `signal` through a pidfd. A process that has already exited is not an error.
pub(crate) fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    let signal = Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a signal number"))?;
    match rustix::process::pidfd_send_signal(pidfd, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps a child of this process through its pidfd, without blocking.
///
/// `Ok(None)`: still running.
pub(crate) fn try_reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<WaitStatus>> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
    let status = loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd), options) {
            Err(Errno::INTR) => {}
            other => break other?,
        }
    };
    Ok(status.and_then(|s| {
        if let Some(sig) = s.terminating_signal() {
            Some(WaitStatus::Signaled(sig))
        } else {
            s.exit_status().map(WaitStatus::Exited)
        }
    }))
}

/// Whether orphaned descendants come to this process: it is the init of its PID
/// namespace (a container's first process), or a subreaper.
pub(crate) fn adopts_orphans() -> bool {
    rustix::process::getpid().is_init() || matches!(rustix::process::child_subreaper(), Ok(Some(_)))
}

/// Sets the calling thread's name, which for the main thread is the process name that
/// `ps` and `top` show. Truncated to the kernel's 15 bytes.
pub(crate) fn set_name(name: &str) {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    // On the stack: a child names itself before it has allocated anything, and every
    // page a forked child writes is a page copied.
    let mut buf = [0u8; 16];
    buf[..end].copy_from_slice(&name.as_bytes()[..end]);
    // A name holding a NUL is left unset, like one that cannot be a C string.
    if let Ok(name) = CStr::from_bytes_with_nul(&buf[..=end]) {
        // Naming is cosmetic: a failure changes nothing else.
        let _ = rustix::thread::set_name(name);
    }
}

/// Replaces the command line that `ps` shows (`/proc/self/cmdline`) with `name`, within
/// the space the process's own arguments took when it was started (what
/// `setproctitle` does): `name` is cut to fit and the rest is zeroed. Cosmetic: nothing
/// happens if the space is unknown.
pub(crate) fn set_cmdline(name: &str) {
    let Some((start, end)) = argument_area() else {
        return;
    };
    let Some(room) = end.checked_sub(start).filter(|&n| n > 1) else {
        return;
    };
    let n = name.len().min(room - 1);
    // SAFETY: the kernel reports [start, end) as this process's argument strings, at
    // the top of the initial thread's stack: mapped and writable for the life of the
    // process. Nothing holds a reference into it: std copies the arguments out when
    // `env::args` is called, and this runs while the process has one thread.
    unsafe {
        std::ptr::copy_nonoverlapping(name.as_ptr(), start as *mut u8, n);
        std::ptr::write_bytes((start + n) as *mut u8, 0, room - n);
    }
}

/// Where this process's argument strings are: fields 48 and 49 of `/proc/self/stat`.
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields from the third (the state) on.
    let mut fields = after.split_whitespace().skip(48 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    Some((start, end))
}

/// Asks the kernel to send `SIGKILL` to this process when the thread that created it
/// exits. Returns `false` if the parent is already gone (then the caller should exit).
pub(crate) fn kill_me_with_parent(expected_parent: u32) -> io::Result<bool> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get().unsigned_abs());
    Ok(parent == Some(expected_parent))
}

/// Makes this process the leader of a new process group (`setpgid(0, 0)`).
pub(crate) fn lead_process_group() -> io::Result<()> {
    Ok(rustix::process::setpgid(None, None)?)
}

/// Makes child `pid` (forked by this process, not yet executed) the leader of a new
/// process group, as it does itself (`setpgid(pid, pid)`; done by both, as POSIX
/// advises, it is done by the time either goes on).
pub(crate) fn make_group_leader(pid: u32) -> io::Result<()> {
    let pid =
        Pid::from_raw(pid as i32).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::setpgid(Some(pid), Some(pid))?)
}

/// Sends `signal` to every process of process group `pgid`. Returns `false` (and sends
/// nothing) when the group has no member: its leader never made it, or every member is
/// gone. The group outlives its leader while other members remain, and while it does
/// its id cannot be given to another process.
pub(crate) fn signal_group(pgid: u32, signal: i32) -> io::Result<bool> {
    let Some(pgid) = Pid::from_raw(pgid as i32) else {
        return Ok(false);
    };
    let signal = Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a signal number"))?;
    match rustix::process::kill_process_group(pgid, signal) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether process `pid` is a member of process group `pgid` (no: it is not there, or
/// it cannot be looked at).
pub(crate) fn in_group(pid: u32, pgid: u32) -> bool {
    Pid::from_raw(pid as i32).is_some_and(|p| {
        rustix::process::getpgid(Some(p)).is_ok_and(|g| g.as_raw_nonzero().get() as u32 == pgid)
    })
}

/// Whether process group `pgid` has any member, zombies included: while it has one, its
/// number is no other process's or group's.
pub(crate) fn group_exists(pgid: u32) -> bool {
    Pid::from_raw(pgid as i32).is_some_and(|group| {
        !matches!(
            rustix::process::test_kill_process_group(group),
            Err(Errno::SRCH)
        )
    })
}

/// Whether a process, a zombie included, has the number `pid`.
pub(crate) fn process_exists(pid: u32) -> bool {
    Pid::from_raw(pid as i32)
        .is_some_and(|p| !matches!(rustix::process::test_kill_process(p), Err(Errno::SRCH)))
}

/// Whether process group `pgid` has a member that has not exited. Zombies (exited, not
/// yet reaped by whoever their parent is now) do not count; when `/proc` cannot be read,
/// an existing group counts as alive.
pub(crate) fn group_alive(pgid: u32) -> bool {
    let Some(group) = Pid::from_raw(pgid as i32) else {
        return false;
    };
    if let Err(Errno::SRCH) = rustix::process::test_kill_process_group(group) {
        return false;
    }
    let Some(mut all) = processes() else {
        return true;
    };
    all.any(|p| p.group == Some(pgid) && !matches!(p.state.as_str(), "Z" | "X"))
}

/// A process as `/proc/<pid>/stat` shows it.
struct ProcStat {
    pid: u32,
    state: String,
    parent: Option<u32>,
    group: Option<u32>,
}

/// Every process `/proc` shows (those that end meanwhile left out); `None` if `/proc`
/// cannot be read.
fn processes() -> Option<impl Iterator<Item = ProcStat>> {
    let dir = std::fs::read_dir("/proc").ok()?;
    Some(dir.flatten().filter_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let stat = stat_after_name(pid)?;
        // Fields after the command name: state, parent, process group.
        let mut fields = stat.split_whitespace();
        let state = fields.next()?.to_owned();
        let parent = fields.next().and_then(|f| f.parse::<u32>().ok());
        let group = fields.next().and_then(|f| f.parse::<u32>().ok());
        Some(ProcStat {
            pid,
            state,
            parent,
            group,
        })
    }))
}

/// Reaps the zombies of process group `pgid` that came to this process as orphans (it
/// is the system's first process or a subreaper, and their parent, the group's leader,
/// ended before them): nothing else would, and each would hold a pid for as long as
/// this process runs. Only once no member of the group is alive (`group_alive` says
/// no), and only when the leader was reaped already: every zombie left whose parent is
/// this process is then an adopted member, never a child of this process's own.
pub(crate) fn reap_adopted(pgid: u32) {
    if !adopts_orphans() {
        return;
    }
    let me = std::process::id();
    let Some(all) = processes() else {
        return;
    };
    for p in all {
        if p.state == "Z"
            && p.parent == Some(me)
            && p.group == Some(pgid)
            && let Some(pid) = Pid::from_raw(p.pid as i32)
        {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
        }
    }
}

/// Reaps the children of this process named `name` (a dead fork server's spare, which
/// came to this process as an orphan: it is the system's first process or a subreaper),
/// waiting `within` at most for those still running (a spare ends as soon as it finds
/// its server gone). Nothing else would reap them, and no child of this process's own
/// bears such a name: each would stay a zombie for as long as this process runs.
pub(crate) fn reap_adopted_named(name: &str, within: Duration) {
    if !adopts_orphans() {
        return;
    }
    let me = std::process::id();
    let Some(all) = processes() else {
        return;
    };
    let named =
        |pid: u32| read_proc(&format!("/proc/{pid}/comm")).is_some_and(|c| c.trim_end() == name);
    // The pidfd first, then the name and the parent again: the pid then names the
    // process the pidfd holds (only this process reaps its children).
    let adopted: Vec<OwnedFd> = all
        .filter(|p| p.parent == Some(me) && named(p.pid))
        .filter_map(|p| {
            let pidfd =
                rustix::process::pidfd_open(Pid::from_raw(p.pid as i32)?, PidfdFlags::empty())
                    .ok()?;
            let still = stat_after_name(p.pid).is_some_and(|s| {
                s.split_whitespace()
                    .nth(1)
                    .and_then(|f| f.parse::<u32>().ok())
                    == Some(me)
            }) && named(p.pid);
            still.then_some(pidfd)
        })
        .collect();
    let deadline = Instant::now() + within;
    for pidfd in adopted {
        let _ = super::wait_readable(&[pidfd.as_fd()], Some(deadline));
        let _ = try_reap(pidfd.as_fd());
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses
/// and may hold anything), its state first; `None` if the process is gone.
fn stat_after_name(pid: u32) -> Option<String> {
    let mut stat = read_proc(&format!("/proc/{pid}/stat"))?;
    let close = stat.rfind(')')?;
    stat.drain(..=close);
    Some(stat)
}

/// The state letter procfs gives process `pid` (`R` running or runnable, `D` in an
/// uninterruptible wait such as a page fault under memory pressure, `S` asleep, `T`
/// stopped, `Z` a zombie), or `None` if it cannot be read.
pub(crate) fn process_state(pid: u32) -> Option<char> {
    stat_after_name(pid)?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Cancels a parent-death signal inherited from the process this one was forked as.
pub(crate) fn clear_parent_death_signal() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(None)?)
}

/// The name of a signal, like `SIGSEGV`.
pub(crate) fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// The identity of the running executable file: device, inode, size and modification
/// time of `/proc/self/exe`, which names the file this process was started from even
/// after it is replaced or deleted on disk.
pub(crate) fn exe_file_identity() -> io::Result<[u64; 5]> {
    let st = rustix::fs::stat("/proc/self/exe")?;
    Ok([
        st.st_dev,
        st.st_ino,
        st.st_size as u64,
        st.st_mtime as u64,
        st.st_mtime_nsec as u64,
    ])
}

/// Kills this process at once (`SIGKILL`).
pub(crate) fn kill_self() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
    // SIGKILL cannot be caught; should the kill fail, the process ends anyway.
    super::fork::exit_now(137)
}

/// A signal's disposition as [`ignore_signal`] found it, to put back with
/// [`restore_signal`]: the whole action, with its flags and mask (a handler installed
/// with `SA_SIGINFO`, as signal-hook installs them, called without them would read
/// garbage for its arguments).
#[derive(Clone, Copy)]
pub(crate) struct Disposition(libc::sigaction);

impl std::fmt::Debug for Disposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Disposition({:#x})", self.0.sa_sigaction)
    }
}

/// Gives `signal` the plain action `handler` (`SIG_IGN` or `SIG_DFL`); returns the one
/// it had.
fn set_plain_action(signal: i32, handler: libc::sighandler_t) -> Disposition {
    // SAFETY: both actions are zeroed, then the new one's mask emptied, before
    // `sigaction` reads the new one and writes the old; `SIG_IGN` and `SIG_DFL` install
    // no handler code.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigemptyset(&mut action.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, &action, &mut old) != 0 {
            // An invalid signal: nothing changed, and `SIG_DFL` is what it has.
            old.sa_sigaction = libc::SIG_DFL;
        }
        Disposition(old)
    }
}

/// Ignores `signal` and returns what its disposition was.
pub(crate) fn ignore_signal(signal: i32) -> Disposition {
    set_plain_action(signal, libc::SIG_IGN)
}

/// Whether `signal` has its default action now (no handler, not ignored).
pub(crate) fn signal_is_default(signal: i32) -> bool {
    signal_action(signal) == Some(libc::SIG_DFL)
}

/// Whether `signal` is ignored now.
pub(crate) fn signal_is_ignored(signal: i32) -> bool {
    signal_action(signal) == Some(libc::SIG_IGN)
}

/// The action `signal` has now (`SIG_DFL`, `SIG_IGN` or a handler's address).
fn signal_action(signal: i32) -> Option<libc::sighandler_t> {
    // SAFETY: `sigaction` with no new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(signal, std::ptr::null(), &mut old) == 0).then_some(old.sa_sigaction)
    }
}

/// Leaves Ctrl-C to the program that owns this process (a pool's worker, a manager's
/// server): `SIGINT`, which a terminal sends to its whole foreground process group,
/// gets a handler that does nothing, so that the owner decides what it means (one that
/// handles it may let running work finish; one that does not ends, and this process
/// with it). A handler rather than `SIG_IGN`: an ignored signal stays ignored across
/// `exec`, and a program a task runs would not stop on Ctrl-C; a handler goes back to
/// the default action there. `SA_RESTART`: system calls a signal interrupts start again
/// where they can (the few that cannot return `EINTR`, as for any handled signal).
pub(crate) fn leave_interrupts_to_owner() {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: the handler does nothing, which is async-signal-safe; `action` is fully
    // initialised (zeroed, then its mask emptied) before `sigaction` reads it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

/// Gives `signal` its default action back; returns the one it had, for
/// [`restore_signal`].
pub(crate) fn default_signal(signal: i32) -> Disposition {
    set_plain_action(signal, libc::SIG_DFL)
}

/// Whether the calling thread blocks any signal.
pub(crate) fn blocks_signals() -> bool {
    // SAFETY: the set is built on the stack by `pthread_sigmask`, which only reads the
    // mask here (a null new set); `sigismember` reads it.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        if libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) != 0 {
            return false;
        }
        (1..=libc::SIGRTMAX()).any(|s| libc::sigismember(&mask, s) == 1)
    }
}

/// A thread's signal mask, as [`block_signals`] found it.
#[derive(Clone, Copy)]
pub(crate) struct SignalMask(libc::sigset_t);

/// Blocks `signals` too on the calling thread; returns the mask it had, for
/// [`set_signal_mask`].
pub(crate) fn block_signals(signals: &[i32]) -> SignalMask {
    // SAFETY: both sets are built on the stack (`sigemptyset`, `sigaddset`) before
    // `pthread_sigmask` reads the one and writes the other.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut old);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        SignalMask(old)
    }
}

/// Stops blocking `signal` on the calling thread (the rest of its mask stays).
pub(crate) fn unblock_signal(signal: i32) {
    // SAFETY: the set is built on the stack (`sigemptyset`, `sigaddset`) before
    // `pthread_sigmask` reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Gives the calling thread the mask `mask` back.
pub(crate) fn set_signal_mask(mask: SignalMask) {
    // SAFETY: the set was written by `pthread_sigmask`; only read here.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) };
}

/// Blocks no signal on the calling thread (a fresh process's mask, as `std::process::
/// Command` gives the programs it starts): a mask the program set before `init()`
/// would otherwise reach every child of the fork server, which it forked then. With
/// `drop_pending`, the signals pending while blocked are dropped first, as a fork drops
/// them: a spare that waited with the program's mask may hold one sent to its whole
/// group meanwhile (a service manager's SIGTERM to the program's processes), which was
/// not for the child it becomes, and would end it at once. (So that one sent to the
/// child is not among them, the server answers its spawn only once the child has done
/// this where its mask is not empty: see `FromServer::blocks_signals`.) Without, they
/// are delivered: those a child forked fresh got since its fork, while the server held
/// them for it (see `fork_child`).
pub(crate) fn unblock_signals(drop_pending: bool) {
    // SAFETY: the sets are built by `sigemptyset`/`sigpending` on the stack; a zero
    // timeout makes `sigtimedwait` take a pending signal of the set, or return at once;
    // then an empty set replaces the calling thread's mask.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pending);
        if drop_pending && libc::sigpending(&mut pending) == 0 {
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // Each call takes one; a bound, in case one keeps coming.
            for _ in 0..64 {
                if libc::sigtimedwait(&pending, std::ptr::null_mut(), &now) < 0 {
                    break;
                }
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Puts back a disposition [`ignore_signal`] returned for `signal`.
pub(crate) fn restore_signal(signal: i32, disposition: Disposition) {
    // SAFETY: `disposition` is what this program (or the process it was forked from)
    // had for `signal`: `SIG_DFL`, `SIG_IGN`, or a handler of this same executable
    // image, with the flags and mask it had, so putting it back installs nothing the
    // program did not.
    unsafe { libc::sigaction(signal, &disposition.0, std::ptr::null_mut()) };
}

/// Makes this process the leader of a new session, without a controlling terminal.
pub(crate) fn new_session() -> io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// Sets this process's file-mode creation mask.
pub(crate) fn set_umask(mask: u32) {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(mask));
}

/// Waits for this process's child `pid` to end, and reaps it.
pub(crate) fn wait_child(pid: u32) -> io::Result<()> {
    let pid = to_pid(pid)?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Err(Errno::INTR) => {}
            other => return other.map(drop).map_err(Into::into),
        }
    }
}

fn to_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))
}

#[cfg(test)]
mod tests {
    #![allow(unsafe_code)]
    use super::*;
    use crate::sys::Forked;

    /// A pid that is no child to wait for gets no signal: every error of the pidfd's
    /// killed it, and a number whose child was reaped elsewhere (`SIGCHLD` ignored)
    /// may be another process's by then. Here a thread of this process, for
    /// which `pidfd_open` fails (not a process) and a kill would have ended the whole
    /// test process.
    #[test]
    fn a_pid_that_is_no_waitable_child_is_not_killed() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            done_rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .ok();
        });
        let tid = rx.recv().unwrap();
        let tid = u32::try_from(tid).unwrap();
        assert!(child_pidfd(tid).is_err());
        done_tx.send(()).unwrap();
        thread.join().unwrap();
    }

    /// A child whose pidfd cannot be opened (no descriptor left) is killed and reaped:
    /// it ran on, unseen and never reaped. Run in a forked process of its own (the
    /// limit on descriptors is the process's), which does only system calls.
    #[test]
    fn a_child_without_a_pidfd_is_killed_and_reaped() {
        // SAFETY: the child makes system calls only (no allocation, no lock) and ends
        // with `_exit`.
        match unsafe { super::super::fork::fork_unchecked() }.unwrap() {
            Forked::Child => {
                let code = (|| {
                    // SAFETY: as above; the sleeper pauses until it is killed.
                    let sleeper = match unsafe { super::super::fork::fork_unchecked() } {
                        Ok(Forked::Child) => loop {
                            // SAFETY: `pause` only waits for a signal.
                            unsafe { libc::pause() };
                        },
                        Ok(Forked::Parent(pid)) => pid,
                        Err(_) => return 2,
                    };
                    let kill = || {
                        // SAFETY: kills and reaps our own child.
                        unsafe { libc::kill(sleeper as i32, libc::SIGKILL) };
                        let _ = wait_child(sleeper);
                    };
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    // SAFETY: a valid `rlimit` to fill, then to set for this process.
                    let set = unsafe {
                        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
                            limit.rlim_cur = 0;
                            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
                        }
                    };
                    if !set {
                        kill();
                        return 3;
                    }
                    if child_pidfd(sleeper).is_ok() {
                        kill();
                        return 4;
                    }
                    // Reaped: no child of that pid is left to wait for.
                    // SAFETY: `waitpid` with a null status pointer.
                    let left = unsafe {
                        libc::waitpid(sleeper as i32, std::ptr::null_mut(), libc::WNOHANG)
                    };
                    if left != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::ECHILD)
                    {
                        kill();
                        return 5;
                    }
                    0
                })();
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(code) }
            }
            Forked::Parent(pid) => {
                let mut status = 0;
                // SAFETY: waits for our own child.
                let waited = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
                assert_eq!(waited, pid as i32);
                assert!(libc::WIFEXITED(status), "status {status}");
                assert_eq!(libc::WEXITSTATUS(status), 0, "step that failed");
            }
        }
    }
}

/// A process's users and groups: real, effective and saved user and group ids, and the
/// supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Ids {
    uid: [u32; 3],
    gid: [u32; 3],
    groups: Vec<u32>,
}

/// This process's users and groups (`None` if they cannot be read).
pub(crate) fn own_ids() -> Option<Ids> {
    let (mut uid, mut gid) = ([0; 3], [0; 3]);
    // SAFETY: each call writes three ids through valid pointers.
    let read = unsafe {
        libc::getresuid(&mut uid[0], &mut uid[1], &mut uid[2]) == 0
            && libc::getresgid(&mut gid[0], &mut gid[1], &mut gid[2]) == 0
    };
    if !read {
        return None;
    }
    // One call where the groups fit on the stack (the usual case: a spawn asks).
    let mut few = [0; 32];
    // SAFETY: `few` has room for its length in ids.
    let got = unsafe { libc::getgroups(few.len() as libc::c_int, few.as_mut_ptr()) };
    let groups = match usize::try_from(got) {
        Ok(n) => few[..n].to_vec(),
        Err(_) => {
            // SAFETY: a size of 0 asks for the count only.
            let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
            let mut groups = vec![0; usize::try_from(n).ok()?];
            // SAFETY: `groups` has room for `n` ids.
            let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
            groups.truncate(usize::try_from(got).ok()?);
            groups
        }
    };
    Some(Ids { uid, gid, groups })
}

/// Takes the users and groups `ids` where `now`'s (this process's) differ:
/// supplementary groups, then groups, then users (once the users change, the groups may
/// not). For a child of the fork server, which runs as the program did when it started
/// it, to run as the program does now.
pub(crate) fn become_ids(ids: &Ids, now: &Ids) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on this single-threaded child, with a valid slice.
    unsafe {
        if now.groups != ids.groups {
            check(libc::setgroups(ids.groups.len(), ids.groups.as_ptr()))?;
        }
        if now.gid != ids.gid {
            check(libc::setresgid(ids.gid[0], ids.gid[1], ids.gid[2]))?;
        }
        if now.uid != ids.uid {
            check(libc::setresuid(ids.uid[0], ids.uid[1], ids.uid[2]))?;
        }
    }
    Ok(())
}
