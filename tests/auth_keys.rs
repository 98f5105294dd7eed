//! Token keys through real servers: a JWKS served by Python's http.server (plain, and over
//! TLS with a CA the test makes and hands corecast through SSL_CERT_FILE), fetched by the
//! control thread and rewritten by the test; the key files reloaded by SIGHUP in the binary;
//! start-up errors for key files that cannot be used. Keys come from the openssl CLI and
//! rcgen at test time; none is checked in.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pki::Pki;
use common::process::Proc;
use common::tokens::{metric, openssl, spawn_py_server, Dir};
use common::WATCHDOG;
use corecast::auth::{Auth, Refusal, Settings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A key pair in `dir`: `NAME.key` (PKCS#8) and `NAME.pub` (SPKI PEM).
fn pair(dir: &Dir, name: &str, genkey: &[&str]) -> (EncodingKey, PathBuf) {
    let key = dir.path(&format!("{name}.key"));
    let public = dir.path(&format!("{name}.pub"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genkey);
    args.extend_from_slice(&["-out", key.to_str().unwrap()]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let pem = std::fs::read(&key).unwrap();
    let enc = if genkey.contains(&"ED25519") {
        EncodingKey::from_ed_pem(&pem)
    } else {
        EncodingKey::from_ec_pem(&pem)
    };
    (enc.unwrap(), public)
}

const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
const ED25519: &[&str] = &["-algorithm", "ED25519"];

/// The JWK of an EC P-256 key, with `kid`.
fn jwk(key: &EncodingKey, kid: &str) -> Value {
    let mut v = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(key, Algorithm::ES256).unwrap(),
    )
    .unwrap();
    v["kid"] = json!(kid);
    v
}

fn jwks(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn es256(key: &EncodingKey, kid: &str, sub: &str) -> String {
    let header = Header {
        alg: Algorithm::ES256,
        kid: Some(kid.into()),
        ..Header::default()
    };
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": now() + 600}), key).unwrap()
}

/// Python's http.server on 127.0.0.1 serving `dir` (over TLS with `tls`: chain and key),
/// its request lines collected.
struct PyServer {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

const SERVE: &str = r#"
import functools, http.server, ssl, sys
directory, chain, key = sys.argv[1], sys.argv[2], sys.argv[3]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
server = http.server.HTTPServer(("127.0.0.1", 0), handler)
if chain:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl PyServer {
    fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> PyServer {
        let (chain, key) = tls.map_or((String::new(), String::new()), |(c, k)| {
            (c.display().to_string(), k.display().to_string())
        });
        let (child, port, log) = spawn_py_server(SERVE, &[dir.to_str().unwrap(), &chain, &key]);
        PyServer { child, port, log }
    }

    /// GET requests for `path` served so far.
    fn gets(&self, path: &str) -> usize {
        let want = format!("\"GET {path} ");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&want))
            .count()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it holds, failing after `limit`.
fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The JWKS URL's keys arrive by the control thread's fetch: a new kid is unknown until
/// the fetch its token asked for, a removed one unknown after it (its cached acceptance
/// gone), and 10,000 tokens with random kids within the refresh interval cost one fetch.
#[test]
fn a_jwks_url_is_fetched_for_new_kids_at_most_once_per_refresh_interval() {
    const INTERVAL: Duration = Duration::from_secs(3);
    let dir = Dir::new("jwks-http");
    let (key_a, _) = pair(&dir, "a", P256);
    let (key_b, _) = pair(&dir, "b", P256);
    let served = Dir::new("jwks-http-served");
    served.write("jwks.json", &jwks(&[jwk(&key_a, "a")]));
    let py = PyServer::start(&served.0, None);
    let mut cfg = common::config(1);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.auth = Settings {
        jwks: Some(format!("http://127.0.0.1:{}/jwks.json", py.port)),
        jwks_refresh_interval: INTERVAL,
        ..Settings::default()
    };
    let server = common::start(cfg);
    let admin = server.admin_addr().unwrap();
    let auth: Arc<Auth> = server.auth().expect("auth is on").clone();
    let fetched = |n: u64| auth.stats().jwks_fetches_ok.load(Relaxed) >= n;
    wait_for("the first fetch", WATCHDOG, || fetched(1));
    assert_eq!(py.gets("/jwks.json"), 1);

    let token_a = es256(&key_a, "a", "alice");
    let token_b = es256(&key_b, "b", "bob");
    assert_eq!(auth.verify(&token_a, now()).unwrap().sub(), "alice");
    assert_eq!(
        auth.verify(&token_b, now()).err(),
        Some(Refusal::UnknownKey)
    );

    // Rotation at the issuer: b comes, a goes. Nothing is fetched until a token asks.
    served.write("jwks.json", &jwks(&[jwk(&key_b, "b")]));
    assert_eq!(
        auth.verify(&token_b, now()).err(),
        Some(Refusal::UnknownKey)
    );
    wait_for("the fetch token b asked for", INTERVAL + WATCHDOG, || {
        fetched(2)
    });
    let second = Instant::now();
    assert_eq!(auth.verify(&token_b, now()).unwrap().sub(), "bob");
    assert_eq!(
        auth.verify(&token_a, now()).err(),
        Some(Refusal::UnknownKey),
        "a removed key admits nothing, even what it admitted before"
    );
    assert_eq!(py.gets("/jwks.json"), 2);

    // The flood: 10,000 tokens, each with a kid of its own.
    let flood: Vec<String> = (0..10_000)
        .map(|i| {
            es256(
                &key_b,
                &format!("random-{i}-{}", i * 7919 % 10_007),
                "mallory",
            )
        })
        .collect();
    let started = Instant::now();
    for t in &flood {
        assert_eq!(auth.verify(t, now()).err(), Some(Refusal::UnknownKey));
    }
    let took = started.elapsed();
    assert!(
        took < INTERVAL,
        "the flood took {took:?}, longer than the interval"
    );
    wait_for("the fetch the flood asked for", INTERVAL + WATCHDOG, || {
        fetched(3)
    });
    let gap = second.elapsed();
    assert!(
        gap >= INTERVAL - Duration::from_millis(200),
        "the flood's fetch came {gap:?} after the last one, sooner than the interval"
    );
    // Another interval and more: nothing else was asked, nothing else is fetched.
    std::thread::sleep(INTERVAL + Duration::from_secs(1));
    assert_eq!(py.gets("/jwks.json"), 3, "10,000 unknown kids: one fetch");
    assert_eq!(auth.stats().jwks_fetches_ok.load(Relaxed), 3);
    assert_eq!(auth.stats().jwks_fetches_failed.load(Relaxed), 0);
    assert_eq!(
        metric(
            admin,
            "corecast_auth_jwks_fetches_total",
            Some(("result", "ok"))
        ),
        3.0
    );
    assert_eq!(metric(admin, "corecast_auth_keys", None), 1.0);
    assert_eq!(
        metric(
            admin,
            "corecast_auth_verifications_total",
            Some(("outcome", "unknown_key"))
        ),
        10_003.0
    );

    // The issuer's server goes away: the fetch fails, the keys held stay.
    drop(py);
    assert_eq!(
        auth.reload().map_err(|e| e.to_string()),
        Ok(()),
        "no files to read"
    );
    wait_for("the failed fetch", WATCHDOG, || {
        auth.stats().jwks_fetches_failed.load(Relaxed) >= 1
    });
    assert_eq!(auth.key_count(), 1);
    let fresh = es256(&key_b, "b", "carol");
    assert_eq!(auth.verify(&fresh, now()).unwrap().sub(), "carol");
    server.shutdown().unwrap();
}

/// https: fetched through rustls with the roots SSL_CERT_FILE names, and refused without
/// them; the binary runs the fetch (SSL_CERT_FILE is per process).
#[test]
fn an_https_jwks_is_fetched_with_the_roots_ssl_cert_file_names() {
    let pki = Pki::new("auth-jwks-https");
    let dir = Dir::new("jwks-https");
    let (key_a, _) = pair(&dir, "a", P256);
    let served = Dir::new("jwks-https-served");
    served.write("jwks.json", &jwks(&[jwk(&key_a, "a"), jwk(&key_a, "a2")]));
    let py = PyServer::start(
        &served.0,
        Some((&pki.path("chain.pem"), &pki.path("key.pem"))),
    );
    let url = format!("https://localhost:{}/jwks.json", py.port);
    let trusting = Proc::start_with_env(
        &["--auth-jwks", &url],
        &[
            ("SSL_CERT_FILE", Some(&pki.arg("ca.pem"))),
            ("SSL_CERT_DIR", None),
        ],
    );
    let ok = Some(("result", "ok"));
    trusting.wait_metric("corecast_auth_jwks_fetches_total", ok, WATCHDOG, |v| {
        v >= 1.0
    });
    assert_eq!(trusting.metric("corecast_auth_keys", None), 2.0);
    assert_eq!(trusting.metric("corecast_auth_configured", None), 1.0);
    assert!(py.gets("/jwks.json") >= 1);

    // With another CA as the only root, the TLS handshake fails and no key is taken.
    let other = Pki::new("auth-jwks-https-other");
    let before = py.gets("/jwks.json");
    let doubting = Proc::start_with_env(
        &["--auth-jwks", &url],
        &[
            ("SSL_CERT_FILE", Some(&other.arg("ca.pem"))),
            ("SSL_CERT_DIR", None),
        ],
    );
    let failed = Some(("result", "failed"));
    doubting.wait_metric("corecast_auth_jwks_fetches_total", failed, WATCHDOG, |v| {
        v >= 1.0
    });
    assert_eq!(doubting.metric("corecast_auth_keys", None), 0.0);
    assert_eq!(doubting.metric("corecast_auth_jwks_fetches_total", ok), 0.0);
    assert_eq!(py.gets("/jwks.json"), before, "no request got through");
    let log = doubting.log().join("\n");
    assert!(log.contains("JWKS fetch failed"), "{log}");
}

/// SIGHUP reads the key files again: a file made unusable keeps the keys held (logged,
/// counted, naming the file), a good one replaces them; the secret is never logged.
#[test]
fn sighup_reloads_the_key_files_and_a_failed_reload_keeps_the_keys() {
    const SECRET: &str = "a secret of more than thirty-two bytes for the reload test";
    let dir = Dir::new("sighup");
    let (_, ed_a) = pair(&dir, "ed-a", ED25519);
    let (_, ed_b) = pair(&dir, "ed-b", ED25519);
    let secret = dir.write("secret", format!("{SECRET}\n").as_bytes());
    let rotating = dir.write("rotating.pem", &std::fs::read(&ed_a).unwrap());
    let p = Proc::start(&[
        "--auth-hmac-secret-file",
        secret.to_str().unwrap(),
        "--auth-public-key",
        ed_a.to_str().unwrap(),
        "--auth-public-key",
        rotating.to_str().unwrap(),
    ]);
    assert_eq!(p.metric("corecast_auth_keys", None), 3.0);
    let hup = || {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGHUP) };
    };

    dir.write(
        "rotating.pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    hup();
    let failed = Some(("result", "failed"));
    p.wait_metric("corecast_auth_key_reloads_total", failed, WATCHDOG, |v| {
        v == 1.0
    });
    assert_eq!(
        p.metric("corecast_auth_keys", None),
        3.0,
        "the keys held stay"
    );
    let log = p.log().join("\n");
    assert!(
        log.contains("token key reload failed") && log.contains("rotating.pem"),
        "{log}"
    );

    dir.write("rotating.pem", &std::fs::read(&ed_b).unwrap());
    hup();
    let ok = Some(("result", "ok"));
    p.wait_metric("corecast_auth_key_reloads_total", ok, WATCHDOG, |v| {
        v == 1.0
    });
    assert_eq!(p.metric("corecast_auth_keys", None), 3.0);
    wait_for("the reload's log line", WATCHDOG, || {
        p.log()
            .iter()
            .any(|l| l.contains("token keys reloaded (3 key(s))"))
    });
    let log = p.log().join("\n");
    assert!(!log.contains("thirty-two bytes for the reload"), "{log}");
    assert_eq!(p.terminate().code(), Some(0));
}

/// Runs the binary with `args` and returns (exit code, stderr) when it exits by itself.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn key_files_that_cannot_be_used_stop_the_start_with_exit_2() {
    let dir = Dir::new("start-errors");
    let (_, public) = pair(&dir, "ed", ED25519);
    let private = dir.path("ed.key");
    let short = dir.write("short-secret", b"hunter2-is-short\n");
    let jwks_garbage = dir.write("jwks.json", b"<html>not a jwks</html>");
    let missing = dir.path("missing.pem");
    let public = public.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--auth-public-key", missing.to_str().unwrap()],
            vec!["missing.pem", "cannot read"],
        ),
        (
            vec!["--auth-public-key", private.to_str().unwrap()],
            vec!["ed.key", "private key"],
        ),
        (
            vec!["--auth-hmac-secret-file", short.to_str().unwrap()],
            vec!["short-secret", "shorter than 32 bytes"],
        ),
        (
            vec!["--auth-jwks", jwks_garbage.to_str().unwrap()],
            vec!["jwks.json", "not a JWKS"],
        ),
        (
            vec![
                "--auth-public-key",
                public,
                "--anonymous-subscribe",
                "user.{sub}",
            ],
            vec!["user.{sub}"],
        ),
        (
            vec!["--auth-jwks", "https://u:pw-in-url@idp.example/"],
            vec!["--auth-jwks: "],
        ),
    ];
    for (args, says) in cases {
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        for s in says {
            assert!(stderr.contains(s), "{args:?}: expected {s:?} in {stderr}");
        }
        assert!(
            !stderr.contains("hunter2") && !stderr.contains("pw-in-url"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_reload_fetches_at_once_even_while_an_unknown_kid_waits_for_the_interval() {
    // A long interval: an unknown kid's fetch waits for it; a reload (SIGHUP) must not.
    const INTERVAL: Duration = Duration::from_secs(60);
    let dir = Dir::new("jwks-reload-wait");
    let (key_a, _) = pair(&dir, "a", P256);
    let (key_b, _) = pair(&dir, "b", P256);
    let served = Dir::new("jwks-reload-wait-served");
    served.write("jwks.json", &jwks(&[jwk(&key_a, "a")]));
    let py = PyServer::start(&served.0, None);
    let mut cfg = common::config(1);
    cfg.auth = Settings {
        jwks: Some(format!("http://127.0.0.1:{}/jwks.json", py.port)),
        jwks_refresh_interval: INTERVAL,
        ..Settings::default()
    };
    let server = common::start(cfg);
    let auth: Arc<Auth> = server.auth().expect("auth is on").clone();
    let fetched = |n: u64| auth.stats().jwks_fetches_ok.load(Relaxed) >= n;
    wait_for("the first fetch", WATCHDOG, || fetched(1));
    served.write("jwks.json", &jwks(&[jwk(&key_a, "a"), jwk(&key_b, "b")]));
    let token_b = es256(&key_b, "b", "bob");
    // Asks for a fetch, which waits out the interval after the first one.
    assert_eq!(
        auth.verify(&token_b, now()).err(),
        Some(Refusal::UnknownKey)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        py.gets("/jwks.json"),
        1,
        "the kid's fetch waits for the interval"
    );
    let asked = Instant::now();
    assert!(auth.reload().is_ok());
    wait_for("the reload's fetch", WATCHDOG, || fetched(2));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the reload's fetch took {:?}",
        asked.elapsed()
    );
    assert_eq!(auth.verify(&token_b, now()).unwrap().sub(), "bob");
    // And the kid's request was answered by that fetch: nothing more comes of it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(py.gets("/jwks.json"), 2);
    server.shutdown().unwrap();
}
