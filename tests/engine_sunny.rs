//! The reference mission end to end: with the simulated handlers, and with
//! a handler written here from the wire contract alone, checking every
//! field of every command the daemon sends.

mod common;

use common::*;
use sagaflow::handler::simulated::SimulationOptions;
use serde_json::{json, Value};
use std::collections::HashSet;

on_both!(
    the_reference_mission_completes_with_the_simulated_handlers,
    commands_carry_every_contract_field_and_a_uuid_correlation_id_is_the_trace_id,
    a_valid_traceparent_on_the_start_gives_the_saga_its_trace,
    without_a_uuid_or_traceparent_the_saga_gets_a_fresh_trace,
);

async fn the_reference_mission_completes_with_the_simulated_handlers(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let handlers = start_simulated(&server, SimulationOptions::default());
    let mut conn = server.conn().await;
    let input = json!({"area": "hall-a", "robots": 2});
    start_mission(&mut conn, "sunny-1", &input).await;

    let events = saga_events(&server, "sunny-1").await;
    // The steps' own events, in order; the exploration is a fan-out over
    // the two robots, which starts, then completes once both are back.
    let mut expected = vec!["saga_started".to_owned()];
    for step in MISSION_STEPS {
        if step == "perform_exploration" {
            // The robots' locks, taken before any branch starts.
            expected.extend(vec!["lock_acquired:perform_exploration".to_owned(); 2]);
            expected.push(format!("step_started:{step}"));
            expected.push(format!("step_completed:{step}"));
            continue;
        }
        for event in ["step_started", "step_progress", "step_completed"] {
            expected.push(format!("{event}:{step}"));
        }
    }
    expected.push("locks_released".into());
    expected.push("saga_completed".into());
    let (branch_events, step_events): (Vec<Event>, Vec<Event>) =
        events.iter().cloned().partition(|e| e.branch().is_some());
    assert_eq!(labels(&step_events), expected, "\n{}", describe(&events));
    // Each robot's branch: started, progress, completed, in its own order.
    for branch in 0..2 {
        let of_branch: Vec<Event> = (branch_events.iter())
            .filter(|e| e.branch() == Some(branch))
            .cloned()
            .collect();
        let unit = format!("perform_exploration[{branch}]");
        let expected: Vec<String> = ["step_started", "step_progress", "step_completed"]
            .iter()
            .map(|e| format!("{e}:{unit}"))
            .collect();
        assert_eq!(labels(&of_branch), expected, "\n{}", describe(&events));
        let robot = format!("robot-{}", branch + 1);
        assert_eq!(of_branch[0].payload["item"], robot.as_str());
    }
    // Both branches run at once (max_concurrency 4, two robots).
    let first_done = (events.iter())
        .position(|e| e.event_type == "step_completed" && e.branch().is_some())
        .unwrap();
    let started_before = (events[..first_done].iter())
        .filter(|e| e.event_type == "step_started" && e.branch().is_some())
        .count();
    assert_eq!(started_before, 2, "\n{}", describe(&events));
    let fan_out = (step_events.iter())
        .find(|e| e.label() == "step_started:perform_exploration")
        .unwrap();
    assert_eq!(
        fan_out.payload,
        json!({"branches": 2, "max_concurrency": 2})
    );

    let saga_id = &events[0].saga_id;
    assert!(is_lower_hex(saga_id, 32), "{saga_id}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(&e.saga_id, saga_id);
        assert_eq!(e.correlation_id, "sunny-1");
        assert_eq!(e.saga, "mission_start");
        assert!(e.fields["timestamp"].parse::<u64>().is_ok(), "{e:?}");
        // The status is the saga's state once the event has happened: the
        // last step's completion completes the saga (then the locks go,
        // then the saga's own last word).
        let status = if i + 3 >= events.len() {
            "completed"
        } else {
            "running"
        };
        assert_eq!(e.status, status, "status of {}", e.label());
    }
    assert_eq!(events[0].payload["input"], input);
    let mut request_ids = HashSet::new();
    let attempts = events
        .iter()
        .filter(|e| e.event_type == "step_started" && e.payload.get("branches").is_none());
    for started in attempts {
        assert_eq!(started.payload["attempt"], 1);
        assert_eq!(started.payload["kind"], "action");
        let request_id = started.payload["request_id"].as_str().unwrap();
        assert!(is_lower_hex(request_id, 32), "{request_id}");
        assert!(
            request_ids.insert(request_id.to_owned()),
            "request ids are new"
        );
    }
    assert_eq!(request_ids.len(), 5, "one command per step, one per robot");
    for e in events.iter().filter(|e| e.event_type == "step_progress") {
        assert_eq!(e.payload["attempt"], 1);
        assert_eq!(e.payload["progress"].as_f64(), Some(50.0));
    }

    let results = &events.last().unwrap().payload["results"];
    let names: Vec<&String> = results.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 4, "{results}");
    for step in MISSION_STEPS {
        let completed = (step_events.iter())
            .find(|e| e.label() == format!("step_completed:{step}"))
            .unwrap();
        assert_eq!(completed.payload["result"], results[step], "{step}");
    }
    assert_eq!(
        results["allocate_resources"],
        json!({"robot_ids": ["robot-1", "robot-2"], "area": "hall-a"})
    );
    assert_eq!(results["plan_route"]["routes"].as_array().unwrap().len(), 2);
    // One map per robot, in the order of the robots.
    let maps = results["perform_exploration"].as_array().unwrap();
    assert_eq!(maps.len(), 2);
    assert_eq!(maps[0]["robot_id"], "robot-1");
    assert_eq!(maps[1]["robot_id"], "robot-2");
    assert_eq!(results["integrate_maps"]["merged_from"], 2);

    handlers.stop().await;
    daemon.stop().await;
}

