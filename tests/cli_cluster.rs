//! The operator commands against a Redis Cluster, given one node's URL and
//! no daemon: saga records are written as the daemon writes them (the
//! store's own transition, under a registered lease), spread over every
//! master, and the real binary finds, lists and checks them; `start` and
//! `cancel` write their entries and take the answer a daemon would give.

mod common;

use common::processes::{mission_sagas, BIN};
use common::*;
use sagaflow::config::Settings;
use sagaflow::connection::Conn;
use sagaflow::protocol::{fields as f, CorrelationId, SagaId, SagaStatus, TraceId};
use sagaflow::saga::{self, RandomIds, SagaInit, SagaState};
use sagaflow::store::{lease, Fence, Ownership, Transition, Written};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The longest a command of the CLI may take here.
const CLI_WAIT: Duration = Duration::from_secs(20);

fn settings(url: &str) -> Settings {
    Settings {
        redis_url: url.to_owned(),
        ..Settings::default()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn both(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// `sagaflow <args>` run to its end, which must be exit 0.
async fn ok(args: &[&str]) -> String {
    let out = sagaflow_cli(args).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "sagaflow {}:\n{}",
        args.join(" "),
        both(&out)
    );
    stdout(&out)
}

/// `sagaflow <args>` started in the background, as [`sagaflow_cli`] runs it.
fn spawn_cli(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("SAGAFLOW_REDIS_URL")
        .env("SAGAFLOW_OPERATOR_KEY", OPERATOR_KEY)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("sagaflow runs")
}

/// Waits at most [`CLI_WAIT`] for a command started by [`spawn_cli`].
async fn finish(child: Child) -> Output {
    let wait = tokio::task::spawn_blocking(move || child.wait_with_output());
    tokio::time::timeout(CLI_WAIT, wait)
        .await
        .expect("the command ended in time")
        .expect("the command's thread")
        .expect("the command's output")
}

/// The entries of `stream`, polled until one is there (at most 10 s).
async fn first_entries(conn: &mut Conn, stream: &str) -> Vec<sagaflow::streams::Entry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply: redis::Value = must(
            "XRANGE",
            redis::cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .query_async(conn),
        )
        .await;
        let entries = sagaflow::streams::decode_range_reply(stream, &reply);
        if !entries.is_empty() {
            return entries;
        }
        assert!(Instant::now() < deadline, "nothing written to {stream}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text(entry: &sagaflow::streams::Entry, field: &str) -> String {
    String::from_utf8_lossy(entry.fields.get(field).map_or(&[][..], |v| v)).into_owned()
}

/// Adds an entry to `stream` with `fields`.
async fn xadd(conn: &mut Conn, stream: &str, fields: &[(&str, String)]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(value);
    }
    must("XADD", cmd.query_async::<String>(conn)).await;
}

/// A new saga of the reference mission, as the machine starts one.
fn new_saga(correlation_id: &str) -> SagaState {
    let catalog = mission_catalog();
    let def = catalog.get("mission_start").expect("the mission");
    let init = SagaInit {
        saga_id: SagaId::generate(),
        correlation_id: CorrelationId::parse(correlation_id).expect("a correlation id"),
        trace_id: TraceId::generate(),
        parent_span_id: None,
        reply_stream: "saga:replies:cli-cluster".into(),
        input: json!({ "area": "hall-a", "robots": 2 }),
    };
    saga::start(def, init, now_ms(), &mut RandomIds).0
}

/// Writes `state` as a transition of `owner`'s, number `seq`.
async fn write(
    conn: &mut Conn,
    settings: &Settings,
    owner: &str,
    seq: u64,
    ownership: Ownership,
    state: &SagaState,
) {
    let transition = Transition {
        saga: Some((
            state.saga_id.as_str(),
            Fence {
                owner,
                seq,
                ownership,
            },
        )),
        state: Some(state),
        ..Default::default()
    };
    let written = bounded("a transition", transition.write(conn, settings)).await;
    assert_eq!(written.expect("written"), Written::Done);
}

/// A saga created by `owner`, left running, or ended as `end`.
async fn saga(
    conn: &mut Conn,
    settings: &Settings,
    owner: &str,
    correlation_id: &str,
    end: Option<SagaStatus>,
) -> SagaState {
    let mut state = new_saga(correlation_id);
    write(conn, settings, owner, 1, Ownership::Join, &state).await;
    if let Some(status) = end {
        state.phase = phase_of(status);
        state.work = Default::default();
        write(conn, settings, owner, 2, Ownership::Leave, &state).await;
    }
    state
}

/// The lines of `list`'s table, by saga id.
fn rows(table: &str) -> BTreeMap<String, String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| Some((l.split_whitespace().next()?.to_owned(), l.to_owned())))
        .collect()
}

