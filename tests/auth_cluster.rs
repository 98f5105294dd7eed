//! Identity across the cluster and under load, through the whole server: `POST /disconnect`
//! on two workers and on two nodes sharing a real redis-server; a JWKS served over HTTP by a
//! real local server as its keys rotate, and a flood of random kids that may not turn into a
//! flood of fetches; the per-turn verification budget during a burst of ES256 connections;
//! what an idle authenticated connection costs in memory.
//!
//! Here: the disconnects and the JWKS; in auth_cluster/load.rs: the budget and the memory.
//! The load tests (the flood, the burst, the memory count) take [`LOAD`] so that they never
//! run beside one another: they share two cores, and the burst measures latency.

mod common;
#[path = "auth_cluster/load.rs"]
mod load;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::process::Proc;
use common::redis_server::Redis;
use common::tokens::{self, Dir, JwksServer};
use common::*;
use corecast::Server;
use serde_json::json;

static LOAD: Mutex<()> = Mutex::new(());

fn load_lock() -> MutexGuard<'static, ()> {
    LOAD.lock().unwrap_or_else(|p| p.into_inner())
}

const API_TOKEN: &str = "the-admin-api-token-of-this-test";

/// A server with `workers`, HS256 tokens checked with `secret`, the admin API behind
/// [`API_TOKEN`], and `redis` as its backplane if given.
fn hs256_server(workers: usize, secret: &std::path::Path, redis: Option<&str>) -> Server {
    let mut cfg = config(workers);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.api_token = Some(API_TOKEN.into());
    cfg.auth.hmac_secret_file = Some(secret.into());
    cfg.redis = redis.map(Into::into);
    start(cfg)
}

