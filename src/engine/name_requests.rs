//! Operators' requests about a saga name (`pause_name`, `resume_name`),
//! read by every daemon from the control stream: the first daemon to
//! record a request's nonce carries it out and answers on `saga:events`
//! (a request refused, the first to record its refusal). Carrying out a
//! pause records it, then holds the name on each trigger stream this
//! daemon reads; a resume removes it, then lets each trigger stream take
//! the starts held ([`super::holds`] says how starts are held and taken).
//! A request half carried out (a daemon killed on the way) is completed by
//! every daemon's next refresh of the holds.

use super::driver::{self, WriteOutcome};
use super::Shared;
use crate::protocol::control::{NameRequest, FRESH_FOR};
use crate::protocol::{CorrelationId, EventType, SagaEvent, SagaStatus};
use crate::retry::{retry, Policy, Tried};
use crate::store::control::{claim_nonce, NonceClaim};
use crate::store::holds::{self as store, Change, Expected, NamePause};
use crate::store::keys::Keys;
use crate::store::Transition;
use crate::telemetry::metrics;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// What became of an operator's request about a name.
enum Outcome {
    /// Carried out; the name's state after it.
    Done(SagaStatus),
    /// Refused, why, and the name's state.
    Refused(String, SagaStatus),
    /// Redis failed on the way, or the daemon stops: no answer (what was
    /// recorded is completed by every daemon's next refresh).
    Unfinished,
}

/// Carries out (or refuses) an operator's request about a saga name read
/// from the control stream, as entry `entry_id` written at `written_ms` on
/// Redis's clock, if this daemon is the one to: the first to record its
/// nonce, or for a refused request the first to record the refusal.
pub(super) async fn request(
    shared: Arc<Shared>,
    request: NameRequest,
    entry_id: String,
    written_ms: u64,
) {
    let keys = Keys::of(&shared.settings);
    let mut conn = shared.conn.clone();
    let kept = FRESH_FOR * 2;
    let refused_once = format!("refused-{entry_id}");
    let unproven = request
        .verify(&shared.settings.operator_keys, written_ms)
        .err();
    if let Some(why) = &unproven {
        tracing::warn!(saga = %request.name, by = %request.by, %why, "an operator's request about a saga name is refused");
        metrics::operator_request_refused();
    }
    let claimed = match &unproven {
        Some(_) => claim_nonce(&mut conn, &keys, &refused_once, &entry_id, kept).await,
        None => claim_nonce(&mut conn, &keys, &request.nonce, &entry_id, kept).await,
    };
    let verified = unproven.is_none();
    let outcome = match (claimed, unproven) {
        (Ok(NonceClaim::First), Some(why)) => {
            Outcome::Refused(why, status_of(&shared, &request.name).await)
        }
        (Ok(NonceClaim::First), None) => {
            let _acting = shared.holds.acting.lock().await;
            match request.action.as_str() {
                "pause_name" => pause_name(&shared, &request).await,
                _ => resume_name(&shared, &request).await,
            }
        }
        (Ok(NonceClaim::Replayed), None) => {
            // Refused once, by the daemon that records the refusal first.
            match claim_nonce(&mut conn, &keys, &refused_once, &entry_id, kept).await {
                Ok(NonceClaim::First) => Outcome::Refused(
                    super::control::REPLAYED.into(),
                    status_of(&shared, &request.name).await,
                ),
                _ => return,
            }
        }
        // Another daemon carries it out (or records its refusal).
        (Ok(_), _) => return,
        (Err(e), _) => {
            return tracing::warn!(error = %e, saga = %request.name, "cannot look whether a request about a saga name was carried out; left to the other daemons")
        }
    };
    answer(&shared, &request, outcome, verified).await;
}

/// The state of a name now, for a refusal's event.
async fn status_of(shared: &Shared, name: &str) -> SagaStatus {
    let mut conn = shared.conn.clone();
    let paused = store::paused_raw(&mut conn, &Keys::of(&shared.settings)).await;
    match paused {
        Ok(paused) if paused.contains_key(name) => SagaStatus::Paused,
        _ => SagaStatus::Running,
    }
}

/// Runs one short call to Redis, retried while Redis fails for a reason
/// that may pass.
async fn call<T, F, Fut>(shared: &Shared, op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    match retry(&shared.shutdown, Policy::WRITES, &shared.writes, op).await {
        Tried::Done(value) => Some(value),
        Tried::Refused(e) => {
            tracing::error!(error = %e, "Redis refuses a write of a saga name's pause");
            None
        }
        Tried::Stopped => None,
    }
}

