//! What the kernel says each process of a benchmark used: CPU time on a core (every thread's
//! `schedstat`, in nanoseconds, not the 10 ms ticks of `/proc/<pid>/stat`), context switches,
//! the machine's steal time; and pinning processes to cores with `taskset`.
//!
//! A process here is a tree: nginx's master and its workers count as one proxy.

use std::path::Path;
use std::process::Command;

/// Cumulative counters of a process tree at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub context_switches: u64,
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, before: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            context_switches: self
                .context_switches
                .saturating_sub(before.context_switches),
        }
    }
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
            {
                parents.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// The counters of every thread of every process in `pids` (threads that ended are not counted:
/// the benchmark's processes keep theirs).
pub fn usage(pids: &[u32]) -> Usage {
    let mut u = Usage::default();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let dir = t.path();
            if let Some(ns) = read(&dir.join("schedstat")).and_then(|s| parse_schedstat(&s)) {
                u.cpu_ns += ns;
            }
            if let Some(s) = read(&dir.join("status")) {
                u.context_switches += parse_context_switches(&s);
            }
        }
    }
    u
}

/// The machine's steal time and all time, in clock ticks, from `/proc/stat`.
pub fn steal_and_total() -> (u64, u64) {
    read(Path::new("/proc/stat"))
        .and_then(|s| s.lines().next().and_then(parse_cpu_line))
        .unwrap_or((0, 0))
}

/// Binds every thread of every process in `pids` to `cpus` (a `taskset` list such as `1` or
/// `0,1`). A pin that cannot be made is an error: a pinned figure must be pinned.
pub fn pin(pids: &[u32], cpus: &str) -> Result<(), String> {
    for pid in pids {
        let out = Command::new("taskset")
            .args(["-a", "-cp", cpus, &pid.to_string()])
            .output()
            .map_err(|e| format!("taskset (util-linux): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "taskset -a -cp {cpus} {pid}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The first field of `/proc/<pid>/task/<tid>/schedstat`: nanoseconds spent on a CPU.
fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// The parent pid from `/proc/<pid>/stat` (the field after the state, after the command name in
/// parentheses, which may itself contain spaces or parentheses).
fn parse_ppid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn parse_context_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        })
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// `cpu  user nice system idle iowait irq softirq steal …` → (steal, sum of all fields).
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("cpu ")?;
    let v: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // guest and guest_nice (fields 9 and 10) are already counted in user and nice.
    Some((*v.get(7)?, v.iter().take(8).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_formats_parse() {
        assert_eq!(parse_schedstat("123456789 2000 17\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(
            parse_ppid("4242 (nginx: worker (x)) S 4200 4200 4200 0 -1"),
            Some(4200)
        );
        let status =
            "Name:\tnginx\nvoluntary_ctxt_switches:\t150\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_context_switches(status), 157);
        assert_eq!(
            parse_cpu_line("cpu  10 1 5 100 2 0 3 4 0 0"),
            Some((4, 125))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3"), None);
    }

    #[test]
    fn this_process_uses_cpu_and_belongs_to_its_tree() {
        let me = std::process::id();
        let before = usage(&[me]);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let used = usage(&[me]) - before;
        assert!(used.cpu_ns > 0, "{used:?}");
        assert!(tree(me).contains(&me));
        let (steal, total) = steal_and_total();
        assert!(total > 0 && steal <= total);
    }
}
