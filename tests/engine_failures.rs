//! Failures: a step failing at each place of the mission, a compensation
//! failing, a step that never answers, and a retryable failure.

mod common;

use common::*;
use sagaflow::handler::simulated::SimulationOptions;
use serde_json::json;

on_both!(
    a_failing_first_step_undoes_nothing,
    a_failing_second_step_undoes_the_first,
    a_failing_third_step_undoes_the_first_two_in_reverse,
    a_failing_last_step_undoes_the_three_before_it_in_reverse,
    a_failing_compensation_fails_the_saga,
    a_hung_step_is_retried_under_a_new_request_id_then_undone_itself,
    a_retryable_failure_then_a_success_completes,
);

/// Runs the mission with the simulated handlers set up by `opts`; returns
/// its events and the commands sent on `resources:commands`.
async fn mission_with(
    server: &Redis,
    opts: SimulationOptions,
    correlation_id: &str,
) -> (Vec<Event>, Vec<Fields>) {
    let daemon = start_daemon(server, mission_catalog()).await;
    let handlers = start_simulated(server, opts);
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        correlation_id,
        &json!({"area": "hall-a", "robots": 2}),
    )
    .await;
    let events = saga_events(server, correlation_id).await;
    let resources = xrange(&mut conn, "resources:commands").await;
    handlers.stop().await;
    daemon.stop().await;
    (events, resources)
}

/// What is undone of a step, as `saga_compensated` names it: the step, or
/// each robot's branch of the exploration (undone together: either order).
fn undone_of(step: &str) -> Vec<String> {
    match step {
        "perform_exploration" => vec![format!("{step}[0]"), format!("{step}[1]")],
        step => vec![step.to_owned()],
    }
}

