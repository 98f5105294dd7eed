//! The server against clients written by others: the Python `websockets` package and the Node
//! `ws` package, each driven by a script in tests/clients/ that checks subscribe, publish,
//! broadcast, echo, error replies, unsubscribe, close codes and the raw /echo endpoint field by
//! field, over ws:// and over wss:// (a CA made for the test, which the client trusts alone).
//!
//! Their packages come from tools/install-test-deps.sh. Without them these tests fail and say
//! how to install them, unless CORECAST_SKIP_EXTERNAL_CLIENTS=1 is set.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A client script that has not finished after this long is killed and the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str =
    "install the independent clients' packages with `bash tools/install-test-deps.sh` \
     (pip install --user -r tests/clients/requirements.txt; npm ci --prefix tests/clients), \
     or set CORECAST_SKIP_EXTERNAL_CLIENTS=1 to skip these tests";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn skip_requested(what: &str) -> bool {
    if std::env::var("CORECAST_SKIP_EXTERNAL_CLIENTS").as_deref() == Ok("1") {
        // Straight to the process's stderr: the test harness captures eprintln! of passing
        // tests, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED: {what} independent client test \
             (CORECAST_SKIP_EXTERNAL_CLIENTS=1) !!!!!!!!\n"
        );
        return true;
    }
    false
}

/// Runs `program args...` with a deadline; returns (exit success, combined report).
fn run_with_timeout(program: &str, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"));
    // Drain both pipes on threads so that a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            break Some(status);
        }
        if started.elapsed() > CLIENT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let verdict = match status {
        Some(s) => format!("exit status: {s}"),
        None => format!("killed after {CLIENT_TIMEOUT:?} without finishing"),
    };
    let report = format!(
        "$ {program} {}\n{verdict}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        args.join(" ")
    );
    (status.is_some_and(|s| s.success()), report)
}

/// The script against a server without --permessage-deflate: the client offers it (both
/// do by default), the server declines, and everything works uncompressed.
fn run_client(program: &str, script: &str) {
    let server = common::start(common::config(2));
    let base = format!("ws://{}", server.local_addr());
    let (ok, report) = run_with_timeout(program, &[script, "--expect-deflate", "off", &base]);
    let stats = server.stats();
    server.shutdown().expect("server shuts down cleanly");
    assert!(ok, "independent client failed:\n{report}");
    assert_eq!(stats.deflate_upgrades, 0, "{stats:?}");
    print!("{report}");
}

/// The same script over wss://, against a server with a certificate from a CA made for the
/// test; the client trusts that CA alone (`--ca`).
fn run_client_tls(program: &str, script: &str) {
    let pki = common::tls::Pki::new(&format!("clients-{program}"));
    let mut cfg = common::config(2);
    cfg.tls = Some(pki.files());
    let server = common::start(cfg);
    let base = format!("wss://localhost:{}", server.local_addr().port());
    let ca = pki.arg("ca.pem");
    let (ok, report) = run_with_timeout(
        program,
        &[script, "--ca", &ca, "--expect-deflate", "off", &base],
    );
    let stats = server.stats();
    server.shutdown().expect("server shuts down cleanly");
    assert!(ok, "independent client failed over wss:\n{report}");
    assert!(stats.tls_upgrades > 5, "{stats:?}");
    assert_eq!(stats.tls_errors, 0, "{stats:?}");
    print!("{report}");
}

/// The same script against a server with --permessage-deflate: both clients offer it by
/// default and compress what they send (Python every message, Node those of 1 KiB or more),
/// so the server must inflate it; with `--expect-deflate on` the scripts also publish a
/// large and a tiny document across both workers and send a compression bomb.
fn run_client_deflate(program: &str, script: &str) {
    let mut cfg = common::config(2);
    cfg.permessage_deflate = true;
    let server = common::start(cfg);
    let base = format!("ws://{}", server.local_addr());
    let (ok, report) = run_with_timeout(program, &[script, "--expect-deflate", "on", &base]);
    let stats = server.stats();
    server.shutdown().expect("server shuts down cleanly");
    assert!(
        ok,
        "independent client failed with permessage-deflate:\n{report}"
    );
    assert_eq!(stats.deflate_upgrades, stats.handshakes, "{stats:?}");
    assert!(stats.messages_inflated > 0, "{stats:?}");
    // The 40 KB publish went out compressed, once per worker that had a subscriber.
    assert!(stats.messages_compressed > 0, "{stats:?}");
    // The bomb and the 70,000-byte message: each closed (1009) at the size limit.
    assert!(stats.protocol_errors >= 2, "{stats:?}");
    print!("{report}");
}

fn python_ready() -> bool {
    if skip_requested("Python websockets") {
        return false;
    }
    let probe = Command::new("python3")
        .args(["-c", "import websockets.sync.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(s) if s.success() => {}
        Ok(_) => panic!("python3 cannot import `websockets.sync.client`: {INSTALL_HINT}"),
        Err(e) => panic!("cannot run python3 ({e}): {INSTALL_HINT}"),
    }
    true
}

#[test]
fn python_websockets_client() {
    if python_ready() {
        run_client("python3", "tests/clients/py_client.py");
    }
}

#[test]
fn python_websockets_client_over_wss() {
    if python_ready() {
        run_client_tls("python3", "tests/clients/py_client.py");
    }
}

#[test]
fn python_websockets_client_with_permessage_deflate() {
    if python_ready() {
        run_client_deflate("python3", "tests/clients/py_client.py");
    }
}

fn node_ready() -> bool {
    if skip_requested("Node ws") {
        return false;
    }
    let ws = clients_dir().join("node_modules/ws/package.json");
    assert!(ws.exists(), "{} is missing: {INSTALL_HINT}", ws.display());
    match Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        other => panic!("cannot run node ({other:?}): {INSTALL_HINT}"),
    }
    true
}

#[test]
fn node_ws_client() {
    if node_ready() {
        run_client("node", "tests/clients/node_client.mjs");
    }
}

#[test]
fn node_ws_client_over_wss() {
    if node_ready() {
        run_client_tls("node", "tests/clients/node_client.mjs");
    }
}

#[test]
fn node_ws_client_with_permessage_deflate() {
    if node_ready() {
        run_client_deflate("node", "tests/clients/node_client.mjs");
    }
}
