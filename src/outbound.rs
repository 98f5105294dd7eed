//! One connection's unsent output and what it costs in memory. Runs on the connection's
//! worker thread.
//!
//! Output is a queue of frozen segments followed by an owned tail. A large broadcast frame
//! (at least [`SHARE_MIN`] bytes), or any frame into an empty queue, is queued by reference:
//! a `Bytes` handle, a refcount bump, never a copy per subscriber. A small frame behind a
//! backlog, and every reply that belongs to this connection alone, is copied into the owned
//! tail, where it costs its own length and no handle: a backlog of a thousand 50-byte frames
//! is one 50 KB buffer, not a thousand allocations (uWebSockets keeps one such buffer per
//! socket for the same reason).
//!
//! The bound is on [`Outbound::cost`], the memory the queue holds: shared segments count
//! their length plus [`SEG_OVERHEAD`], the tail its capacity. Writing is O(bytes written):
//! whole segments are popped and the tail is consumed by moving an offset, never by shifting
//! the bytes that remain. An empty `Outbound` is one word and owns no heap memory: the
//! queue's own fields (72 bytes) live in a box that exists only while output is pending,
//! not charged to the bound.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// At most this many segments go into one `writev` (Linux's IOV_MAX is 1024).
pub const MAX_IOVECS: usize = 64;

/// Frames at least this long are shared by reference; shorter ones are copied. At 1 KiB a
/// handle's overhead is at most 6% of what it holds, while copying a shorter frame costs
/// about as much as taking a reference to it.
pub const SHARE_MIN: usize = 1024;

/// What one shared segment costs beyond its bytes: its slot in the queue (with the queue's
/// growth slack) and its share of the allocator's bookkeeping.
pub const SEG_OVERHEAD: usize = 96;

/// The tail is sealed into a segment once it holds this much, so that it never carries more
/// than this in spare capacity and a long backlog is a list of full chunks.
pub const CHUNK: usize = 16 * 1024;

/// Smallest tail allocation: most replies are a few dozen bytes.
const MIN_TAIL: usize = 256;

/// How far past its bound a queue may go for control frames (pong, ping, close), so that a
/// connection held at its bound by backpressure can still answer a ping and be closed
/// with a reason. 32 maximal control frames.
pub const CONTROL_ALLOWANCE: usize = 32 * (2 + 125);

/// Outcome of queueing bytes against the connection's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Ok,
    /// The bound would be exceeded; nothing was queued.
    OverLimit,
}

/// Outcome of a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written.
    Empty,
    /// The socket's send buffer filled up; wait for WRITABLE.
    Blocked,
}

/// How the tail will make room for more bytes: see [`Queue::plan`].
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Seal the unsent tail into a segment first, and start a new one.
    seal: bool,
    /// The tail's capacity after growing (its current one if it has room).
    cap: usize,
}

#[derive(Debug)]
struct Seg {
    data: Bytes,
    /// Memory charged for this segment while it is queued.
    cost: u32,
}

/// One connection's unsent output. `None` while there is none, so that an idle connection
/// carries one word for it.
#[derive(Debug, Default)]
pub struct Outbound(Option<Box<Queue>>);

/// What an empty queue answers for the read-only questions.
static EMPTY: Queue = Queue::new();

