//! A new child's set-up before it runs its call: signals, parent-death signal, process
//! group, descriptors, name, directory and environment. For a child of the fork server
//! ([`become_requested`]) and for one forked straight from its parent
//! ([`setup_forked_child`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::messages::{self, CHANNEL_FD, ChildLimits, DEATH_FD, ForkRequest, Launch};
use super::{BOOTSTRAP_FAILURE, CHILD_TOKEN, child, fail_on, format_token};
use crate::sys::{self, AsFd, OwnedFd};

/// What a child of the fork server takes from it.
pub(crate) struct FromServer<'a> {
    pub(crate) pid: u32,
    /// The server was started by executing the program: its command line is its own,
    /// and each child writes its name there (otherwise children show the program's).
    pub(crate) executed: bool,
    /// The program's own SIGPIPE disposition, which the server replaced.
    pub(crate) sigpipe: sys::Disposition,
    /// The program's own SIGCHLD disposition, which the server replaced.
    pub(crate) sigchld: sys::Disposition,
    /// The program's own dispositions of the signals that end a process by default and
    /// that are sent to a whole process group (`SIGTERM`, `SIGHUP`, `SIGQUIT`), which the
    /// server ignores; each process it forks for the program puts them back (see
    /// [`restore_group_stops`](Self::restore_group_stops)).
    pub(crate) group_stops: [(i32, sys::Disposition); 3],
    /// The server's users and groups (the program's when it started the server).
    pub(crate) ids: Option<sys::Ids>,
    /// The server's environment, as a block.
    pub(crate) env: &'a [u8],
    /// The server blocks signals (the program's mask at `init`, which it has). A spare
    /// waits with that mask, and drops the signals pending then as it becomes a child:
    /// one sent to the child meanwhile (a `terminate` as soon as the spawn returned) was
    /// dropped too, and the child ran on. So the answer then waits until the spare (or a
    /// child forked fresh) has dropped them (one round trip to a spare that is looking
    /// for its assignment).
    pub(crate) blocks_signals: bool,
}

impl FromServer<'_> {
    /// The signals sent to whole groups that the server ignores (see
    /// [`group_stops`](Self::group_stops)): held for a child forked fresh until it
    /// has their dispositions back (see `fork_child`).
    pub(crate) fn group_stop_signals(&self) -> [i32; 3] {
        self.group_stops.map(|(signal, _)| signal)
    }

    /// Puts back the program's dispositions of the signals the server ignores as sent
    /// to whole groups: in the processes it forks for the program (a spare as it
    /// starts, so that it is ended, or not, as the program's processes are; a child as
    /// it starts), not in the segment tracker, which outlives the program.
    pub(crate) fn restore_group_stops(&self) {
        for (signal, disposition) in self.group_stops {
            sys::restore_signal(signal, disposition);
        }
    }
}

