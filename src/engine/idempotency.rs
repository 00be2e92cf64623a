//! Idempotency keys of starts: a key seen again within the retention starts
//! nothing, and the repeat is recorded as `saga_duplicate`.

use super::driver::{write_until_done, WriteOutcome};
use super::Shared;
use crate::definition::SagaDefinition;
use crate::protocol::{EventType, SagaEvent, SagaId, SagaStatus, StartRequest};
use crate::retry::{retry, Policy, Tried};
use crate::store::idempotency::{self, Claim};
use crate::store::keys::Keys;
use crate::store::{EntryRef, Transition, WriteError};
use serde_json::json;

/// Claims an idempotency key for this saga ([`idempotency::claim`]),
/// retrying while Redis fails. `Err(None)` when the daemon stopped first;
/// `Err(Some(_))` when Redis refuses the claim for good (the key's name
/// holds another kind of key).
pub(super) async fn claim_idempotency_key(
    shared: &Shared,
    saga: &str,
    key: &str,
    saga_id: &SagaId,
) -> Result<Claim, Option<WriteError>> {
    let keys = Keys::of(&shared.settings);
    let retention = shared.settings.idempotency_retention;
    let claim = || {
        let (mut conn, keys) = (shared.conn.clone(), &keys);
        async move { idempotency::claim(&mut conn, keys, saga, key, saga_id.as_str(), retention).await }
    };
    match retry(&shared.shutdown, Policy::WRITES, &shared.writes, claim).await {
        Tried::Done(claim) => Ok(claim),
        Tried::Refused(e) => Err(Some(e.into())),
        Tried::Stopped => Err(None),
    }
}

/// Gives back the idempotency key of a start that could never be created,
/// so that it may be sent again once the cause is mended; logged when it
/// cannot be (the key then runs out after the retention).
pub(super) async fn release_idempotency_key(
    shared: &Shared,
    saga: &str,
    key: &str,
    saga_id: &SagaId,
) {
    let mut conn = shared.conn.clone();
    let keys = Keys::of(&shared.settings);
    let released = idempotency::release(&mut conn, &keys, saga, key, saga_id.as_str()).await;
    if let Err(e) = released {
        tracing::warn!(error = %e, idempotency_key = %key, "the idempotency key of a refused start is kept");
    }
}

pub(super) async fn duplicate(
    shared: &Shared,
    def: &SagaDefinition,
    request: &StartRequest,
    key: &str,
    existing: String,
    at: &EntryRef,
) {
    tracing::info!(idempotency_key = key, existing_saga_id = %existing, "duplicate start ignored");
    let event = SagaEvent {
        correlation_id: request.correlation_id.clone(),
        saga_id: None,
        saga: def.name.clone(),
        event_type: EventType::SagaDuplicate,
        status: SagaStatus::Duplicate,
        step: None,
        branch: None,
        payload: json!({ "entry_id": at.start().1, "idempotency_key": key, "existing_saga_id": existing }),
        timestamp: shared.now_ms(),
    };
    let transition = Transition {
        events: vec![&event],
        ack: Some(at),
        ..Default::default()
    };
    match write_until_done(shared, &transition, None).await {
        Ok(_) => crate::telemetry::metrics::saga_duplicate(&def.name),
        Err(WriteOutcome::Refused(e)) => {
            let reason = format!("the duplicate start cannot be recorded: {e}");
            super::driver::dead_letter_entry(shared, at, &reason).await;
        }
        Err(WriteOutcome::Stopped) => {}
    }
}
