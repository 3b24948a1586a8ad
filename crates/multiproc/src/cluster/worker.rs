//! [`Worker`]: a node that reads tasks from a queue's stream and runs them in a local
//! process [`Pool`].
//!
//! Three threads: the reader (`XREADGROUP` on a connection of its own), the finisher
//! (polls the pool's tasks as futures, woken by them, and finishes them in batches with
//! one owner-checked script call), and the keeper (renews leases and the heartbeat,
//! promotes due delayed tasks, reclaims expired leases, retires dead workers). A task's
//! timeout is the pool's to keep: each goes to it with its own. See `README.md` beside
//! this file.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::Value;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TaskDef;
use super::conn::{self, BLOCK_MARGIN, Limits, Link, RESPONSE_TIMEOUT, Server, Settings};
use super::envelope::{self, Addressee, Envelope, ErrorWire, Outcome, Reply, millis};
use super::error::ClusterError;
use super::keys::{GROUP, Keys};
use super::scripts;
use crate::CodecError;
use crate::deadline;
use crate::pool::RetryPolicy;
use crate::pool::TaskError;
use crate::pool::{Pool, Task, TaskOptions};
use crate::sync::unpoisoned::lock;
use crate::wire::codec;

/// Finishes per script call.
const FINISH_BATCH: usize = 128;
/// The most bytes of outcomes and retried tasks one script call carries, unless its
/// first finish alone is larger (an outcome goes twice: as the result and in its
/// client's reply), and less where the server's query buffer is smaller. A call is one
/// command, and Redis closes the connection of a client whose command outgrows its query
/// buffer (1 GB by default): a batch of large outcomes would then fail again at every
/// try.
const FINISH_BYTES: usize = 64 << 20;
/// Delayed tasks moved per script call.
const PROMOTE_BATCH: usize = 1000;
/// How often the keeper looks at delays, leases and the stop.
const TICK: Duration = Duration::from_millis(100);

/// Starts a run of one registered task: decodes the argument (with `true`: a chunk of
/// arguments, one pool task each) and submits it to the pool, with the task's timeout
/// (the pool counts it from when a process starts the run, not while the task waits in
/// the node's local queue).
type Runner = Arc<
    dyn Fn(&Pool, &[u8], bool, Option<Duration>) -> Result<Box<dyn Running>, TaskError>
        + Send
        + Sync,
>;

/// An entry a node took, its task ready to start ([`Node::admit`]).
struct Ready {
    entry: String,
    fence: u64,
    envelope: Envelope,
    runner: Runner,
    /// Its cancel flag is looked for before it starts (it waited where its client
    /// could only flag it: delayed, retried, redelivered, or idempotent).
    look: bool,
}

/// Finds the `Err` in a fallible task's value: the failure, as it travels.
type ErrCheck<R> = fn(&R) -> Option<ErrorWire>;

/// The runner of `f` (`check` finds the `Err` values of a fallible task).
fn runner<A, R>(f: fn(A) -> R, check: Option<ErrCheck<R>>) -> Runner
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    Arc::new(
        move |pool: &Pool, bytes: &[u8], chunk: bool, timeout: Option<Duration>| {
            let submit = |a: A| match timeout {
                Some(t) => pool.submit_with(f, a, TaskOptions::new().timeout(t)),
                None => pool.submit(f, a),
            };
            if chunk {
                let items: Vec<A> = codec::decode(bytes, Vec::new()).map_err(TaskError::Codec)?;
                let tasks = items
                    .into_iter()
                    .map(|a| submit(a).map(Some))
                    .collect::<Result<Vec<_>, _>>()?;
                let outs = (0..tasks.len()).map(|_| None).collect();
                return Ok(Box::new(ChunkRun {
                    tasks,
                    outs,
                    first: 0,
                    cancelled: false,
                    check,
                    unrunnable: None,
                }) as Box<dyn Running>);
            }
            let a: A = codec::decode(bytes, Vec::new()).map_err(TaskError::Codec)?;
            let task = submit(a)?;
            Ok(Box::new(Run { task, check }) as Box<dyn Running>)
        },
    )
}

/// A chunk of a `map`: one pool task per item; its value is every item's outcome.
struct ChunkRun<R> {
    tasks: Vec<Option<Task<R>>>,
    outs: Vec<Option<Outcome>>,
    /// The first item not yet ended: those before it all have their outcome.
    first: usize,
    cancelled: bool,
    /// For a fallible task: an item's `Err` is its failure.
    check: Option<ErrCheck<R>>,
    /// The pool could not run an item (it broke, or closed): the chunk is handed back
    /// as a whole rather than finished with those items failed.
    unrunnable: Option<TaskError>,
}

impl<R: Serialize + Send + 'static> Running for ChunkRun<R> {
    /// Polls the items in order from the first not yet ended, and stops at the first
    /// still running: only that one holds the waker, and the chunk is woken when it
    /// ends (an item after it that ended first is taken as the walk reaches it). Each
    /// wake-up polling every item made a chunk of n items n² polls (16 million for
    /// 4,000), on the thread that serves all of the node's tasks.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        while let Some(slot) = self.tasks.get_mut(self.first) {
            let out = &mut self.outs[self.first];
            if let Some(task) = slot {
                let Poll::Ready(r) = Pin::new(task).poll(cx) else {
                    return Poll::Pending;
                };
                *out = Some(match r {
                    Ok(v) => match self.check.and_then(|check| check(&v)) {
                        Some(failed) => Outcome::Failed(failed),
                        None => envelope::encode_value(&v).map_or_else(
                            |e| Outcome::Failed(ErrorWire::Codec(e.message().into())),
                            Outcome::Value,
                        ),
                    },
                    Err(e @ (TaskError::PoolBroken(_) | TaskError::PoolClosed)) => {
                        // Not the item's doing: the whole chunk goes back (below).
                        let failed = Outcome::Failed(ErrorWire::from_error(&e));
                        self.unrunnable.get_or_insert(e);
                        failed
                    }
                    Err(e) => Outcome::Failed(ErrorWire::from_error(&e)),
                });
                *slot = None;
            }
            self.first += 1;
        }
        if let Some(e) = self.unrunnable.take() {
            return Poll::Ready(Done::Failed(e));
        }
        if self.cancelled {
            return Poll::Ready(Done::Failed(TaskError::Cancelled));
        }
        let outs: Vec<&Outcome> = self.outs.iter().flatten().collect();
        Poll::Ready(match envelope::encode_value(&outs) {
            Ok(bytes) => Done::Value(bytes),
            Err(e) => Done::Failed(TaskError::Codec(e)),
        })
    }

    fn cancel(&mut self) -> bool {
        // Every item is stopped; the chunk then ends as cancelled.
        self.cancelled = true;
        let mut any = false;
        for t in self.tasks.iter().flatten() {
            any |= t.cancel();
        }
        any
    }

    /// A chunk none of whose items has started (or ended) is cancelled whole, to go
    /// back to the queue; one with an item started is left to run. An item that starts
    /// while the others are cancelled (the last first: the pool starts them in order)
    /// runs on until it ends or the grace does, and the chunk, ended as cancelled then,
    /// goes back all the same (its items all run again elsewhere, as a chunk stopped at
    /// the grace's end does).
    fn cancel_unstarted(&mut self) -> bool {
        // Done and not yet polled counts too: its outcome would be lost with the chunk.
        let started =
            |t: &Option<Task<R>>| t.as_ref().is_none_or(|t| t.is_running() || t.is_done());
        if self.cancelled || self.tasks.iter().any(started) {
            return false;
        }
        let mut any = false;
        for t in self.tasks.iter().rev().flatten() {
            any |= t.cancel_unstarted();
        }
        self.cancelled = any;
        any
    }
}

/// A task running in the pool.
trait Running: Send {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Done>;
    fn cancel(&mut self) -> bool;
    /// Cancels it if it has not started; whether it will end cancelled.
    fn cancel_unstarted(&mut self) -> bool;
}

/// How a run ended.
enum Done {
    /// The encoded value.
    Value(Vec<u8>),
    /// A fallible task returned `Err`: the failure, as it travels.
    Err(ErrorWire),
    Failed(TaskError),
}

struct Run<R> {
    task: Task<R>,
    /// For a fallible task: finds an `Err` value.
    check: Option<ErrCheck<R>>,
}

impl<R: Serialize + Send + 'static> Running for Run<R> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        Pin::new(&mut self.task).poll(cx).map(|r| match r {
            Err(e) => Done::Failed(e),
            Ok(v) => match self.check.and_then(|check| check(&v)) {
                Some(failed) => Done::Err(failed),
                None => match envelope::encode_value(&v) {
                    Err(e) => Done::Failed(TaskError::Codec(e)),
                    Ok(bytes) => Done::Value(bytes),
                },
            },
        })
    }

    fn cancel(&mut self) -> bool {
        self.task.cancel()
    }

    fn cancel_unstarted(&mut self) -> bool {
        self.task.cancel_unstarted()
    }
}

/// A fallible task's `Err`, as it travels: its text, type name and encoding.
fn err_of<T, E: Serialize + fmt::Display>(r: &Result<T, E>) -> Option<ErrorWire> {
    let e = r.as_ref().err()?;
    let message = e.to_string();
    Some(match envelope::encode_value(e) {
        Ok(encoded) => ErrorWire::Failed {
            message,
            type_name: Some(std::any::type_name::<E>().to_string()),
            encoded: Some(encoded),
        },
        Err(why) => ErrorWire::Failed {
            message: format!("{message} (the error does not encode: {why})"),
            type_name: Some(std::any::type_name::<E>().to_string()),
            encoded: None,
        },
    })
}

/// Builds and starts a worker node ([`Worker::builder`]).
#[must_use = "a builder does nothing until `run` or `start` is called"]
pub struct WorkerBuilder {
    settings: Settings,
    processes: Option<usize>,
    lease: Duration,
    block: Duration,
    prefetch: Option<usize>,
    max_deliveries: u32,
    grace: Duration,
    dead_letter_cap: usize,
    tasks: Vec<(&'static str, u64, Runner)>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("settings", &self.settings)
            .field("processes", &self.processes)
            .field("lease", &self.lease)
            .field("tasks", &self.tasks.iter().map(|t| t.0).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A worker node of a cluster: see [`Worker::builder`].
#[derive(Debug)]
pub struct Worker {
    _private: (),
}

impl Worker {
    /// A builder for a node reading from the Redis at `url`.
    ///
    /// Defaults: queue `"default"`, namespace `"multiproc"`, as many processes as CPUs,
    /// a 30 s lease, 3 deliveries before a task that keeps crashing (or losing its
    /// worker) is dead-lettered, a 30 s grace period to finish running tasks on stop.
    pub fn builder(url: &str) -> WorkerBuilder {
        WorkerBuilder {
            settings: Settings::new(url),
            processes: None,
            lease: Duration::from_secs(30),
            block: Duration::from_secs(1),
            prefetch: None,
            max_deliveries: 3,
            grace: Duration::from_secs(30),
            dead_letter_cap: 10_000,
            tasks: Vec::new(),
        }
    }
}

impl WorkerBuilder {
    /// The queue to serve (default `"default"`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.settings.queue = queue.into();
        self
    }

    /// The key namespace (default `"multiproc"`); the clients' must match.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.namespace = namespace.into();
        self
    }

    /// Processes of the local pool that runs the tasks (default: the CPUs).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// How long a task stays this worker's without a renewal (default 30 s; 300 ms to
    /// one day). The worker renews every third of it; another worker reclaims a task
    /// whose lease ran out. Workers of a queue with different leases take tasks back
    /// only after the longest of them (a warning says so): a shorter one would take
    /// tasks that a worker with a longer lease still holds. After a stretch in which no
    /// worker of the queue renewed for more than two thirds of that (the server paused
    /// or restarting, or every worker gone), tasks are taken back only once renewals
    /// have come again for a lease: by the server's clock every lease lapsed meanwhile.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Tasks held at once (running, or queued in the local pool; default 4 per process).
    /// A read of new tasks and a reclaim of lapsed ones (every third of a lease) each
    /// take what room there is, and may meet: the node then holds up to twice this for
    /// as long as those tasks take. (Reserving the room for the read, which blocks up
    /// to a second waiting for tasks, would leave an idle worker none to reclaim with.)
    /// The node reads again as soon as it holds fewer tasks than its pool has processes
    /// (a map's chunk counts as one), else once half of this is free. At most 1,048,576: [`build`](Self::build) refuses more.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// Deliveries of a task that crash its process or lose its worker before it is
    /// dead-lettered (default 3), counted over all its retries and hand-backs.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// The largest task message accepted (default 64 MiB): a larger one is
    /// dead-lettered unread. Also the largest outcome sent: a task whose result (or a
    /// map chunk whose results together) encode larger fails with
    /// [`TaskError::Codec`](crate::TaskError::Codec) saying so. So does one over what
    /// the server takes: no value over its `proto-max-bulk-len` (512 MB by default), no
    /// command over its `client-query-buffer-limit` (1 GB), and an outcome goes to it
    /// twice in one command. The worker reads both limits as it starts and as it renews
    /// its leases (Redis's defaults where `CONFIG GET` is not allowed): just under
    /// 512 MiB by default.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.settings.max_message = bytes;
        self
    }

