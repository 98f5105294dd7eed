//! `broadcast` scenario: subscribers on one topic, publishers at a fixed total rate; measures
//! fan-out latency from the publish timestamp embedded in each message, and lost deliveries.

use std::io::Write as _;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{
    apply_usage, drive_window, find, join_all, paced_open, reply_op, sync_counts, Env, Outcome,
    Shared, ThreadResult,
};
use crate::cli::BroadcastArgs;
use crate::clock;
use crate::conn::{Conn, Handler, Worker};
use crate::frame;
use crate::report::{self, ConnectSummary, Latency, Report};

/// One thread's (deliveries in the window, publishes in the window, (bytes received, messages
/// delivered) since publishing started).
type Counts = (u64, u64, (u64, u64));

enum Role {
    Subscriber { acked: bool },
    Publisher { next_ns: u64 },
}

struct BcastHandler {
    shared: Arc<Shared>,
    subscribe: Vec<u8>,
    /// Window in UNIX ns (the unit of the embedded timestamps).
    start_unix: u64,
    end_unix: u64,
    hist: Histogram<u64>,
    /// Deliveries of in-window publishes, not yet added to the shared counter.
    fresh_in_window: u64,
    fresh_total: u64,
    /// Messages delivered to this thread's subscribers, all-time.
    messages: u64,
    received: u64,
    acked: u64,
    sub_refused: u64,
    errors: u64,
    samples: Vec<String>,
}

impl BcastHandler {
    fn bad(&mut self, payload: &[u8]) {
        self.errors += 1;
        if self.samples.len() < 5 {
            let cut = &payload[..payload.len().min(200)];
            self.samples.push(String::from_utf8_lossy(cut).into_owned());
        }
    }
}

/// Extracts the publish timestamp: the digits after `"t":` inside `"data":`. The server copies
/// `data` byte-for-byte, so this is exactly what the publisher wrote.
fn publish_time(payload: &[u8]) -> Option<u64> {
    let d = find(payload, b"\"data\":")?;
    let rest = &payload[d + 7..];
    let t = find(rest, b"\"t\":")?;
    let digits = rest[t + 4..].iter().skip_while(|b| **b == b' ');
    let mut v: u64 = 0;
    let mut any = false;
    for &b in digits.take_while(|b| b.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
        any = true;
    }
    any.then_some(v)
}

impl Handler<Role> for BcastHandler {
    fn on_open(&mut self, conn: &mut Conn<Role>, _now: u64) {
        if matches!(conn.ext, Role::Subscriber { .. }) {
            let msg = std::mem::take(&mut self.subscribe);
            conn.queue_frame(frame::OP_TEXT, &msg);
            self.subscribe = msg;
        }
    }

    fn on_data(&mut self, ext: &mut Role, _op: u8, payload: &[u8], now: u64) {
        match (reply_op(payload), ext) {
            ("message", Role::Subscriber { .. }) => {
                self.fresh_total += 1;
                self.messages += 1;
                let Some(t) = publish_time(payload) else {
                    return self.bad(payload);
                };
                if t >= self.start_unix && t < self.end_unix {
                    self.fresh_in_window += 1;
                    self.received += 1;
                    let sent = clock::from_unix_ns(t);
                    report::record_us(&mut self.hist, now.saturating_sub(sent) / 1000);
                }
            }
            ("ok", Role::Subscriber { acked }) if !*acked => {
                *acked = true;
                self.acked += 1;
                self.shared.subscribed.fetch_add(1, Relaxed);
            }
            ("error", Role::Subscriber { acked }) if !*acked => {
                // Subscription refused: answered, so set-up need not wait for it.
                *acked = true;
                self.sub_refused += 1;
                self.bad(payload);
            }
            // Publishers send no id, so any reply to them is unexpected; likewise errors.
            _ => self.bad(payload),
        }
    }

    fn after_read(&mut self, _conn: &mut Conn<Role>, _now: u64) {
        // Batched per read turn to keep atomics off the per-message path.
        if self.fresh_total > 0 {
            self.shared
                .progress
                .fetch_add(std::mem::take(&mut self.fresh_total), Relaxed);
        }
        if self.fresh_in_window > 0 {
            self.shared
                .win_recv
                .fetch_add(std::mem::take(&mut self.fresh_in_window), Relaxed);
        }
    }
}

