//! Resource limits with real processes: a child and a pool task allocating 2 GiB (and
//! touching it) under a 256 MiB cap, through a cgroup and through the address-space
//! fallback; spinning under a 1 s CPU limit (per task in a pool); opening 10,000 files
//! under a 64-file limit. Each ends with `LimitExceeded` naming the limit, the pool
//! replaces its worker and runs the next task; other deaths and panics under limits
//! stay what they are. No cgroup directory is left behind, also when the parent is
//! SIGKILLed with capped workers running.
#![allow(unsafe_code)] // a test kills a helper with kill(2)

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Helper, trial};
use multiproc::{Builder, Limit, Limits, MemoryCap, Pool, ProcessError, StartMethod, TaskError};

const T: Duration = Duration::from_secs(60);
const CAP: u64 = 256 << 20;

fn main() {
    common::main_checked(
        vec![
            trial("spawn_memory_cgroup", spawn_memory_cgroup),
            trial("spawn_memory_cgroup_exec", spawn_memory_cgroup_exec),
            trial(
                "spawn_memory_cgroup_too_small_to_start",
                spawn_memory_cgroup_too_small_to_start,
            ),
            trial("spawn_memory_address_space", spawn_memory_address_space),
            trial(
                "spawn_memory_address_space_argument_too_large",
                spawn_memory_address_space_argument_too_large,
            ),
            trial("spawn_cpu_time", spawn_cpu_time),
            trial("cpu_time_of_duration_max_is_no_limit", cpu_time_max),
            trial(
                "cpu_time_with_sigxcpu_ignored_by_the_program",
                cpu_time_with_sigxcpu_ignored,
            ),
            trial(
                "cpu_time_of_spawn_fork_from_a_thread_that_blocks_sigxcpu",
                cpu_time_with_sigxcpu_blocked,
            ),
            trial(
                "cpu_time_under_a_lower_inherited_hard_limit",
                cpu_time_under_a_lower_hard_limit,
            ),
            trial("spawn_open_files", spawn_open_files),
            trial(
                "children_get_the_parents_open_files_limit",
                children_get_the_parents_open_files_limit,
            ),
            trial(
                "spawn_other_ends_under_limits_stay_what_they_are",
                spawn_other_ends_stay,
            ),
            trial("pool_memory_cgroup_goes_on", pool_memory_cgroup),
            trial(
                "pool_memory_cgroup_context_too_large",
                pool_memory_cgroup_context_too_large,
            ),
            trial(
                "pool_memory_address_space_argument_too_large",
                pool_memory_address_space_argument_too_large,
            ),
            trial(
                "pool_memory_address_space_goes_on",
                pool_memory_address_space,
            ),
            trial("pool_cpu_time_per_task_goes_on", pool_cpu_time),
            trial("pool_open_files_goes_on", pool_open_files),
            trial(
                "no_cgroup_left_when_the_parent_is_sigkilled",
                no_cgroup_left_when_parent_sigkilled,
            ),
            trial("invalid_limits_refused", invalid_limits_refused),
            trial(
                "shared_memory_over_the_file_size_limit_is_an_error",
                shared_memory_over_the_file_size_limit_is_an_error,
            ),
            trial(
                "a_cgroup_left_by_a_namesake_server_is_passed_over",
                a_namesake_servers_cgroup_is_passed_over,
            ),
            trial(
                "capped_child_outliving_a_sigkilled_parent_keeps_then_removes_its_cgroup",
                capped_child_outlives_parent,
            ),
            trial("spawn_fork_memory_cap", spawn_fork_memory_cap),
            trial(
                "processes_limit_for_an_unprivileged_user",
                processes_limit_unprivileged,
            ),
        ],
        helpers,
        Duration::from_secs(600),
        no_cgroup_left,
    );
}

