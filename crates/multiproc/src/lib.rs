//! Python's `multiprocessing`, done right for Rust.
//!
//! Run functions in child processes, typed end to end, with none of the known failure
//! modes of the Python original: a child that crashes is reported as such, daemon
//! children never outlive their parent (even a `SIGKILL`ed one), and every child is
//! reaped.
//!
//! # Starting
//!
//! Call [`init`] early in `main`, before anything is spawned. It returns a guard that,
//! dropped at the end of `main`, joins the children (and terminates daemon children) as
//! Python does at exit:
//!
//! ```no_run
//! fn main() {
//!     let _guard = multiproc::init();
//!     // ... the program ...
//! }
//! ```
//!
//! A process that multiproc starts never runs `main`: a child forked by the fork server
//! runs its function and exits, and a process started by executing the program afresh
//! (a [`StartMethod::Spawn`] child, or a fork server the program started after it had
//! threads) recognises itself in a constructor before `main`. So code before `init()`,
//! a `#[tokio::main]` runtime, or the standard test harness calling `init()` from a
//! test, are all fine.
//!
//! # Processes
//!
//! [`spawn`] runs a function in a new process and returns a [`JoinHandle`]; `join`
//! returns the function's value. Arguments and results are serde values, so anything
//! `Serialize + Deserialize` crosses over; a closure that captures nothing is a function
//! too. A value's `Serialize` may run twice for one send (small values are measured,
//! then written straight into place), so it should have no side effects. The encoding
//! carries no types (a number is its bytes, not "a number"), so a type whose
//! `Deserialize` asks the data what it holds (serde's `deserialize_any`) cannot be
//! received: untagged and internally tagged enums (`#[serde(untagged)]`,
//! `#[serde(tag = "...")]`), `serde_json::Value`. Such a value is sent, and its
//! receive fails with a [`CodecError`] that says so; serde's default, externally tagged
//! enums, cross over. A struct with `#[serde(flatten)]` fields is refused as it is sent.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let _guard = multiproc::init();
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Job {
//!     id: u32,
//!     words: Vec<String>,
//! }
//!
//! fn count(job: Job) -> (u32, usize) {
//!     (job.id, job.words.len())
//! }
//!
//! let job = Job { id: 7, words: vec!["a".into(), "b".into()] };
//! let child = multiproc::spawn(count, job)?;
//! assert_eq!(child.join()?, (7, 2));
//! # Ok(())
//! # }
//! ```
//!
//! [`Builder`] names the process, makes it a daemon, picks the [`StartMethod`], and sets
//! its environment, directory and standard streams.
//!
//! # Failures are values
//!
//! [`JoinHandle::join`] returns a [`ProcessError`] when there is no value: a panic comes
//! back with its message and location, and a backtrace when the child runs with
//! `RUST_BACKTRACE` set ([`RemotePanic`]); a crash such as
//! `SIGSEGV` or `abort()` is [`ProcessError::Signaled`]; `std::process::exit(3)` is
//! [`ProcessError::Exited`]. Every wait has a `_timeout` form, and
//! [`terminate`](JoinHandle::terminate)/[`kill`](JoinHandle::kill) stop a child.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let _guard = multiproc::init();
//! use std::time::Duration;
//!
//! let mut child = multiproc::spawn(|()| std::thread::sleep(Duration::from_secs(60)), ())?;
//! match child.join_timeout(Duration::from_millis(100)) {
//!     Err(e) if e.is_timeout() => child.kill()?,
//!     other => panic!("{other:?}"),
//! }
//! assert!(matches!(child.join(), Err(multiproc::ProcessError::Signaled(s)) if s == multiproc::Signal::KILL));
//! # Ok(())
//! # }
//! ```
//!
//! # Pipes and queues
//!
//! [`pipe`] gives a [`Sender`] and a [`Receiver`]; [`duplex`] gives two
//! [`Connection`]s (Python's `Pipe()`); a [`Queue`] is one handle that puts and gets from
//! any number of processes, and a [`JoinableQueue`] also counts unfinished tasks. Every
//! handle is `Clone + Serialize + Deserialize`: pass it to [`spawn`], return it from a
//! child, or send it through another pipe or queue, and it works there. (Handles travel
//! as descriptors, 8 for a `Sender` or `Receiver`, 9 for a `Queue`, 16 for a
//! `Connection`, and one message carries at most 253: 28 queues at once.)
//!
//! ```no_run
//! use multiproc::Queue;
//!
//! fn worker(q: Queue<Option<String>>) -> usize {
//!     let mut n = 0;
//!     while let Some(line) = q.get().unwrap() {
//!         n += line.len();
//!     }
//!     n
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let _guard = multiproc::init();
//! let q = Queue::bounded(100)?;
//! let child = multiproc::spawn(worker, q.clone())?;
//! for line in ["a", "bb", "ccc"] {
//!     q.put(Some(line.to_string()))?;
//! }
//! q.put(None)?;
//! assert_eq!(child.join()?, 6);
//! # Ok(())
//! # }
//! ```
//!
//! Messages travel through shared memory, without a feeder thread: whatever `put` or
//! `send` accepted is delivered even if its sender exits or is killed right after, and a
//! process killed in the middle of a `put` or `get` blocks nobody. When every sender is
//! gone, receivers get `Disconnected` rather than waiting forever (a `Queue` handle puts
//! as well as gets: its getters are told once every handle, their own included, is
//! closed with [`Queue::close`], dropped or gone). `Queue::new()` is
//! unbounded, as Python's is: its shared memory grows as needed, so `put` never waits
//! for room (a full ring gives consumers a millisecond to make some before it grows);
//! `Queue::bounded(n)` holds `n` items. Every blocking call has `try_` and `_timeout`
//! forms, and `async` ones (`recv_async`, `get_async`, `send_async`, `put_async`) that
//! work under any runtime. [`wait`] blocks until any of several receivers, queues,
//! processes or tasks is ready.
//!
//! Messages are encoded with serde, in postcard's format with integers written whole;
//! encode large byte buffers as bytes (`#[serde(with = "serde_bytes")]`), since a plain
//! `Vec<u8>` is encoded element by element. A value may nest 1024 levels deep (a
//! recursive list or tree: each sequence, map, tuple, struct, enum, present option and
//! newtype is a level) and hold 2^24 elements that take no bytes (`()`, empty structs);
//! past either, decoding fails with an error that says which, so that bytes from a
//! broken or hostile peer cannot run a stack out or loop for ever (a value nested
//! deeper is refused already by the sender's encode, with the same reason).
//!
//! # Locks and shared memory
//!
//! [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] and
//! [`Barrier`] synchronise processes, and threads of one process, with the same types.
//! [`Value`] and [`Array`] keep plain data ([`ShmSafe`]: any [`bytemuck::Pod`] type) in
//! shared memory behind a lock of their own, and [`SharedMemory`] is a block of bytes.
//! Like pipes and queues, every handle is `Clone + Serialize + Deserialize`.
//!
//! ```no_run
//! use multiproc::{Lock, Value};
//!
//! fn add((counter, lock): (Value<u64>, Lock)) {
//!     for _ in 0..1000 {
//!         let _held = lock.lock().unwrap_or_else(|died| died.into_inner());
//!         counter.store(counter.load() + 1);
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let _guard = multiproc::init();
//! let counter = Value::new(0)?;
//! let lock = Lock::new()?;
//! let children: Vec<_> = (0..10)
//!     .map(|_| multiproc::spawn(add, (counter.clone(), lock.clone())))
//!     .collect::<Result<_, _>>()?;
//! for child in children {
//!     child.join()?;
//! }
//! assert_eq!(counter.load(), 10_000);
//! # Ok(())
//! # }
//! ```
//!
//! A lock whose holder died (crashed, killed, or a thread that ended holding it) is not
//! a deadlock: the next `lock()` returns [`OwnerDied`] with the guard, and the lock works
//! as before afterwards. A [`Barrier`] party that dies (once it has waited on the
//! barrier: before that it cannot be told from a slow one) breaks the barrier for the
//! others.
//! Anonymous segments vanish with their last user; named ones
//! ([`SharedMemory::create`], [`Value::create_named`]) are removed by their creator, or
//! on its behalf when it dies (in a program that called [`init`]).
//!
//! # Pools
//!
//! A [`Pool`] keeps worker processes and runs functions on them: [`Pool::map`] (chunked
//! automatically), lazy [`Pool::imap`] and [`Pool::imap_unordered`], [`Pool::apply`], and
//! [`Pool::submit`], which returns a [`Task`] to wait for, cancel, or `.await` under any
//! async runtime. A [`ThreadPool`] has the same surface on threads, for closures.
//!
//! ```no_run
//! use multiproc::{Pool, RetryPolicy, TaskError};
//! use std::time::Duration;
//!
//! fn parse(input: String) -> usize {
//!     input.len() // imagine a parser in C that may crash on bad input
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let _guard = multiproc::init();
//! let pool = Pool::builder()
//!     .processes(4)
//!     .task_timeout(Duration::from_secs(10))
//!     .retry(RetryPolicy::attempts(2))
//!     .build()?;
//! let lens = pool.map(parse, ["a".to_string(), "bc".to_string()])?;
//! assert_eq!(lens, [1, 2]);
//! match pool.submit(parse, "untrusted".to_string())?.wait() {
//!     Ok(n) => println!("{n}"),
//!     Err(TaskError::WorkerDied(status)) => println!("the parser crashed: {status:?}"),
//!     Err(e) => println!("{e}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A worker that crashes, aborts, exits or is killed fails only the task it was running
//! ([`TaskError::WorkerDied`], or a retry per the [`RetryPolicy`]); the pool replaces it
//! and every other task completes. A task past its timeout, or cancelled while running,
//! is stopped by killing its worker. A panic fails its task; the worker goes on.
//!
//! # Executors: many tasks, callbacks, errors of your own
//!
//! What `concurrent.futures` and asyncio give Python programs works on tasks of any pool
//! (and cluster): [`as_completed`] yields each outcome as it finishes, [`wait_tasks`]
//! returns when the first completes, the first fails or all are done, [`wait`] takes
//! tasks beside pipes, queues and processes, and [`Task::on_done`] calls back. A
//! function that returns `Result` is submitted with [`Pool::submit_fallible`]: its `Err`
//! is the task's failure ([`TaskError::Failed`]), carrying the typed error, and a
//! [`RetryPolicy`] can retry on it. [`TaskOptions`] give one submission a timeout, a
//! retry policy or a delay; [`Pool::map_with`] sends a context once per worker; the
//! [`Executor`] trait lets code run on a [`Pool`], a [`ThreadPool`] or a cluster alike.
//!
//! ```no_run
//! use std::time::Duration;
//! use multiproc::{Pool, Return, TaskError};
//!
//! fn work(ms: u64) -> Result<u64, String> {
//!     std::thread::sleep(Duration::from_millis(ms));
//!     if ms == 0 { Err("nothing to do".to_string()) } else { Ok(ms) }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let _guard = multiproc::init();
//! let pool = Pool::new(4)?;
//! let tasks = [300, 100, 0, 200]
//!     .into_iter()
//!     .map(|ms| pool.submit_fallible(work, ms))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let (done, pending) = multiproc::wait_tasks(&tasks, Return::FirstException, None);
//! assert_eq!(done, [2]); // the `Err` came first
//! assert_eq!(pending.len(), 3);
//! for (i, outcome) in multiproc::as_completed(tasks) {
//!     match outcome {
//!         Ok(ms) => println!("task {i}: {ms} ms"),
//!         Err(TaskError::Failed(f)) => println!("task {i} failed: {}", f.decode::<String>()?),
//!         Err(e) => println!("task {i}: {e}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Managers
//!
//! A [`Manager`] is a server process holding shared objects — dicts, lists, sets, queues,
//! values, locks, semaphores, events, conditions, barriers, and types of your own
//! ([`manager::SharedObject`]) — which every process reaches through typed proxies that
//! can be passed to [`spawn`] and pool tasks. Served over TCP with a key, it shares them
//! between machines.
//!
//! ```no_run
//! use multiproc::Manager;
//! use multiproc::manager::DictProxy;
//!
//! fn tally(words: DictProxy<String, u32>) {
//!     for w in ["a", "b", "a"] {
//!         // d[w] += 1, atomically, whoever else is counting.
//!         words.update_with(w.to_string(), |n| n.unwrap_or(0) + 1).unwrap();
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let _guard = multiproc::init();
//! let manager = Manager::start()?;
//! let words = manager.dict::<String, u32>()?;
//! let kids: Vec<_> = (0..3)
//!     .map(|_| multiproc::spawn(tally, words.clone()))
//!     .collect::<Result<_, _>>()?;
//! for k in kids {
//!     k.join()?;
//! }
//! assert_eq!(words.get("a")?, Some(6));
//! # Ok(())
//! # }
//! ```
//!
//! A client that dies holding a managed lock releases it (the next holder is told);
//! a dead server makes every call return [`ManagerError::Disconnected`] at once, and a
//! server that stops answering makes calls fail after a timeout (but for waits without
//! one, such as a queue's `get` or a lock's `lock`, which wait for it). An object is freed
//! when no proxy in any process refers to it any more.
//!
//! # Background work
//!
//! A [`Scheduler`] runs [`Job`]s on a pool on a [`Schedule`]: every period, on a cron
//! expression in a time zone, or once; late runs, overlapping runs and failures are
//! handled by per-job policies and reported as events (with the `sqlite` feature a
//! `sched::JobStore` keeps schedules across restarts). A [`Supervisor`] keeps child
//! processes alive, restarting them with backoff within a restart intensity, and stops
//! them gracefully. [`daemonize`] detaches a service from its terminal.
//!
//! ```no_run
//! use std::time::Duration;
//! use multiproc::{ChildSpec, Job, Pool, Schedule, Scheduler, Supervisor};
//!
//! fn cleanup(days: u32) -> usize {
//!     days as usize // remove files older than `days`...
//! }
//!
//! fn serve(port: u16) {
//!     let _ = port; // a service that should never stop...
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let _guard = multiproc::init();
//! let scheduler = Scheduler::builder().pool(Pool::new(2)?).build()?;
//! scheduler.add(Job::process("cleanup", Schedule::cron_in("0 3 * * *", "Europe/Paris")?, cleanup, 7))?;
//! scheduler.add(Job::process("hourly", Schedule::every(Duration::from_secs(3600)), cleanup, 1))?;
//!
//! let web = Supervisor::builder().child(ChildSpec::new("web", serve, 8080)).build()?;
//! web.wait()?; // runs until the supervisor gives up or is stopped
//! # Ok(())
//! # }
//! ```
//!
//! # Beyond one machine
//!
//! With the `redis` feature, `cluster` gives the pool's surface on Redis Streams, for
//! workers on many hosts (where Python users move to Celery): declare a task once by
//! name, run `cluster::Worker` nodes that register its function, and submit from any
//! `cluster::Cluster` client; the result is the same [`Task`]. A worker that dies or
//! stalls loses nothing (its tasks are reclaimed when their lease runs out), a task
//! that keeps crashing ends in a dead-letter stream, and delays and retries live in
//! Redis.
//!
//! The `cluster` module's documentation has the worker and the client side by side.
//!
//! # Life cycle
//!
//! Children are named `Process-1`, `Process-2`, ... in start order unless named. When the
//! program's `main` returns (or it calls `std::process::exit`), daemon children are
//! terminated and the others are joined, as in Python. A daemon child also dies when its
//! parent is killed, which Python does not guarantee. [`current_process`],
//! [`parent_process`] and [`active_children`] describe the family.
//!
//! # Logging
//!
//! [`init_with`] runs a setup function in every process; with [`log::init`] (feature
//! `log`), every process logs as `{process name}: {message}`, Python's
//! `%(processName)s: %(message)s`.
//!
//! # Platforms
//!
//! Linux (kernel 5.4 or later): the design relies on pidfds, `PR_SET_PDEATHSIG`, memfds,
//! futexes and `/proc`. On other platforms the crate compiles, starting a process
//! returns [`SpawnError::Unsupported`] and creating a shared object
//! [`ShmError::Unsupported`].
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// The examples show `main` on purpose: `init()` belongs at its start.
#![allow(clippy::needless_doctest_main)]
// Elsewhere the `sys` backend refuses to start processes, so the code that manages them
// is unreachable there by design.
#![cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, unused_variables, unused_mut, unreachable_code)
)]

