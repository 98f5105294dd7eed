//! The keys tokens are verified with: read from the HMAC secret file, PEM public keys and
//! JWKS documents into one [`KeySet`], which the workers read without a lock. Loading runs on
//! the main thread (start-up, SIGHUP) and on the control thread (a fetched JWKS); nothing
//! here runs per token except [`KeySet::candidates`].
//!
//! Every key has a [`KeyKind`] that fixes the algorithms it may verify, so that `alg` in a
//! token can only pick among those: an HS256 token is never checked against an RSA key's
//! bytes, an ES384 token never against a P-256 key. Each key is checked when it is loaded
//! (an RSA modulus of 2048 to 8192 bits, an EC point on its curve, the curve a PEM's SPKI
//! names), so that a key that could never verify is refused at once, not token by token.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{self as sig, ParsedPublicKey};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use rustls::pki_types::pem::{self, SectionKind};

/// Keys held at once, from all sources together. A token without a `kid` is tried against
/// every kid-less key of its algorithm's kind, so this bounds the signature checks one token
/// can cost (32 RSA checks are about 0.6 ms).
pub const MAX_KEYS: usize = 32;

/// Shortest HMAC secret: RFC 7518 section 3.2 requires a key at least as long as the hash
/// output, 32 bytes for HS256.
pub const MIN_HMAC_SECRET: usize = 32;

/// Largest key file read (PEM, secret or JWKS file); a JWKS fetched over HTTP has the same
/// bound (`jwks.rs`). Real ones are a few KiB.
pub const MAX_KEY_FILE: u64 = 1 << 20;

