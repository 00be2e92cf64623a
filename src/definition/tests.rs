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
    assert_eq!(
        err,
        "sagas/m.yaml:9:13: input.area: `${steps.plan_route.result.area}` reads the result of step `plan_route`, which step `allocate_resources` does not wait for, so it may not have completed: add `plan_route` to the `after` of `allocate_resources`"
    );
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

// Steps that wait for others (`after`) and fan-outs (`for_each`).

/// The steps each step waits for, by name.
fn after_of(def: &SagaDefinition) -> Vec<Vec<&str>> {
    def.steps
        .iter()
        .map(|s| {
            s.after
                .iter()
                .map(|&j| def.steps[j].name.as_str())
                .collect()
        })
        .collect()
}

#[test]
fn without_after_each_step_waits_for_the_one_before_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sagas/mission_start.yaml");
    let catalog = load_dir(&path).unwrap();
    let def = catalog.get("mission_start").unwrap();
    assert_eq!(
        after_of(def),
        [
            vec![],
            vec!["allocate_resources"],
            vec!["plan_route"],
            vec!["perform_exploration"],
        ]
    );
    // The exploration is a fan-out over the robots, four at a time.
    let fan_outs: Vec<(&str, Option<u32>)> = (def.steps.iter())
        .filter_map(|s| Some((s.name.as_str(), s.for_each.as_ref()?.max_concurrency)))
        .collect();
    assert_eq!(fan_outs, [("perform_exploration", Some(4))]);
    assert_eq!(def.ancestors(0), Vec::<usize>::new());
    assert_eq!(def.ancestors(3), [0, 1, 2]);
    assert_eq!(def.dependents(1).collect::<Vec<_>>(), [2]);

    let def = load_str(Path::new("m.yaml"), GOOD).unwrap();
    assert_eq!(after_of(&def), [vec![], vec!["allocate_resources"]]);
}

