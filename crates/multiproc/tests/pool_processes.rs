//! The process pool with real worker processes, including the ugly paths: workers that
//! segfault, abort, exit or are SIGKILLed mid-task, tasks that hang past their timeout,
//! panics, cancellation, a parent SIGKILLed with its pool, and arguments or results that
//! do not encode. After each test no worker is left.
#![allow(unsafe_code)] // workers segfault on purpose

mod common;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{Chain, Helper, Unserializable, trial};
use multiproc::{
    Array, Event, OwnerDied, Pool, PoolError, RetryPolicy, Signal, StartMethod, Task, TaskError,
    Value,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const T: Duration = Duration::from_secs(60);

fn main() {
    common::main_checked(
        vec![
            trial(
                "map_in_order_with_any_chunking",
                map_in_order_with_any_chunking,
            ),
            trial(
                "outcomes_are_routed_during_and_after_maps",
                outcomes_are_routed_during_and_after_maps,
            ),
            trial(
                "a_join_in_a_callback_run_inside_a_map_does_not_wait_for_it",
                a_join_in_a_callback_run_inside_a_map_does_not_wait_for_it,
            ),
            trial(
                "a_callback_waits_for_a_task_of_its_own_batch",
                a_callback_waits_for_a_task_of_its_own_batch,
            ),
            trial(
                "a_map_called_before_close_ends",
                a_map_called_before_close_ends,
            ),
            trial(
                "a_map_whose_iterator_gives_its_items_after_close_ends",
                a_map_whose_iterator_gives_its_items_after_close_ends,
            ),
            trial("submit_apply_and_initializer", submit_apply_and_initializer),
            trial(
                "a_map_fails_with_its_first_panic_in_item_order",
                a_map_fails_with_its_first_panic_in_item_order,
            ),
            trial(
                "a_panic_payload_that_panics_when_dropped_fails_its_task_only",
                a_panic_payload_that_panics_when_dropped_fails_its_task_only,
            ),
            trial(
                "a_panicking_drop_of_an_unclaimed_result_keeps_the_pool",
                a_panicking_drop_of_an_unclaimed_result_keeps_the_pool,
            ),
            trial(
                "a_result_whose_decode_panics_fails_its_task_only",
                a_result_whose_decode_panics_fails_its_task_only,
            ),
            trial(
                "endless_retry_delays_and_countdowns_and_too_many_workers",
                endless_retry_delays_and_countdowns_and_too_many_workers,
            ),
            trial(
                "children_of_workers_die_with_the_pool",
                children_of_workers_die_with_the_pool,
            ),
            trial("crashes_fail_only_their_task", crashes_fail_only_their_task),
            trial(
                "ctrl_c_is_left_to_the_pools_owner",
                ctrl_c_is_left_to_the_pools_owner,
            ),
            trial(
                "tasks_queued_behind_many_crashes_run",
                tasks_queued_behind_many_crashes_run,
            ),
            trial(
                "a_worker_stopped_holding_the_results_lock_is_killed",
                a_worker_stopped_holding_the_results_lock_is_killed,
            ),
            trial(
                "a_stopped_or_starting_worker_holds_no_tasks",
                a_stopped_or_starting_worker_holds_no_tasks,
            ),
            trial(
                "retry_policy_reruns_failed_tasks",
                retry_policy_reruns_failed_tasks,
            ),
            trial(
                "task_timeout_kills_and_replaces",
                task_timeout_kills_and_replaces,
            ),
            trial(
                "a_chunks_decoding_and_encoding_are_not_its_items_time",
                a_chunks_decoding_and_encoding_are_not_its_items_time,
            ),
            trial(
                "a_context_drop_a_full_job_channel_refused_goes_later",
                a_context_drop_a_full_job_channel_refused_goes_later,
            ),
            trial(
                "a_task_times_out_while_lost_workers_start_again",
                a_task_times_out_while_lost_workers_start_again,
            ),
            trial(
                "a_short_task_timeout_is_kept_by_an_idle_pool",
                a_short_task_timeout_is_kept_by_an_idle_pool,
            ),
            trial(
                "panic_fails_task_worker_survives",
                panic_fails_task_worker_survives,
            ),
            trial("max_tasks_per_child_recycles", max_tasks_per_child_recycles),
            trial(
                "a_child_forked_after_the_pool_does_not_hold_its_retired_workers",
                a_child_forked_after_the_pool_does_not_hold_its_retired_workers,
            ),
            trial(
                "oversized_shapes_fail_the_task",
                oversized_shapes_fail_the_task,
            ),
            trial(
                "a_result_that_cannot_be_sent_fails_its_task",
                a_result_that_cannot_be_sent_fails_its_task,
            ),
            trial(
                "a_result_waits_for_a_free_descriptor",
                a_result_waits_for_a_free_descriptor,
            ),
            trial(
                "a_result_waits_for_address_space",
                a_result_waits_for_address_space,
            ),
            trial(
                "short_tasks_do_not_wait_behind_long_ones",
                short_tasks_do_not_wait_behind_long_ones,
            ),
            trial("cancel_queued_and_running", cancel_queued_and_running),
            trial(
                "cancel_as_a_task_ends_spares_the_next",
                cancel_as_a_task_ends_spares_the_next,
            ),
            trial(
                "a_new_workers_ready_report_is_not_lost",
                a_new_workers_ready_report_is_not_lost,
            ),
            trial(
                "a_submit_and_a_wait_keep_their_time_while_a_worker_is_replaced",
                a_submit_and_a_wait_keep_their_time_while_a_worker_is_replaced,
            ),
            trial(
                "parent_sigkilled_takes_workers_along",
                parent_sigkilled_takes_workers_along,
            ),
            trial(
                "ten_thousand_tasks_twenty_killed_workers",
                ten_thousand_tasks_twenty_killed_workers,
            ),
            trial("endless_imap_for_1000_items", endless_imap_for_1000_items),
            trial(
                "a_dropped_imap_runs_no_more_items",
                a_dropped_imap_runs_no_more_items,
            ),
            trial(
                "an_imap_whose_input_panicked_yields_what_it_had_then_ends",
                an_imap_whose_input_panicked_yields_what_it_had_then_ends,
            ),
            trial(
                "an_imap_item_whose_serialize_panics_fails_alone",
                an_imap_item_whose_serialize_panics_fails_alone,
            ),
            trial(
                "imap_yields_each_failure_in_place",
                imap_yields_each_failure_in_place,
            ),
            trial("tasks_awaited_in_tokio", tasks_awaited_in_tokio),
            trial(
                "an_imap_stream_polled_in_a_callback_gives_its_thread_back",
                an_imap_stream_polled_in_a_callback_gives_its_thread_back,
            ),
            trial(
                "a_dropped_task_lets_go_of_its_waker",
                a_dropped_task_lets_go_of_its_waker,
            ),
            trial("codec_failures_fail_the_task", codec_failures_fail_the_task),
            trial(
                "scribbled_job_channel_replaces_the_worker",
                scribbled_job_channel_replaces_the_worker,
            ),
            trial(
                "scribbled_channel_headers_do_not_hang",
                scribbled_channel_headers_do_not_hang,
            ),
            trial("closed_and_bad_settings", closed_and_bad_settings),
            trial(
                "terminate_and_drop_leave_nothing",
                terminate_and_drop_leave_nothing,
            ),
            trial(
                "terminate_lets_go_of_the_tasks_no_worker_holds",
                terminate_lets_go_of_the_tasks_no_worker_holds,
            ),
            trial(
                "idle_workers_killed_one_after_another_are_only_replaced",
                idle_workers_killed_one_after_another_are_only_replaced,
            ),
            trial(
                "a_running_task_of_a_dropped_imap_is_not_retried",
                a_running_task_of_a_dropped_imap_is_not_retried,
            ),
            trial(
                "idle_workers_that_crash_late_still_break_the_pool",
                idle_workers_that_crash_late_still_break_the_pool,
            ),
            trial(
                "failing_initializer_breaks_pool",
                failing_initializer_breaks_pool,
            ),
            trial(
                "a_broken_pool_stops_its_running_tasks",
                a_broken_pool_stops_its_running_tasks,
            ),
            trial(
                "start_failures_between_panicking_tasks_do_not_break_the_pool",
                start_failures_between_panicking_tasks_do_not_break_the_pool,
            ),
            trial("spawn_start_method", spawn_start_method),
            #[cfg(feature = "progress")]
            trial("map_with_progress_bar", map_with_progress_bar),
            trial(
                "a_large_context_that_leaves_no_room_for_its_first_chunk_does_not_stall",
                a_large_context_that_leaves_no_room_for_its_first_chunk_does_not_stall,
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
        "pool_parent" => helper_pool_parent(),
        "leaks" => helper_leaks(),
        "aborting_tasks" => helper_aborting_tasks(),
        "stopped_server" => helper_stopped_server(),
        "stopped_holder" => helper_stopped_holder(),
        "context_drop" => helper_context_drop(),
        "slow_starts" => helper_slow_starts(),
        "interrupted_pool" => helper_interrupted_pool(),
        "terminate_lets_go" => helper_terminate_lets_go(),
        "forked_child_beside_a_pool" => helper_forked_child_beside_a_pool(),
        other => panic!("unknown helper mode {other}"),
    }
}

/// Waits for a task, within `T`.
fn get<R>(mut task: Task<R>) -> Result<R, TaskError> {
    match task.wait_timeout(T) {
        Err(TaskError::Timeout) => panic!("a task did not finish within {T:?}"),
        done => done,
    }
}

/// Closes the pool and waits for it, within `T`; then checks that its workers are gone.
fn finish(pool: Pool) {
    let pids = pool.worker_pids();
    pool.join_timeout(T).expect("the pool did not finish");
    drop(pool);
    for p in pids {
        assert!(
            common::wait_gone(p, Duration::from_secs(5)),
            "worker {p} is still there"
        );
    }
}

/// An input iterator that panics half-way: the panic reaches the caller of `next`; one
/// that catches it and goes on gets the outcomes of the items given before, in order,
/// then the end (it waited for ever for items counted and never submitted), for
/// `imap` and `imap_unordered`.
fn an_imap_whose_input_panicked_yields_what_it_had_then_ends() {
    let pool = Pool::new(2).unwrap();
    for ordered in [true, false] {
        let input = (0..10u64).inspect(|&i| assert!(i != 5, "the input fails at 5"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut it: Box<dyn Iterator<Item = Result<u64, TaskError>>> = if ordered {
                    Box::new(pool.imap(square, input))
                } else {
                    Box::new(pool.imap_unordered(square, input))
                };
                let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next()));
                assert!(first.is_err(), "the input's panic reached the caller");
                let mut rest: Vec<u64> = it.map(Result::unwrap).collect();
                if !ordered {
                    rest.sort_unstable();
                }
                let _ = tx.send(rest);
            });
            let rest = rx.recv_timeout(T);
            if rest.is_err() {
                pool.terminate();
            }
            assert_eq!(
                rest.expect("the imap ended within the timeout"),
                [0, 1, 4, 9, 16],
                "ordered: {ordered}"
            );
        });
    }
}

fn square(x: u64) -> u64 {
    x * x
}

/// A number whose `Serialize` panics at 3.
#[derive(Deserialize)]
struct Boom(u64);

impl Serialize for Boom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert!(self.0 != 3, "Boom at 3");
        s.serialize_u64(self.0)
    }
}

fn unboom(b: Boom) -> u64 {
    b.0
}

/// An item whose `Serialize` panics, in the batch an `imap` submits: the panic reaches
/// the caller of `next`; one that catches it and goes on gets every other item's
/// outcome, in order for `imap`, that item's failure in its place, then the end (the
/// whole batch was lost with the panic, and the next `next` waited for ever).
fn an_imap_item_whose_serialize_panics_fails_alone() {
    let pool = Pool::new(2).unwrap();
    for ordered in [true, false] {
        let input = (0..10u64).map(Boom);
        let mut rest: Vec<Result<u64, String>> = Vec::new();
        // Each `next` within its own bound: a lost item would wait for ever.
        let mut take = |next: &mut dyn FnMut() -> Option<Result<u64, TaskError>>| {
            let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut *next));
            assert!(first.is_err(), "the Serialize's panic reached the caller");
            while let Some(got) = next() {
                assert!(
                    !matches!(got, Err(TaskError::Timeout)),
                    "an outcome did not come within 10 s: {rest:?}"
                );
                rest.push(got.map_err(|e| e.to_string()));
            }
        };
        let bound = Duration::from_secs(10);
        if ordered {
            let mut it = pool.imap(unboom, input);
            take(&mut || it.next_timeout(bound));
        } else {
            let mut it = pool.imap_unordered(unboom, input);
            take(&mut || it.next_timeout(bound));
        }
        let mut values: Vec<u64> = rest.iter().filter_map(|r| r.clone().ok()).collect();
        let failures: Vec<&String> = rest.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(failures.len(), 1, "{rest:?}");
        assert!(failures[0].contains("Boom at 3"), "{rest:?}");
        if ordered {
            assert!(rest[3].is_err(), "{rest:?}");
        } else {
            values.sort_unstable();
        }
        assert_eq!(values, [0, 1, 2, 4, 5, 6, 7, 8, 9], "ordered: {ordered}");
    }
    finish(pool);
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

/// A callback that joins the pool, run by a thread whose `map` of the pool is under way
/// (it routes outcomes as it waits), only closes it, as on the pool's own thread: the
/// join waited for the map, and the map for the callback. The pool's own thread is kept
/// busy in another callback meanwhile, so that the mapping thread routes the outcome;
/// rounds go on until a callback ran there.
fn a_join_in_a_callback_run_inside_a_map_does_not_wait_for_it() {
    let me = std::thread::current().id();
    let mut on_the_mapper = 0;
    for round in 0..20 {
        let pool = Arc::new(Pool::new(2).unwrap());
        keep_pools_thread_busy(&pool, 300);
        let (tx, rx) = std::sync::mpsc::channel();
        let p = Arc::clone(&pool);
        pool.submit(sleep_ms, 5).unwrap().on_done(move |_| {
            let mapper = std::thread::current().id() == me;
            let joined = p.join_timeout(Duration::from_secs(5));
            let _ = tx.send((mapper, format!("{joined:?}")));
        });
        let mapped = pool.map_chunked(sleep_ms, [20u64; 8], 1);
        assert_eq!(mapped, Ok(vec![20; 8]), "round {round}");
        let (mapper, joined) = rx.recv_timeout(T).expect("the callback never ran");
        assert!(
            joined.starts_with("Err(InvalidArgument"),
            "round {round}: {joined}"
        );
        // The callback let go of its handle as it ended.
        finish(common::sole(pool));
        on_the_mapper += usize::from(mapper);
        if on_the_mapper > 0 {
            return;
        }
    }
    panic!("in 20 rounds, no callback ran on the mapping thread");
}

