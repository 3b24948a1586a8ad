//! [`Timer`]: run a function once after a delay, on a thread of its own, unless
//! cancelled first (Python's `threading.Timer`). std has threads and sleeps but nothing
//! that can be called off while it waits. And `wake_at`, the crate's own alarms: wakes a
//! task at a time, from one thread for them all.

use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::unpoisoned;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Cancelled,
    Running,
    Finished,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// Runs a function once after a delay, on a thread of its own, unless
/// [`cancel`](Self::cancel)led before: Python's `threading.Timer` (which starts with
/// `start()`; this one starts when made).
///
/// Dropping the handle does not cancel the timer, as dropping a
/// [`std::thread::JoinHandle`] does not stop its thread.
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
/// use multiproc::Timer;
///
/// let (tx, rx) = mpsc::channel();
/// let hello = Timer::spawn(Duration::from_millis(10), move || tx.send("hello").unwrap())?;
/// assert_eq!(rx.recv_timeout(Duration::from_secs(10))?, "hello");
///
/// let never = Timer::spawn(Duration::from_secs(3600), || unreachable!())?;
/// assert!(never.cancel()); // called off before it ran
/// never.join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Timer {
    shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("state", &*unpoisoned::lock(&self.shared.state))
            .finish()
    }
}

impl Timer {
    /// Runs `f` on a new thread (named `Timer`) once `delay` has passed.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub fn spawn(delay: Duration, f: impl FnOnce() + Send + 'static) -> io::Result<Timer> {
        Timer::spawn_named("Timer".into(), delay, f)
    }

    /// As [`spawn`](Self::spawn), with a name for the thread.
    ///
    /// # Errors
    ///
    /// The thread could not be started; a name holding a NUL byte (no thread can have
    /// it) is refused with [`io::ErrorKind::InvalidInput`].
    pub fn spawn_named(
        name: String,
        delay: Duration,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<Timer> {
        // `std`'s builder panics on one.
        if name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a thread's name cannot hold a NUL byte: {name:?}"),
            ));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Waiting),
            changed: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || run(&shared, delay, f))?
        };
        Ok(Timer { shared, thread })
    }

    /// Calls the timer off if it has not started `f` yet: whether it did (then `f`
    /// never runs).
    pub fn cancel(&self) -> bool {
        let mut st = unpoisoned::lock(&self.shared.state);
        if *st != State::Waiting {
            return false;
        }
        *st = State::Cancelled;
        self.shared.changed.notify_all();
        true
    }

    /// Whether the timer is done: `f` returned (or panicked), or it was cancelled.
    pub fn is_finished(&self) -> bool {
        matches!(
            *unpoisoned::lock(&self.shared.state),
            State::Finished | State::Cancelled
        )
    }

    /// Waits for the timer's thread: until `f` has run, or at once for a cancelled
    /// timer (its thread ends when it sees the cancel).
    ///
    /// # Errors
    ///
    /// `f` panicked: the panic's payload, as [`std::thread::JoinHandle::join`] gives it.
    pub fn join(self) -> std::thread::Result<()> {
        self.thread.join()
    }
}

fn run(shared: &Shared, delay: Duration, f: impl FnOnce()) {
    let deadline = Instant::now().checked_add(delay);
    let mut st = unpoisoned::lock(&shared.state);
    while *st == State::Waiting {
        st = match unpoisoned::wait_until(&shared.changed, st, deadline) {
            Ok(st) => st,
            Err(mut st) => {
                if *st == State::Waiting {
                    *st = State::Running;
                }
                st
            }
        };
    }
    if *st != State::Running {
        return;
    }
    drop(st);
    /// Marks the timer finished however `f` ends.
    struct Done<'a>(&'a Shared);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            *unpoisoned::lock(&self.0.state) = State::Finished;
            self.0.changed.notify_all();
        }
    }
    let _done = Done(shared);
    f();
}

/// The alarms [`wake_at`] keeps: the process whose thread serves them (0: none yet), and
/// when to wake which task.
struct Alarms {
    due: Mutex<(u32, Vec<(Instant, std::task::Waker)>)>,
    changed: Condvar,
}

static ALARMS: Alarms = Alarms {
    due: Mutex::new((0, Vec::new())),
    changed: Condvar::new(),
};

/// Held across `spawn_fork`'s fork (with multiproc's other statics), so that the child
/// does not find the alarms' lock held by the thread that serves them, which it does not
/// have.
pub(crate) fn lock_for_fork() -> std::sync::MutexGuard<'static, impl Sized> {
    unpoisoned::lock(&ALARMS.due)
}

/// Wakes `waker` once `at` has come, from one thread that serves every such alarm of the
/// process (started at the first one, and again in a forked child, which has the
/// alarms but not the thread): for a `Future` that must look again later and can take
/// no descriptor to wait with (an awaited process handle when the process has none
/// left; async-io's timers need its reactor, which panics if it must start without
/// one). A thread per alarm would start a hundred threads a second for each such handle.
///
/// # Errors
///
/// The thread could not be started (then no alarm is kept).
pub(crate) fn wake_at(at: Instant, waker: std::task::Waker) -> io::Result<()> {
    fn serve() {
        let mut st = unpoisoned::lock(&ALARMS.due);
        loop {
            let now = Instant::now();
            let (ripe, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut st.1)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            st.1 = waiting;
            if !ripe.is_empty() {
                // Woken without the lock held (a waker may poll its task at once, and
                // the poll set another alarm), each under a catch: a waker that panics
                // ended the thread, and no alarm was served again.
                drop(st);
                for (_, waker) in ripe {
                    let woken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        waker.wake();
                    }));
                    if let Err(payload) = woken {
                        crate::bootstrap::drop_payload(payload);
                    }
                }
                st = unpoisoned::lock(&ALARMS.due);
                continue;
            }
            st = match st.1.iter().map(|(at, _)| *at).min() {
                Some(next) => {
                    let wait = next.saturating_duration_since(now);
                    unpoisoned::wait_timeout(&ALARMS.changed, st, wait)
                }
                None => unpoisoned::wait(&ALARMS.changed, st),
            };
        }
    }
    let me = crate::sys::process_id();
    let mut st = unpoisoned::lock(&ALARMS.due);
    if st.0 != me {
        // A forked child's alarms are its parent's tasks': forgotten, not dropped (a
        // waker's drop is the parent's runtime's code).
        std::mem::forget(std::mem::take(&mut st.1));
        std::thread::Builder::new()
            .name("multiproc-alarms".into())
            .spawn(serve)?;
        st.0 = me;
    }
    // A task polled again before its alarm is due sets the same alarm again: kept once.
    if st.1.iter().any(|(t, w)| *t == at && w.will_wake(&waker)) {
        return Ok(());
    }
    st.1.push((at, waker));
    drop(st);
    ALARMS.changed.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_set_again_is_kept_once() {
        let at = Instant::now() + Duration::from_secs(3600);
        let waker = std::task::Waker::noop();
        for _ in 0..3 {
            wake_at(at, waker.clone()).unwrap();
        }
        let other = Instant::now() + Duration::from_secs(7200);
        wake_at(other, waker.clone()).unwrap();
        let st = unpoisoned::lock(&ALARMS.due);
        let kept = |when| st.1.iter().filter(|(t, _)| *t == when).count();
        assert_eq!((kept(at), kept(other)), (1, 1));
    }
}
