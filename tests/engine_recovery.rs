//! Restarts: a saga in flight when the daemon stops goes on when it starts
//! again, and a start its previous run had read but not acknowledged is
//! still taken. Each test runs on one Redis and on a cluster, but for the
//! one that stops Redis itself.

mod common;

use common::*;
use sagaflow::connection::Conn;
use sagaflow::handler::simulated::SimulationOptions;
use serde_json::json;
use std::time::{Duration, Instant};

on_both!(
    a_saga_awaiting_a_reply_goes_on_after_a_restart,
    a_start_read_but_not_acknowledged_before_a_crash_is_taken_after_it,
    a_saga_finishes_on_the_definition_it_started_with,
    a_start_that_keeps_failing_goes_to_the_dead_letter_stream,
    sagas_of_a_registration_lost_by_redis_are_taken_over,
);

const TWO_STEPS: &str = "\
name: resumable
trigger: mission:start
steps:
  - name: first
    stream: resume:commands
    timeout: 5s
  - name: second
    stream: resume:commands
    timeout: 5s
";

/// How long a restarted daemon may take to pick up where it stopped.
const RESUME_WAIT: Duration = Duration::from_secs(5);

async fn a_saga_awaiting_a_reply_goes_on_after_a_restart(server: Redis) {
    let daemon = start_daemon(&server, catalog(TWO_STEPS)).await;
    // Answers `first`; leaves `second` for the test to answer later.
    let handler = spawn_raw_handler(&server, &["resume:commands"], "resume", |cmd| {
        match cmd["step"].as_str() {
            "first" => complete_in_stages(cmd, &json!({"n": 1})),
            _ => vec![reply(cmd, "start", &[])],
        }
    })
    .await;
    let mut conn = server.conn().await;
    start_mission(&mut conn, "resume", &json!({})).await;
    let second_sent = |events: &[Event]| {
        let label = "step_started:second";
        events
            .iter()
            .any(|e| e.correlation_id == "resume" && e.label() == label)
    };
    wait_for_events(&server, SAGA_WAIT, second_sent).await;
    handler.stop().await;
    let settings = daemon.stop().await.settings;
    // The command as sent (the handler may not have read it yet). On a
    // cluster too: a transition's commands are relayed before its events
    // (`Transition::writes` in src/store/transition.rs).
    let sent = xrange(&mut conn, "resume:commands").await;
    let second = sent.last().expect("the second command");
    assert_eq!(second["step"], "second");

    // The same daemon again (same node id).
    let daemon = start_daemon_with(settings, catalog(TWO_STEPS)).await;
    let replies = complete_in_stages(second, &json!({"n": 2}));
    write_replies(&mut conn, &second["reply_stream"], replies).await;
    let ours = |e: &Event| e.correlation_id == "resume";
    let events = wait_for_events(&server, RESUME_WAIT, |events| {
        events.iter().any(|e| ours(e) && e.is_terminal())
    })
    .await;
    daemon.stop().await;

    let end = events.iter().find(|e| ours(e) && e.is_terminal()).unwrap();
    assert_eq!(end.event_type, "saga_completed", "\n{}", describe(&events));
    assert_eq!(
        end.payload["results"],
        json!({"first": {"n": 1}, "second": {"n": 2}})
    );
    // The attempt under way was not sent again under a new request id.
    let sent = xrange(&mut conn, "resume:commands").await;
    assert_eq!(sent.len(), 2, "{sent:#?}");
}

async fn a_start_read_but_not_acknowledged_before_a_crash_is_taken_after_it(server: Redis) {
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "pending",
        &json!({"area": "hall-a", "robots": 1}),
    )
    .await;
    // A daemon `node-x` read the start, then died before recording it.
    let create = words("XGROUP CREATE mission:start sagaflow 0 MKSTREAM");
    must("XGROUP", create.query_async::<()>(&mut conn)).await;
    let read = words("XREADGROUP GROUP sagaflow node-x COUNT 1 STREAMS mission:start >");
    must("XREADGROUP", read.query_async::<redis::Value>(&mut conn)).await;
    assert_eq!(
        pending_count(&mut conn, "mission:start", "sagaflow").await,
        1
    );

    let settings = sagaflow::config::Settings {
        node_id: "node-x".into(),
        ..test_settings(&server)
    };
    let daemon = start_daemon_with(settings, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let ours = |e: &Event| e.correlation_id == "pending";
    let events = wait_for_events(&server, RESUME_WAIT, |events| {
        events.iter().any(|e| ours(e) && e.is_terminal())
    })
    .await;
    handlers.stop().await;
    daemon.stop().await;
    let end = events.iter().find(|e| ours(e) && e.is_terminal()).unwrap();
    assert_eq!(end.event_type, "saga_completed", "\n{}", describe(&events));
    assert_eq!(
        pending_count(&mut conn, "mission:start", "sagaflow").await,
        0
    );
}

