//! Crash recovery with real processes: `sagaflow run` daemons and the
//! simulated handlers run as children of the test and are killed (SIGKILL),
//! paused (SIGSTOP), stopped (SIGTERM) and restarted by pid, and Redis is
//! restarted under them. Whatever happens, every saga ends exactly once and
//! the audit stream stays consistent (see `common::processes::audit`).
//! Each test runs on one Redis and on a cluster, but for the one that
//! restarts Redis itself.

mod common;

use common::processes::*;
use common::*;
use std::time::{Duration, Instant};

on_both!(
    a_daemon_killed_mid_flight_is_taken_over_by_a_new_one,
    a_daemon_killed_right_after_starts_were_written_loses_none,
    a_daemon_killed_as_it_took_its_first_start_loses_none,
    a_daemon_killed_during_a_compensation_is_taken_over,
    three_daemons_killed_at_random_end_every_saga_once,
    a_daemon_paused_past_its_lease_writes_nothing_for_sagas_taken_from_it,
    sigterm_exits_cleanly_and_hands_the_sagas_over_at_once,
);

/// The longest the sagas of a test may take to end after the last fault.
const END_WAIT: Duration = Duration::from_secs(20);
/// How long after the end of the sagas late writes get to show up.
const SETTLE: Duration = Duration::from_millis(500);
/// A daemon killed with a 1s lease has its sagas moving again within about
/// the lease and a second; the rest is room for a busy machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(3);

fn all_have(events: &[Event], ids: &[String], event_type: &str, step: &str) -> bool {
    ids.iter().all(|id| has(events, id, event_type, step))
}

fn count(events: &[Event], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

/// Starts read by the trigger group but not acknowledged.
async fn pending_starts(server: &Redis) -> i64 {
    let mut conn = server.conn().await;
    pending_count(&mut conn, "mission:start", "sagaflow").await
}

// ------------------------------------------------------------- kill -9

async fn a_daemon_killed_mid_flight_is_taken_over_by_a_new_one(server: Redis) {
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "300"]);
    let mut first = Child::daemon(&url, "node-a");
    first.wait_started().await;
    let mut conn = server.conn().await;
    let ids = start_missions(&mut conn, "mid", 10).await;
    let mut log = EventLog::on(&server);
    log.wait_until(SAGA_WAIT, "every saga past its first step", |events| {
        all_have(events, &ids, "step_started", "plan_route")
    })
    .await;

    first.kill9();
    let killed_at = now_ms();
    let at_kill = log.poll().await.len();
    assert_eq!(not_ended(log.events(), &ids).len(), ids.len(), "mid-flight");
    let _second = Child::daemon(&url, "node-b");

    log.wait_all_ended(&ids, END_WAIT).await;
    let events = log.settle(SETTLE).await;
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
    let takeover = first_write_after(&events, at_kill, killed_at).expect("events after the kill");
    assert!(
        takeover <= TAKEOVER_BOUND,
        "the first write after the kill came {takeover:?} after it"
    );
    eprintln!("first write {takeover:?} after the kill");
}

/// Kills the only daemon right after starts were written, before it could
/// take them (`at_first_start` false) or as soon as it took the first one;
/// a daemon started afterwards takes every one exactly once.
async fn kill_around_the_starts(server: &Redis, at_first_start: bool) {
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "100"]);
    let mut first = Child::daemon(&url, "node-a");
    first.wait_started().await;
    let mut conn = server.conn().await;
    let prefix = if at_first_start { "first" } else { "early" };
    let ids = start_missions(&mut conn, prefix, 30).await;
    let mut log = EventLog::on(server);
    if at_first_start {
        log.wait_until(SAGA_WAIT, "a first saga_started", |events| {
            count(events, "saga_started") > 0
        })
        .await;
    }

    first.kill9();
    let started = count(log.poll().await, "saga_started");
    let pending = pending_starts(server).await;
    eprintln!(
        "{prefix}: at the kill {started} of {} starts were taken and {pending} read but not acknowledged",
        ids.len()
    );
    let _second = Child::daemon(&url, "node-b");

    log.wait_all_ended(&ids, END_WAIT).await;
    let events = log.settle(SETTLE).await;
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
    assert_eq!(pending_starts(server).await, 0, "every start acknowledged");
}

async fn a_daemon_killed_right_after_starts_were_written_loses_none(server: Redis) {
    kill_around_the_starts(&server, false).await;
}

async fn a_daemon_killed_as_it_took_its_first_start_loses_none(server: Redis) {
    kill_around_the_starts(&server, true).await;
}

