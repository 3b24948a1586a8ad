//! Types every backend shares: they describe processes, descriptors and functions, not
//! platforms, and name nothing of the layers above.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How a process ended, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WaitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// What `wait_readable` saw on each descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// Data (or end of file) can be read without blocking.
    pub(crate) readable: bool,
    /// The peer hung up.
    pub(crate) hangup: bool,
}

impl Readiness {
    /// Readable or hung up: a read will not block.
    pub(crate) fn ready(self) -> bool {
        self.readable || self.hangup
    }
}

/// A resource limit of a process (`setrlimit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RlimitKind {
    /// `RLIMIT_AS`, in bytes.
    AddressSpace,
    /// `RLIMIT_CPU`, in seconds.
    CpuSeconds,
    /// `RLIMIT_NOFILE`.
    OpenFiles,
    /// `RLIMIT_NPROC`.
    Processes,
}

/// What a descriptor received from another process is, as far as a handle that names
/// it needs to know before using it: a sender could put any descriptor at any index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// A non-blocking eventfd (what `doorbell` makes).
    Doorbell,
    /// A sequenced-packet socket (what `packet_pair` makes).
    PacketSocket,
    /// A pipe's read end.
    PipeReader,
    /// A pipe's write end.
    PipeWriter,
    /// Anything else.
    Other,
}

/// Which cgroup hierarchy a memory cgroup is in: they name their files differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CgroupKind {
    V1,
    V2,
}

/// Which side of a fork this is.
#[derive(Debug)]
pub(crate) enum Forked {
    Parent(u32),
    Child,
}

/// The shape of a call made across processes: what its caller hands the function's
/// trampoline and gets back. An [`Entry`] is typed by it, so that an entry is only ever
/// called with the input its trampoline was made for.
pub(crate) trait Signature: 'static {
    /// What the call is given.
    type Input<'a>;
    /// What the call gives back.
    type Output;
}

/// How a named function is run: the seam through which a trampoline reaches the layer
/// that runs calls (the child's call, a pool worker's task). That layer implements it;
/// `sys` names no caller.
pub(crate) trait Caller {
    /// The signature of the entries this caller makes.
    type Sig: Signature;

    /// Runs `f` on what `input` holds (decoding its argument, encoding its result).
    fn call<A, R>(
        f: fn(A) -> R,
        input: <Self::Sig as Signature>::Input<'_>,
    ) -> <Self::Sig as Signature>::Output
    where
        A: DeserializeOwned,
        R: Serialize;
}

/// How a named function that takes a context by reference is run (a `map` whose every
/// call gets `&X`): as [`Caller`], for a `fn(&X, A) -> R`. The context is kept by the
/// layer that runs the calls; `X` is `'static` so that it can keep it as `dyn Any`.
pub(crate) trait ContextCaller {
    /// The signature of the entries this caller makes.
    type Sig: Signature;

    /// Runs `f` on what `input` holds (the context, the arguments), giving back what
    /// came of it.
    fn call<X, A, R>(
        f: fn(&X, A) -> R,
        input: <Self::Sig as Signature>::Input<'_>,
    ) -> <Self::Sig as Signature>::Output
    where
        X: DeserializeOwned + Send + 'static,
        A: DeserializeOwned,
        R: Serialize;
}

/// A function and its typed trampoline, as offsets from an anchor function in the same
/// executable; made by `entry`, run by `call`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct Entry<S> {
    pub(super) trampoline: u64,
    pub(super) function: u64,
    #[serde(skip)]
    pub(super) signature: PhantomData<fn() -> S>,
}

impl<S> Entry<S> {
    /// The two offsets, to write into a fixed layout.
    pub(crate) fn to_words(self) -> [u64; 2] {
        [self.trampoline, self.function]
    }

    /// An entry read back from [`to_words`](Self::to_words). Like a decoded entry, it
    /// is only trusted once the executable's identity has been checked.
    pub(crate) fn from_words([trampoline, function]: [u64; 2]) -> Self {
        Entry {
            trampoline,
            function,
            signature: PhantomData,
        }
    }
}

impl<S> Clone for Entry<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Entry<S> {}

impl<S> PartialEq for Entry<S> {
    fn eq(&self, other: &Self) -> bool {
        self.to_words() == other.to_words()
    }
}

impl<S> Eq for Entry<S> {}

impl<S> std::fmt::Debug for Entry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("trampoline", &self.trampoline)
            .field("function", &self.function)
            .finish()
    }
}

/// The process has other threads than the caller, so what needs it to have one
/// (replacing the environment) is not done.
#[derive(Debug)]
pub(crate) struct NotSingleThreaded;

impl std::fmt::Display for NotSingleThreaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the process has more than one thread")
    }
}
