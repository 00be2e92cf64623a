//! Every saga is one trace: the spans a daemon and the simulated handlers
//! export over OTLP (gRPC and HTTP/protobuf) to a receiver run by the test.

mod common;

use common::otlp::{OtlpReceiver, Protocol, ReceivedSpan};
use common::processes::{Child, LEASE_TTL};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const CONSUMER: i32 = 5;
const PRODUCER: i32 = 4;
const OK: i32 = 1;
const ERROR: i32 = 2;

struct System {
    server: RedisServer,
    receiver: OtlpReceiver,
    daemon: Child,
    _handlers: Child,
}

impl System {
    async fn start(protocol: Protocol, handler_flags: &[&str]) -> Self {
        let receiver = OtlpReceiver::start(protocol).await;
        let server = RedisServer::start();
        let env = receiver.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let daemon =
            Child::daemon_with(&server.url(), "traced-1", &["--lease-ttl", LEASE_TTL], &env);
        let url = server.url();
        let mut args = vec!["handlers", "--redis-url", &url];
        args.extend(handler_flags);
        let handlers = Child::spawn("handlers", &args, &env);
        Self {
            server,
            receiver,
            daemon,
            _handlers: handlers,
        }
    }

    /// Starts a mission under the caller's span.
    async fn start_mission(&self, correlation_id: &str) {
        let mut conn = self.server.conn().await;
        let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
        xadd(
            &mut conn,
            "mission:start",
            &[
                ("correlation_id", correlation_id),
                ("payload", r#"{"area":"hall-a","robots":2}"#),
                ("traceparent", &traceparent),
            ],
        )
        .await;
    }

    /// The traceparent of every command sent to `saga_id`, by request id.
    async fn command_traceparents(&self, saga_id: &str) -> BTreeMap<String, String> {
        let mut conn = self.server.conn().await;
        let mut out = BTreeMap::new();
        for stream in [
            "resources:commands",
            "routing:commands",
            "exploration:commands",
            "mapping:commands",
        ] {
            for cmd in xrange(&mut conn, stream).await {
                if cmd["saga_id"] == saga_id {
                    out.insert(cmd["request_id"].clone(), cmd["traceparent"].clone());
                }
            }
        }
        out
    }

    /// The traceparents of the handlers' replies for `saga_id`, by status.
    async fn reply_traceparents(&self, saga_id: &str) -> Vec<(String, String)> {
        let mut conn = self.server.conn().await;
        let streams: Vec<String> = must(
            "the reply streams",
            words("KEYS saga:replies:*").query_async(&mut conn),
        )
        .await;
        let mut out = Vec::new();
        for stream in streams {
            for reply in xrange(&mut conn, &stream).await {
                if reply.get("saga_id").is_some_and(|s| s == saga_id) {
                    out.push((reply["status"].clone(), reply["traceparent"].clone()));
                }
            }
        }
        out
    }
}

fn parent_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(2).unwrap_or("")
}

fn named<'a>(spans: &'a [ReceivedSpan], prefix: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .collect()
}

/// What a span of an attempt is about: its step, or its branch as
/// `step[branch]` (from `saga.step` and `saga.branch`).
fn unit_of(span: &ReceivedSpan) -> String {
    match span.attr("saga.branch") {
        "" => span.attr("saga.step").to_owned(),
        branch => format!("{}[{branch}]", span.attr("saga.step")),
    }
}

