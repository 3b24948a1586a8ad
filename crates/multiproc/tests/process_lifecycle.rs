//! Processes that work: values in and out, start methods, names, family, builder options,
//! exit semantics and resource hygiene.
#![allow(unsafe_code)] // `spawn_fork` is unsafe by contract; these tests uphold it.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Helper, trial};
use multiproc::{Builder, ProcessError, SpawnError, StartMethod, Stdio};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

/// 5 MiB in this program's code segment, so that its code holds a whole 2 MiB block
/// wherever the loader puts it, as programs of that size do (the tests' own code is
/// under 2 MiB): see `children_run_the_code_from_huge_pages`.
#[unsafe(link_section = ".text.mptest_pad")]
#[used]
static CODE_PAD: [u8; 5 << 20] = [0xcc; 5 << 20];

fn main() {
    common::main(
        vec![
            trial("round_trip_nested_structs", round_trip_nested_structs),
            trial("round_trip_64_mib", round_trip_64_mib),
            trial(
                "children_run_as_the_parent_does_now",
                children_run_as_the_parent_does_now,
            ),
            trial(
                "a_spawn_larger_than_the_fork_server_takes_fails_alone",
                a_spawn_larger_than_the_fork_server_takes_fails_alone,
            ),
            trial(
                "a_large_result_does_not_keep_its_child_alive",
                a_large_result_does_not_keep_its_child_alive,
            ),
            trial(
                "joining_a_long_child_costs_no_cpu",
                joining_a_long_child_costs_no_cpu,
            ),
            trial("each_start_method_works", each_start_method_works),
            trial(
                "exec_child_never_sees_user_argv",
                exec_child_never_sees_user_argv,
            ),
            trial("default_names_in_start_order", default_names_in_start_order),
            trial(
                "a_forked_childs_value_that_panics_as_sent_is_its_panic",
                a_forked_childs_value_that_panics_as_sent_is_its_panic,
            ),
            trial(
                "a_spawn_under_way_at_exit_is_joined",
                a_spawn_under_way_at_exit_is_joined,
            ),
            trial(
                "a_term_to_the_group_leaves_the_fork_server_to_the_parent",
                a_term_to_the_group_leaves_the_fork_server_to_the_parent,
            ),
            trial(
                "a_term_that_ends_the_parent_ends_its_daemons_groups",
                a_term_that_ends_the_parent_ends_its_daemons_groups,
            ),
            trial(
                "a_child_leads_its_group_when_its_spawn_returns",
                a_child_leads_its_group_when_its_spawn_returns,
            ),
            trial(
                "a_reused_group_number_is_not_signalled_at_exit",
                a_reused_group_number_is_not_signalled_at_exit,
            ),
            trial(
                "output_unflushed_before_init_comes_out_once",
                output_unflushed_before_init_comes_out_once,
            ),
            trial("current_and_parent_process", current_and_parent_process),
            trial("spawn_from_inside_a_child", spawn_from_inside_a_child),
            trial(
                "only_the_parent_waits_for_its_child",
                only_the_parent_waits_for_its_child,
            ),
            trial("nesting_depth_is_capped", nesting_depth_is_capped),
            trial(
                "exit_from_a_signal_handler_during_a_join_ends",
                exit_from_a_signal_handler_during_a_join_ends,
            ),
            trial(
                "a_second_exit_waits_for_the_first",
                a_second_exit_waits_for_the_first,
            ),
            trial(
                "a_join_during_the_exit_keeps_its_value",
                a_join_during_the_exit_keeps_its_value,
            ),
            trial(
                "non_daemon_joined_at_normal_exit",
                non_daemon_joined_at_normal_exit,
            ),
            trial(
                "non_daemon_joined_at_process_exit_call",
                non_daemon_joined_at_process_exit_call,
            ),
            trial(
                "a_child_that_exits_joins_its_children",
                a_child_that_exits_joins_its_children,
            ),
            trial("daemon_terminated_at_exit", daemon_terminated_at_exit),
            trial(
                "a_forked_copy_returning_from_main_leaves_the_parents_children_alone",
                a_forked_copy_returning_from_main_leaves_the_parents_children_alone,
            ),
            trial(
                "daemon_ignoring_sigterm_killed_at_exit_while_a_thread_joins_it",
                daemon_ignoring_sigterm_killed_at_exit_while_a_thread_joins_it,
            ),
            trial(
                "children_keep_the_cpu_mask_on_a_busy_machine",
                children_keep_the_cpu_mask_on_a_busy_machine,
            ),
            trial(
                "children_of_held_spares_keep_the_cpu_mask",
                children_of_held_spares_keep_the_cpu_mask,
            ),
            trial(
                "children_run_the_code_from_huge_pages",
                children_run_the_code_from_huge_pages,
            ),
            trial(
                "children_keep_the_code_pages_when_told",
                children_keep_the_code_pages_when_told,
            ),
            trial(
                "spawns_leave_no_zombie_process_or_fd",
                spawns_leave_no_zombie_process_or_fd,
            ),
            trial("environment_and_directory", environment_and_directory),
            trial(
                "children_follow_the_parents_directory",
                children_follow_the_parents_directory,
            ),
            trial("piped_stdio", piped_stdio),
            trial(
                "a_piped_stdin_not_taken_is_closed_at_the_join",
                a_piped_stdin_not_taken_is_closed_at_the_join,
            ),
            trial(
                "exit_closes_untaken_piped_stdio",
                exit_closes_untaken_piped_stdio,
            ),
            trial(
                "piped_stdio_of_a_forked_child",
                piped_stdio_of_a_forked_child,
            ),
            trial("stdout_to_file", stdout_to_file),
            trial("logging_names_processes", logging_names_processes),
            trial(
                "tracing_inside_multiproc_does_not_deadlock",
                tracing_inside_multiproc_does_not_deadlock,
            ),
            trial("active_children_and_status", active_children_and_status),
            trial(
                "join_timeout_keeps_handle_usable",
                join_timeout_keeps_handle_usable,
            ),
            trial(
                "concurrent_spawns_from_threads",
                concurrent_spawns_from_threads,
            ),
            trial(
                "daemon_outlives_the_thread_that_spawned_it",
                daemon_outlives_the_thread_that_spawned_it,
            ),
            trial("fork_start_method_captures", fork_start_method_captures),
            trial(
                "dropped_handle_releases_blocked_child",
                dropped_handle_releases_blocked_child,
            ),
        ],
        helpers,
        Duration::from_secs(600),
    );
}

fn helpers(mode: &str) {
    match mode {
        "names" => helper_names(),
        "spawn_three" => helper_spawn_three(),
        "reused_group_at_exit" => helper_reused_group_at_exit(),
        "forked_value_panics" => helper_forked_value_panics(),
        "exit_joins" => helper_exit_joins(false),
        "exit_call_joins" => helper_exit_joins(true),
        "exit_from_a_handler_while_joining" => helper_exit_from_a_handler_while_joining(),
        "exit_while_a_thread_joins" => helper_exit_while_a_thread_joins(),
        "second_exit_waits" => helper_second_exit_waits(),
        "exit_with_piped_stdio" => helper_exit_with_piped_stdio(),
        "spawning_at_exit" => helper_spawning_at_exit(),
        "daemon_at_exit" => helper_daemon_at_exit(),
        "group_term_caught" => helper_group_term_caught(),
        "group_term_ends" => helper_group_term_ends(),
        "copy_returns_from_main" => helper_copy_returns_from_main(),
        "daemon_joined_at_exit" => helper_daemon_joined_at_exit(),
        "dropped_privileges" => helper_dropped_privileges(),
        "leaks" => helper_leaks(),
        "held_spares" => helper_held_spares(),
        "code_layout" => helper_code_layout(),
        "logging" => helper_logging(),
        "directories" => helper_directories(),
        other => panic!("unknown helper mode {other}"),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle { r: f64 },
    Polygon(Vec<(i32, i32)>),
    Empty,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Scene {
    name: String,
    shapes: Vec<Shape>,
    tags: BTreeMap<String, Option<u64>>,
    nested: Option<Box<Scene>>,
}

fn rename_scene(mut s: Scene) -> Scene {
    s.name = format!(
        "{} (seen by {})",
        s.name,
        multiproc::current_process().name()
    );
    s.shapes.push(Shape::Empty);
    s
}

fn round_trip_nested_structs() {
    let inner = Scene {
        name: "inner".into(),
        shapes: vec![Shape::Polygon(vec![(1, 2), (-3, 4)])],
        tags: BTreeMap::from([("x".into(), None)]),
        nested: None,
    };
    let scene = Scene {
        name: "outer".into(),
        shapes: vec![Shape::Circle { r: 1.5 }],
        tags: BTreeMap::from([("a".into(), Some(1)), ("b".into(), Some(u64::MAX))]),
        nested: Some(Box::new(inner)),
    };
    let mut child = Builder::new()
        .name("scene")
        .spawn(rename_scene, scene.clone())
        .unwrap();
    let back = child.join_timeout(T).unwrap();
    let mut expected = scene;
    expected.name = "outer (seen by scene)".into();
    expected.shapes.push(Shape::Empty);
    assert_eq!(back, expected);
}

fn invert(bytes: Vec<u8>) -> Vec<u8> {
    bytes.into_iter().map(|b| !b).collect()
}

fn round_trip_64_mib() {
    let len = 64 << 20;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .start_method(method)
            .spawn(invert, data.clone())
            .unwrap();
        let back = child.join_timeout(T).unwrap();
        assert_eq!(back.len(), len);
        assert!(
            back.iter().zip(&data).all(|(b, d)| *b == !*d),
            "{method:?}: payload corrupted"
        );
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Whoami {
    pid: u32,
    ppid: u32,
    name: String,
    exe: String,
    args: Vec<String>,
}

fn whoami(_: ()) -> Whoami {
    Whoami {
        pid: std::process::id(),
        ppid: std::os::unix::process::parent_id(),
        name: multiproc::current_process().name().into(),
        exe: std::fs::read_link("/proc/self/exe")
            .unwrap()
            .display()
            .to_string(),
        args: std::env::args().collect(),
    }
}

fn each_start_method_works() {
    let me = std::process::id();
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .name(format!("{method:?}"))
            .start_method(method)
            .spawn(whoami, ())
            .unwrap();
        let who = child.join_timeout(T).unwrap();
        assert_ne!(who.pid, me);
        assert_eq!(who.name, format!("{method:?}"));
        assert_eq!(
            who.exe,
            std::fs::read_link("/proc/self/exe")
                .unwrap()
                .display()
                .to_string()
        );
        // Both are started by the fork server, a child of this process.
        assert_eq!(Some(who.ppid), common::fork_server_of(me));
    }
    // SAFETY: the closure only builds a value from syscalls; it takes no lock that another
    // test thread could hold at the fork.
    let mut child = unsafe {
        Builder::new()
            .name("forked")
            .spawn_fork(|| (std::process::id(), std::os::unix::process::parent_id()))
    }
    .unwrap();
    let (pid, ppid) = child.join_timeout(T).unwrap();
    assert_ne!(pid, me);
    assert_eq!(ppid, me);
}

fn exec_child_never_sees_user_argv() {
    let mut child = Builder::new()
        .name("fresh")
        .start_method(StartMethod::Spawn)
        .spawn(whoami, ())
        .unwrap();
    let who = child.join_timeout(T).unwrap();
    assert_eq!(who.args, vec!["fresh".to_string()]);
}

fn name_of(_: ()) -> String {
    multiproc::current_process().name().to_string()
}

fn grandchild_name(_: ()) -> (String, String) {
    let mine = multiproc::current_process().name().to_string();
    let child = multiproc::spawn(name_of, ()).unwrap();
    (mine, child.join().unwrap())
}

fn helper_names() {
    let mut names = Vec::new();
    for i in 0..5 {
        let b = if i == 3 {
            Builder::new().name("renamed worker")
        } else {
            Builder::new()
        };
        names.push(b.spawn(name_of, ()).unwrap().join().unwrap());
    }
    let (child, grandchild) = multiproc::spawn(grandchild_name, ())
        .unwrap()
        .join()
        .unwrap();
    println!("names {}", names.join(","));
    println!("nested {child},{grandchild}");
}

/// A value whose `Serialize` panics.
#[derive(Debug)]
struct PanicsWhenSent;

impl Serialize for PanicsWhenSent {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("this value cannot be sent")
    }
}

impl<'de> Deserialize<'de> for PanicsWhenSent {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(PanicsWhenSent)
    }
}