fn helpers(mode: &str) {
    match mode {
        "capped_pool" => {
            let pool = Pool::builder()
                .processes(2)
                .limits(Limits::new().memory(CAP).memory_cap(MemoryCap::Cgroup))
                .build()
                .unwrap();
            // Both workers up (each answered a task).
            let pids = pool.map(|_: u8| std::process::id(), [0u8, 1]).unwrap();
            println!("workers {pids:?}");
            std::thread::sleep(T);
        }
        "capped_child" => {
            // Not a daemon: it outlives this process, as Python's children do.
            let child = Builder::new()
                .limits(cgroup_cap())
                .spawn(sleep_long, ())
                .unwrap();
            println!("child {}", child.pid());
            // And one without a cap, which ends soon after this process is gone.
            let brief = Builder::new().spawn(nap, 3_000).unwrap();
            println!("brief {}", brief.pid());
            std::thread::sleep(T);
        }
        "fork_capped" => {
            // SAFETY: this helper has no thread of its own besides this one, and the
            // child only allocates.
            let mut child = unsafe {
                Builder::new()
                    .limits(Limits::new().memory(CAP))
                    .spawn_fork(|| hog(2 << 30))
            }
            .unwrap();
            match child.join_timeout(T) {
                Err(ProcessError::LimitExceeded { limit, .. }) => println!("limit {limit}"),
                other => println!("other {other:?}"),
            }
        }
        "processes_unprivileged" => {
            // Run as an unprivileged user: RLIMIT_NPROC does not apply to root.
            for limits in [Limits::new(), Limits::new().processes(1)] {
                let mut child = Builder::new()
                    .limits(limits.clone())
                    .spawn(start_one, ())
                    .unwrap();
                println!(
                    "{:?}: {:?}",
                    limits.is_empty(),
                    child.join_timeout(T).unwrap()
                );
            }
        }
        "capped_after_a_namesake" => {
            // The fork server up, with no cgroup made yet; then a cgroup under the name
            // its first would take, as an earlier server of the same pid, killed, left.
            Builder::new()
                .spawn(double, 0)
                .unwrap()
                .join_timeout(T)
                .unwrap();
            let server = common::fork_server_of(std::process::id()).expect("the fork server");
            let namesake = cgroup_home().join(format!("multiproc-{server}-1"));
            std::fs::create_dir(&namesake).unwrap();
            println!("namesake {}", namesake.display());
            let r = Builder::new()
                .limits(cgroup_cap())
                .spawn(double, 21)
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.join_timeout(T).map_err(|e| e.to_string()));
            // Left for the test to look at (it removes it if the server did not).
            println!("capped {r:?}");
        }
        "cpu_with_sigxcpu_ignored" => {
            for method in [StartMethod::ForkServer, StartMethod::Spawn] {
                let mut child = Builder::new()
                    .start_method(method)
                    .limits(Limits::new().cpu_time(Duration::from_secs(1)))
                    .spawn(burn, 3000)
                    .unwrap();
                match child.join_timeout(T) {
                    Err(ProcessError::LimitExceeded { limit, .. }) => {
                        println!("{method:?} ended limit {limit}")
                    }
                    other => println!("{method:?} ended other {other:?}"),
                }
            }
        }
        "cpu_under_a_lower_hard_limit" => {
            let mut child = Builder::new()
                .limits(Limits::new().cpu_time(Duration::from_secs(30)))
                .spawn(spin, ())
                .unwrap();
            match child.join_timeout(T) {
                Err(ProcessError::LimitExceeded { limit, .. }) => println!("ended limit {limit}"),
                other => println!("ended other {other:?}"),
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
}

/// Allocates `bytes` and writes every byte; returns the length.
fn hog(bytes: usize) -> usize {
    let mut v: Vec<u8> = Vec::new();
    v.resize(bytes, 1);
    v.len()
}

/// Spins for ever.
fn spin(_: ()) {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Spins for `ms` of CPU time, and returns how much CPU this process has used in all.
fn burn(ms: u64) -> Duration {
    let started = cpu_used();
    let mut x = 0u64;
    while cpu_used() - started < Duration::from_millis(ms) {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
    cpu_used()
}

fn cpu_used() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Opens `n` files at once, the way code that leaks descriptors does.
fn open_many(n: usize) -> usize {
    let files: Vec<std::fs::File> = (0..n)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    files.len()
}

/// Says it runs, then spins for ever.
fn say_then_spin(running: multiproc::Event) {
    running.set();
    spin(())
}

fn double(x: u64) -> u64 {
    x * 2
}

fn cgroup_cap() -> Limits {
    Limits::new().memory(CAP).memory_cap(MemoryCap::Cgroup)
}

fn address_space_cap() -> Limits {
    Limits::new()
        .memory(CAP)
        .memory_cap(MemoryCap::AddressSpace)
}

fn expect_limit(r: Result<usize, ProcessError>, want: Limit) -> String {
    match r {
        Err(ProcessError::LimitExceeded { limit, detail }) if limit == want => detail,
        other => panic!("expected the {want} limit, got {other:?}"),
    }
}

fn spawn_memory(limits: Limits, method: StartMethod) -> String {
    let mut child = Builder::new()
        .limits(limits)
        .start_method(method)
        .spawn(hog, 2 << 30)
        .unwrap();
    let detail = expect_limit(child.join_timeout(T), Limit::Memory);
    println!("{method:?}: {detail}");
    detail
}

fn spawn_memory_cgroup() {
    let detail = spawn_memory(cgroup_cap(), StartMethod::ForkServer);
    assert!(detail.contains("out-of-memory killer"), "{detail}");
    // Under the cap, the same work goes through.
    let mut child = Builder::new()
        .limits(cgroup_cap())
        .spawn(hog, 64 << 20)
        .unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 64 << 20);
}

/// A cap too small for the child to start at all (one byte) is still the memory limit
/// (it read as a process lost before its call started), and says its size.
fn spawn_memory_cgroup_too_small_to_start() {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .limits(Limits::new().memory(1).memory_cap(MemoryCap::Cgroup))
            .start_method(method)
            .spawn(double, 1)
            .unwrap();
        let detail = match child.join_timeout(T) {
            Err(ProcessError::LimitExceeded {
                limit: Limit::Memory,
                detail,
            }) => detail,
            other => panic!("{method:?}: expected the memory limit, got {other:?}"),
        };
        assert!(detail.contains("out-of-memory killer"), "{detail}");
        assert!(detail.contains("cap of 1 bytes"), "{detail}");
    }
    // A pool whose workers cannot start under it is broken, and says why.
    let pool = Pool::builder()
        .processes(1)
        .limits(Limits::new().memory(1).memory_cap(MemoryCap::Cgroup))
        .build()
        .unwrap();
    match pool.submit(double, 1).unwrap().wait_timeout(T) {
        Err(TaskError::PoolBroken(why)) => {
            assert!(
                why.contains("memory limit") && why.contains("cap of 1 bytes"),
                "{why}"
            )
        }
        other => panic!("a pool of workers that cannot start: {other:?}"),
    }
    pool.join_timeout(T).unwrap();
}

fn spawn_memory_cgroup_exec() {
    let detail = spawn_memory(cgroup_cap(), StartMethod::Spawn);
    assert!(detail.contains("out-of-memory killer"), "{detail}");
}

fn spawn_memory_address_space() {
    let detail = spawn_memory(address_space_cap(), StartMethod::ForkServer);
    assert!(detail.contains("address-space"), "{detail}");
    let mut child = Builder::new()
        .limits(address_space_cap())
        .spawn(hog, 64 << 20)
        .unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 64 << 20);
}

/// An argument too large for the child's address-space cap: decoding it under the cap
/// aborts the child before its call starts, which is the cap's doing as much as an
/// allocation in the call (it read as a process lost before its call started). A child
/// that aborts before its limits are in force is still lost.
fn spawn_memory_address_space_argument_too_large() {
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut child = Builder::new()
            .limits(address_space_cap())
            .start_method(method)
            .spawn(arg_len, vec![1u8; 300 << 20])
            .unwrap();
        let detail = expect_limit(child.join_timeout(T), Limit::Memory);
        assert!(detail.contains("256 MiB"), "{method:?}: {detail}");
    }
}

