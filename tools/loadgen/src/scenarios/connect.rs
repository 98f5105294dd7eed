//! `connect` scenario: open N idle connections at a fixed rate, hold them, close; measures
//! handshake latency, failures by cause and the server's memory per connection.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use super::{
    all_failed, join_stats, paced_open, sleep_until, spinner, sync_counts, Env, Outcome, Shared,
};
use crate::cli::ConnectArgs;
use crate::clock;
use crate::conn::{Conn, ConnStats, Handler, Worker};
use crate::report::{ConnectPhase, ConnectSummary, Latency, Report};
use crate::sysstat::{self, Sample};

/// Idle connections ignore data; pings are answered by the connection itself. It notes when
/// the last of its connections connected, which ends the connect phase.
struct Idle {
    last_open_ns: u64,
}

impl Handler<()> for Idle {
    fn on_data(&mut self, _: &mut (), _: u8, _: &[u8], _: u64) {}
    fn on_open(&mut self, _: &mut Conn<()>, now: u64) {
        self.last_open_ns = now;
    }
}

/// Small read buffer: idle connections only ever see the 101 and the odd ping; the buffer
/// grows on demand, so this keeps 19k connections cheap without limiting anything.
const RBUF: usize = 512;

pub fn run(env: &Env, a: &ConnectArgs) -> Result<Outcome, String> {
    let threads = env.common.threads.min(a.conns.max(1));
    let shared = Arc::new(Shared::default());
    // The latest connection to connect, over all threads.
    let last_open = Arc::new(AtomicU64::new(0));
    let pid = env.targets.server_pid;
    let baseline = pid.and_then(sysstat::rss_bytes);
    let s0 = Sample::take(env.targets);
    let t0 = clock::now_ns();
    let timeout = env.connect_timeout_ns();

    let mut handles = Vec::new();
    for t in 0..threads {
        let (shared, last_open) = (shared.clone(), last_open.clone());
        let (target, src_ips) = (env.target.clone(), env.common.src_ips);
        let (conns, rate) = (a.conns, a.rate / threads as f64);
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || -> Result<ConnStats, String> {
                let mut w: Worker<()> =
                    Worker::new(&target, src_ips, RBUF, t as u64).map_err(|e| e.to_string())?;
                let share: Vec<usize> = (t..conns).step_by(threads).collect();
                let mut last = (0, 0);
                let mut idle = Idle { last_open_ns: 0 };
                let poll = |w: &mut Worker<()>, idle: &mut Idle, d: Duration| {
                    let _ = w.poll(d, idle);
                    w.expire(clock::now_ns(), timeout);
                };
                let mut ctx = (&mut w, &mut idle);
                paced_open(
                    &mut ctx,
                    share.len(),
                    rate,
                    |(w, _), i| {
                        w.connect("/ws", share[i], ());
                    },
                    |(w, idle), d| {
                        poll(w, idle, d);
                        sync_counts(w, &shared, &mut last);
                    },
                );
                while w.pending > 0 {
                    poll(&mut w, &mut idle, Duration::from_millis(1));
                    sync_counts(&w, &shared, &mut last);
                }
                sync_counts(&w, &shared, &mut last);
                last_open.fetch_max(idle.last_open_ns, AcqRel);
                shared.ready.fetch_add(1, Release);
                // Hold: keep servicing pings/closes until the main thread says stop.
                while !shared.go.load(Acquire) {
                    poll(&mut w, &mut idle, Duration::from_millis(50));
                }
                w.close_all();
                Ok(w.stats)
            })
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }

    // Main thread: progress and per-second open rate until every thread is done connecting.
    let pb = spinner();
    let mut timeline = Vec::new();
    let mut last_ok = 0;
    let mut tick = t0;
    while shared.ready.load(Acquire) < threads {
        // Short: the phase's end (and the server's busy time up to it) is read off this loop.
        std::thread::sleep(Duration::from_millis(2));
        let ok = shared.opened.load(Relaxed);
        pb.set_message(format!(
            "connecting: {ok}/{} ok, {} failed",
            a.conns,
            shared.failed.load(Relaxed)
        ));
        if clock::now_ns() >= tick + 1_000_000_000 {
            tick += 1_000_000_000;
            timeline.push((ok - last_ok) as f64);
            last_ok = ok;
        }
    }
    let connected_at = clock::now_ns();
    let s_connected = Sample::take(env.targets);
    let rss_connected = pid.and_then(sysstat::rss_bytes);
    pb.set_message(format!(
        "holding {} connections",
        shared.opened.load(Relaxed)
    ));
    if !all_failed(&shared, a.conns) {
        sleep_until(connected_at + (a.hold * 1e9) as u64);
    }
    let rss_held = pid.and_then(sysstat::rss_bytes);
    let s1 = Sample::take(env.targets);
    let end = clock::now_ns();
    shared.go.store(true, Release);
    pb.finish_and_clear();

    let stats = join_stats(handles, "client")?;
    let phase_s = (connected_at - t0) as f64 / 1e9;
    let phase = sysstat::usage(&s0, &s_connected);
    let last_open_s = last_open.load(Acquire).saturating_sub(t0) as f64 / 1e9;
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    let connect_phase = ConnectPhase {
        seconds: (phase_s * 1000.0).round() / 1000.0,
        conns_per_sec: (stats.ok > 0 && last_open_s > 0.0)
            .then(|| (stats.ok as f64 / last_open_s).round()),
        server_core_busy_pct: phase.server_core_busy_pct.map(round1),
        server_cpu_pct: phase.server_cpu_pct.map(round1),
        loadgen_cpu_pct: phase.loadgen_cpu_pct.map(round1),
        server_core_us_per_conn: phase
            .server_core_busy_pct
            .filter(|_| stats.ok > 0)
            .map(|b| round1(b / 100.0 * phase_s * 1e6 / stats.ok as f64)),
    };
    // RSS at the end of the hold (all connections still open) is the settled figure; lazily
    // allocated per-connection state may not exist yet right after the last handshake.
    let rss = rss_held.or(rss_connected);
    let mut report = Report {
        scenario: "connect",
        conns: a.conns as u64,
        threads,
        duration_s: (end - t0) as f64 / 1e9,
        latency_us: Latency::from_hist(&stats.connect_us),
        connect: Some(ConnectSummary::from_stats(&stats)),
        connect_phase: Some(connect_phase),
        server_rss_bytes: rss,
        server_rss_baseline_bytes: baseline,
        rss_per_conn_bytes: match (rss, baseline) {
            (Some(r), Some(b)) if stats.ok > 0 => {
                Some(((r as f64 - b as f64) / stats.ok as f64).round())
            }
            _ => None,
        },
        error_samples: stats.samples.clone(),
        timeline_per_sec: timeline,
        params: serde_json::json!({
            "rate": a.rate,
            "hold_s": a.hold,
            "src_ips": env.common.src_ips,
            "connect_phase_s": (connected_at - t0) as f64 / 1e9,
            "server_rss_after_connect_bytes": rss_connected,
        }),
        ..Default::default()
    };
    report.set_usage(sysstat::usage(&s0, &s1));
    report.set_tls(env.target.tls.is_some(), &stats);
    report.set_wire(env.target.deflate, &stats);
    Ok(Outcome {
        report,
        latency: stats.connect_us,
        rate_label: "connections opened/s",
    })
}
