//! What the state machine's events and the handler's decisions make the worker do: answer,
//! subscribe, publish, close. Runs on the connection's worker.
//!
//! Below the reading part, above delivery (a publish joins this turn's deliveries) and the
//! connections (everything sent goes through their output door).

use std::sync::Arc;

use super::conns::Conns;
use super::fanout::Fanout;
use super::history::History;
use super::tokens::Tokens;
use crate::broadcast::{self, Port, Target};
use crate::codec::Kind;
use crate::config::RatePolicy;
use crate::conn::deflate::Inflater;
use crate::conn::session::Rates;
use crate::conn::{CloseReason, Event, StandingKind, NEVER};
use crate::console::{self, Console};
use crate::handler::{self, Access, Caller, Effect, Reply};
use crate::handshake::{self, Endpoint, Page};
use crate::message::MessageKind;
use crate::protocol::Raw;
use crate::stats::{self, bump, gauge};

/// Capacity of the inflate buffer kept between messages; after a larger message it is freed.
const INFLATED_KEEP: usize = 256 * 1024;

/// The part of a worker that carries out what a connection's input calls for.
pub(super) struct Effects {
    /// Every worker's queue, for publishes.
    pub(super) bus: Port,
    /// The console's figures, served on `/stats.json`.
    console: Arc<Console>,
    /// Where JSON replies are built before being framed.
    scratch: Vec<u8>,
    /// permessage-deflate: the worker's one inflater, reset per message, and where a
    /// message is inflated to (up to --max-message-size; shrunk after a large one).
    inflater: Inflater,
    inflated: Vec<u8>,
    /// The connection being handled has just published (see `Reader`'s hold for the
    /// other workers' queues).
    pub(super) published: bool,
    /// Tokens and the sessions they establish.
    pub(super) tokens: Tokens,
    /// The connection being handled went over its rate limit under `hold`: the reader holds
    /// it after this message.
    pub(super) rate_held: bool,
    /// Topic history: the streams this worker owns and the requests it waits on.
    pub(super) history: History,
}

impl Effects {
    pub(super) fn new(
        bus: Port,
        console: Arc<Console>,
        tokens: Tokens,
        history: crate::history::stream::Limits,
    ) -> Self {
        Effects {
            history: History::new(history, &bus),
            bus,
            console,
            scratch: Vec::with_capacity(1024),
            inflater: Inflater::default(),
            inflated: Vec::new(),
            published: false,
            tokens,
            rate_held: false,
        }
    }

