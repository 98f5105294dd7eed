//! The workers' link to the Redis backplane (`--redis`): the queue of publishes to forward
//! to the other nodes, the queue of reports of interest (a topic appeared on or left a
//! worker), and the backplane's counters. The workers fill the queues without ever blocking;
//! the backplane task (`crate::backplane`, on the control thread) empties them.
//!
//! A worker hands over its publishes once per loop turn, as one batch, not one by one: one
//! atomic operation reserves their room, one push queues them, and the control thread is
//! woken (an eventfd write) only if the task sleeps, by the protocol `worker::handle` uses
//! for the workers themselves: the task says it sleeps, looks at the queue once more, and
//! waits; a worker pushes, then takes the task's `asleep` back and wakes it only if it was
//! set. The SeqCst fences order each side's store before its load.
//!
//! A leaf of its own, below both of its users: the bus forwards every publish through it,
//! and the backplane task, which hands other nodes' messages to that same bus, reads it.

use std::sync::atomic::{
    fence, AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{mpsc, Notify};

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

/// `POST /disconnect`s waiting to reach the other nodes. An admin calls it, a handful at a
/// time; past this many (Redis stalled) the admin API answers 503.
pub const DISCONNECT_QUEUE: usize = 1024;

/// Backplane counters, read by `/metrics`. Written by the control thread, except
/// `forward_failed` and `interest_overflows`, which a worker bumps when a queue is full.
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
    /// `POST /disconnect` commands received from other nodes.
    pub disconnects_received: AtomicU64,
}

/// What a publish sends to the backplane: the frame as local subscribers got it.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) target: Target,
    pub(crate) frame: Bytes,
}

impl Forward {
    pub(crate) fn of(d: &Delivery) -> Forward {
        Forward {
            target: d.target.clone(),
            frame: d.frame.clone(),
        }
    }
}

/// A worker's report (the first field is its index).
#[derive(Debug)]
pub(crate) enum Interest {
    Added(usize, Arc<str>),
    Removed(usize, Arc<str>),
    /// Every topic the worker holds, replacing whatever it reported before.
    Resync(usize, Vec<Arc<str>>),
}

/// One publish in [`Link::queued`]'s upper half; the bytes of frames fill the lower half
/// ([`QUEUE_BYTES`] is far below 2^32, and a reservation never passes it).
const ONE: u64 = 1 << 32;

/// Takes room for one more publish of `len` bytes in `(count, bytes)` if it stays within
/// [`QUEUE`] and [`QUEUE_BYTES`]; false (and nothing taken) if it would not.
fn take_room((count, bytes): &mut (u64, u64), len: usize) -> bool {
    let after = *bytes + len as u64;
    if *count >= QUEUE as u64 || after > QUEUE_BYTES as u64 {
        return false;
    }
    *count += 1;
    *bytes = after;
    true
}

fn unpack(queued: u64) -> (u64, u64) {
    (queued / ONE, queued % ONE)
}

/// The workers' side of the backplane: cheap to share, and nothing on it blocks.
#[derive(Debug)]
pub struct Link {
    node: u64,
    /// Batches of publishes, one per worker and loop turn at most, in order.
    forwards: Sender<Vec<Forward>>,
    /// The publishes in `forwards` (upper half) and the bytes of their frames, the batch
    /// being sent included (lower half): bounded by [`QUEUE`] and [`QUEUE_BYTES`], and
    /// reserved for a whole batch by one atomic operation.
    queued: AtomicU64,
    /// The backplane task is about to wait or waiting for `forwards`: the next hand-over
    /// wakes it through `wake`.
    asleep: AtomicBool,
    wake: Notify,
    /// Hand-overs that woke the task (tests read it).
    wakes: AtomicU64,
    interest: mpsc::Sender<Interest>,
    /// Users to disconnect on the other nodes (`POST /disconnect`), for the task to PUBLISH.
    disconnects: mpsc::Sender<Arc<str>>,
    pub stats: Stats,
}

