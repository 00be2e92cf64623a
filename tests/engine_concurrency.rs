//! Many sagas at once: each ends exactly once.

mod common;

use common::*;
use sagaflow::handler::simulated::SimulationOptions;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const SAGAS: usize = 200;

on_both!(two_hundred_sagas_at_once_each_complete_exactly_once);

async fn two_hundred_sagas_at_once_each_complete_exactly_once(server: Redis) {
    let daemon = start_daemon(&server, mission_catalog()).await;
    let opts = SimulationOptions {
        work_ms: 20,
        ..Default::default()
    };
    let handlers = start_simulated(&server, opts);
    let mut conn = server.conn().await;

    let ids = start_missions(&mut conn, "load", SAGAS).await;
    assert_eq!(ids.len(), SAGAS);

    let ended = |events: &[Event]| events.iter().filter(|e| e.is_terminal()).count();
    let mut events = wait_for_events(&server, Duration::from_secs(30), |events| {
        ended(events) >= SAGAS
    })
    .await;
    // Anything written late (a second end of some saga) shows up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    events = wait_for_events(&server, Duration::from_secs(5), |all| {
        all.len() >= events.len()
    })
    .await;
    handlers.stop().await;
    daemon.stop().await;

    let started: HashMap<&str, &str> = events
        .iter()
        .filter(|e| e.event_type == "saga_started")
        .map(|e| (e.saga_id.as_str(), e.correlation_id.as_str()))
        .collect();
    let mut ends: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events.iter().filter(|e| e.is_terminal()) {
        ends.entry(e.saga_id.as_str()).or_default().push(e);
    }
    let correlation_ids: HashSet<&str> = started.values().copied().collect();
    assert_eq!(started.len(), SAGAS, "distinct saga ids started");
    assert_eq!(correlation_ids.len(), SAGAS, "one saga per start");
    assert_eq!(ends.len(), SAGAS, "distinct saga ids ended");
    for (saga_id, correlation_id) in &started {
        let end = ends
            .get(saga_id)
            .unwrap_or_else(|| panic!("saga {saga_id} ({correlation_id}) never ended"));
        assert_eq!(end.len(), 1, "saga {saga_id} ended {} times", end.len());
        assert_eq!(end[0].event_type, "saga_completed", "{:?}", end[0]);
        assert_eq!(&end[0].correlation_id, correlation_id);
        let results = end[0].payload["results"].as_object().unwrap();
        assert_eq!(results.len(), 4, "saga {saga_id}: {results:?}");
    }
    // A fan-out's own start is not an attempt.
    let attempts = events
        .iter()
        .filter(|e| e.event_type == "step_started" && e.payload.get("branches").is_none())
        .count();
    assert_eq!(
        attempts,
        SAGAS * mission_commands(2),
        "one attempt per step and per robot"
    );
    assert_eq!(
        pending_count(&mut conn, "mission:start", "sagaflow").await,
        0
    );
}