/// Keeps the pool's own thread busy for `ms` in a task's callback (returns once it is).
fn keep_pools_thread_busy(pool: &Pool, ms: u64) {
    let (busy_tx, busy_rx) = std::sync::mpsc::channel();
    pool.submit(square, 1).unwrap().on_done(move |_| {
        let _ = busy_tx.send(());
        std::thread::sleep(Duration::from_millis(ms));
    });
    busy_rx
        .recv_timeout(T)
        .expect("the first callback never ran");
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Waits for `go`, then sleeps `ms`: tasks that end one after the other, on cue.
fn on_cue_then_sleep((go, ms): (Event, u64)) -> u64 {
    assert!(go.wait_timeout(T));
    sleep_ms(ms)
}

/// A callback that waits for another task of the pool whose outcome came in the same
/// batch, after its own: the pool's thread, busy in a callback while both ended, takes
/// both off the channel at once. The outcome waits where a helping wait finds it (it
/// waited in the batch, a frame up the stack, which no wait could reach: the callback's
/// wait ran out, and an untimed one hung the pool).
fn a_callback_waits_for_a_task_of_its_own_batch() {
    let pool = Pool::new(3).unwrap();
    let go = Event::new().unwrap();
    let a = pool.submit(on_cue_then_sleep, (go.clone(), 0)).unwrap();
    let mut b = pool.submit(on_cue_then_sleep, (go.clone(), 50)).unwrap();
    keep_pools_thread_busy(&pool, 300);
    let (tx, rx) = std::sync::mpsc::channel();
    a.on_done(move |_| {
        let _ = tx.send(format!("{:?}", b.wait_timeout(Duration::from_secs(10))));
    });
    go.set();
    let waited = rx.recv_timeout(T).expect("the callback never ran");
    assert_eq!(waited, "Ok(50)");
    drop(a);
    finish(pool);
}

/// Armed in the test's own process only: a value whose `Drop` panics there (a worker,
/// forked from the fork server, drops its copy quietly).
static BOMBS_ARMED: AtomicBool = AtomicBool::new(false);

#[derive(Serialize, Deserialize)]
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if BOMBS_ARMED.load(Ordering::Relaxed) {
            panic!("bomb")
        }
    }
}

fn bomb(_: ()) -> Bomb {
    Bomb
}

/// A result whose `Task` was dropped (a done-callback kept it decoded) is dropped by
/// whichever thread delivers it, the pool's own included: a `Drop` that panics there
/// must not end that thread (the pool's results would no longer be routed).
fn a_panicking_drop_of_an_unclaimed_result_keeps_the_pool() {
    BOMBS_ARMED.store(true, Ordering::Relaxed);
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = pool.submit(bomb, ()).unwrap();
    t.on_done(move |r| {
        let _ = tx.send(r.is_ok());
    });
    drop(t);
    assert_eq!(rx.recv_timeout(T), Ok(true), "the callback never ran");
    let mut next = pool.submit(sleep_ms, 1).unwrap();
    let got = next.wait_timeout(Duration::from_secs(10));
    BOMBS_ARMED.store(false, Ordering::Relaxed);
    assert_eq!(got, Ok(1));
    finish(pool);
}

/// Sets `started`, then sleeps for `ms`: a task the test knows is running.
fn started_then_sleep((started, ms): (Event, u64)) -> u64 {
    started.set();
    sleep_ms(ms)
}

/// Submits a long task and waits until a worker runs it.
fn running_task(pool: &Pool) -> Task<u64> {
    let started = Event::new().unwrap();
    let task = pool
        .submit(started_then_sleep, (started.clone(), 30_000))
        .unwrap();
    assert!(started.wait_timeout(T), "the task never started");
    task
}

fn shout(s: String) -> String {
    s.to_uppercase()
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Crash {
    Segfault,
    Abort,
    Exit(i32),
    Sigkill,
}

fn crash(how: Crash) -> u32 {
    match how {
        // (`raise(SIGSEGV)` would return: std's stack-overflow handler takes it.)
        // SAFETY: not safe at all: the worker dies of it, which is the point.
        Crash::Segfault => unsafe {
            std::ptr::null_mut::<u64>().write_volatile(1);
        },
        Crash::Abort => std::process::abort(),
        Crash::Exit(code) => std::process::exit(code),
        // SAFETY: raising a signal is sound; the worker dies of it.
        Crash::Sigkill => unsafe {
            libc::raise(libc::SIGKILL);
        },
    }
    unreachable!("the worker should have died")
}

/// Aborts unless the number is 3 modulo 4, after a millisecond either way.
fn abort_mostly(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    if x % 4 != 3 {
        std::process::abort();
    }
    x
}

/// Three tasks in four crash their worker: the others, queued behind crashing ones on
/// one worker after another, all run (a worker that dies in a task it had begun does not fail the
/// one queued behind it).
fn tasks_queued_behind_many_crashes_run() {
    // Workers slow to replace (an exec each): a task handed back goes to one still busy.
    let pool = Pool::builder()
        .processes(4)
        .start_method(StartMethod::Spawn)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..200u64)
        .map(|x| pool.submit(abort_mostly, x).unwrap())
        .collect();
    let mut unrun = Vec::new();
    for (x, task) in (0..).zip(tasks) {
        match (x % 4, get(task)) {
            (3, Ok(got)) => assert_eq!(got, x),
            (3, Err(e)) => unrun.push((x, e)),
            (_, Err(TaskError::WorkerDied(Some(status)))) => {
                assert_eq!(status.signal(), Some(Signal::ABRT), "{x}: {status}");
            }
            (_, other) => panic!("{x}: {other:?}"),
        }
    }
    assert!(unrun.is_empty(), "failed without crashing: {unrun:?}");
    pool.terminate();
}

fn map_in_order_with_any_chunking() {
    let pool = Pool::new(3).unwrap();
    let want: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..1000).unwrap(), want);
    for chunk in [1, 7, 999, 5000] {
        assert_eq!(pool.map_chunked(square, 0..1000, chunk).unwrap(), want);
    }
    assert_eq!(pool.map(square, Vec::new()).unwrap(), Vec::<u64>::new());
    assert_eq!(pool.map_chunked(square, 0..3, 0).unwrap(), [0, 1, 4]);
    let words = vec!["a".to_string(), "bc".into(), String::new()];
    assert_eq!(pool.map(shout, words).unwrap(), ["A", "BC", ""]);
    // Items are taken from the iterator as chunks are sent: one that does not know
    // its length, or says a wrong one, still has every item mapped, and only those.
    let evens: Vec<u64> = (0..2000u64).filter(|x| x % 2 == 0).map(|x| x * x).collect();
    assert_eq!(
        pool.map(square, (0..2000).filter(|x| x % 2 == 0)).unwrap(),
        evens
    );
    for claim in [0, 10, 5000, usize::MAX - 1, usize::MAX] {
        let items = Claims {
            items: 0..1000,
            claim,
        };
        assert_eq!(pool.map(square, items).unwrap(), want, "claiming {claim}");
        let items = Claims {
            items: 0..1000,
            claim,
        };
        assert_eq!(
            pool.map_chunked(square, items, 3).unwrap(),
            want,
            "claiming {claim}"
        );
    }
    // An iterator that panics after some chunks went out: the map unwinds, and the
    // pool goes on.
    let panics = (0..50_000u64).inspect(|&x| assert!(x != 30_000, "the iterator panics"));
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.map_chunked(square, panics, 100)
    }));
    assert!(unwound.is_err());
    assert_eq!(pool.map(square, 0..1000).unwrap(), want);
    // Many chunks, and chunks of a few large items.
    let many: Vec<u64> = (0..20_000u64).map(|x| x * x).collect();
    assert_eq!(pool.map_chunked(square, 0..20_000, 1).unwrap(), many);
    let big: Vec<String> = (0..48).map(|i| "x".repeat(100_000 + i)).collect();
    let shouted: Vec<String> = big.iter().map(|s| s.to_uppercase()).collect();
    assert_eq!(pool.map_chunked(shout, big, 1).unwrap(), shouted);
    finish(pool);
}

/// A map's caller routes outcomes itself while it waits, and the pool's own thread
/// leaves them to it; once the map is over (or its caller sleeps) the pool's thread
/// must route again. A task nobody waits for shows whether it does: its callback runs
/// only when its outcome is routed.
fn outcomes_are_routed_during_and_after_maps() {
    let pool = Pool::new(2).unwrap();
    let want: Vec<u64> = (0..200_000u64).map(|x| x * x).collect();
    let callback = |pool: &Pool, x: u64| {
        let (tx, rx) = std::sync::mpsc::channel();
        pool.submit(square, x)
            .unwrap()
            .on_done(move |r| tx.send(r.clone()).unwrap());
        rx
    };
    // After a map.
    assert_eq!(pool.map(square, 0..200_000).unwrap(), want);
    assert_eq!(callback(&pool, 7).recv_timeout(T).unwrap(), Ok(49));
    // During maps on other threads, some of them sleeping for slow chunks, and after
    // a map that failed and one that timed out.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..3 {
                    assert_eq!(pool.map(square, 0..200_000).unwrap(), want);
                }
            });
        }
        s.spawn(|| {
            let slow = pool.map_chunked(sleep_ms, [30u64; 8], 1).unwrap();
            assert_eq!(slow, [30; 8]);
        });
        for x in 0..20u64 {
            let rx = callback(&pool, x);
            assert_eq!(rx.recv_timeout(T).unwrap(), Ok(x * x));
        }
    });
    assert!(pool.map(panicky, [1, 13, 2]).is_err());
    assert_eq!(callback(&pool, 8).recv_timeout(T).unwrap(), Ok(64));
    assert!(matches!(
        pool.map_timeout(sleep_ms, [2000u64; 4], Duration::from_millis(50)),
        Err(TaskError::Timeout)
    ));
    assert_eq!(callback(&pool, 9).recv_timeout(T).unwrap(), Ok(81));
    // A done-callback (run by the pool's own thread) that maps, one that waits for
    // tasks with `as_completed`, and one that awaits a stream: all route outcomes
    // themselves while they wait.
    let pool = Arc::new(pool);
    let (tx, rx) = std::sync::mpsc::channel();
    let p = Arc::clone(&pool);
    pool.submit(square, 2).unwrap().on_done(move |_| {
        let mapped = p.map_chunked(sleep_ms, [10u64; 4], 1);
        let tasks: Vec<_> = (0..3).map(|x| p.submit(square, x).unwrap()).collect();
        let mut done: Vec<u64> = multiproc::as_completed(tasks)
            .map(|(_, r)| r.unwrap())
            .collect();
        done.sort_unstable();
        let streamed: Vec<u64> = futures_lite::future::block_on(futures_lite::StreamExt::collect(
            futures_lite::StreamExt::map(p.imap(square, 0..5u64).into_stream(), |r| r.unwrap()),
        ));
        // A worker that dies: reaped and replaced by the waiting callback itself.
        let crashed: Vec<String> = p
            .imap(crash, [Crash::Exit(3)])
            .map(|r| format!("{r:?}"))
            .collect();
        // A task awaited, one waited for with `multiproc::wait`, and tasks of two pools
        // waited for together, the thread pool's first.
        let awaited = futures_lite::future::block_on(p.submit(square, 6).unwrap());
        let mut selected = p.submit(square, 7).unwrap();
        let ready = multiproc::wait(&[&selected], Some(Duration::from_secs(10)));
        let selected = (ready.unwrap(), selected.wait_timeout(T));
        let threads = multiproc::ThreadPool::new(1).unwrap();
        let mixed = [
            threads
                .submit(|| {
                    std::thread::sleep(Duration::from_millis(20));
                    0u64
                })
                .unwrap(),
            p.submit(square, 8).unwrap(),
        ];
        let both = multiproc::wait_tasks(
            &mixed,
            multiproc::Return::AllCompleted,
            Some(Duration::from_secs(10)),
        );
        let others = (awaited, selected, both);
        tx.send((mapped, done, streamed, crashed, others)).unwrap();
    });
    let (mapped, done, streamed, crashed, others) =
        rx.recv_timeout(T).expect("the callback's map never ended");
    assert_eq!(mapped.unwrap(), [10; 4]);
    assert_eq!(done, [0, 1, 4]);
    assert_eq!(streamed, [0, 1, 4, 9, 16]);
    assert!(crashed[0].starts_with("Err(WorkerDied"), "{crashed:?}");
    let (awaited, selected, both) = others;
    assert_eq!(awaited, Ok(36));
    assert_eq!(selected, (vec![0], Ok(49)));
    assert_eq!(both, (vec![0, 1], vec![]));
    // The pool's thread drops the callback (and its handle of the pool) once it ran.
    finish(common::sole(pool));
}

/// Sets `started`, then takes 10 ms to return the length.
fn started_then_len((started, s): (Event, String)) -> usize {
    started.set();
    std::thread::sleep(Duration::from_millis(10));
    s.len()
}

