//! The cross-thread side of a worker: how the acceptor and other workers reach it.
//!
//! Senders push onto the worker's channels and wake it through its `mio::Waker` only if it
//! is about to sleep or asleep: under load a worker never sleeps, and nobody pays the
//! eventfd write. The protocol (also used by monoio and glommio): the worker sets `asleep`,
//! checks its queues once more, then polls; a sender pushes, then swaps `asleep` to false
//! and wakes only if it was true. The SeqCst fences order each side's store before its load,
//! so at least one of them sees the other's write.
//!
//! A worker that has exited reads nothing more, but what is sent to it was charged to a
//! budget (`broadcast::OUTSIDE_BYTES`, `broadcast::CROSS_BYTES`) that only its reading
//! gives back. So the handles keep a receiving end of their own: once the worker is
//! [retired](WorkerHandle::retire), whatever it left unread, and whatever is sent to it
//! later, is handed back to its sender to account for. The same fence protocol, on `gone`,
//! makes sure each such message is handed back exactly once, by the retirement or by the
//! sender that finds the worker gone.

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
    /// A frame for this worker's subscribers, published on worker `from`: taking it counts
    /// one more of `from`'s publishes taken (see `progress`). A `u32`, so that the message
    /// stays 56 bytes, as it was without it (the tag shares its word).
    Deliver { from: u32, d: Delivery },
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
    /// Close every connection of this user with 4003 (`POST /disconnect`, here or on
    /// another node); the worker answers how many on `done`, if given.
    Disconnect {
        user: Arc<str>,
        done: Option<tokio::sync::mpsc::UnboundedSender<usize>>,
    },
    /// A publication to a history topic this worker owns, made on another worker: the owner
    /// numbers it, keeps it and sends it on to every worker.
    HistoryPublish(Box<HistoryPublish>),
    /// A connection of worker `from` subscribes to a history topic this worker owns: where
    /// the stream stands, and what followed the client's offset if it recovers.
    HistoryAsk(Box<super::history::Ask>),
    /// The owner's answer to a [`Msg::HistoryAsk`] or a history read.
    HistoryAnswer(Box<super::history::Answer>),
    /// Tests only: panic inside the worker's loop, to prove a dead worker is reported.
    #[cfg(test)]
    Panic(&'static str),
    /// Tests only: skew one of the worker's gauges, so that the end-of-turn invariant check
    /// (in builds with debug assertions) must fail.
    #[cfg(test)]
    BreakInvariant,
}

pub use super::history::Publish as HistoryPublish;

/// What a worker and its handles both see.
#[derive(Debug, Default)]
struct State {
    /// The worker is about to sleep, or asleep: the next sender wakes it.
    asleep: AtomicBool,
    /// The worker has exited: it reads nothing more.
    gone: AtomicBool,
}

/// How to reach one worker. Cheap to share; the sending side of everything.
#[derive(Debug)]
pub struct WorkerHandle {
    conns: Sender<(TcpStream, Peer)>,
    msgs: Sender<Msg>,
    /// A second receiving end of `msgs`, read only once the worker is gone, to take back
    /// what it left unread. It also keeps the channel open, so a send itself never fails.
    unread: Receiver<Msg>,
    waker: Waker,
    state: Arc<State>,
}

/// The worker's own ends of its channels.
#[derive(Debug)]
pub struct Inbox {
    pub conns: Receiver<(TcpStream, Peer)>,
    pub msgs: Receiver<Msg>,
    state: Arc<State>,
}

pub fn channel(waker: Waker) -> (WorkerHandle, Inbox) {
    let (ctx, crx) = crossbeam_channel::bounded(CONN_QUEUE);
    // The channel for deliveries is unbounded on purpose: a worker must never block on a
    // peer (two workers publishing to each other would deadlock). What it holds is bounded
    // elsewhere, without blocking: publishes from outside by `broadcast::OUTSIDE_BYTES`
    // (refused past it), those of other workers' clients by `broadcast::CROSS_BYTES` (the
    // publisher's input is held back past it).
    let (mtx, mrx) = crossbeam_channel::unbounded();
    let state = Arc::new(State::default());
    (
        WorkerHandle {
            conns: ctx,
            msgs: mtx,
            unread: mrx.clone(),
            waker,
            state: state.clone(),
        },
        Inbox {
            conns: crx,
            msgs: mrx,
            state,
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

    /// Queues a message. False if the worker has exited: then `unread` gets this message
    /// and whatever else the worker left in its queue (each message once, whoever finds
    /// it), for the sender to give back what it charged for them.
    pub fn send(&self, msg: Msg, mut unread: impl FnMut(Msg)) -> bool {
        if self.state.gone.load(SeqCst) {
            unread(msg);
            self.unread.try_iter().for_each(unread);
            return false;
        }
        // Never fails: `self.unread` keeps the channel open.
        let _ = self.msgs.send(msg);
        fence(SeqCst);
        if self.state.gone.load(SeqCst) {
            // Retired meanwhile, perhaps before this message arrived: take it back here.
            self.unread.try_iter().for_each(unread);
            return false;
        }
        if self.state.asleep.swap(false, SeqCst) {
            self.wake();
        }
        true
    }

    /// The worker has exited (returned or panicked) and reads nothing more: `unread` gets
    /// each message it left in its queue, and later sends hand theirs back (see
    /// [`send`](WorkerHandle::send)).
    pub fn retire(&self, unread: impl FnMut(Msg)) {
        self.state.gone.store(true, SeqCst);
        fence(SeqCst);
        self.unread.try_iter().for_each(unread);
    }

    fn wake_if_asleep(&self) {
        fence(SeqCst);
        if self.state.asleep.swap(false, SeqCst) {
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
        self.state.asleep.store(true, SeqCst);
        fence(SeqCst);
        if self.conns.is_empty() && self.msgs.is_empty() {
            true
        } else {
            self.state.asleep.store(false, SeqCst);
            false
        }
    }

    pub fn awake(&self) {
        self.state.asleep.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_between_workers_stays_seven_words() {
        // Every delivery between workers is one channel slot of this size: naming its
        // publisher (`Deliver::from`) must not grow it.
        let size = std::mem::size_of::<Msg>();
        assert!(size <= 56, "Msg grew to {size} bytes");
    }
}
