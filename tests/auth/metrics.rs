//! `/metrics` read off the admin endpoint and parsed as Prometheus would
//! (`prometheus-parse`): the auth families the tests count refusals in.

use std::io::{Read, Write};
use std::net::TcpStream;

use corecast::Server;

use crate::common::WATCHDOG;

/// One scrape of `/metrics`, parsed as Prometheus would.
pub struct Metrics(prometheus_parse::Scrape);

pub fn metrics(server: &Server) -> Metrics {
    let mut s = TcpStream::connect(server.admin_addr().expect("admin endpoint on")).unwrap();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    Metrics(prometheus_parse::Scrape::parse(lines).unwrap())
}

impl Metrics {
    /// The sample of `name` whose label `key` is `value` (`""`: the family has no labels).
    #[track_caller]
    pub fn get(&self, name: &str, key: &str, value: &str) -> u64 {
        let found: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| key.is_empty() || s.labels.get(key) == Some(value))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => panic!("{name} is not a scalar"),
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{{{key}={value:?}}}: {found:?}");
        found[0] as u64
    }

    /// `corecast_auth_closes_total{reason}`.
    pub fn closes(&self, reason: &str) -> u64 {
        self.get("corecast_auth_closes_total", "reason", reason)
    }

    /// `corecast_auth_refusals_total{reason}`.
    pub fn refusals(&self, reason: &str) -> u64 {
        self.get("corecast_auth_refusals_total", "reason", reason)
    }

    /// `corecast_auth_verifications_total{outcome}`.
    pub fn verifications(&self, outcome: &str) -> u64 {
        self.get("corecast_auth_verifications_total", "outcome", outcome)
    }
}

/// Every `corecast_auth_refusals_total` reason.
pub const REFUSAL_REASONS: [&str; 9] = [
    "not_connected",
    "subscribe",
    "publish",
    "broadcast",
    "second_connect",
    "refresh_other_user",
    "refresh_anonymous",
    "subscription_token",
    "bad_token",
];

/// Asserts the refusal counters are exactly `want` (reasons not named: zero).
#[track_caller]
pub fn assert_refusals(m: &Metrics, want: &[(&str, u64)]) {
    for reason in REFUSAL_REASONS {
        let n = want.iter().find(|(r, _)| *r == reason).map_or(0, |w| w.1);
        assert_eq!(
            m.refusals(reason),
            n,
            "corecast_auth_refusals_total{{reason={reason:?}}}"
        );
    }
}
