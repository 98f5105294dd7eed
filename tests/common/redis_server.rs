//! A real `redis-server` per test, on a loopback port of its own, with no persistence. It is
//! installed by `tools/install-test-deps.sh` (Debian's `redis-server`); a missing binary is
//! a test failure that says how to install it, not a skip.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server; killed when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

/// Where Debian puts it, or whatever `redis-server` is on PATH.
fn binary() -> String {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "redis-server".into()
}

pub use super::process::free_port;

impl Redis {
    /// Starts redis-server on a free port and waits until it answers.
    pub fn start() -> Redis {
        Redis::start_on(free_port(), &[])
    }

    /// Starts redis-server on `port` with extra `--name value` settings.
    pub fn start_on(port: u16, extra: &[&str]) -> Redis {
        let dir =
            std::env::temp_dir().join(format!("corecast-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): install it with `bash tools/install-test-deps.sh` \
                     (apt-get install redis-server)"
                )
            });
        let r = Redis {
            port,
            child: Some(child),
            dir,
        };
        r.wait_ready();
        r
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.client() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain (RESP2) client connection for the test's own commands.
    pub fn client(&self) -> redis::RedisResult<redis::Connection> {
        let c = redis::Client::open(self.url())?;
        c.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = self.client().expect("test client connects to redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// The Redis channels with at least one subscriber.
    pub fn channels(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cmd(&["PUBSUB", "CHANNELS"]);
        v.sort();
        v
    }

    /// Kills the server at once (SIGKILL): what a crash or an OOM kill looks like to clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The port must be free again before a restart binds it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} still accepts",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
