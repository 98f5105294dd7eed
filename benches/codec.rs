//! WebSocket frame hot paths: server frame encoding and client frame parse + unmask.
//!
//! Sizes are 32 B (a typical small JSON message), 1 KiB and 64 KiB (the default message
//! limit). Throughput is payload bytes per second.
//!
//! * `encode/*`: `codec::encode_into` into one reused `Vec` that is cleared before each
//!   call, as a worker reuses its reply buffer; the first iterations pay the allocation, the
//!   rest measure header formatting plus the payload copy.
//! * `decode/*`: `codec::decode` on a masked client frame. `decode` unmasks in place, so a
//!   second call on the same bytes would see already-unmasked data; every iteration instead
//!   gets a fresh copy of the masked frame from `iter_batched_ref`, whose copy and drop are
//!   outside the timed section.
//! * `unmask/*`: `codec::unmask` alone, in place. XOR-ing twice restores the bytes, so each
//!   iteration leaves the buffer masked or unmasked in turn; the cost is the same either way.

use std::hint::black_box;

use corecast::codec::{self, Decoded, Kind};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

const SIZES: [(usize, &str); 3] = [(32, "32B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
const MAX_FRAME: usize = 1 << 20;

/// Deterministic, text-like payload bytes.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn batch_for(len: usize) -> BatchSize {
    if len >= 64 * 1024 {
        BatchSize::LargeInput
    } else {
        BatchSize::SmallInput
    }
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (len, name) in SIZES {
        let data = payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &data, |b, data| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                codec::encode_into(&mut out, Kind::Binary, black_box(data));
                black_box(out.len());
            });
        });
    }
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (len, name) in SIZES {
        let frame = codec::client_frame(0x82, &payload(len), MASK);
        // Check once, outside the measurement, that the frame decodes to what was encoded.
        {
            let mut check = frame.clone();
            match codec::decode(&mut check, MAX_FRAME) {
                Ok(Decoded::Frame { frame: f, used }) => {
                    assert_eq!(used, check.len());
                    assert_eq!(&check[f.payload], &payload(len)[..]);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &frame, |b, frame| {
            b.iter_batched_ref(
                || frame.clone(),
                |buf| {
                    let r = codec::decode(black_box(buf.as_mut_slice()), MAX_FRAME);
                    black_box(r)
                },
                batch_for(len),
            );
        });
    }
    g.finish();
}

fn bench_unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for (len, name) in SIZES {
        let mut buf = payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| codec::unmask(black_box(buf.as_mut_slice()), black_box(MASK)));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_encode, bench_decode, bench_unmask);
criterion_main!(benches);
