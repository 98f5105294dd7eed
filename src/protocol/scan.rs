//! The request envelope read in one pass without allocating: every byte is validated as JSON
//! (RFC 8259) while values are skipped, and the top-level members `op`, `id`, `topic`,
//! `data` and `token` come back as slices of the message. Runs on worker threads, for every request.
//!
//! The rules are serde_json's (1.0.154) for the derived [`Envelope`](super::Envelope), so
//! that the scanner accepts exactly what that deserialization accepts and gives the same
//! slices; `differential.rs` checks this against serde_json itself:
//!
//! * a top-level member name is decoded: escapes count (`"o\u0070"` is `op`), and its `\u`
//!   escapes must pair surrogates, since serde_json decodes a field name into a `str`;
//! * a string inside a skipped value only needs well-formed escapes: serde_json skips it
//!   without decoding, so a lone surrogate there is accepted;
//! * a second `op`, `id`, `topic`, `data` or `token` is refused (serde's "duplicate field"), while
//!   other names may repeat and their values are validated and dropped;
//! * `null` for `op`, `id`, `topic` or `token` reads as absent; `data` keeps it as a value;
//! * only whitespace may follow the object.
//!
//! The nesting is followed with one bit per open bracket in a `u128` on the stack. Input
//! nested deeper than that holds is handed back as [`Refusal::TooDeep`] for serde_json to
//! decide: serde_json skips a value with a heap stack of its own and sets no depth limit
//! there, so refusing such input outright would change what the server accepts.

use super::{Fields, Raw};

/// Most brackets open at once, the envelope's own included, that the scanner follows. It is
/// the nesting serde_json allows where it does set a limit (its counter starts at 128 and a
/// bracket that takes it to 0 is refused, so 127 may be open), and it fits the bit stack.
pub(super) const MAX_OPEN: u32 = 127;

/// Why the scanner gave no fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not JSON, or JSON that the derived envelope refuses (duplicate field, no object).
    Invalid,
    /// Valid up to a bracket past [`MAX_OPEN`]; serde_json may well accept the message.
    TooDeep,
}

use Refusal::{Invalid, TooDeep};

/// Which top-level member a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Op,
    Id,
    Topic,
    Data,
    Token,
    Recover,
    Since,
    Limit,
    Other,
}

/// Reads the envelope of `text`: a JSON object, whitespace around it, and nothing else.
pub(super) fn envelope(text: &str) -> Result<Fields<'_>, Refusal> {
    let mut c = Cursor {
        b: text.as_bytes(),
        i: 0,
    };
    let mut f = Fields::default();
    // Presence, not value: `"id": null` twice is a duplicate too.
    let mut seen = [false; 8];
    c.ws();
    c.eat(b'{')?;
    c.ws();
    if c.peek() == Some(b'}') {
        c.i += 1;
    } else {
        loop {
            c.eat(b'"')?;
            let name = c.name()?;
            let slot = match name {
                Name::Op => Some(0),
                Name::Id => Some(1),
                Name::Topic => Some(2),
                Name::Data => Some(3),
                Name::Token => Some(4),
                Name::Recover => Some(5),
                Name::Since => Some(6),
                Name::Limit => Some(7),
                Name::Other => None,
            };
            if let Some(s) = slot {
                if std::mem::replace(&mut seen[s], true) {
                    return Err(Invalid);
                }
            }
            c.ws();
            c.eat(b':')?;
            c.ws();
            let start = c.i;
            c.value(MAX_OPEN - 1)?;
            // Both ends sit next to ASCII bytes, so `get` always succeeds; it cannot panic.
            let raw = Raw(text.get(start..c.i).ok_or(Invalid)?);
            let absent_if_null = Some(raw).filter(|r| r.get() != "null");
            match name {
                Name::Op => f.op = absent_if_null,
                Name::Id => f.id = absent_if_null,
                Name::Topic => f.topic = absent_if_null,
                Name::Data => f.data = Some(raw),
                Name::Token => f.token = absent_if_null,
                Name::Recover => f.recover = absent_if_null,
                Name::Since => f.since = absent_if_null,
                Name::Limit => f.limit = absent_if_null,
                Name::Other => {}
            }
            c.ws();
            match c.next_byte() {
                Some(b',') => c.ws(),
                Some(b'}') => break,
                _ => return Err(Invalid),
            }
        }
    }
    c.ws();
    if c.i == c.b.len() {
        Ok(f)
    } else {
        Err(Invalid)
    }
}

