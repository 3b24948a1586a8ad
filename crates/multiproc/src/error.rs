//! Error types.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sys;

/// A value could not be encoded or decoded for another process.
///
/// Arguments and return values travel as [serde](https://serde.rs) data; this is the
/// error when a `Serialize` implementation fails, or when the bytes that arrive do not
/// decode as the expected type (for instance, the two sides disagree on the type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecError {
    message: String,
}

impl CodecError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        CodecError {
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {}

/// A signal number, shown with its name (`SIGSEGV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signal(i32);

impl Signal {
    /// `SIGINT`: interrupt (Ctrl-C).
    pub const INT: Signal = Signal(sys::SIGINT);
    /// `SIGABRT`: `abort()`, including a Rust panic in a `panic = "abort"` build.
    pub const ABRT: Signal = Signal(sys::SIGABRT);
    /// `SIGBUS`: bad memory access (for example, a truncated mapped file).
    pub const BUS: Signal = Signal(sys::SIGBUS);
    /// `SIGFPE`: arithmetic fault.
    pub const FPE: Signal = Signal(sys::SIGFPE);
    /// `SIGILL`: illegal instruction.
    pub const ILL: Signal = Signal(sys::SIGILL);
    /// `SIGKILL`: killed, by [`JoinHandle::kill`](crate::JoinHandle::kill), by someone
    /// else, or by the kernel's out-of-memory killer.
    pub const KILL: Signal = Signal(sys::SIGKILL);
    /// `SIGSEGV`: invalid memory reference.
    pub const SEGV: Signal = Signal(sys::SIGSEGV);
    /// `SIGTERM`: asked to terminate, for example by
    /// [`JoinHandle::terminate`](crate::JoinHandle::terminate).
    pub const TERM: Signal = Signal(sys::SIGTERM);

    /// A signal by number.
    pub fn from_raw(number: i32) -> Self {
        Signal(number)
    }

    /// The signal's number.
    pub fn as_raw(self) -> i32 {
        self.0
    }

    /// The signal's name, like `"SIGSEGV"`, where known.
    pub fn name(self) -> Option<&'static str> {
        sys::signal_name(self.0)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitStatus(Termination);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Termination {
    Code(i32),
    Signal(Signal),
}

impl ExitStatus {
    pub(crate) fn from_sys(t: sys::Termination) -> Self {
        ExitStatus(match t {
            sys::Termination::Exited(code) => Termination::Code(code),
            sys::Termination::Signaled(sig) => Termination::Signal(Signal(sig)),
        })
    }

    /// A status known by its parts (an exit code, or else a signal), as a remote peer
    /// reports it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_parts(code: Option<i32>, signal: Option<i32>) -> Option<Self> {
        match (code, signal) {
            (Some(c), _) => Some(ExitStatus(Termination::Code(c))),
            (None, Some(s)) => Some(ExitStatus(Termination::Signal(Signal(s)))),
            (None, None) => None,
        }
    }

    /// The exit code, if the process exited (rather than being killed by a signal).
    pub fn code(self) -> Option<i32> {
        match self.0 {
            Termination::Code(c) => Some(c),
            Termination::Signal(_) => None,
        }
    }

    /// The signal that killed the process, if one did.
    pub fn signal(self) -> Option<Signal> {
        match self.0 {
            Termination::Code(_) => None,
            Termination::Signal(s) => Some(s),
        }
    }

    /// Exited with code 0.
    pub fn success(self) -> bool {
        self.code() == Some(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Termination::Code(c) => write!(f, "exit code {c}"),
            Termination::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

/// Where a panic happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicLocation {
    file: String,
    line: u32,
    column: u32,
}

impl PanicLocation {
    pub(crate) fn new(loc: &std::panic::Location<'_>) -> Self {
        PanicLocation {
            file: loc.file().to_owned(),
            line: loc.line(),
            column: loc.column(),
        }
    }

    /// The source file.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line, from 1.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The column, from 1.
    pub fn column(&self) -> u32 {
        self.column
    }
}

impl fmt::Display for PanicLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A panic in another process, brought back as data.
///
/// The backtrace is captured when the child runs with `RUST_BACKTRACE=1` (or `full`),
/// which children inherit from the parent's environment, as `std` does for threads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePanic {
    process: String,
    pid: u32,
    message: String,
    location: Option<PanicLocation>,
    backtrace: Option<String>,
}

impl RemotePanic {
    pub(crate) fn new(
        process: String,
        pid: u32,
        message: String,
        location: Option<PanicLocation>,
        backtrace: Option<String>,
    ) -> Self {
        RemotePanic {
            process,
            pid,
            message,
            location,
            backtrace,
        }
    }

