//! The verified-token cache: a token's verdict by the SHA-256 of the token, so that a
//! client that reconnects with the same token, or a flood of one bad token, costs one
//! signature check. Touched by the workers when a token arrives (never per message), under
//! one shard's lock for one map operation.
//!
//! Bound: `--auth-token-cache` entries in all. A full shard first drops what has expired,
//! then the entry that expires soonest: it never grows. An accepted token is kept until its
//! `exp` plus the leeway plus [`REFUSAL_TTL_S`] (its `exp` and `nbf` are checked against the
//! clock on every hit, so that last minute answers "expired" without a signature check); a
//! refusal that cannot change (malformed, bad signature, wrong audience or issuer) for
//! [`REFUSAL_TTL_S`]. Expired, not yet valid and unknown-key verdicts are never kept: time or
//! a key fetch changes them. The whole cache is emptied when the key set changes, so that a
//! key that was removed stops admitting the tokens it signed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::verify::{Refusal, Verified};

/// How long a refusal that cannot change is remembered, in seconds: long enough that a
/// flood of one bad token costs one check, short enough that nothing much is held for it.
pub const REFUSAL_TTL_S: u64 = 60;

/// Most shards; fewer for a small bound, so that each holds at least [`MIN_PER_SHARD`].
const MAX_SHARDS: usize = 64;
const MIN_PER_SHARD: usize = 64;

/// The SHA-256 of a token.
pub type Digest = [u8; 32];

/// A cached verdict: 24 bytes, so that with its key a slot of the map is 56 (the times in
/// `u64` and `nbf` as an `Option` made it 72). Measured with 10,000 idle connections, each
/// with a token of its own, the cache costs 122 bytes of anonymous memory a connection (150
/// before), the map's slack and the allocator's size classes included
/// (`tests/auth_cluster.rs`).
#[derive(Debug, Clone)]
struct Entry {
    verdict: Result<Arc<Verified>, Refusal>,
    /// Unix seconds after which the entry is of no use: `exp` + leeway for an accepted
    /// token, the refusal's time to live otherwise. Saturated at `u32::MAX` (in 2106): an
    /// entry that would outlive that lives until then, or until the bound pushes it out.
    until: u32,
    /// For an accepted token: its `nbf`, re-checked against the caller's clock; 0 when it
    /// has none, which no clock is before. Saturated as `until` is (a token not valid before
    /// 2106 is refused, so never kept).
    nbf: u32,
}

