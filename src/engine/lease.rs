//! The lease keeper: renews this daemon's lease and nothing else, on a
//! connection of its own, so that nothing a saga does (capacity, a burst of
//! writes, a slow takeover) can delay a renewal. Each renewal also reads
//! Redis's clock, which keeps [`super::clock::Clock`] in step.
//!
//! A renewal that finds the lease lost (it ran out on Redis's clock: the
//! daemon was paused, cut off, or its renewals failed for longer than the
//! lease) ends the epoch: the sagas of the old owner token stop here and
//! are claimed by whichever daemon looks first, maybe this one under its
//! new token.
//!
//! On a stop, the keeper gives the lease up last: first the intake and the
//! takeover finish what they read, and the creations under way are written
//! (under the lease still held), so that no saga is ever created under a
//! lease already given up.

use super::clock::host_ms;
use super::Shared;
use crate::config::Settings;
use crate::connection::Conn;
use crate::retry::Outage;
use crate::store::lease::{self, Renewal};
use crate::telemetry::metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One period of a daemon's ownership: sagas started or taken over in it
/// stop when it ends. It has its own owner token and its own reply stream.
pub(crate) struct Epoch {
    pub owner: String,
    pub reply_stream: String,
    pub cancel: CancellationToken,
}

impl Epoch {
    pub fn new(settings: &Settings, shutdown: &CancellationToken) -> Self {
        let epoch = &crate::protocol::ids::new_uuid_hex()[..8];
        let owner = format!("{}.{epoch}", settings.node_id);
        Self {
            reply_stream: settings.reply_stream(&owner),
            owner,
            cancel: shutdown.child_token(),
        }
    }
}

/// When the lease was last renewed, for readiness.
pub(crate) struct Health {
    started: Instant,
    /// Ms after `started` of the last renewal.
    renewed_at: AtomicU64,
    /// Longer than this without a renewal, the daemon is not ready: half
    /// the lease, so that readiness fails well before the lease runs out.
    stale_after: Duration,
}

impl Health {
    pub fn new(lease_ttl: Duration) -> Self {
        Self {
            started: Instant::now(),
            renewed_at: AtomicU64::new(0),
            stale_after: lease_ttl / 2,
        }
    }

    fn renewed(&self) {
        let at = self.started.elapsed().as_millis() as u64;
        self.renewed_at.store(at, Ordering::Relaxed);
    }

    pub fn is_fresh(&self) -> bool {
        let since =
            self.started.elapsed().as_millis() as u64 - self.renewed_at.load(Ordering::Relaxed);
        since <= self.stale_after.as_millis() as u64
    }
}

/// How long a registration waits for the replicas (`wait_replicas`).
const LEASE_WAIT: Duration = Duration::from_secs(1);

/// Registers the current epoch's lease.
pub(super) async fn register(shared: &Shared, conn: &mut Conn) -> redis::RedisResult<()> {
    let owner = shared.epoch().owner.clone();
    let sent = host_ms();
    let now = lease::register(conn, &shared.settings, &owner, shared.settings.lease_ttl).await?;
    shared.clock.observe(now, sent, host_ms());
    let replicas = shared.settings.wait_replicas;
    // The registration must outlive a failover of the leases' master: an
    // owner nobody knows of has its sagas claimed by no one.
    if replicas > 0 && !lease::wait_replicas(conn, &shared.settings, replicas, LEASE_WAIT).await? {
        tracing::warn!(%owner, replicas, "the lease's registration has not reached the replicas yet");
    }
    shared.lease.renewed();
    Ok(())
}

/// Renews the lease every third of its time to live (or at once when a
/// write found it lost), until the daemon stops; then gives it up.
pub(super) async fn run(shared: Arc<Shared>, mut conn: Conn) {
    let renew_every = shared.settings.lease_ttl / 3;
    let outage = Outage::new("renewing the lease").metered(metrics::redis_meter("lease"));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tokio::time::sleep(renew_every) => {}
            _ = shared.renew_now.notified() => {}
        }
        outage.record(&renew(&shared, &mut conn).await);
    }
    hand_over(&shared, &mut conn).await;
}

async fn renew(shared: &Shared, conn: &mut Conn) -> redis::RedisResult<()> {
    let owner = shared.epoch().owner.clone();
    let sent = host_ms();
    let (renewal, now) =
        lease::renew(conn, &shared.settings, &owner, shared.settings.lease_ttl).await?;
    shared.clock.observe(now, sent, host_ms());
    match renewal {
        Renewal::Kept => shared.lease.renewed(),
        Renewal::Lost => {
            tracing::warn!(%owner, "this daemon's lease ran out; its sagas go to whoever claims them, and it starts anew");
            // Its former token stays registered for the takeover, even if
            // a failover took its registration back.
            lease::remember(conn, &shared.settings, &owner).await?;
            let epoch = shared.new_epoch();
            metrics::lease_lost();
            register(shared, conn).await?;
            tracing::info!(owner = %epoch.owner, reply_stream = %epoch.reply_stream, "new lease");
        }
    }
    Ok(())
}

/// The end of a stop: no more starts are taken, what was taken is created,
/// then the lease is given up so that others take its sagas at once.
async fn hand_over(shared: &Shared, conn: &mut Conn) {
    let grace = shared.settings.shutdown_grace;
    shared.feeders.close();
    if tokio::time::timeout(grace, shared.feeders.wait())
        .await
        .is_err()
    {
        tracing::warn!("the intake did not stop in time");
    }
    shared.creating.close();
    if tokio::time::timeout(grace, shared.creating.wait())
        .await
        .is_err()
    {
        tracing::warn!("sagas being created were not written in time");
    }
    let owner = shared.epoch().owner.clone();
    let released = tokio::time::timeout(
        Duration::from_secs(2),
        lease::release(conn, &shared.settings, &owner),
    )
    .await;
    match released {
        Ok(Ok(())) => tracing::info!(%owner, "lease released"),
        _ => tracing::warn!(%owner, "could not release the lease; it runs out by itself"),
    }
}
