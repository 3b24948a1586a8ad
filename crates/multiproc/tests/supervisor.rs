//! The supervisor with real crashing processes: one-for-one, one-for-all and
//! rest-for-one restarts, intensity exceeded, transient and temporary children, backoff
//! that grows and resets, a child that ignores SIGTERM (and its own child) killed after
//! the grace period, children gone when the supervisor's process is SIGKILLed; and
//! daemonize with a pid file, a second copy refused. Nothing is left behind.
#![allow(unsafe_code)] // a child ignores SIGTERM with signal(2)

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Helper, eventually, tempdir, trial, wait_gone};
use multiproc::{
    ChildSpec, ChildState, DaemonOptions, Jitter, Restart, Strategy, Supervisor, SupervisorError,
    SupervisorEvent, daemonize,
};

const T: Duration = Duration::from_secs(30);
const DAEMON_ENV: &str = "MULTIPROC_TEST_DAEMON";
/// With [`DAEMON_ENV`]: the step the daemon helper is to fail at (`working_dir`: a
/// working directory that does not exist; `log`: a stdout file it cannot open).
const DAEMON_FAIL_ENV: &str = "MULTIPROC_TEST_DAEMON_FAIL";

fn main() {
    // The daemon helper must daemonize before `init`, so it runs before the harness.
    if let Ok(dir) = std::env::var(DAEMON_ENV) {
        daemon_main(PathBuf::from(dir));
        return;
    }
    common::main_checked(
        vec![
            trial("one_for_one_restarts_only_the_crasher", one_for_one),
            trial("one_for_all_restarts_everyone", one_for_all),
            trial(
                "a_done_sibling_starts_again_with_the_others",
                a_done_sibling_starts_again_with_the_others,
            ),
            trial("rest_for_one_restarts_the_rest", rest_for_one),
            trial("intensity_exceeded_gives_up", intensity_exceeded),
            trial("transient_and_temporary", transient_and_temporary),
            trial(
                "a_supervisor_that_said_stopped_is_not_running",
                a_supervisor_that_said_stopped_is_not_running,
            ),
            trial(
                "a_fallible_child_that_returns_err_ended_abnormally",
                a_fallible_child_that_returns_err_ended_abnormally,
            ),
            trial("backoff_grows_then_resets", backoff_grows_then_resets),
            trial("sigterm_ignored_group_sigkilled", sigterm_ignored),
            trial(
                "a_panic_as_a_child_starts_leaves_no_child",
                a_panic_as_a_child_starts_leaves_no_child,
            ),
            trial(
                "a_child_that_left_its_group_is_stopped_by_its_grace",
                a_child_that_left_its_group_is_stopped_by_its_grace,
            ),
            trial(
                "children_stop_in_reverse_order_one_after_another",
                children_stop_in_reverse_order,
            ),
            trial(
                "a_stop_while_siblings_stop_for_a_restart_starts_nothing",
                a_stop_during_a_restart_starts_nothing,
            ),
            trial(
                "the_status_shows_an_exit_and_each_stopped_sibling_at_once",
                the_status_shows_an_exit_and_each_stopped_sibling_at_once,
            ),
            trial(
                "a_sibling_that_crashes_during_a_stop_is_reported",
                a_sibling_that_crashes_during_a_stop_is_reported,
            ),
            trial(
                "a_restart_waits_for_the_last_runs_group",
                a_restart_waits_for_the_last_runs_group,
            ),
            trial(
                "a_transient_sibling_that_finishes_during_a_stop_starts_again",
                a_transient_sibling_that_finishes_during_a_stop_starts_again,
            ),
            trial(
                "a_restart_held_by_a_lingering_group_does_not_spin",
                a_restart_held_by_a_lingering_group_does_not_spin,
            ),
            trial(
                "a_lingering_group_is_killed_at_its_grace_during_a_siblings_stop",
                a_lingering_group_is_killed_at_its_grace_during_a_siblings_stop,
            ),
            trial(
                "a_waiting_sibling_restarts_once_after_its_own_backoff",
                a_waiting_sibling_restarts_once_after_its_own_backoff,
            ),
            trial(
                "a_sibling_stopped_after_a_stable_run_backs_off_from_the_base",
                a_sibling_stopped_after_a_stable_run_backs_off_from_the_base,
            ),
            trial(
                "a_panic_while_stopping_is_told_to_subscribers",
                a_panic_while_stopping_is_told_to_subscribers,
            ),
            trial(
                "the_event_stream_ends_after_stopped",
                the_event_stream_ends_after_stopped,
            ),
            trial("grace_and_timeout_of_duration_max", duration_max),
            trial("failed_restarts_grow_the_backoff", failed_restarts_back_off),
            trial("exited_child_leaves_no_group", exited_child_leaves_no_group),
            trial(
                "leader_dies_on_sigterm_member_ignores_it",
                leader_dies_member_ignores,
            ),
            trial("supervising_thread_panics", supervising_thread_panics),
            trial(
                "a_panic_while_building_stops_the_children_started",
                a_panic_while_building_stops_the_children_started,
            ),
            trial(
                "a_panic_while_stopping_a_failed_build_kills_the_rest",
                a_panic_while_stopping_a_failed_build_kills_the_rest,
            ),
            trial("supervisor_process_sigkilled", supervisor_sigkilled),
            trial(
                "a_supervisor_that_adopts_orphans_reaps_them",
                a_supervisor_that_adopts_orphans_reaps_them,
            ),
            trial(
                "an_ended_childs_group_goes_with_its_supervisors_process",
                an_ended_childs_group_goes_with_its_supervisors_process,
            ),
            trial(
                "a_process_that_exits_stops_its_supervisors_children_and_their_groups",
                supervisor_process_exits,
            ),
            trial("bad_input", bad_input),
            trial(
                "no_thread_for_the_supervisor_leaves_no_child",
                no_thread_leaves_no_child,
            ),
            trial("daemonize_pidfile_second_refused", daemonize_pidfile),
            trial(
                "a_failed_daemonize_leaves_no_pid_file",
                a_failed_daemonize_leaves_no_pid_file,
            ),
        ],
        helpers,
        Duration::from_secs(300),
        common::no_new_dev_shm,
    );
}

