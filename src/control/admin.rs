//! The admin HTTP server (hyper, HTTP/1.1): the accept loop with its connection cap, and one
//! task per connection with keep-alive and deadlines. Runs on the control thread's runtime.
//!
//! At the cap the loop takes no connection: new ones wait in the kernel's listen backlog, as
//! they would at any busy server, and are taken in order as slots free. Only those still
//! waiting after [`QUEUE_WAIT`] are accepted to be answered 503. The loop waits on a slot
//! or on that timer, never on the listener, so it cannot spin.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::endpoints::{self, Endpoints};
use super::framing::{MAX_HEAD, MAX_HEADERS};
use super::socket::AdminSocket;
use crate::stats::{bump, gauge};
use crate::stop::{stopped, Stopping};

pub use crate::config::MAX_ADMIN_CONNECTIONS;
/// Time from accepting a connection, or from the end of the previous response on it, to a
/// complete request head. It is a total, not a per-read timeout, so a client sending a byte
/// now and then is cut off too; it is also how long a keep-alive connection may sit idle.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// hyper's read buffer per connection: room for a [`MAX_HEAD`] head and a good part of a
/// body; hyper stops reading (and answers 431 to a head) at it.
pub const MAX_BUF: usize = 64 * 1024;
/// How long a connection may wait in the listen backlog while all
/// [`MAX_ADMIN_CONNECTIONS`] are in use before it is accepted only to be answered 503. Long
/// enough for a burst of scrapes (a request takes well under a millisecond) to be served in
/// turn, well under a scraper's timeout (Prometheus: 10 s) and the head deadline that frees
/// the slots of idle connections.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The admin listener's backlog: room for connections waiting for a slot, three times the
/// cap and more (the kernel caps it at net.core.somaxconn).
pub const BACKLOG: i32 = 1024;
/// Connections refused in one go once [`QUEUE_WAIT`] has passed at the cap, at most: the
/// backlog's worth, so that a flood arriving as fast as it is refused cannot hold the loop.
const REFUSE_AT_ONCE: usize = BACKLOG as usize;
/// How long stopping lets requests in progress finish before their tasks are dropped.
pub const STOP_GRACE: Duration = Duration::from_millis(300);

/// Answer to a connection over the cap: complete, so the client sees why, and small enough
/// for one non-blocking write into an empty socket buffer.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 78\r\nConnection: close\r\n\r\n\
{\"op\":\"error\",\"id\":null,\"code\":\"unavailable\",\"message\":\"too many connections\"}";

/// Accepts until `stopping` turns true, then lets connections finish for up to
/// [`STOP_GRACE`]. Returns when every connection task has ended or the grace is over; the
/// caller drops the runtime, which drops whatever is left.
pub async fn serve(listener: TcpListener, ep: Arc<Endpoints>, mut stopping: Stopping) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        // A slot before a connection: at the cap, the backlog holds them.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::select! {
                biased;
                _ = stopped(&mut stopping) => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break, // closed: never, the semaphore lives here
                },
                _ = tokio::time::sleep(QUEUE_WAIT) => {
                    refuse_waiting(&listener, &ep);
                    continue;
                }
            },
        };
        let accepted = tokio::select! {
            _ = stopped(&mut stopping) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((sock, peer)) => {
                tokio::spawn(connection(sock, peer, ep.clone(), slot, stopping.clone()));
            }
            // Out of descriptors: back off instead of spinning; other errors are one
            // client's aborted connect.
            Err(e) => {
                log::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Releases the port now, not when the runtime goes.
    drop(listener);
    let all = u32::try_from(MAX_ADMIN_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(STOP_GRACE, slots.acquire_many(all)).await;
}

/// Answers 503 to the connections waiting in the backlog now (they have waited
/// [`QUEUE_WAIT`] at most, for a slot that did not come), up to [`REFUSE_AT_ONCE`]; waits
/// for none. The accepts go straight to the socket, not through tokio's readiness, which may
/// not have seen the latest arrivals yet.
fn refuse_waiting(listener: &TcpListener, ep: &Endpoints) {
    let sock = socket2::SockRef::from(listener);
    for _ in 0..REFUSE_AT_ONCE {
        // The listener is non-blocking: WouldBlock, or any error, ends the round.
        let Ok((client, _)) = sock.accept() else {
            return;
        };
        bump(&ep.stats.connections_refused, 1);
        // One try: a client that cannot take 200 bytes is not waited for.
        let _ = client.send_with_flags(BUSY, libc::MSG_DONTWAIT);
    }
}

/// Serves one connection until it closes, errs, times out, or the server stops.
async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    ep: Arc<Endpoints>,
    _slot: OwnedSemaphorePermit,
    mut stopping: Stopping,
) {
    gauge(&ep.stats.connections_open, 1);
    let both_lengths = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(AdminSocket::new(
        sock,
        both_lengths.clone(),
        ep.stats.clone(),
    ));
    let svc_ep = ep.clone();
    let service =
        service_fn(move |req| endpoints::handle(svc_ep.clone(), both_lengths.clone(), req));
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper starts this timer when it begins reading a head, which on a keep-alive
        // connection is as soon as the previous response is written, and does not restart
        // it per read: it bounds both a trickled head and an idle connection.
        .header_read_timeout(HEAD_DEADLINE)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_BUF)
        .keep_alive(true)
        .serve_connection(io, service));
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut stopping) => {
            // Finish a request in progress, close an idle connection at once; the caller's
            // grace period bounds the rest.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            bump(&ep.stats.request_timeouts, 1);
            log::debug!("admin client {peer}: no complete request head within {HEAD_DEADLINE:?}");
        } else {
            log::debug!("admin client {peer}: {e}");
        }
    }
    gauge(&ep.stats.connections_open, -1);
}
