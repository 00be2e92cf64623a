//! The HTTP API served in this process over a test daemon, with a write
//! token (named after the test operator's key) and a read token.

use super::{start_daemon_with, test_settings, Backend, Ran, Running, OPERATOR_KEY};
use sagaflow::config::Settings;
use sagaflow::definition::Catalog;
use sagaflow::http::access::{new_token, ApiToken, ApiTokens, Scope};
use sagaflow::http::api::{Api, Limits};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Served {
    pub base: String,
    pub write: String,
    pub read: String,
    pub settings: Settings,
    pub http: reqwest::Client,
    daemon: Option<Running<Ran>>,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<()>>,
}

/// The name of the write token: the test operator's key's.
pub fn writer_name() -> &'static str {
    OPERATOR_KEY.split(':').next().expect("name:secret")
}

impl Served {
    /// A daemon on `server` with `catalog`, its API on a free port, with
    /// `tweak` applied to the settings.
    pub async fn start(
        server: &impl Backend,
        catalog: Catalog,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        Self::start_with(server, catalog, tweak, Limits::default()).await
    }

    /// [`Served::start`] with the API's limits given.
    pub async fn start_with(
        server: &impl Backend,
        catalog: Catalog,
        tweak: impl FnOnce(&mut Settings),
        limits: Limits,
    ) -> Self {
        let (write, read) = (new_token(), new_token());
        let mut settings = test_settings(server);
        settings.api_tokens = ApiTokens::parse(&format!(
            "{},{}",
            ApiToken::entry(writer_name(), Scope::Write, &write),
            ApiToken::entry("viewer", Scope::Read, &read)
        ))
        .expect("the test tokens");
        tweak(&mut settings);
        let names = catalog.names().into_iter().map(str::to_owned).collect();
        let daemon = start_daemon_with(settings.clone(), catalog).await;
        let shutdown = CancellationToken::new();
        let (listener, addr) = sagaflow::http::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("a free port");
        let api = Api::with_limits(settings.clone(), names, limits, shutdown.clone());
        let served = tokio::spawn(sagaflow::http::serve(
            listener,
            None,
            Arc::new(Vec::new),
            Some(api),
            shutdown.clone(),
        ));
        Self {
            base: format!("http://{addr}"),
            write,
            read,
            settings,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
            daemon: Some(daemon),
            shutdown,
            served: Some(served),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.read)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(&self.write)
    }

    /// The daemon stops; the API keeps serving (and says Redis' troubles).
    pub async fn stop_daemon(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            super::must("the HTTP server's stop", served).await;
        }
        self.stop_daemon().await;
    }
}

/// A response's status, headers and body as JSON (`Null` when not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The problem's type, after the base.
    pub fn problem(&self) -> &str {
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{}",
            self.text
        );
        self.body["type"]
            .as_str()
            .and_then(|t| t.rsplit('/').next())
            .unwrap_or("")
    }
}

/// The longest a request may take: a start may wait 10 s for a daemon to
/// take it, `?wait` up to its own duration (30 s at most in these tests).
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(45);

pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = tokio::time::timeout(REQUEST_WAIT, request.send())
        .await
        .unwrap_or_else(|_| panic!("an HTTP request took longer than {REQUEST_WAIT:?}"))
        .expect("the API answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default)]
pub struct Sse {
    pub id: String,
    pub event: String,
    pub data: Value,
}

/// Reads Server-Sent Events from a response until `done` says so, or the
/// stream ends; at most `within`.
pub async fn read_sse(
    response: reqwest::Response,
    within: Duration,
    mut done: impl FnMut(&[Sse]) -> bool,
) -> Vec<Sse> {
    use futures_util::StreamExt;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events: Vec<Sse> = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if done(&events) {
            return events;
        }
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => panic!("the events awaited did not come within {within:?}: {events:#?}"),
            Ok(None) => return events,
            Ok(Some(chunk)) => chunk.expect("the event stream"),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = Sse::default();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    event.id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event.event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if event.event.is_empty() && data.is_empty() {
                continue; // a keep-alive comment
            }
            event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            events.push(event);
        }
    }
}

/// A loopback address with a free port, for a daemon process's
/// `--http-addr`.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").to_string()
}

/// A write token for the test operator and its `api_tokens` entry, for a
/// daemon process (`SAGAFLOW_API_TOKENS`).
pub fn write_token() -> (String, String) {
    let token = new_token();
    let entry = ApiToken::entry(writer_name(), Scope::Write, &token);
    (token, entry)
}
