//! Fan-out against a real daemon, on one Redis and on a cluster: a step
//! run once per robot, at most `max_concurrency` at once, its results
//! gathered in order; 500 branches; one branch failing for good, with the
//! completed branches and the steps before undone; and a daemon killed
//! mid-fan-out, its saga taken over with no branch lost or sent again under
//! a new request id.

mod common;

use common::processes::{Child, EventLog, LEASE_TTL};
use common::*;
use sagaflow::streams::decode_read_reply;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

on_both!(
    three_branches_run_two_at_a_time_and_gather_their_results_in_order,
    five_hundred_branches_complete,
    a_branch_failing_for_good_undoes_the_others_and_the_steps_before,
    a_daemon_killed_mid_fan_out_is_taken_over_with_no_branch_lost,
    a_stuck_compensation_of_one_branch_is_retried_by_an_operator,
);

/// Allocates `input.robots` robots, explores with each (two at a time by
/// default), merges the maps.
fn survey(max_concurrency: u32) -> String {
    format!(
        "\
name: survey
trigger: survey:start
steps:
  - name: allocate
    stream: survey:commands
    timeout: 10s
    compensation: {{ command: release }}
  - name: explore
    stream: survey:commands
    timeout: 10s
    for_each: ${{steps.allocate.result.robot_ids}}
    max_concurrency: {max_concurrency}
    input: {{ robot: '${{item}}', index: '${{index}}' }}
    compensation: {{ command: abort, input: {{ robot: '${{item}}' }} }}
  - name: merge
    stream: survey:commands
    timeout: 10s
    input: {{ maps: '${{steps.explore.result}}' }}
"
    )
}

