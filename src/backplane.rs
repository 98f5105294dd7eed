//! The Redis backplane (`--redis`): what makes several corecast nodes one server. A publish
//! made on any node reaches the subscribers on every node through Redis pub/sub.
//!
//! Workers never touch the network here. A worker's publish is delivered locally at once
//! (as without a backplane) and a copy of its frame goes into a bounded queue to the control
//! thread, all of a loop turn's publishes in one batch (`Link::forward`, which never
//! blocks: what does not fit is dropped and counted). The
//! backplane task on the control thread PUBLISHes what it takes from that queue, in order,
//! pipelined over one RESP3 connection, and receives the other nodes' messages as push
//! frames on the same connection, in order, and hands each to every worker's queue
//! ([`Bus::deliver_remote`]), framed once.
//!
//! Interest routing: a worker reports when a topic gains its first local subscriber on that
//! worker and when it loses its last one ([`Link::topic_added`], [`Link::topic_removed`]).
//! The backplane counts workers per topic and SUBSCRIBEs to the topic's channel while the
//! count is above zero, UNSUBSCRIBEing [`UNSUBSCRIBE_DELAY`] after it falls to zero (so
//! that churn does not turn into Redis commands). Broadcasts use one channel every node
//! subscribes to. The reports share a bounded queue ([`INTEREST_QUEUE`]); a worker whose
//! report does not fit stops reporting changes and sends its whole topic set instead as
//! soon as there is room ([`Link::resync`]), which replaces everything it said before.
//!
//! Envelope (the Redis message), version 1: `cc1 <node> <message>`, where `<node>` is the
//! origin node's id as 16 lower-case hex digits and `<message>` is the JSON text
//! subscribers receive (`{"op":"message",...}`), so the receiving node only adds a frame
//! header. A node skips envelopes with its own id (it delivered those locally already) and
//! counts, then drops, envelopes of another version or malformed ones, and those whose
//! message is not UTF-8 (it would reach subscribers as a text frame).
//!
//! Faults: Redis unreachable at start or later is retried with capped exponential backoff
//! ([`MIN_BACKOFF`] to [`MAX_BACKOFF`]); on each connection every live channel is
//! subscribed again. Publishes taken from the queue while there is no connection, or in a
//! pipeline that fails, are counted as failed, never retried (at most once, in order).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broadcast::Bus;
use crate::codec::{self, Kind, MAX_SERVER_HEADER};
use crate::delivery::{Delivery, Target};
use crate::link::{Forward, Forwards, Interest};
use crate::stop::{stopped, Stopping};
use crate::worker::handle::Msg;

pub use crate::link::{link, Link, Receivers, Stats, INTEREST_QUEUE, QUEUE, QUEUE_BYTES};

/// Publishes sent to Redis in one pipeline at most; also about how many the task takes from
/// the workers at once (their batches whole).
const BATCH: usize = 512;
/// How long a topic's channel stays subscribed after its last local subscriber left.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(2);
/// First and longest wait between connection attempts.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connecting, and any one command, may take this long before the connection counts as
/// broken.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The envelope's version tag.
const VERSION: &[u8] = b"cc1";

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct Options {
    info: redis::ConnectionInfo,
    /// Channel names start with this and a colon.
    pub prefix: String,
    /// What the URL said, password removed, for logs.
    pub shown: String,
}

/// Why `--redis` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--redis {url}: {why}")]
pub struct OptionsError {
    url: String,
    why: String,
}