impl Outbound {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.get().len()
    }

    /// Memory held, the quantity the connection's bound applies to.
    pub fn cost(&self) -> usize {
        self.get().cost()
    }

    /// Whether a frame of `len` bytes can be queued with the queue's memory staying within
    /// `limit`.
    pub fn fits(&self, len: usize, limit: usize) -> bool {
        self.get().fits(len, limit)
    }

    /// Queues a broadcast frame if the queue's memory stays within `limit`. An empty queue
    /// always takes it, so a message that passed the size limit is never refused to a reader
    /// that is keeping up.
    pub fn push_shared(&mut self, frame: &Bytes, limit: usize) -> Queued {
        let r = self.queue().push_shared(frame, limit);
        self.drop_if_empty();
        r
    }

    /// Appends bytes of this connection's own (a reply, a control frame); see
    /// [`Queue::append`].
    pub fn append(&mut self, hint: usize, write: impl FnOnce(&mut Vec<u8>)) {
        self.queue().append(hint, write);
        self.drop_if_empty();
    }

    /// Writes as much as the socket takes; see [`Queue::flush`].
    pub fn flush<W: Write>(&mut self, w: &mut W) -> io::Result<Flushed> {
        let Some(q) = self.0.as_mut() else {
            return Ok(Flushed::Empty);
        };
        let r = q.flush(w);
        self.drop_if_empty();
        r
    }

    /// Moves up to `max` bytes from the front of the queue into `dst`; see
    /// [`Queue::take_front`].
    pub fn take_front(&mut self, dst: &mut Vec<u8>, max: usize) -> usize {
        let Some(q) = self.0.as_mut() else {
            return 0;
        };
        let n = q.take_front(dst, max);
        self.drop_if_empty();
        n
    }

    fn get(&self) -> &Queue {
        self.0.as_deref().unwrap_or(&EMPTY)
    }

    fn queue(&mut self) -> &mut Queue {
        self.0.get_or_insert_with(Box::default)
    }

    fn drop_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|q| q.is_empty()) {
            self.0 = None;
        }
    }
}

/// The queue itself, boxed by [`Outbound`] while it holds anything.
#[derive(Debug, Default)]
struct Queue {
    /// Frozen segments, oldest first.
    segs: VecDeque<Seg>,
    /// Bytes of `segs[0]` already written.
    head_written: u32,
    /// Owned bytes that follow every segment in `segs`.
    tail: Vec<u8>,
    /// Bytes at the start of `tail` already written.
    tail_written: u32,
    /// Unsent bytes in `segs` (less `head_written`) and `tail` (less `tail_written`).
    len: u32,
    /// Memory held: every segment's `cost` plus the tail's capacity.
    cost: u32,
}

/// The memory a frame of `len` bytes costs when queued.
pub fn cost_of(len: usize) -> usize {
    if len >= SHARE_MIN {
        len + SEG_OVERHEAD
    } else {
        len
    }
}

