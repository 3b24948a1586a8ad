//! [`wait`]: block until any of several receivers, queues, processes or tasks is ready
//! (Python's `multiprocessing.connection.wait`). A layer above both `ipc` and
//! `process`, since it selects over either; tasks (in `pool`, above) come in through
//! the [`Completion`] seam they implement.

use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::ipc::channel::{MAX_SLEEP, RawReceiver};
use crate::ipc::pipe::{Connection, Receiver};
use crate::ipc::queue::{JoinableQueue, Queue};
use crate::process::{ChildProcess, JoinHandle};
use crate::sys::{self, AsFd, BorrowedFd, OwnedFd};

/// Told when something it watches completes (a task: `as_completed`, `wait_tasks`,
/// [`wait`]). Called with no lock held; it must not block.
pub(crate) trait Watch: Send + Sync {
    /// What was registered under `key` completed; `failed`: with an error (a
    /// cancellation is not one).
    fn notify(&self, key: usize, failed: bool);

    /// Whether it is told only once the outcome can be taken: a task counts as done
    /// while its done-callbacks run, and has its value back once they return.
    fn wants_value(&self) -> bool {
        false
    }
}

/// Something that completes once and tells its watchers (a task's outcome cell).
pub(crate) trait Completion: Send + Sync {
    /// Whether it has completed.
    fn is_complete(&self) -> bool;
    /// Registers `watch` under `key`; if it has completed already, says so instead:
    /// `Some(failed)`.
    fn watch(&self, watch: Weak<dyn Watch>, key: usize) -> Option<bool>;
    /// Removes `watch` (registered under any key), if it is still there.
    fn unwatch(&self, watch: &Weak<dyn Watch>);
    /// Routes the outcomes waiting at its source, if the source routes on the threads
    /// that wait too (a process pool: on its own thread, in a callback, nothing else
    /// does); whether it does. A wait then helps every [`HELP_EVERY`] of its sleep.
    fn help(&self) -> bool {
        false
    }
    /// Who [`help`](Self::help) helps (its source's address), if anyone: a wait helps
    /// each source once.
    fn helper_key(&self) -> Option<usize> {
        None
    }
}

/// How often a wait for tasks whose source routes outcomes on waiting threads helps it
/// while it sleeps.
const HELP_EVERY: Duration = Duration::from_millis(10);

/// A doorbell (eventfd) rung when a watched task completes: what `wait` polls for
/// tasks, one per call.
struct Bell(OwnedFd);

impl Watch for Bell {
    fn notify(&self, _key: usize, _failed: bool) {
        sys::ring(self.0.as_fd());
    }
}

/// Something [`wait`] can wait for: a [`Receiver`](crate::Receiver),
/// [`Connection`](crate::Connection), [`Queue`](crate::Queue),
/// [`JoinableQueue`](crate::JoinableQueue), [`JoinHandle`](crate::JoinHandle),
/// [`ChildProcess`] or [`Task`](crate::Task).
pub trait Waitable: private::Sealed {}

pub(crate) mod private {
    /// What an object waits on; not nameable outside the crate.
    pub trait Sealed {
        fn source(&self) -> super::Source<'_>;
    }
}

/// What a [`Waitable`] is made of (opaque).
pub struct Source<'a>(Kind<'a>);

enum Kind<'a> {
    Channel(&'a RawReceiver),
    Process(ChildProcess),
    Task(&'a dyn Completion),
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Channel(rx) => f.debug_tuple("Channel").field(rx).finish(),
            Kind::Process(p) => f.debug_tuple("Process").field(p).finish(),
            Kind::Task(_) => f.write_str("Task"),
        }
    }
}

impl<'a> Source<'a> {
    /// A task's outcome (for the `Waitable` of `pool::Task`).
    pub(crate) fn task(completion: &'a dyn Completion) -> Self {
        Source(Kind::Task(completion))
    }

