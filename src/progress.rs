//! How far each worker has taken each other worker's publishes: one counter per (consumer,
//! producer) pair, in a table made at start-up. Written and read on the workers, with relaxed
//! atomics and no lock.
//!
//! A producer numbers the publishes it sends to the other workers 1, 2, 3, ...; a consumer
//! counts what it takes from each producer and stores its counts (its row) once per loop
//! turn, with its other end-of-turn give-backs; a producer reads the smallest count in its
//! column once per loop turn, and only while some of its publishes are in flight. Channels
//! are FIFO per sender, so "n taken from producer p" means p's first n publishes, whatever
//! arrived between them, and the first [`taken_by_all`](Progress::taken_by_all) of p's
//! publishes have left every queue. That is what lets a worker tell, per connection, how many
//! of its bytes still wait in the other workers' queues (`worker::share`) without an atomic
//! operation per delivery.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters in one [`Line`].
const PER_LINE: usize = 16;

/// Two cache lines' worth of counters (the adjacent-line prefetcher fetches lines in pairs,
/// as crossbeam's `CachePadded` assumes on x86-64). Each consumer's row starts on a line of
/// its own, so that one worker's stores never share a line with another's.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line([AtomicU64; PER_LINE]);

/// The table: row `c` holds what consumer `c` has taken from each producer.
#[derive(Debug)]
pub struct Progress {
    workers: usize,
    /// Lines per row.
    stride: usize,
    lines: Box<[Line]>,
}

impl Progress {
    pub fn new(workers: usize) -> Progress {
        let stride = workers.div_ceil(PER_LINE).max(1);
        Progress {
            workers,
            stride,
            lines: (0..workers * stride).map(|_| Line::default()).collect(),
        }
    }

    fn slot(&self, consumer: usize, producer: usize) -> &AtomicU64 {
        &self.lines[consumer * self.stride + producer / PER_LINE].0[producer % PER_LINE]
    }

    /// Consumer `me` has taken `taken[p]` publishes from each producer `p` so far.
    pub fn store_row(&self, me: usize, taken: &[u64]) {
        for (p, &n) in taken.iter().enumerate().take(self.workers) {
            if p != me {
                self.slot(me, p).store(n, Relaxed);
            }
        }
    }

    /// How many of `producer`'s publishes every other worker has taken (as of their last
    /// stores): the first that many have left every queue.
    pub fn taken_by_all(&self, producer: usize) -> u64 {
        (0..self.workers)
            .filter(|&c| c != producer)
            .map(|c| self.slot(c, producer).load(Relaxed))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Worker `index` has exited and reads nothing more: what is sent to it comes back to
    /// the sender's budget at once (`WorkerHandle::retire`), so it holds back no producer's
    /// count from now on. Called after its last store (its port is dropped before).
    pub fn retire(&self, index: usize) {
        for p in 0..self.workers {
            self.slot(index, p).store(u64::MAX, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_sees_the_slowest_consumer_and_a_retired_one_holds_nobody_back() {
        let t = Progress::new(3);
        assert_eq!(t.taken_by_all(0), 0, "nothing taken yet");
        t.store_row(1, &[5, 0, 2]);
        t.store_row(2, &[3, 7, 0]);
        assert_eq!(t.taken_by_all(0), 3);
        assert_eq!(t.taken_by_all(1), 0, "worker 0 took none of worker 1's");
        assert_eq!(t.taken_by_all(2), 0, "nor of worker 2's");
        t.store_row(0, &[99, 4, 6]);
        assert_eq!(
            t.taken_by_all(1),
            4,
            "a worker's own column entry is never read"
        );
        assert_eq!(t.taken_by_all(2), 2);
        t.retire(2);
        assert_eq!(t.taken_by_all(0), 5, "only worker 1 is left to wait for");
        assert_eq!(t.taken_by_all(1), 4);
        assert_eq!(
            Progress::new(1).taken_by_all(0),
            u64::MAX,
            "no other worker"
        );
    }

    #[test]
    fn rows_of_many_workers_do_not_overlap() {
        let n = 40;
        let t = Progress::new(n);
        for c in 0..n {
            let row: Vec<u64> = (0..n).map(|p| (c * 1000 + p) as u64).collect();
            t.store_row(c, &row);
        }
        for c in 0..n {
            for p in (0..n).filter(|&p| p != c) {
                assert_eq!(t.slot(c, p).load(Relaxed), (c * 1000 + p) as u64);
            }
        }
        assert_eq!(t.taken_by_all(7), 7, "consumer 0's count of producer 7");
        let stride = std::mem::size_of::<Line>() * t.stride;
        assert_eq!(stride % 128, 0, "rows start on their own lines");
    }
}
