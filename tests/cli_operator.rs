//! The operator commands as a user runs them: `start` (with `--wait` and
//! its exit codes, in the non-terminal view), `status`, `list` and `watch`,
//! against a real Redis and daemon.

mod common;

use common::processes::{Child, LEASE_TTL};
use common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sagaflow");

async fn sagaflow(args: &[&str]) -> Output {
    sagaflow_cli(args).await
}

/// Asserts the exit code and a part of stderr.
fn fails_with(out: &Output, code: i32, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(
        stderr(out).contains(says),
        "`{says}` not in: {}",
        stderr(out)
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value after `label` on its line of `start`'s output.
fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no `{label}` in:\n{out}"))
}

const PAYLOAD: &str = r#"{"area": "hall-a", "robots": 2}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_wait_follows_the_saga_and_exits_with_its_outcome() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "operated");
    let mut handlers = Child::handlers(&url, &[]);

    let out = sagaflow(&[
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--wait",
        "--timeout",
        "20s",
    ])
    .await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let saga_id = field(&text, "saga id");
    assert!(
        text.contains("step_completed         integrate_maps"),
        "{text}"
    );
    let last = text.trim_end().lines().last().unwrap_or("");
    assert!(last.starts_with("completed; results: {"), "{text}");
    assert!(last.contains("\"integrate_maps\""), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colours or bars off a terminal"
    );

    // status tells the story of that saga.
    let out = sagaflow(&["status", "--redis-url", &url, &saga_id]).await;
    let status = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(status.contains("state              completed"), "{status}");
    for step in MISSION_STEPS {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&format!("step {step}")) && l.contains("completed")),
            "{step}:\n{status}"
        );
    }
    let out = sagaflow(&["status", "--redis-url", &url, &saga_id, "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["state"]["phase"], "completed");
    assert!(json["events"].as_array().unwrap().len() >= 14);

    // A step that fails: compensated, exit 1, with the story.
    handlers.term();
    handlers.wait_exit(STOP_WAIT).await;
    let _failing = Child::handlers(&url, &["--fail-step", "integrate_maps"]);
    let out = sagaflow(&[
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--correlation-id",
        "unwound",
        "--wait",
        "--timeout",
        "20s",
    ])
    .await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("compensation_completed"), "{text}");
    assert!(
        text.contains("compensated: step integrate_maps failed")
            && text.contains("undone: perform_exploration, plan_route, allocate_resources"),
        "the compensation story: {text}"
    );

    // A start the daemon refuses: exit 2 with the reason.
    let out = sagaflow(&[
        "start",
        "--redis-url",
        &url,
        "--saga",
        "no_such_saga",
        "--wait",
        "--timeout",
        "20s",
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("rejected"), "{}", stdout(&out));

    // list shows both sagas, and filters them.
    let out = sagaflow(&["list", "--redis-url", &url]).await;
    let all = stdout(&out);
    assert!(all.contains(&saga_id) && all.contains("unwound"), "{all}");
    let out = sagaflow(&["list", "--redis-url", &url, "--state", "compensated"]).await;
    let compensated = stdout(&out);
    assert!(
        compensated.contains("unwound") && !compensated.contains(&saga_id),
        "{compensated}"
    );
    let out = sagaflow(&[
        "list",
        "--redis-url",
        &url,
        "--state",
        "stuck",
        "--since",
        "1h",
    ])
    .await;
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "only the header: {}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_seen_before_follows_the_first_saga() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "operated");
    let _handlers = Child::handlers(&url, &[]);
    let args = [
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--idempotency-key",
        "order-42",
        "--wait",
        "--timeout",
        "20s",
    ];
    let first = sagaflow(&args).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let again = sagaflow(&args).await;
    let text = stdout(&again);
    assert_eq!(again.status.code(), Some(0), "{text}{}", stderr(&again));
    assert!(
        text.contains(&format!(
            "exists already: {}",
            field(&stdout(&first), "saga id")
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_events_as_they_come() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon_with(&url, "watched", &["--lease-ttl", LEASE_TTL], &[]);
    let _handlers = Child::handlers(&url, &[]);
    let watch = Command::new(BIN)
        .args(["watch", "--redis-url", &url, "--correlation-id", "seen"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "unseen",
        &serde_json::json!({"area": "a", "robots": 1}),
    )
    .await;
    start_mission(
        &mut conn,
        "seen",
        &serde_json::json!({"area": "a", "robots": 1}),
    )
    .await;
    saga_events(&server, "seen").await;
    saga_events(&server, "unseen").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(watch.id().to_string())
        .status();
    let out = tokio::task::spawn_blocking(move || watch.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        14,
        "the 14 events of one saga:\n{text}"
    );
    assert!(
        text.lines().last().unwrap().contains("saga_completed"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.contains("mission_start")), "{text}");
}

#[tokio::test]
async fn clear_errors_for_a_missing_saga_an_unreachable_redis_and_a_bad_flag() {
    let server = RedisServer::start();
    let url = server.url();
    let out = sagaflow(&[
        "status",
        "--redis-url",
        &url,
        "0123456789abcdef0123456789abcdef",
    ])
    .await;
    fails_with(&out, 1, "no saga `0123456789abcdef0123456789abcdef`");

    let out = sagaflow(&["list", "--redis-url", "redis://127.0.0.1:1"]).await;
    fails_with(&out, 1, "cannot reach Redis at redis://127.0.0.1:1");

    let out = sagaflow(&["start", "--redis-url", &url, "--payload", "[1, 2]"]).await;
    fails_with(&out, 3, "--payload must be a JSON object");

    let out = sagaflow(&["list", "--state", "sideways"]).await;
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&out).contains("sideways"), "{}", stderr(&out));

    for command in [
        "start", "status", "list", "watch", "cancel", "retry", "skip", "abandon", "validate",
    ] {
        let out = sagaflow(&[command, "--help"]).await;
        assert!(
            stdout(&out).contains("Example"),
            "{command} --help has an example"
        );
    }
}

/// A correlation id with a space (`X-Request-ID: order 42`) is given to
/// `start`, followed by `start --wait`, and picked out by `watch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correlation_id_with_a_space_is_started_followed_and_watched() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon_with(&url, "spaced", &["--lease-ttl", LEASE_TTL], &[]);
    let _handlers = Child::handlers(&url, &[]);
    let watch = Command::new(BIN)
        .args(["watch", "--redis-url", &url, "--correlation-id", "order 42"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = sagaflow(&[
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--correlation-id",
        "order 42",
        "--wait",
        "--timeout",
        "20s",
    ])
    .await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert_eq!(field(&text, "correlation id"), "order 42");
    let events = saga_events(&server, "order 42").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
    let saga_id = field(&text, "saga id");
    let out = sagaflow(&["status", "--redis-url", &url, &saga_id]).await;
    assert_eq!(field(&stdout(&out), "correlation id"), "order 42");
    let out = sagaflow(&["list", "--redis-url", &url]).await;
    let list = stdout(&out);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&saga_id) && l.ends_with(" order 42")),
        "{list}"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(watch.id().to_string())
        .status();
    let out = tokio::task::spawn_blocking(move || watch.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let watched = String::from_utf8_lossy(&out.stdout);
    assert_eq!(watched.lines().count(), 14, "{watched}");

    // What the contract refuses is refused before anything is written.
    for (id, why) in [
        ("order\t42", "a tab (0x09) at character 6"),
        ("ordér 42", "a non-ASCII character `é` at character 4"),
    ] {
        let out = sagaflow(&["start", "--redis-url", &url, "--correlation-id", id]).await;
        fails_with(&out, 3, why);
    }
}