fn spawn_cpu_time() {
    let t = Instant::now();
    let mut child = Builder::new()
        .limits(Limits::new().cpu_time(Duration::from_secs(1)))
        .spawn(spin, ())
        .unwrap();
    match child.join_timeout(T) {
        Err(ProcessError::LimitExceeded {
            limit: Limit::CpuTime,
            ..
        }) => {}
        other => panic!("expected the CPU time limit, got {other:?}"),
    }
    println!("a spinning child was stopped after {:?}", t.elapsed());
}

/// A fork server whose pid an earlier one had, killed before it removed its cgroups,
/// finds its first cgroup's name taken: it passes over it (a capped spawn failed, "File
/// exists").
fn a_namesake_servers_cgroup_is_passed_over() {
    let h = Helper::start("capped_after_a_namesake");
    let namesake = h.expect("namesake ", T);
    let capped = h.expect("capped ", T);
    let left = Path::new(&namesake).exists();
    if left {
        let _ = std::fs::remove_dir(&namesake);
    }
    assert_eq!(capped, "Ok(42)");
    assert!(!left, "{namesake} is left");
}

/// A program started under a hard CPU limit (`ulimit -Ht 3`) lower than a child's
/// `cpu_time`: the child is stopped a second before the hard limit, with `SIGXCPU`, and
/// the CPU limit is reported (at the hard limit the kernel sends `SIGKILL`, which told
/// nothing of why: a plain `Signaled(SIGKILL)`).
fn cpu_time_under_a_lower_hard_limit() {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    // SAFETY: `setrlimit` is async-signal-safe, on a struct on the stack.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let hard = libc::rlimit {
                rlim_cur: 3,
                rlim_max: 3,
            };
            if libc::setrlimit(libc::RLIMIT_CPU, &hard) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let h = Helper::start_command("cpu_under_a_lower_hard_limit", command, &[]);
    let ended = h.expect("ended ", T);
    assert_eq!(ended, format!("limit {}", Limit::CpuTime), "{ended}");
}

