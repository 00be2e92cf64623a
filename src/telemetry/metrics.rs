//! The daemon's Prometheus metrics, through the `metrics` facade: without
//! an installed recorder (no `--http-addr`), recording is a no-op.
//!
//! Every label value is bounded: a series, once made, lives as long as the
//! daemon, so a label holding names from outside (the `saga` field of a
//! start, a consumer group anyone can create) would grow the daemon's
//! memory and its `/metrics` page with every new name. Saga and step
//! names are reported only for the definitions this daemon loaded (the
//! rest under [`UNKNOWN`]), consumer groups up to
//! [`MAX_GROUPS_PER_STREAM`] a stream (the rest under [`OTHER_GROUPS`]);
//! streams come from the settings and the definitions, the other labels
//! are fixed words.

use super::names::metric as m;
use crate::config::Settings;
use crate::definition::Catalog;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// The `saga` label of a saga this daemon has not loaded (a start naming
/// an unknown saga, or none; a saga taken over whose definition is loaded
/// by other daemons only), and the `step` label of a step its loaded
/// definition does not have (a version pinned before a change).
pub const UNKNOWN: &str = "unknown";

/// Consumer groups whose pending entries are reported by name, per stream,
/// besides the daemons' own group. A stream has one group per service
/// reading it (the daemons on a trigger stream, a step's handlers on its
/// command stream), a few with fan-out readers: 16 leaves room for those
/// while anyone able to run `XGROUP CREATE` can make at most 16 series a
/// stream. The groups seen after those are summed under [`OTHER_GROUPS`].
pub const MAX_GROUPS_PER_STREAM: usize = 16;

/// The `group` label of the groups beyond [`MAX_GROUPS_PER_STREAM`].
pub const OTHER_GROUPS: &str = "other";

/// What this daemon loaded: the label values it reports by name.
struct Known {
    /// Saga names, each with its steps.
    sagas: BTreeMap<String, BTreeSet<String>>,
    /// The daemons' consumer group, always reported.
    trigger_group: Option<String>,
}

static KNOWN: RwLock<Known> = RwLock::new(Known {
    sagas: BTreeMap::new(),
    trigger_group: None,
});

fn known() -> std::sync::RwLockReadGuard<'static, Known> {
    // Poisoned only by a panic while registering: what was written is whole.
    KNOWN.read().unwrap_or_else(|e| e.into_inner())
}

/// The `saga` label of `saga`.
fn saga_label(saga: &str) -> String {
    if known().sagas.contains_key(saga) {
        saga.to_owned()
    } else {
        UNKNOWN.to_owned()
    }
}

/// The `saga` and `step` labels of a step of `saga`.
fn step_labels(saga: &str, step: &str) -> (String, String) {
    match known().sagas.get(saga) {
        Some(steps) if steps.contains(step) => (saga.to_owned(), step.to_owned()),
        Some(_) => (saga.to_owned(), UNKNOWN.to_owned()),
        None => (UNKNOWN.to_owned(), UNKNOWN.to_owned()),
    }
}

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
        "Starts refused (malformed, unknown saga), by saga name, `unknown` for a saga not loaded here"
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
        m::LOCK_WAIT,
        "Time from a step asking for a semantic lock to holding it, by saga name"
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
        "Entries delivered to a consumer group and not acknowledged yet, by stream and group (16 groups a stream by name besides the daemons', the rest summed as `other`)"
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
        m::OPERATOR_ACTIONS,
        "Operators' requests carried out by this daemon, by action (cancel, retry, skip, abandon, pause, resume, pause_name, resume_name)"
    );
    describe_counter!(
        m::SIGNALS,
        "Signals read from the signals stream by this daemon, by outcome (kept, duplicate, rejected)"
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
    counter!(m::SAGAS_STARTED, "saga" => saga_label(saga)).increment(1);
}

