//! Every command in the README's shell blocks is run, so that the README
//! cannot drift from the program: `sagaflow ...` and `redis-cli ...` lines
//! against a private Redis (the daemon, handlers and watch lines for a
//! moment; `export SAGAFLOW_REDIS_URL` points them all at it), the
//! scripts and `docker compose` by CI and tests/deploy_files.rs, and
//! `cargo build` by every build.

mod common;

use common::processes::Child;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The commands of the README's ```sh blocks, continuation lines joined,
/// comments dropped.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let line = strip_comment(line);
        if let Some(head) = line.trim_end().strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(&line);
        if !pending.trim().is_empty() {
            out.push(pending.trim().to_owned());
        }
        pending.clear();
    }
    out
}

/// The line without a `#` comment (outside quotes, after a space).
fn strip_comment(line: &str) -> String {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return line[..i].to_owned(),
            _ => {}
        }
        prev = c;
    }
    line.to_owned()
}

/// Shell words: spaces split, quotes group.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (_, c) => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_command_runs() {
    let server = RedisServer::start();
    let url = server.url();
    let _daemon = Child::daemon(&url, "readme");
    let _handlers = Child::handlers(&url, &["--work-ms", "400"]);
    let port = url.rsplit(':').next().unwrap().to_owned();
    // A saga under way for the commands that name one.
    let mut conn = server.conn().await;
    start_mission(
        &mut conn,
        "readme",
        &serde_json::json!({"area": "a", "robots": 1}),
    )
    .await;
    let saga_id = saga_events_started(&server).await;

    let commands = readme_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    let mut ran = 0;
    let secret = OPERATOR_KEY.split_once(':').unwrap().1;
    // Set by `export SAGAFLOW_REDIS_URL=...` once, for every command after.
    let mut exported_url = false;
    for command in &commands {
        let line = command
            .replace("<saga id>", &saga_id)
            .replace("<secret>", secret);
        let mut argv = words(&line);
        // `NAME=value` before the program: its environment.
        let mut env = Vec::new();
        while argv.first().is_some_and(|w| {
            w.split_once('=')
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        }) {
            let assignment = argv.remove(0);
            let (name, value) = assignment.split_once('=').unwrap();
            env.push((name.to_owned(), value.to_owned()));
        }
        let program = argv.remove(0);
        match program.as_str() {
            "export" => {
                let (name, value) = argv[0].split_once('=').expect("export NAME=value");
                match name {
                    "SAGAFLOW_REDIS_URL" => {
                        assert!(value.starts_with("redis://"), "`{command}`");
                        assert!(!exported_url, "exported once: `{command}`");
                        exported_url = true;
                    }
                    // The test runs the binary just built.
                    "PATH" => assert!(value.contains("target/release"), "`{command}`"),
                    other => panic!("a README export that nothing runs: `{other}`"),
                }
                ran += 1;
            }
            "sagaflow" | "./target/release/sagaflow" => {
                let sub = argv[0].clone();
                assert!(
                    exported_url || argv.iter().any(|a| a == "--redis-url"),
                    "`{command}` comes before `export SAGAFLOW_REDIS_URL` and names no Redis"
                );
                for arg in argv.iter_mut().filter(|a| a.starts_with("redis://")) {
                    *arg = url.clone();
                }
                let long_running = ["run", "handlers", "watch"].contains(&sub.as_str());
                let mut child = Command::new(processes_bin())
                    .args(&argv)
                    .current_dir(manifest_dir())
                    .env("SAGAFLOW_HTTP_ADDR", "none")
                    .env("SAGAFLOW_REDIS_URL", &url)
                    .env("SAGAFLOW_OPERATOR_KEY", OPERATOR_KEY)
                    .envs(env)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                if long_running {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let still = child.try_wait().unwrap().is_none();
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    assert!(
                        still,
                        "`{command}` stopped:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                } else {
                    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
                        .await
                        .unwrap()
                        .unwrap();
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert!(
                        !stderr.contains("Usage:") && out.status.code().is_some_and(|c| c <= 1),
                        "`{command}` exited {:?}:\n{stderr}",
                        out.status.code()
                    );
                }
                ran += 1;
            }
            "redis-cli" => {
                let out = Command::new("redis-cli")
                    .args(["-p", &port])
                    .args(&argv)
                    .output()
                    .expect("redis-cli runs");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && !stdout.starts_with("ERR"),
                    "`{command}`: {stdout}"
                );
                ran += 1;
            }
            "openssl" => {
                let out = Command::new("openssl")
                    .args(&argv)
                    .output()
                    .expect("openssl runs");
                assert!(out.status.success(), "`{command}`");
                ran += 1;
            }
            // Run by CI (./scripts/test), by every build, or checked by
            // tests/deploy_files.rs (docker compose).
            "./scripts/dev" | "./scripts/test" | "cargo" | "docker" => {}
            other => panic!("a README command that nothing runs: `{other}`"),
        }
    }
    assert!(ran >= 8, "{ran} commands run");
}

fn processes_bin() -> &'static str {
    common::processes::BIN
}

/// The id of the saga the test started, once started.
async fn saga_events_started(server: &RedisServer) -> String {
    let events = wait_for_events(server, SAGA_WAIT, |events| {
        events.iter().any(|e| e.event_type == "saga_started")
    })
    .await;
    events[0].saga_id.clone()
}
