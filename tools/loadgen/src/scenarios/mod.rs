//! Scenario dispatch plus the machinery they share: cross-thread flags and counters, the
//! warm-up/measurement window, per-second sampling and the progress line.

pub mod broadcast;
pub mod connect;
pub mod echo;
pub mod storm;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::ProgressBar;

use crate::cli::{Cli, Common, EchoMode, ProbeMode, Scenario, TokenVia};
use crate::clock;
use crate::conn::{ConnStats, Worker};
use crate::net::Target;
use crate::report::{self, Report};
use crate::sysstat::{self, Sample, Targets};
use crate::tls::Trust;

/// A finished run: the report plus what the plot needs.
pub struct Outcome {
    pub report: Report,
    pub latency: Histogram<u64>,
    /// Axis label for `report.timeline_per_sec`.
    pub rate_label: &'static str,
}

pub fn run(cli: &Cli) -> Result<Outcome, String> {
    let c = &cli.common;
    if c.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if !(c.duration > 0.0 && c.warmup >= 0.0 && c.connect_timeout > 0.0) {
        return Err("--duration and --connect-timeout must be > 0, --warmup >= 0".into());
    }
    // Needed for ~19k sockets per process; failure only matters for big runs.
    if let Err(e) = crate::net::raise_fd_limit() {
        eprintln!("warning: cannot raise RLIMIT_NOFILE: {e}");
    }
    check_token_via(cli)?;
    let target = target(c)?;
    let env = Env {
        common: c.clone(),
        target,
        targets: Targets {
            server_pid: c.server_pid,
            server_core: c.server_core,
        },
    };
    match &cli.scenario {
        Scenario::Connect(a) => connect::run(&env, a),
        Scenario::Echo(a) => echo::run(&env, a),
        Scenario::Broadcast(a) => broadcast::run(&env, a),
        Scenario::Storm(a) => storm::run(&env, a),
    }
}

/// `/echo` has no first message, so a token cannot come in a `connect` there.
fn check_token_via(cli: &Cli) -> Result<(), String> {
    if cli.common.tokens.is_none() || cli.common.token_via != TokenVia::Connect {
        return Ok(());
    }
    let raw = match &cli.scenario {
        Scenario::Echo(a) => a.mode == EchoMode::Raw,
        Scenario::Storm(a) => a.probe == ProbeMode::Raw,
        _ => false,
    };
    if raw {
        return Err(
            "raw echo (/echo) takes its token in the header or the query: \
                    --token-via header|query"
                .into(),
        );
    }
    Ok(())
}

/// The URL and the TLS flags as one [`Target`].
fn target(c: &Common) -> Result<Target, String> {
    let url = crate::net::parse_url(&c.url)?;
    let credentials = match &c.tokens {
        Some(path) => Some(std::sync::Arc::new(crate::credentials::Credentials::load(
            path,
            c.token_via,
        )?)),
        None => None,
    };
    if !url.tls {
        if c.ca.is_some() || c.insecure || c.server_name.is_some() {
            return Err("--ca, --insecure and --server-name need a wss:// --url".into());
        }
        return Ok(Target {
            dst: url.dst,
            host: url.host_port,
            tls: None,
            deflate: c.deflate,
            credentials,
        });
    }
    let trust = match (&c.ca, c.insecure) {
        (Some(path), _) => Trust::CaFile(path),
        (None, true) => {
            eprintln!("warning: --insecure: the server's certificate is not verified");
            Trust::AnyCertificate
        }
        (None, false) => Trust::Machine,
    };
    let name = c.server_name.as_deref().unwrap_or(&url.host);
    Ok(Target {
        dst: url.dst,
        host: url.host_port,
        tls: Some(crate::tls::Client::new(trust, name)?),
        deflate: c.deflate,
        credentials,
    })
}

/// Resolved common settings handed to every scenario.
pub struct Env {
    pub common: Common,
    pub target: Target,
    pub targets: Targets,
}

impl Env {
    pub fn connect_timeout_ns(&self) -> u64 {
        (self.common.connect_timeout * 1e9) as u64
    }
}

