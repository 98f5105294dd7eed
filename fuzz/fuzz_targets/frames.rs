//! Fuzzes the frame path: decode a byte stream frame by frame (as the worker does, with any
//! split), reassemble fragments, validate close frames.
#![no_main]

use corecast::codec::{self, Decoded, Kind};
use corecast::message::{self, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut pos = 0;
    let mut partial = None;
    while pos < buf.len() {
        match codec::decode(&mut buf[pos..], 1 << 16) {
            Ok(Decoded::Frame { frame, used }) => {
                assert!(used > 0 && pos + used <= buf.len());
                let payload = &buf[pos + frame.payload.start..pos + frame.payload.end];
                match frame.kind {
                    Kind::Close => {
                        let _ = codec::check_close(payload);
                    }
                    Kind::Ping | Kind::Pong => assert!(payload.len() <= 125),
                    k => match message::feed(&mut partial, k, frame.fin, payload, 1 << 16) {
                        Ok(Step::Completed) => {
                            let m = partial.take().expect("completed message");
                            assert!(m.data.len() <= 1 << 16);
                        }
                        Ok(_) => {}
                        Err(code) => {
                            assert!([1002, 1007, 1009].contains(&code));
                            return;
                        }
                    },
                }
                pos += used;
            }
            Ok(Decoded::Incomplete { need }) => {
                assert!(need == 0 || need > buf.len() - pos);
                return;
            }
            Err(e) => {
                assert!([1002, 1009].contains(&e.close_code()));
                return;
            }
        }
    }
});