/// Says so if it is dropped in a process other than the one that made it.
struct Witness(u32);

impl Drop for Witness {
    fn drop(&mut self) {
        if std::process::id() != self.0 {
            println!("dropped in {}", std::process::id());
        }
    }
}

/// A forked child whose return value panics as it is sent: how its join ends.
fn helper_forked_value_panics() {
    let _witness = Witness(std::process::id());
    // SAFETY: this helper has one thread; the child only returns a value.
    let joined = unsafe { Builder::new().spawn_fork(|| PanicsWhenSent) }
        .unwrap()
        .join_timeout(T);
    match joined {
        Err(ProcessError::Panicked(p)) => println!("joined panicked: {}", p.message()),
        other => println!("joined otherwise: {other:?}"),
    }
}

/// A forked child whose return value's `Serialize` panics has panicked, as its join
/// says; the panic does not unwind out of `spawn_fork` into the caller's frames in the
/// child (which ran its parent's code there: its locals' destructors, its `main`).
fn a_forked_childs_value_that_panics_as_sent_is_its_panic() {
    let mut h = Helper::start("forked_value_panics");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
    let out = h.rest(T);
    assert_eq!(
        out,
        ["joined panicked: this value cannot be sent"],
        "{}",
        h.stderr_now()
    );
}

/// Three children, of the fork server, by exec and forked, each joined.
fn helper_spawn_three() {
    let server = multiproc::spawn(square, 2).unwrap();
    let exec = Builder::new()
        .start_method(StartMethod::Spawn)
        .spawn(square, 3)
        .unwrap();
    // SAFETY: this helper has one thread; the child only computes.
    let forked = unsafe { Builder::new().spawn_fork(|| square(4)) }.unwrap();
    let got: Vec<u64> = [server, exec, forked]
        .into_iter()
        .map(|mut c| c.join_timeout(T).unwrap())
        .collect();
    assert_eq!(got, [4, 9, 16]);
}

/// What the program wrote before `init()` and left unflushed (Rust's stdout and C's
/// stdio, both held back when writing to a pipe) comes out once: not once more from
/// each child, which inherits the buffers (through the fork server, forked at `init`).
fn output_unflushed_before_init_comes_out_once() {
    let mut h = Helper::start_with(
        "spawn_three",
        std::env::current_exe().unwrap(),
        &[(common::PRINT_BEFORE_INIT_ENV, "early")],
    );
    assert!(h.wait(T).success(), "{}", h.stderr_now());
    let out = h.rest(T).join("\n");
    assert_eq!(out.matches("rust:early").count(), 1, "{out}");
    assert_eq!(out.matches("c:early").count(), 1, "{out}");
}

fn default_names_in_start_order() {
    let mut h = Helper::start("names");
    assert_eq!(
        h.expect("names ", T),
        "Process-1,Process-2,Process-3,renamed worker,Process-5"
    );
    assert_eq!(h.expect("nested ", T), "Process-6,Process-6:1");
    assert!(h.wait(T).success());
}

#[derive(Debug, Serialize, Deserialize)]
struct Family {
    name: String,
    daemon: bool,
    depth: u32,
    parent_name: String,
    parent_pid: u32,
    parent_alive: bool,
}

fn family(_: ()) -> Family {
    let me = multiproc::current_process();
    let parent = multiproc::parent_process().unwrap();
    Family {
        name: me.name().into(),
        daemon: me.is_daemon(),
        depth: me.depth(),
        parent_name: parent.name().into(),
        parent_pid: parent.pid(),
        parent_alive: parent.is_alive(),
    }
}

fn current_and_parent_process() {
    assert_eq!(multiproc::current_process().name(), "MainProcess");
    assert!(multiproc::parent_process().is_none());
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .name("kid")
            .daemon(true)
            .start_method(method)
            .spawn(family, ())
            .unwrap();
        let f = child.join_timeout(T).unwrap();
        assert_eq!(f.name, "kid");
        assert!(f.daemon);
        assert_eq!(f.depth, 1);
        assert_eq!(f.parent_name, "MainProcess");
        assert_eq!(f.parent_pid, std::process::id());
        assert!(f.parent_alive);
    }
}

fn nested(depth: u32) -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    if depth > 0 {
        let method = if depth.is_multiple_of(2) {
            StartMethod::Spawn
        } else {
            StartMethod::ForkServer
        };
        let child = Builder::new()
            .start_method(method)
            .spawn(nested, depth - 1)
            .unwrap();
        pids.extend(child.join().unwrap());
    }
    pids
}

/// What a process forked after a child started (by `spawn_fork` here) makes of its copies
/// of that child's handle and views: it is not the child's parent, so joining and
/// waiting there are refused with `NotParent` and read nothing (the child's outcome and
/// status are the parent's to read); what needs no reading works (`multiproc::wait` and
/// `is_alive` see its end on its pidfd), and `exit_status` says what the parent knew at
/// the fork. The parent still gets both, for children of the fork server and forked
/// ones alike.
fn only_the_parent_waits_for_its_child() {
    for fork_server in [true, false] {
        let child = if fork_server {
            multiproc::spawn(nap, 400).unwrap()
        } else {
            // SAFETY: the closure sleeps and returns; it takes no lock.
            unsafe { Builder::new().spawn_fork(|| nap(400)) }.unwrap()
        };
        let view = child.process();
        let theirs = view.clone();
        // SAFETY: the closure uses the handle and view it owns, and takes no lock.
        let mut forked = unsafe {
            Builder::new().spawn_fork(move || {
                let mut child = child;
                let refused = |r: Result<(), ProcessError>| match r {
                    Err(ProcessError::NotParent { pid }) if pid == theirs.pid() => "refused".into(),
                    other => format!("{other:?}"),
                };
                let refusals = [
                    refused(theirs.wait(Some(T)).map(drop)),
                    refused(theirs.wait(None).map(drop)),
                    refused(child.join_timeout(T).map(drop)),
                    // Awaited: ready at its first poll, the reactor never needed.
                    refused(async_io::block_on(&mut child).map(drop)),
                    refused(child.join().map(drop)),
                ];
                // Its end seen on the pidfd, its status left to the parent.
                let ended = multiproc::wait(&[&theirs], Some(T)).map_err(|e| e.to_string());
                let after = format!(
                    "ended {ended:?}, alive {}, status {:?}",
                    theirs.is_alive(),
                    theirs.exit_status()
                );
                (refusals, after)
            })
        }
        .unwrap();
        let (refusals, after) = forked.join_timeout(T).unwrap();
        assert_eq!(
            refusals,
            ["refused"; 5].map(String::from),
            "fork server: {fork_server}"
        );
        assert_eq!(
            after, "ended Ok([0]), alive false, status None",
            "fork server: {fork_server}"
        );
        // The handle went into the forked process: the parent waits on its view.
        let status = view.wait(Some(T)).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "fork server: {fork_server}: {status:?}"
        );
        assert!(!view.is_alive());
    }
    // A handle the parent kept gets its value, with a view waited on in the forked
    // process meanwhile.
    let mut child = multiproc::spawn(nap, 300).unwrap();
    let theirs = child.process();
    // SAFETY: the closure waits on the view it owns and takes no lock.
    let mut forked = unsafe {
        Builder::new()
            .spawn_fork(move || matches!(theirs.wait(Some(T)), Err(ProcessError::NotParent { .. })))
    }
    .unwrap();
    assert!(forked.join_timeout(T).unwrap());
    let view = child.process();
    assert_eq!(child.join_timeout(T).unwrap(), 300);
    assert!(view.exit_status().is_some_and(|s| s.success()));
}

