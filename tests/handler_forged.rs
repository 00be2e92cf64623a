//! Commands that are not what they claim to be, against the handler SDK on
//! a real redis-server: a `reply_stream` naming a key that is no reply
//! stream (a sorted set of the daemon's, a trigger stream), reply streams
//! of the wrong type, and a dead-letter stream that cannot be written. None
//! of them may be written to, and none may hold up a valid command.

mod common;

use common::{command_to, must, pending_count, run_handlers, words, xrange, RedisServer};
use redis::aio::MultiplexedConnection;
use sagaflow::handler::{
    simulated_handlers, Context, HandlerError, Handlers, RunError, SimulationOptions,
};
use sagaflow::protocol::{Command, RequestId};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The longest any wait of these tests may take.
const WAIT: Duration = Duration::from_secs(10);
const STREAM: &str = "resources:commands";
const SIM_GROUP: &str = "sagaflow-sim";
/// A reply stream in the daemon's shared form.
const REPLIES: &str = "saga:replies:node-1.0a1b2c3d";

fn command(reply_stream: &str) -> Command {
    command_to(reply_stream, "allocate_resources", json!({"robots": 1}))
}

fn dead_letter_key(group: &str) -> String {
    format!("handler:{{{group}}}:dead-letter")
}

/// Writes every command to `stream` in one round trip.
async fn send_all(conn: &mut MultiplexedConnection, stream: &str, commands: &[Command]) {
    let mut pipe = redis::pipe();
    for cmd in commands {
        pipe.cmd("XADD").arg(stream).arg("*").arg(cmd.to_fields());
    }
    let _: Vec<String> = must("XADD the commands", pipe.query_async(conn)).await;
}