mod bootstrap;
mod broadcast;
#[cfg(feature = "redis")]
pub mod cluster;
mod deadline;
mod ipc;
#[cfg(feature = "log")]
pub mod log;
pub mod manager;
mod pool;
mod process;
pub mod sched;
mod select;
mod shm;
mod supervise;
mod sync;
mod sys;
mod timer;

mod wire;
pub use bootstrap::{Init, init, init_with};
pub use bootstrap::{PanicLocation, RemotePanic};
#[cfg(feature = "redis")]
pub use cluster::ClusterError;
pub use ipc::pipe::{Connection, Iter, Receiver, Sender, TryIter, duplex, pipe};
pub use ipc::queue::{JoinableQueue, Queue, TaskDoneError};
pub use ipc::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use manager::Manager;
pub use manager::ManagerError;
pub use pool::{AsCompleted, Return, as_completed, wait_tasks};
pub use pool::{
    Executor, Imap, ImapStream, ImapUnordered, Jitter, Pool, PoolBuilder, RetryPolicy, Task,
    TaskOptions, ThreadImap, ThreadImapStream, ThreadPool, ThreadPoolBuilder,
};
pub use pool::{Failure, PoolError, TaskError};
pub use process::{ExitStatus, ProcessError, Signal, SpawnError};
pub use sched::ScheduleError;
pub use sched::{Job, Schedule, Scheduler};
pub use select::{Waitable, wait};
pub use shm::shared::SharedMemory;
pub use shm::typed::ShmSafe;
pub use shm::{OutOfBounds, ShmError};
pub use supervise::{
    ChildExit, ChildSpec, ChildState, ChildStatus, Daemon, DaemonOptions, Restart, Strategy,
    Supervisor, SupervisorBuilder, SupervisorEvent, daemonize,
};
pub use supervise::{DaemonError, SupervisorError};
pub use sync::barrier::{Barrier, BarrierWaitResult};
pub use sync::condition::{Condition, WaitTimeoutResult};
pub use sync::event::Event;
pub use sync::lock::{Lock, LockGuard, RLock, RLockGuard};
pub use sync::semaphore::{BoundedSemaphore, Semaphore, SemaphorePermit};
pub use sync::value::{Array, ArrayGuard, Value, ValueGuard};
pub use sync::{BarrierError, LockResult, OverRelease, OwnerDied, TryLockError, TryLockResult};
pub use timer::Timer;
pub use wire::codec::CodecError;