impl Queue {
    const fn new() -> Self {
        Queue {
            segs: VecDeque::new(),
            head_written: 0,
            tail: Vec::new(),
            tail_written: 0,
            len: 0,
            cost: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Unsent bytes.
    fn len(&self) -> usize {
        self.len as usize
    }

    /// Memory held, the quantity the connection's bound applies to.
    fn cost(&self) -> usize {
        self.cost as usize
    }

    /// Whether a frame of `len` bytes can be queued with the queue's memory staying within
    /// `limit`.
    fn fits(&self, len: usize, limit: usize) -> bool {
        if self.shares(len) {
            let seal = if self.tail_unsent() > 0 {
                SEG_OVERHEAD
            } else {
                0
            };
            self.cost() + seal + len + SEG_OVERHEAD <= limit
        } else {
            self.plan(len, limit).is_some()
        }
    }

    /// Queues a broadcast frame if the queue's memory stays within `limit`. An empty queue
    /// always takes it, so a message that passed the size limit is never refused to a reader
    /// that is keeping up.
    fn push_shared(&mut self, frame: &Bytes, limit: usize) -> Queued {
        let limit = if self.is_empty() { usize::MAX } else { limit };
        if self.shares(frame.len()) {
            if !self.fits(frame.len(), limit) {
                return Queued::OverLimit;
            }
            self.seal_tail();
            let cost = (frame.len() + SEG_OVERHEAD) as u32;
            self.segs.push_back(Seg {
                data: frame.clone(),
                cost,
            });
            self.cost += cost;
            self.len += frame.len() as u32;
            return Queued::Ok;
        }
        let Some(plan) = self.plan(frame.len(), limit) else {
            return Queued::OverLimit;
        };
        self.write_tail(plan, |t| t.extend_from_slice(frame));
        Queued::Ok
    }

    /// Appends bytes of this connection's own (a reply, a control frame) to the tail, with
    /// room for about `hint` bytes; `write` appends them. Not refused: the caller bounds
    /// replies by no longer reading from a connection whose queue is over its bound.
    fn append(&mut self, hint: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let plan = self
            .plan(hint, usize::MAX)
            .expect("an unlimited plan always exists");
        self.write_tail(plan, write);
    }

    /// Whether a broadcast frame of `len` bytes is queued by reference rather than copied:
    /// a large one always; a small one only into an empty queue, which the end of the turn
    /// most likely flushes whole (a refcount bump, no copy; for a plain connection that
    /// keeps up the worker stages the frame instead and no queue exists at all). Behind a
    /// backlog small frames are copied, so that a long queue costs its bytes and not a
    /// handle per message.
    fn shares(&self, len: usize) -> bool {
        len >= SHARE_MIN || self.is_empty()
    }

    fn tail_unsent(&self) -> usize {
        self.tail.len() - self.tail_written as usize
    }

    /// How the tail makes room for `hint` more bytes with the queue's memory at most
    /// `max_cost`, or `None` if it cannot.
    ///
    /// A tail that would pass a chunk is sealed first. A tail that lacks room grows
    /// geometrically up to a chunk (exactly, beyond it: one large reply), or straight to a
    /// chunk behind a backlog, but never past `max_cost`, so that the capacity charged
    /// stays close to the bytes held.
    fn plan(&self, hint: usize, max_cost: usize) -> Option<Plan> {
        let unsent = self.tail_unsent();
        let seal = unsent > 0 && self.tail.len() + hint > CHUNK;
        let (cap, len, base) = if seal {
            (0, 0, self.cost() + SEG_OVERHEAD)
        } else if unsent == 0 {
            // Nothing unsent: the tail is reused from its start.
            (self.tail.capacity(), 0, self.cost())
        } else {
            (self.tail.capacity(), self.tail.len(), self.cost())
        };
        if cap - len >= hint {
            return (base <= max_cost).then_some(Plan { seal, cap });
        }
        let others = base - cap;
        // A queue that already has a backlog (sealed segments) keeps growing: take a whole
        // chunk at once rather than doubling through the small sizes again.
        let step = if self.segs.is_empty() {
            (cap * 2).clamp(MIN_TAIL, CHUNK)
        } else {
            CHUNK
        };
        let mut want = (len + hint).max(step);
        if others + want > max_cost {
            want = max_cost.checked_sub(others)?;
            if want < len + hint {
                return None;
            }
        }
        Some(Plan { seal, cap: want })
    }

    fn write_tail(&mut self, plan: Plan, write: impl FnOnce(&mut Vec<u8>)) {
        if plan.seal {
            self.seal_tail();
        } else if self.tail_unsent() == 0 && !self.tail.is_empty() {
            self.tail.clear();
            self.tail_written = 0;
        }
        let (cap, len) = (self.tail.capacity(), self.tail.len());
        if plan.cap > cap {
            self.tail.reserve_exact(plan.cap - len);
        }
        write(&mut self.tail);
        self.len += (self.tail.len() - len) as u32;
        self.cost = self.cost - cap as u32 + self.tail.capacity() as u32;
    }

    /// Turns the unsent part of the tail into a segment, charged at the tail's capacity plus
    /// a handle.
    fn seal_tail(&mut self) {
        let unsent = self.tail.len() - self.tail_written as usize;
        if unsent == 0 {
            return;
        }
        let cap = self.tail.capacity();
        let skip = self.tail_written as usize;
        let data = Bytes::from(std::mem::take(&mut self.tail)).slice(skip..);
        self.tail_written = 0;
        // The tail's capacity moves from the tail's share of `cost` to the segment's.
        self.segs.push_back(Seg {
            data,
            cost: (cap + SEG_OVERHEAD) as u32,
        });
        self.cost += SEG_OVERHEAD as u32;
    }

    /// Writes as much as the socket takes, in as few syscalls as it can: one `writev` per
    /// round, and another round only if the previous one was written completely (which means
    /// the iovec cap, not the socket, stopped it).
    fn flush<W: Write>(&mut self, w: &mut W) -> io::Result<Flushed> {
        while self.len > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            let mut offered = 0;
            for (i, seg) in self.segs.iter().enumerate() {
                if n == MAX_IOVECS {
                    break;
                }
                let s = if i == 0 {
                    &seg.data[self.head_written as usize..]
                } else {
                    &seg.data[..]
                };
                slices[n] = IoSlice::new(s);
                offered += s.len();
                n += 1;
            }
            let tail = &self.tail[self.tail_written as usize..];
            if n < MAX_IOVECS && !tail.is_empty() {
                slices[n] = IoSlice::new(tail);
                offered += tail.len();
                n += 1;
            }
            let written = match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.consume(written);
            if written < offered {
                // A short write means the send buffer is full; asking again now would only
                // earn an EAGAIN (epoll(7) allows stopping at a short write on stream sockets).
                return Ok(if self.len == 0 {
                    Flushed::Empty
                } else {
                    Flushed::Blocked
                });
            }
        }
        self.release();
        Ok(Flushed::Empty)
    }

    /// Moves up to `max` bytes from the front of the queue into `dst` (for a transport that
    /// must transform them, as TLS encrypts them, before they can be written).
    fn take_front(&mut self, dst: &mut Vec<u8>, max: usize) -> usize {
        let start = dst.len();
        let mut left = max.min(self.len());
        for (i, seg) in self.segs.iter().enumerate() {
            if left == 0 {
                break;
            }
            let s = if i == 0 {
                &seg.data[self.head_written as usize..]
            } else {
                &seg.data[..]
            };
            let take = s.len().min(left);
            dst.extend_from_slice(&s[..take]);
            left -= take;
        }
        if left > 0 {
            let t = &self.tail[self.tail_written as usize..];
            dst.extend_from_slice(&t[..left.min(t.len())]);
        }
        let taken = dst.len() - start;
        self.consume(taken);
        if self.is_empty() {
            self.release();
        }
        taken
    }

    /// Accounts for `written` bytes taken by the kernel: O(1) per segment, never a shift.
    fn consume(&mut self, mut written: usize) {
        self.len -= written as u32;
        while written > 0 {
            match self.segs.front() {
                Some(seg) => {
                    let left = seg.data.len() - self.head_written as usize;
                    if written >= left {
                        written -= left;
                        self.cost -= seg.cost;
                        self.segs.pop_front();
                        self.head_written = 0;
                    } else {
                        self.head_written += written as u32;
                        return;
                    }
                }
                None => {
                    self.tail_written += written as u32;
                    return;
                }
            }
        }
    }

    /// Drops the heap memory of an empty queue, so an idle connection holds none.
    fn release(&mut self) {
        debug_assert_eq!(self.len, 0);
        if self.segs.capacity() > 0 {
            self.segs = VecDeque::new();
        }
        if self.tail.capacity() > 0 {
            self.tail = Vec::new();
        }
        self.head_written = 0;
        self.tail_written = 0;
        self.cost = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `budget` bytes per call and records the calls.
    struct Trickle {
        out: Vec<u8>,
        budget: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.budget - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.budget {
                    break;
                }
            }
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn reply(o: &mut Queue, bytes: &[u8]) {
        o.append(bytes.len(), |t| t.extend_from_slice(bytes));
    }

    fn writer(budget: usize) -> Trickle {
        Trickle {
            out: vec![],
            budget,
            calls: 0,
        }
    }

    /// The accounting invariant: `cost` is what the queue holds.
    fn check_cost(o: &Queue) {
        let segs: usize = o.segs.iter().map(|s| s.cost as usize).sum();
        assert_eq!(o.cost(), segs + o.tail.capacity());
        let unsent: usize = o.segs.iter().map(|s| s.data.len()).sum::<usize>()
            - o.head_written as usize
            + o.tail.len()
            - o.tail_written as usize;
        assert_eq!(o.len(), unsent);
    }

    #[test]
    fn an_empty_outbound_is_one_word_and_lets_its_box_go_when_drained() {
        assert_eq!(std::mem::size_of::<Outbound>(), 8);
        let mut o = Outbound::default();
        assert_eq!(o.push_shared(&Bytes::from_static(b"abc"), 0), Queued::Ok);
        reply_to(&mut o, b"def");
        assert_eq!((o.len(), o.is_empty()), (6, false));
        let mut w = writer(4);
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Blocked);
        assert_eq!(o.len(), 2);
        assert!(o.0.is_some());
        let mut dst = Vec::new();
        assert_eq!(o.take_front(&mut dst, 100), 2);
        assert_eq!(dst, b"ef");
        assert!(o.0.is_none(), "a drained queue keeps no box");
        assert_eq!((o.len(), o.cost()), (0, 0));
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Empty);
    }

