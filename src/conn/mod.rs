//! One connection, everything below the worker: the transport that touches its socket (plain
//! or TLS), the WebSocket state machine that turns its bytes into events, and the slab entry
//! that holds both with the connection's buffers and timer fields.

mod connection;
pub mod state;
pub mod tls;
pub mod transport;

pub use connection::{Conn, NEVER};
pub use state::{CloseReason, Event, Machine, Phase};
pub use tls::{Tls, TlsFiles};
pub use transport::{Input, Transport, TransportError};
