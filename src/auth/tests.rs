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
    a.verify(token, NOW).map(|v| v.sub.to_string())
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

#[test]
fn each_algorithm_is_accepted_with_its_key_and_refused_with_another() {
    let p = pairs();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = mint(alg, None, &claims(), &hmac(SECRET_A));
        let right = auth(with_secret("hs-right", SECRET_A));
        let wrong = auth(with_secret("hs-wrong", SECRET_B));
        assert_eq!(verdict(&right, &token), Ok("alice".into()), "{alg:?}");
        assert_eq!(
            verdict(&wrong, &token),
            Err(Refusal::BadSignature),
            "{alg:?}"
        );
    }
    for (alg, signer, other) in [
        (Algorithm::RS256, "rsa-a", "rsa-b"),
        (Algorithm::RS384, "rsa-a", "rsa-b"),
        (Algorithm::RS512, "rsa-a", "rsa-b"),
        (Algorithm::PS256, "rsa-a", "rsa-b"),
        (Algorithm::PS384, "rsa-a", "rsa-b"),
        (Algorithm::PS512, "rsa-a", "rsa-b"),
        (Algorithm::ES256, "p256-a", "p256-b"),
        (Algorithm::ES384, "p384-a", "p384-b"),
        (Algorithm::EdDSA, "ed-a", "ed-b"),
    ] {
        let token = mint(alg, None, &claims(), &p.encoding(signer));
        assert_eq!(
            verdict(&auth(with_keys(&[signer])), &token),
            Ok("alice".into()),
            "{alg:?}"
        );
        assert_eq!(
            verdict(&auth(with_keys(&[other])), &token),
            Err(Refusal::BadSignature),
            "{alg:?} with another key"
        );
    }
}

#[test]
fn alg_must_fit_the_key_type_and_a_curve_is_never_mixed_up() {
    use keys::KeyKind::*;
    assert!(EcP256.fits(Algorithm::ES256) && !EcP256.fits(Algorithm::ES384));
    assert!(EcP384.fits(Algorithm::ES384) && !EcP384.fits(Algorithm::ES256));
    assert!(!Rsa.fits(Algorithm::HS256) && !Hmac.fits(Algorithm::RS256));
    assert!(Ed25519.fits(Algorithm::EdDSA) && !Ed25519.fits(Algorithm::ES256));
    let p = pairs();
    // The PEM's SPKI names the curve: each file's key is of the kind it says.
    let kinds: Vec<_> = ["rsa-a", "p256-a", "p384-a", "ed-a"]
        .iter()
        .map(|k| keys::pem_public_key(&p.public(k)).unwrap().kind)
        .collect();
    assert_eq!(kinds, [Rsa, EcP256, EcP384, Ed25519]);
    let p256 = Arc::new(keys::pem_public_key(&p.public("p256-a")).unwrap());
    let set = keys::KeySet::new(vec![p256]).unwrap();
    assert!(matches!(
        set.candidates(Algorithm::ES384, None),
        keys::Candidates::NoneFits
    ));
    assert!(
        matches!(set.candidates(Algorithm::ES256, None), keys::Candidates::Try(k) if k.len() == 1)
    );
    // Keys of every kind but the token's own: nothing is even tried.
    let a = auth(with_keys(&["rsa-a", "p256-a", "ed-a"]));
    let es384 = mint(Algorithm::ES384, None, &claims(), &p.encoding("p384-a"));
    assert_eq!(verdict(&a, &es384), Err(Refusal::BadSignature));
    assert_eq!(a.stats().verifications()[2], ("bad_signature", 1));
}

