//! Starting sagas, reading one, listing them, and counting them.

use super::problem::{Kind, Problem, Result};
use super::{query, Api, Reader, RequestId, Writer, ANSWER_WITHIN, MAX_PAGE};
use crate::definition::SagaDefinition;
use crate::operator::{self, Record, Start, Taken};
use crate::protocol::{fields as f, RawFields, SagaId, StartRequest};
use crate::saga::{Phase, SagaState, UnitState};
use crate::store::keys::Keys;
use crate::store::sagas::{self, Cursor};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

/// `GET /v1/definitions`: the sagas this daemon can start, and the saga
/// names paused (name to `by`, `reason`, `since_ms` and `held`, the starts
/// waiting).
pub async fn definitions(State(api): State<Api>, _: Reader) -> Result<Response> {
    let mut conn = api.conn().await?;
    let paused = operator::paused_names(&mut conn, api.settings())
        .await
        .map_err(|e| Problem::new(Kind::Unavailable, e))?;
    let paused: serde_json::Map<String, Value> = paused
        .iter()
        .map(|(name, p)| (name.clone(), p.json()))
        .collect();
    Ok(Json(json!({ "definitions": api.0.definitions, "paused": paused })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartQuery {
    wait: Option<String>,
}

/// `POST /v1/sagas/{name}`: the body is the saga's input.
pub async fn start(
    State(api): State<Api>,
    Writer(_): Writer,
    Path(name): Path<String>,
    Extension(RequestId(correlation_id)): Extension<RequestId>,
    uri: Uri,
    headers: HeaderMap,
    super::Body(body): super::Body,
) -> Result<Response> {
    let q: StartQuery = query(&uri)?;
    let wait = q.wait.as_deref().map(super::parse_wait).transpose()?;
    if !api.0.definitions.contains(&name) {
        return Err(Problem::new(
            Kind::NoSuchDefinition,
            format!(
                "no saga `{}` is defined on this daemon (GET /v1/definitions lists them)",
                name.chars().take(128).collect::<String>()
            ),
        ));
    }
    let header = |name: &str| -> Result<Option<String>> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    Problem::new(Kind::BadRequest, format!("{name} is not printable ASCII"))
                })
            })
            .transpose()
    };
    let idempotency_key = header("idempotency-key")?;
    let traceparent = header("traceparent")?;
    let payload = std::str::from_utf8(&body)
        .map_err(|e| Problem::new(Kind::BadBody, format!("the body is not UTF-8: {e}")))?;
    let payload = if payload.trim().is_empty() {
        "{}"
    } else {
        payload
    };
    let start = Start {
        saga: Some(name.clone()),
        payload: payload.to_owned(),
        correlation_id: Some(correlation_id.to_string()),
        idempotency_key,
        traceparent: traceparent.clone(),
    };
    // Checked as the daemons check it, so that a start they would refuse
    // is refused here, before anything is written.
    let fields: RawFields = [
        (f::SAGA, start.saga.clone()),
        (f::PAYLOAD, Some(start.payload.clone())),
        (f::CORRELATION_ID, start.correlation_id.clone()),
        (f::IDEMPOTENCY_KEY, start.idempotency_key.clone()),
        (f::TRACEPARENT, start.traceparent.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), v?.into_bytes())))
    .collect();
    if let Err(e) = StartRequest::from_fields(&fields) {
        let kind = if e.reason.contains("idempotency_key") {
            Kind::BadRequest
        } else {
            Kind::BadBody
        };
        return Err(Problem::new(kind, e.reason));
    }
    if let Some(tp) = &traceparent {
        if crate::protocol::TraceParent::parse(tp).is_none() {
            return Err(Problem::new(
                Kind::BadRequest,
                "traceparent is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)",
            ));
        }
    }

    let _slot = api.wait_slot()?;
    let mut feed = api.subscribe().await?;
    let mut conn = api.conn().await?;
    let keys = Keys::of(api.settings());
    let paused = crate::store::holds::paused_names(&mut conn, &keys)
        .await
        .map_err(|e| Problem::redis("cannot read the saga names paused", e))?;
    let trigger = api.settings().trigger_stream.clone();
    let started = operator::start(&mut conn, &trigger, &start)
        .await
        .map_err(|e| Problem::redis(&format!("cannot write the start to {trigger}"), e))?;
    let new_id = started.saga_id.to_string();
    if let Some(pause) = paused.get(&name) {
        // Held by the daemons until the name is resumed: nothing to wait for.
        let body = json!({
            "saga_id": new_id,
            "correlation_id": correlation_id,
            "status": "held",
            "entry_id": started.entry_id,
            "detail": format!(
                "saga `{name}` is paused (by {}: {}): the start is held and runs once it is resumed",
                pause.by, pause.reason
            ),
        });
        return Ok(located(StatusCode::ACCEPTED, &new_id, body));
    }
    let deadline = Instant::now() + ANSWER_WITHIN;
    let taken = loop {
        let next = tokio::time::timeout_at(deadline, feed.next()).await;
        match next {
            Err(_) => break None,
            Ok(Err(e)) => return Err(Problem::redis("cannot follow the events stream", e)),
            Ok(Ok(entry)) => {
                if let Some(taken) =
                    operator::taken_by(&entry, &trigger, &started.entry_id, &new_id)
                {
                    break Some(taken);
                }
            }
        }
    };
    let (saga_id, status) = match taken {
        Some(Taken::Rejected(reason)) => {
            return Err(Problem::new(Kind::StartRejected, reason)
                .with("entry_id", started.entry_id)
                .with("correlation_id", correlation_id.to_string()))
        }
        Some(Taken::Started) => (new_id, StatusCode::ACCEPTED),
        Some(Taken::Duplicate(existing)) => (existing, StatusCode::OK),
        // On the trigger stream, durably: a daemon takes it when it can.
        None => {
            let body = json!({
                "saga_id": new_id,
                "correlation_id": correlation_id,
                "status": "pending",
                "entry_id": started.entry_id,
                "detail": format!(
                    "no daemon took the start within {}s; it stays on {trigger} and runs when one does",
                    ANSWER_WITHIN.as_secs()
                ),
            });
            return Ok(located(StatusCode::ACCEPTED, &new_id, body));
        }
    };
    let Some(wait) = wait else {
        let body = json!({
            "saga_id": saga_id,
            "correlation_id": correlation_id,
            "status": if status == StatusCode::OK { "existing" } else { "running" },
            "entry_id": started.entry_id,
        });
        return Ok(located(status, &saga_id, body));
    };
    // An existing saga may have ended long ago: its record says so. The
    // events of one that ends from now on are on the subscription, taken
    // before the start was written.
    let read = |mut conn: crate::connection::Conn| {
        let settings = api.settings().clone();
        let saga_id = saga_id.clone();
        async move {
            operator::read(&mut conn, &settings, &saga_id)
                .await
                .map_err(|e| Problem::new(Kind::Unavailable, e))
        }
    };
    let before = read(conn.clone()).await?;
    let ended = match &before {
        Some(r) if r.state.phase.is_terminal() => true,
        _ => ended_within(&mut feed, &saga_id, wait).await?,
    };
    let record = read(conn.clone()).await?;
    let Some(record) = record else {
        return Err(Problem::new(
            Kind::NoSuchSaga,
            format!("saga {saga_id} is gone (expired)"),
        ));
    };
    let definition = operator::definition(&mut conn, api.settings(), &record.state).await;
    let body = view(&record, definition.as_ref(), api.settings());
    let code = if ended {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(located(code, &saga_id, body))
}

