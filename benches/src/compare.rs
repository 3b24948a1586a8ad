//! Side-by-side comparison: run every workload of a group in turns, several times, and
//! report medians, extremes and ratios computed within the same run.
//!
//! The machines these run on are small and noisy: absolute times drift from one minute
//! to the next, but ratios measured side by side hold. So a group's workloads run
//! interleaved (run 1 of each, then run 2 of each, ...), and ratios are only ever taken
//! between numbers of the same invocation.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::memory::Peaks;

/// Who implements a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// multiproc itself.
    Multiproc,
    /// A peer library or runtime.
    Peer,
    /// The same operation in plain system calls: what no library can beat.
    Floor,
    /// Under load only (`--busy`): the least the operation can cost when its processes
    /// take turns on one CPU, as they do there: bare `sched_yield` switches between two
    /// processes kept on one CPU. No target is set against it; a missed target against
    /// CPython says what it would take, beside it.
    OneCpu,
    /// On a quiet machine only: the same hand-off through one cache line of shared
    /// memory, each side spinning on it, so that only the line's moves between two CPUs
    /// are measured (which two CPUs a run gets moves them, by several times on a
    /// virtual machine). No target is set against it. Left out under load, where a
    /// spinner waiting for the CPU its peer holds spins out whole time slices.
    CacheLine,
}

/// One implementation of a group's operation.
pub struct Workload {
    /// Shown in the table, like `multiproc (ForkServer)`.
    pub name: &'static str,
    pub kind: Impl,
    /// Operations per timed run.
    pub iters: u64,
    /// Runs `iters` operations and returns how long they took.
    pub run: Box<dyn Fn(u64) -> Duration>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("iters", &self.iters)
            .finish_non_exhaustive()
    }
}

impl Workload {
    pub fn new(
        name: &'static str,
        kind: Impl,
        iters: u64,
        run: impl Fn(u64) -> Duration + 'static,
    ) -> Self {
        Workload {
            name,
            kind,
            iters,
            run: Box::new(run),
        }
    }
}

/// A target a multiproc workload should meet, from its issue.
#[derive(Debug)]
pub struct Target {
    /// The workload it applies to.
    pub workload: &'static str,
    /// As stated, like `≤ 0.5 ms`.
    pub text: &'static str,
    /// How to tell whether its median meets it.
    pub met: Check,
}

/// How a target is checked.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// Against the median per operation alone.
    Median(fn(Duration) -> bool),
    /// At least `ratio` times as fast as the median of another workload of the group.
    Relative { of: &'static str, ratio: f64 },
}

/// How to show a median as a rate.
#[derive(Clone, Copy, Debug)]
pub enum Rate {
    /// Time per operation only.
    None,
    /// Operations per second, with this name for an operation (`msgs`).
    Ops(&'static str),
    /// Bytes per second, each operation moving this many bytes.
    Bytes(u64),
}

impl Rate {
    fn show(self, per_op: Duration) -> String {
        let per_sec = 1.0 / per_op.as_secs_f64().max(1e-12);
        match self {
            Rate::None => String::new(),
            Rate::Ops(what) if per_sec >= 1e6 => format!("{:.2} M {what}/s", per_sec / 1e6),
            Rate::Ops(what) if per_sec >= 1e3 => format!("{:.0} k {what}/s", per_sec / 1e3),
            Rate::Ops(what) => format!("{per_sec:.0} {what}/s"),
            Rate::Bytes(n) => format!("{:.2} GB/s", per_sec * n as f64 / 1e9),
        }
    }
}

/// Workloads measuring the same operation.
#[derive(Debug)]
pub struct Group {
    pub title: &'static str,
    /// How to show medians as rates.
    pub rate: Rate,
    /// What one operation is, for the reader.
    pub operation: &'static str,
    /// The `cargo bench` target with the same workloads (empty: none).
    pub bench: &'static str,
    pub workloads: Vec<Workload>,
    pub targets: Vec<Target>,
    /// Pairs `(multiproc workload, other workload)` whose ratio the summary states.
    pub pairs: Vec<(&'static str, &'static str)>,
    /// Said under the table.
    pub notes: Vec<String>,
    /// Rows for the README's summary: `(label, multiproc workload, peer workload)`.
    pub headline: Vec<(&'static str, &'static str, &'static str)>,
}

/// Results of one workload.
#[derive(Clone, Debug)]
pub struct Stats {
    pub name: &'static str,
    pub kind: Impl,
    /// Time per operation of each run.
    pub runs: Vec<Duration>,
}

impl Stats {
    pub fn median(&self) -> Duration {
        let mut v = self.runs.clone();
        v.sort();
        v[v.len() / 2]
    }

