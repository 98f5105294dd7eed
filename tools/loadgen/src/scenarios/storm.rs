//! `storm` scenario: a reconnect storm watched by a bystander. A probe connection opens first
//! and echoes closed-loop, one request in flight, on its own thread for the whole run; then
//! N connections open as fast as `--rate` allows. Measures the time from the first attempt
//! until every one is connected (authenticated too, with `--tokens`), connections per second,
//! failures by reason, and the probe's latency before and during the storm.
//!
//! Against a freshly started server every token of the storm is new to it, so each costs a
//! signature check: the case of clients coming back after a restart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{join_stats, reply_op, sleep_until, spinner, sync_counts, Env, Outcome, Shared};
use crate::cli::{ProbeMode, StormArgs};
use crate::clock;
use crate::conn::{Conn, ConnStats, Handler, Worker};
use crate::frame;
use crate::report::{self, ConnectSummary, Latency, ProbeSummary, Report, StormSummary};
use crate::sysstat::{self, Sample};

/// Idle storm connections only ever see the 101, the `connect` reply and the odd ping.
const RBUF: usize = 512;
/// How often the main thread looks whether the storm settled, and the bins of the opening
/// curve in the report.
const TICK: Duration = Duration::from_millis(2);
const BIN_NS: u64 = 100_000_000;

/// A client thread that hands back `T`, or why it could not run.
type Thread<T> = std::thread::JoinHandle<Result<T, String>>;

/// What the storm threads and the probe share beyond [`Shared`] (whose `opened`, `failed`,
/// `ready` and `go` count and start the storm connections).
struct Storm {
    base: Shared,
    /// The probe: 1 once connected, 2 if it failed to.
    probe_state: AtomicU64,
    /// When the storm began and settled ([`clock::now_ns`]); `u64::MAX` until then.
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    /// Earliest connection attempt, latest connection that connected, latest failure.
    first_attempt_ns: AtomicU64,
    last_open_ns: AtomicU64,
    last_failure_ns: AtomicU64,
    /// Everyone stops: the probe stops sending and every connection closes.
    stop: AtomicBool,
}

/// A storm connection: it connects and then only answers pings.
struct Idle {
    last_open_ns: u64,
}

impl Handler<()> for Idle {
    fn on_data(&mut self, _: &mut (), _: u8, _: &[u8], _: u64) {}
    fn on_open(&mut self, _: &mut Conn<()>, now: u64) {
        self.last_open_ns = now;
    }
}

/// The probe's side: its one request in flight and its latency in each phase.
struct Probe {
    storm: Arc<Storm>,
    /// Raw mode: what the reply must equal; JSON: `None` (its op must be `echo`).
    expect: Option<Vec<u8>>,
    sent_ns: u64,
    replied: bool,
    before: Histogram<u64>,
    during: Histogram<u64>,
    after: Histogram<u64>,
    errors: u64,
    samples: Vec<String>,
}

impl Handler<()> for Probe {
    fn on_data(&mut self, _: &mut (), _: u8, payload: &[u8], now: u64) {
        let fits = match &self.expect {
            Some(e) => payload == &e[..],
            None => reply_op(payload) == "echo",
        };
        if !fits {
            self.errors += 1;
            if self.samples.len() < 5 {
                let cut = &payload[..payload.len().min(160)];
                self.samples.push(format!(
                    "probe: unexpected reply: {}",
                    String::from_utf8_lossy(cut)
                ));
            }
        }
        // A request belongs to the storm if it was answered after the storm began and sent
        // before it settled: a stall that straddles either edge counts.
        let (start, end) = (
            self.storm.start_ns.load(Relaxed),
            self.storm.end_ns.load(Relaxed),
        );
        let us = now.saturating_sub(self.sent_ns) / 1000;
        let hist = if now < start {
            &mut self.before
        } else if self.sent_ns <= end {
            &mut self.during
        } else {
            &mut self.after
        };
        report::record_us(hist, us);
        self.replied = true;
    }

