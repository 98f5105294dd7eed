//! Tokens: each algorithm, `alg` against the key's type, `alg: none`, key confusion, the time
//! claims, `aud` and `iss`, tampering, malformed tokens and claims.

use super::*;

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
    let long = "a".repeat(crate::auth::verify::MAX_TOKEN_LEN + 1);
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
        json!({"sub": "x".repeat(crate::auth::verify::MAX_SUB_LEN + 1), "exp": NOW + 60}),
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
        (v.sub(), v.exp(), v.topic()),
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
        json!({"subscribe": (0..=crate::auth::grant::MAX_PATTERNS).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
    ] {
        assert_eq!(with(bad.clone()).err(), Some(Refusal::Malformed), "{bad}");
    }
    let claim = json!({"subscribe": ["chat.*", "user.{sub}"], "publish": ["chat.lobby"]});
    let one = with(claim.clone()).unwrap();
    assert!(one.grant.may_subscribe("user.alice", one.sub()));
    assert!(!one.grant.may_subscribe("user.bob", one.sub()));
    assert!(one.grant.may_publish("chat.lobby", one.sub()));
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