pub fn saga_ended(saga: &str, outcome: &'static str, elapsed: Duration) {
    if !recording() {
        return;
    }
    let saga = saga_label(saga);
    counter!(m::SAGAS_ENDED, "saga" => saga.clone(), "outcome" => outcome).increment(1);
    histogram!(m::SAGA_DURATION, "saga" => saga, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// A refused start; `saga` is what it named (empty for nothing), which
/// anyone writing to the trigger stream chooses.
pub fn saga_rejected(saga: &str) {
    if !recording() {
        return;
    }
    counter!(m::SAGAS_REJECTED, "saga" => saga_label(saga)).increment(1);
}

pub fn saga_duplicate(saga: &str) {
    if !recording() {
        return;
    }
    counter!(m::SAGAS_DUPLICATE, "saga" => saga_label(saga)).increment(1);
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
    let (saga, step) = step_labels(saga, step);
    let labels = [
        ("saga", saga),
        ("step", step),
        ("kind", kind.to_owned()),
        ("outcome", outcome.to_owned()),
    ];
    histogram!(m::STEP_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// A step took a semantic lock after waiting `waited`.
pub fn lock_taken(saga: &str, waited: Duration) {
    if !recording() {
        return;
    }
    histogram!(m::LOCK_WAIT, "saga" => saga_label(saga)).record(waited.as_secs_f64());
}

/// An attempt ended by one of its clocks: `completion`, `ack` or
/// `heartbeat`.
pub fn step_timed_out(saga: &str, step: &str, kind: &'static str, clock: &'static str) {
    if !recording() {
        return;
    }
    let (saga, step) = step_labels(saga, step);
    counter!(m::STEP_TIMEOUTS, "saga" => saga, "step" => step, "kind" => kind, "timeout" => clock)
        .increment(1);
}

pub fn step_retried(saga: &str, step: &str, kind: &'static str) {
    if !recording() {
        return;
    }
    let (saga, step) = step_labels(saga, step);
    counter!(m::STEP_RETRIES, "saga" => saga, "step" => step, "kind" => kind).increment(1);
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

/// The groups of one stream that have a series.
#[derive(Default)]
struct StreamGroups {
    named: BTreeSet<String>,
    other: bool,
}

impl StreamGroups {
    /// The gauges to set from one `XINFO GROUPS`: by group name (0 for a
    /// group reported before and gone now: nothing of it is pending), and
    /// the sum of the groups beyond the bound, or `None` if no group was
    /// ever beyond it. `ours` is the daemons' group, always by name.
    fn fold(
        &mut self,
        groups: &[(String, u64)],
        ours: &str,
    ) -> (BTreeMap<String, u64>, Option<u64>) {
        let mut values: BTreeMap<String, u64> = self.named.iter().map(|g| (g.clone(), 0)).collect();
        let mut others = None;
        for (group, pending) in groups {
            let others_named = self.named.iter().filter(|g| *g != ours).count();
            let by_name = group != OTHER_GROUPS
                && (self.named.contains(group)
                    || group == ours
                    || others_named < MAX_GROUPS_PER_STREAM);
            if by_name {
                self.named.insert(group.clone());
                values.insert(group.clone(), *pending);
            } else {
                *others.get_or_insert(0) += pending;
            }
        }
        self.other |= others.is_some();
        (values, self.other.then(|| others.unwrap_or(0)))
    }
}

/// By stream, the groups reported so far.
static GROUPS: Mutex<BTreeMap<String, StreamGroups>> = Mutex::new(BTreeMap::new());

/// Sets the pending-entries gauge of the consumer groups of `stream`, as
/// `XINFO GROUPS` lists them: by name for the daemons' group and the first
/// [`MAX_GROUPS_PER_STREAM`] others seen, summed under [`OTHER_GROUPS`] for
/// the rest (and for a group named `other`).
pub fn pending_entries(stream: &str, groups: &[(String, u64)]) {
    if !recording() {
        return;
    }
    let ours = known().trigger_group.clone().unwrap_or_default();
    let (named, others) = GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(stream.to_owned())
        .or_default()
        .fold(groups, &ours);
    for (group, pending) in named {
        gauge!(m::STREAM_PENDING, "stream" => stream.to_owned(), "group" => group)
            .set(pending as f64);
    }
    if let Some(pending) = others {
        gauge!(m::STREAM_PENDING, "stream" => stream.to_owned(), "group" => OTHER_GROUPS)
            .set(pending as f64);
    }
}

pub fn redis_error(doing: &'static str) {
    counter!(m::REDIS_ERRORS, "operation" => doing).increment(1);
}

pub fn redis_reconnected(doing: &'static str) {
    counter!(m::REDIS_RECONNECTS, "operation" => doing).increment(1);
}

/// The counters of a run of Redis failures under `doing` (see
/// [`crate::retry::Outage::metered`]): every failed call, and every end of
/// a run.
pub fn redis_meter(doing: &'static str) -> crate::retry::Meter {
    crate::retry::Meter {
        label: doing,
        failed: redis_error,
        recovered: redis_reconnected,
    }
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

/// Every action an operator's request may carry: the values of the
/// `action` label.
const ACTIONS: [&str; 8] = [
    "cancel",
    "retry",
    "skip",
    "abandon",
    "pause",
    "resume",
    "pause_name",
    "resume_name",
];

/// An operator's request carried out: `action` is one of [`ACTIONS`]
/// (anything else, which the daemons never carry out, is not counted).
pub fn operator_action(action: &str) {
    if let Some(action) = ACTIONS.iter().find(|a| **a == action) {
        counter!(m::OPERATOR_ACTIONS, "action" => *action).increment(1);
    }
}

/// What became of a signal: the values of the `outcome` label.
const SIGNAL_OUTCOMES: [&str; 3] = ["kept", "duplicate", "rejected"];

/// A signal read from the signals stream: `outcome` is one of
/// [`SIGNAL_OUTCOMES`].
pub fn signal(outcome: &'static str) {
    debug_assert!(SIGNAL_OUTCOMES.contains(&outcome));
    counter!(m::SIGNALS, "outcome" => outcome).increment(1);
}

/// Records the sagas and steps of `catalog` as the names this daemon
/// reports, and `settings`' trigger group as always reported; puts every
/// counter of them on `/metrics` at zero, so that dashboards and alerts
/// see a series from the start, not "no data" until the first retry or
/// timeout.
pub fn register(catalog: &Catalog, settings: &Settings) {
    {
        let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
        for name in catalog.names() {
            let steps = catalog
                .get(name)
                .map(|def| &def.steps)
                .into_iter()
                .flatten();
            known
                .sagas
                .entry(name.to_owned())
                .or_default()
                .extend(steps.map(|s| s.name.clone()));
        }
        known.trigger_group = Some(settings.trigger_group.clone());
    }
    gauge!(m::SAGAS_IN_FLIGHT).increment(0.0);
    counter!(m::LEASES_LOST).increment(0);
    counter!(m::OPERATOR_REFUSED).increment(0);
    for action in ACTIONS {
        counter!(m::OPERATOR_ACTIONS, "action" => action).increment(0);
    }
    for outcome in SIGNAL_OUTCOMES {
        counter!(m::SIGNALS, "outcome" => outcome).increment(0);
    }
    for what in ["start", "saga", "signal"] {
        counter!(m::DEAD_LETTERED, "what" => what).increment(0);
    }
    for doing in [
        "write",
        "starts",
        "replies",
        "control",
        "signals",
        "lease",
        "takeover",
        "housekeeping",
    ] {
        counter!(m::REDIS_ERRORS, "operation" => doing).increment(0);
        counter!(m::REDIS_RECONNECTS, "operation" => doing).increment(0);
    }
    counter!(m::SAGAS_REJECTED, "saga" => UNKNOWN).increment(0);
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
            let mut kinds = vec![("action", step.clocks)];
            if let Some(c) = &step.compensation {
                kinds.push(("compensation", c.clocks));
            }
            for (kind, clocks) in kinds {
                let labels = [
                    ("saga", name.clone()),
                    ("step", step.name.clone()),
                    ("kind", kind.to_owned()),
                ];
                counter!(m::STEP_RETRIES, &labels).increment(0);
                let mut timeouts = vec!["completion"];
                timeouts.extend(clocks.ack.map(|_| "ack"));
                timeouts.extend(clocks.heartbeat.map(|_| "heartbeat"));
                for clock in timeouts {
                    let mut labels = labels.to_vec();
                    labels.push(("timeout", clock.to_owned()));
                    counter!(m::STEP_TIMEOUTS, &labels).increment(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_not_loaded_fold_into_unknown() {
        let catalog = crate::definition::catalog_from_str(
            std::path::Path::new("labels.yaml"),
            &include_str!("../../sagas/mission_start.yaml")
                .replace("name: mission_start", "name: labelled"),
        )
        .unwrap();
        register(&catalog, &Settings::default());
        assert_eq!(saga_label("labelled"), "labelled");
        assert_eq!(saga_label("ghost"), UNKNOWN);
        assert_eq!(saga_label(""), UNKNOWN);
        let labels = step_labels;
        assert_eq!(
            labels("labelled", "plan_route"),
            ("labelled".into(), "plan_route".into())
        );
        // A step of a pinned version the loaded one does not have.
        assert_eq!(
            labels("labelled", "gone_step"),
            ("labelled".into(), UNKNOWN.into())
        );
        assert_eq!(
            labels("ghost", "plan_route"),
            (UNKNOWN.into(), UNKNOWN.into())
        );
    }

    #[test]
    fn groups_beyond_the_bound_are_summed_under_other() {
        let mut stream = StreamGroups::default();
        let few: Vec<(String, u64)> = vec![("sagaflow".into(), 3), ("handlers".into(), 1)];
        let (named, others) = stream.fold(&few, "sagaflow");
        assert_eq!(named.len(), 2);
        assert_eq!(others, None, "no series for `other` until needed");

        let mut many = few.clone();
        many.extend((0..40).map(|i| (format!("g{i:02}"), 2)));
        many.push(("other".into(), 5));
        let (named, others) = stream.fold(&many, "sagaflow");
        assert_eq!(named.len(), MAX_GROUPS_PER_STREAM + 1, "{named:?}");
        assert_eq!(named["sagaflow"], 3);
        assert!(named.contains_key("handlers"), "seen first, kept");
        // `handlers` and g00 to g14 make 16 by name; g15 to g39 (25 of 2)
        // and the group named `other` (5) are summed.
        assert_eq!(others, Some(25 * 2 + 5));

        // Groups gone: theirs read 0, and so does `other`, which stays.
        let (named, others) = stream.fold(&few, "sagaflow");
        assert_eq!(named.len(), MAX_GROUPS_PER_STREAM + 1);
        assert_eq!(named["g00"], 0);
        assert_eq!(others, Some(0));

        // The daemons' group is reported by name even when others came first.
        let mut crowded = StreamGroups::default();
        let mut groups: Vec<(String, u64)> = (0..40).map(|i| (format!("a{i:02}"), 1)).collect();
        groups.push(("sagaflow".into(), 7));
        let (named, others) = crowded.fold(&groups, "sagaflow");
        assert_eq!(named["sagaflow"], 7);
        assert_eq!(named.len(), MAX_GROUPS_PER_STREAM + 1);
        assert_eq!(others, Some(40 - MAX_GROUPS_PER_STREAM as u64));
    }
}
