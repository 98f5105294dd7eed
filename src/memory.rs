//! The process-wide memory guard: above `--max-memory` of resident memory, new connections
//! are refused (503) and slow consumers are cut shorter, so that the server never takes its
//! machine down. Sampled off the workers; workers and the acceptor read one flag.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Below this share of the limit (in percent) the guard lets go again; the gap keeps it
/// from flapping at the boundary.
const RELEASE_PERCENT: u64 = 90;

/// Under pressure, a subscriber's outbound bound is divided by this.
pub const PRESSURE_DIVISOR: usize = 4;

#[derive(Debug, Default)]
pub struct Guard {
    /// 0 = no guard.
    limit: u64,
    rss: AtomicU64,
    over: AtomicBool,
    /// Times the guard engaged.
    pub engaged: AtomicU64,
}

impl Guard {
    pub fn new(limit: u64) -> Self {
        Guard {
            limit,
            ..Guard::default()
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// True while resident memory is over the limit (until it falls below 90% of it).
    #[inline]
    pub fn over(&self) -> bool {
        self.over.load(Relaxed)
    }

    /// The last resident-memory sample, in bytes.
    pub fn rss(&self) -> u64 {
        self.rss.load(Relaxed)
    }

    /// Takes a sample and updates the flag, logging each change of state.
    pub fn sample(&self) {
        let Some(rss) = process_rss() else {
            return;
        };
        self.rss.store(rss, Relaxed);
        if self.limit == 0 {
            return;
        }
        let over = self.over();
        if !over && rss > self.limit {
            self.over.store(true, Relaxed);
            self.engaged.fetch_add(1, Relaxed);
            log::warn!(
                "resident memory {} MiB is over --max-memory {} MiB: refusing new connections \
                 and cutting slow consumers at 1/{PRESSURE_DIVISOR} of their bound",
                rss >> 20,
                self.limit >> 20
            );
        } else if over && rss < self.limit / 100 * RELEASE_PERCENT {
            self.over.store(false, Relaxed);
            log::warn!(
                "resident memory {} MiB is back under {RELEASE_PERCENT}% of --max-memory: \
                 accepting connections again",
                rss >> 20
            );
        }
    }
}

/// Resident set size of this process, from `/proc/self/statm` (one short read).
pub fn process_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Memory this process may use: physical memory, or the cgroup v2 limit if lower.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let mut total = total_kib * 1024;
    if let Ok(cg) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        if let Ok(limit) = cg.trim().parse::<u64>() {
            total = total.min(limit);
        }
    }
    Some(total)
}

/// The default `--max-memory`: a share of what is available.
pub fn default_limit(share_percent: u64) -> u64 {
    available().map_or(0, |m| m / 100 * share_percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engages_above_the_limit_and_lets_go_below_ninety_percent() {
        let g = Guard::new(1);
        g.sample();
        assert!(g.over(), "any process is over one byte");
        assert!(g.rss() > 0);
        assert_eq!(g.engaged.load(Relaxed), 1);
        let off = Guard::new(0);
        off.sample();
        assert!(!off.over(), "0 disables the guard");
        let roomy = Guard::new(u64::MAX / 2);
        roomy.sample();
        assert!(!roomy.over());
        assert!(available().unwrap() > 1 << 20);
    }
}
