//! What each admin request gets: `GET /metrics`, `GET /healthz`, `POST /publish`,
//! `POST /disconnect`, and the refusals around them (token, framing, body size and
//! deadline, shutdown). Runs in the
//! connection tasks of the control thread; the only way out to the workers is their queues.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::metrics::{AdminStats, Metrics, CONTENT_TYPE};
use crate::broadcast::{self, Target};
use crate::protocol::{self, Raw};
use crate::shared::Shared;
use crate::stats::bump;
use crate::worker::handle::Msg;

/// Time for a whole request body (at most `--max-message-size`) to arrive once its head has;
/// over it the request gets 408 and the connection is closed.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// A complete response; every body is small and built before it is sent.
pub type Reply = Response<Full<Bytes>>;

/// What every admin request can reach; one per admin endpoint, shared by its connections.
pub struct Endpoints {
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    pub stats: Arc<AdminStats>,
    /// Cleared by the control thread itself when shutdown asks it to stop publishing (see
    /// `Control::stop_publishing`); from then on `POST /publish` answers 503.
    pub publishing: AtomicBool,
}

/// Why a publish body was refused (400).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("expected a JSON object")]
    NotObject,
    #[error("invalid publish request: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Topic(&'static str),
    #[error("the workers are {} MiB of publishes behind; retry later", crate::broadcast::OUTSIDE_BYTES >> 20)]
    Behind,
}

/// Answers one request. `both_lengths` is the connection's framing scanner's verdict: hyper
/// removes `Content-Length` from a request that also has `Transfer-Encoding`, so the pair is
/// only visible there.
pub async fn handle(
    ep: Arc<Endpoints>,
    both_lengths: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut reply = if chunked && both_lengths.load(Ordering::Relaxed) {
        // RFC 9112 §6.3: a likely smuggling attempt; refuse rather than follow one header.
        error(
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding",
        )
    } else {
        route(&ep, req).await
    };
    if chunked {
        // The framing scanner stops following the stream at a chunked request, so no
        // request may come after it on this connection.
        close(&mut reply);
    }
    Ok(reply)
}

async fn route(ep: &Endpoints, req: Request<Incoming>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(StatusCode::OK, CONTENT_TYPE, ep.metrics.render()),
        (&Method::GET, "/healthz") => {
            if ep.shared.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                match ep.shared.bus.backplane() {
                    Some(b) if !b.is_up() => {
                        text(StatusCode::OK, "text/plain", "ok; backplane down\n")
                    }
                    _ => text(StatusCode::OK, "text/plain", "ok\n"),
                }
            }
        }
        (&Method::POST, "/publish") => publish(ep, req).await,
        (&Method::POST, "/disconnect") => disconnect(ep, req).await,
        (_, path @ ("/metrics" | "/healthz" | "/publish" | "/disconnect")) => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            let allow = if matches!(path, "/publish" | "/disconnect") {
                "POST"
            } else {
                "GET"
            };
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