    pub fn min(&self) -> Duration {
        self.runs.iter().copied().min().unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.runs.iter().copied().max().unwrap_or_default()
    }
}

/// Runs a group: one warm-up run of each workload, then `runs` rounds in turn.
pub fn run_group(group: &Group, runs: usize, busy: bool) -> Vec<Stats> {
    let workloads: Vec<&Workload> = group
        .workloads
        .iter()
        .filter(|w| match w.kind {
            Impl::OneCpu => busy,
            Impl::CacheLine => !busy,
            _ => true,
        })
        .collect();
    let mut stats: Vec<Stats> = workloads
        .iter()
        .map(|w| Stats {
            name: w.name,
            kind: w.kind,
            runs: Vec::with_capacity(runs),
        })
        .collect();
    for w in &workloads {
        (w.run)(w.iters.div_ceil(10).max(1));
    }
    for round in 0..runs {
        for (w, s) in workloads.iter().zip(&mut stats) {
            let elapsed = (w.run)(w.iters);
            s.runs
                .push(elapsed / u32::try_from(w.iters).unwrap_or(u32::MAX));
            eprintln!(
                "  [{}/{runs}] {:<34} {}",
                round + 1,
                w.name,
                fmt_duration(*s.runs.last().unwrap_or(&Duration::ZERO))
            );
        }
    }
    stats
}

/// Formats a duration with three significant digits.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    let (v, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}

fn find<'a>(stats: &'a [Stats], name: &str) -> Option<&'a Stats> {
    stats.iter().find(|s| s.name == name)
}

/// Under load, every multiproc row is to stay this many times faster than CPython's.
pub const BUSY_VS_CPYTHON: f64 = 10.0;

