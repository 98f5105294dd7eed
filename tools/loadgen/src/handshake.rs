//! HTTP/1.1 WebSocket upgrade: builds the client request and recognises the server's 101 reply.

use base64::Engine as _;

use crate::deflate::{self, Agreed};

/// Response headers larger than this are treated as a bad handshake instead of buffering forever.
pub const MAX_RESPONSE_HEAD: usize = 8192;

/// RFC 6455 4.2.2: the server proves it read the key by hashing it with this GUID.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn key_for(seed: u128) -> String {
    base64::engine::general_purpose::STANDARD.encode(seed.to_le_bytes())
}

/// The `Sec-WebSocket-Accept` value a server must answer the key derived from `seed` with.
pub fn expected_accept(seed: u128) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key_for(seed).as_bytes());
    h.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

/// Appends the upgrade request for `path` on `host` (host:port) with a key derived from `seed`,
/// offering permessage-deflate when `deflate` is set and presenting `bearer` in an
/// `Authorization` header when given.
pub fn write_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    seed: u128,
    deflate: bool,
    bearer: Option<&str>,
) {
    let key = key_for(seed);
    // Vec<u8> as io::Write cannot fail.
    use std::io::Write as _;
    let _ = write!(
        out,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if deflate {
        let _ = write!(out, "Sec-WebSocket-Extensions: {}\r\n", deflate::OFFER);
    }
    if let Some(token) = bearer {
        let _ = write!(out, "Authorization: Bearer {token}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Need more bytes.
    Partial,
    /// 101 received; the head occupies this many bytes, anything after it is frame data. The
    /// second field is what the server agreed to for permessage-deflate, if anything.
    Upgraded(usize, Option<Agreed>),
    /// A 401: the server refused the token (or its absence), for the reason given.
    Unauthorized(String),
    /// Any other status, or a malformed/oversized head.
    Rejected(String),
}

/// Inspects the bytes received so far on a handshaking connection whose key came from `seed`.
/// A 101 counts only with `Upgrade: websocket`, `Connection: upgrade` and the right
/// `Sec-WebSocket-Accept` (RFC 6455 4.1: the client must fail the connection otherwise), and
/// with no extension that was not offered (`offered_deflate`) or that is malformed.
pub fn parse_response(buf: &[u8], seed: u128, offered_deflate: bool) -> Response {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE_HEAD {
            return Response::Rejected("response head too large".into());
        }
        // Reject early if what we have already cannot be an HTTP response.
        let n = buf.len().min(5);
        if buf[..n] != b"HTTP/"[..n] {
            return Response::Rejected(status_line(buf));
        }
        return Response::Partial;
    };
    let head = &buf[..end];
    let ok = head.starts_with(b"HTTP/1.1 101")
        && matches!(head.get(12), Some(b' ') | Some(b'\r') | None);
    if !ok {
        if head.starts_with(b"HTTP/1.1 401 ") {
            let text = String::from_utf8_lossy(head);
            return Response::Unauthorized(crate::credentials::unauthorized_reason(&text));
        }
        return Response::Rejected(status_line(head));
    }
    let Ok(text) = std::str::from_utf8(head) else {
        return Response::Rejected("response head is not UTF-8".into());
    };
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Response::Rejected("101 without Upgrade: websocket".into());
    }
    if !has_token("connection", "upgrade") {
        return Response::Rejected("101 without Connection: upgrade".into());
    }
    if header("sec-websocket-accept") != Some(expected_accept(seed).as_str()) {
        return Response::Rejected("101 with a wrong or missing Sec-WebSocket-Accept".into());
    }
    let agreed = match header("sec-websocket-extensions") {
        None | Some("") => None,
        Some(_) if !offered_deflate => {
            return Response::Rejected("101 with an extension that was not offered".into())
        }
        Some(v) => match deflate::parse_answer(v) {
            Ok(a) => Some(a),
            Err(e) => return Response::Rejected(format!("101 with {e}")),
        },
    };
    Response::Upgraded(end + 4, agreed)
}

fn status_line(buf: &[u8]) -> String {
    let line = buf
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shape() {
        let mut out = Vec::new();
        write_request(&mut out, "127.0.0.1:9000", "/echo", 42, false, None);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("GET /echo HTTP/1.1\r\n"));
        assert!(s.contains("\r\nHost: 127.0.0.1:9000\r\n"));
        assert!(s.contains("Sec-WebSocket-Version: 13"));
        let key = s
            .split("Sec-WebSocket-Key: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .unwrap()
                .len(),
            16
        );
        assert!(s.ends_with("\r\n\r\n"));
        assert!(!s.contains("Authorization"));
        let mut out = Vec::new();
        write_request(&mut out, "h:1", "/ws", 42, false, Some("aa.bb.cc"));
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("\r\nAuthorization: Bearer aa.bb.cc\r\n\r\n"),
            "{s}"
        );
    }

    #[test]
    fn accept_matches_the_rfc_example() {
        // RFC 6455 1.3: key "dGhlIHNhbXBsZSBub25jZQ==" -> "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
        let seed = u128::from_le_bytes(*b"the sample nonce");
        assert_eq!(key_for(seed), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(expected_accept(seed), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    /// A 101 with mixed-case header names and values and two frame bytes after the head.
    fn upgrade(accept: &str) -> Vec<u8> {
        let mut v = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        v.extend_from_slice(&[0x81, 0x00]);
        v
    }

    #[test]
    fn response_parsing() {
        let seed = 7u128;
        let resp = upgrade(&expected_accept(seed));
        for cut in 0..resp.len() - 2 {
            assert_eq!(
                parse_response(&resp[..cut], seed, false),
                Response::Partial,
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_response(&resp, seed, false),
            Response::Upgraded(resp.len() - 2, None)
        );
        let wrong = upgrade(&expected_accept(seed + 1));
        assert!(
            matches!(parse_response(&wrong, seed, false), Response::Rejected(s) if s.contains("Accept"))
        );
        let bare = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        assert!(
            matches!(parse_response(bare, seed, false), Response::Rejected(s) if s.contains("Connection"))
        );
        assert!(matches!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n", seed, false),
            Response::Rejected(s) if s == "HTTP/1.1 404 Not Found"
        ));
        assert_eq!(
            parse_response(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error=\"invalid_token\", \
                  error_description=\"bad signature\"\r\nContent-Length: 0\r\n\r\n",
                seed,
                false
            ),
            Response::Unauthorized("bad signature".into())
        );
        assert!(matches!(
            parse_response(b"HTTP/1.1 1010\r\n\r\n", seed, false),
            Response::Rejected(_)
        ));
        assert!(matches!(
            parse_response(b"garbage", seed, false),
            Response::Rejected(_)
        ));
        assert!(matches!(
            parse_response(&[b'H'; 9000], seed, false),
            Response::Rejected(_)
        ));
    }

    #[test]
    fn extension_answers() {
        let seed = 9u128;
        let mut out = Vec::new();
        write_request(&mut out, "h:1", "/ws", seed, true, None);
        let req = String::from_utf8(out).unwrap();
        assert!(req.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        ));
        assert!(req.ends_with("\r\n\r\n") && !req.ends_with("\r\n\r\n\r\n"));
        let with = |ext: &str| {
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: {ext}\r\n\r\n",
                expected_accept(seed)
            );
            head.into_bytes()
        };
        let ok = with("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        match parse_response(&ok, seed, true) {
            Response::Upgraded(n, Some(a)) => {
                assert_eq!(n, ok.len());
                assert!(a.server_no_context_takeover);
            }
            other => panic!("{other:?}"),
        }
        // Not offered, or not what was offered: the client must fail the connection.
        assert!(
            matches!(parse_response(&ok, seed, false), Response::Rejected(s) if s.contains("not offered"))
        );
        assert!(matches!(
            parse_response(&with("x-webkit-deflate-frame"), seed, true),
            Response::Rejected(_)
        ));
        // Offered and declined: a plain connection.
        assert_eq!(
            parse_response(&upgrade(&expected_accept(seed)), seed, true),
            Response::Upgraded(upgrade(&expected_accept(seed)).len() - 2, None)
        );
    }
}