/// Unix seconds as an [`Entry`] keeps them.
fn secs(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

#[derive(Debug)]
pub struct Cache {
    shards: Box<[Mutex<HashMap<Digest, Entry>>]>,
    per_shard: usize,
    /// Bumped whenever the cache is emptied: a verdict reached with the keys of an older
    /// generation is not inserted.
    generation: AtomicU64,
}

/// What a lookup found.
pub enum Hit {
    /// Accepted; `nbf` and `exp` still to be checked against the caller's clock.
    Accepted {
        verified: Arc<Verified>,
        nbf: Option<u64>,
    },
    Refused(Refusal),
}

/// The SHA-256 of `token`: the cache's key, so that the token itself is never kept.
pub fn digest(token: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Cache {
    /// A cache of at most `bound` entries (0: nothing is cached).
    pub fn new(bound: usize) -> Cache {
        let shards = (bound / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        // A power of two, so that the shard is a mask of the digest.
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        Cache {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: bound / shards,
            generation: AtomicU64::new(0),
        }
    }

    fn shard(&self, d: &Digest) -> std::sync::MutexGuard<'_, HashMap<Digest, Entry>> {
        let i = usize::from(d[0]) & (self.shards.len() - 1);
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached verdict for `d`, if any, as of `now` (unix seconds).
    pub fn get(&self, d: &Digest, now: u64) -> Option<Hit> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(d);
        let e = shard.get(d)?;
        if u64::from(e.until) < now {
            shard.remove(d);
            return None;
        }
        Some(match &e.verdict {
            Ok(v) => Hit::Accepted {
                verified: v.clone(),
                nbf: (e.nbf != 0).then_some(u64::from(e.nbf)),
            },
            Err(r) => Hit::Refused(*r),
        })
    }

    /// The generation a verdict is reached in: pass it to [`Cache::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers an accepted token until `until` (unix seconds; `now` is the clock's).
    pub fn accept(
        &self,
        d: Digest,
        gen: u64,
        v: Arc<Verified>,
        nbf: Option<u64>,
        until: u64,
        now: u64,
    ) {
        self.insert(
            d,
            gen,
            Entry {
                verdict: Ok(v),
                nbf: nbf.map_or(0, secs),
                until: secs(until),
            },
            now,
        );
    }

    /// Remembers a refusal for [`REFUSAL_TTL_S`], if it is one that cannot change.
    pub fn refuse(&self, d: Digest, gen: u64, r: Refusal, now: u64) {
        if !matches!(
            r,
            Refusal::Malformed
                | Refusal::BadSignature
                | Refusal::WrongAudience
                | Refusal::WrongIssuer
        ) {
            return;
        }
        let until = now.saturating_add(REFUSAL_TTL_S);
        self.insert(
            d,
            gen,
            Entry {
                verdict: Err(r),
                nbf: 0,
                until: secs(until),
            },
            now,
        );
    }

    fn insert(&self, d: Digest, gen: u64, e: Entry, now: u64) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&d);
        // Under the shard's lock: `clear` bumps the generation before it takes the locks,
        // so either this sees the bump or `clear` empties the shard after this insert.
        if self.generation.load(Ordering::Acquire) != gen {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(&d) {
            shard.retain(|_, e| u64::from(e.until) >= now);
            if shard.len() >= self.per_shard {
                if let Some(soonest) = shard.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k) {
                    shard.remove(&soonest);
                }
            }
        }
        shard.insert(d, e);
    }

    /// Forgets every verdict (the key set changed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Entries held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries held at once.
    pub fn bound(&self) -> usize {
        self.per_shard * self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(sub: &str, exp: u64) -> Arc<Verified> {
        Arc::new(Verified {
            sub: sub.into(),
            exp,
            grant: Arc::default(),
            topic: None,
        })
    }

    #[test]
    fn the_bound_holds_and_expired_entries_go_first() {
        for bound in [1, 10, 63, 64, 100, 1000, 65_536] {
            let c = Cache::new(bound);
            assert!(c.bound() <= bound, "{bound}: {}", c.bound());
            assert!(c.bound() * 2 > bound, "{bound}: {} is too lossy", c.bound());
        }
        let c = Cache::new(100);
        assert_eq!(c.bound(), 100);
        let gen = c.generation();
        // Half of them expire at 50, half at 1000.
        for i in 0..100u32 {
            let until = if i % 2 == 0 { 50 } else { 1000 };
            c.accept(
                digest(&format!("t{i}")),
                gen,
                verified("u", until),
                None,
                until,
                10,
            );
        }
        assert_eq!(c.len(), 100);
        c.accept(digest("late"), gen, verified("u", 2000), None, 2000, 10);
        // At 100 the full shard drops the 50 expired ones, then takes the new one.
        c.insert(
            digest("now"),
            gen,
            Entry {
                verdict: Ok(verified("u", 3000)),
                nbf: 0,
                until: 3000,
            },
            100,
        );
        assert!(c.len() <= 100);
        assert!(c.get(&digest("now"), 100).is_some());
        assert!(c.get(&digest("t1"), 100).is_some(), "live entries stay");
        // Full of live entries: the one expiring soonest goes, and the cache never grows.
        for i in 0..500u32 {
            let until = 5000 + u64::from(i);
            c.accept(
                digest(&format!("n{i}")),
                gen,
                verified("u", until),
                None,
                until,
                100,
            );
            assert!(c.len() <= 100);
        }
        assert!(c.get(&digest("n499"), 100).is_some());
        assert!(
            c.get(&digest("t1"), 100).is_none(),
            "the soonest to expire went"
        );
    }

    #[test]
    fn an_entry_is_24_bytes_and_keeps_its_times_to_2106() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let c = Cache::new(10);
        let gen = c.generation();
        c.accept(digest("nbf"), gen, verified("u", 500), Some(7), 500, 1);
        c.accept(digest("none"), gen, verified("u", 500), None, 500, 1);
        let far = u64::from(u32::MAX) + 1000;
        c.accept(digest("far"), gen, verified("u", far), None, far, 1);
        let nbf = |d: &str| match c.get(&digest(d), 2) {
            Some(Hit::Accepted { nbf, .. }) => nbf,
            _ => panic!("{d} not cached"),
        };
        assert_eq!((nbf("nbf"), nbf("none"), nbf("far")), (Some(7), None, None));
        assert!(c.get(&digest("far"), u64::from(u32::MAX)).is_some());
        assert!(c.get(&digest("far"), u64::from(u32::MAX) + 1).is_none());
    }

    #[test]
    fn a_verdict_from_before_a_clear_is_not_inserted() {
        let c = Cache::new(10);
        let old = c.generation();
        c.clear();
        c.accept(digest("t"), old, verified("u", 100), None, 100, 1);
        assert!(c.get(&digest("t"), 1).is_none());
        c.accept(
            digest("t"),
            c.generation(),
            verified("u", 100),
            None,
            100,
            1,
        );
        assert!(c.get(&digest("t"), 1).is_some());
        assert!(c.get(&digest("t"), 101).is_none(), "past its time");
    }

    #[test]
    fn only_refusals_that_cannot_change_are_kept() {
        let c = Cache::new(10);
        let gen = c.generation();
        for (r, kept) in [
            (Refusal::Malformed, true),
            (Refusal::BadSignature, true),
            (Refusal::WrongAudience, true),
            (Refusal::WrongIssuer, true),
            (Refusal::Expired, false),
            (Refusal::NotYetValid, false),
            (Refusal::UnknownKey, false),
        ] {
            let d = digest(r.label());
            c.refuse(d, gen, r, 1000);
            assert_eq!(c.get(&d, 1000).is_some(), kept, "{r:?}");
            if kept {
                assert!(c.get(&d, 1000 + REFUSAL_TTL_S).is_some());
                assert!(c.get(&d, 1001 + REFUSAL_TTL_S).is_none());
            }
        }
        let none = Cache::new(0);
        none.refuse(digest("x"), 0, Refusal::Malformed, 1);
        assert!(none.get(&digest("x"), 1).is_none());
    }
}