    /// The panic message (the payload, when it is a string).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where it panicked.
    pub fn location(&self) -> Option<&PanicLocation> {
        self.location.as_ref()
    }

    /// The backtrace, when the child captured one.
    pub fn backtrace(&self) -> Option<&str> {
        self.backtrace.as_deref()
    }

    /// The name of the process that panicked.
    pub fn process_name(&self) -> &str {
        &self.process
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl fmt::Display for RemotePanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process '{}' (pid {}) panicked", self.process, self.pid)?;
        if let Some(loc) = &self.location {
            write!(f, " at {loc}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RemotePanic {}

/// Why a process could not be started. No child is left behind when `spawn` fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// `multiproc::init()` has not been called in this process.
    #[error("multiproc::init() must be called at the start of main before spawning")]
    NotInitialized,
    /// The arguments could not be encoded.
    #[error("could not encode the arguments: {0}")]
    Codec(CodecError),
    /// The function is not part of the main executable (it lives in a shared library),
    /// so another process cannot find it.
    #[error("the function to run is not part of the main executable")]
    NotInExecutable,
    /// Spawning would nest processes deeper than the limit.
    #[error("process nesting is limited to {limit} levels")]
    TooDeep {
        /// The limit.
        limit: u32,
    },
    /// The directory the child should run in is not usable.
    #[error("cannot run in {}: {source}", path.display())]
    CurrentDir {
        /// The directory.
        path: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// Processes cannot be created on this platform.
    #[error("unsupported on this platform: {0}")]
    Unsupported(&'static str),
    /// The operating system refused (out of processes, descriptors or memory, or the
    /// fork server could not be started).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a child process produced no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The function panicked.
    #[error("{0}")]
    Panicked(RemotePanic),
    /// The process exited (`std::process::exit`) before the function returned.
    #[error("the process exited with code {0} before returning")]
    Exited(i32),
    /// The process was killed by a signal: it crashed (`SIGSEGV`, `SIGABRT`, ...) or was
    /// killed (`SIGKILL`, `SIGTERM`).
    #[error("the process was killed by {0}")]
    Signaled(Signal),
    /// The process ended before its call started, for the reason given.
    #[error("the process was lost before its call started: {0}")]
    Lost(String),
    /// The return value could not be encoded in the child or decoded here.
    #[error("could not transfer the return value: {0}")]
    Codec(CodecError),
    /// `join_timeout` ran out of time; the process is still running.
    #[error("timed out waiting for the process")]
    Timeout,
    /// The process was already joined.
    #[error("the process was already joined")]
    Joined,
    /// Waiting for the process failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ProcessError {
    /// Whether this is [`ProcessError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProcessError::Timeout)
    }

    /// The remote panic, if the function panicked.
    pub fn panic(&self) -> Option<&RemotePanic> {
        match self {
            ProcessError::Panicked(p) => Some(p),
            _ => None,
        }
    }
}

macro_rules! value_errors {
    ($($(#[$doc:meta])* $name:ident { $(#[error($msg:literal)] $(#[$vdoc:meta])* $variant:ident,)* })*) => {$(
        $(#[$doc])*
        ///
        /// The value that was not sent comes back with the error.
        #[derive(thiserror::Error)]
        #[non_exhaustive]
        pub enum $name<T> {
            $($(#[$vdoc])* #[error($msg)] $variant(T),)*
            /// The value could not be encoded.
            #[error("could not encode the message: {1}")]
            Codec(T, CodecError),
            /// The operating system refused (out of memory or descriptors).
            #[error("could not send the message: {1}")]
            Io(T, io::Error),
        }

        impl<T> $name<T> {
            /// The value that was not sent.
            pub fn into_inner(self) -> T {
                match self {
                    $($name::$variant(v) => v,)*
                    $name::Codec(v, _) | $name::Io(v, _) => v,
                }
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$variant(_) => f.write_str(concat!(stringify!($variant), "(..)")),)*
                    $name::Codec(_, e) => f.debug_tuple("Codec").field(&"..").field(e).finish(),
                    $name::Io(_, e) => f.debug_tuple("Io").field(&"..").field(e).finish(),
                }
            }
        }
    )*};
}

value_errors! {
    /// Why [`Sender::send`](crate::Sender::send) or [`Queue::put`](crate::Queue::put) failed.
    SendError {
        #[error("sending on a channel whose receivers are all gone")]
        /// Every receiver is gone (dropped, exited or killed), or this queue handle was
        /// closed.
        Disconnected,
    }
    /// Why [`Sender::try_send`](crate::Sender::try_send) or
    /// [`Queue::try_put`](crate::Queue::try_put) failed.
    TrySendError {
        #[error("sending on a full channel")]
        /// The channel is full.
        Full,
        #[error("sending on a channel whose receivers are all gone")]
        /// Every receiver is gone, or this queue handle was closed.
        Disconnected,
    }
    /// Why [`Sender::send_timeout`](crate::Sender::send_timeout) or
    /// [`Queue::put_timeout`](crate::Queue::put_timeout) failed.
    SendTimeoutError {
        #[error("timed out sending on a full channel")]
        /// The channel stayed full until the timeout.
        Timeout,
        #[error("sending on a channel whose receivers are all gone")]
        /// Every receiver is gone, or this queue handle was closed.
        Disconnected,
    }
}

impl<T> TrySendError<T> {
    /// Whether the channel was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }
}

impl<T> SendTimeoutError<T> {
    /// Whether the timeout passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }
}

/// Why [`Receiver::recv`](crate::Receiver::recv) or [`Queue::get`](crate::Queue::get)
/// returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The channel is empty and every sender is gone (dropped, exited or killed).
    #[error("receiving on an empty channel whose senders are all gone")]
    Disconnected,
    /// A message arrived but did not decode as the expected type (it is consumed), or
    /// another process corrupted the channel's shared memory.
    #[error("{0}")]
    Codec(CodecError),
    /// The operating system refused.
    #[error(transparent)]
    Io(io::Error),
}

/// Why [`Receiver::try_recv`](crate::Receiver::try_recv) or
/// [`Queue::try_get`](crate::Queue::try_get) returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing is waiting.
    #[error("receiving on an empty channel")]
    Empty,
    /// The channel is empty and every sender is gone.
    #[error("receiving on an empty channel whose senders are all gone")]
    Disconnected,
    /// As [`RecvError::Codec`].
    #[error("{0}")]
    Codec(CodecError),
    /// The operating system refused.
    #[error(transparent)]
    Io(io::Error),
}

/// Why [`Receiver::recv_timeout`](crate::Receiver::recv_timeout) or
/// [`Queue::get_timeout`](crate::Queue::get_timeout) returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// Nothing arrived before the timeout.
    #[error("timed out receiving on an empty channel")]
    Timeout,
    /// The channel is empty and every sender is gone.
    #[error("receiving on an empty channel whose senders are all gone")]
    Disconnected,
    /// As [`RecvError::Codec`].
    #[error("{0}")]
    Codec(CodecError),
    /// The operating system refused.
    #[error(transparent)]
    Io(io::Error),
}

impl TryRecvError {
    /// Whether nothing was waiting.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }

    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TryRecvError::Disconnected)
    }
}

impl RecvTimeoutError {
    /// Whether the timeout passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }

    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvTimeoutError::Disconnected)
    }
}

impl RecvError {
    /// Whether every sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvError::Disconnected)
    }
}

