//! Workloads for multiproc's benchmarks, shared by the criterion benches (`cargo bench`)
//! and the side-by-side comparison. Each workload runs `iters` operations and returns the
//! time they took, so that criterion's `iter_custom` and a plain timing loop both use it.
//!
//! Peers: CPython's `multiprocessing` (scripts in `python/`, run with the machine's
//! `python3`), procspawn, and the kernel floor (the same operation in plain `libc` calls,
//! without any library).
#![allow(unsafe_code)] // `spawn_fork` is unsafe by contract

pub mod busy;
pub mod cluster;
pub mod compare;
pub mod floor;
pub mod plot;
pub mod scaling;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compare::{Check, Group, Impl, MemGroup, MemWorkload, Rate, Target, Workload};
use multiproc::StartMethod;

/// Calls this first in every benchmark binary's `main`: both libraries recognise their own
/// children here (procspawn first, so that its children do not start multiproc's server).
pub fn init() -> multiproc::Init {
    procspawn::init();
    multiproc::init()
}

/// The empty function that spawn benchmarks run.
pub fn noop(_: ()) {}

/// Spawn + join of an empty function.
pub mod spawn {
    use super::*;
    use multiproc::{Builder, StartMethod};

    /// multiproc, with a start method.
    pub fn multiproc(method: StartMethod, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            let child = Builder::new()
                .start_method(method)
                .spawn(noop, ())
                .expect("spawn");
            child.join().expect("join");
        }
        start.elapsed()
    }

    /// multiproc's `spawn_fork`: a direct fork of the benchmark process.
    pub fn multiproc_fork(iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            // SAFETY: the benchmark runs this on its only working thread, and the closure
            // does nothing.
            let child = unsafe { Builder::new().spawn_fork(|| ()) }.expect("fork");
            child.join().expect("join");
        }
        start.elapsed()
    }

    /// procspawn's `spawn` + `join`.
    pub fn procspawn(iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            procspawn::spawn((), |()| ())
                .join()
                .expect("procspawn join");
        }
        start.elapsed()
    }

    /// The floor, measured by `multiproc-bench floor` in a process of its own
    /// (`workload` is `fork-exit-wait` or `fork-exec-wait`).
    pub fn floor(exe: &Path, workload: &str, iters: u64) -> Duration {
        super::timed_command(
            Command::new(exe)
                .arg("floor")
                .arg(workload)
                .arg(iters.to_string()),
        )
    }
}

/// Queues and pipes between two processes.
pub mod ipc {
    use super::*;
    use multiproc::{Connection, Event, Queue, Semaphore};
    use serde_bytes::ByteBuf;

    fn get_small((q, n): (Queue<u64>, u64)) {
        for _ in 0..n {
            q.get().expect("get");
        }
    }

    fn get_bytes((q, n): (Queue<ByteBuf>, u64)) {
        for _ in 0..n {
            q.get().expect("get");
        }
    }

    /// `n` small items through a queue from this process to a consumer process; the
    /// time from the first put until the consumer has taken the last and exited.
    pub fn queue_small(n: u64) -> Duration {
        let q = Queue::new().expect("queue");
        let consumer = multiproc::spawn(get_small, (q.clone(), n)).expect("spawn");
        super::stream_to(consumer, n, |i| q.put(i).expect("put"))
    }

    /// `n` messages of `size` bytes put into an unbounded queue before its consumer
    /// process starts; the time from the first put until the consumer has taken the
    /// last and exited.
    pub fn queue_backlog(size: usize, n: u64) -> Duration {
        let q = Queue::new().expect("queue");
        let msg = ByteBuf::from(vec![7u8; size]);
        let start = Instant::now();
        for _ in 0..n {
            q.put_ref(&msg).expect("put");
        }
        let consumer = multiproc::spawn(get_bytes, (q.clone(), n)).expect("spawn");
        consumer.join().expect("consumer");
        start.elapsed()
    }

    /// As [`queue_small`], with messages of `size` bytes (encoded as bytes).
    pub fn queue_bytes(size: usize, n: u64) -> Duration {
        let q = Queue::new().expect("queue");
        let consumer = multiproc::spawn(get_bytes, (q.clone(), n)).expect("spawn");
        let msg = ByteBuf::from(vec![7u8; size]);
        super::stream_to(consumer, n, |_| q.put_ref(&msg).expect("put"))
    }

    fn pong(conn: Connection<u64, u64>) {
        while let Ok(x) = conn.recv() {
            conn.send(x + 1).expect("send");
        }
    }

    /// One side of [`queue_mpmc`]: puts `n` small items (a producer) or gets `n`.
    fn mpmc_side(((q, producer), ready, go, n): ((Queue<u64>, bool), Semaphore, Event, u64)) {
        ready.release();
        go.wait();
        for i in 0..n {
            if producer {
                q.put(i).expect("put");
            } else {
                q.get().expect("get");
            }
        }
    }

    /// `n` small items through one queue from `processes` producer processes to as many
    /// consumer processes (each moves `n / processes`): the time from the go, given when
    /// all have started, until all are joined.
    pub fn queue_mpmc(processes: usize, n: u64) -> Duration {
        let q = Queue::new().expect("queue");
        let each = n / processes as u64;
        let sides = (0..2 * processes)
            .map(|i| (q.clone(), i % 2 == 0))
            .collect();
        super::all_on_go(mpmc_side, sides, each)
    }

    /// `n` round trips of a small message over a duplex pipe to a child process.
    pub fn pipe_round_trip(n: u64) -> Duration {
        let (ours, theirs) = multiproc::duplex::<u64, u64>().expect("pipe");
        let child = multiproc::spawn(pong, theirs).expect("spawn");
        super::ping_pong(child, n, ours, |c, x| {
            c.send(x).expect("send");
            c.recv().expect("recv")
        })
    }
}

/// Times `n` round trips through `ends` (`round_trip` sends a number and returns the
/// answer) after one untimed, then drops `ends`, which ends `child`, and joins it.
fn ping_pong<E>(
    child: multiproc::JoinHandle<()>,
    n: u64,
    ends: E,
    round_trip: impl Fn(&E, u64) -> u64,
) -> Duration {
    let mut x = round_trip(&ends, 0);
    let start = Instant::now();
    for _ in 0..n {
        x = round_trip(&ends, x);
    }
    let elapsed = start.elapsed();
    drop(ends);
    child.join().expect("pong");
    elapsed
}

/// Times `n` calls of `send` (given 0, 1, ...), until `consumer`, which takes them all,
/// has exited.
fn stream_to(consumer: multiproc::JoinHandle<()>, n: u64, mut send: impl FnMut(u64)) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        send(i);
    }
    consumer.join().expect("consumer");
    start.elapsed()
}

/// Servo's ipc-channel, the peer for channels between processes: typed channels over
/// Unix sockets, set up through a one-shot server whose name the child is given.
pub mod ipc_channel {
    use super::*;
    use ::ipc_channel::ipc::{
        self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender,
    };
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// Starts a multiproc child running `child((server name, n))` and returns it with what
    /// it sent to the one-shot server: the child's ends of its channels.
    fn start<T: Serialize + DeserializeOwned>(
        child: fn((String, u64)),
        n: u64,
    ) -> (multiproc::JoinHandle<()>, T) {
        let (server, name) = IpcOneShotServer::<T>::new().expect("one-shot server");
        let process = multiproc::spawn(child, (name, n)).expect("spawn");
        let (_, ends) = server.accept().expect("accept");
        (process, ends)
    }

    fn boot<T: Serialize>(name: String, ends: T) {
        IpcSender::connect(name)
            .expect("connect")
            .send(ends)
            .expect("send the channel ends");
    }

    fn get_small((name, n): (String, u64)) {
        let (tx, rx) = ipc::channel::<u64>().expect("channel");
        boot(name, tx);
        for _ in 0..n {
            rx.recv().expect("recv");
        }
    }

    fn get_bytes((name, n): (String, u64)) {
        let (tx, rx): (IpcBytesSender, IpcBytesReceiver) =
            ipc::bytes_channel().expect("bytes channel");
        boot(name, tx);
        for _ in 0..n {
            rx.recv().expect("recv");
        }
    }

    fn pong((name, _): (String, u64)) {
        let (in_tx, in_rx) = ipc::channel::<u64>().expect("channel");
        let (out_tx, out_rx) = ipc::channel::<u64>().expect("channel");
        boot(name, (in_tx, out_rx));
        while let Ok(x) = in_rx.recv() {
            out_tx.send(x + 1).expect("send");
        }
    }

    /// As [`ipc::queue_small`](super::ipc::queue_small), over an `IpcSender<u64>`.
    pub fn small(n: u64) -> Duration {
        let (consumer, tx) = start::<IpcSender<u64>>(get_small, n);
        super::stream_to(consumer, n, |i| tx.send(i).expect("send"))
    }

    /// As [`ipc::queue_bytes`](super::ipc::queue_bytes), over an `IpcBytesSender` (raw
    /// bytes, no serde).
    pub fn bytes(size: usize, n: u64) -> Duration {
        let (consumer, tx) = start::<IpcBytesSender>(get_bytes, n);
        let msg = vec![7u8; size];
        super::stream_to(consumer, n, |_| tx.send(&msg).expect("send"))
    }

