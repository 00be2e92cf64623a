//! The runner: reads each command stream through the group on a
//! connection of its own, takes over what a crashed instance left pending,
//! and hands every entry to a task of its own (see `exchange.rs`).
//!
//! It works on one Redis and on a Redis Cluster alike: it asks once, at
//! start-up, which one it is talking to (see [`Handlers::redis_mode`]), and
//! from then on every connection it makes is a [`Conn`] of that kind. What
//! differs on a cluster is only how writes to keys in different slots are
//! made (see `batch.rs`).
//!
//! What one runner holds at most: [`BATCH`] entries per stream read and
//! waiting for a slot, `max_in_flight` commands being handled (default
//! [`DEFAULT_MAX_IN_FLIGHT`]), [`super::MAX_QUEUED_PROGRESS`] unwritten
//! `progress` replies per command, and one dead-letter copy of at most
//! [`super::dead_letter::MAX_COPY_BYTES`] per command given up on.

use super::clock::{notable, RedisClock, RESYNC_EVERY};
use super::exchange::handle_entry;
use super::reply_stream::{ReplyStreams, DEFAULT_REPLY_STREAM_PREFIX};
use super::stats::HandlerStats;
use super::{Handle, RunError};
use crate::connection::{self, Conn, RedisMode};
use crate::protocol::ids::new_uuid_hex;
use crate::retry::{retry, Backoff, Outage, Policy, Tried};
use crate::streams::{self, decode_autoclaim_reply, decode_read_reply, Entry};
use redis::{RedisResult, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Entries taken per XREADGROUP or XAUTOCLAIM call. A reader hands them
/// out one by one as slots of `max_in_flight` free up, so this is also how
/// many read entries it holds beyond those in flight: enough to keep the
/// slots busy between two reads, few enough to weigh nothing.
pub const BATCH: usize = 64;
/// How long one XREADGROUP blocks. A read in progress is never abandoned
/// (an abandoned read stays live on the server and can move an entry into
/// the pending list unseen), so this is the longest a stop waits for it.
const BLOCK: Duration = Duration::from_millis(1000);
/// Default bound on commands handled at once. Handlers mostly wait on IO,
/// so many can run together; the bound keeps a flooded stream from growing
/// tasks and memory without limit (the reader stops reading until a slot is
/// free, and unread entries simply wait in the stream). A command holds its
/// slot only while it can make progress: one Redis refuses to answer is
/// dead-lettered at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default idle time after which an entry pending for another consumer of
/// the group is taken over at start-up: long enough not to steal the work of
/// a live instance that is merely slow to reply.
pub const DEFAULT_RECLAIM_IDLE: Duration = Duration::from_secs(30);
/// Default time a final reply is remembered for deduplication: far longer
/// than the daemon keeps sending one `request_id` again after a crash.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(86_400);
/// The longest the writer waits for Redis to answer one request (a reply,
/// a record, an acknowledgement, a dead-letter copy), as the daemon does
/// by default: a request timed out may still have been written, and is
/// written again by the retry, so a timeout long enough for a loaded Redis
/// or a cluster moving a slot keeps such duplicates rare.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) type Routes = HashMap<String, Arc<dyn Handle>>;

/// A set of handlers sharing one consumer group, built one registration a
/// line, then run until a shutdown token is cancelled.
pub struct Handlers {
    client: redis::Client,
    redis_mode: RedisMode,
    group: String,
    consumer: String,
    streams: BTreeMap<String, Routes>,
    max_in_flight: usize,
    reclaim_idle: Duration,
    record_ttl: Duration,
    reply_stream_prefix: String,
    stats: Arc<HandlerStats>,
    on_ready: Option<ReadyHook>,
}

/// Called once, when every stream's group exists and its reader reads.
type ReadyHook = Box<dyn FnOnce() + Send>;

/// Counts the readers not yet reading; the last one calls the hook.
struct Ready {
    waiting: std::sync::Mutex<(usize, Option<ReadyHook>)>,
}

impl Ready {
    fn reading(&self) {
        let hook = {
            let mut waiting = self.waiting.lock().expect("ready lock");
            waiting.0 = waiting.0.saturating_sub(1);
            if waiting.0 > 0 {
                return;
            }
            waiting.1.take()
        };
        if let Some(hook) = hook {
            hook();
        }
    }
}

impl Handlers {
    /// Handlers reading through consumer group `group`. The consumer name
    /// is unique per instance unless [`Handlers::consumer`] sets one.
    pub fn new(client: redis::Client, group: impl Into<String>) -> Self {
        Self {
            client,
            redis_mode: RedisMode::Auto,
            group: group.into(),
            consumer: format!("consumer-{}-{}", std::process::id(), &new_uuid_hex()[..8]),
            streams: BTreeMap::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            reclaim_idle: DEFAULT_RECLAIM_IDLE,
            record_ttl: DEFAULT_RECORD_TTL,
            reply_stream_prefix: DEFAULT_REPLY_STREAM_PREFIX.to_owned(),
            stats: Arc::default(),
            on_ready: None,
        }
    }

    /// Calls `hook` once every stream's consumer group exists and its
    /// reader is about to read: from then on, commands are handled.
    pub fn on_ready(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.on_ready = Some(Box::new(hook));
        self
    }

    /// The command streams read, in order.
    pub fn streams(&self) -> Vec<&str> {
        self.streams.keys().map(String::as_str).collect()
    }

    /// Routes commands of `event_type` on `stream` to `handler`.
    pub fn on(
        self,
        stream: impl Into<String>,
        event_type: impl Into<String>,
        handler: impl Handle,
    ) -> Self {
        self.on_arc(stream, event_type, Arc::new(handler))
    }

    /// Like [`Handlers::on`], for a handler that is already shared.
    pub fn on_arc(
        mut self,
        stream: impl Into<String>,
        event_type: impl Into<String>,
        handler: Arc<dyn Handle>,
    ) -> Self {
        self.streams
            .entry(stream.into())
            .or_default()
            .insert(event_type.into(), handler);
        self
    }

    /// How Redis is deployed: [`RedisMode::Auto`] (the default) asks the
    /// server once at start-up whether it is a cluster node; `Single` and
    /// `Cluster` say it, for a user not allowed `INFO`. The client's URL is
    /// then one node of the cluster, through which the others are found.
    pub fn redis_mode(mut self, mode: RedisMode) -> Self {
        self.redis_mode = mode;
        self
    }

    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = name.into();
        self
    }

    /// Bound on commands handled at once (at least 1).
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.max_in_flight = limit.max(1);
        self
    }

    /// Idle time after which pending entries of other consumers are taken
    /// over at start-up.
    pub fn reclaim_idle(mut self, idle: Duration) -> Self {
        self.reclaim_idle = idle;
        self
    }

    /// How long the final reply to a `request_id` is remembered, to be
    /// replayed if the command comes again (at least a second). It must be
    /// longer than the daemon may send a command again after a crash: its
    /// lease plus the command's timeout.
    pub fn record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The daemon's `reply_stream_prefix` setting (default
    /// `saga:replies:`): replies go only to streams named
    /// `<prefix><node>.<epoch>` or `<prefix><node>.<epoch>:<request_id>`
    /// (see [`ReplyStreams`]); a command naming any other is dead-lettered.
    pub fn reply_stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.reply_stream_prefix = prefix.into();
        self
    }

    pub fn group_name(&self) -> &str {
        &self.group
    }

    /// Counts of the commands this runner gives up on, live while it runs.
    pub fn stats(&self) -> Arc<HandlerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then stops reading, lets the
    /// commands in flight finish and returns. Redis errors never end it:
    /// they are logged and retried with backoff. It first connects (for
    /// [`RedisMode::Auto`], asking whether Redis is a cluster) and measures
    /// the offset of Redis's clock (see [`super::RESYNC_EVERY`]), waiting
    /// for Redis if need be; stopped before it could connect, it returns at
    /// once.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        if self.streams.is_empty() {
            return Err(RunError::NoHandlers);
        }
        let reply_streams = ReplyStreams::new(&self.reply_stream_prefix)?;
        let Some((client, writer)) = connect(&self.client, self.redis_mode, &shutdown).await else {
            return Ok(());
        };
        let clock = Arc::new(RedisClock::default());
        first_sync(&clock, &writer, &shutdown).await;
        let background = TaskTracker::new();
        background.spawn(resync(clock.clone(), writer.clone(), shutdown.clone()));
        background.close();
        let shared = Arc::new(Shared {
            group: self.group,
            consumer: self.consumer,
            writer,
            shutdown,
            tasks: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(self.max_in_flight)),
            record_ttl_secs: self.record_ttl.as_secs().max(1),
            reply_streams,
            clock,
            stats: self.stats,
            writes: Outage::new("answering commands"),
        });
        let readers = TaskTracker::new();
        let ready = Arc::new(Ready {
            waiting: std::sync::Mutex::new((self.streams.len(), self.on_ready)),
        });
        for (stream, routes) in self.streams {
            let reader = Reader {
                shared: shared.clone(),
                client: client.clone(),
                stream: Arc::from(stream),
                routes: Arc::new(routes),
                reclaim_idle: self.reclaim_idle,
                conn: None,
                group_ready: false,
                reclaimed: false,
                ready: Some(ready.clone()),
            };
            readers.spawn(reader.run());
        }
        readers.close();
        readers.wait().await;
        shared.tasks.close();
        shared.tasks.wait().await;
        background.wait().await;
        Ok(())
    }
}

