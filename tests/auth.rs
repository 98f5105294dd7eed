//! Token auth against adversaries corecast did not write: every token here is minted by
//! Python's PyJWT (with `cryptography`) or Node's `jose`, pinned in tests/clients, for HS256,
//! RS256, ES256 and EdDSA, from keys the openssl CLI makes at test time; the attack tokens
//! those libraries refuse to produce (an HMAC keyed with a PEM public key in PyJWT, a payload
//! swapped under its signature) are built by hand in the minting scripts from the same spec.
//! The clients are tungstenite and two independent ones, Python `websockets` and Node `ws`
//! (tests/clients/py_auth_client.py, node_auth_client.mjs), through every way a token can
//! arrive: the Authorization header, a connect message, and the query (with and without
//! --auth-query-token). The attacker is a client with a token that must not pass (`alg:
//! none`, HS256 keyed with the RSA public key, expired, `nbf` ahead, wrong `aud` or `iss`, a
//! tampered payload, another key's signature, an unknown `kid`, a token over the request head
//! limit) or a valid user overreaching (a token in the header and a connect message, a second
//! connect, a refresh with another user's token, subscribe and publish outside the grant, a
//! `sub` with pattern characters, another user's or topic's subscription token). Each is
//! refused with its status, close code or error code, counted in /metrics, and the server is
//! healthy afterwards. Expiry (4002), refresh, the connect timeout (4001), anonymous grants
//! and /echo complete it.
//!
//! Here: each algorithm's token every way it can arrive, anonymous connections and /echo;
//! in auth/: the token attacks (attacks.rs), a valid user overreaching (overreach.rs),
//! expiry, refresh and the connect timeout (lifetimes.rs), the independent clients
//! (clients.rs), and what they build on (support.rs, metrics.rs).
//!
//! The packages come from tools/install-test-deps.sh; without them these tests fail and say
//! how to install them.

#[path = "auth/attacks.rs"]
mod attacks;
#[path = "auth/clients.rs"]
mod clients;
mod common;
#[path = "auth/lifetimes.rs"]
mod lifetimes;
#[path = "auth/metrics.rs"]
mod metrics;
#[path = "auth/overreach.rs"]
mod overreach;
#[path = "auth/support.rs"]
mod support;

use std::time::Duration;

use corecast::auth::Settings;
use metrics::*;
use serde_json::{json, Value};
use support::*;

/// Each algorithm's token, from `lib`, in the header, in a connect message, and in the
/// query: accepted with --auth-query-token, 400 (`invalid_request`) without it, where the
/// header still works. Every acceptance is one full verification.
fn tokens_arrive_every_way(lib: Lib) {
    let with_query = server(Settings {
        query_token: true,
        ..settings()
    });
    let without = server(settings());
    let specs: Vec<Spec> = Alg::ALL
        .iter()
        .flat_map(|&alg| (0..3).map(move |_| token(alg, "alice")))
        // A kid that names no key: the kid-less RSA PEM key is tried, and passes.
        .chain([token(Alg::Rs256, "alice").header("kid", json!("any-kid"))])
        .collect();
    let tokens = lib.mint(&specs);
    let exp = specs[0].exp();
    let (addr, addr_without) = (with_query.local_addr(), without.local_addr());
    let granted = |ws: &mut common::Client, what: &str| {
        let reply = request(ws, json!({"op":"subscribe","topic":"user.alice","id":1}));
        assert_eq!(reply, json!({"op":"ok","id":1}), "{what}");
        let reply = request(ws, json!({"op":"subscribe","topic":"user.bob","id":2}));
        assert_error(&reply, json!(2), "forbidden");
    };
    for (alg, t) in Alg::ALL.iter().zip(tokens.chunks(3)) {
        let what = format!("{} {}", lib.name(), alg.name());
        let mut ws = open(addr, "/ws", Some(&t[0]));
        granted(&mut ws, &format!("{what} in the header"));
        let mut ws = open(addr_without, "/ws", Some(&t[0]));
        granted(&mut ws, &format!("{what} in the header, no query flag"));

        let (mut ws, reply) = connect_message(addr, &t[1]);
        let left = exp.saturating_sub(now());
        let expires_in = reply["expires_in"].as_u64().unwrap_or(u64::MAX);
        assert!(expires_in.abs_diff(left) <= 1, "{what}: {reply}");
        let want = json!({"op":"ok","id":1,"user":"alice","expires_in":expires_in});
        assert_eq!(reply, want, "{what} in a connect message");
        granted(&mut ws, &format!("{what} in a connect message"));

        let mut ws = open(addr, &format!("/ws?token={}", t[2]), None);
        granted(&mut ws, &format!("{what} in the query"));
        let target = format!("/ws?token={}", t[2]);
        let why = refused_401(addr_without, &target, None, "invalid_request");
        assert_eq!(
            why, "tokens in the query are not accepted (see --auth-query-token)",
            "{what}"
        );
    }
    let mut ws = open(addr, "/ws", Some(&tokens[12]));
    granted(&mut ws, "RS256 with a kid no key has");

    let m = metrics(&with_query);
    assert_eq!(m.verifications("ok"), 13);
    assert_eq!(m.get("corecast_auth_connects_total", "as", "user"), 13);
    assert_eq!(m.closes("upgrade_refused"), 0);
    assert_refusals(&m, &[("subscribe", 13)]);
    let m = metrics(&without);
    assert_eq!(
        m.verifications("ok"),
        4,
        "the query's tokens are not even checked"
    );
    assert_eq!(m.closes("upgrade_refused"), 4);
    with_query.shutdown().expect("server shuts down cleanly");
    without.shutdown().expect("server shuts down cleanly");
}

