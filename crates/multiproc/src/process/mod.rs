//! Processes: [`spawn`], [`Builder`], [`JoinHandle`], and what a process knows about itself.
// `Builder::spawn_fork` is an `unsafe fn` by design, and its one unsafe block is the fork
// it asks for, under the contract its `# Safety` section states.
#![allow(unsafe_code)]

mod current;
mod error;
mod handle;
mod limits;
mod registry;
mod status;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use current::{
    CurrentProcess, ParentProcess, active_children, cpu_count, current_process, parent_process,
};
pub(crate) use error::NOT_IN_EXECUTABLE;
pub use error::{ProcessError, SpawnError};
pub use handle::{ChildProcess, JoinHandle};
pub(crate) use limits::Armed;

/// The status a pool worker exits with when it has no descriptor free to take in its
/// next task's (see `pool::worker`): read as the open-files limit where one is set.
pub(crate) const OUT_OF_DESCRIPTORS: i32 = 121;
pub use limits::{Limit, Limits, MemoryCap};
pub use status::{ExitStatus, Signal};

use handle::{Channel, ChildRecord, StatusSource};
pub(crate) use handle::{HeldAcrossFork, set_hold_across_fork};

use crate::bootstrap::{self, MAX_DEPTH, Me, Parent, messages};
use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};
use crate::wire::codec;
use crate::wire::codec::{CodecError, Kept};
use crate::wire::framing::Conn;

/// How a child process is started.
///
/// Both methods start children from the *fork server*, a small single-threaded process
/// that `init()` forks before `main` does anything else. Either way a child starts from
/// the program's state as it was at that point (statics at their initial values), not as
/// a copy of the parent's memory, so it is safe whatever threads the parent runs.
///
/// What a child takes from the parent at each spawn: its directory, environment, soft
/// limit on open descriptors, `SIGPIPE` choice, and its users and groups (a program that
/// drops root's privileges after `init` has children that run as it does then). The
/// rest of the process's standing is the fork server's, so the program's as it was at
/// `init`: its umask, other resource limits, capabilities, and the namespaces and
/// cgroup it ran in (a child with a memory cap has a cgroup of its own). Set those before
/// `init`, or in the child.
///
/// On x86-64 the fork server keeps the part of the program's code that fills whole
/// 2 MiB blocks on huge pages (the same bytes at the same addresses), so that its
/// children run that code without a page fault per 64 KiB of it. Each child counts such
/// a block whole in its resident set (RSS), though all share one copy: a pool worker of
/// a program with 4 MiB of code peaks about 1.3 MiB higher than with the code left in
/// place, the fork server about 3.4 MiB (the copy it made). A profiler attached to
/// the program after it started (`perf record -p`) sees that code as anonymous memory
/// (`[JIT]`), and uprobes placed there afterwards do not fire in the children; a
/// profiler that starts the program names its functions as usual.
/// `MULTIPROC_HUGE_CODE=0` in the environment keeps the code where it was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartMethod {
    /// The fork server forks and the child runs the function: the fastest start.
    #[default]
    ForkServer,
    /// The fork server forks and the child executes the program afresh
    /// (`/proc/self/exe`, so a program replaced on disk since it started still runs its
    /// own code), then runs the function: a completely fresh process, as Python's
    /// `spawn`. Slower to start.
    Spawn,
}

static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(0);

/// Calls up to this size are sent before the child exists, where the empty socket takes
/// them without waiting (see [`early_call_limit`]).
const EARLY_CALL_LIMIT: usize = 64 * 1024;

/// The largest call sent on `sock` before the child exists: one that the empty socket
/// takes without waiting, less room for the frame's header, and at most
/// [`EARLY_CALL_LIMIT`]. The socket's buffer is asked, not assumed: with
/// `net.core.wmem_default` set low, a send of 64 KiB waited for a reader that did not
/// exist yet, for ever.
fn early_call_limit(sock: BorrowedFd<'_>) -> usize {
    sys::send_room(sock).map_or(0, |room| room.saturating_sub(4096).min(EARLY_CALL_LIMIT))
}

/// Sets the start method used when a [`Builder`] does not choose one (Python's
/// `multiprocessing.set_start_method`).
pub fn set_start_method(method: StartMethod) {
    let code = match method {
        StartMethod::ForkServer => 0,
        StartMethod::Spawn => 1,
    };
    DEFAULT_METHOD.store(code, Ordering::Relaxed);
}