/// `POST /disconnect` with `body`, and `bearer` as the Authorization token if given.
fn disconnect(admin: SocketAddr, bearer: Option<&str>, body: &str) -> HttpResponse {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    write!(
        s,
        "POST /disconnect HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut s).unwrap()
}

fn expect_closed_with(c: &mut Client, code: u16, who: &str) {
    assert_eq!(expect_close(c), code, "{who}");
}

fn worker_open(admin: SocketAddr, worker: &str) -> f64 {
    tokens::metric(
        admin,
        "corecast_worker_connections_open",
        Some(("worker", worker)),
    )
}

/// Polls `f` until it holds, failing after `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Four connections of alice opened one after the other land on both workers (the
/// acceptor hands them round robin); the admin API closes all four with 4003 and answers
/// the count, and bob, on the same workers, goes on. Without the API token, or with a body
/// that names no user, nothing is closed.
#[test]
fn disconnect_closes_every_connection_of_the_user_on_every_worker() {
    let dir = Dir::new("disconnect-workers");
    let (secret, path) = tokens::secret_file(&dir);
    let server = hs256_server(2, &path, None);
    let (addr, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let alice_token = tokens::hs256(&secret, "alice", None);
    let mut alice: Vec<Client> = (0..4)
        .map(|_| tokens::connect_with(addr, &alice_token))
        .collect();
    let mut bob = tokens::connect_with(addr, &tokens::hs256(&secret, "bob", None));
    for c in alice.iter_mut().chain([&mut bob]) {
        tokens::echo(c, json!("hello"));
    }
    // Five connections in turn over two workers: 3 and 2, so alice has two on each.
    let (w0, w1) = (worker_open(admin, "0"), worker_open(admin, "1"));
    assert_eq!((w0 + w1, w0.min(w1)), (5.0, 2.0), "{w0} and {w1}");
    let user = Some(("standing", "user"));
    assert_eq!(
        tokens::metric(admin, "corecast_auth_connections", user),
        5.0
    );

    // Refusals first: none of them closes anything.
    let no_token = disconnect(admin, None, r#"{"user":"alice"}"#);
    assert_eq!(no_token.status, 401, "{}", no_token.body);
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));
    let wrong = disconnect(admin, Some("not-the-token"), r#"{"user":"alice"}"#);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    for body in [
        "",
        "alice",
        "{}",
        r#"{"user":""}"#,
        r#"{"user":7}"#,
        r#"["alice"]"#,
    ] {
        let r = disconnect(admin, Some(API_TOKEN), body);
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        assert!(r.body.contains("\"bad_request\""), "{body:?}: {}", r.body);
    }
    let too_long = format!(r#"{{"user":"{}"}}"#, "a".repeat(5000));
    assert_eq!(disconnect(admin, Some(API_TOKEN), &too_long).status, 413);
    let nobody = disconnect(admin, Some(API_TOKEN), r#"{"user":"carol"}"#);
    assert_eq!(
        (nobody.status, nobody.body.as_str()),
        (200, r#"{"closed":0}"#)
    );
    for c in alice.iter_mut().chain([&mut bob]) {
        tokens::echo(c, json!("still here"));
    }

    let r = disconnect(admin, Some(API_TOKEN), r#"{"user":"alice"}"#);
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"closed":4}"#));
    assert_eq!(r.header("content-type"), Some("application/json"));
    for (i, c) in alice.iter_mut().enumerate() {
        expect_closed_with(c, 4003, &format!("alice's connection {i}"));
    }
    tokens::echo(&mut bob, json!("after"));
    drop(alice);
    wait_for("alice's connections gone", WATCHDOG, || {
        worker_open(admin, "0") + worker_open(admin, "1") == 1.0
    });
    let disconnected = Some(("reason", "disconnected"));
    assert_eq!(
        tokens::metric(admin, "corecast_auth_closes_total", disconnected),
        4.0
    );
    // Every request that got as far as naming a user counts, the one for nobody included.
    assert_eq!(
        tokens::metric(admin, "corecast_admin_disconnects_total", None),
        2.0
    );
    assert_eq!(
        tokens::metric(admin, "corecast_auth_connections", user),
        1.0
    );
    assert_eq!(server.stats().auth_disconnects, 4);
    drop(bob);
    server.shutdown().unwrap();
}

/// Two nodes on one redis-server: a disconnect asked of node A closes alice on A (the
/// answer counts A's) and, through the `PREFIX:ctl` channel, on B, within a second or two;
/// bob stays on both.
#[test]
fn disconnect_on_one_node_closes_the_user_on_every_node_through_redis() {
    let redis = Redis::start();
    let dir = Dir::new("disconnect-nodes");
    let (secret, path) = tokens::secret_file(&dir);
    let a = hs256_server(2, &path, Some(&redis.url()));
    let b = hs256_server(2, &path, Some(&redis.url()));
    let up = |s: &Server| s.backplane().unwrap().is_up();
    wait_for("both nodes on Redis", WATCHDOG, || up(&a) && up(&b));
    let alice_token = tokens::hs256(&secret, "alice", None);
    let bob_token = tokens::hs256(&secret, "bob", None);
    let mut alice_a: Vec<Client> = (0..2)
        .map(|_| tokens::connect_with(a.local_addr(), &alice_token))
        .collect();
    let mut alice_b: Vec<Client> = (0..3)
        .map(|_| tokens::connect_with(b.local_addr(), &alice_token))
        .collect();
    let mut bob_a = tokens::connect_with(a.local_addr(), &bob_token);
    let mut bob_b = tokens::connect_with(b.local_addr(), &bob_token);
    for c in alice_a.iter_mut().chain(&mut alice_b) {
        tokens::echo(c, json!(1));
    }
    assert_eq!(
        numsub(&redis, "corecast:ctl"),
        2,
        "both nodes hear commands"
    );

    let r = disconnect(
        a.admin_addr().unwrap(),
        Some(API_TOKEN),
        r#"{"user":"alice"}"#,
    );
    let asked = Instant::now();
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"closed":2}"#));
    for (i, c) in alice_a.iter_mut().enumerate() {
        expect_closed_with(c, 4003, &format!("alice on A ({i})"));
    }
    for (i, c) in alice_b.iter_mut().enumerate() {
        expect_closed_with(c, 4003, &format!("alice on B ({i})"));
    }
    let took = asked.elapsed();
    eprintln!(
        "POST /disconnect on A: alice's last connection on B closed {took:?} after the answer"
    );
    assert!(
        took < Duration::from_secs(2),
        "B closed alice after {took:?}"
    );
    tokens::echo(&mut bob_a, json!("bob on A"));
    tokens::echo(&mut bob_b, json!("bob on B"));

    let received = "corecast_backplane_disconnects_received_total";
    let closes = Some(("reason", "disconnected"));
    let (admin_a, admin_b) = (a.admin_addr().unwrap(), b.admin_addr().unwrap());
    assert_eq!(tokens::metric(admin_b, received, None), 1.0);
    assert_eq!(
        tokens::metric(admin_a, received, None),
        0.0,
        "its own is skipped"
    );
    assert_eq!(
        tokens::metric(admin_a, "corecast_auth_closes_total", closes),
        2.0
    );
    assert_eq!(
        tokens::metric(admin_b, "corecast_auth_closes_total", closes),
        3.0
    );
    assert_eq!(
        tokens::metric(admin_b, "corecast_admin_disconnects_total", None),
        0.0
    );
    assert_eq!(
        tokens::metric(admin_a, "corecast_backplane_bad_envelopes_total", None),
        0.0
    );
    assert_eq!(
        tokens::metric(admin_b, "corecast_backplane_bad_envelopes_total", None),
        0.0
    );
    drop((bob_a, bob_b, alice_a, alice_b));
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// Subscribers of `channel` in Redis.
fn numsub(r: &Redis, channel: &str) -> i64 {
    let v: Vec<redis::Value> = r.cmd(&["PUBSUB", "NUMSUB", channel]);
    match v.get(1) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("PUBSUB NUMSUB answered {other:?}"),
    }
}

fn fetched_ok(p: &Proc) -> f64 {
    p.metric("corecast_auth_jwks_fetches_total", Some(("result", "ok")))
}

fn hup(p: &Proc) {
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGHUP) };
}

/// A rotation at the issuer, through the binary: key B appears beside A (a token of B is
/// refused as unknown until the fetch it asks for, then accepted), then A goes (its tokens
/// are refused once a fetch brings the new set: here SIGHUP's; the max-age fetch would do
/// the same an hour later at most). The client that connected with A stays connected: a
/// connection keeps the identity it was admitted with until its token expires.
#[test]
fn a_jwks_rotation_keeps_connected_clients_and_refuses_the_removed_key() {
    let dir = Dir::new("rotation-keys");
    let (key_a, _) = tokens::p256(&dir, "a");
    let (key_b, _) = tokens::p256(&dir, "b");
    let served = Dir::new("rotation-served");
    served.write("jwks.json", &tokens::jwks(&[tokens::jwk(&key_a, "a")]));
    let jwks = JwksServer::start(&served.0);
    let url = jwks.url("/jwks.json");
    let p = Proc::start(&[
        "--workers",
        "1",
        "--auth-jwks",
        &url,
        "--auth-jwks-refresh-interval",
        "1",
    ]);
    wait_for("the first fetch", WATCHDOG, || fetched_ok(&p) == 1.0);
    let mut alice = tokens::connect_with(p.addr, &tokens::es256(&key_a, Some("a"), "alice"));
    tokens::echo(&mut alice, json!("signed by a"));

    served.write(
        "jwks.json",
        &tokens::jwks(&[tokens::jwk(&key_a, "a"), tokens::jwk(&key_b, "b")]),
    );
    let bob = tokens::es256(&key_b, Some("b"), "bob");
    let refused = tokens::connect_message(p.addr, &bob).err();
    assert_eq!(refused, Some((4001, "unknown key".into())));
    wait_for("the fetch bob's token asked for", WATCHDOG, || {
        fetched_ok(&p) == 2.0
    });
    assert_eq!(p.metric("corecast_auth_keys", None), 2.0);
    let (mut bob_conn, reply) = tokens::connect_message(p.addr, &bob).expect("b is known now");
    assert_eq!(reply["user"], "bob", "{reply}");
    tokens::echo(&mut bob_conn, json!("signed by b"));

    // A goes from the JWKS. Nothing asks for a fetch (every token names a known kid), so a
    // fresh A token is still good until one happens.
    served.write("jwks.json", &tokens::jwks(&[tokens::jwk(&key_b, "b")]));
    let carol = tokens::es256(&key_a, Some("a"), "carol");
    let (mut carol_conn, _) = tokens::connect_message(p.addr, &carol).expect("a until the fetch");
    hup(&p);
    wait_for("the fetch SIGHUP asked for", WATCHDOG, || {
        fetched_ok(&p) == 3.0
    });
    assert_eq!(p.metric("corecast_auth_keys", None), 1.0);
    let dave = tokens::es256(&key_a, Some("a"), "dave");
    assert_eq!(
        tokens::connect_message(p.addr, &dave).err(),
        Some((4001, "unknown key".into()))
    );
    // A token of A that was accepted before is refused too: the cache was emptied.
    assert_eq!(
        tokens::connect_message(p.addr, &carol).err(),
        Some((4001, "unknown key".into()))
    );
    // Those already connected with A keep their identity until their tokens expire;
    // POST /disconnect is how to end them sooner.
    tokens::echo(&mut alice, json!("still alice"));
    tokens::echo(&mut carol_conn, json!("still carol"));
    tokens::echo(&mut bob_conn, json!("still bob"));
    let user = Some(("standing", "user"));
    assert_eq!(p.metric("corecast_auth_connections", user), 3.0);
    assert_eq!(
        p.metric(
            "corecast_auth_jwks_fetches_total",
            Some(("result", "failed"))
        ),
        0.0
    );
    assert!(jwks.gets("/jwks.json") >= 3);
    assert!(p.terminate().success());
}

/// 10,000 upgrades, each with a token naming a kid of its own, on four client threads, an
/// interval after the last fetch: the first unknown kid asks for a fetch at once, those that
/// arrive after it began ask for one more, which waits for the refresh interval, and that is
/// all (counted at the HTTP server: two fetches, the worst case). Every attempt gets its 401,
/// and the server stays healthy.
#[test]
fn ten_thousand_random_kids_cost_at_most_two_jwks_fetches() {
    const ATTEMPTS: usize = 10_000;
    const THREADS: usize = 4;
    const INTERVAL: Duration = Duration::from_secs(3);
    let _load = load_lock();
    let dir = Dir::new("flood-keys");
    let (key_a, _) = tokens::p256(&dir, "a");
    let served = Dir::new("flood-served");
    served.write("jwks.json", &tokens::jwks(&[tokens::jwk(&key_a, "a")]));
    let jwks = JwksServer::start(&served.0);
    let p = Proc::start(&[
        "--workers",
        "1",
        "--auth-jwks",
        &jwks.url("/jwks.json"),
        "--auth-jwks-refresh-interval",
        &INTERVAL.as_secs().to_string(),
    ]);
    wait_for("the first fetch", WATCHDOG, || fetched_ok(&p) == 1.0);
    let first = Instant::now();
    let mut alice = tokens::connect_with(p.addr, &tokens::es256(&key_a, Some("a"), "alice"));
    let requests: Vec<Vec<String>> = (0..THREADS)
        .map(|t| {
            (0..ATTEMPTS / THREADS)
                .map(|i| {
                    let kid = format!("random-{t}-{i}-{:x}", rand_u64(t * ATTEMPTS + i));
                    tokens::upgrade_request(&tokens::es256(&key_a, Some(&kid), "mallory"))
                })
                .collect()
        })
        .collect();
    std::thread::sleep((first + INTERVAL).saturating_duration_since(Instant::now()));
    let before = jwks.gets("/jwks.json");
    let started = Instant::now();
    let threads: Vec<_> = requests
        .into_iter()
        .map(|reqs| {
            let addr = p.addr;
            std::thread::spawn(move || {
                for r in reqs {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(WATCHDOG)).unwrap();
                    s.write_all(r.as_bytes()).unwrap();
                    let mut resp = Vec::new();
                    let _ = s.read_to_end(&mut resp);
                    let resp = String::from_utf8_lossy(&resp);
                    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
                    assert!(resp.contains("unknown key"), "{resp}");
                }
            })
        })
        .collect();
    let fetches = || jwks.gets("/jwks.json") - before;
    wait_for("the fetch the first kid asked for", WATCHDOG, || {
        fetches() == 1
    });
    let second = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    let took = started.elapsed();
    eprintln!("{ATTEMPTS} upgrades with random kids in {took:?}");
    assert!(
        took < INTERVAL,
        "the flood took {took:?}, more than one interval"
    );
    tokens::echo(&mut alice, json!("after the flood"));
    wait_for(
        "the fetch the later kids asked for",
        INTERVAL + WATCHDOG,
        || fetches() == 2,
    );
    let gap = second.elapsed();
    assert!(
        gap >= INTERVAL - Duration::from_millis(200),
        "the second fetch came {gap:?} after the first, sooner than the interval"
    );
    // Another interval and more: nothing else was asked, nothing else is fetched.
    std::thread::sleep(INTERVAL + Duration::from_secs(1));
    eprintln!(
        "JWKS fetches the flood caused: {}, {gap:?} apart",
        fetches()
    );
    assert_eq!(fetches(), 2, "{ATTEMPTS} random kids");
    assert_eq!(fetched_ok(&p), 3.0);
    let unknown = Some(("outcome", "unknown_key"));
    assert_eq!(
        p.metric("corecast_auth_verifications_total", unknown),
        ATTEMPTS as f64
    );
    let refused = Some(("reason", "upgrade_refused"));
    assert_eq!(
        p.metric("corecast_auth_closes_total", refused),
        ATTEMPTS as f64
    );
    assert_eq!(p.get("/healthz"), "ok\n");
    tokens::echo(&mut alice, json!("still alice"));
    let newcomer = tokens::es256(&key_a, Some("a"), "bob");
    tokens::echo(&mut tokens::connect_with(p.addr, &newcomer), json!("bob"));
    assert!(p.terminate().success());
}

/// A xorshift step: kids that no one could guess, without a random-number crate.
fn rand_u64(seed: usize) -> u64 {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
