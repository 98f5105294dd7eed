//! The configuration as an operator meets it: the `corecast` binary started with a `--config`
//! file, flags and `CORECAST_*` variables, or refused with exit status 2 and a message that
//! names what is wrong; and the systemd unit checked by `systemd-analyze verify`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{collect_lines, free_port};
use common::*;
use serde_json::json;
use tungstenite::Message;

/// A `corecast` process on loopback ports of its own; killed when dropped.
struct Running {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// The binary with `args` and `env`, one worker, no pinning, no admin endpoint, on a free
/// port (the flags come after `args`, so they override any file).
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
    cmd.args(args)
        .args(["--workers", "1", "--no-pin", "--admin-listen", "off"])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts the binary and waits until it answers a health check on its WebSocket port.
fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = command(args, env)
        .args(["--listen", &addr.to_string()])
        .spawn()
        .expect("start corecast");
    let log = collect_lines(child.stderr.take().unwrap());
    let p = Running { child, addr, log };
    let deadline = Instant::now() + WATCHDOG;
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.set_read_timeout(Some(WATCHDOG)).unwrap();
            use std::io::Write;
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            if matches!(read_response(&mut s), Ok(r) if r.status == 200) {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "corecast {args:?} {env:?} did not start:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary, which must refuse to start; returns its exit status and stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = command(args, env)
        .args(["--listen", "127.0.0.1:0"])
        .spawn()
        .expect("start corecast");
    let log = collect_lines(child.stderr.take().unwrap());
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "corecast {args:?} {env:?} started instead of refusing:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The reader thread sees EOF once the process is gone; give it a moment to finish.
    let until = Instant::now() + Duration::from_secs(2);
    let mut text = log.lock().unwrap().join("\n");
    while text.is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        text = log.lock().unwrap().join("\n");
    }
    (status.code().expect("exited, not killed"), text)
}

/// A file with `text` in a directory of this test's own.
fn file(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corecast-config-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("corecast.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A JSON echo of `len` bytes of data: answered when it fits, closed with 1009 when not.
fn echo_of(len: usize) -> Message {
    Message::text(json!({"op":"echo","data":"x".repeat(len)}).to_string())
}

/// The server answers an echo with `fits` bytes of data and closes a connection that sends
/// one with `too_big`.
fn assert_message_limit(addr: SocketAddr, fits: usize, too_big: usize) {
    let mut c = connect(addr, "/ws");
    c.send(echo_of(fits)).unwrap();
    assert_eq!(recv(&mut c)["data"].as_str().map(str::len), Some(fits));
    c.send(echo_of(too_big)).unwrap();
    assert_eq!(expect_close(&mut c), 1009);
}

#[test]
fn the_example_file_starts_a_server_that_answers() {
    let example = repo("deploy/corecast.toml");
    let p = start(&["--config", example.to_str().unwrap()], &[]);
    let mut c = connect(p.addr, "/ws");
    send(&mut c, json!({"op":"echo","id":1,"data":"hello"}));
    assert_eq!(recv(&mut c), json!({"op":"echo","id":1,"data":"hello"}));
    // listen and admin-listen were overridden by the test's flags; stats-interval was not.
    let log = p.log();
    assert!(
        log.contains("1 setting(s) from the file (stats-interval); overridden by flags or CORECAST_* variables: listen, admin-listen"),
        "{log}"
    );
}

#[test]
fn a_file_setting_takes_effect() {
    let f = file("effect", "# limits\nmax-message-size = \"1K\"\n");
    let p = start(&["--config", f.to_str().unwrap()], &[]);
    assert_message_limit(p.addr, 900, 2000);
}

#[test]
fn a_flag_overrides_the_file() {
    let f = file("flag", "max-message-size = \"1K\"\n");
    let p = start(
        &["--config", f.to_str().unwrap(), "--max-message-size", "4K"],
        &[],
    );
    assert_message_limit(p.addr, 3000, 5000);
}

#[test]
fn a_variable_overrides_the_file() {
    let f = file("variable", "max-message-size = \"1K\"\n");
    let p = start(
        &["--config", f.to_str().unwrap()],
        &[("CORECAST_MAX_MESSAGE_SIZE", "4096")],
    );
    assert_message_limit(p.addr, 3000, 5000);
    // The file itself may come from the environment too.
    let p = start(&[], &[("CORECAST_CONFIG", f.to_str().unwrap())]);
    assert_message_limit(p.addr, 900, 2000);
}

#[test]
fn an_unknown_key_stops_start_up_naming_it_and_its_line() {
    let f = file("unknown", "workers = 1\n\nmax-mesage-size = 10\n");
    let (code, err) = refused(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "--config {}, line 3: unknown key `max-mesage-size`",
            f.display()
        )),
        "{err}"
    );
}

