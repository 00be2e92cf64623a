//! Operators' requests (cancel, retry, skip, abandon), read by every daemon
//! from the control stream: the daemon driving the saga hands the request to
//! its task; a saga stuck on a failed compensation, which no daemon drives,
//! is claimed by one daemon, which carries the request out.
//!
//! A request is an entry of `saga_id`, `action` (`cancel`, `retry`, `skip`,
//! `abandon`), `step` (for `skip`), `by` and `reason`. Its outcome, accepted
//! or refused, is an `operator_action` event of the saga.

use super::reconnect::ReadConnection;
use super::{driver, Shared};
use crate::protocol::{text_field, RawFields, SagaId};
use crate::saga::{Action, OperatorRequest};
use crate::streams;
use std::sync::Arc;

pub(super) async fn run(shared: Arc<Shared>) {
    let stream = shared.settings.control_stream.clone();
    let mut conn = ReadConnection::new("control");
    // Requests written from now on: a daemon that starts later than a
    // request does not act on it (the operator's command says no daemon
    // answered).
    let mut from: Option<String> = None;
    while !shared.shutdown.is_cancelled() {
        let Some(c) = conn.get(&shared).await else {
            return;
        };
        let after = match &from {
            Some(id) => id.clone(),
            None => match streams::last_id(c, &stream).await {
                Ok(id) => id,
                Err(e) => {
                    conn.failed(&shared, &e).await;
                    continue;
                }
            },
        };
        from = Some(after.clone());
        let read = streams::read_after(c, &stream, &after, None, shared.settings.block).await;
        let entries = match read {
            Ok(entries) => {
                conn.succeeded();
                entries
            }
            Err(e) => {
                conn.failed(&shared, &e).await;
                continue;
            }
        };
        for entry in entries {
            from = Some(entry.id.clone());
            match parse(&entry.fields) {
                Ok((saga_id, request)) => dispatch(&shared, saga_id, request),
                Err(why) => {
                    tracing::warn!(entry_id = %entry.id, %why, "an operator's request cannot be read; ignored")
                }
            }
        }
    }
}

fn dispatch(shared: &Arc<Shared>, saga_id: SagaId, request: OperatorRequest) {
    if shared.router.route_operator(&saga_id, request.clone()) {
        return;
    }
    // Not driven here: a saga driven by another daemon is that daemon's to
    // handle; one stuck on a failed compensation is claimed by one of us.
    if request.action != Action::Cancel {
        shared
            .tracker
            .spawn(driver::adopt(shared.clone(), saga_id.to_string(), request));
    }
}

fn parse(fields: &RawFields) -> Result<(SagaId, OperatorRequest), String> {
    let text = |name: &str| -> Result<String, String> {
        Ok(text_field(fields, name)?.unwrap_or("").trim().to_owned())
    };
    let saga_id = SagaId::parse(&text("saga_id")?).ok_or("`saga_id` is not a saga id")?;
    let action = match text("action")?.as_str() {
        "cancel" => Action::Cancel,
        "retry" => Action::Retry,
        "abandon" => Action::Abandon,
        "skip" => Action::Skip {
            step: Some(text("step")?)
                .filter(|s| !s.is_empty())
                .ok_or("`skip` needs a `step`")?,
        },
        other => return Err(format!("unknown action `{other}`")),
    };
    let by = Some(text("by")?)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Ok((
        saga_id,
        OperatorRequest {
            action,
            by,
            reason: text("reason")?,
        },
    ))
}
