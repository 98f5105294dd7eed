//! Command-line flags and `CORECAST_*` environment variables -> a validated [`Config`].
//! Runs on the main thread before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::conn::TlsFiles;

/// Default listen address: loopback, so a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
/// Largest message accepted by default: JSON pub/sub payloads are small; 64 KiB leaves room.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// Subscriptions one connection may hold: each costs an index entry on its worker.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;
/// Memory one connection's unsent output may hold before the slow-consumer policy applies
/// (and before its input is held back). 1 MiB is seconds of backlog for a typical feed; 1,000
/// stalled readers cost at most about 1 GiB, and `--max-memory` guards the total.
pub const DEFAULT_MAX_OUTBOUND: usize = 1024 * 1024;
/// The bound's ceiling: queue accounting is 32-bit, and no single client should get more.
pub const MAX_OUTBOUND_CEILING: usize = 1 << 30;
/// What framing a message for delivery adds to its data at most: the frame header and the
/// `{"op":"message","topic":...,"data":}` envelope with a 256-byte topic, escaped.
pub const MESSAGE_ENVELOPE: usize = 1024;
/// How long a connection's output may stay over its bound (its input held back) before it is
/// closed with 1008. Long enough for a slow link to drain a burst, short enough that a client
/// that stopped reading does not pin its buffers for long.
pub const DEFAULT_BACKPRESSURE_TIMEOUT_S: u64 = 30;
/// How long a partial frame or a fragmented message may take to complete. At 64 KiB that is
/// 3 KB/s, slower than any real link; a client that trickles a message slower is closed.
pub const DEFAULT_MESSAGE_TIMEOUT_S: u64 = 20;
/// Share of physical memory (or of the cgroup's limit) the default `--max-memory` allows.
pub const DEFAULT_MEMORY_SHARE_PERCENT: u64 = 75;
/// How long a client may take to send a complete upgrade request.
pub const DEFAULT_HANDSHAKE_TIMEOUT_S: u64 = 10;
/// permessage-deflate: below this, a message goes out uncompressed. `cargo bench --bench
/// deflate` (2026-12-02): a 64-byte JSON message does not shrink at level 1, a 128-byte one
/// by 5%, a 256-byte one by 34%; each attempt costs at least 2 µs whatever the size (zlib's
/// per-message reset), paid once per worker for a publish.
pub const DEFAULT_DEFLATE_MIN_SIZE: usize = 128;
/// permessage-deflate: zlib level. Same bench: a 1 KiB JSON document takes 3.0 µs to 392 B
/// at level 1, 10.8 µs to 317 B at level 6; 16 KiB takes 23 µs (4.0x) against 150 µs (6.1x).
pub const DEFAULT_DEFLATE_LEVEL: u32 = 1;
/// The backplane's Redis channels start with this (`--redis-prefix`).
pub const DEFAULT_REDIS_PREFIX: &str = "corecast";
/// How long a connection may stay silent before the server pings it.
pub const DEFAULT_PING_INTERVAL_S: u64 = 30;
/// How long a connection may stay silent (even after pings) before it is closed.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 75;
/// How long shutdown waits for clients to answer the 1001 close.
pub const DEFAULT_DRAIN_TIMEOUT_S: u64 = 5;
/// Admin connections served at once. Scrapers, health checkers and publishers are a handful
/// of clients; the cap bounds what a flood of connections can hold (a socket and a 64 KiB
/// read buffer each). Over it a new connection gets a canned 503 and is closed at once. The
/// open-files reserve (`fdlimit`) counts them.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// The admin endpoint (metrics, health, publish API): loopback only by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9001";

