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
        "mutex-counter" => return println!("{}", mutex_counter(false, iters)),
        "robust-mutex-counter" => return println!("{}", mutex_counter(true, iters)),
        "futex-ping-pong" => return println!("{}", ping_pong(Turn::Futex, iters)),
        "yield-ping-pong" => return println!("{}", ping_pong(Turn::Yield, iters)),
        "line-ping-pong" => return println!("{}", ping_pong(Turn::Spin, iters)),
        "yield-ping-pong-one-cpu" => {
            stay_on_this_cpu();
            return println!("{}", ping_pong(Turn::Yield, iters));
        }
        "pthread-barrier" => return println!("{}", pthread_barrier(iters)),
        "shm-backlog-1k" => return println!("{}", shm_backlog(1 << 10, iters)),
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

/// Bytes of shared memory the backlog floor maps at a time.
const SEGMENT: usize = 4 << 20;

/// `iters` messages of `size` bytes copied one by one into new shared memory (memfds
/// of [`SEGMENT`] bytes, mapped with `MAP_POPULATE`), then a forked child maps each
/// memfd, copies the messages out one by one and closes it (freeing its pages): the
/// kernel's cost of holding a backlog in shared memory until a new process reads it.
/// Returns seconds from the first copy until the child is reaped.
fn shm_backlog(size: usize, iters: u64) -> f64 {
    let per_segment = (SEGMENT / size) as u64;
    let msg = vec![7u8; size];
    let start = Instant::now();
    let mut segments = Vec::new();
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_segment);
        left -= n;
        // SAFETY: a new memfd of our own, mapped whole, written within its length,
        // unmapped before its descriptor is kept.
        unsafe {
            let fd = libc::memfd_create(c"floor".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create failed");
            assert_eq!(libc::ftruncate(fd, SEGMENT as libc::off_t), 0, "ftruncate");
            let at = map(fd);
            for i in 0..n as usize {
                std::ptr::copy_nonoverlapping(msg.as_ptr(), at.add(i * size), size);
            }
            libc::munmap(at.cast(), SEGMENT);
            segments.push((fd, n));
        }
    }
    let reader = fork_running(|| {
        let mut buf = vec![0u8; size];
        let mut sum = 0u64;
        for &(fd, n) in &segments {
            // SAFETY: maps a memfd the parent filled; reads within its length; the
            // descriptor is this process's own copy.
            unsafe {
                let at = map(fd);
                for i in 0..n as usize {
                    std::ptr::copy_nonoverlapping(at.add(i * size), buf.as_mut_ptr(), size);
                    sum += u64::from(std::hint::black_box(&buf)[size - 1]);
                }
                libc::munmap(at.cast(), SEGMENT);
                libc::close(fd);
            }
        }
        if sum != 7 * iters {
            // SAFETY: ends the child, telling the parent it read other bytes.
            unsafe { libc::_exit(3) };
        }
    });
    for &(fd, _) in &segments {
        // SAFETY: our own descriptors; the child holds the last copies.
        unsafe { libc::close(fd) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into a local.
    assert_eq!(unsafe { libc::waitpid(reader, &mut status, 0) }, reader);
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(status, 0, "the floor's reader read other bytes or died");
    elapsed
}

/// Maps [`SEGMENT`] bytes of `fd` shared, read and write, its pages populated.
fn map(fd: libc::c_int) -> *mut u8 {
    // SAFETY: a fresh mapping chosen by the kernel of a descriptor the caller owns.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SEGMENT,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            0,
        )
    };
    assert_ne!(at, libc::MAP_FAILED, "mmap failed");
    at.cast()
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

/// Anonymous shared memory for a `T`, zeroed, mapped before a fork so that parent and
/// children share it. Never unmapped: the floor process exits right after.
fn shared<T>() -> *mut T {
    // SAFETY: a fresh anonymous shared mapping chosen by the kernel.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<T>().max(4096),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap failed");
    p.cast()
}

/// Forks a child that runs `f` and exits.
fn fork_running(f: impl FnOnce()) -> libc::pid_t {
    // SAFETY: single-threaded; the child runs `f` (plain shared-memory and futex calls)
    // and exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        f();
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(0) };
    }
    pid
}

#[repr(C)]
struct Counter {
    mutex: libc::pthread_mutex_t,
    value: u64,
    go: std::sync::atomic::AtomicU32,
}