async fn pause_name(shared: &Shared, request: &NameRequest) -> Outcome {
    let name = request.name.as_str();
    if shared.catalog.get(name).is_none() {
        // The first names, enough to spot a typo.
        let names = shared.catalog.names();
        let mut known = names
            .iter()
            .take(20)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > 20 {
            known.push_str(&format!(" and {} more", names.len() - 20));
        }
        return Outcome::Refused(
            format!("unknown saga `{name}`: the daemons run {known}"),
            SagaStatus::Running,
        );
    }
    let keys = Keys::of(&shared.settings);
    let streams = super::trigger_streams(&shared.settings, &shared.catalog);
    if let Some(bad) = streams.iter().find(|s| !store::can_hold(&keys, s)) {
        return Outcome::Refused(
            format!(
                "trigger stream `{bad}` cannot hold starts: the part of its name in braces \
                 holds a brace, so no other key can share its cluster slot; rename it"
            ),
            SagaStatus::Running,
        );
    }
    let pause = NamePause {
        by: request.by.clone(),
        reason: request.reason.clone(),
        since_ms: shared.now_ms(),
        nonce: request.nonce.clone(),
        streams: streams.clone(),
    };
    let raw = pause.to_json();
    let recorded = call(shared, || {
        let (mut conn, keys, pause) = (shared.conn.clone(), &keys, &pause);
        async move { store::record_pause(&mut conn, keys, name, pause).await }
    })
    .await;
    match recorded {
        None => return Outcome::Unfinished,
        Some(false) => {
            let mut conn = shared.conn.clone();
            let by = match store::paused_names(&mut conn, &keys).await {
                Ok(paused) => paused.get(name).map(|p| {
                    format!(
                        ", by {} since {}",
                        p.by,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_millis(p.since_ms)
                        )
                    )
                }),
                Err(_) => None,
            };
            return Outcome::Refused(
                format!("saga `{name}` is paused already{}", by.unwrap_or_default()),
                SagaStatus::Paused,
            );
        }
        Some(true) => {}
    }
    for stream in &streams {
        let changed = call(shared, || {
            let (mut conn, keys, raw) = (shared.conn.clone(), &keys, &raw);
            async move {
                store::change_hold(
                    &mut conn,
                    keys,
                    stream,
                    name,
                    Expected::Any,
                    Change::Pause(raw),
                )
                .await
            }
        })
        .await;
        if changed.is_none() {
            return Outcome::Unfinished;
        }
    }
    tracing::info!(saga = %name, by = %request.by, reason = %request.reason, "saga name paused: its new starts are held");
    Outcome::Done(SagaStatus::Paused)
}

async fn resume_name(shared: &Shared, request: &NameRequest) -> Outcome {
    let name = request.name.as_str();
    let keys = Keys::of(&shared.settings);
    let recorded = call(shared, || {
        let (mut conn, keys) = (shared.conn.clone(), &keys);
        async move { store::record_resume(&mut conn, keys, name).await }
    })
    .await;
    let pause = match recorded {
        None => return Outcome::Unfinished,
        Some(None) => {
            return Outcome::Refused(format!("saga `{name}` is not paused"), SagaStatus::Running)
        }
        Some(Some(pause)) => pause,
    };
    let streams = super::trigger_streams(&shared.settings, &shared.catalog);
    for stream in &streams {
        let changed = call(shared, || {
            let (mut conn, keys, pause) = (shared.conn.clone(), &keys, &pause);
            async move {
                let expected = Expected::Exactly(Some(pause.as_str()));
                store::change_hold(&mut conn, keys, stream, name, expected, Change::Resume).await
            }
        })
        .await;
        if changed.is_none() {
            return Outcome::Unfinished;
        }
    }
    tracing::info!(saga = %name, by = %request.by, reason = %request.reason, "saga name resumed: its held starts are taken");
    shared.holds.wake.notify_one();
    Outcome::Done(SagaStatus::Running)
}

/// Records the outcome of a request about a name on the events stream:
/// an `operator_action` about no saga, its `saga` the name.
async fn answer(shared: &Shared, request: &NameRequest, outcome: Outcome, verified: bool) {
    let (refused, status) = match outcome {
        Outcome::Done(status) => (None, status),
        Outcome::Refused(why, status) => (Some(why), status),
        Outcome::Unfinished => return,
    };
    let mut payload = json!({
        "action": request.action,
        "by": request.by,
        "reason": request.reason,
        "verified": verified,
        "nonce": request.nonce,
    });
    if let Some(why) = &refused {
        payload["refused"] = json!(why);
    }
    let event = SagaEvent {
        correlation_id: CorrelationId::generate(),
        saga_id: None,
        saga: request.name.clone(),
        event_type: EventType::OperatorAction,
        status,
        step: None,
        branch: None,
        payload,
        timestamp: shared.now_ms(),
    };
    let transition = Transition {
        events: vec![&event],
        ..Default::default()
    };
    match driver::write_until_done(shared, &transition, None).await {
        Ok(_) if refused.is_none() => metrics::operator_action(&request.action),
        Ok(_) => {}
        Err(WriteOutcome::Refused(e)) => {
            tracing::error!(error = %e, saga = %request.name, "the answer to a request about a saga name cannot be recorded")
        }
        Err(WriteOutcome::Stopped) => {}
    }
}
