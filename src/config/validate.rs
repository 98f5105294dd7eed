//! [`Args`] -> a validated [`Config`]: bounds on every value, and the defaults that follow
//! the values the user set. Runs on the main thread at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use super::{
    default_workers, Args, Config, Given, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_MESSAGE,
    DEFAULT_MAX_OUTBOUND, DEFAULT_MESSAGE_TIMEOUT_S, DEFAULT_PING_INTERVAL_S, MAX_MESSAGE_CEILING,
    MAX_OUTBOUND_CEILING, MAX_TIMEOUT_S, MESSAGE_ENVELOPE,
};
use crate::auth::settings::{is_url, MAX_TOKEN_CACHE};
use crate::auth::{Grant, GrantError, Settings};
use crate::conn::TlsFiles;

/// A flag combination that cannot work. Only values the user set can conflict: a default
/// that would follow the ones given instead (see [`Args::into_config`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    History(#[from] crate::history::RuleError),
    #[error(
        "--history with --redis is not supported yet: each node would number a topic's \
         publications on its own (see docs/history.md)"
    )]
    HistoryWithRedis,
    #[error("--{0} must be greater than 0")]
    Zero(&'static str),
    #[error("--{name} ({value} s) is too long: at most {max} s")]
    TooLong {
        name: &'static str,
        value: u64,
        max: u64,
    },
    #[error(
        "--idle-timeout ({0} s) is too short: at least 2 s, so that --ping-interval and \
         --message-timeout (1 s at the least) fit below it"
    )]
    IdleTooShort(u64),
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
        "--max-message-size ({0}) is too large: at most {MAX_MESSAGE_CEILING}, so that one \
         message with its framing fits the largest --max-outbound-bytes ({MAX_OUTBOUND_CEILING})"
    )]
    MessageTooLarge(usize),
    #[error(
        "--max-outbound-bytes ({outbound}) cannot hold one message of --max-message-size \
         ({message}) with its framing: it must be at least {need}"
    )]
    OutboundTooSmall {
        outbound: usize,
        message: usize,
        need: usize,
    },
    #[error(
        "--max-outbound-bytes ({0}) leaves no room for a message: a message's framing alone \
         takes {MESSAGE_ENVELOPE}"
    )]
    OutboundNoRoom(usize),
    #[error("--max-outbound-bytes ({0}) must be at most {MAX_OUTBOUND_CEILING}")]
    OutboundTooLarge(usize),
    #[error("--message-timeout ({message} s) must be shorter than --idle-timeout ({idle} s)")]
    MessageTimeoutTooLong { message: u64, idle: u64 },
    #[error("--{0} must not be empty")]
    Empty(&'static str),
    #[error("--auth-jwks: {0}")]
    JwksUrl(String),
    #[error("--auth-token-cache ({0}) is too large: at most {MAX_TOKEN_CACHE}")]
    TokenCacheTooLarge(usize),
    #[error("--anonymous-subscribe/--anonymous-publish: {0}")]
    Anonymous(GrantError),
}

/// `ping` scaled in the default's proportion of idle timeout to ping interval, rounded up.
fn idle_for_ping(ping: u64) -> u64 {
    // ping < MAX_TIMEOUT_S here: the product is far from overflowing.
    (ping * DEFAULT_IDLE_TIMEOUT_S).div_ceil(DEFAULT_PING_INTERVAL_S)
}

