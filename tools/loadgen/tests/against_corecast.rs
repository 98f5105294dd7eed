//! Runs the `corecast-load` binary against a real corecast server started in this process and
//! checks that what the load generator reports agrees with what the server counted.

use std::process::Command;
use std::time::{Duration, Instant};

use corecast::{Config, Server};
use serde_json::Value;

#[path = "against_corecast/auth.rs"]
mod auth;
#[path = "../../../tests/common/pki.rs"]
mod pki;

fn config(workers: usize) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers,
        pin: false,
        ..Config::default()
    }
}

fn start(workers: usize) -> Server {
    Server::start(config(workers)).expect("server starts")
}

/// A server speaking wss with a certificate from `pki`.
fn start_tls(workers: usize, pki: &pki::Pki) -> Server {
    let mut cfg = config(workers);
    cfg.tls = Some(corecast::conn::TlsFiles {
        cert: pki.path("chain.pem"),
        key: pki.path("key.pem"),
    });
    Server::start(cfg).expect("server starts")
}

/// Runs the load generator with `--json` plus `args` (split on whitespace) and returns its
/// one result object.
fn load(server: &Server, args: &str) -> Value {
    load_url(&format!("ws://{}", server.local_addr()), args)
}

fn load_url(url: &str, args: &str) -> Value {
    let (ok, v) = run_load(url, args);
    assert!(ok, "corecast-load {args:?} failed");
    v
}

/// Runs the load generator and returns whether it exited 0, and its one result object
/// (which it prints whatever its exit status).
fn run_load(url: &str, args: &str) -> (bool, Value) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new(env!("CARGO_BIN_EXE_corecast-load"))
        .args(["--url", url, "--json", "--threads", "2"])
        .args(["--server-pid", &std::process::id().to_string()])
        .args(&args)
        .output()
        .expect("corecast-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "--json prints exactly one line: {stdout}\nstatus {}, stderr: {stderr}",
        out.status
    );
    if !out.status.success() {
        eprintln!("corecast-load {args:?}: {}, stderr: {stderr}", out.status);
    }
    let v = serde_json::from_str(lines[0]).expect("result is JSON");
    (out.status.success(), v)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The server's open-connection gauge reaches `n` within a few seconds.