#[test]
fn alg_none_is_never_accepted() {
    let a = auth(with_secret("none", SECRET_A));
    let good = mint(Algorithm::HS256, None, &claims(), &hmac(SECRET_A));
    let (_, payload, signature) = parts(&good);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        for sig in ["", signature.as_str()] {
            let token = format!("{header}.{payload}.{sig}");
            assert_eq!(
                verdict(&a, &token),
                Err(Refusal::Malformed),
                "{alg} {sig:?}"
            );
        }
    }
    // And the header alone, with no signature part at all.
    let header = b64(&json!({"alg": "none"}));
    assert_eq!(
        verdict(&a, &format!("{header}.{payload}")),
        Err(Refusal::Malformed)
    );
    assert_eq!(
        verdict(&a, &good),
        Ok("alice".into()),
        "the same payload, signed"
    );
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let p = pairs();
    let pem = std::fs::read(p.public("rsa-a")).unwrap();
    let forged = mint(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(&pem),
    );
    // With the RSA key alone, and with an HMAC secret beside it.
    let rsa_only = auth(with_keys(&["rsa-a"]));
    assert_eq!(verdict(&rsa_only, &forged), Err(Refusal::BadSignature));
    let both = auth(Settings {
        hmac_secret_file: Some(secret_file("confusion", SECRET_A)),
        ..with_keys(&["rsa-a"])
    });
    assert_eq!(verdict(&both, &forged), Err(Refusal::BadSignature));
    // The same claims signed properly pass both ways.
    let rs = mint(Algorithm::RS256, None, &claims(), &p.encoding("rsa-a"));
    let hs = mint(Algorithm::HS256, None, &claims(), &hmac(SECRET_A));
    assert_eq!(verdict(&both, &rs), Ok("alice".into()));
    assert_eq!(verdict(&both, &hs), Ok("alice".into()));
}

#[test]
fn exp_and_nbf_are_honoured_with_the_leeway_both_ways() {
    let key = hmac(SECRET_A);
    for leeway in [0, 5, 60] {
        let a = auth(Settings {
            leeway: Duration::from_secs(leeway),
            ..with_secret("leeway", SECRET_A)
        });
        let at = |c: Value| verdict(&a, &mint(Algorithm::HS256, None, &c, &key));
        let l = leeway;
        assert_eq!(
            at(json!({"sub": "u", "exp": NOW - l})),
            Ok("u".into()),
            "{l}"
        );
        assert_eq!(
            at(json!({"sub": "u", "exp": NOW - l - 1})),
            Err(Refusal::Expired),
            "{l}"
        );
        assert_eq!(
            at(json!({"sub": "u", "exp": NOW + 60, "nbf": NOW + l})),
            Ok("u".into()),
            "{l}"
        );
        assert_eq!(
            at(json!({"sub": "u", "exp": NOW + 60, "nbf": NOW + l + 1})),
            Err(Refusal::NotYetValid),
            "{l}"
        );
        // NumericDate may be fractional.
        assert_eq!(
            at(json!({"sub": "u", "exp": (NOW + 60) as f64 + 0.5})),
            Ok("u".into())
        );
    }
}

#[test]
fn audience_and_issuer_are_checked_when_configured_and_only_then() {
    let key = hmac(SECRET_A);
    let token = |c: Value| mint(Algorithm::HS256, None, &c, &key);
    let checked = auth(Settings {
        audience: Some("corecast".into()),
        issuer: Some("https://idp.example".into()),
        ..with_secret("aud-iss", SECRET_A)
    });
    let base = |aud: Value, iss: Value| {
        let mut c = claims();
        if !aud.is_null() {
            c["aud"] = aud;
        }
        if !iss.is_null() {
            c["iss"] = iss;
        }
        token(c)
    };
    let iss = json!("https://idp.example");
    for (aud, iss, want) in [
        (json!("corecast"), iss.clone(), Ok("alice".to_owned())),
        (
            json!(["other", "corecast"]),
            iss.clone(),
            Ok("alice".into()),
        ),
        (json!("other"), iss.clone(), Err(Refusal::WrongAudience)),
        (json!(["other"]), iss.clone(), Err(Refusal::WrongAudience)),
        (Value::Null, iss.clone(), Err(Refusal::WrongAudience)),
        (
            json!("corecast"),
            json!("https://evil.example"),
            Err(Refusal::WrongIssuer),
        ),
        (json!("corecast"), Value::Null, Err(Refusal::WrongIssuer)),
    ] {
        assert_eq!(
            verdict(&checked, &base(aud.clone(), iss.clone())),
            want,
            "{aud} {iss}"
        );
    }
    // Not configured: whatever aud and iss say, they are not checked.
    let unchecked = auth(with_secret("no-aud-iss", SECRET_A));
    for (aud, iss) in [
        (json!("anyone"), json!("anybody")),
        (json!(["a", "b"]), Value::Null),
        (Value::Null, json!("x")),
    ] {
        assert_eq!(
            verdict(&unchecked, &base(aud.clone(), iss.clone())),
            Ok("alice".into()),
            "{aud} {iss}"
        );
    }
}