    /// As [`ipc::pipe_round_trip`](super::ipc::pipe_round_trip), over a pair of typed
    /// channels.
    pub fn round_trip(n: u64) -> Duration {
        let (child, ends) = start::<(IpcSender<u64>, IpcReceiver<u64>)>(pong, n);
        super::ping_pong(child, n, ends, |(tx, rx), x| {
            tx.send(x).expect("send");
            rx.recv().expect("recv")
        })
    }
}

/// Starts two children running `f((arg, ready, go, n))`, waits until both have
/// released `ready`, and returns the time from setting `go` until both are joined.
pub fn two_on_go<A: Clone + serde::Serialize + serde::de::DeserializeOwned>(
    f: fn((A, multiproc::Semaphore, multiproc::Event, u64)),
    arg: &A,
    n: u64,
) -> Duration {
    all_on_go(f, vec![arg.clone(), arg.clone()], n)
}

/// Starts a child running `f((arg, ready, go, n))` for each of `args`, waits until
/// every one has released `ready`, and returns the time from setting `go` until all
/// are joined.
pub fn all_on_go<A: Clone + serde::Serialize + serde::de::DeserializeOwned>(
    f: fn((A, multiproc::Semaphore, multiproc::Event, u64)),
    args: Vec<A>,
    n: u64,
) -> Duration {
    let ready = multiproc::Semaphore::new(0).expect("semaphore");
    let go = multiproc::Event::new().expect("event");
    let kids: Vec<_> = args
        .into_iter()
        .map(|arg| multiproc::spawn(f, (arg, ready.clone(), go.clone(), n)).expect("spawn"))
        .collect();
    for _ in 0..kids.len() {
        ready.acquire().forget();
    }
    // The clock starts before the go, not after this process is scheduled again.
    let t = Instant::now();
    go.set();
    for k in kids {
        k.join().expect("child");
    }
    t.elapsed()
}

/// Locks, events and barriers between processes.
pub mod sync {
    use super::*;
    use multiproc::{Barrier, Event, Semaphore, Value};

    fn add_locked((v, ready, go, n): (Value<u64>, Semaphore, Event, u64)) {
        ready.release();
        go.wait();
        for _ in 0..n {
            *v.lock().expect("owner died") += 1;
        }
    }

    /// Two processes each add 1 to a shared `Value` `n / 2` times under its lock; the
    /// time from the moment both are ready and told to go until both are joined.
    pub fn lock_counter(n: u64) -> Duration {
        let v = Value::new(0u64).expect("value");
        let elapsed = two_on_go(add_locked, &v, n / 2);
        assert_eq!(v.load(), n / 2 * 2);
        elapsed
    }

    fn pong_events((ping, pong, rounds): (Event, Event, u64)) {
        for _ in 0..rounds {
            ping.wait();
            ping.clear();
            pong.set();
        }
    }

    /// `n` hand-offs between two processes through two events: one sets an event, the
    /// other wakes, clears it and sets the other.
    pub fn event_handoff(n: u64) -> Duration {
        let rounds = n / 2;
        let (ping, back) = (Event::new().expect("event"), Event::new().expect("event"));
        let child =
            multiproc::spawn(pong_events, (ping.clone(), back.clone(), rounds + 1)).expect("spawn");
        let round = || {
            ping.set();
            back.wait();
            back.clear();
        };
        round();
        let t = Instant::now();
        for _ in 0..rounds {
            round();
        }
        let elapsed = t.elapsed();
        child.join().expect("pong");
        elapsed
    }

    fn pass_rounds((b, n): (Barrier, u64)) {
        for _ in 0..n {
            b.wait().expect("barrier");
        }
    }

    /// This process and a child pass a two-party barrier `n` times.
    pub fn barrier_rounds(n: u64) -> Duration {
        let b = Barrier::new(2).expect("barrier");
        let child = multiproc::spawn(pass_rounds, (b.clone(), n + 1)).expect("spawn");
        b.wait().expect("barrier");
        let t = Instant::now();
        for _ in 0..n {
            b.wait().expect("barrier");
        }
        let elapsed = t.elapsed();
        child.join().expect("party");
        elapsed
    }
}

/// A manager's dict shared by two processes.
pub mod manager {
    use super::*;
    use multiproc::manager::DictProxy;
    use multiproc::{Event, Manager, Semaphore};

    fn set_get((d, ready, go, n): (DictProxy<u64, u64>, Semaphore, Event, u64)) {
        ready.release();
        go.wait();
        for i in 0..n / 2 {
            d.insert(i % 100, i).expect("insert");
            d.get(&(i % 100)).expect("get").expect("present");
        }
    }

    /// How the clients reach the manager.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Transport {
        /// A Unix socket (the default address): calls go through shared memory.
        Unix,
        /// A TCP address on loopback: the clients find the server on their machine and
        /// move onto shared memory as well (the default).
        Tcp,
        /// A TCP address on loopback with the local transport off: every call is a
        /// frame on the socket each way, as for a client on another machine.
        TcpSocket,
    }

    /// Two processes each do `n / 2` dict operations (alternately a set and a get of
    /// one of 100 keys) on a manager's dict: the time from the go until both are joined.
    pub fn dict_set_get(transport: Transport, n: u64) -> Duration {
        let mut builder = Manager::builder();
        let tcp = transport != Transport::Unix;
        if tcp {
            builder = builder
                .address("127.0.0.1:0".parse::<std::net::SocketAddr>().expect("addr"))
                .local_transport(transport == Transport::Tcp);
        }
        let (m, _server) = if tcp {
            let server = builder.serve().expect("serve");
            (server.manager().expect("connect"), Some(server))
        } else {
            (builder.build().expect("start"), None)
        };
        let d = m.dict::<u64, u64>().expect("dict");
        two_on_go(set_get, &d, n / 2)
    }

    /// As [`dict_set_get`] over a Unix socket, with one client process: one client's
    /// round trip, without a second client taking turns with it for a CPU.
    pub fn dict_set_get_one_client(n: u64) -> Duration {
        let m = Manager::builder().build().expect("start");
        let d = m.dict::<u64, u64>().expect("dict");
        all_on_go(set_get, vec![d], n)
    }
}

/// Pools: maps, lazy maps, submit + wait, CPU-bound tasks; against rayon and procspawn.
pub mod pool {
    use super::*;
    use multiproc::Pool;

    /// Workers (threads for rayon) in every pool workload: the cores of a small machine.
    pub const PROCESSES: usize = 2;

    /// The trivial task.
    pub fn square(x: u64) -> u64 {
        x.wrapping_mul(x)
    }

    /// The CPU-bound task: spins for 1 ms.
    pub fn spin_ms(_: u64) -> u64 {
        let end = Instant::now() + Duration::from_millis(1);
        let mut i = 0u64;
        while Instant::now() < end {
            i = std::hint::black_box(i + 1);
        }
        i
    }

    /// Starts a pool of `processes` workers, warms it up, times `work` on it.
    fn timed(processes: usize, work: impl FnOnce(&Pool) -> usize, n: u64) -> Duration {
        let pool = Pool::new(processes).expect("pool");
        pool.map(square, 0..100).expect("warm-up");
        let t = Instant::now();
        let done = work(&pool);
        let elapsed = t.elapsed();
        assert_eq!(done as u64, n);
        elapsed
    }

    /// `Pool::map` of `n` trivial tasks, chunked automatically.
    pub fn map(n: u64) -> Duration {
        map_on(PROCESSES, n)
    }

    /// As [`map`], with `processes` workers.
    pub fn map_on(processes: usize, n: u64) -> Duration {
        timed(processes, |p| p.map(square, 0..n).expect("map").len(), n)
    }

    /// Maps of 100,000 trivial tasks one after another on one pool, `n` items in all:
    /// the steady state of [`map`], long enough for a profiler.
    pub fn maps_of_100k(n: u64) -> Duration {
        let maps = n.div_ceil(100_000);
        timed(
            PROCESSES,
            |p| {
                (0..maps)
                    .map(|_| p.map(square, 0..100_000u64).expect("map").len())
                    .sum()
            },
            maps * 100_000,
        )
    }

    /// `Pool::imap` of `n` trivial tasks, one task per item.
    pub fn imap_one_by_one(n: u64) -> Duration {
        imap_on(PROCESSES, n)
    }

    /// As [`imap_one_by_one`], with `processes` workers.
    pub fn imap_on(processes: usize, n: u64) -> Duration {
        timed(
            processes,
            |p| p.imap(square, 0..n).inspect(|r| assert!(r.is_ok())).count(),
            n,
        )
    }

    /// `Pool::map_chunked` with one item per task.
    pub fn map_chunk_1(n: u64) -> Duration {
        timed(
            PROCESSES,
            |p| p.map_chunked(square, 0..n, 1).expect("map").len(),
            n,
        )
    }

    /// `n` trivial tasks submitted.
    fn submit_all(p: &Pool, n: u64) -> Vec<multiproc::Task<u64>> {
        (0..n)
            .map(|x| p.submit(square, x).expect("submit"))
            .collect()
    }

    /// `n` `Pool::submit` calls, then `n` `Task::wait` calls.
    pub fn submit_wait(n: u64) -> Duration {
        submit_wait_on(PROCESSES, n)
    }

    /// As [`submit_wait`], with `processes` workers.
    pub fn submit_wait_on(processes: usize, n: u64) -> Duration {
        timed(
            processes,
            |p| {
                let tasks = submit_all(p, n);
                let mut done = 0;
                for t in tasks {
                    t.wait().expect("task");
                    done += 1;
                }
                done
            },
            n,
        )
    }