#[test]
fn pyjwt_tokens_of_every_algorithm_arrive_every_way() {
    tokens_arrive_every_way(Lib::PyJwt);
}

#[test]
fn jose_tokens_of_every_algorithm_arrive_every_way() {
    tokens_arrive_every_way(Lib::Jose);
}

/// `{"op":"connect"}` without a token: the anonymous grants when some are configured (reply
/// `user: null`), 4001 when none are; with --anonymous-without-connect, at once, but not on
/// /echo, and not when nothing is granted (the connection then waits for its connect).
#[test]
fn anonymous_connections_get_the_anonymous_grants_only() {
    let anonymous = Settings {
        anonymous_subscribe: vec!["public.>".into()],
        anonymous_publish: vec!["public.chat".into()],
        ..settings()
    };
    let open_server = server(anonymous.clone());
    let addr = open_server.local_addr();
    let good = Lib::PyJwt.mint_one(token(Alg::EdDsa, "alice"));
    let mut anon = open(addr, "/ws", None);
    let reply = request(&mut anon, json!({"op":"connect","id":1}));
    assert_eq!(reply, json!({"op":"ok","id":1,"user":null}));
    let ok = |ws: &mut common::Client, req: Value| {
        let reply = request(ws, req);
        assert_eq!(reply, json!({"op":"ok","id":reply["id"]}), "{reply}");
    };
    ok(
        &mut anon,
        json!({"op":"subscribe","topic":"public.chat","id":2}),
    );
    ok(
        &mut anon,
        json!({"op":"publish","topic":"public.chat","data":"hi","id":3}),
    );
    assert_eq!(
        common::recv(&mut anon),
        json!({"op":"message","topic":"public.chat","data":"hi"})
    );
    for (id, req) in [
        (4, json!({"op":"subscribe","topic":"private.x","id":4})),
        (
            5,
            json!({"op":"publish","topic":"public.news","data":1,"id":5}),
        ),
        (6, json!({"op":"broadcast","data":1,"id":6})),
        (7, json!({"op":"refresh","token":good,"id":7})),
        (8, json!({"op":"connect","token":good,"id":8})),
    ] {
        assert_error(&request(&mut anon, req), json!(id), "forbidden");
    }
    assert_refusals(
        &metrics(&open_server),
        &[
            ("subscribe", 1),
            ("publish", 1),
            ("broadcast", 1),
            ("refresh_anonymous", 1),
            ("second_connect", 1),
        ],
    );
    let m = metrics(&open_server);
    assert_eq!(m.get("corecast_auth_connects_total", "as", "anonymous"), 1);
    assert_healthy(&open_server, &good);

    // No anonymous grants: a tokenless connect is refused.
    let closed_server = server(settings());
    let mut anon = open(closed_server.local_addr(), "/ws", None);
    common::send(&mut anon, json!({"op":"connect"}));
    let want = "a token is required (no anonymous access is configured)";
    assert_eq!(closed(&mut anon), (4001, want.to_owned()));
    assert_eq!(metrics(&closed_server).closes("connect_refused"), 1);

    // --anonymous-without-connect: granted from the upgrade on.
    let at_once = server(Settings {
        anonymous_without_connect: true,
        ..anonymous
    });
    let mut anon = open(at_once.local_addr(), "/ws", None);
    ok(
        &mut anon,
        json!({"op":"subscribe","topic":"public.x","id":1}),
    );
    let reply = request(&mut anon, json!({"op":"subscribe","topic":"chat.x","id":2}));
    assert_error(&reply, json!(2), "forbidden");
    // The anonymous grants are topics: /echo still needs a token.
    let r = refusal(at_once.local_addr(), "/echo", None);
    assert_eq!((r.status, r.challenge.as_str()), (401, "Bearer"), "{r:?}");
    assert_eq!(metrics(&at_once).closes("upgrade_refused"), 1);

    // --anonymous-without-connect with nothing granted: a tokenless connection waits for its
    // connect as without the flag, and one without a token is refused.
    let nothing = server(Settings {
        anonymous_without_connect: true,
        connect_timeout: Duration::from_secs(1),
        ..settings()
    });
    let mut anon = open(nothing.local_addr(), "/ws", None);
    let reply = request(&mut anon, json!({"op":"echo","data":1,"id":1}));
    assert_error(&reply, json!(1), "unauthorized");
    let want = "no connect within the connect timeout";
    assert_eq!(closed(&mut anon), (4001, want.to_owned()));
    let mut anon = open(nothing.local_addr(), "/ws", None);
    common::send(&mut anon, json!({"op":"connect"}));
    let want = "a token is required (no anonymous access is configured)";
    assert_eq!(closed(&mut anon), (4001, want.to_owned()));
    let r = refusal(nothing.local_addr(), "/echo", None);
    assert_eq!(r.status, 401, "{r:?}");
    let m = metrics(&nothing);
    assert_eq!(m.closes("connect_timeout"), 1);
    assert_eq!(m.closes("connect_refused"), 1);
    assert_eq!(m.get("corecast_auth_connects_total", "as", "anonymous"), 0);
    for s in [open_server, closed_server, at_once, nothing] {
        s.shutdown().expect("server shuts down cleanly");
    }
}

