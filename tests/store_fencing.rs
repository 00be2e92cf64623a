//! The store's scripts against a real Redis: the fenced transition (only
//! the owner writes, a retried write is applied once, a creation cannot
//! replace a saga that exists, a daemon whose lease ran out creates
//! nothing, a key of the wrong kind refuses the whole transition), the
//! leases on Redis's clock (renewal, claims, orphans), and the store's
//! other records (idempotency keys, nonces, pinned definitions, records
//! read back, consumer groups).

mod common;

use common::*;
use sagaflow::config::Settings;
use sagaflow::connection::{Client, Conn, RedisMode};
use sagaflow::protocol::{SagaEvent, SagaId};
use sagaflow::store::control::{self, NonceUse};
use sagaflow::store::definitions::{self, Version};
use sagaflow::store::groups::{self, Created, Unfinished};
use sagaflow::store::idempotency::{self, Claim, Release};
use sagaflow::store::keys::{Keys, Partition};
use sagaflow::store::lease::{self, OwnerClaim, Renewal, SagaClaim};
use sagaflow::store::sagas::{self, LoadError};
use sagaflow::store::{Fence, Ownership, Transition, WriteError, Written};
use std::time::Duration;

const TTL: Duration = Duration::from_secs(10);

fn event(saga_id: &SagaId, n: u64) -> SagaEvent {
    numbered_event(saga_id, n)
}

fn settings(server: &RedisServer) -> Settings {
    Settings {
        redis_url: server.url(),
        ..Settings::default()
    }
}

async fn manager(server: &RedisServer) -> Conn {
    let client = Client::resolve(server.client(), RedisMode::Single)
        .await
        .unwrap();
    client.commands(Duration::from_secs(5)).await.unwrap()
}

fn keys() -> Keys {
    Keys::new("saga:")
}

fn record(saga: &SagaId) -> String {
    keys().record(saga.as_str())
}

fn owned(saga: &SagaId, owner: &str) -> String {
    keys().owned(Partition::of(saga.as_str()), owner)
}

async fn write_with(
    server: &RedisServer,
    saga_id: &SagaId,
    owner: &str,
    seq: u64,
    ownership: Ownership,
) -> Result<Written, WriteError> {
    let mut conn = manager(server).await;
    let e = event(saga_id, seq);
    let transition = Transition {
        saga: Some((
            saga_id.as_str(),
            Fence {
                owner,
                seq,
                ownership,
            },
        )),
        events: vec![&e],
        ..Default::default()
    };
    transition.write(&mut conn, &settings(server)).await
}

async fn write(server: &RedisServer, saga_id: &SagaId, owner: &str, seq: u64) -> Written {
    let ownership = if seq == 1 {
        Ownership::Join
    } else {
        Ownership::Stay
    };
    write_with(server, saga_id, owner, seq, ownership)
        .await
        .unwrap()
}

