//! Unit tests of the configuration: flags, derived defaults, bounds, the file.

use std::path::{Path, PathBuf};

use super::*;
use crate::admission::Rate;

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

/// A config file with `text`, unique to this test process and `name`.
fn file(name: &str, text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("corecast-unit-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn with_file<'a>(path: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    all
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

#[test]
fn the_connection_rate_is_off_by_default_and_its_burst_follows_it() {
    let c = parse(&[]).unwrap();
    assert_eq!(
        (c.max_connection_rate_per_ip, c.connection_rate_burst),
        (0, None)
    );
    assert_eq!(c.connection_rate(), None);
    // A burst alone sets nothing: there is no rate to burst above.
    assert_eq!(
        parse(&["--connection-rate-burst", "50"])
            .unwrap()
            .connection_rate(),
        None
    );
    let rate = |per_second, burst| Some(Rate { per_second, burst });
    assert_eq!(
        parse(&["--max-connection-rate-per-ip", "20"])
            .unwrap()
            .connection_rate(),
        rate(20, 20)
    );
    let c = parse(&[
        "--max-connection-rate-per-ip",
        "20",
        "--connection-rate-burst",
        "50",
    ])
    .unwrap();
    assert_eq!(c.connection_rate(), rate(20, 50));
    // The notes are for defaults that move; the burst's default is the rate, always.
    assert!(load(&["--max-connection-rate-per-ip", "20"])
        .unwrap()
        .notes
        .is_empty());
    let c = parse(&[
        "--max-connection-rate-per-ip",
        "1000000",
        "--connection-rate-burst",
        "1",
    ])
    .unwrap();
    assert_eq!(c.connection_rate(), rate(1_000_000, 1));

    for (flag, value) in [
        ("--max-connection-rate-per-ip", "1000001"),
        ("--max-connection-rate-per-ip", "4294967297"),
        ("--max-connection-rate-per-ip", "ten"),
        ("--connection-rate-burst", "0"),
        ("--connection-rate-burst", "1000001"),
    ] {
        let e = refused(&[flag, value]);
        assert!(e.contains(&format!("'{value}' for '{flag} ")), "{e}");
    }

    // Each has its variable, named as every other flag's is.
    let cmd = Args::command();
    for (long, var) in [
        (
            "max-connection-rate-per-ip",
            "CORECAST_MAX_CONNECTION_RATE_PER_IP",
        ),
        ("connection-rate-burst", "CORECAST_CONNECTION_RATE_BURST"),
    ] {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap();
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(var)));
    }
    let help = cmd.clone().render_long_help().to_string();
    assert!(help.contains("Default: equal to the rate"), "{help}");

    // The file sets both; a flag overrides the file.
    let f = file(
        "rate",
        "max-connection-rate-per-ip = 5\nconnection-rate-burst = \"10\"\n",
    );
    assert_eq!(
        parse(&with_file(&f, &[])).unwrap().connection_rate(),
        rate(5, 10)
    );
    let c = parse(&with_file(&f, &["--max-connection-rate-per-ip", "7"])).unwrap();
    assert_eq!(c.connection_rate(), rate(7, 10));
}

