//! One connection's WebSocket state machine on bytes: the upgrade, then frames, then the
//! closing handshake. It takes plaintext input and says what must happen ([`Event`]): a
//! response to send, a message for the handler, a pong, a close. No I/O and no sockets, so
//! every transition is unit-tested with byte literals; the worker carries the events out.
//! Runs on the connection's worker thread.

use crate::codec::{self, close_code, CloseFrameError, Decoded, FrameError, Kind};
use crate::config::Config;
use crate::handshake::{self, Credential, Endpoint, Outcome, Page};
use crate::message::{self, Fragmented, MessageError, MessageKind, Step};

use super::deflate::{Agreed, InflateError, Inflater};
use super::input_state::InputState;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a complete upgrade request; a partial one is kept by the caller.
    Handshake,
    /// Upgraded; frames flow.
    Open(Endpoint),
    /// A close frame or an HTTP refusal is queued: input is of no more use and is discarded.
    Closing,
}

/// Why the server closes a connection: the close code and reason it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// Answering the peer's close frame with its own code (RFC 6455 §5.5.1).
    #[error("")]
    Answer(u16),
    #[error("{0}")]
    Frame(FrameError),
    #[error("{0}")]
    Message(MessageError),
    #[error("{0}")]
    CloseFrame(CloseFrameError),
    /// A published message did not fit the subscriber's outbound bound.
    #[error("slow consumer")]
    SlowConsumer,
    /// Output stayed over its bound past the backpressure timeout.
    #[error("backpressure timeout")]
    Backpressure,
    /// A partial frame or fragmented message took longer than the message timeout.
    #[error("message timeout")]
    MessageTimeout,
    #[error("idle timeout")]
    Idle,
    #[error("server shutting down")]
    Shutdown,
    /// Shutting down for a restart (`--reuse-port`): another process takes over.
    #[error("server restarting")]
    Restart,
    /// Auth refused the connection's token (the reason says its class, never the token),
    /// or no `connect` came in time.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The token expired and no `refresh` replaced it.
    #[error("token expired")]
    TokenExpired,
    /// The admin API disconnected this user.
    #[error("disconnected")]
    Disconnected,
    /// Sent faster than its rate limit (`--rate-limit-policy close`).
    #[error("rate limit exceeded")]
    RateLimited,
}

impl CloseReason {
    /// The close code on the wire.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Answer(code) => *code,
            CloseReason::Frame(e) => e.close_code(),
            CloseReason::Message(e) => e.close_code(),
            CloseReason::CloseFrame(e) => e.close_code(),
            CloseReason::SlowConsumer
            | CloseReason::Backpressure
            | CloseReason::MessageTimeout
            | CloseReason::RateLimited => close_code::POLICY,
            CloseReason::Idle | CloseReason::Shutdown => close_code::GOING_AWAY,
            CloseReason::Restart => close_code::SERVICE_RESTART,
            CloseReason::Unauthorized(_) => close_code::UNAUTHORIZED,
            CloseReason::TokenExpired => close_code::TOKEN_EXPIRED,
            CloseReason::Disconnected => close_code::DISCONNECTED,
        }
    }

    /// A violation of the protocol by the peer (counted as such), as opposed to a policy.
    pub fn is_protocol_error(&self) -> bool {
        matches!(
            self,
            CloseReason::Frame(_) | CloseReason::Message(_) | CloseReason::CloseFrame(_)
        )
    }

    /// The close frame's payload: the code, then the reason cut to fit a control frame.
    pub fn payload(&self) -> Vec<u8> {
        codec::close_payload(self.code(), &self.to_string())
    }
}