/// True once `saga_id` ended (completed, compensated or failed) within
/// `wait`.
async fn ended_within(
    feed: &mut crate::http::feed::Subscription,
    saga_id: &str,
    wait: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, feed.next()).await {
            Err(_) => return Ok(false),
            Ok(Err(e)) => return Err(Problem::redis("cannot follow the events stream", e)),
            Ok(Ok(entry)) => {
                let field = |k: &str| entry.fields.get(k).map(|v| String::from_utf8_lossy(v));
                if field(f::SAGA_ID).as_deref() != Some(saga_id) {
                    continue;
                }
                let event = field(f::EVENT_TYPE).unwrap_or_default();
                if ["saga_completed", "saga_compensated", "saga_failed"].contains(&event.as_ref()) {
                    return Ok(true);
                }
            }
        }
    }
}

fn located(status: StatusCode, saga_id: &str, body: Value) -> Response {
    (
        status,
        [(header::LOCATION, format!("/v1/sagas/{saga_id}"))],
        Json(body),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneQuery {
    events: Option<bool>,
}

/// A saga id from a path: 32 hex digits (dashes and case ignored).
pub fn saga_id(text: &str) -> Result<SagaId> {
    let id: String = text
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    SagaId::parse(&id).ok_or_else(|| {
        Problem::new(
            Kind::BadRequest,
            format!(
                "`{}` is not a saga id (32 hex digits)",
                text.chars().take(64).collect::<String>()
            ),
        )
    })
}

/// The record of saga `id`, or `no-such-saga`.
pub async fn record(conn: &mut crate::connection::Conn, api: &Api, id: &SagaId) -> Result<Record> {
    operator::read(conn, api.settings(), id.as_str())
        .await
        .map_err(|e| Problem::new(Kind::Unavailable, e))?
        .ok_or_else(|| {
            Problem::new(
                Kind::NoSuchSaga,
                format!("no saga {id}: never started, or expired after its retention"),
            )
        })
}

/// `GET /v1/sagas/{id}`.
pub async fn one(
    State(api): State<Api>,
    _: Reader,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response> {
    let q: OneQuery = query(&uri)?;
    let id = saga_id(&id)?;
    let mut conn = api.conn().await?;
    let record = record(&mut conn, &api, &id).await?;
    let definition = operator::definition(&mut conn, api.settings(), &record.state).await;
    let mut body = view(&record, definition.as_ref(), api.settings());
    let keys = Keys::of(api.settings());
    let signals = crate::store::signals::kept(&mut conn, &keys, id.as_str())
        .await
        .map_err(|e| Problem::redis("cannot read the saga's signals", e))?;
    if !signals.is_empty() {
        body["signals"] = json!(signals);
    }
    if q.events == Some(true) {
        let events = super::events::kept(&mut conn, api.settings(), &record.state, None).await?;
        body["events"] = Value::Array(
            events
                .iter()
                .map(|e| crate::protocol::event::entry_json(&e.id, &e.fields))
                .collect(),
        );
    }
    Ok(Json(body).into_response())
}

/// The state a saga is listed under: its phase, with a failed saga stuck
/// (waiting for an operator) or abandoned, and a compensated one
/// cancelled when an operator cancelled it.
pub fn state_of(s: &SagaState) -> &'static str {
    match &s.phase {
        Phase::Running => "running",
        Phase::Compensating(_) => "compensating",
        Phase::Completed { .. } => "completed",
        Phase::Compensated { failure, .. } if failure.cancelled_by.is_some() => "cancelled",
        Phase::Compensated { .. } => "compensated",
        Phase::Failed(failed) if failed.abandoned_by.is_some() => "abandoned",
        Phase::Failed(_) => "stuck",
    }
}

/// A saga as the API shows it.
pub fn view(
    record: &Record,
    definition: Option<&SagaDefinition>,
    settings: &crate::config::Settings,
) -> Value {
    let s = &record.state;
    let step_name = |i: usize| {
        definition
            .and_then(|d| d.steps.get(i))
            .map_or_else(|| format!("step {i}"), |step| step.name.clone())
    };
    let units: Vec<Value> = s
        .work
        .units()
        .map(|(unit, state)| {
            let mut u = json!({
                "step": step_name(unit.step),
                "state": unit_state(state),
            });
            if let Some(branch) = unit.branch {
                u["branch"] = json!(branch);
                if let Some(item) = s.work.item(unit) {
                    u["item"] = item.value();
                }
            }
            match state {
                UnitState::Acting(x) | UnitState::Undoing(x) => {
                    u["attempt"] = json!(x.attempt);
                    u["request_id"] = json!(x.request_id);
                    u["sent_at_ms"] = json!(x.sent_at_ms);
                    u["timed_out"] = json!(x.timed_out);
                }
                UnitState::Completed { result: Some(r) } => u["result"] = r.value(),
                UnitState::Ended { effect_unknown } => u["effect_unknown"] = json!(effect_unknown),
                UnitState::Skipped { by_hand } => u["by_hand"] = json!(by_hand),
                UnitState::Stuck { error } => u["error"] = json!(error),
                UnitState::Awaiting(w) => {
                    u["signal"] = json!(w.signal);
                    u["since_ms"] = json!(w.since_ms);
                    u["deadline_ms"] = json!(w.deadline_ms);
                }
                _ => {}
            }
            u
        })
        .collect();
    let mut out = json!({
        "saga_id": s.saga_id,
        "saga": s.saga,
        "status": s.phase.status().as_str(),
        "state": state_of(s),
        "correlation_id": s.correlation_id,
        "trace_id": s.trace_id,
        "started_at_ms": s.started_at_ms,
        "ended_at_ms": s.phase.ended_at_ms(),
        "input": s.input.value(),
        "results": s.results.iter().map(|(k, v)| (k.clone(), v.value())).collect::<serde_json::Map<_, _>>(),
        "steps": definition.map(|d| d.steps.iter().map(|st| st.name.clone()).collect::<Vec<_>>()),
        "units": units,
        "owner": record.owner,
        "expires_in_secs": record.expires_in,
        "rescues": s.rescues,
        "links": {
            "self": format!("/v1/sagas/{}", s.saga_id),
            "events": format!("/v1/sagas/{}/events", s.saga_id),
        },
    });
    if let Some(failure) = s.phase.failure() {
        out["failure"] = json!(failure);
    }
    let stuck = stuck(s, definition);
    if !stuck.is_empty() {
        out["stuck"] = Value::Array(stuck);
    }
    if let Some(by) = s.abandoned_by() {
        out["abandoned_by"] = json!(by);
    }
    if let Some(paused) = &s.paused {
        out["paused"] = json!(paused);
    }
    if !s.locks.is_empty() {
        out["locks"] = json!(s.locks);
    }
    let waits: Vec<Value> = (s.work.steps.iter())
        .filter_map(|(&step, w)| {
            let l = w.locking.as_ref()?;
            Some(json!({
                "step": step_name(step),
                "lock": l.pending.first(),
                "pending": l.pending,
                "holder": l.holder,
                "ahead": l.ahead,
                "since_ms": l.since_ms,
                "deadline_ms": l.deadline_ms,
            }))
        })
        .collect();
    if !waits.is_empty() {
        out["lock_waits"] = Value::Array(waits);
    }
    if let Some(parked) = s.parked() {
        out["parked"] = json!(parked.reason);
    }
    if !settings.trace_url.is_empty() {
        out["links"]["trace"] = json!(settings
            .trace_url
            .replace("{trace_id}", s.trace_id.as_str()));
    }
    out
}

fn unit_state(state: &UnitState) -> &'static str {
    match state {
        UnitState::Acting(_) => "acting",
        UnitState::Awaiting(_) => "awaiting",
        UnitState::Completed { .. } => "completed",
        UnitState::Ended { .. } => "ended",
        UnitState::Undoing(_) => "undoing",
        UnitState::Undone => "undone",
        UnitState::Skipped { .. } => "skipped",
        UnitState::Stuck { .. } => "stuck",
    }
}

/// The states `GET /v1/sagas?state=` takes, with the index phases each is
/// found in.
const STATES: [(&str, &[&str]); 9] = [
    ("running", &["running", "compensating"]),
    ("compensating", &["compensating"]),
    ("completed", &["completed"]),
    ("compensated", &["compensated"]),
    ("cancelled", &["compensated"]),
    ("failed", &["failed"]),
    ("stuck", &["failed"]),
    ("abandoned", &["failed"]),
    ("ended", &["completed", "compensated", "failed"]),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    name: Option<String>,
    since: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    q: Option<String>,
}

/// `GET /v1/sagas?state=&name=&since=&cursor=&limit=&q=`: sagas newest
/// first by when they entered their phase, a page at a time.
pub async fn list(State(api): State<Api>, _: Reader, uri: Uri) -> Result<Response> {
    let q: ListQuery = query(&uri)?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Problem::new(
            Kind::BadRequest,
            format!("limit: 1 to {MAX_PAGE}"),
        ));
    }
    let phases: &[&str] = match &q.state {
        None => &[],
        Some(state) => STATES
            .iter()
            .find(|(name, _)| name == state)
            .map(|(_, phases)| *phases)
            .ok_or_else(|| {
                Problem::new(
                    Kind::BadRequest,
                    format!(
                        "state: `{}` is not one of {}",
                        state.chars().take(32).collect::<String>(),
                        STATES.map(|(n, _)| n).join(", ")
                    ),
                )
            })?,
    };
    let mut conn = api.conn().await?;
    // Measured back from Redis's clock, read only when asked for.
    let since_ms = match &q.since {
        None => 0,
        Some(text) => {
            let d = humantime::parse_duration(text.trim()).map_err(|e| {
                Problem::new(
                    Kind::BadRequest,
                    format!("since: `{text}` is not a duration like 1h or 7d: {e}"),
                )
            })?;
            let now = operator::redis_now_ms(&mut conn)
                .await
                .map_err(|e| Problem::new(Kind::Unavailable, e))?;
            now.saturating_sub(d.as_millis() as u64)
        }
    };
    let mut before = q.cursor.as_deref().map(parse_cursor).transpose()?;
    // A search by id or correlation id.
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if let Some(search) = search {
        if search.len() > crate::protocol::ids::MAX_CORRELATION_ID_LEN {
            return Err(Problem::new(Kind::BadRequest, "q: at most 128 characters"));
        }
    }
    let keys = Keys::of(api.settings());
    let mut sagas_out = Vec::new();
    let mut definitions: std::collections::HashMap<(String, String), Option<SagaDefinition>> =
        Default::default();
    let mut looked_at = 0;
    let mut next = None;
    'pages: while looked_at < operator::MAX_LISTED {
        let page = sagas::page(&mut conn, &keys, phases, since_ms, before.as_ref(), limit)
            .await
            .map_err(|e| Problem::redis("cannot list sagas", e))?;
        if page.is_empty() {
            break;
        }
        let ids: Vec<String> = page.iter().map(|c| c.saga_id.clone()).collect();
        let records = sagas::records(&mut conn, &keys, &ids)
            .await
            .map_err(|e| Problem::redis("cannot list sagas", e))?;
        let full = page.len() == limit;
        for (cursor, record) in page.into_iter().zip(records) {
            looked_at += 1;
            before = Some(cursor.clone());
            let Some(record) = record.map(Record::from) else {
                continue;
            };
            let s = &record.state;
            let state = state_of(s);
            let keep = q.state.as_deref().is_none_or(|want| {
                want == state
                    || (want == "running" && state == "compensating")
                    || (want == "failed" && (state == "stuck" || state == "abandoned"))
                    || (want == "ended" && s.phase.is_terminal())
            }) && q.name.as_deref().is_none_or(|n| n == s.saga)
                && search.is_none_or(|text| {
                    s.saga_id
                        .as_str()
                        .starts_with(&text.replace('-', "").to_ascii_lowercase())
                        || s.correlation_id.as_str() == text
                });
            if keep {
                // The definition names the steps a stuck saga is stuck on.
                let definition = match s.stuck().next() {
                    None => None,
                    Some(_) => {
                        let key = (s.saga.clone(), s.definition_version.clone());
                        if !definitions.contains_key(&key) {
                            let found = operator::definition(&mut conn, api.settings(), s).await;
                            definitions.insert(key.clone(), found);
                        }
                        definitions[&key].as_ref()
                    }
                };
                sagas_out.push(row(&record, cursor.at_ms, definition));
                if sagas_out.len() == limit {
                    next = Some(cursor);
                    break 'pages;
                }
            }
        }
        if !full {
            break;
        }
        next = before.clone();
    }
    if sagas_out.len() < limit && looked_at < operator::MAX_LISTED {
        next = None;
    }
    // A page that ends the index is the last: no cursor to an empty page.
    if let Some(at) = &next {
        let more = sagas::page(&mut conn, &keys, phases, since_ms, Some(at), 1)
            .await
            .map_err(|e| Problem::redis("cannot list sagas", e))?;
        if more.is_empty() {
            next = None;
        }
    }
    Ok(Json(json!({
        "sagas": sagas_out,
        "next_cursor": next.map(|c| format!("{}-{}", c.at_ms, c.saga_id)),
        "looked_at": looked_at,
    }))
    .into_response())
}