impl Link {
    /// This node's id, as envelopes carry it.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Hands a batch of publishes over to the backplane task, in order, and leaves `batch`
    /// empty. Each publish is taken if it fits under [`QUEUE`] and [`QUEUE_BYTES`], as if it
    /// were offered alone, but one atomic operation reserves room for the whole batch; what
    /// does not fit is dropped and counted. The task is woken only if it sleeps.
    pub(crate) fn forward(&self, batch: &mut Vec<Forward>) {
        if batch.is_empty() {
            return;
        }
        let offer = |queued: u64| {
            let mut room = unpack(queued);
            for f in batch.iter() {
                take_room(&mut room, f.frame.len());
            }
            Some(room.0 * ONE + room.1)
        };
        let Ok(before) = self.queued.fetch_update(Relaxed, Relaxed, offer) else {
            unreachable!("the offer always gives a new value");
        };
        // The same offers against the value they were made on keep the same publishes.
        let mut room = unpack(before);
        let offered = batch.len();
        batch.retain(|f| take_room(&mut room, f.frame.len()));
        let dropped = (offered - batch.len()) as u64;
        if dropped > 0 {
            self.stats.forward_failed.fetch_add(dropped, Relaxed);
        }
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.forwards.send(std::mem::take(batch)) {
            // The task is gone (the server is stopping): nothing will take them.
            let lost = e.into_inner();
            let bytes: usize = lost.iter().map(|f| f.frame.len()).sum();
            self.queued
                .fetch_sub(lost.len() as u64 * ONE + bytes as u64, Relaxed);
            self.stats
                .forward_failed
                .fetch_add(lost.len() as u64, Relaxed);
            return;
        }
        fence(SeqCst);
        if self.asleep.swap(false, SeqCst) {
            self.wakes.fetch_add(1, Relaxed);
            self.wake.notify_one();
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

    /// Asks the other nodes to disconnect `user` (the control thread's admin API). False if
    /// the queue is full (a flood of disconnects while Redis stalls) or the task is gone.
    pub fn disconnect(&self, user: &Arc<str>) -> bool {
        self.disconnects.try_send(user.clone()).is_ok()
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
        unpack(self.queued.load(Relaxed)).1 as usize
    }
}

/// The backplane task's end of the publishes the workers hand over.
pub(crate) struct Forwards {
    batches: Receiver<Vec<Forward>>,
    link: Arc<Link>,
}

impl Forwards {
    /// Resolves once publishes wait: at once if some do; otherwise after saying that the
    /// task sleeps, so that the next hand-over wakes it. While the task is busy, the workers
    /// pay for no wake-up. It may resolve with nothing waiting (a wake-up left from a
    /// hand-over the task had seen anyway).
    pub(crate) async fn ready(&self) {
        if self.sleep_if_idle() {
            self.link.wake.notified().await;
        }
    }

    /// True if nothing waits, having said so to the workers; false (and awake) otherwise.
    fn sleep_if_idle(&self) -> bool {
        if !self.batches.is_empty() {
            return false;
        }
        self.link.asleep.store(true, SeqCst);
        fence(SeqCst);
        if self.batches.is_empty() {
            return true;
        }
        self.link.asleep.store(false, SeqCst);
        false
    }

    /// Moves waiting batches, whole and in order, into `into` until it holds `max` or more
    /// publishes or none wait. Their count leaves the queue's bound now, their bytes only at
    /// [`sent`](Forwards::sent).
    pub(crate) fn take(&self, into: &mut Vec<Forward>, max: usize) {
        // Awake: hand-overs need not wake the task until it sleeps again.
        self.link.asleep.store(false, Relaxed);
        let before = into.len();
        while into.len() < max {
            let Ok(batch) = self.batches.try_recv() else {
                break;
            };
            into.extend(batch);
        }
        let taken = (into.len() - before) as u64;
        if taken > 0 {
            self.link.queued.fetch_sub(taken * ONE, Relaxed);
        }
    }

    /// Publishes taken with `bytes` of frames are done with (sent or failed): their memory
    /// no longer counts against [`QUEUE_BYTES`].
    pub(crate) fn sent(&self, bytes: usize) {
        self.link.queued.fetch_sub(bytes as u64, Relaxed);
    }
}

/// The backplane task's side, handed to the control thread.
pub struct Receivers {
    pub(crate) forwards: Forwards,
    pub(crate) interest: mpsc::Receiver<Interest>,
    pub(crate) disconnects: mpsc::Receiver<Arc<str>>,
}

impl std::fmt::Debug for Receivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receivers").finish_non_exhaustive()
    }
}

