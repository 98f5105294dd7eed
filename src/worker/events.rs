//! What the state machine's events and the handler's effects make the worker do: answer,
//! subscribe, publish, queue frames, close. Runs on the connection's worker.

use std::sync::Arc;

use thin_vec::ThinVec;

use super::timers::CLOSE_TIMEOUT;

/// Capacity of the inflate buffer kept between messages; after a larger message it is freed.
const INFLATED_KEEP: usize = 256 * 1024;
use super::Worker;
use crate::broadcast::{self, Target};
use crate::codec::{self, Kind};
use crate::conn::{CloseReason, Event, NEVER};
use crate::console;
use crate::handler::{self, Effect, Reply, Session};
use crate::handshake::{self, Endpoint, Page};
use crate::message::MessageKind;
use crate::outbound::CONTROL_ALLOWANCE;
use crate::protocol::Raw;
use crate::stats::{self, bump, gauge};

impl Worker {
    /// Carries out one event of the connection's state machine.
    pub(super) fn on_event(&mut self, key: usize, event: Event<'_>) {
        let now = self.now();
        match event {
            Event::NeedMore | Event::Discarded => {}
            Event::Upgraded { response, .. } => {
                self.conns[key].last_rx = now;
                self.conns[key].upgraded = true;
                gauge(&self.stats.websockets, 1);
                self.queue_raw(key, &response);
                let ping_at = now + self.cfg.ping_interval.as_secs() as u32;
                self.set_deadline(key, ping_at);
                bump(&self.stats.handshakes, 1);
                if self.conns[key].transport.is_tls() {
                    bump(&self.stats.tls_upgrades, 1);
                }
                if self.conns[key].machine.deflate().is_some() {
                    bump(&self.stats.deflate_upgrades, 1);
                }
            }
            Event::Refused {
                response,
                status,
                reason,
            } => {
                log::debug!(
                    "worker {}: conn {key} handshake refused: {reason}",
                    self.index
                );
                stats::handshake_failed(&self.stats, status);
                self.queue_raw(key, &response);
                self.enter_closing(key);
            }
            Event::Page(page) => {
                let r = match page {
                    Page::Health => {
                        bump(&self.stats.health_checks, 1);
                        // Local delivery works whatever Redis does: still 200, but say so.
                        let body = match self.bus.backplane() {
                            Some(b) if !b.is_up() => "ok; backplane down",
                            _ => "ok",
                        };
                        handshake::http_response(200, "OK", "", body)
                    }
                    Page::Console => {
                        bump(&self.stats.console_requests, 1);
                        let html = "text/html; charset=utf-8";
                        handshake::http_ok(html, console::PAGE_HEADERS, console::PAGE)
                    }
                    Page::Stats => {
                        bump(&self.stats.console_requests, 1);
                        handshake::http_ok("application/json", "", &self.console.stats())
                    }
                };
                self.queue_raw(key, &r);
                self.enter_closing(key);
            }
            Event::Message { kind, data } => {
                self.conns[key].last_rx = now;
                self.on_message(key, kind, data);
            }
            Event::Compressed { kind, data } => {
                self.conns[key].last_rx = now;
                self.on_compressed(key, kind, data);
            }
            Event::Assembled(whole) => {
                self.conns[key].last_rx = now;
                if whole.compressed {
                    self.on_compressed(key, whole.kind, &whole.data);
                } else {
                    self.on_message(key, whole.kind, &whole.data);
                }
            }
            Event::Fragment | Event::Pong => self.conns[key].last_rx = now,
            Event::Ping(payload) => {
                self.conns[key].last_rx = now;
                self.queue_frame(key, Kind::Pong, payload);
            }
            Event::PeerClose(code) => {
                self.conns[key].last_rx = now;
                self.close_with(key, CloseReason::Answer(code));
            }
            Event::Fail(why) => {
                log::debug!(
                    "worker {}: conn {key} failed with {}: {why}",
                    self.index,
                    why.code()
                );
                self.close_with(key, why);
            }
        }
    }