/// RSA moduli aws-lc verifies with (its `RSA_*_2048_8192_*` algorithms), in bits.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// What a key is, and so which algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A shared secret: HS256, HS384, HS512.
    Hmac,
    /// RS256/384/512 and PS256/384/512.
    Rsa,
    /// ES256 only.
    EcP256,
    /// ES384 only.
    EcP384,
    /// EdDSA.
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` may be checked with a key of this kind.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC",
            KeyKind::Rsa => "RSA",
            KeyKind::EcP256 => "EC P-256",
            KeyKind::EcP384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
        }
    }
}

/// One key, ready to verify with.
pub struct Key {
    /// The JWK's `kid`; `None` for PEM files, the HMAC secret and JWKs without one.
    pub kid: Option<Box<str>>,
    pub kind: KeyKind,
    /// A JWK's `alg`, when it names one: the key then verifies that algorithm only.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
    /// Where it came from, for logs and errors: a path or a URL, never key material.
    pub source: String,
    /// SHA-256 over kind, alg, kid and key material: tells whether a reload changed the key
    /// set without keeping a second copy of a secret.
    fingerprint: [u8; 32],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No key material, not even the fingerprint: it is a hash of the HMAC secret.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .field("source", &self.source)
            .finish()
    }
}

impl Key {
    fn new(
        kid: Option<Box<str>>,
        kind: KeyKind,
        alg: Option<Algorithm>,
        decoding: DecodingKey,
        source: String,
    ) -> Key {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(kind.name().as_bytes());
        ctx.update(format!("|{alg:?}|").as_bytes());
        ctx.update(kid.as_deref().unwrap_or("").as_bytes());
        ctx.update(b"|");
        match decoding.kind() {
            DecodingKeyKind::SecretOrDer(b) => ctx.update(b),
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                ctx.update(n);
                ctx.update(b"|");
                ctx.update(e);
            }
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(ctx.finish().as_ref());
        Key {
            kid,
            kind,
            alg,
            decoding,
            source,
            fingerprint,
        }
    }

    /// Whether a token with `alg` may be checked with this key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Why a key source cannot be used. The text names the file or URL and the problem, never a
/// secret's bytes nor a key's.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {MAX_KEY_FILE} bytes", .0.display())]
    TooLarge(PathBuf),
    #[error(
        "--auth-hmac-secret-file {}: the secret is shorter than {MIN_HMAC_SECRET} bytes \
         (RFC 7518 requires at least the hash's length)", .0.display()
    )]
    ShortSecret(PathBuf),
    #[error(
        "--auth-public-key {}: holds a private key; give its public key \
         (openssl pkey -in KEY -pubout)", .0.display()
    )]
    PrivateKey(PathBuf),
    #[error("--auth-public-key {}: no PEM public key in it (expected \"BEGIN PUBLIC KEY\")", .0.display())]
    NoPublicKey(PathBuf),
    #[error("--auth-public-key {}: more than one key in it (one key per file)", .0.display())]
    SeveralKeys(PathBuf),
    #[error("{from}: {problem}")]
    BadKey { from: String, problem: String },
    #[error("{from}: not a JWKS (a JSON object with a \"keys\" array): {problem}")]
    NotJwks { from: String, problem: String },
    #[error("more than {MAX_KEYS} keys ({0} from all sources together)")]
    TooManyKeys(usize),
    #[error("anonymous grant: {0}")]
    Anonymous(super::grant::GrantError),
    #[error("key id {kid:?} appears twice ({first} and {second})")]
    DuplicateKid {
        kid: String,
        first: String,
        second: String,
    },
}

fn bad(source: &str, problem: impl Into<String>) -> KeyError {
    KeyError::BadKey {
        from: source.to_owned(),
        problem: problem.into(),
    }
}

/// Reads a key file, at most [`MAX_KEY_FILE`] bytes.
fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    let err = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    f.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::TooLarge(path.to_owned()));
    }
    Ok(bytes)
}

/// The HMAC secret: the file's bytes, less one trailing newline (`echo secret > file`).
pub fn hmac_secret(path: &Path) -> Result<Key, KeyError> {
    let mut bytes = read(path)?;
    for end in [&b"\r\n"[..], b"\n"] {
        if bytes.ends_with(end) {
            bytes.truncate(bytes.len() - end.len());
            break;
        }
    }
    if bytes.len() < MIN_HMAC_SECRET {
        return Err(KeyError::ShortSecret(path.to_owned()));
    }
    let key = DecodingKey::from_secret(&bytes);
    // The DecodingKey zeroes its own copy when dropped; this one goes now.
    bytes.iter_mut().for_each(|b| *b = 0);
    Ok(Key::new(
        None,
        KeyKind::Hmac,
        None,
        key,
        format!("--auth-hmac-secret-file {}", path.display()),
    ))
}

/// One PEM public key (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`) from `path`.
pub fn pem_public_key(path: &Path) -> Result<Key, KeyError> {
    let bytes = read(path)?;
    let source = format!("--auth-public-key {}", path.display());
    let mut spki = Vec::new();
    let mut rd = &bytes[..];
    loop {
        match pem::from_buf(&mut rd) {
            Ok(Some((SectionKind::PublicKey, der))) => spki.push(der),
            Ok(Some((
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey,
                _,
            ))) => return Err(KeyError::PrivateKey(path.to_owned())),
            Ok(Some(_)) => {} // a certificate or the like: not a key to verify with
            Ok(None) => break,
            Err(e) => return Err(bad(&source, format!("not PEM: {e}"))),
        }
    }
    if spki.len() > 1 {
        return Err(KeyError::SeveralKeys(path.to_owned()));
    }
    let Some(spki) = spki.pop() else {
        // rustls' PEM reader skips PKCS#1 "RSA PUBLIC KEY" sections; jsonwebtoken reads them.
        let key = DecodingKey::from_rsa_pem(&bytes)
            .map_err(|_| KeyError::NoPublicKey(path.to_owned()))?;
        check_rsa(&source, key.as_bytes())?;
        return Ok(Key::new(None, KeyKind::Rsa, None, key, source));
    };
    // The SPKI's algorithm and curve identifiers decide the kind: aws-lc parses the DER and
    // refuses an EC key whose named curve is not the one asked for.
    let kind = if ParsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &spki).is_ok() {
        KeyKind::EcP256
    } else if ParsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, &spki).is_ok() {
        KeyKind::EcP384
    } else if ParsedPublicKey::new(&sig::ED25519, &spki).is_ok() {
        KeyKind::Ed25519
    } else if aws_lc_rs::rsa::PublicKey::from_der(&spki).is_ok() {
        check_rsa(&source, &spki)?;
        KeyKind::Rsa
    } else {
        return Err(bad(
            &source,
            "not an RSA, EC P-256, EC P-384 or Ed25519 public key",
        ));
    };
    let decoding = match kind {
        KeyKind::Rsa => DecodingKey::from_rsa_pem(&bytes),
        KeyKind::EcP256 | KeyKind::EcP384 => DecodingKey::from_ec_pem(&bytes),
        KeyKind::Ed25519 => DecodingKey::from_ed_pem(&bytes),
        KeyKind::Hmac => unreachable!("no PEM is an HMAC key"),
    }
    .map_err(|e| bad(&source, e.to_string()))?;
    Ok(Key::new(None, kind, None, decoding, source))
}