    /// Carries out one event of the connection's state machine.
    pub(super) fn on_event(
        &mut self,
        conns: &mut Conns,
        fanout: &mut Fanout,
        key: usize,
        event: Event<'_>,
    ) {
        let now = conns.now;
        match event {
            Event::NeedMore | Event::Discarded => {}
            Event::Upgraded {
                response,
                endpoint,
                credential,
            } => {
                if let Err(refused) = self.tokens.admit(conns, key, endpoint, credential) {
                    log::debug!(
                        "worker {}: conn {key} upgrade refused for its token: {}",
                        conns.index,
                        refused.status
                    );
                    conns.slab[key].machine.refuse_upgrade();
                    stats::handshake_failed(&conns.stats, refused.status);
                    bump(&conns.stats.auth_upgrades_refused, 1);
                    conns.send_raw(key, &refused.response);
                    conns.enter_closing(key);
                    return;
                }
                let ping_at = conns.after(conns.cfg.ping_interval);
                let clock = conns.clock();
                let conn = &mut conns.slab[key];
                conn.last_rx = now;
                // The session's own deadline (a connect deadline, an expiry) may come first.
                let lapses = conn.session.as_ref().map_or(NEVER, |s| s.next_due(&clock));
                conn.deadline = ping_at.min(lapses);
                let (tls, deflate) = (conn.transport.is_tls(), conn.machine.deflate().is_some());
                gauge(&conns.stats.websockets, 1);
                conns.send_raw(key, &response);
                bump(&conns.stats.handshakes, 1);
                if tls {
                    bump(&conns.stats.tls_upgrades, 1);
                }
                if deflate {
                    bump(&conns.stats.deflate_upgrades, 1);
                }
            }
            Event::Refused {
                response,
                status,
                reason,
            } => {
                log::debug!(
                    "worker {}: conn {key} handshake refused: {reason}",
                    conns.index
                );
                stats::handshake_failed(&conns.stats, status);
                conns.send_raw(key, &response);
                conns.enter_closing(key);
            }
            Event::Page(page) => {
                let r = self.page(&conns.stats, page);
                conns.send_raw(key, &r);
                conns.enter_closing(key);
            }
            Event::Message { kind, data } => {
                conns.slab[key].last_rx = now;
                if self.within_rate(conns, key, data.len()) {
                    self.on_message(conns, fanout, key, kind, data);
                }
            }
            Event::Compressed { kind, data } => {
                conns.slab[key].last_rx = now;
                if self.within_rate(conns, key, data.len()) {
                    self.on_compressed(conns, fanout, key, kind, data);
                }
            }
            Event::Assembled(whole) => {
                conns.slab[key].last_rx = now;
                if !self.within_rate(conns, key, whole.data.len()) {
                    return;
                }
                if whole.compressed {
                    self.on_compressed(conns, fanout, key, whole.kind, &whole.data);
                } else {
                    self.on_message(conns, fanout, key, whole.kind, &whole.data);
                }
            }
            Event::Fragment | Event::Pong => conns.slab[key].last_rx = now,
            Event::Ping(payload) => {
                conns.slab[key].last_rx = now;
                conns.send_frame(key, Kind::Pong, payload);
            }
            Event::PeerClose(code) => {
                conns.slab[key].last_rx = now;
                conns.close_with(key, CloseReason::Answer(code));
            }
            Event::Fail(why) => {
                log::debug!(
                    "worker {}: conn {key} failed with {}: {why}",
                    conns.index,
                    why.code()
                );
                conns.close_with(key, why);
            }
        }
    }

    /// The connection's rate limit on a `len`-byte message as it arrived: true to handle the
    /// message. Under `hold` it always is, and `rate_held` tells the reader to hold the
    /// connection after it if its buckets ran dry; `refuse` drops it with an error reply
    /// (`id` null: the message is not even read), `close` closes with 1008.
    fn within_rate(&mut self, conns: &mut Conns, key: usize, len: usize) -> bool {
        let limits = conns.cfg.rate;
        if !limits.on() {
            return true;
        }
        let (now_ms, rates) = (conns.now_ms, Rates::of(&limits));
        let conn = &mut conns.slab[key];
        let json = conn.is_json();
        let Some(b) = conn.session.as_mut().and_then(|s| s.rate()) else {
            return true;
        };
        match limits.policy {
            RatePolicy::Hold => {
                if !b.take_then_ready(&rates, now_ms, len) {
                    self.rate_held = true;
                }
                true
            }
            RatePolicy::Refuse => {
                if b.try_take(&rates, now_ms, len) {
                    return true;
                }
                bump(&conns.stats.rate_limit_refusals, 1);
                if json {
                    let mut out = std::mem::take(&mut self.scratch);
                    out.clear();
                    let msg = "rate limit exceeded: message dropped";
                    crate::protocol::error(&mut out, None, "rate_limited", msg);
                    bump(&conns.stats.messages_out, 1);
                    conns.send_frame(key, Kind::Text, &out);
                    self.scratch = out;
                }
                false
            }
            RatePolicy::Close => {
                if b.try_take(&rates, now_ms, len) {
                    return true;
                }
                bump(&conns.stats.rate_limit_closes, 1);
                conns.close_with(key, CloseReason::RateLimited);
                false
            }
        }
    }

