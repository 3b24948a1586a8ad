//! Processes that fail: panics, exits, crashes, kills, timeouts, a parent that is
//! SIGKILLed, bad arguments and results, corrupt or forged call messages, a replaced
//! executable and a killed fork server. Nothing hangs and nothing is left behind.
#![allow(unsafe_code)] // segfaults on purpose, ignores signals, and uses `spawn_fork`

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio as StdStdio};
use std::time::{Duration, Instant};

use common::{Helper, Unserializable, trial};
use multiproc::{Builder, ProcessError, Signal, SpawnError, StartMethod, Stdio};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const T: Duration = Duration::from_secs(30);

fn main() {
    common::main(
        vec![
            trial(
                "panic_with_message_and_location",
                panic_with_message_and_location,
            ),
            trial("panic_backtrace_comes_back", panic_backtrace_comes_back),
            trial("exit_code_is_reported", exit_code_is_reported),
            trial(
                "exit_codes_with_sigchld_ignored",
                exit_codes_with_sigchld_ignored,
            ),
            trial(
                "children_of_a_program_that_blocks_sigterm_can_be_terminated",
                children_of_a_program_that_blocks_sigterm_can_be_terminated,
            ),
            trial(
                "children_terminated_as_their_spawn_returns_end_by_it",
                children_terminated_as_their_spawn_returns_end_by_it,
            ),
            trial(
                "a_handler_set_before_init_keeps_its_flags_in_children",
                a_handler_set_before_init_keeps_its_flags_in_children,
            ),
            trial(
                "a_large_call_that_cannot_be_sent_fails_the_spawn",
                a_large_call_that_cannot_be_sent_fails_the_spawn,
            ),
            trial(
                "a_fork_server_out_of_descriptors_refuses_and_goes_on",
                a_fork_server_out_of_descriptors_refuses_and_goes_on,
            ),
            trial("segfault_is_reported", segfault_is_reported),
            trial(
                "a_panic_payload_that_panics_when_dropped",
                a_panic_payload_that_panics_when_dropped,
            ),
            trial(
                "a_long_panic_message_comes_back_whole",
                a_long_panic_message_comes_back_whole,
            ),
            trial(
                "a_crash_is_reported_while_a_process_it_forked_lives",
                a_crash_is_reported_while_a_process_it_forked_lives,
            ),
            trial(
                "a_kill_mid_result_is_reported_while_a_process_it_forked_lives",
                a_kill_mid_result_is_reported_while_a_process_it_forked_lives,
            ),
            trial("abort_is_reported", abort_is_reported),
            trial("killed_from_outside", killed_from_outside),
            trial("join_timeout_then_kill", join_timeout_then_kill),
            trial("ignored_sigterm_then_kill", ignored_sigterm_then_kill),
            trial(
                "parent_sigkilled_takes_daemons_along",
                parent_sigkilled_takes_daemons_along,
            ),
            trial("unserializable_arguments", unserializable_arguments),
            trial(
                "undecodable_arguments_are_lost",
                undecodable_arguments_are_lost,
            ),
            trial(
                "killed_before_call_started_is_lost",
                killed_before_call_started_is_lost,
            ),
            trial(
                "unencodable_and_undecodable_results",
                unencodable_and_undecodable_results,
            ),
            trial("corrupt_bytes_from_child", corrupt_bytes_from_child),
            trial(
                "out_of_descriptors_spawns_fail_and_results_are_lost_saying_why",
                out_of_descriptors,
            ),
            trial(
                "forged_call_messages_are_refused",
                forged_call_messages_are_refused,
            ),
            trial("tokens_meant_for_another_process", foreign_tokens),
            trial(
                "replaced_executable_still_runs_its_code",
                replaced_executable_still_runs_its_code,
            ),
            trial(
                "killed_fork_server_is_replaced",
                killed_fork_server_is_replaced,
            ),
            trial(
                "orphans_of_a_killed_fork_server_are_reaped_by_a_subreaper_parent",
                orphans_of_a_killed_fork_server_are_reaped_by_a_subreaper_parent,
            ),
            trial(
                "a_killed_fork_servers_spare_is_reaped_by_a_subreaper_parent",
                a_killed_fork_servers_spare_is_reaped_by_a_subreaper_parent,
            ),
            trial(
                "a_server_dying_before_its_answer_fails_the_spawn_once",
                server_dying_unanswered,
            ),
            trial(
                "spare_handed_a_request_outlives_its_server",
                spare_handed_a_request_outlives_its_server,
            ),
            trial(
                "stopped_fork_server_is_replaced",
                stopped_fork_server_is_replaced,
            ),
            trial(
                "stopped_fork_server_is_replaced_while_a_large_request_waits",
                stopped_fork_server_is_replaced_while_a_large_request_waits,
            ),
            trial("unusable_current_dir", unusable_current_dir),
            trial(
                "fork_failures_keep_their_kind_and_leak_nothing",
                fork_failure_keeps_its_kind,
            ),
        ],
        helpers,
        Duration::from_secs(600),
    );
}

fn helpers(mode: &str) {
    match mode {
        "doomed_parent" => helper_doomed_parent(),
        "replaced" => helper_replaced(),
        "server_killed" => helper_server_killed(),
        "server_killed_subreaper" => helper_server_killed_subreaper(),
        "server_killed_spare_reaped" => helper_server_killed_spare_reaped(),
        "server_dies_unanswered" => helper_server_dies_unanswered(),
        "server_stopped" => helper_server_stopped(false),
        "server_stopped_large" => helper_server_stopped(true),
        "spare_server_killed" => helper_spare_server_killed(),
        "main" => println!("main ran"),
        "fork_limited" => helper_fork_limited(),
        "sigchld_ignored" => helper_sigchld_ignored(),
        "sigterm_blocked" => helper_sigterm_blocked(),
        "siginfo_term" => helper_siginfo_term(),
        "call_send_fails" => helper_call_send_fails(),
        "server_out_of_descriptors" => helper_server_out_of_descriptors(),
        other => panic!("unknown helper mode {other}"),
    }
}

/// Starts `f` with each start method (the fork one included), stderr silenced.
fn each_method<R: Serialize + serde::de::DeserializeOwned>(
    f: fn(()) -> R,
    check: impl Fn(&str, Result<R, ProcessError>),
) {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .start_method(method)
            .stderr(Stdio::null())
            .spawn(f, ())
            .unwrap();
        check(&format!("{method:?}"), child.join_timeout(T));
    }
    // SAFETY: `f` is one of the small functions below; none takes a lock another test
    // thread could hold at the fork.
    let mut child = unsafe {
        Builder::new()
            .stderr(Stdio::null())
            .spawn_fork(move || f(()))
    }
    .unwrap();
    check("fork", child.join_timeout(T));
}

fn boom(_: ()) -> u32 {
    panic!("boom {}", 42)
}

fn panic_with_message_and_location() {
    each_method(boom, |method, r| {
        let Err(ProcessError::Panicked(p)) = r else {
            panic!("{method}: {r:?}")
        };
        assert_eq!(p.message(), "boom 42", "{method}");
        let loc = p.location().unwrap();
        assert!(
            loc.file().ends_with("process_failures.rs"),
            "{method}: {loc}"
        );
        assert_eq!(loc.line(), line_of("panic!(\"boom {}\", 42)"), "{method}");
        assert!(p.to_string().contains("panicked at"), "{p}");
    });
    // A panic the child caught itself does not stand in for the one that ends it.
    each_method(rethrows_another, |method, r| {
        let Err(ProcessError::Panicked(p)) = r else {
            panic!("{method}: {r:?}")
        };
        assert_eq!(p.message(), "second", "{method}");
        assert_eq!(p.location(), None, "{method}: resume_unwind has none");
    });
}

fn panics_at_length(_: ()) -> u32 {
    panic!("{}", "x".repeat(100_000))
}

