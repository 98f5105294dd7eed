//! Fuzzes the JSON request path: decode, and the replies built from whatever decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut out = Vec::new();
    match corecast::protocol::decode(text) {
        Ok(req) => {
            use corecast::protocol::Request::*;
            match req {
                Echo { id, data } => corecast::protocol::echo(&mut out, id, data),
                Subscribe { id, .. } | Unsubscribe { id, .. } => corecast::protocol::ok(&mut out, id),
                Publish { topic, data, .. } => {
                    corecast::protocol::message(&mut out, Some(&topic), data);
                    let _ = corecast::broadcast::encode(
                        corecast::broadcast::Target::Topic(std::sync::Arc::from(&*topic)),
                        data,
                    );
                }
                Broadcast { data, .. } => corecast::protocol::message(&mut out, None, data),
            }
        }
        Err(bad) => corecast::protocol::error(&mut out, bad.id, "bad_request", &bad.message),
    }
    // Every reply the server would send must itself be valid JSON.
    serde_json_check(&out);
});

fn serde_json_check(out: &[u8]) {
    assert!(
        std::str::from_utf8(out).is_ok() && out.first() == Some(&b'{') && out.last() == Some(&b'}'),
        "reply is not a JSON object: {:?}",
        String::from_utf8_lossy(out)
    );
}
