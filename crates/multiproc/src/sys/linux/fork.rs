//! Starting processes: forking, executing this program again, and exiting a forked
//! child. How a new child is set up, and what it runs, is `bootstrap`'s.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::proc as process;
use crate::sys::Forked;

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

/// The calling thread's CPU mask, with the thread held to the CPU it runs on now; `None`
/// (nothing changed) if either call fails. Give the mask back with [`unpin`].
pub(crate) fn pin_here() -> Option<rustix::thread::CpuSet> {
    let mask = rustix::thread::sched_getaffinity(None).ok()?;
    let mut here = rustix::thread::CpuSet::new();
    here.set(rustix::thread::sched_getcpu());
    rustix::thread::sched_setaffinity(None, &here).ok()?;
    Some(mask)
}

/// Gives the calling thread back the mask [`pin_here`] took: every CPU if it named
/// every online one (a copy would keep the thread, and the children it forks, off CPUs
/// its cpuset gains later), that mask otherwise; failing that (its cpuset shrank
/// meanwhile, say), every CPU, which the kernel narrows to those the thread may use.
/// False if the thread is still held.
pub(crate) fn unpin(mask: &rustix::thread::CpuSet) -> bool {
    let everywhere = super::online_cpus() == Some(u64::from(mask.count()));
    if !everywhere && rustix::thread::sched_setaffinity(None, mask).is_ok() {
        return true;
    }
    rustix::thread::sched_setaffinity(None, &every_cpu()).is_ok()
}

/// A mask of every CPU there can be: set as a thread's mask, the kernel narrows it to
/// those the thread may use (its cpuset's), now and as they change.
fn every_cpu() -> rustix::thread::CpuSet {
    let mut every = rustix::thread::CpuSet::new();
    (0..rustix::thread::CpuSet::MAX_CPU).for_each(|c| every.set(c));
    every
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

/// Starts this program afresh (`/proc/self/exe`) as a child of this process, with
/// `arg0` as its only argument, the environment changed by `set` and `remove`, stdin
/// from `/dev/null`, and `fds` at descriptors 3, 4, ... in order. Returns its pid and a
/// pidfd for it.
pub(crate) fn spawn_self(
    arg0: &str,
    set: &[(&str, &str)],
    remove: &[&str],
    fds: &[OwnedFd],
) -> io::Result<(u32, OwnedFd)> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut command = Command::new("/proc/self/exe");
    command.arg0(arg0).stdin(Stdio::null());
    for (key, value) in set {
        command.env(key, value);
    }
    for key in remove {
        command.env_remove(key);
    }
    // SAFETY: the closure runs in the forked child before `exec` and calls only
    // async-signal-safe functions (`fcntl`, `dup2`); it allocates nothing.
    unsafe {
        command.pre_exec(move || super::fd::place_raw(&raw, 3));
    }
    let child = command.spawn()?;
    let pid = child.id();
    // Not waited for yet, so `pid` is still the child's (unless `SIGCHLD` is ignored,
    // and it has ended: then `child_pidfd` fails and sends nothing).
    let pidfd = process::child_pidfd(pid)?;
    Ok((pid, pidfd))
}

/// Replaces this process with `/proc/self/exe`, run with `argv0` as its only argument
/// and exactly the environment `env` (`KEY`, `VALUE` pairs as bytes; entries that hold
/// a NUL are left out). Returns only on failure.
pub(crate) fn exec_self<'a>(
    argv0: &str,
    env: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> io::Error {
    let argv0 = CString::new(argv0.replace('\0', " ")).unwrap_or_default();
    let envp: Vec<CString> = env
        .into_iter()
        .filter_map(|(k, v)| CString::new([k, b"=", v].concat()).ok())
        .collect();
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

/// Writes out what this process's stdout (Rust's) and C stdio buffers hold, before a
/// fork: what a child inherits unwritten, it would write again.
pub(crate) fn flush_stdio() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: `fflush(NULL)` flushes every C output stream.
    unsafe {
        libc::fflush(std::ptr::null_mut());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_holds_the_thread_to_its_cpu_and_unpinning_restores_its_mask() {
        // A thread of its own: the mask is per thread.
        std::thread::spawn(|| {
            let before = rustix::thread::sched_getaffinity(None).expect("mask");
            let mask = pin_here().expect("pinned");
            assert_eq!(mask, before, "pin_here gives back the mask it replaced");
            let held = rustix::thread::sched_getaffinity(None).expect("mask");
            assert_eq!(held.count(), 1, "held to one CPU");
            let cpu = (0..rustix::thread::CpuSet::MAX_CPU)
                .find(|&c| held.is_set(c))
                .expect("a CPU");
            assert!(before.is_set(cpu), "held to a CPU of its own mask");
            assert!(unpin(&mask), "let go");
            assert_eq!(
                rustix::thread::sched_getaffinity(None).expect("mask"),
                before
            );
        })
        .join()
        .expect("thread");
    }
}