/// Resolves the deployment (one Redis or a cluster) and makes the writer's
/// connection, waiting for Redis while it cannot be reached (see
/// [`Policy::RECONNECT`]); `None` when stopped first.
async fn connect(
    client: &redis::Client,
    mode: RedisMode,
    shutdown: &CancellationToken,
) -> Option<(connection::Client, Conn)> {
    let outage = Outage::new("connecting to Redis");
    let connect = || async {
        let client = connection::Client::resolve(client.clone(), mode).await?;
        let writer = client.commands(RESPONSE_TIMEOUT).await?;
        Ok::<_, redis::RedisError>((client, writer))
    };
    match retry(shutdown, Policy::RECONNECT, &outage, connect).await {
        Tried::Done((client, writer)) => {
            let deployment = if client.is_cluster() {
                "a Redis Cluster"
            } else {
                "one Redis"
            };
            tracing::info!(
                redis_mode = mode.name(),
                "handlers connected to {deployment}"
            );
            Some((client, writer))
        }
        // Connecting gives up on no error: only a stop ends the wait.
        Tried::Refused(_) | Tried::Stopped => None,
    }
}

/// The first measurement of Redis's clock, before any command is read, so
/// that commands waiting since before the start are judged on it too. A
/// Redis that refuses `TIME` (renamed away, or not allowed to this user)
/// leaves deadlines on the host's clock, which is what handlers did before.
async fn first_sync(clock: &RedisClock, writer: &Conn, shutdown: &CancellationToken) {
    let policy = Policy {
        gives_up_on: time_refused,
        ..Policy::HANDLER
    };
    let outage = Outage::new("reading Redis's clock");
    let sync = || {
        let mut writer = writer.clone();
        async move { clock.sync(&mut writer).await }
    };
    match retry(shutdown, policy, &outage, sync).await {
        Tried::Done((offset_ms, _)) if notable(offset_ms) => {
            tracing::warn!(
                offset_ms,
                "this host's clock is off Redis's; deadlines are read on Redis's clock"
            );
        }
        Tried::Done((offset_ms, _)) => {
            tracing::info!(offset_ms, "deadlines are read on Redis's clock");
        }
        Tried::Refused(error) => {
            tracing::warn!(%error, "cannot read Redis's clock (TIME); deadlines are read on this host's clock");
        }
        Tried::Stopped => {}
    }
}