#[test]
fn a_wrong_type_stops_start_up_naming_the_key_and_its_line() {
    for (name, text, want) in [
        (
            "type-bool",
            "workers = 1\nno-pin = \"yes\"\n",
            "line 2: `no-pin` must be true or false, not a string",
        ),
        (
            "type-int",
            "\n\nidle-timeout = \"soon\"\n",
            "line 3: `idle-timeout`: invalid value 'soon'",
        ),
        (
            "type-array",
            "allowed-origin = \"https://a.example\"\n",
            "line 1: `allowed-origin` must be an array of strings, not a string",
        ),
    ] {
        let f = file(name, text);
        let (code, err) = refused(&["--config", f.to_str().unwrap()], &[]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn a_secret_in_the_file_is_never_logged() {
    // A broken line: toml's own error text would quote it.
    let f = file("secret-bad", "workers = 1\napi-token = \"s3cret-t0ken\n");
    let (code, err) = refused(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    // A good file: the start-up log names the key, not its value.
    let f = file(
        "secret-good",
        "api-token = \"s3cret-t0ken\"\nredis-prefix = \"x\"\n",
    );
    let p = start(&["--config", f.to_str().unwrap()], &[]);
    let log = p.log();
    assert!(log.contains("(api-token, redis-prefix)"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

#[test]
fn a_missing_file_stops_start_up() {
    let (code, err) = refused(&["--config", "/nonexistent/corecast.toml"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read --config /nonexistent/corecast.toml: No such file"),
        "{err}"
    );
}

#[test]
fn a_short_idle_timeout_alone_starts_and_says_what_followed_it() {
    let p = start(&["--idle-timeout", "6"], &[]);
    let log = p.log();
    assert!(
        log.contains("--message-timeout not set: 5 s instead of 20 s"),
        "{log}"
    );
    assert!(
        log.contains("--ping-interval not set: 2 s instead of 30 s"),
        "{log}"
    );
    let mut c = connect(p.addr, "/ws");
    send(&mut c, json!({"op":"echo","data":1}));
    assert_eq!(recv(&mut c), json!({"op":"echo","data":1}));
}

#[test]
fn a_large_max_message_size_alone_starts_and_carries_such_messages() {
    let p = start(&["--max-message-size", "16777216"], &[]);
    assert!(
        p.log()
            .contains("--max-outbound-bytes not set: 16778240 instead of 1048576"),
        "{}",
        p.log()
    );
    // Four times the old outbound bound, echoed whole.
    let mut c = connect(p.addr, "/echo");
    let big: Vec<u8> = (0..=255u8).cycle().take(4 << 20).collect();
    c.send(Message::binary(big.clone())).unwrap();
    let back = c.read().unwrap();
    assert!(back == Message::binary(big), "{} bytes back", back.len());
}

#[test]
fn values_the_user_set_can_still_conflict() {
    let f = file("conflict", "idle-timeout = 6\nmessage-timeout = 20\n");
    for (args, want) in [
        (
            vec!["--idle-timeout", "6", "--message-timeout", "20"],
            "--message-timeout (20 s) must be shorter than --idle-timeout (6 s)",
        ),
        (
            vec!["--max-message-size", "16777216", "--max-outbound-bytes", "1048576"],
            "--max-outbound-bytes (1048576) cannot hold one message of --max-message-size (16777216)",
        ),
        (
            vec!["--config", f.to_str().unwrap()],
            "--message-timeout (20 s) must be shorter than --idle-timeout (6 s)",
        ),
    ] {
        let (code, err) = refused(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn out_of_range_values_are_refused_not_wrapped() {
    for (args, want) in [
        (
            ["--max-message-size", "18446744073709551615"],
            "--max-message-size (18446744073709551615) is too large: at most 1073740800",
        ),
        (
            ["--backpressure-timeout", "4294967297"],
            "--backpressure-timeout (4294967297 s) is too long: at most 86400 s",
        ),
        (
            ["--idle-timeout", "4294967396"],
            "--idle-timeout (4294967396 s) is too long: at most 86400 s",
        ),
    ] {
        let (code, err) = refused(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `systemd-analyze verify` on a copy of deploy/corecast.service whose ExecStart is the built
/// binary (verify requires it to exist), with `edit` applied: (success, what it printed).
fn verify_unit(test: &str, edit: impl Fn(String) -> String) -> (bool, String) {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is missing: run tools/install-test-deps.sh (Debian's systemd)");
    let unit = std::fs::read_to_string(repo("deploy/corecast.service")).unwrap();
    let installed = "ExecStart=/usr/local/bin/corecast ";
    assert!(unit.contains(installed), "the unit's ExecStart moved");
    let unit = unit.replace(
        installed,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_corecast")),
    );
    let dir = std::env::temp_dir().join(format!("corecast-unit-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("corecast.service");
    std::fs::write(&path, edit(unit)).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_service_unit_passes_systemd_analyze_verify() {
    let (ok, said) = verify_unit("good", |u| u);
    assert!(ok && said.trim().is_empty(), "verify complained:\n{said}");
    let unit = std::fs::read_to_string(repo("deploy/corecast.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/corecast --config /etc/corecast/corecast.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=1048576",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "AmbientCapabilities=\n",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
    // A stop must outlast the drain, with room: systemd's SIGKILL would cut it short.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in plain seconds");
    assert!(
        stop >= 2 * corecast::config::DEFAULT_DRAIN_TIMEOUT_S + 10,
        "TimeoutStopSec={stop}"
    );
}

#[test]
fn systemd_analyze_verify_catches_a_broken_unit() {
    // An unknown directive: verify still exits 0, but says so.
    let (_, said) = verify_unit("unknown", |u| {
        u.replace("[Service]\n", "[Service]\nFrobnicate=yes\n")
    });
    assert!(
        said.contains("Unknown key") && said.contains("Frobnicate"),
        "{said}"
    );
    // A binary that is not there fails it outright.
    let (ok, said) = verify_unit("missing", |u| {
        u.replace(env!("CARGO_BIN_EXE_corecast"), "/nonexistent/corecast")
    });
    assert!(!ok, "{said}");
    assert!(said.contains("/nonexistent/corecast"), "{said}");
}
