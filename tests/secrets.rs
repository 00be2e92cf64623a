//! Passwords in the Redis URL never reach a person: not in any `--help`
//! (clap shows environment values), not in `sagaflow config`, not in the
//! daemon's logs while it waits for Redis, not in the error about a URL
//! that does not work. Every URL form redis-rs reads is tried: userinfo of
//! `redis://`, `rediss://` and the `valkey` schemes, percent-encoded
//! passwords, and the `pass` query parameter of Unix socket URLs.

mod common;

use common::processes::{Child, BIN};
use common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The password of every URL here: a test fails if it is ever printed.
const SECRET: &str = "Pa55w0rdXyz";

/// `sagaflow <args>` with no `SAGAFLOW_*` variable but `env`.
async fn sagaflow(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(manifest_dir())
        .stdin(Stdio::null())
        .env("RUST_LOG", "info");
    for (key, _) in std::env::vars() {
        if key.starts_with("SAGAFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    let run = tokio::task::spawn_blocking(move || cmd.output());
    tokio::time::timeout(STOP_WAIT, run)
        .await
        .expect("sagaflow answers within the bound")
        .unwrap()
        .unwrap()
}

/// Both outputs, for messages.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics when `shown` holds the password, plain or percent-encoded.
fn assert_no_secret(shown: &str, what: &str) {
    for form in [SECRET, "Pa55w0rd", "Pa%35%35w0rd"] {
        assert!(!shown.contains(form), "{what} shows the password:\n{shown}");
    }
}

/// The subcommands `sagaflow --help` lists.
async fn subcommands() -> Vec<String> {
    let out = sagaflow(&["--help"], &[]).await;
    let help = text(&out);
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 15, "subcommands of:\n{help}");
    names
}

#[tokio::test]
async fn no_help_shows_the_password_of_the_environment() {
    let url = format!("redis://app:{SECRET}@127.0.0.1:1/0");
    let env = [
        ("SAGAFLOW_REDIS_URL", url.as_str()),
        ("SAGAFLOW_CONFIG", "config/sagaflow.yaml"),
    ];
    let top = sagaflow(&["--help"], &env).await;
    assert_no_secret(&text(&top), "sagaflow --help");
    for sub in subcommands().await {
        for args in [vec![sub.as_str(), "--help"], vec!["help", sub.as_str()]] {
            let out = sagaflow(&args, &env).await;
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
            assert_no_secret(&text(&out), &format!("sagaflow {}", args.join(" ")));
        }
    }
    // The variable is still named where a flag reads it.
    let run = sagaflow(&["run", "--help"], &env).await;
    assert!(text(&run).contains("SAGAFLOW_REDIS_URL"), "{}", text(&run));
}

/// Every URL form redis-rs 1.8 reads, with what `sagaflow config` shows.
fn url_forms() -> Vec<(String, String)> {
    let s = SECRET;
    [
        (
            format!("redis://:{s}@10.0.0.1:6380"),
            "redis://:***@10.0.0.1:6380",
        ),
        (
            format!("redis://app:{s}@db.example:6379/2"),
            "redis://app:***@db.example:6379/2",
        ),
        (
            format!("rediss://app:{s}@db.example:6380/#insecure"),
            "rediss://app:***@db.example:6380/#insecure",
        ),
        (format!("valkey://:{s}@10.0.0.1"), "valkey://:***@10.0.0.1"),
        (
            format!("valkeys://app:{s}@10.0.0.1/1"),
            "valkeys://app:***@10.0.0.1/1",
        ),
        // Percent-encoded: `Pa55w0rd` with its 5s written as %35.
        (
            "redis://app:Pa%35%35w0rd%40x@10.0.0.1".to_owned(),
            "redis://app:***@10.0.0.1",
        ),
        // A user name alone is more often a password missing its colon.
        (
            format!("redis://{s}@10.0.0.1:6379"),
            "redis://***@10.0.0.1:6379",
        ),
        (
            format!("unix:///run/redis.sock?pass={s}"),
            "unix:///run/redis.sock?pass=***",
        ),
        (
            format!("redis+unix:///run/redis.sock?user=app&pass={s}&db=3"),
            "redis+unix:///run/redis.sock?user=app&pass=***&db=3",
        ),
        (
            format!("valkey+unix:///run/valkey.sock?pass={s}"),
            "valkey+unix:///run/valkey.sock?pass=***",
        ),
        (
            format!("unix:///run/redis.sock?password={s}"),
            "unix:///run/redis.sock?password=***",
        ),
        // The key percent-encoded (`pa%73s` is `pass`).
        (
            format!("unix:///run/redis.sock?pa%73s={s}"),
            "unix:///run/redis.sock?pass=***",
        ),
        (
            format!("redis://10.0.0.1/?protocol=resp3&token={s}"),
            "redis://10.0.0.1/?protocol=resp3&token=***",
        ),
        (
            format!("unix://:{s}@localhost/run/redis.sock"),
            "unix://:***@localhost/run/redis.sock",
        ),
    ]
    .into_iter()
    .map(|(url, shown)| (url, shown.to_owned()))
    .collect()
}

/// The value `sagaflow config` shows for `redis_url`.
fn shown_url(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("redis_url "))
        .unwrap_or_else(|| panic!("no redis_url in:\n{}", text(out)));
    line.split_whitespace().nth(1).unwrap_or("").to_owned()
}