async fn a_daemon_killed_during_a_compensation_is_taken_over(server: Redis) {
    let url = server.url();
    let fail = ["--fail-step", "integrate_maps", "--work-ms", "200"];
    let _handlers = Child::handlers(&url, &fail);
    let mut first = Child::daemon(&url, "node-a");
    first.wait_started().await;
    let mut conn = server.conn().await;
    let ids = start_missions(&mut conn, "undo", 10).await;
    let mut log = EventLog::on(&server);
    log.wait_until(SAGA_WAIT, "a first compensation_started", |events| {
        count(events, "compensation_started") > 0
    })
    .await;

    first.kill9();
    let compensating = count(log.poll().await, "compensation_started");
    let ended = ids.len() - not_ended(log.events(), &ids).len();
    eprintln!("at the kill: {compensating} compensations started, {ended} sagas ended");
    let _second = Child::daemon(&url, "node-b");

    log.wait_all_ended(&ids, END_WAIT).await;
    let events = log.settle(SETTLE).await;
    assert_all_ended_as(&events, &ids, "saga_compensated");
    assert_audit(&events, &ids);
    // Each robot's exploration (undone at once), the route, the allocation.
    let undone = mission_undone(2);
    for id in &ids {
        let end = of(&events, id)
            .into_iter()
            .find(|e| e.event_type == "saga_compensated")
            .expect("ended compensated");
        assert_eq!(end.payload["failed_step"], "integrate_maps", "{id}");
        let compensated: Vec<String> = (end.payload["compensated"].as_array().unwrap().iter())
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(branches_sorted(&compensated), undone, "{id}");
    }
}

async fn three_daemons_killed_at_random_end_every_saga_once(server: Redis) {
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "100"]);
    let mut daemons: Vec<Child> = (0..3)
        .map(|i| Child::daemon(&url, &format!("node-{i}")))
        .collect();
    for daemon in &daemons {
        daemon.wait_started().await;
    }
    let mut conn = server.conn().await;
    let mut log = EventLog::on(&server);
    let mut ids = Vec::new();
    let mut killed = Vec::new();
    for round in 0..4 {
        ids.extend(start_missions(&mut conn, &format!("r{round}"), 15).await);
        // A saga takes about half a second here: the kill comes while the
        // batch is in flight, then the next round starts ~1.5s later.
        let jitter = random_below(300) as u64;
        tokio::time::sleep(Duration::from_millis(50 + jitter)).await;
        let victim = random_below(daemons.len());
        // Restarted under the same node id, as a supervisor would.
        daemons[victim].restart();
        let in_flight = not_ended(log.poll().await, &ids).len();
        killed.push((victim, in_flight));
        tokio::time::sleep(Duration::from_millis(1150 - jitter)).await;
    }
    eprintln!("killed (daemon, sagas in flight): {killed:?}");

    log.wait_all_ended(&ids, END_WAIT).await;
    let events = log.settle(SETTLE).await;
    assert_eq!(ids.len(), 60);
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
    for daemon in &mut daemons {
        assert!(daemon.is_running(), "{} exited", daemon.name());
    }
}

// ----------------------------------------------------- SIGSTOP, SIGCONT

async fn a_daemon_paused_past_its_lease_writes_nothing_for_sagas_taken_from_it(server: Redis) {
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "300"]);
    let mut paused = Child::daemon(&url, "node-a");
    paused.wait_started().await;
    let mut conn = server.conn().await;
    let ids = start_missions(&mut conn, "paused", 8).await;
    let mut log = EventLog::on(&server);
    // Every saga taken by the only daemon, and waiting on a handler.
    log.wait_until(SAGA_WAIT, "every saga's first step sent", |events| {
        all_have(events, &ids, "step_started", "allocate_resources")
    })
    .await;
    let mut other = Child::daemon(&url, "node-b");
    other.wait_started().await;

    paused.stop();
    let stopped_at = Instant::now();
    log.wait_all_ended(&ids, END_WAIT).await;
    let taken_over_in = stopped_at.elapsed();
    let at_end = log.poll().await.len();
    let streams = [
        "resources:commands",
        "routing:commands",
        "exploration:commands",
        "mapping:commands",
    ];
    let mut marks = Vec::new();
    for stream in streams {
        marks.push((stream, last_id(&mut conn, stream).await));
    }

    // Back after more than its lease: its saga tasks see replies and
    // deadlines that came meanwhile, and must not write for those sagas.
    paused.cont();
    let events = log.settle(Duration::from_millis(2500)).await;
    let ours = |id: &str| ids.iter().any(|i| i == id);
    let late: Vec<String> = events[at_end..]
        .iter()
        .filter(|e| ours(&e.correlation_id))
        .map(|e| format!("{} {}", e.correlation_id, e.label()))
        .collect();
    assert!(late.is_empty(), "written after the takeover: {late:?}");
    for (stream, mark) in &marks {
        let sent = entries_after(&mut conn, stream, mark).await;
        let late: Vec<_> = sent
            .iter()
            .filter(|c| ours(c.get("correlation_id").map_or("", String::as_str)))
            .collect();
        assert!(late.is_empty(), "{stream} after the takeover: {late:#?}");
    }
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
    assert!(paused.is_running(), "the paused daemon exited");

    // It keeps working: alone now, it drives new sagas to their end.
    other.kill9();
    let more = start_missions(&mut conn, "after", 3).await;
    log.wait_all_ended(&more, END_WAIT).await;
    let events = log.settle(SETTLE).await;
    assert_all_ended_as(&events, &more, "saga_completed");
    let all: Vec<String> = ids.iter().chain(&more).cloned().collect();
    assert_audit(&events, &all);
    eprintln!("sagas of the paused daemon ended {taken_over_in:?} after the pause");
}

