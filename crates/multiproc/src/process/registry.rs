//! The children of this process that have not been joined, and what happens to them when
//! the process exits.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::handle::ChildRecord;
use crate::bootstrap;
use crate::sync::unpoisoned;
use crate::sys;

/// How long daemon children get to act on `SIGTERM` at exit before `SIGKILL`.
const DAEMON_GRACE: Duration = Duration::from_secs(1);

static CHILDREN: Mutex<Vec<Arc<ChildRecord>>> = Mutex::new(Vec::new());
/// Spawns under way: counted from before their look at whether the exit work has begun
/// until their child is registered (or they failed). The exit work waits for them
/// before it takes the children: a spawn that had looked just before would register
/// its child after, never joined (nor terminated, were it a daemon).
static STARTING: AtomicUsize = AtomicUsize::new(0);
/// The longest the exit work waits for the spawns under way (one waits for the fork
/// server, which answers within its own timeouts).
const STARTING_WAIT: Duration = Duration::from_secs(5);
/// Records whose handle was dropped unjoined: pruned once they end and nothing else
/// holds them.
static DETACHED: AtomicUsize = AtomicUsize::new(0);

/// The registry, locked. What is let go of meanwhile on this thread (see [`release`])
/// goes once the lock is let go.
pub(crate) struct Locked {
    // Dropped first: the lock, then what was let go of under it.
    children: MutexGuard<'static, Vec<Arc<ChildRecord>>>,
    _released: Releasing,
}

impl std::ops::Deref for Locked {
    type Target = Vec<Arc<ChildRecord>>;

    fn deref(&self) -> &Self::Target {
        &self.children
    }
}

impl std::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.children
    }
}

pub(crate) fn lock() -> Locked {
    let children = unpoisoned::lock(&CHILDREN);
    // (At the exit, after this thread's locals are gone, nothing is deferred.)
    let _ = RELEASED.try_with(|r| r.borrow_mut().0 = true);
    Locked {
        children,
        _released: Releasing,
    }
}

thread_local! {
    /// Whether this thread holds the registry's lock, and what it let go of meanwhile.
    static RELEASED: RefCell<(bool, Vec<Box<dyn Send + Sync>>)> =
        const { RefCell::new((false, Vec::new())) };
}

/// Drops what was let go of under the registry's lock, once it is let go.
struct Releasing;

impl Drop for Releasing {
    fn drop(&mut self) {
        let released = RELEASED.try_with(|r| {
            let mut r = r.borrow_mut();
            r.0 = false;
            std::mem::take(&mut r.1)
        });
        drop(released);
    }
}

/// Lets go of what a parent kept for a child that ended (see
/// [`HeldAcrossFork`](super::HeldAcrossFork)): now, or, on a thread that holds the
/// registry's lock, once it lets it go (the last reference to a manager's client goes
/// with a goodbye to its server, which may take a while: every spawn would wait).
pub(crate) fn release(kept: Box<dyn Send + Sync>) {
    let mut kept = Some(kept);
    let _ = RELEASED.try_with(|r| {
        let mut r = r.borrow_mut();
        if r.0
            && let Some(k) = kept.take()
        {
            r.1.push(k);
        }
    });
    drop(kept);
}

/// A spawn under way, counted in [`STARTING`] until it goes.
pub(crate) struct Starting(());

