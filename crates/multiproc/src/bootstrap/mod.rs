//! Bootstrap: `init()`, how a child learns what to run, and the fork server.
//!
//! The protocol is described in `README.md` beside this file.

pub(crate) mod child;
mod forkserver;
pub(crate) mod messages;
mod panic;

use std::ffi::OsString;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub(crate) use child::{CallIo, Invoked, fail_on, run_in_fork};
pub(crate) use forkserver::ForkServer;
pub(crate) use panic::caught_panic;
pub use panic::{PanicLocation, RemotePanic};

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
#[must_use = "the guard joins child processes when dropped at the end of main"]
#[derive(Debug)]
pub struct Init {
    owner: bool,
}

impl Drop for Init {
    fn drop(&mut self) {
        if self.owner {
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

/// Runs when the process that called `init` exits, and when a child's function returns:
/// handles the children (daemons terminated, the others joined), then stops the fork
/// server. Doing it again does nothing.
pub(crate) fn exit_function() {
    if let Some(handle_children) = HANDLE_CHILDREN.get() {
        handle_children();
    }
    let server = state().server.take();
    if let Some(server) = server {
        server.shut_down();
    }
}

/// Set once per process image: what to run before each child's function.
static SETUP: OnceLock<Option<fn()>> = OnceLock::new();
static INITIALIZED: AtomicBool = AtomicBool::new(false);
static IDENTITY: OnceLock<[u64; 6]> = OnceLock::new();
/// Default names count children in start order: `Process-1`, `Process-2`, ...
static NEXT_CHILD: AtomicU32 = AtomicU32::new(1);
/// The process that called `init` and runs the exit function (children inherit the
/// atexit registration when forked and must not run it).
static OWNER_PID: AtomicU32 = AtomicU32::new(0);

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
    /// Named segments this process created and has not unlinked: its fork server
    /// unlinks them if this process dies first.
    pub(crate) tracked: Vec<Tracked>,
}

static STATE: Mutex<State> = Mutex::new(State {
    server: None,
    death: None,
    tracked: Vec::new(),
});

static ME: Mutex<Option<Arc<Me>>> = Mutex::new(None);

pub(crate) fn state() -> MutexGuard<'static, State> {
    unpoisoned::lock(&STATE)
}

/// The lock on this process's description; hold it only to read or replace the `Arc`.
pub(crate) fn me_lock() -> MutexGuard<'static, Option<Arc<Me>>> {
    unpoisoned::lock(&ME)
}

/// Starts multiproc in this process. Call it first in `main`.
///
/// In the parent it returns a guard (keep it until `main` ends). In a child process it
/// never returns: the child runs the function it was started for and exits. Code before
/// `init()` runs in every child that is started by re-execution, so put nothing there.
///
/// If the process has a single thread at this point, `init` also forks the fork server
/// that starts children for [`StartMethod::ForkServer`](crate::StartMethod) and
/// [`StartMethod::Spawn`](crate::StartMethod); otherwise the server is started later by
/// re-executing this program. Calling `init` again returns a guard that does nothing.
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
/// in each child before its function. This is where logging is configured, so that
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

/// Whether this process was started by a multiproc parent (a child or a fork server
/// started by executing the program), as the token it was given says.
pub(crate) fn started_by_multiproc() -> bool {
    [CHILD_TOKEN, SERVER_TOKEN].iter().any(|name| {
        std::env::var_os(name)
            .and_then(|t| t.to_str()?.split(':').nth(1)?.parse::<u32>().ok())
            .is_some_and(|ppid| sys::getppid() == Some(ppid))
    })
}

fn init_inner(setup: Option<fn()>) -> Init {
    let _ = SETUP.set(setup);
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return Init { owner: false };
    }
    // Before anything forks or runs a call: every process of the program (children and
    // the fork server included) reports the named segments it creates to its server.
    shm::named::set_tracker(shm::named::Tracker { track, untrack });
    if let Some(token) = sys::take_env(CHILD_TOKEN)
        && let Some((channel, death)) = parse_token(&token)
    {
        child::run_exec(channel, death);
    }
    if let Some(token) = sys::take_env(SERVER_TOKEN)
        && let Some((control, death)) = parse_token(&token)
    {
        let _ = identity();
        sys::serve(control, death);
    }
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
    OWNER_PID.store(sys::getpid(), Ordering::SeqCst);
    sys::at_exit(exit_hook);
    if let Some(setup) = setup {
        setup();
    }
    Init { owner: true }
}

