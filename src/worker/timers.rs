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

use super::conns::Conns;
use crate::codec::Kind;
use crate::conn::session::Rates;
use crate::conn::{CloseReason, Hold, InputState, Phase, StandingKind, NEVER};
use crate::protocol;
use crate::stats::{self, bump};

/// A due list that grew past this many keys is freed once empty.
const DUE_KEEP: usize = 1024;

/// Slab slots kept however few connections are left (88 bytes each).
const SLAB_KEEP: usize = 4096;

/// The timer part of a worker: when it last swept, and the keys a sweep found due.
#[derive(Debug, Default)]
pub(super) struct Timers {
    /// The last tick whose deadlines were handled.
    swept: u32,
    /// Keys whose deadline came, gathered by the sweep.
    due: Vec<usize>,
}

impl Timers {
    /// Once per tick: handles every connection whose deadline has come.
    pub(super) fn run(&mut self, conns: &mut Conns) {
        let now = conns.now;
        if now <= self.swept {
            return;
        }
        self.swept = now;
        let mut due = std::mem::take(&mut self.due);
        due.extend(
            conns
                .slab
                .iter()
                .filter(|(_, c)| c.deadline <= now)
                .map(|(k, _)| k),
        );
        for &key in &due {
            on_deadline(conns, key, now);
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
        if conns.slab.capacity() > SLAB_KEEP && conns.slab.len() < conns.slab.capacity() / 4 {
            conns.slab.shrink_to_fit();
        }
    }
}

fn on_deadline(conns: &mut Conns, key: usize, now: u32) {
    let Some(conn) = conns.slab.get_mut(key) else {
        return; // defensive: each handler below drops or re-arms only its own key
    };
    if conn.deadline > now {
        return; // likewise
    }
    conn.deadline = NEVER;
    match conn.machine.phase() {
        Phase::Handshake => {
            bump(&conns.stats.timeouts, 1);
            stats::handshake_failed(&conns.stats, 0);
            log::debug!("worker {}: conn {key} handshake timeout", conns.index);
            conns.drop(key, "handshake timeout");
        }
        Phase::Open(_) => on_open_timer(conns, key, now),
        Phase::Closing => conns.drop(key, "close timeout"),
    }
}

/// What an open connection's deadline finds due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Held over its bound for the backpressure timeout: close (1008).
    Backpressure,
    /// Mid-message for the message timeout: close (1008).
    MessageTimeout,
    /// Silent for the idle timeout: close (1001).
    Idle,
    /// Silent for the ping interval: ping, and look again at `next`.
    Ping { next: u32 },
    /// Nothing yet: look again at `next`.
    Later { next: u32 },
}

/// The deadlines of an open connection, in ticks.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    ping: u32,
    idle: u32,
    message: u32,
    backpressure: u32,
}

/// What is due at `now` for a connection last heard from at `last_rx`, held since
/// `held_since` (if it is), mid-message since `partial_since` (`NEVER`: not), and when to
/// look again. A held connection is not read, so its partial message and its silence are
/// the server's doing: only the backpressure deadline runs for it.
fn due(now: u32, last_rx: u32, held_since: Option<u32>, partial_since: u32, c: Clocks) -> Due {
    let held_until = held_since.map_or(NEVER, |s| s.saturating_add(c.backpressure));
    let partial_until = match held_since {
        Some(_) => NEVER,
        None => partial_since.saturating_add(c.message),
    };
    if now >= held_until {
        return Due::Backpressure;
    }
    if now >= partial_until {
        return Due::MessageTimeout;
    }
    let bound = held_until.min(partial_until);
    if held_since.is_some() {
        return Due::Later { next: bound };
    }
    let silent = now.saturating_sub(last_rx);
    if silent >= c.idle {
        Due::Idle
    } else if silent >= c.ping {
        let next = last_rx
            .saturating_add(c.idle)
            .min(now.saturating_add(c.ping));
        Due::Ping {
            next: next.min(bound),
        }
    } else {
        Due::Later {
            next: last_rx.saturating_add(c.ping).min(bound),
        }
    }
}

/// What an open connection's session finds due: a pending connection that did not connect
/// in time is closed (4001), a user whose token expired (4002); subscriptions whose own token
/// expired end, with an `unsubscribed` message. False if the connection is closing now.
fn on_session(conns: &mut Conns, key: usize, now: u32) -> bool {
    let clock = conns.clock();
    let Some(s) = conns.slab[key].session.as_deref_mut() else {
        return true;
    };
    if s.lapses(&clock) <= now {
        match s.kind() {
            StandingKind::Pending => {
                bump(&conns.stats.auth_connect_timeouts, 1);
                let why = "no connect within the connect timeout";
                conns.begin_close(key, CloseReason::Unauthorized(why));
                return false;
            }
            StandingKind::User => {
                bump(&conns.stats.auth_expiries, 1);
                conns.begin_close(key, CloseReason::TokenExpired);
                return false;
            }
            // They never lapse (`lapses` is NEVER for them).
            StandingKind::Open | StandingKind::Anonymous => {}
        }
    }
    let expired = s.expired_topics(now);
    for topic in expired {
        conns.unsubscribe(key, &topic);
        bump(&conns.stats.auth_topic_expiries, 1);
        let mut out = Vec::with_capacity(64 + topic.len());
        protocol::unsubscribed(&mut out, &topic, "subscription token expired");
        bump(&conns.stats.messages_out, 1);
        conns.send_frame(key, Kind::Text, &out);
    }
    true
}

