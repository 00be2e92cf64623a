//! Shared fixtures of the engine tests: a throwaway redis-server, the daemon
//! and the simulated handlers in-process, a raw handler speaking the wire
//! contract with plain Redis commands, and bounded readers of `saga:events`.
#![allow(dead_code)]

use redis::aio::ConnectionLike;
use sagaflow::config::Settings;
use sagaflow::definition::{catalog_from_str, load_dir, Catalog};
use sagaflow::engine::Daemon;
use sagaflow::handler::simulated::{simulated_handlers, SimulationOptions};
use sagaflow::protocol::{
    Command, CommandKind, CorrelationId, RequestId, SagaId, SpanId, TraceId, TraceParent,
};
use sagaflow::streams::decode_read_reply;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest a saga of these tests may take to end.
pub const SAGA_WAIT: Duration = Duration::from_secs(10);
/// The longest any start, stop or single Redis command here may take.
pub const STOP_WAIT: Duration = Duration::from_secs(5);

pub const TERMINAL: [&str; 5] = [
    "saga_completed",
    "saga_compensated",
    "saga_failed",
    "saga_rejected",
    "saga_duplicate",
];

pub const MISSION_STEPS: [&str; 4] = [
    "allocate_resources",
    "plan_route",
    "perform_exploration",
    "integrate_maps",
];

/// The step of the reference mission that fans out: a branch per robot,
/// each sending one `perform_exploration` command.
pub const MISSION_FAN_OUT: &str = "perform_exploration";

/// What a reference mission with `robots` robots runs, in the order of its
/// steps: the fan-out as one unit per branch (`perform_exploration[0]`, ...).
pub fn mission_units(robots: usize) -> Vec<String> {
    let mut units = Vec::new();
    for step in MISSION_STEPS {
        match step {
            MISSION_FAN_OUT => {
                units.extend((0..robots).map(|b| format!("{MISSION_FAN_OUT}[{b}]")));
            }
            _ => units.push(step.to_owned()),
        }
    }
    units
}

/// The commands a reference mission with `robots` robots sends when every
/// attempt completes: allocate, plan, one per robot, integrate.
pub fn mission_commands(robots: usize) -> usize {
    mission_units(robots).len()
}

/// The events of a reference mission with `robots` robots that completes
/// with the simulated handlers (each command answered with one `progress`):
/// the start; started, progress, completed per command; the fan-out's own
/// start and completion; a lock taken per robot (none waited for); the end,
/// and the locks let go of.
pub fn mission_event_count(robots: usize) -> usize {
    1 + 3 * mission_commands(robots) + 2 + robots + 1 + 1
}

/// The compensations that undo a reference mission of `robots` robots whose
/// last step failed, in the order `saga_compensated` lists them: the
/// branches (undone at once, so in any order among themselves), then
/// `plan_route` and `allocate_resources`; the branches in their order, as
/// [`branches_sorted`] puts them.
pub fn mission_undone(robots: usize) -> Vec<String> {
    let mut units: Vec<String> = (0..robots)
        .map(|b| format!("{MISSION_FAN_OUT}[{b}]"))
        .collect();
    units.extend(["plan_route", "allocate_resources"].map(String::from));
    units
}

/// `names` with the branches of one step (`step[b]`) in the order of
/// their branch, each run of them in place: for comparing lists in which
/// branches undone at once may come in any order.
pub fn branches_sorted(names: &[String]) -> Vec<String> {
    let mut out = names.to_vec();
    let branch_of = |s: &str| -> Option<(String, u32)> {
        let (step, rest) = s.split_once('[')?;
        Some((step.to_owned(), rest.strip_suffix(']')?.parse().ok()?))
    };
    let mut i = 0;
    while i < out.len() {
        let Some((step, _)) = branch_of(&out[i]) else {
            i += 1;
            continue;
        };
        let mut j = i;
        while j < out.len() && branch_of(&out[j]).is_some_and(|(s, _)| s == step) {
            j += 1;
        }
        out[i..j].sort_by_key(|s| branch_of(s).map(|(_, b)| b));
        i = j;
    }
    out
}

