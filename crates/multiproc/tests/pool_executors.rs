//! The executors' shared reach, between real worker processes and between threads:
//! waiting on many tasks (`as_completed`, `wait_tasks`, `multiproc::wait`), task state
//! and callbacks, tasks that fail with their own error and are retried on it, per-task
//! options, the `_timeout` forms, `map_with` (its context counted in), the `Executor`
//! trait, `shutdown`, and the async stream of `imap_unordered`. Leaks are checked in a
//! helper process that repeats it all.

mod common;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Helper, trial};
use multiproc::{
    Event, Executor, Failure, Pool, PoolError, Queue, RetryPolicy, Return, Task, TaskError,
    TaskOptions, ThreadPool, Value,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const T: Duration = Duration::from_secs(60);

fn main() {
    common::main_checked(
        vec![
            trial(
                "as_completed_in_finishing_order",
                as_completed_in_finishing_order,
            ),
            trial(
                "wait_tasks_first_exception_and_the_rest",
                wait_tasks_first_exception_and_the_rest,
            ),
            trial("tasks_in_multiproc_wait", tasks_in_multiproc_wait),
            trial("callbacks_run_exactly_once", callbacks_run_exactly_once),
            trial(
                "a_callback_on_the_pools_thread_may_wait",
                a_callback_on_the_pools_thread_may_wait,
            ),
            trial("task_state_running_cancelled", task_state_running_cancelled),
            trial(
                "a_join_waits_for_the_callbacks_a_cancel_runs",
                a_join_waits_for_the_callbacks_a_cancel_runs,
            ),
            trial(
                "err_retried_then_reported_typed",
                err_retried_then_reported_typed,
            ),
            trial(
                "an_error_types_own_panic_fails_its_task_not_the_pool",
                an_error_types_own_panic_fails_its_task_not_the_pool,
            ),
            trial(
                "timeouts_leave_handles_usable",
                timeouts_leave_handles_usable,
            ),
            trial("per_task_options", per_task_options),
            trial(
                "map_with_sends_the_context_once_per_worker",
                map_with_sends_the_context_once_per_worker,
            ),
            trial("one_executor_trait", one_executor_trait),
            trial(
                "a_retried_runs_receiver_keeps_its_pipe_connected",
                a_retried_runs_receiver_keeps_its_pipe_connected,
            ),
            trial(
                "a_taken_back_tasks_receiver_leaves_no_count",
                a_taken_back_tasks_receiver_leaves_no_count,
            ),
            trial(
                "a_broken_pools_task_leaves_no_receiver_count",
                a_broken_pools_task_leaves_no_receiver_count,
            ),
            trial("shutdown_cancels_pending", shutdown_cancels_pending),
            trial(
                "a_retry_due_after_a_cancelling_shutdown_is_cancelled",
                a_retry_due_after_a_cancelling_shutdown_is_cancelled,
            ),
            trial(
                "callbacks_of_tasks_a_shutdown_cancels_may_join",
                callbacks_of_tasks_a_shutdown_cancels_may_join,
            ),
            trial(
                "a_submission_racing_a_cancelling_shutdown_is_cancelled",
                a_submission_racing_a_cancelling_shutdown_is_cancelled,
            ),
            trial(
                "a_map_under_way_at_a_cancelling_shutdown_starts_nothing_more",
                a_map_under_way_at_a_cancelling_shutdown_starts_nothing_more,
            ),
            trial("imap_as_a_stream", imap_as_a_stream),
            trial(
                "a_streams_poll_runs_no_other_tasks_callbacks",
                a_streams_poll_runs_no_other_tasks_callbacks,
            ),
            trial(
                "no_descriptor_or_mapping_leaks",
                no_descriptor_or_mapping_leaks,
            ),
        ],
        helpers,
        Duration::from_secs(900),
        common::no_new_dev_shm,
    );
}

fn helpers(mode: &str) {
    match mode {
        "leaks" => helper_leaks(),
        other => panic!("unknown helper mode {other}"),
    }
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn square(x: u64) -> u64 {
    x * x
}

fn boom(_: u64) -> u64 {
    panic!("boom")
}

/// Sets `started`, then sleeps for `ms`.
fn started_then_sleep((started, ms): (Event, u64)) -> u64 {
    started.set();
    sleep_ms(ms)
}

/// Waits for a task within `T`.
fn get<R>(mut task: Task<R>) -> Result<R, TaskError> {
    match task.wait_timeout(T) {
        Err(TaskError::Timeout) => panic!("a task did not finish within {T:?}"),
        done => done,
    }
}

fn pool(n: usize) -> Pool {
    Pool::new(n).unwrap()
}

/// Closes and joins a pool within `T`, then checks its workers are gone.
fn finish(pool: Pool) {
    let pids = pool.worker_pids();
    pool.join_timeout(T).unwrap();
    drop(pool);
    for p in pids {
        assert!(common::wait_gone(p, Duration::from_secs(5)), "worker {p}");
    }
}

fn as_completed_in_finishing_order() {
    // Processes: durations far apart (at least 300 ms).
    let p = pool(3);
    let tasks: Vec<_> = [900u64, 0, 400]
        .into_iter()
        .map(|ms| p.submit(sleep_ms, ms).unwrap())
        .collect();
    let mut it = multiproc::as_completed(tasks);
    let mut order = Vec::new();
    while let Some((i, r)) = it.next_timeout(T).unwrap() {
        order.push((i, r.unwrap()));
    }
    assert_eq!(order, [(1, 0), (2, 400), (0, 900)]);
    assert_eq!(it.remaining(), 0);
    // Threads.
    let tp = ThreadPool::new(3).unwrap();
    let tasks: Vec<_> = [900u64, 0, 400]
        .into_iter()
        .map(|ms| tp.submit(move || sleep_ms(ms)).unwrap())
        .collect();
    let order: Vec<usize> = multiproc::as_completed(tasks).map(|(i, _)| i).collect();
    assert_eq!(order, [1, 2, 0]);
    // A mix of both, and a failure in place.
    let tasks = vec![
        p.submit(sleep_ms, 900).unwrap(),
        tp.submit(|| sleep_ms(0)).unwrap(),
        p.submit(boom, 0).unwrap(),
    ];
    let got: Vec<(usize, bool)> = multiproc::as_completed(tasks)
        .map(|(i, r)| (i, r.is_ok()))
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2], (0, true), "the slow one last: {got:?}");
    assert!(
        got.contains(&(2, false)) && got.contains(&(1, true)),
        "{got:?}"
    );
    // Tasks done before the call come first, in index order.
    let done: Vec<_> = (0..4).map(|x| tp.submit(move || x).unwrap()).collect();
    let mut ready = Vec::new();
    for t in &done {
        while !t.is_done() {
            assert!(multiproc::wait(&[t], Some(T)).unwrap() == [0]);
        }
        ready.push(());
    }
    let got: Vec<_> = multiproc::as_completed(done)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    assert_eq!(got, [(0, 0), (1, 1), (2, 2), (3, 3)]);
    // A timeout leaves the iterator going.
    let mut it = multiproc::as_completed(vec![p.submit(sleep_ms, 600).unwrap()]);
    assert_eq!(
        it.next_timeout(Duration::from_millis(100)).unwrap_err(),
        TaskError::Timeout
    );
    assert_eq!(
        it.next_timeout(T).unwrap().map(|(i, r)| (i, r.unwrap())),
        Some((0, 600))
    );
    finish(p);
    tp.join_timeout(T).unwrap();
}

