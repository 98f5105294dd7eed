//! Topic history on a worker: publishing to a history topic through its owner, subscribing
//! (with or without `recover`) and reading through it, and carrying out the owner's answers
//! at the one point of a loop turn where that is exact. docs/history.md has the design; in
//! short, the owner numbers a topic's publications and sends each to every worker before it
//! answers anyone, and its answers travel on the same FIFO queues, so a subscriber's worker
//! that takes an answer has already taken every publication up to the answer's top. It
//! delivers this turn's deliveries, then the answer's replay, then subscribes the connection;
//! deliveries of that topic taken after the answer wait for the next turn. Runs on workers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::conns::Conns;
use super::fanout::Fanout;
use super::handle::Msg;
use crate::broadcast::{Port, Sent};
use crate::delivery::{Delivery, Target};
use crate::history::owner_of;
use crate::history::stream::{Limits, Position, Read, Since, Store};
use crate::protocol::{self, Raw, Recover};
use crate::stats::bump;

/// Requests (subscribes to history topics, history reads) one connection may have waiting
/// for their owners' answers; past it a request is refused with `limit`.
pub const MAX_WAITING: usize = 16;

/// A publication on its way to its topic's owner: `data` is the JSON value as published.
/// From a worker it counts against the cross-worker budget; from outside (`POST /publish`)
/// against the outside one, and `done` learns its offset and epoch.
#[derive(Debug)]
pub struct Publish {
    pub topic: Arc<str>,
    pub rule: u16,
    pub data: Bytes,
    pub outside: bool,
    pub done: Option<tokio::sync::oneshot::Sender<(u64, Arc<str>)>>,
}

/// A question for a topic's owner, from connection `key` of worker `from`.
#[derive(Debug)]
pub struct Ask {
    pub topic: Arc<str>,
    pub rule: u16,
    pub from: usize,
    pub key: usize,
    pub req: u64,
    pub what: Question,
}

#[derive(Debug)]
pub enum Question {
    /// A subscribe: the stream's position, and the replay after `since` if given.
    Subscribe { since: Option<(Box<str>, u64)> },
    /// A history read.
    Read { since: Option<u64>, limit: usize },
}

/// The owner's answer, for connection `key`'s request `req`.
#[derive(Debug)]
pub struct Answer {
    pub topic: Arc<str>,
    pub key: usize,
    pub req: u64,
    pub what: Answered,
}

#[derive(Debug)]
pub enum Answered {
    Position(Position),
    Read(Read),
}

/// A request waiting for its answer, kept on the asking worker.
#[derive(Debug)]
struct Waiting {
    req: u64,
    topic: Arc<str>,
    /// The request's `id`, as JSON text.
    id: Option<Box<str>>,
    /// A subscribe that asked to recover (its reply says whether it did).
    recover: bool,
}

/// A worker's part in topic history.
#[derive(Debug)]
pub(super) struct History {
    limits: Limits,
    me: usize,
    workers: usize,
    /// The streams of the topics this worker owns.
    store: Store,
    next_req: u64,
    /// Requests waiting, by connection.
    waiting: HashMap<usize, Vec<Waiting>>,
    /// This turn's answers, carried out after its deliveries.
    answers: Vec<Answer>,
    /// This turn's questions about topics this worker owns, answered then too.
    local: Vec<Ask>,
    /// Topics with an answer this turn: their deliveries taken after it wait for the next.
    late: Vec<Arc<str>>,
    held_back: Vec<Delivery>,
    /// An answer taken off the queue after one for the same topic in the same turn: the
    /// deliveries between the two are owed to the first subscriber and not to the second, so
    /// it waits for the next turn (and the queue with it, see [`History::on_answer`]).
    carried: Option<Answer>,
    last_sweep: u32,
    /// What [`History::report`] last told the stats.
    reported: (usize, usize, crate::history::stream::Trimmed),
}

