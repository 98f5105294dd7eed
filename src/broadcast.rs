//! Encode a published message once and hand the same bytes to every worker: [`Bus`] is the
//! one place a publish leaves for the workers, whether it comes from a WebSocket client or
//! the admin API. Runs on the publishing thread (encode, send) and on every worker (merge
//! before delivery); each worker reaches the bus through its own [`Port`].
//!
//! What workers queue to each other has two bounds: [`CROSS_BYTES`] for all of it, and
//! [`PUBLISHER_SHARE`] for what one publishing connection has in flight. The first is one
//! shared counter; the second is kept by each worker for its own connections
//! (`worker::share`), from the numbers of the publishes every other worker has taken
//! (`progress`).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::budget;
use crate::codec::{self, Kind, MAX_SERVER_HEADER};
use crate::link::{Forward, Link};
use crate::progress::Progress;
use crate::protocol::{self, Raw};
use crate::worker::handle::{Msg, WorkerHandle};

pub use crate::delivery::{Delivery, Target};

/// The memory that deliveries from outside the workers (the admin API, other nodes through
/// the backplane) may hold in the workers' queues, counting a frame once per worker. Past
/// it such a delivery is refused: the admin API answers 503, a message from another node is
/// dropped and counted. What fills it is a publisher outside this node's workers, which
/// nothing else slows down, faster than the workers deliver.
pub const OUTSIDE_BYTES: usize = 64 << 20;

/// The memory that publishes made on one worker may hold in the other workers' queues, a
/// frame counted once per worker it waits for. Past it the publishing connection's input is
/// held back (TCP then slows its client) until the queues are down to half, while every
/// worker goes on delivering. What fills it is a client on one worker publishing to
/// subscribers on others faster than those workers deliver: a worker takes at most 1 MiB of
/// its queue per loop turn, and a turn that writes to thousands of sockets is slow.
pub const CROSS_BYTES: usize = 64 << 20;

/// What one publishing connection may have of [`CROSS_BYTES`]: its publishes still waiting
/// in the other workers' queues, counted as there (once per worker). Past it that
/// connection's input is held back until its own are down to half, however empty the
/// queues are otherwise, while every other publisher goes on. One eighth: a client that
/// publishes faster than the other workers deliver (its own topic, subscribers that never
/// read) is held long before it fills the queues for everyone (with the global bound alone
/// it filled them, and every publisher on every worker was held with it); more than eight
/// such clients at their share are what it takes to reach the global bound, which stays
/// the outer one. A fixed fraction rather than one that shrinks with the number of
/// publishers, so that no worker needs to know what the others' clients do. 8 MiB is 8 loop
/// turns of the other workers' take (each takes 1 MiB a turn, and a frame counts once per
/// worker), so a publisher whose subscribers' workers keep up is never held by it.
pub const PUBLISHER_SHARE: usize = CROSS_BYTES / 8;

/// A publish sent to the other workers: its number among this worker's publishes to them,
/// and the bytes it holds in their queues (its frame once per worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub seq: u64,
    pub bytes: usize,
}

/// Every worker's queue, for fan-out, and the backplane to the other nodes if there is one.
/// Cheap to clone; sending never blocks.
#[derive(Debug, Clone)]
pub struct Bus {
    workers: Arc<[WorkerHandle]>,
    backplane: Option<Arc<Link>>,
    /// Bytes queued from outside the workers and not yet taken by them.
    outside: Arc<AtomicUsize>,
    /// Bytes queued by workers to other workers and not yet taken by them.
    cross: Arc<AtomicUsize>,
    /// How many of each other's publishes the workers have taken.
    progress: Arc<Progress>,
    /// Bytes of every worker's topic history (`--history-max-bytes`).
    history: Arc<AtomicUsize>,
}

