//! A process that multiproc starts never runs the program's `main`: not when its parent
//! or its fork server is gone before it starts, not while the program is exiting.
//!
//! Each scenario runs [`ROUNDS`] times, each time in a fresh helper process (this binary
//! in a helper mode) that leads a process group of its own, so that everything it starts
//! can be found and waited for. Every run of `main` appends `pre PID` (before `init()`)
//! and `post PID` (after it) to a marker file: after a round, the file must hold the
//! helper's two lines and nothing else, and nothing of the helper's group may be left.
#![allow(unsafe_code)] // helpers end with `_exit` and `SIGKILL` at chosen moments

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use multiproc::{Builder, Pool, StartMethod};

const ROUNDS: usize = 50;
/// How long a round's processes may take to end on their own.
const SETTLE: Duration = Duration::from_secs(30);

const SCENARIOS: &[(&str, &str)] = &[
    ("spawn_child_then_parent_exits", "spawn_then_exit"),
    ("spawn_child_then_parent_killed", "spawn_then_killed"),
    ("fork_server_killed_while_parent_lives", "server_killed"),
    (
        "exec_fork_server_then_parent_killed",
        "exec_server_then_killed",
    ),
    ("pool_then_exit", "pool_then_exit"),
    ("pool_in_static_main_returns", "static_pool"),
    ("scheduler_then_exit", "scheduler_then_exit"),
    ("killed_during_pool_new", "killed_in_pool_new"),
    ("child_building_pool_killed", "child_pool_killed"),
    ("task_that_spawns_killed_by_timeout", "task_timeout_spawner"),
    (
        "spawn_child_stalled_before_main_parent_killed",
        "stalled_child",
    ),
    (
        "exec_fork_server_stalled_before_main_parent_killed",
        "stalled_server",
    ),
];

/// Set in a process this binary starts: the program's own constructor (which runs
/// before multiproc's, at its `late` priority) waits until this file exists, so a
/// process started by exec stalls before it can know what it is.
const STALL_ENV: &str = "MP_TEST_STALL_UNTIL";

// The program's own code before `main`: a constructor of the test binary.
#[ctor::ctor(unsafe)]
fn stall_before_main() {
    if let Some(file) = std::env::var_os(STALL_ENV) {
        let until = Instant::now() + SETTLE;
        while !std::path::Path::new(&file).exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn main() {
    let mut tests: Vec<_> = SCENARIOS
        .iter()
        .map(|&(name, mode)| libtest_mimic::Trial::test(name, move || rounds(mode)))
        .collect();
    tests.push(trial("spawning_after_exit_began_is_refused", exit_refuses));
    tests.push(trial(
        "children_of_an_executed_server_ignore_sigpipe_as_their_parent",
        children_ignore_sigpipe,
    ));
    tests.push(trial(
        "descriptor_table_has_room_from_init",
        descriptor_table_has_room,
    ));
    // A daemon child never outlives its parent, SIGKILLed right after starting it: its
    // group is empty within seconds, 200 times over.
    tests.push(libtest_mimic::Trial::test(
        "daemon_then_parent_killed_200_rounds",
        || rounds_of("daemon_then_killed", 200, Duration::from_secs(5)),
    ));
    common::main_checked(
        tests,
        helpers,
        Duration::from_secs(900),
        common::no_new_dev_shm,
    );
}

/// Runs one scenario [`ROUNDS`] times and checks each round.
fn rounds(mode: &str) -> Result<(), libtest_mimic::Failed> {
    rounds_of(mode, ROUNDS, SETTLE)
}

/// Runs a scenario `n` times; in each round, what the helper started must be gone within
/// `settle` of the helper's end.
fn rounds_of(mode: &str, n: usize, settle: Duration) -> Result<(), libtest_mimic::Failed> {
    let dir = tempdir(mode);
    let result = (0..n).try_for_each(|round| one_round(mode, round, &dir, settle));
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(Into::into)
}

fn one_round(
    mode: &str,
    round: usize,
    dir: &std::path::Path,
    settle: Duration,
) -> Result<(), String> {
    let marker = dir.join(format!("main-{round}"));
    // Processes of the stall scenarios wait for this file, made once the helper is gone.
    let release = dir.join(format!("release-{round}"));
    let mut helper = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(HELPER_ENV, mode)
        .env(MAIN_MARKER_ENV, &marker)
        .env("MP_TEST_RELEASE", &release)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("start helper: {e}"))?;
    let group = helper.id();
    let ended = wait_gone(group, SETTLE);
    if !ended {
        let _ = helper.kill();
    }
    let _ = helper.wait();
    std::fs::write(&release, b"").map_err(|e| format!("release: {e}"))?;
    let left = settle_group(group, settle);
    let lines = std::fs::read_to_string(&marker).unwrap_or_default();
    let expected = format!("pre {group}\npost {group}\n");
    if lines != expected {
        return Err(format!(
            "round {round}: main ran in processes the helper did not start by hand:\n{lines}"
        ));
    }
    if !ended {
        return Err(format!(
            "round {round}: the helper did not end within {SETTLE:?}"
        ));
    }
    if !left.is_empty() {
        return Err(format!(
            "round {round}: left behind in the helper's group: {left:?}"
        ));
    }
    Ok(())
}

/// `init()`, run while the process had one thread, gave its descriptor table room for
/// 1,024 descriptors (or its limit): growing it later, with threads, would stall the
/// call that opens the 65th, 129th, ... descriptor for an RCU grace period.
fn descriptor_table_has_room() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let size: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("FDSize in /proc/self/status");
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    assert!(
        size >= limit.min(1024),
        "FDSize {size} with a limit of {limit}"
    );
}

