//! The verified-token cache: a token's verdict by the SHA-256 of the token, so that a
//! client that reconnects with the same token, or a flood of one bad token, costs one
//! signature check. Touched by the workers when a token arrives (never per message), under
//! one shard's lock for one map operation.
//!
//! Bound: `--auth-token-cache` entries in all. A full shard first drops what has expired,
//! then the entry that expires soonest: it never grows. An accepted token is kept until its
//! `exp` plus the leeway plus [`REFUSAL_TTL_S`] (its `exp` is checked against the clock on
//! every hit, so that last minute answers "expired" without a signature check); a
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

/// The first 128 bits of a token's SHA-256. To be taken for another token, a token must be
/// made to match a cached one's digest: a second preimage of 128 bits, 2^128 tries, as out
/// of reach as the signature itself; the half it leaves out would only add memory.
pub type Digest = [u8; 16];

/// One shard: accepted tokens and refusals apart, so that an accepted token's slot is its
/// key and the `Verified` its connections share (24 bytes; 72 with the whole digest, the
/// times in `u64` and a verdict enum). Its time comes from its `exp`, and its `nbf` need not
/// be kept: a token is accepted only once its `nbf` (less the leeway) has passed, which
/// stays so. A refusal keeps its own time.
#[derive(Debug, Default)]
struct Shard {
    accepted: HashMap<Digest, Arc<Verified>>,
    /// The refusal and the unix second after which it is forgotten (saturated at
    /// `u32::MAX`, in 2106).
    refused: HashMap<Digest, (Refusal, u32)>,
}

impl Shard {
    fn len(&self) -> usize {
        self.accepted.len() + self.refused.len()
    }

    fn contains(&self, d: &Digest) -> bool {
        self.accepted.contains_key(d) || self.refused.contains_key(d)
    }

    /// Makes room for one more entry under `per_shard`: drops what has expired at `now`,
    /// then, if still full, the entry that expires soonest.
    fn make_room(&mut self, per_shard: usize, keep: u64, now: u64) {
        let until = |v: &Verified| v.exp().saturating_add(keep);
        self.accepted.retain(|_, v| until(v) >= now);
        self.refused.retain(|_, (_, t)| u64::from(*t) >= now);
        if self.len() < per_shard {
            return;
        }
        let a = self.accepted.iter().map(|(k, v)| (until(v), *k)).min();
        let r = self
            .refused
            .iter()
            .map(|(k, (_, t))| (u64::from(*t), *k))
            .min();
        match (a, r) {
            (Some(a), Some(r)) if r <= a => self.refused.remove(&r.1).map(drop),
            (Some(a), _) => self.accepted.remove(&a.1).map(drop),
            (None, Some(r)) => self.refused.remove(&r.1).map(drop),
            (None, None) => None,
        };
    }
}

/// Unix seconds as a refusal keeps them.
fn secs(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

#[derive(Debug)]
pub struct Cache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// Seconds an accepted token stays past its `exp`.
    keep: u64,
    /// Bumped whenever the cache is emptied: a verdict reached with the keys of an older
    /// generation is not inserted.
    generation: AtomicU64,
}

/// What a lookup found.
pub enum Hit {
    /// Accepted; its `exp` still to be checked against the caller's clock.
    Accepted(Arc<Verified>),
    Refused(Refusal),
}

