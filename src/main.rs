//! The `corecast` binary: read the configuration (flags, environment, `--config` file), start
//! the server, wait for a signal or a failure.

use std::process::ExitCode;
use std::time::Duration;

use corecast::config::{self, LoadError};
use corecast::exit::Exit;
use corecast::server::StartError;
use corecast::Server;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Exit code when a server thread dies (EX_SOFTWARE).
const EXIT_THREAD_FAILED: u8 = 70;
/// Exit code for a configuration the server cannot run with: bad flags (as clap itself
/// exits), a bad `--config` file, values out of range, unusable certificate or key files.
const EXIT_CONFIG: u8 = 2;

/// How `run` failed.
enum Failure {
    Config(String),
    Runtime(String),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            log::error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(e)) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, Failure> {
    let loaded = match config::load() {
        Ok(loaded) => loaded,
        // clap prints the problem with the usage, or the help text, and exits 2 (0 for help).
        Err(LoadError::Flags(e)) => e.exit(),
        Err(e) => return Err(Failure::Config(e.to_string())),
    };
    for note in &loaded.notes {
        log::info!("{note}");
    }
    let cfg = loaded.config;
    let listen = cfg.listen;
    let server = Server::start(cfg).map_err(|e| match e {
        StartError::Tls(e) => Failure::Config(format!("cannot start: {e}")),
        StartError::Backplane(e) => Failure::Config(format!("cannot start: {e}")),
        StartError::Auth(e) => Failure::Config(format!("cannot start: {e}")),
        StartError::Io(e) => Failure::Runtime(format!("cannot start on {listen}: {e}")),
    })?;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Failure::Runtime(format!("cannot install signal handlers: {e}")))?;
    let signal_handle = signals.handle();
    let (sig_tx, sig_rx) = crossbeam_channel::bounded(8);
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig_tx.send(sig).is_err() {
                return;
            }
        }
    });
    loop {
        match sig_rx.try_recv() {
            Ok(SIGHUP) => {
                // The files are read here, on the main thread; workers get the result
                // through their queues.
                match server.reload_tls() {
                    Ok(()) => log::info!("SIGHUP: certificate and key reloaded"),
                    Err(e) => {
                        log::error!("SIGHUP: reload failed, keeping the current certificate: {e}")
                    }
                }
                // The errors name the key files, never a secret.
                match server.reload_auth() {
                    None => {}
                    Some(Ok(())) => log::info!(
                        "SIGHUP: token keys reloaded ({} key(s))",
                        server.auth().map_or(0, |a| a.key_count())
                    ),
                    Some(Err(e)) => {
                        log::error!(
                            "SIGHUP: token key reload failed, keeping the current keys: {e}"
                        )
                    }
                }
                continue;
            }
            Ok(sig) => {
                log::info!("signal {sig}: draining connections");
                signal_handle.close();
                return match server.shutdown() {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    Err(e) => Err(Failure::Runtime(format!(
                        "a server thread failed during shutdown: {e}"
                    ))),
                };
            }
            Err(_) => {}
        }
        // Nothing ends on its own in a healthy server: any exit here is a failure, and the
        // process goes down loudly rather than running half-dead.
        if let Some(exit) = server.wait_exit(Duration::from_millis(100)) {
            let what = match exit {
                Exit::Worker { index, result } => format!("worker {index}: {result:?}"),
                Exit::Acceptor { result } => format!("acceptor: {result:?}"),
                Exit::Control { result } => format!("control thread: {result:?}"),
            };
            log::error!("server thread ended unexpectedly ({what}); exiting");
            return Ok(ExitCode::from(EXIT_THREAD_FAILED));
        }
    }
}

/// jemalloc, tuned to give memory back: glibc's malloc keeps what a burst of connections
/// freed (measured: 70 MiB still resident 5 s after 1,800 clients left, against 4 MiB before
/// they came), while jemalloc with a background purging thread returns it within seconds.
/// Workers never call into the allocator to trim; the background thread does it off the
/// hot path.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start-up. Dirty pages are purged a second
/// after they are freed (the default is ten) and straight back to the OS (`muzzy_decay_ms:0`:
/// no lazy `MADV_FREE` stage that keeps them counted as resident); one background thread
/// does the purging, so an idle worker need not allocate for its freed memory to go back.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
