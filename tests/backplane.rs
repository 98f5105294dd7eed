//! The Redis backplane (`--redis`) with a real redis-server per test: two corecast nodes act
//! as one server (every publish reaches every node's subscribers once and in order), interest
//! follows local subscribers, and Redis failing (down at start, killed mid-run, cutting off a
//! node that fell behind) never stops local delivery and is recovered from and counted.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::process::free_port;
use common::process::Proc;
use common::redis_server::Redis;
use common::*;
use corecast::Server;
use serde_json::json;

fn node(redis_url: &str) -> Server {
    let mut cfg = config(2);
    cfg.redis = Some(redis_url.into());
    start(cfg)
}

/// Polls `f` until it holds, failing the test after the watchdog.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn up(s: &Server) -> bool {
    s.backplane().expect("started with --redis").is_up()
}

fn stat(s: &Server, read: impl Fn(&corecast::backplane::Stats) -> u64) -> u64 {
    read(&s.backplane().expect("started with --redis").stats)
}

fn subscribe(c: &mut Client, topic: &str) {
    send(c, json!({"op":"subscribe","topic":topic,"id":"s"}));
    assert_eq!(recv(c), json!({"op":"ok","id":"s"}));
}

/// Subscribers of `channel` in Redis.
fn numsub(r: &Redis, channel: &str) -> i64 {
    let v: Vec<redis::Value> = r.cmd(&["PUBSUB", "NUMSUB", channel]);
    match v.get(1) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("PUBSUB NUMSUB answered {other:?}"),
    }
}

/// Nothing more arrives for `c`: an echo round trip comes back first, after a pause long
/// enough for anything in flight through Redis to land.
fn expect_nothing_more(c: &mut Client) {
    std::thread::sleep(Duration::from_millis(300));
    send(c, json!({"op":"echo","data":"marker"}));
    assert_eq!(recv(c), json!({"op":"echo","data":"marker"}));
}

fn healthz(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    r.body.trim_end().to_owned()
}

#[test]
fn a_publish_on_one_node_reaches_every_node_once_and_in_order() {
    let r = Redis::start();
    let a = node(&r.url());
    let b = node(&r.url());
    wait_for("both nodes connected", || up(&a) && up(&b));
    let mut sub_a = connect(a.local_addr(), "/ws");
    let mut sub_b = connect(b.local_addr(), "/ws");
    subscribe(&mut sub_a, "news");
    subscribe(&mut sub_b, "news");
    // Both nodes now hold the topic, so both subscribed to its channel.
    wait_for("both nodes on the topic's channel", || {
        numsub(&r, "corecast:topic:news") == 2
    });

    let mut publisher = connect(a.local_addr(), "/ws");
    const N: u64 = 300;
    for seq in 0..N {
        send(
            &mut publisher,
            json!({"op":"publish","topic":"news","data":{"seq":seq}}),
        );
    }
    for (name, sub) in [("node A", &mut sub_a), ("node B", &mut sub_b)] {
        for seq in 0..N {
            let m = recv(sub);
            assert_eq!(
                m,
                json!({"op":"message","topic":"news","data":{"seq":seq}}),
                "{name}, message {seq}"
            );
        }
        // Exactly once: A does not deliver the copy that comes back from Redis.
        expect_nothing_more(sub);
    }
    wait_for("A's own messages back from Redis", || {
        stat(&a, |s| {
            s.own_skipped.load(std::sync::atomic::Ordering::Relaxed)
        }) == N
    });
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stat(&a, |s| s.forwarded.load(Relaxed)), N);
    assert_eq!(stat(&a, |s| s.forward_failed.load(Relaxed)), 0);
    assert_eq!(stat(&b, |s| s.received.load(Relaxed)), N);
    assert_eq!(stat(&b, |s| s.bad_envelopes.load(Relaxed)), 0);

    // A broadcast from B reaches every /ws connection on both nodes once.
    send(&mut sub_b, json!({"op":"broadcast","data":"all hands"}));
    for c in [&mut sub_a, &mut sub_b, &mut publisher] {
        assert_eq!(recv(c), json!({"op":"message","data":"all hands"}));
        expect_nothing_more(c);
    }
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// One sample of `/metrics` on the admin endpoint `admin`, by its whole name.
fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    let found: Vec<f64> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .collect();
    assert_eq!(found.len(), 1, "{name} in\n{}", r.body);
    found[0]
}