fn helpers(mode: &str) {
    match mode {
        "held_restart_cpu" => helper_held_restart_cpu(),
        "supervisor" => {
            let ready = std::env::temp_dir()
                .join(format!("multiproc-test-grandchild-{}", std::process::id()));
            let sup = Supervisor::builder()
                .child(ChildSpec::new("steady", sleep_forever, ()))
                .child(ChildSpec::new("flaky", crash_after_ms, 100))
                .child(ChildSpec::new(
                    "parent",
                    starts_a_grandchild,
                    ready.to_string_lossy().into_owned(),
                ))
                .backoff(Duration::from_millis(10), Duration::from_millis(20))
                .intensity(1000, Duration::from_secs(1))
                .build()
                .unwrap();
            let pids: Vec<String> = sup
                .status()
                .iter()
                .filter_map(|c| match c.state {
                    ChildState::Running { pid } => Some(pid.to_string()),
                    _ => None,
                })
                .collect();
            println!("children {}", pids.join(" "));
            assert!(eventually(T, || std::fs::read_to_string(&ready)
                .is_ok_and(|s| s.ends_with('\n'))));
            let grandchild = std::fs::read_to_string(&ready).unwrap();
            std::fs::remove_file(&ready).unwrap();
            println!("grandchild {}", grandchild.trim());
            std::thread::sleep(T);
        }
        "supervisor_exits" => {
            // A program that exits with its supervisor still running.
            let ready = std::env::temp_dir()
                .join(format!("multiproc-test-grandchild-{}", std::process::id()));
            let sup = Supervisor::builder()
                .child(ChildSpec::new(
                    "parent",
                    starts_a_grandchild,
                    ready.to_string_lossy().into_owned(),
                ))
                .build()
                .unwrap();
            assert!(eventually(T, || std::fs::read_to_string(&ready)
                .is_ok_and(|s| s.ends_with('\n'))));
            let grandchild = std::fs::read_to_string(&ready).unwrap();
            std::fs::remove_file(&ready).unwrap();
            println!(
                "pids {} {}",
                pid_of(&sup, "parent").unwrap(),
                grandchild.trim()
            );
            std::process::exit(0);
        }
        "lingering" | "lingering_exits" => {
            // A child that ends at once, leaving in its process group a member that
            // ignores `SIGTERM`: the supervisor waits out its 30 s grace before it kills
            // the group.
            let dir = tempdir(&format!("lingering-{}", std::process::id()));
            let log = dir.join("grandchildren");
            std::fs::write(&log, b"").unwrap();
            let sup = Supervisor::builder()
                .child(
                    ChildSpec::new(
                        "leaver",
                        leaves_grandchild,
                        (log.to_string_lossy().into_owned(), true),
                    )
                    .restart(Restart::Temporary)
                    // Far past the waits of the helper and the test: the member is
                    // not killed by the supervisor meanwhile.
                    .shutdown_grace(10 * T),
                )
                .build()
                .unwrap();
            assert!(eventually(T, || !pids_in(&log).is_empty()));
            // The child itself has ended (and been reaped) by now.
            assert!(eventually(T, || sup.status()[0].state == ChildState::Done));
            let grandchild = pids_in(&log)[0];
            std::fs::remove_dir_all(&dir).unwrap();
            println!("grandchild {grandchild}");
            if mode == "lingering_exits" {
                std::process::exit(0);
            }
            std::thread::sleep(T);
        }
        "zombies" => {
            // This process adopts orphans, as a container's first process does: the
            // grandchildren a restarting child leaves come to it when killed.
            rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
            let dir = tempdir(&format!("zombies-{}", std::process::id()));
            let log = dir.join("grandchildren");
            leaver_runs(&log).shutdown().unwrap();
            let zombies = || {
                common::children_of(std::process::id())
                    .iter()
                    .filter(|(_, state, _)| *state == 'Z')
                    .count()
            };
            // Any left would stay: nothing else reaps them.
            eventually(Duration::from_secs(2), || zombies() == 0);
            println!("zombies {} of {}", zombies(), pids_in(&log).len());
            std::fs::remove_dir_all(&dir).unwrap();
        }
        "thread_limited" => helper_thread_limited(),
        other => panic!("unknown helper mode {other}"),
    }
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Starts a grandchild in its process group (`sleep`), writes its pid to `ready` and
/// runs until stopped.
// Never waited for on purpose: the grandchild is left to the group kill, and its zombie
// to whoever it is re-parented to.
#[allow(clippy::zombie_processes)]
fn starts_a_grandchild(ready: String) {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    std::fs::write(&ready, format!("{}\n", child.id())).unwrap();
    sleep_forever(());
}

/// Crashes once `go` is set (at once, every run after the first).
fn crash_on(go: multiproc::Event) {
    go.wait();
    std::process::abort();
}

/// Crashes once `go` is set while the marker file exists, removing it; runs for good once
/// it is gone.
fn crash_once_on((marker, go): (String, multiproc::Event)) {
    if std::fs::remove_file(&marker).is_ok() {
        go.wait();
        std::process::abort();
    }
    sleep_forever(());
}

/// Appends when it starts (`CLOCK_MONOTONIC`, in nanoseconds: one clock for every
/// process) to `file`, then crashes once `go` is set.
fn note_start_crash_on((file, go): (String, multiproc::Event)) {
    use std::io::Write;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let nanos = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .unwrap();
    writeln!(f, "{nanos}").unwrap();
    drop(f);
    go.wait();
    std::process::abort();
}

/// Appends a line `name what` to the file `log` (in one write: processes that note at
/// once do not mix their lines).
fn note(log: &str, name: &str, what: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    f.write_all(format!("{name} {what}\n").as_bytes()).unwrap();
}

/// Notes its start in `log`, waits for `SIGTERM`, notes it, takes `ms` to stop and
/// notes that it is gone.
fn notes_its_stop((log, name, ms): (String, String, u64)) {
    wait_for_sigterm(|| note(&log, &name, "start"));
    note(&log, &name, "term");
    std::thread::sleep(Duration::from_millis(ms));
    note(&log, &name, "gone");
}

/// Blocks `SIGTERM`, runs `ready`, and returns once a `SIGTERM` came.
fn wait_for_sigterm(ready: impl FnOnce()) {
    // SAFETY: `set` is a signal set this function owns; blocking a signal and waiting
    // for it runs no handler.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        ready();
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

/// On its first run (while `marker` exists, removing it), leaves a grandchild in its
/// group that ignores `SIGTERM` (its pid appended to `log`) and returns once `go` is
/// set; runs for good afterwards.
fn leaves_grandchild_once_on((log, marker, go): (String, String, multiproc::Event)) {
    if std::fs::remove_file(&marker).is_ok() {
        leaves_grandchild((log, true));
        go.wait();
        return;
    }
    sleep_forever(());
}

/// Ends on `SIGTERM`: `ms` after it on its first run (while `marker` exists, removing
/// it), at once afterwards.
fn slow_stop_once((marker, ms): (String, u64)) {
    wait_for_sigterm(|| ());
    if std::fs::remove_file(&marker).is_ok() {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Counts its runs in the file `counter`; crashes at once on the runs numbered in
/// `crashes` (from 1), runs for good on the others.
fn crashes_on_runs((counter, crashes): (String, Vec<u32>)) {
    let run = std::fs::read_to_string(&counter)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&counter, run.to_string()).unwrap();
    if crashes.contains(&run) {
        std::process::abort();
    }
    sleep_forever(());
}

/// A value whose decoding panics.
#[derive(serde::Serialize)]
struct PanicsWhenDecoded;

impl<'de> serde::Deserialize<'de> for PanicsWhenDecoded {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("cannot be decoded")
    }
}

/// Returns a value that cannot be decoded once it gets `SIGTERM`.
fn returns_undecodable_on_sigterm(_: ()) -> PanicsWhenDecoded {
    wait_for_sigterm(|| ());
    PanicsWhenDecoded
}

/// Notes its start in `log` and runs until killed, ignoring `SIGTERM`.
fn notes_start_ignores_sigterm(log: String) {
    // SAFETY: setting a signal's disposition to "ignore" runs no code of ours.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    note(&log, "stubborn", "start");
    sleep_forever(());
}

fn crash_after_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::abort();
}

/// Crashes (after `ms`) while the marker file exists, removing it; runs for good once
/// it is gone.
fn crash_once((marker, ms): (String, u64)) {
    if std::fs::remove_file(&marker).is_ok() {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::abort();
    }
    sleep_forever(());
}

fn returns(_: ()) -> u32 {
    1
}

fn ignores_sigterm(ready: String) {
    // SAFETY: setting a signal's disposition to "ignore" runs no code of ours.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    // A grandchild in the same process group, which must go too.
    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    std::fs::write(&ready, child.id().to_string()).unwrap();
    sleep_forever(());
    // Never reached: the supervisor kills this process group, `sleep` included.
    drop(child.wait());
}

/// Ignores `SIGTERM`, leaves a grandchild (`sleep`) in its process group and moves
/// itself into another group of its session (it leads its own, so it cannot `setsid`);
/// then notes its pid and the grandchild's in `log`.
// The grandchild is never waited for on purpose: its zombie keeps the group there.
#[allow(clippy::zombie_processes)]
fn leaves_its_group(log: String) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setting a signal's disposition to "ignore" runs no code of ours.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    let stays = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    // A group of its own to move into (its leader leads it once `spawn` returns), left
    // to this process alone.
    let mut other = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap();
    let group = rustix::process::Pid::from_raw(other.id() as i32);
    rustix::process::setpgid(None, group).unwrap();
    other.kill().unwrap();
    other.wait().unwrap();
    note(
        &log,
        &std::process::id().to_string(),
        &stays.id().to_string(),
    );
    sleep_forever(());
}

/// Starts a grandchild in this child's process group (`sleep`, ignoring `SIGTERM` when
/// `stubborn`), appends its pid to `log`, and returns at once (the supervisor restarts
/// this child, so every run leaves one grandchild behind unless the group is killed).
// Never waited for on purpose: the grandchild is left to the group kill, and its zombie
// to whoever it is re-parented to.
#[allow(clippy::zombie_processes)]
fn leaves_grandchild((log, stubborn): (String, bool)) {
    // The child's process group first: a grandchild killed between its fork and its
    // write below is still found (and reaped) through its group.
    let mut groups = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(format!("{log}.groups"))
        .unwrap();
    let group = rustix::process::getpgrp().as_raw_nonzero().get();
    std::io::Write::write_all(&mut groups, format!("{group}\n").as_bytes()).unwrap();
    if stubborn {
        // The grandchild logs itself once it ignores `SIGTERM`: a stop that came
        // between its start and its `trap` would end it before the test's grace begins.
        // So does the `SIGTERM` its group gets when this child ends: this child
        // returns only once the grandchild is logged.
        let sh = std::process::Command::new("sh")
            .args([
                "-c",
                "trap '' TERM; echo $$ >> \"$1\"; exec sleep 1000",
                "sh",
                &log,
            ])
            .spawn()
            .unwrap();
        assert!(eventually(T, || pids_in(Path::new(&log)).contains(&sh.id())));
        return;
    }
    let child = std::process::Command::new("sh")
        .args(["-c", "exec sleep 1000"])
        .spawn()
        .unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, format!("{}\n", child.id()).as_bytes()).unwrap();
}

/// Every run's group in `LOG.groups` (see [`leaves_grandchild`]) is gone, a grandchild
/// killed before it was logged included (its zombie came to this process, a subreaper,
/// and is reaped here).
fn groups_gone(log: &Path) {
    for group in pids_in(&log.with_extension("groups")) {
        assert_eq!(
            common::settle_group(group, T),
            Vec::new(),
            "group {group} outlived its run"
        );
    }
}

/// Live members (not zombies) of process group `pgid`.
fn live_members(pgid: u32) -> usize {
    common::group_members(pgid)
        .iter()
        .filter(|(_, state, _)| *state != 'Z')
        .count()
}