/// A program started with `SIGXCPU` ignored (a launcher's `trap '' XCPU`, kept across
/// `exec`): its children's `cpu_time` still stops them, with either start method. (They
/// inherited the signal ignored, the kernel's `SIGXCPU` at the limit ended nothing, and
/// a child ran on past it.)
fn cpu_time_with_sigxcpu_ignored() {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    // SAFETY: `signal` is async-signal-safe; a plain disposition.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGXCPU, libc::SIG_IGN);
            Ok(())
        });
    }
    let h = Helper::start_command("cpu_with_sigxcpu_ignored", command, &[]);
    for method in ["ForkServer", "Spawn"] {
        let ended = h.expect(&format!("{method} ended "), T);
        assert_eq!(
            ended,
            format!("limit {}", Limit::CpuTime),
            "{method}: {ended}"
        );
    }
}

/// A `spawn_fork` child keeps the mask of the thread that forked it: one that blocks
/// `SIGXCPU` (as programs that take their signals with `sigwait` block them all) held
/// the limit's signal pending, and the child burnt on to the hard limit (none).
fn cpu_time_with_sigxcpu_blocked() {
    let forking = std::thread::spawn(|| {
        // SAFETY: the set is built on the stack before `pthread_sigmask` reads it; only
        // this thread's mask changes.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGXCPU);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        // SAFETY: the child only spins and returns a value.
        let mut child = unsafe {
            Builder::new()
                .limits(Limits::new().cpu_time(Duration::from_millis(200)))
                .spawn_fork(|| burn(5_000))
        }
        .unwrap();
        child.join_timeout(T)
    });
    match forking.join().unwrap() {
        Err(ProcessError::LimitExceeded { limit, .. }) => assert_eq!(limit, Limit::CpuTime),
        other => panic!("expected the CPU-time limit, got {other:?}"),
    }
}

/// `cpu_time(Duration::MAX)` is no limit (it wrapped to a limit of one second).
fn cpu_time_max() {
    let mut child = Builder::new()
        .limits(Limits::new().cpu_time(Duration::MAX))
        .spawn(burn, 1500)
        .unwrap();
    let used = child.join_timeout(T).expect("the child was stopped");
    assert!(used >= Duration::from_millis(1500), "{used:?}");
}

fn spawn_open_files() {
    let mut child = Builder::new()
        .limits(Limits::new().open_files(64))
        .spawn(open_many, 10_000)
        .unwrap();
    let detail = expect_limit(child.join_timeout(T), Limit::OpenFiles);
    assert!(detail.contains("Too many open files"), "{detail}");
    // Within the limit, fine.
    let mut child = Builder::new()
        .limits(Limits::new().open_files(64))
        .spawn(open_many, 20)
        .unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 20);
    // A child that exits with the status a pool worker out of descriptors exits with
    // (121) is a child that exited so, not one at its limit.
    let mut child = Builder::new()
        .limits(Limits::new().open_files(64))
        .spawn(exit_with, 121)
        .unwrap();
    let r = child.join_timeout(T);
    assert!(matches!(r, Err(ProcessError::Exited(121))), "{r:?}");
}

fn exit_with(code: i32) {
    std::process::exit(code)
}

