//! The command-line flags and their `CORECAST_*` variables, as clap parses them; the
//! `--config` file's keys are the same (see `file.rs`). Runs on the main thread at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::auth::settings::{
    DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_JWKS_MAX_AGE_S, DEFAULT_JWKS_REFRESH_INTERVAL_S,
    DEFAULT_LEEWAY_S, DEFAULT_TOKEN_CACHE,
};

use super::{
    RatePolicy, SlowConsumer, DEFAULT_ADMIN_LISTEN, DEFAULT_BACKPRESSURE_TIMEOUT_S,
    DEFAULT_DEFLATE_LEVEL, DEFAULT_DEFLATE_MIN_SIZE, DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_HANDSHAKE_TIMEOUT_S, DEFAULT_HISTORY_MAX_BYTES, DEFAULT_HISTORY_MAX_LIMIT,
    DEFAULT_HISTORY_MAX_RECOVER, DEFAULT_HISTORY_TOPIC_MAX_BYTES, DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_LISTEN, DEFAULT_MAX_MESSAGE, DEFAULT_MAX_OUTBOUND, DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_MESSAGE_TIMEOUT_S, DEFAULT_PING_INTERVAL_S, DEFAULT_RATE_LIMIT_BURST_S,
    DEFAULT_REDIS_PREFIX, MAX_CONNECTION_RATE,
};

