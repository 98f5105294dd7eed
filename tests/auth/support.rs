//! What tests/auth.rs builds on: keys made by the openssl CLI once per run, tokens minted by
//! PyJWT (tests/clients/mint.py) and jose (tests/clients/mint.mjs) from specs written here,
//! servers with auth on, tungstenite clients that present a token each way one can arrive,
//! and the scripts (minting, the independent clients) run with their input on stdin.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corecast::auth::Settings;
use corecast::Server;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use crate::common::{self, Client, WATCHDOG};

/// What `--auth-audience` and `--auth-issuer` require of every token here.
pub const AUD: &str = "corecast-tests";
pub const ISS: &str = "https://issuer.corecast.test";
/// The P-256 key comes from a JWKS file with this `kid`, so that a token naming another kid
/// is an unknown key (a kid-less key of the token's type would be tried instead).
pub const EC_KID: &str = "ec-1";
/// `--auth-leeway` of the servers here: small, so that expiry tests are quick.
pub const LEEWAY_S: u64 = 1;

/// A minting or client process that has not finished after this long is killed and the test
/// fails.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(45);

/// How long [`assert_quiet`] listens for a message that must not come.
const QUIET: Duration = Duration::from_millis(200);

pub const INSTALL_HINT: &str =
    "install the independent clients' and token libraries' packages with \
     `bash tools/install-test-deps.sh` (pip install --user -r tests/clients/requirements.txt; \
     npm ci --prefix tests/clients)";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Unix time with its fraction, for timing a close against a token's `exp`.
pub fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The keys, in a directory under the test target's tmp dir: the HMAC secret file (48
/// random bytes as base64, with a trailing newline, as `openssl rand` writes it), RSA 2048,
/// EC P-256 and Ed25519 pairs (PKCS#8 private keys for the minting scripts, SPKI PEM for
/// corecast; the EC key reaches corecast as a JWKS file with [`EC_KID`]), and for each
/// algorithm a key of the same kind that corecast does not trust.
pub struct Keys {
    pub secret: PathBuf,
    pub rsa: PathBuf,
    pub rsa_pub: PathBuf,
    pub ec: PathBuf,
    pub ed: PathBuf,
    pub ed_pub: PathBuf,
    pub jwks: PathBuf,
    /// Untrusted: another secret, RSA, P-256 and Ed25519 key, in [`Alg::ALL`]'s order.
    pub strangers: [PathBuf; 4],
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI (tools/install-test-deps.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    out.stdout
}

/// Generated once per run: RSA key generation is the slow part.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        forget_dead_runs(tmp);
        let dir = tmp.join(format!("auth-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = |name: &str| dir.join(name);
        std::fs::write(p("secret"), openssl(&["rand", "-base64", "48"])).unwrap();
        std::fs::write(p("stranger.secret"), openssl(&["rand", "-base64", "48"])).unwrap();
        let pair = |name: &str, genkey: &[&str]| {
            let key = p(&format!("{name}.key"));
            let public = p(&format!("{name}.pub"));
            let mut args = vec!["genpkey"];
            args.extend_from_slice(genkey);
            args.extend_from_slice(&["-out", key.to_str().unwrap()]);
            openssl(&args);
            let (k, o) = (key.to_str().unwrap(), public.to_str().unwrap());
            openssl(&["pkey", "-in", k, "-pubout", "-out", o]);
            (key, public)
        };
        let rsa_gen: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
        let ec_gen: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        let ed_gen: &[&str] = &["-algorithm", "ED25519"];
        let (rsa, rsa_pub) = pair("rsa", rsa_gen);
        let (ec, _) = pair("ec", ec_gen);
        let (ed, ed_pub) = pair("ed", ed_gen);
        let strangers = [
            p("stranger.secret"),
            pair("stranger-rsa", rsa_gen).0,
            pair("stranger-ec", ec_gen).0,
            pair("stranger-ed", ed_gen).0,
        ];
        // The JWK's x and y, by jsonwebtoken; only the key's public half goes in.
        let enc = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&ec).unwrap()).unwrap();
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, jsonwebtoken::Algorithm::ES256)
            .unwrap();
        let mut jwk = serde_json::to_value(jwk).unwrap();
        jwk["kid"] = json!(EC_KID);
        jwk["use"] = json!("sig");
        std::fs::write(p("jwks.json"), json!({ "keys": [jwk] }).to_string()).unwrap();
        Keys {
            secret: p("secret"),
            rsa,
            rsa_pub,
            ec,
            ed,
            ed_pub,
            jwks: p("jwks.json"),
            strangers,
        }
    })
}

