//! `sagaflow validate` as a user runs it: a file or a directory, every
//! problem of a file at once as `<file>:<line>:<column>: <problem>`, and the
//! same lines from `sagaflow run`, which refuses to start on them.

mod common;

use common::*;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sagaflow");

/// Runs `sagaflow <args>` to its end, without the test's `SAGAFLOW_*`.
fn sagaflow(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(manifest_dir())
        .stdin(Stdio::null())
        .env("SAGAFLOW_HTTP_ADDR", "none");
    for (key, _) in std::env::vars() {
        if key.starts_with("SAGAFLOW_") && key != "SAGAFLOW_HTTP_ADDR" {
            cmd.env_remove(key);
        }
    }
    cmd.output().expect("sagaflow runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A definition with four problems of shape in three steps, and a bad
/// value in a fourth.
const BROKEN: &str = "\
name: broken
steps:
  - name: a
    timout: 5s
    compensation:
      command: undo
  - name: b
    stream: s
    retry: { max_attempts: 3, backof: fixed }
  - name: c
  - name: d
    stream: s
    timeout: soon
";

/// The lines of stderr that point into a file, each checked to be
/// `<file>:<line>:<column>: <problem>` with a 1-based line and column.
fn located(stderr: &str, file: &str) -> Vec<String> {
    let prefix = format!("{file}:");
    let lines: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect();
    for line in &lines {
        let mut parts = line.splitn(3, ':');
        let l: u64 = parts.next().unwrap().parse().expect("a line number");
        let c: u64 = parts.next().unwrap().parse().expect("a column");
        assert!(l >= 1 && c >= 1, "{line}");
        assert!(parts.next().unwrap().starts_with(' '), "{line}");
    }
    lines
}

#[test]
fn validate_takes_one_file() {
    let out = sagaflow(&["validate", "sagas/mission_start.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "sagas/mission_start.yaml: saga `mission_start` (4 steps) is valid\n"
    );
}

#[test]
fn validate_reports_every_problem_of_a_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let file = file.to_str().unwrap();

    let out = sagaflow(&["validate", file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        located(&stderr, file),
        [
            "3:5: step `a` has no `stream`",
            "4:5: step `a`: unknown key `timout`; did you mean `timeout`?",
            "9:31: the retry of step `b`: unknown key `backof`; did you mean `backoff`?",
            "10:5: step `c` has no `stream`",
            "13:14: timeout `soon` is not a duration (expected number at 0); write e.g. 500ms, 30s, 5m",
        ],
        "{stderr}"
    );
    assert!(
        stderr.ends_with("sagaflow: 5 problem(s) in the saga definitions\n"),
        "{stderr}"
    );
    assert!(!stderr.contains(":0:"), "{stderr}");
}

#[test]
fn validate_of_a_directory_reports_each_file_and_run_refuses_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(manifest_dir().join("sagas/mission_start.yaml")).unwrap();
    std::fs::write(dir.path().join("a_good.yaml"), good).unwrap();
    std::fs::write(dir.path().join("b_broken.yaml"), BROKEN).unwrap();
    std::fs::write(dir.path().join("c_empty.yml"), "").unwrap();
    let path = dir.path().to_str().unwrap();

    let validate = sagaflow(&["validate", path]);
    assert_eq!(validate.status.code(), Some(1));
    let stderr = text(&validate.stderr);
    let broken = dir.path().join("b_broken.yaml");
    assert_eq!(
        located(&stderr, broken.to_str().unwrap()).len(),
        5,
        "{stderr}"
    );
    let empty = dir.path().join("c_empty.yml");
    assert_eq!(
        located(&stderr, empty.to_str().unwrap()),
        ["1:1: the file is empty: a saga definition is a mapping of name, trigger, description, steps"],
        "{stderr}"
    );

    // The daemon loads the same way, refuses to start before it reaches
    // for Redis (nothing listens on port 1), and says the same.
    let run = sagaflow(&["run", "--sagas", path, "--redis-url", "redis://127.0.0.1:1"]);
    assert_eq!(run.status.code(), Some(1));
    let run_stderr = text(&run.stderr);
    for line in stderr.lines().filter(|l| l.starts_with(path)) {
        assert!(run_stderr.contains(line), "`{line}` not in:\n{run_stderr}");
    }
    assert!(
        run_stderr.contains("sagaflow: 6 problem(s) in the saga definitions; nothing was started"),
        "{run_stderr}"
    );
}

#[test]
fn validate_of_a_path_that_is_not_there_names_it_without_a_position() {
    let out = sagaflow(&["validate", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("no/such/dir: cannot read the sagas directory or file: "),
        "{stderr}"
    );
}

/// A definition whose steps wait for each other (`after`) and fan out
/// (`for_each`): a good one is valid, and every problem of a bad one is
/// reported at once, each where it is written.
#[test]
fn validate_checks_the_steps_a_step_waits_for_and_its_fan_out() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("dag.yaml");
    std::fs::write(
        &good,
        "\
name: dag
steps:
  - name: allocate
    stream: s
  - name: scan
    stream: s
    after: [allocate]
    for_each: ${steps.allocate.result.robot_ids}
    max_concurrency: 2
    input: { robot: '${item}', branch: '${index}' }
  - name: survey
    stream: s
    after: [allocate]
  - name: merge
    stream: s
    after: [scan, survey]
    input: { maps: '${steps.scan.result}', area: '${steps.survey.result.area}' }
",
    )
    .unwrap();
    let good = good.to_str().unwrap();
    let out = sagaflow(&["validate", good]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{good}: saga `dag` (4 steps) is valid\n")
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "\
name: bad
steps:
  - name: allocate
    stream: s
    after: [merge]
  - name: scan
    stream: s
    after: [allocate, scan]
    for_each: 'robots: ${input.robots}'
  - name: survey
    stream: s
    after: []
    input: { robot: '${item}' }
  - name: merge
    stream: s
    after: [scan, survay]
    input: { area: '${steps.survey.result.area}' }
",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let out = sagaflow(&["validate", bad]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        located(&stderr, bad),
        [
            "8:23: step `scan` names itself in its `after`: a step cannot wait for itself",
            "9:15: for_each `robots: ${input.robots}` is text with expressions in it, always a string: it must be exactly one expression; write `${input.<path>}` or `${steps.<step>.result.<path>}` for the list of the branches",
            "13:21: input.robot: `${item}` is only available in the input of a step with `for_each` and of its compensation (the element of one branch, and its position)",
            "16:13: this `after` closes a cycle: merge → scan → allocate → merge (each step waits for the next), so none of them can start",
            "16:19: `after` of step `merge` names step `survay`, but no step has that name; did you mean `survey`?",
            "17:20: input.area: `${steps.survey.result.area}` reads the result of step `survey`, which step `merge` does not wait for, so it may not have completed: add `survey` to the `after` of `merge`",
        ],
        "{stderr}"
    );
}