    /// `n` `Pool::submit` calls, then the results taken as they finish with
    /// `multiproc::as_completed`.
    pub fn as_completed(n: u64) -> Duration {
        timed(
            PROCESSES,
            |p| {
                let mut done = 0;
                for (_, r) in multiproc::as_completed(submit_all(p, n)) {
                    r.expect("task");
                    done += 1;
                }
                done
            },
            n,
        )
    }

    /// `Pool::map` of `n` 1 ms CPU-bound tasks, chunked automatically, on `processes`
    /// workers.
    pub fn cpu_map(processes: usize, n: u64) -> Duration {
        timed(processes, |p| p.map(spin_ms, 0..n).expect("map").len(), n)
    }

    /// rayon's parallel iterator over `n` 1 ms tasks on a pool of `threads` threads.
    pub fn rayon_cpu(threads: usize, n: u64) -> Duration {
        rayon_run(threads, n, spin_ms)
    }

    /// rayon's parallel map of `n` trivial tasks.
    pub fn rayon_map(n: u64) -> Duration {
        rayon_map_on(PROCESSES, n)
    }

    /// As [`rayon_map`], on `threads` threads.
    pub fn rayon_map_on(threads: usize, n: u64) -> Duration {
        rayon_run(threads, n, square)
    }

    fn rayon_run(threads: usize, n: u64, f: fn(u64) -> u64) -> Duration {
        use rayon::prelude::*;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("rayon pool");
        let t = Instant::now();
        let out: Vec<u64> = pool.install(|| (0..n).into_par_iter().map(f).collect());
        let elapsed = t.elapsed();
        assert_eq!(out.len() as u64, n);
        elapsed
    }

    /// procspawn's pool: `n` `spawn` calls, then `n` `join` calls.
    pub fn procspawn_submit_wait(n: u64) -> Duration {
        procspawn_run(n, square)
    }

    /// procspawn's pool running `n` 1 ms tasks.
    pub fn procspawn_cpu(n: u64) -> Duration {
        procspawn_run(n, spin_ms)
    }

    fn procspawn_run(n: u64, f: fn(u64) -> u64) -> Duration {
        let pool = procspawn::Pool::new(PROCESSES).expect("procspawn pool");
        for h in (0..10).map(|x| pool.spawn(x, square)).collect::<Vec<_>>() {
            h.join().expect("warm-up");
        }
        let t = Instant::now();
        let handles: Vec<_> = (0..n).map(|x| pool.spawn(x, f)).collect();
        for h in handles {
            h.join().expect("procspawn task");
        }
        let elapsed = t.elapsed();
        pool.shutdown();
        elapsed
    }
}

/// Peak resident memory of a 4-worker pool: of the process that owns it and of one
/// worker. Each measurement runs in a fresh `multiproc-bench rss IMPL` process, so that
/// nothing else this benchmark did is counted.
pub mod memory {
    use super::*;
    use multiproc::{Pool, StartMethod};

    /// Workers in the pool.
    pub const WORKERS: usize = 4;
    /// Trivial tasks the pool runs before anything is read.
    pub const TASKS: u64 = 1000;

    /// Peak resident set (`VmHWM`) of `/proc/<pid>/status`, in KiB (`pid` may be `self`).
    pub fn peak_kib(pid: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The task that reports its worker's peak.
    pub fn worker_peak(_: u64) -> u64 {
        peak_kib("self")
    }

    /// The `rss` subcommand: starts a pool of [`WORKERS`], runs [`TASKS`] trivial tasks,
    /// asks workers for their peak, and prints `PARENT_KIB WORKER_KIB SERVER_KIB` (`-`
    /// where the pool has no worker processes or no server).
    pub fn main(which: &str) {
        let worker = match which {
            "multiproc-forkserver" | "multiproc-spawn" => {
                let method = if which == "multiproc-spawn" {
                    StartMethod::Spawn
                } else {
                    StartMethod::ForkServer
                };
                let pool = Pool::builder()
                    .processes(WORKERS)
                    .start_method(method)
                    .build()
                    .expect("pool");
                pool.map(pool::square, 0..TASKS).expect("map");
                let peaks = pool
                    .map_chunked(worker_peak, 0..4 * WORKERS as u64, 1)
                    .expect("peaks");
                peaks.into_iter().max()
            }
            "procspawn" => {
                let pool = procspawn::Pool::new(WORKERS).expect("procspawn pool");
                let tasks: Vec<_> = (0..TASKS).map(|x| pool.spawn(x, pool::square)).collect();
                for t in tasks {
                    t.join().expect("task");
                }
                let peaks: Vec<_> = (0..4 * WORKERS as u64)
                    .map(|x| pool.spawn(x, worker_peak))
                    .collect();
                let peak = peaks.into_iter().map(|t| t.join().expect("peak")).max();
                pool.shutdown();
                peak
            }
            "rayon" => {
                use rayon::prelude::*;
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(WORKERS)
                    .build()
                    .expect("rayon pool");
                let out: Vec<u64> =
                    pool.install(|| (0..TASKS).into_par_iter().map(pool::square).collect());
                assert_eq!(out.len() as u64, TASKS);
                None
            }
            other => {
                eprintln!("unknown pool {other:?}");
                std::process::exit(2);
            }
        };
        // multiproc's fork server is this process's child named `mp-forkserver` (its
        // spare children, named the same until they are used, are the server's).
        let server = which
            .starts_with("multiproc")
            .then(|| {
                children("self")
                    .into_iter()
                    .find(|pid| comm(pid) == "mp-forkserver")
            })
            .flatten()
            .map(|pid| peak_kib(&pid));
        let show = |k: Option<u64>| k.map_or_else(|| "-".to_string(), |k| k.to_string());
        println!("{} {} {}", peak_kib("self"), show(worker), show(server));
    }

    /// The children of process `pid` (from each of its threads' `children` list).
    pub(crate) fn children(pid: &str) -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|c| c.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect()
    }

    /// The name of process `pid` (empty once it is gone).
    pub(crate) fn comm(pid: &str) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default()
    }

    /// Peaks in KiB of one pool's processes.
    #[derive(Clone, Copy, Debug)]
    pub struct Peaks {
        /// The process that owns the pool.
        pub parent: u64,
        /// The largest of its workers (none for a thread pool).
        pub worker: Option<u64>,
        /// The server workers are forked from, where there is one.
        pub server: Option<u64>,
    }

    /// Runs `command`, which prints `PARENT_KIB WORKER_KIB SERVER_KIB` (`-` for none).
    pub fn measure(command: &mut Command) -> Peaks {
        let text = super::stdout_of(command);
        let mut fields = text.split_whitespace().map(|f| f.parse().ok());
        Peaks {
            parent: fields.next().flatten().expect("the parent's peak"),
            worker: fields.next().flatten(),
            server: fields.next().flatten(),
        }
    }
}

/// CPython's `multiprocessing`, through the scripts in `python/`.
pub mod python {
    use super::*;