/// Two steps in parallel, then a join; `after` may name a step listed
/// later, and `after: []` starts a step with the saga wherever it stands.
#[test]
fn after_names_the_steps_a_step_waits_for() {
    let text = "\
name: dag
steps:
  - name: merge
    stream: s
    after: [scan_north, scan_south]
    input:
      north: ${steps.scan_north.result.map}
      south: ${steps.scan_south.result.map}
      area: ${steps.allocate.result.area}
  - name: allocate
    stream: s
    after: []
  - name: scan_north
    stream: s
  - name: scan_south
    stream: s
    after: [allocate]
  - name: report
    stream: s
    after: []
";
    let def = load_str(Path::new("m.yaml"), text).unwrap();
    assert_eq!(
        after_of(&def),
        [
            vec!["scan_north", "scan_south"],
            vec![],
            vec!["allocate"],
            vec!["allocate"],
            vec![],
        ]
    );
    assert_eq!(
        def.ancestors(0),
        [1, 2, 3],
        "through the steps it waits for"
    );
    assert_eq!(def.ancestors(4), Vec::<usize>::new());
    assert_eq!(def.dependents(1).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(def.dependents(0).count(), 0);
}

#[test]
fn after_names_known_other_steps_once_each() {
    let text = "\
name: dag
steps:
  - name: allocate
    stream: s
  - name: scan
    stream: s
    after: [alocate, scan, allocate]
  - name: merge
    stream: s
    after:
      - scan
      - allocate
      - scan
      - nothing_like_it
";
    assert_eq!(
        errors_of(text),
        [
            "m.yaml:7:13: `after` of step `scan` names step `alocate`, but no step has that name; did you mean `allocate`?",
            "m.yaml:7:22: step `scan` names itself in its `after`: a step cannot wait for itself",
            "m.yaml:13:9: step `merge` lists `scan` twice in its `after` (first at 11:9)",
            "m.yaml:14:9: `after` of step `merge` names step `nothing_like_it`, but no step has that name",
        ]
    );
}

#[test]
fn each_cycle_is_reported_once_at_the_entry_that_closes_it() {
    // `b` waits for `a` (listed before it); `a` waiting for `b` closes it.
    // `d` and `e` wait for each other; `f` for `e`, and `c` (through `d`)
    // for `f`.
    let text = "\
name: cycles
steps:
  - name: a
    stream: s
    after: [b]
  - name: b
    stream: s
  - name: c
    stream: s
    after: [f]
  - name: d
    stream: s
    after: [e, c]
  - name: e
    stream: s
    after: [d]
  - name: f
    stream: s
    after: [e]
";
    assert_eq!(
        errors_of(text),
        [
            "m.yaml:5:13: this `after` closes a cycle: a → b → a (each step waits for the next), so none of them can start",
            "m.yaml:16:13: this `after` closes a cycle: e → d → e (each step waits for the next), so none of them can start",
            "m.yaml:19:13: this `after` closes a cycle: f → e → d → c → f (each step waits for the next), so none of them can start",
        ]
    );
    // Closed by an entry naming a later step, through the steps that wait
    // for the one listed before them.
    let text = "\
name: cycles
steps:
  - name: a
    stream: s
  - name: b
    stream: s
    after: [d]
  - name: c
    stream: s
  - name: d
    stream: s
";
    assert_eq!(
        errors_of(text),
        ["m.yaml:7:13: this `after` closes a cycle: b → d → c → b (each step waits for the next), so none of them can start"]
    );
}

#[test]
fn a_template_reads_only_steps_its_step_waits_for() {
    let text = "\
name: dag
steps:
  - name: a
    stream: s
    after: []
  - name: b
    stream: s
    after: []
    input:
      from_a: ${steps.a.result.x}
      mine: ${steps.b.result.x}
    compensation:
      command: undo_b
      input:
        mine: ${steps.b.result.x}
        from_a: ${steps.a.result.x}
  - name: c
    stream: s
    after: [b]
    input:
      from_b: ${steps.b.result.x}
      from_a: ${steps.a.result.x}
  - name: d
    stream: s
    after: [c]
    input:
      from_b: ${steps.b.result.x}
      from_c: ${steps.c.result.x}
    compensation:
      command: undo_d
      input:
        mine: ${steps.d.result.x}
        from_b: ${steps.b.result.x}
";
    let not_waited = |at: &str, path: &str, step: &str, of: &str| {
        format!("m.yaml:{at}: {path}: `${{steps.{step}.result.x}}` reads the result of step `{step}`, which step `{of}` does not wait for, so it may not have completed: add `{step}` to the `after` of `{of}`")
    };
    assert_eq!(
        errors_of(text),
        [
            not_waited("10:15", "input.from_a", "a", "b"),
            "m.yaml:11:13: input.mine: `${steps.b.result.x}` reads the result of step `b` itself, which exists only once it has completed: only its compensation's input may read it".to_owned(),
            not_waited("16:17", "input.from_a", "a", "b"),
            not_waited("22:15", "input.from_a", "a", "c"),
        ]
    );
}

const FAN_OUT: &str = "\
name: fan_out
steps:
  - name: allocate_resources
    stream: resources:commands
  - name: explore
    stream: exploration:commands
    for_each: ${steps.allocate_resources.result.robot_ids}
    max_concurrency: 4
    input:
      robot: ${item}
      zone: ${item.zone}
      branch: ${index}
      area: ${input.area}
    compensation:
      command: abort_exploration
      input:
        robot: ${item}
        branch: ${index}
        maps: ${steps.explore.result}
  - name: merge
    stream: mapping:commands
    input:
      partial_maps: ${steps.explore.result}
";

#[test]
fn a_fan_out_loads_with_its_list_and_bound() {
    let def = load_str(Path::new("m.yaml"), FAN_OUT).unwrap();
    let explore = &def.steps[1];
    assert_eq!(
        explore.for_each,
        Some(ForEach {
            items: template::Expr::StepResult {
                step: "allocate_resources".into(),
                path: vec!["robot_ids".into()],
            },
            max_concurrency: Some(4),
        })
    );
    assert_eq!(
        after_of(&def),
        [vec![], vec!["allocate_resources"], vec!["explore"]]
    );
    let ctx = |item| template::Context {
        input: Box::leak(Box::new(crate::protocol::Json::of(
            &serde_json::json!({"area": "hall-a", "ids": [1, 2]}),
        ))),
        results: Box::leak(Box::default()),
        saga_id: "s",
        correlation_id: "c",
        failure: None,
        item,
    };
    let robot = serde_json::json!({"id": "r7", "zone": 3});
    let rendered = explore
        .input
        .as_ref()
        .unwrap()
        .render(&ctx(Some((&robot, 2))), false)
        .unwrap();
    assert_eq!(
        rendered,
        serde_json::json!({"robot": {"id": "r7", "zone": 3}, "zone": 3, "branch": 2, "area": "hall-a"})
    );

    // From the saga input, without a bound.
    let text = FAN_OUT
        .replace(
            "${steps.allocate_resources.result.robot_ids}",
            "${input.ids}",
        )
        .replace("    max_concurrency: 4\n", "");
    let def = load_str(Path::new("m.yaml"), &text).unwrap();
    let for_each = def.steps[1].for_each.as_ref().unwrap();
    assert_eq!(for_each.items, template::Expr::Input(vec!["ids".into()]));
    assert_eq!(for_each.max_concurrency, None);
    let bound = FAN_OUT.replace(
        "max_concurrency: 4",
        &format!("max_concurrency: {MAX_BRANCHES}"),
    );
    let def = load_str(Path::new("m.yaml"), &bound).unwrap();
    let limit = u32::try_from(MAX_BRANCHES).unwrap();
    assert_eq!(
        def.steps[1].for_each.as_ref().unwrap().max_concurrency,
        Some(limit)
    );
}

#[test]
fn for_each_is_one_expression_of_the_input_or_a_result_waited_for() {
    let wanted =
        "write `${input.<path>}` or `${steps.<step>.result.<path>}` for the list of the branches";
    let with = |for_each: &str| {
        FAN_OUT.replace(
            "for_each: ${steps.allocate_resources.result.robot_ids}",
            &format!("for_each: {for_each}"),
        )
    };
    for (for_each, says) in [
        (
            "robots-${input.ids}",
            format!("for_each `robots-${{input.ids}}` is text with expressions in it, always a string: it must be exactly one expression; {wanted}"),
        ),
        (
            "r1",
            format!("for_each `r1` is not an expression: {wanted}"),
        ),
        (
            "'3'",
            format!("for_each `3` is not an expression: {wanted}"),
        ),
        (
            "${saga_id}",
            format!("for_each `${{saga_id}}` is not a list of the saga input or of a step's result: {wanted}"),
        ),
        (
            "${steps.explore.result}",
            "for_each: `${steps.explore.result}` reads the result of step `explore` itself, which exists only once it has completed: only its compensation's input may read it".to_owned(),
        ),
        (
            "${steps.merge.result.ids}",
            "for_each: `${steps.merge.result.ids}` reads the result of step `merge`, which step `explore` does not wait for, so it may not have completed: add `merge` to the `after` of `explore`".to_owned(),
        ),
        (
            "${steps.alloc.result.ids}",
            "for_each: `${steps.alloc.result.ids}` refers to step `alloc`, but no step has that name".to_owned(),
        ),
        (
            "${item.ids}",
            "for_each: `${item.ids}` is only available in the input of a step with `for_each` and of its compensation (the element of one branch, and its position)".to_owned(),
        ),
    ] {
        assert_eq!(errors_of(&with(for_each)), [format!("m.yaml:7:15: {says}")], "{for_each}");
    }
    // A list written out is not an expression: refused with the shape.
    assert_eq!(
        errors_of(&with("[r1, r2]")),
        ["m.yaml:7:15: step `explore`: `for_each` must be one `${...}` expression, not a list"]
    );
}

#[test]
fn max_concurrency_bounds_a_fan_out_only() {
    for (bound, says) in [
        ("0", "max_concurrency is 0; it must be between 1 and 5000 (the most branches a fan-out may have)"),
        ("5001", "max_concurrency is 5001; it must be between 1 and 5000 (the most branches a fan-out may have)"),
        ("-2", "max_concurrency is -2; it must be between 1 and 5000 (the most branches a fan-out may have)"),
        ("many", "step `explore`: `max_concurrency` must be a whole number, not text"),
    ] {
        let text = FAN_OUT.replace("max_concurrency: 4", &format!("max_concurrency: {bound}"));
        assert_eq!(errors_of(&text), [format!("m.yaml:8:22: {says}")], "{bound}");
    }
    let text = FAN_OUT.replace(
        "    stream: mapping:commands\n",
        "    stream: mapping:commands\n    max_concurrency: 2\n",
    );
    assert_eq!(
        errors_of(&text),
        ["m.yaml:22:22: max_concurrency bounds the branches of a fan-out: it is only allowed on a step with `for_each`"]
    );
}

#[test]
fn item_and_index_belong_to_the_inputs_of_a_fan_out_step() {
    let only = "is only available in the input of a step with `for_each` and of its compensation (the element of one branch, and its position)";
    let text = FAN_OUT.replace(
        "      partial_maps: ${steps.explore.result}\n",
        "      partial_maps: ${steps.explore.result}\n      robot: ${item.id}\n    compensation:\n      command: discard\n      input: { n: '${index}' }\n",
    );
    assert_eq!(
        errors_of(&text),
        [
            format!("m.yaml:24:14: input.robot: `${{item.id}}` {only}"),
            format!("m.yaml:27:19: input.n: `${{index}}` {only}"),
        ]
    );
}

#[test]
fn the_shape_of_the_new_keys_is_checked() {
    let text = GOOD.replace(
        "  - name: plan_route\n",
        "  - name: plan_route\n    after:\n",
    );
    assert_eq!(
        errors_of(&text),
        ["m.yaml:13:5: step `plan_route`: `after` is empty: write `after: []` for a step that starts with the saga, or leave `after` out for one that waits for the step listed before it"]
    );
    let text = GOOD.replace(
        "  - name: plan_route\n",
        "  - name: plan_route\n    after: allocate_resources\n",
    );
    assert_eq!(
        errors_of(&text),
        ["m.yaml:13:12: step `plan_route`: `after` must be a list of step names (`[a, b]`, or `[]` for none), not text"]
    );
    let text = GOOD.replace(
        "  - name: plan_route\n",
        "  - name: plan_route\n    after: [allocate_resources, {step: x}, [y]]\n",
    );
    assert_eq!(
        errors_of(&text),
        [
            "m.yaml:13:33: step `plan_route`: each entry of `after` must be a step name, not a mapping",
            "m.yaml:13:44: step `plan_route`: each entry of `after` must be a step name, not a list",
        ]
    );
    let text = GOOD.replace(
        "  - name: plan_route\n",
        "  - name: plan_route\n    needs: [allocate_resources]\n    foreach: ${input.ids}\n",
    );
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0]
            .starts_with("m.yaml:13:5: step `plan_route`: unknown key `needs`; the keys here are "),
        "{errs:?}"
    );
    assert!(
        errs[0].ends_with(
            " compensation, after, for_each, max_concurrency, locks, lock_timeout, kind, signal"
        ),
        "{errs:?}"
    );
    assert_eq!(
        errs[1],
        "m.yaml:14:5: step `plan_route`: unknown key `foreach`; did you mean `for_each`?"
    );
}

