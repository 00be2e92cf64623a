//! The daemon's driver: it takes starts from the trigger streams, runs one
//! task per saga that feeds the pure state machine ([`crate::saga`]) with
//! replies and timer ticks and performs its effects, reads every reply
//! of this daemon from one reply stream, and keeps the signals sent to
//! sagas for their `wait` steps.
//!
//! ```text
//!  trigger streams ──XREADGROUP──▶ intake ──spawn──▶ saga task (one per saga)
//!                                                    │  ▲
//!                      store: MULTI{state, XADD cmd, │  │ Reply
//!                             XADD event, XACK}  ◀───┘  │
//!  reply stream ──XREAD──▶ reply reader ──router────────┘
//!  signals stream ──XREADGROUP──▶ signals forwarder ──▶ kept for the saga,
//!                                 whose task asks for them while it waits
//! ```

mod asks;
mod clock;
mod control;
mod definitions;
mod driver;
mod holds;
mod housekeeping;
mod idempotency;
mod intake;
mod lease;
mod name_requests;
mod reconnect;
mod relay;
mod replies;
mod router;
mod signals;
mod takeover;
pub use housekeeping::command_stream_keep;

use crate::config::Settings;
use crate::connection::{self, Conn};
use crate::definition::Catalog;
use crate::retry::{retry, Outage, Policy, Tried};
use crate::store::groups::{self, Created};
pub(crate) use crate::streams::is_nogroup;
use crate::telemetry::metrics;
use clock::Clock;
use lease::Epoch;
use router::Router;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid Redis URL `{url}`: {source}")]
    BadRedisUrl {
        url: String,
        source: redis::RedisError,
    },
    #[error("cannot create consumer group `{group}` on stream `{stream}`: {source}")]
    Group {
        stream: String,
        group: String,
        source: redis::RedisError,
    },
    #[error("cannot store the saga definitions in Redis: {source}")]
    Publish { source: redis::RedisError },
    #[error("cannot register this daemon's lease: {source}")]
    Lease { source: redis::RedisError },
    #[error("stopped before Redis at {url} could be reached")]
    StoppedBeforeReady { url: String },
}

/// Transition writes under way at once (see [`Shared::write_slots`]).
const WRITES_AT_ONCE: usize = 256;

/// Operators' requests about sagas no task of this daemon drives, looked
/// into at once: each reads a record, and a flood of forged requests must
/// not become a flood of tasks.
const ADOPTIONS_AT_ONCE: usize = 16;

/// What every task of the daemon shares.
pub(crate) struct Shared {
    pub settings: Settings,
    pub catalog: Catalog,
    pub client: connection::Client,
    pub conn: Conn,
    pub router: Router,
    pub shutdown: CancellationToken,
    /// Every task of the daemon.
    pub tracker: TaskTracker,
    /// The tasks that take new sagas (intake, takeover): a stop waits for
    /// them to finish what they read before the lease is given up.
    pub feeders: TaskTracker,
    /// Creations under way: a stop waits for them too, so that no saga is
    /// created under a lease already given up.
    pub creating: TaskTracker,
    /// One permit per in-flight saga.
    pub permits: Arc<Semaphore>,
    /// See [`ADOPTIONS_AT_ONCE`].
    pub adoptions: Arc<Semaphore>,
    /// Transition writes under way at once. Beyond a few hundred, writes
    /// only queue inside the connection, each holding its encoded request:
    /// ten thousand sagas moving at once would hold ten thousand of them.
    pub write_slots: Semaphore,
    /// Whether the daemon's writes fail: one outage, told once however many
    /// sagas wait on it, and a reason not to be ready.
    pub writes: Outage,
    pub replies: replies::ReplyState,
    pub pinned: definitions::Pinned,
    /// Redis's clock: every deadline and timestamp is taken on it.
    pub clock: Clock,
    /// The current period of this daemon's lease.
    epoch: RwLock<Arc<Epoch>>,
    pub lease: lease::Health,
    /// Asks the lease keeper to renew now: a write found the lease lost.
    pub renew_now: Notify,
    /// On a cluster, the relay workers of the partitions' outboxes.
    pub relays: Option<relay::Relays>,
    /// Moved on each time a saga of this daemon lets go of locks: its
    /// sagas waiting for a lock ask again at once (see [`asks`]).
    pub locks_let_go: tokio::sync::watch::Sender<u64>,
    /// The saga names paused, and the starts held of those resumed.
    pub holds: holds::Holds,
}

