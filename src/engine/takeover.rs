//! The takeover worker: every `takeover_every` it claims the sagas of dead
//! owners (leases that ran out on Redis's clock, and registered owners
//! with no lease at all: the orphan detector) and resumes them, and takes
//! over the starts that dead daemons read and never acknowledged. It sits
//! beside the intake, above the lease keeper, which it never delays.
//!
//! It takes only what this daemon has room for: with no saga permit free,
//! it claims nothing and leaves the work to a daemon with room; starts are
//! claimed no more than the permits it holds for them. Starts it takes over
//! of saga names paused are held ([`super::holds`]); the held starts of
//! resumed names are taken over as trigger entries are.

use super::{driver, holds, intake, pause, Shared};
use crate::connection::Conn;
use crate::protocol::limits::MAX_START_ENTRY_BYTES;
use crate::protocol::SagaId;
use crate::retry::Outage;
use crate::store::holds as holds_store;
use crate::store::keys::Keys;
use crate::store::{groups, lease, maintain, read};
use crate::telemetry::metrics;
use std::sync::Arc;
use std::time::Duration;

/// Dead owners looked at per round: each claim moves all of one owner's
/// sagas, so a few per second clear any number of dead daemons quickly.
const OWNERS_PER_ROUND: usize = 16;

pub(super) async fn run(shared: Arc<Shared>) {
    let mut conn = shared.conn.clone();
    let outage =
        Outage::new("looking for dead daemons' work").metered(metrics::redis_meter("takeover"));
    while pause(&shared.shutdown, shared.settings.takeover_every).await {
        let result = async {
            take_over_sagas(&shared, &mut conn).await?;
            take_over_starts(&shared, &mut conn).await
        }
        .await;
        outage.record(&result);
    }
}

