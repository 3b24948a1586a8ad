//! The fork server's side: a single-threaded process that forks children on request.
//!
//! Because it never has a second thread, a child forked from it may do anything (allocate,
//! take locks) before running its call or executing the program afresh. Its children's
//! parent-death signal follows its one thread, so daemon children die with it; it exits
//! (killing its daemon children first) as soon as its connection to the parent closes,
//! which happens when the parent exits or is killed. It reaps its children through
//! pidfds and writes each one's exit status to a pipe the parent reads.
//!
//! Once asked for a child, it keeps one *spare* forked ahead of time: a child that has
//! done the work every child does after a fork (descriptors closed, pages faulted in)
//! and waits for its assignment. The next request goes to the spare, and the server
//! forks the following spare after replying, so the fork is off the requester's path.
//! A spare exits when the server dies (its socket to the server closes) until it is
//! assigned.
//!
//! A child with a memory cap gets a cgroup of its own, which the server makes before
//! the child exists and removes once it has reaped the child, after reading from it
//! whether the out-of-memory killer struck (reported with the exit status). When the
//! parent goes, the server kills its daemon children and removes their cgroups; a
//! capped child that is not a daemon (it outlives its parent, as Python's do) keeps the
//! server until it ends, so that its cgroup is removed too. Cgroups of a server that was
//! itself killed are removed by the next server that makes one, once they are empty.
//!
//! On request it also forks the parent's segment tracker (`tracker.rs`), which it reaps
//! like any child but neither kills nor waits for at its end, beyond a second when the
//! parent is already gone: the tracker must outlive it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bootstrap::messages::{self, CHANNEL_FD, ForkReply, ForkRequest, Refusal};
use crate::bootstrap::setup::{FromServer, become_requested};
use crate::bootstrap::{self, BOOTSTRAP_FAILURE, looking, tracker};
use crate::sys::{self, AsFd, Forked, OwnedFd};
use crate::wire::framing::{Conn, RecvFrameError};

use super::placement::Placement;

/// The process name of a server's spare (a process forked ahead, waiting for its
/// assignment), as `ps` shows it.
pub(crate) const SPARE_NAME: &str = "mp-spare";

/// One child of the server.
struct Kid {
    pid: u32,
    pidfd: OwnedFd,
    daemon: bool,
    /// It leads a process group of its own (`Builder::process_group`).
    group: bool,
    /// Where to report its exit; `None` while it is a spare.
    status: Option<OwnedFd>,
    /// The connection a spare waits on for its assignment; `None` once assigned.
    spare: Option<Conn>,
    /// When it was forked.
    forked_at: Instant,
    /// Forked held to the server's CPU (see [`Placement`]).
    pinned: bool,
    /// A spare's number in the server's count of spares (see [`Placement`]).
    seq: u64,
    /// The parent's segment tracker: never killed by this server, which it outlives.
    tracker: bool,
    /// Its memory cgroup.
    cgroup: Option<PathBuf>,
}

/// What the server keeps about its spares besides the children themselves.
struct Spares {
    /// The connection the last assignment went on (see [`assign_or_fork`]).
    retired: Option<Conn>,
    /// Where the next spare runs.
    placement: Placement,
}

/// Set to `0`, the fork server leaves its code on the pages it was loaded on, so that
/// profilers name the functions its children run in every part of it (see
/// [`sys::code_on_huge_pages`]).
pub(crate) const HUGE_CODE_VAR: &str = "MULTIPROC_HUGE_CODE";

/// Cgroups names start with this, then the server's pid and a number.
const CGROUP_PREFIX: &str = "multiproc-";
/// How often the server tries again to remove cgroups that a child's own children
/// still held when it was reaped.
const CGROUP_RETRY: Duration = Duration::from_secs(1);
/// How often the server looks whether the groups of ended daemons that it still kills
/// with the parent have members left (see `lingering` in [`serve`]).
const LINGERING_LOOK: Duration = Duration::from_secs(1);

/// The memory cgroups the server makes and removes.
struct Cgroups {
    /// Where they are made, and how; found at the first request for one that finds it
    /// (a look that fails is made again at the next: kept, one failure, out of
    /// descriptors or memory for a moment, refused every capped spawn for the server's
    /// life).
    home: Option<(PathBuf, sys::CgroupKind)>,
    made: u64,
    /// Cgroups whose child was reaped but which still hold processes (its own
    /// children, in them too): removed once they are empty.
    leftover: Vec<PathBuf>,
}

impl Cgroups {
    fn home(&mut self) -> Result<(PathBuf, sys::CgroupKind), String> {
        if let Some(home) = &self.home {
            return Ok(home.clone());
        }
        let home = sys::memory_cgroup_home().map_err(|e| e.to_string())?;
        sweep(&home.0);
        self.home = Some(home.clone());
        Ok(home)
    }

