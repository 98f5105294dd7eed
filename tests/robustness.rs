//! Misbehaving clients over real sockets: timeouts, keepalive, slow consumers, limits, and
//! descriptor exhaustion. Every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{self, Proc};
use common::*;
use corecast::config::SlowConsumer;
use serde_json::json;
use tungstenite::Message;

/// Reads until EOF or error; returns how long that took. Panics if it takes over `limit`.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("not closed after {:?}: {e}", start.elapsed()),
        }
    }
}

#[test]
fn silent_and_slowloris_handshakes_are_cut_off() {
    let mut cfg = config(1);
    cfg.handshake_timeout = Duration::from_secs(1);
    let server = start(cfg);
    let addr = server.local_addr();
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut slow = TcpStream::connect(addr).unwrap();
    let dripper = std::thread::spawn(move || {
        // One byte every 200 ms: never completes a request within the timeout.
        for b in b"GET /ws HTTP/1.1\r\nHost: slow\r\n".iter() {
            if slow.write_all(&[*b]).is_err() {
                return slow;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        slow
    });
    assert!(wait_closed(&mut silent, Duration::from_secs(5)) < Duration::from_secs(3));
    let mut slow = dripper.join().unwrap();
    wait_closed(&mut slow, Duration::from_secs(5));
    assert_eq!(server.stats().timeouts, 2);
    // The worker was never held up: a normal client is served at once.
    let mut c = connect(addr, "/ws");
    send(&mut c, json!({"op":"echo","data":0}));
    assert_eq!(recv(&mut c), json!({"op":"echo","data":0}));
    server.shutdown().unwrap();
}

#[test]
fn silent_peers_are_pinged_then_reaped_and_answering_peers_stay() {
    let mut cfg = config(1);
    cfg.ping_interval = Duration::from_secs(1);
    cfg.idle_timeout = Duration::from_secs(3);
    let server = start(cfg);
    let addr = server.local_addr();

    let mut mute = raw_upgraded(addr, "/ws");
    let started = Instant::now();
    let (op, _) = raw_frame(&mut mute);
    assert_eq!(op, 0x9, "first thing a silent peer gets is a ping");
    let close = loop {
        let (op, p) = raw_frame(&mut mute);
        if op == 0x8 {
            break u16::from_be_bytes([p[0], p[1]]);
        }
        assert_eq!(op, 0x9);
    };
    assert_eq!(close, 1001);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    wait_closed(&mut mute, Duration::from_secs(5));

    // tungstenite answers pings while reading, so this client outlives the idle timeout.
    let mut alive = connect(addr, "/ws");
    let until = Instant::now() + Duration::from_secs(4);
    let mut pings = 0;
    while Instant::now() < until {
        match alive.read().unwrap() {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 2, "{pings} pings");
    send(&mut alive, json!({"op":"echo","data":"alive"}));
    assert_eq!(recv(&mut alive), json!({"op":"echo","data":"alive"}));
    assert_eq!(server.stats().timeouts, 1);
    server.shutdown().unwrap();
}

/// A subscriber that never reads and a fast one, while `total` messages are published in
/// paced batches. Returns (server, fast subscriber's count, largest queued-bytes sample).
fn slow_consumer_run(policy: SlowConsumer, total: usize) -> (corecast::Server, usize, i64) {
    const LIMIT: usize = 256 * 1024;
    let mut cfg = config(1);
    cfg.max_outbound_bytes = LIMIT;
    cfg.slow_consumer = policy;
    let server = start(cfg);
    let addr = server.local_addr();

    let mut stalled = raw_upgraded(addr, "/ws");
    let sub = masked(0x81, br#"{"op":"subscribe","topic":"feed"}"#);
    stalled.write_all(&sub).unwrap();
    let (_, ok) = raw_frame(&mut stalled);
    assert_eq!(ok, br#"{"op":"ok"}"#);
    // From here on `stalled` never reads again.

    let mut fast = connect(addr, "/ws");
    send(&mut fast, json!({"op":"subscribe","topic":"feed"}));
    assert_eq!(recv(&mut fast), json!({"op":"ok"}));
    let got = Arc::new(AtomicUsize::new(0));
    let got2 = got.clone();
    let reader = std::thread::spawn(move || {
        while got2.load(Ordering::SeqCst) < total {
            match fast.read().unwrap() {
                Message::Text(_) => {
                    got2.fetch_add(1, Ordering::SeqCst);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });

    let mut publisher = raw_upgraded(addr, "/ws");
    let payload = "p".repeat(180);
    let request = format!(r#"{{"op":"publish","topic":"feed","data":"{payload}"}}"#);
    let frame = masked(0x81, request.as_bytes());
    let mut max_queued = 0;
    let batch = 1000;
    for sent in (batch..=total).step_by(batch) {
        let mut buf = Vec::with_capacity(frame.len() * batch);
        for _ in 0..batch {
            buf.extend_from_slice(&frame);
        }
        publisher.write_all(&buf).unwrap();
        let deadline = Instant::now() + WATCHDOG;
        while got.load(Ordering::SeqCst) < sent {
            assert!(
                Instant::now() < deadline,
                "fast subscriber stuck at {got:?} of {sent}"
            );
            max_queued = max_queued.max(server.stats().queued_bytes);
            std::thread::sleep(Duration::from_micros(200));
        }
        max_queued = max_queued.max(server.stats().queued_bytes);
    }
    reader.join().unwrap();
    drop(stalled);
    (server, got.load(Ordering::SeqCst), max_queued)
}

#[test]
fn a_stalled_reader_is_closed_with_1008_and_never_delays_the_others() {
    let total = 100_000;
    let (server, got, max_queued) = slow_consumer_run(SlowConsumer::Close, total);
    assert_eq!(got, total, "the fast subscriber got every message");
    let s = server.stats();
    assert_eq!(s.slow_closes, 1);
    assert!(s.dropped > 0, "{s:?}");
    // Memory stayed bounded: both subscribers' queues stay under the 256 KiB limit.
    assert!(
        max_queued <= 2 * 256 * 1024 + 4096,
        "queued peaked at {max_queued} bytes"
    );
    // The fast subscriber got everything; the stalled one got some before it was cut off.
    assert!(
        s.deliveries > total as u64 && s.deliveries < 2 * total as u64,
        "{s:?}"
    );
    server.shutdown().unwrap();
}

#[test]
fn drop_policy_counts_every_message_it_drops() {
    let total = 100_000;
    let (server, got, max_queued) = slow_consumer_run(SlowConsumer::Drop, total);
    assert_eq!(got, total);
    let s = server.stats();
    assert_eq!(s.slow_closes, 0);
    assert!(
        s.dropped > 0,
        "the stalled reader must have overflowed: {s:?}"
    );
    assert_eq!(s.deliveries + s.dropped, 2 * total as u64, "{s:?}");
    assert!(
        max_queued <= 2 * 256 * 1024 + 4096,
        "queued peaked at {max_queued} bytes"
    );
    assert_eq!(
        s.protocol_errors + s.timeouts,
        0,
        "nobody was closed: {s:?}"
    );
    server.shutdown().unwrap();
}

fn http_status(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    let _ = s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp
}

#[test]
fn connection_limits_refuse_with_a_reason_and_free_up_again() {
    let mut cfg = config(2);
    cfg.max_connections_per_ip = 2;
    let server = start(cfg);
    let addr = server.local_addr();
    let a = connect(addr, "/ws");
    let _b = connect(addr, "/ws");
    let resp = http_status(addr);
    assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
    assert_eq!(server.refused(), (0, 1));
    drop(a);
    let deadline = Instant::now() + WATCHDOG;
    while server.stats().open > 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut again = connect(addr, "/ws");
    send(&mut again, json!({"op":"echo","data":1}));
    assert_eq!(recv(&mut again), json!({"op":"echo","data":1}));
    server.shutdown().unwrap();

    let mut cfg = config(2);
    cfg.max_connections = Some(1);
    let server = start(cfg);
    let addr = server.local_addr();
    let only = connect(addr, "/ws");
    let resp = http_status(addr);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("connection limit reached"), "{resp}");
    assert_eq!(server.refused(), (1, 0));
    drop(only);
    let deadline = Instant::now() + WATCHDOG;
    while server.stats().open > 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let _next = connect(addr, "/ws");
    server.shutdown().unwrap();
}

/// Sends an upgrade from a socket bound to `source` (loopback is 127.0.0.0/8) and reads the
/// response: a 101's head, or a refusal with its body.
fn upgrade_from(source: [u8; 4], addr: SocketAddr) -> (TcpStream, HttpResponse) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s = TcpStream::from(sock);
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(UPGRADE).unwrap();
    let resp = read_response(&mut s).expect("a response");
    (s, resp)
}

#[test]
fn connections_over_the_per_ip_rate_get_429_while_other_addresses_are_admitted() {
    const ONE: [u8; 4] = [127, 0, 0, 1];
    const TWO: [u8; 4] = [127, 0, 0, 2];
    let mut cfg = config(1);
    cfg.max_connection_rate_per_ip = 1;
    cfg.connection_rate_burst = Some(3);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start(cfg);
    let (addr, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let admitted = |source| {
        let (s, resp) = upgrade_from(source, addr);
        assert_eq!(resp.status, 101, "{source:?}: {}", resp.head);
        s
    };
    let refused = |source| {
        let (_, resp) = upgrade_from(source, addr);
        assert_eq!(resp.status, 429, "{source:?}: {}", resp.head);
        assert_eq!(resp.header("retry-after"), Some("1"), "{}", resp.head);
        assert!(
            resp.body.contains("too many new connections"),
            "{}",
            resp.body
        );
    };

    // The burst, at once; then the bucket is empty. The server took the first token before
    // it answered the first upgrade, so a second from `first` it has one again. Five
    // loopback connections take milliseconds, far from that second.
    let mut open = vec![admitted(ONE)];
    let first = Instant::now();
    open.push(admitted(ONE));
    open.push(admitted(ONE));
    refused(ONE);
    refused(ONE);
    // Another address has a bucket of its own, as full as ever.
    for _ in 0..3 {
        open.push(admitted(TWO));
    }
    refused(TWO);

    // A token a second: one connection more, not a burst.
    std::thread::sleep(
        (first + Duration::from_millis(1050)).saturating_duration_since(Instant::now()),
    );
    open.push(admitted(ONE));
    refused(ONE);

    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let metrics = read_response(&mut s).unwrap().body;
    assert!(
        metrics.contains("corecast_connections_rejected_total{reason=\"connection_rate\"} 4\n"),
        "{metrics}"
    );
    assert_eq!(server.refused(), (0, 0), "no cap refused anyone");
    assert_eq!(server.stats().accepted, 7);
    drop(open);
    server.shutdown().unwrap();
}

#[test]
fn malformed_frames_get_rfc_close_codes() {
    let server = start(config(1));
    let addr = server.local_addr();
    let close_after = |bytes: &[u8]| {
        let mut s = raw_upgraded(addr, "/echo");
        s.write_all(bytes).unwrap();
        let (op, p) = raw_frame(&mut s);
        assert_eq!(op, 0x8);
        let code = u16::from_be_bytes([p[0], p[1]]);
        wait_closed(&mut s, Duration::from_secs(5));
        code
    };
    // A ping with a 126-byte payload (16-bit length form), masked.
    let mut long_ping = vec![0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0];
    long_ping.extend_from_slice(&[0u8; 126]);
    assert_eq!(close_after(&long_ping), 1002);
    assert_eq!(
        close_after(&masked(0x88, &[0x03, 0xE8, 0xFF])),
        1007,
        "close reason not UTF-8"
    );
    assert_eq!(
        close_after(&masked(0x88, &[0x03])),
        1002,
        "one-byte close payload"
    );
    assert_eq!(
        close_after(&masked(0x88, &[0x0B, 0xB7])),
        1002,
        "close code 2999"
    );
    // Pseudo-random garbage after the upgrade still gets a close frame, never a hang.
    let mut x = 0x2545F4914F6CDD1Du64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut s = raw_upgraded(addr, "/echo");
    let _ = s.write_all(&garbage);
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    assert!(
        !all.is_empty() && all.windows(1).any(|w| w[0] & 0x0F == 0x8),
        "no close frame"
    );

    let resp = {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    assert!(
        resp.starts_with("HTTP/1.1 426") && resp.contains("Sec-WebSocket-Version: 13"),
        "{resp}"
    );
    let mut c = connect(addr, "/echo");
    c.send(Message::text("ok")).unwrap();
    assert_eq!(c.read().unwrap(), Message::text("ok"));
    server.shutdown().unwrap();
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Sends an upgrade and reads the status line's first 12 bytes (`HTTP/1.1 101`), or `None`
/// if nothing came within `wait`.
fn upgrade_status(addr: SocketAddr, wait: Duration) -> (TcpStream, Option<String>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(UPGRADE).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut head = [0u8; 12];
    let status = s
        .read_exact(&mut head)
        .ok()
        .map(|()| String::from_utf8_lossy(&head).into_owned());
    if status.as_deref() == Some("HTTP/1.1 101") {
        // The rest of the response head, so later frames start clean.
        let mut rest = Vec::new();
        let mut b = [0u8; 1];
        while !rest.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            rest.push(b[0]);
        }
    }
    (s, status)
}

#[test]
fn the_default_connection_cap_fits_the_descriptor_limit_and_refuses_with_503() {
    // 300 descriptors leave 300 - 132 = 168 for clients (two workers): the 169th upgrade is
    // answered 503 at once instead of hanging in the backlog.
    let p = Proc::start_limited(&["--workers", "2"], Some(300));
    assert!(
        p.log().iter().any(|l| l.contains("connection limit 168")),
        "{:?}",
        p.log()
    );
    assert_eq!(p.metric("corecast_connection_limit", None), 168.0);
    let mut open = Vec::new();
    for i in 0..168 {
        let (s, status) = upgrade_status(p.addr, WATCHDOG);
        assert_eq!(status.as_deref(), Some("HTTP/1.1 101"), "client {i}");
        open.push(s);
    }
    let (mut s, status) = upgrade_status(p.addr, Duration::from_secs(2));
    assert_eq!(status.as_deref(), Some("HTTP/1.1 503"));
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    assert!(body.contains("connection limit reached"), "{body}");
    assert_eq!(
        p.metric(
            "corecast_connections_rejected_total",
            Some(("reason", "max_connections"))
        ),
        1.0
    );
    assert!(p.fds() < 300);
    drop(open);
    assert!(p.terminate().success());
}

#[test]
fn descriptor_exhaustion_refuses_with_503_without_spinning_and_recovers() {
    // A cap above what the descriptors allow: past the last descriptor, the spare one is
    // used to answer 503, and the server neither hangs the client nor spins.
    let p = Proc::start_limited(&["--workers", "1", "--max-connections", "1000"], Some(48));
    let mut open = Vec::new();
    let refused = loop {
        let (s, status) = upgrade_status(p.addr, Duration::from_secs(2));
        match status.as_deref() {
            Some("HTTP/1.1 101") => open.push(s),
            Some("HTTP/1.1 503") => break s,
            other => panic!("after {} connections: {other:?}", open.len()),
        }
        assert!(open.len() < 48, "the descriptor limit never bit");
    };
    assert!(open.len() > 10, "only {} connections fit", open.len());
    let mut refused = refused;
    let mut body = String::new();
    let _ = refused.read_to_string(&mut body);
    assert!(body.contains("out of file descriptors"), "{body}");

    // Existing connections keep working.
    let ping = masked(0x89, b"still");
    open[0].set_read_timeout(Some(WATCHDOG)).unwrap();
    open[0].write_all(&ping).unwrap();
    let (op, payload) = raw_frame(&mut open[0]);
    assert_eq!((op, &payload[..]), (0xA, &b"still"[..]));

    // No spinning while clients keep arriving at a full table.
    let before = p.cpu_ticks();
    for _ in 0..20 {
        let (_, status) = upgrade_status(p.addr, Duration::from_secs(2));
        assert_eq!(status.as_deref(), Some("HTTP/1.1 503"));
    }
    std::thread::sleep(Duration::from_secs(1));
    let used = p.cpu_ticks() - before;
    assert!(
        used < 40,
        "server used {used} ticks of CPU refusing 20 clients"
    );
    open.truncate(open.len() - 5);
    // Freed descriptors: a new client is served.
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let (_, status) = upgrade_status(p.addr, WATCHDOG);
        if status.as_deref() == Some("HTTP/1.1 101") {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {status:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        p.metric(
            "corecast_connections_rejected_total",
            Some(("reason", "descriptors"))
        ) >= 21.0
    );
    drop(open);
    assert!(p.terminate().success());
}

#[test]
fn peers_that_hang_up_mid_frame_leave_nothing_behind() {
    // Clients that send half a frame and reset, half a frame and close, or a pong and
    // close, in a tight loop from several threads: each hang-up often arrives in the same
    // readiness event as the data. Every one of those connections must be gone at once,
    // not at the next ping.
    let mut cfg = config(2);
    cfg.ping_interval = Duration::from_secs(30);
    let server = start(cfg);
    let addr = server.local_addr();
    let half = masked(0x81, &[b'h'; 200])[..50].to_vec();
    let pong = masked(0x8A, b"");
    let threads: Vec<_> = (0..3)
        .map(|kind| {
            let (half, pong) = (half.clone(), pong.clone());
            std::thread::spawn(move || {
                for _ in 0..300 {
                    let mut s = raw_upgraded(addr, "/ws");
                    match kind {
                        0 => {
                            s.write_all(&half).unwrap();
                            process::reset(s);
                        }
                        1 => {
                            s.write_all(&half).unwrap();
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        }
                        _ => {
                            s.write_all(&pong).unwrap();
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.stats().open > 0 {
        let s = server.stats();
        assert!(
            Instant::now() < deadline,
            "{} of 900 hung-up connections are still open: {s:?}",
            s.open
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = server.stats();
    assert_eq!(s.closed, 900);
    assert_eq!(s.hangups, 900, "{s:?}");
    assert_eq!(s.inbound_memory, 0);
    server.shutdown().unwrap();
}
