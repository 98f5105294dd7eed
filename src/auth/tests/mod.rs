//! Unit tests of token verification: keys made at test time with the openssl CLI (none is
//! checked in), tokens minted with jsonwebtoken's own `encode`, and by hand for what no
//! library would mint (`alg: none`, tampered parts).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::keys::{self, KeyError, MAX_KEYS};
use super::{Auth, Refusal, Settings};

mod cache;
mod keys_and_rotation;
mod tokens;

/// The tests' clock, unix seconds.
const NOW: u64 = 1_700_000_000;

/// A secret of the right length, and another.
const SECRET_A: &str = "an hmac secret of thirty-two bytes or more: A";
const SECRET_B: &str = "an hmac secret of thirty-two bytes or more: B";

/// Key pairs made once per test process: `NAME.key` (PKCS#8) and `NAME.pub` (SPKI).
struct Pairs {
    dir: PathBuf,
}

const PAIRS: [(&str, &[&str]); 9] = [
    (
        "rsa-a",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    ),
    (
        "rsa-b",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    ),
    (
        "p256-a",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ),
    (
        "p256-b",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ),
    (
        "p384-a",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    ),
    (
        "p384-b",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    ),
    ("ed-a", &["-algorithm", "ED25519"]),
    ("ed-b", &["-algorithm", "ED25519"]),
    (
        "p521",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
    ),
];

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI (tools/install-test-deps.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn pairs() -> &'static Pairs {
    static PAIRS_MADE: OnceLock<Pairs> = OnceLock::new();
    PAIRS_MADE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("corecast-auth-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::thread::scope(|s| {
            for (name, genkey) in PAIRS {
                let dir = &dir;
                s.spawn(move || {
                    let key = dir.join(format!("{name}.key"));
                    let public = dir.join(format!("{name}.pub"));
                    let key = key.to_str().unwrap();
                    let mut args = vec!["genpkey"];
                    args.extend_from_slice(genkey);
                    args.extend_from_slice(&["-out", key]);
                    openssl(&args);
                    openssl(&[
                        "pkey",
                        "-in",
                        key,
                        "-pubout",
                        "-out",
                        public.to_str().unwrap(),
                    ]);
                });
            }
        });
        Pairs { dir }
    })
}

impl Pairs {
    fn public(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pub"))
    }

    fn encoding(&self, name: &str) -> EncodingKey {
        let pem = std::fs::read(self.dir.join(format!("{name}.key"))).unwrap();
        if name.starts_with("rsa") {
            EncodingKey::from_rsa_pem(&pem).unwrap()
        } else if name.starts_with("ed") {
            EncodingKey::from_ed_pem(&pem).unwrap()
        } else {
            EncodingKey::from_ec_pem(&pem).unwrap()
        }
    }
}

/// A file of this test's own with `content`.
fn file(name: &str, content: &[u8]) -> PathBuf {
    let dir = pairs().dir.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn secret_file(name: &str, secret: &str) -> PathBuf {
    file(name, format!("{secret}\n").as_bytes())
}

/// Claims that pass: `sub`, and `exp` ten minutes after [`NOW`].
fn claims() -> Value {
    json!({"sub": "alice", "exp": NOW + 600})
}

fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let header = Header {
        alg,
        kid: kid.map(str::to_owned),
        ..Header::default()
    };
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hmac(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes())
}

/// An `Auth` on `settings` with no cache, so that each call checks in full.
fn auth(settings: Settings) -> Auth {
    Auth::new(&Settings {
        token_cache: 0,
        ..settings
    })
    .unwrap()
}

fn with_keys(keys: &[&str]) -> Settings {
    Settings {
        public_keys: keys.iter().map(|k| pairs().public(k)).collect(),
        ..Settings::default()
    }
}

fn with_secret(name: &str, secret: &str) -> Settings {
    Settings {
        hmac_secret_file: Some(secret_file(name, secret)),
        ..Settings::default()
    }
}

fn verdict(a: &Auth, token: &str) -> Result<String, Refusal> {
    a.verify(token, NOW).map(|v| v.sub().to_string())
}

/// A JWT's three parts.
fn parts(token: &str) -> (String, String, String) {
    let p: Vec<&str> = token.split('.').collect();
    assert_eq!(p.len(), 3);
    (p[0].into(), p[1].into(), p[2].into())
}

fn b64(v: &Value) -> String {
    B64.encode(v.to_string())
}

/// A JWKS document with `keys` (JSON values).
fn jwks_json(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

/// The JWK of the pair `name`, with `kid`.
fn jwk(name: &str, kid: Option<&str>) -> Value {
    let p = pairs();
    let mut v = if name.starts_with("ed") {
        let d = jsonwebtoken::DecodingKey::from_ed_pem(&std::fs::read(p.public(name)).unwrap())
            .unwrap();
        json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(d.as_bytes())})
    } else {
        let alg = match &name[..3] {
            "rsa" => Algorithm::RS256,
            "p25" => Algorithm::ES256,
            _ => Algorithm::ES384,
        };
        let mut j = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&p.encoding(name), alg).unwrap(),
        )
        .unwrap();
        j.as_object_mut().unwrap().remove("alg");
        j
    };
    if let Some(kid) = kid {
        v["kid"] = json!(kid);
    }
    v
}
