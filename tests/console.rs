//! The web console on the WebSocket listener: the page on a plain GET of `/`, its live
//! figures on `/stats.json`, both gone with `--no-console`, and upgrades on `/` unaffected.
//! The page itself is driven in a real Chromium by tests/browser (tools/browser-test.sh).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_response(&mut s).unwrap()
}

fn stats(addr: SocketAddr) -> Value {
    let r = get(addr, "/stats.json");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn the_page_is_served_on_a_plain_get_and_an_upgrade_on_root_still_speaks_json() {
    let server = start(config(2));
    let r = get(server.local_addr(), "/");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.starts_with("<!doctype html>"), "{}", &r.body[..80]);
    assert_eq!(r.body.len(), corecast::console::PAGE.len());
    // The page may talk to its own origin only, and loads nothing from elsewhere.
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    assert!(
        !r.body.contains("src=\"http"),
        "the page loads something from elsewhere"
    );
    let mut ws = connect(server.local_addr(), "/");
    send(&mut ws, json!({"op":"echo","data":"still json"}));
    assert_eq!(recv(&mut ws), json!({"op":"echo","data":"still json"}));
    server.shutdown().unwrap();
}

#[test]
fn stats_json_counts_connections_per_worker_and_times_loop_turns() {
    let server = start(config(2));
    let addr = server.local_addr();
    let deadline = Instant::now() + WATCHDOG;
    let sampled = |want: i64| loop {
        let s = stats(addr);
        let last = s["samples"].as_array().unwrap().last().cloned();
        if let Some(last) = last.filter(|l| l["connections"] == want) {
            return (s, last);
        }
        assert!(
            Instant::now() < deadline,
            "never sampled {want} connections: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (s, _) = sampled(0);
    assert_eq!(s["workers"], 2);
    for key in [
        "messages_in",
        "messages_out",
        "deliveries",
        "slow_consumer_dropped",
    ] {
        assert!(s["totals"][key].is_u64(), "{key}: {s}");
    }
    // Two clients, one on each worker, busy enough for every worker to turn.
    let mut a = connect(addr, "/ws");
    let mut b = connect(addr, "/ws");
    let (_, last) = sampled(2);
    assert_eq!(last["worker_connections"], json!([1, 1]));
    for _ in 0..200 {
        for c in [&mut a, &mut b] {
            send(c, json!({"op":"echo","data":1}));
            recv(c);
        }
    }
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let s = stats(addr);
        let last = s["samples"].as_array().unwrap().last().unwrap().clone();
        let p99 = last["turn_p99_us"].as_array().unwrap();
        if last["messages_in_per_s"].as_f64().unwrap() > 0.0 && p99.iter().all(|v| v.is_u64()) {
            assert!(p99.iter().all(|v| v.as_u64().unwrap() >= 1));
            assert!(last["rss_bytes"].as_u64().unwrap() > 1 << 20);
            assert_eq!(last["turn_running_ms"].as_array().unwrap().len(), 2);
            assert!(s["samples"].as_array().unwrap().len() <= corecast::console::HISTORY);
            break;
        }
        assert!(Instant::now() < deadline, "no rates or turn times: {s}");
        for c in [&mut a, &mut b] {
            send(c, json!({"op":"echo","data":1}));
            recv(c);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server.shutdown().unwrap();
}

#[test]
fn no_console_answers_404_for_the_page_and_the_stats() {
    let mut cfg = config(1);
    cfg.console = false;
    let server = start(cfg);
    assert_eq!(get(server.local_addr(), "/").status, 404);
    assert_eq!(get(server.local_addr(), "/stats.json").status, 404);
    assert_eq!(get(server.local_addr(), "/healthz").status, 200);
    let mut ws = connect(server.local_addr(), "/");
    send(&mut ws, json!({"op":"echo","data":"json"}));
    assert_eq!(recv(&mut ws), json!({"op":"echo","data":"json"}));
    server.shutdown().unwrap();
}
