//! The span exporter's wrapper: an unreachable collector is one warning,
//! not one error per batch, and never the daemon's problem.

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub(super) struct WarnOnce<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E> WarnOnce<E> {
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for WarnOnce<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        match self.inner.export(batch).await {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "sagaflow::telemetry", "spans are exported again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "sagaflow::telemetry", error = %e, "cannot export spans to the OTLP collector; spans are dropped until it is back");
                }
                tracing::debug!(target: "sagaflow::telemetry", spans = n, "spans dropped");
            }
        }
        // The spans are dropped either way: an error would only make the
        // SDK log the same failure again.
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
