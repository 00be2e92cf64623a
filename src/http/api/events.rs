//! Events as Server-Sent Events: one saga's (`/v1/sagas/{id}/events`,
//! from its start, then live, closed once the saga has ended for good) and
//! every saga's (`/v1/events`, live). Each event's SSE `id` is its entry
//! id on the events stream: a client reconnecting with `Last-Event-ID`
//! gets every event after it that the stream still keeps
//! (`events_maxlen`), then the live ones, each once.

use super::problem::{Kind, Problem, Result};
use super::{Api, Reader};
use crate::config::Settings;
use crate::http::feed::Subscription;
use crate::protocol::event::entry_json;
use crate::protocol::fields as f;
use crate::saga::{Phase, SagaState};
use crate::streams::{self, Entry, StreamId};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Entries read per `XRANGE` when replaying.
const PAGE: usize = 1000;

/// How far before a saga's start its events are looked for: the clocks of
/// the nodes of a cluster may differ by this much.
const CLOCK_SLACK_MS: u64 = 60_000;

/// Comments sent on an idle stream, so that proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The events of `saga` still on the events stream, oldest first, after
/// `after` (when given); read from the saga's start on, at most the whole
/// stream (`events_maxlen` entries), 5,000 at a time.
pub async fn kept<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga: &SagaState,
    after: Option<StreamId>,
) -> Result<Vec<Entry>> {
    let from_start = StreamId::at_ms(saga.started_at_ms.saturating_sub(CLOCK_SLACK_MS));
    let from = match after {
        Some(after) if after >= from_start => format!("({after}"),
        _ => from_start.to_string(),
    };
    crate::operator::events_from(conn, settings, saga.saga_id.as_str(), &from)
        .await
        .map_err(|e| Problem::new(Kind::Unavailable, e))
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<StreamId>> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(StreamId::parse)
        .map(Some)
        .ok_or_else(|| {
            Problem::new(
                Kind::BadRequest,
                "Last-Event-ID is not the id of an event this API sent (like 1700000000000-0)",
            )
        })
}

fn sse_event(entry: &Entry) -> Event {
    let kind = entry
        .fields
        .get(f::EVENT_TYPE)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "event".into());
    Event::default()
        .id(entry.id.clone())
        .event(kind)
        .data(entry_json(&entry.id, &entry.fields).to_string())
}

/// After this event nothing more happens to the saga: completed,
/// compensated, or given up by an operator.
fn is_last(entry: &Entry) -> bool {
    let field = |k: &str| entry.fields.get(k).map(|v| String::from_utf8_lossy(v));
    match field(f::EVENT_TYPE).as_deref() {
        Some("saga_completed" | "saga_compensated") => true,
        Some("operator_action") => {
            let payload: serde_json::Value =
                serde_json::from_str(&field(f::PAYLOAD).unwrap_or_default()).unwrap_or_default();
            payload["action"] == "abandon" && payload.get("refused").is_none()
        }
        _ => false,
    }
}

/// Whether nothing more will happen to a saga in this state.
fn over(state: &SagaState) -> bool {
    match &state.phase {
        Phase::Completed { .. } | Phase::Compensated { .. } => true,
        Phase::Failed(failed) => failed.abandoned_by.is_some(),
        Phase::Running | Phase::Compensating(_) => false,
    }
}

