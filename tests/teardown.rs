//! Nothing a server started outlives it: a start that fails leaves no thread and no open
//! port behind, and neither does a server dropped without `shutdown` (a caller that
//! returns early, a test that fails). Threads are counted by the names every server thread
//! carries, so these tests run one at a time.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::*;
use corecast::Server;
use tungstenite::Message;

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERVERS: Mutex<()> = Mutex::new(());
    SERVERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Threads of servers in this process.
fn server_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.starts_with("corecast-"))
        })
        .count()
}

/// An address nothing listens on right now.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn assert_refused(addr: SocketAddr) {
    let e = TcpStream::connect(addr).expect_err("the port is closed");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}");
}

#[test]
fn a_start_that_fails_on_a_taken_admin_port_leaves_nothing_running() {
    let _one = one_at_a_time();
    let before = server_threads();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(2);
    cfg.listen = free_addr();
    cfg.admin_listen = Some(taken.local_addr().unwrap());
    let e = Server::start(cfg.clone()).err().expect("the start fails");
    assert!(e.to_string().contains("admin endpoint"), "{e}");
    assert_eq!(server_threads(), before, "server threads left running");
    assert_refused(cfg.listen);
}

#[test]
fn a_server_dropped_without_shutdown_stops_every_thread_and_closes_its_ports() {
    let _one = one_at_a_time();
    let before = server_threads();
    let mut cfg = config(2);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start(cfg);
    let (addr, admin) = (server.local_addr(), server.admin_addr().unwrap());
    let mut client = connect(addr, "/ws");
    // Two workers, the acceptor, the control thread; each names itself once it runs.
    let deadline = Instant::now() + WATCHDOG;
    while server_threads() != before + 4 {
        let n = server_threads() - before;
        assert!(Instant::now() < deadline, "{n} server threads");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The client answers the close on its own thread, as a live client would.
    let answered = std::thread::spawn(move || loop {
        match client.read() {
            Ok(Message::Close(f)) => {
                let _ = client.flush();
                return f.map(|f| u16::from(f.code));
            }
            Ok(_) => continue,
            Err(e) => panic!("the connection ended without a close frame: {e}"),
        }
    });
    drop(server);
    assert_eq!(server_threads(), before, "server threads left running");
    assert_refused(addr);
    assert_refused(admin);
    assert_eq!(answered.join().unwrap(), Some(1001), "closed as going away");
}
