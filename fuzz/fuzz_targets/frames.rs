//! Fuzzes the frame path exactly as a worker runs it: an open connection's state machine fed
//! a byte stream event by event (frames, fragments, control frames, close frames).
#![no_main]

use corecast::config::Config;
use corecast::conn::{Event, Machine, Phase};
use libfuzzer_sys::fuzz_target;

const UPGRADE: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        max_message_size: 1 << 16,
        max_frame_size: 1 << 16,
        ..Config::default()
    };
    let mut m = Machine::new();
    let mut up = UPGRADE.to_vec();
    assert!(matches!(m.next(&mut up, &cfg).1, Event::Upgraded { .. }));
    let mut buf = data.to_vec();
    let mut pos = 0;
    while pos < buf.len() && m.phase() != Phase::Closing {
        let (used, event) = m.next(&mut buf[pos..], &cfg);
        match event {
            Event::NeedMore => return,
            Event::Ping(p) => assert!(p.len() <= 125),
            Event::Assembled(f) => assert!(f.data.len() <= 1 << 16),
            Event::Fail(why) => assert!([1002, 1007, 1009].contains(&why.code())),
            _ => {}
        }
        assert!(used > 0 && pos + used <= buf.len());
        pos += used;
    }
});