impl Options {
    /// Reads `redis://[user:password@]host[:port][/db]` (also `rediss://` is refused: the
    /// build has no TLS for Redis). RESP3 is always used: pub/sub and commands share one
    /// connection.
    pub fn parse(url: &str, prefix: &str) -> Result<Options, OptionsError> {
        let err = |why: String| OptionsError {
            url: url.to_owned(),
            why,
        };
        if !url.starts_with("redis://") {
            return Err(err("only redis://HOST:PORT[/DB] URLs are supported".into()));
        }
        let info = url.into_connection_info().map_err(|e| err(e.to_string()))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        if prefix.is_empty() || prefix.contains(char::is_whitespace) {
            return Err(err(format!(
                "--redis-prefix {prefix:?} must be non-empty, without spaces"
            )));
        }
        let shown = match url.rfind('@') {
            Some(at) => format!("redis://***@{}", &url[at + 1..]),
            None => url.to_owned(),
        };
        Ok(Options {
            info,
            prefix: prefix.to_owned(),
            shown,
        })
    }
}

/// The channel a target's messages travel on.
fn channel(prefix: &str, target: &Target) -> String {
    match target {
        Target::All => format!("{prefix}:all"),
        Target::Topic(t) => format!("{prefix}:topic:{t}"),
    }
}

/// The channel of commands between nodes (`POST /disconnect`), which every node
/// subscribes to: `PREFIX:ctl`. Its envelope carries `{"op":"disconnect","user":..}`.
fn control_channel(prefix: &str) -> String {
    format!("{prefix}:ctl")
}

/// The user a control envelope's message asks to disconnect, if it is such a command.
fn disconnect_of(message: &[u8]) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Command<'a> {
        op: &'a str,
        user: String,
    }
    let c: Command<'_> = serde_json::from_slice(message).ok()?;
    (c.op == "disconnect" && !c.user.is_empty()).then(|| Arc::from(c.user))
}

/// The target a channel name stands for, if it is one of ours.
fn target_of(prefix: &str, channel: &[u8]) -> Option<Target> {
    let rest = channel
        .strip_prefix(prefix.as_bytes())?
        .strip_prefix(b":")?;
    if rest == b"all" {
        return Some(Target::All);
    }
    let topic = std::str::from_utf8(rest.strip_prefix(b"topic:")?).ok()?;
    Some(Target::Topic(Arc::from(topic)))
}

/// The envelope of a message from `node` whose subscribers' frame is `frame`.
fn envelope(node: u64, frame: &[u8]) -> Vec<u8> {
    let message = codec::server_payload(frame);
    let mut e = Vec::with_capacity(VERSION.len() + 18 + message.len());
    e.extend_from_slice(VERSION);
    e.extend_from_slice(format!(" {node:016x} ").as_bytes());
    e.extend_from_slice(message);
    e
}

/// An envelope's origin node and message, or None if it is not a version-1 envelope.
fn open_envelope(e: &[u8]) -> Option<(u64, &[u8])> {
    let rest = e.strip_prefix(VERSION)?.strip_prefix(b" ")?;
    if rest.len() < 17 || rest[16] != b' ' {
        return None;
    }
    let hex = std::str::from_utf8(&rest[..16]).ok()?;
    let node = u64::from_str_radix(hex, 16).ok()?;
    Some((node, &rest[17..]))
}

/// A text frame around `message`, in one allocation.
fn frame(message: &[u8]) -> Bytes {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = codec::write_header(&mut header, Kind::Text, message.len());
    let mut buf = Vec::with_capacity(n + message.len());
    buf.extend_from_slice(&header[..n]);
    buf.extend_from_slice(message);
    Bytes::from(buf)
}

/// What the push handler needs: it runs inside the connection's driver, for every push.
struct Inbound {
    node: u64,
    prefix: String,
    bus: Bus,
    link: Arc<Link>,
    /// Which connection is the current one: each attempt takes the next number.
    generation: AtomicU64,
    /// The connection whose driver last reported a disconnection.
    dropped: AtomicU64,
    disconnected: Notify,
}

