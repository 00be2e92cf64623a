//! Logs, traces and metrics: the `tracing` subscriber (pretty or JSON), the
//! OpenTelemetry tracer provider exporting over OTLP, the spans of sagas and
//! of handled commands, and the Prometheus metrics.
//!
//! The OTLP exporter is configured by the standard environment variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, ...). With no endpoint
//! set there is no exporter at all, and the spans cost nothing.

mod export;
pub mod handler;
pub mod ids;
pub mod metrics;
pub mod names;
pub mod saga;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line, with the fields of the spans it is in.
    Json,
    /// For people: coloured on a terminal.
    Pretty,
}

impl LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    }
}

/// What [`init`] needs to know.
pub struct Options {
    /// `RUST_LOG` when unset.
    pub default_level: &'static str,
    pub log_format: Option<LogFormat>,
    /// The service name when `OTEL_SERVICE_NAME` is unset.
    pub service_name: &'static str,
    /// Whether `tracing` spans outside the daemon's internals become
    /// OpenTelemetry spans: on for handlers, so that a handler's own spans
    /// and log events join the command's trace.
    pub bridge_tracing_spans: bool,
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The name of the instrumentation scope of every span made here.
pub const TRACER_NAME: &str = "sagaflow";

/// Set once spans are exported: without it, sagas build no spans at all.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans.
pub fn exporting_spans() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the subscriber, and the tracer provider when an endpoint is
/// configured. Call it once, inside the Tokio runtime (the gRPC exporter
/// needs it).
pub fn init(opts: Options) -> Telemetry {
    let provider = exporting().then(|| build_provider(opts.service_name));
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let format = opts.log_format.unwrap_or_else(LogFormat::detect);
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // Spans are exported whatever the log level: the bridge has a filter
    // of its own, info and above, outside the daemon's internals.
    let bridge = match (&provider, opts.bridge_tracing_spans) {
        (Some(provider), true) => Some(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(TRACER_NAME))
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    *meta.level() <= tracing::Level::INFO
                        && !meta.target().starts_with("sagaflow::engine")
                        && !meta.target().starts_with("opentelemetry")
                })),
        ),
        _ => None,
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter(opts.default_level)))
        .with(bridge)
        .try_init();
    Telemetry { provider }
}

impl Telemetry {
    /// Exports the spans still buffered; waits at most a few seconds.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(std::time::Duration::from_secs(5))
        })
        .await;
        if let Ok(Err(e)) = flushed {
            tracing::debug!(error = %e, "spans not all flushed at stop");
        }
    }
}

/// True when an OTLP endpoint is configured and traces are not switched off.
fn exporting() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none")
        || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true");
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn build_provider(service_name: &'static str) -> SdkTracerProvider {
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() && !resource_names_service() {
        resource = resource.with_service_name(service_name);
    }
    let builder = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_id_generator(ids::ChosenIds::default());
    match opentelemetry_otlp::SpanExporter::builder().build() {
        Ok(exporter) => builder.with_batch_exporter(export::WarnOnce::new(exporter)),
        Err(e) => {
            eprintln!("sagaflow: OTLP exporter not started, spans are not exported: {e}");
            builder
        }
    }
    .build()
}

/// True when `OTEL_RESOURCE_ATTRIBUTES` sets `service.name`.
fn resource_names_service() -> bool {
    std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attrs| {
        attrs
            .split(',')
            .any(|kv| kv.trim_start().starts_with("service.name="))
    })
}

/// `RUST_LOG`, else `default`; the OpenTelemetry crates' own logs stay
/// off unless `RUST_LOG` names them: an unreachable collector is reported
/// once, by the exporter's wrapper.
fn filter(default: &str) -> EnvFilter {
    let given = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let mut filter = EnvFilter::new(given.as_deref().unwrap_or(default));
    if !given.is_some_and(|v| v.contains("opentelemetry")) {
        for quiet in [
            "opentelemetry=off",
            "opentelemetry_sdk=off",
            "opentelemetry_otlp=off",
        ] {
            filter = filter.add_directive(quiet.parse().expect("a valid directive"));
        }
    }
    filter
}