/// What the survey's handler answers to a command: `allocate` gives
/// `input.robots` robot ids `r0`, `r1`, ...; `explore` of robot `fail`
/// fails for good; the rest complete.
fn answer(cmd: &Fields, fail: Option<&str>) -> Vec<RawEntry> {
    let payload: Value = serde_json::from_str(&cmd["payload"]).unwrap();
    let result = match cmd["event_type"].as_str() {
        "allocate" => {
            let n = payload["input"]["robots"].as_u64().unwrap();
            json!({ "robot_ids": (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>() })
        }
        "explore" => {
            let robot = payload["robot"].as_str().unwrap();
            if Some(robot) == fail {
                return vec![failed(cmd, &format!("{robot} is stuck in a ditch"), false)];
            }
            json!({ "map": robot, "index": payload["index"] })
        }
        "merge" => json!({ "merged": payload["maps"].as_array().map_or(0, Vec::len) }),
        _ => json!({}),
    };
    vec![reply(cmd, "completed", &[("result", &result.to_string())])]
}

async fn start_survey(server: &Redis, correlation_id: &str, robots: usize) {
    let mut conn = server.conn().await;
    let payload = json!({ "robots": robots }).to_string();
    let fields = [("correlation_id", correlation_id), ("payload", &payload)];
    xadd(&mut conn, "survey:start", &fields).await;
}

/// The most branches of `step` under way at once, from the events.
fn most_at_once(events: &[Event], step: &str) -> usize {
    let mut running = BTreeSet::new();
    let mut most = 0;
    for e in events.iter().filter(|e| e.step.as_deref() == Some(step)) {
        let Some(branch) = e.branch() else { continue };
        match e.event_type.as_str() {
            "step_started" => {
                running.insert(branch);
            }
            "step_completed" | "step_failed" | "step_timed_out" => {
                running.remove(&branch);
            }
            _ => {}
        }
        most = most.max(running.len());
    }
    most
}

async fn three_branches_run_two_at_a_time_and_gather_their_results_in_order(server: Redis) {
    let daemon = start_daemon(&server, catalog(&survey(2))).await;
    let handler =
        spawn_raw_handler(&server, &["survey:commands"], "h", |cmd| answer(cmd, None)).await;
    start_survey(&server, "three", 3).await;
    let events = saga_events(&server, "three").await;
    let commands = handler.stop().await;
    daemon.stop().await;

    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_completed", "\n{}", describe(&events));
    let maps = &end.payload["results"]["explore"];
    assert_eq!(
        maps,
        &json!([
            {"map": "r0", "index": 0}, {"map": "r1", "index": 1}, {"map": "r2", "index": 2}
        ])
    );
    assert_eq!(end.payload["results"]["merge"], json!({"merged": 3}));
    assert_eq!(
        most_at_once(&events, "explore"),
        2,
        "\n{}",
        describe(&events)
    );

    // The fan-out starts once, each branch once, and completes once.
    let whole = |t: &str| -> Vec<&Event> {
        let of_step = |e: &&Event| e.event_type == t && e.step.as_deref() == Some("explore");
        events
            .iter()
            .filter(of_step)
            .filter(|e| e.branch().is_none())
            .collect()
    };
    let started = whole("step_started");
    assert_eq!(started.len(), 1, "\n{}", describe(&events));
    assert_eq!(
        started[0].payload,
        json!({"branches": 3, "max_concurrency": 2})
    );
    let completed = whole("step_completed");
    assert_eq!(completed.len(), 1, "\n{}", describe(&events));
    assert_eq!(completed[0].payload["result"], *maps);
    assert_eq!(completed[0].payload["branches"], 3);
    let branch_starts: Vec<u32> = (events.iter())
        .filter(|e| e.event_type == "step_started" && e.step.as_deref() == Some("explore"))
        .filter_map(Event::branch)
        .collect();
    assert_eq!(branch_starts, [0, 1, 2]);
    for e in events.iter().filter(|e| e.branch().is_some()) {
        assert_eq!(e.payload["attempt"], 1, "{}", e.label());
    }
    // Each event of a branch names it: the step's and the branch's.
    let branch_events: BTreeSet<String> = (events.iter())
        .filter(|e| e.branch().is_some())
        .map(Event::label)
        .collect();
    for i in 0..3 {
        for t in ["step_started", "step_completed"] {
            assert!(
                branch_events.contains(&format!("{t}:explore[{i}]")),
                "{t} {i}"
            );
        }
    }

    // Each branch's command: its own request id, its branch and element.
    let explores: Vec<&Received> = (commands.iter())
        .filter(|c| c.get("event_type") == "explore")
        .collect();
    assert_eq!(explores.len(), 3);
    let mut request_ids = BTreeSet::new();
    for (i, c) in explores.iter().enumerate() {
        assert_eq!(c.get("branch"), i.to_string());
        let payload: Value = serde_json::from_str(c.get("payload")).unwrap();
        assert_eq!(payload, json!({"robot": format!("r{i}"), "index": i}));
        assert!(request_ids.insert(c.get("request_id").to_owned()));
    }
    // Commands of steps that are not fan-outs carry no branch.
    let allocate = commands.iter().find(|c| c.get("event_type") == "allocate");
    assert!(!allocate.unwrap().fields.contains_key("branch"));
}

async fn five_hundred_branches_complete(server: Redis) {
    const BRANCHES: usize = 500;
    let daemon = start_daemon(&server, catalog(&survey(100))).await;
    let handler =
        spawn_raw_handler(&server, &["survey:commands"], "h", |cmd| answer(cmd, None)).await;
    start_survey(&server, "many", BRANCHES).await;
    let ours = |e: &Event| e.correlation_id == "many" && e.is_terminal();
    let all = wait_for_events(&server, Duration::from_secs(60), |events| {
        events.iter().any(ours)
    })
    .await;
    let commands = handler.stop().await;
    daemon.stop().await;
    let end = all.iter().find(|e| ours(e)).unwrap();
    assert_eq!(end.event_type, "saga_completed", "{}", end.payload);
    // `status` sums a big fan-out up in one row, not 500.
    let url = server.url();
    let out = sagaflow_cli(&["status", &end.saga_id, "--redis-url", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("step explore"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows.iter()
            .any(|r| r.contains("branches") && r.contains("500 completed")),
        "{text}"
    );
    let maps = end.payload["results"]["explore"].as_array().unwrap();
    assert_eq!(maps.len(), BRANCHES);
    for (i, map) in maps.iter().enumerate() {
        assert_eq!(map["map"], format!("r{i}"));
    }
    assert!(most_at_once(&all, "explore") <= 100);
    let explores: BTreeSet<&str> = (commands.iter())
        .filter(|c| c.get("event_type") == "explore")
        .map(|c| c.get("request_id"))
        .collect();
    assert_eq!(
        explores.len(),
        BRANCHES,
        "one command, one request id per branch"
    );
}

async fn a_branch_failing_for_good_undoes_the_others_and_the_steps_before(server: Redis) {
    let daemon = start_daemon(&server, catalog(&survey(3))).await;
    let handler = spawn_raw_handler(&server, &["survey:commands"], "h", |cmd| {
        answer(cmd, Some("r1"))
    })
    .await;
    start_survey(&server, "ditch", 3).await;
    let events = saga_events(&server, "ditch").await;
    let commands = handler.stop().await;
    daemon.stop().await;

    let end = events.last().unwrap();
    assert_eq!(
        end.event_type,
        "saga_compensated",
        "\n{}",
        describe(&events)
    );
    assert_eq!(end.payload["failed_step"], "explore");
    let failed = the_event(&events, "step_failed", Some("explore"));
    assert_eq!(failed.branch(), Some(1));
    // The branches that completed are undone, the one that failed is not,
    // and allocate only once they are.
    let undone: Vec<&str> = (end.payload["compensated"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap())
        .collect();
    let branches: BTreeSet<&str> = undone[..2].iter().copied().collect();
    assert_eq!(branches, BTreeSet::from(["explore[0]", "explore[2]"]));
    assert_eq!(undone[2..], ["allocate"]);
    let aborted: BTreeSet<String> = (commands.iter())
        .filter(|c| c.get("event_type") == "abort")
        .map(|c| c.get("payload").to_owned())
        .collect();
    let expected = [r#"{"robot":"r0"}"#, r#"{"robot":"r2"}"#].map(String::from);
    assert_eq!(aborted, BTreeSet::from(expected));
    assert!(!commands.iter().any(|c| c.get("event_type") == "merge"));
}

async fn a_stuck_compensation_of_one_branch_is_retried_by_an_operator(server: Redis) {
    let daemon = start_daemon(&server, catalog(&survey(3))).await;
    // Exploring r1 fails; undoing r2's exploration fails the first time.
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let once = broken.clone();
    let handler = spawn_raw_handler(&server, &["survey:commands"], "h", move |cmd| {
        let payload: Value = serde_json::from_str(&cmd["payload"]).unwrap();
        let r2 = payload["robot"] == "r2";
        if cmd["event_type"] == "abort" && r2 && once.swap(false, Ordering::SeqCst) {
            return vec![failed(cmd, "r2 does not answer", false)];
        }
        answer(cmd, Some("r1"))
    })
    .await;
    start_survey(&server, "stuck", 3).await;
    let events = saga_events(&server, "stuck").await;
    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_failed", "\n{}", describe(&events));
    assert_eq!(end.payload["compensation"], "explore[2]");
    assert_eq!(end.branch(), Some(2));
    // allocate waits for the stuck branch; the other branch was undone.
    assert_eq!(end.payload["compensated"], json!(["explore[0]"]));
    assert!(!broken.load(Ordering::SeqCst));

    let saga_id = end.saga_id.clone();
    let url = server.url();
    let out = sagaflow_cli(&["status", &saga_id, "--redis-url", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stuck on"), "{text}");
    assert!(text.contains("explore[2]"), "{text}");
    let out = sagaflow_cli(&[
        "retry",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "r2 is back",
        "--wait",
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    // `--wait` exits as the saga ended: 1 for compensated.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("undone: explore[0], explore[2], allocate"),
        "{text}"
    );
    let all = wait_for_events(&server, SAGA_WAIT, |events| {
        events
            .iter()
            .any(|e| e.saga_id == saga_id && e.event_type == "saga_compensated")
    })
    .await;
    let end = all
        .iter()
        .find(|e| e.saga_id == saga_id && e.event_type == "saga_compensated")
        .unwrap();
    assert_eq!(
        end.payload["compensated"],
        json!(["explore[0]", "explore[2]", "allocate"])
    );
    handler.stop().await;
    daemon.stop().await;
}

/// A handler that takes `explore` commands but answers each only after
/// `delay`; everything else at once.
fn slow_explorer(url: String, delay: Duration) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move {
        let backend = UrlBackend(url);
        let mut conn = backend.any_conn().await;
        let created = words("XGROUP CREATE survey:commands slow 0 MKSTREAM")
            .query_async::<()>(&mut conn)
            .await;
        if let Err(e) = created {
            assert_eq!(e.code(), Some("BUSYGROUP"), "{e}");
        }
        while !stop.is_cancelled() {
            let read = words("XREADGROUP GROUP slow h COUNT 32 STREAMS survey:commands >")
                .query_async::<redis::Value>(&mut conn)
                .await;
            let Ok(value) = read else { continue };
            let entries = decode_read_reply(&value);
            if entries.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for entry in entries {
                let fields = lossy(&entry.fields);
                let mut conn = conn.clone();
                let wait = if fields["event_type"] == "explore" {
                    delay
                } else {
                    Duration::ZERO
                };
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let stream = fields["reply_stream"].clone();
                    for reply in answer(&fields, None) {
                        let mut xadd = redis::cmd("XADD");
                        xadd.arg(&stream).arg("*").arg(reply);
                        let _ = xadd.query_async::<String>(&mut conn).await;
                    }
                    let mut ack = redis::cmd("XACK");
                    ack.arg("survey:commands").arg("slow").arg(&entry.id);
                    let _ = ack.query_async::<i64>(&mut conn).await;
                });
            }
        }
    });
    (token, handle)
}

/// A Redis known by its URL only, for a task that outlives a borrow.
struct UrlBackend(String);

impl Backend for UrlBackend {
    fn url(&self) -> String {
        self.0.clone()
    }

    fn mode(&self) -> sagaflow::connection::RedisMode {
        sagaflow::connection::RedisMode::Auto
    }
}

fn daemon_on(url: &str, node: &str, sagas: &Path) -> Child {
    let sagas = sagas.to_str().unwrap();
    let args = [
        "run",
        "--redis-url",
        url,
        "--node-id",
        node,
        "--sagas",
        sagas,
        "--lease-ttl",
        LEASE_TTL,
    ];
    Child::spawn(node, &args, &[])
}

async fn a_daemon_killed_mid_fan_out_is_taken_over_with_no_branch_lost(server: Redis) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("survey.yaml"), survey(2)).unwrap();
    let url = server.url();
    let (stop, handler) = slow_explorer(url.clone(), Duration::from_millis(400));
    let mut first = daemon_on(&url, "node-a", dir.path());
    first.wait_started().await;
    start_survey(&server, "killed", 6).await;
    let mut log = EventLog::on(&server);
    let first_branches = |events: &[Event]| {
        events
            .iter()
            .filter(|e| e.event_type == "step_completed" && e.branch().is_some())
            .count()
            >= 2
    };
    log.wait_until(SAGA_WAIT, "two branches completed", first_branches)
        .await;
    first.kill9();
    let _second = daemon_on(&url, "node-b", dir.path());
    let ids = ["killed".to_owned()];
    log.wait_all_ended(&ids, Duration::from_secs(30)).await;
    let events = log.settle(Duration::from_millis(500)).await;
    stop.cancel();
    let _ = handler.await;

    common::processes::assert_all_ended_as(&events, &ids, "saga_completed");
    common::processes::assert_audit(&events, &ids);
    let end = (events.iter())
        .find(|e| e.event_type == "saga_completed")
        .unwrap();
    let maps = end.payload["results"]["explore"].as_array().unwrap();
    let robots: Vec<&str> = maps.iter().map(|m| m["map"].as_str().unwrap()).collect();
    assert_eq!(robots, ["r0", "r1", "r2", "r3", "r4", "r5"]);
    // Every branch sent under one request id, whichever daemon sent it.
    let mut request_ids: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event_type == "step_started") {
        if let Some(branch) = e.branch() {
            let id = e.payload["request_id"].as_str().unwrap().to_owned();
            request_ids.entry(branch).or_default().insert(id);
        }
    }
    assert_eq!(request_ids.len(), 6);
    assert!(
        request_ids.values().all(|ids| ids.len() == 1),
        "{request_ids:?}"
    );
}
