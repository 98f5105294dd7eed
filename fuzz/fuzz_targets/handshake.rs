//! Fuzzes the HTTP upgrade parser: any bytes give Partial, an upgrade, a health check or a
//! refusal with a well-formed HTTP response; never a panic.
#![no_main]

use corecast::handshake::{self, Outcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match handshake::parse(data, &[], true) {
        Outcome::Upgrade { response, consumed, .. } => {
            assert!(consumed <= data.len());
            assert!(response.starts_with(b"HTTP/1.1 101"));
        }
        Outcome::Reject { response, .. } => assert!(response.starts_with(b"HTTP/1.1 ")),
        Outcome::Partial => assert!(data.len() < handshake::MAX_REQUEST_HEAD),
        Outcome::Health => {}
    }
});