/// What a stream of events goes through: the events read before going
/// live, then the live ones, of one saga or of all.
struct Follow {
    past: VecDeque<Entry>,
    /// More of the past still to read, a page at a time.
    replay: Option<Replay>,
    live: Subscription,
    saga_id: Option<String>,
    /// Nothing more is sent: the saga is over, or the daemon stops.
    done: bool,
    shutdown: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Follow {
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            if self.past.is_empty() {
                if let Some(replay) = &mut self.replay {
                    match replay.page().await {
                        Ok(Some(page)) => self.past.extend(page),
                        Ok(None) => self.replay = None,
                        Err(e) => {
                            self.done = true;
                            return Some(Event::default().event("error").data(e.to_string()));
                        }
                    }
                    continue;
                }
            }
            let entry: Arc<Entry> = match self.past.pop_front() {
                Some(entry) => Arc::new(entry),
                None => tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    next = self.live.next() => match next {
                        Ok(entry) => entry,
                        Err(e) => {
                            self.done = true;
                            return Some(Event::default().event("error").data(e.to_string()));
                        }
                    },
                },
            };
            if let Some(id) = &self.saga_id {
                if entry.fields.get(f::SAGA_ID).map(Vec::as_slice) != Some(id.as_bytes()) {
                    continue;
                }
                self.done = is_last(&entry);
            }
            return Some(sse_event(&entry));
        }
    }

    fn into_sse(self) -> Response {
        let events = stream::unfold(self, |mut follow| async move {
            let event = follow.next().await?;
            Some((Ok::<_, Infallible>(event), follow))
        });
        sse(events)
    }
}

fn sse(
    events: impl Stream<Item = std::result::Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn stream_slot(api: &Api) -> Result<tokio::sync::OwnedSemaphorePermit> {
    api.0.streams.clone().try_acquire_owned().map_err(|_| {
        Problem::new(
            Kind::Busy,
            format!(
                "{} event streams are open already",
                api.0.limits.event_streams
            ),
        )
    })
}

/// `GET /v1/sagas/{id}/events`.
pub async fn of_saga(
    State(api): State<Api>,
    _: Reader,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let id = super::sagas::saga_id(&id)?;
    let after = last_event_id(&headers)?;
    let permit = stream_slot(&api)?;
    // Subscribed before the past is read: nothing falls between.
    let mut live = api.subscribe().await?;
    let mut conn = api.conn().await?;
    let record = super::sagas::record(&mut conn, &api, &id).await?;
    let past = kept(&mut conn, api.settings(), &record.state, after).await?;
    if let Some(last) = past.last() {
        live.skip_to(&last.id);
    }
    // Over already: what is kept, then the stream ends.
    let done_after_past = over(&record.state);
    let follow = Follow {
        done: false,
        past: past.into(),
        replay: None,
        live,
        saga_id: Some(id.to_string()),
        shutdown: api.0.shutdown.clone(),
        _permit: permit,
    };
    if done_after_past {
        let events: Vec<std::result::Result<Event, Infallible>> =
            follow.past.iter().map(|e| Ok(sse_event(e))).collect();
        return Ok(sse(stream::iter(events)));
    }
    Ok(follow.into_sse())
}

/// `GET /v1/events`: every saga's events from now on (after
/// `Last-Event-ID` when given).
pub async fn all(State(api): State<Api>, _: Reader, headers: HeaderMap) -> Result<Response> {
    let after = last_event_id(&headers)?;
    let permit = stream_slot(&api)?;
    let live = api.subscribe().await?;
    let replay = match after {
        Some(after) => Some(Replay {
            conn: api.conn().await?,
            stream: api.settings().events_stream.clone(),
            from: format!("({after}"),
            to: live.position(),
        }),
        None => None,
    };
    Ok(Follow {
        past: VecDeque::new(),
        replay,
        live,
        saga_id: None,
        done: false,
        shutdown: api.0.shutdown.clone(),
        _permit: permit,
    }
    .into_sse())
}

/// Entries of the events stream between an id a client gave and where the
/// live feed began, read [`PAGE`] at a time as the client takes them.
struct Replay {
    conn: crate::connection::Conn,
    stream: String,
    /// `(<id>`: after the last entry read.
    from: String,
    to: Option<StreamId>,
}

impl Replay {
    /// The next page; `None` once there is no more.
    async fn page(&mut self) -> Result<Option<Vec<Entry>>> {
        let Some(to) = self.to else { return Ok(None) };
        let batch = streams::range(
            &mut self.conn,
            &self.stream,
            &self.from,
            &to.to_string(),
            PAGE,
        )
        .await
        .map_err(|e| Problem::redis("cannot read the events stream", e))?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        self.from = format!("({}", last.id);
        if batch.len() < PAGE {
            self.to = None;
        }
        Ok(Some(batch))
    }
}
