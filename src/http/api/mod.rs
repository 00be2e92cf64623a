//! The HTTP API, `/v1`: start sagas, read them, follow their events, and
//! carry out operators' requests, send sagas signals, over JSON, with errors as
//! `application/problem+json`. Described by `GET /v1/openapi.json` and
//! `docs/http.md`.
//!
//! The API works through Redis as the CLI does, never through the engine:
//! a start is written to the trigger stream (taken by whichever daemon
//! reads it first), an operator's request to the control stream (carried
//! out by the daemon driving the saga), a signal to the signals stream
//! (kept by whichever daemon reads it), and sagas are read from the store.
//! So any daemon's API answers for every saga of the deployment.
//!
//! # Bounds
//! - Request bodies: [`MAX_BODY_BYTES`] (a start's input, as the protocol
//!   takes it); headers: hyper's (at most 100, 400 KiB in all).
//! - Requests waiting for the daemons (starts, `?wait`, operators'
//!   requests, signals): [`MAX_WAITING`] at once; `?wait` at most [`MAX_WAIT`].
//! - Event streams open at once: [`MAX_EVENT_STREAMS`].
//! - Listing: at most [`crate::operator::MAX_LISTED`] index entries looked
//!   at per page, pages of at most [`MAX_PAGE`] sagas.
//! - Locks: at most [`crate::operator::locks::MAX_SAGAS_LOOKED_AT`] saga
//!   records looked at and [`crate::operator::locks::MAX_LOCKS_LISTED`]
//!   locks read per listing.

mod events;
mod locks;
mod operate;
pub mod problem;
mod sagas;
mod signals;

use super::access::{ApiToken, ApiTokens, ReadAccess, Scope};
use super::feed::Feed;
use crate::config::Settings;
use crate::connection::{Client, Conn};
use crate::protocol::CorrelationId;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use problem::{Kind, Problem};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

/// Largest request body taken: a start's whole entry may be this large.
pub const MAX_BODY_BYTES: usize = crate::protocol::limits::MAX_START_ENTRY_BYTES;

/// Requests waiting on the daemons at once (starts waiting to be taken,
/// `?wait`, operators' requests waiting for their answer); more are
/// answered `503 busy`.
pub const MAX_WAITING: usize = 1024;

/// Event streams (SSE) open at once; more are answered `503 busy`.
pub const MAX_EVENT_STREAMS: usize = 512;

/// Longest `?wait` taken.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Sagas per page of `GET /v1/sagas` at most (and by default, 50).
pub const MAX_PAGE: usize = 500;

/// How long a start waits for a daemon to take it, and an operator's
/// request for its answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How long counts of `/v1/stats` are answered again before they are
/// counted anew.
pub const STATS_FRESH: Duration = Duration::from_secs(2);

/// How long one Redis command of the API may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How much the API takes on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests waiting on the daemons ([`MAX_WAITING`] by default).
    pub waiting: usize,
    /// Event streams open ([`MAX_EVENT_STREAMS`] by default).
    pub event_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            waiting: MAX_WAITING,
            event_streams: MAX_EVENT_STREAMS,
        }
    }
}

/// What the API's handlers share.
#[derive(Clone)]
pub struct Api(Arc<Shared>);

struct Shared {
    settings: Settings,
    /// The sagas this daemon has a definition of.
    definitions: BTreeSet<String>,
    /// Connected at the first request that needs Redis; a failed attempt
    /// is tried again by the next.
    redis: OnceCell<(Client, Conn, Feed)>,
    limits: Limits,
    waiting: Semaphore,
    streams: Arc<Semaphore>,
    /// The last counts of `/v1/stats`: when, for which window, what.
    stats: tokio::sync::Mutex<Option<(tokio::time::Instant, String, serde_json::Value)>>,
    shutdown: CancellationToken,
}

impl Api {
    pub fn new(
        settings: Settings,
        definitions: BTreeSet<String>,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_limits(settings, definitions, Limits::default(), shutdown)
    }

    pub fn with_limits(
        settings: Settings,
        definitions: BTreeSet<String>,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Self(Arc::new(Shared {
            settings,
            definitions,
            redis: OnceCell::new(),
            limits,
            waiting: Semaphore::new(limits.waiting),
            streams: Arc::new(Semaphore::new(limits.event_streams)),
            stats: Default::default(),
            shutdown,
        }))
    }

    fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// The command connection (cheap to clone), reaching Redis first if
    /// it was not reached yet.
    async fn conn(&self) -> problem::Result<Conn> {
        Ok(self.redis().await?.1.clone())
    }

    async fn redis(&self) -> problem::Result<&(Client, Conn, Feed)> {
        let settings = &self.0.settings;
        self.0
            .redis
            .get_or_try_init(|| async {
                let shown = crate::config::redacted(&settings.redis_url);
                let unreachable = |e: String| {
                    Problem::new(
                        Kind::Unavailable,
                        format!("cannot reach Redis at {shown}: {e}"),
                    )
                };
                let client = crate::config::client(&settings.redis_url)
                    .map_err(|e| unreachable(e.to_string()))?;
                let client = Client::resolve(client, settings.redis_mode)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let conn = client
                    .commands(COMMAND_TIMEOUT)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let feed = Feed::start(
                    client.clone(),
                    settings.events_stream.clone(),
                    self.0.shutdown.clone(),
                )
                .await
                .map_err(|e| unreachable(e.to_string()))?;
                Ok((client, conn, feed))
            })
            .await
    }

    /// A subscription to the events stream from now on. It catches up on
    /// the shared command connection (its reads do not block), so a
    /// request costs no connection of its own.
    async fn subscribe(&self) -> problem::Result<super::feed::Subscription> {
        let (_, conn, feed) = self.redis().await?;
        feed.subscribe(conn.clone())
            .await
            .map_err(|e| Problem::redis("cannot read the events stream", e))
    }

    /// A place among the requests waiting on the daemons.
    fn wait_slot(&self) -> problem::Result<tokio::sync::SemaphorePermit<'_>> {
        self.0.waiting.try_acquire().map_err(|_| {
            Problem::new(
                Kind::Busy,
                format!(
                    "{} requests are waiting on the daemons already",
                    self.0.limits.waiting
                ),
            )
        })
    }
}

/// The routes under `/v1`.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/v1", get(index))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/access", get(access))
        .route("/v1/definitions", get(sagas::definitions))
        .route(
            "/v1/definitions/{name}/{action}",
            post(operate::name_request),
        )
        .route("/v1/sagas", get(sagas::list))
        .route("/v1/stats", get(sagas::stats))
        .route("/v1/sagas/{saga}", post(sagas::start).get(sagas::one))
        .route("/v1/sagas/{saga}/events", get(events::of_saga))
        .route("/v1/events", get(events::all))
        .route("/v1/locks", get(locks::list))
        .route("/v1/locks/{*lock}", get(locks::one))
        .route("/v1/sagas/{saga}/{action}", post(operate::request))
        .route("/v1/sagas/{saga}/signals/{name}", post(signals::send))
        .route("/v1/{*rest}", axum::routing::any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

async fn index() -> Response {
    axum::Json(serde_json::json!({
        "openapi": "/v1/openapi.json",
        "sagas": "/v1/sagas",
        "events": "/v1/events",
        "stats": "/v1/stats",
        "definitions": "/v1/definitions",
        "locks": "/v1/locks",
    }))
    .into_response()
}

/// `GET /v1/access`: what the caller's token allows (none given: what
/// anyone may do), so that a client shows only what it can do.
async fn access(
    axum::extract::State(api): axum::extract::State<Api>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let token = bearer(&headers, &api.settings().api_tokens)?;
    let read = api.settings().api_read;
    Ok(axum::Json(serde_json::json!({
        "name": token.as_ref().map(|t| t.name.clone()),
        "scope": token.as_ref().map(|t| t.scope.as_str()),
        "read": token.is_some() || read == ReadAccess::Open,
        "write": token.as_ref().is_some_and(|t| t.scope == Scope::Write),
        "trace_url": (!api.settings().trace_url.is_empty()).then(|| api.settings().trace_url.clone()),
    }))
    .into_response())
}

/// The OpenAPI document of the API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> Problem {
    Problem::new(Kind::NotFound, "no such endpoint: see /v1/openapi.json")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        Kind::MethodNotAllowed,
        "this endpoint takes another method: see /v1/openapi.json",
    )
}

