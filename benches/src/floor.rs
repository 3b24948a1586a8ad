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
        "pipe-stream-8" => return println!("{}", pipe_stream(8, iters)),
        "pipe-stream-1m" => return println!("{}", pipe_stream(1 << 20, iters)),
        "pipe-ping-pong" => return println!("{}", pipe_ping_pong(iters)),
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

/// One `write` of `size` bytes per message into a pipe, a child reading them: the
/// kernel's cost of moving a message between processes. Returns seconds until the
/// child has read everything and exited.
fn pipe_stream(size: usize, iters: u64) -> f64 {
    let (r, w) = pipe();
    let total = size as u64 * iters;
    // SAFETY: single-threaded; the child reads, then exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain descriptor calls on our own descriptors.
        unsafe {
            libc::close(w);
            let mut buf = vec![0u8; size.max(65536)];
            let mut got = 0u64;
            while got < total {
                let n = libc::read(r, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                got += n as u64;
            }
            libc::_exit(0);
        }
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(r) };
    let msg = vec![7u8; size];
    let start = Instant::now();
    for _ in 0..iters {
        let mut done = 0;
        while done < size {
            // SAFETY: writes from a live buffer to our own descriptor.
            let n = unsafe { libc::write(w, msg[done..].as_ptr().cast(), size - done) };
            assert!(n > 0, "write failed");
            done += n as usize;
        }
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(w) };
    wait(pid);
    start.elapsed().as_secs_f64()
}

/// An 8-byte message to a child and back over two pipes: the kernel's round trip.
fn pipe_ping_pong(iters: u64) -> f64 {
    let (from_parent, to_child) = pipe();
    let (from_child, to_parent) = pipe();
    // SAFETY: single-threaded; the child echoes, then exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    let mut buf = [0u8; 8];
    if pid == 0 {
        // SAFETY: plain descriptor calls on our own descriptors and a local buffer.
        unsafe {
            libc::close(to_child);
            libc::close(from_child);
            while libc::read(from_parent, buf.as_mut_ptr().cast(), 8) == 8 {
                libc::write(to_parent, buf.as_ptr().cast(), 8);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: the child's ends, which the parent must not hold (or the child never sees
    // the end of its input).
    unsafe {
        libc::close(from_parent);
        libc::close(to_parent);
    }
    let start = Instant::now();
    for _ in 0..iters {
        // SAFETY: as above.
        unsafe {
            libc::write(to_child, buf.as_ptr().cast(), 8);
            libc::read(from_child, buf.as_mut_ptr().cast(), 8);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // SAFETY: closing our end ends the child's loop.
    unsafe { libc::close(to_child) };
    wait(pid);
    elapsed
}

fn pipe() -> (libc::c_int, libc::c_int) {
    let mut fds = [0; 2];
    // SAFETY: writes two descriptors into a local array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    (fds[0], fds[1])
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