/// What is due for an open connection, and when to look again.
fn on_open_timer(conns: &mut Conns, key: usize, now: u32) {
    if !on_session(conns, key, now) {
        return;
    }
    if conns.slab[key].machine.input == InputState::Held(Hold::Rate) {
        let rates = Rates::of(&conns.cfg.rate);
        let now_ms = conns.now_ms;
        let wait = conns.slab[key]
            .session
            .as_mut()
            .and_then(|s| s.rate())
            .map_or(0, |b| b.ready_in_ms(&rates, now_ms));
        if wait > 0 {
            return rearm(conns, key, now.saturating_add(wait.div_ceil(1000)));
        }
        // Refilled: read again (from this tick: the wait was the rate's, not silence).
        conns.release(key);
    }
    let secs = |d: std::time::Duration| d.as_secs().min(u64::from(u32::MAX)) as u32;
    let cfg = &conns.cfg;
    let clocks = Clocks {
        ping: secs(cfg.ping_interval),
        idle: secs(cfg.idle_timeout),
        message: secs(cfg.message_timeout),
        backpressure: secs(cfg.backpressure_timeout),
    };
    let conn = &conns.slab[key];
    // A hold began at `last_rx` (see `Conn::last_rx`).
    let held_since = conn.is_held().then_some(conn.last_rx);
    let partial_since = conn.machine.partial_since;
    let last_rx = conn.last_rx;
    let index = conns.index;
    match due(now, last_rx, held_since, partial_since, clocks) {
        Due::Backpressure => {
            bump(&conns.stats.backpressure_closes, 1);
            log::debug!(
                "worker {index}: conn {key} over its outbound bound for {} s",
                now - held_since.unwrap_or(now)
            );
            conns.begin_close(key, CloseReason::Backpressure);
        }
        Due::MessageTimeout => {
            bump(&conns.stats.message_timeouts, 1);
            log::debug!(
                "worker {index}: conn {key} took over {} s to send a message",
                now - partial_since
            );
            conns.begin_close(key, CloseReason::MessageTimeout);
        }
        Due::Idle => {
            bump(&conns.stats.timeouts, 1);
            log::debug!(
                "worker {index}: conn {key} idle for {} s",
                now.saturating_sub(last_rx)
            );
            conns.begin_close(key, CloseReason::Idle);
        }
        Due::Ping { next } => {
            conns.send_frame(key, Kind::Ping, b"");
            rearm(conns, key, next);
        }
        Due::Later { next } => rearm(conns, key, next),
    }
}

/// Sets the next look at the connection to `next`, or earlier if its session falls due
/// first.
fn rearm(conns: &mut Conns, key: usize, next: u32) {
    let clock = conns.clock();
    let conn = &mut conns.slab[key];
    let session = conn.session.as_ref().map_or(NEVER, |s| s.next_due(&clock));
    conn.deadline = next.min(session);
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Clocks = Clocks {
        ping: 30,
        idle: 75,
        message: 20,
        backpressure: 30,
    };

    #[test]
    fn silence_earns_a_ping_then_an_idle_close() {
        assert_eq!(due(10, 10, None, NEVER, C), Due::Later { next: 40 });
        assert_eq!(due(40, 10, None, NEVER, C), Due::Ping { next: 70 });
        assert_eq!(due(70, 10, None, NEVER, C), Due::Ping { next: 85 });
        assert_eq!(due(85, 10, None, NEVER, C), Due::Idle);
    }

    #[test]
    fn a_partial_message_has_its_own_deadline() {
        assert_eq!(due(12, 10, None, 11, C), Due::Later { next: 31 });
        assert_eq!(due(31, 30, None, 11, C), Due::MessageTimeout);
    }

    #[test]
    fn a_held_connection_runs_only_the_backpressure_clock() {
        // Silent and mid-message for long, but not read: neither counts.
        assert_eq!(due(100, 0, Some(90), 0, C), Due::Later { next: 120 });
        assert_eq!(due(120, 0, Some(90), 0, C), Due::Backpressure);
    }

    #[test]
    fn deadlines_far_away_saturate_rather_than_wrap() {
        let far = Clocks {
            ping: u32::MAX,
            idle: u32::MAX,
            message: u32::MAX,
            backpressure: u32::MAX,
        };
        assert_eq!(
            due(5, 5, None, 5, far),
            Due::Later { next: u32::MAX },
            "never, not a tick in the past"
        );
        assert_eq!(
            due(5, 5, Some(5), NEVER, far),
            Due::Later { next: u32::MAX }
        );
    }
}
