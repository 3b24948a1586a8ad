//! Bootstrap: `init()`, how a child learns what to run, and the fork server.
//!
//! The protocol is described in `README.md` beside this file.

pub(crate) mod child;
mod forkserver;
pub(crate) mod looking;
pub(crate) mod messages;
mod panic;
mod setup;
mod tracker;

use std::ffi::OsString;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub(crate) use child::{ChildCall, Invoked, fail_on, run_in_fork};
pub(crate) use forkserver::{ForkServer, is_peer_gone, read_status};
pub(crate) use panic::payload_message;
pub use panic::{PanicLocation, RemotePanic};
pub(crate) use panic::{catching, caught_panic, drop_each_keeping_report, drop_payload};
pub(crate) use setup::{
    ForkedChildSetup, apply_limits, arm_cpu_limit, default_limit_signals, setup_forked_child,
};
use tracker::SegmentTracker;

use crate::shm::{self, named::Tracked};
use crate::sync::unpoisoned;
use crate::sys::{self, OwnedFd};

/// Environment variable that tells a re-executed process it is a child.
pub(crate) const CHILD_TOKEN: &str = "MULTIPROC_CHILD";
/// Environment variable that tells a re-executed process it is a fork server.
pub(crate) const SERVER_TOKEN: &str = "MULTIPROC_FORKSERVER";
/// Exit code of a child whose call could not start (the parent reports `Lost`).
pub(crate) const BOOTSTRAP_FAILURE: i32 = 120;
/// Deepest nesting of processes: a child of a child of ... stops here.
pub(crate) const MAX_DEPTH: u32 = 32;

/// Guard returned by [`init`]. When the guard that owns the process is dropped at the end
/// of `main`, daemon children are terminated and the others are joined, as Python does at
/// exit. The same happens if the process calls [`std::process::exit`].
/// A copy of the process made by a `fork` of the program's own does none of this when it
/// returns from `main` or exits: the children, and the fork server they were started
/// from, are its parent's.
#[must_use = "the guard joins child processes when dropped at the end of main"]
#[derive(Debug)]
pub struct Init {
    owner: bool,
}

impl Drop for Init {
    fn drop(&mut self) {
        // Not in a copy of the program made by a fork of its own that returns from
        // `main`: the children and the fork server are the parent's (as at `exit`, see
        // `exit_hook`).
        if self.owner && OWNER_PID.load(Ordering::SeqCst) == sys::getpid() {
            exit_function();
        }
    }
}

/// What handles this process's children at exit: installed by the layer that keeps
/// them (`process`) when it starts the first one, so that this layer names no caller.
static HANDLE_CHILDREN: OnceLock<fn()> = OnceLock::new();

/// Installs `f` to handle this process's children when it exits (once per process
/// image; later calls change nothing).
pub(crate) fn at_exit_handle_children(f: fn()) {
    let _ = HANDLE_CHILDREN.set(f);
}

/// What a manager's clients say at a normal exit (`manager/client.rs`): installed with
/// the first client, so that this layer names no caller.
static SAY_GOODBYE: OnceLock<fn()> = OnceLock::new();

/// Installs `f` to run at a normal exit, once the children are handled (once per
/// process image; later calls change nothing).
pub(crate) fn at_exit_say_goodbye(f: fn()) {
    let _ = SAY_GOODBYE.set(f);
}