/// The start method used when a [`Builder`] does not choose one.
pub fn get_start_method() -> StartMethod {
    match DEFAULT_METHOD.load(Ordering::Relaxed) {
        1 => StartMethod::Spawn,
        _ => StartMethod::ForkServer,
    }
}

/// Where a child's standard input or output goes.
pub struct Stdio(StdioKind);

enum StdioKind {
    Inherit,
    Null,
    Piped,
    File(std::fs::File),
    #[cfg(unix)]
    Fd(OwnedFd),
}

impl Stdio {
    /// The parent's own stream (the default for stdout and stderr).
    pub fn inherit() -> Self {
        Stdio(StdioKind::Inherit)
    }

    /// `/dev/null` (the default for stdin, as in Python).
    pub fn null() -> Self {
        Stdio(StdioKind::Null)
    }

    /// A new pipe; the parent's end is taken with
    /// [`JoinHandle::take_stdin`]/[`take_stdout`](JoinHandle::take_stdout)/
    /// [`take_stderr`](JoinHandle::take_stderr). An end not taken is closed with the
    /// handle, a stdin's by `join` (or the first poll as a future), and
    /// every one as the program's exit begins joining its children (a child reading its
    /// input to the end, or writing more than the pipe holds, would otherwise hold the
    /// exit for ever): take a stream before then to read it to its end.
    pub fn piped() -> Self {
        Stdio(StdioKind::Piped)
    }

    /// Resolves to the descriptor the child gets and, for a pipe, the parent's end.
    fn resolve(self, which: u8) -> std::io::Result<(OwnedFd, Option<OwnedFd>)> {
        Ok(match self.0 {
            StdioKind::Inherit => match sys::dup_stdio(which) {
                Ok(fd) => (fd, None),
                // Our own stream is closed: the child gets nothing to write to either.
                Err(_) => (sys::dev_null()?, None),
            },
            StdioKind::Null => (sys::dev_null()?, None),
            StdioKind::Piped => {
                let (read, write) = sys::pipe()?;
                if which == 0 {
                    (read, Some(write))
                } else {
                    (write, Some(read))
                }
            }
            StdioKind::File(file) => (sys::file_fd(file), None),
            #[cfg(unix)]
            StdioKind::Fd(fd) => (fd, None),
        })
    }
}

impl fmt::Debug for Stdio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            StdioKind::Inherit => "Stdio::inherit()",
            StdioKind::Null => "Stdio::null()",
            StdioKind::Piped => "Stdio::piped()",
            StdioKind::File(_) => "Stdio::from(File)",
            #[cfg(unix)]
            StdioKind::Fd(_) => "Stdio::from(OwnedFd)",
        })
    }
}

impl From<std::fs::File> for Stdio {
    fn from(file: std::fs::File) -> Self {
        Stdio(StdioKind::File(file))
    }
}

#[cfg(unix)]
impl From<std::os::fd::OwnedFd> for Stdio {
    fn from(fd: std::os::fd::OwnedFd) -> Self {
        Stdio(StdioKind::Fd(fd))
    }
}

/// Configures a child process before starting it: name, daemon flag, start method,
/// environment, directory and standard streams. The counterpart of
/// [`std::thread::Builder`] and of Python's `Process(name=..., daemon=...)`.
///
/// # Examples
///
/// ```no_run
/// use multiproc::{Builder, Stdio};
///
/// fn work(n: u32) -> u32 {
///     n + 1
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let child = Builder::new()
///     .name("renamed worker")
///     .daemon(true)
///     .env("WORKER_MODE", "fast")
///     .stdout(Stdio::null())
///     .spawn(work, 41)?;
/// assert_eq!(child.join()?, 42);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct Builder {
    name: Option<String>,
    daemon: bool,
    process_group: bool,
    method: Option<StartMethod>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    limits: Limits,
}

impl Builder {
    /// A builder with the defaults: named `Process-N`, not a daemon, the default start
    /// method, the parent's environment and directory, stdin from `/dev/null`, stdout and
    /// stderr inherited.
    pub fn new() -> Self {
        Builder::default()
    }