    /// The answer to a plain HTTP request for one of the worker's pages.
    fn page(&self, stats: &stats::Stats, page: Page) -> Vec<u8> {
        match page {
            Page::Health => {
                bump(&stats.health_checks, 1);
                // Local delivery works whatever Redis does: still 200, but say so.
                let body = match self.bus.backplane() {
                    Some(b) if !b.is_up() => "ok; backplane down",
                    _ => "ok",
                };
                handshake::http_response(200, "OK", "", body)
            }
            Page::Console => {
                bump(&stats.console_requests, 1);
                let html = "text/html; charset=utf-8";
                handshake::http_ok(html, console::PAGE_HEADERS, console::PAGE)
            }
            Page::Stats => {
                bump(&stats.console_requests, 1);
                handshake::http_ok("application/json", "", &self.console.stats())
            }
        }
    }

    /// A compressed message: inflated through the worker's inflater into its scratch, then
    /// handled as any other; what does not inflate closes the connection (1009, 1007).
    fn on_compressed(
        &mut self,
        conns: &mut Conns,
        fanout: &mut Fanout,
        key: usize,
        kind: MessageKind,
        data: &[u8],
    ) {
        let mut plain = std::mem::take(&mut self.inflated);
        let conn = &mut conns.slab[key];
        match conn
            .machine
            .inflate(&mut self.inflater, kind, data, &conns.cfg, &mut plain)
        {
            Ok(()) => {
                bump(&conns.stats.messages_inflated, 1);
                self.on_message(conns, fanout, key, kind, &plain);
            }
            Err(why) => {
                log::debug!(
                    "worker {}: conn {key} failed with {}: {why}",
                    conns.index,
                    why.code()
                );
                conns.close_with(key, why);
            }
        }
        // Keep the buffer for the next message, unless a large one left it large.
        if plain.capacity() > INFLATED_KEEP {
            plain = Vec::new();
        }
        self.inflated = plain;
    }

    fn on_message(
        &mut self,
        conns: &mut Conns,
        fanout: &mut Fanout,
        key: usize,
        kind: MessageKind,
        data: &[u8],
    ) {
        bump(&conns.stats.messages_in, 1);
        let crate::conn::Phase::Open(endpoint) = conns.slab[key].machine.phase() else {
            return;
        };
        match (endpoint, kind) {
            (Endpoint::Echo, _) => {
                let k = if kind == MessageKind::Text {
                    Kind::Text
                } else {
                    Kind::Binary
                };
                bump(&conns.stats.messages_out, 1);
                conns.send_frame(key, k, data);
            }
            (Endpoint::Json, MessageKind::Binary) => {
                let mut out = std::mem::take(&mut self.scratch);
                let reply = handler::binary(&mut out);
                send_reply(conns, key, reply, &out);
                self.scratch = out;
            }
            // SAFETY: text messages were checked to be UTF-8 by the state machine.
            (Endpoint::Json, MessageKind::Text) => self.on_request(conns, fanout, key, unsafe {
                std::str::from_utf8_unchecked(data)
            }),
        }
    }

