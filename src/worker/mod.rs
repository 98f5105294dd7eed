//! The per-core event loop: one thread, one `mio::Poll`, one slab of connections it owns,
//! carrying out what `conn` (transport, state machine) and `handler` decide.
//!
//! - `event_loop`: the `Worker`, its loop turn, connections coming and going;
//! - `io`: reading through the transport, holding input back, flushing;
//! - `events`: what the state machine's events and the handler's effects make the worker do;
//! - `deliver`: this worker's share of every publish, into its subscribers' queues;
//! - `timers`: handshake, ping, idle, message, backpressure and close deadlines;
//! - `drain`: shutdown that loses no acknowledged publish;
//! - `handle`: how other threads reach a worker.

mod deliver;
mod drain;
mod event_loop;
mod events;
pub mod handle;
#[cfg(debug_assertions)]
mod invariants;
mod io;
mod timers;

pub use event_loop::{Context, Worker, WAKER};
