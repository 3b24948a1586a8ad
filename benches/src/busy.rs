//! `--compare --busy`: the same workloads while the machine is loaded.
//!
//! Production machines are rarely idle. The load here is one busy-looping process per
//! CPU but one (at least one): an unrelated job that takes CPUs away from the
//! workloads and their peers alike, so that waits that spin only while both sides have
//! a CPU show what they cost.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::compare::{section, splice_between};

/// The busy-looping processes, ended when dropped.
#[derive(Debug)]
pub struct Load {
    children: Vec<Child>,
}

impl Load {
    /// Starts one busy-looping process per CPU but one (at least one): this program
    /// again, with the `busy` argument.
    pub fn start() -> Load {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let exe = std::env::current_exe().expect("own path");
        let children = (0..cpus.saturating_sub(1).max(1))
            .map(|_| {
                Command::new(&exe)
                    .arg("busy")
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("start a busy-looping process")
            })
            .collect();
        Load { children }
    }

    /// How many busy-looping processes run.
    pub fn processes(&self) -> usize {
        self.children.len()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The body of a busy-looping process: spins, and ends once its parent is gone (so a
/// benchmark run that is killed leaves no load behind).
pub fn spin_until_orphaned() {
    let parent = std::os::unix::process::parent_id();
    let mut x = 0u64;
    loop {
        let until = Instant::now() + Duration::from_millis(10);
        while Instant::now() < until {
            for _ in 0..1_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

/// The report's header under load.
pub fn header(runs: usize, load: usize) -> String {
    part_header(
        runs,
        "Under load",
        "--busy",
        &format!(
            "and wrote this part of the file, while {load} busy-looping process{} kept \
             {load} of the CPUs taken (an unrelated job on the same machine). Every \
             peer ran under the same load. Rows marked *(bound on one CPU)* are two \
             processes kept on one CPU that pass the turn back and forth with \
             `sched_yield` and do nothing else: what a hand-off costs when the two \
             take turns on one CPU, as two processes that talk do when the other \
             CPUs are taken.",
            if load == 1 { "" } else { "es" }
        ),
    )
}

/// The header of a part of the file written by a run of its own: the plain header with
/// `title`, the command with `flag`, and `wrote` for what the run did; the machine's
/// table stays.
pub fn part_header(runs: usize, title: &str, flag: &str, wrote: &str) -> String {
    let plain = crate::header(runs);
    let mut lines: Vec<&str> = plain.lines().collect();
    lines.retain(|l| !l.starts_with("# Benchmarks"));
    let body = lines
        .join("\n")
        .replace(
            "cargo run --release -p multiproc-bench -- --compare\n",
            &format!("cargo run --release -p multiproc-bench -- --compare {flag}\n"),
        )
        .replace("and wrote this file.", wrote);
    format!("# {title}\n{body}\n")
}

/// The parts of `BENCHMARKS.md` that runs of their own write (`--busy`, `--scaling`),
/// in the order they follow the plain run's report.
pub const PARTS: [&str; 2] = ["busy", "scaling"];

/// The file `previous` with its "Under load" part replaced by `busy` (appended when it
/// has none yet).
pub fn place(previous: &str, busy: &str) -> String {
    place_part(previous, "busy", busy)
}

/// The file `previous` with its part `tag` (one of [`PARTS`]) replaced by `part`
/// (appended when it has none yet).
pub fn place_part(previous: &str, tag: &str, part: &str) -> String {
    splice_between(previous, tag, part).unwrap_or_else(|| {
        let mut text = previous.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        format!("{text}\n<!-- {tag}:start -->\n{part}<!-- {tag}:end -->\n")
    })
}

/// A plain run's `report`, followed by the parts of `previous` that other runs wrote
/// ("Under load", "Scaling"), those it has.
pub fn keep(previous: &str, mut report: String) -> String {
    for tag in PARTS {
        if let Some(part) = section(previous, tag) {
            if !report.ends_with('\n') {
                report.push('\n');
            }
            report.push('\n');
            report.push_str(part);
            report.push('\n');
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_run_keeps_the_busy_part_and_a_busy_run_replaces_it() {
        let first = place("# Benchmarks\nquiet\n", "# Under load\none\n");
        assert_eq!(
            first,
            "# Benchmarks\nquiet\n\n<!-- busy:start -->\n# Under load\none\n<!-- busy:end -->\n"
        );
        let second = place(&first, "# Under load\ntwo\n");
        assert!(
            second.contains("two") && !second.contains("one"),
            "{second}"
        );
        let plain = keep(&second, "# Benchmarks\nquiet again\n".into());
        assert!(plain.starts_with("# Benchmarks\nquiet again\n"), "{plain}");
        assert!(plain.contains("<!-- busy:start -->\n# Under load\ntwo\n<!-- busy:end -->"));
        assert_eq!(keep("no part", "r\n".into()), "r\n");
    }

    #[test]
    fn every_run_keeps_the_parts_it_does_not_write() {
        let scaled = place_part(
            &place("# Benchmarks\nquiet\n", "# Under load\none\n"),
            "scaling",
            "# Scaling\nsixteen\n",
        );
        let busy_again = place(&scaled, "# Under load\ntwo\n");
        assert!(
            busy_again.contains("sixteen") && busy_again.contains("two"),
            "{busy_again}"
        );
        let plain = keep(&busy_again, "# Benchmarks\nquiet again\n".into());
        let (busy_at, scaling_at) = (
            plain.find("<!-- busy:start -->").unwrap(),
            plain.find("<!-- scaling:start -->").unwrap(),
        );
        assert!(
            plain.starts_with("# Benchmarks\nquiet again\n") && busy_at < scaling_at,
            "{plain}"
        );
        assert!(plain.contains("two") && plain.contains("sixteen") && !plain.contains("one"));
    }
}
