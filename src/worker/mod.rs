//! The per-core event loop: one thread, one `mio::Poll`, one slab of connections it owns.
//!
//! A loop turn: wait for readiness -> read and handle every ready connection (replies and
//! local publishes are only queued) -> take new sockets and other workers' deliveries ->
//! deliver all queued messages (merged per audience) -> flush each connection that has
//! output, once -> run due timers. So however many messages a turn produces, each
//! connection costs one `writev`.
//!
//! Shutdown keeps every acknowledged publish: on `Shutdown` a worker stops reading from its
//! clients, delivers what it holds, and sends a `Fence` to every worker. A worker closes its
//! connections (1001) only once every worker's fence has arrived: channels are FIFO per
//! sender, so by then every publish any worker accepted (and answered `ok`) has been queued
//! to its subscribers, ahead of the close frame.

mod dispatch;
pub mod handle;
mod io;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::IpAddr;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::admission;
use crate::broadcast::Delivery;
use crate::codec::close_code;
use crate::config::Config;
use crate::conn::{Conn, Phase, NEVER};
use crate::memory;
use crate::stats::{bump, gauge, Stats};
use crate::timer::{Entry, Wheel};
use crate::topics::Topics;
use handle::{Inbox, Msg, WorkerHandle};

/// Token of the worker's waker; slab keys never reach it.
pub const WAKER: Token = Token(usize::MAX);

/// Per-worker read buffer. Every connection reads through it, so its size costs nothing per
/// connection; 64 KiB takes a full loopback burst in one `read`.
const READ_BUF: usize = 64 * 1024;

/// Reads one connection may do in one loop turn before others get their turn.
const MAX_READS_PER_TURN: usize = 16;

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// Seconds a closing connection waits for the peer's close or EOF before it is dropped.
const CLOSE_TIMEOUT: u32 = 2;

/// Everything a worker owns. Nothing here is touched by another thread except through
/// `inbox` (channels) and `stats` (single-writer counters).
pub struct Worker {
    index: usize,
    poll: Poll,
    conns: Slab<Conn>,
    inbox: Inbox,
    /// Every worker's handle, this one's included, for fan-out.
    peers: Arc<[WorkerHandle]>,
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    /// Connection limits; every connection handed over is released here exactly once.
    admission: Arc<admission::Shared>,
    /// Process memory state: under pressure, slow consumers are cut shorter.
    memory: Arc<memory::Guard>,
    topics: Topics,
    /// Shared by all connections for reading; see `READ_BUF`.
    rbuf: Vec<u8>,
    /// Where JSON replies are built before being framed.
    scratch: Vec<u8>,
    /// Deliveries for this worker's connections, queued during the turn.
    pending: Vec<Delivery>,
    /// Recipients a delivery run did not fit, with how many of its messages they missed.
    over: Vec<(usize, u32)>,
    /// Connections with output to flush at the end of the turn.
    dirty: Vec<usize>,
    /// Connections that hit `MAX_READS_PER_TURN` and must be read again without an event.
    retry: Vec<usize>,
    wheel: Wheel,
    due: Vec<Entry>,
    started: Instant,
    next_generation: u32,
    /// Whole seconds since `started`, read once per loop turn.
    tick: u32,
    /// Set once shutdown began: the instant by which the worker exits regardless.
    drain_deadline: Option<Instant>,
    /// Where shutdown stands; see the module comment.
    drain: Drain,
    /// Fences that arrived before this worker's own `Shutdown` did.
    early_fences: usize,
}

/// What a worker shares with the rest of the server, handed over at start.
pub struct Context {
    /// Every worker's handle, this one's included, for fan-out.
    pub peers: Arc<[WorkerHandle]>,
    pub cfg: Arc<Config>,
    /// This worker's counters (it is their only writer).
    pub stats: Arc<Stats>,
    pub admission: Arc<admission::Shared>,
    pub memory: Arc<memory::Guard>,
}

/// What a readiness event said about the peer, beyond readability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hangup {
    No,
    /// The peer shut its side (FIN): read to EOF, whatever else is pending.
    Closed,
    /// The socket has an error (a reset): read to the error, even while input is held.
    Error,
}

/// Shutdown progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Serving.
    No,
    /// Clients are no longer read; this worker's fence goes out at the end of the turn.
    FenceDue,
    /// Waiting for the other workers' fences (`seen` so far, this worker's own included),
    /// until `give_up` (a dead worker never sends one).
    Fencing { seen: usize, give_up: Instant },
    /// Every connection has been sent its 1001; waiting for them to go.
    Closing,
}

