//! wss: the WebSocket listener behind TLS (`--tls-cert`/`--tls-key`), against rustls clients
//! that trust a CA made for the test, and against the clients TLS servers meet in practice:
//! plain HTTP on the TLS port, garbage, a ClientHello trickled byte by byte, peers that
//! never send close_notify, readers that stall. Python and Node clients over wss are in
//! tests/independent_clients.rs, Autobahn over wss in .ci/run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::Proc;
use common::tls::*;
use common::*;
use corecast::Server;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

const MIB: u64 = 1 << 20;

/// A test configuration whose listener speaks TLS with `pki`'s certificate.
fn tls_config(workers: usize, pki: &Pki) -> corecast::Config {
    let mut cfg = config(workers);
    cfg.tls = Some(pki.files());
    cfg
}

fn start_tls(workers: usize, pki: &Pki) -> Server {
    start(tls_config(workers, pki))
}

/// The same, with messages and frames limited to 1000 bytes.
fn start_tls_small(pki: &Pki) -> Server {
    let mut cfg = tls_config(1, pki);
    cfg.max_message_size = 1000;
    cfg.max_frame_size = 1000;
    start(cfg)
}

/// Waits until `f` holds, for at most `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Reads until the server ends the connection; true if it did so within the watchdog (an
/// alert or a 400 may come first), false if the socket stayed open.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true, // reset
        }
    }
}

