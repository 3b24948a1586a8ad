//! The Linux backend: thin safe wrappers, one per system operation, over rustix and (where
//! rustix has no safe form) libc. Nothing here knows what multiproc builds from them.
#![allow(unsafe_code)]

mod env;
mod fd;
mod fork;
mod futex;
mod image;
mod limits;
mod mem;
mod net;
mod proc;

pub(crate) use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub(crate) use env::{change_env, take_env};
pub(crate) use fd::{
    MAX_FDS_PER_MESSAGE, abstract_socket_addr, adopt_inherited_fd, borrow_all, descriptors_lost,
    dev_null, dup, inherited_fd_id, keep_only, leave_open, lost_descriptors_error,
    out_of_address_space, out_of_descriptors, peek_packet, peer_credentials, pipe, poll_now, read,
    recv_keeping_bytes, recv_with_fds, redirect_stdio, renumber, room_for_descriptors, send_packet,
    send_room, send_with_fds, set_cloexec, set_create_mode, stream_pair, too_many_in_flight,
    try_lock_file, user_id, wait_readable, wait_writable, write_all,
};
pub(crate) use fork::{
    exec_self, exit_now, flush_stdio, fork_if_single_threaded, fork_unchecked, pin_here,
    spawn_self, unpin,
};
#[cfg(debug_assertions)]
pub(crate) use futex::stop_self;
pub(crate) use futex::{
    Watched, futex_wait, futex_wake, identity_alive, identity_in_process, identity_stopped,
    identity_stopped_by_signal, monotonic_ns, process_id, readable_any, thread_identity,
};
// For the job store's owners (feature `sqlite`).
#[cfg_attr(not(feature = "sqlite"), allow(unused_imports))]
pub(crate) use futex::{boot_id, machine_id, process_identity};
pub(crate) use image::{
    call, entry, entry_with_context, exe_identity, fn_at, fn_offset, verify_image,
};
pub(crate) use limits::{
    EMFILE, SIGXCPU, address_space_used, cpu_time_used, join_cgroup, make_memory_cgroup,
    memory_cgroup_home, oom_kills, remove_cgroup, set_rlimit,
};
pub(crate) use mem::{
    code_on_huge_pages, cwd_id, doorbell, fd_kind, file_allocated, file_id, file_len, fully_sealed,
    grow, map_shared, map_shared_at, map_shared_over, memfd, memfd_growable, open_file_id,
    packet_pair, path_id, prefault, punch_hole, reserve, ring, sealed_memfd, shared_word,
    shm_create, shm_open, shm_reserve, shm_unlink, shm_unlink_if, shrink_sealed, silence,
    size_sealed, unmap,
};
pub(crate) use net::{UnixTarget, connect_unix, listen_backlog, set_keepalive};
pub(crate) use proc::signal_is_default;
pub(crate) use proc::signal_is_ignored;
pub(crate) use proc::{
    Disposition, SIGKILL, SIGTERM, SignalMask, adopts_orphans, block_signals, blocks_signals,
    child_pidfd, clear_parent_death_signal, default_signal, fd_limit, getpid, group_alive,
    group_exists, ignore_signal, in_group, is_main_thread, kill_me_with_parent, kill_self,
    lead_process_group, leave_interrupts_to_owner, make_group_leader, new_session, process_exists,
    process_state, raise_fd_limit, reap_adopted, reap_adopted_named, reserve_fd_table,
    restore_signal, send_signal, set_cmdline, set_fd_limit, set_name, set_signal_mask, set_umask,
    signal_group, signal_name, thread_count, try_reap, unblock_signal, unblock_signals, wait_child,
};
pub(crate) use proc::{Ids, become_ids, own_ids};

/// Signal numbers: for the public `Signal` constants, and the dispositions a fork
/// server sets.
pub(crate) const SIGINT: i32 = libc::SIGINT;
pub(crate) const SIGHUP: i32 = libc::SIGHUP;
pub(crate) const SIGQUIT: i32 = libc::SIGQUIT;
pub(crate) const SIGPIPE: i32 = libc::SIGPIPE;
pub(crate) const SIGCHLD: i32 = libc::SIGCHLD;
pub(crate) const SIGABRT: i32 = libc::SIGABRT;
pub(crate) const SIGBUS: i32 = libc::SIGBUS;
pub(crate) const SIGFPE: i32 = libc::SIGFPE;
pub(crate) const SIGILL: i32 = libc::SIGILL;
pub(crate) const SIGSEGV: i32 = libc::SIGSEGV;

