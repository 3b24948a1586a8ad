//! The thread pool: the same surface as the process pool, with closures.

mod watchdog;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use multiproc::{PoolError, RetryPolicy, Task, TaskError, TaskOptions, ThreadPool};

const T: Duration = Duration::from_secs(30);

fn get<R>(mut task: Task<R>) -> Result<R, TaskError> {
    match task.wait_timeout(T) {
        Err(TaskError::Timeout) => panic!("a task did not finish within {T:?}"),
        done => done,
    }
}

fn quiet_panics() {
    // The default hook would print every expected panic.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if !thread.name().unwrap_or("").starts_with("quiet") {
                previous(info);
            }
        }));
    });
}

#[test]
fn submit_apply_map() {
    let pool = ThreadPool::new(3).unwrap();
    assert_eq!(pool.threads(), 3);
    let base = 7;
    assert_eq!(get(pool.submit(move || base * 6).unwrap()).unwrap(), 42);
    assert_eq!(pool.apply(|| "hi".to_string()).unwrap(), "hi");
    let want: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
    assert_eq!(pool.map(|x: u64| x * x, 0..1000).unwrap(), want);
    for chunk in [0, 1, 7, 5000] {
        assert_eq!(
            pool.map_chunked(|x: u64| x * x, 0..1000, chunk).unwrap(),
            want
        );
    }
    assert!(pool.map(|x: u64| x, Vec::new()).unwrap().is_empty());
    // Non-'static data goes in by value (moved or Arc'd).
    let words = Arc::new(vec!["a", "b", "c"]);
    let w = Arc::clone(&words);
    assert_eq!(
        pool.map(move |i: usize| w[i].to_uppercase(), 0..3).unwrap(),
        ["A", "B", "C"]
    );
    pool.join_timeout(T).unwrap();
}

#[test]
fn panics_fail_their_task_only() {
    quiet_panics();
    let pool = ThreadPool::builder()
        .threads(1)
        .name("quiet")
        .build()
        .unwrap();
    let err = get(pool.submit(|| -> u32 { panic!("boom {}", 1) }).unwrap()).unwrap_err();
    let panic = err.panic().expect("a panic");
    assert_eq!(panic.message(), "boom 1");
    assert!(
        panic.process_name().ends_with("/quiet-0"),
        "{}",
        panic.process_name()
    );
    assert_eq!(panic.pid(), std::process::id());
    // The thread goes on.
    assert_eq!(pool.apply(|| 5).unwrap(), 5);
    let err = pool
        .map(|x: u32| if x == 13 { panic!("unlucky") } else { x }, 0..30)
        .unwrap_err();
    assert_eq!(err.panic().unwrap().message(), "unlucky");
    let got: Vec<_> = pool
        .imap(|x: u32| if x == 2 { panic!("two") } else { x }, 0..4)
        .collect();
    assert_eq!(got[0], Ok(0));
    assert_eq!(
        got[2].as_ref().unwrap_err().panic().unwrap().message(),
        "two"
    );
    assert_eq!(got[3], Ok(3));
    pool.join_timeout(T).unwrap();
}

#[test]
fn cancel_queued_not_running() {
    let pool = ThreadPool::new(1).unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let running = pool
        .submit(move || {
            started_tx.send(()).unwrap();
            go_rx.recv_timeout(T).unwrap();
            1
        })
        .unwrap();
    started_rx.recv_timeout(T).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let ran = Arc::clone(&ran);
            pool.submit(move || ran.fetch_add(1, Ordering::SeqCst))
                .unwrap()
        })
        .collect();
    for t in &queued {
        assert!(t.cancel());
        assert!(t.is_done());
        assert!(!t.cancel());
    }
    // A running task cannot be stopped on a thread.
    assert!(!running.cancel());
    go_tx.send(()).unwrap();
    assert_eq!(get(running).unwrap(), 1);
    for t in queued {
        assert_eq!(get(t).unwrap_err(), TaskError::Cancelled);
    }
    pool.join_timeout(T).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a cancelled task ran");
}

#[test]
fn endless_imap_for_1000_items() {
    let pool = ThreadPool::new(2).unwrap();
    let got: Vec<u64> = pool
        .imap(|x: u64| x * 2, 0u64..)
        .take(1000)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..1000u64).map(|x| x * 2).collect::<Vec<_>>());
    let seen: HashSet<u64> = pool
        .imap_unordered(|x: u64| x, 0u64..)
        .take(1000)
        .map(Result::unwrap)
        .collect();
    assert_eq!(seen.len(), 1000);
    // Bounded work in flight: the input is pulled only as far as needed.
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&pulled);
    let input = (0u64..).inspect(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    });
    let first: Vec<u64> = pool
        .imap(|x: u64| x, input)
        .take(10)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, (0..10).collect::<Vec<_>>());
    assert!(
        pulled.load(Ordering::SeqCst) < 100,
        "{}",
        pulled.load(Ordering::SeqCst)
    );
    pool.join_timeout(T).unwrap();
}

