//! Reading: a connection's input through its transport, into the state machine, and held
//! back while reading on would buffer more than its bounds allow. Runs on the connection's
//! worker.
//!
//! The top of a connection's input path: it calls down into `effects` (what each event makes
//! the worker do) and `conns` (the slab, the output door, holds).

use thin_vec::ThinVec;

use super::conns::Conns;
use super::effects::Effects;
use super::fanout::Fanout;
use crate::broadcast::{Port, CROSS_BYTES, PUBLISHER_SHARE};
use crate::conn::{Event, Hold, Input, InputState, Phase, Uncorked, NEVER};
use crate::stats::{bump, gauge};

/// Per-worker read buffer. Every connection reads through it, so its size costs nothing per
/// connection; 64 KiB takes a full loopback burst in one `read`.
pub(super) const READ_BUF: usize = 64 * 1024;

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
/// what it sent beyond them waits in its `inbuf` (whole frames: `InputState::Resuming`) and
/// in its socket for a later turn. Bytes alone do not bound the work: 16 reads of 6-byte
/// frames are 175,000 frames. At 1024 a connection's share of a turn stays far below a
/// millisecond for small frames (2026-12-04, the 2-core dev VM: about 25 µs for 1024 empty
/// continuations, about 150 µs for 1024 small JSON echo requests and their replies), and
/// frames of 1 KiB and more reach the read cap first. The input it leaves waiting is at most
/// the rest of one read (64 KiB) besides a partial frame, as no more is read that turn.
const MAX_FRAMES_PER_TURN: usize = 1024;

/// A partial frame kept in a buffer more than this much larger than itself is moved to one
/// of its own size, so a connection never keeps the capacity of a large frame it finished.
const SHRINK_SLACK: usize = 4096;

/// What a readiness event said about the peer, beyond readability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hangup {
    No,
    /// The peer shut its side (FIN): read to EOF, whatever else is pending.
    Closed,
    /// The socket has an error (a reset): read to the error, even while input is held.
    Error,
}

/// The reading part of a worker.
pub(super) struct Reader {
    /// Shared by all connections for reading; see `READ_BUF`.
    rbuf: Vec<u8>,
    /// TLS ciphertext as it is read (`READ_BUF`); empty without TLS.
    tls_in: Vec<u8>,
    /// Connections held because their publishes found the other workers' queues
    /// [`CROSS_BYTES`] behind; let go once those queues are down to half.
    publishers_held: Vec<usize>,
    /// The connection being read stopped for the verification budget, not for the frame
    /// bound: it waits in the verification queue.
    verify_later: bool,
    /// Connections held because their own publishes in those queues passed their share,
    /// [`PUBLISHER_SHARE`]; each is let go once its own are down to half of it.
    over_share: Vec<usize>,
}

impl Reader {
    pub(super) fn new(tls: bool) -> Self {
        let mut r = Reader {
            rbuf: vec![0; READ_BUF],
            tls_in: Vec::new(),
            publishers_held: Vec::new(),
            verify_later: false,
            over_share: Vec::new(),
        };
        if tls {
            r.enable_tls();
        }
        r
    }

    /// New connections speak TLS from now on: a buffer for their ciphertext.
    pub(super) fn enable_tls(&mut self) {
        if self.tls_in.is_empty() {
            self.tls_in = vec![0; READ_BUF];
        }
    }

    /// Some publisher is held for the other workers' queues, as a whole or its share of them
    /// (then nothing else wakes the worker when they drain: it must look again).
    pub(super) fn publishers_held(&self) -> bool {
        !self.publishers_held.is_empty() || !self.over_share.is_empty()
    }