    /// Makes a cgroup capped at `bytes`.
    fn make(&mut self, bytes: u64) -> Result<PathBuf, Refusal> {
        let (home, kind) = self
            .home()
            .map_err(|why| Refusal::other(format!("no memory cgroup can be made: {why}")))?;
        // A name taken already is an earlier server's of the same pid, killed before it
        // could remove its cgroups (the sweep passes over names of this pid): removed if
        // empty, passed over either way.
        for _ in 0..NAMESAKES {
            self.made += 1;
            let dir = home.join(format!("{CGROUP_PREFIX}{}-{}", sys::getpid(), self.made));
            match sys::make_memory_cgroup(&dir, kind, bytes) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = sys::remove_cgroup(&dir);
                }
                Err(e) => {
                    return Err(Refusal::os(
                        &format!("cannot make the cgroup {}", dir.display()),
                        &e,
                    ));
                }
            }
        }
        Err(Refusal::other(format!(
            "no memory cgroup can be made: {NAMESAKES} names in a row of this fork server's \
             are taken in {}",
            home.display()
        )))
    }

    /// Whether the out-of-memory killer struck in `dir`; then removes it (or keeps it
    /// for later, while processes are in it).
    fn finish(&mut self, dir: PathBuf) -> bool {
        let kind = match &self.home {
            Some((_, kind)) => *kind,
            _ => return false,
        };
        let oom = sys::oom_kills(&dir, kind).is_ok_and(|n| n > 0);
        if sys::remove_cgroup(&dir).is_err() {
            self.leftover.push(dir);
        }
        oom
    }

    /// Removes the leftovers that are empty now.
    fn retry(&mut self) {
        self.leftover.retain(|dir| {
            sys::remove_cgroup(dir).is_err() && matches!(std::fs::exists(dir), Ok(true))
        });
    }
}

/// How many taken cgroup names in a row a server passes over before it gives up.
const NAMESAKES: u32 = 64;

/// Removes the empty cgroups of servers that are gone (killed before they could).
fn sweep(home: &Path) {
    let Ok(entries) = std::fs::read_dir(home) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(CGROUP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != sys::getpid() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sys::remove_cgroup(&entry.path());
        }
    }
}