#[test]
fn a_file_sets_what_flags_do_and_ranks_below_them() {
    let f = file(
        "ranks",
        "listen = \"127.0.0.1:9100\"\n\
         max-message-size = \"2K\"\n\
         idle-timeout = 6\n\
         allowed-origin = [\"https://a\", \"https://b\"]\n\
         no-pin = true\n\
         permessage-deflate = false\n\
         max-memory = 1073741824\n\
         slow-consumer = \"drop\"\n\
         tls-key = \"k.pem\"\n\
         api-token = \"t0ken\"\n",
    );
    let l = load(&with_file(&f, &["--tls-cert", "c.pem"])).unwrap();
    let c = &l.config;
    assert_eq!(c.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(c.max_message_size, 2048);
    assert_eq!(c.allowed_origins, ["https://a", "https://b"]);
    assert!(!c.pin && !c.permessage_deflate);
    assert_eq!(c.max_memory, Some(1 << 30));
    assert_eq!(c.slow_consumer, SlowConsumer::Drop);
    assert_eq!(c.api_token.as_deref(), Some("t0ken"));
    // A requirement between flags is met across the file and the command line.
    assert_eq!(c.tls.as_ref().unwrap().key, PathBuf::from("k.pem"));
    // A file value counts as set: the message timeout follows it.
    assert_eq!((c.idle_timeout, c.message_timeout), (secs(6), secs(5)));
    assert!(
        l.notes[0].contains("10 setting(s) from the file"),
        "{:?}",
        l.notes
    );
    assert!(!l.notes.concat().contains("t0ken"));

    let l = load(&with_file(
        &f,
        &[
            "--tls-cert",
            "c.pem",
            "--listen",
            "127.0.0.1:9200",
            "--allowed-origin",
            "https://c",
        ],
    ))
    .unwrap();
    assert_eq!(l.config.listen.to_string(), "127.0.0.1:9200");
    assert_eq!(l.config.allowed_origins, ["https://c"]);
    assert!(
        l.notes[0].ends_with("overridden by flags or CORECAST_* variables: listen, allowed-origin"),
        "{:?}",
        l.notes
    );

    // Two values the user set, one in the file and one on the command line, can conflict.
    let e = refused(&with_file(
        &f,
        &["--tls-cert", "c.pem", "--message-timeout", "20"],
    ));
    assert_eq!(
        e,
        "--message-timeout (20 s) must be shorter than --idle-timeout (6 s)"
    );
}

#[test]
fn a_bad_file_names_the_key_and_its_line() {
    let cases = [
        (
            "unknown",
            "workers = 1\n\nmax-mesage-size = 10\n",
            "line 3: unknown key `max-mesage-size`",
        ),
        (
            "section",
            "workers = 1\n[auth]\nkey = 1\n",
            "line 2: unknown key `auth`",
        ),
        (
            "config",
            "config = \"other.toml\"\n",
            "line 1: unknown key `config`",
        ),
        ("help", "help = true\n", "line 1: unknown key `help`"),
        (
            "typo",
            "workers = 2\nworkers-x = 1\n",
            "line 2: unknown key `workers-x`",
        ),
        (
            "bool",
            "\nno-pin = \"yes\"\n",
            "line 2: `no-pin` must be true or false, not a string",
        ),
        (
            "int",
            "workers = \"many\"\n",
            "line 1: `workers`: invalid value 'many'",
        ),
        (
            "float",
            "max-message-size = 1.5\n",
            "line 1: `max-message-size` must be an integer or a string, not a float",
        ),
        (
            "string",
            "api-token = 42\n",
            "line 1: `api-token` must be a string, not an integer",
        ),
        (
            "list",
            "allowed-origin = \"https://a\"\n",
            "line 1: `allowed-origin` must be an array of strings, not a string",
        ),
        (
            "list-item",
            "allowed-origin = [\"https://a\", 2]\n",
            "line 1: `allowed-origin` must be an array of strings, not an array",
        ),
        (
            "address",
            "listen = 9000\n",
            "line 1: `listen`: invalid value '9000'",
        ),
        (
            "range",
            "deflate-level = 12\n",
            "line 1: `deflate-level`: invalid value '12'",
        ),
        (
            "rate",
            "max-connection-rate-per-ip = 1000001\n",
            "line 1: `max-connection-rate-per-ip`: invalid value '1000001'",
        ),
        (
            "burst",
            "\nconnection-rate-burst = 0\n",
            "line 2: `connection-rate-burst`: invalid value '0'",
        ),
        (
            "choice",
            "slow-consumer = \"maybe\"\n",
            "(one of: close, drop)",
        ),
        (
            "size",
            "max-memory = \"4X\"\n",
            "line 1: `max-memory`: invalid value '4X'",
        ),
        (
            "duplicate",
            "workers = 1\nworkers = 2\n",
            "line 2: duplicate key",
        ),
    ];
    for (name, text, want) in cases {
        let f = file(name, text);
        let e = refused(&with_file(&f, &[]));
        assert!(
            e.starts_with(&format!("--config {}, ", f.display())),
            "{name}: {e}"
        );
        assert!(e.contains(want), "{name}: {e}");
    }
    // A flag that overrides a bad key does not hide it.
    let f = file("hidden", "workers = \"many\"\n");
    assert!(refused(&with_file(&f, &["--workers", "2"])).contains("line 1: `workers`"));

    // toml's own message would quote the line, and with it the secret.
    let f = file("secret", "workers = 1\napi-token = \"s3cret-t0ken\n");
    let e = refused(&with_file(&f, &[]));
    assert!(e.contains("line 2: "), "{e}");
    assert!(!e.contains("s3cret"), "{e}");

    let e = refused(&["--config", "/nonexistent/corecast.toml"]);
    assert!(
        e.starts_with("cannot read --config /nonexistent/corecast.toml: "),
        "{e}"
    );
}

#[test]
fn the_example_file_has_every_flag_and_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = dir.join("deploy/corecast.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let docs = std::fs::read_to_string(dir.join("docs/configuration.md")).unwrap();
    for arg in Args::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version", "config"].contains(&long) {
            continue;
        }
        let key = format!("{long} = ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&key) || l.starts_with(&format!("# {key}"))),
            "deploy/corecast.toml lacks `{long}`"
        );
        assert!(
            docs.contains(&format!("`{long}`")),
            "docs/configuration.md lacks `{long}`"
        );
    }
    let l = load(&["--config", example.to_str().unwrap()]).unwrap();
    assert_eq!(l.config.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(l.config.stats_interval, Some(secs(60)));
}