/// The SHA-256 of `token`, cut to a [`Digest`]: the cache's key, so that the token itself is
/// never kept.
pub fn digest(token: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

impl Cache {
    /// A cache of at most `bound` entries (0: nothing is cached) that keeps an accepted
    /// token until `keep` seconds past its `exp`.
    pub fn new(bound: usize, keep: u64) -> Cache {
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
            keep,
            generation: AtomicU64::new(0),
        }
    }

    fn shard(&self, d: &Digest) -> std::sync::MutexGuard<'_, Shard> {
        let i = usize::from(d[0]) & (self.shards.len() - 1);
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached verdict for `d`, if any, as of `now` (unix seconds).
    pub fn get(&self, d: &Digest, now: u64) -> Option<Hit> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(d);
        if let Some(v) = shard.accepted.get(d) {
            if v.exp().saturating_add(self.keep) < now {
                shard.accepted.remove(d);
                return None;
            }
            return Some(Hit::Accepted(v.clone()));
        }
        let &(r, until) = shard.refused.get(d)?;
        if u64::from(until) < now {
            shard.refused.remove(d);
            return None;
        }
        Some(Hit::Refused(r))
    }

    /// The generation a verdict is reached in: pass it to [`Cache::accept`] or
    /// [`Cache::refuse`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers an accepted token until its `exp` plus the cache's `keep` (`now` is the
    /// clock's).
    pub fn accept(&self, d: Digest, gen: u64, v: Arc<Verified>, now: u64) {
        if let Some(mut shard) = self.room_for(&d, gen, now) {
            shard.refused.remove(&d);
            shard.accepted.insert(d, v);
        }
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
        let until = secs(now.saturating_add(REFUSAL_TTL_S));
        if let Some(mut shard) = self.room_for(&d, gen, now) {
            shard.accepted.remove(&d);
            shard.refused.insert(d, (r, until));
        }
    }

    /// The shard of `d`, locked and with room for it, unless nothing is cached or the
    /// verdict was reached with keys that have been replaced since (generation `gen`).
    fn room_for(&self, d: &Digest, gen: u64, now: u64) -> Option<std::sync::MutexGuard<'_, Shard>> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(d);
        // Under the shard's lock: `clear` bumps the generation before it takes the locks,
        // so either this sees the bump or `clear` empties the shard after this insert.
        if self.generation.load(Ordering::Acquire) != gen {
            return None;
        }
        if shard.len() >= self.per_shard && !shard.contains(d) {
            shard.make_room(self.per_shard, self.keep, now);
        }
        Some(shard)
    }

    /// Forgets every verdict (the key set changed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            // New maps, not cleared ones: a cache emptied after a burst gives its memory back.
            *s = Shard::default();
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
        Arc::new(Verified::new(sub, exp, Arc::default(), None))
    }

    #[test]
    fn the_bound_holds_and_expired_entries_go_first() {
        for bound in [1, 10, 63, 64, 100, 1000, 65_536] {
            let c = Cache::new(bound, 0);
            assert!(c.bound() <= bound, "{bound}: {}", c.bound());
            assert!(c.bound() * 2 > bound, "{bound}: {} is too lossy", c.bound());
        }
        let c = Cache::new(100, 0);
        assert_eq!(c.bound(), 100);
        let gen = c.generation();
        // Half of them expire at 50, half at 1000.
        for i in 0..100u32 {
            let until = if i % 2 == 0 { 50 } else { 1000 };
            c.accept(digest(&format!("t{i}")), gen, verified("u", until), 10);
        }
        assert_eq!(c.len(), 100);
        c.accept(digest("late"), gen, verified("u", 2000), 10);
        // At 100 the full shard drops the 50 expired ones, then takes the new one.
        c.accept(digest("now"), gen, verified("u", 3000), 100);
        assert!(c.len() <= 100);
        assert!(c.get(&digest("now"), 100).is_some());
        assert!(c.get(&digest("t1"), 100).is_some(), "live entries stay");
        // Full of live entries: the one expiring soonest goes, and the cache never grows.
        for i in 0..500u32 {
            let until = 5000 + u64::from(i);
            c.accept(digest(&format!("n{i}")), gen, verified("u", until), 100);
            assert!(c.len() <= 100);
        }
        assert!(c.get(&digest("n499"), 100).is_some());
        assert!(
            c.get(&digest("t1"), 100).is_none(),
            "the soonest to expire went"
        );
    }

    #[test]
    fn a_slot_is_24_bytes_and_times_last_to_2106() {
        assert_eq!(std::mem::size_of::<(Digest, Arc<Verified>)>(), 24);
        assert_eq!(std::mem::size_of::<(Digest, (Refusal, u32))>(), 24);
        assert_eq!(std::mem::size_of::<Verified>(), 32);
        let c = Cache::new(10, 0);
        let gen = c.generation();
        let far = u64::from(u32::MAX) + 1000;
        c.accept(digest("far"), gen, verified("u", far), 1);
        assert!(c.get(&digest("far"), u64::from(u32::MAX)).is_some());
        assert!(c.get(&digest("far"), u64::from(u32::MAX) + 1).is_none());
        // A token's verdict replaces the other kind.
        c.refuse(digest("t"), gen, Refusal::BadSignature, 1);
        c.accept(digest("t"), gen, verified("u", 10), 1);
        assert!(matches!(c.get(&digest("t"), 1), Some(Hit::Accepted(_))));
        assert_eq!(
            c.len(),
            1,
            "one entry for t; far was dropped when found expired"
        );
    }

    #[test]
    fn a_verdict_from_before_a_clear_is_not_inserted() {
        let c = Cache::new(10, 0);
        let old = c.generation();
        c.clear();
        c.accept(digest("t"), old, verified("u", 100), 1);
        assert!(c.get(&digest("t"), 1).is_none());
        c.accept(digest("t"), c.generation(), verified("u", 100), 1);
        assert!(c.get(&digest("t"), 1).is_some());
        assert!(c.get(&digest("t"), 101).is_none(), "past its time");
        // An accepted token stays `keep` seconds past its `exp`.
        let k = Cache::new(10, 65);
        k.accept(digest("t"), k.generation(), verified("u", 100), 1);
        assert!(k.get(&digest("t"), 165).is_some());
        assert!(k.get(&digest("t"), 166).is_none());
    }

    #[test]
    fn only_refusals_that_cannot_change_are_kept() {
        let c = Cache::new(10, 0);
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
        let none = Cache::new(0, 0);
        none.refuse(digest("x"), 0, Refusal::Malformed, 1);
        assert!(none.get(&digest("x"), 1).is_none());
    }
}