/// Any Redis client that may PUBLISH on corecast's channels can send a well-formed envelope
/// whose message is not UTF-8. Framed as text, it would fail every subscriber's connection
/// (1007); the node drops it and counts it, and the subscriber stays connected and gets the
/// next valid message.
#[test]
fn an_envelope_whose_message_is_not_utf8_is_dropped_and_counted() {
    let r = Redis::start();
    let mut cfg = config(2);
    cfg.redis = Some(r.url());
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let a = start(cfg);
    let admin = a.admin_addr().unwrap();
    wait_for("connected", || up(&a));
    let mut sub = connect(a.local_addr(), "/ws");
    subscribe(&mut sub, "news");
    wait_for("A on the topic's channel", || {
        numsub(&r, "corecast:topic:news") == 1
    });

    // A raw client, not a corecast node: an envelope from a node id nobody has.
    let mut raw = r.client().unwrap();
    let mut publish = |message: &[u8]| {
        let mut envelope = b"cc1 00000000000000ff ".to_vec();
        envelope.extend_from_slice(message);
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg("corecast:topic:news")
            .arg(envelope)
            .query(&mut raw)
            .unwrap();
        assert_eq!(receivers, 1);
    };
    publish(b"{\"op\":\"message\",\"topic\":\"news\",\"data\":\"\xff\xfe\"}");
    publish(br#"{"op":"message","topic":"news","data":"valid"}"#);
    assert_eq!(
        recv(&mut sub),
        json!({"op":"message","topic":"news","data":"valid"})
    );
    expect_nothing_more(&mut sub);
    assert_eq!(metric(admin, "corecast_backplane_invalid_utf8_total"), 1.0);
    assert_eq!(metric(admin, "corecast_backplane_received_total"), 1.0);
    assert_eq!(metric(admin, "corecast_backplane_bad_envelopes_total"), 0.0);
    a.shutdown().unwrap();
}

#[test]
fn a_node_subscribes_to_a_topic_only_while_a_local_connection_holds_it() {
    let r = Redis::start();
    let a = node(&r.url());
    wait_for("connected", || up(&a));
    // The broadcast and control channels, always; no topic yet.
    wait_for("the broadcast and control channels", || {
        r.channels() == vec!["corecast:all".to_string(), "corecast:ctl".to_string()]
    });
    // Two subscribers, on the two workers (connections are dealt in turn).
    let mut one = connect(a.local_addr(), "/ws");
    let mut two = connect(a.local_addr(), "/ws");
    subscribe(&mut one, "t");
    subscribe(&mut two, "t");
    wait_for("the topic's channel", || {
        numsub(&r, "corecast:topic:t") == 1
    });
    // One leaves: the other still holds the topic, the channel stays.
    send(&mut one, json!({"op":"unsubscribe","topic":"t","id":"u"}));
    assert_eq!(recv(&mut one), json!({"op":"ok","id":"u"}));
    std::thread::sleep(corecast::backplane::UNSUBSCRIBE_DELAY + Duration::from_millis(700));
    assert_eq!(numsub(&r, "corecast:topic:t"), 1);
    // The last one goes (by hanging up): the channel goes after the delay, not before.
    drop(two);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        numsub(&r, "corecast:topic:t"),
        1,
        "unsubscribed before the delay"
    );
    wait_for("the channel dropped", || {
        numsub(&r, "corecast:topic:t") == 0
    });
    // Back within the delay: no UNSUBSCRIBE/SUBSCRIBE churn, and it keeps working.
    subscribe(&mut one, "t");
    wait_for("the topic's channel again", || {
        numsub(&r, "corecast:topic:t") == 1
    });
    send(&mut one, json!({"op":"unsubscribe","topic":"t","id":"u"}));
    assert_eq!(recv(&mut one), json!({"op":"ok","id":"u"}));
    subscribe(&mut one, "t");
    std::thread::sleep(corecast::backplane::UNSUBSCRIBE_DELAY + Duration::from_millis(700));
    assert_eq!(numsub(&r, "corecast:topic:t"), 1);
    a.shutdown().unwrap();
}