impl Inbound {
    /// A push on connection `generation`.
    fn on_push(&self, generation: u64, p: PushInfo) {
        match p.kind {
            PushKind::Message => {
                let (Some(redis::Value::BulkString(ch)), Some(redis::Value::BulkString(e))) =
                    (p.data.first(), p.data.get(1))
                else {
                    self.link.stats.bad_envelopes.fetch_add(1, Relaxed);
                    return;
                };
                if ch.as_slice() == control_channel(&self.prefix).as_bytes() {
                    return self.on_control(e);
                }
                let (Some(target), Some((node, message))) =
                    (target_of(&self.prefix, ch), open_envelope(e))
                else {
                    self.link.stats.bad_envelopes.fetch_add(1, Relaxed);
                    return;
                };
                if node == self.node {
                    self.link.stats.own_skipped.fetch_add(1, Relaxed);
                    return;
                }
                // Anyone who may PUBLISH on our channels can send this; it goes out as a
                // text frame, which must be UTF-8.
                if simdutf8::basic::from_utf8(message).is_err() {
                    self.link.stats.invalid_utf8.fetch_add(1, Relaxed);
                    return;
                }
                let d = Delivery {
                    target,
                    frame: frame(message),
                };
                if self.bus.deliver_remote(d) {
                    self.link.stats.received.fetch_add(1, Relaxed);
                } else {
                    self.link.stats.received_dropped.fetch_add(1, Relaxed);
                }
            }
            PushKind::Disconnection => {
                self.dropped.store(generation, Relaxed);
                self.disconnected.notify_one();
            }
            _ => {}
        }
    }
}

impl Inbound {
    /// A command from another node on the control channel.
    fn on_control(&self, e: &[u8]) {
        let Some((node, message)) = open_envelope(e) else {
            self.link.stats.bad_envelopes.fetch_add(1, Relaxed);
            return;
        };
        if node == self.node {
            return; // our own: the local workers were told directly
        }
        let Some(user) = disconnect_of(message) else {
            self.link.stats.bad_envelopes.fetch_add(1, Relaxed);
            return;
        };
        self.link.stats.disconnects_received.fetch_add(1, Relaxed);
        self.bus.tell_all(|| Msg::Disconnect {
            user: user.clone(),
            done: None,
        });
    }
}

/// The backplane task's state.
struct Backplane {
    opts: Options,
    link: Arc<Link>,
    inbound: Arc<Inbound>,
    conn: Option<MultiplexedConnection>,
    /// The topics each worker holds, by worker index, as it reported them.
    held: Vec<HashSet<Arc<str>>>,
    /// Workers holding each topic.
    interest: HashMap<Arc<str>, usize>,
    /// Topics no worker holds any more, and when to unsubscribe their channel.
    leaving: HashMap<Arc<str>, Instant>,
    /// Whether a connection was ever made (later ones count as reconnects).
    connected_once: bool,
    backoff: Duration,
    next_attempt: Instant,
    /// Failed attempts since the last connection, to log the first and then every tenth.
    failures: u32,
}

/// Runs the backplane until `stopping`: connects (and reconnects), forwards publishes,
/// follows interest. Never returns early; Redis being away is a state, not an error.
pub async fn run(opts: Options, link: Arc<Link>, rx: Receivers, bus: Bus, mut stopping: Stopping) {
    let Receivers {
        forwards,
        mut interest,
        mut disconnects,
    } = rx;
    let inbound = Arc::new(Inbound {
        node: link.node(),
        prefix: opts.prefix.clone(),
        bus,
        link: link.clone(),
        generation: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        disconnected: Notify::new(),
    });
    let mut bp = Backplane {
        opts,
        link,
        inbound: inbound.clone(),
        conn: None,
        held: Vec::new(),
        interest: HashMap::new(),
        leaving: HashMap::new(),
        connected_once: false,
        backoff: MIN_BACKOFF,
        next_attempt: Instant::now(),
        failures: 0,
    };
    log::info!(
        "backplane: node {:016x}, Redis {} (channels {}:*)",
        bp.link.node(),
        bp.opts.shown,
        bp.opts.prefix
    );
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let attempt_at = bp.next_attempt;
        tokio::select! {
            biased;
            _ = stopped(&mut stopping) => break,
            _ = inbound.disconnected.notified(), if bp.conn.is_some() => {
                // A connection dropped earlier (by us, after a failed command) may report
                // its end later, or have left a wake-up behind: only the current one counts.
                if inbound.dropped.load(Relaxed) == inbound.generation.load(Relaxed) {
                    bp.lost("Redis closed the connection");
                }
            }
            _ = tokio::time::sleep_until(attempt_at), if bp.conn.is_none() => bp.connect().await,
            Some(i) = interest.recv() => {
                // What is waiting (up to a batch), so that a burst of new topics is one
                // SUBSCRIBE.
                let mut new = Vec::new();
                bp.on_interest(i, &mut new);
                for _ in 1..BATCH {
                    let Ok(i) = interest.try_recv() else { break };
                    bp.on_interest(i, &mut new);
                }
                bp.shrink();
                bp.subscribe(new).await;
            }
            Some(user) = disconnects.recv() => bp.disconnect(&user).await,
            _ = forwards.ready() => {
                forwards.take(&mut batch, BATCH);
                bp.forward(&forwards, &mut batch).await;
            }
            _ = ticks.tick() => bp.unsubscribe_due().await,
        }
    }
    bp.link.stats.up.store(false, Relaxed);
}

