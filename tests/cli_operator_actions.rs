//! Operators' requests, driven through the CLI against a real daemon:
//! cancel a running saga, and retry, skip or abandon one stuck on a
//! compensation that failed. Each is recorded on saga:events with who and why.
//! Every test runs on one Redis and on a Redis Cluster.

mod common;

use common::processes::Child;
use common::*;
use std::process::Output;

on_both!(
    a_running_saga_is_cancelled_and_compensates,
    a_stuck_saga_is_retried_once_the_handler_is_fixed,
    a_stuck_compensation_is_skipped_by_hand,
    the_stuck_branches_of_a_fan_out_are_skipped_by_hand_together,
    a_stuck_saga_is_abandoned,
    forged_and_replayed_requests_are_refused_and_recorded,
    an_ambiguous_name_is_refused_with_the_candidates,
);

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
async fn stuck_saga(server: &impl Backend, correlation_id: &str) -> (String, Child) {
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
    let mut conn = server.any_conn().await;
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

async fn a_running_saga_is_cancelled_and_compensates(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let _handlers = Child::handlers(&url, &["--work-ms", "2000"]);
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

    // Named by the start of its id, as `watch` shows it.
    let o = sagaflow(&["status", &saga_id[..8], "--redis-url", &url]).await;
    assert!(
        out(&o).contains("under way          action of plan_route, attempt 1"),
        "step names, not indexes:\n{}",
        out(&o)
    );
    assert!(
        out(&o)
            .lines()
            .any(|l| l.starts_with("step plan_route") && l.contains("running")),
        "{}",
        out(&o)
    );
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "running"]).await;
    let row = out(&o);
    let row = row
        .lines()
        .find(|l| l.starts_with(&saga_id))
        .expect("listed");
    assert!(row.contains(" plan_route "), "{row}");
    let o = sagaflow(&[
        "cancel",
        &saga_id[..8],
        "--redis-url",
        &url,
        "--reason",
        "customer withdrew",
        "--wait",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "compensated:\n{}", out(&o));
    assert!(out(&o).contains("cancel of saga"), "{}", out(&o));
    assert!(
        out(&o).contains("cancelled by ops@test: customer withdrew, during step plan_route; undone: plan_route, allocate_resources"),
        "{}",
        out(&o)
    );

    let events = saga_events(&server, "cancelled").await;
    let actions = operator_actions(&events);
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].payload["action"], "cancel");
    assert_eq!(actions[0].payload["by"], "ops@test");
    assert_eq!(actions[0].payload["verified"], true);
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

    // Shown and listed as cancelled, not as a failure.
    let o = sagaflow(&[
        "status",
        "--correlation-id",
        "cancelled",
        "--redis-url",
        &url,
    ])
    .await;
    let status = out(&o);
    assert!(
        status
            .contains("state              cancelled (by ops@test: customer withdrew; compensated)"),
        "{status}"
    );
    assert!(!status.contains("failed step"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("step plan_route") && l.contains("cancelled")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .filter(|l| l.contains(" completed "))
            .all(|l| l.contains("        -  ")),
        "no progress on what completed: {status}"
    );
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "cancelled"]).await;
    assert!(out(&o).contains(&saga_id), "{}", out(&o));
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "compensated"]).await;
    assert!(!out(&o).contains(&saga_id), "{}", out(&o));

    // Ended: nothing more to cancel.
    let o = sagaflow(&["cancel", &saga_id, "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains("only a running saga can be cancelled"),
        "{}",
        out(&o)
    );
}