fn spawn_from_inside_a_child() {
    let mut child = multiproc::spawn(nested, 3).unwrap();
    let pids = child.join_timeout(T).unwrap();
    assert_eq!(pids.len(), 4);
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 4, "{pids:?}");
}

fn dig(_: ()) -> Result<u32, String> {
    let me = multiproc::current_process().depth();
    match multiproc::spawn(dig, ()) {
        Ok(child) => child.join().map_err(|e| e.to_string())?,
        Err(multiproc::SpawnError::TooDeep { limit }) if limit == me => Ok(me),
        Err(e) => Err(format!("at depth {me}: {e}")),
    }
}

fn nesting_depth_is_capped() {
    let mut child = multiproc::spawn(dig, ()).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), Ok(32));
}

fn write_marker(path: String) {
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(path, "done").unwrap();
}

fn helper_exit_joins(exit_call: bool) {
    let path = std::env::var("MARKER").unwrap();
    let child = Builder::new()
        .name("straggler")
        .spawn(write_marker, path)
        .unwrap();
    println!("child {}", child.pid());
    drop(child);
    if exit_call {
        std::process::exit(0);
    }
}

fn exit_joins(mode: &str) {
    // The helper exited only after its non-daemon child had finished its work.
    let status = exits_after_joining(mode);
    assert!(status.success(), "{status:?}");
}

/// Writes more than a pipe holds to its stdout (its stderr if `to_stderr`), then
/// returns.
fn flood(to_stderr: bool) -> usize {
    let block = [b'x'; 1 << 16];
    let mut out: Box<dyn Write> = if to_stderr {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    for _ in 0..16 {
        if out.write_all(&block).is_err() {
            return 0;
        }
    }
    16
}

/// Starts, by each start method, a child reading its piped stdin to the end and two
/// writing a megabyte, one to its piped stdout, one to its piped stderr, takes none of
/// their pipes, prints their pids and leaves with `std::process::exit`, the handles
/// (and the pipes they held) still in place.
fn helper_exit_with_piped_stdio() {
    let mut handles = Vec::new();
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        handles.push(piped_echo(method));
        for to_stderr in [false, true] {
            let builder = Builder::new().start_method(method);
            let builder = if to_stderr {
                builder.stderr(Stdio::piped())
            } else {
                builder.stdout(Stdio::piped())
            };
            handles.push(builder.spawn(flood, to_stderr).unwrap());
        }
    }
    let pids: Vec<String> = handles.iter().map(|h| h.pid().to_string()).collect();
    println!("children {}", pids.join(" "));
    std::process::exit(0);
}

/// The exit's join of children whose piped stdio the program never took (left in place
/// by a `std::process::exit`) closes those pipes first: a child reading its input to the
/// end ends, and so does one writing more than its stdout's pipe holds (its write
/// fails), where the exit waited for them for ever.
fn exit_closes_untaken_piped_stdio() {
    let mut h = Helper::start("exit_with_piped_stdio");
    let children = h.expect_pids("children ", T);
    assert_eq!(children.len(), 6);
    // Past T the test fails, and the helper's drop kills it and its children.
    let status = h.wait(T);
    assert!(status.success(), "{status:?}: {}", h.stderr_now());
    for child in children {
        assert!(common::wait_gone(child, Duration::from_secs(5)));
        common::reap(child);
    }
}

/// Sleeps `ms`, then writes "done" at `path`.
fn write_marker_after((path, ms): (String, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, "done").unwrap();
}

extern "C" fn exit_on_term(_: libc::c_int) {
    // SAFETY: what the program under test does: `exit` from a signal handler.
    unsafe { libc::exit(0) };
}

fn helper_exit_from_a_handler_while_joining() {
    // SAFETY: installs a handler for SIGTERM; it calls `exit`.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            exit_on_term as *const () as libc::sighandler_t,
        )
    };
    let path = std::env::var("MARKER").unwrap();
    let child = Builder::new()
        .spawn(write_marker_after, (path, 1500))
        .unwrap();
    println!("child {}", child.pid());
    let _ = child.join();
    println!("joined before the signal");
}

/// Returns 7 after `ms`, then ends only 500 ms later (its exit joins a child of its
/// own): a join has the value, and lets go of the channel, that long before the end.
fn seven_after(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    drop(Builder::new().spawn(nap, 500).unwrap());
    7
}

fn helper_exit_while_a_thread_joins() {
    let child = Builder::new().spawn(seven_after, 1000).unwrap();
    println!("child {}", child.pid());
    // Joined by the exit work after that one: the joining thread has a second to say
    // what it got before the process ends.
    drop(Builder::new().spawn(nap, 2500).unwrap());
    std::thread::spawn(move || println!("joined {:?}", child.join()));
    // After the value (at 1 s), before the child's end (1.5 s): the join waits for the
    // end, its channel let go, with the value in it.
    std::thread::sleep(Duration::from_millis(1200));
    std::process::exit(0);
}

fn helper_second_exit_waits() {
    let path = std::env::var("MARKER").unwrap();
    let child = Builder::new()
        .spawn(write_marker_after, (path, 2000))
        .unwrap();
    println!("child {}", child.pid());
    drop(child);
    // Another thread's exit while this one's end joins the child.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        std::process::exit(0);
    });
}

/// A helper's exit and the child it had to join first: the marker the child writes
/// last is there once the helper is gone.
fn exits_after_joining(mode: &str) -> std::process::ExitStatus {
    let dir = common::tempdir("lifecycle");
    let marker = dir.join("marker");
    let mut h = Helper::start_with(
        mode,
        std::env::current_exe().unwrap(),
        &[("MARKER", marker.to_str().unwrap())],
    );
    let child: u32 = h.expect("child ", T).parse().unwrap();
    if mode == "exit_from_a_handler_while_joining" {
        // Well inside the helper's join of its child (1.5 s).
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on the helper this test started.
        unsafe { libc::kill(h.child.id() as i32, libc::SIGTERM) };
    }
    // Past the bound the test fails, and the helper's drop kills it and its children.
    let status = h.wait(Duration::from_secs(20));
    let done = std::fs::read_to_string(&marker).ok();
    assert!(common::wait_gone(child, Duration::from_secs(5)));
    common::reap(child);
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(
        done.as_deref(),
        Some("done"),
        "the helper ended before its child"
    );
    status
}

/// An `exit` from a SIGTERM handler that interrupted the main thread's join of a child
/// joins the child, and ends (it waited for ever for the channel the join held).
fn exit_from_a_signal_handler_during_a_join_ends() {
    let status = exits_after_joining("exit_from_a_handler_while_joining");
    assert!(status.success(), "{status:?}");
}

/// Another thread's `exit` while the end of `main` joins a child waits for that join
/// (it stopped the fork server and ended the process with the child not joined).
fn a_second_exit_waits_for_the_first() {
    let status = exits_after_joining("second_exit_waits");
    assert!(status.success(), "{status:?}");
}

/// A thread joining a child while the process exits gets the child's value (the exit
/// work dropped the channel with the value in it, and the join said the fork server
/// died).
fn a_join_during_the_exit_keeps_its_value() {
    let mut h = Helper::start("exit_while_a_thread_joins");
    let child: u32 = h.expect("child ", T).parse().unwrap();
    assert_eq!(h.expect("joined ", T), "Ok(7)");
    let status = h.wait(T);
    assert!(status.success(), "{status:?}");
    assert!(common::wait_gone(child, Duration::from_secs(5)));
    common::reap(child);
}

fn non_daemon_joined_at_normal_exit() {
    exit_joins("exit_joins");
}

fn non_daemon_joined_at_process_exit_call() {
    exit_joins("exit_call_joins");
}

/// A child starts a child of its own, and exits (`std::process::exit`) rather than
/// return.
fn exits_leaving_a_child((path, exec): (String, bool)) -> u32 {
    let method = if exec {
        StartMethod::Spawn
    } else {
        StartMethod::ForkServer
    };
    let grandchild = Builder::new()
        .start_method(method)
        .spawn(write_marker, path)
        .unwrap();
    drop(grandchild);
    std::process::exit(0)
}