    /// The connections held for the other workers' queues, as a whole or their share of them
    /// (some may have left since).
    #[cfg(debug_assertions)]
    pub(super) fn held_publishers(&self) -> impl Iterator<Item = usize> + '_ {
        self.publishers_held.iter().chain(&self.over_share).copied()
    }

    /// Reads until the socket is drained (`WouldBlock`, or a short read, which on a stream
    /// socket means the same thing per epoll(7)), handling every complete frame on the way.
    /// After a hang-up or an error a short read proves nothing (the data and the FIN or RST
    /// arrive in one event, and edge-triggered epoll reports that once), so then it reads
    /// on to EOF or the error. A plain connection's replies are corked meanwhile.
    pub(super) fn on_readable(
        &mut self,
        c: &mut Conns,
        e: &mut Effects,
        f: &mut Fanout,
        key: usize,
        hup: Hangup,
    ) {
        let Some(conn) = c.slab.get(key) else {
            return;
        };
        c.out.cork(key, &conn.transport);
        self.read_conn(c, e, f, key, hup);
        let conn = c.slab.get_mut(key);
        let held_or_closing = conn
            .as_ref()
            .is_some_and(|c| c.is_held() || c.machine.phase() == Phase::Closing);
        match c
            .out
            .uncork(key, conn.map(|c| (&mut c.out, &mut c.transport)))
        {
            // Their flush lets held input go, or ends the write side.
            Ok(Uncorked::Written) if held_or_closing => c.mark_dirty(key),
            Ok(_) => {}
            Err(err) => c.drop_failed(key, err),
        }
    }

    fn read_conn(
        &mut self,
        c: &mut Conns,
        e: &mut Effects,
        f: &mut Fanout,
        key: usize,
        hup: Hangup,
    ) {
        let quiesced = c.draining;
        let Some(conn) = c.slab.get_mut(key) else {
            return;
        };
        if conn.is_held() || (quiesced && conn.machine.is_open()) {
            if hup == Hangup::Error {
                // A reset peer will never read what is queued for it.
                bump(&c.stats.hangups, 1);
                return c.drop(key, "reset while input was held");
            }
            // Read again when the output drains (or the drain begins closing).
            return;
        }
        let mut frames = MAX_FRAMES_PER_TURN;
        if conn.machine.input == InputState::Resuming {
            if hup == Hangup::No && c.waiting.holds(key) {
                // Queued for a pass still to come: it reads then, once per turn.
                return;
            }
            conn.machine.input = InputState::Reading;
            if !self.resume(c, e, f, key, &mut frames) {
                return;
            }
            if frames == 0 {
                return self.later(c, key);
            }
        }
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = c.slab.get_mut(key) else {
                return;
            };
            let cost0 = conn.transport.cost();
            let res = conn.transport.read(&mut self.rbuf, &mut self.tls_in);
            c.out
                .tls_changed(conn.transport.cost() as i64 - cost0 as i64);
            if conn.transport.has_pending() {
                // TLS handshake records the socket did not take at once.
                c.mark_dirty(key);
            }
            let (len, drained) = match res {
                Ok(Input::Data { len, drained }) => (len, drained),
                Ok(Input::WouldBlock) => return,
                Ok(Input::Eof) => return on_eof(c, key),
                Err(err) => return c.drop_failed(key, err),
            };
            bump(&c.stats.bytes_in, len as u64);
            let mut rbuf = std::mem::take(&mut self.rbuf);
            self.take_input(c, e, f, key, &mut rbuf[..len], &mut frames);
            self.rbuf = rbuf;
            match c.slab.get(key) {
                None => return,
                Some(conn) if conn.is_held() => return,
                Some(_) => {}
            }
            if frames == 0 {
                return self.later(c, key);
            }
            if drained && hup == Hangup::No {
                return;
            }
        }
        // Still more to read: come back next turn so that other connections are served too.
        c.read_next_turn(key);
    }

    /// Handles input that was held back and kept in `inbuf`. Returns false if the connection
    /// is gone or held again.
    fn resume(
        &mut self,
        c: &mut Conns,
        e: &mut Effects,
        f: &mut Fanout,
        key: usize,
        frames: &mut usize,
    ) -> bool {
        if c.slab[key].inbuf.is_empty() {
            return true;
        }
        let mut buf = take_inbuf(c, key);
        let used = self.process(c, e, f, key, &mut buf, frames);
        put_back(c, key, buf, used);
        // The message clock follows what is left: perhaps nothing, perhaps a partial frame.
        let now = c.now;
        note_partial(c, key, now);
        c.slab.get(key).is_some_and(|conn| !conn.is_held())
    }

    /// Handles `data` just read. A partial frame already buffered is completed first, copying
    /// only the bytes it still lacks; the rest is decoded where it lies, in the shared read
    /// buffer, and only an incomplete tail (or, when input is held, the unhandled rest) is
    /// copied into the connection's own buffer.
    fn take_input(
        &mut self,
        c: &mut Conns,
        e: &mut Effects,
        f: &mut Fanout,
        key: usize,
        data: &mut [u8],
        frames: &mut usize,
    ) {
        let now = c.now;
        let conn = &c.slab[key];
        let mut rest = 0;
        if !conn.inbuf.is_empty() {
            // `inbuf` holds the partial frame a `NeedMore` left (whole frames held back are
            // handled before any read).
            let missing = conn.machine.need(&conn.inbuf, &c.cfg);
            // Unknown length (a split header or request head): take it all.
            rest = if missing == 0 {
                data.len()
            } else {
                missing.min(data.len())
            };
            let mut buf = take_inbuf(c, key);
            append(&mut buf, &data[..rest]);
            let used = self.process(c, e, f, key, &mut buf, frames);
            if !put_back(c, key, buf, used) {
                return;
            }
            if rest == data.len() {
                return note_partial(c, key, now);
            }
            if !c.slab[key].inbuf.is_empty() {
                // Held back or out of frames mid-read: keep the rest of the read, unhandled.
                let mut buf = take_inbuf(c, key);
                append(&mut buf, &data[rest..]);
                put_inbuf(c, key, buf);
                return;
            }
        }
        let used = self.process(c, e, f, key, &mut data[rest..], frames);
        let left = &data[rest + used..];
        if !left.is_empty() && c.slab.contains(key) {
            put_inbuf(c, key, copy_of(left));
        }
        note_partial(c, key, now);
    }

    /// Runs the state machine over the complete requests and frames at the start of `buf`
    /// and carries out what each calls for. Returns how many bytes were used. Stops early,
    /// leaving the rest unused, when the connection's input is held back (its output went
    /// over its bound, its publishes in the other workers' queues passed its share of them, or
    /// its publish found those queues full), and once it has handled `frames` frames (counted
    /// off; the caller leaves the rest for a later turn).
    fn process(
        &mut self,
        c: &mut Conns,
        e: &mut Effects,
        f: &mut Fanout,
        key: usize,
        buf: &mut [u8],
        frames: &mut usize,
    ) -> usize {
        let mut pos = 0;
        loop {
            if *frames == 0 {
                return pos;
            }
            if !c.slab.contains(key) {
                return buf.len();
            }
            if e.tokens.exhausted() && e.tokens.may_verify(c, key) {
                // This turn has spent its verification budget, and what comes next may need
                // a signature check: it waits, unread, in the verification queue, and the
                // connections already open are served meanwhile.
                bump(&c.stats.auth_deferred, 1);
                self.verify_later = true;
                *frames = 0;
                return pos;
            }
            let conn = &mut c.slab[key];
            let held0 = conn.machine.partial_cost();
            let (used, event) = conn.machine.next(&mut buf[pos..], &c.cfg);
            let held1 = conn.machine.partial_cost();
            gauge(&c.stats.inbound_memory, held1 as i64 - held0 as i64);
            if matches!(event, Event::NeedMore) {
                return pos;
            }
            *frames -= 1;
            pos += used;
            e.published = false;
            e.rate_held = false;
            e.on_event(c, f, key, event);
            if !c.slab.contains(key) {
                return buf.len();
            }
            if e.rate_held && c.slab[key].machine.is_open() {
                // Over its rate: nothing more is read until its buckets refill.
                c.hold(key, Hold::Rate);
                return pos;
            }
            if c.slab[key].machine.is_open() && c.out_cost(key) >= c.cfg.max_outbound_bytes {
                c.hold(key, Hold::Output);
                return pos;
            }
            if e.published && c.shares.over(key) {
                // Its own doing, whatever the others do: counted as such even if the queues
                // are full too.
                c.hold(key, Hold::Queues);
                bump(&c.stats.publishers_share_held, 1);
                self.over_share.push(key);
                return pos;
            }
            if e.published && e.bus.cross_full() {
                c.hold(key, Hold::Queues);
                bump(&c.stats.publishers_held, 1);
                self.publishers_held.push(key);
                return pos;
            }
            if pos == buf.len() {
                return pos;
            }
        }
    }

    /// The connection stopped before its input was all handled: it waits for the
    /// verification budget, or for the next turn (the frame bound).
    fn later(&mut self, c: &mut Conns, key: usize) {
        // The wait is the server's doing, so a message it is in the middle of gets its time
        // back, as after a hold.
        let now = c.now;
        let partial_since = &mut c.slab[key].machine.partial_since;
        if *partial_since != NEVER {
            *partial_since = now;
        }
        if std::mem::take(&mut self.verify_later) {
            c.wait_for_verification(key);
        } else {
            c.read_next_turn(key);
        }
    }

    /// Lets held publishers go: one held for its share once its own publishes in the other
    /// workers' queues are down to half its share (after the turn's retiring of them), one
    /// held for the queues as a whole once they are down to half their bound. One whose own
    /// output is over half its bound stays held, now as any other; its flush lets it go.
    pub(super) fn release_publishers(&mut self, c: &mut Conns, bus: &Port) {
        if !self.over_share.is_empty() {
            let mut held = std::mem::take(&mut self.over_share);
            held.retain(|&key| {
                let keep = c.slab.contains(key) && c.shares.in_flight(key) > PUBLISHER_SHARE / 2;
                if !keep {
                    let_publisher_go(c, key);
                }
                keep
            });
            self.over_share = held;
        }
        if self.publishers_held.is_empty() || bus.cross_queued() > CROSS_BYTES / 2 {
            return;
        }
        for key in std::mem::take(&mut self.publishers_held) {
            let_publisher_go(c, key);
        }
    }
}

