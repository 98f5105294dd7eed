//! Each publishing connection's bytes still waiting in the other workers' queues, against its
//! share of them (`broadcast::PUBLISHER_SHARE`). Runs on the publishing connection's worker;
//! pure bookkeeping, no I/O and no atomics, so it is unit-tested here.
//!
//! The worker numbers what it sends to the other workers (`broadcast::Port::publish_from`)
//! and keeps, in that order, what each number holds and for whom: runs of consecutive
//! publishes by one connection, coalesced so that a flood costs one entry per
//! [`RUN_BYTES`], not one per message. Once per loop turn it learns how many of its
//! publishes every other worker has taken (`progress`, stored by each consumer with its
//! end-of-turn give-back), and retires the runs up to that number from their connections'
//! accounts. So the message path gains no lock and no atomic operation per delivery: a
//! publish costs a map update here, a consumer one counter increment per delivery and one
//! store per producer per turn, a producer with publishes in flight one load per consumer
//! per turn. With one worker nothing is sent across, nothing is charged, and none of this
//! runs. An account can only read high, never low: a run leaves it once its last publish is
//! taken, and a consumer's count once it has stored it.
//!
//! The other ways considered: a shared atomic per connection, given back by each consumer
//! per delivery, costs what the batched global give-back was made to avoid (and each
//! connection a counter that must outlive it); a per-connection tally sent back to the
//! producer through a channel costs a message per turn per pair of workers. The numbers
//! need neither, and each consumer writes only its own cache lines.
//!
//! A slab key is reused by the next connection: an account is therefore opened under the
//! number of its first publish and retiring runs of an older account (a connection that
//! closed with bytes in flight, `forget`) leaves the new one alone.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use crate::broadcast::{Sent, PUBLISHER_SHARE};

/// The most bytes one run coalesces (a single larger publish is a run of its own). A run leaves its account whole, once its last publish
/// is taken, so this is how much an account may read high besides the consumers' last turn:
/// 1/16 of the share, so that a held publisher is let go at half its share within a few
/// percent of it, at one entry per 512 KiB of a flood.
const RUN_BYTES: usize = PUBLISHER_SHARE / 16;

/// Above this many entries an emptied queue or map gives its memory back: a burst of many
/// publishers does not leave its capacity behind.
const KEEP: usize = 1024;

/// Consecutive publishes of one connection, numbered up to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    key: usize,
    /// The account it was charged to (see [`Account::opened`]).
    opened: u64,
    last: u64,
    bytes: usize,
}

/// One connection's bytes in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Account {
    /// The number of the publish that opened it: tells it from an account the same slab key
    /// had before.
    opened: u64,
    /// Never zero: an account that drops to zero is closed.
    bytes: usize,
}

/// The worker's publishing connections' bytes in flight.
#[derive(Debug, Default)]
pub(super) struct Shares {
    /// What is in flight, oldest first.
    runs: VecDeque<Run>,
    /// Connections with bytes in flight, by slab key.
    accounts: HashMap<usize, Account>,
}

impl Shares {
    /// Connection `key` sent a publish to the other workers.
    pub(super) fn charge(&mut self, key: usize, sent: Sent) {
        debug_assert!(self.runs.back().is_none_or(|r| r.last < sent.seq));
        let account = self.accounts.entry(key).or_insert(Account {
            opened: sent.seq,
            bytes: 0,
        });
        account.bytes += sent.bytes;
        let opened = account.opened;
        match self.runs.back_mut() {
            Some(r) if r.key == key && r.opened == opened && r.bytes + sent.bytes <= RUN_BYTES => {
                r.last = sent.seq;
                r.bytes += sent.bytes;
            }
            _ => self.runs.push_back(Run {
                key,
                opened,
                last: sent.seq,
                bytes: sent.bytes,
            }),
        }
    }

    /// Every other worker has taken this worker's publishes up to number `taken`: they leave
    /// their connections' accounts.
    pub(super) fn retire(&mut self, taken: u64) {
        while let Some(&r) = self.runs.front() {
            if r.last > taken {
                break;
            }
            self.runs.pop_front();
            if let Entry::Occupied(mut a) = self.accounts.entry(r.key) {
                if a.get().opened == r.opened {
                    a.get_mut().bytes -= r.bytes;
                    if a.get().bytes == 0 {
                        a.remove();
                    }
                }
            }
        }
        if self.runs.is_empty() && self.runs.capacity() > KEEP {
            self.runs = VecDeque::new();
        }
        if self.accounts.is_empty() && self.accounts.capacity() > KEEP {
            self.accounts = HashMap::new();
        }
    }

    /// Connection `key` is gone: its bytes still in flight are nobody's debt, and the next
    /// connection to get its key starts with none.
    pub(super) fn forget(&mut self, key: usize) {
        if !self.accounts.is_empty() {
            self.accounts.remove(&key);
        }
    }

    /// Connection `key`'s bytes still in the other workers' queues.
    pub(super) fn in_flight(&self, key: usize) -> usize {
        if self.accounts.is_empty() {
            return 0;
        }
        self.accounts.get(&key).map_or(0, |a| a.bytes)
    }

    /// Connection `key` has more than its share in flight: it must wait.
    pub(super) fn over(&self, key: usize) -> bool {
        self.in_flight(key) > PUBLISHER_SHARE
    }

