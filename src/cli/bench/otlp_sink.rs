//! A trace collector that counts spans and keeps none, for measuring what
//! exporting costs the daemon and the handlers (`sagaflow bench --otlp`).
//! It runs in the benchmark's own process: its CPU is counted with the load
//! generator's.

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct OtlpSink {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the processes that export here.
    pub endpoint: String,
    spans: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl OtlpSink {
    /// Listens on a free loopback port for OTLP over HTTP/protobuf.
    pub async fn start() -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot start the OTLP sink: {e}"))?;
        let endpoint = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let spans = Arc::new(AtomicU64::new(0));
        let counted = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let counted = counted.clone();
                async move {
                    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
                        let n: usize = request
                            .resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans)
                            .map(|s| s.spans.len())
                            .sum();
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self {
            endpoint,
            spans,
            stop,
        })
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
