//! `Event`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::lock::object_handle;
use super::raw::wait_for;
use crate::deadline::Deadline;
use crate::shm::ShmError;
use crate::shm::layout::EventWords;
use crate::shm::object::{Kind, Object, Shape};
use crate::sys;

/// A flag that processes and threads can wait on: Python's `Event`.
///
/// [`set`](Event::set) raises it and wakes every waiter; [`clear`](Event::clear) lowers
/// it; [`wait`](Event::wait) returns once it is raised.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::Event;
///
/// fn worker(ready: Event) -> bool {
///     ready.wait_timeout(Duration::from_secs(10))
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let _guard = multiproc::init();
/// let ready = Event::new()?;
/// let child = multiproc::spawn(worker, ready.clone())?;
/// ready.set();
/// assert!(child.join()?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Event {
    obj: Arc<Object>,
}

object_handle!(Event, Kind::Event);

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    ///
    /// If the shared memory for it cannot be created.
    pub fn new() -> Result<Event, ShmError> {
        let shape = Shape::plain(Kind::Event, std::mem::size_of::<EventWords>());
        Ok(Event {
            obj: Arc::new(Object::new(shape, |_| {})?),
        })
    }

    fn words(&self) -> &EventWords {
        self.obj.words()
    }

    /// Raises the flag and wakes every waiter.
    pub fn set(&self) {
        let w = self.words();
        if w.flag.swap(1, SeqCst) == 0 && w.sleepers.load(SeqCst) > 0 {
            sys::futex_wake(&w.flag, u32::MAX);
        }
    }

    /// Lowers the flag.
    pub fn clear(&self) {
        self.words().flag.store(0, SeqCst);
    }

    /// Whether the flag is raised.
    pub fn is_set(&self) -> bool {
        self.words().flag.load(SeqCst) != 0
    }

    /// Waits until the flag is raised.
    pub fn wait(&self) {
        while !self.wait_until(Deadline::Never) {}
    }

    /// Waits at most `timeout` for the flag; whether it is raised.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Deadline::after(timeout))
    }

    fn wait_until(&self, wait: Deadline) -> bool {
        let w = self.words();
        wait_for(&w.flag, 0, &w.sleepers, wait.instant(), || self.is_set())
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}
