//! Socket I/O of one connection on its worker: drain reads, decode frames, queue output,
//! flush, and the closing handshake.

use std::io::{self, Read};

use mio::Interest;
use mio::Token;

use super::{Worker, CLOSE_TIMEOUT, MAX_READS_PER_TURN};
use crate::codec::{self, close_code, Decoded, Kind};
use crate::conn::Phase;
use crate::handshake::{self, Endpoint, Outcome};
use crate::message::{self, MessageKind, Step};
use crate::outbound::Flushed;
use crate::stats::{self, bump, gauge};

/// Smallest read into a connection's own buffer when the frame length is not known yet.
const OWN_READ_CHUNK: usize = 4096;

impl Worker {
    /// Reads until the socket is drained (`WouldBlock`, or a short read, which on a stream
    /// socket means the same thing per epoll(7)), handling every complete frame on the way.
    pub(super) fn on_readable(&mut self, key: usize) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            // A partial frame or request already buffered: read after it, into the
            // connection's own buffer. Otherwise read into the shared one.
            let own = !conn.inbuf.is_empty();
            let res = if own {
                let len = conn.inbuf.len();
                let target = conn.inbuf.capacity().max(len + OWN_READ_CHUNK);
                conn.inbuf.resize(target, 0);
                let r = conn.sock.read(&mut conn.inbuf[len..]);
                let got = *r.as_ref().unwrap_or(&0);
                conn.inbuf.truncate(len + got);
                r.map(|n| (n, n == target - len))
            } else {
                conn.sock
                    .read(&mut self.rbuf)
                    .map(|n| (n, n == self.rbuf.len()))
            };
            let (n, full) = match res {
                Ok((0, _)) => return self.on_eof(key),
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("worker {}: conn {key} read error: {e}", self.index);
                    return self.drop_conn(key, "read error");
                }
            };
            bump(&self.stats.bytes_in, n as u64);
            if own {
                let mut buf = std::mem::take(&mut self.conns[key].inbuf);
                let (used, need) = self.process(key, &mut buf);
                if let Some(conn) = self.conns.get_mut(key) {
                    buf.drain(..used);
                    if !buf.is_empty() {
                        buf.reserve_exact(need.saturating_sub(buf.len()));
                        conn.inbuf = buf;
                    }
                }
            } else {
                let mut rbuf = std::mem::take(&mut self.rbuf);
                let (used, need) = self.process(key, &mut rbuf[..n]);
                if let Some(conn) = self.conns.get_mut(key) {
                    if used < n {
                        let mut keep = Vec::with_capacity(need.max(n - used));
                        keep.extend_from_slice(&rbuf[used..n]);
                        conn.inbuf = keep;
                    }
                }
                self.rbuf = rbuf;
            }
            if !full || !self.conns.contains(key) {
                return;
            }
        }
        // Still more to read: come back next turn so that other connections are served too.
        self.retry.push(key);
    }

    fn on_eof(&mut self, key: usize) {
        let why = match self.conns[key].phase {
            Phase::Closing { .. } => "closed",
            Phase::Handshake => "EOF during handshake",
            Phase::Open(_) => "EOF without a close frame",
        };
        if why != "closed" {
            log::debug!("worker {}: conn {key}: {why}", self.index);
        }
        self.drop_conn(key, why);
    }

    /// Handles the complete requests/frames at the start of `buf`. Returns how many bytes were
    /// used and, when a frame is incomplete, its full length (0 if unknown).
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
                match message::feed(&mut conn.partial, kind, fin, payload, max) {
                    Ok(Step::Whole(mk)) => self.on_message(key, endpoint, mk, payload),
                    Ok(Step::Completed) => {
                        let whole = conn.partial.take().expect("a completed message exists");
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
    fn enter_closing(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.phase = Phase::Closing { shut: false };
        conn.partial = None;
        for t in std::mem::take(&mut conn.subs) {
            self.topics.unsubscribe(&t, key);
        }
        let at = self.now() + CLOSE_TIMEOUT;
        self.set_deadline(key, at);
    }

    /// Appends a frame to the connection's own output.
    pub(super) fn queue_frame(&mut self, key: usize, kind: Kind, payload: &[u8]) {
        let out = &mut self.conns[key].out;
        let before = out.tail().len();
        codec::encode_into(out.tail(), kind, payload);
        gauge(&self.stats.queued_bytes, (out.tail().len() - before) as i64);
        out.commit(before);
        self.mark_dirty(key);
    }

    fn queue_raw(&mut self, key: usize, bytes: &[u8]) {
        let out = &mut self.conns[key].out;
        let before = out.tail().len();
        out.tail().extend_from_slice(bytes);
        gauge(&self.stats.queued_bytes, bytes.len() as i64);
        out.commit(before);
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
        self.dirty = dirty;
    }

    fn flush(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let before = conn.out.len();
        let res = conn.out.flush(&mut conn.sock);
        let written = before - conn.out.len();
        bump(&self.stats.bytes_out, written as u64);
        gauge(&self.stats.queued_bytes, -(written as i64));
        let want_write = match res {
            Ok(Flushed::Empty) => false,
            Ok(Flushed::Blocked) => true,
            Err(e) => {
                log::debug!("worker {}: conn {key} write error: {e}", self.index);
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
        if conn.phase == (Phase::Closing { shut: false }) && !want_write {
            // Everything, the close frame included, is out: send FIN and wait for the peer's.
            let _ = conn.sock.shutdown(std::net::Shutdown::Write);
            conn.phase = Phase::Closing { shut: true };
        }
    }
}
