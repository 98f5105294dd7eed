//! The cross-thread side of a worker: how the acceptor and other workers reach it.
//!
//! Senders push onto the worker's channels and wake it through its `mio::Waker` only if it
//! is about to sleep or asleep: under load a worker never sleeps, and nobody pays the
//! eventfd write. The protocol (also used by monoio and glommio): the worker sets `asleep`,
//! checks its queues once more, then polls; a sender pushes, then swaps `asleep` to false
//! and wakes only if it was true. The SeqCst fences order each side's store before its load,
//! so at least one of them sees the other's write.

use std::sync::atomic::{fence, AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpStream;
use mio::Waker;

use crate::admission::Peer;
use crate::delivery::Delivery;

/// New sockets waiting for a worker; when full, the acceptor waits, and the kernel's accept
/// backlog holds further clients.
pub const CONN_QUEUE: usize = 1024;

/// Messages between threads other than new sockets.
#[derive(Debug)]
pub enum Msg {
    /// A frame for this worker's subscribers, from another worker.
    Deliver(Delivery),
    /// The same from outside the workers (admin API, backplane): its bytes count against
    /// [`crate::broadcast::OUTSIDE_BYTES`] until taken.
    DeliverOutside(Delivery),
    /// Stop reading clients, confirm the last deliveries with a `Fence` to every worker, close
    /// every connection with 1001 once all fences are in, and exit once they are gone or the
    /// deadline passes.
    Shutdown,
    /// The sending worker has queued its last delivery: it accepts no more publishes.
    Fence,
    /// The TLS configuration for new connections from now on (a certificate reload);
    /// connections already open keep theirs.
    Tls(std::sync::Arc<rustls::ServerConfig>),
    /// Tests only: panic inside the worker's loop, to prove a dead worker is reported.
    #[cfg(test)]
    Panic(&'static str),
}

/// How to reach one worker. Cheap to share; the sending side of everything.
#[derive(Debug)]
pub struct WorkerHandle {
    conns: Sender<(TcpStream, Peer)>,
    msgs: Sender<Msg>,
    waker: Waker,
    asleep: Arc<AtomicBool>,
}

/// The worker's own ends of its channels.
#[derive(Debug)]
pub struct Inbox {
    pub conns: Receiver<(TcpStream, Peer)>,
    pub msgs: Receiver<Msg>,
    asleep: Arc<AtomicBool>,
}

pub fn channel(waker: Waker) -> (WorkerHandle, Inbox) {
    let (ctx, crx) = crossbeam_channel::bounded(CONN_QUEUE);
    // The channel for deliveries is unbounded on purpose: a worker must never block on a
    // peer (two workers publishing to each other would deadlock). What it holds is bounded
    // elsewhere, without blocking: publishes from outside by `broadcast::OUTSIDE_BYTES`
    // (refused past it), those of other workers' clients by `broadcast::CROSS_BYTES` (the
    // publisher's input is held back past it).
    let (mtx, mrx) = crossbeam_channel::unbounded();
    let asleep = Arc::new(AtomicBool::new(false));
    (
        WorkerHandle {
            conns: ctx,
            msgs: mtx,
            waker,
            asleep: asleep.clone(),
        },
        Inbox {
            conns: crx,
            msgs: mrx,
            asleep,
        },
    )
}

impl WorkerHandle {
    /// Hands a new socket over, waiting while the worker's queue is full. Gives the socket
    /// back if the worker has exited.
    pub fn send_conn(&self, sock: TcpStream, peer: Peer) -> Result<(), TcpStream> {
        let r = match self.conns.try_send((sock, peer)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(conn)) => {
                // The worker is busy (it has a wake pending); make sure, then wait for room.
                self.wake();
                self.conns.send(conn).map_err(|e| e.into_inner().0)
            }
            Err(TrySendError::Disconnected((sock, _))) => Err(sock),
        };
        self.wake_if_asleep();
        r
    }

    /// Queues a message; a worker that has exited simply never sees it.
    pub fn send(&self, msg: Msg) {
        if self.msgs.send(msg).is_ok() {
            self.wake_if_asleep();
        }
    }

    fn wake_if_asleep(&self) {
        fence(SeqCst);
        if self.asleep.swap(false, SeqCst) {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("waking a worker failed: {e}");
        }
    }
}

impl Inbox {
    /// Announces an intent to sleep; returns false (and cancels it) if work arrived meanwhile.
    pub fn may_sleep(&self) -> bool {
        self.asleep.store(true, SeqCst);
        fence(SeqCst);
        if self.conns.is_empty() && self.msgs.is_empty() {
            true
        } else {
            self.asleep.store(false, SeqCst);
            false
        }
    }

    pub fn awake(&self) {
        self.asleep.store(false, SeqCst);
    }
}