fn wait_open(server: &Server, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().open != n {
        assert!(
            Instant::now() < deadline,
            "open = {}, want {n}",
            server.stats().open
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connect_counts_match_the_server() {
    let server = start(2);
    let r = load(&server, "connect --conns 300 --rate 3000 --hold 0.5");
    let c = &r["connect"];
    assert_eq!(u(c, "ok"), 300, "{r}");
    assert_eq!(
        u(&c["failed"], "refused") + u(&c["failed"], "timeout"),
        0,
        "{r}"
    );
    let s = server.stats();
    assert_eq!(s.handshakes, 300);
    assert_eq!(s.handshake_failures, 0);
    // The load generator read this process's RSS, so a per-connection figure came back.
    assert!(u(&r, "server_rss_bytes") > 0, "{r}");
    assert!(r["rss_per_conn_bytes"].is_number(), "{r}");
    wait_open(&server, 0);
    server.shutdown().unwrap();
}

#[test]
fn echo_replies_are_all_counted_by_the_server() {
    let server = start(2);
    let r = load(
        &server,
        "--duration 1 --warmup 0.3 echo --conns 20 --depth 4 --size 32",
    );
    let received = u(&r, "received");
    assert!(received > 1000, "echo barely ran: {r}");
    assert_eq!(r["tls"], false, "{r}");
    assert!(r["tls_version"].is_null(), "{r}");
    assert_eq!(u(&r, "server_errors"), 0, "{r}");
    assert_eq!(u(&r["connect"], "ok"), 20, "{r}");
    wait_open(&server, 0);
    let s = server.stats();
    // Raw echo: every message in went out again, and the measured window is a part of it.
    assert_eq!(s.messages_in, s.messages_out);
    assert!(
        s.messages_out >= received,
        "server {} < client {received}",
        s.messages_out
    );
    assert_eq!(s.protocol_errors, 0);
    server.shutdown().unwrap();
}

#[test]
fn json_echo_mode_gets_no_error_replies() {
    let server = start(1);
    let r = load(
        &server,
        "--duration 0.5 --warmup 0.2 echo --mode json --conns 5 --depth 2 --size 16",
    );
    assert!(u(&r, "received") > 100, "{r}");
    assert_eq!(u(&r, "server_errors"), 0, "{r}");
    wait_open(&server, 0);
    let s = server.stats();
    assert_eq!(s.bad_requests, 0);
    assert_eq!(s.messages_in, s.messages_out);
    server.shutdown().unwrap();
}

#[test]
fn broadcast_delivers_every_message_to_subscribers_on_all_workers() {
    let server = start(2);
    let r = load(
        &server,
        "--duration 1 --warmup 0.3 broadcast --subscribers 200 --publishers 2 --rate 200 --grace 3",
    );
    let expected = u(&r, "expected");
    let received = u(&r, "received");
    assert!(expected >= 200 * 100, "too few publishes to check: {r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(received, expected, "{r}");
    assert_eq!(u(&r, "server_errors"), 0, "{r}");
    wait_open(&server, 0);
    let s = server.stats();
    assert_eq!(s.dropped, 0);
    assert_eq!(s.slow_closes, 0);
    // Every publish the server accepted reached all 200 subscribers; the client's window is a
    // subset of the run, so its count is at most the server's.
    assert_eq!(s.deliveries, s.publishes * 200, "{s:?}");
    assert!(s.deliveries >= received);
    server.shutdown().unwrap();
}

#[test]
fn plot_writes_an_svg_with_both_charts() {
    let server = start(1);
    let path = std::env::temp_dir().join(format!("corecast-load-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let args = format!(
        "--duration 1 --warmup 0.2 --plot {} echo --conns 4 --depth 2",
        path.display()
    );
    let r = load(&server, &args);
    assert!(u(&r, "received") > 100, "{r}");
    let svg = std::fs::read_to_string(&path).expect("--plot wrote the file");
    let _ = std::fs::remove_file(&path);
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(80)]
    );
    assert!(
        svg.contains("latency distribution"),
        "latency chart missing"
    );
    assert!(svg.contains("<polyline"), "no data series drawn");
    server.shutdown().unwrap();
}

#[test]
fn echo_over_wss_is_counted_by_the_server() {
    let pki = pki::Pki::new("load-echo");
    let server = start_tls(2, &pki);
    let url = format!("wss://localhost:{}", server.local_addr().port());
    let r = load_url(
        &url,
        &format!(
            "--ca {} --duration 1 --warmup 0.3 echo --conns 20 --depth 4 --size 32",
            pki.arg("ca.pem")
        ),
    );
    assert_eq!(r["tls"], true, "{r}");
    assert_eq!(r["tls_version"], "TLSv1_3", "{r}");
    assert_eq!(r["tls_alpn"], "http/1.1", "{r}");
    assert_eq!(u(&r["connect"], "ok"), 20, "{r}");
    assert_eq!(u(&r["connect"]["failed"], "tls"), 0, "{r}");
    let received = u(&r, "received");
    assert!(received > 1000, "echo barely ran: {r}");
    wait_open(&server, 0);
    let s = server.stats();
    assert_eq!((s.tls_upgrades, s.tls_errors), (20, 0), "{s:?}");
    assert_eq!(s.messages_in, s.messages_out);
    assert!(s.messages_out >= received, "{s:?} vs {received}");
    server.shutdown().unwrap();
}

#[test]
fn broadcast_over_wss_reaches_every_subscriber_on_both_workers() {
    let pki = pki::Pki::new("load-broadcast");
    let server = start_tls(2, &pki);
    let url = format!("wss://localhost:{}", server.local_addr().port());
    let r = load_url(
        &url,
        &format!(
            "--ca {} --duration 1 --warmup 0.3 broadcast --subscribers 200 --publishers 2 \
             --rate 200 --grace 3",
            pki.arg("ca.pem")
        ),
    );
    let expected = u(&r, "expected");
    assert!(expected >= 200 * 100, "too few publishes to check: {r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "received"), expected, "{r}");
    wait_open(&server, 0);
    let s = server.stats();
    assert_eq!(s.tls_upgrades, 202, "{s:?}");
    assert_eq!(s.deliveries, s.publishes * 200, "{s:?}");
    server.shutdown().unwrap();
}

/// `--deflate` against a server with `--permessage-deflate`: every connection negotiates it,
/// the 1 KiB documents arrive compressed to every subscriber (publishes are compressed by the
/// client, inflated by the server), and a delivery costs a fraction of the plain bytes.
#[test]
fn broadcast_with_deflate_arrives_compressed_and_smaller() {
    let run = |deflate_server: bool, deflate_client: bool| {
        let mut cfg = config(2);
        cfg.permessage_deflate = deflate_server;
        let server = Server::start(cfg).expect("server starts");
        let flag = if deflate_client { "--deflate" } else { "" };
        let r = load(
            &server,
            &format!(
                "{flag} --duration 1 --warmup 0.3 broadcast --subscribers 100 --publishers 2 \
                 --rate 100 --grace 3 --size 1024"
            ),
        );
        let expected = u(&r, "expected");
        assert!(expected >= 100 * 50, "too few publishes to check: {r}");
        assert_eq!(u(&r, "lost"), 0, "{r}");
        assert_eq!(u(&r, "received"), expected, "{r}");
        assert_eq!(u(&r, "server_errors"), 0, "{r}");
        wait_open(&server, 0);
        let s = server.stats();
        server.shutdown().unwrap();
        (r, s)
    };
    let (plain, _) = run(false, false);
    assert!(plain["deflate_conns"].is_null(), "{plain}");
    let plain_bytes = plain["bytes_per_delivery"].as_f64().unwrap();
    assert!(plain_bytes > 1000.0, "a 1 KiB document: {plain}");

    let (z, s) = run(true, true);
    assert_eq!(u(&z, "deflate_conns"), 102, "{z}");
    assert_eq!(s.deflate_upgrades, 102, "{s:?}");
    // Every delivery came compressed (the subscriptions' acks are small, and plain).
    assert!(u(&z, "inflated_messages") >= u(&z, "received"), "{z}");
    assert!(
        s.messages_inflated > 0,
        "the publishes were compressed: {s:?}"
    );
    assert!(s.messages_compressed > 0, "{s:?}");
    let z_bytes = z["bytes_per_delivery"].as_f64().unwrap();
    assert!(
        z_bytes * 2.0 < plain_bytes,
        "deflate {z_bytes} B vs plain {plain_bytes} B per delivery"
    );

    // Offered to a server without the flag: declined, and the run is a plain one.
    let (declined, s) = run(false, true);
    assert_eq!(u(&declined, "deflate_conns"), 0, "{declined}");
    assert_eq!(u(&declined, "inflated_messages"), 0, "{declined}");
    assert_eq!(s.deflate_upgrades, 0);
}
