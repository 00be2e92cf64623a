//! `sagaflow locks` and what `sagaflow status` shows of locks and waits, as
//! an operator runs them, against a real daemon and the simulated handlers
//! on one Redis and on a cluster: two sagas contend for one robot's lock,
//! one holds it while it waits for a signal, the other waits behind it;
//! once the holder is cancelled, the other takes the lock.

mod common;

use common::locks::{lock_job_sagas, start_lock_job, wait_for_contention};
use common::processes::{Child, LEASE_TTL};
use common::*;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

on_both!(two_sagas_contending_for_a_lock_are_shown_holding_and_waiting);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

/// `sagaflow locks <args> --json`, parsed.
async fn locks_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["locks", "--redis-url", url, "--json"];
    all.extend(args);
    let o = sagaflow_cli(&all).await;
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", both(&o)))
}

/// The line of the table for `lock` and `place` (`holds`, `waits 1`).
fn row<'a>(table: &'a str, lock: &str, place: &str) -> &'a str {
    table
        .lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(lock) && place.split(' ').all(|p| words.next() == Some(p))
        })
        .unwrap_or_else(|| panic!("no `{lock} {place}` line in:\n{table}"))
}

async fn two_sagas_contending_for_a_lock_are_shown_holding_and_waiting(server: Redis) {
    let url = server.url();
    let sagas = lock_job_sagas();
    let sagas_dir = sagas.path().to_str().expect("a UTF-8 path").to_owned();
    let args = [
        "run",
        "--redis-url",
        &url,
        "--node-id",
        "locks-a",
        "--sagas",
        &sagas_dir,
        "--lease-ttl",
        LEASE_TTL,
    ];
    let _daemon = Child::spawn(
        "locks-a",
        &args,
        &[("SAGAFLOW_OPERATOR_KEYS", OPERATOR_KEY)],
    );
    let _handlers = Child::handlers(&url, &[]);
    let mut conn = server.conn().await;
    start_lock_job(&mut conn, "first", 7).await;
    wait_for_contention(&server, &["first"], &[]).await;
    start_lock_job(&mut conn, "second", 7).await;
    start_lock_job(&mut conn, "third", 8).await;
    let ids = wait_for_contention(&server, &["first", "third"], &["second"]).await;
    let (first, third, second) = (&ids[0], &ids[1], &ids[2]);

    // Every lock in use, by name: robot:7 held by the first, the second
    // waiting; robot:8 held by the third.
    let o = sagaflow_cli(&["locks", "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let table = stdout(&o);
    assert!(
        table.starts_with("lock ") && table.contains(" queue ") && table.contains(" since"),
        "{table}"
    );
    for (lock, place, id) in [
        ("robot:7", "holds", first),
        ("robot:7", "waits 1", second),
        ("robot:8", "holds", third),
    ] {
        let line = row(&table, lock, place);
        assert!(line.contains(&format!("{id}  lock_job ")), "{line}");
        assert!(line.contains(" take ") && line.ends_with(" ago"), "{line}");
    }
    assert_eq!(table.lines().count(), 4, "{table}");
    let listed = locks_json(&url, &[]).await;
    let names: Vec<&str> = (listed.as_array().unwrap().iter())
        .map(|q| q["lock"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["robot:7", "robot:8"], "{listed}");

    // Named locks, whatever holds them; one nobody holds is free.
    let named = locks_json(&url, &["robot:7", "robot:99"]).await;
    let robot7 = &named[0];
    assert_eq!(robot7["holder"]["saga_id"], first.as_str(), "{named}");
    assert_eq!(robot7["holder"]["saga"], "lock_job");
    assert_eq!(robot7["holder"]["step"], "take");
    let held = robot7["holder"]["held_since_ms"]
        .as_u64()
        .expect("when taken");
    assert!(
        held >= robot7["holder"]["since_ms"].as_u64().unwrap(),
        "{named}"
    );
    let waiters: Vec<&str> = (robot7["waiters"].as_array().unwrap().iter())
        .map(|w| w["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(waiters, [second.as_str()]);
    assert_eq!(named[1]["lock"], "robot:99");
    assert!(named[1]["holder"].is_null(), "{named}");
    let o = sagaflow_cli(&["locks", "robot:99", "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(row(&stdout(&o), "robot:99", "free").ends_with("free"));

    // A name no lock can have is a usage error, before Redis is asked.
    for bad in ["robot 7", "robot:{7}", ""] {
        let o = sagaflow_cli(&["locks", bad, "--redis-url", "redis://127.0.0.1:1"]).await;
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", both(&o));
        assert!(
            both(&o).contains("must be 1 to 200 letters"),
            "{}",
            both(&o)
        );
    }

    // `status` of the holder: the lock it holds, the signal it awaits.
    let o = sagaflow_cli(&["status", first, "--redis-url", &url]).await;
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        text.contains("lock held          robot:7 (taken by step take at "),
        "{text}"
    );
    assert!(
        text.contains("awaits signal      approval for step approve, until "),
        "{text}"
    );
    assert!(text.contains("step approve"), "{text}");
    assert!(text.contains("awaiting"), "{text}");
    // ... and of the saga waiting: who holds the lock, how many are ahead.
    let o = sagaflow_cli(&["status", second, "--redis-url", &url]).await;
    let text = stdout(&o);
    let wait = format!(
        "waits for lock     robot:7 for step take: held by saga {first} (lock_job, step take), \
         1 ahead; the step fails at "
    );
    assert!(text.contains(&wait), "{text}");
    assert!(!text.contains("lock held"), "{text}");
    assert!(!text.contains("no events left"), "{text}");

    // The holder cancelled: it lets go of its lock, and the second takes it.
    let o = sagaflow_cli(&[
        "cancel",
        first,
        "--redis-url",
        &url,
        "--reason",
        "robot needed elsewhere",
        "--wait",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "compensated: {}", both(&o));
    let deadline = tokio::time::Instant::now() + SAGA_WAIT;
    let robot7 = loop {
        let named = locks_json(&url, &["robot:7"]).await;
        if named[0]["holder"]["saga_id"] == second.as_str() {
            break named[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second saga did not take robot:7: {named}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(robot7["waiters"], Value::Array(vec![]), "{robot7}");
    // First at the head of the queue, then, once its daemon asks again,
    // holding it by its record too.
    loop {
        let o = sagaflow_cli(&["status", second, "--redis-url", &url]).await;
        let text = stdout(&o);
        if text.contains("lock held          robot:7 (taken by step take at ") {
            break;
        }
        assert!(
            text.contains("robot:7 for step take: held by this saga, being taken"),
            "{text}"
        );
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = locks_json(&url, &[]).await;
    assert!(!listed.to_string().contains(first.as_str()), "{listed}");
}
