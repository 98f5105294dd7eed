//! RFC 6455 frame decoding and encoding over byte slices; no I/O. Runs on worker threads.
//!
//! The decoder works in place on the worker's read buffer: it parses one header straight off
//! the slice, applies the RFC's rules that depend only on that one frame (masking, reserved
//! bits and opcodes, control-frame limits, size limits), unmasks the payload where it lies
//! and hands back its range. Rules that span frames (fragmentation, UTF-8 across fragments)
//! belong to `message.rs`. tungstenite is kept for the handshake only: its `FrameHeader::parse`
//! reads through a `Cursor` and `io::Read`, which cost 3% of a core on the echo profile.

/// The longest server frame header: 2 bytes, plus 8 for a 64-bit length; no mask.
pub const MAX_SERVER_HEADER: usize = 10;

/// Largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// WebSocket close codes corecast sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    /// "Service Restart" (IANA registry): the server is restarting; reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// corecast's own (RFC 6455 §7.4.2 leaves 4000-4999 to applications): the token was
    /// refused, or none came within `--auth-connect-timeout`.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The connection's token expired and no `refresh` replaced it.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// The admin API disconnected the connection's user (`POST /disconnect`).
    pub const DISCONNECTED: u16 = 4003;
}

/// What kind of frame was decoded; reserved opcodes never get this far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Kind {
    pub fn is_control(self) -> bool {
        matches!(self, Kind::Close | Kind::Ping | Kind::Pong)
    }

    /// The opcode nibble on the wire.
    pub fn opcode(self) -> u8 {
        match self {
            Kind::Continuation => 0x0,
            Kind::Text => 0x1,
            Kind::Binary => 0x2,
            Kind::Close => 0x8,
            Kind::Ping => 0x9,
            Kind::Pong => 0xA,
        }
    }
}

/// One decoded client frame. `payload` indexes the buffer passed to [`decode`]; the bytes
/// there are already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed (permessage-deflate). Only ever set
    /// on a text or binary frame of a connection that negotiated it.
    pub rsv1: bool,
    pub payload: std::ops::Range<usize>,
}

/// Why a frame was refused; each maps to the close code the connection must be failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("client frame is not masked")]
    Unmasked,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("reserved opcode")]
    ReservedOpcode,
    #[error("control frame is fragmented or longer than 125 bytes")]
    BadControl,
    #[error("frame of {0} bytes exceeds the frame size limit")]
    TooBig(u64),
}

impl FrameError {
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig(_) => close_code::TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// Result of one decode step.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame; the caller consumes `used` bytes.
    Frame { frame: Frame, used: usize },
    /// Not enough bytes yet. `need`: how many more bytes complete the frame, once its header
    /// is complete (so that the caller, which keeps the partial frame, can copy in exactly
    /// those and no more); 0 while the header itself is incomplete.
    Incomplete { need: usize },
}

/// Decodes the frame at the start of `buf`, unmasking its payload in place.
///
/// `max_frame` bounds the payload of a single frame; the check happens on the header, before
/// any payload is buffered, so an oversized frame never costs memory.
pub fn decode(buf: &mut [u8], max_frame: usize) -> Result<Decoded, FrameError> {
    decode_with(buf, max_frame, false)
}

/// [`decode`] for a connection that negotiated permessage-deflate (`rsv1_allowed`): RSV1 is
/// then allowed on the first frame of a text or binary message, and nowhere else (RFC 7692
/// §6: not on control frames, not on continuation frames).
pub fn decode_with(
    buf: &mut [u8],
    max_frame: usize,
    rsv1_allowed: bool,
) -> Result<Decoded, FrameError> {
    Ok(match peek(buf, max_frame, rsv1_allowed)? {
        Peeked::Incomplete { need } => Decoded::Incomplete { need },
        Peeked::Whole { frame, mask } => {
            unmask(&mut buf[frame.payload.clone()], mask);
            let used = frame.payload.end;
            Decoded::Frame { frame, used }
        }
    })
}

