//! A tour of multiproc: every example program, one after the other, faster.
//!
//! `cargo run --release --example tour`
//!
//! Each section is one of the examples (see their own files for the Python program they
//! reproduce and the output to expect). The tour sets a faster pace for their sleeps in
//! every process, with the same `init_with` setup function that configures logging.

#[path = "async_tasks.rs"]
mod async_tasks;
#[cfg(feature = "redis")]
#[path = "cluster_client.rs"]
mod cluster_client;
#[cfg(feature = "redis")]
#[path = "cluster_worker.rs"]
mod cluster_worker;
#[path = "daemon_process.rs"]
mod daemon_process;
#[path = "daemon_thread.rs"]
mod daemon_thread;
#[path = "manager_daemons.rs"]
mod manager_daemons;
#[path = "manager_remote.rs"]
mod manager_remote;
#[path = "process_barrier.rs"]
mod process_barrier;
#[path = "process_basic.rs"]
mod process_basic;
#[path = "process_daemon.rs"]
mod process_daemon;
#[path = "process_event.rs"]
mod process_event;
#[path = "process_lock_value.rs"]
mod process_lock_value;
#[path = "process_pipe.rs"]
mod process_pipe;
#[path = "process_pool.rs"]
mod process_pool;
#[path = "process_queue.rs"]
mod process_queue;
#[path = "scheduled_task.rs"]
mod scheduled_task;
#[path = "supervised_worker.rs"]
mod supervised_worker;
#[path = "thread_basic.rs"]
mod thread_basic;
#[path = "thread_lock.rs"]
mod thread_lock;
#[path = "thread_pool.rs"]
mod thread_pool;
#[path = "thread_queue.rs"]
mod thread_queue;

use std::time::Instant;

/// Runs in every process of the tour, children included.
fn setup() {
    multiproc::log::init();
    multiproc_examples::set_pace(0.25);
}

fn section(title: &str) {
    println!("\n== {title}");
}

/// Python's "no joins" variant needs a process that ends with its children unjoined;
/// here that process is a child of the tour, which then joins it.
fn daemon_without_joins(_: ()) {
    process_daemon::run(false);
}

/// The daemon examples end with their process: each runs as a child of the tour.
fn in_child(demo: fn(()), name: &str) {
    multiproc::Builder::new()
        .name(name)
        .spawn(demo, ())
        .expect("start")
        .join()
        .expect("the demo process");
}

fn daemon_thread_demo(_: ()) {
    daemon_thread::run();
}

fn daemon_process_demo(_: ()) {
    daemon_process::run();
}

/// The cluster examples on a throwaway `redis-server` (on a free port, in a temporary
/// directory, without persistence), when one is installed.
#[cfg(feature = "redis")]
fn cluster_demo() {
    use std::process::{Command, Stdio};
    // "Redis server v=7.0.15 sha=...": its major version, if it runs.
    let major = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let version = text.split("v=").nth(1).unwrap_or("").to_owned();
            (
                version
                    .split('.')
                    .next()
                    .and_then(|m| m.parse::<u32>().ok()),
                version,
            )
        });
    match major {
        None => {
            println!("skipped: redis-server is not installed (apt-get install -y redis-server)");
            return;
        }
        Some((Some(m), version)) if m < 7 => {
            let version = version.split_whitespace().next().unwrap_or("");
            println!("skipped: redis-server {version} is older than 7.0, which the cluster needs");
            return;
        }
        Some(_) => {}
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("multiproc-tour-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    /// The server and its directory, stopped and removed however the demo ends (a
    /// panic too): a `Child` dropped is left running.
    struct Server(std::process::Child, std::path::PathBuf);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("start redis-server: {e}")
        });
    let _server = Server(server, dir);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while let Err(e) = multiproc::cluster::Cluster::connect(&url) {
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer on port {port} within 10 s: {e}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let worker = multiproc::Builder::new()
        .name("cluster worker")
        .spawn(cluster_worker::serve, url.clone())
        .expect("start the worker");
    cluster_client::run(&url);
    worker.terminate().expect("stop the worker");
    worker.join().expect("the worker");
}

#[cfg(not(feature = "redis"))]
fn cluster_demo() {
    println!("skipped: the examples were built without the `redis` feature");
}

fn main() {
    let _guard = multiproc::init_with(setup);
    let start = Instant::now();

    section("thread_basic: five threads, joined");
    thread_basic::run();

    section("process_basic: two named processes, logging with their names");
    process_basic::run();

    section("process_daemon: a daemon and a non-daemon, both joined");
    process_daemon::run(true);

    section("process_daemon --no-join: the daemon is terminated when its parent ends");
    multiproc::Builder::new()
        .name("no-join demo")
        .spawn(daemon_without_joins, ())
        .expect("start")
        .join()
        .expect("the demo process");

    section("thread_queue: producer and consumer threads, a sentinel ends it");
    thread_queue::run();

    section("process_queue: producer and consumer processes, a sentinel ends it");
    process_queue::run();

    section("process_pipe: ping-pong over a two-way pipe");
    process_pipe::run();

    section("thread_lock: ten threads add to a counter under a lock");
    thread_lock::run();

    section("process_lock_value: ten processes do the same; then one dies holding the lock");
    process_lock_value::run();

    section("process_barrier: three processes meet at a barrier");
    process_barrier::run();

    section("process_event: one process waits for an event another sets");
    process_event::run();

    section("thread_pool: submitted closures, results collected; a panic fails one task");
    thread_pool::run();

    section("process_pool: five workers square 0..10; a crash fails one task only");
    process_pool::run();

    section("async_tasks: asyncio programs with tokio alone and with processes");
    async_tasks::run();

    section("manager_daemons: five daemons count under a managed lock; the manager stops");
    manager_daemons::run();

    section("manager_remote: a TCP manager, a producer and a consumer process");
    manager_remote::run();

    section("daemon_thread: a daemon thread prints while main sleeps; it ends with the process");
    in_child(daemon_thread_demo, "daemon_thread demo");

    section("daemon_process: the same with a daemon process, terminated when its parent ends");
    in_child(daemon_process_demo, "daemon_process demo");

    section("scheduled_task: a job every 10 s and a cron job, in a pool, while main works");
    scheduled_task::run();

    section("supervised_worker: a crashing worker restarted with backoff, then stopped");
    supervised_worker::run();

    section(
        "cluster_worker + cluster_client: process_pool on a Redis cluster, a crash dead-lettered",
    );
    cluster_demo();

    println!("\nTour done in {:.1?}.", start.elapsed());
}
