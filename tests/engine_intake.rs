//! Intake: bad starts are rejected and acknowledged without stopping the
//! daemon; old-style starts, idempotency keys, and starts written before the
//! daemon ran.

mod common;

use common::*;
use sagaflow::handler::simulated::SimulationOptions;
use sagaflow::streams::decode_read_reply;
use serde_json::json;
use std::time::Duration;

on_both!(
    bad_starts_are_rejected_acknowledged_and_the_daemon_keeps_going,
    top_level_fields_without_a_payload_are_the_input,
    a_repeated_idempotency_key_starts_nothing_new,
    two_starts_with_one_key_at_once_give_one_saga_and_one_duplicate,
    starts_written_before_the_daemon_ran_are_taken,
    a_correlation_id_with_spaces_is_kept_verbatim,
    a_start_that_can_never_be_written_is_refused_and_its_key_given_back,
    a_pending_start_whose_saga_exists_is_acknowledged_not_dead_lettered,
);

/// Checks that no start is left unacknowledged once the events of the
/// transitions that took them were read. On one Redis a start is
/// acknowledged by the script that writes those events; on a cluster the
/// acknowledgement is relayed from the partition's outbox after them
/// (docs/operations.md, "Redis Cluster", "Transactional outbox"), so it is
/// waited for there, at most `STOP_WAIT`.
async fn every_start_acknowledged(server: &Redis, conn: &mut impl redis::aio::ConnectionLike) {
    if server.is_cluster() {
        bounded("every start acknowledged", async {
            while pending_count(conn, "mission:start", "sagaflow").await > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    assert_eq!(pending_count(conn, "mission:start", "sagaflow").await, 0);
}

type Case<'a> = (Vec<(&'a str, &'a [u8])>, &'a str, Option<&'a str>);

fn raw<'a>(name: &'a str, value: &'a [u8]) -> (&'a str, &'a [u8]) {
    (name, value)
}

async fn bad_starts_are_rejected_acknowledged_and_the_daemon_keeps_going(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;

    let long_id = "c".repeat(200);
    let big_field = "x".repeat(2_000_000);
    // (fields, a word the reason must hold, the correlation id it keeps)
    let cases: Vec<Case> = vec![
        (
            vec![raw("correlation_id", b"bad-1"), raw("payload", b"{nope")],
            "JSON",
            Some("bad-1"),
        ),
        (
            vec![raw("correlation_id", b"bad-2"), raw("payload", b"[1, 2]")],
            "object",
            Some("bad-2"),
        ),
        (
            vec![
                raw("correlation_id", b"bad-3"),
                raw("saga", b"no_such_saga"),
                raw("payload", b"{}"),
            ],
            "no_such_saga",
            Some("bad-3"),
        ),
        (
            vec![
                raw("correlation_id", long_id.as_bytes()),
                raw("payload", b"{}"),
            ],
            "128",
            None,
        ),
        (
            vec![raw("correlation_id", b"bad\x01id"), raw("payload", b"{}")],
            "printable",
            None,
        ),
        (
            vec![
                raw("correlation_id", b"bad-6"),
                raw("area", b"hall-\xff\xfe"),
            ],
            "UTF-8",
            Some("bad-6"),
        ),
        (
            // The original form, one field of 2 MB: refused whole.
            vec![
                raw("correlation_id", b"bad-7"),
                raw("area", big_field.as_bytes()),
            ],
            "over the limit of 1048576 bytes",
            Some("bad-7"),
        ),
    ];
    let mut entry_ids = Vec::new();
    for (fields, _, _) in &cases {
        entry_ids.push(xadd(&mut conn, "mission:start", fields).await);
    }
    start_mission(
        &mut conn,
        "good-after",
        &json!({"area": "hall-a", "robots": 1}),
    )
    .await;

    let rejected_ids = entry_ids.clone();
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        let rejected = events
            .iter()
            .filter(|e| e.event_type == "saga_rejected")
            .count();
        let good_done = events
            .iter()
            .any(|e| e.correlation_id == "good-after" && e.is_terminal());
        rejected >= rejected_ids.len() && good_done
    })
    .await;
    for ((_, word, correlation_id), entry_id) in cases.iter().zip(&entry_ids) {
        let found: Vec<&Event> = events
            .iter()
            .filter(|e| e.payload["entry_id"] == entry_id.as_str())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one event for entry {entry_id}:\n{}",
            describe(&events)
        );
        let e = found[0];
        assert_eq!(e.event_type, "saga_rejected", "{e:?}");
        assert_eq!(e.status, "rejected");
        assert_eq!(e.saga_id, "", "a rejection is about no saga");
        let reason = e.payload["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains(word),
            "reason of entry {entry_id}: {reason}"
        );
        assert!(e.payload.to_string().len() < 1024, "{entry_id}");
        match correlation_id {
            Some(id) => assert_eq!(&e.correlation_id, id),
            None => assert!(!e.correlation_id.is_empty() && e.correlation_id.len() <= 128),
        }
    }
    assert!(!events
        .iter()
        .any(|e| e.event_type == "saga_started" && e.correlation_id != "good-after"));
    let good: Vec<&Event> = events
        .iter()
        .filter(|e| e.correlation_id == "good-after")
        .collect();
    assert_eq!(
        good.last().unwrap().event_type,
        "saga_completed",
        "\n{}",
        describe(&events)
    );
    every_start_acknowledged(&server, &mut conn).await;

    handlers.stop().await;
    daemon.stop().await;
}