async fn a_stuck_saga_is_retried_once_the_handler_is_fixed(server: Redis) {
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

async fn a_stuck_compensation_is_skipped_by_hand(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let (saga_id, _broken) = stuck_saga(&server, "stuck-skipped").await;
    let o = sagaflow(&["status", &saga_id, "--redis-url", &url]).await;
    assert!(
        out(&o).contains(&format!(
            "stuck on           the compensation of allocate_resources: `sagaflow retry {saga_id}`, `sagaflow skip {saga_id} --step allocate_resources`"
        )),
        "{}",
        out(&o)
    );
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "stuck"]).await;
    let listed = out(&o);
    let row = listed
        .lines()
        .find(|l| l.starts_with(&saga_id))
        .expect("listed");
    assert!(row.contains(" undo allocate_resources "), "{row}");
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
    assert!(
        out(&o).contains("skipped by hand: allocate_resources; without compensation: nothing"),
        "{}",
        out(&o)
    );
    let o = sagaflow(&["status", &saga_id, "--redis-url", &url]).await;
    assert!(
        out(&o).contains("skipped by hand    allocate_resources"),
        "{}",
        out(&o)
    );
    assert!(!out(&o).contains("no compensation"), "{}", out(&o));
    assert!(
        out(&o)
            .lines()
            .any(|l| l.starts_with("compensation allocate_resources")
                && l.contains("skipped")
                && l.contains("by hand, by ops@test: released by hand")),
        "{}",
        out(&o)
    );
    let mut conn = server.conn().await;
    let all = xrange(&mut conn, "saga:events").await;
    let end = all.iter().rev().find(|e| e["saga_id"] == saga_id).unwrap();
    assert_eq!(end["event_type"], "saga_compensated");
    assert!(end["payload"].contains("allocate_resources"), "{end:?}");
}

/// The mission's exploration of each robot is undone at once; when every
/// robot's undoing fails, `skip --step perform_exploration` marks them all
/// as done by hand, and `status` and `skip --wait` say so of each branch.
async fn the_stuck_branches_of_a_fan_out_are_skipped_by_hand_together(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let mut broken = Child::handlers(
        &url,
        &[
            "--fail-step",
            "integrate_maps",
            "--fail-compensation",
            "perform_exploration",
        ],
    );
    let mut conn = server.any_conn().await;
    let robots = serde_json::json!({"area": "a", "robots": 3});
    start_mission(&mut conn, "stuck-branches", &robots).await;
    let events = saga_events(&server, "stuck-branches").await;
    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_failed", "{}", describe(&events));
    let branches = mission_units(3)[2..5].to_vec();
    assert_eq!(end.payload["stuck"], serde_json::json!(branches));
    let saga_id = end.saga_id.clone();

    let o = sagaflow(&["status", &saga_id, "--redis-url", &url]).await;
    let status = out(&o);
    assert!(
        status.contains(&format!(
            "stuck on           the compensation of {}: `sagaflow retry {saga_id}`, `sagaflow skip {saga_id} --step perform_exploration`",
            branches.join(", ")
        )),
        "{status}"
    );
    // The fan-out's own row has no attempt of its own; each branch's
    // compensation has a row naming its branch whole.
    assert!(
        status
            .lines()
            .any(|l| row_starts(l, &["step", "perform_exploration", "completed", "-"])),
        "{status}"
    );
    for branch in &branches {
        assert!(
            status.lines().any(
                |l| l.starts_with(&format!("compensation {branch} ")) && l.contains(" failed ")
            ),
            "{branch}: {status}"
        );
    }

    let o = sagaflow(&[
        "skip",
        &saga_id,
        "--step",
        "perform_exploration",
        "--redis-url",
        &url,
        "--reason",
        "robots fetched by hand",
        "--wait",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains(&format!(
            "undone: plan_route, allocate_resources; skipped by hand: {}; without compensation: nothing",
            branches.join(", ")
        )),
        "{}",
        out(&o)
    );
    let o = sagaflow(&["status", &saga_id, "--redis-url", &url]).await;
    let status = out(&o);
    assert!(
        status.contains(&format!("skipped by hand    {}", branches.join(", "))),
        "{status}"
    );
    for branch in &branches {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&format!("compensation {branch} "))
                    && l.contains(" skipped ")
                    && l.contains("by hand, by ops@test: robots fetched by hand")),
            "{branch}: {status}"
        );
    }

    // A branch failing for good fails its fan-out: its row says so once
    // the saga is undone.
    broken.term();
    broken.wait_exit(STOP_WAIT).await;
    let _failing = Child::handlers(&url, &["--fail-step", "perform_exploration"]);
    start_mission(&mut conn, "lost-robot", &robots).await;
    let events = saga_events(&server, "lost-robot").await;
    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_compensated", "{}", describe(&events));
    let o = sagaflow(&["status", &end.saga_id, "--redis-url", &url]).await;
    let status = out(&o);
    assert!(
        status
            .lines()
            .any(|l| row_starts(l, &["step", "perform_exploration", "failed", "-"])),
        "{status}"
    );
}