#[test]
fn auth_flags_reach_the_settings() {
    let a = parse(&[]).unwrap().auth;
    assert_eq!(a, crate::auth::Settings::default());
    assert!(!a.enabled());
    assert_eq!(
        (
            a.jwks_refresh_interval,
            a.jwks_max_age,
            a.leeway,
            a.connect_timeout
        ),
        (secs(30), secs(3600), secs(5), secs(10))
    );
    assert_eq!(a.token_cache, 65536);
    let a = parse(&[
        "--auth-hmac-secret-file",
        "/run/secret",
        "--auth-public-key",
        "a.pem",
        "--auth-public-key",
        "b.pem",
        "--auth-jwks",
        "https://idp.example/jwks.json",
        "--auth-jwks-refresh-interval",
        "7",
        "--auth-jwks-max-age",
        "600",
        "--auth-leeway",
        "0",
        "--auth-audience",
        "corecast",
        "--auth-issuer",
        "https://idp.example/",
        "--auth-connect-timeout",
        "3",
        "--auth-query-token",
        "--anonymous-subscribe",
        "public.>",
        "--anonymous-subscribe",
        "news.*",
        "--anonymous-publish",
        "lobby",
        "--anonymous-without-connect",
        "--auth-token-cache",
        "0",
    ])
    .unwrap()
    .auth;
    assert!(a.enabled());
    assert_eq!(a.hmac_secret_file, Some(PathBuf::from("/run/secret")));
    assert_eq!(
        a.public_keys,
        [PathBuf::from("a.pem"), PathBuf::from("b.pem")]
    );
    assert_eq!(a.jwks_url(), Some("https://idp.example/jwks.json"));
    assert_eq!(
        (
            a.jwks_refresh_interval,
            a.jwks_max_age,
            a.leeway,
            a.connect_timeout
        ),
        (secs(7), secs(600), secs(0), secs(3))
    );
    assert_eq!(a.audience.as_deref(), Some("corecast"));
    assert_eq!(a.issuer.as_deref(), Some("https://idp.example/"));
    assert!(a.query_token && a.anonymous_without_connect);
    assert_eq!(a.anonymous_subscribe, ["public.>", "news.*"]);
    assert_eq!(a.anonymous_publish, ["lobby"]);
    assert_eq!(a.token_cache, 0);
    // Each source alone turns verification on; a JWKS that is not a URL is a file.
    for flags in [
        ["--auth-hmac-secret-file", "s"],
        ["--auth-public-key", "k.pem"],
        ["--auth-jwks", "/etc/jwks.json"],
    ] {
        let a = parse(&flags).unwrap().auth;
        assert!(a.enabled(), "{flags:?}");
        assert_eq!(a.jwks_url(), None);
    }
}

#[test]
fn auth_values_out_of_range_are_refused() {
    for flag in [
        "--auth-jwks-refresh-interval",
        "--auth-jwks-max-age",
        "--auth-connect-timeout",
    ] {
        assert_eq!(
            refused(&[flag, "0"]),
            format!("{flag} must be greater than 0")
        );
    }
    for flag in [
        "--auth-jwks-refresh-interval",
        "--auth-jwks-max-age",
        "--auth-leeway",
        "--auth-connect-timeout",
    ] {
        let e = refused(&[flag, "86401"]);
        assert_eq!(e, format!("{flag} (86401 s) is too long: at most 86400 s"));
    }
    assert!(refused(&["--auth-token-cache", "16777217"]).contains("at most 16777216"));
    assert!(parse(&["--auth-token-cache", "16777216"]).is_ok());
    for (flag, value) in [
        ("--auth-jwks", ""),
        ("--auth-audience", ""),
        ("--auth-issuer", ""),
    ] {
        assert_eq!(refused(&[flag, value]), format!("{flag} must not be empty"));
    }
    let e = refused(&["--auth-jwks", "https://me:pa55word@idp.example/jwks"]);
    assert!(e.contains("credentials in the URL"), "{e}");
    assert!(!e.contains("pa55word"), "{e}");
    assert!(refused(&["--auth-jwks", "http://"]).starts_with("--auth-jwks: "));
}