    /// Whether `python3` can be run here.
    pub fn available() -> bool {
        Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The interpreter's version, like `Python 3.11.7`.
    pub fn version() -> Option<String> {
        let out = Command::new("python3").arg("--version").output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `python/<script>` with `args` and `iters`; the script prints the seconds its
    /// timed loop took.
    pub fn run(script: &str, args: &[&str], iters: u64) -> Duration {
        let path = scripts().join(script);
        timed_command(
            Command::new("python3")
                .arg(&path)
                .args(args)
                .arg(iters.to_string()),
        )
    }

    fn scripts() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
    }
}

/// Runs a command that must succeed, and returns what it printed.
fn stdout_of(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that prints the seconds its own timed loop took, and returns them.
fn timed_command(command: &mut Command) -> Duration {
    let secs: f64 = stdout_of(command)
        .trim()
        .parse()
        .expect("the command prints seconds");
    Duration::from_secs_f64(secs)
}

/// The workloads `multiproc-bench loop NAME N` runs on their own, for a profiler
/// (`perf record`, `perf sched record`, `strace -f`): one run of `n` operations.
pub const LOOPS: &[&str] = &[
    "spawn",
    "spawn_fork",
    "queue",
    "queue1m",
    "backlog",
    "pipe",
    "event",
    "barrier",
    "lock",
    "map",
    "maps",
    "imap",
    "submit",
    "manager",
    "manager_one",
    "manager_tcp",
    "manager_tcp_socket",
    "cluster_map",
];

/// One run of the workload `name` (one of [`LOOPS`]) with `n` operations; `None` for an
/// unknown name.
pub fn run_loop(name: &str, n: u64) -> Option<Duration> {
    Some(match name {
        "spawn" => spawn::multiproc(StartMethod::ForkServer, n),
        "spawn_fork" => spawn::multiproc_fork(n),
        "queue" => ipc::queue_small(n),
        "queue1m" => ipc::queue_bytes(1 << 20, n),
        "backlog" => ipc::queue_backlog(1024, n),
        "pipe" => ipc::pipe_round_trip(n),
        "event" => sync::event_handoff(n),
        "barrier" => sync::barrier_rounds(n),
        "lock" => sync::lock_counter(n),
        "map" => pool::map(n),
        "maps" => pool::maps_of_100k(n),
        "imap" => pool::imap_one_by_one(n),
        "submit" => pool::submit_wait(n),
        "manager" => manager::dict_set_get(manager::Transport::Unix, n),
        "manager_one" => manager::dict_set_get_one_client(n),
        "manager_tcp" => manager::dict_set_get(manager::Transport::Tcp, n),
        "manager_tcp_socket" => manager::dict_set_get(manager::Transport::TcpSocket, n),
        "cluster_map" => cluster::trivial_map(n),
        _ => return None,
    })
}

/// Every group of the side-by-side comparison. `exe` is the `multiproc-bench` binary
/// (for the kernel floor).
pub fn groups(exe: &Path) -> Vec<Group> {
    let python = python::available();
    let mut groups = Vec::new();

    let mut w = vec![
        Workload::new("multiproc ForkServer", Impl::Multiproc, 500, |n| {
            spawn::multiproc(StartMethod::ForkServer, n)
        }),
        Workload::new("multiproc Spawn", Impl::Multiproc, 150, |n| {
            spawn::multiproc(StartMethod::Spawn, n)
        }),
        Workload::new(
            "multiproc spawn_fork",
            Impl::Multiproc,
            300,
            spawn::multiproc_fork,
        ),
        Workload::new("procspawn", Impl::Peer, 150, spawn::procspawn),
    ];
    if python {
        for (name, method, iters) in [
            ("CPython fork", "fork", 60),
            ("CPython forkserver", "forkserver", 40),
            ("CPython spawn", "spawn", 8),
        ] {
            w.push(Workload::new(name, Impl::Peer, iters, move |n| {
                python::run("mp_spawn.py", &[method], n)
            }));
        }
    }
    let (e1, e2) = (exe.to_path_buf(), exe.to_path_buf());
    w.push(Workload::new(
        "fork + exit + wait",
        Impl::Floor,
        1000,
        move |n| spawn::floor(&e1, "fork-exit-wait", n),
    ));
    w.push(Workload::new(
        "fork + exec + wait",
        Impl::Floor,
        150,
        move |n| spawn::floor(&e2, "fork-exec-wait", n),
    ));
    groups.push(Group {
        title: "Spawn + join latency",
        rate: Rate::None,
        operation: "start a process that runs an empty function, and join it",
        bench: "spawn",
        workloads: w,
        targets: vec![
            Target {
                workload: "multiproc ForkServer",
                text: "≤ 0.5 ms",
                met: Check::Median(|d| d <= Duration::from_micros(500)),
            },
            Target {
                workload: "multiproc Spawn",
                text: "≤ 3 ms",
                met: Check::Median(|d| d <= Duration::from_millis(3)),
            },
            Target {
                workload: "multiproc ForkServer",
                text: "≤ 1.5× the fork + exit + wait floor of this run",
                met: Check::Relative {
                    of: "fork + exit + wait",
                    ratio: 1.0 / 1.5,
                },
            },
        ],
        pairs: vec![
            ("multiproc ForkServer", "CPython forkserver"),
            ("multiproc Spawn", "CPython spawn"),
            ("multiproc spawn_fork", "CPython fork"),
            ("multiproc ForkServer", "procspawn"),
            ("multiproc ForkServer", "fork + exit + wait"),
            ("multiproc Spawn", "fork + exec + wait"),
        ],
        notes: vec![
            "`multiproc spawn_fork` forks the benchmark process itself, so its cost grows \
             with that process's size; ForkServer and Spawn fork from the small fork server, \
             which keeps one child forked ahead of time so that the fork is off the \
             caller's path. The floors are plain libc loops in a process of their own."
                .into(),
            "How much of the fork server's cost over the floor is its protocol, rather than \
             the weight of its processes: `gcc -O2 -o /tmp/spawn_protocol \
             benches/models/spawn_protocol.c`, then `/tmp/spawn_protocol MODE 3000` for each \
             MODE of `floor server lent lent-channel lent2`, interleaved (a model in C of this \
             protocol and of a spare lent to the parent ahead; figures and reading in \
             docs/DESIGN.md, \"Where a spawn's time goes\")."
                .into(),
            "Whether fork copying the code's page-table entries (rather than each child \
             faulting them in) would help: `gcc -O1 -o /tmp/fork_code_ptes \
             benches/models/fork_code_ptes.c`, then `/tmp/fork_code_ptes plain 2000` and \
             `/tmp/fork_code_ptes copied 2000`, interleaved (figures and reading in \
             docs/DESIGN.md, \"Where a spawn's time goes\")."
                .into(),
            "Each multiproc row does the work of its floor (a fork, an exit, the wait for \
             it) and its own besides; ForkServer's and Spawn's go over four processes (the \
             caller, the server, the child and the next spare): under one \
             busy loop, about 320 µs of CPU per spawn + join with the fork server against \
             74 µs for the fork + \
             exit + wait floor (`perf stat -e task-clock` of `multiproc-bench loop spawn \
             2000` against `multiproc-bench floor fork-exit-wait 2000`; on an idle machine \
             390–450 against 90 µs). On an idle machine part of that runs on the other CPU \
             while the caller waits; under load no CPU is spare, and no row can come under \
             its floor."
                .into(),
            if python {
                format!("CPython: {}.", python::version().unwrap_or_default())
            } else {
                "python3 was not found: the CPython rows are missing.".into()
            },
        ],
        headline: vec![
            (
                "spawn + join, fork server",
                "multiproc ForkServer",
                "CPython forkserver",
            ),
            (
                "spawn + join, fresh exec",
                "multiproc Spawn",
                "CPython spawn",
            ),
        ],
    });
    groups.extend(ipc_groups(exe, python));
    groups.extend(sync_groups(exe, python));
    groups.extend(pool_groups(python));
    groups.push(manager_group(exe, python));
    groups.extend(cluster_groups(exe));
    groups
}

/// The cluster against Celery and RQ on one throwaway `redis-server` (kept alive by the
/// workloads that use it, stopped when the groups are dropped).
fn cluster_groups(exe: &Path) -> Vec<Group> {
    use cluster::peers::{self, Peer};
    let Some(redis) = cluster::Redis::start() else {
        eprintln!(
            "redis-server is not installed (apt-get install -y redis-server): no cluster rows"
        );
        return Vec::new();
    };
    let peers_ok = peers::venv().is_some();
    let about = format!(
        "Redis {} on loopback, started by the benchmark, shared by every row; {} worker processes each: one multiproc worker node with a pool of {}, one Celery worker (`--pool prefork --concurrency {}`), {} RQ workers (each forks a child per job, its design). {}",
        cluster::Redis::version().unwrap_or_else(|| "?".into()),
        cluster::PROCESSES,
        cluster::PROCESSES,
        cluster::PROCESSES,
        cluster::PROCESSES,
        peers::versions().map_or_else(
            || "Celery and RQ could not be installed: their rows are missing.".to_string(),
            |v| format!("{v}, installed from PyPI into a venv under target/ by the benchmark."),
        )
    );
    let ours = |f: fn(&Path, &cluster::Redis, u64) -> Duration| {
        let (exe, redis) = (exe.to_path_buf(), Arc::clone(&redis));
        move |n| f(&exe, &redis, n)
    };
    let peer = |p: Peer, workload: &'static str| {
        let redis = Arc::clone(&redis);
        move |n| peers::run(p, &redis, workload, n)
    };
    let rtt = |q: f64| {
        let (exe, redis) = (exe.to_path_buf(), Arc::clone(&redis));
        move |n| cluster::round_trip(&exe, &redis, n, q)
    };
    let mut through = vec![Workload::new(
        "multiproc Cluster",
        Impl::Multiproc,
        10_000,
        ours(cluster::throughput),
    )];
    let mut rtt50 = vec![Workload::new(
        "multiproc Cluster",
        Impl::Multiproc,
        2_000,
        rtt(0.5),
    )];
    let mut rtt99 = vec![Workload::new(
        "multiproc Cluster",
        Impl::Multiproc,
        2_000,
        rtt(0.99),
    )];
    let mut cpu = vec![
        Workload::new(
            "multiproc Cluster",
            Impl::Multiproc,
            2_000,
            ours(cluster::cpu),
        ),
        Workload::new(
            "multiproc Pool (local)",
            Impl::Multiproc,
            2_000,
            cluster::local_cpu,
        ),
    ];
    if peers_ok {
        through.push(Workload::new(
            CELERY,
            Impl::Peer,
            2_000,
            peer(Peer::Celery, "throughput"),
        ));
        through.push(Workload::new(
            RQ,
            Impl::Peer,
            300,
            peer(Peer::Rq, "throughput"),
        ));
        rtt50.push(Workload::new(
            CELERY,
            Impl::Peer,
            300,
            peer(Peer::Celery, "rtt50"),
        ));
        rtt50.push(Workload::new(RQ, Impl::Peer, 100, peer(Peer::Rq, "rtt50")));
        rtt99.push(Workload::new(
            CELERY,
            Impl::Peer,
            300,
            peer(Peer::Celery, "rtt99"),
        ));
        rtt99.push(Workload::new(RQ, Impl::Peer, 100, peer(Peer::Rq, "rtt99")));
        cpu.push(Workload::new(
            CELERY,
            Impl::Peer,
            2_000,
            peer(Peer::Celery, "cpu"),
        ));
    }
    vec![
        Group {
            title: "Cluster throughput, trivial tasks",
            rate: Rate::Ops("tasks"),
            operation: "one `x * x` task of 10,000 submitted to a Redis queue, then every result gathered (multiproc: `submit_batch` + `Task::wait`; Celery: `delay` + `get`; RQ: `enqueue` + `latest_result`)",
            bench: "cluster",
            workloads: through,
            targets: vec![Target {
                workload: "multiproc Cluster",
                text: "≥ 10× Celery's throughput, measured in this run",
                met: Check::Relative { of: CELERY, ratio: 10.0 },
            }],
            pairs: vec![("multiproc Cluster", CELERY), ("multiproc Cluster", RQ)],
            notes: vec![
                "Peers run fewer tasks per run (Celery 2,000, RQ 300) to keep the run short; the figure is per task. Workers start fresh for every run and are warmed up (one task, or a 100-item map, round-trips) before the clock starts.".into(),
                about.clone(),
            ],
            headline: vec![("cluster, 10k trivial tasks", "multiproc Cluster", CELERY)],
        },
        Group {
            title: "Cluster round trip, median",
            rate: Rate::None,
            operation: "one task submitted and its result waited for, one after the other; the median latency of a run (2,000 round trips for multiproc, 300 for Celery, 100 for RQ)",
            bench: "cluster",
            workloads: rtt50,
            targets: vec![Target {
                workload: "multiproc Cluster",
                text: "≤ 1 ms on loopback",
                met: Check::Median(|d| d <= Duration::from_millis(1)),
            }],
            pairs: vec![("multiproc Cluster", CELERY), ("multiproc Cluster", RQ)],
            notes: vec![about.clone()],
            headline: vec![("cluster round trip, median", "multiproc Cluster", CELERY)],
        },
        Group {
            title: "Cluster round trip, 99th percentile",
            rate: Rate::None,
            operation: "as above; the 99th percentile latency of a run (the table's median is over runs)",
            bench: "cluster",
            workloads: rtt99,
            targets: Vec::new(),
            pairs: vec![("multiproc Cluster", CELERY), ("multiproc Cluster", RQ)],
            notes: vec![about.clone()],
            headline: Vec::new(),
        },
        Group {
            title: "Cluster, 1 ms CPU-bound tasks",
            rate: Rate::Ops("tasks"),
            operation: "one task that spins for 1 ms, of 2,000, through the cluster (`Cluster::map`) against the same map on a local `Pool` of the same 2 processes (the ideal is 0.5 ms per task)",
            bench: "cluster",
            workloads: cpu,
            targets: vec![Target {
                workload: "multiproc Cluster",
                text: "within 15% of the local Pool",
                met: Check::Relative { of: "multiproc Pool (local)", ratio: 1.0 / 1.15 },
            }],
            pairs: vec![("multiproc Cluster", "multiproc Pool (local)"), ("multiproc Cluster", CELERY)],
            notes: vec![
                "On a 2-CPU machine the worker node's pool shares the CPUs with Redis, the node's own threads and the client; the local Pool shares them with the client only.".into(),
                about,
            ],
            headline: vec![("cluster, 1 ms CPU-bound tasks", "multiproc Cluster", "multiproc Pool (local)")],
        },
    ]
}

/// The Celery row's name.
const CELERY: &str = "Celery 5 (prefork, 2 processes)";
/// The RQ row's name.
const RQ: &str = "RQ (2 workers)";

/// The memory comparison: a 4-worker pool of each kind, each in a fresh process.
pub fn mem_groups(exe: &Path) -> Vec<MemGroup> {
    let ours = |which: &'static str| {
        let exe = exe.to_path_buf();
        move || memory::measure(Command::new(&exe).arg("rss").arg(which))
    };
    let mut w = vec![
        MemWorkload::new(
            "multiproc Pool (ForkServer)",
            Impl::Multiproc,
            ours("multiproc-forkserver"),
        ),
        MemWorkload::new(
            "multiproc Pool (Spawn)",
            Impl::Multiproc,
            ours("multiproc-spawn"),
        ),
        MemWorkload::new("procspawn Pool", Impl::Peer, ours("procspawn")),
        MemWorkload::new("rayon (4 threads)", Impl::Peer, ours("rayon")),
    ];
    let python = python::available();
    if python {
        for (name, method) in [
            ("CPython Pool (fork)", "fork"),
            ("CPython Pool (forkserver)", "forkserver"),
            ("CPython Pool (spawn)", "spawn"),
        ] {
            w.push(MemWorkload::new(name, Impl::Peer, move || {
                memory::measure(
                    Command::new("python3")
                        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/mp_rss.py"))
                        .arg(method),
                )
            }));
        }
    }
    let mut groups = vec![MemGroup {
        title: "Memory: a 4-worker pool",
        workers: memory::WORKERS as u64,
        operation: "Start a pool of 4 workers, run 1,000 trivial tasks, then ask 16 tasks for their worker's peak; each row runs in a fresh process of its own (`multiproc-bench rss IMPL`, `python/mp_rss.py METHOD`).",
        workloads: w,
        pairs: vec![
            ("multiproc Pool (ForkServer)", "CPython Pool (fork)"),
            ("multiproc Pool (ForkServer)", "CPython Pool (forkserver)"),
            ("multiproc Pool (Spawn)", "CPython Pool (spawn)"),
            ("multiproc Pool (ForkServer)", "procspawn Pool"),
        ],
        notes: vec![
            "RSS counts pages shared between processes (a forked worker's copy-on-write pages, the binary's code) in each of them, so the last column overstates what the machine spends; it is the figure a process monitor shows.".into(),
            "The fork server moves the whole 2 MiB blocks of the program's code onto huge pages before it forks its workers (docs/DESIGN.md, \"Where a spawn's time goes\"): each process it forks counts such a block whole in its resident set, though all share one copy, and the server's peak includes the copy it made (`MULTIPROC_HUGE_CODE=0` keeps the code where it was loaded).".into(),
            "multiproc's fork server starts with `multiproc::init()` whichever start method a pool uses: Spawn workers are exec'd from it. The parent here is the `multiproc-bench` binary, which links procspawn, rayon and ipc-channel as well.".into(),
            "rayon runs its tasks on threads in the parent: it has no worker process to measure.".into(),
            python::version().map_or_else(
                || "python3 was not found: the CPython rows are missing.".to_string(),
                |v| format!("CPython: {v}."),
            ),
        ],
        headline: vec![("peak RSS of one pool worker", "multiproc Pool (ForkServer)", "CPython Pool (fork)")],
    }];
    groups.extend(cluster_mem_group(exe));
    groups
}

