//! [`Args`] -> a validated [`Config`]. Runs on the main thread at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use super::{default_workers, Args, Config, MAX_OUTBOUND_CEILING, MESSAGE_ENVELOPE};
use crate::conn::TlsFiles;

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
