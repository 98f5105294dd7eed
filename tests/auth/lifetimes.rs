//! How long a standing lasts: a token until its `exp` plus the leeway (4002) unless it is
//! refreshed, a subscription token's topic until its own expiry (`unsubscribed`), and a
//! connection without a token until the connect timeout (4001).

use std::time::{Duration, Instant};

use corecast::auth::Settings;
use serde_json::json;

use crate::common;
use crate::metrics::*;
use crate::support::*;

/// A subscription token opens one topic outside the grant, for its own user, until it
/// expires: another topic's or another user's is forbidden, an expired one unauthorized, and
/// it is no connection token. At its expiry the subscription ends with `unsubscribed`, and
/// the topic's messages stop; the connection stays.
#[test]
fn subscription_tokens_open_one_topic_for_one_user_until_they_expire() {
    let server = server(settings());
    let addr = server.local_addr();
    let now = now();
    let sub_token = |sub: &str, topic: &str| token(Alg::Es256, sub).claim("topic", json!(topic));
    let vip = sub_token("alice", "vip.room").claim("exp", json!(now + 2));
    let exp = vip.exp();
    let py = Lib::PyJwt.mint(&[
        vip,
        token(Alg::Rs256, "alice"),
        token(Alg::Hs256, "pub").claim("corecast", json!({"publish": ["vip.*"]})),
    ]);
    let jose = Lib::Jose.mint(&[
        sub_token("alice", "vip.other"),
        sub_token("bob", "vip.room"),
        sub_token("alice", "vip.room").claim("exp", json!(now - 60)),
        sub_token("alice", "vip.room"),
    ]);
    let (vip, alice, publisher) = (&py[0], &py[1], &py[2]);
    let mut ws = open(addr, "/ws", Some(alice));
    let mut publisher = open(addr, "/ws", Some(publisher));
    let subscribe = |ws: &mut common::Client, token: Option<&str>, id: u64| {
        let mut req = json!({"op":"subscribe","topic":"vip.room","id":id});
        if let Some(t) = token {
            req["token"] = json!(t);
        }
        request(ws, req)
    };
    assert_error(&subscribe(&mut ws, None, 1), json!(1), "forbidden");
    assert_error(
        &subscribe(&mut ws, Some(&jose[0]), 2),
        json!(2),
        "forbidden",
    );
    assert_error(
        &subscribe(&mut ws, Some(&jose[1]), 3),
        json!(3),
        "forbidden",
    );
    assert_error(
        &subscribe(&mut ws, Some(&jose[2]), 4),
        json!(4),
        "unauthorized",
    );
    let reply = subscribe(&mut ws, Some(vip), 5);
    let expires_in = reply["expires_in"].as_u64().unwrap_or(u64::MAX);
    assert!(
        expires_in.abs_diff(exp.saturating_sub(crate::support::now())) <= 1,
        "{reply}"
    );
    assert_eq!(reply, json!({"op":"ok","id":5,"expires_in":expires_in}));
    common::send(
        &mut publisher,
        json!({"op":"publish","topic":"vip.room","data":1}),
    );
    let got = common::recv(&mut ws);
    assert_eq!(got, json!({"op":"message","topic":"vip.room","data":1}));

    // Not a connection token, however it arrives.
    let why = refused_401(addr, "/ws", Some(&jose[3]), "invalid_token");
    assert_eq!(why, "a subscription token is not a connection token");
    let mut other = open(addr, "/ws", None);
    common::send(&mut other, json!({"op":"connect","token":jose[3]}));
    let want = (
        4001,
        "a subscription token is not a connection token".to_owned(),
    );
    assert_eq!(closed(&mut other), want);

    let got = common::recv(&mut ws);
    let at = now_f64();
    let want =
        json!({"op":"unsubscribed","topic":"vip.room","reason":"subscription token expired"});
    assert_eq!(got, want);
    let lapse = (exp + LEEWAY_S) as f64;
    assert!(
        (lapse - 1.0..=lapse + 2.0).contains(&at),
        "ended at {at}, the token lapsed at {lapse}"
    );
    common::send(
        &mut publisher,
        json!({"op":"publish","topic":"vip.room","data":2}),
    );
    assert_quiet(&mut publisher);
    assert_quiet(&mut ws);
    let m = metrics(&server);
    assert_eq!(
        m.get("corecast_auth_subscription_expiries_total", "", ""),
        1
    );
    assert_refusals(
        &m,
        &[
            ("subscribe", 1),
            ("subscription_token", 2),
            ("bad_token", 1),
        ],
    );
    assert_eq!(m.closes("upgrade_refused"), 1);
    assert_eq!(m.closes("connect_refused"), 1);
    server.shutdown().expect("server shuts down cleanly");
}