/// A child that calls `std::process::exit` joins its own non-daemon children first, as
/// the main process does (and as Python's children do at `sys.exit`), whatever the start
/// methods: it ended at once, its children left running unjoined.
fn a_child_that_exits_joins_its_children() {
    let dir = common::tempdir("exitjoins");
    for (i, (method, theirs)) in [
        (StartMethod::ForkServer, StartMethod::ForkServer),
        (StartMethod::Spawn, StartMethod::ForkServer),
        (StartMethod::Spawn, StartMethod::Spawn),
    ]
    .into_iter()
    .enumerate()
    {
        let marker = dir.join(format!("marker-{i}"));
        let mut child = Builder::new()
            .start_method(method)
            .spawn(
                exits_leaving_a_child,
                (marker.display().to_string(), theirs == StartMethod::Spawn),
            )
            .unwrap();
        assert!(
            matches!(child.join_timeout(T), Err(ProcessError::Exited(0))),
            "{method:?}"
        );
        // Its child had done its work (300 ms) before it ended.
        assert_eq!(
            std::fs::read_to_string(&marker).ok().as_deref(),
            Some("done"),
            "{method:?} then {theirs:?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Notes in `dir/PID` that it started, then, `ms` later, that it ended.
fn note_start_and_end((dir, ms): (String, u64)) {
    let note = format!("{dir}/{}", std::process::id());
    std::fs::write(&note, "started").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(&note, "ended").unwrap();
}

/// A thread starts children one after another (dropping their handles), each working
/// 20 ms longer than the one before, while the main thread exits the program
/// (`std::process::exit`: the exit work runs once, at `atexit`): a child left unjoined
/// ends 20 ms after the last one the exit joined.
fn helper_spawning_at_exit() {
    let dir = std::env::var("MARKER").unwrap();
    std::thread::spawn(move || {
        for k in 1..=200 {
            if multiproc::spawn(note_start_and_end, (dir.clone(), k * 20)).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    std::process::exit(0);
}

/// What the children of `spawning_at_exit` noted, by pid.
fn notes(dir: &std::path::Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let note = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), note)
        })
        .collect()
}

/// A spawn under way as another thread exits the program: its child is joined at the
/// exit like the others. The spawn had looked at whether the exit had begun, and
/// registered its child after the exit had taken the children, so the child ran on,
/// unjoined, after its parent had exited (in most rounds, with a thread that does
/// nothing but spawn; where `main` returns, the exit work runs twice, from `init`'s
/// guard and at `atexit`, and the second joined it).
fn a_spawn_under_way_at_exit_is_joined() {
    for round in 0..8 {
        let dir = common::tempdir("spawning-at-exit");
        let mut h = Helper::start_with(
            "spawning_at_exit",
            std::env::current_exe().unwrap(),
            &[("MARKER", dir.to_str().unwrap())],
        );
        let status = h.wait(T);
        assert!(status.success(), "{status:?}: {}", h.stderr_now());
        let at_exit = notes(&dir);
        assert!(!at_exit.is_empty(), "round {round}: no child ran");
        // A child left running writes after its parent has gone.
        std::thread::sleep(Duration::from_millis(300));
        let later = notes(&dir);
        assert_eq!(
            at_exit, later,
            "round {round}: children ran on after their parent exited"
        );
        assert!(
            later.values().all(|n| n == "ended"),
            "round {round}: {later:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn sleep_long(_: ()) {
    std::thread::sleep(Duration::from_secs(120));
}

/// A copy of the program made by a fork of its own (not `spawn_fork`) that returns from
/// `main` drops the guard `init` returned there: the exit work is the parent's, for the
/// parent's children and fork server, and the copy does none of it (it terminated the
/// parent's daemon, and stopped the fork server the parent spawns with).
fn a_forked_copy_returning_from_main_leaves_the_parents_children_alone() {
    let mut h = Helper::start("copy_returns_from_main");
    assert_eq!(h.expect("copy ", T), "0");
    assert_eq!(h.expect("daemon alive ", T), "true");
    assert_eq!(h.expect("spawned ", T), "Ok(9)");
    assert_eq!(h.expect("joined ", T), "Ok(300)");
    assert_eq!(h.expect("daemon after its exit ", T), "true");
    let daemon: u32 = h.expect("daemon ", T).parse().unwrap();
    assert!(h.wait(T).success());
    assert!(
        common::wait_gone(daemon, Duration::from_secs(5)),
        "the daemon survived its parent's exit"
    );
    common::reap(daemon);
}

fn helper_copy_returns_from_main() {
    let daemon = Builder::new().daemon(true).spawn(sleep_long, ()).unwrap();
    let mut child = multiproc::spawn(nap, 300).unwrap();
    // SAFETY: this helper has one thread (spawns through the fork server start none);
    // the copy only returns from `main` (through the helpers' dispatch), which drops
    // the guard and exits.
    let copy = unsafe { libc::fork() };
    assert!(copy >= 0);
    if copy == 0 {
        return;
    }
    let mut status = 0;
    // SAFETY: waits for the copy, this process's own child, into a local.
    assert_eq!(unsafe { libc::waitpid(copy, &mut status, 0) }, copy);
    // The raw status: 0 for an exit with code 0, not a signal.
    println!("copy {status}");
    println!("daemon alive {}", daemon.is_alive());
    let spawned = match multiproc::spawn(square, 3) {
        Ok(mut c) => format!("{:?}", c.join_timeout(T).map_err(|e| e.to_string())),
        Err(e) => format!("not spawned: {e}"),
    };
    println!("spawned {spawned}");
    println!(
        "joined {:?}",
        child.join_timeout(T).map_err(|e| e.to_string())
    );
    println!("daemon after its exit {}", daemon.is_alive());
    println!("daemon {}", daemon.pid());
}

fn helper_daemon_at_exit() {
    let child = Builder::new().daemon(true).spawn(sleep_long, ()).unwrap();
    println!("child {}", child.pid());
}

/// Runs as the first process of a pid namespace of its own (`unshare -pf`), where it
/// may say which number the next process gets: a daemon that led its group ends (and is
/// reaped), its handle kept; its number goes to a shell that leads a group of its own
/// and notes a SIGTERM in `MP_TEST_DIR/term`; then this process exits.
fn helper_reused_group_at_exit() {
    use std::os::unix::process::CommandExt;
    let dir = std::path::PathBuf::from(std::env::var("MP_TEST_DIR").unwrap());
    let daemon = Builder::new()
        .daemon(true)
        .process_group(true)
        .spawn(square, 2)
        .unwrap();
    let pid = daemon.pid();
    let gone = format!("/proc/{pid}");
    assert!(common::eventually(T, || !std::path::Path::new(&gone).exists()));
    // The fork server forks its next spare after it answered the daemon's spawn: forked
    // after the number is set below, the spare took the daemon's number, and every try
    // failed.
    let server = common::fork_server_of(std::process::id()).expect("the fork server");
    assert!(common::eventually(T, || common::children_of(server)
        .iter()
        .any(|(_, state, comm)| comm == "mp-spare" && *state != 'Z')));
    let (ready, term) = (dir.join("ready"), dir.join("term"));
    let script = format!(
        "trap 'echo term > {}; exit 0' TERM; echo > {}; while :; do sleep 0.05; done",
        term.display(),
        ready.display()
    );
    let mut other = None;
    for _ in 0..20 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut shell = std::process::Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .spawn()
            .unwrap();
        if shell.id() == pid {
            other = Some(shell);
            break;
        }
        let _ = shell.kill();
        let _ = shell.wait();
    }
    assert!(other.is_some(), "the daemon's number went elsewhere");
    assert!(common::eventually(T, || ready.exists()));
    println!("reused {pid}");
    // The shell is left running; the namespace's processes end with this one, after
    // its exit work (with a SIGKILL, which the shell does not note).
    drop(daemon);
}

/// At exit, the group of a daemon that led one is signalled only while it is still
/// the daemon's: once the daemon ended and its group emptied, its number may be
/// another group's, which was sent SIGTERM (and SIGKILL a second later).
fn a_reused_group_number_is_not_signalled_at_exit() {
    let dir = common::tempdir("reused-group");
    let mut command = std::process::Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(std::env::current_exe().unwrap());
    let mut h = Helper::start_command(
        "reused_group_at_exit",
        command,
        &[("MP_TEST_DIR", dir.to_str().unwrap())],
    );
    h.expect("reused ", T);
    let status = h.wait(T);
    assert!(
        status.success(),
        "{status:?} (needs util-linux's unshare and root for a pid namespace): {}",
        h.stderr_now()
    );
    assert!(
        !dir.join("term").exists(),
        "another process's group, numbered as the ended daemon was, was signalled at exit"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether this process got `SIGTERM` (see [`helper_group_term_caught`]).
static GOT_TERM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_term(_: libc::c_int) {
    GOT_TERM.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Catches `SIGTERM` (to stop gracefully, as a service does) with a daemon running in a
/// group of its own, says it is ready, and once the signal came looks at the daemon and
/// spawns again.
fn helper_group_term_caught() {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, note_term as *const () as libc::sighandler_t) };
    let daemon = Builder::new()
        .daemon(true)
        .process_group(true)
        .spawn(sleep_long, ())
        .unwrap();
    // In its group by the time the spawn returned (the server put it there before
    // its answer), whether it has run yet or not.
    let pid = rustix::process::Pid::from_raw(daemon.pid() as i32).unwrap();
    assert_eq!(rustix::process::getpgid(Some(pid)).ok(), Some(pid));
    println!("ready");
    assert!(common::eventually(T, || GOT_TERM.load(std::sync::atomic::Ordering::SeqCst)));
    // Time for a parent-death signal to land, were the daemon's parent gone.
    std::thread::sleep(Duration::from_millis(300));
    println!("daemon alive {}", daemon.is_alive());
    let after = multiproc::spawn(square, 3).map(|child| child.join());
    println!("after {after:?}");
}

/// A `SIGTERM` to the program's whole process group (`kill -TERM -PGID`, a supervisor's
/// stop of a program that spawns) is the program's to act on: one that catches it to
/// stop gracefully still has its daemons, and spawns (the fork server, in that group
/// too, died of it, and its daemons with it, killed by their parent-death signal).
fn a_term_to_the_group_leaves_the_fork_server_to_the_parent() {
    let mut h = Helper::start("group_term_caught");
    h.expect("ready", T);
    let group = rustix::process::Pid::from_raw(h.child.id() as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::TERM).unwrap();
    assert_eq!(h.expect("daemon alive ", T), "true", "{}", h.stderr_now());
    assert_eq!(h.expect("after ", T), "Ok(Ok(9))", "{}", h.stderr_now());
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// A child that asked for a process group of its own leads it by the time its spawn
/// returns, whether it has run yet or not (it made it only once it ran: a signal sent
/// to the program's group right after the spawn, a supervisor's stop, reached it, and
/// one to its own group found none). Thirty, three at a time (the second and third
/// may be forked fresh, the next spare not there yet), with each start method and
/// `spawn_fork`.
fn a_child_leads_its_group_when_its_spawn_returns() {
    for method in [
        Some(StartMethod::ForkServer),
        Some(StartMethod::Spawn),
        None,
    ] {
        for _ in 0..10 {
            let children: Vec<_> = (0..3)
                .map(|_| {
                    let builder = Builder::new().process_group(true);
                    let child = match method {
                        Some(method) => builder.start_method(method).spawn(sleep_long, ()),
                        // SAFETY: the closure only sleeps; it takes no lock.
                        None => unsafe { builder.spawn_fork(|| sleep_long(())) },
                    }
                    .unwrap();
                    let pid = rustix::process::Pid::from_raw(child.pid() as i32).unwrap();
                    let group = rustix::process::getpgid(Some(pid));
                    (child, pid, group)
                })
                .collect();
            for (mut child, pid, group) in children {
                child.kill().unwrap();
                let ended = child.join_timeout(T);
                assert_eq!(group, Ok(pid), "{method:?}");
                // Killed, in its call or before it started.
                assert!(
                    matches!(&ended, Err(ProcessError::Signaled(s)) if *s == multiproc::Signal::KILL)
                        || matches!(&ended, Err(ProcessError::Lost(why)) if why.contains("SIGKILL")),
                    "{ended:?}"
                );
            }
        }
    }
}

/// A daemon that leads a process group and has started a process in it.
fn lead_a_group_with_a_member(_: ()) {
    let mut member = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    println!("member {}", member.id());
    std::thread::sleep(Duration::from_secs(600));
    let _ = member.kill();
    let _ = member.wait();
}

fn helper_group_term_ends() {
    let daemon = Builder::new()
        .daemon(true)
        .process_group(true)
        .spawn(lead_a_group_with_a_member, ())
        .unwrap();
    println!("daemon {}", daemon.pid());
    std::thread::sleep(Duration::from_secs(600));
}

/// A `SIGTERM` to the program's process group that ends the program: its daemons end
/// with it, and so does what a daemon that led a group started there, as at any death
/// of the program (the fork server died of the same signal, the daemon by its
/// parent-death signal, and the member of its group lived on).
fn a_term_that_ends_the_parent_ends_its_daemons_groups() {
    let mut h = Helper::start("group_term_ends");
    // The two lines come in either order (the daemon's from another process).
    let (mut daemon, mut member) = (None, None);
    while daemon.is_none() || member.is_none() {
        let line = h.line(T);
        let pid = |prefix| {
            line.strip_prefix(prefix)
                .map(|p: &str| p.parse::<u32>().unwrap())
        };
        daemon = daemon.or(pid("daemon "));
        member = member.or(pid("member "));
    }
    let (daemon, member) = (daemon.unwrap(), member.unwrap());
    // Held by pidfd, so that a survivor is killed (and not a process given its number).
    let kept = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(member as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let group = rustix::process::Pid::from_raw(h.child.id() as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::TERM).unwrap();
    std::os::unix::process::ExitStatusExt::signal(&h.wait(T))
        .filter(|&s| s == libc::SIGTERM)
        .expect("the program did not die of SIGTERM");
    let daemon_gone = common::wait_gone(daemon, T);
    let member_gone = common::wait_gone(member, Duration::from_secs(10));
    if !member_gone {
        let _ = rustix::process::pidfd_send_signal(&kept, rustix::process::Signal::KILL);
        common::wait_gone(member, T);
    }
    common::reap(member);
    common::reap(daemon);
    assert!(daemon_gone, "the daemon outlived its parent");
    assert!(
        member_gone,
        "a member of the daemon's group outlived the program"
    );
}

fn daemon_terminated_at_exit() {
    let mut h = Helper::start("daemon_at_exit");
    let child: u32 = h.expect("child ", T).parse().unwrap();
    let started = Instant::now();
    let status = h.wait(T);
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exit waited for the daemon"
    );
    assert!(
        common::wait_gone(child, Duration::from_secs(5)),
        "daemon survived its parent's exit"
    );
    common::reap(child);
}

fn ids_of_child(_: ()) -> (u32, u32, i32) {
    // SAFETY: plain reads of this process's ids.
    unsafe {
        (
            libc::geteuid(),
            libc::getegid(),
            libc::getgroups(0, std::ptr::null_mut()),
        )
    }
}

/// The signal this process gets when its parent dies (`PR_GET_PDEATHSIG`).
fn parent_death_signal(_: ()) -> i32 {
    let mut signal: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer given.
    let r = unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut signal as *mut libc::c_int) };
    assert_eq!(r, 0);
    signal
}

/// Drops from root to `nobody` after `init` (its fork server runs as root), then
/// spawns: the children run as `nobody`, and a daemon among them can be killed.
fn helper_dropped_privileges() {
    // SAFETY: this process's own users and groups, from its only thread of its own.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
        assert_eq!(libc::setresgid(65534, 65534, 65534), 0);
        assert_eq!(libc::setresuid(65534, 65534, 65534), 0);
    }
    let ids = multiproc::spawn(ids_of_child, ())
        .unwrap()
        .join_timeout(T)
        .map_err(|e| e.to_string());
    println!("ids {ids:?}");
    let signal = Builder::new()
        .daemon(true)
        .spawn(parent_death_signal, ())
        .unwrap()
        .join_timeout(T)
        .map_err(|e| e.to_string());
    println!("parent_death_signal {signal:?}");
    let daemon = Builder::new().daemon(true).spawn(sleep_long, ()).unwrap();
    println!("kill {:?}", daemon.kill().map_err(|e| e.to_string()));
}

/// A program that drops its privileges after `init` (root, then `nobody`): its children
/// run as it does now, not as root (they ran as root, as the fork server started by
/// `init` does, and the parent could not signal them: a `kill` failed, and the exit
/// waited for ever for a daemon it could not end), and its daemons keep their
/// parent-death signal (the change of users cleared it, and they outlived their server).
fn children_run_as_the_parent_does_now() {
    // SAFETY: a plain read of this process's effective user.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test drops root's privileges in a helper: run it as root (CI does)"
    );
    let mut h = Helper::start("dropped_privileges");
    assert_eq!(h.expect("ids ", T), "Ok((65534, 65534, 0))");
    // A daemon still dies with its server: the change of users cleared the signal.
    assert_eq!(
        h.expect("parent_death_signal ", T),
        format!("Ok({})", libc::SIGKILL)
    );
    assert_eq!(h.expect("kill ", T), "Ok(())");
    assert!(h.wait(T).success());
}

fn ignore_sigterm_then_sleep(ready: multiproc::Event) {
    // SAFETY: no other thread of this child handles signals.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    ready.set();
    std::thread::sleep(Duration::from_secs(120));
}

fn helper_daemon_joined_at_exit() {
    let ready = multiproc::Event::new().unwrap();
    let child = Builder::new()
        .daemon(true)
        .spawn(ignore_sigterm_then_sleep, ready.clone())
        .unwrap();
    assert!(ready.wait_timeout(T), "the daemon did not start");
    let pid = child.pid();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = child.join();
    });
    // The thread is in its join (holding the child's channel, asleep on it) before the
    // exit begins.
    let tid = tid_rx.recv_timeout(T).unwrap();
    let wchan = format!("/proc/self/task/{tid}/wchan");
    assert!(
        common::eventually(T, || std::fs::read_to_string(&wchan)
            .unwrap_or_else(|e| panic!("read {wchan}: {e}"))
            .contains("poll")),
        "the joining thread never slept in its join"
    );
    println!("child {pid}");
}