/// The soft and hard limits on open descriptors of the calling process.
fn open_files_limit() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    (l.rlim_cur, l.rlim_max)
}

fn soft_open_files(_: ()) -> u64 {
    open_files_limit().0
}

/// The fork server raises its own soft limit on descriptors to the hard one; its
/// children (forked or executed afresh) get the parent's, as a child of a plain fork
/// would (a `select`-based library, or a program that closes every descriptor up to the
/// limit, depends on it).
fn children_get_the_parents_open_files_limit() {
    let (soft, hard) = open_files_limit();
    // Below the hard limit, so that the server's raised one differs (a step down of
    // one, where the parent's already equals the hard limit: nothing else here needs
    // that last descriptor).
    let ours = if soft >= hard { hard - 1 } else { soft };
    let set = |cur| {
        let l = libc::rlimit {
            rlim_cur: cur,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
    };
    set(ours);
    let seen: Vec<u64> = [StartMethod::ForkServer, StartMethod::Spawn]
        .into_iter()
        .map(|method| {
            let mut child = Builder::new()
                .start_method(method)
                .spawn(soft_open_files, ())
                .unwrap();
            child.join_timeout(T).unwrap()
        })
        .collect();
    set(soft);
    assert_eq!(seen, [ours, ours], "children's soft limits (hard {hard})");
}

fn abort_now(_: ()) {
    std::process::abort()
}

fn panic_plainly(_: ()) {
    panic!("nothing to do with limits")
}

/// Under limits, a death or a panic for another reason is reported as before; without
/// the open-files limit, running out of descriptors is a plain panic.
fn spawn_other_ends_stay() {
    let all = Limits::new()
        .memory(CAP)
        .memory_cap(MemoryCap::Cgroup)
        .cpu_time(Duration::from_secs(30))
        .open_files(64);
    let mut child = Builder::new()
        .limits(all.clone())
        .spawn(abort_now, ())
        .unwrap();
    let r = child.join_timeout(T);
    assert!(
        matches!(r, Err(ProcessError::Signaled(s)) if s == multiproc::Signal::ABRT),
        "{r:?}"
    );
    let mut child = Builder::new()
        .limits(all.clone())
        .spawn(panic_plainly, ())
        .unwrap();
    let r = child.join_timeout(T);
    assert!(matches!(r, Err(ProcessError::Panicked(_))), "{r:?}");
    let running = multiproc::Event::new().unwrap();
    let mut child = Builder::new()
        .limits(all)
        .spawn(say_then_spin, running.clone())
        .unwrap();
    assert!(running.wait_timeout(T), "the child never ran");
    child.kill().unwrap();
    let r = child.join_timeout(T);
    assert!(
        matches!(r, Err(ProcessError::Signaled(s)) if s == multiproc::Signal::KILL),
        "a SIGKILL that was not the out-of-memory killer's: {r:?}"
    );
    // Out of descriptors without the limit: the process's own hard limit (lowered here
    // for the child only) is not multiproc's to report.
    let mut child = Builder::new()
        .limits(Limits::new().memory(CAP))
        .spawn(open_files_under_own_limit, ())
        .unwrap();
    let r = child.join_timeout(T);
    assert!(matches!(r, Err(ProcessError::Panicked(_))), "{r:?}");
}

fn open_files_under_own_limit(_: ()) -> usize {
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(32),
            maximum: Some(32),
        },
    )
    .unwrap();
    open_many(100)
}

fn expect_task_limit<R: std::fmt::Debug>(r: Result<R, TaskError>, want: Limit) -> String {
    match r {
        Err(TaskError::LimitExceeded { limit, detail }) if limit == want => detail,
        other => panic!("expected the {want} limit, got {other:?}"),
    }
}

/// A pool of one worker under `limits`: a task that runs into the limit fails with it,
/// and the next task runs (on a replacement when the limit ended the worker).
fn pool_goes_on(limits: Limits, want: Limit, replaced: bool, offend: impl FnOnce(&Pool) -> String) {
    let pool = Pool::builder().processes(1).limits(limits).build().unwrap();
    assert_eq!(pool.apply(double, 1).unwrap(), 2);
    let before = pool.worker_pids();
    let detail = offend(&pool);
    println!("{want}: {detail}");
    assert_eq!(pool.apply(double, 21).unwrap(), 42, "the pool went on");
    let after = pool.worker_pids();
    assert_eq!(
        before != after,
        replaced,
        "workers {before:?} then {after:?}"
    );
    pool.close();
    pool.join_timeout(T).unwrap();
}

