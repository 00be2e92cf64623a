//! The `sagaflow` binary as a user runs it: definition errors stop `run`
//! before it touches Redis, `validate` and `dev` work, and `run` with
//! `handlers` complete a saga and stop cleanly on SIGTERM.

mod common;

use common::*;
use serde_json::json;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sagaflow");

/// A child process whose output goes to files; killed when dropped.
struct Proc {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let child = Command::new(BIN)
            .args(args)
            .current_dir(manifest_dir())
            .env_remove("SAGAFLOW_REDIS_URL")
            .env_remove("SAGAFLOW_SAGAS")
            .env_remove("SAGAFLOW_NODE_ID")
            .env("SAGAFLOW_HTTP_ADDR", "none")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("the sagaflow binary runs");
        Self {
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the exit at most `within`; panics with the output if the
    /// process is still running then.
    async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "sagaflow did not exit within {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------- definition errors

/// Writes the reference mission with `from` replaced by `to` (its first
/// occurrence, or its last with `last`), runs the daemon on it, and checks
/// that it exits at once naming the line that holds `marker`.
async fn broken(from: &str, to: &str, last: bool, marker: &str, what: &str) {
    let text = std::fs::read_to_string(manifest_dir().join("sagas/mission_start.yaml")).unwrap();
    let at = if last {
        text.rfind(from)
    } else {
        text.find(from)
    };
    let at = at.unwrap_or_else(|| panic!("`{from}` is not in the reference mission"));
    let text = format!("{}{to}{}", &text[..at], &text[at + from.len()..]);
    let lines: Vec<&str> = text.lines().collect();
    let holding: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].contains(marker))
        .collect();
    assert_eq!(holding.len(), 1, "`{marker}` must be on one line");
    let line = holding[0] + 1;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mission_start.yaml");
    std::fs::write(&file, &text).unwrap();
    let sagas = dir.path().to_str().unwrap();
    // Nothing listens on port 1: a daemon that reached for Redis first
    // would wait for it instead of exiting.
    let mut proc = Proc::spawn(&[
        "run",
        "--sagas",
        sagas,
        "--redis-url",
        "redis://127.0.0.1:1",
    ]);
    let status = proc.exit_within(Duration::from_secs(5)).await;
    let stderr = proc.stderr();
    assert!(!status.success(), "{what}: exit status {status}\n{stderr}");