/// A map feeds its chunks as it goes: one called before `close` still runs to its end
/// (as in Python), and the pool finishes after it; `terminate` ends one.
fn a_map_called_before_close_ends() {
    // 40 chunks of 30 KB that take 10 ms each on 2 workers: more than a map keeps
    // ahead of its results, so most are submitted after the close.
    let lens: Vec<usize> = (0..40).map(|i| 30_000 + i).collect();
    for terminate in [false, true] {
        let pool = Pool::new(2).unwrap();
        let started = Event::new().unwrap();
        let items: Vec<(Event, String)> = lens
            .iter()
            .map(|&n| (started.clone(), "x".repeat(n)))
            .collect();
        std::thread::scope(|s| {
            let mapping = s.spawn(|| pool.map_chunked(started_then_len, items, 1));
            assert!(started.wait_timeout(T), "the map did not start");
            if terminate {
                pool.terminate();
                assert!(mapping.join().unwrap().is_err());
                return;
            }
            pool.close();
            assert!(matches!(pool.submit(square, 1), Err(TaskError::PoolClosed)));
            assert!(matches!(
                pool.map(square, [1, 2]),
                Err(TaskError::PoolClosed)
            ));
            let joined = pool.join_timeout(T);
            assert_eq!(mapping.join().unwrap().unwrap(), lens);
            joined.expect("the pool did not finish after the map");
        });
        finish(pool);
    }
}

/// A map called before `close` runs whole even when its iterator gives its first item
/// only after the close (the map counted as open only once it had an item, or all of
/// them for an iterator of unknown length: it failed with `PoolClosed`, and the join
/// did not wait for it). For `map`, `map_with` and `map_with_progress`.
fn a_map_whose_iterator_gives_its_items_after_close_ends() {
    let ways: &[&str] = if cfg!(feature = "progress") {
        &["map", "map_with", "map_with_progress"]
    } else {
        &["map", "map_with"]
    };
    for &way in ways {
        let with = way == "map_with";
        let pool = Pool::new(2).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let pool = &pool;
            let mapping = s.spawn(move || {
                let mut first = true;
                // A filter: its length is not known, so the map collects it first.
                let items = (0..100u64).filter(move |_| {
                    if std::mem::take(&mut first) {
                        started_tx.send(()).unwrap();
                        closed_rx.recv_timeout(T).unwrap();
                    }
                    true
                });
                match way {
                    "map_with" => pool.map_with(1u64, |one, x| square(x) + one, items),
                    #[cfg(feature = "progress")]
                    "map_with_progress" => pool.map_with_progress(square, items),
                    _ => pool.map(square, items),
                }
            });
            started_rx.recv_timeout(T).expect("the map did not start");
            pool.close();
            closed_tx.send(()).unwrap();
            let joined = pool.join_timeout(T);
            let expected: Vec<u64> = (0..100).map(|x| square(x) + u64::from(with)).collect();
            assert_eq!(mapping.join().unwrap().unwrap(), expected, "{way}");
            joined.expect("the pool did not finish after the map");
        });
        finish(pool);
    }
}

/// An iterator that says it has `claim` items, whatever it has.
struct Claims {
    items: std::ops::Range<u64>,
    claim: usize,
}

impl Iterator for Claims {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.items.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claim, Some(self.claim))
    }
}

static GREETING: OnceLock<String> = OnceLock::new();

fn set_greeting(s: String) {
    GREETING
        .set(format!("{s} from {}", std::process::id()))
        .unwrap();
}

fn greeting(_: ()) -> Option<String> {
    GREETING.get().cloned()
}

/// A panic payload whose `Drop` panics.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("the payload was dropped");
    }
}

fn panics_with_a_payload_that_panics_when_dropped(_: u64) -> u64 {
    std::panic::panic_any(PanicsWhenDropped)
}

/// An argument whose `Drop` panics in a worker, unless the task defused it (armed as it
/// is decoded: the parent's copies are not).
#[derive(Serialize, Deserialize)]
struct ArmedItem {
    n: u32,
    #[serde(skip, default = "armed")]
    armed: bool,
}

fn armed() -> bool {
    true
}

impl Drop for ArmedItem {
    fn drop(&mut self) {
        if self.armed {
            panic!("an item that did not run was dropped");
        }
    }
}

fn defuses_then_panics_at_0(mut bomb: ArmedItem) -> u32 {
    bomb.armed = false;
    if bomb.n == 0 {
        panic!("item 0 fails");
    }
    bomb.n
}

/// A task whose panic's payload panics when dropped fails with its panic, and its
/// worker serves on (the second panic unwound out of the worker's loop: the worker
/// ended, and the task failed as the worker's death), in a task and in a map's chunk.
fn a_panic_payload_that_panics_when_dropped_fails_its_task_only() {
    let pool = Pool::new(1).unwrap();
    let pids = pool.worker_pids();
    let r = pool.apply(panics_with_a_payload_that_panics_when_dropped, 1);
    assert!(matches!(r, Err(TaskError::Panicked(_))), "{r:?}");
    let r = pool.map(panics_with_a_payload_that_panics_when_dropped, 0..3);
    assert!(matches!(r, Err(TaskError::Panicked(_))), "{r:?}");
    let r = pool.map_chunked(panics_with_a_payload_that_panics_when_dropped, 0..3, 3);
    let Err(TaskError::Panicked(p)) = r else {
        panic!("{r:?}")
    };
    assert!(!p.message().contains("dropped"), "{p}");
    // A chunk stopped at its first panic drops the items it did not run: two whose
    // `Drop` panics (dropped together, the second aborted the worker), and the report
    // is the item's (a `Drop`'s panic took its place, and it lost its location).
    let bombs = (0..3).map(|n| ArmedItem { n, armed: false });
    let r = pool.map_chunked(defuses_then_panics_at_0, bombs, 3);
    let Err(TaskError::Panicked(p)) = r else {
        panic!("{r:?}")
    };
    assert!(p.message().contains("item 0 fails"), "{p}");
    assert!(p.location().is_some(), "{p:?}");
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_eq!(pool.worker_pids(), pids, "the worker was replaced");
    finish(pool);
}

/// Item 0 panics; item 1, in the same chunk, would end its worker.
fn panics_then_aborts(x: u32) -> u32 {
    if x == 0 {
        panic!("item 0 fails");
    }
    std::process::abort()
}

/// A map fails with its first failure in item order: a chunk stops at its first panic,
/// as Python's does at its first exception (its later items ran on: one that ended the
/// worker made the map fail as the worker's death, the panic lost, and one that never
/// returned would have held the map for ever).
fn a_map_fails_with_its_first_panic_in_item_order() {
    let pool = Pool::new(1).unwrap();
    let pids = pool.worker_pids();
    let r = pool.map_chunked(panics_then_aborts, [0, 1], 2);
    let Err(TaskError::Panicked(p)) = r else {
        panic!("not the first item's panic: {r:?}")
    };
    assert!(p.message().contains("item 0 fails"), "{p}");
    assert_eq!(pool.worker_pids(), pids, "the second item ran");
    finish(pool);
}

fn submit_apply_and_initializer() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(set_greeting, "hello".to_string())
        .build()
        .unwrap();
    assert_eq!(pool.processes(), 2);
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    let tasks: Vec<_> = (0..50)
        .map(|_| pool.submit(greeting, ()).unwrap())
        .collect();
    let pids = pool.worker_pids();
    for t in tasks {
        let g = get(t).unwrap().expect("the initializer ran");
        let (word, pid) = g.split_once(" from ").unwrap();
        assert_eq!(word, "hello");
        assert!(pids.contains(&pid.parse().unwrap()), "{g} vs {pids:?}");
    }
    finish(pool);
}

/// The first worker to start waits in its initializer until `release` is set.
fn first_waits((started, release): (Value<u32>, Event)) {
    let n = {
        let mut g = started.lock().unwrap_or_else(OwnerDied::into_inner);
        *g += 1;
        *g
    };
    if n == 1 {
        release.wait_timeout(T);
    }
}

/// Tasks sent to a worker that does not begin them (stopped by SIGSTOP, or its
/// initializer still running) go to the worker that is idle, and the other worker
/// takes tasks again once it runs.
fn a_stopped_or_starting_worker_holds_no_tasks() {
    let quick = Duration::from_secs(10);
    let all_done = |pool: &Pool| {
        let tasks: Vec<_> = (0..40u64)
            .map(|x| pool.submit(square, x).unwrap())
            .collect();
        for (x, mut t) in (0..40u64).zip(tasks) {
            assert_eq!(t.wait_timeout(quick), Ok(x * x), "task {x}");
        }
    };
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
    let stopped = pool.worker_pids()[0];
    common::stop_or_continue(stopped, true);
    assert!(common::eventually(T, || common::state_of(stopped) == 'T'));
    all_done(&pool);
    common::stop_or_continue(stopped, false);
    let serves = |pool: &Pool, worker: u32| {
        common::eventually(T, || {
            let tasks: Vec<_> = (0..20).map(|_| pool.submit(pid, ()).unwrap()).collect();
            tasks.into_iter().any(|t| get(t) == Ok(worker))
        })
    };
    assert!(serves(&pool, stopped), "the resumed worker gets no task");
    finish(pool);

    let release = Event::new().unwrap();
    let pool = Pool::builder()
        .processes(2)
        .initializer(first_waits, (Value::new(0u32).unwrap(), release.clone()))
        .build()
        .unwrap();
    all_done(&pool);
    release.set();
    let pids = pool.worker_pids();
    for p in pids {
        assert!(serves(&pool, p), "worker {p} gets no task");
    }
    finish(pool);
}

fn crashes_fail_only_their_task() {
    let pool = Pool::new(2).unwrap();
    let before = pool.worker_pids();
    let crashes = [
        (Crash::Segfault, Some(Signal::SEGV), None),
        (Crash::Abort, Some(Signal::ABRT), None),
        (Crash::Exit(7), None, Some(7)),
        (Crash::Sigkill, Some(Signal::KILL), None),
    ];
    let mut normal = Vec::new();
    let mut crashing = Vec::new();
    for (i, &(how, signal, code)) in crashes.iter().enumerate() {
        for x in 0..20 {
            normal.push((x, pool.submit(square, x + 100 * i as u64).unwrap()));
        }
        crashing.push((how, signal, code, pool.submit(crash, how).unwrap()));
    }
    for (how, signal, code, task) in crashing {
        let err = get(task).unwrap_err();
        let TaskError::WorkerDied(Some(status)) = err else {
            panic!("{how:?}: {err:?}");
        };
        assert_eq!(status.signal(), signal, "{how:?}: {status}");
        assert_eq!(status.code(), code, "{how:?}: {status}");
    }
    for (i, (x, task)) in normal.into_iter().enumerate() {
        let base = 100 * (i / 20) as u64;
        assert_eq!(get(task).unwrap(), (x + base) * (x + base));
    }
    // Replacements took over.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert!(common::eventually(T, || pool.worker_pids().len() == 2));
    let after = pool.worker_pids();
    assert!(
        after.iter().any(|p| !before.contains(p)),
        "no worker replaced"
    );
    // The workers that crashed are gone (a worker that drew no crash may still serve).
    for p in before.into_iter().filter(|p| !after.contains(p)) {
        assert!(
            common::wait_gone(p, Duration::from_secs(5)),
            "worker {p} left"
        );
    }
    finish(pool);
}

fn flaky((runs, fail_times): (Value<u32>, u32)) -> u32 {
    let n = {
        let mut g = runs.lock().unwrap_or_else(OwnerDied::into_inner);
        *g += 1;
        *g
    };
    if n <= fail_times {
        std::process::abort();
    }
    n
}

fn flaky_panic((runs, fail_times): (Value<u32>, u32)) -> u32 {
    let n = {
        let mut g = runs.lock().unwrap_or_else(OwnerDied::into_inner);
        *g += 1;
        *g
    };
    assert!(n > fail_times, "run {n} fails");
    n
}

fn retry_policy_reruns_failed_tasks() {
    let policy =
        RetryPolicy::attempts(3).backoff(Duration::from_millis(10), 2.0, Duration::from_millis(50));
    let pool = Pool::builder()
        .processes(2)
        .retry(policy.clone())
        .build()
        .unwrap();
    // Dies twice, succeeds on the third run.
    let runs = Value::new(0u32).unwrap();
    assert_eq!(
        get(pool.submit(flaky, (runs.clone(), 2)).unwrap()).unwrap(),
        3
    );
    // Dies every time: three runs, then the error.
    let runs = Value::new(0u32).unwrap();
    let err = get(pool.submit(flaky, (runs.clone(), 99)).unwrap()).unwrap_err();
    assert!(
        matches!(err, TaskError::WorkerDied(Some(s)) if s.signal() == Some(Signal::ABRT)),
        "{err:?}"
    );
    assert_eq!(*runs.lock().unwrap_or_else(OwnerDied::into_inner), 3);
    // Panics are not retried by default...
    let runs = Value::new(0u32).unwrap();
    let err = get(pool.submit(flaky_panic, (runs.clone(), 1)).unwrap()).unwrap_err();
    assert!(
        err.panic().unwrap().message().contains("run 1 fails"),
        "{err}"
    );
    assert_eq!(*runs.lock().unwrap(), 1);
    finish(pool);
    // ... unless the policy says so.
    let pool = Pool::builder()
        .processes(1)
        .retry(policy.retry_if(|e| matches!(e, TaskError::Panicked(_))))
        .build()
        .unwrap();
    let runs = Value::new(0u32).unwrap();
    assert_eq!(
        get(pool.submit(flaky_panic, (runs.clone(), 2)).unwrap()).unwrap(),
        3
    );
    // A map's item too (its panic came back inside its chunk's values, and the policy
    // was never asked): its chunk runs again, the item before it with it (three runs
    // each), not the next chunk.
    let before = Value::new(0u32).unwrap();
    let runs = Value::new(0u32).unwrap();
    assert_eq!(
        pool.map_chunked(
            flaky_panic,
            [
                (before.clone(), 0),
                (runs.clone(), 2),
                (Value::new(0).unwrap(), 0)
            ],
            2
        )
        .unwrap(),
        [3, 3, 1]
    );
    // Without a retry, the same crash is one failure.
    finish(pool);
    let pool = Pool::new(1).unwrap();
    let runs = Value::new(0u32).unwrap();
    let err = get(pool.submit(flaky, (runs.clone(), 1)).unwrap()).unwrap_err();
    assert!(matches!(err, TaskError::WorkerDied(_)), "{err:?}");
    assert_eq!(*runs.lock().unwrap_or_else(OwnerDied::into_inner), 1);
    finish(pool);
}

