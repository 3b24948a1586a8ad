//! Support for the multi-process test binaries (`harness = false`).
//!
//! Each binary's `main` calls `multiproc::init()` first, so children re-executed from it
//! never reach libtest's argument parsing. The same binary doubles as a helper program:
//! with `MULTIPROC_TEST_HELPER=<mode>` it runs that mode instead of the tests, which is how
//! a test gets a parent process it can SIGKILL or watch exit.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};

pub const HELPER_ENV: &str = "MULTIPROC_TEST_HELPER";
/// With this set to a file, every run of a test binary's `main` appends `pre PID` before
/// `init()` and `post PID` after it: a process multiproc started must add nothing.
pub const MAIN_MARKER_ENV: &str = "MULTIPROC_TEST_MAIN_MARKER";

/// With this set, `main` writes its value before `init()`, unflushed, through Rust's
/// stdout (`rust:VALUE `) and C's (`c:VALUE `): it must come out once, however many
/// children the program starts.
pub const PRINT_BEFORE_INIT_ENV: &str = "MULTIPROC_TEST_PRINT_BEFORE_INIT";

/// Writes `text` as [`PRINT_BEFORE_INIT_ENV`] says, without flushing either stream.
#[allow(unsafe_code)]
fn print_unflushed(text: &str) {
    print!("rust:{text} ");
    let c = std::ffi::CString::new(format!("c:{text} ")).expect("no NUL in the text");
    // SAFETY: a format of one `%s`, given a NUL-terminated string that outlives the call.
    unsafe {
        libc::printf(c"%s".as_ptr(), c.as_ptr());
    }
}

/// With this set, `main` installs, before `init()`, a `SIGTERM` handler with
/// `SA_SIGINFO` (as signal-hook installs its handlers) that notes who sent the signal:
/// see [`term_sender`].
pub const SIGINFO_TERM_ENV: &str = "MULTIPROC_TEST_SIGINFO_TERM";

/// The pid that sent this process `SIGTERM`, as the handler [`SIGINFO_TERM_ENV`]
/// installs read it from its `siginfo_t` (0: none came yet).
pub fn term_sender() -> i32 {
    TERM_SENDER.load(std::sync::atomic::Ordering::SeqCst)
}

static TERM_SENDER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

#[allow(unsafe_code)]
extern "C" fn note_term_sender(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: with `SA_SIGINFO` the kernel passes a `siginfo_t` it filled in.
    let pid = unsafe { (*info).si_pid() };
    // Never 0 (a sender read as none would look like no signal at all).
    let pid = if pid == 0 { -1 } else { pid };
    TERM_SENDER.store(pid, std::sync::atomic::Ordering::SeqCst);
}

