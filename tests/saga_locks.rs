//! Semantic locks against real daemon processes and real Redis (one, and a
//! cluster): missions on the same robots take turns, across a kill -9 of
//! the daemon driving both and the takeover of their sagas; sagas taking
//! the same locks in opposite orders never wait for each other in a
//! circle; waiters are served in the order they came; a lock not had in
//! time fails its step, an abandoned saga lets go, a key of the wrong kind
//! fails the step with its reason; every lock is let go of exactly once.

mod common;

use common::processes::{assert_audit, Child, LEASE_TTL};
use common::*;
use redis::aio::ConnectionLike;
use std::time::Duration;

on_both!(
    missions_on_the_same_robots_take_turns_across_a_kill,
    sagas_taking_the_same_locks_in_opposite_orders_all_complete,
);

/// A wait long enough for several sagas queueing one after the other.
const LONG: Duration = Duration::from_secs(40);

async fn events_now(conn: &mut impl ConnectionLike) -> Vec<Event> {
    let entries = xrange(conn, "saga:events").await;
    entries.into_iter().map(Event::from_fields).collect()
}

fn of<'a>(events: &'a [Event], correlation_id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.correlation_id == correlation_id)
        .collect()
}

/// The position in `events` of the first event of this type of this saga.
fn first(events: &[Event], correlation_id: &str, event_type: &str) -> Option<usize> {
    events
        .iter()
        .position(|e| e.correlation_id == correlation_id && e.event_type == event_type)
}

fn ended(events: &[Event], correlation_id: &str) -> bool {
    events
        .iter()
        .any(|e| e.correlation_id == correlation_id && e.is_terminal())
}

/// The lock's queue (holder first), or empty.
async fn queue(conn: &mut impl ConnectionLike, lock: &str) -> Vec<String> {
    let mut cmd = redis::cmd("LRANGE");
    cmd.arg(format!("saga:lock:{{{lock}}}")).arg(0).arg(-1);
    let entries: Vec<String> = must("LRANGE", cmd.query_async(conn)).await;
    entries
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            v["saga_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn missions_on_the_same_robots_take_turns_across_a_kill(server: Redis) {
    let url = server.url();
    let mut first_daemon = Child::daemon(&url, "locks-a");
    let _handlers = Child::handlers(&url, &["--work-ms", "800"]);
    let mut conn = server.conn().await;
    let input = serde_json::json!({"area": "dock", "robots": 2});
    // Both at once: whichever wants the robots second waits.
    start_mission(&mut conn, "m1", &input).await;
    start_mission(&mut conn, "m2", &input).await;
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        events.iter().any(|e| e.event_type == "lock_waiting")
    })
    .await;
    let waiting = events
        .iter()
        .find(|e| e.event_type == "lock_waiting")
        .unwrap();
    let (holder, waiter) = match waiting.correlation_id.as_str() {
        "m2" => ("m1", "m2"),
        _ => ("m2", "m1"),
    };
    let holder_id = of(&events, holder)[0].saga_id.clone();
    let waiter_id = of(&events, waiter)[0].saga_id.clone();
    assert_eq!(
        queue(&mut conn, "robot:dock/robot-1").await,
        [holder_id.clone(), waiter_id.clone()],
        "the holder first, the waiter after"
    );
    // The daemon driving both dies; another takes both over.
    first_daemon.kill9();
    let second = Child::daemon(&url, "locks-b");
    second
        .wait_for_log("took over the sagas of a daemon", SAGA_WAIT)
        .await;
    let events = wait_for_events(&server, LONG, |events| {
        ended(events, holder) && ended(events, waiter)
    })
    .await;
    for who in [holder, waiter] {
        let last = of(&events, who)
            .into_iter()
            .find(|e| e.is_terminal())
            .unwrap();
        assert_eq!(last.event_type, "saga_completed", "{}", describe(&events));
    }
    // The waiter took a robot only once the holder had let go of both,
    // and each let go once.
    let released = first(&events, holder, "locks_released").expect("released");
    let taken = first(&events, waiter, "lock_acquired").expect("taken");
    assert!(released < taken, "{}", describe(&events));
    for who in [holder, waiter] {
        let n = of(&events, who)
            .iter()
            .filter(|e| e.event_type == "locks_released")
            .count();
        assert_eq!(n, 1, "{who} let go once:\n{}", describe(&events));
        let taken: Vec<String> = of(&events, who)
            .iter()
            .filter(|e| e.event_type == "lock_acquired")
            .map(|e| e.payload["lock"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            taken,
            ["robot:dock/robot-1", "robot:dock/robot-2"],
            "{who} took each robot once, in order"
        );
    }
    for robot in ["robot:dock/robot-1", "robot:dock/robot-2"] {
        assert!(queue(&mut conn, robot).await.is_empty(), "{robot} is free");
    }
    assert_audit(&events, &["m1".to_owned(), "m2".to_owned()]);
}