/// Why a shared object or segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// An argument is out of range (a `Barrier` of zero parties, a segment of zero bytes,
    /// an array too large for the address space, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A name that cannot name a shared-memory segment.
    #[error("invalid shared-memory name {name:?}: {why}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No segment has this name.
    #[error("no shared-memory segment named {0:?}")]
    NotFound(String),
    /// A segment with this name already exists.
    #[error("a shared-memory segment named {0:?} already exists")]
    AlreadyExists(String),
    /// The segment is not what was asked for: not made by multiproc, another kind of
    /// object, of another size than its header says, or holding another type.
    #[error("shared memory {what}: {why}")]
    Mismatch {
        /// Which segment.
        what: String,
        /// How it differs.
        why: String,
    },
    /// Shared memory is not available on this platform.
    #[error("unsupported on this platform: shared memory needs Linux")]
    Unsupported,
    /// The operating system refused (out of memory or descriptors, permissions).
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for ShmError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::Unsupported {
            ShmError::Unsupported
        } else {
            ShmError::Io(e)
        }
    }
}

/// The lock was taken from a process (or thread) that died holding it.
///
/// What the lock protects may be half-updated; the guard inside is valid and holds the
/// lock, so the new owner can repair the data (or not) and carry on. Only the next owner
/// is told: afterwards the lock works as before. The counterpart of `EOWNERDEAD` from a
/// robust `pthread` mutex, and of [`std::sync::PoisonError`].
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G) -> Self {
        OwnerDied { guard }
    }

    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// A reference to the guard.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// A mutable reference to the guard.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied").finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the previous owner of the lock died holding it")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// What taking a lock gives: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = Result<G, OwnerDied<G>>;