/// Runs when the process that called `init` exits, and when a child's function returns:
/// from now on no process is started; the children are handled (daemons terminated, the
/// others joined), a manager's clients say they let go, the segment tracker unlinks what this process created and did not
/// unlink, and exits; then the fork server is stopped (and reaps the tracker). Doing it
/// again (once it ended, however it ended) does nothing; another thread that does it
/// meanwhile (an `exit` from a Ctrl-C handler's thread while the main thread's end
/// joins the children) waits for the work under way to end (it went on to stop the
/// tracker and the fork server, and the exit ended the process, with the children not
/// joined); the thread doing it, doing it again (an `exit` from a signal handler that
/// interrupted it), returns at once, and the process ends there.
pub(crate) fn exit_function() {
    thread_local! {
        static RUNNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if RUNNING.try_with(std::cell::Cell::get).unwrap_or(false) {
        return;
    }
    // The process that runs or ran it, and how far it is (0: not begun, 1: under way,
    // 2: done): a child forked meanwhile has a copy that is not its own.
    const UNDER_WAY: u64 = 1;
    const DONE: u64 = 2;
    let me = u64::from(sys::getpid()) << 2;
    loop {
        let state = EXIT_STATE.load(Ordering::SeqCst);
        match (state & !3 == me, state & 3) {
            (true, DONE) => return,
            (true, UNDER_WAY) => std::thread::sleep(std::time::Duration::from_millis(10)),
            _ => {
                if EXIT_STATE
                    .compare_exchange(state, me | UNDER_WAY, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    break;
                }
            }
        }
    }
    // Done however the work ends: a panic in it (the program's `tracing` subscriber,
    // a manager's goodbye) left another thread's exit waiting for ever.
    struct Done(u64);
    impl Drop for Done {
        fn drop(&mut self) {
            EXIT_STATE.store(self.0, Ordering::SeqCst);
            let _ = RUNNING.try_with(|r| r.set(false));
        }
    }
    let _ = RUNNING.try_with(|r| r.set(true));
    let _done = Done(me | DONE);
    run_exit_work();
}

/// How far this process's exit work is: see [`exit_function`].
static EXIT_STATE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn run_exit_work() {
    begin_exit();
    if let Some(handle_children) = HANDLE_CHILDREN.get() {
        handle_children();
    }
    if let Some(say_goodbye) = SAY_GOODBYE.get() {
        say_goodbye();
    }
    let tracker = state().tracker.take();
    if let Some(tracker) = tracker {
        tracker.finish();
    }
    let server = state().server.take();
    if let Some(server) = server {
        server.shut_down();
    }
}

/// Set once per process image: what to run before each child's function.
static SETUP: OnceLock<Option<fn()>> = OnceLock::new();
static INITIALIZED: AtomicBool = AtomicBool::new(false);
/// Set when the exit work begins; see [`begin_exit`].
static EXITING: AtomicBool = AtomicBool::new(false);
/// Default names count children in start order: `Process-1`, `Process-2`, ...
static NEXT_CHILD: AtomicU32 = AtomicU32::new(1);
/// The process that runs the exit function at `exit` (children inherit the atexit
/// registration when forked and must not run their parent's): the one that called
/// `init`, or a child once its call began.
static OWNER_PID: AtomicU32 = AtomicU32::new(0);
/// Whether this image registered [`exit_hook`] with `atexit` (a forked copy inherits
/// the registration).
static AT_EXIT: AtomicBool = AtomicBool::new(false);

/// Makes this process the one whose `exit` (a `std::process::exit`) runs the exit work:
/// its non-daemon children joined, its daemons terminated, as Python's children do at
/// `sys.exit`.
pub(crate) fn own_exit() {
    OWNER_PID.store(sys::getpid(), Ordering::SeqCst);
    register_exit_hook();
}

/// Registers [`exit_hook`] with `atexit` in this image, unless it is: the fork server
/// does so as it starts (the hook does nothing in it), so that its children find it
/// registered rather than each write the C library's list of exit functions (a page
/// copied on write) on a spawn's way.
pub(crate) fn register_exit_hook() {
    if !AT_EXIT.swap(true, Ordering::SeqCst) {
        sys::at_exit(exit_hook, exit_hook_with_status);
    }
}

/// This process's `exit` runs no exit work (it was done already).
pub(crate) fn disown_exit() {
    OWNER_PID.store(0, Ordering::SeqCst);
}

/// What this process knows about itself.
#[derive(Debug)]
pub(crate) struct Me {
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) lineage: Vec<u32>,
    pub(crate) depth: u32,
    pub(crate) parent: Option<Parent>,
}

/// What a child knows about its parent.
#[derive(Debug)]
pub(crate) struct Parent {
    pub(crate) pid: u32,
    pub(crate) name: String,
    /// Read end of the parent's death pipe: hangs up when the parent is gone.
    pub(crate) death: Option<OwnedFd>,
}

