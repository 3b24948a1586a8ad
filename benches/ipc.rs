//! Queues and pipes between two processes, side by side with CPython's
//! `multiprocessing` and plain pipes.
//!
//! `cargo bench -p multiproc-bench --bench ipc`

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use multiproc_bench::{ipc, python, spawn};

fn main() {
    let _guard = multiproc_bench::init();
    let mut c = Criterion::default().configure_from_args();
    let floor = Path::new(env!("CARGO_BIN_EXE_multiproc-bench"));
    let py = python::available();

    let mut g = c.benchmark_group("queue_small");
    g.throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| b.iter_custom(ipc::queue_small));
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_queue.py", &["0"], n))
        });
    }
    g.bench_function("floor_pipe", |b| {
        b.iter_custom(|n| spawn::floor(floor, "pipe-stream-8", n))
    });
    g.finish();

    let mut g = c.benchmark_group("queue_1mib");
    g.throughput(Throughput::Bytes(1 << 20))
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| {
        b.iter_custom(|n| ipc::queue_bytes(1 << 20, n))
    });
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_queue.py", &["1048576"], n))
        });
    }
    g.bench_function("floor_pipe", |b| {
        b.iter_custom(|n| spawn::floor(floor, "pipe-stream-1m", n))
    });
    g.finish();

    let mut g = c.benchmark_group("queue_backlog_1kib");
    g.throughput(Throughput::Bytes(1 << 10))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| {
        b.iter_custom(|n| ipc::queue_backlog(1 << 10, n))
    });
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_queue.py", &["1024", "backlog"], n))
        });
    }
    g.bench_function("floor_shared_memory", |b| {
        b.iter_custom(|n| spawn::floor(floor, "shm-backlog-1k", n))
    });
    g.finish();

    let mut g = c.benchmark_group("pipe_round_trip");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| b.iter_custom(ipc::pipe_round_trip));
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_pipe.py", &[], n))
        });
    }
    g.bench_function("floor_pipe", |b| {
        b.iter_custom(|n| spawn::floor(floor, "pipe-ping-pong", n))
    });
    g.finish();

    c.final_summary();
}
