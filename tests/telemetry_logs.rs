//! Log lines about a saga carry its correlation id, saga id, trace id and,
//! when about an attempt, its request id; `--log-format json` writes one
//! JSON object a line.

mod common;

use common::processes::{Child, LEASE_TTL};
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_sagas_ids() {
    let server = RedisServer::start();
    let mut daemon = Child::daemon_with(
        &server.url(),
        "logged",
        &["--lease-ttl", LEASE_TTL, "--log-format", "json"],
        &[("RUST_LOG", "info,sagaflow::engine=debug")],
    );
    let _handlers = Child::handlers(&server.url(), &[]);
    let mut conn = server.conn().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    xadd(
        &mut conn,
        "mission:start",
        &[
            ("correlation_id", "logged"),
            ("payload", r#"{"area":"a","robots":1}"#),
            ("traceparent", traceparent),
        ],
    )
    .await;
    let events = saga_events(&server, "logged").await;
    let saga_id = events[0].saga_id.clone();
    daemon.term();
    daemon.wait_exit(STOP_WAIT).await.expect("a prompt stop");

    let log = daemon.stderr();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about_saga: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["saga_id"] == saga_id.as_str())
        .collect();
    assert!(about_saga.len() >= 10, "{log}");
    for line in &about_saga {
        assert_eq!(line["span"]["correlation_id"], "logged", "{line}");
        assert_eq!(
            line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{line}"
        );
    }
    let completed: Vec<&&Value> = about_saga
        .iter()
        .filter(|l| l["fields"]["event_type"] == "step_completed")
        .collect();
    // Each command's completion (the robot's branch's included), and the
    // fan-out's own once its branch is back.
    assert_eq!(completed.len(), mission_commands(1) + 1, "{log}");
    // In the order written, each names the request id of the attempt it
    // completes; the fan-out's own is about no attempt.
    let sent = |unit: String| -> String {
        let started = events
            .iter()
            .find(|e| e.event_type == "step_started" && e.unit() == unit)
            .unwrap_or_else(|| panic!("no step_started of {unit}"));
        started.payload["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let request_ids: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "step_completed")
        .map(|e| sent(e.unit()))
        .collect();
    assert_eq!(request_ids.iter().filter(|r| r.is_empty()).count(), 1);
    for (line, request_id) in completed.iter().zip(&request_ids) {
        assert_eq!(line["fields"]["request_id"], request_id.as_str(), "{line}");
    }
}

/// A correlation id may hold spaces: in JSON it is a string like any other,
/// and in pretty lines it is quoted, so that a reader sees where it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correlation_id_with_spaces_is_logged_whole() {
    let server = RedisServer::start();
    let url = server.url();
    let extra = |format| ["--lease-ttl", LEASE_TTL, "--log-format", format];
    let env = [("RUST_LOG", "info,sagaflow::engine=debug")];
    let mut json = Child::daemon_with(&url, "json", &extra("json"), &env);
    let mut pretty = Child::daemon_with(&url, "pretty", &extra("pretty"), &env);
    let mut handlers = Child::handlers(&url, &[]);
    let mut conn = server.conn().await;
    let input = serde_json::json!({"area": "a", "robots": 1});
    for id in ["order 42", "order 43", "order 44", "order 45"] {
        start_mission(&mut conn, id, &input).await;
        saga_events(&server, id).await;
    }
    // A handler's lines about a command are in the command's span: one
    // that leaves a command unanswered says so at info.
    handlers.term();
    handlers.wait_exit(STOP_WAIT).await.expect("a prompt stop");
    let hang = [
        "--log-format",
        "pretty",
        "--hang-step",
        "allocate_resources",
    ];
    let hanging = Child::handlers(&url, &hang);
    start_mission(&mut conn, "order 46", &input).await;
    hanging.wait_for_log("left unanswered", STOP_WAIT).await;
    for child in [&mut json, &mut pretty] {
        child.term();
        child.wait_exit(STOP_WAIT).await.expect("a prompt stop");
    }

    let json_log = json.stderr();
    let pretty_log = pretty.stderr();
    let in_json: Vec<Value> = json_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["span"]["correlation_id"].is_string())
        .collect();
    let in_pretty: Vec<&str> = pretty_log
        .lines()
        .filter(|l| l.contains("correlation_id"))
        .collect();
    assert!(
        !in_json.is_empty() && !in_pretty.is_empty(),
        "each daemon drove a saga:\n{json_log}\n{pretty_log}"
    );
    for line in &in_json {
        let id = line["span"]["correlation_id"].as_str().unwrap();
        assert!(id.starts_with("order 4") && id.len() == 8, "{line}");
    }
    for line in &in_pretty {
        assert!(line.contains("correlation_id=\"order 4"), "quoted: {line}");
    }
    let handler_log = hanging.stderr();
    let unanswered = handler_log
        .lines()
        .find(|l| l.contains("left unanswered"))
        .unwrap();
    assert!(
        unanswered.contains("saga.correlation_id=\"order 46\""),
        "quoted: {unanswered}"
    );
}
