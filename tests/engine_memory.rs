//! Bounded Redis memory: after a thousand sagas have ended, every key the
//! daemon (and the simulated handlers) created either expires or is a
//! capped stream.

mod common;

use common::*;
use sagaflow::handler::simulated::SimulationOptions;
use sagaflow::store::keys::{Keys, Partition};
use std::time::Duration;

on_both!(
    after_a_thousand_sagas_every_key_expires_or_is_capped,
    a_live_reply_stream_never_expires_under_its_reader,
);

const SAGAS: usize = 1000;

/// Streams written with `XADD MAXLEN ~`, and keys whose size is bounded by
/// the number of daemons, not of sagas.
const CAPPED_OR_BOUNDED: [&str; 9] = [
    "saga:events",
    // capped by the daemons' housekeeping (`signals_maxlen`)
    "saga:signals",
    "resources:commands",
    "routing:commands",
    "exploration:commands",
    "mapping:commands",
    "saga:{leases}",
    "saga:{leases}:owners",
    // written by the starter (this test), not by the daemon
    "mission:start",
];

async fn after_a_thousand_sagas_every_key_expires_or_is_capped(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..SAGAS {
        pipe.cmd("XADD")
            .arg("mission:start")
            .arg("*")
            .arg("correlation_id")
            .arg(format!("mem-{i}"))
            .arg("idempotency_key")
            .arg(format!("key-{i}"))
            .arg("payload")
            .arg(format!(r#"{{"area": "mem-{i}", "robots": 2}}"#));
    }
    must("the starts", pipe.query_async::<Vec<String>>(&mut conn)).await;
    let ended = |events: &[Event]| events.iter().filter(|e| e.is_terminal()).count();
    wait_for_events(&server, Duration::from_secs(60), |events| {
        ended(events) >= SAGAS
    })
    .await;
    // On a cluster, each partition's outbox holds what is not relayed yet:
    // every entry is removed once relayed (docs/operations.md, "Redis
    // Cluster", "Transactional outbox").
    let names = Keys::new("saga:");
    let outboxes: Vec<String> = Partition::all().map(|p| names.outbox(p)).collect();
    if server.is_cluster() {
        bounded("every outbox emptied", async {
            while !all_empty(&mut conn, &outboxes).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }
    handlers.stop().await;
    daemon.stop().await;

    // Beside each stream relayed into, its relay marks: one field per
    // partition (same section of docs/operations.md).
    let marks: Vec<String> = CAPPED_OR_BOUNDED
        .iter()
        .filter_map(|stream| names.relayed(stream))
        .collect();
    let keys: Vec<String> = must("KEYS", words("KEYS *").query_async(&mut conn)).await;
    let mut unbounded = Vec::new();
    for key in &keys {
        let ttl: i64 = must("TTL", redis::cmd("TTL").arg(key).query_async(&mut conn)).await;
        // Each partition's indexes, registry of owners and fence are
        // trimmed by the daemons' housekeeping.
        let partition_bounded = key.starts_with("saga:{p")
            && [":index:", ":owners", ":fenced"]
                .iter()
                .any(|k| key.contains(k));
        let relay_bounded = server.is_cluster() && (outboxes.contains(key) || marks.contains(key));
        if ttl < 0
            && !CAPPED_OR_BOUNDED.contains(&key.as_str())
            && !partition_bounded
            && !relay_bounded
        {
            let kind: String =
                must("TYPE", redis::cmd("TYPE").arg(key).query_async(&mut conn)).await;
            unbounded.push(format!("{key} ({kind})"));
        }
    }
    assert!(
        unbounded.is_empty(),
        "keys that neither expire nor are capped: {unbounded:#?}"
    );
    // Every saga record, idempotency key and handler record is accounted for.
    assert!(keys.len() > 3 * SAGAS, "{} keys", keys.len());
    // The daemon's set of owned sagas emptied as they ended.
    let owned = owned_sets(&mut conn).await;
    assert!(owned.is_empty(), "{owned:?}");
}

/// Whether every stream of `streams` is empty (or absent).
async fn all_empty(conn: &mut impl redis::aio::ConnectionLike, streams: &[String]) -> bool {
    for stream in streams {
        let mut xlen = redis::cmd("XLEN");
        xlen.arg(stream);
        if must("XLEN", xlen.query_async::<u64>(conn)).await > 0 {
            return false;
        }
    }
    true
}

/// A reply stream's expiry is renewed every few seconds while its daemon
/// reads it; however short the configured retention, it must never lapse
/// between two renewals, or unread replies would be lost with the stream.
async fn a_live_reply_stream_never_expires_under_its_reader(server: Redis) {
    let settings = sagaflow::config::Settings {
        node_id: "short-retention".into(),
        reply_retention: Duration::from_secs(1),
        ..test_settings(&server)
    };
    let daemon = start_daemon_with(settings, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "ttl",
        &serde_json::json!({"area": "a", "robots": 1}),
    )
    .await;
    saga_events(&server, "ttl").await;
    // Past the first renewal.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let keys = words("KEYS saga:replies:short-retention.*");
    let streams: Vec<String> = must("KEYS", keys.query_async(&mut conn)).await;
    let [reply_stream] = streams.as_slice() else {
        panic!("one reply stream, not {streams:?}")
    };
    let mut ttl_of = redis::cmd("TTL");
    ttl_of.arg(reply_stream);
    let ttl: i64 = must("TTL", ttl_of.query_async(&mut conn)).await;
    handlers.stop().await;
    daemon.stop().await;
    assert!(ttl >= 50, "the reply stream expires in {ttl} s");
}
