//! One client WebSocket connection (buffers, handshake, frame I/O) and the per-thread mio
//! worker that drives many of them edge-triggered, over plain TCP or TLS (`transport`).

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use crate::clock::{self, Rng};
use crate::credentials::{self, Credentials, Presented};
use crate::deflate;
use crate::frame::{self, FrameError};
use crate::handshake::{self, Response};
use crate::net::{self, Failure, Target};
use crate::tls::Negotiated;
use crate::transport::{self, Transport};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent (after TLS, for wss), waiting for the 101.
    Handshaking,
    /// 101 received and `{"op":"connect"}` sent (`--token-via connect`), waiting for its `ok`;
    /// the connection is not connected yet.
    Authenticating,
    /// Connected: the scenario's traffic flows.
    Open,
    Closed,
}

/// Why a connection stopped.
#[derive(Debug)]
pub enum End {
    Io(io::Error),
    Eof,
    BadHandshake(String),
    Protocol(FrameError),
    /// The server sent a close frame (we already queued our reply) with this code and reason.
    CloseFrame {
        code: Option<u16>,
        reason: String,
    },
    /// The server refused the token: a 401 on the upgrade, for this reason.
    Unauthorized(String),
    /// The `connect` request was answered with something other than its `ok`.
    ConnectReply(String),
    /// The TLS session failed: a certificate that does not verify, an alert, a bad record.
    Tls(rustls::Error),
    /// A compressed message that does not inflate (or inflates past the size limit).
    Inflate(String),
}

impl End {
    /// An I/O error from the transport, told apart from the TLS error it may carry.
    fn from_io(e: io::Error) -> End {
        match transport::tls_error(&e) {
            Some(tls) => End::Tls(tls.clone()),
            None => End::Io(e),
        }
    }

    /// Failure category when this ends a connection that never reached Open.
    fn failure(&self) -> Failure {
        match self {
            End::Io(e) => net::classify(e),
            End::CloseFrame {
                code: Some(CLOSE_UNAUTHORIZED),
                ..
            }
            | End::Unauthorized(_) => Failure::Unauthorized,
            End::Eof | End::CloseFrame { .. } => Failure::Reset,
            End::BadHandshake(_) | End::ConnectReply(_) => Failure::BadHandshake,
            End::Protocol(_) | End::Inflate(_) => Failure::Other,
            End::Tls(_) => Failure::Tls,
        }
    }

    fn describe(&self) -> String {
        match self {
            End::Io(e) => format!("io: {e}"),
            End::Eof => "eof".into(),
            End::BadHandshake(s) => format!("bad handshake: {s}"),
            End::Protocol(e) => format!("protocol: {e}"),
            End::CloseFrame { code: None, .. } => "close frame".into(),
            End::CloseFrame {
                code: Some(c),
                reason,
            } => format!("close frame {c} {reason:?}"),
            End::Unauthorized(why) => format!("401: {why}"),
            End::ConnectReply(s) => s.clone(),
            End::Tls(e) => format!("tls: {e}"),
            End::Inflate(e) => format!("permessage-deflate: {e}"),
        }
    }

    /// Why the server refused the token, when it did: the 401's reason or the 4001's.
    fn unauthorized(&self) -> Option<&str> {
        match self {
            End::Unauthorized(why) => Some(why),
            End::CloseFrame {
                code: Some(CLOSE_UNAUTHORIZED),
                reason,
            } => Some(reason),
            _ => None,
        }
    }
}

/// corecast's close code for a refused `connect` (and for a pending connection's timeout).
const CLOSE_UNAUTHORIZED: u16 = 4001;

/// Distinct refusal reasons kept in [`ConnStats::unauthorized_reasons`]; the rest are
/// counted under "other". corecast's reasons are a handful of fixed classes.
const MAX_REASONS: usize = 16;

