//! The Python mission handlers against the real daemon (`sagaflow run` on
//! the reference mission), each test on a redis-server of its own: the
//! program written by hand against the contract
//! (`examples/python-by-hand/`), and the one on the Python package
//! (`examples/python/`, with `python/` on `PYTHONPATH`), which must behave
//! alike.

mod common;

use common::processes::Child;
use common::*;
use serde_json::{json, Value};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The two programs serving the mission, which every test runs in turn.
#[derive(Clone, Copy, Debug)]
enum Program {
    /// `examples/python-by-hand/`: redis-py alone.
    ByHand,
    /// `examples/python/`: on the package in `python/`.
    Package,
}

impl Program {
    fn script(self) -> &'static str {
        match self {
            Program::ByHand => "examples/python-by-hand/mission_handlers.py",
            Program::Package => "examples/python/mission_handlers.py",
        }
    }

    /// The replies to a command seen again: the recorded final reply, which
    /// the package (as the Rust SDK) sends after a `start`.
    fn replayed(self) -> &'static [&'static str] {
        match self {
            Program::ByHand => &["completed"],
            Program::Package => &["start", "completed"],
        }
    }
}

/// Defines one test per program from `async fn $name(program: Program)`.
macro_rules! for_both_programs {
    ($($name:ident),* $(,)?) => {
        mod by_hand {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Program::ByHand).await
                }
            )*
        }
        mod package {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Program::Package).await
                }
            )*
        }
    };
}

for_both_programs!(
    a_mission_completes_with_the_python_handlers,
    a_failed_last_step_is_compensated,
    a_command_delivered_twice_is_answered_from_the_record,
    forged_reply_streams_are_refused,
);
/// The consumer group the program uses by default.
const GROUP: &str = "python-handlers";
/// Interpreters tried in turn: the `python3` on PATH, then the system's,
/// where `apt-get install python3-redis` puts redis-py.
const PYTHONS: [&str; 2] = ["python3", "/usr/bin/python3"];

/// The first interpreter that can import redis-py; a clear failure if none.
fn python() -> &'static str {
    let has_redis = |python: &&str| {
        Command::new(python)
            .args(["-c", "import redis"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    PYTHONS.iter().copied().find(has_redis).unwrap_or_else(|| {
        panic!(
            "these tests run the Python examples and need Python 3 with redis-py: \
             `apt-get install -y python3 python3-redis` (scripts/test installs them)"
        )
    })
}

/// The Python handlers as a child process, killed when dropped. Their log
/// is printed when a test fails.
struct PythonHandlers {
    process: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PythonHandlers {
    fn spawn(program: Program, redis_url: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = dir.path().join("mission_handlers.log");
        // The package from the checkout, not an installed one.
        let mut path = std::ffi::OsString::from(manifest_dir().join("python"));
        if let Some(more) = std::env::var_os("PYTHONPATH") {
            path.push(":");
            path.push(more);
        }
        // The program logs to stderr.
        let process = Command::new(python())
            .arg(program.script())
            .env("PYTHONPATH", path)
            .args(["--redis-url", redis_url])
            .args(extra)
            .current_dir(manifest_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("a log file"))
            .spawn()
            .expect("python3 runs");
        Self {
            process,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the program must exit with success within `STOP_WAIT`.
    async fn stop(mut self) {
        let pid = self.process.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.expect("kill runs").success(), "kill -TERM {pid}");
        let deadline = Instant::now() + STOP_WAIT;
        let status = loop {
            if let Some(status) = self.process.try_wait().expect("waitpid") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {STOP_WAIT:?} of SIGTERM; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{status}; log:\n{}", self.log());
        assert!(self.log().contains("stopped"), "log:\n{}", self.log());
    }
}

impl Drop for PythonHandlers {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::thread::panicking() {
            eprintln!("python handlers' log:\n{}", self.log());
        }
    }
}

/// A daemon on `server`, running.
async fn daemon(server: &RedisServer, node_id: &str) -> Child {
    let daemon = Child::daemon(&server.url(), node_id);
    daemon.wait_started().await;
    daemon
}

fn result_of<'a>(events: &'a [Event], event_type: &str, step: &str) -> &'a Value {
    &the_event(events, event_type, Some(step)).payload["result"]
}

/// The result of the event of this type about `unit` (`step[branch]` for
/// a branch, else the step's own), which must be one.
fn result_at<'a>(events: &'a [Event], event_type: &str, unit: &str) -> &'a Value {
    let found: Vec<&Event> = (events.iter())
        .filter(|e| e.event_type == event_type && e.step.is_some() && e.unit() == unit)
        .collect();
    assert_eq!(found.len(), 1, "{event_type} {unit}:\n{}", describe(events));
    &found[0].payload["result"]
}

