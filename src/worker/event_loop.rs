//! The worker and its loop turn. Runs on the worker's own thread, pinned to its core.
//!
//! A loop turn: wait for readiness -> read and handle every ready connection (replies and
//! local publishes are only queued) -> take new sockets and other workers' deliveries ->
//! deliver all queued messages (merged per audience) -> once a second, the deadlines that
//! came -> flush each connection that has output, once. So however many messages a turn
//! produces, each connection costs one `writev`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::drain::Drain;
use super::handle::{Inbox, Msg};
use crate::admission;
use crate::broadcast::{Delivery, Port};
use crate::config::Config;
use crate::conn::deflate::{Deflater, Inflater};
use crate::conn::{Conn, Tls, Transport};
use crate::console::Console;
use crate::memory;
use crate::stats::{bump, gauge, Stats};
use crate::topics::Topics;

/// Token of the worker's waker; slab keys never reach it.
pub const WAKER: Token = Token(usize::MAX);

/// Per-worker read buffer. Every connection reads through it, so its size costs nothing per
/// connection; 64 KiB takes a full loopback burst in one `read`.
pub(super) const READ_BUF: usize = 64 * 1024;

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// Everything a worker owns. Nothing here is touched by another thread except through
/// `inbox` (channels) and `stats` (single-writer counters).
pub struct Worker {
    pub(super) index: usize,
    pub(super) poll: Poll,
    pub(super) conns: Slab<Conn>,
    pub(super) inbox: Inbox,
    /// Every worker's queue, for fan-out and shutdown fences.
    pub(super) bus: Port,
    pub(super) cfg: Arc<Config>,
    pub(super) stats: Arc<Stats>,
    /// Connection limits; every connection handed over is released here exactly once.
    pub(super) admission: Arc<admission::Shared>,
    /// Process memory state: under pressure, slow consumers are cut shorter.
    pub(super) memory: Arc<memory::Guard>,
    pub(super) topics: Topics,
    /// Shared by all connections for reading; see `READ_BUF`.
    pub(super) rbuf: Vec<u8>,
    /// The TLS configuration new connections get; `None`: plain ws.
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
    /// The console's figures, served on `/stats.json`.
    pub(super) console: Arc<Console>,
    /// Shared by TLS connections: ciphertext as it is read (`READ_BUF`), and plaintext
    /// gathered for encryption (a batch). Empty without TLS.
    pub(super) tls_in: Vec<u8>,
    pub(super) tls_out: Vec<u8>,
    /// Where JSON replies are built before being framed.
    pub(super) scratch: Vec<u8>,
    /// The cork: while a plain connection's input is handled, the frames it is answered with
    /// are gathered here instead of in its own queue, and written with one `write` when its
    /// input is done. Only what the socket does not take is copied into the connection's
    /// queue, so a connection that keeps up costs no allocation per reply (uWebSockets corks
    /// the same way). Kept between connections, shrunk to `CORK_KEEP` after a large batch.
    pub(super) cork: Vec<u8>,
    /// The connection the cork is gathering for, while its input is being handled.
    pub(super) corked: Option<usize>,
    /// permessage-deflate: the worker's one inflater, reset per message, and where a
    /// message is inflated to (up to --max-message-size; shrunk after a large one).
    pub(super) inflater: Inflater,
    pub(super) inflated: Vec<u8>,
    /// permessage-deflate: the worker's compressors (made on first use) and their output.
    pub(super) deflater: Deflater,
    pub(super) zscratch: Vec<u8>,
    /// Deliveries for this worker's connections, queued during the turn.
    pub(super) pending: Vec<Delivery>,
    /// Shared frames delivered this turn to plain connections with nothing queued (see
    /// `deliver::try_stage`): their end-of-turn flush writes them straight from the shared
    /// bytes, so a reader that keeps up costs no queue and no allocation per delivery. Each
    /// entry links to the previous one for the same connection; emptied after the flush.
    pub(super) staged: Vec<super::deliver::Staged>,
    /// Recipients a delivery run did not fit, with how many of its messages they missed.
    pub(super) over: Vec<(usize, u32)>,
    /// Connections with output to flush at the end of the turn.
    pub(super) dirty: Vec<usize>,
    /// Connections held back because their publishes found the other workers
    /// `broadcast::CROSS_BYTES` behind; let go once those queues are down to half.
    pub(super) publishers_held: Vec<usize>,
    /// The connection being read has just published (see `publishers_held`).
    pub(super) published: bool,
    /// Connections to read again without an event: they hit the per-turn read cap, or their
    /// held input was let go.
    pub(super) retry: Vec<usize>,
    /// The last tick whose deadlines were handled.
    pub(super) swept: u32,
    /// Keys whose deadline came, gathered by the sweep.
    pub(super) due: Vec<usize>,
    started: Instant,
    /// Whole seconds since `started`, read once per loop turn.
    tick: u32,
    /// Set once shutdown began: the instant by which the worker exits regardless.
    pub(super) drain_deadline: Option<Instant>,
    /// Where shutdown stands; see `drain`.
    pub(super) drain: Drain,
    /// Fences that arrived before this worker's own `Shutdown` did.
    pub(super) early_fences: usize,
}

