//! A daemon killed (SIGKILL) at every interesting point of one saga: after
//! each command was sent (while its reply is awaited) and during each
//! compensation. After each kill a new daemon takes the saga over, and the
//! saga ends exactly as it would have without the crashes. Each test runs
//! on one Redis and on a cluster.

mod common;

use common::processes::*;
use common::*;
use serde_json::json;
use std::time::Duration;

on_both!(
    killed_after_each_command_the_saga_still_completes_once,
    killed_during_each_compensation_the_saga_still_unwinds_once,
);

const STEP_WAIT: Duration = Duration::from_secs(10);

/// Runs one saga and, each time an event of `kill_at` appears for a step
/// not seen before, kills the daemon and starts another; returns the
/// saga's events.
async fn crash_at_every(
    server: &Redis,
    kill_at: &str,
    handler_flags: &[&str],
    expected_kills: usize,
) -> Vec<Event> {
    let url = server.url();
    let _handlers = Child::handlers(&url, handler_flags);
    let mut daemon = Child::daemon(&url, "node-0");
    daemon.wait_started().await;
    let mut conn = server.conn().await;
    let ids = start_missions(&mut conn, kill_at, 1).await;
    let mut log = EventLog::on(server);
    let mut killed_at: Vec<String> = Vec::new();
    loop {
        let events = log
            .wait_until(STEP_WAIT, "the next point or the end", |events| {
                not_ended(events, &ids).is_empty()
                    || events
                        .iter()
                        .any(|e| e.event_type == kill_at && !killed_at.contains(&e.label()))
            })
            .await;
        if not_ended(&events, &ids).is_empty() {
            break;
        }
        let point = events
            .iter()
            .find(|e| e.event_type == kill_at && !killed_at.contains(&e.label()))
            .expect("a new point")
            .label();
        daemon.kill9();
        killed_at.push(point);
        daemon = Child::daemon(&url, &format!("node-{}", killed_at.len()));
    }
    let events = log.settle(Duration::from_millis(300)).await;
    assert_audit(&events, &ids);
    assert_eq!(killed_at.len(), expected_kills, "killed at {killed_at:?}");
    events
}

async fn killed_after_each_command_the_saga_still_completes_once(server: Redis) {
    // Each command (allocate, plan, each robot's exploration, integrate),
    // and the fan-out's own start before its branches' commands.
    let points = mission_commands(2) + 1;
    let events = crash_at_every(&server, "step_started", &["--work-ms", "400"], points).await;
    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_completed", "\n{}", describe(&events));
    let mut sent_once: Vec<String> = mission_units(2);
    sent_once.push(MISSION_FAN_OUT.to_owned());
    for unit in sent_once {
        let sent = events
            .iter()
            .filter(|e| e.label() == format!("step_started:{unit}"))
            .count();
        assert_eq!(
            sent,
            1,
            "{unit} sent once, under one request id\n{}",
            describe(&events)
        );
    }
    assert_eq!(
        end.payload["results"]["allocate_resources"]["robot_ids"],
        json!(["robot-1", "robot-2"])
    );
    let maps = end.payload["results"][MISSION_FAN_OUT].as_array().unwrap();
    let robots: Vec<&str> = maps
        .iter()
        .map(|m| m["robot_id"].as_str().unwrap())
        .collect();
    assert_eq!(robots, ["robot-1", "robot-2"], "\n{}", describe(&events));
}

async fn killed_during_each_compensation_the_saga_still_unwinds_once(server: Redis) {
    let flags = ["--work-ms", "400", "--fail-step", "integrate_maps"];
    // Each robot's exploration, then the route, then the allocation.
    let undo = mission_undone(2);
    let events = crash_at_every(&server, "compensation_started", &flags, undo.len()).await;
    let end = events.last().unwrap();
    assert_eq!(
        end.event_type,
        "saga_compensated",
        "\n{}",
        describe(&events)
    );
    let compensated: Vec<String> = (end.payload["compensated"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        branches_sorted(&compensated),
        undo,
        "\n{}",
        describe(&events)
    );
    let undone = events
        .iter()
        .filter(|e| e.event_type == "compensation_completed")
        .count();
    assert_eq!(undone, undo.len(), "\n{}", describe(&events));
}
