//! Leases: which daemon drives which saga. Each daemon holds one lease under
//! an owner token (`<node_id>.<epoch>`), a member of the sorted set
//! `saga:leases` scored by the unix ms at which it runs out, and renews it
//! every third of its time to live. The sagas it drives are listed in
//! `saga:owned:{<owner>}` and their records name it as `owner`.
//!
//! Every daemon looks for leases that ran out. Claiming one moves its sagas
//! to the claimer's token in one script, after which the former owner's
//! writes are fenced off (see [`super::store`]); the claimer then resumes
//! them from their records. Starts a dead daemon had read but not
//! acknowledged are taken over from the trigger groups' pending lists.
//!
//! A daemon that finds its own lease claimed (it was paused or cut off for
//! longer than the lease) drops its sagas and starts a new epoch.

use super::{driver, housekeeping, intake, now_ms, Shared};
use crate::streams;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One period of a daemon's ownership: sagas started or taken over in it
/// stop when it ends.
pub(crate) struct Epoch {
    pub owner: String,
    pub cancel: CancellationToken,
}

impl Epoch {
    pub fn new(node_id: &str, shutdown: &CancellationToken) -> Self {
        let epoch = &crate::protocol::ids::new_uuid_hex()[..8];
        Self {
            owner: format!("{node_id}.{epoch}"),
            cancel: shutdown.child_token(),
        }
    }
}

const RENEW: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 1
end
return 0
"#;

/// Moves the sagas of a lease that ran out to a new owner. Returns the ids
/// of the sagas moved; none if the lease was renewed meanwhile.
const CLAIM: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return {} end
redis.call('ZREM', KEYS[1], ARGV[1])
local moved = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[4] .. '{' .. id .. '}'
  if redis.call('HGET', key, 'owner') == ARGV[1] then
    redis.call('HSET', key, 'owner', ARGV[3])
    redis.call('SADD', KEYS[3], id)
    table.insert(moved, id)
  end
end
redis.call('DEL', KEYS[2])
return moved
"#;

static RENEW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW));
static CLAIM_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM));

/// Registers the current epoch's lease.
pub(super) async fn register(shared: &Shared) -> redis::RedisResult<()> {
    let owner = shared.epoch().owner.clone();
    let expiry = now_ms() + shared.settings.lease_ttl.as_millis() as u64;
    let mut conn = shared.conn.clone();
    redis::cmd("ZADD")
        .arg(shared.settings.leases_key())
        .arg(expiry)
        .arg(&owner)
        .query_async(&mut conn)
        .await
}

