//! A valid user overreaching: becoming another user on the same connection, and subscribing
//! or publishing outside its grant, through a `sub` with pattern characters too. Each
//! request is refused with an error reply, counted, and the connection stays as it was.

use corecast::auth::Settings;
use serde_json::json;

use crate::common;
use crate::metrics::*;
use crate::support::*;

/// A valid user overreaching: a token in the header and in a connect message, a token in
/// the header and the query, a second connect (with another user's token, and without one),
/// a refresh with another user's token or a bad one. Each is refused and counted, and the
/// connection stays open as the user it was.
#[test]
fn a_user_cannot_become_another_on_the_same_connection() {
    let server = server(Settings {
        query_token: true,
        ..settings()
    });
    let addr = server.local_addr();
    let alice = Lib::PyJwt.mint(&[
        token(Alg::Hs256, "alice"),
        token(Alg::Rs256, "alice"),
        token(Alg::Es256, "alice").claim("exp", json!(now() - 60)),
    ]);
    let jose = Lib::Jose.mint(&[
        token(Alg::EdDsa, "bob"),
        token(Alg::Es256, "alice"),
        token(Alg::Hs256, "carol"),
    ]);
    let (bob, alice_new, good) = (&jose[0], &jose[1], &jose[2]);
    let still_alice = |ws: &mut common::Client| {
        let reply = request(ws, json!({"op":"subscribe","topic":"user.alice","id":"a"}));
        assert_eq!(reply, json!({"op":"ok","id":"a"}));
        let reply = request(ws, json!({"op":"subscribe","topic":"user.bob","id":"b"}));
        assert_error(&reply, json!("b"), "forbidden");
    };

    // The header and then a connect message: the connect is a second one.
    let mut ws = open(addr, "/ws", Some(&alice[0]));
    let reply = request(&mut ws, json!({"op":"connect","token":bob,"id":1}));
    assert_error(&reply, json!(1), "forbidden");
    still_alice(&mut ws);
    // The header and the query at once: which one would a proxy have looked at?
    let target = format!("/ws?token={bob}");
    let why = refused_401(addr, &target, Some(&alice[0]), "invalid_request");
    assert_eq!(
        why,
        "a token both in the Authorization header and in the query"
    );

    // A second connect, with another user's token and with none.
    let (mut ws, reply) = connect_message(addr, &alice[1]);
    assert_eq!(reply["user"], "alice", "{reply}");
    let reply = request(&mut ws, json!({"op":"connect","token":bob,"id":2}));
    assert_error(&reply, json!(2), "forbidden");
    let reply = request(&mut ws, json!({"op":"connect","id":3}));
    assert_error(&reply, json!(3), "forbidden");
    still_alice(&mut ws);

    // A refresh with another user's token, then with an expired one of her own: refused, and
    // she is still herself; then with a good one of her own (minted by the other library).
    let reply = request(&mut ws, json!({"op":"refresh","token":bob,"id":4}));
    assert_error(&reply, json!(4), "forbidden");
    let reply = request(&mut ws, json!({"op":"refresh","token":alice[2],"id":5}));
    assert_error(&reply, json!(5), "unauthorized");
    still_alice(&mut ws);
    let reply = request(&mut ws, json!({"op":"refresh","token":alice_new,"id":6}));
    assert_eq!(reply["op"], "ok", "{reply}");
    assert!(reply["expires_in"].as_u64().unwrap() > 590, "{reply}");
    still_alice(&mut ws);

    let m = metrics(&server);
    assert_refusals(
        &m,
        &[
            ("second_connect", 3),
            ("refresh_other_user", 1),
            ("bad_token", 1),
            ("subscribe", 4),
        ],
    );
    assert_eq!(m.closes("upgrade_refused"), 1);
    assert_eq!(m.get("corecast_auth_refreshes_total", "", ""), 1);
    assert_healthy(&server, good);
    server.shutdown().expect("server shuts down cleanly");
}

