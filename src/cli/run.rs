//! `sagaflow run`: the daemon.

use super::{logging, signals};
use crate::config::layers::{self, Resolved};
use crate::config::{RedisUrl, Settings};
use crate::http::{self, HttpAddr};
use crate::{definition, engine, telemetry};
use clap::parser::ValueSource;
use clap::ArgMatches;
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Flags shared by every subcommand that talks to Redis.
#[derive(Debug, Args, Clone)]
pub struct RedisArgs {
    /// The configuration file (config/sagaflow.yaml lists every setting):
    /// under the environment and the flags.
    #[arg(long, env = "SAGAFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis to use: redis://[user:password@]host:port, rediss:// for TLS,
    /// unix:///path/redis.sock?pass=password for a socket
    /// [default: redis://127.0.0.1:6379].
    #[arg(long, env = "SAGAFLOW_REDIS_URL")]
    pub redis_url: Option<RedisUrl>,
}

impl RedisArgs {
    /// The settings of this deployment: the file, the environment, and
    /// `--redis-url`.
    pub fn settings(&self) -> Result<Settings, String> {
        let mut flags = BTreeMap::new();
        if let Some(url) = &self.redis_url {
            flags.insert("redis_url".to_owned(), url.expose().to_owned());
        }
        let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
        layers::resolve(self.config.as_deref(), &env, &flags)
            .map(|r| r.settings)
            .map_err(|e| format!("bad configuration: {e}"))
    }
}

/// The daemon's flags. Their values are read, with the other layers, from
/// the parsed command line by [`settings_from`]: the fields are there for
/// `--help` and for clap's checks.
#[derive(Debug, Args)]
#[command(
    after_help = "Every flag has a key in the configuration file and a SAGAFLOW_<KEY> environment\nvariable (--lease-ttl: lease_ttl, SAGAFLOW_LEASE_TTL); flags win over the environment,\nwhich wins over the file. `sagaflow config` shows the result; config/sagaflow.yaml\nlists every setting.\n\nExamples:\n  sagaflow run --redis-url redis://127.0.0.1:6379 --sagas ./sagas\n  sagaflow run --config config/sagaflow.yaml --lease-ttl 5s"
)]
#[allow(dead_code)]
pub struct RunArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Directory of saga definitions (*.yaml, *.yml).
    #[arg(long)]
    sagas: Option<PathBuf>,
    /// Name of this daemon instance (its consumer name and reply stream); random by default.
    #[arg(long)]
    node_id: Option<String>,
    /// One Redis (`single`), a Redis Cluster (`cluster`), or asked of the
    /// server at start-up with CLUSTER INFO [default: auto].
    #[arg(long, value_parser = ["auto", "single", "cluster"])]
    redis_mode: Option<String>,
    /// Replicas that must hold a transition before anything acts on it
    /// (and, on a cluster, hold each relayed write before its outbox entry
    /// goes): what makes a failover lose no saga [default: 0].
    #[arg(long)]
    wait_replicas: Option<usize>,
    /// Sagas driven at once by this daemon; further starts wait [default: 10000].
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// How long this daemon's lease on its sagas lasts; another daemon takes
    /// them over about this long after this one dies [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_ttl: Option<Duration>,
    /// How long a stop may take to bring sagas to a persisted point [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    shutdown_grace: Option<Duration>,
    /// How long a saga's record is kept after it ends [default: 7d].
    #[arg(long, value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// How long a start's idempotency key is remembered [default: 24h].
    #[arg(long, value_parser = humantime::parse_duration)]
    idempotency_retention: Option<Duration>,
    /// How long a reply stream outlives the last daemon reading it [default: 15m].
    #[arg(long, value_parser = humantime::parse_duration)]
    reply_retention: Option<Duration>,
    /// How long entries of the command, event and trigger streams are kept
    /// [default: 24h].
    #[arg(long, value_parser = humantime::parse_duration)]
    stream_retention: Option<Duration>,
    /// Approximate cap on `saga:events` [default: 100000].
    #[arg(long)]
    events_maxlen: Option<usize>,
    /// Approximate cap on each command stream [default: 100000].
    #[arg(long)]
    commands_maxlen: Option<usize>,
    /// Deliveries after which a start is moved to the dead-letter stream [default: 5].
    #[arg(long)]
    max_deliveries: Option<u64>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `none` for nowhere;
    /// port 0 for a free port, which the log names [default: 127.0.0.1:9464].
    #[arg(long)]
    http_addr: Option<HttpAddr>,
    /// Log lines as `json`, `pretty`, or `auto` (pretty on a terminal).
    #[arg(long)]
    log_format: Option<String>,
}

pub async fn run(args: RunArgs, matches: &ArgMatches) -> ExitCode {
    let settings = match settings_from(&args, matches) {
        Ok(resolved) => resolved.settings,
        Err(e) => {
            eprintln!("sagaflow: bad configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log = logging::LogArgs {
        log_format: match settings.log_format.as_str() {
            "json" => Some(telemetry::LogFormat::Json),
            "pretty" => Some(telemetry::LogFormat::Pretty),
            _ => None,
        },
    };
    let telemetry = logging::init("info", &log, "sagaflow", false);
    // Definitions are checked before anything touches Redis.
    let catalog = match definition::load_dir(&settings.sagas_dir) {
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
    let http_addr = http::parse_addr(&settings.http_addr).expect("checked with the settings");
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    // The endpoints come up first: until Redis is reached, `/readyz` says
    // so.
    let daemon: Arc<OnceLock<engine::Daemon>> = Arc::default();
    let http = match http_addr {
        Some(addr) => match http::bind(addr).await {
            Ok((listener, addr)) => {
                let metrics = telemetry::metrics::install();
                telemetry::metrics::register(&catalog, &settings);
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
                tracing::info!(%addr, "serving the dashboard, the API (/v1), /metrics, /healthz and /readyz");
                let api = http::api::Api::new(
                    settings.clone(),
                    catalog.names().into_iter().map(str::to_owned).collect(),
                    shutdown.clone(),
                );
                Some(tokio::spawn(http::serve(
                    listener,
                    metrics,
                    readiness,
                    Some(api),
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

/// The daemon's settings from their layers: defaults, the file, the
/// environment, and the flags given on this command line.
pub fn settings_from(args: &RunArgs, matches: &ArgMatches) -> Result<Resolved, String> {
    // Settings without a flag are in the file and the environment only.
    let given: Vec<&str> = matches.ids().map(|id| id.as_str()).collect();
    let flags: BTreeMap<String, String> = layers::keys()
        .filter(|key| given.contains(key))
        .filter(|key| matches.value_source(key) == Some(ValueSource::CommandLine))
        .filter_map(|key| {
            let raw = matches.try_get_raw(key).ok()??.next()?;
            Some((key.to_owned(), raw.to_string_lossy().into_owned()))
        })
        .collect();
    let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    let resolved = layers::resolve(args.redis.config.as_deref(), &env, &flags)?;
    let s = &resolved.settings;
    crate::http::access::check_writers(&s.api_tokens, &s.operator_keys)?;
    Ok(resolved)
}
