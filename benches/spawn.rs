//! Spawn + join latency of an empty function, per start method, side by side with
//! procspawn, CPython's `multiprocessing` and the kernel floor.
//!
//! `cargo bench -p multiproc-bench --bench spawn`

use std::time::Duration;

use criterion::Criterion;
use multiproc::StartMethod;
use multiproc_bench::{python, spawn};

fn main() {
    let _guard = multiproc_bench::init();
    let mut c = Criterion::default().configure_from_args();

    let mut g = c.benchmark_group("spawn_join");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc_forkserver", |b| {
        b.iter_custom(|n| spawn::multiproc(StartMethod::ForkServer, n))
    });
    g.bench_function("multiproc_spawn", |b| {
        b.iter_custom(|n| spawn::multiproc(StartMethod::Spawn, n))
    });
    g.bench_function("multiproc_fork", |b| b.iter_custom(spawn::multiproc_fork));
    g.bench_function("procspawn", |b| b.iter_custom(spawn::procspawn));
    let floor = std::path::Path::new(env!("CARGO_BIN_EXE_multiproc-bench"));
    g.bench_function("floor_fork_exit_wait", |b| {
        b.iter_custom(|n| spawn::floor(floor, "fork-exit-wait", n))
    });
    g.bench_function("floor_fork_exec_wait", |b| {
        b.iter_custom(|n| spawn::floor(floor, "fork-exec-wait", n))
    });
    g.finish();

    if python::available() {
        let mut g = c.benchmark_group("spawn_join_cpython");
        g.sample_size(10).measurement_time(Duration::from_secs(15));
        for method in ["fork", "forkserver", "spawn"] {
            g.bench_function(method, |b| {
                b.iter_custom(|n| python::run("mp_spawn.py", &[method], n))
            });
        }
        g.finish();
    } else {
        eprintln!("python3 not found: CPython peers skipped");
    }
    c.final_summary();
}
