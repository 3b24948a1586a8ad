//! [`Cluster`]: the client. Submits tasks to streams and takes their outcomes from its
//! reply lists, which a thread of its own reads with `BLPOP` on its own connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::conn::{self, BLOCK_MARGIN, Link, RESPONSE_TIMEOUT, Server, Settings};
use super::envelope::{self, Envelope, ErrorWire, Outcome, Reply, RetryWire, millis};
use super::error::ClusterError;
use super::keys::{GROUP, Keys};
use super::scripts;
use super::{DeadLetter, Delay, QueueStats, TaskDef, TaskOptions, WorkerInfo};
use crate::pool::Task;
use crate::pool::task::{Cancel, Cell, Sink};
use crate::pool::{Executor, Failure, TaskError};
use crate::sync::unpoisoned::lock;

/// How long the receiver blocks in one `BLPOP`.
const BLOCK: Duration = Duration::from_secs(2);
/// How soon the receiver looks again when there is no reply list to read.
const IDLE_LOOK: Duration = Duration::from_millis(100);
/// How often the receiver reads the epoch tokens of its queues while it waits for
/// tasks, though nothing said they changed: a queue deleted by another client
/// (`delete_queue`), or flushed or evicted from a server that kept running, breaks no
/// connection and is not seen by a submission that does not come.
const EPOCH_LOOK: Duration = Duration::from_secs(3);
/// Tasks sent per round trip by `map` and `imap`.
const BATCH: usize = 512;

/// Builds a [`Cluster`] client.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClusterBuilder {
    settings: Settings,
}

