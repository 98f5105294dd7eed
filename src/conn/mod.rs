//! One connection, everything below the worker: the transport that touches its socket (plain
//! or TLS), the WebSocket state machine that turns its bytes into events, and the slab entry
//! that holds both with the connection's buffers and timer fields.

mod connection;
pub mod deflate;
mod input_state;
mod outcome;
pub mod output;
pub mod session;
pub mod state;
pub mod tls;
pub mod tls_config;
pub mod transport;

pub use connection::{Conn, NEVER};
pub use input_state::{Hold, InputState};
pub use outcome::{Input, TransportError};
pub use output::{Output, Outputs, Took, Uncorked, Wire};
pub use session::{Session, Standing, StandingKind};
pub use state::{CloseReason, Event, Machine, Phase};
pub use tls::Tls;
pub use tls_config::{TlsConfigError, TlsFiles};
pub use transport::Transport;