    fn reply_to(o: &mut Outbound, bytes: &[u8]) {
        o.append(bytes.len(), |t| t.extend_from_slice(bytes));
    }

    #[test]
    fn keeps_order_between_replies_and_shared_frames_and_uses_one_writev() {
        let mut o = Queue::default();
        let big = Bytes::from(vec![b'S'; SHARE_MIN]);
        let small = Bytes::from_static(b"small");
        reply(&mut o, b"a");
        assert_eq!(o.push_shared(&big, 1 << 20), Queued::Ok);
        reply(&mut o, b"b");
        assert_eq!(o.push_shared(&small, 1 << 20), Queued::Ok);
        reply(&mut o, b"c");
        assert_eq!(o.push_shared(&big, 1 << 20), Queued::Ok);
        check_cost(&o);
        assert_eq!(o.segs.len(), 4, "a | big | bsmallc | big");
        let mut w = writer(1 << 20);
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Empty);
        let mut want = b"a".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"bsmallc");
        want.extend_from_slice(&big);
        assert_eq!(w.out, want);
        assert_eq!(w.calls, 1);
        assert!(o.is_empty());
        assert_eq!(o.cost(), 0);
        assert_eq!(
            o.segs.capacity() + o.tail.capacity(),
            0,
            "idle queue holds no memory"
        );
    }

    #[test]
    fn resumes_after_partial_writes() {
        let mut o = Queue::default();
        let shared = Bytes::from(vec![7u8; 2000]);
        for _ in 0..3 {
            o.push_shared(&shared, 1 << 20);
        }
        reply(&mut o, b"tail");
        let mut w = writer(1500);
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Blocked);
        assert_eq!(o.len(), 6004 - 1500);
        check_cost(&o);
        w.budget = 0;
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Blocked);
        w.budget = 4502;
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Blocked);
        assert_eq!(o.len(), 2, "two bytes of the tail left");
        check_cost(&o);
        reply(&mut o, b"more");
        w.budget = 100;
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Empty);
        let mut want = vec![7u8; 6000];
        want.extend_from_slice(b"tailmore");
        assert_eq!(w.out, want);
    }

    #[test]
    fn the_bound_counts_memory_and_never_refuses_into_an_empty_queue() {
        let mut o = Queue::default();
        let big = Bytes::from(vec![0u8; 5000]);
        assert_eq!(o.push_shared(&big, 100), Queued::Ok, "empty queue takes it");
        assert_eq!(o.cost(), 5000 + SEG_OVERHEAD);
        assert_eq!(
            o.push_shared(&Bytes::from_static(b"x"), 5000),
            Queued::OverLimit
        );
        let mut o = Queue::default();
        let frame = Bytes::from(vec![1u8; 100]);
        let mut taken = 0;
        while o.push_shared(&frame, 10_000) == Queued::Ok {
            taken += 1;
            check_cost(&o);
        }
        assert!(o.cost() <= 10_000, "{}", o.cost());
        // The first went in by reference (100 + 96), the rest were copied into a tail that
        // grew to exactly what the bound left (9,804 bytes), no further.
        assert_eq!(o.segs.len(), 1);
        assert_eq!(taken, 1 + 98);
        assert_eq!(o.cost(), 10_000, "100 + 96 + a 9,804-byte tail");
        // Replies are never refused; the caller stops reading instead.
        reply(&mut o, &[0; 100]);
        assert_eq!(o.len(), taken * 100 + 100);
    }

    #[test]
    fn a_long_backlog_costs_close_to_its_bytes_and_drains_in_linear_time() {
        let mut o = Queue::default();
        for i in 0..100_000u32 {
            reply(&mut o, &i.to_le_bytes()[..3]);
        }
        check_cost(&o);
        assert_eq!(o.len(), 300_000);
        assert!(
            o.cost() < 300_000 + 300_000 / 10,
            "100k small replies cost {} bytes",
            o.cost()
        );
        // Drain it through a socket that takes 1 byte short of a chunk at a time: every
        // call must be O(1) in the backlog, which this loop would make quadratic otherwise.
        let mut w = writer(0);
        let mut calls = 0;
        while !o.is_empty() {
            w.budget = 4093;
            let _ = o.flush(&mut w).unwrap();
            calls += 1;
            if calls % 13 == 0 {
                check_cost(&o);
            }
        }
        assert_eq!(w.out.len(), 300_000);
        assert_eq!(&w.out[..6], &[0, 0, 0, 1, 0, 0]);
        assert_eq!(o.cost(), 0);
    }

    #[test]
    fn draining_a_backlog_costs_time_linear_in_its_size() {
        // 256 MB of replies through a socket that takes 8 KiB per call: 32,768 calls. If a
        // call cost time in proportion to what is left (shifting the rest forward), this would
        // move 4 TB of memory (minutes); at O(bytes written) it is a 256 MB copy (well under
        // a second).
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut o = Queue::default();
            let reply = vec![5u8; 60_000];
            for _ in 0..(256 << 20) / reply.len() {
                o.append(reply.len(), |t| t.extend_from_slice(&reply));
            }
            let total = o.len();
            let mut w = writer(0);
            let mut sink = 0;
            while !o.is_empty() {
                w.budget = 8 * 1024;
                w.out.clear();
                let _ = o.flush(&mut w).unwrap();
                sink += w.out.len();
            }
            done_tx.send((total, sink)).unwrap();
        });
        let (total, written) = done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a 256 MB backlog did not drain within 30 s");
        assert_eq!(total, written);
    }

    #[test]
    fn take_front_moves_bytes_in_order_across_segments_and_the_tail() {
        let mut o = Queue::default();
        let big = Bytes::from(vec![b'B'; SHARE_MIN]);
        reply(&mut o, b"ab");
        o.push_shared(&big, 1 << 20);
        reply(&mut o, b"cd");
        let mut dst = Vec::new();
        assert_eq!(o.take_front(&mut dst, 3), 3);
        assert_eq!(dst, b"abB");
        check_cost(&o);
        dst.clear();
        assert_eq!(o.take_front(&mut dst, 1 << 20), SHARE_MIN - 1 + 2);
        assert_eq!(&dst[dst.len() - 3..], b"Bcd");
        assert!(o.is_empty());
        assert_eq!(o.cost(), 0);
    }

    #[test]
    fn more_segments_than_iovecs_take_extra_rounds_only_when_needed() {
        let mut o = Queue::default();
        let shared = Bytes::from(vec![b'x'; SHARE_MIN]);
        for _ in 0..(MAX_IOVECS * 2 + 5) {
            o.push_shared(&shared, 1 << 30);
        }
        let mut w = writer(1 << 30);
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Empty);
        assert_eq!(w.out.len(), (MAX_IOVECS * 2 + 5) * SHARE_MIN);
        assert_eq!(w.calls, 3);
    }

    #[test]
    fn a_large_reply_gets_exact_capacity_and_a_sealed_tail_keeps_its_offset() {
        let mut o = Queue::default();
        reply(&mut o, &[1; 10]);
        let mut w = writer(4);
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Blocked);
        reply(&mut o, &vec![2; 60_000]);
        check_cost(&o);
        assert!(o.cost() < 60_000 + 2 * MIN_TAIL, "{}", o.cost());
        w.budget = 1 << 20;
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Empty);
        assert_eq!(w.out.len(), 60_010);
        assert_eq!(&w.out[..10], &[1; 10]);
        assert_eq!(w.out[10], 2);
    }
}
