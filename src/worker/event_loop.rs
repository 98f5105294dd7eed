//! The worker and its loop turn. Runs on the worker's own thread, pinned to its core.
//!
//! A loop turn: wait for readiness -> read and handle every ready connection (replies and
//! local publishes are only gathered) -> take new sockets and other workers' deliveries ->
//! deliver all gathered messages (merged per audience) -> move shutdown along -> once a
//! second, the deadlines that came -> flush each connection that has output, once. So
//! however many messages a turn produces, each connection costs one `writev`.
//!
//! The worker is the top of its parts and the only one that calls several: `reader`
//! (reading) calls `effects` (what input calls for), which calls `fanout` (delivery); each
//! of them, and `timers` and `drain`, call `conns` (the slab and the output door). No part
//! calls back up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::conns::Conns;
use super::drain::{Drain, SPREAD_TICK};
use super::effects::Effects;
use super::fanout::Fanout;
use super::handle::{Inbox, Msg};
use super::reader::{Hangup, Reader};
use super::timers::Timers;
use super::tokens::Tokens;
use crate::admission;
use crate::auth::Auth;
use crate::broadcast::Port;
use crate::config::Config;
use crate::console::Console;
use crate::memory;
use crate::stats::Stats;
use crate::topics::Topics;

/// Token of the worker's waker; slab keys never reach it.
pub const WAKER: Token = Token(usize::MAX);

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// How often a worker with held publishers looks whether the other workers caught up.
const PUBLISHERS_RECHECK: Duration = Duration::from_millis(2);

/// Bytes of deliveries a turn takes from the worker's queue at most (and at least one
/// delivery); the rest waits for the next turn, which then comes at once.
const INBOX_BYTES_PER_TURN: usize = 1 << 20;

/// Unix time in whole seconds (0 before 1970, which no clock here reads).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything a worker owns, as parts that each own their state. Nothing here is touched by
/// another thread except through `inbox` (channels) and the counters (single-writer).
pub struct Worker {
    index: usize,
    poll: Poll,
    inbox: Inbox,
    /// The TLS configuration new connections get; `None`: plain ws.
    tls: Option<Arc<rustls::ServerConfig>>,
    pub(super) stats: Arc<Stats>,
    started: Instant,
    pub(super) conns: Conns,
    pub(super) reader: Reader,
    pub(super) effects: Effects,
    pub(super) fanout: Fanout,
    timers: Timers,
    drain: Drain,
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
    /// The token verifier, when a key source is configured.
    pub auth: Option<Arc<Auth>>,
}

impl Worker {
    pub fn new(index: usize, poll: Poll, inbox: Inbox, ctx: Context) -> std::io::Result<Self> {
        let Context {
            bus,
            cfg,
            stats,
            admission,
            memory,
            tls,
            console,
            auth,
        } = ctx;
        let topics = Topics::new(index, bus.backplane_link());
        let registry = poll.registry().try_clone()?;
        Ok(Worker {
            index,
            inbox,
            stats: stats.clone(),
            started: Instant::now(),
            reader: Reader::new(tls.is_some()),
            tls,
            fanout: Fanout::new(cfg.deflate_level, memory),
            timers: Timers::default(),
            drain: Drain::new(cfg.drain_timeout, cfg.reuse_port),
            effects: Effects::new(bus, console, Tokens::new(auth), cfg.history.clone()),
            conns: Conns::new(index, cfg, stats, admission, registry, topics),
            poll,
        })
    }