impl History {
    pub(super) fn new(limits: Limits, bus: &Port) -> History {
        let (me, workers) = bus.me();
        History {
            store: Store::new(limits.clone(), bus.history_budget()),
            limits,
            me,
            workers,
            next_req: 0,
            waiting: HashMap::new(),
            answers: Vec::new(),
            local: Vec::new(),
            late: Vec::new(),
            held_back: Vec::new(),
            carried: None,
            last_sweep: 0,
            reported: Default::default(),
        }
    }

    pub(super) fn on(&self) -> bool {
        self.limits.on()
    }

    pub(super) fn rules(&self) -> &crate::history::Rules {
        &self.limits.rules
    }

    /// Brings the worker's history figures up to date (once a second, after the sweep).
    fn report(&mut self, stats: &crate::stats::Stats) {
        use crate::stats::gauge;
        let (topics, bytes) = (self.store.topics(), self.store.bytes());
        gauge(
            &stats.history_topics,
            topics as i64 - self.reported.0 as i64,
        );
        gauge(&stats.history_bytes, bytes as i64 - self.reported.1 as i64);
        let (t, r) = (self.store.trimmed, self.reported.2);
        bump(&stats.history_trimmed_count, t.count - r.count);
        bump(
            &stats.history_trimmed_topic_bytes,
            t.topic_bytes - r.topic_bytes,
        );
        bump(
            &stats.history_trimmed_global_bytes,
            t.global_bytes - r.global_bytes,
        );
        bump(&stats.history_expired, t.expired - r.expired);
        self.reported = (topics, bytes, t);
    }

    fn owner(&self, topic: &str) -> usize {
        owner_of(topic, self.workers)
    }

    /// A publish to a history topic made on this worker: numbered here if this worker owns
    /// the topic (returns what it holds in the other workers' queues), else sent to its owner.
    pub(super) fn publish(
        &mut self,
        bus: &mut Port,
        fanout: &mut Fanout,
        topic: Arc<str>,
        rule: u16,
        data: Raw<'_>,
        now: u32,
    ) -> Option<Sent> {
        let owner = self.owner(&topic);
        if owner == self.me {
            return self.publish_owned(bus, fanout, topic, rule, data, now).0;
        }
        let data = Bytes::copy_from_slice(data.get().as_bytes());
        let bytes = data.len();
        let msg = Msg::HistoryPublish(Box::new(Publish {
            topic,
            rule,
            data,
            outside: false,
            done: None,
        }));
        bus.send_to(owner, msg, bytes);
        None
    }

    fn publish_owned(
        &mut self,
        bus: &mut Port,
        fanout: &mut Fanout,
        topic: Arc<str>,
        rule: u16,
        data: Raw<'_>,
        now: u32,
    ) -> (Option<Sent>, u64, Arc<str>) {
        let (offset, epoch, frame) = self.store.publish(&topic, rule, data, now);
        let d = Delivery {
            target: Target::Topic(topic),
            frame,
        };
        (bus.publish_from(d, &mut fanout.pending), offset, epoch)
    }

    /// A publication sent to this worker, the topic's owner (by another worker or from
    /// outside).
    pub(super) fn on_publish(&mut self, bus: &mut Port, fanout: &mut Fanout, p: Publish, now: u32) {
        if p.outside {
            bus.outside_returned(p.data.len());
        } else {
            bus.cross_returned(p.data.len());
        }
        // The sender checked it was one JSON value; it is passed on as it came.
        let Ok(text) = std::str::from_utf8(&p.data) else {
            return;
        };
        let (_, offset, epoch) =
            self.publish_owned(bus, fanout, p.topic, p.rule, Raw::trusted(text), now);
        if let Some(done) = p.done {
            let _ = done.send((offset, epoch));
        }
    }

    /// Whether `key` may ask one more question; if so, records it and returns its number.
    fn wait(
        &mut self,
        key: usize,
        topic: &Arc<str>,
        id: Option<Raw<'_>>,
        recover: bool,
    ) -> Option<u64> {
        let list = self.waiting.entry(key).or_default();
        if list.len() >= MAX_WAITING {
            return None;
        }
        self.next_req += 1;
        list.push(Waiting {
            req: self.next_req,
            topic: topic.clone(),
            id: id.map(|r| r.get().into()),
            recover,
        });
        Some(self.next_req)
    }

