//! Redis with an append-only file, restartable in place, and plain
//! connections and stream reads for the process tests.

use super::*;

// ------------------------------------------------- redis with an AOF

/// How long redis-server may take to answer PING after a (re)start.
const REDIS_START_WAIT: Duration = Duration::from_secs(5);

/// A redis-server that persists every write (`appendonly yes`,
/// `appendfsync always`) in a temp dir, so that a restart on the same port
/// and dir loses nothing it acknowledged. Killed when dropped.
pub struct AofRedis {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl AofRedis {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            assert_ne!(port, 6379, "never the default Redis port");
            // None: the port was taken meanwhile; try another one.
            if let Some(child) = spawn_aof(port, dir.path()) {
                return Self { child, port, dir };
            }
        }
        panic!("redis-server did not start on any free port");
    }

    /// Kills the server (SIGKILL: a crash, not a clean stop), leaves it
    /// down for `down_for`, and starts it again on the same port and dir.
    pub fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn_aof(self.port, self.dir.path()).expect("redis-server restarts");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        connect(&self.url()).await
    }
}

impl Drop for AofRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_aof(port: u16, dir: &Path) -> Option<std::process::Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install -y redis-server)");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let started = Instant::now();
    while started.elapsed() < REDIS_START_WAIT && child.try_wait().ok().flatten().is_none() {
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

// ---------------------------------------------------------------- redis

/// A connection whose commands give up after a second, so that a test
/// never hangs on a Redis that is down.
pub(super) async fn try_connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

pub async fn connect(url: &str) -> MultiplexedConnection {
    must("a connection", try_connect(url)).await
}

/// Writes `n` starts of the reference mission in one round trip, with
/// correlation ids `<prefix>-000`, `<prefix>-001`, ...; returns the ids.
pub async fn start_missions(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    let payload = r#"{"area":"hall-a","robots":2}"#;
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("XADD")
            .arg("mission:start")
            .arg("*")
            .arg("payload")
            .arg(payload)
            .arg("correlation_id")
            .arg(id);
    }
    let _: Vec<String> = must("the starts", pipe.query_async(conn)).await;
    ids
}

/// The id of the newest entry of `stream` (`0-0` when it is empty).
pub async fn last_id(conn: &mut MultiplexedConnection, stream: &str) -> String {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(stream).arg("+").arg("-").arg("COUNT").arg(1);
    let reply: redis::Value = must("XREVRANGE", cmd.query_async(conn)).await;
    decode_range_reply(stream, &reply)
        .into_iter()
        .next()
        .map(|e| e.id)
        .unwrap_or_else(|| "0-0".to_owned())
}

/// The entries of `stream` after `after`, with their values as text.
pub async fn entries_after(
    conn: &mut MultiplexedConnection,
    stream: &str,
    after: &str,
) -> Vec<crate::common::Fields> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream).arg(format!("({after}")).arg("+");
    let reply: redis::Value = must("XRANGE", cmd.query_async(conn)).await;
    decode_range_reply(stream, &reply)
        .iter()
        .map(|e| lossy(&e.fields))
        .collect()
}

/// A number in `0..n` from the random bits of a UUID4.
pub fn random_below(n: usize) -> usize {
    let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
    (high % n as u64) as usize
}