fn wait_tasks_first_exception_and_the_rest() {
    let p = pool(3);
    let tp = ThreadPool::new(2).unwrap();
    for (slow, bad) in [
        (
            p.submit(sleep_ms, 30_000).unwrap(),
            p.submit(boom, 0).unwrap(),
        ),
        (
            tp.submit(|| sleep_ms(5_000)).unwrap(),
            tp.submit(|| boom(0)).unwrap(),
        ),
    ] {
        let good = p.submit(square, 3).unwrap();
        let tasks = [slow, bad, good];
        let t0 = Instant::now();
        let (done, pending) = multiproc::wait_tasks(&tasks, Return::FirstException, Some(T));
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        assert!(done.contains(&1), "{done:?}");
        assert_eq!(pending.first(), Some(&0), "{pending:?}");
        let [slow, bad, good] = tasks;
        assert!(matches!(bad.wait(), Err(TaskError::Panicked(_))));
        assert_eq!(get(good).unwrap(), 9);
        slow.cancel();
    }
    // A value that does not decode in this process fails its task: FirstException
    // returns on it (it waited for the slow task, the value taken for a success); so
    // too once a late callback has decoded it.
    for late_callback in [false, true] {
        let tasks = [
            p.submit(refused_after, (30_000, 1)).unwrap(),
            p.submit(refused_after, (0, 13)).unwrap(),
        ];
        if late_callback {
            assert!(common::eventually(T, || tasks[1].is_done()));
            let (tx, rx) = mpsc::channel();
            tasks[1].on_done(move |outcome| tx.send(outcome.is_err()).unwrap());
            assert_eq!(rx.recv_timeout(T), Ok(true));
        }
        let t0 = Instant::now();
        let (done, pending) = multiproc::wait_tasks(
            &tasks,
            Return::FirstException,
            Some(Duration::from_secs(10)),
        );
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "late callback {late_callback}: {:?}",
            t0.elapsed()
        );
        assert_eq!((done, pending), (vec![1], vec![0]));
        let [slow, bad] = tasks;
        assert!(matches!(bad.wait(), Err(TaskError::Codec(_))));
        slow.cancel();
    }
    // FirstCompleted, AllCompleted, and a timeout that leaves tasks pending.
    // (The slow one sleeps long enough to be pending still however late this thread
    // runs.)
    let tasks = [
        p.submit(sleep_ms, 3000).unwrap(),
        p.submit(sleep_ms, 0).unwrap(),
    ];
    let (done, pending) = multiproc::wait_tasks(&tasks, Return::FirstCompleted, Some(T));
    assert_eq!((done, pending), (vec![1], vec![0]));
    let (done, pending) = multiproc::wait_tasks(
        &tasks,
        Return::AllCompleted,
        Some(Duration::from_millis(50)),
    );
    assert_eq!((done, pending), (vec![1], vec![0]));
    let (done, pending) = multiproc::wait_tasks(&tasks, Return::AllCompleted, Some(T));
    assert_eq!((done, pending), (vec![0, 1], vec![]));
    // No failure: FirstException waits for them all.
    let tasks = [
        p.submit(sleep_ms, 300).unwrap(),
        p.submit(square, 2).unwrap(),
    ];
    let (done, _) = multiproc::wait_tasks(&tasks, Return::FirstException, Some(T));
    assert_eq!(done, [0, 1]);
    // A cancelled task has not failed (as in Python): FirstException still waits.
    let one = ThreadPool::new(1).unwrap();
    let tasks = [
        one.submit(|| sleep_ms(300)).unwrap(),
        one.submit(|| sleep_ms(0)).unwrap(),
    ];
    assert!(tasks[1].cancel());
    let (done, pending) = multiproc::wait_tasks(&tasks, Return::FirstException, Some(T));
    assert_eq!((done, pending), (vec![0, 1], vec![]));
    one.join_timeout(T).unwrap();
    finish(p);
    tp.join_timeout(T).unwrap();
}

fn tasks_in_multiproc_wait() {
    let p = pool(2);
    let q: Queue<u32> = Queue::new().unwrap();
    let slow = p.submit(sleep_ms, 30_000).unwrap();
    let quick = p.submit(sleep_ms, 2000).unwrap();
    // Nothing ready yet within 50 ms.
    assert!(
        multiproc::wait(&[&slow, &quick, &q], Some(Duration::from_millis(50)))
            .unwrap()
            .is_empty()
    );
    assert_eq!(multiproc::wait(&[&slow, &quick, &q], Some(T)).unwrap(), [1]);
    q.put(1).unwrap();
    let ready = multiproc::wait(&[&slow, &quick, &q], Some(T)).unwrap();
    assert_eq!(ready, [1, 2]);
    assert_eq!(get(quick).unwrap(), 2000);
    assert!(slow.cancel());
    assert_eq!(multiproc::wait(&[&slow], Some(T)).unwrap(), [0]);
    finish(p);
}

fn callbacks_run_exactly_once() {
    let p = Arc::new(pool(2));
    let tp = ThreadPool::new(1).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<(&'static str, Result<u64, TaskError>)>();
    let count = |name: &'static str| {
        let runs = Arc::clone(&runs);
        let tx = tx.clone();
        move |o: &Result<u64, TaskError>| {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send((name, o.clone()));
        }
    };
    // Before completion, on a process and on a thread.
    let t1 = p.submit(sleep_ms, 200).unwrap();
    t1.on_done(count("before, process"));
    let t2 = tp.submit(|| sleep_ms(200)).unwrap();
    t2.on_done(count("before, thread"));
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(rx.recv_timeout(T).unwrap());
    }
    seen.sort_by_key(|s| s.0);
    assert_eq!(
        seen,
        [("before, process", Ok(200)), ("before, thread", Ok(200))]
    );
    // After completion: at once, on this thread; the value stays for the waiter.
    t1.on_done(count("after"));
    assert_eq!(rx.recv_timeout(T).unwrap(), ("after", Ok(200)));
    assert_eq!(get(t1).unwrap(), 200);
    assert_eq!(get(t2).unwrap(), 200);
    // Cancelled while queued: once, with `Cancelled`.
    let blocker = tp.submit(|| sleep_ms(3000)).unwrap();
    let queued = tp.submit(|| 1u64).unwrap();
    queued.on_done(count("cancelled"));
    assert!(queued.cancel());
    assert!(!queued.cancel());
    assert_eq!(
        rx.recv_timeout(T).unwrap(),
        ("cancelled", Err(TaskError::Cancelled))
    );
    queued.on_done(count("cancelled, late"));
    assert_eq!(
        rx.recv_timeout(T).unwrap(),
        ("cancelled, late", Err(TaskError::Cancelled))
    );
    // A running process task cancelled (its worker killed): once.
    let started = Event::new().unwrap();
    let running = p
        .submit(started_then_sleep, (started.clone(), 30_000))
        .unwrap();
    running.on_done(count("killed"));
    assert!(started.wait_timeout(T));
    assert!(running.cancel());
    assert_eq!(
        rx.recv_timeout(T).unwrap(),
        ("killed", Err(TaskError::Cancelled))
    );
    // A callback may use the pool (no lock of multiproc's is held) and may panic.
    let (sub_tx, sub_rx) = mpsc::channel();
    let inner = Arc::clone(&p);
    let t = p.submit(square, 4).unwrap();
    t.on_done(move |o| {
        let next = inner.submit(square, *o.as_ref().unwrap()).unwrap();
        sub_tx.send(next.wait()).unwrap();
    });
    t.on_done(|_| panic!("a callback that panics"));
    assert_eq!(sub_rx.recv_timeout(T).unwrap().unwrap(), 256);
    assert_eq!(get(t).unwrap(), 16);
    assert_eq!(get(blocker).unwrap(), 3000);
    // Taken first, then a callback: it is told so.
    let t = tp.submit(|| 5u64).unwrap();
    let mut t = t;
    assert_eq!(t.wait_timeout(T).unwrap(), 5);
    t.on_done(count("taken"));
    assert_eq!(
        rx.recv_timeout(T).unwrap(),
        ("taken", Err(TaskError::Taken))
    );
    // Exactly once each, no more later.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(runs.load(Ordering::SeqCst), 7);
    tp.join_timeout(T).unwrap();
    finish(common::sole(p));
}

