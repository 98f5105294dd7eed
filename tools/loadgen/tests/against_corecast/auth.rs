//! `--tokens` and `storm` against a corecast with auth on (HS256, a secret file of the test's
//! own): tokens presented in the header, in a `connect` and in the query are accepted and
//! counted as the server counts them, refused ones are told apart by reason, and a storm
//! connects everyone while its probe keeps echoing.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use corecast::stats::Snapshot;
use corecast::Server;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::{config, run_load, u, wait_open};

/// The grant tools/mint-tokens.py writes by default: three subscribe patterns, one publish.
fn grant() -> Value {
    json!({"subscribe": ["chat.*", "user.{sub}", "feed.>"], "publish": ["chat.*"]})
}

/// A directory of this test's own with the server's HMAC secret in it.
struct Fixture {
    dir: PathBuf,
    key: EncodingKey,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("corecast-load-auth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = format!("{name}-secret-of-the-loadgen-tests-0123456789");
        std::fs::write(dir.join("secret"), format!("{secret}\n")).unwrap();
        Fixture {
            dir,
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A server with auth on, `?token=` accepted too.
    fn server(&self, workers: usize) -> Server {
        let mut cfg = config(workers);
        cfg.auth.hmac_secret_file = Some(self.dir.join("secret"));
        cfg.auth.query_token = true;
        Server::start(cfg).expect("server starts")
    }

    /// An HS256 token for `sub` that expires `exp_in` seconds from now, signed with `key`.
    fn token_with(key: &EncodingKey, sub: &str, exp_in: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({"sub": sub, "exp": now + exp_in, "corecast": grant()});
        jsonwebtoken::encode(&Header::default(), &claims, key).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        Fixture::token_with(&self.key, sub, 600)
    }

    /// Writes `tokens` one per line; returns the path for `--tokens`.
    fn file(&self, name: &str, tokens: &[String]) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, tokens.join("\n") + "\n").unwrap();
        path.display().to_string()
    }

