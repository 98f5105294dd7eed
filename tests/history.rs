//! Topic history (`--history`): offsets on every publication, the subscribe reply's epoch and
//! top, recovery on resubscribe (exact while publishing goes on), history reads, and the
//! answers when recovery cannot be done. Real sockets against an in-process server with two
//! workers, so that every topic is owned by one worker and reached from the other.

mod common;

use std::time::{Duration, Instant};

use common::*;
use corecast::history::stream::Limits;
use corecast::history::{owner_of, Rules};
use serde_json::{json, Value};

fn history_config(workers: usize, rules: &[&str]) -> corecast::Config {
    let mut cfg = config(workers);
    let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    cfg.history = Limits {
        rules: std::sync::Arc::new(Rules::parse(&rules).unwrap()),
        ..Limits::default()
    };
    cfg
}

/// A topic of `prefix` that worker `owner` of 2 owns.
fn topic_owned_by(prefix: &str, owner: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}.{i}"))
        .find(|t| owner_of(t, 2) == owner)
        .unwrap()
}

/// Reads until a reply with `"op":"ok"` and returns it with the messages that came first.
fn until_ok(c: &mut Client) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let v = recv(c);
        if v["op"] == "ok" {
            return (v, before);
        }
        before.push(v);
    }
}

fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

