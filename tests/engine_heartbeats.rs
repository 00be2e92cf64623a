//! The two clocks beside an attempt's completion timeout, against a real
//! daemon and Redis: `ack_timeout` (nobody took the command) and
//! `heartbeat_timeout` (the handler went silent), and the SDK's heartbeats
//! that keep a long handler's attempt alive.

mod common;

use common::*;
use sagaflow::handler::{Context, HandlerError, Handlers};
use sagaflow::protocol::Command;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

on_both!(
    a_long_handler_outlives_its_heartbeat_timeout_on_the_sdks_heartbeats,
    a_handler_gone_silent_is_timed_out_by_its_heartbeat_clock,
    a_command_nobody_takes_is_retried_after_its_ack_timeout,
);

/// The metrics of every daemon of this test binary (one recorder per
/// process).
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| sagaflow::telemetry::metrics::install().expect("the only recorder"))
}

/// The saga's name on `server`: the tests on one Redis and on a cluster run
/// in one process, and their metrics are told apart by it.
fn saga_name(server: &Redis) -> &'static str {
    match server.is_cluster() {
        true => "long_on_cluster",
        false => "long",
    }
}

/// Timeouts of step `explore` of saga `saga` counted under clock `timeout`.
fn timeouts_counted(saga: &str, timeout: &str) -> u64 {
    let page = metrics().render();
    let saga = format!("saga=\"{saga}\"");
    let label = format!("timeout=\"{timeout}\"");
    page.lines()
        .filter(|l| l.starts_with("sagaflow_step_timeouts_total{"))
        .filter(|l| l.contains("step=\"explore\"") && l.contains("kind=\"action\""))
        .filter(|l| l.contains(&saga) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// One step whose completion timeout is far away, so that only the other
/// clocks can end an attempt within the test's wait.
fn long_step(server: &Redis, clocks: &str, attempts: u32) -> String {
    let name = saga_name(server);
    format!(
        "\
name: {name}
trigger: long:start
steps:
  - name: explore
    stream: exploration:commands
    timeout: 1h
{clocks}
    retry: {{ max_attempts: {attempts}, backoff: fixed, initial_delay: 10ms }}
    compensation: {{ command: abort_exploration }}
"
    )
}

/// A daemon whose metrics are recorded, with the saga's names as labels.
async fn start_recorded(server: &Redis, yaml: &str) -> Running<Ran> {
    metrics();
    let catalog = catalog(yaml);
    let settings = test_settings(server);
    sagaflow::telemetry::metrics::register(&catalog, &settings);
    start_daemon_with(settings, catalog).await
}

async fn start_long(conn: &mut impl redis::aio::ConnectionLike, correlation_id: &str) {
    let fields = [("correlation_id", correlation_id), ("payload", "{}")];
    xadd(conn, "long:start", &fields).await;
}

async fn a_long_handler_outlives_its_heartbeat_timeout_on_the_sdks_heartbeats(server: Redis) {
    let yaml = long_step(&server, "    heartbeat_timeout: 600ms", 1);
    let daemon = start_daemon(&server, catalog(&yaml)).await;
    // Works five times the heartbeat timeout, reporting nothing itself.
    let handlers = Handlers::new(server.client(), "explorers")
        .redis_mode(server.mode())
        .on(
            "exploration:commands",
            "explore",
            |cmd: Command, _ctx: Context| async move {
                assert_eq!(cmd.heartbeat_timeout_ms, Some(600));
                tokio::time::sleep(Duration::from_millis(3_000)).await;
                Ok::<_, HandlerError>(json!({"explored": true}))
            },
        )
        .on(
            "exploration:commands",
            "abort_exploration",
            |_cmd: Command, _ctx: Context| async move { Ok::<_, HandlerError>(json!({})) },
        );
    let stop = CancellationToken::new();
    let running = tokio::spawn(handlers.run(stop.clone()));
    let mut conn = server.conn().await;
    start_long(&mut conn, "long-alive").await;

    let events = saga_events(&server, "long-alive").await;
    assert_eq!(
        labels(&events),
        [
            "saga_started",
            "step_started:explore",
            "step_completed:explore",
            "saga_completed"
        ],
        "\n{}",
        describe(&events)
    );
    let started = the_event(&events, "step_started", Some("explore"));
    assert_eq!(started.payload["heartbeat_timeout_ms"], 600);
    // The command carried its clock, and the heartbeats went to the reply
    // stream: at least one every 600 ms over 3 s.
    let commands = xrange(&mut conn, "exploration:commands").await;
    assert_eq!(commands[0]["heartbeat_timeout_ms"], "600");
    assert!(!commands[0].contains_key("ack_timeout_ms"));
    let reply_stream = &commands[0]["reply_stream"];
    let replies = xrange(&mut conn, reply_stream).await;
    let heartbeats = replies
        .iter()
        .filter(|r| r.get("status").map(String::as_str) == Some("heartbeat"))
        .count();
    assert!(heartbeats >= 5, "{heartbeats} heartbeats in {replies:?}");
    stop.cancel();
    must("the handlers' stop", running).await.unwrap();
    daemon.stop().await;
}

async fn a_handler_gone_silent_is_timed_out_by_its_heartbeat_clock(server: Redis) {
    let yaml = long_step(&server, "    heartbeat_timeout: 500ms", 1);
    let daemon = start_recorded(&server, &yaml).await;
    // Takes the command, says `start`, then nothing: a handler that died.
    let handler = spawn_raw_handler(&server, &["exploration:commands"], "g", |cmd| {
        match cmd["event_type"].as_str() {
            "explore" => vec![reply(cmd, "start", &[])],
            _ => complete_in_stages(cmd, &json!({})),
        }
    })
    .await;
    let mut conn = server.conn().await;
    start_long(&mut conn, "long-silent").await;

    let events = saga_events(&server, "long-silent").await;
    assert_eq!(
        labels(&events),
        [
            "saga_started",
            "step_started:explore",
            "step_timed_out:explore",
            "compensation_started:explore",
            "compensation_progress:explore",
            "compensation_completed:explore",
            "saga_compensated"
        ],
        "\n{}",
        describe(&events)
    );
    let timed_out = the_event(&events, "step_timed_out", Some("explore"));
    assert_eq!(timed_out.payload["timeout"], "heartbeat");
    let end = events.last().unwrap();
    let reason = end.payload["reason"].as_str().unwrap();
    assert!(reason.contains("heartbeat_timeout of 500 ms"), "{reason}");
    assert!(
        timeouts_counted(saga_name(&server), "heartbeat") >= 1,
        "{}",
        metrics().render()
    );
    handler.stop().await;
    daemon.stop().await;
}

async fn a_command_nobody_takes_is_retried_after_its_ack_timeout(server: Redis) {
    let yaml = long_step(&server, "    ack_timeout: 400ms", 2);
    let daemon = start_recorded(&server, &yaml).await;
    // The first attempt falls on deaf ears; the second is answered.
    let handler = spawn_raw_handler(&server, &["exploration:commands"], "g", |cmd| {
        if cmd["attempt"] == "1" {
            Vec::new()
        } else {
            complete_in_stages(cmd, &json!({"explored": true}))
        }
    })
    .await;
    let mut conn = server.conn().await;
    start_long(&mut conn, "long-deaf").await;

    let events = saga_events(&server, "long-deaf").await;
    assert_eq!(
        labels(&events),
        [
            "saga_started",
            "step_started:explore",
            "step_timed_out:explore",
            "step_retrying:explore",
            "step_started:explore",
            "step_progress:explore",
            "step_completed:explore",
            "saga_completed"
        ],
        "\n{}",
        describe(&events)
    );
    let timed_out = the_event(&events, "step_timed_out", Some("explore"));
    assert_eq!(timed_out.payload["timeout"], "ack");
    assert!(
        timeouts_counted(saga_name(&server), "ack") >= 1,
        "{}",
        metrics().render()
    );
    let commands = xrange(&mut conn, "exploration:commands").await;
    assert_eq!(commands[0]["ack_timeout_ms"], "400");
    assert_ne!(commands[0]["request_id"], commands[1]["request_id"]);
    handler.stop().await;
    daemon.stop().await;
}
