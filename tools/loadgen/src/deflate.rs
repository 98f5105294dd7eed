//! permessage-deflate (RFC 7692) for the load generator: the offer, reading what the server
//! agreed to, and compressing and inflating whole messages.
//!
//! One compressor per window size and one inflater live in each client thread (thread
//! locals), reset per message, so thousands of connections cost no zlib state. Only a
//! connection whose server keeps its compression context (no `server_no_context_takeover`
//! in the answer) owns an inflater of its own, because its messages refer to earlier ones.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The offer: what browsers send (RFC 7692 §7.1.2.2: the server may then limit the client's
/// window). No `*_no_context_takeover` is asked for: the server decides.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The empty stored block that ends a sync flush; stripped on send, put back to inflate.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server's `Sec-WebSocket-Extensions` answer agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The server resets its compressor per message: one thread-wide inflater is enough.
    pub server_no_context_takeover: bool,
    /// The window our compressor must keep to (`client_max_window_bits`, 8 read as 9: zlib
    /// cannot make raw 8-bit streams, and a 9-bit stream never refers further back than 256).
    pub client_window_bits: u8,
}

/// Reads a `Sec-WebSocket-Extensions` value from a 101 (RFC 7692 §7.1): exactly one
/// permessage-deflate with known parameters, each at most once, or an error saying why the
/// connection must fail.
pub fn parse_answer(value: &str) -> Result<Agreed, String> {
    let mut agreed = None;
    for ext in value.split(',') {
        let mut params = ext.split(';').map(str::trim);
        let name = params.next().unwrap_or("");
        if !name.eq_ignore_ascii_case("permessage-deflate") {
            return Err(format!(
                "server agreed to an extension not offered: {name:?}"
            ));
        }
        if agreed.is_some() {
            return Err("server agreed to permessage-deflate twice".into());
        }
        let mut a = Agreed {
            server_no_context_takeover: false,
            client_window_bits: 15,
        };
        let mut seen: Vec<String> = Vec::new();
        for p in params {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (p, None),
            };
            let k = k.to_ascii_lowercase();
            if seen.contains(&k) {
                return Err(format!("permessage-deflate parameter {k} given twice"));
            }
            let bits = |v: Option<&str>| -> Result<u8, String> {
                v.and_then(|v| v.parse::<u8>().ok())
                    .filter(|b| (8..=15).contains(b))
                    .ok_or_else(|| format!("bad {k} value {v:?}"))
            };
            match k.as_str() {
                "server_no_context_takeover" if v.is_none() => a.server_no_context_takeover = true,
                "client_no_context_takeover" if v.is_none() => {}
                // The inflater reads any window up to 15 bits.
                "server_max_window_bits" => {
                    bits(v)?;
                }
                "client_max_window_bits" => a.client_window_bits = bits(v)?.max(9),
                _ => return Err(format!("unknown permessage-deflate parameter {p:?}")),
            }
            seen.push(k);
        }
        agreed = Some(a);
    }
    agreed.ok_or_else(|| "empty Sec-WebSocket-Extensions".into())
}

thread_local! {
    /// Compressors by window bits (index bits - 9), made on first use.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([const { None }; 7]) };
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new_with_window_bits(false, 15));
    /// Scratch for one compressed or inflated message at a time.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Scratch larger than this after a message is given back, so one big message does not pin
/// its size for the rest of the run.
const SCRATCH_KEEP: usize = 256 << 10;

fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        let r = f(buf);
        if buf.capacity() > SCRATCH_KEEP {
            *buf = Vec::new();
        }
        r
    })
}

/// Runs `f` on `payload` compressed as one message (see [`compress`]).
pub fn with_compressed<R>(payload: &[u8], window_bits: u8, f: impl FnOnce(&[u8]) -> R) -> R {
    with_scratch(|buf| {
        compress(payload, window_bits, buf);
        f(buf)
    })
}

