//! Types every backend shares: they describe processes and descriptors, not platforms.

use crate::bootstrap::messages;

use super::OwnedFd;

/// How a process ended, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WaitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl WaitStatus {
    /// Five bytes: a kind byte and the code or signal, for the fork server's status pipe.
    pub(crate) fn to_bytes(self) -> [u8; 5] {
        let (kind, value) = match self {
            WaitStatus::Exited(code) => (0u8, code),
            WaitStatus::Signaled(sig) => (1u8, sig),
        };
        let v = value.to_le_bytes();
        [kind, v[0], v[1], v[2], v[3]]
    }

    /// Inverse of [`WaitStatus::to_bytes`].
    pub(crate) fn from_bytes(b: [u8; 5]) -> Option<Self> {
        let value = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        match b[0] {
            0 => Some(WaitStatus::Exited(value)),
            1 => Some(WaitStatus::Signaled(value)),
            _ => None,
        }
    }
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

/// A function and its typed trampoline, as offsets from an anchor function in the same executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Entry {
    pub(crate) trampoline: u64,
    pub(crate) function: u64,
}

/// Which side of a fork this is.
#[derive(Debug)]
pub(crate) enum Forked {
    Parent(u32),
    Child,
}

/// What a child forked straight from its parent sets up before running its function.
#[derive(Debug)]
pub(crate) struct ForkedChildSetup {
    pub(crate) stdio: [OwnedFd; 3],
    pub(crate) cwd: Option<std::path::PathBuf>,
    /// The child leads a new process group.
    pub(crate) process_group: bool,
    /// The complete new environment (a block), when the builder changed it.
    pub(crate) env: Option<messages::Bytes>,
    /// Ask for `SIGKILL` when the forking thread (the parent's main thread) ends.
    pub(crate) parent_death: Option<u32>,
    /// Death pipe to watch on a thread of its own.
    pub(crate) watchdog: Option<OwnedFd>,
}
