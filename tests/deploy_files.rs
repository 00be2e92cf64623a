//! The deployment files, checked without a Docker engine: the compose file by
//! a real compose parser, the mounts it names, Prometheus's config by
//! promtool, the Tempo and Grafana files by parsing them, and the dashboard
//! against the metrics a running daemon exports.

mod common;

use common::processes::{Child, LEASE_TTL};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(manifest_dir().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

/// Runs a checker that scripts/test installs; a clear failure when missing.
fn checker(program: &str, args: &[&str], package: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "`{program}` cannot run ({e}): apt-get install -y {package}, as scripts/test does"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
    text
}

#[test]
fn the_compose_file_is_valid_pinned_and_mounts_files_that_exist() {
    checker(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "-q"],
        "docker-compose",
    );
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    for wanted in [
        "redis",
        "sagaflow-1",
        "sagaflow-2",
        "handlers",
        "mission",
        "tempo",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(wanted), "service {wanted}");
    }
    for (name, service) in services {
        let image = service["image"].as_str().unwrap_or("");
        let (_, tag) = image.rsplit_once(':').unwrap_or(("", ""));
        assert!(
            !tag.is_empty() && tag != "latest",
            "{name}: image `{image}` is not pinned"
        );
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    manifest_dir().join(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
    }
    // The first daemon's API and dashboard are published on the host's
    // loopback only.
    let ports = services["sagaflow-1"]["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p.as_str() == Some("127.0.0.1:9464:9464")),
        "{ports:?}"
    );
    // The daemons export to Tempo's OTLP gRPC receiver, and serve /metrics
    // where Prometheus scrapes them.
    let tempo = yaml("config/tempo.yaml");
    let grpc = &tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"];
    assert_eq!(grpc, "0.0.0.0:4317");
    let prometheus = yaml("config/prometheus.yml");
    let targets: BTreeSet<&str> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for daemon in ["sagaflow-1", "sagaflow-2"] {
        let env = &services[daemon]["environment"];
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://tempo:4317",
            "{daemon}"
        );
        assert_eq!(env["SAGAFLOW_HTTP_ADDR"], "0.0.0.0:9464", "{daemon}");
        assert!(
            targets.contains(format!("{daemon}:9464").as_str()),
            "{daemon} scraped"
        );
    }
}

#[test]
fn prometheus_and_grafana_configs_are_valid() {
    checker(
        "promtool",
        &["check", "config", "config/prometheus.yml"],
        "prometheus",
    );
    let datasources = yaml("config/grafana/provisioning/datasources/datasources.yaml");
    let uids: BTreeSet<&str> = datasources["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["uid"].as_str())
        .collect();
    assert_eq!(uids, BTreeSet::from(["prometheus", "tempo"]));
    let providers = yaml("config/grafana/provisioning/dashboards/dashboards.yaml");
    assert_eq!(
        providers["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
    // Every panel's data source is provisioned.
    for panel in dashboard()["panels"].as_array().unwrap() {
        let uid = panel["datasource"]["uid"].as_str().unwrap();
        assert!(
            uids.contains(uid),
            "panel {}: data source {uid}",
            panel["title"]
        );
    }
}

#[test]
fn the_dockerfile_builds_locked_runs_unprivileged_and_checks_its_health() {
    let text = std::fs::read_to_string(manifest_dir().join("Dockerfile")).unwrap();
    for needed in [
        "cargo build --release --locked",
        "USER sagaflow",
        "STOPSIGNAL SIGTERM",
        "HEALTHCHECK",
        "\"sagaflow\", \"health\"",
        "COPY sagas/",
    ] {
        assert!(text.contains(needed), "the Dockerfile lacks `{needed}`");
    }
    for line in text.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{image} pinned"
        );
    }
    assert!(
        manifest_dir().join("sagas").is_dir(),
        "the sagas the image bakes in"
    );
}

fn dashboard() -> Value {
    let path = manifest_dir().join("config/grafana/dashboards/sagaflow.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the dashboard is JSON")
}

/// The `sagaflow_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sagaflow_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_uses_only_metrics_the_daemon_exports() {
    let server = RedisServer::start();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let _daemon = Child::daemon_with(
        &server.url(),
        "scraped",
        &["--lease-ttl", LEASE_TTL, "--http-addr", &addr],
        &[],
    );
    let _handlers = Child::handlers(&server.url(), &[]);
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "scraped",
        &serde_json::json!({"area": "a", "robots": 1}),
    )
    .await;
    saga_events(&server, "scraped").await;
    let out = sagaflow_cli(&["health", "--addr", &addr]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut page = String::new();
    for _ in 0..50 {
        page = scrape(&addr).await;
        // Histograms after the first saga; pending entries once measured.
        if page.contains("sagaflow_saga_duration_seconds_count")
            && page.contains("sagaflow_stream_pending_entries")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let exported: BTreeSet<String> = page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let dash = dashboard();
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            if let Some(expr) = target["expr"].as_str() {
                used.extend(metric_names(expr));
            }
        }
    }
    used.extend(metric_names(
        dash["templating"]["list"][0]["definition"]
            .as_str()
            .unwrap(),
    ));
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses {missing:?}, not exported:\n{page}"
    );
}

async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}
