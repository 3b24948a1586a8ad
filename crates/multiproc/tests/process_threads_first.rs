//! Threads that exist before `init()`, as a `#[tokio::main]` runtime's do, do not stop
//! spawning: the fork server is then started by executing the program, and it (like a
//! `Spawn` child) recognises itself before `main`, so none of `main` runs in it.

mod common;

use std::time::Duration;

use common::*;
use multiproc::{Builder, Pool, StartMethod};

const T: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tests = vec![
        trial(
            "fork_server_is_started_by_exec",
            fork_server_is_started_by_exec,
        ),
        trial("spawn_method_child_runs_its_call", spawn_method_child),
        trial("pool_maps", pool_maps),
        trial("main_runs_once_in_a_threaded_program", main_runs_once),
    ];
    common::main(tests, helpers, Duration::from_secs(300));
}

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// What `ps` shows for a process: its command line, up to the first NUL.
fn cmdline(pid: u32) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The server was started by executing the program (a server forked at `init` would
/// carry this program's own command line), and it and its children are named in `ps`
/// as what they are.
fn fork_server_is_started_by_exec() {
    let mut child = Builder::new()
        .name("a-named-child")
        .spawn(sleep_ms, 10_000)
        .unwrap();
    assert!(eventually(T, || cmdline(child.pid()) == "a-named-child"));
    child.kill().unwrap();
    let _ = child.join_timeout(T);
    let server = fork_server_of(std::process::id()).expect("a fork server");
    assert_eq!(cmdline(server), "mp-forkserver");
}

fn spawn_method_child() {
    let mut child = Builder::new()
        .start_method(StartMethod::Spawn)
        .spawn(square, 9)
        .unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 81);
}

fn pool_maps() {
    let pool = Pool::new(2).unwrap();
    let squares = pool.map(square, 0..100u64).unwrap();
    assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
}

/// Every kind of start from a program whose runtime threads came first: the marker file
/// holds the helper's own `main` and nothing else.
fn main_runs_once() {
    let dir = tempdir("threads-first");
    let marker = dir.join("main");
    let exe = std::env::current_exe().unwrap();
    let mut helper = Helper::start_with(
        "spawn_every_way",
        exe,
        &[(MAIN_MARKER_ENV, marker.to_str().unwrap())],
    );
    assert_eq!(helper.expect("done:", T), "ok");
    assert!(helper.wait(T).success());
    let pid = helper.child.id();
    let lines = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(lines, format!("pre {pid}\npost {pid}\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn helpers(mode: &str) {
    match mode {
        "spawn_every_way" => {
            let mut forked = multiproc::spawn(square, 2).unwrap();
            let mut executed = Builder::new()
                .start_method(StartMethod::Spawn)
                .spawn(square, 3)
                .unwrap();
            let pool = Pool::new(2).unwrap();
            let ok = forked.join_timeout(T).unwrap() == 4
                && executed.join_timeout(T).unwrap() == 9
                && pool.map(square, 0..10u64).unwrap()[9] == 81;
            println!("done: {}", if ok { "ok" } else { "wrong results" });
        }
        other => panic!("unknown helper mode {other}"),
    }
}
