//! permessage-deflate (RFC 7692): choosing an offer, and compressing and inflating whole
//! messages without context takeover in either direction. corecast always asks for both
//! `server_no_context_takeover` and `client_no_context_takeover` (§7.1.1.1-2 let a server
//! add them), so every message stands alone: a publish is compressed once per worker and the
//! same frame goes to every subscriber that negotiated it, and a connection never holds zlib
//! state. The `Deflater` and `Inflater` here belong to a worker and are reset per message.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The empty stored block a sync flush ends with; the sender strips it, the receiver puts it
/// back (RFC 7692 §7.2.1-2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest LZ77 window; what the inflater always uses (it reads any smaller window too).
pub const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window zlib can compress with in raw deflate. An offer that limits the
/// server to 8 bits is declined (§7.1.2.1 allows it), and the next one considered.
pub const MIN_WINDOW_BITS: u8 = 9;

/// What a connection agreed to: the server compresses with a window of `window_bits`; no
/// context takeover either way. One byte, never zero (the window is 9 to 15 bits: the low
/// four; bit 4 says the offer named `server_max_window_bits`, so the response must name it
/// back), so that the state machine keeps it, `None` included, in one byte of `Conn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed(std::num::NonZeroU8);

const LIMITED: u8 = 1 << 4;

impl Agreed {
    fn new(window_bits: u8, limited: bool) -> Agreed {
        debug_assert!((MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&window_bits));
        let bits = window_bits | if limited { LIMITED } else { 0 };
        Agreed(std::num::NonZeroU8::new(bits).expect("a window is at least 9 bits"))
    }

    /// The server's LZ77 window, in bits.
    pub fn window_bits(self) -> u8 {
        self.0.get() & 0x0f
    }

    fn limited(self) -> bool {
        self.0.get() & LIMITED != 0
    }

    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response(&self) -> String {
        let mut r = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.limited() {
            r.push_str(&format!("; server_max_window_bits={}", self.window_bits()));
        }
        r
    }
}

/// The first permessage-deflate offer in `values` (the request's `Sec-WebSocket-Extensions`
/// header values, in order) that corecast can honour, or None: then the connection goes on
/// without compression. Offers of other extensions, and malformed or unusable deflate
/// offers, are passed over (RFC 7692 §5, §7.1).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for offer in split_unquoted(value, ',') {
            if let Some(a) = accept(offer) {
                return Some(a);
            }
        }
    }
    None
}

/// One offer: `permessage-deflate` and its parameters, or None to decline it.
fn accept(offer: &str) -> Option<Agreed> {
    let mut parts = split_unquoted(offer, ';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let (mut snct, mut cnct, mut smwb, mut cmwb) = (false, false, None, None);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        // Each parameter at most once (§7, "MUST decline ... more than one").
        let seen = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => std::mem::replace(&mut snct, true),
            "client_no_context_takeover" if value.is_none() => std::mem::replace(&mut cnct, true),
            "server_max_window_bits" => smwb.replace(window_bits(value?)?).is_some(),
            "client_max_window_bits" => {
                let bits = match value {
                    Some(v) => window_bits(v)?,
                    None => MAX_WINDOW_BITS,
                };
                cmwb.replace(bits).is_some()
            }
            _ => return None,
        };
        if seen {
            return None;
        }
    }
    // client_max_window_bits only tells what the client's compressor may use; the inflater
    // reads any window, so it needs no answer (and gets none: §7.1.2.2 allows leaving it out).
    let _ = (cnct, cmwb);
    let window_bits = smwb.unwrap_or(MAX_WINDOW_BITS);
    if window_bits < MIN_WINDOW_BITS {
        return None;
    }
    Some(Agreed::new(window_bits, smwb.is_some()))
}

/// A window size: a decimal 8 to 15 without leading zeros (§7.1.2.1).
fn window_bits(v: &str) -> Option<u8> {
    if v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// A parameter value: a token, or a quoted string holding one (RFC 6455 §9.1).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(v),
    }
}

/// Splits on `sep` outside quoted strings.
fn split_unquoted(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    s.split(move |c: char| {
        if c == '"' {
            quoted = !quoted;
        }
        c == sep && !quoted
    })
}

/// A worker's compressors, one per window size in use, made on first use; each is reset
/// after every message.
#[derive(Default)]
pub struct Deflater {
    level: u32,
    by_bits: [Option<Box<Compress>>; (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize],
}

impl Deflater {
    pub fn new(level: u32) -> Deflater {
        Deflater {
            level,
            ..Deflater::default()
        }
    }

