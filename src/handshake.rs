//! The HTTP/1.1 upgrade (RFC 6455 §4.2) on bytes; no I/O. Runs on worker threads.
//!
//! httparse reads the request and tungstenite's `create_response` applies the RFC's checks
//! and derives the accept key. The caller keeps a half-received request between readable
//! events (the resumable state tungstenite calls `MidHandshake`) and calls [`parse`] again;
//! an idle connection that has finished its handshake keeps none of this.

use std::borrow::Cow;

use tungstenite::error::{Error as WsError, ProtocolError};

use crate::conn::deflate::{self, Agreed};

/// Largest request head accepted; browsers send well under 2 KiB.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 32;

/// What an upgraded connection speaks, chosen by the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The JSON pub/sub protocol (`/ws` and `/`).
    Json,
    /// Raw echo of every data frame (`/echo`), for benchmarks and conformance suites.
    Echo,
}

/// The token an upgrade request carries, as it carries it. Read whether auth is on or not;
/// the worker ignores it while auth is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// No token.
    None,
    /// `Authorization: Bearer TOKEN` (RFC 6750 §2.1).
    Bearer(&'a str),
    /// `?token=TOKEN` in the request target, percent-decoded.
    Query(Cow<'a, str>),
    /// A token that cannot be used, and why: a scheme other than Bearer, an empty token, a
    /// bad percent escape, or a token given twice.
    Invalid(&'static str),
}

/// Result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The request head is not complete yet.
    Partial,
    /// Accepted: send `response`, then frames start at byte `consumed`.
    Upgrade {
        endpoint: Endpoint,
        response: Vec<u8>,
        consumed: usize,
        /// permessage-deflate, if enabled and offered in a form corecast can honour.
        deflate: Option<Agreed>,
        /// The token the request carries, borrowed from it.
        credential: Credential<'a>,
    },
    /// Refused: send `response` and close. `status` and `reason` are for counters and logs.
    Reject {
        response: Vec<u8>,
        status: u16,
        reason: &'static str,
    },
    /// A plain HTTP GET the worker answers itself, then closes.
    Page(Page),
}

/// What a plain (not upgraded) GET on the WebSocket listener asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/healthz`.
    Health,
    /// `/` without an upgrade: the web console (unless `--no-console`).
    Console,
    /// `/stats.json`: the console's live figures (unless `--no-console`).
    Stats,
}

