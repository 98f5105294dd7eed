//! Socket I/O of one connection on its worker: drain reads, decode frames, queue output,
//! hold input back while output is over its bound, flush, and the closing handshake.

use std::io::{self, Read};

use mio::Interest;
use mio::Token;

use super::{Hangup, Worker, CLOSE_TIMEOUT, MAX_READS_PER_TURN, READ_BUF};
use crate::codec::{self, close_code, Decoded, Kind};
use crate::conn::{Phase, NEVER};
use crate::handshake::{self, Endpoint, Outcome};
use crate::message::{self, MessageKind, Step};
use crate::outbound::{Flushed, CONTROL_ALLOWANCE};
use crate::stats::{self, bump, gauge};

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
        let quiesced = self.quiesced();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.is_held() || (quiesced && matches!(conn.phase, Phase::Open(_))) {
            if hup == Hangup::Error {
                // A reset peer will never read what is queued for it.
                bump(&self.stats.hangups, 1);
                return self.drop_conn(key, "reset while input was held");
            }
            // Read again when the output drains (or the drain begins closing).
            return;
        }
        if conn.input_ready {
            conn.input_ready = false;
            if !self.resume_held_input(key) {
                return;
            }
        }
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let n = match conn.sock.read(&mut self.rbuf) {
                Ok(0) => return self.on_eof(key),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("worker {}: conn {key} read error: {e}", self.index);
                    bump(&self.stats.hangups, 1);
                    return self.drop_conn(key, "read error");
                }
            };
            bump(&self.stats.bytes_in, n as u64);
            let mut rbuf = std::mem::take(&mut self.rbuf);
            self.take_input(key, &mut rbuf[..n]);
            self.rbuf = rbuf;
            match self.conns.get(key) {
                None => return,
                Some(c) if c.is_held() => return,
                Some(_) => {}
            }
            if n < READ_BUF && hup == Hangup::No {
                return;
            }
        }
        // Still more to read: come back next turn so that other connections are served too.
        self.retry.push(key);
    }

    /// Handles input that was held back and kept in `inbuf`. Returns false if the connection
    /// is gone or held again.
    fn resume_held_input(&mut self, key: usize) -> bool {
        if self.conns[key].inbuf.is_empty() {
            return true;
        }
        let mut buf = self.take_inbuf(key);
        let (used, _) = self.process(key, &mut buf);
        self.put_back(key, buf, used);
        self.conns.get(key).is_some_and(|c| !c.is_held())
    }

    /// Handles `data` just read. A partial frame already buffered is completed first, copying
    /// only the bytes it still lacks; the rest is decoded where it lies, in the shared read
    /// buffer, and only an incomplete tail (or, when input is held, the unhandled rest) is
    /// copied into the connection's own buffer.
    fn take_input(&mut self, key: usize, data: &mut [u8]) {
        let now = self.now();
        let conn = &self.conns[key];
        let mut rest = 0;
        if !conn.inbuf.is_empty() {
            let missing = match conn.phase {
                Phase::Open(_) => codec::frame_len(&conn.inbuf)
                    .map_or(0, |total| total.saturating_sub(conn.inbuf.len())),
                _ => 0,
            };
            // Unknown length (a split header or request head): take it all.
            rest = if missing == 0 {
                data.len()
            } else {
                missing.min(data.len())
            };
            let mut buf = self.take_inbuf(key);
            buf.extend_from_slice(&data[..rest]);
            let (used, _) = self.process(key, &mut buf);
            if !self.put_back(key, buf, used) {
                return;
            }
            if rest == data.len() {
                return self.note_partial(key, now);
            }
            if !self.conns[key].inbuf.is_empty() {
                // Held back mid-read: keep the rest of the read, unhandled.
                let mut buf = self.take_inbuf(key);
                buf.extend_from_slice(&data[rest..]);
                self.put_inbuf(key, buf);
                return;
            }
        }
        let (used, _) = self.process(key, &mut data[rest..]);
        let left = &data[rest + used..];
        if !left.is_empty() && self.conns.contains(key) {
            self.put_inbuf(key, left.to_vec());
        }
        self.note_partial(key, now);
    }

    /// Takes the connection's input buffer out (to be handled while the connection is
    /// borrowed elsewhere), and its memory off the gauge.
    fn take_inbuf(&mut self, key: usize) -> Vec<u8> {
        let buf = std::mem::take(&mut self.conns[key].inbuf);
        gauge(&self.stats.inbound_memory, -(buf.capacity() as i64));
        buf
    }

    fn put_inbuf(&mut self, key: usize, buf: Vec<u8>) {
        gauge(&self.stats.inbound_memory, buf.capacity() as i64);
        self.conns[key].inbuf = buf;
    }

    /// Puts back what `process` left of `buf`, in a buffer no larger than it needs, or frees
    /// it. Returns false if the connection is gone.
    fn put_back(&mut self, key: usize, mut buf: Vec<u8>, used: usize) -> bool {
        let Some(conn) = self.conns.get(key) else {
            return false;
        };
        if used == buf.len() || matches!(conn.phase, Phase::Closing { .. }) {
            return true;
        }
        if used > 0 {
            buf.drain(..used);
        }
        if buf.capacity() > buf.len() * 2 + SHRINK_SLACK {
            buf = buf.as_slice().to_vec();
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
        if !matches!(conn.phase, Phase::Open(_)) {
            return;
        }
        let mid_message = !conn.inbuf.is_empty() || conn.partial.is_some();
        if !mid_message {
            conn.partial_since = NEVER;
        } else if conn.partial_since == NEVER {
            conn.partial_since = now;
            let at = now + self.cfg.message_timeout.as_secs() as u32;
            self.arm(key, at);
        }
    }

    fn on_eof(&mut self, key: usize) {
        let why = match self.conns[key].phase {
            Phase::Closing { .. } => "closed",
            Phase::Handshake => "EOF during handshake",
            Phase::Open(_) => "EOF without a close frame",
        };
        if why != "closed" {
            bump(&self.stats.hangups, 1);
            log::debug!("worker {}: conn {key}: {why}", self.index);
        }
        self.drop_conn(key, why);
    }

    /// Handles the complete requests/frames at the start of `buf`. Returns how many bytes were
    /// used and, when a frame is incomplete, its full length (0 if unknown). Stops early,
    /// leaving the rest unused, when the connection's output goes over its bound: its input
    /// is then held back until the output drains.
    fn process(&mut self, key: usize, buf: &mut [u8]) -> (usize, usize) {
        let mut pos = 0;
        loop {
            let now = self.now();
            let Some(conn) = self.conns.get_mut(key) else {
                return (buf.len(), 0);
            };
            match conn.phase {
                Phase::Handshake => {
                    match handshake::parse(&buf[pos..], &self.cfg.allowed_origins) {
                        Outcome::Partial => return (pos, 0),
                        Outcome::Upgrade {
                            endpoint,
                            response,
                            consumed,
                        } => {
                            conn.phase = Phase::Open(endpoint);
                            conn.last_rx = now;
                            self.queue_raw(key, &response);
                            let ping_at = now + self.cfg.ping_interval.as_secs() as u32;
                            self.set_deadline(key, ping_at);
                            bump(&self.stats.handshakes, 1);
                            pos += consumed;
                        }
                        Outcome::Health => {
                            bump(&self.stats.health_checks, 1);
                            let r = handshake::http_response(200, "OK", "", "ok");
                            self.queue_raw(key, &r);
                            self.enter_closing(key);
                            return (buf.len(), 0);
                        }
                        Outcome::Reject {
                            response,
                            status,
                            reason,
                        } => {
                            log::debug!(
                                "worker {}: conn {key} handshake refused: {reason}",
                                self.index
                            );
                            stats::handshake_failed(&self.stats, status);
                            self.queue_raw(key, &response);
                            self.enter_closing(key);
                            return (buf.len(), 0);
                        }
                    }
                }
                Phase::Open(endpoint) => {
                    if pos == buf.len() {
                        return (pos, 0);
                    }
                    match codec::decode(&mut buf[pos..], self.cfg.max_frame_size) {
                        Ok(Decoded::Incomplete { need }) => return (pos, need),
                        Ok(Decoded::Frame { frame, used }) => {
                            let payload = pos + frame.payload.start..pos + frame.payload.end;
                            pos += used;
                            self.on_frame(key, endpoint, frame.kind, frame.fin, &buf[payload]);
                            if self.over_bound(key) {
                                self.hold(key);
                                return (pos, 0);
                            }
                        }
                        Err(e) => {
                            self.fail(key, e.close_code(), &e.to_string());
                            return (buf.len(), 0);
                        }
                    }
                }
                // Whatever arrives after our close is of no use.
                Phase::Closing { .. } => return (buf.len(), 0),
            }
        }
    }

    /// The connection's replies have taken its output over its bound (and it is not closing).
    fn over_bound(&self, key: usize) -> bool {
        self.conns.get(key).is_some_and(|c| {
            matches!(c.phase, Phase::Open(_)) && c.out.cost() >= self.cfg.max_outbound_bytes
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

    /// Lets a held connection's input flow again; what was held is handled next turn.
    fn release_hold(&mut self, key: usize) {
        let now = self.now();
        let conn = &mut self.conns[key];
        if !conn.is_held() {
            return;
        }
        conn.held_since = NEVER;
        conn.input_ready = true;
        // The client was not silent or slow while we were not reading: restart its clocks.
        conn.last_rx = now;
        if conn.partial_since != NEVER {
            conn.partial_since = now;
        }
        gauge(&self.stats.held, -1);
        self.retry.push(key);
    }

    fn on_frame(&mut self, key: usize, endpoint: Endpoint, kind: Kind, fin: bool, payload: &[u8]) {
        let now = self.now();
        let conn = &mut self.conns[key];
        conn.last_rx = now;
        match kind {
            Kind::Ping => self.queue_frame(key, Kind::Pong, payload),
            Kind::Pong => {}
            Kind::Close => match codec::check_close(payload) {
                Ok(code) => self.begin_close(key, code, ""),
                Err(code) => self.fail(key, code, "invalid close frame"),
            },
            Kind::Text | Kind::Binary | Kind::Continuation => {
                let max = self.cfg.max_message_size;
                let before = conn.inbound_cost();
                let step = message::feed(&mut conn.partial, kind, fin, payload, max);
                let after = conn.inbound_cost();
                gauge(&self.stats.inbound_memory, after as i64 - before as i64);
                match step {
                    Ok(Step::Whole(mk)) => self.on_message(key, endpoint, mk, payload),
                    Ok(Step::Completed) => {
                        let whole = conn.partial.take().expect("a completed message exists");
                        gauge(&self.stats.inbound_memory, -(whole.data.capacity() as i64));
                        self.on_message(key, endpoint, whole.kind, &whole.data);
                    }
                    Ok(Step::Pending) => {}
                    Err(code) => {
                        let why = match code {
                            close_code::TOO_BIG => "message too big",
                            close_code::INVALID_PAYLOAD => "invalid UTF-8 in text message",
                            _ => "bad fragmentation",
                        };
                        self.fail(key, code, why);
                    }
                }
            }
        }
    }

    fn on_message(&mut self, key: usize, endpoint: Endpoint, kind: MessageKind, data: &[u8]) {
        bump(&self.stats.messages_in, 1);
        match endpoint {
            Endpoint::Echo => {
                let k = if kind == MessageKind::Text {
                    Kind::Text
                } else {
                    Kind::Binary
                };
                bump(&self.stats.messages_out, 1);
                self.queue_frame(key, k, data);
            }
            Endpoint::Json => match kind {
                MessageKind::Binary => {
                    self.reply_error(key, None, "binary frames are not supported; send JSON text")
                }
                // SAFETY: text messages were checked to be UTF-8 by `message::feed`.
                MessageKind::Text => {
                    self.dispatch(key, unsafe { std::str::from_utf8_unchecked(data) })
                }
            },
        }
    }

    /// Fails the connection: a close frame with `code`, then close (RFC 6455 §7.1.7).
    pub(super) fn fail(&mut self, key: usize, code: u16, why: &str) {
        log::debug!(
            "worker {}: conn {key} failed with {code}: {why}",
            self.index
        );
        bump(&self.stats.protocol_errors, 1);
        self.begin_close(key, code, why);
    }

    /// Starts (or answers) the closing handshake: queue a close frame and stop reading input.
    pub(super) fn begin_close(&mut self, key: usize, code: u16, reason: &str) {
        if matches!(self.conns[key].phase, Phase::Closing { .. }) {
            return;
        }
        let payload = codec::close_payload(code, reason);
        self.queue_frame(key, Kind::Close, &payload);
        self.enter_closing(key);
    }

    /// Stops all traffic but the queued output, and bounds how long the connection may linger.
    /// Input is read again (to see the peer's close or EOF) but no longer kept.
    fn enter_closing(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.phase = Phase::Closing { shut: false };
        let freed = conn.inbound_cost();
        conn.partial = None;
        conn.inbuf = Vec::new();
        conn.partial_since = NEVER;
        conn.input_ready = false;
        gauge(&self.stats.inbound_memory, -(freed as i64));
        let was_held = conn.is_held();
        if was_held {
            conn.held_since = NEVER;
            gauge(&self.stats.held, -1);
        }
        for t in std::mem::take(&mut conn.subs) {
            self.topics.unsubscribe(&t, key);
        }
        if was_held || self.drain_deadline.is_some() {
            // Its readiness was not acted on while it was held or quiesced.
            self.retry.push(key);
        }
        let at = self.now() + CLOSE_TIMEOUT;
        self.set_deadline(key, at);
    }

    /// Appends a frame to the connection's own output. Pings and pongs beyond the bound's
    /// control allowance are not sent (a peer flooding pings gets pongs only while its output
    /// drains; RFC 6455 §5.5.3 lets a pong answer only the latest ping).
    pub(super) fn queue_frame(&mut self, key: usize, kind: Kind, payload: &[u8]) {
        let conn = &mut self.conns[key];
        let len = codec::MAX_SERVER_HEADER + payload.len();
        if matches!(kind, Kind::Ping | Kind::Pong)
            && conn.out.cost() + len > self.cfg.max_outbound_bytes + CONTROL_ALLOWANCE
        {
            bump(&self.stats.control_dropped, 1);
            return;
        }
        let out = &mut conn.out;
        let (len0, cost0) = (out.len(), out.cost());
        out.append(len, |t| codec::encode_into(t, kind, payload));
        gauge(&self.stats.queued_bytes, (out.len() - len0) as i64);
        gauge(
            &self.stats.outbound_memory,
            out.cost() as i64 - cost0 as i64,
        );
        self.mark_dirty(key);
    }

    fn queue_raw(&mut self, key: usize, bytes: &[u8]) {
        let out = &mut self.conns[key].out;
        let cost0 = out.cost();
        out.append(bytes.len(), |t| t.extend_from_slice(bytes));
        gauge(&self.stats.queued_bytes, bytes.len() as i64);
        gauge(
            &self.stats.outbound_memory,
            out.cost() as i64 - cost0 as i64,
        );
        self.mark_dirty(key);
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

    pub(super) fn flush(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let (len0, cost0) = (conn.out.len(), conn.out.cost());
        let res = conn.out.flush(&mut conn.sock);
        let written = len0 - conn.out.len();
        bump(&self.stats.bytes_out, written as u64);
        gauge(&self.stats.queued_bytes, -(written as i64));
        gauge(
            &self.stats.outbound_memory,
            conn.out.cost() as i64 - cost0 as i64,
        );
        let want_write = match res {
            Ok(Flushed::Empty) => false,
            Ok(Flushed::Blocked) => true,
            Err(e) => {
                log::debug!("worker {}: conn {key} write error: {e}", self.index);
                bump(&self.stats.hangups, 1);
                return self.drop_conn(key, "write error");
            }
        };
        if want_write != conn.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut conn.sock, Token(key), interest)
            {
                log::warn!("worker {}: conn {key} reregister failed: {e}", self.index);
                return self.drop_conn(key, "reregister failed");
            }
            conn.write_interest = want_write;
        }
        if conn.is_held() && conn.out.cost() <= self.cfg.max_outbound_bytes / 2 {
            self.release_hold(key);
            return;
        }
        let conn = &mut self.conns[key];
        if conn.phase == (Phase::Closing { shut: false }) && !want_write {
            // Everything, the close frame included, is out: send FIN and wait for the peer's.
            let _ = conn.sock.shutdown(std::net::Shutdown::Write);
            conn.phase = Phase::Closing { shut: true };
        }
    }
}