/// Runs the fork server on `control` until the parent goes away. Never returns.
/// `executed`: the server was started by executing the program (rather than forked).
pub(crate) fn serve(control: OwnedFd, death: Option<OwnedFd>, executed: bool) -> ! {
    if sys::thread_count() != Some(1) {
        sys::write_stderr(b"multiproc: the fork server must be single-threaded; exiting\n");
        sys::exit_now(BOOTSTRAP_FAILURE);
    }
    // Descriptors the parent's state held are closed below with everything else; the
    // copies of that state in this process must forget them rather than close them twice.
    bootstrap::forget_inherited_state();
    // Keep stdio, the connection and the death pipe; close whatever else the parent had
    // open, so the server holds nothing the parent later closes.
    let (control, death) = match keep_only(control, death) {
        Ok(kept) => kept,
        Err(e) => {
            sys::write_stderr(format!("multiproc: fork server setup failed: {e}\n").as_bytes());
            sys::exit_now(BOOTSTRAP_FAILURE)
        }
    };
    sys::set_name("mp-forkserver");
    if executed {
        sys::set_cmdline("mp-forkserver");
    }
    // Ctrl-C goes to the whole foreground group and the parent decides what it means;
    // the server writes statuses to pipes whose reader may be gone, whatever the program
    // chose for SIGPIPE (children get that choice back).
    sys::ignore_signal(sys::SIGINT);
    // Likewise the signals that end a process by default and that come to a whole
    // group: a `kill -TERM` of the program's group, a terminal's hang-up or Ctrl-\, a
    // supervisor's stop of a child that spawns. The parent decides what they mean (it
    // may catch `SIGTERM` to stop gracefully, and spawn meanwhile); if they end it, the
    // server sees it gone and ends its daemons and their groups, which a server ended
    // by the same signal never did (they died by their parent-death signal, and what
    // they had started in their groups lived on). Children get the program's choice back.
    let group_stops = [sys::SIGTERM, sys::SIGHUP, sys::SIGQUIT]
        .map(|signal| (signal, sys::ignore_signal(signal)));
    let sigpipe = sys::ignore_signal(sys::SIGPIPE);
    // The server reaps its children through their pidfds: with SIGCHLD ignored (a
    // disposition a program can inherit across `exec`), or a handler of the program's
    // that reaps, the kernel or the handler would take their statuses first, and none
    // would be reported (children get the program's choice back).
    let sigchld = sys::default_signal(sys::SIGCHLD);
    sys::raise_fd_limit();
    // Never changes in the server; children compare the requested environment with it.
    let env = messages::env_block(std::env::vars_os());
    // Computed once here, so that each child (an image of this process) finds it cached
    // when it checks the parent's executable against its own: a `stat` of
    // `/proc/self/exe` and a walk of the loader's tables fewer per child.
    let _ = sys::exe_identity();
    // Likewise the panic hook that records a child's panics for its report, the
    // thread-local state that decoding a call and encoding its result use, and the exit
    // hook that joins a child's children when it calls `exit`.
    crate::bootstrap::panic::install_panic_hook();
    crate::wire::codec::register_thread_state();
    crate::bootstrap::register_exit_hook();
    let info = FromServer {
        pid: sys::getpid(),
        executed,
        sigpipe,
        sigchld,
        group_stops,
        ids: sys::own_ids(),
        env: &env.0,
        blocks_signals: sys::blocks_signals(),
    };
    let mut conn = Conn::new(control, messages::MAX_CONTROL);
    let mut kids: Vec<Kid> = Vec::new();
    let mut spares = Spares {
        retired: None,
        placement: Placement::new(),
    };
    let mut keep_spare = false;
    // Whether the code was put on huge pages (or left where it is for good).
    let mut code_placed = false;
    let mut cgroups = Cgroups {
        home: None,
        made: 0,
        leftover: Vec::new(),
    };
    // The process groups of daemons that ended (reaped here, so in no `Kid` any more)
    // while members of their group lived on (one that ignores a supervisor's `SIGTERM`
    // through the child's grace, say): killed with the daemons when the parent goes,
    // as a group whose leader still runs is. A group is dropped once it has no member
    // left, looked at every `LINGERING_LOOK` at least: until then its number is no
    // other group's, and afterwards the system may give it to another (pids wrap
    // around), which a second is far too short for.
    let mut lingering: Vec<u32> = Vec::new();
    loop {
        let missing_spare = keep_spare && !kids.iter().any(|k| k.spare.is_some());
        cgroups.retry();
        lingering.retain(|&group| sys::group_exists(group));
        let ready = {
            let mut fds = Vec::with_capacity(kids.len() + 1);
            fds.push(conn.fd());
            fds.extend(kids.iter().map(|k| k.pidfd.as_fd()));
            // With a spare to make, only look; a request already waiting goes first.
            let deadline = if missing_spare {
                Some(Instant::now())
            } else {
                let cgroup = (!cgroups.leftover.is_empty()).then_some(CGROUP_RETRY);
                let group = (!lingering.is_empty()).then_some(LINGERING_LOOK);
                cgroup
                    .into_iter()
                    .chain(group)
                    .min()
                    .map(|t| Instant::now() + t)
            };
            match sys::wait_readable(&fds, deadline) {
                Ok(ready) => ready,
                Err(_) => break,
            }
        };
        if missing_spare && !ready.iter().any(|r| r.ready()) {
            // Before the first spare (after the first child, whose start it would
            // delay by about a millisecond): every child forked from now on runs its
            // code from huge pages, without a page fault per 64 KiB of it, and unmaps it
            // at its exit in a few steps (DESIGN.md, "Where a spawn's time goes").
            if !code_placed {
                code_placed = true;
                if std::env::var_os(HUGE_CODE_VAR).is_none_or(|v| v != "0") {
                    let _ = sys::code_on_huge_pages();
                }
                continue;
            }
            match fork_spare(&info, death.as_ref(), &mut spares.placement) {
                Ok(kid) => kids.push(kid),
                // Requests are forked on demand until a spare can be made.
                Err(_) => keep_spare = false,
            }
            continue;
        }
        // Reap from the end, so that removing keeps the indices of those not yet seen.
        for i in (0..kids.len()).rev() {
            if ready[i + 1].ready()
                && let Ok(Some(status)) = sys::try_reap(kids[i].pidfd.as_fd())
            {
                let kid = kids.swap_remove(i);
                if kid.daemon && kid.group && sys::group_exists(kid.pid) {
                    lingering.push(kid.pid);
                }
                report(kid, status, &mut cgroups);
            }
        }
        if ready[0].ready() {
            // The first frame, then any that arrived with it: those are already read
            // from the socket, which polling would not report again.
            let mut next = conn.recv(None).map(Some);
            loop {
                let frame = match next {
                    Ok(Some(frame)) => frame,
                    // A request whose descriptors found no room here (the server out of
                    // descriptors: each child holds two, its pidfd and status pipe) is
                    // refused, saying so, and the server goes on: the frames after it
                    // are read as ever. (Every request carries descriptors and waits
                    // for its answer.)
                    Err(RecvFrameError::Io(ref e)) if sys::descriptors_lost(e) => {
                        let no_room = io::Error::from_raw_os_error(sys::EMFILE);
                        let refused =
                            Refusal::os("the fork server's receive of the request", &no_room);
                        if let Err(e) = answer(&mut conn, Err(refused)) {
                            next = Err(e.into());
                            break;
                        }
                        next = conn.buffered_frame();
                        continue;
                    }
                    _ => break,
                };
                match frame.tag {
                    messages::FORK => {
                        let started = start_child(
                            &info,
                            &frame.body,
                            frame.fds,
                            death.as_ref(),
                            &mut kids,
                            &mut spares,
                            &mut cgroups,
                        );
                        if cfg!(debug_assertions) && started.is_ok() && dies_unanswered(&frame.body)
                        {
                            sys::exit_now(BOOTSTRAP_FAILURE);
                        }
                        if let Err(e) = answer(&mut conn, started) {
                            next = Err(e.into());
                            break;
                        }
                        keep_spare = true;
                    }
                    messages::START_TRACKER => {
                        let started = start_tracker(&info, frame.fds, death.as_ref(), &mut kids);
                        if let Err(e) = answer(&mut conn, started) {
                            next = Err(e.into());
                            break;
                        }
                    }
                    _ => {}
                }
                next = conn.buffered_frame();
            }
            // The parent closed the connection (it exited or was killed), or broke the
            // protocol: either way, stop.
            if next.is_err() {
                break;
            }
        }
    }
    let (doomed, living): (Vec<Kid>, Vec<Kid>) = kids
        .into_iter()
        .partition(|k| k.daemon || k.spare.is_some());
    for kid in &doomed {
        // A daemon that leads a process group takes what it started in the group
        // along (a server it runs, say), as a stop by its supervisor would. Its group's
        // id is its pid, which no other process can have before it is reaped here.
        if kid.group {
            let _ = sys::signal_group(kid.pid, sys::SIGKILL);
        }
        let _ = sys::send_signal(kid.pidfd.as_fd(), sys::SIGKILL);
    }
    for group in lingering {
        if sys::group_exists(group) {
            let _ = sys::signal_group(group, sys::SIGKILL);
        }
    }
    // Reap them (for a second at most), so that none is seen running, re-parented,
    // after this server is gone; and remove their cgroups.
    let deadline = Instant::now() + Duration::from_secs(1);
    for kid in doomed {
        // A pidfd becomes readable when its process has exited.
        if sys::wait_readable(&[kid.pidfd.as_fd()], Some(deadline)).is_ok()
            && let Ok(Some(status)) = sys::try_reap(kid.pidfd.as_fd())
        {
            report(kid, status, &mut cgroups);
        }
    }
    // The tracker is not this server's to stop. After a normal exit the parent waited
    // for it, and it is reaped here; when the parent is gone it is finishing its work
    // (unlinking what the parent left) and gets the same second, so that it is reaped
    // here rather than re-parented. One still running after that lives on.
    let parent_gone = death
        .as_ref()
        .is_some_and(|d| sys::poll_now(d.as_fd()).is_ok_and(|r| r.ready()));
    let tracker_deadline = Instant::now() + Duration::from_secs(1);
    let mut living = living;
    living.retain(|kid| {
        if !kid.tracker {
            return true;
        }
        if parent_gone {
            let _ = sys::wait_readable(&[kid.pidfd.as_fd()], Some(tracker_deadline));
        }
        // Reaped, it is waited for no more below.
        !matches!(sys::try_reap(kid.pidfd.as_fd()), Ok(Some(_)))
    });
    // Children that outlive their parent and have a cgroup: stay until they end, and
    // remove it then. Meanwhile every other child still here is reaped as it ends (it
    // stayed a zombie until the last capped child ended); those still running after
    // that are re-parented as this server exits.
    while living.iter().any(|k| k.cgroup.is_some()) {
        let fds: Vec<_> = living.iter().map(|k| k.pidfd.as_fd()).collect();
        let Ok(ready) = sys::wait_readable(&fds, None) else {
            break;
        };
        let mut stalled = false;
        for i in (0..living.len()).rev() {
            if !ready[i].ready() {
                continue;
            }
            match sys::try_reap(living[i].pidfd.as_fd()) {
                Ok(Some(status)) => report(living.swap_remove(i), status, &mut cgroups),
                // Ended, but its status is not here yet (a tracer's to take first):
                // looked at again in a moment rather than at once.
                Ok(None) => stalled = true,
                // Ended and not this server's to reap (its pidfd stays readable): looked
                // at no more, or the wait would never sleep again; its cgroup, if it
                // has one, goes with the leftovers.
                Err(_) => {
                    if let Some(dir) = living.swap_remove(i).cgroup {
                        cgroups.leftover.push(dir);
                    }
                }
            }
        }
        if stalled {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // What their own children held a moment longer.
    let deadline = Instant::now() + CGROUP_RETRY;
    while !cgroups.leftover.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        cgroups.retry();
    }
    sys::exit_now(0)
}

/// In builds with debug assertions, for tests: whether the server is to die now, having
/// served the request `body` but before answering it (a server killed at that moment),
/// because the child's environment names, in `MULTIPROC_TEST_DIE_UNANSWERED`, a file
/// that this server can create (so that one server dies, and a request sent again to
/// another is answered).
fn dies_unanswered(body: &[u8]) -> bool {
    const VAR: &[u8] = b"MULTIPROC_TEST_DIE_UNANSWERED=";
    let Ok(request) = postcard::from_bytes::<ForkRequest>(body) else {
        return false;
    };
    request
        .env
        .0
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(VAR))
        .is_some_and(|path| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(sys::path_from_bytes(path.to_vec()))
                .is_ok()
        })
}

