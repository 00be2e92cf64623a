//! The daemon on a real Redis Cluster (3 masters, 3 replicas): missions run
//! to their end with every transition's writes relayed from the partitions'
//! outboxes exactly once, and a master killed mid-run (its replica
//! promoted) loses no saga and doubles no terminal event, with
//! `wait_replicas: 1`.

mod common;

use common::*;
use redis::cluster_async::ClusterConnection;
use sagaflow::config::Settings;
use sagaflow::store::keys::{slot, Keys, Partition};
use sagaflow::streams::decode_read_reply;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const COMMAND_STREAMS: [&str; 4] = [
    "resources:commands",
    "routing:commands",
    "exploration:commands",
    "mapping:commands",
];

fn cluster_settings(cluster: &RedisCluster, wait_replicas: usize) -> Settings {
    Settings {
        redis_url: cluster.url(),
        operator_keys: sagaflow::protocol::control::OperatorKeys::parse(OPERATOR_KEY)
            .expect("the test operator's key"),
        block: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(2),
        takeover_every: Duration::from_millis(200),
        wait_replicas,
        ..Settings::default()
    }
}

/// A handler speaking the wire contract with plain commands through a
/// cluster connection: every command of the four services is answered
/// `start`, `progress`, `completed`, with a result every step can read.
fn spawn_cluster_handler(
    mut conn: ClusterConnection,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move {
        for stream in COMMAND_STREAMS {
            let created: redis::RedisResult<()> =
                words(&format!("XGROUP CREATE {stream} h 0 MKSTREAM"))
                    .query_async(&mut conn)
                    .await;
            if let Err(e) = created {
                assert_eq!(e.code(), Some("BUSYGROUP"), "{e}");
            }
        }
        let result = serde_json::json!({
            "robot_ids": ["r1", "r2"], "routes": [], "partial_maps": [], "area": "hall-a"
        });
        while !stop.is_cancelled() {
            let mut any = false;
            for stream in COMMAND_STREAMS {
                let read = words(&format!(
                    "XREADGROUP GROUP h raw COUNT 32 STREAMS {stream} >"
                ))
                .query_async::<redis::Value>(&mut conn)
                .await;
                // A master failing over: try again in a moment.
                let Ok(value) = read else { continue };
                for entry in decode_read_reply(&value) {
                    any = true;
                    let fields = lossy(&entry.fields);
                    let reply_stream = fields["reply_stream"].clone();
                    for reply in complete_in_stages(&fields, &result) {
                        let mut xadd = redis::cmd("XADD");
                        xadd.arg(&reply_stream).arg("*").arg(reply);
                        while xadd.query_async::<String>(&mut conn).await.is_err() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    let mut ack = redis::cmd("XACK");
                    ack.arg(&entry.stream).arg("h").arg(&entry.id);
                    let _ = ack.query_async::<i64>(&mut conn).await;
                }
            }
            if !any {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    (token, handle)
}

async fn start_on_cluster(conn: &mut ClusterConnection, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    for id in &ids {
        let mut xadd = redis::cmd("XADD");
        xadd.arg("mission:start")
            .arg("*")
            .arg("payload")
            .arg(format!(r#"{{"area":"{id}","robots":2}}"#))
            .arg("correlation_id")
            .arg(id);
        must("a start", xadd.query_async::<String>(conn)).await;
    }
    ids
}

/// Every event of `saga:events` so far, read through the cluster.
async fn all_events(conn: &mut ClusterConnection) -> Vec<Event> {
    let mut events = Vec::new();
    let mut after = "-".to_owned();
    loop {
        let mut read = redis::cmd("XRANGE");
        read.arg("saga:events")
            .arg(&after)
            .arg("+")
            .arg("COUNT")
            .arg(1000);
        let Ok(value) = read.query_async::<redis::Value>(conn).await else {
            return events;
        };
        let entries = sagaflow::streams::decode_range_reply("saga:events", &value);
        let Some(last) = entries.last() else {
            return events;
        };
        after = format!("({}", last.id);
        events.extend(entries.iter().map(|e| Event::from_fields(lossy(&e.fields))));
    }
}

/// Waits until every correlation id in `ids` has a terminal event; panics
/// with what there is after `within`.
async fn wait_for_ends(
    conn: &mut ClusterConnection,
    ids: &[String],
    within: Duration,
) -> Vec<Event> {
    let deadline = Instant::now() + within;
    loop {
        let events = all_events(conn).await;
        let ended = ids
            .iter()
            .filter(|id| {
                events
                    .iter()
                    .any(|e| e.correlation_id == **id && e.is_terminal())
            })
            .count();
        if ended == ids.len() {
            return events;
        }
        if Instant::now() >= deadline {
            let open: Vec<&String> = (ids.iter())
                .filter(|id| {
                    !events
                        .iter()
                        .any(|e| e.correlation_id == **id && e.is_terminal())
                })
                .collect();
            let of_open: Vec<Event> = (events.iter())
                .filter(|e| open.contains(&&e.correlation_id))
                .cloned()
                .collect();
            // Their records too: owner, transition number, units under way.
            let keys = Keys::new("saga:");
            let mut records = Vec::new();
            let saga_ids: BTreeSet<&str> = of_open.iter().map(|e| e.saga_id.as_str()).collect();
            for saga_id in saga_ids {
                let record = sagaflow::store::sagas::load_state(conn, &keys, saga_id).await;
                records.push(match record {
                    Ok(Some(r)) => format!(
                        "  {saga_id}: owner {:?}, seq {}, {}, under way {:?}",
                        r.owner,
                        r.seq,
                        r.state.phase.status().as_str(),
                        r.state
                            .work
                            .exchanges()
                            .map(|(u, x)| (u, x.attempt, x.waiting.clone(), x.reply_stream.clone()))
                            .collect::<Vec<_>>()
                    ),
                    other => format!("  {saga_id}: {other:?}"),
                });
            }
            panic!(
                "{ended} of {} sagas ended within {within:?}; the others:\n{}\nTheir records:\n{}",
                ids.len(),
                describe(&of_open),
                records.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each saga ended once, completed, and each of its events was written
/// once: no two events of one saga alike.
fn assert_each_once(events: &[Event], ids: &[String]) {
    for id in ids {
        let ours: Vec<&Event> = events.iter().filter(|e| e.correlation_id == *id).collect();
        let ends: Vec<&&Event> = ours.iter().filter(|e| e.is_terminal()).collect();
        assert_eq!(ends.len(), 1, "{id}: {}", labels_of(&ours));
        assert_eq!(
            ends[0].event_type,
            "saga_completed",
            "{id}: {}",
            labels_of(&ours)
        );
        let mut seen = BTreeMap::new();
        for e in &ours {
            // A step's locks are told apart by their names.
            let label = match e.payload["lock"].as_str() {
                Some(lock) => format!("{} {lock}", e.label()),
                None => e.label(),
            };
            *seen.entry(label).or_insert(0) += 1;
        }
        let twice: Vec<_> = seen
            .iter()
            .filter(|(label, n)| **n > 1 && !label.contains("progress"))
            .collect();
        assert!(twice.is_empty(), "{id}: written twice: {twice:?}");
    }
}

fn labels_of(events: &[&Event]) -> String {
    events
        .iter()
        .map(|e| e.label())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until every partition's outbox is empty: everything relayed.
async fn wait_for_empty_outboxes(conn: &mut ClusterConnection) {
    let keys = Keys::new("saga:");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = 0;
        for p in Partition::all() {
            let n: i64 = redis::cmd("XLEN")
                .arg(keys.outbox(p))
                .query_async(conn)
                .await
                .unwrap_or(1);
            left += n;
        }
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} outbox entries never relayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missions_run_on_a_cluster_with_each_event_once() {
    let cluster = RedisCluster::start();
    // The pieces of one saga's transition are spread over the masters.
    let masters: std::collections::BTreeSet<u16> = [
        "saga:events",
        "mission:start",
        "resources:commands",
        "mapping:commands",
    ]
    .into_iter()
    .map(|k| cluster.master_of_slot(slot(k)))
    .collect();
    assert!(masters.len() > 1, "the shared streams are on one master");
    let daemon = start_daemon_with(cluster_settings(&cluster, 0), mission_catalog()).await;
    let (stop, handler) = spawn_cluster_handler(cluster.conn().await);
    let mut conn = cluster.conn().await;
    let ids = start_on_cluster(&mut conn, "cl", 20).await;
    let events = wait_for_ends(&mut conn, &ids, Duration::from_secs(30)).await;
    assert_each_once(&events, &ids);
    wait_for_empty_outboxes(&mut conn).await;
    stop.cancel();
    must("the handler", handler).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_loses_no_saga_and_doubles_no_end() {
    let mut cluster = RedisCluster::start();
    let daemon = start_daemon_with(cluster_settings(&cluster, 1), mission_catalog()).await;
    let (stop, handler) = spawn_cluster_handler(cluster.conn().await);
    let mut conn = cluster.conn().await;
    let ids = start_on_cluster(&mut conn, "fo", 30).await;
    // Some under way, some ended: then the master of the events stream
    // (and of a third of the partitions) dies.
    let deadline = Instant::now() + Duration::from_secs(20);
    while all_events(&mut conn)
        .await
        .iter()
        .filter(|e| e.is_terminal())
        .count()
        < 5
    {
        assert!(Instant::now() < deadline, "no saga ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover = cluster.kill_master_for_key("saga:events").await;
    eprintln!("failover: {failover:?}");
    let mut conn = cluster.conn().await;
    let events = wait_for_ends(&mut conn, &ids, Duration::from_secs(90)).await;
    // The test's handler waits for no replica: a reply it wrote just before
    // the failover may be lost, and its step then times out and the saga is
    // compensated. What the daemon wrote is neither lost nor doubled: each
    // saga ends once, and no attempt was sent under two request ids.
    common::processes::assert_audit(&events, &ids);
    for id in &ids {
        let ends: Vec<&Event> = events
            .iter()
            .filter(|e| e.correlation_id == *id && e.is_terminal())
            .collect();
        assert_eq!(ends.len(), 1, "{id}");
        assert!(
            ["saga_completed", "saga_compensated"].contains(&ends[0].event_type.as_str()),
            "{id}: {}",
            ends[0].event_type
        );
    }
    wait_for_empty_outboxes(&mut conn).await;
    stop.cancel();
    must("the handler", handler).await;
    daemon.stop().await;
}

/// A master whose replica was promoted away (killed, its replica serving its
/// slots with no replica of its own) holds up no saga: with `wait_replicas:
/// 1`, a `WAIT` for a replica it does not have would hold every command
/// behind it on the daemon's shared connection to that master for the wait's
/// whole timeout, and with every transition and relay waiting there, sagas
/// crawled for minutes after a failover (their steps timing out meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_left_without_a_replica_holds_up_no_saga() {
    let mut cluster = RedisCluster::start();
    // The events stream, the leases and a third of the partitions are on
    // the master killed: its replica serves them alone from now on.
    let failover = cluster.kill_master_for_key("saga:events").await;
    eprintln!("failover: {failover:?}");
    let daemon = start_daemon_with(cluster_settings(&cluster, 1), mission_catalog()).await;
    let (stop, handler) = spawn_cluster_handler(cluster.conn().await);
    let mut conn = cluster.conn().await;
    let ids = start_on_cluster(&mut conn, "nr", 20).await;
    // Unhindered, they end in a few seconds; each wait for the missing
    // replica (a quarter of a second) made them take well over a minute.
    let events = wait_for_ends(&mut conn, &ids, Duration::from_secs(12)).await;
    assert_each_once(&events, &ids);
    wait_for_empty_outboxes(&mut conn).await;
    stop.cancel();
    must("the handler", handler).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_a_private_cluster() {
    let o = sagaflow_cli(&["dev", "--cluster", "--timeout", "30s"]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("started a private Redis Cluster of 3 masters"),
        "{out}"
    );
    assert!(out.contains("the mission completed"), "{out}");
}

/// A daemon process killed with SIGKILL mid-run on a cluster: another takes
/// its sagas over (claimed partition by partition) and its unrelayed
/// writes are relayed by the survivor's sweep; every saga ends once, no
/// attempt is sent under two `request_id`s, and an operator's cancel of a
/// saga under way is carried out by the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_on_a_cluster_is_taken_over_and_cancels_are_answered() {
    use common::processes::{assert_audit, Child, EventLog};
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let mut first = Child::daemon(&url, "cl-first");
    let _handlers = Child::handlers(&url, &["--work-ms", "300"]);
    let mut conn = cluster.conn().await;
    let ids = start_on_cluster(&mut conn, "tk", 20).await;
    // The events stream's master is read directly: no failover here.
    let events_url = format!(
        "redis://127.0.0.1:{}",
        cluster.master_for_key("saga:events")
    );
    let mut log = EventLog::new(&events_url);
    log.wait_until(Duration::from_secs(20), "20 steps completed", |events| {
        events
            .iter()
            .filter(|e| e.event_type == "step_completed")
            .count()
            >= 20
    })
    .await;
    first.kill9();
    let second = Child::daemon(&url, "cl-second");
    second
        .wait_for_log("took over the sagas of a daemon", Duration::from_secs(15))
        .await;
    // One saga still running is cancelled by an operator, through the CLI
    // on the cluster; the survivor answers it.
    let running = ids
        .iter()
        .find(|id| {
            !log.events()
                .iter()
                .any(|e| e.correlation_id == **id && e.is_terminal())
        })
        .cloned();
    assert!(running.is_some(), "every saga ended before the takeover");
    if let Some(id) = &running {
        let o = sagaflow_cli(&[
            "cancel",
            "--correlation-id",
            id,
            "--reason",
            "cluster drill",
            "--redis-url",
            &url,
        ])
        .await;
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let events = log.wait_all_ended(&ids, Duration::from_secs(60)).await;
    assert_audit(&events, &ids);
    for id in &ids {
        let end: Vec<&Event> = events
            .iter()
            .filter(|e| e.correlation_id == *id && e.is_terminal())
            .collect();
        assert_eq!(end.len(), 1, "{id}");
        let expected = if Some(id) == running.as_ref() {
            ["saga_completed", "saga_compensated"].as_slice()
        } else {
            ["saga_completed"].as_slice()
        };
        assert!(
            expected.contains(&end[0].event_type.as_str()),
            "{id}: {}",
            end[0].event_type
        );
    }
    let mut conn = cluster.conn().await;
    wait_for_empty_outboxes(&mut conn).await;
}