fn robots_in(items: &Value) -> Vec<&str> {
    let items = items.as_array().expect("a list");
    items
        .iter()
        .map(|i| i["robot_id"].as_str().unwrap())
        .collect()
}

async fn a_mission_completes_with_the_python_handlers(program: Program) {
    let server = RedisServer::start();
    let handlers = PythonHandlers::spawn(program, &server.url(), &[]);
    let _daemon = daemon(&server, "py-complete").await;
    let mut conn = server.conn().await;

    start_mission(&mut conn, "py-1", &json!({"area": "hall-a", "robots": 3})).await;
    let events = saga_events(&server, "py-1").await;

    // Every step and every robot's branch: started, 50%, completed.
    assert_mission_completed(&events, 3, &["step_progress", "step_completed"]);
    let progress = the_event(&events, "step_progress", Some("plan_route"));
    assert_eq!(progress.payload["progress"].as_f64(), Some(50.0));

    // Each result is made from the one before, through the step templates.
    let robots = ["robot-1", "robot-2", "robot-3"];
    let allocated = result_of(&events, "step_completed", "allocate_resources");
    assert_eq!(*allocated, json!({"robot_ids": robots, "area": "hall-a"}));
    let planned = result_of(&events, "step_completed", "plan_route");
    assert_eq!(robots_in(&planned["routes"]), robots);
    assert_eq!(planned["area"], "hall-a");
    // Each branch explores with its one robot and returns its one map; the
    // fan-out gathers them in the order of the robots.
    for (branch, robot) in robots.iter().enumerate() {
        let unit = format!("perform_exploration[{branch}]");
        let map = result_at(&events, "step_completed", &unit);
        assert_eq!(map["robot_id"], *robot, "{unit}");
        assert!(map["map_id"].as_str().unwrap().starts_with("partial-"));
        assert!((100..1000).contains(&map["cells_explored"].as_u64().unwrap()));
    }
    let explored = result_at(&events, "step_completed", "perform_exploration");
    assert_eq!(robots_in(explored), robots);
    let merged = result_of(&events, "step_completed", "integrate_maps");
    assert_eq!(merged["merged_from"], 3);
    assert!(merged["map_id"].as_str().unwrap().starts_with("map-"));

    let end = the_event(&events, "saga_completed", None);
    assert_eq!(end.payload["results"]["integrate_maps"], *merged);
    assert_eq!(end.payload["results"]["perform_exploration"], *explored);
    for stream in [
        "resources:commands",
        "routing:commands",
        "exploration:commands",
        "mapping:commands",
    ] {
        assert_eq!(pending_count(&mut conn, stream, GROUP).await, 0, "{stream}");
    }
    // One exploring command per robot, each naming its robot and branch.
    let explorations = xrange(&mut conn, "exploration:commands").await;
    assert_eq!(explorations.len(), 3, "{explorations:?}");
    for (branch, (command, robot)) in explorations.iter().zip(robots).enumerate() {
        assert_eq!(command["branch"], branch.to_string());
        let payload: Value = serde_json::from_str(&command["payload"]).unwrap();
        assert_eq!(payload["robot_id"], robot);
    }
    handlers.stop().await;
}

