//! What a decoded JSON request does. The handler writes the reply (if any) and returns the
//! effect for the worker to carry out: subscribe, unsubscribe, publish or broadcast, or a
//! token to verify (connect, refresh, a subscription token). It also decides what the
//! connection may do: with auth on, its grant is checked once per subscribe and once per
//! publish. No I/O, so every request's outcome is unit-tested without sockets. Runs on worker
//! threads.

use std::borrow::Cow;
use std::sync::Arc;

use crate::auth::Grant;
use crate::history::Rules;
use crate::protocol::{self, Raw, Recover, Request};

/// What the handler needs to know about the connection that sent the request.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The topics it is subscribed to.
    pub subs: &'a [Arc<str>],
    pub max_subscriptions: usize,
    pub access: Access<'a>,
    /// Which topics keep history (`--history`); empty when none do.
    pub history: &'a Rules,
}

/// What the connection may do.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Auth is off: everything, as always.
    Open,
    /// Auth is on and the connection has not connected yet: only `connect`.
    Pending,
    /// Connected, anonymously (`sub` is empty) or as the user `sub`: what `grant` allows,
    /// and the topics in `topic_grants` (held through subscription tokens).
    Granted {
        grant: &'a Grant,
        sub: &'a str,
        anonymous: bool,
        topic_grants: &'a [(Arc<str>, u32)],
    },
}

/// What the request asks the worker to do, beyond replying.
#[derive(Debug)]
pub enum Effect<'a> {
    None,
    Subscribe(Cow<'a, str>),
    /// Subscribe to a topic the grant does not cover, if `token` is a subscription token for
    /// it: the worker verifies it and replies.
    SubscribeWithToken {
        id: Option<Raw<'a>>,
        topic: Cow<'a, str>,
        token: Cow<'a, str>,
        /// For a history topic: where the client stands (see `HistorySubscribe`).
        recover: Option<Recover<'a>>,
    },
    Unsubscribe(Cow<'a, str>),
    /// Subscribe to a topic that keeps history (under `rule`): the topic's owner says its
    /// epoch and top, and replays what followed `recover` if it can; the worker replies then.
    HistorySubscribe {
        id: Option<Raw<'a>>,
        topic: Cow<'a, str>,
        rule: u16,
        recover: Option<Recover<'a>>,
    },
    /// Read a history topic's retained publications (the owner answers).
    History {
        id: Option<Raw<'a>>,
        topic: Cow<'a, str>,
        rule: u16,
        since: Option<u64>,
        limit: usize,
    },
    /// Deliver `data` to the topic's subscribers on every worker.
    Publish {
        topic: Cow<'a, str>,
        data: Raw<'a>,
    },
    /// Deliver `data` to every JSON connection on every worker.
    Broadcast(Raw<'a>),
    /// A pending connection connects, with a token (the worker verifies it and replies) or
    /// anonymously.
    Connect {
        id: Option<Raw<'a>>,
        token: Option<Cow<'a, str>>,
    },
    /// A user's new token: the worker verifies it, checks it is the same user, and replies.
    Refresh {
        id: Option<Raw<'a>>,
        token: Cow<'a, str>,
    },
}

/// What was written as the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to send (a publish without an id; or the worker replies after verifying).
    None,
    /// A reply, in the buffer.
    Sent,
    /// An error reply, in the buffer: the request was refused (counted as a bad request).
    Refused,
    /// An error reply, in the buffer: the connection may not do this (counted by why).
    Denied(Denial),
}

/// Why a request was not allowed; the label is the `reason` of
/// `corecast_auth_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A request other than `connect` before the connection connected (`unauthorized`).
    NotConnected,
    /// A subscribe the grant does not cover, without a subscription token (`forbidden`).
    Subscribe,
    /// A publish the grant does not cover (`forbidden`).
    Publish,
    /// A broadcast without `"broadcast": true` in the grant (`forbidden`).
    Broadcast,
    /// A second `connect` (`forbidden`): the identity of a connection never changes but
    /// through `refresh`, which keeps the user.
    SecondConnect,
    /// A `refresh` with another user's token (`forbidden`).
    RefreshOtherUser,
    /// A `refresh` on an anonymous connection, which has no token to renew (`forbidden`).
    RefreshAnonymous,
    /// A subscription token for another topic or user, or on an anonymous connection
    /// (`forbidden`).
    SubscriptionToken,
    /// A token (refresh, subscription) that failed verification (`unauthorized`).
    BadToken,
}

