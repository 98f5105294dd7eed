//! Reassembly of fragmented messages and the UTF-8 rule for text (RFC 6455 §5.4, §8.1).
//! No I/O; runs on worker threads.
//!
//! Unfragmented messages (nearly all of them) never come here: they are used straight from
//! the worker's read buffer. Only a message split over several frames owns memory, and only
//! until its last frame arrives.

use crate::codec::{close_code, Kind};

/// What each frame of a fragmented message counts against `--max-message-size` besides its
/// payload: 6 bytes, the smallest header a client frame can have (2 bytes and the 4-byte
/// mask). A message thus counts at least what it took on the wire, and a frame that carries
/// nothing is not free: an endless run of empty continuations is a message that grows, and
/// ends with 1009 like any message that is too big, after at most `max / 6` frames.
/// (Unfragmented messages are bounded by `--max-frame-size` alone; they pay nothing extra.)
pub const FRAGMENT_CHARGE: usize = 6;

/// Why a data frame was refused; each maps to the close code the connection fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message too big")]
    TooBig,
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    #[error("bad fragmentation")]
    Fragmentation,
    /// permessage-deflate data that does not inflate.
    #[error("invalid compressed data")]
    BadCompression,
}

impl MessageError {
    pub fn close_code(self) -> u16 {
        match self {
            MessageError::TooBig => close_code::TOO_BIG,
            MessageError::InvalidUtf8 | MessageError::BadCompression => close_code::INVALID_PAYLOAD,
            MessageError::Fragmentation => close_code::PROTOCOL_ERROR,
        }
    }
}

/// Whether a message is text or binary; continuation frames take the kind of the first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

/// A message whose first frame has arrived but not its last.
#[derive(Debug, PartialEq, Eq)]
pub struct Fragmented {
    pub kind: MessageKind,
    /// permessage-deflate: `data` is compressed, and is checked (UTF-8, size) once inflated.
    pub compressed: bool,
    pub data: Vec<u8>,
    /// What the message counts against `--max-message-size` so far: `data`'s length plus
    /// [`FRAGMENT_CHARGE`] per frame. Never above the limit.
    charged: usize,
    /// Bytes of `data` known to be valid UTF-8; text is checked as it arrives so that an
    /// invalid sequence fails the connection at once, not after megabytes more.
    checked: usize,
}

/// How a data frame ended up.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole message that lives in the frame's own payload.
    Whole(MessageKind),
    /// The message in progress is now complete; take it with `Option::take`.
    Completed,
    /// More frames are needed.
    Pending,
}

/// Folds one data frame into the connection's message state.
///
/// `payload` has already been unmasked.
/// `compressed`: the frame had RSV1 (permessage-deflate); the message's text is then checked
/// only once it is inflated, by the caller.
pub fn feed(
    partial: &mut Option<Box<Fragmented>>,
    kind: Kind,
    fin: bool,
    compressed: bool,
    payload: &[u8],
    max_message: usize,
) -> Result<Step, MessageError> {
    match (kind, partial.as_mut()) {
        (Kind::Text | Kind::Binary, Some(_)) => Err(MessageError::Fragmentation),
        (Kind::Continuation, None) => Err(MessageError::Fragmentation),
        (Kind::Text | Kind::Binary, None) => {
            let kind = if kind == Kind::Text {
                MessageKind::Text
            } else {
                MessageKind::Binary
            };
            if fin {
                if kind == MessageKind::Text
                    && !compressed
                    && simdutf8::basic::from_utf8(payload).is_err()
                {
                    return Err(MessageError::InvalidUtf8);
                }
                return Ok(Step::Whole(kind));
            }
            let charged = charge(0, payload, max_message)?;
            let mut f = Box::new(Fragmented {
                kind,
                compressed,
                data: payload.to_vec(),
                charged,
                checked: 0,
            });
            f.check(false)?;
            *partial = Some(f);
            Ok(Step::Pending)
        }
        (Kind::Continuation, Some(f)) => {
            f.charged = charge(f.charged, payload, max_message)?;
            f.data.extend_from_slice(payload);
            f.check(fin)?;
            Ok(if fin { Step::Completed } else { Step::Pending })
        }
        (Kind::Close | Kind::Ping | Kind::Pong, _) => {
            unreachable!("control frames are handled by the caller")
        }
    }
}

/// What a message that counted `charged` so far counts with one more frame of `payload`, if
/// that stays within `max_message`.
fn charge(charged: usize, payload: &[u8], max_message: usize) -> Result<usize, MessageError> {
    let charged = charged + payload.len() + FRAGMENT_CHARGE;
    if charged > max_message {
        return Err(MessageError::TooBig);
    }
    Ok(charged)
}

