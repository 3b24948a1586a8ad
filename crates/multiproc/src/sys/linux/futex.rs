//! Waiting across processes: futexes on shared memory, the monotonic clock every process
//! shares, and identities of threads whose liveness another process can check (what
//! robust process-shared locks are built from).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::thread::futex;

/// Sleeps while `*word == expected`, until woken, `timeout` passes (`None`: no limit), or
/// a spurious wake-up. The word may live in memory shared with other processes.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    // EAGAIN (the word changed), ETIMEDOUT and EINTR all mean: look again.
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes up to `n` sleepers on `word` (in any process); `u32::MAX` wakes them all.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    // The kernel reads the count as an `int`: anything above `i32::MAX` would be
    // negative there, and wake a single sleeper.
    let _ = futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32));
}

/// Counts forks, so that identities cached before a fork are not reused after it.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// This process's id, cached until the next fork: `getpid` is a system call, and a
/// manager's client asks on every call whether it is still the process that opened its
/// connections.
pub(crate) fn process_id() -> u32 {
    /// The low 32 bits of `FORKS` when cached, then the id; 0 until cached.
    static PID: AtomicU64 = AtomicU64::new(0);
    let forks = FORKS.load(Ordering::Relaxed) as u32;
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 && (cached >> 32) as u32 == forks {
        return cached as u32;
    }
    // Registered before the id is cached, so every later fork is counted.
    register_fork_handler();
    let forks = FORKS.load(Ordering::Relaxed) as u32;
    let pid = super::getpid();
    PID.store(u64::from(forks) << 32 | u64::from(pid), Ordering::Relaxed);
    pid
}

thread_local! {
    /// (identity, forks when computed)
    static IDENTITY: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, u64::MAX)) };
}

/// A non-zero number naming the calling thread among all threads alive on the system
/// and all that have lived since boot: its thread id in the low 32 bits, the low 32
/// bits of its start time (clock ticks since boot) in the high ones. A thread id alone
/// may be reused after the thread exits; the pair is not, in practice.
#[inline]
pub(crate) fn thread_identity() -> u64 {
    let forks = FORKS.load(Ordering::Relaxed);
    let (cached, at) = IDENTITY.with(|c| c.get());
    if cached != 0 && at == forks {
        return cached;
    }
    compute_identity(forks)
}

#[cold]
#[inline(never)]
fn compute_identity(forks: u64) -> u64 {
    register_fork_handler();
    let tid = rustix::thread::gettid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs();
    // Unreadable (no descriptor free, say): the start is recorded as unknown, which
    // `identity_alive` takes as "any thread of this id". Cached all the same: a thread
    // keeps one identity (a re-entrant lock compares it with its owner's).
    let start = start_time(tid).unwrap_or(UNKNOWN_START.into());
    let identity = (u64::from(start as u32) << 32) | u64::from(tid);
    IDENTITY.with(|c| c.set((identity, forks)));
    identity
}

fn register_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function that only bumps an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

/// This process's identity, in the form [`thread_identity`] gives (its main thread's:
/// the process id and its start time), which any process on the machine can check with
/// [`identity_alive`]. Not cached: for records that outlive a call, not for hot paths.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn process_identity() -> u64 {
    let pid = process_id();
    // Unknown (no descriptor left to read it with), it is recorded as such: as 0 it
    // named no live process, and a live scheduler's claims looked like a dead one's.
    let start = start_time(pid).map_or(UNKNOWN_START, |s| s as u32);
    (u64::from(start) << 32) | u64::from(pid)
}

/// What names this machine across boots: its `machine-id` (systemd's
/// `/etc/machine-id`, or D-Bus's copy), else its host name. Empty if none can be read.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn machine_id() -> String {
    [
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
        "/proc/sys/kernel/hostname",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .map(|s| s.trim().replace('/', "_"))
    .find(|s| !s.is_empty())
    .unwrap_or_default()
}

/// What names this boot of the machine (`/proc/sys/kernel/random/boot_id`): an identity
/// recorded before a reboot names no live process, whatever its numbers. Empty if it
/// cannot be read.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The start time of thread `tid`, from `/proc/<tid>/stat` (field 22).
fn start_time(tid: u32) -> Option<u64> {
    stat_of(tid).map(|s| s.start)
}

