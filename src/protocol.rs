//! The JSON wire protocol: request decoding and reply encoding; no I/O. Runs on worker threads.
//!
//! Every field is first taken as a [`Raw`] value borrowed from the frame, so a request with a
//! wrong-typed field still yields its `id` for the error reply, and `data` is forwarded byte
//! for byte without being parsed into a tree and printed again.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

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
        let v: &RawValue = serde_json::from_str(text).ok()?;
        (v.get().len() == text.len()).then_some(Raw(text))
    }

    /// The value's JSON text.
    pub fn get(self) -> &'a str {
        self.0
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
    Subscribe {
        id: Option<Raw<'a>>,
        topic: Cow<'a, str>,
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
}

/// A request that cannot be served; the connection stays open.
#[derive(Debug)]
pub struct BadRequest<'a> {
    pub id: Option<Raw<'a>>,
    pub message: Cow<'static, str>,
}

/// The envelope's four members as serde's derived [`Envelope`] reads them: `None` when absent,
/// and for `op`, `id` and `topic` also when `null`; `data` keeps a `null` as a value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Fields<'a> {
    op: Option<Raw<'a>>,
    id: Option<Raw<'a>>,
    topic: Option<Raw<'a>>,
    data: Option<Raw<'a>>,
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

/// Decodes one text message.
pub fn decode(text: &str) -> Result<Request<'_>, BadRequest<'_>> {
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
    Ok(match &*op {
        "echo" => Request::Echo { id, data: data()? },
        "subscribe" => Request::Subscribe {
            id,
            topic: topic()?,
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
        _ => return Err(bad(id, "unknown \"op\"")),
    })
}

/// The envelope's members as serde_json reads them into [`Envelope`], with the error message
/// its refusal has always given.
fn envelope_by_serde(text: &str) -> Result<Fields<'_>, BadRequest<'_>> {
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        message: if e.is_data() {
            "expected a JSON object".into()
        } else {
            format!("malformed JSON: {e}").into()
        },
    })?;
    Ok(Fields {
        op: env.op.map(Raw::from),
        id: env.id.map(Raw::from),
        topic: env.topic.map(Raw::from),
        data: env.data.map(Raw::from),
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
            Request::Subscribe { topic, id: None } if topic == "néws")
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
}
