//! Every byte a worker sends goes through one door: [`Outputs`], the worker's output side,
//! with [`Output`], each connection's part of it. Runs on the worker's thread.
//!
//! Behind the door, three places hold a plain connection's output, and the order between
//! them is kept here and nowhere else:
//!
//! - the **cork**: while the worker handles one connection's input, the replies it gets are
//!   gathered in one worker-wide buffer and written with one `write` when its input is done
//!   (uWebSockets corks the same way), so a connection that keeps up costs no allocation per
//!   reply;
//! - the **staged** list: a delivery for a plain connection with nothing queued is kept as a
//!   handle to the shared bytes, linked per connection, and the end-of-turn flush writes them
//!   with one `writev` straight from those bytes: a refcount bump per delivery, no copy;
//! - the connection's bounded **queue** ([`Outbound`]): what the socket did not take, TLS
//!   output, and everything behind a backlog.
//!
//! The rules: the cork is used only while it gathers for this connection and the queue is
//! empty (or the cork already holds some of its output); the staged list only while the queue
//! is empty; anything queued after staged frames first moves them into the queue, in order;
//! what a write does not take goes into the queue, in order. The cork is empty outside a
//! connection's input, and the staged list is empty after each turn's flush, so the three
//! never hold one connection's bytes in the wrong order.
//!
//! Each offer says what happened ([`Took`]) and what it changed; the gauges those changes feed
//! are kept in one [`Tally`], applied to the worker's counters once per loop turn.

use std::io::{self, IoSlice};

use bytes::Bytes;

use super::{Transport, TransportError};
use crate::codec::{self, Kind};
use crate::outbound::SHARE_MIN;
use crate::outbound::{cost_of, Flushed, Outbound, Queued, CONTROL_ALLOWANCE, MAX_IOVECS};
use crate::stats::{bump, gauge, Stats};

/// Capacity of the cork kept between connections; a large batch of replies may grow it for a
/// moment, then it goes back to this.
pub const CORK_KEEP: usize = 64 * 1024;

/// Entries kept in the staged list's capacity between turns.
const STAGED_KEEP: usize = 16 * 1024;

/// Connections kept in the dirty list's capacity between turns.
const DIRTY_KEEP: usize = 16 * 1024;

/// One connection's part of the output: its queue and where it stands this turn. 16 bytes,
/// no heap memory while there is nothing to send.
#[derive(Debug, Default)]
pub struct Output {
    queue: Outbound,
    /// This turn's staged deliveries: 1 + the index of the latest in [`Outputs`]' list, 0
    /// for none. Nonzero only while the queue is empty and the connection is dirty.
    staged: u32,
    /// In the dirty list: flushed at the end of this loop turn.
    dirty: bool,
    /// Registered for WRITABLE: true only while output is pending after a short write.
    write_interest: bool,
    /// The write side is shut (a closing connection whose output, close frame included,
    /// is all out).
    shut: bool,
}

impl Output {
    /// Bytes in the queue (staged frames and the cork are not queued).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Memory the queue holds, the quantity the connection's bound applies to.
    pub fn queue_cost(&self) -> usize {
        self.queue.cost()
    }

    pub fn has_queue(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn has_staged(&self) -> bool {
        self.staged != 0
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn wants_write(&self) -> bool {
        self.write_interest
    }

    /// Whether the WRITABLE registration must change; records the new state.
    pub fn set_write_interest(&mut self, want: bool) -> bool {
        std::mem::replace(&mut self.write_interest, want) != want
    }

    pub fn is_shut(&self) -> bool {
        self.shut
    }

    /// Ends the write side (TLS: after close_notify), once.
    pub fn shut(&mut self, wire: &mut impl Wire) {
        if !self.shut {
            wire.shutdown_write();
            self.shut = true;
        }
    }
}

/// What ending the cork did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncorked {
    /// It held nothing (or the connection is gone).
    Nothing,
    /// The socket took it all.
    Written,
    /// The socket did not take it all: the rest is queued, the connection dirty.
    Queued,
}

/// What became of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Took {
    /// Gathered in the cork: written when the connection's input is done.
    Corked,
    /// Kept as a handle to the shared bytes, written by the end-of-turn flush.
    Staged,
    /// Appended to the connection's queue.
    Queued,
    /// Not sent: over the bound. For deliveries the caller applies the slow-consumer policy;
    /// a ping or pong past the control allowance is dropped (RFC 6455 §5.5.3 lets a pong
    /// answer only the latest ping).
    Over,
}