/// With problems of shape in some steps, the `after` of the others is
/// still checked; a step that does not read waits for the step before it
/// when it has no `after`, and when it has one, no reference through it is
/// refused for want of an `after`.
#[test]
fn after_is_checked_with_problems_of_shape() {
    let text = "\
name: x
steps:
  - name: a
    stream: s
  - name: b
    stream: s
    timout: 5s
  - name: c
    stream: s
    after: [b, nope]
    input:
      from_a: ${steps.a.result}
  - name: d
    stream: s
    after: []
    input:
      from_a: ${steps.a.result}
  - name: e
    stream: s
    after: [a]
    timout: 5s
  - name: f
    stream: s
    after: [e]
    input:
      from_d: ${steps.d.result}
";
    assert_eq!(
        errors_of(text),
        [
            "m.yaml:7:5: step `b`: unknown key `timout`; did you mean `timeout`?",
            "m.yaml:10:16: `after` of step `c` names step `nope`, but no step has that name",
            "m.yaml:17:15: input.from_a: `${steps.a.result}` reads the result of step `a`, which step `d` does not wait for, so it may not have completed: add `a` to the `after` of `d`",
            "m.yaml:21:5: step `e`: unknown key `timout`; did you mean `timeout`?",
        ]
    );
}

#[test]
fn wait_steps_and_locks_load_with_their_defaults() {
    let text = format!(
        "{GOOD}    locks: ['robot:${{steps.allocate_resources.result.robot_ids}}', area:north]\n    lock_timeout: 30s\n  - name: approve\n    kind: wait\n    signal: route_approved\n"
    );
    let def = load_str(Path::new("m.yaml"), &text).unwrap();
    let plan = &def.steps[1];
    assert_eq!(plan.locks.len(), 2);
    assert_eq!(plan.lock_timeout, std::time::Duration::from_secs(30));
    assert_eq!(def.steps[0].lock_timeout, model::DEFAULT_LOCK_TIMEOUT);
    let approve = &def.steps[2];
    assert_eq!(approve.wait.as_deref(), Some("route_approved"));
    assert_eq!(approve.timeout, model::DEFAULT_WAIT_TIMEOUT);
    assert!(approve.stream.is_empty() && approve.command.is_empty());
    let catalog = crate::definition::catalog_from_str(Path::new("m.yaml"), &text).unwrap();
    let streams: Vec<String> = catalog
        .command_streams()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        streams,
        ["resources:commands", "routing:commands"],
        "a wait sends nothing"
    );
}

