//! What the threads other than the workers (acceptor, control) see of the server: its
//! configuration, the workers' queues and counters, the limits. Built once at start-up.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use crate::admission;
use crate::auth::Auth;
use crate::broadcast::Bus;
use crate::config::Config;
use crate::memory;
use crate::stats::{Snapshot, Stats};
use crate::worker::handle::WorkerHandle;

/// What the non-worker threads (acceptor, control) see of the server.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub workers: Arc<[WorkerHandle]>,
    /// The one way publishes reach every worker.
    pub bus: Bus,
    /// One per worker, written only by that worker.
    pub stats: Vec<Arc<Stats>>,
    pub admission: Arc<admission::Shared>,
    /// Set when shutdown begins: health checks answer 503 and new connections are refused.
    pub draining: AtomicBool,
    /// Messages accepted through the admin publish API.
    pub api_publishes: AtomicU64,
    /// Admin publishes refused because the workers were too far behind (503).
    pub api_publishes_refused: AtomicU64,
    pub started: Instant,
    /// Resident memory against `--max-memory`.
    pub memory: Arc<memory::Guard>,
    /// The token verifier, when a key source is configured (`--auth-*`).
    pub auth: Option<Arc<Auth>>,
}

impl Shared {
    /// Counters summed over workers.
    pub fn totals(&self) -> Snapshot {
        let mut total = Snapshot::default();
        for s in &self.stats {
            total.add(&s.snapshot());
        }
        total
    }
}