/// The labels of the events about no branch (the saga, its steps, a
/// fan-out's own start and completion), in order.
pub fn outline(events: &[Event]) -> Vec<String> {
    (events.iter())
        .filter(|e| e.branch().is_none())
        .map(Event::label)
        .collect()
}

/// The labels of the events of one unit (`step` or `step[branch]`), in
/// order: the branches of a fan-out run at once, so only each branch's own
/// events have an order of their own.
pub fn unit_labels(events: &[Event], unit: &str) -> Vec<String> {
    (events.iter())
        .filter(|e| e.step.is_some() && e.unit() == unit)
        .map(Event::label)
        .collect()
}

/// Panics unless every event of a branch of `step` comes after the
/// fan-out's own `step_started` and, if it completed, before its own
/// `step_completed`.
pub fn assert_branches_inside(events: &[Event], step: &str) {
    let whole = |t: &str| {
        (events.iter()).position(|e| {
            e.event_type == t && e.step.as_deref() == Some(step) && e.branch().is_none()
        })
    };
    let start = whole("step_started").unwrap_or_else(|| {
        panic!(
            "no step_started of the fan-out {step}:\n{}",
            describe(events)
        )
    });
    let end = whole("step_completed").unwrap_or(events.len());
    for (i, e) in events.iter().enumerate() {
        let branch_action = e.step.as_deref() == Some(step)
            && e.branch().is_some()
            && e.event_type.starts_with("step_");
        assert!(
            !branch_action || (start < i && i < end),
            "{} outside the fan-out:\n{}",
            e.label(),
            describe(events)
        );
    }
}

/// Panics unless `events` are those of a reference mission of `robots`
/// robots that completed with every command answered by `replies` (for
/// example `step_progress`, `step_completed`): each step and each branch
/// started once and answered so, the branches inside the fan-out, and the
/// fan-out's result the branches' results in the order of the robots.
pub fn assert_mission_completed(events: &[Event], robots: usize, replies: &[&str]) {
    let all = describe(events);
    let attempt = |unit: &str| -> Vec<String> {
        std::iter::once("step_started")
            .chain(replies.iter().copied())
            .map(|t| format!("{t}:{unit}"))
            .collect()
    };
    let mut expected = vec!["saga_started".to_owned()];
    for step in MISSION_STEPS {
        match step {
            MISSION_FAN_OUT => {
                // Each robot's lock first, then the fan-out.
                expected.extend(vec![format!("lock_acquired:{step}"); robots]);
                expected.push(format!("step_started:{step}"));
                expected.push(format!("step_completed:{step}"));
            }
            _ => expected.extend(attempt(step)),
        }
    }
    expected.push("locks_released".to_owned());
    expected.push("saga_completed".to_owned());
    assert_eq!(outline(events), expected, "\n{all}");
    for unit in mission_units(robots) {
        assert_eq!(unit_labels(events, &unit), attempt(&unit), "\n{all}");
    }
    assert_branches_inside(events, MISSION_FAN_OUT);
    let fan_out = (events.iter())
        .find(|e| {
            e.event_type == "step_started"
                && e.step.as_deref() == Some(MISSION_FAN_OUT)
                && e.branch().is_none()
        })
        .unwrap();
    assert_eq!(fan_out.payload["branches"], robots, "\n{all}");
    let maps = (events.iter())
        .find(|e| {
            e.event_type == "step_completed"
                && e.step.as_deref() == Some(MISSION_FAN_OUT)
                && e.branch().is_none()
        })
        .unwrap();
    let robots_in_order: Vec<String> = (1..=robots).map(|i| format!("robot-{i}")).collect();
    let mapped: Vec<&str> = (maps.payload["result"].as_array())
        .unwrap_or_else(|| panic!("the fan-out's result is a list:\n{all}"))
        .iter()
        .map(|m| m["robot_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(mapped, robots_in_order, "\n{all}");
    assert_eq!(
        events.len(),
        expected.len() + robots * replies.len() + robots
    );
}

pub mod api;
mod backend;
pub mod browser;
pub mod cluster;
pub mod locks;
pub mod otlp;
pub mod processes;
mod redis_server;
// Not every test binary starts a cluster.
#[allow(unused_imports)]
pub use backend::{Backend, Redis};
#[allow(unused_imports)]
pub use cluster::RedisCluster;
pub use redis_server::RedisServer;

/// Awaits `fut` for at most [`STOP_WAIT`]; panics naming `what` after that.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STOP_WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} took longer than {STOP_WAIT:?}"),
    }
}

