//! Tokens and keys for the tests that run corecast with auth on: key pairs from the openssl
//! CLI (none is checked in), tokens minted with jsonwebtoken, a JWKS served by Python's
//! http.server with its requests counted, and clients that present a token in the upgrade's
//! `Authorization` header or in a `connect` message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

use super::{Client, WATCHDOG};

/// A directory of the test's own, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("corecast-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` whole, by renaming, so that a server never serves half of it.
    pub fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        let path = self.path(name);
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the openssl CLI, which must succeed.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI (tools/install-test-deps.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// An EC P-256 key pair in `dir`: the signing key, and the path of `NAME.pub` (SPKI PEM,
/// for `--auth-public-key`).
pub fn p256(dir: &Dir, name: &str) -> (EncodingKey, PathBuf) {
    let key = dir.path(&format!("{name}.key"));
    let public = dir.path(&format!("{name}.pub"));
    let (k, p) = (key.to_str().unwrap(), public.to_str().unwrap());
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        k,
    ]);
    openssl(&["pkey", "-in", k, "-pubout", "-out", p]);
    let enc = EncodingKey::from_ec_pem(&std::fs::read(&key).unwrap()).unwrap();
    (enc, public)
}

/// The JWK of a P-256 key, with `kid`.
pub fn jwk(key: &EncodingKey, kid: &str) -> Value {
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, Algorithm::ES256).unwrap();
    let mut v = serde_json::to_value(jwk).unwrap();
    v["kid"] = json!(kid);
    v
}

pub fn jwks(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An ES256 token for `sub`, valid for ten minutes, naming `kid` if given.
pub fn es256(key: &EncodingKey, kid: Option<&str>, sub: &str) -> String {
    let header = Header {
        alg: Algorithm::ES256,
        kid: kid.map(Into::into),
        ..Header::default()
    };
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": now() + 600}), key).unwrap()
}

/// An HS256 token for `sub`, valid for ten minutes, with `grant` as its `corecast` claim.
pub fn hs256(secret: &[u8], sub: &str, grant: Option<&Value>) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 600});
    if let Some(g) = grant {
        claims["corecast"] = g.clone();
    }
    let key = EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// An HMAC secret file in `dir` (at least 32 bytes, as corecast requires); returns it and
/// its path.
pub fn secret_file(dir: &Dir) -> (Vec<u8>, PathBuf) {
    let secret = b"a test secret that is comfortably over 32 bytes".to_vec();
    let path = dir.write("hmac-secret", &secret);
    (secret, path)
}

/// A `/ws` client whose upgrade carries `token` as `Authorization: Bearer`.
pub fn connect_with(addr: SocketAddr, token: &str) -> Client {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    let bearer = format!("Bearer {token}").parse().unwrap();
    req.headers_mut().insert("Authorization", bearer);
    let (ws, resp) = tungstenite::client(req, stream).expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// A `/ws` client that upgrades without a token and then sends `{"op":"connect"}` with
/// `token`: `Ok` with the reply if it was accepted, `Err((code, reason))` of the close frame
/// if it was refused.
pub fn connect_message(addr: SocketAddr, token: &str) -> Result<(Client, Value), (u16, String)> {
    let mut c = super::connect(addr, "/ws");
    super::send(&mut c, json!({"op":"connect","token":token,"id":1}));
    loop {
        match c.read().expect("a reply to connect") {
            Message::Text(t) => return Ok((c, serde_json::from_str(&t).unwrap())),
            Message::Close(Some(f)) => return Err((u16::from(f.code), f.reason.to_string())),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected reply to connect: {other:?}"),
        }
    }
}

/// One echo round trip; panics unless the same data comes back.
pub fn echo(c: &mut Client, data: Value) {
    super::send(c, json!({"op":"echo","data":data.clone()}));
    assert_eq!(super::recv(c), json!({"op":"echo","data":data}));
}

/// The upgrade request for `/ws` carrying `token`, byte for byte.
pub fn upgrade_request(token: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
}

/// Reads a response head (up to the blank line) off `s`; its status code and the head.
pub fn read_head(s: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head)
}

/// A raw upgrade with `token` in the header; the socket once its 101 has arrived.
pub fn raw_upgraded_with(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(upgrade_request(token).as_bytes()).unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    s
}

/// Python's http.server on 127.0.0.1 serving a directory, its request lines collected (it
/// logs one per request to stderr), so a test can count the fetches corecast made.
pub struct JwksServer {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

const SERVE: &str = r#"
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.HTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Runs a Python HTTP server `script` (given `args`) that prints its port on its first
/// line of output; returns the child, that port and its collected stderr.
pub fn spawn_py_server(script: &str, args: &[&str]) -> (Child, u16, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new("python3")
        .args(["-u", "-c", script])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no port: {line:?}"));
    let log = super::process::collect_lines(child.stderr.take().unwrap());
    (child, port, log)
}

impl JwksServer {
    pub fn start(dir: &Path) -> JwksServer {
        let (child, port, log) = spawn_py_server(SERVE, &[dir.to_str().unwrap()]);
        JwksServer { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET requests for `path` served so far.
    pub fn gets(&self, path: &str) -> usize {
        let want = format!("\"GET {path} ");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&want))
            .count()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of the admin endpoint's `/metrics`, by name and optionally one label.
pub fn metric(admin: SocketAddr, name: &str, label: Option<(&str, &str)>) -> f64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    super::sample(body, name, label)
}