/// A daemon that ignores `SIGTERM` gets its `SIGKILL` after the grace even while another
/// thread of the exiting process joins it (the exit used to wait for that join's lock:
/// for the daemon to end on its own).
fn daemon_ignoring_sigterm_killed_at_exit_while_a_thread_joins_it() {
    let mut h = Helper::start("daemon_joined_at_exit");
    let child: u32 = h.expect("child ", T).parse().unwrap();
    let started = Instant::now();
    if !common::wait_gone(h.child.id(), Duration::from_secs(10)) {
        h.kill_tree(T);
        common::kill_and_reap(child);
        panic!("the exit waited for a daemon that ignores SIGTERM");
    }
    let status = h.wait(T);
    assert!(status.success(), "{status:?}");
    // (The grace began as the line was written; read here a little later.)
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the daemon ended before the grace: did it ignore SIGTERM?"
    );
    assert!(
        common::wait_gone(child, Duration::from_secs(5)),
        "daemon survived its parent's exit"
    );
    common::reap(child);
}

/// A spawn whose request (environment, name, arguments) is larger than the fork server
/// reads fails with `InvalidInput`, saying so; the server and its children live on
/// (the server dropped the connection, killing its daemons, and was started again for
/// the same end).
fn a_spawn_larger_than_the_fork_server_takes_fails_alone() {
    let mut daemon = Builder::new().daemon(true).spawn(sleep_long, ()).unwrap();
    let err = Builder::new()
        .env("MP_TEST_BLOB", "x".repeat(65 << 20))
        .spawn(square, 2)
        .unwrap_err();
    assert!(
        matches!(&err, SpawnError::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput),
        "{err}"
    );
    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(daemon.is_alive(), "the daemon died with its fork server");
    assert_eq!(
        multiproc::spawn(square, 3)
            .unwrap()
            .join_timeout(T)
            .unwrap(),
        9
    );
    daemon.kill().unwrap();
    assert!(daemon.join_timeout(T).is_err());
}

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the clock's value into `t`, which lives on this stack frame.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Quick children teach the spawn path's waits to look for their answers before they
/// sleep; the join of a child that runs for a while still sleeps, and costs the waiting
/// thread next to no CPU (at most the 2 ms a look lasts), with each start method.
fn joining_a_long_child_costs_no_cpu() {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        for i in 0..30 {
            let mut child = Builder::new()
                .start_method(method)
                .spawn(square, i)
                .unwrap();
            assert_eq!(child.join_timeout(T).unwrap(), i * i);
        }
        joined_with_little_cpu(
            Builder::new()
                .start_method(method)
                .spawn(nap, 1500)
                .unwrap(),
        );
    }
    for i in 0..30 {
        // SAFETY: the closure computes and returns; it takes no lock that another test
        // thread could hold at the fork.
        let mut child = unsafe { Builder::new().spawn_fork(move || square(i)) }.unwrap();
        assert_eq!(child.join_timeout(T).unwrap(), i * i);
    }
    // SAFETY: the closure sleeps and returns; it takes no lock.
    joined_with_little_cpu(unsafe { Builder::new().spawn_fork(|| nap(1500)) }.unwrap());
}