/// State shared between the main thread and the client threads.
#[derive(Default)]
pub struct Shared {
    /// Threads that finished set-up (connected, subscribed).
    pub ready: AtomicUsize,
    /// Main thread's go signal; start/end are valid once this is set.
    pub go: AtomicBool,
    /// Measurement window in [`clock::now_ns`] units.
    pub start_ns: AtomicU64,
    pub end_ns: AtomicU64,
    /// The scenario's main counter (replies, deliveries, opens), all-time, for progress.
    pub progress: AtomicU64,
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    /// Broadcast: publishes sent inside the window, deliveries of those received, subscribers.
    pub win_sent: AtomicU64,
    pub win_recv: AtomicU64,
    pub subscribed: AtomicU64,
}

impl Shared {
    pub fn window(&self) -> (u64, u64) {
        (self.start_ns.load(Acquire), self.end_ns.load(Acquire))
    }
}

/// What a client thread of a measuring scenario hands back: connection statistics, its latency
/// histogram, unexpected replies, and the scenario's own counters `T`.
pub struct ThreadResult<T> {
    pub stats: ConnStats,
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub samples: Vec<String>,
    pub counts: T,
}

/// All client threads' results merged; `counts` keeps one entry per thread.
pub struct Merged<T> {
    pub stats: ConnStats,
    pub hist: Histogram<u64>,
    pub errors: u64,
    /// The first few unexpected replies, then the connection problems.
    pub samples: Vec<String>,
    pub counts: Vec<T>,
}

/// Joins every client thread; a thread that panicked or failed fails the run.
pub fn join_all<T>(
    handles: Vec<std::thread::JoinHandle<Result<ThreadResult<T>, String>>>,
) -> Result<Merged<T>, String> {
    let mut m = Merged {
        stats: ConnStats::new(),
        hist: report::new_hist(),
        errors: 0,
        samples: Vec::new(),
        counts: Vec::new(),
    };
    for h in handles {
        let r = h
            .join()
            .map_err(|_| "client thread panicked".to_string())??;
        m.stats.merge(&r.stats);
        let _ = m.hist.add(&r.hist);
        m.errors += r.errors;
        m.samples.extend(r.samples);
        m.counts.push(r.counts);
    }
    m.samples.truncate(5);
    m.samples.extend(m.stats.samples.iter().cloned());
    Ok(m)
}

/// Joins threads that each return their connections' stats, merged; `what` names them if
/// one panicked.
pub fn join_stats(
    handles: Vec<std::thread::JoinHandle<Result<ConnStats, String>>>,
    what: &str,
) -> Result<ConnStats, String> {
    let mut stats = ConnStats::new();
    for h in handles {
        let s = h.join().map_err(|_| format!("{what} thread panicked"))??;
        stats.merge(&s);
    }
    Ok(stats)
}

/// Opens `count` connections at `rate`/s from one thread; `open(ctx, i)` starts connection i
/// of this thread's share. Between opens it polls so handshakes progress concurrently.
pub fn paced_open<T>(
    ctx: &mut T,
    count: usize,
    rate: f64,
    mut open: impl FnMut(&mut T, usize),
    mut poll: impl FnMut(&mut T, Duration),
) {
    let t0 = clock::now_ns();
    let interval = if rate > 0.0 { 1e9 / rate } else { 0.0 };
    let mut i = 0;
    while i < count {
        let now = clock::now_ns();
        // Open every connection that is due, so a slow poll turn does not lower the rate.
        while i < count && (t0 + (i as f64 * interval) as u64) <= now {
            open(ctx, i);
            i += 1;
        }
        let next = t0 + (i as f64 * interval) as u64;
        let wait = next.saturating_sub(clock::now_ns()).min(5_000_000);
        poll(ctx, Duration::from_nanos(wait));
    }
}

/// Publishes a worker's connect successes/failures to the shared counters (deltas only).
pub fn sync_counts<S>(w: &Worker<S>, shared: &Shared, last: &mut (u64, u64)) {
    let (ok, failed) = (w.stats.ok, w.stats.failed.total());
    shared.opened.fetch_add(ok - last.0, Relaxed);
    shared.failed.fetch_add(failed - last.1, Relaxed);
    *last = (ok, failed);
}

/// Progress spinner on stderr; indicatif hides it when stderr is not a terminal.
pub fn spinner() -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Main-thread side of echo/broadcast: wait for set-up, fix the window, sample counters every
/// second. Returns the samples at window start and end and the per-second series.
pub struct Window {
    pub a: Sample,
    pub b: Sample,
    pub timeline: Vec<f64>,
    pub duration_s: f64,
}

