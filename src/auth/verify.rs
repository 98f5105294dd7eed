//! The token verifier, [`Auth`]: one per server, shared by every worker as `Arc<Auth>`. A
//! worker calls [`Auth::cached`] or [`Auth::verify`] when a token arrives (never per
//! message); the main thread calls [`Auth::reload`] on SIGHUP, and the control thread
//! installs what it fetched from a JWKS URL (`jwks.rs`).
//!
//! A token is checked in this order: its size, its header (`alg`, `kid`), the keys that may
//! have signed it (`keys.rs`: `alg` must fit the key's kind; `none` is no algorithm at all),
//! the signature (jsonwebtoken), `aud` and `iss` when configured, then `exp` and `nbf`
//! against the caller's clock with the leeway, and last the claims corecast reads (`sub`,
//! `topic`, the `corecast` grant). Every refusal is one [`Refusal`] class, whose text never
//! holds the token.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Deserializer};

use super::cache::{self, Cache, Hit};
use super::grant::{self, Grant, GrantError, Spec};
use super::jwks::JwksUrl;
use super::keys::{self, Candidates, Key, KeyError, KeySet};
use super::settings::Settings;

/// Longest token looked at, in bytes; a longer one is malformed without further work. Real
/// tokens are well under 2 KiB; this leaves room for a large grant.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest `sub`: an identity, not a document.
pub const MAX_SUB_LEN: usize = 1024;

/// What a token that passed says. Held by every connection that connected with it and by the
/// cache (one `Arc`), so it is kept small: 32 bytes, 48 with the `Arc`'s counts (a jemalloc
/// size class), and the `sub` (and a subscription token's `topic`) in one allocation.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// The `sub` claim, then a subscription token's `topic` claim, if any.
    names: Box<str>,
    /// The `corecast` claim compiled, shared with every token that carries the same one
    /// (nothing granted without it).
    pub grant: Arc<Grant>,
    /// The `exp` claim, unix seconds, saturated at `u32::MAX` (in 2106).
    exp: u32,
    /// Bytes of `names` that are the `sub` (at most [`MAX_SUB_LEN`]).
    sub_len: u16,
}

impl Verified {
    /// `sub` must be 1 to [`MAX_SUB_LEN`] bytes, `topic` (if any) non-empty.
    pub fn new(sub: &str, exp: u64, grant: Arc<Grant>, topic: Option<&str>) -> Verified {
        debug_assert!(!sub.is_empty() && sub.len() <= MAX_SUB_LEN);
        debug_assert!(topic.is_none_or(|t| !t.is_empty()));
        let mut names = String::with_capacity(sub.len() + topic.map_or(0, str::len));
        names.push_str(sub);
        names.push_str(topic.unwrap_or(""));
        Verified {
            names: names.into_boxed_str(),
            grant,
            exp: u32::try_from(exp).unwrap_or(u32::MAX),
            sub_len: sub.len() as u16,
        }
    }

    /// The `sub` claim: never empty.
    pub fn sub(&self) -> &str {
        &self.names[..usize::from(self.sub_len)]
    }

    /// A subscription token's `topic` claim (never empty), at most
    /// `protocol::MAX_TOPIC_LEN` bytes.
    pub fn topic(&self) -> Option<&str> {
        Some(&self.names[usize::from(self.sub_len)..]).filter(|t| !t.is_empty())
    }

    /// The `exp` claim, unix seconds (times past 2106 read as 2106).
    pub fn exp(&self) -> u64 {
        u64::from(self.exp)
    }
}

/// Why a token is refused: what the client is told, as a class. Never holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a JWT, an unknown `alg` (`none` included), or a claim corecast needs is missing
    /// or of the wrong type (`sub`, `exp`, `corecast`, `topic`).
    Malformed,
    /// No key held verifies the signature (or none could have made it: its `alg` fits no
    /// key, or its `kid` names a key of another kind).
    BadSignature,
    /// `exp` plus the leeway has passed.
    Expired,
    /// `nbf` less the leeway has not come yet.
    NotYetValid,
    /// Its `kid` names no key held (a JWKS URL is then fetched again, within its limits).
    UnknownKey,
    /// `--auth-audience` is set and `aud` does not name it (or is absent).
    WrongAudience,
    /// `--auth-issuer` is set and `iss` is not it (or is absent).
    WrongIssuer,
}

impl Refusal {
    /// Every class, in the order of [`AuthStats::verifications`] after `ok`.
    pub const ALL: [Refusal; 7] = [
        Refusal::Malformed,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::UnknownKey,
        Refusal::WrongAudience,
        Refusal::WrongIssuer,
    ];

