//! End-to-end behaviour of the server over real loopback sockets with real WebSocket clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::json;
use tungstenite::Message;

#[test]
fn json_echo_returns_data_and_id() {
    let server = start(config(2));
    let mut c = connect(server.local_addr(), "/ws");
    send(
        &mut c,
        json!({"op":"echo","id":7,"data":{"nested":[1,"two",null]}}),
    );
    assert_eq!(
        recv(&mut c),
        json!({"op":"echo","id":7,"data":{"nested":[1,"two",null]}})
    );
    send(&mut c, json!({"op":"echo","data":"no id"}));
    assert_eq!(recv(&mut c), json!({"op":"echo","data":"no id"}));
    server.shutdown().unwrap();
}

#[test]
fn raw_echo_endpoint_keeps_opcode_and_bytes() {
    let mut cfg = config(1);
    cfg.max_message_size = 1 << 20;
    cfg.max_frame_size = 1 << 20;
    let server = start(cfg);
    let mut c = connect(server.local_addr(), "/echo");
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    c.send(Message::binary(bin.clone())).unwrap();
    c.send(Message::text("héllo")).unwrap();
    let got = c.read().unwrap();
    assert!(
        got == Message::binary(bin),
        "binary echo differs ({} bytes back)",
        got.len()
    );
    assert_eq!(c.read().unwrap(), Message::text("héllo"));
    server.shutdown().unwrap();
}

