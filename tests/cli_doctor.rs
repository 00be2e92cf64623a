//! `sagaflow doctor` against a real Redis, daemon and handlers: a healthy
//! stack passes without walking the keyspace; a command stream nobody
//! reads, a stuck saga and an orphaned one fail; a dead-lettered command
//! warns; Redis down exits 3.

mod common;

use common::processes::{mission_sagas, Child};
use common::*;
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};

const PAYLOAD: &str = r#"{"area": "hall-a", "robots": 2}"#;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn both(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// `sagaflow doctor` on the reference mission, with `extra` flags.
async fn doctor(url: &str, extra: &[&str]) -> Output {
    let sagas = mission_sagas();
    let mut args = vec!["doctor", "--redis-url", url];
    args.extend(["--sagas", sagas.to_str().expect("a UTF-8 path")]);
    args.extend(extra);
    sagaflow_cli(&args).await
}

/// The report as JSON.
async fn doctor_json(url: &str) -> (Option<i32>, Value) {
    let out = doctor(url, &["--json"]).await;
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", both(&out)));
    (out.status.code(), report)
}

/// The findings of a JSON report at `level` (`OK`, `WARN`, `FAIL`), as
/// `subject: message`.
fn findings(report: &Value, level: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["level"] == level)
        .map(|f| {
            format!(
                "{}: {}",
                f["subject"].as_str().unwrap(),
                f["message"].as_str().unwrap()
            )
        })
        .collect()
}

/// A daemon and the simulated handlers (with `handler_flags`), once one
/// mission has run through them: every group exists. Returns the mission's
/// exit code and output.
async fn stack(url: &str, handler_flags: &[&str]) -> (Child, Child, Output) {
    let daemon = Child::daemon(url, "doctored");
    daemon.wait_started().await;
    let handlers = Child::handlers(url, handler_flags);
    let args = [
        "start",
        "--redis-url",
        url,
        "--payload",
        PAYLOAD,
        "--wait",
        "--timeout",
        "20s",
    ];
    let out = sagaflow_cli(&args).await;
    (daemon, handlers, out)
}