/// The final reply on `stream`, waited for at most [`WAIT`].
async fn final_reply(conn: &mut MultiplexedConnection, stream: &str) -> common::Fields {
    let started = Instant::now();
    loop {
        let replies = xrange(conn, stream).await;
        if let Some(last) = replies
            .iter()
            .find(|r| matches!(r["status"].as_str(), "completed" | "failed"))
        {
            return last.clone();
        }
        assert!(
            started.elapsed() < WAIT,
            "no final reply on {stream} within {WAIT:?}: {replies:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_no_pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) {
    let started = Instant::now();
    loop {
        let pending = pending_count(conn, stream, group).await;
        if pending == 0 {
            return;
        }
        assert!(started.elapsed() < WAIT, "{pending} entries left pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn xlen(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    must("XLEN", words(&format!("XLEN {key}")).query_async(conn)).await
}

async fn key_type(conn: &mut MultiplexedConnection, key: &str) -> String {
    let mut cmd = redis::cmd("TYPE");
    cmd.arg(key);
    must("TYPE", cmd.query_async(conn)).await
}

/// The daemons' leases, as the daemon keeps them: a sorted set.
async fn leases(conn: &mut MultiplexedConnection) {
    let add = words("ZADD saga:{leases} 4102444800000 owner-1");
    must::<i64, _>("ZADD", add.query_async(conn)).await;
}

async fn assert_leases_untouched(conn: &mut MultiplexedConnection) {
    assert_eq!(key_type(conn, "saga:{leases}").await, "zset");
    let members: Vec<String> = must(
        "ZRANGE",
        words("ZRANGE saga:{leases} 0 -1").query_async(conn),
    )
    .await;
    assert_eq!(members, ["owner-1"]);
}

/// 1024 forged commands (a whole `max_in_flight` of them) whose reply
/// stream is the daemon's lease set, more naming the trigger stream or
/// other keys outside the reply streams, then valid ones: the valid ones are
/// answered at once, nothing is written to the forged keys, and the forged
/// commands end up acknowledged in the group's dead-letter stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_reply_streams_are_refused_and_hold_up_nothing() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    leases(&mut conn).await;
    let long = format!("{REPLIES}{}", "x".repeat(300));
    let other_request = format!("{REPLIES}:{}", RequestId::generate());
    let odd = [
        "mission:start",
        "other:replies:node-1.0a1b2c3d",
        "saga:replies:",
        "saga:replies:node-1",
        "saga:replies:node 1.0a1b2c3d",
        "saga:replies:node-1.0a1b\n2c3d",
        long.as_str(),
        other_request.as_str(),
    ];
    let mut forged: Vec<Command> = (0..1024).map(|_| command("saga:{leases}")).collect();
    forged.extend(odd.iter().map(|stream| command(stream)));
    send_all(&mut conn, STREAM, &forged).await;

    let handlers = simulated_handlers(server.client(), SimulationOptions::default());
    let stats = handlers.stats();
    let running = run_handlers(handlers);
    let shared = command(REPLIES);
    let mut own = command("");
    own.reply_stream = format!("{REPLIES}:{}", own.request_id);
    send_all(&mut conn, STREAM, &[shared.clone(), own.clone()]).await;

    for cmd in [&shared, &own] {
        let reply = final_reply(&mut conn, &cmd.reply_stream).await;
        assert_eq!(reply["status"], "completed", "{reply:?}");
        assert_eq!(reply["request_id"], cmd.request_id.as_str());
    }
    until_no_pending(&mut conn, STREAM, SIM_GROUP).await;
    assert_leases_untouched(&mut conn).await;
    for key in &odd {
        let exists: i64 = must(
            "EXISTS",
            redis::cmd("EXISTS").arg(*key).query_async(&mut conn),
        )
        .await;
        assert_eq!(exists, 0, "`{}` was written to", key.escape_debug());
    }
    let dead = xrange(&mut conn, &dead_letter_key(SIM_GROUP)).await;
    assert_eq!(dead.len(), forged.len());
    let refused_leases = dead
        .iter()
        .filter(|d| d.get("command.reply_stream").map(String::as_str) == Some("saga:{leases}"))
        .count();
    assert_eq!(refused_leases, 1024);
    for entry in &dead {
        assert_eq!(entry["stream"], STREAM, "{entry:?}");
        assert!(entry["reason"].contains("reply_stream"), "{entry:?}");
        assert!(entry.contains_key("entry_id"), "{entry:?}");
        assert_eq!(entry["command.event_type"], "allocate_resources");
    }
    let counted = stats.counts();
    assert_eq!(counted.refused, forged.len() as u64);
    assert_eq!(counted.dead_lettered, forged.len() as u64);
    running.stop().await;
}

/// Forged commands a crashed instance left pending are taken over at
/// start-up; they must not take the slots of a small `max_in_flight` for
/// good either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_commands_left_pending_are_dead_lettered_at_restart() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    leases(&mut conn).await;
    let mut forged: Vec<Command> = (0..60).map(|_| command("saga:{leases}")).collect();
    forged.extend((0..4).map(|_| command("mission:start")));
    send_all(&mut conn, STREAM, &forged).await;
    // An instance that read them, then died.
    let create = words(&format!("XGROUP CREATE {STREAM} {SIM_GROUP} 0 MKSTREAM"));
    must::<(), _>("XGROUP CREATE", create.query_async(&mut conn)).await;
    let read = words(&format!(
        "XREADGROUP GROUP {SIM_GROUP} crashed COUNT 1000 STREAMS {STREAM} >"
    ));
    must::<redis::Value, _>("XREADGROUP", read.query_async(&mut conn)).await;
    assert_eq!(pending_count(&mut conn, STREAM, SIM_GROUP).await, 64);

    let handlers = simulated_handlers(server.client(), SimulationOptions::default())
        .max_in_flight(8)
        .reclaim_idle(Duration::ZERO);
    let running = run_handlers(handlers);
    let valid = command(REPLIES);
    send_all(&mut conn, STREAM, std::slice::from_ref(&valid)).await;

    let reply = final_reply(&mut conn, REPLIES).await;
    assert_eq!(reply["request_id"], valid.request_id.as_str());
    until_no_pending(&mut conn, STREAM, SIM_GROUP).await;
    assert_leases_untouched(&mut conn).await;
    assert_eq!(xlen(&mut conn, "mission:start").await, 0);
    assert_eq!(xlen(&mut conn, &dead_letter_key(SIM_GROUP)).await, 64);
    running.stop().await;
}

/// A name in the reply streams' form whose key is not a stream: Redis
/// refuses every write (`WRONGTYPE`), and trying again cannot help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_stream_of_the_wrong_type_is_dead_lettered() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let taken = "saga:replies:taken.0a1b2c3d";
    must::<(), _>(
        "SET",
        words(&format!("SET {taken} text")).query_async(&mut conn),
    )
    .await;
    send_all(&mut conn, STREAM, &[command(taken)]).await;

    let handlers =
        simulated_handlers(server.client(), SimulationOptions::default()).max_in_flight(1);
    let stats = handlers.stats();
    let running = run_handlers(handlers);
    let valid = command(REPLIES);
    send_all(&mut conn, STREAM, std::slice::from_ref(&valid)).await;

    final_reply(&mut conn, REPLIES).await;
    until_no_pending(&mut conn, STREAM, SIM_GROUP).await;
    assert_eq!(stats.counts().unwritable, 1);
    let dead = xrange(&mut conn, &dead_letter_key(SIM_GROUP)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["command.reply_stream"], taken);
    assert!(dead[0]["reason"].contains("WRONGTYPE"), "{:?}", dead[0]);
    let value: String = must("GET", words(&format!("GET {taken}")).query_async(&mut conn)).await;
    assert_eq!(value, "text");
    running.stop().await;
}

/// The reply stream turns into another type while the handler runs: the
/// final reply can never be written, and the command is dead-lettered
/// instead of being tried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_reply_that_can_never_be_written_is_dead_lettered() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let client = server.client();
    let handlers = Handlers::new(server.client(), "saboteur")
        .max_in_flight(1)
        .on(
            STREAM,
            "allocate_resources",
            move |cmd: Command, _ctx: Context| {
                let client = client.clone();
                async move {
                    if cmd.payload["sabotage"] == true {
                        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                        let mut pipe = redis::pipe();
                        pipe.cmd("DEL").arg(&cmd.reply_stream).ignore();
                        pipe.cmd("SET").arg(&cmd.reply_stream).arg("text").ignore();
                        pipe.query_async::<()>(&mut conn).await.unwrap();
                    }
                    Ok::<_, HandlerError>(json!({"done": true}))
                }
            },
        );
    let running = run_handlers(handlers);
    let mut sabotaged = command("saga:replies:sabotaged.0a1b2c3d");
    sabotaged.payload = json!({"sabotage": true});
    let valid = command(REPLIES);
    send_all(&mut conn, STREAM, &[sabotaged.clone(), valid]).await;

    final_reply(&mut conn, REPLIES).await;
    until_no_pending(&mut conn, STREAM, "saboteur").await;
    let dead = xrange(&mut conn, &dead_letter_key("saboteur")).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["command.request_id"], sabotaged.request_id.as_str());
    assert!(dead[0]["reason"].contains("WRONGTYPE"), "{:?}", dead[0]);
    running.stop().await;
}