fn pids_in(log: &Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// A supervisor of a child that returns at once, leaving a grandchild in its group (its
/// pid appended to `log`) each run, once it has run five times.
fn leaver_runs(log: &Path) -> Supervisor {
    std::fs::write(log, b"").unwrap();
    let sup = fast()
        .child(
            ChildSpec::new(
                "leaver",
                leaves_grandchild,
                (log.to_string_lossy().into_owned(), false),
            )
            .shutdown_grace(Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    assert!(eventually(T, || pids_in(log).len() >= 5));
    sup
}

/// A child that returns on its own leaves a grandchild running in its group: the group
/// is killed after every run (`SIGTERM`), so no orphan piles up across restarts.
fn exited_child_leaves_no_group() {
    let dir = tempdir("group-exit");
    let log = dir.join("grandchildren");
    leaver_runs(&log).shutdown().unwrap();
    let grandchildren = pids_in(&log);
    for &p in &grandchildren {
        assert!(wait_gone(p, T), "grandchild {p} outlived its group");
        assert_eq!(live_members(p), 0);
        common::reap(p);
    }
    groups_gone(&log);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The leader dies of `SIGTERM` at once, a member of its group ignores it: `shutdown`
/// waits out the grace and kills the group, rather than returning when the leader is
/// gone.
fn leader_dies_member_ignores() {
    let dir = tempdir("group-stop");
    let log = dir.join("grandchildren");
    std::fs::write(&log, b"").unwrap();
    let grace = Duration::from_millis(500);
    let sup = Supervisor::builder()
        .child(
            ChildSpec::new(
                "leader",
                stays_with_grandchild,
                log.to_string_lossy().into_owned(),
            )
            .shutdown_grace(grace),
        )
        .build()
        .unwrap();
    let leader = pid_of(&sup, "leader").unwrap();
    assert!(eventually(T, || pids_in(&log).len() == 1));
    let grandchild = pids_in(&log)[0];
    assert_eq!(live_members(leader), 2);
    let started = Instant::now();
    sup.shutdown().unwrap();
    let took = started.elapsed();
    assert!(took >= grace, "stopped after {took:?}, within the grace");
    assert!(wait_gone(grandchild, T), "the stubborn member survived");
    assert_eq!(live_members(leader), 0);
    common::reap(grandchild);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Whether process `p` runs (a zombie does not).
fn runs(p: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{p}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|at| s[at + 1..].trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Notes in `LOG.overlap` each grandchild an earlier run left (their pids are in `log`)
/// that still runs, then leaves one of its own that ignores `SIGTERM`, and returns.
fn meets_no_leftover(log: String) {
    for p in pids_in(Path::new(&log)) {
        if runs(p) {
            note(&format!("{log}.overlap"), "leftover", &p.to_string());
        }
    }
    leaves_grandchild((log, true));
}

/// A child that returns on its own, leaving a grandchild in its group that ignores
/// `SIGTERM`, starts again only once that group is gone (killed at the end of the
/// child's grace): a new run met the last one's processes (a port still held), for up
/// to the grace, and crashing on them, soon used up the restart intensity.
fn a_restart_waits_for_the_last_runs_group() {
    let dir = tempdir("group-restart");
    let log = dir.join("grandchildren");
    std::fs::write(&log, b"").unwrap();
    let log = log.to_string_lossy().into_owned();
    let sup = fast()
        .child(
            ChildSpec::new("leaver", meets_no_leftover, log.clone())
                .shutdown_grace(Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    let ran = eventually(T, || pids_in(Path::new(&log)).len() >= 3);
    sup.shutdown().unwrap();
    let grandchildren = pids_in(Path::new(&log));
    for &p in &grandchildren {
        assert!(wait_gone(p, T), "grandchild {p} outlived its group");
        common::reap(p);
    }
    groups_gone(Path::new(&log));
    let overlap = std::fs::read_to_string(format!("{log}.overlap")).unwrap_or_default();
    std::fs::remove_dir_all(dir).unwrap();
    assert!(ran, "{grandchildren:?}");
    assert_eq!(overlap, "", "runs met their predecessors' grandchildren");
}

/// A child that ended leaving members of its group that ignore `SIGTERM` has them
/// killed at the end of its grace while the supervisor stops a sibling for the restart:
/// the lingering groups were looked at only between the supervisor's passes, so the
/// kill waited for the sibling's whole stop (and a stop longer than the grace and the
/// 5 s given a kill left the group behind, never killed).
fn a_lingering_group_is_killed_at_its_grace_during_a_siblings_stop() {
    let dir = tempdir("group-during-stop");
    let log = dir.join("grandchildren");
    std::fs::write(&log, b"").unwrap();
    let go = multiproc::Event::new().unwrap();
    let sup = fast()
        .strategy(Strategy::OneForAll)
        .child(
            ChildSpec::new(
                "leaver",
                leaves_grandchild_once_on,
                (
                    log.to_string_lossy().into_owned(),
                    marker(&dir, "leaver"),
                    go.clone(),
                ),
            )
            .shutdown_grace(Duration::from_millis(200)),
        )
        .child(
            // Long enough to outlast the look below on a loaded machine.
            ChildSpec::new("slow", slow_stop_once, (marker(&dir, "slow"), 5000))
                .shutdown_grace(Duration::from_secs(10)),
        )
        .build()
        .unwrap();
    assert!(eventually(T, || pids_in(&log).len() == 1));
    let grandchild = pids_in(&log)[0];
    let slow = pid_of(&sup, "slow").unwrap();
    // "slow" waits for its SIGTERM (blocked, to take it in `sigwait`): one sent before,
    // while it started, ended it at once, and the test proved nothing.
    assert!(
        eventually(T, || common::asleep_in(slow, "sigtimedwait")),
        "\"slow\" never waited for its SIGTERM"
    );
    let asked = Instant::now();
    go.set();
    // The leader returns; its group gets `SIGTERM`, then `SIGKILL` 200 ms later, while
    // "slow" takes 5 s to stop.
    let killed = wait_gone(grandchild, Duration::from_millis(1500));
    let took = asked.elapsed();
    let slow_stopping = runs(slow);
    sup.shutdown().unwrap();
    common::reap(grandchild);
    groups_gone(&log);
    std::fs::remove_dir_all(dir).unwrap();
    assert!(
        killed,
        "the grandchild lived on {took:?} after its leader's end"
    );
    assert!(
        slow_stopping,
        "the sibling's stop was over before the look: proves nothing"
    );
}

/// `strategy` over "first", which crashes once `go` is set (the first of its runs that
/// sees it, once), and "second", which counts its runs and crashes at once on those
/// numbered in `crashes`; backoff from 200 ms, reset by a run of 300 ms.
fn first_then_crashing_second(
    dir: &Path,
    strategy: Strategy,
    go: &multiproc::Event,
    crashes: Vec<u32>,
) -> Supervisor {
    let counter = dir.join("runs").to_string_lossy().into_owned();
    Supervisor::builder()
        .strategy(strategy)
        .backoff(Duration::from_millis(200), Duration::from_secs(5))
        .jitter(Jitter::None)
        .reset_after(Duration::from_millis(300))
        .intensity(100, Duration::from_secs(10))
        .child(ChildSpec::new(
            "first",
            crash_on_once,
            (marker(dir, "first"), go.clone()),
        ))
        .child(ChildSpec::new(
            "second",
            crashes_on_runs,
            (counter, crashes),
        ))
        .build()
        .unwrap()
}

/// Rest-for-one: a child waiting for its own restart (it crashed four times in a row:
/// 1.6 s) when the one before it crashes (200 ms) is restarted once, counted once, and
/// after its own backoff: the crash counted it again and moved its restart to the
/// shorter delay.
fn a_waiting_sibling_restarts_once_after_its_own_backoff() {
    let dir = tempdir("waiting-sibling");
    let go = multiproc::Event::new().unwrap();
    let sup = first_then_crashing_second(&dir, Strategy::RestForOne, &go, vec![1, 2, 3, 4]);
    let mut events = Seen::of(&sup);
    // The fourth crash in a row: 200 ms doubled three times.
    loop {
        if let SupervisorEvent::Restarting { child, after } = events.next()
            && child == "second"
            && after >= Duration::from_secs(1)
        {
            break;
        }
    }
    let crashed = Instant::now();
    go.set();
    let restarted = loop {
        if let SupervisorEvent::Started { child, .. } = events.next()
            && child == "second"
        {
            break crashed.elapsed();
        }
    };
    let seen = events.seen;
    let settled = eventually(T, || {
        pid_of(&sup, "first").is_some() && pid_of(&sup, "second").is_some()
    });
    let restarts = (restarts_of(&sup, "first"), restarts_of(&sup, "second"));
    sup.shutdown().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    assert!(settled, "{seen:?}");
    assert!(
        restarted >= Duration::from_millis(800),
        "restarted {restarted:?} after the other crash, within its own 1.6 s backoff: {seen:?}"
    );
    assert_eq!(restarts, (1, 4), "{seen:?}");
}

/// A supervisor's events as a test reads them, each one kept to show in a failure.
struct Seen {
    events: crossbeam_channel::Receiver<SupervisorEvent>,
    seen: Vec<SupervisorEvent>,
}

impl Seen {
    fn of(sup: &Supervisor) -> Seen {
        Seen {
            events: sup.events(),
            seen: Vec::new(),
        }
    }

    /// The next event (within `T`).
    fn next(&mut self) -> SupervisorEvent {
        let e = self.events.recv_timeout(T).expect("an event");
        self.seen.push(e.clone());
        e
    }
}

/// Waits for `go`, then crashes if `marker` exists (removing it); runs for good
/// otherwise: the first run that sees `go` crashes, once.
fn crash_on_once((marker, go): (String, multiproc::Event)) {
    go.wait();
    if std::fs::remove_file(&marker).is_ok() {
        std::process::abort();
    }
    sleep_forever(());
}

/// One-for-all: a child that ran for longer than `reset_after` and is stopped for a
/// sibling's crash starts its backoff over, as its own end after such a run does: its
/// next crash waits the base delay, not the one its early crashes had grown to.
fn a_sibling_stopped_after_a_stable_run_backs_off_from_the_base() {
    let dir = tempdir("stable-sibling");
    let go = multiproc::Event::new().unwrap();
    // "second" crashes three times in a row (200, 400, 800 ms), runs stably, then
    // crashes at once after the restart that the other's crash makes.
    let sup = first_then_crashing_second(&dir, Strategy::OneForAll, &go, vec![1, 2, 3, 5]);
    let mut events = Seen::of(&sup);
    let restarting_second = |e: &SupervisorEvent| match e {
        // Milliseconds: the delays are computed in `f32` (800.000032 ms, say).
        SupervisorEvent::Restarting { child, after } if child == "second" => {
            Some(after.as_millis())
        }
        _ => None,
    };
    // The third crash in a row, then the stable run.
    while restarting_second(&events.next()) != Some(800) {}
    while !matches!(events.next(), SupervisorEvent::Started { child, .. } if child == "second") {}
    // The stable run: longer than `reset_after` (300 ms).
    std::thread::sleep(Duration::from_millis(600));
    go.set();
    let after = loop {
        if let Some(after) = restarting_second(&events.next()) {
            break after;
        }
    };
    sup.shutdown().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    assert_eq!(after, 200, "{:?}", events.seen);
}

/// A panic while the supervisor stops its children (a child's value, decoded as it
/// ends, panics; the stop is the one intensity exceeded makes) ends it as any other end
/// does: subscribers get `GaveUp` and `Stopped` (one waiting for `Stopped` waited for
/// ever) and the status says stopped (it said running).
fn a_panic_while_stopping_is_told_to_subscribers() {
    let go = multiproc::Event::new().unwrap();
    let sup = Supervisor::builder()
        .intensity(0, Duration::from_secs(10))
        .child(ChildSpec::new(
            "undecodable",
            returns_undecodable_on_sigterm,
            (),
        ))
        .child(ChildSpec::new("crasher", crash_on, go.clone()))
        .build()
        .unwrap();
    let child = pid_of(&sup, "undecodable").unwrap();
    let events = sup.events();
    go.set();
    let ended = sup.wait_timeout(T);
    let mut seen = Vec::new();
    let told = loop {
        match events.recv_timeout(Duration::from_secs(5)) {
            Ok(e) => {
                let last = matches!(e, SupervisorEvent::Stopped);
                seen.push(e);
                if last {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let status = sup.status();
    assert!(wait_gone(child, T));
    match &ended {
        Err(SupervisorError::Panicked(why)) => assert!(why.contains("cannot be decoded"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(told, "no Stopped event: {seen:?}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, SupervisorEvent::GaveUp { reason } if reason.contains("cannot be decoded"))),
        "{seen:?}"
    );
    assert!(
        status
            .iter()
            .all(|c| matches!(c.state, ChildState::Stopped)),
        "{status:?}"
    );
}

/// A subscriber's stream ends after `Stopped` (a loop over it ended only when the
/// supervisor was dropped, and one asked for after the stop waited for ever).
fn the_event_stream_ends_after_stopped() {
    // Its one child returns and is not restarted: the supervisor stops by itself.
    let go = multiproc::Event::new().unwrap();
    let sup = fast()
        .child(ChildSpec::new("one-off", returns_when, go.clone()).restart(Restart::Temporary))
        .build()
        .unwrap();
    let events = sup.events();
    go.set();
    assert!(sup.wait_timeout(T).is_ok());
    let mut seen = Vec::new();
    let end = loop {
        match events.recv_timeout(Duration::from_secs(5)) {
            Ok(e) => seen.push(e),
            Err(e) => break e,
        }
    };
    let later = sup.events().recv_timeout(Duration::from_secs(1));
    sup.shutdown().unwrap();
    assert!(
        matches!(seen.last(), Some(SupervisorEvent::Stopped)),
        "{seen:?}"
    );
    assert_eq!(
        end,
        crossbeam_channel::RecvTimeoutError::Disconnected,
        "{seen:?}"
    );
    assert_eq!(
        later.unwrap_err(),
        crossbeam_channel::RecvTimeoutError::Disconnected
    );
}

/// Returns once `go` is set.
fn returns_when(go: multiproc::Event) {
    go.wait();
}

/// Starts a grandchild that ignores `SIGTERM`, then waits for ever (dies of `SIGTERM`).
fn stays_with_grandchild(log: String) {
    leaves_grandchild((log, true));
    sleep_forever(());
}

fn pid_of(sup: &Supervisor, name: &str) -> Option<u32> {
    sup.status()
        .into_iter()
        .find(|c| c.name == name)
        .and_then(|c| match c.state {
            ChildState::Running { pid } => Some(pid),
            _ => None,
        })
}

fn restarts_of(sup: &Supervisor, name: &str) -> u32 {
    sup.status()
        .into_iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.restarts)
}

fn marker(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, b"").unwrap();
    p.to_string_lossy().into_owned()
}

fn fast() -> multiproc::SupervisorBuilder {
    Supervisor::builder()
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .jitter(Jitter::None)
        .intensity(100, Duration::from_secs(10))
}

fn stop_and_check_gone(sup: Supervisor, pids: &[u32]) {
    sup.shutdown().unwrap();
    for &p in pids {
        assert!(wait_gone(p, T), "child {p} still running after stop");
    }
}

fn one_for_one() {
    let sup = fast()
        .child(ChildSpec::new("steady", sleep_forever, ()))
        .child(ChildSpec::new("crasher", crash_after_ms, 50))
        .build()
        .unwrap();
    let steady = pid_of(&sup, "steady").unwrap();
    assert!(eventually(T, || restarts_of(&sup, "crasher") >= 3));
    assert_eq!(
        pid_of(&sup, "steady"),
        Some(steady),
        "the other child is untouched"
    );
    assert_eq!(restarts_of(&sup, "steady"), 0);
    let last = sup.status()[1].last_exit.clone().unwrap();
    assert!(!last.normal && last.reason.contains("SIGABRT"), "{last:?}");
    let crasher = pid_of(&sup, "crasher");
    stop_and_check_gone(sup, &[steady]);
    if let Some(p) = crasher {
        assert!(wait_gone(p, T));
    }
}

/// Children a, b (crashes once), c: which were restarted when b crashed.
fn strategy_run(strategy: Strategy) -> [bool; 3] {
    let dir = tempdir("strategy");
    // b crashes once the pids before are read.
    let go = multiproc::Event::new().unwrap();
    let sup = fast()
        .strategy(strategy)
        .child(ChildSpec::new("a", sleep_forever, ()))
        .child(ChildSpec::new(
            "b",
            crash_once_on,
            (marker(&dir, "b"), go.clone()),
        ))
        .child(ChildSpec::new("c", sleep_forever, ()))
        .build()
        .unwrap();
    let before: Vec<Option<u32>> = ["a", "b", "c"].iter().map(|n| pid_of(&sup, n)).collect();
    go.set();
    assert!(eventually(T, || restarts_of(&sup, "b") == 1
        && ["a", "b", "c"].iter().all(|n| pid_of(&sup, n).is_some())));
    let after: Vec<Option<u32>> = ["a", "b", "c"].iter().map(|n| pid_of(&sup, n)).collect();
    let pids: Vec<u32> = after.iter().flatten().copied().collect();
    stop_and_check_gone(sup, &pids);
    for p in before.iter().flatten() {
        assert!(wait_gone(*p, T));
    }
    std::fs::remove_dir_all(dir).unwrap();
    [0, 1, 2].map(|i| before[i] != after[i])
}

fn one_for_all() {
    assert_eq!(strategy_run(Strategy::OneForAll), [true, true, true]);
}

fn rest_for_one() {
    assert_eq!(strategy_run(Strategy::RestForOne), [false, true, true]);
}

fn intensity_exceeded() {
    // The crasher crashes once this test listens and knows steady's pid.
    let go = multiproc::Event::new().unwrap();
    let sup = Supervisor::builder()
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .intensity(3, Duration::from_secs(10))
        .child(ChildSpec::new("steady", sleep_forever, ()))
        .child(ChildSpec::new("crasher", crash_on, go.clone()))
        .build()
        .unwrap();
    let events = sup.events();
    let steady = pid_of(&sup, "steady").unwrap();
    go.set();
    match sup.wait_timeout(T) {
        Err(SupervisorError::Intensity {
            restarts: 4,
            max: 3,
            child,
            ..
        }) => assert_eq!(child, "crasher"),
        other => panic!("{other:?}"),
    }
    assert!(!sup.is_running());
    assert!(
        wait_gone(steady, T),
        "children stopped when the supervisor gives up"
    );
    // Read to the stream's end: `wait` returns as the outcome is set, and the last
    // events (`GaveUp`, `Stopped`) follow it.
    let seen: Vec<SupervisorEvent> = std::iter::from_fn(|| events.recv_timeout(T).ok()).collect();
    assert!(
        seen.iter()
            .any(|e| matches!(e, SupervisorEvent::GaveUp { .. }))
    );
    assert!(matches!(seen.last(), Some(SupervisorEvent::Stopped)));
    assert!(
        sup.status()
            .iter()
            .all(|c| !matches!(c.state, ChildState::Running { .. }))
    );
}

/// Returns an error while the marker file exists (removing it), then `Ok(7)`.
fn errs_once(marker: String) -> Result<u32, String> {
    if std::fs::remove_file(&marker).is_ok() {
        return Err("not yet".into());
    }
    Ok(7)
}

/// A transient child made with `new_fallible` whose function returns `Err` is
/// restarted (an abnormal end), and done once it returns `Ok`; one made with `new` is
/// done whatever its function returns.
fn a_fallible_child_that_returns_err_ended_abnormally() {
    let dir = tempdir("fallible");
    let sup = fast()
        .child(
            ChildSpec::new_fallible("fallible", errs_once, marker(&dir, "f"))
                .restart(Restart::Transient),
        )
        .child(ChildSpec::new("plain", errs_once, marker(&dir, "p")).restart(Restart::Transient))
        .build()
        .unwrap();
    sup.wait_timeout(T).expect("both children done");
    let st = sup.status();
    assert_eq!((st[0].restarts, st[1].restarts), (1, 0));
    assert!(st[0].last_exit.as_ref().unwrap().normal);
    assert!(st[1].last_exit.as_ref().unwrap().normal);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Once a subscriber has `Stopped` (or a stream that ended), the supervisor says it
/// is not running and `wait` returns at once (the outcome was kept only after the
/// event went: a subscriber that asked at once could find it still running).
fn a_supervisor_that_said_stopped_is_not_running() {
    for round in 0..1000 {
        let sup = fast()
            .child(ChildSpec::new("returns", returns, ()).restart(Restart::Transient))
            .build()
            .unwrap();
        let events = sup.events();
        loop {
            match events.recv_timeout(T) {
                Ok(SupervisorEvent::Stopped)
                | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                Ok(_) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => panic!("no Stopped"),
            }
        }
        assert!(!sup.is_running(), "round {round}");
        assert!(
            sup.wait_timeout(Duration::ZERO).is_ok(),
            "round {round}: the outcome is not there"
        );
    }
}

fn transient_and_temporary() {
    let dir = tempdir("transient");
    let sup = fast()
        .child(ChildSpec::new("returns", returns, ()).restart(Restart::Transient))
        .child(
            ChildSpec::new("crashes once", crash_once, (marker(&dir, "t"), 0))
                .restart(Restart::Transient),
        )
        .child(ChildSpec::new("one-off", crash_after_ms, 0).restart(Restart::Temporary))
        .build()
        .unwrap();
    assert!(eventually(T, || {
        let st = sup.status();
        st[0].state == ChildState::Done
            && st[2].state == ChildState::Done
            && st[1].restarts == 1
            && matches!(st[1].state, ChildState::Running { .. })
    }));
    let st = sup.status();
    assert_eq!(st[0].restarts, 0);
    assert!(st[0].last_exit.as_ref().unwrap().normal);
    assert_eq!(st[2].restarts, 0);
    assert!(!st[2].last_exit.as_ref().unwrap().normal);
    let running = pid_of(&sup, "crashes once").unwrap();
    stop_and_check_gone(sup, &[running]);
    std::fs::remove_dir_all(dir).unwrap();

    // A supervisor whose children are all done stops by itself.
    let sup = fast()
        .child(ChildSpec::new("returns", returns, ()).restart(Restart::Transient))
        .build()
        .unwrap();
    sup.wait_timeout(T).unwrap();

    // So does one whose child returns more than its channel's buffer holds (sent only
    // as it is read: the supervisor reads it, rather than wait for an exit that never
    // comes).
    let sup = fast()
        .child(ChildSpec::new("returns a lot", returns_bytes, 4 << 20).restart(Restart::Temporary))
        .build()
        .unwrap();
    sup.wait_timeout(T)
        .expect("the child with a large result ended");
    assert!(sup.status()[0].last_exit.as_ref().unwrap().normal);
}

fn returns_bytes(n: usize) -> Vec<u8> {
    vec![7; n]
}

fn backoff_grows_then_resets() {
    let delays = |sup: &Supervisor, events: &crossbeam_channel::Receiver<SupervisorEvent>, n| {
        let mut out = Vec::new();
        while out.len() < n {
            // Whole milliseconds: backon computes in f32.
            if let SupervisorEvent::Restarting { after, .. } =
                events.recv_timeout(T).expect("an event")
            {
                out.push((after.as_secs_f64() * 1000.0).round() as u64);
            }
        }
        let _ = sup;
        out
    };
    let ms = Duration::from_millis;
    // The first crash waits until this test listens, so no restart goes unseen.
    let go = multiproc::Event::new().unwrap();
    let sup = Supervisor::builder()
        .backoff(ms(20), ms(1000))
        .jitter(Jitter::None)
        .intensity(100, Duration::from_secs(10))
        .child(ChildSpec::new("fast crasher", crash_on, go.clone()))
        .build()
        .unwrap();
    let events = sup.events();
    go.set();
    assert_eq!(delays(&sup, &events, 3), [20, 40, 80]);
    sup.shutdown().unwrap();
    // The restarts really wait: each start comes at least its delay after the one
    // before (which crashed at once), as the children themselves note the times.
    let go = multiproc::Event::new().unwrap();
    let dir = tempdir("backoff");
    let starts = dir.join("starts").display().to_string();
    let sup = Supervisor::builder()
        .backoff(ms(200), ms(5000))
        .jitter(Jitter::None)
        .intensity(100, Duration::from_secs(60))
        .child(ChildSpec::new(
            "timed crasher",
            note_start_crash_on,
            (starts.clone(), go.clone()),
        ))
        .build()
        .unwrap();
    go.set();
    let noted = || -> Vec<u64> {
        std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    assert!(eventually(T, || noted().len() >= 4));
    sup.shutdown().unwrap();
    let noted = noted();
    let gaps: Vec<Duration> = noted
        .windows(2)
        .take(3)
        .map(|w| Duration::from_nanos(w[1] - w[0]))
        .collect();
    for (gap, delay) in gaps.iter().zip([200, 400, 800]) {
        assert!(
            *gap >= ms(delay),
            "started {gap:?} after the start before, the delay was {delay} ms: {gaps:?}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
    // A child that ran longer than `reset_after` before crashing starts from the base.
    let sup = Supervisor::builder()
        .backoff(ms(20), ms(1000))
        .jitter(Jitter::None)
        .reset_after(ms(100))
        .intensity(100, Duration::from_secs(10))
        .child(ChildSpec::new("slow crasher", crash_after_ms, 200))
        .build()
        .unwrap();
    let events = sup.events();
    assert_eq!(delays(&sup, &events, 3), [20, 20, 20]);
    sup.shutdown().unwrap();
    // Jitter: `Full` draws each delay from [0, d], `Equal` from [d/2, d], where d is
    // the delay without jitter (here 20, 40, 80, ... up to 1000 ms).
    for (jitter, low) in [(Jitter::Full, 0.0), (Jitter::Equal, 0.5)] {
        let go = multiproc::Event::new().unwrap();
        let sup = Supervisor::builder()
            .backoff(ms(20), ms(1000))
            .jitter(jitter)
            .intensity(100, Duration::from_secs(60))
            .child(ChildSpec::new("jittery crasher", crash_on, go.clone()))
            .build()
            .unwrap();
        let events = sup.events();
        go.set();
        let got = delays(&sup, &events, 6);
        sup.shutdown().unwrap();
        let plain = [20u64, 40, 80, 160, 320, 640];
        for (d, p) in got.iter().zip(plain) {
            assert!(
                (*d as f64) >= low * p as f64 - 1.0 && *d <= p + 1,
                "{jitter:?}: delay {d} ms outside its range for {p} ms: {got:?}"
            );
        }
        assert_ne!(got, plain, "{jitter:?}: no jitter at all: {got:?}");
    }
}

fn sigterm_ignored() {
    let dir = tempdir("sigterm");
    let ready = dir.join("ready");
    let grace = Duration::from_millis(300);
    let sup = Supervisor::builder()
        .child(
            ChildSpec::new(
                "stubborn",
                ignores_sigterm,
                ready.to_string_lossy().into_owned(),
            )
            .shutdown_grace(grace),
        )
        .build()
        .unwrap();
    let child = pid_of(&sup, "stubborn").unwrap();
    assert!(eventually(T, || std::fs::read_to_string(&ready)
        .is_ok_and(|s| !s.is_empty())));
    let grandchild: u32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
    let started = Instant::now();
    sup.shutdown().unwrap();
    let took = started.elapsed();
    assert!(
        took >= grace,
        "stopped after {took:?}, before the grace period"
    );
    assert!(took < T);
    assert!(wait_gone(child, T));
    assert!(
        wait_gone(grandchild, T),
        "the child's process group was killed"
    );
    common::reap(grandchild);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A `tracing` subscriber that panics at the first event of `target` (once).
struct PanicsOnce {
    target: &'static str,
    done: std::sync::atomic::AtomicBool,
}

impl tracing::Subscriber for PanicsOnce {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() == self.target
            && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a subscriber that panics");
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Notes its pid in `log`, then sleeps.
fn notes_its_pid(log: String) {
    note(&log, "pid", &std::process::id().to_string());
    sleep_forever(());
}

/// A panic as the supervisor starts a child (here a `tracing` subscriber's, on the
/// supervisor's first event) fails the build, and the child is stopped with the rest:
/// it was in its slot before anything was said of it.
fn a_panic_as_a_child_starts_leaves_no_child() {
    let dir = tempdir("start-panic");
    let log = dir.join("pid");
    let panics = PanicsOnce {
        target: "multiproc::supervise::engine",
        done: std::sync::atomic::AtomicBool::new(false),
    };
    let built = tracing::subscriber::with_default(panics, || {
        Supervisor::builder()
            .child(
                ChildSpec::new("noted", notes_its_pid, log.to_string_lossy().into_owned())
                    .shutdown_grace(Duration::from_millis(100)),
            )
            .build()
    });
    assert!(
        matches!(built, Err(SupervisorError::Panicked(_))),
        "{:?}",
        built.err()
    );
    // The child may have been stopped before it noted its pid; one left running notes
    // it.
    let listed = || {
        multiproc::active_children()
            .iter()
            .any(|c| c.name() == "noted")
    };
    let noted = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(Duration::from_secs(5), || {
        noted().ends_with('\n') || !listed()
    });
    let noted = noted();
    if let Some(pid) = noted.split_whitespace().nth(1) {
        let pid: u32 = pid.parse().unwrap();
        let _cleanup = KillOnDrop(pid);
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "the child outlived the build"
        );
    }
    assert!(!listed(), "the child is still listed");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A child that moved out of its process group, leaving a member there, is killed
/// when its grace has passed: a send to its group succeeds (the member is there) and
/// reaches the member only.
fn a_child_that_left_its_group_is_stopped_by_its_grace() {
    let dir = tempdir("left-group");
    let log = dir.join("pids");
    let grace = Duration::from_millis(300);
    let sup = Supervisor::builder()
        .child(
            ChildSpec::new(
                "leaver",
                leaves_its_group,
                log.to_string_lossy().into_owned(),
            )
            .restart(Restart::Temporary)
            .shutdown_grace(grace),
        )
        .build()
        .unwrap();
    assert!(eventually(T, || std::fs::read_to_string(&log)
        .is_ok_and(|s| s.ends_with('\n'))));
    let pids: Vec<u32> = std::fs::read_to_string(&log)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (child, stays) = (pids[0], pids[1]);
    let _cleanup = (KillOnDrop(child), KillOnDrop(stays));
    assert_eq!(pid_of(&sup, "leaver"), Some(child));
    assert!(
        !common::group_members(child)
            .iter()
            .any(|(p, ..)| *p == child),
        "the child is still in its group"
    );
    let started = Instant::now();
    sup.shutdown().unwrap();
    let took = started.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(3),
        "stopped after {took:?}"
    );
    assert!(
        wait_gone(child, Duration::from_secs(1)),
        "the child outlived its stop"
    );
    assert!(wait_gone(stays, T), "the member of its group outlived it");
    common::reap(stays);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Children stop in reverse start order, each once the one after it is gone: the
/// first, which the second may need while it stops, is still there then.
fn children_stop_in_reverse_order() {
    let dir = tempdir("order");
    let log = dir.join("log").to_string_lossy().into_owned();
    let child = |name: &str, ms: u64| {
        ChildSpec::new(name, notes_its_stop, (log.clone(), name.to_string(), ms))
    };
    let sup = Supervisor::builder()
        .child(child("first", 0))
        .child(child("second", 300))
        .build()
        .unwrap();
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(eventually(T, || lines().matches(" start").count() == 2));
    sup.shutdown().unwrap();
    let stops: Vec<String> = lines()
        .lines()
        .filter(|l| !l.ends_with(" start"))
        .map(String::from)
        .collect();
    assert_eq!(
        stops,
        ["second term", "second gone", "first term", "first gone"]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// One-for-all: `stubborn`, which ignores `SIGTERM` (noting its start in `log`; its
/// 800 ms grace holds a restart), and `crasher`, which crashes once the event returned
/// is set.
fn stubborn_and_crasher(log: &str) -> (Supervisor, multiproc::Event) {
    let go = multiproc::Event::new().unwrap();
    let sup = fast()
        .strategy(Strategy::OneForAll)
        .child(
            ChildSpec::new("stubborn", notes_start_ignores_sigterm, log.to_owned())
                .shutdown_grace(Duration::from_millis(800)),
        )
        .child(ChildSpec::new("crasher", crash_on, go.clone()))
        .build()
        .unwrap();
    (sup, go)
}

/// A stop asked for while a one-for-all supervisor stops the siblings of a child that
/// crashed (one ignores `SIGTERM`: that takes its grace) starts none of them again.
fn a_stop_during_a_restart_starts_nothing() {
    let dir = tempdir("stop_restart");
    let log = dir.join("log").to_string_lossy().into_owned();
    let (sup, go) = stubborn_and_crasher(&log);
    let starts = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(" start")
            .count()
    };
    assert!(eventually(T, || starts() == 1));
    let stubborn = pid_of(&sup, "stubborn").unwrap();
    let crasher = pid_of(&sup, "crasher").unwrap();
    go.set();
    // The crash is seen (within the supervisor's 50 ms look) and the stubborn sibling
    // is being stopped: its 800 ms grace runs.
    assert!(wait_gone(crasher, T));
    std::thread::sleep(Duration::from_millis(250));
    sup.shutdown().unwrap();
    assert!(wait_gone(stubborn, T));
    assert_eq!(starts(), 1, "a child started after the stop was asked for");
    std::fs::remove_dir_all(dir).unwrap();
}

/// One-for-all, a child crashes while its sibling ignores `SIGTERM` (its 800 ms grace
/// holds the restart): on the `Exited` event the status already shows the crashed child
/// restarting (it said it ran, under the pid that had ended, until the siblings' stop
/// was over; later, stopped, until the supervisor had decided), and on `Restarting` the
/// sibling stopped.
fn the_status_shows_an_exit_and_each_stopped_sibling_at_once() {
    let dir = tempdir("status_at_once");
    let log = dir.join("log").to_string_lossy().into_owned();
    let (sup, go) = stubborn_and_crasher(&log);
    let mut seen = Seen::of(&sup);
    assert!(eventually(T, || std::fs::read_to_string(&log)
        .is_ok_and(|l| l.contains("start"))));
    let stubborn = pid_of(&sup, "stubborn").unwrap();
    let crasher = pid_of(&sup, "crasher").unwrap();
    let of = |name: &str| sup.status().into_iter().find(|c| c.name == name).unwrap();
    go.set();
    loop {
        if let SupervisorEvent::Exited { child, .. } = seen.next()
            && child == "crasher"
        {
            break;
        }
    }
    // What comes next too: restarting (it showed as stopped by the supervisor, until
    // the supervisor went on to decide).
    let crashed = of("crasher");
    assert!(
        matches!(crashed.state, ChildState::Restarting { .. }) && crashed.last_exit.is_some(),
        "{crashed:?} (was {crasher})"
    );
    // While its sibling's stop takes its grace, the crashed child shows as restarting
    // (it showed as stopped by the supervisor until the stop was over).
    assert!(
        eventually(T, || {
            let st = sup.status();
            let state = |name: &str| st.iter().find(|c| c.name == name).unwrap().state.clone();
            matches!(state("crasher"), ChildState::Restarting { .. })
                && state("stubborn") == ChildState::Running { pid: stubborn }
        }),
        "{:?}",
        sup.status()
    );
    loop {
        if let SupervisorEvent::Restarting { .. } = seen.next() {
            break;
        }
    }
    let sibling = of("stubborn");
    assert!(
        sibling.state != ChildState::Running { pid: stubborn },
        "{sibling:?}"
    );
    sup.shutdown().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Once (while `marker` exists, removing it): crashes `ms` after `go` is set; runs for
/// good otherwise.
fn crash_once_after((marker, go, ms): (String, multiproc::Event, u64)) {
    if std::fs::remove_file(&marker).is_ok() {
        go.wait();
        std::thread::sleep(Duration::from_millis(ms));
        std::process::abort();
    }
    sleep_forever(());
}

/// One-for-all: a child that crashes once `go` is set, then `middle`, then one that
/// ignores `SIGTERM` (noting its start in `log`), whose 1.5 s grace holds the stop that
/// the crash begins.
fn between_a_crash_and_a_slow_stop(
    dir: &Path,
    go: &multiproc::Event,
    middle: ChildSpec,
    log: String,
) -> Supervisor {
    let sup = fast()
        .strategy(Strategy::OneForAll)
        .child(ChildSpec::new(
            "crasher",
            crash_once_on,
            (marker(dir, "crasher"), go.clone()),
        ))
        .child(middle)
        .child(
            ChildSpec::new("stubborn", notes_start_ignores_sigterm, log.clone())
                .shutdown_grace(Duration::from_millis(1500)),
        )
        .build()
        .unwrap();
    // Returned once the stubborn child ignores `SIGTERM` (it notes its start after):
    // one still starting when `go` is set dies at the stop's first signal, which then
    // holds nothing, and the middle child is stopped before its own end.
    let ignores = eventually(T, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().any(|l| l == "stubborn start"))
    });
    assert!(ignores, "the stubborn child never started");
    sup
}

/// A sibling that crashes on its own while the supervisor stops the others for a
/// restart (one that ignores `SIGTERM` holds the stop for its grace) is reported
/// `Exited`, as any child that ends on its own is: the stop found it ended, reaped it,
/// and said nothing.
fn a_sibling_that_crashes_during_a_stop_is_reported() {
    let dir = tempdir("crash_during_stop");
    let log = dir.join("log").to_string_lossy().into_owned();
    let go = multiproc::Event::new().unwrap();
    let sup = between_a_crash_and_a_slow_stop(
        &dir,
        &go,
        ChildSpec::new(
            "later",
            crash_once_after,
            (marker(&dir, "later"), go.clone(), 300),
        ),
        log,
    );
    let events = sup.events();
    let later = pid_of(&sup, "later").unwrap();
    go.set();
    // The stop ends with the stubborn child's grace; "later" starts again after it.
    let mut seen = Vec::new();
    let restarted = eventually(T, || {
        seen.extend(events.try_iter());
        seen.iter()
            .any(|e| matches!(e, SupervisorEvent::Started { child, pid } if child == "later" && *pid != later))
    });
    sup.shutdown().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    assert!(restarted, "{seen:?}");
    assert!(
        seen.iter().any(|e| matches!(
            e,
            SupervisorEvent::Exited { child, pid, exit } if child == "later" && *pid == later && !exit.normal
        )),
        "no Exited event for the sibling that crashed during the stop: {seen:?}"
    );
}

/// Notes a run in `log`, then returns 300 ms after `go` is set.
fn runs_after((log, go): (String, multiproc::Event)) {
    note(&log, "job", "run");
    go.wait();
    std::thread::sleep(Duration::from_millis(300));
}

/// A transient sibling that ends normally on its own while the supervisor stops the
/// others for a one-for-all restart (one that ignores `SIGTERM` holds the stop for its
/// grace) starts again with them, as OTP does: it may have ended because of the crash
/// the restart is for (a pipeline stage whose input closed), and done, it would leave
/// the restart short of it.
fn a_transient_sibling_that_finishes_during_a_stop_starts_again() {
    let dir = tempdir("finish_during_stop");
    let log = dir.join("log").to_string_lossy().into_owned();
    let go = multiproc::Event::new().unwrap();
    let sup = between_a_crash_and_a_slow_stop(
        &dir,
        &go,
        ChildSpec::new("job", runs_after, (log.clone(), go.clone())).restart(Restart::Transient),
        log.clone(),
    );
    let events = sup.events();
    let stubborn = pid_of(&sup, "stubborn").unwrap();
    go.set();
    // The children start again in order once the stop is over: "job" before
    // "stubborn".
    let mut seen = Vec::new();
    let restarted = eventually(T, || {
        seen.extend(events.try_iter());
        seen.iter().any(
            |e| matches!(e, SupervisorEvent::Started { child, pid } if child == "stubborn" && *pid != stubborn),
        )
    });
    // Its second run returns as the first did (`go` is set): done then.
    let done = eventually(T, || {
        sup.status()
            .into_iter()
            .any(|c| c.name == "job" && matches!(c.state, ChildState::Done))
    });
    sup.shutdown().unwrap();
    let runs = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| *l == "job run")
        .count();
    std::fs::remove_dir_all(dir).unwrap();
    assert!(restarted, "{seen:?}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, SupervisorEvent::Exited { child, exit, .. } if child == "job" && exit.normal)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, SupervisorEvent::Started { child, .. } if child == "job")),
        "the transient child was not started with the others: {seen:?}"
    );
    assert!(done);
    assert_eq!(runs, 2);
}

/// Notes a run in `log` and returns.
fn notes_a_run(log: String) {
    note(&log, "setup", "run");
}

/// One-for-all: a transient child that returned (done) before its sibling crashed
/// starts again with the others, as one that ends during the restart's stop does
/// (which of two ends close together the supervisor saw first was down to the
/// children's order): the children restart together to start in order.
fn a_done_sibling_starts_again_with_the_others() {
    let dir = tempdir("done_sibling");
    let log = dir.join("log").to_string_lossy().into_owned();
    let runs = || {
        std::fs::read_to_string(&log)
            .map(|s| s.lines().filter(|l| *l == "setup run").count())
            .unwrap_or(0)
    };
    let go = multiproc::Event::new().unwrap();
    let sup = fast()
        .strategy(Strategy::OneForAll)
        .child(ChildSpec::new("setup", notes_a_run, log.clone()).restart(Restart::Transient))
        .child(ChildSpec::new(
            "service",
            crash_on_once,
            (marker(&dir, "service"), go.clone()),
        ))
        .build()
        .unwrap();
    assert!(eventually(T, || sup.status()[0].state == ChildState::Done));
    assert_eq!(runs(), 1);
    let service = pid_of(&sup, "service").unwrap();
    go.set();
    assert!(eventually(T, || pid_of(&sup, "service").is_some_and(|p| p != service)));
    let again = eventually(T, || {
        runs() == 2 && sup.status()[0].state == ChildState::Done
    });
    let running = pid_of(&sup, "service").unwrap();
    stop_and_check_gone(sup, &[running]);
    std::fs::remove_dir_all(dir).unwrap();
    assert!(again, "the set-up child did not run again with its sibling");
}

/// The process's CPU time (all its threads), from `getrusage`.
fn process_cpu() -> Duration {
    // SAFETY: `getrusage` writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One-for-all, a first child that returns at once leaving a grandchild that ignores
/// `SIGTERM` (killed at the end of its 1 s grace), a second that sleeps: while the
/// first waits for its last run's group, the second waits behind it, due, and the
/// supervising thread looked at it without a pause (a CPU's worth of time). Prints the
/// CPU time the process used over 500 ms of that.
fn helper_held_restart_cpu() {
    let log = std::env::var("MARKER").unwrap();
    let sup = fast()
        .strategy(Strategy::OneForAll)
        .child(
            ChildSpec::new("leaver", leaves_grandchild, (log.clone(), true))
                .shutdown_grace(Duration::from_secs(1)),
        )
        .child(ChildSpec::new("sleeper", sleep_forever, ()))
        .build()
        .unwrap();
    assert!(eventually(T, || !pids_in(Path::new(&log)).is_empty()));
    // The first run has returned (its grandchild is logged first) and its restart waits.
    std::thread::sleep(Duration::from_millis(100));
    let before = process_cpu();
    std::thread::sleep(Duration::from_millis(500));
    let used = process_cpu() - before;
    println!("cpu {}", used.as_millis());
    sup.shutdown().unwrap();
}

/// See [`helper_held_restart_cpu`]: the supervisor waits for a lingering group without
/// spinning (it used about as much CPU as the time that passed).
fn a_restart_held_by_a_lingering_group_does_not_spin() {
    let dir = tempdir("held-cpu");
    let log = dir.join("grandchildren");
    std::fs::write(&log, b"").unwrap();
    let mut h = Helper::start_with(
        "held_restart_cpu",
        std::env::current_exe().unwrap(),
        &[("MARKER", log.to_str().unwrap())],
    );
    let ms: u64 = h.expect("cpu ", T).parse().unwrap();
    assert!(h.wait(T).success(), "{}", h.stderr_now());
    // The runs' groups are their own, not the helper's: what they left comes to this
    // process (a subreaper) once the helper's supervisor has killed them.
    let log = log.to_string_lossy().into_owned();
    for group in pids_in(Path::new(&format!("{log}.groups"))) {
        assert_eq!(
            common::settle_group(group, T),
            Vec::new(),
            "group {group} outlived its supervisor"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
    assert!(ms < 150, "{ms} ms of CPU in 500 ms of waiting");
}

/// `Duration::MAX` means "never": a grace that never ends (the stop waits for the
/// child, here one that ends on `SIGTERM`) and a wait without a timeout. Neither may
/// panic the supervisor (which left `shutdown` waiting for ever).
fn duration_max() {
    let sup = Supervisor::builder()
        .child(ChildSpec::new("plain", sleep_forever, ()).shutdown_grace(Duration::MAX))
        .build()
        .unwrap();
    let child = pid_of(&sup, "plain").unwrap();
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || done_tx.send(sup.shutdown()).unwrap());
    let stopped = done.recv_timeout(T).expect("shutdown never returned");
    assert!(stopped.is_ok(), "{stopped:?}");
    assert!(wait_gone(child, T));

    let sup = Supervisor::builder()
        .child(ChildSpec::new("once", returns, ()).restart(Restart::Temporary))
        .build()
        .unwrap();
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sup.wait_timeout(Duration::MAX).map_err(|e| e.to_string())
        }));
        done_tx
            .send(r.map_err(|_| "wait_timeout panicked"))
            .unwrap();
    });
    let waited = done.recv_timeout(T).expect("wait_timeout never returned");
    assert_eq!(waited, Ok(Ok(())));
}

/// Set by the test once the first start went through: the argument then refuses to be
/// encoded, so each restart fails to start.
static REFUSE_ENCODING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, serde::Deserialize)]
struct EncodesUntilTold(u64);

impl serde::Serialize for EncodesUntilTold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if REFUSE_ENCODING.load(std::sync::atomic::Ordering::SeqCst) {
            // Slowly, longer than the test's `reset_after`: a start that takes a while
            // to fail (a fork server that answers late) is not a run that lasted.
            std::thread::sleep(Duration::from_millis(80));
            return Err(serde::ser::Error::custom("told to refuse"));
        }
        s.serialize_u64(self.0)
    }
}

fn crash_after((ms,): (EncodesUntilTold,)) {
    crash_after_ms(ms.0);
}

/// A child that ran long enough to reset the backoff crashes, and then every restart
/// fails to start: each failed start counts as a child that failed at once, so the
/// delays grow (they stayed at the base, the old start time resetting them each time;
/// and, for a start that took longer to fail than `reset_after`, the time the start
/// began, read before it).
fn failed_restarts_back_off() {
    let ms = Duration::from_millis;
    let sup = Supervisor::builder()
        .backoff(ms(100), ms(5000))
        .jitter(Jitter::None)
        .reset_after(ms(50))
        .intensity(20, Duration::from_secs(60))
        .child(ChildSpec::new(
            "flaky",
            crash_after,
            (EncodesUntilTold(300),),
        ))
        .build()
        .unwrap();
    let events = sup.events();
    REFUSE_ENCODING.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut delays = Vec::new();
    while delays.len() < 4 {
        match events.recv_timeout(T).expect("an event") {
            SupervisorEvent::Restarting { after, .. } => {
                delays.push((after.as_secs_f64() * 1000.0).round() as u64);
            }
            SupervisorEvent::Started { .. } => panic!("a restart started despite its arguments"),
            _ => {}
        }
    }
    // Restarts that never started are not counted as done.
    let restarts = restarts_of(&sup, "flaky");
    sup.shutdown().unwrap();
    REFUSE_ENCODING.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(delays, [100, 200, 400, 800]);
    assert_eq!(restarts, 0);
}

/// Set by the test once the first start went through: cloning the argument (which a
/// restart does, on the supervising thread) then panics.
static PANIC_ON_CLONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(serde::Serialize, serde::Deserialize)]
struct ClonesUntilTold(u64);

impl Clone for ClonesUntilTold {
    fn clone(&self) -> Self {
        assert!(
            !PANIC_ON_CLONE.load(std::sync::atomic::Ordering::SeqCst),
            "told to panic"
        );
        ClonesUntilTold(self.0)
    }
}

fn crash_after_clonable(ms: ClonesUntilTold) {
    crash_after_ms(ms.0);
}

/// Arguments whose `Clone` panics.
#[derive(serde::Serialize, serde::Deserialize)]
struct PanicsWhenCloned;

impl Clone for PanicsWhenCloned {
    fn clone(&self) -> Self {
        panic!("cannot be cloned")
    }
}

fn never_runs(_: PanicsWhenCloned) {}

/// A panic in the user's code as `build` starts the children (the second child's
/// arguments cannot be cloned) fails the build, the first child stopped: it was left
/// running, with no supervisor.
fn a_panic_while_building_stops_the_children_started() {
    // Found by its name (a child's process is named after it).
    let name = "bpanic-first";
    let built = Supervisor::builder()
        .child(ChildSpec::new(name, sleep_forever, ()))
        .child(ChildSpec::new(
            "bpanic-second",
            never_runs,
            PanicsWhenCloned,
        ))
        .build();
    failed_on_a_clone_and_stopped(built.map(|_| ()), name);
}

/// `built` is the build's panic at a clone, and the child `name` was stopped.
fn failed_on_a_clone_and_stopped(built: Result<(), SupervisorError>, name: &str) {
    match built {
        Err(SupervisorError::Panicked(why)) => assert!(why.contains("cloned"), "{why}"),
        other => panic!("a build whose start panicked: {other:?}"),
    }
    // The listing must see processes at all (this one), or an empty one proves nothing.
    assert!(
        common::processes()
            .iter()
            .any(|p| p.0 == std::process::id()),
        "cannot list processes"
    );
    let running = || {
        common::processes()
            .into_iter()
            .filter(|p| p.3 == name && p.2 != 'Z')
            .map(|p| p.0)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(T, || running().is_empty()),
        "the first child outlived the failed build: {:?}",
        running()
    );
}

/// The stop of a failed build runs user code too (the second child's return value is
/// decoded as it stops, and that panics): the build still fails with its own error, not
/// a panic, and the first child, which the cut-short stop had not reached, is killed
/// (it ran on with no supervisor, and the panic escaped `build`).
fn a_panic_while_stopping_a_failed_build_kills_the_rest() {
    let name = "bstop-first";
    let built = std::panic::catch_unwind(|| {
        Supervisor::builder()
            .child(ChildSpec::new(name, sleep_forever, ()))
            .child(ChildSpec::new(
                "bstop-second",
                returns_undecodable_on_sigterm,
                (),
            ))
            .child(ChildSpec::new("bstop-third", never_runs, PanicsWhenCloned))
            .build()
            .map(|_| ())
    });
    let Ok(built) = built else {
        panic!("the build panicked")
    };
    failed_on_a_clone_and_stopped(built, name);
}

/// A panic on the supervising thread (a restart clones the child's arguments there):
/// the supervisor ends with it, having stopped every child, and waiters get it (they
/// waited for ever for the thread that was gone).
fn supervising_thread_panics() {
    let sup = Supervisor::builder()
        .child(ChildSpec::new("steady", sleep_forever, ()))
        .child(ChildSpec::new(
            "crashy",
            crash_after_clonable,
            ClonesUntilTold(100),
        ))
        .build()
        .unwrap();
    let steady = pid_of(&sup, "steady").unwrap();
    PANIC_ON_CLONE.store(true, std::sync::atomic::Ordering::SeqCst);
    let waited = sup.wait_timeout(T);
    PANIC_ON_CLONE.store(false, std::sync::atomic::Ordering::SeqCst);
    match &waited {
        Err(SupervisorError::Panicked(why)) => assert!(why.contains("told to panic"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(!sup.is_running());
    assert!(wait_gone(steady, T), "a child outlived its supervisor");
    assert!(matches!(sup.shutdown(), Err(SupervisorError::Panicked(_))));
}

/// Whether `p` ends within 2 s; killed (and reaped) if not, so that a failing test
/// leaves nothing behind.
fn gone_or_killed(p: u32) -> bool {
    let gone = wait_gone(p, Duration::from_secs(2));
    if !gone {
        common::kill_and_reap(p);
    }
    gone
}

fn supervisor_sigkilled() {
    let mut helper = Helper::start("supervisor");
    let pids = helper.expect_pids("children", T);
    assert_eq!(pids.len(), 3);
    let grandchild: u32 = helper
        .expect("grandchild", T)
        .trim_start_matches("grandchild ")
        .parse()
        .unwrap();
    let tree = helper.sigkill();
    for p in pids {
        assert!(
            wait_gone(p, Duration::from_secs(2)),
            "child {p} outlived its SIGKILLed supervisor"
        );
    }
    // What a child started in its process group goes with it.
    assert!(
        gone_or_killed(grandchild),
        "a child's own child outlived the SIGKILLed supervisor"
    );
    assert_eq!(
        common::reap_all(&tree, T),
        Vec::<u32>::new(),
        "left running"
    );
}

/// A child that ended, leaving a member of its process group that ignores `SIGTERM`
/// (the supervisor waits out the child's grace before it kills the group): a
/// supervisor's process SIGKILLed, or one that exits, meanwhile takes that member
/// along, as it does the group of a child still running (it outlived them: the fork
/// server killed the groups of its living children only, and the program's exit swept
/// those of children not yet joined).
fn an_ended_childs_group_goes_with_its_supervisors_process() {
    for mode in ["lingering", "lingering_exits"] {
        let mut helper = Helper::start(mode);
        let grandchild: u32 = helper
            .expect("grandchild", T)
            .trim_start_matches("grandchild ")
            .parse()
            .unwrap();
        let tree = if mode == "lingering" {
            helper.sigkill()
        } else {
            assert!(helper.wait(T).success());
            Vec::new()
        };
        let gone = gone_or_killed(grandchild);
        // Re-parented to this process (a subreaper) once its parent ended.
        common::reap(grandchild);
        assert!(
            gone,
            "{mode}: a member of an ended child's group outlived its supervisor's process"
        );
        assert_eq!(
            common::reap_all(&tree, T),
            Vec::<u32>::new(),
            "{mode}: left running"
        );
    }
}

/// A supervisor in a process that adopts orphans (a container's first process, a
/// subreaper) reaps the members of its children's groups that come to it as they are
/// killed: a child that restarts and leaves one each run left a zombie per run, which
/// nothing reaped, until the pids ran out.
fn a_supervisor_that_adopts_orphans_reaps_them() {
    let mut helper = Helper::start("zombies");
    let line = helper.expect("zombies", T);
    assert!(helper.wait(T).success(), "{}", helper.stderr_now());
    assert!(line.trim().starts_with("0 of "), "zombies left: {line}");
}

/// A program that exits (`std::process::exit`) with a supervisor running ends its
/// children, and what they started in their process groups.
fn supervisor_process_exits() {
    let mut helper = Helper::start("supervisor_exits");
    let pids = helper.expect_pids("pids", T);
    assert!(helper.wait(T).success());
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| !gone_or_killed(p))
        .collect();
    // The grandchild was re-parented to this process (a subreaper).
    for &p in &pids {
        common::reap(p);
    }
    assert!(
        left.is_empty(),
        "outlived the program: {left:?} of {pids:?}"
    );
}

fn bad_input() {
    assert!(matches!(
        Supervisor::builder().build(),
        Err(SupervisorError::InvalidArgument(_))
    ));
    assert!(matches!(
        Supervisor::builder()
            .child(ChildSpec::new("x", sleep_forever, ()))
            .child(ChildSpec::new("x", sleep_forever, ()))
            .build(),
        Err(SupervisorError::InvalidArgument(_))
    ));
    // A plain program cannot daemonize once `init` has run (this one has).
    assert!(matches!(
        daemonize(DaemonOptions::new()),
        Err(multiproc::DaemonError::AfterInit)
    ));
}

/// In a cgroup that allows it no more threads than it has (its fork server left
/// outside, so that children can still be forked): a supervisor whose thread cannot be
/// started fails, and no child it was to supervise is left running.
fn helper_thread_limited() {
    let cgroup = common::TestCgroup::of_helper();
    multiproc::spawn(|(): ()| (), ()).unwrap().join().unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    let tasks = std::fs::read_dir("/proc/self/task").unwrap().count();
    std::fs::write(cgroup.join("pids.max"), tasks.to_string()).unwrap();
    let built = Supervisor::builder()
        .child(ChildSpec::new("unwatched-a", sleep_forever, ()))
        .child(ChildSpec::new("unwatched-b", sleep_forever, ()))
        .build();
    match built {
        Err(e) => println!("refused: {e}"),
        Ok(_) => println!("refused: no, it started"),
    }
    println!(
        "left: {}",
        common::named("unwatched-a").len() + common::named("unwatched-b").len()
    );
}

fn no_thread_leaves_no_child() {
    let cgroup = common::TestCgroup::new("pids", "supthread");
    let mut h = Helper::start_for("thread_limited", &cgroup);
    let refused = h.expect("refused: ", T);
    assert!(refused.contains("supervisor thread"), "{refused}");
    assert_eq!(h.expect("left: ", T), "0", "{}", h.stderr_now());
    assert!(h.wait(T).success(), "{}", h.stderr_now());
}

/// The daemon helper, started in `dir`: daemonizes with a pid file named relative to
/// `dir` and `dir/work` as its working directory, then runs until `dir/stop` or
/// `dir/stop-PID` (its own pid) appears (or a minute passes), printing to its log.
fn daemon_main(dir: PathBuf) {
    let mut work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut out = dir.join("out.log");
    let failing = std::env::var(DAEMON_FAIL_ENV);
    match failing.as_deref() {
        Ok("working_dir") => work = dir.join("missing"),
        Ok("log") => out = dir.join("missing").join("out.log"),
        _ => {}
    }
    // SIGCHLD held pending, to wait for below.
    // SAFETY: plain calls on a local signal set; this process has one thread.
    let sigchld = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    };
    if failing.is_ok() {
        // The daemon that fails is an orphan by then (its parent, the first child, has
        // exited): held here, where it is reaped below, rather than by the test.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        // SAFETY: blocks SIGCHLD for this (only) thread; the set is initialised above.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &sigchld, std::ptr::null_mut()) };
    }
    // Left in stdout's buffer: written once, by the process that started the daemon.
    print!("starting: ");
    let daemon = match daemonize(
        DaemonOptions::new()
            .pidfile("pid")
            .stdout(out)
            .stderr(dir.join("err.log"))
            .working_dir(&work),
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("daemonize: {e}");
            // A daemon that failed after its fork ended as an orphan; it becomes this
            // process's child (the subreaper) a moment after its report, and the kernel
            // says so with a SIGCHLD (pending since it is blocked): waited for, for at
            // most 10 s, then reaped.
            if failing.as_deref() == Ok("working_dir") {
                let until = Instant::now() + Duration::from_secs(10);
                while !matches!(
                    rustix::process::wait(rustix::process::WaitOptions::NOHANG),
                    Ok(Some(_))
                ) {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let timeout = libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
                    };
                    // SAFETY: a blocked signal's set and a timeout, both initialised.
                    unsafe { libc::sigtimedwait(&sigchld, std::ptr::null_mut(), &timeout) };
                }
            }
            std::process::exit(3);
        }
    };
    let _guard = multiproc::init();
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let sid = rustix::process::getsid(None)
        .unwrap()
        .as_raw_nonzero()
        .get();
    let child = multiproc::spawn(returns, ()).unwrap().join().unwrap();
    println!(
        "daemon {me} session {sid} cwd {} child {child} pidfile {}",
        std::env::current_dir().unwrap().display(),
        daemon.pidfile().unwrap().display()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mine = dir.join(format!("stop-{me}"));
    while !dir.join("stop").exists() && !mine.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(daemon);
}

fn daemonize_pidfile() {
    let dir = tempdir("daemon");
    let start = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .env(DAEMON_ENV, &dir)
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let pidfile = dir.join("pid");
    // Starts a daemon that must start; the pid its pid file then names.
    let started = || {
        let out = start().wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "starting: ");
        std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let pid = started();
    let cleanup = KillOnDrop(pid);
    assert!(eventually(T, || std::fs::read_to_string(
        dir.join("out.log")
    )
    .is_ok_and(|s| s.contains("daemon"))));
    let log = std::fs::read_to_string(dir.join("out.log")).unwrap();
    // What the starting process left unwritten is not written again by the daemon.
    assert!(
        log.starts_with(&format!("daemon {pid} session ")) && log.contains("child 1"),
        "{log}"
    );
    // A new session, not led by the daemon (it can never get a terminal back).
    let sid: u32 = log.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_ne!(sid, pid);
    assert!(
        log.contains(&format!("cwd {}", dir.join("work").display())),
        "{log}"
    );
    // The pid file's name was relative to where the daemon was started, not to its
    // working directory.
    assert!(
        log.contains(&format!("pidfile {}", pidfile.display())),
        "{log}"
    );
    // A second copy is refused, and says who runs.
    let second = start().wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(3));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("already running") && err.contains(&pid.to_string()),
        "{err}"
    );
    // Told to stop, the daemon ends and removes its pid file.
    std::fs::write(dir.join("stop"), b"").unwrap();
    assert!(wait_gone(pid, T));
    common::reap(pid);
    std::mem::forget(cleanup);
    assert!(!pidfile.exists());
    std::fs::remove_file(dir.join("stop")).unwrap();

    // A daemon SIGKILLed leaves its pid file behind, stale: its lock died with it, so the
    // next start takes the file over.
    let killed = started();
    let cleanup = KillOnDrop(killed);
    let tree = common::descendants_of(killed);
    // Its fork server's spare child may be forked after that look: it is in the
    // daemon's process group, which is settled below.
    let group = rustix::process::getpgid(rustix::process::Pid::from_raw(killed as i32))
        .unwrap()
        .as_raw_nonzero()
        .get() as u32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(killed as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(wait_gone(killed, T));
    common::reap(killed);
    std::mem::forget(cleanup);
    assert_eq!(common::reap_all(&tree, T), Vec::<u32>::new());
    assert_eq!(common::settle_group(group, T), Vec::new(), "left running");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        killed.to_string(),
        "the killed daemon's pid file stays"
    );
    let new = started();
    let cleanup = KillOnDrop(new);
    assert_ne!(new, killed);

    // Its pid file removed while it runs (an init script's `rm`), a second daemon starts
    // and makes its own; the first, ending, leaves the second's alone (it removed the
    // file by name, and the second ran on without one).
    std::fs::remove_file(&pidfile).unwrap();
    let second = started();
    let second_cleanup = KillOnDrop(second);
    assert_ne!(second, new);
    std::fs::write(dir.join(format!("stop-{new}")), b"").unwrap();
    assert!(wait_gone(new, T));
    common::reap(new);
    std::mem::forget(cleanup);
    assert_eq!(
        std::fs::read_to_string(&pidfile)
            .ok()
            .as_deref()
            .map(str::trim),
        Some(second.to_string().as_str()),
        "the first daemon removed the second's pid file"
    );
    std::fs::write(dir.join("stop"), b"").unwrap();
    assert!(wait_gone(second, T));
    common::reap(second);
    std::mem::forget(second_cleanup);
    assert!(!pidfile.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// A daemon whose set-up fails (before its fork: a log it cannot open; in the daemon: a
/// working directory that does not exist) reports why, and leaves no pid file (it was
/// left behind, empty, for a script to read as a pid).
fn a_failed_daemonize_leaves_no_pid_file() {
    let dir = tempdir("daemonfail");
    for (step, said) in [
        ("log", "open the stdout file"),
        ("working_dir", "change directory"),
    ] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(DAEMON_ENV, &dir)
            .env(DAEMON_FAIL_ENV, step)
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{step}: {err}");
        assert!(err.contains(said), "{step}: {err}");
        assert!(!dir.join("pid").exists(), "{step}: the pid file was left");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Kills a daemon left running by a failed test.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        common::kill_and_reap(self.0);
    }
}
