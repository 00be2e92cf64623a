//! The handler SDK on a real Redis Cluster (three masters, a replica each):
//! the test plays the daemon with plain stream commands, as
//! `handler_sdk.rs` does on one Redis. The command stream, the reply stream
//! and the handlers' records lie in different slots, so the writes that are
//! one MULTI on one Redis are made one slot after the other here; the
//! replies, the replay of a recorded reply and dead-lettering must come out
//! the same, and a failover of the command stream's master must lose no
//! command.

mod common;

use common::{command_to, must, run_handlers, Fields, RedisCluster};

use redis::cluster_async::ClusterConnection;
use sagaflow::connection::Conn;
use sagaflow::handler::{dead_letter_key, done_key, Context, HandlerError, Handlers};
use sagaflow::protocol::Command;
use sagaflow::store::keys::slot;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest any wait of these tests may take, a failover included.
const WAIT: Duration = Duration::from_secs(20);
const STREAM: &str = "resources:commands";
const GROUP: &str = "cluster-handlers";
/// A reply stream in the daemon's shared form.
const REPLIES: &str = "saga:replies:node-1.0a1b2c3d";

fn command(reply_stream: &str, n: usize) -> Command {
    command_to(reply_stream, "allocate_resources", json!({ "n": n }))
}

/// The SDK's client: one node of the cluster as its URL, the way a
/// deployment gives it (the default `redis_mode`, `auto`, finds out that
/// it is a cluster).
fn client(port: u16) -> redis::Client {
    redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("a URL")
}

fn seed(cluster: &RedisCluster) -> redis::Client {
    redis::Client::open(cluster.url()).expect("a URL")
}

/// Handlers of group `group` that report progress, work for `work`, and
/// answer with the number of the run.
fn counting(
    client: redis::Client,
    group: &str,
    runs: Arc<AtomicUsize>,
    work: Duration,
) -> Handlers {
    Handlers::new(client, group).on(
        STREAM,
        "allocate_resources",
        move |cmd: Command, ctx: Context| {
            let runs = runs.clone();
            async move {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                ctx.progress(50.0).await;
                tokio::time::sleep(work).await;
                Ok::<_, HandlerError>(json!({"run": run, "n": cmd.payload["n"]}))
            }
        },
    )
}

/// The daemon's side: a cluster connection for plain commands.
struct Daemon {
    conn: ClusterConnection,
}

impl Daemon {
    async fn new(cluster: &RedisCluster) -> Self {
        Self {
            conn: cluster.conn().await,
        }
    }

    /// Writes each command to [`STREAM`].
    async fn send(&mut self, commands: &[Command]) {
        for cmd in commands {
            self.xadd(STREAM, &cmd.to_fields()).await;
        }
    }

    /// [`Daemon::send`], then waits until the stream's master has copied
    /// the commands to its replica, so that a failover keeps them.
    async fn send_copied(&mut self, commands: &[Command]) {
        self.send(commands).await;
        let mut conn = Conn::Cluster(self.conn.clone().into());
        let copied = must(
            "WAIT",
            conn.wait_replicas(STREAM, 1, Duration::from_secs(2)),
        )
        .await;
        assert!(copied, "the commands reached the replica");
    }

    async fn xadd<V: redis::ToRedisArgs>(&mut self, stream: &str, fields: &[(&str, V)]) {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(stream).arg("*").arg(fields);
        must::<String, _>("XADD", xadd.query_async(&mut self.conn)).await;
    }

    async fn entries(&mut self, stream: &str) -> Vec<Fields> {
        common::xrange(&mut self.conn, stream).await
    }

