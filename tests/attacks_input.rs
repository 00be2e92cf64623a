//! Attacks with input too large or too plentiful, against a real Redis and
//! the real daemon: starts over the size limit (in the starters' original
//! form, and one of 50 MB), a write Redis refuses for good, a refused
//! operator's request, a flood of control entries, replies over the size
//! limit or for sagas that do not exist, and trigger streams that must stay
//! capped. Where memory is the point, the daemon runs as a process and its
//! peak resident size (`VmHWM`) is read from `/proc`.

mod common;

use common::processes::{Child, EventLog};
use common::*;
use sagaflow::config::layers::resolve;
use sagaflow::config::Settings;
use sagaflow::handler::simulated::SimulationOptions;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The size limit of a start entry and of a reply entry, all fields
/// together (`protocol::start::MAX_START_BYTES`,
/// `engine::replies::MAX_REPLY_BYTES`): written out, since the reasons
/// name it.
const LIMIT: usize = 1 << 20;

// ------------------------------------------------------------- helpers

/// The tests that measure a daemon process (its memory, how long its sagas
/// take) while it is flooded take turns: on a small machine two floods at
/// once would each measure the other.
static ONE_FLOOD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Settings for an in-process daemon, with `SAGAFLOW_<KEY>` values read
/// through the settings' own layers, as the binary reads its environment.
fn settings_with(server: &RedisServer, env: &[(&str, &str)]) -> Settings {
    let vars: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (format!("SAGAFLOW_{}", k.to_uppercase()), v.to_string()))
        .collect();
    let lookup = |var: &str| vars.get(var).cloned();
    let layered = resolve(None, &lookup, &BTreeMap::new()).expect("the settings resolve");
    let test = test_settings(server);
    Settings {
        redis_url: test.redis_url,
        block: test.block,
        shutdown_grace: test.shutdown_grace,
        lease_ttl: test.lease_ttl,
        takeover_every: test.takeover_every,
        http_addr: "none".into(),
        ..layered.settings
    }
}

