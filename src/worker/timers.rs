//! A connection's deadlines: handshake, ping and idle, partial message, backpressure, and
//! the closing handshake. Runs on the connection's worker.
//!
//! A connection carries one deadline, the tick (whole second) at which it must next be
//! looked at; activity never touches it (`last_rx` moves, and the check, when it comes,
//! works out what is due and when to look next). Once per tick the worker sweeps its slab
//! for deadlines that have come. There is no timer structure beside the slab, so an idle
//! connection costs its 4-byte deadline and nothing more; the sweep reads every slab slot
//! once a second, vacant ones included (the slab shrinks after a burst leaves), the price
//! uSockets also pays with its per-loop timeout sweep.

use super::Worker;
use crate::codec::Kind;
use crate::conn::{CloseReason, Phase, NEVER};
use crate::stats::{self, bump};

/// Seconds a closing connection waits for the peer's close or EOF before it is dropped.
pub(super) const CLOSE_TIMEOUT: u32 = 2;

/// A due list that grew past this many keys is freed once empty.
const DUE_KEEP: usize = 1024;

/// Slab slots kept however few connections are left (88 bytes each).
const SLAB_KEEP: usize = 4096;

impl Worker {
    /// Sets the tick at which the connection is next looked at (earlier or later).
    pub(super) fn set_deadline(&mut self, key: usize, at: u32) {
        self.conns[key].deadline = at;
    }

    /// Makes sure the connection is looked at by `at`, keeping an earlier deadline.
    pub(super) fn arm(&mut self, key: usize, at: u32) {
        if at < self.conns[key].deadline {
            self.set_deadline(key, at);
        }
    }

    /// Once per tick: handles every connection whose deadline has come.
    pub(super) fn run_timers(&mut self) {
        let now = self.now();
        if now <= self.swept {
            return;
        }
        self.swept = now;
        let mut due = std::mem::take(&mut self.due);
        due.extend(
            self.conns
                .iter()
                .filter(|(_, c)| c.deadline <= now)
                .map(|(k, _)| k),
        );
        for &key in &due {
            self.on_deadline(key, now);
        }
        due.clear();
        if due.capacity() > DUE_KEEP {
            due = Vec::new();
        }
        self.due = due;
        // A burst of connections that left must not keep the slab's size (and the sweep's
        // length) for ever. The slab can only give back the vacant slots above its highest
        // occupied key; it also renumbers its free list lowest first, so that new
        // connections fill the bottom and later shrinks get further.
        if self.conns.capacity() > SLAB_KEEP && self.conns.len() < self.conns.capacity() / 4 {
            self.conns.shrink_to_fit();
        }
    }

    fn on_deadline(&mut self, key: usize, now: u32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // defensive: each handler below drops or re-arms only its own key
        };
        if conn.deadline > now {
            return; // likewise
        }
        conn.deadline = NEVER;
        match conn.machine.phase() {
            Phase::Handshake => {
                bump(&self.stats.timeouts, 1);
                stats::handshake_failed(&self.stats, 0);
                log::debug!("worker {}: conn {key} handshake timeout", self.index);
                self.drop_conn(key, "handshake timeout");
            }
            Phase::Open(_) => self.on_open_timer(key, now),
            Phase::Closing => self.drop_conn(key, "close timeout"),
        }
    }

    /// What is due for an open connection, and when to look again.
    fn on_open_timer(&mut self, key: usize, now: u32) {
        let ping = self.cfg.ping_interval.as_secs() as u32;
        let idle = self.cfg.idle_timeout.as_secs() as u32;
        let conn = &self.conns[key];
        let held_until = conn
            .held_since
            .saturating_add(self.cfg.backpressure_timeout.as_secs() as u32);
        // A held connection is not read, so its partial message and its silence are the
        // server's doing: only the backpressure deadline runs for it.
        let held = conn.is_held();
        let partial_until = if held {
            NEVER
        } else {
            conn.machine
                .partial_since
                .saturating_add(self.cfg.message_timeout.as_secs() as u32)
        };
        if now >= held_until {
            bump(&self.stats.backpressure_closes, 1);
            log::debug!(
                "worker {}: conn {key} over its outbound bound for {} s",
                self.index,
                now - conn.held_since
            );
            return self.begin_close(key, CloseReason::Backpressure);
        }
        if now >= partial_until {
            bump(&self.stats.message_timeouts, 1);
            log::debug!(
                "worker {}: conn {key} took over {} s to send a message",
                self.index,
                now - conn.machine.partial_since
            );
            return self.begin_close(key, CloseReason::MessageTimeout);
        }
        let silent = now.saturating_sub(conn.last_rx);
        let next = if held {
            NEVER
        } else if silent >= idle {
            bump(&self.stats.timeouts, 1);
            log::debug!("worker {}: conn {key} idle for {silent} s", self.index);
            return self.begin_close(key, CloseReason::Idle);
        } else if silent >= ping {
            let last_rx = conn.last_rx;
            self.queue_frame(key, Kind::Ping, b"");
            (last_rx + idle).min(now + ping)
        } else {
            conn.last_rx + ping
        };
        self.set_deadline(key, next.min(held_until).min(partial_until));
    }
}
