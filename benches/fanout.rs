//! Broadcast fan-out: encode one message once, queue it to 10,000 connections' outbound buffers.
//!
//! Mirrors `worker::deliver` without sockets: `broadcast::encode` of a ~100-byte
//! JSON `data`, then `Outbound::push_shared` per recipient under the default outbound limit:
//! a copy into the recipient's own buffer, since the frame is below `SHARE_MIN`. The
//! `_2k` variant publishes a ~2 KB frame, which is shared (a refcount bump plus a `VecDeque`
//! push). Throughput is recipients (elements) per second.
//!
//! `Outbound` has no public way to empty it without writing, so two variants are measured:
//!
//! * `fanout/push_10k_fresh`: every iteration gets 10,000 fresh, empty `Outbound`s built by
//!   `iter_batched_ref` setup; building and dropping them is not timed. Each first push
//!   allocates the queue, as it does on a real idle connection (whose flush released it).
//! * `fanout/push_flush_10k_sink`: the same 10,000 `Outbound`s live across iterations; the
//!   timed loop pushes to each and then flushes each into `io::sink()`, which empties it and
//!   frees its queue again. This adds the flush bookkeeping (iovec set-up, consume, release)
//!   that a real worker pays per recipient, minus the `writev` syscall itself.
//! * `fanout/push_10k_via_topic`: like `push_10k_fresh`, but recipients come from a
//!   `topics::Topics` lookup (100 topics x 100 subscribers; the hot topic has all 10,000 here)
//!   and index a `Vec<Outbound>` as the worker indexes its slab.
//!
//! `merge_runs/*` splits 64 pending deliveries into runs and merges each run of more than
//! one: all for one audience (one 64-frame copy), all alternating (no merge), and runs of 8.

use std::hint::black_box;
use std::io;
use std::sync::Arc;

use corecast::broadcast::{self, Delivery, Target};
use corecast::config::DEFAULT_MAX_OUTBOUND;
use corecast::outbound::{Flushed, Outbound, Queued};
use corecast::protocol::Raw;
use corecast::topics::Topics;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const RECIPIENTS: usize = 10_000;
const DATA_100B: &str =
    r#"{"user":"u-12345","seq":987654,"price":101.25,"tags":["a","b","c"],"note":"hello world!!"}"#;

fn data() -> Raw<'static> {
    Raw::new(DATA_100B).unwrap()
}

fn fresh_outbounds() -> Vec<Outbound> {
    (0..RECIPIENTS).map(|_| Outbound::default()).collect()
}

fn bench_fanout(c: &mut Criterion) {
    let data = data();
    let topic: Arc<str> = "prices.eurusd".into();
    let mut g = c.benchmark_group("fanout");

    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_100B", |b| {
        b.iter(|| broadcast::encode(Target::Topic(topic.clone()), black_box(data)))
    });

    g.throughput(Throughput::Elements(RECIPIENTS as u64));
    g.bench_function("push_10k_fresh", |b| {
        b.iter_batched_ref(
            fresh_outbounds,
            |outs| {
                let d = broadcast::encode(Target::All, black_box(data));
                for o in outs.iter_mut() {
                    let q = o.push_shared(&d.frame, DEFAULT_MAX_OUTBOUND);
                    debug_assert_eq!(q, Queued::Ok);
                }
            },
            BatchSize::LargeInput,
        )
    });

    let big_text = format!("\"{}\"", "x".repeat(2000));
    let big = Raw::new(&big_text).unwrap();
    let mut outs = fresh_outbounds();
    g.bench_function("push_flush_10k_sink_2k", |b| {
        let mut sink = io::sink();
        b.iter(|| {
            let d = broadcast::encode(Target::All, black_box(big));
            for o in outs.iter_mut() {
                o.push_shared(&d.frame, DEFAULT_MAX_OUTBOUND);
            }
            for o in outs.iter_mut() {
                let f = o.flush(&mut sink).expect("sink never fails");
                debug_assert_eq!(f, Flushed::Empty);
            }
        })
    });

    g.bench_function("push_flush_10k_sink", |b| {
        let mut sink = io::sink();
        b.iter(|| {
            let d = broadcast::encode(Target::All, black_box(data));
            for o in outs.iter_mut() {
                o.push_shared(&d.frame, DEFAULT_MAX_OUTBOUND);
            }
            for o in outs.iter_mut() {
                let f = o.flush(&mut sink).expect("sink never fails");
                debug_assert_eq!(f, Flushed::Empty);
            }
        })
    });

    // 100 topics x 100 subscribers, plus the hot topic that every connection follows.
    let mut topics = Topics::new(0, None);
    for key in 0..RECIPIENTS {
        topics.subscribe(&format!("topic-{}", key % 100), key);
        topics.subscribe(&topic, key);
    }
    g.bench_function("push_10k_via_topic", |b| {
        b.iter_batched_ref(
            fresh_outbounds,
            |outs| {
                let d = broadcast::encode(Target::Topic(topic.clone()), black_box(data));
                let Target::Topic(t) = &d.target else {
                    unreachable!()
                };
                if let Some(subs) = topics.subscribers(t) {
                    for &key in subs {
                        outs[key].push_shared(&d.frame, DEFAULT_MAX_OUTBOUND);
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bench_merge(c: &mut Criterion) {
    let data = data();
    let a: Arc<str> = "a".into();
    let b_topic: Arc<str> = "b".into();
    let target = |i: usize, run: usize| {
        if (i / run).is_multiple_of(2) {
            Target::Topic(a.clone())
        } else {
            Target::Topic(b_topic.clone())
        }
    };
    let cases: [(&str, usize); 3] = [
        ("64_same", usize::MAX),
        ("64_runs_of_8", 8),
        ("64_alternating", 1),
    ];
    let mut g = c.benchmark_group("merge_runs");
    g.throughput(Throughput::Elements(64));
    for (name, run) in cases {
        let pending: Vec<Delivery> = (0..64)
            .map(|i| broadcast::encode(target(i, run), data))
            .collect();
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut start = 0;
                let mut frames = 0;
                while start < pending.len() {
                    let end = broadcast::run_end(&pending, start);
                    if end - start > 1 {
                        black_box(broadcast::merge(&pending[start..end]));
                    }
                    frames += 1;
                    start = end;
                }
                black_box(frames)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_fanout, bench_merge);
criterion_main!(benches);
