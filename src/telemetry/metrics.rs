//! The daemon's Prometheus metrics, through the `metrics` facade: without
//! an installed recorder (no `--http-addr`), recording is a no-op.

use super::names::metric as m;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Set once the recorder is installed: until then the per-saga functions
/// below return at once, without building their labels.
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn recording() -> bool {
    RECORDING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the Prometheus recorder; its handle renders `/metrics`.
/// `None` if a recorder is installed already.
pub fn install() -> Option<PrometheusHandle> {
    // Seconds: from a fast step (about a millisecond) to a slow one.
    const BUCKETS: [f64; 14] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .ok()?
        .install_recorder()
        .ok()?;
    describe();
    RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
    Some(handle)
}

fn describe() {
    describe_counter!(m::SAGAS_STARTED, "Sagas started, by saga name");
    describe_counter!(
        m::SAGAS_ENDED,
        "Sagas ended, by saga name and outcome (completed, compensated, failed)"
    );
    describe_counter!(
        m::SAGAS_REJECTED,
        "Starts refused (malformed, unknown saga), by saga name when known"
    );
    describe_counter!(
        m::SAGAS_DUPLICATE,
        "Starts that repeated an idempotency key, by saga name"
    );
    describe_gauge!(m::SAGAS_IN_FLIGHT, "Sagas this daemon drives now");
    describe_histogram!(
        m::SAGA_DURATION,
        "Time from a saga's start to its terminal event, by saga name and outcome"
    );
    describe_histogram!(
        m::STEP_DURATION,
        "Time from sending a command to its final reply or timeout, by saga, step, kind and outcome"
    );
    describe_counter!(
        m::STEP_RETRIES,
        "Attempts retried after a failure or a timeout, by saga, step and kind"
    );
    describe_counter!(
        m::STEP_TIMEOUTS,
        "Attempts that got no final reply in time, by saga, step and kind"
    );
    describe_gauge!(
        m::STREAM_PENDING,
        "Entries delivered to a consumer group and not acknowledged yet, by stream and group"
    );
    describe_counter!(
        m::REDIS_ERRORS,
        "Redis calls that failed, by what the daemon was doing"
    );
    describe_counter!(
        m::REDIS_RECONNECTS,
        "Times Redis became reachable again after failing, by what the daemon was doing"
    );
    describe_counter!(
        m::DEAD_LETTERED,
        "Entries and sagas moved to the dead-letter stream because they can never be processed or written, by what they were (start, saga)"
    );
    describe_counter!(
        m::OPERATOR_REFUSED,
        "Operators' requests refused as unproven: unsigned, badly signed, stale or replayed"
    );
    describe_counter!(
        m::LEASES_LOST,
        "Times this daemon found its lease run out (paused, cut off) and started a new one"
    );
    describe_gauge!(
        m::READY,
        "1 when the daemon is ready (Redis reachable, definitions loaded, not stopping)"
    );
}

pub fn saga_started(saga: &str) {
    if !recording() {
        return;
    }
    counter!(m::SAGAS_STARTED, "saga" => saga.to_owned()).increment(1);
}

pub fn saga_ended(saga: &str, outcome: &'static str, elapsed: Duration) {
    if !recording() {
        return;
    }
    counter!(m::SAGAS_ENDED, "saga" => saga.to_owned(), "outcome" => outcome).increment(1);
    histogram!(m::SAGA_DURATION, "saga" => saga.to_owned(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

pub fn saga_rejected(saga: &str) {
    counter!(m::SAGAS_REJECTED, "saga" => saga.to_owned()).increment(1);
}

pub fn saga_duplicate(saga: &str) {
    counter!(m::SAGAS_DUPLICATE, "saga" => saga.to_owned()).increment(1);
}

pub fn step_ended(
    saga: &str,
    step: &str,
    kind: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    if !recording() {
        return;
    }
    let labels = [
        ("saga", saga.to_owned()),
        ("step", step.to_owned()),
        ("kind", kind.to_owned()),
        ("outcome", outcome.to_owned()),
    ];
    histogram!(m::STEP_DURATION, &labels).record(elapsed.as_secs_f64());
    if outcome == "timed_out" {
        counter!(m::STEP_TIMEOUTS, &labels[..3]).increment(1);
    }
}

pub fn step_retried(saga: &str, step: &str, kind: &'static str) {
    if !recording() {
        return;
    }
    counter!(m::STEP_RETRIES, "saga" => saga.to_owned(), "step" => step.to_owned(), "kind" => kind)
        .increment(1);
}

/// Counts a saga task for as long as it lives.
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> Self {
        gauge!(m::SAGAS_IN_FLIGHT).increment(1.0);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(m::SAGAS_IN_FLIGHT).decrement(1.0);
    }
}

pub fn pending_entries(stream: &str, group: &str, pending: u64) {
    gauge!(m::STREAM_PENDING, "stream" => stream.to_owned(), "group" => group.to_owned())
        .set(pending as f64);
}

pub fn redis_error(doing: &'static str) {
    counter!(m::REDIS_ERRORS, "operation" => doing).increment(1);
}

pub fn redis_reconnected(doing: &'static str) {
    counter!(m::REDIS_RECONNECTS, "operation" => doing).increment(1);
}

/// Counts entries and sagas moved to the dead-letter stream, by what they
/// were (`start`, `saga`).
pub fn dead_lettered(what: &'static str) {
    counter!(m::DEAD_LETTERED, "what" => what).increment(1);
}

/// Counts operators' requests refused because they are not proven to come
/// from an operator (unsigned, a bad signature, stale, replayed).
pub fn operator_request_refused() {
    counter!(m::OPERATOR_REFUSED).increment(1);
}

/// Counts the times this daemon found its lease run out and started anew.
pub fn lease_lost() {
    counter!(m::LEASES_LOST).increment(1);
}

pub fn ready(ready: bool) {
    gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
}

/// Puts every counter of the daemon's sagas on `/metrics` at zero, so that
/// dashboards and alerts see a series from the start, not "no data" until
/// the first retry or timeout.
pub fn register_sagas(catalog: &crate::definition::Catalog) {
    gauge!(m::SAGAS_IN_FLIGHT).increment(0.0);
    counter!(m::LEASES_LOST).increment(0);
    counter!(m::OPERATOR_REFUSED).increment(0);
    for what in ["start", "saga"] {
        counter!(m::DEAD_LETTERED, "what" => what).increment(0);
    }
    for doing in [
        "write",
        "starts",
        "replies",
        "control",
        "lease",
        "takeover",
        "housekeeping",
    ] {
        counter!(m::REDIS_ERRORS, "operation" => doing).increment(0);
        counter!(m::REDIS_RECONNECTS, "operation" => doing).increment(0);
    }
    for name in catalog.names() {
        let Some(def) = catalog.get(name) else {
            continue;
        };
        let name = name.to_owned();
        counter!(m::SAGAS_STARTED, "saga" => name.clone()).increment(0);
        counter!(m::SAGAS_REJECTED, "saga" => name.clone()).increment(0);
        counter!(m::SAGAS_DUPLICATE, "saga" => name.clone()).increment(0);
        for outcome in ["completed", "compensated", "failed"] {
            counter!(m::SAGAS_ENDED, "saga" => name.clone(), "outcome" => outcome).increment(0);
        }
        for step in &def.steps {
            let mut kinds = vec!["action"];
            if step.compensation.is_some() {
                kinds.push("compensation");
            }
            for kind in kinds {
                let labels = [
                    ("saga", name.clone()),
                    ("step", step.name.clone()),
                    ("kind", kind.to_owned()),
                ];
                counter!(m::STEP_RETRIES, &labels).increment(0);
                counter!(m::STEP_TIMEOUTS, &labels).increment(0);
            }
        }
    }
}