fn parse_cursor(text: &str) -> Result<Cursor> {
    let bad = || {
        Problem::new(
            Kind::BadRequest,
            "cursor: give back the next_cursor of the page before",
        )
    };
    let (at, id) = text.split_once('-').ok_or_else(bad)?;
    Ok(Cursor {
        at_ms: at.parse().map_err(|_| bad())?,
        saga_id: SagaId::parse(id).ok_or_else(bad)?.to_string(),
    })
}

/// One saga in a list.
fn row(record: &Record, at_ms: u64, definition: Option<&SagaDefinition>) -> Value {
    let s = &record.state;
    let mut row = json!({
        "saga_id": s.saga_id,
        "saga": s.saga,
        "state": state_of(s),
        "status": s.phase.status().as_str(),
        "correlation_id": s.correlation_id,
        "started_at_ms": s.started_at_ms,
        "ended_at_ms": s.phase.ended_at_ms(),
        "changed_at_ms": at_ms,
        "trace_id": s.trace_id,
    });
    if let Some(failure) = s.phase.failure() {
        row["failure"] = json!(failure);
    }
    if let Some(paused) = &s.paused {
        row["paused"] = json!(paused);
    }
    let stuck = stuck(s, definition);
    if !stuck.is_empty() {
        row["stuck"] = Value::Array(stuck);
    }
    row
}

