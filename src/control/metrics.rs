//! `GET /metrics`: Prometheus text exposition of the server's counters. Runs on the control
//! thread, on demand: it sums the workers' single-writer counters, so a scrape never touches
//! the message path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::server::Shared;
use crate::stats::HANDSHAKE_STATUSES;

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin endpoint's own counters, written only by the control thread.
#[derive(Debug, Default)]
pub struct AdminStats {
    /// Admin connections being served.
    pub connections_open: AtomicI64,
    /// Admin connections refused because [`MAX_ADMIN_CONNECTIONS`] were open.
    ///
    /// [`MAX_ADMIN_CONNECTIONS`]: super::admin::MAX_ADMIN_CONNECTIONS
    pub connections_refused: AtomicU64,
    /// Requests cut off for a head, body or response write past its deadline.
    pub request_timeouts: AtomicU64,
}

/// Resident set size of this process, in bytes.
pub fn process_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open file descriptors of this process.
pub fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Renders every metric in the text format (version 0.0.4).
pub fn render(shared: &Shared, admin: &AdminStats) -> String {
    let t = shared.totals();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP corecast_{name} {help}");
        let _ = writeln!(out, "# TYPE corecast_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "corecast_{name}{labels} {v}");
        }
    };
    let one = |v: u64| [("", v as f64)];
    metric(
        "connections_open",
        "gauge",
        "Connections open (handshaking ones included).",
        &[("", t.open as f64)],
    );
    let per_worker: Vec<(String, f64)> = shared
        .stats
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("{{worker=\"{i}\"}}"), s.open.load(Relaxed) as f64))
        .collect();
    let per_worker_ref: Vec<(&str, f64)> =
        per_worker.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "worker_connections_open",
        "gauge",
        "Connections open per worker.",
        &per_worker_ref,
    );
    metric(
        "connections_accepted_total",
        "counter",
        "Connections handed to workers.",
        &one(t.accepted),
    );
    let a = &shared.admission;
    metric(
        "connections_rejected_total",
        "counter",
        "Connections refused at accept, by reason.",
        &[
            (
                "{reason=\"max_connections\"}",
                a.refused_full.load(Relaxed) as f64,
            ),
            (
                "{reason=\"max_connections_per_ip\"}",
                a.refused_per_ip.load(Relaxed) as f64,
            ),
        ],
    );
    metric(
        "connections_closed_total",
        "counter",
        "Connections closed and removed.",
        &one(t.closed),
    );
    metric(
        "handshakes_total",
        "counter",
        "WebSocket upgrades completed.",
        &one(t.handshakes),
    );
    let hs: Vec<(String, f64)> = HANDSHAKE_STATUSES
        .iter()
        .zip(t.handshake_failures_by)
        .map(|((_, label), v)| (format!("{{reason=\"{label}\"}}"), v as f64))
        .collect();
    let hs_ref: Vec<(&str, f64)> = hs.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "handshake_failures_total",
        "counter",
        "Upgrades refused or timed out, by reason.",
        &hs_ref,
    );
    metric(
        "health_checks_total",
        "counter",
        "Plain HTTP /healthz requests on the WebSocket listener.",
        &one(t.health_checks),
    );
    metric(
        "messages_in_total",
        "counter",
        "Data messages received.",
        &one(t.messages_in),
    );
    metric(
        "messages_out_total",
        "counter",
        "Data messages queued for sending (replies and deliveries).",
        &one(t.messages_out),
    );
    metric(
        "bytes_in_total",
        "counter",
        "Bytes read from client sockets.",
        &one(t.bytes_in),
    );
    metric(
        "bytes_out_total",
        "counter",
        "Bytes written to client sockets.",
        &one(t.bytes_out),
    );
    metric(
        "publishes_total",
        "counter",
        "Publish and broadcast requests from WebSocket clients.",
        &one(t.publishes),
    );
    metric(
        "api_publishes_total",
        "counter",
        "Messages accepted by the admin publish API.",
        &one(shared.api_publishes.load(Relaxed)),
    );
    metric(
        "deliveries_total",
        "counter",
        "Messages queued to subscribers.",
        &one(t.deliveries),
    );
    metric(
        "slow_consumer_dropped_total",
        "counter",
        "Messages dropped because a subscriber's outbound queue was full.",
        &one(t.dropped),
    );
    metric(
        "slow_consumer_closed_total",
        "counter",
        "Connections closed (1008) for being slow consumers.",
        &one(t.slow_closes),
    );
    metric(
        "bad_requests_total",
        "counter",
        "Error replies sent for bad requests.",
        &one(t.bad_requests),
    );
    metric(
        "protocol_errors_total",
        "counter",
        "Connections failed for protocol violations or size limits.",
        &one(t.protocol_errors),
    );
    metric(
        "timeouts_total",
        "counter",
        "Connections closed for handshake or idle timeout.",
        &one(t.timeouts),
    );
    metric(
        "outbound_queued_bytes",
        "gauge",
        "Bytes queued for sending, not yet taken by the kernel.",
        &[("", t.queued_bytes as f64)],
    );
    metric(
        "draining",
        "gauge",
        "1 while shutting down.",
        &[("", shared.draining.load(Relaxed) as u8 as f64)],
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        &one(process_rss().unwrap_or(0)),
    );
    metric(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        &one(open_fds().unwrap_or(0)),
    );
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since start.",
        &[("", shared.started.elapsed().as_secs_f64())],
    );
    metric(
        "admin_connections_open",
        "gauge",
        "Admin endpoint connections being served.",
        &[("", admin.connections_open.load(Relaxed) as f64)],
    );
    metric(
        "admin_connections_refused_total",
        "counter",
        "Admin endpoint connections refused (503) at the connection cap.",
        &one(admin.connections_refused.load(Relaxed)),
    );
    metric(
        "admin_request_timeouts_total",
        "counter",
        "Admin requests cut off at the head, body or write deadline.",
        &one(admin.request_timeouts.load(Relaxed)),
    );
    out
}