// --------------------------------------------------------------- SIGTERM

async fn sigterm_exits_cleanly_and_hands_the_sagas_over_at_once(server: Redis) {
    // A long lease, set through the environment: a daemon that died without
    // releasing it would keep its sagas for at least 6s (2/3 of it).
    let lease_ms = 9_000;
    let env = [
        ("SAGAFLOW_LEASE_TTL", "9s"),
        ("SAGAFLOW_SHUTDOWN_GRACE", "4s"),
    ];
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "300"]);
    let mut leaving = Child::daemon_with(&url, "node-a", &[], &env);
    leaving.wait_started().await;
    let mut conn = server.conn().await;
    let ids = start_missions(&mut conn, "term", 8).await;
    let mut log = EventLog::on(&server);
    log.wait_until(SAGA_WAIT, "every saga past its first step", |events| {
        all_have(events, &ids, "step_started", "plan_route")
    })
    .await;
    let staying = Child::daemon_with(&url, "node-b", &[], &env);
    staying.wait_started().await;

    let asked = Instant::now();
    leaving.term();
    let status = leaving.wait_exit(Duration::from_secs(5)).await;
    let exited_in = asked.elapsed();
    let exited_at = now_ms();
    let status = status.unwrap_or_else(|| panic!("still running 5s after SIGTERM"));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let in_flight = not_ended(log.poll().await, &ids).len();
    let at_exit = log.events().len();

    log.wait_all_ended(&ids, END_WAIT).await;
    let ended_in = Duration::from_millis(now_ms() - exited_at);
    let events = log.settle(SETTLE).await;
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
    let takeover = first_write_after(&events, at_exit, exited_at);
    eprintln!(
        "exit {exited_in:?} after SIGTERM; {in_flight} sagas left in flight; \
         first write {takeover:?} and every end {ended_in:?} after the exit"
    );
    assert!(in_flight > 0, "nothing was left to hand over");
    let crash_takeover = Duration::from_millis(lease_ms * 2 / 3);
    assert!(
        ended_in < crash_takeover,
        "the sagas ended {ended_in:?} after the exit: no faster than after a crash"
    );
}

// ---------------------------------------------------------- Redis restart

// One Redis only: it kills and revives the server. On a cluster a master
// killed fails over to its replica instead: tests/engine_cluster.rs kills
// one mid-run and finds every saga ended once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_complete_across_a_restart_of_redis_with_an_append_only_file() {
    let mut redis = RedisServer::start_with_aof();
    let url = redis.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "300"]);
    let daemons = [Child::daemon(&url, "node-a"), Child::daemon(&url, "node-b")];
    for daemon in &daemons {
        daemon.wait_started().await;
    }
    let mut conn = redis.conn().await;
    let ids = start_missions(&mut conn, "aof", 10).await;
    let mut log = EventLog::new(&url);
    let before = log
        .wait_until(SAGA_WAIT, "every saga past its first step", |events| {
            all_have(events, &ids, "step_started", "plan_route")
        })
        .await
        .len();

    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.revive();
    log.wait_all_ended(&ids, END_WAIT).await;
    let events = log.settle(SETTLE).await;
    assert!(events.len() > before);
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
    // Nothing written before the restart was lost.
    let mut reread = EventLog::new(&url);
    assert_eq!(reread.poll().await.len(), events.len());
}

