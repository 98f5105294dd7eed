//! `GET /metrics`: the Prometheus text exposition (version 0.0.4), on the control thread.
//!
//! A `prometheus-client` [`Collector`] reads the counters at scrape time: it sums the
//! workers' single-writer counters (`Shared::totals`), so a scrape never touches the message
//! path and the workers count exactly as before. Every family is one row of [`FAMILIES`].

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::auth::{Auth, Refusal};
use crate::handler::Denial;
use crate::memory;
use crate::shared::Shared;
use crate::stats::{turn_bound_us, Snapshot, TurnCounts, HANDSHAKE_STATUSES};

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Every metric name starts with `corecast_`.
const PREFIX: &str = "corecast";

/// The admin endpoint's own counters, written only by the control thread.
#[derive(Debug, Default)]
pub struct AdminStats {
    /// Admin connections being served.
    pub connections_open: AtomicI64,
    /// Admin connections refused because [`MAX_ADMIN_CONNECTIONS`] were open for the whole
    /// time they may wait in the listen backlog.
    ///
    /// [`MAX_ADMIN_CONNECTIONS`]: crate::config::MAX_ADMIN_CONNECTIONS
    pub connections_refused: AtomicU64,
    /// Requests cut off for a head, body or response write past its deadline.
    pub request_timeouts: AtomicU64,
    /// `POST /disconnect` requests carried out.
    pub disconnects: AtomicU64,
}

/// What one scrape reads, once, before any family is written.
pub struct Reading<'a> {
    shared: &'a Shared,
    admin: &'a AdminStats,
    totals: Snapshot,
}