/// How many more bytes the partial frame at the start of `buf` needs: `decode_with`'s
/// `Incomplete { need }` (0 while its header is split), read without touching `buf`. `None`
/// if the frame is whole or invalid, which `decode_with` then says.
pub fn need(buf: &[u8], max_frame: usize, rsv1_allowed: bool) -> Option<usize> {
    match peek(buf, max_frame, rsv1_allowed) {
        Ok(Peeked::Incomplete { need }) => Some(need),
        Ok(Peeked::Whole { .. }) | Err(_) => None,
    }
}

/// What the header at the start of `buf` says, its payload left as it is (masked).
enum Peeked {
    Incomplete { need: usize },
    Whole { frame: Frame, mask: [u8; 4] },
}

/// Reads and checks the header at the start of `buf`: the one parser of frame headers, for
/// [`decode_with`] and [`need`].
fn peek(buf: &[u8], max_frame: usize, rsv1_allowed: bool) -> Result<Peeked, FrameError> {
    let Some(&[b0, b1]) = buf.get(..2) else {
        return Ok(Peeked::Incomplete { need: 0 });
    };
    // Everything but the length is in the first two bytes: refuse a bad frame before its
    // length or mask arrives.
    let fin = b0 & 0x80 != 0;
    let kind = match b0 & 0x0F {
        0x0 => Kind::Continuation,
        0x1 => Kind::Text,
        0x2 => Kind::Binary,
        0x8 => Kind::Close,
        0x9 => Kind::Ping,
        0xA => Kind::Pong,
        _ => return Err(FrameError::ReservedOpcode),
    };
    let rsv1 = b0 & 0x40 != 0;
    let rsv1_ok = rsv1_allowed && matches!(kind, Kind::Text | Kind::Binary);
    if (rsv1 && !rsv1_ok) || b0 & 0x30 != 0 {
        return Err(FrameError::ReservedBits);
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let short = b1 & 0x7F;
    if kind.is_control() && (!fin || short as usize > MAX_CONTROL_PAYLOAD) {
        return Err(FrameError::BadControl);
    }
    let Some((len, header_len)) = payload_len(buf) else {
        return Ok(Peeked::Incomplete { need: 0 });
    };
    // RFC 6455 §5.2: the top bit of a 64-bit length must be 0.
    if len > max_frame as u64 || len >> 63 != 0 {
        return Err(FrameError::TooBig(len));
    }
    let Some(mask) = buf.get(header_len - 4..header_len) else {
        return Ok(Peeked::Incomplete { need: 0 });
    };
    let mask: [u8; 4] = mask.try_into().expect("four bytes");
    let total = header_len + len as usize;
    if buf.len() < total {
        let need = total - buf.len();
        return Ok(Peeked::Incomplete { need });
    }
    let frame = Frame {
        kind,
        fin,
        rsv1,
        payload: header_len..total,
    };
    Ok(Peeked::Whole { frame, mask })
}

/// The payload length of the (client) frame at the start of `buf` and the length of its
/// header, the 4-byte mask included when the mask bit is set; `None` until the length field
/// is complete. The 16- and 64-bit forms are read as they are: a peer that spends more bytes
/// than it needs on a length breaks no rule a receiver must enforce, and one with the top
/// bit set is past any frame size limit.
fn payload_len(buf: &[u8]) -> Option<(u64, usize)> {
    let b1 = *buf.get(1)?;
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    Some(match b1 & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as u64,
            4 + mask,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?),
            10 + mask,
        ),
        n => (n as u64, 2 + mask),
    })
}

