//! Pausing a saga through the CLI, against real daemon processes on one
//! Redis and on a cluster: the command under way finishes, nothing new is
//! sent while paused, the pause survives the daemon's kill -9 and the
//! takeover of its sagas, and the saga completes once resumed. Each request
//! is recorded on saga:events with who and why.

mod common;

use common::processes::{assert_audit, Child};
use common::*;
use std::process::Output;
use std::time::Duration;

on_both!(a_paused_saga_survives_a_kill_and_completes_once_resumed);

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn started(events: &[Event], step: &str) -> bool {
    events
        .iter()
        .any(|e| e.event_type == "step_started" && e.step.as_deref() == Some(step))
}

async fn a_paused_saga_survives_a_kill_and_completes_once_resumed(server: Redis) {
    let url = server.url();
    let mut first = Child::daemon(&url, "pause-a");
    let _handlers = Child::handlers(&url, &["--work-ms", "1500"]);
    let mut conn = server.conn().await;
    let input = serde_json::json!({"area": "a", "robots": 2});
    start_mission(&mut conn, "paused", &input).await;
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        started(events, "allocate_resources")
    })
    .await;
    let saga_id = events[0].saga_id.clone();
    let o = sagaflow_cli(&[
        "pause",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "robot under inspection",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    // The command under way finishes; the next is not sent.
    wait_for_events(&server, SAGA_WAIT, |events| {
        events.iter().any(|e| {
            e.event_type == "step_completed" && e.step.as_deref() == Some("allocate_resources")
        })
    })
    .await;
    let o = sagaflow_cli(&["status", &saga_id, "--redis-url", &url]).await;
    assert!(
        out(&o).contains("paused by ops@test since") && out(&o).contains("robot under inspection"),
        "{}",
        out(&o)
    );
    // Its daemon dies; another takes the saga over, paused.
    first.kill9();
    let addr = common::api::free_addr();
    let second = Child::daemon_with(
        &url,
        "pause-b",
        &[
            "--lease-ttl",
            common::processes::LEASE_TTL,
            "--http-addr",
            &addr,
        ],
        &[],
    );
    second
        .wait_for_log("took over the sagas of a daemon", SAGA_WAIT)
        .await;
    let o = sagaflow_cli(&["pause", &saga_id, "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("paused already"), "{}", out(&o));
    // Well past a step's time, nothing was sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut conn = server.conn().await;
    let events: Vec<Event> = xrange(&mut conn, "saga:events")
        .await
        .into_iter()
        .map(Event::from_fields)
        .collect();
    assert!(
        started(&events, "allocate_resources"),
        "{}",
        describe(&events)
    );
    assert!(!started(&events, "plan_route"), "{}", describe(&events));
    let o = sagaflow_cli(&[
        "resume",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "inspection done",
        "--wait",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "completed:\n{}", out(&o));
    let events = saga_events(&server, "paused").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
    // Counted by the daemon that carried the resume out.
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("the metrics")
        .text()
        .await
        .expect("their text");
    assert!(
        metrics.contains("sagaflow_operator_actions_total{action=\"resume\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sagaflow_operator_actions_total{action=\"pause\"} 0"),
        "{metrics}"
    );
    let actions: Vec<(String, String, String)> = events
        .iter()
        .filter(|e| e.event_type == "operator_action" && e.payload.get("refused").is_none())
        .map(|e| {
            let text = |k: &str| e.payload[k].as_str().unwrap_or("").to_owned();
            (text("action"), text("by"), text("reason"))
        })
        .collect();
    assert_eq!(
        actions,
        [
            (
                "pause".into(),
                "ops@test".into(),
                "robot under inspection".into()
            ),
            ("resume".into(), "ops@test".into(), "inspection done".into()),
        ]
    );
    // Every command was sent once: the takeover sent nothing again.
    assert_audit(&events, &["paused".to_owned()]);
}