#[test]
fn with_redis_down_at_start_a_node_serves_locally_and_joins_when_redis_comes() {
    use std::sync::atomic::Ordering::Relaxed;
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = node(&url);
    let mut sub = connect(a.local_addr(), "/ws");
    subscribe(&mut sub, "news");
    let mut publisher = connect(a.local_addr(), "/ws");
    send(
        &mut publisher,
        json!({"op":"publish","topic":"news","data":1,"id":"p"}),
    );
    assert_eq!(recv(&mut publisher), json!({"op":"ok","id":"p"}));
    assert_eq!(
        recv(&mut sub),
        json!({"op":"message","topic":"news","data":1})
    );
    assert_eq!(healthz(a.local_addr()), "ok; backplane down");
    // Not forwarded, and counted as such: never silently lost.
    wait_for("the failed forward counted", || {
        stat(&a, |s| s.forward_failed.load(Relaxed)) == 1
    });
    assert!(!up(&a));

    let r = Redis::start_on(port, &[]);
    let b = node(&r.url());
    wait_for("A connected once Redis is there", || up(&a) && up(&b));
    assert_eq!(healthz(a.local_addr()), "ok");
    wait_for("A's topic subscribed", || {
        numsub(&r, "corecast:topic:news") == 1
    });
    let mut pub_b = connect(b.local_addr(), "/ws");
    send(&mut pub_b, json!({"op":"publish","topic":"news","data":2}));
    assert_eq!(
        recv(&mut sub),
        json!({"op":"message","topic":"news","data":2})
    );
    assert_eq!(
        stat(&a, |s| s.reconnects.load(Relaxed)),
        0,
        "a first connection"
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn after_redis_restarts_nodes_reconnect_resubscribe_and_count_the_gap() {
    use std::sync::atomic::Ordering::Relaxed;
    let port = free_port();
    let mut r = Redis::start_on(port, &[]);
    let a = node(&r.url());
    let b = node(&r.url());
    wait_for("both connected", || up(&a) && up(&b));
    let mut sub_b = connect(b.local_addr(), "/ws");
    subscribe(&mut sub_b, "news");
    wait_for("B on the channel", || {
        numsub(&r, "corecast:topic:news") == 1
    });
    let mut pub_a = connect(a.local_addr(), "/ws");
    send(
        &mut pub_a,
        json!({"op":"publish","topic":"news","data":"before"}),
    );
    assert_eq!(
        recv(&mut sub_b),
        json!({"op":"message","topic":"news","data":"before"})
    );

    r.kill();
    wait_for("both nodes see Redis gone", || !up(&a) && !up(&b));
    // Published while Redis is away: delivered on A (no local subscriber here), not
    // forwarded, counted.
    for i in 0..5 {
        send(&mut pub_a, json!({"op":"publish","topic":"news","data":i}));
    }
    wait_for("the gap counted", || {
        stat(&a, |s| s.forward_failed.load(Relaxed)) == 5
    });
    expect_nothing_more(&mut sub_b);

    let r = Redis::start_on(port, &[]);
    wait_for("both reconnected", || up(&a) && up(&b));
    assert!(stat(&a, |s| s.reconnects.load(Relaxed)) >= 1);
    assert!(stat(&b, |s| s.reconnects.load(Relaxed)) >= 1);
    // B subscribed its live topic again on the new connection.
    wait_for("B back on the channel", || {
        numsub(&r, "corecast:topic:news") == 1
    });
    send(
        &mut pub_a,
        json!({"op":"publish","topic":"news","data":"after"}),
    );
    assert_eq!(
        recv(&mut sub_b),
        json!({"op":"message","topic":"news","data":"after"})
    );
    expect_nothing_more(&mut sub_b);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// Redis closes a subscriber connection whose unread output passes its pub/sub buffer
/// limit. A node that stops reading (SIGSTOP here) is cut off that way; once it runs again
/// it must notice, reconnect, count it, and deliver again.
#[test]
fn a_node_cut_off_by_redis_output_buffer_limit_recovers_and_counts_it() {
    let r = Redis::start_on(
        free_port(),
        &["--client-output-buffer-limit", "pubsub 256kb 128kb 1"],
    );
    // Room for the whole flood in the subscriber's queue: this test is about the backplane,
    // not about the test's own reader being slow while it waits for metrics.
    let p = Proc::start(&[
        "--workers",
        "1",
        "--max-outbound-bytes",
        "67108864",
        "--redis",
        &r.url(),
    ]);
    p.wait_metric("corecast_backplane_up", None, WATCHDOG, |v| v == 1.0);
    let mut sub = connect(p.addr, "/ws");
    send(&mut sub, json!({"op":"subscribe","topic":"flood","id":1}));
    assert_eq!(recv(&mut sub), json!({"op":"ok","id":1}));
    wait_for("the node on the channel", || {
        numsub(&r, "corecast:topic:flood") == 1
    });

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(p.pid() as i32, libc::SIGSTOP) }, 0);
    // Another node's messages, 8 KiB each, until Redis cuts the node off: the kernel's
    // socket buffers take the first few MiB (how many depends on the machine's tcp_wmem and
    // tcp_rmem), then Redis's own output buffer passes the limit. At most 64 MiB.
    let body = format!(
        "cc1 00000000000000ff {{\"op\":\"message\",\"topic\":\"flood\",\"data\":\"{}\"}}",
        "x".repeat(8 * 1024)
    );
    let mut published = 0;
    while numsub(&r, "corecast:topic:flood") != 0 {
        assert!(
            published < 8192,
            "64 MiB published and the node still subscribed"
        );
        for _ in 0..64 {
            let _: i64 = r.cmd(&["PUBLISH", "corecast:topic:flood", &body]);
        }
        published += 64;
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(p.pid() as i32, libc::SIGCONT) }, 0);

    p.wait_metric("corecast_backplane_reconnects_total", None, WATCHDOG, |v| {
        v >= 1.0
    });
    p.wait_metric("corecast_backplane_up", None, WATCHDOG, |v| v == 1.0);
    wait_for("the node back on the channel", || {
        numsub(&r, "corecast:topic:flood") == 1
    });
    // Whatever reached the node before the cut was delivered; now a fresh one arrives.
    let fresh = "cc1 00000000000000ff {\"op\":\"message\",\"topic\":\"flood\",\"data\":\"fresh\"}";
    let _: i64 = r.cmd(&["PUBLISH", "corecast:topic:flood", fresh]);
    loop {
        let m = recv(&mut sub);
        if m["data"] == "fresh" {
            break;
        }
        assert_eq!(m["topic"], "flood");
    }
    assert!(
        p.log().iter().any(|l| l.contains("lost Redis")),
        "{:?}",
        p.log()
    );
    assert!(p.terminate().success());
}

