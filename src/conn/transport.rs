//! The only code that touches a client's socket: reads plaintext in, writes a connection's
//! queued output, shuts the write side. `Plain` is the socket itself; `Tls` (boxed, so that
//! a plain connection pays nothing for it) runs rustls between the socket and the rest.
//! Runs on the connection's worker thread.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use super::outcome::{Input, TransportError};
use super::tls::Tls;
use crate::outbound::{Flushed, Outbound};

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

    /// Writes `buf` straight to a plain socket: the bytes taken (0 when the send buffer is
    /// full). `None` for TLS, which must encrypt through `flush`.
    pub fn write_plain(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        let Transport::Plain(s) = self else {
            return None;
        };
        Some(taken(|| s.write(buf)))
    }

    /// Writes `bufs` straight to a plain socket with one `writev`: the bytes taken (0 when
    /// the send buffer is full). `None` for TLS.
    pub fn writev_plain(&mut self, bufs: &[io::IoSlice<'_>]) -> Option<io::Result<usize>> {
        let Transport::Plain(s) = self else {
            return None;
        };
        Some(taken(|| s.write_vectored(bufs)))
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

/// What one write to a non-blocking socket took: retried if interrupted, 0 when the send
/// buffer is full.
fn taken(mut write: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match write() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            other => return other,
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