/// A timeout shorter than the pool's own longest sleep (100 ms) is kept when the task
/// is sent to an idle pool, whose thread has nothing else to time: twenty 10 ms timeouts
/// in turn, each given 60 ms, of which a few may go over on a busy machine (the pool's
/// thread woke only at the end of its sleep: about half went over).
fn a_short_task_timeout_is_kept_by_an_idle_pool() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(10))
        .build()
        .unwrap();
    let mut took = Vec::new();
    for _ in 0..20 {
        // The worker (new after each timeout) is ready and the pool idle.
        assert_eq!(get(pool.submit(square, 3).unwrap()).unwrap(), 9);
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        let slow = pool.submit(sleep_ms, 30_000).unwrap();
        assert_eq!(get(slow).unwrap_err(), TaskError::TimedOut);
        took.push(t0.elapsed());
    }
    let late = took
        .iter()
        .filter(|t| **t > Duration::from_millis(60))
        .count();
    assert!(late < 5, "{late} of 20 late: {took:?}");
    pool.terminate();
}

fn task_timeout_kills_and_replaces() {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let before = pool.worker_pids();
    let t0 = Instant::now();
    let slow = pool.submit(sleep_ms, 30_000).unwrap();
    let quick: Vec<_> = (0..20).map(|x| pool.submit(square, x).unwrap()).collect();
    assert_eq!(get(slow).unwrap_err(), TaskError::TimedOut);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "timed out after {took:?}");
    assert!(
        took >= Duration::from_millis(300),
        "timed out early: {took:?}"
    );
    for (x, t) in quick.into_iter().enumerate() {
        assert_eq!(get(t).unwrap(), (x * x) as u64);
    }
    // Tasks within the limit are untouched; the killed worker was replaced.
    assert_eq!(get(pool.submit(sleep_ms, 50).unwrap()).unwrap(), 50);
    assert!(common::eventually(T, || pool.worker_pids().len() == 2));
    let after = pool.worker_pids();
    assert!(after.iter().any(|p| !before.contains(p)));
    // In a map each item is a task: chunks of 20 items of 50 ms (a second each) are
    // within a 300 ms timeout; an item that hangs is stopped.
    let items = vec![50u64; 40];
    assert_eq!(
        pool.map_chunked(sleep_ms, items.clone(), 20).unwrap(),
        items
    );
    let t0 = Instant::now();
    let mut hanging = vec![10u64; 10];
    hanging[5] = 30_000;
    assert_eq!(
        pool.map_chunked(sleep_ms, hanging, 10).unwrap_err(),
        TaskError::TimedOut
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    finish(pool);
}

/// How long each phase of [`slow_phases`]'s chunk takes.
const PHASE: Duration = Duration::from_millis(400);

/// An argument that takes [`PHASE`] to decode; 8 KiB, so that its result (as big) is
/// encoded in one pass.
#[derive(Serialize)]
struct SlowToDecode(Vec<u8>);

impl<'de> Deserialize<'de> for SlowToDecode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        std::thread::sleep(PHASE);
        Ok(SlowToDecode(bytes))
    }
}

/// A result that takes [`PHASE`] to encode.
#[derive(Deserialize)]
struct SlowToEncode(Vec<u8>);

impl Serialize for SlowToEncode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        std::thread::sleep(PHASE);
        self.0.serialize(s)
    }
}

fn slow_phases(a: SlowToDecode) -> SlowToEncode {
    std::thread::sleep(PHASE);
    SlowToEncode(a.0)
}

/// A map's per-item timeout counts each item from its start: a chunk's decoding and
/// encoding are each timed as an item, and neither is added to its first or last item
/// (a chunk of one item whose decoding, run and encoding each take 400 ms timed out
/// under a 1 s timeout, retried until its attempts ran out).
fn a_chunks_decoding_and_encoding_are_not_its_items_time() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let got = pool.map_chunked(slow_phases, vec![SlowToDecode(vec![7; 8192])], 1);
    assert_eq!(got.map(|v| v.len()), Ok(1));
    finish(pool);
}

fn panicky(x: u32) -> u32 {
    if x == 13 {
        panic!("unlucky {x}");
    }
    x
}

fn panic_fails_task_worker_survives() {
    let pool = Pool::new(1).unwrap();
    let worker = get(pool.submit(pid, ()).unwrap()).unwrap();
    let err = get(pool.submit(panicky, 13).unwrap()).unwrap_err();
    let panic = err.panic().expect("a panic");
    assert_eq!(panic.message(), "unlucky 13");
    assert_eq!(panic.pid(), worker);
    assert!(
        panic
            .location()
            .unwrap()
            .file()
            .ends_with("pool_processes.rs")
    );
    assert_eq!(get(pool.submit(panicky, 14).unwrap()).unwrap(), 14);
    assert_eq!(
        get(pool.submit(pid, ()).unwrap()).unwrap(),
        worker,
        "worker replaced"
    );
    // In a map, the first panic in item order is the error.
    let err = pool.map(panicky, 0..30).unwrap_err();
    assert_eq!(err.panic().unwrap().message(), "unlucky 13");
    assert_eq!(
        pool.map(panicky, 0..10).unwrap(),
        (0..10).collect::<Vec<_>>()
    );
    finish(pool);
}

fn max_tasks_per_child_recycles() {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for _ in 0..6 {
        *seen
            .entry(get(pool.submit(pid, ()).unwrap()).unwrap())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 2), "{seen:?}");
    // Submitted all at once, too.
    let tasks: Vec<_> = (0..10).map(|_| pool.submit(pid, ()).unwrap()).collect();
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for t in tasks {
        *seen.entry(get(t).unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.values().all(|&n| n == 2), "{seen:?}");
    finish(pool);
}

/// A child forked from the program with `spawn_fork` after its pool was built holds a
/// copy of every descriptor, the pool's job senders' among them: a worker retired
/// (here after each task) or let go at `join` still ends, and is replaced, while that
/// child lives (the closing of its job channel, which the child's copy kept open, was
/// all that ended it: the pool stalled, and its join waited, until the child ended).
fn a_child_forked_after_the_pool_does_not_hold_its_retired_workers() {
    // In a process of its own: the forked child holds a copy of every descriptor of the
    // process it was forked from, those of other tests' channels too.
    let mut h = Helper::start("forked_child_beside_a_pool");
    assert_eq!(h.expect("second ", T), "ran on another worker");
    assert_eq!(h.expect("joined ", T), "Ok(())");
    assert_eq!(h.expect("workers left ", T), "0");
    assert!(h.child.wait().unwrap().success());
}

fn helper_forked_child_beside_a_pool() {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    // SAFETY: the child only sleeps.
    let child = unsafe {
        multiproc::Builder::new().spawn_fork(|| std::thread::sleep(Duration::from_secs(60)))
    }
    .unwrap();
    // Killed however this helper leaves.
    struct Kill(multiproc::JoinHandle<()>);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.join_timeout(T);
        }
    }
    let pid_of_child = child.pid();
    let child = Kill(child);
    let first = get(pool.submit(pid, ()).unwrap()).unwrap();
    let mut next = pool.submit(pid, ()).unwrap();
    match next.wait_timeout(Duration::from_secs(10)) {
        Ok(second) if second != first => println!("second ran on another worker"),
        other => println!("second {other:?} (the first ran on {first})"),
    }
    let last = pool.worker_pids();
    pool.close();
    println!(
        "joined {:?}",
        pool.join_timeout(Duration::from_secs(10))
            .map_err(|e| e.to_string())
    );
    drop(child);
    assert!(common::wait_gone(pid_of_child, Duration::from_secs(5)));
    let left = last
        .into_iter()
        .chain([first])
        .filter(|&p| !common::wait_gone(p, Duration::from_secs(5)))
        .count();
    println!("workers left {left}");
}

fn short_tasks_do_not_wait_behind_long_ones() {
    let pool = Pool::new(2).unwrap();
    // Both workers get a share of the queue at first; the one on the long task gives
    // its share back.
    for round in 0..3 {
        let long = pool.submit(sleep_ms, 5_000).unwrap();
        let short: Vec<_> = (0..20).map(|_| pool.submit(sleep_ms, 1).unwrap()).collect();
        let t0 = Instant::now();
        for t in short {
            assert_eq!(get(t).unwrap(), 1);
        }
        let took = t0.elapsed();
        assert!(
            !long.is_done(),
            "round {round}: the long task ended already"
        );
        assert!(
            took < Duration::from_secs(3),
            "round {round}: short tasks took {took:?}"
        );
        assert!(long.cancel());
    }
    finish(pool);
}