pub fn run(env: &Env, a: &BroadcastArgs) -> Result<Outcome, String> {
    if a.subscribers == 0 || a.publishers == 0 || a.rate <= 0.0 {
        return Err("--subscribers, --publishers and --rate must be positive".into());
    }
    let total = a.subscribers + a.publishers;
    let threads = env.common.threads.min(total);
    let shared = Arc::new(Shared::default());
    let timeout = env.connect_timeout_ns();
    let interval_ns = (1e9 * a.publishers as f64 / a.rate) as u64;
    let grace_ns = (a.grace * 1e9) as u64;
    let subscribe = format!(
        r#"{{"op":"subscribe","topic":{},"id":1}}"#,
        serde_json::json!(a.topic)
    );
    let topic_json = serde_json::json!(a.topic).to_string();

    let mut handles = Vec::new();
    for t in 0..threads {
        let shared = shared.clone();
        let (target, src_ips) = (env.target.clone(), env.common.src_ips);
        let rate = env.common.connect_rate / threads as f64;
        let (subscribe, topic_json) = (subscribe.clone(), topic_json.clone());
        let (subs, pubs) = (a.subscribers, a.publishers);
        let doc_size = a.size;
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || -> Result<ThreadResult<Counts>, String> {
                let mut w: Worker<Role> =
                    Worker::new(&target, src_ips, 4096, t as u64).map_err(|e| e.to_string())?;
                let mut h = BcastHandler {
                    shared: shared.clone(),
                    subscribe: subscribe.into_bytes(),
                    start_unix: u64::MAX,
                    end_unix: u64::MAX,
                    hist: report::new_hist(),
                    fresh_in_window: 0,
                    fresh_total: 0,
                    messages: 0,
                    received: 0,
                    acked: 0,
                    sub_refused: 0,
                    errors: 0,
                    samples: Vec::new(),
                };
                // Global index i < subs is a subscriber, the rest publishers; round-robin over
                // threads spreads both kinds.
                let share: Vec<usize> = (t..subs + pubs).step_by(threads).collect();
                let my_subs = share.iter().filter(|&&i| i < subs).count() as u64;
                let mut last = (0, 0);
                let mut ctx = (&mut w, &mut h);
                paced_open(
                    &mut ctx,
                    share.len(),
                    rate,
                    |(w, _), k| {
                        let i = share[k];
                        let role = if i < subs {
                            Role::Subscriber { acked: false }
                        } else {
                            Role::Publisher { next_ns: 0 }
                        };
                        w.connect("/ws", i, role);
                    },
                    |(w, h), d| {
                        let _ = w.poll(d, &mut **h);
                        w.expire(clock::now_ns(), timeout);
                        sync_counts(w, &shared, &mut last);
                    },
                );
                // Ready once every subscriber that connected has its subscription confirmed.
                let failed_subs = |w: &Worker<Role>| {
                    w.conns
                        .iter()
                        .filter(|c| !c.is_open() && matches!(c.ext, Role::Subscriber { .. }))
                        .count() as u64
                };
                let setup_deadline = clock::now_ns() + timeout;
                while (w.pending > 0 || h.acked + h.sub_refused + failed_subs(&w) < my_subs)
                    && !shared.go.load(Acquire)
                    && clock::now_ns() < setup_deadline
                {
                    let _ = w.poll(Duration::from_millis(10), &mut h);
                    w.expire(clock::now_ns(), timeout);
                    sync_counts(&w, &shared, &mut last);
                }
                sync_counts(&w, &shared, &mut last);
                shared.ready.fetch_add(1, Release);
                while !shared.go.load(Acquire) {
                    let _ = w.poll(Duration::from_millis(5), &mut h);
                }
                let (start, end) = shared.window();
                h.start_unix = clock::to_unix_ns(start);
                h.end_unix = clock::to_unix_ns(end);

                // Stagger publishers evenly over one interval so the total rate is smooth.
                let go_at = clock::now_ns();
                let pub_idx: Vec<usize> = (0..w.conns.len())
                    .filter(|&i| matches!(w.conns[i].ext, Role::Publisher { .. }))
                    .collect();
                for &i in &pub_idx {
                    let global = share[i] - subs;
                    w.conns[i].ext = Role::Publisher {
                        next_ns: go_at + interval_ns * global as u64 / pubs as u64,
                    };
                }
                let mut msg = Vec::with_capacity(128 + doc_size);
                let mut rng = clock::Rng::new(0x5eed + t as u64);
                let mut seq = 0u64;
                // Wire bytes from here on belong to deliveries (set-up is over).
                let bytes_at_go = w.stats.bytes_in;
                let messages_at_go = h.messages;
                let mut published = 0u64;
                loop {
                    let now = clock::now_ns();
                    let mut next_due = u64::MAX;
                    if now < end {
                        for &i in &pub_idx {
                            let Role::Publisher { next_ns } = w.conns[i].ext else {
                                continue;
                            };
                            let mut next = next_ns;
                            if next <= now && w.conns[i].is_open() {
                                let sent = clock::now_ns();
                                let t_unix = clock::to_unix_ns(sent);
                                write_publish(
                                    &mut msg,
                                    &topic_json,
                                    t_unix,
                                    seq,
                                    doc_size,
                                    &mut rng,
                                );
                                seq += 1;
                                w.send(i, |c| c.queue_frame(frame::OP_TEXT, &msg));
                                if sent >= start && sent < end {
                                    published += 1;
                                    shared.win_sent.fetch_add(1, Relaxed);
                                }
                                // Fixed schedule; if we fell far behind, do not burst to catch up.
                                next += interval_ns;
                                if next + 1_000_000_000 < now {
                                    next = now + interval_ns;
                                }
                                w.conns[i].ext = Role::Publisher { next_ns: next };
                            }
                            next_due = next_due.min(next);
                        }
                    } else {
                        // Publishing stopped: wait for in-flight deliveries, bounded by grace.
                        let expected =
                            shared.win_sent.load(Relaxed) * shared.subscribed.load(Relaxed);
                        if shared.win_recv.load(Relaxed) >= expected || now >= end + grace_ns {
                            break;
                        }
                    }
                    let wait = next_due.min(now + 10_000_000).saturating_sub(now);
                    w.poll(Duration::from_nanos(wait), &mut h)
                        .map_err(|e| e.to_string())?;
                }
                let wire = (w.stats.bytes_in - bytes_at_go, h.messages - messages_at_go);
                w.close_all();
                Ok(ThreadResult {
                    stats: w.stats,
                    hist: h.hist,
                    errors: h.errors,
                    samples: h.samples,
                    counts: (h.received, published, wire),
                })
            })
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }

    let win = drive_window(env, &shared, threads, total, "deliveries");
    let m = join_all(handles)?;
    let received: u64 = m.counts.iter().map(|c| c.0).sum();
    let published: u64 = m.counts.iter().map(|c| c.1).sum();
    let wire_bytes: u64 = m.counts.iter().map(|c| c.2 .0).sum();
    let wire_messages: u64 = m.counts.iter().map(|c| c.2 .1).sum();
    let subscribed = shared.subscribed.load(Relaxed);
    let expected = published * subscribed;
    let mut report = Report {
        scenario: "broadcast",
        conns: total as u64,
        threads,
        duration_s: win.duration_s,
        deliveries_per_sec: report::per_sec(received, win.duration_s),
        expected: Some(expected),
        received: Some(received),
        lost: Some(expected.saturating_sub(received)),
        latency_us: Latency::from_hist(&m.hist),
        connect: Some(ConnectSummary::from_stats(&m.stats)),
        server_errors: m.errors,
        error_samples: m.samples,
        timeline_per_sec: win.timeline.clone(),
        params: serde_json::json!({
            "subscribers": a.subscribers,
            "subscribed": subscribed,
            "publishers": a.publishers,
            "rate": a.rate,
            "publishes_in_window": published,
            "topic": a.topic,
            "size": a.size,
            "grace_s": a.grace,
            "warmup_s": env.common.warmup,
        }),
        ..Default::default()
    };
    apply_usage(&mut report, env, &win);
    report.set_tls(env.target.tls.is_some(), &m.stats);
    report.set_wire(env.target.deflate, &m.stats);
    report.bytes_per_delivery = (wire_messages > 0)
        .then(|| (wire_bytes as f64 / wire_messages as f64 * 10.0).round() / 10.0);
    Ok(Outcome {
        report,
        latency: m.hist,
        rate_label: "deliveries/s",
    })
}

