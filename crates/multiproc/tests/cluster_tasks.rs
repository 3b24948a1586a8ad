//! The cluster on a real `redis-server` (started by each test): submit, map, imap,
//! stats, dead letters, retries, delays, schema refusal, corrupt entries, bad URLs and
//! credentials, idempotency and cancel, and the ugly paths: worker nodes SIGKILLed and
//! SIGSTOPped past their lease, a node drained by SIGTERM, Redis restarted mid-run.
//! Each test ends with no key of its namespace left in Redis, and the run with no
//! process and no server left.

mod cluster_common;
mod common;

use std::time::{Duration, Instant, SystemTime};

use cluster_common::{RedisServer, Resp};
use common::{Chain, Helper, trial};
use multiproc::cluster::{Cluster, TaskDef, TaskOptions, Worker, WorkerBuilder, WorkerHandle};
use multiproc::{ClusterError, RetryPolicy, TaskError};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(60);

const SQUARE: TaskDef<u64, u64> = TaskDef::new("t.square");
const SLOW_SQUARE: TaskDef<(u64, u64), u64> = TaskDef::new("t.slow_square");
const WHO: TaskDef<u64, (u64, String)> = TaskDef::new("t.who");
const ABORT: TaskDef<u64, u64> = TaskDef::new("t.abort");
const FLAKY: TaskDef<(String, u32), Result<u32, String>> = TaskDef::new("t.flaky");
const WHEN: TaskDef<u64, u64> = TaskDef::new("t.when");
const SPIN: TaskDef<u64, u64> = TaskDef::new("t.spin");
const RECORD: TaskDef<String, u64> = TaskDef::new("t.record");
const RECORD_SLOW: TaskDef<(String, u64), u64> = TaskDef::new("t.record_slow");
const CHAIN: TaskDef<Chain, u64> = TaskDef::new("t.chain");
const FLAKY_SLOW: TaskDef<(String, u32, u64), Result<u32, String>> = TaskDef::new("t.flaky_slow");
const BYTES: TaskDef<u64, Vec<u8>> = TaskDef::new("t.bytes");
const LEN: TaskDef<Vec<u8>, u64> = TaskDef::new("t.len");
const HANG_FAIL: TaskDef<String, Result<u32, String>> = TaskDef::new("t.hang_fail");
const UNDECODABLE: TaskDef<u64, DecodedOnNodes> = TaskDef::new("t.undecodable");
const UNDECODABLE_ERR: TaskDef<u64, Result<u32, DecodedOnNodes>> =
    TaskDef::new("t.undecodable_err");
const UNDECODABLE_ARG: TaskDef<PanicsDecoded, u64> = TaskDef::new("t.undecodable_arg");
const UNENCODABLE: TaskDef<u64, PanicsEncoded> = TaskDef::new("t.unencodable");
const SLOW_DECODE: TaskDef<u64, SlowDecoded> = TaskDef::new("t.slow_decode");

/// A value that takes its own number of milliseconds to decode outside a pool's
/// workers (in a worker node, as it takes the outcome from its pool, and in a client).
#[derive(Debug, PartialEq, Serialize)]
struct SlowDecoded(u64);

impl<'de> Deserialize<'de> for SlowDecoded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ms = u64::deserialize(d)?;
        if multiproc::parent_process().is_none() {
            SLOW_DECODING.store(true, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(SlowDecoded(ms))
    }
}

/// A [`SlowDecoded`] is being decoded in this process, or was.
static SLOW_DECODING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn slow_decode(ms: u64) -> SlowDecoded {
    SlowDecoded(ms)
}

/// An argument whose `Deserialize` panics (the node decodes it).
#[derive(Serialize)]
struct PanicsDecoded(u64);

impl<'de> Deserialize<'de> for PanicsDecoded {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("this argument does not decode")
    }
}

fn undecodable_arg(x: PanicsDecoded) -> u64 {
    x.0
}

/// A value whose `Serialize` panics in a worker node's process (one multiproc did not
/// start), not in its pool's workers: the node decodes the value from its pool and
/// encodes it again.
#[derive(Deserialize)]
struct PanicsEncoded(u64);

impl Serialize for PanicsEncoded {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert!(
            multiproc::parent_process().is_some(),
            "this value does not encode here"
        );
        self.0.serialize(s)
    }
}

fn unencodable(x: u64) -> PanicsEncoded {
    PanicsEncoded(x)
}

/// A value whose `Deserialize` panics outside a worker node's process (`MP_NODE` unset):
/// a client's decode panics where the node's went through.
#[derive(Debug)]
struct DecodedOnNodes(u64);

impl Serialize for DecodedOnNodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DecodedOnNodes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        assert!(
            std::env::var_os("MP_NODE").is_some(),
            "this value does not decode here"
        );
        u64::deserialize(d).map(DecodedOnNodes)
    }
}

impl std::fmt::Display for DecodedOnNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn undecodable(x: u64) -> DecodedOnNodes {
    DecodedOnNodes(x)
}

fn undecodable_err(x: u64) -> Result<u32, DecodedOnNodes> {
    Err(DecodedOnNodes(x))
}

fn chain_length(c: Chain) -> u64 {
    c.links() as u64
}

fn square(x: u64) -> u64 {
    x * x
}

fn slow_square((x, ms): (u64, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

/// The value, and the node that ran it (its `MP_NODE`, inherited by its pool workers).
fn who(x: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(1500));
    (x, std::env::var("MP_NODE").unwrap_or_default())
}

/// `n` bytes.
fn bytes(n: u64) -> Vec<u8> {
    vec![7; usize::try_from(n).unwrap()]
}

fn len(v: Vec<u8>) -> u64 {
    v.len() as u64
}

/// Counts its runs in the file `path`: an odd run hangs (for its node to be killed), an
/// even one fails; from the fourth on they succeed.
fn hang_fail(path: String) -> Result<u32, String> {
    let n = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&path, n.to_string()).unwrap();
    match n {
        4.. => Ok(n),
        _ if n % 2 == 1 => {
            std::thread::sleep(Duration::from_secs(600));
            Ok(n)
        }
        _ => Err(format!("run {n} failed")),
    }
}

fn abort(_: u64) -> u64 {
    std::process::abort()
}

/// Fails until it has run `ok_at` times (counted in a file).
fn flaky((path, ok_at): (String, u32)) -> Result<u32, String> {
    let mut n: u32 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    n += 1;
    std::fs::write(&path, n.to_string()).unwrap();
    if n >= ok_at {
        Ok(n)
    } else {
        Err(format!("run {n} failed"))
    }
}

/// When it ran (ms since the epoch).
fn when(_: u64) -> u64 {
    now_ms()
}

fn spin(ms: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {}
    ms
}

/// Appends a line to the file `path` (one line per run).
fn record(path: String) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    writeln!(f, "run").unwrap();
    1
}

/// `n` tasks that each record their runs in a file of their own in `dir` (as
/// [`record_slow`], sleeping `ms`): the files, and the tasks.
fn recorded_runs(
    c: &Cluster,
    dir: &std::path::Path,
    n: usize,
    ms: u64,
) -> (Vec<String>, Vec<multiproc::Task<u64>>) {
    let paths: Vec<String> = (0..n)
        .map(|i| dir.join(format!("run{i}")).to_string_lossy().into_owned())
        .collect();
    let tasks = c
        .submit_batch(RECORD_SLOW, paths.iter().map(|p| (p.clone(), ms)))
        .unwrap();
    (paths, tasks)
}