async fn publish(ep: &Endpoints, req: Request<Incoming>) -> Reply {
    let body = match body(ep, req, ep.shared.cfg.max_message_size).await {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    // No await from this check to the last worker send, so a publish that saw the flag set
    // is queued to every worker before the control thread handles anything else, including
    // `Control::stop_publishing`.
    if !ep.publishing.load(Ordering::Relaxed) {
        return error_code(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server is shutting down",
        );
    }
    match publish_now(&ep.shared, &body) {
        Ok(Published::Queued(n)) => {
            let json = format!("{{\"queued_workers\":{n}}}");
            text(StatusCode::ACCEPTED, "application/json", json)
        }
        Ok(Published::ToOwner(numbered)) => {
            // The topic keeps history: its owner numbers the publication and says how.
            match tokio::time::timeout(HISTORY_WAIT, numbered).await {
                Ok(Ok((offset, epoch))) => {
                    let mut json = format!(
                        "{{\"queued_workers\":{},\"offset\":{offset},\"epoch\":",
                        ep.shared.workers.len()
                    );
                    json.push_str(&serde_json::to_string(&*epoch).unwrap_or_default());
                    json.push('}');
                    text(StatusCode::ACCEPTED, "application/json", json)
                }
                _ => error_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the topic's owner did not say what offset it gave the publication",
                ),
            }
        }
        Err(e @ PublishError::Behind) => {
            ep.shared
                .api_publishes_refused
                .fetch_add(1, Ordering::Relaxed);
            error_code(StatusCode::SERVICE_UNAVAILABLE, "behind", &e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Longest `POST /disconnect` body: `{"user":"..."}` with a user id of a few hundred bytes.
const DISCONNECT_BODY: usize = 4096;

/// How long `POST /disconnect` waits for the workers' counts. They answer within a loop
/// turn; the bound is for a worker stuck or gone.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// `POST /disconnect` with `{"user":"<sub>"}`: every connection of that user, on every
/// worker (and, with `--redis`, on every node), is closed with 4003. Answers
/// `{"closed":N}`, the count on this node.
async fn disconnect(ep: &Endpoints, req: Request<Incoming>) -> Reply {
    let body = match body(ep, req, DISCONNECT_BODY).await {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    let user = match disconnect_user(&body) {
        Ok(u) => u,
        Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
    };
    if let Some(b) = ep.shared.bus.backplane() {
        if !b.disconnect(&user) {
            return error_code(
                StatusCode::SERVICE_UNAVAILABLE,
                "behind",
                "too many disconnects waiting for the backplane; retry later",
            );
        }
    }
    let (done, mut counts) = tokio::sync::mpsc::unbounded_channel();
    for w in ep.shared.workers.iter() {
        let msg = Msg::Disconnect {
            user: user.clone(),
            done: Some(done.clone()),
        };
        // A worker that has exited drops the message, and its sender with it.
        w.send(msg, drop);
    }
    drop(done);
    let mut closed = 0;
    let wait = tokio::time::sleep(DISCONNECT_WAIT);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            n = counts.recv() => match n {
                Some(n) => closed += n,
                None => break,
            },
            _ = &mut wait => {
                log::warn!("POST /disconnect: not every worker answered within {DISCONNECT_WAIT:?}");
                break;
            }
        }
    }
    ep.stats.disconnects.fetch_add(1, Ordering::Relaxed);
    let json = format!("{{\"closed\":{closed}}}");
    text(StatusCode::OK, "application/json", json)
}

/// The user a `POST /disconnect` body names, or why it names none. Only the object form:
/// serde would also take `["alice"]` for the struct, and a body that is not the documented
/// shape must not close anyone's connections.
fn disconnect_user(body: &[u8]) -> Result<Arc<str>, String> {
    #[derive(Deserialize)]
    struct Body {
        user: String,
    }
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err("expected {\"user\":\"...\"}: not a JSON object".into());
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) if !b.user.is_empty() => Ok(Arc::from(b.user)),
        Ok(_) => Err("\"user\" must not be empty".into()),
        Err(e) => Err(format!("expected {{\"user\":\"...\"}}: {e}")),
    }
}

/// Checks the bearer token, then reads a body of at most `limit` bytes within
/// [`BODY_DEADLINE`]; the refusal to answer with otherwise.
async fn body(ep: &Endpoints, req: Request<Incoming>, limit: usize) -> Result<Bytes, Reply> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !authorized(ep.shared.cfg.api_token.as_deref(), auth) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(r);
    }
    // hyper has already refused invalid or differing values (400) and removed the header
    // from chunked requests, so here it is either one valid length or absent.
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(length) = length else {
        // RFC 9110 §15.5.12: we accept bodies only with a length known up front.
        let msg = format!("POST {} needs a Content-Length", req.uri().path());
        return Err(closing(error(StatusCode::LENGTH_REQUIRED, &msg)));
    };
    if length > limit as u64 {
        let msg = format!("body of {length} bytes exceeds the {limit}-byte limit");
        return Err(closing(error(StatusCode::PAYLOAD_TOO_LARGE, &msg)));
    }
    let body = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(BODY_DEADLINE, body).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        // The client went away mid-body (or sent more than it announced); this answer
        // rarely reaches anyone, but it must not be a panic.
        Ok(Err(e)) => Err(closing(error(
            StatusCode::BAD_REQUEST,
            &format!("request body: {e}"),
        ))),
        Err(_) => {
            bump(&ep.stats.request_timeouts, 1);
            let msg = format!("the body did not arrive within {BODY_DEADLINE:?}");
            Err(closing(error(StatusCode::REQUEST_TIMEOUT, &msg)))
        }
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// How long `POST /publish` to a history topic waits for the owner to number it (within a
/// loop turn, normally).
const HISTORY_WAIT: Duration = Duration::from_secs(2);