#[test]
fn a_bad_anonymous_pattern_is_refused_by_name() {
    let e = refused(&[
        "--anonymous-subscribe",
        "public.>",
        "--anonymous-subscribe",
        "a..b",
    ]);
    assert!(e.contains("\"a..b\"") && e.contains("empty segment"), "{e}");
    let e = refused(&["--anonymous-publish", "user.{sub}"]);
    assert!(e.contains("\"user.{sub}\""), "{e}");
    assert!(e.contains("{sub} has no meaning"), "{e}");
    assert!(refused(&["--anonymous-subscribe", "feed.>.x"]).contains("feed.>.x"));
}

#[test]
fn auth_settings_come_from_the_file_below_the_flags() {
    let f = file(
        "auth",
        "auth-public-key = [\"a.pem\", \"b.pem\"]\n\
         auth-jwks = \"http://127.0.0.1:8000/jwks.json\"\n\
         auth-leeway = 30\n\
         auth-query-token = true\n\
         anonymous-subscribe = [\"public.>\"]\n\
         auth-token-cache = 1000\n",
    );
    let a = parse(&with_file(&f, &[])).unwrap().auth;
    assert_eq!(
        a.public_keys,
        [PathBuf::from("a.pem"), PathBuf::from("b.pem")]
    );
    assert_eq!(a.jwks_url(), Some("http://127.0.0.1:8000/jwks.json"));
    assert_eq!((a.leeway, a.token_cache), (secs(30), 1000));
    assert!(a.query_token);
    assert_eq!(a.anonymous_subscribe, ["public.>"]);
    let a = parse(&with_file(
        &f,
        &["--auth-leeway", "2", "--auth-public-key", "c.pem"],
    ))
    .unwrap()
    .auth;
    assert_eq!(a.leeway, secs(2));
    assert_eq!(a.public_keys, [PathBuf::from("c.pem")]);
    let bad = file("auth-bad", "anonymous-publish = [\"x.{sub}\"]\n");
    assert!(refused(&with_file(&bad, &[])).contains("x.{sub}"));
    let bad = file("auth-type", "auth-public-key = \"a.pem\"\n");
    assert!(refused(&with_file(&bad, &[])).contains("must be an array of strings"));
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn rate_limits_from_flags_and_the_file() {
    let c = parse(&[]).unwrap();
    assert!(!c.rate.on(), "off by default");
    let c = parse(&[
        "--max-messages-per-sec",
        "100",
        "--max-bytes-per-sec",
        "64K",
        "--rate-limit-burst",
        "3",
        "--rate-limit-policy",
        "refuse",
    ])
    .unwrap();
    assert_eq!(
        c.rate,
        RateLimits {
            messages_per_sec: 100,
            bytes_per_sec: 64 * 1024,
            burst_secs: 3,
            policy: RatePolicy::Refuse,
        }
    );
    for bad in [
        &["--rate-limit-burst", "0"][..],
        &["--rate-limit-burst", "3601"],
        &["--rate-limit-policy", "sometimes"],
        &["--max-messages-per-sec", "-1"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    let f = file(
        "rate",
        "max-messages-per-sec = 5\nrate-limit-policy = \"close\"\n",
    );
    let c = parse(&with_file(&f, &[])).unwrap();
    assert_eq!(
        (c.rate.messages_per_sec, c.rate.policy),
        (5, RatePolicy::Close)
    );
    let c = parse(&with_file(&f, &["--rate-limit-policy", "hold"])).unwrap();
    assert_eq!(c.rate.policy, RatePolicy::Hold, "a flag overrides the file");
}

#[test]
fn history_rules_are_checked_at_start_and_named_when_refused() {
    let l = load(&["--history", "chat.>:1000:300", "--history", "news:10:60"]).unwrap();
    let h = &l.config.history;
    assert!(h.on());
    assert_eq!(h.rules.find("chat.a.b"), Some(0));
    assert_eq!(h.rules.get(1).count, 10);
    assert_eq!(h.max_recover, crate::config::DEFAULT_HISTORY_MAX_RECOVER);
    assert!(!load(&[]).unwrap().config.history.on(), "off by default");
    let e = refused(&["--history", "chat.>:0:300"]);
    assert!(e.contains("\"chat.>:0:300\"") && e.contains("COUNT"), "{e}");
    assert!(refused(&["--history", "chat.>"]).contains("PATTERN:COUNT:TTL_SECS"));
    assert!(
        refused(&["--history", "x:1:1", "--history-max-limit", "0"]).contains("history-max-limit")
    );
    let e = refused(&["--history", "x:1:1", "--redis", "redis://127.0.0.1/"]);
    assert!(e.contains("not supported yet"), "{e}");
}