/// Parses the request head at the start of `buf`. If `allowed_origins` is non-empty, the
/// request's `Origin` must be one of them (browsers always send it; other clients may not,
/// and are refused too when the list is set).
/// With `deflate`, a permessage-deflate offer is accepted if one can be (RFC 7692). With
/// `console`, a GET of `/` without an upgrade and of `/stats.json` are pages (404 without).
pub fn parse<'a>(
    buf: &'a [u8],
    allowed_origins: &[String],
    deflate: bool,
    console: bool,
) -> Outcome<'a> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return reject(
                431,
                "Request Header Fields Too Large",
                "request head too large",
                "",
            )
        }
        Ok(httparse::Status::Partial) => return Outcome::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return reject(
                431,
                "Request Header Fields Too Large",
                "too many headers",
                "",
            )
        }
        Err(_) => return reject(400, "Bad Request", "malformed HTTP request", ""),
    };
    if consumed > MAX_REQUEST_HEAD {
        return reject(
            431,
            "Request Header Fields Too Large",
            "request head too large",
            "",
        );
    }
    if let Err(reason) = check_headers(&req) {
        return reject(400, "Bad Request", reason, "");
    }
    let path = origin_form(req.path.unwrap_or("/"));
    let plain_get = req.method == Some("GET")
        && !req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    let endpoint = match path.split('?').next().unwrap_or("") {
        "/" if plain_get && console => return Outcome::Page(Page::Console),
        "/" if plain_get => return reject(404, "Not Found", "console disabled", ""),
        "/ws" | "/" => Endpoint::Json,
        "/echo" => Endpoint::Echo,
        "/healthz" => return Outcome::Page(Page::Health),
        "/stats.json" if console => return Outcome::Page(Page::Stats),
        _ => return reject(404, "Not Found", "unknown path", ""),
    };
    if !allowed_origins.is_empty() {
        let origin = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("origin"));
        let ok = origin.is_some_and(|h| allowed_origins.iter().any(|o| o.as_bytes() == h.value));
        if !ok {
            return reject(403, "Forbidden", "origin not allowed", "");
        }
    }
    let request = match to_http(&req) {
        Some(r) => r,
        None => return reject(400, "Bad Request", "malformed HTTP request", ""),
    };
    match tungstenite::handshake::server::create_response(&request) {
        Ok(mut resp) => {
            let agreed = if deflate {
                deflate::negotiate(
                    req.headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                        .map(|h| h.value),
                )
            } else {
                None
            };
            if let Some(a) = agreed {
                let value =
                    http::HeaderValue::from_str(&a.response()).expect("the response is ASCII");
                resp.headers_mut().insert("sec-websocket-extensions", value);
            }
            let mut response = Vec::with_capacity(160);
            if tungstenite::handshake::server::write_response(&mut response, &resp).is_err() {
                return reject(500, "Internal Server Error", "response encoding failed", "");
            }
            Outcome::Upgrade {
                endpoint,
                response,
                consumed,
                deflate: agreed,
                credential: credential(&req, path),
            }
        }
        Err(WsError::Protocol(p)) => match p {
            ProtocolError::WrongHttpMethod => reject(
                405,
                "Method Not Allowed",
                "method is not GET",
                "Allow: GET\r\n",
            ),
            ProtocolError::WrongHttpVersion => reject(
                505,
                "HTTP Version Not Supported",
                "HTTP version below 1.1",
                "",
            ),
            ProtocolError::MissingConnectionUpgradeHeader
            | ProtocolError::MissingUpgradeWebSocketHeader => reject(
                426,
                "Upgrade Required",
                "not a WebSocket upgrade",
                "Upgrade: websocket\r\n",
            ),
            ProtocolError::MissingSecWebSocketVersionHeader => reject(
                426,
                "Upgrade Required",
                "unsupported Sec-WebSocket-Version",
                "Sec-WebSocket-Version: 13\r\n",
            ),
            _ => reject(
                400,
                "Bad Request",
                "missing or invalid Sec-WebSocket-Key",
                "",
            ),
        },
        Err(_) => reject(400, "Bad Request", "malformed HTTP request", ""),
    }
}

/// The header rules httparse leaves to the server: HTTP/1.1 requires exactly one `Host`
/// (RFC 9112 §3.2), and `Sec-WebSocket-Key` and `Origin` may appear at most once (RFC 6455
/// §11.3.1, RFC 6454 §7.3). Two values of one of these leave the server guessing which one
/// a proxy in front of it acted on, so the request is refused.
fn check_headers(req: &httparse::Request<'_, '_>) -> Result<(), &'static str> {
    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    if req.version == Some(1) {
        match count("host") {
            0 => return Err("missing Host header"),
            1 => {}
            _ => return Err("more than one Host header"),
        }
    }
    if count("sec-websocket-key") > 1 {
        return Err("more than one Sec-WebSocket-Key header");
    }
    if count("origin") > 1 {
        return Err("more than one Origin header");
    }
    if count("authorization") > 1 {
        return Err("more than one Authorization header");
    }
    Ok(())
}

/// The token of an upgrade request: its `Authorization` header's, or its query's `token`
/// parameter (whether that may be used is the worker's to decide).
fn credential<'a>(req: &httparse::Request<'_, 'a>, target: &'a str) -> Credential<'a> {
    let header = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| bearer(h.value));
    let query = target
        .split_once('?')
        .map_or(Credential::None, |(_, q)| query_token(q));
    match (header, query) {
        (None, q) => q,
        (Some(h), Credential::None) => h,
        (Some(_), _) => {
            Credential::Invalid("a token both in the Authorization header and in the query")
        }
    }
}

/// An `Authorization` value: the scheme is case-insensitive and the token one b64token
/// (RFC 6750 §2.1), which a JWT always is.
fn bearer(value: &[u8]) -> Credential<'_> {
    let Ok(value) = std::str::from_utf8(value) else {
        return Credential::Invalid("the Authorization header is not ASCII");
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Credential::Invalid("the Authorization header holds no Bearer token");
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Credential::Invalid("the Authorization scheme is not Bearer");
    }
    let token = token.trim_start_matches(' ');
    let b64token = |c: u8| c.is_ascii_alphanumeric() || b"-._~+/=".contains(&c);
    if token.is_empty() || !token.bytes().all(b64token) {
        return Credential::Invalid("the Bearer token is empty or not a b64token");
    }
    Credential::Bearer(token)
}