async fn a_saga_finishes_on_the_definition_it_started_with(server: Redis) {
    let daemon = start_daemon(&server, catalog(TWO_STEPS)).await;
    let handler = spawn_raw_handler(&server, &["resume:commands"], "resume", |cmd| {
        match cmd["step"].as_str() {
            "first" => complete_in_stages(cmd, &json!({"n": 1})),
            _ => vec![reply(cmd, "start", &[])],
        }
    })
    .await;
    let mut conn = server.conn().await;
    start_mission(&mut conn, "pinned", &json!({})).await;
    let second_sent = |events: &[Event]| {
        events
            .iter()
            .any(|e| e.correlation_id == "pinned" && e.label() == "step_started:second")
    };
    wait_for_events(&server, SAGA_WAIT, second_sent).await;
    handler.stop().await;
    let settings = daemon.stop().await.settings;
    let sent = xrange(&mut conn, "resume:commands").await;
    let second = sent.last().expect("the second command");
    assert_eq!(second["step"], "second");

    // The file changes: a third step appears. The running saga keeps two.
    let changed = format!("{TWO_STEPS}  - name: third\n    stream: resume:commands\n");
    let daemon = start_daemon_with(settings, catalog(&changed)).await;
    let replies = complete_in_stages(second, &json!({"n": 2}));
    write_replies(&mut conn, &second["reply_stream"], replies).await;
    let ours = |e: &Event| e.correlation_id == "pinned";
    let events = wait_for_events(&server, RESUME_WAIT, |events| {
        events.iter().any(|e| ours(e) && e.is_terminal())
    })
    .await;
    daemon.stop().await;
    let end = events.iter().find(|e| ours(e) && e.is_terminal()).unwrap();
    assert_eq!(end.event_type, "saga_completed", "\n{}", describe(&events));
    assert_eq!(
        end.payload["results"],
        json!({"first": {"n": 1}, "second": {"n": 2}})
    );
}

async fn a_start_that_keeps_failing_goes_to_the_dead_letter_stream(server: Redis) {
    let mut conn = server.conn().await;
    start_mission(&mut conn, "poison", &json!({"area": "hall-a"})).await;
    let create = words("XGROUP CREATE mission:start sagaflow 0 MKSTREAM");
    must("XGROUP", create.query_async::<()>(&mut conn)).await;
    let read = words("XREADGROUP GROUP sagaflow node-x COUNT 1 STREAMS mission:start >");
    let value: redis::Value = must("XREADGROUP", read.query_async(&mut conn)).await;
    let id = sagaflow::streams::decode_read_reply(&value)
        .pop()
        .unwrap()
        .id;
    // As if five daemons in a row had died on it.
    let claim = words(&format!(
        "XCLAIM mission:start sagaflow node-y 0 {id} RETRYCOUNT 5"
    ));
    must("XCLAIM", claim.query_async::<redis::Value>(&mut conn)).await;

    let daemon = start_daemon(&server, mission_catalog()).await;
    let deadline = Instant::now() + RESUME_WAIT;
    let dead = loop {
        let dead = xrange(&mut conn, "saga:dead-letter").await;
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    daemon.stop().await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["entry_id"], id);
    assert_eq!(dead[0]["stream"], "mission:start");
    assert!(
        dead[0]["reason"].contains("delivered 5 times"),
        "{:?}",
        dead[0]
    );
    assert!(dead[0]["fields"].contains("poison"), "{:?}", dead[0]);
    assert_eq!(
        pending_count(&mut conn, "mission:start", "sagaflow").await,
        0
    );
    let events = xrange(&mut conn, "saga:events").await;
    assert!(
        events.iter().all(|e| e["correlation_id"] != "poison"),
        "{events:#?}"
    );
}

// One Redis only: it kills and revives the server. On a cluster a master
// killed fails over to its replica instead (tests/engine_cluster.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_without_redis_says_it_is_not_ready_and_recovers() {
    let mut server = RedisServer::start();
    let token = tokio_util::sync::CancellationToken::new();
    let daemon =
        sagaflow::engine::Daemon::start(test_settings(&server), mission_catalog(), token.clone());
    let daemon = must("the daemon's start", daemon).await;
    let probe = daemon.clone();
    let running = tokio::spawn(daemon.wait());
    assert!(probe.readiness().is_ready(), "{:?}", probe.readiness());

    server.kill();
    let deadline = Instant::now() + RESUME_WAIT;
    while probe.readiness().is_ready() {
        assert!(Instant::now() < deadline, "still ready without Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let why = probe.readiness().not_ready;
    assert!(why.iter().any(|w| w.contains("Redis")), "{why:?}");

    server.revive();
    let deadline = Instant::now() + RESUME_WAIT;
    while !probe.readiness().is_ready() {
        assert!(
            Instant::now() < deadline,
            "not ready again: {:?}",
            probe.readiness()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    bounded("the stop", running).await.unwrap();
    assert_eq!(probe.readiness().not_ready, ["stopping"]);
}

/// A failover of the master that holds the leases can take back a daemon's
/// registration (as if it never registered). The daemon then finds its
/// lease lost and starts anew; its former token must still be found by the
/// takeover, or its sagas stay with an owner nobody claims.
async fn sagas_of_a_registration_lost_by_redis_are_taken_over(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let mut conn = server.conn().await;
    // No handler: the saga waits for its first reply under its first owner.
    start_mission(&mut conn, "lost-lease", &json!({"area": "a", "robots": 1})).await;
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        events.iter().any(|e| e.event_type == "step_started")
    })
    .await;
    let saga_id = events[0].saga_id.clone();
    let owner_of = |conn: &mut Conn| {
        let mut hget = redis::cmd("HGET");
        hget.arg(record_key(&saga_id)).arg("owner");
        let mut conn = conn.clone();
        async move { must::<Option<String>, _>("HGET", hget.query_async(&mut conn)).await }
    };
    let first = owner_of(&mut conn).await.expect("an owner");
    // Past the housekeeping's first registration of the owners it finds in
    // the partitions (the next is minutes away).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What a failover that lost the registration leaves.
    let keys = sagaflow::store::keys::Keys::new("saga:");
    let mut forget = redis::pipe();
    forget.cmd("ZREM").arg(keys.leases()).arg(&first).ignore();
    forget.cmd("SREM").arg(keys.owners()).arg(&first).ignore();
    must("forget the owner", forget.query_async::<()>(&mut conn)).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = owner_of(&mut conn).await;
        if now.as_deref().is_some_and(|o| o != first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the saga stayed with {first}, whose registration was lost"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
}
