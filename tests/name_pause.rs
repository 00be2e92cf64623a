//! Pausing a saga name: its new starts are held in Redis, not turned into
//! sagas, and taken once it is resumed, each once; other names flow
//! meanwhile. Against real daemon processes on one Redis and on a cluster:
//! nothing held is dead-lettered or counted as a delivery however long it
//! waits (even with `max_deliveries` 1), a daemon killed with starts held
//! is replaced, and a forged request changes nothing. Then the CLI's and
//! the HTTP API's answers to good and bad requests, and the store's
//! scripts on their own.

mod common;

use common::api::{send, writer_name, Served};
use common::processes::{Child, LEASE_TTL};
use common::*;
use sagaflow::handler::SimulationOptions;
use sagaflow::protocol::control::{NameRequest, OperatorKey};
use sagaflow::protocol::SagaId;
use sagaflow::store::holds::{self, Change, Expected, Held, Sieved, HELD_FROM};
use sagaflow::store::keys::Keys;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

on_both!(
    a_paused_name_holds_its_starts_through_a_kill_and_takes_each_once_resumed,
    held_starts_a_dead_daemon_was_taking_are_taken_over_once,
    the_scripts_hold_read_and_release_in_order,
);

/// A second saga, without a trigger stream of its own: its starts name it
/// on the mission's stream, which the two share.
const SURVEY: &str = "name: survey
description: Allocate robots for a survey, and nothing more.
steps:
  - name: allocate_resources
    stream: resources:commands
    timeout: 10s
    input:
      area: ${input.area}
      robots: ${input.robots}
    compensation:
      command: release_resources
      timeout: 10s
";

/// The mission and the survey, in a directory of their own.
fn sagas_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::copy(
        manifest_dir().join("sagas/mission_start.yaml"),
        dir.path().join("mission_start.yaml"),
    )
    .expect("the mission");
    std::fs::write(dir.path().join("survey.yaml"), SURVEY).expect("the survey");
    dir
}

/// `sagaflow run` on `sagas` with the test lease, a start dead-lettered
/// after a single delivery, and `extra`.
fn daemon(url: &str, node: &str, sagas: &std::path::Path, extra: &[&str]) -> Child {
    let sagas = sagas.to_str().expect("a UTF-8 path");
    let mut args = vec![
        "run",
        "--redis-url",
        url,
        "--node-id",
        node,
        "--sagas",
        sagas,
    ];
    args.extend(["--lease-ttl", LEASE_TTL, "--max-deliveries", "1"]);
    args.extend(extra);
    Child::spawn(node, &args, &[("SAGAFLOW_OPERATOR_KEYS", OPERATOR_KEY)])
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts a survey on the mission's stream; its entry id.
async fn start_survey(conn: &mut impl redis::aio::ConnectionLike, correlation_id: &str) -> String {
    let fields = [
        ("saga", "survey"),
        ("correlation_id", correlation_id),
        ("payload", r#"{"area":"a","robots":1}"#),
    ];
    xadd(conn, "mission:start", &fields).await
}

async fn len(conn: &mut impl redis::aio::ConnectionLike, stream: &str) -> u64 {
    must("XLEN", redis::cmd("XLEN").arg(stream).query_async(conn)).await
}

/// The saga names paused, as `sagaflow list --paused-names --json` shows them.
async fn paused_names(url: &str) -> Value {
    let o = sagaflow_cli(&["list", "--paused-names", "--json", "--redis-url", url]).await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)))
}

/// Every event on saga:events now.
async fn all_events(server: &impl Backend) -> Vec<Event> {
    let mut conn = server.any_conn().await;
    xrange(&mut conn, "saga:events")
        .await
        .into_iter()
        .map(Event::from_fields)
        .collect()
}

/// The answers to requests about `name`: (action, by, reason, refused).
fn name_actions(events: &[Event], name: &str) -> Vec<(String, String, String, Option<String>)> {
    events
        .iter()
        .filter(|e| e.event_type == "operator_action" && e.saga == name && e.saga_id.is_empty())
        .map(|e| {
            let text = |k: &str| e.payload[k].as_str().unwrap_or("").to_owned();
            let refused = e.payload["refused"].as_str().map(str::to_owned);
            (text("action"), text("by"), text("reason"), refused)
        })
        .collect()
}