pub fn drive_window(
    env: &Env,
    shared: &Shared,
    threads: usize,
    total_conns: usize,
    what: &str,
) -> Window {
    let c = &env.common;
    let pb = spinner();
    // Set-up bound: pacing time plus the handshake timeout plus slack.
    let setup_ns =
        ((total_conns as f64 / c.connect_rate.max(1.0) + c.connect_timeout + 5.0) * 1e9) as u64;
    let deadline = clock::now_ns() + setup_ns;
    while shared.ready.load(Acquire) < threads && clock::now_ns() < deadline {
        pb.set_message(format!(
            "setting up: {}/{} connected, {} failed",
            shared.opened.load(Relaxed),
            total_conns,
            shared.failed.load(Relaxed)
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    if shared.ready.load(Acquire) < threads {
        eprintln!("warning: set-up did not finish in time; starting anyway");
    }
    let now = clock::now_ns();
    // With no connection open there is nothing to measure (a refused port, an untrusted
    // certificate): an empty window ends the run at once, and the verdict fails it.
    let nothing_open = all_failed(shared, total_conns);
    let (warmup, duration) = if nothing_open {
        (0.0, 0.0)
    } else {
        (c.warmup, c.duration)
    };
    let start = now + (warmup * 1e9) as u64;
    let end = start + (duration * 1e9) as u64;
    shared.start_ns.store(start, Release);
    shared.end_ns.store(end, Release);
    shared.go.store(true, Release);

    pb.set_message("warming up");
    sleep_until(start);
    let a = Sample::take(env.targets);
    let mut timeline = Vec::new();
    let mut last = shared.progress.load(Relaxed);
    let mut tick = start;
    while tick < end {
        let next = (tick + 1_000_000_000).min(end);
        sleep_until(next);
        let cur = shared.progress.load(Relaxed);
        let secs = (next - tick) as f64 / 1e9;
        let rate = (cur - last) as f64 / secs;
        timeline.push(rate);
        pb.set_message(format!("{rate:.0} {what}/s"));
        last = cur;
        tick = next;
    }
    let b = Sample::take(env.targets);
    pb.finish_and_clear();
    let duration_s = (end - start) as f64 / 1e9;
    Window {
        a,
        b,
        timeline,
        duration_s,
    }
}

/// Every one of `total` connection attempts failed and none opened.
pub fn all_failed(shared: &Shared, total: usize) -> bool {
    shared.opened.load(Acquire) == 0 && shared.failed.load(Acquire) >= total as u64
}

pub fn sleep_until(t_ns: u64) {
    let now = clock::now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// Fills the resource fields of a report from the window samples.
pub fn apply_usage(report: &mut Report, env: &Env, w: &Window) {
    report.set_usage(sysstat::usage(&w.a, &w.b));
    report.server_rss_bytes = env.targets.server_pid.and_then(sysstat::rss_bytes);
}

/// Finds `needle` in `hay` (short inputs; a plain scan beats building a searcher).
#[inline]
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Classifies a JSON reply by its "op" without parsing: looks in the first bytes only, since
/// corecast writes "op" first and payload data could contain the same text further on.
pub fn reply_op(payload: &[u8]) -> &'static str {
    const OPS: [(&[u8], &str); 4] = [
        (br#""op":"message""#, "message"),
        (br#""op":"echo""#, "echo"),
        (br#""op":"ok""#, "ok"),
        (br#""op":"error""#, "error"),
    ];
    let head = &payload[..payload.len().min(24)];
    OPS.iter()
        .find(|(pat, _)| find(head, pat).is_some())
        .map_or("other", |&(_, op)| op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_op_classifies() {
        assert_eq!(
            reply_op(br#"{"op":"message","topic":"t","data":{}}"#),
            "message"
        );
        assert_eq!(reply_op(br#"{"op":"ok","id":1}"#), "ok");
        assert_eq!(reply_op(br#"{"op":"error","code":"bad_request"}"#), "error");
        assert_eq!(reply_op(br#"{"op":"echo","data":"x"}"#), "echo");
        assert_eq!(reply_op(br#"{"x":1}"#), "other");
    }

    #[test]
    fn paced_open_respects_rate() {
        let t0 = std::time::Instant::now();
        let mut n = 0;
        paced_open(
            &mut n,
            50,
            1000.0,
            |n, _| *n += 1,
            |_, d| std::thread::sleep(d),
        );
        let el = t0.elapsed().as_secs_f64();
        assert_eq!(n, 50);
        assert!(el > 0.04 && el < 0.5, "{el}");
    }
}
