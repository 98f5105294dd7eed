//! The acceptor thread: accepts connections and deals them round-robin to workers.
//!
//! It owns its own `mio::Poll` with the listener and a waker for shutdown. When the process
//! runs out of file descriptors, `accept` fails while the connection stays in the backlog; the
//! listener would stay readable and a naive loop would spin, and the client would hang. The
//! acceptor keeps one spare descriptor for that moment: it closes it, accepts the waiting
//! client, answers 503 and closes it, and takes the spare back. Only if even that fails does
//! it back off and retry on a timer, logging once per interval.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::admission::{self, Refusal};
use crate::handshake;
use crate::shared::Shared;

const LISTENER: Token = Token(0);
pub const ACCEPTOR_WAKER: Token = Token(1);

/// Pause before retrying `accept` after running out of descriptors or memory.
const BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this interval about descriptor exhaustion.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Acceptor {
    pub poll: Poll,
    pub listener: TcpListener,
    pub shared: Arc<Shared>,
    pub gate: admission::Gate,
    pub stop: Arc<AtomicBool>,
    /// The listener speaks TLS: refusals cannot be written in plain HTTP.
    pub tls: bool,
}

/// A descriptor held in reserve, released for a moment to refuse a client cleanly when
/// `accept` runs out of descriptors.
fn spare() -> Option<File> {
    match File::open("/dev/null") {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!("cannot open the spare descriptor: {e}");
            None
        }
    }
}

impl Acceptor {
    pub fn run(mut self) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let mut events = Events::with_capacity(16);
        let mut next = 0usize;
        let mut backoff = false;
        let mut last_log: Option<Instant> = None;
        let mut suppressed = 0u64;
        let mut spare = spare();
        loop {
            let timeout = backoff.then_some(BACKOFF);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            backoff = false;
            loop {
                match self.listener.accept() {
                    Ok((sock, peer)) => {
                        if self.shared.draining.load(Ordering::Relaxed) {
                            refuse(sock, Refusal::Draining, self.tls);
                            continue;
                        }
                        if self.shared.memory.over() {
                            let a = &self.shared.admission;
                            a.refused_memory.fetch_add(1, Ordering::Relaxed);
                            refuse(sock, Refusal::Memory, self.tls);
                            continue;
                        }
                        let client = admission::Peer::of(peer.ip());
                        let now = Instant::now();
                        if let Err(why) = self.gate.admit(&self.shared.admission, client, now) {
                            log::debug!("refused {peer}: {why:?}");
                            refuse(sock, why, self.tls);
                            continue;
                        }
                        // Small frames must leave at once, not wait for Nagle's timer.
                        if let Err(e) = sock.set_nodelay(true) {
                            log::debug!("set TCP_NODELAY failed: {e}");
                        }
                        let workers = &self.shared.workers;
                        let n = workers.len();
                        if let Err(_sock) = workers[next % n].send_conn(sock, client) {
                            self.shared.admission.release(client);
                            log::error!("worker {} is gone; connection dropped", next % n);
                        }
                        next = next.wrapping_add(1);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if is_out_of_descriptors(&e) && spare.is_some() => {
                        // Free the spare, take the waiting client, refuse it, take the spare
                        // back; if the spare cannot be had again, the next failure backs off.
                        drop(spare.take());
                        // accept(2) takes a descriptor before it looks at the queue, so at
                        // the limit it fails even with nobody waiting: only the retry with
                        // the spare freed tells whether a client was there.
                        let waiting = self.listener.accept();
                        let none_left = match waiting {
                            Ok((sock, peer)) => {
                                log::debug!("refused {peer}: out of descriptors");
                                let a = &self.shared.admission;
                                a.refused_descriptors.fetch_add(1, Ordering::Relaxed);
                                refuse(sock, Refusal::Descriptors, self.tls);
                                false
                            }
                            Err(ref w) if w.kind() == io::ErrorKind::WouldBlock => true,
                            Err(_) => {
                                backoff = true;
                                true
                            }
                        };
                        spare = File::open("/dev/null").ok();
                        if none_left {
                            break;
                        }
                        if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                            log::warn!(
                                "accept failed: {e}; refusing new connections with 503 until \
                                 descriptors free up ({suppressed} similar errors since the \
                                 last report)"
                            );
                            last_log = Some(Instant::now());
                            suppressed = 0;
                        } else {
                            suppressed += 1;
                        }
                    }
                    Err(e) if is_resource_exhaustion(&e) => {
                        backoff = true;
                        if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                            log::warn!(
                                "accept failed: {e}; refusing new connections until resources \
                                 free up ({suppressed} similar errors since the last report)"
                            );
                            last_log = Some(Instant::now());
                            suppressed = 0;
                        } else {
                            suppressed += 1;
                        }
                        break;
                    }
                    // The client gave up between SYN and accept; nothing to do.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                    Err(e) => {
                        log::warn!("accept failed: {e}");
                        backoff = true;
                        break;
                    }
                }
            }
        }
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Over a limit: answer without reading the request, and close. A TLS listener's client
/// expects a handshake, not plaintext: it is closed without a word (and counted as well).
fn refuse(mut sock: mio::net::TcpStream, why: Refusal, tls: bool) {
    if tls {
        return;
    }
    let resp = match why {
        Refusal::Full => handshake::http_response(
            503,
            "Service Unavailable",
            "Retry-After: 1\r\n",
            "connection limit reached",
        ),
        Refusal::Draining => handshake::http_response(
            503,
            "Service Unavailable",
            "Retry-After: 1\r\n",
            "server is shutting down",
        ),
        Refusal::Memory => handshake::http_response(
            503,
            "Service Unavailable",
            "Retry-After: 5\r\n",
            "server is short of memory",
        ),
        Refusal::Descriptors => handshake::http_response(
            503,
            "Service Unavailable",
            "Retry-After: 1\r\n",
            "server is out of file descriptors",
        ),
        Refusal::PerIp => handshake::http_response(
            429,
            "Too Many Requests",
            "Retry-After: 1\r\n",
            "too many connections from this address",
        ),
        Refusal::Rate => handshake::http_response(
            429,
            "Too Many Requests",
            "Retry-After: 1\r\n",
            "too many new connections from this address",
        ),
    };
    // A fresh socket's send buffer takes this small response whole, or not at all.
    let _ = sock.write(&resp);
    let _ = sock.shutdown(std::net::Shutdown::Write);
}

/// Wakes the acceptor so it notices `stop`.
pub fn stop(waker: &Waker, flag: &AtomicBool) {
    flag.store(true, Ordering::SeqCst);
    if let Err(e) = waker.wake() {
        log::error!("waking the acceptor failed: {e}");
    }
}
