//! Operators' requests (cancel, retry, skip, abandon, pause, resume), read by
//! every daemon from the control stream: the daemon driving the saga hands
//! the request to its task; a saga stuck on a failed compensation, which no
//! daemon drives, is claimed by one daemon, which carries the request out.
//! A request about a saga name (`pause_name`, `resume_name`) is carried out
//! by the first daemon to record its nonce ([`super::name_requests`]).
//!
//! A request is an entry of `saga_id`, `action` (`cancel`, `retry`, `skip`,
//! `abandon`), `step` (for `skip`), `by` and `reason`, signed with the key
//! of the operator `by` names (see [`crate::protocol::control`]). Every
//! daemon checks the signature and the freshness; the daemon that acts on
//! the request checks that its nonce was never used before. A request that
//! fails a check is refused; its outcome, accepted or refused, is an
//! `operator_action` event of the saga (with `verified`).

use super::reconnect::ReadConnection;
use super::{driver, Shared};
use crate::protocol::control::{ControlRequest, Request, FRESH_FOR};
use crate::protocol::SagaId;
use crate::saga::{Action, OperatorRequest};
use crate::store::control::{self, NonceUse};
use crate::store::keys::Keys;
use crate::store::read;
use crate::streams::StreamId;
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
    let mut drained = false;
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
        let read = read::after(
            c,
            &streams,
            CONTROL_BATCH,
            block,
            MAX_CONTROL_BYTES,
            drained,
        )
        .await;
        drained = false;
        let entries = match read {
            Ok(read) => {
                conn.succeeded();
                drained = read.drained;
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
            let written_ms = StreamId::parse(&entry.id).map_or(0, |id| id.ms());
            match Request::from_fields(&entry.fields) {
                Ok(Request::Saga(request)) => {
                    let nonce = request.nonce.clone();
                    let (saga_id, request) = check(&shared, request, written_ms);
                    dispatch(&shared, saga_id, request, nonce).await
                }
                Ok(Request::Name(request)) => {
                    // Carried out aside: the reader goes on meanwhile.
                    let id = entry.id.clone();
                    let carried =
                        super::name_requests::request(shared.clone(), request, id, written_ms);
                    shared.tracker.spawn(carried);
                }
                Err(why) => {
                    tracing::warn!(entry_id = %entry.id, %why, "an operator's request cannot be read; ignored")
                }
            }
        }
    }
}

/// The request as the saga's rules take it: proven to come from an
/// operator, or refused with the reason.
fn check(shared: &Shared, request: ControlRequest, written_ms: u64) -> (SagaId, OperatorRequest) {
    let unproven = request
        .verify(&shared.settings.operator_keys, written_ms)
        .err();
    if let Some(why) = &unproven {
        tracing::warn!(saga_id = %request.saga_id, by = %request.by, %why, "an operator's request is refused");
        crate::telemetry::metrics::operator_request_refused();
    }
    let action = match request.action.as_str() {
        "cancel" => Action::Cancel,
        "retry" => Action::Retry,
        "abandon" => Action::Abandon,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        _ => Action::Skip {
            step: request.step.clone().unwrap_or_default(),
        },
    };
    let saga_id = request.saga_id.clone();
    let operator = OperatorRequest {
        action,
        by: request.by,
        reason: request.reason,
        unproven,
    };
    (saga_id, operator)
}

/// True the first time a request's nonce is seen: a request read from the
/// stream and written again is refused as a replay. Kept for twice the
/// time a request stays fresh. On a Redis error, false: the request is
/// refused rather than perhaps carried out twice.
pub(super) async fn first_use(shared: &Shared, nonce: &str) -> bool {
    let mut conn = shared.conn.clone();
    let keys = Keys::of(&shared.settings);
    let used = control::use_nonce(&mut conn, &keys, nonce, FRESH_FOR * 2).await;
    matches!(used, Ok(NonceUse::First))
}

async fn dispatch(
    shared: &Arc<Shared>,
    saga_id: SagaId,
    mut request: OperatorRequest,
    nonce: String,
) {
    // The daemon that acts on a request is the one that checks its nonce.
    let mut nonce_checked = false;
    if request.unproven.is_none() && shared.router.drives(&saga_id) {
        nonce_checked = true;
        if !first_use(shared, &nonce).await {
            request.unproven = Some(REPLAYED.into());
        }
    }
    if shared.router.route_operator(&saga_id, request.clone()) {
        return;
    }
    // Not driven here: a saga driven by another daemon is that daemon's to
    // handle; one stuck on a failed compensation is claimed by one of us.
    // The reader waits for a slot: a flood of requests about sagas nobody
    // drives is looked into a few at a time, not all at once.
    // Requests about running sagas are for the daemon driving them.
    if !matches!(
        request.action,
        Action::Cancel | Action::Pause | Action::Resume
    ) {
        let Ok(slot) = shared.adoptions.clone().acquire_owned().await else {
            return;
        };
        let nonce = (!nonce_checked).then_some(nonce);
        shared.tracker.spawn(driver::adopt(
            shared.clone(),
            saga_id.to_string(),
            request,
            nonce,
            slot,
        ));
    }
}

/// Why a request whose nonce was seen before is refused.
pub(super) const REPLAYED: &str = "its nonce was used before: a replay";