    fn after_read(&mut self, conn: &mut Conn<()>, now: u64) {
        if std::mem::take(&mut self.replied) && !self.storm.stop.load(Relaxed) {
            conn.queue_repeated(1);
            self.sent_ns = now;
        }
    }
}

/// The probe's path, frame and expected reply.
fn probe_request(a: &StormArgs) -> (&'static str, u8, Vec<u8>, Option<Vec<u8>>) {
    match a.probe {
        ProbeMode::Raw => {
            let p: Vec<u8> = (0..a.probe_size).map(|i| b'a' + (i % 26) as u8).collect();
            ("/echo", frame::OP_BINARY, p.clone(), Some(p))
        }
        ProbeMode::Json => {
            let mut p = br#"{"op":"echo","data":""#.to_vec();
            p.extend(std::iter::repeat_n(b'x', a.probe_size));
            p.extend_from_slice(br#""}"#);
            ("/ws", frame::OP_TEXT, p, None)
        }
    }
}

/// The probe's thread: connect (as connection number `a.conns`, so it presents its own
/// token line), then echo one request at a time until told to stop.
fn spawn_probe(
    env: &Env,
    a: &StormArgs,
    storm: Arc<Storm>,
) -> Result<Thread<(Probe, ConnStats)>, String> {
    let (target, src_ips) = (env.target.clone(), env.common.src_ips);
    let timeout = env.connect_timeout_ns();
    let (path, opcode, payload, expect) = probe_request(a);
    let global = a.conns;
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            let mut w: Worker<()> =
                Worker::new(&target, src_ips, 4096, u64::MAX).map_err(|e| e.to_string())?;
            let mut p = Probe {
                storm: storm.clone(),
                expect,
                sent_ns: 0,
                replied: false,
                before: report::new_hist(),
                during: report::new_hist(),
                after: report::new_hist(),
                errors: 0,
                samples: Vec::new(),
            };
            w.connect(path, global, ());
            while w.pending > 0 {
                let _ = w.poll(Duration::from_millis(10), &mut p);
                w.expire(clock::now_ns(), timeout);
            }
            if w.open == 0 {
                storm.probe_state.store(2, Release);
                return Ok((p, w.stats));
            }
            w.send(0, |c| {
                c.set_repeated(opcode, &payload, 1);
                c.queue_repeated(1);
            });
            p.sent_ns = clock::now_ns();
            storm.probe_state.store(1, Release);
            while !storm.stop.load(Acquire) && w.open > 0 {
                w.poll(Duration::from_millis(10), &mut p)
                    .map_err(|e| e.to_string())?;
            }
            w.close_all();
            Ok((p, w.stats))
        })
        .map_err(|e| e.to_string())
}