/// The kernel's flag for a task in its exit (`PF_EXITING`, `include/linux/sched.h`): set
/// as the exit begins, before the task gives back its memory and its descriptors; the
/// task runs none of its own code from then on.
const PF_EXITING: u64 = 0x4;

/// What `/proc/TID/stat` says of a thread.
struct Stat {
    /// The state letter (field 3).
    state: char,
    /// Whether the thread has begun to exit (field 9, the flags, has `PF_EXITING`).
    exiting: bool,
    /// The start time (field 22).
    start: u64,
}

/// What `/proc/TID/stat` says of thread `tid` (`None`: no such thread, or unreadable).
fn stat_of(tid: u32) -> Option<Stat> {
    let stat = super::proc::read_proc(&format!("/proc/{tid}/stat"))?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The name (field 2) may hold spaces and parentheses: fields 3 on follow the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let flags: u64 = fields.nth(5)?.parse().ok()?;
    let start = fields.nth(12)?.parse().ok()?;
    Some(Stat {
        state,
        exiting: flags & PF_EXITING != 0,
        start,
    })
}

/// The start an identity records when its thread could not read its own (every
/// descriptor in use). Not 0: an identity some bytes of garbage wrote over the low half
/// of a lock word (the high half left 0) would then name any live thread of that id, a
/// kernel thread or init say, for ever.
const UNKNOWN_START: u32 = u32::MAX;

/// Whether a thread that started at `start` (clock ticks) is the one `identity` names,
/// as far as its recorded start tells (an unknown one: any thread of its id is).
fn same_start(identity: u64, start: u64) -> bool {
    let recorded = (identity >> 32) as u32;
    recorded == UNKNOWN_START || recorded == start as u32
}

/// Whether the thread an identity names is stopped (`SIGSTOP`, a tracer): it holds what
/// it holds until someone continues it.
pub(crate) fn identity_stopped(identity: u64) -> bool {
    matches!(
        stat_of(identity as u32),
        Some(Stat { state: 'T' | 't', start, .. })
            if same_start(identity, start)
    )
}

/// Whether the thread an identity names is stopped by a signal (`SIGSTOP`, `SIGTSTP`;
/// state `T`), not by a tracer (`t`: a debugger that stopped it at a breakpoint).
pub(crate) fn identity_stopped_by_signal(identity: u64) -> bool {
    matches!(
        stat_of(identity as u32),
        Some(Stat { state: 'T', start, .. }) if same_start(identity, start)
    )
}

/// Whether the thread an identity names is a thread of process `pid`.
pub(crate) fn identity_in_process(identity: u64, pid: u32) -> bool {
    let tid = identity as u32;
    tid == pid
        || rustix::fs::access(
            format!("/proc/{pid}/task/{tid}"),
            rustix::fs::Access::EXISTS,
        )
        .is_ok()
}

/// Stops the calling process (`SIGSTOP`), as an operator's `kill -STOP` would (for a
/// debug-build test hook).
#[cfg(debug_assertions)]
pub(crate) fn stop_self() {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
}