/// Mutable per-process state. A forked child replaces it wholesale.
///
/// Nothing here may be locked while emitting a `tracing` event if the event could need
/// the same lock: this process's description ([`me`]) therefore has a lock of its own,
/// which is only ever held to clone an `Arc` (a subscriber may call
/// `current_process()` from inside any event, including one multiproc emits).
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) server: Option<ForkServer>,
    /// This process's death pipe: children hold the read end; the write end lives only
    /// here, so it hangs up exactly when this process is gone.
    pub(crate) death: Option<(OwnedFd, OwnedFd)>,
    /// Named segments this process created and has not unlinked: its segment tracker
    /// unlinks them if this process dies first. Kept here to be replayed to a tracker
    /// that replaces a dead one.
    pub(crate) tracked: Vec<Tracked>,
    /// The segment tracker, started when this process first creates a named segment.
    pub(crate) tracker: Option<SegmentTracker>,
}

/// This process's state and description, side by side: a child locks both as it starts,
/// and each page a forked child writes is a page copied.
struct Statics {
    state: Mutex<State>,
    me: Mutex<Option<Arc<Me>>>,
}

static STATICS: Statics = Statics {
    state: Mutex::new(State {
        server: None,
        death: None,
        tracked: Vec::new(),
        tracker: None,
    }),
    me: Mutex::new(None),
};

pub(crate) fn state() -> MutexGuard<'static, State> {
    unpoisoned::lock(&STATICS.state)
}

/// [`state`], unless another thread holds it.
pub(crate) fn try_state() -> Option<MutexGuard<'static, State>> {
    match STATICS.state.try_lock() {
        Ok(st) => Some(st),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// The lock on this process's description; hold it only to read or replace the `Arc`.
pub(crate) fn me_lock() -> MutexGuard<'static, Option<Arc<Me>>> {
    unpoisoned::lock(&STATICS.me)
}

