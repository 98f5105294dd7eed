//! Keys: `kid` selection, JWKS entries left out, rotation across reloads, key files refused
//! by name, the bound on keys.

use super::*;

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