/// Turns a fresh child of the fork server (just forked, or a spare just assigned) into
/// the requested process: signals, parent-death signal, descriptors, name, directory and
/// environment; then runs the call, or executes the program afresh. `death` is the
/// parent's death pipe; `taken`, closed once the child has its parent's users and
/// groups and has dropped the signals its mask held (the server waits for that before
/// it answers, where either matters). Never returns.
pub(crate) fn become_requested(
    server: &FromServer<'_>,
    request: &ForkRequest,
    channel: OwnedFd,
    stdio: [OwnedFd; 3],
    death: Option<OwnedFd>,
    taken: Option<OwnedFd>,
) -> ! {
    // The program's own dispositions of the signals the server ignores as sent to a
    // whole group, before any is unblocked: one that a child forked fresh got since
    // its fork (a `terminate` as soon as the spawn returned), held for it by the
    // server's mask (see `fork_child`), is delivered as the program would have it.
    server.restore_group_stops();
    // No signal blocked, as in any new process (the server has the mask the program
    // had at `init`: `terminate` and a CPU-time limit did nothing to children of a
    // program that blocked SIGTERM or SIGXCPU first); the default action, and the
    // program's own choices for SIGPIPE and SIGCHLD. Signals pending from before the
    // assignment are dropped where the answer waits for this (see `unblock_signals`).
    sys::unblock_signals(taken.is_some());
    sys::default_signal(sys::SIGINT);
    sys::restore_signal(sys::SIGPIPE, server.sigpipe);
    if request.sigpipe_ignored {
        sys::ignore_signal(sys::SIGPIPE);
    } else if request.sigpipe_default {
        // The parent has the default (a command-line program that ends quietly in a
        // closed pipe, given it back after `init`): so has the child, whose writes to a
        // closed pipe then end it as they end the parent, rather than fail (a
        // `println!` that panics).
        sys::default_signal(sys::SIGPIPE);
    } else if matches!(request.launch, Launch::Exec) || sys::signal_is_default(sys::SIGPIPE) {
        // The parent has a handler of its own, which the child cannot have (an
        // executed one loses every handler; the server found none): ignored, a write
        // to a closed pipe fails, as the parent's survives. A forked child keeps the
        // program's handler of `init`, if the server found one.
        sys::ignore_signal(sys::SIGPIPE);
    }
    sys::restore_signal(sys::SIGCHLD, server.sigchld);
    // Into the memory cgroup the server made for it, before anything else is charged to
    // its old one; across `exec` too.
    if let Some(dir) = &request.cgroup {
        let dir = sys::path_from_bytes(dir.0.clone());
        if let Err(e) = sys::join_cgroup(&dir) {
            let why = format!("cannot join the memory cgroup {}: {e}", dir.display());
            fail_on(channel, &why);
        }
    }
    // The parent's users and groups, where the server's differ (a program that dropped
    // its privileges after `init`): the child must not run as the user the program no
    // longer is, nor as one its parent may not signal. After the cgroup's move, which
    // the server's user may make and the parent's perhaps not.
    // (The child's are the server's, which it inherited: no system call when they match.)
    if let (Some(ids), Some(now)) = (&request.ids, &server.ids)
        && ids != now
        && let Err(e) = sys::become_ids(ids, now)
    {
        fail_on(
            channel,
            &format!("cannot take the parent's users and groups: {e}"),
        );
    }
    // A daemon dies with the server, which dies with the parent; other children do not.
    // After the change of users and groups, which clears the parent-death signal (a
    // daemon of a program that dropped its privileges outlived its server), and before
    // the parent may learn the child's pid.
    let parent_alive = if request.daemon {
        sys::kill_me_with_parent(server.pid)
    } else {
        sys::clear_parent_death_signal().map(|()| true)
    };
    if !matches!(parent_alive, Ok(true))
        || (request.process_group && sys::lead_process_group().is_err())
    {
        sys::exit_now(BOOTSTRAP_FAILURE);
    }
    drop(taken);
    // stdin, stdout, stderr at 0 to 2, the channel at CHANNEL_FD, the death pipe at
    // DEATH_FD; nothing else.
    let has_death = death.is_some();
    let mut fds: Vec<OwnedFd> = stdio.into();
    fds.push(channel);
    fds.extend(death);
    let mut kept = match sys::keep_only(fds, 0) {
        Ok(kept) => kept.into_iter(),
        Err(e) => {
            sys::write_stderr(format!("multiproc: child setup failed: {e}\n").as_bytes());
            sys::exit_now(BOOTSTRAP_FAILURE);
        }
    };
    for stream in kept.by_ref().take(3) {
        sys::leave_open(stream);
    }
    let (Some(channel), death) = (kept.next(), kept.next()) else {
        sys::exit_now(BOOTSTRAP_FAILURE)
    };
    // The parent's limit on open descriptors, not the one the server raised for itself:
    // once only the child's own are left (the server's table may hold more than the
    // parent's limit, and renumbering the kept ones needs free numbers).
    sys::set_fd_limit(request.open_files);
    sys::set_name(&request.name);
    if server.executed {
        sys::set_cmdline(&request.name);
    }
    if let Some(dir) = &request.cwd {
        let dir = sys::path_from_bytes(dir.0.clone());
        if let Err(e) = std::env::set_current_dir(&dir) {
            let why = format!("cannot change directory to {}: {e}", dir.display());
            fail_on(channel, &why);
        }
    }
    match request.launch {
        Launch::Fork => {
            if let Err(e) = replace_env(&request.env.0, Some(server.env)) {
                fail_on(channel, &format!("cannot set the environment: {e}"));
            }
            let _ = sys::set_cloexec(channel.as_fd(), true);
            if let Some(death) = &death {
                let _ = sys::set_cloexec(death.as_fd(), true);
            }
            child::run_forked(channel, death)
        }
        Launch::Exec => {
            let token = match sys::file_id(channel.as_fd()) {
                Ok(id) => format_token(CHANNEL_FD, has_death.then_some(DEATH_FD), id),
                Err(e) => fail_on(channel, &format!("fstat of the call channel: {e}")),
            };
            let env = messages::env_entries(&request.env.0)
                .filter(|(k, _)| *k != CHILD_TOKEN.as_bytes())
                .chain([(CHILD_TOKEN.as_bytes(), token.as_bytes())]);
            let why = sys::exec_self(&request.name, env);
            fail_on(channel, &format!("cannot execute /proc/self/exe: {why}"))
        }
    }
}