/// The `bytemuck` crate, whose `Pod` types are [`ShmSafe`]: derive `Pod` and `Zeroable`
/// for a `#[repr(C)]` struct to keep it in a [`Value`] or [`Array`].
pub use bytemuck;

/// Dates and times as the [`sched`] module takes them (`chrono`), re-exported.
pub use chrono;

/// Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes frames from arbitrary bytes, as a peer could send them.
    pub fn frames(bytes: &[u8]) {
        crate::wire::framing::drain(bytes, 1 << 20);
    }

    /// Decodes arbitrary bytes as values of several types with multiproc's decoder:
    /// types the format shares with postcard against postcard's decoder (a panic where
    /// the two read them differently), types with wide integers on their own (a panic
    /// if the decoder panics, or reads a value that encodes to more bytes than it was
    /// read from, or overflows its stack on a recursive type).
    pub fn decode(bytes: &[u8]) {
        use crate::wire::decoder::{check_against_postcard as same, check_whole as whole};
        same::<(bool, i8, u8, f32, f64, char, String)>(bytes);
        same::<(Vec<u8>, Option<bool>, Result<u8, String>)>(bytes);
        same::<std::collections::BTreeMap<String, Vec<Option<i8>>>>(bytes);
        whole::<(u16, i32, i64, i128, u128, usize)>(bytes);
        whole::<Vec<(u64, Option<i16>)>>(bytes);
        whole::<Result<std::collections::BTreeMap<u32, String>, i64>>(bytes);
        whole::<crate::wire::decoder::Tree>(bytes);
    }

    /// Receives from a channel whose shared memory holds arbitrary bytes.
    pub fn ring(bytes: &[u8]) {
        crate::ipc::channel::corrupt_and_drain(bytes);
    }

    /// Decodes a cluster task message, outcome and reply from arbitrary bytes, as a
    /// stream entry written by anyone could hold them.
    #[cfg(feature = "redis")]
    pub fn cluster_message(bytes: &[u8]) {
        crate::cluster::decode_any(bytes);
    }
}
pub use process::{
    Builder, ChildProcess, CurrentProcess, JoinHandle, Limit, Limits, MemoryCap, ParentProcess,
    StartMethod, Stdio, active_children, cpu_count, current_process, get_start_method,
    parent_process, set_start_method, spawn,
};

/// The net under the unit tests and proptests of this crate (the default harness has
/// none): past ten minutes the test binary aborts, saying so. It starts before `main`,
/// in the test process only (never in a process multiproc starts, which must stay
/// single-threaded until it knows itself).
#[cfg(test)]
mod test_watchdog {
    #[ctor::ctor(unsafe)]
    fn start() {
        if [
            crate::bootstrap::CHILD_TOKEN,
            crate::bootstrap::SERVER_TOKEN,
        ]
        .iter()
        .any(|token| std::env::var_os(token).is_some())
        {
            return;
        }
        std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(600));
            eprintln!("unit tests ran for more than 10 minutes: a wait without a timeout");
            std::process::abort();
        });
    }
}
