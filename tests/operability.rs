//! The admin endpoint and health checks: Prometheus metrics read with a real parser, the
//! HTTP publish API reaching WebSocket subscribers, bearer tokens, and drain behaviour.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn admin_config(workers: usize) -> corecast::Config {
    let mut cfg = config(workers);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

/// One HTTP/1.1 request on a new connection; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    // By Content-Length, not to EOF: the admin endpoint keeps connections alive.
    let resp = read_response(&mut s).unwrap();
    (resp.status, resp.body)
}

/// Scrapes /metrics and returns a lookup: metric name (+ optional label) -> value.
fn scrape(addr: SocketAddr) -> impl Fn(&str, Option<(&str, &str)>) -> f64 {
    let (status, body) = http(addr, "GET", "/metrics", "", b"");
    assert_eq!(status, 200);
    move |name, label| sample(&body, name, label)
}

#[test]
fn metrics_move_by_exactly_the_traffic_sent() {
    let server = start(admin_config(2));
    let admin = server.admin_addr().unwrap();
    let before = scrape(admin);
    assert_eq!(before("corecast_connections_open", None), 0.0);

    let mut sub = connect(server.local_addr(), "/ws");
    let mut publ = connect(server.local_addr(), "/ws");
    send(&mut sub, json!({"op":"subscribe","topic":"t"}));
    assert_eq!(recv(&mut sub), json!({"op":"ok"}));
    for i in 0..3 {
        send(&mut publ, json!({"op":"publish","topic":"t","data":i}));
        assert_eq!(recv(&mut sub)["data"], i);
    }
    send(&mut publ, json!({"op":"nope"}));
    assert_eq!(recv(&mut publ)["code"], "bad_request");
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut sink = String::new();
    raw.read_to_string(&mut sink).unwrap();
    drop(raw);
    // The refused connection is gone once the server has seen our FIN.
    let deadline = Instant::now() + WATCHDOG;
    while server.stats().open != 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }

    let after = scrape(admin);
    let delta = |name: &str, label| after(name, label) - before(name, label);
    assert_eq!(delta("corecast_connections_accepted_total", None), 3.0);
    assert_eq!(delta("corecast_handshakes_total", None), 2.0);
    assert_eq!(
        delta(
            "corecast_handshake_failures_total",
            Some(("reason", "not_found"))
        ),
        1.0
    );
    assert_eq!(after("corecast_connections_open", None), 2.0);
    assert_eq!(
        after("corecast_worker_connections_open", Some(("worker", "0")))
            + after("corecast_worker_connections_open", Some(("worker", "1"))),
        2.0
    );
    // subscribe + 3 publishes + the bad request
    assert_eq!(delta("corecast_messages_in_total", None), 5.0);
    assert_eq!(delta("corecast_publishes_total", None), 3.0);
    assert_eq!(delta("corecast_deliveries_total", None), 3.0);
    // ok + 3 deliveries + the error reply
    assert_eq!(delta("corecast_messages_out_total", None), 5.0);
    assert_eq!(delta("corecast_bad_requests_total", None), 1.0);
    assert_eq!(delta("corecast_slow_consumer_dropped_total", None), 0.0);
    assert!(delta("corecast_bytes_in_total", None) > 0.0);
    assert!(after("corecast_process_resident_memory_bytes", None) > 1e6);
    assert!(after("corecast_process_open_fds", None) >= 4.0);
    server.shutdown().unwrap();
}