/// Starts multiproc in this process. Call it early in `main`, before spawning anything.
///
/// In the parent it returns a guard. In a process that multiproc started it never
/// returns: such a process runs the function it was started for and exits. A process
/// started by executing the program afresh (a [`StartMethod::Spawn`](crate::StartMethod)
/// child, or a fork server started by exec) recognises itself even before `main`, from
/// a constructor, so no code of `main` runs in it: not what comes before `init()`, and
/// not a `#[tokio::main]` runtime's threads either. Where constructors do not run,
/// `init()` does the same.
///
/// The guard returned on the main thread runs the exit work when it is dropped at the
/// end of `main` (daemon children are terminated, the others joined, as Python does at
/// exit); the same work runs if the process calls [`std::process::exit`] instead. A
/// guard returned on another thread (a test of the standard test harness calls `init()`
/// on its own thread) does nothing when dropped: the exit work waits for the process to
/// exit. After the exit work has begun, no process can be started
/// ([`SpawnError::Exiting`](crate::SpawnError::Exiting)).
///
/// If the process has a single thread at this point, `init` also forks the fork server
/// that starts children for [`StartMethod::ForkServer`](crate::StartMethod) and
/// [`StartMethod::Spawn`](crate::StartMethod): its memory is then the program as it was
/// when `init` ran, which is why `init` belongs early in `main` (output written before it
/// and not yet flushed, Rust's stdout and C's stdio, is flushed first, so that children
/// do not write it again). Otherwise the server is
/// started later by executing this program again. Calling `init` again returns a guard
/// that does nothing.
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() {
///     let _guard = multiproc::init();
///     let child = multiproc::spawn(square, 7).unwrap();
///     assert_eq!(child.join().unwrap(), 49);
/// }
/// ```
pub fn init() -> Init {
    init_inner(None)
}

/// Like [`init`], and runs `setup` at the start of every process: here, right away, and
/// in each child before its function, whatever its start method, and in the children's
/// children. This is where logging is configured, so that
/// children log like the parent:
///
/// ```no_run
/// fn main() {
///     let _guard = multiproc::init_with(multiproc::log::init);
///     tracing::info!("visible as `MainProcess: ...`, and children log as `Process-1: ...`");
/// }
/// ```
#[cfg_attr(not(feature = "log"), doc = "(The example needs the `log` feature.)")]
pub fn init_with(setup: fn()) -> Init {
    init_inner(Some(setup))
}

/// What an environment token says about this process.
enum Token {
    /// Meant for this process: the descriptors its parent passed, checked and adopted.
    Mine(OwnedFd, Option<OwnedFd>),
    /// Meant for this process (its channel is the one the token names), but unusable.
    Broken(String),
    /// Absent, malformed, or inherited from an ancestor and meant for another process.
    NotMine,
}

/// Runs what this process was started for if multiproc started it by executing the
/// program: a child's call, or a fork server's loop; it never returns then, whatever
/// happened to its parent meanwhile (a child whose parent is gone finds its channel
/// closed and exits). Runs from a constructor before `main`, and again from `init()`
/// where constructors do not run.
pub(crate) fn run_if_started() {
    // Before anything forks or runs a call: every process of the program (children and
    // the fork server included) reports the named segments it creates to its server.
    shm::named::set_tracker(shm::named::Tracker {
        prepare: prepare_tracking,
        untrack,
    });
    match read_token(CHILD_TOKEN) {
        Token::Mine(channel, death) => child::run_exec(channel, death),
        Token::Broken(why) => abandon(&why),
        Token::NotMine => {}
    }
    match read_token(SERVER_TOKEN) {
        Token::Mine(control, death) => {
            let _ = identity();
            forkserver::serve(control, death, true)
        }
        Token::Broken(why) => abandon(&why),
        Token::NotMine => {}
    }
}

// Before `main`, so that a process started by executing the program runs none of it.
// `late`: constructors the program itself registers run first, as they would before
// `main`.
#[ctor::ctor(unsafe, priority = late)]
fn recognise_before_main() {
    run_if_started();
}

/// A process multiproc started cannot do what it was started for: it says why and exits
/// (never returning to `main`).
fn abandon(why: &str) -> ! {
    let line = format!(
        "multiproc: process {} was started by multiproc but cannot run: {why}\n",
        sys::getpid()
    );
    sys::write_stderr(line.as_bytes());
    sys::exit_now(BOOTSTRAP_FAILURE)
}

/// Whether this process was started by a multiproc parent (a child or a fork server
/// started by executing the program), as a token meant for it says.
pub(crate) fn started_by_multiproc() -> bool {
    [CHILD_TOKEN, SERVER_TOKEN].iter().any(|name| {
        std::env::var_os(name)
            .as_ref()
            .and_then(split_token)
            .is_some_and(|t| t.is_mine())
    })
}

/// Descriptors the parent's table has room for from `init()` on (or its limit, if
/// lower).
const DESCRIPTOR_ROOM: u64 = 1024;

fn init_inner(setup: Option<fn()>) -> Init {
    let _ = SETUP.set(setup);
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return Init { owner: false };
    }
    run_if_started();
    let _ = identity();
    *me_lock() = Some(Arc::new(main_process()));
    let death = death_read_end(&mut state());
    // Fork the server now while this is provably the only thread: cheapest start, and
    // the server's memory is the program's state before `main` did anything. The state
    // lock must not be held across the fork: the server would inherit it locked.
    match death.and_then(ForkServer::fork_now) {
        Ok(Some(server)) => state().server = Some(server),
        Ok(None) => {}
        Err(e) => tracing::trace!("fork server not started at init: {e}"),
    }
    // Room for 1,024 descriptors now, while the table can grow for nothing: once the
    // process has threads (a pool's engine, a manager's client), each growth of the
    // table past 64, 128, ... descriptors waits for an RCU grace period, 12–30 ms
    // measured, on whichever call opens that descriptor (a pool's 13th worker, say).
    if sys::thread_count() == Some(1) {
        sys::reserve_fd_table(DESCRIPTOR_ROOM);
    }
    own_exit();
    if let Some(setup) = setup {
        setup();
    }
    Init {
        owner: sys::is_main_thread(),
    }
}

extern "C" fn exit_hook() {
    exit_hook_body(None);
}

/// [`exit_hook`], where the C library says with which status the process exits.
extern "C" fn exit_hook_with_status(status: std::ffi::c_int, _: *mut std::ffi::c_void) {
    exit_hook_body(Some(status));
}