impl Fragmented {
    /// Validates the text received so far; an incomplete sequence at the end is allowed until
    /// the final frame.
    fn check(&mut self, fin: bool) -> Result<(), MessageError> {
        if self.kind == MessageKind::Binary || self.compressed {
            return Ok(());
        }
        match simdutf8::compat::from_utf8(&self.data[self.checked..]) {
            Ok(_) => {
                self.checked = self.data.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(MessageError::InvalidUtf8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_frames_stay_in_place() {
        let mut p = None;
        assert_eq!(
            feed(&mut p, Kind::Text, true, false, b"hi", 10),
            Ok(Step::Whole(MessageKind::Text))
        );
        assert_eq!(
            feed(&mut p, Kind::Binary, true, false, &[0xFF], 10),
            Ok(Step::Whole(MessageKind::Binary))
        );
        assert_eq!(
            feed(&mut p, Kind::Text, true, false, &[0xFF], 10),
            Err(MessageError::InvalidUtf8)
        );
        assert!(p.is_none());
        // Compressed text is checked once inflated, not here.
        assert_eq!(
            feed(&mut p, Kind::Text, true, true, &[0xFF], 10),
            Ok(Step::Whole(MessageKind::Text))
        );
        assert_eq!(
            feed(&mut p, Kind::Text, false, true, &[0xFF], 20),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, &[0xFE], 20),
            Ok(Step::Completed)
        );
        assert!(p.unwrap().compressed);
    }

    #[test]
    fn reassembles_and_checks_utf8_split_inside_a_character() {
        let text = "añb€".as_bytes();
        let mut p = None;
        assert_eq!(
            feed(&mut p, Kind::Text, false, false, &text[..2], 100),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, false, false, &text[2..5], 100),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, &text[5..], 100),
            Ok(Step::Completed)
        );
        assert_eq!(p.take().unwrap().data, text);
    }

    #[test]
    fn fails_fast_on_invalid_utf8_and_on_a_dangling_sequence_at_the_end() {
        let mut p = None;
        assert_eq!(
            feed(&mut p, Kind::Text, false, false, b"ok", 100),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, false, false, &[0xC0, 0x80], 100),
            Err(MessageError::InvalidUtf8)
        );
        let mut p = None;
        assert_eq!(
            feed(&mut p, Kind::Text, false, false, &[0xE2, 0x82], 100),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, b"", 100),
            Err(MessageError::InvalidUtf8)
        );
    }

    #[test]
    fn fragmentation_errors_and_size_limit() {
        let mut p = None;
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, b"x", 100),
            Err(MessageError::Fragmentation)
        );
        assert_eq!(
            feed(&mut p, Kind::Binary, false, false, b"x", 100),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Text, true, false, b"x", 100),
            Err(MessageError::Fragmentation)
        );
        // 1 + 6 so far, and 87 + 6 makes exactly the limit.
        assert_eq!(
            feed(&mut p, Kind::Continuation, false, false, &[0; 87], 100),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, b"", 100),
            Err(MessageError::TooBig)
        );
        assert_eq!(MessageError::TooBig.close_code(), 1009);
    }

    #[test]
    fn every_fragment_pays_a_header_even_an_empty_one() {
        // At a 60-byte limit an empty first frame and nine empty continuations count 60:
        // the tenth continuation, empty too, is one frame too many.
        let mut p = None;
        assert_eq!(
            feed(&mut p, Kind::Text, false, false, b"", 60),
            Ok(Step::Pending)
        );
        for i in 0..9 {
            assert_eq!(
                feed(&mut p, Kind::Continuation, false, false, b"", 60),
                Ok(Step::Pending),
                "continuation {i}"
            );
        }
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, b"", 60),
            Err(MessageError::TooBig)
        );
        // The same limit takes 48 bytes in two frames (48 + 2 x 6), and an unfragmented
        // message of 60 (the frame size limit bounds it, not this).
        let mut p = None;
        assert_eq!(
            feed(&mut p, Kind::Binary, false, false, &[1; 40], 60),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, &[2; 8], 60),
            Ok(Step::Completed)
        );
        assert_eq!(p.take().unwrap().data.len(), 48);
        assert_eq!(
            feed(&mut p, Kind::Binary, true, false, &[0; 60], 60),
            Ok(Step::Whole(MessageKind::Binary))
        );
        // A first frame as large as the limit leaves no room for the frame that ends it.
        assert_eq!(
            feed(&mut p, Kind::Binary, false, false, &[0; 60], 60),
            Err(MessageError::TooBig)
        );
    }
}