impl Denial {
    pub const ALL: [Denial; 9] = [
        Denial::NotConnected,
        Denial::Subscribe,
        Denial::Publish,
        Denial::Broadcast,
        Denial::SecondConnect,
        Denial::RefreshOtherUser,
        Denial::RefreshAnonymous,
        Denial::SubscriptionToken,
        Denial::BadToken,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Denial::NotConnected => "not_connected",
            Denial::Subscribe => "subscribe",
            Denial::Publish => "publish",
            Denial::Broadcast => "broadcast",
            Denial::SecondConnect => "second_connect",
            Denial::RefreshOtherUser => "refresh_other_user",
            Denial::RefreshAnonymous => "refresh_anonymous",
            Denial::SubscriptionToken => "subscription_token",
            Denial::BadToken => "bad_token",
        }
    }

    /// The error reply's `code`.
    pub fn code(self) -> &'static str {
        match self {
            Denial::NotConnected | Denial::BadToken => "unauthorized",
            _ => "forbidden",
        }
    }

    /// Index in [`Denial::ALL`] (and the per-worker counters).
    pub fn index(self) -> usize {
        Denial::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

/// Writes the error reply for a denial.
pub fn deny(out: &mut Vec<u8>, id: Option<Raw<'_>>, why: Denial, message: &str) -> Reply {
    out.clear();
    protocol::error(out, id, why.code(), message);
    Reply::Denied(why)
}

/// Handles one text message: writes the reply JSON into `out` (cleared first) and returns
/// the reply kind and the effect.
pub fn handle<'a>(text: &'a str, caller: Caller<'_>, out: &mut Vec<u8>) -> (Reply, Effect<'a>) {
    out.clear();
    let req = match protocol::decode(text) {
        Ok(r) => r,
        Err(bad) => {
            protocol::error(out, bad.id, "bad_request", &bad.message);
            return (Reply::Refused, Effect::None);
        }
    };
    let granted = match caller.access {
        Access::Open => None,
        Access::Pending => return pending(req, out),
        Access::Granted {
            grant,
            sub,
            anonymous,
            topic_grants,
        } => Some((grant, sub, anonymous, topic_grants)),
    };
    match req {
        Request::Echo { id, data } => {
            protocol::echo(out, id, data);
            (Reply::Sent, Effect::None)
        }
        Request::Subscribe {
            id,
            topic,
            token,
            recover,
        } => {
            let held = caller.subs.iter().any(|t| **t == *topic);
            if !held && caller.subs.len() >= caller.max_subscriptions {
                let msg = format!("subscription limit ({}) reached", caller.max_subscriptions);
                protocol::error(out, id, "limit", &msg);
                return (Reply::Refused, Effect::None);
            }
            if let Some((grant, sub, _, topic_grants)) = granted {
                let by_token = topic_grants.iter().any(|(t, _)| **t == *topic);
                if !grant.may_subscribe(&topic, sub) {
                    match token {
                        Some(token) => {
                            let effect = Effect::SubscribeWithToken {
                                id,
                                topic,
                                token,
                                recover,
                            };
                            return (Reply::None, effect);
                        }
                        // Held through a subscription token that is still valid: subscribing
                        // again changes nothing.
                        None if held && by_token => {}
                        None => {
                            let msg = format!("not allowed to subscribe to {topic:?}");
                            return (deny(out, id, Denial::Subscribe, &msg), Effect::None);
                        }
                    }
                }
            }
            if let Some(rule) = caller.history.find(&topic) {
                return (
                    Reply::None,
                    Effect::HistorySubscribe {
                        id,
                        topic,
                        rule,
                        recover,
                    },
                );
            }
            if recover.is_some() {
                // No history to recover from: subscribed from now on, and told so.
                protocol::not_recovered(out, id);
            } else {
                protocol::ok(out, id);
            }
            (Reply::Sent, Effect::Subscribe(topic))
        }
        Request::History {
            id,
            topic,
            since,
            limit,
        } => {
            if let Some((grant, sub, _, topic_grants)) = granted {
                let by_token = topic_grants.iter().any(|(t, _)| **t == *topic);
                if !by_token && !grant.may_subscribe(&topic, sub) {
                    let msg = format!("not allowed to read the history of {topic:?}");
                    return (deny(out, id, Denial::Subscribe, &msg), Effect::None);
                }
            }
            let Some(rule) = caller.history.find(&topic) else {
                let msg = format!("{topic:?} keeps no history");
                protocol::error(out, id, "bad_request", &msg);
                return (Reply::Refused, Effect::None);
            };
            let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
            (
                Reply::None,
                Effect::History {
                    id,
                    topic,
                    rule,
                    since,
                    limit,
                },
            )
        }
        Request::Unsubscribe { id, topic } => {
            protocol::ok(out, id);
            (Reply::Sent, Effect::Unsubscribe(topic))
        }
        Request::Publish { id, topic, data } => {
            if let Some((grant, sub, ..)) = granted {
                if !grant.may_publish(&topic, sub) {
                    let msg = format!("not allowed to publish to {topic:?}");
                    return (deny(out, id, Denial::Publish, &msg), Effect::None);
                }
            }
            (ack(out, id), Effect::Publish { topic, data })
        }
        Request::Broadcast { id, data } => {
            if let Some((grant, ..)) = granted {
                if !grant.may_broadcast() {
                    let msg = "not allowed to broadcast";
                    return (deny(out, id, Denial::Broadcast, msg), Effect::None);
                }
            }
            (ack(out, id), Effect::Broadcast(data))
        }
        Request::Connect { id, .. } => match granted {
            // Auth is off: there is nothing to connect to, and a client that always sends
            // `connect` works against any server.
            None => {
                protocol::connected(out, id, None, 0);
                (Reply::Sent, Effect::None)
            }
            Some(_) => {
                let msg = "already connected; a new token for the same user goes in a refresh";
                (deny(out, id, Denial::SecondConnect, msg), Effect::None)
            }
        },
        Request::Refresh { id, token } => match granted {
            None => {
                protocol::error(out, id, "bad_request", "auth is off: nothing to refresh");
                (Reply::Refused, Effect::None)
            }
            Some((_, _, true, _)) => {
                let msg = "an anonymous connection has no token to refresh";
                (deny(out, id, Denial::RefreshAnonymous, msg), Effect::None)
            }
            Some(_) => (Reply::None, Effect::Refresh { id, token }),
        },
    }
}