/// Why [`Lock::try_lock`](crate::Lock::try_lock) or
/// [`Lock::lock_timeout`](crate::Lock::lock_timeout) (and their kin) returned no plain
/// guard.
pub enum TryLockError<G> {
    /// The lock was taken, from an owner that died holding it.
    OwnerDied(OwnerDied<G>),
    /// Another thread holds the lock (and held it until the timeout, for the `_timeout`
    /// forms).
    WouldBlock,
}

impl<G> TryLockError<G> {
    /// Whether the lock was held by another thread.
    pub fn is_would_block(&self) -> bool {
        matches!(self, TryLockError::WouldBlock)
    }
}

impl<G> From<OwnerDied<G>> for TryLockError<G> {
    fn from(e: OwnerDied<G>) -> Self {
        TryLockError::OwnerDied(e)
    }
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::OwnerDied(e) => f.debug_tuple("OwnerDied").field(e).finish(),
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::OwnerDied(e) => e.fmt(f),
            TryLockError::WouldBlock => f.write_str("the lock is held by another thread"),
        }
    }
}

impl<G> std::error::Error for TryLockError<G> {}

/// What trying to take a lock gives.
pub type TryLockResult<G> = Result<G, TryLockError<G>>;

/// [`BoundedSemaphore::release`](crate::BoundedSemaphore::release) would raise the count
/// above its initial value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("semaphore released more times than acquired (its bound is {bound})")]
pub struct OverRelease {
    /// The initial (and highest) count.
    pub bound: u32,
}

/// Why [`Barrier::wait`](crate::Barrier::wait) returned without the barrier being
/// passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken: it was aborted or reset, a waiter timed out, or a party
    /// died. It stays broken until [`reset`](crate::Barrier::reset).
    #[error("the barrier is broken")]
    Broken,
    /// This wait timed out; the barrier is now broken for the others.
    #[error("timed out waiting at the barrier (which is now broken)")]
    Timeout,
    /// More distinct threads use the barrier than it has parties, and all of them live.
    #[error("more threads wait at the barrier than it has parties")]
    TooManyParties,
}

/// An index or range outside an [`Array`](crate::Array).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("index {index} (+{count}) out of range for an array of {len}")]
pub struct OutOfBounds {
    /// The first index asked for.
    pub index: usize,
    /// How many elements from there.
    pub count: usize,
    /// The array's length.
    pub len: usize,
}

impl OutOfBounds {
    /// `Ok` if `count` elements from `index` fit in `len`.
    pub(crate) fn check(index: usize, count: usize, len: usize) -> Result<(), OutOfBounds> {
        if index.checked_add(count).is_some_and(|end| end <= len) {
            Ok(())
        } else {
            Err(OutOfBounds { index, count, len })
        }
    }
}

