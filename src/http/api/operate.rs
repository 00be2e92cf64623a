//! `POST /v1/sagas/{id}/cancel | retry | skip | abandon | pause | resume`: an operator's
//! request, signed for the write token's name with the operator key of
//! that name, written to the control stream, and answered once the daemon
//! driving the saga has accepted or refused it. `POST
//! /v1/definitions/{name}/pause | resume`: the same for every new start of
//! a saga name, answered by the daemon that carried it out.

use super::problem::{Kind, Problem, Result};
use super::{Api, Writer, ANSWER_WITHIN};
use crate::operator::{self, Action, NameAction};
use crate::protocol::control::MAX_REASON_LEN;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    reason: String,
    /// For `skip`: the step whose failed compensations are marked done.
    step: Option<String>,
}

pub async fn request(
    State(api): State<Api>,
    Writer(token): Writer,
    Path((id, action)): Path<(String, String)>,
    super::Body(body): super::Body,
) -> Result<Response> {
    let id = super::sagas::saga_id(&id)?;
    let action = Action::parse(&action).ok_or_else(|| {
        Problem::new(
            Kind::NotFound,
            format!(
                "`{}` is not an operator's request: cancel, retry, skip, abandon, pause or resume",
                action.chars().take(32).collect::<String>()
            ),
        )
    })?;
    let body: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body {
            reason: String::new(),
            step: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Problem::new(
                Kind::BadBody,
                format!("the body is not {{\"reason\": ..., \"step\": ...}}: {e}"),
            )
        })?
    };
    if body.reason.len() > MAX_REASON_LEN {
        return Err(Problem::new(
            Kind::BadBody,
            format!(
                "reason: {} bytes, the limit is {MAX_REASON_LEN}",
                body.reason.len()
            ),
        ));
    }
    match (action, &body.step) {
        (Action::Skip, None) => {
            return Err(Problem::new(
                Kind::BadBody,
                "skip needs the step whose failed compensation was done by hand: {\"step\": ...}",
            ))
        }
        (Action::Skip, Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return Err(Problem::new(
                Kind::BadBody,
                format!("step is for skip only, not {}", action.as_str()),
            ))
        }
    }
    let key = api
        .settings()
        .operator_keys
        .get(&token.name)
        .ok_or_else(|| {
            Problem::new(
                Kind::Forbidden,
                format!("no operator key `{}` to sign the request with", token.name),
            )
        })?;
    let mut conn = api.conn().await?;
    let record = super::sagas::record(&mut conn, &api, &id).await?;
    if let Some(why) = action.refused_for(&record.state) {
        return Err(
            Problem::new(Kind::Conflict, why).with("state", super::sagas::state_of(&record.state))
        );
    }
    let _slot = api.wait_slot()?;
    let mut feed = api.subscribe().await?;
    operator::request(
        &mut conn,
        api.settings(),
        key,
        &record.state.saga_id,
        action,
        body.step,
        &body.reason,
    )
    .await
    .map_err(|e| Problem::new(Kind::Unavailable, e))?;
    let (entry, answer) = answered(&api, &mut feed, |entry| {
        operator::answer_to(entry, id.as_str())
    })
    .await?;
    if let Some(refused) = answer["refused"].as_str() {
        return Err(
            Problem::new(Kind::Refused, refused.to_owned()).with("event_id", entry.id.clone())
        );
    }
    Ok(Json(json!({
        "saga_id": id,
        "action": action.as_str(),
        "by": token.name,
        "accepted": true,
        "event": crate::protocol::event::entry_json(&entry.id, &entry.fields),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    #[serde(default)]
    reason: String,
}

/// `POST /v1/definitions/{name}/pause | resume`.
pub async fn name_request(
    State(api): State<Api>,
    Writer(token): Writer,
    Path((name, action)): Path<(String, String)>,
    super::Body(body): super::Body,
) -> Result<Response> {
    let action = match action.as_str() {
        "pause" => NameAction::Pause,
        "resume" => NameAction::Resume,
        other => {
            return Err(Problem::new(
                Kind::NotFound,
                format!(
                    "`{}` is not a request about a saga name: pause or resume",
                    other.chars().take(32).collect::<String>()
                ),
            ))
        }
    };
    let body: NameBody = if body.iter().all(u8::is_ascii_whitespace) {
        NameBody {
            reason: String::new(),
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Problem::new(
                Kind::BadBody,
                format!("the body is not {{\"reason\": ...}}: {e}"),
            )
        })?
    };
    if body.reason.len() > MAX_REASON_LEN {
        return Err(Problem::new(
            Kind::BadBody,
            format!(
                "reason: {} bytes, the limit is {MAX_REASON_LEN}",
                body.reason.len()
            ),
        ));
    }
    let key = api
        .settings()
        .operator_keys
        .get(&token.name)
        .ok_or_else(|| {
            Problem::new(
                Kind::Forbidden,
                format!("no operator key `{}` to sign the request with", token.name),
            )
        })?;
    let mut conn = api.conn().await?;
    let paused = operator::paused_names(&mut conn, api.settings())
        .await
        .map_err(|e| Problem::new(Kind::Unavailable, e))?;
    // A name paused may be resumed even if no daemon runs it any more.
    let known = api.0.definitions.contains(&name)
        || (action == NameAction::Resume && paused.contains_key(&name));
    if !known {
        return Err(Problem::new(
            Kind::NoSuchDefinition,
            format!(
                "no saga `{}` is defined on this daemon (GET /v1/definitions lists them)",
                name.chars().take(128).collect::<String>()
            ),
        ));
    }
    if let Some(why) = action.refused_for(&name, &paused) {
        let state = paused.get(&name).map(operator::PausedName::json);
        return Err(Problem::new(Kind::Conflict, why).with("paused", state));
    }
    let _slot = api.wait_slot()?;
    let mut feed = api.subscribe().await?;
    let request =
        operator::request_name(&mut conn, api.settings(), key, &name, action, &body.reason)
            .await
            .map_err(|e| Problem::new(Kind::Unavailable, e))?;
    let (entry, answer) = answered(&api, &mut feed, |entry| {
        operator::answer_to_name(entry, &name, &request.nonce)
    })
    .await?;
    if let Some(refused) = answer["refused"].as_str() {
        return Err(
            Problem::new(Kind::Refused, refused.to_owned()).with("event_id", entry.id.clone())
        );
    }
    Ok(Json(json!({
        "saga": name,
        "action": match action { NameAction::Pause => "pause", NameAction::Resume => "resume" },
        "by": token.name,
        "accepted": true,
        "event": crate::protocol::event::entry_json(&entry.id, &entry.fields),
    }))
    .into_response())
}

/// The answer to an operator's request, read from the events feed: the
/// first entry `pick` takes, with what it took; `no-answer` after
/// [`ANSWER_WITHIN`].
async fn answered(
    api: &Api,
    feed: &mut crate::http::feed::Subscription,
    pick: impl Fn(&crate::streams::Entry) -> Option<serde_json::Value>,
) -> Result<(std::sync::Arc<crate::streams::Entry>, serde_json::Value)> {
    let deadline = Instant::now() + ANSWER_WITHIN;
    loop {
        let entry = match tokio::time::timeout_at(deadline, feed.next()).await {
            Err(_) => {
                return Err(Problem::new(
                    Kind::NoAnswer,
                    format!(
                        "no daemon answered within {}s: the request stays on {} and is carried out \
                         if a daemon reads it while it is fresh",
                        ANSWER_WITHIN.as_secs(),
                        api.settings().control_stream
                    ),
                ))
            }
            Ok(Err(e)) => return Err(Problem::redis("cannot follow the events stream", e)),
            Ok(Ok(entry)) => entry,
        };
        if let Some(answer) = pick(&entry) {
            return Ok((entry, answer));
        }
    }
}