/// A step replying `failed` (not retryable) is not undone itself; the steps
/// before it are, in reverse order; the robots' branches of the
/// exploration together, before the steps that came before it.
async fn fail_at(server: Redis, failing: &str) {
    let opts = SimulationOptions {
        fail_step: Some(failing.into()),
        ..Default::default()
    };
    let (events, resources) = mission_with(&server, opts, &format!("fail-at-{failing}")).await;
    let at = MISSION_STEPS.iter().position(|s| *s == failing).unwrap();
    let undone: Vec<&str> = MISSION_STEPS[..at].iter().rev().copied().collect();

    // The steps' own events in order; a fan-out's branches are checked
    // apart, as they interleave.
    let (branches, steps): (Vec<Event>, Vec<Event>) =
        events.iter().cloned().partition(|e| e.branch().is_some());
    let mut expected = vec!["saga_started".to_owned()];
    let robot_locks = vec!["lock_acquired:perform_exploration".to_owned(); 2];
    for step in &MISSION_STEPS[..at] {
        if *step == "perform_exploration" {
            expected.extend(robot_locks.clone());
            expected.push(format!("step_started:{step}"));
            expected.push(format!("step_completed:{step}"));
            continue;
        }
        for event in ["step_started", "step_progress", "step_completed"] {
            expected.push(format!("{event}:{step}"));
        }
    }
    if failing == "perform_exploration" {
        expected.extend(robot_locks.clone());
        expected.push(format!("step_started:{failing}"));
    } else {
        for event in ["step_started", "step_progress", "step_failed"] {
            expected.push(format!("{event}:{failing}"));
        }
    }
    for step in &undone {
        if *step != "perform_exploration" {
            expected.push(format!("compensation_started:{step}"));
            expected.push(format!("compensation_progress:{step}"));
            expected.push(format!("compensation_completed:{step}"));
        }
    }
    if at
        >= MISSION_STEPS
            .iter()
            .position(|s| *s == "perform_exploration")
            .unwrap()
    {
        expected.push("locks_released".into());
    }
    expected.push("saga_compensated".into());
    assert_eq!(labels(&steps), expected, "\n{}", describe(&events));

    // Each robot's branch, in its own order: explored (or failed, when the
    // exploration fails: both robots' branches were sent at once, and the
    // second is awaited before anything is undone), then undone.
    for branch in 0..2 {
        let unit = format!("perform_exploration[{branch}]");
        let mut expected: Vec<String> = Vec::new();
        let ended = if failing == "perform_exploration" {
            "step_failed"
        } else {
            "step_completed"
        };
        if at >= 2 {
            for event in ["step_started", "step_progress", ended] {
                expected.push(format!("{event}:{unit}"));
            }
        }
        if at > 2 {
            for event in [
                "compensation_started",
                "compensation_progress",
                "compensation_completed",
            ] {
                expected.push(format!("{event}:{unit}"));
            }
        }
        let of_branch: Vec<Event> = (branches.iter())
            .filter(|e| e.branch() == Some(branch))
            .cloned()
            .collect();
        assert_eq!(labels(&of_branch), expected, "\n{}", describe(&events));
    }
    if at > 2 {
        // Both branches undone before the steps before the exploration.
        let last_branch_undone = (events.iter())
            .rposition(|e| e.event_type == "compensation_completed" && e.branch().is_some())
            .unwrap();
        let plan_undone = (events.iter())
            .position(|e| e.label() == "compensation_started:plan_route")
            .unwrap();
        assert!(last_branch_undone < plan_undone, "\n{}", describe(&events));
    }

    let failed = (events.iter())
        .find(|e| e.event_type == "step_failed" && e.step.as_deref() == Some(failing))
        .unwrap();
    assert_eq!(failed.payload["retryable"], false);
    assert_eq!(failed.payload["attempt"], 1);
    assert!(failed.payload["error"].as_str().unwrap().contains(failing));
    assert_eq!(failed.status, "compensating");
    for e in events
        .iter()
        .filter(|e| e.event_type.starts_with("compensation_"))
    {
        assert_eq!(e.status, "compensating", "{}", e.label());
        if e.event_type == "compensation_started" {
            assert_eq!(e.payload["kind"], "compensation");
            assert_eq!(e.payload["attempt"], 1);
        }
    }
    let end = events.last().unwrap();
    assert_eq!(end.status, "compensated");
    assert_eq!(end.payload["failed_step"], failing);
    assert!(end.payload["reason"].as_str().unwrap().contains(failing));
    let compensated: Vec<String> = (end.payload["compensated"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut expected_undone: Vec<String> = Vec::new();
    for step in &undone {
        let mut of_step = undone_of(step);
        // The branches are undone together: in the order they end.
        if of_step.len() > 1 && compensated.get(expected_undone.len()) == Some(&of_step[1]) {
            of_step.reverse();
        }
        expected_undone.extend(of_step);
    }
    assert_eq!(compensated, expected_undone);

    // Without an input template, a compensation gets the whole context.
    let releases: Vec<&Fields> = resources
        .iter()
        .filter(|c| c["event_type"] == "release_resources")
        .collect();
    if undone.is_empty() {
        assert!(releases.is_empty(), "{releases:#?}");
        return;
    }
    assert_eq!(releases.len(), 1, "{resources:#?}");
    let release = releases[0];
    assert_eq!(release["kind"], "compensation");
    assert_eq!(release["step"], "allocate_resources");
    assert_eq!(release["attempt"], "1");
    let payload: serde_json::Value = serde_json::from_str(&release["payload"]).unwrap();
    assert_eq!(payload["input"], json!({"area": "hall-a", "robots": 2}));
    assert_eq!(
        payload["steps"]["allocate_resources"]["result"]["robot_ids"],
        json!(["robot-1", "robot-2"])
    );
    assert_eq!(payload["failure"]["step"], failing);
    assert_eq!(payload["failure"]["reason"], end.payload["reason"]);
}

async fn a_failing_first_step_undoes_nothing(server: Redis) {
    fail_at(server, "allocate_resources").await;
}

async fn a_failing_second_step_undoes_the_first(server: Redis) {
    fail_at(server, "plan_route").await;
}

async fn a_failing_third_step_undoes_the_first_two_in_reverse(server: Redis) {
    fail_at(server, "perform_exploration").await;
}

async fn a_failing_last_step_undoes_the_three_before_it_in_reverse(server: Redis) {
    fail_at(server, "integrate_maps").await;
}

async fn a_failing_compensation_fails_the_saga(server: Redis) {
    let opts = SimulationOptions {
        fail_step: Some("integrate_maps".into()),
        fail_compensation: Some("plan_route".into()),
        ..Default::default()
    };
    let (events, _) = mission_with(&server, opts, "fail-compensation").await;
    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_failed", "\n{}", describe(&events));
    assert_eq!(end.status, "failed");
    assert_eq!(end.payload["failed_step"], "integrate_maps");
    assert!(end.payload["reason"]
        .as_str()
        .unwrap()
        .contains("integrate_maps"));
    assert_eq!(end.payload["compensation"], "plan_route");
    assert!(end.payload["error"]
        .as_str()
        .unwrap()
        .contains("cancel_route"));

    let failed = the_event(&events, "compensation_failed", Some("plan_route"));
    assert_eq!(failed.payload["retryable"], false);
    // Not retryable: no second attempt, and nothing after it is undone.
    the_event(&events, "compensation_started", Some("plan_route"));
    let explorations_undone = (events.iter())
        .filter(|e| {
            e.label()
                .starts_with("compensation_completed:perform_exploration[")
        })
        .count();
    assert_eq!(explorations_undone, 2, "\n{}", describe(&events));
    assert!(
        !events
            .iter()
            .any(|e| e.event_type.starts_with("compensation")
                && e.step.as_deref() == Some("allocate_resources")),
        "\n{}",
        describe(&events)
    );
}

const HANGING: &str = "\
name: hanging
trigger: mission:start
steps:
  - name: allocate_resources
    stream: resources:commands
    timeout: 1s
    compensation:
      command: release_resources
  - name: plan_route
    stream: routing:commands
    timeout: 300ms
    retry: { max_attempts: 2, backoff: fixed, initial_delay: 50ms, max_delay: 1s }
    compensation:
      command: cancel_route
";

async fn a_hung_step_is_retried_under_a_new_request_id_then_undone_itself(server: Redis) {
    let daemon = start_daemon(&server, catalog(HANGING)).await;
    let opts = SimulationOptions {
        hang_step: Some("plan_route".into()),
        ..Default::default()
    };
    let handlers = start_simulated(&server, opts);
    let mut conn = server.conn().await;
    start_mission(&mut conn, "hung", &json!({"area": "hall-a"})).await;
    let events = saga_events(&server, "hung").await;
    let commands = xrange(&mut conn, "routing:commands").await;
    handlers.stop().await;
    daemon.stop().await;

    let expected = [
        "saga_started",
        "step_started:allocate_resources",
        "step_progress:allocate_resources",
        "step_completed:allocate_resources",
        "step_started:plan_route",
        "step_timed_out:plan_route",
        "step_retrying:plan_route",
        "step_started:plan_route",
        "step_timed_out:plan_route",
        "compensation_started:plan_route",
        "compensation_progress:plan_route",
        "compensation_completed:plan_route",
        "compensation_started:allocate_resources",
        "compensation_progress:allocate_resources",
        "compensation_completed:allocate_resources",
        "saga_compensated",
    ];
    assert_eq!(labels(&events), expected, "\n{}", describe(&events));
    let started: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == "step_started" && e.step.as_deref() == Some("plan_route"))
        .collect();
    assert_eq!(started[0].payload["attempt"], 1);
    assert_eq!(started[1].payload["attempt"], 2);
    let (first, second) = (
        &started[0].payload["request_id"],
        &started[1].payload["request_id"],
    );
    assert_ne!(first, second, "a retry is a new request");
    let retrying = the_event(&events, "step_retrying", Some("plan_route"));
    assert_eq!(retrying.payload["attempt"], 2);
    assert_eq!(retrying.payload["delay_ms"], 50);
    assert_eq!(retrying.status, "running");
    let timeouts: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == "step_timed_out")
        .collect();
    assert_eq!(timeouts[0].payload["attempt"], 1);
    assert_eq!(timeouts[1].payload["attempt"], 2);

    let sent: Vec<(&str, &str, &str, &str)> = commands
        .iter()
        .map(|c| {
            let f = |k: &str| c.get(k).map(String::as_str).unwrap_or("");
            (f("event_type"), f("kind"), f("attempt"), f("request_id"))
        })
        .collect();
    let (first, second) = (first.as_str().unwrap(), second.as_str().unwrap());
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0], ("plan_route", "action", "1", first));
    assert_eq!(sent[1], ("plan_route", "action", "2", second));
    assert_eq!(
        (sent[2].0, sent[2].1, sent[2].2),
        ("cancel_route", "compensation", "1")
    );
    assert!(sent[2].3 != first && sent[2].3 != second);

    let end = events.last().unwrap();
    assert_eq!(end.payload["failed_step"], "plan_route");
    assert_eq!(
        end.payload["compensated"],
        json!(["plan_route", "allocate_resources"])
    );
}