/// /echo has no request a token could come in later: with auth on it needs one at the
/// upgrade (401 without, and with a bad one), in the header or, with --auth-query-token, the
/// query.
#[test]
fn raw_echo_needs_a_token_at_the_upgrade() {
    let server = server(Settings {
        query_token: true,
        ..settings()
    });
    let addr = server.local_addr();
    let t = Lib::PyJwt.mint(&[
        token(Alg::Rs256, "alice"),
        token(Alg::Es256, "alice"),
        token(Alg::Hs256, "alice").claim("exp", json!(now() - 60)),
    ]);
    let r = refusal(addr, "/echo", None);
    assert_eq!((r.status, r.challenge.as_str()), (401, "Bearer"), "{r:?}");
    let why = refused_401(addr, "/echo", Some(&t[2]), "invalid_token");
    assert_eq!(why, "token expired");
    for mut ws in [
        open(addr, "/echo", Some(&t[0])),
        open(addr, &format!("/echo?token={}", t[1]), None),
    ] {
        ws.send(tungstenite::Message::binary(vec![0u8, 1, 2, 255]))
            .unwrap();
        let got = ws.read().unwrap();
        assert_eq!(got, tungstenite::Message::binary(vec![0u8, 1, 2, 255]));
    }
    assert_eq!(metrics(&server).closes("upgrade_refused"), 2);
    server.shutdown().expect("server shuts down cleanly");
}
