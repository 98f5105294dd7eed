//! Restarts that drop no client (`--reuse-port`): a second process binds the same port, the
//! first is sent SIGTERM, and a client connecting in a loop all the while sees no refused,
//! reset or failed upgrade. The first process's clients are closed with 1012 (service
//! restart), spread over the drain time, not all at once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{free_port, Proc};
use common::*;

/// The kernel moves a closing SO_REUSEPORT listener's queued connections to another
/// listener of the port only with this on.
fn assert_migrate_req_on() {
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .expect("Linux 5.14+ has net.ipv4.tcp_migrate_req");
    assert_eq!(
        migrate.trim(),
        "1",
        "set net.ipv4.tcp_migrate_req=1 (tools/install-test-deps.sh does, as root)"
    );
}

/// One connect and upgrade; what went wrong, if anything.
fn connect_once(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => return Err("closed before the 101".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if head.starts_with(b"HTTP/1.1 101") {
        Ok(())
    } else {
        let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
        Err(String::from_utf8_lossy(line).into_owned())
    }
}

#[test]
fn a_restart_with_reuse_port_refuses_or_resets_no_connection() {
    assert_migrate_req_on();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let old = Proc::start_on(
        addr,
        &["--reuse-port", "--workers", "2", "--drain-timeout", "4"],
    );
    // Clients that stay connected to the old process through the restart.
    const STAYERS: usize = 60;
    let mut stayers: Vec<Client> = (0..STAYERS).map(|_| connect(addr, "/ws")).collect();

    // Two clients connecting back to back, for the whole restart.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (stop, failures) = (stop.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut ok = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match connect_once(addr) {
                        Ok(()) => ok += 1,
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
                ok
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let new = Proc::start_on(addr, &["--reuse-port", "--workers", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM the old one while reading what its clients get.
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(old.pid() as i32, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    let mut closes = Vec::new();
    for c in &mut stayers {
        let code = expect_close(c);
        closes.push((code, sent.elapsed()));
    }
    assert!(old.terminate().success(), "the old process exits 0");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let connected: u64 = loops.into_iter().map(|t| t.join().unwrap()).sum();

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} connects failed during the restart: {:?}",
        failures.len(),
        connected + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(connected > 100, "only {connected} connects in the loop");
    // The new process took over the port.
    assert!(new.metric("corecast_handshakes_total", None) > 0.0);
    for (code, _) in &closes {
        assert_eq!(*code, 1012, "service restart");
    }
    // Spread: the drain had about 4 s; half of what is left after the fences is spent
    // spreading the closes, so the last comes well after the first.
    let first = closes.iter().map(|c| c.1).min().unwrap();
    let last = closes.iter().map(|c| c.1).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(1000),
        "closes within {:?} of each other",
        last - first
    );
    assert!(new.terminate().success());
}

#[test]
fn without_reuse_port_a_second_process_cannot_take_the_port() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let first = Proc::start_on(addr, &["--workers", "1"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["--listen", &addr.to_string(), "--admin-listen", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    // Shutting down without --reuse-port: clients get 1001 (going away).
    let mut c = connect(addr, "/ws");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(first.pid() as i32, libc::SIGTERM) }, 0);
    assert_eq!(expect_close(&mut c), 1001);
    assert!(first.terminate().success());
}

/// What makes the restart lossless at its edge: connections that completed the TCP
/// handshake on a listener in the port's SO_REUSEPORT group but were never accepted before
/// it closed. Here the closing listener is the test's own (it never accepts), so about half
/// of the connections wait in its queue when it closes. With tcp_migrate_req the kernel
/// moves them to corecast's listener and each gets its 101; without, they are reset.
#[test]
fn connections_queued_on_a_closing_listener_move_to_corecast() {
    use socket2::{Domain, Protocol, Socket, Type};
    assert_migrate_req_on();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let closing = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    closing.set_reuse_address(true).unwrap();
    closing.set_reuse_port(true).unwrap();
    closing.bind(&addr.into()).unwrap();
    closing.listen(128).unwrap();
    let p = Proc::start_on(addr, &["--reuse-port", "--workers", "1"]);
    let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut clients: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(WATCHDOG)).unwrap();
            s.write_all(request).unwrap();
            s
        })
        .collect();
    // Give corecast time to answer the ones the kernel gave it.
    std::thread::sleep(Duration::from_millis(300));
    let answered_before = p.metric("corecast_handshakes_total", None);
    assert!(
        answered_before < 40.0,
        "every connection hashed to corecast"
    );
    drop(closing);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut buf) {
                Ok(0) => panic!("client {i}: closed before the 101"),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => panic!("client {i}: {e} (was it queued on the closed listener?)"),
            }
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "client {i}");
    }
    assert_eq!(p.metric("corecast_handshakes_total", None), 40.0);
    assert!(p.terminate().success());
}