#[test]
fn wss_json_pub_sub_across_two_workers_and_raw_echo() {
    let pki = Pki::new("pubsub");
    let server = start_tls(2, &pki);
    let addr = server.local_addr();
    // The acceptor deals connections round robin: these two land on different workers.
    let mut sub = connect_wss(addr, "/ws", pki.client());
    let mut publisher = connect_wss(addr, "/ws", pki.client());
    assert_eq!(version(&sub), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(
        sub.get_ref().conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN"
    );
    send(&mut sub, json!({"op":"subscribe","topic":"news","id":1}));
    assert_eq!(recv(&mut sub), json!({"op":"ok","id":1}));
    // Larger than one TLS record (16 KiB): the delivery spans records.
    let big = "x".repeat(40_000);
    for i in 0..20 {
        send(
            &mut publisher,
            json!({"op":"publish","topic":"news","data":[i, big]}),
        );
    }
    for i in 0..20 {
        let m = recv(&mut sub);
        assert_eq!(m["topic"], "news");
        assert_eq!(m["data"][0], i);
        assert_eq!(m["data"][1].as_str().unwrap().len(), 40_000);
    }
    send(
        &mut publisher,
        json!({"op":"echo","id":9,"data":"over tls"}),
    );
    assert_eq!(
        recv(&mut publisher),
        json!({"op":"echo","id":9,"data":"over tls"})
    );

    let mut echo = connect_wss(addr, "/echo", pki.client());
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i * 7) as u8).collect();
    echo.send(Message::binary(payload.clone())).unwrap();
    match echo.read().unwrap() {
        Message::Binary(b) => assert_eq!(&b[..], &payload[..]),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    let s = server.stats();
    assert_eq!(s.tls_upgrades, 3, "{s:?}");
    assert_eq!(s.handshakes, 3, "{s:?}");
    assert_eq!((s.tls_errors, s.tls_plain_http), (0, 0), "{s:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_tls12_client_is_served() {
    let pki = Pki::new("tls12");
    let server = start_tls(1, &pki);
    let mut c = connect_wss(server.local_addr(), "/ws", pki.client_tls12());
    assert_eq!(version(&c), Some(rustls::ProtocolVersion::TLSv1_2));
    send(&mut c, json!({"op":"echo","data":[1,2,3]}));
    assert_eq!(recv(&mut c), json!({"op":"echo","data":[1,2,3]}));
    server.shutdown().unwrap();
}

/// TLS 1.3 session tickets wait for the 101 rather than following the client's Finished
/// alone: a client that reads on one thread while it writes its upgrade request on another
/// (Python's `websockets` over CPython's ssl) can lose that request if they arrive then.
/// Held, they still come, and a second connection resumes with one.
#[test]
fn tls13_session_tickets_wait_for_the_upgrade_response_and_resume_a_session() {
    let pki = Pki::new("tickets");
    let server = start_tls(2, &pki);
    let cfg = pki.client();
    let mut tls = tls_stream(server.local_addr(), cfg.clone());
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("tls handshake");
    }
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // The handshake is done; nothing is to come until the client asks for something.
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    match tls.sock.peek(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the server sent something before the upgrade request: {other:?}"),
    }
    tls.sock.set_read_timeout(Some(WATCHDOG)).unwrap();
    let url = format!("wss://localhost:{}/ws", server.local_addr().port());
    let (mut ws, resp) = tungstenite::client(url.as_str(), tls).expect("upgrade");
    assert_eq!(resp.status(), 101);
    send(&mut ws, json!({"op":"echo","data":"first"}));
    assert_eq!(recv(&mut ws), json!({"op":"echo","data":"first"}));
    // The tickets came with the 101: the next connection (to either worker) resumes.
    for i in 0..2 {
        let mut again = connect_wss(server.local_addr(), "/ws", cfg.clone());
        assert_eq!(
            again.get_ref().conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "connection {i} after the first"
        );
        send(&mut again, json!({"op":"echo","data":i}));
        assert_eq!(recv(&mut again), json!({"op":"echo","data":i}));
    }
    let stats = server.stats();
    assert_eq!(stats.tls_errors, 0, "{stats:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_client_that_cuts_everything_into_tiny_records_is_served() {
    let pki = Pki::new("fragments");
    let server = start_tls(1, &pki);
    for cfg in [pki.client(), pki.client_tls12()] {
        // Every handshake message and every frame split over records of 64 bytes or less,
        // each flushed as its own segment: the server reassembles handshake messages that
        // span records and frames that span many.
        let mut cfg = (*cfg).clone();
        cfg.max_fragment_size = Some(64);
        let mut c = connect_wss(server.local_addr(), "/ws", Arc::new(cfg));
        let data = "f".repeat(3000);
        send(&mut c, json!({"op":"echo","data":data}));
        assert_eq!(recv(&mut c)["data"].as_str().unwrap().len(), 3000);
        c.close(None).unwrap();
        let _ = expect_close(&mut c);
    }
    assert!(eventually(WATCHDOG, || server.stats().open == 0));
    let s = server.stats();
    assert_eq!((s.tls_upgrades, s.tls_errors), (2, 0), "{s:?}");
    server.shutdown().unwrap();
}

#[test]
fn close_codes_over_tls_and_close_notify_after_the_close_frame() {
    let pki = Pki::new("close");
    let server = start_tls_small(&pki);
    let addr = server.local_addr();

    // The client closes with 4000: the server answers with the same code, then close_notify
    // and FIN, which rustls reads as a clean end of stream.
    let mut c = connect_wss(addr, "/ws", pki.client());
    c.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(expect_close(&mut c), 4000);
    let mut tls = c.into_inner();
    let mut rest = Vec::new();
    let n = tls
        .read_to_end(&mut rest)
        .expect("close_notify, not an unexpected EOF");
    assert_eq!(n, 0);

    // Too large a message: 1009.
    let mut c = connect_wss(addr, "/ws", pki.client());
    c.send(Message::text("y".repeat(5000))).unwrap();
    assert_eq!(expect_close(&mut c), 1009);

    // An unmasked client frame, written straight into the TLS stream: 1002.
    let mut c = connect_wss(addr, "/ws", pki.client());
    c.get_mut().write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    c.get_mut().flush().unwrap();
    assert_eq!(expect_close(&mut c), 1002);

    let s = server.stats();
    assert_eq!(s.tls_errors, 0, "{s:?}");
    server.shutdown().unwrap();
}

#[test]
fn plain_http_on_the_tls_port_gets_a_400_that_says_so() {
    let pki = Pki::new("plain");
    let server = start_tls(1, &pki);
    let addr = server.local_addr();
    for req in [
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WATCHDOG)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let resp = read_response(&mut s).expect("an HTTP answer");
        assert_eq!(resp.status, 400, "{resp:?}");
        assert!(resp.body.contains("wss://"), "{resp:?}");
        assert_eq!(resp.header("connection"), Some("close"));
        assert!(closed_by_server(&mut s));
    }
    assert!(eventually(WATCHDOG, || server.stats().open == 0));
    let s = server.stats();
    assert_eq!(s.tls_plain_http, 2, "{s:?}");
    // The worker goes on serving TLS.
    let mut c = connect_wss(addr, "/ws", pki.client());
    send(&mut c, json!({"op":"echo","data":1}));
    assert_eq!(recv(&mut c), json!({"op":"echo","data":1}));
    server.shutdown().unwrap();
}