/// Joins a child that naps for 1.5 s; the join takes this thread under 100 ms of CPU.
fn joined_with_little_cpu(mut child: multiproc::JoinHandle<u64>) {
    let before = thread_cpu();
    assert_eq!(child.join_timeout(T).unwrap(), 1500);
    let used = thread_cpu() - before;
    assert!(
        used < Duration::from_millis(100),
        "{used:?} of CPU to wait 1.5 s"
    );
}

fn helper_leaks() {
    let me = std::process::id();
    // Warm up: the fork server and the death pipe exist from the first spawn on.
    multiproc::spawn(square, 1).unwrap().join().unwrap();
    let fds = common::fd_count();
    let server = common::fork_server_of(me).expect("fork server");
    let spare_ready = || {
        common::eventually(
            Duration::from_secs(5),
            || matches!(common::children_of(server).as_slice(), [(_, 'S', name)] if name == "mp-spare"),
        )
    };
    // A spawn that goes to the spare (a request that comes before the server has
    // forked its next spare is forked on demand instead). The server then holds its
    // own: stdio, its connection, the death pipe, the next spare's pidfd and
    // connection, and the connection that spawn's assignment went on (kept until the
    // next assignment).
    let spawn_to_spare = || {
        assert!(spare_ready(), "no spare");
        multiproc::spawn(square, 2).unwrap().join().unwrap();
        assert!(spare_ready(), "no spare after the spawn");
    };
    spawn_to_spare();
    // Settled: the server closes a reaped child's descriptors after it reports its
    // status, which `join` need not wait for.
    let server_fds = common::settled(|| common::fds_of(server));
    for i in 0..200u64 {
        let method = if i % 10 == 0 {
            StartMethod::Spawn
        } else {
            StartMethod::ForkServer
        };
        let child = Builder::new()
            .start_method(method)
            .spawn(square, i)
            .unwrap();
        assert_eq!(child.join().unwrap(), i * i);
    }
    // Failures must not leak either.
    for _ in 0..20 {
        let child = multiproc::spawn(|()| -> u8 { std::process::exit(7) }, ()).unwrap();
        assert!(matches!(child.join(), Err(ProcessError::Exited(7))));
    }
    // A handle dropped unjoined while a view of it lives, the view dropped after a
    // spawn that could not forget the child yet: a later spawn forgets it (its pidfd
    // and status pipe were kept until exit).
    let h = multiproc::spawn(square, 3).unwrap();
    let view = h.process();
    drop(h);
    assert!(common::eventually(T, || !view.is_alive()));
    multiproc::spawn(square, 4).unwrap().join().unwrap();
    drop(view);
    assert_eq!(
        common::fork_server_of(me),
        Some(server),
        "the fork server changed"
    );
    // The server forks its next spare after each spawn, asynchronously, and the
    // spare then names itself and sleeps: this waits for it (a missing spare then
    // shows as `[]`, more than one as a leak).
    spawn_to_spare();
    let mine: Vec<_> = common::children_of(me);
    let servers: Vec<_> = common::children_of(server);
    println!("fds {fds} {}", common::fd_count());
    common::eventually(Duration::from_secs(5), || {
        common::fds_of(server) == server_fds
    });
    println!("server_fds {server_fds} {}", common::fds_of(server));
    println!("children {mine:?}");
    println!("server_children {servers:?}");
}

/// The CPUs this process may run on, as the kernel lists them.
fn cpus_allowed() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// While another job keeps CPUs busy, the fork server forks its spares held to its own
/// CPU for a while (its spares would otherwise wait behind that job); the hold ends as
/// the fork does, so every child runs where its parent may.
fn children_keep_the_cpu_mask_on_a_busy_machine() {
    /// Stops the busy threads also when the test fails.
    struct Busy(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        Vec<std::thread::JoinHandle<()>>,
    );
    impl Drop for Busy {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            for b in self.1.drain(..) {
                let _ = b.join();
            }
        }
    }
    let mask = cpus_allowed();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads = (0..cpus.saturating_sub(1).max(1))
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let until = Instant::now() + T;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let busy = Busy(stop, threads);
    let masks = children_masks(300);
    drop(busy);
    let held = masks.iter().filter(|m| **m != mask).count();
    assert_eq!(
        held, 0,
        "{held} of 300 children kept another mask than {mask}: {masks:?}"
    );
}

/// The CPU masks of `n` children spawned one after another.
fn children_masks(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let mut child = multiproc::spawn(|()| cpus_allowed(), ()).unwrap();
            child.join_timeout(T).unwrap()
        })
        .collect()
}

/// As [`children_keep_the_cpu_mask_on_a_busy_machine`], with every spare held (a
/// setting of builds with debug assertions), so that the held path runs on any machine.
fn children_of_held_spares_keep_the_cpu_mask() {
    if !cfg!(debug_assertions) {
        panic!(
            "this test needs debug assertions (the fork server's setting that holds every spare)"
        );
    }
    let exe = std::env::current_exe().unwrap();
    let h = Helper::start_with("held_spares", exe, &[("MULTIPROC_TEST_HOLD_SPARES", "1")]);
    let mask = h.expect("mask ", T);
    let children = h.expect("children ", T);
    let masks: Vec<&str> = children.split(';').collect();
    assert_eq!(masks.len(), 50);
    assert!(
        masks.iter().all(|m| *m == mask),
        "parent {mask}, children {masks:?}"
    );
}

fn helper_held_spares() {
    println!("mask {}", cpus_allowed());
    println!("children {}", children_masks(50).join(";"));
}

/// How a process maps the program's code: where the program file's executable pieces
/// and the anonymous executable blocks between them span, how many pieces, how many
/// bytes of blocks, how many kB of those on huge pages, and whether every block holds
/// the file's bytes for its place.
#[derive(Debug, Serialize, Deserialize)]
struct CodeLayout {
    span: (u64, u64),
    pieces: usize,
    moved: u64,
    huge_kb: u64,
    same_bytes: bool,
}

/// What this process's `/proc/self/smaps` says of the program's code.
fn code_layout() -> CodeLayout {
    use std::os::unix::fs::FileExt;
    struct Map {
        lo: u64,
        hi: u64,
        offset: u64,
        path: String,
        huge_kb: u64,
    }
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe = exe.to_str().unwrap();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut code: Vec<Map> = Vec::new();
    let mut current_is_code = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if let Some((lo, hi)) = fields[0].split_once('-')
            && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
        {
            current_is_code = fields[1] == "r-xp";
            if current_is_code {
                code.push(Map {
                    lo,
                    hi,
                    offset: u64::from_str_radix(fields[2], 16).unwrap(),
                    path: fields.get(5..).map(|p| p.join(" ")).unwrap_or_default(),
                    huge_kb: 0,
                });
            }
        } else if current_is_code && fields[0] == "AnonHugePages:" {
            code.last_mut().unwrap().huge_kb = fields[1].parse().unwrap();
        }
    }
    let pieces: Vec<&Map> = code.iter().filter(|m| m.path == exe).collect();
    let file = std::fs::File::open(exe).unwrap();
    let mut layout = CodeLayout {
        span: (
            pieces.iter().map(|m| m.lo).min().unwrap(),
            pieces.iter().map(|m| m.hi).max().unwrap(),
        ),
        pieces: pieces.len(),
        moved: 0,
        huge_kb: 0,
        same_bytes: true,
    };
    for block in code.iter().filter(|m| m.path.is_empty()) {
        // The file's offset for the block's start, from the piece next to it.
        let offset = if let Some(p) = pieces.iter().find(|p| p.hi == block.lo) {
            p.offset + (p.hi - p.lo)
        } else if let Some(p) = pieces.iter().find(|p| p.lo == block.hi) {
            p.offset - (block.hi - block.lo)
        } else {
            continue;
        };
        let len = usize::try_from(block.hi - block.lo).unwrap();
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, offset).unwrap();
        // SAFETY: a mapping of this process, readable, listed a moment ago, never unmapped.
        let here = unsafe { std::slice::from_raw_parts(block.lo as *const u8, len) };
        layout.same_bytes &= here == bytes;
        layout.moved += block.hi - block.lo;
        layout.huge_kb += block.huge_kb;
        layout.span = (layout.span.0.min(block.lo), layout.span.1.max(block.hi));
    }
    layout
}

/// Prints the code layout of the fifth child of a fork server that has just started.
fn helper_code_layout() {
    let layouts: Vec<CodeLayout> = (0..5)
        .map(|_| {
            let mut child = multiproc::spawn(|()| code_layout(), ()).unwrap();
            child.join_timeout(T).unwrap()
        })
        .collect();
    let l = &layouts[4];
    println!(
        "layout {} {} {} {} {} {}",
        l.span.0, l.span.1, l.pieces, l.moved, l.huge_kb, l.same_bytes
    );
}

/// The layout a helper process's fork server gives its children, with `env` set.
fn helper_layout(env: &[(&str, &str)]) -> CodeLayout {
    let exe = std::env::current_exe().unwrap();
    let mut h = Helper::start_with("code_layout", exe, env);
    let line = h.expect("layout ", T);
    assert!(h.wait(T).success());
    let f: Vec<&str> = line.split(' ').collect();
    CodeLayout {
        span: (f[0].parse().unwrap(), f[1].parse().unwrap()),
        pieces: f[2].parse().unwrap(),
        moved: f[3].parse().unwrap(),
        huge_kb: f[4].parse().unwrap(),
        same_bytes: f[5].parse().unwrap(),
    }
}

