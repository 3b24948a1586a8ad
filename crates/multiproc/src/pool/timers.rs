//! [`Timers`]: one thread that runs actions at given times, for a thread pool's delayed
//! tasks, retry delays and task timeouts (the process pool's engine thread keeps its
//! own time). The thread starts with the first action and ends when the pool stops.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::thread::{Delivering, Hold};
use crate::sync::unpoisoned;

/// Something to do at a time. Called with `false` at its time, or with `true` when the
/// timers stop first (the pool is going away): it must then only let go of what it
/// holds, failing what it would have started.
pub(crate) type Action = Box<dyn FnOnce(bool) + Send>;

/// Whether an action still has something to do: a timeout whose task ended need not
/// wait for its time in the heap (see [`Timers::at_while`]).
pub(crate) type Live = Box<dyn Fn() -> bool + Send>;

/// What an action does.
pub(crate) enum Kind {
    /// Starts a task after a delay (a countdown, a retry's), which
    /// [`cancel_starts`](Timers::cancel_starts) runs early; with the task's place among
    /// those its pool waits for.
    Start(Option<Arc<Hold>>),
    /// Ends a run that took too long.
    Timeout,
}

/// Entries the heap holds before it is first swept of those no longer live.
const SWEEP_FROM: usize = 1024;

struct Entry {
    at: Instant,
    seq: u64,
    kind: Kind,
    action: Action,
    live: Option<Live>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// The earliest first (`BinaryHeap` is a max-heap).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Entry>,
    /// The heap's size after its last sweep: the next comes at twice that (so that a
    /// sweep's cost is spread over as many entries as it looks at).
    swept: usize,
    /// Entries said to have ended (see [`Timers::ended`]) since the last sweep.
    ended: usize,
    seq: u64,
    stopped: bool,
    /// Actions that start a task run at once as stopping (see
    /// [`Timers::refuse_starts`]).
    starts_refused: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// Takes the entries whose `live` says they have nothing left to do out of the heap
/// (for the caller to drop once the lock is let go).
fn sweep(st: &mut State) -> Vec<Entry> {
    let (keep, ended): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut st.heap)
        .into_iter()
        .partition(|e| e.live.as_ref().is_none_or(|live| live()));
    st.heap = keep.into();
    st.swept = st.heap.len();
    st.ended = 0;
    ended
}

/// A timer thread for one pool.
pub(crate) struct Timers {
    shared: Arc<Shared>,
    name: String,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// In tests: the thread's next start fails, as when the limit of threads is reached.
    #[cfg(test)]
    fail_spawn: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timers").field("name", &self.name).finish()
    }
}

impl Timers {
    pub(crate) fn new(name: String) -> Self {
        Timers {
            shared: Arc::default(),
            name,
            thread: Mutex::new(None),
            #[cfg(test)]
            fail_spawn: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[cfg_attr(not(test), allow(clippy::unused_self))]
    fn spawn_fails(&self) -> bool {
        #[cfg(test)]
        if self
            .fail_spawn
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return true;
        }
        false
    }

    /// Runs `action` at `at` (at once if that has passed). After [`stop`](Self::stop),
    /// the action runs at once as stopping (`true`).
    ///
    /// # Errors
    ///
    /// The timer thread could not be started: the action was run as stopping, and the
    /// next call tries to start the thread again.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn at(&self, at: Instant, kind: Kind, action: Action) -> io::Result<()> {
        self.at_while(at, kind, action, None)
    }