fn assert_unique(spans: &[ReceivedSpan]) {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        spans.len(),
        "a span exported twice:\n{}",
        common::otlp::describe(spans)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_saga_is_one_trace_over_grpc() {
    let system = System::start(Protocol::Grpc, &[]).await;
    system.start_mission("traced").await;
    let events = saga_events(&system.server, "traced").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
    let saga_id = events[0].saga_id.clone();

    // The root, a span per command sent (a step's, or a branch's: one
    // per robot of the exploration), a span per handled command, a span
    // per robot's lock taken.
    let expected = 1 + 2 * mission_commands(2) + 2;
    let spans = system
        .receiver
        .wait_for(SAGA_WAIT, |s| {
            s.iter().filter(|s| s.trace_id == CALLER_TRACE).count() >= expected
        })
        .await;
    assert!(
        spans.iter().all(|s| s.trace_id == CALLER_TRACE),
        "one trace"
    );
    assert_eq!(spans.len(), expected, "{}", common::otlp::describe(&spans));
    assert_unique(&spans);

    let roots = named(&spans, "saga ");
    assert_eq!(roots.len(), 1);
    let root = roots[0];
    assert_eq!(root.name, "saga mission_start");
    assert_eq!(
        root.parent_span_id, CALLER_SPAN,
        "the caller's span is the saga's parent"
    );
    assert_eq!((root.kind, root.status_code), (CONSUMER, OK));
    assert_eq!(root.service, "sagaflow");
    assert_eq!(root.attr("saga.name"), "mission_start");
    assert_eq!(root.attr("saga.id"), saga_id);
    assert_eq!(root.attr("saga.correlation_id"), "traced");
    assert_eq!(root.attr("saga.outcome"), "completed");

    // The time each robot's lock took to take, under the saga's span.
    let locks = named(&spans, "lock ");
    let names: BTreeSet<&str> = locks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["lock robot:hall-a/robot-1", "lock robot:hall-a/robot-2"])
    );
    for lock in &locks {
        assert_eq!(lock.parent_span_id, root.span_id);
        assert_eq!(lock.attr("saga.step"), "perform_exploration");
        assert_eq!(lock.name, format!("lock {}", lock.attr("saga.lock")));
    }

    let traceparents = system.command_traceparents(&saga_id).await;
    let steps = named(&spans, "step ");
    assert_eq!(
        steps
            .iter()
            .map(|s| s.attr("saga.step"))
            .collect::<BTreeSet<_>>(),
        MISSION_STEPS.into_iter().collect::<BTreeSet<_>>()
    );
    // A branch's span is named after it and says which it is.
    let units: BTreeSet<String> = steps.iter().map(|s| unit_of(s)).collect();
    assert_eq!(units, mission_units(2).into_iter().collect());
    for step in &steps {
        assert_eq!(step.name, format!("step {}", unit_of(step)));
        assert_eq!(step.parent_span_id, root.span_id, "{}", step.name);
        assert_eq!(
            (step.kind, step.status_code),
            (PRODUCER, 0),
            "{}",
            step.name
        );
        assert_eq!(step.attr("saga.attempt"), "1");
        assert_eq!(step.attr("saga.command.kind"), "action");
        assert_eq!(step.attr("messaging.system"), "redis");
        assert!(step
            .attr("messaging.destination.name")
            .ends_with(":commands"));
        assert_eq!(step.attr("messaging.operation"), "publish");
        // The command's traceparent names this span as its parent.
        let sent = &traceparents[step.attr("saga.request_id")];
        assert_eq!(parent_id(sent), step.span_id, "{}", step.name);
        assert_eq!(
            step.events.iter().filter(|(n, _)| n == "progress").count(),
            1
        );
        assert!(
            root.start_unix_nano <= step.start_unix_nano
                && step.end_unix_nano <= root.end_unix_nano
        );
    }

    // The handlers' spans hang under the steps' and their replies carry them.
    let handled = named(&spans, "process ");
    assert_eq!(handled.len(), mission_commands(2));
    let replies = system.reply_traceparents(&saga_id).await;
    for h in &handled {
        let step = steps
            .iter()
            .find(|s| s.span_id == h.parent_span_id)
            .unwrap_or_else(|| panic!("{} has no step parent", h.name));
        assert_eq!(h.service, "sagaflow-handlers");
        assert_eq!(h.kind, CONSUMER);
        assert_eq!(h.attr("saga.step"), step.attr("saga.step"));
        assert_eq!(h.attr("messaging.operation"), "process");
        assert!(
            replies
                .iter()
                .any(|(status, tp)| status == "completed" && parent_id(tp) == h.span_id),
            "a completed reply carries the span of {}",
            h.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_saga_marks_its_errors_over_http() {
    let system = System::start(Protocol::HttpProtobuf, &["--fail-step", "integrate_maps"]).await;
    system.start_mission("unwound").await;
    let events = saga_events(&system.server, "unwound").await;
    assert_eq!(events.last().unwrap().event_type, "saga_compensated");

    // Root, a span per command (each robot's exploration its own), per
    // compensation (each robot's undoing its own), and per handled command.
    let undone = mission_undone(2);
    let expected = 1 + 2 * (mission_commands(2) + undone.len()) + 2;
    let spans = system
        .receiver
        .wait_for(SAGA_WAIT, |s| s.len() >= expected)
        .await;
    assert_eq!(spans.len(), expected, "{}", common::otlp::describe(&spans));
    assert_unique(&spans);
    let root = named(&spans, "saga ")[0];
    assert_eq!(root.status_code, ERROR);
    assert!(
        root.status_message.contains("integrate_maps"),
        "{}",
        root.status_message
    );
    assert_eq!(root.attr("saga.outcome"), "compensated");

    let failed = named(&spans, "step integrate_maps")[0];
    assert_eq!(failed.status_code, ERROR);
    assert_eq!(failed.attr("saga.outcome"), "failed");
    let compensations = named(&spans, "compensate ");
    assert_eq!(
        compensations
            .iter()
            .map(|s| s.attr("saga.step"))
            .collect::<BTreeSet<_>>(),
        ["allocate_resources", "perform_exploration", "plan_route"]
            .into_iter()
            .collect()
    );
    let units: BTreeSet<String> = compensations.iter().map(|s| unit_of(s)).collect();
    assert_eq!(units, undone.into_iter().collect());
    for c in &compensations {
        assert_eq!(c.name, format!("compensate {}", unit_of(c)));
        assert_eq!(c.parent_span_id, root.span_id);
        assert_eq!(c.attr("saga.command.kind"), "compensation");
        assert!(
            c.start_unix_nano >= failed.end_unix_nano,
            "compensations come after the failure"
        );
    }
    let failed_handling = spans
        .iter()
        .find(|s| s.parent_span_id == failed.span_id)
        .expect("the failing handler's span");
    assert_eq!(failed_handling.status_code, ERROR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_resumed_after_a_kill_keeps_its_spans() {
    let mut system = System::start(Protocol::Grpc, &["--work-ms", "1500"]).await;
    system.start_mission("resumed").await;
    let mut conn = system.server.conn().await;
    // Killed while plan_route is under way.
    let events = wait_for_events(&system.server, SAGA_WAIT, |events| {
        events
            .iter()
            .any(|e| e.event_type == "step_started" && e.step.as_deref() == Some("plan_route"))
    })
    .await;
    let saga_id = events[0].saga_id.clone();
    let record: String = must(
        "the saga record",
        redis::cmd("HGET")
            .arg(record_key(&saga_id))
            .arg("state")
            .query_async(&mut conn),
    )
    .await;
    let state: serde_json::Value = serde_json::from_str(&record).unwrap();
    let root_id = state["span_id"]
        .as_str()
        .expect("the root span id is kept")
        .to_owned();
    let started_ms = state["started_at_ms"].as_u64().unwrap();
    // plan_route (step 1) is acting: its exchange holds the attempt's span.
    let acting = &state["work"]["steps"]["1"]["units"][0]["acting"];
    let attempt_id = (acting["span_id"].as_str())
        .unwrap_or_else(|| panic!("plan_route acting in {record}"))
        .to_owned();
    let sent_ms = acting["sent_at_ms"].as_u64().unwrap();
    system.daemon.kill9();

    let env = system.receiver.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _taker = Child::daemon_with(
        &system.server.url(),
        "traced-2",
        &["--lease-ttl", LEASE_TTL],
        &env,
    );
    let ended = wait_for_events(&system.server, Duration::from_secs(30), |events| {
        events
            .iter()
            .any(|e| e.correlation_id == "resumed" && e.is_terminal())
    })
    .await;
    assert_eq!(ended.last().unwrap().event_type, "saga_completed");

    let spans = system
        .receiver
        .wait_for(SAGA_WAIT, |s| {
            s.iter().any(|s| s.span_id == root_id) && named(s, "step integrate_maps").len() == 1
        })
        .await;
    assert_unique(&spans);
    let root = spans.iter().find(|s| s.span_id == root_id).unwrap();
    assert_eq!(
        root.start_unix_nano / 1_000_000,
        started_ms,
        "the root keeps its start"
    );
    assert_eq!(root.status_code, OK);
    let interrupted: Vec<_> = spans.iter().filter(|s| s.span_id == attempt_id).collect();
    assert_eq!(interrupted.len(), 1, "the interrupted attempt's span, once");
    assert_eq!(interrupted[0].name, "step plan_route");
    assert_eq!(interrupted[0].parent_span_id, root_id);
    assert_eq!(interrupted[0].start_unix_nano / 1_000_000, sent_ms);
    assert!(named(&spans, "step ")
        .iter()
        .all(|s| s.parent_span_id == root_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_one_warning() {
    let server = RedisServer::start();
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let mut daemon =
        Child::daemon_with(&server.url(), "unheard", &["--lease-ttl", LEASE_TTL], &env);
    let _handlers = Child::handlers(&server.url(), &[]);
    let mut conn = server.conn().await;
    let ids = start_missions(&mut conn, "unheard", 5).await;
    for id in &ids {
        let events = saga_events(&server, id).await;
        assert_eq!(events.last().unwrap().event_type, "saga_completed");
    }
    // Several batches failed meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.term();
    daemon.wait_exit(STOP_WAIT).await.expect("a prompt stop");
    let log = daemon.stderr();
    assert_eq!(
        log.matches("cannot export spans").count(),
        1,
        "one warning:\n{log}"
    );
    assert!(
        !log.contains("opentelemetry"),
        "no noise from the SDK:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_flushed_on_a_graceful_stop() {
    let receiver = OtlpReceiver::start(Protocol::HttpProtobuf).await;
    let server = RedisServer::start();
    let mut env = receiver.env();
    // Batches would wait a minute: only the stop sends them.
    env.retain(|(k, _)| *k != "OTEL_BSP_SCHEDULE_DELAY");
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "60000".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon =
        Child::daemon_with(&server.url(), "flushed", &["--lease-ttl", LEASE_TTL], &env);
    let _handlers = Child::handlers(&server.url(), &[]);
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "flushed",
        &serde_json::json!({"area": "a", "robots": 1}),
    )
    .await;
    saga_events(&server, "flushed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans().is_empty(), "nothing sent before the stop");
    daemon.term();
    daemon.wait_exit(STOP_WAIT).await.expect("a prompt stop");
    let spans = receiver
        .wait_for(STOP_WAIT, |s| s.len() > mission_commands(1))
        .await;
    assert_eq!(named(&spans, "saga ").len(), 1);
    assert_eq!(named(&spans, "step ").len(), mission_commands(1));
}

/// A saga started through the HTTP API: its `X-Request-ID` is the saga's
/// correlation id on its span and on the handlers' spans, and its
/// `traceparent` makes the saga a child of the caller's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_start_joins_the_callers_trace_under_its_request_id() {
    use common::api::{free_addr, write_token};
    let receiver = OtlpReceiver::start(Protocol::Grpc).await;
    let server = RedisServer::start();
    let (token, entry) = write_token();
    let addr = free_addr();
    let env = receiver.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon_env = env.clone();
    daemon_env.push(("SAGAFLOW_API_TOKENS", &entry));
    let url = server.url();
    let daemon = Child::daemon_with(
        &url,
        "traced-http",
        &["--lease-ttl", LEASE_TTL, "--http-addr", &addr],
        &daemon_env,
    );
    daemon.wait_started().await;
    let _handlers = Child::spawn("handlers", &["handlers", "--redis-url", &url], &env);
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/sagas/mission_start?wait=30s"))
        .bearer_auth(&token)
        .header("X-Request-ID", "http-trace-7")
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .body(r#"{"area":"hall-a","robots":2}"#)
        .send()
        .await
        .expect("the API answers");
    let status = response.status();
    assert_eq!(response.headers()["x-request-id"], "http-trace-7");
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let saga: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(saga["state"], "completed", "{saga}");
    assert_eq!(saga["trace_id"], CALLER_TRACE);

    // The root, the commands' and the handlers' spans, the robots' locks.
    let expected = 1 + 2 * mission_commands(2) + 2;
    let spans = receiver
        .wait_for(SAGA_WAIT, |s| {
            s.iter().filter(|s| s.trace_id == CALLER_TRACE).count() >= expected
        })
        .await;
    let root = named(&spans, "saga ")[0];
    assert_eq!(root.parent_span_id, CALLER_SPAN);
    assert_eq!(root.attr("saga.correlation_id"), "http-trace-7");
    let handled: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.service != "sagaflow").collect();
    assert_eq!(
        handled.len(),
        mission_commands(2),
        "{}",
        common::otlp::describe(&spans)
    );
    for span in handled {
        assert_eq!(
            span.attr("saga.correlation_id"),
            "http-trace-7",
            "{}",
            span.name
        );
    }
}

/// The time a saga was paused is a span of its own under the saga's, from
/// the pause to the resume, naming who paused it and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_is_a_span_from_pause_to_resume() {
    let system = System::start(Protocol::Grpc, &["--work-ms", "600"]).await;
    system.start_mission("paused-span").await;
    let events = wait_for_events(&system.server, SAGA_WAIT, |events| {
        events.iter().any(|e| e.event_type == "step_started")
    })
    .await;
    let saga_id = events[0].saga_id.clone();
    let url = system.server.url();
    let o = sagaflow_cli(&[
        "pause",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "inspect",
    ])
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let o = sagaflow_cli(&["resume", &saga_id, "--redis-url", &url, "--reason", "done"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events = saga_events(&system.server, "paused-span").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
    let spans = system
        .receiver
        .wait_for(SAGA_WAIT, |s| {
            !named(s, "paused").is_empty() && !named(s, "saga ").is_empty()
        })
        .await;
    let paused = named(&spans, "paused");
    assert_eq!(paused.len(), 1, "{}", common::otlp::describe(&spans));
    let root = named(&spans, "saga ")[0];
    assert_eq!(paused[0].parent_span_id, root.span_id);
    assert_eq!(paused[0].attr("saga.operator"), "ops@test");
    assert_eq!(paused[0].attr("saga.reason"), "inspect");
    let lasted = paused[0].end_unix_nano - paused[0].start_unix_nano;
    assert!(lasted >= 300_000_000, "paused for {lasted} ns");
}
