//! deploy/'s load-balancer configs, run for real: HAProxy (deploy/haproxy.cfg) and nginx
//! (deploy/nginx.conf) in front of two corecast nodes joined by a real Redis. Each test
//! copies the config with the node addresses (127.0.0.1:9000 and :9010) and the front port
//! (127.0.0.1:8080) replaced by its own; nothing else is changed.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{collect_lines, free_port, Proc};
use common::redis_server::Redis;
use common::*;
use corecast::Server;
use serde_json::json;

/// A load balancer process running a copy of one of deploy/'s configs; killed when dropped.
struct Balancer {
    child: Child,
    front: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Balancer {
    /// `which` is "haproxy" or "nginx"; `config` a file under deploy/.
    fn start(which: &str, config: &str, nodes: [SocketAddr; 2]) -> Balancer {
        let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy")
                .join(config),
        )
        .unwrap()
        .replace("127.0.0.1:9000", &nodes[0].to_string())
        .replace("127.0.0.1:9010", &nodes[1].to_string())
        .replace("127.0.0.1:8080", &front.to_string());
        let dir = std::env::temp_dir().join(format!("corecast-{which}-{}", front.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(config);
        std::fs::write(&path, text).unwrap();
        let mut cmd = match which {
            "haproxy" => {
                let mut c = Command::new("/usr/sbin/haproxy");
                c.arg("-db").arg("-f").arg(&path);
                c
            }
            _ => {
                let mut c = Command::new("/usr/sbin/nginx");
                c.arg("-c")
                    .arg(&path)
                    .args(["-e", "stderr"])
                    .arg("-g")
                    .arg(format!(
                        "daemon off; pid {};",
                        dir.join("nginx.pid").display()
                    ));
                c.arg("-p").arg(&dir);
                c
            }
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {which} ({e}): install it with `bash tools/install-test-deps.sh`"
                )
            });
        let log = collect_lines(child.stderr.take().unwrap());
        let b = Balancer {
            child,
            front,
            log,
            dir,
        };
        // Ready once an upgrade goes through it.
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let upgraded = std::net::TcpStream::connect(front)
                .is_ok_and(|s| tungstenite::client(format!("ws://{front}/ws"), s).is_ok());
            if upgraded {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{which} did not come up: {:?}",
                b.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // SIGTERM, so that nginx's master stops its worker processes too (SIGKILL would
        // leave them running, listening); SIGKILL only if it does not go.
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node(redis: &Redis) -> Server {
    let mut cfg = config(1);
    cfg.redis = Some(redis.url());
    start(cfg)
}

/// 1,000 clients through the balancer land on both nodes, and one broadcast made on node A
/// reaches each of them exactly once (a second broadcast is the next thing each reads, so a
/// duplicate of the first would have shown).
fn thousand_clients_each_get_a_broadcast_once(which: &str, config: &str) {
    let r = Redis::start();
    let a = node(&r);
    let b = node(&r);
    let wait_up = Instant::now() + WATCHDOG;
    while !(a.backplane().unwrap().is_up() && b.backplane().unwrap().is_up()) {
        assert!(Instant::now() < wait_up, "nodes not on Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lb = Balancer::start(which, config, [a.local_addr(), b.local_addr()]);
    const N: usize = 1000;
    let mut clients: Vec<Client> = (0..N).map(|_| connect(lb.front, "/ws")).collect();
    let (on_a, on_b) = (a.stats().open, b.stats().open);
    // leastconn / least_conn: even, give or take the readiness probe.
    assert!(
        on_a >= 400 && on_b >= 400,
        "{which}: {on_a} on A, {on_b} on B"
    );
    let mut sender = connect(a.local_addr(), "/ws");
    send(&mut sender, json!({"op":"broadcast","data":"once"}));
    send(&mut sender, json!({"op":"broadcast","data":"end"}));
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            recv(c),
            json!({"op":"message","data":"once"}),
            "{which}: client {i}"
        );
        assert_eq!(
            recv(c),
            json!({"op":"message","data":"end"}),
            "{which}: client {i}, after the first broadcast"
        );
    }
    drop(clients);
    drop(lb);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn haproxy_spreads_a_thousand_clients_and_each_gets_a_broadcast_once() {
    thousand_clients_each_get_a_broadcast_once("haproxy", "haproxy.cfg");
}

#[test]
fn nginx_spreads_a_thousand_clients_and_each_gets_a_broadcast_once() {
    thousand_clients_each_get_a_broadcast_once("nginx", "nginx.conf");
}

/// A node killed (SIGKILL) behind HAProxy: its clients lose their connection, reconnect
/// through HAProxy and all land on the other node; HAProxy's health check takes the dead one
/// out, and says so.
#[test]
fn a_node_killed_behind_haproxy_is_taken_out_and_its_clients_reconnect_to_the_other() {
    let r = Redis::start();
    let a = Proc::start(&["--workers", "1", "--redis", &r.url()]);
    let b = Proc::start(&["--workers", "1", "--redis", &r.url()]);
    let lb = Balancer::start("haproxy", "haproxy.cfg", [a.addr, b.addr]);
    const N: usize = 100;
    let mut clients: Vec<Client> = (0..N).map(|_| connect(lb.front, "/ws")).collect();
    let on_b = b.metric("corecast_connections_open", None);
    assert!(on_b >= 30.0, "{on_b} of {N} on B");
    drop(b); // SIGKILL
             // Every client finds out: the ones on B see their connection end, the ones on A can
             // still echo.
    let mut lost = 0;
    for c in &mut clients {
        send(c, json!({"op":"echo","data":1}));
        match c.read() {
            Ok(tungstenite::Message::Text(t)) => {
                assert_eq!(t.as_str(), r#"{"op":"echo","data":1}"#)
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {
                lost += 1;
                // Reconnect at once, as a client would: HAProxy must not send it to B.
                *c = connect(lb.front, "/ws");
                send(c, json!({"op":"echo","data":2}));
                assert_eq!(recv(c), json!({"op":"echo","data":2}));
            }
        }
    }
    assert_eq!(
        lost as f64, on_b,
        "the clients of B, and only them, were lost"
    );
    assert_eq!(a.metric("corecast_connections_open", None), N as f64);
    let deadline = Instant::now() + WATCHDOG;
    while !lb.log().iter().any(|l| l.contains("node2 is DOWN")) {
        assert!(
            Instant::now() < deadline,
            "no health check verdict: {:?}",
            lb.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // From now on every new client goes to A.
    let more: Vec<Client> = (0..20).map(|_| connect(lb.front, "/ws")).collect();
    assert_eq!(a.metric("corecast_connections_open", None), (N + 20) as f64);
    drop(more);
    drop(clients);
    assert!(a.terminate().success());
}