/// Reports a reaped child's end on its status pipe, with whether the out-of-memory
/// killer struck in its cgroup, which goes.
fn report(kid: Kid, status: sys::WaitStatus, cgroups: &mut Cgroups) {
    let oom_killed = kid.cgroup.is_some_and(|dir| cgroups.finish(dir));
    if let Some(pipe) = kid.status {
        let reaped = messages::Reaped { status, oom_killed };
        // The parent may have stopped listening; nothing to do then.
        let _ = sys::write_all(pipe.as_fd(), &messages::status_to_bytes(reaped));
    }
}

/// Answers a request with `FORKED`: the new process's pid and a pidfd for it, or why
/// there is none.
fn answer(conn: &mut Conn, started: Result<(u32, OwnedFd), Refusal>) -> io::Result<()> {
    let (reply, pidfd): (ForkReply, Option<OwnedFd>) = match started {
        Ok((pid, pidfd)) => (Ok(pid), Some(pidfd)),
        Err(e) => (Err(e), None),
    };
    let body = postcard::to_stdvec(&reply).unwrap_or_default();
    let fds: Vec<_> = pidfd.iter().map(AsFd::as_fd).collect();
    conn.send(messages::FORKED, &[&body], &fds)
}

/// Handles one request: hands it to the spare, or forks a child for it. Returns the
/// child's pid and a pidfd for the requester.
fn start_child(
    info: &FromServer<'_>,
    body: &[u8],
    fds: Vec<OwnedFd>,
    death: Option<&OwnedFd>,
    kids: &mut Vec<Kid>,
    spares: &mut Spares,
    cgroups: &mut Cgroups,
) -> Result<(u32, OwnedFd), Refusal> {
    let mut request: ForkRequest = postcard::from_bytes(body)
        .map_err(|e| Refusal::other(format!("malformed request: {e}")))?;
    let [channel, status, stdin, stdout, stderr]: [OwnedFd; 5] =
        fds.try_into().map_err(|fds: Vec<OwnedFd>| {
            Refusal::other(format!("request carried {} descriptors, not 5", fds.len()))
        })?;
    // A capped child's cgroup exists before the child, which joins it first thing.
    let cgroup = match request.memory_cgroup {
        Some(bytes) => Some(cgroups.make(bytes)?),
        None => None,
    };
    let with_cgroup;
    let body = match &cgroup {
        Some(dir) => {
            request.cgroup = Some(messages::path_bytes(dir.clone()));
            with_cgroup = postcard::to_stdvec(&request)
                .map_err(|e| Refusal::other(format!("request: {e}")))?;
            &with_cgroup[..]
        }
        None => body,
    };
    let started = assign_or_fork(
        info,
        &request,
        body,
        [channel, status, stdin, stdout, stderr],
        death,
        kids,
        spares,
    );
    match started {
        Ok((pid, pidfd)) => {
            if let Some(kid) = kids.iter_mut().find(|k| k.pid == pid) {
                kid.cgroup = cgroup;
            }
            Ok((pid, pidfd))
        }
        Err(e) => {
            if let Some(dir) = cgroup {
                cgroups.finish(dir);
            }
            Err(e)
        }
    }
}