/// Samples of a labelled family: (label value, sample value).
type Labelled<T> = Vec<(Cow<'static, str>, T)>;

/// How a family's samples are read.
enum Read {
    Counter(fn(&Reading) -> u64),
    Gauge(fn(&Reading) -> i64),
    Seconds(fn(&Reading) -> f64),
    /// One counter sample per value of the named label.
    Counters(&'static str, fn(&Reading) -> Labelled<u64>),
    /// One gauge sample per value of the named label.
    Gauges(&'static str, fn(&Reading) -> Labelled<i64>),
    /// One histogram of loop-turn seconds per value of the named label.
    Turns(&'static str, fn(&Reading) -> Labelled<TurnCounts>),
}

/// One metric family. `name` has neither the `corecast_` prefix nor, for counters, the
/// `_total` suffix: the encoder adds both.
struct Family {
    name: &'static str,
    help: &'static str,
    read: Read,
}

const fn f(name: &'static str, help: &'static str, read: Read) -> Family {
    Family { name, help, read }
}

/// Every exported family, in exposition order. Adding a metric is adding a row.
#[rustfmt::skip]
static FAMILIES: &[Family] = &[
    f("connections_open", "Connections open (handshaking ones included).", Read::Gauge(|r| r.totals.open)),
    f("websockets_open", "WebSocket connections open (upgrade completed).", Read::Gauge(|r| r.totals.websockets)),
    f("worker_connections_open", "Connections open per worker.", Read::Gauges("worker", |r| {
        r.shared.stats.iter().enumerate().map(|(i, s)| (i.to_string().into(), s.open.load(Relaxed))).collect()
    })),
    f("worker_loop_turn_seconds", "Event-loop turn times per worker, from epoll_wait returning to the end of the turn's work (time asleep excluded); power-of-two buckets from 1 µs.", Read::Turns("worker", |r| {
        r.shared.stats.iter().enumerate().map(|(i, s)| (i.to_string().into(), s.turns.read())).collect()
    })),
    f("connections_accepted", "Connections handed to workers.", Read::Counter(|r| r.totals.accepted)),
    f("connections_rejected", "Connections refused at accept, by reason.", Read::Counters("reason", |r| {
        let a = &r.shared.admission;
        vec![
            ("max_connections".into(), a.refused_full.load(Relaxed)),
            ("max_connections_per_ip".into(), a.refused_per_ip.load(Relaxed)),
            ("connection_rate".into(), a.refused_rate.load(Relaxed)),
            ("memory".into(), a.refused_memory.load(Relaxed)),
            ("descriptors".into(), a.refused_descriptors.load(Relaxed)),
        ]
    })),
    f("connection_rate_untracked", "Connections admitted without a --max-connection-rate-per-ip bucket: the table of addresses was at its cap (65,536) with no full bucket to drop.", Read::Counter(|r| r.shared.admission.rate_untracked.load(Relaxed))),
    f("connection_rate_addresses", "Addresses in the --max-connection-rate-per-ip table (at most 65,536; full buckets are dropped at the cap).", Read::Gauge(|r| saturate(r.shared.admission.rate_addresses.load(Relaxed) as u64))),
    f("connections_closed", "Connections closed and removed.", Read::Counter(|r| r.totals.closed)),
    f("handshakes", "WebSocket upgrades completed.", Read::Counter(|r| r.totals.handshakes)),
    f("handshake_failures", "Upgrades refused or timed out, by reason.", Read::Counters("reason", |r| {
        HANDSHAKE_STATUSES.iter().zip(r.totals.handshake_failures_by).map(|((_, l), v)| ((*l).into(), v)).collect()
    })),
    f("health_checks", "Plain HTTP /healthz requests on the WebSocket listener.", Read::Counter(|r| r.totals.health_checks)),
    f("console_requests", "Console pages and /stats.json answered on the WebSocket listener.", Read::Counter(|r| r.totals.console_requests)),
    f("messages_in", "Data messages received.", Read::Counter(|r| r.totals.messages_in)),
    f("messages_out", "Data messages queued for sending (replies and deliveries).", Read::Counter(|r| r.totals.messages_out)),
    f("bytes_in", "Bytes read from client sockets.", Read::Counter(|r| r.totals.bytes_in)),
    f("bytes_out", "Bytes written to client sockets.", Read::Counter(|r| r.totals.bytes_out)),
    f("publishes", "Publish and broadcast requests from WebSocket clients.", Read::Counter(|r| r.totals.publishes)),
    f("api_publishes", "Messages accepted by the admin publish API.", Read::Counter(|r| r.shared.api_publishes.load(Relaxed))),
    f("api_publishes_refused", "Admin publishes refused with 503 because the workers were 64 MiB of outside publishes behind.", Read::Counter(|r| r.shared.api_publishes_refused.load(Relaxed))),
    f("deliveries", "Messages queued to subscribers.", Read::Counter(|r| r.totals.deliveries)),
    f("slow_consumer_dropped", "Messages dropped because a subscriber's outbound queue was full.", Read::Counter(|r| r.totals.dropped)),
    f("slow_consumer_closed", "Connections closed (1008) for being slow consumers.", Read::Counter(|r| r.totals.slow_closes)),
    f("bad_requests", "Error replies sent for bad requests.", Read::Counter(|r| r.totals.bad_requests)),
    f("protocol_errors", "Connections failed for protocol violations or size limits.", Read::Counter(|r| r.totals.protocol_errors)),
    f("timeouts", "Connections closed for handshake or idle timeout.", Read::Counter(|r| r.totals.timeouts)),
    f("input_held", "Times a connection's input was held back because its output went over its bound.", Read::Counter(|r| r.totals.input_held)),
    f("publishers_held", "Times a publishing connection's input was held back because the other workers' queues were full (64 MiB).", Read::Counter(|r| r.totals.publishers_held)),
    f("publishers_share_held", "Times a publishing connection's input was held back because its own publishes waiting in the other workers' queues passed its share of them (8 MiB).", Read::Counter(|r| r.totals.publishers_share_held)),
    f("backpressure_closed", "Connections closed (1008) for staying over their outbound bound past --backpressure-timeout.", Read::Counter(|r| r.totals.backpressure_closes)),
    f("message_timeouts", "Connections closed (1008) for taking longer than --message-timeout to send a message.", Read::Counter(|r| r.totals.message_timeouts)),
    f("control_frames_dropped", "Pings and pongs not sent because the queue was past its control allowance.", Read::Counter(|r| r.totals.control_dropped)),
    f("hangups", "Connections dropped because the peer reset or hung up without a close frame.", Read::Counter(|r| r.totals.hangups)),
    f("tls_errors", "TLS connections dropped for a TLS error (bad record, failed handshake, alert).", Read::Counter(|r| r.totals.tls_errors)),
    f("tls_plain_http", "Plain HTTP requests on the TLS listener (answered 400 and closed).", Read::Counter(|r| r.totals.tls_plain_http)),
    f("tls_upgrades", "WebSocket upgrades completed over TLS.", Read::Counter(|r| r.totals.tls_upgrades)),
    f("deflate_upgrades", "Upgrades that negotiated permessage-deflate.", Read::Counter(|r| r.totals.deflate_upgrades)),
    f("messages_compressed", "Published messages compressed (once per worker and window size, shared by every deflate subscriber).", Read::Counter(|r| r.totals.messages_compressed)),
    f("messages_inflated", "Compressed (permessage-deflate) messages received and inflated.", Read::Counter(|r| r.totals.messages_inflated)),
    f("connections_held", "Connections whose input is held back by backpressure right now.", Read::Gauge(|r| r.totals.held)),
    f("outbound_queued_bytes", "Bytes queued for sending, not yet taken by the kernel.", Read::Gauge(|r| r.totals.queued_bytes)),
    f("cross_worker_queued_bytes", "Bytes of publishes made on one worker waiting in the other workers' queues, once per worker (bounded at 64 MiB by holding publishers back).", Read::Gauge(|r| saturate(r.shared.bus.cross_queued() as u64))),
    f("outside_queued_bytes", "Bytes of publishes from outside the workers (admin API, other nodes) waiting in the workers' queues, once per worker (bounded at 64 MiB).", Read::Gauge(|r| saturate(r.shared.bus.outside_queued() as u64))),
    f("outbound_memory_bytes", "Memory held by outbound queues (what --max-outbound-bytes bounds).", Read::Gauge(|r| r.totals.outbound_memory)),
    f("tls_memory_bytes", "Memory in TLS connections' own buffers (a half-received record, ciphertext not yet sent).", Read::Gauge(|r| r.totals.tls_memory)),
    f("inbound_memory_bytes", "Memory held for partial frames, fragmented messages and held-back input.", Read::Gauge(|r| r.totals.inbound_memory)),
    f("connection_limit", "The effective --max-connections.", Read::Gauge(|r| saturate(r.shared.admission.max_total() as u64))),
    f("memory_limit_bytes", "The effective --max-memory (0: no guard).", Read::Gauge(|r| saturate(r.shared.memory.limit()))),
    f("memory_pressure", "1 while resident memory is over --max-memory.", Read::Gauge(|r| r.shared.memory.over().into())),
    f("draining", "1 while shutting down.", Read::Gauge(|r| r.shared.draining.load(Relaxed).into())),
    f("process_resident_memory_bytes", "Resident set size.", Read::Gauge(|_| memory::process_rss().map_or(0, saturate))),
    f("process_open_fds", "Open file descriptors.", Read::Gauge(|_| open_fds().map_or(0, saturate))),
    f("uptime_seconds", "Seconds since start.", Read::Seconds(|r| r.shared.started.elapsed().as_secs_f64())),
    f("admin_connections_open", "Admin endpoint connections being served.", Read::Gauge(|r| r.admin.connections_open.load(Relaxed))),
    f("admin_connections_refused", "Admin endpoint connections refused (503) after waiting 2 s in the listen backlog at the connection cap.", Read::Counter(|r| r.admin.connections_refused.load(Relaxed))),
    f("admin_disconnects", "POST /disconnect requests carried out (each closes every connection of one user, 4003).", Read::Counter(|r| r.admin.disconnects.load(Relaxed))),
    f("backplane_disconnects_received", "POST /disconnect commands received from other nodes through Redis.", Read::Counter(|r| bp(r, |s| s.disconnects_received.load(Relaxed)))),
    f("admin_request_timeouts", "Admin requests cut off at the head, body or write deadline.", Read::Counter(|r| r.admin.request_timeouts.load(Relaxed))),
    f("auth_connections", "Connections by auth standing right now: user (a verified token), anonymous, pending (waiting to connect).", Read::Gauges("standing", |r| {
        vec![
            ("user".into(), r.totals.authenticated),
            ("anonymous".into(), r.totals.anonymous),
            ("pending".into(), r.totals.auth_pending),
        ]
    })),
    f("auth_connects", "Connections that connected: with a verified token (user) or anonymously.", Read::Counters("as", |r| {
        vec![("user".into(), r.totals.auth_connects), ("anonymous".into(), r.totals.auth_anonymous_connects)]
    })),
    f("auth_closes", "Connections closed by auth: upgrade refused with 401, connect refused (4001), no connect in time (4001), token expired (4002), disconnected by the admin API (4003).", Read::Counters("reason", |r| {
        vec![
            ("upgrade_refused".into(), r.totals.auth_upgrades_refused),
            ("connect_refused".into(), r.totals.auth_connects_refused),
            ("connect_timeout".into(), r.totals.auth_connect_timeouts),
            ("expired".into(), r.totals.auth_expiries),
            ("disconnected".into(), r.totals.auth_disconnects),
        ]
    })),
    f("auth_refusals", "Requests refused by auth with an error reply (the connection stays open), by reason.", Read::Counters("reason", |r| {
        Denial::ALL.iter().zip(r.totals.denials_by).map(|(d, v)| (d.label().into(), v)).collect()
    })),
    f("auth_refreshes", "Tokens renewed by refresh.", Read::Counter(|r| r.totals.auth_refreshes)),
    f("auth_subscription_expiries", "Subscriptions ended because their subscription token expired.", Read::Counter(|r| r.totals.auth_topic_expiries)),
    f("auth_deferred", "Times a connection's token check waited for a later loop turn because the turn had spent its verification budget (1 ms).", Read::Counter(|r| r.totals.auth_deferred)),
    f("rate_limited", "Times a connection went over --max-messages-per-sec or --max-bytes-per-sec, by what --rate-limit-policy did: held (input not read until its buckets refill), refused (message dropped, error rate_limited), closed (1008).", Read::Counters("action", |r| {
        vec![
            ("held".into(), r.totals.rate_limit_holds),
            ("refused".into(), r.totals.rate_limit_refusals),
            ("closed".into(), r.totals.rate_limit_closes),
        ]
    })),
    f("history_topics", "Topics keeping history right now (--history), on all workers.", Read::Gauge(|r| r.totals.history_topics)),
    f("history_bytes", "Bytes all topic history is charged (--history-max-bytes bounds it).", Read::Gauge(|r| r.totals.history_bytes)),
    f("history_trimmed", "Retained publications dropped, by why: count (over the rule's COUNT), topic_bytes (over --history-topic-max-bytes), global_bytes (over --history-max-bytes, oldest first), expired (past the rule's TTL).", Read::Counters("reason", |r| {
        vec![
            ("count".into(), r.totals.history_trimmed_count),
            ("topic_bytes".into(), r.totals.history_trimmed_topic_bytes),
            ("global_bytes".into(), r.totals.history_trimmed_global_bytes),
            ("expired".into(), r.totals.history_expired),
        ]
    })),
    f("history_recoveries", "Subscribes with recover, by outcome: recovered (every missed publication replayed) or not (another epoch, trimmed, too far behind).", Read::Counters("outcome", |r| {
        vec![
            ("recovered".into(), r.totals.history_recovered),
            ("not_recovered".into(), r.totals.history_not_recovered),
        ]
    })),
    f("history_requests_refused", "History subscribes and reads refused (limit) because the connection had 16 waiting for their answers.", Read::Counter(|r| r.totals.history_refused)),
    f("backplane_configured", "1 with --redis.", Read::Gauge(|r| r.shared.bus.backplane().is_some().into())),
    f("backplane_up", "1 while connected to Redis and subscribed (0 without --redis).", Read::Gauge(|r| bp(r, |s| s.up.load(Relaxed).into()))),
    f("backplane_forwarded", "Publishes sent to the other nodes through Redis.", Read::Counter(|r| bp(r, |s| s.forwarded.load(Relaxed)))),
    f("backplane_forward_failed", "Publishes not sent to the other nodes: queue full, Redis unreachable, or PUBLISH failed.", Read::Counter(|r| bp(r, |s| s.forward_failed.load(Relaxed)))),
    f("backplane_received", "Messages from other nodes delivered to this node's workers.", Read::Counter(|r| bp(r, |s| s.received.load(Relaxed)))),
    f("backplane_received_dropped", "Messages from other nodes dropped because this node's workers were 64 MiB of them behind.", Read::Counter(|r| bp(r, |s| s.received_dropped.load(Relaxed)))),
    f("backplane_own_skipped", "Messages that came back from Redis to the node that sent them (not delivered twice).", Read::Counter(|r| bp(r, |s| s.own_skipped.load(Relaxed)))),
    f("backplane_bad_envelopes", "Redis messages on corecast's channels that are not a version-1 envelope (dropped).", Read::Counter(|r| bp(r, |s| s.bad_envelopes.load(Relaxed)))),
    f("backplane_invalid_utf8", "Messages from other nodes dropped because their text is not UTF-8 (as a text frame it would fail every subscriber's connection).", Read::Counter(|r| bp(r, |s| s.invalid_utf8.load(Relaxed)))),
    f("backplane_reconnects", "Connections to Redis made after the first.", Read::Counter(|r| bp(r, |s| s.reconnects.load(Relaxed)))),
    f("backplane_channels", "Redis channels subscribed right now.", Read::Gauge(|r| bp(r, |s| s.channels.load(Relaxed)))),
    f("backplane_queue_bytes", "Bytes of publishes waiting to be forwarded to Redis (bounded at 64 MiB).", Read::Gauge(|r| r.shared.bus.backplane().map_or(0, |b| saturate(b.queued_bytes() as u64)))),
    f("backplane_interest_queued", "Reports of workers' topic changes waiting for the backplane (bounded at 16,384).", Read::Gauge(|r| r.shared.bus.backplane().map_or(0, |b| saturate(b.interest_queued() as u64)))),
    f("backplane_interest_overflows", "Reports of topic changes that did not fit in the backplane's queue (the worker resends its whole topic set instead).", Read::Counter(|r| bp(r, |s| s.interest_overflows.load(Relaxed)))),
    f("backplane_interest_resyncs", "Whole topic sets resent by workers after an overflow.", Read::Counter(|r| bp(r, |s| s.interest_resyncs.load(Relaxed)))),
    f("auth_configured", "1 when a token key source is configured (--auth-hmac-secret-file, --auth-public-key, --auth-jwks).", Read::Gauge(|r| r.shared.auth.is_some().into())),
    f("auth_verifications", "Token checks made in full (signature included), by outcome: ok or the refusal's class.", Read::Counters("outcome", |r| {
        r.shared.auth.as_ref().map(|a| a.stats().verifications()).unwrap_or_else(|| {
            std::iter::once("ok").chain(Refusal::ALL.iter().map(|c| c.label())).map(|l| (l, 0)).collect()
        }).into_iter().map(|(l, n)| (l.into(), n)).collect()
    })),
    f("auth_cache_hits", "Token verdicts answered from the verified-token cache.", Read::Counter(|r| au(r, |a| a.stats().cache_hits.load(Relaxed)))),
    f("auth_cache_entries", "Verdicts in the verified-token cache (bounded by --auth-token-cache).", Read::Gauge(|r| au(r, |a| saturate(a.cache_len() as u64)))),
    f("auth_keys", "Token keys held, from every source.", Read::Gauge(|r| au(r, |a| saturate(a.key_count() as u64)))),
    f("auth_jwks_fetches", "Fetches of the --auth-jwks URL, by result (a failed one keeps the keys held).", Read::Counters("result", |r| vec![
        ("ok".into(), au(r, |a| a.stats().jwks_fetches_ok.load(Relaxed))),
        ("failed".into(), au(r, |a| a.stats().jwks_fetches_failed.load(Relaxed))),
    ])),
    f("auth_key_reloads", "SIGHUP reloads of the token key files, by result (a failed one keeps the keys held).", Read::Counters("result", |r| vec![
        ("ok".into(), au(r, |a| a.stats().reloads_ok.load(Relaxed))),
        ("failed".into(), au(r, |a| a.stats().reloads_failed.load(Relaxed))),
    ])),
];

/// An auth figure, or zero without a token key source.
fn au<T: Default>(r: &Reading, read: impl Fn(&Auth) -> T) -> T {
    r.shared.auth.as_deref().map_or_else(T::default, read)
}

/// A backplane figure, or zero without `--redis`.
fn bp<T: Default>(r: &Reading, read: impl Fn(&crate::backplane::Stats) -> T) -> T {
    r.shared
        .bus
        .backplane()
        .map_or_else(T::default, |b| read(&b.stats))
}

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The registry behind `GET /metrics`; built once, rendered per scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(shared: Arc<Shared>, admin: Arc<AdminStats>) -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(Scrape { shared, admin }));
        Metrics { registry }
    }

    /// Every family, read now.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail, and no family's encoding returns an error of
        // its own.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            log::error!("metrics exposition failed: {e}");
        }
        out
    }
}