/// Lets a connection held for the other workers' queues go, unless its own output holds it
/// (see `InputState::after_queues_drained`).
fn let_publisher_go(c: &mut Conns, key: usize) {
    if !c.slab.contains(key) {
        return; // a connection that took the key since, or one closed meanwhile
    }
    let cost = c.out_cost(key);
    match c.slab[key]
        .machine
        .input
        .after_queues_drained(cost, c.cfg.max_outbound_bytes)
    {
        None => c.release(key),
        Some(next) => c.slab[key].machine.input = next,
    }
}

/// Takes the connection's input buffer out (to be handled while the connection is borrowed
/// elsewhere), and its memory off the gauge.
fn take_inbuf(c: &mut Conns, key: usize) -> ThinVec<u8> {
    let buf = std::mem::take(&mut c.slab[key].inbuf);
    gauge(&c.stats.inbound_memory, -(buf.capacity() as i64));
    buf
}

fn put_inbuf(c: &mut Conns, key: usize, buf: ThinVec<u8>) {
    gauge(&c.stats.inbound_memory, buf.capacity() as i64);
    c.slab[key].inbuf = buf;
}

/// Puts back what `process` left of `buf`, in a buffer no larger than it needs, or frees it.
/// Returns false if the connection is gone.
fn put_back(c: &mut Conns, key: usize, mut buf: ThinVec<u8>, used: usize) -> bool {
    let Some(conn) = c.slab.get(key) else {
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
    put_inbuf(c, key, buf);
    true
}

/// Starts or stops the message clock: a connection in the middle of a frame or of a
/// fragmented message must finish it within the message timeout.
fn note_partial(c: &mut Conns, key: usize, now: u32) {
    let at = c.after(c.cfg.message_timeout);
    let Some(conn) = c.slab.get_mut(key) else {
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
        c.arm(key, at);
    }
}

fn on_eof(c: &mut Conns, key: usize) {
    let why = match c.slab[key].machine.phase() {
        Phase::Closing => "closed",
        Phase::Handshake => "EOF during handshake",
        Phase::Open(_) => "EOF without a close frame",
    };
    if why != "closed" {
        bump(&c.stats.hangups, 1);
        log::debug!("worker {}: conn {key}: {why}", c.index);
    }
    c.drop(key, why);
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