/// [`bounded`], and the result must be `Ok`.
pub async fn must<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> T {
    bounded(what, fut)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since_epoch.as_millis() as u64
}

pub fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A command from words without spaces.
pub fn words(words: &str) -> redis::Cmd {
    let mut words = words.split_whitespace();
    let mut cmd = redis::cmd(words.next().expect("a command name"));
    for word in words {
        cmd.arg(word);
    }
    cmd
}

/// Adds one entry (values may be text or raw bytes); returns its id.
pub async fn xadd<V: redis::ToRedisArgs>(
    conn: &mut impl ConnectionLike,
    stream: &str,
    fields: &[(&str, V)],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*").arg(fields);
    must("XADD", cmd.query_async(conn)).await
}

/// Starts the reference mission through its trigger stream.
pub async fn start_mission(conn: &mut impl ConnectionLike, correlation_id: &str, input: &Value) {
    let payload = input.to_string();
    let fields = [("correlation_id", correlation_id), ("payload", &payload)];
    xadd(conn, "mission:start", &fields).await;
}

/// Entries of `stream` that `group` has read but not acknowledged.
pub async fn pending_count(conn: &mut impl ConnectionLike, stream: &str, group: &str) -> i64 {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(group);
    let summary: (i64, redis::Value, redis::Value, redis::Value) =
        must("XPENDING", cmd.query_async(conn)).await;
    summary.0
}

/// Every entry of a stream, oldest first, with its values as lossy text.
pub async fn xrange(conn: &mut impl ConnectionLike, stream: &str) -> Vec<Fields> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(100_000)
        .arg("STREAMS")
        .arg(stream)
        .arg("0-0");
    let reply: redis::Value = must("XREAD", cmd.query_async(conn)).await;
    decode_read_reply(&reply)
        .iter()
        .map(|e| lossy(&e.fields))
        .collect()
}

// ---------------------------------------------------------- definitions

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reference mission, as `sagas/` defines it.
pub fn mission_catalog() -> Catalog {
    load_dir(&manifest_dir().join("sagas")).expect("sagas/ loads")
}