/// The markdown section for a group; `busy`: measured under load, with the targets of
/// that mode (≥ [`BUSY_VS_CPYTHON`]× CPython, never slower than a plain-kernel floor).
pub fn report(group: &Group, stats: &[Stats], busy: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", group.title);
    let criterion = if group.bench.is_empty() {
        String::new()
    } else {
        format!(
            " Criterion bench with the same workloads: `cargo bench -p multiproc-bench --bench {}`.",
            group.bench
        )
    };
    let _ = writeln!(
        out,
        "One operation: {}. Time per operation over each run; {} runs each, interleaved.{criterion}\n",
        group.operation,
        stats.first().map_or(0, |s| s.runs.len()),
    );
    let first = stats.iter().find(|s| s.kind == Impl::Multiproc);
    let base = first.map(|s| s.name).unwrap_or_default();
    let rate_head = if matches!(group.rate, Rate::None) {
        ""
    } else {
        " rate (median) |"
    };
    let rate_rule = if matches!(group.rate, Rate::None) {
        ""
    } else {
        "---:|"
    };
    let _ = writeln!(
        out,
        "| implementation | median | min | max | median vs {base} |{rate_head}\n|---|---:|---:|---:|---:|{rate_rule}"
    );
    for s in stats {
        let ratio = first.map_or(String::new(), |b| {
            format!(
                "{:.2}×",
                s.median().as_secs_f64() / b.median().as_secs_f64()
            )
        });
        let name = match s.kind {
            Impl::Multiproc => format!("**{}**", s.name),
            Impl::Peer => s.name.to_string(),
            Impl::Floor => format!("{} *(floor)*", s.name),
            Impl::OneCpu => format!("{} *(bound on one CPU)*", s.name),
            Impl::CacheLine => format!("{} *(the hardware's floor)*", s.name),
        };
        let rate = if matches!(group.rate, Rate::None) {
            String::new()
        } else {
            format!(" {} |", group.rate.show(s.median()))
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {ratio} |{rate}",
            fmt_duration(s.median()),
            fmt_duration(s.min()),
            fmt_duration(s.max())
        );
    }
    out.push('\n');
    for (ours, theirs) in &group.pairs {
        if let (Some(a), Some(b)) = (find(stats, ours), find(stats, theirs)) {
            let r = b.median().as_secs_f64() / a.median().as_secs_f64();
            let (word, r) = if r >= 1.0 {
                ("faster", r)
            } else {
                ("slower", 1.0 / r)
            };
            let _ = writeln!(
                out,
                "- {ours} is **{r:.1}× {word}** than {theirs} (medians)."
            );
        }
    }
    for t in &group.targets {
        if let Some(s) = find(stats, t.workload) {
            let met = match t.met {
                Check::Median(f) => Some(f(s.median())),
                Check::Relative { of, ratio } => find(stats, of)
                    .map(|o| o.median().as_secs_f64() / s.median().as_secs_f64() >= ratio),
            };
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            };
            let _ = writeln!(
                out,
                "- Target for {}: {} — {verdict} (median {}).",
                t.workload,
                t.text,
                fmt_duration(s.median())
            );
        }
    }
    if busy {
        out.push_str(&busy_targets(group, stats));
    }
    for note in &group.notes {
        let _ = writeln!(out, "- {note}");
    }
    out.push('\n');
    out
}

/// The targets of a run under load, for each of the group's pairs: a multiproc row
/// against CPython at least [`BUSY_VS_CPYTHON`] times as fast, against a floor not
/// slower.
fn busy_targets(group: &Group, stats: &[Stats]) -> String {
    let mut out = String::new();
    let one_cpu = stats.iter().find(|s| s.kind == Impl::OneCpu);
    let fastest_floor = stats
        .iter()
        .filter(|s| s.kind == Impl::Floor)
        .min_by_key(|s| s.median());
    for (ours, theirs) in &group.pairs {
        let (Some(a), Some(b)) = (find(stats, ours), find(stats, theirs)) else {
            continue;
        };
        let r = b.median().as_secs_f64() / a.median().as_secs_f64();
        let (text, met) = match b.kind {
            Impl::Peer if b.name.starts_with("CPython") => (
                format!("≥ {BUSY_VS_CPYTHON:.0}× {theirs}"),
                r >= BUSY_VS_CPYTHON,
            ),
            Impl::Floor => (format!("not slower than {theirs}"), r >= 1.0),
            _ => continue,
        };
        let verdict = if met { "met" } else { "**missed**" };
        // The target in time per operation, beside the bare switches of the run.
        let need = b.median().div_f64(BUSY_VS_CPYTHON);
        let beyond = match one_cpu {
            Some(bound) if !met && b.kind == Impl::Peer => format!(
                " {BUSY_VS_CPYTHON:.0}× would be {} per operation, against {} for the bare switches alone (the row *bound on one CPU*)",
                fmt_duration(need),
                fmt_duration(bound.median())
            ),
            // A target under the time of the kernel floor itself.
            _ => match fastest_floor {
                Some(floor) if !met && b.kind == Impl::Peer && floor.median() > need => format!(
                    " {BUSY_VS_CPYTHON:.0}× would be {} per operation, under the {} of {} itself",
                    fmt_duration(need),
                    fmt_duration(floor.median()),
                    floor.name
                ),
                _ => String::new(),
            },
        };
        let end = if beyond.is_empty() { "" } else { ";" };
        let _ = writeln!(
            out,
            "- Target under load for {ours}: {text} — {verdict} ({r:.1}×){end}{beyond}."
        );
    }
    out
}

