//! A pool worker: the process side, and the messages between it and the pool.
//!
//! A worker reads jobs from a channel of its own, claims each job's ticket (losing to a
//! `cancel` that came first), runs it, and sends the outcome on the pool's results
//! channel, shared by all workers. A panic is caught and reported; the worker goes on.
//!
//! A job is `JOB_HEADER` bytes (task id, ticket, ticket generation, entry, context) and
//! the encoded argument; an outcome is `OUTCOME_HEADER` bytes (task id, ticket, kind)
//! and a body that depends on the kind. Both are filled in place: the argument and the
//! result are encoded after room left for the header, so nothing is copied to add it.
//!
//! A `map_with` sends its context once to each worker that runs a chunk of it: a
//! control job (ticket `CONTROL`) before the first such chunk, which the worker keeps,
//! decoded on first use, until a second control job drops it. Its chunks name the
//! context in the header and run through a [`ChunkWith`] entry.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::tickets::Tickets;
use crate::bootstrap::{Invoked, caught_panic, drop_each_keeping_report};
use crate::deadline::Deadline;
use crate::ipc::channel::{RawReceiver, RawSender, RecvFail, SendFail};
use crate::sys::{self, Caller, ContextCaller, Entry, OwnedFd, Signature};
use crate::wire::codec::CodecError;
use crate::wire::codec::{self, Encoded};

/// A pool task's signature: the job's encoded argument and its descriptors in, what
/// came of the call out.
#[derive(Debug)]
pub(crate) struct TaskSig;

impl Signature for TaskSig {
    type Input<'a> = (&'a [u8], Vec<OwnedFd>);
    type Output = Invoked;
}

/// The function of a pool task, named for its workers.
pub(crate) type TaskEntry = Entry<TaskSig>;

/// Runs a job as one task ([`run_one`]).
#[derive(Debug)]
pub(crate) struct OneTask;

impl Caller for OneTask {
    type Sig = TaskSig;

    fn call<A, R>(f: fn(A) -> R, (bytes, fds): (&[u8], Vec<OwnedFd>)) -> Invoked
    where
        A: DeserializeOwned,
        R: Serialize,
    {
        run_one(f, bytes, fds)
    }
}

/// Runs a job as a chunk of tasks ([`run_chunk`]).
#[derive(Debug)]
pub(crate) struct Chunk;

impl Caller for Chunk {
    type Sig = TaskSig;

    fn call<A, R>(f: fn(A) -> R, (bytes, fds): (&[u8], Vec<OwnedFd>)) -> Invoked
    where
        A: DeserializeOwned,
        R: Serialize,
    {
        run_chunk(f, bytes, fds)
    }
}

/// A chunk of a `map_with`: the chunk's encoded arguments, their descriptors, and the
/// context this worker keeps for the map.
#[derive(Debug)]
pub(crate) struct ContextSig;

impl Signature for ContextSig {
    type Input<'a> = (&'a [u8], Vec<OwnedFd>, &'a mut ContextSlot);
    type Output = Invoked;
}

/// The function of a `map_with`, named for its workers.
pub(crate) type ContextEntry = Entry<ContextSig>;

/// A map's context as a worker keeps it: as it came, then decoded on first use.
#[derive(Debug, Default)]
pub(crate) struct ContextSlot {
    encoded: Option<(Vec<u8>, Vec<OwnedFd>)>,
    decoded: Option<Result<Box<dyn Any + Send>, crate::CodecError>>,
}

/// Runs a chunk of a `map_with` ([`run_chunk_with`]).
#[derive(Debug)]
pub(crate) struct ChunkWith;

impl ContextCaller for ChunkWith {
    type Sig = ContextSig;

    fn call<X, A, R>(
        f: fn(&X, A) -> R,
        (bytes, fds, slot): (&[u8], Vec<OwnedFd>, &mut ContextSlot),
    ) -> Invoked
    where
        X: DeserializeOwned + Send + 'static,
        A: DeserializeOwned,
        R: Serialize,
    {
        if slot.decoded.is_none() {
            let (bytes, fds) = slot.encoded.take().unwrap_or_default();
            slot.decoded =
                Some(codec::decode::<X>(&bytes, fds).map(|x| Box::new(x) as Box<dyn Any + Send>));
        }
        let ctx = match &slot.decoded {
            Some(Ok(ctx)) => match ctx.downcast_ref::<X>() {
                Some(ctx) => ctx,
                None => {
                    return Invoked::BadArgs(CodecError::new(
                        "the map's context is of another type",
                    ));
                }
            },
            Some(Err(e)) => return Invoked::BadArgs(e.clone()),
            None => return Invoked::BadArgs(CodecError::new("the map's context is missing")),
        };
        run_chunk(|a| f(ctx, a), bytes, fds)
    }
}