fn pool_memory_cgroup() {
    pool_goes_on(cgroup_cap(), Limit::Memory, true, |pool| {
        expect_task_limit(pool.apply(hog, 2 << 30), Limit::Memory)
    });
}

#[allow(clippy::ptr_arg)] // `map_with` hands the context as `&C`.
fn context_len(ctx: &Vec<u8>, x: u64) -> u64 {
    ctx.len() as u64 + x
}

/// A `map_with` context too large for the workers' memory cap: each worker is killed
/// copying it, before it can begin a task. The map fails with the limit once three
/// workers died that way, and the pool goes on (workers died one after the other, for
/// ever, and the map never returned).
fn pool_memory_cgroup_context_too_large() {
    let limits = Limits::new().memory(64 << 20).memory_cap(MemoryCap::Cgroup);
    let pool = std::sync::Arc::new(Pool::builder().processes(2).limits(limits).build().unwrap());
    assert_eq!(pool.apply(double, 1).unwrap(), 2);
    let (tx, rx) = std::sync::mpsc::channel();
    let mapper = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let _ = tx.send(pool.map_with(vec![1u8; 160 << 20], context_len, 0..4u64));
        })
    };
    let r = rx
        .recv_timeout(T)
        .expect("the map did not return: its workers died for ever");
    mapper.join().unwrap();
    let detail = expect_task_limit(r, Limit::Memory);
    assert!(detail.contains("64 MiB"), "{detail}");
    assert_eq!(pool.apply(double, 21).unwrap(), 42, "the pool went on");
    pool.close();
    pool.join_timeout(T).unwrap();
}

fn arg_len(v: Vec<u8>) -> usize {
    v.len()
}

/// A task argument too large for the workers' address space cap (it travels in a
/// memory file of its own, which the worker maps): the task fails with the memory
/// limit, and the pool goes on (the worker ended with status 0, and the task failed as
/// `WorkerDied`).
fn pool_memory_address_space_argument_too_large() {
    let pool = Pool::builder()
        .processes(1)
        .limits(address_space_cap())
        .build()
        .unwrap();
    assert_eq!(pool.apply(double, 1).unwrap(), 2);
    let mut task = pool.submit(arg_len, vec![1u8; 300 << 20]).unwrap();
    let detail = expect_task_limit(task.wait_timeout(T), Limit::Memory);
    assert!(detail.contains("256 MiB"), "{detail}");
    assert_eq!(pool.apply(double, 21).unwrap(), 42, "the pool went on");
    pool.close();
    pool.join_timeout(T).unwrap();
}

fn pool_memory_address_space() {
    pool_goes_on(address_space_cap(), Limit::Memory, true, |pool| {
        expect_task_limit(pool.apply(hog, 2 << 30), Limit::Memory)
    });
}

/// The CPU limit counts per task: three tasks of 0.8 s each pass a 1 s limit that
/// they would not pass together (even with the limit rounded up to whole seconds); a
/// spinning one does not.
fn pool_cpu_time() {
    let limits = Limits::new().cpu_time(Duration::from_secs(1));
    pool_goes_on(limits, Limit::CpuTime, true, |pool| {
        let used: Vec<Duration> = (0..3).map(|_| pool.apply(burn, 800).unwrap()).collect();
        assert!(
            used[2] > Duration::from_millis(2400),
            "the worker used {used:?} in all"
        );
        // In a map, each item is a task: three items of 600 ms in one chunk.
        let used = pool
            .map_chunked(burn, [600u64; 3], 3)
            .expect("a chunk within the limit per item");
        assert_eq!(used.len(), 3);
        expect_task_limit(pool.apply(spin, ()), Limit::CpuTime)
    });
}