impl Args {
    /// Validates, and derives the defaults that must follow what `given` set; returns the
    /// configuration and one line per derived default, for the start-up log.
    pub fn into_config(mut self, given: &Given) -> Result<(Config, Vec<String>), ConfigError> {
        for (name, v) in [
            ("max-message-size", self.max_message_size as u64),
            ("max-subscriptions", self.max_subscriptions as u64),
            ("max-outbound-bytes", self.max_outbound_bytes as u64),
            ("handshake-timeout", self.handshake_timeout),
            ("ping-interval", self.ping_interval),
            ("backpressure-timeout", self.backpressure_timeout),
            ("message-timeout", self.message_timeout),
            (
                "auth-jwks-refresh-interval",
                self.auth_jwks_refresh_interval,
            ),
            ("auth-jwks-max-age", self.auth_jwks_max_age),
            ("auth-connect-timeout", self.auth_connect_timeout),
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
        // The ping interval and the message timeout must fit below an idle timeout that is
        // itself at most a day.
        for (name, value, max) in [
            ("handshake-timeout", self.handshake_timeout, MAX_TIMEOUT_S),
            ("ping-interval", self.ping_interval, MAX_TIMEOUT_S - 1),
            ("idle-timeout", self.idle_timeout, MAX_TIMEOUT_S),
            ("drain-timeout", self.drain_timeout, MAX_TIMEOUT_S),
            (
                "backpressure-timeout",
                self.backpressure_timeout,
                MAX_TIMEOUT_S,
            ),
            ("message-timeout", self.message_timeout, MAX_TIMEOUT_S - 1),
            ("stats-interval", self.stats_interval, MAX_TIMEOUT_S),
            (
                "auth-jwks-refresh-interval",
                self.auth_jwks_refresh_interval,
                MAX_TIMEOUT_S,
            ),
            ("auth-jwks-max-age", self.auth_jwks_max_age, MAX_TIMEOUT_S),
            ("auth-leeway", self.auth_leeway, MAX_TIMEOUT_S),
            (
                "auth-connect-timeout",
                self.auth_connect_timeout,
                MAX_TIMEOUT_S,
            ),
        ] {
            if value > max {
                return Err(ConfigError::TooLong { name, value, max });
            }
        }
        if self.max_message_size > MAX_MESSAGE_CEILING {
            return Err(ConfigError::MessageTooLarge(self.max_message_size));
        }
        if self.max_outbound_bytes > MAX_OUTBOUND_CEILING {
            return Err(ConfigError::OutboundTooLarge(self.max_outbound_bytes));
        }
        let mut derived = Vec::new();

        // Timers: ping interval < idle timeout, message timeout < idle timeout.
        let (mut ping, mut idle, mut message) =
            (self.ping_interval, self.idle_timeout, self.message_timeout);
        if given.has("idle_timeout") {
            if idle < 2 {
                return Err(ConfigError::IdleTooShort(idle));
            }
            if !given.has("ping_interval") && ping >= idle {
                ping = (idle * DEFAULT_PING_INTERVAL_S / DEFAULT_IDLE_TIMEOUT_S).max(1);
                derived.push(format!(
                    "--ping-interval not set: {ping} s instead of {DEFAULT_PING_INTERVAL_S} s, \
                     below --idle-timeout ({idle} s) in the defaults' proportion"
                ));
            }
            if !given.has("message_timeout") && message >= idle {
                message = idle - 1;
                derived.push(format!(
                    "--message-timeout not set: {message} s instead of \
                     {DEFAULT_MESSAGE_TIMEOUT_S} s, below --idle-timeout ({idle} s)"
                ));
            }
        } else {
            // Both are below MAX_TIMEOUT_S, so the sum cannot overflow and `need` fits the
            // bound on the idle timeout once capped.
            let need = idle_for_ping(ping).max(message + 1).min(MAX_TIMEOUT_S);
            if need > idle {
                idle = need;
                derived.push(format!(
                    "--idle-timeout not set: {idle} s instead of {DEFAULT_IDLE_TIMEOUT_S} s, to \
                     stay above --ping-interval ({ping} s) in the defaults' proportion and \
                     above --message-timeout ({message} s)"
                ));
            }
        }
        if message >= idle {
            return Err(ConfigError::MessageTimeoutTooLong { message, idle });
        }
        if idle <= ping {
            return Err(ConfigError::IdleBeforePing { idle, ping });
        }

        // Sizes: one message with its framing fits the outbound bound.
        let (mut max_message, mut outbound) = (self.max_message_size, self.max_outbound_bytes);
        let need = |m: usize| {
            m.checked_add(MESSAGE_ENVELOPE)
                .ok_or(ConfigError::MessageTooLarge(m))
        };
        if !given.has("max_outbound_bytes") {
            // At most MAX_OUTBOUND_CEILING, as max_message is at most MAX_MESSAGE_CEILING.
            let fits = need(max_message)?;
            if fits > outbound {
                outbound = fits;
                derived.push(format!(
                    "--max-outbound-bytes not set: {outbound} instead of {DEFAULT_MAX_OUTBOUND}, \
                     to hold one --max-message-size ({max_message}) message with its framing"
                ));
            }
        } else if !given.has("max_message_size") && need(max_message)? > outbound {
            max_message = outbound
                .checked_sub(MESSAGE_ENVELOPE)
                .filter(|&m| m > 0)
                .ok_or(ConfigError::OutboundNoRoom(outbound))?;
            derived.push(format!(
                "--max-message-size not set: {max_message} instead of {DEFAULT_MAX_MESSAGE}, \
                 so that one message with its framing fits --max-outbound-bytes ({outbound})"
            ));
        }
        let fits = need(max_message)?;
        if outbound < fits {
            return Err(ConfigError::OutboundTooSmall {
                outbound,
                message: max_message,
                need: fits,
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
        let auth = self.auth_settings()?;
        let history = self.history_limits()?;
        let config = Config {
            listen: self.listen,
            workers: if self.workers == 0 {
                default_workers()
            } else {
                self.workers
            },
            pin: !self.no_pin,
            max_message_size: max_message,
            max_frame_size: self.max_frame_size.unwrap_or(max_message).min(max_message),
            max_subscriptions: self.max_subscriptions,
            max_outbound_bytes: outbound,
            slow_consumer: self.slow_consumer,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_connection_rate_per_ip: self.max_connection_rate_per_ip,
            connection_rate_burst: self.connection_rate_burst,
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            ping_interval: Duration::from_secs(ping),
            idle_timeout: Duration::from_secs(idle),
            drain_timeout: Duration::from_secs(self.drain_timeout),
            backpressure_timeout: Duration::from_secs(self.backpressure_timeout),
            message_timeout: Duration::from_secs(message),
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
            rate: super::RateLimits {
                messages_per_sec: self.max_messages_per_sec,
                bytes_per_sec: self.max_bytes_per_sec as u64,
                burst_secs: self.rate_limit_burst,
                policy: self.rate_limit_policy,
            },
            auth,
            history,
        };
        Ok((config, derived))
    }

    /// The history flags, checked: every rule parsed (a bad one stops the start with its
    /// text), and no bound 0.
    fn history_limits(&mut self) -> Result<crate::history::stream::Limits, ConfigError> {
        let rules = crate::history::Rules::parse(&self.history)?;
        if !rules.is_empty() && self.redis.is_some() {
            return Err(ConfigError::HistoryWithRedis);
        }
        for (name, v) in [
            (
                "history-topic-max-bytes",
                self.history_topic_max_bytes as u64,
            ),
            ("history-max-bytes", self.history_max_bytes as u64),
            ("history-max-recover", self.history_max_recover),
            ("history-max-limit", self.history_max_limit as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(crate::history::stream::Limits {
            rules: std::sync::Arc::new(rules),
            topic_max_bytes: self.history_topic_max_bytes,
            max_bytes: self.history_max_bytes,
            max_recover: self.history_max_recover,
            max_read: self.history_max_limit,
        })
    }

    /// The auth flags, checked: a JWKS URL's form, the anonymous patterns compiled (a bad
    /// one, or one naming `{sub}`, is refused here with its text), the cache's bound.
    /// Timeouts were bounded with the others; key files are read when the server starts.
    fn auth_settings(&mut self) -> Result<Settings, ConfigError> {
        for (name, v) in [
            ("auth-jwks", &self.auth_jwks),
            ("auth-audience", &self.auth_audience),
            ("auth-issuer", &self.auth_issuer),
        ] {
            if v.as_deref() == Some("") {
                return Err(ConfigError::Empty(name));
            }
        }
        if let Some(url) = self.auth_jwks.as_deref().filter(|j| is_url(j)) {
            crate::auth::jwks::JwksUrl::parse(url).map_err(ConfigError::JwksUrl)?;
        }
        if self.auth_token_cache > MAX_TOKEN_CACHE {
            return Err(ConfigError::TokenCacheTooLarge(self.auth_token_cache));
        }
        Grant::anonymous(&self.anonymous_subscribe, &self.anonymous_publish)
            .map_err(ConfigError::Anonymous)?;
        Ok(Settings {
            hmac_secret_file: self.auth_hmac_secret_file.take(),
            public_keys: std::mem::take(&mut self.auth_public_key),
            jwks: self.auth_jwks.take(),
            jwks_refresh_interval: Duration::from_secs(self.auth_jwks_refresh_interval),
            jwks_max_age: Duration::from_secs(self.auth_jwks_max_age),
            leeway: Duration::from_secs(self.auth_leeway),
            audience: self.auth_audience.take(),
            issuer: self.auth_issuer.take(),
            connect_timeout: Duration::from_secs(self.auth_connect_timeout),
            query_token: self.auth_query_token,
            anonymous_subscribe: std::mem::take(&mut self.anonymous_subscribe),
            anonymous_publish: std::mem::take(&mut self.anonymous_publish),
            anonymous_without_connect: self.anonymous_without_connect,
            token_cache: self.auth_token_cache,
        })
    }
}