async fn top_level_fields_without_a_payload_are_the_input(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    let start = [
        ("area", "hall-a"),
        ("robots", "2"),
        ("correlation_id", "old-style"),
    ];
    xadd(&mut conn, "mission:start", &start).await;

    let events = saga_events(&server, "old-style").await;
    assert_eq!(events[0].event_type, "saga_started");
    assert_eq!(
        events[0].payload["input"],
        json!({"area": "hall-a", "robots": "2"})
    );
    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_completed", "\n{}", describe(&events));
    let commands = xrange(&mut conn, "resources:commands").await;
    let payload: serde_json::Value = serde_json::from_str(&commands[0]["payload"]).unwrap();
    assert_eq!(payload, json!({"area": "hall-a", "robots": "2"}));

    handlers.stop().await;
    daemon.stop().await;
}

async fn a_repeated_idempotency_key_starts_nothing_new(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    let start = |correlation_id: &'static str| {
        [
            ("correlation_id", correlation_id),
            ("idempotency_key", "order-7"),
            ("payload", r#"{"area": "hall-a", "robots": 1}"#),
        ]
    };
    xadd(&mut conn, "mission:start", &start("idem-1")).await;
    let first = saga_events(&server, "idem-1").await;
    assert_eq!(
        first.last().unwrap().event_type,
        "saga_completed",
        "\n{}",
        describe(&first)
    );
    let saga_id = first[0].saga_id.clone();

    // The first saga has ended: the key still holds.
    let again = xadd(&mut conn, "mission:start", &start("idem-2")).await;
    let second = saga_events(&server, "idem-2").await;
    assert_eq!(
        labels(&second),
        ["saga_duplicate"],
        "\n{}",
        describe(&second)
    );
    let dup = &second[0];
    assert_eq!(dup.status, "duplicate");
    assert_eq!(dup.payload["existing_saga_id"], saga_id.as_str());
    assert_eq!(dup.payload["idempotency_key"], "order-7");
    assert_eq!(dup.payload["entry_id"], again.as_str());
    every_start_acknowledged(&server, &mut conn).await;

    handlers.stop().await;
    daemon.stop().await;
}

async fn two_starts_with_one_key_at_once_give_one_saga_and_one_duplicate(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    for correlation_id in ["twin-1", "twin-2"] {
        let start = [
            ("correlation_id", correlation_id),
            ("idempotency_key", "twin"),
            ("payload", r#"{"area": "hall-a", "robots": 1}"#),
        ];
        xadd(&mut conn, "mission:start", &start).await;
    }
    let twins = |e: &Event| e.correlation_id.starts_with("twin-");
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        events
            .iter()
            .filter(|e| twins(e) && e.is_terminal())
            .count()
            >= 2
    })
    .await;
    let ours: Vec<Event> = events.into_iter().filter(twins).collect();
    let started: Vec<&Event> = ours
        .iter()
        .filter(|e| e.event_type == "saga_started")
        .collect();
    assert_eq!(started.len(), 1, "\n{}", describe(&ours));
    let dup = the_event(&ours, "saga_duplicate", None);
    assert_eq!(dup.payload["existing_saga_id"], started[0].saga_id.as_str());
    assert_ne!(dup.correlation_id, started[0].correlation_id);
    the_event(&ours, "saga_completed", None);

    handlers.stop().await;
    daemon.stop().await;
}

