//! The daemon's HTTP endpoints: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive), `/readyz` (it can do its work:
//! Redis reachable, definitions loaded, not stopping), and the API under
//! `/v1` ([`api`]) with the web dashboard at `/` ([`dashboard`]).

pub mod access;
pub mod api;
pub mod dashboard;
mod feed;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the daemon is not ready now; empty when it is.
pub type Readiness = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

#[derive(Clone)]
struct Endpoints {
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
}

/// Where `--http-addr` points: an address, or nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

impl std::str::FromStr for HttpAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(HttpAddr(None));
        }
        s.trim()
            .parse()
            .map(|a| HttpAddr(Some(a)))
            .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:9464, nor `none`"))
    }
}

/// The address of the `http_addr` setting: `None` for `none`.
pub fn parse_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    s.parse::<HttpAddr>()
        .map(|a| a.0)
        .map_err(|why| format!("http_addr: {why}"))
}

/// Takes the address, so that a port in use is an error at start-up.
/// Returns the listener and the address it took: with port 0, the port
/// the system chose, which is what scrapers need to know.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve HTTP on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot tell the address HTTP is served on ({addr}): {e}"))?;
    Ok((listener, bound))
}

/// Serves the endpoints until `shutdown`; the API and the dashboard too
/// when given.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
    api: Option<api::Api>,
    shutdown: CancellationToken,
) {
    let mut app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoints { metrics, readiness });
    if let Some(api) = api {
        app = app.merge(api::routes(api)).merge(dashboard::routes());
    }
    let app = app.layer(axum::middleware::from_fn(api::request_id));
    let stopped = async move { shutdown.cancelled().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "the HTTP endpoints stopped");
    }
}

async fn metrics_text(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let ready = (endpoints.readiness)().is_empty();
    crate::telemetry::metrics::ready(ready);
    match &endpoints.metrics {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        ),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics are not recorded by this process\n".to_owned(),
        ),
    }
}

async fn ready(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let not_ready = (endpoints.readiness)();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join("; ")),
        )
    }
}
