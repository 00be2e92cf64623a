//! Idempotency keys of starts: a key seen again within the retention starts
//! nothing, and the repeat is recorded as `saga_duplicate`.

use super::driver::{write_until_done, WriteOutcome};
use super::Shared;
use crate::definition::SagaDefinition;
use crate::protocol::{EventType, SagaEvent, SagaId, SagaStatus, StartRequest};
use crate::retry::{retry, Policy, Tried};
use crate::store::{EntryRef, Transition, WriteError};
use serde_json::json;

pub(super) enum Claim {
    Ours,
    /// Held by this saga id.
    Taken(String),
}

/// Claims an idempotency key for this saga: `SET NX`, so two daemons
/// taking the same key at once cannot both win. `Err(None)` when the
/// daemon stopped first; `Err(Some(_))` when Redis refuses the claim for
/// good (the key's name holds another kind of key).
pub(super) async fn claim_idempotency_key(
    shared: &Shared,
    saga: &str,
    key: &str,
    saga_id: &SagaId,
) -> Result<Claim, Option<WriteError>> {
    let redis_key = crate::store::keys::Keys::of(&shared.settings).idempotency(saga, key);
    let retention = shared.settings.idempotency_retention.as_secs().max(1);
    let claim = || {
        let mut conn = shared.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&redis_key)
            .arg(saga_id.as_str())
            .arg("NX")
            .arg("EX")
            .arg(retention)
            .cmd("GET")
            .arg(&redis_key);
        async move {
            pipe.query_async::<(Option<String>, Option<String>)>(&mut conn)
                .await
        }
    };
    match retry(&shared.shutdown, Policy::WRITES, &shared.writes, claim).await {
        Tried::Done((Some(_), _)) => Ok(Claim::Ours),
        Tried::Done((None, existing)) => Ok(Claim::Taken(existing.unwrap_or_default())),
        Tried::Refused(e) => Err(Some(e.into())),
        Tried::Stopped => Err(None),
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
        payload: json!({ "entry_id": at.id, "idempotency_key": key, "existing_saga_id": existing }),
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
