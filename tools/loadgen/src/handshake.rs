//! HTTP/1.1 WebSocket upgrade: builds the client request and recognises the server's 101 reply.

use base64::Engine as _;

/// Response headers larger than this are treated as a bad handshake instead of buffering forever.
pub const MAX_RESPONSE_HEAD: usize = 8192;

/// Appends the upgrade request for `path` on `host` (host:port) with a key derived from `seed`.
pub fn write_request(out: &mut Vec<u8>, host: &str, path: &str, seed: u128) {
    let key = base64::engine::general_purpose::STANDARD.encode(seed.to_le_bytes());
    // Vec<u8> as io::Write cannot fail.
    use std::io::Write as _;
    let _ = write!(
        out,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
}

#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Need more bytes.
    Partial,
    /// 101 received; the head occupies this many bytes, anything after it is frame data.
    Upgraded(usize),
    /// Any other status, or a malformed/oversized head.
    Rejected(String),
}

/// Inspects the bytes received so far on a handshaking connection.
pub fn parse_response(buf: &[u8]) -> Response {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE_HEAD {
            return Response::Rejected("response head too large".into());
        }
        // Reject early if what we have already cannot be an HTTP response.
        let n = buf.len().min(5);
        if buf[..n] != b"HTTP/"[..n] {
            return Response::Rejected(status_line(buf));
        }
        return Response::Partial;
    };
    let head = &buf[..end];
    let ok = head.starts_with(b"HTTP/1.1 101")
        && matches!(head.get(12), Some(b' ') | Some(b'\r') | None);
    if ok {
        Response::Upgraded(end + 4)
    } else {
        Response::Rejected(status_line(head))
    }
}

fn status_line(buf: &[u8]) -> String {
    let line = buf
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shape() {
        let mut out = Vec::new();
        write_request(&mut out, "127.0.0.1:9000", "/echo", 42);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("GET /echo HTTP/1.1\r\n"));
        assert!(s.contains("\r\nHost: 127.0.0.1:9000\r\n"));
        assert!(s.contains("Sec-WebSocket-Version: 13"));
        let key = s
            .split("Sec-WebSocket-Key: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .unwrap()
                .len(),
            16
        );
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn response_parsing() {
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        for cut in 0..resp.len() - 2 {
            assert_eq!(parse_response(&resp[..cut]), Response::Partial, "cut {cut}");
        }
        assert_eq!(parse_response(resp), Response::Upgraded(resp.len() - 2));
        assert!(matches!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Response::Rejected(s) if s == "HTTP/1.1 404 Not Found"
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 1010\r\n\r\n"),
            Response::Rejected(_)
        ));
        assert!(matches!(parse_response(b"garbage"), Response::Rejected(_)));
        assert!(matches!(
            parse_response(&[b'H'; 9000]),
            Response::Rejected(_)
        ));
    }
}