/// Bytes before a job's argument.
pub(crate) const JOB_HEADER: usize = 40;
/// The ticket of a control job (not a task): `generation` says what it does, `context`
/// which context.
pub(crate) const CONTROL: u32 = u32::MAX;
/// Control: keep the job's body as context `context`.
pub(crate) const CONTEXT_PUT: u32 = 1;
/// Control: drop context `context`.
pub(crate) const CONTEXT_DROP: u32 = 2;
/// Control: the pool retires this worker: it exits (its job channel closing says the
/// same, but not while another process holds a copy of the pool's sender, as a child
/// forked by `spawn_fork` does).
pub(crate) const RETIRE: u32 = 3;
/// Bytes before an outcome's body.
pub(crate) const OUTCOME_HEADER: usize = 16;

/// What an outcome says.
pub(crate) mod kind {
    /// The body is the encoded result.
    pub(crate) const RETURNED: u8 = 1;
    /// The body is an encoded `RemotePanic`.
    pub(crate) const PANICKED: u8 = 2;
    /// The argument did not decode; the body is the reason (UTF-8).
    pub(crate) const BAD_ARGS: u8 = 3;
    /// The result did not encode; the body is the reason (UTF-8).
    pub(crate) const UNENCODABLE: u8 = 4;
    /// The ticket was cancelled before the worker could start the job.
    pub(crate) const CANCELLED: u8 = 5;
    /// The worker could not get ready (its initializer failed); the body is the reason,
    /// the header's id the worker's pid.
    /// It exits after sending this.
    pub(crate) const INIT_FAILED: u8 = 6;
    /// The worker is ready (its initializer, if any, returned); the header's id is the
    /// worker's pid.
    pub(crate) const READY: u8 = 7;
}

/// The fixed part of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JobHeader {
    pub(crate) id: u64,
    pub(crate) ticket: u32,
    pub(crate) generation: u32,
    /// For a chunk of a `map_with` (`context` not 0), the words of a `ContextEntry`.
    pub(crate) entry: TaskEntry,
    /// The `map_with` context the job runs with (0: none).
    pub(crate) context: u64,
}

impl JobHeader {
    pub(crate) fn write(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&self.id.to_le_bytes());
        buf[8..12].copy_from_slice(&self.ticket.to_le_bytes());
        buf[12..16].copy_from_slice(&self.generation.to_le_bytes());
        let [trampoline, function] = self.entry.to_words();
        buf[16..24].copy_from_slice(&trampoline.to_le_bytes());
        buf[24..32].copy_from_slice(&function.to_le_bytes());
        buf[32..40].copy_from_slice(&self.context.to_le_bytes());
    }

    pub(crate) fn read(buf: &[u8]) -> Option<JobHeader> {
        let h = buf.get(..JOB_HEADER)?;
        Some(JobHeader {
            id: u64::from_le_bytes(h[0..8].try_into().ok()?),
            ticket: u32::from_le_bytes(h[8..12].try_into().ok()?),
            generation: u32::from_le_bytes(h[12..16].try_into().ok()?),
            entry: TaskEntry::from_words([
                u64::from_le_bytes(h[16..24].try_into().ok()?),
                u64::from_le_bytes(h[24..32].try_into().ok()?),
            ]),
            context: u64::from_le_bytes(h[32..40].try_into().ok()?),
        })
    }
}

/// The fixed part of an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutcomeHeader {
    pub(crate) id: u64,
    pub(crate) ticket: u32,
    pub(crate) kind: u8,
}

impl OutcomeHeader {
    fn write(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&self.id.to_le_bytes());
        buf[8..12].copy_from_slice(&self.ticket.to_le_bytes());
        buf[12] = self.kind;
        buf[13..16].fill(0);
    }

    pub(crate) fn read(buf: &[u8]) -> Option<OutcomeHeader> {
        let h = buf.get(..OUTCOME_HEADER)?;
        Some(OutcomeHeader {
            id: u64::from_le_bytes(h[0..8].try_into().ok()?),
            ticket: u32::from_le_bytes(h[8..12].try_into().ok()?),
            kind: h[12],
        })
    }
}

