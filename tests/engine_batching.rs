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

// On one thread, so that the reply reader routes a whole batch before the
// saga runs: the batch is then certain to be applied together.
#[tokio::test]
async fn replies_read_together_are_written_in_one_transition() {
    let server = RedisServer::start();
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
            .arg(format!("saga:{{{saga_id}}}"))
            .arg("seq")
            .query_async(&mut conn),
    )
    .await;
    assert_eq!(seq, 3);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_lose_what_is_older_than_their_retention() {
    let server = RedisServer::start();
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
    let lengths = || {
        let mut conn = conn.clone();
        async move {
            let mut pipe = redis::pipe();
            for stream in ["saga:events", "mission:start", "batched:commands"] {
                pipe.cmd("XLEN").arg(stream);
            }
            pipe.query_async::<Vec<u64>>(&mut conn).await.expect("XLEN")
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