    /// For the close reason or the 401 body.
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

    /// The metrics label.
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

    fn index(self) -> usize {
        1 + Refusal::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }
}

/// The verifier's counters, read by `/metrics` (`corecast_auth_*`).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Full checks (signature included) by outcome: `ok`, then [`Refusal::ALL`].
    verifications: [AtomicU64; 8],
    /// Verdicts answered from the cache.
    pub cache_hits: AtomicU64,
    /// JWKS URL fetches that brought a usable document.
    pub jwks_fetches_ok: AtomicU64,
    /// JWKS URL fetches that failed (the keys held stay).
    pub jwks_fetches_failed: AtomicU64,
    /// SIGHUP reloads of the key files that succeeded.
    pub reloads_ok: AtomicU64,
    /// SIGHUP reloads that failed (the keys held stay).
    pub reloads_failed: AtomicU64,
}

impl AuthStats {
    /// Full checks by outcome label: `ok`, then each [`Refusal::label`].
    pub fn verifications(&self) -> Vec<(&'static str, u64)> {
        std::iter::once("ok")
            .chain(Refusal::ALL.iter().map(|r| r.label()))
            .zip(&self.verifications)
            .map(|(l, n)| (l, n.load(Relaxed)))
            .collect()
    }

    fn count(&self, outcome: Result<(), Refusal>) {
        let i = outcome.err().map_or(0, Refusal::index);
        self.verifications[i].fetch_add(1, Relaxed);
    }
}

/// The claims corecast reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(deserialize_with = "numeric_date")]
    exp: u64,
    #[serde(default, deserialize_with = "optional_numeric_date")]
    nbf: Option<u64>,
    #[serde(default)]
    corecast: Option<serde_json::Value>,
    #[serde(default)]
    topic: Option<String>,
}

/// A NumericDate (RFC 7519 section 2): seconds, possibly fractional, never negative.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        })
        .ok_or_else(|| serde::de::Error::custom("not a NumericDate"))
}

fn optional_numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    numeric_date(d).map(Some)
}

/// A JWKS URL fetch that unknown kids or SIGHUP asked for, coalesced: however many ask,
/// one flag and one notification, never a queue.
#[derive(Debug, Default)]
pub(super) struct Refetch {
    pub(super) wanted: AtomicBool,
    /// SIGHUP: fetch now, whatever the refresh interval says.
    pub(super) forced: AtomicBool,
    pub(super) notify: tokio::sync::Notify,
}

/// What the key set is made of. Locked only to change it (SIGHUP, a JWKS fetch).
#[derive(Debug, Default)]
struct Sources {
    /// From the HMAC secret file, the PEM files and a JWKS file.
    files: Vec<Arc<Key>>,
    /// From the JWKS URL's last good fetch.
    fetched: Vec<Arc<Key>>,
}

/// The verifier.
pub struct Auth {
    settings: Settings,
    anonymous: Arc<Grant>,
    /// What the workers verify with, read without a lock.
    keys: ArcSwap<KeySet>,
    sources: Mutex<Sources>,
    cache: Cache,
    /// One per algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    stats: AuthStats,
    jwks_url: Option<JwksUrl>,
    pub(super) refetch: Refetch,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys' kinds and sources only: never key material.
        f.debug_struct("Auth")
            .field("settings", &self.settings)
            .field("keys", &*self.keys.load())
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What jsonwebtoken checks for `alg`: the signature, and `aud`/`iss` when configured
/// (then required). `exp` and `nbf` are checked here against the caller's clock instead.
fn validation(settings: &Settings, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.required_spec_claims = HashSet::new();
    v.validate_aud = settings.audience.is_some();
    if let Some(aud) = &settings.audience {
        v.set_audience(&[aud]);
        v.required_spec_claims.insert("aud".into());
    }
    if let Some(iss) = &settings.issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".into());
    }
    v
}

/// The class of a jsonwebtoken error; `BadSignature` means "another key may still fit".
fn refusal_of(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => Refusal::Malformed,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => Refusal::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => Refusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(_) => Refusal::Malformed,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        // InvalidSignature, and a key this algorithm cannot use.
        _ => Refusal::BadSignature,
    }
}

/// The key files' keys (the HMAC secret, the PEM files, a JWKS file), with a warning
/// logged for each JWKS entry left out.
fn load_files(settings: &Settings) -> Result<Vec<Arc<Key>>, KeyError> {
    let mut keys = Vec::new();
    if let Some(path) = &settings.hmac_secret_file {
        keys.push(Arc::new(keys::hmac_secret(path)?));
    }
    for path in &settings.public_keys {
        keys.push(Arc::new(keys::pem_public_key(path)?));
    }
    if let Some(jwks) = settings
        .jwks
        .as_deref()
        .filter(|j| !super::settings::is_url(j))
    {
        let path = std::path::Path::new(jwks);
        let got = keys::jwks_file(path)?;
        log_skipped(&format!("--auth-jwks {}", path.display()), &got.skipped);
        keys.extend(got.keys.into_iter().map(Arc::new));
    }
    Ok(keys)
}