    /// A compressed message: inflated through the worker's inflater into its scratch, then
    /// handled as any other; what does not inflate closes the connection (1009, 1007).
    fn on_compressed(&mut self, key: usize, kind: MessageKind, data: &[u8]) {
        let mut plain = std::mem::take(&mut self.inflated);
        let conn = &mut self.conns[key];
        match conn
            .machine
            .inflate(&mut self.inflater, kind, data, &self.cfg, &mut plain)
        {
            Ok(()) => {
                bump(&self.stats.messages_inflated, 1);
                self.on_message(key, kind, &plain);
            }
            Err(why) => {
                log::debug!(
                    "worker {}: conn {key} failed with {}: {why}",
                    self.index,
                    why.code()
                );
                self.close_with(key, why);
            }
        }
        // Keep the buffer for the next message, unless a large one left it large.
        if plain.capacity() > INFLATED_KEEP {
            plain = Vec::new();
        }
        self.inflated = plain;
    }

    fn on_message(&mut self, key: usize, kind: MessageKind, data: &[u8]) {
        bump(&self.stats.messages_in, 1);
        let Some(endpoint) = self.endpoint(key) else {
            return;
        };
        match (endpoint, kind) {
            (Endpoint::Echo, _) => {
                let k = if kind == MessageKind::Text {
                    Kind::Text
                } else {
                    Kind::Binary
                };
                bump(&self.stats.messages_out, 1);
                self.queue_frame(key, k, data);
            }
            (Endpoint::Json, MessageKind::Binary) => {
                let mut out = std::mem::take(&mut self.scratch);
                let reply = handler::binary(&mut out);
                self.send_reply(key, reply, &out);
                self.scratch = out;
            }
            // SAFETY: text messages were checked to be UTF-8 by the state machine.
            (Endpoint::Json, MessageKind::Text) => {
                self.on_request(key, unsafe { std::str::from_utf8_unchecked(data) })
            }
        }
    }

    fn endpoint(&self, key: usize) -> Option<Endpoint> {
        match self.conns[key].machine.phase() {
            crate::conn::Phase::Open(e) => Some(e),
            _ => None,
        }
    }

    /// A JSON request: the handler decides, the worker carries out its effect and sends its
    /// reply.
    fn on_request(&mut self, key: usize, text: &str) {
        let mut out = std::mem::take(&mut self.scratch);
        let session = Session {
            subs: &self.conns[key].subs,
            max_subscriptions: self.cfg.max_subscriptions,
        };
        let (reply, effect) = handler::handle(text, session, &mut out);
        match effect {
            Effect::None => {}
            Effect::Subscribe(topic) => {
                if let Some(name) = self.topics.subscribe(&topic, key) {
                    self.conns[key].subs.push(name);
                }
            }
            Effect::Unsubscribe(topic) => {
                if self.topics.unsubscribe(&topic, key) {
                    let subs = &mut self.conns[key].subs;
                    if let Some(i) = subs.iter().position(|t| **t == *topic) {
                        subs.swap_remove(i);
                    }
                }
            }
            Effect::Publish { topic, data } => {
                let name = self
                    .topics
                    .name(&topic)
                    .unwrap_or_else(|| Arc::from(&*topic));
                self.publish(Target::Topic(name), data)
            }
            Effect::Broadcast(data) => self.publish(Target::All, data),
        }
        self.send_reply(key, reply, &out);
        self.scratch = out;
    }

    fn send_reply(&mut self, key: usize, reply: Reply, json: &[u8]) {
        match reply {
            Reply::None => return,
            Reply::Sent => {}
            Reply::Refused => {
                bump(&self.stats.bad_requests, 1);
                log::debug!(
                    "worker {}: conn {key} refused: {}",
                    self.index,
                    String::from_utf8_lossy(json)
                );
            }
        }
        bump(&self.stats.messages_out, 1);
        self.queue_frame(key, Kind::Text, json);
    }