/// A catalog of one definition written in the test.
pub fn catalog(yaml: &str) -> Catalog {
    catalog_from_str(Path::new("test.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

// ------------------------------------------------- daemon and handlers

/// The key of the operator of the tests (`name:secret`): test daemons hold
/// it, and the CLI run by [`sagaflow_cli`] signs its requests with it.
pub const OPERATOR_KEY: &str = "ops@test:5f1c0e7a9b3d4c2e8f6a1b0c9d8e7f6a";

/// Settings for a test daemon: short blocking reads so that stops are quick.
pub fn test_settings(server: &impl Backend) -> Settings {
    Settings {
        redis_url: server.url(),
        redis_mode: server.mode(),
        operator_keys: sagaflow::protocol::control::OperatorKeys::parse(OPERATOR_KEY)
            .expect("the test operator's key"),
        block: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(1),
        takeover_every: Duration::from_millis(100),
        ..Settings::default()
    }
}

/// A task run until its token is cancelled; cancelled when dropped.
pub struct Running<T> {
    token: CancellationToken,
    handle: Option<JoinHandle<T>>,
}

impl<T> Running<T> {
    /// Cancels the task and waits for it, at most [`STOP_WAIT`].
    pub async fn stop(mut self) -> T {
        self.token.cancel();
        let handle = self.handle.take().expect("stopped once");
        must("a stop", handle).await
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// What a stopped daemon ran with.
pub struct Ran {
    pub settings: Settings,
    /// The reply stream of its last lease period.
    pub reply_stream: String,
}

/// Starts the daemon in this process; stopping it says what it ran with.
pub async fn start_daemon(server: &impl Backend, catalog: Catalog) -> Running<Ran> {
    start_daemon_with(test_settings(server), catalog).await
}

pub async fn start_daemon_with(settings: Settings, catalog: Catalog) -> Running<Ran> {
    // `TEST_LOG=sagaflow=debug` shows the daemon's logs of a failing test.
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let token = CancellationToken::new();
    let start = Daemon::start(settings.clone(), catalog, token.clone());
    let daemon = must("the daemon's start", start).await;
    let handle = Some(tokio::spawn(async move {
        let settings = daemon.settings().clone();
        let handle = daemon.clone();
        daemon.wait().await;
        Ran {
            settings,
            reply_stream: handle.reply_stream(),
        }
    }));
    Running { token, handle }
}

/// Handlers built on the SDK, running in this process until stopped.
pub fn run_handlers(handlers: sagaflow::handler::Handlers) -> Running<()> {
    let token = CancellationToken::new();
    let run = handlers.run(token.clone());
    let handle = Some(tokio::spawn(async move { run.await.expect("handlers") }));
    Running { token, handle }
}

/// A command as the daemon writes it, due in a minute: attempt 1 of an
/// action, its step named after its command.
pub fn command_to(reply_stream: &str, event_type: &str, payload: Value) -> Command {
    Command {
        correlation_id: CorrelationId::from_trusted("test-command"),
        saga_id: SagaId::generate(),
        request_id: RequestId::generate(),
        traceparent: TraceParent::new(TraceId::generate(), SpanId::generate()),
        event_type: event_type.into(),
        step: event_type.into(),
        kind: CommandKind::Action,
        attempt: 1,
        reply_stream: reply_stream.into(),
        payload,
        deadline_ms: now_ms() + 60_000,
        timestamp: now_ms(),
        ack_timeout_ms: None,
        heartbeat_timeout_ms: None,
        branch: None,
    }
}

/// The simulated mission handlers, running in this process.
pub fn start_simulated(server: &impl Backend, opts: SimulationOptions) -> Running<()> {
    let token = CancellationToken::new();
    let handlers = simulated_handlers(server.client(), opts).redis_mode(server.mode());
    let run = handlers.run(token.clone());
    let handle = Some(tokio::spawn(async move {
        run.await.expect("simulated handlers")
    }));
    Running { token, handle }
}

// ---------------------------------------------------------- raw handler

/// A stream entry's fields as text (values not UTF-8 are replaced).
pub type Fields = BTreeMap<String, String>;
/// An entry to write: raw field names and values.
pub type RawEntry = Vec<(Vec<u8>, Vec<u8>)>;

pub fn lossy(fields: &sagaflow::protocol::RawFields) -> Fields {
    let text = |v: &Vec<u8>| String::from_utf8_lossy(v).into_owned();
    fields.iter().map(|(k, v)| (k.clone(), text(v))).collect()
}

/// A command as the raw handler received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub stream: String,
    pub fields: Fields,
    pub received_ms: u64,
}

impl Received {
    pub fn get(&self, name: &str) -> &str {
        let fields = &self.fields;
        fields
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` in {fields:?}"))
    }
}

/// Starts a handler written with plain Redis commands: it reads `streams`
/// through consumer group `group` (created at `0` before this returns),
/// writes what `respond` returns to each command's `reply_stream`, in order,
/// then acknowledges. On a cluster, where one read may not name streams of
/// different slots, it reads them one slot after another, blocking only
/// when they all share one. Stopping it returns every command it received.
pub async fn spawn_raw_handler<F>(
    server: &impl Backend,
    streams: &[&str],
    group: &str,
    mut respond: F,
) -> Running<Vec<Received>>
where
    F: FnMut(&Fields) -> Vec<RawEntry> + Send + 'static,
{
    let mut conn = server.any_conn().await;
    for stream in streams {
        let cmd = words(&format!("XGROUP CREATE {stream} {group} 0 MKSTREAM"));
        if let Err(e) = cmd.query_async::<()>(&mut conn).await {
            assert_eq!(e.code(), Some("BUSYGROUP"), "XGROUP CREATE {stream}: {e}");
        }
    }
    let mut reader = server.blocking_any_conn(Duration::from_millis(100)).await;
    let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for stream in streams {
        let slot = sagaflow::connection::slot(stream);
        by_slot.entry(slot).or_default().push(stream.to_string());
    }
    let reads: Vec<Vec<String>> = match reader.is_cluster() {
        true => by_slot.into_values().collect(),
        false => vec![streams.iter().map(|s| s.to_string()).collect()],
    };
    let block = if reads.len() == 1 { "BLOCK 100" } else { "" };
    let group = group.to_owned();
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = Some(tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.is_cancelled() {
            let mut any = false;
            for streams in &reads {
                let ids = vec![">"; streams.len()];
                let mut read = words(&format!("XREADGROUP GROUP {group} raw COUNT 16 {block}"));
                read.arg("STREAMS").arg(streams).arg(&ids);
                let value: redis::Value = read.query_async(&mut reader).await.expect("XREADGROUP");
                for entry in decode_read_reply(&value) {
                    any = true;
                    let fields = lossy(&entry.fields);
                    let received_ms = now_ms();
                    let reply_stream = fields.get("reply_stream").cloned().unwrap_or_default();
                    for reply in respond(&fields) {
                        let mut xadd = redis::cmd("XADD");
                        xadd.arg(&reply_stream).arg("*").arg(reply);
                        xadd.query_async::<String>(&mut conn).await.expect("XADD");
                    }
                    let mut ack = redis::cmd("XACK");
                    ack.arg(&entry.stream).arg(&group).arg(&entry.id);
                    ack.query_async::<i64>(&mut conn).await.expect("XACK");
                    let stream = entry.stream;
                    seen.push(Received {
                        stream,
                        fields,
                        received_ms,
                    });
                }
            }
            if !any && block.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        seen
    }));
    Running { token, handle }
}

/// Starts `n` reference missions in one round trip; their correlation ids
/// are `<prefix>-000`, `<prefix>-001`, ... Each explores an area of its own
/// (named like its correlation id): none waits for another's robots.
pub async fn start_missions(conn: &mut impl ConnectionLike, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    let mut pipe = redis::pipe();
    for id in &ids {
        let payload = format!(r#"{{"area":"{id}","robots":2}}"#);
        pipe.cmd("XADD")
            .arg("mission:start")
            .arg("*")
            .arg("payload")
            .arg(payload)
            .arg("correlation_id")
            .arg(id);
    }
    let _: Vec<String> = must("the starts", pipe.query_async(conn)).await;
    ids
}

/// Writes replies, in order, to a reply stream, as a handler would.
pub async fn write_replies(conn: &mut impl ConnectionLike, stream: &str, replies: Vec<RawEntry>) {
    for reply in replies {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg("*").arg(reply);
        must("a reply", cmd.query_async::<String>(conn)).await;
    }
}

/// An entry from text pairs.
pub fn entry(pairs: &[(&str, &str)]) -> RawEntry {
    let bytes = |s: &str| s.as_bytes().to_vec();
    pairs.iter().map(|(k, v)| (bytes(k), bytes(v))).collect()
}

/// A reply in the contract's form: ids copied from the command, a span of
/// the handler's own in the command's trace, then `extra`.
pub fn reply(cmd: &Fields, status: &str, extra: &[(&str, &str)]) -> RawEntry {
    let trace_id = cmd["traceparent"]
        .split('-')
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let span = format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    let mut out = entry(&[
        ("correlation_id", &cmd["correlation_id"]),
        ("saga_id", &cmd["saga_id"]),
        ("request_id", &cmd["request_id"]),
        ("event_type", &cmd["event_type"]),
        ("traceparent", &format!("00-{trace_id}-{span}-01")),
        ("parent_span_id", &span),
        ("status", status),
        ("timestamp", &now_ms().to_string()),
    ]);
    out.extend(entry(extra));
    out
}

/// `start`, `progress` 50 and `completed` with `result`.
pub fn complete_in_stages(cmd: &Fields, result: &Value) -> Vec<RawEntry> {
    vec![
        reply(cmd, "start", &[]),
        reply(cmd, "progress", &[("progress", "50")]),
        reply(cmd, "completed", &[("result", &result.to_string())]),
    ]
}

pub fn failed(cmd: &Fields, error: &str, retryable: bool) -> RawEntry {
    let retryable = if retryable { "true" } else { "false" };
    reply(cmd, "failed", &[("error", error), ("retryable", retryable)])
}

// --------------------------------------------------------------- events

/// One entry of `saga:events`.
#[derive(Clone, Debug)]
pub struct Event {
    pub event_type: String,
    pub status: String,
    pub saga_id: String,
    pub correlation_id: String,
    pub saga: String,
    pub step: Option<String>,
    pub payload: Value,
    pub fields: Fields,
}

impl Event {
    pub fn from_fields(fields: Fields) -> Self {
        let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let payload = match fields.get("payload") {
            Some(p) => serde_json::from_str(p).unwrap_or_else(|e| panic!("payload {p}: {e}")),
            None => Value::Null,
        };
        Self {
            event_type: text("event_type"),
            status: text("status"),
            saga_id: text("saga_id"),
            correlation_id: text("correlation_id"),
            saga: text("saga"),
            step: fields.get("step").cloned(),
            payload,
            fields,
        }
    }

    pub fn is_terminal(&self) -> bool {
        TERMINAL.contains(&self.event_type.as_str())
    }

    /// `event_type`, `event_type:step` or `event_type:step[branch]`, for
    /// comparing sequences.
    pub fn label(&self) -> String {
        match &self.step {
            Some(_) => format!("{}:{}", self.event_type, self.unit()),
            None => self.event_type.clone(),
        }
    }

    /// The branch of a fan-out step the event is about, if any.
    pub fn branch(&self) -> Option<u32> {
        self.fields.get("branch").and_then(|b| b.parse().ok())
    }

    /// What the event is about: its step, or a branch as `step[branch]`
    /// (empty for an event about the whole saga).
    pub fn unit(&self) -> String {
        let step = self.step.clone().unwrap_or_default();
        match self.branch() {
            Some(branch) => format!("{step}[{branch}]"),
            None => step,
        }
    }
}

/// One line per event, for failure messages.
pub fn describe(events: &[Event]) -> String {
    let line = |e: &Event| {
        format!(
            "  {} [{}] {} {}",
            e.label(),
            e.status,
            e.correlation_id,
            e.payload
        )
    };
    events.iter().map(line).collect::<Vec<_>>().join("\n")
}

pub fn labels(events: &[Event]) -> Vec<String> {
    events.iter().map(Event::label).collect()
}

/// Reads `saga:events` from its beginning until `done` holds for the events
/// read so far, or panics with them after `within`.
pub async fn wait_for_events(
    server: &impl Backend,
    within: Duration,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut conn = server.blocking_any_conn(Duration::from_millis(200)).await;
    let deadline = Instant::now() + within;
    let mut last_id = "0-0".to_owned();
    let mut events = Vec::new();
    loop {
        if done(&events) {
            return events;
        }
        if Instant::now() >= deadline {
            panic!(
                "gave up after {within:?}; events so far:\n{}",
                describe(&events)
            );
        }
        let mut read = words("XREAD COUNT 1000 BLOCK 200 STREAMS saga:events");
        read.arg(&last_id);
        let value: redis::Value = read.query_async(&mut conn).await.expect("XREAD");
        for e in decode_read_reply(&value) {
            last_id = e.id;
            events.push(Event::from_fields(lossy(&e.fields)));
        }
    }
}

/// The events of the saga(s) started with `correlation_id`, up to and
/// including the first terminal one.
pub async fn saga_events(server: &impl Backend, correlation_id: &str) -> Vec<Event> {
    let ours = |e: &Event| e.correlation_id == correlation_id;
    let ended = |events: &[Event]| events.iter().any(|e| ours(e) && e.is_terminal());
    let all = wait_for_events(server, SAGA_WAIT, ended).await;
    let mut out: Vec<Event> = all.into_iter().filter(ours).collect();
    let end = out.iter().position(Event::is_terminal).unwrap();
    out.truncate(end + 1);
    out
}

/// The one event of this type (and step, when given), or a panic.
pub fn the_event<'a>(events: &'a [Event], event_type: &str, step: Option<&str>) -> &'a Event {
    let found: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == event_type && (step.is_none() || e.step.as_deref() == step))
        .collect();
    let all = describe(events);
    assert_eq!(
        found.len(),
        1,
        "expected one {event_type} {step:?} in:\n{all}"
    );
    found[0]
}

// ------------------------------------------------------------ the CLI

/// Runs `sagaflow <args>` to its end, stdin closed and stdout not a
/// terminal, without the test's own `SAGAFLOW_REDIS_URL`, as the test
/// operator ([`OPERATOR_KEY`]).
pub async fn sagaflow_cli(args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(processes::BIN);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .env_remove("SAGAFLOW_REDIS_URL")
        .env("SAGAFLOW_OPERATOR_KEY", OPERATOR_KEY)
        .env("RUST_LOG", "warn");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("the command's thread")
        .expect("sagaflow runs")
}

/// An audit event of a saga, told apart by `n` (in its payload), for tests
/// of the store's writes.
pub fn numbered_event(saga_id: &SagaId, n: u64) -> sagaflow::protocol::SagaEvent {
    sagaflow::protocol::SagaEvent {
        correlation_id: CorrelationId::from_trusted("store"),
        saga_id: Some(saga_id.clone()),
        saga: "s".into(),
        event_type: sagaflow::protocol::EventType::StepProgress,
        status: sagaflow::protocol::SagaStatus::Running,
        step: Some("a".into()),
        branch: None,
        payload: serde_json::json!({ "n": n }),
        timestamp: 0,
    }
}

/// The key of a saga's record, under the default prefix.
pub fn record_key(saga_id: &str) -> String {
    sagaflow::store::keys::Keys::new("saga:").record(saga_id)
}

/// The daemons' leases, under the default prefix.
pub fn leases_key() -> String {
    sagaflow::store::keys::Keys::new("saga:").leases()
}

/// Every set of sagas an owner drives in a partition.
pub async fn owned_sets(conn: &mut impl ConnectionLike) -> Vec<String> {
    must("KEYS", words("KEYS saga:{*}:owned:*").query_async(conn)).await
}

/// A phase a saga's record can be in, for tests that write records
/// themselves: ended now, failed or unwound at a step `a`.
pub fn phase_of(status: sagaflow::protocol::SagaStatus) -> sagaflow::saga::Phase {
    use sagaflow::protocol::SagaStatus as S;
    use sagaflow::saga::{Failed, Failure, Halt, Phase};
    let failure = Failure {
        step: "a".into(),
        branch: None,
        reason: "written by a test".into(),
        cancelled_by: None,
    };
    let ended_at_ms = now_ms();
    match status {
        S::Running => Phase::Running,
        S::Compensating => Phase::Compensating(failure),
        S::Completed => Phase::Completed { ended_at_ms },
        S::Compensated => Phase::Compensated {
            failure,
            ended_at_ms,
        },
        _ => Phase::Failed(Failed {
            ended_at_ms,
            halt: Halt::Compensation { failure },
            abandoned_by: None,
        }),
    }
}