/// Hands `request` (encoded: `body`) to the spare, or forks a child for it.
///
/// The connection an assignment went on is kept (in `spares.retired`) until the next
/// assignment, and closed before that is sent. Closing a Unix socket while a descriptor
/// of one is in flight anywhere (this assignment's channel, until the spare has read
/// it; or the next request's, which a parent that has joined its child may have sent
/// already) makes the kernel schedule its socket garbage collector, a kernel thread
/// woken for one more CPU's worth of work at every spawn (`multiproc-bench loop spawn
/// 2000`, interleaved runs: 11–13% less time per spawn + join once it is not woken).
fn assign_or_fork(
    info: &FromServer<'_>,
    request: &ForkRequest,
    body: &[u8],
    [channel, status, stdin, stdout, stderr]: [OwnedFd; 5],
    death: Option<&OwnedFd>,
    kids: &mut Vec<Kid>,
    spares: &mut Spares,
) -> Result<(u32, OwnedFd), Refusal> {
    drop(spares.retired.take());
    // A parent whose users or groups are not the server's (it dropped its privileges
    // after `init`): the child takes the parent's, and the answer waits for that, so
    // that the parent can signal the child as soon as it has its pid (a spare, forked
    // ahead with the server's, would run as those until it took the request).
    if request.ids.is_some() && request.ids != info.ids {
        let fds = [channel, status, stdin, stdout, stderr];
        return fork_child_taken(info, request, fds, death, kids);
    }
    if let Some(kid) = kids.iter_mut().find(|k| k.spare.is_some()) {
        // The parent's pidfd first: once assigned, the spare runs the call, and a copy
        // that failed afterwards would fail the spawn of a child left running it.
        let pidfd = sys::dup(kid.pidfd.as_fd()).map_err(|e| Refusal::os("dup", &e))?;
        let mut spare = kid.spare.take();
        // Where the server blocks signals, the spare closes `taken` once it has dropped
        // those its mask held (see `FromServer::blocks_signals`), and the answer waits
        // for that.
        let held = if info.blocks_signals {
            Some(sys::pipe().map_err(|e| Refusal::os("pipe", &e))?)
        } else {
            None
        };
        let mut passed = vec![
            channel.as_fd(),
            stdin.as_fd(),
            stdout.as_fd(),
            stderr.as_fd(),
        ];
        passed.extend(held.as_ref().map(|(_, taken)| taken.as_fd()));
        // Before it has the request, so that the spare, idle yet, cannot have moved
        // itself elsewhere meanwhile (its call may).
        in_its_group(request, kid.pid);
        // A spare that was killed cannot take it; it is reaped like any child.
        if let Some(Ok(())) = spare
            .as_mut()
            .map(|s| s.send(messages::FORK, &[body], &passed))
        {
            if let Some((wait, taken)) = held {
                drop(taken);
                // Closed by the spare once it has dropped them, or as it ends; one
                // stopped before then is not waited for past a few seconds.
                let until = Instant::now() + Duration::from_secs(5);
                let _ = sys::wait_readable(&[wait.as_fd()], Some(until));
            }
            // How long spares wait for their assignments: the next one looks for its
            // own that long before it sleeps.
            let waited = kid.forked_at.elapsed();
            looking::ASSIGNMENT.took(waited);
            spares.placement.assigned(kid.seq, kid.pinned, waited);
            spares.retired = spare;
            kid.status = Some(status);
            kid.daemon = request.daemon;
            kid.group = request.process_group;
            return Ok((kid.pid, pidfd));
        }
    }
    let fds = [channel, status, stdin, stdout, stderr];
    // A fresh child has the server's mask too until it drops what it held.
    if info.blocks_signals {
        return fork_child_taken(info, request, fds, death, kids);
    }
    fork_child(info, request, fds, death, kids, None)
}