/// What the input at the front of the buffer calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'b> {
    /// Not enough bytes for the next request head or frame; nothing was used.
    NeedMore,
    /// Upgraded: send `response`; frames follow. With auth on, the worker first checks
    /// `credential`, and may still refuse ([`Machine::refuse_upgrade`]).
    Upgraded {
        endpoint: Endpoint,
        response: Vec<u8>,
        credential: Credential<'b>,
    },
    /// Refused: send `response` (an HTTP error) and close. `status` and `reason` are for
    /// counters and logs.
    Refused {
        response: Vec<u8>,
        status: u16,
        reason: &'static str,
    },
    /// A plain HTTP GET of a page (health check, console, stats): answer it and close.
    Page(Page),
    /// A whole message that lies in one frame, unmasked in place.
    Message {
        kind: MessageKind,
        data: &'b [u8],
    },
    /// A whole compressed message in one frame: inflate it ([`Machine::inflate`]).
    Compressed {
        kind: MessageKind,
        data: &'b [u8],
    },
    /// A fragmented message just completed (still compressed if `compressed`).
    Assembled(Box<Fragmented>),
    /// A fragment was stored; the message is not complete yet.
    Fragment,
    /// Answer with a pong carrying the same payload.
    Ping(&'b [u8]),
    Pong,
    /// The peer's close frame: answer it with this code and close.
    PeerClose(u16),
    /// The peer broke the protocol: close with this reason.
    Fail(CloseReason),
    /// Input after our close, of no use: it was all used up.
    Discarded,
}

/// The state of one connection's protocol. Owns only a fragmented message in progress; an
/// open connection between messages holds nothing on the heap.
#[derive(Debug)]
pub struct Machine {
    phase: Phase,
    /// permessage-deflate was negotiated at the upgrade.
    deflate: Option<Agreed>,
    /// A fragmented message in progress (only while its frames arrive).
    partial: Option<Box<Fragmented>>,
    /// Tick at which the current partial frame or fragmented message began ([`NEVER`] on a
    /// message boundary); bounds how long a half-sent message may pin memory. Kept and
    /// read by the worker (a partial frame lies in its buffer, not here); it lives here
    /// because the machine's padding has room for it.
    ///
    /// [`NEVER`]: super::NEVER
    pub partial_since: u32,
    /// The upgrade completed: this is (or was, while closing) a WebSocket. In the padding,
    /// like `partial_since`.
    upgraded: bool,
    /// Whether the worker reads this connection's input, holds it back, or resumes it; see
    /// [`InputState`]. Kept by the worker; here because the machine's padding has room for
    /// its one byte (the connection's own fields have none).
    pub input: InputState,
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}

