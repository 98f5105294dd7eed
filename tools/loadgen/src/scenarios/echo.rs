//! `echo` scenario: closed-loop request/reply with `depth` messages in flight per connection,
//! on `/echo` (raw frames) or `/ws` (the JSON echo op, or a publish to a topic the connection
//! itself is subscribed to, whose delivery is the reply).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{
    apply_usage, drive_window, join_all, paced_open, reply_op, sync_counts, Env, Outcome, Shared,
    ThreadResult,
};
use crate::cli::{EchoArgs, EchoMode};
use crate::clock;
use crate::conn::{Conn, Handler, Worker};
use crate::frame;
use crate::report::{self, ConnectSummary, Latency, Report};

/// Per-connection state: send timestamps of in-flight messages, oldest first (the server
/// answers in order, so a FIFO pairs each reply with its request).
struct EchoConn {
    sent_ns: VecDeque<u64>,
    /// Replies seen in the current read turn; re-sent as one batch in `after_read`.
    fresh: usize,
    /// Publish mode: this connection's topic, and whether its subscribe is still unanswered.
    topic: Option<Box<str>>,
    awaiting_ack: bool,
}

struct EchoHandler {
    shared: Arc<Shared>,
    start: u64,
    end: u64,
    /// Raw mode: what every reply must equal. JSON mode: `None` (server may re-serialise).
    expect: Option<Vec<u8>>,
    expect_op: u8,
    /// JSON modes: the `op` every reply must have (`echo`, or `message` for publish).
    expect_json: &'static str,
    /// Publish mode: subscribes answered with `ok`, and otherwise.
    acked: u64,
    sub_refused: u64,
    hist: Histogram<u64>,
    replies: u64,
    bytes: u64,
    errors: u64,
    samples: Vec<String>,
    sending: bool,
}

impl EchoHandler {
    fn bad(&mut self, what: &str, payload: &[u8]) {
        self.errors += 1;
        if self.samples.len() < 5 {
            let cut = &payload[..payload.len().min(160)];
            self.samples
                .push(format!("{what}: {}", String::from_utf8_lossy(cut)));
        }
    }
}

impl Handler<EchoConn> for EchoHandler {
    fn on_open(&mut self, conn: &mut Conn<EchoConn>, _now: u64) {
        if let Some(topic) = &conn.ext.topic {
            let sub = format!(
                r#"{{"op":"subscribe","topic":{},"id":"sub"}}"#,
                serde_json::Value::from(&**topic)
            );
            conn.queue_frame(frame::OP_TEXT, sub.as_bytes());
        }
    }

    fn on_data(&mut self, ext: &mut EchoConn, opcode: u8, payload: &[u8], now: u64) {
        if ext.awaiting_ack {
            // Publish mode: the subscribe's answer comes before any publish is sent.
            ext.awaiting_ack = false;
            if reply_op(payload) == "ok" {
                self.acked += 1;
            } else {
                self.sub_refused += 1;
                self.bad("subscribe refused", payload);
            }
            return;
        }
        let Some(sent) = ext.sent_ns.pop_front() else {
            self.bad("unsolicited frame", payload);
            return;
        };
        ext.fresh += 1;
        match &self.expect {
            Some(e) => {
                if opcode != self.expect_op || payload != &e[..] {
                    self.bad("echo mismatch", payload);
                }
            }
            None => {
                if reply_op(payload) != self.expect_json {
                    self.bad("unexpected reply", payload);
                }
            }
        }
        if now >= self.start && now < self.end {
            self.replies += 1;
            self.bytes += payload.len() as u64;
            report::record_us(&mut self.hist, (now - sent) / 1000);
        }
    }

    fn after_read(&mut self, conn: &mut Conn<EchoConn>, now: u64) {
        let n = std::mem::take(&mut conn.ext.fresh);
        if n == 0 {
            return;
        }
        self.shared.progress.fetch_add(n as u64, Relaxed);
        if self.sending && now < self.end {
            // One timestamp for the whole batch: they go out in the same write.
            conn.queue_repeated(n);
            for _ in 0..n {
                conn.ext.sent_ns.push_back(now);
            }
        }
    }
}

