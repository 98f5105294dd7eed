//! The JSON wire protocol: request decoding and reply encoding; no I/O. Runs on worker threads.
//!
//! Every field is first taken as a [`Raw`] value borrowed from the frame, so a request with a
//! wrong-typed field still yields its `id` for the error reply, and `data` is forwarded byte
//! for byte without being parsed into a tree and printed again. The envelope is read by our
//! own scanner (`scan`), which allocates nothing; serde_json reads only what it refuses.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

#[cfg(test)]
mod differential;
mod scan;

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Longest token accepted in a request, in bytes: the same as in an upgrade request's head
/// (`handshake::MAX_REQUEST_HEAD`), where a token travels in the `Authorization` header.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The text of one JSON value, borrowed from the message it came in: already validated as
/// exactly one JSON value, with no whitespace around it, so it can be written into a reply
/// as it is. The only ways to make one check that (or take a `RawValue`, which serde_json
/// checked), so holding a `Raw` is the proof.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// `text` as a `Raw` if it is exactly one JSON value with no whitespace around it; `None`
    /// otherwise. For values built outside a request (tests, benches); a request's fields
    /// come from [`decode`].
    pub fn new(text: &'a str) -> Option<Raw<'a>> {
        match scan::one_value(text) {
            Ok(()) => Some(Raw(text)),
            Err(scan::Refusal::Invalid) => None,
            // Nested past what the scanner follows: serde_json decides, as for a request.
            Err(scan::Refusal::TooDeep) => {
                let v: &RawValue = serde_json::from_str(text).ok()?;
                (v.get().len() == text.len()).then_some(Raw(text))
            }
        }
    }

    /// The value's JSON text.
    pub fn get(self) -> &'a str {
        self.0
    }

    /// `text` as a `Raw` without looking at it: for a value that was one already (a
    /// publication's `data` passed between workers as bytes).
    pub(crate) fn trusted(text: &'a str) -> Raw<'a> {
        Raw(text)
    }
}

/// serde_json validated a `RawValue` when it read it, and keeps no whitespace around it.
impl<'a> From<&'a RawValue> for Raw<'a> {
    fn from(v: &'a RawValue) -> Raw<'a> {
        Raw(v.get())
    }
}

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Raw({})", self.0)
    }
}

/// A decoded client request. `id` is echoed verbatim in the reply.
#[derive(Debug)]
pub enum Request<'a> {
    Echo {
        id: Option<Raw<'a>>,
        data: Raw<'a>,
    },
    /// `token`: a subscription token, for a topic the connection's grant does not cover.
    /// `recover`: where the client stands in a history topic's stream.
    Subscribe {
        id: Option<Raw<'a>>,
        topic: Cow<'a, str>,
        token: Option<Cow<'a, str>>,
        recover: Option<Recover<'a>>,
    },
    /// Read a history topic's retained publications: after `since`, or the newest.
    History {
        id: Option<Raw<'a>>,
        topic: Cow<'a, str>,
        since: Option<u64>,
        limit: Option<u64>,
    },
    Unsubscribe {
        id: Option<Raw<'a>>,
        topic: Cow<'a, str>,
    },
    Publish {
        id: Option<Raw<'a>>,
        topic: Cow<'a, str>,
        data: Raw<'a>,
    },
    Broadcast {
        id: Option<Raw<'a>>,
        data: Raw<'a>,
    },
    /// The first request with auth on: a token, or none to connect anonymously.
    Connect {
        id: Option<Raw<'a>>,
        token: Option<Cow<'a, str>>,
    },
    /// A new token for the same user, before the current one expires.
    Refresh {
        id: Option<Raw<'a>>,
        token: Cow<'a, str>,
    },
}

/// `"recover":{"epoch":"..","offset":N}` of a subscribe: the last publication the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recover<'a> {
    pub epoch: Cow<'a, str>,
    pub offset: u64,
}

/// Longest epoch a client may send back (the server makes them 16 characters).
pub const MAX_EPOCH_LEN: usize = 64;

#[derive(Deserialize)]
struct RecoverJson<'a> {
    #[serde(borrow)]
    epoch: Cow<'a, str>,
    offset: u64,
}

