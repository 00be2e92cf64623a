//! Least privilege with Redis ACLs: the users `sagaflow acl` prints are
//! applied with redis-cli to a real redis-server, whose default user is
//! then turned off, and every piece connects as its own user: the daemons
//! (`sagaflow run`), the handlers (the SDK with one user per service, then
//! `sagaflow handlers` with the combined one), `sagaflow start --wait` as
//! the starter, `status` and `list` as the viewer, `cancel --wait` as the
//! operator. Missions complete and are cancelled, a daemon takes another's
//! sagas over, sagas take, wait for and let go of a semantic lock that
//! `locks` and `status` show, and Redis refuses nothing along the way
//! (`ACL LOG` stays empty). Then each role is refused, with NOPERM, what it must not do.

mod common;

use common::processes::{has, mission_sagas, Child, EventLog, BIN};
use common::*;
use sagaflow::handler::mission;
use sagaflow::handler::simulated::{
    EXPLORATION_STREAM, MAPPING_STREAM, RESOURCES_STREAM, ROUTING_STREAM,
};
use sagaflow::handler::{Context, Handlers};
use sagaflow::protocol::Command;
use serde_json::Value;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// The operator's password, given with `--password`: a space and quotes
/// test the quoting of the printed command. The others are random.
const OPERATOR_PASSWORD: &str = "op \"s3cret\" word";
/// The same, percent-encoded for a URL.
const OPERATOR_PASSWORD_IN_URL: &str = "op%20%22s3cret%22%20word";

/// An administrator, made by the test once the default user is off.
const ADMIN: &str = "acl-test-admin:admin-secret";

/// The longest one CLI command may take, `--wait` included.
const CLI_WAIT: Duration = Duration::from_secs(40);