fn exit_hook_body(status: Option<i32>) {
    if OWNER_PID.load(Ordering::SeqCst) == sys::getpid() {
        // Unwinding out of an `extern "C"` function aborts; the exit function reports its
        // own failures and must not take the process down with it.
        let _ = std::panic::catch_unwind(|| {
            // A process that exits with status 0 (a child's function that calls
            // `std::process::exit(0)`) leaves the barriers it waited on, as one whose
            // function returned does; where the status is not known, its parties stay,
            // and count as dead.
            if status == Some(0) {
                crate::sync::barrier::process_ends(true);
            }
            exit_function();
            if status == Some(0) {
                crate::sync::barrier::process_ended(true);
            }
        });
    }
}

/// A token's fields: `PROTOCOL:FD:FD-or-dash:DEV:INO`, where `DEV:INO` identify the file
/// the parent passed at the first descriptor.
struct TokenFields {
    first: i32,
    second: Option<i32>,
    id: (u64, u64),
}

impl TokenFields {
    /// Whether the first descriptor is the file the token names: only the process the
    /// token was made for has it (a descendant that inherited the variable does not).
    fn is_mine(&self) -> bool {
        sys::inherited_fd_id(self.first) == Some(self.id)
    }
}

fn split_token(token: &OsString) -> Option<TokenFields> {
    let token = token.to_str()?;
    let mut parts = token.split(':');
    let version: u32 = parts.next()?.parse().ok()?;
    let first: i32 = parts.next()?.parse().ok()?;
    let second = match parts.next()? {
        "-" => None,
        n => Some(n.parse::<i32>().ok()?),
    };
    let dev: u64 = parts.next()?.parse().ok()?;
    let ino: u64 = parts.next()?.parse().ok()?;
    if version != messages::PROTOCOL || parts.next().is_some() {
        return None;
    }
    Some(TokenFields {
        first,
        second,
        id: (dev, ino),
    })
}

/// Reads (and removes) the token `name`, and checks whether it was meant for this
/// process by the identity of the descriptor it names, not by the parent's pid: a
/// process whose parent died before it got here is still the one the token was made for.
fn read_token(name: &str) -> Token {
    let Some(fields) = sys::take_env(name).as_ref().and_then(split_token) else {
        return Token::NotMine;
    };
    if !fields.is_mine() {
        return Token::NotMine;
    }
    let Some(first) = sys::adopt_inherited_fd(fields.first) else {
        return Token::Broken(format!("descriptor {} cannot be adopted", fields.first));
    };
    let second = match fields.second {
        None => None,
        Some(fd) => match sys::adopt_inherited_fd(fd) {
            Some(fd) => Some(fd),
            None => return Token::Broken(format!("descriptor {fd} is not open")),
        },
    };
    Token::Mine(first, second)
}

/// Formats a token naming the descriptors a process will find at `first` and `second`;
/// `id` is the identity (device, inode) of the file at `first`.
pub(crate) fn format_token(first: i32, second: Option<i32>, id: (u64, u64)) -> String {
    let second = second.map_or_else(|| "-".to_owned(), |fd| fd.to_string());
    format!("{}:{first}:{second}:{}:{}", messages::PROTOCOL, id.0, id.1)
}

/// Notes that this process's exit work has begun: from now on no process is started
/// (a pool that loses its workers at exit must not start a fork server on the way out).
pub(crate) fn begin_exit() {
    EXITING.store(true, Ordering::SeqCst);
}

/// Whether this process's exit work has begun.
pub(crate) fn exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

/// Whether `init` has run in this process.
pub(crate) fn initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// The setup function given to [`init_with`].
pub(crate) fn setup() -> Option<fn()> {
    SETUP.get().copied().flatten()
}

/// Keeps `setup` as this image's (a child's, from its call), unless it has one: the
/// child's own `init_with` then keeps the parent's, as in a child forked from an image
/// that ran `init_with`. (None is not kept: a child of a program without a setup may
/// give its children one with `init_with`.)
pub(crate) fn keep_setup(setup: Option<fn()>) {
    if setup.is_some() {
        let _ = SETUP.set(setup);
    }
}