/// The compensations a saga is stuck on: step (its name when the
/// definition is at hand, else its number), branch, error.
fn stuck(s: &SagaState, definition: Option<&SagaDefinition>) -> Vec<Value> {
    s.stuck()
        .map(|(unit, error)| {
            let step = definition
                .and_then(|d| d.steps.get(unit.step))
                .map_or_else(|| json!(unit.step), |step| json!(step.name));
            json!({"step": step, "branch": unit.branch, "error": error})
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    since: Option<String>,
}

/// `GET /v1/stats`: sagas kept, by phase (every saga not expired), and the
/// sagas of the last hour (or `?since=`) by name and state, from at most
/// [`operator::MAX_LISTED`] of them (`complete` says whether that was all);
/// counted again at most every [`super::STATS_FRESH`].
pub async fn stats(State(api): State<Api>, _: Reader, uri: Uri) -> Result<Response> {
    let q: StatsQuery = query(&uri)?;
    // Counted at most every STATS_FRESH for each window asked: many
    // dashboards open cost as much as one.
    let mut cached = api.0.stats.lock().await;
    let window_key = q.since.clone().unwrap_or_default();
    if let Some((at, key, body)) = cached.as_ref() {
        if *key == window_key && at.elapsed() < super::STATS_FRESH {
            return Ok(Json(body.clone()).into_response());
        }
    }
    let body = count(&api, q).await?;
    *cached = Some((Instant::now(), window_key, body.clone()));
    Ok(Json(body).into_response())
}

async fn count(api: &Api, q: StatsQuery) -> Result<Value> {
    let window = match q.since.as_deref() {
        None => Duration::from_secs(3600),
        Some(text) => humantime::parse_duration(text.trim()).map_err(|e| {
            Problem::new(
                Kind::BadRequest,
                format!("since: `{text}` is not a duration like 1h: {e}"),
            )
        })?,
    };
    let mut conn = api.conn().await?;
    let keys = Keys::of(api.settings());
    let by_phase = sagas::counts(&mut conn, &keys)
        .await
        .map_err(|e| Problem::redis("cannot count sagas", e))?;
    let now = operator::redis_now_ms(&mut conn)
        .await
        .map_err(|e| Problem::new(Kind::Unavailable, e))?;
    let since_ms = now.saturating_sub(window.as_millis() as u64);
    let page = sagas::page(&mut conn, &keys, &[], since_ms, None, operator::MAX_LISTED)
        .await
        .map_err(|e| Problem::redis("cannot list sagas", e))?;
    let complete = page.len() < operator::MAX_LISTED;
    let ids: Vec<String> = page.into_iter().map(|c| c.saga_id).collect();
    let mut by_saga: std::collections::BTreeMap<String, std::collections::BTreeMap<&str, u64>> =
        Default::default();
    for chunk in ids.chunks(sagas::RECORDS_PER_PIPELINE) {
        let records = sagas::records(&mut conn, &keys, chunk)
            .await
            .map_err(|e| Problem::redis("cannot read sagas", e))?;
        for record in records.into_iter().flatten() {
            *by_saga
                .entry(record.state.saga.clone())
                .or_default()
                .entry(state_of(&record.state))
                .or_default() += 1;
        }
    }
    Ok(json!({
        "by_phase": by_phase.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "recent": {
            "since_ms": since_ms,
            "by_saga": by_saga,
            "complete": complete,
        },
    }))
}
