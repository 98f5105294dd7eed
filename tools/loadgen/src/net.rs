//! Raw socket set-up: the target URL, non-blocking connect with optional source-IP bind, and
//! fd-limit raising.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::FromRawFd as _;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit struct; raising soft up to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok(lim.rlim_cur as u64)
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_int_opt(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller; we pass a pointer to a live c_int and
    // its exact size, as setsockopt requires.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// Starts a non-blocking TCP connect to `dst`, optionally binding the source address first.
///
/// mio 1 has no `TcpSocket`, and binding a source IP needs to happen between `socket()` and
/// `connect()`, so this goes through libc directly. The returned stream may still be
/// connecting; completion is signalled by a WRITABLE event.
pub fn connect(dst: SocketAddrV4, src: Option<Ipv4Addr>) -> io::Result<mio::net::TcpStream> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    check(fd)?;
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it, so the TcpStream
    // takes sole ownership and closes it on drop, including on the error paths below.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if let Some(ip) = src {
        // Defer ephemeral port choice to connect() so ports are shared per 4-tuple rather than
        // reserved per source IP; best effort (older kernels lack the option).
        let _ = set_int_opt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        let sa = sockaddr(SocketAddrV4::new(ip, 0));
        // SAFETY: `sa` is a valid sockaddr_in and the length passed matches its size.
        check(unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
    }
    let sa = sockaddr(dst);
    // SAFETY: `sa` is a valid sockaddr_in and the length passed matches its size.
    let ret = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(mio::net::TcpStream::from_std(std_stream))
}

/// Why a connection attempt failed, as reported in `connect.failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Refused,
    /// The server refused the token (HTTP 401, or close 4001 after `connect`).
    Unauthorized,
    Reset,
    Timeout,
    BadHandshake,
    /// The TLS handshake or session failed (certificate, alert, bad record).
    Tls,
    Other,
}

pub fn classify(err: &io::Error) -> Failure {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused => Failure::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Failure::Reset,
        TimedOut => Failure::Timeout,
        _ => Failure::Other,
    }
}

/// Where every connection of a run goes.
#[derive(Clone)]
pub struct Target {
    pub dst: SocketAddrV4,
    /// The `Host` header: the URL's host:port.
    pub host: String,
    /// Present for `wss://`.
    pub tls: Option<crate::tls::Client>,
    /// Offer permessage-deflate (`--deflate`).
    pub deflate: bool,
    /// `--tokens`: what each connection presents; `None`: no token.
    pub credentials: Option<std::sync::Arc<crate::credentials::Credentials>>,
}

#[cfg(test)]
impl Target {
    /// A `ws://` target at `dst`.
    pub fn plain(dst: SocketAddrV4) -> Target {
        Target {
            dst,
            host: dst.to_string(),
            tls: None,
            deflate: false,
            credentials: None,
        }
    }
}

/// A parsed `--url`.
#[derive(Debug, PartialEq, Eq)]
pub struct Url {
    /// `wss://` rather than `ws://`.
    pub tls: bool,
    pub dst: SocketAddrV4,
    /// host:port as written, for the `Host` header (`localhost` stays `localhost`).
    pub host_port: String,
    /// The host as written: the default TLS server name.
    pub host: String,
}

/// Parses `ws://host:port[/...]` or `wss://host:port[/...]` with an IPv4 address or
/// `localhost`; only loopback is allowed. The path is ignored: each scenario picks its own.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let (tls, rest) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(format!("url must start with ws:// or wss://: {url}")),
    };
    let host_port = rest.split('/').next().unwrap_or(rest);
    let (host, _) = host_port
        .rsplit_once(':')
        .ok_or_else(|| format!("url needs a port: {url}"))?;
    let addr_text = if host == "localhost" {
        host_port.replacen("localhost", "127.0.0.1", 1)
    } else {
        host_port.to_string()
    };
    let dst: SocketAddrV4 = addr_text
        .parse()
        .map_err(|e| format!("bad host:port {host_port:?}: {e}"))?;
    if !dst.ip().is_loopback() {
        return Err(format!("refusing non-loopback target {dst}"));
    }
    Ok(Url {
        tls,
        dst,
        host_port: host_port.to_string(),
        host: host.to_string(),
    })
}

/// Source IP for connection number `i` when spreading over 127.0.0.1..127.0.0.K.
pub fn src_ip(i: usize, k: usize) -> Option<Ipv4Addr> {
    if k == 0 {
        return None;
    }
    let n = (i % k) as u32 + 1;
    Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_src_ips() {
        let u = parse_url("ws://127.0.0.1:9000").unwrap();
        assert_eq!(u.dst.port(), 9000);
        assert_eq!(u.host_port, "127.0.0.1:9000");
        assert!(!u.tls);
        assert!(parse_url("ws://10.0.0.1:9000").is_err());
        assert!(parse_url("wss://10.0.0.1:9000").is_err());
        assert!(parse_url("http://127.0.0.1:9000").is_err());
        assert!(parse_url("wss://127.0.0.1").is_err());
        let u = parse_url("ws://localhost:80/x").unwrap();
        assert_eq!(u.dst, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80));
        assert_eq!(u.host_port, "localhost:80");
        let u = parse_url("wss://localhost:9443/ws").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.dst.port()),
            (true, "localhost", 9443)
        );
        assert_eq!(parse_url("wss://127.0.0.2:1").unwrap().host, "127.0.0.2");
        assert_eq!(src_ip(0, 3), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(src_ip(5, 3), Some(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(src_ip(5, 0), None);
    }

    #[test]
    fn refused_is_classified() {
        // Grab a free port, close it, then connect: loopback reports refusal.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        match connect(dst, src_ip(1, 2)) {
            Err(e) => assert_eq!(classify(&e), Failure::Refused),
            Ok(s) => {
                // Non-blocking: the refusal shows up on the socket once the RST is processed.
                std::thread::sleep(std::time::Duration::from_millis(50));
                let e = s.take_error().unwrap().expect("error pending");
                assert_eq!(classify(&e), Failure::Refused);
            }
        }
    }
}
