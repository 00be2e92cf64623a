//! One test per kind of definition error, each asserting the exact
//! `file:line:column` the user is sent to.

use super::*;
use std::path::Path;

const GOOD: &str = "\
name: mission_start
trigger: mission:start
steps:
  - name: allocate_resources
    stream: resources:commands
    timeout: 10s
    retry: { max_attempts: 3, backoff: exponential, initial_delay: 100ms, max_delay: 1s }
    input:
      area: ${input.area}
    compensation:
      command: release_resources
  - name: plan_route
    stream: routing:commands
    input:
      robot_ids: ${steps.allocate_resources.result.robot_ids}
";

fn error_of(text: &str) -> String {
    let errs = load_str(Path::new("sagas/m.yaml"), text).unwrap_err();
    errs.0[0].to_string()
}

#[test]
fn a_good_definition_loads_with_defaults() {
    let def = load_str(Path::new("m.yaml"), GOOD).unwrap();
    assert_eq!(def.name, "mission_start");
    assert_eq!(def.trigger.as_deref(), Some("mission:start"));
    let alloc = &def.steps[0];
    assert_eq!(alloc.command, "allocate_resources");
    assert_eq!(alloc.timeout, std::time::Duration::from_secs(10));
    assert_eq!(alloc.retry.max_attempts, 3);
    let comp = alloc.compensation.as_ref().unwrap();
    assert_eq!(comp.stream, "resources:commands");
    assert_eq!(comp.timeout, alloc.timeout);
    assert_eq!(comp.retry, DEFAULT_COMPENSATION_RETRY);
    let plan = &def.steps[1];
    assert_eq!(plan.timeout, DEFAULT_STEP_TIMEOUT);
    assert_eq!(plan.retry, DEFAULT_STEP_RETRY);
}

#[test]
fn unknown_keys_are_refused_where_they_stand() {
    let text = GOOD.replace("    timeout: 10s\n", "    timeout: 10s\n    timout: 5s\n");
    let err = error_of(&text);
    assert!(err.starts_with("sagas/m.yaml:7:5: "), "{err}");
    assert!(err.contains("timout"), "{err}");
}

#[test]
fn duplicate_step_names_are_refused() {
    let text = GOOD.replace("  - name: plan_route", "  - name: allocate_resources");
    let err = error_of(&text);
    assert!(
        err.starts_with(
            "sagas/m.yaml:12:11: step name `allocate_resources` is used twice (first at line 4)"
        ),
        "{err}"
    );
}

#[test]
fn references_to_unknown_steps_are_refused() {
    let text = GOOD.replace("steps.allocate_resources.result", "steps.allocate.result");
    let err = error_of(&text);
    assert!(
        err.starts_with("sagas/m.yaml:15:18: input.robot_ids: "),
        "{err}"
    );
    assert!(err.contains("no step has that name"), "{err}");
}

#[test]
fn references_to_later_steps_are_refused() {
    let text = GOOD.replace(
        "area: ${input.area}",
        "area: ${steps.plan_route.result.area}",
    );
    let err = error_of(&text);
    assert!(err.starts_with("sagas/m.yaml:9:13: input.area: "), "{err}");
    assert!(err.contains("has not run yet"), "{err}");
}

#[test]
fn zero_attempts_are_refused() {
    let text = GOOD.replace("max_attempts: 3", "max_attempts: 0");
    let err = error_of(&text);
    assert!(
        err.starts_with("sagas/m.yaml:7:28: max_attempts is 0"),
        "{err}"
    );
}

#[test]
fn bad_durations_are_refused() {
    let err = error_of(&GOOD.replace("timeout: 10s", "timeout: ten seconds"));
    assert!(
        err.starts_with("sagas/m.yaml:6:14: timeout `ten seconds` is not a duration"),
        "{err}"
    );
    let err = error_of(&GOOD.replace("timeout: 10s", "timeout: 0s"));
    assert!(
        err.starts_with("sagas/m.yaml:6:14: timeout must be longer than zero"),
        "{err}"
    );
}

#[test]
fn unknown_backoff_is_refused() {
    let err = error_of(&GOOD.replace("backoff: exponential", "backoff: random"));
    assert!(
        err.starts_with("sagas/m.yaml:7:40: backoff `random` is unknown"),
        "{err}"
    );
}

