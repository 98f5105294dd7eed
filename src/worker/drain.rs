//! Shutdown that keeps every acknowledged publish. Runs on each worker.
//!
//! On `Shutdown` a worker stops reading from its clients, delivers what it holds, and sends
//! a `Fence` to every worker. It closes its connections (1001) only once every worker's
//! fence has arrived: channels are FIFO per sender, so by then every publish any worker
//! accepted (and answered `ok`) has been queued to its subscribers, ahead of the close
//! frame.

use std::time::Instant;

use super::Worker;
use crate::conn::{CloseReason, Phase};

/// Shutdown progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
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
    /// Stops reading from clients; the fence goes out once this turn's deliveries are queued.
    pub(super) fn begin_shutdown(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(Instant::now() + self.cfg.drain_timeout);
        self.drain = Drain::FenceDue;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.conns[key].machine.phase() == Phase::Handshake {
                // Nothing was acknowledged to a client that never upgraded.
                self.drop_conn(key, "shutdown during handshake");
            }
        }
    }

    pub(super) fn on_fence(&mut self) {
        if let Drain::Fencing { seen, .. } = &mut self.drain {
            *seen += 1;
        } else {
            self.early_fences += 1;
        }
    }

    /// True while shutdown waits for fences: open connections are not read, so that no
    /// publish is accepted that could miss a subscriber.
    pub(super) fn quiesced(&self) -> bool {
        matches!(self.drain, Drain::FenceDue | Drain::Fencing { .. })
    }

    /// Moves shutdown along after the turn's deliveries: send this worker's fence, and once
    /// every worker's fence is in (or waiting is pointless), close every connection.
    pub(super) fn advance_drain(&mut self) {
        match self.drain {
            Drain::No | Drain::Closing => {}
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
                self.drain = Drain::Closing;
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    if self.conns[key].machine.is_open() {
                        self.begin_close(key, CloseReason::Shutdown);
                    }
                }
            }
        }
    }

    /// The loop may end: every connection is gone once fenced, or the deadline passed.
    pub(super) fn drain_done(&self) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        let fenced = matches!(self.drain, Drain::Fencing { .. } | Drain::Closing);
        (fenced && self.conns.is_empty()) || Instant::now() >= deadline
    }
}