/// One storm thread: waits for the go, opens its share at its part of the rate, notes when
/// its last connection connected, then holds them until told to stop.
fn spawn_storm_thread(
    env: &Env,
    a: &StormArgs,
    t: usize,
    threads: usize,
    storm: Arc<Storm>,
) -> Result<Thread<ConnStats>, String> {
    let (target, src_ips) = (env.target.clone(), env.common.src_ips);
    let timeout = env.connect_timeout_ns();
    let (conns, rate) = (a.conns, a.rate / threads as f64);
    std::thread::Builder::new()
        .name(format!("storm-{t}"))
        .spawn(move || {
            let mut w: Worker<()> =
                Worker::new(&target, src_ips, RBUF, t as u64).map_err(|e| e.to_string())?;
            let share: Vec<usize> = (t..conns).step_by(threads).collect();
            let mut idle = Idle { last_open_ns: 0 };
            let mut last = (0, 0);
            let mut last_failure_ns = 0;
            // Every thread's Poll exists before the go, so the storm starts at once.
            while !storm.base.go.load(Acquire) {
                std::thread::sleep(Duration::from_micros(200));
            }
            storm.first_attempt_ns.fetch_min(clock::now_ns(), AcqRel);
            let mut ctx = (&mut w, &mut idle);
            let mut poll = |(w, idle): &mut (&mut Worker<()>, &mut Idle), d: Duration| {
                let _ = w.poll(d, &mut **idle);
                w.expire(clock::now_ns(), timeout);
                if w.stats.failed.total() > last.1 {
                    last_failure_ns = clock::now_ns();
                }
                sync_counts(w, &storm.base, &mut last);
            };
            super::paced_open(
                &mut ctx,
                share.len(),
                rate,
                |(w, _), i| {
                    w.connect("/ws", share[i], ());
                },
                &mut poll,
            );
            while ctx.0.pending > 0 {
                poll(&mut ctx, Duration::from_millis(1));
            }
            storm.last_open_ns.fetch_max(idle.last_open_ns, AcqRel);
            storm.last_failure_ns.fetch_max(last_failure_ns, AcqRel);
            storm.base.ready.fetch_add(1, Release);
            while !storm.stop.load(Acquire) {
                let _ = w.poll(Duration::from_millis(50), &mut idle);
            }
            w.close_all();
            Ok(w.stats)
        })
        .map_err(|e| e.to_string())
}