#[test]
fn tasks_awaited_in_tokio() {
    let pool = ThreadPool::new(2).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..10u64)
            .map(|x| {
                pool.submit(move || {
                    std::thread::sleep(Duration::from_millis(5));
                    x + 1
                })
                .unwrap()
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += tokio::time::timeout(T, t).await.unwrap().unwrap();
        }
        assert_eq!(sum, 55);
    });
    pool.join_timeout(T).unwrap();
}

/// A map called before `close` runs whole, as in Python and as the process pool's does,
/// even when its items come only after the close (a map counted chunk by chunk failed
/// with `PoolClosed` at its first chunk queued after the close, its earlier chunks run
/// and their results lost); the pool finishes after it. For `map` (which collects its
/// items first), `map_chunked` (which takes them as it queues them) and `map_timeout`.
#[test]
fn a_map_whose_items_come_after_close_ends() {
    for way in ["map", "map_chunked", "map_timeout"] {
        let pool = ThreadPool::new(2).unwrap();
        let (started_tx, started_rx) = mpsc::channel();
        let (closed_tx, closed_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let pool = &pool;
            let mapping = s.spawn(move || {
                // The items after the tenth wait until the pool is closed: a filter, so
                // that no length is known ahead.
                let items = (0..100u64).filter(move |&x| {
                    if x == 10 {
                        started_tx.send(()).unwrap();
                        closed_rx.recv_timeout(T).unwrap();
                    }
                    true
                });
                match way {
                    "map_chunked" => pool.map_chunked(|x: u64| x * x, items, 3),
                    "map_timeout" => pool.map_timeout(|x: u64| x * x, items, T),
                    _ => pool.map(|x: u64| x * x, items),
                }
            });
            started_rx.recv_timeout(T).expect("the map did not start");
            pool.close();
            assert_eq!(pool.submit(|| 0).unwrap_err(), TaskError::PoolClosed);
            closed_tx.send(()).unwrap();
            let joined = pool.join_timeout(T);
            let expected: Vec<u64> = (0..100).map(|x| x * x).collect();
            assert_eq!(mapping.join().unwrap(), Ok(expected), "{way}");
            joined.expect("the pool did not finish after the map");
        });
    }
}