impl Shared {
    pub fn epoch(&self) -> Arc<Epoch> {
        self.epoch.read().expect("epoch lock").clone()
    }

    /// Ends the current epoch (its saga tasks stop) and begins a new one.
    pub fn new_epoch(&self) -> Arc<Epoch> {
        let next = Arc::new(Epoch::new(&self.settings, &self.shutdown));
        let old = std::mem::replace(&mut *self.epoch.write().expect("epoch lock"), next.clone());
        old.cancel.cancel();
        next
    }

    /// Unix ms on Redis's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}
/// Why a daemon is not ready; empty when it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub not_ready: Vec<&'static str>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.not_ready.is_empty()
    }
}

/// A running daemon; clones are handles to the same one.
#[derive(Clone)]
pub struct Daemon {
    shared: Arc<Shared>,
}

impl Daemon {
    /// Connects, prepares the consumer groups and starts reading starts and
    /// replies. Waits for Redis while it is unreachable, until `shutdown`.
    pub async fn start(
        settings: Settings,
        catalog: Catalog,
        shutdown: CancellationToken,
    ) -> Result<Self, EngineError> {
        let redis_client = redis::Client::open(settings.redis_url.as_str()).map_err(|source| {
            EngineError::BadRedisUrl {
                url: crate::config::redacted(&settings.redis_url),
                source,
            }
        })?;
        let (client, mut conn) = connect_with_retry(&redis_client, &settings, &shutdown).await?;
        create_groups(&mut conn, &settings, &catalog).await?;
        definitions::publish(&mut conn, &settings, &catalog)
            .await
            .map_err(|source| EngineError::Publish { source })?;
        // The lease keeper's own connection: a renewal never waits behind
        // the writes of thousands of sagas.
        let (_, lease_conn) = connect_with_retry(&redis_client, &settings, &shutdown).await?;
        let epoch = Arc::new(Epoch::new(&settings, &shutdown));
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(settings.max_in_flight)),
            adoptions: Arc::new(Semaphore::new(ADOPTIONS_AT_ONCE)),
            write_slots: Semaphore::new(WRITES_AT_ONCE),
            lease: lease::Health::new(settings.lease_ttl),
            settings,
            catalog,
            client: client.clone(),
            conn,
            router: Router::default(),
            shutdown,
            tracker: TaskTracker::new(),
            feeders: TaskTracker::new(),
            creating: TaskTracker::new(),
            writes: Outage::new("writing saga transitions").metered(metrics::redis_meter("write")),
            replies: replies::ReplyState::default(),
            pinned: definitions::Pinned::default(),
            clock: Clock::default(),
            epoch: RwLock::new(epoch),
            renew_now: Notify::new(),
            locks_let_go: tokio::sync::watch::Sender::new(0),
            relays: client.is_cluster().then(relay::Relays::new),
            holds: holds::Holds::default(),
        });
        let mut lease_conn = lease_conn;
        lease::register(&shared, &mut lease_conn)
            .await
            .map_err(|source| EngineError::Lease { source })?;
        tracing::info!(
            node_id = %shared.settings.node_id,
            owner = %shared.epoch().owner,
            sagas = ?shared.catalog.names(),
            triggers = ?trigger_streams(&shared.settings, &shared.catalog),
            reply_stream = %shared.epoch().reply_stream,
            "sagaflow daemon started"
        );
        shared.tracker.spawn(lease::run(shared.clone(), lease_conn));
        shared.tracker.spawn(replies::run(shared.clone()));
        shared.tracker.spawn(control::run(shared.clone()));
        shared.tracker.spawn(signals::run(shared.clone()));
        shared.tracker.spawn(housekeeping::run(shared.clone()));
        relay::start(&shared);
        shared.feeders.spawn(intake::run(shared.clone()));
        shared.feeders.spawn(takeover::run(shared.clone()));
        shared.feeders.spawn(holds::run(shared.clone()));
        Ok(Self { shared })
    }

    /// Whether this daemon can do its work now, and if not, why: it is
    /// stopping, or Redis cannot be reached for reading, writing or keeping
    /// its lease.
    pub fn readiness(&self) -> Readiness {
        let shared = &self.shared;
        let mut not_ready = Vec::new();
        if shared.shutdown.is_cancelled() {
            not_ready.push("stopping");
        }
        if !shared.replies.readable(&shared.settings) {
            not_ready.push("replies cannot be read from Redis");
        }
        if shared.writes.is_failing() {
            not_ready.push("saga transitions cannot be written to Redis");
        }
        if !shared.lease.is_fresh() {
            not_ready.push("the lease has not been renewed in Redis in time");
        }
        Readiness { not_ready }
    }

    /// The settings this daemon runs with.
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// The reply stream of this daemon's current lease period.
    pub fn reply_stream(&self) -> String {
        self.shared.epoch().reply_stream.clone()
    }

    /// This daemon's current owner token.
    pub fn owner(&self) -> String {
        self.shared.epoch().owner.clone()
    }

    /// Sagas being driven right now.
    pub fn in_flight(&self) -> usize {
        self.shared.router.len()
    }

    /// Waits until the shutdown token is cancelled and every task has
    /// stopped, or the grace period has passed.
    pub async fn wait(self) {
        self.shared.shutdown.cancelled().await;
        self.shared.tracker.close();
        let grace = self.shared.settings.shutdown_grace;
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "some tasks did not stop within the grace period");
        } else {
            tracing::info!("sagaflow daemon stopped");
        }
    }
}