/// A catalog of the reference mission and the definitions given as
/// `(file name, YAML)`.
fn mission_and(definitions: &[(&str, &str)]) -> sagaflow::definition::Catalog {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mission = manifest_dir().join("sagas/mission_start.yaml");
    std::fs::copy(mission, dir.path().join("mission_start.yaml")).expect("copied");
    for (name, yaml) in definitions {
        std::fs::write(dir.path().join(name), yaml).expect("written");
    }
    sagaflow::definition::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"))
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`: peak resident size).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn mib(kib: u64) -> u64 {
    kib / 1024
}

/// A free loopback address for a daemon's HTTP endpoints.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").to_string()
}

/// The status code and body of `GET path`, or `None` when nothing answers
/// within a second.
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((status, body.trim().to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// Waits until `ready` answers 200, at most [`STOP_WAIT`].
async fn wait_ready(addr: &str) {
    let deadline = Instant::now() + STOP_WAIT;
    while http_get(addr, "/readyz").await.map(|(status, _)| status) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "{addr}/readyz never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes of field names and values of every entry of `stream`.
async fn stream_bytes(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> usize {
    let entries = xrange(conn, stream).await;
    entries
        .iter()
        .flat_map(|e| e.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

/// Bytes of field names and values of every saga record.
async fn record_bytes(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let keys: Vec<String> = must("KEYS", words("KEYS saga:{*}:record:*").query_async(conn)).await;
    let mut total = 0;
    for key in keys {
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(&key);
        let fields: Vec<(Vec<u8>, Vec<u8>)> = must("HGETALL", hgetall.query_async(conn)).await;
        total += fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    }
    total
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> usize {
    let mut cmd = redis::cmd("XLEN");
    cmd.arg(stream);
    must("XLEN", cmd.query_async(conn)).await
}

/// The first event of `correlation_id` of one of `types`, if read yet.
fn first_of<'a>(events: &'a [Event], correlation_id: &str, types: &[&str]) -> Option<&'a Event> {
    events
        .iter()
        .find(|e| e.correlation_id == correlation_id && types.contains(&e.event_type.as_str()))
}

/// A reply to a mission command, completed with what the next steps need.
fn mission_result(cmd: &Fields) -> Value {
    match cmd["event_type"].as_str() {
        "allocate_resources" => json!({"robot_ids": ["r1", "r2"]}),
        "plan_route" => json!({"routes": ["north", "south"]}),
        "perform_exploration" => json!({"partial_maps": ["m1", "m2"]}),
        _ => json!({"done": true}),
    }
}

// ------------------------------------------- 4. starts over the limit

/// The starters' original form has no `payload`: every field is an input
/// key, so a bound on `payload` alone let a 2 MB field through, into the
/// saga's record and its events. The start is refused by its whole size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_start_over_the_limit_is_rejected_and_copied_nowhere() {
    let server = RedisServer::start();
    let daemon = start_daemon(&server, mission_catalog()).await;
    let mut conn = server.conn().await;
    let area = "a".repeat(2_000_000);
    let fields = [
        ("correlation_id", "legacy-big"),
        ("robots", "2"),
        ("area", area.as_str()),
    ];
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    xadd(&mut conn, "mission:start", &fields).await;
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        events.iter().any(|e| e.correlation_id == "legacy-big")
    })
    .await;
    let events_bytes = stream_bytes(&mut conn, "saga:events").await;
    let records = record_bytes(&mut conn).await;
    let pending = pending_count(&mut conn, "mission:start", "sagaflow").await;
    daemon.stop().await;

    let first = events
        .iter()
        .find(|e| e.correlation_id == "legacy-big")
        .unwrap();
    assert_eq!(
        first.event_type, "saga_rejected",
        "the first event of the {size}-byte start; saga:events holds {events_bytes} bytes, \
         the saga records {records} bytes"
    );
    let reason = first.payload["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&size.to_string()) && reason.contains(&LIMIT.to_string()),
        "the reason names the size ({size}) and the limit ({LIMIT}): {reason}"
    );
    assert!(events_bytes < 64 << 10, "saga:events: {events_bytes} bytes");
    assert_eq!(records, 0, "no saga record for a rejected start");
    assert_eq!(pending, 0, "the rejected start is acknowledged");
}

/// The daemon's peak resident size while a 50 MB start goes by. A debug
/// build at rest is about 35 MiB. The entry may reach the daemon once,
/// whole (a blocking read returns the entry that wakes it as it is), and is
/// held a few times over while it is decoded (the connection's buffer,
/// grown by doubling, the decoded reply, the entry): about 220 MiB at the
/// peak. 300 MiB leaves room for that, and is far below what escaped copies
/// of the input (six bytes per byte: 300 MB each) in a transition cost.
const BIG_START_PEAK_MIB: u64 = 300;

/// 50 MB of `\x01` bytes as the one input field of a start: escaped in
/// JSON (`\u0001`, six bytes each) this made every copy 300 MB, Redis
/// refused the writes, the daemon grew by gigabytes and the entry was
/// delivered again and again. Now it is rejected by its size, the sagas
/// around it complete, and the daemon stays small and ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_megabyte_start_is_rejected_and_the_daemon_stays_small_and_ready() {
    let _turn = ONE_FLOOD_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    let addr = free_addr();
    // The default lease: readiness asks for a renewal within half of it.
    let daemon = Child::daemon_with(&url, "big-start", &["--http-addr", &addr], &[]);
    daemon.wait_started().await;
    wait_ready(&addr).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    let mut log = EventLog::new(&url);
    let before = start_missions(&mut conn, "before", 5).await;
    let events = log.wait_all_ended(&before, SAGA_WAIT).await;
    processes::assert_all_ended_as(&events, &before, "saga_completed");
    let rest_kib = proc_kib(daemon.pid(), "VmHWM");

    let huge = vec![1u8; 50 << 20];
    let mut xadd_huge = redis::cmd("XADD");
    xadd_huge
        .arg("mission:start")
        .arg("*")
        .arg("correlation_id")
        .arg("huge")
        .arg("area")
        .arg(&huge);
    drop(huge);
    let mut patient = patient_conn(&url).await;
    let _: String = xadd_huge
        .query_async(&mut patient)
        .await
        .expect("the huge start");
    let after = start_missions(&mut conn, "after", 5).await;

    let within = Duration::from_secs(30);
    let deadline = Instant::now() + within;
    let mut not_ready = Vec::new();
    let mut done = false;
    while Instant::now() < deadline {
        let events = log.poll().await;
        let rejected = first_of(events, "huge", &["saga_rejected"]).is_some();
        if rejected && processes::not_ended(events, &after).is_empty() {
            done = true;
            break;
        }
        let answer = http_get(&addr, "/readyz").await;
        if answer.as_ref().map(|(status, _)| *status) != Some(200) {
            not_ready.push(answer);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak_kib = proc_kib(daemon.pid(), "VmHWM");
    let ready_at_end = http_get(&addr, "/readyz").await;
    let pending = pending_count(&mut conn, "mission:start", "sagaflow").await;
    handlers.stop().await;
    let events = log.poll().await.to_vec();

    eprintln!(
        "the 50 MB start: daemon peak {} MiB (at rest {} MiB), /readyz not 200: {not_ready:?}",
        mib(peak_kib),
        mib(rest_kib)
    );
    let huge_events: Vec<String> = events
        .iter()
        .filter(|e| e.correlation_id == "huge")
        .map(|e| e.event_type.clone())
        .collect();
    assert!(
        done,
        "within {within:?}: the huge start's events {huge_events:?}, sagas after it not ended \
         {:?}; daemon peak {} MiB (at rest {} MiB), /readyz not 200: {not_ready:?}",
        processes::not_ended(&events, &after),
        mib(peak_kib),
        mib(rest_kib),
    );
    let rejected = first_of(&events, "huge", &["saga_rejected"]).unwrap();
    let reason = rejected.payload["reason"].as_str().unwrap_or_default();
    let size = "correlation_id".len() + "huge".len() + "area".len() + (50 << 20);
    assert!(
        reason.contains(&size.to_string()) && reason.contains(&LIMIT.to_string()),
        "{reason}"
    );
    assert_eq!(
        huge_events,
        ["saga_rejected"],
        "rejected once, nothing else"
    );
    processes::assert_all_ended_as(&events, &after, "saga_completed");
    assert!(
        mib(peak_kib) < BIG_START_PEAK_MIB,
        "daemon peak {} MiB (at rest {} MiB), bound {BIG_START_PEAK_MIB} MiB",
        mib(peak_kib),
        mib(rest_kib)
    );
    assert!(not_ready.is_empty(), "/readyz answered {not_ready:?}");
    assert_eq!(ready_at_end, Some((200, "ready".to_owned())));
    assert_eq!(pending, 0, "the huge start is acknowledged");
}

/// A definition whose command stream the mission does not use.
const OTHER: &str = "\
name: other
trigger: other:start
steps:
  - name: only
    stream: other:commands
    timeout: 10s
";

/// The mission's `plan_route` command stream is a hash: the transition that
/// sends that command can never be written (Redis answers WRONGTYPE to an
/// `XADD` there), and was retried for ever. The saga is parked as failed
/// (noted on the dead-letter stream, listed as stuck), other sagas go on
/// as usual, and once the key is fixed an operator's `retry` sets the saga
/// going again to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_good_parks_the_saga_until_an_operator_retries_it() {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = server.conn().await;
    must(
        "HSET",
        words("HSET routing:commands x y").query_async::<()>(&mut conn),
    )
    .await;
    let daemon = start_daemon(&server, mission_and(&[("other.yaml", OTHER)])).await;
    let streams = [
        "resources:commands",
        "exploration:commands",
        "mapping:commands",
        "other:commands",
    ];
    let handler = spawn_raw_handler(&server, &streams, "raw", |cmd| {
        complete_in_stages(cmd, &mission_result(cmd))
    })
    .await;
    start_mission(&mut conn, "parked", &json!({"area": "a", "robots": 2})).await;
    let others: Vec<String> = (0..10).map(|i| format!("other-{i}")).collect();
    let started = Instant::now();
    for id in &others {
        xadd(
            &mut conn,
            "other:start",
            &[("correlation_id", id.as_str()), ("payload", "{}")],
        )
        .await;
    }
    let mut log = EventLog::new(&url);
    log.wait_all_ended(&others, Duration::from_secs(5)).await;
    let others_took = started.elapsed();
    let events = log
        .wait_until(Duration::from_secs(10), "the mission is parked", |events| {
            first_of(events, "parked", &processes::SAGA_ENDS).is_some()
        })
        .await;
    processes::assert_all_ended_as(&events, &others, "saga_completed");
    assert!(others_took < Duration::from_secs(3), "{others_took:?}");
    let failed = first_of(&events, "parked", &processes::SAGA_ENDS).unwrap();
    assert_eq!(failed.event_type, "saga_failed", "{}", describe(&events));
    assert_eq!(failed.payload["parked"], json!(true), "{}", failed.payload);
    let saga_id = failed.saga_id.clone();

    let listed = sagaflow_cli(&["list", "--redis-url", &url, "--state", "stuck"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&saga_id), "stuck: {listed}");
    let status = sagaflow_cli(&["status", &saga_id, "--redis-url", &url]).await;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("failed"), "{status}");
    let notes = xrange(&mut conn, "saga:dead-letter").await;
    assert!(
        notes
            .iter()
            .any(|n| n.get("saga_id") == Some(&saga_id) && n["reason"].contains("routing:commands")),
        "{notes:?}"
    );

    must(
        "DEL",
        words("DEL routing:commands").query_async::<()>(&mut conn),
    )
    .await;
    let routing = spawn_raw_handler(&server, &["routing:commands"], "raw", |cmd| {
        complete_in_stages(cmd, &mission_result(cmd))
    })
    .await;
    let retried = sagaflow_cli(&[
        "retry",
        &saga_id,
        "--redis-url",
        &url,
        "--reason",
        "routing:commands fixed",
    ])
    .await;
    // The attempt under way when the saga was parked goes on from its
    // parked reply: allocate_resources completed once, and is not sent
    // again.
    let ends_of = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.saga_id == saga_id && e.is_terminal())
            .map(|e| e.event_type.clone())
            .collect()
    };
    let accepted = retried.status.code() == Some(0);
    if accepted {
        log.wait_until(Duration::from_secs(30), "the retried saga ends", |events| {
            ends_of(events).len() > 1
        })
        .await;
    }
    routing.stop().await;
    handler.stop().await;
    daemon.stop().await;
    assert!(accepted, "retry accepted: {retried:?}");
    let events = log.poll().await;
    assert_eq!(ends_of(events), ["saga_failed", "saga_completed"]);
    let allocations = events
        .iter()
        .filter(|e| {
            e.saga_id == saga_id
                && e.event_type == "step_started"
                && e.step.as_deref() == Some("allocate_resources")
        })
        .count();
    assert_eq!(allocations, 1, "{}", describe(events));
    assert!(
        !events
            .iter()
            .any(|e| e.saga_id == saga_id && e.event_type == "step_timed_out"),
        "{}",
        describe(events)
    );
}

// -------------------------------------- 6. a refused operator's request

/// A saga stuck on a failed compensation keeps its record for the
/// retention and belongs to no daemon. A request about it that is refused
/// (`skip` naming a step whose compensation did not fail) must change
/// nothing but the audit: the record used to lose its expiry and join the
/// answering daemon's sagas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_changes_nothing_but_the_audit() {
    let server = RedisServer::start();
    let url = server.url();
    let daemon = start_daemon(&server, mission_catalog()).await;
    let options = SimulationOptions {
        fail_step: Some("plan_route".into()),
        fail_compensation: Some("allocate_resources".into()),
        ..SimulationOptions::default()
    };
    let handlers = start_simulated(&server, options);
    let mut conn = server.conn().await;
    start_mission(&mut conn, "refused", &json!({"area": "a", "robots": 2})).await;
    let events = saga_events(&server, "refused").await;
    let end = events.last().unwrap();
    assert_eq!(end.event_type, "saga_failed", "{}", describe(&events));
    let saga_id = end.saga_id.clone();
    let record = record_key(&saga_id);
    let ttl_before = ttl(&mut conn, &record).await;
    let owners_before = owners_of(&mut conn, &saga_id).await;

    let o = sagaflow_cli(&[
        "skip",
        &saga_id,
        "--step",
        "plan_route",
        "--redis-url",
        &url,
        "--reason",
        "the wrong step",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "refused: {o:?}");
    // Whatever the answering daemon does after its answer has its time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ttl_after = ttl(&mut conn, &record).await;
    let owners_after = owners_of(&mut conn, &saga_id).await;
    let audit = wait_for_events(&server, SAGA_WAIT, |events| {
        events
            .iter()
            .any(|e| e.saga_id == saga_id && e.event_type == "operator_action")
    })
    .await;
    handlers.stop().await;
    daemon.stop().await;

    assert!(
        ttl_before > 0,
        "the stuck saga's record expires: {ttl_before}"
    );
    assert!(owners_before.is_empty(), "{owners_before:?}");
    assert!(
        ttl_after > 0 && ttl_after <= ttl_before,
        "the record's TTL went from {ttl_before} to {ttl_after}; the saga is in {owners_after:?}"
    );
    assert!(
        owners_after.is_empty(),
        "the saga joined the sagas of {owners_after:?}"
    );
    let action = audit
        .iter()
        .find(|e| e.saga_id == saga_id && e.event_type == "operator_action")
        .unwrap();
    assert_eq!(action.payload["action"], "skip");
    let refused = action.payload["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("allocate_resources"), "{}", action.payload);
}

async fn ttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    let mut cmd = redis::cmd("TTL");
    cmd.arg(key);
    must("TTL", cmd.query_async(conn)).await
}

/// The owned-saga sets that hold `saga_id`.
async fn owners_of(conn: &mut redis::aio::MultiplexedConnection, saga_id: &str) -> Vec<String> {
    let keys = owned_sets(conn).await;
    let mut holding = Vec::new();
    for key in keys {
        let mut cmd = redis::cmd("SISMEMBER");
        cmd.arg(&key).arg(saga_id);
        if must("SISMEMBER", cmd.query_async::<bool>(conn)).await {
            holding.push(key);
        }
    }
    holding
}

// ------------------------------------------ 7. a flood of control entries

/// The daemon's peak resident size through a flood of 200,000 control
/// entries. Requests are read 100 at a time (each at most 16 KiB, so a
/// read holds under 2 MiB) and looked into 16 at a time: the flood costs
/// the daemon next to nothing beyond its size at rest (a few tens of MiB in
/// a debug build). One unbounded read of the flood decodes its 20 MB of
/// entries into several times that. 100 MiB lies between.
const FLOOD_PEAK_MIB: u64 = 100;

/// How long any mission started while the flood is written and handled
/// may take to end: it takes a tenth of a second on a quiet machine.
const FLOOD_SAGA_WAIT: Duration = Duration::from_secs(5);

/// Missions are started this often from the flood's write until
/// [`FLOOD_WATCH`] after it.
const FLOOD_START_EVERY: Duration = Duration::from_millis(250);
const FLOOD_WATCH: Duration = Duration::from_secs(5);

/// A connection for writes of many megabytes: its commands may take a
/// minute.
async fn patient_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    must(
        "a connection",
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
}

/// Writes `n` retry requests naming sagas that do not exist, in one MULTI;
/// how long that took.
async fn flood_control(url: String, n: usize) -> Duration {
    let mut conn = patient_conn(&url).await;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for _ in 0..n {
        pipe.cmd("XADD")
            .arg("saga:control")
            .arg("*")
            .arg("saga_id")
            .arg(sagaflow::protocol::SagaId::generate().as_str())
            .arg("action")
            .arg("retry")
            .arg("by")
            .arg("flood")
            .arg("reason")
            .arg("flood")
            .ignore();
    }
    let written = Instant::now();
    pipe.query_async::<()>(&mut conn).await.expect("the flood");
    written.elapsed()
}

/// Floods `saga:control` with `entries` in one MULTI while a mission is
/// started every [`FLOOD_START_EVERY`]; fails if one of them takes longer
/// than `saga_wait` to end or the daemon's peak goes over
/// `peak_bound_mib`.
async fn control_flood(entries: usize, peak_bound_mib: u64, saga_wait: Duration) {
    let _turn = ONE_FLOOD_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    let daemon = Child::daemon_with(&url, "flooded", &[], &[]);
    daemon.wait_started().await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    // Starts may wait behind the flood's MULTI in Redis.
    let mut conn = patient_conn(&url).await;
    let mut log = EventLog::new(&url);
    let warm = start_missions(&mut conn, "warm", 3).await;
    log.wait_all_ended(&warm, SAGA_WAIT).await;
    let rest_kib = proc_kib(daemon.pid(), "VmHWM");

    let mut flood = Some(tokio::spawn(flood_control(url.clone(), entries)));
    let mut flood_took = None;
    let mut watch_until: Option<Instant> = None;
    let mut started: Vec<(String, Instant)> = Vec::new();
    let mut took: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90) + saga_wait;
    let mut next_start = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_start && watch_until.is_none_or(|end| now < end) {
            let id = format!("during-{:03}", started.len());
            let payload = r#"{"area": "hall-a", "robots": 2}"#;
            let fields = [("correlation_id", id.as_str()), ("payload", payload)];
            let mut cmd = redis::cmd("XADD");
            cmd.arg("mission:start").arg("*").arg(&fields[..]);
            let _: String = cmd.query_async(&mut conn).await.expect("a start");
            started.push((id, Instant::now()));
            next_start = now + FLOOD_START_EVERY;
        }
        let events = log.poll().await;
        for (id, at) in &started {
            if !took.contains_key(id)
                && processes::not_ended(events, std::slice::from_ref(id)).is_empty()
            {
                took.insert(id.clone(), at.elapsed());
            }
        }
        if let Some(written) = flood.take_if(|f| f.is_finished()) {
            flood_took = Some(written.await.expect("the flood's task"));
            watch_until = Some(Instant::now() + FLOOD_WATCH);
        }
        let watched = watch_until.is_some_and(|end| Instant::now() >= end);
        if (watched && took.len() == started.len()) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak_kib = proc_kib(daemon.pid(), "VmHWM");
    handlers.stop().await;
    let events = log.poll().await.to_vec();

    let slowest = took.iter().max_by_key(|(_, t)| **t);
    let open: Vec<&String> = started
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !took.contains_key(*id))
        .collect();
    let summary = format!(
        "{entries} entries written in one MULTI in {flood_took:?}; {} missions started \
         meanwhile, the slowest {slowest:?}, not ended {open:?}; daemon peak {} MiB (at rest \
         {} MiB)",
        started.len(),
        mib(peak_kib),
        mib(rest_kib)
    );
    eprintln!("{summary}");
    assert!(
        open.is_empty() && slowest.is_some_and(|(_, t)| *t <= saga_wait),
        "every mission ends within {saga_wait:?}: {summary}"
    );
    let ids: Vec<String> = started.into_iter().map(|(id, _)| id).collect();
    processes::assert_all_ended_as(&events, &ids, "saga_completed");
    assert!(
        mib(peak_kib) < peak_bound_mib,
        "bound {peak_bound_mib} MiB: {summary}"
    );
}

/// 200,000 control entries in one MULTI while sagas run: each read of the
/// control stream used to take all of them at once. Missions started
/// meanwhile end promptly, and the daemon stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_control_entries_neither_stalls_starts_nor_grows_the_daemon() {
    control_flood(200_000, FLOOD_PEAK_MIB, FLOOD_SAGA_WAIT).await;
}

/// The full-size flood: a million entries in one MULTI, 2 GB for an
/// unbounded read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a million control entries: some 200 MB of Redis memory and half a minute; run with --ignored"]
async fn a_flood_of_a_million_control_entries_neither_stalls_starts_nor_grows_the_daemon() {
    control_flood(1_000_000, FLOOD_PEAK_MIB, FLOOD_SAGA_WAIT).await;
}

/// How long the housekeeping may take to trim the control stream to its
/// cap after a flood: it trims "every second or so"; this leaves room for
/// a loaded machine.
const CONTROL_TRIM_WAIT: Duration = Duration::from_secs(15);

/// The default `control_maxlen`, and the slack of an approximate trim
/// (`MAXLEN ~` removes whole nodes of at most 100 entries).
const CONTROL_MAXLEN: usize = 10_000;
const TRIM_SLACK: usize = 100;

/// Nothing capped `saga:control`: every entry a flood wrote stayed. The
/// daemons trim it to `control_maxlen` (10,000 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_control_stream_is_trimmed_to_its_cap() {
    let _turn = ONE_FLOOD_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let daemon = Child::daemon_with(&server.url(), "trimmer", &[], &[]);
    daemon.wait_started().await;
    let took = flood_control(server.url(), 50_000).await;
    let mut conn = server.conn().await;
    let len = until_at_most(
        &mut conn,
        "saga:control",
        CONTROL_MAXLEN + TRIM_SLACK,
        CONTROL_TRIM_WAIT,
    )
    .await;
    drop(daemon);
    assert!(
        (CONTROL_MAXLEN..=CONTROL_MAXLEN + TRIM_SLACK).contains(&len),
        "50,000 entries written in {took:?}: saga:control is {len} long {CONTROL_TRIM_WAIT:?} \
         later"
    );
}

// --------------------------------------------------------- 9. reply sizes

const BULKY: &str = "\
name: bulky
trigger: bulky:start
steps:
  - name: first
    stream: first:commands
    timeout: 10s
    compensation:
      command: undo_first
  - name: second
    stream: second:commands
    timeout: 10s
    retry: { max_attempts: 3, backoff: fixed, initial_delay: 50ms }
";

/// A `completed` reply of 20 MB: its result used to be stored three times
/// (the record, `step_completed`, `saga_completed`). Now the attempt fails
/// for good (a retry would bring the same result), naming the size and the
/// limit, and the saga compensates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_reply_over_the_limit_fails_its_step_for_good() {
    let server = RedisServer::start();
    let daemon = start_daemon(&server, catalog(BULKY)).await;
    let size = Arc::new(AtomicUsize::new(0));
    let seen = size.clone();
    let streams = ["first:commands", "second:commands"];
    let handler = spawn_raw_handler(&server, &streams, "raw", move |cmd| {
        if cmd["event_type"] != "second" {
            return complete_in_stages(cmd, &json!({"ok": true}));
        }
        let result = json!({ "blob": "b".repeat(20 << 20) }).to_string();
        let completed = reply(cmd, "completed", &[("result", &result)]);
        let bytes = completed.iter().map(|(k, v)| k.len() + v.len()).sum();
        seen.store(bytes, Ordering::Relaxed);
        vec![reply(cmd, "start", &[]), completed]
    })
    .await;
    let mut conn = server.conn().await;
    xadd(
        &mut conn,
        "bulky:start",
        &[("correlation_id", "bulky"), ("payload", "{}")],
    )
    .await;
    let events = saga_events(&server, "bulky").await;
    let commands = handler.stop().await;
    let events_bytes = stream_bytes(&mut conn, "saga:events").await;
    let records = record_bytes(&mut conn).await;
    daemon.stop().await;

    let size = size.load(Ordering::Relaxed);
    let sizes = format!("saga:events holds {events_bytes} bytes, the records {records} bytes");
    let end = events.last().unwrap();
    assert_eq!(
        end.event_type,
        "saga_compensated",
        "{sizes}; {:?}",
        labels(&events)
    );
    assert_eq!(end.payload["compensated"], json!(["first"]));
    let failed = the_event(&events, "step_failed", Some("second"));
    let reason = failed.payload.to_string();
    assert!(
        reason.contains(&size.to_string()) && reason.contains(&LIMIT.to_string()),
        "the reason names the size ({size}) and the limit: {reason}"
    );
    let sent: Vec<&str> = commands.iter().map(|c| c.get("event_type")).collect();
    assert_eq!(sent, ["first", "second", "undo_first"], "not retried");
    assert!(events_bytes < LIMIT, "{sizes}");
    assert!(records < LIMIT, "{sizes}");
}

/// The daemon's peak resident size after 100 replies of about 1 MB for
/// sagas that do not exist. The reply reader holds at most one read (100
/// MB here: a read takes at most `read_batch` entries of at most 1 MiB, and
/// all of them came at once), in its buffer and decoded, and the router
/// keeps at most 64 MiB of entries for sagas that may yet come. A debug
/// build at rest is a few tens of MiB: 600 MiB leaves room for all of it
/// twice over, and is far below what keeping every such reply costs
/// (gigabytes).
const UNROUTED_PEAK_MIB: u64 = 600;

/// The daemon's peak resident size after 100 replies of 2 MB: none of them
/// leaves Redis whole (only a marker of a few hundred bytes), except at
/// most the one that wakes a blocking read. 150 MiB is a debug build at
/// rest and that one entry, with room to spare.
const OVERSIZED_PEAK_MIB: u64 = 150;

/// How long a mission written after 100 stray replies may take to end: the
/// reader parses each reply before it learns that no saga wants it, and
/// 100 MB of JSON takes a debug build seconds.
const STRAYS_WAIT: Duration = Duration::from_secs(60);

/// A `completed` reply for a saga that does not exist, its `result` of
/// `bytes`.
fn stray_reply(result: &str) -> RawEntry {
    entry(&[
        ("saga_id", sagaflow::protocol::SagaId::generate().as_str()),
        ("request_id", &uuid::Uuid::new_v4().simple().to_string()),
        ("correlation_id", "stray"),
        ("event_type", "allocate_resources"),
        ("status", "completed"),
        ("timestamp", &now_ms().to_string()),
        ("result", result),
    ])
}

/// Writes 100 replies with `result` for sagas that do not exist to a live
/// daemon's reply stream, in one MULTI, then one mission; fails if that
/// mission takes longer than [`STRAYS_WAIT`] or the daemon's peak goes over
/// `peak_bound_mib`.
async fn stray_replies(result: &str, peak_bound_mib: u64) {
    let _turn = ONE_FLOOD_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    let daemon = Child::daemon_with(&url, "strays", &[], &[]);
    daemon.wait_started().await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    let mut log = EventLog::new(&url);
    let warm = start_missions(&mut conn, "warm", 2).await;
    log.wait_all_ended(&warm, SAGA_WAIT).await;
    let commands = xrange(&mut conn, "resources:commands").await;
    let reply_stream = commands[0]["reply_stream"].clone();
    let rest_kib = proc_kib(daemon.pid(), "VmHWM");

    let mut pipe = redis::pipe();
    pipe.atomic();
    for _ in 0..100 {
        pipe.cmd("XADD")
            .arg(&reply_stream)
            .arg("*")
            .arg(stray_reply(result))
            .ignore();
    }
    let mut patient = patient_conn(&url).await;
    pipe.query_async::<()>(&mut patient)
        .await
        .expect("the stray replies");
    // Its replies come after the strays on the same stream: once it ends,
    // the strays have been read.
    let after = start_missions(&mut conn, "after", 1).await;
    let took = ended_within(&mut log, &after, STRAYS_WAIT).await;
    let peak_kib = proc_kib(daemon.pid(), "VmHWM");
    let now_kib = proc_kib(daemon.pid(), "VmRSS");
    handlers.stop().await;
    let events = log.poll().await.to_vec();

    let summary = format!(
        "100 replies with a result of {} bytes: a mission after them ended after {took:?}; \
         daemon peak {} MiB (at rest {} MiB, now {} MiB)",
        result.len(),
        mib(peak_kib),
        mib(rest_kib),
        mib(now_kib)
    );
    eprintln!("{summary}");
    assert!(took.is_some(), "within {STRAYS_WAIT:?}: {summary}");
    processes::assert_all_ended_as(&events, &after, "saga_completed");
    assert!(
        mib(peak_kib) < peak_bound_mib,
        "bound {peak_bound_mib} MiB: {summary}"
    );
}

/// 100 replies of 1 MB for sagas that do not exist took a daemon from
/// about 300 MiB to 2.6 GiB, never freed: each was parsed and kept for a
/// saga that might come. Their results here are arrays of small numbers,
/// which JSON makes many times larger once parsed. The router keeps
/// unrouted replies within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_for_sagas_that_do_not_exist_leave_the_daemon_bounded() {
    let result = format!("{{\"ids\": [{}0]}}", "0,".repeat(500_000));
    stray_replies(&result, UNROUTED_PEAK_MIB).await;
}

/// 100 replies of 2 MB, over the limit, for sagas that do not exist: they
/// never reach the daemon whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_over_the_limit_never_reach_the_daemon_whole() {
    let result = json!({ "blob": "r".repeat(2_000_000) }).to_string();
    stray_replies(&result, OVERSIZED_PEAK_MIB).await;
}

/// How long the sagas of `ids` took to end, if they did within `within`.
async fn ended_within(log: &mut EventLog, ids: &[String], within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if processes::not_ended(log.poll().await, ids).is_empty() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

// ---------------------------------------------- 12. trigger stream caps

const CAP: usize = 500;

/// One step that waits an hour for its reply: its sagas stay in flight.
const WAITING: &str = "\
name: waiting
trigger: waiting:start
steps:
  - name: wait
    stream: waiting:commands
    timeout: 1h
";

/// Starts that cannot be read as a start: rejected, so finished at once.
async fn bad_starts(conn: &mut redis::aio::MultiplexedConnection, stream: &str, n: usize) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("correlation_id")
            .arg(format!("bad-{i}"))
            .arg("payload")
            .arg("not json")
            .ignore();
    }
    must("the bad starts", pipe.query_async::<()>(conn)).await;
}

/// Waits until `stream` is at most `cap` entries long; its length then.
async fn until_at_most(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    cap: usize,
    within: Duration,
) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let len = xlen(conn, stream).await;
        if len <= cap || Instant::now() >= deadline {
            return len;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `triggers_maxlen` 500, a few thousand finished starts leave the
/// trigger stream at about 500 entries; starts not yet read are kept even
/// beyond the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_streams_are_capped_but_keep_the_starts_not_finished() {
    let server = RedisServer::start();
    let cap = CAP.to_string();
    let settings = Settings {
        max_in_flight: 10,
        ..settings_with(&server, &[("triggers_maxlen", &cap)])
    };
    let daemon = start_daemon_with(settings, catalog(WAITING)).await;
    let mut conn = server.conn().await;
    bad_starts(&mut conn, "waiting:start", 3000).await;
    let within = Duration::from_secs(10);
    let len = until_at_most(&mut conn, "waiting:start", CAP, within).await;
    let pending = pending_count(&mut conn, "waiting:start", "sagaflow").await;
    assert!(
        (CAP / 2..=CAP).contains(&len),
        "3000 finished starts (pending {pending}): the stream is {len} long after {within:?}"
    );

    // Ten sagas that wait take every saga slot: the starts after them are
    // not read, and stay, however far over the cap.
    let mut ids = Vec::new();
    for i in 0..10 + 2 * CAP {
        let payload = format!("{{\"n\": {i}}}");
        let fields = [
            ("correlation_id", format!("wait-{i}")),
            ("payload", payload),
        ];
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ids.push(xadd(&mut conn, "waiting:start", &fields).await);
    }
    wait_for_events(&server, SAGA_WAIT, |events| {
        events
            .iter()
            .filter(|e| e.event_type == "saga_started")
            .count()
            >= 10
    })
    .await;
    // Several trims later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unread = &ids[10..];
    let mut range = redis::cmd("XRANGE");
    range
        .arg("waiting:start")
        .arg(&unread[0])
        .arg("+")
        .arg("COUNT")
        .arg(10 * CAP);
    let kept: Vec<(String, Vec<(String, String)>)> =
        must("XRANGE", range.query_async(&mut conn)).await;
    let kept: Vec<&String> = kept.iter().map(|(id, _)| id).collect();
    let mut log = EventLog::new(&server.url());
    let started = log.poll().await;
    let started = started
        .iter()
        .filter(|e| e.event_type == "saga_started")
        .count();
    daemon.stop().await;
    assert_eq!(kept.len(), unread.len(), "every unread start is kept");
    assert_eq!(started, 10, "only as many sagas as there are slots");
}

/// One start with an id far in the future (`99999999999999-0`): trimming
/// by age can never pass it, which used to stop trimming for good. The
/// cap by count still holds, and the start itself is taken like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_from_the_future_neither_stops_the_cap_nor_is_skipped() {
    let server = RedisServer::start();
    let cap = CAP.to_string();
    let settings = settings_with(&server, &[("triggers_maxlen", &cap)]);
    let daemon = start_daemon_with(settings, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    bad_starts(&mut conn, "mission:start", 1000).await;
    let mut future = redis::cmd("XADD");
    future
        .arg("mission:start")
        .arg("99999999999999-0")
        .arg("correlation_id")
        .arg("future")
        .arg("payload")
        .arg(r#"{"area": "far", "robots": 1}"#);
    must("XADD", future.query_async::<String>(&mut conn)).await;
    bad_starts(&mut conn, "mission:start", 2000).await;
    let events = saga_events(&server, "future").await;
    let within = Duration::from_secs(10);
    let len = until_at_most(&mut conn, "mission:start", CAP, within).await;
    // Starts written after it still work, and still get trimmed.
    let later = start_missions(&mut conn, "later", 1).await;
    let later_events = saga_events(&server, &later[0]).await;
    bad_starts(&mut conn, "mission:start", 1000).await;
    let len_after = until_at_most(&mut conn, "mission:start", CAP, within).await;
    handlers.stop().await;
    daemon.stop().await;

    assert_eq!(
        events.last().unwrap().event_type,
        "saga_completed",
        "{}",
        describe(&events)
    );
    assert!(
        (CAP / 2..=CAP).contains(&len),
        "3001 finished starts, one from the future: the stream is {len} long after {within:?}"
    );
    assert_eq!(later_events.last().unwrap().event_type, "saga_completed");
    assert!(
        (CAP / 2..=CAP).contains(&len_after),
        "1000 more: the stream is {len_after} long after {within:?}"
    );
}