/// The `token` parameter of a query string, percent-decoded.
fn query_token(query: &str) -> Credential<'_> {
    let mut found = None;
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("token=") else {
            continue;
        };
        if found.is_some() {
            return Credential::Invalid("more than one token parameter");
        }
        found = Some(value);
    }
    let Some(value) = found else {
        return Credential::None;
    };
    if value.is_empty() {
        return Credential::Invalid("the token parameter is empty");
    }
    if !value.contains('%') {
        return Credential::Query(Cow::Borrowed(value));
    }
    match percent_decode(value) {
        Some(t) => Credential::Query(Cow::Owned(t)),
        None => Credential::Invalid("the token parameter has a bad percent escape"),
    }
}

/// `%XX` escapes decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The path and query of a request target. A server must accept the absolute form
/// (`GET http://host/ws`, RFC 9112 §3.2.2), which proxies send.
fn origin_form(target: &str) -> &str {
    let lower = |n: usize| target.get(..n).map(str::to_ascii_lowercase);
    let after_scheme = if lower(7).as_deref() == Some("http://") {
        7
    } else if lower(8).as_deref() == Some("https://") {
        8
    } else {
        return target;
    };
    let rest = &target[after_scheme..];
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        // `http://host?x` and `http://host` both mean the root.
        _ => "/",
    }
}

fn to_http(req: &httparse::Request<'_, '_>) -> Option<tungstenite::handshake::server::Request> {
    let mut b = http::Request::builder()
        .method(req.method?)
        .uri(req.path?)
        .version(if req.version? == 1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_10
        });
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    b.body(()).ok()
}

/// Builds a plain-text HTTP error response that closes the connection.
pub fn reject(status: u16, phrase: &str, reason: &'static str, extra: &str) -> Outcome<'static> {
    Outcome::Reject {
        response: http_response(status, phrase, extra, reason),
        status,
        reason,
    }
}

/// A complete HTTP/1.1 response with a text body and `Connection: close`.
pub fn http_response(status: u16, phrase: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}\n",
        body.len() + 1
    )
    .into_bytes()
}

