//! The per-core event loop: one thread, one `mio::Poll`, one slab of connections it owns,
//! carrying out what `conn` (transport, state machine, output) and `handler` decide.
//!
//! Its parts, each owning its state, top to bottom (a part calls only those below it):
//!
//! - `event_loop`: the `Worker`, its loop turn and readiness; the only part that calls
//!   several others;
//! - `reader`: reading through the transport into the state machine; holding input back;
//! - `effects`: what the state machine's events and the handler's decisions make the worker
//!   do (answer, subscribe, publish, close);
//! - `tokens`: who a connection is (its token, verified under a per-turn budget) and the
//!   session that establishes;
//! - `fanout`: this worker's share of every publish, to its subscribers;
//! - `timers`: handshake, ping, idle, message, backpressure and close deadlines;
//! - `drain`: shutdown that loses no acknowledged publish;
//! - `conns`: the slab, and what every part may do to one connection (send through its
//!   output door, hold, close, flush, drop);
//! - `share`: each publishing connection's bytes in the other workers' queues (kept by
//!   `conns`, which forgets a connection's when it goes);
//! - `handle`: how other threads reach a worker.

mod conns;
mod drain;
mod effects;
mod event_loop;
mod fanout;
pub mod handle;
mod history;
#[cfg(debug_assertions)]
mod invariants;
mod reader;
mod share;
mod timers;
mod tokens;
mod waiting;

pub use event_loop::{Context, Worker, WAKER};
