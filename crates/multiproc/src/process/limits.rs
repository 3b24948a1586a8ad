//! Resource limits for child processes and pool workers: [`Limits`], and telling a
//! process that ran into one from a process that died of something else.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SpawnError;
use crate::bootstrap::RemotePanic;
use crate::bootstrap::messages::ChildLimits;
use crate::sys::{self, WaitStatus};

/// Resource limits for a child process ([`Builder::limits`](crate::Builder::limits)) or
/// for each worker of a pool ([`PoolBuilder::limits`](crate::PoolBuilder::limits)), set
/// in the child before its function runs.
///
/// - [`memory`](Self::memory): a cap on the memory the process uses, enforced by a
///   cgroup of its own where this process may make one (cgroup v2's `memory.max` where
///   its memory controller is enabled for this process's cgroup's children, else the
///   v1 memory hierarchy's `memory.limit_in_bytes`; swap included where the kernel
///   accounts it). The kernel's out-of-memory killer ends a process that goes over it,
///   and the cgroup's `oom_kill` count says so (v2: with its `oom` count, the cap
///   reached; a kill by the machine's own out-of-memory killer, the child under its cap,
///   is a plain `SIGKILL`). Where no cgroup can be made, the cap is
///   an address-space limit (`RLIMIT_AS`) of what the process has mapped when its
///   function starts plus the cap: an allocation that would pass it fails, and Rust's
///   standard library aborts the process (`SIGABRT`) after printing `memory allocation
///   of N bytes failed`. [`MemoryCap`] chooses the way.
/// - [`address_space`](Self::address_space): `RLIMIT_AS`, in all.
/// - [`cpu_time`](Self::cpu_time): `RLIMIT_CPU`, from when the function starts (for a
///   pool, from when each task starts): then the kernel sends `SIGXCPU`, which ends the
///   process. The kernel counts the process's whole CPU time in whole seconds: the limit
///   is set at the time already used plus this one, rounded up to the next second, so
///   the function gets from this limit to a second more. Under a lower hard limit that
///   the program inherited (`ulimit -Ht`), it is set a second below that hard limit (a
///   pool worker whose own CPU time has reached that point ends its next task at once,
///   as over its CPU limit).
/// - [`open_files`](Self::open_files): `RLIMIT_NOFILE`: the most descriptors the
///   process may have open, multiproc's own included (a spawned child holds 4 or 5, a
///   pool worker about 12). Opening one more fails with `EMFILE`.
/// - [`processes`](Self::processes): `RLIMIT_NPROC`. Linux counts every process (and
///   thread) of the user, not the child's descendants, and does not apply it to root;
///   starting one more fails with `EAGAIN`, which the child's code sees (and handles,
///   or fails of, as its own error: this limit is not one reported below).
///
/// A process that runs into one of the other limits fails with
/// [`ProcessError::LimitExceeded`]
/// (a pool task with [`TaskError::LimitExceeded`]), naming it, told from other deaths
/// by the signal that ended it (`SIGXCPU`; `SIGKILL` with the cgroup's out-of-memory
/// count; `SIGABRT` under an address-space limit, which is all the kernel says: an
/// abort for another reason under such a limit is reported the same way) or by its own
/// report (a panic whose message is an `EMFILE` error, under an open-files limit). The
/// limits are in force before the child decodes its arguments: an argument too large
/// for the cap fails the same way. A
/// pool replaces a worker that a limit ended, and goes on.
///
/// These are limits against runaway code, not a sandbox: a process may raise its own
/// CPU soft limit (the hard one is left, so that a pool worker can move the soft one
/// before each task), and a privileged one any of them. The cgroup's cap cannot be
/// lifted from inside without the right to write to the cgroup tree.
///
/// [`ProcessError::LimitExceeded`]: crate::ProcessError::LimitExceeded
/// [`TaskError::LimitExceeded`]: crate::TaskError::LimitExceeded
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::{Builder, Limit, Limits, ProcessError};
///
/// fn parse_untrusted(input: Vec<u8>) -> usize {
///     // ... a parser that might blow up on a hostile input ...
///     input.len()
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let limits = Limits::new()
///     .memory(256 << 20)
///     .cpu_time(Duration::from_secs(5))
///     .open_files(64);
/// let child = Builder::new().limits(limits).spawn(parse_untrusted, vec![1, 2, 3])?;
/// match child.join() {
///     Ok(n) => println!("parsed {n}"),
///     Err(ProcessError::LimitExceeded { limit: Limit::Memory, detail }) => {
///         eprintln!("the input needed too much memory: {detail}")
///     }
///     Err(e) => eprintln!("{e}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[must_use]
pub struct Limits {
    memory: Option<u64>,
    memory_cap: MemoryCap,
    address_space: Option<u64>,
    cpu_time: Option<Duration>,
    open_files: Option<u64>,
    processes: Option<u64>,
}