#[test]
fn publications_carry_offsets_and_a_resubscribe_recovers_exactly_what_it_missed() {
    let server = start(history_config(2, &["chat.>:100:60"]));
    let addr = server.local_addr();
    for owner in [0, 1] {
        let topic = topic_owned_by("chat", owner);
        // Connections alternate between the workers: one on each.
        let mut a = connect(addr, "/ws");
        let mut publisher = connect(addr, "/ws");
        send(&mut a, json!({"op":"subscribe","topic":topic,"id":1}));
        let (ok, _) = until_ok(&mut a);
        assert_eq!(ok["id"], 1);
        assert_eq!(ok["offset"], 0, "{ok}");
        let epoch = ok["epoch"].as_str().unwrap().to_owned();
        assert_eq!(epoch.len(), 16);
        assert!(ok.get("recovered").is_none(), "no recover asked: {ok}");
        for i in 1..=5 {
            send(
                &mut publisher,
                json!({"op":"publish","topic":topic,"data":{"n":i}}),
            );
        }
        for i in 1..=5u64 {
            let m = recv(&mut a);
            assert_eq!(
                m,
                json!({"op":"message","topic":topic,"offset":i,"data":{"n":i}})
            );
        }
        // A second subscriber that last saw offset 2 gets 3, 4, 5, then the reply.
        let mut b = connect(addr, "/ws");
        send(
            &mut b,
            json!({"op":"subscribe","topic":topic,"id":"b","recover":{"epoch":epoch,"offset":2}}),
        );
        let (ok, replayed) = until_ok(&mut b);
        assert_eq!(offsets(&replayed), vec![3, 4, 5], "owner {owner}");
        assert_eq!(replayed[0]["data"], json!({"n":3}));
        assert_eq!(
            ok,
            json!({"op":"ok","id":"b","epoch":epoch,"offset":5,"recovered":true})
        );
        // And then the live stream, from 6.
        send(
            &mut publisher,
            json!({"op":"publish","topic":topic,"data":6}),
        );
        assert_eq!(recv(&mut b)["offset"], 6);
        assert_eq!(recv(&mut a)["offset"], 6);
        // A history read: the newest two, and a page after offset 1.
        send(
            &mut b,
            json!({"op":"history","topic":topic,"limit":2,"id":7}),
        );
        assert_eq!(
            recv(&mut b),
            json!({"op":"history","id":7,"epoch":epoch,"offset":6,
                   "publications":[{"offset":5,"data":{"n":5}},{"offset":6,"data":6}]})
        );
        send(
            &mut b,
            json!({"op":"history","topic":topic,"since":1,"limit":2}),
        );
        let page = recv(&mut b);
        assert_eq!(page["publications"][0]["offset"], 2);
        assert_eq!(page["publications"][1]["offset"], 3);
    }
    let stats = server.stats();
    assert_eq!(stats.history_recovered, 2, "{stats:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_recovery_that_cannot_be_done_says_so_and_replays_nothing() {
    let server = start(history_config(2, &["feed.*:3:60"]));
    let addr = server.local_addr();
    let topic = topic_owned_by("feed", 1);
    let mut publisher = connect(addr, "/ws");
    for i in 1..=10 {
        send(
            &mut publisher,
            json!({"op":"publish","topic":topic,"data":i,"id":i}),
        );
        assert_eq!(recv(&mut publisher)["op"], "ok");
    }
    let mut c = connect(addr, "/ws");
    send(&mut c, json!({"op":"subscribe","topic":topic,"id":1}));
    let epoch = until_ok(&mut c).0["epoch"].as_str().unwrap().to_owned();
    let mut cases: Vec<(Value, &str)> = vec![
        (json!({"epoch":"another","offset":9}), "another epoch"),
        (
            json!({"epoch":epoch,"offset":2}),
            "trimmed (only 8..10 kept)",
        ),
        (json!({"epoch":epoch,"offset":11}), "ahead of the top"),
    ];
    cases.push((json!({"epoch":epoch,"offset":7}), "exactly the oldest kept"));
    for (i, (recover, why)) in cases.into_iter().enumerate() {
        let mut r = connect(addr, "/ws");
        send(
            &mut r,
            json!({"op":"subscribe","topic":topic,"id":i,"recover":recover}),
        );
        let (ok, replayed) = until_ok(&mut r);
        assert_eq!(ok["epoch"], epoch, "{why}");
        assert_eq!(ok["offset"], 10, "{why}");
        if why.starts_with("exactly") {
            assert_eq!(ok["recovered"], true, "{why}: {ok}");
            assert_eq!(offsets(&replayed), vec![8, 9, 10]);
        } else {
            assert_eq!(ok["recovered"], false, "{why}: {ok}");
            assert!(replayed.is_empty(), "{why}: {replayed:?}");
        }
    }
    // A topic without history: subscribed, and told nothing was recovered.
    let mut plain = connect(addr, "/ws");
    send(
        &mut plain,
        json!({"op":"subscribe","topic":"plain","id":1,"recover":{"epoch":"x","offset":1}}),
    );
    assert_eq!(
        recv(&mut plain),
        json!({"op":"ok","id":1,"recovered":false})
    );
    send(&mut plain, json!({"op":"history","topic":"plain","id":2}));
    let err = recv(&mut plain);
    assert_eq!(err["code"], "bad_request", "{err}");
    // Bad recover members are bad requests.
    for bad in [
        json!({"op":"subscribe","topic":topic,"id":3,"recover":{"epoch":1,"offset":1}}),
        json!({"op":"subscribe","topic":topic,"id":3,"recover":{"epoch":"e","offset":-1}}),
        json!({"op":"subscribe","topic":topic,"id":3,"recover":5}),
        json!({"op":"history","topic":topic,"id":3,"limit":"ten"}),
    ] {
        send(&mut plain, bad.clone());
        let e = recv(&mut plain);
        assert_eq!(e["code"], "bad_request", "{bad} -> {e}");
    }
    let stats = server.stats();
    assert_eq!(stats.history_not_recovered, 3, "{stats:?}");
    server.shutdown().unwrap();
}

/// The hard part: subscribers that resubscribe with `recover` while a publisher sends as fast
/// as it can must each see every offset once, in order, from where they stood.
#[test]
fn recoveries_while_publishing_at_full_rate_have_no_gap_and_no_duplicate() {
    let mut cfg = history_config(2, &["live.>:100000:60"]);
    cfg.history.max_recover = 1_000_000;
    let server = start(cfg);
    let addr = server.local_addr();
    for owner in [0, 1] {
        let topic = topic_owned_by("live", owner);
        let total = 20_000u64;
        let ready = std::sync::Arc::new(std::sync::Barrier::new(5));
        let subscribers: Vec<_> = (0..4usize)
            .map(|s| {
                let (topic, ready) = (topic.clone(), ready.clone());
                std::thread::spawn(move || subscriber(addr, &topic, s, total + 1, &ready))
            })
            .collect();
        ready.wait();
        let mut p = connect(addr, "/ws");
        for i in 1..=total {
            send(&mut p, json!({"op":"publish","topic":topic,"data":i}));
        }
        send(
            &mut p,
            json!({"op":"publish","topic":topic,"data":0,"id":"end"}),
        );
        assert_eq!(recv(&mut p)["id"], "end");
        for (s, t) in subscribers.into_iter().enumerate() {
            let (got, rounds) = t.join().unwrap();
            let first = got[0];
            let want: Vec<u64> = (first..=total + 1).collect();
            assert!(
                got == want,
                "owner {owner}, subscriber {s}: {} offsets from {first} in {rounds} rounds, \
                 expected {}; first break at {:?}",
                got.len(),
                want.len(),
                got.windows(2).find(|w| w[1] != w[0] + 1)
            );
            assert!(rounds > 1, "subscriber {s} never resubscribed");
        }
    }
    server.shutdown().unwrap();
}

/// Subscribes to `topic` (its start: the top the reply names), then reads a stretch of live
/// messages, drops the connection and resubscribes from the last offset it saw, until it has
/// seen `end`. Returns every offset it got (the start first) and how many subscribes it took.
fn subscriber(
    addr: std::net::SocketAddr,
    topic: &str,
    s: usize,
    end: u64,
    ready: &std::sync::Barrier,
) -> (Vec<u64>, usize) {
    let mut got = Vec::new();
    let mut epoch: Option<String> = None;
    let mut last = 0;
    let mut round = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while last < end && Instant::now() < deadline {
        let mut c = connect(addr, "/ws");
        let mut sub = json!({"op":"subscribe","topic":topic,"id":round});
        if let Some(e) = &epoch {
            sub["recover"] = json!({"epoch":e,"offset":last});
        }
        send(&mut c, sub);
        let (ok, replayed) = until_ok(&mut c);
        match &epoch {
            None => {
                epoch = Some(ok["epoch"].as_str().unwrap().to_owned());
                last = ok["offset"].as_u64().unwrap();
                got.push(last);
                ready.wait();
            }
            Some(_) => {
                assert_eq!(ok["recovered"], true, "subscriber {s} round {round}: {ok}");
                eprintln!(
                    "subscriber {s} round {round}: from {last}, replay {:?}..{:?} ({}), top {}",
                    replayed.first().map(|m| m["offset"].clone()),
                    replayed.last().map(|m| m["offset"].clone()),
                    replayed.len(),
                    ok["offset"]
                );
                for m in replayed {
                    last = m["offset"].as_u64().unwrap();
                    got.push(last);
                }
            }
        }
        round += 1;
        for _ in 0..(300 + 500 * s) {
            if last == end {
                break;
            }
            last = recv(&mut c)["offset"].as_u64().unwrap();
            got.push(last);
        }
    }
    (got, round)
}

/// Streams nobody publishes to are freed once their publications have outlived their time to
/// live, and what they were charged comes back; a publish then starts a new epoch.
#[test]
fn expired_history_is_freed_and_a_new_epoch_begins() {
    let server = start(history_config(2, &["tmp.*:100:1"]));
    let addr = server.local_addr();
    let mut p = connect(addr, "/ws");
    for i in 0..50 {
        send(
            &mut p,
            json!({"op":"publish","topic":format!("tmp.{i}"),"data":"x","id":i}),
        );
        assert_eq!(recv(&mut p)["op"], "ok");
    }
    let mut c = connect(addr, "/ws");
    send(&mut c, json!({"op":"subscribe","topic":"tmp.7","id":1}));
    let (ok, _) = until_ok(&mut c);
    assert_eq!(ok["offset"], 1);
    let epoch = ok["epoch"].clone();
    let deadline = Instant::now() + WATCHDOG;
    let mut held = server.stats();
    while Instant::now() < deadline {
        held = server.stats();
        if held.history_expired >= 50 && held.history_topics == 0 && held.history_bytes == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        (held.history_topics, held.history_bytes),
        (0, 0),
        "{held:?}"
    );
    assert!(held.history_expired >= 50, "{held:?}");
    send(
        &mut p,
        json!({"op":"publish","topic":"tmp.7","data":"again"}),
    );
    let m = recv(&mut c);
    assert_eq!(m["offset"], 1, "a new stream: {m}");
    send(&mut c, json!({"op":"history","topic":"tmp.7","id":2}));
    let h = recv(&mut c);
    assert_ne!(h["epoch"], epoch, "a new epoch: {h}");
    server.shutdown().unwrap();
}

/// The one-node case: a subscriber is reset (RST, no close) while a publisher sends
/// 5,000 numbered messages a second; it comes back 2 s later with `recover` and ends with
/// every number exactly once, in order.
#[test]
fn a_subscriber_reset_mid_stream_recovers_every_number_once_in_order() {
    let server = start(history_config(2, &["numbers:100000:60"]));
    let addr = server.local_addr();
    let total = 20_000u64; // 4 s at 5,000 a second
    let mut sub = connect(addr, "/ws");
    send(&mut sub, json!({"op":"subscribe","topic":"numbers","id":1}));
    let (ok, _) = until_ok(&mut sub);
    let epoch = ok["epoch"].as_str().unwrap().to_owned();
    let publisher = std::thread::spawn(move || {
        let mut p = connect(addr, "/ws");
        let started = Instant::now();
        for n in 1..=total {
            send(&mut p, json!({"op":"publish","topic":"numbers","data":n}));
            // 5,000 a second: a batch of 50 every 10 ms.
            if n % 50 == 0 {
                let due = started + Duration::from_micros(n * 200);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        send(
            &mut p,
            json!({"op":"publish","topic":"numbers","data":0,"id":"end"}),
        );
        assert_eq!(recv(&mut p)["id"], "end");
    });
    let mut numbers = Vec::new();
    let mut last = 0;
    while numbers.len() < 3000 {
        let m = recv(&mut sub);
        numbers.push(m["data"].as_u64().unwrap());
        last = m["offset"].as_u64().unwrap();
    }
    common::process::reset(sub.into_inner());
    std::thread::sleep(Duration::from_secs(2));
    let mut back = connect(addr, "/ws");
    send(
        &mut back,
        json!({"op":"subscribe","topic":"numbers","id":2,"recover":{"epoch":epoch,"offset":last}}),
    );
    let (ok, replayed) = until_ok(&mut back);
    assert_eq!(ok["recovered"], true, "{ok}");
    assert!(
        replayed.len() > 5000,
        "2 s away at 5,000 a second: {} replayed",
        replayed.len()
    );
    numbers.extend(replayed.iter().map(|m| m["data"].as_u64().unwrap()));
    while numbers.last() != Some(&0) {
        numbers.push(recv(&mut back)["data"].as_u64().unwrap());
    }
    publisher.join().unwrap();
    numbers.pop(); // the end marker
    let want: Vec<u64> = (1..=total).collect();
    assert!(
        numbers == want,
        "{} numbers, expected {total}; first break at {:?}",
        numbers.len(),
        numbers.windows(2).find(|w| w[1] != w[0] + 1)
    );
    server.shutdown().unwrap();
}

/// With auth on, reading history and recovering need the subscribe grant; a subscription
/// token grants one history topic, and its subscribe is answered with the epoch and offset.
#[test]
fn history_needs_the_subscribe_grant_and_a_subscription_token_gives_it() {
    use common::tokens::*;
    let dir = Dir::new("history-auth");
    let (secret, secret_path) = secret_file(&dir);
    let mut cfg = history_config(2, &["room.>:100:60"]);
    cfg.auth.hmac_secret_file = Some(secret_path);
    let server = start(cfg);
    let addr = server.local_addr();
    let grant = json!({"subscribe":["room.open"],"publish":["room.>"]});
    let mut p = connect_with(addr, &hs256(&secret, "pub", Some(&grant)));
    for topic in ["room.open", "room.vip"] {
        for i in 1..=3 {
            send(
                &mut p,
                json!({"op":"publish","topic":topic,"data":i,"id":i}),
            );
            assert_eq!(recv(&mut p)["op"], "ok");
        }
    }
    let mut c = connect_with(addr, &hs256(&secret, "alice", Some(&grant)));
    send(&mut c, json!({"op":"history","topic":"room.open","id":1}));
    let h = recv(&mut c);
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(3), "{h}");
    let epoch = h["epoch"].clone();
    // Outside the grant: no history, no recovery.
    send(&mut c, json!({"op":"history","topic":"room.vip","id":2}));
    assert_eq!(recv(&mut c)["code"], "forbidden");
    send(
        &mut c,
        json!({"op":"subscribe","topic":"room.vip","id":3,"recover":{"epoch":epoch,"offset":0}}),
    );
    assert_eq!(recv(&mut c)["code"], "forbidden");
    // A subscription token for room.vip: subscribed, told the stream's position; the
    // recovery is from room.vip's own epoch, so a wrong one replays nothing.
    let sub_token = {
        let claims = json!({"sub":"alice","topic":"room.vip","exp": now() + 600});
        let key = jsonwebtoken::EncodingKey::from_secret(&secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    send(
        &mut c,
        json!({"op":"subscribe","topic":"room.vip","id":4,"token":sub_token,
               "recover":{"epoch":"nope","offset":0}}),
    );
    let (ok, replayed) = until_ok(&mut c);
    assert_eq!(ok["offset"], 3, "{ok}");
    assert_eq!(ok["recovered"], false, "{ok}");
    assert!(replayed.is_empty());
    send(&mut p, json!({"op":"publish","topic":"room.vip","data":4}));
    assert_eq!(recv(&mut c)["offset"], 4);
    server.shutdown().unwrap();
}

/// `POST /publish` to a history topic answers the offset and epoch the owner gave it, in
/// order with the WebSocket publishes to the same topic.
#[test]
fn the_admin_publish_answers_its_offset_and_epoch() {
    use std::io::Write;
    let mut cfg = history_config(2, &["news.*:100:60"]);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start(cfg);
    let (addr, admin) = (server.local_addr(), server.admin_addr().unwrap());
    for owner in [0, 1] {
        let topic = topic_owned_by("news", owner);
        let mut sub = connect(addr, "/ws");
        send(&mut sub, json!({"op":"subscribe","topic":topic,"id":1}));
        let (ok, _) = until_ok(&mut sub);
        let epoch = ok["epoch"].clone();
        let mut p = connect(addr, "/ws");
        send(
            &mut p,
            json!({"op":"publish","topic":topic,"data":"ws","id":1}),
        );
        assert_eq!(recv(&mut p)["op"], "ok");
        let body = serde_json::to_vec(&json!({"topic":topic,"data":{"from":"api"}})).unwrap();
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(WATCHDOG)).unwrap();
        let mut raw = format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        s.write_all(&raw).unwrap();
        let resp = read_response(&mut s).unwrap();
        assert_eq!(resp.status, 202, "{resp:?}");
        let answer: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(
            answer,
            json!({"queued_workers":2,"offset":2,"epoch":epoch}),
            "owner {owner}"
        );
        assert_eq!(recv(&mut sub)["offset"], 1);
        let m = recv(&mut sub);
        assert_eq!(
            m,
            json!({"op":"message","topic":topic,"offset":2,"data":{"from":"api"}})
        );
    }
    server.shutdown().unwrap();
}

/// A client that recovers far more than its outbound bound and does not read is closed as a
/// slow consumer (1008), as for any delivery: the replay is never buffered without bound.
#[test]
fn a_recovering_client_that_does_not_read_is_closed_as_a_slow_consumer() {
    let mut cfg = history_config(2, &["big:20000:60"]);
    cfg.history.topic_max_bytes = 64 << 20;
    let server = start(cfg);
    let addr = server.local_addr();
    let topic = "big";
    let mut c = connect(addr, "/ws");
    send(&mut c, json!({"op":"subscribe","topic":topic,"id":1}));
    let epoch = until_ok(&mut c).0["epoch"].clone();
    drop(c);
    let mut p = connect(addr, "/ws");
    let kb = "x".repeat(1000);
    for i in 0..10_000 {
        send(&mut p, json!({"op":"publish","topic":topic,"data":kb}));
        if i % 1000 == 999 {
            send(&mut p, json!({"op":"echo","data":i}));
            assert_eq!(recv(&mut p)["data"], i);
        }
    }
    // 10 MB to replay against the default 1 MiB bound; the client reads nothing for 2 s.
    let mut r = connect(addr, "/ws");
    send(
        &mut r,
        json!({"op":"subscribe","topic":topic,"id":2,"recover":{"epoch":epoch,"offset":0}}),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(expect_close(&mut r), 1008);
    let stats = server.stats();
    assert!(stats.slow_closes >= 1, "{stats:?}");
    assert!(stats.outbound_memory < 4 << 20, "{stats:?}");
    server.shutdown().unwrap();
}

/// A client that floods history requests gets at most 16 waiting at once; the rest are
/// refused with `limit`, every one of the others is answered, and the server goes on.
#[test]
fn history_requests_waiting_per_connection_are_bounded() {
    let server = start(history_config(2, &["q.*:10:60"]));
    let addr = server.local_addr();
    let topic = topic_owned_by("q", 1);
    // One connection on each worker: for one of them the owner is a queue hop away.
    let mut c = connect(addr, "/ws");
    let mut other = connect(addr, "/ws");
    for ws in [&mut c, &mut other] {
        for i in 0..200 {
            let text = json!({"op":"history","topic":topic,"id":i}).to_string();
            ws.write(tungstenite::Message::text(text)).unwrap();
        }
        ws.flush().unwrap();
    }
    let mut refused = 0;
    for ws in [&mut c, &mut other] {
        let (mut answered, mut limited) = (0, 0);
        while answered + limited < 200 {
            let v = recv(ws);
            match v["op"].as_str() {
                Some("history") => answered += 1,
                Some("error") => {
                    assert_eq!(v["code"], "limit", "{v}");
                    limited += 1;
                }
                other => panic!("{other:?}: {v}"),
            }
        }
        assert!(answered >= 16, "{answered} answered");
        refused += limited;
    }
    assert!(refused > 0, "200 requests in one write, none refused");
    let stats = server.stats();
    assert_eq!(stats.history_refused, refused, "{stats:?}");
    // Still serving.
    send(&mut c, json!({"op":"history","topic":topic,"id":"after"}));
    assert_eq!(recv(&mut c)["id"], "after");
    server.shutdown().unwrap();
}