/// As [`record`], then sleeps `ms` milliseconds.
fn record_slow((path, ms): (String, u64)) -> u64 {
    record(path);
    std::thread::sleep(Duration::from_millis(ms));
    1
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn tasks(b: WorkerBuilder) -> WorkerBuilder {
    b.register(SQUARE, square)
        .register(SLOW_SQUARE, slow_square)
        .register(WHO, who)
        .register(ABORT, abort)
        .register_fallible(FLAKY, flaky)
        .register(WHEN, when)
        .register(SPIN, spin)
        .register(RECORD, record)
        .register(RECORD_SLOW, record_slow)
        .register(CHAIN, chain_length)
        .register_fallible(FLAKY_SLOW, flaky_slow)
        .register(BYTES, bytes)
        .register(LEN, len)
        .register_fallible(HANG_FAIL, hang_fail)
        .register(UNDECODABLE, undecodable)
        .register(UNDECODABLE_ARG, undecodable_arg)
        .register(UNENCODABLE, unencodable)
        .register(SLOW_DECODE, slow_decode)
        .register_fallible(UNDECODABLE_ERR, undecodable_err)
}

fn worker(redis: &RedisServer, ns: &str, processes: usize) -> WorkerHandle {
    node_at(&redis.url(), ns, processes)
        .build()
        .expect("start worker")
}

/// A worker of the tests' tasks on the server at `url`, with a lease of 1 s and a grace
/// of 10 s, to be built.
fn node_at(url: &str, ns: &str, processes: usize) -> WorkerBuilder {
    tasks(Worker::builder(url))
        .namespace(ns)
        .processes(processes)
        .lease(Duration::from_secs(1))
        .grace(Duration::from_secs(10))
}

fn client(redis: &RedisServer, ns: &str) -> Cluster {
    Cluster::builder(&redis.url())
        .namespace(ns)
        .build()
        .expect("connect")
}

/// A worker node in a process of its own.
fn node(redis: &RedisServer, ns: &str, name: &str) -> Helper {
    let h = Helper::start_with(
        "worker",
        std::env::current_exe().unwrap(),
        &[("MP_URL", &redis.url()), ("MP_NS", ns), ("MP_NODE", name)],
    );
    h.expect("ready", T);
    h
}

/// Ends a test: no outcome, reply list, waiter set or cancel flag is left over (only
/// the queue's own structures, idempotency records and the outcomes they keep); then
/// the queue is deleted, and nothing of the namespace is left.
fn finish(redis: &RedisServer, cluster: Cluster, ns: &str) {
    let transient = |k: &String| {
        let rest = k.split("}:").nth(1).unwrap_or("");
        (rest.starts_with("result:") && !rest.starts_with("result:k:"))
            || ["reply:", "waiters:", "cancel:"]
                .iter()
                .any(|p| rest.starts_with(p))
    };
    let prefix = format!("{ns}:");
    assert!(
        common::eventually(Duration::from_secs(5), || !redis
            .keys(&prefix)
            .iter()
            .any(transient)),
        "left over: {:?}",
        redis
            .keys(&prefix)
            .into_iter()
            .filter(transient)
            .collect::<Vec<_>>()
    );
    cluster.delete_queue("default").expect("delete queue");
    drop(cluster);
    assert!(
        common::eventually(Duration::from_secs(5), || redis.keys(&prefix).is_empty()),
        "keys left: {:?}",
        redis.keys(&prefix)
    );
}

fn helpers(mode: &str) {
    if mode == "panicking_worker" {
        // A node one of whose threads panics (`MULTIPROC_TEST_PANIC`, debug builds).
        let w = tasks(Worker::builder(&std::env::var("MP_URL").unwrap()))
            .namespace(std::env::var("MP_NS").unwrap())
            .processes(1)
            .lease(Duration::from_secs(1))
            // A stop that never gives up on what is held by itself: a dead
            // finisher's tasks must not hold it.
            .grace(Duration::MAX)
            .build()
            .expect("worker");
        println!("ready");
        assert!(common::eventually(T, || w.broken().is_some()));
        println!("broken: {}", w.broken().unwrap_or_default());
        drop(w);
        println!("dropped");
        return;
    }
    if mode == "start_and_stop" {
        // A client and a worker node that start, log what they have to say, and stop.
        let url = std::env::var("MP_URL").unwrap();
        let ns = std::env::var("MP_NS").unwrap();
        let c = Cluster::builder(&url)
            .namespace(&ns)
            .build()
            .expect("client");
        let w = node_at(&url, &ns, 1).build().expect("worker");
        w.shutdown(true);
        drop(c);
        println!("done");
        return;
    }
    if mode == "cancel_on_its_way" {
        cancel_on_its_way();
        return;
    }
    if mode == "worker" {
        let url = std::env::var("MP_URL").unwrap();
        let ns = std::env::var("MP_NS").unwrap();
        let mut handle = tasks(Worker::builder(&url))
            .namespace(ns)
            .processes(4)
            .lease(Duration::from_secs(1))
            .grace(Duration::from_secs(20));
        if let Ok(n) = std::env::var("MP_MAX_DELIVERIES") {
            handle = handle.max_deliveries(n.parse().unwrap());
        }
        if std::env::var_os("MP_IGNORE_INT").is_some() {
            // As `nohup` leaves it (for SIGHUP) and shells do for background jobs.
            #[allow(unsafe_code)]
            // SAFETY: ignoring a signal installs no handler code.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_IGN)
            };
        }
        println!("ready");
        handle.run().expect("worker");
        println!("stopped");
        if std::env::var_os("MP_LINGER").is_some() {
            // For a test to signal the process once `run` has returned.
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

fn main() {
    cluster_common::require_redis();
    common::main_checked(
        vec![
            trial("submit_map_imap_stats", submit_map_imap_stats),
            trial(
                "a_slow_outcome_holds_up_no_lease",
                a_slow_outcome_holds_up_no_lease,
            ),
            trial(
                "imap_items_that_cannot_be_submitted_fail_alone",
                imap_items_that_cannot_be_submitted_fail_alone,
            ),
            trial(
                "deliveries_lost_before_a_retry_still_count",
                deliveries_lost_before_a_retry_still_count,
            ),
            trial(
                "a_dead_consumers_tasks_behind_a_long_pending_list_move_on_in_a_lease",
                a_dead_consumers_tasks_behind_a_long_pending_list_move_on,
            ),
            trial(
                "a_dead_nodes_task_is_reclaimed_a_lease_after_a_new_node_starts",
                a_dead_nodes_task_is_reclaimed_a_lease_after_a_new_node_starts,
            ),
            trial(
                "a_short_gap_in_renewals_does_not_hold_reclaims",
                a_short_gap_in_renewals_does_not_hold_reclaims,
            ),
            trial(
                "a_full_node_keeps_the_longest_lease_current",
                a_full_node_keeps_the_longest_lease_current,
            ),
            trial(
                "imap_items_whose_send_lost_only_its_reply_yield_once",
                imap_items_whose_send_lost_only_its_reply_yield_once,
            ),
            trial(
                "tasks_of_a_read_whose_reply_was_lost_run_once_at_once",
                tasks_of_a_read_whose_reply_was_lost_run_once_at_once,
            ),
            trial(
                "tasks_of_a_lost_read_are_taken_back_by_a_full_node",
                tasks_of_a_lost_read_are_taken_back_by_a_full_node,
            ),
            trial(
                "tasks_of_a_lost_read_are_taken_back_by_a_stopping_node",
                tasks_of_a_lost_read_are_taken_back_by_a_stopping_node,
            ),
            trial(
                "executor_many_tasks_and_shutdown",
                executor_many_tasks_and_shutdown,
            ),
            trial(
                "every_wait_for_results_has_a_timeout_form",
                every_wait_for_results_has_a_timeout_form,
            ),
            trial(
                "ten_thousand_tasks_sigkill_and_sigstop",
                ten_thousand_tasks_sigkill_and_sigstop,
            ),
            trial(
                "late_ack_of_paused_node_is_rejected",
                late_ack_of_paused_node_is_rejected,
            ),
            trial(
                "aborting_task_is_dead_lettered",
                aborting_task_is_dead_lettered,
            ),
            trial("err_is_retried_per_policy", err_is_retried_per_policy),
            trial(
                "a_requeue_whose_reply_was_lost_says_it_requeued",
                a_requeue_whose_reply_was_lost_says_it_requeued,
            ),
            trial(
                "a_cancel_whose_reply_was_lost_says_it_cancelled",
                a_cancel_whose_reply_was_lost_says_it_cancelled,
            ),
            trial(
                "a_requeued_idempotent_task_answers_with_its_new_outcome",
                a_requeued_idempotent_task_answers_with_its_new_outcome,
            ),
            trial(
                "countdown_and_eta_across_worker_restart",
                countdown_and_eta_across_worker_restart,
            ),
            trial(
                "other_types_and_unknown_names_refused",
                other_types_and_unknown_names_refused,
            ),
            trial(
                "corrupt_and_foreign_entries_dead_lettered",
                corrupt_and_foreign_entries_dead_lettered,
            ),
            trial(
                "bad_urls_ports_and_credentials",
                bad_urls_ports_and_credentials,
            ),
            trial("sigterm_drains_a_worker", sigterm_drains_a_worker),
            trial("ctrl_c_drains_a_worker", ctrl_c_drains_a_worker),
            trial(
                "shutdown_waits_for_the_callbacks",
                shutdown_waits_for_the_callbacks,
            ),
            trial(
                "timed_calls_end_in_time_against_a_stopped_server",
                timed_calls_end_in_time_against_a_stopped_server,
            ),
            trial(
                "a_shutdown_timeout_stops_cancelling_at_its_deadline",
                a_shutdown_timeout_stops_cancelling_at_its_deadline,
            ),
            trial(
                "a_user_allowed_only_its_namespace_runs_everything",
                a_user_allowed_only_its_namespace_runs_everything,
            ),
            trial(
                "a_worker_whose_user_may_not_run_scripts_stops",
                a_worker_whose_user_may_not_run_scripts_stops,
            ),
            trial(
                "an_evicting_server_is_warned_of",
                an_evicting_server_is_warned_of,
            ),
            trial(
                "a_node_whose_thread_panics_stops",
                a_node_whose_thread_panics_stops,
            ),
            trial(
                "an_outcome_over_what_the_server_takes_fails_its_task",
                an_outcome_over_what_the_server_takes_fails_its_task,
            ),
            trial("redis_restarted_mid_run", redis_restarted_mid_run),
            trial(
                "outcomes_of_tasks_that_end_while_redis_is_down_are_kept",
                outcomes_of_tasks_that_end_while_redis_is_down_are_kept,
            ),
            trial(
                "idempotency_cancel_and_timeout",
                idempotency_cancel_and_timeout,
            ),
            trial(
                "a_queued_idempotent_task_cancelled_by_a_client_that_joined_it_never_runs",
                a_joined_idempotent_task_cancelled_while_queued,
            ),
            trial(
                "a_cancel_flag_the_worker_could_not_read_does_not_let_the_task_run",
                a_cancel_flag_the_worker_could_not_read_does_not_let_the_task_run,
            ),
            trial(
                "an_idempotent_task_waiting_for_its_retry_is_joined",
                an_idempotent_task_waiting_for_its_retry_is_joined,
            ),
            trial(
                "a_stopping_node_hands_back_the_tasks_it_has_not_started",
                a_stopping_node_hands_back_the_tasks_it_has_not_started,
            ),
            trial(
                "a_stopping_node_hands_back_the_chunks_it_has_not_started",
                a_stopping_node_hands_back_the_chunks_it_has_not_started,
            ),
            trial(
                "idempotency_keys_are_per_queue_and_a_failed_repeat_keeps_the_first",
                idempotency_keys_are_per_queue_and_a_failed_repeat_keeps_the_first,
            ),
            trial(
                "streams_trimmed_after_100k_tasks",
                streams_trimmed_after_100k_tasks,
            ),
            trial(
                "local_jobs_run_on_every_scheduler_of_a_cluster",
                local_jobs_run_on_every_scheduler_of_a_cluster,
            ),
            trial(
                "two_schedulers_fire_each_time_once",
                two_schedulers_fire_each_time_once,
            ),
            trial(
                "a_local_job_fires_while_the_cluster_is_paused",
                a_local_job_fires_while_the_cluster_is_paused,
            ),
            trial(
                "times_missed_while_redis_was_down_are_reported",
                times_missed_while_redis_was_down_are_reported,
            ),
            trial(
                "a_retry_later_than_the_leader_lease_is_submitted",
                a_retry_later_than_the_leader_lease_is_submitted,
            ),
            trial("tls_with_a_private_ca", tls_with_a_private_ca),
            trial("redis_lost_its_data_mid_run", redis_lost_its_data_mid_run),
            trial("bad_task_options_are_refused", bad_task_options_are_refused),
            trial(
                "a_node_stops_at_once_when_its_group_is_gone",
                a_node_stops_at_once_when_its_group_is_gone,
            ),
            trial(
                "a_full_node_stops_its_tasks_when_redis_lost_its_data",
                a_full_node_stops_its_tasks_when_redis_lost_its_data,
            ),
            trial(
                "acl_user_and_an_undecodable_result",
                acl_user_and_an_undecodable_result,
            ),
            trial(
                "a_user_without_dangerous_commands_runs_tasks",
                a_user_without_dangerous_commands_runs_tasks,
            ),
            trial(
                "a_reply_read_that_keeps_failing_backs_off",
                a_reply_read_that_keeps_failing_backs_off,
            ),
            trial(
                "a_recovery_the_server_refused_is_tried_again",
                a_recovery_the_server_refused_is_tried_again,
            ),
            trial(
                "a_result_whose_decode_panics_fails_its_task",
                a_result_whose_decode_panics_fails_its_task,
            ),
            trial(
                "a_client_without_client_id_reads_its_replies",
                a_client_without_client_id_reads_its_replies,
            ),
            trial("a_url_asking_for_resp3_works", a_url_asking_for_resp3_works),
            trial(
                "a_worker_whose_pool_broke_hands_back_and_stops",
                a_worker_whose_pool_broke_hands_back_and_stops,
            ),
            trial(
                "a_stop_unregisters_once_the_server_is_back",
                a_stop_unregisters_once_the_server_is_back,
            ),
            trial(
                "cancel_of_a_running_task_survives_its_retry",
                cancel_of_a_running_task_survives_its_retry,
            ),
            trial(
                "cancel_of_a_promoted_countdown_task_before_it_runs",
                cancel_of_a_promoted_countdown_task_before_it_runs,
            ),
            trial(
                "cancel_after_the_same_client_repeats_an_idempotent_countdown",
                cancel_after_the_same_client_repeats_an_idempotent_countdown,
            ),
            trial(
                "delete_queue_removes_retry_records",
                delete_queue_removes_retry_records,
            ),
            trial(
                "delete_queue_fails_the_deleting_clients_handles",
                delete_queue_fails_the_deleting_clients_handles,
            ),
            trial(
                "delete_queue_fails_other_clients_handles",
                delete_queue_fails_other_clients_handles,
            ),
            trial(
                "cancel_of_a_handed_back_countdown_task",
                cancel_of_a_handed_back_countdown_task,
            ),
            trial(
                "redis_restarted_empty_while_submitting",
                redis_restarted_empty_while_submitting,
            ),
            trial(
                "an_idempotency_record_lapses_with_its_outcome",
                an_idempotency_record_lapses_with_its_outcome,
            ),
            trial(
                "a_retried_repeat_leaves_no_record_past_the_outcome",
                a_retried_repeat_leaves_no_record_past_the_outcome,
            ),
            trial(
                "a_cancel_of_a_retried_task_reaches_its_submitter",
                a_cancel_of_a_retried_task_reaches_its_submitter,
            ),
            trial(
                "a_cancel_answers_by_an_outcome_on_its_way",
                a_cancel_answers_by_an_outcome_on_its_way,
            ),
            trial("a_chunk_is_finished_once", a_chunk_is_finished_once),
            trial(
                "a_failover_behind_one_address_is_followed",
                a_failover_behind_one_address_is_followed,
            ),
            trial(
                "an_idle_process_takes_a_task_whatever_the_prefetch",
                an_idle_process_takes_a_task_whatever_the_prefetch,
            ),
            trial(
                "an_argument_or_value_whose_coding_panics_fails_its_task_only",
                an_argument_or_value_whose_coding_panics_fails_its_task_only,
            ),
            trial(
                "a_repeat_during_a_countdown_longer_than_the_ttl_joins_the_task",
                a_repeat_during_a_countdown_longer_than_the_ttl_joins_the_task,
            ),
            trial(
                "a_running_idempotent_task_that_outlived_its_record_is_cancelled",
                a_running_idempotent_task_that_outlived_its_record_is_cancelled,
            ),
            trial(
                "a_server_down_longer_than_a_lease_does_not_make_a_node_reclaim_its_own_tasks",
                a_server_down_longer_than_a_lease_does_not_make_a_node_reclaim_its_own_tasks,
            ),
            trial(
                "a_server_out_of_memory_does_not_make_a_node_reclaim_its_own_tasks",
                a_server_out_of_memory_does_not_make_a_node_reclaim_its_own_tasks,
            ),
            trial(
                "a_server_out_of_memory_does_not_let_an_idle_node_take_a_running_task",
                a_server_out_of_memory_does_not_let_an_idle_node_take_a_running_task,
            ),
            trial(
                "a_server_paused_longer_than_a_lease_does_not_let_an_idle_node_take_a_running_task",
                a_server_paused_longer_than_a_lease_does_not_let_an_idle_node_take_a_running_task,
            ),
            trial(
                "a_node_started_just_after_a_server_pause_does_not_take_a_running_task",
                a_node_started_just_after_a_server_pause_does_not_take_a_running_task,
            ),
            trial(
                "a_server_refusing_writes_keeps_finished_outcomes",
                a_server_refusing_writes_keeps_finished_outcomes,
            ),
            trial(
                "a_cancel_reaches_a_task_retried_since_it_was_submitted",
                a_cancel_reaches_a_task_retried_since_it_was_submitted,
            ),
            trial(
                "a_cancel_by_a_client_that_keeps_outcomes_less_long",
                a_cancel_by_a_client_that_keeps_outcomes_less_long,
            ),
            trial(
                "a_task_timeout_counts_its_run_not_its_wait",
                a_task_timeout_counts_its_run_not_its_wait,
            ),
            trial(
                "a_stop_while_redis_is_down_ends_after_the_grace_and_a_lease",
                a_stop_while_redis_is_down_ends_after_the_grace_and_a_lease,
            ),
            trial(
                "a_worker_with_an_endless_grace_stops",
                a_worker_with_an_endless_grace_stops,
            ),
            trial(
                "an_attempt_count_at_its_end_is_finished",
                an_attempt_count_at_its_end_is_finished,
            ),
            trial(
                "clients_and_workers_of_other_layout_versions_are_answered",
                clients_and_workers_of_other_layout_versions_are_answered,
            ),
            trial(
                "a_shorter_lease_does_not_take_a_longer_ones_tasks",
                a_shorter_lease_does_not_take_a_longer_ones_tasks,
            ),
            trial(
                "endless_ttls_and_caps_are_kept_as_redis_allows",
                endless_ttls_and_caps_are_kept_as_redis_allows,
            ),
            trial(
                "a_refused_finish_holds_back_none_of_its_batch",
                a_refused_finish_holds_back_none_of_its_batch,
            ),
            trial(
                "a_second_signal_ends_a_draining_worker",
                a_second_signal_ends_a_draining_worker,
            ),
            trial(
                "a_signal_after_run_ends_the_process",
                a_signal_after_run_ends_the_process,
            ),
            trial(
                "a_repeat_outlives_its_waiter_set",
                a_repeat_outlives_its_waiter_set,
            ),
            trial(
                "a_cancel_that_said_true_wins_over_the_tasks_end",
                a_cancel_that_said_true_wins_over_the_tasks_end,
            ),
            #[cfg(feature = "sqlite")]
            trial(
                "times_a_follower_kept_are_reported_when_it_leads_with_a_store",
                times_a_follower_kept_are_reported_when_it_leads_with_a_store,
            ),
        ],
        helpers,
        Duration::from_secs(900),
        cluster_common::no_server_left,
    );
}

/// Generic over where it runs (as in the pool tests).
fn sum_of_squares<E: multiproc::Executor>(ex: &E, f: E::Func<u64, u64>) -> Result<u64, E::Error>
where
    E::Func<u64, u64>: Copy,
{
    let one = ex.submit(f, 3)?.wait().map_err(E::Error::from)?;
    let mapped: u64 = ex.map(f, 4..6)?.iter().sum();
    let lazy: u64 = ex.imap(f, 6..8).map(Result::unwrap).sum();
    Ok(one + mapped + lazy)
}

fn local_square(x: u64) -> u64 {
    x * x
}

/// With no worker to run anything (one that never comes, a server that stays out of
/// reach): `apply_timeout`, `map_timeout`, an imap's `next_timeout` and
/// `shutdown_timeout` come back in time, the first two cancelling what they gave up
/// on; an imap that timed out goes on once a worker runs its items.
fn every_wait_for_results_has_a_timeout_form() {
    let redis = RedisServer::start();
    let ns = "timeouts";
    let c = client(&redis, ns);
    let short = Duration::from_millis(300);
    let in_time = |t: Instant| t.elapsed() < Duration::from_secs(10);

    let asked = Instant::now();
    assert!(matches!(
        c.apply_timeout(SQUARE, 3, short),
        Err(ClusterError::Task(TaskError::Timeout))
    ));
    assert!(matches!(
        c.map_timeout(SQUARE, 0..10, short),
        Err(ClusterError::Task(TaskError::Timeout))
    ));
    assert!(in_time(asked), "{:?}", asked.elapsed());
    // What they gave up on was taken out of the queue.
    assert!(
        common::eventually(T, || c.stats().is_ok_and(|s| s.waiting == 0)),
        "{:?}",
        c.stats()
    );

    let mut ordered = c.imap(SQUARE, 0..3u64);
    let mut unordered = c.imap_unordered(SQUARE, 3..5u64);
    let asked = Instant::now();
    assert_eq!(ordered.next_timeout(short), Some(Err(TaskError::Timeout)));
    assert_eq!(unordered.next_timeout(short), Some(Err(TaskError::Timeout)));
    assert!(in_time(asked), "{:?}", asked.elapsed());
    let w = worker(&redis, ns, 1);
    assert_eq!(ordered.next_timeout(T), Some(Ok(0)));
    assert_eq!(ordered.collect::<Vec<_>>(), [Ok(1), Ok(4)]);
    let mut rest: Vec<u64> = unordered.map(Result::unwrap).collect();
    rest.sort_unstable();
    assert_eq!(rest, [9, 16]);
    w.shutdown(true);

    // A task no worker runs: the shutdown's wait ends at its timeout, and with its
    // pending tasks cancelled, at once.
    let queued = c.submit(SQUARE, 6).unwrap();
    let asked = Instant::now();
    assert!(!c.shutdown_timeout(false, short));
    assert!(in_time(asked), "{:?}", asked.elapsed());
    assert!(c.shutdown_timeout(true, T));
    assert_eq!(queued.wait().unwrap_err(), TaskError::Cancelled);
    finish(&redis, c, ns);
}

fn executor_many_tasks_and_shutdown() {
    let redis = RedisServer::start();
    let ns = "executor";
    let c = client(&redis, ns);
    // Queued before any worker starts: they run once one does.
    let waiting: Vec<_> = (0..3).map(|x| c.submit(SQUARE, x).unwrap()).collect();
    let w = worker(&redis, ns, 2);
    assert_eq!(
        sum_of_squares(&c, SQUARE).unwrap(),
        (3..8u64).map(|x| x * x).sum::<u64>()
    );
    for t in waiting {
        assert!(t.wait().is_ok());
    }
    // Tasks of a cluster and of a local pool, waited for together; a callback.
    let pool = multiproc::Pool::new(1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let remote = c.submit(SLOW_SQUARE, (5, 2000)).unwrap();
    remote.on_done(move |o| tx.send(o.clone()).unwrap());
    let tasks = vec![remote, pool.submit(local_square, 6).unwrap()];
    let order: Vec<(usize, u64)> = multiproc::as_completed(tasks)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    assert_eq!(order, [(1, 36), (0, 25)]);
    assert_eq!(rx.recv_timeout(T).unwrap(), Ok(25));
    // A callback that waits for another task of the client: its outcome arrives while
    // the callback runs (the thread that read the outcomes ran the callbacks and waited
    // for itself: every task of the client hung, and so did its drop).
    let (tx, rx) = std::sync::mpsc::channel();
    let mut first = c.submit(SLOW_SQUARE, (3, 300)).unwrap();
    let mut second = c.submit(SLOW_SQUARE, (4, 1000)).unwrap();
    first.on_done(move |_| {
        let _ = tx.send(second.wait_timeout(Duration::from_secs(10)));
    });
    assert_eq!(rx.recv_timeout(T).expect("the callback ended"), Ok(16));
    assert_eq!(first.wait_timeout(T).unwrap(), 9);
    let tasks = [
        c.submit(SLOW_SQUARE, (2, 30_000)).unwrap(),
        pool.submit(|_: u64| -> u64 { panic!("a local failure") }, 0)
            .unwrap(),
    ];
    let (done, pending) = multiproc::wait_tasks(&tasks, multiproc::Return::FirstException, Some(T));
    assert_eq!((done, pending), (vec![1], vec![0]));
    // Shutdown: the slow one is cancelled (stopped at its worker's next renewal); no
    // new submissions.
    c.shutdown(true, true);
    let [slow, _] = tasks;
    assert_eq!(slow.wait().unwrap_err(), TaskError::Cancelled);
    assert!(matches!(
        c.submit(SQUARE, 1),
        Err(ClusterError::Task(TaskError::PoolClosed))
    ));
    pool.join_timeout(T).unwrap();
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// An item over the client's cap, taken by `imap` after a batch of others was sent,
/// yields its own error in its place; every other item's result comes, in order.
fn imap_items_that_cannot_be_submitted_fail_alone() {
    let redis = RedisServer::start();
    let ns = "imap_refused";
    let w = worker(&redis, ns, 2);
    let c = Cluster::builder(&redis.url())
        .namespace(ns)
        .max_message(200)
        .build()
        .unwrap();
    let too_big = |i: usize| i == 700 || i == 1500;
    let items = || (0..2000).map(|i| vec![1u8; if too_big(i) { 1000 } else { i % 8 }]);
    let check = |i: usize, r: &Result<u64, TaskError>| match r {
        Err(e) if too_big(i) => {
            assert!(e.to_string().contains("cap"), "item {i}: {e}");
        }
        Ok(n) if !too_big(i) => assert_eq!(*n, (i % 8) as u64, "item {i}"),
        other => panic!("item {i}: {other:?}"),
    };
    let ordered: Vec<_> = c.imap(LEN, items()).collect();
    assert_eq!(ordered.len(), 2000);
    for (i, r) in ordered.iter().enumerate() {
        check(i, r);
    }
    let unordered: Vec<_> = c.imap_unordered(LEN, items()).collect();
    assert_eq!(unordered.len(), 2000);
    let failed = unordered.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 2, "{:?}", unordered.iter().find(|r| r.is_err()));
    let sum: u64 = unordered.iter().filter_map(|r| r.as_ref().ok()).sum();
    let expected: u64 = (0..2000)
        .filter(|&i| !too_big(i))
        .map(|i| (i % 8) as u64)
        .sum();
    assert_eq!(sum, expected);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A TCP proxy to Redis for a client under test. While armed, it passes a connection's
/// `XADD`s (or the requests that hold another needle) on to the server, keeps the
/// server's answers from the client, waits until the server has answered every one
/// and `settled` holds (at most 30 s), and closes the connection: the send failed for
/// the client, and the server took it.
struct ReplyDroppingProxy {
    port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl ReplyDroppingProxy {
    fn start(upstream: u16, settled: fn(&mut cluster_common::Raw) -> bool) -> Self {
        Self::start_for(upstream, b"XADD", b'$', settled)
    }

    /// As [`start`](Self::start), for requests holding `needle`, whose answers begin
    /// with `mark` (`$` a bulk string, `:` an integer).
    fn start_for(
        upstream: u16,
        needle: &'static [u8],
        mark: u8,
        settled: fn(&mut cluster_common::Raw) -> bool,
    ) -> Self {
        use std::net::{TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (armed2, stop2) = (armed.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            let mut threads = Vec::new();
            while !stop2.load(SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let tick = Some(Duration::from_millis(50));
                client.set_read_timeout(tick).unwrap();
                server.set_read_timeout(tick).unwrap();
                // Answers kept from the client (their first bytes, `mark`).
                let swallowed = Arc::new(AtomicUsize::new(0));
                let swallowing = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (armed, stop) = (armed2.clone(), stop2.clone());
                let (sw, swn) = (swallowing.clone(), swallowed.clone());
                threads.push(std::thread::spawn(move || {
                    use std::io::Write;
                    let mut buf = vec![0u8; 1 << 16];
                    let mut ticks = 0;
                    let mut xadds = 0;
                    loop {
                        let n = match proxy_read(&mut c_in, &s_out, &mut buf, &stop) {
                            None => return,
                            Some(Some(n)) => n,
                            Some(None) => {
                                if sw.load(SeqCst) {
                                    // Poisoned: closed once the server answered every
                                    // `XADD` and the tasks settled (`settled` asks
                                    // the server directly), or after 30 s.
                                    let answered = swn.load(SeqCst) >= xadds;
                                    let settled = || {
                                        cluster_common::raw_at(upstream)
                                            .is_ok_and(|mut r| settled(&mut r))
                                    };
                                    ticks += 1;
                                    if answered && settled() || ticks > 30_000 / 50 {
                                        std::thread::sleep(Duration::from_millis(200));
                                        let _ = c_in.shutdown(std::net::Shutdown::Both);
                                        let _ = s_out.shutdown(std::net::Shutdown::Both);
                                        return;
                                    }
                                }
                                continue;
                            }
                        };
                        let chunk = &buf[..n];
                        let has_needle = chunk.windows(needle.len()).any(|w| w == needle);
                        if !sw.load(SeqCst)
                            && has_needle
                            && armed
                                .fetch_update(SeqCst, SeqCst, |a| a.checked_sub(1))
                                .is_ok()
                        {
                            sw.store(true, SeqCst);
                        }
                        if sw.load(SeqCst) {
                            xadds += chunk.windows(needle.len()).filter(|w| *w == needle).count();
                        }
                        if s_out.write_all(chunk).is_err() {
                            return;
                        }
                    }
                }));
                let (mut s_in, mut c_out) = (server, client);
                let stop = stop2.clone();
                threads.push(std::thread::spawn(move || {
                    use std::io::Write;
                    let mut buf = vec![0u8; 1 << 16];
                    while let Some(read) = proxy_read(&mut s_in, &c_out, &mut buf, &stop) {
                        let Some(n) = read else { continue };
                        if swallowing.load(SeqCst) {
                            let answers = buf[..n].iter().filter(|b| **b == mark).count();
                            swallowed.fetch_add(answers, SeqCst);
                        } else if c_out.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }));
            }
            for t in threads {
                let _ = t.join();
            }
        });
        ReplyDroppingProxy {
            port,
            armed,
            stop,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The next `n` connections that send `XADD`s (the needle) lose their answers.
    fn arm(&self, n: usize) {
        self.armed.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many of those are still to come.
    fn armed(&self) -> usize {
        self.armed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A TCP proxy that connects each new connection to the Redis on `upstream`'s port as
/// it is then (a failover behind one address: a virtual IP, a DNS name, a cloud's
/// endpoint); the connections made before stay where they are.
struct SwitchingProxy {
    port: u16,
    upstream: std::sync::Arc<std::sync::atomic::AtomicU16>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl SwitchingProxy {
    fn start(upstream: u16) -> Self {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU16, Ordering::SeqCst};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(AtomicU16::new(upstream));
        let stop = Arc::new(AtomicBool::new(false));
        let (to, stop2) = (upstream.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            let mut threads = Vec::new();
            while !stop2.load(SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", to.load(SeqCst))) else {
                    continue;
                };
                let tick = Some(Duration::from_millis(50));
                client.set_read_timeout(tick).unwrap();
                server.set_read_timeout(tick).unwrap();
                for (mut from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let stop = stop2.clone();
                    threads.push(std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        while let Some(read) = proxy_read(&mut from, &to, &mut buf, &stop) {
                            if let Some(n) = read
                                && (&to).write_all(&buf[..n]).is_err()
                            {
                                return;
                            }
                        }
                    }));
                }
            }
            for t in threads {
                let _ = t.join();
            }
        });
        SwitchingProxy {
            port,
            upstream,
            stop,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// New connections go to the server on `port`.
    fn switch_to(&self, port: u16) {
        self.upstream
            .store(port, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for SwitchingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One read of a proxied socket, waiting at most its read timeout: `Some(Some(n))`
/// bytes, `Some(None)` none yet, `None` at its end (passed on to `to`), on an error or
/// once `stop` is set.
fn proxy_read(
    from: &mut std::net::TcpStream,
    to: &std::net::TcpStream,
    buf: &mut [u8],
    stop: &std::sync::atomic::AtomicBool,
) -> Option<Option<usize>> {
    use std::io::{ErrorKind, Read};
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    match from.read(buf) {
        Ok(0) => {
            let _ = to.shutdown(std::net::Shutdown::Write);
            None
        }
        Ok(n) => Some(Some(n)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Some(None),
        Err(_) => None,
    }
}

impl Drop for ReplyDroppingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A batch that the server took but whose answer the client lost (its connection
/// closed, twice: the client sends once more) fails for the client; tasks of it whose
/// outcomes came meanwhile yield them, once each, and the maps go on with the items
/// after it.
fn imap_items_whose_send_lost_only_its_reply_yield_once() {
    let redis = RedisServer::start();
    let ns = "imap_lost_reply";
    let w = worker(&redis, ns, 2);
    // Settled: nothing waiting or held, and every outcome taken from its reply list.
    fn settled(r: &mut cluster_common::Raw) -> bool {
        let stream = "imap_lost_reply:{default}:stream";
        let mut ask = |args: &[&str]| r.call(args).unwrap_or(Resp::Error(String::new()));
        let waiting = ask(&["XLEN", stream]).int();
        let held = match ask(&["XPENDING", stream, "workers"]) {
            Resp::Array(a) => a.first().map_or(-1, Resp::int),
            _ => -1,
        };
        let replies = match ask(&["KEYS", "imap_lost_reply:*}:reply:*"]) {
            Resp::Array(a) => a.len(),
            _ => 1,
        };
        waiting == 0 && held == 0 && replies == 0
    }
    let proxy = ReplyDroppingProxy::start(redis.port, settled);
    let c = Cluster::builder(&proxy.url())
        .namespace(ns)
        .build()
        .unwrap();
    assert_eq!(c.apply(SQUARE, 3).unwrap(), 9);
    proxy.arm(2);
    let ordered: Vec<u64> = c.imap(SQUARE, 0..1000u64).map(Result::unwrap).collect();
    assert_eq!(ordered, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(
        proxy.armed(),
        0,
        "a send and its repeat were to lose their answers"
    );
    proxy.arm(2);
    let mut unordered: Vec<u64> = c
        .imap_unordered(SQUARE, 0..1000u64)
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(
        proxy.armed(),
        0,
        "a send and its repeat were to lose their answers"
    );
    w.shutdown(true);
    finish(&redis, c, ns);
    drop(proxy);
}

/// A read that took tasks and whose reply the node lost (its connection cut after the
/// server delivered them): the node takes them back on its next connection and runs
/// each once, with no delivery counted as lost. They waited a lease before, to be
/// reclaimed as tasks whose delivery was lost: with `max_deliveries(1)`,
/// dead-lettered without having run.
fn tasks_of_a_read_whose_reply_was_lost_run_once_at_once() {
    // Settled: the server has delivered both tasks to the node.
    fn settled(r: &mut cluster_common::Raw) -> bool {
        delivered(r, "read_lost_reply", 2)
    }
    let took = lost_read_runs_each_once("read_lost_reply", 2, 0, settled, |b| {
        b.processes(2).lease(Duration::from_secs(4))
    });
    // Not a lease later (a reclaim), nor a delivery counted lost (a dead letter).
    assert!(
        took < Duration::from_secs(4),
        "the tasks waited a lease: {took:?}"
    );
}

/// As above, with the node full once its read was made again on a new connection (that
/// read took as many tasks again): the tasks of the lost reply are taken back at once,
/// beyond the prefetch, rather than once half the prefetch is free. Left waiting for
/// room, they lapsed meanwhile, and a reclaim took them as deliveries lost: with
/// `max_deliveries(1)`, dead-lettered without having run.
fn tasks_of_a_lost_read_are_taken_back_by_a_full_node() {
    // Settled: the server has delivered the first four tasks to the node.
    fn settled(r: &mut cluster_common::Raw) -> bool {
        delivered(r, "full_lost_reply", 4)
    }
    // Each runs longer than a lease: the node stays full past the first lease.
    lost_read_runs_each_once("full_lost_reply", 8, 1_200, settled, |b| {
        b.processes(1).prefetch(4)
    });
}

/// A node stopped while it reads again on a new connection, the reply of its first
/// read (which took a task) lost: it takes the task back as it stops, and the task runs
/// once, not dead-lettered. (Left pending, it waited a lease, and another node
/// reclaimed it as a delivery lost: with `max_deliveries(1)`, dead-lettered without
/// having run.) The lease is longer than a read (1 s), as in
/// [`tasks_of_a_read_whose_reply_was_lost_run_once_at_once`]: a shorter one lapses while
/// the read that would find the task is still blocked, stop or no stop.
fn tasks_of_a_lost_read_are_taken_back_by_a_stopping_node() {
    fn settled(r: &mut cluster_common::Raw) -> bool {
        delivered(r, "stop_lost_reply", 1)
    }
    let ns = "stop_lost_reply";
    let redis = RedisServer::start();
    let c = client(&redis, ns);
    let dir = common::tempdir(ns);
    let path = dir.join("runs").to_string_lossy().into_owned();
    let mut task = c.submit(RECORD_SLOW, (path.clone(), 0)).unwrap();
    let proxy = ReplyDroppingProxy::start_for(redis.port, b"XREADGROUP", b'*', settled);
    proxy.arm(1);
    let lease = Duration::from_secs(4);
    let stopping = node_at(&proxy.url(), ns, 1)
        .lease(lease)
        .max_deliveries(1)
        .build()
        .expect("start worker");
    assert!(common::eventually(T, || proxy.armed() == 0));
    stopping.shutdown(false);
    let other = node_at(&redis.url(), ns, 1)
        .lease(lease)
        .max_deliveries(1)
        .build()
        .expect("start worker");
    assert_eq!(task.wait_timeout(T), Ok(1));
    assert_eq!(runs(&path), 1, "a task ran again");
    stopping.shutdown(true);
    other.shutdown(true);
    finish(&redis, c, ns);
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A task whose value takes its node long to take in (its `Deserialize`, run by the
/// node as it takes the outcome from its pool, takes 2.5 s) while another task of the
/// node runs on, with leases of 1 s: the other task's lease is renewed meanwhile, and it
/// runs once; so too when that task is cancelled by its client, or the node stops, as
/// its value is taken in. The node's renewals waited for the value, the node's state
/// held, the lease ran out, and another node ran the task again (three times); and
/// after a first fix, the renewals that stopped the slow task's run, and the stop's
/// look for runs not started, waited for it still.
fn a_slow_outcome_holds_up_no_lease() {
    for meanwhile in ["nothing", "cancel", "stop"] {
        let ns = format!("slow_outcome_{meanwhile}");
        let redis = RedisServer::start();
        let c = client(&redis, &ns);
        let dir = common::tempdir(&ns);
        let path = dir.join("runs").to_string_lossy().into_owned();
        let first = worker(&redis, &ns, 2);
        let mut long = c.submit(RECORD_SLOW, (path.clone(), 5000)).unwrap();
        assert!(common::eventually(T, || runs(&path) == 1));
        SLOW_DECODING.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut slow = c.submit(SLOW_DECODE, 2500).unwrap();
        let mut raw = redis.raw().unwrap();
        assert!(common::eventually(T, || delivered(&mut raw, &ns, 2)));
        // Another node, to take over a lease that runs out.
        let second = worker(&redis, &ns, 1);
        assert!(common::eventually(T, || SLOW_DECODING
            .load(std::sync::atomic::Ordering::SeqCst)));
        match meanwhile {
            "cancel" => {
                slow.cancel();
            }
            "stop" => first.shutdown(false),
            _ => {}
        }
        let taken = slow.wait_timeout(T);
        if meanwhile == "nothing" {
            assert_eq!(taken, Ok(SlowDecoded(2500)));
        } else {
            assert_ne!(taken, Err(TaskError::Timeout), "{meanwhile}");
        }
        assert_eq!(long.wait_timeout(T), Ok(1), "{meanwhile}");
        assert_eq!(runs(&path), 1, "the long task ran again ({meanwhile})");
        first.shutdown(true);
        second.shutdown(true);
        finish(&redis, c, &ns);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Whether the default queue of namespace `ns` has `n` entries delivered and pending.
fn delivered(r: &mut cluster_common::Raw, ns: &str, n: i64) -> bool {
    let stream = format!("{ns}:{{default}}:stream");
    match r.call(&["XPENDING", &stream, "workers"]) {
        Ok(Resp::Array(a)) => a.first().map_or(-1, Resp::int) == n,
        _ => false,
    }
}

/// Submits `n` tasks of `ms` each in namespace `ns`, then starts a node (`shape`d, with
/// `max_deliveries(1)`) through a proxy that loses the reply of its first read once
/// `settled` says the server delivered it; each task must run once. How long the tasks
/// took from the node's start.
fn lost_read_runs_each_once(
    ns: &str,
    n: usize,
    ms: u64,
    settled: fn(&mut cluster_common::Raw) -> bool,
    shape: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> Duration {
    let redis = RedisServer::start();
    let c = client(&redis, ns);
    let dir = common::tempdir(ns);
    let paths: Vec<String> = (0..n)
        .map(|i| dir.join(format!("runs{i}")).to_string_lossy().into_owned())
        .collect();
    let mut tasks: Vec<_> = paths
        .iter()
        .map(|p| c.submit(RECORD_SLOW, (p.clone(), ms)).unwrap())
        .collect();
    let proxy = ReplyDroppingProxy::start_for(redis.port, b"XREADGROUP", b'*', settled);
    proxy.arm(1);
    let started = Instant::now();
    let w = shape(node_at(&proxy.url(), ns, 1))
        .max_deliveries(1)
        .build()
        .expect("start worker");
    for t in &mut tasks {
        assert_eq!(t.wait_timeout(T), Ok(1));
    }
    let took = started.elapsed();
    assert_eq!(proxy.armed(), 0, "the read was to lose its reply");
    for p in &paths {
        assert_eq!(runs(p), 1, "a task ran again");
    }
    w.shutdown(true);
    finish(&redis, c, ns);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn submit_map_imap_stats() {
    let redis = RedisServer::start();
    let ns = "basic";
    let w = worker(&redis, ns, 2);
    let c = client(&redis, ns);
    let t = c.submit(SQUARE, 7).unwrap();
    assert_eq!(t.wait().unwrap(), 49);
    assert_eq!(c.apply(SQUARE, 9).unwrap(), 81);
    let squares = c.map(SQUARE, 0..1000u64).unwrap();
    assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    for chunk in [1, 7, 5000] {
        let squares = c.map_chunked(SQUARE, 0..300u64, chunk).unwrap();
        assert_eq!(squares, (0..300u64).map(|x| x * x).collect::<Vec<_>>());
    }
    assert!(c.map(SQUARE, Vec::new()).unwrap().is_empty());
    let lazy: Vec<u64> = c.imap(SQUARE, 0..2000u64).map(Result::unwrap).collect();
    assert_eq!(lazy, (0..2000u64).map(|x| x * x).collect::<Vec<_>>());
    let mut un: Vec<u64> = c
        .imap_unordered(SQUARE, 0..1500u64)
        .map(Result::unwrap)
        .collect();
    un.sort();
    assert_eq!(un, (0..1500u64).map(|x| x * x).collect::<Vec<_>>());
    // Awaited under tokio.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = c.submit(SQUARE, 12).unwrap();
    assert_eq!(rt.block_on(t).unwrap(), 144);
    let t = c.submit(SLOW_SQUARE, (3, 2000)).unwrap();
    assert!(!t.is_done());
    let mut t = t;
    assert_eq!(t.wait_timeout(T).unwrap(), 9);
    // Over the Unix socket too.
    let u = Cluster::builder(&redis.unix_url())
        .namespace(ns)
        .build()
        .unwrap();
    assert_eq!(u.apply(SQUARE, 5).unwrap(), 25);
    let stats = c.stats().unwrap();
    assert_eq!(stats.waiting, 0);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.workers.len(), 1, "{stats:?}");
    assert_eq!(stats.workers[0].name, w.name());
    assert!(stats.workers[0].description.contains("processes=2"));
    drop(u);
    w.shutdown(true);
    finish(&redis, c, ns);
}

fn ten_thousand_tasks_sigkill_and_sigstop() {
    let redis = RedisServer::start();
    let ns = "faults";
    let mut a = node(&redis, ns, "a");
    let b = node(&redis, ns, "b");
    let c = client(&redis, ns);
    let n = 10_000u64;
    let tasks = c.submit_batch(SLOW_SQUARE, (0..n).map(|x| (x, 1))).unwrap();
    let done = |tasks: &[multiproc::Task<u64>]| tasks.iter().filter(|t| t.is_done()).count();
    assert!(common::eventually(T, || done(&tasks) >= 1500));
    // Node a dies with tasks in flight; a supervisor would start it again.
    assert!(c.stats().unwrap().in_flight > 0);
    let left = a.kill_tree(T);
    assert!(left.is_empty(), "node a's processes outlived it: {left:?}");
    let a2 = node(&redis, ns, "a2");
    assert!(common::eventually(T, || done(&tasks) >= 4000));
    // Node b is paused well past its lease: a2 takes its tasks; b's late acks bounce.
    let b_pid = format!("pid={} ", b.child.id());
    let b_name = c
        .stats()
        .unwrap()
        .workers
        .into_iter()
        .find(|w| w.description.contains(&b_pid))
        .expect("node b among the workers")
        .name;
    let stream = format!("{ns}:{{default}}:stream");
    let held_by_b =
        || match redis.cmd(&["XPENDING", &stream, "workers", "-", "+", "10000", &b_name]) {
            Resp::Array(entries) => entries.len(),
            _ => 0,
        };
    // Stopped while it holds tasks (it may have none for a moment, between finishing a
    // batch and reading the next: let go and stopped again then).
    let mut held = 0;
    for _ in 0..200 {
        cluster_common::signal(b.child.id(), "-STOP");
        held = held_by_b();
        if held > 0 {
            break;
        }
        cluster_common::signal(b.child.id(), "-CONT");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(held > 0, "node b never held a task when stopped");
    let before = done(&tasks);
    // Work goes on without b, its tasks reclaimed once their leases run out.
    assert!(common::eventually(T, || done(&tasks) >= before + 1000));
    assert!(
        common::eventually(T, || held_by_b() < held),
        "none of the {held} tasks the paused node held was reclaimed"
    );
    std::thread::sleep(Duration::from_secs(2));
    cluster_common::signal(b.child.id(), "-CONT");
    for (x, mut t) in tasks.into_iter().enumerate() {
        match t.wait_timeout(Duration::from_secs(120)) {
            Err(TaskError::Timeout) => panic!("task {x} hangs"),
            r => assert_eq!(r.unwrap(), (x as u64) * (x as u64)),
        }
    }
    let stats = c.stats().unwrap();
    assert_eq!(
        (stats.waiting, stats.in_flight, stats.delayed),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.dead_lettered, 0);
    drop((a2, b));
    finish(&redis, c, ns);
}

/// A task whose node is lost, that then fails and is retried, and whose node is lost
/// again has lost two deliveries: with `max_deliveries(2)` it is dead-lettered then,
/// not run a fourth time (the retry carries the losses of the entry before it).
fn deliveries_lost_before_a_retry_still_count() {
    let redis = RedisServer::start();
    let ns = "lost_retry";
    let c = client(&redis, ns);
    let dir = common::tempdir("lost_retry");
    let path = dir.join("runs");
    let runs = || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    let node = |name: &str| {
        let h = Helper::start_with(
            "worker",
            std::env::current_exe().unwrap(),
            &[
                ("MP_URL", &redis.url()),
                ("MP_NS", ns),
                ("MP_NODE", name),
                ("MP_MAX_DELIVERIES", "2"),
            ],
        );
        h.expect("ready", T);
        h
    };
    let retry =
        RetryPolicy::attempts(5).backoff(Duration::from_millis(10), 1.0, Duration::from_millis(10));
    let mut t = c
        .submit_with(
            HANG_FAIL,
            path.to_str().unwrap().to_string(),
            TaskOptions::new().retry(retry),
        )
        .unwrap();
    // Run 1 hangs: its node dies (one delivery lost).
    let mut a = node("a");
    assert!(common::eventually(T, || runs() == 1));
    assert!(a.kill_tree(T).is_empty());
    // Node b takes it back once its lease ran out: run 2 fails and is retried; run 3,
    // the retry, hangs, and b dies too (a second delivery lost).
    let mut b = node("b");
    assert!(common::eventually(T, || runs() == 3), "runs: {}", runs());
    assert!(b.kill_tree(T).is_empty());
    let c2 = node("c");
    match t.wait_timeout(T) {
        Err(TaskError::DeadLettered(why)) => {
            assert!(why.contains("2 deliveries"), "{why}");
        }
        other => panic!(
            "a task that lost two deliveries: {other:?} (runs: {})",
            runs()
        ),
    }
    assert_eq!(runs(), 3);
    drop(c2);
    finish(&redis, c, ns);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reads `n` entries of the default queue of `ns` as the consumer `ghost`, which never
/// renews them (a node that died at once).
fn read_as_ghost(redis: &RedisServer, ns: &str, n: usize) {
    let stream = format!("{ns}:{{default}}:stream");
    let count = n.to_string();
    let read = redis.cmd(&[
        "XREADGROUP",
        "GROUP",
        "workers",
        "ghost",
        "COUNT",
        &count,
        "STREAMS",
        &stream,
        ">",
    ]);
    let entries = match &read {
        Resp::Array(streams) => match streams.first() {
            Some(Resp::Array(stream)) => match stream.get(1) {
                Some(Resp::Array(entries)) => entries.len(),
                _ => 0,
            },
            _ => 0,
        },
        _ => 0,
    };
    assert_eq!(entries, n, "{read:?}");
}

/// Writes the heartbeat of a node `name` of the default queue of `ns` with a lease of
/// `lease_ms` that never renews (as a node that died would have left it); returns the
/// workers' key and its heartbeat key.
fn heartbeat_of(redis: &RedisServer, ns: &str, name: &str, lease_ms: u64) -> (String, String) {
    let workers = format!("{ns}:{{default}}:workers");
    let info = format!("{ns}:{{default}}:worker:{name}");
    let described = format!("host=gone pid=1 processes=1 lease_ms={lease_ms}");
    redis.cmd(&["ZADD", &workers, "0", name]);
    redis.cmd(&["SET", &info, &described, "EX", "60"]);
    (workers, info)
}

/// Waits (T at most) until the longest lease noted in the renewals hash of the default
/// queue of `ns` is `ms`; fails the test if it does not come.
fn noted_lease_becomes(redis: &RedisServer, ns: &str, ms: u64) {
    let renewals = format!("{ns}:{{default}}:renewals");
    let want = ms.to_string();
    assert!(
        common::eventually(T, || redis.cmd(&["HGET", &renewals, "lease"]).text()
            == want),
        "the noted lease never became {ms}: {:?}",
        redis.cmd(&["HGETALL", &renewals])
    );
}

/// A queue whose only node stopped, and a node that died holding a task: a node started
/// later (after a gap in renewals longer than two renewal periods) takes the task back
/// a lease after its first renewal, not at once (the server cannot tell that gap from
/// a pause of its own, see `a_node_started_just_after_a_server_pause_...`), and not
/// never.
fn a_dead_nodes_task_is_reclaimed_a_lease_after_a_new_node_starts() {
    let redis = RedisServer::start();
    let ns = "reclaim_after_gap";
    let lease = Duration::from_secs(3);
    let node = || {
        tasks(Worker::builder(&redis.url()))
            .namespace(ns)
            .processes(1)
            .lease(lease)
            .build()
            .unwrap()
    };
    let c = client(&redis, ns);
    // The group made, and renewals noted.
    let a = node();
    assert_eq!(c.apply_timeout(SQUARE, 2, T).unwrap(), 4);
    a.shutdown(true);
    let mut t = c.submit(SQUARE, 3).unwrap();
    read_as_ghost(&redis, ns, 1);
    // A gap of more than two renewal periods (2 s).
    std::thread::sleep(Duration::from_millis(2_500));
    let started = Instant::now();
    let b = node();
    assert_eq!(t.wait_timeout(T), Ok(9));
    let took = started.elapsed();
    assert!(
        took >= lease / 2 && took < lease * 3,
        "the dead node's task ran {took:?} after a node started"
    );
    b.shutdown(true);
    finish(&redis, c, ns);
}

/// A dead node with a 4 s lease, and a live one with a 300 ms lease: a 2 s gap in
/// renewals (the server paused) is longer than two of the live node's periods but
/// cannot make a lease look lapsed (reclaims wait for the longest lease, 4 s), so it
/// holds no reclaim: the dead node's task moves on about 4 s after the live node's
/// first renewal (a gap judged by the live node's own lease held reclaims a further
/// 4 s after it).
fn a_short_gap_in_renewals_does_not_hold_reclaims() {
    let redis = RedisServer::start();
    let ns = "short_gap";
    let c = client(&redis, ns);
    let stream = format!("{ns}:{{default}}:stream");
    redis.cmd(&["XGROUP", "CREATE", &stream, "workers", "0", "MKSTREAM"]);
    // The dead node: its heartbeat says it renews every 4/3 s; it never will.
    heartbeat_of(&redis, ns, "ghost", 4_000);
    let mut t = c.submit(SQUARE, 3).unwrap();
    read_as_ghost(&redis, ns, 1);
    let s = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .lease(Duration::from_millis(300))
        .build()
        .unwrap();
    // Its first renewal begins the run of renewals: reclaims wait 4 s from about here.
    let built = Instant::now();
    noted_lease_becomes(&redis, ns, 4_000);
    // Under the 2.67 s a gap must last to matter.
    redis.pause();
    std::thread::sleep(Duration::from_millis(2_000));
    redis.resume();
    assert_eq!(t.wait_timeout(T), Ok(9));
    let took = built.elapsed();
    assert!(
        took < Duration::from_millis(5_500),
        "the dead node's task ran {took:?} after the live node started (held by the gap)"
    );
    s.shutdown(true);
    finish(&redis, c, ns);
}

/// A node with no room for another task still keeps the queue's longest lease current
/// in the renewals hash, by which gaps in renewals are judged: a node with a longer
/// lease that comes raises it, and once that node is gone it falls back (a lease left
/// there by a node gone would let a gap that makes leases look lapsed go unseen).
fn a_full_node_keeps_the_longest_lease_current() {
    let redis = RedisServer::start();
    let ns = "full_lease";
    let c = client(&redis, ns);
    let f = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .prefetch(1)
        .lease(Duration::from_secs(1))
        // A failed assertion stops the 60 s task at once.
        .grace(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut t = c.submit(SLOW_SQUARE, (3, 60_000)).unwrap();
    assert!(
        common::eventually(T, || c.stats().is_ok_and(|s| s.in_flight == 1)),
        "{:?}",
        c.stats()
    );
    noted_lease_becomes(&redis, ns, 1_000);
    let (workers, info) = heartbeat_of(&redis, ns, "longer", 3_000);
    noted_lease_becomes(&redis, ns, 3_000);
    redis.cmd(&["ZREM", &workers, "longer"]);
    redis.cmd(&["DEL", &info]);
    noted_lease_becomes(&redis, ns, 1_000);
    assert!(t.cancel(), "the cancel of a running task was refused");
    assert_eq!(t.wait_timeout(T), Err(TaskError::Cancelled));
    f.shutdown(true);
    finish(&redis, c, ns);
}

/// The tasks of a consumer that died (it read them and was never heard of again) come
/// after 10,000 entries another worker holds and renews: a worker with room for one
/// task runs them within a few leases, not after a walk through the whole pending
/// list ten entries a call.
fn a_dead_consumers_tasks_behind_a_long_pending_list_move_on() {
    let redis = RedisServer::start();
    let ns = "reclaim_far";
    let lease = Duration::from_secs(2);
    let c = client(&redis, ns);
    // A worker holding 10,000 tasks (one running, the rest its prefetch: it reads them
    // all at once, and has no room left), renewing their leases.
    let held = 10_000;
    let long = c
        .submit_batch(SLOW_SQUARE, (0..held as u64).map(|x| (x, 600_000)))
        .unwrap();
    let a = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .prefetch(held)
        .lease(lease)
        .grace(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(
        common::eventually(T, || {
            let s = c.stats().unwrap();
            s.in_flight == held as u64 && s.waiting == 0
        }),
        "{:?}",
        c.stats()
    );
    // Three tasks read by a consumer that dies at once (their entries come after the
    // 10,000 held).
    let ghost: Vec<_> = (0..3).map(|x| c.submit(SQUARE, x).unwrap()).collect();
    read_as_ghost(&redis, ns, 3);
    let read_at = Instant::now();
    let b = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .prefetch(1)
        .lease(lease)
        .build()
        .unwrap();
    for (x, mut t) in ghost.into_iter().enumerate() {
        assert_eq!(t.wait_timeout(T).unwrap(), (x * x) as u64);
    }
    let took = read_at.elapsed();
    // Within a lease and a few renewal periods of becoming idle (each period spent
    // walking 160 entries of the list would take 63 of them, 40 s).
    assert!(
        took < lease * 5,
        "the dead consumer's tasks ran after {took:?}"
    );
    b.shutdown(true);
    a.shutdown(true);
    drop(long);
    finish(&redis, c, ns);
}

fn late_ack_of_paused_node_is_rejected() {
    let redis = RedisServer::start();
    let ns = "fence";
    let b = node(&redis, ns, "paused");
    let c = client(&redis, ns);
    let t = c.submit(WHO, 1).unwrap();
    // b holds it; pause b past its lease, with another node ready to reclaim it.
    assert!(common::eventually(T, || c.stats().unwrap().in_flight == 1));
    cluster_common::signal(b.child.id(), "-STOP");
    let a = node(&redis, ns, "reclaimer");
    // a reclaims it once b's lease has run out (its delivery count goes to 2), and b's
    // pool has finished the run meanwhile; b acks it late, and is refused.
    let stream = format!("{ns}:{{default}}:stream");
    let deliveries = || match redis.cmd(&["XPENDING", &stream, "workers", "-", "+", "1"]) {
        Resp::Array(entries) => match entries.first() {
            Some(Resp::Array(entry)) => entry.get(3).map_or(0, Resp::int),
            _ => 0,
        },
        _ => 0,
    };
    assert!(
        common::eventually(T, || deliveries() >= 2),
        "the paused node's task was not reclaimed"
    );
    cluster_common::signal(b.child.id(), "-CONT");
    let (x, by) = t.wait().unwrap();
    assert_eq!(x, 1);
    assert_eq!(by, "reclaimer", "the paused node's late ack was accepted");
    drop((a, b));
    finish(&redis, c, ns);
}

fn aborting_task_is_dead_lettered() {
    let redis = RedisServer::start();
    let ns = "poison";
    let w = worker(&redis, ns, 2);
    let c = client(&redis, ns);
    let e = c.submit(ABORT, 1).unwrap().wait().unwrap_err();
    assert!(e.is_dead_lettered(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("3 deliveries") && text.contains("SIGABRT"),
        "{text}"
    );
    // The node goes on.
    assert_eq!(c.apply(SQUARE, 4).unwrap(), 16);
    // In a map, a crashing item fails alone (chunks are not redelivered item by item).
    let e = c.map(ABORT, 0..2u64).unwrap_err();
    assert!(
        matches!(&e, ClusterError::Task(TaskError::WorkerDied(Some(s))) if s.signal() == Some(multiproc::Signal::ABRT)),
        "{e}"
    );
    let dead = c.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    // "All of them" (Redis refused the count), and none (it was one).
    assert_eq!(c.dead_letters(usize::MAX).unwrap().len(), 1);
    assert!(c.dead_letters(0).unwrap().is_empty());
    assert_eq!(dead[0].name.as_deref(), Some("t.abort"));
    assert!(dead[0].reason.contains("SIGABRT"));
    assert_eq!(c.stats().unwrap().dead_lettered, 1);
    // Requeued, it runs (and crashes) again, and is dead-lettered again.
    assert!(c.requeue_dead(&dead[0].id).unwrap());
    assert!(!c.requeue_dead(&dead[0].id).unwrap());
    assert!(common::eventually(T, || c.stats().unwrap().dead_lettered
        == 1
        && c.dead_letters(10).unwrap()[0].id != dead[0].id));
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// An idempotent task dead-lettered by a worker that lacks it (a rolling upgrade), then
/// requeued once a worker that has it runs: a repeat of its key gets the new run's
/// outcome. The dead letter's outcome was kept for the key, the new one dropped, and
/// every repeat for a day got the dead letter.
fn a_requeued_idempotent_task_answers_with_its_new_outcome() {
    let redis = RedisServer::start();
    let ns = "idem-requeue";
    let c = client(&redis, ns);
    let old = Worker::builder(&redis.url())
        .namespace(ns)
        .processes(1)
        .register(WHO, who)
        .build()
        .expect("start worker");
    let opts = TaskOptions::new().idempotency_key("upgrade");
    let mut first = c.submit_with(SQUARE, 3, opts.clone()).unwrap();
    let e = first.wait_timeout(T).unwrap_err();
    assert!(e.is_dead_lettered(), "{e}");
    old.shutdown(true);
    let w = worker(&redis, ns, 1);
    let dead = c.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(c.requeue_dead(&dead[0].id).unwrap());
    // Joins the requeued run, or finds its outcome.
    let mut again = c.submit_with(SQUARE, 3, opts).unwrap();
    assert_eq!(again.wait_timeout(T), Ok(9));
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A requeue whose reply is lost with its connection (the client sends it again on a
/// new one) says it requeued: its repeat found the dead letter gone and said there was
/// no such dead letter, although the task was back on the queue.
fn a_requeue_whose_reply_was_lost_says_it_requeued() {
    let redis = RedisServer::start();
    let ns = "requeue_lost_reply";
    fn settled(r: &mut cluster_common::Raw) -> bool {
        r.call(&["XLEN", "requeue_lost_reply:{default}:dead"])
            .is_ok_and(|n| n.int() == 0)
    }
    let proxy = ReplyDroppingProxy::start_for(redis.port, b"requeued:", b':', settled);
    let c = Cluster::builder(&proxy.url())
        .namespace(ns)
        .build()
        .unwrap();
    // Two dead letters: tasks the only worker does not run.
    let old = Worker::builder(&redis.url())
        .namespace(ns)
        .processes(1)
        .register(WHO, who)
        .build()
        .expect("start worker");
    for x in [2, 3] {
        let e = c.submit(SQUARE, x).unwrap().wait_timeout(T).unwrap_err();
        assert!(e.is_dead_lettered(), "{e}");
    }
    old.shutdown(true);
    let dead = c.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    // The first requeue loads the script into the server; the second loses its answer.
    assert!(c.requeue_dead(&dead[0].id).unwrap());
    proxy.arm(1);
    assert!(
        c.requeue_dead(&dead[1].id).unwrap(),
        "a requeue sent again said there was no such dead letter"
    );
    assert_eq!(proxy.armed(), 0, "the requeue was to lose its answer");
    assert!(!c.requeue_dead(&dead[1].id).unwrap(), "requeued twice");
    let s = c.stats().unwrap();
    assert_eq!((s.waiting, s.dead_lettered), (2, 0), "{s:?}");
    let w = worker(&redis, ns, 1);
    assert!(common::eventually(T, || {
        let s = c.stats().unwrap();
        s.waiting == 0 && s.in_flight == 0
    }));
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A cancel whose reply is lost with its connection (the client sends it again on a
/// new one) says it cancelled: its repeat found the task's outcome written (the
/// cancel's own) and said the task had ended otherwise, and the task then ended
/// `Cancelled`.
fn a_cancel_whose_reply_was_lost_says_it_cancelled() {
    let redis = RedisServer::start();
    let ns = "cancel_lost_reply";
    fn settled(_: &mut cluster_common::Raw) -> bool {
        true
    }
    let proxy = ReplyDroppingProxy::start_for(redis.port, b"cancel:", b':', settled);
    let c = Cluster::builder(&proxy.url())
        .namespace(ns)
        .build()
        .unwrap();
    // Tasks waiting for their time: a cancel removes them (no worker needed).
    let later = || {
        c.submit_with(
            SQUARE,
            2,
            TaskOptions::new().countdown(Duration::from_secs(600)),
        )
        .unwrap()
    };
    let (mut first, mut second) = (later(), later());
    // The first cancel loads the script into the server; the second loses its answer.
    assert!(first.cancel());
    assert_eq!(first.wait_timeout(T), Err(TaskError::Cancelled));
    proxy.arm(1);
    assert!(
        second.cancel(),
        "a cancel sent again said the task had ended otherwise"
    );
    assert_eq!(proxy.armed(), 0, "the cancel was to lose its answer");
    assert_eq!(second.wait_timeout(T), Err(TaskError::Cancelled));
    assert_eq!(c.stats().unwrap().waiting, 0);
    finish(&redis, c, ns);
}

fn err_is_retried_per_policy() {
    let redis = RedisServer::start();
    let ns = "retry";
    let w = worker(&redis, ns, 2);
    let c = client(&redis, ns);
    let dir = common::tempdir("flaky");
    let counter = |name: &str| dir.join(name).display().to_string();
    let fast =
        RetryPolicy::attempts(3).backoff(Duration::from_millis(50), 2.0, Duration::from_secs(1));
    // Fails twice, then succeeds on the third and last attempt.
    let ok = c
        .submit_fallible_with(
            FLAKY,
            (counter("a"), 3),
            TaskOptions::new().retry(fast.clone()),
        )
        .unwrap();
    assert_eq!(ok.wait().unwrap(), 3);
    // Two attempts only: the second `Err` is the task's failure, carrying the error.
    let policy =
        RetryPolicy::attempts(2).backoff(Duration::from_millis(50), 2.0, Duration::from_secs(1));
    let failed = c
        .submit_fallible_with(FLAKY, (counter("b"), 3), TaskOptions::new().retry(policy))
        .unwrap();
    match failed.wait() {
        Err(TaskError::Failed(f)) => {
            assert_eq!(f.message(), "run 2 failed");
            assert_eq!(f.decode::<String>().unwrap(), "run 2 failed");
            assert_eq!(
                f.downcast_ref::<String>().map(String::as_str),
                Some("run 2 failed")
            );
            assert!(f.type_name().is_some_and(|t| t.contains("String")), "{f:?}");
        }
        other => panic!("{other:?}"),
    }
    // No policy: one run. A plain `submit` gets the failure too (never an `Ok(Err)`).
    match c.submit(FLAKY, (counter("c"), 3)).unwrap().wait() {
        Err(TaskError::Failed(f)) => assert_eq!(f.message(), "run 1 failed"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    w.shutdown(true);
    finish(&redis, c, ns);
}

fn countdown_and_eta_across_worker_restart() {
    let redis = RedisServer::start();
    let ns = "delay";
    let c = client(&redis, ns);
    let start = now_ms();
    let soon = c
        .submit_with(
            WHEN,
            0,
            TaskOptions::new().countdown(Duration::from_millis(6000)),
        )
        .unwrap();
    let eta = SystemTime::now() + Duration::from_millis(7000);
    let at = c.submit_with(WHEN, 0, TaskOptions::new().eta(eta)).unwrap();
    assert_eq!(c.stats().unwrap().delayed, 2);
    // A worker starts and stops before either is due (seconds ahead, so that a slow
    // start on a loaded machine does not reach them); another takes over.
    let w1 = worker(&redis, ns, 1);
    std::thread::sleep(Duration::from_millis(500));
    w1.shutdown(true);
    assert!(!soon.is_done() && !at.is_done());
    let w2 = worker(&redis, ns, 1);
    let ran = soon.wait().unwrap();
    assert!(ran >= start + 6000, "ran {} ms early", start + 6000 - ran);
    let ran = at.wait().unwrap();
    let due = eta
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(ran >= due, "ran {} ms early", due - ran);
    w2.shutdown(true);
    finish(&redis, c, ns);
}

fn other_types_and_unknown_names_refused() {
    let redis = RedisServer::start();
    let ns = "schema";
    let w = worker(&redis, ns, 1);
    let c = client(&redis, ns);
    // The same name, built with other types on the client's side.
    const OTHER: TaskDef<String, u64> = TaskDef::new("t.square");
    let e = c.submit(OTHER, "7".into()).unwrap().wait().unwrap_err();
    assert!(e.is_dead_lettered(), "{e}");
    assert!(e.to_string().contains("different code"), "{e}");
    // A versioned definition differs too.
    let e = c.submit(SQUARE.version(2), 7).unwrap().wait().unwrap_err();
    assert!(e.to_string().contains("schema"), "{e}");
    const UNKNOWN: TaskDef<u64, u64> = TaskDef::new("t.nobody");
    let e = c.submit(UNKNOWN, 1).unwrap().wait().unwrap_err();
    assert!(e.to_string().contains("t.nobody"), "{e}");
    // Which worker refused it, in case the queue's workers are not all alike.
    assert!(e.to_string().contains(w.name()), "{e}");
    assert_eq!(c.apply(SQUARE, 3).unwrap(), 9);
    assert_eq!(c.stats().unwrap().dead_lettered, 3);
    // An argument nested deeper than the format allows (a short message could otherwise
    // run the node's stack out), written flat by the client (see `Chain`): the task
    // fails with the reason, and the node goes on.
    let chain = Chain::of;
    assert_eq!(c.apply(CHAIN, chain(1000)).unwrap(), 1000);
    let e = c.submit(CHAIN, chain(2000)).unwrap().wait().unwrap_err();
    assert!(e.to_string().contains("deeper than 1024 levels"), "{e}");
    assert_eq!(c.apply(SQUARE, 4).unwrap(), 16);
    w.shutdown(true);
    finish(&redis, c, ns);
}

fn corrupt_and_foreign_entries_dead_lettered() {
    let redis = RedisServer::start();
    let ns = "corrupt";
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .lease(Duration::from_secs(1))
        .max_message(4096)
        .build()
        .unwrap();
    let c = client(&redis, ns);
    let stream = format!("{ns}:{{default}}:stream");
    let mut raw = redis.raw().unwrap();
    raw.call(&["XADD", &stream, "*", "m", "\x01garbage\x7f"])
        .unwrap();
    raw.call(&["XADD", &stream, "*", "celery", "{\"task\": \"x\"}"])
        .unwrap();
    raw.call_bytes(&[b"XADD", stream.as_bytes(), b"*", b"m", &[9, 1, 2, 3]])
        .unwrap();
    let big = vec![1u8; 10_000];
    raw.call_bytes(&[b"XADD", stream.as_bytes(), b"*", b"m", &big])
        .unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().dead_lettered == 4));
    let reasons: Vec<String> = c
        .dead_letters(10)
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    assert!(reasons[0].contains("unreadable"), "{reasons:?}");
    assert!(reasons[1].contains("foreign"), "{reasons:?}");
    assert!(reasons[2].contains("version 9"), "{reasons:?}");
    assert!(reasons[3].contains("cap"), "{reasons:?}");
    // A foreign entry of 5,000 fields (more values than Lua unpacks at once): dead-
    // lettered with its first 500 fields, and gone from the stream.
    let mut wide: Vec<String> = vec!["XADD".into(), stream.clone(), "*".into()];
    for i in 0..5000 {
        wide.push(format!("f{i}"));
        wide.push("v".into());
    }
    let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
    raw.call(&wide).unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().dead_lettered == 5));
    let dead = c.dead_letters(10).unwrap();
    assert!(dead[4].reason.contains("foreign"), "{:?}", dead[4].reason);
    let dead_key = format!("{ns}:{{default}}:dead");
    fn words(r: &Resp, out: &mut Vec<String>) {
        match r {
            Resp::Array(a) => a.iter().for_each(|x| words(x, out)),
            other => out.push(other.text()),
        }
    }
    let mut last = Vec::new();
    words(
        &redis.cmd(&["XREVRANGE", &dead_key, "+", "-", "COUNT", "1"]),
        &mut last,
    );
    // The entry's id, then reason, entry and its 1,000 first, then how many more.
    assert_eq!(
        last.len(),
        1 + 4 + 1000 + 2,
        "{:?}",
        &last[..8.min(last.len())]
    );
    assert_eq!(last[last.len() - 2..], ["truncated", "9000"]);
    assert!(common::eventually(T, || redis.cmd(&["XLEN", &stream]) == Resp::Int(0)));
    // The worker goes on.
    assert_eq!(c.apply(SQUARE, 11).unwrap(), 121);
    // A member of the workers' set that another writer scored `-inf`: listed as silent
    // for as long as can be, then retired by the worker (in builds that check for
    // overflow, both panicked on its age).
    let workers = format!("{ns}:{{default}}:workers");
    redis.cmd(&["ZADD", &workers, "-inf", "ghost"]);
    let stats = c.stats().unwrap();
    let ghost = stats.workers.iter().find(|w| w.name == "ghost");
    assert!(
        ghost.is_some_and(|g| g.since_heartbeat > Duration::from_secs(3600 * 24 * 365)),
        "{stats:?}"
    );
    assert!(common::eventually(T, || c
        .stats()
        .unwrap()
        .workers
        .iter()
        .all(|w| w.name != "ghost")));
    assert!(w.broken().is_none());
    // A result over the worker's cap fails its task, saying so, and the worker goes on
    // (one over what Redis takes in a command kept the worker's finishes failing).
    match c.apply(BYTES, 10_000) {
        Err(ClusterError::Task(TaskError::Codec(e))) => {
            assert!(e.to_string().contains("the worker's cap is 4096"), "{e}");
        }
        other => panic!(
            "a result over the worker's cap: {:?}",
            other.map(|v| v.len())
        ),
    }
    assert_eq!(c.apply(BYTES, 100).unwrap(), vec![7; 100]);
    assert_eq!(c.apply(SQUARE, 12).unwrap(), 144);
    // A task over the worker's cap from a client with a larger one: dead-lettered, and
    // its client is told rather than left waiting.
    let mut over = c.submit(RECORD, "x".repeat(6000)).unwrap();
    match over.wait_timeout(T) {
        Err(TaskError::DeadLettered(why)) => assert!(why.contains("cap"), "{why}"),
        other => panic!("a task over the worker's cap: {other:?}"),
    }
    // A client's own cap refuses large tasks before sending them.
    let small = Cluster::builder(&redis.url())
        .namespace(ns)
        .max_message(64)
        .build()
        .unwrap();
    const BIG: TaskDef<Vec<u64>, u64> = TaskDef::new("t.big");
    assert!(matches!(
        small.submit(BIG, vec![7; 100]),
        Err(ClusterError::TooLarge { .. })
    ));
    drop(small);
    w.shutdown(true);
    finish(&redis, c, ns);
}

fn bad_urls_ports_and_credentials() {
    // A closed port fails at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let e = Cluster::connect(&format!("redis://127.0.0.1:{port}")).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(e.is_connection(), "{e}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");
    // A server that takes the connection, says OK to what the connection's set-up
    // sends, and drops it in the middle of the first call (the version's): about
    // reaching the server too (it said nothing, rather than no).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let dropper = std::thread::spawn(move || {
        let until = Instant::now() + T;
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0; 4096];
        for _ in 0..10 {
            let Ok(n) = std::io::Read::read(&mut conn, &mut buf) else {
                return false;
            };
            let got = &buf[..n];
            if n == 0 {
                return false;
            }
            if got
                .windows(10)
                .any(|w| w.eq_ignore_ascii_case(b"$4\r\nINFO\r\n"))
            {
                // The call is read, and the connection goes unanswered.
                return true;
            }
            let commands = got.windows(3).filter(|w| w == b"\r\n*").count() + 1;
            let _ = std::io::Write::write_all(&mut conn, &b"+OK\r\n".repeat(commands));
        }
        false
    });
    let e = Cluster::connect(&format!("redis://127.0.0.1:{port}")).unwrap_err();
    assert!(dropper.join().unwrap(), "the client never connected");
    assert!(e.is_connection(), "{e}");
    for bad in ["http://localhost", "not a url", "redis://[::1"] {
        assert!(
            matches!(Cluster::connect(bad), Err(ClusterError::InvalidUrl { .. })),
            "{bad}"
        );
    }
    // A Unix socket's URL gives its password in the query: masked in errors, as in a
    // `redis://` URL.
    for url in [
        "unix:///nonexistent/redis.sock?pass=s3cret",
        "redis+unix:///nonexistent/redis.sock?user=me&pass=s3cret",
        "redis://me:s3cret@127.0.0.1:1",
    ] {
        let e = Cluster::connect(url).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
    }
    let e = Cluster::builder("redis://127.0.0.1:1")
        .queue("a b")
        .build()
        .unwrap_err();
    assert!(matches!(e, ClusterError::InvalidArgument(_)), "{e}");
    let e = Worker::builder("redis://127.0.0.1:1").build().unwrap_err();
    assert!(matches!(e, ClusterError::InvalidArgument(_)), "{e}");
    let e = Worker::builder("redis://127.0.0.1:1")
        .register(SQUARE, square)
        .lease(Duration::MAX)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("at most one day"), "{e}");
    // A prefetch Redis would refuse to read (its count), said before anything connects;
    // a number of processes whose default prefetch would overflow is no panic.
    let e = Worker::builder("redis://127.0.0.1:1")
        .register(SQUARE, square)
        .prefetch(usize::MAX)
        .build()
        .unwrap_err();
    assert!(matches!(e, ClusterError::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("prefetch"), "{e}");
    let e = Worker::builder("redis://127.0.0.1:1")
        .register(SQUARE, square)
        .processes(usize::MAX)
        .build()
        .unwrap_err();
    assert!(e.is_connection(), "{e}");
    let e = Worker::builder("redis://127.0.0.1:1")
        .register(SQUARE, square)
        .register(SQUARE, square)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    // A password: wrong, then right (and masked in messages).
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let e = Cluster::connect(&url).unwrap_err();
    assert!(matches!(e, ClusterError::Auth(_)), "{e}");
    assert!(!e.to_string().contains("wrong"), "{e}");
    let e = Cluster::connect(&redis.url()).unwrap_err();
    assert!(matches!(e, ClusterError::Auth(_)), "{e}");
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let c = Cluster::builder(&url).namespace("auth").build().unwrap();
    let w = tasks(Worker::builder(&url))
        .namespace("auth")
        .processes(1)
        .build()
        .unwrap();
    assert_eq!(c.apply(SQUARE, 6).unwrap(), 36);
    w.shutdown(true);
    c.delete_queue("default").unwrap();
    drop(c);
    assert!(redis.keys("auth:").is_empty(), "{:?}", redis.keys("auth:"));
}

fn sigterm_drains_a_worker() {
    let redis = RedisServer::start();
    let ns = "drain";
    let mut n = node(&redis, ns, "drained");
    let c = client(&redis, ns);
    let tasks = c
        .submit_batch(SLOW_SQUARE, (0..8u64).map(|x| (x, 700)))
        .unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight > 0));
    cluster_common::signal(n.child.id(), "-TERM");
    n.expect("stopped", T);
    assert!(n.wait(T).success());
    // What it held is done (finished in the grace period), nothing is left in flight.
    let stats = c.stats().unwrap();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert!(
        stats.workers.is_empty(),
        "the drained worker is still registered: {stats:?}"
    );
    let finished = tasks.iter().filter(|t| t.is_done()).count();
    assert!(finished > 0);
    // The rest waits in the queue for the next node.
    let w = worker(&redis, ns, 2);
    for (x, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.wait().unwrap(), (x * x) as u64);
    }
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// Ctrl-C in a terminal sends `SIGINT` to the whole foreground process group: the
/// node's pool processes and its fork server get it too. The node drains as it does for
/// a `SIGINT` of its own: the tasks its processes run finish in the grace period, each
/// run once (none is killed with its process, to run again).
fn ctrl_c_drains_a_worker() {
    let redis = RedisServer::start();
    let ns = "ctrlc";
    let mut n = node(&redis, ns, "interrupted");
    let c = client(&redis, ns);
    let dir = common::tempdir("ctrlc");
    let (paths, tasks) = recorded_runs(&c, &dir, 8, 700);
    // The node's four processes run one each.
    assert!(common::eventually(T, || paths
        .iter()
        .filter(|p| std::path::Path::new(p).exists())
        .count()
        == 4));
    n.ctrl_c();
    n.expect("stopped", T);
    assert!(n.wait(T).success());
    let stats = c.stats().unwrap();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    let finished = tasks.iter().filter(|t| t.is_done()).count();
    assert_eq!(finished, 4, "{stats:?}");
    // The rest waits in the queue for the next node.
    let w = worker(&redis, ns, 2);
    for mut t in tasks {
        assert_eq!(t.wait_timeout(T).unwrap(), 1);
    }
    for p in &paths {
        assert_eq!(runs(p), 1, "{p}");
    }
    w.shutdown(true);
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `shutdown(wait)` returns once every task it waits for has its outcome, callbacks
/// run: it returned once the outcomes had been read, with callbacks still to run on
/// the client's delivering thread (a task not yet done).
fn shutdown_waits_for_the_callbacks() {
    let redis = RedisServer::start();
    let ns = "shutcb";
    let c = client(&redis, ns);
    let w = worker(&redis, ns, 2);
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..5u64)
        .map(|x| {
            let t = c.submit(SQUARE, x).unwrap();
            let ran = ran.clone();
            t.on_done(move |_| {
                std::thread::sleep(Duration::from_millis(100));
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            t
        })
        .collect();
    c.shutdown(true, false);
    assert_eq!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        5,
        "callbacks still to run"
    );
    assert!(tasks.iter().all(|t| t.is_done()));
    drop(tasks);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// Runs `call` on `c` on a thread of its own, and `meanwhile` here as it runs: how long
/// the call took and what it said (within 60 s, else the test fails naming `what`), and
/// the client back.
fn timed_call(
    c: Cluster,
    what: &str,
    call: impl FnOnce(&Cluster) -> String + Send + 'static,
    meanwhile: impl FnOnce(),
) -> (Duration, String, Cluster) {
    let (tx, rx) = std::sync::mpsc::channel();
    let calling = std::thread::spawn(move || {
        let t = Instant::now();
        let said = call(&c);
        let _ = tx.send((t.elapsed(), said));
        c
    });
    meanwhile();
    let (took, said) = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} did not end within 60 s"));
    (took, said, calling.join().unwrap())
}

/// A timed map and a shutdown with a timeout, against a server that stopped answering
/// (`SIGSTOP`) while they waited: each ends within its timeout and one response
/// timeout (the first of the cancels it sends for what it leaves, which tells that the
/// server does not answer), not a response timeout for each task it leaves (50 for
/// this map: over eight minutes). Each took at least a while more than its timeout: the
/// server was stopped before the call gave up and sent its cancels (the response
/// timeout is 10 s; a call whose cancels reached a live server ends within its own).
fn timed_calls_end_in_time_against_a_stopped_server() {
    let redis = RedisServer::start();
    let ns = "stopped";
    // No worker: the tasks wait in the queue.
    let (c, watcher) = (client(&redis, ns), client(&redis, ns));
    let (took, r, c) = timed_call(
        c,
        "a map_timeout of 2 s",
        |c| {
            format!(
                "{:?}",
                c.map_timeout(SQUARE, 0..100u64, Duration::from_secs(2))
                    .map(|v| v.len())
            )
        },
        || {
            // Once the map's 50 chunks are in the queue.
            assert!(common::eventually(T, || watcher.stats().unwrap().waiting == 50));
            redis.pause();
        },
    );
    assert!(r.contains("Timeout"), "{r}");
    assert!(
        took > Duration::from_secs(5) && took < Duration::from_secs(25),
        "a map_timeout of 2 s took {took:?}"
    );
    redis.resume();
    let tasks = c.submit_batch(SQUARE, 0..100u64).unwrap();
    let (took, all, c) = timed_call(
        c,
        "a shutdown_timeout of 1 s",
        |c| c.shutdown_timeout(true, Duration::from_secs(1)).to_string(),
        || redis.pause(),
    );
    assert_eq!(all, "false");
    assert!(
        took > Duration::from_secs(5) && took < Duration::from_secs(25),
        "a shutdown_timeout of 1 s took {took:?}"
    );
    // An imap's first `next_timeout` submits its first batch: the server does not
    // answer, and the call ends one response timeout past its own. It then tried a
    // second batch, which waited as long again.
    let (took, r, watcher) = timed_call(
        watcher,
        "an imap's next_timeout of 200 ms",
        |w| {
            let mut items = w.imap(SQUARE, 0..10_000u64);
            format!(
                "{:?}",
                items
                    .next_timeout(Duration::from_millis(200))
                    .map(|r| r.is_err())
            )
        },
        || (),
    );
    assert_eq!(r, "Some(true)");
    assert!(
        took < Duration::from_secs(15),
        "an imap's next_timeout of 200 ms took {took:?}"
    );
    redis.resume();
    drop((tasks, watcher));
    c.delete_queue("default").unwrap();
}

/// A shutdown with a timeout that cancels more waiting tasks than it has time for (a
/// round trip each) stops sending cancels at its deadline: it sent one for every task,
/// however long that took (30,000 here: seconds). The tasks left go on, and another
/// client cancels them.
fn a_shutdown_timeout_stops_cancelling_at_its_deadline() {
    let redis = RedisServer::start();
    let ns = "cancels";
    // No worker: the tasks wait in the queue.
    let c = client(&redis, ns);
    let n = 30_000u64;
    let tasks = c.submit_batch(SQUARE, 0..n).unwrap();
    let t = Instant::now();
    assert!(!c.shutdown_timeout(true, Duration::from_millis(200)));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let waiting = c.stats().unwrap().waiting;
    assert!(
        waiting > 0 && waiting < n,
        "{waiting} of {n} tasks still waiting"
    );
    drop(tasks);
    c.delete_queue("default").unwrap();
    finish(&redis, c, ns);
}

/// A node whose reader, finisher or keeper thread panics (a bug) stops as one whose
/// pool broke does: it says why, and its handle's drop returns, the node gone from the
/// queue's workers (a dead keeper left its drop waiting for ever, a dead finisher a
/// stop with no grace limit). The keeper panics once the node is registered, the
/// finisher at the first task that ends: that task runs again on another node, which
/// then retires the dead one.
fn a_node_whose_thread_panics_stops() {
    if !cfg!(debug_assertions) {
        panic!("MULTIPROC_TEST_PANIC sets off panics only in builds with debug assertions");
    }
    let redis = RedisServer::start();
    let ns = "panics";
    let c = client(&redis, ns);
    for role in ["reader", "finisher", "keeper"] {
        let mut h = Helper::start_with(
            "panicking_worker",
            std::env::current_exe().unwrap(),
            &[
                ("MP_URL", &redis.url()),
                ("MP_NS", ns),
                ("MULTIPROC_TEST_PANIC", role),
            ],
        );
        h.expect("ready", T);
        let task = (role == "finisher").then(|| c.submit(SQUARE, 7).unwrap());
        let why = h.expect("broken: ", T);
        assert!(
            why.contains(&format!("its {role} thread panicked")),
            "{why}"
        );
        h.expect("dropped", T);
        assert!(h.wait(T).success());
        let stats = c.stats().unwrap();
        let Some(mut task) = task else {
            assert!(stats.workers.is_empty(), "{role}: {stats:?}");
            continue;
        };
        // The task whose outcome was lost with the finisher is still the dead node's:
        // the node stays listed until another has reclaimed that task (run again
        // there) and retired it.
        assert_eq!(stats.workers.len(), 1, "{stats:?}");
        let dead = stats.workers[0].name.clone();
        let w = worker(&redis, ns, 1);
        assert_eq!(task.wait_timeout(T).unwrap(), 49);
        assert!(
            common::eventually(T, || c
                .stats()
                .unwrap()
                .workers
                .iter()
                .all(|x| x.name != dead)),
            "{:?}",
            c.stats()
        );
        w.shutdown(true);
        let stats = c.stats().unwrap();
        assert!(stats.workers.is_empty(), "{stats:?}");
    }
    finish(&redis, c, ns);
}

/// A server that takes smaller values than the worker's `max_message` lets through
/// (`proto-max-bulk-len` lowered to 1 MB, before the worker starts or while it runs): a
/// task whose outcome it would refuse fails at once, saying so. Sent, that outcome
/// closed the connection: a small one's task ran again and again until dead-lettered
/// as a lost worker's, a large one's was sent again for ever.
fn an_outcome_over_what_the_server_takes_fails_its_task() {
    fn refused(c: &Cluster, len: u64) {
        match c.submit(BYTES, len).unwrap().wait_timeout(T) {
            Err(TaskError::Codec(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains(&format!("its outcome encodes to {}", len / 100))
                        && e.contains("the server takes at most")
                        && e.contains("proto-max-bulk-len"),
                    "{e}"
                );
            }
            other => panic!(
                "an outcome of {len} bytes the server refuses: {:?}",
                other.map(|v| v.len())
            ),
        }
    }
    let redis = RedisServer::start_with(&["--proto-max-bulk-len", "1mb"]);
    let ns = "bulk";
    let w = worker(&redis, ns, 1);
    let c = client(&redis, ns);
    let mut small = c.submit(SQUARE, 3).unwrap();
    refused(&c, 2_000_000);
    refused(&c, 30_000_000);
    assert_eq!(small.wait_timeout(T).unwrap(), 9);
    assert_eq!(c.apply(BYTES, 100_000).unwrap(), vec![7; 100_000]);
    // A task larger than the server takes is refused as one over the client's cap
    // (sent, it closed the connection: "connection lost").
    match c.submit(RECORD, "x".repeat(2_000_000)) {
        Err(ClusterError::TooLarge { size, max }) => {
            assert!(size > 2_000_000 && max < 1 << 20, "{size} {max}");
        }
        other => panic!("a task over the server's limit: {:?}", other.map(|_| ())),
    }
    let stats = c.stats().unwrap();
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    w.shutdown(true);
    finish(&redis, c, ns);

    // Lowered while the worker runs: it reads the limits again as it renews its
    // leases (every third of a lease, a second here).
    let redis = RedisServer::start();
    let w = worker(&redis, ns, 1);
    let c = client(&redis, ns);
    assert_eq!(c.apply(BYTES, 2_000_000).unwrap().len(), 2_000_000);
    let config_reads = || config_get_stat(&redis, "calls").unwrap_or(0);
    redis.cmd(&["CONFIG", "SET", "proto-max-bulk-len", "1mb"]);
    // Two reads since (the keeper's, one after the other): the first one's answer is
    // in use.
    let before = config_reads();
    assert!(
        common::eventually(T, || config_reads() >= before + 2),
        "the worker does not read the server's limits again"
    );
    refused(&c, 30_000_000);
    assert_eq!(c.apply(SQUARE, 4).unwrap(), 16);
    assert!(w.broken().is_none());
    w.shutdown(true);
    finish(&redis, c, ns);
}

fn redis_restarted_mid_run() {
    let mut redis = RedisServer::start();
    let ns = "restart";
    let w = worker(&redis, ns, 2);
    let c = client(&redis, ns);
    let tasks = c.submit_batch(SPIN, (0..3000u64).map(|_| 1)).unwrap();
    let done = || tasks.iter().filter(|t| t.is_done()).count();
    assert!(common::eventually(T, || done() > 300));
    // Mid-run: most of the tasks are still to end.
    let before = done();
    assert!(
        before < 2000,
        "{before} of 3000 tasks ended before the restart"
    );
    redis.restart();
    for mut t in tasks {
        match t.wait_timeout(Duration::from_secs(120)) {
            Err(TaskError::Timeout) => panic!("a task hangs after the restart"),
            r => assert_eq!(r.unwrap(), 1),
        }
    }
    // New work goes through on the new server.
    assert_eq!(c.apply(SQUARE, 8).unwrap(), 64);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// Tasks that end while the server is down (for less than a lease) run once: their
/// outcomes wait in the worker until the server is back, rather than being dropped and
/// their tasks run again once the lease lapses.
fn outcomes_of_tasks_that_end_while_redis_is_down_are_kept() {
    let mut redis = RedisServer::start();
    let ns = "down";
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(2)
        .lease(Duration::from_secs(5))
        .grace(Duration::from_secs(10))
        .build()
        .expect("start worker");
    let c = client(&redis, ns);
    let dir = common::tempdir("down");
    let (paths, tasks) = recorded_runs(&c, &dir, 2, 1500);
    // Both started; they end about 1.5 s later, with the server down (it is, well before:
    // a machine too slow for that fails the test rather than let it prove nothing).
    assert!(common::eventually(T, || paths
        .iter()
        .all(|p| std::path::Path::new(p).exists())));
    let first_start = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .min()
        .unwrap();
    let running = first_start.elapsed().unwrap_or_default();
    assert!(
        running < Duration::from_millis(1000),
        "the tasks ran {running:?} before the server stopped"
    );
    redis.restart_after(Duration::from_millis(2500));
    for mut t in tasks {
        assert_eq!(t.wait_timeout(T).unwrap(), 1);
    }
    for p in &paths {
        assert_eq!(
            runs(p),
            1,
            "{p}: a task that ended while Redis was down ran more than once"
        );
    }
    w.shutdown(true);
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One idempotency key given to tasks of two queues is two tasks, each with its own
/// outcome; a repeat submission that fails (the server is down) leaves the first
/// submission's handle waiting for its outcome; a cancel reaches every client waiting.
fn idempotency_keys_are_per_queue_and_a_failed_repeat_keeps_the_first() {
    let mut redis = RedisServer::start();
    let ns = "idemq";
    let c = client(&redis, ns);
    let key = TaskOptions::new().idempotency_key("order-1");
    let a = c.submit_with(SQUARE, 3, key.clone().queue("qa")).unwrap();
    let b = c.submit_with(SQUARE, 4, key.clone().queue("q[a]")).unwrap();
    let first = c.submit_with(SQUARE, 5, key.clone()).unwrap();
    // A key that looks like a task's id is a key of its own.
    let mut prefixed = c
        .submit_with(SQUARE, 10, TaskOptions::new().idempotency_key("k:order-1"))
        .unwrap();
    redis.stop_keeping_data();
    assert!(c.submit_with(SQUARE, 5, key.clone()).is_err());
    redis.start_again();
    // A task cancelled while another client waits for it with its key: both are told.
    let c2 = client(&redis, ns);
    let later = TaskOptions::new()
        .idempotency_key("later")
        .countdown(Duration::from_secs(60));
    let mut mine = c.submit_with(SQUARE, 6, later.clone()).unwrap();
    let mut theirs = c2.submit_with(SQUARE, 6, later).unwrap();
    assert!(mine.cancel());
    assert_eq!(mine.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    assert_eq!(theirs.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    drop(c2);
    // A countdown too long to count in milliseconds is a century, as on a pool (the
    // record's life overflowed in the script, and the submission failed).
    let never = TaskOptions::new()
        .idempotency_key("never")
        .countdown(Duration::MAX);
    let mut never = c.submit_with(SQUARE, 7, never).unwrap();
    assert!(never.cancel());
    assert_eq!(never.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    // So is an eta past what milliseconds since 1970 count in 64 bits (they wrapped).
    let far = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 60);
    let far = TaskOptions::new().idempotency_key("far").eta(far);
    let mut far = c.submit_with(SQUARE, 8, far).unwrap();
    assert!(far.cancel());
    assert_eq!(far.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    let workers: Vec<WorkerHandle> = ["qa", "q[a]", "default"]
        .into_iter()
        .map(|q| {
            tasks(Worker::builder(&redis.url()))
                .namespace(ns)
                .queue(q)
                .processes(1)
                .build()
                .expect("start worker")
        })
        .collect();
    let (mut a, mut b, mut first) = (a, b, first);
    assert_eq!(a.wait_timeout(T).unwrap(), 9);
    assert_eq!(b.wait_timeout(T).unwrap(), 16);
    assert_eq!(first.wait_timeout(T).unwrap(), 25);
    assert_eq!(prefixed.wait_timeout(T).unwrap(), 100);
    for w in workers {
        w.shutdown(true);
    }
    // A queue's name is matched literally: deleting `q[a]` leaves `qa`'s keys.
    c.delete_queue("q[a]").unwrap();
    let qa = format!("{ns}:{{qa}}:");
    assert!(!redis.keys(&qa).is_empty());
    assert!(redis.keys(&format!("{ns}:{{q[a]}}:")).is_empty());
    c.delete_queue("qa").unwrap();
    finish(&redis, c, ns);
}

fn idempotency_cancel_and_timeout() {
    let redis = RedisServer::start();
    let ns = "idem";
    let c = client(&redis, ns);
    let c2 = client(&redis, ns);
    // Submitted twice (by two clients) with one key: it runs once, both get the outcome.
    let dir = common::tempdir("idem");
    let path = dir.join("runs").display().to_string();
    let opts = TaskOptions::new().idempotency_key("job-1");
    let t1 = c
        .submit_with(FLAKY, (path.clone(), 1), opts.clone())
        .unwrap();
    let t2 = c2
        .submit_with(FLAKY, (path.clone(), 1), opts.clone())
        .unwrap();
    // A delayed task cancelled before its time.
    let later = c
        .submit_with(
            SQUARE,
            2,
            TaskOptions::new().countdown(Duration::from_secs(30)),
        )
        .unwrap();
    assert!(later.cancel());
    assert_eq!(later.wait().unwrap_err(), TaskError::Cancelled);
    // A queued task cancelled before any worker has made the queue's consumer group:
    // removed, never run.
    let never = dir.join("never").display().to_string();
    let queued = c.submit(FLAKY, (never.clone(), 1)).unwrap();
    assert!(queued.cancel(), "a queued task before any worker");
    assert_eq!(queued.wait().unwrap_err(), TaskError::Cancelled);
    let w = worker(&redis, ns, 2);
    assert_eq!(t1.wait().unwrap(), Ok(1));
    assert_eq!(t2.wait().unwrap(), Ok(1));
    // Once done, the key still answers with the same outcome, without a run.
    let t3 = c2.submit_with(FLAKY, (path.clone(), 1), opts).unwrap();
    assert_eq!(t3.wait().unwrap(), Ok(1));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1");
    // A running task cancelled: stopped at its worker's next renewal.
    let long = c.submit(SLOW_SQUARE, (3, 20_000)).unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight == 1));
    assert!(long.cancel());
    assert_eq!(long.wait().unwrap_err(), TaskError::Cancelled);
    // A timeout stops a task.
    let slow = c
        .submit_with(
            SLOW_SQUARE,
            (3, 20_000),
            TaskOptions::new().timeout(Duration::from_millis(300)),
        )
        .unwrap();
    assert_eq!(slow.wait().unwrap_err(), TaskError::TimedOut);
    // By now the worker has long taken everything the stream held.
    assert!(
        !std::path::Path::new(&never).exists(),
        "the cancelled task ran"
    );
    let _ = std::fs::remove_dir_all(&dir);
    w.shutdown(true);
    drop(c2);
    finish(&redis, c, ns);
}

fn streams_trimmed_after_100k_tasks() {
    let redis = RedisServer::start();
    let ns = "trim";
    let w = worker(&redis, ns, 2);
    let c = client(&redis, ns);
    let n = 100_000u64;
    // One stream entry per task (a map would send chunks).
    let tasks = c.submit_batch(SQUARE, 0..n).unwrap();
    for (x, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.wait().unwrap(), (x * x) as u64);
    }
    let stream = format!("{ns}:{{default}}:stream");
    assert_eq!(redis.cmd(&["XLEN", &stream]), Resp::Int(0));
    let stats = c.stats().unwrap();
    assert_eq!(
        (stats.waiting, stats.in_flight, stats.dead_lettered),
        (0, 0, 0)
    );
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// Schedulers sharing a cluster lead its jobs one at a time; a job that runs in the
/// program's own thread pool is each scheduler's own, and runs on every one of them.
fn local_jobs_run_on_every_scheduler_of_a_cluster() {
    use multiproc::sched::{EventKind, Job, Schedule, Scheduler};
    let redis = RedisServer::start();
    let ns = "sched_local";
    let start = || {
        let s = Scheduler::builder()
            .cluster(client(&redis, ns))
            .thread_pool(multiproc::ThreadPool::new(1).unwrap())
            .build()
            .unwrap();
        let events = s.events();
        s.add(Job::thread(
            "local",
            Schedule::every(Duration::from_millis(100)),
            || (),
        ))
        .unwrap();
        (s, events)
    };
    let ((s1, e1), (s2, e2)) = (start(), start());
    let ran = |events: &crossbeam_channel::Receiver<multiproc::sched::JobEvent>| {
        events
            .try_iter()
            .filter(|e| matches!(e.kind, EventKind::Succeeded { .. }))
            .count()
    };
    let (mut a, mut b) = (0, 0);
    assert!(
        common::eventually(T, || {
            a += ran(&e1);
            b += ran(&e2);
            a >= 5 && b >= 5
        }),
        "runs of the local job: {a} and {b}"
    );
    s1.shutdown(true);
    s2.shutdown(true);
    finish(&redis, client(&redis, ns), ns);
}

/// A job that runs in the program's own thread pool asks Redis nothing as it fires, on a
/// scheduler that has a cluster: with the server paused, each of its fires waited for a
/// response timeout (10 s) holding the scheduler's state (`add`, `jobs` and every
/// other job waited too).
fn a_local_job_fires_while_the_cluster_is_paused() {
    use multiproc::chrono::Utc;
    use multiproc::sched::{Job, ManualClock, Schedule};
    let redis = RedisServer::start();
    let ns = "sched_paused";
    let t0 = Utc::now();
    let clock = ManualClock::new(t0);
    let s = on_cluster(&redis, ns, &clock)
        .thread_pool(multiproc::ThreadPool::new(1).unwrap())
        .build_manual();
    let every = Schedule::every(Duration::from_secs(1)).starting_at(t0);
    s.add(Job::thread("local", every, || ())).unwrap();
    assert_eq!(s.run_pending(), 1);
    redis.pause();
    clock.advance(Duration::from_secs(1));
    let started = Instant::now();
    let fired = s.run_pending();
    let took = started.elapsed();
    redis.resume();
    assert_eq!(fired, 1);
    assert!(took < Duration::from_secs(5), "a local fire took {took:?}");
    s.shutdown(true);
    finish(&redis, client(&redis, ns), ns);
}

/// A scheduler builder firing into namespace `ns` of `redis`, on `clock`.
fn on_cluster(
    redis: &RedisServer,
    ns: &str,
    clock: &multiproc::sched::ManualClock,
) -> multiproc::sched::SchedulerBuilder {
    multiproc::sched::Scheduler::builder()
        .cluster(client(redis, ns))
        .clock(clock.clone())
}

/// The `Missed` `TooLate` ones among `events`: the first time, the count, the last.
fn too_late(
    events: impl IntoIterator<Item = multiproc::sched::JobEvent>,
) -> Vec<(
    multiproc::chrono::DateTime<multiproc::chrono::Utc>,
    u64,
    multiproc::chrono::DateTime<multiproc::chrono::Utc>,
)> {
    use multiproc::sched::{EventKind, MissReason};
    events
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Missed {
                count,
                last,
                reason: MissReason::TooLate,
            } => Some((e.scheduled, count, last)),
            _ => None,
        })
        .collect()
}

/// Fire times of a cluster job that turn too late while no scheduler can reach Redis
/// are reported (`Missed`, `TooLate`) once one leads again: the job's next time moved
/// past them while the cluster could not say who leads, and no event ever told of them.
fn times_missed_while_redis_was_down_are_reported() {
    use multiproc::chrono::{TimeDelta, Utc};
    use multiproc::sched::{Job, ManualClock, Schedule};
    let mut redis = RedisServer::start();
    let ns = "sched_down";
    let t0 = Utc::now();
    let secs = TimeDelta::seconds;
    let clock = ManualClock::new(t0);
    let s = on_cluster(&redis, ns, &clock).build_manual();
    let events = s.events();
    let every = Schedule::every(Duration::from_secs(1)).starting_at(t0);
    s.add(Job::cluster("tick", every, SQUARE, 3)).unwrap();
    assert_eq!(s.run_pending(), 1);
    redis.stop_keeping_data();
    clock.set(t0 + secs(10));
    assert_eq!(s.run_pending(), 0);
    redis.start_again();
    clock.set(t0 + secs(11));
    s.run_pending();
    let missed = too_late(events.try_iter());
    // A grace of one period: at t0 + 11 s, t0 + 1 s to t0 + 9 s are too late.
    assert_eq!(missed, vec![(t0 + secs(1), 9, t0 + secs(9))]);
    // The runs it submitted end, and the shutdown with them.
    let w = worker(&redis, ns, 1);
    s.shutdown(true);
    w.shutdown(true);
    finish(&redis, client(&redis, ns), ns);
}

/// A scheduler with a job store of its own keeps a cluster job's fire times while
/// another scheduler leads (here: a lease set by hand that nobody renews), in case that
/// leader dies first; once it leads itself, in a pass where later times are too late as
/// well, the kept times are reported with those. Its store's mark past the times too
/// late made the store refuse the kept ones: they were neither run nor reported.
#[cfg(feature = "sqlite")]
fn times_a_follower_kept_are_reported_when_it_leads_with_a_store() {
    use multiproc::chrono::{TimeDelta, Utc};
    use multiproc::sched::{Job, JobStore, ManualClock, Schedule};
    let redis = RedisServer::start();
    let ns = "sched_kept";
    let dir = common::tempdir("sched-kept");
    let t0 = Utc::now();
    let secs = TimeDelta::seconds;
    let clock = ManualClock::new(t0);
    let s = on_cluster(&redis, ns, &clock)
        .store(JobStore::open(dir.join("jobs.db")).unwrap())
        .build_manual();
    let events = s.events();
    let leader = format!("{ns}:{{default}}:scheduler:leader");
    redis.cmd(&["SET", &leader, "another-scheduler", "PX", "60000"]);
    let every = Schedule::every(Duration::from_secs(1)).starting_at(t0);
    s.add(Job::cluster("tick", every, SQUARE, 3)).unwrap();
    // A follower: t0 is due, and kept for the leader (the job's next time moved past
    // it; a pass that could not learn who leads would have left it at t0).
    assert_eq!(s.run_pending(), 0);
    assert_eq!(s.jobs()[0].next_fire, Some(t0 + secs(1)));
    redis.cmd(&["DEL", &leader]);
    clock.set(t0 + secs(5));
    s.run_pending();
    let missed = too_late(events.try_iter());
    // A grace of one period: at t0 + 5 s, t0 to t0 + 3 s are too late, the kept t0
    // with the three after it.
    assert_eq!(missed, vec![(t0, 4, t0 + secs(3))]);
    // The runs it submitted end, and the shutdown with them.
    let w = worker(&redis, ns, 1);
    s.shutdown(true);
    w.shutdown(true);
    finish(&redis, client(&redis, ns), ns);
    let _ = std::fs::remove_dir_all(dir);
}

fn two_schedulers_fire_each_time_once() {
    use multiproc::chrono::{DateTime, Utc};
    use multiproc::sched::{Coalesce, EventKind, Job, JobEvent, Schedule, Scheduler};
    let redis = RedisServer::start();
    let ns = "sched";
    // The claim here is the schedulers' (each fire time submitted once), so the worker's
    // task lease is long: with the 1 s lease of the other tests, a starved machine could
    // let a lease run out after a run and before its ack, and the cluster would then run
    // that task again (at least once, as its own tests show).
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(2)
        .lease(Duration::from_secs(30))
        .grace(Duration::from_secs(10))
        .build()
        .expect("start worker");
    let dir = common::tempdir("sched");
    let path = dir.join("runs").display().to_string();
    let period = Duration::from_millis(250);
    // Interval schedules share their start, so both schedulers see the same times.
    let t0 = Utc::now();
    let job = || {
        Job::cluster(
            "tick",
            Schedule::every(period).starting_at(t0),
            RECORD,
            path.clone(),
        )
        .coalesce(Coalesce::All)
        .max_instances(100)
        .misfire_grace(Duration::from_secs(60))
    };
    // Subscribed before the job is added: its first time, t0, is due at once.
    let start = || {
        let s = Scheduler::builder()
            .cluster(client(&redis, ns))
            .build()
            .unwrap();
        let events = s.events();
        s.add(job()).unwrap();
        (s, events)
    };
    let ((s1, e1), (s2, e2)) = (start(), start());
    std::thread::sleep(Duration::from_secs(3));
    // Whoever leads is stopped; the other takes over once the lease runs out.
    let started = |events: &crossbeam_channel::Receiver<JobEvent>| -> Vec<DateTime<Utc>> {
        events
            .try_iter()
            .filter(|e| matches!(e.kind, EventKind::Started { attempt: 1 }))
            .map(|e| e.scheduled)
            .collect()
    };
    let (a, b) = (started(&e1), started(&e2));
    let (leader, follower) = if a.len() >= b.len() {
        (s1, s2)
    } else {
        (s2, s1)
    };
    leader.shutdown(true);
    std::thread::sleep(Duration::from_secs(5));
    follower.shutdown(true);
    let mut fired = [a, b, started(&e1), started(&e2)].concat();
    fired.sort();
    let n = fired.len();
    fired.dedup();
    assert_eq!(fired.len(), n, "a fire time was submitted twice");
    assert!(n >= 20, "only {n} runs in 8 s");
    // Every time from the first (t0, to the millisecond a fire time keeps) to the last,
    // none lost in the failover.
    assert_eq!(
        fired[0].timestamp_millis(),
        t0.timestamp_millis(),
        "the first time was not fired"
    );
    for pair in fired.windows(2) {
        assert_eq!((pair[1] - pair[0]).to_std().unwrap(), period, "{pair:?}");
    }
    // And each ran once.
    let runs = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(
        common::eventually(T, || runs() == n),
        "{} runs recorded for {n} fire times started",
        runs()
    );
    let _ = std::fs::remove_dir_all(&dir);
    w.shutdown(true);
    finish(&redis, client(&redis, ns), ns);
}

/// A scheduler keeps the cluster's leader lease between fire times: a run it fired
/// and retries later than the lease lasts (4 s, against 3 s) is submitted under it.
/// The lease was renewed only in passes with a time due, and such a retry failed, "no
/// longer holds the leader lease" (as did a run waiting for a long jitter).
fn a_retry_later_than_the_leader_lease_is_submitted() {
    use multiproc::chrono::Utc;
    use multiproc::sched::{EventKind, Job, Schedule, Scheduler};
    let redis = RedisServer::start();
    let ns = "sched_retry";
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .build()
        .expect("start worker");
    let dir = common::tempdir("sched_retry");
    let path = dir.join("runs").display().to_string();
    let s = Scheduler::builder()
        .cluster(client(&redis, ns))
        .build()
        .unwrap();
    let events = s.events();
    let four = Duration::from_secs(4);
    s.add(
        Job::cluster("flaky", Schedule::once(Utc::now()), FLAKY, (path, 2)).retry(
            RetryPolicy::attempts(2)
                .backoff(four, 1.0, four)
                .jitter(multiproc::Jitter::None),
        ),
    )
    .unwrap();
    let mut seen = Vec::new();
    let outcome = loop {
        let e = events.recv_timeout(T).expect("an event");
        seen.push(format!("{:?}", e.kind));
        match e.kind {
            EventKind::Succeeded { attempt } => break Ok(attempt),
            EventKind::Failed {
                attempt,
                error,
                retry_in: None,
            } => break Err((attempt, error.to_string())),
            _ => {}
        }
    };
    s.shutdown(true);
    w.shutdown(true);
    let _ = std::fs::remove_dir_all(&dir);
    finish(&redis, client(&redis, ns), ns);
    assert_eq!(outcome, Ok(2), "{seen:?}");
}

/// Every public handle of the cluster crosses threads (checked when this compiles).
#[allow(dead_code)]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Cluster>();
    check::<WorkerHandle>();
    check::<TaskDef<String, Vec<u8>>>();
    check::<TaskOptions>();
    check::<ClusterError>();
    check::<multiproc::cluster::QueueStats>();
}

fn tls_with_a_private_ca() {
    // A CA of the test's own, and a certificate for 127.0.0.1 that it signed.
    let dir = common::tempdir("tls");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subject = |cn: &str| format!("/CN={cn}");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        &subject("multiproc-test-ca"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &subject("127.0.0.1"),
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let path = |f: &str| dir.join(f).display().to_string();
    let tls_port = cluster_common::free_port().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    // The system's roots do not know this CA: refused.
    let e = Cluster::connect(&url).unwrap_err();
    assert!(e.is_connection(), "{e}");
    let ns = "tls";
    let c = Cluster::builder(&url)
        .namespace(ns)
        .tls_root_certificates(ca.clone())
        .build()
        .unwrap();
    let w = tasks(Worker::builder(&url))
        .namespace(ns)
        .processes(1)
        .tls_root_certificates(ca)
        .build()
        .unwrap();
    assert_eq!(c.apply(SQUARE, 5).unwrap(), 25);
    assert_eq!(c.map(SQUARE, 0..100u64).unwrap()[99], 9801);
    w.shutdown(true);
    let _ = std::fs::remove_dir_all(&dir);
    finish(&redis, c, ns);
}

fn redis_lost_its_data_mid_run() {
    let mut redis = RedisServer::start();
    let ns = "wiped";
    let w = worker(&redis, ns, 2);
    let c = client(&redis, ns);
    let tasks = c
        .submit_batch(SLOW_SQUARE, (0..6u64).map(|x| (x, 3000)))
        .unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight > 0));
    // Killed and started empty: every task waited for is gone, and says so.
    redis.restart_empty();
    for mut t in tasks {
        let e = t.wait_timeout(T).unwrap_err();
        assert!(!e.is_timeout(), "a task of a wiped server hangs");
        assert!(e.to_string().contains("lost its data"), "{e}");
    }
    // Clients and workers go on with the new server.
    assert_eq!(c.apply(SQUARE, 3).unwrap(), 9);
    // A task sent to the new server before the client noticed the loss is not counted
    // among those lost: only tasks sent under the old epoch are.
    let mut old = c.submit(SLOW_SQUARE, (7, 3000)).unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight > 0));
    redis.restart_empty();
    let mut new = c.submit(SLOW_SQUARE, (8, 500)).unwrap();
    let e = old.wait_timeout(T).unwrap_err();
    assert!(e.to_string().contains("lost its data"), "{e}");
    assert_eq!(new.wait_timeout(T).unwrap(), 64);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A node whose queue's group is destroyed while it stops (its reader gone, a task
/// still running) ends that task's run as a lost lease's, unregisters (nothing is
/// pending for it in a group that is gone) and stops at once. Its finish and its
/// unregistering failed on the missing group, and the unregistering was tried again
/// for 10 s, the node left registered.
fn a_node_stops_at_once_when_its_group_is_gone() {
    let redis = RedisServer::start();
    let ns = "group_gone";
    let c = client(&redis, ns);
    let w = worker(&redis, ns, 1);
    assert_eq!(c.apply(SQUARE, 3).unwrap(), 9);
    // Long enough to outlast the reader's leaving on a loaded machine (3 s did not, nor
    // 6 s once, in a run of the cluster tests beside other work).
    let t = c.submit(SLOW_SQUARE, (2, 9000)).unwrap();
    assert!(common::eventually(T, || w.in_flight() == 1));
    let started = Instant::now();
    w.shutdown(false);
    // Once the node's reader is gone (it would make the group again).
    let reading = || {
        redis
            .cmd(&["CLIENT", "LIST"])
            .text()
            .contains("cmd=xreadgroup")
    };
    assert!(common::eventually(T, || !reading()));
    let stream = format!("{ns}:{{default}}:stream");
    assert_eq!(
        redis.cmd(&["XGROUP", "DESTROY", &stream, "workers"]),
        Resp::Int(1)
    );
    assert!(
        w.in_flight() == 1,
        "the task ended before the group was gone"
    );
    w.shutdown(true);
    let took = started.elapsed();
    // At most the task's 9 s, and not 10 s more of unregistering tried again.
    assert!(took < Duration::from_secs(15), "the stop took {took:?}");
    let workers = redis.cmd(&["ZCARD", &format!("{ns}:{{default}}:workers")]);
    assert_eq!(workers, Resp::Int(0), "the node is still registered");
    drop(t);
    finish(&redis, c, ns);
}

/// Task options a task cannot run with are refused before anything is sent, as a pool
/// refuses them: a timeout of zero (it became 1 ms, and every run timed out, each retry
/// spent), an empty idempotency key, one of more than 512 bytes.
fn bad_task_options_are_refused() {
    let redis = RedisServer::start();
    let ns = "bad_options";
    let c = client(&redis, ns);
    let bad = [
        TaskOptions::new().timeout(Duration::ZERO),
        TaskOptions::new().idempotency_key(""),
        TaskOptions::new().idempotency_key("k".repeat(513)),
    ];
    for opts in bad {
        let what = format!("{opts:?}");
        let e = c.submit_with(SQUARE, 2, opts).map(drop).unwrap_err();
        assert!(matches!(e, ClusterError::InvalidArgument(_)), "{what}: {e}");
    }
    let stats = c.stats().unwrap();
    assert_eq!((stats.waiting, stats.in_flight), (0, 0), "{stats:?}");
    // A timeout under a millisecond is a millisecond's: the task may run (and here
    // times out).
    let w = worker(&redis, ns, 1);
    let e = c
        .submit_with(
            SLOW_SQUARE,
            (2, 500),
            TaskOptions::new().timeout(Duration::from_micros(10)),
        )
        .unwrap()
        .wait_timeout(T)
        .unwrap_err();
    assert_eq!(e, TaskError::TimedOut);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A full node whose server lost its data (restarted empty) stops the tasks it holds,
/// the one running and the one queued behind it, at its next renewal: their clients
/// were told to submit them again. And it reads new work at once. (Its renewals failed
/// on the missing group, and were retried until it had room again: it ran the first
/// task to its end and started the second, and a new task waited for them.)
fn a_full_node_stops_its_tasks_when_redis_lost_its_data() {
    let mut redis = RedisServer::start();
    let ns = "wiped_full";
    let dir = common::tempdir(ns);
    let w = node_at(&redis.url(), ns, 1).prefetch(2).build().unwrap();
    let c = client(&redis, ns);
    let (paths, tasks) = recorded_runs(&c, &dir, 2, 3000);
    assert!(common::eventually(T, || {
        std::path::Path::new(&paths[0]).exists() && c.stats().unwrap().in_flight == 2
    }));
    let first_ran = Instant::now();
    redis.restart_empty();
    for mut t in tasks {
        let e = t.wait_timeout(T).unwrap_err();
        assert!(e.to_string().contains("lost its data"), "{e}");
    }
    assert_eq!(
        c.apply_timeout(SQUARE, 3, Duration::from_secs(3)).unwrap(),
        9,
        "a new task waited for the node's lost ones"
    );
    // Until after the first task would have ended, and the second started.
    std::thread::sleep(
        (first_ran + Duration::from_secs(4)).saturating_duration_since(Instant::now()),
    );
    assert!(
        !std::path::Path::new(&paths[1]).exists(),
        "a task its client was told to submit again ran"
    );
    w.shutdown(true);
    finish(&redis, c, ns);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `field` (`calls`, `rejected_calls`) of `CONFIG GET` in the server's command
/// statistics; `None` before the command was first seen.
fn config_get_stat(redis: &RedisServer, field: &str) -> Option<u64> {
    let stats = redis.cmd(&["INFO", "commandstats"]).text();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_config|get:"))?
        .split(',')
        .find_map(|f| f.strip_prefix(field)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// Makes the ACL user `app` (password `app-pass`), allowed everything but what `less`
/// takes away; returns a URL that logs in as it.
fn acl_user(redis: &RedisServer, less: &[&str]) -> String {
    let mut args = vec![
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-pass",
        "~*",
        "&*",
        "+@all",
    ];
    args.extend_from_slice(less);
    assert_eq!(redis.cmd(&args), Resp::Simple("OK".into()));
    format!("redis://app:app-pass@127.0.0.1:{}", redis.port)
}

/// A user allowed only its namespace's keys (`~ns:*`, as apps that share a server are
/// set up) runs plain and idempotent tasks, cancels one, and requeues a dead letter.
/// The scripts named an empty key for a record or reply list a task does not have, a
/// key outside the namespace: every finish of a plain task was refused (`NOPERM`), the
/// task ran again at each lease until dead-lettered, and its client never heard.
fn a_user_allowed_only_its_namespace_runs_everything() {
    let redis = RedisServer::start();
    let ns = "narrow";
    let pattern = format!("~{ns}:*");
    let args = [
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-pass",
        "resetkeys",
        &pattern,
        "&*",
        "+@all",
    ];
    assert_eq!(redis.cmd(&args), Resp::Simple("OK".into()));
    let url = format!("redis://app:app-pass@127.0.0.1:{}", redis.port);
    let w = tasks(Worker::builder(&url))
        .namespace(ns)
        .processes(1)
        .lease(Duration::from_secs(1))
        .max_deliveries(1)
        .build()
        .unwrap();
    let c = Cluster::builder(&url).namespace(ns).build().unwrap();
    assert_eq!(
        c.submit(SQUARE, 3)
            .unwrap()
            .wait_timeout(Duration::from_secs(10))
            .unwrap(),
        9
    );
    let key = TaskOptions::new().idempotency_key("narrow-1");
    assert_eq!(c.submit_with(SQUARE, 4, key).unwrap().wait().unwrap(), 16);
    let mut later = c
        .submit_with(
            SQUARE,
            5,
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    assert!(later.cancel());
    assert_eq!(later.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    let e = c.submit(ABORT, 1).unwrap().wait().unwrap_err();
    assert!(e.is_dead_lettered(), "{e}");
    let dead = c.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(c.requeue_dead(&dead[0].id).unwrap());
    assert!(common::eventually(T, || c
        .dead_letters(10)
        .unwrap()
        .first()
        .is_some_and(|d| d.id != dead[0].id)));
    w.shutdown(true);
    finish(&redis, c, ns);
}

fn acl_user_and_an_undecodable_result() {
    let redis = RedisServer::start();
    let ns = "acl";
    // An ACL user of its own.
    let url = acl_user(&redis, &[]);
    let wrong = format!("redis://app:nope@127.0.0.1:{}", redis.port);
    assert!(matches!(
        Cluster::connect(&wrong),
        Err(ClusterError::Auth(_))
    ));
    let c = Cluster::builder(&url).namespace(ns).build().unwrap();
    // No worker: the outcome is written by hand, and it is not a u64.
    let t = c.submit(SQUARE, 3).unwrap();
    // Layout version 4, Outcome::Value, 2 bytes of noise.
    answer_by_hand(&redis, ns, &c, 1, &[4, 0, 2, 0xff, 0xff]);
    let mut t = t;
    let e = t.wait_timeout(T).unwrap_err();
    assert!(matches!(e, TaskError::Codec(_)), "{e}");
    // The client goes on. A worker whose user may not run CONFIG goes by Redis's
    // default limits, and asks for them once, not at every renewal.
    acl_user(&redis, &["-config"]);
    let w = tasks(Worker::builder(&url))
        .namespace(ns)
        .processes(1)
        .lease(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(c.apply(SQUARE, 12).unwrap(), 144);
    assert_eq!(c.apply(BYTES, 2_000_000).unwrap().len(), 2_000_000);
    // Two renewals more (each moves the node's score in the workers' set), each
    // followed by the read of the limits a refusal must stop.
    let name = c.stats().unwrap().workers[0].name.clone();
    let workers = format!("{ns}:{{default}}:workers");
    let mut scores = std::collections::HashSet::new();
    assert!(
        common::eventually(T, || {
            scores.insert(redis.cmd(&["ZSCORE", &workers, &name]).text());
            scores.len() >= 3
        }),
        "the worker does not renew"
    );
    assert_eq!(config_get_stat(&redis, "rejected_calls"), Some(1));
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A user whose rules leave out the `@dangerous` commands (a common way to set up an
/// application's user; `INFO` is among them) starts a client and a worker node, which
/// read the server's version from `HELLO` instead, and runs a task: both failed to
/// start, `NOPERM`.
fn a_user_without_dangerous_commands_runs_tasks() {
    let redis = RedisServer::start();
    let ns = "notdangerous";
    let url = acl_user(&redis, &["-@dangerous"]);
    let c = Cluster::builder(&url).namespace(ns).build().unwrap();
    let w = node_at(&url, ns, 1).build().unwrap();
    assert_eq!(c.apply(SQUARE, 12).unwrap(), 144);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A worker node finishes, renews and reclaims tasks with scripts, but takes them with
/// plain commands: one whose Redis user may not run scripts took every task and
/// answered none, its client waiting for ever. It is refused at the start, and one
/// whose user loses them while it runs stops, its task run elsewhere.
fn a_worker_whose_user_may_not_run_scripts_stops() {
    let redis = RedisServer::start();
    let ns = "noscripts";
    let url = acl_user(&redis, &["-@scripting"]);
    let e = node_at(&url, ns, 1).build().expect_err("refused");
    assert!(e.to_string().contains("may not run scripts"), "{e}");

    let url = acl_user(&redis, &["+@scripting"]);
    let w = node_at(&url, ns, 1).build().unwrap();
    let c = client(&redis, ns);
    assert_eq!(c.apply(SQUARE, 2).unwrap(), 4);
    assert_eq!(
        redis.cmd(&["ACL", "SETUSER", "app", "-@scripting"]),
        Resp::Simple("OK".into())
    );
    let mut task = c.submit(SQUARE, 3).unwrap();
    assert!(
        common::eventually(T, || w.broken().is_some()),
        "the node goes on"
    );
    let why = w.broken().unwrap_or_default();
    assert!(why.contains("NOPERM"), "{why}");
    // Another node, of a user that may, runs the task once its lease lapses.
    let other = node_at(&redis.url(), ns, 1).build().unwrap();
    assert_eq!(task.wait_timeout(T).unwrap(), 9);
    w.shutdown(true);
    other.shutdown(true);
    finish(&redis, c, ns);
}

/// A server that evicts keys once full drops tasks, results and leases without an
/// error: a client and a worker node that start on one say so in the log; on a server
/// that refuses writes instead (Redis's default), or that has no `maxmemory` to evict
/// at, they say nothing of it.
fn an_evicting_server_is_warned_of() {
    let ns = "evicting";
    for (policy, maxmemory, warned) in [
        ("allkeys-lru", "100mb", true),
        ("allkeys-lru", "0", false),
        ("noeviction", "100mb", false),
    ] {
        let redis =
            RedisServer::start_with(&["--maxmemory-policy", policy, "--maxmemory", maxmemory]);
        let mut h = Helper::start_with(
            "start_and_stop",
            std::env::current_exe().unwrap(),
            &[
                ("MP_URL", &redis.url()),
                ("MP_NS", ns),
                ("MP_TEST_LOGGING", "1"),
            ],
        );
        h.expect("done", T);
        assert!(h.wait(T).success());
        let log = h.stderr_to_end(T);
        for who in ["cluster client", "cluster worker"] {
            let said = log
                .lines()
                .any(|l| l.contains(who) && l.contains("maxmemory-policy is allkeys-lru"));
            assert_eq!(said, warned, "{policy}, {maxmemory}, {who}: {log}");
        }
        finish(&redis, client(&redis, ns), ns);
    }
}

/// The envelope of the one task waiting in the delayed set `delayed`.
fn delayed_envelope(raw: &mut cluster_common::Raw, delayed: &str) -> Vec<u8> {
    let members = raw.call(&["ZRANGE", delayed, "0", "-1"]).unwrap();
    let Resp::Array(members) = members else {
        panic!("ZRANGE: {members:?}")
    };
    let Some(Resp::Bulk(Some(original))) = members.first().cloned() else {
        panic!("no delayed envelope: {members:?}")
    };
    original
}

/// Writes `outcome` (its layout version first) as the outcome of client `c`'s `n`th
/// task of the default queue, and wakes `c` with a reply of the same version.
fn answer_by_hand(redis: &RedisServer, ns: &str, c: &Cluster, n: u64, outcome: &[u8]) {
    let task = format!("{}-{n}", c.id());
    let mut reply = vec![outcome[0], task.len() as u8];
    reply.extend_from_slice(task.as_bytes());
    reply.push(outcome.len() as u8);
    reply.extend_from_slice(outcome);
    let mut raw = redis.raw().unwrap();
    let result = format!("{ns}:{{default}}:result:{task}");
    let list = format!("{ns}:{{default}}:reply:{}", c.id());
    raw.call_bytes(&[b"SET", result.as_bytes(), outcome])
        .unwrap();
    raw.call_bytes(&[b"RPUSH", list.as_bytes(), &reply])
        .unwrap();
}

/// A chunk of a map is finished once, however many of its items' ends wake its node
/// after the last: the node polled the chunk at each, and each poll after the last item
/// ended made another finish with a copy of the chunk's whole outcome, all of them sent
/// to the server (here each of 1.6 MB, written as the result and again as the reply:
/// 64 MB sent where 3.3 MB would do).
fn a_chunk_is_finished_once() {
    let redis = RedisServer::start();
    let ns = "chunkonce";
    let w = worker(&redis, ns, 2);
    let c = client(&redis, ns);
    let received = || {
        let info = redis.cmd(&["INFO", "stats"]).text();
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_input_bytes:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("INFO stats")
    };
    // The server has the scripts (the first call of one sends its arguments twice).
    assert_eq!(c.map_chunked(BYTES, vec![1u64; 2], 2).unwrap().len(), 2);
    let before = received();
    let lengths = c.map_chunked(BYTES, vec![400u64; 4000], 4000).unwrap();
    assert!(lengths.iter().all(|v| v.len() == 400));
    // What the server received meanwhile: the chunk's outcome twice (3.3 MB), a few
    // kilobytes of calls besides.
    let took = received() - before;
    assert!(took < 4_000_000, "the server received {took} bytes");
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// An argument whose `Deserialize` panics, or a value whose `Serialize` does, in the
/// node (which decodes the argument before its pool runs the task, and encodes the
/// value its pool sends back) fails its task as a codec error; the node goes on. (The
/// panic ended the node's thread that read tasks, and the node with it; the task, back
/// in the queue, then ended each node that took it.)
fn an_argument_or_value_whose_coding_panics_fails_its_task_only() {
    let redis = RedisServer::start();
    let ns = "codingpanics";
    let w = worker(&redis, ns, 1);
    let c = client(&redis, ns);
    for (what, r) in [
        (
            "decoding the task's argument panicked",
            c.apply_timeout(UNDECODABLE_ARG, PanicsDecoded(3), T)
                .map(|_| ()),
        ),
        (
            "encoding the task's value panicked",
            c.apply_timeout(UNENCODABLE, 3, T).map(|_| ()),
        ),
        // In chunks of 3.
        (
            "decoding the task's argument panicked",
            c.map_timeout(UNDECODABLE_ARG, (0..130).map(PanicsDecoded), T)
                .map(|_| ()),
        ),
    ] {
        match r {
            Err(ClusterError::Task(TaskError::Codec(e))) => {
                assert!(e.to_string().contains(what), "{e}");
            }
            other => panic!("{what}: {:?}", other.err()),
        }
        assert!(w.broken().is_none(), "{:?}", w.broken());
    }
    assert_eq!(c.apply_timeout(SQUARE, 5, T).unwrap(), 25);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A failover behind the address that a worker and a client connect to (the old
/// primary made a replica of the new one, its connections left open: what a manual
/// failover or a proxy that keeps its sessions does) is followed: a connection whose
/// writes are refused as a replica's (`READONLY`) is made again, and reaches the new
/// primary. (The worker's threads that renew leases and write outcomes, and the
/// client's, kept their connections to the replica for ever, each write refused.)
fn a_failover_behind_one_address_is_followed() {
    let (old, new) = (RedisServer::start(), RedisServer::start());
    let ns = "failover";
    let role = |r: &RedisServer, what: &str| {
        r.cmd(&["INFO", "replication"])
            .text()
            .lines()
            .any(|l| l.trim() == what)
    };
    // The new one a replica of the old, in step.
    new.cmd(&["REPLICAOF", "127.0.0.1", &old.port.to_string()]);
    assert!(common::eventually(T, || role(
        &new,
        "master_link_status:up"
    )));
    let proxy = SwitchingProxy::start(old.port);
    let w = node_at(&proxy.url(), ns, 1).build().expect("start worker");
    let c = Cluster::builder(&proxy.url())
        .namespace(ns)
        .build()
        .expect("connect");
    assert_eq!(c.apply_timeout(SQUARE, 3, T).unwrap(), 9);
    // `new` has all that `old` had (their replication offsets equal).
    let offset = |r: &RedisServer| {
        r.cmd(&["INFO", "replication"])
            .text()
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("master_repl_offset:")
                    .map(str::to_owned)
            })
    };
    assert!(common::eventually(T, || role(
        &new,
        "master_link_status:up"
    ) && offset(&old) == offset(&new)));
    // The failover: `new` is the primary, the address leads there, `old` follows it.
    new.cmd(&["REPLICAOF", "NO", "ONE"]);
    proxy.switch_to(new.port);
    old.cmd(&["REPLICAOF", "127.0.0.1", &new.port.to_string()]);
    assert!(common::eventually(T, || role(&old, "role:slave")));
    for x in 4..8u64 {
        let r = c.apply_timeout(SQUARE, x, T);
        assert_eq!(r.as_ref().ok(), Some(&(x * x)), "task {x}: {r:?}");
    }
    w.shutdown(true);
    finish(&new, c, ns);
    drop(proxy);
}

/// A node whose prefetch is its process count (as for long tasks) takes a task as
/// soon as one of its processes is idle: it read only once half its prefetch was free,
/// and with three of four processes busy for 10 s, a short task waited for them.
fn an_idle_process_takes_a_task_whatever_the_prefetch() {
    let redis = RedisServer::start();
    let ns = "idleprocess";
    let w = node_at(&redis.url(), ns, 4)
        .prefetch(4)
        .build()
        .expect("start worker");
    let c = client(&redis, ns);
    let long: Vec<_> = (0..3)
        .map(|x| c.submit(SLOW_SQUARE, (x, 10_000)).unwrap())
        .collect();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight == 3));
    let started = Instant::now();
    let mut short = c.submit(SQUARE, 5).unwrap();
    assert_eq!(short.wait_timeout(T), Ok(25));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "it waited {took:?}");
    for mut t in long {
        t.cancel();
        let _ = t.wait_timeout(T);
    }
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A client whose reads of its reply list keep failing while the server accepts its
/// connections (here an ACL user that may not `BLPOP`) tries again less and less often
/// rather than connecting again and again at once.
fn a_reply_read_that_keeps_failing_backs_off() {
    let redis = RedisServer::start();
    let ns = "noblpop";
    let url = acl_user(&redis, &["-blpop"]);
    let c = Cluster::builder(&url).namespace(ns).build().unwrap();
    // No worker: the client only waits for the reply.
    let t = c.submit(SQUARE, 3).unwrap();
    let connections = || {
        let info = redis.cmd(&["INFO", "stats"]).text();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("INFO stats")
    };
    // The reader has failed and connected again at least once.
    let start = connections();
    assert!(common::eventually(T, || connections() > start));
    let before = connections();
    // The window the connections are counted over (the measurement, not a wait for an
    // event).
    std::thread::sleep(Duration::from_secs(3));
    let made = connections() - before;
    // About one a doubling wait (0.05 s, 0.1 s, ... then every 2 s): a handful.
    assert!(made <= 20, "{made} connections in 3 s");
    drop(t);
    finish(&redis, c, ns);
}

/// A URL that asks for RESP3 (`?protocol=resp3`, which the `redis` crate honours) works
/// as any other: the node read each stream reply in RESP3's shape (a map) as empty, so
/// every task it was given sat unseen until a reclaim a lease later, counted as a lost
/// delivery (with `max_deliveries(1)`, dead-lettered without running).
fn a_url_asking_for_resp3_works() {
    let redis = RedisServer::start();
    let ns = "resp3";
    let url = format!("{}/?protocol=resp3", redis.url());
    // With one delivery allowed, a task the node did not see is dead-lettered once a
    // reclaim takes it, a lease later: what the test looks for, not a timing.
    let w = node_at(&url, ns, 1)
        .lease(Duration::from_secs(4))
        .max_deliveries(1)
        .build()
        .expect("start worker");
    let c = Cluster::builder(&url)
        .namespace(ns)
        .build()
        .expect("connect");
    let mut t = c.submit(SQUARE, 3).unwrap();
    assert_eq!(t.wait_timeout(T), Ok(9));
    let squares = c.map_timeout(SQUARE, 0..100u64, T).unwrap();
    assert_eq!(squares[99], 99 * 99);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A result (or a fallible task's error) whose `Deserialize` panics fails its task with
/// `Codec`, saying so, in a wait, a map and a lazy map: the panic stopped the delivery,
/// and the task never ended (a map's panic reached its caller).
fn a_result_whose_decode_panics_fails_its_task() {
    let redis = RedisServer::start();
    let ns = "undecodable";
    // In a process of its own, where the values decode.
    let mut w = node(&redis, ns, "decodes");
    let c = client(&redis, ns);
    fn codec<R>(r: &Result<R, TaskError>) -> bool {
        matches!(r, Err(TaskError::Codec(e)) if e.to_string().contains("panicked"))
    }
    let r = c.submit(UNDECODABLE, 1).unwrap().wait_timeout(T);
    assert!(codec(&r), "{r:?}");
    let r = c
        .submit_fallible(UNDECODABLE_ERR, 2)
        .unwrap()
        .wait_timeout(T);
    assert!(codec(&r), "{r:?}");
    let r = c.map(UNDECODABLE, 0..3u64);
    assert!(
        matches!(&r, Err(ClusterError::Task(TaskError::Codec(_)))),
        "{r:?}"
    );
    let lazy: Vec<_> = c.imap_unordered(UNDECODABLE, 0..3u64).collect();
    assert_eq!(lazy.len(), 3);
    assert!(lazy.iter().all(codec), "{lazy:?}");
    // The client serves on.
    assert_eq!(c.apply(SQUARE, 4).unwrap(), 16);
    cluster_common::signal(w.child.id(), "-TERM");
    assert!(w.wait(T).success());
    finish(&redis, c, ns);
}

/// A client and a worker node whose user may not run `CLIENT ID` (a narrow ACL rule)
/// still read their replies and tasks: each waited for an id that never came, and no
/// wait ever ended (the node took no task).
fn a_client_without_client_id_reads_its_replies() {
    let redis = RedisServer::start();
    let ns = "noclientid";
    let url = acl_user(&redis, &["-client|id"]);
    let w = node_at(&url, ns, 1).build().expect("start worker");
    let c = Cluster::builder(&url).namespace(ns).build().unwrap();
    let mut t = c.submit(SQUARE, 3).unwrap();
    assert_eq!(t.wait_timeout(T), Ok(9));
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A client that reconnected reads the result keys of the tasks it waits for, in case
/// a reply was taken off its list and lost with the old connection. A read the server
/// refuses while the connection stays up (here an ACL user that may not `MGET`; in life
/// `LOADING` or `BUSY`) is tried again, not forgotten: the outcome whose reply was lost
/// still reaches its waiter once the server lets the read through.
fn a_recovery_the_server_refused_is_tried_again() {
    let redis = RedisServer::start();
    let ns = "nomget";
    // Neither the reply list nor the result keys can be read at first.
    let url = acl_user(&redis, &["-blpop", "-mget"]);
    let c = Cluster::builder(&url).namespace(ns).build().unwrap();
    let mut t = c.submit(SQUARE, 3).unwrap();
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .build()
        .expect("start worker");
    // The worker wrote the outcome and pushed the reply; the reply is then taken and
    // lost (as by a connection that broke while it was on its way).
    let list = format!("{ns}:{{default}}:reply:{}", c.id());
    let mut raw = redis.raw().unwrap();
    assert!(
        common::eventually(T, || raw.call(&["LLEN", &list]).unwrap() == Resp::Int(1)),
        "no reply was pushed"
    );
    assert!(matches!(
        raw.call(&["LPOP", &list]).unwrap(),
        Resp::Bulk(Some(_))
    ));
    w.shutdown(true);
    // The reply list may be read again: the reader connects anew, its read of the
    // result keys is refused, and it waits on the (empty) list.
    assert_eq!(
        redis.cmd(&["ACL", "SETUSER", "app", "+blpop"]),
        Resp::Simple("OK".into())
    );
    assert!(
        common::eventually(T, || redis.cmd(&["CLIENT", "LIST"]).text().lines().any(
            |l| {
                // Blocked in it: the `cmd` of a connection whose `BLPOP` was refused
                // says `blpop` too, until the client closes it.
                let blocked = l
                    .split(' ')
                    .any(|f| f.starts_with("flags=") && f.contains('b'));
                l.contains("user=app") && l.contains("cmd=blpop") && blocked
            }
        )),
        "the client did not go back to waiting on its reply list"
    );
    assert_eq!(
        redis.cmd(&["ACL", "SETUSER", "app", "+mget"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(t.wait_timeout(T).expect("the outcome was recovered"), 9);
    finish(&redis, c, ns);
}

/// A worker node whose local pool gave up (its processes kept ending before they took a
/// task) hands the task it took back to the queue, uncounted, stops taking tasks and
/// says why, instead of taking the same task again and again; another node runs it.
fn a_worker_whose_pool_broke_hands_back_and_stops() {
    let redis = RedisServer::start();
    let (ns, queue) = ("broke", "breaking");
    let one_process_node = || {
        tasks(Worker::builder(&redis.url()))
            .namespace(ns)
            .queue(queue)
            .processes(1)
            .lease(Duration::from_secs(1))
            .build()
            .expect("start worker")
    };
    let w = one_process_node();
    // Its pool's processes are named after the queue; each killed before it takes a
    // task is a start that failed, and the pool gives up after a few in a row.
    let me = std::process::id();
    let mut killed = std::collections::BTreeSet::new();
    let start = Instant::now();
    while killed.len() < 3 && start.elapsed() < T {
        let ours = common::descendants_of(me);
        for p in common::named("breaking-worker-0") {
            if ours.contains(&p) && killed.insert(p) {
                common::kill_and_reap(p);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(killed.len(), 3, "the pool started too few processes");
    let c = Cluster::builder(&redis.url())
        .namespace(ns)
        .queue(queue)
        .build()
        .expect("connect");
    let mut task = c.submit(SQUARE, 9).unwrap();
    assert!(
        common::eventually(T, || w.broken().is_some()),
        "the node did not notice its pool broke"
    );
    let why = w.broken().unwrap();
    assert!(why.contains("before taking any task"), "{why}");
    // Stopped: it holds nothing, takes nothing again, and is unregistered; the task
    // waits in the queue (handed back as a retry due at once, which the next node
    // moves to the stream).
    assert!(
        common::eventually(T, || {
            let s = c.stats().unwrap();
            s.workers.is_empty() && s.in_flight == 0 && s.waiting + s.delayed == 1
        }),
        "{:?}",
        c.stats()
    );
    for _ in 0..20 {
        let s = c.stats().unwrap();
        assert_eq!((s.in_flight, s.waiting + s.delayed), (0, 1), "{s:?}");
        assert_eq!(w.in_flight(), 0);
        std::thread::sleep(Duration::from_millis(50));
    }
    w.shutdown(true);
    let healthy = one_process_node();
    assert_eq!(task.wait_timeout(T).unwrap(), 81);
    assert!(c.dead_letters(10).unwrap().is_empty());
    healthy.shutdown(true);
    c.delete_queue(queue).expect("delete queue");
    finish(&redis, c, ns);
}

/// A stop that finds the server down tries to unregister again until it is back (within
/// the stop's end), rather than leaving the node listed among the queue's workers, where
/// no other node is there to retire it.
fn a_stop_unregisters_once_the_server_is_back() {
    let mut redis = RedisServer::start();
    let ns = "retire-again";
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .lease(Duration::from_secs(1))
        .grace(Duration::from_secs(5))
        .build()
        .expect("start worker");
    let c = client(&redis, ns);
    assert!(
        common::eventually(T, || c.stats().is_ok_and(|s| s.workers.len() == 1)),
        "{:?}",
        c.stats()
    );
    // Down (its data saved) while the node stops, back 1.5 s later.
    redis.stop_keeping_data();
    let (tx, rx) = std::sync::mpsc::channel();
    let stopper = std::thread::spawn(move || {
        w.shutdown(true);
        let _ = tx.send(());
    });
    std::thread::sleep(Duration::from_millis(1500));
    redis.start_again();
    let stopped = rx.recv_timeout(Duration::from_secs(20));
    stopper.join().unwrap();
    assert!(stopped.is_ok(), "the stop did not end");
    assert!(
        common::eventually(Duration::from_secs(5), || c
            .stats()
            .is_ok_and(|s| s.workers.is_empty())),
        "{:?}",
        c.stats()
    );
    finish(&redis, c, ns);
}

/// A worker stopped while the server is down does not wait for it for ever: a lease
/// after its grace it ends without the outcome it could not send, and the task runs
/// again once the server is back (at least once).
fn a_stop_while_redis_is_down_ends_after_the_grace_and_a_lease() {
    // Down: connections are refused at once. Paused (`SIGSTOP`): the server accepts
    // them and never answers, so each call waits for its response timeout. With a grace
    // of `Duration::MAX`, the stop waits for the run, then a lease for the server (it
    // waited for the server for ever).
    for (paused, grace) in [
        (false, Duration::from_millis(300)),
        (true, Duration::from_millis(300)),
        (false, Duration::MAX),
    ] {
        let mut redis = RedisServer::start();
        let ns = "stopdown";
        let w = tasks(Worker::builder(&redis.url()))
            .namespace(ns)
            .processes(1)
            .lease(Duration::from_secs(1))
            .grace(grace)
            .build()
            .expect("start worker");
        let c = client(&redis, ns);
        let dir = common::tempdir("stopdown");
        let path = dir.join("runs").to_string_lossy().into_owned();
        let mut task = c.submit(RECORD_SLOW, (path.clone(), 2000)).unwrap();
        assert!(common::eventually(T, || std::path::Path::new(&path).exists()));
        if paused {
            redis.pause();
            // Until a renewal (due every third of the lease) is waiting for the paused
            // server: a call in flight when the stop begins must not hold it for the
            // whole response timeout.
            std::thread::sleep(Duration::from_millis(500));
        } else {
            redis.stop_keeping_data();
        }
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let stopper = std::thread::spawn(move || {
            w.shutdown(true);
            let _ = tx.send(());
        });
        let stopped = rx.recv_timeout(Duration::from_secs(20));
        let took = started.elapsed();
        if paused {
            redis.resume();
        } else {
            redis.start_again();
        }
        stopper.join().unwrap();
        assert!(
            stopped.is_ok(),
            "the stop waited for the server (paused: {paused}, grace {grace:?})"
        );
        // The grace (or the rest of the 2 s run), a lease, and a blocked read's block
        // (1 s) and margin (5 s).
        assert!(
            took < Duration::from_secs(8),
            "paused: {paused}, grace {grace:?}: {took:?}"
        );
        let w = worker(&redis, ns, 1);
        assert_eq!(task.wait_timeout(T).unwrap(), 1);
        let runs = runs(&path);
        assert_eq!(runs, 2, "the task handed back unsent ran {runs} times");
        w.shutdown(true);
        finish(&redis, c, ns);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A task's timeout counts from when a process starts it: the time it waited on its
/// worker node, behind a longer task, is not part of it.
fn a_task_timeout_counts_its_run_not_its_wait() {
    let redis = RedisServer::start();
    let ns = "timeout-wait";
    let w = worker(&redis, ns, 1);
    let c = client(&redis, ns);
    let long = c.submit(SLOW_SQUARE, (3, 1500)).unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight == 1));
    let quick = c
        .submit_with(
            SQUARE,
            4,
            TaskOptions::new().timeout(Duration::from_millis(500)),
        )
        .unwrap();
    // Both on the node, the quick one waiting for the only process.
    assert!(common::eventually(T, || w.in_flight() == 2));
    assert_eq!(quick.wait().unwrap(), 16);
    assert_eq!(long.wait().unwrap(), 9);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// An idempotent task with a countdown longer than its client's `result_ttl`: a repeat
/// of its key while it waits joins it. The record lived the TTL from submission, so the
/// repeat made another task, and both ran.
fn a_repeat_during_a_countdown_longer_than_the_ttl_joins_the_task() {
    let redis = RedisServer::start();
    let ns = "idem-countdown";
    let w = worker(&redis, ns, 1);
    let (c, c2) = (short_lived(&redis, ns), short_lived(&redis, ns));
    let dir = common::tempdir("idem-countdown");
    let p = dir.join("runs").to_string_lossy().into_owned();
    let opts = TaskOptions::new().idempotency_key("later");
    let mut first = c
        .submit_with(
            RECORD,
            p.clone(),
            opts.clone().countdown(Duration::from_millis(2_500)),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    // Another client's repeat (the same client's would be the same delayed member).
    let mut again = c2
        .submit_with(
            RECORD,
            p.clone(),
            opts.countdown(Duration::from_millis(2_500)),
        )
        .unwrap();
    assert_eq!(first.wait_timeout(T), Ok(1));
    assert_eq!(again.wait_timeout(T), Ok(1));
    // A second task (its countdown began 1.5 s later) would be delayed, queued or
    // running until it had run.
    assert!(common::eventually(T, || {
        let s = c.stats().unwrap();
        s.delayed == 0 && s.waiting == 0 && s.in_flight == 0 && w.in_flight() == 0
    }));
    assert_eq!(runs(&p), 1, "the repeat ran the task again");
    w.shutdown(true);
    drop(c2);
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An idempotent task that runs longer than its record lives (its client keeps outcomes
/// 1 s, it runs 3 s) is cancelled while it runs: a worker holds it, so it is no task
/// long ended whose flag would cancel the next run of its key.
fn a_running_idempotent_task_that_outlived_its_record_is_cancelled() {
    let redis = RedisServer::start();
    let ns = "idem-cancel-running";
    let w = worker(&redis, ns, 1);
    let c = short_lived(&redis, ns);
    let dir = common::tempdir("idem-cancel-running");
    let p = dir.join("runs").to_string_lossy().into_owned();
    let mut t = c
        .submit_with(
            RECORD_SLOW,
            (p.clone(), 3_000),
            TaskOptions::new().idempotency_key("long"),
        )
        .unwrap();
    assert!(
        common::eventually(T, || runs(&p) == 1),
        "the task never ran"
    );
    // Its record is gone by now.
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(t.cancel(), "the cancel of a running task was refused");
    assert_eq!(t.wait_timeout(T), Err(TaskError::Cancelled));
    w.shutdown(true);
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server down (restarted with its data) for longer than a lease while a node runs a
/// task: once it answers again, the node renews its lease before it looks for lapsed
/// ones, and does not take its own running task back from itself (it ran it a second
/// time, and with `max_deliveries(1)` dead-lettered it as a task whose delivery was
/// lost).
fn a_server_down_longer_than_a_lease_does_not_make_a_node_reclaim_its_own_tasks() {
    keeps_its_running_task_through("down-own-reclaim", Peer::None, |redis| {
        redis.restart_after(Duration::from_millis(2_500));
    });
}

/// As above, with a server out of memory for longer than a lease: it refuses the
/// renewals (writes) and still serves the reclaim's `XCLAIM`.
fn a_server_out_of_memory_does_not_make_a_node_reclaim_its_own_tasks() {
    keeps_its_running_task_through("oom-own-reclaim", Peer::None, out_of_memory_for_a_while);
}

/// The server at its `maxmemory` for 2.5 s, longer than a lease.
fn out_of_memory_for_a_while(redis: &mut RedisServer) {
    redis.cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    std::thread::sleep(Duration::from_millis(2_500));
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
}

/// As above, with an idle node beside: the busy node's renewals go through (the
/// heartbeat, a write the server refuses first, came before them, and the whole renewal
/// was refused), so the idle node's reclaim, which the server serves, does not take the
/// running task.
fn a_server_out_of_memory_does_not_let_an_idle_node_take_a_running_task() {
    keeps_its_running_task_through("oom-peer-reclaim", Peer::Idle, out_of_memory_for_a_while);
}

/// As above, with the server paused (`SIGSTOP`) for longer than a lease: once it
/// answers again, every lease it holds has lapsed by its clock, and the idle node,
/// which has nothing to renew, must not reclaim before the busy node has had its
/// renewal retried (it did, first: the running task was killed, and run again on the
/// idle node, dead-lettered with `max_deliveries(1)`).
fn a_server_paused_longer_than_a_lease_does_not_let_an_idle_node_take_a_running_task() {
    keeps_its_running_task_through("pause-peer-reclaim", Peer::Idle, |redis| {
        redis.pause();
        std::thread::sleep(Duration::from_millis(2_500));
        redis.resume();
    });
}

/// A server that refuses writes for a while (`NOREPLICAS`: fewer replicas than
/// `min-replicas-to-write`; `MISCONF` after a failed save is the same) across the task's
/// end: the node keeps the outcome it could not finish and sends it again, and the task
/// does not run again (the refusal was taken for a lasting error: the outcome was
/// dropped, and the node took the task back once writes came back).
fn a_server_refusing_writes_keeps_finished_outcomes() {
    keeps_its_running_task_through("norepl-finish", Peer::None, |redis| {
        redis.cmd(&["CONFIG", "SET", "min-replicas-to-write", "1"]);
        // Past the task's end (4 s from its start).
        std::thread::sleep(Duration::from_millis(5_000));
        redis.cmd(&["CONFIG", "SET", "min-replicas-to-write", "0"]);
    });
}

/// The same pause, and a node started as the server answers again: it has seen no
/// renewal fail, and its first reclaim came before the busy node's retried renewal
/// (the running task was killed, and run again on the new node, dead-lettered with
/// `max_deliveries(1)`). The server holds reclaims until renewals have come for a
/// lease without a gap.
fn a_node_started_just_after_a_server_pause_does_not_take_a_running_task() {
    keeps_its_running_task_through("pause-new-reclaim", Peer::After, |redis| {
        redis.pause();
        std::thread::sleep(Duration::from_millis(2_500));
        redis.resume();
    });
}

/// Who runs beside the busy node in [`keeps_its_running_task_through`].
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    None,
    /// An idle node, started once the task runs.
    Idle,
    /// A node started as the disruption ends.
    After,
}

/// A node with a 1 s lease and `max_deliveries(1)` runs a 4 s task through
/// `disrupt`, with a second node as `peer` says; the task must end well, run once.
fn keeps_its_running_task_through(ns: &str, peer: Peer, disrupt: impl FnOnce(&mut RedisServer)) {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = || {
        tasks(Worker::builder(&url))
            .namespace(ns)
            .processes(1)
            .lease(Duration::from_secs(1))
            .max_deliveries(1)
            .build()
            .expect("start worker")
    };
    let w = node();
    let c = client(&redis, ns);
    let dir = common::tempdir(ns);
    let p = dir.join("runs").to_string_lossy().into_owned();
    let mut t = c.submit(RECORD_SLOW, (p.clone(), 4_000)).unwrap();
    assert!(
        common::eventually(T, || runs(&p) == 1),
        "the task never ran"
    );
    let idle = (peer == Peer::Idle).then(node);
    disrupt(&mut redis);
    let after = (peer == Peer::After).then(node);
    assert_eq!(t.wait_timeout(T), Ok(1));
    assert_eq!(runs(&p), 1, "the task ran again");
    for peer in [idle, after].into_iter().flatten() {
        peer.shutdown(true);
    }
    w.shutdown(true);
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client whose outcomes (and idempotency records) last a second.
fn short_lived(redis: &RedisServer, ns: &str) -> Cluster {
    Cluster::builder(&redis.url())
        .namespace(ns)
        .result_ttl(Duration::from_secs(1))
        .build()
        .expect("connect")
}

/// An idempotency record and the outcome it stands for lapse together: a repeat made
/// after a short-lived outcome is gone runs the task again instead of waiting for ever
/// on the record; a repeat made after the record lapsed while the first run went on
/// runs again and is answered, though the first run's outcome was written first.
fn an_idempotency_record_lapses_with_its_outcome() {
    let redis = RedisServer::start();
    let ns = "idemttl";
    let second = Duration::from_secs(1);
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(2)
        .result_ttl(second)
        .build()
        .expect("start worker");
    let dir = common::tempdir("idemttl");
    let runs = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let gone = |key: &str| {
        let key = key.to_string();
        common::eventually(T, || {
            !redis
                .keys(&format!("{ns}:"))
                .iter()
                .any(|k| k.ends_with(&key))
        })
    };
    // The client keeps records a minute; the worker keeps outcomes a second.
    let c = Cluster::builder(&redis.url())
        .namespace(ns)
        .result_ttl(Duration::from_secs(60))
        .build()
        .expect("connect");
    let key = TaskOptions::new().idempotency_key("short-outcome");
    let mut first = c.submit_with(RECORD, path("a"), key.clone()).unwrap();
    assert_eq!(first.wait_timeout(T).unwrap(), 1);
    assert!(gone("result:k:short-outcome"));
    let mut repeat = c.submit_with(RECORD, path("a"), key).unwrap();
    assert_eq!(repeat.wait_timeout(T).unwrap(), 1);
    assert_eq!(runs("a"), 2);
    // Records of a second, from two clients; the first run outlives its record.
    let short = |_: ()| {
        Cluster::builder(&redis.url())
            .namespace(ns)
            .result_ttl(second)
            .build()
            .expect("connect")
    };
    let (c1, c2) = (short(()), short(()));
    let key = TaskOptions::new().idempotency_key("long-run");
    let mut first = c1
        .submit_with(RECORD_SLOW, (path("b"), 2500), key.clone())
        .unwrap();
    assert!(common::eventually(T, || runs("b") == 1));
    assert!(gone("idem:long-run"));
    let mut repeat = c2.submit_with(RECORD_SLOW, (path("b"), 100), key).unwrap();
    assert_eq!(first.wait_timeout(T).unwrap(), 1);
    assert_eq!(repeat.wait_timeout(T).unwrap(), 1);
    assert_eq!(runs("b"), 2);
    w.shutdown(true);
    drop((c1, c2));
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A repeat made once the record of its key lapsed while the first run went on runs
/// again; when that run is retried after the first run wrote the outcome, its retry
/// made the record live longer, and the record must still lapse with the outcome:
/// kept past it, a repeat made after the outcome was gone waited on the record for an
/// answer no run would give.
fn a_retried_repeat_leaves_no_record_past_the_outcome() {
    let redis = RedisServer::start();
    let ns = "idemretry";
    // Outcomes kept 6 s; records (the clients') a second.
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(2)
        .result_ttl(Duration::from_secs(6))
        .build()
        .expect("start worker");
    let dir = common::tempdir("idemretry");
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let runs = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    let present = |key: &str| {
        redis
            .keys(&format!("{ns}:"))
            .iter()
            .any(|k| k.ends_with(key))
    };
    let (record, outcome) = ("idem:retried-repeat", "result:k:retried-repeat");
    let (c1, c2, c3) = (
        short_lived(&redis, ns),
        short_lived(&redis, ns),
        short_lived(&redis, ns),
    );
    let key = TaskOptions::new().idempotency_key("retried-repeat");
    let mut first = c1
        .submit_with(FLAKY_SLOW, (path("a"), 1, 1500), key.clone())
        .unwrap();
    assert!(common::eventually(T, || runs("a") == 1));
    assert!(common::eventually(T, || !present(record)));
    assert!(
        !present(outcome),
        "the first run ended before its record lapsed"
    );
    // Its first attempt ends a second after the first run's outcome is written, its
    // retry 200 ms later, well within the outcome's 6 s.
    let pause = Duration::from_millis(200);
    let retried = key
        .clone()
        .retry(RetryPolicy::attempts(3).backoff(pause, 1.0, pause));
    let mut repeat = c2
        .submit_with(FLAKY_SLOW, (path("b"), 2, 1500), retried)
        .unwrap();
    // Both clients wait on the key: the first outcome answers them.
    assert_eq!(first.wait_timeout(T).unwrap(), Ok(1));
    let written = Instant::now();
    assert_eq!(repeat.wait_timeout(T).unwrap(), Ok(1));
    let ended = || {
        let s = c1.stats().unwrap();
        runs("b") == 2 && s.waiting + s.in_flight + s.delayed == 0
    };
    assert!(common::eventually(T, ended));
    assert!(
        written.elapsed() < Duration::from_secs(5) && present(outcome),
        "the retry ended {:?} after the first outcome, which lapses after 6 s: the test \
         proves nothing",
        written.elapsed()
    );
    // The record goes with the outcome; a repeat then runs the key again.
    assert!(common::eventually(T, || !present(outcome)));
    let after = Instant::now();
    assert!(
        common::eventually(Duration::from_millis(300), || !present(record)),
        "the record outlived the outcome by more than {:?}",
        after.elapsed()
    );
    let mut again = c3.submit_with(FLAKY_SLOW, (path("c"), 1, 0), key).unwrap();
    assert_eq!(again.wait_timeout(T).unwrap(), Ok(1));
    assert_eq!(runs("c"), 1);
    w.shutdown(true);
    drop((c1, c2, c3));
    finish(&redis, short_lived(&redis, ns), ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client that submitted an idempotent task is answered when another client,
/// which joined the task while its retry waited, cancels it: the set of the task's
/// waiters had lapsed with the submitter's short TTL, the retry made it again without
/// the submitter, and the cancel answered only those in it (the submitter, whose
/// handle does not look at the result key, waited for ever).
fn a_cancel_of_a_retried_task_reaches_its_submitter() {
    let redis = RedisServer::start();
    let ns = "idemcancel";
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .build()
        .expect("start worker");
    let dir = common::tempdir("idemcancel");
    let runs = dir.join("runs").to_string_lossy().into_owned();
    let (submitter, other) = (short_lived(&redis, ns), client(&redis, ns));
    let pause = Duration::from_secs(60);
    let key = TaskOptions::new()
        .idempotency_key("cancelled-retry")
        .retry(RetryPolicy::attempts(3).backoff(pause, 1.0, pause));
    // Its first attempt fails after 2 s, past the submitter's TTL of a second, and its
    // retry waits a minute.
    let mut first = submitter
        .submit_with(FLAKY_SLOW, (runs.clone(), 2, 2000), key.clone())
        .unwrap();
    assert!(common::eventually(T, || other.stats().unwrap().delayed == 1));
    let mut joined = other
        .submit_with(FLAKY_SLOW, (runs.clone(), 2, 2000), key)
        .unwrap();
    assert!(joined.cancel(), "the retry waiting was not cancelled");
    assert_eq!(joined.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    assert_eq!(
        first.wait_timeout(Duration::from_secs(10)).unwrap_err(),
        TaskError::Cancelled
    );
    w.shutdown(true);
    drop(submitter);
    finish(&redis, other, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cancel on its way to the server while the task's outcome comes (the client takes
/// it, and has not yet handed it to its handle: the delivering thread is busy with
/// another task's callback) answers by that outcome: no, and the value comes. (The
/// server, which no longer had the task, flagged it as it does one a worker holds: the
/// cancel said yes, and the value came all the same.) The client runs in a process of
/// its own, whose cancels wait 5 s on their way (`MULTIPROC_TEST_CANCEL_DELAY_MS`).
fn a_cancel_answers_by_an_outcome_on_its_way() {
    if !cfg!(debug_assertions) {
        panic!(
            "MULTIPROC_TEST_CANCEL_DELAY_MS delays cancels only in builds with debug assertions"
        );
    }
    let redis = RedisServer::start();
    let ns = "cancelhanded";
    let w = worker(&redis, ns, 1);
    let mut h = Helper::start_with(
        "cancel_on_its_way",
        std::env::current_exe().unwrap(),
        &[
            ("MP_URL", &redis.url()),
            ("MP_NS", ns),
            ("MULTIPROC_TEST_CANCEL_DELAY_MS", "5000"),
        ],
    );
    let answer = h.expect("cancelled: ", T);
    assert_eq!(h.expect("value: ", T), "Ok(9)");
    assert_eq!(answer, "false", "the cancel said yes, and the value came");
    assert!(h.wait(T).success());
    w.shutdown(true);
    finish(&redis, client(&redis, ns), ns);
}

/// The client of [`a_cancel_answers_by_an_outcome_on_its_way`].
fn cancel_on_its_way() {
    let c = Cluster::builder(&std::env::var("MP_URL").unwrap())
        .namespace(std::env::var("MP_NS").unwrap())
        .build()
        .expect("connect");
    // A callback that holds the delivering thread until told; the task still runs when
    // it is added (one added to a task done runs at once, on the thread that adds it).
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let mut first = c.submit(SLOW_SQUARE, (2, 1000)).unwrap();
    first.on_done(move |_| {
        entered_tx.send(std::thread::current().id()).unwrap();
        let _ = released.recv_timeout(T);
    });
    // Ends half a second after the cancel below set out, which waits 5 s on its way: by
    // then the client has taken its outcome (and deleted its result key, the next time
    // it read its reply lists, 2 s later at most), and holds it for the delivering
    // thread.
    let mut second = c.submit(SLOW_SQUARE, (3, 500)).unwrap();
    let on = entered.recv_timeout(T).expect("the callback ran");
    assert_ne!(on, std::thread::current().id(), "the task ended too soon");
    let cancelled = second.cancel();
    println!("cancelled: {cancelled}");
    release.send(()).unwrap();
    println!("value: {:?}", second.wait_timeout(T));
    assert_eq!(first.wait_timeout(T), Ok(4));
    c.shutdown(true, false);
}

/// A task retried since it was submitted (its client no longer knows where it is) can
/// still be cancelled: waiting for its retry's time, it is removed and ends
/// `Cancelled` at once; back in the queue, it is flagged and its worker ends it
/// `Cancelled` without running it again.
fn a_cancel_reaches_a_task_retried_since_it_was_submitted() {
    let redis = RedisServer::start();
    let ns = "cancelretry";
    // One task at a time, so that a retry can wait in the queue behind a long task.
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .prefetch(1)
        .build()
        .expect("start worker");
    let c = client(&redis, ns);
    let dir = common::tempdir("cancelretry");
    let runs = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    let retried = |delay: Duration| {
        TaskOptions::new().retry(RetryPolicy::attempts(3).backoff(delay, 1.0, delay))
    };
    // Waiting a minute for its second attempt.
    let a = dir.join("a").to_string_lossy().into_owned();
    let mut waiting = c
        .submit_with(FLAKY, (a.clone(), 3), retried(Duration::from_secs(60)))
        .unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().delayed == 1));
    assert!(
        waiting.cancel(),
        "a task waiting for its retry was not cancelled"
    );
    assert_eq!(waiting.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    assert_eq!(runs(&a), 1);
    // Back in the queue for its second attempt, behind a long task.
    let b = dir.join("b").to_string_lossy().into_owned();
    let mut queued = c
        .submit_with(FLAKY, (b.clone(), 3), retried(Duration::from_millis(1500)))
        .unwrap();
    assert!(common::eventually(T, || runs(&b) == 1));
    let long = c.submit(SLOW_SQUARE, (2, 5000)).unwrap();
    assert!(common::eventually(T, || {
        let s = c.stats().unwrap();
        s.in_flight == 1 && s.waiting == 1 && s.delayed == 0
    }));
    assert!(
        queued.cancel(),
        "a retried task in the queue was not cancelled"
    );
    assert_eq!(queued.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    assert_eq!(runs(&b), 1, "the cancelled task ran again");
    assert_eq!(long.wait().unwrap(), 4);
    w.shutdown(true);
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An idempotent task made by a client that keeps outcomes an hour, and cancelled by one
/// that keeps them a second. Cancelled while it waits for a retry, its record lapses
/// with the cancel's outcome, so that a repeat after both are gone runs the task again
/// (rather than joining a task that will never answer). Cancelled while it waits for its
/// time, where the second client cannot reach it, the flag that stops it lives as long
/// as the record, beyond the second client's second: it never runs.
fn a_cancel_by_a_client_that_keeps_outcomes_less_long() {
    let redis = RedisServer::start();
    let ns = "cancelttl";
    let w = worker(&redis, ns, 1);
    let keeping = |ttl: Duration| {
        Cluster::builder(&redis.url())
            .namespace(ns)
            .result_ttl(ttl)
            .build()
            .expect("connect")
    };
    let (long, short) = (
        keeping(Duration::from_secs(3600)),
        keeping(Duration::from_secs(1)),
    );
    let dir = common::tempdir("cancelttl");
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let runs = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let record = |key: &str| format!("{ns}:{{default}}:idem:{key}");
    // Waiting a minute for its second attempt.
    let key = TaskOptions::new().idempotency_key("retrying");
    let retried = key.clone().retry(RetryPolicy::attempts(3).backoff(
        Duration::from_secs(60),
        1.0,
        Duration::from_secs(60),
    ));
    let mut first = long.submit_with(FLAKY, (path("a"), 3), retried).unwrap();
    assert!(common::eventually(T, || long.stats().unwrap().delayed == 1));
    let mut repeat = short
        .submit_with(FLAKY, (path("a"), 3), key.clone())
        .unwrap();
    assert!(
        repeat.cancel(),
        "a task waiting for its retry was not cancelled"
    );
    assert_eq!(repeat.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    assert_eq!(first.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    let Resp::Int(left) = redis.cmd(&["PTTL", &record("retrying")]) else {
        panic!("PTTL did not answer with a number");
    };
    assert!(
        left <= 1000,
        "the record outlives the cancel's outcome: {left} ms left"
    );
    // Both gone: a repeat runs the task again, and is answered.
    assert!(common::eventually(T, || {
        redis.cmd(&["EXISTS", &record("retrying")]) == Resp::Int(0)
    }));
    let mut again = long.submit_with(FLAKY, (path("b"), 1), key).unwrap();
    assert_eq!(again.wait_timeout(T).unwrap(), Ok(1));
    // Waiting three seconds for its time; the second client's handle knows no member of
    // the delayed set (the first client's is another envelope), so its cancel is a flag.
    let key = TaskOptions::new().idempotency_key("later");
    let mut first = long
        .submit_with(
            RECORD,
            path("c"),
            key.clone().countdown(Duration::from_secs(3)),
        )
        .unwrap();
    let mut repeat = short.submit_with(RECORD, path("c"), key).unwrap();
    assert!(
        repeat.cancel(),
        "a task waiting for its time was not cancelled"
    );
    assert_eq!(repeat.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    assert_eq!(first.wait_timeout(T).unwrap_err(), TaskError::Cancelled);
    assert_eq!(runs("c"), 0, "a cancelled task ran");
    w.shutdown(true);
    drop(short);
    finish(&redis, long, ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Counts its runs in `path`, sleeps `ms`, then fails until it has run `ok_at` times.
fn flaky_slow((path, ok_at, ms): (String, u32, u64)) -> Result<u32, String> {
    let mut n: u32 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    n += 1;
    std::fs::write(&path, n.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    if n >= ok_at {
        Ok(n)
    } else {
        Err(format!("run {n} failed"))
    }
}

/// A node with the default 30 s lease (renewals every 10 s), one process, one task at
/// a time.
fn one_at_a_time(redis: &RedisServer, ns: &str) -> WorkerHandle {
    tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .prefetch(1)
        .grace(Duration::from_secs(5))
        .build()
        .expect("start worker")
}

/// Runs recorded in `p` (one line each).
fn runs(p: &str) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The count a [`flaky_slow`] run left in `p`.
fn counter(p: &str) -> u32 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A running task is cancelled (`cancel` says it will end `Cancelled`); its attempt then
/// fails and is retried before the worker's next renewal. The retry must not run: the
/// cancel was acknowledged.
fn cancel_of_a_running_task_survives_its_retry() {
    let redis = RedisServer::start();
    let ns = "adv-cancel-retry";
    let w = one_at_a_time(&redis, ns);
    let c = client(&redis, ns);
    let dir = common::tempdir("adv-cancel-retry");
    let p = dir.join("n").to_string_lossy().into_owned();
    let policy = RetryPolicy::attempts(3).backoff(
        Duration::from_millis(300),
        1.0,
        Duration::from_millis(300),
    );
    let mut t = c
        .submit_fallible_with(
            FLAKY_SLOW,
            (p.clone(), 2, 1500),
            TaskOptions::new().retry(policy),
        )
        .unwrap();
    assert!(common::eventually(T, || counter(&p) == 1), "never started");
    assert!(t.cancel(), "cancel of a running task refused");
    let r = t.wait_timeout(T);
    let n = counter(&p) as usize;
    cancelled_and_clean((&redis, w, c, ns, &dir), r, n, 1);
}

/// Ends a cancel test: stops the worker, checks that nothing transient is left and
/// deletes the queue; then asserts the task ended `Cancelled` after `expected` runs.
fn cancelled_and_clean<R: std::fmt::Debug + PartialEq>(
    (redis, w, c, ns, dir): (&RedisServer, WorkerHandle, Cluster, &str, &std::path::Path),
    r: Result<R, TaskError>,
    ran: usize,
    expected: usize,
) {
    w.shutdown(true);
    finish(redis, c, ns);
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(
        r,
        Err(TaskError::Cancelled),
        "cancel() returned true, yet the task ended otherwise ({ran} runs)"
    );
    assert_eq!(ran, expected, "the cancelled task ran again");
}

/// A countdown task whose time came (moved to the stream) but that no worker took yet
/// is cancelled: it must not run. Its client keeps outcomes 1 s, and the task waits
/// 3 s more: the flag that stops it lived as long as an outcome, and the task ran.
fn cancel_of_a_promoted_countdown_task_before_it_runs() {
    let redis = RedisServer::start();
    let ns = "adv-cancel-promoted";
    let w = one_at_a_time(&redis, ns);
    let c = short_lived(&redis, ns);
    let dir = common::tempdir("adv-cancel-promoted");
    let p = dir.join("runs").to_string_lossy().into_owned();
    // The only process is busy for 3 s.
    let mut long = c.submit(SLOW_SQUARE, (2, 3000)).unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight == 1));
    let mut t = c
        .submit_with(
            RECORD,
            p.clone(),
            TaskOptions::new().countdown(Duration::from_millis(200)),
        )
        .unwrap();
    // Promoted: waiting in the stream, not delayed any more, not taken.
    assert!(common::eventually(T, || {
        let s = c.stats().unwrap();
        s.delayed == 0 && s.waiting == 1
    }));
    assert!(t.cancel(), "cancel of a waiting task refused");
    let r = t.wait_timeout(T);
    assert_eq!(long.wait_timeout(T).unwrap(), 4);
    // The worker has taken the entry and finished it (a run, if there was one, is
    // recorded by then).
    assert!(common::eventually(T, || {
        let s = c.stats().unwrap();
        s.waiting == 0 && s.in_flight == 0 && w.in_flight() == 0
    }));
    let n = runs(&p);
    cancelled_and_clean((&redis, w, c, ns, &dir), r, n, 0);
}

/// One client submits an idempotent task while no worker runs; another submits the same
/// key (it joins the task, and does not know its stream entry) and cancels it: the
/// cancel is accepted, so the task must never run, and both clients are told
/// `Cancelled` once a worker reads it.
fn a_joined_idempotent_task_cancelled_while_queued() {
    let redis = RedisServer::start();
    joined_then_cancelled(&redis, "idem-joined-cancel", || {
        worker(&redis, "idem-joined-cancel", 1)
    });
}

/// As above, but the worker's look for the cancel's flag loses its answer (the
/// connection cut after the server answered): a look that cannot say is no answer
/// either way, and the task goes back to the queue and is looked for again, rather
/// than run (it ran, and ended with its value, though its cancel was accepted).
fn a_cancel_flag_the_worker_could_not_read_does_not_let_the_task_run() {
    let redis = RedisServer::start();
    let ns = "idem-joined-cancel-lost-look";
    fn settled(_: &mut cluster_common::Raw) -> bool {
        true
    }
    let proxy = ReplyDroppingProxy::start_for(redis.port, b"cancel:", b':', settled);
    joined_then_cancelled(&redis, ns, || {
        // The worker's first request that names a cancel flag is its look for this
        // one; a look whose connection is cut is made once more, on a new one: both
        // lose their answers.
        proxy.arm(2);
        node_at(&proxy.url(), ns, 1).build().expect("start worker")
    });
    assert_eq!(proxy.armed(), 0, "the look was to lose its answer");
}

/// An idempotent task whose retry waits longer than its client's record lives: a
/// repeat of its key while it waits joins it (the record and its waiters live until the
/// retry is due and the worker's TTL after), and the key runs twice in all, its failed
/// attempt and its retry (the record lapsed, the repeat made a task of its own, and
/// the key ran three times).
fn an_idempotent_task_waiting_for_its_retry_is_joined() {
    let redis = RedisServer::start();
    let ns = "idem-retry-outlives-record";
    let short = || {
        Cluster::builder(&redis.url())
            .namespace(ns)
            .result_ttl(Duration::from_secs(1))
            .build()
            .expect("connect")
    };
    let (c, c2) = (short(), short());
    let w = worker(&redis, ns, 1);
    let dir = common::tempdir(ns);
    let path = dir.join("runs").display().to_string();
    let retry =
        RetryPolicy::attempts(2).backoff(Duration::from_secs(4), 1.0, Duration::from_secs(4));
    let opts = TaskOptions::new()
        .idempotency_key("slow-retry")
        .retry(retry);
    let mut first = c
        .submit_with(FLAKY, (path.clone(), 2), opts.clone())
        .unwrap();
    assert!(common::eventually(T, || std::fs::read_to_string(&path).is_ok_and(|n| n == "1")));
    // Past the record's second, before the retry is due.
    std::thread::sleep(Duration::from_millis(2000));
    let mut repeat = c2.submit_with(FLAKY, (path.clone(), 2), opts).unwrap();
    assert_eq!(first.wait_timeout(T).unwrap(), Ok(2));
    assert_eq!(repeat.wait_timeout(T).unwrap(), Ok(2));
    // Any run the repeat made of its own would have come by now.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "2",
        "runs of the key"
    );
    w.shutdown(true);
    finish(&redis, c, ns);
    drop(c2);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A node told to stop while its pool holds tasks it has not started (prefetched)
/// hands them back at once, for another node to run, and lets only the running one
/// finish in its grace: each task runs once (the next one started during the grace,
/// was killed at its end and ran again elsewhere).
fn a_stopping_node_hands_back_the_tasks_it_has_not_started() {
    hands_back_what_it_has_not_started(
        "stop-hands-back-unstarted",
        4,
        Duration::from_secs(3),
        |c, paths, stop| {
            let mut submitted: Vec<_> = paths
                .iter()
                .map(|p| c.submit(RECORD_SLOW, (p.clone(), 2000)).unwrap())
                .collect();
            stop();
            submitted
                .iter_mut()
                .map(|t| t.wait_timeout(T).unwrap())
                .collect()
        },
    );
}

/// As above, for the chunks of a `map`: those none of whose items started go back at
/// once, the one running finishes in the grace, and each item runs once. (A chunk was
/// never handed back: the next one started during the grace, was killed at its end and
/// ran again elsewhere.)
fn a_stopping_node_hands_back_the_chunks_it_has_not_started() {
    hands_back_what_it_has_not_started(
        "stop-hands-back-chunks",
        8,
        Duration::from_secs(5),
        |c, paths, stop| {
            std::thread::scope(|scope| {
                // Four chunks of two items, each item 1.5 s.
                let items = paths.iter().map(|p| (p.clone(), 1500));
                let map = scope.spawn(|| c.map_chunked(RECORD_SLOW, items, 2));
                assert!(common::eventually(T, || c.stats().unwrap().waiting == 4));
                stop();
                map.join().unwrap().unwrap()
            })
        },
    );
}

/// `run` submits four queue entries whose tasks note their runs in `paths` (one each),
/// calls `stop` once they are all queued, and returns their values (1 each). `stop`
/// starts a node of one process that takes the four at once (a prefetch of 4) and
/// starts the first, tells it to stop (a grace of `grace`), and starts another node:
/// every task ran once.
fn hands_back_what_it_has_not_started(
    ns: &str,
    items: usize,
    grace: Duration,
    run: impl FnOnce(&Cluster, &[String], &mut dyn FnMut()) -> Vec<u64>,
) {
    let redis = RedisServer::start();
    let c = client(&redis, ns);
    let dir = common::tempdir(ns);
    let node = |processes| {
        node_at(&redis.url(), ns, processes)
            .prefetch(4)
            .grace(grace)
            .build()
            .expect("start worker")
    };
    let paths: Vec<String> = (0..items)
        .map(|i| dir.join(format!("runs-{i}")).display().to_string())
        .collect();
    let mut nodes = Vec::new();
    let values = run(&c, &paths, &mut || {
        let stopping = node(1);
        assert!(common::eventually(T, || {
            std::path::Path::new(&paths[0]).exists()
        }));
        assert_eq!(c.stats().unwrap().in_flight, 4, "held by the node");
        stopping.shutdown(false);
        nodes.push(stopping);
        nodes.push(node(4));
    });
    assert_eq!(values, vec![1; items]);
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            "run\n",
            "item {i} ran more than once"
        );
    }
    for n in nodes {
        n.shutdown(true);
    }
    finish(&redis, c, ns);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Two clients submit one idempotent task (the second joins it) while no worker runs,
/// and the second cancels it; then `start` starts a worker. Both are told `Cancelled`,
/// and the task never ran.
fn joined_then_cancelled(redis: &RedisServer, ns: &str, start: impl FnOnce() -> WorkerHandle) {
    let c = client(redis, ns);
    let c2 = client(redis, ns);
    let dir = common::tempdir(ns);
    let path = dir.join("runs").display().to_string();
    let opts = TaskOptions::new().idempotency_key("joined");
    let mut first = c
        .submit_with(FLAKY, (path.clone(), 1), opts.clone())
        .unwrap();
    let mut joined = c2.submit_with(FLAKY, (path.clone(), 1), opts).unwrap();
    assert!(joined.cancel(), "the cancel was refused");
    let w = start();
    assert_eq!(first.wait_timeout(T), Err(TaskError::Cancelled));
    assert_eq!(joined.wait_timeout(T), Err(TaskError::Cancelled));
    assert!(
        std::fs::read_to_string(&path).is_err(),
        "the cancelled task ran"
    );
    drop(w);
    finish(redis, c, ns);
    drop(c2);
    std::fs::remove_dir_all(dir).unwrap();
}

/// One client submits an idempotent countdown task twice (two handles, one task), then
/// cancels: the task is still delayed, so it must end `Cancelled` at once (README:
/// "a delayed task is removed from the sorted set").
fn cancel_after_the_same_client_repeats_an_idempotent_countdown() {
    let redis = RedisServer::start();
    let ns = "adv-idem-countdown";
    let c = client(&redis, ns);
    let opts = TaskOptions::new()
        .idempotency_key("later")
        .countdown(Duration::from_secs(60));
    let mut first = c.submit_with(SQUARE, 6, opts.clone()).unwrap();
    let mut second = c.submit_with(SQUARE, 6, opts).unwrap();
    assert_eq!(c.stats().unwrap().delayed, 1);
    assert!(first.cancel(), "cancel refused");
    let r1 = first.wait_timeout(Duration::from_secs(3));
    let r2 = second.wait_timeout(Duration::from_secs(1));
    let delayed = c.stats().unwrap().delayed;
    assert_eq!(
        r1,
        Err(TaskError::Cancelled),
        "the cancelled delayed task did not end (still delayed: {delayed})"
    );
    assert_eq!(r2, Err(TaskError::Cancelled));
    assert_eq!(delayed, 0, "the cancelled task is still in the delayed set");
    finish(&redis, c, ns);
}

/// A task waiting for its retry has a `retry:` record; `delete_queue` must remove it
/// with everything else of the queue.
fn delete_queue_removes_retry_records() {
    let redis = RedisServer::start();
    let ns = "adv-delete-retry";
    let w = one_at_a_time(&redis, ns);
    let c = client(&redis, ns);
    let dir = common::tempdir("adv-delete-retry");
    let p = dir.join("n").to_string_lossy().into_owned();
    let policy =
        RetryPolicy::attempts(3).backoff(Duration::from_secs(60), 1.0, Duration::from_secs(60));
    let t = c
        .submit_fallible_with(FLAKY_SLOW, (p, 3, 0), TaskOptions::new().retry(policy))
        .unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().delayed == 1));
    w.shutdown(true);
    drop(t);
    let prefix = format!("{ns}:");
    c.delete_queue("default").unwrap();
    let left = redis.keys(&prefix);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(left.is_empty(), "keys left after delete_queue: {left:?}");
}

/// `delete_queue` drops the queue's waiting tasks; a handle of the very client that
/// deleted it must not wait for ever.
fn delete_queue_fails_the_deleting_clients_handles() {
    let redis = RedisServer::start();
    let ns = "adv-delete-wait";
    let c = client(&redis, ns);
    let mut t = c.submit(SQUARE, 3).unwrap();
    c.delete_queue("default").unwrap();
    let r = t.wait_timeout(Duration::from_secs(8));
    finish(&redis, c, ns);
    assert!(
        !matches!(r, Err(TaskError::Timeout)),
        "a handle of a task whose queue was deleted hangs: {r:?}"
    );
}

/// `delete_queue` by one client: another client's handle of a task in that queue fails
/// within seconds, saying why, though nothing breaks its connections and it submits
/// nothing more.
fn delete_queue_fails_other_clients_handles() {
    let redis = RedisServer::start();
    let ns = "adv-delete-other";
    let deleter = client(&redis, ns);
    let waiter = client(&redis, ns);
    let mut t = waiter.submit(SQUARE, 3).unwrap();
    deleter.delete_queue("default").unwrap();
    let started = Instant::now();
    let r = t.wait_timeout(Duration::from_secs(15));
    let took = started.elapsed();
    drop(waiter);
    finish(&redis, deleter, ns);
    match r {
        Err(TaskError::Failed(f)) => assert!(
            f.to_string().contains("deleted"),
            "the failure does not say why: {f}"
        ),
        other => panic!("the handle of a task whose queue was deleted: {other:?} after {took:?}"),
    }
}

/// A countdown task handed back by a stopping worker (the same envelope, attempt 0) is
/// cancelled once back in the queue; the next worker must not run it to its value
/// (README: "stopped at its next worker's first renewal").
fn cancel_of_a_handed_back_countdown_task() {
    let redis = RedisServer::start();
    let ns = "adv-handback";
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .prefetch(1)
        .grace(Duration::from_millis(200))
        .build()
        .expect("start worker");
    let c = client(&redis, ns);
    let mut t = c
        .submit_with(
            SLOW_SQUARE,
            (3, 3000),
            TaskOptions::new().countdown(Duration::from_millis(100)),
        )
        .unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight == 1));
    w.shutdown(true);
    let s = c.stats().unwrap();
    assert!(t.cancel(), "cancel refused");
    let w = one_at_a_time(&redis, ns);
    let r = t.wait_timeout(T);
    w.shutdown(true);
    assert_eq!(
        r,
        Err(TaskError::Cancelled),
        "cancel() returned true; stats after the stop: {s:?}"
    );
    finish(&redis, c, ns);
}

/// The server restarts empty while another thread keeps submitting: every handle ends
/// (its value, or "lost its data"), none hangs, and none ends with a wrong value.
fn redis_restarted_empty_while_submitting() {
    let mut redis = RedisServer::start();
    let ns = "adv-wipe";
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(2)
        .lease(Duration::from_secs(1))
        .build()
        .expect("start worker");
    let c = std::sync::Arc::new(client(&redis, ns));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let submitter = {
        let (c, stop, sent) = (c.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut handles = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let opts = if i.is_multiple_of(3) {
                    TaskOptions::new().idempotency_key(format!("w{i}"))
                } else if i % 3 == 1 {
                    TaskOptions::new().countdown(Duration::from_millis(50))
                } else {
                    TaskOptions::new()
                };
                if let Ok(h) = c.submit_with(SLOW_SQUARE, (i, 20), opts) {
                    handles.push((i, h));
                    sent.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                i += 1;
                // A steady stream rather than a burst: submissions keep coming while
                // the server goes and comes back.
                std::thread::sleep(Duration::from_millis(5));
            }
            handles
        })
    };
    let sent_by =
        |n: u64| common::eventually(T, || sent.load(std::sync::atomic::Ordering::Acquire) >= n);
    // Tasks queued and running when the server loses its data, and more sent after.
    assert!(sent_by(60), "the submissions did not start");
    redis.restart_empty();
    let after = sent.load(std::sync::atomic::Ordering::Acquire);
    assert!(
        sent_by(after + 60),
        "no submission went through after the restart"
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    let handles = submitter.join().unwrap();
    let (mut ok, mut lost, mut bad) = (0, 0, Vec::new());
    for (i, mut h) in handles {
        match h.wait_timeout(T) {
            Ok(v) if v == i * i => ok += 1,
            Err(e) if e.to_string().contains("lost its data") => lost += 1,
            other => bad.push((i, format!("{other:?}"))),
        }
    }
    w.shutdown(true);
    let c = std::sync::Arc::try_unwrap(c).unwrap();
    assert!(bad.is_empty(), "ok {ok}, lost {lost}, bad: {bad:?}");
    assert!(ok > 0);
    finish(&redis, c, ns);
}

/// `grace(Duration::MAX)` ("never kill running tasks"): a stop ends once nothing runs
/// (the deadline of the stop, the grace and a lease after it began, overflowed the
/// clock: the keeper thread panicked and the stop waited for ever).
fn a_worker_with_an_endless_grace_stops() {
    let redis = RedisServer::start();
    let ns = "grace-max";
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .grace(Duration::MAX)
        .build()
        .expect("start worker");
    let c = client(&redis, ns);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        w.shutdown(true);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "a worker with grace(Duration::MAX) did not stop"
    );
    finish(&redis, c, ns);
}

/// Workers of one queue with different leases: one with a lease of 15 s renews its
/// task every 5 s, and one with a lease of 300 ms took it from it after 300 ms idle
/// (the task ran twice, the first run stopped as "lease lost"), and retired it as dead
/// once it was silent for 3 s between renewals. Tasks are now taken back after the
/// longest lease among the queue's live workers, and a worker is not retired while its
/// heartbeat key (three of its own leases long) lives.
fn a_shorter_lease_does_not_take_a_longer_ones_tasks() {
    let redis = RedisServer::start();
    let ns = "leases";
    let long = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .lease(Duration::from_secs(15))
        .build()
        .unwrap();
    let c = client(&redis, ns);
    let dir = common::tempdir("leases");
    let path = dir.join("runs").to_string_lossy().into_owned();
    let mut t = c.submit(RECORD_SLOW, (path.clone(), 2500)).unwrap();
    assert!(common::eventually(T, || std::path::Path::new(&path).exists()));
    let short = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .lease(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(t.wait_timeout(T), Ok(1));
    let runs = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        runs.lines().count(),
        1,
        "the task ran {} times",
        runs.lines().count()
    );
    let described: Vec<String> = c
        .stats()
        .unwrap()
        .workers
        .into_iter()
        .map(|w| w.description)
        .collect();
    assert!(
        described.iter().any(|d| d.ends_with("lease_ms=15000"))
            && described.iter().any(|d| d.ends_with("lease_ms=300")),
        "{described:?}"
    );
    // Through more than one of the long worker's renewal periods, it stays listed.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        let workers = c.stats().unwrap().workers.len();
        assert_eq!(workers, 2, "a live worker was retired");
        std::thread::sleep(Duration::from_millis(100));
    }
    short.shutdown(true);
    long.shutdown(true);
    let _ = std::fs::remove_dir_all(&dir);
    finish(&redis, c, ns);
}

/// A client and a worker built with different layout versions (a deploy that updates
/// one before the other) answer each other's tasks with an error that names the
/// versions: a worker that cannot read a task message tells its client why, from the
/// addressee that every message since version 4 begins with, and a client that cannot
/// read a reply finds the outcome of the task it names. Both waited before (the worker
/// dead-lettered the message without answering; the client dropped the reply).
fn clients_and_workers_of_other_layout_versions_are_answered() {
    let redis = RedisServer::start();
    let ns = "versions";
    let c = client(&redis, ns);
    let mut raw = redis.raw().unwrap();
    let delayed = format!("{ns}:{{default}}:delayed");
    let stream = format!("{ns}:{{default}}:stream");
    // A message from a newer client: a countdown task's envelope, taken out of the
    // delayed set, its version byte raised and its body cut short, in the stream.
    let mut t = c
        .submit_with(
            SQUARE,
            3,
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    let original = delayed_envelope(&mut raw, &delayed);
    let mut newer = original.clone();
    newer[0] = 5;
    newer.truncate(newer.len() - 3);
    raw.call_bytes(&[b"ZREM", delayed.as_bytes(), &original])
        .unwrap();
    raw.call_bytes(&[b"XADD", stream.as_bytes(), b"*", b"m", &newer])
        .unwrap();
    let w = worker(&redis, ns, 1);
    match t.wait_timeout(Duration::from_secs(10)) {
        Err(TaskError::DeadLettered(why)) => {
            assert!(why.contains("layout version 5"), "{why}")
        }
        other => panic!("a task message of a newer layout: {other:?}"),
    }
    assert_eq!(c.stats().unwrap().dead_lettered, 1);
    w.shutdown(true);
    // A reply from a newer worker: its outcome and its reply, written by hand.
    let mut t = c.submit(SQUARE, 4).unwrap();
    answer_by_hand(&redis, ns, &c, 2, &[5, 0, 8, 16, 0, 0, 0, 0, 0, 0, 0]);
    match t.wait_timeout(Duration::from_secs(10)) {
        Err(TaskError::Codec(e)) => assert!(e.to_string().contains("layout version 5"), "{e}"),
        other => panic!("a reply of a newer layout: {other:?}"),
    }
    // The stream still holds the task of 4, which no worker took: one does now.
    let w = worker(&redis, ns, 1);
    assert_eq!(c.apply(SQUARE, 5).unwrap(), 25);
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// A message whose attempt count is at the end of its range (the wire is not trusted)
/// is run and finished: counting one more attempt overflowed, which panicked the
/// worker's finisher thread, and no outcome was sent again.
fn an_attempt_count_at_its_end_is_finished() {
    let redis = RedisServer::start();
    let ns = "attempt-max";
    let c = client(&redis, ns);
    // A countdown task waits in the delayed set as its envelope: taken out, its attempt
    // count set to u32::MAX, and put in the stream.
    let mut t = c
        .submit_with(
            SQUARE,
            3,
            TaskOptions::new().countdown(Duration::from_secs(3600)),
        )
        .unwrap();
    let delayed = format!("{ns}:{{default}}:delayed");
    let stream = format!("{ns}:{{default}}:stream");
    let mut raw = redis.raw().unwrap();
    let original = delayed_envelope(&mut raw, &delayed);
    // The attempt count (4 bytes) follows the argument: 3, a u64 written whole,
    // little-endian (only fields of zeros come after it).
    let arg = 3u64.to_le_bytes();
    let at = original
        .windows(arg.len())
        .rposition(|w| w == arg)
        .expect("the argument in the envelope")
        + arg.len();
    let mut envelope = original.clone();
    envelope[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    raw.call_bytes(&[b"ZREM", delayed.as_bytes(), &original])
        .unwrap();
    raw.call_bytes(&[b"XADD", stream.as_bytes(), b"*", b"m", &envelope])
        .unwrap();
    let w = worker(&redis, ns, 1);
    assert_eq!(t.wait_timeout(Duration::from_secs(10)), Ok(9));
    // The worker goes on.
    assert_eq!(
        c.submit(SQUARE, 4)
            .unwrap()
            .wait_timeout(Duration::from_secs(10)),
        Ok(16)
    );
    w.shutdown(true);
    finish(&redis, c, ns);
}

/// Settings that read as "for ever" are what Redis accepts: outcomes kept
/// `Duration::MAX`, a dead-letter stream capped at `usize::MAX`, a retry delay of
/// `Duration::MAX` (Redis refused the finish of every task of the batch, which were
/// dropped, and their clients waited; a client's own `result_ttl(Duration::MAX)` made
/// an idempotent submission and a cancel fail).
fn endless_ttls_and_caps_are_kept_as_redis_allows() {
    let redis = RedisServer::start();
    let ns = "endless";
    // The default lease (30 s): a task whose finish Redis refused would end only after it.
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(1)
        .result_ttl(Duration::MAX)
        .dead_letter_cap(usize::MAX)
        .build()
        .expect("start worker");
    let c = Cluster::builder(&redis.url())
        .namespace(ns)
        .result_ttl(Duration::MAX)
        .build()
        .expect("connect");
    let ten = Duration::from_secs(10);
    let mut t = c.submit(SQUARE, 3).unwrap();
    assert_eq!(t.wait_timeout(ten), Ok(9));
    let mut t = c
        .submit_with(SQUARE, 4, TaskOptions::new().idempotency_key("forever"))
        .unwrap();
    assert_eq!(t.wait_timeout(ten), Ok(16));
    let mut later = c
        .submit_with(
            SQUARE,
            5,
            TaskOptions::new().countdown(Duration::from_secs(60)),
        )
        .unwrap();
    assert!(later.cancel(), "cancel of a delayed task refused");
    assert_eq!(later.wait_timeout(ten), Err(TaskError::Cancelled));
    let mut dead = c.submit(ABORT, 0).unwrap();
    assert!(matches!(
        dead.wait_timeout(T),
        Err(TaskError::DeadLettered(_))
    ));
    assert_eq!(c.stats().unwrap().dead_lettered, 1);
    // A failed run retried never: it waits in the delayed set, and a cancel ends it.
    let dir = common::tempdir("endless");
    let p = dir.join("n").to_string_lossy().into_owned();
    let never = RetryPolicy::attempts(2).backoff(Duration::MAX, 1.0, Duration::MAX);
    let mut retried = c
        .submit_fallible_with(FLAKY, (p.clone(), 2), TaskOptions::new().retry(never))
        .unwrap();
    assert!(
        common::eventually(ten, || c.stats().unwrap().delayed == 1),
        "the retry was not scheduled: {:?}",
        c.stats()
    );
    assert!(
        retried.cancel(),
        "cancel of a task waiting for its retry refused"
    );
    assert_eq!(retried.wait_timeout(ten), Err(TaskError::Cancelled));
    assert_eq!(counter(&p), 1);
    assert_eq!(c.stats().unwrap().delayed, 0);
    w.shutdown(true);
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
}
/// A task of a batch whose finish Redis refuses (a key of another type where its
/// waiters' set goes) holds back none of the others: they are finished one at a time
/// (the whole batch was left to run again once its leases lapsed).
fn a_refused_finish_holds_back_none_of_its_batch() {
    let redis = RedisServer::start();
    let ns = "refused";
    let c = client(&redis, ns);
    // Sent before any worker runs: read together, finished in batches.
    let handles = c.submit_batch(SQUARE, 0..200u64).unwrap();
    // A task's id is its client's id and a count from 1.
    let mut raw = redis.raw().unwrap();
    let poisoned: Vec<String> = (1..=200)
        .step_by(10)
        .map(|i| format!("{ns}:{{default}}:waiters:{}-{i}", c.id()))
        .collect();
    for key in &poisoned {
        raw.call(&["SET", key, "x"]).unwrap();
    }
    let w = tasks(Worker::builder(&redis.url()))
        .namespace(ns)
        .processes(2)
        .prefetch(200)
        .lease(Duration::from_secs(30))
        .build()
        .expect("start worker");
    let until = Instant::now() + Duration::from_secs(10);
    let mut late = Vec::new();
    for (x, mut t) in handles.into_iter().enumerate() {
        let r = t.wait_timeout(until.saturating_duration_since(Instant::now()));
        if r != Ok((x * x) as u64) {
            late.push((x, r));
        }
    }
    w.shutdown(true);
    for key in &poisoned {
        raw.call(&["DEL", key]).unwrap();
    }
    finish(&redis, c, ns);
    assert!(
        late.is_empty(),
        "{} tasks not answered in time, the first: {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
}

/// A worker run with `run()` drains on `SIGTERM`; a second `SIGTERM` meanwhile ends it
/// at once (the signal was ignored: the drain went on for its whole grace).
fn a_second_signal_ends_a_draining_worker() {
    use std::os::unix::process::ExitStatusExt;
    let redis = RedisServer::start();
    let ns = "second-signal";
    let mut n = node(&redis, ns, "twice");
    let c = client(&redis, ns);
    let _held = c.submit(SLOW_SQUARE, (3, 60_000)).unwrap();
    assert!(common::eventually(T, || c.stats().unwrap().in_flight == 1));
    let pid = n.child.id();
    cluster_common::signal(pid, "-TERM");
    // It drains (its task runs a minute, its grace is 20 s).
    assert!(
        !common::wait_gone(pid, Duration::from_millis(200)),
        "the first SIGTERM ended the worker"
    );
    // Waiting for its task, not spinning: under a tenth of the time in CPU.
    let (cpu, started) = (cpu_of(pid), Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let (used, took) = (cpu_of(pid).saturating_sub(cpu), started.elapsed());
    assert!(used < took / 10, "{used:?} of CPU in {took:?} of draining");
    cluster_common::signal(pid, "-TERM");
    // Not after the node's grace of 20 s.
    let status = n.wait(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    // Its pool's processes end with it.
    let left = common::settle_group(pid, Duration::from_secs(10));
    assert!(left.is_empty(), "left running: {left:?}");
    drop(n);
    finish(&redis, c, ns);
}

/// The CPU time process `pid` has used, its ended threads included (`/proc/PID/stat`,
/// user and system, in ticks of 10 ms: USER_HZ is 100 on the targets tested).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the name: the state (field 3) first, utime and stime (14, 15) 11 on.
    let ticks: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Once `run` has returned, `SIGTERM` ends the process as by default (it was ignored:
/// the worker's handlers were removed, which leaves a signal ignored), and `SIGINT`,
/// which the program ignored before `run`, stays ignored.
fn a_signal_after_run_ends_the_process() {
    use std::os::unix::process::ExitStatusExt;
    let redis = RedisServer::start();
    let ns = "after-run";
    let mut n = common::Helper::start_with(
        "worker",
        std::env::current_exe().unwrap(),
        &[
            ("MP_URL", &redis.url()),
            ("MP_NS", ns),
            ("MP_NODE", "lingering"),
            ("MP_LINGER", "1"),
            ("MP_IGNORE_INT", "1"),
        ],
    );
    n.expect("ready", T);
    let c = client(&redis, ns);
    // Serving (registered as a worker of the queue), then drained.
    assert!(common::eventually(T, || !c
        .stats()
        .unwrap()
        .workers
        .is_empty()));
    let pid = n.child.id();
    cluster_common::signal(pid, "-TERM");
    n.expect("stopped", T);
    cluster_common::signal(pid, "-INT");
    assert!(
        !common::wait_gone(pid, Duration::from_millis(300)),
        "SIGINT, ignored before run, ended the process after it"
    );
    cluster_common::signal(pid, "-TERM");
    // Not after its minute of sleep.
    let status = n.wait(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    drop(n);
    finish(&redis, c, ns);
}

/// Two clients whose outcomes and records last a second submit one idempotency key;
/// the task runs 3 s. The second joined the task's waiters, whose set lapsed with its
/// TTL before the task ended: it must still get the outcome (it waited for ever).
fn a_repeat_outlives_its_waiter_set() {
    let redis = RedisServer::start();
    let ns = "idem-waiters";
    let w = worker(&redis, ns, 1);
    let (a, b) = (short_lived(&redis, ns), short_lived(&redis, ns));
    let dir = common::tempdir("idem-waiters");
    let p = dir.join("runs").to_string_lossy().into_owned();
    let key = TaskOptions::new().idempotency_key("slow");
    let mut first = a
        .submit_with(RECORD_SLOW, (p.clone(), 3000), key.clone())
        .unwrap();
    let mut repeat = b.submit_with(RECORD_SLOW, (p.clone(), 3000), key).unwrap();
    assert_eq!(first.wait_timeout(T), Ok(1));
    let r = repeat.wait_timeout(Duration::from_secs(15));
    let ran = runs(&p);
    w.shutdown(true);
    drop((a, b));
    let c = client(&redis, ns);
    finish(&redis, c, ns);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ran, 1, "the repeat did not join the task");
    assert_eq!(r, Ok(1), "the repeat's handle");
}

/// `cancel()` said true for a running task that then ended before its worker's next
/// renewal (which stops it): the task must end `Cancelled`, as a pool's does (it ended
/// with its value).
fn a_cancel_that_said_true_wins_over_the_tasks_end() {
    let redis = RedisServer::start();
    let ns = "cancel-true";
    // Renewals every 10 s: the task ends long before the next one.
    let w = one_at_a_time(&redis, ns);
    let c = client(&redis, ns);
    let dir = common::tempdir("cancel-true");
    let p = dir.join("runs").to_string_lossy().into_owned();
    let mut t = c.submit(RECORD_SLOW, (p.clone(), 1500)).unwrap();
    assert!(common::eventually(T, || runs(&p) == 1), "never started");
    assert!(t.cancel(), "cancel of a running task refused");
    let r = t.wait_timeout(T);
    let n = runs(&p);
    cancelled_and_clean((&redis, w, c, ns, &dir), r, n, 1);
}