/// What a child forked straight from its parent sets up before running its function.
#[derive(Debug)]
pub(crate) struct ForkedChildSetup {
    pub(crate) stdio: [OwnedFd; 3],
    pub(crate) cwd: Option<PathBuf>,
    /// The child leads a new process group.
    pub(crate) process_group: bool,
    /// The complete new environment (a block), when the builder changed it.
    pub(crate) env: Option<messages::Bytes>,
    /// Ask for `SIGKILL` when the forking thread (the parent's main thread) ends.
    pub(crate) parent_death: Option<u32>,
    /// Death pipe to watch on a thread of its own.
    pub(crate) watchdog: Option<OwnedFd>,
}

/// Sets up a child forked straight from its parent (`Builder::spawn_fork`).
pub(crate) fn setup_forked_child(setup: ForkedChildSetup) -> Result<(), String> {
    if let Some(parent) = setup.parent_death
        && !sys::kill_me_with_parent(parent).map_err(|e| format!("prctl: {e}"))?
    {
        return Err("the parent exited during the fork".into());
    }
    if setup.process_group {
        sys::lead_process_group().map_err(|e| format!("setpgid: {e}"))?;
    }
    let stdio = sys::renumber(setup.stdio.into(), 0).map_err(|e| format!("stdio setup: {e}"))?;
    stdio.into_iter().for_each(sys::leave_open);
    if let Some(dir) = &setup.cwd {
        std::env::set_current_dir(dir)
            .map_err(|e| format!("cannot change directory to {}: {e}", dir.display()))?;
    }
    if let Some(env) = &setup.env {
        // The child has only this thread so far (the caller of `spawn_fork` guarantees
        // that no other thread held the environment at the fork).
        replace_env(&env.0, None).map_err(|e| format!("cannot set the environment: {e}"))?;
    }
    if let Some(death) = setup.watchdog {
        spawn_death_watchdog(death).map_err(|e| format!("watchdog thread: {e}"))?;
    }
    Ok(())
}