/// What to do with a connection whose outbound buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumer {
    /// Close it with 1008 (policy violation): the client learns it fell behind.
    Close,
    /// Drop the messages that do not fit, and count them.
    Drop,
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Number of worker threads; at least 1.
    pub workers: usize,
    /// Pin worker `i` to core `i mod cores`.
    pub pin: bool,
    pub max_message_size: usize,
    /// Never above `max_message_size`.
    pub max_frame_size: usize,
    pub max_subscriptions: usize,
    /// At most [`MAX_OUTBOUND_CEILING`]; fits a message of `max_message_size` delivered.
    pub max_outbound_bytes: usize,
    pub slow_consumer: SlowConsumer,
    /// `None`: derived at start-up from the open-files limit (`fdlimit`).
    pub max_connections: Option<usize>,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Longest a connection's output may stay over its bound.
    pub backpressure_timeout: Duration,
    /// Longest a partial frame or fragmented message may take to complete.
    pub message_timeout: Duration,
    /// Process memory above which new connections are refused and slow consumers are cut
    /// shorter. `None`: derived from the machine at start-up; `Some(0)`: no guard.
    pub max_memory: Option<u64>,
    /// Accepted `Origin` values; empty accepts any (and none).
    pub allowed_origins: Vec<String>,
    /// Negotiate permessage-deflate (RFC 7692) when a client offers it.
    pub permessage_deflate: bool,
    /// Serve the web console (`GET /` without an upgrade) and `GET /stats.json`.
    pub console: bool,
    /// Published messages shorter than this go out uncompressed.
    pub deflate_min_size: usize,
    /// zlib compression level, 1 (fastest) to 9.
    pub deflate_level: u32,
    /// Certificate and key: the WebSocket listener speaks TLS (wss). `None`: plain ws.
    pub tls: Option<TlsFiles>,
    /// Admin HTTP endpoint; `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin publish API requires; never `Some("")`.
    pub api_token: Option<String>,
    /// Period of the info-level stats line; `None` disables it.
    pub stats_interval: Option<Duration>,
    /// The Redis backplane (`redis://HOST:PORT[/DB]`); `None`: a single node.
    pub redis: Option<String>,
    /// What the backplane's Redis channel names start with.
    pub redis_prefix: String,
    /// SO_REUSEPORT on the WebSocket listener: several processes share the port, for
    /// restarts without downtime; draining closes with 1012.
    pub reuse_port: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            workers: default_workers(),
            pin: true,
            max_message_size: DEFAULT_MAX_MESSAGE,
            max_frame_size: DEFAULT_MAX_MESSAGE,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND,
            slow_consumer: SlowConsumer::Close,
            max_connections: None,
            max_connections_per_ip: 0,
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_S),
            ping_interval: Duration::from_secs(DEFAULT_PING_INTERVAL_S),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_S),
            drain_timeout: Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_S),
            backpressure_timeout: Duration::from_secs(DEFAULT_BACKPRESSURE_TIMEOUT_S),
            message_timeout: Duration::from_secs(DEFAULT_MESSAGE_TIMEOUT_S),
            max_memory: None,
            allowed_origins: Vec::new(),
            permessage_deflate: false,
            console: true,
            deflate_min_size: DEFAULT_DEFLATE_MIN_SIZE,
            deflate_level: DEFAULT_DEFLATE_LEVEL,
            tls: None,
            admin_listen: None,
            api_token: None,
            stats_interval: None,
            redis: None,
            redis_prefix: DEFAULT_REDIS_PREFIX.into(),
            reuse_port: false,
        }
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// corecast: a thread-per-core WebSocket pub/sub server.
///
/// Clients speak JSON over WebSocket on /ws (subscribe, publish, broadcast, echo); /echo
/// echoes raw frames for benchmarks and conformance suites. Every flag can also be set with
/// the environment variable shown next to it.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Args {
    /// Address to accept WebSocket connections on.
    #[arg(long, env = "CORECAST_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Worker threads, each with its own event loop and connections. 0 = one per available core.
    #[arg(long, env = "CORECAST_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Do not pin worker threads to cores (pinning is on by default).
    #[arg(long, env = "CORECAST_NO_PIN")]
    pub no_pin: bool,

    /// Largest message accepted, in bytes, after reassembling fragments; larger ones close
    /// the connection with 1009.
    #[arg(long, env = "CORECAST_MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE)]
    pub max_message_size: usize,

    /// Largest single frame accepted, in bytes; capped at --max-message-size. Default: the same
    /// as --max-message-size.
    #[arg(long, env = "CORECAST_MAX_FRAME_SIZE")]
    pub max_frame_size: Option<usize>,

    /// Topics one connection may be subscribed to at once.
    #[arg(long, env = "CORECAST_MAX_SUBSCRIPTIONS", default_value_t = DEFAULT_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,

    /// Memory one connection's unsent output may hold, in bytes. A published message that
    /// does not fit is handled by --slow-consumer; replies that go over it stop the server
    /// reading from that client until its output drains to half (TCP then slows the client
    /// down), and a client still over it after --backpressure-timeout is closed with 1008.
    /// Must fit a --max-message-size message with its framing; at most 1 GiB.
    #[arg(long, env = "CORECAST_MAX_OUTBOUND_BYTES", default_value_t = DEFAULT_MAX_OUTBOUND)]
    pub max_outbound_bytes: usize,

    /// What to do when a published message does not fit in a subscriber's outbound bound:
    /// close it with 1008, or drop messages for it (and count them).
    #[arg(long, env = "CORECAST_SLOW_CONSUMER", value_enum, default_value_t = SlowConsumer::Close)]
    pub slow_consumer: SlowConsumer,

    /// Open connections allowed across all workers; over it, upgrades get HTTP 503. Default:
    /// the open-files limit (raised to its hard limit at start-up) less a reserve for the
    /// server's own descriptors; the effective value is logged at start-up.
    #[arg(long, env = "CORECAST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Open connections allowed from one IP address; over it, HTTP 429. 0 = no limit (the
    /// default: load generators and proxies legitimately open thousands from one address).
    #[arg(long, env = "CORECAST_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Seconds a client has to complete the HTTP upgrade.
    #[arg(long, env = "CORECAST_HANDSHAKE_TIMEOUT", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_S)]
    pub handshake_timeout: u64,

    /// Seconds of silence from a client before the server pings it.
    #[arg(long, env = "CORECAST_PING_INTERVAL", default_value_t = DEFAULT_PING_INTERVAL_S)]
    pub ping_interval: u64,

    /// Seconds of silence from a client (any frame counts) before it is closed.
    #[arg(long, env = "CORECAST_IDLE_TIMEOUT", default_value_t = DEFAULT_IDLE_TIMEOUT_S)]
    pub idle_timeout: u64,

    /// Seconds shutdown waits for clients to acknowledge the 1001 close before exiting.
    #[arg(long, env = "CORECAST_DRAIN_TIMEOUT", default_value_t = DEFAULT_DRAIN_TIMEOUT_S)]
    pub drain_timeout: u64,

    /// Seconds a connection's output may stay over --max-outbound-bytes (the server not
    /// reading from it meanwhile), or a publisher stay held back because the other workers'
    /// queues are full, before it is closed with 1008.
    #[arg(long, env = "CORECAST_BACKPRESSURE_TIMEOUT", default_value_t = DEFAULT_BACKPRESSURE_TIMEOUT_S)]
    pub backpressure_timeout: u64,

    /// Seconds a partial frame or fragmented message may take to arrive in full; a client
    /// slower than that is closed with 1008. Shorter than --idle-timeout.
    #[arg(long, env = "CORECAST_MESSAGE_TIMEOUT", default_value_t = DEFAULT_MESSAGE_TIMEOUT_S)]
    pub message_timeout: u64,

    /// Process memory (resident set) above which new connections get HTTP 503 and slow
    /// consumers are cut at a quarter of --max-outbound-bytes, until it falls back below 90%
    /// of it. Bytes, or with a K/M/G suffix (powers of 1024). Default: 75% of physical
    /// memory or of the cgroup's memory limit, whichever is lower. 0 disables the guard.
    #[arg(long, env = "CORECAST_MAX_MEMORY", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Accept upgrades only from these Origin values (repeat the flag or separate with
    /// commas); others get HTTP 403. Default: any origin.
    #[arg(
        long = "allowed-origin",
        env = "CORECAST_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it, on /ws and /echo.
    /// Off by default: compression trades server CPU for bandwidth, which pays on slow or
    /// metered links and costs on loopback or a LAN. corecast always asks for no context
    /// takeover both ways, so a connection holds no compression state between messages.
    #[arg(long, env = "CORECAST_PERMESSAGE_DEFLATE")]
    pub permessage_deflate: bool,

    /// Do not serve the web console (a plain GET of / on the WebSocket listener) nor its
    /// live figures (GET /stats.json): both answer 404. Upgrades on / are unaffected. The
    /// console shows counters only (no secrets, no client addresses), to whoever reaches
    /// the listener.
    #[arg(long, env = "CORECAST_NO_CONSOLE")]
    pub no_console: bool,

    /// With --permessage-deflate: messages shorter than this many bytes are sent
    /// uncompressed. JSON under about 128 bytes does not shrink, and each attempt costs
    /// at least 2 µs of a worker's time.
    #[arg(long, env = "CORECAST_DEFLATE_MIN_SIZE", default_value_t = DEFAULT_DEFLATE_MIN_SIZE)]
    pub deflate_min_size: usize,

    /// With --permessage-deflate: zlib level, 1 (fastest) to 9 (smallest). Level 6 makes
    /// JSON 20-35% smaller than level 1 for 3.5-6.5 times the CPU. Each published message is
    /// compressed once per worker, whatever its number of subscribers.
    #[arg(long, env = "CORECAST_DEFLATE_LEVEL", default_value_t = DEFAULT_DEFLATE_LEVEL,
          value_parser = clap::value_parser!(u32).range(1..=9))]
    pub deflate_level: u32,

    /// PEM certificate chain (end-entity certificate first) for the WebSocket listener: with
    /// --tls-key it speaks TLS 1.2 and 1.3 (wss://) instead of plain ws://. SIGHUP reloads
    /// both files; connections open at the time keep the certificate they started with.
    #[arg(long, env = "CORECAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, env = "CORECAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Admin HTTP endpoint serving GET /metrics (Prometheus), GET /healthz and POST /publish;
    /// `off` disables it. A non-loopback address requires --api-token.
    #[arg(long, env = "CORECAST_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,

    /// Token required by the admin publish API as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "CORECAST_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Seconds between info-level stats lines (connections, message rates, drops, RSS);
    /// 0 disables them.
    #[arg(long, env = "CORECAST_STATS_INTERVAL", default_value_t = 0)]
    pub stats_interval: u64,

    /// Redis backplane, redis://[USER:PASSWORD@]HOST:PORT[/DB] (Redis 6 or later: RESP3):
    /// publishes and broadcasts reach the subscribers of every corecast node using the same
    /// Redis. Without it the node stands alone. Redis being down never stops local delivery:
    /// the node retries, and counts what it could not forward.
    #[arg(long, env = "CORECAST_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// With --redis: the prefix of the Redis channels (PREFIX:all, PREFIX:topic:NAME), so
    /// that separate clusters can share one Redis.
    #[arg(long, env = "CORECAST_REDIS_PREFIX", default_value = DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,

    /// Let several corecast processes listen on the same --listen address (SO_REUSEPORT),
    /// for restarts that drop no client: start the new process (with its own
    /// --admin-listen), wait for its /healthz, then SIGTERM the old one. On SIGTERM the old
    /// process closes its listener at once, so new connections go to the new one; with
    /// net.ipv4.tcp_migrate_req=1 (Linux 5.14+; corecast warns at start if it is off) the
    /// connections still waiting in its accept queue move over instead of being reset. Its
    /// clients are then closed with 1012 (service restart), spread over --drain-timeout.
    #[arg(long, env = "CORECAST_REUSE_PORT")]
    pub reuse_port: bool,
}