/// Removes the key directories of earlier runs whose process is gone (statics are never
/// dropped, so a run cannot remove its own).
fn forget_dead_runs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("auth-keys-")) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The signing algorithms, each with the key corecast trusts for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    pub const ALL: [Alg; 4] = [Alg::Hs256, Alg::Rs256, Alg::Es256, Alg::EdDsa];

    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn key(self) -> &'static Path {
        let k = keys();
        match self {
            Alg::Hs256 => &k.secret,
            Alg::Rs256 => &k.rsa,
            Alg::Es256 => &k.ec,
            Alg::EdDsa => &k.ed,
        }
    }

    /// A key of this algorithm's kind that corecast does not trust.
    pub fn stranger(self) -> &'static Path {
        let i = Alg::ALL.iter().position(|a| *a == self).unwrap();
        &keys().strangers[i]
    }
}

/// The grant of the tokens here unless a test says otherwise.
pub fn grant() -> Value {
    json!({"subscribe": ["chat.*", "user.{sub}"], "publish": ["chat.*"]})
}

/// One token for a minting script: see tests/clients/mint.py for the fields.
#[derive(Debug, Clone)]
pub struct Spec(Value);

/// A token of `alg` for `sub` that every server here accepts: `aud`, `iss`, ten minutes of
/// `exp`, [`grant`], and a `jti` of its own, so that no two specs make the same token and
/// the verified-token cache never answers for another test's token.
pub fn token(alg: Alg, sub: &str) -> Spec {
    static N: AtomicU64 = AtomicU64::new(0);
    let now = now();
    let mut s = json!({
        "alg": alg.name(),
        "key": alg.key(),
        "claims": {
            "sub": sub, "iat": now, "exp": now + 600, "aud": AUD, "iss": ISS,
            "jti": format!("{}-{}", std::process::id(), N.fetch_add(1, Relaxed)),
            "corecast": grant(),
        },
    });
    if alg == Alg::Es256 {
        s["headers"] = json!({ "kid": EC_KID });
    }
    Spec(s)
}

impl Spec {
    /// Sets claim `name` (`Value::Null`: removes it).
    pub fn claim(mut self, name: &str, v: Value) -> Spec {
        let claims = self.0["claims"].as_object_mut().unwrap();
        if v.is_null() {
            claims.remove(name);
        } else {
            claims.insert(name.into(), v);
        }
        self
    }

    pub fn header(mut self, name: &str, v: Value) -> Spec {
        self.0["headers"][name] = v;
        self
    }

    /// Signed by another key file (the same `alg`).
    pub fn signed_with(mut self, key: &Path) -> Spec {
        self.0["key"] = json!(key);
        self
    }

    /// One of the scripts' attacks (see tests/clients/mint.py).
    pub fn attack(mut self, name: &str) -> Spec {
        self.0["attack"] = json!(name);
        self
    }

    /// A signed token whose payload is then replaced by its claims merged with `claims`.
    pub fn tampered(mut self, claims: Value) -> Spec {
        self.0["attack"] = json!("tamper");
        self.0["tamper"] = claims;
        self
    }

    /// An unsecured JWT (`alg: none`), written by the library itself.
    pub fn unsigned(mut self) -> Spec {
        self.0["alg"] = json!("none");
        self.0.as_object_mut().unwrap().remove("key");
        self.0.as_object_mut().unwrap().remove("headers");
        self
    }

    pub fn exp(&self) -> u64 {
        self.0["claims"]["exp"].as_u64().unwrap()
    }
}

/// The token libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    /// Python's PyJWT, with `cryptography` (tests/clients/mint.py).
    PyJwt,
    /// Node's `jose` (tests/clients/mint.mjs).
    Jose,
}

