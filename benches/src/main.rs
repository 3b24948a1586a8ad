//! `multiproc-bench --compare`: every benchmark workload, side by side with its peers, in
//! one run; writes `BENCHMARKS.md` and the plot it shows, `BENCHMARKS.svg`.
//!
//! ```text
//! cargo run --release -p multiproc-bench -- --compare            # writes BENCHMARKS.md
//! cargo run --release -p multiproc-bench -- --compare --runs 3 --out /tmp/b.md
//! cargo run --release -p multiproc-bench -- --compare --only lock   # some groups only
//! cargo run --release -p multiproc-bench -- --compare --busy        # under load
//! cargo run --release -p multiproc-bench -- --compare --scaling     # 1 to 16 processes
//! cargo run --release -p multiproc-bench -- loop spawn 300          # one workload alone
//! ```
//!
//! `--busy` runs the same workloads while one busy-looping process per CPU but one
//! keeps the machine loaded (as an unrelated job would), and writes its tables into
//! the "Under load" part of `BENCHMARKS.md` (between `<!-- busy:start -->` and
//! `<!-- busy:end -->`), with its own plot, `BENCHMARKS-busy.svg`; a plain run keeps
//! that part as it was.
//!
//! `--scaling` runs the pools (trivial and 1 ms CPU-bound maps, `imap`, `submit`) and a
//! many-to-many queue at 1, 2, 4, 8 and 16 processes
//! beside CPython and rayon (see `src/scaling.rs`) into the "Scaling with processes"
//! part (`<!-- scaling:start -->` ... `<!-- scaling:end -->`, plot
//! `BENCHMARKS-scaling.svg`). It writes `BENCHMARKS.md` only on a machine with 16 CPUs
//! or more; elsewhere it runs the counts the machine has CPUs for, into `--out`'s file.

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("floor") {
        // Before `init`: a process with nothing else in it.
        multiproc_bench::floor::main(args);
        return;
    }
    if first.as_deref() == Some("busy") {
        // A load for `--busy`: spins until its parent is gone.
        multiproc_bench::busy::spin_until_orphaned();
        return;
    }
    let _guard = multiproc_bench::init();
    if first.as_deref() == Some("cluster-worker") {
        // A cluster worker node for the cluster workloads, until SIGTERM.
        multiproc_bench::cluster::worker_main(&args.next().unwrap_or_default());
        return;
    }
    if first.as_deref() == Some("loop") {
        // One workload alone, for a profiler: `perf sched record -- multiproc-bench loop
        // spawn 300` shows where a spawn's time goes.
        let name = args.next().unwrap_or_default();
        let n = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
        match multiproc_bench::run_loop(&name, n) {
            Some(d) => println!(
                "{name}: {:.1} ns per operation",
                d.as_nanos() as f64 / n as f64
            ),
            None => {
                eprintln!(
                    "usage: multiproc-bench loop {{{}}} N",
                    multiproc_bench::LOOPS.join("|")
                );
                std::process::exit(2);
            }
        }
        return;
    }
    if first.as_deref() == Some("rss") {
        // A fresh process, so that only the pool is counted.
        multiproc_bench::memory::main(&args.next().unwrap_or_default());
        return;
    }
    let mut runs = 5;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let mut compare = false;
    let mut only: Option<String> = None;
    let mut busy = false;
    let mut scaling = false;
    let mut rest: Vec<String> = first.into_iter().chain(args).collect();
    rest.reverse();
    while let Some(arg) = rest.pop() {
        match arg.as_str() {
            "--compare" => compare = true,
            "--runs" => runs = rest.pop().and_then(|n| n.parse().ok()).unwrap_or(runs),
            "--out" => out = rest.pop().map(PathBuf::from).unwrap_or(out),
            "--only" => only = rest.pop(),
            "--busy" => busy = true,
            "--scaling" => scaling = true,
            other => {
                eprintln!(
                    "unknown argument {other:?}\nusage: multiproc-bench --compare [--busy | --scaling] [--runs N] [--out FILE] [--only TEXT]"
                );
                std::process::exit(2);
            }
        }
    }
    if !compare {
        eprintln!(
            "usage: multiproc-bench --compare [--busy | --scaling] [--runs N] [--out FILE] [--only TEXT]"
        );
        std::process::exit(2);
    }
    if busy && scaling {
        eprintln!("--busy and --scaling are runs of their own: one at a time");
        std::process::exit(2);
    }
    let exe = std::env::current_exe().expect("own path");
    let counts = multiproc_bench::scaling::counts();
    let (mut groups, mut mem_groups) = if scaling {
        let cpus = multiproc_bench::scaling::cpus();
        // The repository's report, not a file of the same name elsewhere (`--only`
        // writes elsewhere anyway, below).
        let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
        let same = |a: &std::path::Path, b: &std::path::Path| {
            a.canonicalize()
                .ok()
                .zip(b.canonicalize().ok())
                .is_some_and(|(a, b)| a == b)
        };
        if cpus < multiproc_bench::scaling::CPUS && only.is_none() && same(&out, &report) {
            eprintln!(
                "--scaling writes BENCHMARKS.md only on a machine with {} CPUs or more \
                 (this one has {cpus}); name another file with --out to run it here",
                multiproc_bench::scaling::CPUS
            );
            std::process::exit(2);
        }
        (multiproc_bench::scaling::groups(&counts), Vec::new())
    } else {
        (
            multiproc_bench::groups(&exe),
            multiproc_bench::mem_groups(&exe),
        )
    };
    if let Some(only) = &only {
        // A partial run is for looking at, not for the report or the README.
        let only = only.to_lowercase();
        groups.retain(|g| g.title.to_lowercase().contains(&only));
        mem_groups.retain(|g| g.title.to_lowercase().contains(&only));
        if out.ends_with("BENCHMARKS.md") {
            out = std::env::temp_dir().join("multiproc-bench-partial.md");
        }
    }
    // Under load: the report is one part of the file at `out`, the plot its own.
    let load = busy.then(multiproc_bench::busy::Load::start);
    let header = match &load {
        Some(load) => multiproc_bench::busy::header(runs, load.processes()),
        None if scaling => multiproc_bench::scaling::header(runs, &counts),
        None => multiproc_bench::header(runs),
    };
    // The plot lies beside the report, which shows it by its file name.
    let part = if busy {
        Some("busy")
    } else if scaling {
        Some("scaling")
    } else {
        None
    };
    let plot = match part {
        Some(part) => out.with_file_name(format!(
            "{}-{part}.svg",
            out.file_stem()
                .map_or("BENCHMARKS".into(), |s| s.to_string_lossy())
        )),
        None => out.with_extension("svg"),
    };
    let plot_name = plot.file_name().map_or_else(
        || "BENCHMARKS.svg".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let outcome =
        multiproc_bench::compare::run_all(&groups, &mem_groups, runs, &header, &plot_name, busy);
    drop(load);
    let previous = std::fs::read_to_string(&out).unwrap_or_default();
    let report = match part {
        Some(part) => multiproc_bench::busy::place_part(&previous, part, &outcome.report),
        None => multiproc_bench::busy::keep(&previous, outcome.report.clone()),
    };
    std::fs::write(&out, &report).expect("write the report");
    eprintln!("wrote {}", out.display());
    multiproc_bench::plot::ratios(&outcome.ratios, &plot).expect("draw the plot");
    eprintln!("wrote {}", plot.display());
    let summary = outcome.summary;
    if only.is_some() || scaling {
        // The README's summaries are those of the plain and busy runs.
        return;
    }
    // The README quotes the headline numbers of this same run (under load: its own
    // table).
    let readme = out.with_file_name("README.md");
    let tag = if busy { "bench-busy" } else { "bench" };
    if let Some(updated) = std::fs::read_to_string(&readme)
        .ok()
        .and_then(|text| multiproc_bench::compare::splice_between(&text, tag, &summary))
    {
        std::fs::write(&readme, updated).expect("update the README");
        eprintln!("updated the summary in {}", readme.display());
    }
}