/// What a worker process is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    /// The pool's executable, which made the entries this worker will run.
    pub(crate) identity: [u64; 6],
    pub(crate) jobs: RawReceiver,
    pub(crate) results: RawSender,
    pub(crate) tickets: Tickets,
    /// The initializer and its encoded argument.
    pub(crate) init: Option<(TaskEntry, Encoded)>,
    /// CPU time each task may use (the limit moves before each).
    pub(crate) cpu_per_task: Option<std::time::Duration>,
    /// Whether the pool times its tasks (`task_timeout`): a map's chunk then restarts
    /// its ticket's clock at each item.
    pub(crate) timed: bool,
}

/// Whether this worker counts a chunk's time limits (the pool's timeout, the CPU
/// limit) per item: set once, when the worker starts. A plain flag, so that an
/// untimed map's items pay one load for it.
static PER_ITEM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    /// The chunk being run, when limits count per item: its ticket, and the CPU time
    /// each item may use.
    static CHUNK: std::cell::RefCell<Option<ChunkClock>> = const { std::cell::RefCell::new(None) };
}

/// What restarts a chunk's limits at each of its items.
struct ChunkClock {
    tickets: Tickets,
    ticket: u32,
    generation: u32,
    cpu: Option<std::time::Duration>,
}

/// A chunk's next item starts (the first once the chunk is decoded), or its values'
/// encoding does: its limits start again.
fn next_item() {
    CHUNK.with(|c| {
        if let Some(clock) = &*c.borrow() {
            clock
                .tickets
                .restart_clock(clock.ticket, clock.generation, sys::monotonic_ns());
            if let Some(cpu) = clock.cpu
                && let Err(e) = crate::bootstrap::arm_cpu_limit(cpu)
            {
                tracing::warn!("pool worker: cannot limit CPU time: {e}");
            }
        }
    });
}