async fn cluster_conn(cluster: &RedisCluster) -> Conn {
    Conn::Cluster(cluster.conn().await.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_and_doctor_find_sagas_on_every_master() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let settings = settings(&url);
    let mut conn = cluster_conn(&cluster).await;

    // A live daemon's sagas, 24 running and 12 completed, two of them
    // sharing a correlation id; and a dead daemon's two, orphaned.
    let live = "live.1";
    bounded(
        "a lease",
        lease::register(&mut conn, &settings, live, Duration::from_secs(120)),
    )
    .await
    .expect("registered");
    let mut running = Vec::new();
    let mut completed = Vec::new();
    for i in 0..36 {
        let correlation_id = match i {
            0 | 30 => "shared order".to_owned(),
            i => format!("order-{i}"),
        };
        let end = (i >= 24).then_some(SagaStatus::Completed);
        let state = saga(&mut conn, &settings, live, &correlation_id, end).await;
        if end.is_some() {
            completed.push(state);
        } else {
            running.push(state);
        }
    }
    let dead = "dead.1";
    bounded(
        "a lease",
        lease::register(&mut conn, &settings, dead, Duration::from_secs(120)),
    )
    .await
    .expect("registered");
    let mut orphans = Vec::new();
    for i in 0..2 {
        orphans.push(saga(&mut conn, &settings, dead, &format!("orphan-{i}"), None).await);
    }
    bounded("a release", lease::release(&mut conn, &settings, dead))
        .await
        .expect("released");
    let all: Vec<&SagaState> = running.iter().chain(&completed).chain(&orphans).collect();

    // The records are spread over the three masters: no one node answers
    // for them all.
    let masters: BTreeSet<u16> = all
        .iter()
        .map(|s| cluster.master_for_key(&record_key(s.saga_id.as_str())))
        .collect();
    assert_eq!(masters.len(), 3, "{masters:?}");

    // list: every saga, then by state.
    let table = ok(&["list", "--redis-url", &url]).await;
    let listed = rows(&table);
    for s in &all {
        assert!(
            listed.contains_key(s.saga_id.as_str()),
            "{}:\n{table}",
            s.saga_id
        );
    }
    assert_eq!(listed.len(), all.len(), "{table}");
    for s in &orphans {
        assert!(listed[s.saga_id.as_str()].contains("orphaned"), "{table}");
    }
    for s in &running {
        assert!(listed[s.saga_id.as_str()].contains("running"), "{table}");
    }
    let json: Value = serde_json::from_str(&ok(&["list", "--redis-url", &url, "--json"]).await)
        .expect("a JSON list");
    assert_eq!(json.as_array().map(Vec::len), Some(all.len()));

    let table = ok(&["list", "--redis-url", &url, "--state", "running"]).await;
    let want: BTreeSet<&str> = running
        .iter()
        .chain(&orphans)
        .map(|s| s.saga_id.as_str())
        .collect();
    let got: BTreeMap<String, String> = rows(&table);
    assert_eq!(
        got.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        want,
        "{table}"
    );
    let table = ok(&["list", "--redis-url", &url, "--state", "completed"]).await;
    let want: BTreeSet<&str> = completed.iter().map(|s| s.saga_id.as_str()).collect();
    let got = rows(&table);
    assert_eq!(
        got.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        want,
        "{table}"
    );
    let table = ok(&["list", "--redis-url", &url, "--state", "orphaned"]).await;
    assert_eq!(rows(&table).len(), orphans.len(), "{table}");

    // status by id, by the start of one, by correlation id.
    for s in [&running[3], &completed[5], &orphans[1]] {
        let id = s.saga_id.as_str();
        let shown = ok(&["status", "--redis-url", &url, id]).await;
        assert!(shown.contains(&format!("({id})")), "{shown}");
        let state = if s.phase.status() == SagaStatus::Completed {
            "completed"
        } else {
            "running"
        };
        assert!(
            shown.contains(&format!("state              {state}")),
            "{shown}"
        );
        let prefix = &id[..8];
        let others = all
            .iter()
            .filter(|o| o.saga_id.as_str().starts_with(prefix))
            .count();
        assert_eq!(others, 1, "the start {prefix} names one saga");
        let by_prefix = ok(&["status", "--redis-url", &url, prefix]).await;
        assert!(by_prefix.contains(&format!("({id})")), "{by_prefix}");
        let correlation_id = s.correlation_id.to_string();
        let by_correlation = ok(&[
            "status",
            "--redis-url",
            &url,
            "--correlation-id",
            &correlation_id,
        ])
        .await;
        assert!(
            by_correlation.contains(&format!("({id})")),
            "{by_correlation}"
        );
    }
    let shared = ok(&[
        "status",
        "--redis-url",
        &url,
        "--correlation-id",
        "shared order",
    ])
    .await;
    assert!(
        shared.starts_with("2 sagas have this correlation id"),
        "{shared}"
    );
    for s in [&running[0], &completed[6]] {
        assert!(shared.contains(s.saga_id.as_str()), "{shared}");
    }

    // doctor: the live daemon holds its running sagas, the dead one's are
    // orphaned, and the streams are read (their groups made here).
    let catalog = mission_catalog();
    let mut streams = sagaflow::engine::trigger_streams(&settings, &catalog);
    let trigger_group = settings.trigger_group.clone();
    let mut groups: Vec<(String, String)> = streams
        .drain(..)
        .map(|s| (s, trigger_group.clone()))
        .collect();
    groups.extend(
        catalog
            .command_streams()
            .into_iter()
            .map(|(s, _)| (s, "handlers".to_owned())),
    );
    for (stream, group) in &groups {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg(0)
            .arg("MKSTREAM");
        must("XGROUP CREATE", cmd.query_async::<()>(&mut conn)).await;
    }
    let sagas = mission_sagas();
    let out = sagaflow_cli(&[
        "doctor",
        "--redis-url",
        &url,
        "--sagas",
        sagas.to_str().expect("a UTF-8 path"),
        "--json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let finding = |subject: &str| {
        report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|f| f["subject"] == subject)
            .unwrap_or_else(|| panic!("no finding on {subject}: {report:#}"))
            .clone()
    };
    let daemons = finding("daemons");
    assert_eq!(daemons["level"], "OK", "{daemons}");
    let message = daemons["message"].as_str().unwrap_or("");
    assert!(message.starts_with("1 alive: live.1 (lease "), "{message}");
    assert!(
        message.contains(&format!(", {} sagas)", running.len())),
        "{message}"
    );
    let orphaned = finding("orphaned");
    assert_eq!(orphaned["level"], "WARN", "{orphaned}");
    let message = orphaned["message"].as_str().unwrap_or("");
    assert!(message.starts_with("2 running saga(s)"), "{message}");
    for s in &orphans {
        assert!(message.contains(s.saga_id.as_str()), "{message}");
    }
    for (stream, _) in &groups {
        let subject = if *stream == settings.trigger_stream {
            format!("{stream} (trigger)")
        } else {
            stream.clone()
        };
        assert_eq!(finding(&subject)["level"], "OK", "{report:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_cancel_and_watch_write_and_read_their_streams_on_a_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let settings = settings(&url);
    let mut conn = cluster_conn(&cluster).await;
    // The streams the commands use live on more than one master.
    let on: BTreeSet<u16> = [
        &settings.trigger_stream,
        &settings.events_stream,
        &settings.control_stream,
    ]
    .iter()
    .map(|s| cluster.master_for_key(s))
    .collect();
    assert!(on.len() > 1, "{on:?}");

    // watch, from the next event on.
    let watch = spawn_cli(&["watch", "--redis-url", &url]);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // start writes its entry; the daemon's saga_started answers it.
    let child = spawn_cli(&[
        "start",
        "--redis-url",
        &url,
        "--payload",
        r#"{"area": "hall-b", "robots": 1}"#,
        "--correlation-id",
        "order on a cluster",
    ]);
    let entries = first_entries(&mut conn, &settings.trigger_stream).await;
    let [entry] = entries.as_slice() else {
        panic!("one start: {entries:?}");
    };
    assert_eq!(text(entry, f::CORRELATION_ID), "order on a cluster");
    let payload: Value = serde_json::from_str(&text(entry, f::PAYLOAD)).expect("JSON");
    assert_eq!(payload["area"], "hall-b");
    let saga_id = SagaId::for_start(&settings.trigger_stream, &entry.id).to_string();
    xadd(
        &mut conn,
        &settings.events_stream,
        &[
            (f::EVENT_TYPE, "saga_started".into()),
            (f::SAGA_ID, saga_id.clone()),
            (f::SAGA, "mission_start".into()),
            (f::CORRELATION_ID, "order on a cluster".into()),
            (f::TIMESTAMP, now_ms().to_string()),
            (f::PAYLOAD, "{}".into()),
        ],
    )
    .await;
    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains(&format!("saga id         {saga_id}")),
        "{}",
        both(&out)
    );

    // cancel writes a signed request; the daemon's operator_action answers.
    bounded(
        "a lease",
        lease::register(&mut conn, &settings, "live.2", Duration::from_secs(120)),
    )
    .await
    .expect("registered");
    let running = saga(&mut conn, &settings, "live.2", "to cancel", None).await;
    let id = running.saga_id.to_string();
    let child = spawn_cli(&[
        "cancel",
        "--redis-url",
        &url,
        &id[..8],
        "--reason",
        "withdrawn",
    ]);
    let requests = first_entries(&mut conn, &settings.control_stream).await;
    let [entry] = requests.as_slice() else {
        panic!("one request: {requests:?}");
    };
    let request = sagaflow::protocol::control::ControlRequest::from_fields(&entry.fields)
        .expect("a control request");
    // Signed with the operator's key, on a clock of the cluster's.
    let keys = sagaflow::protocol::control::OperatorKeys::parse(OPERATOR_KEY).expect("keys");
    let written_ms = sagaflow::streams::StreamId::parse(&entry.id)
        .expect("an entry id")
        .ms();
    request.verify(&keys, written_ms).expect("a valid request");
    assert_eq!(request.saga_id.as_str(), id);
    assert_eq!(request.action, "cancel");
    assert_eq!(request.reason, "withdrawn");
    xadd(
        &mut conn,
        &settings.events_stream,
        &[
            (f::EVENT_TYPE, "operator_action".into()),
            (f::SAGA_ID, id.clone()),
            (f::SAGA, "mission_start".into()),
            (f::CORRELATION_ID, "to cancel".into()),
            (f::TIMESTAMP, now_ms().to_string()),
            (
                f::PAYLOAD,
                json!({ "action": "cancel", "by": "ops@test", "reason": "withdrawn" }).to_string(),
            ),
        ],
    )
    .await;
    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains(&format!("cancel of saga {id} accepted (by ops@test)")),
        "{}",
        both(&out)
    );

    // watch showed both events, as a stop signal ends it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = Command::new("kill")
        .arg("-INT")
        .arg(watch.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = finish(watch).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let shown = stdout(&out);
    for (short, event) in [
        (&saga_id[..8], "saga_started"),
        (&id[..8], "operator_action"),
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.contains(short) && l.contains(event)),
            "{short} {event}:\n{shown}"
        );
    }
}

