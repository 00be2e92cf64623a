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
    assert!(err.contains("stream"), "{err}");
    assert!(err.starts_with("sagas/m.yaml:3:"), "{err}");
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
