//! The worker's connections: the slab that owns them, and what every other part of the worker
//! may do to one (add, send, hold, let go, close, flush, drop). Runs on the worker's thread.
//!
//! This is the bottom of the worker: it calls only into the connection layer (`conn`: the
//! output door, the transport, the state machine) and the topic index, never up into the
//! parts that read, decide or deliver.

use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use thin_vec::ThinVec;

use super::share::Shares;
use crate::admission;
use crate::codec::Kind;
use crate::config::Config;
use crate::conn::session::Clock;
use crate::conn::StandingKind;
use crate::conn::{
    CloseReason, Conn, Hold, InputState, Outputs, Phase, Tls, Took, Transport, TransportError,
    NEVER,
};
use crate::outbound::Flushed;
use crate::stats::{bump, gauge, Stats};
use crate::topics::Topics;

use super::waiting::Waiting;

/// Seconds a closing connection waits for the peer's close or EOF before it is dropped.
pub(super) const CLOSE_TIMEOUT: u32 = 2;

/// The slab and everything a connection's life touches on its worker.
pub(super) struct Conns {
    pub(super) index: usize,
    pub(super) slab: Slab<Conn>,
    /// The output door every part sends through.
    pub(super) out: Outputs,
    pub(super) topics: Topics,
    pub(super) cfg: Arc<Config>,
    pub(super) stats: Arc<Stats>,
    /// Connection limits; every connection handed over is released here exactly once.
    admission: Arc<admission::Shared>,
    /// For WRITABLE interest (a clone of the worker's poll registry).
    registry: Registry,
    /// Connections to come back to without a readiness event: next turn (they hit the
    /// per-turn work bound, their held input was let go, or they began closing while not
    /// read), or once a turn's verification budget allows (see `waiting`).
    pub(super) waiting: Waiting,
    /// Whole seconds since the worker started, as of this loop turn: the clock of every
    /// deadline.
    pub(super) now: u32,
    /// Unix time in whole seconds, as of this loop turn: the clock tokens' `exp` and `nbf`
    /// are read against.
    pub(super) unix_now: u64,
    /// Milliseconds since the worker started, as of this loop turn (wrapping): the rate
    /// limits' clock.
    pub(super) now_ms: u32,
    /// Shutdown began: new sockets are refused, open connections are no longer read.
    pub(super) draining: bool,
    /// Each publishing connection's bytes still in the other workers' queues, by slab key;
    /// a connection's are forgotten when it is dropped, so its key comes clean to the next.
    pub(super) shares: Shares,
    /// Connections that left, for topic history to forget what they asked (kept only
    /// while some topic keeps history).
    pub(super) gone: Vec<usize>,
}

impl Conns {
    pub(super) fn new(
        index: usize,
        cfg: Arc<Config>,
        stats: Arc<Stats>,
        admission: Arc<admission::Shared>,
        registry: Registry,
        topics: Topics,
    ) -> Self {
        Conns {
            index,
            slab: Slab::new(),
            out: Outputs::default(),
            topics,
            cfg,
            stats,
            admission,
            registry,
            waiting: Waiting::default(),
            now: 0,
            unix_now: 0,
            now_ms: 0,
            draining: false,
            shares: Shares::default(),
            gone: Vec::new(),
        }
    }

