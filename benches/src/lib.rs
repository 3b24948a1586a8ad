//! Workloads for multiproc's benchmarks, shared by the criterion benches (`cargo bench`)
//! and the side-by-side comparison. Each workload runs `iters` operations and returns the
//! time they took, so that criterion's `iter_custom` and a plain timing loop both use it.
//!
//! Peers: CPython's `multiprocessing` (scripts in `python/`, run with the machine's
//! `python3`), procspawn, and the kernel floor (the same operation in plain `libc` calls,
//! without any library).
#![allow(unsafe_code)] // `spawn_fork` is unsafe by contract

pub mod compare;
pub mod floor;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use compare::{Check, Group, Impl, Rate, Target, Workload};
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
    use multiproc::{Connection, Queue};
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
        let start = Instant::now();
        for i in 0..n {
            q.put(i).expect("put");
        }
        consumer.join().expect("consumer");
        start.elapsed()
    }

    /// As [`queue_small`], with messages of `size` bytes (encoded as bytes).
    pub fn queue_bytes(size: usize, n: u64) -> Duration {
        let q = Queue::new().expect("queue");
        let consumer = multiproc::spawn(get_bytes, (q.clone(), n)).expect("spawn");
        let msg = vec![7u8; size];
        let start = Instant::now();
        for _ in 0..n {
            q.put(ByteBuf::from(msg.clone())).expect("put");
        }
        consumer.join().expect("consumer");
        start.elapsed()
    }

    fn pong(conn: Connection<u64, u64>) {
        while let Ok(x) = conn.recv() {
            conn.send(x + 1).expect("send");
        }
    }

    /// `n` round trips of a small message over a duplex pipe to a child process.
    pub fn pipe_round_trip(n: u64) -> Duration {
        let (ours, theirs) = multiproc::duplex::<u64, u64>().expect("pipe");
        let child = multiproc::spawn(pong, theirs).expect("spawn");
        ours.send(0).expect("send");
        let mut x = ours.recv().expect("recv");
        let start = Instant::now();
        for _ in 0..n {
            ours.send(x).expect("send");
            x = ours.recv().expect("recv");
        }
        let elapsed = start.elapsed();
        drop(ours);
        child.join().expect("pong");
        elapsed
    }
}