impl Worker {
    pub fn new(index: usize, poll: Poll, inbox: Inbox, ctx: Context) -> Self {
        let Context {
            peers,
            cfg,
            stats,
            admission,
            memory,
        } = ctx;
        Worker {
            index,
            poll,
            conns: Slab::new(),
            inbox,
            peers,
            cfg,
            stats,
            admission,
            memory,
            topics: Topics::default(),
            rbuf: vec![0; READ_BUF],
            scratch: Vec::with_capacity(1024),
            pending: Vec::new(),
            over: Vec::new(),
            dirty: Vec::new(),
            retry: Vec::new(),
            wheel: Wheel::new(0),
            due: Vec::new(),
            started: Instant::now(),
            next_generation: 0,
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
            self.tick = self.started.elapsed().as_secs() as u32;

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
            self.deliver();
            self.advance_drain();
            self.flush_dirty();
            self.run_timers();
            #[cfg(debug_assertions)]
            self.check_invariants();
            if let Some(deadline) = self.drain_deadline {
                let fenced = matches!(self.drain, Drain::Fencing { .. } | Drain::Closing);
                if (fenced && self.conns.is_empty()) || Instant::now() >= deadline {
                    break;
                }
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

    /// Checks, at the end of a loop turn, what the rest of the worker relies on: the dirty
    /// list matches the dirty flags, every connection with unsent output will be flushed or
    /// is waiting for WRITABLE, and the gauges equal the sums they stand for.
    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        let (mut queued, mut outbound, mut inbound, mut held) = (0i64, 0i64, 0i64, 0i64);
        for (key, c) in self.conns.iter() {
            assert_eq!(c.dirty, self.dirty.contains(&key), "conn {key} dirty flag");
            assert!(
                !c.write_interest || !c.out.is_empty(),
                "conn {key} WRITABLE for nothing"
            );
            assert!(
                c.out.is_empty() || c.write_interest || c.dirty,
                "conn {key} has output nobody will flush"
            );
            queued += c.out.len() as i64;
            outbound += c.out.cost() as i64;
            inbound += c.inbound_cost() as i64;
            held += c.is_held() as i64;
        }
        let s = &self.stats;
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(s.queued_bytes.load(Relaxed), queued, "queued-bytes gauge");
        assert_eq!(
            s.outbound_memory.load(Relaxed),
            outbound,
            "outbound-memory gauge"
        );
        assert_eq!(
            s.inbound_memory.load(Relaxed),
            inbound,
            "inbound-memory gauge"
        );
        assert_eq!(s.held.load(Relaxed), held, "held gauge");
        assert_eq!(s.open.load(Relaxed), self.conns.len() as i64, "open gauge");
    }

    /// The current tick: whole seconds since the worker started, as of this loop turn.
    fn now(&self) -> u32 {
        self.tick
    }

    fn take_inbox(&mut self) {
        while let Ok((sock, ip)) = self.inbox.conns.try_recv() {
            self.add_conn(sock, ip);
        }
        while let Ok(msg) = self.inbox.msgs.try_recv() {
            match msg {
                Msg::Deliver(d) => self.pending.push(d),
                Msg::Shutdown => self.begin_shutdown(),
                Msg::Fence => {
                    if let Drain::Fencing { seen, .. } = &mut self.drain {
                        *seen += 1;
                    } else {
                        self.early_fences += 1;
                    }
                }
                #[cfg(test)]
                Msg::Panic(why) => panic!("{why}"),
            }
        }
    }

    fn add_conn(&mut self, mut sock: TcpStream, ip: IpAddr) {
        bump(&self.stats.accepted, 1);
        if self.drain_deadline.is_some() {
            self.admission.release(ip);
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
            self.admission.release(ip);
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        entry.insert(Conn::new(sock, ip, self.next_generation, now));
        gauge(&self.stats.open, 1);
        let deadline = now + self.cfg.handshake_timeout.as_secs() as u32;
        self.set_deadline(key, deadline);
        // Readiness for data that arrived before registration is reported by epoll itself.
    }

    /// Removes a connection at once: its subscriptions, its slab entry, its socket.
    fn drop_conn(&mut self, key: usize, why: &str) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        for t in &conn.subs {
            self.topics.unsubscribe(t, key);
        }
        log::trace!("worker {}: conn {key} dropped: {why}", self.index);
        gauge(&self.stats.open, -1);
        gauge(&self.stats.queued_bytes, -(conn.out.len() as i64));
        gauge(&self.stats.outbound_memory, -(conn.out.cost() as i64));
        gauge(&self.stats.inbound_memory, -(conn.inbound_cost() as i64));
        if conn.is_held() {
            gauge(&self.stats.held, -1);
        }
        bump(&self.stats.closed, 1);
        self.admission.release(conn.ip);
        // Dropping the socket closes it, which also takes it out of the epoll set.
    }

    /// Stops reading from clients; the fence goes out once this turn's deliveries are queued.
    fn begin_shutdown(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(Instant::now() + self.cfg.drain_timeout);
        self.drain = Drain::FenceDue;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.conns[key].phase == Phase::Handshake {
                // Nothing was acknowledged to a client that never upgraded.
                self.drop_conn(key, "shutdown during handshake");
            }
        }
    }

    /// True while shutdown waits for fences: open connections are not read, so that no
    /// publish is accepted that could miss a subscriber.
    pub(super) fn quiesced(&self) -> bool {
        matches!(self.drain, Drain::FenceDue | Drain::Fencing { .. })
    }

    /// Moves shutdown along after the turn's deliveries: send this worker's fence, and once
    /// every worker's fence is in (or waiting is pointless), close every connection.
    fn advance_drain(&mut self) {
        match self.drain {
            Drain::No | Drain::Closing => {}
            Drain::FenceDue => {
                for (i, peer) in self.peers.iter().enumerate() {
                    if i != self.index {
                        peer.send(Msg::Fence);
                    }
                }
                // Half the drain timeout for fences, the rest for the closing handshakes.
                let give_up = Instant::now() + self.cfg.drain_timeout / 2;
                let seen = 1 + std::mem::take(&mut self.early_fences);
                self.drain = Drain::Fencing { seen, give_up };
                self.advance_drain();
            }
            Drain::Fencing { seen, give_up } => {
                let all = seen >= self.peers.len();
                if !all && Instant::now() < give_up {
                    return;
                }
                if !all {
                    log::warn!(
                        "worker {}: {} of {} workers confirmed their last deliveries; closing \
                         anyway",
                        self.index,
                        seen,
                        self.peers.len()
                    );
                }
                self.drain = Drain::Closing;
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    if let Phase::Open(_) = self.conns[key].phase {
                        self.begin_close(key, close_code::GOING_AWAY, "server shutting down");
                    }
                }
            }
        }
    }