/// One step locking `k:<a>` and `k:<b>`, sent to the simulated explorers.
const PAIRS: &str = "\
name: pairs
trigger: pairs:start
steps:
  - name: pair
    stream: exploration:commands
    command: perform_exploration
    locks: ['k:${input.a}', 'k:${input.b}']
    lock_timeout: 60s
    input: { robot_id: '${input.a}' }
";

/// A daemon process on a directory holding `yaml` (as `<name>.yaml`).
fn daemon_on(url: &str, node_id: &str, dir: &std::path::Path, extra: &[&str]) -> Child {
    let dir = dir.to_str().unwrap();
    let mut args = vec![
        "run",
        "--redis-url",
        url,
        "--node-id",
        node_id,
        "--sagas",
        dir,
    ];
    args.extend(["--lease-ttl", LEASE_TTL]);
    args.extend(extra);
    Child::spawn(node_id, &args, &[("SAGAFLOW_OPERATOR_KEYS", OPERATOR_KEY)])
}

fn sagas_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, yaml) in files {
        std::fs::write(dir.path().join(name), yaml).unwrap();
    }
    dir
}

async fn start_on(
    conn: &mut impl ConnectionLike,
    stream: &str,
    id: &str,
    input: serde_json::Value,
) {
    let payload = input.to_string();
    xadd(
        conn,
        stream,
        &[("correlation_id", id), ("payload", &payload)],
    )
    .await;
}