/// Why a pool task produced no value. Each is about that task only: the pool and its
/// other tasks go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked (the worker survives and serves the next task).
    #[error("{0}")]
    Panicked(RemotePanic),
    /// The worker process running the task died: it crashed (`SIGSEGV`, `abort()`), was
    /// killed (`SIGKILL`, the OOM killer) or exited. How it ended, if known.
    #[error("the worker running the task died ({})", match .0 {
        Some(status) => status.to_string(),
        None => "how is unknown".to_string(),
    })]
    WorkerDied(Option<ExitStatus>),
    /// The task ran longer than the pool's task timeout; its worker was killed.
    #[error("the task ran longer than the pool's task timeout; its worker was killed")]
    TimedOut,
    /// The task was cancelled.
    #[error("the task was cancelled")]
    Cancelled,
    /// The arguments or the result could not be encoded or decoded.
    #[error("{0}")]
    Codec(CodecError),
    /// The pool was closed or terminated before the task could run.
    #[error("the pool is closed")]
    PoolClosed,
    /// The pool cannot keep workers: its initializer fails in every new worker, or
    /// processes cannot be started. Every task fails this way from then on.
    #[error("the pool is broken: {0}")]
    PoolBroken(String),
    /// The task returned an error value (a cluster task registered as fallible), or
    /// failed on a remote worker in a way this build has no variant for.
    #[error("the task failed: {0}")]
    Failed(String),
    /// A cluster task was moved to its queue's dead-letter stream: it crashed or lost
    /// its worker on every delivery up to the cap, or no worker could run it (unknown
    /// name, other argument or result types, a message over the size cap). Why, with its
    /// last error.
    #[error("the task was dead-lettered: {0}")]
    DeadLettered(String),
}

impl TaskError {
    /// How the worker ended, for [`TaskError::WorkerDied`].
    pub fn worker_exit(&self) -> Option<ExitStatus> {
        match self {
            TaskError::WorkerDied(status) => *status,
            _ => None,
        }
    }

    /// Whether the task was dead-lettered ([`TaskError::DeadLettered`]).
    pub fn is_dead_lettered(&self) -> bool {
        matches!(self, TaskError::DeadLettered(_))
    }

    /// The remote panic, for [`TaskError::Panicked`].
    pub fn panic(&self) -> Option<&RemotePanic> {
        match self {
            TaskError::Panicked(p) => Some(p),
            _ => None,
        }
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A setting is out of range (zero workers, ...).
    #[error("invalid pool setting: {0}")]
    InvalidArgument(String),
    /// A worker process could not be started.
    #[error("cannot start a worker: {0}")]
    Spawn(#[from] SpawnError),
    /// The operating system refused (shared memory, descriptors, threads).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a [`Manager`](crate::Manager) call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The server is gone (it stopped, was killed, or the connection dropped). Every
    /// call on a proxy of a dead manager returns this promptly.
    #[error("the manager is gone (its server stopped or the connection dropped)")]
    Disconnected,
    /// The server refused this side's key, or could not prove it holds the key.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The peer is not a multiproc manager of this version, or broke the protocol.
    #[error("manager protocol error: {0}")]
    Protocol(String),
    /// The server process could not be started.
    #[error("cannot start the manager's server: {0}")]
    Start(#[from] SpawnError),
    /// A value could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The server has no object with this id (a proxy of another manager?).
    #[error("the manager has no object {0}")]
    NoSuchObject(u64),
    /// A named object exists with other types than the proxy asked for.
    #[error("the object named {name:?} is a {found}, not a {expected}")]
    WrongType {
        /// The object's name.
        name: String,
        /// What was asked for.
        expected: String,
        /// What it is.
        found: String,
    },
    /// A list index past the end.
    #[error("index {index} out of range for a list of {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The list's length.
        len: u64,
    },
    /// A lock released (or a condition waited on or notified) by a thread that does
    /// not hold it.
    #[error("the lock is not held by this thread")]
    NotOwner,
    /// A thread tried to take a non-re-entrant lock it already holds.
    #[error("this thread already holds the lock (it is not re-entrant)")]
    WouldDeadlock,
    /// The barrier is broken: aborted, or a party timed out or died.
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// A wait with a timeout timed out (barriers; other waits return `false` or `None`).
    #[error("timed out")]
    Timeout,
    /// The condition's lock was taken back from an owner that died holding it: the lock
    /// is held again, and what it protects may be half-updated.
    #[error("the previous owner of the condition's lock died holding it")]
    OwnerDied,
    /// A custom object type the server was not built with.
    #[error("the manager does not serve the type {0} (register it on the builder)")]
    Unregistered(String),
    /// A custom object's handler panicked; the object lives on.
    #[error("the shared object panicked: {0}")]
    Panicked(String),
    /// A setting or an initial value is not valid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operating system refused.
    #[error(transparent)]
    Io(io::Error),
}

impl ManagerError {
    /// An I/O error: a lost connection is [`Disconnected`](ManagerError::Disconnected).
    pub(crate) fn from_io(e: io::Error) -> Self {
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe
            | UnexpectedEof | NotConnected | NotFound => ManagerError::Disconnected,
            _ => ManagerError::Io(e),
        }
    }

    /// Whether the manager is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, ManagerError::Disconnected)
    }
}