fn cancel_queued_and_running() {
    let pool = Pool::new(1).unwrap();
    let worker = get(pool.submit(pid, ()).unwrap()).unwrap();
    let running = running_task(&pool);
    let queued: Vec<_> = (0..5)
        .map(|_| pool.submit(sleep_ms, 30_000).unwrap())
        .collect();
    // Queued tasks (in the pool, or already in the worker's channel) are removed.
    for t in &queued {
        assert!(t.cancel());
        assert!(t.is_done());
        assert!(!t.cancel(), "cancelled twice");
    }
    for t in queued {
        assert_eq!(get(t).unwrap_err(), TaskError::Cancelled);
    }
    // The running one: its worker is killed and replaced.
    let t0 = Instant::now();
    assert!(running.cancel());
    assert_eq!(get(running).unwrap_err(), TaskError::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(common::wait_gone(worker, Duration::from_secs(5)));
    let next = get(pool.submit(pid, ()).unwrap()).unwrap();
    assert_ne!(next, worker);
    // A finished task cannot be cancelled.
    let done = pool.submit(square, 2).unwrap();
    assert!(multiproc::wait(&[&done], Some(T)).unwrap() == [0]);
    assert!(!done.cancel());
    assert_eq!(done.wait().unwrap(), 4);
    finish(pool);
}

/// A cancel that comes just as its task ends (its outcome not yet routed) must not kill
/// the worker's next task: either the cancel wins (the task ends `Cancelled`) or the task
/// does (its value, and `cancel` says false); the next task is never hit.
fn cancel_as_a_task_ends_spares_the_next() {
    let pool = Pool::new(1).unwrap();
    let started = Instant::now();
    let (mut rounds, mut cancelled, mut ended) = (0u64, 0, 0);
    while rounds < 400 && started.elapsed() < Duration::from_secs(20) {
        rounds += 1;
        let a = pool.submit(square, 3).unwrap();
        let b = pool.submit(sleep_ms, 2).unwrap();
        // Cancels at moments spread over the first 300 µs of `a`'s life.
        let pause = Duration::from_micros(rounds * 37 % 300);
        let spin = Instant::now();
        while spin.elapsed() < pause {
            std::hint::spin_loop();
        }
        let took = a.cancel();
        let outcome = get(a);
        match (took, &outcome) {
            (true, Err(TaskError::Cancelled)) => cancelled += 1,
            (false, Ok(9)) => ended += 1,
            _ => panic!("round {rounds}: cancel said {took}, the task ended {outcome:?}"),
        }
        assert_eq!(
            get(b),
            Ok(2),
            "round {rounds}: the next task was hit by a cancel meant for the one before"
        );
    }
    println!("{rounds} rounds: {cancelled} cancelled, {ended} ended first");
    finish(pool);
}

fn helper_pool_parent() {
    // Ctrl-C's default action, whatever this process inherited (a job started in the
    // background by a script has SIGINT ignored).
    // SAFETY: the default action installs no handler code.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let pool = Pool::new(3).unwrap();
    let _busy = pool.submit(sleep_ms, 600_000).unwrap();
    let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    let mut server = None;
    // The server names itself right after it is forked.
    common::eventually(T, || {
        server = common::fork_server_of(std::process::id());
        server.is_some()
    });
    let server = server.expect("this process has a fork server");
    println!("pids {} {server}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(600));
}

/// Runs `sleep 60`, sets `started` once it runs, and returns the signal that ended it.
fn sleep_program(started: Event) -> Option<i32> {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    started.set();
    let status = child.wait().unwrap();
    status.signal()
}

/// A program that handles Ctrl-C itself, with two tasks running and a third running a
/// program: says when they run, then how they ended, once it has been interrupted.
fn helper_interrupted_pool() {
    common::handle_ctrl_c();
    let pool = Pool::new(3).unwrap();
    let started: Vec<Event> = (0..3).map(|_| Event::new().unwrap()).collect();
    let tasks: Vec<_> = started[..2]
        .iter()
        .map(|s| pool.submit(started_then_sleep, (s.clone(), 1500)).unwrap())
        .collect();
    let program = pool.submit(sleep_program, started[2].clone()).unwrap();
    for s in &started {
        assert!(s.wait_timeout(T), "a task never started");
    }
    println!("running");
    assert!(common::eventually(T, common::interrupted));
    let ends: Vec<String> = tasks.into_iter().map(|t| format!("{:?}", get(t))).collect();
    println!("ends {}", ends.join(","));
    println!("program {:?}", get(program));
    finish(pool);
}

/// Ctrl-C in a terminal sends `SIGINT` to the whole foreground process group, a pool's
/// workers included. A program that handles it (to finish its work, say) finds its
/// running tasks finished: what Ctrl-C means is its owner's to decide (one that does
/// not handle it ends, its pool with it). A program a task runs stops on it as it
/// would anywhere (the worker's disposition is not inherited across `exec`).
fn ctrl_c_is_left_to_the_pools_owner() {
    let mut h = Helper::start("interrupted_pool");
    h.expect("running", T);
    h.ctrl_c();
    assert_eq!(h.expect("ends ", T), "Ok(1500),Ok(1500)");
    assert_eq!(h.expect("program ", T), "Ok(Some(2))");
    assert!(h.wait(T).success());

    // A program that leaves Ctrl-C as it is ends, and its workers and server with it.
    let (mut h, pids) = pool_parent();
    let tree = common::descendants_of(h.child.id());
    h.ctrl_c();
    assert_eq!(h.wait(T).signal(), Some(libc::SIGINT));
    all_gone_soon(&pids, "its interrupted parent");
    assert_eq!(common::reap_all(&tree, T), [], "left running");
}

/// The `pool_parent` helper, with the pids it printed: its pool's three workers and its
/// fork server.
fn pool_parent() -> (Helper, Vec<u32>) {
    let h = Helper::start("pool_parent");
    let pids = h.expect_pids("pids ", T);
    assert_eq!(pids.len(), 4, "{pids:?}");
    (h, pids)
}

/// Asserts that each of `pids` is gone within 5 seconds in all, as the processes of a
/// program that ended (`parent`, for the message) must be.
fn all_gone_soon(pids: &[u32], parent: &str) {
    let t = Instant::now();
    for &p in pids {
        assert!(
            common::wait_gone(p, Duration::from_secs(5).saturating_sub(t.elapsed())),
            "pid {p} outlived {parent} by 5 seconds"
        );
    }
}

fn aborts(_: u32) -> u32 {
    std::process::abort()
}

/// Six tasks that each abort their worker, on a pool of one, each waited for (so that
/// this thread routes outcomes too); prints how each ended.
fn helper_aborting_tasks() {
    let p = Pool::new(1).unwrap();
    let tasks: Vec<_> = (0..6).map(|i| p.submit(aborts, i).unwrap()).collect();
    let ends: Vec<String> = tasks
        .into_iter()
        .map(|t| match get(t) {
            Err(TaskError::WorkerDied(_)) => "died".to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    println!("ends {}", ends.join(","));
    finish(p);
}

/// A worker killed while the fork server is stopped: its end is relayed, and its
/// replacement forked, only once the server runs again. The pool's thread waits for
/// both, but holds nothing a caller needs meanwhile: a `submit` returns at once, and a
/// task's `wait_timeout` (which routes outcomes while it waits) by its timeout. The
/// thread waited for the relay (a second per look, two looks) under the lock that
/// `submit` takes, and for the replacement's start under the one that routing takes.
fn helper_stopped_server() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(get(pool.submit(sleep_ms, 0).unwrap()).unwrap(), 0);
    let mut busy = pool.submit(sleep_ms, 3_000).unwrap();
    let server = common::fork_server_of(std::process::id()).unwrap();
    let resume = common::stopped(server);
    let pids = pool.worker_pids();
    common::sigkill(pids[0]);
    // Long enough for the pool's thread to find the worker dead and start waiting.
    std::thread::sleep(Duration::from_millis(100));
    let submit_and_wait = || {
        let t0 = Instant::now();
        let mut queued = pool.submit(sleep_ms, 0).unwrap();
        let waited = queued.wait_timeout(Duration::from_millis(200));
        (queued, waited, t0.elapsed())
    };
    // While the pool's thread waits for the relay (a second), then once it has given
    // up on it and settles the dead worker (which waited a second more for the
    // status, under the locks), then starts its replacement.
    let (first, waited, took) = submit_and_wait();
    std::thread::sleep(Duration::from_millis(1_300));
    let (second, waited_again, took_again) = submit_and_wait();
    println!(
        "waited {} ms, then {} ms",
        took.as_millis(),
        took_again.as_millis()
    );
    drop(resume);
    for (task, waited) in [(first, waited), (second, waited_again)] {
        match waited {
            Err(TaskError::Timeout) => assert_eq!(get(task).unwrap(), 0),
            done => assert_eq!(done.unwrap(), 0),
        }
    }
    // The killed worker may have held the busy task: it failed then.
    let _ = busy.wait_timeout(T);
    finish(pool);
}

fn a_submit_and_a_wait_keep_their_time_while_a_worker_is_replaced() {
    let mut h = Helper::start("stopped_server");
    let line = h.expect("waited ", T);
    let ms: Vec<u128> = line
        .split(' ')
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    assert_eq!(ms.len(), 2, "{line}");
    assert!(
        ms.iter().all(|&ms| ms < 1000),
        "a submit and a wait of 200 ms took {line}"
    );
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// A new worker's first report (that it is ready) is not lost when a thread waiting for
/// a task routes it before the engine has put the worker in its table (the engine is
/// held there for 100 ms by a debug-build hook): each task that kills its worker fails
/// alone, rather than count as a worker that failed to start, three of which made the
/// pool give up.
fn a_new_workers_ready_report_is_not_lost() {
    if !cfg!(debug_assertions) {
        panic!("this test needs debug assertions (the pool's start-delay hook)");
    }
    let mut h = Helper::start_with(
        "aborting_tasks",
        std::env::current_exe().unwrap(),
        &[("MULTIPROC_TEST_WORKER_START_DELAY_MS", "100")],
    );
    assert_eq!(h.expect("ends ", T), "died,died,died,died,died,died");
    assert!(h.wait(T).success());
}

/// A worker stopped (`SIGSTOP`) while it holds the results channel's producers' lock
/// (a debug-build hook stops the first worker to send an outcome there): the other
/// worker's outcomes waited for that lock, and the pool for a `SIGCONT`, for ever. The
/// pool kills the stopped holder after a second: its task fails `WorkerDied(SIGKILL)`,
/// every other task finishes, and no worker is left.
fn a_worker_stopped_holding_the_results_lock_is_killed() {
    if !cfg!(debug_assertions) {
        panic!("this test needs debug assertions (the worker's stop-holding hook)");
    }
    let dir = common::tempdir("stopped-holder");
    let mark = dir.join("stopped");
    let mut h = Helper::start_with(
        "stopped_holder",
        std::env::current_exe().unwrap(),
        &[(
            "MULTIPROC_TEST_STOP_HOLDING_RESULTS",
            mark.to_str().unwrap(),
        )],
    );
    let ends = h.expect("ends ", Duration::from_secs(20));
    assert!(mark.exists(), "no worker stopped holding the lock");
    let died: Vec<_> = ends.split(',').filter(|e| *e != "ok").collect();
    assert_eq!(died, ["died(SIGKILL)"], "{ends}");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn helper_stopped_holder() {
    let pool = Pool::new(2).unwrap();
    let tasks: Vec<_> = (0..20).map(|i| pool.submit(square, i).unwrap()).collect();
    let ends: Vec<String> = tasks
        .into_iter()
        .enumerate()
        .map(|(i, mut t)| match t.wait_timeout(Duration::from_secs(10)) {
            Ok(v) if v == (i * i) as u64 => "ok".to_string(),
            Err(TaskError::WorkerDied(Some(s))) if s.signal() == Some(Signal::KILL) => {
                "died(SIGKILL)".to_string()
            }
            other => format!("{other:?}"),
        })
        .collect();
    println!("ends {}", ends.join(","));
    finish(pool);
}

/// A `map_with` context that, dropped, leaves a file named for the process it was
/// dropped in, in the directory it names.
#[derive(Serialize, Deserialize)]
struct DropMark(String);

impl Drop for DropMark {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("{}/dropped-{}", self.0, std::process::id()), "");
    }
}

fn marked(_: &DropMark, x: u64) -> u64 {
    x + 1
}

/// The workers are told to drop a `map_with` context once the map is over, also when
/// the first telling is refused as a full job channel refuses it (a debug-build hook
/// refuses it here): the drop is sent again (it was lost, and the context, a model or a
/// table, stayed in the worker until it exited).
fn a_context_drop_a_full_job_channel_refused_goes_later() {
    if !cfg!(debug_assertions) {
        panic!("this test needs debug assertions (the pool's refuse-a-drop hook)");
    }
    let dir = common::tempdir("context-drop");
    let mut h = Helper::start_with(
        "context_drop",
        std::env::current_exe().unwrap(),
        &[
            ("MULTIPROC_TEST_REFUSE_CONTEXT_DROPS", "1"),
            ("MP_TEST_DIR", dir.to_str().unwrap()),
        ],
    );
    assert_eq!(h.expect("map ", T), "Ok([2, 3, 4])");
    assert_eq!(h.expect("dropped in the worker ", T), "true");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn helper_context_drop() {
    let dir = std::env::var("MP_TEST_DIR").unwrap();
    let pool = Pool::new(1).unwrap();
    assert!(common::eventually(T, || pool.worker_pids().len() == 1));
    let worker = pool.worker_pids()[0];
    println!(
        "map {:?}",
        pool.map_with(DropMark(dir.clone()), marked, vec![1u64, 2, 3])
    );
    // While the pool lives: its worker drops what it holds as it exits anyway.
    let mark = std::path::PathBuf::from(format!("{dir}/dropped-{worker}"));
    let t = Instant::now();
    while !mark.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("dropped in the worker {}", mark.exists());
    finish(pool);
}

/// Workers lost together are started again one at a time, the engine keeping
/// timeouts between starts: with each start held up 1 s (a debug-build hook), a task
/// that outran its 300 ms timeout while three workers were started again was stopped
/// after all three (3 s), and is now stopped after the first (its end is seen after
/// the next: 2 s).
fn a_task_times_out_while_lost_workers_start_again() {
    if !cfg!(debug_assertions) {
        panic!("this test needs debug assertions (the pool's start-delay hook)");
    }
    let mut h = Helper::start_with(
        "slow_starts",
        std::env::current_exe().unwrap(),
        &[("MULTIPROC_TEST_WORKER_START_DELAY_MS", "1000")],
    );
    let timed_out = h.expect("timed out after ms ", T);
    let ms: u64 = timed_out.parse().unwrap();
    assert!(ms < 2500, "timed out after {ms} ms");
    assert_eq!(h.expect("aborted ", T), "3");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

fn helper_slow_starts() {
    let pool = Pool::new(4).unwrap();
    assert!(common::eventually(T, || pool.worker_pids().len() == 4));
    // Warm: each worker has taken a task.
    let warm: Vec<_> = (0..8).map(|x| pool.submit(square, x).unwrap()).collect();
    for t in warm {
        get(t).unwrap();
    }
    let t0 = Instant::now();
    let mut slow = pool
        .submit_with(
            sleep_ms,
            30_000,
            multiproc::TaskOptions::new().timeout(Duration::from_millis(300)),
        )
        .unwrap();
    let aborts: Vec<_> = (0..3)
        .map(|_| pool.submit(crash, Crash::Abort).unwrap())
        .collect();
    let ended = slow.wait_timeout(T);
    assert_eq!(ended, Err(TaskError::TimedOut));
    println!("timed out after ms {}", t0.elapsed().as_millis());
    let aborted = aborts
        .into_iter()
        .map(get)
        .filter(|r| matches!(r, Err(TaskError::WorkerDied(_))))
        .count();
    println!("aborted {aborted}");
    finish(pool);
}

fn parent_sigkilled_takes_workers_along() {
    let (mut h, pids) = pool_parent();
    let tree = h.sigkill();
    all_gone_soon(&pids, "its SIGKILLed parent");
    assert_eq!(common::reap_all(&tree, T), [], "left running");
}

/// Counts its run in `runs[i]`, works a little, returns `i`.
fn counted((runs, i): (Array<u32>, usize)) -> usize {
    runs.lock().unwrap_or_else(OwnerDied::into_inner)[i] += 1;
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(150) {
        std::hint::spin_loop();
    }
    i
}

fn ten_thousand_tasks_twenty_killed_workers() {
    const N: usize = 10_000;
    let pool = Pool::new(4).unwrap();
    let runs = Array::<u32>::new(N).unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|i| pool.submit(counted, (runs.clone(), i)).unwrap())
        .collect();
    let stop = AtomicBool::new(false);
    let killed = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut killed = HashSet::new();
            while killed.len() < 20 && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                let pids = pool.worker_pids();
                if pids.is_empty() {
                    continue;
                }
                let victim = pids[fastrand::usize(..pids.len())];
                if killed.insert(victim) {
                    // SAFETY: kill(2) on a pool worker this test started.
                    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
                }
            }
            killed
        });
        let mut ok = 0;
        let mut died = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            match get(t) {
                Ok(v) => {
                    assert_eq!(v, i);
                    ok += 1;
                }
                Err(TaskError::WorkerDied(Some(s))) if s.signal() == Some(Signal::KILL) => {
                    died += 1;
                }
                Err(e) => panic!("task {i}: {e:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let killed = killer.join().unwrap();
        assert_eq!(ok + died, N);
        assert!(
            died <= killed.len(),
            "{died} failed for {} kills",
            killed.len()
        );
        println!(
            "{} workers killed, {died} tasks failed, {ok} succeeded",
            killed.len()
        );
        killed
    });
    assert!(
        killed.len() >= 5,
        "the pool finished before the kills: {}",
        killed.len()
    );
    // Nothing ran twice; every successful task ran exactly once.
    let counts = runs.lock().unwrap_or_else(OwnerDied::into_inner).to_vec();
    assert!(counts.iter().all(|&c| c <= 1), "a task ran twice");
    assert!(counts.iter().filter(|&&c| c == 1).count() >= N - killed.len());
    finish(pool);
    for p in killed {
        assert!(common::wait_gone(p, Duration::from_secs(5)));
    }
}

fn endless_imap_for_1000_items() {
    let pool = Pool::new(2).unwrap();
    let got: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(1000)
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let mut got: Vec<u64> = pool
        .imap_unordered(square, 0u64..)
        .take(1000)
        .map(Result::unwrap)
        .collect();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 1000);
    // The pool is idle again: what was in flight was dropped or finished.
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    let finite: Vec<u64> = pool.imap(square, 0..10).map(Result::unwrap).collect();
    assert_eq!(finite.len(), 10);
    assert_eq!(pool.imap(square, Vec::new()).count(), 0);
    finish(pool);
}

fn crash_at_three(x: u32) -> u32 {
    if x == 3 {
        std::process::abort();
    }
    if x == 5 {
        panic!("five");
    }
    x
}

/// Item 0 says it started and waits for `release`; every item counts its run.
fn counted_run((runs, started, release, x): (Value<u32>, Event, Event, u64)) -> u64 {
    if x == 0 {
        started.set();
        release.wait_timeout(T);
    }
    *runs.lock().unwrap_or_else(OwnerDied::into_inner) += 1;
    x
}

