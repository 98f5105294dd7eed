//! This worker's share of every publish: deliveries queued during the turn go into their
//! recipients' bounded outbound queues, merged per audience. Runs on each worker.

use bytes::Bytes;

use super::Worker;
use crate::broadcast::{self, Delivery, Target};
use crate::config::SlowConsumer;
use crate::conn::deflate::{self, ZippedRun};
use crate::conn::{CloseReason, Conn};
use crate::memory;
use crate::outbound::Queued;
use crate::stats::{bump, gauge};

impl Worker {
    /// Appends this turn's deliveries to their recipients' outbound queues. Consecutive
    /// messages for the same audience are merged into one buffer first, so each recipient
    /// gets one segment per run; a recipient whose bound cannot take the whole run gets the
    /// messages one by one, as many as fit, and the slow-consumer policy for the rest.
    pub(super) fn deliver(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let mut over = std::mem::take(&mut self.over);
        let limit = if self.memory.over() {
            self.cfg.max_outbound_bytes / memory::PRESSURE_DIVISOR
        } else {
            self.cfg.max_outbound_bytes
        };
        let mut tally = Tally::default();
        let min_size = self.cfg.deflate_min_size;
        let mut start = 0;
        while start < pending.len() {
            let end = broadcast::run_end(&pending, start);
            let run = &pending[start..end];
            let merged = (run.len() > 1).then(|| broadcast::merge(run));
            // The run compressed, per window size, the first time a recipient needs it.
            let mut zipped: Zipped = Default::default();
            let deflater = &mut self.deflater;
            let zscratch = &mut self.zscratch;
            let mut offer = |key: usize, conn: &mut Conn, dirty: &mut Vec<usize>| {
                let (len0, cost0) = (conn.out.len(), conn.out.cost());
                let taken = match conn.machine.deflate() {
                    None => offer_run(conn, run.len(), |i| &run[i].frame, merged.as_ref(), limit),
                    Some(a) => {
                        let z = zipped[slot(a.window_bits)].get_or_insert_with(|| {
                            let z = deflater.zip_run(
                                run.iter().map(|d| &d.frame),
                                a.window_bits,
                                min_size,
                                zscratch,
                            );
                            tally.compressed += z.compressed;
                            z
                        });
                        offer_run(conn, run.len(), |i| &z.frames[i], z.merged.as_ref(), limit)
                    }
                };
                tally.delivered += taken as u64;
                tally.queued += (conn.out.len() - len0) as i64;
                tally.memory += conn.out.cost() as i64 - cost0 as i64;
                if taken < run.len() {
                    over.push((key, (run.len() - taken) as u32));
                }
                if taken > 0 && !conn.dirty {
                    conn.dirty = true;
                    dirty.push(key);
                }
            };
            match &run[0].target {
                Target::All => {
                    for (key, conn) in self.conns.iter_mut() {
                        if conn.is_json() {
                            offer(key, conn, &mut self.dirty);
                        }
                    }
                }
                Target::Topic(t) => {
                    if let Some(subs) = self.topics.subscribers(t) {
                        for &key in subs {
                            offer(key, &mut self.conns[key], &mut self.dirty);
                        }
                    }
                }
            }
            self.handle_slow(&mut over, run, &zipped, limit, &mut tally);
            start = end;
        }
        // A burst may have grown the list; do not keep that capacity for ever.
        pending.clear();
        if pending.capacity() > PENDING_KEEP {
            pending = Vec::new();
        }
        self.pending = pending;
        self.over = over;
        bump(&self.stats.deliveries, tally.delivered);
        bump(&self.stats.messages_compressed, tally.compressed);
        bump(&self.stats.messages_out, tally.delivered);
        gauge(&self.stats.queued_bytes, tally.queued);
        gauge(&self.stats.outbound_memory, tally.memory);
    }

    /// Recipients a run did not fit: a reader that is keeping up only looks full because the
    /// turn queued a burst before flushing, so write to it now and offer the rest again.
    /// What still does not fit gets the slow-consumer policy.
    fn handle_slow(
        &mut self,
        over: &mut Vec<(usize, u32)>,
        run: &[Delivery],
        zipped: &Zipped,
        limit: usize,
        tally: &mut Tally,
    ) {
        for (key, missed) in over.drain(..) {
            if !self.conns[key].write_interest {
                // WRITABLE interest means the socket is known to be full: no point trying.
                self.flush(key);
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue; // the write failed and the connection is gone
            };
            let from = run.len() - missed as usize;
            let (len0, cost0) = (conn.out.len(), conn.out.cost());
            let taken = match conn.machine.deflate() {
                None => offer_run(conn, missed as usize, |i| &run[from + i].frame, None, limit),
                Some(a) => {
                    let z = zipped[slot(a.window_bits)]
                        .as_ref()
                        .expect("compressed in the first pass over the run");
                    offer_run(conn, missed as usize, |i| &z.frames[from + i], None, limit)
                }
            };
            tally.delivered += taken as u64;
            tally.queued += (conn.out.len() - len0) as i64;
            tally.memory += conn.out.cost() as i64 - cost0 as i64;
            if taken > 0 && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
            let missed = missed as usize - taken;
            if missed == 0 {
                continue;
            }
            bump(&self.stats.dropped, missed as u64);
            if self.cfg.slow_consumer == SlowConsumer::Close && self.conns[key].is_json() {
                bump(&self.stats.slow_closes, 1);
                log::debug!(
                    "worker {}: conn {key} closed as a slow consumer",
                    self.index
                );
                self.begin_close(key, CloseReason::SlowConsumer);
            }
        }
    }
}

/// Deliveries kept in the pending list's capacity between turns.
const PENDING_KEEP: usize = 1024;

/// What one delivery pass changed, applied to the counters once at its end.
#[derive(Default)]
struct Tally {
    delivered: u64,
    /// Messages compressed (once per run and window size, not per recipient).
    compressed: u64,
    queued: i64,
    memory: i64,
}

/// A run's compressed forms, by window size (9 to 15 bits).
type Zipped = [Option<ZippedRun>; 7];

fn slot(bits: u8) -> usize {
    (bits.clamp(deflate::MIN_WINDOW_BITS, deflate::MAX_WINDOW_BITS) - deflate::MIN_WINDOW_BITS)
        as usize
}

/// Queues a run of `n` messages (`frame(i)`) to one recipient: the merged frame if it fits
/// whole, otherwise each message in turn until one does not. Returns how many were queued.
fn offer_run<'a>(
    conn: &mut Conn,
    n: usize,
    frame: impl Fn(usize) -> &'a Bytes,
    merged: Option<&Bytes>,
    limit: usize,
) -> usize {
    if let Some(m) = merged {
        // Checked here, not left to `push_shared`: an empty queue takes any one message, but
        // a run is many.
        if conn.out.fits(m.len(), limit) {
            conn.out.push_shared(m, limit);
            return n;
        }
    }
    (0..n)
        .take_while(|&i| conn.out.push_shared(frame(i), limit) == Queued::Ok)
        .count()
}
