//! The verified-token cache through `Auth`: hits, expiry against the clock, its bound.

use super::*;

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
    // Its nbf was passed (less the leeway) when it was accepted, and time does not go back:
    // a hit is not checked against it again.
    assert!(a.cached(&token, NOW - 3).unwrap().is_ok());
    let early = mint(
        Algorithm::HS256,
        None,
        &json!({"sub": "v", "exp": NOW + 10, "nbf": NOW + 30}),
        &key,
    );
    assert_eq!(a.verify(&early, NOW).err(), Some(Refusal::NotYetValid));
    assert!(
        a.cached(&early, NOW).is_none(),
        "not yet valid is never kept"
    );
    assert_eq!(a.verify(&token, NOW + 16).err(), Some(Refusal::Expired));
    assert_eq!(
        a.stats().verifications()[0],
        ("ok", 1),
        "still one full check"
    );
    // Long past its expiry the entry is gone, and a full check says so again.
    assert!(a
        .cached(&token, NOW + 10 + 5 + crate::auth::cache::REFUSAL_TTL_S + 1)
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
