//! TLS between a connection's socket and the rest of it, with rustls' unbuffered API: the
//! worker owns every buffer, so a connection that is idle holds none of them (rustls'
//! buffered `ServerConnection` keeps about 20 KB per connection whatever it is doing).
//! Ciphertext is read through the worker's shared scratch buffer and decrypted records are
//! copied into its read buffer; output is gathered into as few records as fit and encrypted
//! through a second shared buffer. A connection keeps bytes of its own only while a record
//! is half received or the socket has not taken what was encrypted. Runs on the
//! connection's worker; the configuration it runs with comes from `tls_config`.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;

use super::outcome::{Input, TransportError};
use crate::outbound::{Flushed, Outbound};

/// The largest TLS record on the wire: 16 KiB of plaintext plus the most expansion and the
/// header the protocol allows (RFC 8446 §5.2). A half-received record is at most this.
pub const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

/// Plaintext encrypted per batch, in records of up to 16 KiB: four full records, so a
/// backlog goes out in large writes, and at most this much ciphertext waits on a slow socket.
pub const BATCH: usize = 64 * 1024;

/// Room a batch needs for record headers, tags and padding on top of its plaintext.
const BATCH_OVERHEAD: usize = 8 * 64;

/// The first byte of every TLS handshake record (the content type, RFC 8446 §5.1).
const HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain HTTP request sent to the TLS port gets (as nginx answers it), before the
/// connection is closed.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Content-Length: 48\r\nConnection: close\r\n\r\n\
this port speaks TLS: connect with wss:// instead\n";

/// One connection's TLS state. Boxed inside the transport; holds heap buffers only while it
/// has bytes in them.
pub struct Tls {
    sock: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext received that does not make a whole record yet.
    incoming: Vec<u8>,
    /// Ciphertext produced (handshake, encrypted output, alerts) that the socket has not
    /// taken yet, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// Any byte has been received: the first decides whether this is TLS at all.
    started: bool,
    /// The peer sent close_notify: nothing more will come.
    peer_closed: bool,
    /// `outgoing` holds only post-handshake messages (the TLS 1.3 session tickets sent on
    /// the client's Finished): they wait to leave with the first response (see `process`).
    held: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .finish_non_exhaustive()
    }
}