/// Dropping an `imap` drops the items not begun, also those already sent to a worker
/// (which holds the next one or more while it runs one).
fn a_dropped_imap_runs_no_more_items() {
    let pool = Pool::new(1).unwrap();
    let (runs, started, release) = (
        Value::new(0u32).unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let items = (0..20u64).map(|x| (runs.clone(), started.clone(), release.clone(), x));
    let mut it = pool.imap(counted_run, items);
    assert_eq!(
        it.next_timeout(Duration::from_millis(1)),
        Some(Err(TaskError::Timeout))
    );
    assert!(started.wait_timeout(T), "item 0 never started");
    drop(it);
    release.set();
    // The worker has finished item 0 when a task sent after it returns.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_eq!(
        *runs.lock().unwrap(),
        1,
        "items ran after the imap was dropped"
    );
    finish(pool);
}

fn imap_yields_each_failure_in_place() {
    let pool = Pool::new(2).unwrap();
    let got: Vec<_> = pool.imap(crash_at_three, 0..8).collect();
    assert_eq!(got.len(), 8);
    for (x, r) in got.into_iter().enumerate() {
        match x {
            3 => assert!(matches!(r, Err(TaskError::WorkerDied(_))), "{r:?}"),
            5 => assert_eq!(r.unwrap_err().panic().unwrap().message(), "five"),
            _ => assert_eq!(r.unwrap(), x as u32),
        }
    }
    finish(pool);
}

fn tasks_awaited_in_tokio() {
    let pool = Pool::new(2).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..20).map(|x| pool.submit(square, x).unwrap()).collect();
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        for (x, h) in handles.into_iter().enumerate() {
            let r = tokio::time::timeout(T, h).await.unwrap().unwrap();
            assert_eq!(r.unwrap(), (x * x) as u64);
        }
        let crashed = pool.submit(crash, Crash::Abort).unwrap();
        let r = tokio::time::timeout(T, crashed).await.unwrap();
        assert!(matches!(r, Err(TaskError::WorkerDied(_))), "{r:?}");
    });
    // Awaiting a slow task does not block the thread: on a runtime with a single thread,
    // timer ticks go on while the task is awaited, and end long before it does.
    let one_thread = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    one_thread.block_on(async {
        let mut slow = pool.submit(sleep_ms, 2_000).unwrap();
        let ticks = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            r = &mut slow => panic!("the slow task ({r:?}) ended before 50 ms of ticks"),
            () = ticks => {}
        }
        assert_eq!(tokio::time::timeout(T, slow).await.unwrap().unwrap(), 2_000);
    });
    finish(pool);
}

/// An `imap` stream polled on the pool's own thread (in a done-callback, where nothing
/// else routes outcomes) waits for its next outcome a while at a time, as a `Task` does:
/// a timeout around it ends in time (the poll waited for the whole 2 s task).
fn an_imap_stream_polled_in_a_callback_gives_its_thread_back() {
    let pool = Arc::new(Pool::new(1).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let p = Arc::clone(&pool);
    pool.submit(square, 2).unwrap().on_done(move |_| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let t0 = Instant::now();
        let timed_out = runtime.block_on(async {
            let mut stream = p.imap(sleep_ms, [2_000u64]).into_stream();
            let next = futures_lite::StreamExt::next(&mut stream);
            tokio::time::timeout(Duration::from_millis(50), next)
                .await
                .is_err()
        });
        let _ = tx.send((timed_out, t0.elapsed()));
    });
    let (timed_out, took) = rx.recv_timeout(T).unwrap();
    finish(common::sole(pool));
    assert!(timed_out, "the timeout did not end the wait ({took:?})");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

/// A `Task` polled as a future and then dropped (a timeout around it ran out, say) lets
/// go of the waker it was given: it was kept until the task ended, holding the
/// runtime's task and what that holds, for ever for a task that never ends.
fn a_dropped_task_lets_go_of_its_waker() {
    struct Counted;
    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }
    let pool = Pool::new(1).unwrap();
    let mut task = pool.submit(sleep_ms, 300).unwrap();
    let counted = Arc::new(Counted);
    let waker = std::task::Waker::from(Arc::clone(&counted));
    let mut cx = std::task::Context::from_waker(&waker);
    let polled = std::future::Future::poll(std::pin::Pin::new(&mut task), &mut cx);
    drop(waker);
    let kept = Arc::strong_count(&counted);
    drop(task);
    let after = Arc::strong_count(&counted);
    finish(pool);
    assert!(polled.is_pending());
    assert_eq!(kept, 2, "the waiting task keeps its waker");
    assert_eq!(after, 1, "the dropped task still holds its waker");
}

fn take_unserializable(_: Unserializable) -> u32 {
    1
}

fn give_unserializable(_: ()) -> Unserializable {
    Unserializable
}

/// Encodes fine, refuses to decode.
#[derive(Debug)]
struct Undecodable;

impl Serialize for Undecodable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(7)
    }
}

impl<'de> Deserialize<'de> for Undecodable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("this value refuses to be decoded"))
    }
}

fn take_undecodable(_: Undecodable) -> u32 {
    1
}

fn give_undecodable(_: ()) -> Undecodable {
    Undecodable
}

fn chain_length(c: Chain) -> usize {
    c.links()
}

fn count_units(v: Vec<()>) -> usize {
    v.len()
}

/// Values past the format's limits (nesting deeper than 1024 levels, written flat by
/// the sender, see `Chain`; more than 2^24 elements that take no bytes) fail their task
/// with a reason; the worker decodes nothing unbounded and lives on.
fn oversized_shapes_fail_the_task() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.worker_pids();
    assert_eq!(pool.apply(chain_length, Chain::of(1000)).unwrap(), 1000);
    let err = pool.apply(chain_length, Chain::of(2000)).unwrap_err();
    assert!(
        matches!(&err, TaskError::Codec(e) if e.to_string().contains("deeper than 1024 levels")),
        "{err}"
    );
    assert_eq!(pool.apply(count_units, vec![(); 1 << 24]).unwrap(), 1 << 24);
    let err = pool
        .apply(count_units, vec![(); (1 << 24) + 1])
        .unwrap_err();
    assert!(
        matches!(&err, TaskError::Codec(e) if e.to_string().contains("take no bytes")),
        "{err}"
    );
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    assert_eq!(pool.worker_pids(), worker);
    finish(pool);
}

/// Leaves the worker no free descriptor (at most 256 are open), then returns `size`
/// bytes: a result over 2 MiB travels in a memory file of its own, which cannot be made.
fn big_result_without_descriptors(size: usize) -> Vec<u8> {
    // Left open on purpose, until the worker exits.
    std::mem::forget(common::use_up_descriptors());
    vec![7; size]
}

fn a_result_that_cannot_be_sent_fails_its_task() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.worker_pids();
    let err = get(pool
        .submit(big_result_without_descriptors, 3 << 20)
        .unwrap())
    .unwrap_err();
    assert!(
        matches!(&err, TaskError::Codec(e) if e.to_string().contains("could not be sent")),
        "{err}"
    );
    // The worker lives on; small results need no descriptor.
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    assert_eq!(pool.worker_pids(), worker);
    finish(pool);
}

/// Sets `started` (if any), waits for `go`, then returns `size` bytes (over 2 MiB: in a
/// memory file of its own) and `locks` new locks (a descriptor each).
fn big_result_on(
    (started, go, size, locks): (Option<Event>, Event, usize, usize),
) -> (Vec<u8>, Vec<multiproc::Lock>) {
    if let Some(started) = started {
        started.set();
    }
    assert!(go.wait_timeout(T));
    let locks = (0..locks)
        .map(|_| multiproc::Lock::new().unwrap())
        .collect();
    (vec![7; size], locks)
}

/// Sets `e`; with `die`, then ends the worker.
fn set_event((e, die): (Event, bool)) {
    e.set();
    if die {
        std::process::exit(3);
    }
}

/// What happens to a pool's large result while the pool's process has no descriptor
/// free.
#[derive(Clone, Copy, Serialize, Deserialize)]
enum NoRoom {
    /// Descriptors are freed after half a second.
    ForAWhile,
    /// As `ForAWhile`, and the worker dies right after sending the result.
    WorkerDies,
    /// The pool is terminated while the result waits (which carries 100 descriptors
    /// more than its memory file, as for `ForGood`): how long that took.
    Terminated,
    /// Descriptors stay used up until the task is done, and the result carries 100
    /// more descriptors than its memory file (more than the pool frees as it gives
    /// up).
    ForGood,
}

/// A pool in a process of its own that uses up its descriptors while a large result
/// comes back: what the task's wait said then (for `ForGood`: what the task ended
/// with), the result's length once descriptors are free again, how the next task
/// ended, and a task after them.
fn pool_out_of_descriptors((size, how): (usize, NoRoom)) -> (String, usize, String, u64) {
    let pool = Pool::new(1).unwrap();
    let (go, sent) = (Event::new().unwrap(), Event::new().unwrap());
    let locks = if let NoRoom::ForGood | NoRoom::Terminated = how {
        100
    } else {
        0
    };
    let mut task = pool
        .submit(big_result_on, (None, go.clone(), size, locks))
        .unwrap();
    // The worker begins this one once it has sent the first one's result.
    let die = matches!(how, NoRoom::WorkerDies);
    let next = pool.submit(set_event, (sent.clone(), die)).unwrap();
    // The process's CPU time (read with no descriptor: `/proc` cannot be opened while
    // they are used up).
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let open = common::use_up_descriptors();
    go.set();
    assert!(sent.wait_timeout(T));
    if let NoRoom::Terminated = how {
        // Let the result be tried once at least.
        let _ = task.wait_timeout(Duration::from_millis(100));
        let t = Instant::now();
        pool.terminate();
        let joined = pool.join_timeout(T);
        let took = t.elapsed();
        drop(open);
        return (
            format!("{joined:?} in {} ms", took.as_millis()),
            0,
            String::new(),
            0,
        );
    }
    if let NoRoom::ForGood = how {
        let ended = format!("{:?}", get(task).map(|v| v.0.len() + v.1.len()));
        // The pool gave up, which closed some descriptors of its own: used up again,
        // the result still cannot be taken, and the pool's thread leaves it (it tried
        // again and again, a whole CPU's worth).
        let mut more = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            more.push(f);
        }
        let before = cpu();
        std::thread::sleep(Duration::from_millis(500));
        let used = cpu() - before;
        assert!(
            used < Duration::from_millis(200),
            "{used:?} of CPU in 500 ms"
        );
        drop((open, more));
        pool.terminate();
        return (ended, 0, String::new(), 0);
    }
    // Long enough for the result to be tried many times (and a dead worker seen), on a
    // timer: the pool's thread does not spin.
    let before = cpu();
    let meanwhile = match task.wait_timeout(Duration::from_millis(500)) {
        Err(TaskError::Timeout) => "waiting".to_owned(),
        other => format!("{:?}", other.map(|v| v.0.len() + v.1.len())),
    };
    let used = cpu() - before;
    assert!(
        used < Duration::from_millis(200),
        "{used:?} of CPU in 500 ms"
    );
    drop(open);
    let len = get(task).map_or(0, |v| v.0.len() + v.1.len());
    let next = format!("{:?}", get(next));
    let after = pool.apply(square, 5).unwrap_or(0);
    finish(pool);
    (meanwhile, len, next, after)
}

/// Two results that carry one lock and 50 locks (a descriptor each) come back while a
/// pool's process has no descriptor free; 2.5 s later one descriptor is freed (room for
/// the first result's lock, not for the second's), 3.5 s after that all of them. What
/// each task ended with (the second: also what it said after those 3.5 s).
fn pool_out_of_descriptors_one_at_a_time(_: ()) -> (String, String) {
    let pool = Pool::new(1).unwrap();
    let (go, started) = (Event::new().unwrap(), Event::new().unwrap());
    let mut first = pool
        .submit(big_result_on, (None, go.clone(), 0, 1))
        .unwrap();
    // Begun once the first result is sent; its own is sent at once.
    let mut second = pool
        .submit(big_result_on, (Some(started.clone()), go.clone(), 0, 50))
        .unwrap();
    let mut open = common::use_up_descriptors();
    go.set();
    assert!(started.wait_timeout(T));
    // Nothing can be taken yet.
    assert!(matches!(
        first.wait_timeout(Duration::from_millis(2500)),
        Err(TaskError::Timeout)
    ));
    drop(open.pop());
    // Past the 5 s the first result would have waited: the second one has waited
    // 3.5 s.
    let meanwhile = match second.wait_timeout(Duration::from_millis(3500)) {
        Err(TaskError::Timeout) => "waiting".to_owned(),
        other => format!("{:?}", other.map(|v| v.1.len())),
    };
    drop(open);
    let first = format!("{:?}", get(first).map(|v| v.1.len()));
    let second = format!("{meanwhile}, then {:?}", get(second).map(|v| v.1.len()));
    finish(pool);
    (first, second)
}

