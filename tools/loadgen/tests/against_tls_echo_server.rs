//! TLS clients against a TLS WebSocket server written by others: `corecast-load` over wss://
//! (certificate verification, names, versions, every scenario, big frames) and the
//! independent client scripts' wss:// mode, all against tests/clients/tls_echo_server.py (the
//! Python `websockets` package behind Python's ssl module) with a fresh CA made by rcgen.
//!
//! Until corecast itself speaks TLS this is the server on the other end; the stand-in answers
//! the JSON ops the load generator uses, so `broadcast` runs too. The stand-in needs Python
//! `websockets` (tools/install-test-deps.sh): without it these tests fail with an install
//! hint, or are skipped with a printed reason when CORECAST_SKIP_EXTERNAL_CLIENTS=1.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a stand-in may take to start listening, or to stop and report.
const SERVER_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest one client process may run before it is killed and the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str =
    "install the stand-in's Python package with `bash tools/install-test-deps.sh` \
     (pip install --user -r tests/clients/requirements.txt), \
     or set CORECAST_SKIP_EXTERNAL_CLIENTS=1 to skip these tests";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether the stand-in can run: yes when Python `websockets` imports; when it does not, a
/// failure, unless CORECAST_SKIP_EXTERNAL_CLIENTS=1 asks for a (loudly printed) skip.
fn stand_in_available(test: &str) -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import websockets.asyncio.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let problem = match probe {
        Ok(s) if s.success() => return true,
        Ok(_) => "python3 cannot import `websockets.asyncio.server`".to_string(),
        Err(e) => format!("cannot run python3 ({e})"),
    };
    if std::env::var("CORECAST_SKIP_EXTERNAL_CLIENTS").as_deref() == Ok("1") {
        // Straight to the process's stderr: the harness captures a passing test's output.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED: {test}: {problem} (CORECAST_SKIP_EXTERNAL_CLIENTS=1) !!!!!!!!\n"
        );
        return false;
    }
    panic!("{problem}: {INSTALL_HINT}");
}

#[path = "../../../tests/common/pki.rs"]
mod pki;
use pki::Pki;

