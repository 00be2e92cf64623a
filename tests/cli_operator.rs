//! The operator commands as a user runs them: `start` (with `--wait` and
//! its exit codes, in the non-terminal view), `status`, `list` and `watch`,
//! against a real daemon, on one Redis and on a Redis Cluster.

mod common;

use common::processes::{Child, LEASE_TTL};
use common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sagaflow");

on_both!(
    start_wait_follows_the_saga_and_exits_with_its_outcome,
    an_idempotency_key_seen_before_follows_the_first_saga,
    watch_prints_the_events_as_they_come,
    #[tokio::test]
    clear_errors_for_a_missing_saga_an_unreachable_redis_and_a_bad_flag,
    a_correlation_id_with_a_space_is_started_followed_and_watched,
    json_and_quiet_output_for_machines,
    a_start_reports_a_duplicate_a_rejection_or_no_daemon_never_an_unknown_id,
    a_closed_pipe_ends_a_command_quietly,
);

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

/// `sagaflow watch` running in the background, given half a second to
/// start reading before anything is written.
struct Watch(std::process::Child);

impl Watch {
    async fn start(args: &[&str]) -> Self {
        let child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self(child)
    }

    /// Lets it print what was written last, stops it as Ctrl-C would, and
    /// returns what it printed.
    async fn stop(self) -> std::process::Output {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.0.id().to_string())
            .status();
        tokio::task::spawn_blocking(move || self.0.wait_with_output())
            .await
            .unwrap()
            .unwrap()
    }
}

async fn start_wait_follows_the_saga_and_exits_with_its_outcome(server: Redis) {
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
    // Each robot's branch on lines of its own, named whole.
    for branch in 0..2 {
        let line = format!("step_completed         perform_exploration[{branch}] ");
        assert!(text.contains(&line), "{line}: {text}");
    }
    assert!(
        text.contains("perform_exploration      fan-out of 2 branches"),
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
    // Every step, the fan-out and each robot's branch of it.
    let mut rows: Vec<String> = MISSION_STEPS.iter().map(|s| s.to_string()).collect();
    rows.extend(mission_units(2));
    for row in rows {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&format!("step {row} ")) && l.contains("completed")),
            "{row}:\n{status}"
        );
    }
    let out = sagaflow(&["status", "--redis-url", &url, &saga_id, "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["status"], "completed");
    assert_eq!(json["state"]["phase"]["name"], "completed");
    assert!(json["events"].as_array().unwrap().len() >= mission_event_count(2));

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
        text.contains("compensated: step integrate_maps failed"),
        "the compensation story: {text}"
    );
    // Each robot's exploration undone (at once, in either order), then the
    // route, then the allocation.
    let story = text.lines().last().unwrap_or("");
    let undone: Vec<String> = (story.split("undone: ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no `undone: ` in the story: {text}"))
        .split(", ")
        .map(str::to_owned)
        .collect();
    assert_eq!(branches_sorted(&undone), mission_undone(2), "{text}");

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

async fn an_idempotency_key_seen_before_follows_the_first_saga(server: Redis) {
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

async fn watch_prints_the_events_as_they_come(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon_with(&url, "watched", &["--lease-ttl", LEASE_TTL], &[]);
    let _handlers = Child::handlers(&url, &[]);
    let watch = Watch::start(&["watch", "--redis-url", &url, "--correlation-id", "seen"]).await;
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "unseen",
        &serde_json::json!({"area": "a", "robots": 1}),
    )
    .await;
    // Another area: its robot's lock is not the other saga's, so its
    // events are the same every time.
    start_mission(
        &mut conn,
        "seen",
        &serde_json::json!({"area": "b", "robots": 1}),
    )
    .await;
    saga_events(&server, "seen").await;
    saga_events(&server, "unseen").await;
    let out = watch.stop().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        mission_event_count(1),
        "the events of one saga:\n{text}"
    );
    assert!(
        text.lines().last().unwrap().contains("saga_completed"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.contains("mission_start")), "{text}");
}

