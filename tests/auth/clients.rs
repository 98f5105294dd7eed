//! The independent clients, Python `websockets` and Node `ws` (tests/clients/
//! py_auth_client.py, node_auth_client.mjs), with tokens of every algorithm from both
//! libraries through every way a token can arrive, and every attack; what they report the
//! servers should have counted is compared with /metrics.

use corecast::auth::Settings;
use serde_json::{json, Value};

use crate::attacks::attacks;
use crate::metrics::*;
use crate::support::*;

/// The plan the independent clients follow (tests/clients/py_auth_client.py): every
/// algorithm's token from both libraries, a refresh pair, and every attack from both.
fn client_plan(url: &str, url_no_query: &str) -> Value {
    let mut good = Vec::new();
    for lib in Lib::BOTH {
        let specs: Vec<Spec> = Alg::ALL.iter().map(|&a| token(a, "alice")).collect();
        for ((alg, spec), t) in Alg::ALL.iter().zip(&specs).zip(lib.mint(&specs)) {
            let what = format!("{} {}", lib.name(), alg.name());
            good.push(json!({"what": what, "sub": "alice", "exp": spec.exp(), "token": t}));
        }
    }
    let same = token(Alg::EdDsa, "alice").claim("exp", json!(now() + 1200));
    let same_exp = same.exp();
    let refresh = Lib::Jose.mint(&[same, token(Alg::Rs256, "bob")]);
    let mut bad = Vec::new();
    for lib in Lib::BOTH {
        let list = attacks();
        let specs: Vec<Spec> = list.iter().map(|a| a.spec.clone()).collect();
        for (a, t) in list.iter().zip(lib.mint(&specs)) {
            let what = format!("{} {}", lib.name(), a.what);
            bad.push(json!({"what": what, "reason": a.class.reason(), "token": t}));
        }
    }
    json!({
        "url": url, "url_no_query": url_no_query,
        "good": good,
        "refresh": {"same": refresh[0], "same_exp": same_exp, "other": refresh[1]},
        "bad": bad,
        "grant": {"subscribe": "chat.room", "publish": "chat.room", "denied": "admin.news"},
    })
}

/// Runs an independent client's auth script against two servers (with and without
/// --auth-query-token) and compares what it says the servers should have counted with
/// their /metrics; then the servers are healthy.
fn run_auth_client(program: &str, script: &str) {
    let with_query = server(Settings {
        query_token: true,
        ..settings()
    });
    let without = server(settings());
    let url = format!("ws://{}", with_query.local_addr());
    let plan = client_plan(&url, &format!("ws://{}", without.local_addr()));
    let (ok, out, report) = run_script(program, &[script], &plan.to_string());
    assert!(ok, "independent client failed:\n{report}\n{INSTALL_HINT}");
    let counts: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no counts on the last line ({e}):\n{report}"));
    let m = metrics(&with_query);
    let main = &counts["main"];
    for reason in ["upgrade_refused", "connect_refused"] {
        assert_eq!(Some(m.closes(reason)), main[reason].as_u64(), "{reason}");
    }
    let want: Vec<(&str, u64)> = REFUSAL_REASONS
        .iter()
        .map(|r| (*r, main["refusals"][r].as_u64().unwrap_or(0)))
        .collect();
    assert_refusals(&m, &want);
    let refused = metrics(&without).closes("upgrade_refused");
    assert_eq!(
        Some(refused),
        counts["no_query"]["upgrade_refused"].as_u64()
    );
    let good = Lib::PyJwt.mint(&[token(Alg::Hs256, "carol"), token(Alg::Hs256, "carol")]);
    assert_healthy(&with_query, &good[0]);
    assert_healthy(&without, &good[1]);
    with_query.shutdown().expect("server shuts down cleanly");
    without.shutdown().expect("server shuts down cleanly");
    print!("{report}");
}

#[test]
fn python_websockets_client_with_tokens_from_both_libraries() {
    run_auth_client("python3", "tests/clients/py_auth_client.py");
}

#[test]
fn node_ws_client_with_tokens_from_both_libraries() {
    run_auth_client("node", "tests/clients/node_auth_client.mjs");
}
