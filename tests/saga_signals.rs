//! Signals for `wait` steps, against real daemon processes and the
//! simulated handlers, on one Redis and on a cluster: a signal sent before
//! the saga reaches its wait is kept and taken, and the next step's input
//! reads its payload; a repeat is a duplicate and another signal of the
//! name is refused; a wait that times out fails its step and the saga
//! compensates; a saga waiting when its daemon is killed -9 is taken over
//! and completes once the signal comes; bad entries written by hand are
//! each rejected, and nothing else happens.

mod common;

use common::processes::{assert_audit, Child, LEASE_TTL};
use common::*;
use serde_json::{json, Value};
use std::process::Output;

on_both!(
    a_signal_sent_before_the_wait_is_kept_and_taken,
    a_waiting_saga_taken_over_after_a_kill_completes_once_signalled,
);

/// A mission that waits for an approval of its route between its first
/// two steps; the second step's input reads the approval. `approval_quick`
/// waits one second at most.
const APPROVAL: &str = r#"
name: NAME
steps:
  - name: allocate_resources
    stream: resources:commands
    timeout: 10s
    input:
      area: ${input.area}
      robots: ${input.robots}
    compensation:
      command: release_resources
  - name: approve
    kind: wait
    signal: route_approved
    TIMEOUT
  - name: plan_route
    stream: routing:commands
    timeout: 10s
    input:
      robot_ids: ${steps.allocate_resources.result.robot_ids}
      area: ${input.area}
      approved_by: ${steps.approve.result.by}
      note: ${steps.approve.result.note}
    compensation:
      command: cancel_route
"#;

/// A directory holding `approval` (waits 60 s) and `approval_quick` (1 s).
fn approval_sagas() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    for (name, timeout) in [
        ("approval", "timeout: 60s"),
        ("approval_quick", "timeout: 1s"),
    ] {
        let text = APPROVAL.replace("NAME", name).replace("TIMEOUT", timeout);
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).expect("a definition");
    }
    dir
}

/// `sagaflow run` on the approval sagas, with the test lease.
fn daemon(url: &str, node_id: &str, sagas: &tempfile::TempDir, extra: &[&str]) -> Child {
    let dir = sagas.path().to_str().expect("a UTF-8 path");
    let mut args = vec!["run", "--redis-url", url, "--node-id", node_id];
    args.extend(["--sagas", dir, "--lease-ttl", LEASE_TTL]);
    args.extend(extra);
    Child::spawn(node_id, &args, &[("SAGAFLOW_OPERATOR_KEYS", OPERATOR_KEY)])
}

