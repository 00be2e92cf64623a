//! `sagaflow dev`: one demo mission end to end. It starts a private
//! `redis-server` unless given a Redis, runs the daemon and the simulated
//! handlers in this process, starts one mission and prints its events.

use super::handlers::SimulationArgs;
use super::output::outln;
use super::{follow, logging};
use crate::config::{RedisUrl, Settings};
use crate::connection::{self, RedisMode};
use crate::handler::simulated::run_simulated_handlers;
use crate::local_redis::{ClusterOptions, LocalCluster, LocalRedis};
use crate::operator;
use crate::protocol::CorrelationId;
use crate::telemetry::LogFormat;
use crate::{definition, engine, streams};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sagaflow dev\n  sagaflow dev --fail-at perform_exploration\n  sagaflow dev --contend\n  sagaflow dev --cluster"
)]
pub struct DevArgs {
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long, env = "SAGAFLOW_REDIS_URL", conflicts_with = "cluster")]
    redis_url: Option<RedisUrl>,
    /// Start a private Redis Cluster of 3 masters (redis-server with
    /// `--cluster-enabled yes`, joined with redis-cli) and run on it.
    #[arg(long)]
    cluster: bool,
    /// Directory of saga definitions; the built-in mission if it does not exist.
    #[arg(long, env = "SAGAFLOW_SAGAS", default_value = "sagas")]
    sagas: PathBuf,
    /// Saga to start.
    #[arg(long, default_value = "mission_start")]
    saga: String,
    /// The mission's input: a JSON object, or @FILE to read it from a file.
    #[arg(
        long,
        default_value = r#"{"area": "hall-a", "robots": 3}"#,
        value_parser = super::start::parse_payload
    )]
    payload: String,
    /// Make this step fail, to watch the compensations run.
    #[arg(long, value_name = "STEP")]
    fail_at: Option<String>,
    /// Start two missions on the same area at once: they want the same
    /// robots, and the one that comes second waits for the robots'
    /// locks until the first has let go of them. The simulated handlers
    /// then work 200 ms per command at the least.
    #[arg(long)]
    contend: bool,
    /// Give up waiting for the saga after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    sim: SimulationArgs,
    #[command(flatten)]
    log: logging::LogArgs,
}