    /// As [`at`](Self::at), for an action that `live` may say, any time before, has
    /// nothing left to do: it is then dropped unrun when the heap is next swept (after
    /// the lock is let go; `live` itself is called under it, and must only look). A
    /// task's timeout is one: without this, a million quick tasks with an hour's
    /// timeout each kept their entries (and what they hold) for that hour.
    pub(crate) fn at_while(
        &self,
        at: Instant,
        kind: Kind,
        action: Action,
        live: Option<Live>,
    ) -> io::Result<()> {
        let mut swept = Vec::new();
        let seq = {
            let mut st = unpoisoned::lock(&self.shared.state);
            if st.stopped || (matches!(kind, Kind::Start(_)) && st.starts_refused) {
                drop(st);
                action(true);
                return Ok(());
            }
            st.seq += 1;
            let seq = st.seq;
            st.heap.push(Entry {
                at,
                seq,
                kind,
                action,
                live,
            });
            if st.heap.len() >= 2 * st.swept.max(SWEEP_FROM) {
                swept = sweep(&mut st);
            }
            seq
        };
        // What the ended actions hold goes here, without the lock.
        drop_unrun(swept);
        self.shared.changed.notify_all();
        let mut thread = unpoisoned::lock(&self.thread);
        if thread.is_none() {
            let shared = Arc::clone(&self.shared);
            // A thread that cannot start now (the system's or the user's limit of
            // threads reached): this action runs at once as stopping (a countdown's
            // task fails, a timeout is not kept), rather than wait for a thread that
            // may never come (a `join` would wait for its task for ever), and the next
            // call tries again. Stopping for good here ran every later action at once
            // as stopping too: no later task's timeout was kept, and every countdown
            // failed, on a pool that could have started its thread by then.
            let spawned = if self.spawn_fails() {
                Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "no thread (a test's failure)",
                ))
            } else {
                std::thread::Builder::new()
                    .name(self.name.clone())
                    .spawn(move || run(&shared))
            };
            match spawned {
                Ok(handle) => *thread = Some(handle),
                Err(e) => {
                    drop(thread);
                    if let Some(entry) = self.take_out(seq) {
                        run_action(entry.action, true);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Takes entry `seq` out of the heap, if it is there.
    fn take_out(&self, seq: u64) -> Option<Entry> {
        let mut st = unpoisoned::lock(&self.shared.state);
        let mut entries = std::mem::take(&mut st.heap).into_vec();
        let entry = entries
            .iter()
            .position(|e| e.seq == seq)
            .map(|i| entries.swap_remove(i));
        st.heap = entries.into();
        entry
    }

    /// An entry's `live` now says it has nothing left to do (its task was cancelled):
    /// the heap is swept once such entries are half of it, so that what they hold (a
    /// task's closure, and what it captured) goes soon after the cancel, not at the
    /// entry's time (a day's countdown), while a sweep's cost is spread over the cancels
    /// that called for it.
    pub(crate) fn ended(&self) {
        let swept = {
            let mut st = unpoisoned::lock(&self.shared.state);
            st.ended += 1;
            if st.ended * 2 < st.heap.len() {
                return;
            }
            sweep(&mut st)
        };
        drop_unrun(swept);
    }

    /// Runs every action that starts a task now, as stopping (the tasks are cancelled);
    /// the others (timeouts) keep their times. See [`take_starts`](Self::take_starts).
    pub(crate) fn cancel_starts(&self) {
        let starts = self.take_starts();
        let _delivering = Delivering::enter_all(starts.holds());
        starts.cancel();
    }

    /// Takes every action that starts a task out (the timeouts keep their times), to be
    /// run as stopping by [`Starts::cancel`]. Their tasks can be listed as delivered on
    /// the calling thread together before the first runs ([`Starts::holds`]): a `join`
    /// in the callback of one of them, or of another task that thread ends first, then
    /// lets go of them all rather than waiting for those still to come, which only that
    /// thread was about to cancel (for ever), or for their time.
    pub(crate) fn take_starts(&self) -> Starts {
        self.take_starts_then(false)
    }

    /// As [`take_starts`](Self::take_starts), and every action that starts a task given
    /// later runs at once as stopping, as after [`refuse_starts`](Self::refuse_starts):
    /// decided under the lock the actions are added under, so that one given by a thread
    /// that looked before (a countdown submitted, a retry's delay, as a cancelling
    /// shutdown ran) is not left waiting for its time.
    pub(crate) fn take_starts_refusing(&self) -> Starts {
        self.take_starts_then(true)
    }

    fn take_starts_then(&self, refuse: bool) -> Starts {
        let starts: Vec<Entry> = {
            let mut st = unpoisoned::lock(&self.shared.state);
            st.starts_refused |= refuse;
            let (starts, others): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut st.heap)
                .into_iter()
                .partition(|e| matches!(e.kind, Kind::Start(_)));
            st.heap = others.into();
            starts
        };
        self.shared.changed.notify_all();
        Starts(starts)
    }

    /// As [`cancel_starts`](Self::cancel_starts), and so for every action that starts
    /// a task given later; the timeouts of tasks that run keep their times.
    pub(crate) fn refuse_starts(&self) {
        unpoisoned::lock(&self.shared.state).starts_refused = true;
        self.cancel_starts();
    }

    /// Stops: every action not yet run runs now as stopping, and the thread ends.
    pub(crate) fn stop(&self) {
        let left: Vec<Entry> = {
            let mut st = unpoisoned::lock(&self.shared.state);
            st.stopped = true;
            std::mem::take(&mut st.heap).into_vec()
        };
        self.shared.changed.notify_all();
        for e in left {
            run_action(e.action, true);
        }
        let thread = unpoisoned::lock(&self.thread).take();
        if let Some(t) = thread {
            crate::sync::unpoisoned::join(t);
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Actions that start tasks, taken out of the timers ([`Timers::take_starts`]).
pub(crate) struct Starts(Vec<Entry>);

impl Starts {
    /// The places of their tasks among those their pool waits for; not those of tasks
    /// ended already (cancelled on another thread, whose callbacks may still run there).
    pub(crate) fn holds(&self) -> Vec<Arc<Hold>> {
        self.0
            .iter()
            .filter(|e| e.live.as_ref().is_none_or(|live| live()))
            .filter_map(|e| match &e.kind {
                Kind::Start(hold) => hold.clone(),
                Kind::Timeout => None,
            })
            .collect()
    }

    /// Runs them now, as stopping: their tasks are cancelled (as they are when dropped:
    /// an action dropped unrun would leave its task without an outcome).
    pub(crate) fn cancel(self) {
        drop(self);
    }
}

impl Drop for Starts {
    fn drop(&mut self) {
        for e in std::mem::take(&mut self.0) {
            run_action(e.action, true);
        }
    }
}

/// Runs `action`. It may drop user values (a task's closure, ended unrun): a `Drop`
/// that panics is reported, and the actions after it still run (their tasks would get
/// no outcome), on whatever thread runs them (the timer thread, or a pool thread whose
/// initializer failed: it ended, still counted as live).
fn run_action(action: Action, stopping: bool) {
    if let Err(caught) = crate::bootstrap::catching(|| action(stopping)) {
        tracing::warn!("a pool's timer action panicked: {caught}");
    }
}

/// Drops entries swept from the heap unrun (their tasks were cancelled, or ended). What
/// an action holds is the program's (a task's closure, what it captured): a `Drop` that
/// panics is reported and the others still go, rather than unwind into the call that
/// swept (a submit, whose running task was then left without an outcome, or a cancel).
fn drop_unrun(entries: Vec<Entry>) {
    for entry in entries {
        if let Err(caught) = crate::bootstrap::catching(move || drop(entry)) {
            tracing::warn!("dropping a pool's timer action panicked: {caught}");
        }
    }
}

fn run(shared: &Shared) {
    let mut st = unpoisoned::lock(&shared.state);
    loop {
        if st.stopped {
            return;
        }
        let now = Instant::now();
        if st.heap.peek().is_some_and(|e| e.at <= now) {
            let mut due = Vec::new();
            while st.heap.peek().is_some_and(|e| e.at <= now) {
                if let Some(e) = st.heap.pop() {
                    due.push(e.action);
                }
            }
            drop(st);
            for action in due {
                run_action(action, false);
            }
            st = unpoisoned::lock(&shared.state);
            continue;
        }
        let next = st.heap.peek().map(|e| e.at);
        st = match unpoisoned::wait_until(&shared.changed, st, next) {
            Ok(st) | Err(st) => st,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn actions_run_in_time_order_and_stop_runs_the_rest_as_stopping() {
        let timers = Timers::new("timers-test".into());
        let (tx, rx) = mpsc::channel();
        // Far enough ahead that all three are in before the first is due, however late
        // this thread runs.
        let now = Instant::now() + Duration::from_secs(2);
        for (n, ms) in [(2, 30u64), (1, 10), (3, 50)] {
            let tx = tx.clone();
            timers
                .at(
                    now + Duration::from_millis(ms),
                    Kind::Timeout,
                    Box::new(move |early| tx.send((n, early)).unwrap()),
                )
                .unwrap();
        }
        let tx2 = tx.clone();
        timers
            .at(
                now + Duration::from_secs(3600),
                Kind::Timeout,
                Box::new(move |early| tx2.send((9, early)).unwrap()),
            )
            .unwrap();
        let tx3 = tx.clone();
        timers
            .at(
                now + Duration::from_secs(3600),
                Kind::Start(None),
                Box::new(move |early| tx3.send((8, early)).unwrap()),
            )
            .unwrap();
        // Starts are cancelled early; timeouts keep their times.
        timers.cancel_starts();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), (8, true));
        let got: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, [(1, false), (2, false), (3, false)]);
        timers.stop();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), (9, true));
    }

    /// Once the starts were taken with refusal (a cancelling shutdown), a start given
    /// later runs at once as stopping; a timeout keeps its time. (One given by a thread
    /// that had looked before the shutdown waited for its time, an hour here.)
    #[test]
    fn a_start_given_after_a_refusing_take_runs_at_once() {
        let timers = Timers::new("timers-refusing".into());
        let (tx, rx) = std::sync::mpsc::channel();
        let give = |n: u32, at: Instant, kind: Kind| {
            let tx = tx.clone();
            timers
                .at(
                    at,
                    kind,
                    Box::new(move |early| tx.send((n, early)).unwrap()),
                )
                .unwrap();
        };
        let next = || rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let far = Instant::now() + Duration::from_secs(3600);
        give(1, far, Kind::Start(None));
        timers.take_starts_refusing().cancel();
        assert_eq!(next(), (1, true));
        give(2, far, Kind::Start(None));
        assert_eq!(next(), (2, true));
        give(3, Instant::now() + Duration::from_millis(50), Kind::Timeout);
        assert_eq!(next(), (3, false));
        timers.stop();
    }

    /// A timer thread that cannot start runs that action at once as stopping, and the
    /// next call starts the thread: its action runs at its time. (The timers stopped for
    /// good, and every later action ran at once as stopping.)
    #[test]
    fn a_thread_that_cannot_start_is_started_by_the_next_call() {
        let timers = Timers::new("timers-spawn".into());
        let (tx, rx) = mpsc::channel();
        let soon = Instant::now() + Duration::from_millis(300);
        timers
            .fail_spawn
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let first = tx.clone();
        let action = Box::new(move |early| first.send((1, early)).unwrap());
        assert!(timers.at(soon, Kind::Timeout, action).is_err());
        assert_eq!(rx.try_recv().unwrap(), (1, true));
        assert!(unpoisoned::lock(&timers.shared.state).heap.is_empty());
        let second = tx.clone();
        let action = Box::new(move |early| second.send((2, early)).unwrap());
        timers.at(soon, Kind::Timeout, action).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            (2, false)
        );
        assert!(Instant::now() >= soon);
    }

    /// An action swept unrun whose `Drop` panics (a task's closure, what it captured)
    /// is dropped under a catch: the call that swept goes on.
    #[test]
    fn a_swept_action_whose_drop_panics_is_caught() {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        struct Loud(Arc<AtomicBool>);
        impl Drop for Loud {
            fn drop(&mut self) {
                self.0.store(true, Relaxed);
                panic!("a task's closure panics as it is dropped");
            }
        }
        let timers = Timers::new("timers-loud".into());
        let dropped = Arc::new(AtomicBool::new(false));
        let loud = Loud(Arc::clone(&dropped));
        let far = Instant::now() + Duration::from_secs(3600);
        let action = Box::new(move |_| drop(loud));
        timers
            .at_while(far, Kind::Timeout, action, Some(Box::new(|| false)))
            .unwrap();
        // The only entry has ended: swept, and dropped, now.
        timers.ended();
        assert!(dropped.load(Relaxed));
        assert!(unpoisoned::lock(&timers.shared.state).heap.is_empty());
    }

    /// Entries whose action has nothing left to do are swept from the heap unrun, and
    /// the heap stays small however many come; a live one stays and runs.
    #[test]
    fn ended_entries_are_swept_unrun() {
        let timers = Timers::new("timers-sweep".into());
        let (tx, rx) = mpsc::channel();
        let soon = Instant::now() + Duration::from_millis(200);
        let first = tx.clone();
        let action = Box::new(move |early| first.send(("live", early)).unwrap());
        timers
            .at_while(soon, Kind::Timeout, action, Some(Box::new(|| true)))
            .unwrap();
        let far = Instant::now() + Duration::from_secs(3600);
        for _ in 0..100_000 {
            let tx = tx.clone();
            let action = Box::new(move |early| tx.send(("ended", early)).unwrap());
            timers
                .at_while(far, Kind::Timeout, action, Some(Box::new(|| false)))
                .unwrap();
            assert!(unpoisoned::lock(&timers.shared.state).heap.len() < 2 * SWEEP_FROM);
        }
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, ("live", false));
        timers.stop();
        let unswept = rx.try_iter().filter(|&(what, _)| what == "ended").count();
        assert!(unswept < 2 * SWEEP_FROM, "{unswept} ended entries ran");
    }

