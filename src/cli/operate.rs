//! `sagaflow cancel | retry | skip | abandon | pause | resume`: an
//! operator's request about one saga, written to the control stream; the
//! daemon's answer is the saga's `operator_action` event. `pause --name`
//! and `resume --name` are about a saga name: its new starts.

use super::follow::{self, Show, Target};
use super::output::{self, outln, Failure};
use super::pick::{self, SagaArgs};
use super::run::RedisArgs;
use super::{connect, signals};
use crate::operator;
use crate::operator::SagaRef;
use crate::protocol::control::{check_saga_name, MAX_REASON_LEN};
use crate::protocol::fields as f;
use crate::protocol::CorrelationId;
use crate::streams;
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a daemon has to answer a request.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The end of every operator command's help: naming the saga, and the
/// exit codes.
macro_rules! help_end {
    () => {
        "

The saga may be named by a start of its id that no other saga's id has, or
by --correlation-id (several sagas with it are listed, and refused).

Exit codes: 0 accepted by the daemon driving the saga; 1 refused (by the
daemon, or the saga is in no state for it), no such saga, the start of an id
that several sagas have, several sagas with that correlation id (listed), or
a bad configuration file; 2 a usage error (no operator key included); 3 Redis
cannot be reached or read, or no daemon answered within 10s. With --wait,
once accepted: the saga's outcome, 0 completed, 1 compensated (cancelled
included), 2 failed; 3 it could not be followed."
    };
}

#[derive(Debug, Args)]
pub struct Common {
    #[command(flatten)]
    which: SagaArgs,
    #[command(flatten)]
    request: RequestArgs,
}

/// What every operator's request takes besides what it is about.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Why: recorded on saga:events with the request (at most 1024 bytes).
    #[arg(long, default_value = "", value_parser = parse_reason)]
    reason: String,
    /// Follow the saga to its end and exit with its outcome (0 completed,
    /// 1 compensated, 2 failed).
    #[arg(long)]
    wait: bool,
    /// Print JSON lines: the daemon's answer (its `operator_action` event),
    /// then with --wait each event and the outcome.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    redis: RedisArgs,
}

fn parse_reason(text: &str) -> Result<String, String> {
    if text.len() > MAX_REASON_LEN {
        return Err(format!(
            "{} bytes, the limit is {MAX_REASON_LEN}",
            text.len()
        ));
    }
    Ok(text.to_owned())
}

#[derive(Debug, Args)]
#[command(after_help = concat!("Example:
  sagaflow cancel 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --reason 'customer withdrew' --wait

The saga stops and compensates the steps it did, the step under way included.", help_end!()))]
pub struct CancelArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
#[command(after_help = concat!("Example:
  sagaflow retry 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --reason 'map service fixed' --wait

For a saga stuck on a compensation that failed (`sagaflow list --state stuck`):
that compensation runs again, then the rest.", help_end!()))]
pub struct RetryArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
#[command(after_help = concat!("Example:
  sagaflow skip 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --step perform_exploration --reason 'robots recalled by hand'

For a saga stuck on a compensation that failed: that compensation is marked as
done by hand, and the rest run. `sagaflow status` names that step (stuck on).", help_end!()))]
pub struct SkipArgs {
    /// The step whose compensation failed.
    #[arg(long)]
    step: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
#[command(after_help = concat!("Example:
  sagaflow abandon 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --reason 'cleaned up by the ops team'

For a saga stuck on a compensation that failed: it stays failed, and is no
longer listed as stuck. With --wait it returns once the daemon accepted it:
an abandoned saga stays failed (exit 2).", help_end!()))]
pub struct AbandonArgs {
    #[command(flatten)]
    common: Common,
}

/// What `pause` and `resume` are about: one saga, or a saga name.
#[derive(Debug, Args)]
pub struct PauseTarget {
    /// The saga's id, or a start of it that no other saga's id has (as
    /// `watch` and `start --wait` show it).
    #[arg(
        value_name = "SAGA_ID",
        required_unless_present_any = ["correlation_id", "name"],
        value_parser = SagaRef::id
    )]
    saga_id: Option<SagaRef>,
    /// Name the saga by its correlation id instead (exactly: spaces included).
    #[arg(long, conflicts_with = "saga_id", value_parser = pick::parse_correlation_id)]
    correlation_id: Option<CorrelationId>,
    /// Every new start of this saga name instead of one saga (the name of
    /// its definition, as `sagaflow list` shows it).
    #[arg(
        long = "name",
        value_name = "SAGA_NAME",
        conflicts_with_all = ["saga_id", "correlation_id"],
        value_parser = parse_saga_name
    )]
    name: Option<String>,
}