/// A request that cannot be served; the connection stays open.
#[derive(Debug)]
pub struct BadRequest<'a> {
    pub id: Option<Raw<'a>>,
    pub message: Cow<'static, str>,
}

/// The envelope's members as serde's derived [`Envelope`] reads them: `None` when absent,
/// and for every member but `data` also when `null`; `data` keeps a `null` as a value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Fields<'a> {
    op: Option<Raw<'a>>,
    id: Option<Raw<'a>>,
    topic: Option<Raw<'a>>,
    data: Option<Raw<'a>>,
    token: Option<Raw<'a>>,
    recover: Option<Raw<'a>>,
    since: Option<Raw<'a>>,
    limit: Option<Raw<'a>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    /// `null` is a value here, not an absence, hence the custom path.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    recover: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
}

/// Deserializes a field that is present (called only then), keeping a JSON `null` as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The string a raw JSON value holds, borrowed from the message when it has no escapes (the
/// usual case: serde itself would copy every `Cow<str>` into a `String`); `None` if it is not
/// a string. The value was checked to be JSON when the envelope was read, so an unescaped
/// string between its quotes is already what it means.
fn json_str(raw: Raw<'_>) -> Option<Cow<'_, str>> {
    let s = raw.get().trim_matches([' ', '\t', '\n', '\r']);
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(s).ok().map(Cow::Owned)
}

/// Decodes one text message. Allocates nothing unless the request is refused, nests past
/// 127 brackets (`scan::MAX_OPEN`), or has escapes in a string it needs as text (`op`, `topic`).
pub fn decode(text: &str) -> Result<Request<'_>, BadRequest<'_>> {
    // The scanner accepts what serde_json accepts and gives the same slices, but without
    // serde_json's scratch stack for nested values (an allocation per request whose `data`
    // nests). What it refuses goes to serde_json: for malformed input that is the error
    // message clients have always had, and input nested past the scanner's fixed stack is
    // read there as before.
    decode_with(text, |t| {
        scan::envelope(t).or_else(|_| envelope_by_serde(t))
    })
}

/// [`decode`] as it was before the scanner, serde_json reading every envelope: for the
/// protocol bench's comparison, not for serving.
#[doc(hidden)]
pub fn decode_by_serde(text: &str) -> Result<Request<'_>, BadRequest<'_>> {
    decode_with(text, envelope_by_serde)
}

/// Decodes one text message with `read` taking the envelope's members from an object.
fn decode_with<'a>(
    text: &'a str,
    read: impl FnOnce(&'a str) -> Result<Fields<'a>, BadRequest<'a>>,
) -> Result<Request<'a>, BadRequest<'a>> {
    // serde would also read a struct from an array (`[op, id, ...]`); only objects are requests.
    match text.trim_start().as_bytes().first() {
        Some(b'{') => {}
        None => return Err(bad(None, "malformed JSON: empty message")),
        Some(b'[' | b'"' | b'0'..=b'9' | b'-' | b't' | b'f' | b'n') => {
            return Err(bad(None, "expected a JSON object"))
        }
        Some(_) => return Err(bad(None, "malformed JSON: expected a value")),
    }
    let env = read(text)?;
    // `"id": null` reads as absent; an id that is an object or array is refused so that
    // replies stay cheap to match on the client side.
    let id = env.id;
    if let Some(raw) = id {
        if matches!(raw.get().as_bytes().first(), Some(b'{' | b'[')) {
            return Err(bad(None, "\"id\" must be a string or a number"));
        }
    }
    let op: Cow<'_, str> = match env.op {
        None => return Err(bad(id, "missing field \"op\"")),
        Some(raw) => json_str(raw).ok_or_else(|| bad(id, "\"op\" must be a string"))?,
    };
    let data = || env.data.ok_or_else(|| bad(id, "missing field \"data\""));
    let topic = || -> Result<Cow<'_, str>, BadRequest<'_>> {
        let raw = env
            .topic
            .ok_or_else(|| bad(id, "missing field \"topic\""))?;
        let t = json_str(raw).ok_or_else(|| bad(id, "\"topic\" must be a string"))?;
        check_topic(&t).map_err(|m| bad(id, m))?;
        Ok(t)
    };
    let token = || -> Result<Option<Cow<'_, str>>, BadRequest<'_>> {
        let Some(raw) = env.token else {
            return Ok(None);
        };
        let t = json_str(raw).ok_or_else(|| bad(id, "\"token\" must be a string"))?;
        if t.len() > MAX_TOKEN_LEN {
            return Err(bad(id, "\"token\" is longer than 8192 bytes"));
        }
        Ok(Some(t))
    };
    let count = |raw: Option<Raw<'a>>, name: &'static str| -> Result<Option<u64>, BadRequest<'a>> {
        raw.map(|r| r.get().parse::<u64>().map_err(|_| bad(id, name)))
            .transpose()
    };
    Ok(match &*op {
        "echo" => Request::Echo { id, data: data()? },
        "subscribe" => Request::Subscribe {
            id,
            topic: topic()?,
            token: token()?,
            recover: match env.recover {
                None => None,
                Some(raw) => {
                    let r: RecoverJson<'_> = serde_json::from_str(raw.get()).map_err(|_| {
                        bad(
                            id,
                            "\"recover\" must be {\"epoch\":string,\"offset\":whole number}",
                        )
                    })?;
                    if r.epoch.len() > MAX_EPOCH_LEN {
                        return Err(bad(id, "\"recover\": \"epoch\" is longer than 64 bytes"));
                    }
                    Some(Recover {
                        epoch: r.epoch,
                        offset: r.offset,
                    })
                }
            },
        },
        "history" => Request::History {
            id,
            topic: topic()?,
            since: count(env.since, "\"since\" must be a whole number")?,
            limit: count(env.limit, "\"limit\" must be a whole number")?,
        },
        "unsubscribe" => Request::Unsubscribe {
            id,
            topic: topic()?,
        },
        "publish" => Request::Publish {
            id,
            topic: topic()?,
            data: data()?,
        },
        "broadcast" => Request::Broadcast { id, data: data()? },
        "connect" => Request::Connect {
            id,
            token: token()?,
        },
        "refresh" => Request::Refresh {
            id,
            token: token()?.ok_or_else(|| bad(id, "missing field \"token\""))?,
        },
        _ => return Err(bad(id, "unknown \"op\"")),
    })
}