/// A panic whose report is larger than a socket should hold (it travels in a memory
/// file) comes back whole.
fn a_long_panic_message_comes_back_whole() {
    each_method(panics_at_length, |method, r| {
        let Err(ProcessError::Panicked(p)) = r else {
            panic!("{method}: {r:?}")
        };
        assert_eq!(p.message().len(), 100_000, "{method}");
    });
}

/// A panic payload whose `Drop` panics.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("the payload was dropped");
    }
}

fn panics_with_a_payload_that_panics_when_dropped(_: ()) -> u32 {
    std::panic::panic_any(PanicsWhenDropped)
}

/// A child whose panic payload panics when dropped reports its panic and ends (the
/// payload dropped after the report unwound out of the call, into the frames of the
/// fork server's loop, or of the caller of `spawn_fork`).
fn a_panic_payload_that_panics_when_dropped() {
    each_method(
        panics_with_a_payload_that_panics_when_dropped,
        |method, r| {
            let Err(ProcessError::Panicked(p)) = r else {
                panic!("{method}: {r:?}")
            };
            assert!(!p.message().contains("dropped"), "{method}: {p}");
        },
    );
    // A child forked from here never comes back into these frames: one that does says
    // so on a pipe, and ends.
    let parent = std::process::id();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors it makes.
    let made = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
    assert_eq!(made, 0);
    let spawned = std::panic::catch_unwind(|| {
        // SAFETY: the function takes no lock another test thread could hold.
        unsafe {
            Builder::new()
                .stderr(Stdio::null())
                .spawn_fork(|| panics_with_a_payload_that_panics_when_dropped(()))
        }
    });
    if std::process::id() != parent {
        // SAFETY: a write to the pipe made above, then this process's end.
        unsafe {
            libc::write(fds[1], b"x".as_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    let r = spawned.unwrap().unwrap().join_timeout(T);
    assert!(matches!(r, Err(ProcessError::Panicked(_))), "{r:?}");
    let mut byte = [0u8; 1];
    // SAFETY: a read into a local buffer, then the pipe's two ends closed.
    let n = unsafe {
        let n = libc::read(fds[0], byte.as_mut_ptr().cast(), 1);
        libc::close(fds[0]);
        libc::close(fds[1]);
        n
    };
    assert!(n < 1, "the forked child came back into its parent's frames");
}

/// Catches a panic of its own, then unwinds with another payload (no hook runs for it).
fn rethrows_another(_: ()) -> u32 {
    let caught = std::panic::catch_unwind(|| panic!("first"));
    assert!(caught.is_err());
    std::panic::resume_unwind(Box::new("second"))
}

/// With `RUST_BACKTRACE` set in the child's environment, a panic comes back with its
/// backtrace, which names the function that panicked (the README's promise); without it,
/// none is taken. For both start methods, and for a pool task.
fn panic_backtrace_comes_back() {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        for on in [true, false] {
            let mut b = Builder::new().start_method(method).stderr(Stdio::null());
            b = if on {
                b.env("RUST_BACKTRACE", "1")
            } else {
                b.env_remove("RUST_BACKTRACE")
                    .env_remove("RUST_LIB_BACKTRACE")
            };
            let r = b.spawn(boom, ()).unwrap().join_timeout(T);
            let Err(ProcessError::Panicked(p)) = r else {
                panic!("{method:?}: {r:?}")
            };
            match p.backtrace() {
                Some(bt) if on => assert!(bt.contains("boom"), "{method:?}: {bt}"),
                None if !on => {}
                other => panic!("{method:?}, RUST_BACKTRACE {on}: {other:?}"),
            }
        }
    }
}

/// The line of this file where `needle` first appears.
fn line_of(needle: &str) -> u32 {
    let source = include_str!("process_failures.rs");
    source.lines().position(|l| l.contains(needle)).unwrap() as u32 + 1
}

fn exit3(_: ()) -> u32 {
    std::process::exit(3)
}

/// Started with SIGCHLD ignored (a disposition a program can inherit across `exec`):
/// each start method's child exits with 3, and the child's own disposition is the
/// program's.
fn helper_sigchld_ignored() {
    each_method(exit3, |method, r| {
        println!("{method} {r:?}");
        if let Err(e) = r {
            println!("{method} says {e}");
        }
    });
    let mut child = multiproc::spawn(sigchld_ignored, ()).unwrap();
    println!("inherited {:?}", child.join_timeout(T));
}

/// Whether this process ignores SIGCHLD.
fn sigchld_ignored(_: ()) -> bool {
    // SAFETY: `sigaction` with no new action only reads the current one.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// With SIGCHLD ignored the kernel reaps children itself: the fork server took it from
/// the program, so it found no status to report, spun on the child's pidfd and never
/// answered (`join_timeout` read the status pipe without a timeout and hung); a
/// `spawn_fork` child's end was never seen (its `join_timeout` timed out, and the
/// program hung at exit). The server now gives SIGCHLD its default action (its children
/// get the program's back), and a forked child whose status the kernel took is `Lost`.
fn exit_codes_with_sigchld_ignored() {
    let mut command = Command::new(std::env::current_exe().unwrap());
    // SAFETY: `signal` is async-signal-safe; it runs in the child before its exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut h = Helper::start_command("sigchld_ignored", command, &[]);
    assert_eq!(h.expect("ForkServer ", T), "Err(Exited(3))");
    assert_eq!(h.expect("Spawn ", T), "Err(Exited(3))");
    let fork = h.expect("fork ", T);
    assert!(
        fork.starts_with("Err(Lost(") && fork.contains("ignores SIGCHLD"),
        "{fork}"
    );
    // Its call ran: the error does not say it never started.
    let said = h.expect("fork says ", T);
    assert!(!said.contains("before its call started"), "{said}");
    assert_eq!(h.expect("inherited ", T), "Ok(true)");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// Terminates children at once (the first spawn, then 30 in threes) and once they run
/// their call (one of each start method), and spawns on a spare that holds a SIGTERM
/// from another process: how each ended.
fn helper_sigterm_blocked() {
    // The first spawn, forked fresh (the server has no spare yet), terminated at once.
    let mut first = multiproc::spawn(sleep_ms, 3000).unwrap();
    first.terminate().unwrap();
    println!("first {}", ended_by_sigterm(first.join_timeout(T)));
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = started(Builder::new().start_method(method), ready_then_sleep);
        child.terminate().unwrap();
        println!("{method:?} {:?}", child.join_timeout(T));
    }
    // Terminated as soon as the spawn returns: the child may not have dropped yet what
    // was pending as it began. It ends by the signal (before its call started, or in
    // it); it does not run on to its end.
    // Three at a time: the second and third may be forked fresh while the next spare
    // is not yet there.
    let ran_on: usize = (0..10)
        .map(|_| {
            let children: Vec<_> = (0..3)
                .map(|_| {
                    let child = multiproc::spawn(sleep_ms, 3000).unwrap();
                    child.terminate().unwrap();
                    child
                })
                .collect();
            children
                .into_iter()
                .map(|mut child| !ended_by_sigterm(child.join_timeout(T)))
                .filter(|ran| *ran)
                .count()
        })
        .sum();
    println!("ran on {ran_on}");
    // A SIGTERM that reaches the spare while it waits (with the program's mask: held
    // pending), as one sent to all the program's processes would: not for the child the
    // spare becomes.
    let server = common::fork_server_of(std::process::id()).unwrap();
    let spare = spare_of(server);
    let pid = rustix::process::Pid::from_raw(spare as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let mut child = multiproc::spawn(answer, 7).unwrap();
    println!("handed {}", child.pid() == spare);
    println!("pending {:?}", child.join_timeout(T));
}

/// Whether a child terminated at once ended by it (before its call started, or in it),
/// rather than run on to its end.
fn ended_by_sigterm(r: Result<(), ProcessError>) -> bool {
    match r {
        Err(ProcessError::Signaled(s)) => s == Signal::TERM,
        Err(ProcessError::Lost(why)) => why.contains("SIGTERM"),
        other => {
            eprintln!("terminated at once: {other:?}");
            false
        }
    }
}

/// A program that blocks SIGTERM before `init` (as one that waits for signals on a
/// thread of its own does) still terminates its children: they start with no signal
/// blocked, as new processes do. The fork server, forked at `init`, has the program's
/// mask, and its children had it too: `terminate` did nothing, a supervisor's stop
/// always waited out its grace, a CPU-time limit (SIGXCPU) never stopped a child. A
/// SIGTERM that reached a waiting spare (held pending by that mask) is dropped, as a
/// fork drops pending signals, rather than end the child the spare becomes; and the
/// spawn's answer waits until the spare (or a child forked fresh) has dropped them (a
/// child terminated as soon as its spawn returned ran on, in about one spawn of five,
/// its SIGTERM dropped with those).
fn children_of_a_program_that_blocks_sigterm_can_be_terminated() {
    let mut command = Command::new(std::env::current_exe().unwrap());
    // SAFETY: `sigemptyset`, `sigaddset` and `pthread_sigmask` are async-signal-safe;
    // they run in the child before its exec, which keeps the mask.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let mut term: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut term);
            libc::sigaddset(&mut term, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &term, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut h = Helper::start_command("sigterm_blocked", command, &[]);
    assert_eq!(h.expect("first ", T), "true");
    assert_eq!(h.expect("ForkServer ", T), "Err(Signaled(Signal(15)))");
    assert_eq!(h.expect("Spawn ", T), "Err(Signaled(Signal(15)))");
    assert_eq!(h.expect("ran on ", T), "0", "{}", h.stderr_now());
    // A SIGTERM held pending by a spare is dropped as the spare becomes a child.
    assert_eq!(h.expect("handed ", T), "true");
    assert_eq!(h.expect("pending ", T), "Ok(\"7 from Process-34\")");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// The same, for a program that blocks nothing (the common case, where the spawn's
/// answer does not wait for the child): the fork server ignores SIGTERM (as sent to a
/// whole group, it is the program's to act on) and its children take the program's
/// disposition back, so a SIGTERM sent as soon as the spawn returned, before the child
/// took it back, must wait for it rather than be ignored (a child forked fresh gets it
/// held by the server's mask; a spare took it back as it started).
fn children_terminated_as_their_spawn_returns_end_by_it() {
    let mut h = Helper::start("sigterm_blocked");
    assert_eq!(h.expect("first ", T), "true", "{}", h.stderr_now());
    assert_eq!(h.expect("ForkServer ", T), "Err(Signaled(Signal(15)))");
    assert_eq!(h.expect("Spawn ", T), "Err(Signaled(Signal(15)))");
    assert_eq!(h.expect("ran on ", T), "0", "{}", h.stderr_now());
    // The spare, signalled while it waits, ends by it as the program's processes do
    // (whether the spawn after it had it already is a race); the child it was for, or
    // one forked for it afresh, says so.
    let pending = h.expect("pending ", T);
    assert!(
        pending == "Err(Signaled(Signal(15)))"
            || pending.starts_with("Err(Lost(\"killed by SIGTERM")
            || pending.starts_with("Ok(\"7 from "),
        "{pending}"
    );
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// Waits (at most `T`) for the `SIGTERM` the handler set before `init` notes; returns
/// who sent it, as the handler read it.
fn term_sender_seen(_: ()) -> i32 {
    println!("waiting");
    assert!(common::eventually(T, || common::term_sender() != 0));
    common::term_sender()
}

/// Spawns a child that waits for `SIGTERM`, terminates it, and says who the child saw
/// send it.
fn helper_siginfo_term() {
    let mut child = multiproc::Builder::new()
        .stdout(Stdio::piped())
        .spawn(term_sender_seen, ())
        .unwrap();
    let mut out = std::io::BufReader::new(child.take_stdout().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "waiting\n");
    child.terminate().unwrap();
    let sender = child.join_timeout(T).unwrap();
    println!("sender {}", sender == std::process::id() as i32);
}

/// A `SIGTERM` handler the program installed before `init` with `SA_SIGINFO` (as
/// signal-hook, nix or tokio install theirs) runs in the fork server's children with
/// its flags: the fork server ignores the signal (as sent to a whole group, it is the
/// program's) and gives children the program's whole action back (given back by its
/// handler's address alone, the handler ran without `SA_SIGINFO` and read garbage for
/// its `siginfo_t`).
fn a_handler_set_before_init_keeps_its_flags_in_children() {
    let mut h = Helper::start_with(
        "siginfo_term",
        std::env::current_exe().unwrap(),
        &[(common::SIGINFO_TERM_ENV, "1")],
    );
    assert_eq!(h.expect("sender ", T), "true", "{}", h.stderr_now());
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

fn byte_count(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// Spawns a child with a call too large to be sent before it exists, whose send then
/// fails: what the spawn said, and the children left; then one with a small call.
fn helper_call_send_fails() {
    let r = multiproc::spawn(byte_count, vec![7u8; 1 << 20]).map(|_| ());
    println!("large {r:?}");
    println!("children {}", multiproc::active_children().len());
    let mut small = multiproc::spawn(byte_count, vec![7u8; 10]).unwrap();
    println!("small {:?}", small.join_timeout(T));
}

/// A large call (sent once the child exists) that the kernel refuses to send (too many
/// descriptors in flight; here a setting of debug builds) fails the spawn, and the child
/// is gone: it was dropped unsaid, the child waited for it for ever, and so did `join`.
fn a_large_call_that_cannot_be_sent_fails_the_spawn() {
    if !cfg!(debug_assertions) {
        panic!("this test needs debug assertions (the failing send's setting)");
    }
    let mut h = Helper::start_with(
        "call_send_fails",
        std::env::current_exe().unwrap(),
        &[("MULTIPROC_TEST_CALL_SEND_FAILS", "1")],
    );
    let large = h.expect("large ", T);
    assert!(
        large.starts_with("Err(") && large.contains("could not be sent"),
        "{large}"
    );
    assert_eq!(h.expect("children ", T), "0");
    assert_eq!(h.expect("small ", T), "Ok(10)");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

fn exit_code_is_reported() {
    each_method(exit3, |method, r| {
        assert!(matches!(r, Err(ProcessError::Exited(3))), "{method}: {r:?}");
    });
}

fn segfault(_: ()) -> u32 {
    // SAFETY: not safe at all; this is the crash the test wants.
    unsafe { std::ptr::null_mut::<u32>().write_volatile(1) };
    0
}

fn segfault_is_reported() {
    each_method(segfault, |method, r| {
        assert!(
            matches!(r, Err(ProcessError::Signaled(s)) if s == Signal::SEGV),
            "{method}: {r:?}"
        );
    });
}

/// Forks a process that holds a copy of everything open here (the call's channel
/// included) and sleeps for 20 s; says its pid in `pid`; then crashes.
fn fork_then_segfault(pid: multiproc::Value<u32>) -> u32 {
    fork_sleeper(&pid);
    segfault(())
}

/// Forks a process that holds a copy of everything open here and sleeps for 20 s;
/// says its pid in `pid`.
fn fork_sleeper(pid: &multiproc::Value<u32>) {
    // SAFETY: the forked process only sleeps and exits, with plain system calls.
    match unsafe { libc::fork() } {
        // SAFETY: plain system calls in the forked process, which then ends.
        0 => unsafe {
            libc::sleep(20);
            libc::_exit(0)
        },
        forked => *pid.lock().unwrap() = forked as u32,
    }
}

/// Ends the process [`fork_sleeper`] forked (its pid in `pid`) and reaps it.
fn end_sleeper(pid: &multiproc::Value<u32>, what: &str) {
    let forked = *pid.lock().unwrap();
    assert!(forked > 0, "{what}: no process was forked");
    // SAFETY: a plain signal to the process this test's child forked.
    unsafe { libc::kill(forked as i32, libc::SIGKILL) };
    assert!(common::wait_gone(forked, Duration::from_secs(10)));
    // Orphaned, it may have come to this process (the tests' harness is a
    // subreaper): reap it then (`ECHILD` otherwise).
    // SAFETY: waits for that one pid only.
    unsafe { libc::waitpid(forked as i32, std::ptr::null_mut(), 0) };
}

/// A child that crashed is reported at once, though a process it forked (without
/// executing anything) still holds a copy of its channel to the parent.
fn a_crash_is_reported_while_a_process_it_forked_lives() {
    for method in ["ForkServer", "Spawn", "fork"] {
        let pid = multiproc::Value::new(0u32).unwrap();
        let start = Instant::now();
        let mut child = match method {
            "ForkServer" | "Spawn" => Builder::new()
                .start_method(if method == "Spawn" {
                    StartMethod::Spawn
                } else {
                    StartMethod::ForkServer
                })
                .stderr(Stdio::null())
                .spawn(fork_then_segfault, pid.clone())
                .unwrap(),
            _ => {
                let pid = pid.clone();
                // SAFETY: the closure takes only multiproc's own lock, in the child.
                unsafe {
                    Builder::new()
                        .stderr(Stdio::null())
                        .spawn_fork(move || fork_then_segfault(pid))
                }
                .unwrap()
            }
        };
        let r = child.join_timeout(T);
        assert!(
            matches!(r, Err(ProcessError::Signaled(s)) if s == Signal::SEGV),
            "{method}: {r:?}"
        );
        let took = start.elapsed();
        end_sleeper(&pid, method);
        assert!(
            took < Duration::from_secs(10),
            "{method}: the join took {took:?}, waiting for the forked process"
        );
    }
}

/// Forks a process as [`fork_then_segfault`] does, then returns 64 MiB with its limit
/// of open files at zero: the result cannot travel in a memory file of its own and
/// goes on the channel, more than it holds, so the child blocks sending it until its
/// parent reads.
#[allow(unsafe_code)]
fn fork_then_return_much(pid: multiproc::Value<u32>) -> Vec<u8> {
    fork_sleeper(&pid);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = 0;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    vec![7; 64 << 20]
}

/// A child killed in the middle of sending its result is reported as killed, though a
/// process it forked still holds the channel: the join does not wait for the rest of a
/// message that will never come.
fn a_kill_mid_result_is_reported_while_a_process_it_forked_lives() {
    let pid = multiproc::Value::new(0u32).unwrap();
    let mut child = Builder::new()
        .stderr(Stdio::null())
        .spawn(fork_then_return_much, pid.clone())
        .unwrap();
    // Blocked on the full channel, its result part sent.
    let sending = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/wchan"))
            .is_ok_and(|w| w.contains("unix_stream") || w.contains("sock"))
            && common::state_of(p) == 'S'
    };
    assert!(
        common::eventually(T, || sending(child.pid())),
        "the child never blocked sending (wchan {:?})",
        std::fs::read_to_string(format!("/proc/{}/wchan", child.pid()))
    );
    let start = Instant::now();
    child.kill().unwrap();
    let r = child.join_timeout(T);
    let took = start.elapsed();
    end_sleeper(&pid, "ForkServer");
    assert!(
        matches!(r, Err(ProcessError::Signaled(s)) if s == Signal::KILL),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(10), "the join took {took:?}");
}

fn abort(_: ()) -> u32 {
    std::process::abort()
}

fn abort_is_reported() {
    each_method(abort, |method, r| {
        assert!(
            matches!(r, Err(ProcessError::Signaled(s)) if s == Signal::ABRT),
            "{method}: {r:?}"
        );
    });
}

fn ready_then_sleep(_: ()) {
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
}

fn started<R>(builder: Builder, f: fn(()) -> R) -> multiproc::JoinHandle<R>
where
    R: Serialize + serde::de::DeserializeOwned,
{
    let mut child = builder.stdout(Stdio::piped()).spawn(f, ()).unwrap();
    let mut out = std::io::BufReader::new(child.take_stdout().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    child
}

fn killed_from_outside() {
    let mut child = started(Builder::new(), ready_then_sleep);
    let pid = rustix::process::Pid::from_raw(child.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let r = child.join_timeout(T);
    assert!(
        matches!(r, Err(ProcessError::Signaled(s)) if s == Signal::KILL),
        "{r:?}"
    );
}

fn join_timeout_then_kill() {
    let mut child = started(Builder::new(), ready_then_sleep);
    let t = Instant::now();
    let r = child.join_timeout(Duration::from_millis(200));
    assert!(matches!(r, Err(ProcessError::Timeout)), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(child.is_alive());
    child.kill().unwrap();
    let r = child.join_timeout(T);
    assert!(
        matches!(r, Err(ProcessError::Signaled(s)) if s == Signal::KILL),
        "{r:?}"
    );
    assert_eq!(child.exit_status().unwrap().signal(), Some(Signal::KILL));
}

fn stubborn(_: ()) {
    // SAFETY: ignoring a signal installs no handler.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    ready_then_sleep(())
}

fn ignored_sigterm_then_kill() {
    let mut child = started(Builder::new(), stubborn);
    child.terminate().unwrap();
    assert!(
        child
            .join_timeout(Duration::from_millis(300))
            .unwrap_err()
            .is_timeout()
    );
    assert!(child.is_alive(), "SIGTERM should have been ignored");
    child.kill().unwrap();
    let r = child.join_timeout(T);
    assert!(
        matches!(r, Err(ProcessError::Signaled(s)) if s == Signal::KILL),
        "{r:?}"
    );
}

fn sleep_long(_: ()) {
    std::thread::sleep(Duration::from_secs(120));
}

fn helper_doomed_parent() {
    let a = Builder::new()
        .name("doomed-fs")
        .daemon(true)
        .spawn(sleep_long, ())
        .unwrap();
    let b = Builder::new()
        .name("doomed-spawn")
        .daemon(true)
        .start_method(StartMethod::Spawn)
        .spawn(sleep_long, ())
        .unwrap();
    // SAFETY: the closure only sleeps.
    let c = unsafe {
        Builder::new()
            .name("doomed-fork")
            .daemon(true)
            .spawn_fork(|| sleep_long(()))
    }
    .unwrap();
    // A daemon forked from a thread that has since exited: only the watchdog covers it.
    let d = std::thread::spawn(|| {
        // SAFETY: the closure only sleeps.
        unsafe { Builder::new().daemon(true).spawn_fork(|| sleep_long(())) }.unwrap()
    })
    .join()
    .unwrap();
    let survivor = Builder::new()
        .name("survivor")
        .spawn(sleep_long, ())
        .unwrap();
    let server = common::fork_server_of(std::process::id()).unwrap();
    println!(
        "pids {} {} {} {} {} {server}",
        a.pid(),
        b.pid(),
        c.pid(),
        d.pid(),
        survivor.pid()
    );
    std::thread::sleep(Duration::from_secs(120));
}

fn parent_sigkilled_takes_daemons_along() {
    let mut h = Helper::start("doomed_parent");
    let pids = h.expect_pids("pids ", T);
    let (daemons, survivor, server) = (&pids[..4], pids[4], pids[5]);
    // Holding pidfds from before the kill makes "gone" exact even after re-parenting.
    let tree = h.sigkill();
    let t = Instant::now();
    for &p in daemons.iter().chain([&server]) {
        assert!(
            common::wait_gone(p, Duration::from_secs(5).saturating_sub(t.elapsed())),
            "pid {p} outlived its SIGKILLed parent by 5 seconds"
        );
        common::reap(p);
    }
    // A non-daemon child is not tied to its parent, as in Python.
    assert!(
        !common::wait_gone(survivor, Duration::from_millis(100)),
        "non-daemon child died"
    );
    common::kill_and_reap(survivor);
    let others: Vec<u32> = tree.into_iter().filter(|&p| p != survivor).collect();
    assert_eq!(common::reap_all(&others, T), [], "left running");
}

fn take_unserializable(_: Unserializable) {}

fn unserializable_arguments() {
    let r = Builder::new()
        .name("never-started")
        .spawn(take_unserializable, Unserializable);
    let Err(SpawnError::Codec(e)) = r else {
        panic!("{r:?}")
    };
    assert!(e.message().contains("refuses"), "{e}");
    assert!(
        common::named("never-started").is_empty(),
        "a child was left behind"
    );
}

/// Serializes as a string; insists on a number when deserialized.
struct Lopsided;

impl Serialize for Lopsided {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("not a number")
    }
}

impl<'de> Deserialize<'de> for Lopsided {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        Err(serde::de::Error::custom(format!(
            "expected the magic number, got {n}"
        )))
    }
}

fn take_lopsided(_: Lopsided) -> u32 {
    1
}

fn undecodable_arguments_are_lost() {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .start_method(method)
            .stderr(Stdio::null())
            .spawn(take_lopsided, Lopsided)
            .unwrap();
        let r = child.join_timeout(T);
        let Err(ProcessError::Lost(why)) = &r else {
            panic!("{method:?}: {r:?}")
        };
        assert!(why.contains("could not decode the arguments"), "{why}");
    }
}

/// Takes forever to deserialize: the child holds its call but has not started it.
struct Slow;

impl Serialize for Slow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Slow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        println!("ready");
        std::thread::sleep(Duration::from_secs(120));
        Ok(Slow)
    }
}

fn take_slow(_: Slow) {}

fn killed_before_call_started_is_lost() {
    let mut child = Builder::new()
        .stdout(Stdio::piped())
        .spawn(take_slow, Slow)
        .unwrap();
    let mut out = std::io::BufReader::new(child.take_stdout().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    child.kill().unwrap();
    let r = child.join_timeout(T);
    let Err(ProcessError::Lost(why)) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(why, "killed by SIGKILL before its call started");
}

fn return_unserializable(_: ()) -> Unserializable {
    Unserializable
}

fn return_lopsided(_: ()) -> Lopsided {
    Lopsided
}

fn unencodable_and_undecodable_results() {
    each_method(return_unserializable, |method, r| {
        let Err(ProcessError::Codec(e)) = &r else {
            panic!("{method}: {:?}", r.err())
        };
        assert!(
            e.message().contains("could not encode its return value"),
            "{method}: {e}"
        );
    });
    each_method(return_lopsided, |method, r| {
        let Err(ProcessError::Codec(e)) = &r else {
            panic!("{method}: {:?}", r.err())
        };
        assert!(
            e.message()
                .contains("cannot decode a `process_failures::Lopsided`"),
            "{method}: {e}"
        );
    });
}

fn scribble(_: ()) -> u32 {
    use std::os::fd::BorrowedFd;
    // SAFETY: descriptor 3 is this child's call channel, open for its whole life.
    let channel = unsafe { BorrowedFd::borrow_raw(3) };
    rustix::io::write(channel, b"this is not a frame at all, it is noise").unwrap();
    7
}

fn corrupt_bytes_from_child() {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .start_method(method)
            .spawn(scribble, ())
            .unwrap();
        let r = child.join_timeout(T);
        let Err(ProcessError::Codec(e)) = &r else {
            panic!("{method:?}: {r:?}")
        };
        assert!(e.message().contains("corrupt message"), "{e}");
    }
}

/// Runs this executable as a child whose call channel (its stdin, a socket) carries
/// `bytes`, and returns its exit code and stderr. The token is exactly what the fork
/// server would set; the bytes are what a broken or hostile parent might send.
fn forged_child(bytes: &[u8]) -> (i32, String) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    // The token names descriptor 0 and the identity of the socket found there.
    let st = rustix::fs::fstat(&theirs).unwrap();
    let token = format!("2:0:-:{}:{}", st.st_dev, st.st_ino);
    let child = Command::new(std::env::current_exe().unwrap())
        .env("MULTIPROC_CHILD", token)
        .stdin(std::os::fd::OwnedFd::from(theirs))
        .stdout(StdStdio::null())
        .stderr(StdStdio::piped())
        .spawn()
        .unwrap();
    let mut writer = &ours;
    writer.write_all(bytes).unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(common::wait_gone(child.id(), T), "forged child hung");
    let out = child.wait_with_output().unwrap();
    let code = out
        .status
        .code()
        .unwrap_or(-out.status.signal().unwrap_or(0));
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = b"MPF1".to_vec();
    f.extend_from_slice(&(body.len() as u64).to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.push(tag);
    f.push(0);
    f.extend_from_slice(body);
    f
}

fn call_body(version: u32, identity: [u64; 6], rest: &[u8]) -> Vec<u8> {
    let mut b = version.to_le_bytes().to_vec();
    for w in identity {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&(rest.len() as u32).to_le_bytes());
    b.extend_from_slice(rest);
    b
}

fn forged_call_messages_are_refused() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n".to_vec(),
            "corrupt message: bad magic",
        ),
        (
            "truncated",
            frame(1, &[0u8; 100])[..40].to_vec(),
            "closed in the middle of a message",
        ),
        (
            "huge length",
            {
                let mut f = frame(1, &[]);
                f[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
                f
            },
            "exceeds the limit",
        ),
        (
            "wrong tag",
            frame(9, b"hello"),
            "expected a call, got message tag 9",
        ),
        ("short call", frame(1, b"tiny"), "shorter than its prefix"),
        (
            "wrong protocol",
            frame(1, &call_body(77, [0; 6], b"")),
            "call protocol 77",
        ),
        (
            "wrong executable",
            frame(1, &call_body(2, [1, 2, 3, 4, 5, 6], b"")),
            "different executable",
        ),
    ];
    for (what, bytes, expected) in cases {
        let (code, stderr) = forged_child(&bytes);
        assert_eq!(code, 120, "{what}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: expected {expected:?} in {stderr:?}"
        );
    }
    // Nothing at all: the parent went away before sending anything. Quietly out.
    let (code, _) = forged_child(b"");
    assert_eq!(code, 120);
}

/// A token names the identity of the descriptor it hands over. One inherited by some
/// later process (whose descriptor 0 is something else) is not its: that process runs
/// its own `main`. One whose descriptor is right but whose death pipe is missing is
/// this process's, unusable: it exits with the bootstrap code, never running `main`.
fn foreign_tokens() {
    let run = |token: String, stdin: std::os::fd::OwnedFd| {
        let out = Command::new(std::env::current_exe().unwrap())
            .env(common::HELPER_ENV, "main")
            .env("MULTIPROC_CHILD", token)
            .stdin(stdin)
            .stdout(StdStdio::piped())
            .stderr(StdStdio::piped())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let (_other, unrelated) = std::os::unix::net::UnixStream::pair().unwrap();
    let st = rustix::fs::fstat(&theirs).unwrap();
    // Meant for a process whose descriptor 0 was `theirs`; this one has `unrelated`.
    let token = format!("2:0:-:{}:{}", st.st_dev, st.st_ino);
    let (code, stdout, stderr) = run(token.clone(), unrelated.into());
    assert_eq!((code, stdout.as_str()), (Some(0), "main ran\n"), "{stderr}");
    // Malformed tokens are not anyone's.
    for bad in ["", "2", "2:0:-", "x:0:-:1:2", "2:0:-:1:2:3", "1:1234:0:-"] {
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (code, stdout, _) = run(bad.to_string(), b.into());
        assert_eq!((code, stdout.as_str()), (Some(0), "main ran\n"), "{bad:?}");
    }
    // This process's own token, with a death pipe (descriptor 9) that is not open.
    let token = format!("2:0:9:{}:{}", st.st_dev, st.st_ino);
    let (code, stdout, stderr) = run(token, theirs.into());
    assert_eq!(code, Some(120), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("descriptor 9 is not open"), "{stderr}");
}

fn answer(x: u32) -> String {
    format!("{x} from {}", multiproc::current_process().name())
}

fn helper_replaced() {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let r = Builder::new()
            .name(format!("{method:?}"))
            .start_method(method)
            .spawn(answer, 42)
            .unwrap()
            .join();
        println!(
            "{method:?} {}",
            r.map_err(|e| e.to_string()).unwrap_or_else(|e| e)
        );
    }
    // A fork server started after the replacement also runs this process's own code.
    let server = common::fork_server_of(std::process::id()).unwrap();
    common::kill_and_reap(server);
    let r = Builder::new()
        .name("restarted")
        .spawn(answer, 7)
        .unwrap()
        .join();
    println!(
        "restarted {}",
        r.map_err(|e| e.to_string()).unwrap_or_else(|e| e)
    );
}

fn replaced_executable_still_runs_its_code() {
    let dir = std::env::temp_dir().join(format!("multiproc-replaced-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("app");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let mut h = Helper::start_with("replaced", exe.clone(), &[]);
    // Replace the file under the running program: a new inode with other contents.
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, "#!/bin/sh\necho this is not the program\nexit 3\n").unwrap();
    h.send("go");
    assert_eq!(h.expect("ForkServer ", T), "42 from ForkServer");
    assert_eq!(h.expect("Spawn ", T), "42 from Spawn");
    assert_eq!(h.expect("restarted ", T), "7 from restarted");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
    let _ = std::fs::remove_dir_all(dir);
}

fn slow_answer(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn helper_server_killed() {
    let me = std::process::id();
    let running = multiproc::spawn(slow_answer, 400).unwrap();
    let mut longer = multiproc::spawn(slow_answer, 3000).unwrap();
    let awaited = multiproc::spawn(slow_answer, 2500).unwrap();
    let daemon = Builder::new().daemon(true).spawn(sleep_long, ()).unwrap();
    let daemon_pid = daemon.pid();
    let server = common::fork_server_of(me).unwrap();
    common::kill_and_reap(server);
    // Asked while it runs, how a child of the dead server ended is `None` at once (each
    // call waited a second for a status the dead server would never send).
    let asked = Instant::now();
    let statuses: Vec<_> = (0..5).map(|_| longer.exit_status()).collect();
    println!(
        "orphan_status {statuses:?} {}",
        asked.elapsed() < Duration::from_millis(500)
    );
    // The next spawn starts a new server.
    let r = multiproc::spawn(slow_answer, 1).unwrap().join();
    println!("after {r:?}");
    // The running child's result still arrives; the daemon died with its server.
    println!("running {:?}", running.join().map_err(|e| e.to_string()));
    // Awaited, it costs no CPU while it runs (the dead server's pipe, at its end, is
    // readable for good: the future was woken again and again, 1.46 of the 2 s).
    let cpu = || {
        // SAFETY: `getrusage` writes into the struct it is given.
        let u = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0, "getrusage");
            u
        };
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Duration::from_micros(us(u.ru_utime) + us(u.ru_stime))
    };
    let before = cpu();
    let r = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(awaited);
    println!(
        "awaited {:?} {}",
        r.map_err(|e| e.to_string()),
        cpu() - before < Duration::from_millis(500)
    );
    println!(
        "longer {:?}",
        longer.join_timeout(T).map_err(|e| e.to_string())
    );
    println!(
        "daemon_gone {}",
        common::wait_gone(daemon_pid, Duration::from_secs(1))
    );
    let new_server = common::fork_server_of(me);
    println!("new_server {}", new_server.is_some_and(|s| s != server));
}

fn killed_fork_server_is_replaced() {
    let mut h = Helper::start("server_killed");
    assert_eq!(
        h.expect("orphan_status ", T),
        "[None, None, None, None, None] true"
    );
    assert_eq!(h.expect("after ", T), "Ok(1)");
    assert_eq!(h.expect("running ", T), "Ok(400)");
    assert_eq!(h.expect("awaited ", T), "Ok(2500) true");
    assert_eq!(h.expect("longer ", T), "Ok(3000)");
    assert_eq!(h.expect("daemon_gone ", T), "true");
    assert_eq!(h.expect("new_server ", T), "true");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// A program that is a subreaper (or PID 1 in a container) gets the children of its
/// dead fork server: it reaps them, with their statuses.
fn helper_server_killed_subreaper() {
    // SAFETY: a plain prctl on this process.
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(set, 0, "PR_SET_CHILD_SUBREAPER");
    let me = std::process::id();
    let mut child = multiproc::spawn(slow_answer, 500).unwrap();
    let pid = child.pid();
    let server = common::fork_server_of(me).unwrap();
    common::kill_and_reap(server);
    let joined = child.join_timeout(T).map_err(|e| e.to_string());
    // Reaped by the join itself.
    let left = std::path::Path::new(&format!("/proc/{pid}")).exists();
    let status = child.exit_status().map(|s| s.success());
    println!("orphan {joined:?} {status:?} {left}");
}

fn orphans_of_a_killed_fork_server_are_reaped_by_a_subreaper_parent() {
    let mut h = Helper::start("server_killed_subreaper");
    // Its result, its status, and no zombie left (each join said the status was lost,
    // and the zombie stayed for the life of the program).
    assert_eq!(h.expect("orphan ", T), "Ok(500) Some(true) false");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// As a subreaper: a spawn makes the server fork a spare; the server is killed; the
/// next spawn starts another server. The dead server's spare, which came to this
/// process and ended as it found its server gone, is reaped by then.
fn helper_server_killed_spare_reaped() {
    // SAFETY: a plain prctl on this process.
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(set, 0, "PR_SET_CHILD_SUBREAPER");
    let me = std::process::id();
    let mut child = multiproc::spawn(slow_answer, 0).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 0);
    let server = common::fork_server_of(me).unwrap();
    let spare_of = |server| {
        common::children_of(server)
            .into_iter()
            .find(|(_, _, comm)| comm == "mp-spare")
            .map(|(p, ..)| p)
    };
    assert!(common::eventually(T, || spare_of(server).is_some()));
    let spare = spare_of(server).unwrap();
    common::kill_and_reap(server);
    let mut child = multiproc::spawn(slow_answer, 0).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 0);
    let left = std::path::Path::new(&format!("/proc/{spare}")).exists();
    println!("spare left {left}");
}

/// The spare of a fork server that died comes to a program that adopts orphans (a
/// subreaper, PID 1 in a container), and ends: it is reaped when the server is
/// replaced. (It stayed a zombie for the life of the program, one per server lost.)
fn a_killed_fork_servers_spare_is_reaped_by_a_subreaper_parent() {
    let mut h = Helper::start("server_killed_spare_reaped");
    assert_eq!(h.expect("spare left ", T), "false");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// The fork server dies after it served a spawn's request, before its answer (a debug
/// build's server does so for a child whose environment names a file it can create in
/// `MULTIPROC_TEST_DIE_UNANSWERED`).
fn helper_server_dies_unanswered() {
    let dir = common::tempdir("unanswered");
    let mark = dir.join("died");
    let spawned = Builder::new()
        .env("MULTIPROC_TEST_DIE_UNANSWERED", &mark)
        .spawn(answer, 1);
    println!(
        "spawn {}",
        match &spawned {
            Ok(_) => "Ok".to_string(),
            Err(e) => format!("Err {e}"),
        }
    );
    println!("server_died {}", mark.exists());
    let mut after = multiproc::spawn(answer, 2).unwrap();
    println!(
        "after {}",
        after.join_timeout(T).unwrap_or_else(|e| e.to_string())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request the server may have served is not sent again to a new server: that would
/// start a second process on the same channel (the first one, already started, taking
/// the call, and the join waiting for the second for ever). The spawn fails, saying the
/// process may have started; the next spawn gets a new server.
fn server_dying_unanswered() {
    if !cfg!(debug_assertions) {
        panic!("MULTIPROC_TEST_DIE_UNANSWERED is read only in builds with debug assertions");
    }
    let mut h = Helper::start("server_dies_unanswered");
    let spawn = h.expect("spawn ", T);
    assert!(
        spawn.starts_with("Err") && spawn.contains("exited before answering"),
        "{spawn}"
    );
    assert_eq!(h.expect("server_died ", T), "true");
    assert!(h.expect("after ", T).starts_with("2 from "));
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// The spare fork server `server` holds (waiting for it, within `T`).
fn spare_of(server: u32) -> u32 {
    let mut spare = None;
    let found = common::eventually(T, || {
        spare = common::children_of(server)
            .into_iter()
            .find(|(_, state, name)| *state != 'Z' && name == "mp-spare")
            .map(|(pid, ..)| pid);
        spare.is_some()
    });
    assert!(found, "no spare");
    spare.unwrap()
}

fn helper_spare_server_killed() {
    let me = std::process::id();
    multiproc::spawn(answer, 1).unwrap().join().unwrap();
    let server = common::fork_server_of(me).unwrap();
    // The spare the server forked after that request, held still: the next request is
    // handed to it, and its server is killed before it reads the request.
    let spare = spare_of(server);
    common::stop_or_continue(spare, true);
    assert!(common::eventually(T, || common::state_of(spare) == 'T'));
    let mut child = multiproc::spawn(answer, 7).unwrap();
    println!("handed {}", child.pid() == spare);
    common::kill_and_reap(server);
    common::stop_or_continue(spare, false);
    println!(
        "joined {:?}",
        child.join_timeout(T).map_err(|e| e.to_string())
    );
}

/// A spare handed a request just before its fork server is killed becomes the child all
/// the same (it died with the server: the child was lost before its call started).
fn spare_handed_a_request_outlives_its_server() {
    let mut h = Helper::start("spare_server_killed");
    assert_eq!(h.expect("handed ", T), "true");
    assert_eq!(h.expect("joined ", T), "Ok(\"7 from Process-2\")");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

fn own_pid(_: ()) -> u32 {
    std::process::id()
}

/// `large`: the stalled request is larger than the socket holds (an environment of
/// 4 MiB), so that it waits to be sent, not answered.
fn helper_server_stopped(large: bool) {
    let me = std::process::id();
    multiproc::spawn(answer, 1).unwrap().join().unwrap();
    let server = common::fork_server_of(me).unwrap();
    // SAFETY: kill(2) on this process's own fork server.
    unsafe { libc::kill(server as i32, libc::SIGSTOP) };
    let started = Instant::now();
    let mut builder = Builder::new();
    if large {
        builder = builder.env("LARGE", "x".repeat(4 << 20));
    }
    let r = builder.spawn(own_pid, ());
    println!(
        "stalled {} {}",
        r.map(|_| "spawned")
            .unwrap_or_else(|e| if e.to_string().contains("did not answer") {
                "timed out"
            } else {
                "failed otherwise"
            }),
        // The reply timeout (30 s) and its last look (5 s), with room for a loaded
        // machine.
        started.elapsed() < Duration::from_secs(50)
    );
    // The stopped server's answer, were it to come, must not be read as the next
    // spawn's: the next spawn goes to a new server, and gets its own child's pid.
    let h = multiproc::spawn(own_pid, ()).unwrap();
    let pid = h.pid();
    println!("own_pid {}", h.join().unwrap() == pid);
    println!(
        "new_server {}",
        common::fork_server_of(me).is_some_and(|s| s != server)
    );
    // Gone whatever the outcome (SIGKILL ends a stopped process too).
    common::kill_and_reap(server);
}

/// A fork server that stops answering (`SIGSTOP`, a machine starved for memory): the
/// spawn waiting for it fails after the reply timeout, and the server is replaced, so
/// that its late answer is never taken for the next spawn's.
fn stopped_fork_server_is_replaced() {
    a_stopped_server_is_replaced_in("server_stopped");
}

/// As [`stopped_fork_server_is_replaced`], with a request too large for the socket to
/// hold: its send waited for ever (no timeout), holding the lock every later spawn
/// and the exit work wait for.
fn stopped_fork_server_is_replaced_while_a_large_request_waits() {
    a_stopped_server_is_replaced_in("server_stopped_large");
}

/// Runs the helper `mode` (see [`helper_server_stopped`]) and checks what it says.
fn a_stopped_server_is_replaced_in(mode: &str) {
    let mut h = Helper::start(mode);
    assert_eq!(
        h.expect("stalled ", Duration::from_secs(60)),
        "timed out true"
    );
    assert_eq!(h.expect("own_pid ", Duration::from_secs(60)), "true");
    assert_eq!(h.expect("new_server ", T), "true");
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

fn unusable_current_dir() {
    let r = Builder::new()
        .current_dir("/no/such/directory")
        .spawn(answer, 1);
    assert!(matches!(r, Err(SpawnError::CurrentDir { .. })), "{r:?}");
    let r = Builder::new().current_dir("/etc/hostname").spawn(answer, 1);
    assert!(matches!(r, Err(SpawnError::CurrentDir { .. })), "{r:?}");
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// In a cgroup that allows this process, its fork server and one child: the second
/// child cannot be forked.
fn helper_fork_limited() {
    let cgroup = common::TestCgroup::of_helper();
    let mut server = None;
    // The server names itself right after it is forked.
    common::eventually(T, || {
        server = common::fork_server_of(std::process::id());
        server.is_some()
    });
    let server = server.expect("fork server");
    for pid in [std::process::id(), server] {
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    std::fs::write(cgroup.join("pids.max"), "3").unwrap();
    let mut first = multiproc::spawn(sleep_ms, 30_000).unwrap();
    let second = multiproc::spawn(sleep_ms, 0);
    match second {
        Err(SpawnError::Io(e)) => println!("refused: {:?} {e}", e.kind()),
        other => println!("not refused: {other:?}"),
    }
    first.kill().unwrap();
    let _ = first.join_timeout(T);
    // A pool that can start one worker of three fails, and leaves no descriptor of the
    // worker it did start behind (nothing is spawned after it to tidy up).
    let before = common::fd_count();
    let pool = multiproc::Pool::new(3);
    println!(
        "pool: {} fds {} -> {}",
        if pool.is_err() { "refused" } else { "started" },
        before,
        common::fd_count()
    );
    drop(pool);
    // A manager whose server cannot start leaves no socket file at its address (a
    // second build there failed with `AddrInUse`).
    let mut sleeper = None;
    common::eventually(T, || {
        sleeper = multiproc::spawn(sleep_ms, 30_000).ok();
        sleeper.is_some()
    });
    let mut sleeper = sleeper.expect("a process started");
    let dir = common::tempdir("manager-refused");
    let path = dir.join("m.sock");
    let built = multiproc::Manager::builder()
        .address(multiproc::manager::Address::Unix(path.clone()))
        .build();
    println!(
        "manager: {} socket left {}",
        if built.is_err() { "refused" } else { "started" },
        path.exists()
    );
    drop(built);
    // Nor one served from this process whose thread cannot start.
    let served = multiproc::Manager::builder()
        .address(multiproc::manager::Address::Unix(path.clone()))
        .serve();
    println!(
        "served: {} socket left {}",
        if served.is_err() {
            "refused"
        } else {
            "started"
        },
        path.exists()
    );
    drop(served);
    sleeper.kill().unwrap();
    let _ = sleeper.join_timeout(T);
    let _ = std::fs::remove_dir_all(&dir);
    // Room for one more task: a pool of one starts its worker, and then cannot start
    // its thread. The worker does not stay behind (it held its descriptors until some
    // later spawn pruned it).
    let current = std::fs::read_to_string(cgroup.join("pids.current")).unwrap();
    let room = current.trim().parse::<u32>().unwrap() + 1;
    std::fs::write(cgroup.join("pids.max"), room.to_string()).unwrap();
    let before = common::fd_count();
    let pool = multiproc::Pool::new(1);
    println!(
        "pool thread: {} fds {} -> {}",
        match &pool {
            Ok(_) => "started".to_string(),
            Err(e) => format!("refused({e})").replace(' ', "_"),
        },
        before,
        common::fd_count()
    );
    drop(pool);
}

/// The fork server's failure to fork reaches the caller as an `io::Error` of the
/// system error's kind (`EAGAIN`: `WouldBlock`), not as `Other` with the errno in the
/// text only.
fn fork_failure_keeps_its_kind() {
    let cgroup = common::TestCgroup::new("pids", "fork");
    let mut helper = Helper::start_for("fork_limited", &cgroup);
    let refused = helper.expect("refused:", T);
    assert!(refused.starts_with("WouldBlock fork failed"), "{refused}");
    let pool = helper.expect("pool:", T);
    let fds: Vec<&str> = pool.split_whitespace().collect();
    assert_eq!(fds[0], "refused", "{pool}");
    assert_eq!(
        fds[2], fds[4],
        "descriptors left by a pool that failed to start: {pool}"
    );
    let manager = helper.expect("manager:", T);
    assert_eq!(manager, "refused socket left false");
    let served = helper.expect("served:", T);
    assert_eq!(served, "refused socket left false");
    let pool = helper.expect("pool thread:", T);
    let fds: Vec<&str> = pool.split_whitespace().collect();
    assert!(fds[0].starts_with("refused"), "{pool}");
    assert_eq!(
        fds[2], fds[4],
        "descriptors left by a pool whose thread did not start: {pool}"
    );
    assert!(helper.wait(T).success());
}

/// Lowers its fork server's descriptor limit to 40, then spawns sleepers until a spawn
/// fails (the server out of descriptors: each child holds two there); says how it
/// failed and whether the server still runs with those children; then stops them and
/// spawns again.
fn helper_server_out_of_descriptors() {
    // The server names itself right after it is forked.
    let mut server = None;
    common::eventually(T, || {
        server = common::fork_server_of(std::process::id());
        server.is_some()
    });
    let server = server.expect("fork server");
    // SAFETY: a limit for the fork server, this process's child; the struct is local.
    unsafe {
        let limit = libc::rlimit {
            rlim_cur: 40,
            rlim_max: 40,
        };
        let set = libc::prlimit(
            server as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        );
        assert_eq!(set, 0);
    }
    let mut children = Vec::new();
    let mut failure = None;
    while children.len() < 100 {
        match multiproc::spawn(sleep_ms, 60_000) {
            Ok(c) => children.push(c),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    println!("failed: {:?}", failure.map(|e| e.to_string()));
    let ours: Vec<u32> = children.iter().map(|c| c.pid()).collect();
    // Every one of ours is the server's still (it went on); it may have others for a
    // moment (a spare not yet named so, a child killed for a failed start).
    let theirs: Vec<u32> = common::children_of(server)
        .into_iter()
        .map(|(p, ..)| p)
        .collect();
    println!(
        "ours are still the server's: {}",
        !ours.is_empty() && ours.iter().all(|p| theirs.contains(p))
    );
    for c in &mut children {
        c.kill().unwrap();
        let r = c.join_timeout(T);
        assert!(
            matches!(r, Err(ProcessError::Signaled(s)) if s == Signal::KILL),
            "{r:?}"
        );
    }
    let again = multiproc::spawn(mark, "/dev/null".to_string()).map(|mut c| c.join_timeout(T));
    println!("again: {again:?}");
    println!(
        "same server: {}",
        common::fork_server_of(std::process::id()) == Some(server)
    );
    let mut left = Vec::new();
    common::eventually(T, || {
        left = common::children_of(server)
            .into_iter()
            .filter(|(_, _, comm)| comm != "mp-spare")
            .collect();
        left.is_empty()
    });
    println!("left: {left:?}");
}

/// The fork server out of descriptors refuses the spawn it cannot take in, saying so,
/// and goes on serving: it used to exit (the request's descriptors lost, its connection
/// out of step), leaving its children to run on unwatched and the program's next spawn
/// to start a new server.
fn a_fork_server_out_of_descriptors_refuses_and_goes_on() {
    let mut helper = Helper::start("server_out_of_descriptors");
    let failed = helper.expect("failed: ", T);
    assert!(failed.contains("Too many open files"), "{failed}");
    assert_eq!(helper.expect("ours are still the server's: ", T), "true");
    assert_eq!(helper.expect("again: ", T), "Ok(Ok(7))");
    assert_eq!(helper.expect("same server: ", T), "true");
    assert_eq!(helper.expect("left: ", T), "[]");
    assert!(helper.wait(T).success(), "{}", helper.stderr_now());
}

/// Marks that it ran by creating `path`, then answers 7.
fn mark(path: String) -> u32 {
    std::fs::write(&path, b"ran").unwrap();
    7
}

/// A result that passes a descriptor (the pipe's end).
fn a_pipe_end(_: ()) -> multiproc::Sender<u8> {
    multiproc::pipe::<u8>().unwrap().0
}

/// In a process of its own (its descriptor limit lowered): spawns with no descriptor
/// free but 1, 2, … 16 of them. Each either runs its call or fails saying that
/// descriptors ran out, and then starts nothing; with descriptors again, spawning works.
/// Then joins, with none free, a child whose result passes a descriptor: the result is
/// lost, and said to be. Returns how many free descriptors the spawns needed.
fn spawns_out_of_descriptors(dir: String) -> usize {
    // The fork server is started first: its start needs descriptors of its own.
    let mut first = multiproc::spawn(mark, format!("{dir}/first")).unwrap();
    assert_eq!(first.join_timeout(T).unwrap(), 7);
    let mut ran = Vec::new();
    for free in 1..=16 {
        let mut open = common::use_up_descriptors();
        open.truncate(open.len().saturating_sub(free));
        let spawned = multiproc::spawn(mark, format!("{dir}/{free}"));
        drop(open);
        match spawned {
            Ok(mut child) => {
                assert_eq!(child.join_timeout(T).unwrap(), 7, "{free} free");
                ran.push(free);
            }
            Err(e) => assert!(
                e.to_string().contains("Too many open files"),
                "{free} descriptors free: {e}"
            ),
        }
    }
    let needed = *ran
        .first()
        .expect("no spawn worked with 16 descriptors free");
    assert_eq!(ran, (needed..=16).collect::<Vec<_>>(), "spawns that worked");
    assert!(
        needed > 1,
        "a spawn needs descriptors, yet one worked with 1 free"
    );
    let mut last = multiproc::spawn(mark, format!("{dir}/last")).unwrap();
    assert_eq!(last.join_timeout(T).unwrap(), 7);
    // A spawn that failed started nothing: no call marked its file. A call started
    // anyway would have run by now, or within this wait.
    let marks = || {
        let mut m: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<usize>().is_ok())
            .collect();
        m.sort_by_key(|n| n.parse::<usize>().unwrap());
        m
    };
    let want: Vec<String> = ran.iter().map(|n| n.to_string()).collect();
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(marks(), want, "calls that ran");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut child = multiproc::spawn(a_pipe_end, ()).unwrap();
    let open = common::use_up_descriptors();
    let joined = child.join_timeout(T);
    drop(open);
    match joined {
        Err(ProcessError::Codec(e)) => {
            let e = e.to_string();
            assert!(e.contains("could not be received"), "{e}");
            assert!(e.contains("Too many open files"), "{e}");
        }
        other => panic!("a result passing a descriptor, none free: {other:?}"),
    }
    needed
}

/// Out of descriptors, a spawn fails before anything starts, saying so (not after its
/// child started, having found no room for the child's pidfd), and the fork server goes
/// on; a result that passes a descriptor is lost, said so, rather than the child seeming
/// to have exited without one.
fn out_of_descriptors() {
    let dir = common::tempdir("no-descriptors");
    let mut child = multiproc::spawn(
        spawns_out_of_descriptors,
        dir.to_string_lossy().into_owned(),
    )
    .unwrap();
    let needed = child.join_timeout(T).unwrap();
    println!("a spawn needed {needed} free descriptors");
    std::fs::remove_dir_all(dir).unwrap();
}