/// Two processes each take a `PTHREAD_PROCESS_SHARED` mutex (robust or not) and add 1
/// to a counter `iters / 2` times, starting together; the seconds until both are reaped.
fn mutex_counter(robust: bool, iters: u64) -> f64 {
    use std::sync::atomic::Ordering::SeqCst;
    let c = shared::<Counter>();
    // SAFETY: initialises the mutex in the fresh mapping with a process-shared (and
    // optionally robust) attribute, before any other process exists.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        if robust {
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        }
        assert_eq!(libc::pthread_mutex_init(&raw mut (*c).mutex, &attr), 0);
    }
    let half = iters / 2;
    let add = || {
        // SAFETY: the counter lives in the shared mapping for the whole process; the
        // mutex serialises the increments across both processes.
        unsafe {
            while (*c).go.load(SeqCst) == 0 {
                std::hint::spin_loop();
            }
            for _ in 0..half {
                libc::pthread_mutex_lock(&raw mut (*c).mutex);
                (*c).value += 1;
                libc::pthread_mutex_unlock(&raw mut (*c).mutex);
            }
        }
    };
    let kids = [fork_running(add), fork_running(add)];
    std::thread::sleep(std::time::Duration::from_millis(20));
    let start = Instant::now();
    // SAFETY: the flag is an atomic in the shared mapping.
    unsafe { (*c).go.store(1, SeqCst) };
    for pid in kids {
        wait(pid);
    }
    let elapsed = start.elapsed().as_secs_f64();
    // SAFETY: both children are gone; nobody else touches the counter.
    assert_eq!(unsafe { (*c).value }, 2 * half);
    elapsed
}

/// Keeps this process (and the children it forks) on the CPU it runs on now: two
/// processes that take turns on one CPU, as the two of a hand-off do on a machine
/// whose other CPUs are taken.
fn stay_on_this_cpu() {
    // SAFETY: plain system calls on this process, with a set built by the libc macros.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How a process of [`ping_pong`] waits for its turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Asleep on the word (a futex): the floor of a sleeping hand-off.
    Futex,
    /// Looking at the word with `sched_yield` between looks: the floor of a hand-off
    /// that never sleeps, which two processes sharing one CPU pay as a context switch
    /// each way (`multiproc-bench floor yield-ping-pong-one-cpu N`), and two on CPUs of
    /// their own as a system call.
    Yield,
    /// Looking at the word and nothing else: one cache line crossing between the two
    /// CPUs each way, the least any hand-off through shared memory costs (and a whole
    /// time slice lost for each turn when the two share a CPU: measured only on a quiet
    /// machine). `benches/models/line_ping_pong.c` is the same loop in C.
    Spin,
}

/// Two processes hand a turn back and forth `iters` times through a word of shared
/// memory, waiting for their turn as `how` says.
fn ping_pong(how: Turn, iters: u64) -> f64 {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    let turn = shared::<AtomicU32>();
    // SAFETY: the word lives in the shared mapping for the whole process.
    let turn: &'static AtomicU32 = unsafe { &*turn };
    let rounds = (iters / 2) as u32;
    let wait_for = |want: u32| loop {
        let now = turn.load(SeqCst);
        if now == want {
            return;
        }
        match how {
            Turn::Spin => {
                std::hint::spin_loop();
                continue;
            }
            Turn::Yield => {
                std::thread::yield_now();
                continue;
            }
            Turn::Futex => {}
        }
        // SAFETY: FUTEX_WAIT on a word of shared memory, which stays mapped.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                turn.as_ptr(),
                libc::FUTEX_WAIT,
                now,
                std::ptr::null::<libc::timespec>(),
            )
        };
    };
    let hand = |to: u32| {
        turn.store(to, SeqCst);
        if how == Turn::Futex {
            // SAFETY: FUTEX_WAKE on the same word.
            unsafe { libc::syscall(libc::SYS_futex, turn.as_ptr(), libc::FUTEX_WAKE, 1) };
        }
    };
    let child = fork_running(|| {
        for i in 0..=rounds {
            wait_for(2 * i + 1);
            hand(2 * i + 2);
        }
    });
    hand(1);
    wait_for(2);
    let start = Instant::now();
    for i in 1..=rounds {
        hand(2 * i + 1);
        wait_for(2 * i + 2);
    }
    let elapsed = start.elapsed().as_secs_f64();
    wait(child);
    elapsed
}

/// This process and a child pass a `PTHREAD_PROCESS_SHARED` barrier `iters` times.
fn pthread_barrier(iters: u64) -> f64 {
    let b = shared::<libc::pthread_barrier_t>();
    // SAFETY: initialises the barrier in the fresh mapping, before the fork.
    unsafe {
        let mut attr: libc::pthread_barrierattr_t = std::mem::zeroed();
        libc::pthread_barrierattr_init(&mut attr);
        libc::pthread_barrierattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        assert_eq!(libc::pthread_barrier_init(b, &attr, 2), 0);
    }
    let pass = move || {
        // SAFETY: the barrier lives in the shared mapping for the whole process.
        unsafe { libc::pthread_barrier_wait(b) };
    };
    let child = fork_running(move || {
        for _ in 0..=iters {
            pass();
        }
    });
    pass();
    let start = Instant::now();
    for _ in 0..iters {
        pass();
    }
    let elapsed = start.elapsed().as_secs_f64();
    wait(child);
    elapsed
}