#[test]
fn http_publish_reaches_websocket_subscribers_on_every_worker() {
    let server = start(admin_config(4));
    let admin = server.admin_addr().unwrap();
    let mut subs: Vec<_> = (0..4)
        .map(|_| connect(server.local_addr(), "/ws"))
        .collect();
    for s in subs.iter_mut() {
        send(s, json!({"op":"subscribe","topic":"news"}));
        assert_eq!(recv(s), json!({"op":"ok"}));
    }
    let (status, body) = http(
        admin,
        "POST",
        "/publish",
        "",
        br#"{"topic":"news","data":{"x":1}}"#,
    );
    assert_eq!((status, body.as_str()), (202, r#"{"queued_workers":4}"#));
    for s in subs.iter_mut() {
        assert_eq!(
            recv(s),
            json!({"op":"message","topic":"news","data":{"x":1}})
        );
    }
    let (status, _) = http(admin, "POST", "/publish", "", br#"{"data":"everyone"}"#);
    assert_eq!(status, 202);
    for s in subs.iter_mut() {
        assert_eq!(recv(s), json!({"op":"message","data":"everyone"}));
    }
    let (status, body) = http(admin, "POST", "/publish", "", b"{oops");
    assert_eq!(status, 400);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["op"], "error");
    let (status, _) = http(admin, "POST", "/publish", "", br#"{"topic":"","data":1}"#);
    assert_eq!(status, 400);
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(70 * 1024));
    let (status, _) = http(admin, "POST", "/publish", "", big.as_bytes());
    assert_eq!(status, 413);
    assert_eq!(http(admin, "GET", "/publish", "", b"").0, 405);
    assert_eq!(http(admin, "GET", "/nothing", "", b"").0, 404);
    let m = scrape(admin);
    assert_eq!(m("corecast_api_publishes_total", None), 2.0);
    assert_eq!(m("corecast_deliveries_total", None), 8.0);
    server.shutdown().unwrap();
}

#[test]
fn publish_api_requires_the_bearer_token_when_one_is_set() {
    let mut cfg = admin_config(1);
    cfg.api_token = Some("s3cret".into());
    let server = start(cfg);
    let admin = server.admin_addr().unwrap();
    let body = br#"{"data":1}"#;
    assert_eq!(http(admin, "POST", "/publish", "", body).0, 401);
    assert_eq!(
        http(
            admin,
            "POST",
            "/publish",
            "Authorization: Bearer wrong\r\n",
            body
        )
        .0,
        401
    );
    assert_eq!(
        http(
            admin,
            "POST",
            "/publish",
            "Authorization: Bearer s3cret\r\n",
            body
        )
        .0,
        202
    );
    // Scrapes and health checks stay open: they change nothing.
    assert_eq!(http(admin, "GET", "/healthz", "", b"").0, 200);
    server.shutdown().unwrap();
}

#[test]
fn healthz_flips_to_503_while_draining() {
    let mut cfg = admin_config(1);
    cfg.drain_timeout = Duration::from_secs(3);
    let server = start(cfg);
    let admin = server.admin_addr().unwrap();
    let addr = server.local_addr();
    assert_eq!(
        http(admin, "GET", "/healthz", "", b""),
        (200, "ok\n".into())
    );
    assert_eq!(http(addr, "GET", "/healthz", "", b""), (200, "ok\n".into()));

    // A client that never answers the close keeps the drain going for its full timeout.
    let _mute = raw_upgraded(addr, "/ws");
    let stopper = std::thread::spawn(move || server.shutdown());
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let (status, body) = http(admin, "GET", "/healthz", "", b"");
        if status == 503 {
            assert_eq!(body, "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "healthz never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = http(addr, "GET", "/healthz", "", b"");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    stopper.join().unwrap().unwrap();
}

/// The released binary, not the library: `--stats-interval` writes its info line, and SIGTERM
/// drains and exits 0.
#[test]
fn binary_logs_a_stats_line_and_exits_cleanly_on_sigterm() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--workers", "1", "--no-pin", "--stats-interval", "1"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("corecast binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WATCHDOG;
    let stats_line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("conns ") && line.contains("deliveries") => break line,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                panic!("no stats line within {WATCHDOG:?}");
            }
        }
    };
    for field in ["conns 0", "in 0/s", "out 0/s", "dropped 0", "rss "] {
        assert!(
            stats_line.contains(field),
            "{field:?} missing: {stats_line}"
        );
    }

    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corecast did not exit within {WATCHDOG:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
}
