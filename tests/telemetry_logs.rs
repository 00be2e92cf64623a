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
    assert_eq!(completed.len(), 4, "{log}");
    let commands = events
        .iter()
        .filter(|e| e.event_type == "step_started")
        .map(|e| e.payload["request_id"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    for (line, request_id) in completed.iter().zip(&commands) {
        assert_eq!(line["fields"]["request_id"], request_id.as_str(), "{line}");
    }
}
