//! Real processes for the recovery tests: `sagaflow run` and `sagaflow
//! handlers` as children that can be killed, paused and restarted by pid, a
//! redis-server with an append-only file that survives its own restarts, a
//! reader of `saga:events` that outlives Redis restarts, and the audit that
//! every recovery test ends with.

use super::{describe, lossy, manifest_dir, must, Backend, Event};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use sagaflow::connection::{Client, Conn, RedisMode};
use sagaflow::streams::decode_range_reply;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod events;
mod redis_io;

#[allow(unused_imports)] // not every test file uses every helper
pub use events::*;
#[allow(unused_imports)]
pub use redis_io::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_sagaflow");

/// The lease of the test daemons: short, so that takeovers are quick.
pub const LEASE_TTL: &str = "1s";

/// How long a daemon may take from its spawn to running.
pub const READY_WAIT: Duration = Duration::from_secs(5);

/// The events that end a saga.
pub const SAGA_ENDS: [&str; 3] = ["saga_completed", "saga_compensated", "saga_failed"];

/// The directory holding the reference mission.
pub fn mission_sagas() -> PathBuf {
    manifest_dir().join("sagas")
}

// ------------------------------------------------------------ clocks

/// libfaketime's library, wherever the Debian package put it for this
/// architecture (`dpkg -L libfaketime`).
pub fn libfaketime() -> PathBuf {
    let mut dirs = vec![PathBuf::from("/usr/lib/faketime")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
    }
    dirs.into_iter()
        .map(|dir| dir.join("libfaketime.so.1"))
        .find(|lib| lib.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs libfaketime: `apt-get install -y faketime` \
                 (scripts/test installs it)"
            )
        })
}

/// The environment that runs a process with its wall clock moved by
/// `skew` (`+15s`, `-2m`), its monotonic clock (timers, timeouts) true.
pub fn skewed_clock(skew: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", libfaketime().to_string_lossy().into_owned()),
        ("FAKETIME", skew.to_owned()),
        ("DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}

// ------------------------------------------------------------ processes

/// A `sagaflow` child process. Its stderr goes to a file in a temp dir of
/// its own; when a test fails, the dir is kept and its path printed. The
/// process is killed (SIGKILL) when dropped.
pub struct Child {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    process: std::process::Child,
    exited: Option<ExitStatus>,
    logs: Option<tempfile::TempDir>,
    /// The stderr file of each spawn, oldest first.
    log_files: Vec<PathBuf>,
}

impl Child {
    /// Runs `sagaflow <args>` with `RUST_LOG=info`, no `SAGAFLOW_*`
    /// variable from the test's own environment, and then `env`.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let logs = tempfile::Builder::new()
            .prefix(&format!("sagaflow-{name}-"))
            .tempdir()
            .expect("a temp dir for the logs");
        let owned = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut log_files = Vec::new();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = owned(env);
        let process = launch(name, &args, &env, logs.path(), &mut log_files);
        Self {
            name: name.to_owned(),
            args,
            env,
            process,
            exited: None,
            logs: Some(logs),
            log_files,
        }
    }

    /// `sagaflow run` on the reference mission with the test lease.
    pub fn daemon(redis_url: &str, node_id: &str) -> Self {
        Self::daemon_with(redis_url, node_id, &["--lease-ttl", LEASE_TTL], &[])
    }

    /// `sagaflow run` on the reference mission with more flags and env;
    /// it accepts the requests of the test operator (`super::OPERATOR_KEY`).
    pub fn daemon_with(
        redis_url: &str,
        node_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let sagas = mission_sagas();
        let mut args = vec!["run", "--redis-url", redis_url, "--node-id", node_id];
        args.extend(["--sagas", sagas.to_str().expect("a UTF-8 path")]);
        args.extend(extra);
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "SAGAFLOW_OPERATOR_KEYS") {
            env.push(("SAGAFLOW_OPERATOR_KEYS", super::OPERATOR_KEY));
        }
        Self::spawn(node_id, &args, &env)
    }

    /// `sagaflow handlers` (the simulated mission services) with `extra`.
    pub fn handlers(redis_url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["handlers", "--redis-url", redis_url];
        args.extend(extra);
        Self::spawn("handlers", &args, &[])
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(&mut self) {
        if self.exited.is_none() {
            let _ = self.process.kill();
            self.exited = self.process.wait().ok();
        }
    }

    pub fn term(&self) {
        self.signal("TERM");
    }

    /// Pauses the process (SIGSTOP): it holds its sockets but runs nothing.
    pub fn stop(&self) {
        self.signal("STOP");
    }

    pub fn cont(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid} ({})", self.name);
    }

    /// Waits at most `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited.is_none() {
                self.exited = self.process.try_wait().expect("waitpid");
            }
            if self.exited.is_some() || Instant::now() >= deadline {
                return self.exited;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process has not exited (a paused one is running).
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.process.try_wait().expect("waitpid");
        }
        self.exited.is_none()
    }

    /// Changes the value of `flag` (`--node-id`, ...) for the next restart.
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(at) => self.args[at + 1] = value.to_owned(),
            None => self.args.extend([flag.to_owned(), value.to_owned()]),
        }
        if flag == "--node-id" {
            self.name = value.to_owned();
        }
    }

    /// Kills the process (SIGKILL) if it runs, and starts it again with
    /// the same arguments (as changed by [`Child::set_flag`]).
    pub fn restart(&mut self) {
        self.kill9();
        let dir = self.logs.as_ref().expect("logs kept until drop").path();
        self.process = launch(&self.name, &self.args, &self.env, dir, &mut self.log_files);
        self.exited = None;
    }

    /// Waits until the current spawn's stderr holds `needle`; panics with
    /// that stderr after `within`.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stderr().contains(needle) {
            if Instant::now() >= deadline {
                panic!(
                    "{} logged no `{needle}` within {within:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a daemon has started: connected, its lease registered
    /// and its readers about to read.
    pub async fn wait_started(&self) {
        self.wait_for_log("sagaflow daemon started", READY_WAIT)
            .await;
    }

    /// Everything the current spawn wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let last = self.log_files.last().expect("spawned once");
        std::fs::read_to_string(last).unwrap_or_default()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // A paused process dies of SIGKILL too.
        self.kill9();
        if std::thread::panicking() {
            if let Some(logs) = self.logs.take() {
                let _ = logs.keep();
            }
            for file in &self.log_files {
                eprintln!("{} stderr: {}", self.name, file.display());
            }
        }
    }
}

fn launch(
    name: &str,
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
    log_files: &mut Vec<PathBuf>,
) -> std::process::Child {
    let log = dir.join(format!("{name}.{}.stderr", log_files.len()));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(manifest_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("a log file"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SAGAFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    // Many daemons run at once: none serves HTTP unless a test asks, and
    // none exports spans unless a test gives an endpoint.
    cmd.env("SAGAFLOW_HTTP_ADDR", "none");
    for key in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        cmd.env_remove(key);
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    let child = cmd.spawn().expect("the sagaflow binary runs");
    log_files.push(log);
    child
}
