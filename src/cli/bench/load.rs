//! The load: starts written to the trigger stream at most `concurrency` at
//! a time (or at a fixed rate), and the audit stream followed to time each
//! saga from its start entry to its end.

use crate::connection::Client;
use crate::protocol::fields as f;
use crate::streams;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How sagas are started.
#[derive(Clone, Debug)]
pub struct Load {
    /// Sagas to run; ignored when `duration` is set.
    pub sagas: usize,
    /// Keep starting sagas for this long instead.
    pub duration: Option<Duration>,
    /// Sagas in flight at most.
    pub concurrency: usize,
    /// Start this many sagas per second (open loop) instead of refilling as
    /// sagas end.
    pub rate: Option<f64>,
    pub trigger: String,
    pub events: String,
    pub work_ms: u64,
    /// Robots per mission: the branches of its exploration fan-out.
    pub robots: usize,
}

/// What the run measured.
pub struct Measured {
    pub ended: usize,
    pub elapsed: Duration,
    pub latencies_ms: Vec<f64>,
    /// Step name to the durations of its completed attempts, less the
    /// handlers' simulated work.
    pub step_ms: HashMap<String, Vec<f64>>,
    /// Sagas that did not end `saga_completed`, or did not end at all.
    pub failures: Vec<String>,
    /// Branches of fan-out steps completed.
    pub branches: usize,
}

struct Ended {
    index: usize,
    event_type: String,
}

/// How long the load waits for the next saga to end before giving up.
const STALL: Duration = Duration::from_secs(30);

pub async fn run(client: &Client, load: &Load) -> Result<Measured, String> {
    let mut conn = client
        .commands(Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    // Each mission explores an area of its own: the reference mission locks
    // its robots per area, and a benchmark of missions queueing for the same
    // robots would measure the queue, not the daemon.
    let payload = |index: usize| {
        serde_json::json!({ "area": format!("bench-{index}"), "robots": load.robots }).to_string()
    };
    let (tx, mut ended_rx) = mpsc::unbounded_channel();
    let (steps_tx, steps_rx) = tokio::sync::oneshot::channel();
    let stop = tokio_util::sync::CancellationToken::new();
    // Follow the audit stream from its last entry before the first start.
    let from = streams::last_id(&mut conn, &load.events)
        .await
        .map_err(|e| e.to_string())?;
    let follower = tokio::spawn(follow(
        client.clone(),
        load.clone(),
        from,
        tx,
        steps_tx,
        stop.clone(),
    ));

    let started_at = Instant::now();
    let mut start_times: Vec<Instant> = Vec::new();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut in_flight = 0usize;
    let mut ended = 0usize;
    let may_start = |n: usize| match load.duration {
        Some(d) => started_at.elapsed() < d,
        None => n < load.sagas,
    };
    loop {
        // Start what may be started now.
        while in_flight < load.concurrency && may_start(start_times.len()) {
            if let Some(rate) = load.rate {
                let due = started_at + Duration::from_secs_f64(start_times.len() as f64 / rate);
                if due > Instant::now() {
                    break;
                }
            }
            let index = start_times.len();
            start_times.push(Instant::now());
            let _: String = redis::cmd("XADD")
                .arg(&load.trigger)
                .arg("*")
                .arg(f::CORRELATION_ID)
                .arg(format!("bench-{index}"))
                .arg(f::PAYLOAD)
                .arg(payload(index))
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("cannot write a start: {e}"))?;
            in_flight += 1;
        }
        if in_flight == 0 && !may_start(start_times.len()) {
            break;
        }
        let next_start = load
            .rate
            .filter(|_| may_start(start_times.len()) && in_flight < load.concurrency)
            .map(|rate| started_at + Duration::from_secs_f64(start_times.len() as f64 / rate));
        let wait = next_start.map_or(STALL, |due| due.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, ended_rx.recv()).await {
            Ok(Some(end)) => {
                in_flight -= 1;
                ended += 1;
                latencies.push(start_times[end.index].elapsed().as_secs_f64() * 1000.0);
                if end.event_type != "saga_completed" {
                    failures.push(format!("bench-{} ended {}", end.index, end.event_type));
                }
            }
            Ok(None) => return Err("the audit stream reader stopped".into()),
            Err(_) if next_start.is_some() => {}
            Err(_) => {
                failures.push(format!(
                    "{in_flight} sagas did not end within {STALL:?} of the last one"
                ));
                break;
            }
        }
    }
    let elapsed = started_at.elapsed();
    stop.cancel();
    let _ = follower.await;
    let (step_ms, branches) = steps_rx.await.unwrap_or_default();
    Ok(Measured {
        ended,
        elapsed,
        latencies_ms: latencies,
        step_ms,
        failures,
        branches,
    })
}

/// Step name to durations, and branches completed.
type StepTimes = (HashMap<String, Vec<f64>>, usize);

/// Reads the audit stream from its current end: sends each saga's end, and
/// collects the durations of steps and branches (a fan-out's own start and
/// end are not an attempt, and are left out).
async fn follow(
    client: Client,
    load: Load,
    from: String,
    ended: mpsc::UnboundedSender<Ended>,
    steps_out: tokio::sync::oneshot::Sender<StepTimes>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut steps: HashMap<String, Vec<f64>> = HashMap::new();
    let mut branches = 0;
    let mut started: HashMap<(String, String, String), u64> = HashMap::new();
    let Ok(mut conn) = client.blocking(Duration::from_millis(500)).await else {
        return;
    };
    let mut last = from;
    while !stop.is_cancelled() {
        let read = streams::read_after(
            &mut conn,
            &load.events,
            &last,
            Some(5000),
            Duration::from_millis(200),
        )
        .await;
        let Ok(entries) = read else { continue };
        for entry in entries {
            last = entry.id.clone();
            let text = |k: &str| {
                entry
                    .fields
                    .get(k)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let event_type = text(f::EVENT_TYPE);
            let ts: u64 = text(f::TIMESTAMP).parse().unwrap_or(0);
            let branch = text(f::BRANCH);
            let fan_out = branch.is_empty() && text(f::PAYLOAD).contains("\"branches\"");
            match event_type.as_str() {
                "step_started" if !fan_out => {
                    started.insert((text(f::SAGA_ID), text(f::STEP), branch), ts);
                }
                "step_completed" if !fan_out => {
                    let step = text(f::STEP);
                    if !branch.is_empty() {
                        branches += 1;
                    }
                    let key = (text(f::SAGA_ID), step.clone(), branch);
                    if let Some(t0) = started.remove(&key) {
                        let ms = ts.saturating_sub(t0) as f64 - load.work_ms as f64;
                        steps.entry(step).or_default().push(ms.max(0.0));
                    }
                }
                "saga_completed" | "saga_compensated" | "saga_failed" | "saga_rejected"
                | "saga_duplicate" => {
                    let index = text(f::CORRELATION_ID)
                        .strip_prefix("bench-")
                        .and_then(|i| i.parse().ok());
                    if let Some(index) = index {
                        let _ = ended.send(Ended { index, event_type });
                    }
                }
                _ => {}
            }
        }
    }
    let _ = steps_out.send((steps, branches));
}