fn parse_saga_name(text: &str) -> Result<String, String> {
    check_saga_name(text).map(|()| text.to_owned())
}

#[derive(Debug, Args)]
#[command(after_help = concat!("Examples:
  sagaflow pause 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --reason 'robot-2 under inspection'
  sagaflow pause --name mission_start --reason 'map service maintenance'

For a running or compensating saga: the commands under way finish, nothing new
is sent (no next step, branch, retry or compensation) and no timeout runs
until `sagaflow resume`. A paused saga that is cancelled stays paused: its
compensations start when it is resumed. With --wait it returns once the
daemon accepted the request.

With --name, every new start of that saga name waits, held in Redis, until
`sagaflow resume --name`: none becomes a saga, none is lost or dead-lettered
however long it waits. Sagas of the name already running go on; pause those
one by one. `sagaflow list` shows the names paused.", help_end!()))]
pub struct PauseArgs {
    #[command(flatten)]
    target: PauseTarget,
    #[command(flatten)]
    request: RequestArgs,
}

#[derive(Debug, Args)]
#[command(after_help = concat!("Examples:
  sagaflow resume 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --reason 'inspection done' --wait
  sagaflow resume --name mission_start --reason 'maintenance over'

A paused saga carries on: what became due while it was paused starts now, and
every timeout of the commands under way is moved on by the time it was
paused (the time paused does not count against them).

With --name, the starts held while the name was paused are taken, in the
order they were written, each once; new starts wait behind them until all
are taken. --wait then returns once the request is accepted.", help_end!()))]
pub struct ResumeArgs {
    #[command(flatten)]
    target: PauseTarget,
    #[command(flatten)]
    request: RequestArgs,
}

pub async fn pause(args: PauseArgs) -> ExitCode {
    pause_or_resume(
        "pause",
        operator::NameAction::Pause,
        args.target,
        args.request,
    )
    .await
}

pub async fn resume(args: ResumeArgs) -> ExitCode {
    pause_or_resume(
        "resume",
        operator::NameAction::Resume,
        args.target,
        args.request,
    )
    .await
}

async fn pause_or_resume(
    action: &str,
    on_name: operator::NameAction,
    target: PauseTarget,
    request: RequestArgs,
) -> ExitCode {
    match target.name {
        Some(name) => output::exit(action, send_name(on_name, &name, request).await),
        None => {
            let which = SagaArgs::new(target.saga_id, target.correlation_id);
            self::request(action, None, Common { which, request }).await
        }
    }
}

pub async fn cancel(args: CancelArgs) -> ExitCode {
    request("cancel", None, args.common).await
}

pub async fn retry(args: RetryArgs) -> ExitCode {
    request("retry", None, args.common).await
}

pub async fn skip(args: SkipArgs) -> ExitCode {
    request("skip", Some(args.step), args.common).await
}

pub async fn abandon(args: AbandonArgs) -> ExitCode {
    request("abandon", None, args.common).await
}

async fn request(action: &str, step: Option<String>, args: Common) -> ExitCode {
    output::exit(action, send(action, step, args).await)
}

/// The settings and the operator's key a request is signed with.
fn settings_and_key(
    args: &RequestArgs,
) -> Result<
    (
        crate::config::Settings,
        crate::protocol::control::OperatorKey,
    ),
    Failure,
> {
    let settings = args.redis.settings().map_err(Failure::no)?;
    let key = settings.operator_key.clone().ok_or(Failure::usage(
        "no operator key: set SAGAFLOW_OPERATOR_KEY=<name>:<secret> (or operator_key in the \
         configuration file); the daemons hold every operator's key in operator_keys",
    ))?;
    Ok((settings, key))
}

