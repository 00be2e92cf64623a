//! What keeps a saga cheap: replies read together are written in one
//! transition, and the streams lose what is older than their retention.

mod common;

use common::*;
use sagaflow::streams::decode_read_reply;
use serde_json::json;
use std::time::Duration;

const TWO_STEPS: &str = "\
name: batched
trigger: mission:start
steps:
  - name: reserve
    stream: batched:commands
    timeout: 1s
  - name: confirm
    stream: batched:commands
    timeout: 1s
";

/// [`TWO_STEPS`] for many sagas at once: timeouts that a slow answer (a
/// busy machine, the relay of a cluster) never reaches.
const TWO_UNHURRIED_STEPS: &str = "\
name: batched
trigger: mission:start
steps:
  - name: reserve
    stream: batched:commands
    timeout: 30s
  - name: confirm
    stream: batched:commands
    timeout: 30s
";

on_both!(
    // On one thread, so that the reply reader routes a whole batch before
    // the saga runs: the batch is then certain to be applied together.
    #[tokio::test]
    replies_read_together_are_written_in_one_transition,
    streams_lose_what_is_older_than_their_retention,
    unfinished_starts_outlive_the_retention,
);

async fn replies_read_together_are_written_in_one_transition(server: Redis) {
    let mut conn = server.conn().await;
    must(
        "the group",
        words("XGROUP CREATE batched:commands handlers 0 MKSTREAM").query_async::<()>(&mut conn),
    )
    .await;
    let daemon = start_daemon(&server, catalog(TWO_STEPS)).await;
    xadd(
        &mut conn,
        "mission:start",
        &[("correlation_id", "together"), ("payload", "{}")],
    )
    .await;

    // A handler whose three replies to each command land at once.
    let mut reader = server.blocking_conn(Duration::from_millis(100)).await;
    let mut answered = 0;
    let mut saga_id = String::new();
    bounded("both commands answered", async {
        while answered < 2 {
            let read =
                words("XREADGROUP GROUP handlers h COUNT 1 BLOCK 100 STREAMS batched:commands >");
            let value: redis::Value = read.query_async(&mut reader).await.expect("XREADGROUP");
            for entry in decode_read_reply(&value) {
                let cmd = lossy(&entry.fields);
                saga_id = cmd["saga_id"].clone();
                let mut pipe = redis::pipe();
                pipe.atomic();
                for reply in complete_in_stages(&cmd, &json!({"ok": true})) {
                    pipe.cmd("XADD")
                        .arg(&cmd["reply_stream"])
                        .arg("*")
                        .arg(reply);
                }
                pipe.query_async::<()>(&mut conn)
                    .await
                    .expect("the replies");
                answered += 1;
            }
        }
    })
    .await;

    let events = saga_events(&server, "together").await;
    assert_eq!(
        labels(&events),
        [
            "saga_started",
            "step_started:reserve",
            "step_progress:reserve",
            "step_completed:reserve",
            "step_started:confirm",
            "step_progress:confirm",
            "step_completed:confirm",
            "saga_completed",
        ]
    );
    // One write to start, then one per step, though each step had three
    // replies.
    let seq: u64 = must(
        "the record",
        redis::cmd("HGET")
            .arg(record_key(&saga_id))
            .arg("seq")
            .query_async(&mut conn),
    )
    .await;
    assert_eq!(seq, 3);
    daemon.stop().await;
}

async fn streams_lose_what_is_older_than_their_retention(server: Redis) {
    let mut conn = server.conn().await;
    let settings = sagaflow::config::Settings {
        stream_retention: Duration::from_secs(1),
        ..test_settings(&server)
    };
    let daemon = start_daemon_with(settings, catalog(TWO_STEPS)).await;
    let handler = spawn_raw_handler(&server, &["batched:commands"], "handlers", |cmd| {
        complete_in_stages(cmd, &json!({"ok": true}))
    })
    .await;
    let ids = start_missions(&mut conn, "trimmed", 20).await;
    for id in &ids {
        saga_events(&server, id).await;
    }

    // Events and starts after the retention; commands a little after their
    // longest timeout (1 s here).
    // One stream at a time: on a cluster they are in different slots.
    let lengths = || {
        let mut conn = conn.clone();
        async move {
            let mut lengths: Vec<u64> = Vec::new();
            for stream in ["saga:events", "mission:start", "batched:commands"] {
                let mut xlen = redis::cmd("XLEN");
                xlen.arg(stream);
                lengths.push(xlen.query_async(&mut conn).await.expect("XLEN"));
            }
            lengths
        }
    };
    assert_ne!(lengths().await, [0, 0, 0]);
    let trimmed = async {
        while lengths().await != [0, 0, 0] {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), trimmed)
        .await
        .is_err()
    {
        panic!("not trimmed after 15 s: lengths {:?}", lengths().await);
    }
    handler.stop().await;
    daemon.stop().await;
}

