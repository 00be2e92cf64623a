//! The daemon's settings from their layers, as `sagaflow config` shows them:
//! the shipped file lists every setting at its default, later layers win,
//! and a bad value stops the daemon naming the key and the reason.

mod common;

use common::*;
use std::collections::BTreeMap;

/// `sagaflow config <args>`: key to (value, source).
async fn config(
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<BTreeMap<String, (String, String)>, String> {
    let mut cmd = std::process::Command::new(common::processes::BIN);
    cmd.arg("config").args(args).current_dir(manifest_dir());
    for (key, _) in std::env::vars() {
        if key.starts_with("SAGAFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut words = l.split_whitespace();
            let key = words.next().unwrap().to_owned();
            let value = words.next().unwrap_or("").to_owned();
            (key, (value, words.collect::<Vec<_>>().join(" ")))
        })
        .collect())
}

#[tokio::test]
async fn the_shipped_file_lists_every_setting_at_its_default() {
    let defaults = config(&[], &[]).await.unwrap();
    let from_file = config(&["--config", "config/sagaflow.yaml"], &[])
        .await
        .unwrap();
    assert_eq!(defaults.len(), from_file.len());
    for (key, (value, source)) in &from_file {
        if key == "node_id" {
            continue; // random unless set
        }
        assert!(
            source.starts_with("config/sagaflow.yaml:"),
            "{key} is in the file: {source}"
        );
        assert_eq!(value, &defaults[key].0, "{key}: the file says the default");
    }
}

#[tokio::test]
async fn later_layers_win() {
    let got = config(
        &["--config", "config/sagaflow.yaml", "--lease-ttl", "3s"],
        &[("SAGAFLOW_LEASE_TTL", "5s"), ("SAGAFLOW_RETENTION", "2d")],
    )
    .await
    .unwrap();
    assert_eq!(got["lease_ttl"], ("3s".into(), "flag --lease-ttl".into()));
    assert_eq!(
        got["retention"],
        ("2days".into(), "env SAGAFLOW_RETENTION".into())
    );
    assert!(got["block"].1.starts_with("config/sagaflow.yaml:"));
}

#[tokio::test]
async fn a_bad_configuration_names_the_key_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "block: 1s\nretension: 2d\n").unwrap();
    let e = config(&["--config", file.to_str().unwrap()], &[])
        .await
        .unwrap_err();
    assert!(e.contains("bad.yaml:2: unknown setting `retension`"), "{e}");

    let e = config(&[], &[("SAGAFLOW_MAX_IN_FLIGHT", "many")])
        .await
        .unwrap_err();
    assert!(
        e.contains("SAGAFLOW_MAX_IN_FLIGHT") && e.contains("many"),
        "{e}"
    );

    let e = config(&[], &[("SAGAFLOW_LOG_FORMAT", "loud")])
        .await
        .unwrap_err();
    assert!(
        e.contains("log_format: `loud` is not auto, json or pretty"),
        "{e}"
    );

    // The daemon refuses to start on it, before touching Redis.
    std::fs::write(&file, "lease_ttl: 1ms\n").unwrap();
    let out = sagaflow_cli(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--redis-url",
        "redis://127.0.0.1:1",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad configuration: lease_ttl: at least 300ms"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_api_settings_name_the_key_and_the_reason() {
    let cases = [
        ("SAGAFLOW_API_TOKENS", "alice", "not an API token entry"),
        (
            "SAGAFLOW_API_TOKENS",
            "alice:admin:00",
            "the scope is `read` or `write`",
        ),
        (
            "SAGAFLOW_API_TOKENS",
            "alice:read:secret",
            "not a SHA-256 digest",
        ),
        (
            "SAGAFLOW_API_READ",
            "everyone",
            "`everyone` is not `token` or `open`",
        ),
        (
            "SAGAFLOW_TRACE_URL",
            "http://tempo/trace",
            "trace_url: `http://tempo/trace` has no {trace_id}",
        ),
    ];
    for (var, value, says) in cases {
        let e = config(&[], &[(var, value)]).await.unwrap_err();
        assert!(e.contains(says), "{var}={value}: {e}");
    }
    // A write token needs the operator key that signs its requests.
    let write = format!("alice:write:{}", "0".repeat(64));
    let e = config(&[], &[("SAGAFLOW_API_TOKENS", &write)])
        .await
        .unwrap_err();
    assert!(
        e.contains("`alice` is a write token, but operator_keys has no key of that name"),
        "{e}"
    );
    let keys = format!("alice:{}", "k".repeat(32));
    let got = config(
        &[],
        &[
            ("SAGAFLOW_API_TOKENS", &write),
            ("SAGAFLOW_OPERATOR_KEYS", &keys),
        ],
    )
    .await
    .unwrap();
    // Shown by name and scope, never the digest.
    assert_eq!(got["api_tokens"].0, "alice:write:***");
}