/// This executable's identity: the file's, plus where the anchor symbol sits in it.
pub(crate) fn exe_identity() -> io::Result<[u64; 6]> {
    sys::exe_identity()
}

fn identity() -> Option<[u64; 6]> {
    exe_identity().ok()
}

/// The next default child name's number.
pub(crate) fn next_child_number() -> u32 {
    NEXT_CHILD.fetch_add(1, Ordering::Relaxed)
}

/// Resets what a freshly forked child must not inherit from the process it was forked
/// from, and records who it is.
pub(crate) fn become_child(st: &mut State, me_slot: &mut Option<Arc<Me>>, me: Me) {
    // The server and the death pipe belong to the parent; dropping closes this copy so
    // that they still hang up when the parent goes.
    st.server = None;
    st.death = None;
    st.tracked.clear();
    st.tracker = None;
    *me_slot = Some(Arc::new(me));
    // A child may start children of its own, whether or not `init` ran in this image
    // (an executed child recognised itself before `main`).
    INITIALIZED.store(true, Ordering::SeqCst);
    EXITING.store(false, Ordering::SeqCst);
    NEXT_CHILD.store(1, Ordering::Relaxed);
    OWNER_PID.store(0, Ordering::SeqCst);
}

fn main_process() -> Me {
    Me {
        name: "MainProcess".into(),
        daemon: false,
        lineage: Vec::new(),
        depth: 0,
        parent: None,
    }
}

/// Forgets (without closing) the descriptors in this process's state: the fork server
/// calls this after closing every descriptor it did not keep.
pub(crate) fn forget_inherited_state() {
    let mut st = state();
    std::mem::forget(st.server.take());
    std::mem::forget(st.death.take());
    std::mem::forget(st.tracker.take());
}

/// This process's description.
pub(crate) fn me() -> Arc<Me> {
    me_lock()
        .get_or_insert_with(|| Arc::new(main_process()))
        .clone()
}

/// Makes sure this process has a death pipe and returns a duplicate of its read end,
/// for a child to hold.
pub(crate) fn death_read_end(st: &mut State) -> io::Result<OwnedFd> {
    if st.death.is_none() {
        st.death = Some(sys::pipe()?);
    }
    match &st.death {
        Some((read, _)) => sys::dup(sys::AsFd::as_fd(read)),
        None => Err(io::Error::other("death pipe missing")),
    }
}

/// Runs `f` with this process's fork server, starting (or restarting) it as needed.
pub(crate) fn with_server<T>(f: impl FnMut(&mut ForkServer) -> io::Result<T>) -> io::Result<T> {
    server_call(&mut state(), f)
}

