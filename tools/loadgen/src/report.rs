//! Run results: the JSON schema printed with `--json` and the human summary on stderr.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::conn::{ConnStats, Failures};
use crate::sysstat::Usage;

/// Microsecond histogram covering 1 µs .. 100 s at 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds are valid")
}

/// Records a latency in microseconds, clamping into the histogram range instead of dropping.
#[inline]
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, 100_000_000));
}

#[derive(Debug, Serialize, Clone, Copy, Default)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    pub samples: u64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
            samples: h.len(),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectSummary {
    pub ok: u64,
    pub failed: Failures,
    /// TCP connect start -> 101 received (the TLS handshake included).
    pub latency_us: Option<Latency>,
    /// TCP established -> TLS handshake finished; null for ws://.
    pub tls_handshake_us: Option<Latency>,
    /// Connections that were open and then closed or reset by the server.
    pub dropped: u64,
    /// `failed.unauthorized` by the server's reason ("token expired", "bad signature").
    pub unauthorized_reasons: std::collections::BTreeMap<String, u64>,
}

impl ConnectSummary {
    pub fn from_stats(s: &ConnStats) -> Self {
        ConnectSummary {
            ok: s.ok,
            failed: s.failed.clone(),
            latency_us: Latency::from_hist(&s.connect_us),
            tls_handshake_us: Latency::from_hist(&s.tls_handshake_us),
            dropped: s.dropped,
            unauthorized_reasons: s.unauthorized_reasons.clone(),
        }
    }
}

/// `storm`: how the storm went and what the probe saw.
#[derive(Debug, Serialize)]
pub struct StormSummary {
    /// Every connection of the storm connected (and was authenticated, with tokens).
    pub all_connected: bool,
    /// First attempt -> the last connection connected; null unless all connected.
    pub time_to_all_connected_s: Option<f64>,
    /// First attempt -> the last outcome (connected or failed).
    pub time_to_settle_s: f64,
    /// Connections connected per second, first attempt to the last one connected.
    pub conns_per_sec: Option<f64>,
    /// Connections connected in each 100 ms from the first attempt: the storm's shape.
    pub opened_per_100ms: Vec<u64>,
    pub probe: ProbeSummary,
}

/// `storm`: the probe connection's echo latency (one request in flight) by phase.
#[derive(Debug, Serialize)]
pub struct ProbeSummary {
    /// `raw` (`/echo`) or `json` (`{"op":"echo"}` on `/ws`).
    pub mode: &'static str,
    pub size: usize,
    /// Alone, during the warm-up before the storm: the baseline.
    pub before_us: Option<Latency>,
    /// Requests answered after the storm began and sent before it settled.
    pub during_us: Option<Latency>,
    /// During `--hold`, after the storm settled.
    pub after_us: Option<Latency>,
    /// Replies that were not the echo of the request.
    pub errors: u64,
    /// The probe's connection ended before the run did.
    pub dropped: bool,
}

/// `connect`: the connect phase alone (first attempt to the last outcome), without the hold.
#[derive(Debug, Serialize, Default)]
pub struct ConnectPhase {
    pub seconds: f64,
    /// Connections connected per second in the phase.
    pub conns_per_sec: Option<f64>,
    pub server_core_busy_pct: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub loadgen_cpu_pct: Option<f64>,
    /// Busy time of the server's core per connection connected, in microseconds: what a
    /// connection costs the server whether or not the phase saturated it.
    pub server_core_us_per_conn: Option<f64>,
}

/// One object on stdout with `--json`. Keys not applicable to a scenario are `null`.
#[derive(Debug, Serialize, Default)]
pub struct Report {
    pub scenario: &'static str,
    /// Whether the run used wss://.
    pub tls: bool,
    /// What TLS negotiated (`TLSv1_3`, `TLS13_AES_256_GCM_SHA384`, `http/1.1`), as seen on the
    /// first connection that finished a handshake; null for ws:// or when none did.
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    pub tls_alpn: Option<String>,
    pub conns: u64,
    pub threads: usize,
    pub duration_s: f64,
    pub messages_per_sec: Option<f64>,
    pub bytes_per_sec: Option<f64>,
    pub deliveries_per_sec: Option<f64>,
    pub expected: Option<u64>,
    pub received: Option<u64>,
    pub lost: Option<u64>,
    pub latency_us: Option<Latency>,
    pub connect: Option<ConnectSummary>,
    pub server_rss_bytes: Option<u64>,
    pub server_rss_baseline_bytes: Option<u64>,
    pub rss_per_conn_bytes: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub server_core_busy_pct: Option<f64>,
    pub loadgen_cpu_pct: Option<f64>,
    /// With `--deflate`: connections whose server agreed to permessage-deflate, and messages
    /// that arrived compressed; null without it.
    pub deflate_conns: Option<u64>,
    pub inflated_messages: Option<u64>,
    /// Bytes received by all connections over the run (WebSocket bytes, after TLS).
    pub bytes_received: Option<u64>,
    /// broadcast: bytes received per delivered message once publishing started (frame
    /// headers and compression included): what the fan-out costs on the wire.
    pub bytes_per_delivery: Option<f64>,
    /// Server `{"op":"error"}` replies (and unexpected replies) seen during the run.
    pub server_errors: u64,
    pub error_samples: Vec<String>,
    /// Per-second throughput of the scenario's main counter over the measurement window.
    pub timeline_per_sec: Vec<f64>,
    /// `connect`: the connect phase on its own; null for the other scenarios.
    pub connect_phase: Option<ConnectPhase>,
    /// `storm`: the storm and its probe; null for the other scenarios.
    pub storm: Option<StormSummary>,
    /// Scenario parameters, echoed back so result files are self-describing.
    pub params: serde_json::Value,
}

