//! Reading `saga:events` across Redis restarts, and the audit of how every
//! saga ended.

use super::*;

// --------------------------------------------------------------- events

/// Entries taken per read of `saga:events`.
const EVENTS_BATCH: usize = 5000;

/// What has been read of `saga:events` so far. Reads reconnect after
/// errors, so a reader outlives a Redis restart.
pub struct EventLog {
    url: String,
    mode: RedisMode,
    conn: Option<Conn>,
    last_id: Option<String>,
    events: Vec<Event>,
}

impl EventLog {
    /// A reader of the one server at `redis_url` (on a cluster, the node
    /// that serves `saga:events`).
    pub fn new(redis_url: &str) -> Self {
        Self::with_mode(redis_url, RedisMode::Single)
    }

    /// A reader of `redis`'s `saga:events`, one server or a cluster (its
    /// commands routed to the node serving the stream).
    pub fn on(redis: &impl Backend) -> Self {
        Self::with_mode(&redis.url(), redis.mode())
    }

    fn with_mode(redis_url: &str, mode: RedisMode) -> Self {
        Self {
            url: redis_url.to_owned(),
            mode,
            conn: None,
            last_id: None,
            events: Vec::new(),
        }
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Reads what was added since the last read. A read that fails (Redis
    /// is down) reads nothing; the next one tries again.
    pub async fn poll(&mut self) -> &[Event] {
        loop {
            let conn = match &mut self.conn {
                Some(conn) => conn,
                None => match try_conn(&self.url, self.mode).await {
                    Ok(conn) => self.conn.insert(conn),
                    Err(_) => return &self.events,
                },
            };
            let from = match &self.last_id {
                Some(id) => format!("({id}"),
                None => "-".to_owned(),
            };
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg("saga:events")
                .arg(from)
                .arg("+")
                .arg("COUNT")
                .arg(EVENTS_BATCH);
            let reply: redis::Value = match cmd.query_async(conn).await {
                Ok(reply) => reply,
                Err(_) => {
                    self.conn = None;
                    return &self.events;
                }
            };
            let entries = decode_range_reply("saga:events", &reply);
            let full = entries.len() == EVENTS_BATCH;
            for entry in entries {
                self.last_id = Some(entry.id.clone());
                self.events.push(Event::from_fields(lossy(&entry.fields)));
            }
            if !full {
                return &self.events;
            }
        }
    }

    /// Reads until `done` holds for the events read so far; panics naming
    /// `what` after `within`.
    pub async fn wait_until(
        &mut self,
        within: Duration,
        what: &str,
        mut done: impl FnMut(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + within;
        loop {
            self.poll().await;
            if done(&self.events) {
                return self.events.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "not within {within:?}: {what}\n{}",
                    summary(&self.events, &[])
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads until every correlation id in `ids` has an event that ends a
    /// saga; panics listing those without one after `within`.
    pub async fn wait_all_ended(&mut self, ids: &[String], within: Duration) -> Vec<Event> {
        let deadline = Instant::now() + within;
        loop {
            self.poll().await;
            let open = not_ended(&self.events, ids);
            if open.is_empty() {
                return self.events.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} of {} sagas did not end within {within:?}: {:?}\n{}",
                    open.len(),
                    ids.len(),
                    open.iter().take(10).collect::<Vec<_>>(),
                    summary(&self.events, &open)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits `quiet`, then reads what came meanwhile: late writes (a second
    /// end, an event after the end) get the chance to show.
    pub async fn settle(&mut self, quiet: Duration) -> Vec<Event> {
        tokio::time::sleep(quiet).await;
        self.poll().await;
        self.events.clone()
    }
}

fn is_end(e: &Event) -> bool {
    SAGA_ENDS.contains(&e.event_type.as_str())
        || e.event_type == "saga_rejected"
        || e.event_type == "saga_duplicate"
}

/// The ids of `ids` that have no event ending their saga.
pub fn not_ended(events: &[Event], ids: &[String]) -> Vec<String> {
    let ended: BTreeSet<&str> = events
        .iter()
        .filter(|e| is_end(e))
        .map(|e| e.correlation_id.as_str())
        .collect();
    ids.iter()
        .filter(|id| !ended.contains(id.as_str()))
        .cloned()
        .collect()
}

/// Whether the saga of `correlation_id` has an event of this type and step.
pub fn has(events: &[Event], correlation_id: &str, event_type: &str, step: &str) -> bool {
    events.iter().any(|e| {
        e.correlation_id == correlation_id
            && e.event_type == event_type
            && e.step.as_deref() == Some(step)
    })
}

/// The events of one correlation id.
pub fn of<'a>(events: &'a [Event], correlation_id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.correlation_id == correlation_id)
        .collect()
}

/// For failure messages: counts by event type, then the events of `focus`
/// (at most a few sagas).
fn summary(events: &[Event], focus: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        *counts.entry(e.event_type.as_str()).or_default() += 1;
    }
    let mut out = format!("{} events: {counts:?}", events.len());
    for id in focus.iter().take(3) {
        let ours: Vec<Event> = of(events, id).into_iter().cloned().collect();
        out.push_str(&format!("\nevents of {id}:\n{}", describe(&ours)));
    }
    out
}

/// Panics unless every id in `ids` ended with exactly `end`.
pub fn assert_all_ended_as(events: &[Event], ids: &[String], end: &str) {
    let wrong: Vec<(String, Vec<String>)> = ids
        .iter()
        .map(|id| {
            let ends = of(events, id)
                .into_iter()
                .filter(|e| is_end(e))
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>();
            (id.clone(), ends)
        })
        .filter(|(_, ends)| ends.len() != 1 || ends[0] != end)
        .collect();
    let focus: Vec<String> = wrong.iter().map(|(id, _)| id.clone()).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} sagas did not end with exactly one {end}: {:?}\n{}",
        wrong.len(),
        ids.len(),
        wrong.iter().take(10).collect::<Vec<_>>(),
        summary(events, &focus)
    );
}

/// The attempt and request id in the payload of a `*_started` event.
fn attempt_of(e: &Event) -> (u64, String) {
    let attempt = e.payload["attempt"].as_u64().unwrap_or(0);
    let request_id = e.payload["request_id"].as_str().unwrap_or("").to_owned();
    (attempt, request_id)
}

/// What must hold of the audit stream whatever crashed meanwhile; returns
/// every breach found, each naming its saga.
///
/// - every correlation id in `started`, and every one with a `saga_started`
///   at all, has exactly one `saga_started` (one saga per start entry);
/// - a saga has exactly one `saga_started`, and once started exactly one
///   end, and no event after its end;
/// - each attempt of a step or compensation was sent under exactly one
///   `request_id`, attempts are numbered 1, 2, ... with each retry preceded
///   by a failure or timeout of the attempt before, and no `request_id`
///   serves two attempts (a crash may send a command again, never under a
///   new `request_id`);
/// - each step and each compensation completed at most once;
/// - no start was rejected or taken for a duplicate.
pub fn audit(events: &[Event], started: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut sagas_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event_type == "saga_started") {
        sagas_of
            .entry(e.correlation_id.as_str())
            .or_default()
            .push(e.saga_id.as_str());
    }
    for id in started {
        if !sagas_of.contains_key(id.as_str()) {
            problems.push(format!("{id}: no saga_started"));
        }
    }
    for (id, sagas) in &sagas_of {
        if sagas.len() != 1 {
            problems.push(format!("{id}: {} saga_started: {sagas:?}", sagas.len()));
        }
    }
    for e in events {
        if e.event_type == "saga_rejected" || e.event_type == "saga_duplicate" {
            problems.push(format!(
                "{}: {} {}",
                e.correlation_id, e.event_type, e.payload
            ));
        }
    }
    let mut by_saga: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| !e.saga_id.is_empty()) {
        by_saga.entry(e.saga_id.as_str()).or_default().push(e);
    }
    for (saga_id, evs) in &by_saga {
        let who = format!("{} (saga {saga_id})", evs[0].correlation_id);
        audit_saga(&who, evs, &mut problems);
    }
    problems
}

fn audit_saga(who: &str, evs: &[&Event], problems: &mut Vec<String>) {
    let count = |t: &str| evs.iter().filter(|e| e.event_type == t).count();
    let starts = count("saga_started");
    if starts != 1 {
        problems.push(format!("{who}: {starts} saga_started"));
    }
    let ends: Vec<usize> = (0..evs.len())
        .filter(|i| SAGA_ENDS.contains(&evs[*i].event_type.as_str()))
        .collect();
    if ends.len() != 1 {
        let types: Vec<&str> = ends.iter().map(|i| evs[*i].event_type.as_str()).collect();
        problems.push(format!("{who}: {} ends: {types:?}", ends.len()));
    }
    if let Some(first_end) = ends.first() {
        let after: Vec<String> = evs[first_end + 1..].iter().map(|e| e.label()).collect();
        if !after.is_empty() {
            problems.push(format!("{who}: events after its end: {after:?}"));
        }
    }
    // (kind, unit) -> attempt -> request ids; and request id -> attempts.
    // A unit is a step, or a branch of a fan-out (`step[branch]`).
    let mut attempts: BTreeMap<(&str, String), BTreeMap<u64, BTreeSet<String>>> = BTreeMap::new();
    let mut uses: BTreeMap<String, BTreeSet<(&str, String, u64)>> = BTreeMap::new();
    for (i, e) in evs.iter().enumerate() {
        let kind = match e.event_type.as_str() {
            // A fan-out's own start names its branches, not an attempt.
            "step_started" if e.payload.get("branches").is_some() => continue,
            // A `wait` step sends nothing: it has no attempt.
            "step_started" if e.payload.get("signal").is_some() => continue,
            "step_started" => "step",
            "compensation_started" => "compensation",
            _ => continue,
        };
        let unit = e.unit();
        let step = unit.as_str();
        let (attempt, request_id) = attempt_of(e);
        if attempt == 0 || request_id.is_empty() {
            problems.push(format!(
                "{who}: {} without attempt/request_id: {}",
                e.label(),
                e.payload
            ));
            continue;
        }
        let of_attempt = attempts.entry((kind, unit.clone())).or_default();
        let first_time = !of_attempt.contains_key(&attempt);
        of_attempt
            .entry(attempt)
            .or_default()
            .insert(request_id.clone());
        uses.entry(request_id)
            .or_default()
            .insert((kind, unit.clone(), attempt));
        if attempt > 1 && first_time && !retry_is_due(&evs[..i], kind, step, attempt - 1) {
            problems.push(format!(
                "{who}: {kind} {step} attempt {attempt} sent with no failure or timeout of attempt {} before it",
                attempt - 1
            ));
        }
    }
    for ((kind, step), by_attempt) in &attempts {
        let numbers: Vec<u64> = by_attempt.keys().copied().collect();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        if numbers != expected {
            problems.push(format!("{who}: {kind} {step} attempts {numbers:?}"));
        }
        for (attempt, ids) in by_attempt {
            if ids.len() != 1 {
                problems.push(format!(
                    "{who}: {kind} {step} attempt {attempt} sent under {} request ids: {ids:?}",
                    ids.len()
                ));
            }
        }
    }
    for (request_id, used) in &uses {
        if used.len() != 1 {
            problems.push(format!("{who}: request id {request_id} serves {used:?}"));
        }
    }
    for completed in ["step_completed", "compensation_completed"] {
        let mut per_step: BTreeMap<String, usize> = BTreeMap::new();
        for e in evs.iter().filter(|e| e.event_type == completed) {
            *per_step.entry(e.unit()).or_default() += 1;
        }
        for (step, n) in per_step.into_iter().filter(|(_, n)| *n > 1) {
            problems.push(format!("{who}: {completed} {step} {n} times"));
        }
    }
}

/// Whether `before` records attempt `attempt` of `step` ending in failure
/// or timeout, which is what allows the next attempt.
fn retry_is_due(before: &[&Event], kind: &str, unit: &str, attempt: u64) -> bool {
    let ended = match kind {
        "step" => ["step_failed", "step_timed_out"],
        _ => ["compensation_failed", "compensation_timed_out"],
    };
    before.iter().any(|e| {
        ended.contains(&e.event_type.as_str())
            && e.unit() == unit
            && e.payload["attempt"].as_u64() == Some(attempt)
    })
}

/// Panics with every breach of [`audit`], and the events of the sagas
/// concerned.
pub fn assert_audit(events: &[Event], started: &[String]) {
    let problems = audit(events, started);
    if problems.is_empty() {
        return;
    }
    let focus: Vec<String> = problems
        .iter()
        .filter_map(|p| p.split([':', ' ']).next())
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    panic!(
        "the audit of {} events found {} problem(s):\n  {}\n{}",
        events.len(),
        problems.len(),
        problems.join("\n  "),
        summary(events, &focus)
    );
}

/// How long after `since_ms` (unix ms) the first event from index `from`
/// on was written; `None` if there is none.
pub fn first_write_after(events: &[Event], from: usize, since_ms: u64) -> Option<Duration> {
    let e = events.get(from..)?.first()?;
    let at: u64 = e.fields.get("timestamp")?.parse().ok()?;
    Some(Duration::from_millis(at.saturating_sub(since_ms)))
}