#[test]
fn a_tampered_token_is_a_bad_signature() {
    let p = pairs();
    for (alg, a, key) in [
        (
            Algorithm::HS256,
            auth(with_secret("tamper", SECRET_A)),
            hmac(SECRET_A),
        ),
        (
            Algorithm::ES256,
            auth(with_keys(&["p256-a"])),
            p.encoding("p256-a"),
        ),
    ] {
        let good = mint(alg, None, &claims(), &key);
        let (header, _, signature) = parts(&good);
        let mut more = claims();
        more["corecast"] = json!({"broadcast": true});
        let tampered = format!("{header}.{}.{signature}", b64(&more));
        assert_eq!(
            verdict(&a, &tampered),
            Err(Refusal::BadSignature),
            "{alg:?}"
        );
        let mut sig = B64.decode(&signature).unwrap();
        sig[0] ^= 1;
        let flipped = format!("{}.{}", good.rsplit_once('.').unwrap().0, B64.encode(sig));
        assert_eq!(verdict(&a, &flipped), Err(Refusal::BadSignature), "{alg:?}");
        assert_eq!(verdict(&a, &good), Ok("alice".into()));
    }
}

#[test]
fn garbage_is_malformed_and_never_echoed() {
    let a = auth(with_secret("garbage", SECRET_A));
    let good = mint(Algorithm::HS256, None, &claims(), &hmac(SECRET_A));
    let (header, payload, signature) = parts(&good);
    let long = "a".repeat(super::verify::MAX_TOKEN_LEN + 1);
    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        &format!("{header}.{payload}"),
        &format!("{header}.{payload}.{signature}.x"),
        &format!("{header}.{payload}.***"),
        &format!("{}.{payload}.{signature}", b64(&json!({"alg": "HS999"}))),
        &format!("{}.{payload}.{signature}", B64.encode("not json")),
        &long,
    ] {
        assert_eq!(verdict(&a, bad), Err(Refusal::Malformed), "{:.40}", bad);
    }
    for r in Refusal::ALL {
        assert!(!r.reason().contains('.'), "{r:?}");
    }
}

#[test]
fn sub_and_exp_are_required_and_typed() {
    let key = hmac(SECRET_A);
    let a = auth(with_secret("required", SECRET_A));
    let at = |c: Value| verdict(&a, &mint(Algorithm::HS256, None, &c, &key));
    for bad in [
        json!({"exp": NOW + 60}),
        json!({"sub": 42, "exp": NOW + 60}),
        json!({"sub": "", "exp": NOW + 60}),
        json!({"sub": "x".repeat(super::verify::MAX_SUB_LEN + 1), "exp": NOW + 60}),
        json!({"sub": "u"}),
        json!({"sub": "u", "exp": "tomorrow"}),
        json!({"sub": "u", "exp": -5}),
        json!({"sub": "u", "exp": NOW + 60, "nbf": "now"}),
        json!({"sub": "u", "exp": NOW + 60, "topic": 7}),
        json!({"sub": "u", "exp": NOW + 60, "topic": ""}),
        json!({"sub": "u", "exp": NOW + 60, "topic": "t".repeat(257)}),
    ] {
        assert_eq!(at(bad.clone()), Err(Refusal::Malformed), "{bad}");
    }
    let v = a
        .verify(
            &mint(
                Algorithm::HS256,
                None,
                &json!({"sub": "u", "exp": NOW + 60, "topic": "room.1"}),
                &key,
            ),
            NOW,
        )
        .unwrap();
    assert_eq!(
        (&*v.sub, v.exp, v.topic.as_deref()),
        ("u", NOW + 60, Some("room.1"))
    );
}