/// Checks that `text` is exactly one JSON value with no whitespace around it, under the same
/// rules as a skipped value in the envelope (so with [`MAX_OPEN`] brackets at most).
pub(super) fn one_value(text: &str) -> Result<(), Refusal> {
    let mut c = Cursor {
        b: text.as_bytes(),
        i: 0,
    };
    if matches!(c.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        return Err(Invalid);
    }
    c.value(MAX_OPEN)?;
    if c.i == c.b.len() {
        Ok(())
    } else {
        Err(Invalid)
    }
}

/// A position in the message. Every read is bounds-checked (`get`), so no input can make it
/// panic; `i` never passes `b.len()`.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    /// Consumes `want` or refuses.
    fn eat(&mut self, want: u8) -> Result<(), Refusal> {
        if self.peek() == Some(want) {
            self.i += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// Skips JSON's four whitespace bytes (no others: serde_json takes no others either).
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Skips one value starting here (whitespace first), with at most `max_open` brackets of
    /// its own open at once.
    ///
    /// Iterative, so that no input can exhaust the thread's stack: bit `k` of `kinds` says
    /// whether the `k`-th innermost open bracket is a `{`, and `open` counts them.
    fn value(&mut self, max_open: u32) -> Result<(), Refusal> {
        debug_assert!(max_open <= u128::BITS);
        let mut kinds: u128 = 0;
        let mut open: u32 = 0;
        loop {
            // A value starts here.
            self.ws();
            match self.peek() {
                Some(bracket @ (b'{' | b'[')) => {
                    if open == max_open {
                        return Err(TooDeep);
                    }
                    self.i += 1;
                    open += 1;
                    let object = bracket == b'{';
                    kinds = kinds << 1 | u128::from(object);
                    self.ws();
                    let close = if object { b'}' } else { b']' };
                    if self.peek() != Some(close) {
                        if object {
                            self.member_name()?;
                        }
                        continue;
                    }
                    // Empty: it closes at once, and counts as a value that just ended.
                    self.i += 1;
                    open -= 1;
                    kinds >>= 1;
                }
                Some(b'"') => {
                    self.i += 1;
                    self.string()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(Invalid),
            }
            // A value ended: close brackets until a comma asks for the next value, or until
            // none is open and this value was the whole of it.
            loop {
                if open == 0 {
                    return Ok(());
                }
                self.ws();
                let in_object = kinds & 1 == 1;
                match self.next_byte() {
                    Some(b',') => {
                        if in_object {
                            self.member_name()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {}
                    Some(b']') if !in_object => {}
                    _ => return Err(Invalid),
                }
                open -= 1;
                kinds >>= 1;
            }
        }
    }

    /// A member name inside a skipped value and its colon: validated as serde_json skips it
    /// (escapes well-formed, surrogates unchecked).
    fn member_name(&mut self) -> Result<(), Refusal> {
        self.ws();
        self.eat(b'"')?;
        self.string()?;
        self.ws();
        self.eat(b':')
    }

    /// Skips the rest of a string whose opening quote was consumed, up to and including the
    /// closing one. Escapes must be well-formed; what a `\u` escape names is not checked,
    /// as serde_json does not check it for a string it skips.
    fn string(&mut self) -> Result<(), Refusal> {
        loop {
            // The common run of plain bytes first. Bytes of a multi-byte UTF-8 character are
            // all >= 0x80, so they are plain too; the input is a `str`, so they are valid.
            while let Some(c) = self.peek() {
                if c < 0x20 || c == b'"' || c == b'\\' {
                    break;
                }
                self.i += 1;
            }
            match self.next_byte() {
                Some(b'"') => return Ok(()),
                Some(b'\\') => match self.next_byte() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                    Some(b'u') => {
                        self.hex4()?;
                    }
                    _ => return Err(Invalid),
                },
                // A control character, or the end of the message.
                _ => return Err(Invalid),
            }
        }
    }

    /// Reads the rest of a top-level member name whose opening quote was consumed, decoding
    /// it as serde_json does for a field name: surrogate escapes must come as a leading one
    /// followed by a trailing one. Only the four names matter, so nothing longer than
    /// `topic` or outside ASCII is kept.
    fn name(&mut self) -> Result<Name, Refusal> {
        let mut buf = [0u8; 7];
        let mut len = 0;
        // False once the decoded name cannot be one of the members (7 bytes at most).
        let mut fits = true;
        loop {
            let byte = match self.next_byte() {
                Some(b'"') => break,
                Some(b'\\') => match self.next_byte() {
                    Some(b'"') => b'"',
                    Some(b'\\') => b'\\',
                    Some(b'/') => b'/',
                    Some(b'b') => 0x08,
                    Some(b'f') => 0x0c,
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(b't') => b'\t',
                    Some(b'u') => match self.hex4()? {
                        0xDC00..=0xDFFF => return Err(Invalid),
                        0xD800..=0xDBFF => {
                            self.eat(b'\\')?;
                            self.eat(b'u')?;
                            if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                                return Err(Invalid);
                            }
                            fits = false;
                            continue;
                        }
                        // `as` is exact: the arm holds only values below 0x80.
                        unit @ 0..=0x7F => unit as u8,
                        _ => {
                            fits = false;
                            continue;
                        }
                    },
                    _ => return Err(Invalid),
                },
                Some(0..=0x1F) | None => return Err(Invalid),
                Some(byte) => byte,
            };
            match buf.get_mut(len) {
                Some(slot) if byte < 0x80 => {
                    *slot = byte;
                    len += 1;
                }
                _ => fits = false,
            }
        }
        Ok(match (fits, buf.get(..len)) {
            (true, Some(b"op")) => Name::Op,
            (true, Some(b"id")) => Name::Id,
            (true, Some(b"topic")) => Name::Topic,
            (true, Some(b"data")) => Name::Data,
            (true, Some(b"token")) => Name::Token,
            (true, Some(b"recover")) => Name::Recover,
            (true, Some(b"since")) => Name::Since,
            (true, Some(b"limit")) => Name::Limit,
            _ => Name::Other,
        })
    }

    /// The four hex digits of a `\u` escape, as the UTF-16 code unit they spell.
    fn hex4(&mut self) -> Result<u16, Refusal> {
        let digits = self
            .b
            .get(self.i..self.i.saturating_add(4))
            .ok_or(Invalid)?;
        let mut unit = 0u16;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(Invalid),
            };
            unit = unit << 4 | u16::from(v);
        }
        self.i += 4;
        Ok(unit)
    }

    /// `true`, `false` or `null`, spelled out.
    fn literal(&mut self, word: &[u8]) -> Result<(), Refusal> {
        if self
            .b
            .get(self.i..)
            .is_some_and(|rest| rest.starts_with(word))
        {
            self.i += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, of any length: serde_json
    /// skips a number without converting it, so a huge one is valid. What follows is the
    /// caller's to check (a digit after a leading `0` fails there).
    fn number(&mut self) -> Result<(), Refusal> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next_byte() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Invalid),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        Ok(())
    }

    /// Skips a run of ASCII digits; returns how many.
    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }
}
