//! RFC 6455 frame codec: masked client-frame encoder and a zero-copy server-frame parser.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest server payload we accept; protects the load generator from a runaway length field.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Header size of a masked client frame carrying `len` payload bytes.
pub fn client_header_len(len: usize) -> usize {
    let ext = if len < 126 {
        0
    } else if len <= 0xFFFF {
        2
    } else {
        8
    };
    2 + ext + 4
}

/// Appends one complete masked client frame to `out`.
///
/// Only called when a frame is pre-built or for rare control/publish frames, so a simple
/// byte loop is fine here; the hot path re-sends already masked bytes.
pub fn encode_masked(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let len = payload.len();
    out.reserve(client_header_len(len) + len);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let at = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[at..], mask, 0);
}

/// XORs `buf` with the mask, as if `buf` started at byte `offset` of the payload.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(i + offset) & 3];
    }
}

/// One parsed server frame; `payload` borrows the read buffer (server frames are unmasked).
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    /// RSV1: the first frame of a permessage-deflate compressed message.
    pub compressed: bool,
    pub payload: &'a [u8],
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum FrameError {
    /// Servers must not mask (RFC 6455 5.1).
    Masked,
    /// RSV bits set without a negotiated extension (or RSV1 on a control or continuation
    /// frame, RFC 7692 6.1).
    Reserved,
    /// Opcode 3-7 or B-F.
    BadOpcode(u8),
    /// Control frames must be unfragmented and at most 125 bytes.
    BadControl,
    /// Length above [`MAX_PAYLOAD`] or a 64-bit length with the top bit set.
    TooLarge,
    /// A compressed message in several frames (legal, but not handled here).
    FragmentedCompressed,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Masked => write!(f, "masked server frame"),
            FrameError::Reserved => write!(f, "reserved bits set"),
            FrameError::BadOpcode(op) => write!(f, "bad opcode {op:#x}"),
            FrameError::BadControl => write!(f, "fragmented or oversized control frame"),
            FrameError::TooLarge => write!(f, "frame too large"),
            FrameError::FragmentedCompressed => {
                write!(f, "fragmented compressed message (not supported)")
            }
        }
    }
}

/// Parses one server frame from the front of `buf`; `deflate` allows RSV1 on the first frame
/// of a data message (permessage-deflate was negotiated).
///
/// Returns `Ok(None)` when more bytes are needed, otherwise the frame and the number of
/// bytes it occupies.
pub fn parse_server(buf: &[u8], deflate: bool) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    match parse_header(buf, deflate)? {
        Header::Incomplete => Ok(None),
        Header::Known {
            fin,
            opcode,
            compressed,
            hdr,
            len,
        } => {
            if buf.len() < hdr + len {
                return Ok(None);
            }
            Ok(Some((
                Frame {
                    fin,
                    opcode,
                    compressed,
                    payload: &buf[hdr..hdr + len],
                },
                hdr + len,
            )))
        }
    }
}

/// Total size of the frame at the front of `buf`, if its header is complete (RSV1 is let
/// through: [`parse_server`] judges it).
pub fn frame_size(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    Ok(match parse_header(buf, true)? {
        Header::Incomplete => None,
        Header::Known { hdr, len, .. } => Some(hdr + len),
    })
}

enum Header {
    Incomplete,
    Known {
        fin: bool,
        opcode: u8,
        compressed: bool,
        hdr: usize,
        len: usize,
    },
}