/// The grant decides: a subscribe or publish outside it is forbidden and delivers nothing, a
/// broadcast needs `"broadcast": true`.
#[test]
fn subscribe_publish_and_broadcast_outside_the_grant_are_forbidden() {
    let server = server(settings());
    let addr = server.local_addr();
    let caster = token(Alg::Es256, "caster").claim("corecast", json!({"broadcast": true}));
    let t = Lib::Jose.mint(&[
        token(Alg::Rs256, "alice"),
        token(Alg::EdDsa, "bob"),
        caster,
        token(Alg::Hs256, "carol"),
    ]);
    let mut alice = open(addr, "/ws", Some(&t[0]));
    let mut bob = open(addr, "/ws", Some(&t[1]));
    let mut caster = open(addr, "/ws", Some(&t[2]));
    for topic in ["chat.room", "user.alice"] {
        let reply = request(
            &mut alice,
            json!({"op":"subscribe","topic":topic,"id":topic}),
        );
        assert_eq!(reply, json!({"op":"ok","id":topic}));
    }
    let reply = request(
        &mut bob,
        json!({"op":"subscribe","topic":"user.alice","id":1}),
    );
    assert_error(&reply, json!(1), "forbidden");
    let reply = request(
        &mut bob,
        json!({"op":"publish","topic":"chat.room","data":"hi","id":2}),
    );
    assert_eq!(reply, json!({"op":"ok","id":2}));
    let got = common::recv(&mut alice);
    assert_eq!(got, json!({"op":"message","topic":"chat.room","data":"hi"}));
    for (id, topic) in [(3, "user.alice"), (4, "chat.room.x"), (5, "news")] {
        let reply = request(
            &mut bob,
            json!({"op":"publish","topic":topic,"data":"no","id":id}),
        );
        assert_error(&reply, json!(id), "forbidden");
    }
    let reply = request(&mut alice, json!({"op":"broadcast","data":"all","id":6}));
    assert_error(&reply, json!(6), "forbidden");
    let reply = request(
        &mut caster,
        json!({"op":"publish","topic":"chat.room","data":0,"id":7}),
    );
    assert_error(&reply, json!(7), "forbidden");
    assert_quiet(&mut alice);
    common::send(&mut caster, json!({"op":"broadcast","data":"all"}));
    for ws in [&mut alice, &mut bob, &mut caster] {
        assert_eq!(common::recv(ws), json!({"op":"message","data":"all"}));
    }
    assert_refusals(
        &metrics(&server),
        &[("subscribe", 1), ("publish", 4), ("broadcast", 1)],
    );
    assert_healthy(&server, &t[3]);
    server.shutdown().expect("server shuts down cleanly");
}

/// A `sub` of `*`, `>`, `a.b` or `a.*` under a `user.{sub}` grant reaches nothing: not
/// `user.x`, `user.x.y`, `user.a.b`, nor the topic the substitution would spell. The user
/// `x`, subscribed to `user.x`, hears none of their publishes, and then its own.
#[test]
fn a_sub_with_pattern_characters_gains_nothing() {
    let server = server(settings());
    let addr = server.local_addr();
    let mine = json!({"subscribe": ["user.{sub}"], "publish": ["user.{sub}"]});
    const SUBS: [&str; 4] = ["*", ">", "a.b", "a.*"];
    let specs = |alg| -> Vec<Spec> {
        SUBS.iter()
            .map(|s| token(alg, s).claim("corecast", mine.clone()))
            .collect()
    };
    let victim = token(Alg::Hs256, "x").claim("corecast", mine.clone());
    let mut tokens = Lib::PyJwt.mint(&[specs(Alg::Hs256), specs(Alg::Es256)].concat());
    let rest = [
        specs(Alg::Rs256),
        specs(Alg::EdDsa),
        vec![victim, token(Alg::Hs256, "carol")],
    ];
    tokens.extend(Lib::Jose.mint(&rest.concat()));
    let good = tokens.pop().unwrap();
    let victim = tokens.pop().unwrap();
    let mut x = open(addr, "/ws", Some(&victim));
    assert_eq!(
        request(&mut x, json!({"op":"subscribe","topic":"user.x","id":0})),
        json!({"op":"ok","id":0})
    );
    for (t, sub) in tokens.iter().zip(SUBS.iter().cycle()) {
        let mut ws = open(addr, "/ws", Some(t));
        let spelled = format!("user.{sub}");
        for topic in ["user.x", "user.x.y", "user.a.b", &spelled] {
            let reply = request(&mut ws, json!({"op":"subscribe","topic":topic,"id":1}));
            assert_error(&reply, json!(1), "forbidden");
            let publish = json!({"op":"publish","topic":topic,"data":sub,"id":2});
            assert_error(&request(&mut ws, publish), json!(2), "forbidden");
        }
    }
    assert_quiet(&mut x);
    common::send(&mut x, json!({"op":"publish","topic":"user.x","data":"me"}));
    let got = common::recv(&mut x);
    assert_eq!(got, json!({"op":"message","topic":"user.x","data":"me"}));
    let attempts = 4 * tokens.len() as u64;
    assert_refusals(
        &metrics(&server),
        &[("subscribe", attempts), ("publish", attempts)],
    );
    assert_healthy(&server, &good);
    server.shutdown().expect("server shuts down cleanly");
}
