//! permessage-deflate costs: what one publish pays to be compressed (once per worker, shared
//! by every deflate subscriber), and what an incoming compressed message pays to be inflated.
//! These set the defaults of `--deflate-level` and `--deflate-min-size`.
//!
//! * `compress/L{level}/{size}`: `Deflater::compress` of a JSON document of `size` bytes at
//!   zlib level 1 and 6, window 15, as the worker calls it (reset per message).
//! * `inflate/{size}`: `Inflater::inflate` of the same documents compressed at level 1.
//!
//! The documents: below 256 bytes a chat-like message (`{"from":..,"text":..}` with words),
//! from 256 bytes up a list of market quotes whose numbers change per document, as
//! `corecast-load broadcast --size` publishes. Before the timings the bench prints each
//! document's compressed size at both levels (median over 64 documents), the figure the
//! timings are traded against.

use std::hint::black_box;

use corecast::conn::deflate::{Deflater, Inflater};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 7] = [64, 128, 256, 512, 1024, 4096, 16384];
const WORDS: [&str; 24] = [
    "the", "market", "opened", "higher", "today", "and", "we", "are", "watching", "rates",
    "closely", "before", "the", "meeting", "on", "thursday", "see", "you", "in", "channel",
    "later", "thanks", "for", "sharing",
];
const SYMBOLS: [&str; 8] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM",
];

/// A small xorshift, so documents differ from each other but every run sees the same ones.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A JSON message of exactly `size` bytes (cut at `size`; validity does not matter to zlib).
fn document(size: usize, rng: &mut Rng) -> Vec<u8> {
    let mut s = String::new();
    if size < 256 {
        s.push_str(&format!(
            r#"{{"op":"message","topic":"room.{}","data":{{"from":"user{}","ts":{},"text":""#,
            rng.next() % 100,
            rng.next() % 10_000,
            1_764_000_000_000 + rng.next() % 1_000_000
        ));
        while s.len() < size {
            s.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
            s.push(' ');
        }
    } else {
        s.push_str(r#"{"op":"message","topic":"quotes","data":{"quotes":["#);
        let mut i = 0;
        while s.len() < size {
            let r = rng.next();
            let px = 5_000 + r % 45_000;
            s.push_str(&format!(
                r#"{{"symbol":"{}","bid":{}.{:02},"ask":{}.{:02},"bid_size":{},"ask_size":{},"venue":"XNAS","ts":{}}},"#,
                SYMBOLS[i % SYMBOLS.len()],
                px / 100,
                px % 100,
                (px + 3) / 100,
                (px + 3) % 100,
                100 * (1 + (r >> 32) % 50),
                100 * (1 + (r >> 40) % 50),
                1_764_000_000_000 + (r >> 44) % 1000
            ));
            i += 1;
        }
    }
    s.truncate(size);
    s.into_bytes()
}

fn median(mut v: Vec<usize>) -> usize {
    v.sort_unstable();
    v[v.len() / 2]
}

fn print_ratios() {
    let mut out = Vec::new();
    eprintln!("compressed size of a {{size}}-byte document, median of 64 (0 = did not shrink):");
    for size in SIZES {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size as u64);
        let docs: Vec<Vec<u8>> = (0..64).map(|_| document(size, &mut rng)).collect();
        let mut line = format!("  {size:>6} B:");
        for level in [1, 6] {
            let mut d = Deflater::new(level);
            let sizes = docs
                .iter()
                .map(|doc| {
                    if d.compress(doc, 15, &mut out) {
                        out.len()
                    } else {
                        0
                    }
                })
                .collect();
            let m = median(sizes);
            line.push_str(&format!(
                "  level {level} {m:>6} B ({:.2}x)",
                if m > 0 { size as f64 / m as f64 } else { 1.0 }
            ));
        }
        eprintln!("{line}");
    }
}

fn bench_compress(c: &mut Criterion) {
    print_ratios();
    let mut g = c.benchmark_group("compress");
    let mut out = Vec::new();
    for level in [1u32, 6] {
        for size in SIZES {
            let mut rng = Rng(0x1234_5678 ^ size as u64);
            let docs: Vec<Vec<u8>> = (0..16).map(|_| document(size, &mut rng)).collect();
            let mut d = Deflater::new(level);
            let mut i = 0;
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::new(format!("L{level}"), size), |b| {
                b.iter(|| {
                    i = (i + 1) % docs.len();
                    black_box(d.compress(black_box(&docs[i]), 15, &mut out))
                })
            });
        }
    }
    g.finish();
}

fn bench_inflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("inflate");
    let mut out = Vec::new();
    for size in SIZES {
        let mut rng = Rng(0x1234_5678 ^ size as u64);
        let mut d = Deflater::new(1);
        let zipped: Vec<Vec<u8>> = (0..16)
            .filter_map(|_| {
                let doc = document(size, &mut rng);
                d.compress(&doc, 15, &mut out).then(|| out.clone())
            })
            .collect();
        if zipped.is_empty() {
            continue;
        }
        let mut inf = Inflater::default();
        let mut i = 0;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                i = (i + 1) % zipped.len();
                inf.inflate(black_box(&zipped[i]), 1 << 20, &mut out)
                    .unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench_compress, bench_inflate
}
criterion_main!(benches);
