//! One connection's slab entry on its worker: its transport, its protocol state, its
//! buffers and its timer fields.
//!
//! An idle open connection owns no heap memory and is 88 bytes: its socket, a few counters
//! and containers that are one word each while empty (`ThinVec`s, and an `Outbound` that
//! boxes its queue only while output is pending). Memory appears only
//! while there is a partial frame to finish (`inbuf`), a fragmented message to reassemble
//! (in `machine`), output the kernel has not taken yet (`out`), or subscriptions (`subs`).
//! Each has a bound: `inbuf` the frame size limit (plus one read held back under
//! backpressure), the fragmented message the message size limit and the message timeout,
//! `out` the outbound bound, `subs` the subscription limit.

use std::sync::Arc;

use thin_vec::ThinVec;

use super::state::Machine;
use super::transport::Transport;
use crate::admission::Peer;
use crate::outbound::Outbound;

/// A tick that never comes: the "not set" value of the tick fields.
pub const NEVER: u32 = u32::MAX;

#[derive(Debug)]
pub struct Conn {
    pub transport: Transport,
    /// Whom the per-IP limit counted this connection against; released when it ends.
    pub peer: Peer,
    pub machine: Machine,
    /// Unconsumed input: a partial request head or a partial frame, or, while input is held
    /// back, the rest of the read that was not handled yet. Empty (no allocation) whenever
    /// input ended on a frame boundary, which is the normal case. It grows with the bytes
    /// that arrived, never with the length a frame header declares.
    pub inbuf: ThinVec<u8>,
    pub out: Outbound,
    /// Topics this connection is subscribed to; the same `Arc`s as the worker's index keys.
    pub subs: ThinVec<Arc<str>>,
    /// Tick of the last frame received.
    pub last_rx: u32,
    /// Tick at which the connection must next be looked at ([`NEVER`]: not before
    /// something sets it); the worker's once-a-second sweep finds it.
    pub deadline: u32,
    /// Tick since which input has been held back because `out` is over its bound
    /// ([`NEVER`] while reading normally). While held, the socket is not read: TCP's window
    /// then stops the client, and the server buffers nothing more for it.
    pub held_since: u32,
    /// This turn's deliveries staged for this connection (see `Worker::staged`): 1 + the
    /// index of the latest, 0 for none. Nonzero only while `out` is empty and the
    /// connection is in the dirty list.
    pub staged: u32,
    /// In the worker's dirty list (flush at the end of this loop turn).
    pub dirty: bool,
    /// Registered for WRITABLE; true only while output is pending after a short write.
    pub write_interest: bool,
    /// `inbuf` may hold whole frames not handled yet: input was held back mid-read and has
    /// just been let go. The next read handles them first.
    pub input_ready: bool,
    /// Closing, with everything (the close frame included) written: the write side is shut
    /// and the connection waits for the peer's EOF or its deadline.
    pub shut: bool,
    /// The upgrade completed: this is a WebSocket (counted in the `websockets` gauge).
    pub upgraded: bool,
    /// Held (see `held_since`) because its publishes found the other workers' queues full:
    /// only the worker's check of those queues lets it go, not its own output draining.
    pub publish_held: bool,
}

impl Conn {
    pub fn new(transport: Transport, peer: Peer, now: u32) -> Self {
        Conn {
            transport,
            peer,
            machine: Machine::new(),
            inbuf: ThinVec::new(),
            out: Outbound::default(),
            subs: ThinVec::new(),
            last_rx: now,
            deadline: NEVER,
            held_since: NEVER,
            staged: 0,
            dirty: false,
            write_interest: false,
            input_ready: false,
            shut: false,
            upgraded: false,
            publish_held: false,
        }
    }

    pub fn is_json(&self) -> bool {
        self.machine.is_json()
    }

    /// Input is held back: the connection's output is over its bound.
    pub fn is_held(&self) -> bool {
        self.held_since != NEVER
    }

    /// Heap memory held for input: a partial frame or request, and a fragmented message.
    pub fn inbound_cost(&self) -> usize {
        self.inbuf.capacity() + self.machine.partial_cost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_stays_small() {
        // The slab stores `Conn` inline, and it is all an idle connection costs in user
        // space (deadlines are swept, not kept in a timer structure): with the slab's
        // growth slack it must stay within the 128 bytes of RSS per idle connection that
        // issue 15 set and the README reports. A field added here must find room.
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 88, "Conn grew to {size} bytes");
    }
}
