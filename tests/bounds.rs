//! Every resource a client can make the server hold has a bound. Each test plays the client
//! that fills one: one that sends requests and never reads, one that lets a huge backlog
//! build and then drains it slowly, a publisher whose burst would look like a slow reader,
//! one that declares a large frame and then trickles it, and one that sends empty frames as
//! fast as it can. Real sockets throughout; the tests that measure memory, CPU or loop turns
//! run the binary as a process of their own.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{set_int_opt, Proc};
use common::*;
use corecast::broadcast::PUBLISHER_SHARE;
use corecast::config::SlowConsumer;
use serde_json::json;
use tungstenite::Message;

const MIB: u64 = 1 << 20;

/// Writes `frame` over and over (in batches of at least 64 KiB), never reading, until `stop`
/// is set or `secs` pass; stops early if the server drops the connection. Only whole frames
/// go out: a write cut short (while the server does not read, TCP blocks the writer, and
/// the write timeout makes it look at `stop` again) is finished before the next batch.
fn flood(s: TcpStream, frame: Vec<u8>, stop: &AtomicBool, secs: u64) -> (TcpStream, usize) {
    flood_upto(s, frame, stop, secs, usize::MAX)
}

/// `flood`, ending also once `max` bytes are out (at a frame boundary).
fn flood_upto(
    mut s: TcpStream,
    frame: Vec<u8>,
    stop: &AtomicBool,
    secs: u64,
    max: usize,
) -> (TcpStream, usize) {
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut batch = Vec::new();
    while batch.len() < 64 * 1024 {
        batch.extend_from_slice(&frame);
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0;
    let mut at = 0;
    while Instant::now() < until && !(at == 0 && (stop.load(Ordering::Relaxed) || sent >= max)) {
        match s.write(&batch[at..]) {
            Ok(n) => {
                sent += n;
                at = (at + n) % batch.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    (s, sent)
}

#[test]
fn clients_that_send_requests_and_never_read_are_held_back_then_closed() {
    let p = Proc::start(&[
        "--workers",
        "1",
        "--max-outbound-bytes",
        "1048576",
        "--backpressure-timeout",
        "3",
    ]);
    let base = p.rss();
    let long_id = format!("\"{}\"", "i".repeat(2000));
    let requests: Vec<(&str, Vec<u8>)> = vec![
        (
            "echo",
            masked(
                0x81,
                format!(r#"{{"op":"echo","id":{long_id},"data":1}}"#).as_bytes(),
            ),
        ),
        ("ping", masked(0x89, &[b'p'; 125])),
        ("bad request", masked(0x81, b"x")),
        (
            "publish with an id",
            masked(
                0x81,
                format!(r#"{{"op":"publish","topic":"t","id":{long_id},"data":0}}"#).as_bytes(),
            ),
        ),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = requests
        .into_iter()
        .map(|(what, frame)| {
            let s = raw_upgraded(p.addr, "/ws");
            set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
            let stop = stop.clone();
            // Until all four are held: on a loaded machine, filling the socket buffers and
            // the bound can take a while.
            (what, std::thread::spawn(move || flood(s, frame, &stop, 40)))
        })
        .collect();

    // While they flood: every one of them gets held, the server stays small, and a normal
    // client is served at once.
    p.wait_metric(
        "corecast_connections_held",
        None,
        Duration::from_secs(40),
        |v| v == 4.0,
    );
    stop.store(true, Ordering::Relaxed);
    let mut normal = connect(p.addr, "/ws");
    for i in 0..20 {
        let t = Instant::now();
        send(&mut normal, json!({"op":"echo","data":i}));
        assert_eq!(recv(&mut normal), json!({"op":"echo","data":i}));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut peak = 0;
    let mut held = Vec::new();
    for (what, t) in floods {
        peak = peak.max(p.rss());
        let (s, sent) = t.join().unwrap();
        assert!(sent > 0, "{what}: nothing sent");
        held.push(s);
    }
    let grown = peak.saturating_sub(base);
    // Four connections at a 1 MiB bound, plus a held-back read each: well under 16 MiB.
    assert!(
        grown < 16 * MIB,
        "RSS grew by {} MiB for four non-reading clients",
        grown / MIB
    );
    let out_mem = p.metric("corecast_outbound_memory_bytes", None);
    assert!(
        out_mem <= 4.0 * (1 << 20) as f64 + 4.0 * 70_000.0,
        "outbound memory {out_mem}"
    );
    assert!(p.metric("corecast_input_held_total", None) >= 4.0);

    // Held past the backpressure timeout: closed with 1008, counted, and gone.
    p.wait_metric("corecast_backpressure_closed_total", None, WATCHDOG, |v| {
        v == 4.0
    });
    p.wait_metric("corecast_connections_open", None, WATCHDOG, |v| v == 1.0);
    assert_eq!(p.metric("corecast_connections_held", None), 0.0);
    drop(held);
    send(&mut normal, json!({"op":"echo","data":"still here"}));
    assert_eq!(recv(&mut normal), json!({"op":"echo","data":"still here"}));
    drop(normal);
    assert!(p.terminate().success());
}

#[test]
fn held_input_resumes_below_the_low_water_mark_and_nothing_is_lost() {
    // A client that pipelines far more requests than its bound holds, and reads slowly: it
    // is held and let go again and again, and still gets every reply, in order.
    let mut cfg = config(1);
    cfg.max_outbound_bytes = 128 * 1024;
    cfg.max_message_size = 4096;
    cfg.max_frame_size = 4096;
    let server = start(cfg);
    let s = raw_upgraded(server.local_addr(), "/echo");
    set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RCVBUF, 65536);
    // 20 MB of replies: far more than the kernel's socket buffers take, so the server queue
    // fills up and the server has to hold the client's input back, many times over.
    let total = 20_000usize;
    let payload = [b'e'; 1000];
    let mut writer = s.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        let frame = masked(0x82, &payload);
        for _ in 0..total {
            writer.write_all(&frame).unwrap();
        }
    });
    let mut r = std::io::BufReader::with_capacity(64 * 1024, s);
    let mut got = 0;
    let mut buf = vec![0u8; 1004];
    while got < total {
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..4], &[0x82, 126, 0x03, 0xE8]);
        assert!(buf[4..].iter().all(|&b| b == b'e'));
        got += 1;
        if got % 2000 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    w.join().unwrap();
    let st = server.stats();
    assert!(st.input_held > 1, "never held: {st:?}");
    assert_eq!(st.messages_in, total as u64);
    assert_eq!(st.backpressure_closes, 0);
    assert_eq!(st.held, 0);
    server.shutdown().unwrap();
}

#[test]
fn a_huge_backlog_drains_completely_and_cheaply() {
    let p = Proc::start(&[
        "--workers",
        "1",
        "--max-outbound-bytes",
        "536870912",
        "--backpressure-timeout",
        "60",
    ]);
    let mut s = raw_upgraded(p.addr, "/echo");
    set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RCVBUF, 65536);
    // 256 MB of replies pile up: the client writes 60 KB echoes and reads nothing.
    let frame = masked(0x82, &vec![3u8; 60_000]);
    let count = 256 * 1024 * 1024 / 60_000;
    for _ in 0..count {
        s.write_all(&frame).unwrap();
    }
    p.wait_metric("corecast_outbound_queued_bytes", None, WATCHDOG, |v| {
        v >= (count * 60_000) as f64 - 8.0 * MIB as f64
    });
    let cpu0 = p.cpu_ticks();
    let t0 = Instant::now();
    let mut left = count * (60_000 + 4);
    let mut buf = vec![0u8; 64 * 1024];
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    while left > 0 {
        let n = s.read(&mut buf[..left.min(64 * 1024)]).unwrap();
        assert!(n > 0, "EOF with {left} bytes still due");
        left -= n;
    }
    let cpu = p.cpu_ticks() - cpu0;
    // Writing 256 MB costs the server well under a second of CPU. (That each write costs
    // O(bytes written), not O(backlog), is checked where it can be counted exactly, in
    // `outbound`'s unit tests.)
    assert!(
        cpu < 500,
        "draining 256 MB took {cpu} ticks of server CPU in {:?}",
        t0.elapsed()
    );
    // The worker updates its gauge right after the write returns, which can be a moment after
    // the client has read the bytes.
    p.wait_metric("corecast_outbound_queued_bytes", None, WATCHDOG, |v| {
        v == 0.0
    });
    assert!(p.terminate().success());
}

#[test]
fn a_burst_of_large_publishes_reaches_a_fast_subscriber_whole() {
    for policy in [SlowConsumer::Close, SlowConsumer::Drop] {
        let mut cfg = config(1);
        cfg.slow_consumer = policy;
        let server = start(cfg);
        let addr = server.local_addr();
        let mut sub = connect(addr, "/ws");
        send(&mut sub, json!({"op":"subscribe","topic":"burst"}));
        assert_eq!(recv(&mut sub), json!({"op":"ok"}));

        // 40 publishes of 30 KB in one write: one loop turn reads most of them and merges
        // their deliveries into one run of more than the 1 MiB bound.
        let data = "d".repeat(30_000);
        let mut burst = Vec::new();
        for i in 0..40 {
            let req = format!(r#"{{"op":"publish","topic":"burst","data":["{data}",{i}]}}"#);
            burst.extend_from_slice(&masked(0x81, req.as_bytes()));
        }
        let mut publisher = raw_upgraded(addr, "/ws");
        publisher.write_all(&burst).unwrap();
        for i in 0..40 {
            let m = recv(&mut sub);
            assert_eq!(m["data"][1], i, "{policy:?}: message {i}");
        }
        let s = server.stats();
        assert_eq!((s.dropped, s.slow_closes), (0, 0), "{policy:?}: {s:?}");
        server.shutdown().unwrap();
    }
}

#[test]
fn a_declared_frame_length_commits_no_memory_until_the_bytes_arrive() {
    let p = Proc::start(&["--workers", "1", "--message-timeout", "2"]);
    let base = p.rss();
    // 2,000 connections each send the 8-byte header of a 60 KiB frame, and 100 bytes of it.
    let frame = masked(0x82, &vec![1u8; 60 * 1024]);
    let conns: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut s = raw_upgraded(p.addr, "/echo");
            s.write_all(&frame[..8 + 100]).unwrap();
            s
        })
        .collect();
    p.wait_metric("corecast_inbound_memory_bytes", None, WATCHDOG, |v| {
        v >= 2000.0 * 100.0
    });
    let held = p.metric("corecast_inbound_memory_bytes", None);
    let grown = p.rss().saturating_sub(base);
    assert!(
        held <= 2000.0 * 512.0,
        "2,000 partial frames of 108 bytes hold {held} bytes"
    );
    // The declared 120 MiB in all must not be resident: a few hundred bytes a connection.
    assert!(
        grown < 8 * MIB,
        "RSS grew by {} KiB for 2,000 partial frames",
        grown >> 10
    );

    // Nobody finishes within the message timeout: every one is closed with 1008.
    p.wait_metric("corecast_message_timeouts_total", None, WATCHDOG, |v| {
        v == 2000.0
    });
    for mut s in conns.into_iter().take(20) {
        let (op, payload) = raw_frame(&mut s);
        assert_eq!(op, 0x8);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
        assert_eq!(&payload[2..], b"message timeout");
    }
    p.wait_metric("corecast_connections_open", None, WATCHDOG, |v| v == 0.0);
    assert_eq!(p.metric("corecast_inbound_memory_bytes", None), 0.0);
    assert!(p.terminate().success());
}

#[test]
fn a_message_that_keeps_arriving_within_the_timeout_is_served() {
    // The timeout bounds the whole message, but a client that is merely slow (a fragment a
    // second, done in four) is not cut off.
    let mut cfg = config(1);
    cfg.message_timeout = Duration::from_secs(6);
    let server = start(cfg);
    let mut s = raw_upgraded(server.local_addr(), "/echo");
    let parts: [(u8, &[u8]); 4] = [
        (0x01, b"sl"),
        (0x00, b"ow"),
        (0x00, b" bu"),
        (0x80, b"t ok"),
    ];
    for (first, p) in parts {
        s.write_all(&masked(first, p)).unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    let (op, payload) = raw_frame(&mut s);
    assert_eq!((op, &payload[..]), (0x1, &b"slow but ok"[..]));
    assert_eq!(server.stats().message_timeouts, 0);
    server.shutdown().unwrap();
}

#[test]
fn every_acknowledged_publish_is_delivered_before_the_shutdown_close() {
    // Publishers on both workers publish with ids while subscribers on both workers listen;
    // shutdown comes in the middle. Every publish answered `ok` must have reached every
    // subscriber before its 1001.
    let server = start(config(2));
    let addr = server.local_addr();
    let subscribers: Vec<_> = (0..8)
        .map(|_| {
            let mut c = connect(addr, "/ws");
            send(&mut c, json!({"op":"subscribe","topic":"acked"}));
            assert_eq!(recv(&mut c), json!({"op":"ok"}));
            std::thread::spawn(move || {
                let mut seen = std::collections::HashSet::new();
                loop {
                    match c.read() {
                        Ok(Message::Text(t)) => {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                            seen.insert(v["data"].as_str().unwrap().to_owned());
                        }
                        Ok(Message::Close(f)) => {
                            return (seen, f.map(|f| u16::from(f.code)));
                        }
                        Ok(_) => {}
                        Err(e) => panic!("subscriber lost its connection: {e}"),
                    }
                }
            })
        })
        .collect();
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..16)
        .map(|p| {
            let mut c = connect(addr, "/ws");
            let (running, sent) = (running.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut n = 0;
                // Pipelined: send in batches of 20, then read whatever replies came.
                c.get_mut()
                    .set_read_timeout(Some(Duration::from_millis(2)))
                    .unwrap();
                loop {
                    if running.load(Ordering::Relaxed) {
                        for _ in 0..20 {
                            let id = format!("{p}-{n}");
                            let req = json!({"op":"publish","topic":"acked","id":id,"data":id});
                            if c.send(Message::text(req.to_string())).is_err() {
                                return acked;
                            }
                            n += 1;
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    loop {
                        match c.read() {
                            Ok(Message::Text(t)) => {
                                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                                assert_eq!(v["op"], "ok");
                                acked.push(v["id"].as_str().unwrap().to_owned());
                            }
                            Ok(Message::Close(_)) => return acked,
                            Ok(_) => {}
                            Err(tungstenite::Error::Io(e))
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) =>
                            {
                                break
                            }
                            Err(_) => return acked,
                        }
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + WATCHDOG;
    while sent.load(Ordering::Relaxed) < 20_000 {
        assert!(Instant::now() < deadline, "publishers stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.shutdown().unwrap();
    running.store(false, Ordering::Relaxed);
    let acked: Vec<String> = publishers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        acked.len() > 1000,
        "only {} publishes were acknowledged",
        acked.len()
    );
    for t in subscribers {
        let (seen, code) = t.join().unwrap();
        assert_eq!(code, Some(1001));
        let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged publishes never arrived, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

/// Clients publishing on one worker to subscribers on another faster than that worker
/// delivers: what waits in the other worker's queue stays within its 64 MiB bound, because
/// the publishers' input is held back instead (TCP then slows them), and the queue drains
/// once they stop. One publisher alone is held at its share (1/8 of the bound; see
/// `a_heavy_publisher_is_held_at_its_share_while_light_ones_keep_publishing`), so it takes
/// more than eight to reach the bound: sixteen, which at half their shares still fill it.
#[test]
fn publishers_faster_than_the_other_worker_are_held_back_not_buffered() {
    const PUBLISHERS: usize = 16;
    let p = Proc::start(&[
        "--workers",
        "2",
        "--max-message-size",
        "131072",
        "--max-outbound-bytes",
        "196608",
        "--slow-consumer",
        "drop",
    ]);
    let base = p.rss();
    let mut publishers = vec![raw_upgraded(p.addr, "/ws")];
    // Connections go round robin, so every other one after the first publisher is on the
    // other worker: those subscribe (and never read, so that every delivery costs that worker
    // a refusal per subscriber); of the rest, beside the first publisher, the first are
    // publishers too and the others stay idle.
    let mut far = Vec::new();
    let mut near = Vec::new();
    for i in 0..2000 {
        let mut s = raw_upgraded(p.addr, "/ws");
        if i % 2 == 0 {
            set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
            s.write_all(&masked(0x81, br#"{"op":"subscribe","topic":"far"}"#))
                .unwrap();
            let (_, ok) = raw_frame(&mut s);
            assert_eq!(ok, br#"{"op":"ok"}"#);
            far.push(s);
        } else if publishers.len() < PUBLISHERS {
            publishers.push(s);
        } else {
            near.push(s);
        }
    }
    let data = "d".repeat(60_000);
    let frame = masked(
        0x81,
        format!(r#"{{"op":"publish","id":1,"topic":"far","data":"{data}"}}"#).as_bytes(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = publishers
        .into_iter()
        .map(|publisher| {
            // Each publish carries an id, so the publisher also gets an `ok` per publish,
            // which it reads: a held publisher with replies to flush must stay held all the
            // same.
            let mut acks = publisher.try_clone().unwrap();
            acks.set_read_timeout(Some(Duration::from_secs(40)))
                .unwrap();
            // Reads the acks until the last request's; returns how many came before it.
            let acked = std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    let (_, payload) = raw_frame(&mut acks);
                    if payload == br#"{"op":"ok","id":"last"}"# {
                        return n;
                    }
                    assert_eq!(payload, br#"{"op":"ok","id":1}"#);
                    n += 1;
                }
            });
            let (stop, frame) = (stop.clone(), frame.clone());
            let flooding = std::thread::spawn(move || flood(publisher, frame, &stop, 30));
            (flooding, acked)
        })
        .collect();
    let (mut peak_queue, mut peak_rss) = (0.0f64, 0);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        peak_queue = peak_queue.max(p.metric("corecast_cross_worker_queued_bytes", None));
        peak_rss = peak_rss.max(p.rss());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let floods: Vec<_> = floods
        .into_iter()
        .map(|(flooding, acked)| {
            let (publisher, n) = flooding.join().unwrap();
            sent += n;
            (publisher, acked)
        })
        .collect();
    let held = p.metric("corecast_publishers_held_total", None);
    let share_held = p.metric("corecast_publishers_share_held_total", None);
    eprintln!(
        "sent {} MiB; peak cross-worker queue {:.1} MiB; publishers held {held} times for the \
         bound, {share_held} times for their shares; RSS +{} MiB",
        sent >> 20,
        peak_queue / MIB as f64,
        peak_rss.saturating_sub(base) / MIB
    );
    assert!(held >= 1.0, "no publisher was ever held back for the bound");
    assert!(
        peak_queue <= (64 + 4) as f64 * MIB as f64,
        "cross-worker queue reached {peak_queue} bytes"
    );
    // The far subscribers' queues (1,000 × 192 KiB) and the bounded cross-worker queue.
    let grown = peak_rss.saturating_sub(base);
    assert!(grown < 400 * MIB, "RSS grew by {} MiB", grown / MIB);
    // Stopped: the far worker catches up, the queue empties, and the publishers are read
    // again: what they sent while held is handled, then this request is answered.
    p.wait_metric("corecast_cross_worker_queued_bytes", None, WATCHDOG, |v| {
        v == 0.0
    });
    let mut publishers = Vec::new();
    for (mut publisher, acked) in floods {
        publisher.set_write_timeout(None).unwrap();
        publisher
            .write_all(&masked(
                0x81,
                br#"{"op":"publish","id":"last","topic":"nobody","data":0}"#,
            ))
            .unwrap();
        let acks = acked
            .join()
            .expect("every publish is acknowledged, the last one too");
        assert!(acks > 0);
        publishers.push(publisher);
    }
    drop((publishers, far, near));
    assert!(p.terminate().success());
}

/// Publishes `n` small numbered messages to `topic`, one every `gap` whatever the answers,
/// each carrying when it was sent (µs after `t0`), also as its id, so that the server's `ok`
/// tells how long it took to be read; on threads of their own. Returns the socket and the
/// longest wait for an `ok`: a publisher whose input is held back waits until it is let go.
fn publish_numbered(
    s: TcpStream,
    topic: &'static str,
    n: usize,
    gap: Duration,
    t0: Instant,
) -> std::thread::JoinHandle<(TcpStream, Duration)> {
    let mut acks = s.try_clone().unwrap();
    let acked = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        for _ in 0..n {
            let (_, ok) = raw_frame(&mut acks);
            let ok: serde_json::Value = serde_json::from_slice(&ok).unwrap();
            assert_eq!(ok["op"], "ok", "{ok}");
            let sent = Duration::from_micros(ok["id"].as_u64().unwrap());
            worst = worst.max(t0.elapsed().saturating_sub(sent));
        }
        worst
    });
    std::thread::spawn(move || {
        let mut s = s;
        for i in 0..n {
            let us = t0.elapsed().as_micros() as u64;
            let req = json!({"op":"publish","topic":topic,"id":us,"data":{"i":i,"us":us}});
            s.write_all(&masked(0x81, req.to_string().as_bytes()))
                .unwrap();
            std::thread::sleep(gap);
        }
        (s, acked.join().unwrap())
    })
}

/// Reads `n` numbered messages (see `publish_numbered`), checks that they come in order,
/// and returns the longest any took from its publisher to here.
fn receive_numbered(mut c: Client, n: usize, t0: Instant) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        for i in 0..n {
            let m = recv(&mut c);
            assert_eq!(m["data"]["i"], i, "{m}");
            let sent = Duration::from_micros(m["data"]["us"].as_u64().unwrap());
            worst = worst.max(t0.elapsed().saturating_sub(sent));
        }
        worst
    })
}

/// One publisher took the whole cross-worker budget and held back every other publisher.
/// Here a client floods 60 KB publishes to a topic whose subscribers on the other worker
/// make it far slower than the publisher's worker: one never reads (its messages are
/// dropped at its bound), one negotiated permessage-deflate, so that worker compresses every
/// message at level 9, and the text (8 letters) makes zlib follow long hash chains for
/// short matches (about 11 MB/s on the 2-core dev VM, against some 40 to 130 MB/s that the
/// publisher's worker reads). The heavy publisher is held at its own share of the
/// cross-worker queues, well inside the global bound, while a light publisher on each
/// worker, publishing small numbered messages to a reading subscriber on the other worker,
/// is never held: every publish is acknowledged at once, and every message arrives, in order.
/// (The light publisher beside the heavy one shares its worker's queue to the slow worker,
/// so its messages wait behind the heavy one's share: their delay is bounded, not small.)
#[test]
fn a_heavy_publisher_is_held_at_its_share_while_light_ones_keep_publishing() {
    let mut cfg = config(2);
    cfg.slow_consumer = SlowConsumer::Drop;
    cfg.permessage_deflate = true;
    cfg.deflate_level = 9;
    let server = start(cfg);
    let addr = server.local_addr();
    // Round robin from worker 0: even connections go to worker 0, odd ones to worker 1.
    let heavy = raw_upgraded(addr, "/ws");
    let stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = raw_upgraded(addr, "/ws");
            set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
            s.write_all(&masked(0x81, br#"{"op":"subscribe","topic":"heavy"}"#))
                .unwrap();
            assert_eq!(raw_frame(&mut s).1, br#"{"op":"ok"}"#);
            s
        })
        .collect();
    let subscribed = |topic: &str| {
        let mut c = connect(addr, "/ws");
        send(&mut c, json!({"op":"subscribe","topic":topic}));
        assert_eq!(recv(&mut c), json!({"op":"ok"}));
        c
    };
    // The heavy publisher is connection 0 (worker 0), the stalled subscribers 1 and 2.
    let sub0 = subscribed("light0"); // worker 1
    let light0 = raw_upgraded(addr, "/ws"); // worker 0, beside the heavy publisher
    let compressing = deflate_reader(addr, "heavy"); // worker 1
    let sub1 = subscribed("light1"); // worker 0
    let light1 = raw_upgraded(addr, "/ws"); // worker 1
    assert_eq!(server.stats().open, 8);

    let data: String = slow_to_compress(60_000)
        .bytes()
        .map(|b| char::from(b'a' + (b - b'a') % 8))
        .collect();
    let frame = masked(
        0x81,
        format!(r#"{{"op":"publish","topic":"heavy","data":"{data}"}}"#).as_bytes(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(heavy, frame, &stop, 20))
    };
    // The heavy publisher's backlog builds up first; then the light ones publish through it.
    std::thread::sleep(Duration::from_millis(500));
    let (n, gap, t0) = (100, Duration::from_millis(10), Instant::now());
    let receivers = [receive_numbered(sub0, n, t0), receive_numbered(sub1, n, t0)];
    let publishers = [
        publish_numbered(light0, "light0", n, gap, t0),
        publish_numbered(light1, "light1", n, gap, t0),
    ];
    let mut peak = 0;
    while !receivers.iter().all(|r| r.is_finished()) {
        peak = peak.max(server.cross_queued());
        assert!(
            t0.elapsed() < WATCHDOG,
            "the light publishers' messages stalled; cross-worker queue up to {:.1} MiB, \
             publishers held {} times for the global bound",
            peak as f64 / MIB as f64,
            server.stats().publishers_held
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    let delivery: Vec<Duration> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
    let (lights, ack): (Vec<TcpStream>, Vec<Duration>) =
        publishers.into_iter().map(|p| p.join().unwrap()).unzip();
    stop.store(true, Ordering::Relaxed);
    let (mut heavy, sent) = flooding.join().unwrap();
    let st = server.stats();
    eprintln!(
        "heavy sent {} MiB; peak cross-worker queue {:.1} MiB; light publishers' slowest \
         acknowledgement {ack:?}, slowest delivery {delivery:?}, all in after {took:?}; {st:?}",
        sent >> 20,
        peak as f64 / MIB as f64,
    );
    // The heavy publisher's share, a publish past it, and the light publishers' few
    // messages: nowhere near the global bound.
    assert!(
        peak <= PUBLISHER_SHARE + MIB as usize,
        "cross-worker queue reached {:.1} MiB",
        peak as f64 / MIB as f64
    );
    assert_eq!(
        st.publishers_held, 0,
        "a publisher was held for the global bound"
    );
    // A loop turn or two of the slow worker (1 MiB compressed: about 100 ms), not a hold.
    assert!(
        ack.iter().all(|a| *a < Duration::from_secs(1)),
        "a light publisher waited {ack:?} for an acknowledgement"
    );
    // What waits ahead of a light message in its worker's queue to the slow worker is at
    // most the heavy publisher's share (about a second of that worker's work here).
    assert!(
        delivery.iter().all(|d| *d < Duration::from_secs(5)),
        "light messages took up to {delivery:?}"
    );
    assert!(
        st.publishers_share_held > 0,
        "the heavy publisher was never held at its share"
    );
    // Stopped: the other worker catches up and the heavy publisher is read again.
    let deadline = Instant::now() + WATCHDOG;
    while server.cross_queued() > 0 {
        assert!(
            Instant::now() < deadline,
            "the cross-worker queue never drained"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    heavy.set_write_timeout(None).unwrap();
    heavy
        .write_all(&masked(
            0x81,
            br#"{"op":"publish","id":"last","topic":"nobody","data":0}"#,
        ))
        .unwrap();
    heavy
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(raw_frame(&mut heavy).1, br#"{"op":"ok","id":"last"}"#);
    drop((heavy, stalled, lights));
    server.shutdown().unwrap();
    compressing.join().unwrap();
}

/// Turns of worker 0 so far, as `corecast_worker_loop_turn_seconds` exports them: (upper
/// bound in seconds, turns up to it), cumulative, the last one unbounded.
fn turn_buckets(p: &Proc) -> Vec<(f64, f64)> {
    let body = p.get("/metrics");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let sample = parsed
        .samples
        .iter()
        .find(|s| {
            s.metric == "corecast_worker_loop_turn_seconds" && s.labels.get("worker") == Some("0")
        })
        .expect("loop turn histogram exported");
    match &sample.value {
        prometheus_parse::Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("not a histogram: {other:?}"),
    }
}

/// Of the turns between two readings of `turn_buckets`: how many there were, and how many
/// took longer than `limit` seconds (a bucket bound).
fn turns_between(before: &[(f64, f64)], after: &[(f64, f64)], limit: f64) -> (f64, f64) {
    let total = after.last().unwrap().1 - before.last().unwrap().1;
    let (i, _) = after
        .iter()
        .enumerate()
        .find(|(_, (le, _))| *le >= limit)
        .expect("a bucket at the limit");
    let within = after[i].1 - before[i].1;
    (total, total - within)
}

/// The `q` quantile of `samples` (sorted in place).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
}

/// Issue 22, defect 8: one client sends a fragmented message's first frame and then empty
/// continuations (6 bytes each on the wire) as fast as it can, on the one worker an echo
/// client also uses. The message size limit is as large as it goes (1 GiB less the envelope
/// that --max-outbound-bytes must also hold), so nothing ends the flood in its 2 seconds: the
/// limit takes 179 million frames, the flood stops at 120 million, and this machine handles
/// some 39 million a second. Only the per-turn bound on the frames one connection gets
/// handled keeps the worker's turns short and the echo client served.
#[test]
fn empty_continuations_at_full_speed_do_not_stall_the_worker() {
    let p = Proc::start(&[
        "--workers",
        "1",
        "--max-message-size",
        "1073740800",
        "--max-outbound-bytes",
        "1073741824",
    ]);
    let mut echo = connect(p.addr, "/ws");
    let mut flooder = raw_upgraded(p.addr, "/echo");
    flooder.write_all(&masked(0x01, b"x")).unwrap();
    // Turns, then bytes read, and after the flood the other way round: every byte counted
    // was read in a turn counted (but for the one running at the last reading).
    let before = turn_buckets(&p);
    let read_before = p.metric("corecast_bytes_in_total", None);
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let (s, stop) = (flooder.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || flood_upto(s, masked(0x00, b""), &stop, 2, 720_000_000))
    };
    // Round trips for as long as the flood lasts, a few milliseconds apart.
    let mut rtts = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let t = Instant::now();
        send(&mut echo, json!({"op":"echo","data":rtts.len()}));
        assert_eq!(recv(&mut echo), json!({"op":"echo","data":rtts.len()}));
        rtts.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let (_, sent) = flooding.join().unwrap();
    let read = p.metric("corecast_bytes_in_total", None) - read_before;
    let after = turn_buckets(&p);
    let n = rtts.len();
    let max = *rtts.iter().max().unwrap();
    let p99 = quantile(&mut rtts, 0.99);
    let p50 = quantile(&mut rtts, 0.5);
    // Bucket bounds are powers of two microseconds: 2^15 µs is about 33 ms.
    let (turns, long) = turns_between(&before, &after, 0.032768);
    // The echo client's few kilobytes count as frames too: that only makes this larger.
    let frames = read / 6.0;
    eprintln!(
        "flood: {} MiB of empty continuations ({} frames), {frames} frames read; \
         echo: {n} round trips, p50 {p50:?}, p99 {p99:?}, max {max:?}; \
         worker turns: {turns}, over 33 ms: {long}",
        sent >> 20,
        sent / 6
    );
    assert!(sent > 1 << 20, "the flood sent only {sent} bytes");
    // The bound itself, seen from outside: the flooder gets at most 1024 frames handled a
    // turn (twice in the turn it first runs out: its readiness event, then its retry), and
    // it is read no further ahead than one 64 KiB read (10,923 frames) besides.
    assert!(
        frames <= 2.0 * 1024.0 * (turns + 1.0) + 11_000.0,
        "{frames} frames read in {turns} turns"
    );
    assert!(p99 < Duration::from_millis(50), "echo p99 {p99:?}");
    assert!(
        long <= turns / 100.0,
        "{long} of {turns} turns took over 33 ms"
    );
    // Every frame the flooder sent was handled, in order: the message it started ends with
    // this last fragment and comes back whole.
    flooder
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    flooder.write_all(&masked(0x80, b"y")).unwrap();
    let (op, payload) = raw_frame(&mut flooder);
    assert_eq!((op, &payload[..]), (0x1, &b"xy"[..]));
    drop((echo, flooder));
    assert!(p.terminate().success());
}

/// Each fragment pays for itself against --max-message-size, so a stream of empty
/// continuations is a message that grows: at the default 64 KiB it is closed with 1009,
/// like any message that is too big, at its 10,923rd frame (7 bytes for the first, then 6
/// each: 65,533 after 10,922 frames).
#[test]
fn endless_empty_continuations_end_with_1009() {
    let server = start(config(1));
    let mut s = raw_upgraded(server.local_addr(), "/echo");
    s.write_all(&masked(0x01, b"x")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let (s, stop) = (s.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || flood(s, masked(0x00, b""), &stop, 10))
    };
    let (op, payload) = raw_frame(&mut s);
    stop.store(true, Ordering::Relaxed);
    flooding.join().unwrap();
    assert_eq!(op, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
    assert_eq!(&payload[2..], b"message too big");
    let st = server.stats();
    assert_eq!((st.protocol_errors, st.messages_in), (1, 0), "{st:?}");
    server.shutdown().unwrap();
}

/// Frames left for later turns (past the 1024 a connection gets handled per turn) are handled
/// without any more input arriving to wake the worker, in order, and are not taken for a
/// message the client is slow to finish: once they are all handled, nothing is pending.
#[test]
fn a_burst_left_for_later_turns_is_answered_and_is_not_a_slow_message() {
    let mut cfg = config(1);
    cfg.message_timeout = Duration::from_secs(1);
    let server = start(cfg);
    let mut s = raw_upgraded(server.local_addr(), "/echo");
    let mut burst = Vec::new();
    for i in 0..3000u16 {
        burst.extend_from_slice(&masked(0x89, &i.to_be_bytes()));
    }
    s.write_all(&burst).unwrap();
    for i in 0..3000u16 {
        let (op, payload) = raw_frame(&mut s);
        assert_eq!((op, &payload[..]), (0xA, &i.to_be_bytes()[..]), "pong {i}");
    }
    // Past the message timeout (and the once-a-second sweep), the connection is still open.
    std::thread::sleep(Duration::from_secs(3));
    s.write_all(&masked(0x81, b"still open")).unwrap();
    let (op, payload) = raw_frame(&mut s);
    assert_eq!((op, &payload[..]), (0x1, &b"still open"[..]));
    assert_eq!(server.stats().message_timeouts, 0);
    server.shutdown().unwrap();
}