/// `exit_function` has begun (the guard was dropped): a new spawn is refused with
/// `SpawnError::Exiting`, and no fork server is started for it.
fn exit_refuses() {
    let mut helper = Helper::start("spawn_after_exit");
    assert_eq!(helper.expect("refused:", T), "Exiting");
    assert!(helper.wait(T).success());
}

const T: Duration = Duration::from_secs(30);

fn noop(_: ()) {}

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn build_pool(_: ()) {
    let pool = Pool::new(2).expect("pool in child");
    let _ = pool.map(noop, vec![(); 4]);
    nap(5_000);
}

fn spawn_and_wait(_: ()) {
    let child = Builder::new().spawn(nap, 300).expect("grandchild");
    let _ = child.join();
    nap(10_000);
}

fn kill_me() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    loop {
        nap(1_000);
    }
}

fn exit_now() -> ! {
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(0) }
}

fn fork_server_pid() -> u32 {
    let me = std::process::id();
    let mut found = None;
    assert!(
        eventually(T, || {
            found = fork_server_of(me);
            found.is_some()
        }),
        "no fork server"
    );
    found.unwrap_or_default()
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Whether this process ignores SIGPIPE.
fn sigpipe_ignored(_: ()) -> bool {
    // SAFETY: `sigaction` with no new action only reads the current one.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Whether this process and a child it spawns ignore SIGPIPE: the child comes from a
/// fork server that this process starts by executing the program (its own server is
/// its parent's).
fn sigpipe_ignored_here_and_below(_: ()) -> (bool, Result<bool, String>) {
    let below = multiproc::spawn(sigpipe_ignored, ())
        .map_err(|e| e.to_string())
        .and_then(|mut c| c.join_timeout(T).map_err(|e| e.to_string()));
    (sigpipe_ignored(()), below)
}

/// A Rust program ignores SIGPIPE (a write to a closed pipe is an error, not death);
/// so do its children, and theirs, whose fork server was started by executing the
/// program (`Command` gives the new program SIGPIPE's default action, and the server
/// passed that on: a child writing to a closed pipe was killed by SIGPIPE).
fn children_ignore_sigpipe() {
    assert!(sigpipe_ignored(()), "the test program ignores SIGPIPE");
    let mut child = multiproc::spawn(sigpipe_ignored_here_and_below, ()).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), (true, Ok(true)));
    // A program that gives SIGPIPE its default back after `init` (to end quietly in a
    // closed pipe) has children that do not ignore it either, whatever the start
    // method. (Those of its fork server, started at `init`, ignored it: their
    // `println!` into a closed pipe panicked where the program's ended it.)
    let mut h = Helper::start("sigpipe_default_after_init");
    assert_eq!(h.expect("children ignore SIGPIPE:", T), "false false");
    // A parent with a handler of its own: its writes to a closed pipe fail, and so do
    // its children's (they cannot run its handler), rather than end them.
    assert_eq!(h.expect("with a handler:", T), "true true");
    assert!(h.wait(T).success());
}

/// Whether a fork server started by exec (its command line says so until it renames
/// itself) is among this process's children.
fn exec_server_started() -> bool {
    children_of(std::process::id()).iter().any(|(p, _, _)| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.starts_with(b"multiproc-forkserver"))
    })
}