/// What the raw handler returns for each step of the mission.
fn raw_result(step: &str) -> Value {
    match step {
        "allocate_resources" => json!({"robot_ids": ["r-1", "r-2"], "area": "hall-b"}),
        "plan_route" => json!({"routes": [{"robot_id": "r-1", "waypoints": [[0, 0], [5, 5]]}]}),
        "perform_exploration" => panic!("a branch's result depends on its robot: explored()"),
        "integrate_maps" => json!({"map_id": "merged-1"}),
        other => panic!("no command `{other}` in the mission"),
    }
}

/// What the raw handler returns for one robot's exploration.
fn explored(robot: &str) -> Value {
    json!({"robot_id": robot, "map_id": format!("m-{robot}")})
}

/// The result of a command of the mission, as the raw handler answers it.
fn answer(cmd: &Fields) -> Value {
    match cmd["step"].as_str() {
        "perform_exploration" => {
            let payload: Value = serde_json::from_str(&cmd["payload"]).unwrap();
            explored(payload["robot_id"].as_str().unwrap())
        }
        step => raw_result(step),
    }
}

const MISSION_STREAMS: [&str; 4] = [
    "resources:commands",
    "routing:commands",
    "exploration:commands",
    "mapping:commands",
];

/// Runs the mission from `start` against a raw handler; checks every field
/// of every command against the contract; returns the trace id they carry.
async fn mission_with_raw_handler(
    server: &Redis,
    start: &[(&str, &str)],
    correlation_id: &str,
) -> String {
    let daemon = start_daemon(server, mission_catalog()).await;
    let handler = spawn_raw_handler(server, &MISSION_STREAMS, "raw-mission", |cmd| {
        complete_in_stages(cmd, &answer(cmd))
    })
    .await;
    let mut conn = server.conn().await;
    let mut fields = start.to_vec();
    fields.push(("payload", r#"{"area": "hall-b", "robots": 2}"#));
    let sent_ms = now_ms();
    xadd(&mut conn, "mission:start", &fields).await;

    let events = saga_events(server, correlation_id).await;
    let commands = handler.stop().await;
    let reply_stream = daemon.stop().await.reply_stream;

    let done = events.last().unwrap();
    assert_eq!(done.event_type, "saga_completed", "\n{}", describe(&events));
    let results = &done.payload["results"];
    let maps = json!([explored("r-1"), explored("r-2")]);
    for step in MISSION_STEPS {
        let expected = match step {
            "perform_exploration" => maps.clone(),
            step => raw_result(step),
        };
        assert_eq!(results[step], expected, "{step}");
    }
    let saga_id = &done.saga_id;
    assert!(is_lower_hex(saga_id, 32), "saga_id {saga_id}");
    // One command per step, and one per robot for the exploration.
    let steps = [
        "allocate_resources",
        "plan_route",
        "perform_exploration",
        "perform_exploration",
        "integrate_maps",
    ];
    assert_eq!(commands.len(), steps.len(), "{commands:#?}");
    let streams: Vec<&str> = commands.iter().map(|c| c.stream.as_str()).collect();
    let [resources, routing, exploration, mapping] = MISSION_STREAMS;
    assert_eq!(
        streams,
        [resources, routing, exploration, exploration, mapping]
    );

    let routes = raw_result("plan_route")["routes"].clone();
    let expected_payloads = [
        json!({"area": "hall-b", "robots": 2}),
        json!({"robot_ids": ["r-1", "r-2"], "area": "hall-b"}),
        json!({"robot_id": "r-1", "routes": routes}),
        json!({"robot_id": "r-2", "routes": routes}),
        json!({"partial_maps": maps, "mission": saga_id}),
    ];
    let branches = [None, None, Some("0"), Some("1"), None];
    let timeouts_ms = [10_000, 10_000, 30_000, 30_000, 10_000];
    let mut request_ids = HashSet::new();
    let mut trace_ids = HashSet::new();
    for (i, cmd) in commands.iter().enumerate() {
        let step = steps[i];
        let branch = cmd.fields.get("branch").map(String::as_str);
        assert_eq!(branch, branches[i], "{step}: branch");
        for name in [
            "correlation_id",
            "saga_id",
            "request_id",
            "traceparent",
            "parent_span_id",
            "event_type",
            "step",
            "kind",
            "attempt",
            "reply_stream",
            "payload",
            "deadline_ms",
            "timestamp",
        ] {
            assert!(cmd.fields.contains_key(name), "{step}: no `{name}`");
        }
        assert_eq!(cmd.get("correlation_id"), correlation_id, "{step}");
        assert_eq!(cmd.get("saga_id"), saga_id, "{step}");
        let request_id = cmd.get("request_id");
        assert!(
            is_lower_hex(request_id, 32),
            "{step}: request_id {request_id}"
        );
        assert!(
            request_ids.insert(request_id.to_owned()),
            "{step}: request_id reused"
        );
        let started = (events.iter())
            .find(|e| e.event_type == "step_started" && e.payload["request_id"] == request_id);
        assert!(
            started.is_some(),
            "{step}: no step_started for {request_id}"
        );

        let traceparent = cmd.get("traceparent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{step}: traceparent {traceparent}");
        assert_eq!(parts[0], "00", "{step}: traceparent {traceparent}");
        assert!(
            is_lower_hex(parts[1], 32),
            "{step}: traceparent {traceparent}"
        );
        assert!(
            is_lower_hex(parts[2], 16),
            "{step}: traceparent {traceparent}"
        );
        assert_ne!(
            parts[2], "0000000000000000",
            "{step}: traceparent {traceparent}"
        );
        assert_eq!(parts[3], "01", "{step}: traceparent {traceparent}");
        assert_eq!(cmd.get("parent_span_id"), parts[2], "{step}");
        trace_ids.insert(parts[1].to_owned());

        assert_eq!(cmd.get("event_type"), step);
        assert_eq!(cmd.get("step"), step);
        assert_eq!(cmd.get("kind"), "action");
        assert_eq!(cmd.get("attempt"), "1");
        assert_eq!(cmd.get("reply_stream"), reply_stream, "{step}");
        let payload: Value = serde_json::from_str(cmd.get("payload")).expect("payload is JSON");
        assert_eq!(payload, expected_payloads[i], "{step}: payload");

        let timestamp: u64 = cmd.get("timestamp").parse().expect("timestamp in ms");
        let deadline: u64 = cmd.get("deadline_ms").parse().expect("deadline_ms in ms");
        assert!(
            timestamp + 1_000 >= sent_ms && timestamp <= cmd.received_ms + 1_000,
            "{step}: timestamp {timestamp}, start sent at {sent_ms}, received at {}",
            cmd.received_ms
        );
        let timeout = deadline.saturating_sub(timestamp);
        assert!(
            timeout.abs_diff(timeouts_ms[i]) <= 1_000,
            "{step}: deadline_ms {deadline} is {timeout} ms after timestamp {timestamp}"
        );
    }
    assert_eq!(trace_ids.len(), 1, "one trace for the saga: {trace_ids:?}");
    trace_ids.into_iter().next().unwrap()
}

async fn commands_carry_every_contract_field_and_a_uuid_correlation_id_is_the_trace_id(
    server: Redis,
) {
    let correlation_id = "6F9619FF-8B86-4D11-B42D-00C04FC964FF";
    let start = [("correlation_id", correlation_id)];
    let trace_id = mission_with_raw_handler(&server, &start, correlation_id).await;
    assert_eq!(trace_id, "6f9619ff8b864d11b42d00c04fc964ff");

    let correlation_id = "0af7651916cd43dd8448eb211c80319c";
    let start = [("correlation_id", correlation_id)];
    let trace_id = mission_with_raw_handler(&server, &start, correlation_id).await;
    assert_eq!(trace_id, correlation_id);
}

async fn a_valid_traceparent_on_the_start_gives_the_saga_its_trace(server: Redis) {
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // Even a UUID correlation id gives way to the caller's trace.
    let correlation_id = "0af7651916cd43dd8448eb211c80319c";
    let start = [("correlation_id", correlation_id), ("traceparent", caller)];
    let trace_id = mission_with_raw_handler(&server, &start, correlation_id).await;
    assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
}

async fn without_a_uuid_or_traceparent_the_saga_gets_a_fresh_trace(server: Redis) {
    let start = [
        ("correlation_id", "order-77"),
        ("traceparent", "00-not-a-valid-context-01"),
    ];
    let trace_id = mission_with_raw_handler(&server, &start, "order-77").await;
    assert_ne!(trace_id, "0".repeat(32));
}