/// [`fork_child`], the answer waiting until the child has closed `taken` (see
/// `become_requested`: it has the parent's users and groups, and has dropped the signals
/// its mask held).
fn fork_child_taken(
    info: &FromServer<'_>,
    request: &ForkRequest,
    fds: [OwnedFd; 5],
    death: Option<&OwnedFd>,
    kids: &mut Vec<Kid>,
) -> Result<(u32, OwnedFd), Refusal> {
    let (wait, taken) = sys::pipe().map_err(|e| Refusal::os("pipe", &e))?;
    let started = fork_child(info, request, fds, death, kids, Some(taken))?;
    // Closed by the child once it has them, or as it ends; a child stopped before then
    // is not waited for past a few seconds.
    let until = Instant::now() + Duration::from_secs(5);
    let _ = sys::wait_readable(&[wait.as_fd()], Some(until));
    Ok(started)
}

/// Forks a child for `request` (see [`assign_or_fork`]); `taken` goes to the child (see
/// `become_requested`).
fn fork_child(
    info: &FromServer<'_>,
    request: &ForkRequest,
    [channel, status, stdin, stdout, stderr]: [OwnedFd; 5],
    death: Option<&OwnedFd>,
    kids: &mut Vec<Kid>,
    taken: Option<OwnedFd>,
) -> Result<(u32, OwnedFd), Refusal> {
    // The server is single-threaded (checked when it started; it never creates threads),
    // so the child is a consistent copy. It unblocks what was held for it in
    // `become_requested`.
    match fork_holding_group_stops(info).0 {
        Err(e) => Err(Refusal::os("fork failed", &e)),
        Ok(Forked::Child) => {
            drop(status);
            let death = death.and_then(|d| sys::dup(d.as_fd()).ok());
            let stdio = [stdin, stdout, stderr];
            become_requested(info, request, channel, stdio, death, taken)
        }
        Ok(Forked::Parent(pid)) => {
            drop((channel, stdin, stdout, stderr));
            in_its_group(request, pid);
            let mut kid = new_kid(pid, Some(status), request.daemon, None)?;
            kid.group = request.process_group;
            for_parent(kid, kids)
        }
    }
}