    /// How long the outcomes of the tasks this worker runs are kept (default a day; at
    /// least a second, at most a century: `Duration::MAX` keeps them a century, the
    /// longest expiry Redis is given): a client that cannot reach the server for longer
    /// than that finds its outcome gone (the client's own `result_ttl` covers what the
    /// client writes: idempotency records, cancels).
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.settings.result_ttl = ttl;
        self
    }

    /// How long a stopping worker lets running tasks finish before it hands them back
    /// to the queue (default 30 s; `Duration::MAX`: never, the stop waits for them).
    /// The tasks it holds but has not started go back as the stop begins.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The dead-letter stream is trimmed to about this many entries (default 10,000; at
    /// most `i64::MAX`, the largest count Redis takes, which `usize::MAX` becomes).
    pub fn dead_letter_cap(mut self, n: usize) -> Self {
        self.dead_letter_cap = n;
        self
    }

    /// Trusts these PEM certificates for `rediss://` instead of the system's roots.
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.settings.tls_root = Some(pem.into());
        self
    }

    /// Runs `f` for tasks of `def`: `f(args)` in a process of the local pool, its value
    /// the task's result.
    pub fn register<A, R>(mut self, def: TaskDef<A, R>, f: fn(A) -> R) -> Self
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.tasks.push((def.name(), def.schema(), runner(f, None)));
        self
    }

    /// As [`register`](Self::register), for a function returning `Result`: an `Err` is
    /// the task's failure, [`TaskError::Failed`] carrying the error (its text, type
    /// name and encoding: [`Failure::decode`](crate::Failure::decode) gets it back),
    /// which the task's retry policy may retry. Submit such a task with
    /// [`Cluster::submit_fallible`](super::Cluster::submit_fallible) for a
    /// `Task<T>`; a plain `submit` gets a `Task<Result<T, E>>` whose value is always
    /// an `Ok`.
    pub fn register_fallible<A, T, E>(
        mut self,
        def: TaskDef<A, Result<T, E>>,
        f: fn(A) -> Result<T, E>,
    ) -> Self
    where
        A: Serialize + DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + fmt::Display + Send + 'static,
    {
        self.tasks
            .push((def.name(), def.schema(), runner(f, Some(err_of::<T, E>))));
        self
    }

    /// Starts the node on threads of its own and returns a handle to shut it down.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidArgument`] for no task, two tasks of one name, a bad
    /// queue name or setting; the connection errors of
    /// [`ClusterBuilder::build`](super::ClusterBuilder::build); [`ClusterError::Pool`]
    /// if the pool cannot start (call [`init`](crate::init) first in `main`).
    pub fn build(self) -> Result<WorkerHandle, ClusterError> {
        let invalid = |why: String| Err(ClusterError::InvalidArgument(why));
        if self.tasks.is_empty() {
            return invalid("a worker needs at least one registered task".into());
        }
        let mut registry = HashMap::new();
        for (name, schema, runner) in self.tasks {
            if registry
                .insert(name.to_string(), (schema, runner))
                .is_some()
            {
                return invalid(format!("the task name {name:?} is registered twice"));
            }
        }
        if self.lease < Duration::from_millis(300) {
            return invalid("the lease must be at least 300 ms".into());
        }
        if self.lease > MAX_LEASE {
            return invalid("the lease must be at most one day".into());
        }
        if self.max_deliveries == 0 {
            return invalid("max_deliveries must be at least 1".into());
        }
        let processes = self.processes.unwrap_or_else(crate::cpu_count).max(1);
        if self.prefetch.is_some_and(|n| n > MAX_PREFETCH) {
            return invalid(format!("the prefetch must be at most {MAX_PREFETCH} tasks"));
        }
        let capacity = self
            .prefetch
            .unwrap_or(processes.saturating_mul(4))
            .clamp(1, MAX_PREFETCH);
        let (server, keys) = self.settings.open()?;
        let mut conn = server.connect_checked()?;
        ensure_group(&mut conn, &keys)?;
        scripts_allowed(&mut conn)?;
        // Redis's defaults until the server says (and for good where it will not).
        let (limits, refused) = match conn::server_config(&mut conn) {
            Ok(Some((limits, policy))) => {
                conn::warn_if_evicting(policy.as_deref(), "cluster worker");
                (limits, false)
            }
            Ok(None) => (Limits::DEFAULT, true),
            Err(_) => (Limits::DEFAULT, false),
        };
        let pool = Pool::builder()
            .processes(processes)
            .name(format!("{}-worker", self.settings.queue))
            .build()?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let name = format!("{host}-{}-{}", std::process::id(), conn::random_hex(4)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let node = Arc::new(Node {
            cfg: Config {
                lease: self.lease,
                block: self.block,
                capacity,
                processes,
                max_deliveries: self.max_deliveries,
                max_message: self.settings.max_message,
                result_ttl: self.settings.result_ttl_secs(),
                grace: self.grace,
                // `MAXLEN` takes a signed 64-bit count.
                dead_letter_cap: self
                    .dead_letter_cap
                    .clamp(1, usize::try_from(i64::MAX).unwrap_or(usize::MAX)),
                info: format!(
                    "host={host} pid={} processes={processes} lease_ms={}",
                    std::process::id(),
                    millis(self.lease)
                ),
            },
            name,
            keys,
            registry,
            pool: Mutex::new(Some(pool)),
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            events: tx,
            stopping: AtomicBool::new(false),
            broken: Mutex::new(None),
            stop_by: Mutex::new(None),
            unsent: AtomicUsize::new(0),
            finishing: AtomicUsize::new(0),
            quit: AtomicBool::new(false),
            reader_done: AtomicBool::new(false),
            finisher_gone: AtomicBool::new(false),
            server_cap: AtomicUsize::new(limits.outcome),
            server_call: AtomicUsize::new(limits.call),
            config_refused: AtomicBool::new(refused),
            reader_id: Mutex::new(None),
            recheck: AtomicBool::new(false),
            claims: Mutex::new(()),
            link: Mutex::new(Link::with(server.clone(), RESPONSE_TIMEOUT, conn)),
            server,
            stop_signal: Mutex::new(false),
            stop_cv: Condvar::new(),
        });
        tracing::info!(worker = %node.name, queue = node.keys.queue(), "cluster worker started");
        let start = |role: Role, body: Box<dyn FnOnce(Arc<Node>) + Send>| {
            let node = Arc::clone(&node);
            std::thread::Builder::new()
                .name(format!("multiproc-cluster-{}", role.name()))
                .spawn(move || {
                    let run = Arc::clone(&node);
                    node.guarded(role, move || body(run));
                })
        };
        // The reader, which takes tasks, starts last: if the system refuses a thread,
        // the node has taken nothing, and those started end at once.
        let mut threads = Vec::with_capacity(3);
        let started = start(Role::Finisher, Box::new(move |n| n.finish_loop(&rx)))
            .and_then(|t| {
                threads.push(t);
                start(Role::Keeper, Box::new(Node::keep))
            })
            .and_then(|t| {
                threads.push(t);
                start(Role::Reader, Box::new(Node::read))
            });
        match started {
            Ok(t) => threads.push(t),
            Err(e) => {
                node.reader_done.store(true, Ordering::Release);
                node.request_stop();
                if threads.len() < 2 {
                    // No keeper to end the node: the finisher waits for its end.
                    node.end();
                }
                for t in threads {
                    crate::sync::unpoisoned::join(t);
                }
                return Err(e.into());
            }
        }
        Ok(WorkerHandle {
            node,
            threads: Mutex::new(threads),
        })
    }

    /// Starts the node and serves until `SIGTERM` or `SIGINT`, or until the node stops
    /// on its own (its local pool broke): then it takes no more tasks, lets
    /// running ones finish within the grace period (handing the rest back to the
    /// queue), and returns. A second signal once the drain has begun (within 100 ms of
    /// the first) ends the process at once, as the signal's default action does (its
    /// tasks are reclaimed by other workers when their leases run out). Once `run` has
    /// returned, a signal that had its default action before `run` ends the process as
    /// by default again; one the program ignored (`nohup`) or handled stays so.
    ///
    /// Ctrl-C in a terminal signals the whole foreground process group: the pool's
    /// processes leave `SIGINT` to the node (see [`Pool`](crate::Pool)), so their
    /// running tasks finish in the drain. A `SIGTERM` sent to the whole group or
    /// control group (systemd's default `KillMode=control-group`) ends the pool's
    /// processes with it, their tasks to be redelivered: under systemd, set
    /// `KillMode=mixed` (`SIGTERM` to the node alone, `SIGKILL` to what is left after
    /// the stop), as for Celery. A node the program stops itself, from another thread,
    /// is started with [`build`](Self::build) and stopped with
    /// [`WorkerHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build); an I/O error if the signal handlers cannot be
    /// installed.
    pub fn run(self) -> Result<(), ClusterError> {
        // Before the node takes tasks: a signal then drains them.
        #[cfg(unix)]
        let (flag, _serving) = stop_signals::serve()?;
        #[cfg(not(unix))]
        let flag = AtomicBool::new(false);
        let handle = self.build()?;
        while !flag.load(Ordering::Acquire) && !handle.node.stopping.load(Ordering::Acquire) {
            handle.node.wait_stop(Duration::from_millis(100));
        }
        if flag.load(Ordering::Acquire) {
            tracing::info!(worker = %handle.node.name, "stop signal: draining");
            #[cfg(unix)]
            _serving.arm();
        }
        // The signals' handling stays as it is through the drain (`_serving`).
        handle.shutdown(true);
        match handle.broken() {
            Some(why) => Err(ClusterError::PoolBroken(why)),
            None => Ok(()),
        }
    }
}

/// `SIGTERM` and `SIGINT` for [`WorkerBuilder::run`]. Their actions are registered once
/// per process and kept: signal-hook cannot give a signal its disposition back
/// (unregistering the last action leaves it ignored). Per signal, an action that
/// emulates the default (ends the process by the signal) while the signal's `kill`
/// flag is set, then one that sets the `stop` flag. While a `run` serves, the `kill`
/// flags are clear, so a signal only stops (a drain); once `run` sees the stop, it sets
/// them, so the next signal ends the process. Outside `run`, a signal's `kill` flag is
/// set only if the signal had its default action before the first `run`: a process
/// that ignored it (`nohup`) or handled it (its handler is called by signal-hook before
/// these actions) keeps doing so.
#[cfg(unix)]
mod stop_signals {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use crate::sync::unpoisoned::lock;
    use crate::sys;