async fn starts_written_before_the_daemon_ran_are_taken(server: Redis) {
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "early-1",
        &json!({"area": "hall-a", "robots": 1}),
    )
    .await;
    let early = [
        ("correlation_id", "early-2"),
        ("area", "hall-b"),
        ("robots", "3"),
    ];
    xadd(&mut conn, "mission:start", &early).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    for correlation_id in ["early-1", "early-2"] {
        let events = saga_events(&server, correlation_id).await;
        assert_eq!(
            events.last().unwrap().event_type,
            "saga_completed",
            "\n{}",
            describe(&events)
        );
    }
    every_start_acknowledged(&server, &mut conn).await;

    handlers.stop().await;
    daemon.stop().await;
}

/// The contract allows any printable ASCII in a correlation id, space
/// included (`X-Request-ID: order 42`): the id runs through the saga, its
/// commands and its replies as it was written.
async fn a_correlation_id_with_spaces_is_kept_verbatim(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    let ids = ["order 42", "  padded  ", "quote \" and ~!"];
    for (i, id) in ids.iter().enumerate() {
        // Areas of their own: none waits for another's robot.
        let area = format!("hall-{i}");
        start_mission(&mut conn, id, &json!({"area": area, "robots": 1})).await;
    }
    for id in ids {
        let events = saga_events(&server, id).await;
        assert_eq!(
            events.len(),
            mission_event_count(1),
            "every event of `{id}`:\n{}",
            describe(&events)
        );
        assert_eq!(events.last().unwrap().event_type, "saga_completed");
        assert!(events.iter().all(|e| e.correlation_id == id));
    }
    for stream in [
        "resources:commands",
        "routing:commands",
        "exploration:commands",
        "mapping:commands",
    ] {
        let commands = xrange(&mut conn, stream).await;
        for id in ids {
            let sent = commands.iter().filter(|c| c["correlation_id"] == id);
            assert_eq!(sent.count(), 1, "the command on {stream} of `{id}`");
        }
    }
    let replies: Vec<String> =
        must("KEYS", words("KEYS saga:replies:*").query_async(&mut conn)).await;
    let mut replied = Vec::new();
    for stream in &replies {
        replied.extend(xrange(&mut conn, stream).await);
    }
    for id in ids {
        let theirs = replied.iter().filter(|r| r["correlation_id"] == id).count();
        // start, progress and completed for each of the four steps.
        assert_eq!(theirs, 12, "the replies of `{id}`");
    }

    // What the contract refuses is still refused, with the reason.
    let long = "a".repeat(129);
    let cases: [(&[u8], &str); 4] = [
        (b"order\t42", "a tab (0x09) at character 6"),
        (b"order\x7f42", "a control character (0x7F) at character 6"),
        (
            "ordér 42".as_bytes(),
            "a non-ASCII character `é` at character 4",
        ),
        (long.as_bytes(), "129 characters long, the limit is 128"),
    ];
    let mut entry_ids = Vec::new();
    for (id, _) in &cases {
        let fields = [raw("correlation_id", id), raw("payload", b"{}")];
        entry_ids.push(xadd(&mut conn, "mission:start", &fields).await);
    }
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        let rejected = |id: &String| {
            events
                .iter()
                .any(|e| e.event_type == "saga_rejected" && e.payload["entry_id"] == id.as_str())
        };
        entry_ids.iter().all(rejected)
    })
    .await;
    for ((_, why), entry_id) in cases.iter().zip(&entry_ids) {
        let e = events
            .iter()
            .find(|e| e.payload["entry_id"] == entry_id.as_str())
            .unwrap();
        let reason = e.payload["reason"].as_str().unwrap_or("");
        assert!(reason.contains(why), "`{why}` not in: {reason}");
    }

    handlers.stop().await;
    daemon.stop().await;
}