/// Where a publish went.
enum Published {
    /// Encoded once and queued to this many workers.
    Queued(usize),
    /// To the owner of its history topic, which answers with its offset and epoch.
    ToOwner(tokio::sync::oneshot::Receiver<(u64, Arc<str>)>),
}

/// Encodes the message once and queues it to every worker (or, for a topic that keeps
/// history, sends it to the topic's owner).
fn publish_now(shared: &Shared, body: &[u8]) -> Result<Published, PublishError> {
    let text = std::str::from_utf8(body).map_err(|_| PublishError::NotUtf8)?;
    if !text.trim_start().starts_with('{') {
        return Err(PublishError::NotObject);
    }
    let req: PublishBody<'_> = serde_json::from_str(text)?;
    let target = match req.topic {
        None => Target::All,
        Some(t) => {
            protocol::check_topic(&t).map_err(PublishError::Topic)?;
            if let Some(rule) = shared.cfg.history.rules.find(&t) {
                let (done, numbered) = tokio::sync::oneshot::channel();
                let data = Bytes::copy_from_slice(req.data.get().as_bytes());
                if !shared.bus.publish_history(Arc::from(&*t), rule, data, done) {
                    return Err(PublishError::Behind);
                }
                shared.api_publishes.fetch_add(1, Ordering::Relaxed);
                return Ok(Published::ToOwner(numbered));
            }
            Target::Topic(Arc::from(&*t))
        }
    };
    let n = shared
        .bus
        .publish(broadcast::encode(target, Raw::from(req.data)))
        .ok_or(PublishError::Behind)?;
    shared.api_publishes.fetch_add(1, Ordering::Relaxed);
    Ok(Published::Queued(n))
}

/// Compares the bearer token in constant time with respect to its contents.
fn authorized(token: Option<&str>, header: Option<&[u8]>) -> bool {
    let Some(token) = token else {
        return true; // no token configured: loopback-only, enforced at start-up
    };
    let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let want = token.as_bytes();
    if given.len() != want.len() {
        return false;
    }
    given
        .iter()
        .zip(want)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error(status: StatusCode, message: &str) -> Reply {
    error_code(status, "bad_request", message)
}

fn error_code(status: StatusCode, code: &str, message: &str) -> Reply {
    let mut out = Vec::new();
    protocol::error(&mut out, None, code, message);
    text(status, "application/json", out)
}

/// Asks hyper to close the connection after this response: used where the request's body is
/// left unread (or its framing is not followed), so nothing after it can be parsed.
fn closing(mut r: Reply) -> Reply {
    close(&mut r);
    r
}

fn close(r: &mut Reply) {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_check() {
        assert!(authorized(None, None));
        assert!(authorized(Some("abc"), Some(b"Bearer abc")));
        assert!(!authorized(Some("abc"), Some(b"Bearer abd")));
        assert!(!authorized(Some("abc"), Some(b"Bearer abcd")));
        assert!(!authorized(Some("abc"), Some(b"Basic abc")));
        assert!(!authorized(Some("abc"), None));
    }

    #[test]
    fn a_disconnect_body_names_one_user_as_an_object() {
        assert_eq!(
            disconnect_user(br#"{"user":"alice"}"#).as_deref(),
            Ok("alice")
        );
        assert_eq!(
            disconnect_user(b" \n{\"user\":\"bob\",\"why\":\"left\"}").as_deref(),
            Ok("bob")
        );
        for bad in [
            &br#"["alice"]"#[..],
            b"",
            b"alice",
            b"{}",
            br#"{"user":""}"#,
            br#"{"user":7}"#,
            br#"{"user":"alice""#,
        ] {
            assert!(
                disconnect_user(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