/// The request payload: raw bytes, the JSON echo request with a padded string, or (with a
/// `topic`) the publish to it.
fn request(a: &EchoArgs, topic: Option<&str>) -> (u8, Vec<u8>, Option<Vec<u8>>) {
    match a.mode {
        EchoMode::Raw => {
            // Printable bytes so `--text` frames are valid UTF-8.
            let p: Vec<u8> = (0..a.size).map(|i| b'a' + (i % 26) as u8).collect();
            let op = if a.text {
                frame::OP_TEXT
            } else {
                frame::OP_BINARY
            };
            (op, p.clone(), Some(p))
        }
        EchoMode::Json => {
            let mut p = br#"{"op":"echo","data":""#.to_vec();
            p.extend(std::iter::repeat_n(b'x', a.size));
            p.extend_from_slice(br#""}"#);
            (frame::OP_TEXT, p, None)
        }
        EchoMode::Publish => {
            let topic = serde_json::Value::from(topic.unwrap_or_default()).to_string();
            let mut p = format!(r#"{{"op":"publish","topic":{topic},"data":""#).into_bytes();
            p.extend(std::iter::repeat_n(b'x', a.size));
            p.extend_from_slice(br#""}"#);
            (frame::OP_TEXT, p, None)
        }
    }
}

/// Publish mode: connection `i`'s topic.
fn topic_of(a: &EchoArgs, i: usize) -> Option<Box<str>> {
    (a.mode == EchoMode::Publish).then(|| a.topic.replace("{i}", &i.to_string()).into())
}

pub fn run(env: &Env, a: &EchoArgs) -> Result<Outcome, String> {
    if a.conns == 0 || a.depth == 0 {
        return Err("--conns and --depth must be at least 1".into());
    }
    let threads = env.common.threads.min(a.conns);
    let shared = Arc::new(Shared::default());
    let path = match a.mode {
        EchoMode::Raw => "/echo",
        EchoMode::Json | EchoMode::Publish => "/ws",
    };
    // The longest request (the last connection's topic is the longest) sizes the buffers.
    let (opcode, payload, expect) = request(a, topic_of(a, a.conns - 1).as_deref());
    let expect_json = match a.mode {
        EchoMode::Publish => "message",
        _ => "echo",
    };
    let publish = a.mode == EchoMode::Publish;
    let frame_len = frame::client_header_len(payload.len()) + payload.len();
    // Enough copies for one write of the whole window, capped so big frames stay cheap.
    let copies = a.depth.min((256 * 1024 / frame_len).max(1));
    let rbuf = (a.depth * (frame_len + 16)).clamp(4096, 256 * 1024);
    let timeout = env.connect_timeout_ns();

    let mut handles = Vec::new();
    for t in 0..threads {
        let shared = shared.clone();
        let (target, src_ips) = (env.target.clone(), env.common.src_ips);
        let rate = env.common.connect_rate / threads as f64;
        let (payload, expect, depth, conns) = (payload.clone(), expect.clone(), a.depth, a.conns);
        let a = a.clone();
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || -> Result<ThreadResult<(u64, u64)>, String> {
                let mut w: Worker<EchoConn> =
                    Worker::new(&target, src_ips, rbuf, t as u64).map_err(|e| e.to_string())?;
                let mut h = EchoHandler {
                    shared: shared.clone(),
                    start: u64::MAX,
                    end: u64::MAX,
                    expect,
                    expect_op: opcode,
                    expect_json,
                    acked: 0,
                    sub_refused: 0,
                    hist: report::new_hist(),
                    replies: 0,
                    bytes: 0,
                    errors: 0,
                    samples: Vec::new(),
                    sending: false,
                };
                let share: Vec<usize> = (t..conns).step_by(threads).collect();
                let mut last = (0, 0);
                let mut ctx = (&mut w, &mut h);
                paced_open(
                    &mut ctx,
                    share.len(),
                    rate,
                    |(w, _), i| {
                        let topic = topic_of(&a, share[i]);
                        let ext = EchoConn {
                            sent_ns: VecDeque::with_capacity(depth),
                            fresh: 0,
                            awaiting_ack: topic.is_some(),
                            topic,
                        };
                        w.connect(path, share[i], ext);
                    },
                    |(w, h), d| {
                        let _ = w.poll(d, &mut **h);
                        w.expire(clock::now_ns(), timeout);
                        sync_counts(w, &shared, &mut last);
                    },
                );
                // Publish mode: ready once every connection that opened has its subscription
                // answered (bounded by the connect timeout).
                let setup_deadline = clock::now_ns() + timeout;
                let unanswered = |w: &Worker<EchoConn>, h: &EchoHandler| {
                    publish && h.acked + h.sub_refused < w.stats.ok
                };
                while (w.pending > 0 || unanswered(&w, &h))
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
                (h.start, h.end) = shared.window();
                h.sending = true;
                let now = clock::now_ns();
                for idx in 0..w.conns.len() {
                    let own = w.conns[idx]
                        .ext
                        .topic
                        .as_deref()
                        .map(|t| request(&a, Some(t)).1);
                    let payload = own.as_deref().unwrap_or(&payload);
                    w.send(idx, |c| {
                        c.set_repeated(opcode, payload, copies);
                        c.queue_repeated(depth);
                        c.ext.sent_ns.extend(std::iter::repeat_n(now, depth));
                    });
                }
                loop {
                    let now = clock::now_ns();
                    if now >= h.end {
                        break;
                    }
                    let wait = (h.end - now).min(10_000_000);
                    w.poll(Duration::from_nanos(wait), &mut h)
                        .map_err(|e| e.to_string())?;
                }
                w.close_all();
                Ok(ThreadResult {
                    stats: w.stats,
                    hist: h.hist,
                    errors: h.errors,
                    samples: h.samples,
                    counts: (h.replies, h.bytes),
                })
            })
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }

    let win = drive_window(env, &shared, threads, a.conns, "msgs");
    let m = join_all(handles)?;
    let replies: u64 = m.counts.iter().map(|c| c.0).sum();
    let bytes: u64 = m.counts.iter().map(|c| c.1).sum();
    let mut report = Report {
        scenario: "echo",
        conns: a.conns as u64,
        threads,
        duration_s: win.duration_s,
        messages_per_sec: report::per_sec(replies, win.duration_s),
        bytes_per_sec: report::per_sec(bytes, win.duration_s),
        received: Some(replies),
        latency_us: Latency::from_hist(&m.hist),
        connect: Some(ConnectSummary::from_stats(&m.stats)),
        server_errors: m.errors,
        error_samples: m.samples,
        timeline_per_sec: win.timeline.clone(),
        params: serde_json::json!({
            "mode": format!("{:?}", a.mode).to_lowercase(),
            "depth": a.depth,
            "size": a.size,
            "frame_bytes": frame_len,
            "topic": publish.then_some(&a.topic),
            "warmup_s": env.common.warmup,
        }),
        ..Default::default()
    };
    apply_usage(&mut report, env, &win);
    report.set_tls(env.target.tls.is_some(), &m.stats);
    report.set_wire(env.target.deflate, &m.stats);
    Ok(Outcome {
        report,
        latency: m.hist,
        rate_label: "replies/s",
    })
}
