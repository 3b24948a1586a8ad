//! Pools: maps, lazy maps, submit + wait and CPU-bound tasks, side by side with CPython's
//! `multiprocessing.Pool` / `ProcessPoolExecutor`, rayon and procspawn's pool.
//!
//! `cargo bench -p multiproc-bench --bench pool`

use std::time::Duration;

use criterion::{Criterion, Throughput};
use multiproc_bench::{pool, python};

fn main() {
    let _guard = multiproc_bench::init();
    let mut c = Criterion::default().configure_from_args();
    let py = python::available();

    let mut g = c.benchmark_group("pool_map_100k");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| b.iter_custom(pool::map));
    g.bench_function("rayon", |b| b.iter_custom(pool::rayon_map));
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_pool.py", &["map"], n))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pool_one_by_one");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc_imap", |b| b.iter_custom(pool::imap_one_by_one));
    g.bench_function("multiproc_map_chunk_1", |b| {
        b.iter_custom(pool::map_chunk_1)
    });
    if py {
        g.bench_function("cpython_imap", |b| {
            b.iter_custom(|n| python::run("mp_pool.py", &["imap1"], n))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pool_submit_wait");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| b.iter_custom(pool::submit_wait));
    g.bench_function("procspawn", |b| b.iter_custom(pool::procspawn_submit_wait));
    if py {
        g.bench_function("cpython_executor", |b| {
            b.iter_custom(|n| python::run("mp_pool.py", &["executor"], n))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pool_as_completed");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc", |b| b.iter_custom(pool::as_completed));
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_pool.py", &["as_completed"], n))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pool_cpu_1ms");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    g.bench_function("multiproc", |b| {
        b.iter_custom(|n| pool::cpu_map(pool::PROCESSES, n))
    });
    g.bench_function("rayon", |b| {
        b.iter_custom(|n| pool::rayon_cpu(pool::PROCESSES, n))
    });
    g.bench_function("procspawn", |b| b.iter_custom(pool::procspawn_cpu));
    if py {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_pool.py", &["cpu"], n))
        });
    }
    g.finish();

    c.final_summary();
}
