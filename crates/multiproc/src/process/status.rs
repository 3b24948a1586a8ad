//! How a child process ended: its exit status, and the signal that killed it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sys;

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
pub struct ExitStatus(sys::WaitStatus);

impl ExitStatus {
    pub(crate) fn from_sys(status: sys::WaitStatus) -> Self {
        ExitStatus(status)
    }

    /// A status known by its parts (an exit code, or else a signal), as a remote peer
    /// reports it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_parts(code: Option<i32>, signal: Option<i32>) -> Option<Self> {
        match (code, signal) {
            (Some(c), _) => Some(ExitStatus(sys::WaitStatus::Exited(c))),
            (None, Some(s)) => Some(ExitStatus(sys::WaitStatus::Signaled(s))),
            (None, None) => None,
        }
    }

    /// The exit code, if the process exited (rather than being killed by a signal).
    pub fn code(self) -> Option<i32> {
        match self.0 {
            sys::WaitStatus::Exited(code) => Some(code),
            sys::WaitStatus::Signaled(_) => None,
        }
    }

    /// The signal that killed the process, if one did.
    pub fn signal(self) -> Option<Signal> {
        match self.0 {
            sys::WaitStatus::Exited(_) => None,
            sys::WaitStatus::Signaled(sig) => Some(Signal(sig)),
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
            sys::WaitStatus::Exited(c) => write!(f, "exit code {c}"),
            sys::WaitStatus::Signaled(s) => write!(f, "killed by {}", Signal(s)),
        }
    }
}