    /// The entries of `stream` once `done` holds for them, waited for at
    /// most [`WAIT`].
    async fn until(
        &mut self,
        stream: &str,
        what: &str,
        done: impl Fn(&[Fields]) -> bool,
    ) -> Vec<Fields> {
        let started = Instant::now();
        loop {
            let entries = self.entries(stream).await;
            if done(&entries) {
                return entries;
            }
            assert!(
                started.elapsed() < WAIT,
                "{what}: not within {WAIT:?}: {entries:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The replies on `stream` once `count` final ones are there.
    async fn until_final(&mut self, stream: &str, count: usize) -> Vec<Fields> {
        let what = format!("{count} final replies on {stream}");
        self.until(stream, &what, |r| finals(r).len() >= count)
            .await
    }

    /// Waits until `group` has nothing pending on [`STREAM`].
    async fn until_acked(&mut self, group: &str) {
        let started = Instant::now();
        loop {
            let mut cmd = redis::cmd("XPENDING");
            cmd.arg(STREAM).arg(group);
            let summary: (u64, redis::Value, redis::Value, redis::Value) =
                must("XPENDING", cmd.query_async(&mut self.conn)).await;
            if summary.0 == 0 {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "{} entries left pending",
                summary.0
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get(&mut self, key: &str) -> Option<String> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        must("GET", cmd.query_async(&mut self.conn)).await
    }
}

/// Waits until the cluster's view (as the fixture asks it) shows a live
/// replica of the master on `port`: a replica told to follow its master
/// becomes known as one to the other nodes by gossip, which may trail the
/// cluster's start.
async fn until_replicated(cluster: &RedisCluster, port: u16) {
    let started = Instant::now();
    loop {
        let view = cluster.local().view().unwrap_or_else(|e| panic!("{e}"));
        let id = view.iter().find(|v| v.port == port).map(|v| v.id.clone());
        if view
            .iter()
            .any(|v| !v.failed && v.master_id.is_some() && v.master_id == id)
        {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "no replica of {port} in view: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn statuses(replies: &[Fields]) -> Vec<&str> {
    replies.iter().map(|r| r["status"].as_str()).collect()
}

fn finals(replies: &[Fields]) -> Vec<&Fields> {
    replies
        .iter()
        .filter(|r| matches!(r["status"].as_str(), "completed" | "failed"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_in_stages_to_a_reply_stream_in_another_slot() {
    let cluster = RedisCluster::start();
    let mut daemon = Daemon::new(&cluster).await;
    let cmd = command(REPLIES, 1);
    let record = done_key(GROUP, cmd.request_id.as_str());
    let slots = [slot(STREAM), slot(REPLIES), slot(&record)];
    assert!(
        slots[0] != slots[1] && slots[1] != slots[2] && slots[0] != slots[2],
        "{slots:?}"
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let handlers = counting(seed(&cluster), GROUP, runs, Duration::ZERO);
    let running = run_handlers(handlers);

    daemon.send(std::slice::from_ref(&cmd)).await;
    let replies = daemon.until_final(REPLIES, 1).await;

    assert_eq!(statuses(&replies), ["start", "progress", "completed"]);
    assert_eq!(replies[1]["progress"], "50");
    let result: Value = serde_json::from_str(&replies[2]["result"]).unwrap();
    assert_eq!(result, json!({"run": 1, "n": 1}));
    for reply in &replies {
        assert_eq!(reply["request_id"], cmd.request_id.as_str());
        assert_eq!(reply["saga_id"], cmd.saga_id.as_str());
    }
    // The record holds the final reply, written before it.
    let recorded: BTreeMap<String, String> =
        serde_json::from_str(&daemon.get(&record).await.expect("a record")).unwrap();
    assert_eq!(&recorded, &replies[2]);
    daemon.until_acked(GROUP).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_command_gets_its_recorded_reply_again() {
    let cluster = RedisCluster::start();
    let mut daemon = Daemon::new(&cluster).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let handlers = counting(seed(&cluster), GROUP, runs.clone(), Duration::ZERO);
    let running = run_handlers(handlers);

    let cmd = command(REPLIES, 1);
    daemon.send(std::slice::from_ref(&cmd)).await;
    let first = daemon.until_final(REPLIES, 1).await;
    daemon.until_acked(GROUP).await;
    daemon.send(std::slice::from_ref(&cmd)).await;
    let both = daemon.until_final(REPLIES, 2).await;

    // `start` again, then the recorded reply, without running the work.
    assert_eq!(
        statuses(&both),
        ["start", "progress", "completed", "start", "completed"]
    );
    assert_eq!(both[4], first[2], "the recorded final reply, unchanged");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    daemon.until_acked(GROUP).await;
    running.stop().await;
}

/// A command whose `reply_stream` is no reply stream, one whose reply
/// stream is a key of another type, and an entry that is no command: each
/// is copied to the dead-letter stream, in the slot of the group's records,
/// and acknowledged on the command stream, in another; a valid command
/// behind them is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswerable_commands_are_dead_lettered() {
    let cluster = RedisCluster::start();
    let mut daemon = Daemon::new(&cluster).await;
    let dead_letter = dead_letter_key(GROUP);
    assert_ne!(slot(&dead_letter), slot(STREAM));
    let taken = "saga:replies:taken.0a1b2c3d";
    let mut set = redis::cmd("SET");
    set.arg(taken).arg("text");
    must::<(), _>("SET", set.query_async(&mut daemon.conn)).await;
    let forged = command("mission:start", 1);
    let wrong_type = command(taken, 2);
    daemon.send(&[forged.clone(), wrong_type.clone()]).await;
    daemon
        .xadd(STREAM, &[("event_type", "allocate_resources")])
        .await;
    let valid = command(REPLIES, 3);
    daemon.send(std::slice::from_ref(&valid)).await;

    let runs = Arc::new(AtomicUsize::new(0));
    let handlers = counting(seed(&cluster), GROUP, runs, Duration::ZERO).max_in_flight(1);
    let stats = handlers.stats();
    let running = run_handlers(handlers);

    daemon.until_final(REPLIES, 1).await;
    let dead = daemon
        .until(&dead_letter, "three dead letters", |d| d.len() == 3)
        .await;
    daemon.until_acked(GROUP).await;
    assert_eq!(dead[0]["command.request_id"], forged.request_id.as_str());
    assert!(dead[0]["reason"].contains("prefix"), "{:?}", dead[0]);
    assert_eq!(
        dead[1]["command.request_id"],
        wrong_type.request_id.as_str()
    );
    assert!(dead[1]["reason"].contains("WRONGTYPE"), "{:?}", dead[1]);
    assert!(dead[2]["reason"].contains("malformed"), "{:?}", dead[2]);
    for copy in &dead {
        assert_eq!(copy["stream"], STREAM);
    }
    let counts = stats.counts();
    assert_eq!(
        (
            counts.refused,
            counts.unwritable,
            counts.malformed,
            counts.dead_lettered
        ),
        (1, 1, 1, 3)
    );
    // Nothing written where the forged command pointed, nor over the key
    // of another type.
    assert!(daemon.entries("mission:start").await.is_empty());
    assert_eq!(daemon.get(taken).await.as_deref(), Some("text"));
    running.stop().await;
}

/// The master of the command stream's slot is killed while the handlers
/// work on commands they read from it; its replica takes over. The SDK's
/// only address is that master, so the runner must follow the failover
/// with the connections it has. Every command, those sent before and
/// those sent after, gets a final reply (one may come twice: a command
/// whose acknowledgement the failover lost is answered again from its
/// record), and none is left pending.
///
/// The reply stream and the records are kept off the failing master: a
/// failover loses what its master had not yet copied to its replica, and a
/// reply lost that way is one the daemon times out and retries, not one a
/// handler can make up for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_carries_on_through_a_failover_of_the_command_stream() {
    let mut cluster = RedisCluster::start();
    let master = cluster.master_for_key(STREAM);
    let replies = (0..)
        .map(|i| format!("saga:replies:node-{i}.0a1b2c3d"))
        .find(|r| cluster.master_for_key(r) != master)
        .expect("a reply stream on another master");
    let group = (0..)
        .map(|i| format!("group-{i}"))
        .find(|g| cluster.master_for_key(&done_key(g, "r")) != master)
        .expect("records on another master");
    let mut daemon = Daemon::new(&cluster).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let work = Duration::from_millis(800);
    let handlers = counting(client(master), &group, runs.clone(), work);
    let running = run_handlers(handlers);

    let before: Vec<Command> = (0..10).map(|n| command(&replies, n)).collect();
    daemon.send_copied(&before).await;
    // Every command read and at work (its `start` written) when the
    // master dies.
    daemon
        .until(&replies, "a start per command", |r| {
            statuses(r).iter().filter(|s| **s == "start").count() >= before.len()
        })
        .await;
    until_replicated(&cluster, master).await;
    let failover = cluster.kill_master_for_key(STREAM).await;
    eprintln!(
        "the master on {} failed over to {} in {:?}",
        failover.killed, failover.promoted, failover.took
    );
    // The new master has no replica left.
    let after: Vec<Command> = (10..20).map(|n| command(&replies, n)).collect();
    daemon.send(&after).await;

    let sent: Vec<&Command> = before.iter().chain(&after).collect();
    let answered = daemon
        .until(&replies, "a final reply per command", |r| {
            let answered: Vec<&str> = finals(r).iter().map(|f| f["request_id"].as_str()).collect();
            sent.iter()
                .all(|c| answered.contains(&c.request_id.as_str()))
        })
        .await;
    daemon.until_acked(&group).await;
    let finals = finals(&answered);
    eprintln!(
        "{} commands, {} runs, {} final replies",
        sent.len(),
        runs.load(Ordering::SeqCst),
        finals.len()
    );
    for reply in finals {
        assert_eq!(reply["status"], "completed", "{reply:?}");
    }
    running.stop().await;
}