#[test]
fn the_corecast_claim_is_compiled_shared_and_a_bad_one_is_malformed() {
    let key = hmac(SECRET_A);
    let a = auth(with_secret("claim", SECRET_A));
    let with = |claim: Value| {
        let mut c = claims();
        c["corecast"] = claim;
        a.verify(&mint(Algorithm::HS256, None, &c, &key), NOW)
    };
    for bad in [
        json!({"subscribe": "chat.*"}),
        json!({"publish": ["a..b"]}),
        json!({"broadcast": "yes"}),
        json!(["chat.*"]),
        json!({"subscribe": (0..=super::grant::MAX_PATTERNS).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
    ] {
        assert_eq!(with(bad.clone()).err(), Some(Refusal::Malformed), "{bad}");
    }
    let claim = json!({"subscribe": ["chat.*", "user.{sub}"], "publish": ["chat.lobby"]});
    let one = with(claim.clone()).unwrap();
    assert!(one.grant.may_subscribe("user.alice", &one.sub));
    assert!(!one.grant.may_subscribe("user.bob", &one.sub));
    assert!(one.grant.may_publish("chat.lobby", &one.sub));
    assert!(!one.grant.may_broadcast());
    let mut other = claims();
    other["sub"] = json!("bob");
    other["corecast"] = claim;
    let two = a
        .verify(&mint(Algorithm::HS256, None, &other, &key), NOW)
        .unwrap();
    assert!(
        Arc::ptr_eq(&one.grant, &two.grant),
        "one compiled grant for one claim"
    );
    // No claim: nothing granted.
    let none = a
        .verify(&mint(Algorithm::HS256, None, &claims(), &key), NOW)
        .unwrap();
    assert!(!none.grant.may_subscribe("chat.x", "alice"));
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

#[test]
fn a_kid_picks_its_key_alone_and_an_unknown_kid_is_unknown_key() {
    let p = pairs();
    let jwks = file(
        "kids.json",
        &jwks_json(&[jwk("p256-a", Some("a")), jwk("rsa-a", Some("r"))]),
    );
    let a = auth(Settings {
        jwks: Some(jwks.display().to_string()),
        ..Settings::default()
    });
    let by = |signer: &str, alg, kid| verdict(&a, &mint(alg, kid, &claims(), &p.encoding(signer)));
    assert_eq!(
        by("p256-a", Algorithm::ES256, Some("a")),
        Ok("alice".into())
    );
    assert_eq!(by("rsa-a", Algorithm::RS256, Some("r")), Ok("alice".into()));
    assert_eq!(
        by("p256-a", Algorithm::ES256, Some("zzz")),
        Err(Refusal::UnknownKey)
    );
    // Keys with a kid serve only the tokens that name it.
    assert_eq!(
        by("p256-a", Algorithm::ES256, None),
        Err(Refusal::BadSignature)
    );
    // A kid names one key: another key's signature, or another kind's alg, fails.
    assert_eq!(
        by("p256-b", Algorithm::ES256, Some("a")),
        Err(Refusal::BadSignature)
    );
    assert_eq!(
        by("rsa-a", Algorithm::RS256, Some("a")),
        Err(Refusal::BadSignature)
    );
    // Unknown key verdicts are never cached (a fetch may bring the key).
    let cached = Auth::new(&Settings {
        jwks: Some(jwks.display().to_string()),
        ..Settings::default()
    })
    .unwrap();
    let unknown = mint(
        Algorithm::ES256,
        Some("zzz"),
        &claims(),
        &p.encoding("p256-a"),
    );
    for _ in 0..3 {
        assert_eq!(
            cached.verify(&unknown, NOW).err(),
            Some(Refusal::UnknownKey)
        );
    }
    assert_eq!(cached.stats().verifications()[5], ("unknown_key", 3));
    assert_eq!(cached.cached(&unknown, NOW).map(|r| r.err()), None);

    // With a kid-less key of the alg's type beside them, an unknown kid tries that one.
    let b = auth(Settings {
        jwks: Some(jwks.display().to_string()),
        ..with_keys(&["p256-b"])
    });
    let t = |signer: &str, kid| {
        verdict(
            &b,
            &mint(Algorithm::ES256, kid, &claims(), &p.encoding(signer)),
        )
    };
    assert_eq!(t("p256-b", Some("zzz")), Ok("alice".into()));
    assert_eq!(t("p256-b", None), Ok("alice".into()));
    assert_eq!(t("p256-a", Some("zzz")), Err(Refusal::BadSignature));
    // A kid-less key of another type does not make an unknown kid a bad signature.
    let c = auth(Settings {
        jwks: Some(jwks.display().to_string()),
        ..with_keys(&["rsa-b", "ed-b"])
    });
    let unknown = mint(
        Algorithm::ES256,
        Some("zzz"),
        &claims(),
        &p.encoding("p256-a"),
    );
    assert_eq!(verdict(&c, &unknown), Err(Refusal::UnknownKey));
}

#[test]
fn jwks_entries_that_cannot_verify_are_left_out_and_the_document_is_bounded() {
    let mut enc = jwk("p256-a", Some("enc"));
    enc["use"] = json!("enc");
    let mut wrong_alg = jwk("p256-a", Some("wrong-alg"));
    wrong_alg["alg"] = json!("RS256");
    let mut off_curve = jwk("p256-a", Some("off-curve"));
    off_curve["y"] = off_curve["x"].clone();
    let mut verify_only = jwk("p384-a", Some("ops"));
    verify_only["key_ops"] = json!(["verify"]);
    let doc = jwks_json(&[
        jwk("rsa-a", Some("r")),
        jwk("p256-a", Some("p")),
        verify_only,
        jwk("ed-a", Some("e")),
        jwk("ed-b", None),
        enc,
        wrong_alg,
        off_curve,
        json!({"kty": "oct", "k": B64.encode(SECRET_A), "kid": "secret"}),
        json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1"}),
        json!({"kty": "RSA", "n": B64.encode([0xffu8; 128]), "e": "AQAB", "kid": "rsa1024"}),
        json!({"kty": "new-kind", "kid": "future"}),
    ]);
    let got = keys::jwks("test", &doc).unwrap();
    let kids: Vec<_> = got.keys.iter().map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, [Some("r"), Some("p"), Some("ops"), Some("e"), None]);
    assert_eq!(got.skipped.len(), 7, "{:?}", got.skipped);
    assert!(!got.skipped.concat().contains(&B64.encode(SECRET_A)));
    let many: Vec<Value> = (0..=MAX_KEYS)
        .map(|i| jwk("ed-a", Some(&format!("k{i}"))))
        .collect();
    assert!(matches!(
        keys::jwks("test", &jwks_json(&many)),
        Err(KeyError::NotJwks { .. })
    ));
    assert!(keys::jwks("test", b"{\"keys\": 1}").is_err());
    assert!(keys::jwks("test", b"<html>").is_err());
}

#[test]
fn keys_rotate_across_pem_files_and_a_removed_key_admits_nothing_more() {
    let p = pairs();
    let copy = |name: &str, from: &str| file(name, &std::fs::read(p.public(from)).unwrap());
    let (one, two) = (
        copy("rotate-1.pem", "rsa-a"),
        copy("rotate-2.pem", "p256-a"),
    );
    // With the cache on: a removed key's tokens must not pass from it either.
    let a = Auth::new(&Settings {
        public_keys: vec![one.clone(), two.clone()],
        ..Settings::default()
    })
    .unwrap();
    let old = mint(Algorithm::RS256, None, &claims(), &p.encoding("rsa-a"));
    let kept = mint(Algorithm::ES256, None, &claims(), &p.encoding("p256-a"));
    let new = mint(Algorithm::EdDSA, None, &claims(), &p.encoding("ed-a"));
    assert_eq!(verdict(&a, &old), Ok("alice".into()));
    assert_eq!(verdict(&a, &kept), Ok("alice".into()));
    assert_eq!(verdict(&a, &new), Err(Refusal::BadSignature));
    assert!(a.cached(&old, NOW).is_some());
    // A reload that changes nothing keeps the cache.
    a.reload().unwrap();
    assert!(a.cached(&old, NOW).is_some());
    // The first file now holds the new key.
    copy("rotate-1.pem", "ed-a");
    a.reload().unwrap();
    assert_eq!(a.key_count(), 2);
    assert!(a.cached(&old, NOW).is_none(), "the cache was emptied");
    assert_eq!(verdict(&a, &old), Err(Refusal::BadSignature));
    assert_eq!(verdict(&a, &kept), Ok("alice".into()));
    assert_eq!(verdict(&a, &new), Ok("alice".into()));
    // A reload that fails keeps the keys.
    file(
        "rotate-1.pem",
        b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
    );
    assert!(a.reload().is_err());
    assert_eq!(verdict(&a, &new), Ok("alice".into()));
    std::fs::remove_file(&one).unwrap();
    let e = a.reload().unwrap_err().to_string();
    assert!(e.contains(&*one.to_string_lossy()), "{e}");
    assert_eq!(verdict(&a, &new), Ok("alice".into()));
    assert_eq!(
        a.stats()
            .reloads_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        a.stats()
            .reloads_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn the_cache_answers_until_expiry_and_rechecks_the_clock() {
    use std::sync::atomic::Ordering::Relaxed;
    let key = hmac(SECRET_A);
    let a = Auth::new(&Settings {
        leeway: Duration::from_secs(5),
        ..with_secret("cache", SECRET_A)
    })
    .unwrap();
    let token = mint(
        Algorithm::HS256,
        None,
        &json!({"sub": "u", "exp": NOW + 10, "nbf": NOW + 3}),
        &key,
    );
    assert!(a.cached(&token, NOW).is_none());
    let first = a.verify(&token, NOW).unwrap();
    let again = a.verify(&token, NOW + 1).unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the second answer came from the cache"
    );
    assert_eq!(a.stats().verifications()[0], ("ok", 1));
    assert_eq!(a.stats().cache_hits.load(Relaxed), 1);
    assert!(a.cached(&token, NOW + 15).unwrap().is_ok(), "exp + leeway");
    assert_eq!(
        a.cached(&token, NOW + 16).unwrap().err(),
        Some(Refusal::Expired)
    );
    assert_eq!(
        a.cached(&token, NOW - 3).unwrap().err(),
        Some(Refusal::NotYetValid)
    );
    assert_eq!(a.verify(&token, NOW + 16).err(), Some(Refusal::Expired));
    assert_eq!(
        a.stats().verifications()[0],
        ("ok", 1),
        "still one full check"
    );
    // Long past its expiry the entry is gone, and a full check says so again.
    assert!(a
        .cached(&token, NOW + 10 + 5 + super::cache::REFUSAL_TTL_S + 1)
        .is_none());

    // A flood of one bad token costs one check.
    let bad = mint(Algorithm::HS256, None, &claims(), &hmac(SECRET_B));
    for _ in 0..1000 {
        assert_eq!(a.verify(&bad, NOW).err(), Some(Refusal::BadSignature));
    }
    assert_eq!(a.stats().verifications()[2], ("bad_signature", 1));

    // No cache at all with 0.
    let none = auth(with_secret("no-cache", SECRET_A));
    none.verify(&token, NOW).unwrap();
    assert!(none.cached(&token, NOW).is_none());
    assert_eq!(none.cache_len(), 0);
}

#[test]
fn the_cache_stays_within_its_bound() {
    let key = hmac(SECRET_A);
    let a = Auth::new(&Settings {
        token_cache: 100,
        ..with_secret("bound", SECRET_A)
    })
    .unwrap();
    for i in 0..300u64 {
        let t = mint(
            Algorithm::HS256,
            None,
            &json!({"sub": format!("u{i}"), "exp": NOW + 600 + i}),
            &key,
        );
        a.verify(&t, NOW).unwrap();
        assert!(a.cache_len() <= 100, "{} entries after {i}", a.cache_len());
    }
    assert_eq!(a.cache_len(), 100);
    let last = mint(
        Algorithm::HS256,
        None,
        &json!({"sub": "u299", "exp": NOW + 899}),
        &key,
    );
    assert!(a.cached(&last, NOW).is_some(), "the latest to expire stay");
}

#[test]
fn key_files_that_cannot_verify_are_refused_by_name() {
    let p = pairs();
    let named = |e: KeyError, path: &Path, what: &str| {
        let e = e.to_string();
        assert!(e.contains(&*path.to_string_lossy()), "{e}");
        assert!(e.contains(what), "{e}");
    };
    let private = p.dir.join("rsa-a.key");
    named(
        keys::pem_public_key(&private).unwrap_err(),
        &private,
        "private key",
    );
    let both = file(
        "two.pem",
        &[
            std::fs::read(p.public("rsa-a")).unwrap(),
            std::fs::read(p.public("ed-a")).unwrap(),
        ]
        .concat(),
    );
    named(
        keys::pem_public_key(&both).unwrap_err(),
        &both,
        "one key per file",
    );
    let p521 = p.public("p521");
    named(
        keys::pem_public_key(&p521).unwrap_err(),
        &p521,
        "not an RSA, EC P-256",
    );
    let missing = p.dir.join("missing.pem");
    named(
        keys::pem_public_key(&missing).unwrap_err(),
        &missing,
        "cannot read",
    );
    let text = file("text.pem", b"hello\n");
    named(
        keys::pem_public_key(&text).unwrap_err(),
        &text,
        "no PEM public key",
    );
    let small = p.dir.join("rsa-1024.pub");
    if !small.exists() {
        let k = p.dir.join("rsa-1024.key");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            k.to_str().unwrap(),
        ]);
        openssl(&[
            "pkey",
            "-in",
            k.to_str().unwrap(),
            "-pubout",
            "-out",
            small.to_str().unwrap(),
        ]);
    }
    named(
        keys::pem_public_key(&small).unwrap_err(),
        &small,
        "2048 to 8192",
    );

    // The secret's bytes appear in no error and no Debug output.
    let short = secret_file("short", "s3cret-but-short");
    let e = keys::hmac_secret(&short).unwrap_err();
    named(e, &short, "shorter than 32 bytes");
    assert!(!keys::hmac_secret(&short)
        .unwrap_err()
        .to_string()
        .contains("s3cret"));
    let s = with_secret("debug", SECRET_A);
    let a = Auth::new(&s).unwrap();
    for shown in [
        format!("{s:?}"),
        format!("{a:?}"),
        format!(
            "{:?}",
            keys::hmac_secret(s.hmac_secret_file.as_ref().unwrap()).unwrap()
        ),
    ] {
        assert!(
            !shown.contains(SECRET_A) && !shown.contains("thirty-two"),
            "{shown}"
        );
    }
    assert!(format!("{a:?}").contains("Hmac"), "{a:?}");
    // The secret file: its bytes less one newline, used as they are.
    let crlf = file("crlf", format!("{SECRET_A}\r\n").as_bytes());
    let a = auth(Settings {
        hmac_secret_file: Some(crlf),
        ..Settings::default()
    });
    assert_eq!(
        verdict(
            &a,
            &mint(Algorithm::HS256, None, &claims(), &hmac(SECRET_A))
        ),
        Ok("alice".into())
    );
}

#[test]
fn the_key_set_is_bounded_and_kids_are_unique() {
    let p = pairs();
    let many = Settings {
        public_keys: vec![p.public("ed-a"); MAX_KEYS + 1],
        ..Settings::default()
    };
    assert!(matches!(Auth::new(&many), Err(KeyError::TooManyKeys(33))));
    let twice = file(
        "twice.json",
        &jwks_json(&[jwk("ed-a", Some("k")), jwk("ed-b", Some("k"))]),
    );
    let e = Auth::new(&Settings {
        jwks: Some(twice.display().to_string()),
        ..Settings::default()
    })
    .unwrap_err();
    assert!(matches!(e, KeyError::DuplicateKid { .. }), "{e}");
    // A bad anonymous grant cannot reach the verifier either.
    let e = Auth::new(&Settings {
        anonymous_subscribe: vec!["user.{sub}".into()],
        ..with_keys(&["ed-a"])
    })
    .unwrap_err();
    assert!(e.to_string().contains("user.{sub}"), "{e}");
}

#[test]
fn refusals_have_their_reasons_and_labels() {
    let got: Vec<_> = Refusal::ALL
        .iter()
        .map(|r| (r.reason(), r.label()))
        .collect();
    assert_eq!(
        got,
        [
            ("malformed token", "malformed"),
            ("bad signature", "bad_signature"),
            ("token expired", "expired"),
            ("token not yet valid", "not_yet_valid"),
            ("unknown key", "unknown_key"),
            ("wrong audience", "wrong_audience"),
            ("wrong issuer", "wrong_issuer"),
        ]
    );
    let labels: Vec<_> = Auth::new(&with_keys(&["ed-a"]))
        .unwrap()
        .stats()
        .verifications()
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    assert_eq!(labels[0], "ok");
    assert_eq!(&labels[1..], Refusal::ALL.map(|r| r.label()));
}
