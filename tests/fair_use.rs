//! Per-connection rate limits (`--max-messages-per-sec`, `--max-bytes-per-sec`,
//! `--rate-limit-burst`, `--rate-limit-policy`): each test plays a client that sends faster
//! than its limit, over a real socket, and checks what the policy does to it, that it is
//! counted, and that another client on the same worker is not slowed by it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use corecast::config::{RateLimits, RatePolicy};
use serde_json::json;

fn limited(policy: RatePolicy, messages_per_sec: u32, bytes_per_sec: u64) -> corecast::Config {
    let mut cfg = config(1);
    cfg.rate = RateLimits {
        messages_per_sec,
        bytes_per_sec,
        burst_secs: 1,
        policy,
    };
    cfg
}

/// Sends `n` numbered echo requests at once (one write each, no waiting).
fn burst(ws: &mut Client, n: usize, pad: usize) {
    let data = "x".repeat(pad);
    for i in 0..n {
        ws.write(tungstenite::Message::text(
            json!({"op":"echo","id":i,"data":data}).to_string(),
        ))
        .unwrap();
    }
    ws.flush().unwrap();
}

#[test]
fn hold_slows_a_fast_client_to_its_rate_and_loses_nothing() {
    let server = start(limited(RatePolicy::Hold, 50, 0));
    let addr = server.local_addr();
    let mut fast = connect(addr, "/ws");
    let mut other = connect(addr, "/ws");
    let t0 = Instant::now();
    burst(&mut fast, 200, 0);
    // The worker holds the fast client; an unrelated one on the same worker is answered at
    // once meanwhile.
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    send(&mut other, json!({"op":"echo","id":"o","data":1}));
    assert_eq!(recv(&mut other)["id"], "o");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "the other client waited {:?}",
        asked.elapsed()
    );
    for i in 0..200 {
        let r = recv(&mut fast);
        assert_eq!(
            (r["op"].as_str(), r["id"].as_u64()),
            (Some("echo"), Some(i))
        );
    }
    // 50 in the burst, then 50 a second: about 3 s for the other 150 (the sweep lets a held
    // connection go once a second, so it cannot be much faster).
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "200 echoes in {took:?}"
    );
    assert!(took < Duration::from_secs(8), "200 echoes in {took:?}");
    let s = server.stats();
    assert!(s.rate_limit_holds >= 2, "held {} times", s.rate_limit_holds);
    assert_eq!((s.rate_limit_refusals, s.rate_limit_closes), (0, 0));
    server.shutdown().unwrap();
}

#[test]
fn refuse_drops_what_is_over_the_rate_with_an_error_and_keeps_the_connection() {
    let server = start(limited(RatePolicy::Refuse, 20, 0));
    let addr = server.local_addr();
    let mut ws = connect(addr, "/ws");
    burst(&mut ws, 100, 0);
    let (mut echoed, mut refused) = (0, 0);
    for _ in 0..100 {
        let r = recv(&mut ws);
        match r["op"].as_str() {
            Some("echo") => echoed += 1,
            Some("error") => {
                assert_eq!(r["code"], "rate_limited", "{r}");
                refused += 1;
            }
            _ => panic!("{r}"),
        }
    }
    // The burst (20), and what refilled while the 100 arrived (a few at most).
    assert!((20..=30).contains(&echoed), "{echoed} echoed");
    assert_eq!(echoed + refused, 100);
    // Still open, and served again once the bucket has refilled.
    std::thread::sleep(Duration::from_millis(1100));
    send(&mut ws, json!({"op":"echo","id":"later","data":1}));
    assert_eq!(recv(&mut ws)["id"], "later");
    assert_eq!(server.stats().rate_limit_refusals, refused);
    server.shutdown().unwrap();
}

#[test]
fn close_ends_a_client_over_its_rate_with_1008() {
    let server = start(limited(RatePolicy::Close, 20, 0));
    let mut ws = connect(server.local_addr(), "/ws");
    burst(&mut ws, 100, 0);
    assert_eq!(expect_close(&mut ws), 1008);
    assert_eq!(server.stats().rate_limit_closes, 1);
    server.shutdown().unwrap();
}

#[test]
fn the_byte_rate_holds_a_client_sending_large_messages() {
    // 20 KiB a second, 1 KiB messages: 20 at once, then 20 a second.
    let server = start(limited(RatePolicy::Hold, 0, 20 * 1024));
    let mut ws = connect(server.local_addr(), "/ws");
    let t0 = Instant::now();
    burst(&mut ws, 60, 1024);
    for i in 0..60 {
        assert_eq!(recv(&mut ws)["id"].as_u64(), Some(i));
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1500), "60 KiB in {took:?}");
    assert!(took < Duration::from_secs(6), "60 KiB in {took:?}");
    assert!(server.stats().rate_limit_holds >= 1);
    server.shutdown().unwrap();
}

#[test]
fn raw_echo_is_limited_too() {
    let server = start(limited(RatePolicy::Close, 10, 0));
    let mut ws = connect(server.local_addr(), "/echo");
    for _ in 0..50 {
        ws.write(tungstenite::Message::binary(vec![1u8; 8]))
            .unwrap();
    }
    ws.flush().unwrap();
    assert_eq!(expect_close(&mut ws), 1008);
    server.shutdown().unwrap();
}

#[test]
fn without_limits_a_connection_has_no_session() {
    // The default: no rate limit, no auth. A burst goes straight through, with no holds.
    let server = start(config(1));
    let mut ws = connect(server.local_addr(), "/ws");
    burst(&mut ws, 500, 0);
    for i in 0..500 {
        assert_eq!(recv(&mut ws)["id"].as_u64(), Some(i));
    }
    let s = server.stats();
    assert_eq!(
        (s.rate_limit_holds, s.authenticated, s.auth_pending),
        (0, 0, 0)
    );
    server.shutdown().unwrap();
}