/// When even the dead-letter stream cannot be written (its key holds
/// another type), the refused command is acknowledged all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_still_acknowledges() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    leases(&mut conn).await;
    let dead_letter = dead_letter_key(SIM_GROUP);
    let mut set = redis::cmd("SET");
    set.arg(&dead_letter).arg("text");
    must::<(), _>("SET", set.query_async(&mut conn)).await;
    let forged: Vec<Command> = (0..4).map(|_| command("saga:{leases}")).collect();
    send_all(&mut conn, STREAM, &forged).await;

    let handlers =
        simulated_handlers(server.client(), SimulationOptions::default()).max_in_flight(2);
    let stats = handlers.stats();
    let running = run_handlers(handlers);
    let valid = command(REPLIES);
    send_all(&mut conn, STREAM, std::slice::from_ref(&valid)).await;

    final_reply(&mut conn, REPLIES).await;
    until_no_pending(&mut conn, STREAM, SIM_GROUP).await;
    assert_leases_untouched(&mut conn).await;
    assert_eq!(key_type(&mut conn, &dead_letter).await, "string");
    let counted = stats.counts();
    assert_eq!((counted.refused, counted.dead_letter_failed), (4, 4));
    running.stop().await;
}

/// Reply streams are recognised by the daemon's `reply_stream_prefix`,
/// which the handlers are given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_stream_prefix_is_the_daemons() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let opts = SimulationOptions {
        reply_stream_prefix: "acme:replies:".into(),
        ..Default::default()
    };
    let handlers = simulated_handlers(server.client(), opts);
    let stats = handlers.stats();
    let running = run_handlers(handlers);
    let ours = command("acme:replies:node-1.0a1b2c3d");
    let default_prefix = command(REPLIES);
    send_all(&mut conn, STREAM, &[default_prefix, ours.clone()]).await;

    final_reply(&mut conn, &ours.reply_stream).await;
    until_no_pending(&mut conn, STREAM, SIM_GROUP).await;
    assert_eq!(xlen(&mut conn, REPLIES).await, 0);
    assert_eq!(stats.counts().refused, 1);
    running.stop().await;

    let unusable = Handlers::new(server.client(), "g")
        .reply_stream_prefix("")
        .on(
            STREAM,
            "allocate_resources",
            |_: Command, _: Context| async { Ok::<_, HandlerError>(json!(null)) },
        );
    let refused = unusable.run(CancellationToken::new()).await;
    assert!(
        matches!(refused, Err(RunError::ReplyStreamPrefix(_))),
        "{refused:?}"
    );
}

/// A command asking for a heartbeat every millisecond gets one every
/// `MIN_HEARTBEAT_EVERY` at most: a forged clock cannot turn a handler into
/// a flood of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_clock_cannot_flood_the_reply_stream() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let handlers = Handlers::new(server.client(), "slow").on(
        STREAM,
        "allocate_resources",
        |_cmd: Command, _ctx: Context| async move {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            Ok::<_, HandlerError>(json!({"done": true}))
        },
    );
    let running = run_handlers(handlers);
    let mut forged = command(REPLIES);
    forged.heartbeat_timeout_ms = Some(1);
    send_all(&mut conn, STREAM, &[forged]).await;

    final_reply(&mut conn, REPLIES).await;
    let replies = xrange(&mut conn, REPLIES).await;
    let heartbeats = replies
        .iter()
        .filter(|r| r["status"] == "heartbeat")
        .count();
    let most = 1_000 / sagaflow::handler::MIN_HEARTBEAT_EVERY.as_millis() as usize + 1;
    assert!(
        (1..=most).contains(&heartbeats),
        "{heartbeats} heartbeats in 1 s, at most {most} expected"
    );
    // The final reply comes last: no heartbeat is written after it.
    assert_eq!(replies.last().unwrap()["status"], "completed");
    running.stop().await;
}
