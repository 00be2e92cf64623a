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
use crate::store::read;
use std::sync::Arc;

/// Requests read at once. Operators write a handful; a flood (a million
/// entries written in one go) is read a batch at a time, never in one read.
const CONTROL_BATCH: usize = 100;

/// Largest request read, all fields together: a saga id, an action, a step
/// name, who and why. A larger entry is not a request anyone sent through
/// `sagaflow`; it is refused unread.
pub const MAX_CONTROL_BYTES: usize = 16 << 10;

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
            None => match read::last_id(c, &stream).await {
                Ok(id) => id,
                Err(e) => {
                    conn.failed(&shared, &e).await;
                    continue;
                }
            },
        };
        from = Some(after.clone());
        let streams = [(stream.as_str(), after.as_str())];
        let block = shared.settings.block;
        let read = read::after(c, &streams, CONTROL_BATCH, block, MAX_CONTROL_BYTES).await;
        let entries = match read {
            Ok(read) => {
                conn.succeeded();
                read.entries
            }
            Err(e) => {
                conn.failed(&shared, &e).await;
                continue;
            }
        };
        for entry in entries {
            from = Some(entry.id.clone());
            if let Some(size) = read::oversized(&entry) {
                tracing::warn!(entry_id = %entry.id, size, "an operator's request larger than {MAX_CONTROL_BYTES} bytes; ignored");
                continue;
            }
            match parse(&entry.fields) {
                Ok((saga_id, request)) => dispatch(&shared, saga_id, request).await,
                Err(why) => {
                    tracing::warn!(entry_id = %entry.id, %why, "an operator's request cannot be read; ignored")
                }
            }
        }
    }
}

async fn dispatch(shared: &Arc<Shared>, saga_id: SagaId, request: OperatorRequest) {
    if shared.router.route_operator(&saga_id, request.clone()) {
        return;
    }
    // Not driven here: a saga driven by another daemon is that daemon's to
    // handle; one stuck on a failed compensation is claimed by one of us.
    // The reader waits for a slot: a flood of requests about sagas nobody
    // drives is looked into a few at a time, not all at once.
    if request.action != Action::Cancel {
        let Ok(slot) = shared.adoptions.clone().acquire_owned().await else {
            return;
        };
        shared.tracker.spawn(driver::adopt(
            shared.clone(),
            saga_id.to_string(),
            request,
            slot,
        ));
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
