//! What a decoded JSON request does. The handler writes the reply (if any) and returns the
//! effect for the worker to carry out: subscribe, unsubscribe, publish or broadcast. No I/O,
//! so every request's outcome is unit-tested without sockets. Runs on worker threads.

use std::borrow::Cow;
use std::sync::Arc;

use crate::protocol::{self, Raw, Request};

/// What the handler needs to know about the connection that sent the request.
#[derive(Debug, Clone, Copy)]
pub struct Session<'a> {
    /// The topics it is subscribed to.
    pub subs: &'a [Arc<str>],
    pub max_subscriptions: usize,
}

/// What the request asks the worker to do, beyond replying.
#[derive(Debug)]
pub enum Effect<'a> {
    None,
    Subscribe(Cow<'a, str>),
    Unsubscribe(Cow<'a, str>),
    /// Deliver `data` to the topic's subscribers on every worker.
    Publish {
        topic: Cow<'a, str>,
        data: Raw<'a>,
    },
    /// Deliver `data` to every JSON connection on every worker.
    Broadcast(Raw<'a>),
}

/// What was written as the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to send (a publish without an id).
    None,
    /// A reply, in the buffer.
    Sent,
    /// An error reply, in the buffer: the request was refused (counted as a bad request).
    Refused,
}

/// Handles one text message: writes the reply JSON into `out` (cleared first) and returns
/// the reply kind and the effect.
pub fn handle<'a>(text: &'a str, session: Session<'_>, out: &mut Vec<u8>) -> (Reply, Effect<'a>) {
    out.clear();
    let req = match protocol::decode(text) {
        Ok(r) => r,
        Err(bad) => {
            protocol::error(out, bad.id, "bad_request", &bad.message);
            return (Reply::Refused, Effect::None);
        }
    };
    match req {
        Request::Echo { id, data } => {
            protocol::echo(out, id, data);
            (Reply::Sent, Effect::None)
        }
        Request::Subscribe { id, topic } => {
            let held = session.subs.iter().any(|t| **t == *topic);
            if !held && session.subs.len() >= session.max_subscriptions {
                let msg = format!("subscription limit ({}) reached", session.max_subscriptions);
                protocol::error(out, id, "limit", &msg);
                return (Reply::Refused, Effect::None);
            }
            protocol::ok(out, id);
            (Reply::Sent, Effect::Subscribe(topic))
        }
        Request::Unsubscribe { id, topic } => {
            protocol::ok(out, id);
            (Reply::Sent, Effect::Unsubscribe(topic))
        }
        Request::Publish { id, topic, data } => (ack(out, id), Effect::Publish { topic, data }),
        Request::Broadcast { id, data } => (ack(out, id), Effect::Broadcast(data)),
    }
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
        let session = Session {
            subs,
            max_subscriptions: 2,
        };
        let (reply, effect) = handle(text, session, &mut out);
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
}