/// An RSA public key (PKCS#1 or SPKI DER) that aws-lc will verify with.
fn check_rsa(source: &str, der: &[u8]) -> Result<(), KeyError> {
    let key = aws_lc_rs::rsa::PublicKey::from_der(der)
        .map_err(|_| bad(source, "not a valid RSA public key"))?;
    let bits = key.modulus().big_endian_without_leading_zero().len() * 8;
    if !RSA_BITS.contains(&bits) {
        return Err(bad(
            source,
            format!("an RSA key of about {bits} bits: 2048 to 8192 are verified"),
        ));
    }
    Ok(())
}

/// What a JWKS document gave: its usable keys, and a line for each entry left out.
#[derive(Debug, Default)]
pub struct JwksKeys {
    pub keys: Vec<Key>,
    pub skipped: Vec<String>,
}

/// The keys of a JWKS document (`{"keys": [...]}`) from `source` (a path or a URL, for
/// messages). Entries corecast cannot use (encryption keys, other curves, symmetric keys,
/// broken values) are left out and listed, so that an issuer's new kind of key does not stop
/// the others; a document with more than [`MAX_KEYS`] entries is refused whole.
pub fn jwks(source: &str, body: &[u8]) -> Result<JwksKeys, KeyError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| KeyError::NotJwks {
        from: source.to_owned(),
        problem: e.to_string(),
    })?;
    if doc.keys.len() > MAX_KEYS {
        return Err(KeyError::NotJwks {
            from: source.to_owned(),
            problem: format!("{} keys, more than {MAX_KEYS}", doc.keys.len()),
        });
    }
    let mut out = JwksKeys::default();
    for (i, v) in doc.keys.into_iter().enumerate() {
        let kid = v.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let at = match &kid {
            Some(k) => format!("key {i} (kid {k:?})"),
            None => format!("key {i}"),
        };
        match jwk_key(source, v) {
            Ok(key) => out.keys.push(key),
            Err(why) => out.skipped.push(format!("{at}: {why}")),
        }
    }
    Ok(out)
}

/// One JWK as a key, or why it is left out.
fn jwk_key(source: &str, v: serde_json::Value) -> Result<Key, String> {
    if v.get("kty").and_then(|k| k.as_str()) == Some("oct") {
        return Err("a symmetric key: HMAC secrets come from --auth-hmac-secret-file only".into());
    }
    let jwk: Jwk = serde_json::from_value(v).map_err(|e| format!("not a usable JWK: {e}"))?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err("not a signature key (\"use\" is not \"sig\")".into());
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err("\"key_ops\" does not allow \"verify\"".into());
        }
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(
            a.to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("\"alg\" {a} is not a signature algorithm"))?,
        ),
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key values: {e}"))?;
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            if let DecodingKeyKind::RsaModulusExponent { n, .. } = decoding.kind() {
                let len = n.iter().skip_while(|&&b| b == 0).count();
                if !RSA_BITS.contains(&(len * 8)) {
                    return Err(format!(
                        "an RSA key of about {} bits: 2048 to 8192 are verified",
                        len * 8
                    ));
                }
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, alg): (_, &'static dyn sig::VerificationAlgorithm) = match p.curve {
                EllipticCurve::P256 => (KeyKind::EcP256, &sig::ECDSA_P256_SHA256_FIXED),
                EllipticCurve::P384 => (KeyKind::EcP384, &sig::ECDSA_P384_SHA384_FIXED),
                ref c => return Err(format!("curve {c:?} is not supported (P-256, P-384)")),
            };
            ParsedPublicKey::new(alg, decoding.as_bytes())
                .map_err(|_| "the point is not on its curve".to_owned())?;
            kind
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {:?} is not supported (Ed25519)", p.curve));
            }
            ParsedPublicKey::new(&sig::ED25519, decoding.as_bytes())
                .map_err(|_| "not an Ed25519 public key".to_owned())?;
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => unreachable!("refused above"),
    };
    if alg.is_some_and(|a| !kind.fits(a)) {
        return Err(format!(
            "\"alg\" {alg:?} does not fit a {} key",
            kind.name()
        ));
    }
    Ok(Key::new(
        jwk.common.key_id.map(Into::into),
        kind,
        alg,
        decoding,
        source.to_owned(),
    ))
}