#[test]
fn bad_requests_get_error_replies_and_the_connection_stays_usable() {
    let server = start(config(1));
    let mut c = connect(server.local_addr(), "/ws");
    let cases = [
        (Message::text("{not json"), json!(null), "malformed JSON"),
        (
            Message::text(r#"{"op":"fly","id":1}"#),
            json!(1),
            "unknown \"op\"",
        ),
        (
            Message::text(r#"{"op":"publish","id":"p","data":1}"#),
            json!("p"),
            "missing field \"topic\"",
        ),
        (
            Message::text(r#"{"op":"subscribe","id":2,"topic":5}"#),
            json!(2),
            "\"topic\" must be a string",
        ),
        (
            Message::text("[1,2,3]"),
            json!(null),
            "expected a JSON object",
        ),
        (
            Message::binary(&b"{\"op\":\"echo\",\"data\":1}"[..]),
            json!(null),
            "binary frames",
        ),
        (
            Message::binary(vec![0xFF, 0xFE]),
            json!(null),
            "binary frames",
        ),
    ];
    for (msg, id, text) in cases {
        c.send(msg).unwrap();
        let r = recv(&mut c);
        assert_eq!(r["op"], "error", "{r}");
        assert_eq!(r["code"], "bad_request", "{r}");
        assert_eq!(r["id"], id, "{r}");
        assert!(
            r["message"].as_str().unwrap().contains(text),
            "{r} should mention {text}"
        );
    }
    send(&mut c, json!({"op":"echo","id":9,"data":"still here"}));
    assert_eq!(
        recv(&mut c),
        json!({"op":"echo","id":9,"data":"still here"})
    );
    assert_eq!(server.stats().bad_requests, 7);
    server.shutdown().unwrap();
}

#[test]
fn publish_reaches_subscribers_on_every_worker_and_no_one_else() {
    let server = start(config(4));
    let addr = server.local_addr();
    // Round-robin hand-off puts 8 connections two per worker.
    let mut subs: Vec<_> = (0..8).map(|_| connect(addr, "/ws")).collect();
    let mut other = connect(addr, "/ws");
    for (i, s) in subs.iter_mut().enumerate() {
        send(s, json!({"op":"subscribe","topic":"news","id":i}));
        assert_eq!(recv(s), json!({"op":"ok","id":i}));
    }
    send(
        &mut other,
        json!({"op":"subscribe","topic":"sports","id":"x"}),
    );
    assert_eq!(recv(&mut other), json!({"op":"ok","id":"x"}));
    assert_eq!(server.stats().open, 9);

    let mut publisher = connect(addr, "/ws");
    send(
        &mut publisher,
        json!({"op":"publish","topic":"news","data":{"seq":1},"id":"pub"}),
    );
    assert_eq!(recv(&mut publisher), json!({"op":"ok","id":"pub"}));
    for s in subs.iter_mut() {
        assert_eq!(
            recv(s),
            json!({"op":"message","topic":"news","data":{"seq":1}})
        );
    }
    // The non-subscriber's next message is its own echo, not the news.
    send(&mut other, json!({"op":"echo","data":"mine"}));
    assert_eq!(recv(&mut other), json!({"op":"echo","data":"mine"}));
    assert_eq!(server.stats().deliveries, 8);
    assert_eq!(server.stats().publishes, 1);
    server.shutdown().unwrap();
}

/// Publishes alternating between two topics arrive whole and in order at a subscriber of
/// both and at a subscriber of one, small and large alike: each publish is its own run, so
/// a turn gives the same connection many runs (the first staged, small ones behind it
/// queued, large ones staged up to a writev's worth; see worker/deliver.rs).
#[test]
fn interleaved_topics_arrive_in_publish_order() {
    let server = start(config(1));
    let addr = server.local_addr();
    let mut both = connect(addr, "/ws");
    let mut one = connect(addr, "/ws");
    for (c, topics) in [(&mut both, &["a", "b"][..]), (&mut one, &["a"][..])] {
        for t in topics {
            send(c, json!({"op":"subscribe","topic":t}));
            assert_eq!(recv(c), json!({"op":"ok"}));
        }
    }
    for size in [8, 2000] {
        let pad = "p".repeat(size);
        let n = 600;
        // One write, so that the server reads many publishes per turn.
        let mut publisher = connect(addr, "/ws");
        for i in 0..n {
            let t = if i % 3 == 0 { "b" } else { "a" };
            publisher
                .write(Message::text(
                    json!({"op":"publish","topic":t,"data":[i, pad]}).to_string(),
                ))
                .unwrap();
        }
        publisher.flush().unwrap();
        for i in 0..n {
            let t = if i % 3 == 0 { "b" } else { "a" };
            let m = recv(&mut both);
            assert_eq!(
                (m["topic"].as_str(), &m["data"][0]),
                (Some(t), &json!(i)),
                "{size}"
            );
            assert_eq!(m["data"][1].as_str().map(str::len), Some(size));
        }
        for i in (0..n).filter(|i| i % 3 != 0) {
            let m = recv(&mut one);
            assert_eq!(
                (m["topic"].as_str(), &m["data"][0]),
                (Some("a"), &json!(i)),
                "{size}"
            );
        }
    }
    let s = server.stats();
    assert_eq!(s.deliveries, 2 * (600 + 400), "{s:?}");
    assert_eq!(s.dropped, 0, "{s:?}");
    server.shutdown().unwrap();
}

#[test]
fn unsubscribe_stops_delivery() {
    let server = start(config(2));
    let addr = server.local_addr();
    let mut a = connect(addr, "/ws");
    let mut b = connect(addr, "/ws");
    for c in [&mut a, &mut b] {
        send(c, json!({"op":"subscribe","topic":"t"}));
        assert_eq!(recv(c), json!({"op":"ok"}));
    }
    send(&mut a, json!({"op":"unsubscribe","topic":"t","id":1}));
    assert_eq!(recv(&mut a), json!({"op":"ok","id":1}));
    send(&mut b, json!({"op":"publish","topic":"t","data":42}));
    assert_eq!(recv(&mut b), json!({"op":"message","topic":"t","data":42}));
    send(&mut a, json!({"op":"echo","data":"after"}));
    assert_eq!(recv(&mut a), json!({"op":"echo","data":"after"}));
    server.shutdown().unwrap();
}

#[test]
fn subscription_cap_is_enforced_per_connection() {
    let mut cfg = config(1);
    cfg.max_subscriptions = 2;
    let server = start(cfg);
    let mut c = connect(server.local_addr(), "/ws");
    for t in ["a", "b", "a"] {
        send(&mut c, json!({"op":"subscribe","topic":t}));
        assert_eq!(recv(&mut c), json!({"op":"ok"}));
    }
    send(&mut c, json!({"op":"subscribe","topic":"c","id":3}));
    let r = recv(&mut c);
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str(), &r["id"]),
        (Some("error"), Some("limit"), &json!(3))
    );
    server.shutdown().unwrap();
}

#[test]
fn broadcast_reaches_every_connection() {
    let server = start(config(3));
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..9).map(|_| connect(addr, "/ws")).collect();
    send(
        &mut clients[4],
        json!({"op":"broadcast","data":"all hands"}),
    );
    for c in clients.iter_mut() {
        assert_eq!(recv(c), json!({"op":"message","data":"all hands"}));
    }
    server.shutdown().unwrap();
}

#[test]
fn oversized_message_closes_with_1009() {
    let mut cfg = config(1);
    cfg.max_message_size = 1024;
    cfg.max_frame_size = 1024;
    let server = start(cfg);
    let mut c = connect(server.local_addr(), "/ws");
    c.send(Message::text(format!(
        "{{\"op\":\"echo\",\"data\":\"{}\"}}",
        "x".repeat(2000)
    )))
    .unwrap();
    assert_eq!(expect_close(&mut c), 1009);
    // A fragmented message over the limit is caught as it is reassembled.
    let mut raw = raw_upgraded(server.local_addr(), "/ws");
    let part = vec![b'a'; 100];
    raw.write_all(&masked(0x01, &part)).unwrap();
    for _ in 0..10 {
        raw.write_all(&masked(0x00, &part)).unwrap();
    }
    let (op, payload) = raw_frame(&mut raw);
    assert_eq!(
        (op, u16::from_be_bytes([payload[0], payload[1]])),
        (0x8, 1009)
    );
    assert_eq!(server.stats().protocol_errors, 2);
    server.shutdown().unwrap();
}

