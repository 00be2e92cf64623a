//! `sagaflow run`: the daemon.

use super::{logging, signals};
use crate::config::Settings;
use crate::http::{self, HttpAddr};
use crate::{definition, engine, telemetry};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Flags shared by every subcommand that talks to Redis.
#[derive(Debug, Args, Clone)]
pub struct RedisArgs {
    /// Redis to use.
    #[arg(
        long,
        env = "SAGAFLOW_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  sagaflow run --redis-url redis://127.0.0.1:6379 --sagas ./sagas"
)]
pub struct RunArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Directory of saga definitions (*.yaml, *.yml).
    #[arg(long, env = "SAGAFLOW_SAGAS", default_value = "sagas")]
    sagas: PathBuf,
    /// Name of this daemon instance (its consumer name and reply stream); random by default.
    #[arg(long, env = "SAGAFLOW_NODE_ID")]
    node_id: Option<String>,
    /// Sagas driven at once by this daemon; further starts wait [default: 10000].
    #[arg(long, env = "SAGAFLOW_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
    /// How long this daemon's lease on its sagas lasts; another daemon takes
    /// them over about this long after this one dies [default: 10s].
    #[arg(long, env = "SAGAFLOW_LEASE_TTL", value_parser = humantime::parse_duration)]
    lease_ttl: Option<Duration>,
    /// How long a stop may take to bring sagas to a persisted point [default: 10s].
    #[arg(long, env = "SAGAFLOW_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    shutdown_grace: Option<Duration>,
    /// How long a saga's record is kept after it ends [default: 7d].
    #[arg(long, env = "SAGAFLOW_RETENTION", value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// How long a start's idempotency key is remembered [default: 24h].
    #[arg(long, env = "SAGAFLOW_IDEMPOTENCY_RETENTION", value_parser = humantime::parse_duration)]
    idempotency_retention: Option<Duration>,
    /// How long a reply stream outlives the last daemon reading it [default: 15m].
    #[arg(long, env = "SAGAFLOW_REPLY_RETENTION", value_parser = humantime::parse_duration)]
    reply_retention: Option<Duration>,
    /// How long entries of the command, event and trigger streams are kept
    /// [default: 24h].
    #[arg(long, env = "SAGAFLOW_STREAM_RETENTION", value_parser = humantime::parse_duration)]
    stream_retention: Option<Duration>,
    /// Approximate cap on `saga:events` [default: 100000].
    #[arg(long, env = "SAGAFLOW_EVENTS_MAXLEN")]
    events_maxlen: Option<usize>,
    /// Approximate cap on each command stream [default: 100000].
    #[arg(long, env = "SAGAFLOW_COMMANDS_MAXLEN")]
    commands_maxlen: Option<usize>,
    /// Deliveries after which a start is moved to the dead-letter stream [default: 5].
    #[arg(long, env = "SAGAFLOW_MAX_DELIVERIES")]
    max_deliveries: Option<u64>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `none` for nowhere.
    #[arg(long, env = "SAGAFLOW_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    http_addr: HttpAddr,
    #[command(flatten)]
    log: logging::LogArgs,
}

pub async fn run(args: RunArgs) -> ExitCode {
    let telemetry = logging::init("info", &args.log, "sagaflow", false);
    // Definitions are checked before anything touches Redis.
    let catalog = match definition::load_dir(&args.sagas) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "sagaflow: {} problem(s) in the saga definitions; nothing was started",
                errors.0.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let defaults = Settings::default();
    let settings = Settings {
        redis_url: args.redis.redis_url,
        sagas_dir: args.sagas,
        node_id: args.node_id.unwrap_or(defaults.node_id.clone()),
        max_in_flight: args.max_in_flight.unwrap_or(defaults.max_in_flight).max(1),
        lease_ttl: args
            .lease_ttl
            .unwrap_or(defaults.lease_ttl)
            .max(Duration::from_millis(300)),
        shutdown_grace: args.shutdown_grace.unwrap_or(defaults.shutdown_grace),
        retention: args.retention.unwrap_or(defaults.retention),
        idempotency_retention: args
            .idempotency_retention
            .unwrap_or(defaults.idempotency_retention),
        reply_retention: args.reply_retention.unwrap_or(defaults.reply_retention),
        events_maxlen: args.events_maxlen.unwrap_or(defaults.events_maxlen),
        commands_maxlen: args.commands_maxlen.unwrap_or(defaults.commands_maxlen),
        stream_retention: args.stream_retention.unwrap_or(defaults.stream_retention),
        max_deliveries: args
            .max_deliveries
            .unwrap_or(defaults.max_deliveries)
            .max(1),
        ..defaults
    };
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    // The endpoints come up first: until Redis is reached, `/readyz` says
    // so.
    let daemon: Arc<OnceLock<engine::Daemon>> = Arc::default();
    let http = match args.http_addr.0 {
        Some(addr) => match http::bind(addr).await {
            Ok(listener) => {
                let metrics = telemetry::metrics::install();
                telemetry::metrics::register_sagas(&catalog);
                let (daemon, stopping) = (daemon.clone(), shutdown.clone());
                let readiness: http::Readiness = Arc::new(move || match daemon.get() {
                    Some(d) => d
                        .readiness()
                        .not_ready
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                    None if stopping.is_cancelled() => vec!["stopping".into()],
                    None => vec!["connecting to Redis".into()],
                });
                tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
                Some(tokio::spawn(http::serve(
                    listener,
                    metrics,
                    readiness,
                    shutdown.clone(),
                )))
            }
            Err(e) => {
                eprintln!("sagaflow: {e} (set --http-addr none to serve nothing)");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let code = match engine::Daemon::start(settings, catalog, shutdown.clone()).await {
        Ok(started) => {
            let _ = daemon.set(started.clone());
            started.wait().await;
            ExitCode::SUCCESS
        }
        Err(engine::EngineError::StoppedBeforeReady { .. }) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sagaflow: {e}");
            ExitCode::FAILURE
        }
    };
    shutdown.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
    telemetry.shutdown().await;
    code
}
