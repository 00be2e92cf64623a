//! The store's scripts on a real Redis Cluster (3 masters, 3 replicas, and
//! one master alone), each held to the contract at its top: a transition
//! in 'outbox' mode records its shared writes beside its saga and refuses
//! whole when a key is of the wrong kind; the relay makes commands and
//! events exactly once (run again after a crash, or two at once) and the
//! rest at least once, refuses what it can never write without blocking
//! the outbox, and waits for replicas that exist; a claim goes partition by
//! partition, fences the dead owner, refuses a fenced claimer, and is
//! finished by the next when cut short; the indexes list sagas newest
//! first and are trimmed of what ended; dead-lettering crosses slots.
//!
//! `store_fencing.rs` holds the transition and the leases on one Redis.

mod common;

use common::*;
use redis::aio::ConnectionLike;
use redis::{Cmd, RedisFuture, Value};
use sagaflow::config::Settings;
use sagaflow::connection::{Client, Conn, RedisMode};
use sagaflow::local_redis::{ClusterOptions, LocalCluster};
use sagaflow::protocol::{Command, CorrelationId, RequestId, SagaEvent, SagaId, SagaStatus};
use sagaflow::saga::SagaState;
use sagaflow::store::keys::{slot, Keys, Partition};
use sagaflow::store::lease::{self, OwnerClaim};
use sagaflow::store::relay::{relay, Relayed};
use sagaflow::store::transition::Write;
use sagaflow::store::{maintain, sagas, EntryRef, Fence, Ownership, Transition};
use sagaflow::store::{WriteError, Written};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Leases of the owners that stay alive through a test.
const TTL: Duration = Duration::from_secs(60);
/// Leases of the owners that die in a test, and how long to wait for that.
const SHORT_TTL: Duration = Duration::from_millis(200);
const PAST_SHORT_TTL: Duration = Duration::from_millis(350);

const COMMANDS: &str = "explore:commands";
const EVENTS: &str = "saga:events";

// ------------------------------------------------------------- fixtures

fn keys() -> Keys {
    Keys::new("saga:")
}

fn settings(url: &str) -> Settings {
    Settings {
        redis_url: url.to_owned(),
        ..Settings::default()
    }
}

/// A cluster connection as the daemon makes it.
async fn cluster_conn(url: &str) -> Conn {
    let client = redis::Client::open(url).expect("a Redis URL");
    let client = must(
        "a cluster client",
        Client::resolve(client, RedisMode::Cluster),
    )
    .await;
    let conn = must("a connection", client.commands(Duration::from_secs(5))).await;
    assert!(conn.is_cluster());
    conn
}

fn partition(index: u16) -> Partition {
    Partition::all()
        .nth(usize::from(index))
        .expect("a partition")
}

/// A new saga id whose saga lives in partition `index`.
fn saga_in(index: u16) -> SagaId {
    loop {
        let id = SagaId::generate();
        if Partition::of(id.as_str()).index() == index {
            return id;
        }
    }
}

fn state(saga_id: &SagaId, phase: SagaStatus) -> SagaState {
    SagaState {
        saga_id: saga_id.clone(),
        saga: "s".into(),
        definition_version: "1".into(),
        correlation_id: CorrelationId::from_trusted("scripts"),
        trace_id: sagaflow::protocol::TraceId::generate(),
        parent_span_id: None,
        span_id: None,
        reply_stream: "saga:replies:node-a".into(),
        input: sagaflow::protocol::Json::of(&json!({})),
        results: Default::default(),
        phase: phase_of(phase),
        work: Default::default(),
        rescues: 0,
        started_at_ms: now_ms(),
        paused: None,
        locks: Default::default(),
    }
}

fn event(saga_id: &SagaId, n: u64) -> SagaEvent {
    numbered_event(saga_id, n)
}

/// A command of a saga, told apart by `n`.
fn command(saga_id: &SagaId, n: u64) -> Command {
    Command {
        saga_id: saga_id.clone(),
        request_id: RequestId::generate(),
        ..command_to("saga:replies:node-a", "explore", json!({ "n": n }))
    }
}