    /// Encodes the message once and puts it on the bus: this worker's copy is delivered this
    /// turn, the other workers' through their queues.
    fn publish(&mut self, target: Target, data: Raw<'_>) {
        bump(&self.stats.publishes, 1);
        let d = broadcast::encode(target, data);
        self.bus.publish_from(self.index, d, &mut self.pending);
        self.published = true;
    }

    /// Closes the connection for `why` unless it is closing already (server-initiated).
    pub(super) fn begin_close(&mut self, key: usize, why: CloseReason) {
        if self.conns[key].machine.is_open() {
            self.close_with(key, why);
        }
    }

    /// Queues the close frame for `why` and stops all traffic but the queued output (RFC
    /// 6455 §7.1.7 when the peer broke the protocol).
    fn close_with(&mut self, key: usize, why: CloseReason) {
        if why.is_protocol_error() {
            bump(&self.stats.protocol_errors, 1);
        }
        self.queue_frame(key, Kind::Close, &why.payload());
        self.enter_closing(key);
    }

    /// Stops all traffic but the queued output, and bounds how long the connection may linger.
    /// Input is read again (to see the peer's close or EOF) but no longer kept.
    pub(super) fn enter_closing(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let freed = conn.inbound_cost();
        conn.machine.close();
        conn.inbuf = ThinVec::new();
        conn.machine.partial_since = NEVER;
        conn.input_ready = false;
        gauge(&self.stats.inbound_memory, -(freed as i64));
        let was_held = conn.is_held();
        if was_held {
            conn.held_since = NEVER;
            conn.publish_held = false;
            gauge(&self.stats.held, -1);
        }
        for t in std::mem::take(&mut conn.subs) {
            self.topics.unsubscribe(&t, key);
        }
        if was_held || self.drain_deadline.is_some() {
            // Its readiness was not acted on while it was held or quiesced.
            self.retry.push(key);
        }
        let at = self.now() + CLOSE_TIMEOUT;
        self.set_deadline(key, at);
    }

    /// Appends a frame to the connection's own output. Pings and pongs beyond the bound's
    /// control allowance are not sent (a peer flooding pings gets pongs only while its output
    /// drains; RFC 6455 §5.5.3 lets a pong answer only the latest ping).
    pub(super) fn queue_frame(&mut self, key: usize, kind: Kind, payload: &[u8]) {
        let len = codec::MAX_SERVER_HEADER + payload.len();
        if matches!(kind, Kind::Ping | Kind::Pong)
            && self.out_cost(key) + len > self.cfg.max_outbound_bytes + CONTROL_ALLOWANCE
        {
            bump(&self.stats.control_dropped, 1);
            return;
        }
        if self.corks(key) {
            codec::encode_into(&mut self.cork, kind, payload);
            return;
        }
        self.unstage(key);
        let out = &mut self.conns[key].out;
        let (len0, cost0) = (out.len(), out.cost());
        out.append(len, |t| codec::encode_into(t, kind, payload));
        gauge(&self.stats.queued_bytes, (out.len() - len0) as i64);
        gauge(
            &self.stats.outbound_memory,
            out.cost() as i64 - cost0 as i64,
        );
        self.mark_dirty(key);
    }

    /// Whether output for `key` goes into the cork: it is gathering for `key`, and the
    /// connection's own queue is empty (or the cork already holds some of its output, which
    /// everything after must follow).
    fn corks(&self, key: usize) -> bool {
        self.corked == Some(key) && (!self.cork.is_empty() || self.conns[key].out.is_empty())
    }

    pub(super) fn queue_raw(&mut self, key: usize, bytes: &[u8]) {
        if self.corks(key) {
            self.cork.extend_from_slice(bytes);
            return;
        }
        self.unstage(key);
        let out = &mut self.conns[key].out;
        let cost0 = out.cost();
        out.append(bytes.len(), |t| t.extend_from_slice(bytes));
        gauge(&self.stats.queued_bytes, bytes.len() as i64);
        gauge(
            &self.stats.outbound_memory,
            out.cost() as i64 - cost0 as i64,
        );
        self.mark_dirty(key);
    }
}