// ------------------------------------------------------------------ long

/// The long tests, on one Redis and on a cluster: `long::single::<name>`
/// and `long::cluster::<name>`.
mod long {
    macro_rules! long_on_both {
        ($($test:ident),+ $(,)?) => {
            mod single {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    #[ignore = "long: run with --ignored before releasing"]
                    async fn $test() {
                        crate::$test(crate::common::Redis::single()).await
                    }
                )+
            }
            mod cluster {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    #[ignore = "long: run with --ignored before releasing"]
                    async fn $test() {
                        crate::$test(crate::common::Redis::cluster()).await
                    }
                )+
            }
        };
    }

    long_on_both!(
        three_daemons_killed_every_few_seconds_for_a_minute,
        rolling_restarts_a_skewed_clock_and_a_full_daemon_for_a_minute,
    );
}

async fn three_daemons_killed_every_few_seconds_for_a_minute(server: Redis) {
    const SAGAS: usize = 300;
    const RUN_FOR: Duration = Duration::from_secs(60);
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "100"]);
    let mut daemons: Vec<Child> = (0..3)
        .map(|i| Child::daemon(&url, &format!("node-{i}")))
        .collect();
    for daemon in &daemons {
        daemon.wait_started().await;
    }
    let mut conn = server.conn().await;
    let mut log = EventLog::on(&server);
    let mut ids = Vec::new();
    let began = Instant::now();
    let pace = RUN_FOR / SAGAS as u32;
    let mut next_kill = began + Duration::from_millis(2000 + random_below(2000) as u64);
    let mut kills = 0;
    while ids.len() < SAGAS {
        let batch = format!("long{:03}", ids.len());
        ids.extend(start_missions(&mut conn, &batch, 1).await);
        if Instant::now() >= next_kill {
            let victim = random_below(daemons.len());
            // Every other restart takes a new node id.
            if kills % 2 == 1 {
                daemons[victim].set_flag("--node-id", &format!("node-{victim}-{kills}"));
            }
            daemons[victim].restart();
            kills += 1;
            next_kill = Instant::now() + Duration::from_millis(2000 + random_below(2000) as u64);
        }
        tokio::time::sleep(pace).await;
    }
    log.poll().await;
    eprintln!("{kills} kills in {:?}", began.elapsed());

    log.wait_all_ended(&ids, Duration::from_secs(60)).await;
    let events = log.settle(Duration::from_secs(2)).await;
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
}

// Every fault a deployment meets, at once, for a minute: every daemon in
// turn stopped with SIGTERM and started again (a rolling restart; now and
// then a kill -9 instead), one daemon whose host clock runs 15 s ahead (far
// more than the lease), and one held at its saga capacity. Every saga ends
// exactly once, completed, and none is left without a live owner.
async fn rolling_restarts_a_skewed_clock_and_a_full_daemon_for_a_minute(server: Redis) {
    const SAGAS: usize = 400;
    const RUN_FOR: Duration = Duration::from_secs(60);
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "100"]);
    let skewed = skewed_clock("+15s");
    let skewed: Vec<(&str, &str)> = skewed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let lease = ["--lease-ttl", LEASE_TTL];
    let full = ["--lease-ttl", LEASE_TTL, "--max-in-flight", "3"];
    let mut daemons = vec![
        Child::daemon_with(&url, "plain-0", &lease, &[]),
        Child::daemon_with(&url, "plain-1", &lease, &[]),
        Child::daemon_with(&url, "skewed", &lease, &skewed),
        Child::daemon_with(&url, "full", &full, &[]),
    ];
    for daemon in &daemons {
        daemon.wait_started().await;
    }
    let mut conn = server.conn().await;
    let mut log = EventLog::on(&server);
    let mut ids = Vec::new();
    let began = Instant::now();
    let pace = RUN_FOR / SAGAS as u32;
    let mut next_restart = began + Duration::from_millis(2000 + random_below(2000) as u64);
    let (mut terms, mut kills) = (0, 0);
    let mut turn = 0;
    while ids.len() < SAGAS {
        let batch = format!("roll{:03}", ids.len());
        ids.extend(start_missions(&mut conn, &batch, 1).await);
        if Instant::now() >= next_restart {
            let victim = &mut daemons[turn % 4];
            turn += 1;
            // Every fifth restart a crash, the others graceful.
            if turn % 5 == 0 {
                victim.restart();
                kills += 1;
            } else {
                victim.term();
                let exited = victim.wait_exit(Duration::from_secs(15)).await;
                assert!(
                    exited.is_some(),
                    "{} did not stop on SIGTERM",
                    victim.name()
                );
                victim.restart();
                terms += 1;
            }
            next_restart = Instant::now() + Duration::from_millis(2000 + random_below(2000) as u64);
        }
        tokio::time::sleep(pace).await;
    }
    log.poll().await;
    eprintln!(
        "{terms} SIGTERM restarts and {kills} kills in {:?}",
        began.elapsed()
    );

    log.wait_all_ended(&ids, Duration::from_secs(90)).await;
    let events = log.settle(Duration::from_secs(2)).await;
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
    // No saga is left with an owner whose lease is not alive.
    let listed = sagaflow_cli(&["list", "--redis-url", &url, "--state", "stuck"]).await;
    let rows = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(rows.lines().count(), 1, "stuck or orphaned:\n{rows}");
}