/// corecast: a thread-per-core WebSocket pub/sub server.
///
/// Clients speak JSON over WebSocket on /ws (subscribe, publish, broadcast, echo); /echo
/// echoes raw frames for benchmarks and conformance suites. Every flag can also be set with
/// the environment variable shown next to it, or in the --config file. Timeouts and intervals
/// are whole seconds, at most 86400 (a day).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Args {
    /// TOML file of settings: a key per flag, under the flag's long name
    /// (`max-message-size = "64K"`, `allowed-origin = ["https://a.example"]`). Flags and
    /// CORECAST_* variables override it. See docs/configuration.md and deploy/corecast.toml.
    #[arg(long, env = "CORECAST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to accept WebSocket connections on.
    #[arg(long, env = "CORECAST_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Worker threads, each with its own event loop and connections. 0 = one per available core.
    #[arg(long, env = "CORECAST_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Do not pin worker threads to cores (pinning is on by default).
    #[arg(long, env = "CORECAST_NO_PIN")]
    pub no_pin: bool,

    /// Largest message accepted, in bytes (K/M/G suffixes allowed), after reassembling
    /// fragments; larger ones close the connection with 1009. At most 1 GiB less 1 KiB. When
    /// only --max-outbound-bytes is set, and smaller than the default's needs, this follows it.
    #[arg(long, env = "CORECAST_MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE,
          value_parser = parse_byte_count)]
    pub max_message_size: usize,

    /// Largest single frame accepted, in bytes (K/M/G suffixes allowed); capped at
    /// --max-message-size. Default: the same as --max-message-size.
    #[arg(long, env = "CORECAST_MAX_FRAME_SIZE", value_parser = parse_byte_count)]
    pub max_frame_size: Option<usize>,

    /// Topics one connection may be subscribed to at once.
    #[arg(long, env = "CORECAST_MAX_SUBSCRIPTIONS", default_value_t = DEFAULT_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,

    /// Memory one connection's unsent output may hold, in bytes. A published message that
    /// does not fit is handled by --slow-consumer; replies that go over it stop the server
    /// reading from that client until its output drains to half (TCP then slows the client
    /// down), and a client still over it after --backpressure-timeout is closed with 1008.
    /// Must fit a --max-message-size message with its framing (1 KiB); at most 1 GiB. K/M/G
    /// suffixes allowed. When it is not set and --max-message-size needs more, the default
    /// grows to one such message with its framing.
    #[arg(long, env = "CORECAST_MAX_OUTBOUND_BYTES", default_value_t = DEFAULT_MAX_OUTBOUND,
          value_parser = parse_byte_count)]
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

    /// New connections per second allowed from one IP address: a token bucket per address
    /// holds --connection-rate-burst tokens and gains this many a second, and each new
    /// connection takes one. Over it, a connection is refused at accept, before any TLS
    /// handshake or token check, with HTTP 429 and Retry-After: 1 (on a TLS listener it is
    /// closed without a word). At most 1000000. 0 = no limit (the default: load generators
    /// and proxies legitimately connect thousands of times a second from one address). Turn
    /// it on where clients reach corecast directly; behind a proxy or load balancer every
    /// client has the proxy's address, so leave it off and set the proxy's own limit.
    #[arg(long, env = "CORECAST_MAX_CONNECTION_RATE_PER_IP", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_CONNECTION_RATE)))]
    pub max_connection_rate_per_ip: u32,

    /// With --max-connection-rate-per-ip: how many connections one IP address may open at
    /// once after a quiet spell (the size of its bucket), 1 to 1000000. Default: equal to
    /// the rate.
    #[arg(long, env = "CORECAST_CONNECTION_RATE_BURST",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONNECTION_RATE)))]
    pub connection_rate_burst: Option<u32>,

    /// Seconds a client has to complete the HTTP upgrade.
    #[arg(long, env = "CORECAST_HANDSHAKE_TIMEOUT", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_S)]
    pub handshake_timeout: u64,

    /// Seconds of silence from a client before the server pings it; shorter than
    /// --idle-timeout. When only --idle-timeout is set, at 30 or less, the default follows it:
    /// 40% of it (as 30 is of 75), so the pong has the rest to arrive.
    #[arg(long, env = "CORECAST_PING_INTERVAL", default_value_t = DEFAULT_PING_INTERVAL_S)]
    pub ping_interval: u64,

    /// Seconds of silence from a client (any frame counts) before it is closed. When it is
    /// not set, the default grows as --ping-interval and --message-timeout need: to 2.5 times
    /// the ping interval (75 is to 30), and past the message timeout.
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
    /// slower than that is closed with 1008. Shorter than --idle-timeout: when only that is
    /// set, at 20 or less, the default follows it (one second less).
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
    /// uncompressed (K/M/G suffixes allowed). JSON under about 128 bytes does not shrink,
    /// and each attempt costs at least 2 µs of a worker's time.
    #[arg(long, env = "CORECAST_DEFLATE_MIN_SIZE", default_value_t = DEFAULT_DEFLATE_MIN_SIZE,
          value_parser = parse_byte_count)]
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

    /// Data messages one connection may send per second (counted after reassembly, on /ws
    /// and /echo alike); 0 = no limit (the default). A connection may send
    /// --rate-limit-burst seconds' worth at once; past it, --rate-limit-policy applies.
    #[arg(long, env = "CORECAST_MAX_MESSAGES_PER_SEC", default_value_t = 0)]
    pub max_messages_per_sec: u32,

    /// Bytes of data messages one connection may send per second, as they arrive (K/M/G
    /// suffixes allowed); 0 = no limit (the default). Same burst and policy as
    /// --max-messages-per-sec.
    #[arg(long, env = "CORECAST_MAX_BYTES_PER_SEC", default_value_t = 0,
          value_parser = parse_byte_count)]
    pub max_bytes_per_sec: usize,

    /// Seconds' worth of --max-messages-per-sec and --max-bytes-per-sec a connection may
    /// send at once before the limit applies (the size of its token buckets), 1 to 3600.
    #[arg(long, env = "CORECAST_RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST_S,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub rate_limit_burst: u32,

    /// What a connection over its rate gets: `hold` stops reading it until its buckets
    /// refill (TCP then slows the client down; nothing is lost), `refuse` drops the message
    /// with an error reply (code `rate_limited`), `close` closes it with 1008.
    #[arg(long, env = "CORECAST_RATE_LIMIT_POLICY", value_enum, default_value_t = RatePolicy::Hold)]
    pub rate_limit_policy: RatePolicy,
    /// Verify client tokens (JWT, HS256/384/512) with the secret in FILE: its bytes, less
    /// one trailing newline, at least 32 of them. The secret is never given on the command
    /// line nor logged; SIGHUP reads the file again.
    #[arg(long, env = "CORECAST_AUTH_HMAC_SECRET_FILE", value_name = "FILE")]
    pub auth_hmac_secret_file: Option<PathBuf>,

    /// Verify client tokens (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA) with the PEM
    /// public key in FILE (one key per file). Repeat the flag for several keys at once, to
    /// rotate them; SIGHUP reads the files again. A token tries each key whose type fits its
    /// alg.
    #[arg(
        long,
        env = "CORECAST_AUTH_PUBLIC_KEYS",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub auth_public_key: Vec<PathBuf>,

    /// Verify client tokens with the keys of a JWKS: a file (read again on SIGHUP) or an
    /// http(s) URL, fetched off the workers at start, every --auth-jwks-max-age, on SIGHUP,
    /// and when a token names an unknown kid (at most once per
    /// --auth-jwks-refresh-interval). A failed fetch keeps the keys held.
    #[arg(long, env = "CORECAST_AUTH_JWKS", value_name = "FILE_OR_URL")]
    pub auth_jwks: Option<String>,

    /// Least seconds between two JWKS URL fetches that tokens with unknown kids ask for,
    /// however many arrive.
    #[arg(long, env = "CORECAST_AUTH_JWKS_REFRESH_INTERVAL", value_name = "SECS",
          default_value_t = DEFAULT_JWKS_REFRESH_INTERVAL_S)]
    pub auth_jwks_refresh_interval: u64,

    /// Seconds after which a JWKS URL is fetched again even if no token asks for it.
    #[arg(long, env = "CORECAST_AUTH_JWKS_MAX_AGE", value_name = "SECS",
          default_value_t = DEFAULT_JWKS_MAX_AGE_S)]
    pub auth_jwks_max_age: u64,

    /// Seconds of clock skew allowed when checking a token's exp and nbf.
    #[arg(long, env = "CORECAST_AUTH_LEEWAY", value_name = "SECS", default_value_t = DEFAULT_LEEWAY_S)]
    pub auth_leeway: u64,

    /// A token's aud must name this (and tokens without aud are refused). Default: aud is
    /// not checked.
    #[arg(long, env = "CORECAST_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// A token's iss must be this (and tokens without iss are refused). Default: iss is not
    /// checked.
    #[arg(long, env = "CORECAST_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// Seconds a client has, after the upgrade, to present its token.
    #[arg(long, env = "CORECAST_AUTH_CONNECT_TIMEOUT", value_name = "SECS",
          default_value_t = DEFAULT_CONNECT_TIMEOUT_S)]
    pub auth_connect_timeout: u64,

    /// Also accept the token as ?token= on the upgrade URL, for clients that cannot set
    /// headers. A risk: URLs end up in proxy and access logs, and with them the token.
    #[arg(long, env = "CORECAST_AUTH_QUERY_TOKEN")]
    pub auth_query_token: bool,

    /// A topic pattern connections without a token may subscribe to (repeat the flag for
    /// several; `*` one segment, `>` the rest). Checked at start: a bad pattern, or one with
    /// {sub} (there is no user), stops it. The environment variable holds one pattern.
    #[arg(long, env = "CORECAST_ANONYMOUS_SUBSCRIBE", value_name = "PATTERN")]
    pub anonymous_subscribe: Vec<String>,

    /// A topic pattern connections without a token may publish to (repeatable, as
    /// --anonymous-subscribe).
    #[arg(long, env = "CORECAST_ANONYMOUS_PUBLISH", value_name = "PATTERN")]
    pub anonymous_publish: Vec<String>,

    /// The anonymous grants apply from the upgrade on, without a {"op":"connect"} first
    /// (if they grant anything; /echo still needs a token).
    #[arg(long, env = "CORECAST_ANONYMOUS_WITHOUT_CONNECT")]
    pub anonymous_without_connect: bool,

    /// Verified tokens remembered (about 50 bytes each), so that a token seen again costs
    /// no signature check until it expires; at the bound the soonest to expire is dropped.
    /// 0 = no cache. At most 16777216.
    #[arg(long, env = "CORECAST_AUTH_TOKEN_CACHE", value_name = "ENTRIES",
          default_value_t = DEFAULT_TOKEN_CACHE)]
    pub auth_token_cache: usize,

    /// Topics that keep history, as PATTERN:COUNT:TTL_SECS (repeat the flag for several;
    /// the first that matches a topic applies): its last COUNT publications, each for TTL_SECS,
    /// numbered by an `offset` that clients resubscribe from (`recover`) and read (`history`).
    /// Patterns as --anonymous-subscribe (`*` one segment, `>` the rest), without {sub}.
    /// Default: none, and the protocol is unchanged. The environment variable holds one rule.
    #[arg(long, env = "CORECAST_HISTORY", value_name = "PATTERN:COUNT:TTL_SECS")]
    pub history: Vec<String>,

    /// Bytes of publications one history topic keeps at most (K/M/G suffixes allowed); past
    /// it its oldest go first.
    #[arg(long, env = "CORECAST_HISTORY_TOPIC_MAX_BYTES", value_name = "BYTES",
          default_value_t = DEFAULT_HISTORY_TOPIC_MAX_BYTES, value_parser = parse_byte_count)]
    pub history_topic_max_bytes: usize,

    /// Bytes all history together keeps at most (K/M/G suffixes allowed); past it the oldest
    /// publications of any topic go first (counted in corecast_history_trimmed_total).
    #[arg(long, env = "CORECAST_HISTORY_MAX_BYTES", value_name = "BYTES",
          default_value_t = DEFAULT_HISTORY_MAX_BYTES, value_parser = parse_byte_count)]
    pub history_max_bytes: usize,

    /// Most publications one recovery replays: a client further behind is told
    /// "recovered":false and reloads its state instead.
    #[arg(long, env = "CORECAST_HISTORY_MAX_RECOVER", value_name = "COUNT",
          default_value_t = DEFAULT_HISTORY_MAX_RECOVER)]
    pub history_max_recover: u64,

    /// Most publications one {"op":"history"} read returns, whatever its limit.
    #[arg(long, env = "CORECAST_HISTORY_MAX_LIMIT", value_name = "COUNT",
          default_value_t = DEFAULT_HISTORY_MAX_LIMIT)]
    pub history_max_limit: usize,
}

/// Parses a byte count: `1048576`, `512K`, `64M`, `4G` (powers of 1024; `KiB`/`MB` spellings
/// too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|e: std::num::ParseIntError| {
        if *e.kind() == std::num::IntErrorKind::PosOverflow {
            format!("{s:?} is too large")
        } else {
            format!("{s:?} is not a size like 4G, 512M or 1048576")
        }
    })?;
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

/// [`parse_size`] for the flags held as `usize`.
pub fn parse_byte_count(s: &str) -> Result<usize, String> {
    usize::try_from(parse_size(s)?).map_err(|_| format!("{s:?} is too large"))
}