/// How a [`Limits::memory`] cap is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MemoryCap {
    /// A cgroup where this process may make one, else an address-space limit.
    #[default]
    Auto,
    /// A cgroup; starting the process fails if none can be made.
    Cgroup,
    /// An address-space limit (`RLIMIT_AS`), even where a cgroup could be made.
    AddressSpace,
}

/// A resource limit a process ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Limit {
    /// [`Limits::memory`].
    Memory,
    /// [`Limits::address_space`].
    AddressSpace,
    /// [`Limits::cpu_time`].
    CpuTime,
    /// [`Limits::open_files`].
    OpenFiles,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Memory => "memory",
            Limit::AddressSpace => "address space",
            Limit::CpuTime => "CPU time",
            Limit::OpenFiles => "open files",
        })
    }
}

impl Limits {
    /// No limits.
    pub fn new() -> Self {
        Limits::default()
    }

    /// Caps the memory the process uses at `bytes` (see [`Limits`] for how).
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// How the memory cap is enforced (default: [`MemoryCap::Auto`]).
    pub fn memory_cap(mut self, how: MemoryCap) -> Self {
        self.memory_cap = how;
        self
    }

    /// Limits the process's address space to `bytes` in all (`RLIMIT_AS`).
    pub fn address_space(mut self, bytes: u64) -> Self {
        self.address_space = Some(bytes);
        self
    }

    /// Limits the CPU time the process's function (or each pool task) may use.
    pub fn cpu_time(mut self, limit: Duration) -> Self {
        self.cpu_time = Some(limit);
        self
    }

    /// Limits how many descriptors the process may have open.
    pub fn open_files(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    /// Limits how many processes the user may have (`RLIMIT_NPROC`; see [`Limits`]).
    pub fn processes(mut self, n: u64) -> Self {
        self.processes = Some(n);
        self
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self
            == Limits {
                memory_cap: self.memory_cap,
                ..Limits::default()
            }
    }

    /// The CPU time limit, which a pool worker sets again before each task.
    pub(crate) fn cpu(&self) -> Option<Duration> {
        self.cpu_time
    }

    /// Checks the limits, and decides how each is enforced: what the fork server makes
    /// (a memory cgroup) and what the child sets on itself. `direct`: for a child
    /// forked straight from this process, which has no server to make a cgroup.
    pub(crate) fn plan(&self, direct: bool) -> Result<Plan, SpawnError> {
        let invalid = |why: &str| {
            Err(SpawnError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid limit: {why}"),
            )))
        };
        if [
            self.memory,
            self.address_space,
            self.open_files,
            self.processes,
        ]
        .contains(&Some(0))
            || self.cpu_time == Some(Duration::ZERO)
        {
            return invalid("a limit of zero");
        }
        let mut plan = Plan {
            cgroup: None,
            child: ChildLimits {
                memory: None,
                address_space: self.address_space,
                cpu: self.cpu_time,
                open_files: self.open_files,
                processes: self.processes,
            },
            armed: Armed {
                memory: None,
                address_space: self.address_space.is_some(),
                cpu: self.cpu_time.is_some(),
                open_files: self.open_files.is_some(),
            },
        };
        if let Some(bytes) = self.memory {
            let cgroup = match self.memory_cap {
                MemoryCap::AddressSpace => false,
                MemoryCap::Auto => !direct && sys::memory_cgroup_home().is_ok(),
                MemoryCap::Cgroup if direct => {
                    return invalid("a memory cgroup needs the fork server (not spawn_fork)");
                }
                MemoryCap::Cgroup => {
                    sys::memory_cgroup_home().map_err(|e| {
                        SpawnError::Io(std::io::Error::new(
                            e.kind(),
                            format!("no memory cgroup can be made: {e}"),
                        ))
                    })?;
                    true
                }
            };
            if cgroup {
                plan.cgroup = Some(bytes);
                plan.armed.memory = Some(MemoryArmed::Cgroup(bytes));
            } else {
                plan.child.memory = Some(bytes);
                plan.armed.memory = Some(MemoryArmed::AddressSpace(bytes));
            }
        }
        Ok(plan)
    }
}