    /// A JSON request: the handler decides, the worker carries out its effect and sends its
    /// reply.
    fn on_request(&mut self, conns: &mut Conns, fanout: &mut Fanout, key: usize, text: &str) {
        let mut out = std::mem::take(&mut self.scratch);
        let conn = &conns.slab[key];
        let anonymous = self.tokens.anonymous();
        let access = match conn.session.as_deref().map(|s| (s.kind(), s)) {
            None | Some((StandingKind::Open, _)) => Access::Open,
            Some((StandingKind::Pending, _)) => Access::Pending,
            Some((StandingKind::Anonymous, s)) => Access::Granted {
                grant: anonymous.expect("an anonymous connection has auth on"),
                sub: "",
                anonymous: true,
                topic_grants: s.topic_grants(),
            },
            Some((StandingKind::User, s)) => {
                let v = s.user().expect("a user's session has its user");
                Access::Granted {
                    grant: &v.grant,
                    sub: v.sub(),
                    anonymous: false,
                    topic_grants: s.topic_grants(),
                }
            }
        };
        let caller = Caller {
            subs: &conn.subs,
            max_subscriptions: conns.cfg.max_subscriptions,
            access,
            history: self.history.rules(),
        };
        let (reply, effect) = handler::handle(text, caller, &mut out);
        match effect {
            Effect::None => {}
            Effect::Subscribe(topic) => {
                conns.subscribe(key, &topic);
            }
            Effect::Unsubscribe(topic) => {
                if self.history.on() {
                    self.history.cancel(key, &topic);
                }
                conns.unsubscribe(key, &topic)
            }
            Effect::HistorySubscribe {
                id,
                topic,
                rule,
                recover,
            } => {
                if !self
                    .history
                    .subscribe(conns, &self.bus, key, &topic, rule, recover, id)
                {
                    too_many_waiting(conns, key, id, &mut out);
                }
            }
            Effect::History {
                id,
                topic,
                rule,
                since,
                limit,
            } => {
                if !self
                    .history
                    .read(conns, &self.bus, key, &topic, rule, since, limit, id)
                {
                    too_many_waiting(conns, key, id, &mut out);
                }
            }
            Effect::SubscribeWithToken {
                id,
                topic,
                token,
                recover,
            } => {
                let history = self
                    .history
                    .rules()
                    .find(&topic)
                    .map(|rule| (&mut self.history, &self.bus, rule, recover));
                self.tokens
                    .subscribe_with_token(conns, key, id, &topic, &token, history);
            }
            Effect::Connect { id, token } => self.tokens.connect(conns, key, id, token.as_deref()),
            Effect::Refresh { id, token } => self.tokens.refresh(conns, key, id, &token),
            Effect::Publish { topic, data } => {
                let name = conns
                    .topics
                    .name(&topic)
                    .unwrap_or_else(|| Arc::from(&*topic));
                let rule = self.history.rules().find(&name);
                self.publish(conns, fanout, key, Target::Topic(name), rule, data)
            }
            Effect::Broadcast(data) => self.publish(conns, fanout, key, Target::All, None, data),
        }
        send_reply(conns, key, reply, &out);
        self.scratch = out;
    }

    /// Encodes the message once and puts it on the bus: this worker's copy joins this turn's
    /// deliveries, the other workers' go through their queues, where they count against the
    /// publishing connection's share until taken. A topic that keeps history (`rule`) goes
    /// through its owner, which numbers it first.
    fn publish(
        &mut self,
        conns: &mut Conns,
        fanout: &mut Fanout,
        key: usize,
        target: Target,
        rule: Option<u16>,
        data: Raw<'_>,
    ) {
        bump(&conns.stats.publishes, 1);
        let sent = match (rule, target) {
            (Some(rule), Target::Topic(name)) => {
                let now = conns.now;
                self.history
                    .publish(&mut self.bus, fanout, name, rule, data, now)
            }
            (_, target) => {
                let d = broadcast::encode(target, data);
                self.bus.publish_from(d, &mut fanout.pending)
            }
        };
        if let Some(sent) = sent {
            conns.shares.charge(key, sent);
        }
        self.published = true;
    }
}

/// A history request over [`super::history::MAX_WAITING`]: refused with `limit`.
pub(super) fn too_many_waiting(
    conns: &mut Conns,
    key: usize,
    id: Option<Raw<'_>>,
    out: &mut Vec<u8>,
) {
    bump(&conns.stats.history_refused, 1);
    out.clear();
    let msg = format!(
        "{} history requests already waiting for their answers",
        super::history::MAX_WAITING
    );
    crate::protocol::error(out, id, "limit", &msg);
    bump(&conns.stats.messages_out, 1);
    conns.send_frame(key, Kind::Text, out);
    out.clear();
}

fn send_reply(conns: &mut Conns, key: usize, reply: Reply, json: &[u8]) {
    match reply {
        Reply::None => return,
        Reply::Sent => {}
        Reply::Refused => {
            bump(&conns.stats.bad_requests, 1);
            log::debug!(
                "worker {}: conn {key} refused: {}",
                conns.index,
                String::from_utf8_lossy(json)
            );
        }
        Reply::Denied(why) => {
            bump(&conns.stats.denials_by[why.index()], 1);
            log::debug!("worker {}: conn {key} denied: {}", conns.index, why.label());
        }
    }
    bump(&conns.stats.messages_out, 1);
    conns.send_frame(key, Kind::Text, json);
}
