//! The streams a worker owns: for each history topic its epoch, its top offset and its
//! retained publications, each kept as the frame every subscriber got (so a recovery sends
//! the same shared bytes). Bounded per topic by its rule's count, `topic_max_bytes` and the
//! rule's time to live, and all together by one byte budget the workers share (the oldest
//! publications of the owner that finds it full go first). Runs on the owning worker only;
//! nothing here is shared but the budget's counter.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;

use super::{new_epoch, Rules};
use crate::codec::{self, Kind, MAX_SERVER_HEADER};
use crate::protocol::{self, Raw};

/// What a stream costs beside its publications' frames: its entry, its name's share, its
/// epoch. Charged to the budget so that empty streams (made by subscribes) are bounded too.
pub const STREAM_OVERHEAD: usize = 160;

/// What each retained publication costs beside its frame's bytes (its slot).
pub const RETAINED_OVERHEAD: usize = std::mem::size_of::<Retained>();

/// One retained publication.
#[derive(Debug, Clone)]
struct Retained {
    offset: u64,
    /// When it was published (the worker's clock, seconds).
    at: u32,
    /// Where its `data` is in `frame`'s payload (for history reads).
    data: (u32, u32),
    frame: Bytes,
}

impl Retained {
    fn cost(&self) -> usize {
        RETAINED_OVERHEAD + self.frame.len()
    }
}

#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    top: u64,
    rule: u16,
    pubs: VecDeque<Retained>,
    /// Bytes of `pubs`' frames.
    bytes: usize,
    /// Last publish, or the creation (seconds).
    touched: u32,
}

/// Why publications left before their time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Over the rule's count.
    pub count: u64,
    /// Over `topic_max_bytes`.
    pub topic_bytes: u64,
    /// The budget of all history was full.
    pub global_bytes: u64,
    /// Past the rule's time to live.
    pub expired: u64,
}

/// The answer to a subscribe or a recovery: the stream's epoch and top, and the frames of
/// what the client missed if it can have them (`None`: recovery not asked, or not possible).
#[derive(Debug)]
pub struct Position {
    pub epoch: Arc<str>,
    pub top: u64,
    pub frames: Option<Vec<Bytes>>,
}

/// Where a recovering client stands.
#[derive(Debug, Clone, Copy)]
pub struct Since<'a> {
    pub epoch: &'a str,
    pub offset: u64,
}

/// The publications a history read returns, `(offset, data)`, oldest first.
#[derive(Debug)]
pub struct Read {
    pub epoch: Arc<str>,
    pub top: u64,
    pub pubs: Vec<(u64, Bytes)>,
}

/// The bounds every owner applies (`--history*`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub rules: Arc<Rules>,
    pub topic_max_bytes: usize,
    pub max_bytes: usize,
    /// Most publications a recovery may replay.
    pub max_recover: u64,
    /// Most publications a history read may return.
    pub max_read: usize,
}

/// One worker's streams.
#[derive(Debug)]
pub struct Store {
    streams: HashMap<Arc<str>, Stream>,
    limits: Limits,
    /// Bytes of every worker's streams (shared).
    held: Arc<AtomicUsize>,
    /// Bytes of this worker's streams.
    mine: usize,
    pub trimmed: Trimmed,
}

impl Default for Limits {
    /// No rules (history off), and the flags' defaults.
    fn default() -> Limits {
        use crate::config::*;
        Limits {
            rules: Arc::new(Rules::default()),
            topic_max_bytes: DEFAULT_HISTORY_TOPIC_MAX_BYTES,
            max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            max_recover: DEFAULT_HISTORY_MAX_RECOVER,
            max_read: DEFAULT_HISTORY_MAX_LIMIT,
        }
    }
}

impl Limits {
    /// Whether any topic keeps history.
    pub fn on(&self) -> bool {
        !self.rules.is_empty()
    }
}

impl Store {
    pub fn new(limits: Limits, held: Arc<AtomicUsize>) -> Store {
        Store {
            streams: HashMap::new(),
            limits,
            held,
            mine: 0,
            trimmed: Trimmed::default(),
        }
    }

