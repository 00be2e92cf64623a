//! A saga that takes a semantic lock and then waits for a signal, holding
//! the lock: two of them on one robot contend for its lock, one holding
//! it as long as the test likes, the other waiting.

use super::{catalog, xadd, Backend, Event};
use redis::aio::ConnectionLike;
use sagaflow::definition::Catalog;

/// Its trigger stream.
pub const LOCK_TRIGGER: &str = "robot:jobs";

/// `lock_job`: `take` locks `robot:<input.robot>` and runs
/// `allocate_resources` (a simulated handler's); `approve` then waits for
/// the signal `approval` for an hour. The saga's and the first step's
/// names may be replaced (`name`, `step`), to show what names carry.
pub fn lock_job_yaml(name: &str, step: &str) -> String {
    format!(
        r#"name: '{name}'
trigger: {LOCK_TRIGGER}
steps:
  - name: '{step}'
    stream: resources:commands
    command: allocate_resources
    locks: ["robot:${{input.robot}}"]
    lock_timeout: 5m
    timeout: 10s
    input: {{ area: "${{input.area}}", robots: 1 }}
    compensation: {{ command: release_resources }}
  - name: approve
    kind: wait
    signal: approval
    timeout: 1h
"#
    )
}

/// The catalog of [`lock_job_yaml`] with its plain names.
pub fn lock_job_catalog() -> Catalog {
    catalog(&lock_job_yaml("lock_job", "take"))
}

/// A sagas directory holding the reference mission and `lock_job` (plain
/// names), for daemons run as processes.
pub fn lock_job_sagas() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir for the sagas");
    let mission = super::manifest_dir().join("sagas/mission_start.yaml");
    std::fs::copy(mission, dir.path().join("mission_start.yaml")).expect("the mission copied");
    let job = lock_job_yaml("lock_job", "take");
    std::fs::write(dir.path().join("lock_job.yaml"), job).expect("lock_job written");
    dir
}

/// Starts a `lock_job` on `robot` through its trigger stream.
pub async fn start_lock_job(conn: &mut impl ConnectionLike, correlation_id: &str, robot: u32) {
    let payload = serde_json::json!({"robot": robot, "area": correlation_id}).to_string();
    let fields = [("correlation_id", correlation_id), ("payload", &payload)];
    xadd(conn, LOCK_TRIGGER, &fields).await;
}

/// The saga ids of `holding` (each holding its lock and waiting for its
/// signal) then of `waiting` (each waiting for its lock), by correlation
/// id, once `events` say so.
pub fn contention(events: &[Event], holding: &[&str], waiting: &[&str]) -> Option<Vec<String>> {
    let holds = |c: &str| {
        events.iter().any(|e| {
            e.correlation_id == c
                && e.event_type == "step_started"
                && e.step.as_deref() == Some("approve")
        })
    };
    let waits =
        |c: &str| (events.iter()).any(|e| e.correlation_id == c && e.event_type == "lock_waiting");
    if !holding.iter().all(|c| holds(c)) || !waiting.iter().all(|c| waits(c)) {
        return None;
    }
    let id_of = |c: &&str| {
        (events.iter())
            .find(|e| e.correlation_id == *c && !e.saga_id.is_empty())
            .map(|e| e.saga_id.clone())
    };
    holding.iter().chain(waiting).map(id_of).collect()
}

/// Waits for [`contention`] on `server`'s events stream.
pub async fn wait_for_contention(
    server: &impl Backend,
    holding: &[&str],
    waiting: &[&str],
) -> Vec<String> {
    let events = super::wait_for_events(server, super::SAGA_WAIT, |events| {
        contention(events, holding, waiting).is_some()
    })
    .await;
    contention(&events, holding, waiting).expect("seen above")
}
