//! What a process knows about itself, its parent and its children.

use std::fmt;
use std::sync::Arc;

use super::handle::ChildProcess;
use super::registry;
use crate::bootstrap::{self, Me};
use crate::sys::{self, AsFd};

/// The process this code runs in (Python's `multiprocessing.current_process()`).
#[derive(Clone)]
pub struct CurrentProcess {
    me: Arc<Me>,
}

impl fmt::Debug for CurrentProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentProcess")
            .field("name", &self.me.name)
            .field("pid", &self.pid())
            .field("daemon", &self.me.daemon)
            .finish()
    }
}

impl CurrentProcess {
    /// `MainProcess` in the program's first process; the child's name in a child.
    pub fn name(&self) -> &str {
        &self.me.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        sys::getpid()
    }

    /// Whether this process was started as a daemon.
    pub fn is_daemon(&self) -> bool {
        self.me.daemon
    }

    /// How many parents separate this process from the program's first one (0 there).
    pub fn depth(&self) -> u32 {
        self.me.depth
    }
}

/// The process this code runs in.
///
/// # Examples
///
/// ```
/// let me = multiproc::current_process();
/// assert_eq!(me.name(), "MainProcess");
/// assert_eq!(me.pid(), std::process::id());
/// ```
pub fn current_process() -> CurrentProcess {
    CurrentProcess {
        me: bootstrap::me(),
    }
}

/// The process that started this one (Python's `multiprocessing.parent_process()`).
#[derive(Clone)]
pub struct ParentProcess {
    me: Arc<Me>,
}

impl fmt::Debug for ParentProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParentProcess")
            .field("name", &self.name())
            .field("pid", &self.pid())
            .finish()
    }
}

impl ParentProcess {
    /// The parent's name.
    pub fn name(&self) -> &str {
        self.me.parent.as_ref().map_or("", |p| p.name.as_str())
    }

    /// The parent's process id.
    pub fn pid(&self) -> u32 {
        self.me.parent.as_ref().map_or(0, |p| p.pid)
    }

    /// Whether the parent is still running. Exact: the parent holds the only writing end
    /// of a pipe whose reading end this process holds, and the kernel closes it when the
    /// parent ends, however it ends.
    pub fn is_alive(&self) -> bool {
        match self.me.parent.as_ref().and_then(|p| p.death.as_ref()) {
            Some(death) => !matches!(sys::poll_now(death.as_fd()), Ok(r) if r.ready()),
            None => true,
        }
    }
}

/// The parent process, or `None` in the program's first process.
pub fn parent_process() -> Option<ParentProcess> {
    let me = bootstrap::me();
    me.parent.is_some().then_some(ParentProcess { me })
}

/// The children of this process that are still running. Children that have ended are
/// forgotten as a side effect, as in Python.
pub fn active_children() -> Vec<ChildProcess> {
    registry::active()
        .into_iter()
        .map(|record| ChildProcess { record })
        .collect()
}

/// The number of CPUs this process may use: the affinity mask and cgroup quota are taken
/// into account (unlike Python's `os.cpu_count()`), so it is the right size for a pool.
pub fn cpu_count() -> usize {
    sys::cpu_count()
}
