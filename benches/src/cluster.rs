//! multiproc's cluster (Redis Streams) side by side with Celery 5 (prefork) and RQ, on
//! one throwaway `redis-server` started here, each with 2 worker processes: one
//! multiproc worker node with a pool of 2, one Celery worker with `--concurrency 2`, two
//! RQ workers. Celery and RQ are installed from PyPI into a venv under `target/` by
//! [`peers::venv`] the first time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use multiproc::cluster::{Cluster, TaskDef, Worker};

use crate::memory::{Peaks, children, comm, peak_kib};
use crate::pool;

/// The trivial task.
pub const SQUARE: TaskDef<u64, u64> = TaskDef::new("bench.square");
/// The task that spins for 1 ms.
pub const SPIN: TaskDef<u64, u64> = TaskDef::new("bench.spin");

/// Processes that run tasks, in every implementation.
pub const PROCESSES: usize = 2;

/// A throwaway `redis-server`: a free port, a temporary directory, no persistence;
/// stopped (and its directory removed) when dropped.
#[derive(Debug)]
pub struct Redis {
    child: std::sync::Mutex<Child>,
    dir: PathBuf,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
}

impl Redis {
    /// Starts one, if `redis-server` is installed.
    pub fn start() -> Option<Arc<Redis>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = std::env::temp_dir().join(format!("multiproc-bench-redis-{port}"));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis {
            child: std::sync::Mutex::new(child),
            dir,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.cli(&["PING"]) {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Arc::new(redis))
    }

    /// Runs `redis-cli` with `args`; whether it succeeded.
    fn cli(&self, args: &[&str]) -> bool {
        Command::new("redis-cli")
            .arg("-u")
            .arg(&self.url)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Empties the server between runs.
    pub fn flush(&self) {
        self.cli(&["FLUSHALL"]);
    }

    /// `redis-server --version`'s version.
    pub fn version() -> Option<String> {
        let out = Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .map(str::to_string)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `cluster-worker URL` subcommand: a worker node with a pool of [`PROCESSES`],
/// until `SIGTERM`.
pub fn worker_main(url: &str) {
    Worker::builder(url)
        .processes(PROCESSES)
        .register(SQUARE, pool::square)
        .register(SPIN, pool::spin_ms)
        .run()
        .expect("cluster worker");
}

/// Processes started for one run, stopped (`SIGTERM`, then `SIGKILL` after 10 s) and
/// reaped when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.0 {
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A multiproc worker node: `exe cluster-worker URL`.
fn node(exe: &Path, redis: &Redis) -> Procs {
    redis.flush();
    let child = Command::new(exe)
        .arg("cluster-worker")
        .arg(&redis.url)
        .stdout(Stdio::null())
        .spawn()
        .expect("start a worker node");
    Procs(vec![child])
}

/// A client, once the node answers (untimed).
fn ready(redis: &Redis) -> Cluster {
    let c = Cluster::connect(&redis.url).expect("connect");
    c.map(SQUARE, 0..100u64).expect("warm-up");
    c
}

/// `n` trivial tasks submitted (in batches), then every result waited for.
pub fn throughput(exe: &Path, redis: &Redis, n: u64) -> Duration {
    let _node = node(exe, redis);
    let c = ready(redis);
    let t = Instant::now();
    let tasks = c.submit_batch(SQUARE, 0..n).expect("submit");
    for task in tasks {
        task.wait().expect("task");
    }
    t.elapsed()
}

/// `n` round trips (submit, wait) one after the other: percentile `p` of their
/// latencies, times `n` (so that the per-operation figure is that percentile).
pub fn round_trip(exe: &Path, redis: &Redis, n: u64, p: f64) -> Duration {
    let _node = node(exe, redis);
    let c = ready(redis);
    let mut lat = Vec::with_capacity(n as usize);
    for x in 0..n {
        let t = Instant::now();
        c.submit(SQUARE, x).expect("submit").wait().expect("task");
        lat.push(t.elapsed());
    }
    percentile(lat, p) * u32::try_from(n).unwrap_or(u32::MAX)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1));
    v.get(i).copied().unwrap_or_default()
}

/// `n` trivial tasks through one `map` (default chunking: about 64 chunks of up to
/// 1,024 items), with a Redis and a node of its own: `multiproc-bench loop cluster_map
/// N`.
pub fn trivial_map(n: u64) -> Duration {
    let redis = Redis::start()
        .expect("redis-server did not start (is it installed? apt-get install -y redis-server)");
    let exe = std::env::current_exe().expect("the benchmark's executable");
    let _node = node(&exe, &redis);
    let c = ready(&redis);
    let t = Instant::now();
    let out = c.map(SQUARE, 0..n).expect("map");
    let elapsed = t.elapsed();
    assert_eq!(out.len() as u64, n);
    elapsed
}

/// `n` tasks of 1 ms CPU through the cluster (`map`).
pub fn cpu(exe: &Path, redis: &Redis, n: u64) -> Duration {
    let _node = node(exe, redis);
    let c = ready(redis);
    let t = Instant::now();
    let out = c.map(SPIN, 0..n).expect("map");
    let elapsed = t.elapsed();
    assert_eq!(out.len() as u64, n);
    elapsed
}

/// The same on a local `Pool` of [`PROCESSES`].
pub fn local_cpu(n: u64) -> Duration {
    pool::cpu_map(PROCESSES, n)
}

/// Peak memory of a worker node that ran 1,000 trivial tasks: the node, one pool
/// process, its fork server.
pub fn node_peaks(exe: &Path, redis: &Redis) -> Peaks {
    let node = node(exe, redis);
    let c = ready(redis);
    c.map(SQUARE, 0..1000u64).expect("map");
    let pid = node.0[0].id().to_string();
    let server = children(&pid)
        .into_iter()
        .find(|p| comm(p) == "mp-forkserver");
    let worker = server
        .iter()
        .flat_map(|s| children(s))
        .filter(|p| comm(p) != "mp-forkserver")
        .map(|p| peak_kib(&p))
        .max();
    Peaks {
        parent: peak_kib(&pid),
        worker,
        server: server.map(|s| peak_kib(&s)),
    }
}

/// Celery and RQ, through `python/cluster_peers.py` in a venv of their own.
pub mod peers {
    use super::*;