pub fn run(env: &Env, a: &StormArgs) -> Result<Outcome, String> {
    if a.conns == 0 || a.rate < 0.0 || a.hold < 0.0 {
        return Err("--conns must be at least 1, --rate and --hold at least 0".into());
    }
    let threads = env.common.threads.min(a.conns);
    let storm = Arc::new(Storm {
        base: Shared::default(),
        probe_state: AtomicU64::new(0),
        start_ns: AtomicU64::new(u64::MAX),
        end_ns: AtomicU64::new(u64::MAX),
        first_attempt_ns: AtomicU64::new(u64::MAX),
        last_open_ns: AtomicU64::new(0),
        last_failure_ns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let pb = spinner();
    pb.set_message("probe connecting");
    let probe = spawn_probe(env, a, storm.clone())?;
    let deadline = clock::now_ns() + env.connect_timeout_ns() + 1_000_000_000;
    while storm.probe_state.load(Acquire) == 0 && clock::now_ns() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if storm.probe_state.load(Acquire) != 1 {
        storm.stop.store(true, Release);
        let why = match probe.join() {
            Ok(Ok((_, stats))) => stats.samples.first().cloned().unwrap_or_default(),
            _ => "probe thread failed".into(),
        };
        return Err(format!("the probe connection did not connect: {why}"));
    }
    let mut handles = Vec::new();
    for t in 0..threads {
        handles.push(spawn_storm_thread(env, a, t, threads, storm.clone())?);
    }
    // The probe's latency before the storm is the baseline the storm's is read against.
    pb.set_message("probe alone (warm-up)");
    sleep_until(clock::now_ns() + (env.common.warmup * 1e9) as u64);

    let s0 = Sample::take(env.targets);
    let t0 = clock::now_ns();
    storm.start_ns.store(t0, Release);
    storm.base.go.store(true, Release);
    // Bound: the pacing at the given rate, a connect timeout, and slack.
    let pacing_s = if a.rate > 0.0 {
        a.conns as f64 / a.rate
    } else {
        0.0
    };
    let limit = t0 + ((pacing_s + env.common.connect_timeout + 10.0) * 1e9) as u64;
    let mut bins = Vec::new();
    let mut timeline = Vec::new();
    let (mut bin_end, mut sec_end) = (t0 + BIN_NS, t0 + 1_000_000_000);
    let (mut at_bin, mut at_sec) = (0, 0);
    while storm.base.ready.load(Acquire) < threads && clock::now_ns() < limit {
        std::thread::sleep(TICK);
        let now = clock::now_ns();
        let ok = storm.base.opened.load(Relaxed);
        if now >= bin_end {
            bins.push(ok - at_bin);
            (at_bin, bin_end) = (ok, bin_end + BIN_NS);
        }
        if now >= sec_end {
            timeline.push((ok - at_sec) as f64);
            (at_sec, sec_end) = (ok, sec_end + 1_000_000_000);
        }
        pb.set_message(format!(
            "storm: {ok}/{} connected, {} failed",
            a.conns,
            storm.base.failed.load(Relaxed)
        ));
    }
    let settled_at = clock::now_ns();
    let s1 = Sample::take(env.targets);
    storm.end_ns.store(settled_at, Release);
    let ok = storm.base.opened.load(Acquire);
    bins.push(ok - at_bin);
    if settled_at < limit {
        pb.set_message("holding");
        sleep_until(settled_at + (a.hold * 1e9) as u64);
    } else {
        eprintln!("warning: the storm did not settle in time; stopping");
    }
    let rss = env.targets.server_pid.and_then(sysstat::rss_bytes);
    storm.stop.store(true, Release);
    pb.finish_and_clear();

    let stats = join_stats(handles, "storm")?;
    let (probe, probe_stats) = probe
        .join()
        .map_err(|_| "probe thread panicked".to_string())??;

    let first = storm.first_attempt_ns.load(Acquire).min(settled_at);
    let secs = |t: u64| t.saturating_sub(first) as f64 / 1e9;
    let last_open = storm.last_open_ns.load(Acquire);
    let last_failure = storm.last_failure_ns.load(Acquire);
    let all_connected = stats.ok == a.conns as u64;
    let to_all = all_connected.then(|| secs(last_open));
    let settle = secs(last_open.max(last_failure).max(first));
    let summary = StormSummary {
        all_connected,
        time_to_all_connected_s: to_all.map(round3),
        time_to_settle_s: round3(settle),
        conns_per_sec: (last_open > first && stats.ok > 0)
            .then(|| (stats.ok as f64 / secs(last_open)).round()),
        opened_per_100ms: bins,
        probe: ProbeSummary {
            mode: match a.probe {
                ProbeMode::Raw => "raw",
                ProbeMode::Json => "json",
            },
            size: a.probe_size,
            before_us: Latency::from_hist(&probe.before),
            during_us: Latency::from_hist(&probe.during),
            after_us: Latency::from_hist(&probe.after),
            errors: probe.errors,
            dropped: probe_stats.dropped > 0,
        },
    };
    let mut samples = probe.samples.clone();
    samples.extend(probe_stats.samples.iter().map(|s| format!("probe: {s}")));
    samples.extend(stats.samples.iter().cloned());
    let mut report = Report {
        scenario: "storm",
        conns: a.conns as u64,
        threads,
        duration_s: round3(secs(settled_at)),
        latency_us: Latency::from_hist(&probe.during),
        connect: Some(ConnectSummary::from_stats(&stats)),
        server_rss_bytes: rss,
        server_errors: probe.errors,
        error_samples: samples,
        timeline_per_sec: timeline,
        storm: Some(summary),
        params: serde_json::json!({
            "rate": a.rate,
            "probe": format!("{:?}", a.probe).to_lowercase(),
            "probe_size": a.probe_size,
            "hold_s": a.hold,
            "src_ips": env.common.src_ips,
            "warmup_s": env.common.warmup,
            "tokens": env.target.credentials.as_ref().map(|c| c.len()),
            "token_via": env.target.credentials.as_ref()
                .map(|c| format!("{:?}", c.via).to_lowercase()),
        }),
        ..Default::default()
    };
    report.set_usage(sysstat::usage(&s0, &s1));
    report.set_tls(env.target.tls.is_some(), &stats);
    report.set_wire(env.target.deflate, &stats);
    Ok(Outcome {
        report,
        latency: probe.during,
        rate_label: "connections opened/s",
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