fn helpers(mode: &str) {
    let spawn_exec = || {
        Builder::new()
            .start_method(StartMethod::Spawn)
            .spawn(noop, ())
            .expect("spawn")
    };
    match mode {
        "sigpipe_default_after_init" => {
            let ignored = || -> String {
                [StartMethod::ForkServer, StartMethod::Spawn]
                    .into_iter()
                    .map(|m| {
                        let mut c = Builder::new()
                            .start_method(m)
                            .spawn(sigpipe_ignored, ())
                            .expect("spawn");
                        format!("{:?}", c.join_timeout(T).expect("join"))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            // SAFETY: a plain disposition, set before this helper starts any thread.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            println!("children ignore SIGPIPE: {}", ignored());
            extern "C" fn on_sigpipe(_: libc::c_int) {}
            // SAFETY: a handler that does nothing.
            unsafe { libc::signal(libc::SIGPIPE, on_sigpipe as *const () as libc::sighandler_t) };
            println!("with a handler: {}", ignored());
        }
        "spawn_then_exit" => {
            let _child = spawn_exec();
            exit_now();
        }
        "spawn_then_killed" => {
            let _child = spawn_exec();
            kill_me();
        }
        "server_killed" => {
            let mut child = spawn_exec();
            kill_and_reap(fork_server_pid());
            let _ = child.join_timeout(T);
        }
        "exec_server_then_killed" => {
            // With the forked server gone, the next spawn starts one by executing the
            // program; the parent dies before that server can have got anywhere.
            let mut first = spawn_exec();
            let _ = first.join_timeout(T);
            kill_and_reap(fork_server_pid());
            let _child = Builder::new().spawn(noop, ());
            kill_me();
        }
        "pool_then_exit" => {
            let _pool = Pool::new(2).expect("pool");
            std::process::exit(0);
        }
        "static_pool" => {
            let pool = POOL.get_or_init(|| Pool::new(2).expect("pool"));
            pool.map(noop, vec![(); 8]).expect("map");
            // `main` returns with the pool alive: its workers die with the fork server
            // at exit, and nothing may start a new one.
        }
        "scheduler_then_exit" => {
            let scheduler = multiproc::Scheduler::builder()
                .pool(Pool::new(1).expect("pool"))
                .build()
                .expect("scheduler");
            scheduler
                .add(multiproc::Job::process(
                    "tick",
                    multiproc::Schedule::every(Duration::from_millis(5)),
                    noop,
                    (),
                ))
                .expect("job");
            nap(fastrand::u64(0..30));
            std::process::exit(0);
        }
        "killed_in_pool_new" => {
            let delay = Duration::from_micros(fastrand::u64(0..10_000));
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                kill_me();
            });
            let _pool = Pool::new(2);
            kill_me();
        }
        "child_pool_killed" => {
            let mut child = Builder::new().spawn(build_pool, ()).expect("spawn");
            nap(fastrand::u64(0..10));
            let _ = child.kill();
            let _ = child.join_timeout(T);
        }
        "task_timeout_spawner" => {
            let pool = Pool::builder()
                .processes(1)
                .task_timeout(Duration::from_millis(fastrand::u64(20..120)))
                .build()
                .expect("pool");
            let _ = pool.apply(spawn_and_wait, ());
        }
        "spawn_after_exit" => {
            // A non-daemon child keeps the exit work busy (it is joined at exit) while
            // another thread keeps spawning: once the work has begun, spawning is refused.
            let _slow = Builder::new().spawn(nap, 1_000).expect("spawn");
            std::thread::spawn(|| {
                loop {
                    match Builder::new().spawn(noop, ()) {
                        Err(multiproc::SpawnError::Exiting) => {
                            println!("refused: Exiting");
                            break;
                        }
                        Err(e) => {
                            println!("refused: {e}");
                            break;
                        }
                        Ok(mut child) => {
                            let _ = child.join_timeout(T);
                        }
                    }
                }
            });
            // Returning ends `main`: the guard's exit work begins.
        }
        "stalled_child" => {
            // A `Spawn` child that stalls before `main` (in the program's own constructor)
            // while its parent is SIGKILLed; released after: it must run its call (or
            // find its channel closed) and exit, never `main`.
            let release = std::env::var("MP_TEST_RELEASE").unwrap();
            let _child = Builder::new()
                .start_method(StartMethod::Spawn)
                .env(STALL_ENV, release)
                .spawn(noop, ())
                .expect("spawn");
            kill_me();
        }
        "stalled_server" => {
            // A fork server started by exec from a threaded parent stalls before `main`
            // while the parent is SIGKILLed; released after, it must exit, not run `main`.
            let mut first = spawn_exec();
            let _ = first.join_timeout(T);
            kill_and_reap(fork_server_pid());
            let release = std::env::var("MP_TEST_RELEASE").unwrap();
            // SAFETY: this helper has one thread so far; the new server inherits this.
            unsafe { std::env::set_var(STALL_ENV, release) };
            // The spawn waits for the stalled server: from a thread of its own.
            std::thread::spawn(|| {
                let _ = Builder::new().spawn(noop, ());
            });
            assert!(eventually(T, exec_server_started));
            kill_me();
        }
        "daemon_then_killed" => {
            let _child = Builder::new()
                .daemon(true)
                .spawn(nap, 60_000)
                .expect("spawn a daemon");
            kill_me();
        }
        other => panic!("unknown helper mode {other}"),
    }
}