fn parse_header(buf: &[u8], deflate: bool) -> Result<Header, FrameError> {
    if buf.len() < 2 {
        return Ok(Header::Incomplete);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let compressed = b0 & 0x40 != 0;
    let data_start = matches!(b0 & 0x0F, OP_TEXT | OP_BINARY);
    if b0 & 0x30 != 0 || compressed && !(deflate && data_start) {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || (b1 & 0x7F) > 125 {
                return Err(FrameError::BadControl);
            }
        }
        other => return Err(FrameError::BadOpcode(other)),
    }
    let (hdr, len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(Header::Incomplete);
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Header::Incomplete);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let l = u64::from_be_bytes(b);
            if l > MAX_PAYLOAD as u64 {
                return Err(FrameError::TooLarge);
            }
            (10, l as usize)
        }
        l => (2, l as usize),
    };
    Ok(Header::Known {
        fin,
        opcode,
        compressed,
        hdr,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test-only decoder for masked client frames: returns (fin, opcode, unmasked payload, size).
    fn parse_client(buf: &[u8]) -> (bool, u8, Vec<u8>, usize) {
        assert!(buf[1] & 0x80 != 0, "client frame must be masked");
        let (mut pos, len) = match buf[1] & 0x7F {
            126 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            ),
            l => (2, l as usize),
        };
        let mask: [u8; 4] = buf[pos..pos + 4].try_into().unwrap();
        pos += 4;
        let mut payload = buf[pos..pos + len].to_vec();
        apply_mask(&mut payload, mask, 0);
        (buf[0] & 0x80 != 0, buf[0] & 0x0F, payload, pos + len)
    }

    /// Builds an unmasked server frame, as corecast would send it.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            v.push(len as u8);
        } else if len <= 0xFFFF {
            v.push(126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn masked_roundtrip_all_length_classes() {
        let mask = [0xA1, 0x02, 0xF3, 0x44];
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70_001] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut out = Vec::new();
            encode_masked(&mut out, true, OP_BINARY, &payload, mask);
            assert_eq!(out.len(), client_header_len(len) + len, "len {len}");
            let (fin, op, decoded, size) = parse_client(&out);
            assert!(fin);
            assert_eq!(op, OP_BINARY);
            assert_eq!(size, out.len());
            assert_eq!(decoded, payload, "len {len}");
            // Masking must actually change non-empty payloads on the wire.
            if len > 4 {
                assert_ne!(&out[out.len() - len..], &payload[..]);
            }
        }
    }

    #[test]
    fn length_encoding_boundaries() {
        let mut out = Vec::new();
        encode_masked(&mut out, true, OP_TEXT, &[0; 125], [0; 4]);
        assert_eq!(out[1], 0x80 | 125);
        out.clear();
        encode_masked(&mut out, true, OP_TEXT, &[0; 126], [0; 4]);
        assert_eq!(out[1], 0x80 | 126);
        assert_eq!(&out[2..4], &[0, 126]);
        out.clear();
        encode_masked(&mut out, true, OP_TEXT, &vec![0; 65536], [0; 4]);
        assert_eq!(out[1], 0x80 | 127);
        assert_eq!(&out[2..10], &65536u64.to_be_bytes());
    }

    #[test]
    fn server_frames_split_at_every_boundary() {
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let mid: Vec<u8> = vec![b'm'; 300];
        let mut stream = Vec::new();
        stream.extend(server_frame(true, OP_TEXT, b"{\"op\":\"ok\",\"id\":1}"));
        stream.extend(server_frame(true, OP_PING, b"hi"));
        stream.extend(server_frame(true, OP_BINARY, &mid));
        stream.extend(server_frame(true, OP_BINARY, &big));
        stream.extend(server_frame(true, OP_TEXT, b""));
        stream.extend(server_frame(true, OP_CLOSE, &[0x03, 0xE8]));
        let expect: Vec<(u8, usize)> = vec![
            (OP_TEXT, 18),
            (OP_PING, 2),
            (OP_BINARY, 300),
            (OP_BINARY, 70_000),
            (OP_TEXT, 0),
            (OP_CLOSE, 2),
        ];
        // Feed the stream in two chunks split at every byte boundary, simulating short reads.
        let step = if cfg!(debug_assertions) { 97 } else { 1 };
        let mut split = 0;
        while split <= stream.len() {
            let mut buf: Vec<u8> = Vec::new();
            let mut got = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                buf.extend_from_slice(chunk);
                let mut pos = 0;
                while let Some((f, used)) = parse_server(&buf[pos..], false).unwrap() {
                    got.push((f.opcode, f.payload.len()));
                    if f.opcode == OP_BINARY && f.payload.len() == 70_000 {
                        assert_eq!(f.payload, &big[..]);
                    }
                    pos += used;
                }
                buf.drain(..pos);
            }
            assert_eq!(got, expect, "split at {split}");
            split += if split < 40 || split > stream.len() - 40 {
                1
            } else {
                step
            };
        }
        // Every prefix shorter than the first frame must report "incomplete", never an error.
        let first = server_frame(true, OP_BINARY, &big);
        for cut in 0..12 {
            assert_eq!(parse_server(&first[..cut], false).unwrap(), None);
        }
        assert_eq!(frame_size(&first[..10]).unwrap(), Some(first.len()));
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut masked = Vec::new();
        encode_masked(&mut masked, true, OP_TEXT, b"x", [1, 2, 3, 4]);
        assert_eq!(parse_server(&masked, false), Err(FrameError::Masked));
        assert_eq!(parse_server(&[0xC1, 0], false), Err(FrameError::Reserved));
        assert_eq!(
            parse_server(&[0x83, 0], false),
            Err(FrameError::BadOpcode(3))
        );
        assert_eq!(parse_server(&[0x09, 0], false), Err(FrameError::BadControl));
        assert_eq!(
            parse_server(&[0x89, 126, 0, 200], false),
            Err(FrameError::BadControl)
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_server(&huge, false), Err(FrameError::TooLarge));
        // With permessage-deflate: RSV1 only on the first frame of a data message.
        let (f, _) = parse_server(&[0xC1, 0], true).unwrap().unwrap();
        assert!(f.compressed && f.fin && f.opcode == OP_TEXT);
        assert!(
            parse_server(&[0x42, 0], true)
                .unwrap()
                .unwrap()
                .0
                .compressed
        );
        for bad in [[0xC0, 0], [0xC9, 0], [0xC8, 0], [0xA1, 0], [0x91, 0]] {
            assert_eq!(
                parse_server(&bad, true),
                Err(FrameError::Reserved),
                "{bad:x?}"
            );
        }
    }

    #[test]
    fn apply_mask_with_offset_matches_whole() {
        let mask = [9, 8, 7, 6];
        let data: Vec<u8> = (0..23).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let mut parts = data.clone();
        let (a, b) = parts.split_at_mut(5);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 5);
        assert_eq!(whole, parts);
    }
}
