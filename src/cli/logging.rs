//! Logs and traces of the command line: see [`crate::telemetry`].

use crate::telemetry::{self, LogFormat, Telemetry};
use clap::Args;

/// The log flags of the long-running subcommands.
#[derive(Debug, Args, Clone, Default)]
pub struct LogArgs {
    /// Log lines as JSON objects or for people [default: pretty on a
    /// terminal, json otherwise]. The level comes from `RUST_LOG`.
    #[arg(long, env = "SAGAFLOW_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_level`), and
/// exports spans over OTLP when an endpoint is configured.
pub fn init(
    default_level: &'static str,
    log: &LogArgs,
    service_name: &'static str,
    bridge_tracing_spans: bool,
) -> Telemetry {
    telemetry::init(telemetry::Options {
        default_level,
        log_format: log.log_format,
        service_name,
        bridge_tracing_spans,
    })
}