/// A child that leads a process group of its own (`process_group`) does so before the
/// spawn's answer, not only once it has run: a signal sent to the program's group as
/// soon as the spawn returned (a supervisor's stop) would otherwise reach it. The
/// child does it again itself; should this fail (the child gone), that says so. (A
/// child forked fresh runs meanwhile: one whose call moves it to another group at once
/// may be moved back, a call that contradicts its own `process_group`.)
fn in_its_group(request: &ForkRequest, pid: u32) {
    if request.process_group {
        let _ = sys::make_group_leader(pid);
    }
}

/// Forks (the server is single-threaded), holding the signals the server ignores as
/// sent to whole groups across the fork: one sent to the new process before it has
/// their dispositions back (a `terminate` as soon as the spawn returned, which may come
/// before a child or an assigned spare has run at all) waits for it, instead of being
/// ignored. The server lets go as the fork returns (what came for it meanwhile is
/// ignored then); the new process lets go once it has put the dispositions back, with
/// the mask returned here (the server's, the program's at `init`).
fn fork_holding_group_stops(info: &FromServer<'_>) -> (io::Result<Forked>, sys::SignalMask) {
    let mask = sys::block_signals(&info.group_stop_signals());
    let forked = sys::fork_if_single_threaded().and_then(single);
    if !matches!(forked, Ok(Forked::Child)) {
        sys::set_signal_mask(mask);
    }
    (forked, mask)
}

/// Keeps `kid`, just forked for the parent, and returns its pid and a copy of its pidfd
/// for the parent. A kid whose pidfd cannot be copied (no descriptor free) is killed
/// (and reaped as any other): the parent learns of a failed start, and nothing runs.
fn for_parent(kid: Kid, kids: &mut Vec<Kid>) -> Result<(u32, OwnedFd), Refusal> {
    let copy = sys::dup(kid.pidfd.as_fd());
    if copy.is_err() {
        let _ = sys::send_signal(kid.pidfd.as_fd(), sys::SIGKILL);
    }
    let pid = kid.pid;
    kids.push(kid);
    copy.map(|pidfd| (pid, pidfd))
        .map_err(|e| Refusal::os("dup", &e))
}

fn new_kid(
    pid: u32,
    status: Option<OwnedFd>,
    daemon: bool,
    spare: Option<Conn>,
) -> Result<Kid, Refusal> {
    // Our own child: it cannot be reaped before we wait, so the pid is still its.
    let pidfd = sys::child_pidfd(pid).map_err(|e| Refusal::os("pidfd_open", &e))?;
    Ok(Kid {
        pid,
        pidfd,
        daemon,
        group: false,
        status,
        spare,
        forked_at: Instant::now(),
        pinned: false,
        seq: 0,
        cgroup: None,
        tracker: false,
    })
}

/// Forks the parent's segment tracker on its end of the connection (`fds`, one
/// descriptor). Returns its pid and a pidfd for the parent.
fn start_tracker(
    info: &FromServer<'_>,
    fds: Vec<OwnedFd>,
    death: Option<&OwnedFd>,
    kids: &mut Vec<Kid>,
) -> Result<(u32, OwnedFd), Refusal> {
    let [socket]: [OwnedFd; 1] = fds.try_into().map_err(|fds: Vec<OwnedFd>| {
        Refusal::other(format!(
            "tracker request carried {} descriptors, not 1",
            fds.len()
        ))
    })?;
    // Single-threaded, as for any child: the tracker is a consistent copy.
    match sys::fork_if_single_threaded().and_then(single) {
        Err(e) => Err(Refusal::os("fork failed", &e)),
        Ok(Forked::Child) => {
            // The signals sent to whole groups stay ignored, as in the server: the
            // tracker outlives the program to remove its segments, and a stop of the
            // program's group or cgroup (systemd's) must not take it along.
            let death = death.and_then(|d| sys::dup(d.as_fd()).ok());
            tracker::serve(socket, death, info.executed)
        }
        Ok(Forked::Parent(pid)) => {
            drop(socket);
            let mut kid = new_kid(pid, None, false, None)?;
            kid.tracker = true;
            for_parent(kid, kids)
        }
    }
}