/// Writes to stderr without taking `std`'s lock on it; errors are ignored (there is
/// nowhere left to report them).
pub(crate) fn write_stderr(bytes: &[u8]) {
    let _ = fd::write_all(rustix::stdio::stderr(), bytes);
}

/// Registers a function to run at `exit()`: `with_status`, told the status `exit` was
/// given, where the C library can say it (glibc's `on_exit`); `plain` otherwise.
pub(crate) fn at_exit(
    plain: extern "C" fn(),
    with_status: extern "C" fn(libc::c_int, *mut libc::c_void),
) {
    #[cfg(target_env = "gnu")]
    {
        unsafe extern "C" {
            fn on_exit(
                f: extern "C" fn(libc::c_int, *mut libc::c_void),
                arg: *mut libc::c_void,
            ) -> libc::c_int;
        }
        let _ = plain;
        // SAFETY: `on_exit` stores the function pointer and the argument (none);
        // `with_status` is a plain `extern "C" fn` that lives for the whole program.
        unsafe { on_exit(with_status, std::ptr::null_mut()) };
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = with_status;
        // SAFETY: `atexit` stores the function pointer; `plain` is a plain `extern "C"
        // fn` that lives for the whole program.
        unsafe { libc::atexit(plain) };
    }
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

/// A path from the bytes `Path::as_os_str().as_encoded_bytes()` gave (in this process
/// or another running this executable).
pub(crate) fn path_from_bytes(bytes: Vec<u8>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(bytes).into()
}

/// Logical CPUs this process may run on.
pub(crate) fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many times the kernel has taken the CPU from the calling thread while it could
/// still run: preemptions, and `sched_yield` calls that ran another thread
/// (`ru_nivcsw` of `getrusage(RUSAGE_THREAD)`); `None` if the kernel does not say.
pub(crate) fn involuntary_switches() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the `rusage` it is pointed at, which lives for the call.
    let filled = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) } == 0;
    // SAFETY: zeroed, and filled by the kernel when it succeeded.
    let usage = unsafe { usage.assume_init() };
    filled.then(|| u64::try_from(usage.ru_nivcsw).unwrap_or(0))
}

/// Moves the calling thread off the CPU it runs on, onto another (the kernel picks
/// which), if another CPU is likely idle while this one is shared and the thread may run
/// on every online CPU. "Likely idle": the kernel's count of runnable tasks
/// (`/proc/loadavg`, all CPUs) is no more than the number of online CPUs, so with two of
/// them on this one, another has none. A thread that its program, `taskset` or a cpuset
/// keeps to some CPUs is left where it is (there the system-wide count would not say
/// whether one of its CPUs is idle). See [`move_off`] for the move; `None` if nothing
/// moved.
pub(crate) fn move_to_an_idle_cpu() -> Option<(usize, usize)> {
    let (mask, online) = free_to_move()?;
    let loadavg = proc::read_proc("/proc/loadavg")?;
    runnable_at_most(&loadavg, online).then_some(())?;
    move_off(&mask)
}

/// The calling thread's mask and the number of online CPUs, if it may run on every one
/// of them and there are two or more.
fn free_to_move() -> Option<(rustix::thread::CpuSet, u64)> {
    let online = online_cpus()?;
    let mask = rustix::thread::sched_getaffinity(None).ok()?;
    (online >= 2 && u64::from(mask.count()) == online).then_some((mask, online))
}

/// How many CPUs are online.
pub(crate) fn online_cpus() -> Option<u64> {
    // SAFETY: `sysconf` reads a value and has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).ok()
}

/// Whether `/proc/loadavg`'s count of runnable tasks is known and at most `n`.
fn runnable_at_most(loadavg: &str, n: u64) -> bool {
    // "0.12 0.34 0.56 2/345 6789": runnable/all after the three averages.
    loadavg
        .split_ascii_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(runnable, _)| runnable.parse::<u64>().ok())
        .is_some_and(|runnable| runnable <= n)
}

/// Moves the calling thread, whose mask `mask` names every online CPU, off the CPU it
/// runs on: its mask leaves that CPU out for one call, then is given back as [`unpin`]
/// gives it (every CPU, which the kernel narrows to the cpuset's, now and as it
/// changes), which does not move it back; if the mask was changed in between (another
/// thread, `taskset -p`), that change stands. The CPU it left and the one it ran on
/// while its mask left that one out; `None` if a call failed.
fn move_off(mask: &rustix::thread::CpuSet) -> Option<(usize, usize)> {
    let here = rustix::thread::sched_getcpu();
    let mut elsewhere = *mask;
    elsewhere.unset(here);
    rustix::thread::sched_setaffinity(None, &elsewhere).ok()?;
    let there = rustix::thread::sched_getcpu();
    let now = rustix::thread::sched_getaffinity(None);
    if now.is_ok_and(|now| same_cpus(&now, &elsewhere)) {
        unpin(mask);
    }
    Some((here, there))
}