/// Starts saga `saga` (by name, on the default trigger stream).
async fn start(server: &impl Backend, saga: &str, correlation_id: &str) {
    let mut conn = server.any_conn().await;
    let payload = json!({"area": "hall-a", "robots": 2}).to_string();
    let fields = [
        ("saga", saga),
        ("correlation_id", correlation_id),
        ("payload", payload.as_str()),
    ];
    xadd(&mut conn, "mission:start", &fields).await;
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits for `event_type` (of `step`, when given) of the saga started
/// with `correlation_id`; returns the events so far and the saga's id.
async fn wait_for(
    server: &impl Backend,
    correlation_id: &str,
    event_type: &str,
    step: Option<&str>,
) -> (Vec<Event>, String) {
    let events = wait_for_events(server, SAGA_WAIT, |events| {
        events.iter().any(|e| {
            e.correlation_id == correlation_id
                && e.event_type == event_type
                && (step.is_none() || e.step.as_deref() == step)
        })
    })
    .await;
    let ours: Vec<Event> = events
        .into_iter()
        .filter(|e| e.correlation_id == correlation_id)
        .collect();
    let saga_id = ours[0].saga_id.clone();
    (ours, saga_id)
}

/// `sagaflow signal` for `saga_id`, with more arguments.
async fn signal(url: &str, saga_id: &str, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["signal", saga_id, name, "--redis-url", url];
    args.extend(extra);
    sagaflow_cli(&args).await
}

/// The payloads of the commands sent for `step` of saga `saga_id`.
async fn commands_of(server: &impl Backend, stream: &str, saga_id: &str, step: &str) -> Vec<Value> {
    let mut conn = server.any_conn().await;
    xrange(&mut conn, stream)
        .await
        .into_iter()
        .filter(|c| c.get("saga_id").map(String::as_str) == Some(saga_id))
        .filter(|c| c.get("event_type").map(String::as_str) == Some(step))
        .map(|c| serde_json::from_str(&c["payload"]).expect("a JSON payload"))
        .collect()
}

async fn a_signal_sent_before_the_wait_is_kept_and_taken(server: Redis) {
    let url = server.url();
    let sagas = approval_sagas();
    let _daemon = daemon(&url, "signals-a", &sagas, &[]);
    let _handlers = Child::handlers(&url, &["--work-ms", "1500"]);
    start(&server, "approval", "early").await;
    let (_, saga_id) = wait_for(&server, "early", "step_started", Some("allocate_resources")).await;
    // Sent while the first step is under way: kept until the wait.
    let o = signal(
        &url,
        &saga_id,
        "route_approved",
        &[
            "--payload",
            r#"{"by": "ana", "note": "north first"}"#,
            "--id",
            "ok-1",
            "--by",
            "ana",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("kept for saga"), "{}", out(&o));
    let events = saga_events(&server, "early").await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_completed",
        "{}",
        describe(&events)
    );
    let at = |label: &str| {
        (events.iter().position(|e| e.label() == label))
            .unwrap_or_else(|| panic!("no {label} in:\n{}", describe(&events)))
    };
    assert!(
        at("signal_received") < at("step_started:approve"),
        "{}",
        describe(&events)
    );
    let received = the_event(&events, "signal_received", None);
    assert_eq!(received.saga_id, saga_id);
    assert_eq!(received.saga, "approval");
    assert_eq!(received.payload["signal"], "route_approved");
    assert_eq!(received.payload["signal_id"], "ok-1");
    assert_eq!(received.payload["by"], "ana");
    assert!(
        received.payload.get("duplicate").is_none(),
        "{}",
        received.payload
    );
    let taken = the_event(&events, "step_completed", Some("approve"));
    assert_eq!(taken.payload["signal_id"], "ok-1");
    assert_eq!(taken.payload["result"]["note"], "north first");
    // The next step's input read the signal's payload.
    let sent = commands_of(&server, "routing:commands", &saga_id, "plan_route").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["approved_by"], "ana");
    assert_eq!(sent[0]["note"], "north first");
    assert_audit(&events, &["early".to_owned()]);
    let mut conn = server.conn().await;
    assert_eq!(
        pending_count(&mut conn, "saga:signals", "sagaflow").await,
        0
    );
}