impl ClusterBuilder {
    /// The queue tasks go to unless [`TaskOptions::queue`] says otherwise (default
    /// `"default"`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.settings.queue = queue.into();
        self
    }

    /// The prefix of every key (default `"multiproc"`), so that several applications
    /// share one Redis.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.namespace = namespace.into();
        self
    }

    /// How long what this client writes is kept in Redis (default a day; at least a
    /// second, at most a century: `Duration::MAX` keeps it a century, the longest expiry
    /// Redis is given): the record of an idempotency key (how long a repeat of the key
    /// finds the first task) and the outcome of a task cancelled before it ran. The flag
    /// a cancel leaves for a task still to run is kept as long, and 30 days at least
    /// (the task may wait longer than that for its time, or in a backlog, and must not
    /// run once its cancel was accepted); it goes as the task ends. The outcome of a
    /// task that ran is kept as long as the worker that
    /// ran it says ([`WorkerBuilder::result_ttl`](crate::cluster::WorkerBuilder::result_ttl)):
    /// a client that cannot reach the server for longer than that finds it gone, and
    /// its `Task` gets no answer (a `wait` without a timeout waits for ever).
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.settings.result_ttl = ttl;
        self
    }

    /// The largest encoded task accepted (default 64 MiB; workers have their own cap).
    /// A server that takes smaller values (its `proto-max-bulk-len` and
    /// `client-query-buffer-limit`, read as the client connects) lowers it to what it
    /// takes.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.settings.max_message = bytes;
        self
    }

    /// How long connecting may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Trusts these PEM certificates for `rediss://` instead of the system's roots.
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.settings.tls_root = Some(pem.into());
        self
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidUrl`], [`ClusterError::Connect`] (refused, unreachable,
    /// TLS), [`ClusterError::Auth`], [`ClusterError::Unsupported`] for a server older
    /// than 7.0, [`ClusterError::InvalidArgument`] for a bad queue or namespace name.
    pub fn build(self) -> Result<Cluster, ClusterError> {
        let (server, keys) = self.settings.open()?;
        let mut conn = server.connect_checked()?;
        let epoch = conn::epoch(&mut conn, &keys).map_err(|e| super::error::redis_err(&e))?;
        // A task larger than the server takes would close the connection: refused
        // here, as one over `max_message` is (Redis's defaults where it does not say).
        let (limits, policy) = conn::server_config(&mut conn)
            .ok()
            .flatten()
            .unwrap_or((conn::Limits::DEFAULT, None));
        conn::warn_if_evicting(policy.as_deref(), "cluster client");
        let (to_deliver, queued) = crossbeam_channel::unbounded();
        let handing = Arc::new(Handing::default());
        let inner = Arc::new(ClientInner {
            id: conn::random_hex(8)?,
            namespace: self.settings.namespace.clone(),
            default_keys: keys.clone(),
            result_ttl: self.settings.result_ttl_secs(),
            max_message: self.settings.max_message.min(limits.outcome),
            link: Mutex::new(Link::with(server.clone(), RESPONSE_TIMEOUT, conn)),
            pending: Mutex::new(Pending::default()),
            next: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            receiver_id: Mutex::new(None),
            queues: Mutex::new(vec![(keys, epoch)]),
            epochs_stale: AtomicBool::new(false),
            to_deliver: Mutex::new(Some(to_deliver)),
            queued: queued.clone(),
            deliverer: std::sync::OnceLock::new(),
            handing: Arc::clone(&handing),
        });
        let deliverer = std::thread::Builder::new()
            .name("multiproc-cluster-deliver".into())
            .spawn(move || {
                for handover in queued.iter() {
                    hand_over_counted(handover, &handing);
                }
            })?;
        let _ = inner.deliverer.set(deliverer.thread().id());
        let receiver = {
            let inner = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("multiproc-cluster-replies".into())
                .spawn(move || {
                    ON_RECEIVER.set(true);
                    receive(&inner, &server);
                })?
        };
        Ok(Cluster {
            inner,
            receiver: Some(receiver),
            deliverer: Some(deliverer),
        })
    }
}

/// A client of a cluster: submits tasks to Redis queues, for [`Worker`](super::Worker)
/// nodes anywhere to run, with the surface of [`Pool`](crate::Pool).
///
/// Submitting returns the same [`Task`] handle as the local pools. Dropping the client
/// fails the tasks it still waits for with [`TaskError::PoolClosed`] (the tasks
/// themselves still run).
///
/// See the [module docs](super) for an example.
pub struct Cluster {
    inner: Arc<ClientInner>,
    receiver: Option<std::thread::JoinHandle<()>>,
    /// Runs the tasks' deliveries (their callbacks) that the receiver hands it.
    deliverer: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.inner.id)
            .field("queue", &self.inner.default_keys.queue())
            .field("waiting_for", &lock(&self.inner.pending).tasks.len())
            .finish()
    }
}

pub(crate) struct ClientInner {
    id: String,
    namespace: String,
    default_keys: Keys,
    result_ttl: u64,
    max_message: usize,
    /// The command connection.
    link: Mutex<Link>,
    pending: Mutex<Pending>,
    next: AtomicU64,
    stop: AtomicBool,
    /// `shutdown` was called: no more submissions.
    closed: AtomicBool,
    /// The receiver connection's client id (to unblock its `BLPOP`).
    receiver_id: Mutex<Option<i64>>,
    /// Queues this client has submitted to (the receiver reads their reply lists), with
    /// their epoch tokens as last seen.
    queues: Mutex<Vec<(Keys, String)>>,
    /// A submission saw another epoch token than the one last seen: the receiver
    /// looks at the epochs again.
    epochs_stale: AtomicBool,
    /// Outcomes the receiver took, on their way to the deliverer thread (`None` once
    /// the client is dropped: the deliverer then ends when it has run what is queued).
    to_deliver: Mutex<Option<crossbeam_channel::Sender<Handover>>>,
    /// The same queue's other end: what a wait on the deliverer thread (a callback's)
    /// runs itself.
    queued: crossbeam_channel::Receiver<Handover>,
    /// The deliverer thread.
    deliverer: std::sync::OnceLock<std::thread::ThreadId>,
    /// Outcomes given to the deliverer thread and not handed over yet (their tasks are
    /// no longer pending, but not done either): what `shutdown(wait)` waits for too.
    handing: Arc<Handing>,
}

/// Outcomes the receiver took and has not handed over yet.
#[derive(Default)]
struct Handing {
    /// How many.
    count: AtomicUsize,
    /// Their tasks' local handle ids, with whether the outcome is a cancel's. A cancel
    /// that finds its task so (no longer pending, not done yet) answers by it: the
    /// server, which no longer has the task, would have it flagged and answer yes.
    locals: Mutex<HashMap<u64, bool>>,
}

type Deliver = Box<dyn FnOnce(Result<Outcome, TaskError>) + Send>;

/// An outcome the receiver took, and whom it goes to.
type Handover = (Vec<(u64, Deliver)>, Result<Outcome, TaskError>);

thread_local! {
    /// Whether this thread is a client's receiver: what it delivers goes through the
    /// deliverer thread, since a task's callbacks run where its outcome is delivered,
    /// and one that waits for another task of the client (or submits and waits) would
    /// otherwise hold up the only thread that reads the outcomes.
    static ON_RECEIVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Hands an outcome to the tasks waiting for it (each a copy, the last the original).
fn hand_over((delivers, outcome): Handover) {
    let mut delivers = delivers.into_iter().peekable();
    while let Some((_, d)) = delivers.next() {
        if delivers.peek().is_some() {
            d(outcome.clone());
        } else {
            d(outcome);
            break;
        }
    }
}

/// [`hand_over`], then one outcome fewer in `handing`, also when handing it over
/// panicked (a result type's `Deserialize` or `Display`, say: the deliverer thread goes
/// on, and a shutdown waiting for the count does not wait for ever).
fn hand_over_counted(handover: Handover, handing: &Handing) {
    let locals: Vec<u64> = handover.0.iter().map(|(local, _)| *local).collect();
    if crate::bootstrap::catching(|| hand_over(handover)).is_err() {
        tracing::error!("handing over a cluster task's outcome panicked");
    }
    // The tasks are done now (or their handles gone): a cancel answers by them.
    let mut handed = lock(&handing.locals);
    for local in locals {
        handed.remove(&local);
    }
    drop(handed);
    handing.count.fetch_sub(1, Ordering::AcqRel);
}

/// An item of a windowed map: its local id and what the map keeps for it, or why it was
/// not submitted.
type Submitted<X> = Result<(u64, X), TaskError>;

/// Tasks this client waits for.
#[derive(Default)]
struct Pending {
    /// By queue and task id.
    tasks: HashMap<TaskKey, Waiting>,
    /// Local handle ids to their tasks (for cancel).
    locals: HashMap<u64, TaskKey>,
}

/// A task waited for: its queue's name and its id. An idempotency key names a task of
/// one queue: the same key given to tasks of two queues is two tasks.
type TaskKey = (String, String);

fn task_key(keys: &Keys, task: &str) -> TaskKey {
    (keys.queue().to_owned(), task.to_owned())
}

struct Waiting {
    keys: Keys,
    /// Its stream entry, once known.
    entry: Option<String>,
    /// Its encoded envelope while it may sit in the delayed set.
    delayed: Option<Vec<u8>>,
    /// The queue's epoch token it was sent under, once sent: a server that lost its
    /// data since (another token) lost the task.
    epoch: Option<String>,
    /// The outcome is kept for others (an idempotency key): not deleted when taken.
    keep: bool,
    /// Submitted with its key while the task had no outcome yet: its wake-up comes
    /// through the task's waiters set, which may lapse before the task ends, so its
    /// result key is also read every [`EPOCH_LOOK`].
    joined: bool,
    delivers: Vec<(u64, Deliver)>,
}

/// A task encoded for sending.
struct Prepared {
    local: u64,
    task: String,
    envelope: Vec<u8>,
}

impl Cluster {
    /// Connects to the Redis at `url` with the default settings.
    ///
    /// # Errors
    ///
    /// As [`ClusterBuilder::build`]; a refused connection fails at once.
    pub fn connect(url: &str) -> Result<Cluster, ClusterError> {
        Cluster::builder(url).build()
    }

    /// A builder for a client with other settings.
    pub fn builder(url: &str) -> ClusterBuilder {
        ClusterBuilder {
            settings: Settings::new(url),
        }
    }

    /// This client's id (its reply list's name).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Submits `def(args)` and returns a [`Task`] for its result (Celery's `delay`).
    ///
    /// A task is delivered at least once: a submission whose connection broke before
    /// the server's reply came is sent again, and may so queue the task twice (give a
    /// task with side effects an idempotency key, see [`TaskOptions`]).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Codec`] if `args` does not encode, [`ClusterError::TooLarge`],
    /// or a Redis error (after which the task may still have been queued).
    #[doc(alias = "delay")]
    pub fn submit<A, R>(&self, def: TaskDef<A, R>, args: A) -> Result<Task<R>, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        self.submit_with(def, args, TaskOptions::new())
    }

    /// As [`submit`](Self::submit), with options: a countdown or eta, a retry policy, a
    /// timeout, an idempotency key, another queue (Celery's `apply_async`).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); [`ClusterError::InvalidArgument`] for a bad queue
    /// name or idempotency key, or a timeout of zero (as a pool refuses it).
    #[doc(alias = "apply_async")]
    pub fn submit_with<A, R>(
        &self,
        def: TaskDef<A, R>,
        args: A,
        opts: TaskOptions,
    ) -> Result<Task<R>, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let keys = self.inner.keys_for(opts.queue.as_deref())?;
        let cell = Cell::<R>::new();
        let prepared = self.inner.prepare(
            (def.name(), def.schema()),
            &args,
            false,
            &opts,
            &keys,
            deliver_into(&cell),
        )?;
        let local = prepared.local;
        self.inner.send_one(&keys, prepared, &opts)?;
        Ok(self.task(cell, local))
    }

    /// Submits a task registered with
    /// [`register_fallible`](super::WorkerBuilder::register_fallible): its `Err` is the
    /// task's failure, [`TaskError::Failed`] carrying the error (decoded here, so
    /// [`Failure::downcast_ref`] finds it too), which its retry policy may retry; its
    /// `Ok` is the task's value. The same as
    /// [`Pool::submit_fallible`](crate::Pool::submit_fallible).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    pub fn submit_fallible<A, T, E>(
        &self,
        def: TaskDef<A, Result<T, E>>,
        args: A,
    ) -> Result<Task<T>, ClusterError>
    where
        A: Serialize,
        T: DeserializeOwned + Send + 'static,
        E: DeserializeOwned + std::fmt::Display + Send + Sync + 'static,
    {
        self.submit_fallible_with(def, args, TaskOptions::new())
    }

    /// As [`submit_fallible`](Self::submit_fallible), with options (see
    /// [`submit_with`](Self::submit_with)).
    ///
    /// # Errors
    ///
    /// As [`submit_with`](Self::submit_with).
    pub fn submit_fallible_with<A, T, E>(
        &self,
        def: TaskDef<A, Result<T, E>>,
        args: A,
        opts: TaskOptions,
    ) -> Result<Task<T>, ClusterError>
    where
        A: Serialize,
        T: DeserializeOwned + Send + 'static,
        E: DeserializeOwned + std::fmt::Display + Send + Sync + 'static,
    {
        let keys = self.inner.keys_for(opts.queue.as_deref())?;
        let cell = Cell::<T>::new();
        let prepared = self.inner.prepare(
            (def.name(), def.schema()),
            &args,
            false,
            &opts,
            &keys,
            deliver_fallible::<T, E>(&cell),
        )?;
        let local = prepared.local;
        self.inner.send_one(&keys, prepared, &opts)?;
        Ok(self.task(cell, local))
    }

    /// Submits `def(args)` and waits for its result (Python's `apply`).
    ///
    /// # Errors
    ///
    /// A submission error, or the task's [`TaskError`] as [`ClusterError::Task`].
    pub fn apply<A, R>(&self, def: TaskDef<A, R>, args: A) -> Result<R, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        Ok(self.submit(def, args)?.wait()?)
    }

    /// As [`apply`](Self::apply), waiting at most `timeout` (Python's
    /// `apply_async(..).get(timeout)`): a task not done by then is cancelled (removed
    /// if still queued, stopped at its worker's next lease renewal if it runs). The
    /// cancel is a round trip after the timeout: against a server that does not answer,
    /// one response timeout (10 s).
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply); [`TaskError::Timeout`] (as [`ClusterError::Task`])
    /// if the result did not come in time.
    pub fn apply_timeout<A, R>(
        &self,
        def: TaskDef<A, R>,
        args: A,
        timeout: Duration,
    ) -> Result<R, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let mut task = self.submit(def, args)?;
        let out = task.wait_timeout(timeout);
        if matches!(out, Err(TaskError::Timeout)) && !task.is_done() {
            task.cancel();
        }
        Ok(out?)
    }

    /// Runs `def` on every item and returns the results in order (Python's `map`). The
    /// items travel in chunks (about 64 of them, at most 1,024 items each), sent in
    /// batches of one round trip; a worker runs each item of a chunk as its own task of
    /// its pool. A chunk's items travel as one message, and its results come back as
    /// one: chunks are sized by count, not bytes, so for large items or results use
    /// [`map_chunked`](Self::map_chunked) with chunks that fit the caps (the client's
    /// [`max_message`](ClusterBuilder::max_message), and the worker's for the results:
    /// a chunk whose results encode to more fails with [`TaskError::Codec`] once all
    /// its items have run).
    ///
    /// # Errors
    ///
    /// A submission error, or the first failure in item order as
    /// [`ClusterError::Task`] (the other items still run). An item that crashes its
    /// process fails with [`TaskError::WorkerDied`] (items of a chunk are not
    /// redelivered one by one; a chunk whose worker is lost is).
    pub fn map<A, R, I>(&self, def: TaskDef<A, R>, items: I) -> Result<Vec<R>, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = items.into_iter().collect();
        let chunk = items.len().div_ceil(64).clamp(1, 1024);
        self.map_chunked_until(def, items, chunk, None)
    }

    /// As [`map`](Self::map), waiting at most `timeout` for every result: chunks not
    /// done by then are cancelled (as [`apply_timeout`](Self::apply_timeout) does), a
    /// round trip each, until the server does not answer one (then the call ends one
    /// response timeout past `timeout`, and the chunks left run, their outcomes unread).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map); [`TaskError::Timeout`] (as [`ClusterError::Task`]) if
    /// the results did not all come in time.
    pub fn map_timeout<A, R, I>(
        &self,
        def: TaskDef<A, R>,
        items: I,
        timeout: Duration,
    ) -> Result<Vec<R>, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = items.into_iter().collect();
        let chunk = items.len().div_ceil(64).clamp(1, 1024);
        let deadline = crate::deadline::later(timeout);
        self.map_chunked_until(def, items, chunk, Some(deadline))
    }

    /// As [`map`](Self::map), with `chunk_size` items per chunk (Python's `chunksize`;
    /// 1 sends every item as a task of its own).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn map_chunked<A, R, I>(
        &self,
        def: TaskDef<A, R>,
        items: I,
        chunk_size: usize,
    ) -> Result<Vec<R>, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_chunked_until(def, items, chunk_size, None)
    }

    /// `map_chunked`, waiting until `deadline` (if any) for the results.
    fn map_chunked_until<A, R, I>(
        &self,
        def: TaskDef<A, R>,
        items: I,
        chunk_size: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<R>, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = items.into_iter().collect();
        let keys = self.inner.default_keys.clone();
        let opts = TaskOptions::new();
        let mut tasks = Vec::new();
        let chunks: Vec<&[A]> = items.chunks(chunk_size.max(1)).collect();
        for batch in chunks.chunks(BATCH) {
            let mut prepared = Vec::with_capacity(batch.len());
            for chunk in batch {
                let cell = Cell::<Vec<Outcome>>::new();
                let deliver = deliver_into(&cell);
                match self.inner.prepare(
                    (def.name(), def.schema()),
                    chunk,
                    true,
                    &opts,
                    &keys,
                    deliver,
                ) {
                    Ok(p) => {
                        tasks.push(self.task(cell, p.local));
                        prepared.push(p);
                    }
                    Err(e) => {
                        self.inner.forget(&keys, prepared.iter());
                        return Err(e);
                    }
                }
            }
            self.inner.send_many(&keys, &mut prepared)?;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut tasks = tasks.into_iter();
        while let Some(mut t) = tasks.next() {
            let outcomes = match deadline {
                None => t.wait()?,
                Some(d) => match t.wait_timeout(d.saturating_duration_since(Instant::now())) {
                    Err(TaskError::Timeout) if !t.is_done() => {
                        // Nobody waits for the rest any more. A server that does not
                        // answer a cancel is not asked again for each.
                        for late in std::iter::once(t).chain(tasks) {
                            if !late.is_done() && !self.inner.cancel_reaching(late.source_id()).1 {
                                break;
                            }
                        }
                        return Err(TaskError::Timeout.into());
                    }
                    // Done as the wait gave up: its outcome is there now (the map then
                    // goes on, and the next chunk not done by the deadline cancels the
                    // rest). Taken as the wait's timeout, the chunks after it were
                    // left running for nobody.
                    Err(TaskError::Timeout) => t.wait_timeout(Duration::ZERO)?,
                    outcomes => outcomes?,
                },
            };
            for outcome in outcomes {
                out.push(outcome.into_result::<R>()?);
            }
        }
        Ok(out)
    }

    /// Submits a task per item in batches (one round trip each) and returns their
    /// handles in item order.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit); the tasks of batches already sent still run.
    pub fn submit_batch<A, R, I>(
        &self,
        def: TaskDef<A, R>,
        items: I,
    ) -> Result<Vec<Task<R>>, ClusterError>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let keys = self.inner.default_keys.clone();
        let opts = TaskOptions::new();
        let mut tasks = Vec::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            batch.clear();
            let mut cells = Vec::with_capacity(BATCH);
            for a in items.by_ref().take(BATCH) {
                let cell = Cell::<R>::new();
                match self.inner.prepare(
                    (def.name(), def.schema()),
                    &a,
                    false,
                    &opts,
                    &keys,
                    deliver_into(&cell),
                ) {
                    Ok(p) => {
                        cells.push((p.local, cell));
                        batch.push(p);
                    }
                    Err(e) => {
                        self.inner.forget(&keys, batch.iter());
                        return Err(e);
                    }
                }
            }
            self.inner.send_many(&keys, &mut batch)?;
            tasks.extend(
                cells
                    .into_iter()
                    .map(|(local, cell)| self.task(cell, local)),
            );
        }
        Ok(tasks)
    }

    /// Runs `def` on every item, lazily, with a bounded number of tasks in flight (so
    /// an endless iterator works); results in item order, each its own `Result`.
    ///
    /// An item that cannot be submitted yields its own error in its place, and the
    /// items after it go on, as in [`Pool::imap`](crate::Pool::imap): one that does
    /// not encode, or is over the cap, fails alone; where a batch cannot be sent
    /// (Redis unreachable), each of its items fails (unless its outcome came anyway:
    /// the server took the batch and only its reply was lost).
    pub fn imap<A, R, I>(&self, def: TaskDef<A, R>, items: I) -> ClusterImap<'_, A, R, I::IntoIter>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        ClusterImap {
            cluster: self,
            def,
            items: items.into_iter(),
            window: VecDeque::new(),
            taking: true,
        }
    }

    /// As [`imap`](Self::imap), with results in the order tasks finish.
    pub fn imap_unordered<A, R, I>(
        &self,
        def: TaskDef<A, R>,
        items: I,
    ) -> ClusterImapUnordered<'_, A, R, I::IntoIter>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let (tx, rx) = crossbeam_channel::unbounded();
        ClusterImapUnordered {
            cluster: self,
            def,
            items: items.into_iter(),
            in_flight: 0,
            tx,
            rx,
            taking: true,
        }
    }

    /// Takes items and submits them as one batch, for the maps that keep a window of
    /// tasks in flight: per item taken, in order, its local id and what `make` gave
    /// it, or why it was not submitted. An item that does not encode, or is over the
    /// cap, fails alone; where the batch cannot be sent (or the client is closed), each
    /// of its items fails, unless its outcome came already (the server took the batch
    /// and only its reply was lost).
    fn submit_window<A: Serialize, X>(
        &self,
        def: (&str, u64),
        items: impl Iterator<Item = A>,
        mut make: impl FnMut() -> (Deliver, X),
    ) -> Vec<Submitted<X>> {
        let inner = &self.inner;
        let keys = &inner.default_keys;
        let opts = TaskOptions::new();
        let refused = |e: &ClusterError| {
            TaskError::Failed(Failure::message_only(format!("cannot submit: {e}")))
        };
        let mut out = Vec::new();
        let mut batch = Vec::new();
        let mut sent = Vec::new();
        let mut fatal = None;
        for a in items {
            if let Some(e) = &fatal {
                // Not tried: it would fail as the one before did (and wait as long).
                out.push(Err(refused(e)));
                continue;
            }
            let (deliver, x) = make();
            match inner.prepare(def, &a, false, &opts, keys, deliver) {
                Ok(p) => {
                    sent.push(out.len());
                    out.push(Ok((p.local, x)));
                    batch.push(p);
                }
                Err(e @ (ClusterError::Codec(_) | ClusterError::TooLarge { .. })) => {
                    out.push(Err(refused(&e)));
                }
                Err(e) => {
                    out.push(Err(refused(&e)));
                    fatal = Some(e);
                }
            }
        }
        if batch.is_empty() {
            return out;
        }
        let waited = match fatal {
            None => match inner.send_many_or_forget(keys, &mut batch) {
                Ok(()) => return out,
                Err(failed) => {
                    let (e, waited) = *failed;
                    fatal = Some(e);
                    waited
                }
            },
            Some(_) => inner.forget(keys, batch.iter()),
        };
        if let Some(e) = &fatal {
            // A task whose outcome came already keeps it: its handle has it, or its
            // deliverer sent it.
            for (i, waited) in sent.into_iter().zip(waited) {
                if waited {
                    out[i] = Err(refused(e));
                }
            }
        }
        out
    }

    /// The state of the client's queue: waiting, in flight, delayed and dead-lettered
    /// tasks, and the workers' heartbeats.
    ///
    /// # Errors
    ///
    /// A Redis error.
    pub fn stats(&self) -> Result<QueueStats, ClusterError> {
        self.stats_of(self.inner.default_keys.queue())
    }

    /// As [`stats`](Self::stats), for another queue.
    ///
    /// # Errors
    ///
    /// A Redis error, or an invalid queue name.
    pub fn stats_of(&self, queue: &str) -> Result<QueueStats, ClusterError> {
        let keys = self.inner.keys_for(Some(queue))?;
        self.inner.stats(&keys)
    }

    /// The oldest `limit` messages of the client's queue's dead-letter stream.
    ///
    /// # Errors
    ///
    /// A Redis error.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ClusterError> {
        // None asked for (Redis reads a count of 0 as no count at all, every entry).
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = &self.inner.default_keys;
        let reply: Value = self.inner.run(|c| {
            redis::cmd("XRANGE")
                .arg(keys.dead())
                .arg("-")
                .arg("+")
                .arg("COUNT")
                // A count Redis takes (`usize::MAX`, "all of them", it refused).
                .arg(i64::try_from(limit).unwrap_or(i64::MAX))
                .query(c)
        })?;
        Ok(conn::array(&reply)
            .iter()
            .filter_map(|e| {
                let [id, fields] = conn::array(e) else {
                    return None;
                };
                let fields = conn::fields(fields);
                let get = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| *k == name.as_bytes())
                        .map(|(_, v)| *v)
                };
                let envelope =
                    get(envelope::FIELD).and_then(|m| Envelope::decode(m, usize::MAX).ok());
                Some(DeadLetter {
                    id: conn::text(id)?,
                    reason: get("reason")
                        .map(|r| String::from_utf8_lossy(r).into_owned())
                        .unwrap_or_default(),
                    task: envelope.as_ref().map(|e| e.task.clone()),
                    name: envelope.map(|e| e.name),
                })
            })
            .collect())
    }

    /// Puts the dead letter `id` back on the client's queue, its attempts counted
    /// afresh. Whether there was such a dead letter holding a task (also when the
    /// requeue is sent again on a new connection, its reply lost with the first, and
    /// finds the dead letter it moved gone). An idempotent
    /// task's kept outcome (the dead letter) is dropped and its idempotency record made
    /// anew for this client's `result_ttl`: repeats of its key join the new run and get
    /// its outcome.
    ///
    /// # Errors
    ///
    /// A Redis error.
    pub fn requeue_dead(&self, id: &str) -> Result<bool, ClusterError> {
        let keys = &self.inner.default_keys;
        let reply: Value = self.inner.run(|c| {
            redis::cmd("XRANGE")
                .arg(keys.dead())
                .arg(id)
                .arg(id)
                .query(c)
        })?;
        let Some(entry) = conn::array(&reply).first() else {
            return Ok(false);
        };
        let fields = conn::array(entry)
            .get(1)
            .map(conn::fields)
            .unwrap_or_default();
        let Some(mut envelope) = fields
            .iter()
            .find(|(k, _)| *k == envelope::FIELD.as_bytes())
            .and_then(|(_, m)| Envelope::decode(m, usize::MAX).ok())
        else {
            return Ok(false);
        };
        envelope.attempt = 0;
        envelope.lost = 0;
        let bytes = envelope.encode()?;
        let none = keys.none();
        let record = envelope
            .task
            .strip_prefix("k:")
            .map_or_else(|| none.clone(), |k| keys.idempotency(k));
        let ttl = self.inner.result_ttl.to_string();
        let token = conn::random_hex(16)?;
        let moved: i64 = self.inner.run(|c| {
            conn::invoke(
                c,
                &scripts::REQUEUE,
                &[
                    keys.dead(),
                    keys.stream(),
                    keys.result(&envelope.task),
                    record.clone(),
                    keys.requeued(id),
                ],
                &[
                    id.as_bytes(),
                    &bytes,
                    ttl.as_bytes(),
                    token.as_bytes(),
                    none.as_bytes(),
                ],
            )
        })?;
        Ok(moved == 1)
    }

    /// Deletes a queue from Redis: its stream and consumer group (tasks waiting or
    /// running included), delayed tasks, dead letters, worker registry, idempotency
    /// records (and the outcomes they keep), reply lists, and scheduler lease. Other
    /// outcomes expire by themselves. This client's handles of the queue's tasks that
    /// have no outcome yet fail ([`TaskError::Failed`]: the queue was deleted) at once;
    /// other clients' handles fail the same way within a few seconds (each client's
    /// result reader looks at the epoch tokens of its queues every 3 s while it waits
    /// for tasks, and a token that is gone fails the tasks sent under it).
    ///
    /// # Errors
    ///
    /// A Redis error, or an invalid queue name.
    pub fn delete_queue(&self, queue: &str) -> Result<(), ClusterError> {
        let keys = self.inner.keys_for(Some(queue))?;
        let workers: Vec<String> = self.inner.run(|c| {
            redis::cmd("ZRANGE")
                .arg(keys.workers())
                .arg(0)
                .arg(-1)
                .query(c)
        })?;
        let mut doomed = vec![
            keys.epoch(),
            keys.stream(),
            keys.delayed(),
            keys.dead(),
            keys.workers(),
            keys.renewals(),
            keys.leader(),
            keys.leader_fence(),
        ];
        doomed.extend(workers.iter().map(|w| keys.worker(w)));
        // Idempotency records and the outcomes kept for them; reply lists, waiters and
        // cancel flags of clients that went away; requeue markers.
        // The names are matched literally: a queue's name may hold `*`, `?`, `[`, `]`
        // (`jobs[1]` must not match `jobs1`'s keys).
        for pattern in [
            keys.idempotency(""),
            keys.result("k:"),
            keys.reply(""),
            keys.waiters(""),
            keys.cancel(""),
            keys.retry(""),
            keys.requeued(""),
        ]
        .map(|prefix| format!("{}*", glob_literal(&prefix)))
        {
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) = self.inner.run(|c| {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query(c)
                })?;
                doomed.extend(found);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        for chunk in doomed.chunks(500) {
            self.inner
                .run(|c| redis::cmd("UNLINK").arg(chunk).exec(c))?;
        }
        // This client's own handles of the queue's tasks would wait for ever.
        let gone: Vec<String> = lock(&self.inner.pending)
            .tasks
            .iter()
            .filter(|(_, w)| w.keys == keys)
            .map(|((_, t), _)| t.clone())
            .collect();
        for task in gone {
            self.inner.deliver(
                &keys,
                &task,
                Err(TaskError::Failed(Failure::message_only(
                    "its queue was deleted (Cluster::delete_queue)",
                ))),
            );
        }
        Ok(())
    }

    /// Whether the scheduler `id` holds (or now takes) the leader lease of the
    /// client's queue for `ttl`; its fencing token if it does.
    pub(crate) fn lead(&self, id: &str, ttl: Duration) -> Result<Option<u64>, ClusterError> {
        let keys = &self.inner.default_keys;
        let ms = ttl.as_millis().max(1).to_string();
        let token: i64 = self.inner.run(|c| {
            conn::invoke(
                c,
                &scripts::LEAD,
                &[keys.leader(), keys.leader_fence()],
                &[id.as_bytes(), ms.as_bytes()],
            )
        })?;
        Ok((token > 0).then_some(token as u64))
    }

    /// Whether tasks with these idempotency keys were submitted (by anyone).
    pub(crate) fn submitted(&self, keys: &[String]) -> Result<Vec<bool>, ClusterError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let q = &self.inner.default_keys;
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("EXISTS").arg(q.idempotency(k));
        }
        self.inner.run(|c| pipe.query(&mut conn::Piped(c)))
    }

    /// Python's `Executor.shutdown(wait, cancel_futures)`: this client submits nothing
    /// more (later submissions fail with [`TaskError::PoolClosed`]); with
    /// `cancel_pending`, every task it still waits for is cancelled (one still queued
    /// is removed; one a worker runs is stopped at that worker's next lease renewal: a
    /// client cannot tell the two apart without a round trip per task); with `wait`,
    /// returns once every task it waits for has its outcome. Workers and other clients
    /// go on.
    pub fn shutdown(&self, wait: bool, cancel_pending: bool) {
        self.close(cancel_pending, None);
        if wait {
            self.wait_pending(None);
        }
    }

    /// As [`shutdown`](Self::shutdown) with `wait`, waiting at most `timeout` for the
    /// outcomes (a server that cannot be reached may never send them). Returns whether
    /// every task this client waits for has its outcome. The cancels of
    /// `cancel_pending` count within `timeout` (one cancel a round trip: those not sent
    /// by then are not, and their tasks go on), but for the one in flight, a response
    /// timeout (10 s) at most of a server that does not answer: no more are sent to it
    /// then.
    pub fn shutdown_timeout(&self, cancel_pending: bool, timeout: Duration) -> bool {
        let deadline = crate::deadline::later(timeout);
        self.close(cancel_pending, Some(deadline));
        self.wait_pending(Some(deadline))
    }

    /// Takes no more submissions, and with `cancel_pending` cancels every task this
    /// client waits for, until the server does not answer one or `deadline` passes.
    fn close(&self, cancel_pending: bool, deadline: Option<Instant>) {
        self.inner.closed.store(true, Ordering::Release);
        if cancel_pending {
            let locals: Vec<u64> = lock(&self.inner.pending).locals.keys().copied().collect();
            for local in locals {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if !self.inner.cancel_reaching(local).1 {
                    break;
                }
            }
        }
    }

    /// Waits until no task of this client waits for its outcome, or `deadline`: whether
    /// none does.
    fn wait_pending(&self, deadline: Option<Instant>) -> bool {
        // On the delivering thread (a callback's shutdown), the outcomes given to it
        // are handed over only once this returns: not waited for.
        let handed = !self.inner.routes_here();
        loop {
            if lock(&self.inner.pending).tasks.is_empty()
                && (!handed || self.inner.handing.count.load(Ordering::Acquire) == 0)
            {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn task<R>(&self, cell: Arc<Cell<R>>, local: u64) -> Task<R> {
        let canceller: Weak<dyn Cancel> = Arc::downgrade(&self.inner) as Weak<dyn Cancel>;
        Task::new(cell, local, Some(canceller))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.unblock_receiver();
        if let Some(r) = self.receiver.take() {
            crate::sync::unpoisoned::join(r);
        }
        let pending = std::mem::take(&mut *lock(&self.inner.pending));
        for (_, w) in pending.tasks {
            for (_, d) in w.delivers {
                d(Err(TaskError::PoolClosed));
            }
        }
        // The deliverer runs what the receiver handed it, then ends (not waited for
        // from a callback on it: it would wait for itself).
        lock(&self.inner.to_deliver).take();
        if let Some(d) = self.deliverer.take() {
            crate::sync::unpoisoned::join(d);
        }
    }
}

/// A deliverer for a fallible task: the `Ok` of its value into `cell`, its failure
/// with the error decoded as `E` (so that `downcast_ref` finds it).
fn deliver_fallible<T, E>(cell: &Arc<Cell<T>>) -> Deliver
where
    T: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + std::fmt::Display + Send + Sync + 'static,
{
    let cell = Arc::clone(cell);
    Box::new(move |outcome: Result<Outcome, TaskError>| {
        // The error type's `Deserialize` and `Display` run here too: a panic there is
        // the task's error, not the end of the delivery.
        let typed = crate::bootstrap::catching(|| {
            match outcome.and_then(Outcome::into_result::<Result<T, E>>) {
                Ok(Ok(v)) => Ok(v),
                // A worker that registered the function with plain `register` sends its
                // `Err` as a value.
                Ok(Err(e)) => Err(TaskError::Failed(
                    Failure::message_only(e.to_string()).with_value(e),
                )),
                Err(TaskError::Failed(f)) => Err(TaskError::Failed(match f.decode::<E>() {
                    Ok(e) => f.with_value(e),
                    Err(_) => f,
                })),
                Err(e) => Err(e),
            }
        })
        .unwrap_or_else(|caught| {
            Err(TaskError::Codec(crate::CodecError::new(format!(
                "decoding the task's error panicked: {caught}"
            ))))
        });
        cell.deliver(0, typed);
    })
}

/// A deliverer that decodes an outcome as `R` into `cell`.
fn deliver_into<R: DeserializeOwned + Send + 'static>(cell: &Arc<Cell<R>>) -> Deliver {
    let cell = Arc::clone(cell);
    Box::new(move |outcome: Result<Outcome, TaskError>| {
        cell.deliver(0, outcome.and_then(Outcome::into_result::<R>));
    })
}

impl ClientInner {
    fn run<T>(
        &self,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        lock(&self.link).run(f)
    }

    fn keys_for(&self, queue: Option<&str>) -> Result<Keys, ClusterError> {
        let Some(queue) = queue else {
            return Ok(self.default_keys.clone());
        };
        if queue == self.default_keys.queue() {
            return Ok(self.default_keys.clone());
        }
        conn::check_name("queue", queue)?;
        Ok(Keys::new(&self.namespace, queue))
    }

    /// Encodes a task and registers its waiter (before it is sent: the reply may come
    /// back before the send returns).
    fn prepare<T: Serialize + ?Sized>(
        &self,
        (name, schema): (&str, u64),
        args: &T,
        chunk: bool,
        opts: &TaskOptions,
        keys: &Keys,
        deliver: Deliver,
    ) -> Result<Prepared, ClusterError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ClusterError::Task(TaskError::PoolClosed));
        }
        opts.check_timeout()
            .map_err(ClusterError::InvalidArgument)?;
        let args = envelope::encode_value(args)?;
        let local = self.next.fetch_add(1, Ordering::Relaxed);
        let task = match &opts.idempotency_key {
            Some(k) if k.is_empty() || k.len() > 512 => {
                return Err(ClusterError::InvalidArgument(
                    "an idempotency key has 1 to 512 bytes".into(),
                ));
            }
            Some(k) => format!("k:{k}"),
            None => format!("{}-{local}", self.id),
        };
        let envelope = Envelope {
            task: task.clone(),
            name: name.to_string(),
            schema,
            args,
            reply: Some(self.id.clone()),
            attempt: 0,
            lost: 0,
            retry: opts.retry.as_ref().map(RetryWire::from_policy),
            timeout_ms: opts.timeout.map(|t| millis(t).max(1)),
            chunk,
        }
        .encode()?;
        if envelope.len() > self.max_message {
            return Err(ClusterError::TooLarge {
                size: envelope.len(),
                max: self.max_message,
            });
        }
        if !lock(&self.queues).iter().any(|(k, _)| k == keys) {
            let epoch = self.run(|c| conn::epoch(c, keys))?;
            lock(&self.queues).push((keys.clone(), epoch));
            // The receiver starts reading this queue's reply list too.
            self.unblock_receiver();
        }
        let mut p = lock(&self.pending);
        p.locals.insert(local, task_key(keys, &task));
        let w = p
            .tasks
            .entry(task_key(keys, &task))
            .or_insert_with(|| Waiting {
                keys: keys.clone(),
                entry: None,
                delayed: None,
                epoch: None,
                keep: opts.idempotency_key.is_some(),
                joined: false,
                delivers: Vec::new(),
            });
        // A repeat of an idempotent task by the same client shares the first's entry:
        // its delayed member stays the first's (the repeat adds none).
        let fresh = w.delivers.is_empty();
        w.delivers.push((local, deliver));
        if fresh && opts.delay != Delay::Now {
            w.delayed = Some(envelope.clone());
        }
        Ok(Prepared {
            local,
            task,
            envelope,
        })
    }

    /// Forgets the handles of tasks of `keys`' queue that were not sent (and only
    /// theirs: a handle of an earlier submission with the same idempotency key still
    /// waits). Says for each whether it still waited: one whose send failed after the
    /// server took it (its reply was lost) may have had its outcome already.
    fn forget<'a>(&self, keys: &Keys, sent: impl Iterator<Item = &'a Prepared>) -> Vec<bool> {
        let mut p = lock(&self.pending);
        let mut waited = Vec::new();
        for prepared in sent {
            p.locals.remove(&prepared.local);
            let key = task_key(keys, &prepared.task);
            let mut found = false;
            if let Some(w) = p.tasks.get_mut(&key) {
                let before = w.delivers.len();
                w.delivers.retain(|(local, _)| *local != prepared.local);
                found = w.delivers.len() < before;
                if w.delivers.is_empty() {
                    p.tasks.remove(&key);
                }
            }
            waited.push(found);
        }
        waited
    }

    fn send_one(
        &self,
        keys: &Keys,
        prepared: Prepared,
        opts: &TaskOptions,
    ) -> Result<(), ClusterError> {
        if opts.delay == Delay::Now && opts.idempotency_key.is_none() && opts.leader.is_none() {
            let mut batch = vec![prepared];
            return self.send_many(keys, &mut batch);
        }
        let (mode, ms) = match opts.delay {
            Delay::Now => ("0", 0),
            // No longer than a century, as on a pool: a record's life (the result's
            // time to live plus the countdown) must count in the script's integers.
            Delay::Countdown(d) => ("c", millis(d.min(crate::deadline::FOREVER))),
            // As far as a countdown may go at most.
            Delay::Eta(at) => (
                "e",
                at.min(epoch_millis().saturating_add(millis(crate::deadline::FOREVER))),
            ),
        };
        let ms = ms.to_string();
        let ttl = self.result_ttl.to_string();
        let idem = if opts.idempotency_key.is_some() {
            "1"
        } else {
            "0"
        };
        let leader = opts.leader.clone().unwrap_or_default();
        let reply: Value = self
            .run(|c| {
                conn::invoke(
                    c,
                    &scripts::SUBMIT,
                    &[
                        keys.stream(),
                        keys.delayed(),
                        keys.idempotency(
                            prepared.task.strip_prefix("k:").unwrap_or(&prepared.task),
                        ),
                        keys.result(&prepared.task),
                        keys.waiters(&prepared.task),
                        keys.leader(),
                        keys.epoch(),
                    ],
                    &[
                        &prepared.envelope,
                        mode.as_bytes(),
                        ms.as_bytes(),
                        idem.as_bytes(),
                        ttl.as_bytes(),
                        self.id.as_bytes(),
                        leader.as_bytes(),
                        conn::epoch_token().as_bytes(),
                    ],
                )
            })
            .inspect_err(|_| {
                self.forget(keys, std::iter::once(&prepared));
            })?;
        let parts = conn::array(&reply);
        if let Some(epoch) = parts.get(2).and_then(conn::text) {
            self.sent_under(keys, std::slice::from_ref(&prepared), epoch);
        }
        match parts.first().and_then(conn::int) {
            Some(1) => {
                let mut p = lock(&self.pending);
                if let Some(w) = p.tasks.get_mut(&task_key(keys, &prepared.task)) {
                    w.entry = parts.get(1).and_then(conn::text);
                    w.delayed = None;
                }
            }
            Some(0) => {
                // A duplicate: its outcome now, or later through this client's list.
                if let Some(outcome) = parts.get(1).and_then(conn::bytes).filter(|b| !b.is_empty())
                {
                    let outcome = Outcome::decode(outcome).map_err(TaskError::Codec);
                    self.deliver(keys, &prepared.task, outcome);
                } else {
                    let mut p = lock(&self.pending);
                    if let Some(w) = p.tasks.get_mut(&task_key(keys, &prepared.task)) {
                        w.joined = true;
                        if w.delivers.len() == 1 {
                            w.delayed = None;
                        }
                    }
                }
            }
            Some(3) => {
                self.forget(keys, std::iter::once(&prepared));
                return Err(ClusterError::InvalidArgument(
                    "this scheduler no longer holds the leader lease".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends tasks in one round trip (`XADD` each, pipelined, after reading the queue's
    /// epoch token).
    fn send_many(&self, keys: &Keys, batch: &mut [Prepared]) -> Result<(), ClusterError> {
        self.send_many_or_forget(keys, batch)
            .map_err(|failed| failed.0)
    }

    /// As [`send_many`](Self::send_many); a failure also says, per task, whether its
    /// handle still waited when it was forgotten (see [`forget`](Self::forget)).
    fn send_many_or_forget(
        &self,
        keys: &Keys,
        batch: &mut [Prepared],
    ) -> Result<(), Box<(ClusterError, Vec<bool>)>> {
        let stream = keys.stream();
        let mut pipe = redis::pipe();
        conn::with_epoch(&mut pipe, keys);
        for p in batch.iter() {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(envelope::FIELD)
                .arg(&p.envelope);
        }
        let mut replies: Vec<String> = self
            .run(|c| pipe.query(&mut conn::Piped(c)))
            .map_err(|e| Box::new((e, self.forget(keys, batch.iter()))))?;
        let ids = replies.split_off(1.min(replies.len()));
        {
            let mut pending = lock(&self.pending);
            for (p, id) in batch.iter().zip(ids) {
                if let Some(w) = pending.tasks.get_mut(&task_key(keys, &p.task)) {
                    w.entry = Some(id);
                }
            }
        }
        if let Some(epoch) = replies.pop() {
            self.sent_under(keys, batch, epoch);
        }
        Ok(())
    }

    /// Records the epoch token `batch` was sent under; a token other than the one last
    /// seen for the queue means the server lost its data since: the receiver then fails
    /// the tasks sent under an older one (only it decides, against the token it reads
    /// then, so that a late answer from before the loss cannot fail newer tasks).
    fn sent_under(&self, keys: &Keys, batch: &[Prepared], epoch: String) {
        let changed = {
            let mut queues = lock(&self.queues);
            match queues.iter_mut().find(|(k, _)| k == keys) {
                // The token the submission saw is the server's now: kept, so that a
                // look at the epochs begun before it (which may have found none) does
                // not forget the queue, whose reply list the task's outcome comes to.
                Some((_, known)) if *known != epoch => {
                    *known = epoch.clone();
                    true
                }
                Some(_) => false,
                None => {
                    // Forgotten meanwhile (the receiver found no token): read again.
                    queues.push((keys.clone(), epoch.clone()));
                    true
                }
            }
        };
        {
            let mut pending = lock(&self.pending);
            for p in batch {
                if let Some(w) = pending.tasks.get_mut(&task_key(keys, &p.task)) {
                    w.epoch = Some(epoch.clone());
                }
            }
        }
        if changed {
            self.epochs_stale.store(true, Ordering::Release);
            self.unblock_receiver();
        }
    }

    /// Hands the outcome of `task` of `keys`' queue to whoever waits for it. Returns
    /// whether the outcome should be deleted from Redis (nobody else needs it).
    fn deliver(
        &self,
        keys: &Keys,
        task: &str,
        outcome: Result<Outcome, TaskError>,
    ) -> Option<Keys> {
        let w = {
            let mut p = lock(&self.pending);
            let w = p.tasks.remove(&task_key(keys, task))?;
            // Counted as it leaves the pending list (under its lock): a shutdown that
            // finds the list empty finds it counted here, and a cancel that finds it
            // gone finds it among those handed over or done.
            let cancel = matches!(outcome, Ok(Outcome::Failed(ErrorWire::Cancelled)));
            let mut handed = lock(&self.handing.locals);
            for (local, _) in &w.delivers {
                p.locals.remove(local);
                handed.insert(*local, cancel);
            }
            drop(handed);
            self.handing.count.fetch_add(1, Ordering::AcqRel);
            w
        };
        let handover = (w.delivers, outcome);
        let handover = match lock(&self.to_deliver).as_ref() {
            // The deliverer thread counts it down once it has handed it over.
            Some(tx) if ON_RECEIVER.get() => tx.send(handover).err().map(|e| e.into_inner()),
            _ => Some(handover),
        };
        if let Some(handover) = handover {
            hand_over_counted(handover, &self.handing);
        }
        (!w.keep).then_some(w.keys)
    }

    /// The queue whose reply list is `list`.
    fn queue_of(&self, list: &str) -> Option<Keys> {
        lock(&self.queues)
            .iter()
            .find(|(k, _)| k.reply(&self.id) == list)
            .map(|(k, _)| k.clone())
    }

    /// Wakes the receiver's `BLPOP` (to stop, or to read a new queue's list).
    fn unblock_receiver(&self) {
        let Some(id) = *lock(&self.receiver_id) else {
            return;
        };
        let _ = self.run(|c| redis::cmd("CLIENT").arg("UNBLOCK").arg(id).exec(c));
    }

    fn stats(&self, keys: &Keys) -> Result<QueueStats, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XINFO")
            .arg("GROUPS")
            .arg(keys.stream())
            .cmd("ZCARD")
            .arg(keys.delayed())
            .cmd("XLEN")
            .arg(keys.dead())
            .cmd("ZRANGE")
            .arg(keys.workers())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("TIME")
            .cmd("XLEN")
            .arg(keys.stream());
        pipe.ignore_errors();
        let replies: Vec<Value> = self.run(|c| pipe.query(&mut conn::Piped(c)))?;
        let nil = Value::Nil;
        let get = |i: usize| replies.get(i).unwrap_or(&nil);
        let (mut waiting, mut in_flight) = (None, 0);
        for g in conn::array(get(0)) {
            let f = conn::fields(g);
            let field = |name: &str| {
                f.iter()
                    .find(|(k, _)| *k == name.as_bytes())
                    .map(|(_, v)| *v)
            };
            if field("name") == Some(GROUP.as_bytes()) {
                in_flight = group_number(g, "pending").unwrap_or(0);
                waiting = group_number(g, "lag");
            }
        }
        let len = conn::int(get(5)).unwrap_or(0).max(0) as u64;
        let waiting = waiting.unwrap_or_else(|| len.saturating_sub(in_flight));
        let time = conn::array(get(4));
        let now_ms = time.first().and_then(conn::int).unwrap_or(0) * 1000
            + time.get(1).and_then(conn::int).unwrap_or(0) / 1000;
        let mut workers = Vec::new();
        let list = conn::array(get(3));
        for pair in list.chunks(2) {
            if let [name, score] = pair
                && let (Some(name), Some(score)) = (conn::text(name), conn::text(score))
            {
                let at = score.parse::<f64>().unwrap_or(0.0) as i64;
                let since = now_ms.saturating_sub(at).max(0);
                workers.push((name, Duration::from_millis(since as u64)));
            }
        }
        workers.sort_by_key(|(_, d)| *d);
        let mut infos = Vec::with_capacity(workers.len());
        for (name, since) in workers {
            let description: Option<String> =
                self.run(|c| redis::cmd("GET").arg(keys.worker(&name)).query(c))?;
            infos.push(WorkerInfo {
                name,
                description: description.unwrap_or_default(),
                since_heartbeat: since,
            });
        }
        Ok(QueueStats {
            queue: keys.queue().to_string(),
            waiting,
            in_flight,
            delayed: conn::int(get(1)).unwrap_or(0).max(0) as u64,
            dead_lettered: conn::int(get(2)).unwrap_or(0).max(0) as u64,
            workers: infos,
        })
    }

    /// On every connection of the receiver, its first included, when a submission saw
    /// a new token, and every [`EPOCH_LOOK`] while tasks are waited for: fails the tasks of queues whose data the server lost, so that
    /// nobody waits for them forever. A token known before the server is asked (the
    /// queue's, or one a waiting task was sent under) and other than the one it
    /// answers (or it has none) is gone for good, and so are the tasks sent under it.
    /// Tokens learnt after asking are not judged here (they may be newer than the
    /// answer); a submission that learns one other than the queue's asks for another
    /// look. False if an epoch could not be read (to be looked at again).
    ///
    /// It only reads the epoch: a queue deleted meanwhile (`delete_queue`) must not get
    /// one back from a receiver that happens to connect just then. A queue whose epoch
    /// is gone is forgotten here, and the next submission to it starts it afresh.
    fn check_epochs(&self, link: &mut Link) -> bool {
        let queues = lock(&self.queues).clone();
        for (keys, known) in queues {
            let before: HashSet<String> = lock(&self.pending)
                .tasks
                .values()
                .filter(|w| w.keys == keys)
                .filter_map(|w| w.epoch.clone())
                .chain(std::iter::once(known.clone()))
                .collect();
            let Ok(now) = link.run(|c| {
                redis::cmd("GET")
                    .arg(keys.epoch())
                    .query::<Option<String>>(c)
            }) else {
                return false;
            };
            if now.as_ref() != Some(&known) {
                // Unless a submission has seen a token meanwhile (it asks for a look).
                let mut queues = lock(&self.queues);
                if let Some(i) = queues.iter().position(|(k, t)| *k == keys && *t == known) {
                    match &now {
                        Some(now) => queues[i].1 = now.clone(),
                        None => {
                            queues.remove(i);
                        }
                    }
                }
            }
            let lost: Vec<String> = lock(&self.pending)
                .tasks
                .iter()
                .filter(|(_, w)| {
                    w.keys == keys
                        && w.epoch
                            .as_ref()
                            .is_some_and(|e| before.contains(e) && Some(e) != now.as_ref())
                })
                .map(|((_, t), _)| t.clone())
                .collect();
            if lost.is_empty() {
                continue;
            }
            tracing::warn!(
                queue = keys.queue(),
                tasks = lost.len(),
                "the Redis server lost the queue's data: failing the tasks waited for"
            );
            for task in lost {
                self.deliver(
                    &keys,
                    &task,
                    Err(TaskError::Failed(Failure::message_only(
                        "the Redis server lost its data for this queue (it restarted without persistence, or the queue was deleted, flushed or evicted): the task is gone; submit it again",
                    ))),
                );
            }
        }
        true
    }

    /// After a reconnection: outcomes written while this client could not hear.
    /// Whether every result key was read (false: a read failed, and the recovery is
    /// still to do).
    fn recover(&self, link: &mut Link) -> bool {
        self.read_outcomes(link, |_| true)
    }

    /// With each look at the epochs: outcomes of the idempotent tasks this client
    /// joined, whose waiters set (the wake-up's one way to it) may have lapsed before
    /// the task ended.
    fn recover_joined(&self, link: &mut Link) {
        self.read_outcomes(link, |w| w.joined);
    }

    /// Reads the result keys of the tasks waited for that `which` picks, and delivers
    /// the outcomes found; whether every key was read.
    fn read_outcomes(&self, link: &mut Link, which: impl Fn(&Waiting) -> bool) -> bool {
        let waiting: Vec<(Keys, String, String)> = lock(&self.pending)
            .tasks
            .iter()
            .filter(|(_, w)| which(w))
            .map(|((_, t), w)| (w.keys.clone(), t.clone(), w.keys.result(t)))
            .collect();
        for chunk in waiting.chunks(500) {
            let keys: Vec<&String> = chunk.iter().map(|(_, _, k)| k).collect();
            let found = match link.run(|c| {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query::<Vec<Option<Vec<u8>>>>(c)
            }) {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!("cluster client: reading outcomes failed: {e}");
                    return false;
                }
            };
            let mut delete = Vec::new();
            for ((queue, task, key), outcome) in chunk.iter().zip(found) {
                if let Some(bytes) = outcome
                    && self
                        .deliver(
                            queue,
                            task,
                            Outcome::decode(&bytes).map_err(TaskError::Codec),
                        )
                        .is_some()
                {
                    delete.push(key.clone());
                }
            }
            if !delete.is_empty() {
                let _ = link.run(|c| redis::cmd("UNLINK").arg(&delete).exec(c));
            }
        }
        true
    }
}

fn group_number(group: &Value, name: &str) -> Option<u64> {
    let pairs: Vec<&Value> = match group {
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        other => conn::array(other).iter().collect(),
    };
    pairs.chunks(2).find_map(|c| match c {
        [k, v] if conn::bytes(k) == Some(name.as_bytes()) => conn::int(v).map(|n| n.max(0) as u64),
        _ => None,
    })
}

impl Cancel for ClientInner {
    // A callback on the deliverer thread that waits for another task of this client
    // runs the deliveries queued meanwhile itself: nothing else would.
    fn help(&self) {
        if self.routes_here() {
            for handover in self.queued.try_iter() {
                hand_over_counted(handover, &self.handing);
            }
        }
    }

    fn helps(&self) -> bool {
        self.routes_here()
    }

    fn routes_here(&self) -> bool {
        self.deliverer.get() == Some(&std::thread::current().id())
    }

    fn cancel(&self, local: u64) -> bool {
        self.cancel_reaching(local).0
    }
}

impl ClientInner {
    /// Cancels task `local`: whether it will end cancelled, and whether the server
    /// answered (false: it could not be reached, or did not answer in time; a sweep of
    /// cancels stops there rather than wait a response timeout for each).
    fn cancel_reaching(&self, local: u64) -> (bool, bool) {
        let (task, keys, entry, delayed) = {
            let p = lock(&self.pending);
            let Some(key) = p.locals.get(&local) else {
                return (false, true);
            };
            let Some(w) = p.tasks.get(key) else {
                return (false, true);
            };
            (
                key.1.clone(),
                w.keys.clone(),
                w.entry.clone(),
                w.delayed.clone(),
            )
        };
        let Ok(outcome) = Outcome::Failed(ErrorWire::Cancelled).encode() else {
            return (false, true);
        };
        let Ok(reply) = (Reply {
            task: task.clone(),
            outcome: outcome.clone(),
        })
        .encode() else {
            return (false, true);
        };
        let ttl = self.result_ttl.to_string();
        test_cancel_delay();
        let r: Result<i64, _> = self.run(|c| {
            conn::invoke(
                c,
                &scripts::CANCEL,
                &[
                    keys.stream(),
                    keys.delayed(),
                    keys.cancel(&task),
                    keys.result(&task),
                    keys.reply(&self.id),
                    keys.waiters(&task),
                    keys.retry(&task),
                    task.strip_prefix("k:")
                        .map_or_else(|| keys.none(), |k| keys.idempotency(k)),
                ],
                &[
                    GROUP.as_bytes(),
                    entry.as_deref().unwrap_or("").as_bytes(),
                    delayed.as_deref().unwrap_or(&[]),
                    ttl.as_bytes(),
                    &outcome,
                    &reply,
                    keys.reply_prefix().as_bytes(),
                    keys.none().as_bytes(),
                ],
            )
        });
        match r {
            Ok(1) => (true, true),
            Ok(2) => {
                // Flagged, as a task a worker holds is. Unless its outcome came while
                // the cancel was on its way, and its result key was taken already: the
                // flag would then outlive the task, and the answer is the outcome's
                // (this cancel's, a worker's `FINISH` having found the flag, or
                // another). The receiver took it: on its way to the handle, it says
                // which; handed over already, the handle's outcome does
                // (`Task::cancel`).
                let handed = {
                    let p = lock(&self.pending);
                    (!p.locals.contains_key(&local))
                        .then(|| lock(&self.handing.locals).get(&local).copied())
                };
                let Some(handed) = handed else {
                    return (true, true);
                };
                let _ = self.run(|c| redis::cmd("DEL").arg(keys.cancel(&task)).exec(c));
                (handed.unwrap_or(true), true)
            }
            Ok(_) => (false, true),
            // An error the server answered leaves the connection up.
            Err(_) => (false, lock(&self.link).is_connected()),
        }
    }
}

/// In a build with debug assertions, `MULTIPROC_TEST_CANCEL_DELAY_MS=<ms>` in the
/// environment makes each cancel wait that long between finding its task pending and
/// asking the server (as one behind a busy connection may), so that tests can have the
/// task's outcome come meanwhile.
fn test_cancel_delay() {
    if cfg!(debug_assertions)
        && let Some(ms) = std::env::var("MULTIPROC_TEST_CANCEL_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// The receiver thread: reads the reply lists and delivers outcomes; reconnects (and
/// recovers outcomes it may have missed) after a broken connection.
fn receive(inner: &Weak<ClientInner>, server: &Server) {
    let mut link = Link::new(server.clone(), BLOCK + BLOCK_MARGIN);
    let mut backoff = Duration::from_millis(50);
    // The wait after a failed read of the reply lists, doubled while they keep failing.
    let mut failing = Duration::from_millis(50);
    let mut fresh = true;
    // Connections seen: a new one (after the first) recovers, whether it was made
    // after an error here or transparently inside a call.
    let mut seen = 0;
    // Outcomes taken whose keys are still to delete (kept across a lost connection).
    let mut delete: Vec<String> = Vec::new();
    // Whether outcomes may have been missed and the result keys are still to read: set
    // by a new connection or a reply this build cannot read, cleared once a read of
    // them all went through (an error the server answers, such as `LOADING` or `BUSY`
    // while it loads its data or runs a long script, leaves the connection up: only a
    // second try would read them then).
    let mut recover_due = false;
    // When a read of them refused may be made again, and the wait after the next
    // refusal (doubled while they go on, up to 2 s): a server that refuses it for good
    // (an ACL rule) gets one a doubling wait, not one a batch of replies.
    let mut recover_after = Instant::now();
    let mut recover_wait = Duration::from_millis(50);
    // Whether the epochs are still to be checked on the current connection.
    let mut epochs_due = false;
    let mut last_look = Instant::now();
    // When to ask for this connection's id again, after the server refused it (a
    // `BUSY` server, an ACL rule), and the wait after the next refusal (doubled up to a
    // minute): without it a stop or a new queue waits for the block to end.
    let mut id_due: Option<Instant> = None;
    let mut id_wait = Duration::from_secs(2);
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.stop.load(Ordering::Acquire) {
            if !delete.is_empty() {
                let _ = link.run(|c| redis::cmd("UNLINK").arg(&delete).exec(c));
            }
            return;
        }
        if fresh {
            // The broken connection's id goes first: after a restart the server gives
            // its numbers again, and a `CLIENT UNBLOCK` by it could wake another client.
            *lock(&inner.receiver_id) = None;
            match link.run(|c| redis::cmd("CLIENT").arg("ID").query::<i64>(c)) {
                Ok(id) => {
                    *lock(&inner.receiver_id) = Some(id);
                    fresh = false;
                    backoff = Duration::from_millis(50);
                }
                // Refused with the connection up (an ACL rule without `CLIENT ID`): the
                // id only lets a stop or a new queue wake this thread's `BLPOP` at once
                // (`CLIENT UNBLOCK`); without it they wait for the block to end (2 s at
                // most). Waiting for an id that never comes, no reply was ever read.
                Err(e) if link.is_connected() => {
                    tracing::warn!(
                        "cluster client: CLIENT ID refused ({e}): until it is given, a stop, a new queue or a changed epoch waits for the next read of replies (2 s at most)"
                    );
                    *lock(&inner.receiver_id) = None;
                    id_due = Some(Instant::now() + id_wait);
                    fresh = false;
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::debug!("cluster client: cannot reach Redis: {e}");
                    drop(inner);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let id_asked = link.connects() != seen || id_due.is_some_and(|at| Instant::now() >= at);
        if id_asked {
            // The id of the connection now: none rather than the last one's, which may
            // be another client's by now (a `CLIENT UNBLOCK` would wake it).
            let id = link.run(|c| redis::cmd("CLIENT").arg("ID").query::<i64>(c));
            *lock(&inner.receiver_id) = id.as_ref().ok().copied();
            if id.is_ok() {
                id_due = None;
                id_wait = Duration::from_secs(2);
            } else {
                id_due = Some(Instant::now() + id_wait);
                id_wait = (id_wait * 2).min(Duration::from_secs(60));
            }
        }
        if link.connects() != seen {
            recover_due |= seen > 0;
            seen = link.connects();
            // The first connection too: this thread may first connect after a server
            // that lost its data came back (a slow start on a busy machine), and the
            // epochs known from submitting are older than that.
            epochs_due = true;
        }
        if recover_due && Instant::now() >= recover_after {
            if inner.recover(&mut link) {
                recover_due = false;
                recover_wait = Duration::from_millis(50);
            } else {
                recover_after = Instant::now() + recover_wait;
                recover_wait = (recover_wait * 2).min(Duration::from_secs(2));
            }
        }
        if inner.epochs_stale.swap(false, Ordering::AcqRel) {
            epochs_due = true;
        }
        if last_look.elapsed() >= EPOCH_LOOK && !lock(&inner.pending).tasks.is_empty() {
            epochs_due = true;
        }
        if epochs_due && inner.check_epochs(&mut link) {
            epochs_due = false;
            last_look = Instant::now();
            inner.recover_joined(&mut link);
        }
        let lists: Vec<String> = lock(&inner.queues)
            .iter()
            .map(|(k, _)| k.reply(&inner.id))
            .collect();
        if lists.is_empty() {
            // No queue to read from yet (or none whose data the server still has):
            // look again shortly rather than send a `BLPOP` with no list.
            drop(inner);
            std::thread::sleep(IDLE_LOOK);
            continue;
        }
        let popped: Result<Option<(String, Vec<u8>)>, _> = link.run(|c| {
            redis::cmd("BLPOP")
                .arg(&lists)
                .arg(BLOCK.as_secs_f64())
                .query(c)
        });
        match popped {
            Ok(None) => {
                if !delete.is_empty()
                    && link
                        .run(|c| redis::cmd("UNLINK").arg(&delete).exec(c))
                        .is_ok()
                {
                    delete.clear();
                }
            }
            Ok(Some((list, first))) => {
                // What else waits, and the outcomes taken before, in one round trip.
                let mut pipe = redis::pipe();
                pipe.cmd("LPOP").arg(&list).arg(1000);
                if !delete.is_empty() {
                    pipe.cmd("UNLINK").arg(&delete).ignore();
                }
                let more: Vec<Vec<u8>> = match link
                    .run(|c| pipe.query::<(Option<Vec<Vec<u8>>>,)>(&mut conn::Piped(c)))
                {
                    Ok((more,)) => {
                        delete.clear();
                        more.unwrap_or_default()
                    }
                    Err(_) => {
                        // What it popped may be lost: read the outcomes again.
                        link.reset();
                        fresh = true;
                        Vec::new()
                    }
                };
                // The queue whose list it came from (one this client reads).
                let queue = inner.queue_of(&list);
                let mut unreadable = false;
                for bytes in std::iter::once(first).chain(more) {
                    match Reply::decode(&bytes) {
                        Ok(reply) => {
                            let Some(queue) = &queue else { continue };
                            let outcome = Outcome::decode(&reply.outcome).map_err(TaskError::Codec);
                            match inner.deliver(queue, &reply.task, outcome) {
                                Some(keys) => delete.push(keys.result(&reply.task)),
                                // Nobody waits (a dead letter requeued after its client
                                // gave up on it): its outcome is nobody's either, unless
                                // an idempotency key keeps it.
                                None if !reply.task.starts_with("k:") => {
                                    delete.push(queue.result(&reply.task));
                                }
                                None => {}
                            }
                        }
                        Err(e) => {
                            tracing::warn!("cluster client: a reply that does not decode: {e}");
                            unreadable = true;
                        }
                    }
                }
                // A reply this build cannot read (from a worker of another version)
                // still names a task that has ended: the result keys say which, and
                // their outcomes (or why they do not decode) go to their waiters.
                if unreadable {
                    // Read at the next turn of the loop.
                    recover_due = true;
                }
            }
            Err(e) => {
                if inner.stop.load(Ordering::Acquire) {
                    return;
                }
                tracing::debug!("cluster client: reply list read failed: {e}");
                link.reset();
                fresh = true;
                // An error that lasts while the server still accepts connections (it
                // is loading its data, the user may not read lists) must not make this
                // a loop of connections: wait longer each time, up to 2 s.
                drop(inner);
                std::thread::sleep(failing);
                failing = (failing * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        failing = Duration::from_millis(50);
    }
}

/// The lazy ordered map of [`Cluster::imap`].
pub struct ClusterImap<'a, A, R, I> {
    cluster: &'a Cluster,
    def: TaskDef<A, R>,
    items: I,
    /// In item order: each item's task, or why it was not submitted.
    window: VecDeque<Result<Task<R>, TaskError>>,
    /// Whether the input may hold more items.
    taking: bool,
}

impl<A, R, I> fmt::Debug for ClusterImap<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterImap")
            .field("in_flight", &self.window.len())
            .finish_non_exhaustive()
    }
}

impl<A, R, I> Iterator for ClusterImap<'_, A, R, I>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
    I: Iterator<Item = A>,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_within(None)
    }
}

impl<A, R, I> ClusterImap<'_, A, R, I>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
    I: Iterator<Item = A>,
{
    /// The next result, waiting at most `timeout` for it (Python's
    /// `IMapIterator.next(timeout)`): `Some(Err(TaskError::Timeout))` if it is not there
    /// by then, and the iterator goes on (the next call waits for the same item).
    /// `None` once every item has been yielded. A call that submits the next batch of
    /// items (once half the window is free) waits for the server's answer first: one
    /// response timeout past `timeout` at most, from a server that does not answer
    /// (the batch's items then fail), as [`Cluster::map_timeout`]'s submission does.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, TaskError>> {
        self.next_within(Some(timeout))
    }

    fn next_within(&mut self, timeout: Option<Duration>) -> Option<Result<R, TaskError>> {
        // Refilled a batch at a time while half the window or more is free.
        while self.taking && self.window.len() <= BATCH {
            let take = BATCH;
            let def = (self.def.name(), self.def.schema());
            let submitted = self
                .cluster
                .submit_window(def, self.items.by_ref().take(take), || {
                    let cell = Cell::<R>::new();
                    (deliver_into(&cell), cell)
                });
            self.taking = submitted.len() == take;
            let refused = submitted.iter().all(Result::is_err);
            self.window.extend(
                submitted
                    .into_iter()
                    .map(|s| s.map(|(local, cell)| self.cluster.task(cell, local))),
            );
            // None went in (the server did not answer, or refuses): not another batch
            // in this call, which would wait as long again.
            if refused {
                break;
            }
        }
        let (Some(timeout), Some(Ok(task))) = (timeout, self.window.front_mut()) else {
            return Some(self.window.pop_front()?.and_then(Task::wait));
        };
        let outcome = match task.wait_timeout(timeout) {
            // The wait ended before the outcome came: it stays for the next call.
            Err(TaskError::Timeout) if !task.is_done() => return Some(Err(TaskError::Timeout)),
            // Done: the task's own outcome was `Timeout` (taken then), or the outcome
            // came as the wait ended (there to take now).
            Err(TaskError::Timeout) => match task.wait_timeout(Duration::ZERO) {
                Err(TaskError::Taken) => Err(TaskError::Timeout),
                outcome => outcome,
            },
            outcome => outcome,
        };
        self.window.pop_front();
        Some(outcome)
    }
}

/// The lazy unordered map of [`Cluster::imap_unordered`].
pub struct ClusterImapUnordered<'a, A, R, I> {
    cluster: &'a Cluster,
    def: TaskDef<A, R>,
    items: I,
    /// Outcomes still to be received (each submitted task's, and each refused item's).
    in_flight: usize,
    tx: crossbeam_channel::Sender<Result<R, TaskError>>,
    rx: crossbeam_channel::Receiver<Result<R, TaskError>>,
    /// Whether the input may hold more items.
    taking: bool,
}

impl<A, R, I> fmt::Debug for ClusterImapUnordered<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterImapUnordered")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl<A, R, I> Iterator for ClusterImapUnordered<'_, A, R, I>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
    I: Iterator<Item = A>,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_within(None)
    }
}

impl<A, R, I> ClusterImapUnordered<'_, A, R, I>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
    I: Iterator<Item = A>,
{
    /// The next result to finish, waiting at most `timeout` for one:
    /// `Some(Err(TaskError::Timeout))` if none finished by then, and the iterator goes
    /// on. `None` once every item has been yielded. As for
    /// [`ClusterImap::next_timeout`], a call that submits the next batch waits for the
    /// server's answer first (one response timeout past `timeout` at most).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, TaskError>> {
        self.next_within(Some(timeout))
    }

    fn next_within(&mut self, timeout: Option<Duration>) -> Option<Result<R, TaskError>> {
        while self.taking && self.in_flight <= BATCH {
            let take = BATCH;
            let def = (self.def.name(), self.def.schema());
            let submitted = self
                .cluster
                .submit_window(def, self.items.by_ref().take(take), || {
                    let tx = self.tx.clone();
                    let deliver: Deliver = Box::new(move |o: Result<Outcome, TaskError>| {
                        let _ = tx.send(o.and_then(Outcome::into_result::<R>));
                    });
                    (deliver, ())
                });
            self.taking = submitted.len() == take;
            self.in_flight += submitted.len();
            let all_refused = submitted.iter().all(Result::is_err);
            for refused in submitted.into_iter().filter_map(Result::err) {
                let _ = self.tx.send(Err(refused));
            }
            // As for the ordered iterator: not another batch in this call.
            if all_refused {
                break;
            }
        }
        if self.in_flight == 0 {
            return None;
        }
        let got = match timeout {
            None => self.rx.recv().map_err(|_| ()),
            Some(t) => match self.rx.recv_timeout(t) {
                // It stays in flight, for the next call.
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    return Some(Err(TaskError::Timeout));
                }
                got => got.map_err(|_| ()),
            },
        };
        self.in_flight -= 1;
        Some(got.unwrap_or(Err(TaskError::PoolClosed)))
    }
}

