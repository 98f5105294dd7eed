//! Per-worker counters: written by their worker alone, read by anyone for summaries.
//!
//! Each counter has one writer, so an increment is a relaxed load and store (no locked
//! read-modify-write instruction); readers sum the workers' values.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::handler::Denial;

macro_rules! counters {
    (
        counters { $($(#[$doc:meta])* $name:ident),* $(,)? }
        gauges { $($(#[$gdoc:meta])* $gauge:ident),* $(,)? }
    ) => {
        /// One worker's counters.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            $($(#[$gdoc])* pub $gauge: AtomicI64,)*
            /// Failed handshakes by HTTP status answered (see [`HANDSHAKE_STATUSES`]).
            pub handshake_failures_by: [AtomicU64; HANDSHAKE_STATUSES.len()],
            /// Requests auth refused, by why (see [`Denial::ALL`]).
            pub denials_by: [AtomicU64; Denial::ALL.len()],
            /// How long this worker's event-loop turns take.
            pub turns: Turns,
        }

        /// A plain copy of counters, summed over workers.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Snapshot {
            $(pub $name: u64,)*
            $(pub $gauge: i64,)*
            pub handshake_failures_by: [u64; HANDSHAKE_STATUSES.len()],
            pub denials_by: [u64; Denial::ALL.len()],
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($name: self.$name.load(Relaxed),)*
                    $($gauge: self.$gauge.load(Relaxed),)*
                    handshake_failures_by: std::array::from_fn(|i| {
                        self.handshake_failures_by[i].load(Relaxed)
                    }),
                    denials_by: std::array::from_fn(|i| self.denials_by[i].load(Relaxed)),
                }
            }
        }

        impl Snapshot {
            pub fn add(&mut self, o: &Snapshot) {
                $(self.$name += o.$name;)*
                $(self.$gauge += o.$gauge;)*
                for (a, b) in self.handshake_failures_by.iter_mut().zip(o.handshake_failures_by) {
                    *a += b;
                }
                for (a, b) in self.denials_by.iter_mut().zip(o.denials_by) {
                    *a += b;
                }
            }
        }
    };
}

/// Why handshakes fail, as the label of the HTTP status sent (0 = timed out, nothing sent).
pub const HANDSHAKE_STATUSES: [(u16, &str); 10] = [
    (0, "timeout"),
    (400, "bad_request"),
    (401, "unauthorized"),
    (403, "forbidden"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (426, "upgrade_required"),
    (431, "header_too_large"),
    (505, "http_version"),
    (500, "internal"),
];

/// Counts one failed handshake under its status.
pub fn handshake_failed(stats: &Stats, status: u16) {
    bump(&stats.handshake_failures, 1);
    // A status not in the table is counted under the last entry, "internal".
    let i = HANDSHAKE_STATUSES
        .iter()
        .position(|(s, _)| *s == status)
        .unwrap_or(HANDSHAKE_STATUSES.len() - 1);
    bump(&stats.handshake_failures_by[i], 1);
}

counters! {
    counters {
    /// Sockets handed to this worker.
    accepted,
    /// Upgrades completed.
    handshakes,
    /// Upgrades refused (bad request, unknown path, origin) or timed out.
    handshake_failures,
    /// Plain HTTP health checks answered on the WebSocket listener.
    health_checks,
    /// Console pages and `/stats.json` answered on the WebSocket listener.
    console_requests,
    /// Data messages received (after reassembly).
    messages_in,
    /// Data messages queued for sending: replies and deliveries.
    messages_out,
    /// Bytes read from sockets.
    bytes_in,
    /// Bytes written to sockets.
    bytes_out,
    /// Publish and broadcast requests accepted from this worker's clients.
    publishes,
    /// Messages queued to subscribers on this worker.
    deliveries,
    /// Messages dropped for slow consumers (`--slow-consumer drop`).
    dropped,
    /// Connections closed for being slow consumers (`--slow-consumer close`).
    slow_closes,
    /// Error replies sent for bad requests.
    bad_requests,
    /// Connections failed for protocol violations or size limits.
    protocol_errors,
    /// Connections closed for idleness or handshake timeout.
    timeouts,
    /// Connections fully closed and removed.
    closed,
    /// Times a connection's input was held back because its output went over its bound.
    input_held,
    /// Times a connection's input was held back because its publishes found the other
    /// workers' queues full (`broadcast::CROSS_BYTES`).
    publishers_held,
    /// Times a connection's input was held back because its own publishes waiting in the
    /// other workers' queues passed its share of them (`broadcast::PUBLISHER_SHARE`).
    publishers_share_held,
    /// Connections closed (1008) because their output stayed over its bound past
    /// `--backpressure-timeout`.
    backpressure_closes,
    /// Connections closed (1008) because a partial frame or fragmented message took longer
    /// than `--message-timeout`.
    message_timeouts,
    /// Pongs and pings not sent because the queue was past its control allowance.
    control_dropped,
    /// Connections dropped because the peer reset or hung up mid-stream (no close frame).
    hangups,
    /// TLS connections dropped for a TLS error: a bad record, a failed handshake, an alert.
    tls_errors,
    /// Plain HTTP requests received on the TLS listener (answered 400 and closed).
    tls_plain_http,
    /// WebSocket upgrades completed over TLS.
    tls_upgrades,
    /// Upgrades that negotiated permessage-deflate.
    deflate_upgrades,
    /// Compressed messages received and inflated.
    messages_inflated,
    /// Published messages compressed: once per message, worker and window size, whatever
    /// the number of subscribers that get it.
    messages_compressed,
    /// Upgrades refused with 401 for their token (also under `handshake_failures`).
    auth_upgrades_refused,
    /// Connections that connected with a token (at the upgrade or by `connect`).
    auth_connects,
    /// Connections that connected anonymously.
    auth_anonymous_connects,
    /// `connect`s whose token was refused (closed with 4001).
    auth_connects_refused,
    /// Connections closed with 4001 for sending no `connect` within
    /// `--auth-connect-timeout`.
    auth_connect_timeouts,
    /// Tokens renewed by `refresh`.
    auth_refreshes,
    /// Connections closed with 4002: their token expired without a refresh.
    auth_expiries,
    /// Subscriptions ended because their subscription token expired.
    auth_topic_expiries,
    /// Connections closed with 4003 by `POST /disconnect`.
    auth_disconnects,
    /// Times a connection's token check waited for a later loop turn: the turn had spent its
    /// verification budget.
    auth_deferred,
    /// Times a connection was held for sending faster than its rate limit
    /// (`--rate-limit-policy hold`).
    rate_limit_holds,
    /// Messages refused with `rate_limited` (`--rate-limit-policy refuse`).
    rate_limit_refusals,
    /// Connections closed with 1008 for their rate (`--rate-limit-policy close`).
    rate_limit_closes,
    /// Subscribes with `recover` that got every publication they missed.
    history_recovered,
    /// Subscribes with `recover` told `"recovered":false` (another epoch, trimmed, too far
    /// behind).
    history_not_recovered,
    /// History requests refused because the connection had too many waiting.
    history_refused,
    /// Retained publications dropped before their time: over their rule's count, over
    /// `--history-topic-max-bytes`, over `--history-max-bytes` (oldest first), and past their
    /// time to live (not early, but counted with them).
    history_trimmed_count,
    history_trimmed_topic_bytes,
    history_trimmed_global_bytes,
    history_expired,
    }
    gauges {
    /// Connections currently open on this worker (handshaking ones included).
    open,
    /// Of those, the upgraded ones: WebSockets.
    websockets,
    /// Bytes queued for sending and not yet taken by the kernel.
    queued_bytes,
    /// Memory held by outbound queues (what `--max-outbound-bytes` bounds).
    outbound_memory,
    /// Memory held for input: partial frames, fragmented messages, held-back reads.
    inbound_memory,
    /// Connections whose input is held back right now.
    held,
    /// Memory in TLS connections' own buffers: a half-received record, ciphertext the
    /// socket has not taken yet.
    tls_memory,
    /// Connections connected with a verified token right now.
    authenticated,
    /// Connections connected anonymously right now.
    anonymous,
    /// Connections waiting to `connect` right now.
    auth_pending,
    /// History streams this worker owns, and the bytes they are charged.
    history_topics,
    history_bytes,
    }
}

/// Buckets of [`Turns`]: bucket `i` counts turns of at most 2^i µs (1 µs to about 1 s),
/// the last one the longer turns.
pub const TURN_BUCKETS: usize = 22;

/// The upper bound of turn bucket `i`, in microseconds (infinite for the last).
pub fn turn_bound_us(i: usize) -> f64 {
    if i + 1 >= TURN_BUCKETS {
        f64::INFINITY
    } else {
        (1u64 << i) as f64
    }
}

/// A histogram of one worker's event-loop turn times: from the moment `epoll_wait` returns
/// to the end of the turn's work (time asleep is not in it), and when the turn in progress
/// began. A saturated core shows as long turns; a stalled one as a turn that has been
/// running for long. Written by its worker alone: three relaxed stores per turn.
#[derive(Debug, Default)]
pub struct Turns {
    buckets: [AtomicU64; TURN_BUCKETS],
    sum_ns: AtomicU64,
    /// When the turn in progress began, in µs after [`epoch`] plus one; 0 between turns.
    running_since: AtomicU64,
}

/// The instant turn start times are counted from (the first use of it).
pub fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn since_epoch_us(at: std::time::Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_micros() as u64 + 1
}

impl Turns {
    /// A turn begins at `at`.
    pub fn begin(&self, at: std::time::Instant) {
        self.running_since.store(since_epoch_us(at), Relaxed);
    }

    /// How long the turn in progress has been running at `now` (zero between turns).
    pub fn running(&self, now: std::time::Instant) -> std::time::Duration {
        match self.running_since.load(Relaxed) {
            0 => std::time::Duration::ZERO,
            since => std::time::Duration::from_micros(since_epoch_us(now).saturating_sub(since)),
        }
    }

    /// The turn that began last took `took`.
    pub fn record(&self, took: std::time::Duration) {
        self.running_since.store(0, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let us = ns.div_ceil(1000);
        let i = if us <= 1 {
            0
        } else {
            ((64 - (us - 1).leading_zeros()) as usize).min(TURN_BUCKETS - 1)
        };
        bump(&self.buckets[i], 1);
        bump(&self.sum_ns, ns);
    }

    pub fn read(&self) -> TurnCounts {
        TurnCounts {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }
}

/// A copy of [`Turns`], or the difference of two copies (the turns of an interval).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TurnCounts {
    /// Turns per bucket (not cumulative).
    pub buckets: [u64; TURN_BUCKETS],
    pub sum_ns: u64,
}

impl TurnCounts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The turns since `earlier`.
    pub fn since(&self, earlier: &TurnCounts) -> TurnCounts {
        TurnCounts {
            buckets: std::array::from_fn(|i| self.buckets[i].wrapping_sub(earlier.buckets[i])),
            sum_ns: self.sum_ns.wrapping_sub(earlier.sum_ns),
        }
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0 to 1); `None` without
    /// turns. The last bucket, unbounded, reads as twice the one before it.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(1u64 << i);
            }
        }
        Some(1u64 << (TURN_BUCKETS - 1))
    }
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Changes a gauge of the calling worker.
#[inline]
pub fn gauge(c: &AtomicI64, delta: i64) {
    c.store(c.load(Relaxed) + delta, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn turns_land_in_power_of_two_buckets_and_quantiles_read_them() {
        let t = Turns::default();
        let start = t.read();
        for us in [0, 1, 2, 3, 4, 5, 1000] {
            t.record(Duration::from_micros(us));
        }
        t.record(Duration::from_secs(5));
        let d = t.read().since(&start);
        // 0 and 1 µs | 2 | 3, 4 | 5 | 1000 (<= 1024) | 5 s in the last bucket
        assert_eq!(&d.buckets[..4], &[2, 1, 2, 1]);
        assert_eq!(d.buckets[10], 1);
        assert_eq!(d.buckets[TURN_BUCKETS - 1], 1);
        assert_eq!(d.count(), 8);
        assert_eq!(d.quantile_us(0.5), Some(4));
        assert_eq!(d.quantile_us(0.99), Some(1 << (TURN_BUCKETS - 1)));
        assert_eq!(d.sum_ns, 5_000_000_000 + 1_015_000);
        assert_eq!(TurnCounts::default().quantile_us(0.5), None);
        assert!(turn_bound_us(TURN_BUCKETS - 1).is_infinite());
        assert_eq!(turn_bound_us(3), 8.0);
    }

    #[test]
    fn a_turn_in_progress_reads_as_running_until_recorded() {
        let t = Turns::default();
        // The epoch is set on first use; an instant from before it would read as the epoch.
        since_epoch_us(std::time::Instant::now());
        let now = std::time::Instant::now();
        assert_eq!(t.running(now), Duration::ZERO);
        t.begin(now);
        let later = now + Duration::from_millis(1500);
        // Each instant is truncated to whole microseconds, so the difference may lose one.
        let us = t.running(later).as_micros();
        assert!((1_499_999..=1_500_000).contains(&us), "{us} us");
        t.record(Duration::from_millis(1500));
        assert_eq!(t.running(later), Duration::ZERO);
    }
}