pub struct Conn<S> {
    /// `None` once the connection ended.
    transport: Option<Transport>,
    pub state: State,
    /// When connect() was started, for connect latency and timeouts.
    pub started_ns: u64,
    /// When the TCP connection was seen established, for the TLS handshake time.
    connected_ns: u64,
    /// Fixed per connection: RFC 6455 only requires masking, and a fixed key lets us pre-build.
    pub mask: [u8; 4],
    /// Seed of this connection's Sec-WebSocket-Key, to check the server's accept value.
    key: u128,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Ad-hoc outgoing bytes (handshake, pong, close, publishes); written at frame boundaries.
    out: Vec<u8>,
    out_pos: usize,
    /// Pre-built masked frame repeated several times, so `n` queued sends are one write of a
    /// prefix of this buffer with no copying or masking on the hot path.
    rep: Vec<u8>,
    frame_len: usize,
    rep_phase: usize,
    rep_pending: usize,
    /// Whether the request offered permessage-deflate.
    offered_deflate: bool,
    /// What the server agreed to; data frames are then compressed both ways.
    deflate: Option<Box<Deflate>>,
    /// Bytes received after TLS (the handshake reply and frames as they came over the wire)
    /// and messages that arrived compressed, not yet added to the worker's [`ConnStats`].
    bytes_in: u64,
    inflated: u64,
    /// `--token-via connect`: the token line to send in a `connect` once the 101 arrives.
    connect_token: Option<u32>,
    pub ext: S,
}

/// A connection's permessage-deflate terms.
struct Deflate {
    agreed: deflate::Agreed,
    /// Present when the server keeps its compression context across messages.
    inflater: Option<Box<flate2::Decompress>>,
}

