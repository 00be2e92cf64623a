//! `sagaflow handlers`: the simulated mission services.

use super::run::RedisArgs;
use super::{logging, signals};
use crate::connection::RedisMode;
use crate::handler::simulated::{simulated_handlers, SimulationOptions};
use clap::Args;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args, Clone, Default)]
pub struct SimulationArgs {
    /// Reply `failed` (not retryable) to this step's action.
    #[arg(long, value_name = "STEP")]
    pub fail_step: Option<String>,
    /// Fail each action at random with this probability (retryable), 0 to 1.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,
    /// Never reply to this step's action (the daemon sees timeouts).
    #[arg(long, value_name = "STEP")]
    pub hang_step: Option<String>,
    /// Simulated work per command, in ms, with progress replies along the way.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub work_ms: u64,
    /// Reply `failed` (not retryable) to this step's compensation.
    #[arg(long, value_name = "STEP")]
    pub fail_compensation: Option<String>,
    /// Commands handled at once [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// How long final replies are remembered, to be replayed to a command
    /// sent again [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub record_ttl: Option<std::time::Duration>,
}

impl SimulationArgs {
    pub fn options(&self) -> SimulationOptions {
        SimulationOptions {
            fail_step: self.fail_step.clone(),
            fail_rate: self.fail_rate,
            hang_step: self.hang_step.clone(),
            work_ms: self.work_ms,
            fail_compensation: self.fail_compensation.clone(),
            max_in_flight: self
                .max_in_flight
                .unwrap_or(SimulationOptions::default().max_in_flight),
            record_ttl: self
                .record_ttl
                .unwrap_or(SimulationOptions::default().record_ttl),
            ..SimulationOptions::default()
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not between 0 and 1"))
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  sagaflow handlers --redis-url redis://127.0.0.1:6379 --work-ms 200 --fail-step integrate_maps"
)]
pub struct HandlersArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// How Redis is deployed: auto (ask the server), single or cluster; a
    /// cluster is reached through the node of --redis-url [default: the
    /// `redis_mode` setting, auto].
    #[arg(long, value_name = "MODE", value_parser = RedisMode::parse)]
    redis_mode: Option<RedisMode>,
    #[command(flatten)]
    sim: SimulationArgs,
    #[command(flatten)]
    log: logging::LogArgs,
}

pub async fn run(args: HandlersArgs) -> ExitCode {
    let telemetry = logging::init("info", &args.log, "sagaflow-handlers", true);
    let (redis_url, reply_stream_prefix, redis_mode) = match args.redis.settings() {
        Ok(settings) => (
            settings.redis_url,
            settings.reply_stream_prefix,
            args.redis_mode.unwrap_or(settings.redis_mode),
        ),
        Err(e) => {
            eprintln!("sagaflow: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = match crate::config::client(&redis_url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sagaflow: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    // Replies go only to the reply streams of daemons sharing these settings.
    let options = SimulationOptions {
        reply_stream_prefix,
        redis_mode,
        ..args.sim.options()
    };
    let handlers = simulated_handlers(client, options);
    let streams = handlers.streams().join(", ");
    let handlers = handlers.on_ready(move || {
        tracing::info!(
            streams = %streams,
            "sagaflow handlers ready: consumer groups created, reading the command streams"
        );
    });
    let code = match handlers.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sagaflow: {e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