    /// Takes a new socket: registered for reading, with the handshake's deadline.
    pub(super) fn add(
        &mut self,
        mut sock: TcpStream,
        peer: admission::Peer,
        tls: Option<&Arc<rustls::ServerConfig>>,
    ) {
        bump(&self.stats.accepted, 1);
        let deadline = self.after(self.cfg.handshake_timeout);
        if self.draining {
            self.admission.release(peer);
            return;
        }
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .registry
            .register(&mut sock, Token(key), Interest::READABLE)
        {
            log::warn!("worker {}: registering a socket failed: {e}", self.index);
            self.admission.release(peer);
            return;
        }
        let transport = match tls {
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
        let mut conn = Conn::new(transport, peer, self.now);
        conn.deadline = deadline;
        entry.insert(conn);
        gauge(&self.stats.open, 1);
        // Readiness for data that arrived before registration is reported by epoll itself.
    }

    /// Removes a connection at once: its subscriptions, its slab entry, its socket.
    pub(super) fn drop(&mut self, key: usize, why: &str) {
        let Some(conn) = self.slab.try_remove(key) else {
            return;
        };
        self.shares.forget(key);
        if self.cfg.history.on() {
            self.gone.push(key);
        }
        for t in &conn.subs {
            self.topics.unsubscribe(t, key);
        }
        log::trace!("worker {}: conn {key} dropped: {why}", self.index);
        gauge(&self.stats.open, -1);
        if conn.machine.upgraded() {
            gauge(&self.stats.websockets, -1);
        }
        self.out.forget(&conn.out);
        self.out.tls_changed(-(conn.transport.cost() as i64));
        gauge(&self.stats.inbound_memory, -(conn.inbound_cost() as i64));
        if conn.is_held() {
            gauge(&self.stats.held, -1);
        }
        if let Some(s) = &conn.session {
            self.standing_changed(Some(s.kind()), None);
        }
        bump(&self.stats.closed, 1);
        self.admission.release(conn.peer);
        // Dropping the socket closes it, which also takes it out of the epoll set.
    }

    /// The clocks sessions' deadlines are read against, as of this loop turn.
    pub(super) fn clock(&self) -> Clock {
        Clock {
            now: self.now,
            unix_now: self.unix_now,
            leeway: self.cfg.auth.leeway.as_secs(),
        }
    }

    /// Subscribes `key` to `topic` (once: again changes nothing); the shared name, or
    /// `None` if the connection is closing.
    pub(super) fn subscribe(&mut self, key: usize, topic: &str) -> Option<Arc<str>> {
        if !self.slab[key].machine.is_open() {
            return None;
        }
        match self.topics.subscribe(topic, key) {
            Some(name) => {
                self.slab[key].subs.push(name.clone());
                Some(name)
            }
            None => self.topics.name(topic),
        }
    }

    /// Unsubscribes `key` from `topic`, and forgets the topic's own grant if it had one.
    pub(super) fn unsubscribe(&mut self, key: usize, topic: &str) {
        if self.topics.unsubscribe(topic, key) {
            let subs = &mut self.slab[key].subs;
            if let Some(i) = subs.iter().position(|t| **t == *topic) {
                subs.swap_remove(i);
            }
        }
        if let Some(s) = self.slab[key].session.as_mut() {
            s.drop_topic(topic);
        }
    }

    /// A connection's standing went from `before` to `after` (`None`: no session): the
    /// gauges that count connections by standing follow, and the connects are counted.
    pub(super) fn standing_changed(
        &self,
        before: Option<StandingKind>,
        after: Option<StandingKind>,
    ) {
        let gauge_of = |k: StandingKind| match k {
            StandingKind::Open => None,
            StandingKind::Pending => Some(&self.stats.auth_pending),
            StandingKind::Anonymous => Some(&self.stats.anonymous),
            StandingKind::User => Some(&self.stats.authenticated),
        };
        if let Some(g) = before.and_then(gauge_of) {
            gauge(g, -1);
        }
        if let Some(g) = after.and_then(gauge_of) {
            gauge(g, 1);
        }
        match after {
            Some(StandingKind::User) => bump(&self.stats.auth_connects, 1),
            Some(StandingKind::Anonymous) => bump(&self.stats.auth_anonymous_connects, 1),
            _ => {}
        }
    }

    /// Closes every open connection of `user` with 4003; returns how many.
    pub(super) fn disconnect(&mut self, user: &str) -> usize {
        let keys: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, c)| c.machine.is_open())
            .filter(|(_, c)| {
                c.session
                    .as_ref()
                    .and_then(|s| s.user())
                    .is_some_and(|v| v.sub() == user)
            })
            .map(|(k, _)| k)
            .collect();
        for &key in &keys {
            bump(&self.stats.auth_disconnects, 1);
            self.begin_close(key, CloseReason::Disconnected);
        }
        if !keys.is_empty() {
            log::info!(
                "worker {}: disconnected {} connection(s) of a user",
                self.index,
                keys.len()
            );
        }
        keys.len()
    }

    /// The transport failed: the connection is dropped, counted by why.
    pub(super) fn drop_failed(&mut self, key: usize, e: TransportError) {
        if let TransportError::Panicked(_) = e {
            log::error!("worker {}: conn {key} dropped: {e}", self.index);
        } else {
            log::debug!("worker {}: conn {key}: {e}", self.index);
        }
        let counter = match &e {
            TransportError::PlainHttp => &self.stats.tls_plain_http,
            TransportError::Tls(_) | TransportError::Panicked(_) => &self.stats.tls_errors,
            TransportError::Io(_) => &self.stats.hangups,
        };
        bump(counter, 1);
        self.drop(key, "transport error");
    }

    /// The tick `d` from now, saturating (a deadline that far away never comes).
    pub(super) fn after(&self, d: std::time::Duration) -> u32 {
        self.now
            .saturating_add(d.as_secs().min(u64::from(u32::MAX)) as u32)
    }

    /// Makes sure the connection is looked at by `at`, keeping an earlier deadline.
    pub(super) fn arm(&mut self, key: usize, at: u32) {
        let c = &mut self.slab[key];
        c.deadline = c.deadline.min(at);
    }

    /// Sends bytes of the connection's own (an HTTP response): see `Outputs::reply`.
    pub(super) fn send_raw(&mut self, key: usize, bytes: &[u8]) {
        let conn = &mut self.slab[key];
        self.out.reply(key, &mut conn.out, bytes);
    }

    /// Sends a frame of the connection's own: see `Outputs::frame`.
    pub(super) fn send_frame(&mut self, key: usize, kind: Kind, payload: &[u8]) -> Took {
        let conn = &mut self.slab[key];
        self.out.frame(
            key,
            &mut conn.out,
            kind,
            payload,
            self.cfg.max_outbound_bytes,
        )
    }

    /// Memory waiting to go out to `key` (its queue, and the cork while it gathers for it).
    pub(super) fn out_cost(&self, key: usize) -> usize {
        self.out.cost(key, &self.slab[key].out)
    }

    /// Closes the connection for `why` unless it is closing already (server-initiated).
    pub(super) fn begin_close(&mut self, key: usize, why: CloseReason) {
        if self.slab[key].machine.is_open() {
            self.close_with(key, why);
        }
    }

    /// Sends the close frame for `why` and stops all traffic but the queued output (RFC
    /// 6455 §7.1.7 when the peer broke the protocol).
    pub(super) fn close_with(&mut self, key: usize, why: CloseReason) {
        if why.is_protocol_error() {
            bump(&self.stats.protocol_errors, 1);
        }
        self.send_frame(key, Kind::Close, &why.payload());
        self.enter_closing(key);
    }

    /// Stops all traffic but the queued output, and bounds how long the connection may
    /// linger. Input is read again (to see the peer's close or EOF) but no longer kept.
    pub(super) fn enter_closing(&mut self, key: usize) {
        let conn = &mut self.slab[key];
        let freed = conn.inbound_cost();
        conn.machine.close();
        conn.inbuf = ThinVec::new();
        conn.machine.partial_since = NEVER;
        gauge(&self.stats.inbound_memory, -(freed as i64));
        let was_held = conn.is_held();
        if was_held {
            gauge(&self.stats.held, -1);
        }
        conn.machine.input = InputState::Reading;
        for t in std::mem::take(&mut conn.subs) {
            self.topics.unsubscribe(&t, key);
        }
        if was_held || self.draining {
            // Its readiness was not acted on while it was held or quiesced.
            self.waiting.retry(key);
        }
        self.slab[key].deadline = self.now.saturating_add(CLOSE_TIMEOUT);
    }

    /// Stops reading a connection, for `why`: TCP's window then stops the client, and
    /// nothing more is buffered for it. The backpressure timeout closes it if the hold lasts.
    pub(super) fn hold(&mut self, key: usize, why: Hold) {
        let at = match why {
            // The sweep lets it go once its buckets have refilled: a second from now at the
            // latest, when it looks again.
            Hold::Rate => self.now.saturating_add(1),
            Hold::Output | Hold::Queues => self.after(self.cfg.backpressure_timeout),
        };
        let conn = &mut self.slab[key];
        if conn.is_held() {
            return;
        }
        conn.machine.input = InputState::Held(why);
        // The backpressure timeout runs from here; nothing is received while held.
        conn.last_rx = self.now;
        gauge(&self.stats.held, 1);
        if why != Hold::Rate {
            bump(&self.stats.input_held, 1);
        }
        match why {
            Hold::Rate => bump(&self.stats.rate_limit_holds, 1),
            Hold::Output => log::debug!(
                "worker {}: conn {key} output at {} bytes: input held back",
                self.index,
                self.out.cost(key, &conn.out)
            ),
            // Counted by the reader, under the bound that held it: the other workers' queues
            // as a whole, or the connection's share of them.
            Hold::Queues => {}
        }
        self.arm(key, at);
    }

    /// Lets a held connection's input flow again; what was held is handled next turn.
    pub(super) fn release(&mut self, key: usize) {
        let now = self.now;
        let conn = &mut self.slab[key];
        if !conn.is_held() {
            return;
        }
        conn.machine.input = InputState::Resuming;
        // The client was not silent or slow while we were not reading: restart its clocks.
        conn.last_rx = now;
        if conn.machine.partial_since != NEVER {
            conn.machine.partial_since = now;
        }
        gauge(&self.stats.held, -1);
        self.read_next_turn(key);
    }

    /// Comes back to `key` in a later retry pass (next turn's, or this one's if it has not run
    /// yet) instead of reading on now, with its buffered input handled first (`Resuming`). It
    /// is queued once however often it is asked, and a readiness event while it is queued adds
    /// nothing (see the reader): a connection that keeps sending gets one share of each turn.
    pub(super) fn read_next_turn(&mut self, key: usize) {
        self.slab[key].machine.input = InputState::Resuming;
        self.waiting.retry(key);
    }

    /// Comes back to `key` once a turn's verification budget allows, after the connections
    /// that waited before it, with its buffered input handled first (`Resuming`).
    pub(super) fn wait_for_verification(&mut self, key: usize) {
        self.slab[key].machine.input = InputState::Resuming;
        self.waiting.verify(key);
    }

    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key) {
            self.out.mark_dirty(key, &mut conn.out);
        }
    }

    /// Flushes every connection with output, once each.
    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = self.out.take_dirty();
        for key in dirty.drain(..) {
            if self.slab.contains(key) {
                self.flush(key);
            }
        }
        self.out.flushed(dirty);
    }

    /// Writes what the connection has staged and queued; keeps WRITABLE interest while some
    /// is left, lets input held for its output go once that is down to half its bound, and
    /// ends the write side of a closing connection once everything is out.
    pub(super) fn flush(&mut self, key: usize) {
        let conn = &mut self.slab[key];
        let want_write = match self.out.flush(&mut conn.out, &mut conn.transport) {
            Ok(Flushed::Empty) => false,
            Ok(Flushed::Blocked) => true,
            Err(e) => return self.drop_failed(key, e),
        };
        if conn.out.set_write_interest(want_write) {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .registry
                .reregister(conn.transport.socket(), Token(key), interest)
            {
                log::warn!("worker {}: conn {key} reregister failed: {e}", self.index);
                return self.drop(key, "reregister failed");
            }
        }
        let left = conn.out.queue_cost() + conn.transport.cost();
        if conn
            .machine
            .input
            .released_by_flush(left, self.cfg.max_outbound_bytes)
        {
            return self.release(key);
        }
        if conn.machine.phase() == Phase::Closing && !want_write {
            // Everything, the close frame included, is out: end the write side and wait for
            // the peer's EOF.
            let tls0 = conn.transport.cost();
            conn.out.shut(&mut conn.transport);
            self.out
                .tls_changed(conn.transport.cost() as i64 - tls0 as i64);
        }
    }
}
