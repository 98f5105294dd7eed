//! Follows the request heads in an admin connection's byte stream, as it is read, to spot one
//! that carries both `Content-Length` and `Transfer-Encoding`. No I/O: the connection's socket
//! wrapper (`socket.rs`) feeds it on the control thread.
//!
//! Why this exists: RFC 9112 §6.3 lets a server either reject such a request or follow
//! `Transfer-Encoding` alone. hyper does the latter and removes `Content-Length` from the
//! headers the service sees, so the service cannot answer the 400 we want (the pair is the
//! classic request-smuggling signal) without seeing the raw head.
//!
//! To know where the next head starts it skips each `Content-Length` body, exactly as hyper
//! frames it. After a head with `Transfer-Encoding`, or one hyper refuses by itself, it stops:
//! the admin service answers any `Transfer-Encoding` request with `Connection: close`, and
//! hyper closes after its own refusals, so no further request is served on that connection.

/// Headers parsed per head; hyper is configured with the same number (`max_headers`), so a
/// head this scanner cannot parse is one hyper refuses (431) too.
pub const MAX_HEADERS: usize = 100;
/// Longest request head followed; the same as hyper's `max_header_size`, over which it
/// answers 431 itself.
pub const MAX_HEAD: usize = 16 * 1024;

/// Where the scanner is in the stream.
#[derive(Debug)]
enum State {
    /// Collecting the bytes of a request head (never more than [`MAX_HEAD`] and a read).
    Head(Vec<u8>),
    /// Skipping this many more bytes of a `Content-Length` body.
    Body(u64),
    /// No longer following: the connection closes after the current request.
    Stopped,
}

/// The scanner of one connection.
#[derive(Debug)]
pub struct HeadScan {
    state: State,
    /// A head with both `Content-Length` and `Transfer-Encoding` has been read. Since it is
    /// the last head followed, it belongs to the first request with `Transfer-Encoding`,
    /// which is the last request served on the connection.
    both_lengths: bool,
}

impl Default for HeadScan {
    fn default() -> Self {
        HeadScan {
            state: State::Head(Vec::new()),
            both_lengths: false,
        }
    }
}

impl HeadScan {
    /// Whether a request head with both framing headers has been seen.
    pub fn both_lengths(&self) -> bool {
        self.both_lengths
    }

    /// Takes the next bytes read from the socket.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Stopped => return,
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::Head(head) => {
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    // Parse only when a line may have ended: a trickled head costs one
                    // parse per line, not one per byte.
                    if !bytes.contains(&b'\n') {
                        if head.len() > MAX_HEAD {
                            self.state = State::Stopped;
                        }
                        return;
                    }
                    match inspect(head) {
                        Head::Partial if head.len() > MAX_HEAD => self.state = State::Stopped,
                        Head::Partial => return,
                        Head::Done { len, framing } => {
                            bytes = &bytes[len - before..];
                            self.state = match framing {
                                Framing::Length(n) => State::Body(n),
                                Framing::None => State::Head(Vec::new()),
                                Framing::Both => {
                                    self.both_lengths = true;
                                    State::Stopped
                                }
                                Framing::Chunked | Framing::Refused => State::Stopped,
                            };
                            if matches!(self.state, State::Body(0)) {
                                self.state = State::Head(Vec::new());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// How a complete head frames its body.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// Neither header: no body.
    None,
    /// `Content-Length` alone (all values equal).
    Length(u64),
    /// `Transfer-Encoding` alone.
    Chunked,
    /// Both headers.
    Both,
    /// Something hyper refuses by itself (bad or differing lengths, too many headers).
    Refused,
}

#[derive(Debug, PartialEq, Eq)]
enum Head {
    Partial,
    /// A complete head of `len` bytes (leading empty lines included).
    Done {
        len: usize,
        framing: Framing,
    },
}

fn inspect(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => {
            return Head::Done {
                len: buf.len(),
                framing: Framing::Refused,
            }
        }
    };
    let mut length: Option<u64> = None;
    let mut te = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // Digits only, as hyper parses it; a list or a sign is refused by hyper (400).
            let Some(n) = digits(h.value) else {
                return Head::Done {
                    len,
                    framing: Framing::Refused,
                };
            };
            if length.is_some_and(|m| m != n) {
                return Head::Done {
                    len,
                    framing: Framing::Refused,
                };
            }
            length = Some(n);
        }
    }
    let framing = match (length, te) {
        (Some(_), true) => Framing::Both,
        (None, true) => Framing::Chunked,
        (Some(n), false) => Framing::Length(n),
        (None, false) => Framing::None,
    };
    Head::Done { len, framing }
}

fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> HeadScan {
        let mut s = HeadScan::default();
        for c in chunks {
            s.feed(c);
        }
        s
    }

    #[test]
    fn spots_both_headers_in_either_order() {
        for head in [
            &b"POST /p HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST /p HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        ] {
            assert!(scan(&[head]).both_lengths());
        }
        assert!(!scan(&[b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]).both_lengths());
        assert!(!scan(&[b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"]).both_lengths());
    }

    #[test]
    fn a_head_trickled_a_byte_at_a_time_is_the_same_head() {
        let raw =
            b"\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        assert!(scan(&bytes).both_lengths());
    }

    #[test]
    fn body_bytes_are_skipped_not_read_as_a_head() {
        // The first body looks like a smuggling head; it is only a body.
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let first = format!("POST /p HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        let s = scan(&[first.as_bytes(), body, b"GET /m HTTP/1.1\r\n\r\n"]);
        assert!(!s.both_lengths());
        assert!(matches!(s.state, State::Head(ref h) if h.is_empty()));
        // The second request, pipelined behind a body in the same read, is followed.
        let mut all = first.into_bytes();
        all.extend_from_slice(body);
        all.extend_from_slice(
            b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
        );
        assert!(scan(&[&all]).both_lengths());
    }

    #[test]
    fn stops_where_hyper_refuses_or_the_connection_ends() {
        for head in [
            &b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"POST /p HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"POST /p HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\x00\x01 nonsense\r\n\r\n",
        ] {
            let s = scan(&[
                head,
                b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
            ]);
            assert!(matches!(s.state, State::Stopped), "{head:?}");
            assert!(!s.both_lengths(), "{head:?}");
        }
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert!(matches!(scan(&[b"GET /", &huge]).state, State::Stopped));
    }

    #[test]
    fn equal_repeated_lengths_are_one_length() {
        let s = scan(&[b"POST /p HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"]);
        assert!(matches!(s.state, State::Head(ref h) if h.is_empty()));
        assert_eq!(digits(b"18446744073709551616"), None);
        assert_eq!(digits(b"007"), Some(7));
    }
}