/// Runs `program args`, stdin fed with `input`, to its end; panics after
/// [`CLI_WAIT`] (the process is killed then).
async fn run(program: &str, args: &[&str], input: &str) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(manifest_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("SAGAFLOW_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let mut stdin = child.stdin.take().expect("a piped stdin");
    stdin.write_all(input.as_bytes()).await.expect("stdin");
    drop(stdin);
    match tokio::time::timeout(CLI_WAIT, child.wait_with_output()).await {
        Ok(output) => output.expect("the process's output"),
        Err(_) => panic!("{program} {args:?} took longer than {CLI_WAIT:?}"),
    }
}

/// `sagaflow <args>`, as the test operator where a request is signed.
async fn sagaflow(args: &[&str]) -> Output {
    let mut with_key = args.to_vec();
    if matches!(
        args.first(),
        Some(&"cancel" | &"retry" | &"skip" | &"abandon" | &"pause" | &"resume")
    ) {
        with_key.extend(["--config", OPERATOR_CONFIG.path().to_str().expect("UTF-8")]);
    }
    run(BIN, &with_key, "").await
}

/// A configuration file holding the test operator's key.
static OPERATOR_CONFIG: std::sync::LazyLock<tempfile::NamedTempFile> =
    std::sync::LazyLock::new(|| {
        let file = tempfile::NamedTempFile::new().expect("a temp file");
        std::fs::write(file.path(), format!("operator_key: \"{OPERATOR_KEY}\"\n"))
            .expect("the operator's key written");
        file
    });

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The users `sagaflow acl` printed, applied to the server.
struct Users {
    printed: String,
    port: u16,
}

impl Users {
    /// The URL a piece of role `role` connects with.
    fn url(&self, role: &str) -> String {
        let user = format!("sagaflow-{role}");
        let password = if role == "operator" {
            OPERATOR_PASSWORD_IN_URL.to_owned()
        } else {
            let start = format!("ACL SETUSER {user} reset on >");
            let line = self
                .printed
                .lines()
                .find(|l| l.starts_with(&start))
                .unwrap_or_else(|| panic!("no user {user} in:\n{}", self.printed));
            line[start.len()..]
                .split(' ')
                .next()
                .expect("a password")
                .to_owned()
        };
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    fn admin_url(&self) -> String {
        format!("redis://{ADMIN}@127.0.0.1:{}/", self.port)
    }
}

/// Prints the users for the reference mission, applies them as the
/// default user with redis-cli, then makes an administrator for the test
/// and turns the default user off: no piece can get by without its own.
async fn apply_users(server: &RedisServer, api_tokens: Option<&str>) -> Users {
    apply_users_for(server, api_tokens, &mission_sagas()).await
}

/// [`apply_users`] for the sagas of `sagas`, a directory.
async fn apply_users_for(
    server: &RedisServer,
    api_tokens: Option<&str>,
    sagas: &std::path::Path,
) -> Users {
    let url = server.url();
    let sagas = sagas.to_str().expect("a UTF-8 path");
    let operator = format!("operator={OPERATOR_PASSWORD}");
    let mut args = vec![
        "acl",
        "--redis-url",
        &url,
        "--sagas",
        sagas,
        "--handler-roles",
        "both",
        "--password",
        &operator,
    ];
    // The daemons' settings: with a write token, their API writes
    // operators' requests.
    let config = tempfile::NamedTempFile::new().expect("a temp file");
    if let Some(tokens) = api_tokens {
        std::fs::write(
            config.path(),
            format!("api_tokens: \"{tokens}\"\noperator_keys: \"{OPERATOR_KEY}\"\n"),
        )
        .expect("the daemons' settings written");
        args.extend(["--config", config.path().to_str().expect("UTF-8")]);
    }
    let o = sagaflow(&args).await;
    assert!(o.status.success(), "sagaflow acl:\n{}", text(&o));
    let printed = String::from_utf8(o.stdout).expect("UTF-8");
    let commands: Vec<&str> = printed
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // daemon, a role per service (four for the mission), the combined
    // handlers (when there is a service), starter, signaller, operator,
    // viewer
    let services = printed.matches("ACL SETUSER sagaflow-handler-").count();
    let combined = usize::from(services > 0);
    assert_eq!(commands.len(), 5 + services + combined, "{printed}");
    let urls: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with("# ") && l.contains("redis://sagaflow-"))
        .collect();
    assert_eq!(urls.len(), commands.len(), "a URL per role:\n{printed}");
    for comment in urls {
        assert!(comment.contains(":***@127.0.0.1:"), "{comment}");
    }
    assert!(
        !printed
            .lines()
            .any(|l| l.starts_with('#') && l.contains("s3cret")),
        "a password in a comment:\n{printed}"
    );

    let port = server.port.to_string();
    let input = commands.join("\n") + "\n";
    let o = run("redis-cli", &["-p", &port], &input).await;
    let answers = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "redis-cli:\n{}", text(&o));
    assert_eq!(
        answers.lines().collect::<Vec<_>>(),
        vec!["OK"; commands.len()],
        "every ACL SETUSER is accepted:\n{}",
        text(&o)
    );

    let mut conn = server.conn().await;
    let (user, password) = ADMIN.split_once(':').expect("user:password");
    let admin = format!("ACL SETUSER {user} on >{password} ~* &* +@all");
    must("the admin user", words(&admin).query_async::<()>(&mut conn)).await;
    let off = words("ACL SETUSER default off");
    must("the default user off", off.query_async::<()>(&mut conn)).await;
    let anonymous = redis::Client::open(server.url()).unwrap();
    let refused = async {
        let mut c = anonymous.get_multiplexed_async_connection().await?;
        words("PING").query_async::<String>(&mut c).await
    };
    assert!(bounded("a PING as default", refused).await.is_err());
    Users {
        printed,
        port: server.port,
    }
}

/// What Redis refused so far, as readable lines: `ACL LOG` names the
/// command or key, the user, and `lua` when a script was refused. Read
/// with a blocking connection, so that it works while a test panics.
fn acl_log(admin_url: &str) -> Vec<String> {
    type Entry = std::collections::HashMap<String, redis::Value>;
    let read = || -> redis::RedisResult<Vec<Entry>> {
        let client = redis::Client::open(admin_url)?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        words("ACL LOG 100").query(&mut conn)
    };
    let entries = match read() {
        Ok(entries) => entries,
        Err(e) => return vec![format!("(cannot read ACL LOG: {e})")],
    };
    let field = |e: &Entry, k: &str| {
        e.get(k)
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .unwrap_or_default()
    };
    entries
        .iter()
        .map(|e| {
            format!(
                "{} refused {} `{}` ({})",
                field(e, "username"),
                field(e, "reason"),
                field(e, "object"),
                field(e, "context")
            )
        })
        .collect()
}

/// Prints what Redis refused when the test fails, whatever the step that
/// failed: a piece refused a command usually shows up later as a timeout.
struct ShowRefusals(String);