#[test]
fn a_bad_redis_url_is_refused_at_start_with_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--redis", "http://127.0.0.1:6379"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--redis") && err.contains("redis://"), "{err}");
}

/// Redis stalls (SIGSTOP: it accepts nothing and answers nothing) while a client publishes
/// 140 MiB: the node still delivers every message locally at once (its workers never wait on
/// Redis), holds at most 64 MiB of frames for forwarding, drops and counts the rest, and
/// reconnects once Redis runs again.
#[test]
fn a_stalled_redis_never_blocks_local_delivery_and_the_forward_queue_is_bounded() {
    use std::sync::atomic::Ordering::Relaxed;
    let r = Redis::start();
    let mut cfg = config(1);
    cfg.redis = Some(r.url());
    // Room for the whole burst in the local subscriber's queue.
    cfg.max_outbound_bytes = 256 << 20;
    let a = start(cfg);
    wait_for("connected", || up(&a));
    let mut sub = connect(a.local_addr(), "/ws");
    subscribe(&mut sub, "big");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(r.pid() as i32, libc::SIGSTOP) }, 0);

    const N: usize = 2400;
    let data = "y".repeat(60 * 1024);
    let reader = std::thread::spawn(move || {
        for i in 0..N {
            let m = recv(&mut sub);
            assert_eq!(m["data"]["i"], i, "message {i}");
        }
        sub
    });
    let mut publisher = connect(a.local_addr(), "/ws");
    let link = a.backplane().unwrap();
    let mut peak = 0;
    for i in 0..N {
        send(
            &mut publisher,
            json!({"op":"publish","topic":"big","data":{"i":i,"pad":data}}),
        );
        peak = peak.max(link.queued_bytes());
    }
    let mut sub = reader
        .join()
        .expect("every message delivered locally, in order");
    // 140 MiB against a 64 MiB bound (the batch being sent included): what did not fit was
    // refused at once and counted, not held, and before any Redis timeout (3 s) could fail
    // a batch.
    let failed_at_once = stat(&a, |s| s.forward_failed.load(Relaxed));
    let fit = corecast::backplane::QUEUE_BYTES / (60 * 1024);
    assert!(
        failed_at_once as usize >= N - fit - 1,
        "{failed_at_once} of {N} refused at once; at most {fit} fit"
    );
    assert!(
        peak <= corecast::backplane::QUEUE_BYTES,
        "{peak} bytes queued for Redis"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(r.pid() as i32, libc::SIGCONT) }, 0);
    wait_for("every publish accounted for", || {
        stat(&a, |s| {
            s.forward_failed.load(Relaxed) + s.forwarded.load(Relaxed)
        }) == N as u64
    });
    wait_for("up again", || up(&a));
    assert_eq!(link.queued_bytes(), 0);
    expect_nothing_more(&mut sub);
    // And it stays up: no reconnecting over and over once Redis answers again.
    let reconnects = stat(&a, |s| s.reconnects.load(Relaxed));
    std::thread::sleep(Duration::from_secs(1));
    assert!(up(&a));
    assert_eq!(stat(&a, |s| s.reconnects.load(Relaxed)), reconnects);
    a.shutdown().unwrap();
}