/// One implementation of a memory workload.
pub struct MemWorkload {
    /// Shown in the table.
    pub name: &'static str,
    pub kind: Impl,
    /// Runs the workload once, in processes of its own, and returns their peaks.
    pub run: Box<dyn Fn() -> Peaks>,
}

impl std::fmt::Debug for MemWorkload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemWorkload")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl MemWorkload {
    pub fn new(name: &'static str, kind: Impl, run: impl Fn() -> Peaks + 'static) -> Self {
        MemWorkload {
            name,
            kind,
            run: Box::new(run),
        }
    }
}

/// Workloads whose peak memory is compared.
#[derive(Debug)]
pub struct MemGroup {
    pub title: &'static str,
    /// Task processes per row (for the total column).
    pub workers: u64,
    /// What each workload does, for the reader.
    pub operation: &'static str,
    pub workloads: Vec<MemWorkload>,
    /// Pairs `(multiproc workload, other workload)` whose worker peaks the report compares.
    pub pairs: Vec<(&'static str, &'static str)>,
    /// Said under the table.
    pub notes: Vec<String>,
    /// Rows for the README's summary: `(label, multiproc workload, peer workload)`,
    /// comparing worker peaks.
    pub headline: Vec<(&'static str, &'static str, &'static str)>,
}

/// Peaks of one memory workload over its runs.
#[derive(Clone, Debug)]
pub struct MemStats {
    pub name: &'static str,
    pub kind: Impl,
    pub runs: Vec<Peaks>,
}

impl MemStats {
    /// The median of one of the peaks, in KiB (none if a run did not have it).
    pub fn median(&self, field: fn(&Peaks) -> Option<u64>) -> Option<u64> {
        median_of(self.runs.iter().map(field).collect::<Option<_>>()?)
    }