    /// Names the process (also shown by `ps` and `top`, truncated to 15 bytes).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemon child never outlives its parent, however the parent ends (`SIGKILL`
    /// included), and is terminated when the parent exits normally. A non-daemon child is
    /// joined when the parent exits normally, and keeps running if the parent is killed.
    ///
    /// A child of a daemon process (a pool worker is one) is always a daemon: it could
    /// not outlive its parent without outliving its grandparent, whose daemon promise
    /// covers it. (Python refuses to start children from a daemon process instead.)
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Starts the child as the leader of a new process group (`setpgid`), so that it
    /// and every process it starts can be signalled together, as a
    /// [`Supervisor`](crate::Supervisor) does when it stops a child. The group is made
    /// before the child's function runs.
    ///
    /// A daemon child that leads a group takes the group along when the parent exits,
    /// and, started by the fork server (the default start method), when the parent is
    /// killed: what it started in the group does not outlive the parent either. One
    /// forked straight from the parent ([`spawn_fork`](Self::spawn_fork)) is killed by
    /// the kernel when the parent is, and the rest of its group lives on.
    pub fn process_group(mut self, new_group: bool) -> Self {
        self.process_group = new_group;
        self
    }

    /// How to start the child; see [`StartMethod`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Sets an environment variable for the child. A name that is empty or holds `=` or a
    /// NUL byte, or a value that holds a NUL byte, makes the spawn fail with
    /// [`SpawnError::Io`] (`InvalidInput`) rather than vanish from the child's
    /// environment ([`std::process::Command`] refuses NUL bytes likewise).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable for the child (a name [`env`](Self::env) would
    /// refuse fails the spawn the same way).
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Starts the child with an empty environment (plus what [`env`](Self::env) adds).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// Runs the child in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Where the child's stdin comes from (default: [`Stdio::null`]).
    pub fn stdin(mut self, stdio: Stdio) -> Self {
        self.stdin = Some(stdio);
        self
    }

    /// Where the child's stdout goes (default: [`Stdio::inherit`]).
    pub fn stdout(mut self, stdio: Stdio) -> Self {
        self.stdout = Some(stdio);
        self
    }

    /// Where the child's stderr goes (default: [`Stdio::inherit`]).
    pub fn stderr(mut self, stdio: Stdio) -> Self {
        self.stderr = Some(stdio);
        self
    }

