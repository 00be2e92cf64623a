//! The command line: one module per subcommand. `main` only calls [`main`].

mod acl;
mod api_token;
mod bench;
mod completions;
mod config;
mod dev;
mod doctor;
mod follow;
mod handlers;
mod health;
mod list;
mod locks;
mod logging;
mod operate;
mod output;
mod pick;
mod render;
mod run;
mod send_signal;
mod signals;
mod start;
mod status;
mod validate;
mod watch;

use crate::connection::{self, Conn};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "sagaflow",
    version,
    about = "A saga orchestrator daemon over Redis Streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: load the sagas, take starts, drive sagas.
    Run(run::RunArgs),
    /// Print the daemon's effective settings and where each comes from.
    Config(run::RunArgs),
    /// Run the simulated mission handlers (resources, routing, exploration, mapping).
    Handlers(handlers::HandlersArgs),
    /// Run one demo mission end to end, with a private Redis if none is given.
    Dev(dev::DevArgs),
    /// Measure throughput, latency and cost on this machine (reference mission).
    Bench(bench::BenchArgs),
    /// Check saga definitions without starting anything.
    Validate(validate::ValidateArgs),
    /// Start a saga; with --wait, follow it live to its end.
    Start(start::StartArgs),
    /// Show one saga: its state, each step's attempts, results and errors.
    Status(status::StatusArgs),
    /// List sagas, filtered by state, definition and age.
    List(list::ListArgs),
    /// Show who holds each semantic lock and who waits for it.
    Locks(locks::LocksArgs),
    /// Follow saga:events live, in readable lines.
    Watch(watch::WatchArgs),
    /// Stop a running saga: it compensates what it did.
    Cancel(operate::CancelArgs),
    /// Run a stuck saga's failed compensation again, and carry on.
    Retry(operate::RetryArgs),
    /// Mark a stuck saga's failed compensation as done by hand, and carry on.
    Skip(operate::SkipArgs),
    /// Give a stuck saga up.
    Abandon(operate::AbandonArgs),
    /// Pause a saga (what is under way finishes, nothing new is sent), or with --name every new start of a saga name.
    Pause(operate::PauseArgs),
    /// Carry a paused saga on, or with --name take a paused name's starts again.
    Resume(operate::ResumeArgs),
    /// Send a signal to a saga, for its `wait` step (approval, a robot docked, ...).
    Signal(send_signal::SignalArgs),
    /// Ask a daemon whether it is alive (or ready): for container health checks.
    Health(health::HealthArgs),
    /// Print the Redis ACL users of a least-privilege deployment, one per role.
    Acl(acl::AclArgs),
    /// Make a bearer token for the HTTP API, and the entry the daemons keep.
    ApiToken(api_token::ApiTokenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Check a deployment: daemons, stream readers, dead letters, stuck sagas.
    Doctor(doctor::DoctorArgs),
}

/// The reference mission, used when no sagas directory is at hand and by
/// the benchmark.
pub(crate) const REFERENCE_MISSION: &str = include_str!("../../sagas/mission_start.yaml");

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sub = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sagaflow: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args, &sub).await,
            Command::Config(args) => config::run(&args, &sub),
            Command::Handlers(args) => handlers::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Validate(args) => validate::run(args),
            Command::Bench(args) => bench::run(args).await,
            Command::Start(args) => start::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::List(args) => list::run(args).await,
            Command::Locks(args) => locks::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Cancel(args) => operate::cancel(args).await,
            Command::Retry(args) => operate::retry(args).await,
            Command::Skip(args) => operate::skip(args).await,
            Command::Abandon(args) => operate::abandon(args).await,
            Command::Pause(args) => operate::pause(args).await,
            Command::Resume(args) => operate::resume(args).await,
            Command::Signal(args) => send_signal::run(args).await,
            Command::Health(args) => health::run(args).await,
            Command::Acl(args) => acl::run(args),
            Command::ApiToken(args) => api_token::run(args),
            Command::Completions(args) => completions::run(args),
            Command::Doctor(args) => doctor::run(args).await,
        }
    })
}

/// The command line. No help shows the value of an environment variable:
/// clap would print `[env: SAGAFLOW_REDIS_URL=redis://:password@...]`.
fn command() -> clap::Command {
    fn hide_env_values(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| arg.hide_env_values(true))
            .mut_subcommands(hide_env_values)
    }
    hide_env_values(Cli::command())
}

/// How long one command of an operator's may take to be answered: a
/// pipeline of a scan reads up to 500 records.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The deployment `settings` name (one Redis or a cluster, as the
/// `redis_mode` setting says) and a connection for one operator command's
/// short commands, or a message saying why Redis cannot be used. Blocking
/// reads get their own connection from the client
/// ([`connection::Client::blocking`]).
pub(crate) async fn connect(
    settings: &crate::config::Settings,
) -> Result<(connection::Client, Conn), String> {
    let url = &settings.redis_url;
    let shown = crate::config::redacted(url);
    let client = crate::config::client(url).map_err(|e| e.to_string())?;
    let unreachable = |e: redis::RedisError| format!("cannot reach Redis at {shown}: {e}");
    let client = connection::Client::resolve(client, settings.redis_mode)
        .await
        .map_err(unreachable)?;
    let conn = client
        .commands(COMMAND_TIMEOUT)
        .await
        .map_err(unreachable)?;
    Ok((client, conn))
}
