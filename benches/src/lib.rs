//! Workloads for multiproc's benchmarks, shared by the criterion benches (`cargo bench`)
//! and the side-by-side comparison. Each workload runs `iters` operations and returns the
//! time they took, so that criterion's `iter_custom` and a plain timing loop both use it.
//!
//! Peers: CPython's `multiprocessing` (scripts in `python/`, run with the machine's
//! `python3`), procspawn, and the kernel floor (the same operation in plain `libc` calls,
//! without any library).
#![allow(unsafe_code)] // `spawn_fork` is unsafe by contract

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Calls this first in every benchmark binary's `main`: both libraries recognise their own
/// children here (procspawn first, so that its children do not start multiproc's server).
pub fn init() -> multiproc::Init {
    procspawn::init();
    multiproc::init()
}

/// The empty function that spawn benchmarks run.
pub fn noop(_: ()) {}

/// Spawn + join of an empty function.
pub mod spawn {
    use super::*;
    use multiproc::{Builder, StartMethod};

    /// multiproc, with a start method.
    pub fn multiproc(method: StartMethod, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            let child = Builder::new()
                .start_method(method)
                .spawn(noop, ())
                .expect("spawn");
            child.join().expect("join");
        }
        start.elapsed()
    }

    /// multiproc's `spawn_fork`: a direct fork of the benchmark process.
    pub fn multiproc_fork(iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            // SAFETY: the benchmark runs this on its only working thread, and the closure
            // does nothing.
            let child = unsafe { Builder::new().spawn_fork(|| ()) }.expect("fork");
            child.join().expect("join");
        }
        start.elapsed()
    }

    /// procspawn's `spawn` + `join`.
    pub fn procspawn(iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            procspawn::spawn((), |()| ())
                .join()
                .expect("procspawn join");
        }
        start.elapsed()
    }

    /// The floor, measured by the small `mp-floor` program (`workload` is
    /// `fork-exit-wait` or `fork-exec-wait`).
    pub fn floor(exe: &str, workload: &str, iters: u64) -> Duration {
        super::timed_command(Command::new(exe).arg(workload).arg(iters.to_string()))
    }
}

/// CPython's `multiprocessing`, through the scripts in `python/`.
pub mod python {
    use super::*;

    /// Whether `python3` can be run here.
    pub fn available() -> bool {
        Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The interpreter's version, like `Python 3.11.7`.
    pub fn version() -> Option<String> {
        let out = Command::new("python3").arg("--version").output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `python/<script>` with `args` and `iters`; the script prints the seconds its
    /// timed loop took.
    pub fn run(script: &str, args: &[&str], iters: u64) -> Duration {
        let path = scripts().join(script);
        timed_command(
            Command::new("python3")
                .arg(&path)
                .args(args)
                .arg(iters.to_string()),
        )
    }

    fn scripts() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
    }
}

/// Runs a command that prints the seconds its own timed loop took, and returns them.
fn timed_command(command: &mut Command) -> Duration {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the command prints seconds");
    Duration::from_secs_f64(secs)
}
