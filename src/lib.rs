//! corecast: a thread-per-core, epoll-driven WebSocket pub/sub server.
//!
//! See docs/architecture.md for the architecture; `server::Server` is the entry point.

pub mod acceptor;
pub mod admission;
pub mod affinity;
pub mod auth;
pub mod backplane;
pub mod broadcast;
pub mod budget;
pub mod codec;
pub mod config;
pub mod conn;
pub mod console;
pub mod control;
mod delivery;
pub mod exit;
pub mod fdlimit;
pub mod handler;
pub mod handshake;
pub mod history;
mod link;
pub mod memory;
pub mod message;
pub mod outbound;
mod progress;
pub mod protocol;
pub mod server;
pub mod shared;
pub mod stats;
mod stop;
pub mod topics;
pub mod worker;

pub use config::Config;
pub use server::Server;