impl Backplane {
    /// One connection attempt; on success every live channel is subscribed again.
    async fn connect(&mut self) {
        let inbound = self.inbound.clone();
        let generation = inbound.generation.fetch_add(1, Relaxed) + 1;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_push_sender(move |p: PushInfo| {
                inbound.on_push(generation, p);
                Ok::<(), std::convert::Infallible>(())
            });
        let attempt = async {
            let client = redis::Client::open(self.opts.info.clone())?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let mut channels = vec![
                channel(&self.opts.prefix, &Target::All),
                control_channel(&self.opts.prefix),
            ];
            channels.extend(
                self.interest
                    .keys()
                    .chain(self.leaving.keys())
                    .map(|t| channel(&self.opts.prefix, &Target::Topic(t.clone()))),
            );
            conn.subscribe(&channels).await?;
            Ok::<_, redis::RedisError>((conn, channels.len()))
        };
        match attempt.await {
            Ok((conn, n)) => {
                self.conn = Some(conn);
                self.link.stats.channels.store(n as i64, Relaxed);
                self.link.stats.up.store(true, Relaxed);
                if self.connected_once {
                    self.link.stats.reconnects.fetch_add(1, Relaxed);
                    log::warn!(
                        "backplane: reconnected to Redis {} ({n} channels subscribed again)",
                        self.opts.shown
                    );
                } else {
                    log::info!("backplane: connected to Redis {}", self.opts.shown);
                }
                self.connected_once = true;
                self.backoff = MIN_BACKOFF;
                self.failures = 0;
            }
            Err(e) => {
                if self.failures.is_multiple_of(10) {
                    log::warn!(
                        "backplane: cannot reach Redis {} ({e}); serving local clients only, \
                         retrying every {:?} at most",
                        self.opts.shown,
                        MAX_BACKOFF
                    );
                }
                self.failures += 1;
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Asks the other nodes to disconnect `user`: one PUBLISH on the control channel (at
    /// most once: a disconnect taken while Redis is away is counted as failed).
    async fn disconnect(&mut self, user: &str) {
        let Some(conn) = self.conn.as_mut() else {
            self.link.stats.forward_failed.fetch_add(1, Relaxed);
            return;
        };
        let command = serde_json::json!({"op": "disconnect", "user": user}).to_string();
        let mut e = Vec::with_capacity(VERSION.len() + 18 + command.len());
        e.extend_from_slice(VERSION);
        e.extend_from_slice(format!(" {:016x} ", self.link.node()).as_bytes());
        e.extend_from_slice(command.as_bytes());
        let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(control_channel(&self.opts.prefix))
            .arg(e)
            .query_async(conn)
            .await;
        if let Err(e) = r {
            self.link.stats.forward_failed.fetch_add(1, Relaxed);
            self.lost(&format!("PUBLISH failed: {e}"));
        }
    }

    /// The connection broke: local delivery goes on, Redis is tried again soon.
    fn lost(&mut self, why: &str) {
        if self.conn.take().is_some() {
            log::warn!(
                "backplane: lost Redis {} ({why}); serving local clients only",
                self.opts.shown
            );
        }
        self.link.stats.up.store(false, Relaxed);
        self.link.stats.channels.store(0, Relaxed);
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// PUBLISHes what was taken, in order, in pipelines of [`BATCH`] at most, and empties
    /// `batch`.
    async fn forward(&mut self, forwards: &Forwards, batch: &mut Vec<Forward>) {
        for chunk in batch.chunks(BATCH) {
            self.forward_chunk(forwards, chunk).await;
        }
        batch.clear();
    }

    async fn forward_chunk(&mut self, forwards: &Forwards, chunk: &[Forward]) {
        let n = chunk.len() as u64;
        // The frames count against the bound until the pipeline is done with them.
        let bytes: usize = chunk.iter().map(|f| f.frame.len()).sum();
        let Some(conn) = self.conn.as_mut() else {
            self.link.stats.forward_failed.fetch_add(n, Relaxed);
            forwards.sent(bytes);
            return;
        };
        let mut pipe = redis::pipe();
        for f in chunk {
            pipe.cmd("PUBLISH")
                .arg(channel(&self.opts.prefix, &f.target))
                .arg(envelope(self.link.node(), &f.frame))
                .ignore();
        }
        let result = pipe.query_async::<()>(conn).await;
        forwards.sent(bytes);
        match result {
            Ok(()) => {
                self.link.stats.forwarded.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.link.stats.forward_failed.fetch_add(n, Relaxed);
                self.lost(&format!("PUBLISH failed: {e}"));
            }
        }
    }

    /// Counts a worker's report; adds to `new` the topics whose channels must now be
    /// subscribed.
    fn on_interest(&mut self, i: Interest, new: &mut Vec<Arc<str>>) {
        let w = match &i {
            Interest::Added(w, _) | Interest::Removed(w, _) | Interest::Resync(w, _) => *w,
        };
        if self.held.len() <= w {
            self.held.resize_with(w + 1, HashSet::new);
        }
        match i {
            Interest::Added(_, t) => {
                if self.held[w].insert(t.clone()) {
                    new.extend(self.gained(t));
                }
            }
            Interest::Removed(_, t) => {
                if self.held[w].remove(&t) {
                    self.lost_one(t);
                }
            }
            Interest::Resync(_, topics) => {
                self.link.stats.interest_resyncs.fetch_add(1, Relaxed);
                let now: HashSet<Arc<str>> = topics.into_iter().collect();
                let before = std::mem::replace(&mut self.held[w], now);
                let gone: Vec<_> = before.difference(&self.held[w]).cloned().collect();
                let came: Vec<_> = self.held[w].difference(&before).cloned().collect();
                for t in gone {
                    self.lost_one(t);
                }
                for t in came {
                    new.extend(self.gained(t));
                }
            }
        }
    }

    /// One more worker holds `t`; returns it if its channel must now be subscribed.
    fn gained(&mut self, t: Arc<str>) -> Option<Arc<str>> {
        let n = self.interest.entry(t.clone()).or_insert(0);
        *n += 1;
        // A topic still subscribed (leaving, or held by another worker) needs nothing.
        (*n == 1 && self.leaving.remove(&t).is_none()).then_some(t)
    }

    /// One worker fewer holds `t`; with none left, its channel leaves after the delay.
    fn lost_one(&mut self, t: Arc<str>) {
        if let Some(n) = self.interest.get_mut(&t) {
            *n -= 1;
            if *n == 0 {
                self.interest.remove(&t);
                self.leaving.insert(t, Instant::now() + UNSUBSCRIBE_DELAY);
            }
        }
    }

    /// Gives back the room a burst of topics took, once it has gone.
    fn shrink(&mut self) {
        shrink_map(&mut self.interest);
        shrink_map(&mut self.leaving);
        for h in &mut self.held {
            if h.capacity() > SHRINK_ABOVE && h.len() < h.capacity() / 4 {
                h.shrink_to(h.len() * 2);
            }
        }
    }

    /// SUBSCRIBEs the channels of `topics`.
    async fn subscribe(&mut self, topics: Vec<Arc<str>>) {
        self.channel_command(true, topics).await;
    }

    /// SUBSCRIBEs (or UNSUBSCRIBEs) the channels of `topics` in one command, if connected; a
    /// connection made later subscribes to every live topic anyway. Never with no channel:
    /// UNSUBSCRIBE with none would drop every subscription.
    async fn channel_command(&mut self, subscribe: bool, topics: Vec<Arc<str>>) {
        if topics.is_empty() {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let channels: Vec<String> = topics
            .into_iter()
            .map(|t| channel(&self.opts.prefix, &Target::Topic(t)))
            .collect();
        let (result, what, sign) = if subscribe {
            (conn.subscribe(&channels).await, "SUBSCRIBE", 1)
        } else {
            (conn.unsubscribe(&channels).await, "UNSUBSCRIBE", -1)
        };
        match result {
            Ok(()) => {
                let n = channels.len() as i64;
                self.link.stats.channels.fetch_add(sign * n, Relaxed);
            }
            Err(e) => self.lost(&format!("{what} failed: {e}")),
        }
    }

    /// UNSUBSCRIBEs the channels whose delay has passed.
    async fn unsubscribe_due(&mut self) {
        if self.leaving.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .leaving
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for t in &due {
            self.leaving.remove(t);
        }
        shrink_map(&mut self.leaving);
        self.channel_command(false, due).await;
    }
}

/// Tables with more room than this shrink once three quarters empty (as a worker's topics do).
const SHRINK_ABOVE: usize = 64;

fn shrink_map<V>(m: &mut HashMap<Arc<str>, V>) {
    if m.capacity() > SHRINK_ABOVE && m.len() < m.capacity() / 4 {
        m.shrink_to(m.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_refuse_other_versions() {
        let d = crate::broadcast::encode(
            Target::Topic("news".into()),
            crate::protocol::Raw::new(r#"{"a":1}"#).unwrap(),
        );
        let e = envelope(0xabc, &d.frame);
        assert!(e.starts_with(b"cc1 0000000000000abc {\"op\":\"message\""));
        let (node, message) = open_envelope(&e).unwrap();
        assert_eq!(node, 0xabc);
        assert_eq!(&frame(message)[..], &d.frame[..], "reframed as sent");
        for bad in [
            &b"cc2 0000000000000abc {}"[..],
            b"cc1 abc {}",
            b"cc1 000000000000zzzz {}",
            b"cc1 0000000000000abc",
            b"",
        ] {
            assert!(
                open_envelope(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn channel_names_map_back_to_targets() {
        let t = Target::Topic("a:b c".into());
        let ch = channel("cc", &t);
        assert_eq!(ch, "cc:topic:a:b c");
        assert!(matches!(target_of("cc", ch.as_bytes()), Some(Target::Topic(n)) if &*n == "a:b c"));
        assert!(matches!(target_of("cc", b"cc:all"), Some(Target::All)));
        assert!(target_of("cc", b"other:all").is_none());
        assert!(target_of("cc", b"cc:topicx").is_none());
        assert!(target_of("cc", b"ccc:all").is_none());
    }

    #[test]
    fn options_need_a_redis_url_and_hide_the_password() {
        let o = Options::parse("redis://user:secret@127.0.0.1:6379/2", "cc").unwrap();
        assert_eq!(o.shown, "redis://***@127.0.0.1:6379/2");
        assert!(!o.shown.contains("secret"));
        assert!(Options::parse("http://127.0.0.1", "cc").is_err());
        assert!(Options::parse("redis://127.0.0.1", "").is_err());
        assert!(Options::parse("redis://127.0.0.1", "a b").is_err());
    }
}