async fn a_paused_name_holds_its_starts_through_a_kill_and_takes_each_once_resumed(server: Redis) {
    let url = server.url();
    let sagas = sagas_dir();
    let mut first = daemon(&url, "names-a", sagas.path(), &[]);
    first.wait_started().await;
    let _handlers = Child::handlers(&url, &[]);
    let mut conn = server.any_conn().await;

    let o = sagaflow_cli(&[
        "pause",
        "--name",
        "survey",
        "--redis-url",
        &url,
        "--reason",
        "map service maintenance",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("saga name survey paused"), "{}", out(&o));

    // Surveys wait; a mission on the same stream runs.
    let mut written = Vec::new();
    for n in 1..=3 {
        written.push(start_survey(&mut conn, &format!("held-{n}")).await);
    }
    start_mission(&mut conn, "flows", &json!({"area": "b", "robots": 1})).await;
    let events = saga_events(&server, "flows").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");
    // Well past a lease's time, when unacknowledged starts are taken over
    // and counted: no survey started, nothing pending, nothing dead-lettered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = all_events(&server).await;
    let surveys = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.event_type == "saga_started" && e.saga == "survey")
            .map(|e| e.correlation_id.clone())
            .collect()
    };
    assert!(surveys(&events).is_empty(), "{}", describe(&events));
    assert_eq!(
        pending_count(&mut conn, "mission:start", "sagaflow").await,
        0
    );
    assert_eq!(len(&mut conn, "saga:dead-letter").await, 0);
    let paused = paused_names(&url).await;
    assert_eq!(paused["survey"]["by"], "ops@test", "{paused}");
    assert_eq!(paused["survey"]["reason"], "map service maintenance");
    assert_eq!(paused["survey"]["held"], 3, "{paused}");

    // Requests not signed by an operator change nothing (the daemon that
    // answered the pause reads them).
    let issued = now_ms().to_string();
    let unsigned = [
        ("saga", "survey"),
        ("action", "resume_name"),
        ("by", "ops@test"),
        ("reason", "forged"),
        ("issued_ms", issued.as_str()),
        ("nonce", "0123456789abcdef0123456789abcdef"),
    ];
    xadd(&mut conn, "saga:control", &unsigned).await;
    let other = OperatorKey::parse("ops@test:00000000000000000000000000000000").unwrap();
    let forged = NameRequest::signed(&other, "survey", "resume_name", "forged", now_ms());
    xadd(&mut conn, "saga:control", &forged.to_fields()).await;
    let events = wait_for_events(&server, SAGA_WAIT, |events| {
        name_actions(events, "survey")
            .iter()
            .filter(|a| a.3.is_some())
            .count()
            == 2
    })
    .await;
    let refused: Vec<Event> = events
        .into_iter()
        .filter(|e| e.saga == "survey" && e.payload.get("refused").is_some())
        .collect();
    assert!(
        refused
            .iter()
            .all(|e| e.payload["verified"] == false && e.status == "paused"),
        "{}",
        describe(&refused)
    );
    // Carried out aside, each: in either order.
    let why: Vec<&str> = refused
        .iter()
        .map(|e| e.payload["refused"].as_str().unwrap())
        .collect();
    assert!(why.iter().any(|w| w.contains("unsigned")), "{why:?}");
    assert!(why.iter().any(|w| w.contains("does not match")), "{why:?}");

    // The daemon that held them dies; another holds what comes next.
    first.kill9();
    let addr = common::api::free_addr();
    let second = daemon(&url, "names-b", sagas.path(), &["--http-addr", &addr]);
    second.wait_started().await;
    for n in 4..=5 {
        written.push(start_survey(&mut conn, &format!("held-{n}")).await);
    }

    // Held by the new daemon (whose readers then run), and still held past
    // a lease's time.
    let deadline = tokio::time::Instant::now() + SAGA_WAIT;
    while paused_names(&url).await["survey"]["held"] != 5 {
        assert!(tokio::time::Instant::now() < deadline, "not held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = all_events(&server).await;
    assert!(surveys(&events).is_empty(), "{}", describe(&events));
    assert_eq!(len(&mut conn, "saga:dead-letter").await, 0);
    assert_eq!(
        pending_count(&mut conn, "mission:start", "sagaflow").await,
        0
    );
    assert_eq!(paused_names(&url).await["survey"]["held"], 5);

    let o = sagaflow_cli(&[
        "resume",
        "--name",
        "survey",
        "--redis-url",
        &url,
        "--reason",
        "maintenance over",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).contains("the 5 start(s) held are taken"),
        "{}",
        out(&o)
    );
    // Each held start becomes its saga, once, under the id of the entry
    // it was written as; a start written now follows them.
    written.push(start_survey(&mut conn, "after").await);
    let mut correlation_ids: Vec<String> = (1..=5).map(|n| format!("held-{n}")).collect();
    correlation_ids.push("after".into());
    let mut log = common::processes::EventLog::on(&server);
    let events = log
        .wait_all_ended(&correlation_ids, Duration::from_secs(30))
        .await;
    let mut started = surveys(&events);
    started.sort();
    let mut expected = correlation_ids.clone();
    expected.sort();
    assert_eq!(started, expected, "{}", describe(&events));
    for (correlation_id, entry_id) in correlation_ids.iter().zip(&written) {
        let saga_id = SagaId::for_start("mission:start", entry_id).to_string();
        let ends: Vec<&Event> = events
            .iter()
            .filter(|e| e.correlation_id == *correlation_id && e.is_terminal())
            .collect();
        assert_eq!(ends.len(), 1, "{correlation_id}: {}", describe(&events));
        assert_eq!(ends[0].event_type, "saga_completed");
        assert_eq!(ends[0].saga_id, saga_id, "{correlation_id}");
    }
    assert_eq!(len(&mut conn, "saga:dead-letter").await, 0);
    assert_eq!(paused_names(&url).await, json!({}));

    // Who did what and why, on saga:events; counted by the daemon that
    // carried the resume out.
    let accepted: Vec<(String, String, String)> = name_actions(&events, "survey")
        .into_iter()
        .filter(|a| a.3.is_none())
        .map(|(a, b, r, _)| (a, b, r))
        .collect();
    assert_eq!(
        accepted,
        [
            (
                "pause_name".into(),
                "ops@test".into(),
                "map service maintenance".into()
            ),
            (
                "resume_name".into(),
                "ops@test".into(),
                "maintenance over".into()
            ),
        ]
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("the metrics")
        .text()
        .await
        .expect("their text");
    assert!(
        metrics.contains("sagaflow_operator_actions_total{action=\"resume_name\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sagaflow_operator_actions_total{action=\"pause_name\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_requests_through_the_cli_and_the_api_and_their_bad_input() {
    let server = RedisServer::start();
    let sagas = sagas_dir();
    let catalog = sagaflow::definition::load_dir(sagas.path()).expect("the sagas");
    let api = Served::start(&server, catalog, |_| {}).await;
    let _handlers = start_simulated(&server, SimulationOptions::default());
    let url = server.url();
    let a = send(api.get("/v1/definitions")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["definitions"], json!(["mission_start", "survey"]));
    assert_eq!(a.body["paused"], json!({}));

    // Bad input: refused with its reason, nothing written.
    let long = "x".repeat(1025);
    for (args, code, says) in [
        (vec!["pause", "--name", "bad name"], 2, "printable ASCII"),
        (
            vec!["pause", "--name", "survey", "--reason", &long],
            2,
            "the limit is 1024",
        ),
        (
            vec!["pause", "abc", "--name", "survey"],
            2,
            "cannot be used with",
        ),
        (
            vec!["resume", "--name", "survey"],
            1,
            "saga `survey` is not paused",
        ),
        (vec!["pause", "--name", "nope"], 1, "unknown saga `nope`"),
    ] {
        let mut args = args.clone();
        args.extend(["--redis-url", &url]);
        let o = sagaflow_cli(&args).await;
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", out(&o));
        assert!(out(&o).contains(says), "{args:?}: {}", out(&o));
    }
    let post = |path: &str| api.post(path);
    for (request, status, problem) in [
        (
            post("/v1/definitions/nope/pause"),
            404,
            "no-such-definition",
        ),
        (post("/v1/definitions/survey/stop"), 404, "not-found"),
        (post("/v1/definitions/survey/resume"), 409, "conflict"),
        (
            post("/v1/definitions/survey/pause").body(json!({ "reason": long }).to_string()),
            400,
            "bad-body",
        ),
        (
            post("/v1/definitions/survey/pause").body(r#"{"step": "x"}"#),
            400,
            "bad-body",
        ),
        (
            api.http
                .post(api.url("/v1/definitions/survey/pause"))
                .bearer_auth(&api.read),
            403,
            "forbidden",
        ),
        (
            api.http.post(api.url("/v1/definitions/survey/pause")),
            401,
            "unauthorized",
        ),
    ] {
        let a = send(request).await;
        assert_eq!((a.status, a.problem()), (status, problem), "{}", a.text);
    }
    let mut conn = server.any_conn().await;
    let requests = len(&mut conn, "saga:control").await;
    assert_eq!(requests, 1, "only the unknown name's request was written");

    // Paused through the API: its starts wait, the API says so at once.
    let a = send(post("/v1/definitions/survey/pause").body(r#"{"reason": "audit"}"#)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["accepted"], true);
    assert_eq!(a.body["by"], writer_name());
    assert_eq!(a.body["event"]["payload"]["action"], "pause_name");
    assert_eq!(a.body["event"]["status"], "paused");
    let a = send(post("/v1/definitions/survey/pause")).await;
    assert_eq!((a.status, a.problem()), (409, "conflict"), "{}", a.text);
    assert_eq!(a.body["paused"]["reason"], "audit", "{}", a.text);
    let o = sagaflow_cli(&["pause", "--name", "survey", "--redis-url", &url]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("paused already"), "{}", out(&o));
    let a = send(post("/v1/sagas/survey").body(r#"{"area":"a","robots":1}"#)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["status"], "held", "{}", a.text);
    let held_id = a.body["saga_id"].as_str().unwrap().to_owned();
    // Held once a daemon read it.
    let deadline = tokio::time::Instant::now() + SAGA_WAIT;
    let a = loop {
        let a = send(api.get("/v1/definitions")).await;
        if a.body["paused"]["survey"]["held"] == 1 {
            break a;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", a.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a.body["paused"]["survey"]["by"], writer_name());
    let o = sagaflow_cli(&["list", "--redis-url", &url]).await;
    assert!(
        out(&o).contains("survey  by ops@test") && out(&o).contains("1 start(s) held: audit"),
        "{}",
        out(&o)
    );

    let a = send(post("/v1/definitions/survey/resume").body(r#"{"reason": "done"}"#)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["event"]["payload"]["action"], "resume_name");
    let deadline = tokio::time::Instant::now() + SAGA_WAIT;
    loop {
        let a = send(api.get(&format!("/v1/sagas/{held_id}"))).await;
        if a.status == 200 && a.body["state"] == "completed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", a.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.stop().await;
}

/// The held stream of `name` from the mission's stream.
fn held(name: &str) -> Held {
    Held::new(&Keys::new("saga:"), "mission:start", name).expect("a held stream")
}

async fn the_scripts_hold_read_and_release_in_order(server: Redis) {
    let keys = Keys::new("saga:");
    let mut conn = server.any_conn().await;
    let stream = "mission:start";
    must(
        "XGROUP",
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("g")
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut conn),
    )
    .await;
    let pause = r#"{"by":"a","reason":"r","since_ms":1,"nonce":"n1"}"#;
    let paused = holds::change_hold(
        &mut conn,
        &keys,
        stream,
        "s",
        Expected::Any,
        Change::Pause(pause),
    )
    .await
    .unwrap();
    assert!(paused);
    let mut ids = Vec::new();
    for (saga, n) in [("s", "1"), ("other", "2"), ("s", "3")] {
        let fields = [("saga", saga), ("n", n), (HELD_FROM, "9-9")];
        ids.push(xadd(&mut conn, stream, &fields).await);
    }
    let read = words("XREADGROUP GROUP g c COUNT 10 STREAMS mission:start >");
    let _: redis::Value = read.query_async(&mut conn).await.unwrap();
    let entries: Vec<(&str, Option<&str>)> = vec![
        (&ids[0], Some("s")),
        (&ids[1], Some("other")),
        (&ids[2], Some("s")),
    ];
    let sieved = holds::sieve(&mut conn, &keys, stream, "g", &entries, 1 << 20)
        .await
        .unwrap();
    assert_eq!(sieved, [Sieved::Held, Sieved::Take, Sieved::Held]);
    assert_eq!(pending_count(&mut conn, stream, "g").await, 1);
    let copies = xrange(&mut conn, &held("s").stream).await;
    let from: Vec<&str> = copies.iter().map(|f| f[HELD_FROM].as_str()).collect();
    assert_eq!(from, [ids[0].as_str(), ids[2].as_str()]);
    assert!(copies.iter().all(|f| f["saga"] == "s"), "{copies:?}");

    // Paused: nothing is read; resumed: read in order, and released once
    // every entry was acknowledged.
    assert!(read_s(&mut conn).await.is_empty());
    let wrong = holds::change_hold(
        &mut conn,
        &keys,
        stream,
        "s",
        Expected::Exactly(Some("something else")),
        Change::Resume,
    )
    .await
    .unwrap();
    assert!(!wrong);
    let resumed = holds::change_hold(
        &mut conn,
        &keys,
        stream,
        "s",
        Expected::Exactly(Some(pause)),
        Change::Resume,
    )
    .await
    .unwrap();
    assert!(resumed);
    let got = read_s(&mut conn).await;
    let got_from: Vec<String> = got
        .iter()
        .map(|e| String::from_utf8_lossy(&e.fields[HELD_FROM]).into_owned())
        .collect();
    assert_eq!(got_from, [ids[0].clone(), ids[2].clone()]);
    // A start of the name meanwhile joins them, behind.
    let late = xadd(&mut conn, stream, &[("saga", "s")]).await;
    let _: redis::Value = read_group(&mut conn, stream).await;
    let sieved = holds::sieve(
        &mut conn,
        &keys,
        stream,
        "g",
        &[(&late, Some("s"))],
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(sieved, [Sieved::Held]);
    assert!(!holds::release(&mut conn, &keys, &held("s"), "g")
        .await
        .unwrap());
    let got_late = read_s(&mut conn).await;
    assert_eq!(got_late.len(), 1);
    for e in got.iter().chain(&got_late) {
        let _: i64 = redis::cmd("XACK")
            .arg(&held("s").stream)
            .arg("g")
            .arg(&e.id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert!(holds::release(&mut conn, &keys, &held("s"), "g")
        .await
        .unwrap());
    let left: BTreeMap<String, String> = holds::holds_of(&mut conn, &keys, stream).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(len(&mut conn, &held("s").stream).await, 0);
    // Released: the name's starts are taken directly again.
    let direct = xadd(&mut conn, stream, &[("saga", "s")]).await;
    let _: redis::Value = read_group(&mut conn, stream).await;
    let sieved = holds::sieve(
        &mut conn,
        &keys,
        stream,
        "g",
        &[(&direct, Some("s"))],
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(sieved, [Sieved::Take]);
}

async fn read_group(conn: &mut sagaflow::connection::Conn, stream: &str) -> redis::Value {
    let mut read = words("XREADGROUP GROUP g c COUNT 10 STREAMS");
    read.arg(stream).arg(">");
    read.query_async(conn).await.unwrap()
}

/// The held starts of `s` read now, through group `g`.
async fn read_s(conn: &mut sagaflow::connection::Conn) -> Vec<sagaflow::streams::Entry> {
    let keys = Keys::new("saga:");
    holds::read_held(conn, &keys, &[held("s")], "g", "c", 10, 1 << 20)
        .await
        .unwrap()
}

/// A daemon killed while it takes a resumed name's held starts leaves
/// some read and unacknowledged: another daemon takes them over, each
/// once, under the saga id of the entry each was written as.
async fn held_starts_a_dead_daemon_was_taking_are_taken_over_once(server: Redis) {
    let url = server.url();
    let keys = Keys::new("saga:");
    let stream = "mission:start";
    let mut conn = server.any_conn().await;
    must(
        "XGROUP",
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("sagaflow")
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut conn),
    )
    .await;
    // Three surveys held while the name was paused, then resumed; the
    // first two read by a daemon that died before it started them.
    let pause = r#"{"by":"ops@test","reason":"r","since_ms":1,"nonce":"n1"}"#;
    holds::change_hold(
        &mut conn,
        &keys,
        stream,
        "survey",
        Expected::Any,
        Change::Pause(pause),
    )
    .await
    .unwrap();
    let mut written = Vec::new();
    for n in 1..=3 {
        written.push(start_survey(&mut conn, &format!("taken-{n}")).await);
    }
    let _: redis::Value = words("XREADGROUP GROUP sagaflow gone COUNT 10 STREAMS mission:start >")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entries: Vec<(&str, Option<&str>)> = written
        .iter()
        .map(|id| (id.as_str(), Some("survey")))
        .collect();
    let sieved = holds::sieve(&mut conn, &keys, stream, "sagaflow", &entries, 1 << 20)
        .await
        .unwrap();
    assert_eq!(sieved, [Sieved::Held; 3]);
    holds::change_hold(
        &mut conn,
        &keys,
        stream,
        "survey",
        Expected::Exactly(Some(pause)),
        Change::Resume,
    )
    .await
    .unwrap();
    let held_stream = held("survey").stream;
    let mut read = words("XREADGROUP GROUP sagaflow gone COUNT 2 STREAMS");
    read.arg(&held_stream).arg(">");
    let _: redis::Value = read.query_async(&mut conn).await.unwrap();
    assert_eq!(pending_count(&mut conn, &held_stream, "sagaflow").await, 2);

    // A daemon (dead-lettering a start after two deliveries) takes the
    // third, and the two others once they have waited a lease's time.
    let sagas = sagas_dir();
    let sagas = sagas.path().to_str().unwrap();
    let args = [
        "run",
        "--redis-url",
        &url,
        "--node-id",
        "names-c",
        "--sagas",
        sagas,
        "--lease-ttl",
        LEASE_TTL,
        "--max-deliveries",
        "2",
    ];
    let daemon = Child::spawn(
        "names-c",
        &args,
        &[("SAGAFLOW_OPERATOR_KEYS", OPERATOR_KEY)],
    );
    daemon.wait_started().await;
    let _handlers = Child::handlers(&url, &[]);
    let correlation_ids: Vec<String> = (1..=3).map(|n| format!("taken-{n}")).collect();
    let mut log = common::processes::EventLog::on(&server);
    log.wait_all_ended(&correlation_ids, Duration::from_secs(30))
        .await;
    let events = log.settle(Duration::from_secs(2)).await;
    for (correlation_id, entry_id) in correlation_ids.iter().zip(&written) {
        let ours: Vec<&Event> = events
            .iter()
            .filter(|e| e.correlation_id == *correlation_id)
            .collect();
        let starts = ours
            .iter()
            .filter(|e| e.event_type == "saga_started")
            .count();
        assert_eq!(starts, 1, "{correlation_id}: {}", describe(&events));
        let end = ours.last().unwrap();
        assert_eq!(end.event_type, "saga_completed", "{}", describe(&events));
        let saga_id = SagaId::for_start(stream, entry_id).to_string();
        assert_eq!(end.saga_id, saga_id, "{correlation_id}");
    }
    assert_eq!(len(&mut conn, "saga:dead-letter").await, 0);
    // Every start held was taken: the name takes its starts directly again.
    let deadline = tokio::time::Instant::now() + SAGA_WAIT;
    while !holds::holds_of(&mut conn, &keys, stream)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "still held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(len(&mut conn, &held_stream).await, 0);
}
