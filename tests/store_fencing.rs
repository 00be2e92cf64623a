//! The fenced transition write against a real Redis: only the saga's owner
//! writes, a retried write is applied once, and a creation cannot replace a
//! saga that exists.

mod common;

use common::*;
use sagaflow::config::Settings;
use sagaflow::engine::store::{Fence, Transition, Written};
use sagaflow::protocol::{CorrelationId, EventType, SagaEvent, SagaId, SagaStatus};
use serde_json::json;

fn event(saga_id: &SagaId, n: u64) -> SagaEvent {
    SagaEvent {
        correlation_id: CorrelationId::from_trusted("fence"),
        saga_id: Some(saga_id.clone()),
        saga: "s".into(),
        event_type: EventType::StepProgress,
        status: SagaStatus::Running,
        step: Some("a".into()),
        payload: json!({ "n": n }),
        timestamp: 0,
    }
}

async fn write(server: &RedisServer, saga_id: &SagaId, owner: &str, seq: u64) -> Written {
    let settings = Settings {
        redis_url: server.url(),
        ..Settings::default()
    };
    let client = server.client();
    let mut conn =
        sagaflow::streams::command_connection(&client, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let e = event(saga_id, seq);
    let transition = Transition {
        saga: Some((saga_id.as_str(), Fence { owner, seq })),
        events: vec![&e],
        ..Default::default()
    };
    transition.write(&mut conn, &settings).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_writes_and_each_transition_once() {
    let server = RedisServer::start();
    let saga = SagaId::generate();
    assert_eq!(write(&server, &saga, "node-a.1", 1).await, Written::Done);
    assert_eq!(
        write(&server, &saga, "node-a.1", 1).await,
        Written::AlreadyDone,
        "a retry"
    );
    assert_eq!(
        write(&server, &saga, "node-b.1", 1).await,
        Written::NotOurs,
        "a second creation"
    );
    assert_eq!(write(&server, &saga, "node-a.1", 2).await, Written::Done);

    // Another daemon takes the saga over: the former owner is fenced off.
    let mut conn = server.conn().await;
    let key = format!("saga:{{{saga}}}");
    let mut take = redis::cmd("HSET");
    take.arg(&key).arg("owner").arg("node-b.2");
    must("HSET", take.query_async::<i64>(&mut conn)).await;
    assert_eq!(write(&server, &saga, "node-a.1", 3).await, Written::NotOurs);
    assert_eq!(write(&server, &saga, "node-b.2", 3).await, Written::Done);

    let events = xrange(&mut conn, "saga:events").await;
    let ns: Vec<String> = events.iter().map(|e| e["payload"].clone()).collect();
    assert_eq!(
        ns,
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#],
        "each write once, only the owner's"
    );
}
