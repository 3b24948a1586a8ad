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
    let plain = crate::header(runs);
    let mut lines: Vec<&str> = plain.lines().collect();
    // The title and the command are those of this mode; the machine's table stays.
    lines.retain(|l| !l.starts_with("# Benchmarks"));
    let body = lines
        .join("\n")
        .replace(
            "cargo run --release -p multiproc-bench -- --compare\n",
            "cargo run --release -p multiproc-bench -- --compare --busy\n",
        )
        .replace(
            "and wrote this file.",
            &format!(
                "and wrote this part of the file, while {load} busy-looping process{} kept \
                 {load} of the CPUs taken (an unrelated job on the same machine). Every \
                 peer ran under the same load.",
                if load == 1 { "" } else { "es" }
            ),
        );
    format!("# Under load\n{body}\n")
}

/// The file `previous` with its "Under load" part replaced by `busy` (appended when it
/// has none yet).
pub fn place(previous: &str, busy: &str) -> String {
    let part = busy;
    splice_between(previous, "busy", part).unwrap_or_else(|| {
        let mut text = previous.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        format!("{text}\n<!-- busy:start -->\n{part}<!-- busy:end -->\n")
    })
}

/// A plain run's `report`, followed by the "Under load" part of `previous`, if it has
/// one.
pub fn keep(previous: &str, mut report: String) -> String {
    if let Some(part) = section(previous, "busy") {
        if !report.ends_with('\n') {
            report.push('\n');
        }
        report.push('\n');
        report.push_str(part);
        report.push('\n');
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
}
