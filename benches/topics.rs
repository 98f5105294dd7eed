//! Topic index: subscribe / unsubscribe / lookup with 10,000 subscribers across 100 topics.
//!
//! Subscriber `key` follows topic `topic-{key % 100}`, so each topic has 100 subscribers.
//!
//! * `topics/subscribe_10k`: builds the whole index from empty (10,000 `subscribe` calls, the
//!   first per topic allocating it). The empty `Topics` comes from untimed setup.
//! * `topics/unsubscribe_10k`: tears a full index down (10,000 `unsubscribe` calls, the last
//!   per topic dropping it). The full index is built in untimed setup and dropped empty.
//! * `topics/sub_unsub_pair`: one extra key subscribes to and unsubscribes from a topic of the
//!   full index, so the state is the same after every iteration: the steady-state cost of a
//!   client joining and leaving.
//! * `topics/lookup_hit`, `lookup_miss`: `subscribers(topic)` on the full index.
//! * `topics/lookup_and_iterate_100`: lookup plus walking the topic's 100 keys, what a
//!   delivery does before touching any connection.

use std::hint::black_box;

use corecast::topics::Topics;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const SUBSCRIBERS: usize = 10_000;
const TOPICS: usize = 100;

fn names() -> Vec<String> {
    (0..TOPICS).map(|t| format!("topic-{t}")).collect()
}

fn full(names: &[String]) -> Topics {
    let mut t = Topics::new(0, None);
    for key in 0..SUBSCRIBERS {
        t.subscribe(&names[key % TOPICS], key);
    }
    t
}

fn bench_topics(c: &mut Criterion) {
    let names = names();
    let mut g = c.benchmark_group("topics");

    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.bench_function("subscribe_10k", |b| {
        b.iter_batched_ref(
            Topics::default,
            |t| {
                for key in 0..SUBSCRIBERS {
                    black_box(t.subscribe(&names[key % TOPICS], key));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("unsubscribe_10k", |b| {
        b.iter_batched_ref(
            || full(&names),
            |t| {
                for key in 0..SUBSCRIBERS {
                    black_box(t.unsubscribe(&names[key % TOPICS], key));
                }
                debug_assert!(t.is_empty());
            },
            BatchSize::LargeInput,
        )
    });

    let mut index = full(&names);
    assert_eq!(index.len(), TOPICS);
    g.throughput(Throughput::Elements(1));
    g.bench_function("sub_unsub_pair", |b| {
        let topic = &names[42];
        b.iter(|| {
            black_box(index.subscribe(black_box(topic), SUBSCRIBERS));
            black_box(index.unsubscribe(black_box(topic), SUBSCRIBERS));
        })
    });
    g.bench_function("lookup_hit", |b| {
        b.iter(|| black_box(index.subscribers(black_box(&names[42])).map(|s| s.len())))
    });
    g.bench_function("lookup_miss", |b| {
        b.iter(|| black_box(index.subscribers(black_box("no-such-topic")).is_none()))
    });
    g.throughput(Throughput::Elements((SUBSCRIBERS / TOPICS) as u64));
    g.bench_function("lookup_and_iterate_100", |b| {
        b.iter(|| {
            let mut sum = 0usize;
            if let Some(subs) = index.subscribers(black_box(&names[42])) {
                for &k in subs {
                    sum = sum.wrapping_add(k);
                }
            }
            black_box(sum)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_topics);
criterion_main!(benches);