impl Lib {
    pub const BOTH: [Lib; 2] = [Lib::PyJwt, Lib::Jose];

    pub fn name(self) -> &'static str {
        match self {
            Lib::PyJwt => "PyJWT",
            Lib::Jose => "jose",
        }
    }

    /// The tokens for `specs`, in order, from one process.
    pub fn mint(self, specs: &[Spec]) -> Vec<String> {
        let (program, script) = match self {
            Lib::PyJwt => ("python3", "tests/clients/mint.py"),
            Lib::Jose => ("node", "tests/clients/mint.mjs"),
        };
        let input = Value::Array(specs.iter().map(|s| s.0.clone()).collect()).to_string();
        let (ok, out, report) = run_script(program, &[script], &input);
        assert!(
            ok,
            "{} could not mint:\n{report}\n{INSTALL_HINT}",
            self.name()
        );
        let tokens: Vec<String> = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "{}: not a JSON list of tokens ({e}):\n{report}",
                self.name()
            )
        });
        assert_eq!(tokens.len(), specs.len(), "{report}");
        tokens
    }

    pub fn mint_one(self, spec: Spec) -> String {
        self.mint(&[spec]).pop().unwrap()
    }
}

/// Runs `program args...` in the repository with `input` on stdin and a deadline; returns
/// (exit success, stdout, a report of the whole run for failure messages).
pub fn run_script(program: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    // Written and read on threads, so that neither side can block on a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let verdict = match status {
        Some(s) => format!("exit status: {s}"),
        None => format!("killed after {SCRIPT_TIMEOUT:?} without finishing"),
    };
    let report = format!(
        "$ {program} {}\n{verdict}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        args.join(" ")
    );
    (status.is_some_and(|s| s.success()), stdout, report)
}

/// The servers' auth flags: every key source (the secret, RSA and Ed25519 PEM files, the
/// P-256 key in a JWKS file), `aud` and `iss` required, a one-second leeway.
pub fn settings() -> Settings {
    let k = keys();
    Settings {
        hmac_secret_file: Some(k.secret.clone()),
        public_keys: vec![k.rsa_pub.clone(), k.ed_pub.clone()],
        jwks: Some(k.jwks.display().to_string()),
        leeway: Duration::from_secs(LEEWAY_S),
        audience: Some(AUD.into()),
        issuer: Some(ISS.into()),
        ..Settings::default()
    }
}

/// An in-process server on 127.0.0.1:0 with two workers (so that connections land on both),
/// the admin endpoint on, and `auth`.
pub fn server(auth: Settings) -> Server {
    let mut cfg = common::config(2);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.auth = auth;
    common::start(cfg)
}

/// An upgrade the server answered with an HTTP status instead of 101.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// `WWW-Authenticate`, or empty.
    pub challenge: String,
    pub body: String,
}

/// An upgrade of `path` by tungstenite, with `Authorization: Bearer TOKEN` if `bearer`.
pub fn upgrade(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Result<Client, Refusal> {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = bearer {
        let value = format!("Bearer {t}").parse().unwrap();
        req.headers_mut().insert("authorization", value);
    }
    match tungstenite::client(req, stream) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = resp.body().as_deref().unwrap_or_default();
            Err(Refusal {
                status: resp.status().as_u16(),
                challenge,
                body: String::from_utf8_lossy(body).into_owned(),
            })
        }
        Err(e) => panic!("upgrade of {path}: {e}"),
    }
}