/// Warns of the JWKS entries that were left out.
pub(super) fn log_skipped(source: &str, skipped: &[String]) {
    if !skipped.is_empty() {
        log::warn!(
            "{source}: {} key(s) left out: {}",
            skipped.len(),
            skipped.join("; ")
        );
    }
}

impl Auth {
    /// Loads the key files. A JWKS URL is fetched later by the control thread
    /// (`jwks::run`); until its first fetch succeeds, tokens for its keys are
    /// [`Refusal::UnknownKey`]. Errors name the file and the problem, never a secret.
    pub fn new(settings: &Settings) -> Result<Auth, KeyError> {
        let anonymous =
            Grant::anonymous(&settings.anonymous_subscribe, &settings.anonymous_publish)
                .map_err(KeyError::Anonymous)?;
        let jwks_url = match settings.jwks_url() {
            Some(u) => Some(JwksUrl::parse(u).map_err(|problem| KeyError::BadKey {
                from: "--auth-jwks".into(),
                problem,
            })?),
            None => None,
        };
        let files = load_files(settings)?;
        let set = KeySet::new(files.clone())?;
        Ok(Auth {
            settings: settings.clone(),
            anonymous: Arc::new(anonymous),
            keys: ArcSwap::from_pointee(set),
            sources: Mutex::new(Sources {
                files,
                fetched: Vec::new(),
            }),
            // Kept a while past its expiry, so that a client that retries an expired token
            // is told so from the cache, without a signature check.
            cache: Cache::new(
                settings.token_cache,
                settings
                    .leeway
                    .as_secs()
                    .saturating_add(cache::REFUSAL_TTL_S),
            ),
            validations: ALGORITHMS
                .iter()
                .map(|&a| (a, validation(settings, a)))
                .collect(),
            stats: AuthStats::default(),
            jwks_url,
            refetch: Refetch::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The grant of connections without a token (`--anonymous-subscribe`,
    /// `--anonymous-publish`).
    pub fn anonymous(&self) -> &Arc<Grant> {
        &self.anonymous
    }

    pub fn stats(&self) -> &AuthStats {
        &self.stats
    }

    /// Keys held now, from every source.
    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// Verdicts in the cache now.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// The JWKS URL the control thread fetches, if `--auth-jwks` is one.
    pub fn jwks_url(&self) -> Option<&JwksUrl> {
        self.jwks_url.as_ref()
    }

    /// Cache only, no signature check: `Some` if this token's verdict is cached. A cached
    /// acceptance is checked again against `now` (unix seconds): `exp` + leeway, `nbf` -
    /// leeway.
    pub fn cached(&self, token: &str, now: u64) -> Option<Result<Arc<Verified>, Refusal>> {
        let hit = self.cache.get(&cache::digest(token), now)?;
        self.stats.cache_hits.fetch_add(1, Relaxed);
        Some(self.recheck(hit, now))
    }

    /// The full check, the cache consulted first and given the verdict after. `now` is
    /// unix seconds (tests pass their own clock).
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Verified>, Refusal> {
        let digest = cache::digest(token);
        if let Some(hit) = self.cache.get(&digest, now) {
            self.stats.cache_hits.fetch_add(1, Relaxed);
            return self.recheck(hit, now);
        }
        // The generation before the keys: a verdict reached with keys that were replaced
        // meanwhile is then not cached (see `Cache::insert`).
        let generation = self.cache.generation();
        let keys = self.keys.load();
        let outcome = self.check(token, now, &keys);
        self.stats.count(outcome.as_ref().map(drop).map_err(|r| *r));
        match outcome {
            Ok(verified) => {
                self.cache.accept(digest, generation, verified.clone(), now);
                Ok(verified)
            }
            Err(r) => {
                if r == Refusal::UnknownKey {
                    self.ask_refetch();
                }
                self.cache.refuse(digest, generation, r, now);
                Err(r)
            }
        }
    }

    /// Reads the key files again (SIGHUP). On an error the keys held stay, and the error is
    /// returned; a JWKS URL is fetched again either way (by the control thread, soon after).
    pub fn reload(&self) -> Result<(), KeyError> {
        let outcome = load_files(&self.settings).and_then(|files| {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            let all = files.iter().chain(&sources.fetched).cloned().collect();
            self.install(KeySet::new(all)?);
            sources.files = files;
            Ok(())
        });
        match &outcome {
            Ok(()) => self.stats.reloads_ok.fetch_add(1, Relaxed),
            Err(_) => self.stats.reloads_failed.fetch_add(1, Relaxed),
        };
        if self.jwks_url.is_some() {
            self.refetch.forced.store(true, Relaxed);
            self.refetch.wanted.store(true, Relaxed);
            self.refetch.notify.notify_one();
        }
        outcome
    }

    /// Replaces the JWKS URL's keys with `fetched` (the control thread, after a good
    /// fetch). Returns whether the key set changed; on an error the keys held stay.
    pub(super) fn install_fetched(&self, fetched: Vec<Key>) -> Result<bool, KeyError> {
        let fetched: Vec<Arc<Key>> = fetched.into_iter().map(Arc::new).collect();
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let all = sources.files.iter().chain(&fetched).cloned().collect();
        let changed = self.install(KeySet::new(all)?);
        sources.fetched = fetched;
        Ok(changed)
    }

    /// Makes `set` the one workers verify with; empties the cache if its keys differ from
    /// the current ones, so that a key removed admits nothing more. Called with `sources`
    /// locked.
    fn install(&self, set: KeySet) -> bool {
        let changed = !self.keys.load().same_keys(&set);
        self.keys.store(Arc::new(set));
        if changed {
            self.cache.clear();
        }
        changed
    }

    /// Asks the control thread for a JWKS fetch (a token named an unknown kid). The first
    /// ask since the last fetch began notifies; the others only find the flag set.
    fn ask_refetch(&self) {
        if self.jwks_url.is_some() && !self.refetch.wanted.swap(true, Relaxed) {
            self.refetch.notify.notify_one();
        }
    }

    fn leeway(&self) -> u64 {
        self.settings.leeway.as_secs()
    }

    /// A cached verdict as of `now`.
    fn recheck(&self, hit: Hit, now: u64) -> Result<Arc<Verified>, Refusal> {
        match hit {
            Hit::Refused(r) => Err(r),
            // Its `nbf` was passed when it was accepted, and stays so.
            Hit::Accepted(verified) => {
                self.in_time(verified.exp(), None, now)?;
                Ok(verified)
            }
        }
    }

    /// `exp` and `nbf` against `now`, with the leeway.
    fn in_time(&self, exp: u64, nbf: Option<u64>, now: u64) -> Result<(), Refusal> {
        if exp.saturating_add(self.leeway()) < now {
            return Err(Refusal::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway())) {
            return Err(Refusal::NotYetValid);
        }
        Ok(())
    }

    /// The check itself, without the cache.
    fn check(&self, token: &str, now: u64, keys: &KeySet) -> Result<Arc<Verified>, Refusal> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refusal::Malformed);
        }
        // An `alg` jsonwebtoken does not know (`none` among them) fails here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let candidates = match keys.candidates(header.alg, header.kid.as_deref()) {
            Candidates::Try(keys) => keys,
            Candidates::UnknownKid => return Err(Refusal::UnknownKey),
            Candidates::NoneFits => return Err(Refusal::BadSignature),
        };
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == header.alg)
            .map(|(_, v)| v)
            .ok_or(Refusal::Malformed)?;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, validation) {
                Ok(data) => return self.claims(data.claims, now),
                Err(e) => match refusal_of(e.kind()) {
                    // Another key may have signed it.
                    Refusal::BadSignature => continue,
                    // The same whichever key: it is the token that is wrong.
                    r => return Err(r),
                },
            }
        }
        Err(Refusal::BadSignature)
    }

    /// The claims of a token whose signature (and `aud`, `iss`) passed.
    fn claims(&self, c: Claims, now: u64) -> Result<Arc<Verified>, Refusal> {
        self.in_time(c.exp, c.nbf, now)?;
        if c.sub.is_empty() || c.sub.len() > MAX_SUB_LEN {
            return Err(Refusal::Malformed);
        }
        if c.topic
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > crate::protocol::MAX_TOPIC_LEN)
        {
            return Err(Refusal::Malformed);
        }
        let spec = match &c.corecast {
            None => Spec::default(),
            Some(v) => grant::spec_of(v).map_err(|_| Refusal::Malformed)?,
        };
        let grant = grant::interner()
            .intern(spec)
            .map_err(|_: GrantError| Refusal::Malformed)?;
        Ok(Arc::new(Verified::new(
            &c.sub,
            c.exp,
            grant,
            c.topic.as_deref(),
        )))
    }
}
