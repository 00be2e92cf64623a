//! The Redis Cluster fixture against real processes: it comes up, spreads
//! keys over its masters, fails a killed master over to its replica without
//! losing a replicated write, and a one-master cluster serves every slot.

mod common;

use common::{must, RedisCluster};
use redis::cluster::ClusterClient;
use sagaflow::local_redis::{ClusterOptions, LocalCluster, SLOTS};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn set(conn: &mut impl redis::aio::ConnectionLike, key: &str, value: &str) {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
    must("SET", cmd.query_async::<()>(conn)).await;
}

async fn get(conn: &mut impl redis::aio::ConnectionLike, key: &str) -> Option<String> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    must("GET", cmd.query_async(conn)).await
}

#[test]
fn three_masters_and_three_replicas_come_up() {
    let started = Instant::now();
    let cluster = RedisCluster::start();
    eprintln!("a 3+3 cluster came up in {:?}", started.elapsed());

    let view = cluster.local().view().unwrap();
    let masters: Vec<_> = view.iter().filter(|v| v.master).collect();
    let replicas: Vec<_> = view.iter().filter(|v| !v.master).collect();
    assert_eq!((masters.len(), replicas.len()), (3, 3), "{view:#?}");
    let served: usize = masters.iter().flat_map(|m| &m.slots).map(|r| r.len()).sum();
    assert_eq!(served, usize::from(SLOTS));
    assert!(masters.iter().all(|m| !m.slots.is_empty()), "{view:#?}");
    let copied: BTreeSet<_> = replicas
        .iter()
        .filter_map(|r| r.master_id.clone())
        .collect();
    let ids: BTreeSet<_> = masters.iter().map(|m| m.id.clone()).collect();
    assert_eq!(copied, ids, "each master has its own replica");

    let seeds = cluster.seeds();
    let master_urls: BTreeSet<_> = masters
        .iter()
        .map(|m| format!("redis://127.0.0.1:{}", m.port))
        .collect();
    assert_eq!(seeds.iter().cloned().collect::<BTreeSet<_>>(), master_urls);
    let ports: BTreeSet<u16> = cluster.local().nodes().iter().map(|n| n.port).collect();
    assert_eq!(ports.len(), 6);
    assert!(!ports.contains(&6379), "never the default Redis port");
}

#[tokio::test]
async fn keys_with_different_hash_tags_land_on_different_masters() {
    let cluster = RedisCluster::start();
    let first = "saga:{a}:state".to_owned();
    let first_master = cluster.master_for_key(&first);
    let second = (b'b'..=b'z')
        .map(|c| format!("saga:{{{}}}:state", c as char))
        .find(|key| cluster.master_for_key(key) != first_master)
        .expect("a hash tag on another master");
    let second_master = cluster.master_for_key(&second);

    let mut conn = cluster.conn().await;
    set(&mut conn, &first, "one").await;
    set(&mut conn, &second, "two").await;
    assert_eq!(get(&mut conn, &first).await.as_deref(), Some("one"));
    assert_eq!(get(&mut conn, &second).await.as_deref(), Some("two"));

    // Each key is on the master its slot names; the other sends it there.
    for (key, master, other, value) in [
        (&first, first_master, second_master, "one"),
        (&second, second_master, first_master, "two"),
    ] {
        let mut node = cluster.node_conn(master).await;
        assert_eq!(get(&mut node, key).await.as_deref(), Some(value));
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let mut elsewhere = cluster.node_conn(other).await;
        let answer = common::bounded("GET", cmd.query_async::<Option<String>>(&mut elsewhere));
        let moved = answer.await.expect_err("MOVED");
        let to = moved.redirect_node().map(|(addr, _slot)| addr.to_owned());
        assert_eq!(to, Some(format!("127.0.0.1:{master}")), "{moved}");
    }
}

#[tokio::test]
async fn a_killed_master_fails_over_to_its_replica_with_a_replicated_write() {
    let mut cluster = RedisCluster::start();
    let key = "saga:{failover}:state";
    let mut conn = cluster.conn().await;
    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg(key).arg("kept").ignore();
    pipe.cmd("WAIT").arg(1).arg(1000);
    let (acked,): (i64,) = must("SET and WAIT", pipe.query_async(&mut conn)).await;
    assert_eq!(acked, 1, "the replica has the write");

    let failover = cluster.kill_master_for_key(key).await;
    eprintln!("failover: {failover:?}");
    assert_ne!(failover.promoted, failover.killed);

    let mut fresh = cluster.conn().await;
    assert_eq!(get(&mut fresh, key).await.as_deref(), Some("kept"));
    // The connection made before the failover finds the new master too.
    assert_eq!(get(&mut conn, key).await.as_deref(), Some("kept"));
    set(&mut conn, key, "after").await;
    let mut promoted = cluster.node_conn(failover.promoted).await;
    assert_eq!(get(&mut promoted, key).await.as_deref(), Some("after"));
}

#[tokio::test]
async fn one_master_serves_every_slot() {
    let options = ClusterOptions {
        masters: 1,
        node_timeout: Duration::from_millis(1000),
        ..ClusterOptions::default()
    };
    let started = Instant::now();
    let cluster = LocalCluster::start(&options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("a one-master cluster came up in {:?}", started.elapsed());
    let [node] = cluster.nodes() else {
        panic!("one node: {:?}", cluster.nodes());
    };
    for slot in [0, 1, SLOTS / 2, SLOTS - 1] {
        assert_eq!(cluster.master_of_slot(slot).unwrap(), node.port);
    }
    assert_eq!(cluster.seeds(), vec![node.url.clone()]);

    let client = ClusterClient::new(cluster.seeds()).unwrap();
    let mut conn = must("a cluster connection", client.get_async_connection()).await;
    for tag in ["a", "b", "c", "saga-1", "saga-2"] {
        let key = format!("saga:{{{tag}}}:state");
        set(&mut conn, &key, tag).await;
        assert_eq!(get(&mut conn, &key).await.as_deref(), Some(tag));
    }
}

#[test]
fn a_node_that_exits_at_start_up_is_an_error_with_its_log() {
    let options = ClusterOptions {
        masters: 1,
        extra: vec!["--no-such-option".into(), "yes".into()],
        ..ClusterOptions::default()
    };
    let Err(error) = LocalCluster::start(&options) else {
        panic!("a cluster with a bad option started");
    };
    let message = error.to_string();
    assert!(message.contains("exited at start-up"), "{message}");
    assert!(message.contains("no-such-option"), "{message}");
}