#[test]
fn garbage_records_are_closed_and_counted() {
    let pki = Pki::new("garbage");
    let server = start_tls(1, &pki);
    let addr = server.local_addr();
    let garbage: Vec<Vec<u8>> = vec![
        // A handshake record whose message is nonsense.
        [&[0x16, 0x03, 0x01, 0x00, 0x20][..], &[0xEE; 0x20]].concat(),
        // Application data before any handshake.
        [&[0x17, 0x03, 0x03, 0x00, 0x10][..], &[0x01; 0x10]].concat(),
        // A record header declaring more than TLS allows (2^14 + 2048 + 1).
        vec![0x16, 0x03, 0x03, 0x48, 0x01, 0x01, 0x00],
        // Binary noise that is not even a record type.
        (0..200u32).map(|i| (i * 37 + 11) as u8).collect(),
    ];
    for (i, g) in garbage.iter().enumerate() {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WATCHDOG)).unwrap();
        s.write_all(g).unwrap();
        assert!(closed_by_server(&mut s), "garbage {i} left the socket open");
    }
    assert!(eventually(WATCHDOG, || server.stats().open == 0));
    let s = server.stats();
    assert_eq!(s.tls_errors, garbage.len() as u64, "{s:?}");
    assert_eq!(s.tls_upgrades, 0, "{s:?}");

    // A real client on the same worker is unaffected.
    let mut c = connect_wss(addr, "/ws", pki.client());
    send(&mut c, json!({"op":"echo","data":"still here"}));
    assert_eq!(recv(&mut c), json!({"op":"echo","data":"still here"}));
    server.shutdown().unwrap();
}

#[test]
fn a_certificate_the_client_rejects_is_a_counted_tls_error() {
    let pki = Pki::new("untrusted");
    let other = Pki::new("untrusted-other");
    let server = start_tls(1, &pki);
    let err = try_connect_wss(server.local_addr(), "/ws", other.client())
        .expect_err("a client trusting another CA must refuse the server");
    assert!(
        err.to_string().contains("certificate") || err.to_string().contains("UnknownIssuer"),
        "{err}"
    );
    // The client's alert reaches the server, which drops the connection.
    assert!(eventually(WATCHDOG, || {
        let s = server.stats();
        s.open == 0 && s.tls_errors == 1
    }));
    server.shutdown().unwrap();
}

/// The bytes of a real ClientHello, as a rustls client would send them.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        pki.client(),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], 0x16);
    hello
}