async fn sagas_taking_the_same_locks_in_opposite_orders_all_complete(server: Redis) {
    let url = server.url();
    let dir = sagas_dir(&[("pairs.yaml", PAIRS)]);
    let _daemons = [
        daemon_on(&url, "pairs-a", dir.path(), &[]),
        daemon_on(&url, "pairs-b", dir.path(), &[]),
    ];
    let _handlers = Child::handlers(&url, &["--work-ms", "50"]);
    let mut conn = server.conn().await;
    let ids: Vec<String> = (0..12).map(|i| format!("pair-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        // Half take (p, q), half (q, p): taken in the order of their names,
        // both orders are one order.
        let input = match i % 2 {
            0 => serde_json::json!({"a": "p", "b": "q"}),
            _ => serde_json::json!({"a": "q", "b": "p"}),
        };
        start_on(&mut conn, "pairs:start", id, input).await;
    }
    let events = wait_for_events(&server, LONG, |events| {
        ids.iter().all(|id| ended(events, id))
    })
    .await;
    for id in &ids {
        let last = of(&events, id)
            .into_iter()
            .find(|e| e.is_terminal())
            .unwrap();
        assert_eq!(
            last.event_type,
            "saga_completed",
            "{id}:\n{}",
            describe(&events)
        );
        let taken: Vec<&str> = of(&events, id)
            .iter()
            .filter(|e| e.event_type == "lock_acquired")
            .map(|e| e.payload["lock"].as_str().unwrap())
            .collect();
        assert_eq!(taken, ["k:p", "k:q"], "{id}: in name order");
    }
    // Never two holders: each saga's work ran between its taking both
    // locks and its letting go, and no two such spans overlap.
    let mut spans: Vec<(usize, usize)> = ids
        .iter()
        .map(|id| {
            let from = events
                .iter()
                .rposition(|e| e.correlation_id == *id && e.event_type == "lock_acquired")
                .unwrap();
            let to = first(&events, id, "locks_released").unwrap();
            (from, to)
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 < pair[1].0, "overlapping holders: {spans:?}");
    }
    assert!(queue(&mut conn, "k:p").await.is_empty());
    assert!(queue(&mut conn, "k:q").await.is_empty());
}

/// One step locking `k:solo` for a while.
const SOLO: &str = "\
name: solo
trigger: solo:start
steps:
  - name: hold
    stream: exploration:commands
    command: perform_exploration
    locks: ['k:solo']
    lock_timeout: LOCK_TIMEOUT
    input: { robot_id: '${input.who}' }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_the_order_they_came() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = sagas_dir(&[("solo.yaml", &SOLO.replace("LOCK_TIMEOUT", "60s"))]);
    let _daemon = daemon_on(&url, "fifo", dir.path(), &[]);
    let _handlers = Child::handlers(&url, &["--work-ms", "300"]);
    let mut conn = server.conn().await;
    let ids = ["fifo-0", "fifo-1", "fifo-2", "fifo-3"];
    for (i, id) in ids.iter().enumerate() {
        start_on(&mut conn, "solo:start", id, serde_json::json!({"who": id})).await;
        // Each in the queue before the next comes.
        let wanted = if i == 0 {
            "lock_acquired"
        } else {
            "lock_waiting"
        };
        wait_for_events(&server, SAGA_WAIT, |events| {
            first(events, id, wanted).is_some()
        })
        .await;
    }
    let events = wait_for_events(&server, LONG, |events| {
        ids.iter().all(|id| ended(events, id))
    })
    .await;
    let order: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "lock_acquired")
        .map(|e| e.correlation_id.as_str())
        .collect();
    assert_eq!(order, ids, "{}", describe(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_not_had_in_time_fails_the_step_and_leaves_the_queue() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = sagas_dir(&[("solo.yaml", &SOLO.replace("LOCK_TIMEOUT", "1s"))]);
    let _daemon = daemon_on(&url, "timeout", dir.path(), &[]);
    let _handlers = Child::handlers(&url, &["--work-ms", "4000"]);
    let mut conn = server.conn().await;
    start_on(
        &mut conn,
        "solo:start",
        "long",
        serde_json::json!({"who": "a"}),
    )
    .await;
    wait_for_events(&server, SAGA_WAIT, |e| {
        first(e, "long", "lock_acquired").is_some()
    })
    .await;
    start_on(
        &mut conn,
        "solo:start",
        "late",
        serde_json::json!({"who": "b"}),
    )
    .await;
    let events = saga_events(&server, "late").await;
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "saga_compensated", "{}", describe(&events));
    let reason = last.payload["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not take lock `k:solo` within its lock_timeout of 1s: saga"),
        "{reason}"
    );
    // Gone from the queue at once: only the holder is left.
    let holder = first(&events_now(&mut conn).await, "long", "saga_started").unwrap();
    let holder_id = events_now(&mut conn).await[holder].saga_id.clone();
    assert_eq!(queue(&mut conn, "k:solo").await, [holder_id]);
    let events = saga_events(&server, "long").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
    assert!(queue(&mut conn, "k:solo").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_saga_lets_go_of_its_robots() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "abandon");
    // Every mission fails at its last step, and the undoing of its
    // exploration fails too: it ends failed, holding its robots.
    let _handlers = Child::handlers(
        &url,
        &[
            "--fail-step",
            "integrate_maps",
            "--fail-compensation",
            "perform_exploration",
        ],
    );
    let mut conn = server.conn().await;
    let input = serde_json::json!({"area": "pit", "robots": 1});
    start_mission(&mut conn, "stuck", &input).await;
    let events = saga_events(&server, "stuck").await;
    assert_eq!(events.last().unwrap().event_type, "saga_failed");
    let stuck_id = events[0].saga_id.clone();
    assert!(
        !events.iter().any(|e| e.event_type == "locks_released"),
        "a failed saga keeps its locks"
    );
    start_mission(&mut conn, "next", &input).await;
    wait_for_events(&server, SAGA_WAIT, |e| {
        first(e, "next", "lock_waiting").is_some()
    })
    .await;
    let o = sagaflow_cli(&[
        "abandon",
        &stuck_id,
        "--redis-url",
        &url,
        "--reason",
        "robot taken back by hand",
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let events = wait_for_events(&server, SAGA_WAIT, |e| {
        first(e, "next", "lock_acquired").is_some()
    })
    .await;
    let released = first(&events, "stuck", "locks_released").expect("let go of on abandon");
    let taken = first(&events, "next", "lock_acquired").unwrap();
    assert!(released < taken, "{}", describe(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_key_of_the_wrong_kind_fails_the_step_and_nothing_else() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "wrong-kind");
    let _handlers = Child::handlers(&url, &[]);
    let mut conn = server.conn().await;
    let mut cmd = redis::cmd("SET");
    cmd.arg("saga:lock:{robot:bad/robot-1}").arg("not a lock");
    let _: () = must("SET", cmd.query_async(&mut conn)).await;
    start_mission(
        &mut conn,
        "bad",
        &serde_json::json!({"area": "bad", "robots": 1}),
    )
    .await;
    let events = saga_events(&server, "bad").await;
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "saga_compensated", "{}", describe(&events));
    let reason = last.payload["reason"].as_str().unwrap();
    assert!(reason.contains("is not a lock"), "{reason}");
    // The key is left as it was; other missions go on.
    let mut cmd = redis::cmd("GET");
    cmd.arg("saga:lock:{robot:bad/robot-1}");
    let kept: String = must("GET", cmd.query_async(&mut conn)).await;
    assert_eq!(kept, "not a lock");
    start_mission(
        &mut conn,
        "good",
        &serde_json::json!({"area": "good", "robots": 1}),
    )
    .await;
    let events = saga_events(&server, "good").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
}

/// A lock's queue is bounded: past `MAX_LOCK_QUEUE` sagas, asking is
/// refused (and the step fails), nothing is added; asking again is
/// answered the same, and never adds a saga twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_queue_is_bounded_and_asking_twice_adds_nothing() {
    use sagaflow::protocol::locks::{LockEntry, MAX_LOCK_QUEUE};
    use sagaflow::store::keys::Keys;
    use sagaflow::store::locks::{acquire, Acquired, LockError};
    let server = RedisServer::start();
    let mut conn = server.any_conn().await;
    let keys = Keys::new("saga:");
    let who = |i: usize| LockEntry {
        saga_id: format!("{i:032x}"),
        saga: "s".into(),
        step: "t".into(),
        since_ms: 1,
    };
    for i in 0..MAX_LOCK_QUEUE {
        let got = acquire(&mut conn, &keys, "k:full", &who(i)).await.unwrap();
        match i {
            0 => assert_eq!(got, Acquired::Held),
            _ => assert!(matches!(got, Acquired::Queued { ahead, .. } if ahead == i)),
        }
    }
    let again = acquire(&mut conn, &keys, "k:full", &who(5)).await.unwrap();
    assert!(
        matches!(again, Acquired::Queued { ahead: 5, holder: Some(ref h) } if h.saga_id == who(0).saga_id)
    );
    let full = acquire(&mut conn, &keys, "k:full", &who(MAX_LOCK_QUEUE)).await;
    assert!(matches!(full, Err(LockError::Full { .. })), "{full:?}");
    assert_eq!(queue(&mut conn, "k:full").await.len(), MAX_LOCK_QUEUE);
}
