//! `sagaflow run`: the daemon.

use super::{logging, signals};
use crate::config::Settings;
use crate::{definition, engine};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// Sagas driven at once by this daemon; further starts wait.
    #[arg(long, env = "SAGAFLOW_MAX_IN_FLIGHT", default_value_t = Settings::default().max_in_flight)]
    max_in_flight: usize,
    /// How long this daemon's lease on its sagas lasts; another daemon takes
    /// them over about this long after this one dies.
    #[arg(long, env = "SAGAFLOW_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: std::time::Duration,
    /// How long a stop may take to bring sagas to a persisted point.
    #[arg(long, env = "SAGAFLOW_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: std::time::Duration,
}

pub async fn run(args: RunArgs) -> ExitCode {
    logging::init("info");
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
    let mut settings = Settings {
        redis_url: args.redis.redis_url,
        sagas_dir: args.sagas,
        max_in_flight: args.max_in_flight.max(1),
        lease_ttl: args.lease_ttl.max(std::time::Duration::from_millis(300)),
        shutdown_grace: args.shutdown_grace,
        ..Settings::default()
    };
    if let Some(node_id) = args.node_id {
        settings.node_id = node_id;
    }
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    match engine::run(settings, catalog, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(engine::EngineError::StoppedBeforeReady { .. }) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sagaflow: {e}");
            ExitCode::FAILURE
        }
    }
}