/// Why a schedule or a job was refused, or the job store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// A cron expression croner cannot parse.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron {
        /// The expression.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A time zone that is not in the IANA database.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    /// An interval of zero.
    #[error("an interval must be longer than zero")]
    ZeroInterval,
    /// An interval too long to add to a date.
    #[error("the interval {0:?} is too long")]
    IntervalTooLong(std::time::Duration),
    /// A cron expression that matches no time (such as February 30th).
    #[error("{0} never fires")]
    NeverFires(String),
    /// A job of that name is already scheduled.
    #[error("a job named {0:?} is already scheduled")]
    Duplicate(String),
    /// The job runs on an executor the scheduler was not given (a process job needs a
    /// [`Pool`](crate::Pool), a thread job a [`ThreadPool`](crate::ThreadPool)).
    #[error("job {job:?} needs a {needs}, and the scheduler has none")]
    NoExecutor {
        /// The job.
        job: String,
        /// What it needs.
        needs: &'static str,
    },
    /// A setting is out of range (a job name that is empty, `max_instances` of zero).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The job store cannot be opened, is not a job store, or failed.
    #[error("job store: {0}")]
    Store(String),
    /// The scheduler has been shut down.
    #[error("the scheduler has shut down")]
    ShutDown,
}

/// Why a [`Supervisor`](crate::Supervisor) failed or refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// Children crashed more often than the intensity allows: the supervisor stopped
    /// every child and gave up.
    #[error(
        "{restarts} restarts within {period:?} (the most allowed is {max}); last: {child} ({exit})"
    )]
    Intensity {
        /// Restarts counted in the period, the one refused included.
        restarts: u32,
        /// The most allowed.
        max: u32,
        /// The period.
        period: std::time::Duration,
        /// The child whose exit was one too many.
        child: String,
        /// How it ended.
        exit: String,
    },
    /// A child could not be started.
    #[error("cannot start child {child:?}: {source}")]
    Spawn {
        /// The child.
        child: String,
        /// Why.
        source: SpawnError,
    },
    /// A setting is out of range (no children, two children of one name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The wait timed out; the supervisor runs on.
    #[error("timed out")]
    Timeout,
}

/// Why [`daemonize`](crate::daemonize) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another process holds the pid file's lock: a copy of the service runs already.
    #[error("already running (pid file {path} is locked{})", match .pid { Some(p) => format!(" by pid {p}"), None => String::new() })]
    AlreadyRunning {
        /// The pid file.
        path: std::path::PathBuf,
        /// The pid written in it, if readable.
        pid: Option<u32>,
    },
    /// [`init`](crate::init) was called first: its fork server would not follow the
    /// daemon.
    #[error("daemonize must be called before multiproc::init()")]
    AfterInit,
    /// The process has threads besides the caller, so it cannot fork safely.
    #[error("daemonize must be called while the process has one thread (it has {0})")]
    Threads(usize),
    /// The operating system refused a step (fork, setsid, a file).
    #[error("{step}: {source}")]
    Io {
        /// The step.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Not available on this platform.
    #[error("daemonize is not supported on this platform")]
    Unsupported,
}
