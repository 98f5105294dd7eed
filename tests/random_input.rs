//! A bounded, deterministic random-input run over the decoders (frames, fragments, HTTP
//! upgrade, JSON) so every CI run exercises them with garbage; `tools/fuzz.sh` runs the
//! coverage-guided cargo-fuzz targets for longer.

use corecast::codec::{self, Decoded, Kind};
use corecast::handshake::{self, Outcome};
use corecast::message::{self, Step};

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

#[test]
fn random_frame_streams_never_panic_and_errors_map_to_rfc_codes() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for _ in 0..50_000 {
        let mut buf = rng.bytes(300);
        // Bias towards plausible headers: masked, small lengths, real opcodes.
        if buf.len() > 2 {
            buf[1] |= 0x80;
            if rng.next() % 2 == 0 {
                buf[1] = 0x80 | (buf[1] & 0x3F);
            }
        }
        let mut pos = 0;
        let mut partial = None;
        while pos < buf.len() {
            match codec::decode(&mut buf[pos..], 1024) {
                Ok(Decoded::Frame { frame, used }) => {
                    let p = &buf[pos + frame.payload.start..pos + frame.payload.end];
                    match frame.kind {
                        Kind::Close => {
                            if let Err(c) = codec::check_close(p) {
                                assert!(c == 1002 || c == 1007);
                            }
                        }
                        Kind::Ping | Kind::Pong => assert!(p.len() <= 125),
                        k => match message::feed(&mut partial, k, frame.fin, p, 1024) {
                            Ok(Step::Completed) => {
                                partial.take().unwrap();
                            }
                            Ok(_) => {}
                            Err(c) => {
                                assert!([1002, 1007, 1009].contains(&c));
                                break;
                            }
                        },
                    }
                    pos += used;
                }
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => {
                    assert!([1002, 1009].contains(&e.close_code()));
                    break;
                }
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
        match handshake::parse(&req, &[]) {
            Outcome::Upgrade {
                response, consumed, ..
            } => {
                assert!(consumed <= req.len());
                assert!(response.starts_with(b"HTTP/1.1 101"));
            }
            Outcome::Reject { response, .. } => assert!(response.starts_with(b"HTTP/1.1 ")),
            Outcome::Partial | Outcome::Health => {}
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
