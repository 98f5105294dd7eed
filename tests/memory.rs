//! What the server's memory does under clients that make it hold some: bounded while they
//! hold it, and given back to the operating system once they leave. Each test runs its own
//! `corecast` process and reads that process's resident set from /proc.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::process::Proc;
use common::*;

const MIB: u64 = 1 << 20;

/// Waits until `f` is true or `limit` passes; returns whether it became true.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens `n` upgraded connections, writing `first` on each right after the upgrade.
fn open(addr: std::net::SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = raw_upgraded(addr, "/ws");
            if !first.is_empty() {
                s.write_all(first).unwrap();
            }
            s
        })
        .collect()
}

#[test]
fn memory_goes_back_to_the_os_after_a_burst() {
    let p = Proc::start(&["--workers", "2"]);
    let base = p.rss();

    // 800 clients holding 256 subscriptions each, and 1,000 clients each in the middle of a
    // 60 KB message (the server holds what arrived of it).
    let subscribers: Vec<TcpStream> = (0..800)
        .map(|c| {
            let mut subs = Vec::new();
            for i in 0..256 {
                let req = format!(r#"{{"op":"subscribe","topic":"client-{c}-topic-{i}"}}"#);
                subs.extend_from_slice(&masked(0x81, req.as_bytes()));
            }
            open(p.addr, 1, &subs).pop().unwrap()
        })
        .collect();
    let mut partial = masked(0x82, &vec![7u8; 60_000]);
    partial.truncate(59_000);
    let partials = open(p.addr, 1000, &partial);
    p.wait_metric("corecast_inbound_memory_bytes", None, WATCHDOG, |v| {
        v >= 1000.0 * 50_000.0
    });
    p.wait_metric("corecast_handshakes_total", None, WATCHDOG, |v| v == 1800.0);
    std::thread::sleep(Duration::from_millis(500));
    let peak = p.rss();
    eprintln!("RSS: base {} KiB, peak {} KiB", base >> 10, peak >> 10);
    assert!(
        peak > base + 60 * MIB,
        "the burst did not cost memory: {base} -> {peak}"
    );

    drop(subscribers);
    drop(partials);
    p.wait_metric("corecast_connections_open", None, WATCHDOG, |v| v == 0.0);
    let back = eventually(Duration::from_secs(5), || p.rss() <= base + 16 * MIB);
    let end = p.rss();
    eprintln!("RSS after: {} KiB", end >> 10);
    assert!(
        back,
        "RSS {} MiB at start, {} MiB at the peak, still {} MiB 5 s after everyone left",
        base / MIB,
        peak / MIB,
        end / MIB
    );
    assert!(p.terminate().success());
}

/// Subscribes a raw client to `topic` and returns it unread from then on (its receive
/// buffer made small, so the kernel holds little for it).
fn stalled_subscriber(addr: std::net::SocketAddr, topic: &str) -> TcpStream {
    let mut s = raw_upgraded(addr, "/ws");
    common::process::set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
    let req = format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#);
    s.write_all(&masked(0x81, req.as_bytes())).unwrap();
    let (_, ok) = raw_frame(&mut s);
    assert_eq!(ok, br#"{"op":"ok"}"#);
    s
}

/// Publishes `count` messages of about `size` bytes, round robin over `topics`, in batches.
fn publish(publisher: &mut TcpStream, topics: &[String], count: usize, size: usize) {
    let data = "m".repeat(size);
    let mut batch = Vec::new();
    for i in 0..count {
        let t = &topics[i % topics.len()];
        let req = format!(r#"{{"op":"publish","topic":"{t}","data":"{data}"}}"#);
        batch.extend_from_slice(&masked(0x81, req.as_bytes()));
        if batch.len() > 256 * 1024 {
            publisher.write_all(&batch).unwrap();
            batch.clear();
        }
    }
    publisher.write_all(&batch).unwrap();
}

#[test]
fn stalled_readers_cost_at_most_their_bound_in_memory() {
    // 50 subscribers that never read, each on a topic of its own (nothing shared between
    // their queues: the worst case), fed small messages until every queue is at its 1 MiB
    // bound and messages are being dropped. Small messages are the worst case for what a
    // queued message costs beyond its bytes.
    let p = Proc::start(&[
        "--workers",
        "1",
        "--max-outbound-bytes",
        "1048576",
        "--slow-consumer",
        "drop",
    ]);
    let topics: Vec<String> = (0..50).map(|i| format!("stalled-{i}")).collect();
    let stalled: Vec<TcpStream> = topics
        .iter()
        .map(|t| stalled_subscriber(p.addr, t))
        .collect();
    let base = p.rss();
    let mut publisher = raw_upgraded(p.addr, "/ws");
    let mut rounds = 0;
    while p.metric("corecast_slow_consumer_dropped_total", None) < 50.0 * 1000.0 {
        publish(&mut publisher, &topics, 50_000, 20);
        rounds += 1;
        p.wait_metric("corecast_publishes_total", None, WATCHDOG, |v| {
            v == rounds as f64 * 50_000.0
        });
        assert!(rounds < 100, "the queues never filled");
    }
    let queued = p.metric("corecast_outbound_memory_bytes", None);
    let busy = p.rss().saturating_sub(base);
    // What the allocator still caches of the traffic just freed (the frames of 1.7M
    // publishes) decays within its 1 s purge interval; what stays is the readers' cost.
    std::thread::sleep(Duration::from_millis(1500));
    let grown = p.rss().saturating_sub(base);
    let bound = 50.0 * MIB as f64;
    assert!(queued >= 0.9 * bound, "queues hold only {queued} bytes");
    assert!(
        (grown as f64) <= 1.5 * bound,
        "50 stalled readers at a 1 MiB bound grew RSS by {} MiB",
        grown / MIB
    );
    eprintln!(
        "50 stalled readers: queues {:.1} MiB, RSS +{:.1} MiB ({:.1} MiB right after the traffic)",
        queued / MIB as f64,
        grown as f64 / MIB as f64,
        busy as f64 / MIB as f64
    );
    drop(stalled);
    assert!(p.terminate().success());
}

#[test]
fn over_max_memory_new_clients_get_503_and_slow_consumers_are_cut_shorter() {
    let p = Proc::start(&[
        "--workers",
        "1",
        "--max-outbound-bytes",
        "8388608",
        "--slow-consumer",
        "drop",
        "--max-memory",
        "64M",
    ]);
    assert!(
        p.rss() < 32 * MIB,
        "baseline too high for this test: {}",
        p.rss()
    );
    let mut publisher = raw_upgraded(p.addr, "/ws");
    // A probe subscriber with 3 MB queued: under its 8 MiB bound, over a quarter of it.
    let probe = stalled_subscriber(p.addr, "probe");
    let probe_topic = vec!["probe".to_string()];
    let mut sent = 0;
    // The kernel's socket buffers take the first few MB; then the queue fills.
    while p.metric("corecast_outbound_memory_bytes", None) < 3_000_000.0 {
        publish(&mut publisher, &probe_topic, 200, 1000);
        sent += 200;
        p.wait_metric("corecast_publishes_total", None, WATCHDOG, |v| {
            v == sent as f64
        });
        assert!(sent < 20_000, "the probe's queue never filled");
    }
    assert_eq!(p.metric("corecast_memory_pressure", None), 0.0);
    assert_eq!(p.metric("corecast_slow_consumer_dropped_total", None), 0.0);

    // Twelve more stalled readers, up to 8 MiB each: the process goes over 64 MiB.
    let topics: Vec<String> = (0..12).map(|i| format!("fill-{i}")).collect();
    let fill: Vec<TcpStream> = topics
        .iter()
        .map(|t| stalled_subscriber(p.addr, t))
        .collect();
    while p.metric("corecast_memory_pressure", None) == 0.0 {
        publish(&mut publisher, &topics, 12 * 500, 1000);
        sent += 12 * 500;
        p.wait_metric("corecast_publishes_total", None, WATCHDOG, |v| {
            v == sent as f64
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            sent < 500_000,
            "memory never went over --max-memory: {}",
            p.rss()
        );
    }
    assert!(p.log().iter().any(|l| l.contains("over --max-memory")));

    // New clients are refused with 503 while it lasts.
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("short of memory"), "{resp}");
    assert_eq!(
        p.metric(
            "corecast_connections_rejected_total",
            Some(("reason", "memory"))
        ),
        1.0
    );

    // The probe's queue is over a quarter of its bound: under pressure its messages drop.
    let dropped = p.metric("corecast_slow_consumer_dropped_total", None);
    publish(&mut publisher, &probe_topic, 10, 1000);
    p.wait_metric(
        "corecast_slow_consumer_dropped_total",
        None,
        WATCHDOG,
        |v| v == dropped + 10.0,
    );

    // The fillers leave; memory goes back; the guard lets go and clients are served again.
    drop(fill);
    p.wait_metric("corecast_memory_pressure", None, WATCHDOG, |v| v == 0.0);
    let mut c = connect(p.addr, "/ws");
    send(&mut c, serde_json::json!({"op":"echo","data":1}));
    assert_eq!(recv(&mut c), serde_json::json!({"op":"echo","data":1}));
    let dropped = p.metric("corecast_slow_consumer_dropped_total", None);
    publish(&mut publisher, &probe_topic, 10, 1000);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        p.metric("corecast_slow_consumer_dropped_total", None),
        dropped,
        "below --max-memory the probe's bound is its own again"
    );
    drop(probe);
    assert!(p.terminate().success());
}

/// 1,000 history topics filled to their bound (100 publications of about 1 KB each), then
/// abandoned: once their time to live has passed, their streams are freed and the resident
/// set comes back to within 16 MiB of where it started.
#[test]
fn abandoned_history_goes_back_to_the_os_after_its_time_to_live() {
    let p = Proc::start(&["--workers", "2", "--history", "h.*:100:5"]);
    let base = p.rss();
    let topics: Vec<String> = (0..1000).map(|i| format!("h.{i}")).collect();
    let mut publisher = raw_upgraded(p.addr, "/ws");
    publish(&mut publisher, &topics, 100_000, 1000);
    p.wait_metric("corecast_history_bytes", None, WATCHDOG, |v| {
        v >= 1000.0 * 100.0 * 1000.0
    });
    let peak = p.rss();
    eprintln!("RSS: base {} KiB, peak {} KiB", base >> 10, peak >> 10);
    assert!(
        peak > base + 80 * MIB,
        "100 MB of history did not cost memory: {base} -> {peak}"
    );
    assert_eq!(p.metric("corecast_history_topics", None), 1000.0);
    p.wait_metric(
        "corecast_history_topics",
        None,
        Duration::from_secs(15),
        |v| v == 0.0,
    );
    assert_eq!(p.metric("corecast_history_bytes", None), 0.0);
    let back = eventually(Duration::from_secs(10), || p.rss() <= base + 16 * MIB);
    let end = p.rss();
    eprintln!("RSS after: {} KiB", end >> 10);
    assert!(
        back,
        "RSS {} MiB at start, {} MiB at the peak, still {} MiB 10 s after the history expired",
        base / MIB,
        peak / MIB,
        end / MIB
    );
    drop(publisher);
    assert!(p.terminate().success());
}