/// A `TIME` that can never pass: refused as such, or not allowed to this
/// user (an ACL is not changed for a clock the handlers can do without).
fn time_refused(error: &redis::RedisError) -> bool {
    crate::retry::is_permanent(error) || error.code() == Some("NOPERM")
}

/// Measures the offset again every [`RESYNC_EVERY`]; a failed measurement
/// keeps the last offset until the next.
async fn resync(clock: Arc<RedisClock>, writer: Conn, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RESYNC_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        match clock.sync(&mut writer.clone()).await {
            Ok((offset_ms, before)) if notable(offset_ms - before) => {
                tracing::warn!(offset_ms, before, "the offset to Redis's clock moved");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, offset_ms = clock.offset_ms(), "cannot read Redis's clock; keeping the last offset");
            }
        }
    }
}

/// What every task of one runner shares.
pub(super) struct Shared {
    pub(super) group: String,
    pub(super) consumer: String,
    /// For replies, records and acknowledgements; never blocks.
    pub(super) writer: Conn,
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: TaskTracker,
    pub(super) permits: Arc<Semaphore>,
    pub(super) record_ttl_secs: u64,
    /// Where replies may go.
    pub(super) reply_streams: ReplyStreams,
    /// Redis's time, for deadlines and reply timestamps.
    pub(super) clock: Arc<RedisClock>,
    pub(super) stats: Arc<HandlerStats>,
    /// Whether answering commands fails (replies, records, dead-letter
    /// copies, acknowledgements): one outage, logged once however many
    /// commands wait on it.
    pub(super) writes: Outage,
}

