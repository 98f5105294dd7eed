//! Unit tests of the configuration: flags, derived defaults, bounds.

use super::*;

fn load(args: &[&str]) -> Result<Loaded, String> {
    let mut all = vec!["corecast"];
    all.extend_from_slice(args);
    load_from(all).map_err(|e| e.to_string())
}

fn parse(args: &[&str]) -> Result<Config, String> {
    load(args).map(|l| l.config)
}

/// The error of a configuration that must be refused.
fn refused(args: &[&str]) -> String {
    match load(args) {
        Ok(l) => panic!("{args:?} accepted: {:?}", l.config),
        Err(e) => e,
    }
}

#[test]
fn defaults_and_frame_cap() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert!(c.workers >= 1);
    assert_eq!(c.max_frame_size, c.max_message_size);
    let c = parse(&["--max-message-size", "100", "--max-frame-size", "1000"]).unwrap();
    assert_eq!(c.max_frame_size, 100);
}

#[test]
fn refuses_impossible_combinations() {
    assert!(parse(&["--max-message-size", "0"])
        .unwrap_err()
        .contains("max-message-size"));
    assert!(parse(&["--ping-interval", "10", "--idle-timeout", "5"])
        .unwrap_err()
        .contains("idle-timeout"));
    assert!(parse(&["--slow-consumer", "maybe"]).is_err());
    assert!(parse(&["--admin-listen", "0.0.0.0:9001"])
        .unwrap_err()
        .contains("--api-token"));
    assert!(parse(&["--admin-listen", "0.0.0.0:9001", "--api-token", "s3cret"]).is_ok());
    assert!(parse(&["--admin-listen", "nowhere"]).is_err());
    assert_eq!(
        parse(&["--admin-listen", "off"]).unwrap().admin_listen,
        None
    );
    let e = parse(&[
        "--max-message-size",
        "65536",
        "--max-outbound-bytes",
        "65536",
    ]);
    assert!(e.unwrap_err().contains("at least 66560"));
    assert!(parse(&["--max-message-size", "1000", "--max-outbound-bytes", "2024"]).is_ok());
    assert!(parse(&["--max-outbound-bytes", "2147483648"]).is_err());
    assert!(parse(&["--max-connections", "0"]).is_err());
}

#[test]
fn tls_needs_both_files() {
    assert!(parse(&["--tls-cert", "c.pem"]).is_err());
    assert!(parse(&["--tls-key", "k.pem"]).is_err());
    let c = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
    assert_eq!(
        c.tls,
        Some(TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into()
        })
    );
    assert_eq!(parse(&[]).unwrap().tls, None);
}

#[test]
fn sizes_take_binary_suffixes() {
    assert_eq!(parse_size("1048576"), Ok(1 << 20));
    assert_eq!(parse_size("512K"), Ok(512 << 10));
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("4g"), Ok(4 << 30));
    assert!(parse_size("4X").is_err());
    assert!(parse_size("G").is_err());
    assert!(parse_size("99999999999T").is_err());
    assert_eq!(
        parse(&["--max-memory", "2G"]).unwrap().max_memory,
        Some(2 << 30)
    );
    assert_eq!(parse(&[]).unwrap().max_memory, None);
    let c = parse(&["--max-message-size", "64K", "--max-outbound-bytes", "1M"]).unwrap();
    assert_eq!((c.max_message_size, c.max_outbound_bytes), (65536, 1 << 20));
    assert_eq!(
        parse(&["--deflate-min-size", "1K"])
            .unwrap()
            .deflate_min_size,
        1024
    );
}

