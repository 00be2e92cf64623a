//! `POST /v1/sagas/{id}/signals/{name}`: a signal for the saga's `wait`
//! step, its body the payload, written to the signals stream as the write
//! token's name (`by`), and answered once a daemon has kept or refused it.

use super::problem::{Kind, Problem, Result};
use super::{query, Api, Writer, ANSWER_WITHIN};
use crate::operator::{self, SignalOutcome};
use crate::protocol::signal::{
    check_signal_id, check_signal_name, SignalRequest, MAX_SIGNAL_ENTRY_BYTES,
    MAX_SIGNAL_PAYLOAD_BYTES,
};
use crate::protocol::RawFields;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalQuery {
    signal_id: Option<String>,
}

pub async fn send(
    State(api): State<Api>,
    Writer(token): Writer,
    Path((id, name)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    super::Body(body): super::Body,
) -> Result<Response> {
    let q: SignalQuery = query(&uri)?;
    let id = super::sagas::saga_id(&id)?;
    check_signal_name(&name).map_err(|e| Problem::new(Kind::BadRequest, e))?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map(str::to_owned).map_err(|_| {
            Problem::new(Kind::BadRequest, "Idempotency-Key is not printable ASCII")
        })?),
    };
    let signal_id = match (key, q.signal_id) {
        (Some(a), Some(b)) if a != b => {
            return Err(Problem::new(
                Kind::BadRequest,
                "Idempotency-Key and ?signal_id= name different signal ids: give one",
            ))
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => crate::protocol::ids::new_uuid_hex(),
    };
    check_signal_id(&signal_id).map_err(|e| Problem::new(Kind::BadRequest, e))?;
    if body.len() > MAX_SIGNAL_PAYLOAD_BYTES {
        return Err(Problem::new(
            Kind::TooLarge,
            format!(
                "the payload is {} bytes, the limit is {MAX_SIGNAL_PAYLOAD_BYTES}",
                body.len()
            ),
        )
        .with("limit", MAX_SIGNAL_PAYLOAD_BYTES));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|e| Problem::new(Kind::BadBody, format!("the body is not UTF-8: {e}")))?;
    let payload = if text.trim().is_empty() {
        Value::Null
    } else {
        crate::protocol::limits::parse_bounded_json(text)
            .map_err(|e| Problem::new(Kind::BadBody, format!("the body is not JSON: {e}")))?
    };
    let request = SignalRequest {
        saga_id: id.clone(),
        name,
        signal_id,
        payload,
        by: Some(token.name.clone()),
    };
    // Checked as the daemons read it, so that a signal they would refuse
    // for its form is refused here, before anything is written.
    let fields: RawFields = (request.to_fields().into_iter())
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_SIGNAL_ENTRY_BYTES {
        return Err(Problem::new(
            Kind::TooLarge,
            format!("the signal is {size} bytes, the limit is {MAX_SIGNAL_ENTRY_BYTES}"),
        )
        .with("limit", MAX_SIGNAL_ENTRY_BYTES));
    }
    if let Err((_, why)) = SignalRequest::from_fields(&fields, "0-1") {
        return Err(Problem::new(Kind::BadBody, why));
    }
    let mut conn = api.conn().await?;
    // No such saga: nothing is written.
    super::sagas::record(&mut conn, &api, &id).await?;
    let _slot = api.wait_slot()?;
    let mut feed = api.subscribe().await?;
    let entry_id = operator::signal(&mut conn, api.settings(), &request)
        .await
        .map_err(|e| Problem::new(Kind::Unavailable, e))?;
    let deadline = Instant::now() + ANSWER_WITHIN;
    let (entry, outcome) = loop {
        let entry = match tokio::time::timeout_at(deadline, feed.next()).await {
            Err(_) => {
                return Err(Problem::new(
                    Kind::NoAnswer,
                    format!(
                        "no daemon answered within {}s: the signal stays on {} and is kept \
                         when a daemon reads it",
                        ANSWER_WITHIN.as_secs(),
                        api.settings().signals_stream
                    ),
                )
                .with("entry_id", entry_id)
                .with("signal_id", request.signal_id))
            }
            Ok(Err(e)) => return Err(Problem::redis("cannot follow the events stream", e)),
            Ok(Ok(entry)) => entry,
        };
        if let Some(outcome) = operator::signal_answer(&entry, &entry_id) {
            break (entry, outcome);
        }
    };
    let status = match outcome {
        SignalOutcome::Kept => "kept",
        SignalOutcome::Duplicate => "duplicate",
        SignalOutcome::Rejected(why) => {
            let kind = if why == crate::store::signals::NO_SUCH_SAGA {
                Kind::NoSuchSaga
            } else {
                Kind::Refused
            };
            return Err(Problem::new(kind, why)
                .with("event_id", entry.id.clone())
                .with("signal_id", request.signal_id));
        }
    };
    Ok(Json(json!({
        "saga_id": id,
        "signal": request.name,
        "signal_id": request.signal_id,
        "by": token.name,
        "status": status,
        "entry_id": entry_id,
        "event": crate::protocol::event::entry_json(&entry.id, &entry.fields),
    }))
    .into_response())
}
