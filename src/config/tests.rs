//! Unit tests of the configuration: flags, bounds, combinations.

use clap::Parser;

use super::*;

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut all = vec!["corecast"];
    all.extend_from_slice(args);
    Args::try_parse_from(all)
        .map_err(|e| e.to_string())?
        .into_config()
        .map_err(|e| e.to_string())
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
    assert!(parse(&["--message-timeout", "80"])
        .unwrap_err()
        .contains("--message-timeout"));
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
}