/// The collector: reads the counters at scrape time and writes [`FAMILIES`].
struct Scrape {
    shared: Arc<Shared>,
    admin: Arc<AdminStats>,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let r = Reading {
            shared: &self.shared,
            admin: &self.admin,
            totals: self.shared.totals(),
        };
        for fam in FAMILIES {
            let kind = match fam.read {
                Read::Counter(_) | Read::Counters(..) => MetricType::Counter,
                Read::Gauge(_) | Read::Seconds(_) | Read::Gauges(..) => MetricType::Gauge,
                Read::Turns(..) => MetricType::Histogram,
            };
            let mut m = encoder.encode_descriptor(fam.name, fam.help, None, kind)?;
            match fam.read {
                Read::Counter(read) => ConstCounter::new(read(&r)).encode(m)?,
                Read::Gauge(read) => ConstGauge::new(read(&r)).encode(m)?,
                Read::Seconds(read) => ConstGauge::new(read(&r)).encode(m)?,
                Read::Counters(label, read) => {
                    for (value, n) in read(&r) {
                        let labels = [(label, value)];
                        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                    }
                }
                Read::Gauges(label, read) => {
                    for (value, n) in read(&r) {
                        let labels = [(label, value)];
                        ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
                    }
                }
                Read::Turns(label, read) => {
                    for (value, t) in read(&r) {
                        let labels = [(label, value)];
                        let buckets: Vec<(f64, u64)> = t
                            .buckets
                            .iter()
                            .enumerate()
                            .map(|(i, n)| (turn_bound_us(i) / 1e6, *n))
                            .collect();
                        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                            t.sum_ns as f64 / 1e9,
                            t.count(),
                            &buckets,
                            None,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}