    /// Compresses `msg` as one message for a window of `bits` into `out` (cleared first),
    /// tail stripped. False when it would not come out smaller than `msg`: the message is
    /// then sent uncompressed (RSV1 clear), which §6 allows; the work stops at that point.
    pub fn compress(&mut self, msg: &[u8], bits: u8, out: &mut Vec<u8>) -> bool {
        let bits = bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let level = self.level;
        let c = self.by_bits[(bits - MIN_WINDOW_BITS) as usize].get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(
                Compression::new(level),
                false,
                bits,
            ))
        });
        out.clear();
        // Room for the input's length plus the tail: output that fills it did not shrink.
        out.reserve(msg.len() + TAIL.len());
        let limit = msg.len() + TAIL.len();
        let shrank = loop {
            let consumed = c.total_in() as usize;
            if c.compress_vec(&msg[consumed..], out, FlushCompress::Sync)
                .is_err()
            {
                break false;
            }
            if c.total_in() as usize == msg.len() && out.len() < out.capacity() {
                break out.ends_with(&TAIL) && out.len() - TAIL.len() < msg.len();
            }
            if out.len() >= limit {
                break false;
            }
        };
        c.reset();
        if shrank {
            out.truncate(out.len() - TAIL.len());
        }
        shrank
    }
}

/// A run of published frames as connections with a window of `bits` get them: each message
/// compressed once (RSV1), or the plain frame itself when it is under `min_size` or does not
/// shrink. Built at most once per run and window size on a worker, whatever the number of
/// subscribers.
pub struct ZippedRun {
    pub frames: Vec<bytes::Bytes>,
    /// All of `frames` joined, for a recipient that can take the run whole (as
    /// `broadcast::merge` does for plain frames); None for a run of one.
    pub merged: Option<bytes::Bytes>,
    /// Messages that went out compressed, and their bytes saved.
    pub compressed: u64,
}

impl Deflater {
    /// Compresses each plain frame of a run (`plain`: whole unmasked text frames).
    pub fn zip_run<'a>(
        &mut self,
        plain: impl ExactSizeIterator<Item = &'a bytes::Bytes>,
        bits: u8,
        min_size: usize,
        scratch: &mut Vec<u8>,
    ) -> ZippedRun {
        let n = plain.len();
        let mut frames = Vec::with_capacity(n);
        let mut compressed = 0;
        for f in plain {
            let payload = crate::codec::server_payload(f);
            if payload.len() >= min_size && self.compress(payload, bits, scratch) {
                frames.push(bytes::Bytes::from(crate::codec::compressed_text_frame(
                    scratch,
                )));
                compressed += 1;
            } else {
                frames.push(f.clone());
            }
        }
        if scratch.capacity() > 256 * 1024 {
            *scratch = Vec::new();
        }
        let merged = (n > 1).then(|| {
            let mut buf = bytes::BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
            for f in &frames {
                buf.extend_from_slice(f);
            }
            buf.freeze()
        });
        ZippedRun {
            frames,
            merged,
            compressed,
        }
    }
}

/// Why an incoming compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the limit (close 1009). Inflating stopped there.
    #[error("message inflates past the size limit")]
    TooBig,
    /// Not valid DEFLATE data (close 1007).
    #[error("invalid compressed data")]
    Invalid,
}

/// A worker's inflater (window 15), made on first use and reset after every message.
#[derive(Default)]
pub struct Inflater {
    d: Option<Box<Decompress>>,
}

impl Inflater {
    /// Inflates one whole message into `out` (cleared first), stopping as soon as it would
    /// pass `limit` bytes: a compression bomb costs at most `limit` bytes of memory.
    pub fn inflate(
        &mut self,
        msg: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let d = self
            .d
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, 15)));
        out.clear();
        let r = inflate_into(d, msg, limit, out);
        d.reset(false);
        r
    }
}