impl Drop for Starting {
    fn drop(&mut self) {
        let _ = STARTING.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// Counts a spawn under way until the guard goes, which the spawn keeps until its child
/// is registered; `None` once the exit work has begun (no process is started then).
pub(crate) fn starting() -> Option<Starting> {
    // Counted first, then the look: the exit work notes that it has begun, then waits
    // for the count, so either this spawn sees it or the exit waits for this spawn.
    STARTING.fetch_add(1, Ordering::SeqCst);
    let starting = Starting(());
    // The exit work must wait for this spawn even if its child will be the first.
    bootstrap::at_exit_handle_children(exit_function);
    (!bootstrap::exiting()).then_some(starting)
}

/// In a child just forked: the spawns its parent had under way are not its own.
pub(crate) fn forget_starting() {
    STARTING.store(0, Ordering::SeqCst);
}

/// Registers a new child; first forgets detached children that have ended, so a program
/// that starts children and never joins them does not accumulate records.
pub(crate) fn add(children: &mut Locked, record: Arc<ChildRecord>) {
    let before = DETACHED.load(Ordering::SeqCst);
    if before > 0 {
        children.retain(|c| Arc::strong_count(c) > 1 || c.ended_by(Instant::now()).is_none());
        // Still detached: those running, and those a `ChildProcess` still holds (it
        // may be dropped later, with no word to the registry).
        let left = children.iter().filter(|c| c.is_detached()).count();
        // Only what was counted before the look comes off (the count stays at least
        // the number of detached records): a handle dropped on another thread meanwhile,
        // its record marked and then counted, keeps its count. Set to `left` instead,
        // a count made as this look went lost it, and the records of children that
        // ended unjoined (`spawn_fork` zombies among them) stayed until the next drop.
        DETACHED.fetch_sub(before.saturating_sub(left), Ordering::SeqCst);
    }
    children.push(record);
    // From the first child on, the process's exit handles its children.
    bootstrap::at_exit_handle_children(exit_function);
}

/// Forgets a joined child.
pub(crate) fn remove(record: &ChildRecord) {
    lock().retain(|c| !std::ptr::eq(Arc::as_ptr(c), record));
}

/// Notes that a handle was dropped without joining.
pub(crate) fn detached() {
    // After the record is marked: a look that sees this count sees the mark.
    DETACHED.fetch_add(1, Ordering::SeqCst);
}

/// The children still running; forgets those that ended (Python's `active_children`).
pub(crate) fn active() -> Vec<Arc<ChildRecord>> {
    let mut children = lock();
    children.retain(|c| c.is_alive());
    children.clone()
}

/// Runs when the process that called `init` exits (and when a child's function returns),
/// through the hook installed in [`add`]: terminates daemon children, joins the others
/// (however long they take, as Python does), and gives daemons a moment to exit before
/// killing them. Doing it again does nothing.
fn exit_function() {
    let deadline = Instant::now() + STARTING_WAIT;
    while STARTING.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= deadline {
            tracing::warn!("a spawn under way at exit did not finish: its child is not joined");
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let children = std::mem::take(&mut *lock());
    let (daemons, others): (Vec<_>, Vec<_>) = children.into_iter().partition(|c| c.is_daemon());
    // A daemon that leads a process group takes what it started in the group along
    // (members that outlived a leader that ended too). Its group's id is its pid,
    // which no other process gets while the daemon or a member of its group lives:
    // only groups seen alive and still the daemon's are signalled, and one seen gone is
    // not signalled again.
    let mut groups: Vec<u32> = daemons
        .iter()
        .filter(|c| c.leads_group() && group_is_its(c))
        .map(|c| c.pid())
        .collect();
    for child in &daemons {
        tracing::trace!(
            pid = child.pid(),
            name = child.name(),
            "terminating daemon at exit"
        );
        if groups.contains(&child.pid()) {
            let _ = sys::signal_group(child.pid(), sys::SIGTERM);
        }
        let _ = child.signal(sys::SIGTERM);
    }
    // A child reading a piped stdin to its end, or blocked writing to a piped stdout or
    // stderr, that the program left untaken (a `std::process::exit` leaves the handle
    // that held them in place) must not hold the exit either: all closed before any
    // wait, since a child waited for may itself wait for one of those.
    for child in others.iter().chain(&daemons) {
        child.close_stdio_at_exit();
    }
    for child in &others {
        // A child blocked on sending a result nobody can read any more must not hold up
        // the exit; one a thread joins is read by that thread.
        child.close_channel_unless_read();
        tracing::trace!(pid = child.pid(), name = child.name(), "joining at exit");
        if let Err(e) = child.wait(None) {
            tracing::warn!(pid = child.pid(), "could not join at exit: {e}");
        }
    }
    let deadline = Instant::now() + DAEMON_GRACE;
    for child in &daemons {
        child.close_channel_unless_read();
        if child.wait(Some(deadline)).is_err() {
            tracing::trace!(pid = child.pid(), "daemon ignored SIGTERM; killing it");
            if groups.contains(&child.pid()) {
                let _ = sys::signal_group(child.pid(), sys::SIGKILL);
            }
            let _ = child.signal(sys::SIGKILL);
            let _ = child.wait(None);
        }
    }
    // Members of their groups that outlive them (ignoring `SIGTERM`), after the grace.
    // Looked at again each time: the wait for the other children above may have lasted
    // hours, long enough for a group that emptied to have its number given to another
    // process's group.
    let still_its = |g: u32| daemons.iter().any(|c| c.pid() == g && group_is_its(c));
    loop {
        groups.retain(|&g| still_its(g));
        if groups.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for &g in &groups {
        if still_its(g) {
            let _ = sys::signal_group(g, sys::SIGKILL);
        }
    }
}

/// Whether the process group numbered after `child` is alive and still the one it led:
/// the child runs, or has ended and no process has its number. One that has it is
/// another process, which leads the group of that number: the daemon's group emptied
/// once, and its number was given again (to a shell's job, a service, a later child),
/// whose group would be signalled at this process's exit.
fn group_is_its(child: &ChildRecord) -> bool {
    let pid = child.pid();
    sys::group_alive(pid) && (child.is_alive() || !sys::process_exists(pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    static DROPPED: AtomicBool = AtomicBool::new(false);
    static DROPPED_UNDER_LOCK: AtomicBool = AtomicBool::new(false);

    /// Notes when it is dropped, and whether its thread held the registry's lock then.
    struct Probe;

    impl Drop for Probe {
        fn drop(&mut self) {
            DROPPED_UNDER_LOCK.store(RELEASED.with(|r| r.borrow().0), Ordering::SeqCst);
            DROPPED.store(true, Ordering::SeqCst);
        }
    }

    /// What is let go of under the registry's lock goes once the lock is let go (a
    /// manager client's goodbye would hold every spawn); elsewhere, at once.
    #[test]
    fn what_is_let_go_under_the_lock_goes_after_it() {
        let children = lock();
        release(Box::new(Probe));
        assert!(!DROPPED.load(Ordering::SeqCst), "dropped under the lock");
        drop(children);
        assert!(DROPPED.load(Ordering::SeqCst), "kept after the lock");
        assert!(!DROPPED_UNDER_LOCK.load(Ordering::SeqCst));
        DROPPED.store(false, Ordering::SeqCst);
        release(Box::new(Probe));
        assert!(DROPPED.load(Ordering::SeqCst), "kept without the lock");
    }
}
