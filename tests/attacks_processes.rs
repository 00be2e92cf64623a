//! Attacks on ownership and on replies, with real processes: daemons
//! stopped (SIGTERM) and restarted in turn under a stream of starts, paused
//! past their lease, run with a host clock far ahead of Redis's, held full
//! by steps that never answer, cut off from writing while they read, and
//! killed between a command and its reply. Whatever happens, every saga
//! ends exactly once, none is left running with no live lease holder
//! (`sagaflow list --state stuck` calls such a saga orphaned), and a step
//! whose reply reached Redis is never sent again under a new `request_id`.

mod common;

use common::processes::*;
use common::*;
use redis::aio::MultiplexedConnection;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest the sagas of a test may take to end after the last fault.
const END_WAIT: Duration = Duration::from_secs(20);
/// How long after the end of the sagas late writes get to show up.
const SETTLE: Duration = Duration::from_millis(500);
/// The longest a daemon may take to exit after SIGTERM: the shutdown
/// grace (10 s by default) bounds it; a clean stop takes far less.
const EXIT_WAIT: Duration = Duration::from_secs(12);

/// The lease of the daemons whose lease is watched for a while: two
/// seconds, renewed every 667 ms, leave a busy machine room before a
/// renewal is late (readiness fails at half the lease).
const WATCHED_LEASE: &str = "2s";
/// [`WATCHED_LEASE`] as a duration.
const WATCHED_LEASE_MS: u64 = 2000;

/// The line a daemon logs when it claims the sagas of another (both
/// before and after the store's rework).
const TOOK_OVER: &str = "took over the sagas of a daemon";
/// The line a daemon logs when it claims starts another left unacknowledged.
const TOOK_OVER_STARTS: &str = "took over starts left unacknowledged";
/// The line a daemon logs when it created a saga for a start.
const SAGA_CREATED: &str = r#""saga started","entry_id""#;
/// What a daemon logs when it finds its own lease gone: the first is what
/// the current daemon says, the second what it said before.
const LEASE_LOST: [&str; 2] = [
    "this daemon's lease ran out",
    "this daemon's lease was taken over",
];

// ------------------------------------------------------------- helpers

/// Writes one start of the reference mission every `every` until stopped;
/// stopping it returns their correlation ids, `<prefix>-0000`, ...
struct Feeder {
    stop: CancellationToken,
    handle: JoinHandle<Vec<String>>,
}

impl Feeder {
    async fn start(url: &str, prefix: &str, every: Duration) -> Self {
        let mut conn = connect(url).await;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let prefix = prefix.to_owned();
        let handle = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return ids,
                    _ = tick.tick() => {}
                }
                let id = format!("{prefix}-{:04}", ids.len());
                start_one(&mut conn, "mission:start", &id).await;
                ids.push(id);
            }
        });
        Self { stop, handle }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        must("the feeder's stop", self.handle).await
    }
}

/// Writes one start to `trigger`, with the reference mission's input, in
/// an area of its own (named like it): no mission waits for another's
/// robots.
async fn start_one(conn: &mut MultiplexedConnection, trigger: &str, correlation_id: &str) {
    let payload = serde_json::json!({"area": correlation_id, "robots": 2}).to_string();
    let fields = [("correlation_id", correlation_id), ("payload", &payload)];
    xadd(conn, trigger, &fields).await;
}

/// The rows of `sagaflow list --state stuck`: sagas failed for good, and
/// sagas running or compensating whose owner holds no live lease
/// (`orphaned`).
async fn stuck(url: &str) -> Vec<String> {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["list", "--state", "stuck", "--limit", "100000"])
        .args(["--redis-url", url])
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("SAGAFLOW_") {
            cmd.env_remove(key);
        }
    }
    let out = must("sagaflow list", cmd.output()).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sagaflow list failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Below the header; a last line in brackets says how many more.
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('('))
        .map(str::to_owned)
        .collect()
}