/// The records of one saga per partition at least, read through the
/// library on a cluster connection: what `list` and `status` rest on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_reads_records_of_every_partition_on_a_cluster() {
    let cluster = RedisCluster::start();
    let settings = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster).await;
    bounded(
        "a lease",
        lease::register(&mut conn, &settings, "live.3", Duration::from_secs(120)),
    )
    .await
    .expect("registered");
    let mut ids = BTreeSet::new();
    let mut partitions = BTreeSet::new();
    while partitions.len() < usize::from(sagaflow::store::keys::PARTITIONS) {
        let s = saga(&mut conn, &settings, "live.3", "many", None).await;
        partitions.insert(sagaflow::store::keys::Partition::of(s.saga_id.as_str()));
        ids.insert(s.saga_id.to_string());
    }
    let listed = bounded(
        "a list",
        sagaflow::operator::list(&mut conn, &settings, &[], usize::MAX),
    )
    .await
    .expect("listed");
    let got: BTreeSet<String> = listed.iter().map(|r| r.state.saga_id.to_string()).collect();
    assert_eq!(got, ids);

    // The most recent first, at most as many as asked for.
    let which = sagaflow::operator::SagaRef::Correlation(CorrelationId::from_trusted("many"));
    let found = bounded(
        "a find",
        sagaflow::operator::find(&mut conn, &settings, &which),
    )
    .await
    .expect("found");
    assert_eq!(found.total, ids.len());
    assert_eq!(found.records.len(), sagaflow::operator::MAX_MATCHES);
    let newest = bounded(
        "a list",
        sagaflow::operator::list(&mut conn, &settings, &[], 5),
    )
    .await
    .expect("listed");
    let keys = sagaflow::store::keys::Keys::of(&settings);
    let latest = bounded(
        "the index",
        sagaflow::store::sagas::ids(&mut conn, &keys, &[], 5),
    )
    .await
    .expect("read");
    let newest: Vec<String> = newest.iter().map(|r| r.state.saga_id.to_string()).collect();
    assert_eq!(newest, latest);
}

