//! This worker's share of every publish: deliveries queued during the turn go to their
//! recipients, merged per audience. Runs on each worker.
//!
//! A plain connection with nothing queued gets its share *staged*: a handle to the shared
//! bytes in the worker's list, written by its end-of-turn flush straight from those bytes,
//! so a reader that keeps up costs a refcount bump per delivery and no allocation. Only
//! what its socket does not take goes into its bounded outbound queue, where every other
//! recipient's share goes at once (TLS ones, and those with a backlog), and so do small
//! frames behind a staged one (the queue copies them into one buffer, one iovec for all).
//! The bound and the order are the queue's either way.

use std::io::{self, IoSlice};

use bytes::Bytes;

use super::Worker;
use crate::broadcast::{self, Delivery, Target};
use crate::config::SlowConsumer;
use crate::conn::deflate::{self, ZippedRun};
use crate::conn::{CloseReason, Conn};
use crate::memory;
use crate::outbound::{cost_of, Queued, MAX_IOVECS, SHARE_MIN};
use crate::stats::{bump, gauge};

impl Worker {
    /// Gives this turn's deliveries to their recipients (staged or queued, see the module
    /// header). Consecutive messages for the same audience are merged into one buffer
    /// first, so each recipient gets one segment per run; a recipient whose bound cannot
    /// take the whole run gets the messages one by one, as many as fit, and the
    /// slow-consumer policy for the rest.
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
            let staged = &mut self.staged;
            let mut offer = |key: usize, conn: &mut Conn, dirty: &mut Vec<usize>| {
                let (len0, cost0) = (conn.out.len(), conn.out.cost());
                let to = Recipient { conn, staged };
                let taken = match to.conn.machine.deflate() {
                    None => offer_run(to, run.len(), |i| &run[i].frame, merged.as_ref(), limit),
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
                        offer_run(to, run.len(), |i| &z.frames[i], z.merged.as_ref(), limit)
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
            let to = Recipient {
                conn,
                staged: &mut self.staged,
            };
            let taken = match to.conn.machine.deflate() {
                None => offer_run(to, missed as usize, |i| &run[from + i].frame, None, limit),
                Some(a) => {
                    let z = zipped[slot(a.window_bits)]
                        .as_ref()
                        .expect("compressed in the first pass over the run");
                    offer_run(to, missed as usize, |i| &z.frames[from + i], None, limit)
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

/// Entries kept in the staged list's capacity between turns.
const STAGED_KEEP: usize = 16 * 1024;

/// One staged delivery (see `Worker::staged`).
#[derive(Debug)]
pub(super) struct Staged {
    frame: Bytes,
    /// 1 + the index of the connection's previous staged entry; 0 for none.
    prev: u32,
    /// Entries staged for the connection so far, this one included (at most `MAX_IOVECS`,
    /// so that one `writev` takes them all).
    count: u32,
    /// What the connection's staged frames would cost queued (`outbound::cost_of`), this
    /// one's included: the bound applies to it as to the queue.
    total: usize,
}

/// The staged entries of a connection whose latest is `last` (1-based), oldest first, into
/// `idx`; returns how many.
fn chain_of(mut last: u32, staged: &[Staged], idx: &mut [u32; MAX_IOVECS]) -> usize {
    let n = match last {
        0 => 0,
        at => staged[at as usize - 1].count as usize,
    };
    for slot in idx[..n].iter_mut().rev() {
        *slot = last - 1;
        last = staged[*slot as usize].prev;
    }
    n
}

/// Moves what is staged for `conn` into its queue, in order, unwritten.
fn spill(conn: &mut Conn, staged: &[Staged]) {
    let mut idx = [0; MAX_IOVECS];
    let n = chain_of(std::mem::take(&mut conn.staged), staged, &mut idx);
    for &i in &idx[..n] {
        conn.out.push_shared(&staged[i as usize].frame, usize::MAX);
    }
}

impl Worker {
    /// Writes the frames staged for `key` with one `writev`; what the socket does not take
    /// is queued, in order, in its outbound queue. Returns whether the socket was full (then
    /// there is no point writing more now); the caller handles an error as the transport's.
    pub(super) fn write_staged(&mut self, key: usize) -> io::Result<bool> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(false);
        };
        if conn.staged == 0 {
            return Ok(false);
        }
        debug_assert!(conn.out.is_empty(), "conn {key}: staged behind a queue");
        let mut idx = [0; MAX_IOVECS];
        let n = chain_of(std::mem::take(&mut conn.staged), &self.staged, &mut idx);
        let frame = |i: usize| &self.staged[idx[i] as usize].frame;
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut offered = 0;
        for (i, slice) in slices[..n].iter_mut().enumerate() {
            *slice = IoSlice::new(frame(i));
            offered += frame(i).len();
        }
        let mut written = match conn.transport.writev_plain(&slices[..n]) {
            Some(r) => r?,
            None => 0, // never staged for TLS; queue it all for the transport's own flush
        };
        bump(&self.stats.bytes_out, written as u64);
        let full = written < offered && !conn.transport.is_tls();
        let (len0, cost0) = (conn.out.len(), conn.out.cost());
        for i in 0..n {
            let f = frame(i);
            if written >= f.len() {
                written -= f.len();
            } else if written > 0 {
                conn.out.push_shared(&f.slice(written..), usize::MAX);
                written = 0;
            } else {
                conn.out.push_shared(f, usize::MAX);
            }
        }
        gauge(&self.stats.queued_bytes, (conn.out.len() - len0) as i64);
        gauge(
            &self.stats.outbound_memory,
            conn.out.cost() as i64 - cost0 as i64,
        );
        Ok(full)
    }

    /// Moves the frames staged for `key` into its outbound queue unwritten: something is
    /// about to be queued after them (a close frame, say), which must follow them.
    pub(super) fn unstage(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.staged == 0 {
            return;
        }
        let (len0, cost0) = (conn.out.len(), conn.out.cost());
        spill(conn, &self.staged);
        gauge(&self.stats.queued_bytes, (conn.out.len() - len0) as i64);
        gauge(
            &self.stats.outbound_memory,
            conn.out.cost() as i64 - cost0 as i64,
        );
    }

    /// After the turn's flush: every staged frame has been written or queued; let the
    /// handles go.
    pub(super) fn end_staging(&mut self) {
        self.staged.clear();
        if self.staged.capacity() > STAGED_KEEP {
            self.staged = Vec::new();
        }
    }
}

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

/// Stages `f` for a plain connection with nothing queued, if the queue would have taken it
/// by reference too: the first frame staged for it this turn, or one of at least
/// `SHARE_MIN` bytes while its chain is shorter than `MAX_IOVECS`. Small frames behind a
/// staged one are left to the queue, which copies them into one buffer (`None`: the caller
/// spills what is staged and queues), so that many small deliveries in one turn cost one
/// iovec and no entry each. `Some(false)`: over the bound, not taken. A recipient with
/// nothing staged or queued takes any one message (`run`: unless it is a merged run).
fn try_stage(
    conn: &mut Conn,
    staged: &mut Vec<Staged>,
    f: &Bytes,
    limit: usize,
    run: bool,
) -> Option<bool> {
    if !conn.out.is_empty() || conn.transport.is_tls() {
        return None;
    }
    let (count, held) = match conn.staged {
        0 => (0, 0),
        at => {
            let last = &staged[at as usize - 1];
            (last.count, last.total)
        }
    };
    if count > 0 && (f.len() < SHARE_MIN || count as usize >= MAX_IOVECS) {
        return None;
    }
    let total = held + cost_of(f.len());
    if (count > 0 || run) && total > limit {
        return Some(false);
    }
    staged.push(Staged {
        frame: f.clone(),
        prev: conn.staged,
        count: count + 1,
        total,
    });
    debug_assert!(staged.len() < u32::MAX as usize);
    conn.staged = staged.len() as u32;
    Some(true)
}

/// A recipient of a run, and the worker's staged list it may be staged in.
struct Recipient<'c> {
    conn: &'c mut Conn,
    staged: &'c mut Vec<Staged>,
}

/// Gives a run of `n` messages (`frame(i)`) to one recipient: the merged frame if it fits
/// whole, otherwise each message in turn until one does not. Returns how many it took.
/// Staged where `try_stage` allows, queued otherwise, against the same bound.
fn offer_run<'a>(
    to: Recipient<'_>,
    n: usize,
    frame: impl Fn(usize) -> &'a Bytes,
    merged: Option<&Bytes>,
    limit: usize,
) -> usize {
    let Recipient { conn, staged } = to;
    let mut queue = false;
    if let Some(m) = merged {
        match try_stage(conn, staged, m, limit, true) {
            Some(true) => return n,
            Some(false) => {} // not whole: one by one, below
            None => {
                spill(conn, staged);
                queue = true;
                // Checked here, not left to `push_shared`: an empty queue takes any one
                // message, but a run is many.
                if conn.out.fits(m.len(), limit) {
                    conn.out.push_shared(m, limit);
                    return n;
                }
            }
        }
    }
    let mut taken = 0;
    while !queue && taken < n {
        match try_stage(conn, staged, frame(taken), limit, false) {
            Some(true) => taken += 1,
            Some(false) => return taken,
            None => {
                spill(conn, staged);
                queue = true;
            }
        }
    }
    taken
        + (taken..n)
            .take_while(|&i| conn.out.push_shared(frame(i), limit) == Queued::Ok)
            .count()
}