// A start whose saga can never be written (its first command's stream is
// another kind of key) is dead-lettered and rejected at once, not retried;
// once the key is mended, the same start, with the same idempotency key,
// starts its saga: the key was given back.
async fn a_start_that_can_never_be_written_is_refused_and_its_key_given_back(server: Redis) {
    let mut conn = server.conn().await;
    must(
        "HSET",
        words("HSET resources:commands not a-stream").query_async::<i64>(&mut conn),
    )
    .await;
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let start = |correlation_id: &'static str| {
        [
            ("correlation_id", correlation_id),
            ("idempotency_key", "order-8"),
            ("payload", r#"{"area": "hall-a", "robots": 1}"#),
        ]
    };
    let entry = xadd(&mut conn, "mission:start", &start("refused-1")).await;
    let refused = saga_events(&server, "refused-1").await;
    assert_eq!(
        labels(&refused),
        ["saga_rejected"],
        "\n{}",
        describe(&refused)
    );
    let reason = refused[0].payload["reason"].as_str().unwrap();
    assert!(reason.contains("resources:commands"), "{reason}");
    let dead = xrange(&mut conn, "saga:dead-letter").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["entry_id"], entry);
    every_start_acknowledged(&server, &mut conn).await;

    must(
        "DEL",
        words("DEL resources:commands").query_async::<i64>(&mut conn),
    )
    .await;
    xadd(&mut conn, "mission:start", &start("refused-2")).await;
    let again = saga_events(&server, "refused-2").await;
    assert_eq!(
        again.last().unwrap().event_type,
        "saga_completed",
        "\n{}",
        describe(&again)
    );
    handlers.stop().await;
    daemon.stop().await;
}

// On a cluster a start's acknowledgement is relayed after the transition
// that created its saga, at least once (docs/operations.md, "Redis
// Cluster"): a busy relay can leave the start pending, and taken over again
// and again, long after its saga was created. Such a start was processed:
// it is acknowledged, never dead-lettered as delivered too often "without
// being processed". Here a start whose saga ran is made pending again by
// hand, delivered as often as the limit allows and long idle, on both
// backends.
async fn a_pending_start_whose_saga_exists_is_acknowledged_not_dead_lettered(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    let start = [
        ("correlation_id", "acked-late"),
        ("payload", r#"{"area": "hall-a", "robots": 1}"#),
    ];
    let entry = xadd(&mut conn, "mission:start", &start).await;
    let events = saga_events(&server, "acked-late").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
    every_start_acknowledged(&server, &mut conn).await;
    handlers.stop().await;
    let max_deliveries = daemon.stop().await.settings.max_deliveries;

    // Delivered again to a consumer that never acknowledges it.
    let rewind = words("XGROUP SETID mission:start sagaflow 0");
    must("XGROUP SETID", rewind.query_async::<()>(&mut conn)).await;
    let read = words("XREADGROUP GROUP sagaflow gone COUNT 1 STREAMS mission:start >");
    let again = decode_read_reply(&must("the read", read.query_async(&mut conn)).await);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, entry);
    let mut claim = words("XCLAIM mission:start sagaflow gone 0");
    claim
        .arg(&entry)
        .arg("IDLE")
        .arg(60_000)
        .arg("RETRYCOUNT")
        .arg(max_deliveries)
        .arg("JUSTID");
    must("XCLAIM", claim.query_async::<Vec<String>>(&mut conn)).await;

    let daemon = start_daemon(&server, mission_catalog()).await;
    bounded("the start acknowledged", async {
        while pending_count(&mut conn, "mission:start", "sagaflow").await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    daemon.stop().await;
    let dead = xrange(&mut conn, "saga:dead-letter").await;
    assert!(dead.is_empty(), "{dead:?}");
    // Nothing else was made of it.
    let events = xrange(&mut conn, "saga:events").await;
    let ours: Vec<Event> = events
        .into_iter()
        .map(Event::from_fields)
        .filter(|e| e.correlation_id == "acked-late")
        .collect();
    assert_eq!(ours.len(), mission_event_count(1), "\n{}", describe(&ours));
}