/// Starts two children running `f((arg, ready, go, n))`, waits until both have
/// released `ready`, and returns the time from setting `go` until both are joined.
pub fn two_on_go<A: Clone + serde::Serialize + serde::de::DeserializeOwned>(
    f: fn((A, multiproc::Semaphore, multiproc::Event, u64)),
    arg: &A,
    n: u64,
) -> Duration {
    let ready = multiproc::Semaphore::new(0).expect("semaphore");
    let go = multiproc::Event::new().expect("event");
    let kids: Vec<_> = (0..2)
        .map(|_| multiproc::spawn(f, (arg.clone(), ready.clone(), go.clone(), n)).expect("spawn"))
        .collect();
    for _ in 0..2 {
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

    /// Two processes each do `n / 2` dict operations (alternately a set and a get of
    /// one of 100 keys) on a manager's dict: the time from the go until both are joined.
    /// Over a local Unix socket, or over TCP loopback when `tcp`.
    pub fn dict_set_get(tcp: bool, n: u64) -> Duration {
        let mut builder = Manager::builder();
        if tcp {
            builder = builder.address("127.0.0.1:0".parse::<std::net::SocketAddr>().expect("addr"));
        }
        let (m, _server) = if tcp {
            let server = builder.serve().expect("serve");
            (server.manager().expect("connect"), Some(server))
        } else {
            (builder.start().expect("start"), None)
        };
        let d = m.dict::<u64, u64>().expect("dict");
        two_on_go(set_get, &d, n / 2)
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

    /// `Pool::imap` of `n` trivial tasks, one task per item.
    pub fn imap_one_by_one(n: u64) -> Duration {
        timed(
            PROCESSES,
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

    /// `n` `Pool::submit` calls, then `n` `Task::wait` calls.
    pub fn submit_wait(n: u64) -> Duration {
        timed(
            PROCESSES,
            |p| {
                let tasks: Vec<_> = (0..n)
                    .map(|x| p.submit(square, x).expect("submit"))
                    .collect();
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
        rayon_run(PROCESSES, n, square)
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

/// Runs a command that prints the seconds its own timed loop took, and returns them.
fn timed_command(command: &mut Command) -> Duration {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the command prints seconds");
    Duration::from_secs_f64(secs)
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
    groups
}

fn manager_group(exe: &Path, python: bool) -> Group {
    let mut w = vec![
        Workload::new(
            "multiproc Manager, Unix socket",
            Impl::Multiproc,
            40_000,
            |n| manager::dict_set_get(false, n),
        ),
        Workload::new(
            "multiproc Manager, TCP loopback",
            Impl::Multiproc,
            40_000,
            |n| manager::dict_set_get(true, n),
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
        targets: vec![Target {
            workload: "multiproc Manager, Unix socket",
            text: "≥ 10× CPython's Manager dict (≈ 31 k ops/s there: ≥ 310 k ops/s)",
            met: Check::Median(|d| d.as_secs_f64() <= 1.0 / 310e3),
        }],
        pairs: vec![
            ("multiproc Manager, Unix socket", "CPython Manager().dict()"),
            ("multiproc Manager, TCP loopback", "CPython Manager().dict()"),
            ("multiproc Manager, Unix socket", "pipe ping-pong"),
        ],
        notes: vec![
            "Every operation is a request and a response between a client process and the server process (a thread per connection there), as in CPython; the floor is one round trip between two processes over a pipe, with nothing decoded or stored.".into(),
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
            targets: vec![Target {
                workload: "multiproc Pool::map",
                text: "≥ 2× CPython's Pool.map",
                met: Check::Relative { of: "CPython Pool.map", ratio: 2.0 },
            }],
            pairs: vec![
                ("multiproc Pool::map", "CPython Pool.map"),
                ("multiproc Pool::map", "rayon par_iter (2 threads)"),
            ],
            notes: vec![
                "Both pools cut the input into about four chunks per worker. rayon runs threads in this process: no encoding, no copies, the ceiling for work this small.".into(),
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
                "Every task is its own message each way: the pool keeps each worker's queue a few tasks deep, in batches. The 500 k tasks/s target is missed on this 2-CPU machine: per task the parent encodes and queues the job, routes the outcome (the waiting thread routes outcomes itself while it waits, besides the pool's manager thread) and decodes it, and the two workers run on the same two CPUs; the per-task cost in the parent (about 2 µs of CPU) bounds the rate. `map_chunked(1)` submits every task at once and comes closer.".into(),
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
                cpython,
            ],
            headline: vec![("1 ms CPU-bound tasks", "multiproc Pool::map", "rayon par_iter (2 threads)")],
        },
    ]
}

fn sync_groups(exe: &Path, python: bool) -> Vec<Group> {
    let floor = |workload: &'static str| {
        let exe = exe.to_path_buf();
        move |n| spawn::floor(&exe, workload, n)
    };
    let py = |script: &'static str| move |n| python::run(script, &[], n);
    let mut lock = vec![Workload::new(
        "multiproc Value::lock",
        Impl::Multiproc,
        200_000,
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
        200_000,
        floor("mutex-counter"),
    ));
    lock.push(Workload::new(
        "pthread mutex, process-shared, robust",
        Impl::Floor,
        200_000,
        floor("robust-mutex-counter"),
    ));
    event.push(Workload::new(
        "futex hand-off",
        Impl::Floor,
        40_000,
        floor("futex-ping-pong"),
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
                "A waiter spins for 10 µs before it sleeps on a futex, so a hand-off between two busy processes usually costs no system call; the floor sleeps in the kernel every time.".into(),
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
    let mut rtt = vec![Workload::new(
        "multiproc duplex pipe",
        Impl::Multiproc,
        50_000,
        ipc::pipe_round_trip,
    )];
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
    rtt.push(Workload::new(
        "pipe ping-pong",
        Impl::Floor,
        50_000,
        floor("pipe-ping-pong"),
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
                ("multiproc Queue", "pipe, one write per message"),
            ],
            notes: vec![
                "multiproc's queue moves messages through shared memory and makes no system call while both sides keep up; the floor makes one `write` per message.".into(),
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
                ("multiproc Queue", "pipe, one write per message"),
            ],
            notes: vec![
                "The messages are `serde_bytes::ByteBuf`: a plain `Vec<u8>` is encoded element by element, about 30 times slower (see `crates/multiproc/src/ipc/channel/README.md`).".into(),
                cpython.clone(),
            ],
            headline: vec![("queue, 1 MiB messages", "multiproc Queue", "CPython Queue")],
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
                ("multiproc duplex pipe", "pipe ping-pong"),
            ],
            notes: vec![
                "Both sides spin for 30 µs before sleeping, so two processes that keep talking never enter the kernel; the floor sleeps in `read` each time.".into(),
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
    let rustc = command_line("rustc", &["--version"]);
    let python = python::version().unwrap_or_else(|| "not found".into());
    let procspawn = locked_version("procspawn").unwrap_or_else(|| "?".into());
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
         | procspawn | {procspawn} |\n",
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
