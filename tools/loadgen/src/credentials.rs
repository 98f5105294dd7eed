//! Tokens the connections present (`--tokens FILE`, `--token-via`): which token connection i
//! presents and how, the `connect` request, and what the server's answer to it means. Loaded
//! on the main thread and shared, read-only, by every client thread.
//!
//! Nothing here runs per message: a token goes out once per connection (in the upgrade
//! request or in its first message), so a run without `--tokens` pays nothing for it.

use std::path::Path;

use crate::cli::TokenVia;

/// The id of the `connect` request: a string, so that no scenario's numeric ids meet it.
pub const CONNECT_ID: &str = "connect";

/// The tokens of a run and how they are presented.
#[derive(Debug)]
pub struct Credentials {
    /// One JWT per connection, reused round-robin; never empty.
    tokens: Vec<Box<str>>,
    pub via: TokenVia,
}

/// How one connection presents its token.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// `Authorization: Bearer` on the upgrade request.
    Header(&'a str),
    /// Appended to the request path as `?token=` (already percent-encoded).
    Query(String),
    /// In a `connect` request after the 101: the token's line.
    Connect(usize),
}

impl Credentials {
    /// Reads `path`: one token per line, blank lines skipped.
    pub fn load(path: &Path, via: TokenVia) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--tokens {}: {e}", path.display()))?;
        Credentials::parse(&text, via).map_err(|e| format!("--tokens {}: {e}", path.display()))
    }

    /// The tokens of `text`, checked to be what an `Authorization: Bearer` header can carry
    /// (RFC 6750's b64token: a JWT is three base64url parts and dots), so that a stray space
    /// or quote fails here, not as hundreds of refused connections.
    pub fn parse(text: &str, via: TokenVia) -> Result<Credentials, String> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
            if !t.chars().all(b64token) {
                return Err(format!(
                    "line {} is not a token (only A-Z a-z 0-9 - . _ ~ + / =)",
                    n + 1
                ));
            }
            tokens.push(t.into());
        }
        if tokens.is_empty() {
            return Err("no tokens in the file".into());
        }
        Ok(Credentials { tokens, via })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The token of connection `i`.
    pub fn token(&self, i: usize) -> &str {
        &self.tokens[i % self.tokens.len()]
    }

    /// How connection `i` presents its token.
    pub fn presented(&self, i: usize) -> Presented<'_> {
        match self.via {
            TokenVia::Header => Presented::Header(self.token(i)),
            TokenVia::Query => Presented::Query(percent_encode(self.token(i))),
            TokenVia::Connect => Presented::Connect(i % self.tokens.len()),
        }
    }

    /// The `connect` request for token line `line`.
    pub fn connect_request(&self, line: usize) -> Vec<u8> {
        let token = serde_json::Value::from(&*self.tokens[line]);
        format!(r#"{{"op":"connect","token":{token},"id":"{CONNECT_ID}"}}"#).into_bytes()
    }
}

/// `?token=` takes the token percent-encoded (RFC 3986 unreserved characters stay as they
/// are: a JWT needs no escaping, but `+`, `/` and `=` of plain base64 do).
fn percent_encode(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for b in t.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request path with the token in the query.
pub fn path_with_query(path: &str, encoded: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}token={encoded}")
}

/// What the first data message after a `connect` says: `Ok` for corecast's
/// `{"op":"ok","id":"connect",..}`, otherwise the reason to fail the connection with.
pub fn connect_reply(payload: &[u8]) -> Result<(), String> {
    let shown = || String::from_utf8_lossy(&payload[..payload.len().min(160)]).into_owned();
    let v: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(_) => return Err(format!("connect answered with non-JSON: {}", shown())),
    };
    if v["op"] == "ok" && v["id"] == CONNECT_ID {
        Ok(())
    } else {
        Err(format!("connect answered with {}", shown()))
    }
}

/// The reason a 401 gives: its `WWW-Authenticate` error_description (corecast names the
/// class there: "token expired", "bad signature"), else its `error`, else the status line.
pub fn unauthorized_reason(head: &str) -> String {
    let challenge = head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("www-authenticate")
            .then(|| v.trim())
    });
    let param = |name: &str| {
        let c = challenge?;
        let at = c.find(&format!("{name}=\""))? + name.len() + 2;
        let len = c[at..].find('"')?;
        Some(c[at..at + len].to_string())
    };
    param("error_description")
        .or_else(|| param("error"))
        .unwrap_or_else(|| head.lines().next().unwrap_or("401").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_one_per_line_and_reused_round_robin() {
        let c = Credentials::parse("a.b.c\n\n  d.e.f \r\ng.h.i\n", TokenVia::Header).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.token(0), "a.b.c");
        assert_eq!(c.token(1), "d.e.f");
        assert_eq!(c.token(5), "g.h.i");
        assert_eq!(c.presented(4), Presented::Header("d.e.f"));
        assert!(Credentials::parse("\n \n", TokenVia::Header).is_err());
        let e = Credentials::parse("a.b.c\nBearer a.b.c\n", TokenVia::Header).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(Credentials::parse("a\"b", TokenVia::Header).is_err());
    }

    #[test]
    fn query_and_connect_presentations() {
        let c = Credentials::parse("aa.bb_-.cc\nx+y/z=\n", TokenVia::Query).unwrap();
        assert_eq!(c.presented(0), Presented::Query("aa.bb_-.cc".into()));
        assert_eq!(c.presented(1), Presented::Query("x%2By%2Fz%3D".into()));
        assert_eq!(path_with_query("/ws", "t"), "/ws?token=t");
        assert_eq!(path_with_query("/ws?a=1", "t"), "/ws?a=1&token=t");
        let c = Credentials::parse("aa.bb.cc\nd.e.f\n", TokenVia::Connect).unwrap();
        assert_eq!(c.presented(3), Presented::Connect(1));
        let req: serde_json::Value = serde_json::from_slice(&c.connect_request(1)).unwrap();
        assert_eq!(
            req,
            serde_json::json!({"op": "connect", "token": "d.e.f", "id": "connect"})
        );
    }

    #[test]
    fn connect_replies() {
        let ok = br#"{"op":"ok","id":"connect","user":"user-3","expires_in":3599}"#;
        assert_eq!(connect_reply(ok), Ok(()));
        // Auth off: corecast answers any connect with a null user.
        assert_eq!(
            connect_reply(br#"{"op":"ok","id":"connect","user":null}"#),
            Ok(())
        );
        let e = connect_reply(br#"{"op":"error","id":"connect","code":"forbidden"}"#);
        assert!(e.unwrap_err().contains("forbidden"));
        assert!(connect_reply(br#"{"op":"ok","id":1}"#).is_err());
        assert!(connect_reply(b"\x00\x01").is_err());
    }

    #[test]
    fn the_reason_of_a_401() {
        let head = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\
                    WWW-Authenticate: Bearer error=\"invalid_token\", \
                    error_description=\"token expired\"";
        assert_eq!(unauthorized_reason(head), "token expired");
        let head =
            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer error=\"invalid_request\"";
        assert_eq!(unauthorized_reason(head), "invalid_request");
        let head = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer";
        assert_eq!(unauthorized_reason(head), "HTTP/1.1 401 Unauthorized");
    }
}