/// Peak memory of a cluster worker node against Celery's and RQ's workers.
fn cluster_mem_group(exe: &Path) -> Option<MemGroup> {
    use cluster::peers::{self, Peer};
    let redis = cluster::Redis::start()?;
    let mut w = vec![{
        let (exe, redis) = (exe.to_path_buf(), Arc::clone(&redis));
        MemWorkload::new(
            "multiproc Cluster worker node",
            Impl::Multiproc,
            move || cluster::node_peaks(&exe, &redis),
        )
    }];
    if peers::venv().is_some() {
        for (name, p) in [(CELERY, Peer::Celery), (RQ, Peer::Rq)] {
            let redis = Arc::clone(&redis);
            w.push(MemWorkload::new(name, Impl::Peer, move || {
                peers::peaks(p, &redis)
            }));
        }
    }
    Some(MemGroup {
        title: "Memory: a cluster worker node",
        workers: cluster::PROCESSES as u64,
        operation: "A worker node with 2 task processes runs 1,000 trivial tasks from a Redis queue; then the peaks of its processes are read. multiproc: the node process (parent), one pool process, its fork server. Celery: the main process and one prefork child. RQ: the larger of its two worker processes (its per-job children are gone when measured).",
        workloads: w,
        pairs: vec![("multiproc Cluster worker node", CELERY)],
        notes: vec![
            "RSS counts shared pages in each process, as a process monitor shows them: the worker's and the fork server's include a block of the program's code on huge pages (see the pool's memory section).".into(),
        ],
        headline: vec![(
            "peak RSS of a cluster node's task process",
            "multiproc Cluster worker node",
            CELERY,
        )],
    })
}

