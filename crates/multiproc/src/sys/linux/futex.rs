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
    let start = start_time(tid).unwrap_or(0);
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
    let start = start_time(pid).unwrap_or(0);
    (u64::from(start as u32) << 32) | u64::from(pid)
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
    stat_of(tid).map(|(_, start)| start)
}

/// The state letter (field 3) and start time (field 22) of thread `tid`.
fn stat_of(tid: u32) -> Option<(char, u64)> {
    let stat = super::proc::read_proc(&format!("/proc/{tid}/stat"))?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Whether the thread an identity names is stopped (`SIGSTOP`, a tracer): it holds what
/// it holds until someone continues it.
pub(crate) fn identity_stopped(identity: u64) -> bool {
    matches!(
        stat_of(identity as u32),
        Some(('T' | 't', start)) if (start as u32) == (identity >> 32) as u32
    )
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
        // A zombie (or a task being reaped) is dead, even before its parent reaps it.
        Some(('Z' | 'X', _)) => false,
        Some((_, start)) => (start as u32) == (identity >> 32) as u32,
        // It exists but /proc is unreadable (another pid namespace, hidepid): trust it.
        None => true,
    }
}

/// A descriptor registered with async-io's reactor, to poll for readability from a
/// `Future` (a process's pidfd, its result channel). A duplicate is registered, left in
/// the blocking mode the original has: only readiness is asked, nothing is read
/// through it.
#[derive(Debug)]
pub(crate) struct Watched(async_io::Async<std::os::fd::OwnedFd>);

impl Watched {
    pub(crate) fn new(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Self> {
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
    let mut watched = Vec::with_capacity(fds.len());
    for fd in fds {
        watched.push(async_io::Async::new(super::fd::dup(*fd)?)?);
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