#[test]
fn protocol_violations_close_with_1002_and_bad_utf8_with_1007() {
    let server = start(config(1));
    let addr = server.local_addr();
    let close_code_after = |bytes: Vec<u8>| {
        let mut s = raw_upgraded(addr, "/ws");
        s.write_all(&bytes).unwrap();
        let (op, p) = raw_frame(&mut s);
        assert_eq!(op, 0x8);
        u16::from_be_bytes([p[0], p[1]])
    };
    assert_eq!(
        close_code_after(masked(0x83, b"x")),
        1002,
        "reserved opcode"
    );
    assert_eq!(
        close_code_after(masked(0xC1, b"x")),
        1002,
        "RSV1 without extension"
    );
    assert_eq!(
        close_code_after(vec![0x81, 0x01, b'x']),
        1002,
        "unmasked client frame"
    );
    assert_eq!(close_code_after(masked(0x09, b"")), 1002, "fragmented ping");
    assert_eq!(
        close_code_after(masked(0x00, b"x")),
        1002,
        "continuation without a start"
    );
    assert_eq!(
        close_code_after(masked(0x81, &[0xC0, 0xAF])),
        1007,
        "invalid UTF-8"
    );
    assert_eq!(
        close_code_after(masked(0x88, &[0x03, 0xED])),
        1002,
        "close code 1005 on the wire"
    );
    let mut ok = connect(addr, "/ws");
    send(&mut ok, json!({"op":"echo","data":1}));
    assert_eq!(recv(&mut ok), json!({"op":"echo","data":1}));
    server.shutdown().unwrap();
}

#[test]
fn client_close_is_answered_with_the_same_code() {
    let server = start(config(1));
    let mut s = raw_upgraded(server.local_addr(), "/echo");
    s.write_all(&masked(0x88, &[0x0B, 0xB8, b'b', b'y', b'e']))
        .unwrap();
    let (op, p) = raw_frame(&mut s);
    assert_eq!((op, &p[..2]), (0x8, &3000u16.to_be_bytes()[..]));
    // The server then closes the TCP connection.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server.shutdown().unwrap();
}

#[test]
fn garbage_and_unknown_paths_are_refused_over_http_and_the_server_carries_on() {
    let server = start(config(2));
    let addr = server.local_addr();
    let mut g = TcpStream::connect(addr).unwrap();
    g.set_read_timeout(Some(WATCHDOG)).unwrap();
    g.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage garbage\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    g.read_to_string(&mut resp)
        .expect("server closes after answering");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");

    let mut p = TcpStream::connect(addr).unwrap();
    p.set_read_timeout(Some(WATCHDOG)).unwrap();
    p.write_all(
        b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    p.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

    let mut c = connect(addr, "/ws");
    send(&mut c, json!({"op":"echo","data":"fine"}));
    assert_eq!(recv(&mut c), json!({"op":"echo","data":"fine"}));
    assert_eq!(server.stats().handshake_failures, 2);
    server.shutdown().unwrap();
}

#[test]
fn graceful_shutdown_closes_clients_with_1001() {
    let mut cfg = config(2);
    cfg.drain_timeout = Duration::from_secs(5);
    let server = start(cfg);
    let addr = server.local_addr();
    let clients: Vec<_> = (0..4).map(|_| connect(addr, "/ws")).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| std::thread::spawn(move || expect_close(&mut c)))
        .collect();
    let started = std::time::Instant::now();
    server.shutdown().unwrap();
    for r in readers {
        assert_eq!(r.join().unwrap(), 1001);
    }
    // Clients answered the close, so the drain did not wait for its timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(TcpStream::connect(addr).is_err(), "listener is closed");
}

#[test]
fn two_thousand_connections_each_get_one_broadcast_exactly_once() {
    const N: usize = 2000;
    let server = start(config(2));
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..N).map(|_| connect(addr, "/ws")).collect();
    assert_eq!(server.stats().open, N as i64);
    send(&mut clients[0], json!({"op":"broadcast","data":{"n":1}}));
    for c in clients.iter_mut() {
        assert_eq!(recv(c), json!({"op":"message","data":{"n":1}}));
    }
    // Exactly once: the next thing each client sees is the answer to its own echo.
    for (i, c) in clients.iter_mut().enumerate() {
        send(c, json!({"op":"echo","data":i}));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(recv(c), json!({"op":"echo","data":i}));
    }
    assert_eq!(server.stats().deliveries, N as u64);
    server.shutdown().unwrap();
}