    /// Celery (`celery[redis]`, 5.x) or RQ.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Peer {
        Celery,
        Rq,
    }

    impl Peer {
        fn name(self) -> &'static str {
            match self {
                Peer::Celery => "celery",
                Peer::Rq => "rq",
            }
        }
    }

    fn scripts() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
    }

    /// The venv's interpreter: made (and Celery and RQ installed from PyPI) the first
    /// time; `None` if that fails (no `python3 -m venv`, no registry).
    pub fn venv() -> Option<PathBuf> {
        static VENV: OnceLock<Option<PathBuf>> = OnceLock::new();
        VENV.get_or_init(|| {
            let dir =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/cluster-bench-venv");
            let python = dir.join("bin/python");
            let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
            let installed = || {
                ok(Command::new(&python)
                    .args(["-c", "import celery, rq, redis"])
                    .stderr(Stdio::null()))
            };
            if !installed() {
                eprintln!("installing Celery and RQ into {} ...", dir.display());
                let made = ok(Command::new("python3").arg("-m").arg("venv").arg(&dir))
                    && ok(Command::new(&python).args([
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "celery[redis]>=5,<6",
                        "rq>=1.16",
                    ]));
                if !made || !installed() {
                    eprintln!("could not install Celery and RQ: their rows are missing");
                    return None;
                }
            }
            Some(python)
        })
        .clone()
    }

    /// `celery X.Y.Z, rq X.Y.Z, redis-py X.Y.Z`.
    pub fn versions() -> Option<String> {
        let python = venv()?;
        let out = Command::new(python)
            .args([
                "-c",
                "import celery, rq, redis; print(f'Celery {celery.__version__}, RQ {rq.__version__}, redis-py {redis.__version__}')",
            ])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn workers(peer: Peer, redis: &Redis) -> Procs {
        redis.flush();
        let python = venv().expect("the venv");
        let count = match peer {
            Peer::Celery => 1,
            Peer::Rq => PROCESSES,
        };
        Procs(
            (0..count)
                .map(|_| {
                    Command::new(&python)
                        .current_dir(scripts())
                        .env("BENCH_REDIS_URL", &redis.url)
                        .args(["cluster_peers.py", "worker", peer.name(), &redis.url])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start a peer worker")
                })
                .collect(),
        )
    }

    /// Runs `workload` (`throughput`, `rtt50`, `rtt99`, `cpu`) on `n` tasks with fresh
    /// workers; the seconds the script reports.
    pub fn run(peer: Peer, redis: &Redis, workload: &str, n: u64) -> Duration {
        let _workers = workers(peer, redis);
        let python = venv().expect("the venv");
        crate::timed_command(
            Command::new(python)
                .current_dir(scripts())
                .args(["cluster_peers.py", "run", peer.name(), workload])
                .arg(n.to_string())
                .arg(&redis.url),
        )
    }

    /// Peak memory of the workers after 1,000 trivial tasks: Celery's main process and
    /// its largest pool child; the larger of the two RQ workers (each forks a
    /// short-lived child per job, gone when measured).
    pub fn peaks(peer: Peer, redis: &Redis) -> Peaks {
        let w = workers(peer, redis);
        let python = venv().expect("the venv");
        crate::timed_command(
            Command::new(python)
                .current_dir(scripts())
                .args(["cluster_peers.py", "run", peer.name(), "throughput", "1000"])
                .arg(&redis.url),
        );
        let pids: Vec<String> = w.0.iter().map(|c| c.id().to_string()).collect();
        match peer {
            Peer::Celery => Peaks {
                parent: peak_kib(&pids[0]),
                worker: children(&pids[0]).iter().map(|p| peak_kib(p)).max(),
                server: None,
            },
            Peer::Rq => Peaks {
                parent: pids.iter().map(|p| peak_kib(p)).max().unwrap_or(0),
                worker: None,
                server: None,
            },
        }
    }
}