impl Machine {
    pub fn new() -> Self {
        Machine {
            phase: Phase::Handshake,
            deflate: None,
            partial: None,
            partial_since: super::NEVER,
            upgraded: false,
            input: InputState::Reading,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// permessage-deflate, if the upgrade negotiated it.
    pub fn deflate(&self) -> Option<Agreed> {
        self.deflate
    }

    /// Upgraded to the JSON protocol, and not closing.
    pub fn is_json(&self) -> bool {
        self.phase == Phase::Open(Endpoint::Json)
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// The upgrade completed (the connection may be closing since).
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// In the middle of a fragmented message.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// How many more bytes `partial`, what a [`Event::NeedMore`] left unused, needs to be a
    /// whole frame (the decoder's own `Decoded::Incomplete { need }`), so that the caller,
    /// which keeps it, copies in exactly those; 0 while that is not known (a split header, a
    /// request head): then it takes all there is. `partial` is not changed.
    pub fn need(&self, partial: &[u8], cfg: &Config) -> usize {
        if !self.is_open() {
            return 0;
        }
        codec::need(partial, cfg.max_frame_size, self.deflate.is_some()).unwrap_or(0)
    }

    /// Heap memory held for a fragmented message.
    pub fn partial_cost(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.capacity())
    }

    /// The worker refused an upgrade the request itself was fit for (its token): the
    /// connection never was a WebSocket, and closes after the HTTP refusal is out.
    pub fn refuse_upgrade(&mut self) {
        self.upgraded = false;
        self.deflate = None;
        self.close();
    }

    /// Stops all traffic but what is queued: from now on input is discarded. Drops a message
    /// in progress.
    pub fn close(&mut self) {
        self.phase = Phase::Closing;
        self.partial = None;
    }

    /// Decodes what the front of `buf` holds: returns how many bytes it used and what they
    /// call for. Frames are unmasked in place, and `Message` borrows its payload from `buf`.
    pub fn next<'b>(&mut self, buf: &'b mut [u8], cfg: &Config) -> (usize, Event<'b>) {
        match self.phase {
            Phase::Handshake => self.upgrade(buf, cfg),
            Phase::Open(_) => self.frame(buf, cfg),
            Phase::Closing => (buf.len(), Event::Discarded),
        }
    }

    fn upgrade<'b>(&mut self, buf: &'b [u8], cfg: &Config) -> (usize, Event<'b>) {
        match handshake::parse(
            buf,
            &cfg.allowed_origins,
            cfg.permessage_deflate,
            cfg.console,
        ) {
            Outcome::Partial => (0, Event::NeedMore),
            Outcome::Upgrade {
                endpoint,
                response,
                consumed,
                deflate,
                credential,
            } => {
                self.phase = Phase::Open(endpoint);
                self.upgraded = true;
                self.deflate = deflate;
                let event = Event::Upgraded {
                    endpoint,
                    response,
                    credential,
                };
                (consumed, event)
            }
            Outcome::Page(page) => {
                self.close();
                (buf.len(), Event::Page(page))
            }
            Outcome::Reject {
                response,
                status,
                reason,
            } => {
                self.close();
                let refused = Event::Refused {
                    response,
                    status,
                    reason,
                };
                (buf.len(), refused)
            }
        }
    }