async fn register(server: &RedisServer, owner: &str, ttl: Duration) {
    let mut conn = manager(server).await;
    lease::register(&mut conn, &settings(server), owner, ttl)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_writes_and_each_transition_once() {
    let server = RedisServer::start();
    register(&server, "node-a.1", TTL).await;
    register(&server, "node-b.1", TTL).await;
    let saga = SagaId::generate();
    assert_eq!(write(&server, &saga, "node-a.1", 1).await, Written::Done);
    assert_eq!(
        write(&server, &saga, "node-a.1", 1).await,
        Written::AlreadyDone,
        "a retry"
    );
    assert_eq!(
        write(&server, &saga, "node-b.1", 1).await,
        Written::NotOurs,
        "a second creation"
    );
    assert_eq!(write(&server, &saga, "node-a.1", 2).await, Written::Done);

    // Another daemon takes the saga over: the former owner is fenced off.
    let mut conn = server.conn().await;
    let key = record(&saga);
    let mut take = redis::cmd("HSET");
    take.arg(&key).arg("owner").arg("node-b.2");
    must("HSET", take.query_async::<i64>(&mut conn)).await;
    assert_eq!(write(&server, &saga, "node-a.1", 3).await, Written::NotOurs);
    assert_eq!(write(&server, &saga, "node-b.2", 3).await, Written::Done);

    let events = xrange(&mut conn, "saga:events").await;
    let ns: Vec<String> = events.iter().map(|e| e["payload"].clone()).collect();
    assert_eq!(
        ns,
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#],
        "each write once, only the owner's"
    );
    let owned: Vec<String> = must(
        "SMEMBERS",
        redis::cmd("SMEMBERS")
            .arg(owned(&saga, "node-a.1"))
            .query_async(&mut conn),
    )
    .await;
    assert_eq!(
        owned,
        [saga.to_string()],
        "the creation joined its owner's set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_lease_ran_out_creates_nothing() {
    let server = RedisServer::start();
    let saga = SagaId::generate();
    // Never registered: no lease at all.
    assert_eq!(
        write(&server, &saga, "ghost.1", 1).await,
        Written::LeaseLost
    );
    // Registered, then run out (on Redis's clock).
    register(&server, "late.1", Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(write(&server, &saga, "late.1", 1).await, Written::LeaseLost);
    let mut conn = server.conn().await;
    let exists: i64 = must(
        "EXISTS",
        redis::cmd("EXISTS")
            .arg(record(&saga))
            .arg("saga:events")
            .arg(owned(&saga, "late.1"))
            .query_async(&mut conn),
    )
    .await;
    assert_eq!(exists, 0, "nothing at all was written");
    // A transition that ends the saga at once needs no live lease: the saga
    // is over, nobody has to drive it.
    let ended = write_with(&server, &saga, "late.1", 1, Ownership::Leave).await;
    assert_eq!(ended.unwrap(), Written::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_kind_refuses_the_whole_transition() {
    let server = RedisServer::start();
    register(&server, "node-a.1", TTL).await;
    let mut conn = server.conn().await;
    must(
        "HSET",
        redis::cmd("HSET")
            .arg("saga:events")
            .arg("not")
            .arg("a stream")
            .query_async::<i64>(&mut conn),
    )
    .await;
    let saga = SagaId::generate();
    let refused = write_with(&server, &saga, "node-a.1", 1, Ownership::Join).await;
    match refused {
        Err(e @ WriteError::WrongType { .. }) => {
            assert!(e.is_permanent());
            assert!(e.to_string().contains("saga:events"), "{e}");
        }
        other => panic!("expected a wrong-type refusal, got {other:?}"),
    }
    let exists: i64 = must(
        "EXISTS",
        redis::cmd("EXISTS")
            .arg(record(&saga))
            .arg(owned(&saga, "node-a.1"))
            .query_async(&mut conn),
    )
    .await;
    assert_eq!(exists, 0, "no half-written transition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_judged_on_redis_clock_and_claims_move_sagas() {
    let server = RedisServer::start();
    let s = settings(&server);
    let mut conn = manager(&server).await;
    register(&server, "alive.1", TTL).await;
    register(&server, "dying.1", Duration::from_millis(50)).await;
    let saga = SagaId::generate();
    assert_eq!(write(&server, &saga, "dying.1", 1).await, Written::Done);

    // The live one renews; the dying one cannot once its lease ran out.
    let (kept, now) = lease::renew(&mut conn, &s, "alive.1", TTL).await.unwrap();
    assert_eq!(kept, Renewal::Kept);
    assert!(now.abs_diff(now_ms()) < 5_000, "Redis's time in ms: {now}");
    assert_eq!(
        lease::claim_owner(&mut conn, &s, "dying.1", "alive.1")
            .await
            .unwrap(),
        OwnerClaim::Alive,
        "not yet run out"
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let (lost, _) = lease::renew(&mut conn, &s, "dying.1", TTL).await.unwrap();
    assert_eq!(lost, Renewal::Lost, "a lease that ran out is never renewed");
    let (_, dead) = lease::dead_owners(&mut conn, &s, 16).await.unwrap();
    assert_eq!(dead, ["dying.1"]);
    // A claimer without a live lease claims nothing.
    assert_eq!(
        lease::claim_owner(&mut conn, &s, "dying.1", "nobody.1")
            .await
            .unwrap(),
        OwnerClaim::ClaimerLost
    );
    assert_eq!(
        lease::claim_owner(&mut conn, &s, "dying.1", "alive.1")
            .await
            .unwrap(),
        OwnerClaim::Moved(vec![saga.to_string()])
    );
    assert_eq!(write(&server, &saga, "dying.1", 2).await, Written::NotOurs);
    assert_eq!(write(&server, &saga, "alive.1", 2).await, Written::Done);
    let (_, dead) = lease::dead_owners(&mut conn, &s, 16).await.unwrap();
    assert!(dead.is_empty(), "claimed owners are forgotten: {dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_is_found_and_claimed() {
    let server = RedisServer::start();
    let s = settings(&server);
    let mut conn = manager(&server).await;
    register(&server, "alive.1", TTL).await;
    // An older version's orphan: a saga in the set of an owner that has no
    // lease at all and that the registry of owners does not know.
    let saga = SagaId::generate();
    register(&server, "old.1", TTL).await;
    assert_eq!(write(&server, &saga, "old.1", 1).await, Written::Done);
    let mut raw = server.conn().await;
    for cmd in [
        redis::cmd("ZREM").arg(keys().leases()).arg("old.1").clone(),
        redis::cmd("SREM").arg(keys().owners()).arg("old.1").clone(),
    ] {
        must("forget the owner", cmd.query_async::<i64>(&mut raw)).await;
    }
    let (_, dead) = lease::dead_owners(&mut conn, &s, 16).await.unwrap();
    assert!(dead.is_empty(), "unknown until registered: {dead:?}");
    // What a daemon does at start: registers the owners of the sets found.
    must(
        "SADD",
        redis::cmd("SADD")
            .arg(keys().owners())
            .arg("old.1")
            .query_async::<i64>(&mut raw),
    )
    .await;
    let (_, dead) = lease::dead_owners(&mut conn, &s, 16).await.unwrap();
    assert_eq!(dead, ["old.1"]);
    assert_eq!(
        lease::claim_owner(&mut conn, &s, "old.1", "alive.1")
            .await
            .unwrap(),
        OwnerClaim::Moved(vec![saga.to_string()])
    );

    // A record edited by hand to name an owner that does not exist.
    let other = SagaId::generate();
    assert_eq!(write(&server, &other, "alive.1", 1).await, Written::Done);
    must(
        "HSET",
        redis::cmd("HSET")
            .arg(record(&other))
            .arg("owner")
            .arg("nobody.9")
            .query_async::<i64>(&mut raw),
    )
    .await;
    register(&server, "alive.2", TTL).await;
    let claim = |from| {
        let s = s.clone();
        let mut conn = conn.clone();
        let other = other.clone();
        async move {
            lease::claim_saga(&mut conn, &s, other.as_str(), "alive.2", from, true)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        claim(lease::From::Owner("someone.1")).await,
        SagaClaim::NotClaimed,
        "the owner changed since read"
    );
    assert_eq!(claim(lease::From::AnyDead).await, SagaClaim::Claimed);
    assert_eq!(
        claim(lease::From::AnyDead).await,
        SagaClaim::NotClaimed,
        "a live owner keeps it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_claimed_once_and_given_back_by_its_holder_only() {
    let server = RedisServer::start();
    let mut conn = manager(&server).await;
    let keys = keys();
    let retention = Duration::from_secs(60);
    let claim = |saga_id: &'static str| {
        let (mut conn, keys) = (conn.clone(), keys.clone());
        async move {
            idempotency::claim(&mut conn, &keys, "s", "k-1", saga_id, retention)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim("saga-a").await, Claim::Ours);
    assert_eq!(
        claim("saga-a").await,
        Claim::Taken("saga-a".into()),
        "a retry"
    );
    assert_eq!(claim("saga-b").await, Claim::Taken("saga-a".into()));
    let mut raw = server.conn().await;
    let ttl: i64 = must(
        "TTL",
        redis::cmd("TTL")
            .arg(keys.idempotency("s", "k-1"))
            .query_async(&mut raw),
    )
    .await;
    assert!((1..=60).contains(&ttl), "kept for the retention: {ttl}");

    let release = |saga_id: &'static str| {
        let (mut conn, keys) = (conn.clone(), keys.clone());
        async move {
            idempotency::release(&mut conn, &keys, "s", "k-1", saga_id)
                .await
                .unwrap()
        }
    };
    assert_eq!(release("saga-b").await, Release::NotHeld);
    assert_eq!(release("saga-a").await, Release::Released);
    assert_eq!(release("saga-a").await, Release::NotHeld);
    assert_eq!(
        claim("saga-b").await,
        Claim::Ours,
        "sent again once given back"
    );

    // A key of another kind in its place refuses the claim for good.
    let wrong = keys.idempotency("s", "k-2");
    must(
        "SADD",
        words(&format!("SADD {wrong} x")).query_async::<i64>(&mut raw),
    )
    .await;
    let refused = idempotency::claim(&mut conn, &keys, "s", "k-2", "saga-c", retention)
        .await
        .unwrap_err();
    assert!(sagaflow::retry::is_permanent(&refused), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_is_used_once() {
    let server = RedisServer::start();
    let mut conn = manager(&server).await;
    let kept_for = Duration::from_secs(120);
    let mut used = Vec::new();
    for nonce in ["n-1", "n-1", "n-2"] {
        used.push(
            control::use_nonce(&mut conn, &keys(), nonce, kept_for)
                .await
                .unwrap(),
        );
    }
    assert_eq!(used, [NonceUse::First, NonceUse::Replayed, NonceUse::First]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_version_is_kept_and_kept_longer_when_read() {
    let server = RedisServer::start();
    let mut conn = manager(&server).await;
    let text = "name: pinned\ntrigger: pinned:start\nsteps:\n  - name: a\n    stream: a:commands\n    timeout: 10s\n";
    let def = match sagaflow::definition::load_str(std::path::Path::new("pinned.yaml"), text) {
        Ok(def) => def,
        Err(e) => panic!("the test definition: {e}"),
    };
    assert_eq!(
        definitions::fetch(&mut conn, &keys(), &def.name, &def.version)
            .await
            .unwrap(),
        Version::NotKept
    );
    definitions::publish(&mut conn, &keys(), [&def])
        .await
        .unwrap();
    let key = keys().definition(&def.name, &def.version);
    let mut raw = server.conn().await;
    must(
        "EXPIRE",
        words(&format!("EXPIRE {key} 5")).query_async::<i64>(&mut raw),
    )
    .await;
    let fetched = definitions::fetch(&mut conn, &keys(), &def.name, &def.version)
        .await
        .unwrap();
    assert_eq!(
        fetched,
        Version::Kept {
            text: text.to_owned(),
            location: key.clone(),
        }
    );
    let ttl: i64 = must("TTL", redis::cmd("TTL").arg(&key).query_async(&mut raw)).await;
    assert!(ttl > 5, "read, it is kept for longer: {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_state_does_not_decode_is_told_apart_from_none() {
    let server = RedisServer::start();
    let mut conn = manager(&server).await;
    register(&server, "node-a.1", TTL).await;
    let saga = SagaId::generate();
    assert!(sagas::load_state(&mut conn, &keys(), saga.as_str())
        .await
        .unwrap()
        .is_none());
    assert_eq!(write(&server, &saga, "node-a.1", 1).await, Written::Done);
    let mut raw = server.conn().await;
    must(
        "HSET",
        redis::cmd("HSET")
            .arg(record(&saga))
            .arg("state")
            .arg("{not json")
            .query_async::<i64>(&mut raw),
    )
    .await;
    match sagas::load_state(&mut conn, &keys(), saga.as_str()).await {
        Err(LoadError::Unreadable { saga_id, .. }) => assert_eq!(saga_id, saga.as_str()),
        other => panic!("expected an unreadable record, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_tell_what_is_unfinished_and_keep_consumers_that_hold_entries() {
    let server = RedisServer::start();
    let mut conn = manager(&server).await;
    let (stream, group) = ("t:starts", "daemons");
    assert_eq!(
        groups::oldest_unfinished(&mut conn, stream, group)
            .await
            .unwrap(),
        Unfinished::NoGroup
    );
    assert_eq!(
        groups::pending_by_group(&mut conn, stream).await.unwrap(),
        None
    );
    assert_eq!(
        groups::create(&mut conn, stream, group).await.unwrap(),
        Created::Created
    );
    assert_eq!(
        groups::create(&mut conn, stream, group).await.unwrap(),
        Created::Existed
    );
    let mut raw = server.conn().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let id: String = must(
            "XADD",
            words(&format!("XADD {stream} * n {n}")).query_async(&mut raw),
        )
        .await;
        ids.push(id);
    }
    // Two read by `gone`, the first acknowledged: the second is unfinished.
    let read = format!("XREADGROUP GROUP {group} gone COUNT 2 STREAMS {stream} >");
    must(
        "XREADGROUP",
        words(&read).query_async::<redis::Value>(&mut raw),
    )
    .await;
    let ack = format!("XACK {stream} {group} {}", ids[0]);
    must("XACK", words(&ack).query_async::<i64>(&mut raw)).await;
    let second = sagaflow::streams::StreamId::parse(&ids[1]).unwrap();
    assert_eq!(
        groups::oldest_unfinished(&mut conn, stream, group)
            .await
            .unwrap(),
        Unfinished::From(second)
    );
    assert_eq!(
        groups::pending_by_group(&mut conn, stream).await.unwrap(),
        Some(vec![(group.to_owned(), 1)])
    );
    let pending = groups::pending_idle(&mut conn, stream, group, Duration::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].id.as_str(), pending[0].consumer.as_str()),
        (ids[1].as_str(), "gone")
    );
    assert_eq!(pending[0].deliveries, 1);

    // `idle` counts only once its entry is acknowledged; `me` is kept.
    let idle = format!("XREADGROUP GROUP {group} idle COUNT 1 STREAMS {stream} >");
    must(
        "XREADGROUP",
        words(&idle).query_async::<redis::Value>(&mut raw),
    )
    .await;
    let ack = format!("XACK {stream} {group} {}", ids[2]);
    must("XACK", words(&ack).query_async::<i64>(&mut raw)).await;
    let create = format!("XGROUP CREATECONSUMER {stream} {group} me");
    must("XGROUP", words(&create).query_async::<i64>(&mut raw)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let forgotten =
        groups::forget_idle_consumers(&mut conn, stream, group, "me", Duration::from_millis(5))
            .await
            .unwrap();
    assert_eq!(forgotten, 1);
    let consumers: Vec<std::collections::HashMap<String, redis::Value>> = must(
        "XINFO",
        words(&format!("XINFO CONSUMERS {stream} {group}")).query_async(&mut raw),
    )
    .await;
    let mut names: Vec<String> = consumers
        .iter()
        .filter_map(|c| match c.get("name") {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect();
    names.sort();
    assert_eq!(names, ["gone", "me"], "one holds an entry, one is ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_a_partition_knows_are_registered() {
    let server = RedisServer::start();
    let s = settings(&server);
    let mut conn = manager(&server).await;
    register(&server, "old.1", TTL).await;
    let saga = SagaId::generate();
    assert_eq!(write(&server, &saga, "old.1", 1).await, Written::Done);
    let mut raw = server.conn().await;
    must(
        "SREM",
        redis::cmd("SREM")
            .arg(keys().owners())
            .arg("old.1")
            .query_async::<i64>(&mut raw),
    )
    .await;
    let p = Partition::of(saga.as_str());
    assert_eq!(
        lease::register_owners_of(&mut conn, &s, p).await.unwrap(),
        1
    );
    let known: Vec<String> = must(
        "SMEMBERS",
        redis::cmd("SMEMBERS")
            .arg(keys().owners())
            .query_async(&mut raw),
    )
    .await;
    assert_eq!(known, ["old.1"]);
    // A record of owners of another kind names none.
    let other = Partition::all().find(|q| *q != p).unwrap();
    must(
        "SET",
        redis::cmd("SET")
            .arg(keys().owners_in(other))
            .arg("x")
            .query_async::<()>(&mut raw),
    )
    .await;
    assert_eq!(
        lease::register_owners_of(&mut conn, &s, other)
            .await
            .unwrap(),
        0
    );
}