/// What the worker's output changed since the counters last saw it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Change in queued bytes.
    pub queued: i64,
    /// Change in the queues' memory.
    pub memory: i64,
    /// Change in what TLS transports hold.
    pub tls: i64,
    /// Bytes written to sockets.
    pub written: u64,
    /// Pings and pongs not sent for the bound.
    pub control_dropped: u64,
}

/// The transport as output sees it: a seam, so that the ordering rules are tested without a
/// socket. [`Transport`] is the real one.
pub trait Wire {
    fn is_tls(&self) -> bool;
    /// One `write` of `buf` to a plain socket: the bytes taken (0 when its buffer is full).
    /// `None` for TLS, which must encrypt through `flush`.
    fn write_plain(&mut self, buf: &[u8]) -> Option<io::Result<usize>>;
    /// One `writev` to a plain socket; `None` for TLS.
    fn writev_plain(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>>;
    /// Writes as much of `queue` as the socket takes.
    fn flush(
        &mut self,
        queue: &mut Outbound,
        scratch: &mut Vec<u8>,
    ) -> Result<Flushed, TransportError>;
    /// Memory the transport itself holds.
    fn cost(&self) -> usize;
    fn shutdown_write(&mut self);
}

impl Wire for Transport {
    fn is_tls(&self) -> bool {
        Transport::is_tls(self)
    }
    fn write_plain(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        Transport::write_plain(self, buf)
    }
    fn writev_plain(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        Transport::writev_plain(self, bufs)
    }
    fn flush(
        &mut self,
        queue: &mut Outbound,
        scratch: &mut Vec<u8>,
    ) -> Result<Flushed, TransportError> {
        Transport::flush(self, queue, scratch)
    }
    fn cost(&self) -> usize {
        Transport::cost(self)
    }
    fn shutdown_write(&mut self) {
        Transport::shutdown_write(self)
    }
}

/// One staged delivery.
#[derive(Debug)]
struct Staged {
    frame: Bytes,
    /// 1 + the index of the connection's previous staged entry; 0 for none.
    prev: u32,
    /// Entries staged for the connection so far, this one included (at most `MAX_IOVECS`,
    /// so that one `writev` takes them all).
    count: u32,
    /// What the connection's staged frames would cost queued (`outbound::cost_of`), this
    /// one's included: the bound applies to them as to the queue.
    total: usize,
}

/// The worker's output side: what its connections share (the cork, the staged list, the
/// dirty list, the TLS scratch) and the tally of what they changed.
#[derive(Debug)]
pub struct Outputs {
    cork: Vec<u8>,
    /// The connection the cork gathers for, while its input is handled.
    corked: Option<usize>,
    staged: Vec<Staged>,
    /// Connections to flush at the end of the turn (each once: see `Output::dirty`).
    dirty: Vec<usize>,
    /// Plaintext gathered for encryption (TLS only).
    tls_out: Vec<u8>,
    tally: Tally,
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs {
            cork: Vec::with_capacity(CORK_KEEP),
            corked: None,
            staged: Vec::new(),
            dirty: Vec::new(),
            tls_out: Vec::new(),
            tally: Tally::default(),
        }
    }
}

impl Outputs {
    /// Memory waiting to go out to `key`: its queue's, and the cork's while it gathers for it.
    pub fn cost(&self, key: usize, out: &Output) -> usize {
        let cork = if self.corked == Some(key) {
            self.cork.len()
        } else {
            0
        };
        out.queue.cost() + cork
    }

    /// Starts gathering `key`'s replies in the cork (plain connections only: TLS output is
    /// encrypted from the queue).
    pub fn cork(&mut self, key: usize, wire: &impl Wire) {
        debug_assert!(self.corked.is_none() && self.cork.is_empty());
        if !wire.is_tls() {
            self.corked = Some(key);
        }
    }