/// 3, once `go` is set.
fn three_after(go: Event) -> u64 {
    assert!(go.wait_timeout(T));
    3
}

/// A callback run by the pool's own thread waits for tasks that need what only that
/// thread did: a new worker (each retires after one task), a countdown; and a `join`
/// there cannot wait for itself.
fn a_callback_on_the_pools_thread_may_wait() {
    let p = Arc::new(
        Pool::builder()
            .processes(1)
            .max_tasks_per_child(1)
            .build()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let inner = Arc::clone(&p);
    // Nobody waits for `t`: its outcome is routed, and the callback run, by the pool's
    // thread (`t` ends only after the callback is added).
    let go = Event::new().unwrap();
    let t = p.submit(three_after, go.clone()).unwrap();
    t.on_done(move |o| {
        let x = *o.as_ref().unwrap();
        let mut next = inner.submit(square, x).unwrap();
        let again = next.wait_timeout(T);
        let later = TaskOptions::new().countdown(Duration::from_millis(50));
        let mut delayed = inner.submit_with(square, 2, later).unwrap();
        let delayed = delayed.wait_timeout(T);
        let joined = inner.join_timeout(T);
        tx.send((again, delayed, joined)).unwrap();
    });
    go.set();
    let (again, delayed, joined) = rx.recv_timeout(T + T + T).expect("the callback ended");
    assert_eq!(again, Ok(9));
    assert_eq!(delayed, Ok(4));
    assert!(
        matches!(joined, Err(PoolError::InvalidArgument(_))),
        "{joined:?}"
    );
    drop(t);
    finish(common::sole(p));
}

fn task_state_running_cancelled() {
    let p = pool(1);
    let started = Event::new().unwrap();
    let running = p
        .submit(started_then_sleep, (started.clone(), 30_000))
        .unwrap();
    let queued = p.submit(square, 2).unwrap();
    assert!(started.wait_timeout(T));
    assert!(running.is_running() && !running.is_done() && !running.is_cancelled());
    assert!(!queued.is_running());
    assert!(queued.cancel());
    assert!(queued.is_cancelled() && queued.is_done());
    assert!(running.cancel());
    assert_eq!(get(running).unwrap_err(), TaskError::Cancelled);
    let tp = ThreadPool::new(1).unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (in_tx, in_rx) = mpsc::channel::<()>();
    let t = tp
        .submit(move || {
            in_tx.send(()).unwrap();
            go_rx.recv_timeout(T).is_ok()
        })
        .unwrap();
    in_rx.recv_timeout(T).unwrap();
    assert!(t.is_running());
    assert!(!t.cancel(), "a running thread cannot be stopped");
    go_tx.send(()).unwrap();
    assert!(get(t).unwrap());
    tp.join_timeout(T).unwrap();
    finish(p);
}

/// A queued task cancelled from another thread runs its callbacks there: a `join`
/// returns only once they have run (as a thread pool's does), and one called in such a
/// callback waits for the rest of the pool, not for itself.
fn a_join_waits_for_the_callbacks_a_cancel_runs() {
    let p = Arc::new(pool(1));
    let started = Event::new().unwrap();
    let running = p
        .submit(started_then_sleep, (started.clone(), 1500))
        .unwrap();
    assert!(started.wait_timeout(T));
    let (slow, joins) = (p.submit(square, 2).unwrap(), p.submit(square, 3).unwrap());
    let ran = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&ran);
    let (began_tx, began) = mpsc::channel();
    slow.on_done(move |outcome| {
        let _ = began_tx.send(());
        assert_eq!(outcome, &Err(TaskError::Cancelled));
        std::thread::sleep(Duration::from_millis(800));
        count.fetch_add(1, Ordering::SeqCst);
    });
    let (tx, rx) = mpsc::channel();
    let weak = Arc::downgrade(&p);
    joins.on_done(move |_| {
        let t0 = Instant::now();
        let joined = weak
            .upgrade()
            .map(|p| p.join_timeout(Duration::from_secs(20)));
        let _ = tx.send((joined, t0.elapsed()));
    });
    let cancelling = std::thread::spawn(move || (slow.cancel(), joins.cancel()));
    began.recv_timeout(T).unwrap();
    p.join_timeout(T).unwrap();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the join returned while a cancelled task's callback ran"
    );
    let (cancelled, cancelled_too) = cancelling.join().unwrap();
    assert!(cancelled && cancelled_too);
    let (joined, took) = rx.recv_timeout(T).unwrap();
    assert!(matches!(joined, Some(Ok(()))), "{joined:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(get(running), Ok(1500));
    finish(Arc::into_inner(p).expect("no callback holds the pool any more"));
}

/// A fallible task's error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Flaky {
    /// Try again (after this many runs).
    Busy(u64),
    Broken,
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flaky::Busy(n) => write!(f, "busy after {n} runs"),
            Flaky::Broken => f.write_str("broken"),
        }
    }
}

/// Counts its runs in `runs`; fails with `Busy` until run `ok_at`, with `Broken` if
/// `ok_at` is 0.
fn flaky((runs, ok_at): (Value<u64>, u64)) -> Result<u64, Flaky> {
    let n = {
        let mut g = runs.lock().unwrap_or_else(|d| d.into_inner());
        *g += 1;
        *g
    };
    match ok_at {
        0 => Err(Flaky::Broken),
        _ if n >= ok_at => Ok(n),
        _ => Err(Flaky::Busy(n)),
    }
}

/// A value that does not decode: 13.
#[derive(Debug, PartialEq, Serialize)]
struct Refused(u64);

impl<'de> Deserialize<'de> for Refused {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            13 => Err(serde::de::Error::custom("Refused does not take 13")),
            v => Ok(Refused(v)),
        }
    }
}

/// Sleeps `ms`, then returns `Refused(v)`.
fn refused_after((ms, v): (u64, u64)) -> Refused {
    sleep_ms(ms);
    Refused(v)
}

/// A task's error type whose own code panics on some values: its `Deserialize` on 13,
/// its `Display` on 14.
#[derive(Debug, PartialEq, Serialize)]
struct Touchy(u64);

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        assert!(v != 13, "Touchy rejects 13");
        Ok(Touchy(v))
    }
}

impl fmt::Display for Touchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        assert!(self.0 != 14, "Touchy cannot show 14");
        write!(f, "touchy {}", self.0)
    }
}

fn touchy(x: u64) -> Result<u64, Touchy> {
    Err(Touchy(x))
}

fn abort_worker(_: u64) -> u64 {
    std::process::abort()
}

