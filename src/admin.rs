//! The admin HTTP endpoint: `GET /metrics`, `GET /healthz`, `POST /publish`. Runs on its own
//! thread, so no worker's event loop ever waits on it.
//!
//! Requests are served one at a time with short socket timeouts: this is an operator's
//! endpoint, scraped every few seconds, and a stuck client costs it at most the timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::broadcast::{self, Target};
use crate::metrics;
use crate::protocol;
use crate::server::Shared;
use crate::worker::handle::Msg;

/// Read and write timeout per admin request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// The running admin thread.
pub struct Admin {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Admin {
    pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> io::Result<Admin> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corecast-admin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    match conn {
                        Ok(s) => {
                            if let Err(e) = serve(s, &shared) {
                                log::debug!("admin request failed: {e}");
                            }
                        }
                        // Out of descriptors: back off instead of spinning.
                        Err(e) => {
                            log::warn!("admin accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(Admin { addr, stop, thread })
    }

    /// Stops the thread: set the flag, then unblock its `accept` with a connection.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        let _ = self.thread.join();
    }
}

/// One request, one response, then close.
fn serve(mut s: TcpStream, shared: &Shared) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (method, path, auth, body_len, head_len) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value.to_vec())
                };
                let len = match header("content-length") {
                    None => 0,
                    Some(v) => match std::str::from_utf8(&v)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                    {
                        Some(n) => n,
                        None => {
                            return respond(
                                &mut s,
                                400,
                                "Bad Request",
                                &error_json("invalid Content-Length"),
                            )
                        }
                    },
                };
                break (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                    header("authorization"),
                    len,
                    head,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return respond(
                    &mut s,
                    431,
                    "Request Header Fields Too Large",
                    &error_json("request head too large"),
                )
            }
            Err(_) => {
                return respond(
                    &mut s,
                    400,
                    "Bad Request",
                    &error_json("malformed HTTP request"),
                )
            }
        }
    };
    let path = path.split('?').next().unwrap_or("").to_owned();
    match (method.as_str(), path.as_str()) {
        ("GET", "/metrics") => {
            let body = metrics::render(shared);
            respond_typed(
                &mut s,
                200,
                "OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
                "",
            )
        }
        ("GET", "/healthz") => {
            if shared.draining.load(Ordering::Relaxed) {
                respond_typed(
                    &mut s,
                    503,
                    "Service Unavailable",
                    "text/plain",
                    b"draining\n",
                    "",
                )
            } else {
                respond_typed(&mut s, 200, "OK", "text/plain", b"ok\n", "")
            }
        }
        ("POST", "/publish") => {
            if !authorized(shared.cfg.api_token.as_deref(), auth.as_deref()) {
                return respond_typed(
                    &mut s,
                    401,
                    "Unauthorized",
                    "application/json",
                    error_json("missing or wrong bearer token").as_bytes(),
                    "WWW-Authenticate: Bearer\r\n",
                );
            }
            let limit = shared.cfg.max_message_size;
            if body_len > limit {
                let msg = format!("body of {body_len} bytes exceeds the {limit}-byte limit");
                respond(&mut s, 413, "Payload Too Large", &error_json(&msg))?;
                return discard_body(&mut s, body_len);
            }
            let mut body = buf[head_len..].to_vec();
            while body.len() < body_len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(body_len);
            match publish(shared, &body) {
                Ok(n) => respond_typed(
                    &mut s,
                    202,
                    "Accepted",
                    "application/json",
                    format!("{{\"queued_workers\":{n}}}").as_bytes(),
                    "",
                ),
                Err(msg) => respond(&mut s, 400, "Bad Request", &error_json(&msg)),
            }
        }
        (_, "/metrics" | "/healthz" | "/publish") => respond(
            &mut s,
            405,
            "Method Not Allowed",
            &error_json("method not allowed"),
        ),
        _ => respond(&mut s, 404, "Not Found", &error_json("no such endpoint")),
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow, default)]
    topic: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Encodes the message once and queues it to every worker; returns how many.
fn publish(shared: &Shared, body: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
    if !text.trim_start().starts_with('{') {
        return Err("expected a JSON object".into());
    }
    let req: PublishBody<'_> =
        serde_json::from_str(text).map_err(|e| format!("invalid publish request: {e}"))?;
    let target = match req.topic {
        None => Target::All,
        Some(t) => {
            protocol::check_topic(&t).map_err(str::to_owned)?;
            Target::Topic(Arc::from(&*t))
        }
    };
    let d = broadcast::encode(target, req.data);
    for w in shared.workers.iter() {
        w.send(Msg::Deliver(d.clone()));
    }
    shared.api_publishes.fetch_add(1, Ordering::Relaxed);
    Ok(shared.workers.len())
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

/// Reads and drops an unwanted body (up to 1 MiB), so that closing the socket with unread
/// data does not reset the connection before the client has read our response.
fn discard_body(s: &mut TcpStream, len: usize) -> io::Result<()> {
    s.shutdown(std::net::Shutdown::Write)?;
    let mut left = len.min(1 << 20);
    let mut chunk = [0u8; 16 * 1024];
    while left > 0 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

fn error_json(message: &str) -> String {
    let mut out = Vec::new();
    protocol::error(&mut out, None, "bad_request", message);
    String::from_utf8(out).expect("JSON is UTF-8")
}

fn respond(s: &mut TcpStream, status: u16, phrase: &str, json: &str) -> io::Result<()> {
    respond_typed(s, status, phrase, "application/json", json.as_bytes(), "")
}

fn respond_typed(
    s: &mut TcpStream,
    status: u16,
    phrase: &str,
    content_type: &str,
    body: &[u8],
    extra: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
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
}