/// What a worker shares with the rest of the server, handed over at start.
pub struct Context {
    /// Every worker's queue, this one's included.
    pub bus: Port,
    pub cfg: Arc<Config>,
    /// This worker's counters (it is their only writer).
    pub stats: Arc<Stats>,
    pub admission: Arc<admission::Shared>,
    pub memory: Arc<memory::Guard>,
    /// The TLS configuration new connections get; `None`: plain ws.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub console: Arc<Console>,
}

/// How often a worker with held publishers looks whether the other workers caught up.
const PUBLISHERS_RECHECK: Duration = Duration::from_millis(2);

/// Capacity of the cork kept between connections (see `Worker::cork`).
pub(super) const CORK_KEEP: usize = 64 * 1024;

/// Bytes of deliveries a turn takes from the worker's queue at most (and at least one
/// delivery); the rest waits for the next turn, which then comes at once.
const INBOX_BYTES_PER_TURN: usize = 1 << 20;

/// What a readiness event said about the peer, beyond readability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hangup {
    No,
    /// The peer shut its side (FIN): read to EOF, whatever else is pending.
    Closed,
    /// The socket has an error (a reset): read to the error, even while input is held.
    Error,
}

impl Worker {
    pub fn new(index: usize, poll: Poll, inbox: Inbox, ctx: Context) -> Self {
        let Context {
            bus,
            cfg,
            stats,
            admission,
            memory,
            tls,
            console,
        } = ctx;
        let topics = Topics::new(index, bus.backplane_link());
        let deflate_level = cfg.deflate_level;
        let tls_in = if tls.is_some() {
            vec![0; READ_BUF]
        } else {
            Vec::new()
        };
        Worker {
            index,
            poll,
            conns: Slab::new(),
            inbox,
            bus,
            cfg,
            stats,
            admission,
            memory,
            topics,
            rbuf: vec![0; READ_BUF],
            tls,
            console,
            tls_in,
            tls_out: Vec::new(),
            scratch: Vec::with_capacity(1024),
            cork: Vec::with_capacity(CORK_KEEP),
            corked: None,
            inflater: Inflater::default(),
            inflated: Vec::new(),
            deflater: Deflater::new(deflate_level),
            zscratch: Vec::new(),
            pending: Vec::new(),
            over: Vec::new(),
            staged: Vec::new(),
            dirty: Vec::new(),
            publishers_held: Vec::new(),
            published: false,
            retry: Vec::new(),
            swept: 0,
            due: Vec::new(),
            started: Instant::now(),
            tick: 0,
            drain_deadline: None,
            drain: Drain::No,
            early_fences: 0,
        }
    }

