//! Resource limits of this process (`setrlimit`), what it has used of them, and the
//! memory cgroups a child is capped by.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::sys::{CgroupKind, RlimitKind};

/// `SIGXCPU`: the soft CPU-time limit was reached.
pub(crate) const SIGXCPU: i32 = libc::SIGXCPU;
/// `EMFILE`: the process has as many descriptors open as it may.
pub(crate) const EMFILE: i32 = libc::EMFILE;

fn resource(kind: RlimitKind) -> Resource {
    match kind {
        RlimitKind::AddressSpace => Resource::As,
        RlimitKind::CpuSeconds => Resource::Cpu,
        RlimitKind::OpenFiles => Resource::Nofile,
        RlimitKind::Processes => Resource::Nproc,
    }
}

/// Sets the soft limit of `kind` to `soft`, and with `hard` the hard limit to it too
/// (never above the current hard limit, which only a privileged process may raise).
///
/// A CPU limit held down by a lower hard limit is set a second below it: at the hard
/// limit the kernel sends `SIGKILL` (before `SIGXCPU` when both are reached at once),
/// which would not say that CPU time ended the process.
pub(crate) fn set_rlimit(kind: RlimitKind, soft: u64, hard: bool) -> io::Result<()> {
    let r = resource(kind);
    let current = getrlimit(r);
    let soft = match current.maximum {
        Some(max) if soft >= max && !hard && matches!(kind, RlimitKind::CpuSeconds) => {
            max.saturating_sub(1).max(1).min(max)
        }
        Some(max) => soft.min(max),
        None => soft,
    };
    let limit = Rlimit {
        current: Some(soft),
        maximum: if hard { Some(soft) } else { current.maximum },
    };
    Ok(setrlimit(r, limit)?)
}

/// CPU time this process has used, user and system (`CLOCK_PROCESS_CPUTIME_ID`, what
/// `RLIMIT_CPU` counts).
pub(crate) fn cpu_time_used() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// This process's address space (what `RLIMIT_AS` counts), in bytes.
pub(crate) fn address_space_used() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_ascii_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("unexpected /proc/self/statm"))?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// The directory of this process's own memory cgroup, where it may make cgroups for its
/// children, and the kind of hierarchy: cgroup v2 when its memory controller is (or can
/// be) enabled for children there, else the v1 memory hierarchy. An error says why
/// neither is usable (no memory controller, or no right to write there).
pub(crate) fn memory_cgroup_home() -> io::Result<(PathBuf, CgroupKind)> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut why = Vec::new();
    // v2: "0::/path".
    if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::"))
        && let Some(dir) = mounted(&mounts, "cgroup2", None, path)
    {
        match v2_memory_for_children(&dir) {
            Ok(()) => return writable(dir, CgroupKind::V2),
            Err(e) => why.push(format!("cgroup v2 at {}: {e}", dir.display())),
        }
    }
    // v1: "N:...,memory,...:/path".
    let v1 = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    if let Some(path) = v1 {
        match mounted(&mounts, "cgroup", Some("memory"), path) {
            Some(dir) => match writable(dir.clone(), CgroupKind::V1) {
                Ok(home) => return Ok(home),
                Err(e) => why.push(format!("cgroup v1 memory at {}: {e}", dir.display())),
            },
            None => why.push("the v1 memory hierarchy is not mounted".into()),
        }
    }
    if why.is_empty() {
        why.push("no cgroup has a memory controller".into());
    }
    Err(io::Error::new(io::ErrorKind::Unsupported, why.join("; ")))
}

/// The directory of cgroup `path` in the hierarchy mounted with `fstype` (and, for v1,
/// the `controller` in its options), from `/proc/self/mountinfo`.
fn mounted(mounts: &str, fstype: &str, controller: Option<&str>, path: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let (kind, _source, options) = (right.next()?, right.next()?, right.next()?);
        if kind != fstype || controller.is_some_and(|c| !options.split(',').any(|o| o == c)) {
            return None;
        }
        let mut left = left.split(' ');
        let (root, point) = (left.nth(3)?, left.next()?);
        // A mount of a subtree shows the paths below its root.
        let below = path.strip_prefix(root.trim_end_matches('/'))?;
        Some(Path::new(point).join(below.trim_start_matches('/')))
    })
}