    let prefix = format!("{}:{line}:", file.display());
    let found = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| {
            panic!(
                "{what}: no `{prefix}<column>: ` on stderr (line {line} is `{}`):\n{stderr}",
                lines[line - 1]
            )
        });
    let (column, message) = found.split_once(": ").expect("`<column>: <message>`");
    let column: usize = column
        .parse()
        .unwrap_or_else(|_| panic!("{what}: column in {found}"));
    assert!(
        (1..=lines[line - 1].len()).contains(&column),
        "{what}: column {column}"
    );
    assert!(!message.trim().is_empty(), "{what}: no message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_stops_run_with_its_location() {
    let stream = "    stream: resources:commands";
    let to = format!("    priority: high\n{stream}");
    broken(stream, &to, false, "priority", "unknown key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_step_name_stops_run_with_its_location() {
    // The second `allocate_resources` is the duplicate.
    broken(
        "- name: plan_route",
        "- name: allocate_resources  # again",
        false,
        "# again",
        "duplicate step",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_to_an_unknown_step_stops_run_with_its_location() {
    let from = "${steps.allocate_resources.result.robot_ids}";
    broken(
        from,
        "${steps.allocate.result.robot_ids}",
        false,
        "steps.allocate.result",
        "unknown step",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_to_a_later_step_stops_run_with_its_location() {
    let to = "area: ${steps.plan_route.result.area}";
    broken(
        "area: ${input.area}",
        to,
        false,
        "plan_route.result.area",
        "later step",
    )
    .await;
}

/// The reference on the second key of an `input` mapping must be reported
/// on its own line, not on the line of the mapping's first key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reference_below_the_first_input_key_is_reported_on_its_own_line() {
    let from = "${steps.allocate_resources.result.robot_ids}";
    broken(
        from,
        "${steps.allocate.result.robot_ids}",
        true,
        "steps.allocate.result",
        "second key",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_attempts_stop_run_with_their_location() {
    broken(
        "max_attempts: 3",
        "max_attempts: 0",
        false,
        "max_attempts: 0",
        "zero attempts",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_duration_stops_run_with_its_location() {
    broken(
        "timeout: 10s",
        "timeout: ten seconds",
        false,
        "ten seconds",
        "bad duration",
    )
    .await;
}

// ------------------------------------------------------- subcommands

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_accepts_the_shipped_definitions() {
    let mut proc = Proc::spawn(&["validate", "sagas"]);
    let status = proc.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}\n{}", proc.stderr());
    assert!(proc.stdout().contains("mission_start"), "{}", proc.stdout());
}

async fn dev(args: &[&str]) -> (ExitStatus, String) {
    let mut proc = Proc::spawn(args);
    let status = proc.exit_within(Duration::from_secs(20)).await;
    let stdout = proc.stdout();
    (status, format!("{stdout}\nstderr:\n{}", proc.stderr()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_completes_a_mission_on_a_given_redis() {
    let server = RedisServer::start();
    let (status, output) = dev(&["dev", "--redis-url", &server.url(), "--timeout", "15s"]).await;
    assert!(status.success(), "{status}\n{output}");
    assert!(output.contains("saga_completed"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_a_failing_step_shows_the_compensation_and_fails() {
    let server = RedisServer::start();
    let args = [
        "dev",
        "--redis-url",
        &server.url(),
        "--fail-at",
        "plan_route",
        "--timeout",
        "15s",
    ];
    let (status, output) = dev(&args).await;
    assert!(!status.success(), "{status}\n{output}");
    assert!(output.contains("saga_compensated"), "{output}");
}

/// Two missions on the same robots: one waits for the other's locks, and
/// both complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_contend_shows_one_mission_waiting_for_the_others_robots() {
    let server = RedisServer::start();
    let args = [
        "dev",
        "--redis-url",
        &server.url(),
        "--contend",
        "--timeout",
        "15s",
    ];
    let (status, output) = dev(&args).await;
    assert!(status.success(), "{status}\n{output}");
    let waited = [
        "mission A waited for robot:hall-a/robot-1 (held by mission B)",
        "mission B waited for robot:hall-a/robot-1 (held by mission A)",
    ];
    assert!(waited.iter().any(|w| output.contains(w)), "{output}");
    assert!(output.contains("lock_waiting"), "{output}");
    assert!(
        output.contains("mission A: completed") && output.contains("mission B: completed"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_without_a_redis_starts_its_own() {
    let (status, output) = dev(&["dev", "--timeout", "15s"]).await;
    assert!(status.success(), "{status}\n{output}");
    assert!(output.contains("saga_completed"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_handlers_complete_a_saga_and_stop_on_sigterm() {
    let server = RedisServer::start();
    let url = server.url();
    let sagas = manifest_dir().join("sagas");
    let sagas = sagas.to_str().unwrap();
    let mut daemon = Proc::spawn(&["run", "--redis-url", &url, "--sagas", sagas]);
    let mut handlers = Proc::spawn(&["handlers", "--redis-url", &url]);

    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "cli-run",
        &json!({"area": "hall-a", "robots": 2}),
    )
    .await;
    let events = saga_events(&server, "cli-run").await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_completed",
        "\n{}",
        describe(&events)
    );

    daemon.terminate();
    handlers.terminate();
    for (name, proc) in [("run", &mut daemon), ("handlers", &mut handlers)] {
        let status = proc.exit_within(Duration::from_secs(5)).await;
        assert!(
            status.success(),
            "sagaflow {name}: {status}\n{}",
            proc.stderr()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_printed_for_bash_zsh_and_fish() {
    for (shell, says) in [
        ("bash", "complete -F _sagaflow"),
        ("zsh", "#compdef sagaflow"),
        ("fish", "complete -c sagaflow"),
    ] {
        let mut proc = Proc::spawn(&["completions", shell]);
        let status = proc.exit_within(Duration::from_secs(5)).await;
        assert!(status.success(), "{shell}: {status}\n{}", proc.stderr());
        let script = proc.stdout();
        assert!(script.contains(says), "{shell}:\n{script}");
        for sub in ["start", "watch", "completions"] {
            assert!(script.contains(sub), "{shell} completes `{sub}`");
        }
    }
    // bash reads it without a syntax error.
    let mut proc = Proc::spawn(&["completions", "bash"]);
    proc.exit_within(Duration::from_secs(5)).await;
    let checked = Command::new("bash")
        .arg("-n")
        .arg(&proc.stdout)
        .status()
        .expect("bash runs");
    assert!(checked.success(), "bash -n on the completion script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_say_when_they_are_ready() {
    let server = RedisServer::start();
    let mut handlers = Proc::spawn(&["handlers", "--redis-url", &server.url()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handlers.stderr().contains("sagaflow handlers ready") {
        assert!(
            Instant::now() < deadline,
            "no ready line:\n{}",
            handlers.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ready means the groups exist: a command sent now is handled.
    let mut conn = server.conn().await;
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("mapping:commands")
        .query_async(&mut conn)
        .await
        .expect("the group exists once ready");
    assert!(
        matches!(groups, redis::Value::Array(ref a) if !a.is_empty()),
        "{groups:?}"
    );
    handlers.terminate();
    let status = handlers.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
}
