//! Waiting for replicas (`wait_replicas`) on a master that has fewer than
//! asked: the wait says so at once, and holds up no other command sharing
//! its connection. A `WAIT` blocks the connection it is sent on until it is
//! answered; the daemon's writes share one connection per master, so a
//! `WAIT` for a replica the master does not have (its replica promoted away
//! in a failover) held every write behind it for the wait's whole timeout.

mod common;

use common::*;
use sagaflow::connection::{Client, RedisMode};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_replica_the_master_lacks_holds_up_nothing() {
    let server = RedisServer::start();
    let redis = redis::Client::open(server.url()).expect("a client");
    let client = must("a client", Client::resolve(redis, RedisMode::Single)).await;
    let mut conn = must("a connection", client.commands(Duration::from_secs(10))).await;
    let key = "saga:{p0.0}:record:x";
    // The first wait finds the master without its replica.
    let found = conn.wait_replicas(key, 1, Duration::from_millis(250)).await;
    assert!(found.expect("a wait"), "no replica to wait for");
    // From then on a wait, however long its timeout, asks first how many
    // replicas there are, and blocks neither itself nor anyone else.
    let mut other = conn.clone();
    let began = Instant::now();
    let wait = tokio::spawn(async move {
        let waited = other.wait_replicas(key, 1, Duration::from_secs(5)).await;
        (waited, began.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pinged = Instant::now();
    let pong: String = must("a PING", redis::cmd("PING").query_async(&mut conn)).await;
    let ping_took = pinged.elapsed();
    assert_eq!(pong, "PONG");
    let (waited, wait_took) = must("the wait", wait).await;
    assert!(waited.expect("a wait"), "no replica to wait for");
    assert!(
        ping_took < Duration::from_secs(1),
        "a PING waited {ping_took:?} behind a wait for a missing replica"
    );
    assert!(
        wait_took < Duration::from_secs(1),
        "a wait for a missing replica took {wait_took:?}"
    );
}