fn manager_group(exe: &Path, python: bool) -> Group {
    let mut w = vec![
        Workload::new(
            "multiproc Manager, Unix socket",
            Impl::Multiproc,
            40_000,
            |n| manager::dict_set_get(manager::Transport::Unix, n),
        ),
        Workload::new(
            "multiproc Manager, TCP loopback",
            Impl::Multiproc,
            40_000,
            |n| manager::dict_set_get(manager::Transport::Tcp, n),
        ),
        Workload::new(
            "multiproc Manager, TCP loopback, socket only",
            Impl::Multiproc,
            40_000,
            |n| manager::dict_set_get(manager::Transport::TcpSocket, n),
        ),
    ];
    if python {
        w.push(Workload::new(
            "CPython Manager().dict()",
            Impl::Peer,
            6_000,
            |n| python::run("mp_manager.py", &[], n),
        ));
    }
    let exe = exe.to_path_buf();
    w.push(Workload::new(
        "pipe ping-pong",
        Impl::Floor,
        50_000,
        move |n| spawn::floor(&exe, "pipe-ping-pong", n),
    ));
    Group {
        title: "Manager dict operations",
        rate: Rate::Ops("ops"),
        operation: "one dict operation (a set or a get) on a manager's dict, two client processes at once, counted over both",
        bench: "manager",
        workloads: w,
        targets: vec![
            Target {
                workload: "multiproc Manager, Unix socket",
                text: "≥ 10× CPython's Manager dict, measured in this run",
                met: Check::Relative {
                    of: "CPython Manager().dict()",
                    ratio: 10.0,
                },
            },
            Target {
                workload: "multiproc Manager, Unix socket",
                text: "≥ 310 k ops/s (10× the 31 k ops/s CPython did on the machine the goal was set on)",
                met: Check::Median(|d| d.as_secs_f64() <= 1.0 / 310e3),
            },
            Target {
                workload: "multiproc Manager, Unix socket",
                text: "≥ 25× CPython's Manager dict, measured in this run",
                met: Check::Relative {
                    of: "CPython Manager().dict()",
                    ratio: 25.0,
                },
            },
        ],
        pairs: vec![
            ("multiproc Manager, Unix socket", "CPython Manager().dict()"),
            ("multiproc Manager, TCP loopback", "CPython Manager().dict()"),
            (
                "multiproc Manager, TCP loopback, socket only",
                "CPython Manager().dict()",
            ),
            ("multiproc Manager, Unix socket", "pipe ping-pong"),
        ],
        notes: vec![
            "Every operation is a request and a response between a client process and the server process, as in CPython; the floor is one round trip between two processes over a pipe, with nothing decoded or stored.".into(),
            "Over the Unix socket, each connection moves onto two shared-memory channels after the handshake, so an operation makes no system call while both sides run, and one server thread (the dispatcher) serves both clients' requests. Over TCP, the server tells each client the name of the listener it keeps beside the TCP one in the abstract socket namespace; a client on the same machine connects there and moves onto channels as well (`TCP loopback`). With `local_transport(false)` (`socket only`, what a client on another machine gets), requests and responses are frames on the socket, a server thread per connection. Waiters spin for the answer only while spinning pays off, and yield the CPU otherwise, as long as their yields do not hand it to another job for whole time slices; then they sleep at once.".into(),
            python::version().map_or_else(
                || "python3 was not found: the CPython row is missing.".to_string(),
                |v| format!("CPython: {v}, `fork` context."),
            ),
        ],
        headline: vec![("manager dict ops", "multiproc Manager, Unix socket", "CPython Manager().dict()")],
    }
}

fn pool_groups(python: bool) -> Vec<Group> {
    let py = |args: &'static [&'static str]| move |n| python::run(args[0], &args[1..], n);
    let cpython = python::version().map_or_else(
        || "python3 was not found: the CPython rows are missing.".to_string(),
        |v| format!("CPython: {v}, `fork` context, 2 workers, pool started and warmed up before the clock starts (as for multiproc)."),
    );
    let mut map = vec![
        Workload::new("multiproc Pool::map", Impl::Multiproc, 100_000, pool::map),
        Workload::new(
            "rayon par_iter (2 threads)",
            Impl::Peer,
            100_000,
            pool::rayon_map,
        ),
    ];
    let mut one = vec![
        Workload::new(
            "multiproc Pool::imap",
            Impl::Multiproc,
            100_000,
            pool::imap_one_by_one,
        ),
        Workload::new(
            "multiproc Pool::map_chunked(1)",
            Impl::Multiproc,
            100_000,
            pool::map_chunk_1,
        ),
    ];
    let mut submit = vec![
        Workload::new(
            "multiproc submit + wait",
            Impl::Multiproc,
            10_000,
            pool::submit_wait,
        ),
        Workload::new(
            "procspawn Pool spawn + join",
            Impl::Peer,
            2_000,
            pool::procspawn_submit_wait,
        ),
    ];
    let mut completed = vec![Workload::new(
        "multiproc as_completed",
        Impl::Multiproc,
        10_000,
        pool::as_completed,
    )];
    let mut cpu = vec![
        Workload::new("multiproc Pool::map", Impl::Multiproc, 2_000, |n| {
            pool::cpu_map(pool::PROCESSES, n)
        }),
        Workload::new("rayon par_iter (2 threads)", Impl::Peer, 2_000, |n| {
            pool::rayon_cpu(pool::PROCESSES, n)
        }),
        Workload::new(
            "procspawn Pool spawn + join",
            Impl::Peer,
            2_000,
            pool::procspawn_cpu,
        ),
    ];
    if python {
        map.push(Workload::new(
            "CPython Pool.map",
            Impl::Peer,
            100_000,
            py(&["mp_pool.py", "map"]),
        ));
        one.push(Workload::new(
            "CPython Pool.imap",
            Impl::Peer,
            10_000,
            py(&["mp_pool.py", "imap1"]),
        ));
        one.push(Workload::new(
            "CPython Pool.map(chunksize=1)",
            Impl::Peer,
            10_000,
            py(&["mp_pool.py", "map1"]),
        ));
        submit.push(Workload::new(
            "CPython ProcessPoolExecutor",
            Impl::Peer,
            5_000,
            py(&["mp_pool.py", "executor"]),
        ));
        completed.push(Workload::new(
            "CPython as_completed",
            Impl::Peer,
            10_000,
            py(&["mp_pool.py", "as_completed"]),
        ));
        cpu.push(Workload::new(
            "CPython Pool.map",
            Impl::Peer,
            2_000,
            py(&["mp_pool.py", "cpu"]),
        ));
    }
    vec![
        Group {
            title: "Pool map, trivial tasks, default chunking",
            rate: Rate::Ops("tasks"),
            operation: "one item of a 100,000-item map of `x * x` over 2 workers, results collected in order",
            bench: "pool",
            workloads: map,
            targets: vec![
                Target {
                    workload: "multiproc Pool::map",
                    text: "≥ 10× CPython's Pool.map, measured in this run",
                    met: Check::Relative { of: "CPython Pool.map", ratio: 10.0 },
                },
                Target {
                    workload: "multiproc Pool::map",
                    text: "≤ 35 ns per item on 2 workers",
                    met: Check::Median(|d| d <= Duration::from_nanos(35)),
                },
            ],
            pairs: vec![
                ("multiproc Pool::map", "CPython Pool.map"),
                ("multiproc Pool::map", "rayon par_iter (2 threads)"),
            ],
            notes: vec![
                "CPython's Pool.map cuts the input into four chunks per worker; multiproc's into about sixteen, encoded only a few chunks ahead of the results, which the waiting thread routes and decodes itself (see `crates/multiproc/src/pool/README.md`). Each run starts a pool of its own (untimed) and warms it up with a map of 100 items. rayon runs threads in this process: no encoding, no copies, the ceiling for work this small.".into(),
                cpython.clone(),
            ],
            headline: vec![("Pool map, 100k trivial tasks", "multiproc Pool::map", "CPython Pool.map")],
        },
        Group {
            title: "Pool tasks one by one",
            rate: Rate::Ops("tasks"),
            operation: "one `x * x` task of a lazy map (or a map with one item per chunk) over 2 workers, results in order",
            bench: "pool",
            workloads: one,
            targets: vec![Target {
                workload: "multiproc Pool::imap",
                text: "≥ 500 k tasks/s",
                met: Check::Median(|d| d.as_secs_f64() <= 1.0 / 5e5),
            }],
            pairs: vec![
                ("multiproc Pool::imap", "CPython Pool.imap"),
                ("multiproc Pool::map_chunked(1)", "CPython Pool.map(chunksize=1)"),
            ],
            notes: vec![
                "Every task is its own message each way: the pool keeps each worker's queue up to 128 tasks deep (about 200 µs of work), filled in batches. Per task the parent encodes and queues the job, routes the outcome (the waiting thread routes outcomes itself while it waits, besides the pool's manager thread) and decodes it, while the two workers run on the same two CPUs: here the parent's share bounds the rate, and runs vary more than in other groups (see min and max). `map_chunked(1)` submits every task at once.".into(),
                cpython.clone(),
            ],
            headline: vec![("Pool imap, one task per item", "multiproc Pool::imap", "CPython Pool.imap")],
        },
        Group {
            title: "Pool submit + wait",
            rate: Rate::Ops("tasks"),
            operation: "one `x * x` task submitted (all first), then its result waited for (Python's `Executor.submit` + `Future.result`), 2 workers",
            bench: "pool",
            workloads: submit,
            targets: vec![Target {
                workload: "multiproc submit + wait",
                text: "≥ 200 k tasks/s",
                met: Check::Median(|d| d.as_secs_f64() <= 1.0 / 2e5),
            }],
            pairs: vec![
                ("multiproc submit + wait", "CPython ProcessPoolExecutor"),
                ("multiproc submit + wait", "procspawn Pool spawn + join"),
            ],
            notes: vec![
                "procspawn's pool opens two IPC channels per task.".into(),
                cpython.clone(),
            ],
            headline: vec![("submit + wait", "multiproc submit + wait", "CPython ProcessPoolExecutor")],
        },
        Group {
            title: "as_completed over trivial tasks",
            rate: Rate::Ops("tasks"),
            operation: "one `x * x` task of 10,000 submitted to a 2-worker process pool, its result taken as it finishes (`as_completed`)",
            bench: "pool",
            workloads: completed,
            targets: vec![Target {
                workload: "multiproc as_completed",
                text: "≥ 10× CPython's as_completed",
                met: Check::Relative { of: "CPython as_completed", ratio: 10.0 },
            }],
            pairs: vec![("multiproc as_completed", "CPython as_completed")],
            notes: vec![
                "multiproc: `Pool::submit` 10,000 times, then `multiproc::as_completed(tasks)`, which registers one board on the tasks' cells (no thread per task) and takes each outcome as its index is posted. CPython: `ProcessPoolExecutor.submit` 10,000 times, then `concurrent.futures.as_completed`.".into(),
                cpython.clone(),
            ],
            headline: vec![("as_completed, 10k tasks", "multiproc as_completed", "CPython as_completed")],
        },
        Group {
            title: "CPU-bound tasks, 1 ms each",
            rate: Rate::Ops("tasks"),
            operation: "one task that spins for 1 ms, of 2,000 mapped over 2 workers (the ideal is 0.5 ms per task)",
            bench: "pool",
            workloads: cpu,
            targets: vec![Target {
                workload: "multiproc Pool::map",
                text: "within 5% of rayon",
                met: Check::Relative { of: "rayon par_iter (2 threads)", ratio: 0.95 },
            }],
            pairs: vec![
                ("multiproc Pool::map", "rayon par_iter (2 threads)"),
                ("multiproc Pool::map", "CPython Pool.map"),
                ("multiproc Pool::map", "procspawn Pool spawn + join"),
            ],
            notes: vec![
                "The task is the same in every row: spin until 1 ms has passed. On a 2-CPU machine the benchmark process shares the CPUs with the workers, so what is measured is the overhead each pool adds around the work.".into(),
                "Under load (`--busy`), no implementation can be 10× faster than another here: each task takes 1 ms of the clock in every row. The row is in the busy table for the overhead a pool adds when a CPU is taken, which the ratio to rayon shows.".into(),
                cpython,
            ],
            headline: vec![("1 ms CPU-bound tasks", "multiproc Pool::map", "rayon par_iter (2 threads)")],
        },
    ]
}

