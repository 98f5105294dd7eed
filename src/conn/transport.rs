//! The only code that touches a client's socket: reads plaintext in, writes a connection's
//! queued output, shuts the write side. Runs on the connection's worker thread.

use std::io::{self, Read};

use mio::net::TcpStream;

use crate::outbound::{Flushed, Outbound};

/// What a read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `len` bytes at the start of the buffer. `drained`: the socket had nothing more (a
    /// short read, which on a stream socket means the same as `WouldBlock`, per epoll(7)).
    Data { len: usize, drained: bool },
    /// The peer closed its side.
    Eof,
    /// Nothing to read now.
    WouldBlock,
}

/// Why a transport failed; the connection is dropped.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Io(#[from] io::Error),
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
        }
    }
}

#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
}

impl Transport {
    /// The socket, for registering readiness.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
        }
    }

    /// Reads once into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Input, TransportError> {
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
        }
    }

    /// Writes as much of `out` as the socket takes, in one `writev` per round.
    pub fn flush(&mut self, out: &mut Outbound) -> Result<Flushed, TransportError> {
        match self {
            Transport::Plain(s) => Ok(out.flush(s)?),
        }
    }

    /// Ends the write side once everything queued is out.
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}