fn pool_open_files() {
    // The worker survives its task's panic (its files closed as it unwound).
    pool_goes_on(
        Limits::new().open_files(64),
        Limit::OpenFiles,
        false,
        |pool| expect_task_limit(pool.apply(open_many, 10_000), Limit::OpenFiles),
    );
    // An item of a map is a task as well: the same error (it was `Panicked`).
    pool_goes_on(
        Limits::new().open_files(64),
        Limit::OpenFiles,
        false,
        |pool| expect_task_limit(pool.map(open_many, [1, 10_000, 2]), Limit::OpenFiles),
    );
    // A task whose argument carries more descriptors (queues' handles) than its worker
    // has room for under the limit: it could not be taken in, the worker ended (with
    // status 0), and the task failed as `WorkerDied`.
    let base = {
        let pool = Pool::new(1).unwrap();
        let n = pool.apply(open_descriptors, ()).unwrap();
        pool.close();
        pool.join_timeout(T).unwrap();
        n
    };
    let queues: Vec<multiproc::Queue<u8>> =
        (0..8).map(|_| multiproc::Queue::new().unwrap()).collect();
    pool_goes_on(
        Limits::new().open_files(base as u64 + 4),
        Limit::OpenFiles,
        true,
        |pool| expect_task_limit(pool.apply(queue_count, queues), Limit::OpenFiles),
    );
}

/// The descriptors this process has open (the directory's own among them).
fn open_descriptors(_: ()) -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn queue_count(queues: Vec<multiproc::Queue<u8>>) -> usize {
    queues.len()
}

fn sleep_long(_: ()) {
    std::thread::sleep(T);
}

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// A capped child that is not a daemon outlives its SIGKILLed parent: its cgroup stays
/// while it runs (the fork server stays for it), and goes when it ends.
fn capped_child_outlives_parent() {
    let mut h = Helper::start("capped_child");
    let child: u32 = h.expect("child ", T).parse().unwrap();
    let brief: u32 = h.expect("brief ", T).parse().unwrap();
    let server = common::fork_server_of(h.child.id()).expect("the helper's fork server");
    assert_eq!(cgroups_of(server).len(), 1);
    // SAFETY: kill(2) on the helper this test started.
    unsafe { libc::kill(h.child.id() as i32, libc::SIGKILL) };
    h.child.wait().unwrap();
    // The server stays for the child (and reaps it).
    assert!(!common::wait_gone(server, Duration::from_millis(500)));
    assert_eq!(cgroups_of(server).len(), 1, "removed under a running child");
    // Meanwhile it reaps the others as they end (the uncapped one 3 s after it
    // started, after its parent is gone): it stayed a zombie until the capped one
    // ended.
    assert!(
        common::eventually(Duration::from_secs(8), || !common::children_of(server)
            .iter()
            .any(|&(p, ..)| p == brief)),
        "the uncapped child is left: {:?}",
        common::children_of(server)
    );
    // SAFETY: kill(2) on the helper's child, which this test's helper started.
    unsafe { libc::kill(child as i32, libc::SIGTERM) };
    assert!(
        common::eventually(T, || cgroups_of(server).is_empty()),
        "left: {:?}",
        cgroups_of(server)
    );
    assert!(common::wait_gone(server, T), "the fork server stayed");
    common::reap(server);
}

/// A child forked straight from its parent has no fork server to make a cgroup: its
/// memory cap is an address-space limit.
fn spawn_fork_memory_cap() {
    let mut h = Helper::start("fork_capped");
    assert_eq!(h.expect("", T), "limit memory");
    assert!(h.wait(T).success());
}

/// Starts a process (and its fork server): how that went, as the error's kind.
fn start_one(_: ()) -> Result<u64, String> {
    match Builder::new().spawn(double, 21) {
        Ok(mut child) => child.join_timeout(T).map_err(|e| e.to_string()),
        Err(multiproc::SpawnError::Io(e)) => Err(format!("{:?}", e.kind())),
        Err(e) => Err(e.to_string()),
    }
}

/// A child of an unprivileged user under `processes(1)` cannot start one; without the
/// limit it can.
fn processes_limit_unprivileged() {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    std::os::unix::process::CommandExt::uid(&mut command, 65534);
    std::os::unix::process::CommandExt::gid(&mut command, 65534);
    let mut h = Helper::start_command("processes_unprivileged", command, &[]);
    assert_eq!(h.expect("true: ", T), "Ok(42)", "without the limit");
    assert_eq!(
        h.expect("false: ", T),
        "Err(\"WouldBlock\")",
        "under the limit"
    );
    assert!(h.wait(T).success());
}

fn invalid_limits_refused() {
    let r = Builder::new()
        .limits(Limits::new().open_files(0))
        .spawn(double, 1);
    assert!(r.is_err(), "a limit of zero was taken");
    let r = Pool::builder()
        .limits(Limits::new().cpu_time(Duration::ZERO))
        .build();
    assert!(r.is_err(), "a limit of zero was taken");
}

