//! Waiting on many tasks: [`as_completed`] and [`wait_tasks`] (Python's
//! `concurrent.futures.as_completed` and `wait`), for tasks of any mix of pools and
//! clusters. One board per call is registered on every task's cell; a cell that
//! finishes posts its index there. No thread is started.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::task::Helpers;
use super::{Task, TaskError};
use crate::select::Watch;
use crate::sync::raw::spin_until;
use crate::sync::unpoisoned;

/// How long a waiter helps the pools (routing outcomes itself) before it sleeps.
const SPIN: Duration = Duration::from_micros(20);

/// Where finished tasks post their index (and whether they failed).
#[derive(Default)]
struct Board {
    finished: Mutex<VecDeque<(usize, bool)>>,
    posted: Condvar,
    /// Tasks post once their outcome can be taken ([`as_completed`], which yields it),
    /// not as soon as they are done (their done-callbacks may still have it).
    values: bool,
}

impl Watch for Board {
    fn notify(&self, key: usize, failed: bool) {
        unpoisoned::lock(&self.finished).push_back((key, failed));
        self.posted.notify_all();
    }

    fn wants_value(&self) -> bool {
        self.values
    }
}

impl Board {
    /// Registers on every task; the ones finished already are posted at once, in
    /// index order, before any that finishes meanwhile: the board is held throughout
    /// (a finishing task posts after its cell's lock is let go, so holding the board
    /// while taking a cell's lock cannot deadlock with it).
    fn watch_all<'t, R: 't>(
        self: &Arc<Self>,
        tasks: impl Iterator<Item = (usize, &'t Task<R>)>,
    ) -> Weak<dyn Watch> {
        let watch = Arc::downgrade(self) as Weak<dyn Watch>;
        let mut finished = unpoisoned::lock(&self.finished);
        for (i, t) in tasks {
            if let Some(failed) = t.cell().watch(watch.clone(), i) {
                finished.push_back((i, failed));
            }
        }
        watch
    }

    /// The next posted task, waiting until `deadline` at most; while it spins first it
    /// calls `help`.
    fn next(&self, deadline: Option<Instant>, help: &dyn Fn()) -> Option<(usize, bool)> {
        if let Some(found) = unpoisoned::lock(&self.finished).pop_front() {
            return Some(found);
        }
        let end = Instant::now() + SPIN;
        let posted = || {
            help();
            !unpoisoned::lock(&self.finished).is_empty()
        };
        spin_until(deadline.map_or(end, |d| d.min(end)), posted);
        let mut q = unpoisoned::lock(&self.finished);
        loop {
            if let Some(found) = q.pop_front() {
                return Some(found);
            }
            // Woken by a post, or every `HELP_EVERY` to route outcomes itself: a pool's
            // own thread may be the one waiting here (a done-callback).
            let until = crate::deadline::later(super::task::HELP_EVERY);
            q = match unpoisoned::wait_until(
                &self.posted,
                q,
                Some(deadline.map_or(until, |d| d.min(until))),
            ) {
                Ok(q) => q,
                Err(mut q) => {
                    if let Some(found) = q.pop_front() {
                        return Some(found);
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return None;
                    }
                    q
                }
            };
            drop(q);
            help();
            q = unpoisoned::lock(&self.finished);
        }
    }
}

/// Yields each task's outcome as it finishes, with the task's index in `tasks`
/// (Python's `concurrent.futures.as_completed`). Tasks may come from any mix of
/// [`Pool`](crate::Pool), [`ThreadPool`](crate::ThreadPool) and cluster clients. Tasks
/// that finished before the call, their callbacks returned, come first, in index order
/// (one whose callbacks still run comes when they have returned).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::ThreadPool;
///
/// let pool = ThreadPool::new(3)?;
/// let tasks = [300, 10, 100]
///     .into_iter()
///     .map(|ms| pool.submit(move || { std::thread::sleep(Duration::from_millis(ms)); ms }))
///     .collect::<Result<Vec<_>, _>>()?;
/// let order: Vec<usize> = multiproc::as_completed(tasks).map(|(i, _)| i).collect();
/// assert_eq!(order, [1, 2, 0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn as_completed<R, I>(tasks: I) -> AsCompleted<R>
where
    I: IntoIterator<Item = Task<R>>,
{
    let tasks: Vec<Option<Task<R>>> = tasks.into_iter().map(Some).collect();
    let board = Arc::new(Board {
        values: true,
        ..Board::default()
    });
    let watch = board.watch_all(
        tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t))),
    );
    let left = tasks.len();
    let helpers = Helpers::of(tasks.iter().flatten());
    AsCompleted {
        tasks,
        board,
        watch,
        left,
        helpers,
    }
}

/// A task's index and its outcome, as [`as_completed`] yields them.
type Completed<R> = (usize, Result<R, TaskError>);

/// The iterator of [`as_completed`]: `(index, outcome)` of each task as it finishes.
pub struct AsCompleted<R> {
    tasks: Vec<Option<Task<R>>>,
    board: Arc<Board>,
    watch: Weak<dyn Watch>,
    left: usize,
    /// The tasks' sources that route outcomes on the waiting thread too (process
    /// pools), helped while waiting.
    helpers: Helpers,
}