impl Tls {
    pub fn new(sock: TcpStream, config: Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
        Ok(Tls {
            sock,
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            started: false,
            peer_closed: false,
            held: false,
        })
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Memory held in this connection's own TLS buffers.
    pub fn cost(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity()
    }

    /// Ciphertext is waiting for the socket (and not merely held for the next response).
    pub fn has_pending(&self) -> bool {
        !self.held && self.sent < self.outgoing.len()
    }

    /// The TLS version and cipher suite, once negotiated (for logs).
    pub fn negotiated(&self) -> Option<(rustls::ProtocolVersion, rustls::SupportedCipherSuite)> {
        Some((
            self.conn.protocol_version()?,
            self.conn.negotiated_cipher_suite()?,
        ))
    }

    /// Reads ciphertext once (through `scratch`), runs it through rustls, and puts the
    /// plaintext it carried at the start of `buf`. Handshake replies are written on the way.
    pub fn read(&mut self, buf: &mut [u8], scratch: &mut [u8]) -> Result<Input, TransportError> {
        if self.peer_closed {
            return Ok(Input::Eof);
        }
        // Plaintext never outgrows its ciphertext, so reading at most what `buf` can take
        // (less the part of a record already here) keeps every record's plaintext in `buf`.
        let room = buf
            .len()
            .saturating_sub(self.incoming.len())
            .min(scratch.len());
        let n = loop {
            match self.sock.read(&mut scratch[..room]) {
                Ok(0) => return Ok(Input::Eof),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let drained = n < room;
        if !self.started {
            self.started = true;
            // Not a handshake record but a capital letter: most likely `GET / HTTP/1.1`.
            // Say what went wrong, in its language.
            if scratch[0] != HANDSHAKE_RECORD && scratch[0].is_ascii_uppercase() {
                let _ = self.sock.write(PLAIN_HTTP_ANSWER);
                let _ = self.sock.shutdown(std::net::Shutdown::Write);
                return Err(TransportError::PlainHttp);
            }
        }
        let len = if self.incoming.is_empty() {
            let (len, used) = self.process(&mut scratch[..n], buf)?;
            if used < n {
                self.incoming.extend_from_slice(&scratch[used..n]);
            }
            len
        } else {
            self.incoming.extend_from_slice(&scratch[..n]);
            let mut incoming = std::mem::take(&mut self.incoming);
            let result = self.process(&mut incoming, buf);
            let (len, used) = match result {
                Ok(r) => r,
                Err(e) => {
                    self.incoming = incoming;
                    return Err(e);
                }
            };
            incoming.drain(..used);
            self.incoming = if incoming.is_empty() {
                Vec::new()
            } else {
                incoming
            };
            len
        };
        if self.incoming.len() > 2 * MAX_RECORD {
            // rustls refuses oversized records as it reads their headers; this cannot grow.
            return Err(TransportError::Tls(rustls::Error::General(
                "buffered TLS input past two records".into(),
            )));
        }
        // After close_notify there is no more input, whatever the socket says.
        let drained = drained && !self.peer_closed;
        Ok(Input::Data { len, drained })
    }

    /// Runs rustls over the records in `data`: handshake messages are answered, application
    /// data is copied into `plain`. Returns (plaintext bytes, ciphertext bytes used).
    fn process(
        &mut self,
        data: &mut [u8],
        plain: &mut [u8],
    ) -> Result<(usize, usize), TransportError> {
        let mut used = 0;
        let mut len = 0;
        // Nothing waits for the socket but what may be held: tickets can be held too.
        let quiet = !self.has_pending();
        loop {
            // TLS 1.3 only: a 1.2 server still has its Finished to send when it can read.
            let settled = !self.conn.is_handshaking()
                && self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut data[used..]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    // rustls counts on seeing the bytes it has not discarded again.
                    self.send_alert(&mut data[used + discard..]);
                    return Err(e.into());
                }
            };
            let mut done = false;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record?;
                        let end = len + record.payload.len();
                        // Cannot happen (see `read`), but a plaintext that does not fit must
                        // not be half delivered.
                        if end > plain.len() {
                            return Err(TransportError::Tls(rustls::Error::General(
                                "decrypted record larger than its ciphertext".into(),
                            )));
                        }
                        plain[len..end].copy_from_slice(record.payload);
                        len = end;
                        discard += record.discard;
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => encode(&mut e, &mut self.outgoing)?,
                // Once a TLS 1.3 handshake is done, what rustls sends on its own (the session
                // tickets that follow the client's Finished, a key update's answer) waits
                // for the next response rather than arriving alone. A client that reads on
                // one thread and writes on another (Python's `websockets` does) would
                // otherwise take in the tickets while it sends its upgrade request, a race
                // in CPython's ssl module over one OpenSSL object that can lose the request.
                // Sent with the 101, they come when the client is waiting, not writing.
                ConnectionState::TransmitTlsData(t) if quiet && settled => {
                    self.held = true;
                    t.done();
                }
                ConnectionState::TransmitTlsData(t) => {
                    write_out(&mut self.sock, &mut self.outgoing, &mut self.sent)?;
                    t.done();
                }
                ConnectionState::PeerClosed => self.peer_closed = true,
                // The handshake needs more input, or it is done and every whole record has
                // been read: what is left in `data` is a partial record.
                ConnectionState::BlockedHandshake
                | ConnectionState::WriteTraffic(_)
                | ConnectionState::Closed => done = true,
                // Early data is off (`max_early_data_size` is 0), and later states unknown.
                _ => done = true,
            }
            used += discard;
            if done {
                return Ok((len, used));
            }
        }
    }