    const SIGNALS: [i32; 2] = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT];

    struct Flags {
        stop: Arc<AtomicBool>,
        /// Per signal: its `kill` flag, and whether it had its default action.
        kill: [(Arc<AtomicBool>, bool); 2],
        /// `run`s serving now.
        runs: usize,
    }

    impl Flags {
        /// The `kill` flags as they are outside `run`.
        fn outside_run(&self) {
            for (kill, was_default) in &self.kill {
                kill.store(*was_default, Ordering::SeqCst);
            }
        }
    }

    static FLAGS: Mutex<Option<Flags>> = Mutex::new(None);

    /// While it lives, a signal drains the node(s) `run` serves.
    pub(super) struct Serving(());

    impl Serving {
        /// A stop signal came: the next one ends the process.
        pub(super) fn arm(&self) {
            if let Some(flags) = &*lock(&FLAGS) {
                for (kill, _) in &flags.kill {
                    kill.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// Signals now drain (the returned flag is set when one came) until the [`Serving`]
    /// drops.
    pub(super) fn serve() -> std::io::Result<(Arc<AtomicBool>, Serving)> {
        let mut flags = lock(&FLAGS);
        let flags = match &mut *flags {
            Some(f) => f,
            None => {
                let stop = Arc::new(AtomicBool::new(false));
                let kill = SIGNALS.map(|sig| {
                    (
                        Arc::new(AtomicBool::new(false)),
                        sys::signal_is_default(sig),
                    )
                });
                for (sig, (kill, _)) in SIGNALS.iter().zip(&kill) {
                    signal_hook::flag::register_conditional_default(*sig, Arc::clone(kill))?;
                    signal_hook::flag::register(*sig, Arc::clone(&stop))?;
                }
                flags.insert(Flags {
                    stop,
                    kill,
                    runs: 0,
                })
            }
        };
        if flags.runs == 0 {
            flags.stop.store(false, Ordering::SeqCst);
            for (kill, _) in &flags.kill {
                kill.store(false, Ordering::SeqCst);
            }
        }
        flags.runs += 1;
        Ok((Arc::clone(&flags.stop), Serving(())))
    }

    impl Drop for Serving {
        fn drop(&mut self) {
            if let Some(flags) = &mut *lock(&FLAGS) {
                flags.runs -= 1;
                if flags.runs == 0 {
                    flags.outside_run();
                }
            }
        }
    }
}

/// Controls a started worker node ([`WorkerBuilder::build`]). Dropping it stops the
/// node and waits for it, as [`shutdown(true)`](Self::shutdown) does.
pub struct WorkerHandle {
    node: Arc<Node>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("name", &self.node.name)
            .field("in_flight", &lock(&self.node.state).flights.len())
            .finish()
    }
}

impl WorkerHandle {
    /// The worker's consumer name (as [`Cluster::stats`](super::Cluster::stats) lists
    /// it).
    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// Tasks the node holds now.
    pub fn in_flight(&self) -> usize {
        lock(&self.node.state).flights.len()
    }

    /// Stops the node: it takes no more tasks, and the running ones finish (within the
    /// grace period; past it they are killed and handed back to the queue). With
    /// `wait`, returns once the node has finished (its tasks done or handed back, its
    /// pool gone); otherwise at once, the rest happening in the background. The
    /// scheduler's [`shutdown`](crate::Scheduler::shutdown) takes the same flag.
    pub fn shutdown(&self, wait: bool) {
        self.stop();
        if wait {
            let threads = std::mem::take(&mut *lock(&self.threads));
            for t in threads {
                crate::sync::unpoisoned::join(t);
            }
        }
    }

    /// Why the node stopped on its own, if it did: its local pool gave up (its
    /// processes kept ending before they took a task, or could not be started), the
    /// server came to refuse its Redis user the scripts that finish tasks or renew
    /// leases (`NOPERM`, its ACL rules changed while the node ran), or one of its
    /// threads panicked (a bug). It then takes no more tasks and hands those it
    /// holds back to the queue, uncounted, for other workers (those it cannot hand back
    /// are run again elsewhere once their leases lapse); [`WorkerBuilder::run`] returns
    /// [`ClusterError::PoolBroken`].
    pub fn broken(&self) -> Option<String> {
        lock(&self.node.broken).clone()
    }

    fn stop(&self) {
        self.node.request_stop();
        self.node.unblock_reader();
    }
}

/// Dropping the handle shuts the node down and waits for it.
impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown(true);
    }
}

struct Config {
    lease: Duration,
    block: Duration,
    capacity: usize,
    /// The pool's processes.
    processes: usize,
    max_deliveries: u32,
    max_message: usize,
    result_ttl: u64,
    grace: Duration,
    dead_letter_cap: usize,
    info: String,
}

struct Node {
    cfg: Config,
    name: String,
    keys: Keys,
    registry: HashMap<String, (u64, Runner)>,
    /// Taken (and dropped) once the node has finished.
    pool: Mutex<Option<Pool>>,
    state: Mutex<State>,
    /// Signalled when a task leaves (room for the reader) and on stop.
    room: Condvar,
    events: Sender<Event>,
    /// Takes no more tasks.
    stopping: AtomicBool,
    /// Why the local pool gave up, once it has: the node stopped on its own.
    broken: Mutex<Option<String>>,
    /// When a stop ends whatever the server does (a grace and a lease after it began).
    stop_by: Mutex<Option<Instant>>,
    /// Finishes of tasks that never became flights (refused, dead-lettered, failed at
    /// once) not yet sent: the node unregisters only after them, since `RETIRE` keeps
    /// a consumer that still holds entries.
    unsent: AtomicUsize,
    /// Finishes of flights (their runs are over) not yet sent: what a stop holds beyond
    /// them still runs.
    finishing: AtomicUsize,
    /// Every thread ends.
    quit: AtomicBool,
    /// The reader has ended (nothing more will be accepted from it).
    reader_done: AtomicBool,
    /// The finisher panicked: what the node holds will not be finished by it.
    finisher_gone: AtomicBool,
    /// The largest outcome the server takes in a finish, and the most a call may carry
    /// ([`Limits`]), read again as the leases are renewed.
    server_cap: AtomicUsize,
    server_call: AtomicUsize,
    /// The server refused to say its limits (`CONFIG` not allowed, or renamed): not
    /// asked again.
    config_refused: AtomicBool,
    reader_id: Mutex<Option<i64>>,
    /// A call that may have given this node entries lost its reply: the reader looks
    /// for entries pending for the node that it does not hold before it reads again.
    recheck: AtomicBool,
    /// Held by a reclaim from its call until it has accepted what it claimed, and by
    /// the reader while it takes entries back: an entry claimed and not accepted yet
    /// would look lost to the reader.
    claims: Mutex<()>,
    /// The keeper's connection (the reader and the finisher have their own).
    link: Mutex<Link>,
    server: Server,
    stop_signal: Mutex<bool>,
    stop_cv: Condvar,
}

#[derive(Default)]
struct State {
    flights: FxHashMap<u64, Flight>,
    next: u64,
    /// The entries this node holds, running or being finished (how many times: an
    /// entry reclaimed from the node itself is held twice until both end).
    held: FxHashMap<String, u32>,
    /// Entries whose finish the server refused for good: they stay pending for the node
    /// until their leases run out and are not taken back meanwhile.
    refused: FxHashSet<String>,
    /// While the node looks for entries delivered to it and not held (`take_back`): the
    /// entries released meanwhile, which it may have seen pending still.
    released: Option<Vec<String>>,
    /// The lease the last reclaim went by (the longest of the queue's live workers').
    reclaim_lease: Duration,
}

impl State {
    /// The node holds `entry` once less.
    fn release(&mut self, entry: &str) {
        if let Some(n) = self.held.get_mut(entry) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(entry);
            }
        }
        if let Some(released) = &mut self.released {
            released.push(entry.to_owned());
        }
    }
}

/// A task this node holds.
struct Flight {
    entry: String,
    fence: u64,
    envelope: Envelope,
    /// Polled by the finisher without the node's state held (taking an outcome runs
    /// the value's `Deserialize` and `Serialize`, for as long as they take: with the
    /// state held, the node's lease renewals waited for them, and its other tasks'
    /// leases ran out); stopped under it.
    run: Arc<Mutex<Box<dyn Running>>>,
    waker: Waker,
    end: End,
    /// Its run is to be stopped, and was being polled as that was decided: the
    /// finisher stops it once its poll is over (waited for under the state, a slow
    /// outcome held up the renewals again).
    stop_due: bool,
    /// Its run ended and its finish is made: the wake-ups still queued (each item of a
    /// chunk sends one) find nothing to do. (Polled again, a chunk ended again, each
    /// time a finish with a copy of its whole outcome.)
    concluded: bool,
}

impl Flight {
    /// Stops its run: at once, or, while the finisher polls it (taking its outcome,
    /// for as long as the value's `Deserialize` and `Serialize` take), once the poll is
    /// over (`stop_due`): under the node's state, a wait for the run held up every
    /// renewal.
    fn stop(&mut self) {
        match self.run.try_lock() {
            Ok(mut run) => {
                run.cancel();
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().cancel();
            }
            Err(std::sync::TryLockError::WouldBlock) => self.stop_due = true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Runs to its outcome.
    Normal,
    /// Its lease was lost: another worker has it; its run is stopped, nothing is written.
    Lost,
    /// Stopped because its client cancelled it.
    Cancelled,
    /// Stopped because the node stops: back to the queue as it was.
    HandedBack,
    /// Not run: whether it was cancelled could not be looked at. Back to the queue,
    /// counted as a delivery lost.
    Unchecked,
}

enum Event {
    /// A task's run may have finished.
    Wake(u64),
    /// Finish an entry.
    Finish(Box<Finish>),
}

/// What to do with an entry this node holds.
struct Finish {
    local: Option<u64>,
    entry: String,
    fence: u64,
    /// The task id, when the entry could be read.
    task: String,
    /// The client to wake.
    client: Option<String>,
    action: Action,
    outcome: Option<Vec<u8>>,
    retry: Option<(Vec<u8>, u64)>,
    reason: String,
}

impl Finish {
    /// About how many bytes it adds to a `FINISH` call.
    fn size(&self) -> usize {
        let outcome = self.outcome.as_ref().map_or(0, Vec::len);
        let retry = self.retry.as_ref().map_or(0, |(r, _)| r.len());
        outcome.saturating_mul(2).saturating_add(retry)
    }
}

/// The encoded outcome of a task whose result cannot be sent (`why`): it fails with
/// [`TaskError::Codec`].
fn codec_failure(why: String) -> Vec<u8> {
    Outcome::Failed(ErrorWire::Codec(why))
        .encode()
        .unwrap_or_default()
}

/// How many of the finishes at the front of `batch` go in one `FINISH` call: at most
/// [`FINISH_BATCH`], and no more than `budget` bytes unless the first alone is larger.
fn batch_len(batch: &[Finish], budget: usize) -> usize {
    let mut bytes = 0usize;
    let mut n = 0;
    for f in batch.iter().take(FINISH_BATCH) {
        bytes = bytes.saturating_add(f.size());
        if n > 0 && bytes > budget {
            break;
        }
        n += 1;
    }
    n
}

/// The node's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Takes tasks from the stream.
    Reader,
    /// Sends outcomes.
    Finisher,
    /// Renews leases, reclaims, promotes delayed tasks, and ends the node.
    Keeper,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Finisher => "finisher",
            Role::Keeper => "keeper",
        }
    }
}

/// In a build with debug assertions, `MULTIPROC_TEST_PANIC=<role>` in the environment
/// makes that thread of every node panic: the reader as it starts, the finisher at the
/// first task that ends, the keeper once the node is registered; so that tests can see
/// the node end all the same.
fn test_panic(role: Role) {
    if cfg!(debug_assertions)
        && std::env::var_os("MULTIPROC_TEST_PANIC").is_some_and(|r| r == role.name())
    {
        panic!("MULTIPROC_TEST_PANIC={}", role.name());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Outcome,
    Retry,
    Dead,
}

struct FlightWaker {
    id: u64,
    events: Sender<Event>,
}

impl Wake for FlightWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.events.send(Event::Wake(self.id));
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.events.send(Event::Wake(self.id));
    }
}

/// Creates the consumer group (at id 0: entries added before any worker existed are
/// read too) and the stream.
fn ensure_group(conn: &mut redis::Connection, keys: &Keys) -> Result<(), ClusterError> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.stream())
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .exec(conn);
    match r {
        Err(e) if !e.to_string().contains("BUSYGROUP") => Err(super::error::redis_err(&e)),
        _ => conn::epoch(conn, keys)
            .map(drop)
            .map_err(|e| super::error::redis_err(&e)),
    }
}

/// Refuses a Redis user that may not run scripts: a node takes tasks with plain
/// commands but finishes, renews and reclaims them with scripts, so it would take every
/// task and answer none.
fn scripts_allowed(conn: &mut redis::Connection) -> Result<(), ClusterError> {
    match probe_scripts(conn) {
        Ok(()) => Ok(()),
        Err(e) => Err(match super::error::redis_err(&e) {
            ClusterError::Redis(m) if e.code() == Some("NOPERM") => ClusterError::Redis(format!(
                "{m} (the Redis user may not run scripts, which a worker node needs to \
                 finish, renew and reclaim tasks)"
            )),
            other => other,
        }),
    }
}

/// Runs a script that touches no key the way the node runs its own (`EVALSHA`, then
/// `SCRIPT LOAD` where the server does not have it): refused (`NOPERM`) where the
/// user may not run scripts at all, whatever its key rules.
fn probe_scripts(conn: &mut redis::Connection) -> redis::RedisResult<()> {
    static PROBE: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new("return 1"));
    PROBE.prepare_invoke().invoke::<i64>(conn).map(drop)
}

