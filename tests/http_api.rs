//! The HTTP API against a real daemon and a real Redis: starts with
//! `X-Request-ID`, `Idempotency-Key`, `traceparent` and `?wait`; reading,
//! listing and counting sagas; their events as Server-Sent Events, resumed
//! with `Last-Event-ID`; operators' requests and signals recorded under
//! the token's name; who holds each lock and who waits; and bad input,
//! missing and wrong tokens, and Redis gone, each refused with a problem
//! document that says why, writing nothing.

mod common;

use common::api::{read_sse, send, writer_name, Served};
use common::*;
use sagaflow::handler::SimulationOptions;
use serde_json::{json, Value};
use std::time::Duration;

on_both!(
    a_start_carries_the_request_id_and_the_callers_trace,
    every_saga_is_listed_once_page_after_page,
    a_sagas_events_stream_from_its_start_and_resume_after_the_last_seen,
);

const MISSION: &str = r#"{"area":"hall-a","robots":2}"#;
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn trigger_len(server: &impl Backend) -> u64 {
    let mut conn = server.any_conn().await;
    redis::cmd("XLEN")
        .arg("mission:start")
        .query_async(&mut conn)
        .await
        .expect("XLEN")
}

/// Polls the saga until its `state` is one of `states`.
async fn wait_for_state(api: &Served, saga_id: &str, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = send(api.get(&format!("/v1/sagas/{saga_id}"))).await;
        if a.status == 200 && states.contains(&a.body["state"].as_str().unwrap_or("")) {
            return a.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga {saga_id} did not reach {states:?}: {}",
            a.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(api: &Served, body: &str) -> Value {
    let a = send(api.post("/v1/sagas/mission_start").body(body.to_owned())).await;
    assert_eq!(a.status, 202, "{}", a.text);
    a.body
}

async fn a_start_carries_the_request_id_and_the_callers_trace(server: Redis) {
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let _handlers = start_simulated(&server, SimulationOptions::default());
    let traceparent = format!("00-{CALLER_TRACE}-00f067aa0ba902b7-01");
    let a = send(
        api.post("/v1/sagas/mission_start")
            .header("X-Request-ID", "trace-demo-123")
            .header("traceparent", &traceparent)
            .body(MISSION),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.header("x-request-id"), "trace-demo-123");
    assert_eq!(a.header("x-content-type-options"), "nosniff");
    let saga_id = a.body["saga_id"].as_str().unwrap().to_owned();
    assert_eq!(a.header("location"), format!("/v1/sagas/{saga_id}"));
    assert_eq!(a.body["correlation_id"], "trace-demo-123");
    assert_eq!(a.body["status"], "running");

    let saga = wait_for_state(&api, &saga_id, &["completed"]).await;
    assert_eq!(saga["correlation_id"], "trace-demo-123");
    assert_eq!(saga["trace_id"], CALLER_TRACE);
    assert_eq!(saga["input"], json!({"area": "hall-a", "robots": 2}));
    assert!(saga["results"]["integrate_maps"].is_object(), "{saga}");
    let steps: Vec<&str> = saga["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "allocate_resources",
            "plan_route",
            "perform_exploration",
            "perform_exploration",
            "integrate_maps"
        ]
    );
    // Every event of the saga on the audit stream carries the request id.
    let ours = saga_events(&server, "trace-demo-123").await;
    assert_eq!(ours.len(), mission_event_count(2), "{}", describe(&ours));
    assert!(ours.iter().all(|e| e.saga_id == saga_id));
    // A start without an id gets one: echoed, and the saga's.
    let a = send(api.post("/v1/sagas/mission_start").body(MISSION)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let generated = a.header("x-request-id").to_owned();
    assert!(is_lower_hex(&generated, 32), "{generated}");
    assert_eq!(a.body["correlation_id"], generated.as_str());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_answers_with_the_first_saga() {
    let server = RedisServer::start();
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let _handlers = start_simulated(&server, SimulationOptions::default());
    let first = send(
        api.post("/v1/sagas/mission_start")
            .header("Idempotency-Key", "order-42")
            .body(MISSION),
    )
    .await;
    assert_eq!(first.status, 202, "{}", first.text);
    let again = send(
        api.post("/v1/sagas/mission_start")
            .header("Idempotency-Key", "order-42")
            .body(r#"{"area":"elsewhere","robots":3}"#),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["saga_id"], first.body["saga_id"]);
    assert_eq!(again.body["status"], "existing");
    assert_eq!(
        again.header("location"),
        first.header("location"),
        "{}",
        again.text
    );
    // With ?wait, the repeat answers with the first saga's outcome.
    let waited = send(
        api.post("/v1/sagas/mission_start?wait=30s")
            .header("Idempotency-Key", "order-42")
            .body(MISSION),
    )
    .await;
    assert_eq!(waited.status, 200, "{}", waited.text);
    assert_eq!(waited.body["saga_id"], first.body["saga_id"]);
    assert_eq!(waited.body["state"], "completed");
    let mut conn = server.conn().await;
    let started = xrange(&mut conn, "saga:events")
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "saga_started")
        .count();
    assert_eq!(started, 1);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_answers_with_the_outcome_or_the_saga_under_way() {
    let server = RedisServer::start();
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let handlers = start_simulated(
        &server,
        SimulationOptions {
            fail_step: Some("integrate_maps".into()),
            ..Default::default()
        },
    );
    let a = send(api.post("/v1/sagas/mission_start?wait=30s").body(MISSION)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["state"], "compensated");
    assert_eq!(a.body["failure"]["step"], "integrate_maps");
    handlers.stop().await;
    // No handler: the wait runs out and the saga is still under way.
    let a = send(api.post("/v1/sagas/mission_start?wait=300ms").body(MISSION)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["state"], "running");
    for (wait, why) in [("soon", "not a duration"), ("6m", "at most 300s")] {
        let a = send(
            api.post(&format!("/v1/sagas/mission_start?wait={wait}"))
                .body(MISSION),
        )
        .await;
        assert_eq!((a.status, a.problem()), (400, "bad-request"), "{}", a.text);
        assert!(
            a.body["detail"].as_str().unwrap().contains(why),
            "{}",
            a.text
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_reason_and_writes_nothing() {
    let server = RedisServer::start();
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let deep = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
    let huge = format!("{{\"blob\":\"{}\"}}", "x".repeat(2 << 20));
    let start = "/v1/sagas/mission_start";
    type Tweak = fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder;
    let none: Tweak = |r| r;
    let cases: Vec<(&str, String, Tweak, u16, &str, &str)> = vec![
        (
            "not JSON",
            "{area".into(),
            none,
            400,
            "bad-body",
            "not valid JSON",
        ),
        (
            "an array",
            "[1,2]".into(),
            none,
            400,
            "bad-body",
            "JSON object",
        ),
        ("too deep", deep, none, 400, "bad-body", "deep"),
        ("too large", huge, none, 413, "too-large", ""),
        (
            "a long X-Request-ID",
            MISSION.into(),
            |r| r.header("X-Request-ID", "r".repeat(129)),
            400,
            "bad-request",
            "X-Request-ID is 129 characters",
        ),
        (
            "a non-ASCII X-Request-ID",
            MISSION.into(),
            |r| {
                r.header(
                    "X-Request-ID",
                    reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
                )
            },
            400,
            "bad-request",
            "X-Request-ID",
        ),
        (
            "an idempotency key with a space",
            MISSION.into(),
            |r| r.header("Idempotency-Key", "order 42"),
            400,
            "bad-request",
            "idempotency_key",
        ),
        (
            "a malformed traceparent",
            MISSION.into(),
            |r| r.header("traceparent", "00-xyz-01"),
            400,
            "bad-request",
            "traceparent",
        ),
    ];
    for (what, body, tweak, status, kind, says) in cases {
        let a = send(tweak(api.post(start)).body(body)).await;
        assert_eq!(
            (a.status, a.problem()),
            (status, kind),
            "{what}: {}",
            a.text
        );
        assert!(
            a.body["detail"].as_str().unwrap_or("").contains(says),
            "{what}: {}",
            a.text
        );
        assert_eq!(a.body["status"], status, "{what}");
        assert!(!a.header("x-request-id").is_empty(), "{what}");
    }
    let paths = [
        ("/v1/sagas/no_such_saga", 404, "no-such-definition"),
        (
            "/v1/sagas/mission_start?wait=1s&extra=1",
            400,
            "bad-request",
        ),
    ];
    for (path, status, kind) in paths {
        let a = send(api.post(path).body(MISSION)).await;
        assert_eq!(
            (a.status, a.problem()),
            (status, kind),
            "{path}: {}",
            a.text
        );
    }
    assert_eq!(trigger_len(&server).await, 0, "nothing was written");
    let reads = [
        ("/v1/sagas/not-a-saga-id", 400, "bad-request"),
        (
            "/v1/sagas/0123456789abcdef0123456789abcdef",
            404,
            "no-such-saga",
        ),
        ("/v1/sagas?state=happy", 400, "bad-request"),
        ("/v1/sagas?limit=0", 400, "bad-request"),
        ("/v1/sagas?limit=501", 400, "bad-request"),
        ("/v1/sagas?cursor=zzz", 400, "bad-request"),
        ("/v1/sagas?since=yesterday", 400, "bad-request"),
        ("/v1/nothing/here", 404, "not-found"),
    ];
    for (path, status, kind) in reads {
        let a = send(api.get(path)).await;
        assert_eq!(
            (a.status, a.problem()),
            (status, kind),
            "{path}: {}",
            a.text
        );
    }
    let a = send(api.http.delete(api.url("/v1/sagas")).bearer_auth(&api.read)).await;
    assert_eq!(
        (a.status, a.problem()),
        (405, "method-not-allowed"),
        "{}",
        a.text
    );
    let a = send(
        api.get("/v1/sagas/0123456789abcdef0123456789abcdef/events")
            .header("Last-Event-ID", "yesterday"),
    )
    .await;
    assert_eq!((a.status, a.problem()), (400, "bad-request"), "{}", a.text);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_and_writing_need_their_tokens() {
    let server = RedisServer::start();
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let list = api.url("/v1/sagas");
    let a = send(api.http.get(&list)).await;
    assert_eq!((a.status, a.problem()), (401, "unauthorized"), "{}", a.text);
    assert_eq!(a.header("www-authenticate"), "Bearer realm=\"sagaflow\"");
    let a = send(
        api.http
            .get(&list)
            .bearer_auth("not-a-token-of-this-daemon"),
    )
    .await;
    assert_eq!((a.status, a.problem()), (401, "unauthorized"), "{}", a.text);
    let a = send(
        api.http
            .get(&list)
            .header("Authorization", "Basic b3BzOnB3"),
    )
    .await;
    assert_eq!((a.status, a.problem()), (401, "unauthorized"), "{}", a.text);
    let a = send(api.get("/v1/sagas")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    // The read token cannot write; no token cannot either.
    let start = api.url("/v1/sagas/mission_start");
    let a = send(api.http.post(&start).bearer_auth(&api.read).body(MISSION)).await;
    assert_eq!((a.status, a.problem()), (403, "forbidden"), "{}", a.text);
    let a = send(api.http.post(&start).body(MISSION)).await;
    assert_eq!((a.status, a.problem()), (401, "unauthorized"), "{}", a.text);
    let cancel = api.url("/v1/sagas/0123456789abcdef0123456789abcdef/cancel");
    let a = send(api.http.post(&cancel).bearer_auth(&api.read)).await;
    assert_eq!((a.status, a.problem()), (403, "forbidden"), "{}", a.text);
    assert_eq!(trigger_len(&server).await, 0);
    let a = send(api.get("/v1/access")).await;
    assert_eq!(
        (a.body["name"].as_str(), a.body["write"].as_bool()),
        (Some("viewer"), Some(false)),
        "{}",
        a.text
    );
    let a = send(api.http.get(api.url("/v1/access")).bearer_auth(&api.write)).await;
    assert_eq!(a.body["write"], true, "{}", a.text);
    api.stop().await;

    // `api_read: open`: anyone reads; writing still needs a write token.
    let api = Served::start(&server, mission_catalog(), |s| {
        s.api_read = sagaflow::http::access::ReadAccess::Open;
    })
    .await;
    let a = send(api.http.get(api.url("/v1/sagas"))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = send(api.http.get(api.url("/v1/access"))).await;
    assert_eq!(
        (a.body["read"].as_bool(), a.body["write"].as_bool()),
        (Some(true), Some(false))
    );
    let a = send(
        api.http
            .post(api.url("/v1/sagas/mission_start"))
            .body(MISSION),
    )
    .await;
    assert_eq!((a.status, a.problem()), (401, "unauthorized"), "{}", a.text);
    api.stop().await;
}

async fn a_sagas_events_stream_from_its_start_and_resume_after_the_last_seen(server: Redis) {
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let _handlers = start_simulated(
        &server,
        SimulationOptions {
            work_ms: 100,
            ..Default::default()
        },
    );
    // Every saga's events, live, from before the start.
    let all = bounded("the events stream", api.get("/v1/events").send())
        .await
        .expect("the stream");
    assert_eq!(
        all.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let saga_id = start(&api, MISSION).await["saga_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = api
        .get(&format!("/v1/sagas/{saga_id}/events"))
        .send()
        .await
        .expect("the stream");
    assert_eq!(response.status(), 200);
    // The stream ends by itself once the saga has completed.
    let events = read_sse(response, Duration::from_secs(30), |_| false).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"saga_started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"saga_completed"), "{kinds:?}");
    assert_eq!(events.len(), mission_event_count(2), "{kinds:?}");
    for e in &events {
        assert_eq!(e.data["saga_id"], saga_id.as_str());
        assert_eq!(e.data["id"], e.id.as_str());
        assert_eq!(e.data["event_type"], e.event.as_str());
    }
    let ids: Vec<sagaflow::streams::StreamId> = events
        .iter()
        .map(|e| sagaflow::streams::StreamId::parse(&e.id).unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    // Resumed after the third: the rest, each once.
    let resumed = api
        .get(&format!("/v1/sagas/{saga_id}/events"))
        .header("Last-Event-ID", &events[2].id)
        .send()
        .await
        .expect("the stream");
    let rest = read_sse(resumed, Duration::from_secs(10), |_| false).await;
    let rest_ids: Vec<&str> = rest.iter().map(|e| e.id.as_str()).collect();
    let want: Vec<&str> = events[3..].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(rest_ids, want);
    // The live stream of every saga saw the same events.
    let live = read_sse(all, Duration::from_secs(10), |seen| {
        seen.iter().any(|e| e.event == "saga_completed")
    })
    .await;
    let live_ids: Vec<&str> = live
        .iter()
        .filter(|e| e.data["saga_id"] == saga_id.as_str())
        .map(|e| e.id.as_str())
        .collect();
    let all_ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(live_ids, all_ids);
    // Resumed from the middle, every saga's stream gives what followed.
    let resumed = api
        .get("/v1/events")
        .header("Last-Event-ID", &events[5].id)
        .send()
        .await
        .expect("the stream");
    let last = events.last().unwrap().id.clone();
    let rest = read_sse(resumed, Duration::from_secs(10), |seen| {
        seen.iter().any(|e| e.id == last)
    })
    .await;
    let rest_ids: Vec<&str> = rest.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(rest_ids, all_ids[6..].to_vec());
    api.stop().await;
}

async fn every_saga_is_listed_once_page_after_page(server: Redis) {
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let _handlers = start_simulated(&server, SimulationOptions::default());
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..12 {
        let a = send(
            api.post("/v1/sagas/mission_start?wait=30s")
                .header("X-Request-ID", format!("listed-{i}"))
                .body(MISSION),
        )
        .await;
        assert_eq!(
            (a.status, a.body["state"].as_str()),
            (200, Some("completed")),
            "{}",
            a.text
        );
        ids.insert(a.body["saga_id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sagas?limit=5&state=completed&cursor={c}"),
            None => "/v1/sagas?limit=5&state=completed".to_owned(),
        };
        let a = send(api.get(&path)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        pages += 1;
        let page = a.body["sagas"].as_array().unwrap();
        let at: Vec<u64> = page
            .iter()
            .map(|s| s["changed_at_ms"].as_u64().unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] >= w[1]), "newest first: {at:?}");
        seen.extend(
            page.iter()
                .map(|s| s["saga_id"].as_str().unwrap().to_owned()),
        );
        match a.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen.len(), 12, "{seen:?}");
    assert_eq!(pages, 3, "5, 5, 2, and no cursor to an empty page");
    let unique: std::collections::BTreeSet<String> = seen.into_iter().collect();
    assert_eq!(unique, ids);
    // Filters: by name, by state, by correlation id, by the start of an id.
    let a = send(api.get("/v1/sagas?name=other")).await;
    assert_eq!(a.body["sagas"], json!([]), "{}", a.text);
    let a = send(api.get("/v1/sagas?state=stuck")).await;
    assert_eq!(a.body["sagas"], json!([]), "{}", a.text);
    let a = send(api.get("/v1/sagas?q=listed-7")).await;
    let found = a.body["sagas"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{}", a.text);
    assert_eq!(found[0]["correlation_id"], "listed-7");
    let one = ids.iter().next().unwrap();
    let a = send(api.get(&format!("/v1/sagas?q={}", &one[..10]))).await;
    let found = a.body["sagas"].as_array().unwrap();
    assert!(
        found.iter().any(|s| s["saga_id"] == one.as_str()),
        "{}",
        a.text
    );
    let a = send(api.get("/v1/stats")).await;
    assert_eq!(a.body["by_phase"]["completed"], 12, "{}", a.text);
    assert_eq!(
        a.body["recent"]["by_saga"]["mission_start"]["completed"], 12,
        "{}",
        a.text
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_requests_are_carried_out_under_the_tokens_name() {
    let server = RedisServer::start();
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let _handlers = start_simulated(
        &server,
        SimulationOptions {
            hang_step: Some("integrate_maps".into()),
            ..Default::default()
        },
    );
    let saga_id = start(&api, MISSION).await["saga_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancel = format!("/v1/sagas/{saga_id}/cancel");
    let bad = [
        (
            json!({"reason": "x".repeat(1025)}).to_string(),
            "1025 bytes",
        ),
        (
            r#"{"reason": "x", "step": "plan_route"}"#.to_owned(),
            "skip only",
        ),
        (r#"{"why": "x"}"#.to_owned(), "unknown field"),
        ("reason=x".to_owned(), "not {"),
    ];
    for (body, says) in bad {
        let a = send(api.post(&cancel).body(body.clone())).await;
        assert_eq!(
            (a.status, a.problem()),
            (400, "bad-body"),
            "{body}: {}",
            a.text
        );
        assert!(a.text.contains(says), "{body}: {}", a.text);
    }
    let a = send(api.post(&format!("/v1/sagas/{saga_id}/explode"))).await;
    assert_eq!((a.status, a.problem()), (404, "not-found"), "{}", a.text);
    let a = send(api.post(&format!("/v1/sagas/{saga_id}/skip")).body("{}")).await;
    assert_eq!((a.status, a.problem()), (400, "bad-body"), "{}", a.text);
    // A retry of a saga that is not stuck is refused before it is sent.
    let a = send(api.post(&format!("/v1/sagas/{saga_id}/retry"))).await;
    assert_eq!((a.status, a.problem()), (409, "conflict"), "{}", a.text);
    wait_for_state(&api, &saga_id, &["running"]).await;
    // Paused and resumed, each under the token's name.
    let a = send(
        api.post(&format!("/v1/sagas/{saga_id}/pause"))
            .body(r#"{"reason": "robot under inspection"}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let saga = send(api.get(&format!("/v1/sagas/{saga_id}"))).await.body;
    assert_eq!(saga["paused"]["by"], writer_name(), "{saga}");
    assert_eq!(saga["paused"]["reason"], "robot under inspection");
    let a = send(api.post(&format!("/v1/sagas/{saga_id}/pause"))).await;
    assert_eq!((a.status, a.problem()), (409, "conflict"), "{}", a.text);
    let a = send(api.post(&format!("/v1/sagas/{saga_id}/resume"))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let saga = send(api.get(&format!("/v1/sagas/{saga_id}"))).await.body;
    assert!(saga.get("paused").is_none(), "{saga}");
    let a = send(api.post(&cancel).body(r#"{"reason": "customer withdrew"}"#)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["by"], writer_name());
    assert_eq!(a.body["event"]["event_type"], "operator_action");
    assert_eq!(a.body["event"]["payload"]["by"], writer_name());
    assert_eq!(a.body["event"]["payload"]["reason"], "customer withdrew");
    let saga = wait_for_state(&api, &saga_id, &["cancelled"]).await;
    assert_eq!(saga["failure"]["cancelled_by"], writer_name());
    let a = send(api.post(&cancel)).await;
    assert_eq!((a.status, a.problem()), (409, "conflict"), "{}", a.text);
    assert_eq!(a.body["state"], "cancelled");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_is_retried_through_the_api() {
    let server = RedisServer::start();
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let failing = start_simulated(
        &server,
        SimulationOptions {
            fail_step: Some("integrate_maps".into()),
            fail_compensation: Some("plan_route".into()),
            ..Default::default()
        },
    );
    let saga_id = start(&api, MISSION).await["saga_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let saga = wait_for_state(&api, &saga_id, &["stuck"]).await;
    assert_eq!(saga["stuck"][0]["step"], "plan_route", "{saga}");
    let a = send(api.get("/v1/sagas?state=stuck")).await;
    assert_eq!(
        a.body["sagas"][0]["saga_id"],
        saga_id.as_str(),
        "{}",
        a.text
    );
    assert_eq!(
        a.body["sagas"][0]["stuck"][0]["step"], "plan_route",
        "{}",
        a.text
    );
    failing.stop().await;
    let _healthy = start_simulated(&server, SimulationOptions::default());
    let a = send(
        api.post(&format!("/v1/sagas/{saga_id}/retry"))
            .body(r#"{"reason": "routing fixed"}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let saga = wait_for_state(&api, &saga_id, &["compensated"]).await;
    assert_eq!(saga["rescues"], 1, "{saga}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_is_a_503_that_says_so() {
    let mut server = RedisServer::start();
    let mut api = Served::start(&server, mission_catalog(), |_| {}).await;
    let a = send(api.get("/v1/sagas")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    // Full: the start is refused for what it is, and can be sent again.
    let mut conn = server.conn().await;
    let _: () = words("CONFIG SET maxmemory 1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let a = send(api.post("/v1/sagas/mission_start").body(MISSION)).await;
    assert_eq!((a.status, a.problem()), (503, "unavailable"), "{}", a.text);
    assert!(a.text.contains("OOM"), "{}", a.text);
    let _: () = words("CONFIG SET maxmemory 0")
        .query_async(&mut conn)
        .await
        .unwrap();
    api.stop_daemon().await;
    server.kill();
    let a = send(api.get("/v1/sagas")).await;
    assert_eq!((a.status, a.problem()), (503, "unavailable"), "{}", a.text);
    assert_eq!(a.header("retry-after"), "1");
    let a = send(api.post("/v1/sagas/mission_start").body(MISSION)).await;
    assert_eq!((a.status, a.problem()), (503, "unavailable"), "{}", a.text);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_listed_with_their_holder_and_waiters() {
    use common::locks::{lock_job_catalog, wait_for_contention};
    let server = RedisServer::start();
    let api = Served::start(&server, lock_job_catalog(), |_| {}).await;
    let _handlers = start_simulated(&server, SimulationOptions::default());
    let a = send(api.get("/v1/locks")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.body,
        json!({"locks": [], "looked_at": 0, "complete": true,
               "max_sagas_looked_at": 10_000, "max_locks_listed": 1_000})
    );
    let start = |correlation_id: &'static str| {
        send(
            api.post("/v1/sagas/lock_job")
                .header("X-Request-ID", correlation_id)
                .body(r#"{"robot": 7, "area": "hall-a"}"#),
        )
    };
    assert_eq!(start("holder").await.status, 202);
    wait_for_contention(&server, &["holder"], &[]).await;
    assert_eq!(start("waiter").await.status, 202);
    let ids = wait_for_contention(&server, &["holder"], &["waiter"]).await;
    let (holder, waiter) = (&ids[0], &ids[1]);

    let a = send(api.get("/v1/locks")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        (a.body["looked_at"].as_u64(), &a.body["complete"]),
        (Some(2), &json!(true))
    );
    let locks = a.body["locks"].as_array().expect("locks");
    assert_eq!(locks.len(), 1, "{}", a.text);
    let queue = &locks[0];
    assert_eq!(queue["lock"], "robot:7");
    assert_eq!(queue["holder"]["saga_id"], holder.as_str());
    assert_eq!(queue["holder"]["saga"], "lock_job");
    assert_eq!(queue["holder"]["step"], "take");
    assert!(queue["holder"]["held_since_ms"].is_u64(), "{queue}");
    assert_eq!(queue["waiters"][0]["saga_id"], waiter.as_str(), "{queue}");
    assert_eq!(queue["waiters"].as_array().map(Vec::len), Some(1));
    // One lock, by name: as is, percent-encoded, or with a slash.
    for path in ["/v1/locks/robot:7", "/v1/locks/robot%3A7"] {
        let a = send(api.get(path)).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        assert_eq!(&a.body, queue, "{path}");
    }
    for path in ["/v1/locks/area:north/3", "/v1/locks/area%3Anorth%2F3"] {
        let a = send(api.get(path)).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        assert_eq!(
            a.body,
            json!({"lock": "area:north/3", "holder": null, "waiters": []})
        );
    }
    for bad in [
        "/v1/locks/robot%207",
        "/v1/locks/robot:%7B7%7D",
        "/v1/locks/robot:7?x=1",
    ] {
        let a = send(api.get(bad)).await;
        assert_eq!(
            (a.status, a.problem()),
            (400, "bad-request"),
            "{bad}: {}",
            a.text
        );
    }
    let long = format!("/v1/locks/{}", "a".repeat(201));
    let a = send(api.get(&long)).await;
    assert_eq!((a.status, a.problem()), (400, "bad-request"), "{}", a.text);
    let a = send(api.http.get(api.url("/v1/locks"))).await;
    assert_eq!((a.status, a.problem()), (401, "unauthorized"), "{}", a.text);

    // The sagas' own views: the lock held and the signal awaited; the
    // lock waited for, its holder and how many are ahead.
    let a = send(api.get(&format!("/v1/sagas/{holder}"))).await;
    assert_eq!(a.body["locks"]["robot:7"]["step"], "take", "{}", a.text);
    let awaiting = (a.body["units"].as_array().unwrap().iter())
        .find(|u| u["state"] == "awaiting")
        .unwrap_or_else(|| panic!("a unit awaiting its signal: {}", a.text));
    assert_eq!(awaiting["step"], "approve");
    assert_eq!(awaiting["signal"], "approval");
    assert!(awaiting["deadline_ms"].is_u64(), "{awaiting}");
    let a = send(api.get(&format!("/v1/sagas/{waiter}"))).await;
    let wait = &a.body["lock_waits"][0];
    assert_eq!(wait["step"], "take", "{}", a.text);
    assert_eq!(wait["lock"], "robot:7");
    assert_eq!(wait["holder"], holder.as_str());
    assert_eq!(wait["ahead"], 1);
    assert!(a.body.get("locks").is_none(), "{}", a.text);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_docs_describe_every_route_and_problem() {
    let server = RedisServer::start();
    let api = Served::start(&server, mission_catalog(), |_| {}).await;
    let a = send(api.http.get(api.url("/v1/openapi.json"))).await;
    assert_eq!(a.status, 200);
    let paths = a.body["paths"].as_object().expect("paths");
    for path in [
        "/v1/sagas/{saga}",
        "/v1/sagas",
        "/v1/sagas/{saga}/events",
        "/v1/sagas/{saga}/{action}",
        "/v1/sagas/{saga}/signals/{name}",
        "/v1/events",
        "/v1/stats",
        "/v1/access",
        "/v1/definitions",
        "/v1/locks",
        "/v1/locks/{lock}",
    ] {
        assert!(paths.contains_key(path), "{path} is not in the document");
    }
    let docs = std::fs::read_to_string(manifest_dir().join("docs/http.md")).expect("docs/http.md");
    for kind in sagaflow::http::api::problem::Kind::ALL {
        assert!(
            docs.contains(&format!("`{}`", kind.slug())),
            "docs/http.md does not describe the problem `{}`",
            kind.slug()
        );
        assert!(
            a.text.contains(kind.slug()),
            "the OpenAPI document does not name the problem `{}`",
            kind.slug()
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_limits_the_api_answers_busy_and_writes_nothing() {
    let server = RedisServer::start();
    let limits = sagaflow::http::api::Limits {
        waiting: 1,
        event_streams: 1,
    };
    let api = Served::start_with(&server, mission_catalog(), |_| {}, limits).await;
    // One event stream open: a second is refused.
    let open = bounded("an event stream", api.get("/v1/events").send())
        .await
        .expect("the stream");
    assert_eq!(open.status(), 200);
    let a = send(api.get("/v1/events")).await;
    assert_eq!((a.status, a.problem()), (503, "busy"), "{}", a.text);
    assert_eq!(a.header("retry-after"), "1");
    drop(open);
    // One start waiting (no handler: it waits to its end): a second start
    // is refused before it is written.
    let waiting = tokio::spawn(send(
        api.post("/v1/sagas/mission_start?wait=3s").body(MISSION),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while trigger_len(&server).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first start was not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = send(api.post("/v1/sagas/mission_start").body(MISSION)).await;
    assert_eq!((a.status, a.problem()), (503, "busy"), "{}", a.text);
    assert_eq!(trigger_len(&server).await, 1);
    let first = must("the waiting start", waiting).await;
    assert_eq!(first.status, 202, "{}", first.text);
    api.stop().await;
}

/// A mission that waits for an approval of its route before planning it.
const APPROVAL: &str = "
name: approval
steps:
  - name: allocate_resources
    stream: resources:commands
    input: { area: '${input.area}', robots: '${input.robots}' }
    compensation: { command: release_resources }
  - name: approve
    kind: wait
    signal: route_approved
  - name: plan_route
    stream: routing:commands
    input:
      robot_ids: ${steps.allocate_resources.result.robot_ids}
      approved_by: ${steps.approve.result.by}
    compensation: { command: cancel_route }
";

async fn signals_len(server: &impl Backend) -> u64 {
    let mut conn = server.any_conn().await;
    must("XLEN", words("XLEN saga:signals").query_async(&mut conn)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_kept_once_under_the_tokens_name() {
    let server = RedisServer::start();
    let mut api = Served::start(&server, catalog(APPROVAL), |_| {}).await;
    // Slow enough that the saga still runs while its signals are sent.
    let _handlers = start_simulated(
        &server,
        SimulationOptions {
            work_ms: 1500,
            ..Default::default()
        },
    );
    let a = send(api.post("/v1/sagas/approval").body(MISSION)).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let saga_id = a.body["saga_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sagas/{saga_id}/signals/route_approved");
    let unknown = "0123456789abcdef0123456789abcdef";

    // Refused before anything is written, each with its reason.
    let big = json!({ "note": "x".repeat(70 << 10) }).to_string();
    let bad = [
        (
            api.post("/v1/sagas/nope/signals/route_approved"),
            400,
            "bad-request",
            "not a saga id",
        ),
        (
            api.post(&format!("/v1/sagas/{saga_id}/signals/a%20b")),
            400,
            "bad-request",
            "signal name",
        ),
        (api.post(&path).body("{nope"), 400, "bad-body", "not JSON"),
        (api.post(&path).body(big), 413, "too-large", "limit"),
        (
            api.post(&format!("{path}?signal_id=a"))
                .header("Idempotency-Key", "b"),
            400,
            "bad-request",
            "different signal ids",
        ),
        (
            api.post(&format!("{path}?signal_id=a%20b")),
            400,
            "bad-request",
            "signal_id",
        ),
        (
            api.post(&format!("{path}?color=red")),
            400,
            "bad-request",
            "unknown field",
        ),
        (
            api.post(&format!("/v1/sagas/{unknown}/signals/route_approved")),
            404,
            "no-such-saga",
            "no saga",
        ),
        (
            api.http.post(api.url(&path)).bearer_auth(&api.read),
            403,
            "forbidden",
            "read only",
        ),
        (
            api.http.post(api.url(&path)),
            401,
            "unauthorized",
            "write token",
        ),
    ];
    for (request, status, problem, says) in bad {
        let a = send(request).await;
        assert_eq!((a.status, a.problem()), (status, problem), "{}", a.text);
        assert!(a.text.contains(says), "`{says}` in {}", a.text);
    }
    assert_eq!(signals_len(&server).await, 0, "nothing written");

    // Kept under the token's name; the same id again is a duplicate;
    // another id is refused.
    let approval = r#"{"by": "ana", "note": "north first"}"#;
    let a = send(
        api.post(&path)
            .header("Idempotency-Key", "api-1")
            .body(approval),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "kept");
    assert_eq!(a.body["signal_id"], "api-1");
    assert_eq!(a.body["by"], writer_name());
    assert_eq!(a.body["event"]["event_type"], "signal_received");
    assert_eq!(a.body["event"]["payload"]["by"], writer_name());
    let a = send(api.post(&format!("{path}?signal_id=api-1")).body(approval)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "duplicate");
    let a = send(api.post(&format!("{path}?signal_id=api-2"))).await;
    assert_eq!((a.status, a.problem()), (409, "refused"), "{}", a.text);
    assert!(a.text.contains("signal_id `api-1`"), "{}", a.text);

    let saga = wait_for_state(&api, &saga_id, &["completed"]).await;
    let kept = &saga["signals"];
    assert_eq!(kept.as_array().map(Vec::len), Some(1), "{saga}");
    assert_eq!(kept[0]["signal_id"], "api-1");
    assert_eq!(kept[0]["by"], writer_name());
    assert_eq!(kept[0]["payload"]["note"], "north first");
    assert_eq!(saga["results"]["approve"]["by"], "ana");
    // The saga has ended: another signal is refused by the daemon.
    let a = send(api.post(&format!("/v1/sagas/{saga_id}/signals/other"))).await;
    assert_eq!((a.status, a.problem()), (409, "refused"), "{}", a.text);
    assert!(a.text.contains("completed, not running"), "{}", a.text);

    // No daemon to answer: the signal stays on the stream.
    api.stop_daemon().await;
    let a = send(api.post(&format!("/v1/sagas/{saga_id}/signals/late"))).await;
    assert_eq!((a.status, a.problem()), (504, "no-answer"), "{}", a.text);
    assert!(a.text.contains("saga:signals"), "{}", a.text);
    api.stop().await;
}