/// Whether the thread an identity names is still alive. `false` is definite (the thread
/// ended; its id may since belong to another); `true` means it, or a thread with its id
/// and start time, exists.
pub(crate) fn identity_alive(identity: u64) -> bool {
    let tid = identity as u32;
    let Some(pid) = i32::try_from(tid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // `kill(tid, 0)`: does a task with this id exist? (A thread id works here.)
    if let Err(Errno::SRCH) = rustix::process::test_kill_process(pid) {
        return false;
    }
    match stat_of(tid) {
        // A zombie (or a task being reaped) is dead, even before its parent reaps it; so
        // is one whose exit has begun (a killed process giving back a large address
        // space takes a while): it will not let go of anything it holds.
        Some(Stat {
            state: 'Z' | 'X', ..
        }) => false,
        Some(Stat { exiting, start, .. }) => !exiting && same_start(identity, start),
        // Its `stat` is there but could not be read: this process is out of descriptors
        // (a waiter under `Limits::open_files`, say). Its executable's link, read
        // without one, is gone once it has given back its memory: a zombie, or one
        // whose exit is under way (trusted alive, a killed holder that its parent had
        // not reaped yet kept an untimed `lock` waiting, until that parent joined it:
        // for ever, when the parent was the waiter).
        None if proc_file_readable(tid, "stat") => !matches!(
            rustix::fs::readlink(format!("/proc/{tid}/exe"), Vec::new()),
            Err(Errno::NOENT)
        ),
        // It exists but /proc is unreadable (another pid namespace, hidepid): trust it.
        None => true,
    }
}

/// Whether `/proc/<tid>/<file>` exists and this process may read it (asked without a
/// descriptor).
fn proc_file_readable(tid: u32, file: &str) -> bool {
    rustix::fs::access(format!("/proc/{tid}/{file}"), rustix::fs::Access::READ_OK).is_ok()
}

/// A descriptor registered with async-io's reactor, to poll for readability from a
/// `Future` (a process's pidfd, its result channel). A duplicate is registered, left in
/// the blocking mode the original has: only readiness is asked, nothing is read
/// through it.
#[derive(Debug)]
pub(crate) struct Watched(async_io::Async<std::os::fd::OwnedFd>);

/// Starts async-io's reactor if this process has not yet: its poller takes an epoll, an
/// eventfd and a timerfd, and `expect`s the first two, so that a first registration in a
/// process with one or two descriptors free panicked (the first `.await` of a process
/// handle there), where one with none free got `EMFILE` and its caller's fallback. Room
/// for the poller and the registration that starts it is made and let go first, so
/// that a process short of it gets `EMFILE` too (another thread could take that room
/// in between: the window is this call's few system calls).
fn reactor_ready() -> std::io::Result<()> {
    static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if READY.load(Ordering::Acquire) {
        return Ok(());
    }
    let room = [super::doorbell()?, super::doorbell()?, super::doorbell()?];
    drop(room);
    drop(async_io::Async::new(super::doorbell()?)?);
    READY.store(true, Ordering::Release);
    Ok(())
}

impl Watched {
    pub(crate) fn new(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Self> {
        reactor_ready()?;
        async_io::Async::new_nonblocking(super::fd::dup(fd)?).map(Watched)
    }

    /// Ready once the descriptor is readable (or hung up); otherwise the task's waker
    /// is woken when it becomes so.
    pub(crate) fn poll_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.poll_readable(cx)
    }
}

/// Waits, without blocking the thread, until one of `fds` is readable (or hung up) or
/// `until` passes. Works under any async runtime: async-io's reactor drives itself when
/// no smol executor does.
pub(crate) async fn readable_any(
    fds: &[std::os::fd::BorrowedFd<'_>],
    until: Instant,
) -> std::io::Result<()> {
    use futures_lite::future;
    reactor_ready()?;
    let mut watched = Vec::with_capacity(fds.len());
    for fd in fds {
        // As `Watched`: a duplicate shares its file's flags with the original (and
        // every process holding it), so it is not made non-blocking; the reactor only
        // waits for readiness, and nothing reads through it.
        watched.push(async_io::Async::new_nonblocking(super::fd::dup(*fd)?)?);
    }
    let timer = async {
        async_io::Timer::at(until).await;
        Ok(())
    };
    let mut any: std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + '_>,
    > = Box::pin(timer);
    for w in &watched {
        any = Box::pin(future::or(any, w.readable()));
    }
    any.await
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process on the machine.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::wait_readable;
    use std::os::fd::{AsFd, AsRawFd};

    /// A wait for readability leaves the descriptor as it was: its flags belong to the
    /// file, which other handles and processes share (a pipe made non-blocking under
    /// them fails their blocking reads with `EAGAIN`).
    #[test]
    fn an_async_wait_leaves_the_descriptor_blocking() {
        let (read, _write) = super::super::fd::pipe().unwrap();
        let until = Instant::now() + std::time::Duration::from_millis(10);
        futures_lite::future::block_on(readable_any(&[read.as_fd()], until)).unwrap();
        let flags = rustix::fs::fcntl_getfl(&read).unwrap();
        assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK), "{flags:?}");
    }

    /// The credentials of the other end of a socket pair are this process's.
    #[test]
    fn a_peers_credentials_are_read() {
        let (a, _b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert_eq!(
            super::super::fd::peer_credentials(a.as_fd()).unwrap(),
            (std::process::id(), rustix::process::getuid().as_raw())
        );
    }

    #[test]
    fn a_threads_stat_line_is_read_past_its_name() {
        // A name may hold spaces and parentheses; the fields after it are counted from
        // the last ')'.
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194628 90 0 0 0 1 2 0 0 20 0 1 0 \
                    123456 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.state, 'S');
        assert!(stat.exiting, "4194628 = 0x400144 has PF_EXITING");
        assert_eq!(stat.start, 123_456);
        let line = line.replace("4194628", "4194624");
        assert!(!parse_stat(&line).expect("parses").exiting);
        assert!(parse_stat("4242 (cut short) S 1 2").is_none());
        // What this kernel writes parses: this thread runs, and its start time is the
        // one in its identity.
        let me = thread_identity();
        let stat = stat_of(me as u32).expect("this thread's stat");
        assert!(!stat.exiting);
        assert_eq!(stat.start as u32, (me >> 32) as u32);
        assert!(identity_alive(me));
    }

    /// A child (its pidfd), killed and reaped (within 10 s) when dropped.
    struct Child(std::os::fd::OwnedFd);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = crate::sys::send_signal(self.0.as_fd(), crate::sys::SIGKILL);
            let until = Instant::now() + Duration::from_secs(10);
            let _ = wait_readable(&[self.0.as_fd()], Some(until));
            let _ = crate::sys::try_reap(self.0.as_fd());
        }
    }

    /// A process whose exit has begun lets go of nothing more: it counts as dead before
    /// it is a zombie. A killed process gives its memory back before it becomes one,
    /// and a lock it held must not wait for that: here 64 MiB in small pages, some
    /// milliseconds. A test kept off the CPU for all of them misses the exit, and tries
    /// again with another child (5 times at most).
    #[test]
    fn a_process_whose_exit_has_begun_is_not_alive() {
        for _ in 0..5 {
            if exit_seen_as_death() {
                return;
            }
        }
        panic!("5 children were zombies before their exit could be seen");
    }

    /// Kills a child with 64 MiB of its own and looks at it during its exit: false if it
    /// was a zombie before its exit was seen.
    fn exit_seen_as_death() -> bool {
        const SIZE: usize = 64 << 20;
        let (ready_read, ready_write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        // SAFETY: the child only makes system calls (async-signal-safe), writes to
        // memory it mapped, and waits to be killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                // Other tests' descriptors (their channels' ends) are not this child's
                // to keep open while it lives.
                let keep = ready_write.as_raw_fd() as libc::c_uint;
                libc::syscall(libc::SYS_close_range, 3, keep - 1, 0);
                libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
                let memory = libc::mmap(
                    std::ptr::null_mut(),
                    SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if memory == libc::MAP_FAILED {
                    libc::_exit(1);
                }
                libc::madvise(memory, SIZE, libc::MADV_NOHUGEPAGE);
                for page in (0..SIZE).step_by(4096) {
                    memory.cast::<u8>().add(page).write_volatile(1);
                }
                libc::write(ready_write.as_raw_fd(), [1u8].as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        let child = Child(crate::sys::child_pidfd(pid as u32).expect("the child's pidfd"));
        drop(ready_write);
        let ready = wait_readable(
            &[ready_read.as_fd()],
            Some(Instant::now() + Duration::from_secs(10)),
        )
        .expect("poll");
        assert!(
            ready[0].ready(),
            "the child did not fill its memory within 10 s"
        );
        let mut byte = [0u8];
        assert_eq!(
            rustix::io::read(&ready_read, &mut byte).ok(),
            Some(1),
            "the child could not map its memory"
        );
        let start = start_time(pid as u32).expect("the child's start time");
        let identity = (u64::from(start as u32) << 32) | u64::from(pid as u32);
        assert!(identity_alive(identity), "a running child is alive");
        crate::sys::send_signal(child.0.as_fd(), crate::sys::SIGKILL).expect("SIGKILL");
        let until = Instant::now() + Duration::from_secs(10);
        let in_exit = |stat: &Option<Stat>| matches!(stat, Some(s) if s.exiting && !matches!(s.state, 'Z' | 'X'));
        loop {
            let before = stat_of(pid as u32);
            assert!(before.is_some(), "the child is there until it is reaped");
            if in_exit(&before) {
                let alive = identity_alive(identity);
                // Still in its exit after the look: what the look saw was the exit.
                if in_exit(&stat_of(pid as u32)) {
                    assert!(!alive, "a process in its exit is not alive");
                    assert!(!identity_stopped(identity));
                    return true;
                }
            }
            if matches!(before, Some(Stat { state: 'Z', .. })) {
                return false;
            }
            assert!(Instant::now() < until, "the child did not exit within 10 s");
        }
    }
}