/// Whether a row of `status`'s table begins with these words.
fn row_starts(line: &str, words: &[&str]) -> bool {
    let found: Vec<&str> = line.split_whitespace().take(words.len()).collect();
    found == words
}

async fn a_stuck_saga_is_abandoned(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let (saga_id, _broken) = stuck_saga(&server, "stuck-abandoned").await;
    // By its correlation id; --wait returns once it is accepted: nothing
    // more happens to an abandoned saga.
    let o = bounded(
        "abandon --wait",
        sagaflow(&[
            "abandon",
            "--correlation-id",
            "stuck-abandoned",
            "--redis-url",
            &url,
            "--reason",
            "cleaned up",
            "--wait",
        ]),
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "it stays failed: {}", out(&o));
    assert!(
        out(&o).contains("abandoned: the saga stays failed"),
        "{}",
        out(&o)
    );
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "abandoned"]).await;
    assert!(out(&o).contains(&saga_id), "{}", out(&o));
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "stuck"]).await;
    assert!(!out(&o).contains(&saga_id), "{}", out(&o));
    let o = sagaflow(&["status", &saga_id, "--redis-url", &url]).await;
    assert!(
        out(&o).contains("(abandoned by an operator: ops@test)"),
        "{}",
        out(&o)
    );
    let o = sagaflow(&["retry", &saga_id, "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("abandoned"), "{}", out(&o));
}

/// The audit entries of `saga_id` on saga:events of one event type.
async fn actions_of(server: &impl Backend, saga_id: &str) -> Vec<serde_json::Value> {
    let mut conn = server.any_conn().await;
    xrange(&mut conn, "saga:events")
        .await
        .into_iter()
        .filter(|e| e["saga_id"] == saga_id && e["event_type"] == "operator_action")
        .map(|e| serde_json::from_str(&e["payload"]).unwrap())
        .collect()
}

/// Waits for the `n`th operator_action of `saga_id`.
async fn nth_action(server: &impl Backend, saga_id: &str, n: usize) -> serde_json::Value {
    bounded("the daemon's answer", async {
        loop {
            let actions = actions_of(server, saga_id).await;
            if actions.len() >= n {
                return actions[n - 1].clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

// Anyone who can write Redis could write saga:control: a request written by
// hand under an operator's name, one signed with a key the daemons do not
// hold, and a real operator's request written again are all refused,
// recorded as refused, and change nothing.
async fn forged_and_replayed_requests_are_refused_and_recorded(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let (saga_id, _broken) = stuck_saga(&server, "stuck-forged").await;
    let mut conn = server.conn().await;
    let key = record_key(&saga_id);
    let ttl = |conn: &mut sagaflow::connection::Conn| {
        let mut cmd = redis::cmd("TTL");
        cmd.arg(&key);
        let mut conn = conn.clone();
        async move { must("TTL", cmd.query_async::<i64>(&mut conn)).await }
    };
    let ttl_before = ttl(&mut conn).await;
    assert!(ttl_before > 0, "a failed saga's record expires");

    // Written by hand, under a name that is not proven.
    xadd(
        &mut conn,
        "saga:control",
        &[
            ("saga_id", saga_id.as_str()),
            ("action", "skip"),
            ("step", "allocate_resources"),
            ("by", "cfo@example.com"),
            ("reason", "approved"),
        ],
    )
    .await;
    let refused = nth_action(&server, &saga_id, 1).await;
    assert_eq!(refused["by"], "cfo@example.com");
    assert_eq!(refused["verified"], false);
    assert!(
        refused["refused"].as_str().unwrap().contains("unsigned"),
        "{refused}"
    );

    // Signed with a key the daemons do not hold.
    let o = as_stranger(&["abandon", &saga_id, "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let refused = nth_action(&server, &saga_id, 2).await;
    assert_eq!(refused["by"], "mallory");
    assert!(
        refused["refused"]
            .as_str()
            .unwrap()
            .contains("no operator key"),
        "{refused}"
    );

    // A real operator's retry, then the same entry written again.
    let o = sagaflow(&["retry", &saga_id, "--redis-url", &url, "--wait"]).await;
    assert_eq!(o.status.code(), Some(2), "failed again:\n{}", out(&o));
    let accepted = nth_action(&server, &saga_id, 3).await;
    assert_eq!(accepted["verified"], true);
    assert!(accepted.get("refused").is_none(), "{accepted}");
    let sent = xrange(&mut conn, "saga:control").await;
    let retry = sent.iter().find(|e| e["action"] == "retry").unwrap();
    let fields: Vec<(&str, &str)> = retry.iter().map(|(k, v)| (&**k, &**v)).collect();
    xadd(&mut conn, "saga:control", &fields).await;
    let replayed = nth_action(&server, &saga_id, 4).await;
    assert!(
        replayed["refused"].as_str().unwrap().contains("replay"),
        "{replayed}"
    );

    // Refusals changed nothing: still failed, still expiring, driven by no
    // daemon.
    let o = sagaflow(&["list", "--redis-url", &url, "--state", "stuck"]).await;
    assert!(out(&o).contains(&saga_id), "{}", out(&o));
    assert!(ttl(&mut conn).await > 0, "the record keeps its expiry");
    let owned = owned_sets(&mut conn).await;
    for set in owned {
        let mut cmd = redis::cmd("SISMEMBER");
        cmd.arg(&set).arg(&saga_id);
        let member: i64 = must("SISMEMBER", cmd.query_async(&mut conn)).await;
        assert_eq!(member, 0, "{set} holds the failed saga");
    }
}

/// `sagaflow <args>` signed with a key no daemon holds.
async fn as_stranger(args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(common::processes::BIN);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .env_remove("SAGAFLOW_REDIS_URL")
        .env(
            "SAGAFLOW_OPERATOR_KEY",
            "mallory:00000000000000000000000000000000",
        )
        .env("RUST_LOG", "warn");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("the command's thread")
        .expect("sagaflow runs")
}

/// Operators name one saga: the start of an id that several have, and a
/// correlation id that several share, are refused with the candidates.
async fn an_ambiguous_name_is_refused_with_the_candidates(server: Redis) {
    let url = server.url();
    let _daemon = Child::daemon(&url, "ops");
    let _handlers = Child::handlers(&url, &["--work-ms", "1000"]);
    let mut conn = server.conn().await;
    // Seventeen sagas: two of them begin with the same hex digit.
    for i in 0..17 {
        let correlation_id = if i < 2 {
            "twice".to_owned()
        } else {
            format!("other-{i}")
        };
        start_mission(
            &mut conn,
            &correlation_id,
            &serde_json::json!({"area": "a", "robots": 1}),
        )
        .await;
    }
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        events
            .iter()
            .filter(|e| e.event_type == "saga_started")
            .count()
            == 17
    })
    .await;
    let started: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == "saga_started")
        .collect();
    let ids: Vec<String> = started
        .iter()
        .filter(|e| e.correlation_id == "twice")
        .map(|e| e.saga_id.clone())
        .collect();
    let o = sagaflow(&["cancel", "--correlation-id", "twice", "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains("2 sagas have the correlation id `twice`: name one by its id"),
        "{}",
        out(&o)
    );
    assert!(
        ids.iter().all(|id| out(&o).contains(id.as_str())),
        "{}",
        out(&o)
    );
    // status shows them both.
    let o = sagaflow(&["status", "--correlation-id", "twice", "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        ids.iter().all(|id| out(&o).contains(id.as_str())),
        "{}",
        out(&o)
    );

    // A first hex digit that several ids have is ambiguous: refused, with
    // them listed.
    let digit = (0..16)
        .map(|d| format!("{d:x}"))
        .find(|d| {
            started
                .iter()
                .filter(|e| e.saga_id.starts_with(d.as_str()))
                .count()
                > 1
        })
        .expect("17 ids, 16 digits");
    let o = sagaflow(&["retry", &digit, "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("give more of it"), "{}", out(&o));
    for e in started
        .iter()
        .filter(|e| e.saga_id.starts_with(digit.as_str()))
    {
        assert!(out(&o).contains(&e.saga_id), "{}", out(&o));
    }
    // Nothing was written to the control stream.
    let sent = xrange(&mut conn, "saga:control").await;
    assert!(sent.is_empty(), "{sent:?}");
}