/// A 3-second token: the connection is closed with 4002 once `exp` plus the leeway has
/// passed (the sweep runs once a second), never before `exp`. One that refreshes before its
/// `exp` stays open past it.
#[test]
fn a_token_expires_with_4002_unless_it_is_refreshed() {
    let server = server(settings());
    let addr = server.local_addr();
    let short = token(Alg::Hs256, "alice").claim("exp", json!(now() + 3));
    let exp = short.exp();
    let alice = Lib::PyJwt.mint_one(short);
    let bob_short = token(Alg::Es256, "bob").claim("exp", json!(exp));
    let t = Lib::Jose.mint(&[bob_short, token(Alg::EdDsa, "bob")]);
    let mut expiring = open(addr, "/ws", Some(&alice));
    let (mut refreshing, reply) = connect_message(addr, &t[0]);
    assert!(reply["expires_in"].as_u64().unwrap() <= 3, "{reply}");
    let reply = request(&mut refreshing, json!({"op":"refresh","token":t[1],"id":2}));
    assert_eq!(reply["op"], "ok", "{reply}");
    assert!(reply["expires_in"].as_u64().unwrap() > 590, "{reply}");

    let (code, reason, at) = closed_at(&mut expiring);
    assert_eq!((code, reason.as_str()), (4002, "token expired"));
    let lapse = (exp + LEEWAY_S) as f64;
    assert!(
        (exp as f64..=lapse + 2.0).contains(&at),
        "closed at {at}: exp {exp}, lapse {lapse}"
    );
    let past = lapse + 1.5 - now_f64();
    if past > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(past));
    }
    let got = request(&mut refreshing, json!({"op":"echo","data":"still here"}));
    assert_eq!(got, json!({"op":"echo","data":"still here"}));
    let m = metrics(&server);
    assert_eq!(m.closes("expired"), 1);
    assert_eq!(m.get("corecast_auth_refreshes_total", "", ""), 1);
    let users = || metrics(&server).get("corecast_auth_connections", "standing", "user");
    wait_for("one user connection left", || users() == 1);
    server.shutdown().expect("server shuts down cleanly");
}

/// Without a token at the upgrade, only `connect` is served (anything else: `unauthorized`,
/// the connection stays), and no connect within --auth-connect-timeout is closed with 4001.
#[test]
fn no_connect_within_the_connect_timeout_is_closed_with_4001() {
    let server = server(Settings {
        connect_timeout: Duration::from_secs(1),
        ..settings()
    });
    let addr = server.local_addr();
    let good = Lib::Jose.mint(&[token(Alg::Rs256, "alice"), token(Alg::EdDsa, "carol")]);
    let started = Instant::now();
    let mut idle = open(addr, "/ws", None);
    let (mut connected, reply) = connect_message(addr, &good[0]);
    assert_eq!(reply["user"], "alice", "{reply}");
    for (id, req) in [
        (1, json!({"op":"echo","data":1,"id":1})),
        (2, json!({"op":"subscribe","topic":"chat.x","id":2})),
        (3, json!({"op":"publish","topic":"chat.x","data":1,"id":3})),
    ] {
        assert_error(&request(&mut idle, req), json!(id), "unauthorized");
    }
    let want = (4001, "no connect within the connect timeout".to_owned());
    assert_eq!(closed(&mut idle), want);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "closed after {waited:?}, the timeout is 1 s"
    );
    let got = request(&mut connected, json!({"op":"echo","data":"here"}));
    assert_eq!(got, json!({"op":"echo","data":"here"}));
    let m = metrics(&server);
    assert_eq!(m.closes("connect_timeout"), 1);
    assert_refusals(&m, &[("not_connected", 3)]);
    assert_healthy(&server, &good[1]);
    server.shutdown().expect("server shuts down cleanly");
}