fn inflate_into(
    d: &mut Decompress,
    msg: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), InflateError> {
    // The message, then the tail put back: fed as two inputs, so nothing is copied.
    for (part, last) in [(msg, false), (&TAIL[..], true)] {
        let start = d.total_in();
        loop {
            let used = (d.total_in() - start) as usize;
            let input = &part[used..];
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                // Grow in steps, never past the limit plus one byte (which proves "too big").
                let room = (limit + 1 - out.len()).min(out.len().max(4096));
                out.reserve_exact(room);
            }
            let before = (d.total_in(), out.len());
            let status = d
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let consumed_all = (d.total_in() - start) as usize == part.len();
            match status {
                // A final block: whatever follows it (our tail at most) is ignored.
                Status::StreamEnd => {
                    let left = part.len() - (d.total_in() - start) as usize;
                    return if last || left == 0 {
                        Ok(())
                    } else {
                        Err(InflateError::Invalid)
                    };
                }
                Status::Ok | Status::BufError => {
                    let progressed = (d.total_in(), out.len()) != before;
                    if consumed_all && out.len() < out.capacity() {
                        break;
                    }
                    if !progressed && out.len() < out.capacity() {
                        // Input left that zlib will not take without more: truncated data.
                        return Err(InflateError::Invalid);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(v: &str) -> Option<Agreed> {
        negotiate([v.as_bytes()])
    }

    #[test]
    fn offers_are_read_in_order_and_the_first_usable_one_wins() {
        let full = Agreed::new(15, false);
        let plain = Some(full);
        assert_eq!(neg("permessage-deflate"), plain);
        assert_eq!(neg("permessage-deflate; client_max_window_bits"), plain);
        // What browsers send.
        assert_eq!(
            neg("permessage-deflate; client_max_window_bits=15; server_no_context_takeover"),
            plain
        );
        let nine = neg("permessage-deflate; server_max_window_bits=9").unwrap();
        assert_eq!(nine.window_bits(), 9);
        assert_eq!(
            nine.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9"
        );
        assert_eq!(
            full.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // 8 bits is declined; the next offer is taken.
        assert_eq!(
            neg("permessage-deflate; server_max_window_bits=8, permessage-deflate"),
            plain
        );
        assert_eq!(neg("permessage-deflate; server_max_window_bits=8"), None);
        // Across header lines, other extensions first.
        assert_eq!(
            negotiate([
                &b"x-webkit-deflate-frame"[..],
                b"permessage-deflate; server_max_window_bits=\"10\""
            ])
            .map(|a| a.window_bits()),
            Some(10)
        );
    }

    #[test]
    fn malformed_offers_are_declined_not_fatal() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=1x",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"9",
            "deflate-frame",
            "",
        ] {
            assert_eq!(neg(bad), None, "{bad}");
        }
        assert_eq!(negotiate([&[0xff, 0xfe][..]]), None);
    }

    #[test]
    fn the_rfc_examples_inflate() {
        let mut inf = Inflater::default();
        let mut out = Vec::new();
        // RFC 7692 §7.2.3.1: "Hello", compressed, tail removed.
        inf.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.3: the same in a stored (uncompressed) block.
        inf.inflate(
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
            100,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.4: a final block (BFINAL set).
        inf.inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn compress_then_inflate_round_trips_for_every_window() {
        let doc: Vec<u8> = (0..200)
            .flat_map(|i| {
                format!(r#"{{"id":{i},"name":"item {i}","tags":["a","b"]}},"#).into_bytes()
            })
            .collect();
        let mut def = Deflater::new(6);
        let mut inf = Inflater::default();
        let (mut c, mut back) = (Vec::new(), Vec::new());
        for bits in MIN_WINDOW_BITS..=MAX_WINDOW_BITS {
            assert!(def.compress(&doc, bits, &mut c), "{bits}");
            assert!(
                c.len() * 3 < doc.len(),
                "{bits}: {} of {}",
                c.len(),
                doc.len()
            );
            // Each message stands alone: a fresh inflater reads it.
            inf.inflate(&c, doc.len(), &mut back).unwrap();
            assert_eq!(back, doc, "{bits}");
            let mut fresh = Inflater::default();
            fresh.inflate(&c, doc.len(), &mut back).unwrap();
            assert_eq!(back, doc, "{bits}");
        }
        // The same output twice: no context carried from one message to the next.
        let mut again = Vec::new();
        def.compress(&doc, 15, &mut again);
        def.compress(&doc, 15, &mut c);
        assert_eq!(again, c);
    }

    #[test]
    fn what_does_not_shrink_is_not_compressed() {
        let mut def = Deflater::new(6);
        let mut out = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(!def.compress(&noise, 15, &mut out));
        assert!(out.capacity() <= noise.len() + 64);
        assert!(!def.compress(b"", 15, &mut out));
        // The compressor is usable afterwards.
        assert!(def.compress(&[b'a'; 1000], 15, &mut out));
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 20 << 20];
        let mut def = Deflater::new(9);
        let mut bomb = Vec::new();
        assert!(def.compress(&zeros, 15, &mut bomb));
        assert!(bomb.len() < 30_000, "{}", bomb.len());
        let mut inf = Inflater::default();
        let mut out = Vec::new();
        let limit = 64 * 1024;
        assert_eq!(
            inf.inflate(&bomb, limit, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= limit + 1 + 4096, "{}", out.capacity());
        // Exactly at the limit is fine.
        let mut at = Vec::new();
        def.compress(&zeros[..limit], 15, &mut at);
        inf.inflate(&at, limit, &mut out).unwrap();
        assert_eq!(out.len(), limit);
    }

    #[test]
    fn invalid_data_is_an_error_and_the_inflater_recovers() {
        let mut inf = Inflater::default();
        let mut out = Vec::new();
        // BTYPE 11 is reserved.
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff], 100, &mut out),
            Err(InflateError::Invalid)
        );
        // A stored block whose length check fails.
        assert_eq!(
            inf.inflate(&[0x00, 0x05, 0x00, 0x00, 0x00, b'H'], 100, &mut out),
            Err(InflateError::Invalid)
        );
        // Data after a final block.
        assert_eq!(
            inf.inflate(
                &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x41, 0x42],
                100,
                &mut out
            ),
            Err(InflateError::Invalid)
        );
        inf.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
    }
}
