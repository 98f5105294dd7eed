//! What a transport's read brings, and why a transport fails: shared by the plain and the
//! TLS side (`transport`, `tls`) and read by the worker.

use std::io;

/// What a read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `len` bytes of plaintext at the start of the buffer (possibly 0: TLS records that
    /// carried no application data). `drained`: the socket had nothing more (a short read,
    /// which on a stream socket means the same as `WouldBlock`, per epoll(7)).
    Data { len: usize, drained: bool },
    /// The peer closed its side (TCP FIN, or TLS close_notify).
    Eof,
    /// Nothing to read now.
    WouldBlock,
}

/// Why a transport failed; the connection is dropped.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("plain HTTP on the TLS port")]
    PlainHttp,
    /// The TLS code panicked on this connection's input. Only this connection is dropped:
    /// a bug reachable by a client's bytes must not stop a worker and all its connections.
    #[error("internal TLS failure: {0}")]
    Panicked(String),
}