#[test]
fn yaml_syntax_errors_have_a_location() {
    let err = error_of("name: x\nsteps: [\n");
    assert!(err.starts_with("sagas/m.yaml:"), "{err}");
    let loc: Vec<&str> = err.splitn(4, ':').collect();
    assert!(loc[1].parse::<u32>().unwrap() >= 2, "{err}");
}

#[test]
fn missing_keys_are_named() {
    let err = error_of("name: x\nsteps:\n  - name: a\n");
    assert_eq!(err, "sagas/m.yaml:3:5: step `a` has no `stream`");
}

fn errors_of(text: &str) -> Vec<String> {
    let errs = load_str(Path::new("m.yaml"), text).unwrap_err();
    errs.0.iter().map(ToString::to_string).collect()
}

/// The parser alone places a missing key at what it read last: here the
/// step's `compensation:` mapping.
#[test]
fn a_missing_key_names_its_step_at_the_step_line() {
    let text = GOOD.replace("    stream: resources:commands\n", "");
    assert_eq!(
        errors_of(&text),
        ["m.yaml:4:5: step `allocate_resources` has no `stream`"]
    );
    let text = GOOD.replace("      command: release_resources\n", "      timeout: 1s\n");
    assert_eq!(
        errors_of(&text),
        ["m.yaml:11:7: the compensation of step `allocate_resources` has no `command`"]
    );
    let text = GOOD.replace("max_attempts: 3, ", "");
    assert_eq!(
        errors_of(&text),
        ["m.yaml:7:12: the retry of step `allocate_resources` has no `max_attempts`"]
    );
    let text = GOOD.replace("  - name: plan_route\n", "  - command: plan_route\n");
    assert_eq!(errors_of(&text), ["m.yaml:12:5: step 2 has no `name`"]);
}

#[test]
fn a_mistyped_key_gets_a_suggestion() {
    let text = GOOD.replace("    timeout: 10s\n", "    timout: 10s\n");
    assert_eq!(
        errors_of(&text),
        ["m.yaml:6:5: step `allocate_resources`: unknown key `timout`; did you mean `timeout`?"]
    );
    let text = GOOD.replace("steps:\n", "stepz:\n");
    let errs = errors_of(&text);
    assert!(
        errs.contains(&"m.yaml:3:1: the saga: unknown key `stepz`; did you mean `steps`?".into()),
        "{errs:?}"
    );
    let text = GOOD.replace("    timeout: 10s\n", "    priority: high\n");
    let err = errors_of(&text).join("\n");
    assert!(
        err.starts_with("m.yaml:6:5: step `allocate_resources`: unknown key `priority`; the keys here are name, stream, "),
        "{err}"
    );
}

#[test]
fn a_value_of_the_wrong_kind_is_refused_where_it_stands() {
    let text = GOOD.replace("stream: routing:commands", "stream: [routing, commands]");
    assert_eq!(
        errors_of(&text),
        ["m.yaml:13:13: step `plan_route`: `stream` must be a single value, not a list"]
    );
    let text = GOOD.replace("max_attempts: 3", "max_attempts: three");
    assert_eq!(
        errors_of(&text),
        ["m.yaml:7:28: the retry of step `allocate_resources`: `max_attempts` must be a whole number, not text"]
    );
}

#[test]
fn every_problem_of_a_file_is_reported_in_one_pass() {
    let text = "\
name: x
steps:
  - name: a
    timout: 5s
    compensation:
      command: undo
  - name: b
    stream: s
    retry: { max_attempts: 3, backof: fixed }
  - name: c
";
    assert_eq!(
        errors_of(text),
        [
            "m.yaml:3:5: step `a` has no `stream`",
            "m.yaml:4:5: step `a`: unknown key `timout`; did you mean `timeout`?",
            "m.yaml:9:31: the retry of step `b`: unknown key `backof`; did you mean `backoff`?",
            "m.yaml:10:5: step `c` has no `stream`",
        ]
    );
    // Once the shape is right, every bad value at once.
    let text = GOOD
        .replace("max_attempts: 3", "max_attempts: 0")
        .replace("timeout: 10s", "timeout: 0s")
        .replace(
            "${steps.allocate_resources.result",
            "${steps.allocate.result",
        );
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 3, "{errs:?}");
}