/// The cluster as an [`Executor`]: its tasks are [`TaskDef`]s (a function pointer does not
/// cross machines), its errors [`ClusterError`]s (it can also fail to reach Redis).
impl Executor for Cluster {
    type Func<A, R> = TaskDef<A, R>;
    type Error = ClusterError;

    fn submit<A, R>(&self, def: TaskDef<A, R>, args: A) -> Result<Task<R>, ClusterError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Cluster::submit(self, def, args)
    }

    fn submit_with<A, R>(
        &self,
        def: TaskDef<A, R>,
        args: A,
        opts: TaskOptions,
    ) -> Result<Task<R>, ClusterError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Cluster::submit_with(self, def, args, opts)
    }

    fn map<A, R, I>(&self, def: TaskDef<A, R>, items: I) -> Result<Vec<R>, ClusterError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Cluster::map(self, def, items)
    }

    fn imap<A, R, I>(
        &self,
        def: TaskDef<A, R>,
        items: I,
    ) -> impl Iterator<Item = Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Cluster::imap(self, def, items)
    }

    fn shutdown(&self, wait: bool, cancel_pending: bool) {
        Cluster::shutdown(self, wait, cancel_pending);
    }
}

/// `s` as a `SCAN MATCH` pattern that matches it and nothing else.
fn glob_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Milliseconds since the Unix epoch, by this machine's clock (0 before it).
fn epoch_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, millis)
}