/// XORs `data` with the 4-byte client mask, eight bytes at a time where it can.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask) as u64;
    let wide = (word << 32) | word;
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("chunk is 8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, hence of 4, so the mask phase is 0 again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Formats a final, unmasked server frame header for `len` payload bytes into `out`,
/// returning how many bytes it used.
pub fn write_header(out: &mut [u8; MAX_SERVER_HEADER], kind: Kind, len: usize) -> usize {
    out[0] = 0x80 | kind.opcode();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The payload of a complete unmasked server frame (as `write_header` starts them).
pub fn server_payload(frame: &[u8]) -> &[u8] {
    let start = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[start..]
}

/// A whole final text frame with RSV1 set: a permessage-deflate compressed message.
pub fn compressed_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = write_header(&mut header, Kind::Text, payload.len());
    header[0] |= 0x40;
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out
}

/// Appends a whole server frame (header then payload) to `out`.
pub fn encode_into(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = write_header(&mut header, kind, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// Builds a close frame payload: the code, then a reason cut to fit a control frame on a
/// character boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut p = Vec::with_capacity(2 + cut);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..cut]);
    p
}

/// Why a received close frame is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseFrameError {
    #[error("invalid close frame")]
    Malformed,
    #[error("close reason is not UTF-8")]
    InvalidUtf8,
}

impl CloseFrameError {
    pub fn close_code(self) -> u16 {
        match self {
            CloseFrameError::Malformed => close_code::PROTOCOL_ERROR,
            CloseFrameError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
        }
    }
}

/// Checks a received close frame's payload (RFC 6455 §5.5.1, §7.4): empty, or a code that may
/// appear on the wire followed by UTF-8. Returns the code to echo back.
pub fn check_close(payload: &[u8]) -> Result<u16, CloseFrameError> {
    match payload.len() {
        0 => Ok(close_code::NORMAL),
        1 => Err(CloseFrameError::Malformed),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let known = tungstenite::protocol::frame::coding::CloseCode::from(code);
            if !known.is_allowed() || !(1000..5000).contains(&code) {
                return Err(CloseFrameError::Malformed);
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(CloseFrameError::InvalidUtf8);
            }
            Ok(code)
        }
    }
}