/// Increments per run of the lock-protected counter (multiproc and the pthread floors):
/// enough that the run (20–30 ms) measures the lock rather than the start and the join
/// of its two processes, which under load add a millisecond or more to any run.
const LOCK_INCREMENTS: u64 = 2_000_000;

fn sync_groups(exe: &Path, python: bool) -> Vec<Group> {
    let floor = |workload: &'static str| {
        let exe = exe.to_path_buf();
        move |n| spawn::floor(&exe, workload, n)
    };
    let py = |script: &'static str| move |n| python::run(script, &[], n);
    let mut lock = vec![Workload::new(
        "multiproc Value::lock",
        Impl::Multiproc,
        LOCK_INCREMENTS,
        sync::lock_counter,
    )];
    let mut event = vec![Workload::new(
        "multiproc Event",
        Impl::Multiproc,
        40_000,
        sync::event_handoff,
    )];
    let mut barrier = vec![Workload::new(
        "multiproc Barrier",
        Impl::Multiproc,
        20_000,
        sync::barrier_rounds,
    )];
    if python {
        lock.push(Workload::new(
            "CPython Value + get_lock()",
            Impl::Peer,
            100_000,
            py("mp_lock.py"),
        ));
        event.push(Workload::new(
            "CPython Event",
            Impl::Peer,
            10_000,
            py("mp_event.py"),
        ));
        barrier.push(Workload::new(
            "CPython Barrier",
            Impl::Peer,
            5_000,
            py("mp_barrier.py"),
        ));
    }
    lock.push(Workload::new(
        "pthread mutex, process-shared",
        Impl::Floor,
        LOCK_INCREMENTS,
        floor("mutex-counter"),
    ));
    lock.push(Workload::new(
        "pthread mutex, process-shared, robust",
        Impl::Floor,
        LOCK_INCREMENTS,
        floor("robust-mutex-counter"),
    ));
    event.push(Workload::new(
        "futex hand-off",
        Impl::Floor,
        40_000,
        floor("futex-ping-pong"),
    ));
    event.push(Workload::new(
        "sched_yield hand-off, two processes on one CPU",
        Impl::OneCpu,
        40_000,
        floor("yield-ping-pong-one-cpu"),
    ));
    barrier.push(Workload::new(
        "pthread barrier, process-shared",
        Impl::Floor,
        20_000,
        floor("pthread-barrier"),
    ));
    let cpython = python::version().map_or_else(
        || "python3 was not found: the CPython rows are missing.".to_string(),
        |v| format!("CPython: {v}, `fork` context."),
    );
    vec![
        Group {
            title: "Lock-protected counter, two processes",
            rate: Rate::Ops("increments"),
            operation: "one increment of a shared counter under a process-shared lock, by two processes at once (timed from the go, given when both are ready, until both are joined)",
            bench: "sync",
            workloads: lock,
            targets: vec![Target {
                workload: "multiproc Value::lock",
                text: "≥ 0.8 × the process-shared pthread mutex",
                met: Check::Relative {
                    of: "pthread mutex, process-shared",
                    ratio: 0.8,
                },
            }],
            pairs: vec![
                ("multiproc Value::lock", "CPython Value + get_lock()"),
                ("multiproc Value::lock", "pthread mutex, process-shared"),
                (
                    "multiproc Value::lock",
                    "pthread mutex, process-shared, robust",
                ),
            ],
            notes: vec![
                "multiproc's lock is robust (a dead owner is reported, not waited for) without the kernel's robust list: the owner is named by thread id and start time, checked only by a waiter that has slept for a while.".into(),
                "None of these locks is fair: under this load the holder keeps retaking the lock while the other process sleeps (or, for multiproc, spins while backing off, then sleeps), so each process does long runs of increments; the numbers measure throughput.".into(),
                cpython.clone(),
            ],
            headline: vec![(
                "lock-protected counter, 2 processes",
                "multiproc Value::lock",
                "CPython Value + get_lock()",
            )],
        },
        Group {
            title: "Event hand-off",
            rate: Rate::None,
            operation: "one hand-off between two processes: one sets an event, the other wakes up (half a round trip through two events)",
            bench: "sync",
            workloads: event,
            targets: Vec::new(),
            pairs: vec![
                ("multiproc Event", "CPython Event"),
                ("multiproc Event", "futex hand-off"),
            ],
            notes: vec![
                "A waiter looks for up to 10 µs before it sleeps on a futex (spinning while that pays off, then yielding the CPU while yields do not hand it to another job for a whole time slice), so a hand-off between two busy processes usually costs no system call; the floor sleeps in the kernel every time.".into(),
                cpython.clone(),
            ],
            headline: vec![("event set → wake", "multiproc Event", "CPython Event")],
        },
        Group {
            title: "Barrier round, two processes",
            rate: Rate::None,
            operation: "one round of a two-party barrier passed by this process and a child",
            bench: "sync",
            workloads: barrier,
            targets: Vec::new(),
            pairs: vec![
                ("multiproc Barrier", "CPython Barrier"),
                ("multiproc Barrier", "pthread barrier, process-shared"),
            ],
            notes: vec![cpython],
            headline: vec![("barrier round", "multiproc Barrier", "CPython Barrier")],
        },
    ]
}

/// Messages of 1 KiB in the unbounded-queue workload: 100 MiB.
const BACKLOG: u64 = 100 << 10;