/// How a child's limits are enforced.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// A memory cgroup of this many bytes, made by the fork server.
    pub(crate) cgroup: Option<u64>,
    /// What the child sets on itself.
    pub(crate) child: ChildLimits,
    /// What the parent needs to tell a limit's end from another.
    pub(crate) armed: Armed,
}

/// How the memory cap is enforced, and at how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryArmed {
    Cgroup(u64),
    AddressSpace(u64),
}

/// The limits a process runs under, as far as telling why it ended goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Armed {
    pub(crate) memory: Option<MemoryArmed>,
    pub(crate) address_space: bool,
    pub(crate) cpu: bool,
    pub(crate) open_files: bool,
}

/// A size in bytes as people read it: MiB, or KiB or bytes below one MiB.
struct Mib(u64);

impl std::fmt::Display for Mib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            b if b >= 1 << 20 => write!(f, "{:.0} MiB", b as f64 / (1024.0 * 1024.0)),
            b if b >= 1 << 10 => write!(f, "{:.0} KiB", b as f64 / 1024.0),
            b => write!(f, "{b} bytes"),
        }
    }
}

impl Armed {
    /// The limit a process that ended with `status` ran into, if any, and how it shows;
    /// `oom_killed`: its cgroup's out-of-memory killer struck.
    pub(crate) fn ended(&self, status: WaitStatus, oom_killed: bool) -> Option<(Limit, String)> {
        let WaitStatus::Signaled(signal) = status else {
            return None;
        };
        let mib = |bytes: u64| Mib(bytes);
        match (signal, self.memory) {
            (s, Some(MemoryArmed::Cgroup(bytes))) if s == sys::SIGKILL && oom_killed => {
                return Some((
                    Limit::Memory,
                    format!(
                        "killed by the out-of-memory killer at its cgroup's cap of {}",
                        mib(bytes)
                    ),
                ));
            }
            (s, Some(MemoryArmed::AddressSpace(bytes))) if s == sys::SIGABRT => {
                return Some((
                    Limit::Memory,
                    format!(
                        "aborted under the address-space limit that caps its memory at \
                         {} more than it had mapped (an allocation failed)",
                        mib(bytes)
                    ),
                ));
            }
            _ => {}
        }
        if signal == sys::SIGABRT && self.address_space {
            return Some((
                Limit::AddressSpace,
                "aborted under its address-space limit (an allocation failed)".into(),
            ));
        }
        if signal == sys::SIGXCPU && self.cpu {
            return Some((
                Limit::CpuTime,
                "killed by SIGXCPU at its CPU time limit (or a second before the hard CPU \
                 limit it inherited, if that came first)"
                    .into(),
            ));
        }
        None
    }

    /// The limit a pool worker that exited with [`OUT_OF_DESCRIPTORS`] ran into: its
    /// open-files limit, if one was set (a status only pool workers are read for; a
    /// task or child that exits with it is not taken for one).
    ///
    /// [`OUT_OF_DESCRIPTORS`]: super::OUT_OF_DESCRIPTORS
    pub(crate) fn worker_ended(&self, status: WaitStatus) -> Option<(Limit, String)> {
        (status == WaitStatus::Exited(super::OUT_OF_DESCRIPTORS) && self.open_files).then(|| {
            (
                Limit::OpenFiles,
                "it had no descriptor free, at its open-files limit, to take in the \
                 descriptors its next task's argument carries"
                    .into(),
            )
        })
    }

    /// The limit a panic reports, if any: one whose message is an `EMFILE` error (std's
    /// `Display` or `Debug` of it), under an open-files limit.
    pub(crate) fn panicked(&self, panic: &RemotePanic) -> Option<(Limit, String)> {
        if !self.open_files {
            return None;
        }
        let m = panic.message();
        let emfile = m.contains(&format!("(os error {})", sys::EMFILE))
            || m.contains(&format!("Os {{ code: {}, kind:", sys::EMFILE));
        emfile.then(|| {
            (
                Limit::OpenFiles,
                format!("it ran out of descriptors at its open-files limit: {panic}"),
            )
        })
    }
}