    /// Runs the loop until shutdown completes. Returns an error only if polling itself fails.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        let mut ready: Vec<(usize, bool, bool, Hangup)> = Vec::with_capacity(EVENTS);
        loop {
            let timeout = self.poll_timeout();
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.inbox.awake();
            let woke = Instant::now();
            self.stats.turns.begin(woke);
            self.conns.now = woke.duration_since(self.started).as_secs() as u32;
            self.conns.unix_now = unix_now();
            self.conns.now_ms = woke.duration_since(self.started).as_millis() as u32;
            self.effects.tokens.begin_turn();

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
            self.turn(&ready);
            self.stats.turns.record(woke.elapsed());
            if self.drain.done(&self.conns) {
                break;
            }
        }
        let left = self.conns.slab.len();
        if left > 0 {
            log::info!(
                "worker {}: drain timeout, dropping {left} connections",
                self.index
            );
        }
        for key in self.conns.slab.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            self.conns.drop(key, "shutdown");
        }
        self.conns.out.apply(&self.stats);
        Ok(())
    }

    /// How long the next wait for readiness may last: not at all with work in hand, and at
    /// least once a second for timers.
    fn poll_timeout(&self) -> Duration {
        let busy =
            self.conns.waiting.any() || !self.fanout.is_idle() || self.effects.history.busy();
        if busy || !self.inbox.may_sleep() {
            Duration::ZERO
        } else if self.reader.publishers_held() {
            // Nothing wakes a worker when the other workers' queues drain (or take its
            // publishers' messages): look again.
            PUBLISHERS_RECHECK
        } else if self.drain.spreading() {
            SPREAD_TICK
        } else {
            Duration::from_millis(1000 - self.started.elapsed().subsec_millis() as u64)
        }
    }

    /// One loop turn's work on the connections that `ready` names (key, readable, writable,
    /// hang-up).
    fn turn(&mut self, ready: &[(usize, bool, bool, Hangup)]) {
        let Worker {
            conns,
            reader,
            effects,
            fanout,
            ..
        } = self;
        // Those that waited for a signature check go first, oldest first, while the turn's
        // budget lasts; those that arrive in this turn's events queue up behind them.
        while !effects.tokens.exhausted() {
            let Some(key) = conns.waiting.next_verify() else {
                break;
            };
            reader.on_readable(conns, effects, fanout, key, Hangup::No);
        }
        for &(key, read, write, hup) in ready {
            if write {
                conns.mark_dirty(key);
            }
            if read {
                reader.on_readable(conns, effects, fanout, key, hup);
            }
        }
        for key in conns.waiting.take_retry() {
            reader.on_readable(conns, effects, fanout, key, Hangup::No);
        }
        self.take_inbox();
        // The turn's publishes to the backplane, and the budget of what it took, at once.
        self.effects.bus.flush();
        if !self.conns.shares.is_idle() {
            // What every other worker has taken of this one's publishes leaves the accounts
            // of the connections that published it.
            let taken = self.effects.bus.taken_by_all();
            self.conns.shares.retire(taken);
        }
        self.reader
            .release_publishers(&mut self.conns, &self.effects.bus);
        self.fanout.deliver(&mut self.conns);
        let now = self.conns.now;
        self.effects
            .history
            .after_deliver(&mut self.conns, &mut self.fanout, now);
        self.drain.advance(&mut self.conns, &self.effects.bus);
        // Before the flush, so that what timers send (pings, close frames) leaves in this
        // turn rather than after the next wake-up, up to a second later.
        self.timers.run(&mut self.conns);
        self.conns.flush_dirty();
        self.conns.out.apply(&self.stats);
        self.conns.topics.resync_backplane();
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    fn take_inbox(&mut self) {
        while let Ok((sock, peer)) = self.inbox.conns.try_recv() {
            self.conns.add(sock, peer, self.tls.as_ref());
        }
        // Deliveries are taken up to a budget per turn, so that a backlog (other workers or
        // nodes publishing faster than this one delivers) is worked off over several turns
        // with this worker's sockets served between them, not in one turn that starves them.
        let bus = &mut self.effects.bus;
        self.effects.history.take_carried();
        let mut taken = 0;
        while taken < INBOX_BYTES_PER_TURN {
            let Ok(msg) = self.inbox.msgs.try_recv() else {
                break;
            };
            match msg {
                Msg::Deliver { from, d } => {
                    taken += d.frame.len();
                    bus.cross_taken(from, &d);
                    if let Some(d) = self.effects.history.hold_if_late(d) {
                        self.fanout.pending.push(d);
                    }
                }
                Msg::DeliverOutside(d) => {
                    taken += d.frame.len();
                    bus.outside_taken(&d);
                    self.fanout.pending.push(d);
                }
                Msg::HistoryPublish(p) => {
                    taken += p.data.len();
                    let now = self.conns.now;
                    self.effects
                        .history
                        .on_publish(bus, &mut self.fanout, *p, now);
                }
                Msg::HistoryAsk(a) => {
                    let now = self.conns.now;
                    self.effects.history.on_ask(bus, *a, now);
                }
                Msg::HistoryAnswer(a) => {
                    if !self.effects.history.on_answer(*a) {
                        break;
                    }
                }
                Msg::Shutdown => self.drain.begin(&mut self.conns),
                Msg::Fence => self.drain.on_fence(),
                Msg::Disconnect { user, done } => {
                    let n = self.conns.disconnect(&user);
                    if let Some(done) = done {
                        let _ = done.send(n);
                    }
                }
                Msg::Tls(cfg) => {
                    self.reader.enable_tls();
                    self.tls = Some(cfg);
                }
                #[cfg(test)]
                Msg::Panic(why) => panic!("{why}"),
                #[cfg(test)]
                Msg::BreakInvariant => crate::stats::gauge(&self.stats.held, 1),
            }
        }
    }
}
