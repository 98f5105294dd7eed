//! The `corecast` binary as a child process, for tests that measure the process itself: its
//! resident memory, its descriptors, its CPU time, its exit status. Each such test gets a
//! process of its own, so other tests running in parallel cannot blur the figures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::WATCHDOG;

/// A running `corecast` binary; killed when dropped.
pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// Collects a child's stderr, line by line, as it comes (read on a thread of its own).
pub fn collect_lines(stderr: std::process::ChildStderr) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    log
}

/// A port the kernel handed out and took back: free for the next moment.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Proc {
    /// Starts the binary with `args` (after its listen addresses and `--no-pin`) and waits
    /// until it answers health checks.
    pub fn start(args: &[&str]) -> Proc {
        Proc::start_limited(args, None)
    }

    /// Like `start`, with the open-files limit (soft and hard) set to `nofile`.
    pub fn start_limited(args: &[&str], nofile: Option<u64>) -> Proc {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Proc::spawn(addr, args, nofile, args.contains(&"--tls-cert"), &[])
    }

    /// Like `start`, with environment variables set (`Some`) or removed (`None`).
    pub fn start_with_env(args: &[&str], env: &[(&str, Option<&str>)]) -> Proc {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Proc::spawn(addr, args, None, args.contains(&"--tls-cert"), env)
    }

    /// Starts the binary listening on `addr` (which another process may share, with
    /// `--reuse-port`), and waits until its own admin port answers health checks.
    pub fn start_on(addr: SocketAddr, args: &[&str]) -> Proc {
        Proc::spawn(addr, args, None, true, &[])
    }

    fn spawn(
        addr: SocketAddr,
        args: &[&str],
        nofile: Option<u64>,
        probe_admin: bool,
        env: &[(&str, Option<&str>)],
    ) -> Proc {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
        cmd.args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string(), "--no-pin"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start corecast");
        let log = collect_lines(child.stderr.take().unwrap());
        let p = Proc {
            child,
            addr,
            admin,
            log,
        };
        // Over TLS the WebSocket port cannot answer a plain health check, and a shared port
        // may answer from another process; the admin port is this process's own.
        let probe = if probe_admin { admin } else { addr };
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Ok(mut s) = TcpStream::connect(probe) {
                s.set_read_timeout(Some(WATCHDOG)).unwrap();
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200" {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "corecast did not start: {:?}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> u64 {
        self.status_field("VmRSS:") * 1024
    }

    /// Open descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// CPU time used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// One sample from `/metrics`, by name and optionally one label; panics if absent.
    pub fn metric(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        super::sample(&self.get("/metrics"), name, label)
    }

    /// Waits until `metric` satisfies `ok`, returning its last value; panics after `limit`.
    pub fn wait_metric(
        &self,
        name: &str,
        label: Option<(&str, &str)>,
        limit: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(name, label);
            if ok(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still {v} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The body of a GET on the admin endpoint.
    pub fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(WATCHDOG)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {WATCHDOG:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets a socket option of type int.
pub fn set_int_opt(s: &TcpStream, level: i32, name: i32, value: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live int and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// Closes a socket with a reset instead of a FIN (SO_LINGER with a zero timeout).
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live struct and its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}