/// A masked frame as a client sends it: `first` is the whole first byte (FIN, RSV bits,
/// opcode), the length takes its shortest form. The server never sends one; the unit and
/// integration tests and the benches use it to speak as a client, including badly.
#[doc(hidden)]
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut v = vec![first];
    let len = payload.len();
    if len < 126 {
        v.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        v.push(0x80 | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_unmasks_every_length_format() {
        for len in [0usize, 1, 7, 8, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut buf = client_frame(0x82, &payload, [1, 2, 3, 4]);
            let total = buf.len();
            match decode(&mut buf, 1 << 20).unwrap() {
                Decoded::Frame { frame, used } => {
                    assert_eq!(used, total);
                    assert_eq!(frame.kind, Kind::Binary);
                    assert!(frame.fin);
                    assert_eq!(&buf[frame.payload], &payload[..], "len {len}");
                }
                other => panic!("len {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn reports_incomplete_at_every_split() {
        let frame = client_frame(0x81, b"hello world, this is a frame", [9, 8, 7, 6]);
        for cut in 0..frame.len() {
            let mut part = frame[..cut].to_vec();
            match decode(&mut part, 1024).unwrap() {
                Decoded::Incomplete { need } => {
                    // The header is 6 bytes: from then on, exactly what is missing.
                    let want = if cut < 6 { 0 } else { frame.len() - cut };
                    assert_eq!(need, want, "cut {cut}")
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn need_is_known_once_the_header_is_and_reading_it_changes_nothing() {
        let frame = client_frame(0x82, &[7u8; 300], [1, 2, 3, 4]);
        let decoded = |cut: usize| match decode(&mut frame[..cut].to_vec(), 1024) {
            Ok(Decoded::Incomplete { need }) => need,
            other => panic!("cut {cut}: {other:?}"),
        };
        for (cut, want) in [(1, 0), (7, 0), (8, 300), (200, 108), (frame.len() - 1, 1)] {
            // 7: the 16-bit length is there, the mask is not.
            assert_eq!(decoded(cut), want, "cut {cut}");
            assert_eq!(need(&frame[..cut], 1024, false), Some(want), "cut {cut}");
        }
        // Whole or invalid: nothing is missing, `decode` has the frame or the error.
        assert_eq!(need(&frame, 1024, false), None);
        assert_eq!(need(&frame[..8], 100, false), None, "over the frame limit");
        assert_eq!(need(&[0x81, 0x05], 1024, false), None, "unmasked");
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let unmasked = &mut [0x81u8, 0x01, b'a'][..];
        assert_eq!(decode(unmasked, 1024), Err(FrameError::Unmasked));
        let mut rsv = client_frame(0xC1, b"a", [0; 4]);
        assert_eq!(decode(&mut rsv, 1024), Err(FrameError::ReservedBits));
        // With permessage-deflate: RSV1 on a text or binary frame only.
        let mut rsv = client_frame(0xC1, b"a", [0; 4]);
        match decode_with(&mut rsv, 1024, true).unwrap() {
            Decoded::Frame { frame, .. } => assert!(frame.rsv1 && frame.kind == Kind::Text),
            other => panic!("{other:?}"),
        }
        for first in [0x40, 0xC9, 0xC8, 0xA1, 0x91] {
            // continuation, ping, close with RSV1; RSV2 and RSV3 on text
            let mut f = client_frame(first, b"a", [0; 4]);
            assert_eq!(
                decode_with(&mut f, 1024, true),
                Err(FrameError::ReservedBits),
                "{first:#x}"
            );
        }
        let mut reserved = client_frame(0x83, b"a", [0; 4]);
        assert_eq!(decode(&mut reserved, 1024), Err(FrameError::ReservedOpcode));
        let mut reserved_ctl = client_frame(0x8B, b"", [0; 4]);
        assert_eq!(
            decode(&mut reserved_ctl, 1024),
            Err(FrameError::ReservedOpcode)
        );
        let mut long_ping = client_frame(0x89, &[0u8; 126], [0; 4]);
        assert_eq!(decode(&mut long_ping, 1024), Err(FrameError::BadControl));
        let mut fragmented_ping = client_frame(0x09, b"x", [0; 4]);
        assert_eq!(
            decode(&mut fragmented_ping, 1024),
            Err(FrameError::BadControl)
        );
        // The size check fires on the header alone, before the payload arrives.
        let big = client_frame(0x82, &[0u8; 2000], [0; 4]);
        let mut header_only = big[..8].to_vec();
        assert_eq!(
            decode(&mut header_only, 1024),
            Err(FrameError::TooBig(2000))
        );
        assert_eq!(FrameError::TooBig(1).close_code(), close_code::TOO_BIG);
    }

    #[test]
    fn a_bad_frame_is_refused_on_its_first_two_bytes() {
        for (first, second, want) in [
            (0x81u8, 0x05u8, FrameError::Unmasked),
            (0x83, 0x85, FrameError::ReservedOpcode),
            (0xA1, 0x85, FrameError::ReservedBits),
            (0x09, 0x80, FrameError::BadControl),
            (0x89, 0xFE, FrameError::BadControl),
        ] {
            let mut two = [first, second];
            assert_eq!(decode(&mut two, 1024), Err(want), "{first:#x} {second:#x}");
        }
        // A 64-bit length with its top bit set is past any limit.
        let mut huge = [0x82u8, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            decode(&mut huge, usize::MAX),
            Err(FrameError::TooBig(0x8000_0000_0000_0001))
        );
    }

    /// The parser agrees with tungstenite's (which it replaced) on every first byte and every
    /// length form, masked and not: same opcode, bits, length and header length.
    #[test]
    fn header_fields_match_tungstenite_for_every_first_byte() {
        use std::io::Cursor;
        use tungstenite::protocol::frame::FrameHeader;
        let lengths: [&[u8]; 6] = [
            &[0x00],
            &[0x7D],
            &[0x7E, 0x01, 0x00],
            &[0x7E, 0xFF, 0xFF],
            &[0x7F, 0, 0, 0, 0, 0, 1, 0, 0],
            &[0x7F, 0, 0, 0, 1, 0, 0, 0, 0],
        ];
        for b0 in 0..=255u8 {
            for len in lengths {
                for masked in [false, true] {
                    let mut h = vec![b0, len[0] | if masked { 0x80 } else { 0 }];
                    h.extend_from_slice(&len[1..]);
                    if masked {
                        h.extend_from_slice(&[1, 2, 3, 4]);
                    }
                    let mut c = Cursor::new(&h[..]);
                    let theirs = FrameHeader::parse(&mut c);
                    let (ours_len, ours_hl) = payload_len(&h).expect("complete");
                    let Ok(Some((th, tlen))) = theirs else {
                        continue;
                    };
                    assert_eq!((ours_len, ours_hl), (tlen, c.position() as usize), "{h:?}");
                    let mut buf = h.clone();
                    match decode_with(&mut buf, usize::MAX, true) {
                        Ok(Decoded::Incomplete { need }) => {
                            // `h` is the whole header: the payload is all that is missing.
                            assert_eq!(need, ours_len as usize, "{h:?}")
                        }
                        Ok(Decoded::Frame { frame, .. }) => {
                            assert_eq!(frame.fin, th.is_final, "{h:?}");
                            assert_eq!(frame.rsv1, th.rsv1, "{h:?}");
                            assert_eq!(frame.kind.opcode(), u8::from(th.opcode), "{h:?}");
                        }
                        Err(e) => {
                            let reserved_op = matches!(b0 & 0x0F, 3..=7 | 0xB..=0xF);
                            let why = match e {
                                FrameError::Unmasked => !masked,
                                FrameError::ReservedOpcode => reserved_op,
                                FrameError::ReservedBits => {
                                    th.rsv2 || th.rsv3 || (th.rsv1 && !matches!(b0 & 0x0F, 1 | 2))
                                }
                                FrameError::BadControl => b0 & 0x08 != 0,
                                FrameError::TooBig(_) => false,
                            };
                            assert!(why, "{h:?}: refused with {e:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn unmask_matches_bytewise_xor_at_all_lengths() {
        let mask = [0xA1, 0x02, 0xF3, 0x44];
        for len in 0..40 {
            let orig: Vec<u8> = (0..len as u8).collect();
            let mut fast = orig.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = orig
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }

    #[test]
    fn encodes_server_headers_per_length_format() {
        let mut out = Vec::new();
        encode_into(&mut out, Kind::Text, b"hi");
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        let mut out = Vec::new();
        encode_into(&mut out, Kind::Binary, &[0u8; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 0x01, 0x2C]);
        assert_eq!(out.len(), 304);
        let mut out = Vec::new();
        encode_into(&mut out, Kind::Binary, &vec![0u8; 70000]);
        assert_eq!(&out[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn close_payload_validation() {
        assert_eq!(check_close(&[]), Ok(1000));
        assert_eq!(check_close(&[3]), Err(CloseFrameError::Malformed));
        assert_eq!(check_close(&1000u16.to_be_bytes()), Ok(1000));
        assert_eq!(check_close(&3000u16.to_be_bytes()), Ok(3000));
        for code in [1005u16, 999, 5000] {
            assert_eq!(
                check_close(&code.to_be_bytes()),
                Err(CloseFrameError::Malformed)
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xFF, 0xFE]);
        assert_eq!(check_close(&bad_reason), Err(CloseFrameError::InvalidUtf8));
        assert_eq!(CloseFrameError::InvalidUtf8.close_code(), 1007);
        let long = "é".repeat(100);
        let p = close_payload(1001, &long);
        assert!(p.len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