/// Debug builds only, for a test: the one worker that creates the file named in
/// `MULTIPROC_TEST_STOP_HOLDING_RESULTS` stops itself (`SIGSTOP`) holding the results
/// channel's producers' lock, as it sends its first outcome.
#[cfg(debug_assertions)]
fn stop_holding_results_if_first() {
    let Some(mark) = std::env::var_os("MULTIPROC_TEST_STOP_HOLDING_RESULTS") else {
        return;
    };
    if std::fs::File::create_new(mark).is_ok() {
        crate::ipc::channel::STOP_HOLDING_TAIL.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A worker process's function: serves jobs until every job sender is gone.
pub(crate) fn worker_main(args: WorkerArgs) {
    let WorkerArgs {
        identity,
        jobs,
        results,
        tickets,
        init,
        cpu_per_task,
        timed,
    } = args;
    // Before the initializer, which may choose otherwise.
    sys::leave_interrupts_to_owner();
    PER_ITEM.store(
        timed || cpu_per_task.is_some(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let send = |header: OutcomeHeader, mut out: Encoded| {
        header.write(&mut out.bytes[..OUTCOME_HEADER]);
        let why = match results.send(out, Deadline::Never, false) {
            Ok(()) => return,
            // Never decoded: what it counts (a manager proxy in the result) goes back.
            // A pool that is gone reads nothing more; the worker ends with the next
            // receive.
            Err((out, SendFail::Disconnected)) => {
                out.discard();
                return;
            }
            Err((out, SendFail::Io(e))) => {
                out.discard();
                e.to_string()
            }
            Err((out, SendFail::Full)) => {
                out.discard();
                "the results channel is full".to_string()
            }
        };
        // The outcome could not go (a big result needs a descriptor of its own, and
        // the task left none free, say): the task fails with why, in a few bytes that
        // need nothing. A worker that cannot send even that ends, and the pool reports
        // its task's worker died; its task must not wait for ever.
        let mut bytes = vec![0; OUTCOME_HEADER];
        bytes.extend_from_slice(format!("the task's outcome could not be sent: {why}").as_bytes());
        OutcomeHeader {
            kind: kind::UNENCODABLE,
            ..header
        }
        .write(&mut bytes[..OUTCOME_HEADER]);
        let failed = Encoded::plain(bytes);
        if results.send(failed, Deadline::Never, false).is_err() {
            sys::exit_now(1);
        }
    };
    let report = |kind: u8, why: &str| {
        let mut bytes = vec![0; OUTCOME_HEADER];
        bytes.extend_from_slice(why.as_bytes());
        (
            OutcomeHeader {
                // No task's: the worker's own pid, so the pool knows which one failed.
                id: u64::from(sys::getpid()),
                ticket: u32::MAX,
                kind,
            },
            Encoded::plain(bytes),
        )
    };
    let proof = match sys::verify_image(&identity) {
        Ok(proof) => proof,
        Err(why) => {
            let (h, out) = report(kind::INIT_FAILED, &why);
            send(h, out);
            return;
        }
    };
    if let Some((entry, arg)) = init {
        let ran = panic::catch_unwind(AssertUnwindSafe(|| {
            sys::call(entry, &proof, (&arg.bytes, arg.fds))
        }));
        let why = match ran {
            Ok(Invoked::Returned(_)) => None,
            Ok(Invoked::BadArgs(e) | Invoked::Unencodable(e)) => Some(e.message().to_string()),
            Err(payload) => Some(caught_panic(payload).to_string()),
        };
        if let Some(why) = why {
            let (h, out) = report(kind::INIT_FAILED, &format!("the initializer failed: {why}"));
            send(h, out);
            return;
        }
    }
    let (h, out) = report(kind::READY, "");
    send(h, out);
    #[cfg(debug_assertions)]
    stop_holding_results_if_first();
    let mut contexts: FxHashMap<u64, ContextSlot> = FxHashMap::default();
    let mut retired = false;
    loop {
        let mut serve = |bytes: &[u8], fds: Vec<OwnedFd>| {
            let Some(job) = JobHeader::read(bytes) else {
                return;
            };
            if job.ticket == CONTROL {
                match job.generation {
                    CONTEXT_PUT => {
                        let slot = ContextSlot {
                            encoded: Some((bytes[JOB_HEADER..].to_vec(), fds)),
                            decoded: None,
                        };
                        contexts.insert(job.context, slot);
                    }
                    RETIRE => retired = true,
                    _ => {
                        contexts.remove(&job.context);
                    }
                }
                return;
            }
            let header = |kind| OutcomeHeader {
                id: job.id,
                ticket: job.ticket,
                kind,
            };
            if !tickets.claim(job.ticket, job.generation, sys::monotonic_ns()) {
                send(header(kind::CANCELLED), empty());
                return;
            }
            // Each task gets its whole allowance of CPU time, whatever earlier ones used.
            if let Some(cpu) = cpu_per_task
                && let Err(e) = crate::bootstrap::arm_cpu_limit(cpu)
            {
                tracing::warn!("pool worker: cannot limit CPU time: {e}");
            }
            if PER_ITEM.load(std::sync::atomic::Ordering::Relaxed) {
                CHUNK.with(|c| {
                    *c.borrow_mut() = Some(ChunkClock {
                        tickets: tickets.clone(),
                        ticket: job.ticket,
                        generation: job.generation,
                        cpu: cpu_per_task,
                    });
                });
            }
            let ran = panic::catch_unwind(AssertUnwindSafe(|| {
                if job.context == 0 {
                    return sys::call(job.entry, &proof, (&bytes[JOB_HEADER..], fds));
                }
                // The pool sends a map's context before its first chunk to a worker.
                let Some(slot) = contexts.get_mut(&job.context) else {
                    return Invoked::BadArgs(CodecError::new(
                        "the map's context did not reach this worker",
                    ));
                };
                let entry = ContextEntry::from_words(job.entry.to_words());
                sys::call(entry, &proof, (&bytes[JOB_HEADER..], fds, slot))
            }));
            if !tickets.finish(job.ticket, job.generation) {
                // The pool is killing this worker for this task (a cancel or a timeout
                // that came as it ended): it must not start the next one, which the
                // kill would fail.
                sys::exit_now(0);
            }
            match ran {
                Ok(Invoked::Returned(out)) => send(header(kind::RETURNED), out),
                Ok(Invoked::BadArgs(e)) => send(header(kind::BAD_ARGS), message(&e)),
                Ok(Invoked::Unencodable(e)) => send(header(kind::UNENCODABLE), message(&e)),
                Err(payload) => {
                    let report = caught_panic(payload);
                    let out = codec::encode_with_prefix(&[0; OUTCOME_HEADER], &report)
                        .unwrap_or_else(|e| message(&e));
                    send(header(kind::PANICKED), out);
                }
            }
        };
        match jobs.recv_with(Deadline::Never, &mut serve) {
            Ok(()) if retired => return,
            Ok(()) | Err(RecvFail::Empty) => {}
            // A job in a memory file of its own that this process has no address space
            // to map (its memory cap, `Limits::memory`, or an address-space limit it
            // inherited): it cannot be run here, and it stays in the channel, so the
            // worker ends as one whose allocation failed does, and the pool reports the
            // task's memory limit where it set one, `WorkerDied` with `SIGABRT`
            // otherwise (it ended with status 0, and the task failed as `WorkerDied`).
            Err(RecvFail::Io(e)) if sys::out_of_address_space(&e) => {
                let line = format!(
                    "multiproc: a pool worker has no address space to map its next task's \
                     argument in ({e}): it aborts\n"
                );
                sys::write_stderr(line.as_bytes());
                std::process::abort();
            }
            // A job with descriptors that this process has no room to take in (its
            // open-files limit, `Limits::open_files`, or one it inherited): it stays in
            // the channel, so the worker ends, with a status that says why, and the
            // pool reports the task's open-files limit where it set one (it ended with
            // status 0, and the task failed as `WorkerDied`).
            // (`ENFILE`, the system's table full, is not this process's limit: such a
            // worker says so, and exits with 1.)
            Err(RecvFail::Io(e)) if sys::out_of_descriptors(&e) => {
                let line = format!(
                    "multiproc: a pool worker has no descriptor free to take its next \
                     task's argument in ({e}): it exits\n"
                );
                sys::write_stderr(line.as_bytes());
                sys::exit_now(if e.raw_os_error() == Some(sys::EMFILE) {
                    crate::process::OUT_OF_DESCRIPTORS
                } else {
                    1
                });
            }
            // Every sender is gone: the pool retired this worker, or went away.
            Err(RecvFail::Disconnected | RecvFail::Broken(_) | RecvFail::Io(_)) => return,
        }
    }
}

fn empty() -> Encoded {
    Encoded::plain(vec![0; OUTCOME_HEADER])
}

fn message(e: &CodecError) -> Encoded {
    let mut bytes = vec![0; OUTCOME_HEADER];
    bytes.extend_from_slice(e.message().as_bytes());
    Encoded::plain(bytes)
}

/// Runs one task: decodes its argument, calls `f`, encodes the result after room for
/// the outcome header. Reached through [`OneTask`] and the typed trampolines in `sys`.
fn run_one<A, R>(f: fn(A) -> R, bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked
where
    A: DeserializeOwned,
    R: Serialize,
{
    let arg = match codec::decode::<A>(bytes, fds) {
        Ok(arg) => arg,
        Err(e) => return Invoked::BadArgs(e),
    };
    let value = f(arg);
    match codec::encode_with_prefix(&[0; OUTCOME_HEADER], &value) {
        Ok(out) => Invoked::Returned(out),
        Err(e) => Invoked::Unencodable(e),
    }
}

/// Runs a chunk of tasks: decodes a sequence of arguments and calls `f` on each; the
/// result is the values. A panic ends the chunk: it unwinds on to the worker's loop,
/// which sends it as the chunk's outcome (as a task's), once the items not run are
/// dropped.
fn run_chunk<A, R>(f: impl Fn(A) -> R, bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked
where
    A: DeserializeOwned,
    R: Serialize,
{
    let args = match codec::decode::<Vec<A>>(bytes, fds) {
        Ok(args) => args,
        Err(e) => return Invoked::BadArgs(e),
    };
    // The chunk stops at its first panic, as Python's does at its first exception: a
    // map fails with its first failure in item order, and a later item that ran on
    // could only hide it (one that ended the worker, or outran the time limit, made the
    // chunk fail as that; one that never returned held the map for ever). Sent as a
    // task's panic, it is one the pool's retry policy may retry (inside the chunk's
    // values, it never was).
    let mut values: Vec<R> = Vec::with_capacity(args.len());
    let per_item = PER_ITEM.load(std::sync::atomic::Ordering::Relaxed);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Each item's limits start as it does: the first's once the whole chunk is
        // decoded (which its clock counted from the chunk's start).
        if per_item {
            next_item();
        }
        match panic::catch_unwind(AssertUnwindSafe(|| f(arg))) {
            Ok(value) => values.push(value),
            Err(payload) => {
                // The items not run, and the values, are dropped one by one under a
                // catch: a `Drop` that panicked while this panic unwinds would abort
                // the worker.
                drop_each_keeping_report(args);
                drop_each_keeping_report(values);
                panic::resume_unwind(payload);
            }
        }
    }
    // The values' encoding has limits of its own, as long as an item's (counted in the
    // last item's, a whole chunk's encoding made it run out).
    if per_item {
        next_item();
    }
    // Results often take about the room their arguments took: start there (within
    // reason) rather than grow the buffer from nothing.
    let expect = bytes.len().min(1 << 20);
    match codec::encode_sized(&[0; OUTCOME_HEADER], &values, expect) {
        Ok(out) => Invoked::Returned(out),
        Err(e) => Invoked::Unencodable(e),
    }
}