#[test]
fn close_terminate_and_drop() {
    let e = ThreadPool::new(0).unwrap_err();
    assert!(matches!(e, PoolError::InvalidArgument(_)), "{e}");
    // No thread can have a name with a NUL in it: refused, not a panic.
    let e = ThreadPool::builder()
        .threads(1)
        .name("a\0b")
        .build()
        .unwrap_err();
    assert!(matches!(e, PoolError::InvalidArgument(_)), "{e}");

    // close: queued tasks still run; new ones are refused.
    let pool = ThreadPool::new(1).unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            pool.submit(move || {
                std::thread::sleep(Duration::from_millis(10));
                i
            })
            .unwrap()
        })
        .collect();
    pool.close();
    assert_eq!(pool.submit(|| 0).unwrap_err(), TaskError::PoolClosed);
    assert_eq!(
        pool.map(|x: u32| x, 0..3).unwrap_err(),
        TaskError::PoolClosed
    );
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(get(t).unwrap(), i);
    }
    pool.join_timeout(T).unwrap();

    // terminate: queued tasks fail; the running one finishes.
    let pool = ThreadPool::new(1).unwrap();
    let gate = Arc::new(Barrier::new(2));
    let g = Arc::clone(&gate);
    let running = pool
        .submit(move || {
            g.wait();
            std::thread::sleep(Duration::from_millis(50));
            "done"
        })
        .unwrap();
    let queued: Vec<_> = (0..3).map(|_| pool.submit(|| "never").unwrap()).collect();
    gate.wait();
    pool.terminate();
    for t in queued {
        assert_eq!(get(t).unwrap_err(), TaskError::PoolClosed);
    }
    assert_eq!(get(running).unwrap(), "done");
    assert_eq!(pool.submit(|| 0).unwrap_err(), TaskError::PoolClosed);
    pool.join_timeout(T).unwrap();

    // drop: waits for the running task, fails the queued ones.
    let pool = ThreadPool::new(1).unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&finished);
    let gate = Arc::new(Barrier::new(2));
    let g = Arc::clone(&gate);
    let _running = pool
        .submit(move || {
            g.wait();
            std::thread::sleep(Duration::from_millis(50));
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let queued = pool.submit(|| ()).unwrap();
    gate.wait();
    drop(pool);
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert_eq!(get(queued).unwrap_err(), TaskError::PoolClosed);
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// A pool dropped by one of its own tasks (which held the last handle), or joined
/// from one: the task finishes (its `Drop` and `join` waited for the calling thread
/// itself, for ever), and the pool's threads still end.
#[test]
fn a_pool_dropped_or_joined_by_its_own_task() {
    let pool = Arc::new(
        ThreadPool::builder()
            .threads(2)
            .name("selfdrop")
            .build()
            .unwrap(),
    );
    // A thread names itself once it runs: wait until both are seen.
    let until = Instant::now() + T;
    while threads_named("selfdrop") < 2 {
        assert!(Instant::now() < until, "the pool's threads are not seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    let last = Arc::clone(&pool);
    let (go, ready) = mpsc::channel::<()>();
    let task = pool
        .submit(move || {
            // Once this process's handle is gone: the task's is the last.
            ready.recv_timeout(T).unwrap();
            drop(last);
            "dropped"
        })
        .unwrap();
    drop(pool);
    go.send(()).unwrap();
    assert_eq!(get(task).unwrap(), "dropped");
    let until = Instant::now() + T;
    while threads_named("selfdrop") > 0 {
        assert!(Instant::now() < until, "the pool's threads did not end");
        std::thread::sleep(Duration::from_millis(5));
    }

    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let p = Arc::clone(&pool);
    let task = pool
        .submit(move || {
            let timed = p.join_timeout(Duration::from_secs(1));
            p.join();
            timed
        })
        .unwrap();
    let timed = get(task).unwrap();
    assert!(
        matches!(timed, Err(PoolError::InvalidArgument(_))),
        "{timed:?}"
    );
    assert_eq!(pool.submit(|| 0).unwrap_err(), TaskError::PoolClosed);
    pool.join_timeout(T).unwrap();
}

/// `Duration::MAX` as a timeout is no timeout and as a retry delay waits "for ever"
/// (both panicked a pool thread, and waits for the task hung); `shutdown` with
/// `cancel_pending` cancels the tasks waiting for a countdown or a retry, at once.
#[test]
fn duration_max_and_shutdown_cancels_waiting_tasks() {
    let pool = ThreadPool::new(1).unwrap();
    let t = pool
        .submit_with(|| 7, TaskOptions::new().timeout(Duration::MAX))
        .unwrap();
    assert_eq!(get(t).unwrap(), 7);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let retried = pool
        .submit_fallible_with(
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                Err::<u32, String>("not yet".into())
            },
            TaskOptions::new().retry(RetryPolicy::attempts(2).backoff(
                Duration::MAX,
                1.0,
                Duration::MAX,
            )),
        )
        .unwrap();
    let counting_down = pool
        .submit_with(|| 1, TaskOptions::new().countdown(Duration::from_secs(30)))
        .unwrap();
    // The first attempt has run and failed, and its retry waits.
    let t0 = Instant::now();
    while runs.load(Ordering::SeqCst) == 0 && t0.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let t0 = Instant::now();
    pool.shutdown(true, true);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(get(counting_down).unwrap_err(), TaskError::Cancelled);
    assert_eq!(get(retried).unwrap_err(), TaskError::Cancelled);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A task cancelled while it waits for its countdown or for a retry is done: `join`
/// returns at once rather than when its time would have come.
#[test]
fn cancelled_waiting_tasks_do_not_hold_join() {
    let pool = ThreadPool::new(1).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let (ran_tx, ran_rx) = mpsc::channel::<()>();
    let mut retried = pool
        .submit_fallible_with(
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                let _ = ran_tx.send(());
                Err::<u32, String>("not yet".into())
            },
            TaskOptions::new().retry(RetryPolicy::attempts(2).backoff(
                Duration::from_secs(3600),
                1.0,
                Duration::from_secs(3600),
            )),
        )
        .unwrap();
    let mut counting_down = pool
        .submit_with(
            || 1,
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    // The first attempt has run (and fails as it returns; a cancel while it still runs
    // would be refused, so the test waits for the run's end before cancelling).
    ran_rx.recv_timeout(T).expect("the first attempt ran");
    let t0 = Instant::now();
    while retried.is_running() && t0.elapsed() < T {
        std::thread::yield_now();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(counting_down.cancel());
    assert!(retried.cancel());
    let t0 = Instant::now();
    pool.join_timeout(Duration::from_secs(10))
        .expect("join with only cancelled tasks left");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(
        counting_down.wait_timeout(T).unwrap_err(),
        TaskError::Cancelled
    );
    assert_eq!(retried.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A cancelled countdown task's callback may join the pool (it runs on the thread that
/// cancels): the join waited for the very task it ran for, and the cancel never
/// returned.
#[test]
fn a_cancelled_tasks_callback_may_join_the_pool() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let waiting = pool
        .submit_with(
            || 1,
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let p = Arc::clone(&pool);
    waiting.on_done(move |outcome| {
        let t0 = Instant::now();
        let joined = p.join_timeout(Duration::from_secs(10));
        let _ = tx.send((outcome.clone(), joined, t0.elapsed()));
    });
    assert!(waiting.cancel());
    let (outcome, joined, took) = rx.recv_timeout(T).unwrap();
    assert_eq!(outcome, Err(TaskError::Cancelled));
    assert!(joined.is_ok(), "{joined:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The callbacks of a queued task and of a task waiting for its countdown, both of
/// which a shutdown cancels, may join the pool, while the task that runs waits for the
/// queued one's callback. Cancelled queued-first, the join in the queued task's
/// callback waited for the countdown (an hour); waiting-first, the join in the waiting
/// task's callback waited for the running task, which waited for the queued task that
/// only the blocked thread would cancel (for ever).
#[test]
fn callbacks_of_queued_and_waiting_tasks_a_shutdown_cancels_may_join() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let busy = pool
        .submit(move || {
            started_tx.send(()).unwrap();
            release_rx.recv_timeout(T).is_ok()
        })
        .unwrap();
    started_rx.recv_timeout(T).unwrap();
    // The pool's one thread is busy: this one stays queued until the shutdown.
    let queued = pool.submit(|| 1).unwrap();
    let waiting = pool
        .submit_with(
            || 2,
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let join_then_say =
        |p: Arc<ThreadPool>, tx: mpsc::Sender<_>, release: Option<mpsc::Sender<()>>| {
            move |outcome: &Result<u32, TaskError>| {
                // What the joins wait for: the busy task ends once the queued task is done.
                if let Some(release) = release {
                    release.send(()).unwrap();
                }
                let t0 = Instant::now();
                let joined = p.join_timeout(Duration::from_secs(10));
                let _ = tx.send((outcome.clone(), joined, t0.elapsed()));
            }
        };
    queued.on_done(join_then_say(
        Arc::clone(&pool),
        tx.clone(),
        Some(release_tx),
    ));
    waiting.on_done(join_then_say(Arc::clone(&pool), tx, None));
    pool.shutdown(false, true);
    for _ in 0..2 {
        let (outcome, joined, took) = rx.recv_timeout(T).unwrap();
        assert_eq!(outcome, Err(TaskError::Cancelled));
        assert!(joined.is_ok(), "{joined:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    assert_eq!(get(queued).unwrap_err(), TaskError::Cancelled);
    assert_eq!(get(waiting).unwrap_err(), TaskError::Cancelled);
    assert!(get(busy).unwrap());
}

/// The callback of a queued task that a shutdown cancels may join the pool while the
/// task that runs waits for a task queued after it: the join cancels that one, and the
/// running task sees it cancelled. The join used to wait for the running task, which
/// waited for the later task, which only the thread in the callback would cancel: for
/// as long as the running task's own wait lasted (for ever without a timeout).
#[test]
fn a_join_in_a_cancelled_callback_cancels_the_tasks_still_queued() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let (later_tx, later_rx) = mpsc::channel::<Task<u32>>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let running = pool
        .submit(move || {
            started_tx.send(()).unwrap();
            let mut later = later_rx.recv_timeout(T).unwrap();
            later.wait_timeout(Duration::from_secs(10))
        })
        .unwrap();
    started_rx.recv_timeout(T).unwrap();
    // The pool's one thread is busy: both stay queued until the shutdown, the first
    // cancelled first.
    let first = pool.submit(|| 1).unwrap();
    let later = pool.submit(|| 2).unwrap();
    let (tx, rx) = mpsc::channel();
    let joining = Arc::clone(&pool);
    first.on_done(move |outcome| {
        let t0 = Instant::now();
        let joined = joining.join_timeout(Duration::from_secs(20));
        let _ = tx.send((outcome.clone(), joined, t0.elapsed()));
    });
    let (later_seen_tx, later_seen) = mpsc::channel();
    later.on_done(move |outcome| {
        let _ = later_seen_tx.send(outcome.clone());
    });
    later_tx.send(later).unwrap();
    pool.shutdown(false, true);
    let (outcome, joined, took) = rx.recv_timeout(T).unwrap();
    assert_eq!(outcome, Err(TaskError::Cancelled));
    assert!(joined.is_ok(), "{joined:?}");
    assert_eq!(
        later_seen.recv_timeout(T).unwrap(),
        Err(TaskError::Cancelled)
    );
    assert_eq!(
        get(running).unwrap(),
        Err(TaskError::Cancelled),
        "what the running task saw of the later one"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(get(first).unwrap_err(), TaskError::Cancelled);
}

/// A task counts as done while its done-callbacks run, as a Python future is finished
/// before its callbacks are called: a callback that asks whether every task of a set
/// is done, or waits for the set, finds its own task done (it found it not done, and a
/// wait over the set waited for itself for ever). Its value still waits for the
/// callbacks.
#[test]
fn a_task_is_done_while_its_callbacks_run() {
    let pool = ThreadPool::new(2).unwrap();
    let tasks = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let task = pool
        .submit(move || {
            go_rx.recv().unwrap();
            7
        })
        .unwrap();
    let all = Arc::clone(&tasks);
    task.on_done(move |outcome| {
        let all = all.lock().unwrap();
        let each_done = all.iter().all(Task::is_done);
        let (done, not_done) = multiproc::wait_tasks(
            &all,
            multiproc::Return::AllCompleted,
            Some(Duration::from_secs(5)),
        );
        let _ = tx.send((outcome.clone(), each_done, done, not_done));
    });
    tasks.lock().unwrap().push(task);
    go_tx.send(()).unwrap();
    let (outcome, each_done, done, not_done) = rx.recv_timeout(T).unwrap();
    assert_eq!(outcome, Ok(7));
    assert!(each_done, "the task was not done in its own callback");
    assert_eq!((done, not_done), (vec![0], vec![]));
    let mut task = tasks.lock().unwrap().pop().unwrap();
    assert_eq!(task.wait_timeout(T), Ok(7));
    pool.join_timeout(T).unwrap();
}

/// `as_completed` yields a task once its value can be taken: a task whose
/// done-callbacks still run on another thread (they have its value until they return)
/// comes after one finished later whose value is free, and a step with a timeout keeps
/// it meanwhile (it waited for the callbacks).
#[test]
fn as_completed_yields_values_free_of_callbacks_first() {
    let pool = ThreadPool::new(2).unwrap();
    let (inside_tx, inside_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let held = pool
        .submit(move || {
            go_rx.recv().unwrap();
            5
        })
        .unwrap();
    held.on_done(move |_| {
        let _ = inside_tx.send(());
        std::thread::sleep(Duration::from_secs(2));
    });
    go_tx.send(()).unwrap();
    inside_rx.recv_timeout(T).unwrap();
    let free = pool.submit(|| 6).unwrap();
    let mut steps = multiproc::as_completed(vec![held, free]);
    let t0 = Instant::now();
    assert_eq!(steps.next_timeout(T).unwrap(), Some((1, Ok(6))));
    assert_eq!(
        steps.next_timeout(Duration::from_millis(200)).unwrap_err(),
        TaskError::Timeout
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(steps.remaining(), 1);
    assert_eq!(steps.next_timeout(T).unwrap(), Some((0, Ok(5))));
    assert!(steps.next_timeout(T).unwrap().is_none());
    pool.join_timeout(T).unwrap();
}

/// Cancels `task` on a thread of its own, its callback working 300 ms; once the
/// callback has begun, runs `meanwhile`, then joins `pool`, which must return only
/// after the callback.
fn join_while_a_cancels_callback_runs(
    pool: &ThreadPool,
    task: Task<i32>,
    meanwhile: impl FnOnce(),
) {
    let called = Arc::new(AtomicUsize::new(0));
    let (inside_tx, inside_rx) = mpsc::channel();
    let c = Arc::clone(&called);
    task.on_done(move |_| {
        let _ = inside_tx.send(());
        std::thread::sleep(Duration::from_millis(300));
        c.fetch_add(1, Ordering::SeqCst);
    });
    std::thread::scope(|s| {
        let cancelling = s.spawn(|| task.cancel());
        inside_rx.recv_timeout(T).unwrap();
        meanwhile();
        pool.join_timeout(T).unwrap();
        assert_eq!(called.load(Ordering::SeqCst), 1, "join returned first");
        assert!(cancelling.join().unwrap());
    });
}

/// A join on another thread waits for a cancelled task's callbacks, which run on the
/// thread that cancels: "every task has finished" holds when it returns.
#[test]
fn join_waits_for_a_cancelled_tasks_callbacks() {
    let pool = ThreadPool::new(1).unwrap();
    let waiting = pool
        .submit_with(
            || 1,
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    join_while_a_cancels_callback_runs(&pool, waiting, || {});
}

/// As above, for a task cancelled while it is queued behind a busy thread: the thread
/// that dequeues it after the cancel does not let it go in the cancel's stead (the join
/// returned while the cancel's callbacks ran).
#[test]
fn join_waits_for_the_callbacks_of_a_task_cancelled_in_the_queue() {
    cancelled_in_the_queue(|pool| pool.submit_with(|| 1, TaskOptions::new()).unwrap());
}

/// As above, for a task of plain `submit`: only tasks of `submit_with` were counted
/// until their callbacks were done, and the join returned while the cancel's ran.
#[test]
fn join_waits_for_the_callbacks_of_a_plain_task_cancelled_in_the_queue() {
    cancelled_in_the_queue(|pool| pool.submit(|| 1).unwrap());
}

/// Queues the task `queue` makes behind a busy thread of a one-thread pool, cancels it
/// and joins (see [`join_while_a_cancels_callback_runs`]).
fn cancelled_in_the_queue(queue: impl FnOnce(&ThreadPool) -> Task<i32>) {
    let pool = ThreadPool::new(1).unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let busy = pool
        .submit(move || {
            let _ = release_rx.recv_timeout(T);
        })
        .unwrap();
    let queued = queue(&pool);
    join_while_a_cancels_callback_runs(&pool, queued, || {
        // The thread dequeues the cancelled task while its callback runs.
        release_tx.send(()).unwrap();
        get(busy).unwrap();
    });
}

/// `join_timeout` keeps to its timeout while a timed-out task's callback still runs
/// (the pool's threads had exited, and the wait for the thread delivering the timeout
/// had no limit: it returned `Ok` once the callback was over).
#[test]
fn join_timeout_keeps_to_its_timeout_while_a_timed_out_tasks_callback_runs() {
    let pool = ThreadPool::new(1).unwrap();
    // The thread kept busy until the callback is in place: its timeout runs from its start.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let busy = pool
        .submit(move || {
            let _ = go_rx.recv_timeout(T);
        })
        .unwrap();
    // The closure returns once the timeout's callback has begun, however late the
    // timeout comes.
    let (timed_out_tx, timed_out_rx) = mpsc::channel::<()>();
    let (returning_tx, returning_rx) = mpsc::channel::<()>();
    let task = pool
        .submit_with(
            move || {
                let _ = timed_out_rx.recv_timeout(T);
                let _ = returning_tx.send(());
            },
            TaskOptions::new().timeout(Duration::from_millis(10)),
        )
        .unwrap();
    let (inside_tx, inside_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    task.on_done(move |_| {
        let _ = timed_out_tx.send(());
        let _ = inside_tx.send(());
        let _ = release_rx.recv_timeout(T);
    });
    go_tx.send(()).unwrap();
    get(busy).unwrap();
    inside_rx.recv_timeout(T).unwrap();
    // The closure returns (its thread goes idle) while the callback still runs.
    returning_rx.recv_timeout(T).unwrap();
    let t0 = Instant::now();
    let first = pool.join_timeout(Duration::from_millis(200));
    let took = t0.elapsed();
    // Terminated, the pool's own threads exit at once: the delivering thread is still
    // waited for, and within the timeout.
    pool.terminate();
    let t1 = Instant::now();
    let second = pool.join_timeout(Duration::from_millis(200));
    let took_terminated = t1.elapsed();
    release_tx.send(()).unwrap();
    pool.join_timeout(T).unwrap();
    assert!(matches!(first, Err(PoolError::Timeout)), "{first:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(matches!(second, Err(PoolError::Timeout)), "{second:?}");
    assert!(
        took_terminated < Duration::from_secs(2),
        "{took_terminated:?}"
    );
    assert_eq!(get(task), Err(TaskError::TimedOut));
}

/// More threads than the system allows are refused at once (`Vec::with_capacity`
/// panicked, "capacity overflow").
#[test]
fn too_many_threads_are_refused() {
    for threads in [usize::MAX, usize::MAX / 2] {
        match ThreadPool::new(threads) {
            Err(PoolError::InvalidArgument(why)) => assert!(why.contains("threads-max"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn join_timeout_reports_busy_pool() {
    let pool = ThreadPool::new(1).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let t = pool.submit(move || rx.recv_timeout(T).is_ok()).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        pool.join_timeout(Duration::from_millis(100)),
        Err(PoolError::Timeout)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(100));
    tx.send(()).unwrap();
    assert!(get(t).unwrap());
    pool.join_timeout(T).unwrap();
}

#[test]
fn initializer_runs_once_per_thread() {
    let names = Arc::new(Mutex::new(Vec::new()));
    let n = Arc::clone(&names);
    let pool = ThreadPool::builder()
        .threads(3)
        .name("init")
        .initializer(move || {
            let name = std::thread::current().name().unwrap().to_owned();
            n.lock().unwrap().push(name);
        })
        .build()
        .unwrap();
    assert_eq!(pool.map(|x: u32| x, 0..100).unwrap().len(), 100);
    pool.join_timeout(T).unwrap();
    let mut names = names.lock().unwrap().clone();
    names.sort();
    assert_eq!(names, ["init-0", "init-1", "init-2"]);
}

#[test]
fn failing_initializer_breaks_pool() {
    quiet_panics();
    let pool = ThreadPool::builder()
        .threads(2)
        .name("quiet-init")
        .initializer(|| panic!("no config"))
        .build()
        .unwrap();
    // Whether a task is queued before or after the threads fail, it fails.
    let task = pool.submit(|| 1);
    let err = match task {
        Ok(t) => get(t).unwrap_err(),
        Err(e) => e,
    };
    assert!(
        matches!(&err, TaskError::PoolBroken(why) if why.contains("no config")),
        "{err:?}"
    );
    // Once its threads are gone, the pool says why.
    pool.join_timeout(T).unwrap();
    assert!(matches!(pool.submit(|| 1), Err(TaskError::PoolBroken(_))));
}

/// A failed initializer fails the tasks waiting for a countdown (or a retry) too, at
/// once: they waited out their time and failed only then, while `join` had returned
/// (Python's executor fails every pending item as its initializer fails).
#[test]
fn failing_initializer_fails_the_delayed_tasks_too() {
    quiet_panics();
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let pool = ThreadPool::builder()
        .threads(1)
        .name("quiet-init-later")
        .initializer(move || {
            let _ = rx.lock().unwrap().recv_timeout(T);
            panic!("no config")
        })
        .build()
        .unwrap();
    let hour = TaskOptions::new().countdown(Duration::from_secs(3600));
    let mut later = pool.submit_with(|| 1, hour).unwrap();
    tx.send(()).unwrap();
    pool.join_timeout(T).unwrap();
    let got = later.wait_timeout(Duration::from_secs(5));
    assert!(
        matches!(&got, Err(TaskError::PoolBroken(why)) if why.contains("no config")),
        "{got:?}"
    );
}

/// A value whose `Drop` panics.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("bomb")
    }
}

/// A pool of one thread named `name` (its panics kept quiet), held by a task that
/// waits for a message on the sender: tasks submitted meanwhile stay queued.
fn held_pool(name: &str) -> (ThreadPool, mpsc::Sender<()>, Task<()>) {
    quiet_panics();
    let pool = ThreadPool::builder().threads(1).name(name).build().unwrap();
    let (go, wait) = mpsc::channel::<()>();
    let gate = pool.submit(move || wait.recv_timeout(T).unwrap()).unwrap();
    (pool, go, gate)
}

/// `pool` runs a new task, and joins.
fn still_serves(pool: ThreadPool) {
    let mut next = pool.submit(|| 7).unwrap();
    let got = next.wait_timeout(Duration::from_secs(10));
    let joined = pool.join_timeout(Duration::from_secs(10));
    if joined.is_err() {
        // Its drop would wait for ever.
        std::mem::forget(pool);
    }
    assert_eq!(got, Ok(7));
    assert!(joined.is_ok(), "{joined:?}");
}

/// The closure of a task cancelled while queued is dropped by the pool thread that
/// takes the job off the queue: a `Drop` of what it captured that panics there is the
/// thread's, outside the task's own code. It ended the thread, which the pool still
/// counted, so later tasks never ran and `join` waited for ever.
#[test]
fn a_panicking_drop_of_a_cancelled_closure_keeps_the_pool() {
    let (pool, go, gate) = held_pool("quiet-cancelled-bomb");
    let bomb = Bomb;
    let queued = pool
        .submit(move || {
            let _keep = &bomb;
        })
        .unwrap();
    assert!(queued.cancel(), "a queued task is cancelled");
    go.send(()).unwrap();
    get(gate).unwrap();
    still_serves(pool);
}

/// A result nobody waits for any more (its `Task` dropped) whose `Drop` panics: the
/// panic is the pool thread's, outside the task's own code. It ended the thread, which
/// the pool still counted, so later tasks never ran and `join` and the pool's drop
/// waited for ever.
#[test]
fn a_panicking_drop_of_an_unclaimed_result_keeps_the_pool() {
    let (pool, go, gate) = held_pool("quiet-bomb");
    drop(pool.submit(|| Bomb).unwrap());
    go.send(()).unwrap();
    get(gate).unwrap();
    still_serves(pool);
}

#[cfg(feature = "progress")]
#[test]
fn map_with_progress_bar() {
    let pool = ThreadPool::new(2).unwrap();
    let got = pool.map_with_progress(|x: u64| x + 1, 0..500).unwrap();
    assert_eq!(got, (1..501).collect::<Vec<_>>());
    pool.join_timeout(T).unwrap();
}

/// A timed-out task's done-callback may wait for another task of the pool that starts
/// on a timer (a countdown): the callback ran on the pool's one timer thread, which
/// that start waited for, and neither ever went on.
#[test]
fn a_timed_out_tasks_callback_may_wait_for_a_countdown_task() {
    let pool = ThreadPool::new(4).unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let slow = pool
        .submit_with(
            move || {
                let _ = release_rx.recv_timeout(T);
            },
            TaskOptions::new().timeout(Duration::from_millis(10)),
        )
        .unwrap();
    let mut later = pool
        .submit_with(
            || 7,
            TaskOptions::new().countdown(Duration::from_millis(200)),
        )
        .unwrap();
    let (tx, rx) = mpsc::channel();
    slow.on_done(move |outcome| {
        let timed_out = matches!(outcome, Err(TaskError::TimedOut));
        let _ = tx.send((timed_out, later.wait_timeout(T)));
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    drop(release_tx);
    assert_eq!(got, Ok((true, Ok(7))));
    pool.join_timeout(T).unwrap();
}

/// `terminate` leaves the timeouts of running tasks in force, and fails a task waiting
/// for its countdown at once, and one given a countdown later (by a retry) as it comes:
/// the timeouts were turned off, and the wait for a hung task never returned.
#[test]
fn terminate_keeps_the_timeouts_of_running_tasks() {
    let pool = ThreadPool::new(2).unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let started = started_tx.clone();
    let mut hung = pool
        .submit_with(
            move || {
                started.send(()).unwrap();
                let _ = release_rx.recv_timeout(T);
            },
            TaskOptions::new().timeout(Duration::from_millis(300)),
        )
        .unwrap();
    let hour = Duration::from_secs(3600);
    let failing = pool
        .submit_fallible_with(
            move || {
                let _ = started_tx.send(());
                std::thread::sleep(Duration::from_millis(100));
                Err::<u32, String>("again".into())
            },
            TaskOptions::new().retry(RetryPolicy::attempts(2).backoff(hour, 1.0, hour)),
        )
        .unwrap();
    let mut delayed = pool
        .submit_with(|| 7, TaskOptions::new().countdown(hour))
        .unwrap();
    for _ in 0..2 {
        started_rx.recv_timeout(T).unwrap();
    }
    pool.terminate();
    assert_eq!(
        delayed.wait_timeout(Duration::from_secs(5)),
        Err(TaskError::PoolClosed)
    );
    let t = Instant::now();
    let timed_out = hung.wait_timeout(Duration::from_secs(5));
    let failed = get(failing);
    drop(release_tx);
    assert_eq!(timed_out, Err(TaskError::TimedOut));
    // The task's own timeout, and nothing was killed (it said "the pool's task
    // timeout; its worker was killed").
    let said = timed_out.unwrap_err().to_string();
    assert!(
        !said.contains("pool's") && !said.contains("killed"),
        "{said}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(failed, Err(TaskError::PoolClosed));
    pool.join_timeout(T).unwrap();
}

/// A cancelled countdown task lets go of its closure (and what it captured) at the
/// cancel, not at its time: it was kept in the timers until then (an hour here).
#[test]
fn a_cancelled_countdown_task_lets_go_of_its_closure() {
    let pool = ThreadPool::new(2).unwrap();
    let guard = Arc::new(());
    let held = Arc::clone(&guard);
    let task = pool
        .submit_with(
            move || {
                let _ = &held;
                1
            },
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    assert!(task.cancel());
    drop(task);
    assert_eq!(Arc::strong_count(&guard), 1, "the closure is still held");
    pool.join_timeout(T).unwrap();
}

/// `join` returns once a timed-out task's done-callbacks have run too (they run on a
/// thread of their own, off the pool's timer thread).
#[test]
fn join_waits_for_a_timed_out_tasks_callbacks() {
    let pool = ThreadPool::new(2).unwrap();
    let task = pool
        .submit_with(
            || std::thread::sleep(Duration::from_millis(100)),
            TaskOptions::new().timeout(Duration::from_millis(10)),
        )
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&ran);
    task.on_done(move |outcome| {
        std::thread::sleep(Duration::from_millis(300));
        if matches!(outcome, Err(TaskError::TimedOut)) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    pool.join_timeout(T).unwrap();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "join returned before the callback ran"
    );
}