    /// Moves a connection's timer earlier if needed; later deadlines are picked up lazily
    /// when the current entry fires.
    pub(super) fn set_deadline(&mut self, key: usize, at: u32) {
        let conn = &mut self.conns[key];
        conn.deadline = at;
        if at < conn.timer_at {
            conn.timer_at = at;
            let entry = Entry {
                key,
                generation: conn.generation,
                at,
            };
            self.wheel.schedule(entry);
        }
    }

    /// Makes sure the connection's timer runs by `at`, keeping an earlier deadline.
    pub(super) fn arm(&mut self, key: usize, at: u32) {
        if at < self.conns[key].deadline {
            self.set_deadline(key, at);
        }
    }

    fn run_timers(&mut self) {
        let now = self.now();
        if (now as u64) <= self.wheel.now() {
            return;
        }
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now as u64, &mut due);
        for entry in due.drain(..) {
            self.on_timer(entry, now);
        }
        if due.capacity() > crate::timer::SHRINK_ABOVE {
            due = Vec::new();
        }
        self.due = due;
    }

    fn on_timer(&mut self, entry: Entry, now: u32) {
        let Some(conn) = self.conns.get_mut(entry.key) else {
            return;
        };
        if conn.generation != entry.generation || conn.timer_at != entry.at {
            return; // stale: the key was reused, or an earlier entry replaced this one
        }
        if entry.at > now {
            self.wheel.schedule(entry); // a deadline more than a lap out came round early
            return;
        }
        conn.timer_at = u32::MAX;
        if conn.deadline > now {
            let at = conn.deadline;
            self.set_deadline(entry.key, at);
            return;
        }
        let ping = self.cfg.ping_interval.as_secs() as u32;
        let idle = self.cfg.idle_timeout.as_secs() as u32;
        match conn.phase {
            Phase::Handshake => {
                bump(&self.stats.timeouts, 1);
                crate::stats::handshake_failed(&self.stats, 0);
                log::debug!(
                    "worker {}: conn {} handshake timeout",
                    self.index,
                    entry.key
                );
                self.drop_conn(entry.key, "handshake timeout");
            }
            Phase::Open(_) => {
                let key = entry.key;
                let held_until = conn
                    .held_since
                    .saturating_add(self.cfg.backpressure_timeout.as_secs() as u32);
                // A held connection is not read, so its partial message and its silence are
                // the server's doing: only the backpressure deadline runs for it.
                let held = conn.is_held();
                let partial_until = if held {
                    NEVER
                } else {
                    conn.partial_since
                        .saturating_add(self.cfg.message_timeout.as_secs() as u32)
                };
                if now >= held_until {
                    bump(&self.stats.backpressure_closes, 1);
                    log::debug!(
                        "worker {}: conn {key} over its outbound bound for {} s",
                        self.index,
                        now - conn.held_since
                    );
                    return self.begin_close(key, close_code::POLICY, "backpressure timeout");
                }
                if now >= partial_until {
                    bump(&self.stats.message_timeouts, 1);
                    log::debug!(
                        "worker {}: conn {key} took over {} s to send a message",
                        self.index,
                        now - conn.partial_since
                    );
                    return self.begin_close(key, close_code::POLICY, "message timeout");
                }
                let silent = now.saturating_sub(conn.last_rx);
                let next = if held {
                    NEVER
                } else if silent >= idle {
                    bump(&self.stats.timeouts, 1);
                    log::debug!("worker {}: conn {key} idle for {silent} s", self.index);
                    return self.begin_close(key, close_code::GOING_AWAY, "idle timeout");
                } else if silent >= ping {
                    let last_rx = conn.last_rx;
                    self.queue_frame(key, crate::codec::Kind::Ping, b"");
                    (last_rx + idle).min(now + ping)
                } else {
                    conn.last_rx + ping
                };
                self.set_deadline(key, next.min(held_until).min(partial_until));
            }
            Phase::Closing { .. } => self.drop_conn(entry.key, "close timeout"),
        }
    }
}
