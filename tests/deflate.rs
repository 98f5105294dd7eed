//! permessage-deflate (RFC 7692) over real sockets, with frames compressed and inflated in
//! the test by flate2: negotiation, a compressed publish shared by every deflate subscriber,
//! plain frames for the others, and the clients that break the rules (a compression bomb,
//! bad DEFLATE data, RSV1 where it is not allowed).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::process::Proc;
use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// `data` as one message without context: compressed, sync-flushed, tail removed.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    while c.total_in() < data.len() as u64 {
        out.reserve(out.capacity());
        c.compress_vec(
            &data[c.total_in() as usize..],
            &mut out,
            FlushCompress::Sync,
        )
        .unwrap();
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(data.len() * 20 + 1024);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// The next data message as text, inflated if RSV1 says so; and whether it was.
fn message(s: &mut TcpStream) -> (String, bool) {
    let (first, payload) = raw_frame_bits(s);
    assert_eq!(
        first & 0x0F,
        1,
        "expected a text frame, first byte {first:#x}"
    );
    let zipped = first & 0x40 != 0;
    let text = if zipped { inflate(&payload) } else { payload };
    (String::from_utf8(text).unwrap(), zipped)
}

fn close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (first, payload) = raw_frame_bits(s);
        if first & 0x0F == 8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

fn deflate_server(workers: usize) -> corecast::Server {
    let mut cfg = config(workers);
    cfg.permessage_deflate = true;
    start(cfg)
}

