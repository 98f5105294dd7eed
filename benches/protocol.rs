//! JSON envelope hot paths: `protocol::decode` on typical requests and reply encoding.
//!
//! * `decode/*`: one text message through `protocol::decode` (envelope parse into borrowed
//!   `Raw` values, then op dispatch and field checks). The requests are the ones clients send
//!   most: echo, subscribe, publish with a ~100-byte object, broadcast, plus two that fail
//!   (unknown op, malformed JSON) since error paths format messages. Throughput is input bytes.
//! * `envelope/*`: the same publish with flat `data` (an object of scalars) and with nested
//!   `data` (objects and arrays inside it), through `decode` (the envelope scanner) and
//!   through `decode_by_serde` (serde_json reading the envelope, as before the scanner; it
//!   allocates once for the nested one).
//! * `reply/*`: `protocol::ok`, `echo`, `error` and `message` into one reused `Vec` cleared
//!   before each call, as a worker appends replies to a connection's outbound tail.

use std::hint::black_box;

use corecast::protocol::{self, Raw, Request};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const DATA_100B: &str =
    r#"{"user":"u-12345","seq":987654,"price":101.25,"tags":["a","b","c"],"note":"hello world"}"#;

fn requests() -> Vec<(&'static str, String)> {
    vec![
        (
            "echo_small",
            r#"{"op":"echo","id":1,"data":"hello"}"#.to_owned(),
        ),
        (
            "echo_100B",
            format!(r#"{{"op":"echo","id":"req-42","data":{DATA_100B}}}"#),
        ),
        (
            "subscribe",
            r#"{"op":"subscribe","id":2,"topic":"prices.eurusd"}"#.to_owned(),
        ),
        (
            "unsubscribe",
            r#"{"op":"unsubscribe","id":3,"topic":"prices.eurusd"}"#.to_owned(),
        ),
        (
            "publish_100B",
            format!(r#"{{"op":"publish","id":4,"topic":"prices.eurusd","data":{DATA_100B}}}"#),
        ),
        (
            "broadcast_100B",
            format!(r#"{{"op":"broadcast","data":{DATA_100B}}}"#),
        ),
        (
            "publish_escaped_topic",
            format!(r#"{{"op":"publish","topic":"pr\u00efces","data":{DATA_100B}}}"#),
        ),
        ("err_unknown_op", r#"{"op":"fly","id":5}"#.to_owned()),
        ("err_malformed", r#"{"op":"echo","data":"#.to_owned()),
    ]
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, text) in requests() {
        // Make sure each case takes the path its name claims before timing it.
        let ok = protocol::decode(&text).is_ok();
        assert_eq!(ok, !name.starts_with("err_"), "{name}: {text}");
        if name == "publish_100B" {
            assert!(matches!(
                protocol::decode(&text),
                Ok(Request::Publish { .. })
            ));
        }
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                // Drop the result (and any Cow it owns) inside the loop, as a worker does.
                let r = protocol::decode(black_box(&text));
                black_box(&r);
            })
        });
    }
    g.finish();
}

const FLAT: &str = r#"{"op":"publish","id":4,"topic":"prices.eurusd","data":{"user":"u-12345","seq":987654,"price":101.25,"note":"hello world"}}"#;
const NESTED: &str = r#"{"op":"publish","id":4,"topic":"prices.eurusd","data":{"user":{"id":"u-12345","seq":987654},"quotes":[[101.25,101.27],[101.24,101.28]],"note":"hello"}}"#;

fn bench_envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    type Decode = fn(&str) -> Result<Request<'_>, protocol::BadRequest<'_>>;
    let paths: [(&str, Decode); 2] = [
        ("scanner", protocol::decode),
        ("serde_json", protocol::decode_by_serde),
    ];
    for (shape, text) in [("flat", FLAT), ("nested", NESTED)] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        for (path, decode) in paths {
            assert!(
                matches!(decode(text), Ok(Request::Publish { .. })),
                "{shape}"
            );
            g.bench_function(format!("{shape}_{path}"), |b| {
                b.iter(|| {
                    let r = decode(black_box(text));
                    black_box(&r);
                })
            });
        }
    }
    g.finish();
}

fn bench_reply(c: &mut Criterion) {
    let id = Raw::new("\"req-42\"").unwrap();
    let small = Raw::new("\"hello\"").unwrap();
    let data = Raw::new(DATA_100B).unwrap();
    let mut g = c.benchmark_group("reply");
    let mut out = Vec::with_capacity(512);

    g.bench_function("ok", |b| {
        b.iter(|| {
            out.clear();
            protocol::ok(&mut out, black_box(Some(id)));
            black_box(out.len());
        })
    });
    g.bench_function("echo_small", |b| {
        b.iter(|| {
            out.clear();
            protocol::echo(&mut out, black_box(Some(id)), black_box(small));
            black_box(out.len());
        })
    });
    g.bench_function("echo_100B", |b| {
        b.iter(|| {
            out.clear();
            protocol::echo(&mut out, black_box(Some(id)), black_box(data));
            black_box(out.len());
        })
    });
    g.bench_function("error", |b| {
        b.iter(|| {
            out.clear();
            protocol::error(
                &mut out,
                black_box(Some(id)),
                black_box("bad_request"),
                black_box("missing field \"topic\""),
            );
            black_box(out.len());
        })
    });
    g.bench_function("message_topic_100B", |b| {
        b.iter(|| {
            out.clear();
            protocol::message(&mut out, black_box(Some("prices.eurusd")), black_box(data));
            black_box(out.len());
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_envelope, bench_reply);
criterion_main!(benches);