#[allow(unsafe_code)]
fn install_siginfo_term_handler() {
    // SAFETY: the handler only reads its `siginfo_t` and stores to an atomic; `action`
    // is zeroed and its mask emptied before `sigaction` reads it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = note_term_sender
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Handles `SIGINT` (Ctrl-C) as a program that decides what it means does: it notes
/// it, for [`interrupted`].
#[allow(unsafe_code)]
pub fn handle_ctrl_c() {
    let handler: extern "C" fn(libc::c_int) = note_interrupt;
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

/// Whether a `SIGINT` came since [`handle_ctrl_c`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Appends `what PID` to the main marker file, if one is set.
pub fn mark_main(what: &str) {
    if let Some(path) = std::env::var_os(MAIN_MARKER_ENV) {
        let line = format!("{what} {}\n", std::process::id());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("open the main marker");
        // One write of one short line with O_APPEND: lines from processes never mix.
        file.write_all(line.as_bytes())
            .expect("write the main marker");
    }
}

/// Runs the tests, or the helper mode this process was started for. Aborts the whole
/// binary if it runs for longer than `limit`: every wait in the tests has its own
/// timeout, this is the net under them.
pub fn main(tests: Vec<libtest_mimic::Trial>, helpers: fn(&str), limit: Duration) {
    main_checked(tests, helpers, limit, || Box::new(|| Ok(())));
}

/// A check of the whole run, made after every test and child is done.
pub type AfterCheck = Box<dyn FnOnce() -> Result<(), String>>;

/// As [`main`], with a check of the whole run: `before` runs once before the tests (in
/// the test process only) and returns the check to run after them all, once every
/// child is gone.
pub fn main_checked(
    tests: Vec<libtest_mimic::Trial>,
    helpers: fn(&str),
    limit: Duration,
    before: fn() -> AfterCheck,
) {
    mark_main("pre");
    if let Ok(text) = std::env::var(PRINT_BEFORE_INIT_ENV) {
        print_unflushed(&text);
    }
    if std::env::var_os(SIGINFO_TERM_ENV).is_some() {
        install_siginfo_term_handler();
    }
    let _guard = multiproc::init_with(setup);
    mark_main("post");
    if let Ok(mode) = std::env::var(HELPER_ENV) {
        helpers(&mode);
        return;
    }
    // Orphans of helper processes that a test kills come to this process, which reaps
    // them by pid; without this they would go to whatever init the machine runs.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("test binary exceeded {limit:?}; aborting");
        std::process::abort();
    });
    let args = libtest_mimic::Arguments::from_args();
    let after = before();
    let conclusion = libtest_mimic::run(&args, tests);
    // A test that failed half-way may leave children running that would keep the exit's
    // join waiting forever: stop them and say so.
    let left = multiproc::active_children();
    for child in &left {
        eprintln!("left running: pid {} ({})", child.pid(), child.name());
        let _ = child.kill();
    }
    drop(_guard);
    remove_tempdirs();
    if !left.is_empty() && !args.list {
        std::process::exit(101);
    }
    if !sweep() && !args.list {
        eprintln!("processes were left behind (see above)");
        std::process::exit(101);
    }
    if let Err(e) = after() {
        eprintln!("{e}");
        std::process::exit(101);
    }
    conclusion.exit();
}

/// After every test has finished and the guard has stopped this process's fork server,
/// nothing should be left under this process. Anything there is a leak (an orphan that a
/// test's helper left, re-parented here): report it, kill it, reap it.
fn sweep() -> bool {
    let me = std::process::id();
    let left = children_of(me);
    for (p, state, comm) in &left {
        // A zombie is a child nobody reaped: one of multiproc's own (a fork server, a
        // `spawn_fork` child) that it forgot, or an orphan a test made and did not reap.
        // Either way the run left something behind.
        eprintln!("left behind: pid {p} ({comm}), state {state}");
        kill_and_reap(*p);
    }
    left.is_empty()
}

/// Runs in every process, children included: with `MP_TEST_LOGGING` set (which children
/// inherit), logs `{process name}: {message}` to stderr.
fn setup() {
    match std::env::var("MP_TEST_LOGGING").as_deref() {
        Ok("trace") => {
            // Every event, multiproc's own included, goes through the formatter that
            // asks for the current process's name.
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .event_format(multiproc::log::ProcessName)
                .init();
        }
        Ok(_) => multiproc::log::init(),
        Err(_) => {}
    }
}

/// The check that fails a run which left anything new in `/dev/shm` (for
/// [`main_checked`]).
pub fn no_new_dev_shm() -> AfterCheck {
    let before = dev_shm();
    Box::new(move || {
        let after = dev_shm();
        let new: Vec<_> = after.difference(&before).collect();
        if new.is_empty() {
            Ok(())
        } else {
            Err(format!("left in /dev/shm: {new:?}"))
        }
    })
}

/// A list through `Box`: one level of nesting per link, decoded so.
#[derive(Debug, serde::Deserialize)]
pub enum Chain {
    End,
    Link(Box<Chain>),
}

impl Chain {
    /// A chain of `links` links.
    pub fn of(links: usize) -> Chain {
        (0..links).fold(Chain::End, |c, _| Chain::Link(Box::new(c)))
    }

    /// Its links.
    pub fn links(mut self) -> usize {
        let mut n = 0;
        while let Chain::Link(inner) = self {
            self = *inner;
            n += 1;
        }
        n
    }
}

