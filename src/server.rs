//! Starting and stopping the whole server: listener, workers, acceptor and the control
//! thread (admin endpoint, stats line). Runs on the caller's thread; used by `main` and by the
//! integration tests.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use mio::net::TcpListener;
use mio::{Poll, Waker};

use crate::acceptor::{self, Acceptor, ACCEPTOR_WAKER};
use crate::admission;
use crate::affinity;
use crate::auth::{Auth, KeyError};
use crate::backplane;
use crate::broadcast::Bus;
use crate::config::{Config, DEFAULT_MEMORY_SHARE_PERCENT};
use crate::conn::tls_config::{self, TlsConfigError};
use crate::console::Console;
use crate::control::Control;
use crate::exit::{self, Exit, ThreadError};
use crate::fdlimit;
use crate::memory;
use crate::shared::Shared;
use crate::stats::{Snapshot, Stats};
use crate::worker::handle::{self, Msg, WorkerHandle};
use crate::worker::{Context, Worker, WAKER};

/// Kernel accept queue length: large enough for a C10K connect burst (the kernel caps it at
/// net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The certificate or key is missing, unreadable, malformed or mismatched: a
    /// configuration mistake (the binary exits 2, as for bad flags).
    #[error("TLS: {0}")]
    Tls(#[from] TlsConfigError),
    /// `--redis` is not a usable Redis URL (exit 2 too).
    #[error("{0}")]
    Backplane(#[from] crate::backplane::OptionsError),
    /// A token key file is missing, unreadable or not a usable key (exit 2 too).
    #[error("auth: {0}")]
    Auth(#[from] KeyError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    acceptor: Option<JoinHandle<()>>,
    acceptor_waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    control: Option<Control>,
    exits: Receiver<Exit>,
}

impl Server {
    /// Binds the listeners and starts every thread.
    pub fn start(cfg: Config) -> Result<Server, StartError> {
        // Before anything is bound: a bad certificate is the most likely mistake.
        let tls = match &cfg.tls {
            Some(files) => Some(tls_config::load(files)?),
            None => None,
        };
        // Then the token keys: a key file that cannot be used is a configuration mistake too.
        let auth = if cfg.auth.enabled() {
            let auth = Arc::new(Auth::new(&cfg.auth)?);
            log::info!(
                "auth: {} key(s) from files{}",
                auth.key_count(),
                auth.jwks_url()
                    .map(|u| format!(", and a JWKS from {}", u.shown()))
                    .unwrap_or_default()
            );
            Some(auth)
        } else {
            None
        };
        let backplane_opts = match &cfg.redis {
            Some(url) => Some(backplane::Options::parse(url, &cfg.redis_prefix)?),
            None => None,
        };
        let listener = if cfg.reuse_port {
            bind_reuse_port(cfg.listen)?
        } else {
            let l = TcpListener::bind(cfg.listen)?;
            // SAFETY: `listen` on a socket we own and that stays open; raising the backlog of
            // an already listening socket is allowed on Linux.
            if unsafe { libc::listen(l.as_raw_fd(), BACKLOG) } != 0 {
                log::warn!(
                    "raising the listen backlog failed: {}",
                    io::Error::last_os_error()
                );
            }
            l
        };
        let addr = listener.local_addr()?;
        let admin_listener = match cfg.admin_listen {
            Some(a) => Some(
                std::net::TcpListener::bind(a)
                    .map_err(|e| io::Error::new(e.kind(), format!("admin endpoint {a}: {e}")))?,
            ),
            None => None,
        };
        let max_connections = connection_limit(&cfg);
        let max_memory = match cfg.max_memory {
            Some(m) => m,
            None => memory::default_limit(DEFAULT_MEMORY_SHARE_PERCENT),
        };
        if max_memory > 0 {
            log::info!(
                "memory guard at {} MiB of resident memory",
                max_memory >> 20
            );
        } else {
            log::info!("memory guard off");
        }
        let memory = Arc::new(memory::Guard::new(max_memory));
        memory.sample();
        let cfg = Arc::new(cfg);
        let rate = cfg.connection_rate();
        if let Some(r) = rate {
            log::info!(
                "new connections limited to {}/s per address, {} at once",
                r.per_second,
                r.burst
            );
        }
        let (admission, gate) = admission::new(max_connections, cfg.max_connections_per_ip, rate);
        let admission = Arc::new(admission);
        let (exit_tx, exits) = crossbeam_channel::unbounded();
        let control_exit = exit_tx.clone();

        let mut polls = Vec::new();
        let mut handles = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..cfg.workers {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            let (h, inbox) = handle::channel(waker);
            polls.push(poll);
            handles.push(h);
            inboxes.push(inbox);
        }
        let workers: Arc<[WorkerHandle]> = handles.into();
        let (link, backplane) = match backplane_opts {
            Some(opts) => {
                let (link, rx) = backplane::link();
                (Some(link), Some((opts, rx)))
            }
            None => (None, None),
        };
        let stats: Vec<Arc<Stats>> = (0..cfg.workers).map(|_| Arc::default()).collect();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            workers: workers.clone(),
            bus: Bus::new(workers.clone(), link.clone()),
            stats: stats.clone(),
            admission: admission.clone(),
            draining: AtomicBool::new(false),
            api_publishes: AtomicU64::new(0),
            api_publishes_refused: AtomicU64::new(0),
            started: Instant::now(),
            memory: memory.clone(),
            auth: auth.clone(),
        });
        let console: Arc<Console> = Arc::default();

        // The acceptor's poll and waker before any thread runs: from here on, what fails
        // drops `server`, whose Drop stops every thread started so far.
        let poll = Poll::new()?;
        let acceptor_waker = Arc::new(Waker::new(poll.registry(), ACCEPTOR_WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Server {
            addr,
            admin_addr: None,
            shared: shared.clone(),
            threads: Vec::new(),
            acceptor: None,
            acceptor_waker,
            stop: stop.clone(),
            control: None,
            exits,
        };

        for (index, (poll, inbox)) in polls.into_iter().zip(inboxes).enumerate() {
            let st = stats[index].clone();
            let console = console.clone();
            let retire = shared.bus.clone();
            let (bus, cfg, admission, exit_tx, memory, tls, auth) = (
                shared.bus.port(index),
                cfg.clone(),
                admission.clone(),
                exit_tx.clone(),
                memory.clone(),
                tls.clone(),
                auth.clone(),
            );
            let t = std::thread::Builder::new()
                .name(format!("corecast-w{index}"))
                .spawn(move || {
                    if cfg.pin {
                        if let Some(core) = affinity::pin_current(index) {
                            log::debug!("worker {index} pinned to core {core}");
                        }
                    }
                    let ctx = Context {
                        bus,
                        cfg,
                        stats: st,
                        admission,
                        memory,
                        tls,
                        console,
                        auth,
                    };
                    let result = exit::guarded(|| Worker::new(index, poll, inbox, ctx)?.run());
                    // Nothing sent to this worker is read from now on: its budget comes back.
                    retire.retire(index);
                    if let Err(e) = &result {
                        log::error!("worker {index} stopped: {e}");
                    }
                    let _ = exit_tx.send(Exit::Worker { index, result });
                })?;
            server.threads.push(t);
        }

        let acc = Acceptor {
            poll,
            listener,
            shared: shared.clone(),
            gate,
            stop,
            tls: cfg.tls.is_some(),
        };
        server.acceptor = Some(
            std::thread::Builder::new()
                .name("corecast-accept".into())
                .spawn(move || {
                    let result = exit::guarded(|| acc.run());
                    if let Err(e) = &result {
                        log::error!("acceptor stopped: {e}");
                    }
                    let _ = exit_tx.send(Exit::Acceptor { result });
                })?,
        );

        #[cfg(test)]
        if FAIL_CONTROL_START.get() {
            return Err(io::Error::other("control plane start failed (injected)").into());
        }
        let control = Control::start(
            admin_listener,
            shared.clone(),
            console,
            backplane,
            control_exit,
        )?;
        server.admin_addr = control.admin_addr();
        server.control = Some(control);
        let scheme = if cfg.tls.is_some() { "wss" } else { "ws" };
        log::info!(
            "listening on {scheme}://{addr} with {} workers",
            cfg.workers
        );
        if let Some(a) = server.admin_addr {
            log::info!("admin endpoint (metrics, healthz, publish) on http://{a}");
        }
        Ok(server)
    }

    /// Reads the certificate and key again (SIGHUP): new connections use them from the next
    /// loop turn of each worker; connections already open keep the ones they started with.
    /// If the files cannot be used, the error is returned and the current ones stay.
    pub fn reload_tls(&self) -> Result<(), TlsConfigError> {
        let Some(files) = &self.shared.cfg.tls else {
            return Ok(());
        };
        let cfg = tls_config::load(files)?;
        self.shared.bus.tell_all(|| Msg::Tls(cfg.clone()));
        Ok(())
    }

    /// Reads the token key files again (SIGHUP), and has a JWKS URL fetched again. If a
    /// file cannot be used, the error is returned and the keys held stay. `None` without
    /// auth.
    pub fn reload_auth(&self) -> Option<Result<(), KeyError>> {
        self.shared.auth.as_ref().map(|a| a.reload())
    }

    /// The token verifier, when a key source is configured.
    pub fn auth(&self) -> Option<&Arc<Auth>> {
        self.shared.auth.as_ref()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Redis backplane's state and counters, with `--redis`.
    pub fn backplane(&self) -> Option<&crate::backplane::Link> {
        self.shared.bus.backplane()
    }

    /// Bytes of publishes from outside the workers (admin API, backplane) in their queues.
    pub fn outside_queued(&self) -> usize {
        self.shared.bus.outside_queued()
    }

    /// Bytes of workers' publishes waiting in other workers' queues (the cross-worker
    /// budget, `broadcast::CROSS_BYTES`).
    pub fn cross_queued(&self) -> usize {
        self.shared.bus.cross_queued()
    }

    /// Where the admin endpoint listens, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Counters summed over workers.
    pub fn stats(&self) -> Snapshot {
        self.shared.totals()
    }

    /// Connections refused at accept: (global limit, per-IP limit).
    pub fn refused(&self) -> (u64, u64) {
        let a = &self.shared.admission;
        (
            a.refused_full.load(Ordering::Relaxed),
            a.refused_per_ip.load(Ordering::Relaxed),
        )
    }

    /// Waits up to `timeout` for a server thread to end on its own, which only happens when
    /// something went wrong (a panic or a polling error).
    pub fn wait_exit(&self, timeout: Duration) -> Option<Exit> {
        match self.exits.recv_timeout(timeout) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Graceful shutdown: stop admin publishes (503), refuse new connections (503) and fail
    /// health checks, close every connection with 1001, wait for the clients to answer (up to
    /// the drain timeout), and join every thread. Returns the first thread failure, if any.
    pub fn shutdown(mut self) -> Result<(), ThreadError> {
        self.stop();
        let mut first_err = Ok(());
        while let Ok(exit) = self.exits.try_recv() {
            let result = exit.result();
            if first_err.is_ok() {
                first_err = result;
            }
        }
        let s = self.stats();
        log::info!(
            "shut down: {} connections accepted, {} messages in, {} deliveries, {} dropped",
            s.accepted,
            s.messages_in,
            s.deliveries,
            s.dropped
        );
        first_err
    }

    /// Stops every thread that runs, in the order that loses no acknowledged publish (see
    /// [`shutdown`](Server::shutdown)), and joins them. What was never started is skipped,
    /// and what is stopped already is not stopped again.
    fn stop(&mut self) {
        if self.threads.is_empty() && self.acceptor.is_none() && self.control.is_none() {
            return;
        }
        if self.shared.cfg.reuse_port {
            // A restart: close the listener before anything else, so that new connections
            // go to the other process on the port (and, with tcp_migrate_req, so do those
            // still in this one's accept queue) instead of being refused here.
            self.stop_acceptor();
            log::info!("--reuse-port: listener closed, draining");
        }
        // First, so that every publish acknowledged with 202 is in the workers' queues ahead
        // of the Msg::Shutdown below.
        if let Some(c) = &self.control {
            c.stop_publishing();
        }
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.bus.tell_all(|| Msg::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stop_acceptor();
        if let Some(c) = self.control.take() {
            c.stop();
        }
    }

    fn stop_acceptor(&mut self) {
        if let Some(a) = self.acceptor.take() {
            acceptor::stop(&self.acceptor_waker, &self.stop);
            let _ = a.join();
        }
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::shutdown`] (a start that failed half way, a caller
    /// that returned early, a test that failed) stops the same way: no thread it started
    /// outlives it, and its ports are closed when this returns.
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
thread_local! {
    /// Tests only: the control plane fails to start on this thread's next `Server::start`,
    /// once the workers and the acceptor run (as it can for want of a descriptor or a thread).
    static FAIL_CONTROL_START: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The WebSocket listener with SO_REUSEPORT (and SO_REUSEADDR), so that another corecast
/// with `--reuse-port` can bind the same address. Warns when the kernel would reset the
/// connections waiting in this listener's queue when it closes (`tcp_migrate_req` off).
fn bind_reuse_port(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => log::warn!(
            "--reuse-port: net.ipv4.tcp_migrate_req is 0, so connections still in this \
             process's accept queue when it stops are reset, not handed to the next one \
             (sysctl -w net.ipv4.tcp_migrate_req=1)"
        ),
        Err(_) => log::warn!(
            "--reuse-port: this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+), so \
             connections still in the accept queue when this process stops are reset"
        ),
    }
    Ok(TcpListener::from_std(s.into()))
}

/// The global connection cap: `--max-connections`, or what the open-files limit leaves
/// after the server's own descriptors. Raises the soft limit to the hard one first.
fn connection_limit(cfg: &Config) -> usize {
    let nofile = match fdlimit::raise_to_hard() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot read the open-files limit: {e}");
            return cfg.max_connections.unwrap_or(usize::MAX);
        }
    };
    let budget = fdlimit::connection_budget(nofile, cfg.workers);
    let reserve = fdlimit::reserve(cfg.workers);
    match cfg.max_connections {
        None => {
            log::info!(
                "connection limit {budget}: open-files limit {nofile} less {reserve} kept for \
                 the server (--max-connections to change)"
            );
            budget
        }
        Some(n) => {
            if n > budget {
                log::warn!(
                    "--max-connections {n} is above what the open-files limit {nofile} allows \
                     ({budget} after the server's own {reserve}): past that, clients are \
                     refused through the spare descriptor"
                );
            } else {
                log::info!("connection limit {n} (open-files limit {nofile})");
            }
            n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// The tests that start servers run one at a time: one of them counts the threads of
    /// every server in the process.
    fn one_at_a_time() -> MutexGuard<'static, ()> {
        static SERVERS: Mutex<()> = Mutex::new(());
        SERVERS.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Threads of servers in this process, by the names every server thread carries.
    fn server_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter(|t| {
                let comm = t.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|c| c.starts_with("corecast-"))
            })
            .count()
    }

    /// A start that fails once the workers and the acceptor run (here the control plane's,
    /// injected) stops them again: no thread is left, and the port refuses connections.
    #[test]
    fn a_start_that_fails_half_way_leaves_nothing_running() {
        let _one = one_at_a_time();
        let before = server_threads();
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        FAIL_CONTROL_START.set(true);
        let started = Server::start(Config {
            listen,
            workers: 2,
            pin: false,
            ..Config::default()
        });
        FAIL_CONTROL_START.set(false);
        let e = started.err().expect("the start fails");
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(server_threads(), before, "server threads left running");
        let refused = std::net::TcpStream::connect(listen).expect_err("the port is closed");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    /// A server on an ephemeral port with two unpinned workers and the defaults.
    fn two_workers() -> Server {
        Server::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 2,
            pin: false,
            ..Config::default()
        })
        .unwrap()
    }

    #[test]
    fn a_worker_that_panics_is_reported_while_the_others_keep_serving() {
        let _one = one_at_a_time();
        let server = two_workers();
        assert!(server.wait_exit(Duration::from_millis(50)).is_none());

        server.shared.workers[1].send(Msg::Panic("injected fault"), drop);
        match server.wait_exit(Duration::from_secs(10)) {
            Some(Exit::Worker { index, result }) => {
                assert_eq!(index, 1);
                let e = result.unwrap_err();
                assert_eq!(e.to_string(), "panicked: injected fault");
            }
            other => panic!("expected worker 1 to report its panic, got {other:?}"),
        }

        // The surviving worker still serves health checks; shutdown still completes, so the
        // binary can log the failure and exit non-zero instead of hanging.
        // Round robin may hand a socket to the dead worker (it is then closed), so ask twice.
        let healthy = (0..2).any(|_| {
            let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200"
        });
        assert!(healthy, "the surviving worker stopped serving");
        server.shutdown().expect("shutdown completes");
    }

    /// The tests run with debug assertions (the `test-release` profile), so that the
    /// worker's end-of-turn invariants are checked in CI. Fails if the profile loses them.
    #[test]
    fn the_tests_run_with_debug_assertions() {
        let on = std::hint::black_box(cfg!(debug_assertions));
        assert!(on, "the test profile must keep debug-assertions = true");
    }

    /// A deliberately broken invariant stops its worker, reported like any panic: the check
    /// runs, and a failure is never silent.
    #[cfg(debug_assertions)]
    #[test]
    fn a_broken_invariant_fails_the_end_of_turn_check() {
        let _one = one_at_a_time();
        let server = two_workers();
        server.shared.workers[0].send(Msg::BreakInvariant, drop);
        match server.wait_exit(Duration::from_secs(10)) {
            Some(Exit::Worker { index, result }) => {
                assert_eq!(index, 0);
                let e = result.unwrap_err().to_string();
                assert!(e.contains("held gauge"), "{e}");
            }
            other => panic!("expected worker 0 to fail its invariant check, got {other:?}"),
        }
        server.shutdown().expect("shutdown completes");
    }

    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// The messages the budget tests publish: 1 MiB of data each.
    const MESSAGE: usize = 1 << 20;
    /// Every blocking read and write of these tests gives up after this long.
    const WATCHDOG: Duration = Duration::from_secs(10);

    /// Two workers (an admin endpoint, room for [`MESSAGE`]s), worker 1 made to die.
    fn worker_1_dead() -> Server {
        let server = Server::start(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            workers: 2,
            pin: false,
            max_message_size: 2 * MESSAGE,
            max_frame_size: 2 * MESSAGE,
            ..Config::default()
        })
        .unwrap();
        server.shared.workers[1].send(Msg::Panic("injected fault"), drop);
        match server.wait_exit(WATCHDOG) {
            Some(Exit::Worker { index: 1, .. }) => server,
            other => panic!("expected worker 1 to die, got {other:?}"),
        }
    }

    /// Sends one HTTP/1.1 request and reads its response: (status, body).
    fn http(s: &mut TcpStream, request: &[u8]) -> (u16, String) {
        s.write_all(request).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("a response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).unwrap();
        (
            head[9..12].parse().unwrap(),
            String::from_utf8(body).unwrap(),
        )
    }

    /// Both budget gauges of `/metrics`: (cross-worker, outside) bytes queued.
    fn budget_gauges(admin: SocketAddr) -> (String, String) {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(WATCHDOG)).unwrap();
        let (status, body) = http(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        let gauge = |name: &str| {
            body.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} exported"))
                .to_owned()
        };
        (
            gauge("corecast_cross_worker_queued_bytes "),
            gauge("corecast_outside_queued_bytes "),
        )
    }

    /// Polls `f` until it holds, failing after the watchdog.
    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + WATCHDOG;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Admin publishes to a dead worker are charged to the outside budget like any: twice
    /// [`OUTSIDE_BYTES`] of them, each queued to the live worker only, are all accepted, and
    /// the budget comes back to nothing once the live worker has taken its copies.
    #[test]
    fn admin_publishes_do_not_leave_their_budget_with_a_dead_worker() {
        let _one = one_at_a_time();
        use crate::broadcast::OUTSIDE_BYTES;
        let server = worker_1_dead();
        let admin = server.admin_addr().unwrap();
        let body = format!(r#"{{"topic":"t","data":"{}"}}"#, "x".repeat(MESSAGE));
        let request = format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(WATCHDOG)).unwrap();
        let n = 2 * OUTSIDE_BYTES / MESSAGE;
        for i in 0..n {
            let (status, answer) = http(&mut s, request.as_bytes());
            assert_eq!(
                (status, &*answer),
                (202, r#"{"queued_workers":1}"#),
                "publish {i} of {n}"
            );
        }
        wait_for("the outside budget back to 0", || {
            server.outside_queued() == 0
        });
        let gauges = budget_gauges(admin);
        assert_eq!(gauges.1, "corecast_outside_queued_bytes 0");
        server.shutdown().expect("shutdown completes");
    }

    /// A client's publishes to a dead worker are charged to the cross-worker budget: twice
    /// [`CROSS_BYTES`] of them from a client of the live worker never hold it back, neither
    /// for the budget nor for its share of it, and the budget comes back to nothing.
    #[test]
    fn client_publishes_do_not_leave_their_budget_with_a_dead_worker() {
        let _one = one_at_a_time();
        use crate::broadcast::CROSS_BYTES;
        use tungstenite::Message;
        let server = worker_1_dead();
        // Round robin may hand a socket to the dead worker (it is then closed): try again.
        let mut ws = (0..4)
            .find_map(|_| {
                let s = TcpStream::connect(server.local_addr()).unwrap();
                s.set_read_timeout(Some(WATCHDOG)).unwrap();
                s.set_write_timeout(Some(WATCHDOG)).unwrap();
                let url = format!("ws://{}/ws", server.local_addr());
                tungstenite::client(url.as_str(), s).ok().map(|(ws, _)| ws)
            })
            .expect("a connection on the live worker");
        let publish = format!(
            r#"{{"op":"publish","topic":"t","data":"{}"}}"#,
            "x".repeat(MESSAGE)
        );
        let n = 2 * CROSS_BYTES / MESSAGE;
        for i in 0..n {
            ws.send(Message::text(publish.clone()))
                .unwrap_or_else(|e| panic!("publish {i} of {n}: {e}"));
        }
        // Answered only if the publisher's input was never held back.
        ws.send(Message::text(r#"{"op":"echo","data":"after"}"#))
            .unwrap();
        loop {
            match ws.read().expect("the echo after the publishes") {
                Message::Text(t) if t.as_str() == r#"{"op":"echo","data":"after"}"# => break,
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(server.stats().publishers_held, 0);
        assert_eq!(
            server.stats().publishers_share_held,
            0,
            "a dead worker holds back no publisher's share"
        );
        wait_for("the cross-worker budget back to 0", || {
            server.shared.bus.cross_queued() == 0
        });
        let gauges = budget_gauges(server.admin_addr().unwrap());
        assert_eq!(gauges.0, "corecast_cross_worker_queued_bytes 0");
        server.shutdown().expect("shutdown completes");
    }
}
