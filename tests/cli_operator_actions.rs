//! Operators' requests, driven through the CLI against a real daemon:
//! cancel a running saga, and retry, skip or abandon one stuck on a
//! compensation that failed. Each is recorded on saga:events with who and why.

mod common;

use common::processes::Child;
use common::*;
use std::process::Output;

async fn sagaflow(args: &[&str]) -> Output {
    sagaflow_cli(args).await
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn operator_actions(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| e.event_type == "operator_action")
        .collect()
}

/// A saga stuck: plan_route fails, then releasing the resources fails.
async fn stuck_saga(server: &RedisServer, correlation_id: &str) -> (String, Child) {
    let url = server.url();
    let handlers = Child::handlers(
        &url,
        &[
            "--fail-step",
            "plan_route",
            "--fail-compensation",
            "allocate_resources",
        ],
    );
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        correlation_id,
        &serde_json::json!({"area": "a", "robots": 2}),
    )
    .await;
    let events = saga_events(server, correlation_id).await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_failed",
        "{}",
        describe(&events)
    );
    (events[0].saga_id.clone(), handlers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_saga_is_cancelled_and_compensates() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let _handlers = Child::handlers(&url, &["--work-ms", "1000"]);
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "cancelled",
        &serde_json::json!({"area": "a", "robots": 2}),
    )
    .await;
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        events
            .iter()
            .any(|e| e.event_type == "step_started" && e.step.as_deref() == Some("plan_route"))
    })
    .await;
    let saga_id = events[0].saga_id.clone();

    let o = sagaflow(&[
        "cancel",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "customer withdrew",
        "--by",
        "ops@test",
        "--wait",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "compensated:\n{}", out(&o));
    assert!(out(&o).contains("cancel of saga"), "{}", out(&o));

    let events = saga_events(&server, "cancelled").await;
    let actions = operator_actions(&events);
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].payload["action"], "cancel");
    assert_eq!(actions[0].payload["by"], "ops@test");
    assert_eq!(actions[0].payload["reason"], "customer withdrew");
    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_compensated");
    // The step under way is undone too: its command may have done its work.
    assert_eq!(
        end.payload["compensated"],
        serde_json::json!(["plan_route", "allocate_resources"])
    );
    assert!(end.payload["reason"]
        .as_str()
        .unwrap()
        .contains("cancelled by ops@test"));

    // Ended: nothing more to cancel.
    let o = sagaflow(&["cancel", &saga_id, "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains("only a running saga can be cancelled"),
        "{}",
        out(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_is_retried_once_the_handler_is_fixed() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let (saga_id, mut broken) = stuck_saga(&server, "stuck-retried").await;
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "stuck"]).await;
    assert!(out(&o).contains(&saga_id), "{}", out(&o));
    let o = sagaflow(&["status", &saga_id, "--redis-url", &url]).await;
    assert!(out(&o).contains("(stuck: `sagaflow retry`"), "{}", out(&o));

    broken.term();
    broken.wait_exit(STOP_WAIT).await;
    let _fixed = Child::handlers(&url, &[]);
    let o = sagaflow(&[
        "retry",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "fixed",
        "--wait",
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "compensated at last:\n{}",
        out(&o)
    );
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "stuck"]).await;
    assert!(!out(&o).contains(&saga_id), "{}", out(&o));
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "compensated"]).await;
    assert!(out(&o).contains(&saga_id), "{}", out(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_compensation_is_skipped_by_hand() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let (saga_id, _broken) = stuck_saga(&server, "stuck-skipped").await;
    let o = sagaflow(&[
        "skip",
        &saga_id,
        "--step",
        "plan_route",
        "--redis-url",
        &url,
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "the wrong step is refused:\n{}",
        out(&o)
    );
    assert!(out(&o).contains("allocate_resources"), "{}", out(&o));

    let o = sagaflow(&[
        "skip",
        &saga_id,
        "--step",
        "allocate_resources",
        "--redis-url",
        &url,
        "--reason",
        "released by hand",
        "--wait",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let mut conn = server.conn().await;
    let all = xrange(&mut conn, "saga:events").await;
    let end = all.iter().rev().find(|e| e["saga_id"] == saga_id).unwrap();
    assert_eq!(end["event_type"], "saga_compensated");
    assert!(end["payload"].contains("allocate_resources"), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_is_abandoned() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let (saga_id, _broken) = stuck_saga(&server, "stuck-abandoned").await;
    let o = sagaflow(&[
        "abandon",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "cleaned up",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "stuck"]).await;
    assert!(!out(&o).contains(&saga_id), "{}", out(&o));
    let o = sagaflow(&["status", &saga_id, "--redis-url", &url]).await;
    assert!(
        out(&o).contains("(abandoned by an operator)"),
        "{}",
        out(&o)
    );
    let o = sagaflow(&["retry", &saga_id, "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("abandoned"), "{}", out(&o));
}
