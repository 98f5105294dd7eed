//! One connection's state and the memory it owns. Lives in its worker's slab.
//!
//! An idle open connection owns no heap memory: its socket, a few counters and empty
//! containers (an empty `Vec`/`VecDeque` does not allocate). Memory appears only while there
//! is a partial frame to finish (`inbuf`), a fragmented message to reassemble (`partial`),
//! output the kernel has not taken yet (`out`), or subscriptions (`subs`).

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
    /// Unconsumed input: a partial request head or a partial frame. Empty (no allocation)
    /// whenever input ended on a frame boundary, which is the normal case.
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
    /// In the worker's dirty list (flush at the end of this loop turn).
    pub dirty: bool,
    /// Registered for WRITABLE; true only while `out` is non-empty after a short write.
    pub write_interest: bool,
}

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
            dirty: false,
            write_interest: false,
        }
    }

    pub fn is_json(&self) -> bool {
        self.phase == Phase::Open(Endpoint::Json)
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