fn ipc_groups(exe: &Path, python: bool) -> Vec<Group> {
    let floor = |workload: &'static str| {
        let exe = exe.to_path_buf();
        move |n| spawn::floor(&exe, workload, n)
    };
    let py = |args: &'static [&'static str]| move |n| python::run(args[0], &args[1..], n);
    let mut small = vec![Workload::new(
        "multiproc Queue",
        Impl::Multiproc,
        500_000,
        ipc::queue_small,
    )];
    let mut large = vec![Workload::new(
        "multiproc Queue",
        Impl::Multiproc,
        500,
        |n| ipc::queue_bytes(1 << 20, n),
    )];
    let mut backlog = vec![Workload::new(
        "multiproc Queue::new()",
        Impl::Multiproc,
        BACKLOG,
        |n| ipc::queue_backlog(1 << 10, n),
    )];
    let mut rtt = vec![Workload::new(
        "multiproc duplex pipe",
        Impl::Multiproc,
        50_000,
        ipc::pipe_round_trip,
    )];
    small.push(Workload::new(
        "ipc-channel",
        Impl::Peer,
        200_000,
        ipc_channel::small,
    ));
    large.push(Workload::new("ipc-channel", Impl::Peer, 500, |n| {
        ipc_channel::bytes(1 << 20, n)
    }));
    rtt.push(Workload::new(
        "ipc-channel",
        Impl::Peer,
        20_000,
        ipc_channel::round_trip,
    ));
    if python {
        small.push(Workload::new(
            "CPython Queue",
            Impl::Peer,
            100_000,
            py(&["mp_queue.py", "0"]),
        ));
        large.push(Workload::new(
            "CPython Queue",
            Impl::Peer,
            300,
            py(&["mp_queue.py", "1048576"]),
        ));
        backlog.push(Workload::new(
            "CPython Queue()",
            Impl::Peer,
            BACKLOG,
            py(&["mp_queue.py", "1024", "backlog"]),
        ));
        rtt.push(Workload::new(
            "CPython Pipe",
            Impl::Peer,
            20_000,
            py(&["mp_pipe.py"]),
        ));
    }
    small.push(Workload::new(
        "pipe, one write per message",
        Impl::Floor,
        1_000_000,
        floor("pipe-stream-8"),
    ));
    large.push(Workload::new(
        "pipe, one write per message",
        Impl::Floor,
        1000,
        floor("pipe-stream-1m"),
    ));
    backlog.push(Workload::new(
        "shared memory written, then read by a forked child",
        Impl::Floor,
        BACKLOG,
        floor("shm-backlog-1k"),
    ));
    rtt.push(Workload::new(
        "pipe ping-pong",
        Impl::Floor,
        50_000,
        floor("pipe-ping-pong"),
    ));
    // A floor of hand-offs, timed per round trip (two hand-offs).
    let round_trips = |workload: &'static str| {
        let hand_offs = floor(workload);
        move |n| hand_offs(2 * n)
    };
    rtt.push(Workload::new(
        "one cache line, there and back",
        Impl::CacheLine,
        1_000_000,
        round_trips("line-ping-pong"),
    ));
    rtt.push(Workload::new(
        "sched_yield round trip, two processes on one CPU",
        Impl::OneCpu,
        50_000,
        round_trips("yield-ping-pong-one-cpu"),
    ));
    let cpython = python::version().map_or_else(
        || "python3 was not found: the CPython rows are missing.".to_string(),
        |v| format!("CPython: {v}, `fork` context."),
    );
    vec![
        Group {
            title: "Queue throughput, small messages",
            rate: Rate::Ops("msgs"),
            operation: "one small integer put by this process and got by a consumer process (timed from the first put until the consumer has the last one)",
            bench: "ipc",
            workloads: small,
            targets: vec![Target {
                workload: "multiproc Queue",
                text: "≥ 3 M msgs/s",
                met: Check::Median(|d| d.as_secs_f64() <= 1.0 / 3e6),
            }],
            pairs: vec![
                ("multiproc Queue", "CPython Queue"),
                ("multiproc Queue", "ipc-channel"),
                ("multiproc Queue", "pipe, one write per message"),
            ],
            notes: vec![
                "multiproc's queue moves messages through shared memory and makes no system call while both sides keep up; ipc-channel sends each message over a Unix socket (`IpcSender<u64>`); the floor makes one `write` per message.".into(),
                cpython.clone(),
            ],
            headline: vec![("queue, small messages", "multiproc Queue", "CPython Queue")],
        },
        Group {
            title: "Queue throughput, 1 MiB messages",
            rate: Rate::Bytes(1 << 20),
            operation: "one 1 MiB message (bytes) put by this process and got by a consumer process",
            bench: "ipc",
            workloads: large,
            targets: vec![Target {
                workload: "multiproc Queue",
                text: "≥ 4 GB/s",
                met: Check::Median(|d| d.as_secs_f64() <= (1u64 << 20) as f64 / 4e9),
            }],
            pairs: vec![
                ("multiproc Queue", "CPython Queue"),
                ("multiproc Queue", "ipc-channel"),
                ("multiproc Queue", "pipe, one write per message"),
            ],
            notes: vec![
                "The messages are `serde_bytes::ByteBuf`: a plain `Vec<u8>` is encoded element by element, about 30 times slower (see `crates/multiproc/src/ipc/channel/README.md`). ipc-channel's row uses its `IpcBytesSender`, which sends raw bytes without serde.".into(),
                "The queue is `Queue::new()` (unbounded): a `put` that finds its 4 MiB ring full gives the consumer up to 1 ms to make room there before it overflows into segments, so a consumer that keeps up reads memory it has just read; the producer puts one buffer again and again with `put_ref`, which encodes it straight into the shared memory (as CPython's `put` pickles the same object and ipc-channel's `send` takes a slice); the consumer gets a new `ByteBuf` each time.".into(),
                cpython.clone(),
            ],
            headline: vec![("queue, 1 MiB messages", "multiproc Queue", "CPython Queue")],
        },
        Group {
            title: "Unbounded queue, 100 MiB put before the consumer starts",
            rate: Rate::Bytes(1 << 10),
            operation: "one 1 KiB message (bytes) of 100 MiB put into an unbounded queue before its consumer process starts, then got by it (timed from the first put until the consumer has the last one)",
            bench: "ipc",
            workloads: backlog,
            targets: Vec::new(),
            pairs: vec![
                ("multiproc Queue::new()", "CPython Queue()"),
                (
                    "multiproc Queue::new()",
                    "shared memory written, then read by a forked child",
                ),
            ],
            notes: vec![
                "multiproc's `Queue::new()` never makes `put` wait for room (it gives the consumer 1 ms, once, before it leaves its ring): past its 4 MiB ring, messages go into overflow segments of the same shared memory (4 MiB each, made as needed, given back as the consumer reads them). CPython's `Queue()` buffers in the producer's memory, and its feeder thread writes to a pipe the consumer reads.".into(),
                "The floor is the same bytes in plain `libc` calls: copied message by message into new memfds of 4 MiB (mapped with `MAP_POPULATE`), then a forked child maps each, copies the messages out and closes it, which frees its pages. Most of its time is the kernel's: making, zeroing and freeing the 25,600 pages of shared memory that 100 MiB takes.".into(),
                "What multiproc does over the floor: its consumer copies each message twice (out of the ring into a buffer of its own, so that the message is consumed and the consumers' lock let go before the message's `Deserialize` runs; then into the new `ByteBuf`), the floor's reader once. `target/release/multiproc-bench loop backlog 102400` against `target/release/multiproc-bench floor shm-backlog-1k 102400`, interleaved on an idle machine: 1.30–1.47 against 1.12–1.26 µs a message; under `perf record -g` the producers' samples match, and the consumer's copying takes about three times the floor reader's.".into(),
                cpython.clone(),
            ],
            headline: vec![("queue, 100 MiB backlog", "multiproc Queue::new()", "CPython Queue()")],
        },
        Group {
            title: "Pipe round trip",
            rate: Rate::None,
            operation: "a small integer sent to a child process over a two-way pipe and sent back",
            bench: "ipc",
            workloads: rtt,
            targets: vec![Target {
                workload: "multiproc duplex pipe",
                text: "≤ 15 µs",
                met: Check::Median(|d| d <= Duration::from_micros(15)),
            }],
            pairs: vec![
                ("multiproc duplex pipe", "CPython Pipe"),
                ("multiproc duplex pipe", "ipc-channel"),
                ("multiproc duplex pipe", "pipe ping-pong"),
            ],
            notes: vec![
                "Both sides look for the next message for up to 30 µs before sleeping (spinning while that pays off, then yielding the CPU while yields do not hand it to another job for a whole time slice), so two processes that keep talking never enter the kernel; the floor sleeps in `read` each time.".into(),
                "On a quiet machine, *one cache line, there and back* is the same round trip through one word of shared memory, each side spinning on it (`multiproc-bench floor line-ping-pong N` for N hand-offs, or `benches/models/line_ping_pong.c`): what moving the turn between the two CPUs costs before any work. A message of the channel moves two such lines, the producers' position and the record, which the consumer asks for together (`crates/multiproc/src/ipc/channel/README.md`, \"Consuming\"). On a virtual machine it moves by several times with the two CPUs a run gets; it is left out under load, where a spinner waiting for its peer's CPU spins out whole time slices.".into(),
                cpython,
            ],
            headline: vec![("pipe round trip", "multiproc duplex pipe", "CPython Pipe")],
        },
    ]
}

/// The report's opening: what ran where, and how to run it again.
pub fn header(runs: usize) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = command_line("uname", &["-sr"]);
    // The compiler that built this binary, which may run where none is installed.
    let rustc = env!("MULTIPROC_BENCH_RUSTC");
    let python = python::version().unwrap_or_else(|| "not found".into());
    let [procspawn, ipc_channel, rayon] = ["procspawn", "ipc-channel", "rayon"]
        .map(|c| locked_version(c).unwrap_or_else(|| "?".into()));
    format!(
        "# Benchmarks\n\n\
         Every number below comes from one run of\n\n\
         ```text\ncargo run --release -p multiproc-bench -- --compare\n```\n\n\
         which runs each workload {runs} times, interleaved with its peers, and wrote this file. \
         Medians are per operation; ratios are between medians of the same run.\n\n\
         | | |\n|---|---|\n\
         | CPU | {cpu} ({cores} logical CPUs available) |\n\
         | kernel | {kernel} |\n\
         | rustc | {rustc} |\n\
         | multiproc | {} |\n\
         | CPython | {python} |\n\
         | procspawn | {procspawn} |\n\
         | ipc-channel | {ipc_channel} |\n\
         | rayon | {rayon} |\n",
        env!("CARGO_PKG_VERSION")
    )
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The version of a dependency, from the workspace's `Cargo.lock`.
fn locked_version(name: &str) -> Option<String> {
    let lock =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
            .ok()?;
    let needle = format!("name = \"{name}\"\nversion = \"");
    let at = lock.find(&needle)? + needle.len();
    Some(lock[at..].split('"').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `multiproc-bench loop` runs what it names, and refuses a name it does not know.
    #[test]
    fn a_loop_runs_its_workload() {
        let _guard = init();
        assert!(run_loop("no such workload", 1).is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for name in ["spawn", "pipe", "event", "queue"] {
                let took = run_loop(name, 20);
                tx.send((name, took)).expect("send");
            }
        });
        for _ in 0..4 {
            let (name, took) = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a loop of 20 operations within a minute");
            assert!(took.is_some_and(|d| d > Duration::ZERO), "{name}: {took:?}");
        }
    }
}