/// A request from a connection that has not connected: `connect`, or refused.
fn pending<'a>(req: Request<'a>, out: &mut Vec<u8>) -> (Reply, Effect<'a>) {
    let id = match req {
        Request::Connect { id, token } => return (Reply::None, Effect::Connect { id, token }),
        Request::Echo { id, .. }
        | Request::Subscribe { id, .. }
        | Request::Unsubscribe { id, .. }
        | Request::History { id, .. }
        | Request::Publish { id, .. }
        | Request::Broadcast { id, .. }
        | Request::Refresh { id, .. } => id,
    };
    let msg = "connect first: {\"op\":\"connect\",\"token\":\"...\"}";
    (deny(out, id, Denial::NotConnected, msg), Effect::None)
}

/// The reply to a binary message on the JSON endpoint.
pub fn binary(out: &mut Vec<u8>) -> Reply {
    out.clear();
    let msg = "binary frames are not supported; send JSON text";
    protocol::error(out, None, "bad_request", msg);
    Reply::Refused
}

/// `ok` for a publish or broadcast only if it carried an id.
fn ack(out: &mut Vec<u8>, id: Option<Raw<'_>>) -> Reply {
    if id.is_none() {
        return Reply::None;
    }
    protocol::ok(out, id);
    Reply::Sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, subs: &[Arc<str>]) -> (Reply, String, String) {
        let mut out = Vec::new();
        let caller = Caller {
            subs,
            max_subscriptions: 2,
            access: Access::Open,
            history: &Rules::default(),
        };
        let (reply, effect) = handle(text, caller, &mut out);
        (
            reply,
            String::from_utf8(out).unwrap(),
            format!("{effect:?}"),
        )
    }

    #[test]
    fn each_request_gets_its_reply_and_effect() {
        let (r, out, e) = run(r#"{"op":"echo","id":1,"data":[1]}"#, &[]);
        assert_eq!(
            (r, out.as_str(), e.as_str()),
            (Reply::Sent, r#"{"op":"echo","id":1,"data":[1]}"#, "None")
        );
        let (r, out, e) = run(r#"{"op":"subscribe","topic":"a","id":"s"}"#, &[]);
        assert_eq!((r, out.as_str()), (Reply::Sent, r#"{"op":"ok","id":"s"}"#));
        assert_eq!(e, r#"Subscribe("a")"#);
        let (r, out, e) = run(r#"{"op":"unsubscribe","topic":"a"}"#, &[]);
        assert_eq!(
            (r, out.as_str(), e.as_str()),
            (Reply::Sent, r#"{"op":"ok"}"#, r#"Unsubscribe("a")"#)
        );
        let (r, out, e) = run(r#"{"op":"publish","topic":"t","data":{"x":1}}"#, &[]);
        assert_eq!((r, out.as_str()), (Reply::None, ""));
        assert!(e.starts_with("Publish { topic: \"t\""), "{e}");
        let (r, out, _) = run(r#"{"op":"publish","topic":"t","data":1,"id":9}"#, &[]);
        assert_eq!((r, out.as_str()), (Reply::Sent, r#"{"op":"ok","id":9}"#));
        let (r, _, e) = run(r#"{"op":"broadcast","data":"hi"}"#, &[]);
        assert_eq!(r, Reply::None);
        assert!(e.starts_with("Broadcast("), "{e}");
    }

    #[test]
    fn the_subscription_limit_counts_only_new_topics() {
        let held: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let (r, out, e) = run(r#"{"op":"subscribe","topic":"c","id":3}"#, &held);
        assert_eq!(r, Reply::Refused);
        assert_eq!(e, "None");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["code"], "limit");
        assert_eq!(v["id"], 3);
        // Subscribing again to a topic already held is not a new subscription.
        let (r, _, e) = run(r#"{"op":"subscribe","topic":"a"}"#, &held);
        assert_eq!((r, e.as_str()), (Reply::Sent, r#"Subscribe("a")"#));
    }

    #[test]
    fn bad_requests_and_binary_messages_are_refused_with_an_error_reply() {
        let (r, out, e) = run(r#"{"op":"fly","id":"q"}"#, &[]);
        assert_eq!((r, e.as_str()), (Reply::Refused, "None"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["code"].as_str(), v["id"].as_str()),
            (Some("bad_request"), Some("q"))
        );
        let mut out = b"stale".to_vec();
        assert_eq!(binary(&mut out), Reply::Refused);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
    }

    fn run_as(text: &str, subs: &[Arc<str>], access: Access<'_>) -> (Reply, String, String) {
        let mut out = Vec::new();
        let caller = Caller {
            subs,
            max_subscriptions: 4,
            access,
            history: &Rules::default(),
        };
        let (reply, effect) = handle(text, caller, &mut out);
        (
            reply,
            String::from_utf8(out).unwrap(),
            format!("{effect:?}"),
        )
    }

    fn grant(claim: serde_json::Value) -> Grant {
        Grant::from_claim(Some(&claim)).unwrap()
    }

    fn code(out: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["code"].as_str().unwrap_or("").to_owned()
    }

    #[test]
    fn a_pending_connection_may_only_connect() {
        for req in [
            r#"{"op":"echo","data":1,"id":1}"#,
            r#"{"op":"subscribe","topic":"a","id":1}"#,
            r#"{"op":"unsubscribe","topic":"a","id":1}"#,
            r#"{"op":"publish","topic":"a","data":1,"id":1}"#,
            r#"{"op":"broadcast","data":1}"#,
            r#"{"op":"refresh","token":"x.y.z","id":1}"#,
        ] {
            let (r, out, e) = run_as(req, &[], Access::Pending);
            assert_eq!(r, Reply::Denied(Denial::NotConnected), "{req}");
            assert_eq!(
                (code(&out).as_str(), e.as_str()),
                ("unauthorized", "None"),
                "{req}"
            );
        }
        let (r, out, e) = run_as(
            r#"{"op":"connect","token":"a.b.c","id":7}"#,
            &[],
            Access::Pending,
        );
        assert_eq!(
            (r, out.as_str()),
            (Reply::None, ""),
            "the worker replies after verifying"
        );
        assert!(
            e.starts_with("Connect { id: Some(Raw(7)), token: Some(\"a.b.c\")"),
            "{e}"
        );
        let (_, _, e) = run_as(r#"{"op":"connect"}"#, &[], Access::Pending);
        assert_eq!(e, "Connect { id: None, token: None }");
        // A malformed request is still a bad request, not a denial.
        let (r, ..) = run_as("{nope", &[], Access::Pending);
        assert_eq!(r, Reply::Refused);
    }

    #[test]
    fn a_grant_decides_subscribe_publish_and_broadcast() {
        let g = grant(serde_json::json!({
            "subscribe": ["chat.*", "user.{sub}"],
            "publish": ["chat.lobby"],
        }));
        let as_alice = Access::Granted {
            grant: &g,
            sub: "alice",
            anonymous: false,
            topic_grants: &[],
        };
        let (r, _, e) = run_as(r#"{"op":"subscribe","topic":"chat.x"}"#, &[], as_alice);
        assert_eq!((r, e.as_str()), (Reply::Sent, r#"Subscribe("chat.x")"#));
        let (r, _, e) = run_as(r#"{"op":"subscribe","topic":"user.alice"}"#, &[], as_alice);
        assert_eq!((r, e.as_str()), (Reply::Sent, r#"Subscribe("user.alice")"#));
        for no in ["user.bob", "chat.x.y", "chat", "user.alice.x"] {
            let req = format!(r#"{{"op":"subscribe","topic":"{no}","id":2}}"#);
            let (r, out, e) = run_as(&req, &[], as_alice);
            assert_eq!(r, Reply::Denied(Denial::Subscribe), "{no}");
            assert_eq!(
                (code(&out).as_str(), e.as_str()),
                ("forbidden", "None"),
                "{no}"
            );
        }
        // An escaped dot is a dot: the grant is checked on the decoded topic.
        let (r, ..) = run_as(
            r#"{"op":"subscribe","topic":"chat\u002ex\u002ey"}"#,
            &[],
            as_alice,
        );
        assert_eq!(r, Reply::Denied(Denial::Subscribe));
        let (r, _, e) = run_as(
            r#"{"op":"publish","topic":"chat.lobby","data":1}"#,
            &[],
            as_alice,
        );
        assert_eq!(r, Reply::None);
        assert!(e.starts_with("Publish"), "{e}");
        let (r, out, _) = run_as(
            r#"{"op":"publish","topic":"chat.x","data":1,"id":3}"#,
            &[],
            as_alice,
        );
        assert_eq!(
            (r, code(&out).as_str()),
            (Reply::Denied(Denial::Publish), "forbidden")
        );
        let (r, out, _) = run_as(r#"{"op":"broadcast","data":1}"#, &[], as_alice);
        assert_eq!(
            (r, code(&out).as_str()),
            (Reply::Denied(Denial::Broadcast), "forbidden")
        );
        let all = grant(serde_json::json!({"broadcast": true}));
        let caster = Access::Granted {
            grant: &all,
            sub: "c",
            anonymous: false,
            topic_grants: &[],
        };
        let (r, _, e) = run_as(r#"{"op":"broadcast","data":1}"#, &[], caster);
        assert_eq!(r, Reply::None);
        assert!(e.starts_with("Broadcast"), "{e}");
        // Echo and unsubscribe need no grant once connected.
        let (r, ..) = run_as(r#"{"op":"echo","data":1}"#, &[], as_alice);
        assert_eq!(r, Reply::Sent);
        let (r, ..) = run_as(r#"{"op":"unsubscribe","topic":"x"}"#, &[], as_alice);
        assert_eq!(r, Reply::Sent);
    }

    #[test]
    fn a_sub_with_pattern_characters_gains_nothing() {
        let g = grant(serde_json::json!({"subscribe": ["user.{sub}"], "publish": ["user.{sub}"]}));
        for (sub, topic) in [
            ("*", "user.x"),
            (">", "user.x.y"),
            ("a.b", "user.a.b"),
            ("*", "user.*"),
        ] {
            let access = Access::Granted {
                grant: &g,
                sub,
                anonymous: false,
                topic_grants: &[],
            };
            let req = format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#);
            assert_eq!(
                run_as(&req, &[], access).0,
                Reply::Denied(Denial::Subscribe),
                "{sub}"
            );
            let req = format!(r#"{{"op":"publish","topic":"{topic}","data":1}}"#);
            assert_eq!(
                run_as(&req, &[], access).0,
                Reply::Denied(Denial::Publish),
                "{sub}"
            );
        }
    }

    #[test]
    fn a_subscription_token_is_for_the_worker_to_check() {
        let g = grant(serde_json::json!({"subscribe": ["public.>"]}));
        let held: Vec<Arc<str>> = vec!["private.x".into()];
        let by_token = [(held[0].clone(), 100)];
        let access = |topic_grants| Access::Granted {
            grant: &g,
            sub: "al",
            anonymous: false,
            topic_grants,
        };
        let (r, out, e) = run_as(
            r#"{"op":"subscribe","topic":"private.y","token":"t.o.k","id":1}"#,
            &[],
            access(&[]),
        );
        assert_eq!((r, out.as_str()), (Reply::None, ""));
        assert!(e.starts_with("SubscribeWithToken"), "{e}");
        // Within the grant, a token is not even looked at.
        let (r, _, e) = run_as(
            r#"{"op":"subscribe","topic":"public.y","token":"t.o.k"}"#,
            &[],
            access(&[]),
        );
        assert_eq!((r, e.as_str()), (Reply::Sent, r#"Subscribe("public.y")"#));
        // Held through its own token: subscribing again is fine; not held: refused.
        let (r, ..) = run_as(
            r#"{"op":"subscribe","topic":"private.x"}"#,
            &held,
            access(&by_token),
        );
        assert_eq!(r, Reply::Sent);
        let (r, ..) = run_as(
            r#"{"op":"subscribe","topic":"private.x"}"#,
            &[],
            access(&[]),
        );
        assert_eq!(r, Reply::Denied(Denial::Subscribe));
        // The subscription limit comes first.
        let full: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("public.{i}"))).collect();
        let (r, out, _) = run_as(
            r#"{"op":"subscribe","topic":"private.y","token":"t.o.k"}"#,
            &full,
            access(&[]),
        );
        assert_eq!((r, code(&out).as_str()), (Reply::Refused, "limit"));
    }

    #[test]
    fn connect_and_refresh_depend_on_the_standing() {
        let g = Grant::default();
        let user = Access::Granted {
            grant: &g,
            sub: "al",
            anonymous: false,
            topic_grants: &[],
        };
        let anon = Access::Granted {
            grant: &g,
            sub: "",
            anonymous: true,
            topic_grants: &[],
        };
        let (r, out, _) = run_as(r#"{"op":"connect","token":"a.b.c","id":1}"#, &[], user);
        assert_eq!(
            (r, code(&out).as_str()),
            (Reply::Denied(Denial::SecondConnect), "forbidden")
        );
        let (r, ..) = run_as(r#"{"op":"connect"}"#, &[], anon);
        assert_eq!(r, Reply::Denied(Denial::SecondConnect));
        let (r, _, e) = run_as(r#"{"op":"refresh","token":"a.b.c","id":1}"#, &[], user);
        assert_eq!(r, Reply::None);
        assert!(e.starts_with("Refresh"), "{e}");
        let (r, ..) = run_as(r#"{"op":"refresh","token":"a.b.c"}"#, &[], anon);
        assert_eq!(r, Reply::Denied(Denial::RefreshAnonymous));
        // Auth off: connect is answered at once and refresh refused.
        let (r, out, e) = run_as(r#"{"op":"connect","token":"x","id":2}"#, &[], Access::Open);
        assert_eq!(
            (r, out.as_str(), e.as_str()),
            (Reply::Sent, r#"{"op":"ok","id":2,"user":null}"#, "None")
        );
        let (r, ..) = run_as(r#"{"op":"refresh","token":"x"}"#, &[], Access::Open);
        assert_eq!(r, Reply::Refused);
        let (r, out, _) = run_as(r#"{"op":"refresh","id":1}"#, &[], user);
        assert_eq!(
            (r, code(&out).as_str()),
            (Reply::Refused, "bad_request"),
            "no token"
        );
        let (r, ..) = run_as(r#"{"op":"connect","token":5}"#, &[], Access::Pending);
        assert_eq!(r, Reply::Refused, "a token must be a string");
        let long = format!(r#"{{"op":"connect","token":"{}"}}"#, "a".repeat(8193));
        assert_eq!(run_as(&long, &[], Access::Pending).0, Reply::Refused);
    }
}