    /// Writes what the cork gathered for `key` with one `write`; what the socket does not take
    /// is queued. `out` and `wire` are `None` if the connection is gone (the cork is
    /// emptied all the same).
    pub fn uncork(
        &mut self,
        key: usize,
        conn: Option<(&mut Output, &mut impl Wire)>,
    ) -> Result<Uncorked, TransportError> {
        self.corked = None;
        if self.cork.is_empty() {
            return Ok(Uncorked::Nothing);
        }
        let mut cork = std::mem::take(&mut self.cork);
        let res = match conn {
            None => Ok(Uncorked::Nothing),
            Some((out, wire)) => {
                let res = match out.queue.is_empty() {
                    true => wire.write_plain(&cork).unwrap_or(Ok(0)),
                    false => Ok(0),
                };
                match res {
                    Ok(written) => {
                        self.tally.written += written as u64;
                        let rest = &cork[written..];
                        if rest.is_empty() {
                            Ok(Uncorked::Written)
                        } else {
                            self.append(key, out, rest.len(), |t| t.extend_from_slice(rest));
                            Ok(Uncorked::Queued)
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }
        };
        cork.clear();
        cork.shrink_to(CORK_KEEP);
        self.cork = cork;
        res
    }

    /// Sends bytes of the connection's own (an HTTP response, a reply, a close frame): into
    /// the cork while it gathers for `key`, otherwise behind everything staged and queued.
    /// Never refused: the caller bounds replies by no longer reading a connection whose output
    /// is over its bound.
    pub fn reply(&mut self, key: usize, out: &mut Output, bytes: &[u8]) -> Took {
        self.send(key, out, bytes.len(), |t| t.extend_from_slice(bytes))
    }

    /// Sends a frame of the connection's own, encoded once into its place (see [`reply`]).
    /// A ping or pong that would take the output past `limit` + [`CONTROL_ALLOWANCE`] is not
    /// sent ([`Took::Over`]).
    ///
    /// [`reply`]: Outputs::reply
    pub fn frame(
        &mut self,
        key: usize,
        out: &mut Output,
        kind: Kind,
        payload: &[u8],
        limit: usize,
    ) -> Took {
        let len = codec::MAX_SERVER_HEADER + payload.len();
        if matches!(kind, Kind::Ping | Kind::Pong)
            && self.cost(key, out) + len > limit + CONTROL_ALLOWANCE
        {
            self.tally.control_dropped += 1;
            return Took::Over;
        }
        self.send(key, out, len, |t| codec::encode_into(t, kind, payload))
    }

    fn send(
        &mut self,
        key: usize,
        out: &mut Output,
        hint: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Took {
        // Into the cork while it gathers for `key` and nothing of `key`'s is queued (or the
        // cork already holds some, which everything after must follow).
        if self.corked == Some(key) && (!self.cork.is_empty() || out.queue.is_empty()) {
            write(&mut self.cork);
            return Took::Corked;
        }
        self.append(key, out, hint, write);
        Took::Queued
    }

    /// Appends to the queue, behind whatever is staged, and marks the connection dirty.
    fn append(
        &mut self,
        key: usize,
        out: &mut Output,
        hint: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let (len0, cost0) = (out.queue.len(), out.queue.cost());
        spill(out, &self.staged);
        out.queue.append(hint, write);
        self.count(out, len0, cost0);
        self.mark_dirty(key, out);
    }

    /// Gives one recipient a run of `n` deliveries (`frame(i)`): the merged frame if it fits
    /// whole, otherwise each in turn until one does not. Returns how many it took; for the
    /// rest ([`Took::Over`]) the caller applies the slow-consumer policy. Staged where
    /// [`stage`] allows, queued otherwise, against the same bound.
    // A run is its length, its frames, its merged form and the bound; bundling them into a
    // struct would only move the same eight names into a literal at each of the four calls.
    #[allow(clippy::too_many_arguments)]
    pub fn offer_run<'a>(
        &mut self,
        key: usize,
        out: &mut Output,
        tls: bool,
        n: usize,
        frame: impl Fn(usize) -> &'a Bytes,
        merged: Option<&Bytes>,
        limit: usize,
    ) -> usize {
        let (len0, cost0) = (out.queue.len(), out.queue.cost());
        let taken = offer_run(out, &mut self.staged, tls, n, frame, merged, limit);
        self.count(out, len0, cost0);
        if taken > 0 {
            self.mark_dirty(key, out);
        }
        taken
    }

    pub fn mark_dirty(&mut self, key: usize, out: &mut Output) {
        if !out.dirty {
            out.dirty = true;
            self.dirty.push(key);
        }
    }

    /// The connections to flush this turn, each once; the list is handed back with
    /// [`flushed`](Outputs::flushed).
    pub fn take_dirty(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.dirty)
    }

    /// After the flush: the dirty list back (empty; flushing marks nothing dirty), and every
    /// staged frame has been written or queued, so the handles go.
    pub fn flushed(&mut self, mut dirty: Vec<usize>) {
        debug_assert!(self.dirty.is_empty(), "flushing marked a connection dirty");
        dirty.clear();
        if dirty.capacity() > DIRTY_KEEP {
            dirty = Vec::new();
        }
        self.dirty = dirty;
        self.staged.clear();
        if self.staged.capacity() > STAGED_KEEP {
            self.staged = Vec::new();
        }
    }

    /// Writes what is staged for the connection with one `writev`, then its queue (only if
    /// the socket took everything staged). `Blocked`: some is left, wait for WRITABLE.
    pub fn flush(
        &mut self,
        out: &mut Output,
        wire: &mut impl Wire,
    ) -> Result<Flushed, TransportError> {
        out.dirty = false;
        let (len0, cost0, tls0) = (out.queue.len(), out.queue.cost(), wire.cost());
        let res = self.write_staged(out, wire);
        // What the socket did not take of the staged frames went into the queue; count it as
        // queued before the queue's own flush counts what it writes.
        let staged_left = out.queue.len() - len0;
        let res = match res {
            Ok(true) => Ok(Flushed::Blocked),
            Ok(false) => wire.flush(&mut out.queue, &mut self.tls_out),
            Err(e) => Err(e.into()),
        };
        let written = len0 + staged_left - out.queue.len();
        self.tally.written += written as u64;
        self.count(out, len0, cost0);
        self.tally.tls += wire.cost() as i64 - tls0 as i64;
        res
    }

    /// Writes the frames staged for `out` with one `writev`; what the socket does not take is
    /// queued, in order. Returns whether the socket was full.
    fn write_staged(&mut self, out: &mut Output, wire: &mut impl Wire) -> io::Result<bool> {
        if out.staged == 0 {
            return Ok(false);
        }
        debug_assert!(out.queue.is_empty(), "staged behind a queue");
        let mut idx = [0; MAX_IOVECS];
        let n = chain_of(std::mem::take(&mut out.staged), &self.staged, &mut idx);
        let frame = |i: usize| &self.staged[idx[i] as usize].frame;
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut offered = 0;
        for (i, slice) in slices[..n].iter_mut().enumerate() {
            *slice = IoSlice::new(frame(i));
            offered += frame(i).len();
        }
        let mut written = match wire.writev_plain(&slices[..n]) {
            Some(r) => r?,
            None => 0, // never staged for TLS; queue it all for the transport's own flush
        };
        self.tally.written += written as u64;
        let full = written < offered && !wire.is_tls();
        for i in 0..n {
            let f = frame(i);
            if written >= f.len() {
                written -= f.len();
            } else if written > 0 {
                out.queue.push_shared(&f.slice(written..), usize::MAX);
                written = 0;
            } else {
                out.queue.push_shared(f, usize::MAX);
            }
        }
        Ok(full)
    }

    /// A connection leaves: its queue's bytes and memory come off the gauges.
    pub fn forget(&mut self, out: &Output) {
        self.tally.queued -= out.queue.len() as i64;
        self.tally.memory -= out.queue.cost() as i64;
    }

    /// A TLS transport's memory changed outside a flush (a read).
    pub fn tls_changed(&mut self, delta: i64) {
        self.tally.tls += delta;
    }

    fn count(&mut self, out: &Output, len0: usize, cost0: usize) {
        self.tally.queued += out.queue.len() as i64 - len0 as i64;
        self.tally.memory += out.queue.cost() as i64 - cost0 as i64;
    }

    /// Hands what changed since the last call to the worker's counters: the one place the
    /// output gauges are updated.
    pub fn apply(&mut self, stats: &Stats) {
        let t = std::mem::take(&mut self.tally);
        if t == Tally::default() {
            return;
        }
        bump(&stats.bytes_out, t.written);
        bump(&stats.control_dropped, t.control_dropped);
        gauge(&stats.queued_bytes, t.queued);
        gauge(&stats.outbound_memory, t.memory);
        gauge(&stats.tls_memory, t.tls);
    }

    /// For the end-of-turn invariants: nothing corked, staged or dirty is left.
    #[cfg(debug_assertions)]
    pub fn is_idle(&self) -> bool {
        self.corked.is_none()
            && self.cork.is_empty()
            && self.staged.is_empty()
            && self.dirty.is_empty()
    }

    /// For the end-of-turn invariants: what the counters have not been told yet.
    #[cfg(debug_assertions)]
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// For the end-of-turn invariants: the connections in the dirty list.
    #[cfg(debug_assertions)]
    pub fn dirty(&self) -> &[usize] {
        &self.dirty
    }
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

/// Moves what is staged for `out` into its queue, in order, unwritten: something is about to
/// be queued after it.
fn spill(out: &mut Output, staged: &[Staged]) {
    let mut idx = [0; MAX_IOVECS];
    let n = chain_of(std::mem::take(&mut out.staged), staged, &mut idx);
    for &i in &idx[..n] {
        out.queue.push_shared(&staged[i as usize].frame, usize::MAX);
    }
}

/// What staging `f` for a connection comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Staged,
    /// Over the bound: not taken.
    Over,
    /// Not for the staged list (a TLS connection, a queue already there, a small frame behind
    /// a staged one, a full chain): the caller spills what is staged and queues.
    Queue,
}

/// Stages `f` for a plain connection with nothing queued, if the queue would have taken it
/// by reference too: the first frame staged for it this turn, or one of at least
/// `SHARE_MIN` bytes while its chain is shorter than `MAX_IOVECS`. Small frames behind a
/// staged one go to the queue, which copies them into one buffer, so that many small
/// deliveries in one turn cost one iovec and no entry each. A recipient with nothing staged
/// or queued takes any one message (`run`: unless it is a merged run).
fn stage(
    out: &mut Output,
    staged: &mut Vec<Staged>,
    tls: bool,
    f: &Bytes,
    limit: usize,
    run: bool,
) -> Stage {
    if !out.queue.is_empty() || tls {
        return Stage::Queue;
    }
    let (count, held) = match out.staged {
        0 => (0, 0),
        at => {
            let last = &staged[at as usize - 1];
            (last.count, last.total)
        }
    };
    if count > 0 && (f.len() < SHARE_MIN || count as usize >= MAX_IOVECS) {
        return Stage::Queue;
    }
    let total = held + cost_of(f.len());
    if (count > 0 || run) && total > limit {
        return Stage::Over;
    }
    staged.push(Staged {
        frame: f.clone(),
        prev: out.staged,
        count: count + 1,
        total,
    });
    debug_assert!(staged.len() < u32::MAX as usize);
    out.staged = staged.len() as u32;
    Stage::Staged
}

/// See [`Outputs::offer_run`].
fn offer_run<'a>(
    out: &mut Output,
    staged: &mut Vec<Staged>,
    tls: bool,
    n: usize,
    frame: impl Fn(usize) -> &'a Bytes,
    merged: Option<&Bytes>,
    limit: usize,
) -> usize {
    let mut queue = false;
    if let Some(m) = merged {
        match stage(out, staged, tls, m, limit, true) {
            Stage::Staged => return n,
            Stage::Over => {} // not whole: one by one, below
            Stage::Queue => {
                spill(out, staged);
                queue = true;
                // Checked here, not left to `push_shared`: an empty queue takes any one
                // message, but a run is many.
                if out.queue.fits(m.len(), limit) {
                    out.queue.push_shared(m, limit);
                    return n;
                }
            }
        }
    }
    let mut taken = 0;
    while !queue && taken < n {
        match stage(out, staged, tls, frame(taken), limit, false) {
            Stage::Staged => taken += 1,
            Stage::Over => return taken,
            Stage::Queue => {
                spill(out, staged);
                queue = true;
            }
        }
    }
    taken
        + (taken..n)
            .take_while(|&i| out.queue.push_shared(frame(i), limit) == Queued::Ok)
            .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket stand-in: takes at most `budget` bytes per call, records each call. TLS: only
    /// the queue's flush writes (as the real transport encrypts from the queue).
    struct Fake {
        tls: bool,
        budget: usize,
        wire: Vec<u8>,
        calls: usize,
    }

    fn plain(budget: usize) -> Fake {
        Fake {
            tls: false,
            budget,
            wire: Vec::new(),
            calls: 0,
        }
    }

    impl Fake {
        fn take(&mut self, bufs: &[IoSlice<'_>]) -> usize {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.budget - n);
                self.wire.extend_from_slice(&b[..k]);
                n += k;
            }
            self.budget -= n;
            n
        }
    }

    impl Wire for Fake {
        fn is_tls(&self) -> bool {
            self.tls
        }
        fn write_plain(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
            (!self.tls).then(|| Ok(self.take(&[IoSlice::new(buf)])))
        }
        fn writev_plain(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
            (!self.tls).then(|| Ok(self.take(bufs)))
        }
        fn flush(
            &mut self,
            queue: &mut Outbound,
            _scratch: &mut Vec<u8>,
        ) -> Result<Flushed, TransportError> {
            if queue.is_empty() {
                return Ok(Flushed::Empty); // as the real queue: no syscall for nothing
            }
            let mut buf = Vec::new();
            queue.take_front(&mut buf, self.budget);
            self.take(&[IoSlice::new(&buf)]);
            Ok(if queue.is_empty() {
                Flushed::Empty
            } else {
                Flushed::Blocked
            })
        }
        fn cost(&self) -> usize {
            0
        }
        fn shutdown_write(&mut self) {}
    }

    const K: usize = 3;
    const LIMIT: usize = 1 << 20;

    fn big(b: u8) -> Bytes {
        Bytes::from(vec![b; SHARE_MIN])
    }

    fn offer(o: &mut Outputs, out: &mut Output, wire: &Fake, f: &Bytes, limit: usize) -> usize {
        o.offer_run(K, out, wire.tls, 1, |_| f, None, limit)
    }

    /// Flushes the dirty list as the worker does at the end of a turn.
    fn end_turn(o: &mut Outputs, out: &mut Output, wire: &mut Fake) -> Flushed {
        let dirty = o.take_dirty();
        let mut res = Flushed::Empty;
        for &key in &dirty {
            assert_eq!(key, K);
            res = o.flush(out, wire).unwrap();
        }
        o.flushed(dirty);
        res
    }

    #[test]
    fn corked_replies_leave_in_one_write_and_cost_no_queue() {
        let (mut o, mut out, mut wire) = (Outputs::default(), Output::default(), plain(1 << 20));
        o.cork(K, &wire);
        assert_eq!(o.reply(K, &mut out, b"one "), Took::Corked);
        assert_eq!(
            o.frame(K, &mut out, Kind::Text, b"two", LIMIT),
            Took::Corked
        );
        assert_eq!(o.cost(K, &out), 4 + 5, "the cork counts while it gathers");
        let r = o.uncork(K, Some((&mut out, &mut wire))).unwrap();
        assert_eq!(r, Uncorked::Written);
        assert_eq!(wire.calls, 1);
        assert_eq!(&wire.wire[..4], b"one ");
        assert!(!out.has_queue() && !out.is_dirty());
        assert!(o.is_idle());
        assert_eq!(o.tally.written, 9);
    }

    #[test]
    fn what_the_socket_does_not_take_from_the_cork_is_queued_before_later_output() {
        let (mut o, mut out, mut wire) = (Outputs::default(), Output::default(), plain(3));
        o.cork(K, &wire);
        o.reply(K, &mut out, b"abcdef");
        assert_eq!(
            o.uncork(K, Some((&mut out, &mut wire))).unwrap(),
            Uncorked::Queued
        );
        assert!(out.is_dirty());
        assert_eq!(out.queued(), 3);
        // The next input's replies must not overtake the queue through the cork.
        o.cork(K, &wire);
        assert_eq!(o.reply(K, &mut out, b"gh"), Took::Queued);
        assert_eq!(
            o.uncork(K, Some((&mut out, &mut wire))).unwrap(),
            Uncorked::Nothing
        );
        wire.budget = 100;
        assert_eq!(end_turn(&mut o, &mut out, &mut wire), Flushed::Empty);
        assert_eq!(wire.wire, b"abcdefgh");
        assert_eq!(o.tally.queued, 0, "queued and written again");
    }

    #[test]
    fn a_cork_whose_connection_is_gone_is_emptied() {
        let (mut o, mut out, wire) = (Outputs::default(), Output::default(), plain(0));
        o.cork(K, &wire);
        o.reply(K, &mut out, b"lost");
        let gone: Option<(&mut Output, &mut Fake)> = None;
        assert_eq!(o.uncork(K, gone).unwrap(), Uncorked::Nothing);
        assert!(o.is_idle());
    }

    #[test]
    fn a_tls_connection_is_never_corked_nor_staged() {
        let (mut o, mut out) = (Outputs::default(), Output::default());
        let mut wire = Fake {
            tls: true,
            ..plain(1 << 20)
        };
        o.cork(K, &wire);
        assert_eq!(o.reply(K, &mut out, b"hi"), Took::Queued);
        assert_eq!(offer(&mut o, &mut out, &wire, &big(1), LIMIT), 1);
        assert!(!out.has_staged());
        assert_eq!(out.queued(), 2 + SHARE_MIN);
        end_turn(&mut o, &mut out, &mut wire);
        assert_eq!(&wire.wire[..2], b"hi");
        assert_eq!(wire.wire.len(), 2 + SHARE_MIN);
    }

    #[test]
    fn staged_deliveries_leave_in_one_writev_from_the_shared_bytes() {
        let (mut o, mut out, mut wire) = (Outputs::default(), Output::default(), plain(1 << 20));
        let frames = [big(1), big(2), big(3)];
        for f in &frames {
            assert_eq!(offer(&mut o, &mut out, &wire, f, LIMIT), 1);
        }
        assert!(out.has_staged() && !out.has_queue() && out.is_dirty());
        assert_eq!(o.tally.queued, 0, "staged is not queued");
        end_turn(&mut o, &mut out, &mut wire);
        assert_eq!(wire.calls, 1, "one writev for all three");
        assert_eq!(wire.wire, frames.concat());
        assert!(o.is_idle() && !out.has_staged());
    }

    #[test]
    fn what_a_writev_does_not_take_is_queued_in_order_and_written_next() {
        let (mut o, mut out, mut wire) = (Outputs::default(), Output::default(), plain(1500));
        let frames = [big(1), big(2), big(3)];
        for f in &frames {
            offer(&mut o, &mut out, &wire, f, LIMIT);
        }
        assert_eq!(end_turn(&mut o, &mut out, &mut wire), Flushed::Blocked);
        assert_eq!(out.queued(), 3 * SHARE_MIN - 1500);
        assert_eq!(wire.calls, 1, "a full socket is not asked again");
        // A delivery behind that queue goes into it, not into the staged list.
        let fourth = big(4);
        offer(&mut o, &mut out, &wire, &fourth, LIMIT);
        assert!(!out.has_staged());
        wire.budget = 1 << 20;
        assert_eq!(end_turn(&mut o, &mut out, &mut wire), Flushed::Empty);
        let mut want = frames.concat();
        want.extend_from_slice(&fourth);
        assert_eq!(wire.wire, want);
        assert_eq!(o.tally.queued, 0);
        assert_eq!(o.tally.memory, 0);
        assert_eq!(o.tally.written, want.len() as u64);
    }

    #[test]
    fn own_output_after_staged_frames_follows_them() {
        let (mut o, mut out, mut wire) = (Outputs::default(), Output::default(), plain(1 << 20));
        let f = big(7);
        offer(&mut o, &mut out, &wire, &f, LIMIT);
        assert!(out.has_staged());
        // A close frame (a timer's, say) is queued after the staged delivery.
        assert_eq!(
            o.frame(K, &mut out, Kind::Close, &[3, 232], LIMIT),
            Took::Queued
        );
        assert!(!out.has_staged(), "spilled into the queue first");
        end_turn(&mut o, &mut out, &mut wire);
        assert_eq!(&wire.wire[..SHARE_MIN], &f[..]);
        assert_eq!(&wire.wire[SHARE_MIN..], &[0x88, 2, 3, 232]);
    }

    #[test]
    fn small_deliveries_behind_a_staged_one_are_copied_into_the_queue_in_order() {
        let (mut o, mut out, mut wire) = (Outputs::default(), Output::default(), plain(1 << 20));
        let first = Bytes::from_static(b"first;");
        let second = Bytes::from_static(b"second;");
        offer(&mut o, &mut out, &wire, &first, LIMIT);
        assert!(out.has_staged());
        offer(&mut o, &mut out, &wire, &second, LIMIT);
        assert!(!out.has_staged() && out.has_queue());
        end_turn(&mut o, &mut out, &mut wire);
        assert_eq!(wire.wire, b"first;second;");
    }

    #[test]
    fn a_run_that_does_not_fit_whole_is_taken_one_by_one_up_to_the_bound() {
        let (mut o, mut out) = (Outputs::default(), Output::default());
        let frames = [big(1), big(2), big(3)];
        let merged = Bytes::from(frames.concat());
        let limit = 2 * cost_of(SHARE_MIN);
        let taken = o.offer_run(K, &mut out, false, 3, |i| &frames[i], Some(&merged), limit);
        assert_eq!(
            taken, 2,
            "the third is over the bound: the caller's policy applies"
        );
        let taken = o.offer_run(K, &mut out, false, 1, |_| &frames[2], None, limit);
        assert_eq!(taken, 0);
    }

    #[test]
    fn a_merged_run_that_fits_is_one_staged_entry() {
        let (mut o, mut out, mut wire) = (Outputs::default(), Output::default(), plain(1 << 20));
        let frames = [big(1), big(2)];
        let merged = Bytes::from(frames.concat());
        let taken = o.offer_run(K, &mut out, false, 2, |i| &frames[i], Some(&merged), LIMIT);
        assert_eq!(taken, 2);
        assert_eq!(o.staged.len(), 1);
        end_turn(&mut o, &mut out, &mut wire);
        assert_eq!(wire.wire, merged);
    }

    #[test]
    fn pings_and_pongs_past_the_control_allowance_are_not_sent() {
        let (mut o, mut out) = (Outputs::default(), Output::default());
        let limit = 1000;
        o.reply(K, &mut out, &vec![0; limit + CONTROL_ALLOWANCE]);
        assert_eq!(o.frame(K, &mut out, Kind::Pong, b"x", limit), Took::Over);
        assert_eq!(o.frame(K, &mut out, Kind::Ping, b"", limit), Took::Over);
        assert_eq!(o.tally.control_dropped, 2);
        // A close frame is never refused.
        assert_eq!(
            o.frame(K, &mut out, Kind::Close, &[3, 232], limit),
            Took::Queued
        );
    }

    #[test]
    fn the_tally_reaches_the_counters_once_and_a_leaving_connection_takes_its_bytes_off() {
        let stats = Stats::default();
        let (mut o, mut out, mut wire) = (Outputs::default(), Output::default(), plain(4));
        o.reply(K, &mut out, b"12345678");
        end_turn(&mut o, &mut out, &mut wire);
        o.apply(&stats);
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(stats.queued_bytes.load(Relaxed), 4);
        assert_eq!(stats.bytes_out.load(Relaxed), 4);
        assert!(stats.outbound_memory.load(Relaxed) > 0);
        assert_eq!(o.tally, Tally::default());
        o.forget(&out);
        o.apply(&stats);
        assert_eq!(stats.queued_bytes.load(Relaxed), 0);
        assert_eq!(stats.outbound_memory.load(Relaxed), 0);
    }

    #[test]
    fn a_connection_is_flushed_once_a_turn_however_often_it_is_marked() {
        let (mut o, mut out) = (Outputs::default(), Output::default());
        o.reply(K, &mut out, b"a");
        o.reply(K, &mut out, b"b");
        o.mark_dirty(K, &mut out);
        let dirty = o.take_dirty();
        assert_eq!(dirty, vec![K]);
        o.flushed(dirty);
    }
}