/// The reading loop of one stream, on a connection of its own so that its
/// blocking reads stall nothing else.
struct Reader {
    shared: Arc<Shared>,
    client: connection::Client,
    stream: Arc<str>,
    routes: Arc<Routes>,
    reclaim_idle: Duration,
    conn: Option<Conn>,
    group_ready: bool,
    reclaimed: bool,
    /// Told once, when this reader first reads.
    ready: Option<Arc<Ready>>,
}

impl Reader {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Policy::HANDLER);
        let outage = Outage::new(format!("reading `{}`", self.stream));
        while !self.shared.shutdown.is_cancelled() {
            match self.step().await {
                Ok(()) => {
                    outage.recovered();
                    backoff.reset();
                }
                Err(e) => {
                    // The group was deleted: made again at `0`, which
                    // redelivers old commands; their records and
                    // deadlines keep them from running twice.
                    if e.code() == Some("NOGROUP") {
                        self.group_ready = false;
                    }
                    self.conn = None;
                    outage.failed(&e);
                    backoff.wait(&self.shared.shutdown).await;
                }
            }
        }
    }

    async fn step(&mut self) -> RedisResult<()> {
        let mut conn = match &self.conn {
            Some(conn) => conn.clone(),
            None => {
                let conn = self.client.blocking(BLOCK).await?;
                self.conn.insert(conn).clone()
            }
        };
        let group = self.shared.group.as_str();
        if !self.group_ready {
            // At `0`, so commands sent before the first start are handled.
            let created: RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&*self.stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Err(e) if !streams::is_busygroup(&e) => return Err(e),
                _ => self.group_ready = true,
            }
        }
        if !self.reclaimed {
            self.reclaim(&mut conn).await?;
            self.reclaimed = true;
        }
        if let Some(ready) = self.ready.take() {
            ready.reading();
        }
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&*self.stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        self.dispatch(decode_read_reply(&reply)).await;
        Ok(())
    }

    /// Takes over the entries a crashed instance of the group left pending.
    async fn reclaim(&self, conn: &mut Conn) -> RedisResult<()> {
        let mut cursor = "0".to_owned();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&*self.stream)
                .arg(&self.shared.group)
                .arg(&self.shared.consumer)
                .arg(self.reclaim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(conn)
                .await?;
            let (next, entries) = decode_autoclaim_reply(&self.stream, &reply);
            if !entries.is_empty() {
                tracing::info!(stream = %self.stream, count = entries.len(), "took over pending commands");
            }
            self.dispatch(entries).await;
            if next == "0-0" || next == "0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// One task per entry. Once read, an entry is ours: waiting for a slot
    /// ignores shutdown, which in any case waits for the tasks holding them.
    async fn dispatch(&self, entries: Vec<Entry>) {
        for entry in entries {
            let permit = self
                .shared
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let task = handle_entry(
                self.shared.clone(),
                self.stream.clone(),
                self.routes.clone(),
                entry,
                permit,
            );
            self.shared.tasks.spawn(task);
        }
    }
}