/// Makes sure cgroups made in `dir` get the memory controller (v2).
fn v2_memory_for_children(dir: &Path) -> io::Result<()> {
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control"))?;
    if enabled.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    let available = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    if !available.split_whitespace().any(|c| c == "memory") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no memory controller",
        ));
    }
    // Refused while processes live in `dir` itself (v2 keeps them in leaves only),
    // unless it is the root.
    std::fs::write(dir.join("cgroup.subtree_control"), "+memory")
}

fn writable(dir: PathBuf, kind: CgroupKind) -> io::Result<(PathBuf, CgroupKind)> {
    rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK)?;
    Ok((dir, kind))
}

/// Makes cgroup `dir` with a memory limit of `bytes` (swap included, where the kernel
/// accounts it: a process cannot escape the cap into swap).
pub(crate) fn make_memory_cgroup(dir: &Path, kind: CgroupKind, bytes: u64) -> io::Result<()> {
    std::fs::create_dir(dir)?;
    let set = |file: &str| std::fs::write(dir.join(file), bytes.to_string());
    let limited = match kind {
        CgroupKind::V2 => set("memory.max").and_then(|()| {
            // Absent without swap accounting.
            match std::fs::write(dir.join("memory.swap.max"), "0") {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }),
        CgroupKind::V1 => {
            set("memory.limit_in_bytes").and_then(|()| match set("memory.memsw.limit_in_bytes") {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            })
        }
    };
    if let Err(e) = limited {
        let _ = std::fs::remove_dir(dir);
        return Err(e);
    }
    Ok(())
}

/// Moves this process into cgroup `dir`.
pub(crate) fn join_cgroup(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), "0")
}

/// How many processes the kernel's out-of-memory killer killed in cgroup `dir` for
/// going over its limit.
pub(crate) fn oom_kills(dir: &Path, kind: CgroupKind) -> io::Result<u64> {
    let file = match kind {
        CgroupKind::V2 => "memory.events",
        CgroupKind::V1 => "memory.oom_control",
    };
    let text = std::fs::read_to_string(dir.join(file))?;
    oom_kills_in(&text, kind)
        .ok_or_else(|| io::Error::other(format!("no oom_kill count in {file}")))
}

/// [`oom_kills`] from the text of the cgroup's file. v2's `oom_kill` counts kills by
/// any out-of-memory killer, the machine's own included (a child far under its cap
/// killed because the whole machine ran short): they are the cgroup's only if its `oom`
/// count says its limit was reached. v1 keeps no such count.
fn oom_kills_in(text: &str, kind: CgroupKind) -> Option<u64> {
    let count = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    let kills = count("oom_kill")?;
    match kind {
        CgroupKind::V2 => Some(if count("oom")? > 0 { kills } else { 0 }),
        CgroupKind::V1 => Some(kills),
    }
}

/// Removes cgroup `dir`; fails (`EBUSY`) while a process is in it.
pub(crate) fn remove_cgroup(dir: &Path) -> io::Result<()> {
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 cgroup whose child the machine's out-of-memory killer took (its `oom_kill`
    /// counts it) without the cgroup reaching its limit (`oom` 0) did not run out of
    /// its cap.
    #[test]
    fn only_kills_at_the_cgroups_own_limit_count() {
        let events = |oom: u32, kills: u32| {
            format!("low 0\nhigh 0\nmax 3\noom {oom}\noom_kill {kills}\noom_group_kill 0\n")
        };
        assert_eq!(oom_kills_in(&events(0, 1), CgroupKind::V2), Some(0));
        assert_eq!(oom_kills_in(&events(1, 1), CgroupKind::V2), Some(1));
        assert_eq!(oom_kills_in(&events(2, 3), CgroupKind::V2), Some(3));
        assert_eq!(oom_kills_in("low 0\noom_kill 1\n", CgroupKind::V2), None);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kills_in(v1, CgroupKind::V1), Some(2));
    }
}
