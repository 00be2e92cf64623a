//! `reply_stream: per_request`: each command gets a reply stream of its own,
//! so that a handler replying without `request_id` (the original system's
//! form) cannot have a late reply to a timed-out attempt taken for the
//! reply to the retry.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

on_both!(a_late_legacy_reply_to_a_timed_out_attempt_is_not_taken_for_the_retry);

const LEGACY: &str = "\
name: legacy
trigger: mission:start
steps:
  - name: survey
    stream: survey:commands
    command: survey:run
    timeout: 1s
    retry: { max_attempts: 2, backoff: fixed, initial_delay: 50ms }
    reply_stream: per_request
";

/// A reply in the original form: no request id, the result in `payload`.
fn legacy_reply(cmd: &Fields, status: &str, payload: &Value) -> RawEntry {
    entry(&[
        ("correlation_id", &cmd["correlation_id"]),
        ("saga_id", &cmd["saga_id"]),
        ("event_type", &cmd["event_type"]),
        ("status", status),
        ("payload", &payload.to_string()),
        ("timestamp", &(now_ms() / 1000).to_string()),
    ])
}

/// Answers attempt 1 only after its deadline (1.3 s, while attempt 2 is
/// awaited) and attempt 2 after 0.6 s, both with their attempt number.
async fn slow_legacy_handler(server: &Redis) -> tokio::task::JoinHandle<()> {
    let mut conn = server.conn().await;
    let create = words("XGROUP CREATE survey:commands legacy 0 MKSTREAM");
    create
        .query_async::<()>(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let mut reader = server.blocking_conn(Duration::from_millis(200)).await;
    tokio::spawn(async move {
        let mut answered = 0;
        while answered < 2 {
            let read =
                words("XREADGROUP GROUP legacy h COUNT 1 BLOCK 200 STREAMS survey:commands >");
            let value: redis::Value = read.query_async(&mut reader).await.expect("XREADGROUP");
            for cmd in sagaflow::streams::decode_read_reply(&value) {
                let cmd = lossy(&cmd.fields);
                answered += 1;
                let delay = if answered == 1 { 1300 } else { 600 };
                let attempt = answered;
                let mut conn = conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let mut xadd = redis::cmd("XADD");
                    let result = json!({ "attempt": attempt });
                    xadd.arg(&cmd["reply_stream"]).arg("*").arg(legacy_reply(
                        &cmd,
                        "completed",
                        &result,
                    ));
                    xadd.query_async::<String>(&mut conn).await.expect("XADD");
                });
            }
        }
    })
}

async fn a_late_legacy_reply_to_a_timed_out_attempt_is_not_taken_for_the_retry(server: Redis) {
    let daemon = start_daemon(&server, catalog(LEGACY)).await;
    let handler = slow_legacy_handler(&server).await;
    let mut conn = server.conn().await;
    start_mission(&mut conn, "legacy-1", &json!({})).await;

    let events = saga_events(&server, "legacy-1").await;
    let expected = [
        "saga_started",
        "step_started:survey",
        "step_timed_out:survey",
        "step_retrying:survey",
        "step_started:survey",
        "step_completed:survey",
        "saga_completed",
    ];
    assert_eq!(labels(&events), expected, "\n{}", describe(&events));
    let end = events.last().unwrap();
    assert_eq!(
        end.payload["results"]["survey"],
        json!({"attempt": 2}),
        "\n{}",
        describe(&events)
    );

    // Each attempt named a stream of its own, which expires by itself.
    let streams: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "step_started")
        .map(|e| e.payload["reply_stream"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(streams.len(), 2);
    for (stream, event) in streams
        .iter()
        .zip(events.iter().filter(|e| e.event_type == "step_started"))
    {
        let request_id = event.payload["request_id"].as_str().unwrap();
        assert!(stream.ends_with(&format!(":{request_id}")), "{stream}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{stream} has TTL {ttl}");
    }
    bounded("the handler", handler)
        .await
        .expect("the handler task");
    daemon.stop().await;
}