#[test]
fn defaults_follow_the_values_given() {
    let l = load(&[]).unwrap();
    assert!(l.notes.is_empty(), "{:?}", l.notes);

    let l = load(&["--idle-timeout", "6"]).unwrap();
    let c = &l.config;
    assert_eq!(
        (c.idle_timeout, c.ping_interval, c.message_timeout),
        (secs(6), secs(2), secs(5))
    );
    assert_eq!(l.notes.len(), 2, "{:?}", l.notes);
    assert!(
        l.notes[0].starts_with("--ping-interval not set: 2 s"),
        "{:?}",
        l.notes
    );
    assert!(
        l.notes[1].starts_with("--message-timeout not set: 5 s"),
        "{:?}",
        l.notes
    );
    let c = parse(&["--idle-timeout", "2"]).unwrap();
    assert_eq!((c.ping_interval, c.message_timeout), (secs(1), secs(1)));
    // Above the defaults, nothing needs to follow.
    let l = load(&["--idle-timeout", "40"]).unwrap();
    assert_eq!(
        (l.config.ping_interval, l.config.message_timeout),
        (secs(30), secs(20))
    );
    assert!(l.notes.is_empty());

    // The idle timeout grows for a longer ping interval or message timeout.
    assert_eq!(
        parse(&["--ping-interval", "100"]).unwrap().idle_timeout,
        secs(250)
    );
    assert_eq!(
        parse(&["--ping-interval", "31"]).unwrap().idle_timeout,
        secs(78)
    );
    assert_eq!(
        parse(&["--message-timeout", "80"]).unwrap().idle_timeout,
        secs(81)
    );
    let c = parse(&["--ping-interval", "40", "--message-timeout", "200"]).unwrap();
    assert_eq!(c.idle_timeout, secs(201));

    let l = load(&["--max-message-size", "16777216"]).unwrap();
    assert_eq!(l.config.max_outbound_bytes, 16777216 + MESSAGE_ENVELOPE);
    assert_eq!(l.config.max_frame_size, 16777216);
    assert!(
        l.notes[0].starts_with("--max-outbound-bytes not set: 16778240"),
        "{:?}",
        l.notes
    );
    // A small outbound bound brings the message size (and the frame size) down with it.
    let c = parse(&["--max-outbound-bytes", "2000"]).unwrap();
    assert_eq!((c.max_message_size, c.max_frame_size), (976, 976));
    assert!(refused(&["--max-outbound-bytes", "1024"]).contains("leaves no room"));
}

#[test]
fn only_values_set_can_conflict() {
    let e = refused(&["--idle-timeout", "6", "--message-timeout", "20"]);
    assert_eq!(
        e,
        "--message-timeout (20 s) must be shorter than --idle-timeout (6 s)"
    );
    let e = refused(&["--idle-timeout", "6", "--ping-interval", "30"]);
    assert_eq!(
        e,
        "--idle-timeout (6 s) must be longer than --ping-interval (30 s)"
    );
    let e = refused(&["--max-message-size", "16M", "--max-outbound-bytes", "1M"]);
    assert!(e.contains("it must be at least 16778240"), "{e}");
    assert!(refused(&["--idle-timeout", "1"]).contains("at least 2 s"));
}

#[test]
fn out_of_range_values_are_refused_not_wrapped() {
    // max-message-size + MESSAGE_ENVELOPE would wrap to 1023 and pass its own check.
    let e = refused(&["--max-message-size", "18446744073709551615"]);
    assert!(
        e.starts_with("--max-message-size (18446744073709551615) is too large: at most 1073740800"),
        "{e}"
    );
    assert!(refused(&["--max-message-size", "1G"]).contains("too large"));
    let c = parse(&["--max-message-size", "1073740800"]).unwrap();
    assert_eq!(c.max_outbound_bytes, MAX_OUTBOUND_CEILING);
    assert!(refused(&["--max-message-size", "99999999999999999999"]).contains("too large"));

    // `as u32` would make these 1 s.
    for flag in [
        "--handshake-timeout",
        "--ping-interval",
        "--idle-timeout",
        "--drain-timeout",
        "--backpressure-timeout",
        "--message-timeout",
        "--stats-interval",
    ] {
        let e = refused(&[flag, "4294967297"]);
        assert!(
            e.starts_with(&format!("{flag} (4294967297 s) is too long")),
            "{e}"
        );
    }
    assert_eq!(
        parse(&["--idle-timeout", "86400"]).unwrap().idle_timeout,
        secs(86400)
    );
    assert!(refused(&["--idle-timeout", "86401"]).contains("at most 86400 s"));
    // These two must stay below an idle timeout of at most a day.
    assert_eq!(
        parse(&["--ping-interval", "86399"]).unwrap().idle_timeout,
        secs(86400)
    );
    assert!(refused(&["--ping-interval", "86400"]).contains("at most 86399 s"));
    assert_eq!(
        parse(&["--message-timeout", "86399"]).unwrap().idle_timeout,
        secs(86400)
    );
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
