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

use super::output::Output;
use super::session::Session;
use super::state::Machine;
use super::transport::Transport;
use crate::admission::Peer;

/// A tick that never comes: the "not set" value of the tick fields.
pub const NEVER: u32 = u32::MAX;

#[derive(Debug)]
pub struct Conn {
    pub transport: Transport,
    /// Whom the per-IP limit counted this connection against; released when it ends.
    pub peer: Peer,
    pub machine: Machine,
    /// Unconsumed input: a partial request head or a partial frame, or, while input is held
    /// back or resuming, the rest of the read that was not handled yet. Empty (no
    /// allocation) whenever input ended on a frame boundary, which is the normal case. It
    /// grows with the bytes that arrived, never with the length a frame header declares.
    pub inbuf: ThinVec<u8>,
    /// Everything on its way out; see [`Output`].
    pub out: Output,
    /// Topics this connection is subscribed to; the same `Arc`s as the worker's index keys.
    pub subs: ThinVec<Arc<str>>,
    /// Tick of the last frame received; while input is held back, the tick the hold began
    /// (nothing is received then, and a release sets it to the release's tick).
    pub last_rx: u32,
    /// Tick at which the connection must next be looked at ([`NEVER`]: not before
    /// something sets it); the worker's once-a-second sweep finds it.
    pub deadline: u32,
    /// Who the connection is, what it may do and its fair-use state, boxed: `None` unless
    /// auth or rate limits are on, so that they cost a connection nothing while they are off.
    pub session: Option<Box<Session>>,
}

impl Conn {
    pub fn new(transport: Transport, peer: Peer, now: u32) -> Self {
        Conn {
            transport,
            peer,
            machine: Machine::new(),
            inbuf: ThinVec::new(),
            out: Output::default(),
            subs: ThinVec::new(),
            last_rx: now,
            deadline: NEVER,
            session: None,
        }
    }

    pub fn is_json(&self) -> bool {
        self.machine.is_json()
    }

    /// Input is held back (see [`InputState::Held`](super::InputState::Held)).
    pub fn is_held(&self) -> bool {
        self.machine.input.is_held()
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
        // issue 15 set and docs/performance.md reports. A field added here must find room.
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 88, "Conn grew to {size} bytes");
    }
}