pub async fn run(args: DevArgs) -> ExitCode {
    let log = logging::LogArgs {
        log_format: Some(args.log.log_format.unwrap_or(LogFormat::Pretty)),
    };
    let telemetry = logging::init("warn", &log, "sagaflow", true);
    let code = match demo(args).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("sagaflow dev: {message}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

async fn demo(args: DevArgs) -> Result<ExitCode, String> {
    let catalog = if args.sagas.is_dir() {
        definition::load_dir(&args.sagas).map_err(|e| e.to_string())?
    } else {
        definition::catalog_from_str(
            Path::new("built-in mission_start.yaml"),
            super::REFERENCE_MISSION,
        )
        .map_err(|e| e.to_string())?
    };
    if catalog.get(&args.saga).is_none() {
        return Err(format!(
            "no saga `{}` in {}; loaded: {}",
            args.saga,
            args.sagas.display(),
            catalog.names().join(", ")
        ));
    }

    let mut _cluster = None;
    let (redis_url, _redis) = match args.redis_url.clone() {
        Some(url) => (url.expose().to_owned(), None),
        None if args.cluster => {
            let cluster =
                LocalCluster::start(&ClusterOptions::default()).map_err(|e| e.to_string())?;
            let seeds = cluster.seeds();
            outln!(
                "started a private Redis Cluster of {} masters: {}",
                seeds.len(),
                seeds.join(", ")
            );
            _cluster = Some(cluster);
            (seeds[0].clone(), None)
        }
        None => {
            let child = LocalRedis::start(&[])?;
            outln!("started a private redis-server on {}", child.url);
            (child.url.clone(), Some(child))
        }
    };
    let settings = Settings {
        redis_url: redis_url.clone(),
        sagas_dir: args.sagas.clone(),
        ..Settings::default()
    };
    let client = crate::config::client(&redis_url).map_err(|e| e.to_string())?;

    let shutdown = CancellationToken::new();
    super::signals::on_stop_signal(shutdown.clone());
    let events_stream = settings.events_stream.clone();
    let reply_stream_prefix = settings.reply_stream_prefix.clone();
    let trigger_stream = settings.trigger_stream.clone();
    let redis_mode = settings.redis_mode;
    let daemon = engine::Daemon::start(settings, catalog, shutdown.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut sim = args.sim.options();
    sim.reply_stream_prefix = reply_stream_prefix;
    sim.redis_mode = redis_mode;
    if args.fail_at.is_some() {
        sim.fail_step = args.fail_at.clone();
    }
    if args.contend {
        // Work that takes a moment, so that the second mission surely wants
        // the robots while the first still explores with them.
        sim.work_ms = sim.work_ms.max(CONTEND_WORK_MS);
    }
    let handlers = tokio::spawn(run_simulated_handlers(
        client.clone(),
        sim,
        shutdown.clone(),
    ));

    let outcome = match args.contend {
        true => {
            follow_contending(
                &client,
                redis_mode,
                &trigger_stream,
                &events_stream,
                &args,
                &shutdown,
            )
            .await
        }
        false => {
            follow_one_mission(
                &client,
                redis_mode,
                &trigger_stream,
                &events_stream,
                &args,
                &shutdown,
            )
            .await
        }
    };
    shutdown.cancel();
    daemon.wait().await;
    let _ = handlers.await;
    outcome
}

/// The client for `mode`, and a connection for commands.
async fn connect(
    client: &redis::Client,
    mode: RedisMode,
) -> Result<(connection::Client, connection::Conn), String> {
    let unreachable = |e: redis::RedisError| format!("cannot reach Redis: {e}");
    let client = connection::Client::resolve(client.clone(), mode)
        .await
        .map_err(unreachable)?;
    let conn = client
        .commands(Duration::from_secs(5))
        .await
        .map_err(unreachable)?;
    Ok((client, conn))
}

/// Starts the mission and prints its events until its terminal one.
async fn follow_one_mission(
    client: &redis::Client,
    mode: RedisMode,
    trigger_stream: &str,
    events_stream: &str,
    args: &DevArgs,
    shutdown: &CancellationToken,
) -> Result<ExitCode, String> {
    let (client, mut conn) = connect(client, mode).await?;
    // Read events from the last one before our start, so none is missed.
    let from = streams::last_id(&mut conn, events_stream)
        .await
        .map_err(|e| e.to_string())?;
    let correlation_id = CorrelationId::generate();
    let started = operator::start(
        &mut conn,
        trigger_stream,
        &operator::Start {
            saga: Some(args.saga.clone()),
            payload: args.payload.clone(),
            correlation_id: Some(correlation_id.to_string()),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("cannot start the mission: {e}"))?;
    outln!(
        "started saga `{}` with correlation id {correlation_id}\n",
        args.saga
    );
    let target = follow::Target {
        saga_id: started.saga_id.to_string(),
        entry_id: started.entry_id,
        skipped_by_hand: Vec::new(),
    };
    let outcome = follow::follow(
        &client,
        events_stream,
        from,
        target,
        Some(args.timeout),
        shutdown,
        follow::Show::People,
    )
    .await?;
    match &outcome {
        follow::Outcome::Completed(_) => outln!("\nthe mission completed"),
        other => outln!("\nthe mission did not complete: {}", other.summary()),
    }
    Ok(match outcome {
        follow::Outcome::Completed(_) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// Simulated work per command at the least with `--contend`, in ms.
const CONTEND_WORK_MS: u64 = 200;

/// Starts two missions on the same input at once and prints both missions'
/// events, each line marked with its mission, until both ended; then which
/// waited for which robots. 0 when both completed.
async fn follow_contending(
    client: &redis::Client,
    mode: RedisMode,
    trigger_stream: &str,
    events_stream: &str,
    args: &DevArgs,
    shutdown: &CancellationToken,
) -> Result<ExitCode, String> {
    let (client, mut conn) = connect(client, mode).await?;
    let mut from = streams::last_id(&mut conn, events_stream)
        .await
        .map_err(|e| e.to_string())?;
    let mut missions: Vec<(String, String)> = Vec::new();
    for label in ["A", "B"] {
        let started = operator::start(
            &mut conn,
            trigger_stream,
            &operator::Start {
                saga: Some(args.saga.clone()),
                payload: args.payload.clone(),
                correlation_id: Some(CorrelationId::generate().to_string()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot start mission {label}: {e}"))?;
        outln!("mission {label}: saga {}", started.saga_id);
        missions.push((label.to_owned(), started.saga_id.to_string()));
    }
    outln!("both on {}: they want the same robots\n", args.payload);
    let mut reader =
        (client.blocking(follow::POLL).await).map_err(|e| format!("cannot reach Redis: {e}"))?;
    let began = std::time::Instant::now();
    let mut ended: Vec<(String, String)> = Vec::new();
    let mut waits: Vec<String> = Vec::new();
    while ended.len() < missions.len() {
        if shutdown.is_cancelled() {
            return Err("stopped before the missions ended".into());
        }
        if began.elapsed() >= args.timeout {
            return Err(format!(
                "the missions did not end within {}",
                humantime::format_duration(args.timeout)
            ));
        }
        let entries = streams::read_after(&mut reader, events_stream, &from, None, follow::POLL)
            .await
            .map_err(|e| format!("reading {events_stream} failed: {e}"))?;
        for entry in entries {
            from = entry.id.clone();
            let text = |name: &str| {
                let bytes = entry.fields.get(name).map(Vec::as_slice).unwrap_or(b"");
                String::from_utf8_lossy(bytes).into_owned()
            };
            let saga_id = text(crate::protocol::fields::SAGA_ID);
            let Some((label, _)) = missions.iter().find(|(_, id)| *id == saga_id) else {
                continue;
            };
            let elapsed = began.elapsed().as_millis() as u64;
            outln!(
                "{label}  {}",
                super::render::event_line(&entry.fields, elapsed)
            );
            let event = text(crate::protocol::fields::EVENT_TYPE);
            if event == "lock_waiting" {
                let payload: serde_json::Value =
                    serde_json::from_str(&text(crate::protocol::fields::PAYLOAD))
                        .unwrap_or_default();
                let holder = payload["holder"].as_str().unwrap_or("");
                let by = missions.iter().find(|(_, id)| id == holder);
                waits.push(format!(
                    "mission {label} waited for {} (held by mission {})",
                    payload["lock"].as_str().unwrap_or("?"),
                    by.map_or("?", |(l, _)| l.as_str())
                ));
            }
            if matches!(
                event.as_str(),
                "saga_completed" | "saga_compensated" | "saga_failed"
            ) {
                ended.push((label.clone(), event));
            }
        }
    }
    outln!("");
    for wait in &waits {
        outln!("{wait}");
    }
    if waits.is_empty() {
        outln!(
            "neither mission waited: the first let go of the robots before the second wanted them"
        );
    }
    let completed = ended.iter().all(|(_, e)| e == "saga_completed");
    for (label, event) in &ended {
        outln!("mission {label}: {}", event.trim_start_matches("saga_"));
    }
    Ok(match completed {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}