/// Makes the link the workers get and the receivers the backplane task takes.
pub fn link() -> (Arc<Link>, Receivers) {
    // Unbounded as a channel: `Link::queued` bounds what it holds, without blocking.
    let (forwards, batches) = crossbeam_channel::unbounded();
    let (interest, interest_rx) = mpsc::channel(INTEREST_QUEUE);
    let (disconnects, disconnects_rx) = mpsc::channel(DISCONNECT_QUEUE);
    let link = Arc::new(Link {
        node: node_id(),
        forwards,
        queued: AtomicU64::new(0),
        asleep: AtomicBool::new(false),
        wake: Notify::new(),
        wakes: AtomicU64::new(0),
        interest,
        disconnects,
        stats: Stats::default(),
    });
    let forwards = Forwards {
        batches,
        link: link.clone(),
    };
    (
        link,
        Receivers {
            forwards,
            interest: interest_rx,
            disconnects: disconnects_rx,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(len: usize) -> Forward {
        Forward {
            target: Target::All,
            frame: Bytes::from(vec![b'x'; len]),
        }
    }

    #[test]
    fn room_is_taken_per_publish_within_both_bounds() {
        let mut room = (0, 0);
        assert!(take_room(&mut room, QUEUE_BYTES - 10));
        assert!(!take_room(&mut room, 11), "past the bytes");
        assert!(take_room(&mut room, 10), "a later, smaller one still fits");
        assert_eq!(room, (2, QUEUE_BYTES as u64));
        let mut room = (QUEUE as u64 - 1, 0);
        assert!(take_room(&mut room, 1));
        assert!(!take_room(&mut room, 0), "past the count");
    }

    /// A loop turn's publishes reach the task as one batch, with one reservation, and what
    /// does not fit is dropped and counted, the rest kept in order.
    #[test]
    fn a_batch_is_handed_over_whole_and_what_does_not_fit_is_counted() {
        let (link, rx) = link();
        let mut batch = vec![forward(100), forward(QUEUE_BYTES), forward(200)];
        link.forward(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(rx.forwards.batches.len(), 1, "one hand-over");
        assert_eq!(link.queued_bytes(), 300);
        assert_eq!(unpack(link.queued.load(Relaxed)).0, 2);
        assert_eq!(link.stats.forward_failed.load(Relaxed), 1);

        let mut taken = Vec::new();
        rx.forwards.take(&mut taken, 512);
        let lens: Vec<usize> = taken.iter().map(|f| f.frame.len()).collect();
        assert_eq!(lens, [100, 200], "in order");
        assert_eq!(
            unpack(link.queued.load(Relaxed)),
            (0, 300),
            "bytes until sent"
        );
        rx.forwards.sent(300);
        assert_eq!(link.queued_bytes(), 0);
    }

    /// The task is woken only when it sleeps, once however many hand-overs follow.
    #[test]
    fn a_hand_over_wakes_the_task_only_if_it_sleeps() {
        let (link, rx) = link();
        for _ in 0..10 {
            link.forward(&mut vec![forward(10)]);
        }
        assert_eq!(link.wakes.load(Relaxed), 0, "busy: never woken");
        assert!(!rx.forwards.sleep_if_idle(), "work waits: no sleep");
        rx.forwards.take(&mut Vec::new(), usize::MAX);
        assert!(rx.forwards.sleep_if_idle());
        for _ in 0..10 {
            link.forward(&mut vec![forward(10)]);
        }
        assert_eq!(link.wakes.load(Relaxed), 1, "asleep: woken once");
    }
}
