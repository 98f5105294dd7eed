//! The only code that touches a client's socket: reads plaintext in, writes a connection's
//! queued output, shuts the write side. `Plain` is the socket itself; `Tls` (boxed, so that
//! a plain connection pays nothing for it) runs rustls between the socket and the rest.
//! Runs on the connection's worker thread.

use std::io::{self, Read};

use mio::net::TcpStream;

use super::tls::Tls;
use crate::outbound::{Flushed, Outbound};

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

impl TransportError {
    /// The peer reset or hung up (rather than sending something wrong).
    pub fn is_hangup(&self) -> bool {
        match self {
            TransportError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

impl Transport {
    /// The socket, for registering readiness.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => t.socket(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Reads once into `buf` (plaintext comes out; for TLS, `scratch` takes the ciphertext).
    pub fn read(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> Result<Input, TransportError> {
        match self {
            Transport::Plain(s) => loop {
                return match s.read(buf) {
                    Ok(0) => Ok(Input::Eof),
                    Ok(len) => Ok(Input::Data {
                        len,
                        drained: len < buf.len(),
                    }),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Input::WouldBlock),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e.into()),
                };
            },
            Transport::Tls(t) => contained(|| t.read(buf, scratch)),
        }
    }

    /// Writes as much of `out` as the socket takes (for TLS: encrypts it into as few records
    /// as fit, through `scratch`).
    pub fn flush(
        &mut self,
        out: &mut Outbound,
        scratch: &mut Vec<u8>,
    ) -> Result<Flushed, TransportError> {
        match self {
            Transport::Plain(s) => Ok(out.flush(s)?),
            Transport::Tls(t) => contained(|| t.flush(out, scratch)),
        }
    }

    /// Memory the transport itself holds (TLS: ciphertext not yet taken by the socket, a
    /// partial record received).
    pub fn cost(&self) -> usize {
        match self {
            Transport::Plain(_) => 0,
            Transport::Tls(t) => t.cost(),
        }
    }

    /// Output is pending inside the transport (TLS ciphertext the socket did not take).
    pub fn has_pending(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.has_pending(),
        }
    }

    /// Ends the write side once everything queued is out: TLS sends close_notify first.
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Transport::Tls(t) => {
                let _ = contained(|| {
                    t.shutdown_write();
                    Ok(())
                });
            }
        }
    }
}

/// Runs a TLS step and turns a panic inside it into an error for this connection alone.
/// The connection is dropped right after, so no state it left half-updated is used again;
/// the worker's own buffers passed in are plain bytes, overwritten before their next use.
fn contained<T>(f: impl FnOnce() -> Result<T, TransportError>) -> Result<T, TransportError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(TransportError::Panicked(why))
    })
}