    pub fn topics(&self) -> usize {
        self.streams.len()
    }

    /// Bytes this worker's streams are charged.
    pub fn bytes(&self) -> usize {
        self.mine
    }

    fn charge(&mut self, n: usize) {
        self.mine += n;
        self.held.fetch_add(n, Relaxed);
    }

    fn refund(&mut self, n: usize) {
        self.mine -= n;
        crate::budget::give_back(&self.held, n);
    }

    fn stream(&mut self, topic: &Arc<str>, rule: u16, now: u32) -> &mut Stream {
        if !self.streams.contains_key(&**topic) {
            self.charge(STREAM_OVERHEAD + topic.len());
            self.streams.insert(
                topic.clone(),
                Stream {
                    epoch: new_epoch().into(),
                    top: 0,
                    rule,
                    pubs: VecDeque::new(),
                    bytes: 0,
                    touched: now,
                },
            );
        }
        self.streams.get_mut(&**topic).expect("just made")
    }

    /// Assigns `topic` its next offset and keeps the publication; returns the frame every
    /// subscriber gets (`{"op":"message","topic":..,"offset":N,"data":..}`) and its offset.
    pub fn publish(
        &mut self,
        topic: &Arc<str>,
        rule: u16,
        data: Raw<'_>,
        now: u32,
    ) -> (u64, Arc<str>, Bytes) {
        let rule_count = self.limits.rules.get(rule).count as usize;
        let topic_max = self.limits.topic_max_bytes;
        let s = self.stream(topic, rule, now);
        s.top += 1;
        s.touched = now;
        let offset = s.top;
        let epoch = s.epoch.clone();
        let (frame, data_at) = encode(topic, offset, data);
        let r = Retained {
            offset,
            at: now,
            data: data_at,
            frame: frame.clone(),
        };
        let cost = r.cost();
        s.bytes += r.frame.len();
        s.pubs.push_back(r);
        let mut freed = 0;
        let (mut by_count, mut by_bytes) = (0, 0);
        while s.pubs.len() > rule_count {
            freed += pop(s);
            by_count += 1;
        }
        // The newest always stays, even alone over the bound: a publish is never refused
        // for its size here (`--max-message-size` bounds it).
        while s.bytes > topic_max && s.pubs.len() > 1 {
            freed += pop(s);
            by_bytes += 1;
        }
        self.trimmed.count += by_count;
        self.trimmed.topic_bytes += by_bytes;
        self.charge(cost);
        self.refund(freed);
        if self.held.load(Relaxed) > self.limits.max_bytes {
            self.trim_global();
        }
        (offset, epoch, frame)
    }

    /// Over the budget of all history: drops this worker's oldest publications until the
    /// budget is at 15/16 of its bound or this worker has none left to give.
    fn trim_global(&mut self) {
        let target = self.limits.max_bytes - self.limits.max_bytes / 16;
        let mut heap: BinaryHeap<Reverse<(u32, u64, Arc<str>)>> = self
            .streams
            .iter()
            .filter_map(|(t, s)| s.pubs.front().map(|r| Reverse((r.at, r.offset, t.clone()))))
            .collect();
        while self.held.load(Relaxed) > target {
            let Some(Reverse((_, _, topic))) = heap.pop() else {
                break;
            };
            let s = self.streams.get_mut(&topic).expect("in the heap");
            let freed = pop(s);
            if let Some(r) = s.pubs.front() {
                heap.push(Reverse((r.at, r.offset, topic)));
            }
            self.trimmed.global_bytes += 1;
            self.refund(freed);
        }
    }

    /// Drops what has outlived its rule's time to live, and the streams left empty that
    /// nobody published to for as long (their epoch goes with them). Once a second.
    pub fn sweep(&mut self, now: u32) {
        let rules = self.limits.rules.clone();
        let mut freed = 0;
        let mut expired = 0;
        self.streams.retain(|topic, s| {
            let ttl = rules.get(s.rule).ttl_secs;
            while s
                .pubs
                .front()
                .is_some_and(|r| now.saturating_sub(r.at) >= ttl)
            {
                freed += pop(s);
                expired += 1;
            }
            let keep = !s.pubs.is_empty() || now.saturating_sub(s.touched) < ttl;
            if !keep {
                freed += STREAM_OVERHEAD + topic.len();
            }
            keep
        });
        self.trimmed.expired += expired;
        self.refund(freed);
    }

