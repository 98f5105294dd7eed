//! The token attacks: tokens that must not pass, minted by PyJWT and jose (or by hand in the
//! minting scripts where a library will not), each refused in the Authorization header and
//! in a connect message with its class, counted, and the server healthy afterwards.

use serde_json::{json, Value};

use crate::common;
use crate::metrics::*;
use crate::support::*;

/// A refusal class: the close reason and 401 description, and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
}

impl Class {
    const ALL: [Class; 7] = [
        Class::Malformed,
        Class::BadSignature,
        Class::Expired,
        Class::NotYetValid,
        Class::UnknownKey,
        Class::WrongAudience,
        Class::WrongIssuer,
    ];

    /// What the client is told (docs/auth.md, "Claims checked").
    pub fn reason(self) -> &'static str {
        match self {
            Class::Malformed => "malformed token",
            Class::BadSignature => "bad signature",
            Class::Expired => "token expired",
            Class::NotYetValid => "token not yet valid",
            Class::UnknownKey => "unknown key",
            Class::WrongAudience => "wrong audience",
            Class::WrongIssuer => "wrong issuer",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Class::Malformed => "malformed",
            Class::BadSignature => "bad_signature",
            Class::Expired => "expired",
            Class::NotYetValid => "not_yet_valid",
            Class::UnknownKey => "unknown_key",
            Class::WrongAudience => "wrong_audience",
            Class::WrongIssuer => "wrong_issuer",
        }
    }
}

/// A token that must be refused, and why.
pub struct Attack {
    pub what: String,
    pub spec: Spec,
    pub class: Class,
}

/// The token attacks, each a fresh spec (so that two calls make different tokens): for every
/// algorithm an expired one, one not valid yet, a wrong `aud`, a missing `aud`, a wrong
/// `iss`, a tampered payload and another key's signature; and `alg: none`, HS256 keyed with
/// the RSA public key's PEM text, and an unknown `kid`.
pub fn attacks() -> Vec<Attack> {
    let now = now();
    let wider = json!({"sub": "admin", "corecast": {"subscribe": [">"], "publish": [">"], "broadcast": true}});
    let mut v = vec![
        Attack {
            what: "alg none".into(),
            spec: token(Alg::Hs256, "mallory").unsigned(),
            class: Class::Malformed,
        },
        Attack {
            what: "HS256 keyed with the RSA public key".into(),
            spec: token(Alg::Hs256, "mallory")
                .signed_with(&keys().rsa_pub)
                .attack("hmac-with-public-key"),
            class: Class::BadSignature,
        },
        Attack {
            what: "ES256 with an unknown kid".into(),
            spec: token(Alg::Es256, "mallory").header("kid", json!("no-such-kid")),
            class: Class::UnknownKey,
        },
    ];
    for alg in Alg::ALL {
        let a = |what: &str, spec: Spec, class| Attack {
            what: format!("{} {what}", alg.name()),
            spec,
            class,
        };
        let t = || token(alg, "mallory");
        v.extend([
            a("expired", t().claim("exp", json!(now - 60)), Class::Expired),
            a(
                "nbf ahead",
                t().claim("nbf", json!(now + 60)),
                Class::NotYetValid,
            ),
            a(
                "wrong aud",
                t().claim("aud", json!("elsewhere")),
                Class::WrongAudience,
            ),
            a(
                "no aud",
                t().claim("aud", Value::Null),
                Class::WrongAudience,
            ),
            a(
                "wrong iss",
                t().claim("iss", json!("https://evil.test")),
                Class::WrongIssuer,
            ),
            a("tampered", t().tampered(wider.clone()), Class::BadSignature),
            a(
                "another key",
                t().signed_with(alg.stranger()),
                Class::BadSignature,
            ),
        ]);
    }
    v
}