async fn clear_errors_for_a_missing_saga_an_unreachable_redis_and_a_bad_flag(server: Redis) {
    let url = server.url();
    let out = sagaflow(&[
        "status",
        "--redis-url",
        &url,
        "0123456789abcdef0123456789abcdef",
    ])
    .await;
    fails_with(&out, 1, "no saga `0123456789abcdef0123456789abcdef`");
    let out = sagaflow(&["status", "--redis-url", &url, "01234567"]).await;
    fails_with(&out, 1, "no saga id starting `01234567`");
    let out = sagaflow(&["status", "--redis-url", &url, "--correlation-id", "nobody"]).await;
    fails_with(&out, 1, "no correlation id `nobody`");

    // Redis unreachable: 3, whatever the command.
    for command in [
        vec!["list"],
        vec!["status", "01234567"],
        vec!["watch"],
        vec!["start"],
        vec!["cancel", "01234567"],
    ] {
        let mut args = command.clone();
        args.extend(["--redis-url", "redis://127.0.0.1:1"]);
        let out = sagaflow(&args).await;
        fails_with(&out, 3, "cannot reach Redis at redis://127.0.0.1:1");
    }

    // Usage errors: 2, clap's code, before anything is written or read.
    for (args, says) in [
        (
            vec!["start", "--payload", "[1, 2]"],
            "--payload <PAYLOAD>': must be a JSON object",
        ),
        (vec!["start", "--payload", "{"], "not JSON"),
        (
            vec!["start", "--payload", "@/no/such/file"],
            "cannot read the payload file",
        ),
        (vec!["start", "--traceparent", "00-zz"], "not 00-<32 hex>"),
        (vec!["start", "--timeout", "soon"], "soon"),
        (vec!["start", "--json", "--quiet"], "cannot be used with"),
        (vec!["list", "--state", "sideways"], "sideways"),
        (vec!["list", "--since", "yesterday"], "yesterday"),
        (vec!["watch", "--correlation-id", "a\tb"], "a tab"),
        (vec!["status", "not-hex!"], "is not a saga id"),
        (vec!["status"], "required"),
        (
            vec!["cancel", "0123", "--correlation-id", "x"],
            "cannot be used with",
        ),
        (vec!["skip", "0123"], "--step"),
        (vec!["completions", "tcsh"], "tcsh"),
    ] {
        let mut args = args.clone();
        if args[0] != "completions" {
            args.extend(["--redis-url", &url]);
        }
        let out = sagaflow(&args).await;
        fails_with(&out, 2, says);
    }
    let long = "r".repeat(1025);
    let out = sagaflow(&["abandon", "0123", "--reason", &long, "--redis-url", &url]).await;
    fails_with(&out, 2, "1025 bytes, the limit is 1024");
    let out = sagaflow_no_key(&["retry", "01234567", "--redis-url", &url]).await;
    fails_with(&out, 2, "no operator key");

    for command in [
        "start",
        "status",
        "list",
        "locks",
        "watch",
        "cancel",
        "retry",
        "skip",
        "abandon",
        "validate",
        "completions",
    ] {
        let out = sagaflow(&[command, "--help"]).await;
        assert!(
            stdout(&out).contains("Example"),
            "{command} --help has an example"
        );
        if command != "validate" {
            assert!(
                stdout(&out).contains("Exit codes:"),
                "{command} --help lists its exit codes"
            );
        }
    }
}

/// `sagaflow <args>` without an operator key.
async fn sagaflow_no_key(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("SAGAFLOW_REDIS_URL")
        .env_remove("SAGAFLOW_OPERATOR_KEY");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap()
}

/// A correlation id with a space (`X-Request-ID: order 42`) is given to
/// `start`, followed by `start --wait`, and picked out by `watch`.
async fn a_correlation_id_with_a_space_is_started_followed_and_watched(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon_with(&url, "spaced", &["--lease-ttl", LEASE_TTL], &[]);
    let _handlers = Child::handlers(&url, &[]);
    let watch = Watch::start(&["watch", "--redis-url", &url, "--correlation-id", "order 42"]).await;
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

    let out = watch.stop().await;
    let watched = String::from_utf8_lossy(&out.stdout);
    assert_eq!(watched.lines().count(), mission_event_count(2), "{watched}");

    // What the contract refuses is refused before anything is written.
    for (id, why) in [
        ("order\t42", "a tab (0x09) at character 6"),
        ("ordér 42", "a non-ASCII character `é` at character 4"),
    ] {
        let out = sagaflow(&["start", "--redis-url", &url, "--correlation-id", id]).await;
        fails_with(&out, 2, why);
    }
}

/// The lines of `out`'s stdout, each parsed as JSON.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: `{l}`")))
        .collect()
}