    /// Encrypts what `out` holds into records of up to 16 KiB, `BATCH` at a time through the
    /// worker's `scratch`, and writes it; ciphertext the socket does not take stays here.
    /// Returns `Blocked` while any is left, here or in `out`.
    pub fn flush(
        &mut self,
        out: &mut Outbound,
        scratch: &mut Vec<u8>,
    ) -> Result<Flushed, TransportError> {
        // Held tickets go out in one write with the first records below.
        let held = std::mem::take(&mut self.held) && !out.is_empty();
        if !held && !write_out(&mut self.sock, &mut self.outgoing, &mut self.sent)? {
            return Ok(Flushed::Blocked);
        }
        while !out.is_empty() {
            // rustls must be shown the bytes it has not discarded (a handshake message
            // split over records keeps its first part there), never an empty slice.
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let next = match state? {
                ConnectionState::WriteTraffic(mut w) => {
                    scratch.clear();
                    out.take_front(scratch, BATCH);
                    let at = self.outgoing.len();
                    self.outgoing.resize(at + scratch.len() + BATCH_OVERHEAD, 0);
                    let n = match w.encrypt(scratch, &mut self.outgoing[at..]) {
                        Ok(n) => n,
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => {
                            self.outgoing.resize(at + required_size, 0);
                            w.encrypt(scratch, &mut self.outgoing[at..])
                                .map_err(|e| rustls::Error::General(e.to_string()))?
                        }
                        Err(e) => return Err(rustls::Error::General(e.to_string()).into()),
                    };
                    self.outgoing.truncate(at + n);
                    Step::Write
                }
                // A post-handshake message (a session ticket, a key update) goes out first.
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut self.outgoing)?;
                    Step::Again
                }
                ConnectionState::TransmitTlsData(t) => {
                    let all = write_out(&mut self.sock, &mut self.outgoing, &mut self.sent)?;
                    t.done();
                    if all {
                        Step::Again
                    } else {
                        Step::Blocked
                    }
                }
                // Every whole record was read in `read`; one here means that went wrong.
                ConnectionState::ReadTraffic(_) => {
                    return Err(rustls::Error::General("records left unread".into()).into())
                }
                // Not writable (mid-handshake, or closed): the output waits.
                _ => Step::Blocked,
            };
            self.discard_incoming(discard);
            match next {
                Step::Again => continue,
                Step::Blocked => return Ok(Flushed::Blocked),
                Step::Write => {
                    if !write_out(&mut self.sock, &mut self.outgoing, &mut self.sent)? {
                        return Ok(Flushed::Blocked);
                    }
                }
            }
        }
        Ok(Flushed::Empty)
    }

    /// Drops `n` bytes rustls is done with from the front of the partial-record buffer.
    fn discard_incoming(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.incoming.drain(..n);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
    }

    /// Sends close_notify (everything queued is out by now), then ends the TCP write side.
    pub fn shutdown_write(&mut self) {
        let status = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = status.state {
            let mut alert = [0u8; 64];
            if let Ok(n) = w.queue_close_notify(&mut alert) {
                self.outgoing.extend_from_slice(&alert[..n]);
            }
        }
        if !matches!(
            write_out(&mut self.sock, &mut self.outgoing, &mut self.sent),
            Ok(true)
        ) {
            // The alert is best effort: once the write side is shut nothing more can be
            // written, so what the socket did not take is let go rather than kept as output
            // nobody will ever flush.
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    /// After an error rustls may have an alert for the peer; send it, best effort. `rest`
    /// is the input rustls has not discarded.
    fn send_alert(&mut self, rest: &mut [u8]) {
        let status = self.conn.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = status.state {
            if encode(&mut e, &mut self.outgoing).is_ok() {
                let _ = write_out(&mut self.sock, &mut self.outgoing, &mut self.sent);
            }
        }
    }
}

/// What `flush` does after handling one state.
enum Step {
    Again,
    Write,
    Blocked,
}

/// Appends a handshake record rustls has ready to `outgoing`.
fn encode(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    outgoing: &mut Vec<u8>,
) -> Result<(), TransportError> {
    let at = outgoing.len();
    outgoing.resize(at + 4096, 0);
    loop {
        match e.encode(&mut outgoing[at..]) {
            Ok(n) => {
                outgoing.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.resize(at + required_size, 0);
            }
            Err(e) => {
                outgoing.truncate(at);
                return Err(rustls::Error::General(e.to_string()).into());
            }
        }
    }
}

/// Writes `outgoing[*sent..]` as far as the socket takes it. Returns true when all of it is
/// out (and then frees the buffer), false when the socket is full.
fn write_out(sock: &mut TcpStream, outgoing: &mut Vec<u8>, sent: &mut usize) -> io::Result<bool> {
    while *sent < outgoing.len() {
        match sock.write(&outgoing[*sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    *outgoing = Vec::new();
    *sent = 0;
    Ok(true)
}
