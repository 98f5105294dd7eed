//! A connection's I/O on its worker: read through the transport and drain the socket, feed
//! the state machine, hold input back while output is over its bound, and flush output once
//! per loop turn.

use mio::{Interest, Token};
use thin_vec::ThinVec;

use super::event_loop::{Hangup, CORK_KEEP};
use super::Worker;
use crate::conn::{Event, Input, Phase, TransportError, NEVER};
use crate::outbound::Flushed;
use crate::stats::{bump, gauge};

/// Appends `bytes` to `buf` with one copy. (`ThinVec::extend_from_slice` pushes element by
/// element, writing the length to the heap each time: far slower for a large frame.)
fn append(buf: &mut ThinVec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    buf.reserve(bytes.len());
    let len = buf.len();
    // SAFETY: `reserve` made room for `bytes.len()` more bytes after the first `len`, so
    // the copy stays inside the allocation and the new length covers only bytes written
    // here or before; `bytes` cannot overlap `buf`, which is borrowed mutably.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.as_mut_ptr().add(len), bytes.len());
        buf.set_len(len + bytes.len());
    }
}

/// A buffer of exactly `bytes`' length holding them.
fn copy_of(bytes: &[u8]) -> ThinVec<u8> {
    let mut buf = ThinVec::with_capacity(bytes.len());
    append(&mut buf, bytes);
    buf
}

/// Reads one connection may do in one loop turn before others get their turn.
const MAX_READS_PER_TURN: usize = 16;

/// Frames one connection may have handled in one loop turn before others get their turn;
/// what it sent beyond them waits in its `inbuf` (whole frames: `input_ready`) and in its
/// socket for a later turn. Bytes alone do not bound the work: 16 reads of 6-byte frames
/// are 175,000 frames. At 1024 a connection's share of a turn stays far below a millisecond
/// for small frames (2026-12-04, the 2-core dev VM: about 25 µs for 1024 empty
/// continuations, about 150 µs for 1024 small JSON echo requests and their replies), and
/// frames of 1 KiB and more reach the read cap first, so a sender of ordinary messages never
/// meets this bound. The input it leaves waiting is at most the rest of one read (64 KiB)
/// besides a partial frame, as no more is read that turn.
const MAX_FRAMES_PER_TURN: usize = 1024;

/// A partial frame kept in a buffer more than this much larger than itself is moved to one
/// of its own size, so a connection never keeps the capacity of a large frame it finished.
const SHRINK_SLACK: usize = 4096;

impl Worker {
    /// Reads until the socket is drained (`WouldBlock`, or a short read, which on a stream
    /// socket means the same thing per epoll(7)), handling every complete frame on the way.
    /// After a hang-up or an error a short read proves nothing (the data and the FIN or RST
    /// arrive in one event, and edge-triggered epoll reports that once), so then it reads
    /// on to EOF or the error.
    pub(super) fn on_readable(&mut self, key: usize, hup: Hangup) {
        // Replies to a plain connection are corked while its input is handled.
        let plain = self.conns.get(key).is_some_and(|c| !c.transport.is_tls());
        if plain {
            self.corked = Some(key);
        }
        self.read_conn(key, hup);
        if plain {
            self.uncork(key);
        }
    }

    /// Writes what the cork gathered for `key` with one `write`; what the socket does not
    /// take goes into the connection's own queue, flushed (with WRITABLE interest) at the end
    /// of the turn.
    fn uncork(&mut self, key: usize) {
        self.corked = None;
        if self.cork.is_empty() {
            return;
        }
        let mut cork = std::mem::take(&mut self.cork);
        if let Some(conn) = self.conns.get_mut(key) {
            let res = if conn.out.is_empty() {
                conn.transport.write_plain(&cork).unwrap_or(Ok(0))
            } else {
                Ok(0)
            };
            match res {
                Ok(written) => {
                    bump(&self.stats.bytes_out, written as u64);
                    let rest = &cork[written..];
                    if !rest.is_empty() {
                        self.queue_raw(key, rest);
                    }
                    let conn = &self.conns[key];
                    if conn.is_held() || conn.machine.phase() == Phase::Closing {
                        // Their flush lets held input go, or ends the write side.
                        self.mark_dirty(key);
                    }
                }
                Err(e) => self.on_transport_error(key, e.into()),
            }
        }
        cork.clear();
        cork.shrink_to(CORK_KEEP);
        self.cork = cork;
    }