async fn json_and_quiet_output_for_machines(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon(&url, "machines");
    let _handlers = Child::handlers(&url, &[]);
    let watch = Watch::start(&[
        "watch",
        "--redis-url",
        &url,
        "--correlation-id",
        "json 1",
        "--json",
    ])
    .await;

    // start --wait --json: the start, each event, the outcome; a line each.
    let out = sagaflow(&[
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--correlation-id",
        "json 1",
        "--wait",
        "--json",
        "--timeout",
        "20s",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = json_lines(&out);
    let saga_id = lines[0]["saga_id"]
        .as_str()
        .expect("the start first")
        .to_owned();
    assert_eq!(lines[0]["correlation_id"], "json 1");
    assert_eq!(lines[0]["stream"], "mission:start");
    let events = &lines[1..lines.len() - 1];
    assert_eq!(events.len(), mission_event_count(2), "{lines:#?}");
    assert_eq!(events[0]["event_type"], "saga_started");
    assert!(events.iter().all(|e| e["saga_id"] == saga_id.as_str()));
    assert_eq!(events[1]["payload"]["attempt"], 1, "the payload as JSON");
    // Each robot's branch: its events name it, three each.
    for branch in ["0", "1"] {
        let of_branch = events.iter().filter(|e| e["branch"] == branch).count();
        assert_eq!(of_branch, 3, "branch {branch}: {lines:#?}");
    }
    let outcome = lines.last().unwrap();
    assert_eq!(outcome["outcome"], "completed");
    assert_eq!(outcome["exit_code"], 0);
    assert!(outcome["payload"]["results"]["integrate_maps"].is_object());

    // start --quiet: the id alone.
    let out = sagaflow(&[
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--quiet",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let quiet = stdout(&out);
    assert_eq!(quiet.trim().len(), 32, "{quiet:?}");
    assert_eq!(quiet.lines().count(), 1, "{quiet:?}");
    let out = sagaflow(&[
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--quiet",
        "--wait",
        "--timeout",
        "20s",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));

    // list --json: an array of the sagas.
    let out = sagaflow(&["list", "--redis-url", &url, "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ours = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["saga_id"] == saga_id.as_str())
        .expect("listed");
    assert_eq!(ours["state"], "completed");
    assert_eq!(ours["correlation_id"], "json 1");
    assert_eq!(listed.as_array().unwrap().len(), 3);

    // watch --json: the same events, one per line.
    let out = watch.stop().await;
    let watched = json_lines(&out);
    assert_eq!(watched.len(), mission_event_count(2), "{watched:#?}");
    assert_eq!(&watched[..], events);
}

async fn a_start_reports_a_duplicate_a_rejection_or_no_daemon_never_an_unknown_id(server: Redis) {
    let url = server.url();

    // No daemon: a bounded wait, then exit 3 saying so, and no saga id.
    let began = std::time::Instant::now();
    let out = sagaflow(&[
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--accept-timeout",
        "1s",
    ])
    .await;
    fails_with(
        &out,
        3,
        "no daemon took the start within 1s: is one running?",
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );

    let _daemon = Child::daemon(&url, "starts");
    let _handlers = Child::handlers(&url, &[]);
    let keyed = [
        "start",
        "--redis-url",
        &url,
        "--payload",
        PAYLOAD,
        "--idempotency-key",
        "order-7",
    ];
    // The queued start is taken once the daemon runs; the same key again is
    // a duplicate of the first.
    let first = sagaflow(&keyed).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let first_id = field(&stdout(&first), "saga id");
    let again = sagaflow(&keyed).await;
    assert_eq!(again.status.code(), Some(4), "{}", stderr(&again));
    assert_eq!(field(&stdout(&again), "saga id"), first_id);
    assert!(
        stdout(&again).contains(&format!("exists already: {first_id}")),
        "{}",
        stdout(&again)
    );
    let mut quiet = keyed.to_vec();
    quiet.push("--quiet");
    let again = sagaflow(&quiet).await;
    assert_eq!(again.status.code(), Some(4));
    assert_eq!(stdout(&again).trim(), first_id);
    assert!(
        stderr(&again).contains("an existing saga"),
        "{}",
        stderr(&again)
    );
    let mut json = keyed.to_vec();
    json.push("--json");
    let again = sagaflow(&json).await;
    let line = &json_lines(&again)[0];
    assert_eq!(line["saga_id"], first_id.as_str());
    assert_eq!(line["existing"], true);

    // Rejected: the reason, exit 2, no id.
    let out = sagaflow(&["start", "--redis-url", &url, "--saga", "no_such_saga"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("rejected: unknown saga `no_such_saga`"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("saga id"), "{}", stdout(&out));
}

/// A reader that goes away (`| head -1`) ends a command quietly: no panic,
/// exit 0. The pipe is closed before the command writes anything.
async fn a_closed_pipe_ends_a_command_quietly(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon(&url, "piped");
    let _handlers = Child::handlers(&url, &[]);
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
    let saga_id = field(&stdout(&out), "saga id");
    for args in [
        vec!["config"],
        vec!["list"],
        vec!["list", "--json"],
        vec!["status", &saga_id],
        vec!["status", &saga_id, "--json"],
        vec!["watch", "--from-start"],
        vec!["watch", "--from-start", "--json"],
        vec!["completions", "bash"],
        vec!["acl"],
        vec!["doctor"],
        vec!["doctor", "--json"],
        vec!["validate", "sagas"],
    ] {
        let mut args = args.clone();
        if !["completions", "acl", "validate"].contains(&args[0]) {
            args.extend(["--redis-url", &url]);
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .current_dir(manifest_dir())
            .env("SAGAFLOW_OPERATOR_KEY", OPERATOR_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}