/// Written flat, as a broken or hostile sender could write it: the bytes of the nested
/// enums (a variant index per link, 1, then 0 for the end) as the elements of one
/// tuple, so that the sender's own check of how deep a value nests lets it through, and
/// the receiver's decoder is what meets the depth.
impl serde::Serialize for Chain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut links = 0;
        let mut at = self;
        while let Chain::Link(inner) = at {
            links += 1;
            at = inner;
        }
        let mut t = s.serialize_tuple(links + 1)?;
        for _ in 0..links {
            t.serialize_element(&1u8)?;
        }
        t.serialize_element(&0u8)?;
        t.end()
    }
}

/// A value whose `Serialize` always fails (its `Deserialize` works).
#[derive(Debug)]
pub struct Unserializable;

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be serialized",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unserializable)
    }
}

/// Turns a `fn()` into a trial.
pub fn trial(name: &'static str, f: fn()) -> libtest_mimic::Trial {
    libtest_mimic::Trial::test(name, move || {
        std::panic::catch_unwind(f).map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            msg.into()
        })
    })
}

/// The lines `rx` gets until its sender is gone, waiting at most `timeout` in all.
fn to_end(rx: &mpsc::Receiver<String>, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out.push(line);
    }
    out
}

/// A helper process: this test binary in a helper mode, stdout and stderr captured line
/// by line.
pub struct Helper {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

impl Helper {
    pub fn start(mode: &str) -> Helper {
        Helper::start_with(mode, std::env::current_exe().unwrap(), &[])
    }

    /// A helper that counts its own mappings before and after some work: with one
    /// malloc arena, so that a thread that happens to find the arenas busy does not add
    /// one (two mappings that stay for the life of the process, and are no leak).
    pub fn start_counting_mappings(mode: &str) -> Helper {
        Helper::start_with(
            mode,
            std::env::current_exe().unwrap(),
            &[("MALLOC_ARENA_MAX", "1")],
        )
    }

    pub fn start_with(mode: &str, exe: std::path::PathBuf, env: &[(&str, &str)]) -> Helper {
        Helper::start_command(mode, Command::new(exe), env)
    }

    /// A helper told (in `MP_TEST_CGROUP`) of `cgroup`, to move itself or its processes
    /// into: see [`TestCgroup::of_helper`].
    pub fn start_for(mode: &str, cgroup: &TestCgroup) -> Helper {
        Helper::start_with(
            mode,
            std::env::current_exe().unwrap(),
            &[(CGROUP_ENV, cgroup.path.to_str().unwrap())],
        )
    }

    /// A helper started by `command` (which runs this test binary in the end: through
    /// `ip netns exec`, say).
    pub fn start_command(mode: &str, mut command: Command, env: &[(&str, &str)]) -> Helper {
        // A process group of its own: whatever it starts can be found (and reaped, as
        // this process is a subreaper) even after it is gone.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
            .env(HELPER_ENV, mode)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A freshly copied executable can be briefly busy (`ETXTBSY`): another thread's
        // fork may hold a copy of the descriptor it was written through until its exec.
        let mut tries = 0;
        let mut child = loop {
            match command.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("start helper"),
            }
        };
        let lines = forward(child.stdout.take().unwrap());
        let errors = forward(child.stderr.take().unwrap());
        Helper {
            child,
            lines,
            errors,
        }
    }

    /// The next line of stdout, within `timeout`.
    pub fn line(&self, timeout: Duration) -> String {
        self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "no line from helper within {timeout:?}: {e}; stderr: {}",
                self.stderr_now()
            )
        })
    }

    /// The next line of stdout that starts with `prefix`, as the rest of the line.
    pub fn expect(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left);
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    /// The pids on the next line that starts with `prefix`, separated by whitespace.
    pub fn expect_pids(&self, prefix: &str, timeout: Duration) -> Vec<u32> {
        self.expect(prefix, timeout)
            .split_whitespace()
            .map(|p| p.parse().expect("a pid"))
            .collect()
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Everything written to stderr so far.
    pub fn stderr_now(&self) -> String {
        self.errors.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Everything left on stderr once the helper has closed it (it exited), waiting at
    /// most `timeout` for the end.
    pub fn stderr_to_end(&self, timeout: Duration) -> String {
        to_end(&self.errors, timeout).join("\n")
    }

    /// All remaining stdout lines after the helper exits.
    pub fn rest(&self, timeout: Duration) -> Vec<String> {
        to_end(&self.lines, timeout)
    }

    /// Waits for the helper to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id();
        assert!(
            wait_gone(pid, timeout),
            "helper {pid} still running after {timeout:?}"
        );
        let status = self.child.wait().unwrap();
        // What it left that has ended (its fork server's spare, say) came to this
        // process: reap it now. What still runs is the test's to judge.
        for (p, state, _) in group_members(pid) {
            if state == 'Z' {
                reap(p);
            }
        }
        status
    }
}

