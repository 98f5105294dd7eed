//! One connection's state and the memory it owns. Lives in its worker's slab.
//!
//! An idle open connection owns no heap memory: its socket, a few counters and empty
//! containers (an empty `Vec`/`VecDeque` does not allocate). Memory appears only while there
//! is a partial frame to finish (`inbuf`), a fragmented message to reassemble (`partial`),
//! output the kernel has not taken yet (`out`), or subscriptions (`subs`). Each has a bound:
//! `inbuf` the frame size limit (plus one read held back under backpressure), `partial` the
//! message size limit and the message timeout, `out` the outbound bound, `subs` the
//! subscription limit.

use std::net::IpAddr;
use std::sync::Arc;

use mio::net::TcpStream;

use crate::handshake::Endpoint;
use crate::message::Fragmented;
use crate::outbound::Outbound;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a complete upgrade request; a partial one is kept in `inbuf`.
    Handshake,
    /// Upgraded; frames flow.
    Open(Endpoint),
    /// A close frame or an HTTP refusal is queued. Once it is flushed the write side is shut
    /// (`shut`), and the connection waits for the peer's EOF or its deadline, discarding input.
    Closing { shut: bool },
}

#[derive(Debug)]
pub struct Conn {
    pub sock: TcpStream,
    /// The peer's address, for the per-IP limit and for logs.
    pub ip: IpAddr,
    pub phase: Phase,
    /// Unconsumed input: a partial request head or a partial frame, or, while input is held
    /// back, the rest of the read that was not handled yet. Empty (no allocation) whenever
    /// input ended on a frame boundary, which is the normal case. It grows with the bytes
    /// that arrived, never with the length a frame header declares.
    pub inbuf: Vec<u8>,
    /// A fragmented message in progress.
    pub partial: Option<Box<Fragmented>>,
    pub out: Outbound,
    /// Topics this connection is subscribed to; the same `Arc`s as the worker's index keys.
    pub subs: Vec<Arc<str>>,
    /// Tells this connection apart from an earlier one with the same slab key (timers).
    pub generation: u32,
    /// Tick of the last frame received.
    pub last_rx: u32,
    /// Tick at which the connection's timer must next be looked at.
    pub deadline: u32,
    /// Tick of the wheel entry that is current for this connection; older ones are stale.
    pub timer_at: u32,
    /// Tick since which input has been held back because `out` is over its bound
    /// ([`NEVER`] while reading normally). While held, the socket is not read: TCP's window
    /// then stops the client, and the server buffers nothing more for it.
    pub held_since: u32,
    /// Tick at which the current partial frame or fragmented message began ([`NEVER`] when
    /// input is on a message boundary); bounds how long a half-sent message may pin memory.
    pub partial_since: u32,
    /// In the worker's dirty list (flush at the end of this loop turn).
    pub dirty: bool,
    /// Registered for WRITABLE; true only while `out` is non-empty after a short write.
    pub write_interest: bool,
    /// `inbuf` may hold whole frames not handled yet: input was held back mid-read and has
    /// just been let go. The next read handles them first.
    pub input_ready: bool,
}

/// A tick that never comes: the "not set" value of the tick fields.
pub const NEVER: u32 = u32::MAX;

impl Conn {
    pub fn new(sock: TcpStream, ip: IpAddr, generation: u32, now: u32) -> Self {
        Conn {
            sock,
            ip,
            phase: Phase::Handshake,
            inbuf: Vec::new(),
            partial: None,
            out: Outbound::default(),
            subs: Vec::new(),
            generation,
            last_rx: now,
            deadline: u32::MAX,
            timer_at: u32::MAX,
            held_since: NEVER,
            partial_since: NEVER,
            dirty: false,
            write_interest: false,
            input_ready: false,
        }
    }

    pub fn is_json(&self) -> bool {
        self.phase == Phase::Open(Endpoint::Json)
    }

    /// Input is held back: the connection's output is over its bound.
    pub fn is_held(&self) -> bool {
        self.held_since != NEVER
    }

    /// Heap memory held for input: a partial frame or request, and a fragmented message.
    pub fn inbound_cost(&self) -> usize {
        self.inbuf.capacity() + self.partial.as_ref().map_or(0, |p| p.data.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_stays_small() {
        // The slab stores `Conn` inline; keep it well under a cache line pair or two.
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 192, "Conn grew to {size} bytes");
    }
}