/// The fork server puts every whole 2 MiB block of the program's code on huge pages
/// (where the kernel has them to give) before its first spare, its own running code
/// among them: its children run the same bytes at the same addresses, without a page
/// fault per 64 KiB of code. (`CODE_PAD` makes this program's code hold such blocks.)
fn children_run_the_code_from_huge_pages() {
    const HUGE: u64 = 2 << 20;
    // A kernel short of free huge pages at that moment (its memory fragmented) leaves
    // the code where it is: three fork servers, one after another, are given the chance.
    let mut l = helper_layout(&[]);
    for _ in 0..2 {
        if l.moved > 0 || !huge_pages_expected() {
            break;
        }
        l = helper_layout(&[]);
    }
    let whole = (l.span.1 / HUGE * HUGE).saturating_sub(l.span.0.next_multiple_of(HUGE));
    assert!(whole >= HUGE, "no whole block in the code: {l:?}");
    assert!(l.same_bytes, "{l:?}");
    if huge_pages_expected() {
        assert_eq!(l.moved, whole, "{l:?}");
    }
    assert!(l.moved == 0 || l.moved == whole, "{l:?}");
    assert_eq!(l.huge_kb, l.moved / 1024, "{l:?}");
    // The ends that fill no whole block stay the file's: one piece before and one after
    // the blocks, unless the code starts or ends at a block's edge.
    if l.moved == 0 {
        assert_eq!(l.pieces, 1, "{l:?}");
    } else {
        assert!((1..=2).contains(&l.pieces), "{l:?}");
    }
}

/// With `MULTIPROC_HUGE_CODE=0`, the code stays where it was loaded (for profilers,
/// which name functions from the file a mapping comes from).
fn children_keep_the_code_pages_when_told() {
    let l = helper_layout(&[("MULTIPROC_HUGE_CODE", "0")]);
    assert_eq!((l.pieces, l.moved, l.huge_kb), (1, 0, 0), "{l:?}");
}

/// Whether the fork server should find huge pages for code: on x86-64, with a kernel
/// that has `MADV_COLLAPSE` (6.1) and transparent huge pages not switched off.
fn huge_pages_expected() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    (major, minor) >= (6, 1) && enabled.is_ok_and(|e| !e.contains("[never]"))
}

fn spawns_leave_no_zombie_process_or_fd() {
    let mut h = Helper::start("leaks");
    let fds = h.expect("fds ", Duration::from_secs(120));
    let (before, after) = fds.split_once(' ').unwrap();
    assert_eq!(before, after, "descriptor count changed across 220 spawns");
    let server_fds = h.expect("server_fds ", T);
    let (before, after) = server_fds.split_once(' ').unwrap();
    assert_eq!(
        before, after,
        "the fork server's descriptor count changed across 220 spawns"
    );
    let children = h.expect("children ", T);
    // Only the fork server remains, and it is not a zombie.
    assert!(
        children.contains("mp-forkserver") && !children.contains("'Z'"),
        "{children}"
    );
    assert_eq!(children.matches("),").count(), 0, "{children}");
    // Under the server, only the one spare it keeps forked ahead: no zombie, no child.
    let spare = h.expect("server_children ", T);
    assert!(
        spare.starts_with("[(") && spare.ends_with(", 'S', \"mp-spare\")]"),
        "{spare}"
    );
    assert!(h.wait(T).success());
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Env {
    cwd: String,
    set: Option<String>,
    removed: Option<String>,
    path: Option<String>,
}

fn env_report(_: ()) -> Env {
    Env {
        cwd: std::env::current_dir().unwrap().display().to_string(),
        set: std::env::var("MP_TEST_SET").ok(),
        removed: std::env::var("HOME").ok(),
        path: std::env::var("PATH").ok(),
    }
}

fn environment_and_directory() {
    let dir = common::tempdir("lifecycle");
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .start_method(method)
            .env("MP_TEST_SET", "yes")
            .env_remove("HOME")
            .current_dir(&dir)
            .spawn(env_report, ())
            .unwrap();
        let env = child.join_timeout(T).unwrap();
        assert_eq!(env.cwd, dir.canonicalize().unwrap().display().to_string());
        assert_eq!(env.set.as_deref(), Some("yes"));
        assert_eq!(env.removed, None);
        assert_eq!(env.path, std::env::var("PATH").ok());

        let mut child = Builder::new()
            .start_method(method)
            .env_clear()
            .env("MP_TEST_SET", "only")
            .spawn(env_report, ())
            .unwrap();
        let env = child.join_timeout(T).unwrap();
        assert_eq!((env.set.as_deref(), env.path), (Some("only"), None));
    }
    // Variables an environment cannot hold are refused, not dropped from the child's
    // without a word (spawn_fork checks the same, before it forks).
    for (key, value) in [
        ("A=B", "1"),
        ("", "1"),
        ("NUL\0KEY", "1"),
        ("NUL_VALUE", "a\0b"),
    ] {
        match Builder::new().env(key, value).spawn(env_report, ()) {
            Err(SpawnError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{key:?}: {e}");
            }
            Err(e) => panic!("{key:?}: {e}"),
            Ok(mut child) => panic!("{key:?} was accepted: {:?}", child.join_timeout(T)),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn marker_here(_: ()) -> Option<String> {
    std::fs::read_to_string("marker").ok()
}

/// Started in a directory holding `marker` ("old"), where its fork server starts too.
fn helper_directories() {
    let methods = [StartMethod::ForkServer, StartMethod::Spawn];
    let marker = |what: &str| {
        for method in methods {
            let found = Builder::new()
                .start_method(method)
                .spawn(marker_here, ())
                .unwrap()
                .join_timeout(T)
                .unwrap();
            println!("{what} {found:?}");
        }
    };
    marker("same");
    // The same path, but another directory: the server's is gone.
    let dir = std::env::current_dir().unwrap();
    std::fs::remove_file("marker").unwrap();
    std::fs::remove_dir(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("marker"), "new").unwrap();
    std::env::set_current_dir(&dir).unwrap();
    marker("remade");
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("marker"), "sub").unwrap();
    std::env::set_current_dir(&sub).unwrap();
    marker("other");
    // A directory removed under the parent: it has no path to give the child, which
    // must not start in the server's directory without a word.
    std::fs::remove_file(sub.join("marker")).unwrap();
    std::fs::remove_dir(&sub).unwrap();
    for method in methods {
        let spawned = Builder::new()
            .start_method(method)
            .spawn(marker_here, ())
            .map(|mut child| child.join_timeout(T));
        match spawned {
            Err(multiproc::SpawnError::Io(e)) => println!("removed {:?}", e.kind()),
            other => println!("removed {other:?}"),
        }
    }
    // Given a directory, it starts there.
    let found = Builder::new()
        .current_dir(&dir)
        .spawn(marker_here, ())
        .unwrap()
        .join_timeout(T)
        .unwrap();
    println!("given {found:?}");
}

/// A child starts in its parent's directory as it is at the spawn: the fork server's
/// while the parent is still there, another one after the parent moved, even one of the
/// same name as the server's; a spawn from a directory removed meanwhile fails
/// (`NotFound`) unless the child is given one.
fn children_follow_the_parents_directory() {
    let dir = common::tempdir("directories");
    std::fs::write(dir.join("marker"), "old").unwrap();
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.current_dir(&dir);
    let mut h = Helper::start_command("directories", command, &[]);
    for (what, found) in [("same", "old"), ("remade", "new"), ("other", "sub")] {
        for _method in 0..2 {
            assert_eq!(h.expect(&format!("{what} "), T), format!("Some({found:?})"));
        }
    }
    for _method in 0..2 {
        assert_eq!(h.expect("removed ", T), "NotFound");
    }
    assert_eq!(h.expect("given ", T), "Some(\"new\")");
    assert!(h.wait(T).success());
    let _ = std::fs::remove_dir_all(dir);
}

fn echo_upper(_: ()) -> usize {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    print!("{}", input.to_uppercase());
    eprint!("err:{}", input.len());
    input.len()
}

/// `echo_upper` started by `method`, its three standard streams piped.
fn piped_echo(method: StartMethod) -> multiproc::JoinHandle<usize> {
    Builder::new()
        .start_method(method)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn(echo_upper, ())
        .unwrap()
}

fn piped_stdio() {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = piped_echo(method);
        let mut stdin = child.take_stdin().unwrap();
        stdin.write_all(b"hello child").unwrap();
        drop(stdin);
        let (out, err) = piped_output(&mut child);
        assert_eq!(child.join_timeout(T).unwrap(), 11);
        assert_eq!(out, "HELLO CHILD");
        assert_eq!(err, "err:11");
    }
}

/// A piped stdin that the parent never took is closed as the join begins, as std's
/// `Child::wait` does: a child that reads its input to the end ends (the handle held
/// the pipe's writer, and the join waited for ever). A `join_timeout` leaves it: the
/// handle stays usable.
fn a_piped_stdin_not_taken_is_closed_at_the_join() {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = piped_echo(method);
        assert!(matches!(
            child.join_timeout(Duration::from_millis(50)),
            Err(ProcessError::Timeout)
        ));
        let (out, err) = (child.take_stdout().unwrap(), child.take_stderr().unwrap());
        let process = child.process();
        // The join on a thread of its own, given 10 s: the child is killed past them.
        let (tx, rx) = std::sync::mpsc::channel();
        let joiner = std::thread::spawn(move || tx.send(child.join()).unwrap());
        let joined = rx.recv_timeout(Duration::from_secs(10));
        if joined.is_err() {
            process.kill().unwrap();
        }
        joiner.join().unwrap();
        assert_eq!(joined.unwrap().unwrap(), 0, "{method:?}");
        assert_eq!(read_all(out), "");
        assert_eq!(read_all(err), "err:0");
    }
}

