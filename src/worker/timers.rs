//! A connection's deadlines, on the worker's timer wheel: handshake, ping and idle, partial
//! message, backpressure, and the closing handshake. Runs on the connection's worker.
//!
//! Each connection has at most one current wheel entry, for its earliest deadline; activity
//! never touches the wheel (`last_rx` moves, and the entry, when it fires, works out what is
//! due and when to look next).

use super::Worker;
use crate::codec::Kind;
use crate::conn::{CloseReason, Phase, NEVER};
use crate::stats::{self, bump};
use crate::timer::Entry;

/// Seconds a closing connection waits for the peer's close or EOF before it is dropped.
pub(super) const CLOSE_TIMEOUT: u32 = 2;

impl Worker {
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

    pub(super) fn run_timers(&mut self) {
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
        let key = entry.key;
        let Some(conn) = self.conns.get_mut(key) else {
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
            self.set_deadline(key, at);
            return;
        }
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
            return self.begin_close(key, CloseReason::Backpressure);
        }
        if now >= partial_until {
            bump(&self.stats.message_timeouts, 1);
            log::debug!(
                "worker {}: conn {key} took over {} s to send a message",
                self.index,
                now - conn.partial_since
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