async fn send(action: &str, step: Option<String>, common: Common) -> Result<ExitCode, Failure> {
    let Common {
        which,
        request: args,
    } = common;
    let (settings, key) = settings_and_key(&args)?;
    let (client, mut conn) = connect(&settings).await?;
    let record = which.one(&mut conn, &settings).await?;
    let saga_id = record.state.saga_id.to_string();
    let action = operator::Action::parse(action).expect("the subcommands name actions");
    if let Some(refused) = action.refused_for(&record.state) {
        return Err(Failure::no(refused));
    }
    let from = streams::last_id(&mut conn, &settings.events_stream)
        .await
        .map_err(|e| e.to_string())?;
    operator::request(
        &mut conn,
        &settings,
        &key,
        &record.state.saga_id,
        action,
        step,
        &args.reason,
    )
    .await?;

    let (answer_entry, answer, after) = wait_answer(&client, &settings, from, |e| {
        operator::answer_to(e, &saga_id)
    })
    .await?;
    let show = if args.json { Show::Json } else { Show::People };
    if args.json {
        output::json_line(&super::render::event_json(
            &answer_entry.id,
            &answer_entry.fields,
        ));
    }
    if let Some(refused) = answer["refused"].as_str() {
        if !args.json {
            outln!("refused: {refused}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if !args.json {
        outln!(
            "{} of saga {saga_id} accepted (by {})",
            action.as_str(),
            key.name
        );
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    if action == operator::Action::Pause {
        // A paused saga waits for its resume: nothing to follow.
        if args.json {
            output::json_line(&serde_json::json!({"saga_id": saga_id, "paused": true}));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if action == operator::Action::Abandon {
        // Nothing more happens to an abandoned saga: it stays failed.
        let outcome = follow::Outcome::Failed(serde_json::json!({ "abandoned": true }));
        match show {
            Show::Json => output::json_line(&outcome.json(&saga_id)),
            _ => outln!("\nabandoned: the saga stays failed, and is no longer listed as stuck"),
        }
        // What --wait reports of a failed saga.
        return Ok(ExitCode::from(2));
    }
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    let target = Target {
        saga_id: saga_id.clone(),
        entry_id: String::new(),
        skipped_by_hand: if action == operator::Action::Skip {
            answer_entry
                .fields
                .get(f::STEP)
                .map(|s| vec![String::from_utf8_lossy(s).into_owned()])
                .unwrap_or_default()
        } else {
            Vec::new()
        },
    };
    let outcome = follow::follow(
        &client,
        &settings.events_stream,
        after,
        target,
        None,
        &shutdown,
        show,
    )
    .await?;
    super::start::finish(&outcome, &saga_id, show);
    Ok(outcome.exit_code())
}

/// Waits for the daemons' answer to a request written after the events
/// stream's entry `from`: the first entry `answer` takes, its payload, and
/// the id read up to. No answer within [`ANSWER_WITHIN`] is a failure.
async fn wait_answer(
    client: &crate::connection::Client,
    settings: &crate::config::Settings,
    from: String,
    answer: impl Fn(&streams::Entry) -> Option<serde_json::Value>,
) -> Result<(streams::Entry, serde_json::Value, String), Failure> {
    let mut reader = client
        .blocking(follow::POLL)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let asked = Instant::now();
    let mut after = from;
    loop {
        if asked.elapsed() >= ANSWER_WITHIN {
            return Err(Failure::unavailable(format!(
                "no daemon answered within {}s: is one running?",
                ANSWER_WITHIN.as_secs()
            )));
        }
        let entries = streams::read_after(
            &mut reader,
            &settings.events_stream,
            &after,
            None,
            follow::POLL,
        )
        .await
        .map_err(|e| format!("reading {} failed: {e}", settings.events_stream))?;
        let found = entries.into_iter().find_map(|e| {
            after = e.id.clone();
            answer(&e).map(|payload| (e, payload))
        });
        if let Some((entry, payload)) = found {
            return Ok((entry, payload, after));
        }
    }
}

/// `pause --name` and `resume --name`: a request about a saga name, which
/// the first daemon to read it carries out and answers.
async fn send_name(
    action: operator::NameAction,
    name: &str,
    args: RequestArgs,
) -> Result<ExitCode, Failure> {
    let (settings, key) = settings_and_key(&args)?;
    let (client, mut conn) = connect(&settings).await?;
    let paused = operator::paused_names(&mut conn, &settings).await?;
    if let Some(refused) = action.refused_for(name, &paused) {
        return Err(Failure::no(refused));
    }
    let from = streams::last_id(&mut conn, &settings.events_stream)
        .await
        .map_err(|e| e.to_string())?;
    let request =
        operator::request_name(&mut conn, &settings, &key, name, action, &args.reason).await?;
    let (entry, answer, _) = wait_answer(&client, &settings, from, |e| {
        operator::answer_to_name(e, name, &request.nonce)
    })
    .await?;
    if args.json {
        output::json_line(&super::render::event_json(&entry.id, &entry.fields));
    }
    if let Some(refused) = answer["refused"].as_str() {
        if !args.json {
            outln!("refused: {refused}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if !args.json {
        match action {
            operator::NameAction::Pause => outln!(
                "saga name {name} paused (by {}): its new starts are held until \
                 `sagaflow resume --name {name}`; sagas of it already running go on",
                key.name
            ),
            operator::NameAction::Resume => {
                let held = paused.get(name).map_or(0, |p| p.held);
                outln!(
                    "saga name {name} resumed (by {}): the {held} start(s) held are taken, in order",
                    key.name
                )
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