// ----------------------------------------------------------- the audit

fn event(
    correlation_id: &str,
    saga_id: &str,
    event_type: &str,
    step: &str,
    payload: &str,
) -> Event {
    Event {
        event_type: event_type.to_owned(),
        status: String::new(),
        saga_id: saga_id.to_owned(),
        correlation_id: correlation_id.to_owned(),
        saga: "mission_start".to_owned(),
        step: (!step.is_empty()).then(|| step.to_owned()),
        payload: serde_json::from_str(payload).unwrap(),
        fields: Fields::new(),
    }
}

/// One saga: `(event_type, step, payload)` in order.
fn saga(correlation_id: &str, saga_id: &str, events: &[(&str, &str, &str)]) -> Vec<Event> {
    events
        .iter()
        .map(|(t, step, payload)| event(correlation_id, saga_id, t, step, payload))
        .collect()
}

const SENT_R1: &str = r#"{"attempt":1,"request_id":"r1","kind":"action"}"#;
const SENT_R2: &str = r#"{"attempt":2,"request_id":"r2","kind":"action"}"#;

#[test]
fn the_audit_accepts_a_resend_and_a_retry_and_flags_the_rest() {
    let ids = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Sent twice under one request id (a resend after a crash), then a
    // retry after a timeout: fine.
    let good = saga(
        "c1",
        "s1",
        &[
            ("saga_started", "", "{}"),
            ("step_started", "a", SENT_R1),
            ("step_started", "a", SENT_R1),
            ("step_timed_out", "a", r#"{"attempt":1}"#),
            ("step_started", "a", SENT_R2),
            ("step_completed", "a", r#"{"attempt":2}"#),
            ("saga_completed", "", "{}"),
        ],
    );
    assert_eq!(audit(&good, &ids(&["c1"])), Vec::<String>::new());

    let flagged = |events: &[Event], started: &[&str], expected: &str| {
        let problems = audit(events, &ids(started));
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "no `{expected}` in {problems:?}"
        );
    };
    let mut two_ends = good.clone();
    two_ends.push(event("c1", "s1", "saga_compensated", "", "{}"));
    flagged(&two_ends, &["c1"], "2 ends");
    flagged(&two_ends, &["c1"], "events after its end");

    let new_id_same_attempt = saga(
        "c1",
        "s1",
        &[
            ("saga_started", "", "{}"),
            ("step_started", "a", SENT_R1),
            ("step_started", "a", &SENT_R1.replace("r1", "r9")),
            ("saga_completed", "", "{}"),
        ],
    );
    flagged(
        &new_id_same_attempt,
        &["c1"],
        "attempt 1 sent under 2 request ids",
    );

    let retry_without_cause = saga(
        "c1",
        "s1",
        &[
            ("saga_started", "", "{}"),
            ("step_started", "a", SENT_R1),
            ("step_started", "a", SENT_R2),
            ("saga_completed", "", "{}"),
        ],
    );
    flagged(
        &retry_without_cause,
        &["c1"],
        "no failure or timeout of attempt 1",
    );

    let mut two_sagas = good.clone();
    two_sagas.extend(saga("c1", "s2", &[("saga_started", "", "{}")]));
    flagged(&two_sagas, &["c1"], "c1: 2 saga_started");
    flagged(&two_sagas, &["c1"], "0 ends");
    flagged(&good, &["c1", "c2"], "c2: no saga_started");

    let mut completed_twice = good.clone();
    completed_twice.insert(6, event("c1", "s1", "step_completed", "a", "{}"));
    flagged(&completed_twice, &["c1"], "step_completed a 2 times");
}