    /// `n` good tokens for distinct users.
    fn users(&self, name: &str, n: usize) -> String {
        let tokens: Vec<String> = (0..n).map(|i| self.token(&format!("user-{i}"))).collect();
        self.file(name, &tokens)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn url(server: &Server) -> String {
    format!("ws://{}", server.local_addr())
}

/// The connection failures other than refused tokens.
fn other_failures(r: &Value) -> u64 {
    let f = &r["connect"]["failed"];
    [
        "refused",
        "reset",
        "timeout",
        "bad_handshake",
        "tls",
        "other",
    ]
    .iter()
    .map(|k| u(f, k))
    .sum()
}

fn denials(s: &Snapshot) -> u64 {
    s.denials_by.iter().sum()
}

#[test]
fn tokens_in_the_header_a_connect_and_the_query_are_accepted_and_counted() {
    let fx = Fixture::new("accepted");
    let server = fx.server(2);
    let tokens = fx.users("tokens", 30);
    // 60 connections over 30 tokens: line i mod 30, each token used twice.
    for (n, via) in ["header", "connect", "query"].iter().enumerate() {
        let (ok, r) = run_load(
            &url(&server),
            &format!(
                "--tokens {tokens} --token-via {via} connect --conns 60 --rate 3000 --hold 0.3"
            ),
        );
        assert!(ok, "{via}: {r}");
        assert_eq!(u(&r["connect"], "ok"), 60, "{via}: {r}");
        assert_eq!(u(&r["connect"]["failed"], "unauthorized"), 0, "{via}: {r}");
        assert_eq!(other_failures(&r), 0, "{via}: {r}");
        wait_open(&server, 0);
        let s = server.stats();
        assert_eq!(s.auth_connects, 60 * (n as u64 + 1), "{via}: {s:?}");
        assert_eq!(s.handshakes, 60 * (n as u64 + 1), "{via}: {s:?}");
        assert_eq!((s.auth_upgrades_refused, s.auth_connects_refused), (0, 0));
    }

    // JSON echo after a connect: a request before the connect's ok would be answered
    // `unauthorized`, so no error reply means each connection waited for its ok.
    let (ok, r) = run_load(
        &url(&server),
        &format!(
            "--tokens {tokens} --token-via connect --duration 0.5 --warmup 0.2 \
             echo --mode json --conns 10 --depth 2"
        ),
    );
    assert!(ok && u(&r, "received") > 100, "{r}");
    assert_eq!(u(&r, "server_errors"), 0, "{r}");
    // Raw echo takes its token in the header (/echo has no first message).
    let (ok, r) = run_load(
        &url(&server),
        &format!("--tokens {tokens} --duration 0.5 --warmup 0.2 echo --conns 10 --depth 4"),
    );
    assert!(ok && u(&r, "received") > 100, "{r}");
    assert_eq!(u(&r, "server_errors"), 0, "{r}");
    // Publish mode: each connection subscribes to chat.load-{i} and publishes to it, which
    // the grant (chat.*) allows both ways; every reply is the delivery of a publish.
    wait_open(&server, 0);
    let before = server.stats();
    let (ok, r) = run_load(
        &url(&server),
        &format!(
            "--tokens {tokens} --duration 0.5 --warmup 0.2 echo --mode publish --conns 10 \
             --depth 2"
        ),
    );
    assert!(ok && u(&r, "received") > 100, "{r}");
    assert_eq!(u(&r, "server_errors"), 0, "{r}");
    wait_open(&server, 0);
    let s = server.stats();
    assert_eq!(denials(&s), 0, "{s:?}");
    // Every reply counted was a delivery of an accepted publish (the last few publishes may
    // meet their subscriber closing, so deliveries can fall short of publishes).
    let (publishes, deliveries) = (
        s.publishes - before.publishes,
        s.deliveries - before.deliveries,
    );
    assert!(deliveries >= u(&r, "received"), "{s:?}");
    assert!(publishes >= deliveries, "{s:?}");
    server.shutdown().unwrap();
}

#[test]
fn refused_tokens_are_counted_apart_by_reason() {
    let fx = Fixture::new("refused");
    let server = fx.server(2);
    let stranger = EncodingKey::from_secret(b"another-secret-that-the-server-never-saw");
    // Lines: good, bad signature, expired (past the 5 s leeway), good.
    let mixed = fx.file(
        "mixed",
        &[
            fx.token("user-0"),
            Fixture::token_with(&stranger, "user-1", 600),
            Fixture::token_with(&fx.key, "user-2", -60),
            fx.token("user-3"),
        ],
    );
    for (n, via) in ["header", "connect"].iter().enumerate() {
        let (ok, r) = run_load(
            &url(&server),
            &format!(
                "--tokens {mixed} --token-via {via} connect --conns 40 --rate 3000 --hold 0.2"
            ),
        );
        assert!(ok, "some connected, so the run passes: {r}");
        let c = &r["connect"];
        assert_eq!(u(c, "ok"), 20, "{via}: {r}");
        assert_eq!(u(&c["failed"], "unauthorized"), 20, "{via}: {r}");
        assert_eq!(other_failures(&r), 0, "{via}: {r}");
        assert_eq!(
            c["unauthorized_reasons"],
            json!({"bad signature": 10, "token expired": 10}),
            "{via}: {r}"
        );
        wait_open(&server, 0);
        let s = server.stats();
        let (upgrades, connects) = if n == 0 { (20, 0) } else { (20, 20) };
        assert_eq!(
            (s.auth_upgrades_refused, s.auth_connects_refused),
            (upgrades, connects),
            "{via}: {s:?}"
        );
    }
    // Nothing but refused tokens: the run fails, and still reports what happened.
    let bad = fx.file("bad", &[Fixture::token_with(&stranger, "user-9", 600)]);
    let (ok, r) = run_load(
        &url(&server),
        &format!("--tokens {bad} connect --conns 10 --rate 3000 --hold 0.1"),
    );
    assert!(!ok, "{r}");
    assert_eq!(u(&r["connect"], "ok"), 0, "{r}");
    assert_eq!(u(&r["connect"]["failed"], "unauthorized"), 10, "{r}");
    wait_open(&server, 0);
    server.shutdown().unwrap();
}

#[test]
fn a_storm_with_tokens_connects_everyone_while_the_probe_echoes() {
    let fx = Fixture::new("storm");
    let server = fx.server(2);
    // 301 lines: the storm's 300 connections and the probe (connection 300) all distinct.
    let tokens = fx.users("tokens", 301);
    let (ok, r) = run_load(
        &url(&server),
        &format!(
            "--tokens {tokens} --token-via connect --warmup 0.3 storm --conns 300 --rate 0 \
             --hold 0.2"
        ),
    );
    assert!(ok, "{r}");
    assert_eq!(u(&r["connect"], "ok"), 300, "{r}");
    assert_eq!(other_failures(&r), 0, "{r}");
    let storm = &r["storm"];
    assert_eq!(storm["all_connected"], true, "{r}");
    let to_all = storm["time_to_all_connected_s"].as_f64().unwrap();
    assert!(
        to_all > 0.0 && to_all <= storm["time_to_settle_s"].as_f64().unwrap(),
        "{r}"
    );
    assert!(storm["conns_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    let opened: u64 = storm["opened_per_100ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(opened, 300, "{r}");
    let probe = &storm["probe"];
    assert_eq!(
        (probe["errors"].as_u64(), &probe["dropped"]),
        (Some(0), &json!(false))
    );
    // The probe always has a request in flight, so at least the one outstanding when the
    // storm began is counted in it.
    assert!(u(&probe["before_us"], "samples") > 0, "{r}");
    assert!(u(&probe["during_us"], "samples") > 0, "{r}");
    wait_open(&server, 0);
    let s = server.stats();
    assert_eq!((s.handshakes, s.auth_connects), (301, 301), "{s:?}");
    assert_eq!(s.auth_connects_refused, 0);
    server.shutdown().unwrap();
}