async fn a_failed_last_step_is_compensated(program: Program) {
    let server = RedisServer::start();
    let _handlers =
        PythonHandlers::spawn(program, &server.url(), &["--fail-step", "integrate_maps"]);
    let _daemon = daemon(&server, "py-compensate").await;
    let mut conn = server.conn().await;

    start_mission(&mut conn, "py-2", &json!({"area": "hall-b", "robots": 2})).await;
    let events = saga_events(&server, "py-2").await;

    let failed = the_event(&events, "step_failed", Some("integrate_maps"));
    assert_eq!(
        failed.payload["retryable"],
        false,
        "\n{}",
        describe(&events)
    );
    // Each robot's exploration is undone (both at once), then the route,
    // then the allocation.
    let undone = mission_undone(2);
    let end = the_event(&events, "saga_compensated", None);
    assert_eq!(end.payload["failed_step"], "integrate_maps");
    let compensated: Vec<String> = (end.payload["compensated"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        branches_sorted(&compensated),
        undone,
        "\n{}",
        describe(&events)
    );
    let completed: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "compensation_completed")
        .map(Event::unit)
        .collect();
    assert_eq!(
        branches_sorted(&completed),
        undone,
        "\n{}",
        describe(&events)
    );

    // The compensations of the steps get the default context and find the
    // robots in it; each branch's gets its robot.
    let robots = json!(["robot-1", "robot-2"]);
    let compensated = |unit| result_at(&events, "compensation_completed", unit);
    assert_eq!(compensated("allocate_resources")["released"], robots);
    assert_eq!(compensated("plan_route")["cancelled"], robots);
    assert_eq!(
        compensated("perform_exploration[0]")["aborted"],
        json!(["robot-1"])
    );
    assert_eq!(
        compensated("perform_exploration[1]")["aborted"],
        json!(["robot-2"])
    );
}

async fn a_command_delivered_twice_is_answered_from_the_record(program: Program) {
    let server = RedisServer::start();
    let handlers = PythonHandlers::spawn(program, &server.url(), &[]);
    let _daemon = daemon(&server, "py-dedupe").await;
    let mut conn = server.conn().await;

    start_mission(&mut conn, "py-3", &json!({"area": "hall-c", "robots": 2})).await;
    let events = saga_events(&server, "py-3").await;
    the_event(&events, "saga_completed", None);
    // Exploring makes fresh map ids at every run: a second run would show.
    let explored = result_at(&events, "step_completed", "perform_exploration[0]").clone();

    // The answered command of the first robot's branch again, as after a
    // daemon crash: same fields, same request_id. Only its reply stream is
    // one this test reads, as the daemon trims its own once it has read it.
    let stream = "exploration:commands";
    let commands = xrange(&mut conn, stream).await;
    assert_eq!(commands.len(), 2, "one per robot: {commands:?}");
    let mut again = commands[0].clone();
    assert_eq!(again["branch"], "0");
    let replayed = "saga:replies:replayed.0a1b2c3d";
    again.insert("reply_stream".into(), replayed.into());
    let fields: Vec<(&str, &str)> = again.iter().map(|(k, v)| (&**k, &**v)).collect();
    xadd(&mut conn, stream, &fields).await;

    let deadline = Instant::now() + STOP_WAIT;
    while pending_count(&mut conn, stream, GROUP).await > 0
        || xrange(&mut conn, replayed).await.is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the repeated command is not answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replies = xrange(&mut conn, replayed).await;
    // The recorded final reply: no `progress`, no new run.
    let statuses: Vec<&str> = replies.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(statuses, program.replayed(), "{replies:?}");
    let reply = replies.last().unwrap();
    assert_eq!(reply["status"], "completed");
    let result: Value = serde_json::from_str(&reply["result"]).unwrap();
    assert_eq!(result, explored);
    for id in ["correlation_id", "saga_id", "request_id", "event_type"] {
        assert_eq!(reply[id], again[id], "{id}");
    }
    // The handler's span: in the command's trace, with a span id of its own.
    let command_span: Vec<&str> = again["traceparent"].split('-').collect();
    let reply_span: Vec<&str> = reply["traceparent"].split('-').collect();
    assert_eq!(reply_span.len(), 4, "{}", reply["traceparent"]);
    assert_eq!(reply_span[1], command_span[1]);
    assert!(is_lower_hex(reply_span[2], 16) && reply_span[2] != command_span[2]);
    assert_eq!(reply["parent_span_id"], reply_span[2]);
    let timestamp: u64 = reply["timestamp"].parse().unwrap();
    let sent: u64 = again["timestamp"].parse().unwrap();
    // Daemon and handler each stamp on their own estimate of Redis's clock,
    // measured to within a round trip: a reply made within a millisecond of
    // its command may carry a stamp a little before the command's.
    const ESTIMATES_AGREE_WITHIN_MS: u64 = 50;
    let window = sent - ESTIMATES_AGREE_WITHIN_MS..=now_ms() + ESTIMATES_AGREE_WITHIN_MS;
    assert!(
        window.contains(&timestamp),
        "{timestamp} ms, sent at {sent}"
    );

    // One line per robot's command, and one for the replay.
    let log = handlers.log();
    assert_eq!(log.matches("perform_exploration").count(), 3, "{log}");
    assert_eq!(
        log.matches("replaying the recorded reply").count(),
        1,
        "{log}"
    );
}

