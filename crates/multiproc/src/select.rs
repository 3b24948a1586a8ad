//! [`wait`]: block until any of several receivers, queues or processes is ready
//! (Python's `multiprocessing.connection.wait`). A layer above both `ipc` and
//! `process`, since it selects over either.

use std::io;
use std::time::{Duration, Instant};

use crate::ipc::channel::{MAX_SLEEP, RawReceiver};
use crate::ipc::pipe::{Connection, Receiver};
use crate::ipc::queue::{JoinableQueue, Queue};
use crate::process::{ChildProcess, JoinHandle};
use crate::sys::{self, BorrowedFd};

/// Something [`wait`] can wait for: a [`Receiver`](crate::Receiver),
/// [`Connection`](crate::Connection), [`Queue`](crate::Queue),
/// [`JoinableQueue`](crate::JoinableQueue), [`JoinHandle`](crate::JoinHandle) or
/// [`ChildProcess`].
pub trait Waitable: private::Sealed {}

pub(crate) mod private {
    /// What an object waits on; not nameable outside the crate.
    pub trait Sealed {
        fn source(&self) -> super::Source<'_>;
    }
}

/// What a [`Waitable`] is made of (opaque).
#[derive(Debug)]
pub struct Source<'a>(Kind<'a>);

#[derive(Debug)]
enum Kind<'a> {
    Channel(&'a RawReceiver),
    Process(ChildProcess),
}

impl Source<'_> {
    fn ready(&self) -> bool {
        match &self.0 {
            Kind::Channel(rx) => rx.ready(),
            Kind::Process(p) => !p.is_alive(),
        }
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: no
/// limit), and returns the indices of those that are ready (empty on timeout).
///
/// A receiver or queue is ready when a receive would not block: an item is waiting, or
/// every sender is gone. A process handle is ready when the process has ended.
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
    loop {
        let sources: Vec<Source<'_>> = objects.iter().map(|o| o.source()).collect();
        let ready = ready_indices(&sources);
        if !ready.is_empty() {
            return Ok(ready);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(Vec::new());
        }
        // Count ourselves among each channel's sleepers, so that senders ring, then
        // look once more (an item may have come in between) before sleeping.
        let _sleeping: Vec<_> = sources
            .iter()
            .filter_map(|s| match &s.0 {
                Kind::Channel(rx) => Some(rx.sleeping()),
                Kind::Process(_) => None,
            })
            .collect();
        let ready = ready_indices(&sources);
        if !ready.is_empty() {
            return Ok(ready);
        }
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        for s in &sources {
            match &s.0 {
                Kind::Channel(rx) => fds.extend(rx.readiness()),
                Kind::Process(p) => fds.push(p.record.pidfd()),
            }
        }
        let until = deadline.map_or(now + MAX_SLEEP, |d| d.min(now + MAX_SLEEP));
        sys::wait_readable(&fds, Some(until))?;
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
