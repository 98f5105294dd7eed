//! This worker's share of every publish: deliveries gathered during the turn go to their
//! recipients through the output door, merged per audience, and the slow-consumer policy
//! for those they do not fit. Runs on each worker.

use super::conns::Conns;
use crate::broadcast::{self, Delivery, Target};
use crate::config::SlowConsumer;
use crate::conn::deflate::{self, Deflater, ZippedRun};
use crate::conn::CloseReason;
use crate::memory;
use crate::stats::bump;

/// Deliveries kept in the pending list's capacity between turns.
const PENDING_KEEP: usize = 1024;

/// The delivery part of a worker: what it owns to fan a turn's publishes out.
pub(super) struct Fanout {
    /// Deliveries for this worker's connections, gathered during the turn.
    pub(super) pending: Vec<Delivery>,
    /// Recipients a run did not fit, with how many of its messages they missed.
    over: Vec<(usize, u32)>,
    /// permessage-deflate: the worker's compressors (made on first use) and their output.
    deflater: Deflater,
    zscratch: Vec<u8>,
    /// Process memory state: under pressure, slow consumers are cut shorter.
    memory: std::sync::Arc<memory::Guard>,
}

impl Fanout {
    pub(super) fn new(deflate_level: u32, memory: std::sync::Arc<memory::Guard>) -> Self {
        Fanout {
            pending: Vec::new(),
            over: Vec::new(),
            deflater: Deflater::new(deflate_level),
            zscratch: Vec::new(),
            memory,
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Gives this turn's deliveries to their recipients. Consecutive messages for the same
    /// audience are merged into one buffer first, so each recipient gets one segment per
    /// run; a recipient whose bound cannot take the whole run gets the messages one by one,
    /// as many as fit, and the slow-consumer policy for the rest.
    pub(super) fn deliver(&mut self, conns: &mut Conns) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut pending = self.deliver_runs(conns, pending, None);
        // A burst may have grown the list; do not keep that capacity for ever.
        pending.clear();
        if pending.capacity() > PENDING_KEEP {
            pending = Vec::new();
        }
        self.pending = pending;
    }

    /// Gives connection `key` alone the frames of `run` (a recovery's replay of a history
    /// topic), as a delivery: merged, compressed where it agreed to it, against its outbound
    /// bound and the slow-consumer policy.
    pub(super) fn deliver_to(&mut self, conns: &mut Conns, key: usize, frames: &[bytes::Bytes]) {
        if frames.is_empty() {
            return;
        }
        let run = frames
            .iter()
            .map(|f| Delivery {
                target: Target::All,
                frame: f.clone(),
            })
            .collect();
        self.deliver_runs(conns, run, Some(key));
    }

    /// Delivers `pending` run by run to each run's audience, or to `only` if given; returns
    /// the list, for its capacity.
    fn deliver_runs(
        &mut self,
        conns: &mut Conns,
        pending: Vec<Delivery>,
        only: Option<usize>,
    ) -> Vec<Delivery> {
        let limit = if self.memory.over() {
            conns.cfg.max_outbound_bytes / memory::PRESSURE_DIVISOR
        } else {
            conns.cfg.max_outbound_bytes
        };
        let min_size = conns.cfg.deflate_min_size;
        let (mut delivered, mut compressed) = (0u64, 0u64);
        let mut start = 0;
        while start < pending.len() {
            let end = broadcast::run_end(&pending, start);
            let run = &pending[start..end];
            let merged = (run.len() > 1).then(|| broadcast::merge(run));
            // The run compressed, per window size, the first time a recipient needs it.
            let mut zipped: Zipped = Default::default();
            let deflater = &mut self.deflater;
            let zscratch = &mut self.zscratch;
            let over = &mut self.over;
            let Conns {
                slab, out, topics, ..
            } = conns;
            let mut offer = |key: usize, conn: &mut crate::conn::Conn| {
                let tls = conn.transport.is_tls();
                let taken = match conn.machine.deflate() {
                    None => out.offer_run(
                        key,
                        &mut conn.out,
                        tls,
                        run.len(),
                        |i| &run[i].frame,
                        merged.as_ref(),
                        limit,
                    ),
                    Some(a) => {
                        let z = zipped[slot(a.window_bits())].get_or_insert_with(|| {
                            let z = deflater.zip_run(
                                run.iter().map(|d| &d.frame),
                                a.window_bits(),
                                min_size,
                                zscratch,
                            );
                            compressed += z.compressed;
                            z
                        });
                        out.offer_run(
                            key,
                            &mut conn.out,
                            tls,
                            run.len(),
                            |i| &z.frames[i],
                            z.merged.as_ref(),
                            limit,
                        )
                    }
                };
                delivered += taken as u64;
                if taken < run.len() {
                    over.push((key, (run.len() - taken) as u32));
                }
            };
            match (only, &run[0].target) {
                (Some(key), _) => {
                    if let Some(conn) = slab.get_mut(key) {
                        offer(key, conn);
                    }
                }
                (None, Target::All) => {
                    for (key, conn) in slab.iter_mut() {
                        if conn.is_json() {
                            offer(key, conn);
                        }
                    }
                }
                (None, Target::Topic(t)) => {
                    if let Some(subs) = topics.subscribers(t) {
                        for &key in subs {
                            offer(key, &mut slab[key]);
                        }
                    }
                }
            }
            delivered += self.handle_slow(conns, run, &zipped, limit);
            start = end;
        }
        bump(&conns.stats.deliveries, delivered);
        bump(&conns.stats.messages_compressed, compressed);
        bump(&conns.stats.messages_out, delivered);
        pending
    }

    /// Recipients a run did not fit: a reader that is keeping up only looks full because the
    /// turn queued a burst before flushing, so write to it now and offer the rest again.
    /// What still does not fit gets the slow-consumer policy. Returns how many were taken.
    fn handle_slow(
        &mut self,
        conns: &mut Conns,
        run: &[Delivery],
        zipped: &Zipped,
        limit: usize,
    ) -> u64 {
        let mut delivered = 0;
        for (key, missed) in self.over.drain(..) {
            if !conns.slab[key].out.wants_write() {
                // WRITABLE interest means the socket is known to be full: no point trying.
                conns.flush(key);
            }
            let Some(conn) = conns.slab.get_mut(key) else {
                continue; // the write failed and the connection is gone
            };
            let from = run.len() - missed as usize;
            let tls = conn.transport.is_tls();
            let taken = match conn.machine.deflate() {
                None => conns.out.offer_run(
                    key,
                    &mut conn.out,
                    tls,
                    missed as usize,
                    |i| &run[from + i].frame,
                    None,
                    limit,
                ),
                Some(a) => {
                    let z = zipped[slot(a.window_bits())]
                        .as_ref()
                        .expect("compressed in the first pass over the run");
                    conns.out.offer_run(
                        key,
                        &mut conn.out,
                        tls,
                        missed as usize,
                        |i| &z.frames[from + i],
                        None,
                        limit,
                    )
                }
            };
            delivered += taken as u64;
            let missed = missed as usize - taken;
            if missed == 0 {
                continue;
            }
            bump(&conns.stats.dropped, missed as u64);
            if conns.cfg.slow_consumer == SlowConsumer::Close && conns.slab[key].is_json() {
                bump(&conns.stats.slow_closes, 1);
                log::debug!(
                    "worker {}: conn {key} closed as a slow consumer",
                    conns.index
                );
                conns.begin_close(key, CloseReason::SlowConsumer);
            }
        }
        delivered
    }
}

/// A run's compressed forms, by window size (9 to 15 bits).
type Zipped = [Option<ZippedRun>; 7];

fn slot(bits: u8) -> usize {
    (bits.clamp(deflate::MIN_WINDOW_BITS, deflate::MAX_WINDOW_BITS) - deflate::MIN_WINDOW_BITS)
        as usize
}