/// The request's id: the caller's `X-Request-ID`, or a new one. It becomes
/// the correlation id of a saga the request starts.
#[derive(Clone, Debug)]
pub struct RequestId(pub CorrelationId);

/// Reads or makes the request's id, refuses a malformed one, and echoes it
/// on every response; no response may be sniffed for another type.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let given = request.headers().get(&X_REQUEST_ID).map(|v| {
        v.to_str()
            .map_err(|_| "X-Request-ID is not printable ASCII".to_owned())
            .and_then(|s| {
                CorrelationId::parse(s).map_err(|e| e.replace("correlation_id", "X-Request-ID"))
            })
    });
    let (id, bad) = match given {
        Some(Ok(id)) => (id, None),
        Some(Err(why)) => (CorrelationId::generate(), Some(why)),
        None => (CorrelationId::generate(), None),
    };
    let mut response = match bad {
        Some(why) => Problem::new(Kind::BadRequest, why).into_response(),
        None => {
            request.extensions_mut().insert(RequestId(id.clone()));
            next.run(request).await
        }
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        headers.insert(X_REQUEST_ID, value);
    }
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    response
}

/// Who made a request, proven by a token.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name; `None` for an open read without a token.
    pub name: Option<String>,
}

fn bearer(headers: &HeaderMap, tokens: &ApiTokens) -> Result<Option<ApiToken>, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            Problem::new(
                Kind::Unauthorized,
                "the Authorization header is not `Bearer <token>`",
            )
        })?;
    tokens.find(presented).cloned().map(Some).ok_or_else(|| {
        Problem::new(
            Kind::Unauthorized,
            "the bearer token is not one this daemon knows",
        )
    })
}

/// A caller allowed to read: any known token, or anyone when `api_read` is
/// `open`.
pub struct Reader(#[allow(dead_code)] pub Caller);

impl FromRequestParts<Api> for Reader {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Problem> {
        let token = bearer(&parts.headers, &api.settings().api_tokens)?;
        match (token, api.settings().api_read) {
            (Some(token), _) => Ok(Reader(Caller {
                name: Some(token.name),
            })),
            (None, ReadAccess::Open) => Ok(Reader(Caller { name: None })),
            (None, ReadAccess::Token) => Err(Problem::new(
                Kind::Unauthorized,
                "reading needs a bearer token (Authorization: Bearer <token>)",
            )),
        }
    }
}

/// A caller allowed to write: a `write` token. Its name is the operator
/// the daemons record.
pub struct Writer(pub ApiToken);

impl FromRequestParts<Api> for Writer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Problem> {
        match bearer(&parts.headers, &api.settings().api_tokens)? {
            Some(token) if token.scope == Scope::Write => Ok(Writer(token)),
            Some(token) => Err(Problem::new(
                Kind::Forbidden,
                format!(
                    "token `{}` may read only; this needs a write token",
                    token.name
                ),
            )),
            None => Err(Problem::new(
                Kind::Unauthorized,
                "this needs a write token (Authorization: Bearer <token>)",
            )),
        }
    }
}

/// A request's body, at most [`MAX_BODY_BYTES`]; a larger one is a
/// `413 too-large` problem.
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => Err(Problem::new(
                Kind::TooLarge,
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            )
            .with("limit", MAX_BODY_BYTES)),
            Err(e) => Err(Problem::new(
                Kind::BadBody,
                format!("cannot read the body: {}", e.body_text()),
            )),
        }
    }
}

/// A duration in a query: `30s`, `500ms`, `2m`.
fn parse_wait(text: &str) -> problem::Result<Duration> {
    let wait = humantime::parse_duration(text.trim()).map_err(|e| {
        Problem::new(
            Kind::BadRequest,
            format!("wait: `{text}` is not a duration like 30s or 500ms: {e}"),
        )
    })?;
    if wait > MAX_WAIT {
        return Err(Problem::new(
            Kind::BadRequest,
            format!("wait: at most {}s", MAX_WAIT.as_secs()),
        ));
    }
    Ok(wait)
}

/// A query string read into `T`, its mistakes as problems.
fn query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> problem::Result<T> {
    axum::extract::Query::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| {
            Problem::new(
                Kind::BadRequest,
                format!("the query string: {}", e.body_text()),
            )
        })
}
