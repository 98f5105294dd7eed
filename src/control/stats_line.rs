//! The periodic info-level stats line (`--stats-interval`): an interval task on the control
//! thread's runtime that reads the workers' counters, never a worker's time.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::memory::process_rss;
use crate::shared::Shared;
use crate::stop::{stopped, Stopping};

/// Logs one line of rates every `every` until `stopping` turns true.
pub async fn run(shared: Arc<Shared>, every: Duration, mut stopping: Stopping) {
    // The first line comes one period after start, as a rate needs a period behind it.
    let mut ticks = interval_at(Instant::now() + every, every);
    // A late tick (a busy control thread) moves the schedule rather than bursting lines.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = shared.totals();
    let mut at = Instant::now();
    loop {
        tokio::select! {
            _ = stopped(&mut stopping) => return,
            _ = ticks.tick() => {}
        }
        let now = shared.totals();
        let secs = at.elapsed().as_secs_f64().max(1e-3);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        log::info!(
            "conns {} | in {:.0}/s out {:.0}/s | deliveries {:.0}/s | dropped {} (+{}) | \
             queued {} B | rss {} KiB",
            now.open,
            rate(now.messages_in, last.messages_in),
            rate(now.messages_out, last.messages_out),
            rate(now.deliveries, last.deliveries),
            now.dropped,
            now.dropped.saturating_sub(last.dropped),
            now.queued_bytes,
            process_rss().unwrap_or(0) / 1024,
        );
        last = now;
        at = Instant::now();
    }
}
