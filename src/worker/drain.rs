//! Shutdown that keeps every acknowledged publish. Runs on each worker.
//!
//! On `Shutdown` a worker stops reading from its clients, delivers what it holds, and sends
//! a `Fence` to every worker. It closes its connections (1001, or 1012 for a `--reuse-port`
//! restart) only once every worker's fence has arrived: channels are FIFO per sender, so by
//! then every publish any worker accepted (and answered `ok`) has been queued to its
//! subscribers, ahead of the close frame. The closes are spread over half of the drain time
//! left, so that thousands of clients do not all reconnect in the same millisecond.

use std::time::{Duration, Instant};

use super::Worker;
use crate::conn::{CloseReason, Phase};

/// Shutdown progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Drain {
    /// Serving.
    No,
    /// Clients are no longer read; this worker's fence goes out at the end of the turn.
    FenceDue,
    /// Waiting for the other workers' fences (`seen` so far, this worker's own included),
    /// until `give_up` (a dead worker never sends one).
    Fencing { seen: usize, give_up: Instant },
    /// Closing the connections in `keys` one by one, the i-th at `start` + `spread` × i / n;
    /// then waiting for them to go.
    Closing {
        keys: Vec<usize>,
        next: usize,
        start: Instant,
        spread: Duration,
    },
}

/// How often a worker that is spreading its closes wakes up to send the next ones.
pub(super) const SPREAD_TICK: Duration = Duration::from_millis(10);

impl Worker {
    /// Stops reading from clients; the fence goes out once this turn's deliveries are queued.
    pub(super) fn begin_shutdown(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(Instant::now() + self.cfg.drain_timeout);
        self.drain = Drain::FenceDue;
        if self.cfg.reuse_port {
            // A restart: a client halfway through its upgrade finishes it and is then told
            // to reconnect (1012) like the others, rather than reset.
            return;
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.conns[key].machine.phase() == Phase::Handshake {
                // Nothing was acknowledged to a client that never upgraded.
                self.drop_conn(key, "shutdown during handshake");
            }
        }
    }

    /// Whether the loop should wake up within [`SPREAD_TICK`] to send more closes.
    pub(super) fn spreading(&self) -> bool {
        matches!(&self.drain, Drain::Closing { keys, next, .. } if *next < keys.len())
    }

    pub(super) fn on_fence(&mut self) {
        if let Drain::Fencing { seen, .. } = &mut self.drain {
            *seen += 1;
        } else {
            self.early_fences += 1;
        }
    }

    /// True once shutdown began: open connections are not read, so that no publish is
    /// accepted that could miss a subscriber (while fences are awaited, and while the closes
    /// are being spread, for those whose close has not been sent yet).
    pub(super) fn quiesced(&self) -> bool {
        !matches!(self.drain, Drain::No)
    }

    /// Moves shutdown along after the turn's deliveries: send this worker's fence, and once
    /// every worker's fence is in (or waiting is pointless), close every connection.
    pub(super) fn advance_drain(&mut self) {
        match self.drain {
            Drain::No => {}
            Drain::Closing { .. } => self.close_due(),
            Drain::FenceDue => {
                self.bus.fence_from(self.index);
                // Half the drain timeout for fences, the rest for the closing handshakes.
                let give_up = Instant::now() + self.cfg.drain_timeout / 2;
                let seen = 1 + std::mem::take(&mut self.early_fences);
                self.drain = Drain::Fencing { seen, give_up };
                self.advance_drain();
            }
            Drain::Fencing { seen, give_up } => {
                let all = seen >= self.bus.workers();
                if !all && Instant::now() < give_up {
                    return;
                }
                if !all {
                    log::warn!(
                        "worker {}: {} of {} workers confirmed their last deliveries; closing \
                         anyway",
                        self.index,
                        seen,
                        self.bus.workers()
                    );
                }
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                let left = self.drain_deadline.map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                self.drain = Drain::Closing {
                    keys,
                    next: 0,
                    start: Instant::now(),
                    // The other half is for the clients to answer the last closes.
                    spread: left / 2,
                };
                self.close_due();
            }
        }
    }

    /// Closes the connections whose turn has come; once all had theirs, also any that
    /// finished an upgrade since (a restart lets handshakes complete).
    fn close_due(&mut self) {
        let Drain::Closing {
            keys,
            next,
            start,
            spread,
        } = &mut self.drain
        else {
            return;
        };
        let n = keys.len().max(1) as u32;
        let elapsed = start.elapsed();
        let mut due = Vec::new();
        while *next < keys.len()
            && spread.mul_f64(f64::from(*next as u32) / f64::from(n)) <= elapsed
        {
            due.push(keys[*next]);
            *next += 1;
        }
        let done = *next == keys.len();
        let why = if self.cfg.reuse_port {
            CloseReason::Restart
        } else {
            CloseReason::Shutdown
        };
        if done {
            due.extend(self.conns.iter().map(|(k, _)| k));
        }
        for key in due {
            if self.conns.get(key).is_some_and(|c| c.machine.is_open()) {
                self.begin_close(key, why);
            }
        }
    }

    /// The loop may end: every connection is gone once fenced, or the deadline passed.
    pub(super) fn drain_done(&self) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        let fenced = matches!(self.drain, Drain::Fencing { .. } | Drain::Closing { .. });
        (fenced && self.conns.is_empty()) || Instant::now() >= deadline
    }
}