#[tokio::test]
async fn config_masks_the_password_of_every_url_form() {
    let dir = tempfile::tempdir().unwrap();
    for (url, expected) in url_forms() {
        // From a flag, from the environment, and from the file.
        let file = dir.path().join("settings.yaml");
        std::fs::write(&file, format!("redis_url: '{url}'\n")).unwrap();
        let file = file.to_str().unwrap();
        for (args, env) in [
            (vec!["config", "--redis-url", url.as_str()], vec![]),
            (vec!["config"], vec![("SAGAFLOW_REDIS_URL", url.as_str())]),
            (vec!["config", "--config", file], vec![]),
        ] {
            let out = sagaflow(&args, &env).await;
            assert_eq!(out.status.code(), Some(0), "{url}: {}", text(&out));
            assert_no_secret(&text(&out), &format!("config of {url}"));
            assert_eq!(shown_url(&out), expected, "{url}");
        }
    }
}

#[tokio::test]
async fn a_daemon_waiting_for_redis_logs_no_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let socket = socket.to_str().unwrap();
    for (node, url, shown) in [
        (
            "tcp",
            format!("redis://app:{SECRET}@127.0.0.1:{closed}"),
            format!("redis://app:***@127.0.0.1:{closed}"),
        ),
        (
            "unix",
            format!("unix://{socket}?pass={SECRET}"),
            format!("unix://{socket}?pass=***"),
        ),
        (
            "redis-unix",
            format!("redis+unix://{socket}?user=app&password={SECRET}"),
            format!("redis+unix://{socket}?user=app&password=***"),
        ),
    ] {
        let daemon = Child::daemon_with(&url, node, &["--log-format", "pretty"], &[]);
        daemon
            .wait_for_log("connecting to Redis at", Duration::from_secs(10))
            .await;
        let log = daemon.stderr();
        assert!(log.contains(&shown), "{node}: the URL, masked:\n{log}");
        assert_no_secret(&log, &format!("the log of a daemon on {node}"));
    }
}

