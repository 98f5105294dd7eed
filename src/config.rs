//! Command-line flags, `CORECAST_*` environment variables and the `--config` file -> a
//! validated [`Config`]. Runs on the main thread before anything starts.

mod file;
mod flags;
mod validate;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::Resettable;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, ValueEnum};

use crate::admission::Rate;
pub use crate::conn::session::RatePolicy;
use crate::conn::TlsFiles;
pub use file::{FileError, Problem};
pub use flags::{parse_byte_count, parse_size, Args};
pub use validate::ConfigError;

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
/// The largest `--max-message-size`: one such message with its framing must fit the largest
/// outbound bound.
pub const MAX_MESSAGE_CEILING: usize = MAX_OUTBOUND_CEILING - MESSAGE_ENVELOPE;
/// The longest any timeout or interval may be, in seconds. The workers keep deadlines as
/// whole seconds since start in a `u32` (136 years) and add a timeout to it: a day keeps
/// that cast and that sum far from overflowing, and no client needs a longer timer.
pub const MAX_TIMEOUT_S: u64 = 24 * 60 * 60;
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
/// read buffer each). At it, new connections wait in the listen backlog for a slot, up to
/// `control::admin::QUEUE_WAIT`; one still waiting then gets a canned 503. The
/// open-files reserve (`fdlimit`) counts them.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Seconds' worth of a rate limit a connection may send at once: a client that batches a
/// second's messages, or reconnects and resubscribes in a rush, is not held for it.
pub const DEFAULT_RATE_LIMIT_BURST_S: u32 = 2;
/// What one history topic keeps at most: with the default 64 KiB messages, 64 of the
/// largest, or thousands of chat-sized ones.
pub const DEFAULT_HISTORY_TOPIC_MAX_BYTES: usize = 4 << 20;
/// What all history keeps at most, on all workers together.
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 256 << 20;
/// Most publications one recovery replays.
pub const DEFAULT_HISTORY_MAX_RECOVER: u64 = 10_000;
/// Most publications one history read returns.
pub const DEFAULT_HISTORY_MAX_LIMIT: usize = 1000;
/// The largest `--max-connection-rate-per-ip` and `--connection-rate-burst`. The acceptor is
/// one thread, and accepts well under a million connections a second: a larger figure would
/// be no limit at all.
pub const MAX_CONNECTION_RATE: u32 = 1_000_000;
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
    /// New connections per second from one address; 0 = unlimited. At most
    /// [`MAX_CONNECTION_RATE`].
    pub max_connection_rate_per_ip: u32,
    /// Connections one address may open at once (its bucket's size); `None`: the rate.
    /// At least 1.
    pub connection_rate_burst: Option<u32>,
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
    /// Per-connection rate limits on what clients send.
    pub rate: RateLimits,
    /// Client identity: the token keys, checks and anonymous grants (`--auth-*`,
    /// `--anonymous-*`); verifying is on when a key source is set.
    pub auth: crate::auth::Settings,
    /// Topic history (`--history*`); off while no rule is given.
    pub history: crate::history::stream::Limits,
}

/// Per-connection rate limits (`--max-messages-per-sec`, `--max-bytes-per-sec`,
/// `--rate-limit-burst`, `--rate-limit-policy`); off while both rates are 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Data messages per second; 0 = no limit.
    pub messages_per_sec: u32,
    /// Bytes of data messages per second; 0 = no limit.
    pub bytes_per_sec: u64,
    /// The buckets hold this many seconds' worth.
    pub burst_secs: u32,
    pub policy: RatePolicy,
}

impl RateLimits {
    pub fn on(&self) -> bool {
        self.messages_per_sec > 0 || self.bytes_per_sec > 0
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            messages_per_sec: 0,
            bytes_per_sec: 0,
            burst_secs: DEFAULT_RATE_LIMIT_BURST_S,
            policy: RatePolicy::Hold,
        }
    }
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
            max_connection_rate_per_ip: 0,
            connection_rate_burst: None,
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
            rate: RateLimits::default(),
            auth: crate::auth::Settings::default(),
            history: crate::history::stream::Limits::default(),
        }
    }
}

impl Config {
    /// The per-address rate of new connections, if there is one.
    pub fn connection_rate(&self) -> Option<Rate> {
        let per_second = self.max_connection_rate_per_ip;
        (per_second > 0).then(|| Rate {
            per_second,
            burst: self.connection_rate_burst.unwrap_or(per_second),
        })
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The settings the user chose, by clap id: on the command line, in a `CORECAST_*` variable
/// or in the `--config` file (which reaches the final parse as arguments). The rest hold
/// defaults, which may follow the chosen ones.
#[derive(Debug, Default, Clone)]
pub struct Given(BTreeSet<String>);

impl Given {
    fn from_matches(m: &ArgMatches) -> Given {
        Given(
            m.ids()
                .filter(|id| user_set(m, id.as_str()))
                .map(|id| id.as_str().to_owned())
                .collect(),
        )
    }

    fn has(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

fn user_set(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// A validated configuration, and what start-up should tell the operator about how it was
/// made: the file read, the defaults derived. The notes name settings, never their values'
/// secrets.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub notes: Vec<String>,
}

/// Why there is no configuration to start with. Every kind is exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A bad flag or value, or `--help`/`--version`: clap prints it (`clap::Error::exit`).
    #[error(transparent)]
    Flags(#[from] clap::Error),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The configuration from this process's arguments, environment and `--config` file.
pub fn load() -> Result<Loaded, LoadError> {
    load_from(std::env::args_os())
}

/// [`load`] from the given arguments (the first is the program name); the environment is
/// still this process's. Precedence: flag > `CORECAST_*` variable > file > default, with the
/// derived defaults last.
pub fn load_from<I, T>(argv: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    // First pass: what the command line and environment set, and where the file is. A flag
    // that requires another waits for the second pass: the file may hold the other one.
    let first = Args::command()
        .mut_args(|a| a.requires(Resettable::Reset))
        .try_get_matches_from(&argv)?;
    let mut notes = Vec::new();
    let argv = match first.get_one::<PathBuf>("config") {
        None => argv,
        Some(path) => {
            let from_file = file::read(path, &Args::command(), |id| user_set(&first, id))?;
            notes.push(format!(
                "--config {}: {} setting(s) from the file ({}){}",
                path.display(),
                from_file.applied.len(),
                from_file.applied.join(", "),
                if from_file.overridden.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; overridden by flags or CORECAST_* variables: {}",
                        from_file.overridden.join(", ")
                    )
                }
            ));
            // The file's arguments go first: the real ones after them are the ones clap
            // reports problems against. None is repeated: the file skips what they set.
            let mut all = Vec::with_capacity(argv.len() + from_file.args.len());
            all.extend(argv.first().cloned());
            all.extend(from_file.args);
            all.extend(argv.into_iter().skip(1));
            all
        }
    };
    let m = Args::command().try_get_matches_from(argv)?;
    let given = Given::from_matches(&m);
    let (config, derived) = Args::from_arg_matches(&m)?.into_config(&given)?;
    notes.extend(derived);
    Ok(Loaded { config, notes })
}

#[cfg(test)]
mod tests;
