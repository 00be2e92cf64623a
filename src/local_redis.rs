//! Private Redis for `sagaflow dev`, `sagaflow bench` and the tests: one
//! `redis-server` child ([`LocalRedis`]) or a Redis Cluster of them
//! ([`LocalCluster`]), on free loopback ports with their data in a temp dir,
//! killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod cluster;
mod probe;

pub use cluster::{ClusterNode, ClusterOptions, LocalCluster, LocalClusterError};
pub use probe::{cluster_nodes, wait_healthy, NodeView, SLOTS};

/// A private `redis-server`, killed when dropped.
pub struct LocalRedis {
    child: Child,
    pub url: String,
    dir: PathBuf,
}

impl LocalRedis {
    /// Starts one on a free loopback port, in a temp dir, with `extra`
    /// arguments (such as `--appendonly yes`).
    pub fn start(extra: &[&str]) -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        let dir =
            std::env::temp_dir().join(format!("sagaflow-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "redis-server is not installed. Install it (Debian/Ubuntu: \
                     `sudo apt-get install redis-server`; macOS: `brew install redis`), or pass \
                     --redis-url to use a running Redis."
                        .to_owned()
                }
                _ => format!("cannot start redis-server: {e}"),
            })?;
        let mut me = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            dir,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited at start-up ({status})"));
            }
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("redis-server did not answer within 10 s".into())
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
