//! Reassembly of fragmented messages and the UTF-8 rule for text (RFC 6455 §5.4, §8.1).
//! No I/O; runs on worker threads.
//!
//! Unfragmented messages (nearly all of them) never come here: they are used straight from
//! the worker's read buffer. Only a message split over several frames owns memory, and only
//! until its last frame arrives.

use crate::codec::{close_code, Kind};

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
            let mut f = Box::new(Fragmented {
                kind,
                compressed,
                data: payload.to_vec(),
                checked: 0,
            });
            f.check(false)?;
            *partial = Some(f);
            Ok(Step::Pending)
        }
        (Kind::Continuation, Some(f)) => {
            if f.data.len() + payload.len() > max_message {
                return Err(MessageError::TooBig);
            }
            f.data.extend_from_slice(payload);
            f.check(fin)?;
            Ok(if fin { Step::Completed } else { Step::Pending })
        }
        (Kind::Close | Kind::Ping | Kind::Pong, _) => {
            unreachable!("control frames are handled by the caller")
        }
    }
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
            feed(&mut p, Kind::Text, false, true, &[0xFF], 10),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, &[0xFE], 10),
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
        assert_eq!(
            feed(&mut p, Kind::Continuation, false, false, &[0; 99], 100),
            Ok(Step::Pending)
        );
        assert_eq!(
            feed(&mut p, Kind::Continuation, true, false, b"y", 100),
            Err(MessageError::TooBig)
        );
        assert_eq!(MessageError::TooBig.close_code(), 1009);
    }
}