/// A helper with a pool of two capped workers is SIGKILLed: its fork server kills the
/// workers and removes their cgroups.
fn no_cgroup_left_when_parent_sigkilled() {
    let mut h = Helper::start("capped_pool");
    h.expect("workers ", T);
    let server = common::fork_server_of(h.child.id()).expect("the helper's fork server");
    let ours = || cgroups_of(server);
    assert_eq!(ours().len(), 2, "a cgroup for each worker: {:?}", ours());
    // SAFETY: kill(2) on the helper this test started.
    unsafe { libc::kill(h.child.id() as i32, libc::SIGKILL) };
    h.child.wait().unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || ours().is_empty()),
        "left: {:?}",
        ours()
    );
    assert!(common::wait_gone(server, Duration::from_secs(10)));
    common::reap(server);
}

/// The directory of this process's memory cgroup (v1, or v2 with the memory controller).
fn cgroup_home() -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Path::new("/sys/fs/cgroup/memory").join(path);
        }
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                let dir = Path::new(root).join(path);
                let enabled =
                    std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                if enabled.split_whitespace().any(|c| c == "memory") {
                    return dir;
                }
            }
        }
    }
    panic!("no memory cgroup for this process: these tests need one they may write to (root)");
}

/// The cgroups fork server `server` made, left now.
fn cgroups_of(server: u32) -> Vec<String> {
    let prefix = format!("multiproc-{server}-");
    std::fs::read_dir(cgroup_home())
        .expect("read the cgroup directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// The check after every test: no cgroup of this process's fork server is left.
fn no_cgroup_left() -> common::AfterCheck {
    // The fork server starts with the first child; make it start now.
    Builder::new()
        .spawn(double, 0)
        .unwrap()
        .join_timeout(T)
        .unwrap();
    let server = common::fork_server_of(std::process::id()).expect("this process's fork server");
    Box::new(move || {
        let mut left = Vec::new();
        if common::eventually(Duration::from_secs(10), || {
            left = cgroups_of(server);
            left.is_empty()
        }) {
            Ok(())
        } else {
            Err(format!(
                "cgroups left in {}: {left:?}",
                cgroup_home().display()
            ))
        }
    })
}

/// Under a file-size limit (`ulimit -f`), shared memory larger than the limit is an
/// error for its caller (a memory file is a file to the limit): its size set past the
/// limit sent the process `SIGXFSZ`, which ended it.
fn shared_memory_over_the_file_size_limit_is_an_error() {
    let mut child = Builder::new()
        .spawn(under_a_file_size_limit, ())
        .expect("spawn");
    let errors = child.join_timeout(T).expect("the child ended by itself");
    assert_eq!(errors.len(), 4, "{errors:?}");
    for e in &errors {
        assert!(e.contains("file-size limit of 65536 bytes"), "{errors:?}");
    }
}

/// What each use of shared memory past a 64 KiB file-size limit says.
fn under_a_file_size_limit(_: ()) -> Vec<String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Made before (its ring is larger than the limit).
    let (tx, rx) = multiproc::pipe::<Vec<u8>>().expect("a pipe");
    let hard = getrlimit(Resource::Fsize).maximum;
    setrlimit(
        Resource::Fsize,
        Rlimit {
            current: Some(64 << 10),
            maximum: hard,
        },
    )
    .expect("setrlimit");
    let name = format!("mp-fsize-{}", std::process::id());
    let small = multiproc::SharedMemory::new(4096).expect("under the limit");
    drop(small);
    let errors = vec![
        multiproc::SharedMemory::new(1 << 20)
            .err()
            .map(|e| e.to_string()),
        multiproc::SharedMemory::create(&name, 1 << 20)
            .err()
            .map(|e| e.to_string()),
        // Larger than the pipe's ring: sent in a memory file of its own.
        tx.send(vec![7; 8 << 20]).err().map(|e| e.to_string()),
        multiproc::Array::<u8>::new(1 << 20)
            .err()
            .map(|e| e.to_string()),
    ];
    drop((tx, rx));
    assert!(
        !std::path::Path::new("/dev/shm").join(&name).exists(),
        "the named segment was left"
    );
    errors.into_iter().map(|e| e.unwrap_or_default()).collect()
}
