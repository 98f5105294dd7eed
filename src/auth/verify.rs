//! PLACEHOLDER for the jwt branch's verifier (same interface); replaced at its merge.

use std::sync::Arc;
use std::time::Duration;

use super::grant::Grant;

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub hmac_secret_file: Option<std::path::PathBuf>,
    pub public_keys: Vec<std::path::PathBuf>,
    pub jwks: Option<String>,
    pub jwks_refresh_interval: Duration,
    pub leeway: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub connect_timeout: Duration,
    pub query_token: bool,
    pub anonymous_subscribe: Vec<String>,
    pub anonymous_publish: Vec<String>,
    pub anonymous_without_connect: bool,
    pub token_cache: usize,
}

impl Settings {
    pub fn enabled(&self) -> bool {
        self.hmac_secret_file.is_some() || !self.public_keys.is_empty() || self.jwks.is_some()
    }
}

#[derive(Debug)]
pub struct Verified {
    pub sub: Box<str>,
    pub exp: u64,
    pub grant: Arc<Grant>,
    pub topic: Option<Box<str>>,
}

impl PartialEq for Verified {
    fn eq(&self, o: &Verified) -> bool {
        self.sub == o.sub && self.exp == o.exp
    }
}
impl Eq for Verified {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed token",
            Refusal::BadSignature => "bad signature",
            Refusal::Expired => "token expired",
            Refusal::NotYetValid => "token not yet valid",
            Refusal::UnknownKey => "unknown key",
            Refusal::WrongAudience => "wrong audience",
            Refusal::WrongIssuer => "wrong issuer",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::UnknownKey => "unknown_key",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::WrongIssuer => "wrong_issuer",
        }
    }
}

#[derive(Debug)]
pub struct Auth {
    settings: Settings,
    anonymous: Arc<Grant>,
}

impl Auth {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    pub fn anonymous(&self) -> &Arc<Grant> {
        &self.anonymous
    }
    pub fn cached(&self, _token: &str, _now: u64) -> Option<Result<Arc<Verified>, Refusal>> {
        None
    }
    pub fn verify(&self, _token: &str, _now: u64) -> Result<Arc<Verified>, Refusal> {
        Err(Refusal::UnknownKey)
    }
}