impl Helper {
    /// SIGKILLs the helper and reaps it; returns what it had started (its descendants,
    /// listed just before the kill), which this process (a subreaper) must reap: see
    /// [`reap_all`].
    pub fn sigkill(&mut self) -> Vec<u32> {
        let tree = descendants_of(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        tree
    }

    /// Sends `SIGINT` to the helper's whole process group (it leads one of its own), as
    /// a terminal's Ctrl-C does to its foreground group.
    pub fn ctrl_c(&self) {
        let group = Pid::from_raw(self.child.id() as i32).expect("a helper's pid");
        rustix::process::kill_process_group(group, Signal::INT).expect("SIGINT to the group");
    }

    /// [`sigkill`](Self::sigkill), then [`reap_all`] of what the helper started.
    pub fn kill_tree(&mut self, timeout: Duration) -> Vec<u32> {
        let tree = self.sigkill();
        reap_all(&tree, timeout)
    }
}

/// Waits for each of `pids` to end on its own (what multiproc promises of daemon
/// children; at most `timeout` in all, then they are killed) and reaps them: orphans
/// come to this process, a subreaper. Returns those that had to be killed.
pub fn reap_all(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    let mut killed = Vec::new();
    for &p in pids {
        if !wait_gone(p, deadline.saturating_duration_since(Instant::now())) {
            killed.push(p);
            let _ = rustix::process::kill_process(pid(p), Signal::KILL);
            wait_gone(p, Duration::from_secs(5));
        }
        reap(p);
    }
    killed
}

impl Drop for Helper {
    /// Kills the helper and everything it started (its process group), and reaps them
    /// all: the helper's orphans are re-parented to this process (a subreaper), so
    /// nothing is left behind even when a test fails half-way.
    fn drop(&mut self) {
        // The group's id is the helper's pid; while any member lives, no other process
        // or group can get it.
        let group = self.child.id();
        // Descendants outside the group (a segment tracker leads a session of its own)
        // end on their own once the helper is gone; held by pidfd, so that a pid reused
        // meanwhile is never mistaken for one of them.
        let below = descendants_of(group);
        let outside: Vec<_> = stats()
            .into_iter()
            .filter(|s| s.pgrp != group && below.contains(&s.pid))
            .filter_map(|s| rustix::process::pidfd_open(pid(s.pid), PidfdFlags::empty()).ok())
            .collect();
        let _ = rustix::process::kill_process_group(pid(group), Signal::KILL);
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        settle_group(group, Duration::from_secs(10));
        for fd in outside {
            if !pidfd_exited(&fd, Duration::from_secs(10)) {
                let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
                pidfd_exited(&fd, Duration::from_secs(5));
            }
            // Reaped here if it became this process's child (a subreaper's).
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(fd.as_fd()),
                rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
            );
        }
    }
}