/// A 200 carrying `body` as it is, of `content_type`, not to be cached (it is live).
pub fn http_ok(content_type: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Connection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(buf: &[u8]) -> Outcome<'_> {
        parse(buf, &[], false, true)
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(path: &str, version: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
    }

    fn status(o: &Outcome) -> String {
        let bytes = match o {
            Outcome::Upgrade { response, .. } | Outcome::Reject { response, .. } => response,
            Outcome::Partial => return "partial".into(),
            Outcome::Page(p) => return format!("{p:?}"),
        };
        String::from_utf8_lossy(&bytes[..12]).into_owned()
    }

    #[test]
    fn accepts_the_rfc_example_and_keeps_trailing_frames() {
        let mut req = upgrade("/ws", "13").into_bytes();
        let head = req.len();
        req.extend_from_slice(&[0x81, 0x80, 0, 0, 0, 0]);
        match p(&req) {
            Outcome::Upgrade {
                endpoint,
                response,
                consumed,
                deflate,
                credential,
            } => {
                assert_eq!(deflate, None);
                assert_eq!(credential, Credential::None);
                assert_eq!(endpoint, Endpoint::Json);
                assert_eq!(consumed, head);
                let text = String::from_utf8(response).unwrap();
                assert!(text.starts_with("HTTP/1.1 101"), "{text}");
                // The accept value from RFC 6455 §1.3.
                assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deflate_is_answered_only_when_enabled_and_offered() {
        let offer = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        );
        let answer = |buf: &[u8], on: bool| match parse(buf, &[], on, true) {
            Outcome::Upgrade {
                response, deflate, ..
            } => (String::from_utf8(response).unwrap(), deflate),
            other => panic!("{other:?}"),
        };
        let (resp, agreed) = answer(offer.as_bytes(), true);
        assert_eq!(agreed.map(|a| a.window_bits()), Some(15));
        assert!(
            resp.to_ascii_lowercase().contains(
                "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover\r\n"
            ),
            "{resp}"
        );
        // Off: the offer is ignored and the upgrade goes on without it.
        let (resp, agreed) = answer(offer.as_bytes(), false);
        assert_eq!(agreed, None);
        assert!(!resp.to_ascii_lowercase().contains("extensions"), "{resp}");
        // On, but nothing offered.
        let (resp, agreed) = answer(upgrade("/ws", "13").as_bytes(), true);
        assert_eq!(agreed, None);
        assert!(!resp.to_ascii_lowercase().contains("extensions"), "{resp}");
    }

    #[test]
    fn routes_paths() {
        assert!(matches!(
            p(upgrade("/", "13").as_bytes()),
            Outcome::Upgrade {
                endpoint: Endpoint::Json,
                ..
            }
        ));
        assert!(matches!(
            p(upgrade("/echo", "13").as_bytes()),
            Outcome::Upgrade {
                endpoint: Endpoint::Echo,
                ..
            }
        ));
        assert!(matches!(
            p(upgrade("/ws?x=1", "13").as_bytes()),
            Outcome::Upgrade {
                endpoint: Endpoint::Json,
                ..
            }
        ));
        assert_eq!(
            status(&p(upgrade("/nope", "13").as_bytes())),
            "HTTP/1.1 404"
        );
    }

    #[test]
    fn partial_until_the_blank_line_then_bounded() {
        let req = upgrade("/ws", "13");
        for cut in 0..req.len() - 1 {
            let o = p(&req.as_bytes()[..cut]);
            assert!(
                o == Outcome::Partial || status(&o) == "HTTP/1.1 400",
                "cut {cut}: {o:?}"
            );
        }
        let mut endless = b"GET /ws HTTP/1.1\r\n".to_vec();
        while endless.len() < MAX_REQUEST_HEAD {
            endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(status(&p(&endless)), "HTTP/1.1 431");
    }

    #[test]
    fn plain_gets_of_the_console_and_its_stats_are_pages_unless_disabled() {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        fn on(r: &str) -> Outcome<'_> {
            parse(r.as_bytes(), &[], false, true)
        }
        fn off(r: &str) -> Outcome<'_> {
            parse(r.as_bytes(), &[], false, false)
        }
        assert_eq!(on(&get("/")), Outcome::Page(Page::Console));
        assert_eq!(on(&get("/?x=1")), Outcome::Page(Page::Console));
        assert_eq!(on(&get("/stats.json")), Outcome::Page(Page::Stats));
        assert_eq!(status(&off(&get("/"))), "HTTP/1.1 404");
        assert_eq!(status(&off(&get("/stats.json"))), "HTTP/1.1 404");
        assert_eq!(off(&get("/healthz")), Outcome::Page(Page::Health));
        // An upgrade on / is the JSON protocol, console or not.
        for o in [on(&upgrade("/", "13")), off(&upgrade("/", "13"))] {
            assert!(matches!(
                o,
                Outcome::Upgrade {
                    endpoint: Endpoint::Json,
                    ..
                }
            ));
        }
        // A POST to / is not the page.
        let post = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status(&on(post)), "HTTP/1.1 405");
    }

    #[test]
    fn refusals_carry_the_right_status() {
        assert_eq!(status(&p(upgrade("/ws", "8").as_bytes())), "HTTP/1.1 426");
        let plain = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(status(&p(plain)), "HTTP/1.1 426");
        let post = upgrade("/ws", "13").replacen("GET", "POST", 1);
        assert_eq!(status(&p(post.as_bytes())), "HTTP/1.1 405");
        let badkey = upgrade("/ws", "13").replace(KEY, "short");
        assert_eq!(status(&p(badkey.as_bytes())), "HTTP/1.1 400");
        assert_eq!(status(&p(b"\x16\x03\x01garbage\r\n\r\n")), "HTTP/1.1 400");
    }

    #[test]
    fn host_key_and_origin_rules_and_the_absolute_form() {
        let no_host = upgrade("/ws", "13").replace("Host: x\r\n", "");
        assert_eq!(status(&p(no_host.as_bytes())), "HTTP/1.1 400");
        let two_hosts = upgrade("/ws", "13").replace("Host: x\r\n", "Host: x\r\nHost: y\r\n");
        assert_eq!(status(&p(two_hosts.as_bytes())), "HTTP/1.1 400");
        let two_keys = upgrade("/ws", "13").replace(
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Version",
        );
        assert_eq!(status(&p(two_keys.as_bytes())), "HTTP/1.1 400");
        let two_origins = upgrade("/ws", "13").replace(
            "Host: x\r\n",
            "Host: x\r\nOrigin: https://a.example\r\nOrigin: https://b.example\r\n",
        );
        assert_eq!(status(&p(two_origins.as_bytes())), "HTTP/1.1 400");
        for target in [
            "http://x/ws",
            "HTTP://x:9000/ws?y=1",
            "https://x/echo",
            "http://x",
        ] {
            let req = upgrade(target, "13");
            let o = p(req.as_bytes());
            assert!(matches!(o, Outcome::Upgrade { .. }), "{target}: {o:?}");
        }
        assert!(matches!(
            p(upgrade("http://x/echo", "13").as_bytes()),
            Outcome::Upgrade {
                endpoint: Endpoint::Echo,
                ..
            }
        ));
        assert_eq!(
            status(&p(upgrade("http://x/nope", "13").as_bytes())),
            "HTTP/1.1 404"
        );
        assert_eq!(origin_form("http://h?q"), "/");
        assert_eq!(origin_form("/ws"), "/ws");
        // HTTP/1.0 has no Host rule (it is refused for its version instead).
        let old = upgrade("/ws", "13")
            .replace("HTTP/1.1", "HTTP/1.0")
            .replace("Host: x\r\n", "");
        assert_eq!(status(&p(old.as_bytes())), "HTTP/1.1 505");
    }

    #[test]
    fn origin_allow_list() {
        let allowed = vec!["https://app.example".to_string()];
        let with = |o: &str| {
            upgrade("/ws", "13").replacen("Host: x\r\n", &format!("Host: x\r\nOrigin: {o}\r\n"), 1)
        };
        assert!(matches!(
            parse(
                with("https://app.example").as_bytes(),
                &allowed,
                false,
                true
            ),
            Outcome::Upgrade { .. }
        ));
        assert_eq!(
            status(&parse(
                with("https://evil.example").as_bytes(),
                &allowed,
                false,
                true
            )),
            "HTTP/1.1 403"
        );
        assert_eq!(
            status(&parse(
                upgrade("/ws", "13").as_bytes(),
                &allowed,
                false,
                true
            )),
            "HTTP/1.1 403"
        );
    }

    fn credential_of(req: &str) -> Credential<'_> {
        match p(req.as_bytes()) {
            Outcome::Upgrade { credential, .. } => credential,
            other => panic!("{other:?}"),
        }
    }

    fn with_header(path: &str, header: &str) -> String {
        upgrade(path, "13").replacen("Host: x\r\n", &format!("Host: x\r\n{header}\r\n"), 1)
    }

    #[test]
    fn a_bearer_token_or_a_query_token_is_read_from_the_upgrade() {
        let req = with_header("/ws", "Authorization: Bearer aa.bb.cc");
        assert_eq!(credential_of(&req), Credential::Bearer("aa.bb.cc"));
        let req = with_header("/ws", "authorization: bearer   aa.bb-_cc=");
        assert_eq!(credential_of(&req), Credential::Bearer("aa.bb-_cc="));
        let req = upgrade("/ws?x=1&token=aa.bb.cc", "13");
        assert_eq!(credential_of(&req), Credential::Query("aa.bb.cc".into()));
        let req = upgrade("/ws?token=aa%2Ebb.cc", "13");
        assert_eq!(credential_of(&req), Credential::Query("aa.bb.cc".into()));
        let req = upgrade("/echo?tokens=1", "13");
        assert_eq!(credential_of(&req), Credential::None);
    }

    #[test]
    fn tokens_that_cannot_be_used_are_named_so() {
        for (req, what) in [
            (
                with_header("/ws", "Authorization: Basic dXNlcjpwYXNz"),
                "scheme",
            ),
            (with_header("/ws", "Authorization: Bearer"), "no token"),
            (with_header("/ws", "Authorization: Bearer a b"), "space"),
            (with_header("/ws", "Authorization: Bearer a\"b"), "quote"),
            (upgrade("/ws?token=", "13"), "empty"),
            (upgrade("/ws?token=a&token=b", "13"), "twice"),
            (upgrade("/ws?token=a%zz", "13"), "escape"),
            (upgrade("/ws?token=%ff", "13"), "not UTF-8"),
            (
                with_header("/ws?token=q", "Authorization: Bearer h"),
                "both",
            ),
        ] {
            assert!(
                matches!(credential_of(&req), Credential::Invalid(_)),
                "{what}: {:?}",
                credential_of(&req)
            );
        }
        let two = with_header("/ws", "Authorization: Bearer a\r\nAuthorization: Bearer b");
        assert_eq!(status(&p(two.as_bytes())), "HTTP/1.1 400");
    }
}
