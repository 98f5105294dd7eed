//! A client connection's byte stream below the WebSocket layer, on its client thread: plain
//! TCP, or TLS through a buffered rustls `ClientConnection`, driven by the thread's
//! edge-triggered mio readiness.
//!
//! Both kinds present socket semantics to `conn`: `read` returns plaintext or `WouldBlock`,
//! `write` takes plaintext or returns `WouldBlock`. The socket is registered for READABLE and
//! WRITABLE edges for its whole life (as for plain TCP), so TLS records left unsent by a
//! `WouldBlock` are resumed by the next WRITABLE edge, whose `flush` sends them first.

use std::io::{self, Read as _, Write as _};

use mio::net::TcpStream;
use rustls::ClientConnection;

use crate::tls::Negotiated;

pub enum Transport {
    /// `ws://`: bytes go straight to the socket.
    Plain(TcpStream),
    /// `wss://`: plaintext passes through `session`'s buffers, records through `tcp`.
    Tls {
        tcp: TcpStream,
        session: Box<ClientConnection>,
        /// Whether [`Transport::handshake_finished`] has reported this session already.
        reported: bool,
    },
}

impl Transport {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) | Transport::Tls { tcp, .. } => tcp,
        }
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(tcp) | Transport::Tls { tcp, .. } => tcp,
        }
    }

    /// Whether a read shorter than the buffer proves the socket drained. True for TCP; for
    /// TLS a short read only empties rustls' plaintext buffer, so the caller must read on
    /// until `WouldBlock` or the edge-triggered socket may keep unread records for good.
    pub fn short_read_drains(&self) -> bool {
        matches!(self, Transport::Plain(_))
    }

    /// Reads plaintext into `buf`: `Ok(0)` at the end of the stream, `WouldBlock` when
    /// neither rustls nor the socket has anything. A TLS error comes back as an `InvalidData`
    /// error carrying the `rustls::Error` (see [`tls_error`]), after its alert was sent.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (tcp, session) = match self {
            Transport::Plain(tcp) => return tcp.read(buf),
            Transport::Tls { tcp, session, .. } => (tcp, session),
        };
        loop {
            // Plaintext already decrypted first: rustls refuses to read more records while
            // its plaintext buffer is full. Ok(0) here is the peer's close_notify; a TCP end
            // without one is UnexpectedEof.
            match session.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            // Ok(0) is the socket's end; the reader says next whether it was a clean one.
            session.read_tls(tcp)?;
            if let Err(e) = session.process_new_packets() {
                // Best effort: tell the server why before the connection is dropped.
                let _ = send_records(tcp, session);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Writes plaintext from `buf`; `WouldBlock` means nothing was taken and the socket is
    /// full, so a WRITABLE edge will come.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (tcp, session) = match self {
            Transport::Plain(tcp) => return tcp.write(buf),
            Transport::Tls { tcp, session, .. } => (tcp, session),
        };
        // Records already made go first, so that rustls' buffer (64 KiB) has room.
        send_records(tcp, session)?;
        let taken = session.writer().write(buf)?;
        send_records(tcp, session)?;
        if taken == 0 {
            // The buffer is full, hence the socket refused records just now.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Sends every TLS record waiting (handshake messages, alerts, encrypted data) until the
    /// socket is full; nothing to do for TCP.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls { tcp, session, .. } => send_records(tcp, session),
        }
    }

    /// What the handshake negotiated, once, on the first call after it finished.
    pub fn handshake_finished(&mut self) -> Option<Negotiated> {
        match self {
            Transport::Tls {
                session, reported, ..
            } if !*reported && !session.is_handshaking() => {
                *reported = true;
                Some(Negotiated::of(session))
            }
            _ => None,
        }
    }

    /// Best effort before the socket is dropped: TLS sends close_notify.
    pub fn close(&mut self) {
        if let Transport::Tls { tcp, session, .. } = self {
            session.send_close_notify();
            let _ = send_records(tcp, session);
        }
    }
}

/// `write_tls` until rustls has nothing left or the socket is full (`Ok`: the WRITABLE edge
/// resumes it).
fn send_records(tcp: &mut TcpStream, session: &mut ClientConnection) -> io::Result<()> {
    while session.wants_write() {
        match session.write_tls(tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The TLS error inside an error from [`Transport::read`] or [`Transport::write`], if it is one.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}