/// Whether two masks name the same CPUs.
fn same_cpus(a: &rustix::thread::CpuSet, b: &rustix::thread::CpuSet) -> bool {
    (0..rustix::thread::CpuSet::MAX_CPU).all(|c| a.is_set(c) == b.is_set(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    #[test]
    fn the_runnable_count_is_read_from_loadavg() {
        assert!(runnable_at_most("0.52 0.58 0.59 2/467 123\n", 2));
        assert!(runnable_at_most("0.52 0.58 0.59 1/467 123\n", 2));
        assert!(!runnable_at_most("2.01 1.50 1.20 3/467 123\n", 2));
        assert!(!runnable_at_most("", 2));
        assert!(!runnable_at_most("0.52 0.58 0.59 x/467 123", 2));
        // What this kernel writes parses (whatever the count is now).
        let text = proc::read_proc("/proc/loadavg").expect("/proc/loadavg");
        assert!(runnable_at_most(&text, u64::MAX), "{text}");
    }

    /// A thread moved off its CPU runs elsewhere while its mask leaves that CPU out, and
    /// keeps the mask it had.
    #[test]
    fn a_thread_moved_off_its_cpu_runs_elsewhere_and_keeps_its_mask() {
        std::thread::spawn(|| {
            let mask = rustix::thread::sched_getaffinity(None).expect("mask");
            let online = online_cpus().expect("online CPUs");
            let everywhere = online >= 2 && u64::from(mask.count()) == online;
            match free_to_move().and_then(|(mask, _)| move_off(&mask)) {
                Some((here, there)) => {
                    assert!(everywhere, "moved a thread kept to some CPUs");
                    assert_ne!(here, there);
                    assert!(mask.is_set(there), "moved outside the mask");
                }
                None => assert!(!everywhere, "not moved with CPUs to spare"),
            }
            let now = rustix::thread::sched_getaffinity(None).expect("mask");
            assert!(same_cpus(&now, &mask), "mask changed");

            // A thread kept to some CPUs stays where it is, with its mask.
            if mask.count() >= 2 {
                let mut kept = mask;
                kept.unset(rustix::thread::sched_getcpu());
                rustix::thread::sched_setaffinity(None, &kept).expect("keep");
                assert!(free_to_move().is_none());
                assert_eq!(move_to_an_idle_cpu(), None);
                let now = rustix::thread::sched_getaffinity(None).expect("mask");
                assert!(same_cpus(&now, &kept), "mask changed");
            }
        })
        .join()
        .unwrap();
    }

    /// A `sched_yield` that runs another thread on the same CPU is counted against the
    /// thread that yielded (what `AdaptiveSpin` asks before it learns from yields).
    #[test]
    fn a_yield_that_runs_another_thread_counts_as_an_involuntary_switch() {
        // A thread of its own: the mask and the count are per thread.
        std::thread::spawn(|| {
            let mask = pin_here().expect("pinned");
            let here = rustix::thread::sched_getaffinity(None).expect("mask");
            let started = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let rival = {
                let (started, stop) = (started.clone(), stop.clone());
                std::thread::spawn(move || {
                    rustix::thread::sched_setaffinity(None, &here).expect("pin the rival");
                    started.store(true, SeqCst);
                    while !stop.load(SeqCst) {
                        std::thread::yield_now();
                    }
                })
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !started.load(SeqCst) {
                if std::time::Instant::now() >= deadline {
                    // Not left spinning for the rest of the test binary.
                    stop.store(true, SeqCst);
                    panic!("the rival never ran");
                }
                std::thread::yield_now();
            }
            let before = involuntary_switches().expect("counted");
            for _ in 0..200 {
                std::thread::yield_now();
            }
            let after = involuntary_switches().expect("counted");
            stop.store(true, SeqCst);
            rival.join().expect("rival");
            assert!(unpin(&mask), "let go");
            assert!(
                after >= before + 20,
                "200 yields to a rival on the same CPU, {before} → {after} switches"
            );
        })
        .join()
        .expect("thread");
    }
}