/// The JWKS file of `--auth-jwks`.
pub fn jwks_file(path: &Path) -> Result<JwksKeys, KeyError> {
    let source = format!("--auth-jwks {}", path.display());
    jwks(&source, &read(path)?)
}

/// Every key held, as the workers read it (through an `ArcSwap`, never locked).
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<std::sync::Arc<Key>>,
    by_kid: HashMap<Box<str>, usize>,
}

/// Which keys a token may be checked with, from its header.
#[derive(Debug)]
pub enum Candidates<'a> {
    /// These, in order (at most [`MAX_KEYS`]).
    Try(Vec<&'a Key>),
    /// The token names a `kid` that no key has, and no kid-less key fits its algorithm: the
    /// key may be new (a JWKS refetch may bring it).
    UnknownKid,
    /// No key held could have signed it: its `kid` names a key of another kind, or it has
    /// no `kid` and no kid-less key fits its algorithm.
    NoneFits,
}

impl KeySet {
    /// The set of `keys`, if they fit the bounds and no `kid` repeats.
    pub fn new(keys: Vec<std::sync::Arc<Key>>) -> Result<KeySet, KeyError> {
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooManyKeys(keys.len()));
        }
        let mut by_kid = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(kid) = &k.kid {
                if let Some(&j) = by_kid.get(kid) {
                    let first: &std::sync::Arc<Key> = &keys[j];
                    return Err(KeyError::DuplicateKid {
                        kid: kid.to_string(),
                        first: first.source.clone(),
                        second: k.source.clone(),
                    });
                }
                by_kid.insert(kid.clone(), i);
            }
        }
        Ok(KeySet { keys, by_kid })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `other` holds the same keys (in any order).
    pub fn same_keys(&self, other: &KeySet) -> bool {
        let prints = |s: &KeySet| {
            let mut v: Vec<[u8; 32]> = s.keys.iter().map(|k| k.fingerprint).collect();
            v.sort_unstable();
            v
        };
        prints(self) == prints(other)
    }

    /// The keys a token with this `alg` and `kid` may be checked with. A `kid` that names a
    /// key selects that key alone; kid-less keys are tried for any token whose `alg` fits
    /// them; keys with a `kid` only for tokens that name it.
    pub fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Candidates<'_> {
        if let Some(kid) = kid {
            if let Some(&i) = self.by_kid.get(kid) {
                let key = &*self.keys[i];
                return if key.fits(alg) {
                    Candidates::Try(vec![key])
                } else {
                    Candidates::NoneFits
                };
            }
        }
        let kidless: Vec<&Key> = self
            .keys
            .iter()
            .map(|k| &**k)
            .filter(|k| k.kid.is_none() && k.fits(alg))
            .collect();
        match (kidless.is_empty(), kid) {
            (false, _) => Candidates::Try(kidless),
            (true, Some(_)) => Candidates::UnknownKid,
            (true, None) => Candidates::NoneFits,
        }
    }
}