#[test]
fn wait_steps_and_locks_are_checked_where_written() {
    let wait = "  - name: approve\n    kind: wait\n";
    let cases: &[(&str, &str)] = &[
        (
            "    kind: wait\n",
            "m.yaml:17:11: a `kind: wait` step needs `signal`: the name of the signal it waits for",
        ),
        (
            "    kind: wait\n    signal: a b\n",
            "m.yaml:18:13: signal name `a b` must be 1 to 64 letters, digits, `_`, `.` or `-`",
        ),
        (
            "    kind: wait\n    signal: ok\n    stream: s\n",
            "m.yaml:19:13: a `kind: wait` step sends no command and undoes nothing: `stream` does not belong on it",
        ),
        (
            "    kind: wait\n    signal: ok\n    compensation: { command: x }\n",
            "m.yaml:19:19: a `kind: wait` step sends no command and undoes nothing: `compensation` does not belong on it",
        ),
        ("    kind: sleep\n    stream: s\n", "m.yaml:17:11: kind `sleep` is unknown; use command or wait"),
        (
            "    stream: s\n    signal: ok\n",
            "m.yaml:18:13: `signal` names what a `kind: wait` step waits for; this step sends a command",
        ),
        (
            "    stream: s\n    locks: ['robot {x}']\n",
            "m.yaml:18:13: lock name `robot {x}` must be 1 to 200 letters, digits or `: _ . - / @ = +`",
        ),
        (
            "    stream: s\n    lock_timeout: 5s\n",
            "m.yaml:18:19: lock_timeout bounds the wait for the step's locks: the step takes none (`locks:`)",
        ),
        (
            "    stream: s\n    locks: [[a]]\n",
            "m.yaml:18:13: step `approve`: each entry of `locks` must be a lock name, not a list",
        ),
    ];
    for (rest, wanted) in cases {
        let step = wait.replace("    kind: wait\n", rest);
        let text = format!("{GOOD}{step}");
        let errs = errors_of(&text);
        assert!(errs.iter().any(|e| e == wanted), "{rest:?}: {errs:?}");
    }
}