#[test]
fn negotiation_answers_with_no_context_takeover_or_not_at_all() {
    let server = deflate_server(1);
    let (_s, head) = upgrade_offering(server.local_addr(), "/ws", OFFER);
    assert!(head.to_ascii_lowercase().contains(
        "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
         client_no_context_takeover\r\n"
    ));
    // An offer corecast cannot honour (an 8-bit window) is declined, not fatal.
    let (mut s, head) = upgrade_offering(
        server.local_addr(),
        "/ws",
        "permessage-deflate; server_max_window_bits=8",
    );
    assert!(!head.to_ascii_lowercase().contains("extensions"), "{head}");
    s.write_all(&masked(0x81, br#"{"op":"echo","data":1}"#))
        .unwrap();
    assert_eq!(message(&mut s), (r#"{"op":"echo","data":1}"#.into(), false));
    server.shutdown().unwrap();

    // Without the flag, the offer is ignored and the connection works uncompressed.
    let server = start(config(1));
    let (mut s, head) = upgrade_offering(server.local_addr(), "/ws", OFFER);
    assert!(!head.to_ascii_lowercase().contains("extensions"), "{head}");
    s.write_all(&masked(0x81, br#"{"op":"echo","data":2}"#))
        .unwrap();
    assert_eq!(message(&mut s), (r#"{"op":"echo","data":2}"#.into(), false));
    // ... and RSV1 is then a protocol error.
    s.write_all(&masked(0xC1, &deflate(br#"{"op":"echo","data":3}"#)))
        .unwrap();
    assert_eq!(close_code(&mut s), 1002);
    server.shutdown().unwrap();
}

#[test]
fn a_publish_is_compressed_once_per_worker_and_shared_by_its_deflate_subscribers() {
    let server = deflate_server(1);
    let addr = server.local_addr();
    let mut zipped_subs: Vec<TcpStream> = (0..5)
        .map(|_| upgrade_offering(addr, "/ws", OFFER).0)
        .collect();
    let mut plain = raw_upgraded(addr, "/ws");
    let req = br#"{"op":"subscribe","topic":"doc"}"#;
    for s in &mut zipped_subs {
        // Sent compressed where negotiated: the server inflates it.
        s.write_all(&masked(0xC1, &deflate(req))).unwrap();
        assert_eq!(message(s).0, r#"{"op":"ok"}"#);
    }
    plain.write_all(&masked(0x81, req)).unwrap();
    assert_eq!(message(&mut plain).0, r#"{"op":"ok"}"#);
    let doc: String = (0..40)
        .map(|i| format!(r#"{{"id":{i},"name":"item {i}","tags":["a","b"]}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let publish = format!(r#"{{"op":"publish","topic":"doc","data":[{doc}]}}"#);
    plain.write_all(&masked(0x81, publish.as_bytes())).unwrap();
    let want = format!(r#"{{"op":"message","topic":"doc","data":[{doc}]}}"#);
    for s in &mut zipped_subs {
        assert_eq!(message(s), (want.clone(), true));
    }
    assert_eq!(message(&mut plain), (want.clone(), false));
    // Small messages go out as they are.
    plain
        .write_all(&masked(0x81, br#"{"op":"publish","topic":"doc","data":1}"#))
        .unwrap();
    for s in zipped_subs.iter_mut().chain(std::iter::once(&mut plain)) {
        assert_eq!(
            message(s),
            (r#"{"op":"message","topic":"doc","data":1}"#.into(), false)
        );
    }
    let st = server.stats();
    assert_eq!(
        st.messages_compressed, 1,
        "one compression for 5 subscribers: {st:?}"
    );
    assert_eq!(st.deflate_upgrades, 5, "{st:?}");
    assert_eq!(st.messages_inflated, 5, "{st:?}");
    server.shutdown().unwrap();
}

#[test]
fn a_compression_bomb_is_stopped_at_the_message_limit() {
    let mut cfg = config(1);
    cfg.permessage_deflate = true;
    cfg.max_message_size = 64 * 1024;
    cfg.max_frame_size = 64 * 1024;
    let server = start(cfg);
    let (mut s, _) = upgrade_offering(server.local_addr(), "/echo", OFFER);
    // 50 MB of zeros in about 50 KB.
    let bomb = deflate(&vec![0u8; 50 << 20]);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    s.write_all(&masked(0xC2, &bomb)).unwrap();
    assert_eq!(close_code(&mut s), 1009);
    // Inflating just under the limit is fine.
    let (mut s, _) = upgrade_offering(server.local_addr(), "/echo", OFFER);
    let fits = vec![b'a'; 60 * 1024];
    s.write_all(&masked(0xC1, &deflate(&fits))).unwrap();
    let (first, payload) = raw_frame_bits(&mut s);
    assert_eq!(first & 0x0F, 1);
    let back = if first & 0x40 != 0 {
        inflate(&payload)
    } else {
        payload
    };
    assert_eq!(back, fits);
    server.shutdown().unwrap();
}

#[test]
fn bad_compressed_data_and_misplaced_rsv1_close_the_connection() {
    let server = deflate_server(1);
    let addr = server.local_addr();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            masked(0xC1, &[0xff, 0xff, 0xff, 0xff]),
            1007,
            "invalid DEFLATE data",
        ),
        // Valid DEFLATE, invalid UTF-8 once inflated.
        (
            masked(0xC1, &deflate(&[0xC0, 0x80, b'a'])),
            1007,
            "invalid UTF-8",
        ),
        (masked(0xC9, b"p"), 1002, "RSV1 on a ping"),
        (
            [masked(0x41, &deflate(b"hello")), masked(0xC0, b"x")].concat(),
            1002,
            "RSV1 on a continuation",
        ),
        (masked(0xA1, b"x"), 1002, "RSV2"),
    ];
    for (bytes, code, what) in cases {
        let (mut s, _) = upgrade_offering(addr, "/echo", OFFER);
        s.write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut s), code, "{what}");
    }
    // Fragmented and compressed, done right: echoed whole.
    let (mut s, _) = upgrade_offering(addr, "/echo", OFFER);
    let z = deflate("héllo wörld ".repeat(100).as_bytes());
    let (a, b) = z.split_at(z.len() / 2);
    s.write_all(&[masked(0x41, a), masked(0x80, b)].concat())
        .unwrap();
    let (first, payload) = raw_frame_bits(&mut s);
    let back = if first & 0x40 != 0 {
        inflate(&payload)
    } else {
        payload
    };
    assert_eq!(String::from_utf8(back).unwrap(), "héllo wörld ".repeat(100));
    server.shutdown().unwrap();
}

/// Opens `n` idle connections to `/ws`, offering `extensions` if given, as fast as the
/// server answers (each reads its 101 and nothing more).
fn open_idle(addr: SocketAddr, n: usize, extensions: Option<&str>) -> Vec<TcpStream> {
    let offer = extensions.map_or(String::new(), |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(WATCHDOG)).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                let got = s.read(&mut buf).unwrap();
                assert!(got > 0, "closed during the upgrade");
                head.extend_from_slice(&buf[..got]);
            }
            let head = String::from_utf8(head).unwrap();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert_eq!(
                head.contains("permessage-deflate"),
                extensions.is_some(),
                "{head}"
            );
            s
        })
        .collect()
}

/// The issue's target: a connection that negotiated permessage-deflate holds no compression
/// state while idle, so it costs the server what a plain one does, within 64 bytes. Two
/// servers with `--permessage-deflate`, one given plain clients, one deflate clients.
#[test]
fn an_idle_deflate_connection_costs_no_more_than_a_plain_one() {
    const N: usize = 6000;
    const WARM: usize = 200;
    let per_conn = |offer: Option<&str>| {
        let p = Proc::start(&["--workers", "2", "--permessage-deflate"]);
        // One-time costs (slab, allocator arenas, scratch buffers) go in the baseline.
        let warm = open_idle(p.addr, WARM, offer);
        std::thread::sleep(Duration::from_millis(1500));
        let base = p.rss();
        let conns = open_idle(p.addr, N, offer);
        p.wait_metric("corecast_handshakes_total", None, WATCHDOG, |v| {
            v == (N + WARM) as f64
        });
        let deflated = p.metric("corecast_deflate_upgrades_total", None);
        let want = if offer.is_some() { N + WARM } else { 0 };
        assert_eq!(deflated, want as f64);
        std::thread::sleep(Duration::from_millis(1500));
        let bytes = p.rss().saturating_sub(base) as f64 / N as f64;
        drop(conns);
        drop(warm);
        assert!(p.terminate().success());
        bytes
    };
    let plain = per_conn(None);
    let deflate = per_conn(Some(OFFER));
    eprintln!("idle connection: {plain:.0} B plain, {deflate:.0} B with permessage-deflate");
    assert!(plain < 512.0, "{plain} bytes per plain idle connection");
    assert!(
        deflate <= plain + 64.0,
        "{deflate} bytes per idle deflate connection, {plain} per plain one"
    );
}
