//! The web console: one page embedded in the binary, which the workers serve on a plain GET
//! of `/` (not with `--no-console`), and its live figures, `GET /stats.json`. A task on the
//! control thread rebuilds the figures once a second from counters the workers keep anyway
//! and swaps them in; a worker answering either request copies bytes made beforehand, takes
//! no lock and computes nothing.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::memory::process_rss;
use crate::shared::Shared;
use crate::stats::{Snapshot, TurnCounts};
use crate::stop::{stopped, Stopping};

/// The page (HTML, CSS and script in one file; nothing is fetched from elsewhere).
pub const PAGE: &[u8] = include_bytes!("console/index.html");

/// What the page may do: talk to its own origin (fetch, WebSocket) and run its own inline
/// code, nothing else.
pub const PAGE_HEADERS: &str = "Content-Security-Policy: default-src 'none'; \
     connect-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n\
     Referrer-Policy: no-referrer\r\n";

/// How often the figures are taken.
pub const EVERY: Duration = Duration::from_secs(1);
/// Samples kept, oldest first: five minutes.
pub const HISTORY: usize = 300;

/// The latest `/stats.json`, shared with the workers.
#[derive(Debug)]
pub struct Console {
    stats: ArcSwap<Vec<u8>>,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            stats: ArcSwap::from_pointee(b"{\"samples\":[]}".to_vec()),
        }
    }
}

impl Console {
    /// The body of `/stats.json` as of the last sample.
    pub fn stats(&self) -> arc_swap::Guard<Arc<Vec<u8>>> {
        self.stats.load()
    }
}

/// One second of the server, as the page charts it.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    /// Unix time, ms.
    t: u64,
    connections: i64,
    worker_connections: Vec<i64>,
    messages_in_per_s: f64,
    messages_out_per_s: f64,
    deliveries_per_s: f64,
    slow_dropped_per_s: f64,
    slow_closed_per_s: f64,
    rss_bytes: u64,
    /// Per worker: loop turns per second over the interval (an idle worker wakes about
    /// once a second).
    turns_per_s: Vec<f64>,
    /// Per worker: how long the turn in progress has been running, ms (0: asleep). Above
    /// a second, the worker is stalled: none of its clients is being served.
    turn_running_ms: Vec<u64>,
    /// Per worker, the upper bound of the power-of-two bucket holding the median and the
    /// 99th percentile turn time of the interval (null without turns).
    turn_p50_us: Vec<Option<u64>>,
    turn_p99_us: Vec<Option<u64>>,
}

#[derive(Serialize)]
struct Totals {
    messages_in: u64,
    messages_out: u64,
    deliveries: u64,
    slow_consumer_dropped: u64,
    slow_consumer_closed: u64,
    connections_accepted: u64,
}

#[derive(Serialize)]
struct Stats<'a> {
    version: &'static str,
    uptime_s: f64,
    workers: usize,
    interval_s: f64,
    draining: bool,
    /// As of the newest sample: WebSocket connections open (upgraded; plain HTTP requests
    /// such as this one, and handshakes in progress, are not counted).
    connections: i64,
    totals: Totals,
    samples: &'a VecDeque<Sample>,
}

/// Samples the counters every [`EVERY`] into `console` until stopped.
pub async fn run(shared: Arc<Shared>, console: Arc<Console>, mut stopping: Stopping) {
    let mut ticks = interval(EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut samples = VecDeque::with_capacity(HISTORY);
    let mut last = (Instant::now(), shared.totals(), turns(&shared));
    loop {
        tokio::select! {
            _ = stopped(&mut stopping) => return,
            _ = ticks.tick() => {}
        }
        let now = (Instant::now(), shared.totals(), turns(&shared));
        let sample = sample(&shared, &last, &now);
        if samples.len() == HISTORY {
            samples.pop_front();
        }
        samples.push_back(sample);
        let t = &now.1;
        let body = Stats {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: shared.started.elapsed().as_secs_f64(),
            workers: shared.stats.len(),
            interval_s: EVERY.as_secs_f64(),
            draining: shared.draining.load(Relaxed),
            connections: t.websockets,
            totals: Totals {
                messages_in: t.messages_in,
                messages_out: t.messages_out,
                deliveries: t.deliveries,
                slow_consumer_dropped: t.dropped,
                slow_consumer_closed: t.slow_closes,
                connections_accepted: t.accepted,
            },
            samples: &samples,
        };
        match serde_json::to_vec(&body) {
            Ok(json) => console.stats.store(Arc::new(json)),
            Err(e) => log::error!("console: /stats.json not encoded: {e}"),
        }
        last = now;
    }
}

fn turns(shared: &Shared) -> Vec<TurnCounts> {
    shared.stats.iter().map(|s| s.turns.read()).collect()
}

type Reading = (Instant, Snapshot, Vec<TurnCounts>);

fn sample(shared: &Shared, (then, before, turns_before): &Reading, now: &Reading) -> Sample {
    let (at, after, turns_after) = now;
    let secs = at.duration_since(*then).as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    let interval: Vec<TurnCounts> = turns_after
        .iter()
        .zip(turns_before)
        .map(|(a, b)| a.since(b))
        .collect();
    Sample {
        t: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        connections: after.websockets,
        worker_connections: shared
            .stats
            .iter()
            .map(|s| s.websockets.load(Relaxed))
            .collect(),
        messages_in_per_s: rate(after.messages_in, before.messages_in),
        messages_out_per_s: rate(after.messages_out, before.messages_out),
        deliveries_per_s: rate(after.deliveries, before.deliveries),
        slow_dropped_per_s: rate(after.dropped, before.dropped),
        slow_closed_per_s: rate(after.slow_closes, before.slow_closes),
        rss_bytes: process_rss().unwrap_or(0),
        turns_per_s: interval.iter().map(|t| t.count() as f64 / secs).collect(),
        turn_running_ms: shared
            .stats
            .iter()
            .map(|s| s.turns.running(std::time::Instant::now()).as_millis() as u64)
            .collect(),
        turn_p50_us: interval.iter().map(|t| t.quantile_us(0.5)).collect(),
        turn_p99_us: interval.iter().map(|t| t.quantile_us(0.99)).collect(),
    }
}