/// Waits until every saga of `ids` ended. Past `within`, says which did
/// not, with what `sagaflow list --state stuck` shows.
async fn wait_ended(
    log: &mut EventLog,
    ids: &[String],
    url: &str,
    within: Duration,
) -> Result<Vec<Event>, String> {
    let deadline = Instant::now() + within;
    loop {
        let open = not_ended(log.poll().await, ids);
        if open.is_empty() {
            return Ok(log.events().to_vec());
        }
        if Instant::now() >= deadline {
            let stuck = stuck(url).await;
            return Err(format!(
                "{} of {} sagas did not end within {within:?}: {:?}\n\
                 sagaflow list --state stuck ({} rows):\n  {}",
                open.len(),
                ids.len(),
                open.iter().take(10).collect::<Vec<_>>(),
                stuck.len(),
                stuck.join("\n  ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Panics listing `problems`, if any, under `what`.
fn assert_none(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// The end of every test with many sagas: each started saga ended exactly
/// once as completed, the audit holds, and nothing is stuck or orphaned.
async fn final_audit(log: &mut EventLog, ids: &[String], url: &str) -> Vec<Event> {
    let events = match wait_ended(log, ids, url, END_WAIT).await {
        Ok(_) => log.settle(SETTLE).await,
        Err(why) => panic!("{why}"),
    };
    assert_all_ended_as(&events, ids, "saga_completed");
    assert_audit(&events, ids);
    let stuck = stuck(url).await;
    assert_none("sagaflow list --state stuck after the end", &stuck);
    events
}

fn count(events: &[Event], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

/// Unix ms on Redis's clock.
async fn redis_now_ms(conn: &mut MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = must("TIME", redis::cmd("TIME").query_async(conn)).await;
    secs * 1000 + micros / 1000
}

/// The owner token (`<node_id>.<epoch>`) with a lease
/// whose node id is `node_id`; panics unless there is exactly one.
async fn lease_owner(conn: &mut MultiplexedConnection, node_id: &str) -> String {
    let members: Vec<String> = must(
        "ZRANGE",
        redis::cmd("ZRANGE")
            .arg(leases_key())
            .arg(0)
            .arg(-1)
            .query_async(conn),
    )
    .await;
    let prefix = format!("{node_id}.");
    let ours: Vec<&String> = members.iter().filter(|m| m.starts_with(&prefix)).collect();
    assert_eq!(ours.len(), 1, "leases of {node_id}: {members:?}");
    ours[0].clone()
}

/// A free loopback address, for a daemon's HTTP endpoints.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The status of `GET path`, or `None` when nothing answers in a second.
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), get)
        .await
        .ok()
        .flatten()
}

/// A temp dir holding one saga definition.
fn sagas_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sagaflow-attack-sagas-")
        .tempdir()
        .expect("a temp dir");
    std::fs::write(dir.path().join("saga.yaml"), yaml).expect("the definition written");
    dir
}

/// `sagaflow run` on the definitions of `sagas`, with the test lease.
fn daemon_on(url: &str, node_id: &str, sagas: &Path) -> Child {
    let sagas = sagas.to_str().expect("a UTF-8 path");
    let args = [
        "run",
        "--redis-url",
        url,
        "--node-id",
        node_id,
        "--sagas",
        sagas,
        "--lease-ttl",
        LEASE_TTL,
    ];
    Child::spawn(node_id, &args, &[])
}

/// Lines of a daemon's stderr holding `needle`.
fn log_lines(daemon: &Child, needle: &str) -> Vec<String> {
    daemon
        .stderr()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The time (unix ms, on the daemon's host clock) of the first line of a
/// daemon's stderr holding `needle`.
fn log_time_ms(daemon: &Child, needle: &str) -> u64 {
    let lines = log_lines(daemon, needle);
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no `{needle}` logged"));
    let record: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    let stamp = record["timestamp"].as_str().expect("a timestamp");
    let at = humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{stamp}: {e}"));
    let since_epoch = at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    since_epoch.as_millis() as u64
}

/// The distinct request ids under which `step` of `correlation_id` was
/// sent, in order.
fn request_ids(events: &[Event], correlation_id: &str, step: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for e in of(events, correlation_id) {
        if e.event_type == "step_started" && e.step.as_deref() == Some(step) {
            let id = e.payload["request_id"].as_str().unwrap_or("").to_owned();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// What must hold of a saga whose one attempt's reply reached Redis: it
/// completed under that attempt, never timed out, and `step` was sent
/// under one request id.
fn assert_applied_once(events: &[Event], correlation_id: &str, step: &str) {
    let ours: Vec<Event> = of(events, correlation_id).into_iter().cloned().collect();
    let timed_out = count(&ours, "step_timed_out");
    let sent_under = request_ids(events, correlation_id, step);
    let completed: Vec<u64> = ours
        .iter()
        .filter(|e| e.event_type == "step_completed")
        .filter_map(|e| e.payload["attempt"].as_u64())
        .collect();
    assert!(
        timed_out == 0 && sent_under.len() == 1 && completed == [1],
        "{correlation_id}: {timed_out} step_timed_out, {step} sent under {} request id(s) \
         {sent_under:?}, completed by attempts {completed:?}\n{}",
        sent_under.len(),
        describe(&ours)
    );
}

// ------------------------------------------------ 1. rolling restarts

/// Restarts in one run: the race this attacks (a stopping daemon's last
/// read creating a saga after its peer claimed the lease it gave up) came
/// about in four restarts out of ten at [`ROLLING_PACE`]; twelve miss it
/// with a chance under 1%.
const RESTARTS: usize = 12;
/// One start every 100 ms: each of the two daemons is handed one about
/// every 200 ms, so a stopping daemon's last read often returns well after
/// it gave its lease up, as its peer looks for dead leases.
const ROLLING_PACE: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_a_stream_of_starts_leaves_no_orphan() {
    let began = Instant::now();
    let server = RedisServer::start();
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "200"]);
    let mut daemons = [Child::daemon(&url, "node-a"), Child::daemon(&url, "node-b")];
    for daemon in &daemons {
        daemon.wait_started().await;
    }
    let mut log = EventLog::new(&url);
    let feeder = Feeder::start(&url, "roll", ROLLING_PACE).await;
    let mut stops = Vec::new();
    for round in 0..RESTARTS {
        // A saga takes about a second here: both daemons have some in
        // flight, and reads of the next starts under way.
        let jitter = random_below(400) as u64;
        tokio::time::sleep(Duration::from_millis(600 + jitter)).await;
        let written = log.poll().await.len();
        let victim = &mut daemons[round % 2];
        let asked = Instant::now();
        victim.term();
        let status = victim.wait_exit(EXIT_WAIT).await;
        let status = status.unwrap_or_else(|| {
            panic!(
                "{} still running {EXIT_WAIT:?} after SIGTERM",
                victim.name()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{} exit status {status}",
            victim.name()
        );
        stops.push((asked.elapsed().as_millis(), written));
        victim.restart();
        victim.wait_started().await;
    }
    let ids = feeder.stop().await;
    eprintln!(
        "{RESTARTS} restarts (exit ms, events so far): {stops:?}; {} starts",
        ids.len()
    );
    final_audit(&mut log, &ids, &url).await;
    for daemon in &mut daemons {
        assert!(daemon.is_running(), "{} exited", daemon.name());
    }
    eprintln!("rolling restarts: {:?}", began.elapsed());
}

/// Pauses of the one daemon in a run: each gives the race a chance.
const PAUSES: usize = 4;
/// How long each pause lasts: past the paused daemon's 1 s lease, so that
/// its peer claims it, and short of the 3 s after which the peer claims
/// the starts the paused one had read.
const PAUSE: Duration = Duration::from_millis(2200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_paused_past_its_lease_while_starts_flow_leaves_no_orphan() {
    let began = Instant::now();
    let server = RedisServer::start();
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "200"]);
    let mut paused = Child::daemon(&url, "node-a");
    // A longer lease on the peer: it claims unacknowledged starts only
    // after they were idle that long, while the paused daemon's lease is
    // long gone. What the paused daemon read before the pause is still in
    // its hands when it resumes.
    let mut peer = Child::daemon_with(&url, "node-b", &["--lease-ttl", "3s"], &[]);
    paused.wait_started().await;
    peer.wait_started().await;
    let mut log = EventLog::new(&url);
    let feeder = Feeder::start(&url, "pause", Duration::from_millis(50)).await;
    for _ in 0..PAUSES {
        let jitter = random_below(300) as u64;
        tokio::time::sleep(Duration::from_millis(700 + jitter)).await;
        paused.stop();
        tokio::time::sleep(PAUSE).await;
        paused.cont();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ids = feeder.stop().await;
    final_audit(&mut log, &ids, &url).await;
    assert!(paused.is_running(), "the paused daemon exited");
    assert!(peer.is_running(), "its peer exited");
    eprintln!(
        "{PAUSES} pauses of {PAUSE:?}: {} sagas; the peer took sagas over {} times and \
         starts {} times; the paused daemon found its lease gone {} times; {:?}",
        ids.len(),
        log_lines(&peer, TOOK_OVER).len(),
        log_lines(&peer, TOOK_OVER_STARTS).len(),
        LEASE_LOST
            .iter()
            .map(|n| log_lines(&paused, n).len())
            .sum::<usize>(),
        began.elapsed()
    );
}

// --------------------------------------------------------- 2. clock skew

/// How far ahead of Redis (and of the other daemon) the skewed daemon's
/// host clock runs: far more than any lease.
const SKEW: &str = "+15s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_clock_runs_ahead_takes_no_live_lease() {
    let began = Instant::now();
    let server = RedisServer::start();
    let url = server.url();
    let _handlers = Child::handlers(&url, &["--work-ms", "100"]);
    let skewed_env = skewed_clock(SKEW);
    let skewed_env: Vec<(&str, &str)> = skewed_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let lease = ["--lease-ttl", WATCHED_LEASE];
    let mut skewed = Child::daemon_with(&url, "skewed", &lease, &skewed_env);
    let mut plain = Child::daemon_with(&url, "plain", &lease, &[]);
    skewed.wait_started().await;
    plain.wait_started().await;
    let ahead = log_time_ms(&skewed, "sagaflow daemon started") as i64 - now_ms() as i64;
    assert!(
        ahead > 10_000,
        "the skewed daemon's clock is {ahead} ms ahead: libfaketime did not take"
    );
    let mut log = EventLog::new(&url);
    // 60 sagas over 3 s: both daemons take some, and hold them across
    // several renewals.
    let feeder = Feeder::start(&url, "skew", Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(2980)).await;
    let ids = feeder.stop().await;
    assert!(ids.len() >= 55, "{} starts", ids.len());

    let mut problems = Vec::new();
    let events = match wait_ended(&mut log, &ids, &url, END_WAIT).await {
        Ok(_) => log.settle(SETTLE).await,
        Err(why) => {
            problems.push(why);
            log.events().to_vec()
        }
    };
    let took_over = log_lines(&skewed, TOOK_OVER);
    if !took_over.is_empty() {
        problems.push(format!(
            "the skewed daemon took over while both lived, {} times; first: {}",
            took_over.len(),
            took_over[0]
        ));
    }
    let lost = LEASE_LOST
        .iter()
        .flat_map(|needle| log_lines(&plain, needle))
        .collect::<Vec<_>>();
    if !lost.is_empty() {
        problems.push(format!(
            "the plain daemon lost its lease {} times; first: {}",
            lost.len(),
            lost[0]
        ));
    }
    let mut created = Vec::new();
    for daemon in [&mut skewed, &mut plain] {
        if !daemon.is_running() {
            problems.push(format!("{} exited", daemon.name()));
        }
        created.push((
            daemon.name().to_owned(),
            log_lines(daemon, SAGA_CREATED).len(),
        ));
    }
    if created.iter().any(|(_, n)| *n == 0) {
        problems.push(format!("a daemon created no saga: {created:?}"));
    }
    problems.extend(audit(&events, &ids));
    problems.extend(stuck(&url).await);
    assert_none("two daemons, one 15 s ahead", &problems);
    assert_all_ended_as(&events, &ids, "saga_completed");
    eprintln!(
        "{} sagas through a skewed daemon, created by {created:?}: {:?}",
        ids.len(),
        began.elapsed()
    );
}

// ---------------------------------------------- 3. a full daemon's lease

/// The capacity of the full daemon.
const FULL_CAPACITY: usize = 2;
/// How long the full daemon is watched once a peer runs: three leases.
const FULL_WATCH: Duration = Duration::from_millis(3 * WATCHED_LEASE_MS);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_full_of_hung_steps_keeps_its_lease() {
    let began = Instant::now();
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = server.conn().await;
    // Starts a daemon read and died with: pending in the trigger group
    // under a consumer that never comes back.
    let group = words("XGROUP CREATE mission:start sagaflow 0 MKSTREAM");
    must("XGROUP CREATE", group.query_async::<()>(&mut conn)).await;
    for i in 0..3 {
        start_one(&mut conn, "mission:start", &format!("left-{i}")).await;
    }
    let read = words("XREADGROUP GROUP sagaflow gone COUNT 3 STREAMS mission:start >");
    must("XREADGROUP", read.query_async::<redis::Value>(&mut conn)).await;
    let left_at = Instant::now();

    // Every saga hangs at its third step, whose timeout (30 s) outlasts
    // the test: nothing frees the full daemon's permits.
    let _handlers = Child::handlers(&url, &["--hang-step", "perform_exploration"]);
    let addr = free_addr();
    let capacity = FULL_CAPACITY.to_string();
    let flags = [
        "--lease-ttl",
        WATCHED_LEASE,
        "--max-in-flight",
        &capacity,
        "--http-addr",
        &addr,
    ];
    let mut full = Child::daemon_with(&url, "full", &flags, &[]);
    full.wait_started().await;
    let owner = lease_owner(&mut conn, "full").await;
    // More starts than it has room for: the rest wait.
    for i in 0..4 {
        start_one(&mut conn, "mission:start", &format!("queued-{i}")).await;
    }
    let mut log = EventLog::new(&url);
    // A hung saga sent every command but integrate's (allocate, plan, each
    // robot's exploration), and wrote the fan-out's own start.
    let sent_per_saga = (mission_commands(2) - 1) + 1;
    let fan_out = |e: &&Event| {
        e.event_type == "step_started"
            && e.step.as_deref() == Some(MISSION_FAN_OUT)
            && e.branch().is_none()
    };
    let held = log
        .wait_until(SAGA_WAIT, "the full daemon's sagas hung", |events| {
            count(events, "step_started") >= sent_per_saga * FULL_CAPACITY
                && events.iter().filter(fan_out).count() >= FULL_CAPACITY
        })
        .await;
    let hung: Vec<String> = held
        .iter()
        .filter(fan_out)
        .map(|e| e.correlation_id.clone())
        .collect();
    assert_eq!(hung.len(), FULL_CAPACITY, "{}", describe(&held));
    // The dead consumer's starts are idle past a lease, and the full
    // daemon has had rounds to look at them, before a peer comes.
    let peer_after = Duration::from_millis(WATCHED_LEASE_MS + 1500);
    tokio::time::sleep(peer_after.saturating_sub(left_at.elapsed())).await;
    let lease = ["--lease-ttl", WATCHED_LEASE];
    let peer = Child::daemon_with(&url, "peer", &lease, &[]);
    peer.wait_started().await;

    let watch_until = Instant::now() + FULL_WATCH;
    let mut checks = 0;
    while Instant::now() < watch_until {
        let now = redis_now_ms(&mut conn).await;
        let score: Option<f64> = must(
            "ZSCORE",
            redis::cmd("ZSCORE")
                .arg(leases_key())
                .arg(&owner)
                .query_async(&mut conn),
        )
        .await;
        assert!(
            score.is_some_and(|expiry| expiry as u64 > now),
            "after {checks} checks the full daemon's lease {owner} is {score:?} at {now}\n\
             peer: {:?}\nfull: {:?}",
            log_lines(&peer, TOOK_OVER),
            LEASE_LOST
                .iter()
                .chain([&TOOK_OVER_STARTS])
                .flat_map(|n| log_lines(&full, n))
                .collect::<Vec<_>>()
        );
        let ready = http_status(&addr, "/readyz").await;
        assert_eq!(
            ready,
            Some(200),
            "/readyz of the full daemon after {checks} checks"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = log.poll().await.to_vec();
    assert_none("the peer's takeovers", &log_lines(&peer, TOOK_OVER));
    for needle in LEASE_LOST {
        assert_none("the full daemon's lease", &log_lines(&full, needle));
    }
    // Still full: its sagas wait where they were, sent once.
    for id in &hung {
        let sent = of(&events, id)
            .into_iter()
            .filter(|e| e.event_type == "step_started")
            .count();
        assert_eq!(sent, sent_per_saga, "{id}\n{}", describe(&events));
        let open = not_ended(&events, std::slice::from_ref(id));
        assert_eq!(open.len(), 1, "{id} ended\n{}", describe(&events));
    }
    assert!(full.is_running(), "the full daemon exited");
    eprintln!(
        "a full daemon kept its lease over {checks} checks; the peer took over starts: {:?}; {:?}",
        log_lines(&peer, TOOK_OVER_STARTS),
        began.elapsed()
    );
}

// ----------------------------- 4. a reply read while writes fail, then kill

/// One step, answered by the test's own handler; a timeout that fires
/// within the test if the reply is lost, and a second attempt to show it.
const REPLY_SAGA: &str = "\
name: reply_once
trigger: reply:start
steps:
  - name: survey
    stream: survey:commands
    timeout: 3s
    retry: { max_attempts: 2, backoff: fixed, initial_delay: 100ms }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_read_while_writes_fail_survives_a_kill() {
    let began = Instant::now();
    let server = RedisServer::start();
    let url = server.url();
    let sagas = sagas_dir(REPLY_SAGA);
    let mut conn = server.conn().await;
    // The first command of each saga is held for the test to answer; any
    // other (a second attempt) is answered at once.
    let held: std::sync::Arc<std::sync::Mutex<Vec<Fields>>> = Default::default();
    let keep = held.clone();
    let handler = spawn_raw_handler(&server, &["survey:commands"], "surveyors", move |cmd| {
        let mut held = keep.lock().unwrap();
        let first = !held
            .iter()
            .any(|h| h["correlation_id"] == cmd["correlation_id"]);
        if first {
            held.push(cmd.clone());
            vec![]
        } else {
            vec![reply(cmd, "completed", &[("result", r#"{"again":true}"#)])]
        }
    })
    .await;
    let mut reader = daemon_on(&url, "reader", sagas.path());
    reader.wait_started().await;
    let ids = vec!["reply-first".to_owned(), "reply-second".to_owned()];
    for id in &ids {
        start_one(&mut conn, "reply:start", id).await;
    }
    let deadline = Instant::now() + SAGA_WAIT;
    let commands = loop {
        let commands = held.lock().unwrap().clone();
        if commands.len() == ids.len() {
            break commands;
        }
        assert!(Instant::now() < deadline, "commands held: {commands:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reply_stream = commands[0]["reply_stream"].clone();
    assert_eq!(commands[1]["reply_stream"], reply_stream);

    // Both replies land, and at once Redis refuses every write that adds
    // (its memory "full"; trims still work): the reader reads the replies
    // and cannot apply them.
    let mut pipe = redis::pipe();
    pipe.atomic();
    for cmd in &commands {
        let done = reply(cmd, "completed", &[("result", r#"{"surveyed":true}"#)]);
        pipe.cmd("XADD")
            .arg(&reply_stream)
            .arg("*")
            .arg(done)
            .ignore();
    }
    pipe.cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .ignore();
    pipe.cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .ignore();
    must(
        "the replies and the memory cap",
        pipe.query_async::<()>(&mut conn),
    )
    .await;
    reader
        .wait_for_log("writing saga transitions fails", Duration::from_secs(5))
        .await;
    // The reader trims what it may as soon as it reads: give it the time.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut len: i64 = 2;
    while len == 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let xlen = redis::cmd("XLEN").arg(&reply_stream).clone();
        len = must("XLEN", xlen.query_async(&mut conn)).await;
    }
    reader.kill9();
    let unset = words("CONFIG SET maxmemory 0");
    must("CONFIG SET maxmemory 0", unset.query_async::<()>(&mut conn)).await;
    let _taker = daemon_on(&url, "taker", sagas.path());

    let mut log = EventLog::new(&url);
    let events = match wait_ended(&mut log, &ids, &url, END_WAIT).await {
        Ok(_) => log.settle(SETTLE).await,
        Err(why) => panic!("{why}"),
    };
    let received = handler.stop().await;
    eprintln!(
        "replies left on {reply_stream} at the kill: {len} of 2; the handler received {} commands",
        received.len()
    );
    for id in &ids {
        assert_applied_once(&events, id, "survey");
    }
    assert_eq!(
        received.len(),
        ids.len(),
        "commands received: {received:#?}"
    );
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
    eprintln!("replies applied after the kill: {:?}", began.elapsed());
}

// ------------------------------------ 5. a restart after a step's deadline

/// One step of the simulated services, with a timeout the test outlives.
const DEADLINE_SAGA: &str = "\
name: deadline_once
trigger: deadline:start
steps:
  - name: allocate_resources
    stream: resources:commands
    timeout: 3s
    retry: { max_attempts: 2, backoff: fixed, initial_delay: 100ms }
    input:
      area: ${input.area}
      robots: ${input.robots}
";

/// The daemon is killed this long after its command was sent: well before
/// the handler replies (after 1 s of work).
const KILL_AFTER: Duration = Duration::from_millis(300);
/// The daemon comes back this long after its step's deadline.
const BACK_AFTER_DEADLINE: Duration = Duration::from_millis(1000);

/// Kills the only daemon just after a step was sent, lets the handler's
/// reply land, and brings a daemon back after the step's deadline:
/// restarted under the same node id (`same_node`), or another one.
async fn restart_after_the_deadline(same_node: bool) {
    let began = Instant::now();
    let server = RedisServer::start();
    let url = server.url();
    let sagas = sagas_dir(DEADLINE_SAGA);
    let _handlers = Child::handlers(&url, &["--work-ms", "1000"]);
    let mut first = daemon_on(&url, "node-a", sagas.path());
    first.wait_started().await;
    let mut conn = server.conn().await;
    let id = if same_node { "late-same" } else { "late-other" };
    start_one(&mut conn, "deadline:start", id).await;
    let mut log = EventLog::new(&url);
    let mut sent = None;
    let deadline = Instant::now() + SAGA_WAIT;
    while sent.is_none() {
        assert!(Instant::now() < deadline, "no step_started");
        sent = log
            .poll()
            .await
            .iter()
            .find(|e| e.event_type == "step_started")
            .cloned();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = sent.unwrap();
    let sent_ms: u64 = sent.fields["timestamp"].parse().expect("a timestamp");
    let step_deadline = sent.payload["deadline_ms"].as_u64().expect("a deadline");
    let reply_stream = sent.payload["reply_stream"]
        .as_str()
        .expect("a reply stream")
        .to_owned();
    let kill_at = sent_ms + KILL_AFTER.as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(kill_at.saturating_sub(now_ms()))).await;
    first.kill9();
    let killed_after = now_ms() - sent_ms;
    assert_eq!(
        count(log.poll().await, "step_completed"),
        0,
        "applied before the kill ({killed_after} ms after the command)"
    );

    // The handler's reply lands on the dead daemon's stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    let replied_after = loop {
        let replies = entries_after(&mut conn, &reply_stream, "0-0").await;
        if let Some(done) = replies
            .iter()
            .find(|r| r.get("status").map(String::as_str) == Some("completed"))
        {
            let at: u64 = done["timestamp"].parse().unwrap_or(0);
            break at.saturating_sub(sent_ms);
        }
        assert!(Instant::now() < deadline, "no completed reply: {replies:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let back_at = step_deadline + BACK_AFTER_DEADLINE.as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(back_at.saturating_sub(now_ms()))).await;
    let back_after = now_ms() - sent_ms;
    let _second = if same_node {
        first.restart();
        None
    } else {
        Some(daemon_on(&url, "node-b", sagas.path()))
    };

    let ids = vec![id.to_owned()];
    let events = match wait_ended(&mut log, &ids, &url, END_WAIT).await {
        Ok(_) => log.settle(SETTLE).await,
        Err(why) => panic!("{why}"),
    };
    eprintln!(
        "{id}: killed {killed_after} ms, replied {replied_after} ms, back {back_after} ms \
         after the command (deadline at {} ms); {:?}",
        step_deadline - sent_ms,
        began.elapsed()
    );
    assert_applied_once(&events, id, "allocate_resources");
    assert_all_ended_as(&events, &ids, "saga_completed");
    assert_audit(&events, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restarted_after_a_deadline_applies_the_reply_that_came() {
    restart_after_the_deadline(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_taking_over_after_a_deadline_applies_the_reply_that_came() {
    restart_after_the_deadline(false).await;
}
