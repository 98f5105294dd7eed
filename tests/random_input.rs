//! A bounded, deterministic random-input run over the decoders (frames, fragments, HTTP
//! upgrade, JSON) so every CI run exercises them with garbage; `tools/fuzz.sh` runs the
//! coverage-guided cargo-fuzz targets for longer.

use corecast::config::Config;
use corecast::conn::{Event, Machine, Phase};
use corecast::handshake::{self, Outcome};
use corecast::message::MessageKind;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % max;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A state machine past the upgrade, as a worker holds one for an open connection.
fn open_machine(cfg: &Config) -> Machine {
    let mut m = Machine::new();
    let mut up = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    assert!(matches!(m.next(&mut up, cfg).1, Event::Upgraded { .. }));
    m
}

#[test]
fn random_frame_streams_never_panic_and_errors_map_to_rfc_codes() {
    let cfg = Config {
        max_message_size: 1024,
        max_frame_size: 1024,
        ..Config::default()
    };
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for _ in 0..50_000 {
        let mut buf = rng.bytes(300);
        // Bias towards plausible headers: masked, small lengths, real opcodes.
        if buf.len() > 2 {
            buf[1] |= 0x80;
            if rng.next().is_multiple_of(2) {
                buf[1] = 0x80 | (buf[1] & 0x3F);
            }
        }
        // The stream goes through the connection's state machine exactly as a worker feeds
        // it: event by event, until it needs more bytes or closes.
        let mut m = open_machine(&cfg);
        let mut pos = 0;
        while pos < buf.len() {
            let (used, event) = m.next(&mut buf[pos..], &cfg);
            match event {
                Event::NeedMore => break,
                Event::Ping(p) => assert!(p.len() <= 125),
                Event::Message { kind, data } => {
                    assert!(data.len() <= 1024);
                    if kind == MessageKind::Text {
                        assert!(std::str::from_utf8(data).is_ok());
                    }
                }
                Event::Assembled(f) => assert!(f.data.len() <= 1024),
                Event::Fail(why) => {
                    assert!([1002, 1007, 1009].contains(&why.code()), "{why:?}");
                    assert_eq!(m.phase(), Phase::Closing);
                }
                Event::PeerClose(code) => assert!((1000..5000).contains(&code)),
                _ => {}
            }
            assert!(used > 0 && pos + used <= buf.len());
            pos += used;
            if m.phase() == Phase::Closing {
                break;
            }
        }
    }
}

#[test]
fn random_http_and_json_never_panic() {
    let mut rng = Rng(0xD1B54A32D192ED03);
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    for i in 0..20_000 {
        // Mutate a valid request in a few places, or use pure noise.
        let req = if i % 2 == 0 {
            let mut r = upgrade.to_vec();
            for _ in 0..(rng.next() % 4) {
                let at = rng.next() as usize % r.len();
                r[at] = rng.next() as u8;
            }
            r
        } else {
            rng.bytes(200)
        };
        match handshake::parse(&req, &[], false, true) {
            Outcome::Upgrade {
                response, consumed, ..
            } => {
                assert!(consumed <= req.len());
                assert!(response.starts_with(b"HTTP/1.1 101"));
            }
            Outcome::Reject { response, .. } => assert!(response.starts_with(b"HTTP/1.1 ")),
            Outcome::Partial | Outcome::Page(_) => {}
        }
    }
    let samples = [
        r#"{"op":"publish","topic":"t","data":{"a":[1,2,{"b":null}]},"id":"x"}"#,
        r#"{"op":"subscribe","topic":"news","id":7}"#,
    ];
    for i in 0..20_000 {
        let mut s = samples[i % 2].as_bytes().to_vec();
        for _ in 0..(1 + rng.next() % 3) {
            let at = rng.next() as usize % s.len();
            let alphabet = b"{}[]\":,\\ a0-e";
            s[at] = alphabet[rng.next() as usize % alphabet.len()];
        }
        let Ok(text) = std::str::from_utf8(&s) else {
            continue;
        };
        let mut out = Vec::new();
        match corecast::protocol::decode(text) {
            Ok(_) => {}
            Err(bad) => corecast::protocol::error(&mut out, bad.id, "bad_request", &bad.message),
        }
        if !out.is_empty() {
            serde_json::from_slice::<serde_json::Value>(&out).expect("error replies are JSON");
        }
    }
}