/// Everything a child with piped stdout and stderr writes to each, read to their end.
fn piped_output<R>(child: &mut multiproc::JoinHandle<R>) -> (String, String) {
    (
        read_all(child.take_stdout().unwrap()),
        read_all(child.take_stderr().unwrap()),
    )
}

/// What `r` gives, read to its end.
fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    s
}

/// A child forked straight from its parent holds none of the parent's ends of its
/// piped stdio: its stdin ends when the parent drops the writer (it held that writer
/// itself, and waited for ever).
fn piped_stdio_of_a_forked_child() {
    // SAFETY: the closure only reads stdin and writes stdout and stderr.
    let mut child = unsafe {
        Builder::new()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_fork(|| echo_upper(()))
    }
    .unwrap();
    let mut stdin = child.take_stdin().unwrap();
    stdin.write_all(b"hello child").unwrap();
    drop(stdin);
    // Its output fits in the pipes: it ends without a reader.
    let joined = child.join_timeout(Duration::from_secs(10));
    if joined.is_err() {
        child.kill().unwrap();
        let _ = child.join_timeout(T);
    }
    assert_eq!(joined.unwrap(), 11);
    let (out, err) = piped_output(&mut child);
    assert_eq!(out, "HELLO CHILD");
    assert_eq!(err, "err:11");
}

fn print_lines(n: u32) {
    for i in 0..n {
        println!("line {i}");
    }
}

fn stdout_to_file() {
    let dir = common::tempdir("lifecycle");
    let path = dir.join("out.txt");
    let file = std::fs::File::create(&path).unwrap();
    let mut child = Builder::new()
        .stdout(Stdio::from(file))
        .spawn(print_lines, 3)
        .unwrap();
    child.join_timeout(T).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "line 0\nline 1\nline 2\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn log_work(_: ()) {
    tracing::info!("working");
    // A process of its own under this one, started through this child's own server.
    Builder::new()
        .name("nested")
        .spawn(log_nested, ())
        .unwrap()
        .join()
        .unwrap();
}

fn log_nested(_: ()) {
    tracing::info!("nested work");
}

fn helper_logging() {
    // `init_with`'s setup installed the subscriber here and runs again in each child.
    tracing::info!("starting");
    Builder::new()
        .name("worker1")
        .spawn(log_work, ())
        .unwrap()
        .join()
        .unwrap();
    Builder::new()
        .name("renamed worker")
        .start_method(StartMethod::Spawn)
        .spawn(log_work, ())
        .unwrap()
        .join()
        .unwrap();
    println!("done");
}

fn logging_names_processes() {
    // A separate process, so that the subscriber affects nothing else.
    let mut h = Helper::start_with(
        "logging",
        std::env::current_exe().unwrap(),
        &[("MP_TEST_LOGGING", "1")],
    );
    h.expect("done", T);
    assert!(h.wait(T).success());
    let err = h.stderr_now();
    assert!(err.contains("MainProcess: starting"), "{err}");
    assert!(err.contains("worker1: working"), "{err}");
    assert!(err.contains("renamed worker: working"), "{err}");
    // The setup ran in the grandchildren too, also in the one whose parent was started by
    // executing the program (whose image had not run `init_with`: the setup reached
    // its children only).
    assert_eq!(err.matches("nested: nested work").count(), 2, "{err}");
}

fn ready_then_sleep(_: ()) {
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
}

/// Waits for the child to print its first line: its function is running.
fn wait_ready<R>(child: &mut multiproc::JoinHandle<R>) {
    let mut out = std::io::BufReader::new(child.take_stdout().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
}

fn tracing_inside_multiproc_does_not_deadlock() {
    // The child starts a fork server of its own (by exec, while holding multiproc's
    // state) and spawns through it, with every internal event formatted by a formatter
    // that calls `current_process()`.
    let mut h = Helper::start_with(
        "logging",
        std::env::current_exe().unwrap(),
        &[("MP_TEST_LOGGING", "trace")],
    );
    h.expect("done", T);
    assert!(h.wait(T).success());
    let err = h.stderr_now();
    assert!(err.contains("worker1: working"), "{err}");
    assert!(
        err.contains("worker1: spawned") && err.contains("name=nested"),
        "{err}"
    );
}

fn active_children_and_status() {
    let mut a = Builder::new()
        .name("active-a")
        .stdout(Stdio::piped())
        .spawn(ready_then_sleep, ())
        .unwrap();
    let mut b = Builder::new()
        .name("active-b")
        .stdout(Stdio::piped())
        .spawn(ready_then_sleep, ())
        .unwrap();
    wait_ready(&mut a);
    wait_ready(&mut b);
    let pids: Vec<u32> = multiproc::active_children()
        .iter()
        .map(|c| c.pid())
        .collect();
    assert!(pids.contains(&a.pid()) && pids.contains(&b.pid()));
    assert!(a.is_alive());
    assert_eq!(a.exit_status(), None);
    let view = a.process();
    assert_eq!((view.name(), view.pid()), ("active-a", a.pid()));
    a.terminate().unwrap();
    // A timeout too long to add to the clock is no timeout (here and for `join_timeout`).
    let status = view.wait(Some(Duration::MAX)).unwrap().unwrap();
    assert_eq!(status.signal(), Some(multiproc::Signal::TERM));
    assert!(!a.is_alive());
    assert_eq!(a.exit_status(), Some(status));
    assert!(matches!(a.join(), Err(ProcessError::Signaled(s)) if s == multiproc::Signal::TERM));
    b.kill().unwrap();
    assert!(
        matches!(b.join_timeout(Duration::MAX), Err(ProcessError::Signaled(s)) if s == multiproc::Signal::KILL)
    );
    let pids: Vec<u32> = multiproc::active_children()
        .iter()
        .map(|c| c.pid())
        .collect();
    assert!(!pids.contains(&b.pid()));
}

fn sleep_then_answer(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn join_timeout_keeps_handle_usable() {
    let mut child = multiproc::spawn(sleep_then_answer, 3000).unwrap();
    let err = child.join_timeout(Duration::from_millis(10)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(child.is_alive());
    assert_eq!(child.join_timeout(T).unwrap(), 3000);
    assert!(matches!(child.join_timeout(T), Err(ProcessError::Joined)));
}

fn concurrent_spawns_from_threads() {
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    let x = t * 100 + i;
                    let mut child = multiproc::spawn(square, x).unwrap();
                    assert_eq!(child.join_timeout(T).unwrap(), x * x);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn daemon_outlives_the_thread_that_spawned_it() {
    // The kernel's parent-death signal follows the thread that forked; a daemon spawned
    // from a short-lived thread must not die with that thread.
    let mut child = std::thread::spawn(|| {
        Builder::new()
            .daemon(true)
            .spawn(sleep_then_answer, 700)
            .unwrap()
    })
    .join()
    .unwrap();
    let mut forked = std::thread::spawn(|| {
        // SAFETY: the closure sleeps and returns a constant; it takes no lock.
        unsafe {
            Builder::new().daemon(true).spawn_fork(|| {
                std::thread::sleep(Duration::from_millis(700));
                7u8
            })
        }
        .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 700);
    assert_eq!(forked.join_timeout(T).unwrap(), 7);
}

fn fork_start_method_captures() {
    let table: Vec<u64> = (0..1000).collect();
    let offset = 5;
    // SAFETY: the closure reads its captures and computes; it takes no lock.
    let mut child =
        unsafe { Builder::new().spawn_fork(move || table.iter().sum::<u64>() + offset) }.unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 499_505);
}

fn big_result(_: ()) -> Vec<u8> {
    vec![1u8; 32 << 20]
}

/// A child whose result is larger than a socket's buffer ends once it has sent it,
/// before any join: `is_alive` says no, its status is there, and its pidfd is
/// readable; the join then has the result. (It stayed blocked in its send until a join
/// read the result, alive for `is_alive` and `wait`, its pidfd never readable.) Forked
/// straight from this process or by the fork server.
fn a_large_result_does_not_keep_its_child_alive() {
    let view = |child: &multiproc::JoinHandle<Vec<u8>>| {
        let ended = common::eventually(Duration::from_secs(10), || !child.is_alive());
        let readable = rustix::event::poll(
            &mut [rustix::event::PollFd::new(
                child,
                rustix::event::PollFlags::IN,
            )],
            Some(&rustix::time::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            }),
        )
        .is_ok_and(|n| n == 1);
        // (The status comes from the fork server a moment after the pidfd is ready.)
        (ended, readable, child.process().wait(Some(T)))
    };
    let mut child = Builder::new().spawn(big_result, ()).unwrap();
    let (ended, readable, status) = view(&child);
    assert!(ended && readable, "the child still runs, its result unread");
    assert!(status.unwrap().is_some_and(|s| s.success()));
    assert_eq!(child.join_timeout(T).unwrap().len(), 32 << 20);
    // SAFETY: the closure allocates and returns; it takes no lock.
    let mut child = unsafe { Builder::new().spawn_fork(|| vec![1u8; 32 << 20]) }.unwrap();
    let (ended, readable, status) = view(&child);
    assert!(
        ended && readable,
        "the forked child still runs, its result unread"
    );
    assert!(status.unwrap().is_some_and(|s| s.success()));
    assert_eq!(child.join_timeout(T).unwrap().len(), 32 << 20);
}

fn dropped_handle_releases_blocked_child() {
    // The child sends 32 MiB that nobody reads; dropping the handle lets it go.
    let child = Builder::new().name("unread").spawn(big_result, ()).unwrap();
    let view = child.process();
    drop(child);
    assert!(view.wait(Some(T)).unwrap().is_some_and(|s| s.success()));
}