/// Claims the sagas of dead owners and resumes them.
async fn take_over_sagas(shared: &Arc<Shared>, conn: &mut Conn) -> redis::RedisResult<()> {
    if shared.permits.available_permits() == 0 {
        return Ok(());
    }
    let (_, dead) = lease::dead_owners(conn, &shared.settings, OWNERS_PER_ROUND).await?;
    for dead in dead {
        let epoch = shared.epoch();
        if dead == epoch.owner {
            continue; // ours, late: the keeper's next renewal says what became of it
        }
        match lease::claim_owner(conn, &shared.settings, &dead, &epoch.owner).await? {
            lease::OwnerClaim::Moved(moved) => {
                if !moved.is_empty() {
                    tracing::info!(from = %dead, sagas = moved.len(), "took over the sagas of a daemon whose lease ran out");
                }
                for saga_id in moved {
                    shared
                        .tracker
                        .spawn(driver::resume(shared.clone(), saga_id, epoch.clone()));
                }
            }
            lease::OwnerClaim::Alive => {}
            lease::OwnerClaim::ClaimerLost => {
                shared.renew_now.notify_one();
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Takes the starts that were read but never acknowledged by a daemon that
/// died, once they have been idle for a lease's time; those delivered too
/// often without being processed go to the dead-letter stream instead.
/// Taking a start twice is harmless: a start's saga id is derived from its
/// entry.
async fn take_over_starts(shared: &Arc<Shared>, conn: &mut Conn) -> redis::RedisResult<()> {
    let min_idle = shared.settings.lease_ttl;
    for stream in super::trigger_streams(&shared.settings, &shared.catalog) {
        match dead_letter_poison(shared, conn, &stream, min_idle).await {
            // The intake creates lost groups again; nothing is pending in them.
            Err(e) if super::is_nogroup(&e) => continue,
            // A trigger stream replaced by another kind of key holds no
            // start: the others are still taken over.
            Err(e) if crate::retry::is_permanent(&e) => continue,
            other => other?,
        }
        let room = shared
            .permits
            .available_permits()
            .min(shared.settings.read_batch);
        if room == 0 {
            return Ok(());
        }
        let Ok(permits) = shared.permits.clone().try_acquire_many_owned(room as u32) else {
            return Ok(());
        };
        let entries = read::claim_idle(
            conn,
            &stream,
            &shared.settings.trigger_group,
            &shared.settings.node_id,
            min_idle,
            room,
            MAX_START_ENTRY_BYTES,
        )
        .await?;
        if !entries.is_empty() {
            tracing::info!(%stream, count = entries.len(), "took over starts left unacknowledged");
        }
        let mut permits = permits;
        for entry in holds::sieve(shared, entries).await {
            let permit = permits.split(1).expect("one permit per entry claimed");
            intake::take_with(shared, entry, permit).await;
        }
    }
    take_over_held(shared, conn, min_idle).await
}

/// Takes the starts held of resumed saga names that a daemon read from
/// their held streams and never acknowledged, as [`take_over_starts`] does
/// for trigger streams. Held streams of names paused are left alone: their
/// entries wait, and no delivery of them is counted meanwhile.
async fn take_over_held(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    min_idle: Duration,
) -> redis::RedisResult<()> {
    for held in shared.holds.draining() {
        match dead_letter_poison(shared, conn, &held.stream, min_idle).await {
            Err(e) if super::is_nogroup(&e) || crate::retry::is_permanent(&e) => continue,
            other => other?,
        }
        let room = shared
            .permits
            .available_permits()
            .min(shared.settings.read_batch);
        if room == 0 {
            return Ok(());
        }
        let entries = read::claim_idle(
            conn,
            &held.stream,
            &shared.settings.trigger_group,
            &shared.settings.node_id,
            min_idle,
            room,
            MAX_START_ENTRY_BYTES,
        )
        .await?;
        if !entries.is_empty() {
            tracing::info!(stream = %held.stream, count = entries.len(), "took over held starts left unacknowledged");
        }
        for entry in entries {
            intake::take_held(shared, entry, &held.trigger).await;
        }
    }
    Ok(())
}

/// Moves starts that were delivered `max_deliveries` times without ever
/// being acknowledged (each time, the daemon that took one died or failed
/// on it) to the dead-letter stream, as bounded copies with the reason,
/// and acknowledges them. A start whose saga exists was processed, and is
/// only acknowledged.
async fn dead_letter_poison(
    shared: &Shared,
    conn: &mut Conn,
    stream: &str,
    min_idle: Duration,
) -> redis::RedisResult<()> {
    let settings = &shared.settings;
    let group = settings.trigger_group.as_str();
    let pending = groups::pending_idle(conn, stream, group, min_idle, settings.read_batch).await?;
    for entry in pending {
        if entry.deliveries < settings.max_deliveries {
            continue;
        }
        let (id, deliveries) = (&entry.id, entry.deliveries);
        // A start whose saga exists was processed; only its acknowledgement
        // is missing. On a cluster that is relayed after the creation, at
        // least once, and a busy relay leaves the start to be taken over (a
        // no-op) again and again meanwhile. It is no poison, and a copy on
        // the dead-letter stream would invite sending it again. (`TYPE`,
        // which the daemon's ACL allows: a record is a hash.)
        // A held start's saga id is that of the entry it was written as.
        let saga_id = match shared.holds.draining().iter().find(|h| h.stream == stream) {
            Some(held) => match holds_store::held_from(conn, stream, id).await? {
                Some(from) => SagaId::for_start(&held.trigger, &from),
                None => SagaId::for_start(stream, id),
            },
            None => SagaId::for_start(stream, id),
        };
        let record = Keys::of(settings).record(saga_id.as_str());
        let kind: String = redis::cmd("TYPE").arg(&record).query_async(conn).await?;
        if kind == "hash" {
            let mut ack = redis::cmd("XACK");
            ack.arg(stream).arg(group).arg(id);
            ack.query_async::<i64>(conn).await?;
            tracing::info!(%stream, entry_id = %id, %saga_id, deliveries, "start acknowledged late: its saga was created");
            continue;
        }
        let reason = format!(
            "delivered {deliveries} times without being processed (last to {})",
            entry.consumer
        );
        tracing::error!(%stream, entry_id = %id, %reason, "start moved to the dead-letter stream");
        maintain::dead_letter(conn, settings, stream, Some(group), id, &reason).await?;
        metrics::dead_lettered("start");
    }
    Ok(())
}