/// An error type's `Deserialize` and `Display`, and a retry policy's `retry_if`, are the
/// user's code, run on the pool's own thread (the one that routes every outcome, runs
/// timeouts and replaces dead workers) or the waiting caller's: a panic in them fails
/// that task, with the panic's text, and the pool goes on.
fn an_error_types_own_panic_fails_its_task_not_the_pool() {
    let failure = |r: Result<u64, TaskError>| match r {
        Err(TaskError::Failed(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    };
    let p = pool(2);
    let f = failure(get(p.submit_fallible(touchy, 13).unwrap()));
    assert!(
        f.message().contains("decoding the task's error panicked")
            && f.message().contains("Touchy rejects 13"),
        "{}",
        f.message()
    );
    let f = failure(get(p.submit_fallible(touchy, 14).unwrap()));
    assert!(
        f.message().contains("Touchy cannot show 14"),
        "{}",
        f.message()
    );
    assert_eq!(f.downcast_ref::<Touchy>(), Some(&Touchy(14)));
    let breaks = || {
        RetryPolicy::attempts(3)
            .backoff(Duration::from_millis(10), 1.0, Duration::from_millis(10))
            .retry_if(|_| panic!("retry_if breaks"))
    };
    let opts = TaskOptions::new().retry(breaks());
    let f = failure(get(p.submit_fallible_with(touchy, 5, opts).unwrap()));
    assert_eq!(f.downcast_ref::<Touchy>(), Some(&Touchy(5)));
    // The pool's thread is still there: it reports a dead worker and enforces a timeout.
    assert!(matches!(
        get(p.submit(abort_worker, 0).unwrap()),
        Err(TaskError::WorkerDied(_))
    ));
    let opts = TaskOptions::new().timeout(Duration::from_millis(200));
    let t = p.submit_with(sleep_ms, 20_000, opts).unwrap();
    assert_eq!(get(t), Err(TaskError::TimedOut));
    finish(p);
    // Threads: the same policy fails the task with its error, and the pool joins.
    let tp = ThreadPool::new(2).unwrap();
    let t = tp
        .submit_fallible_with(
            || Err::<u64, _>(Flaky::Busy(1)),
            TaskOptions::new().retry(breaks()),
        )
        .unwrap();
    match get(t) {
        Err(TaskError::Failed(f)) => assert_eq!(f.downcast_ref::<Flaky>(), Some(&Flaky::Busy(1))),
        other => panic!("expected a failure, got {other:?}"),
    }
    tp.join_timeout(T).unwrap();
}

fn busy_only(e: &TaskError) -> bool {
    e.failure()
        .and_then(Failure::downcast_ref::<Flaky>)
        .is_some_and(|f| matches!(f, Flaky::Busy(_)))
}

fn err_retried_then_reported_typed() {
    let fast = || {
        RetryPolicy::attempts(3).backoff(Duration::from_millis(10), 2.0, Duration::from_millis(50))
    };
    let check_failed = |r: Result<u64, TaskError>, expected: Flaky| match r {
        Err(TaskError::Failed(f)) => {
            assert_eq!(f.message(), expected.to_string());
            assert_eq!(f.decode::<Flaky>().unwrap(), expected);
            assert_eq!(f.downcast_ref::<Flaky>(), Some(&expected));
        }
        other => panic!("{other:?}"),
    };
    // Processes: retried on its own error, N times, then reported with it.
    let p = pool(2);
    let runs = Value::new(0u64).unwrap();
    let opts = TaskOptions::new().retry(fast());
    let t = p
        .submit_fallible_with(flaky, (runs.clone(), 10), opts.clone())
        .unwrap();
    check_failed(get(t), Flaky::Busy(3));
    assert_eq!(runs.load(), 3, "three runs in all");
    // Succeeds within the attempts.
    runs.store(0);
    let t = p
        .submit_fallible_with(flaky, (runs.clone(), 2), opts)
        .unwrap();
    assert_eq!(get(t).unwrap(), 2);
    // `retry_if` sees the typed error: `Broken` is not retried.
    runs.store(0);
    let opts = TaskOptions::new().retry(fast().retry_if(busy_only));
    let t = p
        .submit_fallible_with(flaky, (runs.clone(), 0), opts)
        .unwrap();
    check_failed(get(t), Flaky::Broken);
    assert_eq!(runs.load(), 1);
    // Without a policy: one run; an `Ok` is the value.
    runs.store(0);
    check_failed(
        get(p.submit_fallible(flaky, (runs.clone(), 5)).unwrap()),
        Flaky::Busy(1),
    );
    // A pool-wide policy retries it too.
    let retrying = Pool::builder().processes(1).retry(fast()).build().unwrap();
    runs.store(0);
    check_failed(
        get(retrying.submit_fallible(flaky, (runs.clone(), 9)).unwrap()),
        Flaky::Busy(3),
    );
    finish(retrying);
    finish(p);
    // Threads: the same, a closure run again.
    let tp = ThreadPool::new(2).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let t = tp
        .submit_fallible_with(
            move || Err::<u64, _>(Flaky::Busy(c.fetch_add(1, Ordering::SeqCst) as u64 + 1)),
            TaskOptions::new().retry(fast()),
        )
        .unwrap();
    check_failed(get(t), Flaky::Busy(3));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let t = tp.submit_fallible(|| Err::<u64, _>(Flaky::Broken)).unwrap();
    check_failed(get(t), Flaky::Broken);
    tp.join_timeout(T).unwrap();
}

fn timeouts_leave_handles_usable() {
    let p = pool(2);
    // A task: Timeout, then its value, then Taken.
    let mut t = p.submit(sleep_ms, 2000).unwrap();
    assert_eq!(
        t.wait_timeout(Duration::from_millis(50)),
        Err(TaskError::Timeout)
    );
    assert!(!t.is_done());
    assert_eq!(t.wait_timeout(T), Ok(2000));
    assert_eq!(t.wait_timeout(T), Err(TaskError::Taken));
    // apply_timeout gives up on (and stops) a task past its time.
    let pids = p.worker_pids();
    assert_eq!(
        p.apply_timeout(sleep_ms, 30_000, Duration::from_millis(100)),
        Err(TaskError::Timeout)
    );
    assert!(
        common::eventually(T, || p.worker_pids() != pids),
        "not stopped"
    );
    assert_eq!(p.apply_timeout(square, 7, T), Ok(49));
    // map_timeout, imap's next_timeout.
    assert_eq!(
        p.map_timeout(sleep_ms, [0, 30_000], Duration::from_millis(200)),
        Err(TaskError::Timeout)
    );
    assert_eq!(p.map_timeout(square, 0..10, T).unwrap().len(), 10);
    let mut it = p.imap(sleep_ms, [2000, 0]);
    assert_eq!(
        it.next_timeout(Duration::from_millis(50)),
        Some(Err(TaskError::Timeout))
    );
    assert_eq!(it.next_timeout(T), Some(Ok(2000)));
    assert_eq!(it.next_timeout(T), Some(Ok(0)));
    assert_eq!(it.next_timeout(T), None);
    drop(it);
    // join_timeout: a timeout error that leaves the pool closed and joinable.
    let _busy = p.submit(sleep_ms, 2000).unwrap();
    assert!(matches!(
        p.join_timeout(Duration::from_millis(50)),
        Err(PoolError::Timeout)
    ));
    assert_eq!(p.submit(square, 1).unwrap_err(), TaskError::PoolClosed);
    finish(p);
    // Threads.
    let tp = ThreadPool::new(1).unwrap();
    let mut t = tp.submit(|| sleep_ms(2000)).unwrap();
    assert!(
        t.wait_timeout(Duration::from_millis(20))
            .unwrap_err()
            .is_timeout()
    );
    assert_eq!(t.wait_timeout(T), Ok(2000));
    assert_eq!(
        tp.apply_timeout(|| sleep_ms(300), Duration::from_millis(20)),
        Err(TaskError::Timeout)
    );
    assert_eq!(
        tp.map_timeout(sleep_ms, [300, 300], Duration::from_millis(20)),
        Err(TaskError::Timeout)
    );
    let mut it = tp.imap_unordered(sleep_ms, [300]);
    assert_eq!(
        it.next_timeout(Duration::from_millis(20)),
        Some(Err(TaskError::Timeout))
    );
    assert_eq!(it.next_timeout(T), Some(Ok(300)));
    drop(it);
    tp.join_timeout(T).unwrap();
}

fn record_start(_: ()) -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn now_ms() -> u128 {
    record_start(())
}

fn per_task_options() {
    let p = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // A timeout of its own, shorter than the pool's: its worker is killed.
    let t = p
        .submit_with(
            sleep_ms,
            30_000,
            TaskOptions::new().timeout(Duration::from_millis(200)),
        )
        .unwrap();
    assert_eq!(get(t), Err(TaskError::TimedOut));
    // A countdown: it starts no earlier (held in the pool, not in a worker).
    let submitted = now_ms();
    let t = p
        .submit_with(
            record_start,
            (),
            TaskOptions::new().countdown(Duration::from_millis(400)),
        )
        .unwrap();
    let started = get(t).unwrap();
    assert!(started >= submitted + 350, "{}", started - submitted);
    // An eta in the past runs now; cancel reaches a delayed task.
    let t = p
        .submit_with(
            square,
            3,
            TaskOptions::new().eta(std::time::SystemTime::UNIX_EPOCH),
        )
        .unwrap();
    assert_eq!(get(t).unwrap(), 9);
    let later = p
        .submit_with(
            square,
            3,
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    assert!(later.cancel());
    assert_eq!(get(later), Err(TaskError::Cancelled));
    // A retry of its own: a worker that dies is retried.
    let t = p
        .submit_with(
            sleep_ms,
            30_000,
            TaskOptions::new()
                .timeout(Duration::from_millis(100))
                .retry(RetryPolicy::attempts(2).backoff(
                    Duration::from_millis(10),
                    1.0,
                    Duration::from_millis(10),
                )),
        )
        .unwrap();
    assert_eq!(get(t), Err(TaskError::TimedOut));
    // Refused: a zero timeout.
    assert!(matches!(
        p.submit_with(square, 1, TaskOptions::new().timeout(Duration::ZERO)),
        Err(TaskError::InvalidArgument(_))
    ));
    finish(p);
    // Threads: a timeout ends the task at once (the closure runs on, unread).
    let tp = ThreadPool::new(2).unwrap();
    let t0 = Instant::now();
    let t = tp
        .submit_with(
            || sleep_ms(2_000),
            TaskOptions::new().timeout(Duration::from_millis(100)),
        )
        .unwrap();
    assert_eq!(get(t), Err(TaskError::TimedOut));
    assert!(t0.elapsed() < Duration::from_millis(1_500));
    let submitted = now_ms();
    let t = tp
        .submit_with(
            || record_start(()),
            TaskOptions::new().countdown(Duration::from_millis(400)),
        )
        .unwrap();
    assert!(get(t).unwrap() >= submitted + 350);
    // A panic retried when the policy says so (an FnMut run again).
    let mut n = 0;
    let t = tp
        .submit_with(
            move || {
                n += 1;
                assert!(n >= 3, "run {n}");
                n
            },
            TaskOptions::new().retry(
                RetryPolicy::attempts(3)
                    .backoff(Duration::from_millis(1), 1.0, Duration::from_millis(1))
                    .retry_if(|e| matches!(e, TaskError::Panicked(_))),
            ),
        )
        .unwrap();
    assert_eq!(get(t).unwrap(), 3);
    // Closing waits for a delayed task, which still runs.
    let t = tp
        .submit_with(
            || 7,
            TaskOptions::new().countdown(Duration::from_millis(200)),
        )
        .unwrap();
    tp.close();
    assert_eq!(get(t).unwrap(), 7);
    tp.join_timeout(T).unwrap();
}

/// The context of a map: its `Serialize` and `Deserialize` count themselves, in this
/// process and in shared memory (each worker adds one per decode).
struct Table {
    factor: u64,
    /// Ballast, so that sending it once per item would show.
    rows: Vec<u64>,
    decodes: Value<u64>,
}

static ENCODES: AtomicUsize = AtomicUsize::new(0);

impl Serialize for Table {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ENCODES.fetch_add(1, Ordering::SeqCst);
        (self.factor, &self.rows, &self.decodes).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (factor, rows, decodes) = <(u64, Vec<u64>, Value<u64>)>::deserialize(d)?;
        *decodes.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(Table {
            factor,
            rows,
            decodes,
        })
    }
}

fn scale(t: &Table, x: u64) -> u64 {
    x * t.factor + t.rows.len() as u64
}

fn map_with_sends_the_context_once_per_worker() {
    let p = pool(2);
    let decodes = Value::new(0u64).unwrap();
    let table = Table {
        factor: 3,
        rows: vec![7; 10_000],
        decodes: decodes.clone(),
    };
    let before = ENCODES.load(Ordering::SeqCst);
    let out = p.map_with(table, scale, 0..1000).unwrap();
    assert_eq!(out, (0..1000).map(|x| x * 3 + 10_000).collect::<Vec<_>>());
    // Encoded once, sent to (and decoded once by) each worker that ran a chunk: two.
    // (`Serialize` runs once more, to measure: the codec writes a small value without
    // descriptors straight into a buffer of its size, and finds out by measuring it;
    // this one, with a handle in it and over 4 KiB, then goes the general way.) Not once
    // per chunk: there are dozens.
    let encodes = ENCODES.load(Ordering::SeqCst) - before;
    assert!((1..=2).contains(&encodes), "serialized {encodes} times");
    let n = decodes.load();
    assert!((1..=2).contains(&n), "decoded {n} times");
    // Again on the same workers: a new map, a new context, dropped after.
    let table = Table {
        factor: 1,
        rows: Vec::new(),
        decodes: decodes.clone(),
    };
    assert_eq!(
        p.map_with(table, scale, 0..10).unwrap(),
        (0..10).collect::<Vec<_>>()
    );
    assert!(decodes.load() <= n + 2);
    // A worker that dies mid-map: its replacement gets the context too.
    fn maybe_die(t: &Table, x: u64) -> u64 {
        if x == 500 && t.factor == 5 {
            let path = std::env::temp_dir().join(format!("mp-map-with-{}", t.rows[0]));
            if std::fs::create_dir(&path).is_ok() {
                std::process::abort();
            }
        }
        x * t.factor
    }
    let retrying = Pool::builder()
        .processes(2)
        .retry(RetryPolicy::attempts(2).backoff(
            Duration::from_millis(1),
            1.0,
            Duration::from_millis(1),
        ))
        .build()
        .unwrap();
    let tag = std::process::id() as u64;
    let table = Table {
        factor: 5,
        rows: vec![tag],
        decodes: decodes.clone(),
    };
    let marker = std::env::temp_dir().join(format!("mp-map-with-{tag}"));
    let got = retrying.map_with(table, maybe_die, 0..1000);
    let _ = std::fs::remove_dir(&marker);
    match got {
        Ok(v) => assert_eq!(v, (0..1000).map(|x| x * 5).collect::<Vec<_>>()),
        // The chunk with the crash fails as a whole when its retry is not allowed.
        Err(e) => panic!("{e}"),
    }
    finish(retrying);
    // Threads: the context is shared, not copied.
    let tp = ThreadPool::new(2).unwrap();
    let shared = vec![1u64; 3];
    assert_eq!(
        tp.map_with(shared, |s: &Vec<u64>, x: u64| x + s.len() as u64, 0..4)
            .unwrap(),
        [3, 4, 5, 6]
    );
    tp.join_timeout(T).unwrap();
    finish(p);
}

/// Generic over where it runs.
fn sum_of_squares<E: Executor>(ex: &E, f: E::Func<u64, u64>) -> Result<u64, E::Error>
where
    E::Func<u64, u64>: Copy,
{
    let one = ex.submit(f, 3)?.wait().map_err(E::Error::from)?;
    let mapped: u64 = ex.map(f, 4..6)?.iter().sum();
    let lazy: u64 = ex.imap(f, 6..8).map(|r| r.unwrap()).sum();
    let delayed = ex
        .submit_with(
            f,
            8,
            TaskOptions::new().countdown(Duration::from_millis(10)),
        )?
        .wait()
        .map_err(E::Error::from)?;
    Ok(one + mapped + lazy + delayed)
}

fn one_executor_trait() {
    let expected = (3..9).map(|x| x * x).sum::<u64>();
    let p = pool(2);
    assert_eq!(sum_of_squares(&p, square).unwrap(), expected);
    let tp = ThreadPool::new(2).unwrap();
    assert_eq!(sum_of_squares(&tp, square).unwrap(), expected);
    // Retries on a thread pool through the trait get their argument again.
    let fails_first = |x: u64| -> u64 {
        static N: AtomicUsize = AtomicUsize::new(0);
        assert!(N.fetch_add(1, Ordering::SeqCst) > 0, "first run");
        x
    };
    let t = Executor::submit_with(
        &tp,
        fails_first,
        41u64,
        TaskOptions::new().retry(
            RetryPolicy::attempts(2)
                .backoff(Duration::from_millis(1), 1.0, Duration::from_millis(1))
                .retry_if(|_| true),
        ),
    )
    .unwrap();
    assert_eq!(get(t).unwrap(), 41);
    Executor::shutdown(&tp, true, false);
    Executor::shutdown(&p, true, false);
    assert_eq!(p.submit(square, 1).unwrap_err(), TaskError::PoolClosed);
    finish(p);
}

/// Runs so far, the run to read on, the event it sets then, what it reads.
type LateRun = (Value<u64>, u64, Event, multiproc::Receiver<u64>);

/// Panics on its runs before run `ok_at` (counted in `runs`); that run says it started
/// and returns the next value through `rx`.
fn reads_on_a_late_run((runs, ok_at, started, rx): LateRun) -> u64 {
    let n = {
        let mut g = runs.lock().unwrap_or_else(|d| d.into_inner());
        *g += 1;
        *g
    };
    assert!(n >= ok_at, "run {n} fails");
    started.set();
    rx.recv_timeout(T).expect("a value within T")
}

/// Each run of a retried task gets its argument decoded again from one encoding; a
/// receiver in it keeps its pipe connected while a run holds it, and once the task is
/// over (its last receiver gone) the pipe is disconnected. Before, every decode took over
/// the single count the encoding added: the third run on threads (the second on
/// processes) found a sender told the pipe had no receiver.
fn a_retried_runs_receiver_keeps_its_pipe_connected() {
    fn check<E: Executor>(ex: &E, f: E::Func<LateRun, u64>, ok_at: u64)
    where
        E::Func<LateRun, u64>: Copy,
    {
        let runs = Value::new(0u64).unwrap();
        let started = Event::new().unwrap();
        let (tx, rx) = multiproc::pipe::<u64>().unwrap();
        let opts = TaskOptions::new().retry(
            RetryPolicy::attempts(3)
                .backoff(Duration::from_millis(1), 1.0, Duration::from_millis(1))
                .retry_if(|_| true),
        );
        let t =
            Executor::submit_with(ex, f, (runs.clone(), ok_at, started.clone(), rx), opts).unwrap();
        assert!(started.wait_timeout(T), "run {ok_at} started");
        tx.try_send(7).expect("the running task holds the receiver");
        assert_eq!(get(t).unwrap(), 7);
        assert_eq!(runs.load(), ok_at);
        // Its last receiver is gone once the task's record is: no count is left over.
        no_receiver_left(&tx, &format!("after the task (run {ok_at})"));
    }
    let p = pool(1);
    let tp = ThreadPool::new(1).unwrap();
    for ok_at in [2, 3] {
        check(&p, reads_on_a_late_run, ok_at);
        check(&tp, reads_on_a_late_run, ok_at);
    }
    Executor::shutdown(&tp, true, false);
    finish(p);
}

/// An initializer that always fails.
fn init_fails(_: ()) {
    panic!("no start for this worker");
}

/// A task with a receiver in its argument, in a pool that breaks before any worker began
/// it (its workers' initializer fails every time): once it failed with `PoolBroken`, the
/// pipe has no receiver left (the copy sent to the worker that failed last kept its
/// count for ever).
fn a_broken_pools_task_leaves_no_receiver_count() {
    let p = Pool::builder()
        .processes(1)
        .initializer(init_fails, ())
        .build()
        .unwrap();
    let (tx, rx) = multiproc::pipe::<u64>().unwrap();
    let mut t = p
        .submit(started_then_read, (Event::new().unwrap(), rx))
        .unwrap();
    let r = t.wait_timeout(T);
    assert!(matches!(r, Err(TaskError::PoolBroken(_))), "{r:?}");
    drop(t);
    no_receiver_left(&tx, "after the pool broke");
    drop(p);
}

/// Every receiver of `tx`'s pipe is gone (within `T`): a send says so at once, rather
/// than find one still counted.
fn no_receiver_left(tx: &multiproc::Sender<u64>, what: &str) {
    let t0 = Instant::now();
    while tx.try_send(8).is_ok() && t0.elapsed() < T {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        matches!(
            tx.try_send(9),
            Err(multiproc::TrySendError::Disconnected(9))
        ),
        "the pipe still counts a receiver {what}"
    );
}

/// Says it started, then waits for `go`.
fn started_then_wait((started, go): (Event, Event)) -> bool {
    started.set();
    go.wait_timeout(T)
}

/// Says it started, then returns the next value through `rx`.
fn started_then_read((started, rx): (Event, multiproc::Receiver<u64>)) -> u64 {
    started.set();
    rx.recv_timeout(T).expect("a value within T")
}

/// A pool of one worker, running a task that waits (within `T`) for an event nobody
/// sets.
fn busy_pool_of_one() -> (Pool, Task<bool>) {
    let p = pool(1);
    let started = Event::new().unwrap();
    let long = p
        .submit(started_then_wait, (started.clone(), Event::new().unwrap()))
        .unwrap();
    assert!(started.wait_timeout(T));
    (p, long)
}

/// A task with a receiver in its argument, taken back from a worker busy with a long
/// task and run by another: the copy the busy worker skips gives its count back, so once
/// the task is over the pipe has no receiver left (a send says so at once).
fn a_taken_back_tasks_receiver_leaves_no_count() {
    let p = pool(2);
    let (started1, go1, started2, go2) = (
        Event::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    // One long task on each worker.
    let long1 = p
        .submit(started_then_wait, (started1.clone(), go1.clone()))
        .unwrap();
    assert!(started1.wait_timeout(T));
    let long2 = p
        .submit(started_then_wait, (started2.clone(), go2.clone()))
        .unwrap();
    assert!(started2.wait_timeout(T));
    // Queued behind the first; taken back when the second worker is free.
    let (tx, rx) = multiproc::pipe::<u64>().unwrap();
    let started = Event::new().unwrap();
    let reader = p.submit(started_then_read, (started.clone(), rx)).unwrap();
    go2.set();
    assert!(get(long2).unwrap());
    assert!(started.wait_timeout(T), "the task was taken back and run");
    tx.send(5).unwrap();
    assert_eq!(get(reader).unwrap(), 5);
    // The busy worker skips its copy once its long task ends.
    go1.set();
    assert!(get(long1).unwrap());
    no_receiver_left(&tx, "after the task");
    finish(p);
    // The same, for a copy lost with a worker killed before it began the task: the task
    // runs on the next worker, and nothing is left counted.
    let (p, long) = busy_pool_of_one();
    let (tx, rx) = multiproc::pipe::<u64>().unwrap();
    let started = Event::new().unwrap();
    let reader = p.submit(started_then_read, (started.clone(), rx)).unwrap();
    let pid = p.worker_pids()[0];
    common::sigkill(pid);
    assert!(matches!(get(long), Err(TaskError::WorkerDied(_))));
    assert!(started.wait_timeout(T), "the task ran on the next worker");
    tx.send(6).unwrap();
    assert_eq!(get(reader).unwrap(), 6);
    no_receiver_left(&tx, "after a worker died with its copy");
    finish(p);
    // And for a copy cancelled before its worker began it, the worker then killed.
    let (p, long) = busy_pool_of_one();
    let (tx, rx) = multiproc::pipe::<u64>().unwrap();
    let reader = p
        .submit(started_then_read, (Event::new().unwrap(), rx))
        .unwrap();
    assert!(reader.cancel(), "queued behind the long task");
    common::sigkill(p.worker_pids()[0]);
    assert!(matches!(get(long), Err(TaskError::WorkerDied(_))));
    assert_eq!(get(reader).unwrap_err(), TaskError::Cancelled);
    no_receiver_left(&tx, "after a worker died with a cancelled copy");
    finish(p);
}

fn shutdown_cancels_pending() {
    for threads in [false, true] {
        let started = Event::new().unwrap();
        let (running, queued): (Task<u64>, Vec<Task<u64>>) = if threads {
            let tp = ThreadPool::new(1).unwrap();
            let s = started.clone();
            let running = tp.submit(move || started_then_sleep((s, 300))).unwrap();
            let queued = (0..5).map(|x| tp.submit(move || x).unwrap()).collect();
            assert!(started.wait_timeout(T));
            tp.shutdown(true, true);
            (running, queued)
        } else {
            let p = pool(1);
            let running = p
                .submit(started_then_sleep, (started.clone(), 300))
                .unwrap();
            let queued = (0..5).map(|x| p.submit(square, x).unwrap()).collect();
            assert!(started.wait_timeout(T));
            p.shutdown(true, true);
            finish(p);
            (running, queued)
        };
        assert_eq!(get(running).unwrap(), 300, "threads: {threads}");
        for t in queued {
            assert_eq!(get(t), Err(TaskError::Cancelled), "threads: {threads}");
        }
    }
}

/// Notes its start, runs 300 ms, and panics on its first run (the one that makes
/// `marker`).
fn fails_its_first_run((marker, started): (String, Event)) -> u64 {
    started.set();
    sleep_ms(300);
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_ok()
    {
        panic!("the first run fails");
    }
    7
}

/// A task running when `shutdown` cancels the tasks not started, and failing after it,
/// is not run again: its retry, due after the shutdown, ends `Cancelled`, on both
/// pools (a process pool ran it again).
fn a_retry_due_after_a_cancelling_shutdown_is_cancelled() {
    let dir = common::tempdir("retry-after-shutdown");
    let opts = || {
        TaskOptions::new().retry(
            RetryPolicy::attempts(2)
                .backoff(Duration::from_millis(200), 1.0, Duration::from_millis(200))
                .retry_if(|e| matches!(e, TaskError::Panicked(_))),
        )
    };
    for threads in [false, true] {
        let marker = dir
            .join(format!("ran-{threads}"))
            .to_string_lossy()
            .into_owned();
        let started = Event::new().unwrap();
        let args = (marker, started.clone());
        if threads {
            let tp = ThreadPool::new(1).unwrap();
            let task = tp
                .submit_with(move || fails_its_first_run(args.clone()), opts())
                .unwrap();
            assert!(started.wait_timeout(T));
            tp.shutdown(false, true);
            assert_eq!(get(task), Err(TaskError::Cancelled), "threads");
            tp.join();
        } else {
            let p = pool(1);
            let task = p.submit_with(fails_its_first_run, args, opts()).unwrap();
            assert!(started.wait_timeout(T));
            p.shutdown(false, true);
            assert_eq!(get(task), Err(TaskError::Cancelled), "processes");
            finish(p);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The callbacks of tasks a cancelling `shutdown` ends (two waiting for an hour's
/// countdown) may join the pool, on both pools, and the join returns at once: on the
/// thread pool it waited for the next waiting task, which only the shutdown's own
/// thread was about to cancel.
fn callbacks_of_tasks_a_shutdown_cancels_may_join() {
    type Join = Box<dyn Fn() -> Result<(), PoolError> + Send>;
    let hour = || TaskOptions::new().countdown(Duration::from_secs(3600));
    // The callbacks join through a weak handle: the pool is this thread's to end.
    let within = Duration::from_secs(10);
    for threads in [false, true] {
        let (thread_pool, process_pool, tasks, join): (
            _,
            _,
            Vec<Task<u64>>,
            Box<dyn Fn() -> Join>,
        ) = if threads {
            let tp = Arc::new(ThreadPool::new(1).unwrap());
            let tasks = (0..2)
                .map(|x| tp.submit_with(move || x, hour()).unwrap())
                .collect();
            let weak = Arc::downgrade(&tp);
            let join = Box::new(move || -> Join {
                let tp = weak.clone();
                Box::new(move || tp.upgrade().map_or(Ok(()), |tp| tp.join_timeout(within)))
            });
            (Some(tp), None, tasks, join)
        } else {
            let p = Arc::new(pool(1));
            let tasks = (0..2)
                .map(|x| p.submit_with(square, x, hour()).unwrap())
                .collect();
            let weak = Arc::downgrade(&p);
            let join = Box::new(move || -> Join {
                let p = weak.clone();
                Box::new(move || p.upgrade().map_or(Ok(()), |p| p.join_timeout(within)))
            });
            (None, Some(p), tasks, join)
        };
        let (tx, rx) = mpsc::channel();
        for task in &tasks {
            let (tx, join) = (tx.clone(), join());
            task.on_done(move |outcome| {
                let t0 = Instant::now();
                let joined = join();
                let _ = tx.send((outcome.clone(), joined, t0.elapsed()));
            });
        }
        match (&thread_pool, &process_pool) {
            (Some(tp), _) => tp.shutdown(false, true),
            (_, Some(p)) => p.shutdown(false, true),
            _ => unreachable!(),
        }
        for _ in 0..2 {
            let (outcome, joined, took) = rx.recv_timeout(T).unwrap();
            assert_eq!(outcome, Err(TaskError::Cancelled), "threads: {threads}");
            // The process pool runs them on the thread that shuts down or on its own
            // thread (whichever takes them), where a join only closes the pool and
            // says so (see `Pool::join_timeout`).
            assert!(
                joined.is_ok() || !threads && matches!(joined, Err(PoolError::InvalidArgument(_))),
                "threads: {threads}: {joined:?}"
            );
            assert!(
                took < Duration::from_secs(5),
                "threads: {threads}: {took:?}"
            );
        }
        for task in tasks {
            assert_eq!(get(task), Err(TaskError::Cancelled), "threads: {threads}");
        }
        if let Some(p) = process_pool {
            finish(Arc::into_inner(p).expect("no callback holds the pool any more"));
        }
    }
}

/// Tasks submitted from another thread while `shutdown` cancels the tasks not
/// started: each is refused or cancelled, none runs (one that passed the pool's check
/// as the shutdown ran was queued after it, and ran).
fn a_submission_racing_a_cancelling_shutdown_is_cancelled() {
    for round in 0..300 {
        let tp = std::sync::Arc::new(ThreadPool::new(1).unwrap());
        let (release, gate) = crossbeam_channel::bounded::<()>(1);
        let (started, running) = crossbeam_channel::bounded::<()>(1);
        let blocker = tp
            .submit(move || {
                let _ = started.send(());
                gate.recv_timeout(T).is_ok()
            })
            .unwrap();
        // The pool's one thread is taken: what is submitted next waits in its queue.
        running.recv_timeout(T).unwrap();
        let submitter = {
            let tp = std::sync::Arc::clone(&tp);
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                while let Ok(t) = tp.submit(|| 1u64) {
                    kept.push(t);
                }
                kept
            })
        };
        std::thread::sleep(Duration::from_micros(200));
        tp.shutdown(false, true);
        release.send(()).unwrap();
        let kept = submitter.join().unwrap();
        assert_eq!(get(blocker), Ok(true));
        for t in kept {
            assert_eq!(get(t), Err(TaskError::Cancelled), "round {round}");
        }
        tp.join();
    }
}

/// Counts a run in `runs`, then takes 20 ms.
fn counted_slow((runs, x): (Value<u32>, u64)) -> u64 {
    {
        let mut n = runs.lock().unwrap();
        *n += 1;
    }
    sleep_ms(20);
    x
}

/// A process pool's `map` under way on another thread when `shutdown` cancels the tasks
/// not started: it ends `Cancelled`, and no chunk starts after the shutdown (a map went
/// on submitting its chunks past the shutdown, and they ran).
fn a_map_under_way_at_a_cancelling_shutdown_starts_nothing_more() {
    let p = std::sync::Arc::new(pool(1));
    let runs = Value::new(0u32).unwrap();
    let mapping = {
        let (p, runs) = (std::sync::Arc::clone(&p), runs.clone());
        std::thread::spawn(move || {
            p.map_chunked(counted_slow, (0..200u64).map(|x| (runs.clone(), x)), 1)
        })
    };
    assert!(common::eventually(T, || runs.load() >= 3));
    p.shutdown(false, true);
    // The run under way at the shutdown may still count itself.
    let at_shutdown = runs.load();
    let mapped = mapping.join().unwrap();
    assert_eq!(mapped.unwrap_err(), TaskError::Cancelled);
    std::thread::sleep(Duration::from_millis(100));
    let after = runs.load();
    assert!(
        after <= at_shutdown + 1,
        "{} runs started after the shutdown",
        after - at_shutdown
    );
    finish(std::sync::Arc::into_inner(p).unwrap());
}

fn imap_as_a_stream() {
    use futures_lite::StreamExt;
    let p = pool(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut got: Vec<u64> = rt.block_on(async {
        let mut s = p.imap_unordered(square, 0..200u64).into_stream();
        let mut got = Vec::new();
        while let Some(r) = s.next().await {
            got.push(r.unwrap());
        }
        got
    });
    got.sort_unstable();
    assert_eq!(got, (0..200).map(|x| x * x).collect::<Vec<_>>());
    // In order, with a failure in place; on threads under async-io's executor.
    let ordered: Vec<Result<u64, TaskError>> =
        futures_lite::future::block_on(p.imap(sleep_ms, [30, 0, 10]).into_stream().collect());
    assert_eq!(ordered, [Ok(30), Ok(0), Ok(10)]);
    let tp = ThreadPool::new(2).unwrap();
    let got: Vec<bool> = futures_lite::future::block_on(
        tp.imap(|x: u64| x != 2 || panic!("two"), 0..4)
            .into_stream()
            .map(|r| r.is_ok())
            .collect(),
    );
    assert_eq!(got, [true, true, false, true]);
    tp.join_timeout(T).unwrap();
    finish(p);
}

/// A stream's poll routes no outcome itself (the pool's thread does, and wakes it):
/// routing runs the callbacks of the tasks routed, which may wait for anything, and on
/// the runtime's thread they held up every task it runs. Tasks with callbacks finish
/// while a stream is polled; none of their callbacks runs on the polling thread.
fn a_streams_poll_runs_no_other_tasks_callbacks() {
    use futures_lite::StreamExt;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};
    thread_local! {
        /// Set while a callback is registered: one registered on a task already done
        /// runs at once, on the registering thread, and is not the poll's doing.
        static REGISTERING: Cell<bool> = const { Cell::new(false) };
    }
    let p = pool(2);
    // Where each callback ran, and whether the stream was being polled then.
    let ran_on = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let streaming = std::sync::Arc::new(AtomicBool::new(true));
    let submit = |x: u64| {
        let t = p.submit(square, x).unwrap();
        let (ran_on, streaming) = (ran_on.clone(), streaming.clone());
        REGISTERING.with(|r| r.set(true));
        t.on_done(move |_| {
            let polled = streaming.load(Ordering::SeqCst) && !REGISTERING.with(Cell::get);
            ran_on
                .lock()
                .unwrap()
                .push((std::thread::current().id(), polled));
        });
        REGISTERING.with(|r| r.set(false));
        t
    };
    // Tasks with callbacks submitted as the stream's items come, so that they finish
    // while it is polled.
    let (got, tasks) = futures_lite::future::block_on(async {
        let mut s = p.imap_unordered(square, 0..3000u64).into_stream();
        let (mut n, mut tasks) = (0, Vec::new());
        while let Some(r) = s.next().await {
            r.unwrap();
            n += 1;
            if n % 10 == 0 && tasks.len() < 300 {
                tasks.extend((0..10).map(submit));
            }
        }
        (n, tasks)
    });
    streaming.store(false, Ordering::SeqCst);
    assert_eq!(got, 3000);
    for t in tasks {
        get(t).unwrap();
    }
    let ran_on = ran_on.lock().unwrap();
    assert_eq!(ran_on.len(), 300);
    assert!(
        ran_on.iter().any(|&(_, polled)| polled),
        "no task finished while the stream was polled"
    );
    let here = std::thread::current().id();
    assert_eq!(
        ran_on
            .iter()
            .filter(|&&(id, polled)| polled && id == here)
            .count(),
        0,
        "callbacks run by the stream's poll"
    );
    drop(ran_on);
    finish(p);
}

fn helper_leaks() {
    let round = || {
        let p = pool(2);
        let tp = ThreadPool::new(2).unwrap();
        let tasks: Vec<_> = (0..20).map(|x| p.submit(square, x).unwrap()).collect();
        assert_eq!(multiproc::as_completed(tasks).count(), 20);
        let tasks = [p.submit(sleep_ms, 0).unwrap(), p.submit(boom, 0).unwrap()];
        let _ = multiproc::wait_tasks(&tasks, Return::AllCompleted, Some(T));
        let _ = multiproc::wait(&[&tasks[0]], Some(T)).unwrap();
        let decodes = Value::new(0u64).unwrap();
        let t = Table {
            factor: 2,
            rows: vec![1],
            decodes,
        };
        assert_eq!(p.map_with(t, scale, 0..50).unwrap().len(), 50);
        let d = p
            .submit_with(
                square,
                2,
                TaskOptions::new().countdown(Duration::from_millis(5)),
            )
            .unwrap();
        d.on_done(|_| {});
        assert_eq!(get(d).unwrap(), 4);
        let t = tp
            .submit_with(|| 1, TaskOptions::new().timeout(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(get(t).unwrap(), 1);
        let _ = futures_lite::future::block_on(futures_lite::StreamExt::count(
            p.imap_unordered(square, 0..20u64).into_stream(),
        ));
        tp.join_timeout(T).unwrap();
        drop(tp);
        finish(p);
    };
    round();
    let (fds, maps) = (common::fd_count(), common::map_count());
    for _ in 0..5 {
        round();
    }
    // A thread that has just ended may unmap its stack a moment later: wait for the
    // counts to come back (a leak never does), then report them.
    common::eventually(Duration::from_secs(5), || {
        common::fd_count() <= fds && common::map_count() <= maps
    });
    println!(
        "fds {fds} {} maps {maps} {}",
        common::fd_count(),
        common::map_count()
    );
}

fn no_descriptor_or_mapping_leaks() {
    let mut h = Helper::start_counting_mappings("leaks");
    let line = h.expect("fds ", Duration::from_secs(300));
    let v: Vec<&str> = line.split(' ').collect();
    assert_eq!(v[0], v[1], "descriptors leaked: {line}");
    assert_eq!(v[3], v[4], "mappings leaked: {line}");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}