fn server_call<T>(
    st: &mut State,
    mut f: impl FnMut(&mut ForkServer) -> io::Result<T>,
) -> io::Result<T> {
    for attempt in 0..2 {
        if st.server.is_none() {
            if exiting() {
                return Err(io::Error::other(
                    "the program is exiting: no fork server is started any more",
                ));
            }
            let death = death_read_end(st)?;
            st.server = Some(ForkServer::exec_now(death)?);
        }
        let Some(server) = st.server.as_mut() else {
            continue;
        };
        match f(server) {
            Ok(v) => return Ok(v),
            Err(e) if forkserver::is_peer_gone(&e) => {
                // Reap it now: a server that died must not stay a zombie, holding its
                // descriptors, until the next spawn.
                if let Some(old) = st.server.take() {
                    retire(old);
                }
                if attempt > 0 {
                    return Err(e);
                }
            }
            Err(e) if forkserver::is_answer_lost(&e) => {
                // Not asked again: the request may have been served (see
                // `is_answer_lost`). The next request starts a new server.
                if let Some(old) = st.server.take() {
                    retire(old);
                }
                return Err(e);
            }
            Err(e) if forkserver::is_out_of_step(&e) => {
                // No answer in time (the server stopped or starved), or half of one: its
                // answer may still come, and would be read as the next request's (a
                // spawn would get the previous child's pid). (Or one read whole whose
                // pidfd found no descriptor free here: its child started unreachable.) It is replaced, killed if
                // it does not exit, so that the request it did not answer is not
                // served later either.
                if let Some(old) = st.server.take() {
                    retire(old);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the fork server keeps failing"))
}

/// Stops a fork server that is being replaced (see `ForkServer::shut_down`), and reaps
/// its spare where it came to this process (a subreaper, or PID 1 in a container: the
/// spare, which ends as it finds its server gone, stayed a zombie for the life of the
/// program, one for each server replaced).
fn retire(old: ForkServer) {
    old.shut_down();
    sys::reap_adopted_named(forkserver::SPARE_NAME, SPARE_END);
}

/// How long a replaced server's spare is waited for: it ends as soon as it reads its
/// server's end.
const SPARE_END: std::time::Duration = std::time::Duration::from_millis(200);

/// Starts a segment tracker. Unlike a spawn's, a request whose answer was lost is asked
/// again of a new server: a tracker the dead server may have started has its own
/// connection, which this side closes, and it exits with nothing to unlink.
fn start_tracker(server: &mut ForkServer, list: &[Tracked]) -> io::Result<SegmentTracker> {
    SegmentTracker::start(server, list).map_err(|e| {
        if forkserver::is_answer_lost(&e) {
            io::Error::new(io::ErrorKind::BrokenPipe, e.to_string())
        } else {
            e
        }
    })
}

/// A segment is about to be created here: the tracker is started now if there is none,
/// so that telling it of the segment is one message, sent right after the segment
/// exists (a creator killed before that leaves its segment behind). This process's
/// state stays locked until then: another thread could otherwise hold it meanwhile for
/// a fork server's round trip or a `spawn_fork`, milliseconds.
fn prepare_tracking() -> Box<dyn FnOnce(Tracked)> {
    if !initialized() || exiting() {
        return Box::new(track);
    }
    let mut st = state();
    if st.tracker.is_none() {
        let list = st.tracked.clone();
        match server_call(&mut st, |server| start_tracker(server, &list)) {
            Ok(tracker) => st.tracker = Some(tracker),
            // Tried again when the segment is tracked.
            Err(e) => tracing::trace!("cannot start the segment tracker: {e}"),
        }
    }
    Box::new(move |tracked| track_locked(&mut st, tracked))
}

/// Has this process's segment tracker unlink the named segment `tracked` if this
/// process dies without doing it, starting the tracker if there is none (or it died).
/// Best effort: without `init()` there is no fork server to start one, and none is
/// started once the exit work has begun.
fn track(tracked: Tracked) {
    if !initialized() {
        return;
    }
    track_locked(&mut state(), tracked);
}

/// [`track`], this process's state locked.
fn track_locked(st: &mut State, tracked: Tracked) {
    st.tracked.push(tracked.clone());
    if let Err(e) = tell_tracker(st, messages::TRACK, &tracked) {
        tracing::trace!("cannot track {:?}: {e}", tracked.name);
    }
}

/// Undoes [`track`]: the segment was unlinked by its creator.
fn untrack(tracked: &Tracked) {
    let mut st = state();
    let before = st.tracked.len();
    st.tracked.retain(|t| t != tracked);
    if st.tracked.len() != before {
        let _ = tell_tracker(&mut st, messages::UNTRACK, tracked);
    }
}

/// Sends `TRACK` or `UNTRACK` to the tracker. A tracker found dead is replaced for a
/// `TRACK` (a new one learns the whole list, this segment included); an `UNTRACK` needs
/// none.
fn tell_tracker(st: &mut State, tag: u8, tracked: &Tracked) -> io::Result<()> {
    if let Some(tracker) = st.tracker.as_mut() {
        match tracker.send(tag, tracked) {
            Ok(()) => return Ok(()),
            // Dead (killed): its server reaps it; a new one is started below.
            Err(e) if forkserver::is_peer_gone(&e) => st.tracker = None,
            Err(e) => return Err(e),
        }
    }
    if tag != messages::TRACK || exiting() {
        return Ok(());
    }
    let list = st.tracked.clone();
    let tracker = server_call(st, |server| start_tracker(server, &list))?;
    st.tracker = Some(tracker);
    Ok(())
}
