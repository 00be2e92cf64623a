//! The handler SDK against a real redis-server: the test plays the daemon by
//! hand, with raw stream commands, and checks what the handlers reply.

mod common;

use common::{command_to, now_ms, run_handlers, start_simulated, RedisServer};
use sagaflow::handler::{simulated_handlers, Context, HandlerError, Handlers, SimulationOptions};
use sagaflow::protocol::{Command, CommandKind, RequestId, TraceParent};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(5);
const STREAM: &str = "resources:commands";

fn command(event_type: &str, payload: Value) -> Command {
    // A reply stream of its own, in the daemon's shared form.
    let reply_stream = format!("saga:replies:test-{}.0a1b2c3d", RequestId::generate());
    command_to(&reply_stream, event_type, payload)
}

/// The daemon's side: a plain connection for non-blocking commands.
struct Daemon {
    conn: redis::aio::MultiplexedConnection,
}

impl Daemon {
    async fn new(server: &RedisServer) -> Self {
        let conn = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Self { conn }
    }

    async fn send(&mut self, cmd: &Command) {
        self.xadd(STREAM, &cmd.to_fields()).await;
    }

    async fn xadd<K: redis::ToRedisArgs, V: redis::ToRedisArgs>(
        &mut self,
        stream: &str,
        fields: &[(K, V)],
    ) {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(stream).arg("*");
        for (k, v) in fields {
            xadd.arg(k).arg(v);
        }
        xadd.query_async::<String>(&mut self.conn).await.unwrap();
    }