/// Whether a refusal under the user's rules (`NOPERM`) was of scripts as such, asked
/// again by [`probe_scripts`] through `run`: a finish or a renewal names each task's
/// keys, and a refusal of one task's key is that task's, not every call's.
fn scripts_refused(
    e: &ClusterError,
    run: impl FnOnce(fn(&mut redis::Connection) -> redis::RedisResult<()>) -> Result<(), ClusterError>,
) -> bool {
    e.is_permission_refusal() && matches!(run(probe_scripts), Err(p) if p.is_permission_refusal())
}

/// How long a stopping node waits before it tries again to unregister.
const RETIRE_AGAIN: Duration = Duration::from_millis(100);

/// Runs `retire` (given how long to wait for its reply: what is left until `by`, within
/// 200 ms and the response timeout) until it answers or refuses, or until trying again
/// would pass `by`; at least once. Its answer, or the last error. (A refusal, which
/// another try would meet again, held every stop until `by`.)
fn retire_until(
    by: Instant,
    mut retire: impl FnMut(Duration) -> Result<i64, ClusterError>,
) -> Result<i64, ClusterError> {
    loop {
        let within = by
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(200), RESPONSE_TIMEOUT);
        let answer = retire(within);
        let again = answer.as_ref().is_err_and(ClusterError::is_transient)
            && Instant::now() + RETIRE_AGAIN < by;
        if !again {
            return answer;
        }
        std::thread::sleep(RETIRE_AGAIN);
    }
}

/// How long a stop waits for the keeper's connection to send `CLIENT UNBLOCK` on it:
/// longer than a call to a server that answers takes, far shorter than the reader's
/// block.
const UNBLOCK_WAIT: Duration = Duration::from_millis(100);

/// `m` locked, if it can be within `wait` (looking every millisecond).
fn lock_within<T>(m: &Mutex<T>, wait: Duration) -> Option<MutexGuard<'_, T>> {
    let until = Instant::now() + wait;
    loop {
        match m.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// A cluster error back as a Redis error (inside a connection closure).
fn to_redis(e: ClusterError) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "setup", e.to_string()))
}