impl Bus {
    pub fn new(workers: Arc<[WorkerHandle]>, backplane: Option<Arc<Link>>) -> Bus {
        Bus {
            progress: Arc::new(Progress::new(workers.len())),
            history: Arc::new(AtomicUsize::new(0)),
            workers,
            backplane,
            outside: Arc::new(AtomicUsize::new(0)),
            cross: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many workers a publish reaches.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The backplane, with `--redis`.
    pub fn backplane(&self) -> Option<&Link> {
        self.backplane.as_deref()
    }

    /// The backplane, shared, for whoever reports to it (a worker's topics, the task).
    pub fn backplane_link(&self) -> Option<Arc<Link>> {
        self.backplane.clone()
    }

    /// A publish from outside the workers (the admin API): queued to every worker, and
    /// forwarded to the other nodes. `None` if the workers are [`OUTSIDE_BYTES`] behind (then
    /// it goes nowhere).
    pub fn publish(&self, d: Delivery) -> Option<usize> {
        if !self.reserve_outside(d.frame.len()) {
            return None;
        }
        if let Some(b) = &self.backplane {
            b.forward(&mut vec![Forward::of(&d)]);
        }
        Some(self.queue_outside(d))
    }

    /// A publish from outside the workers (`POST /publish`) to a topic that keeps history:
    /// sent to the topic's owner among `workers`, which numbers it and tells `done` its
    /// offset and epoch. Its data counts against [`OUTSIDE_BYTES`] until the owner takes it;
    /// false (and not sent) if the workers are that far behind.
    pub fn publish_history(
        &self,
        topic: Arc<str>,
        rule: u16,
        data: Bytes,
        done: tokio::sync::oneshot::Sender<(u64, Arc<str>)>,
    ) -> bool {
        if !budget::try_reserve(&self.outside, data.len(), OUTSIDE_BYTES) {
            return false;
        }
        let owner = crate::history::owner_of(&topic, self.workers.len());
        let msg = Msg::HistoryPublish(Box::new(crate::worker::handle::HistoryPublish {
            topic,
            rule,
            data,
            outside: true,
            done: Some(done),
        }));
        self.workers[owner].send(msg, |m| self.unread(m))
    }

    /// A message from another node (through the backplane): queued to every worker, not
    /// forwarded again. False if the workers are [`OUTSIDE_BYTES`] behind (it is dropped).
    pub fn deliver_remote(&self, d: Delivery) -> bool {
        if !self.reserve_outside(d.frame.len()) {
            return false;
        }
        self.queue_outside(d);
        true
    }

    /// Takes room for one copy of a `len`-byte frame per worker, never past the bound.
    fn reserve_outside(&self, len: usize) -> bool {
        budget::try_reserve(&self.outside, len * self.workers.len(), OUTSIDE_BYTES)
    }

    /// Queues `d` to every worker that runs; returns how many that is.
    fn queue_outside(&self, d: Delivery) -> usize {
        self.workers
            .iter()
            .filter(|w| w.send(Msg::DeliverOutside(d.clone()), |m| self.unread(m)))
            .count()
    }

    /// Bytes of deliveries from outside waiting in the workers' queues.
    pub fn outside_queued(&self) -> usize {
        self.outside.load(Relaxed)
    }

    /// Bytes of workers' publishes waiting in other workers' queues.
    pub fn cross_queued(&self) -> usize {
        self.cross.load(Relaxed)
    }

    /// Publishers must wait: the other workers are [`CROSS_BYTES`] behind.
    pub fn cross_full(&self) -> bool {
        self.cross_queued() > CROSS_BYTES
    }

    /// Worker `me` will publish nothing more (it is shutting down): tells every other worker,
    /// behind everything `me` already sent them.
    pub fn fence_from(&self, me: usize) {
        for (i, w) in self.workers.iter().enumerate() {
            if i != me {
                w.send(Msg::Fence, |m| self.unread(m));
            }
        }
    }

    /// Sends `msg` (made fresh for each) to every worker.
    pub fn tell_all(&self, msg: impl Fn() -> Msg) {
        for w in self.workers.iter() {
            w.send(msg(), |m| self.unread(m));
        }
    }

    /// Worker `index` has exited: the budget of what it left unread, and of whatever is
    /// sent to it from now on, comes back at once instead of never.
    pub fn retire(&self, index: usize) {
        self.workers[index].retire(|m| self.unread(m));
        self.progress.retire(index);
    }

    /// A message no worker will read: gives back what it was charged.
    fn unread(&self, msg: Msg) {
        match msg {
            Msg::Deliver { d, .. } => budget::give_back(&self.cross, d.frame.len()),
            Msg::DeliverOutside(d) => budget::give_back(&self.outside, d.frame.len()),
            Msg::HistoryPublish(p) if p.outside => budget::give_back(&self.outside, p.data.len()),
            Msg::HistoryPublish(p) => budget::give_back(&self.cross, p.data.len()),
            _ => {}
        }
    }

    /// Worker `me`'s end of the bus.
    pub fn port(&self, me: usize) -> Port {
        Port {
            bus: self.clone(),
            me,
            forwards: Vec::new(),
            cross_taken: 0,
            outside_taken: 0,
            sent: 0,
            taken_from: vec![0; self.workers.len()].into(),
        }
    }
}

/// One worker's end of the bus. What its loop turn gathers leaves in one go at
/// [`flush`](Port::flush): the turn's publishes reach the backplane as one batch, and the
/// budgets of the deliveries the turn took come back with one atomic operation each, not one
/// per delivery on counters every worker shares, and the counts of the publishes it took
/// from each other worker are stored then too (one store per worker, on this worker's own
/// cache lines). Until then the budgets count those bytes as still queued, so a bound is
/// never looser for it.
#[derive(Debug)]
pub struct Port {
    bus: Bus,
    /// The worker this port belongs to.
    me: usize,
    /// This turn's publishes, for the other nodes (with `--redis`).
    forwards: Vec<Forward>,
    /// Bytes of deliveries taken this turn and not yet given back to [`CROSS_BYTES`] and
    /// [`OUTSIDE_BYTES`].
    cross_taken: usize,
    outside_taken: usize,
    /// Publishes this worker has sent to the other workers: the last one's number.
    sent: u64,
    /// Publishes taken so far from each worker; stored to `progress` at each flush.
    taken_from: Box<[u64]>,
}

impl Port {
    /// A publish made on this worker: its own copy goes straight to `local` (delivered this
    /// loop turn), the others through their queues; the other nodes get it through the
    /// backplane at the next [`flush`](Port::flush). Returns what it holds in the other
    /// workers' queues, and under which number; `None` if there are no other workers.
    pub fn publish_from(&mut self, d: Delivery, local: &mut Vec<Delivery>) -> Option<Sent> {
        let bus = &self.bus;
        if bus.backplane.is_some() {
            self.forwards.push(Forward::of(&d));
        }
        let others = bus.workers.len() - 1;
        let sent = (others > 0).then(|| {
            let bytes = d.frame.len() * others;
            // Counted before it is sent, so that the taker never gives back first.
            bus.cross.fetch_add(bytes, Relaxed);
            self.sent += 1;
            Sent {
                seq: self.sent,
                bytes,
            }
        });
        for (i, w) in bus.workers.iter().enumerate() {
            if i != self.me {
                let msg = Msg::Deliver {
                    from: self.me as u32,
                    d: d.clone(),
                };
                w.send(msg, |m| bus.unread(m));
            }
        }
        local.push(d);
        sent
    }

    /// This worker took a delivery that worker `from` published off its queue; its room
    /// comes back, and `from` learns it was taken, at the next flush.
    pub fn cross_taken(&mut self, from: u32, d: &Delivery) {
        self.cross_taken += d.frame.len();
        self.taken_from[from as usize] += 1;
    }

    /// This worker took a delivery from outside off its queue (the frame lives on only in
    /// connections' bounded output queues); its room comes back at the next flush.
    pub fn outside_taken(&mut self, d: &Delivery) {
        self.outside_taken += d.frame.len();
    }

    /// Hands the turn's publishes to the backplane and gives back the budgets of the
    /// deliveries taken. Once per loop turn, after the turn's reading and taking.
    pub fn flush(&mut self) {
        if let Some(b) = &self.bus.backplane {
            b.forward(&mut self.forwards);
        }
        if self.cross_taken > 0 {
            self.bus.progress.store_row(self.me, &self.taken_from);
        }
        budget::give_back(&self.bus.cross, std::mem::take(&mut self.cross_taken));
        budget::give_back(&self.bus.outside, std::mem::take(&mut self.outside_taken));
    }

    /// How many workers a publish reaches.
    pub fn workers(&self) -> usize {
        self.bus.workers()
    }

    /// The backplane, with `--redis`.
    pub fn backplane(&self) -> Option<&Link> {
        self.bus.backplane()
    }

    /// The backplane, shared, for this worker's topics to report to.
    pub fn backplane_link(&self) -> Option<Arc<Link>> {
        self.bus.backplane_link()
    }

    /// Bytes of workers' publishes waiting in other workers' queues.
    pub fn cross_queued(&self) -> usize {
        self.bus.cross_queued()
    }

    /// Publishers must wait: the other workers are [`CROSS_BYTES`] behind.
    pub fn cross_full(&self) -> bool {
        self.bus.cross_full()
    }

    /// How many of this worker's publishes every other worker has taken, as of their last
    /// flushes: those numbered up to it wait in no queue. One load per other worker.
    pub fn taken_by_all(&self) -> u64 {
        self.bus.progress.taken_by_all(self.me)
    }

    /// This worker's index among the bus's workers, and how many there are.
    pub fn me(&self) -> (usize, usize) {
        (self.me, self.bus.workers.len())
    }

    /// The byte count of all workers' topic history.
    pub fn history_budget(&self) -> Arc<AtomicUsize> {
        self.bus.history.clone()
    }

    /// A message for worker `to` alone (the history of a topic it owns, or its answer). A
    /// publication on its way to its owner counts `bytes` against [`CROSS_BYTES`] until the
    /// owner takes it ([`Port::cross_returned`]), as any publish between workers does.
    pub fn send_to(&self, to: usize, msg: Msg, bytes: usize) {
        if bytes > 0 {
            self.bus.cross.fetch_add(bytes, Relaxed);
        }
        self.bus.workers[to].send(msg, |m| self.bus.unread(m));
    }

    /// A publication sent with [`Port::send_to`] was taken: its room comes back at the next
    /// flush.
    pub fn cross_returned(&mut self, bytes: usize) {
        self.cross_taken += bytes;
    }

    /// A publication sent with [`Bus::publish_history`] was taken: the same, for the
    /// outside budget.
    pub fn outside_returned(&mut self, bytes: usize) {
        self.outside_taken += bytes;
    }

    /// See [`Bus::fence_from`].
    pub fn fence_from(&self, me: usize) {
        self.bus.fence_from(me)
    }
}

impl Drop for Port {
    /// A worker that ends mid-turn (a panic) leaves nothing charged behind.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Builds the `message` frame for `data` once: the JSON is written after room left for the
/// largest header, and the header is then written right before it, so the frame is one
/// allocation with no copy.
pub fn encode(target: Target, data: Raw<'_>) -> Delivery {
    let topic = match &target {
        Target::All => None,
        Target::Topic(t) => Some(&**t),
    };
    let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + 48 + data.get().len());
    buf.resize(MAX_SERVER_HEADER, 0);
    protocol::message(&mut buf, topic, data);
    let payload_len = buf.len() - MAX_SERVER_HEADER;
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = codec::write_header(&mut header, Kind::Text, payload_len);
    let start = MAX_SERVER_HEADER - n;
    buf[start..MAX_SERVER_HEADER].copy_from_slice(&header[..n]);
    Delivery {
        target,
        frame: Bytes::from(buf).slice(start..),
    }
}

/// The end of the run of deliveries for the same audience that starts at `start`.
pub fn run_end(pending: &[Delivery], start: usize) -> usize {
    let mut end = start + 1;
    while end < pending.len() && pending[end].target.same(&pending[start].target) {
        end += 1;
    }
    end
}

/// Joins a run of frames for one audience into one buffer, so that a burst of messages costs
/// each recipient one queued segment (and its flush one iovec), not one per message. Built
/// once per run on each worker; a recipient that cannot take it whole gets the messages one
/// by one instead, each against its bound.
pub fn merge(run: &[Delivery]) -> Bytes {
    let total: usize = run.iter().map(|d| d.frame.len()).sum();
    let mut buf = BytesMut::with_capacity(total);
    for d in run {
        buf.extend_from_slice(&d.frame);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::handle::{channel, Inbox};

    fn raw(s: &str) -> Raw<'_> {
        Raw::new(s).unwrap()
    }

    #[test]
    fn encodes_a_complete_text_frame_for_every_header_size() {
        for len in [1usize, 100, 200, 70_000] {
            let data = format!("\"{}\"", "x".repeat(len));
            let d = encode(Target::Topic("news".into()), raw(&data));
            let f = &d.frame;
            assert_eq!(f[0], 0x81);
            let (hlen, plen) = match f[1] {
                126 => (4, u16::from_be_bytes([f[2], f[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!(f.len(), hlen + plen);
            let v: serde_json::Value = serde_json::from_slice(&f[hlen..]).unwrap();
            assert_eq!(v["topic"], "news");
            assert_eq!(v["data"].as_str().unwrap().len(), len);
        }
        let b = encode(Target::All, raw("1"));
        assert_eq!(&b.frame[2..], br#"{"op":"message","data":1}"#);
    }

    /// Two workers' handles and inboxes, with no threads behind them.
    fn two_workers() -> (Vec<mio::Poll>, Arc<[WorkerHandle]>, Vec<Inbox>) {
        let polls: Vec<mio::Poll> = (0..2).map(|_| mio::Poll::new().unwrap()).collect();
        let (handles, inboxes): (Vec<_>, Vec<_>) = polls
            .iter()
            .map(|p| channel(mio::Waker::new(p.registry(), mio::Token(0)).unwrap()))
            .unzip();
        (polls, handles.into(), inboxes)
    }

    /// What a worker takes in a loop turn stays charged until the turn's flush, which gives
    /// it all back at once and tells the publisher how many it took; and the turn's
    /// publishes reach the backplane at that flush.
    #[test]
    fn a_port_gives_back_and_hands_over_once_per_turn() {
        let (_polls, workers, inboxes) = two_workers();
        let (link, _rx) = crate::link::link();
        let bus = Bus::new(workers, Some(link.clone()));
        let (mut port0, mut port1) = (bus.port(0), bus.port(1));
        let d = encode(Target::All, raw("1"));
        let len = d.frame.len();

        let mut local = Vec::new();
        for seq in 1..=5 {
            let sent = port0.publish_from(d.clone(), &mut local);
            assert_eq!(sent, Some(Sent { seq, bytes: len }), "numbered from 1");
        }
        assert_eq!(local.len(), 5);
        assert_eq!(bus.cross_queued(), 5 * len, "charged as sent");
        assert_eq!(link.queued_bytes(), 0, "not handed over mid-turn");
        port0.flush();
        assert_eq!(link.queued_bytes(), 5 * len, "handed over at the flush");

        assert_eq!(bus.publish(d.clone()), Some(2));
        assert_eq!(bus.outside_queued(), 2 * len);
        for msg in inboxes[1].msgs.try_iter() {
            match msg {
                Msg::Deliver { from, d } => port1.cross_taken(from, &d),
                Msg::DeliverOutside(d) => port1.outside_taken(&d),
                other => panic!("{other:?}"),
            }
            assert_eq!(bus.cross_queued(), 5 * len, "nothing given back mid-turn");
            assert_eq!(bus.outside_queued(), 2 * len, "nothing given back mid-turn");
            assert_eq!(port0.taken_by_all(), 0, "nor told mid-turn");
        }
        port1.flush();
        assert_eq!(bus.cross_queued(), 0);
        assert_eq!(port0.taken_by_all(), 5, "all five taken");
        assert_eq!(port1.taken_by_all(), 0, "worker 1 published nothing");
        assert_eq!(bus.outside_queued(), len, "worker 0's copy not taken yet");
        let Ok(Msg::DeliverOutside(d)) = inboxes[0].msgs.try_recv() else {
            panic!("worker 0's copy");
        };
        port0.outside_taken(&d);
        drop(port0);
        assert_eq!(
            bus.outside_queued(),
            0,
            "a port dropped mid-turn gives back too"
        );
    }

    /// Sends to a worker that has exited come back to the sender's budget, as does what it
    /// left in its queue.
    #[test]
    fn a_retired_worker_gives_back_what_it_did_not_read() {
        let (_polls, workers, inboxes) = two_workers();
        let bus = Bus::new(workers, None);
        let mut port0 = bus.port(0);
        let d = encode(Target::All, raw("1"));
        let mut local = Vec::new();
        port0.publish_from(d.clone(), &mut local);
        assert_eq!(bus.publish(d.clone()), Some(2));
        drop(inboxes);
        assert_eq!(port0.taken_by_all(), 0);
        bus.retire(1);
        assert_eq!(bus.cross_queued(), 0, "left unread");
        assert_eq!(port0.taken_by_all(), u64::MAX, "nobody left to wait for");
        assert_eq!(bus.outside_queued(), d.frame.len(), "worker 0's copy only");
        port0.publish_from(d.clone(), &mut local);
        assert_eq!(bus.cross_queued(), 0, "sent after");
        assert_eq!(bus.publish(d.clone()), Some(1), "queued to worker 0 only");
    }

    /// With one worker nothing is queued between workers, numbered, or charged.
    #[test]
    fn a_single_worker_sends_nothing_across() {
        let poll = mio::Poll::new().unwrap();
        let (handle, inbox) = channel(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let bus = Bus::new(vec![handle].into(), None);
        let mut port = bus.port(0);
        let mut local = Vec::new();
        assert_eq!(
            port.publish_from(encode(Target::All, raw("1")), &mut local),
            None
        );
        assert_eq!(local.len(), 1);
        assert_eq!(bus.cross_queued(), 0);
        assert!(inbox.msgs.is_empty());
    }

    #[test]
    fn runs_are_neighbours_with_the_same_audience() {
        let a: Arc<str> = "a".into();
        let pending = vec![
            encode(Target::Topic(a.clone()), raw("1")),
            encode(Target::Topic(a.clone()), raw("2")),
            encode(Target::All, raw("3")),
            encode(Target::Topic("a".into()), raw("4")),
        ];
        assert_eq!(run_end(&pending, 0), 2);
        assert_eq!(run_end(&pending, 2), 3);
        assert_eq!(run_end(&pending, 3), 4, "same name, not a neighbour");
        let expect: Vec<u8> = pending[..2].iter().flat_map(|d| d.frame.to_vec()).collect();
        assert_eq!(merge(&pending[..2]), expect);
    }
}