/// `n` per second over `secs`; none for an empty window (a run where nothing connected).
pub fn per_sec(n: u64, secs: f64) -> Option<f64> {
    (secs > 0.0).then(|| (n as f64 / secs).round())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Report {
    /// Fills the TLS fields for a run whose target was (or was not) wss://.
    pub fn set_tls(&mut self, tls: bool, stats: &ConnStats) {
        self.tls = tls;
        if let Some(n) = &stats.tls {
            self.tls_version = Some(n.version.clone());
            self.tls_cipher = Some(n.cipher_suite.clone());
            self.tls_alpn = n.alpn.clone();
        }
    }

    /// Why the run as a whole failed, if it did: no connection opened at all, or any
    /// connection failed TLS (an untrusted or mismatched certificate is a set-up mistake,
    /// never a load result).
    pub fn failure(&self) -> Option<String> {
        let c = self.connect.as_ref()?;
        let first = |prefix: &str| {
            self.error_samples
                .iter()
                .find_map(|s| s.strip_prefix(prefix))
                .or(self.error_samples.first().map(String::as_str))
                .map_or(String::new(), |s| format!(": {s}"))
        };
        if c.failed.tls > 0 {
            let mut why = format!(
                "{} of {} connections failed TLS{}",
                c.failed.tls,
                self.conns,
                first("tls: ")
            );
            if why.contains("certificate") {
                why.push_str(
                    "\n(give the server's CA with --ca FILE, the certificate's name with \
                     --server-name NAME, or skip verification with --insecure)",
                );
            }
            return Some(why);
        }
        if self.storm.as_ref().is_some_and(|s| s.probe.dropped) {
            return Some(format!("the probe connection dropped{}", first("probe: ")));
        }
        if c.ok == 0 && self.conns > 0 {
            return Some(format!(
                "none of {} connections opened{}",
                self.conns,
                first("")
            ));
        }
        None
    }

    /// Fills the permessage-deflate and byte counts from the merged connection stats.
    pub fn set_wire(&mut self, offered_deflate: bool, stats: &ConnStats) {
        self.bytes_received = Some(stats.bytes_in);
        if offered_deflate {
            self.deflate_conns = Some(stats.deflate);
            self.inflated_messages = Some(stats.inflated);
        }
    }

    pub fn set_usage(&mut self, u: Usage) {
        self.server_cpu_pct = u.server_cpu_pct.map(round1);
        self.server_core_busy_pct = u.server_core_busy_pct.map(round1);
        self.loadgen_cpu_pct = u.loadgen_cpu_pct.map(round1);
    }

    pub fn print_json(&self) {
        match serde_json::to_string(self) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cannot serialise report: {e}"),
        }
    }

    pub fn print_human(&self) {
        let mut o = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(
            o,
            "== {} == conns={} threads={} window={:.2}s",
            self.scenario, self.conns, self.threads, self.duration_s
        );
        if self.tls {
            let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "tls: {} {} alpn={}",
                shown(&self.tls_version),
                shown(&self.tls_cipher),
                shown(&self.tls_alpn)
            );
        }
        if let Some(c) = &self.connect {
            let f = &c.failed;
            let _ = writeln!(
                o,
                "connect: ok={} failed={} (refused={} unauthorized={} reset={} timeout={} bad_handshake={} tls={} other={}) dropped_later={}",
                c.ok, f.total(), f.refused, f.unauthorized, f.reset, f.timeout, f.bad_handshake, f.tls, f.other, c.dropped
            );
            for (why, n) in &c.unauthorized_reasons {
                let _ = writeln!(o, "  unauthorized: {n} x {why}");
            }
            if let Some(l) = &c.latency_us {
                let _ = writeln!(o, "connect latency us: {}", fmt_lat(l));
            }
            if let Some(l) = &c.tls_handshake_us {
                let _ = writeln!(o, "tls handshake us: {}", fmt_lat(l));
            }
        }
        if let Some(p) = &self.connect_phase {
            let _ = writeln!(
                o,
                "connect phase: {:.3}s, {} conns/s, server core busy {}, {} us of server core per connection",
                p.seconds,
                p.conns_per_sec.map_or("-".into(), |v| format!("{v:.0}")),
                p.server_core_busy_pct.map_or("n/a".into(), |v| format!("{v:.1}%")),
                p.server_core_us_per_conn.map_or("-".into(), |v| format!("{v:.1}")),
            );
        }
        if let Some(s) = &self.storm {
            let t = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}s"));
            let _ = writeln!(
                o,
                "storm: all connected: {} after {}, settled after {:.3}s, {} conns/s",
                s.all_connected,
                t(s.time_to_all_connected_s),
                s.time_to_settle_s,
                s.conns_per_sec.map_or("-".into(), |v| format!("{v:.0}")),
            );
            let lat = |l: &Option<Latency>| l.as_ref().map_or("none".into(), fmt_lat);
            let p = &s.probe;
            let _ = writeln!(
                o,
                "probe ({} {} B) before us: {}",
                p.mode,
                p.size,
                lat(&p.before_us)
            );
            let _ = writeln!(o, "probe during the storm us: {}", lat(&p.during_us));
            if p.after_us.is_some() {
                let _ = writeln!(o, "probe after us: {}", lat(&p.after_us));
            }
        }
        if let Some(m) = self.messages_per_sec {
            let _ = writeln!(
                o,
                "throughput: {:.0} msgs/s, {:.2} MB/s",
                m,
                self.bytes_per_sec.unwrap_or(0.0) / 1e6
            );
        }
        if let Some(d) = self.deliveries_per_sec {
            let _ = writeln!(
                o,
                "deliveries: {:.0}/s  expected={} received={} lost={}",
                d,
                self.expected.unwrap_or(0),
                self.received.unwrap_or(0),
                self.lost.unwrap_or(0)
            );
        }
        if let Some(l) = &self.latency_us {
            let _ = writeln!(o, "latency us: {}", fmt_lat(l));
        }
        if let (Some(n), Some(z)) = (self.deflate_conns, self.inflated_messages) {
            let _ = writeln!(
                o,
                "permessage-deflate: agreed on {n} of {} connections, {z} messages came compressed",
                self.connect.as_ref().map_or(0, |c| c.ok)
            );
        }
        if let Some(b) = self.bytes_received {
            let _ = write!(o, "received: {:.2} MB", b as f64 / 1e6);
            if let Some(p) = self.bytes_per_delivery {
                let _ = write!(o, ", {p:.1} bytes per delivery");
            }
            o.push('\n');
        }
        if let Some(r) = self.server_rss_bytes {
            let _ = write!(o, "server rss: {:.1} MiB", r as f64 / 1048576.0);
            if let Some(b) = self.server_rss_baseline_bytes {
                let _ = write!(o, " (baseline {:.1} MiB)", b as f64 / 1048576.0);
            }
            if let Some(p) = self.rss_per_conn_bytes {
                let _ = write!(o, ", {p:.0} bytes/conn");
            }
            o.push('\n');
        }
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.1}%"));
        let _ = writeln!(
            o,
            "cpu: server process {}  server core busy {}  loadgen {}",
            pct(self.server_cpu_pct),
            pct(self.server_core_busy_pct),
            pct(self.loadgen_cpu_pct)
        );
        if self.server_errors > 0 {
            let _ = writeln!(
                o,
                "server errors / unexpected replies: {}",
                self.server_errors
            );
        }
        if !self.error_samples.is_empty() {
            let _ = writeln!(o, "problem samples:");
        }
        for s in &self.error_samples {
            let _ = writeln!(o, "  {s}");
        }
        eprint!("{o}");
    }
}

fn fmt_lat(l: &Latency) -> String {
    format!(
        "p50={} p90={} p99={} p99.9={} max={} mean={:.1} (n={})",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.samples
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_required_keys() {
        let mut h = new_hist();
        for v in 1..=1000 {
            record_us(&mut h, v);
        }
        let r = Report {
            scenario: "echo",
            latency_us: Latency::from_hist(&h),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for k in [
            "scenario",
            "tls",
            "tls_version",
            "tls_cipher",
            "conns",
            "duration_s",
            "messages_per_sec",
            "bytes_per_sec",
            "deliveries_per_sec",
            "expected",
            "received",
            "lost",
            "latency_us",
            "connect",
            "server_rss_bytes",
            "rss_per_conn_bytes",
            "server_cpu_pct",
            "server_core_busy_pct",
            "loadgen_cpu_pct",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        let l = &v["latency_us"];
        assert_eq!(l["p50"], 500);
        assert_eq!(l["max"], 1000);
        assert!(l.get("p999").is_some());
    }
}