/// Makes the environment exactly `env` (an environment block), touching only the
/// variables that differ. `current` is this process's environment as a block, when known.
fn replace_env(env: &[u8], current: Option<&[u8]>) -> Result<(), sys::NotSingleThreaded> {
    let current = match current {
        // The usual case: the parent's environment is what the server started with.
        Some(current) if current == env => return Ok(()),
        Some(current) => current.to_vec(),
        None => messages::env_block(std::env::vars_os()).0,
    };
    let wanted: BTreeMap<&[u8], &[u8]> = messages::env_entries(env).collect();
    let had: BTreeMap<&[u8], &[u8]> = messages::env_entries(&current).collect();
    let removed = had
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .map(|k| (*k, None));
    let set = wanted
        .iter()
        .filter(|(k, v)| had.get(*k) != Some(*v))
        .map(|(k, v)| (*k, Some(*v)));
    let changes: Vec<(&[u8], Option<&[u8]>)> = removed.chain(set).collect();
    sys::change_env(&changes)
}

/// Blocks until the read end of the death pipe reports that every writer is gone, then
/// kills this process. Runs on its own thread in children that were forked directly by
/// their parent, where the kernel's parent-death signal would follow the forking thread
/// rather than the parent process.
fn spawn_death_watchdog(death: OwnedFd) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("multiproc-watchdog".into())
        .spawn(move || {
            loop {
                match sys::wait_readable(&[death.as_fd()], None) {
                    Ok(r) if r[0].ready() => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            sys::kill_self()
        })
        .map(drop)
}

/// Sets the resource limits a child runs under, just before its function: the address
/// space (the memory cap where no cgroup enforces it: what is mapped now plus the cap),
/// open files and processes, soft and hard; CPU time last, so that the set-up's own
/// does not count.
pub(crate) fn apply_limits(limits: &ChildLimits) -> Result<(), String> {
    use sys::RlimitKind;
    let set = |kind: RlimitKind, value: u64, what: &str| {
        sys::set_rlimit(kind, value, true).map_err(|e| format!("cannot limit {what}: {e}"))
    };
    let memory = match limits.memory {
        Some(extra) => Some(
            sys::address_space_used()
                .map_err(|e| format!("cannot measure the address space: {e}"))?
                .saturating_add(extra),
        ),
        None => None,
    };
    let space = match (memory, limits.address_space) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(bytes) = space {
        set(RlimitKind::AddressSpace, bytes, "the address space")?;
    }
    if let Some(n) = limits.open_files {
        set(RlimitKind::OpenFiles, n, "open files")?;
    }
    if let Some(n) = limits.processes {
        set(RlimitKind::Processes, n, "processes")?;
    }
    if let Some(cpu) = limits.cpu {
        arm_cpu_limit(cpu).map_err(|e| format!("cannot limit CPU time: {e}"))?;
    }
    Ok(())
}

/// Gives the signal a CPU-time limit ends the process with its default action, and
/// lets it through, if `limits` has one: ignored as the program inherited it (a
/// launcher's `trap '' XCPU`), or handled by the program's handler across a fork, it
/// ended nothing, and the child ran on past its limit; blocked by the thread that
/// called `spawn_fork` (whose mask its child keeps), it stayed pending, and the child
/// ran on to the hard limit (none, usually). Before a setup function runs, which may
/// catch it on purpose (to save its work before the hard limit).
pub(crate) fn default_limit_signals(limits: &ChildLimits) {
    if limits.cpu.is_some() {
        sys::default_signal(sys::SIGXCPU);
        sys::unblock_signal(sys::SIGXCPU);
    }
}

/// Lets this process use `limit` more CPU time from now (rounded up to the whole
/// second `RLIMIT_CPU` counts in), then sends it `SIGXCPU`, which ends it. Only the soft
/// limit moves: a pool worker moves it again before each task.
pub(crate) fn arm_cpu_limit(limit: Duration) -> std::io::Result<()> {
    let until = sys::cpu_time_used().saturating_add(limit);
    // A limit too large to count (`Duration::MAX`) saturates: no limit.
    let seconds = until
        .as_secs()
        .saturating_add(u64::from(until.subsec_nanos() > 0));
    sys::set_rlimit(sys::RlimitKind::CpuSeconds, seconds.max(1), false)
}