#[tokio::test]
async fn an_unusable_url_is_refused_without_its_password() {
    let s = SECRET;
    let cases = [
        // Not a number where the port goes: the URL does not parse.
        format!("redis://:{s}@127.0.0.1:port"),
        // A database that is not a number, in a socket URL.
        format!("unix:///run/redis.sock?pass={s}&db=first"),
        format!("redis+unix:///run/redis.sock?password={s}&protocol=9"),
        // A password holding `/`, `?` and `#`, not percent-encoded.
        format!("redis://:{s}/a?b#c@127.0.0.1:6379"),
        // A scheme redis-rs does not read.
        format!("http://app:{s}@127.0.0.1:6379"),
        format!("redis:app:{s}@127.0.0.1"),
    ];
    for url in &cases {
        for command in ["list", "status", "handlers"] {
            let mut args = vec![command, "--redis-url", url.as_str()];
            if command == "status" {
                args.push("0123456789abcdef0123456789abcdef");
            }
            let out = sagaflow(&args, &[]).await;
            assert_ne!(out.status.code(), Some(0), "{args:?}");
            let shown = text(&out);
            assert!(shown.contains("invalid Redis URL"), "{args:?}: {shown}");
            assert_no_secret(&shown, &format!("sagaflow {command} on {url}"));
        }
        let sagas = mission_sagas_dir();
        let out = sagaflow(
            &[
                "run",
                "--http-addr",
                "none",
                "--sagas",
                &sagas,
                "--redis-url",
                url,
            ],
            &[],
        )
        .await;
        assert_eq!(out.status.code(), Some(1), "run on {url}: {}", text(&out));
        assert!(text(&out).contains("invalid Redis URL"), "{}", text(&out));
        assert_no_secret(&text(&out), &format!("sagaflow run on {url}"));
    }
}

fn mission_sagas_dir() -> String {
    manifest_dir().join("sagas").to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_broken_configuration_file_shows_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://:{SECRET}@127.0.0.1:6379");
    for (name, yaml, says) in [
        (
            "syntax.yaml",
            format!("redis_url: {url}\nblock: [1s\nlease_ttl: 3s\n"),
            "syntax.yaml: not a YAML mapping of settings: illegal placement of ':' indicator at line 3, column 10",
        ),
        (
            "quote.yaml",
            format!("redis_url: \"{url}\n"),
            "unclosed quote",
        ),
        (
            "twice.yaml",
            format!("redis_url: {url}\nredis_url: {url}\n"),
            "duplicate mapping key: redis_url",
        ),
        (
            "list.yaml",
            format!("redis_url:\n  - {url}\n"),
            "list.yaml:1: redis_url: a list or a mapping is not a single value",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        for command in ["config", "run", "list"] {
            let out = sagaflow(&[command, "--config", file.to_str().unwrap()], &[]).await;
            assert_eq!(
                out.status.code(),
                Some(1),
                "{command} {name}: {}",
                text(&out)
            );
            assert!(
                text(&out).contains(says),
                "{command} {name}: {}",
                text(&out)
            );
            assert_no_secret(&text(&out), &format!("{command} on {name}"));
        }
    }
}

/// Operators' secrets stay out of `sagaflow config` and every `--help`,
/// whether they come from the environment or the configuration file.
#[tokio::test]
async fn operators_secrets_are_never_shown() {
    let secret = format!("{SECRET}{SECRET}{SECRET}");
    let keys = format!("alice:{secret},bob:{secret}");
    let key = format!("alice:{secret}");
    let env = [
        ("SAGAFLOW_OPERATOR_KEYS", keys.as_str()),
        ("SAGAFLOW_OPERATOR_KEY", key.as_str()),
    ];
    let out = sagaflow(&["config"], &env).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert_no_secret(&shown, "sagaflow config");
    assert!(shown.contains("alice:***,bob:***"), "{shown}");
    for sub in subcommands().await {
        let out = sagaflow(&[&sub, "--help"], &env).await;
        assert_no_secret(&text(&out), &format!("sagaflow {sub} --help"));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("operator_keys: \"{keys}\"\n")).unwrap();
    let path = file.path().to_string_lossy().into_owned();
    let out = sagaflow(&["config", "--config", &path], &[]).await;
    assert_no_secret(&text(&out), "sagaflow config --config");
    // A key too short is refused without being quoted.
    let out = sagaflow(&["config"], &[("SAGAFLOW_OPERATOR_KEY", "alice:Pa55w0rd")]).await;
    assert!(!out.status.success());
    assert_no_secret(&text(&out), "the refusal of a short key");
}