/// Runs `f` on the message `data` inflates to (see [`inflate`]); not re-entrant.
pub fn with_inflated<R>(
    data: &[u8],
    own: Option<&mut Decompress>,
    max: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, String> {
    with_scratch(|buf| {
        inflate(data, own, buf, max)?;
        Ok(f(buf))
    })
}

/// Appends `payload` compressed as one message (no reference to earlier messages, so it is
/// valid whatever the context-takeover terms) without the sync-flush tail.
pub fn compress(payload: &[u8], window_bits: u8, out: &mut Vec<u8>) {
    let bits = window_bits.clamp(9, 15);
    COMPRESSORS.with_borrow_mut(|all| {
        let c = all[usize::from(bits - 9)].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::fast(), false, bits)
        });
        c.reset();
        out.reserve(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            let before = c.total_in();
            // A compressor fed from memory into a Vec's spare room cannot fail.
            let _ = c.compress_vec(input, out, FlushCompress::Sync);
            input = &input[(c.total_in() - before) as usize..];
            // Done once the input is in and the flush did not run out of room.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
    });
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
}

/// Inflates one compressed message into `out` (cleared first): an error past `max` bytes
/// (having held at most `max` + 1) or on bad data. `own` is the connection's inflater when
/// the server keeps its context; otherwise the thread's, reset first.
pub fn inflate(
    data: &[u8],
    own: Option<&mut Decompress>,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), String> {
    out.clear();
    match own {
        Some(d) => run_inflate(d, data, out, max),
        None => INFLATER.with_borrow_mut(|d| {
            d.reset(false);
            run_inflate(d, data, out, max)
        }),
    }
}

fn run_inflate(
    d: &mut Decompress,
    data: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), String> {
    for mut input in [data, &TAIL[..]] {
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(format!("inflated message larger than {max} bytes"));
                }
                let room = (out.capacity() * 2).clamp(256, max + 1) - out.len();
                out.reserve_exact(room.max(1));
            }
            let (before, had) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|e| format!("bad deflate data: {e}"))?;
            input = &input[(d.total_in() - before) as usize..];
            let stuck = d.total_in() == before && out.len() == had;
            if out.len() > max {
                return Err(format!("inflated message larger than {max} bytes"));
            }
            if matches!(status, Status::StreamEnd) {
                // A final block: the stream is over, the next message starts afresh.
                d.reset(false);
                return Ok(());
            }
            if (input.is_empty() || stuck) && out.len() < out.capacity() {
                break;
            }
        }
    }
    Ok(())
}

/// A connection's own inflater, for a server that keeps its context across messages.
pub fn own_inflater() -> Box<Decompress> {
    Box::new(Decompress::new_with_window_bits(false, 15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_answers() {
        let a = parse_answer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        )
        .unwrap();
        assert!(a.server_no_context_takeover);
        assert_eq!(a.client_window_bits, 15);
        let a = parse_answer("permessage-deflate;client_max_window_bits=\"10\"").unwrap();
        assert!(!a.server_no_context_takeover);
        assert_eq!(a.client_window_bits, 10);
        assert_eq!(
            parse_answer("permessage-deflate; client_max_window_bits=8")
                .unwrap()
                .client_window_bits,
            9
        );
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; mystery",
        ] {
            assert!(parse_answer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips_messages_of_every_size() {
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| b"{\"sym\":\"ABC\",\"px\":1}"[(i % 20) as usize] ^ (i / 4096) as u8 & 1)
            .collect();
        for len in [0usize, 1, 5, 100, 4096, 65_536, 200_000] {
            for bits in [9u8, 12, 15] {
                let mut z = Vec::new();
                compress(&text[..len], bits, &mut z);
                assert!(!z.ends_with(&TAIL) || len == 0);
                let mut back = Vec::new();
                inflate(&z, None, &mut back, 1 << 20).unwrap();
                assert_eq!(back, &text[..len], "len {len} bits {bits}");
                let mut own = own_inflater();
                inflate(&z, Some(&mut own), &mut back, 1 << 20).unwrap();
                assert_eq!(back, &text[..len]);
            }
        }
        let mut z = Vec::new();
        compress(&vec![b'a'; 100_000], 15, &mut z);
        let mut back = Vec::new();
        assert!(inflate(&z, None, &mut back, 1000).is_err());
        assert!(
            back.len() <= 1000 + 256,
            "stopped near the limit: {}",
            back.len()
        );
        assert!(inflate(&[0xff, 0xff, 0xff], None, &mut back, 1000).is_err());
    }
}
