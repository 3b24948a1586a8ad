//! `--compare --scaling`: how `Pool::map` (of trivial tasks and of 1 ms CPU-bound ones),
//! `Pool::imap`, `submit` + `wait` and a queue with many producers and consumers scale
//! with their processes, at 1, 2, 4, 8 and 16, side by side with CPython (and rayon for
//! the maps) at the same counts.
//!
//! It is meant for a machine with at least [`CPUS`] CPUs: only there does it write its
//! part of `BENCHMARKS.md` (between `<!-- scaling:start -->` and
//! `<!-- scaling:end -->`, with its own hardware line and plot,
//! `BENCHMARKS-scaling.svg`). Elsewhere it runs the counts the machine has CPUs for, and
//! only into a file named with `--out`. Never in CI: it takes minutes on 16 CPUs.

use crate::compare::{Group, Impl, Rate, Workload};
use crate::{ipc, pool, python};

/// The process counts of the report.
pub const WORKERS: [usize; 5] = [1, 2, 4, 8, 16];

/// The CPUs a machine needs for the report to go into `BENCHMARKS.md`.
pub const CPUS: usize = 16;

/// The CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The counts of [`WORKERS`] this machine has CPUs for.
pub fn counts() -> Vec<usize> {
    let cpus = cpus();
    WORKERS.into_iter().filter(|&w| w <= cpus).collect()
}

/// A name that lives as long as the program (rows are named by `&'static str`, and
/// these depend on the count).
fn name(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn plural(n: usize, what: &str) -> String {
    let ending = match (n, what.ends_with('s')) {
        (1, _) => "",
        (_, true) => "es",
        (_, false) => "s",
    };
    format!("{n} {what}{ending}")
}

/// One workload of the report: its rows at every count.
struct Shape {
    title: &'static str,
    operation: &'static str,
    iters: u64,
    ours: &'static str,
    run: fn(usize, u64) -> std::time::Duration,
    /// CPython's script and arguments before the process count, and its iterations.
    cpython: Option<(&'static str, &'static str, &'static [&'static str], u64)>,
    /// rayon's version of the workload, on a pool of as many threads.
    rayon: Option<fn(usize, u64) -> std::time::Duration>,
    /// How a row names its count.
    count: fn(usize) -> String,
}

fn processes(p: usize) -> String {
    plural(p, "process")
}

fn producers_and_consumers(p: usize) -> String {
    format!("{p} + {p} processes")
}

/// The groups of the report, at `counts`.
pub fn groups(counts: &[usize]) -> Vec<Group> {
    let python = python::available();
    let shapes = [
        Shape {
            title: "Scaling: Pool map, trivial tasks, default chunking",
            operation: "one item of a 100,000-item map of `x * x`, results collected in order",
            iters: 100_000,
            ours: "multiproc Pool::map",
            run: pool::map_on,
            cpython: Some(("CPython Pool.map", "mp_pool.py", &["map"], 100_000)),
            rayon: Some(pool::rayon_map_on),
            count: processes,
        },
        Shape {
            title: "Scaling: Pool map, 1 ms CPU-bound tasks",
            operation: "one task of a 2,000-task map of tasks that each spin for 1 ms, default chunking (ideal: 1 ms divided by the processes)",
            iters: 2_000,
            ours: "multiproc Pool::map",
            run: pool::cpu_map,
            cpython: Some(("CPython Pool.map", "mp_pool.py", &["cpu"], 2_000)),
            rayon: Some(pool::rayon_cpu),
            count: processes,
        },
        Shape {
            title: "Scaling: Pool imap, one task per item",
            operation: "one `x * x` task of a lazy map, results in order",
            iters: 20_000,
            ours: "multiproc Pool::imap",
            run: pool::imap_on,
            cpython: Some(("CPython Pool.imap", "mp_pool.py", &["imap1"], 5_000)),
            rayon: None,
            count: processes,
        },
        Shape {
            title: "Scaling: Pool submit + wait",
            operation: "one `submit` of `x * x` (all submitted, then all waited for)",
            iters: 20_000,
            ours: "multiproc submit + wait",
            run: pool::submit_wait_on,
            cpython: Some((
                "CPython ProcessPoolExecutor",
                "mp_pool.py",
                &["executor"],
                5_000,
            )),
            rayon: None,
            count: processes,
        },
        Shape {
            title: "Scaling: queue, many producers and consumers",
            operation: "one small integer put by one of N producer processes and got by one of N consumer processes, all on one queue (timed from the go, given when all have started, until all are joined)",
            iters: 400_000,
            ours: "multiproc Queue",
            run: ipc::queue_mpmc,
            // As many items as multiproc's: fewer would leave CPython's share of each
            // of 32 processes small beside its start-up and exit.
            cpython: Some(("CPython Queue", "mp_queue.py", &["0", "mpmc"], 400_000)),
            rayon: None,
            count: producers_and_consumers,
        },
    ];
    shapes
        .into_iter()
        .map(|shape| group(shape, counts, python))
        .collect()
}

