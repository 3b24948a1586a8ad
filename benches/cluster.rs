//! The cluster (Redis Streams) under criterion: throughput of trivial tasks, one task's
//! round trip, and 1 ms CPU-bound tasks against a local `Pool`, on a throwaway
//! `redis-server` (skipped, saying so, when none is installed). The side-by-side run
//! with Celery and RQ is `multiproc-bench --compare --only cluster`.
//!
//! `cargo bench -p multiproc-bench --bench cluster`

use std::time::Duration;

use criterion::{Criterion, Throughput};
use multiproc_bench::cluster;

fn main() {
    let _guard = multiproc_bench::init();
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("cluster-worker") {
        // This binary is also the worker node the workloads start.
        cluster::worker_main(&args.next().unwrap_or_default());
        return;
    }
    let Some(redis) = cluster::Redis::start() else {
        eprintln!(
            "redis-server is not installed (apt-get install -y redis-server): nothing to measure"
        );
        return;
    };
    let exe = std::env::current_exe().expect("own path");
    let mut c = Criterion::default().configure_from_args();

    let mut g = c.benchmark_group("cluster_throughput");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    g.bench_function("multiproc", |b| {
        b.iter_custom(|n| {
            cluster::throughput(&exe, &redis, n.max(1000)) / n.max(1000) as u32 * n as u32
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cluster_round_trip");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("multiproc_median", |b| {
        b.iter_custom(|n| {
            cluster::round_trip(&exe, &redis, n.max(200), 0.5) / n.max(200) as u32 * n as u32
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cluster_cpu_1ms");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    g.bench_function("multiproc_cluster", |b| {
        b.iter_custom(|n| cluster::cpu(&exe, &redis, n.max(200)) / n.max(200) as u32 * n as u32)
    });
    g.bench_function("multiproc_local_pool", |b| {
        b.iter_custom(cluster::local_cpu)
    });
    g.finish();

    c.final_summary();
}
