//! `sagaflow cancel | retry | skip | abandon`: an operator's request about
//! one saga, written to the control stream; the daemon's answer is the
//! saga's `operator_action` event.

use super::follow::{self, Target};
use super::run::RedisArgs;
use super::{connect, signals};
use crate::operator;
use crate::protocol::control::{ControlRequest, MAX_REASON_LEN};
use crate::protocol::fields as f;
use crate::saga::Phase;
use crate::streams;
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a daemon has to answer a request.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct Common {
    /// The saga's id.
    saga_id: String,
    /// Why: recorded on saga:events with the request (at most 1024 bytes).
    #[arg(long, default_value = "")]
    reason: String,
    /// Follow the saga to its end and exit with its outcome (0 completed,
    /// 1 compensated, 2 failed).
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  sagaflow cancel 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --reason 'customer withdrew' --wait

The saga stops and compensates the steps it did, the step under way included.")]
pub struct CancelArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  sagaflow retry 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --reason 'map service fixed' --wait

For a saga stuck on a compensation that failed (`sagaflow list --state stuck`):
that compensation runs again, then the rest.")]
pub struct RetryArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  sagaflow skip 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --step perform_exploration --reason 'robots recalled by hand'

For a saga stuck on a compensation that failed: that compensation is marked as
done by hand, and the rest run.")]
pub struct SkipArgs {
    /// The step whose compensation failed.
    #[arg(long)]
    step: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  sagaflow abandon 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 --reason 'cleaned up by the ops team'

For a saga stuck on a compensation that failed: it stays failed, and is no
longer listed as stuck.")]
pub struct AbandonArgs {
    #[command(flatten)]
    common: Common,
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
    match send(action, step, args).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("sagaflow {action}: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn send(action: &str, step: Option<String>, args: Common) -> Result<ExitCode, String> {
    let settings = args.redis.settings()?;
    let (client, mut conn) = connect(&settings.redis_url).await?;
    let record = operator::read_existing(&mut conn, &settings, &args.saga_id).await?;
    let saga_id = record.state.saga_id.to_string();
    let phase = record.state.phase;
    let allowed = match action {
        "cancel" => phase == Phase::Running,
        _ => phase == Phase::Failed && !record.state.abandoned,
    };
    if !allowed {
        return Err(format!(
            "saga {saga_id} is {}{}: {}",
            phase.status().as_str(),
            if record.state.abandoned {
                " and abandoned"
            } else {
                ""
            },
            if action == "cancel" {
                "only a running saga can be cancelled"
            } else {
                "only a saga stuck on a failed compensation can be retried, skipped or abandoned"
            }
        ));
    }
    let key = settings.operator_key.as_ref().ok_or(
        "no operator key: set SAGAFLOW_OPERATOR_KEY=<name>:<secret> (or operator_key in the \
         configuration file); the daemons hold every operator's key in operator_keys",
    )?;
    if args.reason.len() > MAX_REASON_LEN {
        return Err(format!(
            "--reason is {} bytes, the limit is {MAX_REASON_LEN}",
            args.reason.len()
        ));
    }
    let from = streams::last_id(&mut conn, &settings.events_stream)
        .await
        .map_err(|e| e.to_string())?;
    // Signed on Redis's clock, which the daemons compare it with.
    let issued_ms = operator::redis_now_ms(&mut conn).await?;
    let saga = crate::protocol::SagaId::from_trusted(saga_id.clone());
    let request = ControlRequest::signed(key, saga, action, step, &args.reason, issued_ms);
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&settings.control_stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(settings.control_maxlen)
        .arg("*");
    for (name, value) in request.to_fields() {
        cmd.arg(name).arg(value);
    }
    let _: String = cmd
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("cannot write the request: {e}"))?;

    // The daemon's answer.
    let mut reader = streams::blocking_connection(&client, Duration::from_secs(1))
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let asked = Instant::now();
    let mut after = from;
    let answer = loop {
        if asked.elapsed() >= ANSWER_WITHIN {
            return Err(format!(
                "no daemon answered within {}s: is one running?",
                ANSWER_WITHIN.as_secs()
            ));
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
            let text = |k: &str| {
                e.fields
                    .get(k)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let ours = text(f::SAGA_ID).as_deref() == Some(saga_id.as_str())
                && text(f::EVENT_TYPE).as_deref() == Some("operator_action");
            ours.then(|| serde_json::from_str::<Value>(&text(f::PAYLOAD).unwrap_or_default()))
        });
        if let Some(payload) = found {
            break payload.unwrap_or(Value::Null);
        }
    };
    if let Some(refused) = answer["refused"].as_str() {
        println!("refused: {refused}");
        return Ok(ExitCode::FAILURE);
    }
    println!("{action} of saga {saga_id} accepted (by {})", key.name);
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    let target = Target {
        saga_id: saga_id.clone(),
        entry_id: String::new(),
    };
    let outcome = follow::follow(
        &client,
        &settings.events_stream,
        after,
        target,
        None,
        &shutdown,
    )
    .await?;
    println!("\n{}", outcome.summary());
    Ok(outcome.exit_code())
}