    /// Resource limits the child runs under: memory, CPU time, open files, ... set
    /// before its function runs (see [`Limits`]). A child that runs into one fails with
    /// [`ProcessError::LimitExceeded`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use multiproc::{Builder, Limit, Limits, ProcessError};
    ///
    /// fn spin(_: ()) {
    ///     loop {
    ///         std::hint::spin_loop();
    ///     }
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let _guard = multiproc::init();
    /// let child = Builder::new()
    ///     .limits(Limits::new().cpu_time(Duration::from_secs(1)))
    ///     .spawn(spin, ())?;
    /// assert!(matches!(
    ///     child.join(),
    ///     Err(ProcessError::LimitExceeded { limit: Limit::CpuTime, .. })
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Starts a child process that runs `f(args)` and returns its result through the
    /// [`JoinHandle`].
    ///
    /// `f` is a function or a closure that captures nothing; `args` and the return value
    /// travel between the processes as serde data.
    ///
    /// # Errors
    ///
    /// [`SpawnError`]: `init()` was not called, the arguments cannot be encoded, the
    /// directory is unusable, nesting is too deep, or the system refused. No child is
    /// left behind, but in one case: the fork server died (the error says "the process
    /// may have started"), or stayed stopped or starved for 30 s and was replaced ("the
    /// fork server did not answer"), after it had forked the child and before it
    /// answered. The child, whose call travels with the request when it is small, may
    /// then run `f` although the spawn failed.
    pub fn spawn<A, R>(mut self, f: fn(A) -> R, args: A) -> Result<JoinHandle<R>, SpawnError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let (me, starting) = self.check()?;
        // A daemon's children are daemons (see `daemon`).
        self.daemon |= me.daemon;
        let limits = self.limits.plan(false)?;
        let entry =
            sys::entry::<bootstrap::ChildCall, A, R>(f).map_err(|_| SpawnError::NotInExecutable)?;
        // Until the call is on its way, the arguments' counts (a receiver's: see
        // `Encoded`) are the parent's: a spawn that fails gives them back.
        let args = Kept::new(codec::encode(&args).map_err(SpawnError::Codec)?);
        let identity = bootstrap::exe_identity()?;
        // Without one set here, the parent's directory at the fork (below).
        let cwd = self.cwd.as_ref().map(checked_dir).transpose()?;
        let explicit_cwd = cwd.is_some();
        let env = self.environment_block();
        let number = bootstrap::next_child_number();
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| default_name(&me, number));
        let launch = match self.method.unwrap_or_else(get_start_method) {
            StartMethod::ForkServer => messages::Launch::Fork,
            StartMethod::Spawn => messages::Launch::Exec,
        };
        let header = messages::CallHeader {
            entry,
            setup: bootstrap::setup().and_then(|f| sys::fn_offset(f).ok()),
            name: name.clone(),
            daemon: self.daemon,
            lineage: lineage(&me, number),
            depth: me.depth + 1,
            parent_pid: sys::getpid(),
            parent_name: me.name.clone(),
            limits: (!self.limits.is_empty()).then(|| limits.child.clone()),
        };
        let prefix = messages::encode_call_prefix(&identity, &header)
            .map_err(|e| SpawnError::Codec(CodecError::with_source(e.to_string(), e)))?;

        let (ours, theirs) = sys::stream_pair()?;
        let (status_read, status_write) = sys::pipe()?;
        let (stdio_child, stdio_parent) = self.resolve_stdio()?;
        let mut request = messages::ForkRequest {
            launch,
            name: name.clone(),
            daemon: self.daemon,
            process_group: self.process_group,
            cwd: cwd.map(messages::path_bytes),
            env,
            memory_cgroup: limits.cgroup,
            cgroup: None,
            open_files: sys::fd_limit(),
            sigpipe_ignored: sys::signal_is_ignored(sys::SIGPIPE),
            sigpipe_default: sys::signal_is_default(sys::SIGPIPE),
            ids: sys::own_ids(),
        };
        // A small call fits in the empty socket's buffer: send it now, while the server
        // forks, rather than after. A large one waits for the child to exist to read it.
        let early = prefix.len() + args.bytes.len() <= early_call_limit(ours.as_fd());
        let mut conn = Conn::new(ours, messages::MAX_OUTCOME);
        if early {
            let fds = sys::borrow_all(&args.fds);
            conn.send(messages::CALL, &[&prefix, &args.bytes], &fds)?;
        }
        let (pid, pidfd) = bootstrap::with_server(|server| {
            // The parent's directory now (it may have changed since the server started),
            // unless that is the server's, which the child inherits.
            if !explicit_cwd {
                request.cwd = if server.shares_cwd() {
                    None
                } else {
                    // A directory removed since the parent entered it has no path to
                    // give: said, rather than the child starting in the server's.
                    let here = std::env::current_dir().map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "the parent's directory has no path to give the child \
                                 ({e}; removed?): give it one with Builder::current_dir"
                            ),
                        )
                    })?;
                    Some(messages::path_bytes(here))
                };
            }
            let mut fds = vec![theirs.as_fd(), status_write.as_fd()];
            fds.extend(stdio_child.iter().map(AsFd::as_fd));
            server.fork(&request, &fds)
        })?;
        drop((theirs, status_write, stdio_child));
        tracing::trace!(pid, name = %name, ?launch, "spawned");

        let record = self.record(
            pid,
            name,
            pidfd,
            StatusSource::Relay(Arc::new(status_read)),
            Channel::new(conn, false),
            limits.armed,
        );
        let record = Arc::new(record.with_stdio(stdio_parent));
        registry::add(&mut registry::lock(), Arc::clone(&record));
        // Registered: the exit work joins it from now on.
        drop(starting);
        let sent = if early {
            Ok(())
        } else {
            record.send_call(&[&prefix, &args.bytes], &args.fds)
        };
        let mut handle = JoinHandle::new(record);
        if let Err(e) = sent {
            // Killed by the failed send: reaped here, the spawn failing.
            let _ = handle.join_timeout(std::time::Duration::from_secs(10));
            return Err(e.into());
        }
        args.hand_over();
        Ok(handle)
    }

    /// The registry's record of a child this builder started, with the builder's
    /// daemon and process-group settings.
    fn record(
        &self,
        pid: u32,
        name: String,
        pidfd: OwnedFd,
        source: StatusSource,
        channel: Channel,
        armed: Armed,
    ) -> ChildRecord {
        ChildRecord::new(pid, name, self.daemon, pidfd, source, channel, armed)
            .leading_group(self.process_group)
    }

    /// Starts a child by forking this process directly, running `f` in the copy
    /// (Python's `fork` start method). The child sees a copy of the parent's memory,
    /// so `f` may capture anything; only its return value travels back. A panic in
    /// `f`, or in its value's `Serialize` or `Drop`, is the child's
    /// [`Panicked`](crate::ProcessError::Panicked): it never unwinds into the caller's
    /// frames in the child. Output this process left unflushed (its stdout, C's stdio)
    /// is written out before the fork, not twice.
    ///
    /// As with any fork, the child also holds copies of the parent's open descriptors,
    /// multiproc's included, until it exits: the ends of the parent's pipes and queues,
    /// and its manager connections, count as open while the child lives. If the parent
    /// dies first, the other side of such a pipe is not told it is disconnected, and a
    /// manager server does not end the parent's session (nor free the locks it held)
    /// until the child exits too. A [`daemon`](Self::daemon) child ends with its parent.
    ///
    /// Manager proxies that `f` captures work in the child with no copy kept in the
    /// parent: the parent keeps its proxies' references to manager objects until the
    /// child's end is seen (by a join, [`is_alive`](JoinHandle::is_alive),
    /// [`active_children`](crate::active_children), or the next spawn for a handle
    /// dropped unjoined), so that an object is not freed between the fork and the
    /// child's first call.
    ///
    /// The parent's copy of `f` is dropped as the fork returns, and with it whatever
    /// `f` captured, as for any closure moved away: a [`Manager`](crate::Manager) or
    /// [`Server`](crate::manager::Server) moved into `f` stops its server then, under
    /// the child (which then finds it gone). Capture a proxy, or connect in the child
    /// ([`Manager::connect`](crate::Manager::connect)), and keep the manager in the
    /// parent.
    ///
    /// The async forms of multiproc's calls (awaiting a handle, `get_async`, `recv_async`,
    /// `wait_async`) do not work in the child of a process that used one before the fork:
    /// the reactor that wakes them (async-io's) runs on a thread of the parent, which the
    /// child does not have, and its polling descriptor is the parent's too. The child
    /// uses the blocking calls, or the child is started with [`spawn`](Self::spawn).
    ///
    /// # Safety
    ///
    /// Only the calling thread exists in the child. If another thread of this process
    /// holds a lock at the moment of the fork (the allocator's, stderr's, a `Mutex` of
    /// yours, a logging or runtime lock), it stays locked in the child forever, and the
    /// child deadlocks or sees half-updated data if `f` (or anything it calls, including
    /// `eprintln!`, a panic's message, and logging) needs it. Stdout's lock is the
    /// exception: the fork waits for it and holds it across (so a thread that keeps a
    /// `StdoutLock` holds the fork up), and the child finds it free, and writes out at
    /// its exit what `f` left in stdout's buffer. The caller must ensure that either this process
    /// has no other threads, or `f` touches nothing another thread might hold. This is
    /// why Python deprecates `fork` with threads, and why the default start methods go
    /// through the fork server instead. The child's own set-up takes two of std's locks
    /// as well: the panic hook's (it installs the hook that reports a panic's location),
    /// and, when this builder changes the environment, the environment's; so no other
    /// thread may be running a panic hook, or reading or changing the environment, at
    /// the fork.
    ///
    /// `f` must not capture a guard of one of multiproc's process-shared locks (a
    /// [`LockGuard`](crate::LockGuard) or [`RLockGuard`](crate::RLockGuard), a
    /// [`ValueGuard`](crate::ValueGuard) or
    /// [`ArrayGuard`](crate::ArrayGuard), a [`SemaphorePermit`](crate::SemaphorePermit)):
    /// the parent's copy of `f` is dropped as the fork returns, which releases the lock
    /// (gives the permit back) while the child goes on as if it held it, and the child's
    /// copy releases it once more, over whoever took it meanwhile. Take the lock in the
    /// child instead.
    ///
    /// # Errors
    ///
    /// As for [`spawn`](Self::spawn).
    pub unsafe fn spawn_fork<F, R>(mut self, f: F) -> Result<JoinHandle<R>, SpawnError>
    where
        F: FnOnce() -> R,
        R: Serialize + DeserializeOwned,
    {
        let (me, _starting) = self.check()?;
        // A daemon's children are daemons (see `daemon`).
        self.daemon |= me.daemon;
        if let Some(dir) = &self.cwd {
            checked_dir(dir)?;
        }
        let limits = self.limits.plan(true)?;
        let number = bootstrap::next_child_number();
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| default_name(&me, number));
        let (ours, theirs) = sys::stream_pair()?;
        let (stdio_child, stdio_parent) = self.resolve_stdio()?;
        // Built before the fork (the child must not read the environment another thread
        // may be changing), and only when the builder changes it: otherwise the child
        // keeps the copy it was forked with.
        let env = (self.env_clear || !self.env.is_empty()).then(|| self.environment_block());
        let parent_pid = sys::getpid();
        let forking_thread_is_main = sys::is_main_thread();
        // Stdout's lock is held across the fork (the flush below takes it anyway), so
        // that the child finds it free, though another thread of this process may be
        // writing, and writes out at its exit what `f` left in the buffer. Taken first:
        // a thread that holds stdout's lock (a `StdoutLock` kept through a loop) may
        // call into multiproc. Then what a layer above keeps of the parent's for the
        // child (the manager's references, which `f`'s proxies name), and multiproc's
        // own state, held across the fork like the locks below so that none is held
        // mid-update by another thread (the child gets consistent copies and releases
        // them itself). The state is only tried while stdout's lock is held: a thread
        // that holds the state may log, and a subscriber that writes to stdout takes
        // stdout's lock; while the state is busy, both are let go until it is free.
        let (stdout, held, mut st) = loop {
            let stdout = std::io::stdout().lock();
            let held = handle::hold_across_fork();
            if let Some(st) = bootstrap::try_state() {
                break (stdout, held, st);
            }
            drop((held, stdout));
            drop(bootstrap::state());
        };
        // Unflushed output would be written twice, once by each process.
        sys::flush_stdio();
        let death = bootstrap::death_read_end(&mut st)?;
        let mut children = registry::lock();
        let mut me_slot = bootstrap::me_lock();
        // Last: they are leaves (no other lock is taken while one is held).
        let statics = (
            crate::sync::barrier::lock_for_fork(),
            crate::shm::named::lock_for_fork(),
            crate::sync::leaked::lock_for_fork(),
            crate::timer::lock_for_fork(),
        );
        // SAFETY: the caller upholds the contract stated in `# Safety`; multiproc's own
        // state is consistent because its locks are held.
        let forked = unsafe { sys::fork_unchecked() }?;
        match forked {
            sys::Forked::Child => {
                drop(statics);
                // The parent's to keep: forgotten here (see `HeldAcrossFork::in_child`).
                if let Some(held) = held {
                    held.in_child();
                }
                // The parent's ends of the child's pipes: kept here, the child would hold
                // its own stdin's writer (and never see it end) and its output's readers.
                drop((ours, stdio_parent, stdout));
                // This process's children are the parent's; forget them without touching
                // them (their descriptors here are copies). What the parent keeps for
                // them is the parent's: dropped here, a last reference would take locks
                // another thread may have held at the fork.
                for mut child in std::mem::take(&mut *children) {
                    if let Some(record) = Arc::get_mut(&mut child) {
                        record.forget_kept();
                    }
                }
                drop(children);
                registry::forget_starting();
                let watchdog = if self.daemon {
                    sys::dup(death.as_fd()).ok()
                } else {
                    None
                };
                bootstrap::become_child(
                    &mut st,
                    &mut me_slot,
                    Me {
                        name,
                        daemon: self.daemon,
                        lineage: lineage(&me, number),
                        depth: me.depth + 1,
                        parent: Some(Parent {
                            pid: parent_pid,
                            name: me.name.clone(),
                            death: Some(death),
                        }),
                    },
                );
                drop((st, me_slot));
                let setup = bootstrap::setup_forked_child(bootstrap::ForkedChildSetup {
                    stdio: stdio_child,
                    cwd: self.cwd.clone(),
                    process_group: self.process_group,
                    env,
                    // The parent-death signal follows the forking thread, not the parent
                    // process; only the main thread lives as long as the process. A
                    // watchdog on the death pipe covers every case.
                    parent_death: (self.daemon && forking_thread_is_main).then_some(parent_pid),
                    watchdog,
                });
                let limited = match setup {
                    Ok(()) if !self.limits.is_empty() => {
                        bootstrap::default_limit_signals(&limits.child);
                        bootstrap::apply_limits(&limits.child)
                    }
                    other => other,
                };
                if let Err(why) = limited {
                    bootstrap::fail_on(theirs, &why);
                }
                bootstrap::run_in_fork(theirs, f)
            }
            sys::Forked::Parent(pid) => {
                drop((statics, stdout));
                // `_later` goes as this arm ends, after every lock here is let go (the
                // registry's below).
                let (kept, _later) = held.map(|h| h.forked()).unzip();
                // As the fork server does: the child leads its group by the time the
                // spawn returns, not only once it has run (it does it too).
                if self.process_group {
                    let _ = sys::make_group_leader(pid);
                }
                drop((st, me_slot));
                drop((theirs, death, stdio_child));
                // Our own child, not yet reaped: the pid is still its (unless `SIGCHLD`
                // is ignored and it has ended: then no pidfd, and nothing sent to it).
                let pidfd = match sys::child_pidfd(pid) {
                    Ok(pidfd) => pidfd,
                    Err(e) => {
                        // Killed and reaped: what was kept for it goes, after the lock.
                        drop(children);
                        drop(kept);
                        return Err(e.into());
                    }
                };
                let record = self.record(
                    pid,
                    name,
                    pidfd,
                    StatusSource::Direct,
                    Channel::new(Conn::new(ours, messages::MAX_OUTCOME), true),
                    limits.armed,
                );
                let record = Arc::new(record.with_stdio(stdio_parent));
                record.keep_until_ended(kept);
                registry::add(&mut children, Arc::clone(&record));
                drop(children);
                Ok(JoinHandle::new(record))
            }
        }
    }

    /// Whether this builder may start a child now: this process's identity, and the
    /// count of the spawn under way, to keep until the child is registered.
    fn check(&self) -> Result<(Arc<Me>, registry::Starting), SpawnError> {
        if !sys::SUPPORTED {
            return Err(SpawnError::Unsupported(
                "starting processes needs Linux (pidfds, PR_SET_PDEATHSIG, /proc)",
            ));
        }
        if !bootstrap::initialized() {
            return Err(SpawnError::NotInitialized);
        }
        let starting = registry::starting().ok_or(SpawnError::Exiting)?;
        let me = bootstrap::me();
        if me.depth >= MAX_DEPTH {
            return Err(SpawnError::TooDeep { limit: MAX_DEPTH });
        }
        // A variable the environment cannot hold would be dropped from the child's
        // without a word; refused here instead (`std::process::Command` refuses NUL
        // bytes likewise). Names given to `env_remove` are held to the same rule.
        for (key, value) in &self.env {
            let k = key.as_encoded_bytes();
            let bad_value = value
                .as_ref()
                .is_some_and(|v| v.as_encoded_bytes().contains(&0));
            if k.is_empty() || k.contains(&b'=') || k.contains(&0) || bad_value {
                return Err(SpawnError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the environment variable {key:?} cannot be set: a name must be \
                         non-empty and hold no '=' or NUL byte, a value no NUL byte"
                    ),
                )));
            }
        }
        Ok((me, starting))
    }

    /// The child's complete environment, encoded as a fork request carries it.
    fn environment_block(&self) -> messages::Bytes {
        if self.env_clear || !self.env.is_empty() {
            return messages::env_block(self.environment());
        }
        messages::env_block(
            std::env::vars_os()
                .filter(|(k, _)| k != bootstrap::CHILD_TOKEN && k != bootstrap::SERVER_TOKEN),
        )
    }

    /// The child's complete environment.
    fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = if self.env_clear {
            Vec::new()
        } else {
            std::env::vars_os()
                .filter(|(k, _)| k != bootstrap::CHILD_TOKEN && k != bootstrap::SERVER_TOKEN)
                .collect()
        };
        for (key, value) in &self.env {
            env.retain(|(k, _)| k != key);
            if let Some(value) = value {
                env.push((key.clone(), value.clone()));
            }
        }
        env
    }

    #[allow(clippy::type_complexity)]
    fn resolve_stdio(&mut self) -> Result<([OwnedFd; 3], [Option<OwnedFd>; 3]), SpawnError> {
        let (i, ip) = self.stdin.take().unwrap_or_else(Stdio::null).resolve(0)?;
        let (o, op) = self
            .stdout
            .take()
            .unwrap_or_else(Stdio::inherit)
            .resolve(1)?;
        let (e, ep) = self
            .stderr
            .take()
            .unwrap_or_else(Stdio::inherit)
            .resolve(2)?;
        Ok(([i, o, e], [ip, op, ep]))
    }
}

