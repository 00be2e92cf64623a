//! Intake: reads the trigger streams through the consumer group, turns each
//! valid entry into a saga task and answers each bad one with a
//! `saga_rejected` event. Never stops on bad input.

use super::driver;
use super::reconnect::ReadConnection;
use super::store::{EntryRef, Transition};
use super::{now_ms, Shared};
use crate::protocol::{CorrelationId, EventType, SagaEvent, SagaStatus, StartError, StartRequest};
use crate::streams::{self, Entry};
use serde_json::json;
use std::sync::Arc;

pub(super) async fn run(shared: Arc<Shared>) {
    let triggers = super::trigger_streams(&shared.settings, &shared.catalog);
    let mut conn = ReadConnection::new("starts");
    while !shared.shutdown.is_cancelled() {
        // Take no more entries than there is room for sagas.
        let room = shared
            .permits
            .available_permits()
            .min(shared.settings.read_batch);
        if room == 0 {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                permit = shared.permits.clone().acquire_owned() => drop(permit),
            }
            continue;
        }
        let Some(c) = conn.get(&shared).await else {
            return;
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&shared.settings.trigger_group)
            .arg(&shared.settings.node_id)
            .arg("COUNT")
            .arg(room)
            .arg("BLOCK")
            .arg(shared.settings.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&triggers);
        for _ in &triggers {
            cmd.arg(">");
        }
        // The read is never abandoned for a stop: an abandoned XREADGROUP
        // stays live on the server and can move an entry into our pending
        // list unseen. It ends within `block`, and what it took is started.
        let reply = cmd.query_async::<redis::Value>(c).await;
        match reply {
            Ok(value) => {
                conn.succeeded();
                for entry in streams::decode_read_reply(&value) {
                    take(&shared, entry).await;
                }
            }
            Err(e) => {
                if super::is_nogroup(&e) {
                    recreate_groups(&shared).await;
                } else if !conn.failed(&shared, &e).await {
                    return;
                }
            }
        }
    }
}

/// Creates the trigger groups again after Redis lost them.
async fn recreate_groups(shared: &Shared) {
    tracing::warn!(
        "the trigger consumer groups are gone (Redis lost its data?); creating them again"
    );
    let mut conn = shared.conn.clone();
    if let Err(e) = super::create_groups(&mut conn, &shared.settings, &shared.catalog).await {
        tracing::warn!(error = %e, "cannot create the trigger groups yet");
        super::pause(&shared.shutdown, shared.settings.block).await;
    }
}

/// Starts a saga for a valid entry, rejects a bad one.
pub(super) async fn take(shared: &Arc<Shared>, entry: Entry) {
    let at = EntryRef {
        stream: entry.stream.clone(),
        id: entry.id.clone(),
    };
    if let Some(why) = entry.malformed {
        return reject(
            shared,
            &at,
            StartError {
                reason: why,
                correlation_id: None,
            },
            "",
        )
        .await;
    }
    let request = match StartRequest::from_fields(&entry.fields) {
        Ok(r) => r,
        Err(e) => {
            let saga = crate::protocol::text_field(&entry.fields, crate::protocol::fields::SAGA)
                .ok()
                .flatten()
                .unwrap_or_default()
                .chars()
                .take(128)
                .collect::<String>();
            return reject(shared, &at, e, &saga).await;
        }
    };
    let def = match &request.saga {
        Some(name) => shared.catalog.get(name).cloned().ok_or_else(|| {
            format!(
                "unknown saga `{name}`; loaded sagas: {}",
                shared.catalog.names().join(", ")
            )
        }),
        None => shared
            .catalog
            .for_trigger(&at.stream)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no saga is bound to trigger stream `{}`; name one in the `saga` field",
                    at.stream
                )
            }),
    };
    let def = match def {
        Ok(def) => def,
        Err(reason) => {
            let saga = request.saga.clone().unwrap_or_default();
            let error = StartError {
                reason,
                correlation_id: Some(request.correlation_id.clone()),
            };
            return reject(shared, &at, error, &saga).await;
        }
    };
    let permit = match shared.permits.clone().acquire_owned().await {
        Ok(p) => p,
        Err(_) => return,
    };
    shared
        .tracker
        .spawn(driver::start(shared.clone(), def, request, at, permit));
}

async fn reject(shared: &Shared, at: &EntryRef, error: StartError, saga: &str) {
    tracing::warn!(entry_id = %at.id, stream = %at.stream, reason = %error.reason, "start rejected");
    let event = SagaEvent {
        correlation_id: error.correlation_id.unwrap_or_else(CorrelationId::generate),
        saga_id: None,
        saga: saga.to_owned(),
        event_type: EventType::SagaRejected,
        status: SagaStatus::Rejected,
        step: None,
        payload: json!({ "entry_id": at.id, "stream": at.stream, "reason": error.reason }),
        timestamp: now_ms(),
    };
    let transition = Transition {
        events: vec![&event],
        ack: Some(at),
        ..Default::default()
    };
    if driver::write_until_done(shared, &transition, None)
        .await
        .is_some()
    {
        crate::telemetry::metrics::saga_rejected(saga);
    }
}