    /// Bytes waiting to go out to `key`: its queue's memory, and the cork's while it gathers
    /// for it.
    pub(super) fn out_cost(&self, key: usize) -> usize {
        let cork = if self.corked == Some(key) {
            self.cork.len()
        } else {
            0
        };
        self.conns[key].out.cost() + cork
    }

    fn read_conn(&mut self, key: usize, hup: Hangup) {
        let quiesced = self.quiesced();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.is_held() || (quiesced && conn.machine.is_open()) {
            if hup == Hangup::Error {
                // A reset peer will never read what is queued for it.
                bump(&self.stats.hangups, 1);
                return self.drop_conn(key, "reset while input was held");
            }
            // Read again when the output drains (or the drain begins closing).
            return;
        }
        let mut frames = MAX_FRAMES_PER_TURN;
        if conn.input_ready {
            if hup == Hangup::No && self.retry.contains(&key) {
                // Queued for a retry pass still to come: it reads then, once per turn.
                return;
            }
            self.conns[key].input_ready = false;
            if !self.resume_held_input(key, &mut frames) {
                return;
            }
            if frames == 0 {
                return self.out_of_frames(key);
            }
        }
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let cost0 = conn.transport.cost();
            let res = conn.transport.read(&mut self.rbuf, &mut self.tls_in);
            let cost1 = conn.transport.cost();
            gauge(&self.stats.tls_memory, cost1 as i64 - cost0 as i64);
            if conn.transport.has_pending() {
                // TLS handshake records the socket did not take at once.
                self.mark_dirty(key);
            }
            let (len, drained) = match res {
                Ok(Input::Data { len, drained }) => (len, drained),
                Ok(Input::WouldBlock) => return,
                Ok(Input::Eof) => return self.on_eof(key),
                Err(e) => return self.on_transport_error(key, e),
            };
            bump(&self.stats.bytes_in, len as u64);
            let mut rbuf = std::mem::take(&mut self.rbuf);
            self.take_input(key, &mut rbuf[..len], &mut frames);
            self.rbuf = rbuf;
            match self.conns.get(key) {
                None => return,
                Some(c) if c.is_held() => return,
                Some(_) => {}
            }
            if frames == 0 {
                return self.out_of_frames(key);
            }
            if drained && hup == Hangup::No {
                return;
            }
        }
        // Still more to read: come back next turn so that other connections are served too.
        self.read_next_turn(key);
    }

    /// Comes back to `key` in a later retry pass (next turn's, or this one's if it has not
    /// run yet) instead of reading on now. `input_ready` marks it queued, with `inbuf` to be
    /// handled first. It is queued once however often it is asked, and a readiness event
    /// while it is queued adds nothing (see `read_conn`): a connection that keeps sending
    /// gets one share of each turn, not one more share every turn an event comes.
    fn read_next_turn(&mut self, key: usize) {
        self.conns[key].input_ready = true;
        if !self.retry.contains(&key) {
            self.retry.push(key);
        }
    }

    /// The connection had its `MAX_FRAMES_PER_TURN`: the rest of its input waits for a later
    /// turn. The wait is the server's doing, so a message it is in the middle of gets its
    /// time back, as after a hold.
    fn out_of_frames(&mut self, key: usize) {
        let now = self.now();
        let partial_since = &mut self.conns[key].machine.partial_since;
        if *partial_since != NEVER {
            *partial_since = now;
        }
        self.read_next_turn(key);
    }

    /// Handles input that was held back, or left for this turn, and kept in `inbuf`, within
    /// the turn's `frames`. Returns false if the connection is gone or held again.
    fn resume_held_input(&mut self, key: usize, frames: &mut usize) -> bool {
        if self.conns[key].inbuf.is_empty() {
            return true;
        }
        let mut buf = self.take_inbuf(key);
        let used = self.process(key, &mut buf, frames);
        self.put_back(key, buf, used);
        // The message clock follows what is left: perhaps nothing, perhaps a partial frame.
        self.note_partial(key, self.now());
        self.conns.get(key).is_some_and(|c| !c.is_held())
    }

    /// Handles `data` just read. A partial frame already buffered is completed first, copying
    /// only the bytes it still lacks; the rest is decoded where it lies, in the shared read
    /// buffer, and only an incomplete tail (or, when input is held, the unhandled rest) is
    /// copied into the connection's own buffer. Handles at most `frames` frames, counting
    /// them off.
    fn take_input(&mut self, key: usize, data: &mut [u8], frames: &mut usize) {
        let now = self.now();
        let conn = &self.conns[key];
        let mut rest = 0;
        if !conn.inbuf.is_empty() {
            // `inbuf` holds the partial frame a `NeedMore` left (whole frames held back are
            // handled before any read).
            let missing = conn.machine.need(&conn.inbuf, &self.cfg);
            // Unknown length (a split header or request head): take it all.
            rest = if missing == 0 {
                data.len()
            } else {
                missing.min(data.len())
            };
            let mut buf = self.take_inbuf(key);
            append(&mut buf, &data[..rest]);
            let used = self.process(key, &mut buf, frames);
            if !self.put_back(key, buf, used) {
                return;
            }
            if rest == data.len() {
                return self.note_partial(key, now);
            }
            if !self.conns[key].inbuf.is_empty() {
                // Held back or out of frames mid-read: keep the rest of the read, unhandled.
                let mut buf = self.take_inbuf(key);
                append(&mut buf, &data[rest..]);
                self.put_inbuf(key, buf);
                return;
            }
        }
        let used = self.process(key, &mut data[rest..], frames);
        let left = &data[rest + used..];
        if !left.is_empty() && self.conns.contains(key) {
            self.put_inbuf(key, copy_of(left));
        }
        self.note_partial(key, now);
    }

    /// Takes the connection's input buffer out (to be handled while the connection is
    /// borrowed elsewhere), and its memory off the gauge.
    fn take_inbuf(&mut self, key: usize) -> ThinVec<u8> {
        let buf = std::mem::take(&mut self.conns[key].inbuf);
        gauge(&self.stats.inbound_memory, -(buf.capacity() as i64));
        buf
    }

    fn put_inbuf(&mut self, key: usize, buf: ThinVec<u8>) {
        gauge(&self.stats.inbound_memory, buf.capacity() as i64);
        self.conns[key].inbuf = buf;
    }

    /// Puts back what `process` left of `buf`, in a buffer no larger than it needs, or frees
    /// it. Returns false if the connection is gone.
    fn put_back(&mut self, key: usize, mut buf: ThinVec<u8>, used: usize) -> bool {
        let Some(conn) = self.conns.get(key) else {
            return false;
        };
        if used == buf.len() || conn.machine.phase() == Phase::Closing {
            return true;
        }
        if used > 0 {
            buf.drain(..used);
        }
        if buf.capacity() > buf.len() * 2 + SHRINK_SLACK {
            buf = copy_of(&buf);
        }
        self.put_inbuf(key, buf);
        true
    }

    /// Starts or stops the message clock: a connection in the middle of a frame or of a
    /// fragmented message must finish it within the message timeout.
    fn note_partial(&mut self, key: usize, now: u32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.machine.is_open() {
            return;
        }
        let mid_message = !conn.inbuf.is_empty() || conn.machine.in_message();
        if !mid_message {
            conn.machine.partial_since = NEVER;
        } else if conn.machine.partial_since == NEVER {
            conn.machine.partial_since = now;
            let at = now + self.cfg.message_timeout.as_secs() as u32;
            self.arm(key, at);
        }
    }

    /// The transport failed: the connection is dropped, counted by why.
    fn on_transport_error(&mut self, key: usize, e: TransportError) {
        if let TransportError::Panicked(_) = e {
            log::error!("worker {}: conn {key} dropped: {e}", self.index);
        } else {
            log::debug!("worker {}: conn {key}: {e}", self.index);
        }
        let counter = match &e {
            TransportError::PlainHttp => &self.stats.tls_plain_http,
            TransportError::Tls(_) | TransportError::Panicked(_) => &self.stats.tls_errors,
            TransportError::Io(_) => &self.stats.hangups,
        };
        bump(counter, 1);
        self.drop_conn(key, "transport error");
    }

    fn on_eof(&mut self, key: usize) {
        let why = match self.conns[key].machine.phase() {
            Phase::Closing => "closed",
            Phase::Handshake => "EOF during handshake",
            Phase::Open(_) => "EOF without a close frame",
        };
        if why != "closed" {
            bump(&self.stats.hangups, 1);
            log::debug!("worker {}: conn {key}: {why}", self.index);
        }
        self.drop_conn(key, why);
    }

    /// Runs the state machine over the complete requests and frames at the start of `buf`
    /// and carries out what each calls for. Returns how many bytes were used. Stops early,
    /// leaving the rest unused, when the connection's output goes over its bound (its input
    /// is then held back until the output drains), and once it has handled `frames` frames
    /// (counted off; the caller leaves the rest for a later turn).
    fn process(&mut self, key: usize, buf: &mut [u8], frames: &mut usize) -> usize {
        let mut pos = 0;
        loop {
            if *frames == 0 {
                return pos;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return buf.len();
            };
            let held0 = conn.machine.partial_cost();
            let (used, event) = conn.machine.next(&mut buf[pos..], &self.cfg);
            let held1 = conn.machine.partial_cost();
            gauge(&self.stats.inbound_memory, held1 as i64 - held0 as i64);
            if matches!(event, Event::NeedMore) {
                return pos;
            }
            *frames -= 1;
            pos += used;
            self.published = false;
            self.on_event(key, event);
            if self.over_bound(key) {
                self.hold(key);
                return pos;
            }
            if self.published && self.bus.cross_full() && self.conns.contains(key) {
                bump(&self.stats.publishers_held, 1);
                self.hold(key);
                self.conns[key].publish_held = true;
                self.publishers_held.push(key);
                return pos;
            }
            if !self.conns.contains(key) {
                return buf.len();
            }
            if pos == buf.len() {
                return pos;
            }
        }
    }

    /// The connection's replies have taken its output over its bound (and it is not closing).
    fn over_bound(&self, key: usize) -> bool {
        self.conns.get(key).is_some_and(|c| {
            c.machine.is_open() && self.out_cost(key) >= self.cfg.max_outbound_bytes
        })
    }

    /// Stops reading from a connection whose output is over its bound: TCP's window then
    /// stops the client, and nothing more is buffered for it. `flush` lets go below half the
    /// bound; the timer closes it if that takes longer than the backpressure timeout.
    fn hold(&mut self, key: usize) {
        let now = self.now();
        let conn = &mut self.conns[key];
        if conn.is_held() {
            return;
        }
        conn.held_since = now;
        bump(&self.stats.input_held, 1);
        gauge(&self.stats.held, 1);
        log::debug!(
            "worker {}: conn {key} output at {} bytes: input held back",
            self.index,
            conn.out.cost()
        );
        let at = now + self.cfg.backpressure_timeout.as_secs() as u32;
        self.arm(key, at);
    }

    /// Lets held publishers go once the other workers' queues are down to half their bound
    /// (one whose own output is over its bound stays held, now as any other; its flush lets
    /// it go).
    pub(super) fn release_publishers(&mut self) {
        if self.publishers_held.is_empty()
            || self.bus.cross_queued() > crate::broadcast::CROSS_BYTES / 2
        {
            return;
        }
        for key in std::mem::take(&mut self.publishers_held) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if !std::mem::take(&mut conn.publish_held) || !conn.is_held() {
                continue; // a connection that took the key since, or one closed meanwhile
            }
            if self.out_cost(key) <= self.cfg.max_outbound_bytes / 2 {
                self.release_hold(key);
            }
        }
    }

    /// Lets a held connection's input flow again; what was held is handled next turn.
    pub(super) fn release_hold(&mut self, key: usize) {
        let now = self.now();
        let conn = &mut self.conns[key];
        if !conn.is_held() {
            return;
        }
        conn.held_since = NEVER;
        conn.publish_held = false;
        conn.input_ready = true;
        // The client was not silent or slow while we were not reading: restart its clocks.
        conn.last_rx = now;
        if conn.machine.partial_since != NEVER {
            conn.machine.partial_since = now;
        }
        gauge(&self.stats.held, -1);
        self.retry.push(key);
    }

    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Flushes every connection with output, once each.
    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                self.flush(key);
            }
        }
        // Flushing never marks a connection dirty, so nothing was added meanwhile.
        debug_assert!(self.dirty.is_empty());
        self.dirty = dirty;
    }

    /// Writes what is staged for the connection and what it has queued (the queue only if
    /// the socket took everything staged), keeps WRITABLE interest while some is left,
    /// lets held input go once the output drains to half its bound, and ends the write side
    /// of a closing connection once everything is out.
    pub(super) fn flush(&mut self, key: usize) {
        let full = match self.write_staged(key) {
            Ok(full) => full,
            Err(e) => return self.on_transport_error(key, e.into()),
        };
        let conn = &mut self.conns[key];
        let (len0, cost0, tls0) = (conn.out.len(), conn.out.cost(), conn.transport.cost());
        let res = if full {
            // What the socket did not take of the staged frames is queued; it will not take
            // more now.
            Ok(Flushed::Blocked)
        } else {
            conn.transport.flush(&mut conn.out, &mut self.tls_out)
        };
        let written = len0 - conn.out.len();
        bump(&self.stats.bytes_out, written as u64);
        gauge(&self.stats.queued_bytes, -(written as i64));
        gauge(
            &self.stats.outbound_memory,
            conn.out.cost() as i64 - cost0 as i64,
        );
        gauge(
            &self.stats.tls_memory,
            conn.transport.cost() as i64 - tls0 as i64,
        );
        let want_write = match res {
            Ok(Flushed::Empty) => false,
            Ok(Flushed::Blocked) => true,
            Err(e) => return self.on_transport_error(key, e),
        };
        if want_write != conn.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(conn.transport.socket(), Token(key), interest)
            {
                log::warn!("worker {}: conn {key} reregister failed: {e}", self.index);
                return self.drop_conn(key, "reregister failed");
            }
            conn.write_interest = want_write;
        }
        if conn.is_held()
            && !conn.publish_held
            && conn.out.cost() + conn.transport.cost() <= self.cfg.max_outbound_bytes / 2
        {
            self.release_hold(key);
            return;
        }
        let conn = &mut self.conns[key];
        if conn.machine.phase() == Phase::Closing && !conn.shut && !want_write {
            // Everything, the close frame included, is out: end the write side and wait for
            // the peer's EOF.
            conn.transport.shutdown_write();
            conn.shut = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_copy_of_keep_the_bytes_in_order() {
        let mut buf = ThinVec::new();
        append(&mut buf, b"");
        assert_eq!(buf.capacity(), 0, "nothing to append allocates nothing");
        append(&mut buf, b"abc");
        append(&mut buf, &[7; 100_000]);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(buf.len(), 100_003);
        assert!(buf[3..].iter().all(|&b| b == 7));
        let copy = copy_of(&buf[1..4]);
        assert_eq!(copy.as_slice(), b"bc\x07");
        assert_eq!(copy.capacity(), 3);
        assert_eq!(copy_of(b"").capacity(), 0);
    }
}