/// A result too large for the ring travels in a memory file of its own, which the
/// pool's process must take in: while that process has no descriptor free, the result
/// waits, and it is delivered once one is, also when its worker died in the meantime.
/// The pool gave up at once (the result lost, every task failed with `PoolBroken`).
fn a_result_waits_for_a_free_descriptor() {
    let run = |how| {
        let mut child = multiproc::spawn(pool_out_of_descriptors, (3 << 20, how)).unwrap();
        child.join_timeout(T).unwrap()
    };
    let (meanwhile, len, next, after) = run(NoRoom::ForAWhile);
    assert_eq!(meanwhile, "waiting");
    assert_eq!((len, next.as_str(), after), (3 << 20, "Ok(())", 25));

    // Its worker's death is settled once the result is in: the result counts.
    let (meanwhile, len, next, after) = run(NoRoom::WorkerDies);
    assert_eq!(meanwhile, "waiting");
    assert_eq!((len, after), (3 << 20, 25), "next: {next}");
    assert!(next.contains("WorkerDied"), "{next}");

    // The 5 s are counted from the last result taken: results that get through one by
    // one keep the pool going.
    let mut child = multiproc::spawn(pool_out_of_descriptors_one_at_a_time, ()).unwrap();
    let (first, second) = child.join_timeout(T).unwrap();
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("Ok(1)", "waiting, then Ok(50)")
    );

    // Terminated meanwhile: its tasks are decided, its dead settled at once (it waited
    // for the 5 s to pass, spinning).
    let (joined, ..) = run(NoRoom::Terminated);
    let ms: u64 = joined
        .strip_prefix("Ok(()) in ")
        .and_then(|s| s.strip_suffix(" ms"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{joined}"));
    assert!(ms < 2_000, "{joined}");

    // For good (5 s): the pool gives up, saying why, rather than keep its tasks
    // waiting for ever.
    let (ended, ..) = run(NoRoom::ForGood);
    assert!(
        ended.contains("PoolBroken") && ended.contains("no descriptor free for 5s"),
        "{ended}"
    );
}

/// A pool in a process of its own whose address space is capped while a 64 MiB result
/// comes back: what the task's wait said meanwhile, the result's length once the cap is
/// lifted, and a task after it.
fn pool_short_of_address_space(_: ()) -> (String, usize, u64) {
    let pool = Pool::new(1).unwrap();
    let (go, sent) = (Event::new().unwrap(), Event::new().unwrap());
    // Far more than the cap's 4 MiB of room: a thread of this process ending meanwhile
    // gives back its stack (8 MiB), which a 16 MiB result could then take.
    let mut task = pool
        .submit(big_result_on, (None, go.clone(), 64 << 20, 0))
        .unwrap();
    // The worker begins this one once it has sent the first one's result.
    let next = pool.submit(set_event, (sent.clone(), false)).unwrap();
    let cap = common::AddressSpaceCap::new();
    go.set();
    // Set once the worker has sent the result (a pool that gave up on it runs nothing
    // more, and the task has ended then).
    assert!(common::eventually(T / 2, || sent.is_set() || task.is_done()));
    let meanwhile = match task.wait_timeout(Duration::from_millis(500)) {
        Err(TaskError::Timeout) => "waiting".to_owned(),
        other => format!("{:?}", other.map(|v| v.0.len())),
    };
    drop(cap);
    let len = get(task).map_or(0, |v| v.0.len());
    get(next).unwrap();
    let after = pool.apply(square, 5).unwrap_or(0);
    finish(pool);
    (meanwhile, len, after)
}

/// A result in a memory file of its own is mapped by the pool's process: while that
/// process has no address space for it (its `RLIMIT_AS`), the result waits in the
/// channel and is delivered once there is. The pool gave up at once (the result lost,
/// every task failed with `PoolBroken`).
fn a_result_waits_for_address_space() {
    let mut child = multiproc::spawn(pool_short_of_address_space, ()).unwrap();
    let (meanwhile, len, after) = child.join_timeout(T).unwrap();
    assert_eq!((meanwhile.as_str(), len, after), ("waiting", 64 << 20, 25));
}

fn codec_failures_fail_the_task() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.worker_pids();
    let err = pool
        .submit(take_unserializable, Unserializable)
        .unwrap_err();
    assert!(
        matches!(&err, TaskError::Codec(e) if e.to_string().contains("refuses to be serialized")),
        "{err}"
    );
    let err = get(pool.submit(give_unserializable, ()).unwrap()).unwrap_err();
    assert!(
        matches!(&err, TaskError::Codec(e) if e.to_string().contains("refuses to be serialized")),
        "{err}"
    );
    let err = get(pool.submit(take_undecodable, Undecodable).unwrap()).unwrap_err();
    assert!(
        matches!(&err, TaskError::Codec(e) if e.to_string().contains("cannot decode a `pool_processes::Undecodable`")),
        "{err}"
    );
    let err = get(pool.submit(give_undecodable, ()).unwrap()).unwrap_err();
    assert!(
        matches!(&err, TaskError::Codec(e) if e.to_string().contains("cannot decode a `pool_processes::Undecodable`")),
        "{err}"
    );
    let err = pool
        .map(take_unserializable, vec![Unserializable, Unserializable])
        .unwrap_err();
    assert!(matches!(err, TaskError::Codec(_)), "{err}");
    let got: Vec<_> = pool.imap(take_unserializable, [Unserializable]).collect();
    assert!(matches!(got[..], [Err(TaskError::Codec(_))]), "{got:?}");
    // None of it cost a worker.
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    assert_eq!(pool.worker_pids(), worker);
    finish(pool);
}

/// Overwrites every channel this worker maps (from byte `from` of each segment: 4096
/// is where the messages start, after the channel's header) with noise, through
/// `/proc/self/mem`: what a task with a memory-corrupting bug might do. Waits for `go`
/// first. Returns how many channels it hit.
fn scribble_channels((go, from): (Event, u64)) -> u32 {
    use std::os::unix::fs::FileExt;
    assert!(go.wait_timeout(T));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .unwrap();
    let mut hit = 0;
    for line in maps.lines().filter(|l| l.contains("multiproc-channel")) {
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let noise = vec![0xA5u8; (end - start - from) as usize];
        mem.write_all_at(&noise, start + from).unwrap();
        hit += 1;
    }
    hit
}

fn scribbled_job_channel_replaces_the_worker() {
    let pool = Pool::new(1).unwrap();
    // Every message the worker sent so far (that it is ready, then this outcome) is
    // read: the noise below lands where no message waits in the result channel.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    let before = pool.worker_pids();
    let go = Event::new().unwrap();
    // The worker holds two jobs at first: the scribbler, and the next task, which is in
    // its job channel when the scribbler wipes the messages there.
    let scribbler = pool.submit(scribble_channels, (go.clone(), 4096)).unwrap();
    let rest: Vec<_> = (0..20u64)
        .map(|x| pool.submit(square, x).unwrap())
        .collect();
    go.set();
    // Its own outcome goes out after the noise, as a whole message: it arrives.
    let hit = get(scribbler).unwrap();
    assert!(
        hit >= 2,
        "the worker maps its job and result channels: {hit}"
    );
    // The worker finds noise where its next job was and leaves; its replacement runs
    // that job and the rest.
    for (x, task) in (0..20u64).zip(rest) {
        assert_eq!(get(task).unwrap(), x * x);
    }
    assert!(common::eventually(T, || {
        let now = pool.worker_pids();
        now.len() == 1 && now != before
    }));
    assert!(common::wait_gone(before[0], Duration::from_secs(5)));
    finish(pool);
}

fn scribbled_channel_headers_do_not_hang() {
    let pool = Pool::new(2).unwrap();
    let go = Event::new().unwrap();
    // Noise over whole channels, headers (positions, locks, counts) included: whatever
    // each side makes of it, every task ends, with a result or an error.
    let scribbler = pool.submit(scribble_channels, (go.clone(), 0)).unwrap();
    // Tasks of 2 ms: most are still queued or running when the noise lands.
    let rest: Vec<_> = (0..200u64)
        .map(|_| pool.submit(sleep_ms, 2).unwrap())
        .collect();
    go.set();
    // A worker that meets the noise dies (its task: WorkerDied); noise the pool meets
    // in its result channel breaks the pool (every task: PoolBroken, saying why), as do
    // replacements that cannot start, handed channels that are noise.
    let allowed = |r: Result<(), TaskError>| match r {
        Ok(()) | Err(TaskError::WorkerDied(_)) => {}
        Err(TaskError::PoolBroken(why)) => assert!(
            why.contains("corrupt") || why.contains("ended before taking any task"),
            "{why}"
        ),
        Err(e) => panic!("{e:?}"),
    };
    allowed(get(scribbler).map(drop));
    for task in rest {
        allowed(get(task).map(|ms| assert_eq!(ms, 2)));
    }
    let pids = pool.worker_pids();
    pool.terminate();
    drop(pool);
    for p in pids {
        assert!(
            common::wait_gone(p, Duration::from_secs(5)),
            "worker {p} left"
        );
    }
}

fn closed_and_bad_settings() {
    let e = Pool::new(0).unwrap_err();
    assert!(matches!(e, PoolError::InvalidArgument(_)), "{e}");
    let e = Pool::builder().max_tasks_per_child(0).build().unwrap_err();
    assert!(matches!(e, PoolError::InvalidArgument(_)), "{e}");
    let e = Pool::builder()
        .task_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(e, PoolError::InvalidArgument(_)), "{e}");
    let e = Pool::builder()
        .initializer(take_unserializable_init, Unserializable)
        .build()
        .unwrap_err();
    assert!(matches!(e, PoolError::InvalidArgument(_)), "{e}");

    let pool = Pool::new(2).unwrap();
    let queued: Vec<_> = (0..4).map(|_| pool.submit(sleep_ms, 50).unwrap()).collect();
    pool.close();
    assert_eq!(pool.submit(square, 1).unwrap_err(), TaskError::PoolClosed);
    assert_eq!(pool.map(square, 0..3).unwrap_err(), TaskError::PoolClosed);
    // Tasks submitted before `close` still run.
    for t in queued {
        assert_eq!(get(t).unwrap(), 50);
    }
    finish(pool);
}

fn take_unserializable_init(_: Unserializable) {}

fn terminate_and_drop_leave_nothing() {
    let pool = Pool::new(2).unwrap();
    let pids = pool.worker_pids();
    let mut tasks = vec![running_task(&pool)];
    tasks.extend((0..5).map(|_| pool.submit(sleep_ms, 30_000).unwrap()));
    let t0 = Instant::now();
    pool.terminate();
    for t in tasks {
        assert_eq!(get(t).unwrap_err(), TaskError::PoolClosed);
    }
    pool.join_timeout(T).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    for &p in &pids {
        assert!(
            common::wait_gone(p, Duration::from_secs(5)),
            "worker {p} left"
        );
    }
    assert_eq!(pool.submit(square, 1).unwrap_err(), TaskError::PoolClosed);
    drop(pool);

    // Dropping a busy pool kills its workers and fails its tasks.
    let pool = Pool::new(2).unwrap();
    let pids = pool.worker_pids();
    let task = running_task(&pool);
    drop(pool);
    assert_eq!(get(task).unwrap_err(), TaskError::PoolClosed);
    for &p in &pids {
        assert!(
            common::wait_gone(p, Duration::from_secs(5)),
            "worker {p} left"
        );
    }
}

fn event_then_sleep((_, ms): (Event, u64)) -> u64 {
    sleep_ms(ms)
}

/// `terminate` lets go of the tasks no worker holds at once, with their arguments (the
/// descriptors of the shared memory they carry), not when the pool is dropped: a
/// terminated pool kept alive held every queued task's arguments. Counted in a process
/// of its own (the other tests of this one open and close descriptors meanwhile).
fn terminate_lets_go_of_the_tasks_no_worker_holds() {
    let mut h = Helper::start("terminate_lets_go");
    let line = h.expect("fds ", T);
    let v: Vec<usize> = line.split(' ').map(|n| n.parse().unwrap()).collect();
    let (before, held, after) = (v[0], v[1], v[2]);
    assert!(
        held >= before + 20,
        "20 queued tasks with an Event each hold {} descriptors more",
        held - before
    );
    assert!(
        after <= before,
        "a terminated pool holds {} descriptors more than before its tasks were queued",
        after - before
    );
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

fn helper_terminate_lets_go() {
    let pool = Pool::new(1).unwrap();
    let running = running_task(&pool);
    let before = common::settled(common::fd_count);
    let queued: Vec<Task<u64>> = (0..20)
        .map(|_| {
            pool.submit(event_then_sleep, (Event::new().unwrap(), 30_000))
                .unwrap()
        })
        .collect();
    let held = common::settled(common::fd_count);
    pool.terminate();
    for t in queued.into_iter().chain([running]) {
        assert_eq!(get(t).unwrap_err(), TaskError::PoolClosed);
    }
    let after = common::settled(common::fd_count);
    println!("fds {before} {held} {after}");
    pool.join_timeout(T).unwrap();
}

/// Idle workers killed from outside (an operator, the OOM killer), one after another,
/// are replaced, and the pool goes on: a worker that ends idle long after it started
/// is no failed start (three of those broke the pool, every later task failing with
/// `PoolBroken`, although no task had failed).
fn idle_workers_killed_one_after_another_are_only_replaced() {
    let pool = Pool::new(2).unwrap();
    for round in 0..4 {
        let pids = pool.worker_pids();
        assert_eq!(pids.len(), 2, "round {round}: {pids:?}");
        // Ready, and idle past the time a worker that did not start properly dies in.
        std::thread::sleep(Duration::from_millis(1_300));
        let victim = pids[round % 2];
        // SAFETY: signals a worker of this pool, which reaps it.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        let replaced = common::eventually(T, || {
            let now = pool.worker_pids();
            now.len() == 2 && !now.contains(&victim)
        });
        assert!(
            replaced,
            "round {round}: worker {victim} was not replaced: {:?}",
            pool.worker_pids()
        );
    }
    assert_eq!(get(pool.submit(square, 3).unwrap()).unwrap(), 9);
    finish(pool);
}

/// An initializer that sets going what ends its worker a while later.
fn abort_in_1200_ms(_: ()) {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(1_200));
        std::process::abort();
    });
}

/// Idle workers that crash of themselves, even well after they started, count as
/// workers that did not start properly: three in a row break the pool rather than be
/// started again for ever (only kills from outside are forgiven).
fn idle_workers_that_crash_late_still_break_the_pool() {
    let pool = Pool::builder()
        .processes(1)
        .initializer(abort_in_1200_ms, ())
        .build()
        .unwrap();
    // No worker, and none started within half a second (a replacement comes within
    // milliseconds of a death while the pool goes on).
    let none = || pool.worker_pids().is_empty();
    let broken = common::eventually(T, || {
        none() && !common::eventually(Duration::from_millis(500), || !none())
    });
    assert!(
        broken,
        "workers that kept crashing were started again for ever"
    );
    assert!(
        matches!(pool.submit(square, 2), Err(TaskError::PoolBroken(_))),
        "the pool did not give up"
    );
    drop(pool);
}