/// Renews the lease, takes over what dead daemons left, until the daemon
/// stops; then gives the lease up so that others take its sagas at once.
pub(super) async fn run(shared: Arc<Shared>) {
    let renew_every = shared.settings.lease_ttl / 3;
    let mut renewed_at = Instant::now();
    let mut cleaned_at = Instant::now();
    let mut trimmed_at = Instant::now();
    let mut reported_at: Option<Instant> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tokio::time::sleep(shared.settings.takeover_every.min(renew_every)) => {}
        }
        let result = async {
            if renewed_at.elapsed() >= renew_every {
                renew(&shared).await?;
                renewed_at = Instant::now();
            }
            take_over_sagas(&shared).await?;
            take_over_starts(&shared).await?;
            if cleaned_at.elapsed() >= housekeeping::CLEAN_EVERY {
                housekeeping::forget_idle_consumers(&shared).await?;
                cleaned_at = Instant::now();
            }
            if trimmed_at.elapsed() >= housekeeping::trim_every(&shared.settings) {
                housekeeping::trim_streams(&shared).await?;
                trimmed_at = Instant::now();
            }
            if reported_at.is_none_or(|at| at.elapsed() >= housekeeping::REPORT_EVERY) {
                housekeeping::report_pending(&shared).await?;
                reported_at = Some(Instant::now());
            }
            Ok::<(), redis::RedisError>(())
        }
        .await;
        shared
            .lease_failing
            .store(result.is_err(), Ordering::Relaxed);
        match result {
            Ok(()) if failing => {
                tracing::info!("leases are kept again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot keep leases while Redis fails; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
    release(&shared).await;
}

async fn renew(shared: &Shared) -> redis::RedisResult<()> {
    let owner = shared.epoch().owner.clone();
    let expiry = now_ms() + shared.settings.lease_ttl.as_millis() as u64;
    let mut conn = shared.conn.clone();
    let kept: i64 = RENEW_SCRIPT
        .key(shared.settings.leases_key())
        .arg(&owner)
        .arg(expiry)
        .invoke_async(&mut conn)
        .await?;
    if kept == 0 {
        tracing::warn!(%owner, "this daemon's lease was taken over; dropping its sagas and starting anew");
        shared.new_epoch();
        register(shared).await?;
    }
    Ok(())
}

/// Claims the leases that ran out and resumes their sagas.
async fn take_over_sagas(shared: &Arc<Shared>) -> redis::RedisResult<()> {
    let mut conn = shared.conn.clone();
    let expired: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(shared.settings.leases_key())
        .arg("-inf")
        .arg(now_ms())
        .arg("LIMIT")
        .arg(0)
        .arg(16)
        .query_async(&mut conn)
        .await?;
    for dead in expired {
        let epoch = shared.epoch();
        if dead == epoch.owner {
            continue; // ours, late: the next renewal keeps or loses it
        }
        let moved: Vec<String> = CLAIM_SCRIPT
            .key(shared.settings.leases_key())
            .key(shared.settings.owned_key(&dead))
            .key(shared.settings.owned_key(&epoch.owner))
            .arg(&dead)
            .arg(now_ms())
            .arg(&epoch.owner)
            .arg(&shared.settings.saga_key_prefix)
            .invoke_async(&mut conn)
            .await?;
        if !moved.is_empty() {
            tracing::info!(from = %dead, sagas = moved.len(), "took over the sagas of a daemon whose lease ran out");
        }
        for saga_id in moved {
            shared
                .tracker
                .spawn(driver::resume(shared.clone(), saga_id, epoch.clone()));
        }
    }
    Ok(())
}

/// Takes the starts that were read but never acknowledged by a daemon that
/// died, once they have been idle for a lease's time. Taking a start twice
/// is harmless: a start's saga id is derived from its entry.
async fn take_over_starts(shared: &Arc<Shared>) -> redis::RedisResult<()> {
    let mut conn = shared.conn.clone();
    let min_idle = shared.settings.lease_ttl.as_millis() as u64;
    for stream in super::trigger_streams(&shared.settings, &shared.catalog) {
        match housekeeping::dead_letter_poison(shared, &mut conn, &stream, min_idle).await {
            // The intake creates lost groups again; nothing is pending in them.
            Err(e) if super::is_nogroup(&e) => continue,
            other => other?,
        }
        let reply: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(&shared.settings.trigger_group)
            .arg(&shared.settings.node_id)
            .arg(min_idle)
            .arg("0-0")
            .arg("COUNT")
            .arg(shared.settings.read_batch)
            .query_async(&mut conn)
            .await?;
        let (_, entries) = streams::decode_autoclaim_reply(&stream, &reply);
        if !entries.is_empty() {
            tracing::info!(%stream, count = entries.len(), "took over starts left unacknowledged");
        }
        for entry in entries {
            intake::take(shared, entry).await;
        }
    }
    Ok(())
}

/// Marks the lease as run out, so that other daemons take over at once.
async fn release(shared: &Shared) {
    let owner = shared.epoch().owner.clone();
    let mut conn = shared.conn.clone();
    let released = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("ZADD")
            .arg(shared.settings.leases_key())
            .arg("XX")
            .arg(0)
            .arg(&owner)
            .query_async::<()>(&mut conn),
    )
    .await;
    match released {
        Ok(Ok(())) => tracing::info!(%owner, "lease released"),
        _ => tracing::warn!(%owner, "could not release the lease; it runs out by itself"),
    }
}