/// tests/clients/tls_echo_server.py on a free port. It exits when its stdin closes, so a
/// test that panics (dropping this) takes it along.
struct StandIn {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl StandIn {
    fn start(pki: &Pki, extra: &[&str]) -> StandIn {
        let script = repo().join("tests/clients/tls_echo_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args([
                "--cert",
                &pki.arg("chain.pem"),
                "--key",
                &pki.arg("key.pem"),
            ])
            .args(["--exit-on-stdin-eof", "--lifetime", "120"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(SERVER_TIMEOUT)
            .expect("the stand-in prints `listening PORT`");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the stand-in: {first:?}"));
        StandIn {
            child,
            stdin,
            lines,
            port,
        }
    }

    fn url(&self) -> String {
        format!("wss://127.0.0.1:{}", self.port)
    }

    /// Stops the server and returns what it saw (connections, messages, peers, tls).
    fn finish(mut self) -> Value {
        drop(self.stdin.take());
        let line = self
            .lines
            .recv_timeout(SERVER_TIMEOUT)
            .expect("the stand-in reports when stopped");
        let deadline = Instant::now() + SERVER_TIMEOUT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the stand-in did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a client process did: its exit, its stdout and stderr.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The one JSON object `corecast-load --json` printed.
    fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "--json prints one line: {}", self.stdout);
        serde_json::from_str(lines[0]).expect("result is JSON")
    }
}

/// Runs `cmd` to completion within [`CLIENT_TIMEOUT`], without the CA variables of the
/// environment (each test says whose certificates it trusts).
fn run(mut cmd: Command) -> Run {
    cmd.env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env_remove("CORECAST_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_as_is(cmd)
}

fn run_as_is(mut cmd: Command) -> Run {
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > CLIENT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {CLIENT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        ok: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    eprintln!("$ {shown}\n{status}\n{}{}", run.stdout, run.stderr);
    run
}

/// `corecast-load --url URL --json ARGS...` (ARGS split on whitespace).
fn load_cmd(url: &str, args: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast-load"));
    cmd.args(["--url", url, "--json"])
        .args(args.split_whitespace());
    cmd
}

fn load(url: &str, args: &str) -> Run {
    run(load_cmd(url, args))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The stand-in's count of TLS sessions per "version cipher alpn".
fn sessions(seen: &Value) -> Vec<(String, u64)> {
    seen["tls"]
        .as_object()
        .expect("tls counts")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

const SHORT_ECHO: &str = "--duration 1 --warmup 0.2 echo --conns 4 --depth 2 --size 32";

#[test]
fn echo_over_wss_with_the_ca_counts_every_reply() {
    if !stand_in_available("echo over wss") {
        return;
    }
    let pki = Pki::new("echo");
    let server = StandIn::start(&pki, &[]);
    let r = load(
        &server.url(),
        &format!("--ca {} {SHORT_ECHO}", pki.arg("ca.pem")),
    );
    assert!(r.ok, "corecast-load failed");
    let v = r.json();
    assert_eq!(v["tls"], true, "{v}");
    assert_eq!(v["tls_version"], "TLSv1_3", "{v}");
    assert!(
        v["tls_cipher"].as_str().unwrap().starts_with("TLS13_"),
        "{v}"
    );
    assert_eq!(v["tls_alpn"], "http/1.1", "{v}");
    let c = &v["connect"];
    assert_eq!(u(c, "ok"), 4, "{v}");
    assert_eq!(u(&c["failed"], "tls"), 0, "{v}");
    assert_eq!(u(&c["tls_handshake_us"], "samples"), 4, "{v}");
    assert_eq!(u(&v, "server_errors"), 0, "{v}");
    let received = u(&v, "received");
    assert!(received > 200, "echo barely ran: {v}");

    let seen = server.finish();
    assert_eq!(u(&seen, "connections"), 4, "{seen}");
    // Every reply counted was a message the server received and echoed; the window is a
    // part of the run.
    assert!(u(&seen, "messages") >= received, "{seen} vs {received}");
    let s = sessions(&seen);
    assert_eq!(s.len(), 1, "{seen}");
    assert!(
        s[0].0.starts_with("TLSv1.3 ") && s[0].0.ends_with(" http/1.1"),
        "{seen}"
    );
    assert_eq!(s[0].1, 4, "{seen}");
}

#[test]
fn tls_1_2_is_negotiated_with_a_server_that_offers_nothing_newer() {
    if !stand_in_available("TLS 1.2") {
        return;
    }
    let pki = Pki::new("tls12");
    let server = StandIn::start(&pki, &["--max-tls", "1.2"]);
    let r = load(
        &server.url(),
        &format!("--ca {} {SHORT_ECHO}", pki.arg("ca.pem")),
    );
    assert!(r.ok, "corecast-load failed");
    let v = r.json();
    assert_eq!(v["tls_version"], "TLSv1_2", "{v}");
    assert!(
        v["tls_cipher"]
            .as_str()
            .unwrap()
            .starts_with("TLS_ECDHE_ECDSA_WITH_"),
        "{v}"
    );
    assert!(u(&v, "received") > 200, "{v}");
    assert_eq!(u(&v, "server_errors"), 0, "{v}");
    let seen = server.finish();
    let s = sessions(&seen);
    assert_eq!(s.len(), 1, "{seen}");
    assert!(s[0].0.starts_with("TLSv1.2 ECDHE-ECDSA-"), "{seen}");
}

#[test]
fn an_unknown_ca_is_refused_with_a_certificate_error() {
    if !stand_in_available("unknown CA") {
        return;
    }
    let pki = Pki::new("unknown-ca");
    let server = StandIn::start(&pki, &[]);
    // No --ca: the machine's store, which has never heard of this CA.
    let r = load(&server.url(), SHORT_ECHO);
    assert!(!r.ok, "an untrusted certificate must fail the run");
    assert!(
        r.stderr
            .contains("4 of 4 connections failed TLS: invalid peer certificate: UnknownIssuer"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--ca FILE"), "no hint: {}", r.stderr);
    let v = r.json();
    assert_eq!(u(&v["connect"], "ok"), 0, "{v}");
    assert_eq!(u(&v["connect"]["failed"], "tls"), 4, "{v}");
    assert_eq!(u(&v, "received"), 0, "{v}");
    let seen = server.finish();
    assert_eq!(u(&seen, "connections"), 0, "{seen}");
}

#[test]
fn insecure_accepts_a_certificate_nobody_vouches_for() {
    if !stand_in_available("--insecure") {
        return;
    }
    let pki = Pki::new("insecure");
    let server = StandIn::start(&pki, &[]);
    let r = load(&server.url(), &format!("--insecure {SHORT_ECHO}"));
    assert!(r.ok, "corecast-load --insecure failed");
    assert!(
        r.stderr.contains("certificate is not verified"),
        "{}",
        r.stderr
    );
    let v = r.json();
    assert_eq!(u(&v["connect"], "ok"), 4, "{v}");
    assert!(u(&v, "received") > 200, "{v}");
    assert_eq!(server.finish()["connections"], 4);
}

#[test]
fn the_server_name_is_what_the_certificate_is_checked_against() {
    if !stand_in_available("--server-name") {
        return;
    }
    let pki = Pki::new("server-name");
    let server = StandIn::start(&pki, &[]);
    let ca = pki.arg("ca.pem");
    let r = load(
        &server.url(),
        &format!("--ca {ca} --server-name wrong.example {SHORT_ECHO}"),
    );
    assert!(!r.ok, "a name the certificate lacks must fail the run");
    assert!(
        r.stderr
            .contains("certificate not valid for name \"wrong.example\""),
        "{}",
        r.stderr
    );
    assert_eq!(u(&r.json()["connect"]["failed"], "tls"), 4);
    // A name the certificate has, other than the URL's 127.0.0.1, is accepted.
    let r = load(
        &server.url(),
        &format!("--ca {ca} --server-name localhost {SHORT_ECHO}"),
    );
    assert!(r.ok, "--server-name localhost failed");
    assert_eq!(u(&r.json()["connect"], "ok"), 4);
    assert_eq!(server.finish()["connections"], 4);
}

#[test]
fn without_ca_the_machine_store_is_used() {
    if !stand_in_available("machine CA store") {
        return;
    }
    let pki = Pki::new("machine-store");
    let server = StandIn::start(&pki, &[]);
    // rustls-native-certs reads SSL_CERT_FILE as the machine's store, as OpenSSL does.
    let mut cmd = load_cmd(&server.url(), SHORT_ECHO);
    cmd.env("SSL_CERT_FILE", pki.arg("ca.pem"))
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let r = run_as_is(cmd);
    assert!(r.ok, "the CA in SSL_CERT_FILE was not trusted");
    assert_eq!(u(&r.json()["connect"], "ok"), 4);
    assert_eq!(server.finish()["connections"], 4);
}

#[test]
fn connect_with_source_ips_and_broadcast_run_over_wss() {
    if !stand_in_available("connect and broadcast over wss") {
        return;
    }
    let pki = Pki::new("scenarios");
    let server = StandIn::start(&pki, &[]);
    let ca = pki.arg("ca.pem");
    let r = load(
        &server.url(),
        &format!("--ca {ca} --src-ips 3 --threads 2 connect --conns 30 --rate 300 --hold 0.2"),
    );
    assert!(r.ok, "connect failed");
    let v = r.json();
    assert_eq!(u(&v["connect"], "ok"), 30, "{v}");
    assert_eq!(u(&v["connect"]["tls_handshake_us"], "samples"), 30, "{v}");

    let r = load(
        &server.url(),
        &format!(
            "--ca {ca} --threads 2 --duration 1 --warmup 0.2 \
             broadcast --subscribers 20 --publishers 2 --rate 100 --grace 3"
        ),
    );
    assert!(r.ok, "broadcast failed");
    let v = r.json();
    assert_eq!(u(&v, "server_errors"), 0, "{v}");
    assert!(
        u(&v, "expected") >= 20 * 50,
        "too few publishes to check: {v}"
    );
    assert_eq!(u(&v, "received"), u(&v, "expected"), "{v}");
    assert_eq!(u(&v, "lost"), 0, "{v}");

    let seen = server.finish();
    assert_eq!(u(&seen, "connections"), 30 + 22, "{seen}");
    // --src-ips 3 spread the connect scenario over 127.0.0.1..3.
    assert_eq!(
        seen["peers"],
        serde_json::json!(["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        "{seen}"
    );
}

#[test]
fn frames_larger_than_the_tls_buffers_are_echoed_whole() {
    if !stand_in_available("large frames over wss") {
        return;
    }
    let pki = Pki::new("large");
    let server = StandIn::start(&pki, &[]);
    // 4 x 200 KB in flight per connection: each write passes rustls' 64 KiB buffer limit, so
    // partial plaintext writes and WRITABLE resumption are exercised; a frame that came back
    // different would count in server_errors.
    let r = load(
        &server.url(),
        &format!(
            "--ca {} --duration 1 --warmup 0.2 echo --conns 2 --depth 4 --size 200000",
            pki.arg("ca.pem")
        ),
    );
    assert!(r.ok, "corecast-load failed");
    let v = r.json();
    assert_eq!(u(&v, "server_errors"), 0, "{v}");
    assert!(u(&v, "received") >= 20, "{v}");
    let seen = server.finish();
    assert!(u(&seen, "messages") >= u(&v, "received"), "{seen}");
}

/// How a client script is told the CA: the `--ca` flag or the `CORECAST_CA_FILE` variable.
enum CaBy<'a> {
    Flag(&'a str),
    Env(&'a str),
    Nothing,
}

/// An independent client script over wss:// in its --echo-only mode (the stand-in does not
/// speak the whole JSON protocol the scripts check).
fn client_script(program: &str, script: &str, ca: CaBy<'_>, url: &str) -> Run {
    let mut cmd = Command::new(program);
    cmd.current_dir(repo()).arg(script).arg("--echo-only");
    match ca {
        CaBy::Flag(path) => {
            cmd.args(["--ca", path]);
        }
        CaBy::Env(path) => {
            cmd.env("CORECAST_CA_FILE", path);
        }
        CaBy::Nothing => {}
    }
    cmd.arg(url)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_as_is(cmd)
}

#[test]
fn python_websockets_client_script_over_wss() {
    if !stand_in_available("py_client.py over wss") {
        return;
    }
    let pki = Pki::new("py-client");
    let server = StandIn::start(&pki, &[]);
    let script = "tests/clients/py_client.py";
    let ca = pki.arg("ca.pem");
    for by in [CaBy::Flag(&ca), CaBy::Env(&ca)] {
        let r = client_script("python3", script, by, &server.url());
        assert!(r.ok, "py_client.py over wss failed");
        assert!(r.stdout.contains(": 4 checks passed"), "{}", r.stdout);
    }
    let r = client_script("python3", script, CaBy::Nothing, &server.url());
    assert!(!r.ok, "py_client.py trusted an unknown CA");
    assert!(
        r.stderr.contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        r.stderr
    );
    let seen = server.finish();
    assert_eq!(u(&seen, "connections"), 2, "{seen}");
    assert_eq!(u(&seen, "messages"), 4, "{seen}");
}

#[test]
fn node_ws_client_script_over_wss() {
    if !stand_in_available("node_client.mjs over wss") {
        return;
    }
    let ws = repo().join("tests/clients/node_modules/ws/package.json");
    if !ws.exists() {
        if std::env::var("CORECAST_SKIP_EXTERNAL_CLIENTS").as_deref() == Ok("1") {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED: node_client.mjs over wss: {} is missing \
                 (CORECAST_SKIP_EXTERNAL_CLIENTS=1) !!!!!!!!\n",
                ws.display()
            );
            return;
        }
        panic!(
            "{} is missing: run `bash tools/install-test-deps.sh`",
            ws.display()
        );
    }
    let pki = Pki::new("node-client");
    let server = StandIn::start(&pki, &[]);
    let script = "tests/clients/node_client.mjs";
    let ca = pki.arg("ca.pem");
    for by in [CaBy::Flag(&ca), CaBy::Env(&ca)] {
        let r = client_script("node", script, by, &server.url());
        assert!(r.ok, "node_client.mjs over wss failed");
        assert!(r.stdout.contains(": 6 checks passed"), "{}", r.stdout);
    }
    let r = client_script("node", script, CaBy::Nothing, &server.url());
    assert!(!r.ok, "node_client.mjs trusted an unknown CA");
    // The stand-in sends its CA along, so OpenSSL finds a self-signed root it does not trust.
    assert!(
        r.stderr
            .contains("self-signed certificate in certificate chain"),
        "{}",
        r.stderr
    );
    let seen = server.finish();
    assert_eq!(u(&seen, "connections"), 2, "{seen}");
    assert_eq!(u(&seen, "messages"), 4, "{seen}");
}
