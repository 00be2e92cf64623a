//! A throwaway redis-server for tests: a free loopback port, data in a
//! temp dir, killed when dropped. Never the Redis on the default port.

use super::must;
use redis::aio::MultiplexedConnection;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The longest redis-server may take to answer PING.
const START_WAIT: Duration = Duration::from_secs(5);

/// A redis-server on a free loopback port with its data in a temp dir,
/// killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Arguments after the defaults (later ones win in redis-server).
    extra: &'static [&'static str],
}

/// Persist every write, so that a restart on the same port and dir loses
/// nothing that was acknowledged.
const APPEND_ONLY: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with an append-only file: [`Self::kill`] then
    /// [`Self::revive`] is a crash and a restart that keep the data.
    pub fn start_with_aof() -> Self {
        Self::start_with(APPEND_ONLY)
    }

    fn start_with(extra: &'static [&'static str]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            assert_ne!(port, 6379, "never the default Redis port");
            // None: the port was taken meanwhile; try another one.
            if let Some(child) = spawn(port, dir.path(), extra) {
                return Self {
                    child,
                    port,
                    dir,
                    extra,
                };
            }
        }
        panic!("redis-server did not start on any free port");
    }

    /// Kills the server and starts it again on the same port (empty, unless
    /// it keeps an append-only file).
    pub fn restart(&mut self) {
        self.kill();
        self.revive();
    }

    /// Kills the server (SIGKILL: a crash); [`Self::revive`] starts it again.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn revive(&mut self) {
        self.child = spawn(self.port, self.dir.path(), self.extra).expect("redis-server restarts");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        let client = self.client();
        let conn = client.get_multiplexed_async_connection();
        must("a connection", conn).await
    }

    /// A connection whose response timeout allows reads blocking `block`.
    pub async fn blocking_conn(&self, block: Duration) -> MultiplexedConnection {
        // redis-rs's default response timeout (500 ms) would fail a longer
        // BLOCK client-side while it stays live on the server.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(block + Duration::from_secs(5)));
        let client = self.client();
        let conn = client.get_multiplexed_async_connection_with_config(&config);
        must("a connection", conn).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts redis-server on `port` and waits until it answers PING.
fn spawn(port: u16, dir: &Path, extra: &[&str]) -> Option<Child> {
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install -y redis-server)");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let started = Instant::now();
    while started.elapsed() < START_WAIT && child.try_wait().ok().flatten().is_none() {
        let pong = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if pong.is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
