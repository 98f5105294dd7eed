//! Process-wide monotonic clock in nanoseconds plus a tiny PRNG for keys and masks.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Base {
    mono: Instant,
    unix_ns: u64,
}

static BASE: OnceLock<Base> = OnceLock::new();

fn base() -> &'static Base {
    BASE.get_or_init(|| Base {
        mono: Instant::now(),
        unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    })
}

/// Monotonic nanoseconds since the first call in this process.
#[inline]
pub fn now_ns() -> u64 {
    base().mono.elapsed().as_nanos() as u64
}

/// Converts a [`now_ns`] reading into nanoseconds since the UNIX epoch.
///
/// Anchored once at start-up so publish timestamps stay monotonic even if the wall clock is
/// stepped during a run; send and receive happen in this same process, so latencies are exact.
#[inline]
pub fn to_unix_ns(mono: u64) -> u64 {
    base().unix_ns + mono
}

/// Inverse of [`to_unix_ns`].
#[inline]
pub fn from_unix_ns(unix: u64) -> u64 {
    unix.saturating_sub(base().unix_ns)
}

/// SplitMix64: good enough to make handshake keys and masks differ per connection.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ to_unix_ns(now_ns()) ^ ((std::process::id() as u64) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