fn group(shape: Shape, counts: &[usize], python: bool) -> Group {
    let mut workloads = Vec::new();
    let mut pairs = Vec::new();
    for &p in counts {
        let ours = name(format!("{}, {}", shape.ours, (shape.count)(p)));
        let run = shape.run;
        workloads.push(Workload::new(
            ours,
            Impl::Multiproc,
            shape.iters,
            move |n| run(p, n),
        ));
        if let Some(rayon) = shape.rayon {
            let theirs = name(format!("rayon par_iter, {}", plural(p, "thread")));
            workloads.push(Workload::new(theirs, Impl::Peer, shape.iters, move |n| {
                rayon(p, n)
            }));
            pairs.push((ours, theirs));
        }
        if let Some((peer, script, args, iters)) = shape.cpython.filter(|_| python) {
            let theirs = name(format!("{peer}, {}", (shape.count)(p)));
            let count = name(p.to_string());
            let mut all: Vec<&'static str> = args.to_vec();
            all.push(count);
            workloads.push(Workload::new(theirs, Impl::Peer, iters, move |n| {
                python::run(script, &all, n)
            }));
            pairs.push((ours, theirs));
        }
    }
    let mut notes = vec![format!(
        "Processes: {} here; the first multiproc row is the base of the ratio column.",
        list(counts)
    )];
    notes.push(if shape.title.contains("queue") {
        "N + N processes: N producers and N consumers share a queue of their own, started before the go that starts the clock; each moves the same share of the items. At the largest count there are twice as many processes as CPUs.".into()
    } else if shape.rayon.is_some() {
        "Each count is a pool of its own, started and warmed up (100 tasks) before the clock starts; rayon's pool is built before the clock starts, and not warmed up.".into()
    } else {
        "Each count is a pool of its own, started and warmed up (100 tasks) before the clock starts.".into()
    });
    notes.push(python::version().map_or_else(
        || "python3 was not found: the CPython rows are missing.".to_string(),
        |v| format!("CPython: {v}, `fork` context."),
    ));
    Group {
        title: shape.title,
        rate: Rate::Ops(if shape.title.contains("queue") {
            "msgs"
        } else {
            "tasks"
        }),
        operation: shape.operation,
        // No criterion bench runs these counts.
        bench: "",
        workloads,
        targets: Vec::new(),
        pairs,
        notes,
        headline: Vec::new(),
    }
}

/// The header of the scaling part: what ran, on what, with how many CPUs.
pub fn header(runs: usize, counts: &[usize]) -> String {
    crate::busy::part_header(
        runs,
        "Scaling with processes",
        "--scaling",
        &format!(
            "and wrote this part of the file, at {} processes (or threads, for rayon). \
             It needs a machine with at least {CPUS} CPUs, so its machine is not always \
             the one of the parts above: see its own table.",
            list(counts)
        ),
    )
}

/// `1, 2, 4`.
fn list(counts: &[usize]) -> String {
    counts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
