//! The Linux backend.
#![allow(unsafe_code)]

mod daemon;
mod fd;
mod forkserver;
mod image;
mod launch;
mod mem;
mod proc;
mod sync;

use std::ffi::OsString;

pub(crate) use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub(crate) use daemon::detach;
pub(crate) use fd::{
    MAX_FDS_PER_MESSAGE, abstract_socket_addr, borrow_all, dev_null, dup, peek_packet, pipe,
    poll_now, recv_with_fds, send_packet, send_with_fds, stream_pair, wait_readable, wait_writable,
};
pub(crate) use forkserver::{read_status, serve};
pub(crate) use image::run as run_entry;
pub(crate) use image::{
    anchor_offset, entry, fn_at, fn_offset, run_task, task_entry, verify_image,
};
pub(crate) use launch::{
    adopt_inherited_fd, exec_server, exit_now, fork_if_single_threaded, fork_unchecked,
    inherited_fd_id, setup_forked_child,
};
pub(crate) use mem::{
    doorbell, file_id, file_len, fully_sealed, map_shared, memfd, packet_pair, ring, sealed_memfd,
    shm_create, shm_open, shm_unlink, shm_unlink_if, silence, size_sealed, unmap,
};
pub(crate) use proc::{
    SIGKILL, SIGTERM, exe_file_identity, fd_limit, getpid, is_main_thread, pidfd_open,
    raise_fd_limit, send_signal, set_name, signal_group, signal_name, try_reap,
};
pub(crate) use sync::{
    futex_wait, futex_wake, identity_alive, monotonic_ns, process_id, readable_any, thread_identity,
};

/// Signal numbers for [`crate::Signal`]'s constants.
pub(crate) const SIGINT: i32 = libc::SIGINT;
pub(crate) const SIGABRT: i32 = libc::SIGABRT;
pub(crate) const SIGBUS: i32 = libc::SIGBUS;
pub(crate) const SIGFPE: i32 = libc::SIGFPE;
pub(crate) const SIGILL: i32 = libc::SIGILL;
pub(crate) const SIGSEGV: i32 = libc::SIGSEGV;

/// Reads an environment variable and removes it, so that processes this one starts do
/// not inherit it. The removal happens only while the process has a single thread (as
/// it does at the top of `main`); otherwise the variable stays, which is harmless since
/// tokens name the process they are meant for.
pub(crate) fn take_env(name: &str) -> Option<OsString> {
    let value = std::env::var_os(name)?;
    if proc::thread_count() == Some(1) {
        // SAFETY: the process has one thread, the caller, so nothing reads the
        // environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    Some(value)
}

/// Writes to stderr without taking `std`'s lock on it; errors are ignored (there is
/// nowhere left to report them).
pub(crate) fn write_stderr(bytes: &[u8]) {
    let _ = fd::write_all(rustix::stdio::stderr(), bytes);
}

/// Registers `f` to run at `exit()`.
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `atexit` stores the function pointer; `f` is a plain `extern "C" fn` that
    // lives for the whole program.
    unsafe { libc::atexit(f) };
}

/// Processes can be started here.
pub(crate) const SUPPORTED: bool = true;

/// A duplicate of this process's stdin (0), stdout (1) or stderr (2).
pub(crate) fn dup_stdio(which: u8) -> std::io::Result<OwnedFd> {
    match which {
        0 => dup(std::io::stdin().as_fd()),
        1 => dup(std::io::stdout().as_fd()),
        _ => dup(std::io::stderr().as_fd()),
    }
}

/// A file as a descriptor to hand to a child.
pub(crate) fn file_fd(file: std::fs::File) -> OwnedFd {
    file.into()
}

/// The parent's ends of a child's piped standard streams.
pub(crate) fn child_stdio(
    fds: [Option<OwnedFd>; 3],
) -> (
    Option<std::process::ChildStdin>,
    Option<std::process::ChildStdout>,
    Option<std::process::ChildStderr>,
) {
    let [i, o, e] = fds;
    (i.map(Into::into), o.map(Into::into), e.map(Into::into))
}

/// Logical CPUs this process may run on.
pub(crate) fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