/// A client churns topics faster than a stalled Redis lets the backplane follow. The
/// workers' reports of interest wait in a bounded queue; what does not fit is counted, and
/// each worker then resends its whole topic set, so once Redis runs again the node is
/// subscribed to exactly the topics its clients hold and delivers on them. The test fails
/// with an unbounded queue (nothing overflows) and with overflowing reports dropped but no
/// resync (kept topics that did not fit are never subscribed).
#[test]
fn churning_topics_against_a_stalled_redis_overflows_the_interest_queue_and_resyncs() {
    use corecast::backplane::INTEREST_QUEUE;
    use std::sync::atomic::Ordering::Relaxed;
    let r = Redis::start();
    let mut cfg = config(2);
    cfg.redis = Some(r.url());
    cfg.max_subscriptions = 10_000;
    let a = start(cfg);
    wait_for("connected", || up(&a));
    let link = a.backplane().unwrap();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(r.pid() as i32, libc::SIGSTOP) }, 0);
    // The backplane task now waits on a SUBSCRIBE that Redis will not answer.
    let mut first = connect(a.local_addr(), "/ws");
    subscribe(&mut first, "first");

    // Two churning clients, one on each worker. Each subscribes to and unsubscribes from
    // 20,000 topics (40,000 reports), keeping every 100th.
    const CHURN: usize = 20_000;
    let mut expected = vec![
        "corecast:all".to_string(),
        "corecast:ctl".to_string(),
        "corecast:topic:first".to_string(),
    ];
    let mut churners = Vec::new();
    for name in ["a", "b"] {
        let mut s = raw_upgraded(a.local_addr(), "/ws");
        let mut requests = Vec::new();
        let mut kept = Vec::new();
        for i in 0..CHURN {
            let topic = format!("{name}{i}");
            let sub = json!({"op":"subscribe","topic":topic}).to_string();
            requests.extend(masked(0x81, sub.as_bytes()));
            if i % 100 == 0 {
                expected.push(format!("corecast:topic:{topic}"));
                kept.push(topic);
            } else {
                let unsub = json!({"op":"unsubscribe","topic":topic}).to_string();
                requests.extend(masked(0x81, unsub.as_bytes()));
            }
        }
        let replies = CHURN * 2 - kept.len();
        let mut reader = s.try_clone().unwrap();
        let acks = std::thread::spawn(move || {
            for n in 0..replies {
                let (op, body) = raw_frame(&mut reader);
                assert_eq!(
                    (op, body.as_slice()),
                    (1, &br#"{"op":"ok"}"#[..]),
                    "reply {n}"
                );
            }
        });
        s.write_all(&requests).unwrap();
        churners.push((s, acks, kept));
    }
    let mut peak = 0;
    for (_, acks, _) in &churners {
        while !acks.is_finished() {
            peak = peak.max(link.interest_queued());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut kept_topics = Vec::new();
    let mut sockets = Vec::new();
    for (s, acks, kept) in churners {
        acks.join().expect("every request answered");
        kept_topics.push(kept);
        sockets.push(s);
    }
    let overflows = stat(&a, |s| s.interest_overflows.load(Relaxed));
    assert!(
        overflows > 0,
        "80,000 reports against a stalled Redis and a queue of {INTEREST_QUEUE}: none overflowed"
    );
    assert!(peak <= INTEREST_QUEUE, "{peak} reports queued");

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(r.pid() as i32, libc::SIGCONT) }, 0);
    expected.sort();
    wait_for("Redis channels = the topics clients hold", || {
        up(&a) && r.channels() == expected
    });
    assert!(stat(&a, |s| s.interest_resyncs.load(Relaxed)) > 0);
    assert_eq!(link.interest_queued(), 0);

    // And delivery from another node works on a kept topic of each churning client.
    let b = node(&r.url());
    wait_for("B connected", || up(&b));
    let mut publisher = connect(b.local_addr(), "/ws");
    for (s, kept) in sockets.iter_mut().zip(&kept_topics) {
        let topic = kept.last().unwrap();
        send(
            &mut publisher,
            json!({"op":"publish","topic":topic,"data":"through Redis"}),
        );
        let (op, body) = raw_frame(s);
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (op, m),
            (
                1,
                json!({"op":"message","topic":topic,"data":"through Redis"})
            )
        );
    }
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// Another node publishes faster than this node's worker can deliver (each message costs it
/// a compression for a permessage-deflate subscriber). Messages from Redis wait in the
/// workers' queues up to OUTSIDE_BYTES; past that they are dropped and counted, never
/// buffered without bound, and every message counted as received is delivered, in order.
#[test]
fn messages_from_other_nodes_beyond_the_workers_pace_are_bounded_dropped_and_counted() {
    use corecast::broadcast::OUTSIDE_BYTES;
    use std::sync::atomic::Ordering::Relaxed;
    // No pub/sub output limit: Redis's own (32 MiB) would cut A off whenever its control
    // thread lags on a loaded machine, and the messages lost with the connection are counted
    // nowhere. This test is about A's bound, not Redis's.
    let r = Redis::start_on(
        free_port(),
        &["--client-output-buffer-limit", "pubsub 0 0 0"],
    );
    let mut cfg = config(1);
    cfg.redis = Some(r.url());
    cfg.permessage_deflate = true;
    // zlib's slowest: the worker compresses each message once (for the deflate subscriber)
    // at a fraction of the pace the control thread takes them from Redis.
    cfg.deflate_level = 9;
    cfg.max_outbound_bytes = 256 << 20;
    let a = start(cfg);
    let b = node(&r.url());
    wait_for("both connected", || up(&a) && up(&b));
    let deflate = deflate_reader(a.local_addr(), "wide");
    let mut plain = connect(a.local_addr(), "/ws");
    subscribe(&mut plain, "wide");
    // The worker takes what is queued in one turn: in a debug build, seconds between
    // messages.
    plain
        .get_mut()
        .set_read_timeout(Some(6 * WATCHDOG))
        .unwrap();
    wait_for("A on the channel", || {
        numsub(&r, "corecast:topic:wide") == 1
    });

    // 2,400 messages of 60 KiB (140 MiB) of text that compresses slowly.
    const N: u64 = 2400;
    let pad = slow_to_compress(60 * 1024);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            let m = recv(&mut plain);
            if m["data"] == "end" {
                return (plain, seen);
            }
            seen.push(m["data"]["seq"].as_u64().unwrap());
        }
    });
    let mut publisher = connect(b.local_addr(), "/ws");
    let mut peak = 0;
    for seq in 0..N {
        send(
            &mut publisher,
            json!({"op":"publish","topic":"wide","data":{"seq":seq,"pad":pad}}),
        );
        peak = peak.max(a.outside_queued());
    }
    let forwarded = |s: &Server| {
        stat(s, |s| {
            s.forwarded.load(Relaxed) + s.forward_failed.load(Relaxed)
        })
    };
    wait_for("B done forwarding", || forwarded(&b) == N);
    let sent = stat(&b, |s| s.forwarded.load(Relaxed));
    let taken = |s: &Server| {
        stat(s, |s| {
            s.received.load(Relaxed) + s.received_dropped.load(Relaxed)
        })
    };
    let deadline = Instant::now() + WATCHDOG;
    while taken(&a) != sent {
        peak = peak.max(a.outside_queued());
        assert!(
            Instant::now() < deadline,
            "A took {} of {sent} messages from Redis ({} reconnects)",
            taken(&a),
            stat(&a, |s| s.reconnects.load(Relaxed))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let received = stat(&a, |s| s.received.load(Relaxed));
    let dropped = stat(&a, |s| s.received_dropped.load(Relaxed));
    eprintln!("{received} received, {dropped} dropped, at most {peak} bytes queued");
    assert!(
        dropped > 0,
        "{sent} messages of 60 KiB outran a compressing worker, and none was dropped"
    );
    assert!(peak <= OUTSIDE_BYTES, "{peak} bytes queued for the worker");
    // The end marker, once everything before it is through.
    // Up to 64 MiB to compress: in a debug build that takes far longer than the watchdog.
    let deadline = Instant::now() + 6 * WATCHDOG;
    while a.outside_queued() > 0 {
        assert!(Instant::now() < deadline, "the worker never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    send(
        &mut publisher,
        json!({"op":"publish","topic":"wide","data":"end"}),
    );
    let (_plain, seen) = reader.join().expect("the plain subscriber read to the end");
    assert_eq!(
        seen.len() as u64,
        received,
        "every message received was delivered"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
    a.shutdown().unwrap();
    b.shutdown().unwrap();
    deflate.join().unwrap();
}