    fn ready(&self) -> bool {
        match &self.0 {
            Kind::Channel(rx) => rx.ready(),
            Kind::Process(p) => {
                p.record.take_outcome_now();
                !p.is_alive()
            }
            Kind::Task(c) => c.is_complete(),
        }
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: no
/// limit), and returns the indices of those that are ready (empty on timeout).
///
/// A receiver or queue is ready when a receive would not block: an item is waiting, or
/// every sender is gone. A process handle is ready when the process has ended (a child
/// whose result is larger than its channel's buffer sends it only as it is read: the
/// wait reads it meanwhile, for the join to return), a
/// [`Task`](crate::Task) when it has finished (its result is ready, or it failed).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _guard = multiproc::init();
/// let (tx_a, rx_a) = multiproc::pipe::<u32>()?;
/// let (_tx_b, rx_b) = multiproc::pipe::<u32>()?;
/// tx_a.send(1)?;
/// let ready = multiproc::wait(&[&rx_a, &rx_b], Some(Duration::from_secs(1)))?;
/// assert_eq!(ready, vec![0]);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// Polling failed (out of memory, or too many objects for the system).
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> io::Result<Vec<usize>> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let sources: Vec<Source<'_>> = objects.iter().map(|o| o.source()).collect();
    // Tasks ring one doorbell when they finish.
    let tasks: Vec<&dyn Completion> = sources
        .iter()
        .filter_map(|s| match s.0 {
            Kind::Task(c) => Some(c),
            _ => None,
        })
        .collect();
    let bell = if tasks.is_empty() {
        None
    } else {
        let bell: Arc<Bell> = Arc::new(Bell(sys::doorbell()?));
        let watch = Arc::downgrade(&bell) as Weak<dyn Watch>;
        for (key, c) in tasks.iter().enumerate() {
            c.watch(watch.clone(), key);
        }
        Some((bell, watch))
    };
    let waited = wait_sources(&sources, bell.as_ref().map(|(b, _)| b.0.as_fd()), deadline);
    if let Some((_, watch)) = &bell {
        for c in &tasks {
            c.unwatch(watch);
        }
    }
    waited
}

fn wait_sources(
    sources: &[Source<'_>],
    bell: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
) -> io::Result<Vec<usize>> {
    // One task of each source that routes outcomes on waiting threads: helped each
    // round (routing may finish the tasks waited for).
    let mut keys = Vec::new();
    let helpers: Vec<&dyn Completion> = sources
        .iter()
        .filter_map(|s| match &s.0 {
            Kind::Task(c) => c.helper_key().filter(|k| !keys.contains(k)).map(|k| {
                keys.push(k);
                *c
            }),
            _ => None,
        })
        .collect();
    loop {
        let helped = helpers.iter().filter(|c| c.help()).count();
        let ready = ready_indices(sources);
        if !ready.is_empty() {
            return Ok(ready);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(Vec::new());
        }
        // Count ourselves among each channel's sleepers, so that senders ring, then
        // look once more (an item may have come in between) before sleeping. Armed: a
        // wait leaves the item it saw where it is, so the doorbell it silences is rung
        // again for the channel's other sleepers (a receive asleep on it would
        // otherwise sleep on beside the item, up to `MAX_SLEEP`).
        let _sleeping: Vec<_> = sources
            .iter()
            .filter_map(|s| match &s.0 {
                Kind::Channel(rx) => {
                    let mut sleeping = rx.sleeping();
                    sleeping.arm(true);
                    Some(sleeping)
                }
                Kind::Process(_) | Kind::Task(_) => None,
            })
            .collect();
        let ready = ready_indices(sources);
        if !ready.is_empty() {
            return Ok(ready);
        }
        let mut fds: Vec<BorrowedFd<'_>> = bell.into_iter().collect();
        for s in sources {
            match &s.0 {
                Kind::Channel(rx) => fds.extend(rx.readiness()),
                Kind::Process(p) => fds.push(p.record.pidfd()),
                Kind::Task(_) => {}
            }
        }
        // The call channels of processes whose outcome is still to come, for this
        // sleep: read as it comes (see `ChildRecord::take_outcome_now`).
        let outcomes: Vec<OwnedFd> = sources
            .iter()
            .filter_map(|s| match &s.0 {
                Kind::Process(p) => p.record.outcome_watch(),
                _ => None,
            })
            .collect();
        fds.extend(outcomes.iter().map(AsFd::as_fd));
        let most = if helped > 0 { HELP_EVERY } else { MAX_SLEEP };
        let until = deadline.map_or(now + most, |d| d.min(now + most));
        sys::wait_readable(&fds, Some(until))?;
        if let Some(bell) = bell {
            sys::silence(bell);
        }
    }
}

fn ready_indices(sources: &[Source<'_>]) -> Vec<usize> {
    sources
        .iter()
        .enumerate()
        .filter(|(_, s)| s.ready())
        .map(|(i, _)| i)
        .collect()
}

macro_rules! waitable {
    ($($ty:ty => |$s:ident| $source:expr;)*) => {$(
        impl private::Sealed for $ty {
            fn source(&self) -> Source<'_> {
                let $s = self;
                $source
            }
        }
        impl Waitable for $ty {}
    )*};
}

waitable! {
    ChildProcess => |s| Source(Kind::Process(s.clone()));
}

impl<T> private::Sealed for Receiver<T> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Channel(&self.raw))
    }
}
impl<T> Waitable for Receiver<T> {}

impl<S, R> private::Sealed for Connection<S, R> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Channel(&self.receiver().raw))
    }
}
impl<S, R> Waitable for Connection<S, R> {}

impl<T> private::Sealed for Queue<T> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Channel(self.raw_receiver()))
    }
}
impl<T> Waitable for Queue<T> {}

impl<T> private::Sealed for JoinableQueue<T> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Channel(self.queue().raw_receiver()))
    }
}
impl<T> Waitable for JoinableQueue<T> {}

impl<R> private::Sealed for JoinHandle<R> {
    fn source(&self) -> Source<'_> {
        Source(Kind::Process(self.process()))
    }
}
impl<R> Waitable for JoinHandle<R> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait woken by an item leaves it in the channel, and the doorbell it silenced
    /// rings again for the other receivers asleep on it.
    #[test]
    fn a_wait_rings_again_for_the_other_sleepers() {
        let q: Queue<u32> = Queue::new().unwrap();
        // Another receiver, asleep on the doorbell.
        let other = q.raw_receiver().sleeping();
        std::thread::scope(|s| {
            let waiting = s.spawn(|| wait(&[&q], Some(Duration::from_secs(10))));
            // Until the wait is counted among the sleepers too.
            let until = Instant::now() + Duration::from_secs(10);
            while q.raw_receiver().sleeping_receivers() < 2 {
                assert!(Instant::now() < until, "the wait never slept");
                std::thread::yield_now();
            }
            q.put(7).unwrap();
            assert_eq!(waiting.join().unwrap().unwrap(), [0]);
        });
        let bell = q.raw_receiver().readiness()[0];
        let rung = sys::wait_readable(&[bell], Some(Instant::now())).unwrap();
        assert!(
            rung[0].readable,
            "the other sleeper's doorbell was left silent"
        );
        drop(other);
        assert_eq!(q.get().unwrap(), 7);
    }
}