/// Commands whose `reply_stream` is no reply stream of the daemon's (the
/// trigger stream, the lease set) are refused without a write: acknowledged
/// and copied to the group's dead-letter stream, while a valid command is
/// answered.
async fn forged_reply_streams_are_refused(program: Program) {
    let server = RedisServer::start();
    let handlers = PythonHandlers::spawn(program, &server.url(), &[]);
    let mut conn = server.conn().await;
    let add = words("ZADD saga:{leases} 4102444800000 owner-1");
    must::<i64, _>("ZADD", add.query_async(&mut conn)).await;

    let command = |reply_stream: &str| {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let deadline = (now_ms() + 60_000).to_string();
        let fields: Vec<(String, String)> = [
            ("correlation_id", "forged"),
            ("saga_id", &uuid::Uuid::new_v4().simple().to_string()),
            ("request_id", &request_id),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("parent_span_id", "b7ad6b7169203331"),
            ("event_type", "allocate_resources"),
            ("step", "allocate_resources"),
            ("kind", "action"),
            ("attempt", "1"),
            ("reply_stream", reply_stream),
            ("payload", r#"{"robots": 1}"#),
            ("deadline_ms", &deadline),
            ("timestamp", &now_ms().to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        fields
    };
    let send = |fields: Vec<(String, String)>| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("resources:commands").arg("*").arg(fields);
        cmd
    };
    for forged in [
        "mission:start",
        "saga:{leases}",
        "saga:replies:node 1.0a1b2c3d",
    ] {
        must::<String, _>("XADD", send(command(forged)).query_async(&mut conn)).await;
    }
    let valid = "saga:replies:node-1.0a1b2c3d";
    must::<String, _>("XADD", send(command(valid)).query_async(&mut conn)).await;

    let deadline = Instant::now() + STOP_WAIT;
    while !xrange(&mut conn, valid)
        .await
        .iter()
        .any(|r| r["status"] == "completed")
    {
        assert!(
            Instant::now() < deadline,
            "the valid command is not answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        pending_count(&mut conn, "resources:commands", GROUP).await,
        0
    );
    assert!(xrange(&mut conn, "mission:start").await.is_empty());
    let leases: Vec<String> = must(
        "ZRANGE",
        words("ZRANGE saga:{leases} 0 -1").query_async(&mut conn),
    )
    .await;
    assert_eq!(leases, ["owner-1"]);
    let dead = xrange(&mut conn, "handler:{python-handlers}:dead-letter").await;
    let refused: Vec<&str> = dead
        .iter()
        .map(|d| d["command.reply_stream"].as_str())
        .collect();
    assert_eq!(
        refused,
        [
            "mission:start",
            "saga:{leases}",
            "saga:replies:node 1.0a1b2c3d"
        ],
        "{dead:?}"
    );
    for entry in &dead {
        assert!(entry["reason"].contains("reply_stream"), "{entry:?}");
        assert_eq!(entry["stream"], "resources:commands");
    }
    let log = handlers.log();
    assert_eq!(log.matches("refused").count(), 3, "{log}");
    handlers.stop().await;
}