#[test]
fn a_client_hello_trickled_byte_by_byte_is_cut_at_the_handshake_timeout() {
    let pki = Pki::new("trickle");
    let mut cfg = tls_config(1, &pki);
    cfg.handshake_timeout = Duration::from_secs(1);
    let server = start(cfg);
    let hello = client_hello(&pki);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut cut = false;
    // One byte every 100 ms would take the whole hello ~30 s.
    for b in &hello {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        sent += 1;
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(n) => panic!("the server answered a partial ClientHello with {n} bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    assert!(cut, "the whole ClientHello trickled in without a cut");
    assert!(sent < hello.len(), "sent {sent} of {}", hello.len());
    assert!(took < Duration::from_secs(4), "cut after {took:?}");
    assert!(eventually(WATCHDOG, || server.stats().open == 0));
    let s = server.stats();
    assert_eq!(s.timeouts, 1, "{s:?}");
    server.shutdown().unwrap();
}

#[test]
fn peers_that_never_send_close_notify_are_cleaned_up() {
    let pki = Pki::new("notify");
    let server = start_tls_small(&pki);
    let addr = server.local_addr();

    // 1. Hangs up mid-session: no close frame, no close_notify, just FIN.
    let c = connect_wss(addr, "/ws", pki.client());
    let tcp = c.into_inner().sock;
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(eventually(WATCHDOG, || server.stats().hangups == 1));

    // 2. The server closes (the message is too large) and the peer never answers: no close
    //    frame, no close_notify, no FIN. The server does not wait past its close timeout.
    let mut c = connect_wss(addr, "/ws", pki.client());
    c.send(Message::text("z".repeat(5000))).unwrap();
    let started = Instant::now();
    assert!(eventually(WATCHDOG, || server.stats().open == 0));
    assert!(started.elapsed() < Duration::from_secs(5));

    // 3. Resets the connection during the handshake.
    let mut s = TcpStream::connect(addr).unwrap();
    let hello = client_hello(&pki);
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    process::reset(s);

    assert!(eventually(WATCHDOG, || server.stats().open == 0));
    let s = server.stats();
    assert_eq!(s.tls_memory, 0, "{s:?}");
    assert_eq!(s.closed, 3, "{s:?}");
    assert_eq!(s.hangups, 2, "{s:?}");
    assert_eq!(s.protocol_errors, 1, "{s:?}");
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn a_stalled_wss_reader_costs_at_most_its_bound_plus_one_batch() {
    let pki = Pki::new("stalled");
    let mut cfg = tls_config(1, &pki);
    cfg.max_outbound_bytes = 256 * 1024;
    cfg.slow_consumer = corecast::config::SlowConsumer::Drop;
    let server = start(cfg);
    let addr = server.local_addr();

    let mut sub = connect_wss(addr, "/ws", pki.client());
    process::set_int_opt(&sub.get_ref().sock, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
    send(&mut sub, json!({"op":"subscribe","topic":"t"}));
    assert_eq!(recv(&mut sub), json!({"op":"ok"}));
    let mut publisher = connect_wss(addr, "/ws", pki.client());
    let data = "p".repeat(2000);
    let mut peak_tls = 0;
    let mut peak_queue = 0;
    // Until a good many messages have been dropped: the kernel's socket buffers take a few
    // MB before the queue fills.
    for round in 0..200 {
        if server.stats().dropped > 1000 {
            break;
        }
        for i in 0..100 {
            send(
                &mut publisher,
                json!({"op":"publish","topic":"t","data":[round, i, data]}),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        let s = server.stats();
        peak_tls = peak_tls.max(s.tls_memory);
        peak_queue = peak_queue.max(s.outbound_memory);
    }
    let s = server.stats();
    // Megabytes published at a reader that takes nothing: its queue holds its bound, its
    // TLS state at most one batch of ciphertext (64 KiB and record overhead).
    assert!(
        peak_queue <= 256 * 1024 + 64 * 1024,
        "queue peaked at {peak_queue}"
    );
    assert!(peak_tls <= 80 * 1024, "TLS buffers peaked at {peak_tls}");
    assert!(s.dropped > 1000, "{s:?}");

    // The publisher, on the same worker, is served all along.
    send(&mut publisher, json!({"op":"echo","data":"alive"}));
    assert_eq!(recv(&mut publisher), json!({"op":"echo","data":"alive"}));
    drop(sub);
    assert!(eventually(WATCHDOG, || server.stats().open == 1));
    assert_eq!(server.stats().tls_memory, 0);
    server.shutdown().unwrap();
}

// ---- the binary: start-up errors, SIGHUP, memory per idle connection ----

/// Runs the binary with `args` and returns (exit code, stderr) when it exits by itself.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
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
fn bad_certificate_or_key_files_are_an_error_and_exit_code_2() {
    let pki = Pki::new("badfiles");
    let other = Pki::new("badfiles-other");
    let chain = pki.arg("chain.pem");
    let key = pki.arg("key.pem");
    let other_key = other.arg("key.pem");
    let missing = pki.arg("missing.pem");
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.display().to_string();
    let cases: [(&[&str], &str); 5] = [
        (&["--tls-cert", &missing, "--tls-key", &key], "missing.pem"),
        (&["--tls-cert", &empty, "--tls-key", &key], "no certificate"),
        (
            &["--tls-cert", &chain, "--tls-key", &empty],
            "no private key",
        ),
        // A key from another pair.
        (
            &["--tls-cert", &chain, "--tls-key", &other_key],
            "cannot be used together",
        ),
        // One without the other.
        (&["--tls-cert", &chain], "--tls-key"),
    ];
    for (args, says) in cases {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?}: expected {says:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A self-signed certificate for `localhost` whose key the openssl CLI writes in the form
/// `genkey` gives (PKCS#1 "RSA PRIVATE KEY", SEC1 "EC PRIVATE KEY"); returns the PEM of
/// the certificate, which the client then trusts as it is.
fn openssl_pair(dir: &std::path::Path, genkey: &[&str], expect: &str) -> String {
    let key = dir.join("key.pem");
    let cert = dir.join("chain.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl CLI (tools/install-test-deps.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    // `-out FILE` right after the command: genrsa wants the key size last.
    let key_s = key.display().to_string();
    let mut args = vec![genkey[0], "-out", &key_s];
    args.extend(&genkey[1..]);
    run(&args);
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with(expect), "{genkey:?} wrote {pem:.40}");
    let cert_s = cert.display().to_string();
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &key_s,
        "-out",
        &cert_s,
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
    ]);
    std::fs::read_to_string(&cert).unwrap()
}

#[test]
fn rsa_and_sec1_ec_keys_are_accepted_as_well_as_pkcs8() {
    let pki = Pki::new("keyformats");
    for (genkey, expect) in [
        (
            &["genrsa", "-traditional", "2048"][..],
            "-----BEGIN RSA PRIVATE KEY-----",
        ),
        (
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout"][..],
            "-----BEGIN EC PRIVATE KEY-----",
        ),
    ] {
        let cert_pem = openssl_pair(&pki.dir, genkey, expect);
        let mut cfg = config(1);
        cfg.tls = Some(pki.files());
        let server = start(cfg);
        let mut trusted = Pki::new("keyformats-trust");
        trusted.ca_pem = cert_pem;
        let mut c = connect_wss(server.local_addr(), "/ws", trusted.client());
        send(&mut c, json!({"op":"echo","data":expect}));
        assert_eq!(recv(&mut c), json!({"op":"echo","data":expect}));
        server.shutdown().unwrap();
    }
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let pki = Pki::new("reload");
    let chain = pki.arg("chain.pem");
    let key = pki.arg("key.pem");
    let p = Proc::start(&["--workers", "2", "--tls-cert", &chain, "--tls-key", &key]);
    let old_ca = pki.client();
    let mut old = connect_wss(p.addr, "/ws", old_ca.clone());
    let mut old2 = connect_wss(p.addr, "/ws", old_ca.clone());
    send(&mut old, json!({"op":"subscribe","topic":"r"}));
    assert_eq!(recv(&mut old), json!({"op":"ok"}));

    // New CA and certificate over the same paths, then SIGHUP.
    let pki = pki.reissue();
    let new_ca = pki.client();
    let hup = |p: &Proc| {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGHUP) };
    };
    hup(&p);
    assert!(
        eventually(WATCHDOG, || p
            .log()
            .iter()
            .any(|l| l.contains("certificate and key reloaded"))),
        "{:?}",
        p.log()
    );
    // Both workers have it once they have read their queues: retry for a moment.
    assert!(eventually(WATCHDOG, || (0..4).all(|_| {
        try_connect_wss(p.addr, "/ws", new_ca.clone()).is_ok()
    })));
    assert!(try_connect_wss(p.addr, "/ws", old_ca.clone()).is_err());
    // The connections from before the reload go on, on both workers.
    send(
        &mut old2,
        json!({"op":"publish","topic":"r","data":"after reload"}),
    );
    assert_eq!(recv(&mut old)["data"], "after reload");

    // A reload that fails keeps what works.
    std::fs::write(pki.path("chain.pem"), "not a certificate").unwrap();
    hup(&p);
    assert!(
        eventually(WATCHDOG, || p.log().iter().any(|l| l
            .contains("reload failed, keeping the current certificate")
            && l.contains("chain.pem"))),
        "{:?}",
        p.log()
    );
    let mut fresh = connect_wss(p.addr, "/ws", new_ca);
    send(&mut fresh, json!({"op":"echo","data":2}));
    assert_eq!(recv(&mut fresh), json!({"op":"echo","data":2}));
    send(&mut old, json!({"op":"echo","data":3}));
    assert_eq!(recv(&mut old), json!({"op":"echo","data":3}));
    assert!(p.log().iter().all(|l| !l.contains("panicked")));
    assert!(p.terminate().success());
}

#[test]
fn an_idle_wss_connection_costs_under_4_kib_of_server_memory() {
    const N: usize = 5000;
    const WARM: usize = 300;
    let pki = Pki::new("idle");
    let chain = pki.arg("chain.pem");
    let key = pki.arg("key.pem");
    let p = Proc::start(&["--workers", "2", "--tls-cert", &chain, "--tls-key", &key]);
    let cfg: Arc<rustls::ClientConfig> = pki.client();
    // Some connections first, so that one-time costs (the session cache of 256 entries,
    // allocator arenas, the workers' scratch buffers) are in the baseline.
    let mut warm: Vec<WssClient> = (0..WARM)
        .map(|_| connect_wss(p.addr, "/ws", cfg.clone()))
        .collect();
    for c in &mut warm {
        send(c, json!({"op":"echo","data":0}));
        assert_eq!(recv(c), json!({"op":"echo","data":0}));
    }
    // Pages freed after the handshakes go back to the OS within about a second.
    std::thread::sleep(Duration::from_millis(1500));
    let base = p.rss();
    let conns: Vec<WssClient> = (0..N)
        .map(|_| connect_wss(p.addr, "/ws", cfg.clone()))
        .collect();
    p.wait_metric("corecast_tls_upgrades_total", None, WATCHDOG, |v| {
        v == (N + WARM) as f64
    });
    std::thread::sleep(Duration::from_millis(1500));
    let per_conn = p.rss().saturating_sub(base) / N as u64;
    eprintln!("idle wss connection: {per_conn} bytes of RSS each over {N}");
    assert!(per_conn <= 4096, "{per_conn} bytes per idle wss connection");
    assert_eq!(p.metric("corecast_tls_memory_bytes", None), 0.0);
    assert!(p.rss() < 256 * MIB);
    drop(conns);
    drop(warm);
    assert!(p.terminate().success());
}