const FLAKY: &str = "\
name: flaky
trigger: mission:start
steps:
  - name: reserve
    stream: flaky:commands
    timeout: 1s
    retry: { max_attempts: 3, backoff: fixed, initial_delay: 50ms }
";

async fn a_retryable_failure_then_a_success_completes(server: Redis) {
    let daemon = start_daemon(&server, catalog(FLAKY)).await;
    let handler = spawn_raw_handler(&server, &["flaky:commands"], "flaky", |cmd| {
        if cmd["attempt"] == "1" {
            vec![reply(cmd, "start", &[]), failed(cmd, "robots busy", true)]
        } else {
            complete_in_stages(cmd, &json!({"reserved": cmd["attempt"]}))
        }
    })
    .await;
    let mut conn = server.conn().await;
    start_mission(&mut conn, "flaky", &json!({})).await;
    let events = saga_events(&server, "flaky").await;
    let commands = handler.stop().await;
    daemon.stop().await;

    let expected = [
        "saga_started",
        "step_started:reserve",
        "step_failed:reserve",
        "step_retrying:reserve",
        "step_started:reserve",
        "step_progress:reserve",
        "step_completed:reserve",
        "saga_completed",
    ];
    assert_eq!(labels(&events), expected, "\n{}", describe(&events));
    let failed = the_event(&events, "step_failed", Some("reserve"));
    assert_eq!(failed.payload["retryable"], true);
    assert_eq!(failed.payload["error"], "robots busy");
    assert_eq!(failed.status, "running");
    assert_eq!(commands.len(), 2);
    assert_eq!(commands[1].get("attempt"), "2");
    assert_ne!(commands[0].get("request_id"), commands[1].get("request_id"));
    assert_eq!(
        events.last().unwrap().payload["results"],
        json!({"reserve": {"reserved": "2"}})
    );
}