/// Calls of `command` Redis has served so far (`INFO commandstats`).
async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = must(
        "INFO",
        redis::cmd("INFO").arg("commandstats").query_async(conn),
    )
    .await;
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_stack_passes_without_walking_the_keyspace() {
    let server = RedisServer::start();
    let url = server.url();
    let (_daemon, _handlers, started) = stack(&url, &[]).await;
    assert_eq!(started.status.code(), Some(0), "{}", both(&started));
    let mut conn = server.conn().await;
    let before = (
        calls(&mut conn, "scan").await,
        calls(&mut conn, "keys").await,
    );

    let out = doctor(&url, &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(text.contains("\n0 FAIL, 0 WARN, "), "{text}");
    assert!(text.contains("OK    daemons: 1 alive: doctored."), "{text}");
    for stream in [
        "mission:start (trigger)",
        "resources:commands",
        "routing:commands",
    ] {
        assert!(
            text.contains(&format!("OK    {stream}: group ")),
            "{stream}:\n{text}"
        );
    }
    assert!(
        text.contains("OK    handler:{sagaflow-sim}:dead-letter: empty"),
        "{text}"
    );

    let (code, report) = doctor_json(&url).await;
    assert_eq!(code, Some(0));
    assert_eq!(report["status"], "OK", "{report:#}");
    let routing = report["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "routing:commands")
        .expect("routing:commands is inspected");
    assert_eq!(routing["groups"][0]["name"], "sagaflow-sim", "{routing:#}");
    assert_eq!(routing["groups"][0]["lag"], 0, "{routing:#}");

    let after = (
        calls(&mut conn, "scan").await,
        calls(&mut conn, "keys").await,
    );
    assert_eq!(before, after, "doctor sent SCAN or KEYS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_stream_without_a_consumer_group_fails() {
    let server = RedisServer::start();
    let url = server.url();
    let (_daemon, handlers, started) = stack(&url, &[]).await;
    assert_eq!(started.status.code(), Some(0), "{}", both(&started));
    drop(handlers);
    let mut conn = server.conn().await;
    let destroyed: i64 = must(
        "XGROUP DESTROY",
        words("XGROUP DESTROY routing:commands sagaflow-sim").query_async(&mut conn),
    )
    .await;
    assert_eq!(destroyed, 1);

    let out = doctor(&url, &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        text.contains("FAIL  routing:commands: no consumer group reads `routing:commands`"),
        "{text}"
    );
    assert!(
        text.contains("fix: start the handlers of `routing:commands`"),
        "{text}"
    );

    let (code, report) = doctor_json(&url).await;
    assert_eq!(code, Some(1));
    assert_eq!(report["status"], "FAIL");
    let failed = findings(&report, "FAIL");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("routing:commands: no consumer group"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_command_warns_with_its_reason() {
    let server = RedisServer::start();
    let url = server.url();
    let (_daemon, _handlers, started) = stack(&url, &[]).await;
    assert_eq!(started.status.code(), Some(0), "{}", both(&started));
    let mut conn = server.conn().await;
    // A command without its contract's fields: the handlers cannot
    // answer it, and set it aside.
    xadd(
        &mut conn,
        "resources:commands",
        &[("event_type", "allocate_resources")],
    )
    .await;
    let dead = "handler:{sagaflow-sim}:dead-letter";
    let deadline = Instant::now() + SAGA_WAIT;
    while xrange(&mut conn, dead).await.is_empty() {
        assert!(Instant::now() < deadline, "nothing was dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let out = doctor(&url, &[]).await;
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a WARN is no FAIL: {}",
        both(&out)
    );
    assert!(
        text.contains(
            "WARN  handler:{sagaflow-sim}:dead-letter: 1 entry; the last: malformed command"
        ),
        "{text}"
    );
    assert!(
        text.contains("fix: XREVRANGE handler:{sagaflow-sim}:dead-letter + - COUNT 10"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_fails_until_an_operator_gives_it_up() {
    let server = RedisServer::start();
    let url = server.url();
    let flags = [
        "--fail-step",
        "plan_route",
        "--fail-compensation",
        "allocate_resources",
    ];
    let (_daemon, _handlers, started) = stack(&url, &flags).await;
    assert_ne!(started.status.code(), Some(0), "{}", both(&started));
    let saga_id = stdout(&started)
        .lines()
        .find_map(|l| l.strip_prefix("saga id"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no saga id in:\n{}", both(&started)));

    let out = doctor(&url, &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        text.contains(&format!(
            "FAIL  stuck: 1 failed saga(s) wait for an operator: {saga_id} (mission_start, at plan_route)"
        )),
        "{text}"
    );

    let args = [
        "abandon",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "cleaned up",
    ];
    let abandoned = sagaflow_cli(&args).await;
    assert_eq!(abandoned.status.code(), Some(0), "{}", both(&abandoned));
    let out = doctor(&url, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains("OK    stuck: none"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_saga_fails_while_no_daemon_is_alive() {
    let server = RedisServer::start();
    let url = server.url();
    let mut daemon = Child::daemon(&url, "doomed");
    daemon.wait_started().await;
    let _handlers = Child::handlers(&url, &["--hang-step", "plan_route"]);
    let args = ["start", "--redis-url", &url, "--payload", PAYLOAD];
    let started = sagaflow_cli(&args).await;
    assert_eq!(started.status.code(), Some(0), "{}", both(&started));
    // Its saga waits on plan_route; the daemon dies; its lease (1 s) runs out.
    let mut conn = server.conn().await;
    let deadline = Instant::now() + SAGA_WAIT;
    while xrange(&mut conn, "routing:commands").await.is_empty() {
        assert!(Instant::now() < deadline, "plan_route was never sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill9();
    let deadline = Instant::now() + STOP_WAIT;
    let (out, text) = loop {
        let out = doctor(&url, &[]).await;
        let text = stdout(&out);
        if text.contains("FAIL  orphaned") || Instant::now() >= deadline {
            break (out, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        text.contains("FAIL  daemons: no daemon is alive (1 lease ran out)"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  orphaned: 1 running saga(s) held by daemons whose lease ran out: "),
        "{text}"
    );
    assert!(
        text.contains("fix: start `sagaflow run`: it claims them"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_exits_3() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    for extra in [&[][..], &["--json"][..]] {
        let out = doctor(&url, extra).await;
        assert_eq!(out.status.code(), Some(3), "{}", both(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("sagaflow doctor: cannot reach Redis at "),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
    }
}