/// Problems of shape in one step do not hide bad values in the others,
/// and the steps after a broken one may still refer to it.
#[test]
fn bad_values_are_reported_with_problems_of_shape() {
    let text = "\
name: x
trigger: mission:start
steps:
  - name: a
    stream: s
    timeout: soon
  - name: b
    timout: 5s
  - name: c
    stream: s
    retry: { max_attempts: 0 }
    input:
      from_b: ${steps.b.result}
      from_z: ${steps.z.result}
description: after the steps
";
    let errs = errors_of(text);
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert!(
        errs[0].starts_with("m.yaml:6:14: timeout `soon` is not a duration"),
        "{errs:#?}"
    );
    assert_eq!(errs[1], "m.yaml:7:5: step `b` has no `stream`");
    assert_eq!(
        errs[2],
        "m.yaml:8:5: step `b`: unknown key `timout`; did you mean `timeout`?"
    );
    assert!(
        errs[3].starts_with("m.yaml:11:28: max_attempts is 0"),
        "{errs:#?}"
    );
    assert!(
        errs[4].starts_with("m.yaml:14:15: input.from_z: "),
        "{errs:#?}"
    );
    assert!(errs[4].contains("no step has that name"), "{errs:#?}");

    // A flow-style list of steps cannot be read a step at a time: its
    // problems of shape come alone, never a wrong one.
    let text = "name: x\nsteps: [{name: a, stream: s, timeout: soon}, {name: b}]\n";
    assert_eq!(errors_of(text), ["m.yaml:2:46: step `b` has no `stream`"]);
}

#[test]
fn whole_document_problems_are_at_its_start_never_at_zero() {
    for (text, says) in [
        ("", "m.yaml:1:1: the file is empty"),
        ("# nothing but a comment\n", "m.yaml:"),
        ("- 1\n- 2\n", "m.yaml:1:1: a saga definition is a mapping of name, trigger, description, steps, not a list"),
        ("name: x\n", "m.yaml:1:1: the saga has no `steps`"),
        ("name: x\nsteps: [\n", "m.yaml:"),
    ] {
        for err in errors_of(text) {
            assert!(err.starts_with(says), "{text:?}: {err}");
            let mut parts = err.splitn(4, ':');
            parts.next();
            let line: u64 = parts.next().unwrap().parse().unwrap();
            let column: u64 = parts.next().unwrap().parse().unwrap();
            assert!(line >= 1 && column >= 1, "{text:?}: {err}");
        }
    }
}

#[test]
fn a_single_file_loads_and_unreadable_paths_have_no_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.saga");
    std::fs::write(&file, GOOD).unwrap();
    assert_eq!(load_dir(&file).unwrap().names(), ["mission_start"]);

    let missing = dir.path().join("missing");
    let msg = load_dir(&missing).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{}: cannot read the sagas directory or file: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn clashes_are_reported_with_the_errors_of_other_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
    std::fs::write(dir.path().join("c.yaml"), "name: c\n").unwrap();
    let msg = load_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("c.yaml:1:1: the saga has no `steps`"), "{msg}");
    assert!(
        msg.contains("b.yaml:1:7: saga `mission_start` is already defined"),
        "{msg}"
    );
}

#[test]
fn an_empty_saga_is_refused() {
    let err = error_of("name: x\nsteps: []\n");
    assert!(
        err.starts_with("sagas/m.yaml:2:8: saga `x` has no steps"),
        "{err}"
    );
}

#[test]
fn a_directory_loads_every_file_and_refuses_clashes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let catalog = load_dir(dir.path()).unwrap();
    assert_eq!(catalog.names(), ["mission_start"]);
    assert!(catalog.for_trigger("mission:start").is_some());

    std::fs::write(
        dir.path().join("b.yml"),
        GOOD.replace("name: mission_start", "name: other"),
    )
    .unwrap();
    let errs = load_dir(dir.path()).unwrap_err();
    let msg = errs.to_string();
    assert!(
        msg.contains("b.yml:2:10: trigger `mission:start` is already bound"),
        "{msg}"
    );

    std::fs::write(
        dir.path().join("b.yml"),
        GOOD.replace("trigger: mission:start\n", ""),
    )
    .unwrap();
    let msg = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("b.yml:1:7: saga `mission_start` is already defined"),
        "{msg}"
    );
}