/// Symbols for [`write_publish`]'s documents.
const SYMBOLS: [&str; 16] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AVGO", "JPM", "V", "XOM", "UNH",
    "LLY", "MA", "COST", "HD",
];

/// The publish request for message `seq`: `data` starts with the timestamp and sequence
/// number (what subscribers measure) and, when `size` > 0, goes on with quotes until the
/// document is about `size` bytes. The numbers come from `rng`, so two documents differ.
fn write_publish(
    msg: &mut Vec<u8>,
    topic_json: &str,
    t_unix: u64,
    seq: u64,
    size: usize,
    rng: &mut clock::Rng,
) {
    msg.clear();
    let _ = write!(
        msg,
        r#"{{"op":"publish","topic":{topic_json},"data":{{"t":{t_unix},"seq":{seq}"#
    );
    if size > 0 {
        let start = msg.len();
        msg.extend_from_slice(br#","quotes":["#);
        let mut i = 0;
        // Each quote is about 110 bytes; stop before the document would pass `size`.
        while msg.len() - start + 110 < size || i == 0 {
            let r = rng.next_u64();
            // Cents: prices from 50.00 to 500.00.
            let px = 5_000 + (r % 45_000);
            let spread = 1 + (r >> 20) % 9;
            let _ = write!(
                msg,
                r#"{}{{"symbol":"{}","bid":{}.{:02},"ask":{}.{:02},"bid_size":{},"ask_size":{},"venue":"XNAS","ts":{}}}"#,
                if i == 0 { "" } else { "," },
                SYMBOLS[(seq as usize + i) % SYMBOLS.len()],
                px / 100,
                px % 100,
                (px + spread) / 100,
                (px + spread) % 100,
                100 * (1 + (r >> 32) % 50),
                100 * (1 + (r >> 40) % 50),
                t_unix / 1_000_000 - (r >> 48) % 1000,
            );
            i += 1;
        }
        msg.push(b']');
    }
    msg.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_documents_have_the_size_asked_for() {
        let mut rng = clock::Rng::new(1);
        let mut msg = Vec::new();
        for size in [0usize, 200, 1024, 4096] {
            write_publish(
                &mut msg,
                "\"bench\"",
                1_700_000_000_000_000_000,
                7,
                size,
                &mut rng,
            );
            let v: serde_json::Value = serde_json::from_slice(&msg).unwrap();
            assert_eq!(v["op"], "publish");
            let data = serde_json::to_vec(&v["data"]).unwrap();
            if size >= 1024 {
                assert!(
                    data.len() <= size && data.len() > size - 130,
                    "{size}: {}",
                    data.len()
                );
            }
            assert_eq!(v["data"]["seq"], 7);
            assert_eq!(publish_time(&msg), Some(1_700_000_000_000_000_000));
        }
        let first = msg.clone();
        write_publish(
            &mut msg,
            "\"bench\"",
            1_700_000_000_000_000_000,
            7,
            4096,
            &mut rng,
        );
        assert_ne!(first, msg, "numbers change from one publish to the next");
    }

    #[test]
    fn extracts_publish_time() {
        let m = br#"{"op":"message","topic":"bench","data":{"t":1700000000123456789,"seq":42}}"#;
        assert_eq!(publish_time(m), Some(1_700_000_000_123_456_789));
        // A topic containing "t": must not confuse the scan.
        let m = br#"{"op":"message","topic":"\"t\":5","data":{"t": 77,"seq":1}}"#;
        assert_eq!(publish_time(m), Some(77));
        assert_eq!(publish_time(br#"{"op":"message","data":{"seq":1}}"#), None);
        assert_eq!(
            publish_time(br#"{"data":{"t":99999999999999999999999}}"#),
            None
        );
    }
}