    /// The median of the pool's whole footprint: parent, every worker, server.
    fn total(&self, workers: u64) -> Option<u64> {
        median_of(
            self.runs
                .iter()
                .map(|p| p.parent + workers * p.worker.unwrap_or(0) + p.server.unwrap_or(0))
                .collect(),
        )
    }
}

fn median_of(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn parent(p: &Peaks) -> Option<u64> {
    Some(p.parent)
}

fn worker(p: &Peaks) -> Option<u64> {
    p.worker
}

fn server(p: &Peaks) -> Option<u64> {
    p.server
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "—".to_string(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// Runs a memory group `runs` times, interleaved.
pub fn run_mem_group(group: &MemGroup, runs: usize) -> Vec<MemStats> {
    let mut stats: Vec<MemStats> = group
        .workloads
        .iter()
        .map(|w| MemStats {
            name: w.name,
            kind: w.kind,
            runs: Vec::with_capacity(runs),
        })
        .collect();
    for round in 0..runs {
        for (w, s) in group.workloads.iter().zip(&mut stats) {
            let peaks = (w.run)();
            eprintln!(
                "  [{}/{runs}] {:<34} parent {} worker {}",
                round + 1,
                w.name,
                mib(Some(peaks.parent)),
                mib(peaks.worker)
            );
            s.runs.push(peaks);
        }
    }
    stats
}

/// The markdown section for a memory group.
pub fn mem_report(group: &MemGroup, stats: &[MemStats]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", group.title);
    let _ = writeln!(
        out,
        "{} Peak resident set (`VmHWM`) of each process; medians of {} runs each, interleaved.\n",
        group.operation,
        stats.first().map_or(0, |s| s.runs.len()),
    );
    let workers = group.workers;
    let _ = writeln!(
        out,
        "| implementation | parent | one worker | fork server | parent + {workers} workers + server |\n|---|---:|---:|---:|---:|"
    );
    for s in stats {
        let name = match s.kind {
            Impl::Multiproc => format!("**{}**", s.name),
            Impl::Peer | Impl::Floor | Impl::OneCpu | Impl::CacheLine => s.name.to_string(),
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            mib(s.median(parent)),
            mib(s.median(worker)),
            mib(s.median(server)),
            mib(s.total(workers)),
        );
    }
    out.push('\n');
    let find = |name: &str| stats.iter().find(|s| s.name == name);
    for (ours, theirs) in &group.pairs {
        if let (Some(a), Some(b)) = (find(ours), find(theirs)) {
            for (what, field) in [
                ("worker", worker as fn(&Peaks) -> Option<u64>),
                ("parent", parent),
            ] {
                if let (Some(x), Some(y)) = (a.median(field), b.median(field)) {
                    let r = y as f64 / x.max(1) as f64;
                    let (word, r) = if r >= 1.0 {
                        ("smaller", r)
                    } else {
                        ("larger", 1.0 / r)
                    };
                    let _ = writeln!(
                        out,
                        "- {ours}: the {what}'s peak is **{r:.1}× {word}** than with {theirs} (medians)."
                    );
                }
            }
        }
    }
    for note in &group.notes {
        let _ = writeln!(out, "- {note}");
    }
    out.push('\n');
    out
}

/// A row of the README's summary: `ours` against `theirs`, and how many times better
/// (`words.0`) or worse (`words.1`) ours is, from `r`, theirs over ours (above 1: ours
/// is better).
fn headline_row(label: &str, ours: &str, theirs: &str, r: f64, words: (&str, &str)) -> String {
    let (times, word) = if r >= 1.0 {
        (r, words.0)
    } else {
        (1.0 / r, words.1)
    };
    format!("| {label} | {ours} | {theirs} | {times:.1}× {word} |\n")
}

/// A ratio for the plot: how many times faster multiproc's workload is than another.
#[derive(Clone, Debug)]
pub struct Ratio {
    /// Like `Pipe round trip: vs CPython Pipe`.
    pub label: String,
    /// The other's median over multiproc's: above 1, multiproc is faster.
    pub speedup: f64,
    /// Who the other is.
    pub other: Impl,
}

/// What [`run_all`] produced.
#[derive(Debug)]
pub struct Outcome {
    /// The whole report, in markdown.
    pub report: String,
    /// The README's summary table.
    pub summary: String,
    /// Every pair's ratio, for the plot.
    pub ratios: Vec<Ratio>,
}

/// Runs every group; returns the whole report (which shows the plot `plot`, a file
/// beside it), the README's summary table and the ratios to plot.
pub fn run_all(
    groups: &[Group],
    mem_groups: &[MemGroup],
    runs: usize,
    header: &str,
    plot: &str,
    busy: bool,
) -> Outcome {
    let started = Instant::now();
    let mut body = String::new();
    let mut ratios = Vec::new();
    let mut summary = String::from("| | multiproc | peer | ratio |\n|---|---:|---:|---:|\n");
    for g in groups {
        eprintln!("{}", g.title);
        let stats = run_group(g, runs, busy);
        body.push_str(&report(g, &stats, busy));
        for (ours, theirs) in &g.pairs {
            if let (Some(a), Some(b)) = (find(&stats, ours), find(&stats, theirs)) {
                ratios.push(Ratio {
                    label: format!("{}: {ours} vs {theirs}", g.title),
                    speedup: b.median().as_secs_f64() / a.median().as_secs_f64(),
                    other: b.kind,
                });
            }
        }
        for (label, ours, theirs) in &g.headline {
            if let (Some(a), Some(b)) = (find(&stats, ours), find(&stats, theirs)) {
                let show = |s: &Stats| match g.rate {
                    Rate::None => fmt_duration(s.median()),
                    rate => rate.show(s.median()),
                };
                let r = b.median().as_secs_f64() / a.median().as_secs_f64();
                summary.push_str(&headline_row(
                    label,
                    &show(a),
                    &format!("{} ({theirs})", show(b)),
                    r,
                    ("faster", "slower"),
                ));
            }
        }
    }
    for g in mem_groups {
        eprintln!("{}", g.title);
        let stats = run_mem_group(g, runs);
        body.push_str(&mem_report(g, &stats));
        let find = |name: &str| stats.iter().find(|s| s.name == name);
        for (label, ours, theirs) in &g.headline {
            if let Some((a, b)) = find(ours)
                .and_then(|a| a.median(worker))
                .zip(find(theirs).and_then(|b| b.median(worker)))
            {
                let r = b as f64 / a.max(1) as f64;
                summary.push_str(&headline_row(
                    label,
                    &mib(Some(a)),
                    &format!("{} ({theirs})", mib(Some(b))),
                    r,
                    ("smaller", "larger"),
                ));
            }
        }
    }
    let report = format!(
        "{header}\nThe whole comparison took {:.0} s.\n\n\
         ![How many times faster multiproc is than each peer and floor, per workload \
         (log scale; bars left of 1× are slower)]({plot})\n\n{body}",
        started.elapsed().as_secs_f64()
    );
    Outcome {
        report,
        summary,
        ratios,
    }
}

/// Replaces the lines between `<!-- bench:start -->` and `<!-- bench:end -->` in `text`.
pub fn splice(text: &str, table: &str) -> Option<String> {
    splice_between(text, "bench", table)
}

/// Replaces what lies between `<!-- {tag}:start -->` and `<!-- {tag}:end -->` in
/// `text`; `None` if the markers are not both there, in that order.
pub fn splice_between(text: &str, tag: &str, with: &str) -> Option<String> {
    let (open, close) = (
        format!("<!-- {tag}:start -->"),
        format!("<!-- {tag}:end -->"),
    );
    let start = text.find(&open)?;
    let end = text.find(&close)?;
    let after_start = start + open.len();
    (after_start <= end).then(|| format!("{}\n{with}{}", &text[..after_start], &text[end..]))
}

/// What lies between `<!-- {tag}:start -->` and `<!-- {tag}:end -->` in `text`, the
/// markers included.
pub fn section<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let (open, close) = (
        format!("<!-- {tag}:start -->"),
        format!("<!-- {tag}:end -->"),
    );
    let start = text.find(&open)?;
    let end = text[start..].find(&close)? + start + close.len();
    Some(&text[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_and_finds_sections() {
        let text = "a\n<!-- x:start -->\nold\n<!-- x:end -->\nb\n";
        let new = splice_between(text, "x", "new\n").unwrap();
        assert_eq!(new, "a\n<!-- x:start -->\nnew\n<!-- x:end -->\nb\n");
        assert_eq!(
            section(&new, "x"),
            Some("<!-- x:start -->\nnew\n<!-- x:end -->")
        );
        assert_eq!(section(text, "y"), None);
        assert_eq!(
            splice_between("<!-- x:end --><!-- x:start -->", "x", ""),
            None
        );
    }

    /// A group with a multiproc row, a CPython row and a bound on one CPU, each taking
    /// `ns` nanoseconds per operation.
    fn hand_off(ns: [u64; 3]) -> Group {
        let row = |ns: u64| move |n: u64| Duration::from_nanos(ns * n);
        Group {
            title: "Hand-off",
            rate: Rate::None,
            operation: "one hand-off",
            bench: "",
            workloads: vec![
                Workload::new("multiproc Event", Impl::Multiproc, 10, row(ns[0])),
                Workload::new("CPython Event", Impl::Peer, 10, row(ns[1])),
                Workload::new("bare switches", Impl::OneCpu, 10, row(ns[2])),
            ],
            targets: Vec::new(),
            pairs: vec![("multiproc Event", "CPython Event")],
            notes: Vec::new(),
            headline: Vec::new(),
        }
    }

    /// A summary row says how many times slower ours is, not the ratio upside down
    /// (a row 1.06 times slower said "0.9× slower").
    #[test]
    fn a_slower_headline_row_says_how_many_times() {
        assert_eq!(
            headline_row(
                "cluster",
                "801 µs",
                "757 µs (Pool)",
                757.0 / 801.0,
                ("faster", "slower")
            ),
            "| cluster | 801 µs | 757 µs (Pool) | 1.1× slower |\n"
        );
        assert_eq!(
            headline_row(
                "pipe",
                "1 µs",
                "40 µs (CPython)",
                40.0,
                ("faster", "slower")
            ),
            "| pipe | 1 µs | 40 µs (CPython) | 40.0× faster |\n"
        );
    }

    /// A missed target against CPython that would take less time per operation than a
    /// floor of the group says so; one the floor leaves room for does not.
    #[test]
    fn a_target_under_the_floor_says_so() {
        let row = |ns: u64| move |n: u64| Duration::from_nanos(ns * n);
        let group = |ours: u64| Group {
            title: "Dict",
            rate: Rate::None,
            operation: "one operation",
            bench: "",
            workloads: vec![
                Workload::new("multiproc socket", Impl::Multiproc, 10, row(ours)),
                Workload::new("CPython dict", Impl::Peer, 10, row(60_000)),
                Workload::new("pipe ping-pong", Impl::Floor, 10, row(8_000)),
            ],
            targets: Vec::new(),
            pairs: vec![("multiproc socket", "CPython dict")],
            notes: Vec::new(),
            headline: Vec::new(),
        };
        let missed = group(20_000);
        let text = report(&missed, &run_group(&missed, 1, true), true);
        assert!(
            text.contains(
                "≥ 10× CPython dict — **missed** (3.0×); 10× would be 6.00 µs per operation, \
                 under the 8.00 µs of pipe ping-pong itself."
            ),
            "{text}"
        );
        let quick = Group {
            workloads: vec![
                Workload::new("multiproc socket", Impl::Multiproc, 10, row(20_000)),
                Workload::new("CPython dict", Impl::Peer, 10, row(60_000)),
                Workload::new("pipe ping-pong", Impl::Floor, 10, row(5_000)),
            ],
            ..group(0)
        };
        let text = report(&quick, &run_group(&quick, 1, true), true);
        assert!(text.contains("— **missed** (3.0×).\n"), "{text}");
    }

    /// The bound on one CPU is measured and shown under load only; a missed target
    /// against CPython states the time per operation it needs beside the bound, a met
    /// one does not.
    #[test]
    fn the_bound_on_one_cpu_shows_under_load_only() {
        let missed = hand_off([1_000, 7_000, 900]);
        let quiet = run_group(&missed, 1, false);
        assert_eq!(
            quiet.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["multiproc Event", "CPython Event"]
        );
        assert!(!report(&missed, &quiet, false).contains("bound on one CPU"));

        let busy = run_group(&missed, 1, true);
        assert_eq!(busy.len(), 3);
        let text = report(&missed, &busy, true);
        assert!(
            text.contains("| bare switches *(bound on one CPU)* | 900 ns |"),
            "{text}"
        );
        assert!(
            text.contains(
                "≥ 10× CPython Event — **missed** (7.0×); 10× would be 700 ns per operation, \
                 against 900 ns for the bare switches alone"
            ),
            "{text}"
        );

        let met = hand_off([500, 7_000, 900]);
        let text = report(&met, &run_group(&met, 1, true), true);
        assert!(
            text.contains("≥ 10× CPython Event — met (14.0×).\n"),
            "{text}"
        );
    }
}