/// Loads nothing, reads nothing: runs a daemon until `shutdown`.
pub async fn run(
    settings: Settings,
    catalog: Catalog,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    Daemon::start(settings, catalog, shutdown)
        .await?
        .wait()
        .await;
    Ok(())
}

/// Every trigger stream the daemon reads: those bound by definitions, and
/// the configured default one.
pub fn trigger_streams(settings: &Settings, catalog: &Catalog) -> Vec<String> {
    let mut streams = catalog.triggers();
    if !streams.contains(&settings.trigger_stream) {
        streams.push(settings.trigger_stream.clone());
    }
    streams.sort();
    streams
}

/// The daemon's command connection, waiting for Redis while it cannot be
/// reached (see [`Policy::RECONNECT`]).
async fn connect_with_retry(
    client: &redis::Client,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Result<(connection::Client, Conn), EngineError> {
    let url = crate::config::redacted(&settings.redis_url);
    let outage = Outage::new(format!("connecting to Redis at {url}"));
    let connect = || async {
        let client = connection::Client::resolve(client.clone(), settings.redis_mode).await?;
        let conn = client.commands(settings.redis_response_timeout).await?;
        Ok::<_, redis::RedisError>((client, conn))
    };
    match retry(shutdown, Policy::RECONNECT, &outage, connect).await {
        Tried::Done(conn) => Ok(conn),
        // Connecting gives up on no error: only a stop ends the wait.
        Tried::Refused(_) | Tried::Stopped => Err(EngineError::StoppedBeforeReady { url }),
    }
}

/// Creates the trigger consumer groups (and the daemons' group on the
/// signals stream) at id 0, so starts written before any daemon ran are
/// taken too. Also called when Redis answers that a
/// group is gone (a Redis that came back without its data).
pub(crate) async fn create_groups(
    conn: &mut Conn,
    settings: &Settings,
    catalog: &Catalog,
) -> Result<(), EngineError> {
    for stream in trigger_streams(settings, catalog) {
        create_group(conn, &stream, &settings.trigger_group).await?;
    }
    signals::create_group(conn, settings).await
}

async fn create_group(conn: &mut Conn, stream: &str, group: &str) -> Result<(), EngineError> {
    match groups::create(conn, stream, group).await {
        Ok(Created::Created | Created::Existed) => Ok(()),
        Err(source) => Err(EngineError::Group {
            stream: stream.to_owned(),
            group: group.to_owned(),
            source,
        }),
    }
}

/// Sleeps for `delay` unless the token is cancelled first; false if it was.
pub(crate) async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