/// Counts its run, then (when `die`) waits for `go` and aborts.
fn count_then_abort((runs, die, go): (Value<u32>, bool, Event)) -> u32 {
    if !die {
        return 0;
    }
    *runs.lock().unwrap_or_else(OwnerDied::into_inner) += 1;
    go.wait_timeout(T);
    std::process::abort();
}

/// A task running when its `imap` is dropped finishes, and a failure is its end even
/// under a retry policy: nobody reads it. It was retried, running (with its side
/// effects) as often as the policy allowed, and `join` waited for all of that.
fn a_running_task_of_a_dropped_imap_is_not_retried() {
    let policy =
        RetryPolicy::attempts(3).backoff(Duration::from_millis(10), 1.0, Duration::from_millis(10));
    let pool = Pool::builder().processes(2).retry(policy).build().unwrap();
    let runs = Value::new(0u32).unwrap();
    let go = Event::new().unwrap();
    let items = vec![
        (Value::new(0u32).unwrap(), false, go.clone()),
        (runs.clone(), true, go.clone()),
    ];
    let mut results = pool.imap(count_then_abort, items);
    assert_eq!(results.next().map(Result::unwrap), Some(0));
    let begun = common::eventually(T, || {
        *runs.lock().unwrap_or_else(OwnerDied::into_inner) >= 1
    });
    assert!(begun, "the second task never began");
    drop(results);
    // Its worker dies now, while nobody reads its outcome.
    go.set();
    finish(pool);
    assert_eq!(*runs.lock().unwrap_or_else(OwnerDied::into_inner), 1);
}

/// A result type whose `Deserialize` panics on 666.
#[derive(Debug, Serialize)]
struct Picky(u64);

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        assert!(v != 666, "cannot decode 666");
        Ok(Picky(v))
    }
}

fn picky(x: u64) -> Picky {
    Picky(x)
}

/// A result that panics as it is decoded is its task's error, whether it is decoded on
/// the pool's own thread (for a done-callback) or on the waiting one; the pool goes on.
fn a_result_whose_decode_panics_fails_its_task_only() {
    let pool = Pool::new(2).unwrap();
    let panicked = |r: &Result<Picky, TaskError>| matches!(r, Err(TaskError::Codec(e)) if e.to_string().contains("cannot decode 666"));
    let (tx, rx) = std::sync::mpsc::channel();
    pool.submit(picky, 666)
        .unwrap()
        .on_done(move |r| tx.send(panicked(r)).unwrap());
    assert_eq!(rx.recv_timeout(T), Ok(true));
    let got = get(pool.submit(picky, 666).unwrap());
    assert!(panicked(&got), "{got:?}");
    // A map's results and a lazy map's, decoded on the caller's thread: the map's error,
    // or that one item's, not a panic there (it was one).
    let got = pool.map(picky, vec![1u64, 666, 2]);
    assert!(
        matches!(&got, Err(TaskError::Codec(e)) if e.to_string().contains("cannot decode 666")),
        "{got:?}"
    );
    let mut lazy = pool.imap(picky, vec![1u64, 666, 2]);
    let got: Vec<_> = (0..3).map(|_| lazy.next_timeout(T).unwrap()).collect();
    assert_eq!(got[0].as_ref().map(|p| p.0).ok(), Some(1), "{got:?}");
    assert!(panicked(&got[1]), "{got:?}");
    assert_eq!(got[2].as_ref().map(|p| p.0).ok(), Some(2), "{got:?}");
    drop(lazy);
    // The pool's thread still routes outcomes and replaces a crashed worker.
    let (tx, rx) = std::sync::mpsc::channel();
    pool.submit(picky, 7)
        .unwrap()
        .on_done(move |r| tx.send(r.as_ref().map(|p| p.0).ok()).unwrap());
    assert_eq!(rx.recv_timeout(T), Ok(Some(7)));
    let err = get(pool.submit(crash, Crash::Segfault).unwrap()).unwrap_err();
    assert!(matches!(err, TaskError::WorkerDied(_)), "{err:?}");
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
    finish(pool);
}

/// Waits too long for the clock are waits, not panics nor no wait at all: a retry
/// policy whose delay is `Duration::MAX` and a countdown of `Duration::MAX` hold their
/// task back (until the pool is terminated), and the pool goes on; a worker count
/// whose bookkeeping would overflow is refused.
fn endless_retry_delays_and_countdowns_and_too_many_workers() {
    let pool = Pool::new(2).unwrap();
    let endless = RetryPolicy::attempts(3).backoff(Duration::MAX, 2.0, Duration::MAX);
    let mut retried = pool
        .submit_with(
            crash,
            Crash::Abort,
            multiproc::TaskOptions::new().retry(endless),
        )
        .unwrap();
    let mut later = pool
        .submit_with(
            square,
            4,
            multiproc::TaskOptions::new().countdown(Duration::MAX),
        )
        .unwrap();
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
    let err = get(pool.submit(crash, Crash::Segfault).unwrap()).unwrap_err();
    assert!(matches!(err, TaskError::WorkerDied(_)), "{err:?}");
    assert_eq!(
        retried
            .wait_timeout(Duration::from_millis(300))
            .unwrap_err(),
        TaskError::Timeout
    );
    assert_eq!(
        later.wait_timeout(Duration::from_millis(300)).unwrap_err(),
        TaskError::Timeout
    );
    pool.terminate();
    assert_eq!(get(retried).unwrap_err(), TaskError::PoolClosed);
    assert_eq!(get(later).unwrap_err(), TaskError::PoolClosed);
    let err = Pool::builder().processes(usize::MAX).build().unwrap_err();
    assert!(matches!(err, PoolError::InvalidArgument(_)), "{err:?}");
}

fn fail_init(_: ()) {
    panic!("no database here");
}

fn failing_initializer_breaks_pool() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(fail_init, ())
        .build()
        .unwrap();
    let task = pool.submit(square, 2).unwrap();
    let err = get(task).unwrap_err();
    let TaskError::PoolBroken(why) = &err else {
        panic!("{err:?}");
    };
    assert!(why.contains("no database here"), "{why}");
    assert!(matches!(
        pool.submit(square, 2),
        Err(TaskError::PoolBroken(_))
    ));
    pool.join_timeout(T).unwrap();
    // One whose initializer exits cleanly breaks as well, rather than starting workers
    // again and again.
    let pool = Pool::builder()
        .processes(2)
        .initializer(exit_init, ())
        .build()
        .unwrap();
    let err = get(pool.submit(square, 2).unwrap()).unwrap_err();
    let TaskError::PoolBroken(why) = &err else {
        panic!("{err:?}");
    };
    assert!(why.contains("before taking any task"), "{why}");
    pool.join_timeout(T).unwrap();
}

fn init_unless_marked(marker: String) {
    if std::path::Path::new(&marker).exists() {
        panic!("marked: no more workers");
    }
}

fn say_started_then_sleep((started, secs): (String, u64)) {
    std::fs::write(started, b"").unwrap();
    std::thread::sleep(Duration::from_secs(secs));
}

/// A pool that breaks (its replacement workers' initializer fails three times) while
/// a long task runs: the task fails with `PoolBroken` at once, and its worker is
/// stopped with the rest, so that `join` returns (the worker ran the task to its end,
/// its result unread, and `join` waited for it: for ever, for a task that hangs).
fn a_broken_pool_stops_its_running_tasks() {
    let dir = common::tempdir("broken-pool");
    let marker = dir.join("marker").display().to_string();
    let started = dir.join("started").display().to_string();
    let pool = Pool::builder()
        .processes(2)
        .initializer(init_unless_marked, marker.clone())
        .build()
        .unwrap();
    let mut long = pool
        .submit(say_started_then_sleep, (started.clone(), 3600))
        .unwrap();
    assert!(common::eventually(T, || std::path::Path::new(&started).exists()));
    // The other worker has run its initializer (it runs a task while the first is
    // busy): started after the mark, on a loaded machine, it failed to start, and the
    // pool broke before the crash below reached a worker.
    assert_eq!(get(pool.submit(sleep_ms, 0).unwrap()), Ok(0));
    let workers = pool.worker_pids();
    std::fs::write(&marker, b"").unwrap();
    // The other worker dies with its task; its replacements cannot start.
    assert!(matches!(
        get(pool.submit(crash, Crash::Abort).unwrap()),
        Err(TaskError::WorkerDied(_))
    ));
    match long.wait_timeout(T) {
        Err(TaskError::PoolBroken(why)) => assert!(why.contains("marked"), "{why}"),
        other => panic!("the long task of a broken pool: {other:?}"),
    }
    pool.join_timeout(Duration::from_secs(10))
        .expect("a broken pool's join waited for its running task");
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived its broken pool"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Fails every other start of a worker (the second, the fourth, ...), counting the
/// starts in `dir`.
fn every_other_start_fails(dir: String) {
    let n = std::fs::read_dir(&dir).unwrap().count();
    std::fs::write(format!("{dir}/start-{n}"), b"").unwrap();
    if n % 2 == 1 {
        panic!("start {n} fails");
    }
}

fn always_panics(x: u64) -> u64 {
    panic!("task {x} panics");
}

/// A worker's start that fails after a worker ran a task (one that panicked, or
/// returned) is not one more in a row: a pool whose every other start fails, each
/// worker retired after its task, runs every task, where tasks that panicked let the
/// failures count on until the pool broke (three in a row, it says).
fn start_failures_between_panicking_tasks_do_not_break_the_pool() {
    let dir = common::tempdir("every-other-start");
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(1)
        .initializer(every_other_start_fails, dir.display().to_string())
        .build()
        .unwrap();
    for x in 0..6 {
        match get(pool.submit(always_panics, x).unwrap()) {
            Err(TaskError::Panicked(p)) => {
                assert!(p.message().contains(&format!("task {x} panics")), "{p}");
            }
            other => panic!("task {x}: {other:?}"),
        }
    }
    pool.join_timeout(T).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

fn exit_init(_: ()) {
    std::process::exit(0);
}

fn spawn_start_method() {
    let pool = Pool::builder()
        .processes(2)
        .start_method(StartMethod::Spawn)
        .name("spawned")
        .build()
        .unwrap();
    assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
    let err = get(pool.submit(crash, Crash::Segfault).unwrap()).unwrap_err();
    assert!(
        matches!(err, TaskError::WorkerDied(Some(s)) if s.signal() == Some(Signal::SEGV)),
        "{err:?}"
    );
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
    finish(pool);
}

fn byte_len(v: Vec<u8>) -> usize {
    v.len()
}

#[allow(clippy::ptr_arg)] // The context type is `Vec<u8>`: `map_with` passes `&C`.
fn with_context_len(c: &Vec<u8>, v: Vec<u8>) -> usize {
    c.len() + v.len()
}

/// A map's context of 3 MiB sent to an idle worker that does not take it at once (here
/// stopped with SIGSTOP, as a worker slow to wake is), so that the first chunk, sent
/// at once behind it, finds no room in its job ring: once the worker runs again it
/// takes the context, then the chunk. (The worker was marked stalled until it reported
/// a task, and held none: the map waited for ever.)
fn a_large_context_that_leaves_no_room_for_its_first_chunk_does_not_stall() {
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(byte_len, vec![0u8; 10]).unwrap(), 10);
    let worker = pool.worker_pids()[0];
    common::stop_or_continue(worker, true);
    assert!(common::eventually(T, || common::state_of(worker) == 'T'));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(pool.map_with(
                vec![0u8; 3 << 20],
                with_context_len,
                vec![vec![0u8; 2_500_000], vec![0u8; 10]],
            ));
        });
        // The map sends the context, and finds no room for the chunk.
        let got = rx.recv_timeout(Duration::from_millis(300));
        assert!(
            got.is_err(),
            "the map ended with its worker stopped: {got:?}"
        );
        common::stop_or_continue(worker, false);
        let got = rx.recv_timeout(T);
        if got.is_err() {
            pool.terminate();
        }
        assert_eq!(
            got.expect("the map ended within the timeout").unwrap(),
            [(3 << 20) + 2_500_000, (3 << 20) + 10]
        );
    });
}

#[cfg(feature = "progress")]
fn map_with_progress_bar() {
    let pool = Pool::new(2).unwrap();
    let got = pool.map_with_progress(square, 0..500).unwrap();
    assert_eq!(got, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    finish(pool);
}

fn helper_leaks() {
    let round = || {
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(5)
            .task_timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
        let _ = get(pool.submit(crash, Crash::Abort).unwrap());
        let t = pool.submit(sleep_ms, 30_000).unwrap();
        let _ = pool.imap(square, 0u64..).take(50).count();
        assert!(t.cancel(), "{:?}", t.wait());
        finish(pool);
    };
    round();
    let (fds, maps) = (common::fd_count(), common::map_count());
    for _ in 0..10 {
        round();
    }
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

/// Starts a child (not asked to be a daemon) that would sleep for a minute, and leaves
/// it running; returns its pid and whether it is a daemon.
fn start_grandchild(_: ()) -> (u32, bool) {
    let child = multiproc::Builder::new()
        .name("grandchild")
        .spawn(sleep_ms, 60_000)
        .unwrap();
    (child.pid(), child.is_daemon())
}

/// A worker is a daemon process, so its children are daemons too: a task's child does
/// not outlive the pool (Python refuses daemon processes children instead).
fn children_of_workers_die_with_the_pool() {
    let pool = Pool::new(1).unwrap();
    let (pid, daemon) = pool.apply(start_grandchild, ()).unwrap();
    assert!(daemon, "a worker's child is a daemon");
    assert!(
        !common::wait_gone(pid, Duration::from_millis(200)),
        "it runs meanwhile"
    );
    // The worker's own fork server and the child come to this process (a subreaper)
    // when the worker is killed: reaped below.
    let tree: Vec<u32> = pool
        .worker_pids()
        .iter()
        .flat_map(|&w| common::descendants_of(w))
        .collect();
    assert!(tree.contains(&pid));
    drop(pool);
    assert!(
        common::wait_gone(pid, T),
        "the worker's child outlived the pool"
    );
    assert_eq!(common::reap_all(&tree, T), [], "left running");
}
