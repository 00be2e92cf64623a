//! Replies: stray and malformed entries on the reply stream are ignored, an
//! unreadable final reply is a retryable failure, and handlers replying in
//! the original Python system's form drive a saga. Each test runs on one
//! Redis and on a cluster.

mod common;

use common::*;
use serde_json::{json, Value};

on_both!(
    stray_and_malformed_replies_are_ignored,
    an_unreadable_final_reply_is_a_retryable_failure,
    an_unknown_status_without_retries_left_fails_the_step,
    an_oversized_reply_fails_for_good_and_a_long_error_is_cut,
    handlers_in_the_original_form_drive_the_mission,
    a_failure_in_the_original_form_is_final_and_compensated,
);

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `reply` with another request id than the command's.
fn reply_for_another_request(cmd: &Fields, status: &str, extra: &[(&str, &str)]) -> RawEntry {
    let mut other = cmd.clone();
    other.insert("request_id".into(), random_hex());
    reply(&other, status, extra)
}

fn raw_entry(pairs: &[(&[u8], &[u8])]) -> RawEntry {
    pairs
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

const TWO_STEPS: &str = "\
name: strays
trigger: mission:start
steps:
  - name: reserve
    stream: strays:commands
    timeout: 1s
  - name: confirm
    stream: strays:commands
    timeout: 1s
    input: { reserved: '${steps.reserve.result.reserved}' }
";

async fn stray_and_malformed_replies_are_ignored(server: Redis) {
    let daemon = start_daemon(&server, catalog(TWO_STEPS)).await;
    let handler = spawn_raw_handler(&server, &["strays:commands"], "strays", |cmd| {
        let saga_id = cmd["saga_id"].as_bytes();
        let mut no_ids = reply(cmd, "completed", &[("result", r#"{"reserved": "no ids"}"#)]);
        no_ids.retain(|(k, _)| k != b"request_id" && k != b"event_type");
        let mut no_status = reply_for_another_request(cmd, "x", &[("result", "{}")]);
        no_status.retain(|(k, _)| k != b"status");
        // Not UTF-8, though for the awaited request: malformed, so skipped.
        let mut not_utf8 = reply(cmd, "completed", &[]);
        not_utf8.push((b"result".to_vec(), b"{\"reserved\": \"\xff\xfe\"}".to_vec()));
        let mut bad_name = reply(
            cmd,
            "completed",
            &[("result", r#"{"reserved": "bad name"}"#)],
        );
        bad_name.push((b"\xffname".to_vec(), b"x".to_vec()));
        let mut out = vec![
            reply_for_another_request(cmd, "completed", &[("result", r#"{"reserved": "stray"}"#)]),
            no_ids,
            no_status,
            reply_for_another_request(cmd, "completed", &[("result", "{oops")]),
            not_utf8,
            bad_name,
            raw_entry(&[(b"saga_id", saga_id), (b"status", b"\xc3\x28")]),
            entry(&[("foo", "bar"), ("zzz", "\u{0}")]),
        ];
        let result = match cmd["step"].as_str() {
            "reserve" => json!({"reserved": "yes"}),
            _ => json!({"confirmed": true}),
        };
        out.extend(complete_in_stages(cmd, &result));
        // A late duplicate of the final reply, after the exchange closed.
        out.push(reply(
            cmd,
            "completed",
            &[("result", r#"{"reserved": "late"}"#)],
        ));
        out
    })
    .await;
    let mut conn = server.conn().await;
    start_mission(&mut conn, "strays", &json!({})).await;
    let events = saga_events(&server, "strays").await;
    let commands = handler.stop().await;
    daemon.stop().await;

    let expected = [
        "saga_started",
        "step_started:reserve",
        "step_progress:reserve",
        "step_completed:reserve",
        "step_started:confirm",
        "step_progress:confirm",
        "step_completed:confirm",
        "saga_completed",
    ];
    assert_eq!(labels(&events), expected, "\n{}", describe(&events));
    assert_eq!(
        events.last().unwrap().payload["results"],
        json!({"reserve": {"reserved": "yes"}, "confirm": {"confirmed": true}})
    );
    assert_eq!(commands.len(), 2);
    let payload: Value = serde_json::from_str(commands[1].get("payload")).unwrap();
    assert_eq!(payload, json!({"reserved": "yes"}));
}

const ONE_STEP: &str = "\
name: unreadable
trigger: mission:start
steps:
  - name: reserve
    stream: unreadable:commands
    timeout: 1s
    retry: { max_attempts: 3, backoff: fixed, initial_delay: 50ms }
";

async fn an_unreadable_final_reply_is_a_retryable_failure(server: Redis) {
    let daemon = start_daemon(&server, catalog(ONE_STEP)).await;
    let handler = spawn_raw_handler(
        &server,
        &["unreadable:commands"],
        "unreadable",
        |cmd| match cmd["attempt"].as_str() {
            "1" => vec![reply(cmd, "done", &[("result", "{}")])],
            "2" => vec![reply(cmd, "completed", &[("result", "{oops")])],
            _ => complete_in_stages(cmd, &json!({"reserved": 3})),
        },
    )
    .await;
    let mut conn = server.conn().await;
    start_mission(&mut conn, "unreadable", &json!({})).await;
    let events = saga_events(&server, "unreadable").await;
    handler.stop().await;
    daemon.stop().await;

    let expected = [
        "saga_started",
        "step_started:reserve",
        "step_failed:reserve",
        "step_retrying:reserve",
        "step_started:reserve",
        "step_failed:reserve",
        "step_retrying:reserve",
        "step_started:reserve",
        "step_progress:reserve",
        "step_completed:reserve",
        "saga_completed",
    ];
    assert_eq!(labels(&events), expected, "\n{}", describe(&events));
    let failures: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == "step_failed")
        .collect();
    for (i, (f, word)) in failures.iter().zip(["done", "JSON"]).enumerate() {
        assert_eq!(f.payload["attempt"], i + 1);
        assert_eq!(f.payload["retryable"], true);
        let error = f.payload["error"].as_str().unwrap();
        assert!(error.contains(word), "{error}");
    }
    assert_eq!(
        events.last().unwrap().payload["results"]["reserve"],
        json!({"reserved": 3})
    );
}

async fn an_unknown_status_without_retries_left_fails_the_step(server: Redis) {
    let single = ONE_STEP.replace("max_attempts: 3", "max_attempts: 1");
    let daemon = start_daemon(&server, catalog(&single)).await;
    let handler = spawn_raw_handler(&server, &["unreadable:commands"], "unreadable", |cmd| {
        vec![reply(cmd, "finished", &[])]
    })
    .await;
    let mut conn = server.conn().await;
    start_mission(&mut conn, "no-retry", &json!({})).await;
    let events = saga_events(&server, "no-retry").await;
    handler.stop().await;
    daemon.stop().await;

    let expected = [
        "saga_started",
        "step_started:reserve",
        "step_failed:reserve",
        "saga_compensated",
    ];
    assert_eq!(labels(&events), expected, "\n{}", describe(&events));
    assert_eq!(events[2].payload["retryable"], true);
    assert_eq!(events[3].payload["compensated"], json!([]));
}

async fn an_oversized_reply_fails_for_good_and_a_long_error_is_cut(server: Redis) {
    let daemon = start_daemon(&server, catalog(ONE_STEP)).await;
    let big = format!(r#""{}""#, "r".repeat(2_000_000));
    let error = "e".repeat(100_000);
    let handler = spawn_raw_handler(
        &server,
        &["unreadable:commands"],
        "unreadable",
        move |cmd| {
            if cmd["payload"].contains("big") {
                // 2 MB of progress details: retrying would bring the same
                // reply, so the attempt fails though retries are left.
                vec![reply(
                    cmd,
                    "progress",
                    &[("progress", "10"), ("payload", &big)],
                )]
            } else {
                vec![failed(cmd, &error, false)]
            }
        },
    )
    .await;
    let mut conn = server.conn().await;
    start_mission(&mut conn, "oversized", &json!({"reply": "big"})).await;
    start_mission(&mut conn, "long-error", &json!({"reply": "long"})).await;
    let oversized = saga_events(&server, "oversized").await;
    let long_error = saga_events(&server, "long-error").await;
    handler.stop().await;
    daemon.stop().await;

    let expected = [
        "saga_started",
        "step_started:reserve",
        "step_failed:reserve",
        "saga_compensated",
    ];
    for events in [&oversized, &long_error] {
        assert_eq!(labels(events), expected, "\n{}", describe(events));
        assert_eq!(events[2].payload["retryable"], false);
    }
    let error = oversized[2].payload["error"].as_str().unwrap();
    assert!(error.contains("over the limit of 1048576 bytes"), "{error}");
    for e in &oversized {
        assert!(e.payload.to_string().len() < 1024, "{}", e.event_type);
    }
    let error = long_error[2].payload["error"].as_str().unwrap();
    assert_eq!(error.len(), 4096);
    assert!(error.ends_with("[cut: 100000 bytes in all]"));
    let reason = long_error[3].payload["reason"].as_str().unwrap();
    assert_eq!(reason, error);
}

// ------------------------------------------------ the original handlers

const PYTHON_STREAMS: [&str; 4] = [
    "resources:commands",
    "routing:commands",
    "exploration:commands",
    "map:commands",
];

/// A reply as the original `multi_stage_reply` decorator writes it: no
/// request id, a JSON `payload`, a timestamp in unix seconds.
fn python_reply(cmd: &Fields, status: &str, payload: &Value) -> RawEntry {
    let seconds = format!("{:.3}", now_ms() as f64 / 1000.0);
    entry(&[
        ("correlation_id", &cmd["correlation_id"]),
        ("saga_id", &cmd["saga_id"]),
        ("event_type", &cmd["event_type"]),
        ("status", status),
        ("payload", &payload.to_string()),
        ("timestamp", &seconds),
    ])
}

fn python_result(event_type: &str) -> Value {
    json!({"handled": event_type, "robot_ids": ["robot-1", "robot-2"]})
}

/// Reads only what the original handlers read; fails `fail` if asked.
fn python_handler(fail: Option<&'static str>) -> impl FnMut(&Fields) -> Vec<RawEntry> + Send {
    move |cmd| {
        let event_type = cmd["event_type"].as_str();
        let mut out = vec![
            python_reply(cmd, "start", &json!({})),
            python_reply(
                cmd,
                "progress",
                &json!({"fraction": 0.5, "stage": "working"}),
            ),
        ];
        if fail == Some(event_type) {
            out.push(python_reply(
                cmd,
                "failed",
                &json!({"error": "lidar offline"}),
            ));
        } else {
            out.push(python_reply(cmd, "completed", &python_result(event_type)));
        }
        out
    }
}

fn python_catalog() -> sagaflow::definition::Catalog {
    let path = manifest_dir().join("examples/python-handlers/mission_start.yaml");
    let text = std::fs::read_to_string(&path).expect("the example definition");
    sagaflow::definition::catalog_from_str(&path, &text).expect("the example loads")
}

async fn python_mission(
    server: &Redis,
    fail: Option<&'static str>,
    correlation_id: &str,
) -> Vec<Event> {
    let daemon = start_daemon(server, python_catalog()).await;
    let handler = spawn_raw_handler(server, &PYTHON_STREAMS, "python", python_handler(fail)).await;
    let mut conn = server.conn().await;
    let start = [
        ("area", "hall-a"),
        ("robots", "2"),
        ("correlation_id", correlation_id),
    ];
    xadd(&mut conn, "mission:start:python", &start).await;
    let events = saga_events(server, correlation_id).await;
    handler.stop().await;
    daemon.stop().await;
    events
}

async fn handlers_in_the_original_form_drive_the_mission(server: Redis) {
    let events = python_mission(&server, None, "python-1").await;
    let mut expected = vec!["saga_started".to_owned()];
    for step in MISSION_STEPS {
        for event in ["step_started", "step_progress", "step_completed"] {
            expected.push(format!("{event}:{step}"));
        }
    }
    expected.push("saga_completed".into());
    assert_eq!(labels(&events), expected, "\n{}", describe(&events));

    let commands = [
        "resources:allocate",
        "routing:plan",
        "exploration:perform",
        "map:integrate",
    ];
    let results = &events.last().unwrap().payload["results"];
    for (step, command) in MISSION_STEPS.iter().zip(commands) {
        assert_eq!(results[*step], python_result(command), "{step}");
        let progress = the_event(&events, "step_progress", Some(step));
        assert_eq!(progress.payload["progress"].as_f64(), Some(50.0));
        assert_eq!(progress.payload["details"], json!({"stage": "working"}));
    }
}

async fn a_failure_in_the_original_form_is_final_and_compensated(server: Redis) {
    let events = python_mission(&server, Some("routing:plan"), "python-2").await;
    let expected = [
        "saga_started",
        "step_started:allocate_resources",
        "step_progress:allocate_resources",
        "step_completed:allocate_resources",
        "step_started:plan_route",
        "step_progress:plan_route",
        "step_failed:plan_route",
        "compensation_started:allocate_resources",
        "compensation_progress:allocate_resources",
        "compensation_completed:allocate_resources",
        "saga_compensated",
    ];
    assert_eq!(labels(&events), expected, "\n{}", describe(&events));
    let failed = the_event(&events, "step_failed", Some("plan_route"));
    assert_eq!(failed.payload["error"], "lidar offline");
    assert_eq!(failed.payload["retryable"], false);
    let end = events.last().unwrap();
    assert_eq!(end.payload["compensated"], json!(["allocate_resources"]));
    assert_eq!(end.payload["reason"], "lidar offline");
}
