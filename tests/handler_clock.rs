//! The handlers' idea of time: `deadline_ms` is a time on Redis's clock,
//! so a handler host whose clock is ahead must still answer. The real
//! `sagaflow handlers` runs under libfaketime (`apt-get install faketime`,
//! which scripts/test does), 15 s ahead of the daemon and of Redis.

mod common;

use common::processes::{skewed_clock, Child};
use common::*;
use serde_json::json;
use std::process::Command;

/// How far ahead the handlers' clock is: more than the mission's step
/// timeouts (10 s), so a handler comparing deadlines with its own clock
/// skips every command.
const SKEW: &str = "+15s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_with_a_clock_ahead_still_answer_in_time() {
    let skewed = skewed_clock(SKEW);
    let skewed_env: Vec<(&str, &str)> = skewed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The library does skew a process's clock on this machine.
    let date = Command::new("date")
        .arg("+%s")
        .envs(skewed_env.iter().copied())
        .output()
        .expect("date runs");
    let skewed: u64 = String::from_utf8_lossy(&date.stdout)
        .trim()
        .parse()
        .unwrap();
    let ahead = skewed as i64 - (now_ms() / 1000) as i64;
    assert!((14..=16).contains(&ahead), "faketime skews by {ahead} s");

    let server = RedisServer::start();
    let url = server.url();
    let handlers = Child::spawn(
        "skewed-handlers",
        &["handlers", "--redis-url", &url],
        &skewed_env,
    );
    let daemon = Child::daemon(&url, "clock-true");
    daemon.wait_started().await;
    let mut conn = server.conn().await;

    start_mission(
        &mut conn,
        "skewed-1",
        &json!({"area": "hall-a", "robots": 2}),
    )
    .await;
    let events = saga_events(&server, "skewed-1").await;
    let end = events.last().expect("a terminal event");
    assert_eq!(end.event_type, "saga_completed", "\n{}", describe(&events));
    let log = handlers.stderr();
    assert!(!log.contains("deadline passed"), "{log}");
    assert!(log.contains("deadlines are read on Redis's clock"), "{log}");
}
