//! Helpers shared by the integration tests: an in-process server on an ephemeral port and
//! real WebSocket clients (tungstenite, blocking, on the test's own thread).

#![allow(dead_code)]

pub mod pki;
pub mod process;
pub mod redis_server;
pub mod tls;
pub mod tokens;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use corecast::{Config, Server};
use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Every blocking read in a test gives up after this long, so a bug fails a test instead of
/// hanging it.
pub const WATCHDOG: Duration = Duration::from_secs(10);

pub type Client = WebSocket<TcpStream>;

pub fn config(workers: usize) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers,
        pin: false,
        ..Config::default()
    }
}

pub fn start(cfg: Config) -> Server {
    let _ = env_logger::builder().is_test(true).try_init();
    Server::start(cfg).expect("server starts")
}

pub fn connect(addr: SocketAddr, path: &str) -> Client {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    stream.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}{path}");
    let (ws, resp) = tungstenite::client(url.as_str(), stream).expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

pub fn send<S: Read + Write>(ws: &mut WebSocket<S>, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

/// Next data message as JSON; pings are answered by tungstenite itself.
pub fn recv<S: Read + Write>(ws: &mut WebSocket<S>) -> Value {
    loop {
        match ws.read().expect("read a message") {
            Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame arrives and returns its code.
pub fn expect_close<S: Read + Write>(ws: &mut WebSocket<S>) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return u16::from(f.code),
            Ok(Message::Close(None)) => return u16::from(CloseCode::Status),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// A raw TCP client that has done the upgrade by hand, for sending what a library client
/// never would.
pub fn raw_upgraded(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads one unmasked server frame: (opcode, payload).
pub fn raw_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let (first, payload) = raw_frame_bits(s);
    (first & 0x0F, payload)
}

/// Reads one unmasked server frame: (its whole first byte: FIN, RSV bits, opcode; payload).
pub fn raw_frame_bits(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame header");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0], p)
}

/// A masked client frame of any length with an arbitrary first byte (FIN, RSV, opcode).
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    corecast::codec::client_frame(first, payload, [0x11, 0x22, 0x33, 0x44])
}

/// One HTTP/1.1 response read off a socket: status, head (status line and headers), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads exactly one response (head, then `Content-Length` bytes of body), leaving the
/// connection usable for the next request on it. `Err` if the server closed or reset it
/// before a whole response arrived.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<HttpResponse> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let mut resp = HttpResponse {
        status,
        head,
        body: String::new(),
    };
    let len: usize = resp
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    resp.body = String::from_utf8_lossy(&body).into_owned();
    Ok(resp)
}

/// A raw upgrade offering `extensions` (`Sec-WebSocket-Extensions`); returns the socket and
/// the 101 response head, for a test that then speaks frames by hand.
pub fn upgrade_offering(addr: SocketAddr, path: &str, extensions: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {extensions}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head)
}

/// Opens a /ws connection that offers permessage-deflate, subscribes to `topic` and reads (and
/// throws away) everything it is sent, on its own thread: each publish to `topic` then costs
/// its worker a compression.
pub fn deflate_reader(addr: SocketAddr, topic: &str) -> std::thread::JoinHandle<()> {
    let (mut s, head) = upgrade_offering(addr, "/ws", "permessage-deflate");
    assert!(head.contains("permessage-deflate"), "{head}");
    let sub = serde_json::json!({"op":"subscribe","topic":topic}).to_string();
    s.write_all(&masked(0x81, sub.as_bytes())).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    })
}

/// `len` pseudo-random lower-case letters: text that DEFLATE shrinks little, and slowly.
pub fn slow_to_compress(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// One sample of a `/metrics` body, by name and optionally one label; panics unless there
/// is exactly one, and it is a number.
pub fn sample(body: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let found: Vec<f64> = parsed
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a scalar"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {label:?}: {found:?}");
    found[0]
}