    async fn replies(&mut self, stream: &str) -> Vec<HashMap<String, String>> {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn)
            .await
            .unwrap();
        entries.into_iter().map(|(_, fields)| fields).collect()
    }

    /// The replies on `stream` once `count` final ones are there.
    async fn until_final(&mut self, stream: &str, count: usize) -> Vec<HashMap<String, String>> {
        let started = Instant::now();
        loop {
            let replies = self.replies(stream).await;
            let finals = replies
                .iter()
                .filter(|r| matches!(r["status"].as_str(), "completed" | "failed"))
                .count();
            if finals >= count {
                return replies;
            }
            assert!(
                started.elapsed() < WAIT,
                "no final reply on {stream}: {replies:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many entries of `stream` the group has read but not acknowledged.
    async fn pending(&mut self, stream: &str, group: &str) -> u64 {
        let summary: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(&mut self.conn)
            .await
            .unwrap();
        summary.0
    }

    /// Waits until the group has nothing pending.
    async fn until_acked(&mut self, group: &str) {
        let started = Instant::now();
        while self.pending(STREAM, group).await != 0 {
            assert!(started.elapsed() < WAIT, "entries left pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn statuses(replies: &[HashMap<String, String>]) -> Vec<&str> {
    replies.iter().map(|r| r["status"].as_str()).collect()
}

fn result(reply: &HashMap<String, String>) -> Value {
    serde_json::from_str(&reply["result"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_in_stages_with_ids_copied_and_a_child_span() {
    let server = RedisServer::start();
    let mut daemon = Daemon::new(&server).await;
    let running = start_simulated(&server, SimulationOptions::default());

    let cmd = command(
        "allocate_resources",
        json!({"area": "hall-a", "robots": "3"}),
    );
    daemon.send(&cmd).await;
    let replies = daemon.until_final(&cmd.reply_stream, 1).await;

    assert_eq!(statuses(&replies), ["start", "progress", "completed"]);
    assert_eq!(replies[1]["progress"], "50");
    assert_eq!(
        result(&replies[2]),
        json!({"robot_ids": ["robot-1", "robot-2", "robot-3"], "area": "hall-a"})
    );
    for reply in &replies {
        assert_eq!(reply["correlation_id"], cmd.correlation_id.as_str());
        assert_eq!(reply["saga_id"], cmd.saga_id.as_str());
        assert_eq!(reply["request_id"], cmd.request_id.as_str());
        let span = TraceParent::parse(&reply["traceparent"]).expect("valid W3C traceparent");
        assert_eq!(span.trace_id, cmd.traceparent.trace_id);
        assert_ne!(span.span_id, cmd.traceparent.span_id);
        assert_eq!(reply["parent_span_id"], span.span_id.as_str());
        assert!(reply["timestamp"].parse::<u64>().unwrap() >= cmd.timestamp);
    }
    daemon.until_acked("sagaflow-sim").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_is_answered_from_the_record() {
    let server = RedisServer::start();
    let mut daemon = Daemon::new(&server).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let handlers = Handlers::new(server.client(), "counting").on(
        STREAM,
        "allocate_resources",
        move |_cmd: Command, ctx: Context| {
            let counter = counter.clone();
            async move {
                let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
                ctx.progress(50.0).await;
                Ok::<_, HandlerError>(json!({"robot_ids": [format!("robot-{run}")]}))
            }
        },
    );
    let running = run_handlers(handlers);

    let cmd = command("allocate_resources", json!({}));
    daemon.send(&cmd).await;
    let first = daemon.until_final(&cmd.reply_stream, 1).await;
    daemon.until_acked("counting").await;
    daemon.send(&cmd).await;
    let both = daemon.until_final(&cmd.reply_stream, 2).await;

    // A redelivered command gets `start` again, then the recorded reply.
    assert_eq!(
        statuses(&both),
        ["start", "progress", "completed", "start", "completed"]
    );
    assert_eq!(both[4], first[2], "the recorded final reply, unchanged");
    assert_eq!(result(&both[4]), json!({"robot_ids": ["robot-1"]}));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    daemon.until_acked("counting").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_failure_is_not_retryable() {
    let server = RedisServer::start();
    let mut daemon = Daemon::new(&server).await;
    let opts = SimulationOptions {
        fail_step: Some("allocate_resources".into()),
        ..Default::default()
    };
    let running = start_simulated(&server, opts);

    let cmd = command("allocate_resources", json!({"area": "hall-a"}));
    daemon.send(&cmd).await;
    let replies = daemon.until_final(&cmd.reply_stream, 1).await;
    let last = replies.last().unwrap();
    assert_eq!(last["status"], "failed");
    assert_eq!(last["retryable"], "false");
    assert_eq!(last["error"], "simulated failure of allocate_resources");

    // The same step as a compensation is not affected.
    let mut undo = command("release_resources", json!({"robot_ids": ["robot-1"]}));
    undo.step = "allocate_resources".into();
    undo.kind = CommandKind::Compensation;
    daemon.send(&undo).await;
    let replies = daemon.until_final(&undo.reply_stream, 1).await;
    assert_eq!(
        result(replies.last().unwrap()),
        json!({"released": ["robot-1"]})
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_command_gets_no_reply() {
    let server = RedisServer::start();
    let mut daemon = Daemon::new(&server).await;
    let running = start_simulated(&server, SimulationOptions::default());

    let mut late = command("allocate_resources", json!({}));
    late.deadline_ms = now_ms() - 1_000;
    daemon.send(&late).await;
    // A command sent after it is answered, so the late one was seen.
    let next = command("allocate_resources", json!({}));
    daemon.send(&next).await;
    daemon.until_final(&next.reply_stream, 1).await;
    daemon.until_acked("sagaflow-sim").await;
    assert!(daemon.replies(&late.reply_stream).await.is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_stream_stops_nothing() {
    let server = RedisServer::start();
    let mut daemon = Daemon::new(&server).await;
    let running = start_simulated(&server, SimulationOptions::default());

    daemon.xadd(STREAM, &[("hello", "world")]).await;
    daemon
        .xadd(
            STREAM,
            &[("event_type", "allocate_resources"), ("payload", "{oops")],
        )
        .await;
    daemon
        .xadd(
            STREAM,
            &[
                (&b"\xff\xfe"[..], &b"x"[..]),
                (&b"event_type"[..], &b"\xc3\x28"[..]),
            ],
        )
        .await;
    let mut bad_json = command("allocate_resources", json!({})).to_fields();
    bad_json.retain(|(k, _)| *k != "payload");
    bad_json.push(("payload", "{not json".into()));
    daemon.xadd(STREAM, &bad_json).await;
    // Someone else's command on a shared stream: not answered.
    let other = command("inspect_robot", json!({}));
    daemon.send(&other).await;

    let cmd = command("allocate_resources", json!({"robots": 1}));
    daemon.send(&cmd).await;
    let replies = daemon.until_final(&cmd.reply_stream, 1).await;
    assert_eq!(
        result(replies.last().unwrap())["robot_ids"],
        json!(["robot-1"])
    );
    daemon.until_acked("sagaflow-sim").await;
    assert!(daemon.replies(&other.reply_stream).await.is_empty());
    // What is no command is kept for a look in the dead-letter stream;
    // someone else's command is not.
    let dead = daemon.replies("handler:{sagaflow-sim}:dead-letter").await;
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str()).collect();
    let count = |needle: &str| reasons.iter().filter(|r| r.contains(needle)).count();
    assert_eq!(reasons.len(), 4, "{dead:?}");
    assert_eq!(
        count("malformed command: field `traceparent` is missing"),
        2
    );
    assert_eq!(count("malformed entry: a field name is not valid UTF-8"), 1);
    assert_eq!(count("malformed command: field `payload` is not JSON"), 1);
    let hello = dead
        .iter()
        .filter(|d| d.get("command.hello").map(String::as_str) == Some("world"));
    assert_eq!(hello.count(), 1, "{dead:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_step_stays_pending_and_a_new_instance_takes_it_over() {
    let server = RedisServer::start();
    let mut daemon = Daemon::new(&server).await;
    let opts = SimulationOptions {
        hang_step: Some("plan_route".into()),
        ..Default::default()
    };
    let running = start_simulated(&server, opts);

    let mut cmd = command("plan_route", json!({"robot_ids": ["robot-1"], "area": "a"}));
    cmd.step = "plan_route".into();
    daemon.xadd("routing:commands", &cmd.to_fields()).await;
    let started = Instant::now();
    while daemon.replies(&cmd.reply_stream).await.is_empty() {
        assert!(started.elapsed() < WAIT, "no start reply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        statuses(&daemon.replies(&cmd.reply_stream).await),
        ["start"]
    );
    running.stop().await;
    let pending = daemon.pending("routing:commands", "sagaflow-sim").await;
    assert_eq!(pending, 1, "a hung command is not acknowledged");

    // A healthy instance of the same group takes it over at start-up.
    let healthy = simulated_handlers(server.client(), Default::default());
    let running = run_handlers(healthy.reclaim_idle(Duration::ZERO));
    let replies = daemon.until_final(&cmd.reply_stream, 1).await;
    let routes = result(replies.last().unwrap())["routes"].clone();
    assert_eq!(routes[0]["robot_id"], "robot-1");
    assert_eq!(routes[0]["waypoints"].as_array().unwrap().len(), 4);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_before_the_handlers_started_are_handled() {
    let server = RedisServer::start();
    let mut daemon = Daemon::new(&server).await;
    let cmd = command("allocate_resources", json!({}));
    daemon.send(&cmd).await;
    let running = start_simulated(&server, SimulationOptions::default());
    let replies = daemon.until_final(&cmd.reply_stream, 1).await;
    assert_eq!(statuses(&replies), ["start", "progress", "completed"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_outlive_a_redis_restart() {
    let mut server = RedisServer::start();
    let running = start_simulated(&server, SimulationOptions::default());
    let mut daemon = Daemon::new(&server).await;
    let cmd = command("allocate_resources", json!({}));
    daemon.send(&cmd).await;
    daemon.until_final(&cmd.reply_stream, 1).await;

    // The new server is empty: the group is made again on the next read.
    server.restart();
    let mut daemon = Daemon::new(&server).await;
    let cmd = command("allocate_resources", json!({"robots": 3}));
    daemon.send(&cmd).await;
    let replies = daemon.until_final(&cmd.reply_stream, 1).await;
    assert_eq!(statuses(&replies), ["start", "progress", "completed"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_command() {
    let server = RedisServer::start();
    let mut daemon = Daemon::new(&server).await;
    let handlers = Handlers::new(server.client(), "panicky").on(
        STREAM,
        "allocate_resources",
        |cmd: Command, _ctx: Context| async move {
            let robots = cmd.payload.get("robots").cloned();
            Ok::<_, HandlerError>(robots.expect("out of robots"))
        },
    );
    let running = run_handlers(handlers);
    let cmd = command("allocate_resources", json!({}));
    daemon.send(&cmd).await;
    let replies = daemon.until_final(&cmd.reply_stream, 1).await;
    let last = replies.last().unwrap();
    assert_eq!(
        (last["status"].as_str(), last["retryable"].as_str()),
        ("failed", "false")
    );
    assert!(last["error"].contains("panicked"), "{last:?}");
    daemon.until_acked("panicky").await;
    running.stop().await;
}