    /// A subscribe to `topic`: its epoch and top (the stream is made if it has none, so
    /// that the epoch the client is told is the one its later publications carry), and with
    /// `since` the frames after it, if they can all be had.
    pub fn position(
        &mut self,
        topic: &Arc<str>,
        rule: u16,
        since: Option<Since<'_>>,
        now: u32,
    ) -> Position {
        let max_recover = self.limits.max_recover;
        let s = self.stream(topic, rule, now);
        let frames = since.and_then(|since| {
            if *since.epoch != *s.epoch || since.offset > s.top {
                return None;
            }
            let missed = s.top - since.offset;
            if missed > max_recover {
                return None;
            }
            if missed == 0 {
                return Some(Vec::new());
            }
            // Everything after `since.offset` must still be here.
            let first = s.pubs.front()?.offset;
            if first > since.offset + 1 {
                return None;
            }
            let skip = (since.offset + 1 - first) as usize;
            Some(s.pubs.iter().skip(skip).map(|r| r.frame.clone()).collect())
        });
        Position {
            epoch: s.epoch.clone(),
            top: s.top,
            frames,
        }
    }

    /// A history read: up to `limit` (capped by the server's maximum) retained publications
    /// after `since`, or the newest `limit` without it. A topic with no stream reads as
    /// empty, under a stream made for it (as a subscribe would).
    pub fn read(
        &mut self,
        topic: &Arc<str>,
        rule: u16,
        since: Option<u64>,
        limit: usize,
        now: u32,
    ) -> Read {
        let limit = limit.min(self.limits.max_read);
        let s = self.stream(topic, rule, now);
        let start = match since {
            Some(n) => s.pubs.partition_point(|r| r.offset <= n),
            None => s.pubs.len().saturating_sub(limit),
        };
        let pubs = s
            .pubs
            .iter()
            .skip(start)
            .take(limit)
            .map(|r| {
                let payload = payload_of(&r.frame);
                let (at, len) = (r.data.0 as usize, r.data.1 as usize);
                (r.offset, payload.slice(at..at + len))
            })
            .collect();
        Read {
            epoch: s.epoch.clone(),
            top: s.top,
            pubs,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        crate::budget::give_back(&self.held, self.mine);
    }
}

/// Drops a stream's oldest publication; returns what it was charged.
fn pop(s: &mut Stream) -> usize {
    match s.pubs.pop_front() {
        Some(r) => {
            s.bytes -= r.frame.len();
            r.cost()
        }
        None => 0,
    }
}

/// The frame of a publication with its offset, and where its data lies in the payload.
fn encode(topic: &str, offset: u64, data: Raw<'_>) -> (Bytes, (u32, u32)) {
    let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + 64 + topic.len() + data.get().len());
    buf.resize(MAX_SERVER_HEADER, 0);
    let at = protocol::message_with_offset(&mut buf, topic, offset, data) - MAX_SERVER_HEADER;
    let payload_len = buf.len() - MAX_SERVER_HEADER;
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = codec::write_header(&mut header, Kind::Text, payload_len);
    let start = MAX_SERVER_HEADER - n;
    buf[start..MAX_SERVER_HEADER].copy_from_slice(&header[..n]);
    let frame = Bytes::from(buf).slice(start..);
    (frame, (at as u32, data.get().len() as u32))
}