fn checked_dir(dir: &PathBuf) -> Result<PathBuf, SpawnError> {
    let error = |source| SpawnError::CurrentDir {
        path: dir.clone(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(error)?;
    if !meta.is_dir() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    // Relative to the parent's directory, as the user meant, not the server's.
    std::path::absolute(dir).map_err(error)
}

/// Python's names: `Process-3` for a top-level child, `Process-1:2` for a grandchild.
fn default_name(me: &Me, number: u32) -> String {
    let parts: Vec<String> = lineage(me, number).iter().map(u32::to_string).collect();
    format!("Process-{}", parts.join(":"))
}

fn lineage(me: &Me, number: u32) -> Vec<u32> {
    let mut lineage = me.lineage.clone();
    lineage.push(number);
    lineage
}

/// Starts a child process that runs `f(args)`, with the default [`Builder`] settings.
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let _guard = multiproc::init();
///     let handle = multiproc::spawn(square, 12)?;
///     assert_eq!(handle.join()?, 144);
///
///     // Closures that capture nothing work too.
///     let handle = multiproc::spawn(|(a, b): (u32, u32)| a * b, (6, 7))?;
///     assert_eq!(handle.join()?, 42);
///     Ok(())
/// }
/// ```
///
/// A closure that captures something is refused at compile time: the child runs the
/// program's own code, named by its place in the executable, and a capture is data in
/// this process's memory that no name reaches. Pass what it needs as `args` instead.
///
/// ```compile_fail,E0308
/// let _guard = multiproc::init();
/// let offset = 1u32;
/// let handle = multiproc::spawn(move |x: u32| x + offset, 41);
/// ```
///
/// # Errors
///
/// As for [`Builder::spawn`].
pub fn spawn<A, R>(f: fn(A) -> R, args: A) -> Result<JoinHandle<R>, SpawnError>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    Builder::new().spawn(f, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call of the early limit goes into the empty socket without waiting, whatever
    /// its send buffer (64 KiB waited for ever where the buffer held less).
    #[test]
    fn an_early_call_never_waits() {
        for buffer in [None, Some(4096), Some(20_000)] {
            let (ours, _theirs) = sys::stream_pair().unwrap();
            if let Some(size) = buffer {
                rustix::net::sockopt::set_socket_send_buffer_size(&ours, size).unwrap();
            }
            let limit = early_call_limit(ours.as_fd());
            assert!(limit > 0 || buffer.is_some(), "{buffer:?}");
            let fd = sys::dup(ours.as_fd()).unwrap();
            let mut conn = Conn::new(fd, messages::MAX_OUTCOME);
            let until = crate::wire::framing::Until {
                deadline: std::time::Instant::now(),
                last_look: std::time::Duration::ZERO,
            };
            let call = vec![1u8; limit];
            conn.send_by(messages::CALL, &[&call], &[], Some(until))
                .unwrap_or_else(|e| panic!("{buffer:?}: {limit} bytes: {e}"));
        }
    }

    #[test]
    fn spawn_before_init_is_an_error() {
        // This test binary never calls `init()`.
        let r = spawn(|x: u32| x + 1, 1);
        assert!(matches!(r, Err(SpawnError::NotInitialized)), "{r:?}");
        assert!(bootstrap::me().parent.is_none());
    }
}