/// The envelope's members as serde_json reads them into [`Envelope`], with the error message
/// its refusal has always given. The path for what the scanner refuses, and the reference
/// it is tested against.
fn envelope_by_serde(text: &str) -> Result<Fields<'_>, BadRequest<'_>> {
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        // An object is all the derived envelope asks for (its members are raw values of any
        // type), so its only data error is a member given twice.
        message: if e.is_data() {
            format!("repeated member: {e}").into()
        } else {
            format!("malformed JSON: {e}").into()
        },
    })?;
    Ok(Fields {
        op: env.op.map(Raw::from),
        id: env.id.map(Raw::from),
        topic: env.topic.map(Raw::from),
        data: env.data.map(Raw::from),
        token: env.token.map(Raw::from),
        recover: env.recover.map(Raw::from),
        since: env.since.map(Raw::from),
        limit: env.limit.map(Raw::from),
    })
}

/// The rules for a topic name, shared by the WebSocket and HTTP publish paths.
pub fn check_topic(t: &str) -> Result<(), &'static str> {
    if t.is_empty() || t.len() > MAX_TOPIC_LEN {
        return Err("\"topic\" must be 1 to 256 bytes");
    }
    if t.chars().any(char::is_control) {
        return Err("\"topic\" must not contain control characters");
    }
    Ok(())
}

fn bad<'a>(id: Option<Raw<'a>>, message: &'static str) -> BadRequest<'a> {
    BadRequest {
        id,
        message: message.into(),
    }
}

/// Writes a JSON string literal with the escaping JSON requires.
fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_id(out: &mut Vec<u8>, id: Option<Raw<'_>>) {
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.get().as_bytes());
    }
}

/// `{"op":"ok","id":..}`
pub fn ok(out: &mut Vec<u8>, id: Option<Raw<'_>>) {
    out.extend_from_slice(b"{\"op\":\"ok\"");
    write_id(out, id);
    out.push(b'}');
}