/// A server frame's payload (server frames are unmasked).
fn payload_of(frame: &Bytes) -> Bytes {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(header..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rules: &[&str]) -> Limits {
        let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        Limits {
            rules: Arc::new(Rules::parse(&rules).unwrap()),
            topic_max_bytes: 1 << 20,
            max_bytes: 64 << 20,
            max_recover: 1000,
            max_read: 100,
        }
    }

    fn store(l: Limits) -> (Store, Arc<AtomicUsize>) {
        let held = Arc::new(AtomicUsize::new(0));
        (Store::new(l, held.clone()), held)
    }

    fn raw(s: &str) -> Raw<'_> {
        Raw::new(s).unwrap()
    }

    fn text(frame: &Bytes) -> String {
        String::from_utf8(payload_of(frame).to_vec()).unwrap()
    }

    #[test]
    fn offsets_count_from_one_and_frames_carry_them() {
        let (mut st, _) = store(limits(&["t.>:10:60"]));
        let t: Arc<str> = "t.a".into();
        let (o1, e1, f1) = st.publish(&t, 0, raw("{\"n\":1}"), 0);
        let (o2, e2, f2) = st.publish(&t, 0, raw("\"two\""), 0);
        assert_eq!((o1, o2), (1, 2));
        assert_eq!(e1, e2);
        assert_eq!(
            text(&f1),
            r#"{"op":"message","topic":"t.a","offset":1,"data":{"n":1}}"#
        );
        assert_eq!(
            text(&f2),
            r#"{"op":"message","topic":"t.a","offset":2,"data":"two"}"#
        );
        let r = st.read(&t, 0, None, 10, 0);
        let got: Vec<(u64, String)> = r
            .pubs
            .iter()
            .map(|(o, d)| (*o, String::from_utf8(d.to_vec()).unwrap()))
            .collect();
        assert_eq!(got, vec![(1, "{\"n\":1}".into()), (2, "\"two\"".into())]);
        assert_eq!((r.top, &*r.epoch), (2, &*e1));
    }

    #[test]
    fn a_recovery_gets_exactly_what_followed_its_offset_or_nothing() {
        let (mut st, _) = store(limits(&["t:5:60"]));
        let t: Arc<str> = "t".into();
        let epoch = st.position(&t, 0, None, 0).epoch;
        for i in 1..=8 {
            st.publish(&t, 0, raw(&i.to_string()), 0);
        }
        // Retained: 4..=8.
        let mut at = |offset| {
            st.position(
                &t,
                0,
                Some(Since {
                    epoch: &epoch,
                    offset,
                }),
                0,
            )
            .frames
            .map(|f| f.iter().map(text).collect::<Vec<_>>())
        };
        let from3 = at(3).unwrap();
        assert_eq!(from3.len(), 5);
        assert!(from3[0].contains("\"offset\":4,"), "{from3:?}");
        assert!(from3[4].contains("\"offset\":8,"));
        assert_eq!(at(8).unwrap().len(), 0, "nothing missed");
        assert_eq!(at(2), None, "offset 3 was trimmed");
        assert_eq!(at(9), None, "ahead of the top");
        let other = st.position(
            &t,
            0,
            Some(Since {
                epoch: "0000",
                offset: 7,
            }),
            0,
        );
        assert!(other.frames.is_none(), "another epoch");
        assert_eq!((other.top, other.epoch), (8, epoch));
    }

    #[test]
    fn a_recovery_too_far_behind_is_refused() {
        let mut l = limits(&["t:100:60"]);
        l.max_recover = 3;
        let (mut st, _) = store(l);
        let t: Arc<str> = "t".into();
        let epoch = st.position(&t, 0, None, 0).epoch;
        for i in 1..=10 {
            st.publish(&t, 0, raw(&i.to_string()), 0);
        }
        let since = |offset| {
            Some(Since {
                epoch: &epoch,
                offset,
            })
        };
        assert!(st.position(&t, 0, since(6), 0).frames.is_none());
        assert_eq!(st.position(&t, 0, since(7), 0).frames.unwrap().len(), 3);
    }

    #[test]
    fn reads_page_from_since_or_take_the_newest() {
        let (mut st, _) = store(limits(&["t:100:60"]));
        let t: Arc<str> = "t".into();
        for i in 1..=20 {
            st.publish(&t, 0, raw(&i.to_string()), 0);
        }
        let offsets = |r: Read| r.pubs.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(offsets(st.read(&t, 0, Some(5), 3, 0)), vec![6, 7, 8]);
        assert_eq!(offsets(st.read(&t, 0, None, 3, 0)), vec![18, 19, 20]);
        assert_eq!(offsets(st.read(&t, 0, Some(20), 3, 0)), Vec::<u64>::new());
        assert_eq!(st.read(&t, 0, Some(0), 1000, 0).pubs.len(), 20);
    }

    #[test]
    fn bounds_per_topic_trim_the_oldest_and_are_counted() {
        let mut l = limits(&["t:3:60", "b:1000:60"]);
        let big = format!("\"{}\"", "x".repeat(300));
        let frame_len = encode("b", 1, raw(&big)).0.len();
        l.topic_max_bytes = 3 * frame_len + frame_len / 2;
        let (mut st, held) = store(l);
        let (t, b): (Arc<str>, Arc<str>) = ("t".into(), "b".into());
        for i in 1..=5 {
            st.publish(&t, 0, raw(&i.to_string()), 0);
        }
        assert_eq!(st.trimmed.count, 2);
        assert_eq!(st.read(&t, 0, Some(0), 10, 0).pubs.len(), 3);
        for _ in 0..10 {
            st.publish(&b, 1, raw(&big), 0);
        }
        let kept = st.read(&b, 1, Some(0), 100, 0).pubs.len();
        assert_eq!(kept, 3, "three frames fit in three and a half");
        assert_eq!(st.trimmed.topic_bytes, 7);
        assert_eq!(held.load(Relaxed), st.bytes());
    }

    #[test]
    fn the_budget_of_all_history_trims_the_oldest_first() {
        let mut l = limits(&["t.*:1000:60"]);
        let frame_cost = RETAINED_OVERHEAD + 60;
        l.max_bytes = 2 * STREAM_OVERHEAD + 20 * frame_cost;
        let (mut st, held) = store(l.clone());
        let (a, b): (Arc<str>, Arc<str>) = ("t.a".into(), "t.b".into());
        for i in 0..15 {
            st.publish(&a, 0, raw(&format!("\"{i:030}\"")), i);
        }
        for i in 0..15 {
            st.publish(&b, 0, raw(&format!("\"{i:030}\"")), 100 + i);
        }
        assert!(held.load(Relaxed) <= l.max_bytes, "{}", held.load(Relaxed));
        assert!(st.trimmed.global_bytes > 0);
        // The older topic gave everything it had before the newer one gave anything.
        let (ka, kb) = (
            st.read(&a, 0, Some(0), 100, 0).pubs.len(),
            st.read(&b, 0, Some(0), 100, 0).pubs.len(),
        );
        assert!(ka < 15 && (kb == 15 || ka == 0), "a kept {ka}, b kept {kb}");
    }

    #[test]
    fn expired_publications_leave_and_then_the_stream_with_its_epoch() {
        let (mut st, held) = store(limits(&["t:100:10"]));
        let t: Arc<str> = "t".into();
        let (_, epoch, _) = st.publish(&t, 0, raw("1"), 0);
        st.publish(&t, 0, raw("2"), 5);
        st.sweep(10);
        assert_eq!(st.trimmed.expired, 1);
        assert_eq!(st.read(&t, 0, Some(0), 10, 10).pubs.len(), 1);
        st.sweep(15);
        assert_eq!(st.topics(), 0, "empty and untouched for its TTL");
        assert_eq!(held.load(Relaxed), 0, "everything given back");
        let (o, e2, _) = st.publish(&t, 0, raw("3"), 16);
        assert_eq!(o, 1, "a new stream starts again");
        assert_ne!(e2, epoch, "under a new epoch");
    }

    #[test]
    fn dropping_a_store_gives_its_bytes_back() {
        let held = Arc::new(AtomicUsize::new(0));
        {
            let mut st = Store::new(limits(&["t:10:10"]), held.clone());
            st.publish(&"t".into(), 0, raw("1"), 0);
            assert!(held.load(Relaxed) > 0);
        }
        assert_eq!(held.load(Relaxed), 0);
    }
}