impl<R> AsCompleted<R> {
    /// The next task to finish, waiting at most `timeout` for it (Python's
    /// `as_completed(fs, timeout)`, one step at a time): `Ok(None)` once every task
    /// has been yielded.
    ///
    /// # Errors
    ///
    /// [`TaskError::Timeout`] if no task finished in time; the iterator goes on.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Completed<R>>, TaskError> {
        self.next_until(Instant::now().checked_add(timeout))
    }

    /// Tasks not yielded yet.
    pub fn remaining(&self) -> usize {
        self.left
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Result<Option<Completed<R>>, TaskError> {
        loop {
            if self.left == 0 {
                return Ok(None);
            }
            let helpers = &self.helpers;
            let help = || helpers.help();
            let Some((i, _)) = self.board.next(deadline, &help) else {
                return Err(TaskError::Timeout);
            };
            // Each index is posted once; a stale one (never, but cheap) is skipped.
            if let Some(mut task) = self.tasks.get_mut(i).and_then(Option::take) {
                // Done, and its value there once its done-callbacks (running on another
                // thread, maybe) return: waited for until the deadline, after which it
                // is posted again for a later step.
                let outcome = match deadline {
                    None => task.wait(),
                    Some(d) => match task.wait_timeout(d.saturating_duration_since(Instant::now()))
                    {
                        Err(TaskError::Timeout) => {
                            self.tasks[i] = Some(task);
                            unpoisoned::lock(&self.board.finished).push_front((i, false));
                            return Err(TaskError::Timeout);
                        }
                        outcome => outcome,
                    },
                };
                self.left -= 1;
                return Ok(Some((i, outcome)));
            }
        }
    }
}

impl<R> Iterator for AsCompleted<R> {
    type Item = (usize, Result<R, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_until(None).ok().flatten()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<R> Drop for AsCompleted<R> {
    fn drop(&mut self) {
        for t in self.tasks.iter().flatten() {
            t.cell().unwatch(&self.watch);
        }
    }
}

impl<R> fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.left)
            .finish()
    }
}

/// When [`wait_tasks`] returns (Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`,
/// `ALL_COMPLETED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Return {
    /// When any task finishes.
    FirstCompleted,
    /// When any task fails (or, if none does, when all have finished). A cancelled
    /// task has not failed, as in Python; one whose value does not decode in this
    /// process has ([`TaskError::Codec`](crate::TaskError::Codec)): a process pool's
    /// values, decoded when first needed, are decoded as their tasks finish, on the
    /// waiting thread.
    FirstException,
    /// When every task has finished.
    AllCompleted,
}

/// Waits until `return_when` holds for `tasks`, or `timeout` passes (`None`: no
/// limit), and returns the indices of the tasks done and of those still pending
/// (Python's `concurrent.futures.wait`). Nothing is taken: wait for a done task to get
/// its result (at once, or once its done-callbacks, which may still be running, have
/// returned). Tasks may come from any mix of pools and clusters.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Return, ThreadPool};
///
/// let pool = ThreadPool::new(2)?;
/// let slow = pool.submit(|| { std::thread::sleep(Duration::from_secs(1)); 1 })?;
/// let bad = pool.submit(|| -> u32 { panic!("no") })?;
/// let tasks = [slow, bad];
/// let (done, pending) = multiproc::wait_tasks(&tasks, Return::FirstException, None);
/// assert_eq!((done, pending), (vec![1], vec![0]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait_tasks<R>(
    tasks: &[Task<R>],
    return_when: Return,
    timeout: Option<Duration>,
) -> (Vec<usize>, Vec<usize>) {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let board = Arc::new(Board::default());
    let watch = board.watch_all(tasks.iter().enumerate());
    let mut done = vec![false; tasks.len()];
    let mut count = 0;
    let mut failed = false;
    let helpers = Helpers::of(tasks);
    let help = || helpers.help();
    loop {
        let satisfied = match return_when {
            Return::FirstCompleted => count > 0,
            Return::FirstException => failed,
            Return::AllCompleted => false,
        } || count == tasks.len();
        if satisfied {
            break;
        }
        let Some((i, f)) = board.next(deadline, &help) else {
            break;
        };
        if let Some(d) = done.get_mut(i)
            && !*d
        {
            *d = true;
            count += 1;
            // A value that came encoded fails its task if it does not decode.
            let settled = || tasks.get(i).is_some_and(|t| t.cell().settle());
            failed |= f || return_when == Return::FirstException && settled();
        }
    }
    for (t, d) in tasks.iter().zip(done.iter_mut()) {
        if !*d {
            t.cell().unwatch(&watch);
            // Finished after the last look: done all the same.
            *d = t.is_done();
        }
    }
    let (done, pending): (Vec<usize>, Vec<usize>) = (0..tasks.len()).partition(|&i| done[i]);
    (done, pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::task::{Cell, Sink};
    use std::sync::mpsc;

    /// Tasks finished before the call are posted first, in index order, even when
    /// another task finishes while the board registers on the rest (it was posted
    /// before them).
    #[test]
    fn tasks_finished_before_come_first_in_index_order() {
        let cells: Vec<_> = (0..4).map(|_| Cell::<u32>::new()).collect();
        let tasks: Vec<_> = cells
            .iter()
            .map(|c| Task::new(Arc::clone(c), 0, None))
            .collect();
        for (i, c) in cells.iter().enumerate().skip(1) {
            c.deliver(0, Ok(i as u32));
        }
        let board = Arc::new(Board::default());
        let mut finisher = None;
        let registering = tasks.iter().enumerate().inspect(|&(i, _)| {
            if i == 1 {
                // Task 0 is registered: it finishes on another thread now, and is
                // given a moment to post (where the board lets it).
                let (done_tx, done_rx) = mpsc::channel();
                let c = Arc::clone(&cells[0]);
                finisher = Some(std::thread::spawn(move || {
                    c.deliver(0, Ok(0));
                    let _ = done_tx.send(());
                }));
                let _ = done_rx.recv_timeout(Duration::from_millis(200));
            }
        });
        board.watch_all(registering);
        finisher.unwrap().join().unwrap();
        let order: Vec<usize> = std::iter::from_fn(|| board.next(Some(Instant::now()), &|| {}))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(order, [1, 2, 3, 0]);
    }
}
