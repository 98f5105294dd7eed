//! One connection's unsent output: shared broadcast frames and its own replies, in order.
//! Runs on the connection's worker thread.
//!
//! A broadcast frame is queued by reference (`Bytes`, a refcount bump), never copied per
//! subscriber. Replies that belong to this connection alone are appended to an owned tail,
//! which becomes a segment of its own when a shared frame has to follow it. All of it goes
//! out in one `writev` per flush. An empty `Outbound` owns no heap memory.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// At most this many segments go into one `writev` (Linux's IOV_MAX is 1024).
pub const MAX_IOVECS: usize = 64;

/// Outcome of queueing bytes against the connection's outbound limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Ok,
    /// The limit would be exceeded; nothing was queued.
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

#[derive(Debug, Default)]
pub struct Outbound {
    /// Frozen segments, oldest first.
    segs: VecDeque<Bytes>,
    /// Bytes of `segs[0]` already written.
    head_written: usize,
    /// Owned bytes that follow every segment in `segs`.
    tail: Vec<u8>,
    /// Unsent bytes in `segs` (less `head_written`) and `tail`.
    len: usize,
}

impl Outbound {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Queues a shared frame if it fits under `limit` unsent bytes.
    pub fn push_shared(&mut self, frame: &Bytes, limit: usize) -> Queued {
        if self.len + frame.len() > limit {
            return Queued::OverLimit;
        }
        self.seal_tail();
        self.segs.push_back(frame.clone());
        self.len += frame.len();
        Queued::Ok
    }

    /// Gives access to the owned tail for a reply to be appended; `commit` accounts for it.
    /// Replies are not subject to the limit: they are answers to what this client itself
    /// sent, bounded by what it can send, and dropping them would break the protocol.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.tail
    }

    /// Records that the tail grew from `before` bytes to its current length.
    pub fn commit(&mut self, before: usize) {
        self.len += self.tail.len() - before;
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.segs
                .push_back(Bytes::from(std::mem::take(&mut self.tail)));
        }
    }

    /// Writes as much as the socket takes, in as few syscalls as it can: one `writev` per
    /// round, and another round only if the previous one was written completely (which means
    /// the iovec cap, not the socket, stopped it).
    pub fn flush<W: Write>(&mut self, w: &mut W) -> io::Result<Flushed> {
        while self.len > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            let mut offered = 0;
            for (i, seg) in self.segs.iter().enumerate() {
                if n == MAX_IOVECS {
                    break;
                }
                let s = if i == 0 {
                    &seg[self.head_written..]
                } else {
                    &seg[..]
                };
                slices[n] = IoSlice::new(s);
                offered += s.len();
                n += 1;
            }
            if n < MAX_IOVECS && !self.tail.is_empty() {
                slices[n] = IoSlice::new(&self.tail);
                offered += self.tail.len();
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

    fn consume(&mut self, mut written: usize) {
        self.len -= written;
        while written > 0 {
            match self.segs.front() {
                Some(seg) => {
                    let left = seg.len() - self.head_written;
                    if written >= left {
                        written -= left;
                        self.segs.pop_front();
                        self.head_written = 0;
                    } else {
                        self.head_written += written;
                        return;
                    }
                }
                None => {
                    self.tail.drain(..written);
                    return;
                }
            }
        }
    }

    /// Drops the heap memory of an empty queue, so an idle connection holds none.
    fn release(&mut self) {
        if self.segs.capacity() > 0 {
            self.segs = VecDeque::new();
        }
        if self.tail.capacity() > 0 {
            self.tail = Vec::new();
        }
        self.head_written = 0;
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

    fn reply(o: &mut Outbound, bytes: &[u8]) {
        let before = o.tail().len();
        o.tail().extend_from_slice(bytes);
        o.commit(before);
    }

    #[test]
    fn keeps_order_between_replies_and_shared_frames_and_uses_one_writev() {
        let mut o = Outbound::default();
        let shared = Bytes::from_static(b"SHARED");
        reply(&mut o, b"a");
        assert_eq!(o.push_shared(&shared, 1 << 20), Queued::Ok);
        reply(&mut o, b"b");
        reply(&mut o, b"c");
        assert_eq!(o.push_shared(&shared, 1 << 20), Queued::Ok);
        let mut w = Trickle {
            out: vec![],
            budget: 1000,
            calls: 0,
        };
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Empty);
        assert_eq!(w.out, b"aSHAREDbcSHARED");
        assert_eq!(w.calls, 1);
        assert!(o.is_empty());
        assert_eq!(
            o.segs.capacity() + o.tail.capacity(),
            0,
            "idle queue holds no memory"
        );
    }

    #[test]
    fn resumes_after_partial_writes() {
        let mut o = Outbound::default();
        let shared = Bytes::from_static(b"0123456789");
        for _ in 0..3 {
            o.push_shared(&shared, 1 << 20);
        }
        reply(&mut o, b"tail");
        let mut w = Trickle {
            out: vec![],
            budget: 7,
            calls: 0,
        };
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Blocked);
        assert_eq!(o.len(), 27);
        w.budget = 0;
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Blocked);
        w.budget = 15;
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Blocked);
        w.budget = 100;
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Empty);
        assert_eq!(w.out, b"012345678901234567890123456789tail");
    }

    #[test]
    fn limit_refuses_shared_frames_but_not_replies() {
        let mut o = Outbound::default();
        let shared = Bytes::from_static(b"0123456789");
        assert_eq!(o.push_shared(&shared, 15), Queued::Ok);
        assert_eq!(o.push_shared(&shared, 15), Queued::OverLimit);
        reply(&mut o, &[0; 100]);
        assert_eq!(o.len(), 110);
    }

    #[test]
    fn more_segments_than_iovecs_take_extra_rounds_only_when_needed() {
        let mut o = Outbound::default();
        let shared = Bytes::from_static(b"x");
        for _ in 0..(MAX_IOVECS * 2 + 5) {
            o.push_shared(&shared, 1 << 20);
        }
        let mut w = Trickle {
            out: vec![],
            budget: 10_000,
            calls: 0,
        };
        assert_eq!(o.flush(&mut w).unwrap(), Flushed::Empty);
        assert_eq!(w.out.len(), MAX_IOVECS * 2 + 5);
        assert_eq!(w.calls, 3);
    }
}