extern "C" fn exit_hook() {
    if OWNER_PID.load(Ordering::SeqCst) == sys::getpid() {
        // Unwinding out of an `extern "C"` function aborts; the exit function reports its
        // own failures and must not take the process down with it.
        let _ = std::panic::catch_unwind(exit_function);
    }
}

/// Parses `PROTOCOL:PPID:FD:FD-or-dash`, checking that the token was meant for this
/// process (a token inherited by a grandchild names another parent and is ignored).
fn parse_token(token: &OsString) -> Option<(OwnedFd, Option<OwnedFd>)> {
    let token = token.to_str()?;
    let mut parts = token.split(':');
    let version: u32 = parts.next()?.parse().ok()?;
    let ppid: u32 = parts.next()?.parse().ok()?;
    let first: i32 = parts.next()?.parse().ok()?;
    let second = parts.next()?;
    if version != messages::PROTOCOL || parts.next().is_some() || sys::getppid() != Some(ppid) {
        return None;
    }
    let second = match second {
        "-" => None,
        n => Some(n.parse::<i32>().ok()?),
    };
    let first = sys::adopt_inherited_fd(first)?;
    let second = match second {
        Some(fd) => Some(sys::adopt_inherited_fd(fd)?),
        None => None,
    };
    Some((first, second))
}

/// Formats a token for a process whose parent will be `ppid`.
pub(crate) fn format_token(ppid: u32, first: i32, second: Option<i32>) -> String {
    match second {
        Some(fd) => format!("{}:{ppid}:{first}:{fd}", messages::PROTOCOL),
        None => format!("{}:{ppid}:{first}:-", messages::PROTOCOL),
    }
}

/// Whether `init` has run in this process.
pub(crate) fn initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// The setup function given to [`init_with`].
pub(crate) fn setup() -> Option<fn()> {
    SETUP.get().copied().flatten()
}

/// This executable's identity: the file's, plus where the anchor symbol sits in it.
pub(crate) fn exe_identity() -> io::Result<[u64; 6]> {
    if let Some(id) = IDENTITY.get() {
        return Ok(*id);
    }
    let file = sys::exe_file_identity()?;
    let id = [
        file[0],
        file[1],
        file[2],
        file[3],
        file[4],
        sys::anchor_offset(),
    ];
    Ok(*IDENTITY.get_or_init(|| id))
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
    *me_slot = Some(Arc::new(me));
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
            let death = death_read_end(st)?;
            let mut server = ForkServer::exec_now(death)?;
            // A new server must learn what the one it replaces was tracking.
            for tracked in &st.tracked {
                server.send_tracked(messages::TRACK, tracked)?;
            }
            st.server = Some(server);
        }
        let Some(server) = st.server.as_mut() else {
            continue;
        };
        match f(server) {
            Ok(v) => return Ok(v),
            Err(e) if attempt == 0 && forkserver::is_server_gone(&e) => {
                if let Some(old) = st.server.take() {
                    old.shut_down();
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the fork server keeps failing"))
}

/// Has this process's fork server unlink the named segment `tracked` if this process
/// dies without doing it. Best effort: without `init()` there is no server to ask.
fn track(tracked: Tracked) {
    if !initialized() {
        return;
    }
    let mut st = state();
    if let Err(e) = server_call(&mut st, |s| s.send_tracked(messages::TRACK, &tracked)) {
        tracing::trace!("cannot track {:?}: {e}", tracked.name);
    }
    st.tracked.push(tracked);
}

/// Undoes [`track`]: the segment was unlinked by its creator.
fn untrack(tracked: &Tracked) {
    let mut st = state();
    let before = st.tracked.len();
    st.tracked.retain(|t| t != tracked);
    if st.tracked.len() != before
        && let Some(server) = st.server.as_mut()
    {
        let _ = server.send_tracked(messages::UNTRACK, tracked);
    }
}