// A start taken by a daemon that died before finishing it stays in the
// trigger stream, however old, until another daemon has taken it over and
// finished it; the finished starts before it are trimmed meanwhile.
async fn unfinished_starts_outlive_the_retention(server: Redis) {
    let mut conn = server.conn().await;
    must(
        "the group",
        words("XGROUP CREATE mission:start sagaflow 0 MKSTREAM").query_async::<()>(&mut conn),
    )
    .await;
    let settings = sagaflow::config::Settings {
        stream_retention: Duration::from_secs(1),
        // The dead daemon's start is taken over once idle this long.
        lease_ttl: Duration::from_secs(8),
        ..test_settings(&server)
    };
    // Trimming is approximate (`MINID ~`): it drops whole stream nodes, so
    // there must be more than a node's worth of finished starts.
    let early = start_missions(&mut conn, "early", 300).await;
    let daemon = start_daemon_with(settings.clone(), catalog(TWO_UNHURRIED_STEPS)).await;
    let handler = spawn_raw_handler(&server, &["batched:commands"], "handlers", |cmd| {
        complete_in_stages(cmd, &json!({"ok": true}))
    })
    .await;
    // Three hundred sagas at once: a few seconds, more on a cluster.
    all_completed(&server, "early-", early.len(), Duration::from_secs(30)).await;
    daemon.stop().await;

    // A daemon reads a start and dies.
    xadd(
        &mut conn,
        "mission:start",
        &[("correlation_id", "held"), ("payload", "{}")],
    )
    .await;
    let read = words("XREADGROUP GROUP sagaflow dead COUNT 1 STREAMS mission:start >");
    let taken =
        decode_read_reply(&must("the dead daemon's read", read.query_async(&mut conn)).await);
    assert_eq!(lossy(&taken[0].fields)["correlation_id"], "held");
    let held_id = taken[0].id.clone();

    let daemon = start_daemon_with(settings, catalog(TWO_UNHURRIED_STEPS)).await;
    let late = start_missions(&mut conn, "late", 3).await;
    all_completed(&server, "late-", late.len(), SAGA_WAIT).await;
    let starts = || {
        let mut conn = conn.clone();
        async move {
            xrange(&mut conn, "mission:start")
                .await
                .into_iter()
                .map(|f| f["correlation_id"].clone())
                .collect::<Vec<_>>()
        }
    };
    // The early starts go with the retention; the held one and those after
    // it stay while it is unfinished.
    let kept = bounded("the early starts trimmed", async {
        loop {
            let kept = starts().await;
            if kept.first().is_some_and(|c| c != "early-000") {
                return kept;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        kept.len() < 300,
        "some early starts trimmed: {}",
        kept.len()
    );
    assert_eq!(
        kept[kept.len() - 4..],
        ["held", "late-000", "late-001", "late-002"],
        "held start {held_id} kept"
    );

    // Taken over, finished, then trimmed like the others.
    let events = saga_events(&server, "held").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
    bounded("every start trimmed", async {
        while !starts().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    handler.stop().await;
    daemon.stop().await;
}

/// Waits at most `within` for `n` sagas whose correlation ids start with
/// `prefix` to complete, reading the events as they come (they are trimmed
/// soon after).
async fn all_completed(server: &Redis, prefix: &str, n: usize, within: Duration) {
    wait_for_events(server, within, |events| {
        let done = events
            .iter()
            .filter(|e| e.event_type == "saga_completed" && e.correlation_id.starts_with(prefix));
        done.count() == n
    })
    .await;
}
