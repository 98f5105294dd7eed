//! The workers' link to the Redis backplane (`--redis`): the queue of publishes to forward
//! to the other nodes, the queue of reports of interest (a topic appeared on or left a
//! worker), and the backplane's counters. The workers fill the queues without ever blocking;
//! the backplane task (`crate::backplane`, on the control thread) empties them.
//!
//! A leaf of its own, below both of its users: the bus forwards every publish through it,
//! and the backplane task, which hands other nodes' messages to that same bus, reads it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::delivery::{Delivery, Target};

/// Publishes waiting for the backplane task, across all workers: past this many, or past
/// [`QUEUE_BYTES`] of frames, a publish is not forwarded (counted in
/// `backplane_forward_failed`). What fills it is Redis being slower than the publishers.
pub const QUEUE: usize = 65_536;
/// The memory the queued frames may hold, the batch being sent included (the frames are
/// shared with local delivery, so this is memory they are kept alive for).
pub const QUEUE_BYTES: usize = 64 << 20;
/// Reports of interest (a worker's topic set changed) waiting for the backplane task, across
/// all workers. Past this, a worker resends its whole set later instead (counted in
/// `backplane_interest_overflows`). What fills it is a client churning topics while a
/// SUBSCRIBE waits on a stalled Redis.
pub const INTEREST_QUEUE: usize = 16_384;

/// Backplane counters, read by `/metrics`. Written by the control thread, except
/// `forward_failed`, which a worker bumps when the queue is full.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connected to Redis and subscribed.
    pub up: AtomicBool,
    /// Publishes sent to Redis (PUBLISH answered).
    pub forwarded: AtomicU64,
    /// Publishes not forwarded: queue full, no connection, or the PUBLISH failed.
    pub forward_failed: AtomicU64,
    /// Messages from other nodes handed to the workers.
    pub received: AtomicU64,
    /// Messages from other nodes dropped: the workers were [`crate::broadcast::OUTSIDE_BYTES`]
    /// behind.
    pub received_dropped: AtomicU64,
    /// Messages that came back from this node itself (skipped: already delivered).
    pub own_skipped: AtomicU64,
    /// Redis messages that are not a version-1 envelope (dropped).
    pub bad_envelopes: AtomicU64,
    /// Envelopes from other nodes whose message is not UTF-8 (dropped): framed as text, it
    /// would make every subscriber's client fail the connection (1007).
    pub invalid_utf8: AtomicU64,
    /// Connections made after the first one.
    pub reconnects: AtomicU64,
    /// Redis channels subscribed right now (the broadcast channel included).
    pub channels: AtomicI64,
    /// Reports of interest that did not fit in the queue (each makes its worker resend its
    /// whole topic set).
    pub interest_overflows: AtomicU64,
    /// Whole topic sets received from workers after an overflow.
    pub interest_resyncs: AtomicU64,
}

/// What a publish sends to the backplane: the frame as local subscribers got it.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) target: Target,
    pub(crate) frame: Bytes,
}

/// A worker's report (the first field is its index).
#[derive(Debug)]
pub(crate) enum Interest {
    Added(usize, Arc<str>),
    Removed(usize, Arc<str>),
    /// Every topic the worker holds, replacing whatever it reported before.
    Resync(usize, Vec<Arc<str>>),
}

/// The workers' side of the backplane: cheap to share, and nothing on it blocks.
#[derive(Debug)]
pub struct Link {
    node: u64,
    publish: mpsc::Sender<Forward>,
    /// Bytes of frames in `publish` (bounded by [`QUEUE_BYTES`]).
    pub(crate) queued_bytes: AtomicUsize,
    interest: mpsc::Sender<Interest>,
    pub stats: Stats,
}

impl Link {
    /// This node's id, as envelopes carry it.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Queues a local publish for the other nodes; a full queue drops it and counts.
    pub fn forward(&self, d: &Delivery) {
        let len = d.frame.len();
        if !crate::budget::try_reserve(&self.queued_bytes, len, QUEUE_BYTES) {
            self.stats.forward_failed.fetch_add(1, Relaxed);
            return;
        }
        let f = Forward {
            target: d.target.clone(),
            frame: d.frame.clone(),
        };
        if self.publish.try_send(f).is_err() {
            self.queued_bytes.fetch_sub(len, Relaxed);
            self.stats.forward_failed.fetch_add(1, Relaxed);
        }
    }

    /// Worker `worker`'s first local subscriber of `topic` arrived. False if the report
    /// did not fit: the worker must [`resync`](Link::resync) before it reports again.
    pub fn topic_added(&self, worker: usize, topic: &Arc<str>) -> bool {
        self.report(Interest::Added(worker, topic.clone()))
    }

    /// Worker `worker`'s last local subscriber of `topic` left. False as for
    /// [`topic_added`](Link::topic_added).
    pub fn topic_removed(&self, worker: usize, topic: &Arc<str>) -> bool {
        self.report(Interest::Removed(worker, topic.clone()))
    }

    fn report(&self, i: Interest) -> bool {
        match self.interest.try_send(i) {
            // Closed: the task is gone (the server is stopping); nobody to tell.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.interest_overflows.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Sends worker `worker`'s whole topic set (made by `topics`, called only if there is
    /// room), replacing what it reported before. False if the queue is still full.
    pub fn resync(&self, worker: usize, topics: impl FnOnce() -> Vec<Arc<str>>) -> bool {
        match self.interest.try_reserve() {
            Ok(permit) => {
                permit.send(Interest::Resync(worker, topics()));
                true
            }
            Err(mpsc::error::TrySendError::Closed(())) => true,
            Err(mpsc::error::TrySendError::Full(())) => false,
        }
    }

    /// Reports of interest waiting for the backplane task (at most [`INTEREST_QUEUE`]).
    pub fn interest_queued(&self) -> usize {
        self.interest.max_capacity() - self.interest.capacity()
    }

    pub fn is_up(&self) -> bool {
        self.stats.up.load(Relaxed)
    }

    /// Bytes of frames waiting to be forwarded.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Relaxed)
    }
}

/// The backplane task's side, handed to the control thread.
pub struct Receivers {
    pub(crate) publish: mpsc::Receiver<Forward>,
    pub(crate) interest: mpsc::Receiver<Interest>,
}

impl std::fmt::Debug for Receivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receivers").finish_non_exhaustive()
    }
}

/// Makes the link the workers get and the receivers the backplane task takes.
pub fn link() -> (Arc<Link>, Receivers) {
    let (publish, publish_rx) = mpsc::channel(QUEUE);
    let (interest, interest_rx) = mpsc::channel(INTEREST_QUEUE);
    let link = Arc::new(Link {
        node: node_id(),
        publish,
        queued_bytes: AtomicUsize::new(0),
        interest,
        stats: Stats::default(),
    });
    (
        link,
        Receivers {
            publish: publish_rx,
            interest: interest_rx,
        },
    )
}

/// A random id, different for every process (and every restart).
fn node_id() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let mut id = u64::from_le_bytes(b);
    if n != 8 {
        // No entropy source: time and pid still tell processes apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        id = t ^ (u64::from(std::process::id()) << 40);
    }
    id.max(1)
}