/// Every token attack, in the Authorization header (401 naming the class) and in a connect
/// message (close 4001 naming it), each a token of its own: every refusal is counted under
/// its class, nothing is answered from the cache, and the server stays healthy. A token over
/// the request head limit gets 431 in the header and in the query, and a bad request in a
/// connect message, after which the same connection may still connect.
fn attacks_are_refused_and_counted(lib: Lib) {
    let server = server(settings());
    let addr = server.local_addr();
    let (header, connect) = (attacks(), attacks());
    let big = token(Alg::Hs256, "mallory").claim("pad", json!("x".repeat(9000)));
    let mut specs: Vec<Spec> = header
        .iter()
        .chain(&connect)
        .map(|a| a.spec.clone())
        .collect();
    specs.extend([big, token(Alg::Hs256, "alice"), token(Alg::EdDsa, "alice")]);
    let tokens = lib.mint(&specs);
    let (header_tokens, rest) = tokens.split_at(header.len());
    let (connect_tokens, rest) = rest.split_at(connect.len());
    let [big, after_big, good] = rest else {
        unreachable!()
    };

    for (a, t) in header.iter().zip(header_tokens) {
        let why = refused_401(addr, "/ws", Some(t), "invalid_token");
        assert_eq!(
            why,
            a.class.reason(),
            "{} {} in the header",
            lib.name(),
            a.what
        );
    }
    for (a, t) in connect.iter().zip(connect_tokens) {
        let mut ws = open(addr, "/ws", None);
        common::send(&mut ws, json!({"op":"connect","token":t,"id":1}));
        let got = closed(&mut ws);
        let what = format!("{} {} in a connect message", lib.name(), a.what);
        assert_eq!(got, (4001, a.class.reason().to_owned()), "{what}");
    }
    let n = header.len() as u64;
    let m = metrics(&server);
    for class in Class::ALL {
        let want = 2 * header.iter().filter(|a| a.class == class).count() as u64;
        assert_eq!(m.verifications(class.label()), want, "{class:?}");
    }
    assert_eq!(m.verifications("ok"), 0);
    assert_eq!(m.get("corecast_auth_cache_hits_total", "", ""), 0);
    assert_eq!(m.closes("upgrade_refused"), n);
    assert_eq!(m.closes("connect_refused"), n);
    let failures = |r| m.get("corecast_handshake_failures_total", "reason", r);
    assert_eq!(failures("unauthorized"), n);
    assert_eq!(m.get("corecast_auth_connections", "standing", "user"), 0);

    // Over the request head limit (8 KiB): refused before any token is looked at.
    assert!(big.len() > 8 * 1024, "{}", big.len());
    let header_line = format!("Authorization: Bearer {big}\r\n");
    assert_eq!(raw_upgrade(addr, "/ws", &header_line).status, 431);
    assert_eq!(
        raw_upgrade(addr, &format!("/ws?token={big}"), "").status,
        431
    );
    let mut ws = open(addr, "/ws", None);
    let reply = request(&mut ws, json!({"op":"connect","token":big,"id":"big"}));
    assert_error(&reply, json!("big"), "bad_request");
    let reply = request(&mut ws, json!({"op":"connect","token":after_big,"id":2}));
    assert_eq!(
        reply["user"], "alice",
        "still pending, then connected: {reply}"
    );

    assert_healthy(&server, good);
    let m = metrics(&server);
    assert_eq!(
        m.get(
            "corecast_handshake_failures_total",
            "reason",
            "header_too_large"
        ),
        2
    );
    assert_eq!(m.get("corecast_bad_requests_total", "", ""), 1);
    assert_eq!(
        m.verifications("ok"),
        2,
        "after the big one, and the health check"
    );
    server.shutdown().expect("server shuts down cleanly");
}

#[test]
fn attacks_minted_by_pyjwt_are_refused_and_counted() {
    attacks_are_refused_and_counted(Lib::PyJwt);
}

#[test]
fn attacks_minted_by_jose_are_refused_and_counted() {
    attacks_are_refused_and_counted(Lib::Jose);
}

/// Both libraries make the same bytes for the deterministic algorithms (HS256, EdDSA) from
/// the same spec, and mint.py's hand-built HMAC keyed with a PEM public key is exactly
/// jose's own: the attack the test builds by hand is the one a real library produces.
#[test]
fn pyjwt_and_jose_agree_on_deterministic_tokens() {
    let specs = [
        token(Alg::Hs256, "alice"),
        token(Alg::EdDsa, "alice"),
        token(Alg::Hs256, "mallory")
            .signed_with(&keys().rsa_pub)
            .attack("hmac-with-public-key"),
    ];
    assert_eq!(Lib::PyJwt.mint(&specs), Lib::Jose.mint(&specs));
}