impl<S> Conn<S> {
    /// Appends a masked frame to the ad-hoc output queue (call [`Worker::flush`] after); a
    /// data frame is compressed if permessage-deflate was agreed.
    pub fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        encode(&mut self.out, &self.deflate, opcode, payload, self.mask);
    }

    /// Whether the server agreed to permessage-deflate.
    pub fn deflated(&self) -> bool {
        self.deflate.is_some()
    }

    /// Installs the frame that [`Conn::queue_repeated`] sends; `copies` bounds one write.
    pub fn set_repeated(&mut self, opcode: u8, payload: &[u8], copies: usize) {
        self.rep.clear();
        encode(&mut self.rep, &self.deflate, opcode, payload, self.mask);
        self.frame_len = self.rep.len();
        for _ in 1..copies.max(1) {
            self.rep.extend_from_within(..self.frame_len);
        }
        self.rep_phase = 0;
        self.rep_pending = 0;
    }

    /// Queues `n` more copies of the pre-built frame.
    #[inline]
    pub fn queue_repeated(&mut self, n: usize) {
        self.rep_pending += n * self.frame_len;
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Writes queued bytes until done or WouldBlock; the next WRITABLE edge resumes.
    fn flush(&mut self) -> io::Result<()> {
        let Some(transport) = self.transport.as_mut() else {
            return Ok(());
        };
        loop {
            let out_left = self.out.len() - self.out_pos;
            let (buf, from_rep) = if self.rep_phase != 0 {
                // Mid-frame in the repeated stream: ad-hoc bytes must wait for a frame
                // boundary, otherwise we may run ahead through several frames in one write.
                let mut n = self.rep_pending.min(self.rep.len() - self.rep_phase);
                if out_left > 0 {
                    n = n.min(self.frame_len - self.rep_phase);
                }
                (&self.rep[self.rep_phase..self.rep_phase + n], true)
            } else if out_left > 0 {
                (&self.out[self.out_pos..], false)
            } else if self.rep_pending > 0 {
                (&self.rep[..self.rep_pending.min(self.rep.len())], true)
            } else {
                self.out.clear();
                self.out_pos = 0;
                // TLS records made by a read (handshake replies, alerts) still go out.
                return transport.flush();
            };
            match transport.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) if from_rep => {
                    self.rep_phase = (self.rep_phase + n) % self.frame_len;
                    self.rep_pending -= n;
                }
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes room at the end of the read buffer: compact first, grow only for big frames.
    fn make_room(&mut self) -> Result<(), End> {
        if self.rend < self.rbuf.len() {
            return Ok(());
        }
        if self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
            if self.rend < self.rbuf.len() {
                return Ok(());
            }
        }
        let need = match self.state {
            State::Open => frame::frame_size(&self.rbuf[..self.rend])
                .map_err(End::Protocol)?
                .unwrap_or(0),
            _ => 0,
        };
        let new_len = (self.rbuf.len() * 2).max(need);
        self.rbuf.resize(new_len, 0);
        Ok(())
    }

    /// Reads until WouldBlock or a short read, handling the handshake reply and every complete
    /// frame. Returns whether the connection became Open during this call.
    fn read(
        &mut self,
        creds: Option<&Credentials>,
        mut on_data: impl FnMut(&mut S, u8, &[u8]),
    ) -> Result<bool, End> {
        let mut upgraded = false;
        loop {
            self.make_room()?;
            let space = self.rbuf.len() - self.rend;
            let Some(transport) = self.transport.as_mut() else {
                return Ok(upgraded);
            };
            let short_read_drains = transport.short_read_drains();
            match transport.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => {
                    self.rend += n;
                    self.bytes_in += n as u64;
                    upgraded |= self.process(creds, &mut on_data)?;
                    // A short read means the socket queue was drained; new data will raise a
                    // fresh edge, so skip the extra read that would only return WouldBlock.
                    if n < space && short_read_drains {
                        return Ok(upgraded);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(upgraded),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::from_io(e)),
            }
        }
    }

    /// Handles what arrived: the 101 and the `connect` reply while the connection is not
    /// open yet, then every complete frame. Returns whether it became Open in this call.
    fn process(
        &mut self,
        creds: Option<&Credentials>,
        on_data: &mut impl FnMut(&mut S, u8, &[u8]),
    ) -> Result<bool, End> {
        // One comparison per read; the set-up steps below run only until the connection opens.
        let mut upgraded = false;
        if self.state != State::Open {
            if !self.open_up(creds)? {
                return Ok(false);
            }
            upgraded = true;
        }
        loop {
            let parsed =
                frame::parse_server(&self.rbuf[self.rstart..self.rend], self.deflate.is_some());
            let (f, used) = match parsed {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => return Err(End::Protocol(e)),
            };
            match f.opcode {
                frame::OP_PING => {
                    frame::encode_masked(&mut self.out, true, frame::OP_PONG, f.payload, self.mask)
                }
                frame::OP_PONG => {}
                frame::OP_CLOSE => {
                    let end = close_frame(&mut self.out, self.mask, f.payload);
                    self.rstart += used;
                    return Err(end);
                }
                op if f.compressed => {
                    // corecast sends each message in one frame; reassembling fragmented
                    // messages is more than the load generator needs.
                    if !f.fin {
                        return Err(End::Protocol(FrameError::FragmentedCompressed));
                    }
                    let own = self
                        .deflate
                        .as_mut()
                        .and_then(|d| d.inflater.as_deref_mut());
                    let ext = &mut self.ext;
                    deflate::with_inflated(f.payload, own, frame::MAX_PAYLOAD, |m| {
                        on_data(ext, op, m)
                    })
                    .map_err(End::Inflate)?;
                    self.inflated += 1;
                }
                op => on_data(&mut self.ext, op, f.payload),
            }
            self.rstart += used;
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        Ok(upgraded)
    }

    /// The steps before Open: the 101, then (with `--token-via connect`) the `connect` and its
    /// reply. Returns whether the connection is Open now.
    fn open_up(&mut self, creds: Option<&Credentials>) -> Result<bool, End> {
        if self.state == State::Handshaking {
            let head = &self.rbuf[self.rstart..self.rend];
            match handshake::parse_response(head, self.key, self.offered_deflate) {
                Response::Partial => return Ok(false),
                Response::Unauthorized(why) => return Err(End::Unauthorized(why)),
                Response::Rejected(s) => return Err(End::BadHandshake(s)),
                Response::Upgraded(n, agreed) => {
                    self.deflate = agreed.map(|agreed| {
                        Box::new(Deflate {
                            agreed,
                            inflater: (!agreed.server_no_context_takeover)
                                .then(deflate::own_inflater),
                        })
                    });
                    self.rstart += n;
                    match (self.connect_token.take(), creds) {
                        (Some(line), Some(creds)) => {
                            let req = creds.connect_request(line as usize);
                            self.queue_frame(frame::OP_TEXT, &req);
                            self.state = State::Authenticating;
                        }
                        _ => self.state = State::Open,
                    }
                }
            }
        }
        if self.state == State::Authenticating && !self.await_connect_ok()? {
            return Ok(false);
        }
        Ok(self.state == State::Open)
    }

    /// Reads frames until the reply to `connect`: Open on its `ok`, an error for anything
    /// else (a close 4001 is the server refusing the token). Pings are answered meanwhile.
    fn await_connect_ok(&mut self) -> Result<bool, End> {
        loop {
            let parsed =
                frame::parse_server(&self.rbuf[self.rstart..self.rend], self.deflate.is_some());
            let (f, used) = match parsed {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(false),
                Err(e) => return Err(End::Protocol(e)),
            };
            let verdict = match f.opcode {
                frame::OP_PING => {
                    frame::encode_masked(&mut self.out, true, frame::OP_PONG, f.payload, self.mask);
                    None
                }
                frame::OP_PONG => None,
                frame::OP_CLOSE => {
                    let end = close_frame(&mut self.out, self.mask, f.payload);
                    self.rstart += used;
                    return Err(end);
                }
                _ if f.compressed => {
                    let own = self
                        .deflate
                        .as_mut()
                        .and_then(|d| d.inflater.as_deref_mut());
                    let mut v = None;
                    deflate::with_inflated(f.payload, own, frame::MAX_PAYLOAD, |m| {
                        v = Some(credentials::connect_reply(m))
                    })
                    .map_err(End::Inflate)?;
                    v
                }
                _ => Some(credentials::connect_reply(f.payload)),
            };
            self.rstart += used;
            match verdict {
                None => {}
                Some(Ok(())) => {
                    self.state = State::Open;
                    return Ok(true);
                }
                Some(Err(why)) => return Err(End::ConnectReply(why)),
            }
        }
    }
}

/// What a close frame with `payload` says; queues the reply to it on `out` (the status code
/// back, as RFC 6455 5.5.1 suggests).
fn close_frame(out: &mut Vec<u8>, mask: [u8; 4], payload: &[u8]) -> End {
    let code = &payload[..payload.len().min(2)];
    frame::encode_masked(out, true, frame::OP_CLOSE, code, mask);
    End::CloseFrame {
        code: (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
        reason: String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned(),
    }
}

/// Appends one masked frame; text and binary frames compressed (RSV1) under `deflate`.
fn encode(
    out: &mut Vec<u8>,
    deflate: &Option<Box<Deflate>>,
    opcode: u8,
    payload: &[u8],
    mask: [u8; 4],
) {
    match deflate {
        Some(d) if matches!(opcode, frame::OP_TEXT | frame::OP_BINARY) => {
            deflate::with_compressed(payload, d.agreed.client_window_bits, |z| {
                let at = out.len();
                frame::encode_masked(out, true, opcode, z, mask);
                out[at] |= 0x40;
            })
        }
        _ => frame::encode_masked(out, true, opcode, payload, mask),
    }
}

/// Scenario callbacks invoked by [`Worker::poll`].
pub trait Handler<S> {
    /// The 101 arrived; the connection can send.
    fn on_open(&mut self, _conn: &mut Conn<S>, _now: u64) {}
    /// One data frame (text, binary or continuation).
    fn on_data(&mut self, ext: &mut S, opcode: u8, payload: &[u8], now: u64);
    /// After a read turn on an open connection: queue follow-up sends here (one write).
    fn after_read(&mut self, _conn: &mut Conn<S>, _now: u64) {}
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Failures {
    /// The TCP connection was refused (nothing listening, or a full backlog).
    pub refused: u64,
    /// The server refused the token: HTTP 401 on the upgrade, or close 4001 after `connect`.
    pub unauthorized: u64,
    pub reset: u64,
    pub timeout: u64,
    pub bad_handshake: u64,
    pub tls: u64,
    pub other: u64,
}

impl Failures {
    pub fn add(&mut self, f: Failure) {
        match f {
            Failure::Refused => self.refused += 1,
            Failure::Unauthorized => self.unauthorized += 1,
            Failure::Reset => self.reset += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::BadHandshake => self.bad_handshake += 1,
            Failure::Tls => self.tls += 1,
            Failure::Other => self.other += 1,
        }
    }

    pub fn merge(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.unauthorized += o.unauthorized;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.bad_handshake += o.bad_handshake;
        self.tls += o.tls;
        self.other += o.other;
    }

    pub fn total(&self) -> u64 {
        self.refused
            + self.unauthorized
            + self.reset
            + self.timeout
            + self.bad_handshake
            + self.tls
            + self.other
    }
}

/// Per-thread connection accounting, merged by the main thread at the end.
pub struct ConnStats {
    pub ok: u64,
    pub failed: Failures,
    /// TCP connect start -> 101 received, microseconds (TLS handshake included).
    pub connect_us: Histogram<u64>,
    /// TCP established -> TLS handshake finished, microseconds; empty for ws://.
    pub tls_handshake_us: Histogram<u64>,
    /// What the first TLS handshake on this thread negotiated (all share one config).
    pub tls: Option<Negotiated>,
    /// Open connections that later ended (server close, reset, protocol error).
    pub dropped: u64,
    /// Connections whose server agreed to permessage-deflate.
    pub deflate: u64,
    /// Bytes received on every connection (after TLS), and messages that came compressed.
    pub bytes_in: u64,
    pub inflated: u64,
    /// Refused tokens by the server's reason ("token expired", "bad signature", ...).
    pub unauthorized_reasons: BTreeMap<String, u64>,
    /// First few distinct problems, for the human summary.
    pub samples: Vec<String>,
}

impl ConnStats {
    pub fn new() -> Self {
        ConnStats {
            ok: 0,
            failed: Failures::default(),
            connect_us: crate::report::new_hist(),
            tls_handshake_us: crate::report::new_hist(),
            tls: None,
            dropped: 0,
            deflate: 0,
            bytes_in: 0,
            inflated: 0,
            unauthorized_reasons: BTreeMap::new(),
            samples: Vec::new(),
        }
    }

    /// Counts one refused token under its reason (the first [`MAX_REASONS`] distinct ones).
    fn unauthorized(&mut self, why: &str, n: u64) {
        let known = self.unauthorized_reasons.contains_key(why);
        let key = if known || self.unauthorized_reasons.len() < MAX_REASONS {
            why
        } else {
            "other"
        };
        *self
            .unauthorized_reasons
            .entry(key.to_string())
            .or_insert(0) += n;
    }

    pub fn note(&mut self, s: String) {
        if self.samples.len() < 8 && !self.samples.contains(&s) {
            self.samples.push(s);
        }
    }

    pub fn merge(&mut self, o: &ConnStats) {
        self.ok += o.ok;
        self.failed.merge(&o.failed);
        let _ = self.connect_us.add(&o.connect_us);
        let _ = self.tls_handshake_us.add(&o.tls_handshake_us);
        if self.tls.is_none() {
            self.tls = o.tls.clone();
        }
        self.dropped += o.dropped;
        self.deflate += o.deflate;
        self.bytes_in += o.bytes_in;
        self.inflated += o.inflated;
        for (why, n) in &o.unauthorized_reasons {
            self.unauthorized(why, *n);
        }
        for s in &o.samples {
            self.note(s.clone());
        }
    }
}

/// Owns a mio Poll and a share of the connections; everything runs on one thread.
pub struct Worker<S> {
    poll: Poll,
    events: Events,
    pub conns: Vec<Conn<S>>,
    pub stats: ConnStats,
    /// Connections still connecting or handshaking.
    pub pending: usize,
    /// Connections currently open.
    pub open: usize,
    target: Target,
    src_ips: usize,
    rbuf_cap: usize,
    rng: Rng,
    ready: Vec<(usize, bool)>,
}

impl<S> Worker<S> {
    pub fn new(target: &Target, src_ips: usize, rbuf_cap: usize, seed: u64) -> io::Result<Self> {
        Ok(Worker {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            stats: ConnStats::new(),
            pending: 0,
            open: 0,
            target: target.clone(),
            src_ips,
            rbuf_cap: rbuf_cap.max(256),
            rng: Rng::new(seed),
            ready: Vec::with_capacity(1024),
        })
    }

    /// Starts connecting; `global_idx` picks the source IP. Immediate failures are counted.
    pub fn connect(&mut self, path: &str, global_idx: usize, ext: S) -> Option<usize> {
        let now = clock::now_ns();
        let stream = match net::connect(self.target.dst, net::src_ip(global_idx, self.src_ips)) {
            Ok(s) => s,
            Err(e) => {
                self.stats.failed.add(net::classify(&e));
                self.stats.note(format!("connect: {e}"));
                return None;
            }
        };
        let mut transport = match &self.target.tls {
            None => Transport::Plain(stream),
            Some(tls) => match tls.session() {
                Ok(session) => Transport::Tls {
                    tcp: stream,
                    session: Box::new(session),
                    reported: false,
                },
                Err(e) => {
                    self.stats.failed.add(Failure::Tls);
                    self.stats.note(format!("tls: {e}"));
                    return None;
                }
            },
        };
        let idx = self.conns.len();
        if let Err(e) = self.poll.registry().register(
            transport.tcp_mut(),
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.stats.failed.add(Failure::Other);
            self.stats.note(format!("register: {e}"));
            return None;
        }
        let mut out = Vec::with_capacity(256);
        let key = ((self.rng.next_u64() as u128) << 64) | self.rng.next_u64() as u128;
        let presented = self
            .target
            .credentials
            .as_ref()
            .map(|c| c.presented(global_idx));
        let (query_path, bearer, connect_token) = match &presented {
            None => (None, None, None),
            Some(Presented::Header(t)) => (None, Some(*t), None),
            Some(Presented::Query(q)) => (Some(credentials::path_with_query(path, q)), None, None),
            Some(Presented::Connect(line)) => (None, None, Some(*line as u32)),
        };
        let path = query_path.as_deref().unwrap_or(path);
        handshake::write_request(
            &mut out,
            &self.target.host,
            path,
            key,
            self.target.deflate,
            bearer,
        );
        let mask = (self.rng.next_u64() as u32).to_ne_bytes();
        self.conns.push(Conn {
            transport: Some(transport),
            state: State::Connecting,
            started_ns: now,
            connected_ns: now,
            mask,
            key,
            rbuf: vec![0; self.rbuf_cap],
            rstart: 0,
            rend: 0,
            out,
            out_pos: 0,
            rep: Vec::new(),
            frame_len: 1,
            rep_phase: 0,
            rep_pending: 0,
            offered_deflate: self.target.deflate,
            deflate: None,
            bytes_in: 0,
            inflated: 0,
            connect_token,
            ext,
        });
        self.pending += 1;
        Some(idx)
    }

    /// Waits up to `timeout` for events and drives the ready connections.
    pub fn poll<H: Handler<S>>(&mut self, timeout: Duration, h: &mut H) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = clock::now_ns();
        // Copy the ready list out so `drive` can borrow `self` mutably; the scratch vector is
        // reused, so this does not allocate after warm-up.
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|ev| {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            (ev.token().0, readable)
        }));
        for &(idx, readable) in &ready {
            self.drive(idx, readable, h, now);
        }
        self.ready = ready;
        Ok(())
    }

    fn drive<H: Handler<S>>(&mut self, idx: usize, readable: bool, h: &mut H, now: u64) {
        let result = self.try_drive(idx, readable, h, now);
        if let Some(c) = self.conns.get_mut(idx) {
            self.stats.bytes_in += std::mem::take(&mut c.bytes_in);
            self.stats.inflated += std::mem::take(&mut c.inflated);
        }
        if let Err(end) = result {
            self.end(idx, end);
        }
    }

    fn try_drive<H: Handler<S>>(
        &mut self,
        idx: usize,
        readable: bool,
        h: &mut H,
        now: u64,
    ) -> Result<(), End> {
        let Some(conn) = self.conns.get_mut(idx) else {
            return Ok(());
        };
        if conn.state == State::Closed {
            return Ok(());
        }
        if conn.state == State::Connecting {
            let stream = conn
                .transport
                .as_ref()
                .expect("connecting conn has a transport")
                .tcp();
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => return Err(End::Io(e)),
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => {
                    conn.state = State::Handshaking;
                    conn.connected_ns = now;
                }
                // Spurious wake-up: still connecting.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(End::Io(e)),
            }
        }
        if readable {
            let creds = self.target.credentials.as_deref();
            let upgraded = conn.read(creds, |ext, op, payload| h.on_data(ext, op, payload, now))?;
            if let Some(negotiated) = conn.transport.as_mut().and_then(|t| t.handshake_finished()) {
                let us = now.saturating_sub(conn.connected_ns) / 1000;
                crate::report::record_us(&mut self.stats.tls_handshake_us, us);
                self.stats.tls.get_or_insert(negotiated);
            }
            if upgraded {
                self.pending -= 1;
                self.open += 1;
                self.stats.ok += 1;
                self.stats.deflate += u64::from(conn.deflated());
                let _ = self
                    .stats
                    .connect_us
                    .record(now.saturating_sub(conn.started_ns) / 1000);
                h.on_open(conn, now);
            }
            if conn.state == State::Open {
                h.after_read(conn, now);
            }
        }
        conn.flush().map_err(End::Io)
    }

    /// Runs `f` on an open connection and flushes what it queued.
    pub fn send(&mut self, idx: usize, f: impl FnOnce(&mut Conn<S>)) {
        let conn = &mut self.conns[idx];
        if conn.state != State::Open {
            return;
        }
        f(conn);
        if let Err(e) = conn.flush() {
            self.end(idx, End::Io(e));
        }
    }

    /// Fails connections that have not completed the handshake within `timeout_ns`.
    pub fn expire(&mut self, now: u64, timeout_ns: u64) {
        if self.pending == 0 {
            return;
        }
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            if matches!(
                c.state,
                State::Connecting | State::Handshaking | State::Authenticating
            ) && now.saturating_sub(c.started_ns) > timeout_ns
            {
                self.end(idx, End::Io(io::ErrorKind::TimedOut.into()));
            }
        }
    }

    fn end(&mut self, idx: usize, end: End) {
        let conn = &mut self.conns[idx];
        match conn.state {
            State::Closed => return,
            State::Connecting | State::Handshaking | State::Authenticating => {
                self.pending -= 1;
                self.stats.failed.add(end.failure());
                if let Some(why) = end.unauthorized() {
                    self.stats.unauthorized(why, 1);
                }
                self.stats.note(end.describe());
            }
            State::Open => {
                self.open -= 1;
                self.stats.dropped += 1;
                self.stats.note(format!("dropped: {}", end.describe()));
                if matches!(end, End::CloseFrame { .. }) {
                    // Best effort: deliver our close reply before the socket goes away.
                    let _ = conn.flush();
                }
            }
        }
        conn.state = State::Closed;
        if let Some(mut t) = conn.transport.take() {
            let _ = self.poll.registry().deregister(t.tcp_mut());
        }
        // Release buffers: a dead connection should not pin memory during long holds.
        conn.rbuf = Vec::new();
        conn.rep = Vec::new();
        conn.out = Vec::new();
    }

    /// Sends a close frame on every open connection (best effort) and drops all sockets.
    pub fn close_all(&mut self) {
        for conn in &mut self.conns {
            if conn.state == State::Open {
                // Drop anything queued so the close frame is not stuck behind data.
                conn.rep_pending = 0;
                if conn.rep_phase != 0 {
                    // A partially written frame cannot be abandoned cleanly; just drop the socket.
                    conn.transport = None;
                } else {
                    conn.out.clear();
                    conn.out_pos = 0;
                    conn.queue_frame(frame::OP_CLOSE, &1000u16.to_be_bytes());
                    let _ = conn.flush();
                    if let Some(t) = conn.transport.as_mut() {
                        t.close();
                    }
                }
            }
            conn.state = State::Closed;
            conn.transport = None;
        }
        self.open = 0;
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

    #[derive(Default)]
    struct Collect {
        got: Vec<(u8, Vec<u8>)>,
        opened: usize,
    }

    impl Handler<()> for Collect {
        fn on_open(&mut self, _c: &mut Conn<()>, _now: u64) {
            self.opened += 1;
        }
        fn on_data(&mut self, _e: &mut (), op: u8, p: &[u8], _now: u64) {
            self.got.push((op, p.to_vec()));
        }
    }

    /// Reads one masked client frame from a blocking socket and unmasks it.
    fn read_client_frame(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        assert!(h[1] & 0x80 != 0, "client frames must be masked");
        let len = match h[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b) as usize
            }
            l => l as usize,
        };
        let mut mask = [0u8; 4];
        s.read_exact(&mut mask).unwrap();
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        frame::apply_mask(&mut p, mask, 0);
        (h[0] & 0x0F, p)
    }

    /// Reads an HTTP request head byte by byte, so nothing after it is consumed.
    fn read_head(s: &mut std::net::TcpStream) -> Vec<u8> {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        head
    }

    /// A well-formed 101 for the request head `head`, computing the accept value the way a
    /// server does (independently of `handshake::expected_accept`).
    fn upgrade_reply(head: &[u8]) -> Vec<u8> {
        use base64::Engine as _;
        let text = std::str::from_utf8(head).unwrap();
        let key = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("request carries a key");
        let mut h = sha1_smol::Sha1::new();
        h.update(key.as_bytes());
        h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(h.digest().bytes());
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes()
    }

    fn pump<H: Handler<()>>(
        w: &mut Worker<()>,
        h: &mut H,
        until: impl Fn(&Worker<()>, &H) -> bool,
    ) {
        for _ in 0..500 {
            if until(w, h) {
                return;
            }
            w.poll(Duration::from_millis(10), h).unwrap();
        }
        panic!("condition not reached");
    }

    #[test]
    fn handshake_ping_pong_data_and_close() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let head = read_head(&mut s);
            assert!(head.starts_with(b"GET /ws HTTP/1.1\r\n"));
            // 101 plus a ping and a text frame in the same segment: leftover bytes are frames.
            let mut resp = upgrade_reply(&head);
            resp.extend_from_slice(&[0x89, 2, b'h', b'i', 0x81, 3, b'a', b'b', b'c']);
            s.write_all(&resp).unwrap();
            assert_eq!(read_client_frame(&mut s), (frame::OP_PONG, b"hi".to_vec()));
            s.write_all(&[0x88, 2, 0x03, 0xE8]).unwrap();
            assert_eq!(
                read_client_frame(&mut s),
                (frame::OP_CLOSE, vec![0x03, 0xE8])
            );
        });
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut w: Worker<()> = Worker::new(&Target::plain(dst), 0, 300, 1).unwrap();
        let mut h = Collect::default();
        w.connect("/ws", 0, ()).unwrap();
        pump(&mut w, &mut h, |w, _| w.stats.dropped == 1);
        server.join().unwrap();
        assert_eq!(h.opened, 1);
        assert_eq!(w.stats.ok, 1);
        assert_eq!(h.got, vec![(frame::OP_TEXT, b"abc".to_vec())]);
        assert_eq!(w.open, 0);
    }

    #[test]
    fn bad_status_is_bad_handshake() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut w: Worker<()> = Worker::new(&Target::plain(dst), 0, 300, 1).unwrap();
        let mut h = Collect::default();
        w.connect("/ws", 0, ()).unwrap();
        pump(&mut w, &mut h, |w, _| w.pending == 0);
        assert_eq!(w.stats.failed.bad_handshake, 1);
        server.join().unwrap();
    }

    /// Echo server over a real socket: exercises batched repeated frames, large frames that
    /// need the read buffer to grow, and partial writes under back-pressure.
    #[test]
    fn repeated_frames_roundtrip_through_echo() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let head = read_head(&mut s);
            s.write_all(&upgrade_reply(&head)).unwrap();
            for _ in 0..40 {
                let (op, p) = read_client_frame(&mut s);
                let mut f = vec![0x80 | op, 127];
                f.extend_from_slice(&(p.len() as u64).to_be_bytes());
                f.extend_from_slice(&p);
                s.write_all(&f).unwrap();
            }
        });
        struct Count(usize, usize);
        impl Handler<()> for Count {
            fn on_data(&mut self, _e: &mut (), op: u8, p: &[u8], _now: u64) {
                assert_eq!(op, frame::OP_BINARY);
                assert!(p.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
                self.0 += 1;
                self.1 = p.len();
            }
        }
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut w: Worker<()> = Worker::new(&Target::plain(dst), 0, 300, 1).unwrap();
        let mut h = Count(0, 0);
        let idx = w.connect("/echo", 0, ()).unwrap();
        pump(&mut w, &mut h, |w, _| w.open == 1);
        let payload: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
        w.send(idx, |c| {
            c.set_repeated(frame::OP_BINARY, &payload, 3);
            c.queue_repeated(40);
        });
        pump(&mut w, &mut h, |_, h| h.0 == 40);
        assert_eq!(h.1, 100_000);
        server.join().unwrap();
    }
}