/// What one transition of a test writes.
struct Step {
    saga: SagaId,
    owner: &'static str,
    seq: u64,
    ownership: Ownership,
    phase: Option<SagaStatus>,
    /// Command stream and `n` of each command.
    commands: Vec<(&'static str, u64)>,
    /// `n` of each event.
    events: Vec<u64>,
    ack: Option<EntryRef>,
    own_reply_streams: Vec<(&'static str, u64)>,
    /// Locks the transition lets go of.
    unlocks: Vec<&'static str>,
}

impl Step {
    fn new(saga: &SagaId, owner: &'static str, seq: u64) -> Self {
        Self {
            saga: saga.clone(),
            owner,
            seq,
            ownership: if seq == 1 {
                Ownership::Join
            } else {
                Ownership::Stay
            },
            phase: Some(SagaStatus::Running),
            commands: Vec::new(),
            events: Vec::new(),
            ack: None,
            own_reply_streams: Vec::new(),
            unlocks: Vec::new(),
        }
    }

    fn ownership(mut self, ownership: Ownership) -> Self {
        self.ownership = ownership;
        self
    }

    fn phase(mut self, phase: SagaStatus) -> Self {
        self.phase = Some(phase);
        self
    }

    fn command(mut self, stream: &'static str, n: u64) -> Self {
        self.commands.push((stream, n));
        self
    }

    fn event(mut self, n: u64) -> Self {
        self.events.push(n);
        self
    }

    async fn write(&self, conn: &mut Conn, s: &Settings) -> Result<Written, WriteError> {
        let state = self.phase.map(|phase| state(&self.saga, phase));
        let commands: Vec<(&str, Command)> = self
            .commands
            .iter()
            .map(|(stream, n)| (*stream, command(&self.saga, *n)))
            .collect();
        let events: Vec<SagaEvent> = self.events.iter().map(|n| event(&self.saga, *n)).collect();
        let transition = Transition {
            saga: Some((
                self.saga.as_str(),
                Fence {
                    owner: self.owner,
                    seq: self.seq,
                    ownership: self.ownership,
                },
            )),
            state: state.as_ref(),
            commands: commands.iter().map(|(s, c)| (*s, c)).collect(),
            events: events.iter().collect(),
            ack: self.ack.as_ref(),
            own_reply_streams: self.own_reply_streams.clone(),
            wake: (!self.own_reply_streams.is_empty()).then_some("saga:replies:node-a"),
            unlocks: self.unlocks.clone(),
        };
        bounded("a transition", transition.write(conn, s)).await
    }

    async fn done(&self, conn: &mut Conn, s: &Settings) {
        let written = self.write(conn, s).await;
        assert!(
            matches!(written, Ok(Written::Done)),
            "{} seq {}: {written:?}",
            self.saga,
            self.seq
        );
    }
}

async fn q<T: redis::FromRedisValue>(conn: &mut Conn, cmd: &Cmd) -> T {
    must("a command", cmd.query_async(conn)).await
}

fn cmd(name: &str, args: &[&str]) -> Cmd {
    let mut cmd = redis::cmd(name);
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

type Entry = (String, BTreeMap<String, String>);

async fn entries(conn: &mut Conn, stream: &str) -> Vec<Entry> {
    q(conn, &cmd("XRANGE", &[stream, "-", "+"])).await
}

/// What a stream holds, each entry as `<saga id>/<payload>`, in order.
async fn labels(conn: &mut Conn, stream: &str) -> Vec<String> {
    entries(conn, stream)
        .await
        .into_iter()
        .map(|(_, f)| format!("{}/{}", f["saga_id"], f["payload"]))
        .collect()
}

fn label(saga: &SagaId, n: u64) -> String {
    format!("{saga}/{}", json!({ "n": n }))
}

async fn exists(conn: &mut Conn, key: &str) -> bool {
    q::<i64>(conn, &cmd("EXISTS", &[key])).await == 1
}

async fn owner_of(conn: &mut Conn, saga: &SagaId) -> Option<String> {
    q(
        conn,
        &cmd("HGET", &[&keys().record(saga.as_str()), "owner"]),
    )
    .await
}

async fn members(conn: &mut Conn, set: &str) -> BTreeSet<String> {
    q(conn, &cmd("SMEMBERS", &[set])).await
}

async fn register(conn: &mut Conn, s: &Settings, owner: &str, ttl: Duration) {
    must("a lease", lease::register(conn, s, owner, ttl)).await;
}

/// Relays a partition's outbox with no replica waited for.
async fn relay_all(conn: &mut Conn, p: Partition) -> Relayed {
    must("a relay", relay(conn, &keys(), p, 0, None)).await
}

// ----------------------------------------------------------- transition

/// On a cluster, the lock lives in a slot of its own: the transition that
/// ends a saga records the saga's leaving the lock's queue in its outbox,
/// and the relay makes it there (twice over is the same as once), with the
/// expiry of the saga's kept signals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ending_transition_lets_go_of_its_locks_through_the_relay() {
    use sagaflow::protocol::locks::LockEntry;
    use sagaflow::store::locks::{acquire, queue, Acquired};
    let cluster = RedisCluster::start();
    let s = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster.url()).await;
    register(&mut conn, &s, "node-a.1", TTL).await;
    let saga = saga_in(12);
    let other = saga_in(13);
    let p = Partition::of(saga.as_str());
    Step::new(&saga, "node-a.1", 1).done(&mut conn, &s).await;
    let entry = |id: &SagaId| LockEntry {
        saga_id: id.to_string(),
        saga: "s".into(),
        step: "t".into(),
        since_ms: 1,
    };
    for name in ["robot:1", "robot:2"] {
        let got = must("a lock", acquire(&mut conn, &keys(), name, &entry(&saga))).await;
        assert_eq!(got, Acquired::Held);
        let got = must("a lock", acquire(&mut conn, &keys(), name, &entry(&other))).await;
        assert!(matches!(got, Acquired::Queued { ahead: 1, .. }), "{got:?}");
    }
    assert_ne!(
        slot(&keys().lock("robot:1")),
        slot(&keys().record(saga.as_str()))
    );
    let mut last = Step::new(&saga, "node-a.1", 2)
        .ownership(Ownership::Leave)
        .phase(SagaStatus::Completed);
    last.unlocks = vec!["robot:1", "robot:2"];
    last.done(&mut conn, &s).await;
    // Recorded, not yet made.
    let held = must("a queue", queue(&mut conn, &keys(), "robot:1")).await;
    assert_eq!(held[0].saga_id, saga.to_string());
    assert_eq!(relay_all(&mut conn, p).await.entries, 1);
    for name in ["robot:1", "robot:2"] {
        let now = must("a queue", queue(&mut conn, &keys(), name)).await;
        let ids: Vec<&str> = now.iter().map(|e| e.saga_id.as_str()).collect();
        assert_eq!(ids, [other.as_str()], "{name}: the next holds it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_on_a_cluster_records_its_shared_writes_in_the_outbox() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster.url()).await;
    register(&mut conn, &s, "node-a.1", TTL).await;

    let saga = saga_in(10);
    let p = Partition::of(saga.as_str());
    let mut first = Step::new(&saga, "node-a.1", 1)
        .command(COMMANDS, 1)
        .event(1);
    first.ack = Some(EntryRef::new("mission:start", "1-1"));
    first.done(&mut conn, &s).await;

    let record: BTreeMap<String, String> =
        q(&mut conn, &cmd("HGETALL", &[&keys().record(saga.as_str())])).await;
    assert_eq!(record["owner"], "node-a.1");
    assert_eq!(record["seq"], "1");
    assert_eq!(record["phase"], "running");
    let stored: SagaState = serde_json::from_str(&record["state"]).expect("the state");
    assert_eq!(stored.saga_id, saga);
    let at: Option<f64> = q(
        &mut conn,
        &cmd("ZSCORE", &[&keys().index(p, "running"), saga.as_str()]),
    )
    .await;
    assert!(at.is_some(), "indexed as running");
    assert_eq!(
        members(&mut conn, &keys().owned(p, "node-a.1")).await,
        BTreeSet::from([saga.to_string()])
    );
    assert!(members(&mut conn, &keys().owners_in(p))
        .await
        .contains("node-a.1"));

    let outbox = entries(&mut conn, &keys().outbox(p)).await;
    assert_eq!(outbox.len(), 1, "one entry for one transition");
    let writes: Vec<Write> = serde_json::from_str(&outbox[0].1["w"]).expect("the writes");
    let ops: Vec<(&str, &str, bool)> = writes
        .iter()
        .map(|w| (w.op.as_str(), w.key.as_str(), w.once))
        .collect();
    assert_eq!(
        ops,
        [
            ("xadd", COMMANDS, true),
            ("xadd", EVENTS, true),
            ("xack", "mission:start", false),
        ]
    );
    for stream in [COMMANDS, EVENTS] {
        assert!(
            !exists(&mut conn, stream).await,
            "{stream} is written by the relay"
        );
    }

    // A retry after a lost answer: written before, and no second entry.
    assert_eq!(
        first.write(&mut conn, &s).await.unwrap(),
        Written::AlreadyDone
    );
    assert_eq!(entries(&mut conn, &keys().outbox(p)).await.len(), 1);
    Step::new(&saga, "node-a.1", 2)
        .event(2)
        .done(&mut conn, &s)
        .await;
    assert_eq!(entries(&mut conn, &keys().outbox(p)).await.len(), 2);
    assert_eq!(
        Step::new(&saga, "node-b.1", 3)
            .event(3)
            .write(&mut conn, &s)
            .await
            .unwrap(),
        Written::NotOurs,
        "another owner"
    );

    // A key of the wrong kind among those the transition writes refuses it
    // all: the writer's set, the index of the saga's phase, the outbox.
    let wrong = [
        (20, keys().owned(partition(20), "node-a.1")),
        (30, keys().index(partition(30), "running")),
        (40, keys().outbox(partition(40))),
    ];
    for (index, key) in wrong {
        q::<()>(&mut conn, &cmd("SET", &[&key, "not what it must be"])).await;
        let saga = saga_in(index);
        let p = partition(index);
        let refused = Step::new(&saga, "node-a.1", 1)
            .command(COMMANDS, 1)
            .event(1)
            .write(&mut conn, &s)
            .await;
        match refused {
            Err(WriteError::WrongType { key: named }) => assert_eq!(named, key),
            other => panic!("{key}: expected a wrong-type refusal, got {other:?}"),
        }
        assert!(!exists(&mut conn, &keys().record(saga.as_str())).await);
        if index != 30 {
            assert!(!exists(&mut conn, &keys().index(p, "running")).await);
        }
        assert!(!exists(&mut conn, &keys().owners_in(p)).await);
        if index != 40 {
            assert!(!exists(&mut conn, &keys().outbox(p)).await);
        }
    }
}

// ---------------------------------------------------------------- relay

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_makes_commands_and_events_once_and_the_rest_at_least_once() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster.url()).await;
    register(&mut conn, &s, "node-a.1", TTL).await;

    // A start read by the daemons, to be acknowledged by the relay.
    q::<()>(
        &mut conn,
        &cmd(
            "XGROUP",
            &["CREATE", "mission:start", "sagaflow", "0", "MKSTREAM"],
        ),
    )
    .await;
    let start: String = q(&mut conn, &cmd("XADD", &["mission:start", "*", "a", "1"])).await;
    let _: Value = q(
        &mut conn,
        &cmd(
            "XREADGROUP",
            &["GROUP", "sagaflow", "d", "STREAMS", "mission:start", ">"],
        ),
    )
    .await;

    let (a, b) = (saga_in(5), saga_in(5));
    let p = partition(5);
    let mut first = Step::new(&a, "node-a.1", 1).command(COMMANDS, 1).event(1);
    first.ack = Some(EntryRef::new("mission:start", &start));
    first.own_reply_streams = vec![("saga:replies:req-1", 60)];
    first.done(&mut conn, &s).await;
    Step::new(&b, "node-a.1", 1)
        .command(COMMANDS, 1)
        .event(1)
        .done(&mut conn, &s)
        .await;
    Step::new(&a, "node-a.1", 2)
        .command(COMMANDS, 2)
        .event(2)
        .event(3)
        .done(&mut conn, &s)
        .await;
    let before = entries(&mut conn, &keys().outbox(p)).await;
    assert_eq!(before.len(), 3);
    // Of the first entry, the wake of the reply reader, the per-request
    // stream and its expiry, the acknowledgement: made at least once.
    let again = 4;

    let relayed = relay_all(&mut conn, p).await;
    assert_eq!(
        relayed,
        Relayed {
            entries: 3,
            writes: 7 + again,
            ..Relayed::default()
        }
    );
    let commands = [label(&a, 1), label(&b, 1), label(&a, 2)];
    let events = [label(&a, 1), label(&b, 1), label(&a, 2), label(&a, 3)];
    assert_eq!(labels(&mut conn, COMMANDS).await, commands);
    assert_eq!(labels(&mut conn, EVENTS).await, events);
    assert_eq!(
        entries(&mut conn, &keys().outbox(p)).await,
        [],
        "relayed, then removed"
    );
    let mark: Option<String> = q(
        &mut conn,
        &cmd(
            "HGET",
            &[&keys().relayed(EVENTS).unwrap(), &p.index().to_string()],
        ),
    )
    .await;
    assert_eq!(mark.as_deref(), Some(before[2].0.as_str()));
    let pending: (i64, Value, Value, Value) =
        q(&mut conn, &cmd("XPENDING", &["mission:start", "sagaflow"])).await;
    assert_eq!(pending.0, 0, "the start was acknowledged");
    let ttl: i64 = q(&mut conn, &cmd("TTL", &["saga:replies:req-1"])).await;
    assert!((1..=60).contains(&ttl), "the reply stream expires: {ttl}");
    assert_eq!(entries(&mut conn, "saga:replies:node-a").await.len(), 1);

    assert_eq!(relay_all(&mut conn, p).await, Relayed::default());

    // A relay that crashed after its writes, before it removed the entries:
    // the outbox as it was (a stream's ids only grow, so it is made anew
    // with the same ids).
    q::<i64>(&mut conn, &cmd("DEL", &[&keys().outbox(p)])).await;
    for (id, fields) in &before {
        q::<String>(
            &mut conn,
            &cmd("XADD", &[&keys().outbox(p), id, "w", &fields["w"]]),
        )
        .await;
    }
    let rerun = relay_all(&mut conn, p).await;
    assert_eq!(
        rerun,
        Relayed {
            entries: 3,
            writes: again,
            ..Relayed::default()
        },
        "only the writes made at least once are made again"
    );
    assert_eq!(
        labels(&mut conn, COMMANDS).await,
        commands,
        "no command twice"
    );
    assert_eq!(labels(&mut conn, EVENTS).await, events, "no event twice");
    assert_eq!(
        entries(&mut conn, "saga:replies:node-a").await.len(),
        2,
        "a wake made twice"
    );

    // What is written after is relayed after.
    Step::new(&b, "node-a.1", 2)
        .event(2)
        .done(&mut conn, &s)
        .await;
    assert_eq!(relay_all(&mut conn, p).await.writes, 1);
    assert_eq!(labels(&mut conn, EVENTS).await.last(), Some(&label(&b, 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_racing_on_one_outbox_make_each_write_once() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster.url()).await;
    let (mut one, mut two) = (
        cluster_conn(&cluster.url()).await,
        cluster_conn(&cluster.url()).await,
    );
    register(&mut conn, &s, "node-a.1", TTL).await;
    let k = keys();
    let p = partition(33);
    let sagas: Vec<SagaId> = (0..6).map(|_| saga_in(33)).collect();
    let (mut commands, mut events) = (Vec::new(), Vec::new());
    let mut made = 0;
    for round in 1..=5u64 {
        for saga in &sagas {
            Step::new(saga, "node-a.1", round)
                .command(COMMANDS, round)
                .event(round)
                .done(&mut conn, &s)
                .await;
            commands.push(label(saga, round));
            events.push(label(saga, round));
        }
        for _ in 0..10 {
            let (a, b) = tokio::join!(
                relay(&mut one, &k, p, 0, None),
                relay(&mut two, &k, p, 0, None)
            );
            let (a, b) = (a.expect("a relay"), b.expect("a relay"));
            assert!(a.refused.is_empty() && b.refused.is_empty());
            made += a.writes + b.writes;
            if a.entries == 0 && b.entries == 0 {
                break;
            }
        }
        assert_eq!(entries(&mut conn, &keys().outbox(p)).await, []);
    }
    assert_eq!(labels(&mut conn, COMMANDS).await, commands);
    assert_eq!(labels(&mut conn, EVENTS).await, events);
    assert_eq!(made, commands.len() + events.len(), "each write made once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_what_it_can_never_write_and_goes_on() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster.url()).await;
    register(&mut conn, &s, "node-a.1", TTL).await;
    let p = partition(44);
    let sagas: Vec<SagaId> = (0..4).map(|_| saga_in(44)).collect();

    // A command stream replaced by a string, and the relay marks of another
    // replaced by a string; both unseen by the transitions, whose shared
    // writes are not in their slot.
    q::<()>(&mut conn, &cmd("SET", &["bad:commands", "x"])).await;
    let mark = keys().relayed("other:commands").unwrap();
    q::<()>(&mut conn, &cmd("SET", &[&mark, "x"])).await;
    Step::new(&sagas[0], "node-a.1", 1)
        .command("bad:commands", 1)
        .done(&mut conn, &s)
        .await;
    Step::new(&sagas[1], "node-a.1", 1)
        .command(COMMANDS, 1)
        .event(1)
        .done(&mut conn, &s)
        .await;
    Step::new(&sagas[2], "node-a.1", 1)
        .command("other:commands", 1)
        .done(&mut conn, &s)
        .await;
    // An entry that does not decode.
    q::<String>(
        &mut conn,
        &cmd("XADD", &[&keys().outbox(p), "*", "w", "{not json"]),
    )
    .await;
    Step::new(&sagas[3], "node-a.1", 1)
        .command(COMMANDS, 1)
        .event(1)
        .done(&mut conn, &s)
        .await;
    let ids: Vec<String> = entries(&mut conn, &keys().outbox(p))
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();

    let relayed = relay_all(&mut conn, p).await;
    assert_eq!(relayed.entries, 5);
    assert_eq!(relayed.writes, 4);
    let refused: Vec<&str> = relayed.refused.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(refused, [&ids[0], &ids[2], &ids[3]]);
    assert!(relayed.refused[0].1.contains("bad:commands"), "{relayed:?}");
    assert!(relayed.refused[1].1.contains(&mark), "{relayed:?}");
    assert!(
        relayed.refused[2].1.contains("does not decode"),
        "{relayed:?}"
    );
    assert_eq!(entries(&mut conn, &keys().outbox(p)).await, []);
    let ours = [label(&sagas[1], 1), label(&sagas[3], 1)];
    assert_eq!(labels(&mut conn, COMMANDS).await, ours);
    assert_eq!(labels(&mut conn, EVENTS).await, ours);
    assert!(!exists(&mut conn, "other:commands").await);
    let kind: String = q(&mut conn, &cmd("TYPE", &["bad:commands"])).await;
    assert_eq!(kind, "string", "left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_waits_for_replicas_and_not_for_a_master_without_any() {
    let with_replicas = RedisCluster::start();
    let alone = LocalCluster::start(&ClusterOptions {
        masters: 1,
        replicas: false,
        node_timeout: Duration::from_millis(1000),
        ..ClusterOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for url in [with_replicas.url(), alone.seeds().remove(0)] {
        let s = settings(&url);
        let mut conn = cluster_conn(&url).await;
        register(&mut conn, &s, "node-a.1", TTL).await;
        let saga = saga_in(7);
        Step::new(&saga, "node-a.1", 1)
            .command(COMMANDS, 1)
            .event(1)
            .done(&mut conn, &s)
            .await;
        // Replicas that are slow to confirm (a loaded machine) leave the
        // round unconfirmed, to be relayed again; one without replicas
        // never confirms if it is waited on.
        let mut relayed = Relayed::default();
        for _ in 0..10 {
            relayed = must("a relay", relay(&mut conn, &keys(), partition(7), 1, None)).await;
            if !relayed.unconfirmed {
                break;
            }
        }
        assert_eq!(
            relayed,
            Relayed {
                entries: 1,
                writes: 2,
                ..Relayed::default()
            },
            "{url}"
        );
        assert_eq!(labels(&mut conn, EVENTS).await, [label(&saga, 1)]);
    }
}

// --------------------------------------------------------------- claims

/// A connection lost at a known point: it fails the first command that
/// names `cut`, and every one after.
struct CutAt {
    inner: Conn,
    cut: String,
    lost: bool,
}

impl ConnectionLike for CutAt {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let names_cut = cmd
            .args_iter()
            .any(|a| matches!(a, redis::Arg::Simple(b) if b == self.cut.as_bytes()));
        if self.lost || names_cut {
            self.lost = true;
            let lost = redis::RedisError::from((redis::ErrorKind::Io, "connection lost"));
            return Box::pin(async move { Err(lost) });
        }
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

async fn dead_owners(conn: &mut Conn, s: &Settings) -> Vec<String> {
    must("dead owners", lease::dead_owners(conn, s, 16)).await.1
}

async fn claim(conn: &mut Conn, s: &Settings, dead: &str, claimer: &str) -> OwnerClaim {
    must("a claim", lease::claim_owner(conn, s, dead, claimer)).await
}

fn sorted(ids: &[&SagaId]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    ids.sort();
    ids
}

fn moved(claim: OwnerClaim) -> Vec<String> {
    match claim {
        OwnerClaim::Moved(mut ids) => {
            ids.sort();
            ids
        }
        other => panic!("expected sagas moved, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_goes_partition_by_partition_and_a_claim_cut_short_is_finished() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster.url()).await;
    register(&mut conn, &s, "live.1", TTL).await;
    register(&mut conn, &s, "dead.1", SHORT_TTL).await;
    // Partitions on each of the three masters.
    let (early, middle, late) = (saga_in(2), saga_in(25), saga_in(50));
    let middle_too = saga_in(25);
    let ended = saga_in(2);
    for saga in [&early, &middle, &middle_too, &late] {
        Step::new(saga, "dead.1", 1).done(&mut conn, &s).await;
    }
    Step::new(&ended, "dead.1", 1)
        .ownership(Ownership::Leave)
        .phase(SagaStatus::Completed)
        .done(&mut conn, &s)
        .await;
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(dead_owners(&mut conn, &s).await, ["dead.1"]);

    // The claimer loses its connection as it moves the sagas of partition
    // 25, which it has fenced: the partitions before were claimed, those
    // after not.
    let mut cut = CutAt {
        inner: conn.clone(),
        cut: keys().record(middle.as_str()),
        lost: false,
    };
    let cut_short = lease::claim_owner(&mut cut, &s, "dead.1", "live.1").await;
    assert!(cut_short.is_err(), "{cut_short:?}");
    assert_eq!(owner_of(&mut conn, &early).await.as_deref(), Some("live.1"));
    for saga in [&middle, &middle_too, &late] {
        assert_eq!(owner_of(&mut conn, saga).await.as_deref(), Some("dead.1"));
    }
    for (index, fenced) in [(2, true), (25, true), (50, false)] {
        let at: Option<f64> = q(
            &mut conn,
            &cmd("ZSCORE", &[&keys().fenced(partition(index)), "dead.1"]),
        )
        .await;
        assert_eq!(at.is_some(), fenced, "partition {index}");
    }
    assert_eq!(
        owner_of(&mut conn, &ended).await.as_deref(),
        Some("dead.1"),
        "an ended saga is no one's to drive"
    );
    assert_eq!(
        dead_owners(&mut conn, &s).await,
        ["dead.1"],
        "not forgotten before every partition is done"
    );
    // Fenced off the partitions claimed and the one cut short: a join
    // there is refused.
    for index in [2, 25] {
        let refused = saga_in(index);
        assert_eq!(
            Step::new(&refused, "dead.1", 1)
                .write(&mut conn, &s)
                .await
                .unwrap(),
            Written::LeaseLost
        );
        assert!(!exists(&mut conn, &keys().record(refused.as_str())).await);
    }
    assert_eq!(
        Step::new(&early, "dead.1", 2)
            .write(&mut conn, &s)
            .await
            .unwrap(),
        Written::NotOurs
    );
    // Not yet fenced off the others: what it creates there is claimed with
    // the rest.
    let straggler = saga_in(50);
    Step::new(&straggler, "dead.1", 1).done(&mut conn, &s).await;

    assert_eq!(
        moved(claim(&mut conn, &s, "dead.1", "live.1").await),
        sorted(&[&middle, &middle_too, &late, &straggler]),
        "the next claim finishes it"
    );
    for saga in [&early, &middle, &middle_too, &late, &straggler] {
        assert_eq!(owner_of(&mut conn, saga).await.as_deref(), Some("live.1"));
        let p = Partition::of(saga.as_str());
        assert!(members(&mut conn, &keys().owned(p, "live.1"))
            .await
            .contains(saga.as_str()));
        assert_eq!(
            members(&mut conn, &keys().owned(p, "dead.1")).await,
            BTreeSet::new()
        );
        let owners = members(&mut conn, &keys().owners_in(p)).await;
        assert!(
            owners.contains("live.1") && !owners.contains("dead.1"),
            "{owners:?}"
        );
    }
    assert_eq!(dead_owners(&mut conn, &s).await, Vec::<String>::new());
    let expiry: Option<f64> = q(&mut conn, &cmd("ZSCORE", &[&keys().leases(), "dead.1"])).await;
    assert_eq!(expiry, None, "forgotten");
    assert_eq!(
        claim(&mut conn, &s, "dead.1", "live.1").await,
        OwnerClaim::Moved(Vec::new()),
        "nothing is left to move"
    );
    assert_eq!(
        Step::new(&saga_in(25), "dead.1", 1)
            .write(&mut conn, &s)
            .await
            .unwrap(),
        Written::LeaseLost,
        "fenced off every partition"
    );

    // A claimer that was itself claimed claims nothing, though it holds a
    // lease again (a paused daemon that registered its token anew).
    register(&mut conn, &s, "other.1", SHORT_TTL).await;
    let others = saga_in(60);
    Step::new(&others, "other.1", 1).done(&mut conn, &s).await;
    tokio::time::sleep(PAST_SHORT_TTL).await;
    register(&mut conn, &s, "dead.1", TTL).await;
    assert_eq!(
        claim(&mut conn, &s, "other.1", "dead.1").await,
        OwnerClaim::ClaimerLost
    );
    assert_eq!(
        owner_of(&mut conn, &others).await.as_deref(),
        Some("other.1")
    );
    let fenced: Option<f64> = q(
        &mut conn,
        &cmd("ZSCORE", &[&keys().fenced(partition(60)), "other.1"]),
    )
    .await;
    assert_eq!(fenced, None, "not fenced by a claimer that claims nothing");
    assert_eq!(dead_owners(&mut conn, &s).await, ["other.1"]);
    assert_eq!(
        moved(claim(&mut conn, &s, "other.1", "live.1").await),
        sorted(&[&others])
    );
}

// -------------------------------------------------------------- indexes

async fn ids(conn: &mut Conn, phases: &[&str], max: usize) -> Vec<String> {
    must("ids", sagas::ids(conn, &keys(), phases, max)).await
}

async fn score(conn: &mut Conn, p: Partition, phase: &str, saga: &SagaId) -> Option<f64> {
    q(
        conn,
        &cmd("ZSCORE", &[&keys().index(p, phase), saga.as_str()]),
    )
    .await
}

/// Index scores are Redis's ms: transitions a few ms apart are ordered.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_list_sagas_newest_first_and_trims_keep_what_runs() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster.url()).await;
    register(&mut conn, &s, "node-a.1", TTL).await;

    // On the three masters: running, ended, failed.
    let (r1, c1, r2, f1) = (saga_in(1), saga_in(30), saga_in(60), saga_in(45));
    Step::new(&r1, "node-a.1", 1).done(&mut conn, &s).await;
    tick().await;
    Step::new(&c1, "node-a.1", 1).done(&mut conn, &s).await;
    tick().await;
    Step::new(&r2, "node-a.1", 1).done(&mut conn, &s).await;
    tick().await;
    Step::new(&c1, "node-a.1", 2)
        .ownership(Ownership::Leave)
        .phase(SagaStatus::Completed)
        .done(&mut conn, &s)
        .await;
    tick().await;
    Step::new(&f1, "node-a.1", 1)
        .phase(SagaStatus::Failed)
        .done(&mut conn, &s)
        .await;
    let id = |s: &SagaId| s.to_string();
    assert_eq!(ids(&mut conn, &["running"], 10).await, [id(&r2), id(&r1)]);
    assert_eq!(ids(&mut conn, &["completed"], 10).await, [id(&c1)]);
    assert_eq!(
        ids(&mut conn, &[], 10).await,
        [id(&f1), id(&c1), id(&r2), id(&r1)]
    );
    assert_eq!(ids(&mut conn, &[], 2).await, [id(&f1), id(&c1)], "at most");
    assert_eq!(
        ids(&mut conn, &["failed", "running"], 10).await,
        [id(&f1), id(&r2), id(&r1)]
    );
    let expires: i64 = q(&mut conn, &cmd("TTL", &[&keys().record(c1.as_str())])).await;
    assert!(expires > 0, "an ended saga expires: {expires}");

    // Housekeeping of one partition: ended sagas indexed before the cut
    // go, running ones stay however old, and so do later ones.
    let p = partition(9);
    let (old_end, old_run, new_end) = (saga_in(9), saga_in(9), saga_in(9));
    Step::new(&old_end, "node-a.1", 1)
        .ownership(Ownership::Leave)
        .phase(SagaStatus::Compensated)
        .done(&mut conn, &s)
        .await;
    Step::new(&old_run, "node-a.1", 1).done(&mut conn, &s).await;
    let elsewhere = saga_in(10);
    Step::new(&elsewhere, "node-a.1", 1)
        .ownership(Ownership::Leave)
        .phase(SagaStatus::Completed)
        .done(&mut conn, &s)
        .await;
    let last = score(&mut conn, partition(10), "completed", &elsewhere).await;
    let cut = last.expect("indexed") as u64 + 1;
    tick().await;
    Step::new(&new_end, "node-a.1", 1)
        .ownership(Ownership::Leave)
        .phase(SagaStatus::Compensated)
        .done(&mut conn, &s)
        .await;
    let fenced = keys().fenced(p);
    let (before, after) = ((cut - 1).to_string(), (cut + 1).to_string());
    let fence = cmd("ZADD", &[&fenced, &before, "old.1", &after, "new.1"]);
    q::<i64>(&mut conn, &fence).await;

    must(
        "a trim",
        maintain::trim_partition(&mut conn, &keys(), p, cut),
    )
    .await;
    assert_eq!(score(&mut conn, p, "compensated", &old_end).await, None);
    assert!(score(&mut conn, p, "compensated", &new_end).await.is_some());
    assert!(score(&mut conn, p, "running", &old_run).await.is_some());
    let fences: Vec<String> = q(&mut conn, &cmd("ZRANGE", &[&fenced, "0", "-1"])).await;
    assert_eq!(fences, ["new.1"]);
    assert!(
        score(&mut conn, partition(10), "completed", &elsewhere)
            .await
            .is_some(),
        "one partition at a time"
    );
}

// ---------------------------------------------------------- dead letter

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettering_on_a_cluster_crosses_slots() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.url());
    let mut conn = cluster_conn(&cluster.url()).await;
    // A stream on another master than the dead-letter stream.
    let dead_master = cluster.master_for_key(&s.dead_letter_stream);
    let stream = (0..)
        .map(|n| format!("poison:{n}"))
        .find(|k| cluster.master_for_key(k) != dead_master)
        .expect("a stream on another master");
    assert_ne!(slot(&stream), slot(&s.dead_letter_stream));

    q::<()>(
        &mut conn,
        &cmd("XGROUP", &["CREATE", &stream, "g", "0", "MKSTREAM"]),
    )
    .await;
    let big = "x".repeat(1000);
    let poison: String = q(
        &mut conn,
        &cmd("XADD", &[&stream, "*", "payload", &big, "kind", "odd"]),
    )
    .await;
    let second: String = q(&mut conn, &cmd("XADD", &[&stream, "*", "payload", "{"])).await;
    let read = cmd("XREADGROUP", &["GROUP", "g", "c", "STREAMS", &stream, ">"]);
    q::<Value>(&mut conn, &read).await;
    let pending = |conn: &mut Conn| {
        let mut conn = conn.clone();
        let xpending = cmd("XPENDING", &[&stream, "g"]);
        async move {
            let summary: (i64, Value, Value, Value) = q(&mut conn, &xpending).await;
            summary.0
        }
    };
    assert_eq!(pending(&mut conn).await, 2);

    let copied = maintain::dead_letter(&mut conn, &s, &stream, Some("g"), &poison, "no parse");
    assert!(must("a dead letter", copied).await);
    let letters = entries(&mut conn, &s.dead_letter_stream).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].1;
    assert_eq!(letter["stream"], stream);
    assert_eq!(letter["entry_id"], poison);
    assert_eq!(letter["reason"], "no parse");
    assert_eq!(letter["size"], (7 + 1000 + 4 + 3).to_string());
    assert_eq!(letter["truncated"], "1");
    let fields: BTreeMap<String, String> =
        serde_json::from_str(&letter["fields"]).expect("the copy's fields");
    assert_eq!(fields["kind"], "odd");
    assert_eq!(
        fields["payload"].len(),
        maintain::DEAD_LETTER_VALUE_BYTES,
        "a bounded copy"
    );
    assert_eq!(pending(&mut conn).await, 1, "acknowledged");

    // A dead-letter stream that is no stream: no copy, acknowledged all the
    // same (nothing would ever take the entry).
    let broken = Settings {
        dead_letter_stream: "dl:broken".into(),
        ..s.clone()
    };
    q::<()>(&mut conn, &cmd("SET", &["dl:broken", "x"])).await;
    let copied = maintain::dead_letter(&mut conn, &broken, &stream, Some("g"), &second, "no");
    assert!(!must("a dead letter", copied).await);
    assert_eq!(pending(&mut conn).await, 0);
}