impl Drop for ShowRefusals {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("ACL LOG:\n{}", acl_log(&self.0).join("\n"));
        }
    }
}

type Compute = fn(&Value) -> Value;
/// A service: its role's suffix, its stream, its command types.
type Service = (&'static str, &'static str, [(&'static str, Compute); 2]);

/// The mission's services, each with its action and its compensation.
const SERVICES: [Service; 4] = [
    (
        "resources",
        RESOURCES_STREAM,
        [
            ("allocate_resources", mission::allocate_resources),
            ("release_resources", mission::release_resources),
        ],
    ),
    (
        "routing",
        ROUTING_STREAM,
        [
            ("plan_route", mission::plan_route),
            ("cancel_route", mission::cancel_route),
        ],
    ),
    (
        "exploration",
        EXPLORATION_STREAM,
        [
            ("perform_exploration", mission::perform_exploration),
            ("abort_exploration", mission::abort_exploration),
        ],
    ),
    (
        "mapping",
        MAPPING_STREAM,
        [
            ("integrate_maps", mission::integrate_maps),
            ("discard_maps", mission::discard_maps),
        ],
    ),
];

/// One SDK runner per service, each connected as that service's user.
fn start_service_handlers(
    users: &Users,
    token: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    for (service, stream, routes) in SERVICES {
        let client = redis::Client::open(users.url(&format!("handler-{service}"))).unwrap();
        let mut handlers = Handlers::new(client, "sagaflow-sim");
        for (event_type, compute) in routes {
            handlers = handlers.on(
                stream,
                event_type,
                move |cmd: Command, ctx: Context| async move {
                    ctx.progress(50.0).await;
                    Ok(compute(&cmd.payload))
                },
            );
        }
        let token = token.clone();
        out.push(tokio::spawn(async move {
            handlers.run(token).await.expect("the handlers run");
        }));
    }
    out
}

/// The value after `label` in the output of `sagaflow start`.
fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no `{label}` in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_piece_runs_as_its_own_user() {
    let server = RedisServer::start();
    let (api_token, entry) = common::api::write_token();
    let users = apply_users(&server, Some(&entry)).await;
    let _show = ShowRefusals(users.admin_url());
    let mut first = Child::daemon(&users.url("daemon"), "acl-a");
    first.wait_started().await;
    let token = CancellationToken::new();
    let services = start_service_handlers(&users, &token);

    // A mission, started and followed by the starter, handled by one user
    // per service.
    let starter = users.url("starter");
    let o = sagaflow(&[
        "start",
        "--redis-url",
        &starter,
        "--payload",
        r#"{"area": "hall-a", "robots": 2}"#,
        "--idempotency-key",
        "acl-1",
        "--wait",
        "--timeout",
        "20s",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "completed:\n{}", text(&o));
    let done = field(&text(&o), "saga id");

    let viewer = users.url("viewer");
    let o = sagaflow(&["status", &done, "--redis-url", &viewer]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("completed"), "{}", text(&o));
    let o = sagaflow(&["list", "--redis-url", &viewer]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&done), "{}", text(&o));

    // The combined handlers role, `sagaflow handlers` on one connection;
    // a daemon killed mid-saga; the operator cancels the saga its
    // successor took over.
    token.cancel();
    for task in services {
        must("the service handlers' stop", task).await;
    }
    let _handlers = Child::handlers(&users.url("handlers"), &["--work-ms", "3000"]);
    let o = sagaflow(&[
        "start",
        "--redis-url",
        &starter,
        "--payload",
        r#"{"area": "hall-b", "robots": 3}"#,
        "--correlation-id",
        "acl-2",
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let cancelled = field(&text(&o), "saga id");
    let mut log = EventLog::new(&users.admin_url());
    log.wait_until(SAGA_WAIT, "the second saga at its second step", |events| {
        has(events, "acl-2", "step_started", "plan_route")
    })
    .await;
    first.kill9();
    let second = Child::daemon(&users.url("daemon"), "acl-b");
    second
        .wait_for_log("took over the sagas of a daemon", SAGA_WAIT)
        .await;
    let operator = users.url("operator");
    let o = sagaflow(&[
        "cancel",
        &cancelled,
        "--redis-url",
        &operator,
        "--reason",
        "least privilege",
        "--wait",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "compensated:\n{}", text(&o));
    let o = sagaflow(&["status", &cancelled, "--redis-url", &viewer]).await;
    assert!(text(&o).contains("compensated"), "{}", text(&o));
    // The operator pauses the mission's name: a start waits, held, and
    // runs once the name is resumed.
    let o = sagaflow(&[
        "pause",
        "--name",
        "mission_start",
        "--redis-url",
        &operator,
        "--reason",
        "least privilege",
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = sagaflow(&[
        "start",
        "--redis-url",
        &starter,
        "--payload",
        r#"{"area": "hall-d", "robots": 1}"#,
        "--correlation-id",
        "acl-held",
        "--accept-timeout",
        "1s",
    ])
    .await;
    assert_eq!(o.status.code(), Some(3), "held:\n{}", text(&o));
    let o = sagaflow(&["list", "--paused-names", "--redis-url", &viewer]).await;
    assert!(text(&o).contains("1 start(s) held"), "{}", text(&o));
    let o = sagaflow(&[
        "resume",
        "--name",
        "mission_start",
        "--redis-url",
        &operator,
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    log.wait_until(Duration::from_secs(30), "the held start's saga", |events| {
        (events.iter()).any(|e| e.correlation_id == "acl-held" && e.event_type == "saga_completed")
    })
    .await;
    // The operator looks the deployment over: every read `doctor` makes
    // is one the role allows (a refused one would be in the ACL log).
    let o = sagaflow(&["doctor", "--redis-url", &operator]).await;
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    assert!(!text(&o).contains("NOPERM"), "{}", text(&o));

    // The HTTP API of a daemon, as the daemon's user: a start, reads, a
    // count, events, and an operator's cancel.
    let addr = common::api::free_addr();
    let api_daemon = Child::daemon_with(
        &users.url("daemon"),
        "acl-api",
        &["--http-addr", &addr],
        &[("SAGAFLOW_API_TOKENS", &entry)],
    );
    api_daemon.wait_started().await;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/v1");
    let api_token = &api_token;
    let call = |request: reqwest::RequestBuilder| async move {
        // A start may wait 10 s for a daemon to take it.
        let within = Duration::from_secs(30);
        let response = tokio::time::timeout(within, request.bearer_auth(api_token).send())
            .await
            .unwrap_or_else(|_| panic!("an API call took longer than {within:?}"))
            .expect("the API answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    };
    let (status, body) = call(
        http.post(format!("{base}/sagas/mission_start"))
            .header("X-Request-ID", "acl-3")
            .body(r#"{"area": "hall-c", "robots": 2}"#),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let started: Value = serde_json::from_str(&body).unwrap();
    let id = started["saga_id"].as_str().unwrap().to_owned();
    for path in [
        "/sagas?limit=5",
        "/stats",
        &format!("/sagas/{id}?events=true"),
    ] {
        let (status, body) = call(http.get(format!("{base}{path}"))).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = call(
        http.post(format!("{base}/sagas/{id}/cancel"))
            .body(r#"{"reason": "least privilege over HTTP"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let refused = acl_log(&users.admin_url());
    assert!(
        refused.is_empty(),
        "Redis refused commands of the pieces (add them to their role in src/cli/acl.rs):\n{}",
        refused.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_taken_let_go_of_and_shown_under_least_privilege() {
    use common::locks::{contention, lock_job_sagas, LOCK_TRIGGER};
    let server = RedisServer::start();
    let sagas = lock_job_sagas();
    let (api_token, entry) = common::api::write_token();
    let users = apply_users_for(&server, Some(&entry), sagas.path()).await;
    let _show = ShowRefusals(users.admin_url());
    let addr = common::api::free_addr();
    let daemon_url = users.url("daemon");
    let sagas_dir = sagas.path().to_str().expect("a UTF-8 path");
    let daemon = Child::spawn(
        "acl-locks",
        &[
            "run",
            "--redis-url",
            &daemon_url,
            "--node-id",
            "acl-locks",
            "--sagas",
            sagas_dir,
            "--lease-ttl",
            common::processes::LEASE_TTL,
            "--http-addr",
            &addr,
        ],
        &[
            ("SAGAFLOW_OPERATOR_KEYS", OPERATOR_KEY),
            ("SAGAFLOW_API_TOKENS", &entry),
        ],
    );
    daemon.wait_started().await;
    let _handlers = Child::handlers(&users.url("handlers"), &[]);

    // Two sagas on robot 7, started by the starter: the first takes the
    // lock (asked for in a script: TYPE, LRANGE, RPUSH) and waits for a
    // signal holding it; the second waits for it.
    let starter = users.url("starter");
    let mut log = EventLog::new(&users.admin_url());
    for (correlation_id, holding, waiting) in [
        ("lock-1", &["lock-1"][..], &[][..]),
        ("lock-2", &["lock-1"], &["lock-2"]),
    ] {
        let payload = format!(r#"{{"robot": 7, "area": "{correlation_id}"}}"#);
        let o = sagaflow(&[
            "start",
            "--redis-url",
            &starter,
            "--stream",
            LOCK_TRIGGER,
            "--payload",
            &payload,
            "--correlation-id",
            correlation_id,
        ])
        .await;
        assert!(o.status.success(), "{}", text(&o));
        log.wait_until(SAGA_WAIT, "the lock held, then waited for", |events| {
            contention(events, holding, waiting).is_some()
        })
        .await;
    }
    let ids = contention(log.events(), &["lock-1"], &["lock-2"]).expect("seen above");
    let (holder, waiter) = (&ids[0], &ids[1]);

    // Viewers and operators read the lock's queue (TYPE, LRANGE).
    for role in ["viewer", "operator"] {
        let url = users.url(role);
        let o = sagaflow(&["locks", "--redis-url", &url]).await;
        assert!(o.status.success(), "{role}: {}", text(&o));
        for id in [holder, waiter] {
            assert!(text(&o).contains(id.as_str()), "{role}: {}", text(&o));
        }
        let o = sagaflow(&["status", waiter, "--redis-url", &url]).await;
        assert!(
            text(&o).contains(&format!("robot:7 for step take: held by saga {holder}")),
            "{role}: {}",
            text(&o)
        );
    }
    // The daemon's API reads them too.
    let http = reqwest::Client::new();
    for path in ["/v1/locks", "/v1/locks/robot:7"] {
        let response = bounded(
            path,
            http.get(format!("http://{addr}{path}"))
                .bearer_auth(&api_token)
                .send(),
        )
        .await
        .expect("the API answers");
        assert_eq!(response.status(), 200, "{path}");
        let body = response.text().await.unwrap_or_default();
        assert!(body.contains(holder.as_str()), "{path}: {body}");
    }

    // The holder cancelled: its last transition lets go of the lock
    // (TYPE, LRANGE, LREM in its script), and the waiter takes it.
    let o = sagaflow(&[
        "cancel",
        holder,
        "--redis-url",
        &users.url("operator"),
        "--reason",
        "least privilege",
        "--wait",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "compensated:\n{}", text(&o));
    log.wait_until(SAGA_WAIT, "the waiter taking the lock", |events| {
        (events.iter()).any(|e| e.correlation_id == "lock-2" && e.event_type == "lock_acquired")
    })
    .await;

    let refused = acl_log(&users.admin_url());
    assert!(
        refused.is_empty(),
        "Redis refused commands of the pieces (add them to their role in src/cli/acl.rs):\n{}",
        refused.join("\n")
    );
}

/// Runs `command` as the connection's user and expects Redis to refuse it
/// for want of permission.
async fn refused(conn: &mut redis::aio::MultiplexedConnection, role: &str, command: &str) {
    let result = bounded(command, words(command).query_async::<redis::Value>(conn)).await;
    match result {
        Err(e) => assert_eq!(e.code(), Some("NOPERM"), "{role}: `{command}`: {e}"),
        Ok(v) => panic!("{role} may `{command}`: {v:?}"),
    }
}

/// Runs `command` as the connection's user and expects it to pass: the
/// refusals next to it are about permissions, not a broken connection.
async fn allowed(conn: &mut redis::aio::MultiplexedConnection, role: &str, command: &str) {
    let result = bounded(command, words(command).query_async::<redis::Value>(conn)).await;
    if let Err(e) = result {
        panic!("{role} may not `{command}`: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_what_it_must_not_do() {
    let server = RedisServer::start();
    let users = apply_users(&server, None).await;

    let role = "handler-resources";
    let mut handler = common::processes::connect(&users.url(role)).await;
    allowed(&mut handler, role, "XADD saga:replies:x * status start").await;
    allowed(&mut handler, role, "SET handler:{sagaflow-sim}:done:r1 {}").await;
    refused(&mut handler, role, "XADD mission:start * payload {}").await;
    refused(
        &mut handler,
        role,
        "XADD saga:control * saga_id x action cancel",
    )
    .await;
    refused(
        &mut handler,
        role,
        "XADD resources:commands * event_type allocate_resources",
    )
    .await;
    refused(
        &mut handler,
        role,
        "XADD routing:commands * event_type plan_route",
    )
    .await;
    refused(&mut handler, role, "HSET saga:{p0.52}:record:abc state {}").await;
    refused(&mut handler, role, "XRANGE saga:replies:x - +").await;
    refused(&mut handler, role, "SET handler:{other}:done:r1 {}").await;

    let role = "handlers";
    let mut combined = common::processes::connect(&users.url(role)).await;
    refused(&mut combined, role, "XADD mission:start * payload {}").await;
    refused(
        &mut combined,
        role,
        "XADD mapping:commands * event_type integrate_maps",
    )
    .await;
    refused(
        &mut combined,
        role,
        "XADD saga:control * saga_id x action cancel",
    )
    .await;

    let role = "starter";
    let mut starter = common::processes::connect(&users.url(role)).await;
    allowed(&mut starter, role, "XREVRANGE saga:events + - COUNT 1").await;
    refused(&mut starter, role, "XADD saga:replies:x * status completed").await;
    refused(
        &mut starter,
        role,
        "XADD saga:control * saga_id x action cancel",
    )
    .await;
    refused(
        &mut starter,
        role,
        "XADD saga:events * event_type saga_completed",
    )
    .await;
    refused(&mut starter, role, "HSET saga:{p0.52}:record:abc state {}").await;
    refused(&mut starter, role, "XRANGE mission:start - +").await;

    let role = "operator";
    let mut operator = common::processes::connect(&users.url(role)).await;
    allowed(
        &mut operator,
        role,
        "HMGET saga:{p0.52}:record:abc state owner",
    )
    .await;
    refused(&mut operator, role, "XADD mission:start * payload {}").await;
    refused(&mut operator, role, "HSET saga:{p0.52}:record:abc state {}").await;
    refused(
        &mut operator,
        role,
        "XADD saga:events * event_type saga_completed",
    )
    .await;
    refused(
        &mut operator,
        role,
        "XADD saga:replies:x * status completed",
    )
    .await;

    let role = "viewer";
    let mut viewer = common::processes::connect(&users.url(role)).await;
    allowed(&mut viewer, role, "XRANGE saga:events - +").await;
    allowed(&mut viewer, role, "ZRANGEBYSCORE saga:{leases} -inf +inf").await;
    for write in [
        "XADD saga:events * event_type saga_completed",
        "XADD saga:control * saga_id x action cancel",
        "XADD mission:start * payload {}",
        "XADD saga:replies:x * status completed",
        "HSET saga:{p0.52}:record:abc state {}",
        "DEL saga:{p0.52}:record:abc",
        "EXPIRE saga:{p0.52}:record:abc 1",
        "SET anything x",
        "XTRIM saga:events MAXLEN 0",
        "XGROUP CREATE saga:events g $ MKSTREAM",
        "ZADD saga:{leases} 0 someone",
    ] {
        refused(&mut viewer, role, write).await;
    }

    // The daemons read operators' requests; they write none unless their
    // HTTP API takes them (see `every_piece_runs_as_its_own_user`).
    let role = "daemon";
    let mut daemon = common::processes::connect(&users.url(role)).await;
    allowed(&mut daemon, role, "HSET saga:{p0.52}:record:abc state {}").await;
    refused(
        &mut daemon,
        role,
        "XADD saga:control * saga_id x action cancel",
    )
    .await;
    refused(&mut daemon, role, "SET anything x").await;
    refused(&mut daemon, role, "XADD saga:signals * saga_id x signal go").await;
    allowed(&mut daemon, role, "XLEN saga:signals").await;
}

/// A saga that only waits for signal `go`, started on its own trigger
/// stream.
const SIGNALLED: &str = "
name: signalled
trigger: signalled:start
steps:
  - name: approve
    kind: wait
    signal: go
    timeout: 60s
";

/// Signals as their users: a daemon keeps what the signaller sends with
/// `sagaflow signal`, and what its HTTP API takes; a bad entry is
/// rejected; a saga's signals are read through the API. Redis refuses
/// nothing; the signaller is refused all but adding to the signals stream
/// and reading the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_sent_and_kept_as_their_users() {
    let server = RedisServer::start();
    let sagas = tempfile::tempdir().expect("a temp dir");
    std::fs::write(sagas.path().join("signalled.yaml"), SIGNALLED).expect("the definition");
    let (api_token, entry) = common::api::write_token();
    let users = apply_users_for(&server, Some(&entry), sagas.path()).await;
    let _show = ShowRefusals(users.admin_url());
    let addr = common::api::free_addr();
    let dir = sagas.path().to_str().expect("a UTF-8 path");
    let daemon_url = users.url("daemon");
    let daemon = Child::spawn(
        "acl-signals",
        &[
            "run",
            "--redis-url",
            &daemon_url,
            "--node-id",
            "acl-signals",
            "--sagas",
            dir,
            "--lease-ttl",
            common::processes::LEASE_TTL,
            "--http-addr",
            &addr,
        ],
        &[
            ("SAGAFLOW_API_TOKENS", &entry),
            ("SAGAFLOW_OPERATOR_KEYS", OPERATOR_KEY),
        ],
    );
    daemon.wait_started().await;

    let starter = users.url("starter");
    let signaller = users.url("signaller");
    let o = sagaflow(&[
        "start",
        "--redis-url",
        &starter,
        "--stream",
        "signalled:start",
        "--correlation-id",
        "acl-signal-1",
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let first = field(&text(&o), "saga id");
    let o = sagaflow(&[
        "signal",
        &first,
        "go",
        "--payload",
        r#"{"ok": true}"#,
        "--by",
        "ana",
        "--redis-url",
        &signaller,
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "kept:\n{}", text(&o));
    // A signal for no saga, sent by hand: rejected.
    let o = sagaflow(&[
        "signal",
        "0123456789abcdef0123456789abcdef",
        "go",
        "--redis-url",
        &signaller,
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "refused:\n{}", text(&o));
    assert!(text(&o).contains("no such saga"), "{}", text(&o));
    let mut log = EventLog::new(&users.admin_url());
    log.wait_until(SAGA_WAIT, "the first saga completed", |events| {
        has(events, "acl-signal-1", "step_completed", "approve")
    })
    .await;

    // Through the HTTP API, as the daemon's user: a start, a signal, and
    // the saga read with its signals.
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/v1");
    let call = |request: reqwest::RequestBuilder| async {
        let within = Duration::from_secs(30);
        let response = tokio::time::timeout(within, request.bearer_auth(&api_token).send())
            .await
            .unwrap_or_else(|_| panic!("an API call took longer than {within:?}"))
            .expect("the API answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    };
    let (status, body) = call(http.post(format!("{base}/sagas/signalled")).body("{}")).await;
    assert_eq!(status, 202, "{body}");
    let started: Value = serde_json::from_str(&body).unwrap();
    let second = started["saga_id"].as_str().unwrap().to_owned();
    let (status, body) = call(
        http.post(format!("{base}/sagas/{second}/signals/go"))
            .header("Idempotency-Key", "acl-go-2")
            .body(r#"{"ok": "over HTTP"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"kept\""), "{body}");
    let (status, body) = call(http.get(format!("{base}/sagas/{second}"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("acl-go-2"), "{body}");

    // What the signaller may not do.
    let role = "signaller";
    let mut conn = common::processes::connect(&signaller).await;
    allowed(&mut conn, role, "XREVRANGE saga:events + - COUNT 1").await;
    for command in [
        "XADD mission:start * payload {}",
        "XADD signalled:start * payload {}",
        "XADD saga:control * saga_id x action cancel",
        "XADD saga:events * event_type signal_received",
        "XRANGE saga:signals - +",
        "XTRIM saga:signals MAXLEN 0",
        "HSET saga:{p0.52}:signals:abc go {}",
        "HGETALL saga:{p0.52}:signals:abc",
        "XADD saga:replies:x * status completed",
    ] {
        refused(&mut conn, role, command).await;
    }
    let refused_log = acl_log(&users.admin_url());
    // The refusals above were asked for; anything else is a missing rule.
    let unexpected: Vec<&String> = refused_log
        .iter()
        .filter(|l| !l.starts_with("sagaflow-signaller "))
        .collect();
    assert!(
        unexpected.is_empty(),
        "Redis refused commands of the pieces (add them to their role in src/cli/acl.rs):\n{}",
        refused_log.join("\n")
    );
}