/// Waits until no process of `group` is left, zombies included, reaping those
/// re-parented to this process (a subreaper); after `timeout`, kills the rest and
/// returns what was left alive.
pub fn settle_group(group: u32, timeout: Duration) -> Vec<(u32, char, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let members = group_members(group);
        for (p, state, _) in &members {
            if *state == 'Z' {
                reap(*p);
            }
        }
        // Done when nothing of the group is left, zombies included: a zombie that could
        // not be reaped yet (it became this process's child a moment later) is reaped on
        // the next look.
        if group_members(group).is_empty() {
            return Vec::new();
        }
        let alive: Vec<_> = members.into_iter().filter(|(_, s, _)| *s != 'Z').collect();
        if Instant::now() >= deadline {
            for (p, ..) in &alive {
                kill_and_reap(*p);
            }
            return alive;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn forward(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn pid(p: u32) -> Pid {
    Pid::from_raw(p as i32).unwrap()
}

/// Waits until process `p` has exited (it may remain a zombie), at most `timeout`.
/// True if it is gone.
/// Only "no such process" means gone: any other failure to look (out of descriptors,
/// not permitted) fails the test rather than passing it unchecked.
pub fn wait_gone(p: u32, timeout: Duration) -> bool {
    let fd = match rustix::process::pidfd_open(pid(p), PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return true,
        Err(e) => panic!("cannot watch process {p}: pidfd_open: {e}"),
    };
    pidfd_exited(&fd, timeout)
}

/// Waits until the process a pidfd refers to has exited, at most `timeout`.
fn pidfd_exited(fd: &std::os::fd::OwnedFd, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let t = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    loop {
        match poll(&mut fds, Some(&t)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Reaps `p` if it has become a (zombie) child of this process, for example an orphan of
/// a killed helper.
pub fn reap(p: u32) {
    let _ = rustix::process::waitpid(Some(pid(p)), WaitOptions::NOHANG);
}

/// Sends SIGKILL to `p`, a process this test started (directly or not).
pub fn sigkill(p: u32) {
    let _ = rustix::process::kill_process(pid(p), Signal::KILL);
}

/// Kills `p` (if it still exists) and reaps it if it is ours.
pub fn kill_and_reap(p: u32) {
    sigkill(p);
    wait_gone(p, Duration::from_secs(5));
    reap(p);
}

/// One process as `/proc/PID/stat` shows it.
struct Stat {
    pid: u32,
    ppid: u32,
    pgrp: u32,
    state: char,
    comm: String,
}

/// Every process. Panics if `/proc` cannot be read: a check that cannot look must not
/// pass.
fn stats() -> Vec<Stat> {
    let dir = std::fs::read_dir("/proc").expect("read /proc");
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and this read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            panic!("unexpected /proc/{pid}/stat: {stat}");
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let mut field = || {
            rest.next()
                .unwrap_or_else(|| panic!("short /proc/{pid}/stat"))
        };
        let state = field().chars().next().unwrap_or('?');
        if state == 'X' {
            // Dead, being reaped this instant: its parent and group read 0 and -1.
            continue;
        }
        let mut number = |what: &str| {
            let f = field();
            f.parse::<i64>()
                .unwrap_or_else(|e| panic!("{what} {f:?} in /proc/{pid}/stat {stat:?}: {e}"))
        };
        let ppid = number("ppid");
        let pgrp = number("pgrp");
        let (Ok(ppid), Ok(pgrp)) = (u32::try_from(ppid), u32::try_from(pgrp)) else {
            // A zombie released this instant (its ids already detached) can still read
            // `Z` with parent 0 and group -1: gone, as an `X` is.
            continue;
        };
        out.push(Stat {
            pid,
            ppid,
            pgrp,
            state,
            comm: stat[open + 1..close].to_string(),
        });
    }
    out
}

/// `(pid, parent pid, state, command name)` of every process.
pub fn processes() -> Vec<(u32, u32, char, String)> {
    stats()
        .into_iter()
        .map(|s| (s.pid, s.ppid, s.state, s.comm))
        .collect()
}

/// The state letter of process `pid` (`/proc/PID/stat`): `T` when stopped, `Z` when a
/// zombie. Panics if it cannot be read.
pub fn state_of(pid: u32) -> char {
    stats()
        .into_iter()
        .find(|s| s.pid == pid)
        .unwrap_or_else(|| panic!("no process {pid}"))
        .state
}

/// Whether process `pid`'s main thread is asleep in the kernel where `/proc/PID/wchan`
/// names a function containing `place`: `"futex"` for a lock, a semaphore, an event,
/// a condition or a barrier (`futex_do_wait` or `futex_wait_queue`, by kernel),
/// `"poll"` for a channel's receiver or sender waiting on its doorbell. Panics if it
/// cannot look.
pub fn asleep_in(pid: u32, place: &str) -> bool {
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/wchan: {e}"));
    wchan.contains(place) && state_of(pid) == 'S'
}

/// [`asleep_in`] a futex.
pub fn asleep_on_futex(pid: u32) -> bool {
    asleep_in(pid, "futex")
}

/// `(pid, state, command name)` of every process in process group `group`, zombies
/// included.
pub fn group_members(group: u32) -> Vec<(u32, char, String)> {
    stats()
        .into_iter()
        .filter(|s| s.pgrp == group)
        .map(|s| (s.pid, s.state, s.comm))
        .collect()
}

/// Every process below `root` (children, grandchildren, ...).
pub fn descendants_of(root: u32) -> Vec<u32> {
    let all = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            all.iter()
                .filter(|(_, ppid, ..)| *ppid == parent)
                .map(|(p, ..)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Stops (`SIGSTOP`) or continues (`SIGCONT`) process `pid`, and waits (a minute at
/// most) until its state says it took effect.
pub fn stop_or_continue(pid: u32, stop: bool) {
    let signal = if stop { Signal::STOP } else { Signal::CONT };
    rustix::process::kill_process(self::pid(pid), signal).expect("signal");
    assert!(
        eventually(Duration::from_secs(60), || (state_of(pid) == 'T') == stop),
        "process {pid} did not {}",
        if stop { "stop" } else { "continue" }
    );
}

/// Stops (`SIGSTOP`) process `pid` until the guard is dropped (a failed assertion
/// included), which continues it.
pub fn stopped(pid: u32) -> Stopped {
    stop_or_continue(pid, true);
    Stopped(pid)
}

/// See [`stopped`].
pub struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // Never a panic here (it may run as a failed assertion unwinds): a process that
        // cannot be continued has gone.
        let _ = rustix::process::kill_process(pid(self.0), Signal::CONT);
        let _ = eventually(Duration::from_secs(60), || {
            processes()
                .iter()
                .find(|(p, ..)| *p == self.0)
                .is_none_or(|(_, _, state, _)| *state != 'T')
        });
    }
}

/// Processes with this command name (as `ps` shows it, at most 15 bytes).
pub fn named(name: &str) -> Vec<u32> {
    let name: String = name.chars().take(15).collect();
    processes()
        .into_iter()
        .filter(|(_, _, state, comm)| *comm == name && *state != 'Z')
        .map(|(p, ..)| p)
        .collect()
}

/// Children (zombies included) of `parent`.
pub fn children_of(parent: u32) -> Vec<(u32, char, String)> {
    processes()
        .into_iter()
        .filter(|(_, ppid, ..)| *ppid == parent)
        .map(|(p, _, state, comm)| (p, state, comm))
        .collect()
}

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    fds_of(std::process::id())
}

/// Open descriptors of process `pid` (of this process, less the one reading the list).
/// Panics if they cannot be read.
pub fn fds_of(pid: u32) -> usize {
    let n = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count();
    if pid == std::process::id() { n - 1 } else { n }
}

/// A count that has stopped moving (`count` gave the same three times, 50 ms apart;
/// at most 5 s): a baseline of descriptors or threads taken while a connection's
/// thread in another process is still starting would be one short.
pub fn settled(count: impl Fn() -> usize) -> usize {
    let mut last = count();
    let mut same = 0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        let now = count();
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if same == 2 {
            break;
        }
    }
    last
}

/// The fork server of this process (the child named `mp-forkserver`).
pub fn fork_server_of(parent: u32) -> Option<u32> {
    children_of(parent)
        .into_iter()
        .find(|(_, state, comm)| comm == "mp-forkserver" && *state != 'Z')
        .map(|(p, ..)| p)
}

/// Mappings of this process (lines of `/proc/self/maps`).
pub fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// The names in `/dev/shm`.
pub fn dev_shm() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .expect("read /dev/shm: a leak check that cannot look must not pass")
        .map(|e| {
            e.expect("read /dev/shm")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Whether `/dev/shm/<name>` exists.
pub fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

/// The value behind `arc` once every other handle of it is gone, waited for (a minute
/// at most): a callback that held one drops it only as it ends, a moment after it has
/// said it ran.
#[allow(dead_code)]
pub fn sole<T>(arc: std::sync::Arc<T>) -> T {
    assert!(
        eventually(Duration::from_secs(60), || std::sync::Arc::strong_count(
            &arc
        ) == 1),
        "another handle is still held"
    );
    std::sync::Arc::into_inner(arc).expect("the only handle")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory under the system's temporary directory, unique to this process and
/// call; `tag` says which test made it.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "multiproc-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes the temporary directories this process made ([`tempdir`]) that are still
/// there: a test that failed half-way did not get to remove its own.
fn remove_tempdirs() {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // `multiproc-test-{tag}-{pid}-{n}`; a tag may hold dashes.
        let pid = name.rsplit('-').nth(1);
        if name.starts_with("multiproc-test-") && pid == Some(me.as_str()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A cgroup made for a test under this process's own cgroup of one controller (`pids`,
/// `memory`), on a cgroup v1 hierarchy of its own or the v2 unified one; removed when
/// dropped, once the processes in it are gone. Making one needs the right to write to
/// the cgroup tree (root, or a delegated subtree): without it the test fails and says
/// so, it does not skip.
pub struct TestCgroup {
    pub path: std::path::PathBuf,
    pub v2: bool,
}

impl TestCgroup {
    pub fn new(controller: &str, tag: &str) -> TestCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let mut tried = Vec::new();
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, list, path) = (
                parts.next(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            let path = path.trim_start_matches('/');
            let (base, v2) = if list.split(',').any(|c| c == controller) {
                (
                    std::path::Path::new("/sys/fs/cgroup")
                        .join(controller)
                        .join(path),
                    false,
                )
            } else if list.is_empty() {
                let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                    .into_iter()
                    .map(std::path::Path::new)
                    .find(|p| p.join("cgroup.controllers").exists());
                let Some(root) = unified else { continue };
                let controllers =
                    std::fs::read_to_string(root.join(path).join("cgroup.controllers"))
                        .unwrap_or_default();
                if !controllers.split_whitespace().any(|c| c == controller) {
                    tried.push(format!(
                        "v2 at {}: no {controller} controller",
                        root.display()
                    ));
                    continue;
                }
                (root.join(path), true)
            } else {
                continue;
            };
            let dir = base.join(format!("mp-test-{tag}-{}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return TestCgroup { path: dir, v2 },
                Err(e) => tried.push(format!("{}: {e}", dir.display())),
            }
        }
        panic!(
            "this test needs a {controller} cgroup it may create (run the tests as root, or \
             in a delegated cgroup subtree); tried: {tried:?}"
        );
    }

    /// Writes `value` to the cgroup's file `name`.
    pub fn set(&self, name: &str, value: &str) {
        std::fs::write(self.path.join(name), value)
            .unwrap_or_else(|e| panic!("write {value} to {}/{name}: {e}", self.path.display()));
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: u32) {
        self.set("cgroup.procs", &pid.to_string());
    }

    /// In a helper started by [`Helper::start_for`]: the cgroup it was told of.
    pub fn of_helper() -> std::path::PathBuf {
        std::path::PathBuf::from(std::env::var(CGROUP_ENV).expect(CGROUP_ENV))
    }
}

/// Where [`Helper::start_for`] names the cgroup.
const CGROUP_ENV: &str = "MP_TEST_CGROUP";

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The processes that were in it must be gone (or moved) first.
        let _ = eventually(Duration::from_secs(10), || {
            std::fs::remove_dir(&self.path).is_ok()
        });
    }
}

/// A network namespace made for a test, linked to this one by a veth pair: this side is
/// `host`, the namespace's side `inside`. Cutting the link (setting this side down)
/// makes a partition: nothing passes either way, and nothing says so. Deleted when
/// dropped. Making one needs `CAP_NET_ADMIN` and iproute2 (`ip`): without them the test
/// fails and says so, it does not skip.
pub struct TestNetns {
    pub name: String,
    host_link: String,
    pub host: std::net::Ipv4Addr,
    pub inside: std::net::Ipv4Addr,
}

impl TestNetns {
    pub fn new() -> TestNetns {
        let pid = std::process::id();
        // Unique among test binaries running at once on this machine: names and
        // addresses come from the pid.
        let name = format!("mpt{pid}");
        let net = [10, 100 + ((pid >> 8) % 150) as u8, (pid % 256) as u8];
        let ns = TestNetns {
            host_link: format!("mpt{pid}h"),
            host: std::net::Ipv4Addr::new(net[0], net[1], net[2], 1),
            inside: std::net::Ipv4Addr::new(net[0], net[1], net[2], 2),
            name,
        };
        let inside_link = format!("mpt{pid}n");
        let (host, inside) = (format!("{}/24", ns.host), format!("{}/24", ns.inside));
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns.name],
            &[
                "link",
                "add",
                &ns.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &inside_link,
            ],
            &["link", "set", &inside_link, "netns", &ns.name],
            &["addr", "add", &host, "dev", &ns.host_link],
            &["link", "set", &ns.host_link, "up"],
            &[
                "netns",
                "exec",
                &ns.name,
                "ip",
                "addr",
                "add",
                &inside,
                "dev",
                &inside_link,
            ],
            &[
                "netns",
                "exec",
                &ns.name,
                "ip",
                "link",
                "set",
                &inside_link,
                "up",
            ],
            &["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                panic!(
                    "this test needs a network namespace it may create (root, or \
                     CAP_NET_ADMIN, and iproute2 installed: apt-get install iproute2): \
                     `ip {}` failed: {e}",
                    step.join(" ")
                );
            }
        }
        ns
    }

    /// A command that runs `exe` inside the namespace.
    pub fn command(&self, exe: std::path::PathBuf) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(exe);
        c
    }

    /// Cuts the link: a partition.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]).expect("cut the link");
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; the namespace goes last.
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip ARGS`; an error says why it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether network namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/var/run/netns").join(name).exists()
}

/// Lowers this process's descriptor limit to at most 256 and opens `/dev/null` until no
/// descriptor is left: what a process that leaked every descriptor it may have meets.
/// The descriptors opened are returned (dropping them frees them).
#[allow(dead_code, unsafe_code)]
pub fn use_up_descriptors() -> Vec<std::fs::File> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(256);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let mut open = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        open.push(f);
    }
    assert!(!open.is_empty(), "no descriptor could be opened at all");
    open
}

/// What names a resource limit in `getrlimit` (glibc has a type of its own).
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// One of this process's soft resource limits set to a value, until dropped.
#[allow(dead_code)]
pub struct SoftLimit {
    resource: Resource,
    was: libc::rlimit,
}

#[allow(dead_code)]
impl SoftLimit {
    #[allow(unsafe_code)]
    pub fn set(resource: Resource, soft: u64) -> Self {
        let mut was = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain calls on local structs.
        unsafe {
            assert_eq!(libc::getrlimit(resource, &mut was), 0);
            let new = libc::rlimit {
                rlim_cur: soft,
                rlim_max: was.rlim_max,
            };
            assert_eq!(libc::setrlimit(resource, &new), 0);
        }
        SoftLimit { resource, was }
    }
}

impl Drop for SoftLimit {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: a plain call on a local struct.
        unsafe { assert_eq!(libc::setrlimit(self.resource, &self.was), 0) };
    }
}

/// This process's address space limited to what it uses and 4 MiB more (room for small
/// allocations, not for a 16 MiB message or result), until dropped.
#[allow(dead_code)]
pub struct AddressSpaceCap(SoftLimit);

#[allow(dead_code)]
impl AddressSpaceCap {
    #[allow(unsafe_code)]
    pub fn new() -> Self {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().next().unwrap().parse().unwrap();
        // SAFETY: a plain call.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        AddressSpaceCap(SoftLimit::set(libc::RLIMIT_AS, pages * page + (4 << 20)))
    }
}