    /// A swept action is dropped after the lock is let go: what it holds may use the
    /// timers in its `Drop` (a dropped task's result could; it deadlocked).
    #[test]
    fn swept_actions_are_dropped_outside_the_lock() {
        struct Again(Arc<Timers>, mpsc::Sender<()>);
        impl Drop for Again {
            fn drop(&mut self) {
                self.0
                    .at(Instant::now(), Kind::Timeout, Box::new(|_| {}))
                    .unwrap();
                let _ = self.1.send(());
            }
        }
        let timers = Arc::new(Timers::new("timers-reenter".into()));
        let (tx, rx) = mpsc::channel();
        let far = Instant::now() + Duration::from_secs(3600);
        let again = Again(Arc::clone(&timers), tx);
        let action = Box::new(move |_| drop(again));
        timers
            .at_while(far, Kind::Timeout, action, Some(Box::new(|| false)))
            .unwrap();
        // Enough more for a sweep, on a thread of their own (one that deadlocks is
        // left behind, not waited for).
        let more = Arc::clone(&timers);
        let filler = std::thread::spawn(move || {
            for _ in 0..2 * SWEEP_FROM {
                let ended = Some(Box::new(|| false) as Live);
                more.at_while(far, Kind::Timeout, Box::new(|_| {}), ended)
                    .unwrap();
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the swept action's drop never ran");
        filler.join().unwrap();
        timers.stop();
    }
}