    fn ask(&mut self, bus: &Port, ask: Ask) {
        let owner = self.owner(&ask.topic);
        if owner == self.me {
            self.local.push(ask);
        } else {
            bus.send_to(owner, Msg::HistoryAsk(Box::new(ask)), 0);
        }
    }

    /// A subscribe to a history topic: asks its owner where the stream stands (and for the
    /// replay after `recover`); the connection is subscribed, and replied to, when the
    /// answer is carried out. Returns false if the connection has too many questions out.
    // The request's parts, as the handler gives them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn subscribe(
        &mut self,
        conns: &mut Conns,
        bus: &Port,
        key: usize,
        topic: &str,
        rule: u16,
        recover: Option<Recover<'_>>,
        id: Option<Raw<'_>>,
    ) -> bool {
        self.reap(conns);
        let topic = conns.topics.name(topic).unwrap_or_else(|| Arc::from(topic));
        let Some(req) = self.wait(key, &topic, id, recover.is_some()) else {
            return false;
        };
        let since = recover.map(|r| (Box::from(&*r.epoch), r.offset));
        let ask = Ask {
            topic,
            rule,
            from: self.me,
            key,
            req,
            what: Question::Subscribe { since },
        };
        self.ask(bus, ask);
        true
    }

    /// A history read: asks the owner; the reply is sent when its answer is carried out.
    // The request's parts, as the handler gives them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read(
        &mut self,
        conns: &mut Conns,
        bus: &Port,
        key: usize,
        topic: &str,
        rule: u16,
        since: Option<u64>,
        limit: usize,
        id: Option<Raw<'_>>,
    ) -> bool {
        self.reap(conns);
        let topic: Arc<str> = Arc::from(topic);
        let Some(req) = self.wait(key, &topic, id, false) else {
            return false;
        };
        let ask = Ask {
            topic,
            rule,
            from: self.me,
            key,
            req,
            what: Question::Read { since, limit },
        };
        self.ask(bus, ask);
        true
    }

    /// The answer to a question about a topic this worker owns.
    fn answer(&mut self, ask: Ask, now: u32) -> Answer {
        let what = match &ask.what {
            Question::Subscribe { since } => {
                let since = since.as_ref().map(|(epoch, offset)| Since {
                    epoch,
                    offset: *offset,
                });
                Answered::Position(self.store.position(&ask.topic, ask.rule, since, now))
            }
            Question::Read { since, limit } => {
                Answered::Read(self.store.read(&ask.topic, ask.rule, *since, *limit, now))
            }
        };
        Answer {
            topic: ask.topic,
            key: ask.key,
            req: ask.req,
            what,
        }
    }

    /// A question from another worker about a topic this one owns: answered at once, on
    /// the asker's queue, behind every publication of the topic sent to it so far.
    pub(super) fn on_ask(&mut self, bus: &Port, ask: Ask, now: u32) {
        let from = ask.from;
        let answer = self.answer(ask, now);
        bus.send_to(from, Msg::HistoryAnswer(Box::new(answer)), 0);
    }

    /// An answer from a topic's owner: carried out after this turn's deliveries. Returns
    /// false if it must wait for the next turn, because one for the same topic came earlier
    /// in this one: the caller then stops taking from the queue for this turn, so that
    /// nothing behind the answer is taken before it.
    pub(super) fn on_answer(&mut self, answer: Answer) -> bool {
        if self.late.iter().any(|t| **t == *answer.topic) {
            debug_assert!(
                self.carried.is_none(),
                "the queue stops behind a carried answer"
            );
            self.carried = Some(answer);
            return false;
        }
        self.late.push(answer.topic.clone());
        self.answers.push(answer);
        true
    }

    /// At the start of a turn's take from the queue: the answer carried from the last one,
    /// which was next in line.
    pub(super) fn take_carried(&mut self) {
        if let Some(a) = self.carried.take() {
            self.on_answer(a);
        }
    }

    /// A delivery taken off the queue: `None` if it must wait for the next turn (its topic
    /// had an answer earlier in this one), else the delivery back.
    pub(super) fn hold_if_late(&mut self, d: Delivery) -> Option<Delivery> {
        if let Target::Topic(t) = &d.target {
            if !self.late.is_empty() && self.late.iter().any(|l| **l == **t) {
                self.held_back.push(d);
                return None;
            }
        }
        Some(d)
    }

    /// Whether anything waits for [`History::after_deliver`] this turn.
    pub(super) fn busy(&self) -> bool {
        !self.answers.is_empty()
            || !self.local.is_empty()
            || !self.held_back.is_empty()
            || self.carried.is_some()
    }

    /// After the turn's deliveries: answers the questions about topics this worker owns,
    /// carries out every answer (the replay, then the reply, then the subscription), and
    /// puts the deliveries that waited first in line for the next turn. Sweeps expired
    /// history once a second.
    pub(super) fn after_deliver(&mut self, conns: &mut Conns, fanout: &mut Fanout, now: u32) {
        self.reap(conns);
        if now != self.last_sweep && self.on() {
            self.last_sweep = now;
            self.store.sweep(now);
            self.report(&conns.stats);
        }
        if !self.busy() {
            return;
        }
        for ask in std::mem::take(&mut self.local) {
            let answer = self.answer(ask, now);
            self.answers.push(answer);
        }
        let answers = std::mem::take(&mut self.answers);
        let mut out = Vec::new();
        for answer in answers {
            let Some(w) = self.take_waiting(answer.key, answer.req) else {
                continue; // the connection left, or unsubscribed meanwhile
            };
            let key = answer.key;
            // The replay first, through the connection's outbound bound (a slow consumer
            // may be closed by it: then there is no one left to reply to).
            if let Answered::Position(Position {
                frames: Some(frames),
                ..
            }) = &answer.what
            {
                fanout.deliver_to(conns, key, frames);
            }
            if !conns.slab.contains(key) {
                continue;
            }
            out.clear();
            let id = w.id.as_deref().and_then(Raw::new);
            match answer.what {
                Answered::Position(p) => {
                    let recovered = w.recover.then_some(p.frames.is_some());
                    if recovered == Some(true) {
                        bump(&conns.stats.history_recovered, 1);
                    } else if recovered == Some(false) {
                        bump(&conns.stats.history_not_recovered, 1);
                    }
                    protocol::history_subscribed(&mut out, id, &p.epoch, p.top, recovered);
                    log::debug!(
                        "worker {}: conn {key} subscribed to {:?} at {} ({} replayed)",
                        self.me,
                        answer.topic,
                        p.top,
                        p.frames.as_ref().map_or(0, |f| f.len())
                    );
                    conns.subscribe(key, &answer.topic);
                }
                Answered::Read(r) => protocol::history(&mut out, id, &r.epoch, r.top, &r.pubs),
            }
            bump(&conns.stats.messages_out, 1);
            conns.send_frame(key, crate::codec::Kind::Text, &out);
        }
        self.late.clear();
        fanout.pending.append(&mut self.held_back);
    }

    /// Forgets what connections that have left since the last look had asked, before a key
    /// of theirs can be another connection's question or answer.
    fn reap(&mut self, conns: &mut Conns) {
        for key in conns.gone.drain(..) {
            self.waiting.remove(&key);
        }
    }

    fn take_waiting(&mut self, key: usize, req: u64) -> Option<Waiting> {
        let list = self.waiting.get_mut(&key)?;
        let at = list.iter().position(|w| w.req == req)?;
        let w = list.swap_remove(at);
        if list.is_empty() {
            self.waiting.remove(&key);
        }
        Some(w)
    }

    /// The connection unsubscribed from `topic`: a subscribe still waiting for its answer
    /// is forgotten (the answer then finds nothing to carry out).
    pub(super) fn cancel(&mut self, key: usize, topic: &str) {
        if let Some(list) = self.waiting.get_mut(&key) {
            list.retain(|w| *w.topic != *topic);
            if list.is_empty() {
                self.waiting.remove(&key);
            }
        }
    }
}
