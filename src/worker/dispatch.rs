//! What a JSON request does on its worker, and delivery of published messages to this
//! worker's connections.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::handle::Msg;
use super::Worker;
use crate::broadcast::{self, Target};
use crate::codec::{close_code, Kind};
use crate::config::SlowConsumer;
use crate::conn::Conn;
use crate::outbound::Queued;
use crate::protocol::{self, Request};
use crate::stats::{bump, gauge};

impl Worker {
    pub(super) fn dispatch(&mut self, key: usize, text: &str) {
        let req = match protocol::decode(text) {
            Ok(r) => r,
            Err(bad) => return self.reply_error(key, bad.id, &bad.message),
        };
        match req {
            Request::Echo { id, data } => self.reply(key, |out| protocol::echo(out, id, data)),
            Request::Subscribe { id, topic } => {
                let conn = &mut self.conns[key];
                if conn.subs.len() >= self.cfg.max_subscriptions
                    && !conn.subs.iter().any(|t| **t == *topic)
                {
                    let msg = format!(
                        "subscription limit ({}) reached",
                        self.cfg.max_subscriptions
                    );
                    return self.reply_error_code(key, id, "limit", &msg);
                }
                if let Some(name) = self.topics.subscribe(&topic, key) {
                    conn.subs.push(name);
                }
                self.reply(key, |out| protocol::ok(out, id));
            }
            Request::Unsubscribe { id, topic } => {
                if self.topics.unsubscribe(&topic, key) {
                    let subs = &mut self.conns[key].subs;
                    if let Some(i) = subs.iter().position(|t| **t == *topic) {
                        subs.swap_remove(i);
                    }
                }
                self.reply(key, |out| protocol::ok(out, id));
            }
            Request::Publish { id, topic, data } => {
                self.publish(Target::Topic(Arc::from(&*topic)), data);
                if id.is_some() {
                    self.reply(key, |out| protocol::ok(out, id));
                }
            }
            Request::Broadcast { id, data } => {
                self.publish(Target::All, data);
                if id.is_some() {
                    self.reply(key, |out| protocol::ok(out, id));
                }
            }
        }
    }

    /// Encodes the message once and queues it to every worker, this one included.
    fn publish(&mut self, target: Target, data: &RawValue) {
        bump(&self.stats.publishes, 1);
        let d = broadcast::encode(target, data);
        for (i, peer) in self.peers.iter().enumerate() {
            if i == self.index {
                self.pending.push(d.clone());
            } else {
                peer.send(Msg::Deliver(d.clone()));
            }
        }
    }

    fn reply(&mut self, key: usize, build: impl FnOnce(&mut Vec<u8>)) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        build(&mut scratch);
        bump(&self.stats.messages_out, 1);
        self.queue_frame(key, Kind::Text, &scratch);
        self.scratch = scratch;
    }

    pub(super) fn reply_error(&mut self, key: usize, id: Option<&RawValue>, message: &str) {
        self.reply_error_code(key, id, "bad_request", message)
    }

    fn reply_error_code(&mut self, key: usize, id: Option<&RawValue>, code: &str, message: &str) {
        bump(&self.stats.bad_requests, 1);
        log::debug!("worker {}: conn {key} {code}: {message}", self.index);
        self.reply(key, |out| protocol::error(out, id, code, message));
    }

    /// Appends this turn's deliveries to their recipients' outbound queues, merging runs of
    /// messages for the same audience first so each recipient gets one segment per run.
    pub(super) fn deliver(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut merged = std::mem::take(&mut self.merged);
        broadcast::merge_runs(&mut self.pending, &mut merged);
        let limit = self.cfg.max_outbound_bytes;
        let mut over: Vec<usize> = Vec::new();
        let mut delivered = 0u64;
        let mut queued = 0i64;
        for d in merged.drain(..) {
            let mut offer = |key: usize, conn: &mut Conn, dirty: &mut Vec<usize>| match conn
                .out
                .push_shared(&d.frame, limit)
            {
                Queued::Ok => {
                    delivered += d.count as u64;
                    queued += d.frame.len() as i64;
                    if !conn.dirty {
                        conn.dirty = true;
                        dirty.push(key);
                    }
                }
                Queued::OverLimit => over.push(key),
            };
            match &d.target {
                Target::All => {
                    for (key, conn) in self.conns.iter_mut() {
                        if conn.is_json() {
                            offer(key, conn, &mut self.dirty);
                        }
                    }
                }
                Target::Topic(t) => {
                    if let Some(subs) = self.topics.subscribers(t) {
                        for &key in subs {
                            offer(key, &mut self.conns[key], &mut self.dirty);
                        }
                    }
                }
            }
            self.handle_slow(&mut over, d.count as u64);
        }
        self.merged = merged;
        bump(&self.stats.deliveries, delivered);
        bump(&self.stats.messages_out, delivered);
        gauge(&self.stats.queued_bytes, queued);
    }

    fn handle_slow(&mut self, over: &mut Vec<usize>, count: u64) {
        for key in over.drain(..) {
            match self.cfg.slow_consumer {
                SlowConsumer::Drop => bump(&self.stats.dropped, count),
                SlowConsumer::Close => {
                    bump(&self.stats.dropped, count);
                    if self.conns[key].is_json() {
                        bump(&self.stats.slow_closes, 1);
                        log::debug!(
                            "worker {}: conn {key} closed as a slow consumer",
                            self.index
                        );
                        self.begin_close(key, close_code::POLICY, "slow consumer");
                    }
                }
            }
        }
    }
}