/// An upgrade that must be accepted.
pub fn open(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Client {
    upgrade(addr, path, bearer).unwrap_or_else(|r| panic!("upgrade of {path} refused: {r:?}"))
}

/// An upgrade that must be refused.
pub fn refusal(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Refusal {
    match upgrade(addr, path, bearer) {
        Ok(_) => panic!("upgrade of {path} accepted, expected a refusal"),
        Err(r) => r,
    }
}

/// An upgrade that must be refused with 401 and a Bearer challenge naming `error`, whose
/// answer does not repeat the token; returns the challenge's `error_description`.
pub fn refused_401(addr: SocketAddr, path: &str, bearer: Option<&str>, error: &str) -> String {
    // RFC 6750 §3.1: a request that cannot carry its token that way is a 400, a token that
    // fails a 401; both with the Bearer challenge.
    let status = if error == "invalid_request" { 400 } else { 401 };
    let r = refusal(addr, path, bearer);
    assert_eq!(r.status, status, "{r:?}");
    let want = format!("Bearer error=\"{error}\", error_description=\"");
    assert!(r.challenge.starts_with(&want), "{r:?}");
    let token = bearer.or_else(|| path.split_once("token=").map(|(_, t)| t));
    if let Some(t) = token {
        let signature = t.rsplit('.').next().filter(|s| !s.is_empty()).unwrap_or(t);
        assert!(
            !r.body.contains(signature) && !r.challenge.contains(signature),
            "the 401 repeats the token: {r:?}"
        );
    }
    r.challenge[want.len()..].trim_end_matches('"').to_owned()
}

/// Sends `v` and returns the next JSON message.
pub fn request(ws: &mut Client, v: Value) -> Value {
    common::send(ws, v);
    common::recv(ws)
}

/// A `connect` with `token` on a fresh connection; returns it and the reply.
pub fn connect_message(addr: SocketAddr, token: &str) -> (Client, Value) {
    let mut ws = open(addr, "/ws", None);
    let reply = request(&mut ws, json!({"op":"connect","token":token,"id":1}));
    (ws, reply)
}

/// The reply is an error with `code`, echoing `id`.
#[track_caller]
pub fn assert_error(reply: &Value, id: Value, code: &str) {
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(
        (&reply["id"], reply["code"].as_str()),
        (&id, Some(code)),
        "{reply}"
    );
}

/// Reads until the server's close frame, answers it (so that the server's closing handshake
/// ends), and returns its code and reason.
pub fn closed(ws: &mut Client) -> (u16, String) {
    loop {
        let got = match ws.read() {
            Ok(Message::Close(Some(f))) => (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => (1005, String::new()),
            Ok(Message::Text(t)) => panic!("expected a close, got {t}"),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        };
        // tungstenite queued the answer; this sends it (the peer may be gone already).
        let _ = ws.flush();
        return got;
    }
}

/// Polls `f` until it holds, failing after the watchdog: for a gauge that follows a
/// connection's end, which the server sees a moment after the client.
#[track_caller]
pub fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Nothing arrives on `ws`: an echo round trip proves the server has handled everything
/// sent before it, then a short listen catches a delivery still on its way from another
/// worker.
#[track_caller]
pub fn assert_quiet(ws: &mut Client) {
    let got = request(ws, json!({"op":"echo","data":"quiet?"}));
    assert_eq!(
        got,
        json!({"op":"echo","data":"quiet?"}),
        "unexpected message"
    );
    ws.get_ref().set_read_timeout(Some(QUIET)).unwrap();
    let got = ws.read();
    ws.get_ref().set_read_timeout(Some(WATCHDOG)).unwrap();
    match got {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// The server is healthy: no thread ended, `/healthz` answers 200, and a client with a good
/// token (a fresh one, so no cache answers for it) connects and echoes.
pub fn assert_healthy(server: &Server, good: &str) {
    assert!(
        server.wait_exit(Duration::ZERO).is_none(),
        "a server thread ended"
    );
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(common::read_response(&mut s).unwrap().status, 200);
    let mut ws = open(server.local_addr(), "/ws", Some(good));
    let got = request(&mut ws, json!({"op":"echo","id":"h","data":"healthy"}));
    assert_eq!(got, json!({"op":"echo","id":"h","data":"healthy"}));
}

/// A raw socket that wrote a whole upgrade request with `extra` header lines, and the
/// server's answer to it.
pub fn raw_upgrade(addr: SocketAddr, target: &str, extra: &str) -> common::HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    common::read_response(&mut s).expect("an HTTP answer")
}

/// Waits for `ws`'s close, and the unix time it came at.
pub fn closed_at(ws: &mut WebSocket<TcpStream>) -> (u16, String, f64) {
    let (code, reason) = closed(ws);
    (code, reason, now_f64())
}