#[test]
fn an_empty_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("no saga definitions"), "{msg}");
}

#[test]
fn every_bad_expression_is_reported_where_it_is_written() {
    let text = GOOD.replace(
        "      robot_ids: ${steps.allocate_resources.result.robot_ids}\n",
        "      zone: ${input.area}\n      robot_ids: ${steps.allocate.result.robot_ids}\n      list: [1, '${nope}']\n",
    );
    let errs = load_str(Path::new("m.yaml"), &text).unwrap_err();
    let lines: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("m.yaml:16:18: input.robot_ids: "),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("m.yaml:17:17: input.list[1]: "),
        "{lines:?}"
    );
}

#[test]
fn template_literals_keep_their_types() {
    let text = GOOD.replace(
        "      area: ${input.area}\n",
        "      area: ${input.area}\n      n: 3\n      f: 1.5\n      ok: true\n      none: null\n",
    );
    let def = load_str(Path::new("m.yaml"), &text).unwrap();
    let rendered = def.steps[0]
        .input
        .as_ref()
        .unwrap()
        .render(
            &template::Context {
                input: &crate::protocol::Json::of(&serde_json::json!({"area": "a"})),
                results: &Default::default(),
                saga_id: "s",
                correlation_id: "c",
                failure: None,
                item: None,
            },
            false,
        )
        .unwrap();
    assert_eq!(
        rendered,
        serde_json::json!({"area": "a", "n": 3, "f": 1.5, "ok": true, "none": null})
    );
}

#[test]
fn reply_stream_modes_are_read_and_inherited() {
    let text = GOOD.replace(
        "    stream: resources:commands\n",
        "    stream: resources:commands\n    reply_stream: per_request\n",
    );
    let def = load_str(Path::new("m.yaml"), &text).unwrap();
    assert_eq!(def.steps[0].replies, ReplyMode::PerRequest);
    let comp = def.steps[0].compensation.as_ref().unwrap();
    assert_eq!(
        comp.replies,
        ReplyMode::PerRequest,
        "a compensation inherits its step's"
    );
    assert_eq!(def.steps[1].replies, ReplyMode::Shared);

    let err = error_of(&GOOD.replace(
        "    stream: resources:commands\n",
        "    stream: resources:commands\n    reply_stream: private\n",
    ));
    assert!(
        err.starts_with("sagas/m.yaml:6:19: reply_stream `private` is unknown"),
        "{err}"
    );
}

#[test]
fn ack_and_heartbeat_timeouts_load_and_are_not_inherited_by_compensations() {
    let text = GOOD.replace(
        "    timeout: 10s\n",
        "    timeout: 10s\n    ack_timeout: 2s\n    heartbeat_timeout: 5s\n",
    );
    let def = load_str(Path::new("m.yaml"), &text).unwrap();
    let alloc = &def.steps[0];
    assert_eq!(alloc.clocks.ack, Some(std::time::Duration::from_secs(2)));
    assert_eq!(
        alloc.clocks.heartbeat,
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(
        alloc.compensation.as_ref().unwrap().clocks,
        Clocks::default()
    );
    assert_eq!(def.steps[1].clocks, Clocks::default());
}

#[test]
fn a_clock_that_could_never_run_out_first_is_refused() {
    let text = GOOD.replace(
        "    timeout: 10s\n",
        "    timeout: 10s\n    heartbeat_timeout: 10s\n",
    );
    assert_eq!(
        error_of(&text),
        "sagas/m.yaml:7:24: heartbeat_timeout (10s) must be shorter than the attempt's timeout (10s), or it never runs out first"
    );
    // Against the default timeout of 30 s, and on a compensation.
    let text = GOOD.replace(
        "      command: release_resources\n",
        "      command: release_resources\n      timeout: 1s\n      ack_timeout: 1m\n",
    );
    assert_eq!(
        error_of(&text),
        "sagas/m.yaml:13:20: ack_timeout (1m) must be shorter than the attempt's timeout (1s), or it never runs out first"
    );
}
