//! /proc sampling: server RSS and CPU, a CPU core's busy time, and our own CPU, over a window.

use std::time::Instant;

/// Resident set size of `pid` in bytes, from /proc/PID/status VmRSS.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime of a process in clock ticks; `who` is a pid or "self".
fn proc_ticks(who: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')' come state(3), ..., utime is field 14 and stime 15 (1-based): offsets 11, 12.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (total, idle + iowait) jiffies of CPU `core` from /proc/stat.
fn core_times(core: usize) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let tag = format!("cpu{core}");
    let line = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(tag.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    // already included in user/nice, so only the first eight fields are summed.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// What to watch; `None` fields are skipped.
#[derive(Clone, Copy, Default)]
pub struct Targets {
    pub server_pid: Option<u32>,
    pub server_core: Option<usize>,
}

/// One snapshot of all counters.
#[derive(Clone)]
pub struct Sample {
    at: Instant,
    server: Option<u64>,
    core: Option<(u64, u64)>,
    own: Option<u64>,
}

impl Sample {
    pub fn take(t: Targets) -> Sample {
        Sample {
            at: Instant::now(),
            server: t.server_pid.and_then(|p| proc_ticks(&p.to_string())),
            core: t.server_core.and_then(core_times),
            own: proc_ticks("self"),
        }
    }
}

/// Utilisation between two samples, in percent (process figures may exceed 100 with threads).
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub server_cpu_pct: Option<f64>,
    pub server_core_busy_pct: Option<f64>,
    pub loadgen_cpu_pct: Option<f64>,
}

pub fn usage(a: &Sample, b: &Sample) -> Usage {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let pct = |x: Option<u64>, y: Option<u64>| -> Option<f64> {
        let d = y?.checked_sub(x?)? as f64;
        (wall > 0.0).then(|| 100.0 * d / clk_tck() / wall)
    };
    let core = match (a.core, b.core) {
        (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
            let total = (t1 - t0) as f64;
            Some(100.0 * (total - i1.saturating_sub(i0) as f64) / total)
        }
        _ => None,
    };
    Usage {
        server_cpu_pct: pct(a.server, b.server),
        server_core_busy_pct: core,
        loadgen_cpu_pct: pct(a.own, b.own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_core0() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        let t = Targets {
            server_pid: Some(me),
            server_core: Some(0),
        };
        let a = Sample::take(t);
        // Burn a little CPU so the deltas are non-zero.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 120 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let u = usage(&a, &Sample::take(t));
        let own = u.loadgen_cpu_pct.unwrap();
        assert!(own > 10.0 && own < 250.0, "{own}");
        assert!(u.server_cpu_pct.is_some());
        let core = u.server_core_busy_pct.unwrap_or(0.0);
        assert!((0.0..=100.0).contains(&core));
    }
}
