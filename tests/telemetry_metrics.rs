//! The daemon's HTTP endpoints: `/metrics` counts what happened, `/healthz`
//! answers while the process lives, `/readyz` follows Redis.

mod common;

use common::processes::{mission_sagas, Child, LEASE_TTL};
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free loopback port, for the daemon to take.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET path`: the status code and the body, or `None` when nothing answers.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// Polls `path` until `ok` holds for its answer, or panics with the last.
async fn until(addr: &str, path: &str, ok: impl Fn(u16, &str) -> bool) -> String {
    let mut last = None;
    for _ in 0..100 {
        last = get(addr, path).await;
        if let Some((status, body)) = &last {
            if ok(*status, body) {
                return body.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never answered as expected; last: {last:?}");
}

/// The value of the sample `name{labels}` in a Prometheus text page.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_and_readiness_follows_redis() {
    let mut server = RedisServer::start();
    let addr = free_addr();
    let _daemon = Child::daemon_with(
        &server.url(),
        "metered",
        &["--lease-ttl", LEASE_TTL, "--http-addr", &addr],
        &[],
    );
    let _handlers = Child::handlers(&server.url(), &[]);
    assert_eq!(until(&addr, "/healthz", |s, _| s == 200).await, "ok\n");
    until(&addr, "/readyz", |s, b| s == 200 && b == "ready\n").await;

    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "metered-ok",
        &serde_json::json!({"area": "a", "robots": 2}),
    )
    .await;
    xadd(&mut conn, "mission:start", &[("payload", "{not json")]).await;
    let events = saga_events(&server, "metered-ok").await;
    assert_eq!(events.last().unwrap().event_type, "saga_completed");

    let saga = [("saga", "mission_start")];
    let page = until(&addr, "/metrics", |s, page| {
        // Every counter is there at zero from the start: wait for the
        // saga's own count.
        s == 200
            && sample(page, "sagaflow_sagas_started_total", &saga) == Some(1.0)
            && sample(page, "sagaflow_sagas_rejected_total", &[]).is_some()
    })
    .await;
    assert_eq!(
        sample(&page, "sagaflow_sagas_started_total", &saga),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &page,
            "sagaflow_sagas_ended_total",
            &[("saga", "mission_start"), ("outcome", "completed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        // A start naming no saga is counted under `unknown`; the
        // definitions' own counters start at zero.
        sample(
            &page,
            "sagaflow_sagas_rejected_total",
            &[("saga", "unknown")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&page, "sagaflow_sagas_in_flight", &[]), Some(0.0));
    // One attempt per step, and per robot of the exploration: its
    // branches' attempts count under the step's name.
    for step in MISSION_STEPS {
        let labels = [("step", step), ("kind", "action"), ("outcome", "completed")];
        let attempts = if step == MISSION_FAN_OUT { 2.0 } else { 1.0 };
        assert_eq!(
            sample(&page, "sagaflow_step_duration_seconds_count", &labels),
            Some(attempts),
            "{step}\n{page}"
        );
    }
    assert_eq!(
        sample(&page, "sagaflow_saga_duration_seconds_count", &saga),
        Some(1.0)
    );
    // Measured every few seconds.
    let pending = [("stream", "mission:start"), ("group", "sagaflow")];
    let page_later = until(&addr, "/metrics", |_, page| {
        sample(page, "sagaflow_stream_pending_entries", &pending).is_some()
    })
    .await;
    assert_eq!(
        sample(&page_later, "sagaflow_stream_pending_entries", &pending),
        Some(0.0)
    );
    assert_eq!(sample(&page, "sagaflow_ready", &[]), Some(1.0));
    assert!(
        page.contains("# HELP sagaflow_step_duration_seconds"),
        "described"
    );

    // Redis goes away: not ready, errors counted; back: ready again.
    server.kill();
    let not_ready = until(&addr, "/readyz", |s, _| s == 503).await;
    assert!(not_ready.contains("Redis"), "{not_ready}");
    assert_eq!(
        get(&addr, "/healthz").await.map(|r| r.0),
        Some(200),
        "alive all the same"
    );
    let page = until(&addr, "/metrics", |_, page| {
        sample(page, "sagaflow_redis_errors_total", &[]).is_some()
    })
    .await;
    assert_eq!(sample(&page, "sagaflow_ready", &[]), Some(0.0));
    server.revive();
    until(&addr, "/readyz", |s, _| s == 200).await;
    let page = until(&addr, "/metrics", |_, page| {
        sample(page, "sagaflow_redis_reconnects_total", &[]).is_some()
    })
    .await;
    assert_eq!(sample(&page, "sagaflow_ready", &[]), Some(1.0));
}

#[tokio::test]
async fn a_taken_http_address_stops_the_daemon_with_a_clear_error() {
    let server = RedisServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut daemon = Child::daemon_with(&server.url(), "clash", &["--http-addr", &addr], &[]);
    let status = daemon.wait_exit(STOP_WAIT).await.expect("exits");
    assert!(!status.success());
    let log = daemon.stderr();
    assert!(
        log.contains(&format!("cannot serve HTTP on {addr}")),
        "{log}"
    );
    assert!(log.contains("--http-addr none"), "{log}");
}

#[tokio::test]
async fn a_bad_http_address_is_refused() {
    let server = RedisServer::start();
    let mut daemon = Child::daemon_with(&server.url(), "bad", &["--http-addr", "nowhere"], &[]);
    let status = daemon.wait_exit(STOP_WAIT).await.expect("exits");
    assert!(!status.success());
    assert!(
        daemon.stderr().contains("`nowhere` is not an address"),
        "{}",
        daemon.stderr()
    );
}

/// The address the daemon serves on, from its log line.
fn served_addr(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["fields"]["message"]
                == "serving the dashboard, the API (/v1), /metrics, /healthz and /readyz"
        })
        .and_then(|l| l["fields"]["addr"].as_str().map(str::to_owned))
}

/// Several daemons on one host can each take a port of the system's
/// choosing (`--http-addr 127.0.0.1:0`): the log says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_port_zero_logs_the_port_it_took() {
    let server = RedisServer::start();
    let extra = ["--http-addr", "127.0.0.1:0", "--log-format", "json"];
    let daemons = [
        Child::daemon_with(&server.url(), "any-port-1", &extra, &[]),
        Child::daemon_with(&server.url(), "any-port-2", &extra, &[]),
    ];
    let mut addrs = Vec::new();
    for daemon in &daemons {
        daemon.wait_started().await;
        let log = daemon.stderr();
        let addr = served_addr(&log).unwrap_or_else(|| panic!("no address in:\n{log}"));
        let port: u16 = addr
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("`{addr}` is not 127.0.0.1:<port>"));
        assert_ne!(port, 0, "the port taken, not the one asked for");
        assert_eq!(until(&addr, "/healthz", |s, _| s == 200).await, "ok\n");
        let page = until(&addr, "/metrics", |s, _| s == 200).await;
        assert!(page.contains("sagaflow_sagas_started_total"), "{page}");
        addrs.push(addr);
    }
    assert_ne!(addrs[0], addrs[1], "a port each");
}

/// Every sample of `name`: its labels as written, and its value.
fn series(page: &str, name: &str) -> Vec<(String, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name).then(|| (labels.to_owned(), value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

/// Names from outside (the `saga` field of starts, consumer groups anyone
/// can create) make no series of their own: a daemon's memory and its
/// `/metrics` page stay bounded whatever is written to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_outside_make_a_bounded_number_of_series() {
    let server = RedisServer::start();
    let sagas = tempfile::tempdir().unwrap();
    let mission = std::fs::read_to_string(mission_sagas().join("mission_start.yaml")).unwrap();
    std::fs::write(sagas.path().join("mission_start.yaml"), &mission).unwrap();
    let second = mission
        .replace("name: mission_start", "name: second_mission")
        .replace("trigger: mission:start", "trigger: second:start");
    assert_ne!(second, mission);
    std::fs::write(sagas.path().join("second.yaml"), second).unwrap();
    let loaded = ["mission_start", "second_mission"];
    let addr = free_addr();
    let _daemon = Child::spawn(
        "bounded",
        &[
            "run",
            "--redis-url",
            &server.url(),
            "--node-id",
            "bounded",
            "--sagas",
            sagas.path().to_str().unwrap(),
            "--http-addr",
            &addr,
        ],
        &[],
    );
    until(&addr, "/readyz", |s, _| s == 200).await;

    // Consumer groups made by someone else on the trigger stream.
    let mut conn = server.conn().await;
    let mut groups = redis::pipe();
    for i in 0..100 {
        groups
            .cmd("XGROUP")
            .arg("CREATE")
            .arg("mission:start")
            .arg(format!("g{i:03}"))
            .arg("$")
            .ignore();
    }
    must("XGROUP CREATE", groups.query_async::<()>(&mut conn)).await;

    // Starts naming sagas nobody loaded, each a different one, and starts
    // naming none with a payload that is no object.
    const STARTS: usize = 3000;
    let mut starts = redis::pipe();
    for i in 0..STARTS {
        let fields: Vec<(&str, String)> = match i % 10 {
            0 => vec![("payload", "[]".to_owned())],
            _ => vec![("saga", format!("ghost-{i}")), ("payload", "{}".to_owned())],
        };
        starts
            .cmd("XADD")
            .arg("mission:start")
            .arg("*")
            .arg(&fields)
            .ignore();
    }
    must("XADD", starts.query_async::<()>(&mut conn)).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let page = loop {
        let page = get(&addr, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        let rejected: f64 = series(&page, "sagaflow_sagas_rejected_total")
            .iter()
            .map(|s| s.1)
            .sum();
        if rejected >= STARTS as f64 {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rejected} of {STARTS} starts rejected in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rejected = series(&page, "sagaflow_sagas_rejected_total");
    assert_eq!(
        rejected.len(),
        loaded.len() + 1,
        "a series per loaded saga and one for the rest: {:?}",
        &rejected[..rejected.len().min(10)]
    );
    assert_eq!(
        sample(
            &page,
            "sagaflow_sagas_rejected_total",
            &[("saga", "unknown")]
        ),
        Some(STARTS as f64)
    );
    for saga in loaded {
        let labels = [("saga", saga)];
        assert_eq!(
            sample(&page, "sagaflow_sagas_rejected_total", &labels),
            Some(0.0)
        );
    }
    assert!(!page.contains("ghost-"), "no outside saga name on the page");

    // Groups: the daemons' own, and at most the bound of others by name;
    // the rest are summed under `other`. Measured every few seconds.
    let bound = sagaflow::telemetry::metrics::MAX_GROUPS_PER_STREAM;
    let on_trigger = |page: &str| {
        series(page, "sagaflow_stream_pending_entries")
            .into_iter()
            .filter(|(labels, _)| labels.contains("stream=\"mission:start\""))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let page = loop {
        let page = get(&addr, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        if on_trigger(&page).len() > 1 {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no groups reported:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reported = on_trigger(&page);
    assert_eq!(reported.len(), bound + 2, "{reported:?}");
    let group = |name: &str| format!("group=\"{name}\"");
    assert!(
        reported.iter().any(|(l, _)| l.contains(&group("sagaflow"))),
        "{reported:?}"
    );
    assert!(
        reported.iter().any(|(l, _)| l.contains(&group("other"))),
        "{reported:?}"
    );
}
