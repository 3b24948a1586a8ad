//! A manager's dict shared by two processes, over a Unix socket and over TCP loopback
//! (moving onto shared memory, and on the socket only), side by side with CPython's
//! `Manager().dict()`.
//!
//! `cargo bench -p multiproc-bench --bench manager`

use std::time::Duration;

use criterion::{Criterion, Throughput};
use multiproc_bench::manager::{self, Transport};
use multiproc_bench::python;

fn main() {
    let _guard = multiproc_bench::init();
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("manager_dict_set_get");
    g.throughput(Throughput::Elements(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("multiproc_unix", |b| {
        b.iter_custom(|n| manager::dict_set_get(Transport::Unix, n))
    });
    g.bench_function("multiproc_tcp", |b| {
        b.iter_custom(|n| manager::dict_set_get(Transport::Tcp, n))
    });
    g.bench_function("multiproc_tcp_socket", |b| {
        b.iter_custom(|n| manager::dict_set_get(Transport::TcpSocket, n))
    });
    if python::available() {
        g.bench_function("cpython", |b| {
            b.iter_custom(|n| python::run("mp_manager.py", &[], n))
        });
    }
    g.finish();
    c.final_summary();
}
