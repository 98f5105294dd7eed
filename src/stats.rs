//! Per-worker counters: written by their worker alone, read by anyone for summaries.
//!
//! Each counter has one writer, so an increment is a relaxed load and store (no locked
//! read-modify-write instruction); readers sum the workers' values.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

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
        }

        /// A plain copy of counters, summed over workers.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Snapshot {
            $(pub $name: u64,)*
            $(pub $gauge: i64,)*
            pub handshake_failures_by: [u64; HANDSHAKE_STATUSES.len()],
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($name: self.$name.load(Relaxed),)*
                    $($gauge: self.$gauge.load(Relaxed),)*
                    handshake_failures_by: std::array::from_fn(|i| {
                        self.handshake_failures_by[i].load(Relaxed)
                    }),
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
            }
        }
    };
}

/// Why handshakes fail, as the label of the HTTP status sent (0 = timed out, nothing sent).
pub const HANDSHAKE_STATUSES: [(u16, &str); 9] = [
    (0, "timeout"),
    (400, "bad_request"),
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
    }
    gauges {
    /// Connections currently open on this worker (handshaking ones included).
    open,
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