/// A flag combination that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{0} must be greater than 0")]
    Zero(&'static str),
    #[error("--idle-timeout ({idle} s) must be longer than --ping-interval ({ping} s)")]
    IdleBeforePing { idle: u64, ping: u64 },
    #[error("--admin-listen must be an address like 127.0.0.1:9001 or `off`, not {0:?}")]
    AdminAddress(String),
    #[error(
        "--admin-listen {0} is not a loopback address: set --api-token so that the publish \
         API is not open to the network"
    )]
    AdminWithoutToken(SocketAddr),
    #[error("--api-token must not be empty")]
    EmptyToken,
    #[error(
        "--max-outbound-bytes ({outbound}) cannot hold one message of --max-message-size \
         ({message}) with its framing: it must be at least {need}"
    )]
    OutboundTooSmall {
        outbound: usize,
        message: usize,
        need: usize,
    },
    #[error("--max-outbound-bytes must be at most {MAX_OUTBOUND_CEILING}")]
    OutboundTooLarge,
    #[error("--message-timeout ({message} s) must be shorter than --idle-timeout ({idle} s)")]
    MessageTimeoutTooLong { message: u64, idle: u64 },
}

/// Parses a byte count: `1048576`, `512K`, `64M`, `4G` (powers of 1024; `KiB`/`MB` spellings
/// too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4G, 512M or 1048576"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        for (name, v) in [
            ("max-message-size", self.max_message_size as u64),
            ("max-subscriptions", self.max_subscriptions as u64),
            ("max-outbound-bytes", self.max_outbound_bytes as u64),
            ("handshake-timeout", self.handshake_timeout),
            ("ping-interval", self.ping_interval),
            ("backpressure-timeout", self.backpressure_timeout),
            ("message-timeout", self.message_timeout),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_frame_size == Some(0) {
            return Err(ConfigError::Zero("max-frame-size"));
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::Zero("max-connections"));
        }
        if self.max_outbound_bytes > MAX_OUTBOUND_CEILING {
            return Err(ConfigError::OutboundTooLarge);
        }
        let need = self.max_message_size + MESSAGE_ENVELOPE;
        if self.max_outbound_bytes < need {
            return Err(ConfigError::OutboundTooSmall {
                outbound: self.max_outbound_bytes,
                message: self.max_message_size,
                need,
            });
        }
        if self.message_timeout >= self.idle_timeout {
            return Err(ConfigError::MessageTimeoutTooLong {
                message: self.message_timeout,
                idle: self.idle_timeout,
            });
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError::IdleBeforePing {
                idle: self.idle_timeout,
                ping: self.ping_interval,
            });
        }
        let admin_listen = match self.admin_listen.as_str() {
            "off" | "none" | "" => None,
            a => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| ConfigError::AdminAddress(a.to_owned()))?,
            ),
        };
        if self.api_token.as_deref() == Some("") {
            return Err(ConfigError::EmptyToken);
        }
        if let Some(a) = admin_listen {
            if !a.ip().is_loopback() && self.api_token.is_none() {
                return Err(ConfigError::AdminWithoutToken(a));
            }
        }
        Ok(Config {
            listen: self.listen,
            workers: if self.workers == 0 {
                default_workers()
            } else {
                self.workers
            },
            pin: !self.no_pin,
            max_message_size: self.max_message_size,
            max_frame_size: self
                .max_frame_size
                .unwrap_or(self.max_message_size)
                .min(self.max_message_size),
            max_subscriptions: self.max_subscriptions,
            max_outbound_bytes: self.max_outbound_bytes,
            slow_consumer: self.slow_consumer,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            ping_interval: Duration::from_secs(self.ping_interval),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            drain_timeout: Duration::from_secs(self.drain_timeout),
            backpressure_timeout: Duration::from_secs(self.backpressure_timeout),
            message_timeout: Duration::from_secs(self.message_timeout),
            max_memory: self.max_memory,
            allowed_origins: self.allowed_origins,
            permessage_deflate: self.permessage_deflate,
            console: !self.no_console,
            deflate_min_size: self.deflate_min_size,
            deflate_level: self.deflate_level,
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
            admin_listen,
            api_token: self.api_token,
            stats_interval: (self.stats_interval > 0)
                .then(|| Duration::from_secs(self.stats_interval)),
            redis: self.redis,
            redis_prefix: self.redis_prefix,
            reuse_port: self.reuse_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["corecast"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)
            .map_err(|e| e.to_string())?
            .into_config()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_frame_cap() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.workers >= 1);
        assert_eq!(c.max_frame_size, c.max_message_size);
        let c = parse(&["--max-message-size", "100", "--max-frame-size", "1000"]).unwrap();
        assert_eq!(c.max_frame_size, 100);
    }

    #[test]
    fn refuses_impossible_combinations() {
        assert!(parse(&["--max-message-size", "0"])
            .unwrap_err()
            .contains("max-message-size"));
        assert!(parse(&["--ping-interval", "10", "--idle-timeout", "5"])
            .unwrap_err()
            .contains("idle-timeout"));
        assert!(parse(&["--slow-consumer", "maybe"]).is_err());
        assert!(parse(&["--admin-listen", "0.0.0.0:9001"])
            .unwrap_err()
            .contains("--api-token"));
        assert!(parse(&["--admin-listen", "0.0.0.0:9001", "--api-token", "s3cret"]).is_ok());
        assert!(parse(&["--admin-listen", "nowhere"]).is_err());
        assert_eq!(
            parse(&["--admin-listen", "off"]).unwrap().admin_listen,
            None
        );
        let e = parse(&[
            "--max-message-size",
            "65536",
            "--max-outbound-bytes",
            "65536",
        ]);
        assert!(e.unwrap_err().contains("at least 66560"));
        assert!(parse(&["--max-message-size", "1000", "--max-outbound-bytes", "2024"]).is_ok());
        assert!(parse(&["--max-outbound-bytes", "2147483648"]).is_err());
        assert!(parse(&["--message-timeout", "80"])
            .unwrap_err()
            .contains("--message-timeout"));
        assert!(parse(&["--max-connections", "0"]).is_err());
    }

    #[test]
    fn tls_needs_both_files() {
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--tls-key", "k.pem"]).is_err());
        let c = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert_eq!(parse(&[]).unwrap().tls, None);
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(
            parse(&["--max-memory", "2G"]).unwrap().max_memory,
            Some(2 << 30)
        );
        assert_eq!(parse(&[]).unwrap().max_memory, None);
    }
}
