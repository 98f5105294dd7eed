//! The admin HTTP endpoint under clients that misbehave: a head or body trickled a byte at a
//! time, idle connections, more connections than the cap, keep-alive, RFC 9112 framing
//! errors, the body limit, and shutdown (in-process and of the binary) while a client holds a
//! connection open.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use corecast::control::admin::{HEAD_DEADLINE, MAX_ADMIN_CONNECTIONS, QUEUE_WAIT};
use corecast::control::endpoints::BODY_DEADLINE;
use serde_json::json;

/// How long a request from a well-behaved client may take while others misbehave.
const PROMPT: Duration = Duration::from_secs(1);
/// A trickling client's pace.
const TRICKLE: Duration = Duration::from_millis(200);

fn admin_config(workers: usize) -> corecast::Config {
    let mut cfg = config(workers);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

fn open(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s
}

/// Sends `raw` on a new connection and reads one response.
fn exchange(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut s = open(addr);
    s.write_all(raw).unwrap();
    read_response(&mut s).unwrap()
}

/// A request with the body's Content-Length filled in.
fn post(path: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Runs `f` and returns its result with how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// A client that sends `bytes` one at a time every [`TRICKLE`] on its own thread, and
/// reports how long after connecting the server closed the connection and what, if
/// anything, it answered.
struct Trickler {
    done: mpsc::Receiver<(Duration, Vec<u8>)>,
    threads: Vec<JoinHandle<()>>,
}

impl Trickler {
    fn start(addr: SocketAddr, bytes: &'static [u8]) -> Trickler {
        let s = open(addr);
        let mut writer = s.try_clone().unwrap();
        let mut reader = s;
        let started = Instant::now();
        let (tx, done) = mpsc::channel();
        let w = std::thread::spawn(move || {
            for b in bytes {
                if writer.write_all(std::slice::from_ref(b)).is_err() {
                    return;
                }
                std::thread::sleep(TRICKLE);
            }
        });
        let r = std::thread::spawn(move || {
            let mut got = Vec::new();
            // EOF or a reset: either way the server ended it.
            let _ = reader.read_to_end(&mut got);
            let _ = tx.send((started.elapsed(), got));
        });
        Trickler {
            done,
            threads: vec![w, r],
        }
    }

    /// Waits (bounded) for the server to close the connection.
    fn closed(self) -> (Duration, Vec<u8>) {
        let r = self
            .done
            .recv_timeout(WATCHDOG + WATCHDOG)
            .expect("the server never closed the trickling connection");
        for t in self.threads {
            t.join().unwrap();
        }
        r
    }
}

/// A head longer than the head deadline at the trickling pace (2 x 5 s / 200 ms bytes).
const SLOW_HEAD: &[u8] =
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: 0123456789012345678901234567890123456789\r\n\r\n";

/// Scrapes /metrics on a new connection and returns the value of one unlabelled sample.
fn metric(admin: SocketAddr, name: &str) -> f64 {
    let resp = exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 200);
    let lines = resp.body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let found: Vec<f64> = parsed
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => panic!("{name} is not a counter or gauge"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0]
}

#[test]
fn a_trickling_head_delays_no_one_and_is_cut_at_the_head_deadline() {
    let server = start(admin_config(2));
    let admin = server.admin_addr().unwrap();
    let mut sub = connect(server.local_addr(), "/ws");
    send(&mut sub, json!({"op":"subscribe","topic":"t"}));
    assert_eq!(recv(&mut sub), json!({"op":"ok"}));

    let slow = Trickler::start(admin, SLOW_HEAD);
    std::thread::sleep(Duration::from_millis(500)); // it is mid-head now
    let (scrape, took) = timed(|| exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(scrape.status, 200);
    assert!(
        took < PROMPT,
        "scrape took {took:?} with a trickler present"
    );
    eprintln!("scrape with a trickler present: {took:?}");
    let (publish, took) =
        timed(|| exchange(admin, &post("/publish", "", br#"{"topic":"t","data":1}"#)));
    assert_eq!(
        (publish.status, publish.body.as_str()),
        (202, r#"{"queued_workers":2}"#)
    );
    assert!(
        took < PROMPT,
        "publish took {took:?} with a trickler present"
    );
    eprintln!("publish with a trickler present: {took:?}");
    assert_eq!(recv(&mut sub)["data"], 1);

    let (after, answer) = slow.closed();
    eprintln!("trickler cut after {after:?}");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(
        after >= HEAD_DEADLINE - TRICKLE && after < HEAD_DEADLINE + PROMPT,
        "trickler cut after {after:?}, deadline {HEAD_DEADLINE:?}"
    );
    assert_eq!(metric(admin, "corecast_admin_request_timeouts_total"), 1.0);
    server.shutdown().unwrap();
}

#[test]
fn idle_connections_do_not_delay_a_scrape() {
    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let idle: Vec<TcpStream> = (0..20).map(|_| open(admin)).collect();
    let (resp, took) = timed(|| exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok\n"));
    assert!(
        took < PROMPT,
        "health check took {took:?} behind 20 idle connections"
    );
    let (resp, took) = timed(|| exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(resp.status, 200);
    assert!(
        took < PROMPT,
        "scrape took {took:?} behind 20 idle connections"
    );
    eprintln!("scrape behind 20 idle connections: {took:?}");
    drop(idle);
    server.shutdown().unwrap();
}

#[test]
fn keep_alive_serves_two_requests_then_closes_when_idle_past_the_head_deadline() {
    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let mut s = open(admin);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_response(&mut s).unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "ok\n"));
    assert_eq!(first.header("connection"), None, "{}", first.head);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let second = read_response(&mut s).unwrap();
    assert_eq!(second.status, 200);
    assert!(second.body.contains("corecast_connections_open 0"));

    // Idle between requests: closed once the head deadline has passed, without an answer.
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let idle = idle_from.elapsed();
    eprintln!("idle keep-alive connection closed after {idle:?}");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        idle >= HEAD_DEADLINE - TRICKLE && idle < HEAD_DEADLINE + PROMPT,
        "idle connection closed after {idle:?}"
    );
    server.shutdown().unwrap();
}

#[test]
fn rfc9112_framing_errors_get_exact_statuses() {
    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let body = br#"{"data":1}"#;
    // (what, request, status, whether the service answers it: hyper's own refusals carry
    // no body, the service's a JSON error)
    let cases: [(&str, &[u8], u16, bool); 7] = [
        (
            "two different Content-Length values",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n{\"data\":1}",
            400,
            false,
        ),
        (
            "a Content-Length list with different values",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10, 11\r\n\r\n{\"data\":1}",
            400,
            false,
        ),
        (
            "Content-Length, then Transfer-Encoding",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\nTransfer-Encoding: chunked\r\n\r\na\r\n{\"data\":1}\r\n0\r\n\r\n",
            400,
            true,
        ),
        (
            "Transfer-Encoding, then Content-Length",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 15\r\n\r\na\r\n{\"data\":1}\r\n0\r\n\r\n",
            400,
            true,
        ),
        (
            "chunked without Content-Length",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\na\r\n{\"data\":1}\r\n0\r\n\r\n",
            411,
            true,
        ),
        (
            "no Content-Length at all",
            b"POST /publish HTTP/1.1\r\nHost: x\r\n\r\n",
            411,
            true,
        ),
        (
            "the same Content-Length twice (allowed)",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Length: 10\r\n\r\n{\"data\":1}",
            202,
            true,
        ),
    ];
    for (what, raw, want, by_service) in cases {
        let resp = exchange(admin, raw);
        assert_eq!(resp.status, want, "{what}: {}{}", resp.head, resp.body);
        if want >= 400 && by_service {
            let err: serde_json::Value = serde_json::from_str(&resp.body)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", resp.body));
            assert_eq!(err["op"], "error", "{what}");
        } else if want >= 400 {
            assert_eq!(resp.body, "", "{what}");
        }
    }
    // Only the accepted one was published.
    assert_eq!(metric(admin, "corecast_api_publishes_total"), 1.0);
    // A valid request on a fresh connection still works.
    assert_eq!(exchange(admin, &post("/publish", "", body)).status, 202);
    server.shutdown().unwrap();
}

#[test]
fn a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413() {
    let mut cfg = admin_config(1);
    cfg.max_message_size = 1000;
    let server = start(cfg);
    let admin = server.admin_addr().unwrap();
    let mut sub = connect(server.local_addr(), "/ws");
    send(&mut sub, json!({"op":"subscribe","topic":"t"}));
    assert_eq!(recv(&mut sub), json!({"op":"ok"}));

    let body = |len: usize| {
        let shell = r#"{"topic":"t","data":""}"#.len();
        format!(r#"{{"topic":"t","data":"{}"}}"#, "x".repeat(len - shell))
    };
    let exact = body(1000);
    assert_eq!(exact.len(), 1000);
    let resp = exchange(admin, &post("/publish", "", exact.as_bytes()));
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (202, r#"{"queued_workers":1}"#)
    );
    let shell = r#"{"topic":"t","data":""}"#.len();
    assert_eq!(recv(&mut sub)["data"].as_str().unwrap().len(), 1000 - shell);

    let over = body(1001);
    let resp = exchange(admin, &post("/publish", "", over.as_bytes()));
    assert_eq!(resp.status, 413, "{}{}", resp.head, resp.body);
    assert!(resp.body.contains("1001"), "{}", resp.body);
    // Far over the limit: still a readable 413, not a reset.
    let huge = body(300_000);
    let resp = exchange(admin, &post("/publish", "", huge.as_bytes()));
    assert_eq!(resp.status, 413);
    assert_eq!(metric(admin, "corecast_api_publishes_total"), 1.0);
    server.shutdown().unwrap();
}

#[test]
fn a_trickling_body_is_answered_408_at_the_body_deadline() {
    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let mut s = open(admin);
    s.write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{")
        .unwrap();
    let started = Instant::now();
    let mut writer = s.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        for _ in 0..150 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(TRICKLE);
        }
    });
    let resp = read_response(&mut s).unwrap();
    let took = started.elapsed();
    eprintln!("trickling body answered after {took:?}");
    assert_eq!(resp.status, 408, "{}{}", resp.head, resp.body);
    assert!(
        took >= BODY_DEADLINE - TRICKLE && took < BODY_DEADLINE + PROMPT,
        "body deadline hit after {took:?}"
    );
    assert_eq!(resp.header("connection"), Some("close"));
    drop(s);
    w.join().unwrap();
    assert_eq!(metric(admin, "corecast_admin_request_timeouts_total"), 1.0);
    assert_eq!(metric(admin, "corecast_api_publishes_total"), 0.0);
    server.shutdown().unwrap();
}

/// Opens [`MAX_ADMIN_CONNECTIONS`] idle connections and makes sure the server has taken
/// them all: it takes accepted connections in order, so one answered request on the last
/// one proves the others were taken (and hold their slots) before it.
fn fill_the_cap(admin: SocketAddr) -> Vec<TcpStream> {
    let mut held: Vec<TcpStream> = (0..MAX_ADMIN_CONNECTIONS).map(|_| open(admin)).collect();
    let last = held.last_mut().unwrap();
    last.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(last).unwrap().status, 200);
    held
}

/// At the cap, a new connection waits in the listen backlog for up to [`QUEUE_WAIT`], as
/// at any busy server; still waiting then, it is answered 503, counted.
#[test]
fn a_connection_over_the_cap_waits_then_gets_503_and_is_counted() {
    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let held = fill_the_cap(admin);

    let mut over = open(admin);
    let (resp, took) = timed(|| read_response(&mut over).unwrap());
    assert_eq!(resp.status, 503, "{}{}", resp.head, resp.body);
    assert!(
        took >= QUEUE_WAIT - Duration::from_millis(50) && took < QUEUE_WAIT + PROMPT,
        "503 after {took:?}, the wait is {QUEUE_WAIT:?}"
    );
    let mut rest = Vec::new();
    let _ = over.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // Read on a held connection: a new one would race the server seeing the held ones close
    // (on a loaded machine it could wait past the queue wait and be refused itself).
    let mut held = held;
    assert_eq!(metric_after_cap(&mut held), 1.0);
    drop(held);
    server.shutdown().unwrap();
}

/// At the cap, a new connection waits in the listen backlog, and is served as soon as a
/// slot frees.
#[test]
fn a_connection_over_the_cap_is_served_once_a_slot_frees() {
    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let mut held = fill_the_cap(admin);

    let mut waiting = open(admin);
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(QUEUE_WAIT / 4);
    drop(held.pop());
    let (resp, took) = timed(|| read_response(&mut waiting).unwrap());
    assert_eq!(resp.status, 200, "{}{}", resp.head, resp.body);
    assert!(took < PROMPT, "served {took:?} after a slot freed");
    assert_eq!(metric_after_cap(&mut held), 0.0);
    server.shutdown().unwrap();
}

/// The refusal counter, read on one of the held connections (a new one would wait).
fn metric_after_cap(held: &mut [TcpStream]) -> f64 {
    let s = held.last_mut().unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_response(s).unwrap();
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("corecast_admin_connections_refused_total "))
        .expect("the refusal counter")
        .parse()
        .unwrap()
}

/// 200 scrapes at once (a dashboard refresh, several Prometheus servers), three times the
/// connection cap: all of them are served, the ones over the cap after a short wait in the
/// listen backlog. Every client connects before any sends, so all 200 are there at once.
#[test]
fn two_hundred_concurrent_scrapes_are_all_served() {
    const SCRAPERS: usize = 200;
    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let all_connected = std::sync::Arc::new(std::sync::Barrier::new(SCRAPERS));
    let scrapers: Vec<_> = (0..SCRAPERS)
        .map(|_| {
            let all_connected = all_connected.clone();
            std::thread::spawn(move || {
                let mut s = open(admin);
                all_connected.wait();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .map_err(|e| e.to_string())?;
                read_response(&mut s)
                    .map(|r| r.status)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let results: Vec<Result<u16, String>> =
        scrapers.into_iter().map(|t| t.join().unwrap()).collect();
    let failed: Vec<_> = results.iter().filter(|r| **r != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {SCRAPERS} not served, the first: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(
        metric(admin, "corecast_admin_connections_refused_total"),
        0.0
    );
    server.shutdown().unwrap();
}

#[test]
fn publish_answers_503_once_shutdown_has_stopped_publishing() {
    let mut cfg = admin_config(1);
    cfg.drain_timeout = Duration::from_secs(3);
    let server = start(cfg);
    let admin = server.admin_addr().unwrap();
    assert_eq!(
        exchange(admin, &post("/publish", "", br#"{"data":1}"#)).status,
        202
    );

    // A client that never answers the close keeps the drain going.
    let _mute = raw_upgraded(server.local_addr(), "/ws");
    let stopper = std::thread::spawn(move || server.shutdown());
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let resp = exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        if resp.status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "healthz never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The drain has begun, and Server::shutdown stops admin publishing before it.
    let resp = exchange(admin, &post("/publish", "", br#"{"data":2}"#));
    assert_eq!(resp.status, 503, "{}{}", resp.head, resp.body);
    let err: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(err["op"], "error");
    stopper.join().unwrap().unwrap();
}

#[test]
fn shutdown_releases_the_admin_port_at_once_while_a_client_trickles() {
    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let slow = Trickler::start(admin, SLOW_HEAD);
    let idle = open(admin);
    std::thread::sleep(Duration::from_millis(500));

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (r, took) = timed(|| server.shutdown());
        let _ = tx.send((r, took));
    });
    let (result, took) = rx
        .recv_timeout(WATCHDOG)
        .expect("shutdown did not return with a trickling admin client");
    assert!(result.is_ok(), "{result:?}");
    eprintln!("shutdown with a trickling admin client: {took:?}");
    assert!(took < PROMPT, "shutdown took {took:?}");
    let rebound = std::net::TcpListener::bind(admin);
    assert!(rebound.is_ok(), "admin port still taken: {rebound:?}");
    let (after, _) = slow.closed();
    assert!(after < HEAD_DEADLINE, "trickler kept until {after:?}");
    drop(idle);
}

/// The binary: a client trickling into the admin endpoint does not keep SIGTERM from
/// draining and exiting 0.
#[test]
fn binary_exits_0_on_sigterm_while_an_admin_client_trickles() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    /// Kills the child if the test fails before it exits.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let mut child = Reap(
        Command::new(env!("CARGO_BIN_EXE_corecast"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--workers", "1", "--no-pin"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("corecast binary starts"),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WATCHDOG;
    let admin: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some((_, a)) = line.split_once("on http://") {
                    break a.trim().parse().expect("admin address in the log line");
                }
            }
            Err(_) => panic!("no admin address logged within {WATCHDOG:?}"),
        }
    };
    let slow = Trickler::start(admin, SLOW_HEAD);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );

    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = sent + Duration::from_secs(3);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            panic!("corecast did not exit within 3 s of SIGTERM with a trickling admin client");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("binary exited {:?} after SIGTERM", sent.elapsed());
    assert_eq!(status.code(), Some(0), "{status}");
    let (after, _) = slow.closed();
    assert!(after < HEAD_DEADLINE, "trickler kept until {after:?}");
}

/// A sample's metric name, type and sorted labels.
type Sample = (String, &'static str, Vec<(String, String)>);

#[test]
fn every_metric_keeps_its_name_type_and_labels() {
    use prometheus_parse::Value::{Counter, Gauge, Histogram};
    let server = start(admin_config(2));
    let admin = server.admin_addr().unwrap();
    let resp = exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let lines = resp.body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
    let got: Vec<Sample> = parsed
        .samples
        .iter()
        .map(|s| {
            let kind = match s.value {
                Counter(_) => "counter",
                Gauge(_) => "gauge",
                Histogram(_) => "histogram",
                _ => "other",
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            (s.metric.clone(), kind, labels)
        })
        .collect();
    // (name, type, labels) of every sample, in exposition order.
    let mut want: Vec<Sample> = Vec::new();
    let mut add = |name: &str, kind, label: Option<(&str, &str)>| {
        let labels = label.map(|(k, v)| vec![(k.to_owned(), v.to_owned())]);
        want.push((format!("corecast_{name}"), kind, labels.unwrap_or_default()));
    };
    add("connections_open", "gauge", None);
    add("websockets_open", "gauge", None);
    add("worker_connections_open", "gauge", Some(("worker", "0")));
    add("worker_connections_open", "gauge", Some(("worker", "1")));
    // prometheus-parse reads a histogram's _sum and _count as samples of their own, in
    // place, and lists its buckets as one histogram sample after everything else.
    for w in ["0", "1"] {
        add("worker_loop_turn_seconds_sum", "other", Some(("worker", w)));
        add(
            "worker_loop_turn_seconds_count",
            "other",
            Some(("worker", w)),
        );
    }
    add("connections_accepted_total", "counter", None);
    for r in [
        "max_connections",
        "max_connections_per_ip",
        "connection_rate",
        "memory",
        "descriptors",
    ] {
        add("connections_rejected_total", "counter", Some(("reason", r)));
    }
    add("connection_rate_untracked_total", "counter", None);
    add("connection_rate_addresses", "gauge", None);
    add("connections_closed_total", "counter", None);
    add("handshakes_total", "counter", None);
    for r in [
        "timeout",
        "bad_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "upgrade_required",
        "header_too_large",
        "http_version",
        "internal",
    ] {
        add("handshake_failures_total", "counter", Some(("reason", r)));
    }
    for name in [
        "health_checks_total",
        "console_requests_total",
        "messages_in_total",
        "messages_out_total",
        "bytes_in_total",
        "bytes_out_total",
        "publishes_total",
        "api_publishes_total",
        "api_publishes_refused_total",
        "deliveries_total",
        "slow_consumer_dropped_total",
        "slow_consumer_closed_total",
        "bad_requests_total",
        "protocol_errors_total",
        "timeouts_total",
        "input_held_total",
        "publishers_held_total",
        "publishers_share_held_total",
        "backpressure_closed_total",
        "message_timeouts_total",
        "control_frames_dropped_total",
        "hangups_total",
        "tls_errors_total",
        "tls_plain_http_total",
        "tls_upgrades_total",
        "deflate_upgrades_total",
        "messages_compressed_total",
        "messages_inflated_total",
    ] {
        add(name, "counter", None);
    }
    for name in [
        "connections_held",
        "outbound_queued_bytes",
        "cross_worker_queued_bytes",
        "outside_queued_bytes",
        "outbound_memory_bytes",
        "tls_memory_bytes",
        "inbound_memory_bytes",
        "connection_limit",
        "memory_limit_bytes",
        "memory_pressure",
        "draining",
        "process_resident_memory_bytes",
        "process_open_fds",
        "uptime_seconds",
        "admin_connections_open",
    ] {
        add(name, "gauge", None);
    }
    add("admin_connections_refused_total", "counter", None);
    add("admin_disconnects_total", "counter", None);
    add("backplane_disconnects_received_total", "counter", None);
    add("admin_request_timeouts_total", "counter", None);
    for s in ["user", "anonymous", "pending"] {
        add("auth_connections", "gauge", Some(("standing", s)));
    }
    for s in ["user", "anonymous"] {
        add("auth_connects_total", "counter", Some(("as", s)));
    }
    for r in [
        "upgrade_refused",
        "connect_refused",
        "connect_timeout",
        "expired",
        "disconnected",
    ] {
        add("auth_closes_total", "counter", Some(("reason", r)));
    }
    for r in [
        "not_connected",
        "subscribe",
        "publish",
        "broadcast",
        "second_connect",
        "refresh_other_user",
        "refresh_anonymous",
        "subscription_token",
        "bad_token",
    ] {
        add("auth_refusals_total", "counter", Some(("reason", r)));
    }
    for name in [
        "auth_refreshes_total",
        "auth_subscription_expiries_total",
        "auth_deferred_total",
    ] {
        add(name, "counter", None);
    }
    for a in ["held", "refused", "closed"] {
        add("rate_limited_total", "counter", Some(("action", a)));
    }
    for name in ["history_topics", "history_bytes"] {
        add(name, "gauge", None);
    }
    for r in ["count", "topic_bytes", "global_bytes", "expired"] {
        add("history_trimmed_total", "counter", Some(("reason", r)));
    }
    for o in ["recovered", "not_recovered"] {
        add("history_recoveries_total", "counter", Some(("outcome", o)));
    }
    add("history_requests_refused_total", "counter", None);
    for name in ["backplane_configured", "backplane_up"] {
        add(name, "gauge", None);
    }
    for name in [
        "backplane_forwarded_total",
        "backplane_forward_failed_total",
        "backplane_received_total",
        "backplane_received_dropped_total",
        "backplane_own_skipped_total",
        "backplane_bad_envelopes_total",
        "backplane_invalid_utf8_total",
        "backplane_reconnects_total",
    ] {
        add(name, "counter", None);
    }
    add("backplane_channels", "gauge", None);
    add("backplane_queue_bytes", "gauge", None);
    add("backplane_interest_queued", "gauge", None);
    add("backplane_interest_overflows_total", "counter", None);
    add("backplane_interest_resyncs_total", "counter", None);
    add("auth_configured", "gauge", None);
    for outcome in [
        "ok",
        "malformed",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "unknown_key",
        "wrong_audience",
        "wrong_issuer",
    ] {
        add(
            "auth_verifications_total",
            "counter",
            Some(("outcome", outcome)),
        );
    }
    add("auth_cache_hits_total", "counter", None);
    add("auth_cache_entries", "gauge", None);
    add("auth_keys", "gauge", None);
    for family in ["auth_jwks_fetches_total", "auth_key_reloads_total"] {
        for result in ["ok", "failed"] {
            add(family, "counter", Some(("result", result)));
        }
    }
    add(
        "worker_loop_turn_seconds",
        "histogram",
        Some(("worker", "0")),
    );
    add(
        "worker_loop_turn_seconds",
        "histogram",
        Some(("worker", "1")),
    );
    // prometheus_parse hands histograms back from a hash map, in no fixed order: compare
    // those as a set; everything else keeps the exposition's order.
    let mut got = got;
    let sort_histograms = |v: &mut Vec<Sample>| {
        let at = v.iter().position(|s| s.1 == "histogram").unwrap_or(v.len());
        v[at..].sort();
    };
    sort_histograms(&mut got);
    sort_histograms(&mut want);
    assert_eq!(got, want);
    // The scrape itself is the one admin connection open.
    assert!(resp.body.contains("\ncorecast_admin_connections_open 1\n"));
    server.shutdown().unwrap();
}

#[test]
fn a_client_that_never_reads_its_responses_is_dropped_at_the_write_stall_bound() {
    use corecast::control::socket::WRITE_STALL;
    use std::os::fd::AsRawFd;

    let server = start(admin_config(1));
    let admin = server.admin_addr().unwrap();
    let s = open(admin);
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    // Pipelined scrapes, about 10 MB of responses, none of them read.
    let mut w = s.try_clone().unwrap();
    let requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&requests);
    });
    let started = Instant::now();
    let deadline = started + WRITE_STALL + WATCHDOG;
    while metric(admin, "corecast_admin_request_timeouts_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled writer was never dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    eprintln!("stalled reader dropped after {took:?}");
    assert!(took >= WRITE_STALL, "{took:?}");
    assert_eq!(metric(admin, "corecast_admin_connections_open"), 1.0);
    drop(s);
    writer.join().unwrap();
    server.shutdown().unwrap();
}

/// A publisher on the admin API outruns the worker (each publish costs it a compression for
/// a permessage-deflate subscriber): what the workers have not taken is bounded at
/// OUTSIDE_BYTES; past it a publish is answered 503 ("behind") and counted, and every one
/// answered 202 is delivered, in order.
#[test]
fn admin_publishes_beyond_the_workers_pace_are_refused_with_503_not_queued() {
    use corecast::broadcast::OUTSIDE_BYTES;
    let mut cfg = admin_config(1);
    cfg.permessage_deflate = true;
    cfg.max_outbound_bytes = 256 << 20;
    let server = start(cfg);
    let admin = server.admin_addr().unwrap();
    let deflate = deflate_reader(server.local_addr(), "wide");
    let mut plain = connect(server.local_addr(), "/ws");
    send(&mut plain, json!({"op":"subscribe","topic":"wide","id":1}));
    assert_eq!(recv(&mut plain), json!({"op":"ok","id":1}));
    // The worker takes what is queued in one turn: in a debug build, seconds between
    // messages.
    plain
        .get_mut()
        .set_read_timeout(Some(6 * WATCHDOG))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            let m = recv(&mut plain);
            if m["data"] == "end" {
                return seen;
            }
            seen.push(m["data"]["seq"].as_u64().unwrap());
        }
    });

    // 4,000 publishes of 60 KiB (234 MiB) on one keep-alive connection.
    const N: u64 = 4000;
    let pad = slow_to_compress(60 * 1024);
    let mut s = open(admin);
    let (mut accepted, mut refused, mut peak) = (0u64, 0u64, 0);
    for seq in 0..N {
        let body = json!({"topic":"wide","data":{"seq":seq,"pad":pad}}).to_string();
        s.write_all(&post("/publish", "", body.as_bytes())).unwrap();
        let resp = read_response(&mut s).unwrap();
        match resp.status {
            202 => accepted += 1,
            503 => {
                let err: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
                assert_eq!(err["code"], "behind", "{}", resp.body);
                refused += 1;
            }
            other => panic!("{other}: {}", resp.body),
        }
        peak = peak.max(server.outside_queued());
    }
    assert!(
        refused > 0,
        "{N} publishes of 60 KiB outran a compressing worker, none refused"
    );
    assert!(peak <= OUTSIDE_BYTES, "{peak} bytes queued for the worker");
    let metrics = exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body;
    assert!(
        metrics.contains(&format!("corecast_api_publishes_refused_total {refused}\n")),
        "{metrics}"
    );
    // A debug build compresses far slower than the release the figures are for.
    let deadline = Instant::now() + 6 * WATCHDOG;
    while server.outside_queued() > 0 {
        assert!(Instant::now() < deadline, "the worker never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = post("/publish", "", br#"{"topic":"wide","data":"end"}"#);
    assert_eq!(exchange(admin, &end).status, 202);
    let seen = reader.join().expect("the plain subscriber read to the end");
    assert_eq!(
        seen.len() as u64,
        accepted,
        "every accepted publish was delivered"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
    server.shutdown().unwrap();
    deflate.join().unwrap();
}
