//! Shutdown that keeps every acknowledged publish. Runs on each worker.
//!
//! On `Shutdown` a worker stops reading from its clients, delivers what it holds, and sends
//! a `Fence` to every worker. It closes its connections (1001, or 1012 for a `--reuse-port`
//! restart) only once every worker's fence has arrived: channels are FIFO per sender, so by
//! then every publish any worker accepted (and answered `ok`) has been queued to its
//! subscribers, ahead of the close frame. The closes are spread over half of the drain time
//! left, so that thousands of clients do not all reconnect in the same millisecond.

use std::time::{Duration, Instant};

use super::conns::Conns;
use crate::broadcast::Port;
use crate::conn::{CloseReason, Phase};

/// Shutdown progress.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
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

/// The drain part of a worker.
#[derive(Debug)]
pub(super) struct Drain {
    stage: Stage,
    /// Set once shutdown began: the instant by which the worker exits regardless.
    deadline: Option<Instant>,
    /// How long the whole drain may take.
    timeout: Duration,
    /// Close with 1012 (a `--reuse-port` restart) rather than 1001.
    restart: bool,
    /// Fences that arrived before this worker's own `Shutdown` did.
    early_fences: usize,
}

impl Drain {
    pub(super) fn new(timeout: Duration, restart: bool) -> Self {
        Drain {
            stage: Stage::No,
            deadline: None,
            timeout,
            restart,
            early_fences: 0,
        }
    }

    /// Stops reading from clients; the fence goes out once this turn's deliveries are queued.
    pub(super) fn begin(&mut self, conns: &mut Conns) {
        if self.deadline.is_some() {
            return;
        }
        self.deadline = Some(Instant::now() + self.timeout);
        self.stage = Stage::FenceDue;
        conns.draining = true;
        if self.restart {
            // A restart: a client halfway through its upgrade finishes it and is then told
            // to reconnect (1012) like the others, rather than reset.
            return;
        }
        let keys: Vec<usize> = conns.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            if conns.slab[key].machine.phase() == Phase::Handshake {
                // Nothing was acknowledged to a client that never upgraded.
                conns.drop(key, "shutdown during handshake");
            }
        }
    }

    /// Whether the loop should wake up within [`SPREAD_TICK`] to send more closes.
    pub(super) fn spreading(&self) -> bool {
        matches!(&self.stage, Stage::Closing { keys, next, .. } if *next < keys.len())
    }

    pub(super) fn on_fence(&mut self) {
        if let Stage::Fencing { seen, .. } = &mut self.stage {
            *seen += 1;
        } else {
            self.early_fences += 1;
        }
    }

    /// Moves shutdown along after the turn's deliveries: send this worker's fence, and once
    /// every worker's fence is in (or waiting is pointless), close every connection.
    pub(super) fn advance(&mut self, conns: &mut Conns, bus: &Port) {
        match self.stage {
            Stage::No => {}
            Stage::Closing { .. } => self.close_due(conns),
            Stage::FenceDue => {
                bus.fence_from(conns.index);
                // Half the drain timeout for fences, the rest for the closing handshakes.
                let give_up = Instant::now() + self.timeout / 2;
                let seen = 1 + std::mem::take(&mut self.early_fences);
                self.stage = Stage::Fencing { seen, give_up };
                self.advance(conns, bus);
            }
            Stage::Fencing { seen, give_up } => {
                let all = seen >= bus.workers();
                if !all && Instant::now() < give_up {
                    return;
                }
                if !all {
                    log::warn!(
                        "worker {}: {} of {} workers confirmed their last deliveries; closing \
                         anyway",
                        conns.index,
                        seen,
                        bus.workers()
                    );
                }
                let keys: Vec<usize> = conns.slab.iter().map(|(k, _)| k).collect();
                let left = self.deadline.map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                self.stage = Stage::Closing {
                    keys,
                    next: 0,
                    start: Instant::now(),
                    // The other half is for the clients to answer the last closes.
                    spread: left / 2,
                };
                self.close_due(conns);
            }
        }
    }

    /// Closes the connections whose turn has come; once all had theirs, also any that
    /// finished an upgrade since (a restart lets handshakes complete).
    fn close_due(&mut self, conns: &mut Conns) {
        let Stage::Closing {
            keys,
            next,
            start,
            spread,
        } = &mut self.stage
        else {
            return;
        };
        let upto = closes_due(*next, keys.len(), *spread, start.elapsed());
        let mut due: Vec<usize> = keys[*next..upto].to_vec();
        *next = upto;
        if upto == keys.len() {
            due.extend(conns.slab.iter().map(|(k, _)| k));
        }
        let why = if self.restart {
            CloseReason::Restart
        } else {
            CloseReason::Shutdown
        };
        for key in due {
            if conns.slab.get(key).is_some_and(|c| c.machine.is_open()) {
                conns.begin_close(key, why);
            }
        }
    }

    /// The loop may end: every connection is gone once fenced, or the deadline passed.
    pub(super) fn done(&self, conns: &Conns) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        let fenced = matches!(self.stage, Stage::Fencing { .. } | Stage::Closing { .. });
        (fenced && conns.slab.is_empty()) || Instant::now() >= deadline
    }
}

/// Of `n` closes spread evenly over `spread`, the i-th due at `spread` × i / n, how far the
/// closes sent so far (`next`) go at `elapsed`: the index one past the last one due.
fn closes_due(mut next: usize, n: usize, spread: Duration, elapsed: Duration) -> usize {
    let of = n.max(1) as u32;
    while next < n && spread.mul_f64(f64::from(next as u32) / f64::from(of)) <= elapsed {
        next += 1;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_evenly_and_the_first_goes_at_once() {
        let spread = Duration::from_millis(1000);
        let ms = Duration::from_millis;
        assert_eq!(closes_due(0, 4, spread, ms(0)), 1, "the first at once");
        assert_eq!(closes_due(1, 4, spread, ms(249)), 1);
        assert_eq!(closes_due(1, 4, spread, ms(250)), 2);
        assert_eq!(closes_due(2, 4, spread, ms(999)), 4);
        assert_eq!(closes_due(4, 4, spread, ms(5000)), 4, "never past the end");
        assert_eq!(closes_due(0, 0, spread, ms(0)), 0, "nothing to close");
        assert_eq!(
            closes_due(0, 3, Duration::ZERO, ms(0)),
            3,
            "no time left: all at once"
        );
    }
}