    fn frame<'b>(&mut self, buf: &'b mut [u8], cfg: &Config) -> (usize, Event<'b>) {
        if buf.is_empty() {
            return (0, Event::NeedMore);
        }
        let (frame, used) =
            match codec::decode_with(buf, cfg.max_frame_size, self.deflate.is_some()) {
                Ok(Decoded::Incomplete { .. }) => return (0, Event::NeedMore),
                Ok(Decoded::Frame { frame, used }) => (frame, used),
                Err(e) => return self.fail(buf.len(), CloseReason::Frame(e)),
            };
        let payload = &buf[frame.payload.clone()];
        let event = match frame.kind {
            Kind::Ping => Event::Ping(payload),
            Kind::Pong => Event::Pong,
            Kind::Close => match codec::check_close(payload) {
                Ok(code) => {
                    self.close();
                    Event::PeerClose(code)
                }
                Err(e) => return self.fail(buf.len(), CloseReason::CloseFrame(e)),
            },
            Kind::Text | Kind::Binary | Kind::Continuation => {
                let max = cfg.max_message_size;
                let zipped = frame.rsv1;
                match message::feed(
                    &mut self.partial,
                    frame.kind,
                    frame.fin,
                    zipped,
                    payload,
                    max,
                ) {
                    Ok(Step::Whole(kind)) if zipped => Event::Compressed {
                        kind,
                        data: payload,
                    },
                    Ok(Step::Whole(kind)) => Event::Message {
                        kind,
                        data: payload,
                    },
                    Ok(Step::Completed) => {
                        Event::Assembled(self.partial.take().expect("a completed message"))
                    }
                    Ok(Step::Pending) => Event::Fragment,
                    Err(e) => return self.fail(buf.len(), CloseReason::Message(e)),
                }
            }
        };
        (used, event)
    }

    /// Inflates a compressed message into `out` with the worker's inflater and checks what
    /// comes out: past `--max-message-size` it is 1009 (inflating stops there), invalid
    /// DEFLATE data or invalid UTF-8 in a text message 1007. On an error the connection is
    /// closing and the reason is what to close with.
    pub fn inflate(
        &mut self,
        inflater: &mut Inflater,
        kind: MessageKind,
        data: &[u8],
        cfg: &Config,
        out: &mut Vec<u8>,
    ) -> Result<(), CloseReason> {
        let err = match inflater.inflate(data, cfg.max_message_size, out) {
            Ok(()) if kind == MessageKind::Text && simdutf8::basic::from_utf8(out).is_err() => {
                MessageError::InvalidUtf8
            }
            Ok(()) => return Ok(()),
            Err(InflateError::TooBig) => MessageError::TooBig,
            Err(InflateError::Invalid) => MessageError::BadCompression,
        };
        self.close();
        Err(CloseReason::Message(err))
    }

    fn fail<'b>(&mut self, len: usize, why: CloseReason) -> (usize, Event<'b>) {
        self.close();
        (len, Event::Fail(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::client_frame;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn cfg() -> Config {
        Config {
            max_message_size: 100,
            max_frame_size: 100,
            ..Config::default()
        }
    }

    const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn open() -> Machine {
        let mut m = Machine::new();
        let mut up = UPGRADE.to_vec();
        let (used, e) = m.next(&mut up, &cfg());
        assert_eq!(used, UPGRADE.len());
        assert!(matches!(
            e,
            Event::Upgraded {
                endpoint: Endpoint::Json,
                ..
            }
        ));
        m
    }

    #[test]
    fn the_upgrade_waits_for_the_whole_head_then_opens() {
        let mut m = Machine::new();
        let mut part = UPGRADE[..20].to_vec();
        assert_eq!(m.next(&mut part, &cfg()), (0, Event::NeedMore));
        assert_eq!(m.phase(), Phase::Handshake);
        let m = open();
        assert!(m.is_json());
    }

    #[test]
    fn a_refused_upgrade_and_a_health_check_close_the_connection() {
        let mut m = Machine::new();
        let mut bad = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let len = bad.len();
        match m.next(&mut bad, &cfg()) {
            (n, Event::Refused { status, .. }) => assert_eq!((n, status), (len, 404)),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.phase(), Phase::Closing);
        let mut h = Machine::new();
        let mut req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert!(matches!(
            h.next(&mut req, &cfg()).1,
            Event::Page(Page::Health)
        ));
        assert_eq!(h.phase(), Phase::Closing);
    }

    #[test]
    fn frames_become_messages_pings_and_closes() {
        let mut m = open();
        let mut f = client_frame(0x81, b"hello", MASK);
        let n = f.len();
        assert_eq!(
            m.next(&mut f, &cfg()),
            (
                n,
                Event::Message {
                    kind: MessageKind::Text,
                    data: b"hello"
                }
            )
        );
        let mut ping = client_frame(0x89, b"p", MASK);
        assert_eq!(m.next(&mut ping, &cfg()).1, Event::Ping(b"p"));
        let mut pong = client_frame(0x8A, b"", MASK);
        assert_eq!(m.next(&mut pong, &cfg()).1, Event::Pong);
        let mut half = client_frame(0x82, b"abcdef", MASK);
        half.truncate(5);
        assert_eq!(m.next(&mut half, &cfg()), (0, Event::NeedMore));
        assert_eq!(
            m.need(&half, &cfg()),
            0,
            "no mask yet, so the length is not known"
        );
        let mut half = client_frame(0x82, b"abcdef", MASK);
        half.truncate(8);
        assert_eq!(m.next(&mut half, &cfg()), (0, Event::NeedMore));
        assert_eq!(
            m.need(&half, &cfg()),
            4,
            "6 header bytes and 2 of the 6 payload bytes"
        );
        assert_eq!(
            Machine::new().need(&half, &cfg()),
            0,
            "not upgraded: a request head"
        );
        let mut close = client_frame(0x88, &3000u16.to_be_bytes(), MASK);
        assert_eq!(m.next(&mut close, &cfg()).1, Event::PeerClose(3000));
        assert_eq!(m.phase(), Phase::Closing);
        let mut after = client_frame(0x81, b"late", MASK);
        let len = after.len();
        assert_eq!(m.next(&mut after, &cfg()), (len, Event::Discarded));
    }

    #[test]
    fn fragments_are_reassembled_and_hold_memory_only_meanwhile() {
        let mut m = open();
        let mut first = client_frame(0x01, b"frag", MASK);
        assert_eq!(m.next(&mut first, &cfg()).1, Event::Fragment);
        assert!(m.in_message() && m.partial_cost() >= 4);
        let mut last = client_frame(0x80, b"ment", MASK);
        match m.next(&mut last, &cfg()).1 {
            Event::Assembled(f) => {
                assert_eq!(f.kind, MessageKind::Text);
                assert_eq!(f.data, b"fragment");
            }
            other => panic!("{other:?}"),
        }
        assert!(!m.in_message());
        assert_eq!(m.partial_cost(), 0);
    }

    #[test]
    fn violations_fail_with_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x01, b'a'], 1002),                        // unmasked
            (client_frame(0xC1, b"a", MASK), 1002),                // RSV1
            (client_frame(0x83, b"a", MASK), 1002),                // reserved opcode
            (client_frame(0x82, &[0; 101], MASK), 1009),           // frame over the limit
            (client_frame(0x81, &[0xFF], MASK), 1007),             // invalid UTF-8
            (client_frame(0x80, b"x", MASK), 1002),                // continuation out of nowhere
            (client_frame(0x88, &[3], MASK), 1002),                // one-byte close
            (client_frame(0x88, &[0x03, 0xE8, 0xFF], MASK), 1007), // close reason not UTF-8
        ];
        for (mut bytes, code) in cases {
            let mut m = open();
            let len = bytes.len();
            match m.next(&mut bytes, &cfg()) {
                (n, Event::Fail(why)) => {
                    assert_eq!((n, why.code()), (len, code), "{why:?}");
                    assert!(why.is_protocol_error());
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(m.phase(), Phase::Closing);
        }
        let mut m = open();
        let mut a = client_frame(0x02, &[0; 60], MASK);
        assert_eq!(m.next(&mut a, &cfg()).1, Event::Fragment);
        let mut b = client_frame(0x80, &[0; 60], MASK);
        match m.next(&mut b, &cfg()).1 {
            Event::Fail(why) => assert_eq!(why, CloseReason::Message(MessageError::TooBig)),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.partial_cost(), 0, "closing drops the message in progress");
    }

    #[test]
    fn empty_continuations_are_a_message_that_grows_until_it_is_too_big() {
        // At a 100-byte limit: an empty first frame and 15 empty continuations count 96
        // (6 each); the 16th would make 102 and fails the connection with 1009.
        let mut m = open();
        let mut first = client_frame(0x01, b"", MASK);
        assert_eq!(m.next(&mut first, &cfg()).1, Event::Fragment);
        for i in 0..15 {
            let mut empty = client_frame(0x00, b"", MASK);
            assert_eq!(empty.len(), 6);
            assert_eq!(
                m.next(&mut empty, &cfg()),
                (6, Event::Fragment),
                "frame {i}"
            );
        }
        let mut empty = client_frame(0x00, b"", MASK);
        match m.next(&mut empty, &cfg()).1 {
            Event::Fail(why) => assert_eq!(why.code(), 1009),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.phase(), Phase::Closing);
    }

    #[test]
    fn close_reasons_carry_their_codes_and_text() {
        assert_eq!(CloseReason::SlowConsumer.code(), 1008);
        assert_eq!(CloseReason::Idle.code(), 1001);
        assert_eq!(CloseReason::Answer(4000).code(), 4000);
        let p = CloseReason::MessageTimeout.payload();
        assert_eq!(&p[..2], &1008u16.to_be_bytes());
        assert_eq!(&p[2..], b"message timeout");
        assert_eq!(CloseReason::Answer(1000).payload(), 1000u16.to_be_bytes());
        assert!(!CloseReason::Backpressure.is_protocol_error());
    }
}