/// Runs `program` with `input` on its stdin, to its end.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    child
        .stdin
        .take()
        .expect("its stdin")
        .write_all(input.as_bytes())
        .expect("written");
    child.wait_with_output().expect("its output")
}

/// The users `sagaflow acl` prints, applied on every node (a cluster does
/// not share its users), as the viewer and the operator read sagas and
/// look the deployment over: Redis refuses none of what they send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_and_operator_roles_suffice_on_a_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let settings = settings(&url);
    let mut conn = cluster_conn(&cluster).await;
    bounded(
        "a lease",
        lease::register(&mut conn, &settings, "live.4", Duration::from_secs(120)),
    )
    .await
    .expect("registered");
    let mut sagas = Vec::new();
    for i in 0..8 {
        sagas.push(saga(&mut conn, &settings, "live.4", &format!("acl-{i}"), None).await);
    }

    let dir = mission_sagas();
    let dir = dir.to_str().expect("a UTF-8 path");
    let printed = ok(&[
        "acl",
        "--redis-url",
        &url,
        "--sagas",
        dir,
        "--password",
        "viewer=viewer-secret",
        "--password",
        "operator=operator-secret",
    ])
    .await;
    let commands: String = printed
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    for node in cluster.local().nodes() {
        let port = node.port.to_string();
        let out = run_with_input("redis-cli", &["-p", &port], &commands);
        let answers = stdout(&out);
        assert!(
            out.status.success() && answers.lines().all(|l| l == "OK"),
            "on {port}: {}",
            both(&out)
        );
    }
    let port = url.rsplit(':').next().expect("a port");
    let as_user = |user: &str, secret: &str| format!("redis://{user}:{secret}@127.0.0.1:{port}");
    let viewer = as_user("sagaflow-viewer", "viewer-secret");
    let operator = as_user("sagaflow-operator", "operator-secret");

    let listed = rows(&ok(&["list", "--redis-url", &viewer]).await);
    assert_eq!(listed.len(), sagas.len(), "{listed:?}");
    let id = sagas[5].saga_id.to_string();
    let shown = ok(&["status", "--redis-url", &viewer, &id[..8]]).await;
    assert!(shown.contains(&format!("({id})")), "{shown}");
    let out = sagaflow_cli(&["doctor", "--redis-url", &operator, "--sagas", dir]).await;
    // No handler reads the command streams: a FAIL, yet every read passes.
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let report = both(&out);
    assert!(
        report.contains("OK    daemons: 1 alive: live.4"),
        "{report}"
    );
    assert!(!report.contains("cannot be read"), "{report}");

    for node in cluster.local().nodes() {
        let port = node.port.to_string();
        let out = run_with_input("redis-cli", &["-p", &port], "ACL LOG\n");
        let log = stdout(&out);
        assert!(!log.contains("sagaflow-"), "refused on {port}:\n{log}");
    }
}