/// Forks a spare child that waits for its assignment.
fn fork_spare(
    info: &FromServer<'_>,
    death: Option<&OwnedFd>,
    placement: &mut Placement,
) -> io::Result<Kid> {
    let (ours, theirs) = sys::stream_pair()?;
    // Held to this CPU for the fork only: the server lets go as the fork returns, the
    // spare as it first runs (see `placement.rs`).
    let pinned = if placement.pin_next() {
        let held = sys::pin_here();
        // The tests' setting holds every spare to check the held path: a spare not
        // held would check nothing (and a server that cannot hold says so there).
        assert!(
            held.is_some() || !placement.holds_all(),
            "a spare could not be held to the server's CPU"
        );
        held
    } else {
        None
    };
    let seq = placement.next_spare();
    let (forked, signals) = fork_holding_group_stops(info);
    let child = matches!(forked, Ok(Forked::Child));
    if child {
        placement.started(seq);
    }
    if let Some(mask) = &pinned
        && !sys::unpin(mask)
    {
        if child {
            // A spare that cannot let go dies unassigned; the server reaps it and
            // forks another.
            sys::exit_now(0);
        }
        placement.give_up();
    }
    match forked? {
        Forked::Child => {
            drop(ours);
            let death = death.and_then(|d| sys::dup(d.as_fd()).ok());
            spare(info, theirs, death, signals)
        }
        Forked::Parent(pid) => {
            drop(theirs);
            let mut kid = new_kid(
                pid,
                None,
                false,
                Some(Conn::new(ours, messages::MAX_CONTROL)),
            )
            .map_err(Refusal::into_io)?;
            kid.pinned = pinned.is_some();
            kid.seq = seq;
            Ok(kid)
        }
    }
}

/// A spare: waits for one assignment, then becomes that child. Exits if the server goes
/// away or retires it.
///
/// It sets no parent-death signal: one set here would kill a spare that the server hands
/// a request and that dies before the spare clears it (a child meant to outlive the
/// server, lost before its call started). The server's end of `control` closes as the
/// server dies, which ends the spare's wait.
fn spare(
    info: &FromServer<'_>,
    control: OwnedFd,
    death: Option<OwnedFd>,
    signals: sys::SignalMask,
) -> ! {
    // Ended by a signal sent to the program's whole group, or not, as the program's
    // processes are (the server, which ignores them, forks another if it is); then the
    // program's mask back, which lets go of what was held for it since the fork (see
    // `fork_holding_group_stops`).
    info.restore_group_stops();
    sys::set_signal_mask(signals);
    let Ok((control, death)) = keep_only(control, death) else {
        sys::exit_now(BOOTSTRAP_FAILURE)
    };
    sys::set_name(SPARE_NAME);
    let mut conn = Conn::new(control, messages::MAX_CONTROL);
    looking::look_only(conn.fd(), &looking::ASSIGNMENT);
    let frame = match conn.recv(None) {
        Ok(frame) if frame.tag == messages::FORK => frame,
        _ => sys::exit_now(0),
    };
    let Ok(request) = postcard::from_bytes::<ForkRequest>(&frame.body) else {
        sys::exit_now(BOOTSTRAP_FAILURE)
    };
    // A fifth descriptor, where the server blocks signals: `taken` (see
    // `FromServer::blocks_signals`).
    let mut fds = frame.fds.into_iter();
    let (Some(channel), Some(stdin), Some(stdout), Some(stderr)) =
        (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        sys::exit_now(BOOTSTRAP_FAILURE)
    };
    let taken = fds.next();
    if fds.next().is_some() {
        sys::exit_now(BOOTSTRAP_FAILURE)
    }
    drop(conn);
    become_requested(
        info,
        &request,
        channel,
        [stdin, stdout, stderr],
        death,
        taken,
    )
}

/// Keeps stdio, `control` and `death`; closes every other descriptor. The kept ones are
/// renumbered to CHANNEL_FD and the one after it.
pub(crate) fn keep_only(
    control: OwnedFd,
    death: Option<OwnedFd>,
) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    let mut kept = sys::keep_only(
        [Some(control), death].into_iter().flatten().collect(),
        CHANNEL_FD,
    )?
    .into_iter();
    let control = kept
        .next()
        .ok_or_else(|| io::Error::other("the connection was not kept"))?;
    let death = kept.next();
    sys::set_cloexec(control.as_fd(), true)?;
    if let Some(d) = &death {
        sys::set_cloexec(d.as_fd(), true)?;
    }
    Ok((control, death))
}

/// The server forks only while it has one thread, which it always has.
fn single(forked: Option<Forked>) -> io::Result<Forked> {
    forked.ok_or_else(|| io::Error::other("the fork server has another thread"))
}
