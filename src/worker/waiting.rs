//! The connections a later pass of the loop comes back to without a readiness event: the
//! retry list (read again next turn: the per-turn work bound, a hold let go, a close begun)
//! and the verification queue (a handshake or a pending `connect` that found the turn's
//! signature-check budget spent). Runs on the worker's thread.
//!
//! Each list has a bit per slab key saying whether the key is in it, so that asking costs
//! O(1) and a key is queued once however often it is asked: during a reconnect storm tens of
//! thousands of connections wait at once, and a scan of the list per event made each turn
//! quadratic in them. The verification queue is first in, first out, and a turn takes from
//! it only while its budget lasts: a connection that waited is served before one that
//! arrived after it, and the ones still waiting cost nothing per turn.

use std::collections::VecDeque;

/// One set of slab keys as a bitmap.
#[derive(Debug, Default)]
struct Marks(Vec<u64>);

impl Marks {
    fn has(&self, key: usize) -> bool {
        self.0
            .get(key / 64)
            .is_some_and(|w| w & (1 << (key % 64)) != 0)
    }

    /// Sets `key`'s bit; false if it was set already.
    fn set(&mut self, key: usize) -> bool {
        let word = key / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let bit = 1 << (key % 64);
        let was = self.0[word] & bit != 0;
        self.0[word] |= bit;
        !was
    }

    fn clear(&mut self, key: usize) {
        if let Some(w) = self.0.get_mut(key / 64) {
            *w &= !(1 << (key % 64));
        }
    }

    /// Gives back the bitmap's memory once nothing is marked, after a burst.
    fn shrink_if_empty(&mut self) {
        if self.0.len() > 64 && self.0.iter().all(|&w| w == 0) {
            self.0 = Vec::new();
        }
    }
}

/// The worker's two waiting lists.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    retry: Vec<usize>,
    in_retry: Marks,
    verify: VecDeque<usize>,
    in_verify: Marks,
}

impl Waiting {
    /// Queues `key` for the next retry pass, once.
    pub(super) fn retry(&mut self, key: usize) {
        if self.in_retry.set(key) {
            self.retry.push(key);
        }
    }

    /// Queues `key` at the end of the verification queue, once.
    pub(super) fn verify(&mut self, key: usize) {
        if self.in_verify.set(key) {
            self.verify.push_back(key);
        }
    }

    /// `key` waits in either list: a readiness event for it adds nothing.
    pub(super) fn holds(&self, key: usize) -> bool {
        self.in_retry.has(key) || self.in_verify.has(key)
    }

    /// The retry list, for this turn's pass; keys queued from now on wait for the next one.
    pub(super) fn take_retry(&mut self) -> Vec<usize> {
        let keys = std::mem::take(&mut self.retry);
        for &k in &keys {
            self.in_retry.clear(k);
        }
        self.in_retry.shrink_if_empty();
        keys
    }

    /// The connection that has waited longest for a verification.
    pub(super) fn next_verify(&mut self) -> Option<usize> {
        let key = self.verify.pop_front()?;
        self.in_verify.clear(key);
        if self.verify.is_empty() {
            self.in_verify.shrink_if_empty();
            if self.verify.capacity() > 1024 {
                self.verify = VecDeque::new();
            }
        }
        Some(key)
    }

    /// Something waits: the next wait for readiness must not sleep.
    pub(super) fn any(&self) -> bool {
        !self.retry.is_empty() || !self.verify.is_empty()
    }

    /// Connections waiting for a verification.
    #[cfg(test)]
    pub(super) fn verifying(&self) -> usize {
        self.verify.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_queued_once_per_list_and_each_list_keeps_its_order() {
        let mut w = Waiting::default();
        assert!(!w.any());
        for k in [5, 700, 5, 3, 700] {
            w.retry(k);
        }
        for k in [9, 5, 9, 1] {
            w.verify(k);
        }
        assert!(w.holds(5) && w.holds(700) && w.holds(9) && !w.holds(2));
        assert_eq!(w.take_retry(), vec![5, 700, 3]);
        assert!(w.holds(5), "still waiting for a verification");
        assert!(!w.holds(700) && !w.holds(3));
        w.retry(3);
        assert_eq!(w.take_retry(), vec![3], "queued again after the pass");
        assert_eq!(w.verifying(), 3);
        assert_eq!(
            std::iter::from_fn(|| w.next_verify()).collect::<Vec<_>>(),
            vec![9, 5, 1],
            "first in, first out"
        );
        assert!(!w.any() && !w.holds(9));
    }

    #[test]
    fn the_marks_give_their_memory_back_after_a_burst() {
        let mut w = Waiting::default();
        for k in 0..100_000 {
            w.verify(k);
        }
        assert!(w.in_verify.0.len() > 1000);
        while w.next_verify().is_some() {}
        assert!(w.in_verify.0.is_empty());
        assert_eq!(w.verify.capacity(), 0);
    }
}
