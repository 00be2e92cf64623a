//! Errors as `application/problem+json` (RFC 9457): each kind of error has
//! a stable `type` (a URI under [`TYPE_BASE`]) that clients may match on,
//! a `title` that never changes for that type, and a `detail` for this
//! occurrence.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Where the problem types are described (`docs/http.md`, "Errors").
pub const TYPE_BASE: &str = "https://sagaflow.dev/problems/";

/// Every kind of error the API answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The body is not JSON, not an object, or breaks a limit of the
    /// protocol (depth, number of values).
    BadBody,
    /// A header (`X-Request-ID`, `Idempotency-Key`, `traceparent`) or a
    /// query parameter is malformed.
    BadRequest,
    /// The body is larger than the endpoint takes.
    TooLarge,
    /// No bearer token, or one no daemon knows.
    Unauthorized,
    /// The token is known but may not do this (a read token writing).
    Forbidden,
    /// No such saga (never started, or expired after its retention).
    NoSuchSaga,
    /// No definition of that name on this daemon.
    NoSuchDefinition,
    /// The saga is in no state for this request (cancel an ended saga,
    /// retry one that is not stuck).
    Conflict,
    /// The daemons refused the start (its reason in `detail`).
    StartRejected,
    /// The daemon driving the saga refused the operator's request.
    Refused,
    /// Redis cannot be reached or answered with an error.
    Unavailable,
    /// Too many open event streams, or too many requests waiting.
    Busy,
    /// No daemon answered within the time the request waits.
    NoAnswer,
    /// No such path, or no such method on it.
    NotFound,
    MethodNotAllowed,
}

impl Kind {
    pub fn slug(self) -> &'static str {
        match self {
            Kind::BadBody => "bad-body",
            Kind::BadRequest => "bad-request",
            Kind::TooLarge => "too-large",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::NoSuchSaga => "no-such-saga",
            Kind::NoSuchDefinition => "no-such-definition",
            Kind::Conflict => "conflict",
            Kind::StartRejected => "start-rejected",
            Kind::Refused => "refused",
            Kind::Unavailable => "unavailable",
            Kind::Busy => "busy",
            Kind::NoAnswer => "no-answer",
            Kind::NotFound => "not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadBody | Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NoSuchSaga | Kind::NoSuchDefinition | Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict | Kind::Refused => StatusCode::CONFLICT,
            Kind::StartRejected => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Unavailable | Kind::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Kind::NoAnswer => StatusCode::GATEWAY_TIMEOUT,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::BadBody => "The request body cannot be used",
            Kind::BadRequest => "A header or parameter is malformed",
            Kind::TooLarge => "The request body is too large",
            Kind::Unauthorized => "A valid bearer token is needed",
            Kind::Forbidden => "The token may not do this",
            Kind::NoSuchSaga => "No such saga",
            Kind::NoSuchDefinition => "No saga definition of that name",
            Kind::Conflict => "The saga is in no state for this",
            Kind::StartRejected => "The start was rejected",
            Kind::Refused => "The daemon refused the request",
            Kind::Unavailable => "Redis is unavailable",
            Kind::Busy => "Too busy to take this now",
            Kind::NoAnswer => "No daemon answered in time",
            Kind::NotFound => "Not found",
            Kind::MethodNotAllowed => "Method not allowed",
        }
    }

    /// Every kind, for the document that lists them.
    pub const ALL: [Kind; 15] = [
        Kind::BadBody,
        Kind::BadRequest,
        Kind::TooLarge,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::NoSuchSaga,
        Kind::NoSuchDefinition,
        Kind::Conflict,
        Kind::StartRejected,
        Kind::Refused,
        Kind::Unavailable,
        Kind::Busy,
        Kind::NoAnswer,
        Kind::NotFound,
        Kind::MethodNotAllowed,
    ];
}

/// One error response.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: Kind,
    pub detail: String,
    /// Members added to the document (`saga_id`, `retry_after`, ...).
    pub extra: Map<String, Value>,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(name.to_owned(), value.into());
        self
    }

    /// Redis failed: what was being done, and its error.
    pub fn redis(doing: &str, e: impl std::fmt::Display) -> Self {
        Self::new(Kind::Unavailable, format!("{doing}: {e}"))
    }

    pub fn document(&self) -> Value {
        let mut doc = json!({
            "type": format!("{TYPE_BASE}{}", self.kind.slug()),
            "title": self.kind.title(),
            "status": self.kind.status().as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(doc) = &mut doc {
            doc.extend(self.extra.clone());
        }
        doc
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.slug(), self.detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.kind.status(), self.document().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self.kind {
            Kind::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sagaflow\""),
                );
            }
            Kind::Busy | Kind::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

pub type Result<T> = std::result::Result<T, Problem>;