    /// Runs the loop until shutdown completes. Returns an error only if polling itself fails.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        let mut ready: Vec<(usize, bool, bool, Hangup)> = Vec::with_capacity(EVENTS);
        loop {
            let busy = !self.retry.is_empty() || !self.pending.is_empty();
            // Wake at least once a second for timers.
            let timeout = if busy || !self.inbox.may_sleep() {
                Some(Duration::ZERO)
            } else if !self.publishers_held.is_empty() {
                // Nothing wakes a worker when the other workers' queues drain: look again.
                Some(PUBLISHERS_RECHECK)
            } else if self.spreading() {
                Some(super::drain::SPREAD_TICK)
            } else {
                Some(Duration::from_millis(
                    1000 - self.started.elapsed().subsec_millis() as u64,
                ))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.inbox.awake();
            let woke = Instant::now();
            self.stats.turns.begin(woke);
            self.tick = woke.duration_since(self.started).as_secs() as u32;

            ready.clear();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                // Errors and hang-ups surface as read results, so they go down the read path.
                let read = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                let hup = if ev.is_error() {
                    Hangup::Error
                } else if ev.is_read_closed() {
                    Hangup::Closed
                } else {
                    Hangup::No
                };
                ready.push((ev.token().0, read, ev.is_writable(), hup));
            }
            for &(key, read, write, hup) in &ready {
                if write {
                    self.mark_dirty(key);
                }
                if read {
                    self.on_readable(key, hup);
                }
            }
            for key in std::mem::take(&mut self.retry) {
                self.on_readable(key, Hangup::No);
            }
            self.take_inbox();
            // The turn's publishes to the backplane, the budget of what it took back.
            self.bus.flush();
            self.release_publishers();
            self.deliver();
            self.advance_drain();
            // Before the flush, so that what timers queue (pings, close frames) leaves in
            // this turn rather than after the next wake-up, up to a second later.
            self.run_timers();
            self.flush_dirty();
            self.end_staging();
            self.topics.resync_backplane();
            #[cfg(debug_assertions)]
            self.check_invariants();
            self.stats.turns.record(woke.elapsed());
            if self.drain_done() {
                break;
            }
        }
        let left = self.conns.len();
        if left > 0 {
            log::info!(
                "worker {}: drain timeout, dropping {left} connections",
                self.index
            );
        }
        for key in self.conns.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            self.drop_conn(key, "shutdown");
        }
        Ok(())
    }

    /// The current tick: whole seconds since the worker started, as of this loop turn.
    pub(super) fn now(&self) -> u32 {
        self.tick
    }

    fn take_inbox(&mut self) {
        while let Ok((sock, peer)) = self.inbox.conns.try_recv() {
            self.add_conn(sock, peer);
        }
        // Deliveries are taken up to a budget per turn, so that a backlog (other workers or
        // nodes publishing faster than this one delivers) is worked off over several turns
        // with this worker's sockets served between them, not in one turn that starves them.
        let mut taken = 0;
        while taken < INBOX_BYTES_PER_TURN {
            let Ok(msg) = self.inbox.msgs.try_recv() else {
                break;
            };
            match msg {
                Msg::Deliver(d) => {
                    taken += d.frame.len();
                    self.bus.cross_taken(&d);
                    self.pending.push(d);
                }
                Msg::DeliverOutside(d) => {
                    taken += d.frame.len();
                    self.bus.outside_taken(&d);
                    self.pending.push(d);
                }
                Msg::Shutdown => self.begin_shutdown(),
                Msg::Fence => self.on_fence(),
                Msg::Tls(cfg) => {
                    if self.tls_in.is_empty() {
                        self.tls_in = vec![0; READ_BUF];
                    }
                    self.tls = Some(cfg);
                }
                #[cfg(test)]
                Msg::Panic(why) => panic!("{why}"),
            }
        }
    }

    fn add_conn(&mut self, mut sock: TcpStream, peer: admission::Peer) {
        bump(&self.stats.accepted, 1);
        if self.drain_deadline.is_some() {
            self.admission.release(peer);
            return;
        }
        let now = self.now();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, Token(key), Interest::READABLE)
        {
            log::warn!("worker {}: registering a socket failed: {e}", self.index);
            self.admission.release(peer);
            return;
        }
        let transport = match &self.tls {
            None => Transport::Plain(sock),
            Some(cfg) => match Tls::new(sock, cfg.clone()) {
                Ok(t) => Transport::Tls(Box::new(t)),
                Err(e) => {
                    log::warn!("worker {}: cannot start TLS: {e}", self.index);
                    self.admission.release(peer);
                    return;
                }
            },
        };
        entry.insert(Conn::new(transport, peer, now));
        gauge(&self.stats.open, 1);
        let deadline = now + self.cfg.handshake_timeout.as_secs() as u32;
        self.set_deadline(key, deadline);
        // Readiness for data that arrived before registration is reported by epoll itself.
    }

    /// Removes a connection at once: its subscriptions, its slab entry, its socket.
    pub(super) fn drop_conn(&mut self, key: usize, why: &str) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        for t in &conn.subs {
            self.topics.unsubscribe(t, key);
        }
        log::trace!("worker {}: conn {key} dropped: {why}", self.index);
        gauge(&self.stats.open, -1);
        if conn.upgraded {
            gauge(&self.stats.websockets, -1);
        }
        gauge(&self.stats.queued_bytes, -(conn.out.len() as i64));
        gauge(&self.stats.outbound_memory, -(conn.out.cost() as i64));
        gauge(&self.stats.inbound_memory, -(conn.inbound_cost() as i64));
        gauge(&self.stats.tls_memory, -(conn.transport.cost() as i64));
        if conn.is_held() {
            gauge(&self.stats.held, -1);
        }
        bump(&self.stats.closed, 1);
        self.admission.release(conn.peer);
        // Dropping the socket closes it, which also takes it out of the epoll set.
    }
}