/// `{"op":"ok","id":..,"user":..,"expires_in":..}`: the answer to a `connect` (`user` is
/// `null` for an anonymous connection, which has no expiry).
pub fn connected(out: &mut Vec<u8>, id: Option<Raw<'_>>, user: Option<&str>, expires_in: u64) {
    out.extend_from_slice(b"{\"op\":\"ok\"");
    write_id(out, id);
    out.extend_from_slice(b",\"user\":");
    match user {
        Some(u) => {
            write_str(out, u);
            out.extend_from_slice(format!(",\"expires_in\":{expires_in}").as_bytes());
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// `{"op":"ok","id":..,"expires_in":..}`: the answer to a `refresh`, or to a subscribe with a
/// subscription token (how long that topic's grant lasts).
pub fn renewed(out: &mut Vec<u8>, id: Option<Raw<'_>>, expires_in: u64) {
    out.extend_from_slice(b"{\"op\":\"ok\"");
    write_id(out, id);
    out.extend_from_slice(format!(",\"expires_in\":{expires_in}}}").as_bytes());
}

/// `{"op":"unsubscribed","topic":..,"reason":..}`: the server ended a subscription (its
/// subscription token expired).
pub fn unsubscribed(out: &mut Vec<u8>, topic: &str, reason: &str) {
    out.extend_from_slice(b"{\"op\":\"unsubscribed\",\"topic\":");
    write_str(out, topic);
    out.extend_from_slice(b",\"reason\":");
    write_str(out, reason);
    out.push(b'}');
}

/// `{"op":"echo","id":..,"data":..}`
pub fn echo(out: &mut Vec<u8>, id: Option<Raw<'_>>, data: Raw<'_>) {
    out.extend_from_slice(b"{\"op\":\"echo\"");
    write_id(out, id);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
}

/// `{"op":"error","id":..,"code":..,"message":..}`; `id` is `null` when the request had none
/// or could not be read.
pub fn error(out: &mut Vec<u8>, id: Option<Raw<'_>>, code: &str, message: &str) {
    out.extend_from_slice(b"{\"op\":\"error\",\"id\":");
    match id {
        Some(id) => out.extend_from_slice(id.get().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"code\":");
    write_str(out, code);
    out.extend_from_slice(b",\"message\":");
    write_str(out, message);
    out.push(b'}');
}

/// `{"op":"message","topic":..,"data":..}`, or without `topic` for a broadcast.
pub fn message(out: &mut Vec<u8>, topic: Option<&str>, data: Raw<'_>) {
    out.extend_from_slice(b"{\"op\":\"message\"");
    if let Some(t) = topic {
        out.extend_from_slice(b",\"topic\":");
        write_str(out, t);
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
}

/// The reply to a subscribe with `recover` to a topic without history:
/// `{"op":"ok","id":..,"recovered":false}`.
pub fn not_recovered(out: &mut Vec<u8>, id: Option<Raw<'_>>) {
    out.extend_from_slice(b"{\"op\":\"ok\"");
    write_id(out, id);
    out.extend_from_slice(b",\"recovered\":false}");
}

/// The reply to a subscribe to a history topic: `{"op":"ok","id":..,"epoch":..,"offset":N}`,
/// with `"recovered":true|false` when the subscribe asked to recover.
pub fn history_subscribed(
    out: &mut Vec<u8>,
    id: Option<Raw<'_>>,
    epoch: &str,
    top: u64,
    recovered: Option<bool>,
) {
    out.extend_from_slice(b"{\"op\":\"ok\"");
    write_id(out, id);
    out.extend_from_slice(b",\"epoch\":");
    write_str(out, epoch);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(top.to_string().as_bytes());
    if let Some(r) = recovered {
        out.extend_from_slice(if r {
            b",\"recovered\":true"
        } else {
            b",\"recovered\":false"
        });
    }
    out.push(b'}');
}

/// The reply to a history read: `{"op":"history","id":..,"epoch":..,"offset":<top>,
/// "publications":[{"offset":n,"data":..},..]}`; each `data` is the JSON it was published
/// with.
pub fn history(
    out: &mut Vec<u8>,
    id: Option<Raw<'_>>,
    epoch: &str,
    top: u64,
    pubs: &[(u64, bytes::Bytes)],
) {
    out.extend_from_slice(b"{\"op\":\"history\"");
    write_id(out, id);
    out.extend_from_slice(b",\"epoch\":");
    write_str(out, epoch);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(top.to_string().as_bytes());
    out.extend_from_slice(b",\"publications\":[");
    for (i, (offset, data)) in pubs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"offset\":");
        out.extend_from_slice(offset.to_string().as_bytes());
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// A history topic's publication, `{"op":"message","topic":..,"offset":N,"data":..}`;
/// returns where `data` starts in `out`.
pub fn message_with_offset(out: &mut Vec<u8>, topic: &str, offset: u64, data: Raw<'_>) -> usize {
    out.extend_from_slice(b"{\"op\":\"message\",\"topic\":");
    write_str(out, topic);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(offset.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    let at = out.len();
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_without_escapes_is_borrowed_and_one_with_them_decoded() {
        fn raw(t: &str) -> Raw<'_> {
            Raw::new(t).unwrap()
        }
        let plain = raw(r#""news""#);
        assert!(matches!(json_str(plain), Some(Cow::Borrowed("news"))));
        let escaped = raw(r#""a\"b\u00e9""#);
        assert_eq!(json_str(escaped).as_deref(), Some("a\"bé"));
        assert!(matches!(json_str(escaped), Some(Cow::Owned(_))));
        for not_a_string in ["1", "null", "[\"a\"]", "{\"a\":1}", "true"] {
            assert_eq!(json_str(raw(not_a_string)), None, "{not_a_string}");
        }
        // Whitespace around a field's value is not part of the string.
        let req = decode("{ \"op\" :\t\"echo\" , \"data\": 1 }")
            .map_err(|b| b.message)
            .unwrap();
        assert!(matches!(req, Request::Echo { .. }));
    }

    fn err_of(text: &str) -> (Option<String>, String) {
        match decode(text) {
            Err(e) => (e.id.map(|i| i.get().to_owned()), e.message.into_owned()),
            Ok(r) => panic!("{text} decoded to {r:?}"),
        }
    }

    #[test]
    fn decodes_each_op_and_keeps_data_verbatim() {
        match decode(r#"{"op":"echo","id":7,"data":{"a": [1, 2]}}"#).unwrap() {
            Request::Echo { id, data } => {
                assert_eq!(id.unwrap().get(), "7");
                assert_eq!(data.get(), r#"{"a": [1, 2]}"#);
            }
            r => panic!("{r:?}"),
        }
        assert!(
            matches!(decode(r#"{"op":"subscribe","topic":"n\u00e9ws"}"#).unwrap(),
            Request::Subscribe { topic, id: None, token: None, recover: None } if topic == "néws")
        );
        assert!(
            matches!(decode(r#"{"op":"unsubscribe","topic":"a","id":"x"}"#).unwrap(),
            Request::Unsubscribe { topic, .. } if topic == "a")
        );
        assert!(
            matches!(decode(r#"{"data":1,"topic":"t","op":"publish"}"#).unwrap(),
            Request::Publish { topic, data, .. } if topic == "t" && data.get() == "1")
        );
        assert!(
            matches!(decode(r#"{"op":"broadcast","data":null}"#).unwrap(),
            Request::Broadcast { data, .. } if data.get() == "null")
        );
    }

    #[test]
    fn errors_keep_the_id_when_it_can_be_read() {
        assert_eq!(err_of("{nope").0, None);
        assert!(err_of("{nope").1.starts_with("malformed JSON"));
        assert_eq!(err_of("[1,2]").1, "expected a JSON object");
        assert_eq!(
            err_of(r#"{"op":"fly","id":3}"#),
            (Some("3".into()), "unknown \"op\"".into())
        );
        assert_eq!(
            err_of(r#"{"op":"publish","id":"q","data":1}"#).1,
            "missing field \"topic\""
        );
        assert_eq!(
            err_of(r#"{"op":"publish","id":"q","data":1}"#).0.as_deref(),
            Some("\"q\"")
        );
        assert_eq!(err_of(r#"{"op":"echo"}"#).1, "missing field \"data\"");
        assert_eq!(err_of(r#"{"op":5}"#).1, "\"op\" must be a string");
        assert_eq!(
            err_of(r#"{"op":"subscribe","topic":7,"id":1}"#).1,
            "\"topic\" must be a string"
        );
        assert_eq!(
            err_of(r#"{"op":"subscribe","topic":""}"#).1,
            "\"topic\" must be 1 to 256 bytes"
        );
        let long = format!(r#"{{"op":"subscribe","topic":"{}"}}"#, "a".repeat(257));
        assert_eq!(err_of(&long).1, "\"topic\" must be 1 to 256 bytes");
        assert_eq!(
            err_of(r#"{"op":"subscribe","topic":"a\nb"}"#).1,
            "\"topic\" must not contain control characters"
        );
        assert_eq!(
            err_of(r#"{"op":"echo","data":1,"id":{"x":1}}"#).1,
            "\"id\" must be a string or a number"
        );
    }

    #[test]
    fn replies_are_valid_json() {
        let raw = |s| Raw::new(s).unwrap();
        let id = raw("\"r1\"");
        let mut out = Vec::new();
        error(&mut out, Some(id), "bad_request", "quote \" and \n newline");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "r1");
        assert_eq!(v["message"], "quote \" and \n newline");
        out.clear();
        message(&mut out, Some("t\"x"), raw("[1,{\"a\":2}]"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op":"message","topic":"t\"x","data":[1,{"a":2}]})
        );
        out.clear();
        ok(&mut out, None);
        assert_eq!(out, br#"{"op":"ok"}"#);
        out.clear();
        echo(&mut out, Some(raw("5")), raw("\"hi\""));
        assert_eq!(out, br#"{"op":"echo","id":5,"data":"hi"}"#);
    }

    /// The scanner's verdict on `text`, the four members' texts on acceptance, after checking
    /// that serde_json's envelope gives the same verdict (the rules are serde_json's).
    fn scanned(text: &str) -> Result<[Option<&str>; 4], scan::Refusal> {
        let ours = scan::envelope(text);
        let theirs = envelope_by_serde(text);
        if ours != Err(scan::Refusal::TooDeep) {
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{text:?}: {ours:?}");
        }
        ours.map(|f| [f.op, f.id, f.topic, f.data].map(|r| r.map(Raw::get)))
    }

    fn accepted(text: &str) -> bool {
        scanned(text).is_ok()
    }

    /// `data` set to `value`, in an otherwise valid echo.
    fn with_data(value: &str) -> String {
        format!(r#"{{"op":"echo","data":{value}}}"#)
    }

    #[test]
    fn strings_need_well_formed_escapes_and_no_control_characters() {
        let good = r#""\"\\\/\b\f\n\r\t\u00e9\u00E9\u0000 é 😀 日本""#;
        assert_eq!(scanned(&with_data(good)).unwrap()[3], Some(good));
        assert!(accepted(&with_data("\"a\u{7f}b\"")));
        for bad in [
            r#""\x""#,
            r#""\'""#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\u""#,
            r#""\""#,
            "\"abc",
            "\"a\u{1}b\"",
            "\"a\tb\"",
            "\"a\nb\"",
            "\"a\u{1f}b\"",
        ] {
            assert_eq!(
                scanned(&with_data(bad)),
                Err(scan::Refusal::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn surrogates_must_pair_in_a_member_name_but_not_in_a_skipped_string() {
        // serde_json decodes a field name into a `str`, and skips every other string.
        assert!(accepted(r#"{"\ud83d\ude00":1}"#));
        assert!(accepted(r#"{"\uD83D\uDE00":1}"#));
        for bad in [
            r#"{"\ud800":1}"#,
            r#"{"\udc00":1}"#,
            r#"{"\udfff\ud800":1}"#,
            r#"{"\ud800\u0041":1}"#,
            r#"{"\ud800\ud800":1}"#,
            r#"{"\ud800\n":1}"#,
            r#"{"\ud800x":1}"#,
        ] {
            assert!(!accepted(bad), "{bad}");
        }
        assert!(accepted(&with_data(r#""\ud800""#)));
        assert!(accepted(&with_data(r#""\udc00\ud800x""#)));
        assert!(accepted(&with_data(r#"{"\ud800":"\udfff"}"#)));
        assert!(accepted(r#"{"x":"\ud800","op":"echo","data":1}"#));
        // Accepted as JSON, but no string: what `op` must be.
        assert_eq!(
            err_of(r#"{"op":"\ud800","data":1}"#).1,
            "\"op\" must be a string"
        );
    }

    #[test]
    fn numbers_follow_the_json_grammar_at_any_size() {
        for good in [
            "0",
            "-0",
            "1",
            "-10",
            "1.5",
            "-0.0e+00",
            "1e5",
            "1E-5",
            "1e+5",
            "123456789012345678901234567890123456789",
            "1e999999999999999",
            "0.000001",
        ] {
            assert_eq!(scanned(&with_data(good)).unwrap()[3], Some(good), "{good}");
        }
        for bad in [
            "01",
            "-01",
            "00",
            "1.",
            ".5",
            "1.e5",
            "-",
            "--1",
            "+1",
            "1e",
            "1e+",
            "1e-",
            "0x1",
            "1_000",
            "NaN",
            "Infinity",
            "-Infinity",
            "1 2",
            "1.5.5",
        ] {
            assert!(!accepted(&with_data(bad)), "{bad}");
        }
    }

    #[test]
    fn literals_are_spelled_out_in_lower_case() {
        assert!(accepted(&with_data("[true,false,null]")));
        for bad in ["tru", "nul", "nulll", "True", "NULL", "falsey", "t", "nan"] {
            assert!(!accepted(&with_data(bad)), "{bad}");
        }
    }

    #[test]
    fn only_json_whitespace_separates_tokens() {
        let spaced = " \t\n\r{ \t\n\r\"op\" \t\n\r: \t\n\r\"echo\" \t\n\r, \"data\" : [ 1 , { \"a\" : 2 } ] } \t\n\r";
        assert_eq!(
            scanned(spaced).unwrap(),
            [Some("\"echo\""), None, None, Some("[ 1 , { \"a\" : 2 } ]")]
        );
        for other in ["\u{b}", "\u{c}", "\u{a0}", "\u{feff}", "\u{2003}"] {
            let text = format!("{{{other}\"op\":\"echo\",\"data\":1}}");
            assert!(!accepted(&text), "{other:?}");
            // The refusal is serde_json's, word for word.
            assert!(err_of(&text).1.starts_with("malformed JSON: "), "{other:?}");
        }
    }

    #[test]
    fn nesting_is_followed_up_to_the_limit_and_handed_to_serde_json_past_it() {
        let nested = |n: usize| with_data(&format!("{}{}", "[".repeat(n), "]".repeat(n)));
        let most = scan::MAX_OPEN as usize - 1; // the envelope is one bracket
        assert!(scanned(&nested(most)).is_ok());
        let objects = with_data(&format!("{}1{}", "{\"a\":".repeat(most), "}".repeat(most)));
        assert!(scanned(&objects).is_ok());
        for deeper in [most + 1, most + 2, 1000] {
            assert_eq!(scanned(&nested(deeper)), Err(scan::Refusal::TooDeep));
            // serde_json sets no limit on a value it skips, so such a request is served as
            // it always was.
            assert!(
                matches!(decode(&nested(deeper)), Ok(Request::Echo { .. })),
                "{deeper}"
            );
        }
        for bad in [
            "[}",
            "{]",
            "[1}]",
            "{\"a\":1]}",
            "{\"a\"}",
            "{1:2}",
            "[1,]",
            "[,1]",
            "]",
            "[[]",
        ] {
            assert!(!accepted(&with_data(bad)), "{bad}");
        }
    }

    #[test]
    fn the_four_members_come_back_as_slices_and_others_are_validated_and_ignored() {
        let text =
            r#"{"x":[1,{"y":null}],"data":{"n":[1,2,3]},"topic":"t","id":7,"op":"publish","x":2}"#;
        let got = scanned(text).unwrap();
        assert_eq!(
            got,
            [
                Some("\"publish\""),
                Some("7"),
                Some("\"t\""),
                Some(r#"{"n":[1,2,3]}"#)
            ]
        );
        // Borrowed from the message itself.
        let data = scan::envelope(text).unwrap().data.unwrap().get();
        assert!(text.as_bytes().as_ptr_range().contains(&data.as_ptr()));
        assert_eq!(scanned("{}").unwrap(), [None; 4]);
        assert!(!accepted(r#"{"x":[1,],"op":"echo","data":1}"#));
        assert!(!accepted(r#"{"op":"echo","data":1,"x":tru}"#));
        // Members inside `data` are not the envelope's.
        assert_eq!(scanned(r#"{"data":{"op":"x","op":"y"}}"#).unwrap()[0], None);
    }

    #[test]
    fn a_repeated_member_is_refused_where_the_derived_struct_refuses_it() {
        for text in [
            r#"{"op":"echo","op":"echo","data":1}"#,
            r#"{"op":"echo","data":1,"id":1,"id":2}"#,
            r#"{"id":null,"id":1,"op":"echo","data":1}"#,
            r#"{"op":"echo","data":1,"topic":"a","topic":"a"}"#,
            r#"{"op":"echo","data":null,"data":null}"#,
            r#"{"op":"echo","o\u0070":"echo","data":1}"#,
        ] {
            assert_eq!(scanned(text), Err(scan::Refusal::Invalid), "{text}");
            let (id, message) = err_of(text);
            assert_eq!(id, None, "{text}");
            assert!(
                message.starts_with("repeated member: duplicate field `"),
                "{text}: {message}"
            );
        }
        assert!(accepted(r#"{"x":1,"x":2,"op":"echo","data":1}"#));
    }

    #[test]
    fn member_names_match_once_their_escapes_are_decoded() {
        assert_eq!(
            scanned(r#"{"o\u0070":"echo","d\u0061ta":1,"\u0069d":3,"t\u006Fpic":"t"}"#).unwrap(),
            [Some("\"echo\""), Some("3"), Some("\"t\""), Some("1")]
        );
        assert_eq!(scanned(r#"{"\u006f\u0070":1}"#).unwrap()[0], Some("1"));
        for other in [
            r#"{"op\u0000":1}"#,
            r#"{"Op":1}"#,
            r#"{"\/op":1}"#,
            r#"{"o\/p":1}"#,
            r#"{"opo":1}"#,
            r#"{"o":1}"#,
            r#"{"":1}"#,
            r#"{"topics":1}"#,
            "{\"\u{e9}\":1}",
        ] {
            assert_eq!(scanned(other).unwrap(), [None; 4], "{other}");
        }
        assert!(!accepted(r#"{"o\p":1}"#));
        assert!(!accepted("{\"o\tp\":1}"));
    }

    #[test]
    fn only_whitespace_may_follow_the_object() {
        assert!(accepted("{} \t\n\r"));
        for bad in ["{}x", "{}{}", "{},", "{}}", "{} 1", "{}\u{0}"] {
            assert_eq!(scanned(bad), Err(scan::Refusal::Invalid), "{bad:?}");
        }
        assert!(err_of(r#"{"op":"echo","data":1} x"#)
            .1
            .starts_with("malformed JSON: trailing characters"));
    }

    #[test]
    fn a_null_id_is_absent_and_a_null_data_is_present() {
        assert_eq!(
            scanned(r#"{"op":null,"id":null,"topic":null,"data":null}"#).unwrap(),
            [None, None, None, Some("null")]
        );
        match decode(r#"{"op":"echo","id":null,"data":null}"#) {
            Ok(Request::Echo { id: None, data }) => assert_eq!(data.get(), "null"),
            r => panic!("{r:?}"),
        }
        assert_eq!(err_of(r#"{"op":null,"data":1}"#).1, "missing field \"op\"");
        assert_eq!(
            err_of(r#"{"op":"subscribe","topic":null}"#).1,
            "missing field \"topic\""
        );
    }

    #[test]
    fn a_raw_is_exactly_one_json_value() {
        for good in ["1", "\"a\"", "[1,{\"a\":null}]", "null", "{}"] {
            assert_eq!(Raw::new(good).map(Raw::get), Some(good));
        }
        for bad in ["", " 1", "1 ", "1 2", "[1", "nul", "\"\\x\""] {
            assert_eq!(Raw::new(bad), None, "{bad:?}");
        }
        // Deeper than the scanner follows: serde_json's verdict.
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert!(Raw::new(&deep).is_some());
        assert!(Raw::new(&deep[1..]).is_none());
    }
}