/// The longest lease a worker may have (`RECLAIM` bounds the leases it reads likewise).
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The most tasks a worker may hold at once: its reads ask for that many at most (a
/// count Redis accepts), and each held task is a record in the node's memory.
const MAX_PREFETCH: usize = 1 << 20;

impl Node {
    /// How long to wait for a reply: the response timeout, or a lease if that is
    /// shorter, or less once the stop's end is near (a server that does not answer
    /// holds each call that long). A lease at most, because a call that began just
    /// before a stop (the keeper's next call, due as the server was paused) holds the
    /// stop until it ends, and the stop is to end within a grace and a lease. What a
    /// call given up on leaves is safe: a renewal or a promotion that the server ran
    /// anyway is done, and a finish sent again is refused by its fence (its outcome is
    /// not written twice). A reclaim too, at a price: the server moves its entries to
    /// this worker (counting a delivery each) as it runs it, and a reply given up on
    /// leaves them unrenewed for a lease, to be claimed again with one delivery more.
    /// It had the whole response timeout, and one sent as the server stopped answering
    /// held a stop ten seconds past its grace and lease.
    fn response(&self) -> Duration {
        self.response_within(RESPONSE_TIMEOUT.min(self.cfg.lease))
    }

    fn response_within(&self, most: Duration) -> Duration {
        match *lock(&self.stop_by) {
            Some(by) => by
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(200).min(most), most),
            None => most,
        }
    }

    /// Takes no more tasks, and wakes whoever waits for the stop.
    fn request_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        *lock(&self.stop_signal) = true;
        self.stop_cv.notify_all();
        self.room.notify_all();
    }

    /// The local pool gave up: no task can run here any more. The node stops as on
    /// shutdown (the reader sees it within its block time); what it holds fails with
    /// the same error and goes back to the queue.
    fn broke(&self, why: &str) {
        self.stop_broken(&format!("its pool broke: {why}"));
    }

    /// The node cannot go on (`why`): it stops on its own, and says why
    /// ([`WorkerHandle::broken`]).
    fn stop_broken(&self, why: &str) {
        let mut broken = lock(&self.broken);
        if broken.is_none() {
            tracing::error!(worker = %self.name, "the worker stops on its own: {why}");
            *broken = Some(why.to_string());
        }
        drop(broken);
        self.request_stop();
    }

    fn wait_stop(&self, timeout: Duration) {
        let st = lock(&self.stop_signal);
        if !*st {
            let _ = self
                .stop_cv
                .wait_timeout(st, timeout)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn unblock_reader(&self) {
        if let Some(id) = *lock(&self.reader_id) {
            // A courtesy (the reader sees the stop within its block time anyway): not
            // worth the whole response timeout of a server that does not answer, nor
            // waiting long for the keeper's call on this connection to end (one sent
            // to a paused server holds it until its reply times out).
            let within = self.response().min(Duration::from_secs(1));
            let Some(mut link) = lock_within(&self.link, UNBLOCK_WAIT) else {
                return;
            };
            let _ = link.run_within(within, |c| {
                redis::cmd("CLIENT").arg("UNBLOCK").arg(id).exec(c)
            });
        }
    }

    /// The reader: takes new entries while there is room.
    fn read(self: Arc<Self>) {
        let mut link = Link::new(self.server.clone(), self.cfg.block + BLOCK_MARGIN);
        let seen = self.read_loop(&mut link);
        // A read whose reply was lost, made again on a new connection as the stop came,
        // may have delivered entries: taken in, so that the stop hands them back (not
        // started) or lets them finish. Left, they waited a lease, to be reclaimed as
        // deliveries lost (dead-lettered unrun with `max_deliveries(1)`). Only on a
        // connection that is up: a server that went away does not hold the stop.
        let reconnected = seen != 0 && link.connects() != seen;
        if link.is_connected()
            && (reconnected || self.recheck.swap(false, Ordering::AcqRel))
            && let Err(e) = self.take_back(&mut link)
        {
            tracing::warn!(worker = %self.name, "looking for tasks delivered to this worker failed as it stopped: {e}");
        }
        self.reader_done.store(true, Ordering::Release);
        // A stopping keeper waits on `room` for the last of what the node holds.
        self.room.notify_all();
    }

    /// Reads until the stop; returns the count of connections (`Link::connects`) it
    /// last looked for entries of a lost reply on.
    fn read_loop(&self, link: &mut Link) -> u64 {
        let mut backoff = Duration::from_millis(50);
        let mut fresh = true;
        let mut seen = 0;
        while !self.stopping.load(Ordering::Acquire) {
            if fresh {
                // The broken connection's id goes first (see the client's receiver).
                *lock(&self.reader_id) = None;
                match link.run(|c| redis::cmd("CLIENT").arg("ID").query::<i64>(c)) {
                    Ok(id) => {
                        *lock(&self.reader_id) = Some(id);
                        fresh = false;
                    }
                    // Refused with the connection up (an ACL rule without `CLIENT ID`):
                    // the id only lets a stop wake this thread's read at once; without
                    // it the stop waits for the block to end. Waiting for an id that
                    // never came, the node never read a task.
                    Err(e) if link.is_connected() => {
                        tracing::warn!(
                            worker = %self.name,
                            "CLIENT ID refused ({e}): a stop waits for the current read of tasks to end"
                        );
                        *lock(&self.reader_id) = None;
                        fresh = false;
                    }
                    Err(e) => {
                        tracing::warn!(worker = %self.name, "cannot reach Redis: {e}");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            if link.connects() != seen {
                // A new connection (made inside a call): `stop` unblocks it by its id.
                // None rather than the last connection's, which may be another
                // client's by now (a `CLIENT UNBLOCK` would wake it).
                let id = link.run(|c| redis::cmd("CLIENT").arg("ID").query::<i64>(c));
                *lock(&self.reader_id) = id.ok();
                if seen != 0 {
                    // A call broke its connection and ran again on this one: a read
                    // whose reply was lost may have delivered entries.
                    self.recheck.store(true, Ordering::Release);
                }
                seen = link.connects();
            }
            if self.stopping.load(Ordering::Acquire) {
                // Seen while reconnecting: no block time more.
                break;
            }
            if self.recheck.swap(false, Ordering::AcqRel)
                && let Err(e) = self.take_back(link)
            {
                if self.stopping.load(Ordering::Acquire) {
                    break;
                }
                tracing::warn!(worker = %self.name, "looking for tasks delivered to this worker failed: {e}");
                if e.is_transient() {
                    self.recheck.store(true, Ordering::Release);
                    link.reset();
                    fresh = true;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                // Refused (the group gone with the server's data, which the read below
                // makes again): what was pending went with it, or waits for its lease.
            }
            // Entries a lost reply delivered to this node are taken back first, whatever
            // room is left: they are this node's already, and left to wait for room they
            // would lapse and be reclaimed (here or elsewhere) as deliveries lost, or
            // dead-lettered unrun with `max_deliveries(1)`. The node then holds more
            // than its prefetch for a while, as when a reclaim and a read meet.
            let room = {
                let st = lock(&self.state);
                let room = self.cfg.capacity.saturating_sub(st.flights.len());
                // While every process has a task, read when half the prefetch is free:
                // one read per several tasks, and the pool still has work queued
                // meanwhile. Holding fewer tasks than processes (a chunk counts one), at
                // once (with a prefetch under twice the processes, half of it free left
                // processes idle while tasks waited).
                let wanted = if st.flights.len() < self.cfg.processes {
                    1
                } else {
                    self.cfg.capacity.div_ceil(2)
                };
                if room < wanted {
                    let _ = self
                        .room
                        .wait_timeout(st, Duration::from_millis(200))
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                room
            };
            let reply: Result<Value, ClusterError> = link.run(|c| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.name)
                    .arg("COUNT")
                    .arg(room)
                    .arg("BLOCK")
                    .arg(millis(self.cfg.block))
                    .arg("STREAMS")
                    .arg(self.keys.stream())
                    .arg(">")
                    .query(c)
            });
            match reply {
                Ok(v) => {
                    backoff = Duration::from_millis(50);
                    for stream in conn::array(&v) {
                        let Some(entries) = conn::array(stream).get(1) else {
                            continue;
                        };
                        self.accept_all(conn::array(entries).iter().filter_map(
                            |e| match conn::array(e) {
                                [id, fields] => Some((conn::text(id)?, fields, 1)),
                                _ => None,
                            },
                        ));
                    }
                }
                Err(e) => {
                    if self.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    if e.to_string().contains("NOGROUP") {
                        // The server lost its data (restarted without persistence).
                        tracing::warn!(worker = %self.name, "the queue's group is gone: creating it again");
                        if link
                            .run(|c| ensure_group(c, &self.keys).map_err(to_redis))
                            .is_err()
                        {
                            // The server refuses (out of memory, say): not again at once.
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                        continue;
                    }
                    tracing::warn!(worker = %self.name, "reading the queue failed: {e}");
                    // The server may have delivered entries whose reply was lost.
                    self.recheck.store(true, Ordering::Release);
                    link.reset();
                    fresh = true;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        seen
    }

    /// The entries pending under this node's name, with their delivery counts, their
    /// lease clocks restarted (`OWN_PENDING`), and whether that is all of them.
    fn own_pending(&self, link: &mut Link) -> Result<(Vec<(String, u64)>, bool), ClusterError> {
        /// Entries listed per call.
        const PAGE: usize = 1000;
        let mut listed: Vec<(String, u64)> = Vec::new();
        // A bound on the calls, not on what is pending: past it, the rest waits
        // for the next look, or its lease.
        for _ in 0..100 {
            let from = match listed.last() {
                Some((id, _)) => format!("({id}"),
                None => "-".to_owned(),
            };
            let page = PAGE.to_string();
            let reply: Value = link.run(|c| {
                conn::invoke(
                    c,
                    &scripts::OWN_PENDING,
                    &[self.keys.stream()],
                    &[
                        GROUP.as_bytes(),
                        self.name.as_bytes(),
                        from.as_bytes(),
                        page.as_bytes(),
                    ],
                )
            })?;
            let before = listed.len();
            for p in conn::array(&reply) {
                if let [id, deliveries] = conn::array(p)
                    && let Some(id) = conn::text(id)
                {
                    let deliveries = conn::int(deliveries).unwrap_or(1).max(1) as u64;
                    listed.push((id, deliveries));
                }
            }
            if listed.len() - before < PAGE {
                return Ok((listed, true));
            }
        }
        Ok((listed, false))
    }

    /// Takes back the entries pending for this node that it does not hold: delivered to
    /// it by a read (or a reclaim) whose reply was lost. Left, they waited a lease, to be
    /// reclaimed with that delivery counted as lost (with `max_deliveries(1)`,
    /// dead-lettered without having run).
    fn take_back(&self, link: &mut Link) -> Result<(), ClusterError> {
        let _claims = lock(&self.claims);
        lock(&self.state).released = Some(Vec::new());
        let paged = self.own_pending(link);
        let lost: Vec<(String, u64)> = {
            let mut st = lock(&self.state);
            let released: FxHashSet<String> =
                st.released.take().unwrap_or_default().into_iter().collect();
            let (listed, complete) = paged?;
            if complete {
                let pending: FxHashSet<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
                st.refused.retain(|id| pending.contains(id.as_str()));
            }
            listed
                .into_iter()
                .filter(|(id, _)| {
                    !st.held.contains_key(id) && !st.refused.contains(id) && !released.contains(id)
                })
                .collect()
        };
        if lost.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &lost {
            pipe.cmd("XRANGE").arg(self.keys.stream()).arg(id).arg(id);
        }
        let ranges: Vec<Value> = link.run(|c| pipe.query(&mut conn::Piped(c)))?;
        self.accept_all(lost.into_iter().zip(&ranges).filter_map(
            |((id, deliveries), range)| {
                // An entry deleted meanwhile (a cancel) has nothing to run.
                let [_, fields] = conn::array(range).first().map(conn::array)? else {
                    return None;
                };
                tracing::info!(worker = %self.name, entry = %id, deliveries, "took back a task delivered to this worker whose reply was lost");
                Some((id, fields, deliveries))
            },
        ));
        Ok(())
    }

    /// Takes the entries this node now holds (read, or reclaimed, each with its `fence`
    /// of deliveries): starts their tasks, or dead-letters what cannot run. The cancel
    /// flags of those that must be looked for are read in one round trip: one each,
    /// on the keeper's connection, held up the lease renewals behind them (a reclaim of
    /// a thousand tasks at a millisecond each is longer than a short lease).
    fn accept_all<'v>(&self, entries: impl IntoIterator<Item = (String, &'v Value, u64)>) {
        let ready: Vec<Ready> = entries
            .into_iter()
            .filter_map(|(entry, fields, fence)| self.admit(entry, fields, fence))
            .collect();
        let looked: Vec<&str> = ready
            .iter()
            .filter(|r| r.look)
            .map(|r| r.envelope.task.as_str())
            .collect();
        let mut flags = match self.flagged(&looked) {
            Ok(flags) => flags.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => looked.iter().map(|_| Err(e.to_string())).collect(),
        }
        .into_iter();
        for r in ready {
            // A flag missing from the reply is one not known: not run unchecked.
            let flag = r
                .look
                .then(|| flags.next().unwrap_or_else(|| Err("no reply".into())));
            self.start(r, flag);
        }
    }

    /// An entry this node now holds, with `fence` deliveries: its task, ready to start
    /// (whether its cancel flag is to be looked for first); `None` if it was
    /// dead-lettered instead.
    fn admit(&self, entry: String, fields: &Value, fence: u64) -> Option<Ready> {
        {
            let mut st = lock(&self.state);
            *st.held.entry(entry.clone()).or_insert(0) += 1;
            st.refused.remove(&entry);
        }
        let fields = conn::fields(fields);
        let Some((_, message)) = fields
            .iter()
            .find(|(k, _)| *k == envelope::FIELD.as_bytes())
        else {
            self.dead_letter(
                entry,
                fence,
                None,
                "a foreign entry (no task message in it)".into(),
            );
            return None;
        };
        let envelope = match Envelope::decode(message, self.cfg.max_message) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(worker = %self.name, %entry, "dead-lettered an unreadable entry: {e}");
                // The message is in memory already, over this worker's cap or not (from
                // a client with a larger one), and of this layout version or another:
                // its addressee tells whom to answer with why it does not run, rather
                // than leave its client waiting.
                let to = Addressee::read(message).ok().map(|(to, _)| to);
                self.dead_letter(entry, fence, to, format!("an unreadable task message: {e}"));
                return None;
            }
        };
        let lost_before = u64::from(envelope.lost) + fence.saturating_sub(1);
        if lost_before >= u64::from(self.cfg.max_deliveries) {
            let why = format!(
                "{lost_before} deliveries were lost, its worker lost or its process dead (the cap is {})",
                self.cfg.max_deliveries
            );
            self.dead_letter(entry, fence, Some(envelope.addressee()), why);
            return None;
        }
        let Some((schema, runner)) = self.registry.get(&envelope.name) else {
            // A queue's workers register the same tasks: one that has no such task
            // speaks for all of them (and a task new to some of them, in a rolling
            // upgrade, is dead-lettered where it lands on an old one; it can be
            // requeued once they are all upgraded).
            let why = format!(
                "worker {:?} of this queue runs no task named {:?} (a queue's workers are to register the same tasks)",
                self.name, envelope.name
            );
            tracing::warn!(worker = %self.name, task = %envelope.task, "{why}");
            self.dead_letter(entry, fence, Some(envelope.addressee()), why);
            return None;
        };
        if *schema != envelope.schema {
            let why = format!(
                "task {:?} was submitted with other argument or result types than the worker's (schema {:016x}, the worker's {:016x}): client and worker were built from different code",
                envelope.name, envelope.schema, schema
            );
            tracing::warn!(worker = %self.name, task = %envelope.task, "{why}");
            self.dead_letter(entry, fence, Some(envelope.addressee()), why);
            return None;
        }
        // A client that cancels a task that waited in the delayed set (a countdown, a
        // retry, a task handed back) or was redelivered no longer knows its entry and
        // can only flag it: looked for before it runs. So can a client that joined an
        // idempotent task another submitted (it never knew the entry): every idempotent
        // task is looked for.
        let promoted = fields
            .iter()
            .any(|(k, _)| *k == envelope::PROMOTED.as_bytes());
        let idempotent = envelope.task.starts_with("k:");
        let look = promoted || idempotent || envelope.attempt > 0 || lost_before > 0;
        Some(Ready {
            entry,
            fence,
            envelope,
            runner: Arc::clone(runner),
            look,
        })
    }

    /// Starts a task [`admit`](Self::admit) made ready, unless `flag` (its cancel flag,
    /// if it was looked for) says a client cancelled it. A server that could not say
    /// (its reply lost, a connection cut) says nothing either way: the task goes back to
    /// the queue, to be looked for again, rather than run when it may have been
    /// cancelled.
    fn start(&self, ready: Ready, flag: Option<Result<bool, String>>) {
        let Ready {
            entry,
            fence,
            envelope,
            runner,
            ..
        } = ready;
        let end = match flag {
            None | Some(Ok(false)) => None,
            Some(Ok(true)) => Some(End::Cancelled),
            Some(Err(e)) => {
                tracing::warn!(worker = %self.name, task = %envelope.task, "could not look for a cancel: the task goes back, counted as a delivery lost: {e}");
                Some(End::Unchecked)
            }
        };
        if let Some(end) = end {
            let done = Done::Failed(TaskError::Cancelled);
            let fin = self.conclude(&entry, fence, &envelope, done, end, None);
            self.send_finish(fin);
            return;
        }
        // The argument's `Deserialize` runs here, in the node: a panic there fails the
        // task, not the thread that reads (or reclaims) tasks, which ended the node, the
        // task then taking down the next node that took it.
        let started = match lock(&self.pool).as_ref() {
            Some(pool) => crate::bootstrap::catching(|| {
                runner(
                    pool,
                    &envelope.args,
                    envelope.chunk,
                    envelope.timeout_ms.map(Duration::from_millis),
                )
            })
            .unwrap_or_else(|caught| {
                Err(TaskError::Codec(CodecError::new(format!(
                    "decoding the task's argument panicked: {caught}"
                ))))
            }),
            None => Err(TaskError::PoolClosed),
        };
        match started {
            Ok(run) => {
                let mut st = lock(&self.state);
                let id = st.next;
                st.next += 1;
                let waker = Waker::from(Arc::new(FlightWaker {
                    id,
                    events: self.events.clone(),
                }));
                st.flights.insert(
                    id,
                    Flight {
                        entry,
                        fence,
                        envelope,
                        run: Arc::new(Mutex::new(run)),
                        waker,
                        end: End::Normal,
                        stop_due: false,
                        concluded: false,
                    },
                );
                drop(st);
                let _ = self.events.send(Event::Wake(id));
            }
            Err(e) => {
                let fin =
                    self.conclude(&entry, fence, &envelope, Done::Failed(e), End::Normal, None);
                self.send_finish(fin);
            }
        }
    }

    /// Whether a client asked to cancel each of `tasks`, in one round trip.
    fn flagged(&self, tasks: &[&str]) -> Result<Vec<bool>, ClusterError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for task in tasks {
            pipe.cmd("EXISTS").arg(self.keys.cancel(task));
        }
        self.run_keeper(|c| pipe.query::<Vec<bool>>(&mut conn::Piped(c)))
    }

    fn send_finish(&self, fin: Finish) {
        let count = if fin.local.is_some() {
            &self.finishing
        } else {
            &self.unsent
        };
        count.fetch_add(1, Ordering::AcqRel);
        if self.events.send(Event::Finish(Box::new(fin))).is_err() {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// `batch` was sent (or will never be): its entries are no longer held.
    fn sent(&self, batch: &[Finish]) {
        let mut st = lock(&self.state);
        let (mut unsent, mut finishing) = (0, 0);
        for f in batch {
            st.release(&f.entry);
            match f.local {
                Some(local) => {
                    st.flights.remove(&local);
                    finishing += 1;
                }
                None => unsent += 1,
            }
        }
        drop(st);
        self.unsent.fetch_sub(unsent, Ordering::AcqRel);
        self.finishing.fetch_sub(finishing, Ordering::AcqRel);
        self.room.notify_all();
    }

    /// Moves an entry to the dead letters; a task whose addressee is known (`to`) is
    /// answered with `why`.
    fn dead_letter(&self, entry: String, fence: u64, to: Option<Addressee>, why: String) {
        let outcome = Outcome::Failed(ErrorWire::DeadLettered(why.clone()))
            .encode()
            .ok();
        let (task, client, outcome) = match to {
            Some(to) => (to.task, to.reply, outcome),
            None => (String::new(), None, None),
        };
        self.send_finish(Finish {
            local: None,
            entry,
            fence,
            task,
            client,
            action: Action::Dead,
            outcome,
            retry: None,
            reason: why,
        });
    }

    /// What to do with a task whose run ended.
    fn conclude(
        &self,
        entry: &str,
        fence: u64,
        env: &Envelope,
        done: Done,
        end: End,
        local: Option<u64>,
    ) -> Finish {
        let policy = env
            .retry
            .map(|r| r.to_policy())
            .unwrap_or_else(RetryPolicy::never);
        // The count comes from the wire: one at the end of its range stays there rather
        // than overflow (a panic of the finisher where overflow is checked).
        let attempts = env.attempt.saturating_add(1);
        // Deliveries lost before this one: the envelope's (of the entries before it)
        // and this entry's own earlier ones (each reclaim of it counted one). A
        // retry or a hand-back is a new entry, so it carries them in its envelope.
        let lost = env
            .lost
            .saturating_add(u32::try_from(fence.saturating_sub(1)).unwrap_or(u32::MAX));
        let mut fin = Finish {
            local,
            entry: entry.to_string(),
            fence,
            task: env.task.clone(),
            client: env.reply.clone(),
            action: Action::Outcome,
            outcome: None,
            retry: None,
            reason: String::new(),
        };
        // The task again, as a new entry: `attempt` runs counted, `lost` deliveries lost.
        let retry_with =
            |fin: &mut Finish, attempt: u32, lost: u32, delay: Duration| match (Envelope {
                attempt,
                lost,
                ..env.clone()
            })
            .encode()
            {
                Ok(bytes) => {
                    fin.action = Action::Retry;
                    // A delay of `Duration::MAX` (never) waits a century: Redis refuses an
                    // expiry past the range of its clock.
                    fin.retry = Some((bytes, millis(delay.min(deadline::FOREVER))));
                }
                Err(e) => {
                    fin.outcome = Outcome::Failed(ErrorWire::Codec(e.message().into()))
                        .encode()
                        .ok();
                }
            };
        // A delivery lost (its process dead, its worker lost, its cancel flag not
        // looked at): again, after a while, until too many were.
        let delivery_lost = |fin: &mut Finish, last: &dyn fmt::Display| {
            let lost = lost.saturating_add(1);
            if lost >= self.cfg.max_deliveries {
                let why = format!(
                    "{lost} deliveries were lost, its process dead or its worker lost (the cap is {}); last: {last}",
                    self.cfg.max_deliveries
                );
                tracing::warn!(worker = %self.name, task = %env.task, "dead-lettered: {why}");
                fin.action = Action::Dead;
                fin.outcome = Outcome::Failed(ErrorWire::DeadLettered(why.clone()))
                    .encode()
                    .ok();
                fin.reason = why;
                return;
            }
            let delay = if env.retry.is_some() {
                policy.delay(lost)
            } else {
                Duration::from_millis(100) * lost
            };
            retry_with(fin, env.attempt, lost, delay);
        };
        if end == End::HandedBack && matches!(done, Done::Failed(TaskError::Cancelled)) {
            retry_with(&mut fin, env.attempt, lost, Duration::ZERO);
            return fin;
        }
        if end == End::Unchecked {
            delivery_lost(
                &mut fin,
                &"its worker could not look for a cancel of it (no answer from the server)",
            );
            return fin;
        }
        let value = match done {
            Done::Value(v) => Outcome::Value(v),
            Done::Err(failed) => {
                let e = failed.clone().into_error();
                if policy.should_retry(attempts, &e) {
                    retry_with(&mut fin, attempts, lost, policy.delay(attempts));
                    return fin;
                }
                Outcome::Failed(failed)
            }
            Done::Failed(e) => {
                match e {
                    TaskError::PoolClosed | TaskError::PoolBroken(_) => {
                        if let TaskError::PoolBroken(why) = &e {
                            self.broke(why);
                        }
                        // Not the task's doing: back to the queue for another node.
                        retry_with(&mut fin, env.attempt, lost, Duration::ZERO);
                        return fin;
                    }
                    TaskError::Cancelled if end == End::Cancelled => {
                        Outcome::Failed(ErrorWire::Cancelled)
                    }
                    TaskError::WorkerDied(_) => {
                        delivery_lost(&mut fin, &e);
                        return fin;
                    }
                    e if policy.should_retry(attempts, &e) => {
                        retry_with(&mut fin, attempts, lost, policy.delay(attempts));
                        return fin;
                    }
                    e => Outcome::Failed(ErrorWire::from_error(&e)),
                }
            }
        };
        let encoded = value
            .encode()
            .unwrap_or_else(|e| codec_failure(e.message().into()));
        // Over the cap, an outcome would make its finish (and the others sent with it)
        // too large for Redis to take, again at every try (what the server itself
        // takes is checked as the finish is sent: see `flush`).
        fin.outcome = Some(if encoded.len() > self.cfg.max_message {
            codec_failure(format!(
                "its outcome encodes to {} bytes; the worker's cap is {} (WorkerBuilder::max_message)",
                encoded.len(),
                self.cfg.max_message
            ))
        } else {
            encoded
        });
        fin
    }

    /// The finisher: polls woken runs, finishes entries in batches.
    fn finish_loop(self: Arc<Self>, rx: &Receiver<Event>) {
        let mut link = Link::new(self.server.clone(), RESPONSE_TIMEOUT);
        let mut batch: Vec<Finish> = Vec::new();
        loop {
            let first = match rx.recv_timeout(TICK) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            for ev in first
                .into_iter()
                .chain(rx.try_iter().take(4 * FINISH_BATCH))
            {
                match ev {
                    Event::Finish(f) => batch.push(*f),
                    Event::Wake(id) => {
                        if let Some(f) = self.poll(id) {
                            test_panic(Role::Finisher);
                            if f.local.is_some() {
                                self.finishing.fetch_add(1, Ordering::AcqRel);
                            }
                            batch.push(f);
                        }
                    }
                }
            }
            while !batch.is_empty() {
                let budget = FINISH_BYTES.min(self.server_call.load(Ordering::Relaxed));
                let n = batch_len(&batch, budget);
                let chunk: Vec<Finish> = batch.drain(..n).collect();
                if let Err(chunk) = self.flush(&mut link, chunk) {
                    // Redis is unreachable: keep them, and try again shortly (their
                    // leases are renewed meanwhile, or reclaimed by others).
                    batch.splice(0..0, chunk);
                    std::thread::sleep(Duration::from_millis(200));
                    if self.quit.load(Ordering::Acquire) {
                        return;
                    }
                    break;
                }
            }
            if self.quit.load(Ordering::Acquire) && batch.is_empty() {
                return;
            }
        }
    }

    /// Polls the run of flight `id`; what to finish if it ended.
    fn poll(&self, id: u64) -> Option<Finish> {
        let (run, waker) = {
            let st = lock(&self.state);
            let flight = st.flights.get(&id).filter(|f| !f.concluded)?;
            (Arc::clone(&flight.run), flight.waker.clone())
        };
        let mut cx = Context::from_waker(&waker);
        // The value's `Deserialize` and `Serialize` (and a fallible task's error's
        // `Display`) run here, in the node, without its state held (only this thread
        // polls, so the flight is not concluded meanwhile, nor removed): a panic there
        // fails the task, not the thread (and the node).
        let polled = crate::bootstrap::catching(|| lock(&run).poll(&mut cx));
        let done = match polled {
            Ok(Poll::Pending) => {
                let mut st = lock(&self.state);
                if let Some(flight) = st.flights.get_mut(&id)
                    && std::mem::take(&mut flight.stop_due)
                {
                    flight.stop();
                }
                return None;
            }
            Ok(Poll::Ready(done)) => done,
            Err(caught) => Done::Failed(TaskError::Codec(CodecError::new(format!(
                "encoding the task's value panicked: {caught}"
            )))),
        };
        let mut st = lock(&self.state);
        let flight = st.flights.get_mut(&id)?;
        flight.concluded = true;
        if flight.end == End::Lost {
            if let Some(flight) = st.flights.remove(&id) {
                st.release(&flight.entry);
            }
            drop(st);
            self.room.notify_all();
            return None;
        }
        let (entry, fence, env, end) = (
            flight.entry.clone(),
            flight.fence,
            flight.envelope.clone(),
            flight.end,
        );
        drop(st);
        Some(self.conclude(&entry, fence, &env, done, end, Some(id)))
    }

    /// Runs one `FINISH` call; gives the batch back if Redis cannot be reached.
    fn flush(&self, link: &mut Link, mut batch: Vec<Finish>) -> Result<(), Vec<Finish>> {
        // An outcome over what the server takes now fails its task in its place: sent,
        // it would close the connection at every try, those sent with it held too.
        // Checked at every try: a finish kept while the server could not be reached
        // meets the limits read since.
        let server_cap = self.server_cap.load(Ordering::Relaxed);
        for f in &mut batch {
            let len = f.outcome.as_ref().map_or(0, Vec::len);
            if f.action == Action::Outcome && len > server_cap {
                f.outcome = Some(codec_failure(format!(
                    "its outcome encodes to {len} bytes; the server takes at most \
                     {server_cap} (its proto-max-bulk-len and client-query-buffer-limit)"
                )));
            }
        }
        let k = &self.keys;
        let mut keys = vec![k.stream(), k.delayed(), k.dead()];
        let ttl = self.cfg.result_ttl.to_string();
        let cap = self.cfg.dead_letter_cap.to_string();
        let prefix = k.reply_prefix();
        // What a task whose client cancelled it ends with, however its run ended.
        let cancelled = Outcome::Failed(ErrorWire::Cancelled)
            .encode()
            .unwrap_or_default();
        let none = k.none();
        let mut args: Vec<Vec<u8>> = vec![
            GROUP.into(),
            self.name.clone().into_bytes(),
            ttl.into_bytes(),
            cap.into_bytes(),
            prefix.into_bytes(),
            cancelled.clone(),
            none.clone().into_bytes(),
        ];
        for f in &batch {
            keys.push(k.result(&f.task));
            keys.push(
                f.client
                    .as_deref()
                    .map_or_else(|| none.clone(), |c| k.reply(c)),
            );
            keys.push(k.waiters(&f.task));
            keys.push(k.cancel(&f.task));
            keys.push(
                f.task
                    .strip_prefix("k:")
                    .map_or_else(|| none.clone(), |key| k.idempotency(key)),
            );
            keys.push(k.retry(&f.task));
            let reply_with = |outcome: &[u8]| match &f.client {
                Some(_) => Reply {
                    task: f.task.clone(),
                    outcome: outcome.to_vec(),
                }
                .encode()
                .unwrap_or_default(),
                None => Vec::new(),
            };
            let reply = f.outcome.as_deref().map(reply_with).unwrap_or_default();
            let (retry, delay) = f.retry.clone().unwrap_or_default();
            args.push(f.entry.clone().into_bytes());
            args.push(f.fence.to_string().into_bytes());
            args.push(
                match f.action {
                    Action::Outcome => "a",
                    Action::Retry => "r",
                    Action::Dead => "d",
                }
                .into(),
            );
            args.push(f.outcome.clone().unwrap_or_default());
            args.push(reply);
            args.push(retry);
            args.push(delay.to_string().into_bytes());
            args.push(f.reason.clone().into_bytes());
            args.push(reply_with(&cancelled));
        }
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let r: Result<Vec<i64>, ClusterError> = link.run_within(self.response(), |c| {
            conn::invoke(c, &scripts::FINISH, &keys, &refs)
        });
        match r {
            Ok(statuses) => {
                for (f, status) in batch.iter().zip(statuses) {
                    if status == 0 {
                        tracing::debug!(worker = %self.name, entry = %f.entry, "lease lost before the finish; left to its new owner");
                    }
                }
                self.sent(&batch);
                Ok(())
            }
            // Redis is down, restarting or loading its data: the outcomes are kept and
            // sent again (an entry reclaimed meanwhile is left to its new owner).
            Err(e) if e.is_transient() => {
                tracing::warn!(worker = %self.name, "cannot finish tasks now: {e}");
                Err(batch)
            }
            // Not a connection problem, and maybe one item's (a key of another type where
            // it writes): each is finished on its own, so that one does not hold back
            // the rest. Items the failed call finished already are no longer owned, and
            // are left alone.
            // The user may not run scripts any more (its rules changed): every finish
            // would be refused, and the node would go on taking tasks it cannot answer.
            // It stops; what it took runs elsewhere once the leases lapse.
            Err(e) if scripts_refused(&e, |probe| link.run(probe)) => {
                self.leave_refused(&batch, &e);
                self.stop_broken(&format!("the Redis user may no longer finish tasks: {e}"));
                Ok(())
            }
            Err(e) if batch.len() > 1 => {
                let n = batch.len();
                tracing::warn!(worker = %self.name, "finishing {n} tasks together failed, now one at a time: {e}");
                let mut kept = Vec::new();
                for f in batch {
                    if !kept.is_empty() {
                        // The server became unreachable: the rest waits for it too.
                        kept.push(f);
                    } else if let Err(back) = self.flush(link, vec![f]) {
                        kept.extend(back);
                    }
                }
                if kept.is_empty() { Ok(()) } else { Err(kept) }
            }
            Err(e) => {
                // The entry stays pending and is reclaimed when its lease runs out (at
                // least once still holds).
                self.leave_refused(&batch, &e);
                Ok(())
            }
        }
    }

    /// Leaves the finishes the server refused for good: their entries stay pending and
    /// are reclaimed when their leases run out (at least once still holds).
    fn leave_refused(&self, batch: &[Finish], e: &ClusterError) {
        let entries: Vec<&str> = batch.iter().map(|f| f.entry.as_str()).collect();
        tracing::error!(worker = %self.name, ?entries, "finishing a task failed: {e}");
        lock(&self.state)
            .refused
            .extend(batch.iter().map(|f| f.entry.clone()));
        self.sent(batch);
    }

    /// Reads the server's [`Limits`] again: a short wait, and the last ones kept if the
    /// server does not answer in time (a call waiting on it would hold the keeper);
    /// Redis's defaults, for good, if it refuses to say.
    fn read_server_limits(&self) {
        if self.config_refused.load(Ordering::Relaxed) {
            return;
        }
        let within = self.response().min(Duration::from_millis(200));
        let Some(mut link) = lock_within(&self.link, UNBLOCK_WAIT) else {
            return;
        };
        let limits = match link.run_within(within, conn::server_limits) {
            Ok(Some(limits)) => limits,
            Ok(None) => {
                self.config_refused.store(true, Ordering::Relaxed);
                Limits::DEFAULT
            }
            Err(_) => return,
        };
        self.server_cap.store(limits.outcome, Ordering::Relaxed);
        self.server_call.store(limits.call, Ordering::Relaxed);
    }

    /// The keeper: leases, heartbeat, delays, reclaims; then the drain.
    fn keep(self: Arc<Self>) {
        let period = self.cfg.lease / 3;
        // A failed renewal is tried again this soon.
        let retry = Duration::from_millis(500).min(period);
        let mut next_renew = Instant::now();
        let mut next_reclaim = Instant::now();
        let mut next_retire = Instant::now() + self.cfg.lease;
        // When a full node next runs `RECLAIM` only to note the queue's longest lease.
        let mut next_note = Instant::now();
        let mut stop_at: Option<Instant> = None;
        // The last renewal went through. After one that did not (the server paused or
        // gone, or out of memory, refusing it while it still serves `XCLAIM`), a reclaim
        // before the next renewal would take this node's running tasks back from itself
        // once they had been a lease without one, run them twice, and spend their
        // deliveries: it waits for a renewal, unless the node holds nothing (and had a
        // renewal within two periods, see `renewed_at`).
        let mut renewed_last = true;
        // Until when reclaims wait once a renewal goes through after two renewal periods
        // without one (renewals that failed, or a keeper that waited in another call
        // to the server all along): other nodes' leases may have lapsed by the
        // server's clock meanwhile (it was paused, gone, or refusing writes), and a
        // node that reclaimed at once took the running tasks of nodes whose renewals
        // were still to be retried, killed there and run again (dead-lettered, with one
        // delivery allowed). A lease from the renewal's return (at least a retry's
        // interval and a response's time) lets every live node renew first, its keeper
        // slow on a loaded machine included (a retry and a response were not always
        // enough there). Not after a shorter
        // stretch: a lease lapses only after three periods, and renewals that fail now
        // and then must not hold reclaims (of dead nodes' tasks) off for good.
        let mut reclaims_wait_until = None::<Instant>;
        let mut renewed_at = Instant::now();
        let mut all_ran = None::<Instant>;
        loop {
            let now = Instant::now();
            // Whether the server answered this round's calls: a reclaim, which waits
            // the whole response timeout for its reply, is not started at a server
            // that just failed to answer one (paused, or gone), so that a stop begun
            // meanwhile is not held that long.
            let mut answering = true;
            if now >= next_renew {
                let renewed = self.renew();
                answering = !matches!(&renewed, Err(e) if e.is_unanswered());
                if renewed.is_ok() {
                    let back = Instant::now();
                    if back.duration_since(renewed_at) >= period * 2 {
                        reclaims_wait_until =
                            Some(back + self.cfg.lease.max(retry + self.response()));
                    }
                    renewed_at = back;
                }
                if let Err(e) = &renewed
                    && renewed_last
                {
                    // Once per run of failures: they are retried every `retry`.
                    tracing::warn!(worker = %self.name, "lease renewal failed (retried until it goes through): {e}");
                }
                // Refused by the user's rules, it would never go through: the node's
                // leases would lapse under its running tasks.
                if let Err(e) = &renewed
                    && scripts_refused(e, |probe| self.run_keeper(probe))
                {
                    self.stop_broken(&format!("the Redis user may no longer renew leases: {e}"));
                }
                renewed_last = renewed.is_ok();
                if renewed.is_ok() {
                    test_panic(Role::Keeper);
                    if !self.stopping.load(Ordering::Acquire) {
                        self.read_server_limits();
                    }
                    next_renew = now + period;
                } else {
                    next_renew = now + retry;
                }
            }
            if !self.stopping.load(Ordering::Acquire) && answering {
                answering = !matches!(self.promote(), Err(e) if e.is_unanswered());
            }
            if !self.stopping.load(Ordering::Acquire) {
                // A node that holds nothing reclaims without a renewal of its own,
                // unless it has had none for two periods: it then waits for one, and
                // then for `reclaims_wait_until` (without this, another keeper call
                // answered first as the server came back let it reclaim before any
                // node renewed).
                let idle_may = || {
                    now.duration_since(renewed_at) < period * 2
                        && lock(&self.state).flights.is_empty()
                };
                if now >= next_reclaim
                    && answering
                    && (renewed_last || idle_may())
                    && reclaims_wait_until.is_none_or(|until| now >= until)
                {
                    let note = now >= next_note;
                    if self.reclaim(note).is_ok() && note {
                        next_note = now + self.cfg.lease;
                    }
                    next_reclaim = now + period;
                }
                if now >= next_retire {
                    let _ = self.retire_dead();
                    next_retire = now + self.cfg.lease;
                }
            } else {
                let since = *stop_at.get_or_insert_with(|| {
                    // A grace of `Duration::MAX` (never kill running tasks) ends a
                    // century on: `Instant + Duration::MAX` would panic this thread.
                    *lock(&self.stop_by) = Some(deadline::later_than(
                        now,
                        self.cfg.grace.saturating_add(self.cfg.lease),
                    ));
                    now
                });
                // The reader's end first: what it left unsent before it ended is
                // counted by then.
                let reader_done = self.reader_done.load(Ordering::Acquire);
                let flights = lock(&self.state).flights.len();
                let held = flights + self.unsent.load(Ordering::Acquire);
                // Since when nothing it holds still runs: all of it waits for the server.
                if flights > self.finishing.load(Ordering::Acquire) {
                    all_ran = None;
                } else {
                    all_ran.get_or_insert(now);
                }
                // Without its finisher, what the node holds never leaves: its leases
                // lapse, and other workers run those tasks again.
                if reader_done && (held == 0 || self.finisher_gone.load(Ordering::Acquire)) {
                    break;
                }
                let stopping_for = now.duration_since(since);
                if stopping_for >= self.cfg.grace {
                    self.hand_back();
                } else {
                    // At each turn: the reader may take in what it had read as the stop
                    // came.
                    self.hand_back_unstarted();
                }
                // What is still held then cannot reach the server (it is down): its
                // leases lapse and other workers run those tasks again. So too a lease
                // after every run it held ended (a grace of `Duration::MAX` waits for
                // the runs, not for a server that may never come back), once the reader
                // has ended or has had the time to: it may yet take in what a read
                // whose reply was lost delivered as the stop came (ended before it, the
                // node had no pool left to hand those tasks back with).
                let reader_had_time = reader_done
                    || stopping_for >= self.cfg.block + BLOCK_MARGIN + self.response() * 2;
                if stopping_for >= self.cfg.grace.saturating_add(self.cfg.lease)
                    || (all_ran.is_some_and(|at| now.duration_since(at) >= self.cfg.lease)
                        && reader_had_time)
                {
                    tracing::warn!(worker = %self.name, held, "stopping without sending the outcomes of tasks it held: the server cannot be reached");
                    // The stop's end is now: the calls still to come (unregistering)
                    // do not wait out a century for a grace of `Duration::MAX`.
                    *lock(&self.stop_by) = Some(now);
                    break;
                }
            }
            if self.stopping.load(Ordering::Acquire) {
                // Until a task leaves or the reader ends (`wait_stop` returns at once
                // once the stop is signalled).
                let st = lock(&self.state);
                let _ = self
                    .room
                    .wait_timeout(st, TICK)
                    .unwrap_or_else(PoisonError::into_inner);
            } else {
                self.wait_stop(TICK);
            }
        }
        self.end();
    }

    /// The node's last steps, once nothing is held (or a stop gave up on it): the
    /// finisher ends, the node leaves the queue's workers, the pool goes.
    fn end(&self) {
        self.quit.store(true, Ordering::Release);
        // Wake the finisher so it ends.
        let _ = self.events.send(Event::Wake(u64::MAX));
        self.unregister();
        // The pool goes after the finisher has written the last outcomes.
        lock(&self.pool).take();
        tracing::info!(worker = %self.name, "cluster worker stopped");
    }

    /// Runs `body`, the loop of the node's thread `role`. A panic there (a bug) stops
    /// the node ([`WorkerHandle::broken`] says why), and does the part of the stop that
    /// thread would have done: without its keeper or reader, a node would never end,
    /// and its handle's drop would wait for it for ever.
    fn guarded(&self, role: Role, body: impl FnOnce()) {
        let run = || {
            if role == Role::Reader {
                test_panic(role);
            }
            body();
        };
        let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) else {
            return;
        };
        let why = crate::bootstrap::payload_message(payload.as_ref());
        crate::bootstrap::drop_payload(payload);
        self.stop_broken(&format!("its {} thread panicked: {why}", role.name()));
        match role {
            Role::Reader => {
                self.reader_done.store(true, Ordering::Release);
                self.room.notify_all();
            }
            // Outcomes it had not sent are lost: their leases lapse and other workers
            // run those tasks again. The keeper ends the node once the reader has.
            Role::Finisher => {
                self.finisher_gone.store(true, Ordering::Release);
                self.room.notify_all();
            }
            Role::Keeper => {
                // The reader's end first (it sees the stop within its block time), so
                // that nothing is taken after the pool has gone. Running tasks end with
                // the pool; no lease is renewed, and other workers run them again once
                // theirs lapse.
                self.unblock_reader();
                let until = Instant::now() + self.cfg.block + RESPONSE_TIMEOUT;
                let mut st = lock(&self.state);
                while !self.reader_done.load(Ordering::Acquire) && Instant::now() < until {
                    st = self
                        .room
                        .wait_timeout(st, TICK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                drop(st);
                self.end();
            }
        }
    }

    /// Removes the node from the queue's workers. Tried again while it fails (no reply
    /// in time, no connection, a server that cannot serve for now) for a response
    /// timeout at most and until the stop's end
    /// (the last try waits 200 ms at least), and once at least: a node left registered
    /// stays listed until another node finds its heartbeat gone, and there may be none.
    fn unregister(&self) {
        let by = lock(&self.stop_by)
            .unwrap_or_else(Instant::now)
            .min(Instant::now() + RESPONSE_TIMEOUT);
        let mut retire = |c: &mut redis::Connection| {
            conn::invoke::<i64>(
                c,
                &scripts::RETIRE,
                &[
                    self.keys.stream(),
                    self.keys.workers(),
                    self.keys.worker(&self.name),
                ],
                &[GROUP.as_bytes(), self.name.as_bytes(), b"0"],
            )
        };
        let tried = retire_until(by, |within| {
            lock(&self.link).run_within(within, &mut retire)
        });
        match tried {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(worker = %self.name, "not unregistered: it still holds entries, which other workers reclaim")
            }
            Err(e) => tracing::warn!(worker = %self.name, "could not unregister: {e}"),
        }
    }

    fn run_keeper<T>(
        &self,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        lock(&self.link).run_within(self.response(), f)
    }

    /// Renews every lease (and the heartbeat) in one call per 500 tasks.
    fn renew(&self) -> Result<(), ClusterError> {
        let held: Vec<(u64, String, u64, String)> = lock(&self.state)
            .flights
            .iter()
            .filter(|(_, f)| f.end != End::Lost)
            .map(|(id, f)| (*id, f.entry.clone(), f.fence, f.envelope.task.clone()))
            .collect();
        let info_ttl = (millis(self.cfg.lease * 3) / 1000).max(1).to_string();
        let mut chunks: Vec<&[(u64, String, u64, String)]> = held.chunks(500).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let mut keys = vec![
                self.keys.stream(),
                self.keys.workers(),
                self.keys.worker(&self.name),
                self.keys.renewals(),
            ];
            keys.extend(chunk.iter().map(|(_, _, _, t)| self.keys.cancel(t)));
            let mut args: Vec<Vec<u8>> = vec![
                GROUP.into(),
                self.name.clone().into_bytes(),
                self.cfg.info.clone().into_bytes(),
                info_ttl.clone().into_bytes(),
                millis(self.cfg.lease).to_string().into_bytes(),
            ];
            for (_, entry, fence, _) in chunk {
                args.push(entry.clone().into_bytes());
                args.push(fence.to_string().into_bytes());
            }
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let statuses: Vec<i64> =
                self.run_keeper(|c| conn::invoke(c, &scripts::RENEW, &keys, &refs))?;
            let mut st = lock(&self.state);
            for ((id, entry, ..), status) in chunk.iter().zip(statuses) {
                let Some(f) = st.flights.get_mut(id) else {
                    continue;
                };
                match status {
                    // Its run ended and its finish is made: the finish, sent meanwhile
                    // by the flusher, took the entry away (or it will find the lease
                    // gone, and say so): nothing is lost here.
                    0 if f.concluded => {
                        tracing::debug!(worker = %self.name, %entry, "lease gone as the task finishes");
                    }
                    0 => {
                        tracing::warn!(worker = %self.name, %entry, "lease lost: stopping the task (another worker has it)");
                        f.end = End::Lost;
                        f.stop();
                    }
                    2 if f.end == End::Normal => {
                        f.end = End::Cancelled;
                        f.stop();
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Moves due delayed tasks (and retries) to the stream.
    fn promote(&self) -> Result<(), ClusterError> {
        let limit = PROMOTE_BATCH.to_string();
        let keys = [self.keys.delayed(), self.keys.stream()];
        let _: Value =
            self.run_keeper(|c| conn::invoke(c, &scripts::PROMOTE, &keys, &[limit.as_bytes()]))?;
        Ok(())
    }

    /// Claims entries whose lease ran out, as many as there is room for.
    ///
    /// A node with no room claims nothing; with `note_when_full` it still runs the
    /// script once, for nothing but to keep the queue's longest lease current in the
    /// renewals hash (`RECLAIM`): in a queue whose nodes are all full, the lease of a
    /// node gone would stay there, and gaps in renewals be judged by it.
    fn reclaim(&self, note_when_full: bool) -> Result<(), ClusterError> {
        for round in 0..16 {
            let room = self
                .cfg
                .capacity
                .saturating_sub(lock(&self.state).flights.len());
            if self.stopping.load(Ordering::Acquire)
                || (room == 0 && (round > 0 || !note_when_full))
            {
                return Ok(());
            }
            let lease = millis(self.cfg.lease).to_string();
            // A count of 0: only the lease is noted, nothing is claimed (or accepted).
            let count = room.min(100);
            let _claims = if count == 0 {
                None
            } else {
                match self.claims.try_lock() {
                    Ok(claims) => Some(claims),
                    Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                    // The reader is taking back entries delivered to this node (accepting
                    // them may wait on a call): this round's reclaim goes to the next,
                    // rather than hold the keeper's renewals meanwhile.
                    Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
                }
            };
            let mut link = lock(&self.link);
            let connects = link.connects();
            let reply = link.run_within(self.response(), |c| {
                conn::invoke(
                    c,
                    &scripts::RECLAIM,
                    &[
                        self.keys.stream(),
                        self.keys.workers(),
                        self.keys.renewals(),
                    ],
                    &[
                        GROUP.as_bytes(),
                        self.name.as_bytes(),
                        lease.as_bytes(),
                        count.to_string().as_bytes(),
                        self.keys.worker("").as_bytes(),
                    ],
                )
            });
            if count > 0 && (reply.is_err() || link.connects() != connects) {
                // The server may have claimed entries for this node whose reply was
                // lost (a call that broke its connection runs again on a new one): the
                // reader takes them back.
                self.recheck.store(true, Ordering::Release);
            }
            drop(link);
            let reply: Value = reply?;
            let parts = conn::array(&reply);
            let used = parts.first().and_then(conn::int).unwrap_or(0).max(0) as u64;
            let used = Duration::from_millis(used);
            {
                let mut st = lock(&self.state);
                if used > self.cfg.lease && used != st.reclaim_lease {
                    tracing::warn!(
                        worker = %self.name,
                        "another worker of this queue has a lease of {used:?}, this one {:?}: tasks are taken back after the longest",
                        self.cfg.lease
                    );
                }
                st.reclaim_lease = used;
            }
            let claimed = parts.len().saturating_sub(1);
            self.accept_all(parts.iter().skip(1).filter_map(|e| {
                let [id, fields, deliveries] = conn::array(e) else {
                    return None;
                };
                let id = conn::text(id)?;
                let fence = conn::int(deliveries).unwrap_or(1).max(1) as u64;
                tracing::info!(worker = %self.name, entry = %id, deliveries = fence, "reclaimed a task whose lease ran out");
                Some((id, fields, fence))
            }));
            if claimed < count || count == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Removes workers silent for ten leases that hold no tasks any more, once their
    /// heartbeat keys (three of their own leases long) are gone too.
    fn retire_dead(&self) -> Result<(), ClusterError> {
        let (list, time): (Vec<(String, f64)>, (i64, i64)) = self.run_keeper(|c| {
            redis::pipe()
                .cmd("ZRANGE")
                .arg(self.keys.workers())
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .cmd("TIME")
                .query(&mut conn::Piped(c))
        })?;
        let now = time.0 * 1000 + time.1 / 1000;
        let silent = millis(self.cfg.lease * 10) as i64;
        for (name, at) in list {
            // A score another writer set (`-inf`, say) is as old as can be, not an
            // overflow.
            if name != self.name && now.saturating_sub(at as i64) > silent {
                let r: i64 = self.run_keeper(|c| {
                    conn::invoke(
                        c,
                        &scripts::RETIRE,
                        &[
                            self.keys.stream(),
                            self.keys.workers(),
                            self.keys.worker(&name),
                        ],
                        &[GROUP.as_bytes(), name.as_bytes(), b"1"],
                    )
                })?;
                if r == 1 {
                    tracing::info!(worker = %self.name, dead = %name, "retired a dead worker");
                }
            }
        }
        Ok(())
    }

    /// While a stop's grace runs: the tasks the pool holds but has not started go back
    /// to the queue at once, for another node to run, rather than start during the
    /// grace and be killed and handed back at its end. Only the running ones get the
    /// grace.
    fn hand_back_unstarted(&self) {
        let mut st = lock(&self.state);
        for f in st.flights.values_mut() {
            // One being polled is passed over this time (the next look is a tick away).
            let unstarted = || f.run.try_lock().is_ok_and(|mut run| run.cancel_unstarted());
            if f.end == End::Normal && unstarted() {
                tracing::info!(worker = %self.name, task = %f.envelope.task, "stopping: handing back a task not started");
                f.end = End::HandedBack;
            }
        }
    }

    /// Past the grace period: stops what still runs and gives it back to the queue.
    fn hand_back(&self) {
        let mut st = lock(&self.state);
        for f in st.flights.values_mut() {
            if f.end == End::Normal {
                tracing::info!(worker = %self.name, task = %f.envelope.task, "grace period over: handing the task back");
                f.end = End::HandedBack;
                f.stop();
            } else if f.end == End::HandedBack && !f.concluded {
                // Handed back as the stop began, one item of a chunk still running (it
                // started as the others were cancelled): stopped now as well.
                f.stop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finish or renewal refused under the user's rules stops the node only where
    /// the user may not run scripts at all (asked again): a refusal of one task's key
    /// (an ACL narrower than the queue's keys) is that task's alone, and a refusal
    /// for another reason is no question of rules.
    #[test]
    fn only_a_refusal_of_scripts_themselves_stops_the_node() {
        let noperm = || ClusterError::Redis("NOPERM No permissions to access a key".into());
        let asked = std::cell::Cell::new(0);
        let probe = |answer: Result<(), ClusterError>| {
            let asked = &asked;
            move |_: fn(&mut redis::Connection) -> redis::RedisResult<()>| {
                asked.set(asked.get() + 1);
                answer
            }
        };
        assert!(!scripts_refused(&noperm(), probe(Ok(()))));
        assert!(scripts_refused(&noperm(), probe(Err(noperm()))));
        assert_eq!(asked.get(), 2);
        let other = ClusterError::Redis("WRONGTYPE Operation against a key".into());
        assert!(!scripts_refused(&other, probe(Err(noperm()))));
        assert_eq!(
            asked.get(),
            2,
            "asked again for a refusal that is not NOPERM"
        );
    }

    /// Runs `retire_until` against answers given in turn (the last one repeated);
    /// returns its result and the reply waits it asked for.
    fn retire_with(
        by: Instant,
        answers: &[Result<i64, &str>],
    ) -> (Result<i64, ClusterError>, Vec<Duration>) {
        let mut asked = Vec::new();
        let r = retire_until(by, |within| {
            let i = asked.len().min(answers.len() - 1);
            asked.push(within);
            answers[i].map_err(|e| ClusterError::Redis(e.into()))
        });
        (r, asked)
    }

    fn finish_of(outcome: usize) -> Finish {
        Finish {
            local: None,
            entry: String::new(),
            fence: 1,
            task: String::new(),
            client: None,
            action: Action::Outcome,
            outcome: Some(vec![0; outcome]),
            retry: None,
            reason: String::new(),
        }
    }

    #[test]
    fn an_outcome_leaves_room_in_both_of_the_servers_limits() {
        const ROOM: usize = 64 << 10;
        // Redis's defaults: the value's limit is the tighter.
        let d = Limits::DEFAULT;
        assert_eq!(d.outcome, (512 << 20) - ROOM);
        assert_eq!(d.call, (1 << 30) - ROOM);
        // A value's limit lowered to 1 MB.
        assert_eq!(Limits::of(1 << 20, 1 << 30).outcome, (1 << 20) - ROOM);
        // A command's lowered to 32 MB: an outcome goes twice in it, and batches are
        // no larger.
        let l = Limits::of(512 << 20, 32 << 20);
        assert_eq!(l.outcome, ((32 << 20) - ROOM) / 2);
        assert_eq!(l.call, (32 << 20) - ROOM);
        // Limits smaller than the room: nothing fits.
        assert_eq!(Limits::of(1000, 1000).outcome, 0);
    }

    /// A `FINISH` call takes up to 128 finishes, and no more bytes than its budget
    /// unless its first alone is larger: a large outcome goes alone, and one larger
    /// still goes all the same (its task's worker capped it).
    #[test]
    fn finishes_are_sent_in_batches_bounded_in_bytes() {
        let small: Vec<Finish> = (0..300).map(|_| finish_of(100)).collect();
        let budget = FINISH_BYTES;
        assert_eq!(batch_len(&small, budget), FINISH_BATCH);
        assert_eq!(batch_len(&small[..5], budget), 5);
        assert_eq!(batch_len(&[], budget), 0);
        // Each counts twice: half the bytes a call carries.
        let big = FINISH_BYTES / 4;
        let mixed = vec![finish_of(big), finish_of(10), finish_of(big)];
        assert_eq!(batch_len(&mixed, budget), 2);
        let two_big = vec![finish_of(big), finish_of(big), finish_of(10)];
        assert_eq!(batch_len(&two_big, budget), 2);
        let huge = vec![finish_of(FINISH_BYTES), finish_of(10)];
        assert_eq!(batch_len(&huge, budget), 1);
        // A smaller budget (a server's lowered query buffer).
        assert_eq!(batch_len(&two_big, big), 1);
        assert_eq!(batch_len(&small, 1000), 5);
    }

    /// An error of a connection that broke, or of a reply that did not come in time.
    const UNANSWERED: &str = "connection lost: timed out";

    #[test]
    fn unregistering_is_tried_again_while_it_fails() {
        let by = Instant::now() + Duration::from_secs(30);
        let (r, asked) = retire_with(by, &[Err(UNANSWERED), Err(UNANSWERED), Ok(1)]);
        assert!(matches!(r, Ok(1)));
        assert_eq!(asked.len(), 3);
        // Far from the stop's end: the whole response timeout for each reply.
        assert!(asked.iter().all(|w| *w == RESPONSE_TIMEOUT), "{asked:?}");
        // An answer, 0 (entries still held) included, is final; so is a refusal, which
        // another try would meet again.
        let (r, asked) = retire_with(by, &[Ok(0), Ok(1)]);
        assert!(matches!(r, Ok(0)));
        assert_eq!(asked.len(), 1);
        let (r, asked) = retire_with(by, &[Err("NOPERM no permissions"), Ok(1)]);
        assert!(r.is_err());
        assert_eq!(asked.len(), 1);
    }

    #[test]
    fn unregistering_ends_by_the_stops_end_and_is_tried_once_past_it() {
        let start = Instant::now();
        let by = start + Duration::from_millis(350);
        let (r, asked) = retire_with(by, &[Err(UNANSWERED)]);
        assert!(r.is_err());
        assert!((1..=4).contains(&asked.len()), "{asked:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        // Near the end, what is left of it, 200 ms at least.
        assert!(
            asked
                .iter()
                .all(|w| (Duration::from_millis(200)..=Duration::from_millis(350)).contains(w)),
            "{asked:?}"
        );

        let (r, asked) = retire_with(Instant::now(), &[Err(UNANSWERED)]);
        assert!(r.is_err());
        assert_eq!(asked, [Duration::from_millis(200)]);
    }
}
