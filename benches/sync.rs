//! Locks, events and barriers between processes, side by side with CPython's
//! `multiprocessing` and the process-shared pthread and futex floors.
//!
//! `cargo bench -p multiproc-bench --bench sync`

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use multiproc_bench::{python, spawn, sync};

fn main() {
    let _guard = multiproc_bench::init();
    let mut c = Criterion::default().configure_from_args();
    let floor = Path::new(env!("CARGO_BIN_EXE_multiproc-bench"));
    let py = python::available();

    let mut g = c.benchmark_group("lock_counter");
    g.throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| b.iter_custom(sync::lock_counter));
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_lock.py", &[], n))
        });
    }
    g.bench_function("floor_pthread_mutex", |b| {
        b.iter_custom(|n| spawn::floor(floor, "mutex-counter", n))
    });
    g.bench_function("floor_pthread_robust_mutex", |b| {
        b.iter_custom(|n| spawn::floor(floor, "robust-mutex-counter", n))
    });
    g.finish();

    let mut g = c.benchmark_group("event_handoff");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| b.iter_custom(sync::event_handoff));
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_event.py", &[], n))
        });
    }
    g.bench_function("floor_futex", |b| {
        b.iter_custom(|n| spawn::floor(floor, "futex-ping-pong", n))
    });
    g.finish();

    let mut g = c.benchmark_group("barrier_round");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| b.iter_custom(sync::barrier_rounds));
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_barrier.py", &[], n))
        });
    }
    g.bench_function("floor_pthread_barrier", |b| {
        b.iter_custom(|n| spawn::floor(floor, "pthread-barrier", n))
    });
    g.finish();

    c.final_summary();
}
