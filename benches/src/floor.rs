//! The kernel floor: process operations in plain `libc` calls, run by
//! `multiproc-bench floor WORKLOAD ITERATIONS` before anything else starts in that
//! process (no fork server, no threads), so that the process is as small as a Rust
//! program gets and nothing but the kernel's own cost is measured. Prints the seconds
//! the loop took.

use std::time::Instant;

/// Runs the floor subcommand; `args` are what follows `floor`.
pub fn main(mut args: impl Iterator<Item = String>) {
    let workload = args.next().unwrap_or_default();
    let iters: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let run: fn() = match workload.as_str() {
        "fork-exit-wait" => fork_exit_wait,
        "fork-exec-wait" => fork_exec_wait,
        other => {
            eprintln!("unknown workload {other:?}");
            std::process::exit(2);
        }
    };
    run(); // warm up
    let start = Instant::now();
    for _ in 0..iters {
        run();
    }
    println!("{}", start.elapsed().as_secs_f64());
}

/// `fork`, `_exit(0)` in the child, `waitpid` in the parent.
fn fork_exit_wait() {
    // SAFETY: single-threaded; the child only calls `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    wait(pid);
}

/// `fork`, `execv("/bin/true")` in the child, `waitpid` in the parent.
fn fork_exec_wait() {
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: single-threaded; the child only calls `execv` and `_exit`, with strings
    // prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            libc::execv(path.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    wait(pid);
}

fn wait(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into a local.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
}