    /// Nothing in flight: nothing to retire.
    pub(super) fn is_idle(&self) -> bool {
        self.runs.is_empty()
    }

    /// The connections with bytes in flight, and every account equal to the runs charged to
    /// it: for the end-of-turn invariants. O(accounts × runs), and it allocates nothing (the
    /// allocation tests count the workers' allocations, in builds with debug assertions too).
    #[cfg(debug_assertions)]
    pub(super) fn check(&self) -> impl Iterator<Item = usize> + '_ {
        for (&key, a) in &self.accounts {
            let runs: usize = self
                .runs
                .iter()
                .filter(|r| r.key == key && r.opened == a.opened)
                .map(|r| r.bytes)
                .sum();
            assert_eq!(
                runs, a.bytes,
                "conn {key}: an account of {} bytes against runs of {runs}",
                a.bytes
            );
        }
        self.accounts.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(seq: u64, bytes: usize) -> Sent {
        Sent { seq, bytes }
    }

    #[test]
    fn runs_retire_in_order_once_every_worker_took_their_last_publish() {
        let mut s = Shares::default();
        assert!(s.is_idle());
        s.charge(1, sent(1, 100));
        s.charge(1, sent(2, 100));
        s.charge(2, sent(3, 10));
        s.charge(1, sent(4, 100));
        assert_eq!(
            s.runs.len(),
            3,
            "consecutive publishes of one connection coalesce"
        );
        assert_eq!((s.in_flight(1), s.in_flight(2)), (300, 10));
        s.retire(1);
        assert_eq!(
            s.in_flight(1),
            300,
            "a run leaves whole, once its last is taken"
        );
        s.retire(2);
        assert_eq!((s.in_flight(1), s.in_flight(2)), (100, 10));
        s.retire(3);
        assert_eq!((s.in_flight(1), s.in_flight(2)), (100, 0));
        assert_eq!(s.accounts.len(), 1, "an empty account is closed");
        s.retire(3);
        assert_eq!(s.in_flight(1), 100, "retiring again retires nothing more");
        s.retire(u64::MAX);
        assert_eq!(s.in_flight(1), 0);
        assert!(s.is_idle());
        assert_eq!(s.check().count(), 0);
    }

    #[test]
    fn a_run_coalesces_up_to_its_size() {
        let mut s = Shares::default();
        let n = 2 * RUN_BYTES / 1000 + 1;
        for seq in 1..=n as u64 {
            s.charge(7, sent(seq, 1000));
        }
        assert_eq!(s.runs.len(), 3, "{} bytes in runs of {RUN_BYTES}", n * 1000);
        assert_eq!(s.in_flight(7), n * 1000);
        let first = s.runs[0];
        s.retire(first.last);
        assert_eq!(s.in_flight(7), n * 1000 - first.bytes);
        assert_eq!(s.check().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn a_connection_is_over_its_share_past_it_and_not_at_it() {
        let mut s = Shares::default();
        s.charge(3, sent(1, PUBLISHER_SHARE));
        assert!(!s.over(3));
        s.charge(3, sent(2, 1));
        assert!(s.over(3));
        assert!(!s.over(4), "another connection has nothing in flight");
    }

    /// A connection that closes with bytes in flight leaves no debt to the next one that
    /// gets its slab key, however its old runs and the new ones interleave.
    #[test]
    fn a_reused_key_starts_with_nothing_in_flight() {
        let mut s = Shares::default();
        s.charge(5, sent(1, 1000));
        s.charge(6, sent(2, 10));
        s.charge(5, sent(3, 1000));
        s.forget(5);
        assert_eq!(s.in_flight(5), 0, "gone");
        s.charge(5, sent(4, 1));
        assert_eq!(s.in_flight(5), 1, "the new connection's own publish only");
        assert_eq!(s.runs.len(), 4, "its run is not the old connection's");
        s.retire(3);
        assert_eq!(
            s.in_flight(5),
            1,
            "the old runs retire from nobody's account"
        );
        assert_eq!(s.in_flight(6), 0);
        s.charge(5, sent(5, 2));
        assert_eq!(s.in_flight(5), 3);
        s.retire(4);
        assert_eq!(s.in_flight(5), 3, "its publishes 4 and 5 are one run");
        s.forget(5);
        s.retire(5);
        assert!(s.is_idle());
        assert!(s.accounts.is_empty());
    }

    /// An account that went back to zero is closed; the same connection publishing again
    /// opens a new one, and its runs are the new account's.
    #[test]
    fn an_account_reopened_after_zero_counts_only_its_new_runs() {
        let mut s = Shares::default();
        s.charge(1, sent(1, 10));
        s.retire(1);
        assert!(s.accounts.is_empty());
        s.charge(1, sent(2, 20));
        s.charge(1, sent(3, 20));
        assert_eq!(s.in_flight(1), 40);
        s.retire(3);
        assert_eq!(s.in_flight(1), 0);
    }

    #[test]
    fn an_emptied_burst_gives_its_memory_back() {
        let mut s = Shares::default();
        for key in 0..10 * KEEP {
            s.charge(key, sent(key as u64 + 1, 1));
        }
        assert_eq!(s.runs.len(), 10 * KEEP);
        s.retire(u64::MAX);
        assert_eq!(s.runs.capacity(), 0);
        assert_eq!(s.accounts.capacity(), 0);
    }
}