async fn a_waiting_saga_taken_over_after_a_kill_completes_once_signalled(server: Redis) {
    let url = server.url();
    let sagas = approval_sagas();
    let mut first = daemon(&url, "signals-kill-a", &sagas, &[]);
    let _handlers = Child::handlers(&url, &[]);
    start(&server, "approval", "killed").await;
    let (_, saga_id) = wait_for(&server, "killed", "step_started", Some("approve")).await;
    first.kill9();
    let second = daemon(&url, "signals-kill-b", &sagas, &[]);
    second
        .wait_for_log("took over the sagas of a daemon", SAGA_WAIT)
        .await;
    let o = signal(
        &url,
        &saga_id,
        "route_approved",
        &["--payload", r#"{"by": "bo", "note": "after the kill"}"#],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let events = saga_events(&server, "killed").await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_completed",
        "{}",
        describe(&events)
    );
    the_event(&events, "step_completed", Some("approve"));
    the_event(&events, "signal_received", None);
    let sent = commands_of(&server, "routing:commands", &saga_id, "plan_route").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["approved_by"], "bo");
    assert_audit(&events, &["killed".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_is_a_duplicate_and_another_signal_of_the_name_is_refused() {
    const APPROVED: &str = r#"{"by": "ed", "note": "once"}"#;
    let server = RedisServer::start();
    let url = server.url();
    let sagas = approval_sagas();
    let _daemon = daemon(&url, "signals-dup", &sagas, &[]);
    let _handlers = Child::handlers(&url, &["--work-ms", "3000"]);
    start(&server, "approval", "twice").await;
    let (_, saga_id) = wait_for(&server, "twice", "saga_started", None).await;
    let first = signal(
        &url,
        &saga_id,
        "route_approved",
        &["--id", "x-1", "--payload", APPROVED],
    )
    .await;
    assert_eq!(first.status.code(), Some(0), "{}", out(&first));
    let again = signal(
        &url,
        &saga_id,
        "route_approved",
        &["--id", "x-1", "--payload", APPROVED],
    )
    .await;
    assert_eq!(again.status.code(), Some(0), "{}", out(&again));
    assert!(out(&again).contains("duplicate"), "{}", out(&again));
    let other = signal(&url, &saga_id, "route_approved", &["--id", "x-2", "--json"]).await;
    assert_eq!(other.status.code(), Some(1), "{}", out(&other));
    let answer: Value = serde_json::from_slice(&other.stdout).expect("a JSON line");
    assert_eq!(answer["event_type"], "signal_rejected", "{answer}");
    assert!(
        answer["payload"]["refused"]
            .as_str()
            .unwrap()
            .contains("signal_id `x-1`"),
        "{answer}"
    );
    let events = saga_events(&server, "twice").await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_completed",
        "{}",
        describe(&events)
    );
    let received: Vec<&Event> = (events.iter())
        .filter(|e| e.event_type == "signal_received")
        .collect();
    assert_eq!(received.len(), 2, "{}", describe(&events));
    assert!(received[0].payload.get("duplicate").is_none());
    assert_eq!(received[1].payload["duplicate"], true);
    // The first one's payload was taken; the refused one changed nothing.
    let taken = the_event(&events, "step_completed", Some("approve"));
    assert_eq!(
        (
            taken.payload["signal_id"].clone(),
            taken.payload["result"].clone()
        ),
        (
            json!("x-1"),
            serde_json::from_str::<Value>(APPROVED).unwrap()
        )
    );
    // Once the saga has ended, a repeat still gets the first one's answer.
    let late = signal(
        &url,
        &saga_id,
        "route_approved",
        &["--id", "x-1", "--payload", APPROVED],
    )
    .await;
    assert_eq!(late.status.code(), Some(0), "{}", out(&late));
    assert!(out(&late).contains("duplicate"), "{}", out(&late));
    let late = signal(&url, &saga_id, "another", &[]).await;
    assert_eq!(late.status.code(), Some(1), "{}", out(&late));
    assert!(
        out(&late).contains("completed, not running"),
        "{}",
        out(&late)
    );
}

/// A wait that times out fails its step; a signal whose payload lacks
/// what the next step reads fails that step. Either way the saga
/// compensates the steps before the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_times_out_fails_its_step_and_the_saga_compensates() {
    let server = RedisServer::start();
    let url = server.url();
    let sagas = approval_sagas();
    let _daemon = daemon(&url, "signals-timeout", &sagas, &[]);
    let _handlers = Child::handlers(&url, &[]);
    start(&server, "approval_quick", "late").await;
    let events = saga_events(&server, "late").await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_compensated",
        "{}",
        describe(&events)
    );
    let failed = the_event(&events, "step_failed", Some("approve"));
    assert!(
        failed
            .payload
            .to_string()
            .contains("no signal `route_approved` within its timeout of 1s"),
        "{}",
        failed.payload
    );
    the_event(
        &events,
        "compensation_completed",
        Some("allocate_resources"),
    );
    assert!(
        !events
            .iter()
            .any(|e| e.step.as_deref() == Some("plan_route")),
        "{}",
        describe(&events)
    );
    // A signal after the end is refused: the saga is no longer running.
    let saga_id = events[0].saga_id.clone();
    let o = signal(&url, &saga_id, "route_approved", &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("compensated, not running"), "{}", out(&o));

    start(&server, "approval", "unreadable").await;
    let (_, saga_id) = wait_for(&server, "unreadable", "step_started", Some("approve")).await;
    let o = signal(
        &url,
        &saga_id,
        "route_approved",
        &["--payload", r#"{"by": "dee"}"#],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let events = saga_events(&server, "unreadable").await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_compensated",
        "{}",
        describe(&events)
    );
    let failed = the_event(&events, "step_failed", Some("plan_route"));
    assert!(
        failed
            .payload
            .to_string()
            .contains("steps.approve.result.note"),
        "{}",
        failed.payload
    );
    let ended = &events.last().unwrap().payload;
    assert_eq!(
        ended["compensated"],
        json!(["allocate_resources"]),
        "{ended}"
    );
    assert_eq!(ended["skipped"], json!(["approve"]), "{ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signals_are_each_rejected_and_nothing_else_happens() {
    let server = RedisServer::start();
    let url = server.url();
    let sagas = approval_sagas();
    let addr = common::api::free_addr();
    let _daemon = daemon(&url, "signals-bad", &sagas, &["--http-addr", &addr]);
    let _handlers = Child::handlers(&url, &[]);
    start(&server, "approval", "bad").await;
    let (_, saga_id) = wait_for(&server, "bad", "step_started", Some("approve")).await;
    let mut conn = server.conn().await;

    // The CLI refuses bad input before it writes anything.
    let cli_bad: [(&[&str], &str); 5] = [
        (&["not-a-saga", "route_approved"], "is not a saga id"),
        (&[&saga_id, "route approved"], "signal name"),
        (
            &[&saga_id, "route_approved", "--payload", "{nope"],
            "not JSON",
        ),
        (&[&saga_id, "route_approved", "--id", "a b"], "signal_id"),
        (&[&saga_id, "route_approved", "--by", "ana smith"], "by"),
    ];
    for (args, says) in cli_bad {
        let mut all = vec!["signal"];
        all.extend(args);
        all.extend(["--redis-url", &url]);
        let o = sagaflow_cli(&all).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", out(&o));
        assert!(out(&o).contains(says), "{args:?}: {}", out(&o));
    }
    let big = format!("\"{}\"", "x".repeat(100 << 10));
    let o = signal(&url, &saga_id, "route_approved", &["--payload", &big]).await;
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("limit"), "{}", out(&o));
    let len: u64 = must("XLEN", words("XLEN saga:signals").query_async(&mut conn)).await;
    assert_eq!(len, 0, "the CLI wrote nothing");

    // Entries written by hand, each rejected with its reason.
    let unknown = "0123456789abcdef0123456789abcdef";
    let big = "x".repeat(100 << 10);
    let bad: [(Vec<(&str, &str)>, &str); 5] = [
        (vec![("signal", "route_approved")], "`saga_id` is missing"),
        (
            vec![("saga_id", unknown), ("signal", "route_approved")],
            "no such saga",
        ),
        (
            vec![
                ("saga_id", &saga_id),
                ("signal", "route_approved"),
                ("payload", "{nope"),
            ],
            "not JSON",
        ),
        (
            vec![
                ("saga_id", &saga_id),
                ("signal", "route_approved"),
                ("payload", &big),
            ],
            "over the limit",
        ),
        (
            vec![("saga_id", &saga_id)],
            "`signal` (its name) is missing",
        ),
    ];
    let mut written = Vec::new();
    for (fields, _) in &bad {
        written.push(xadd(&mut conn, "saga:signals", fields).await);
    }
    // The saga's signals replaced by a key of another kind.
    let signals_key = sagaflow::store::keys::Keys::new("saga:").signals(&saga_id);
    let mut set = redis::cmd("SET");
    set.arg(&signals_key).arg("not a hash");
    must("SET", set.query_async::<()>(&mut conn)).await;
    let fields = [("saga_id", saga_id.as_str()), ("signal", "route_approved")];
    written.push(xadd(&mut conn, "saga:signals", &fields).await);
    let expected: Vec<&str> = (bad.iter().map(|(_, says)| *says))
        .chain(["not the kind of key signals are kept in"])
        .collect();
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        events
            .iter()
            .filter(|e| e.event_type == "signal_rejected")
            .count()
            == expected.len()
    })
    .await;
    let rejected: Vec<&Event> = (events.iter())
        .filter(|e| e.event_type == "signal_rejected")
        .collect();
    for (entry_id, says) in written.iter().zip(&expected) {
        let event = (rejected.iter())
            .find(|e| e.payload["entry_id"] == entry_id.as_str())
            .unwrap_or_else(|| panic!("no rejection of {entry_id} in:\n{}", describe(&events)));
        let why = event.payload["refused"].as_str().unwrap_or_default();
        assert!(
            why.contains(says),
            "{entry_id}: `{why}` does not say `{says}`"
        );
    }
    // About the saga when its id reads; about none otherwise.
    assert_eq!(rejected[0].saga_id, "", "{}", describe(&events));
    assert_eq!(rejected[1].saga_id, unknown);
    assert_eq!(rejected[2].saga_id, saga_id);
    assert_eq!(rejected[2].correlation_id, "bad");
    assert_eq!(rejected[3].saga_id, saga_id);
    // Nothing else happened: the saga still waits, every entry is
    // acknowledged, and the daemon keeps the next good signal.
    assert!(
        !events.iter().any(|e| e.event_type == "signal_received"),
        "{}",
        describe(&events)
    );
    assert!(
        !events.iter().any(|e| e.label() == "step_completed:approve"),
        "{}",
        describe(&events)
    );
    assert_eq!(
        pending_count(&mut conn, "saga:signals", "sagaflow").await,
        0
    );
    must(
        "DEL",
        redis::cmd("DEL")
            .arg(&signals_key)
            .query_async::<()>(&mut conn),
    )
    .await;
    let o = signal(
        &url,
        &saga_id,
        "route_approved",
        &["--payload", r#"{"by": "cy", "note": "at last"}"#],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let events = saga_events(&server, "bad").await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_completed",
        "{}",
        describe(&events)
    );
    // Counted once each event is written, which may be a moment after the
    // saga took its signal.
    let wanted = [
        "sagaflow_signals_total{outcome=\"rejected\"} 6",
        "sagaflow_signals_total{outcome=\"kept\"} 1",
        "sagaflow_signals_total{outcome=\"duplicate\"} 0",
    ];
    let deadline = std::time::Instant::now() + STOP_WAIT;
    loop {
        let metrics = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("the metrics")
            .text()
            .await
            .expect("their text");
        let missing: Vec<&str> = (wanted.iter().copied())
            .filter(|line| !metrics.contains(line))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {missing:?} in:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A signal a daemon read and never acknowledged (it died first) is taken
/// over by another daemon once idle for three leases, and kept once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_read_by_a_daemon_that_died_is_taken_over() {
    let server = RedisServer::start();
    let url = server.url();
    let sagas = approval_sagas();
    let mut first = daemon(&url, "signals-held-a", &sagas, &[]);
    let _handlers = Child::handlers(&url, &[]);
    start(&server, "approval", "held").await;
    let (_, saga_id) = wait_for(&server, "held", "step_started", Some("approve")).await;
    // Stopped while its forwarder waits in XREADGROUP: Redis hands it the
    // signal, which it never gets to acknowledge.
    first.stop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut conn = server.conn().await;
    let payload = json!({"by": "fay", "note": "held"}).to_string();
    let fields = [
        ("saga_id", saga_id.as_str()),
        ("signal", "route_approved"),
        ("signal_id", "held-1"),
        ("payload", payload.as_str()),
    ];
    let entry_id = xadd(&mut conn, "saga:signals", &fields).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while pending_count(&mut conn, "saga:signals", "sagaflow").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stopped daemon was not handed the signal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    first.kill9();
    let second = daemon(&url, "signals-held-b", &sagas, &[]);
    second
        .wait_for_log("took over signals left unacknowledged", SAGA_WAIT)
        .await;
    let events = saga_events(&server, "held").await;
    assert_eq!(
        events.last().unwrap().event_type,
        "saga_completed",
        "{}",
        describe(&events)
    );
    let received = the_event(&events, "signal_received", None);
    assert_eq!(received.payload["entry_id"], entry_id.as_str());
    assert!(received.payload.get("duplicate").is_none());
    let taken = the_event(&events, "step_completed", Some("approve"));
    assert_eq!(taken.payload["signal_id"], "held-1");
    assert_audit(&events, &["held".to_owned()]);
    assert_eq!(
        pending_count(&mut conn, "saga:signals", "sagaflow").await,
        0
    );
}
