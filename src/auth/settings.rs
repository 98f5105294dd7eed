//! What the `--auth-*` and `--anonymous-*` flags say: part of [`Config`](crate::Config),
//! read on the main thread at start-up and kept by [`Auth`](super::Auth) for its reloads.
//!
//! Nothing here is secret: the HMAC secret stays in its file, and only the file's path is
//! held (and may be logged). A JWKS URL with credentials in it is refused by the
//! configuration (`config/validate.rs`), so the URL may be logged too.

use std::path::PathBuf;
use std::time::Duration;

/// Least time between two JWKS fetches that unknown `kid`s ask for: however many tokens
/// with unknown kids arrive, the JWKS URL is fetched at most once per this.
pub const DEFAULT_JWKS_REFRESH_INTERVAL_S: u64 = 30;
/// The JWKS is fetched again after this long even if no token asks for it, so that a key
/// its issuer withdrew stops being trusted within the hour.
pub const DEFAULT_JWKS_MAX_AGE_S: u64 = 3600;
/// Clock skew allowed for `exp` and `nbf`: a few seconds cover NTP-synchronised clocks.
pub const DEFAULT_LEEWAY_S: u64 = 5;
/// How long a client may take to present a token after the upgrade.
pub const DEFAULT_CONNECT_TIMEOUT_S: u64 = 10;
/// Verified tokens remembered (see `cache.rs`): a connect storm of 65,536 distinct tokens
/// costs one signature check each, and again only after their expiry. About 100 bytes an
/// entry, so 6-7 MiB when full.
pub const DEFAULT_TOKEN_CACHE: usize = 65_536;
/// The largest `--auth-token-cache`: 16 Mi entries are about 1.6 GiB.
pub const MAX_TOKEN_CACHE: usize = 1 << 24;

/// The auth flags, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--auth-hmac-secret-file`: HS256/384/512 with the file's bytes as the secret.
    pub hmac_secret_file: Option<PathBuf>,
    /// `--auth-public-key` (repeatable): one PEM public key per file (RSA, EC P-256 or
    /// P-384, Ed25519).
    pub public_keys: Vec<PathBuf>,
    /// `--auth-jwks`: a JWKS file, or an `http://` or `https://` URL.
    pub jwks: Option<String>,
    /// `--auth-jwks-refresh-interval`: least time between two fetches that unknown kids ask
    /// for. At least a second.
    pub jwks_refresh_interval: Duration,
    /// `--auth-jwks-max-age`: a JWKS URL is fetched again this long after the last success.
    pub jwks_max_age: Duration,
    /// `--auth-leeway`: allowed clock skew for `exp` and `nbf`.
    pub leeway: Duration,
    /// `--auth-audience`: when set, a token's `aud` must name it.
    pub audience: Option<String>,
    /// `--auth-issuer`: when set, a token's `iss` must be it.
    pub issuer: Option<String>,
    /// `--auth-connect-timeout`: how long a client may take to present its token.
    pub connect_timeout: Duration,
    /// `--auth-query-token`: accept `?token=` on the upgrade URL.
    pub query_token: bool,
    /// `--anonymous-subscribe` (repeatable): what connections without a token may subscribe to.
    pub anonymous_subscribe: Vec<String>,
    /// `--anonymous-publish` (repeatable): what connections without a token may publish to.
    pub anonymous_publish: Vec<String>,
    /// `--anonymous-without-connect`: anonymous grants apply from the upgrade on, without a
    /// `{"op":"connect"}` (if they grant anything; never on /echo).
    pub anonymous_without_connect: bool,
    /// `--auth-token-cache`: verified tokens remembered; 0 = no cache.
    pub token_cache: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hmac_secret_file: None,
            public_keys: Vec::new(),
            jwks: None,
            jwks_refresh_interval: Duration::from_secs(DEFAULT_JWKS_REFRESH_INTERVAL_S),
            jwks_max_age: Duration::from_secs(DEFAULT_JWKS_MAX_AGE_S),
            leeway: Duration::from_secs(DEFAULT_LEEWAY_S),
            audience: None,
            issuer: None,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_S),
            query_token: false,
            anonymous_subscribe: Vec::new(),
            anonymous_publish: Vec::new(),
            anonymous_without_connect: false,
            token_cache: DEFAULT_TOKEN_CACHE,
        }
    }
}

impl Settings {
    /// Whether any key source is configured, so that tokens can be verified at all.
    pub fn enabled(&self) -> bool {
        self.hmac_secret_file.is_some() || !self.public_keys.is_empty() || self.jwks.is_some()
    }

    /// The JWKS URL, when `--auth-jwks` is one (`http://` or `https://`); otherwise the
    /// JWKS, if any, is a file.
    pub fn jwks_url(&self) -> Option<&str> {
        self.jwks.as_deref().filter(|j| is_url(j))
    }
}

/// Whether a `--auth-jwks` value is a URL rather than a path.
pub fn is_url(jwks: &str) -> bool {
    let lower = jwks.get(..8).unwrap_or(jwks).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}
