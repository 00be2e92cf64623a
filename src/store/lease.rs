//! Leases: which daemon drives which saga. Each daemon holds one lease under
//! an owner token (`<node_id>.<epoch>`), a member of the sorted set
//! `saga:{leases}` scored by the unix ms, on Redis's clock, at which it runs
//! out. The sagas an owner drives are in its set in each partition
//! ([`Keys::owned`]) and their records name it as `owner`; every owner token
//! ever registered is in `saga:{leases}:owners` until its sagas have been
//! claimed, so that an owner whose lease is gone without a claim (given up
//! half-way, edited by hand) is still found.
//!
//! Only an owner whose lease is alive on Redis's clock can claim sagas. A
//! claim fences the dead owner off each partition before it moves its sagas
//! there, so a daemon that was paused, cut off or skewed cannot add a saga
//! to a set already claimed; what it created before the fence is claimed
//! with the rest.

use super::keys::{Keys, Partition};
use super::scripts::{
    LEASE_CHECK, LEASE_DEAD, LEASE_FORGET, LEASE_REGISTER, LEASE_RELEASE, LEASE_RENEW,
    PARTITION_CLAIM, PARTITION_FENCE, SAGA_CLAIM,
};
use crate::config::Settings;
use crate::connection::Conn;
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::time::Duration;

fn keys(settings: &Settings) -> Keys {
    Keys::new(&settings.saga_key_prefix)
}

/// Sagas moved per script of a claim in one partition.
const CLAIM_CHUNK: usize = 256;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Registers a new owner's lease; returns Redis's time in unix ms.
pub async fn register<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    owner: &str,
    ttl: Duration,
) -> RedisResult<u64> {
    let now: i64 = LEASE_REGISTER
        .key(keys(settings).leases())
        .key(keys(settings).owners())
        .arg(owner)
        .arg(ms(ttl))
        .invoke_async(conn)
        .await?;
    Ok(super::millis(now))
}

/// Keeps `owner` in the registry of owners, so that the takeover finds it
/// once its lease has run out: a daemon that starts anew does this for its
/// former token, whose registration a failover of the leases' master may
/// have taken back.
pub async fn remember<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    owner: &str,
) -> RedisResult<()> {
    redis::cmd("SADD")
        .arg(keys(settings).owners())
        .arg(owner)
        .query_async::<i64>(conn)
        .await
        .map(drop)
}

/// Waits (at most `timeout`) until `replicas` replicas of the leases'
/// master hold what was written to the leases; says whether they do (see
/// [`Conn::wait_replicas`]).
pub async fn wait_replicas(
    conn: &mut Conn,
    settings: &Settings,
    replicas: usize,
    timeout: Duration,
) -> RedisResult<bool> {
    conn.wait_replicas(&keys(settings).leases(), replicas, timeout)
        .await
}

/// Whether a renewal kept the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Kept,
    /// It ran out (or was claimed): its owner must start anew.
    Lost,
}

/// Renews a lease still alive; returns the outcome and Redis's time.
pub async fn renew<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    owner: &str,
    ttl: Duration,
) -> RedisResult<(Renewal, u64)> {
    let (kept, now): (i64, i64) = LEASE_RENEW
        .key(keys(settings).leases())
        .arg(owner)
        .arg(ms(ttl))
        .invoke_async(conn)
        .await?;
    let renewal = if kept == 1 {
        Renewal::Kept
    } else {
        Renewal::Lost
    };
    Ok((renewal, super::millis(now)))
}

/// Marks a lease as run out, so that others take its sagas at once.
pub async fn release<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    owner: &str,
) -> RedisResult<()> {
    LEASE_RELEASE
        .key(keys(settings).leases())
        .arg(owner)
        .invoke_async::<i64>(conn)
        .await
        .map(drop)
}

/// Owners whose sagas no live daemon drives (at most `limit`), and Redis's
/// time.
pub async fn dead_owners<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    limit: usize,
) -> RedisResult<(u64, Vec<String>)> {
    let (now, owners): (i64, Vec<String>) = {
        let reply: Vec<redis::Value> = LEASE_DEAD
            .run(
                conn,
                &[&keys(settings).leases(), &keys(settings).owners()],
                &[limit.to_string()],
            )
            .await?;
        let mut items = reply.into_iter();
        let now = match items.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => 0,
        };
        let owners = items
            .filter_map(|v| redis::from_redis_value::<String>(v).ok())
            .collect();
        (now, owners)
    };
    Ok((super::millis(now), owners))
}

/// Registers every owner that has had sagas in partition `p` (the
/// partition's own record of them, [`Keys::owners_in`]) in the registry of
/// owners, so that the takeover claims their sagas if no live lease holds
/// them, even when the registry lost them (removed by hand, or given up
/// half-way through a claim). Returns how many the partition names: one
/// per owner that drove sagas there and was not claimed since, a few. A
/// partition whose record of owners is a key of another kind names none.
/// The two keys are in different slots: two commands, each alone safe to
/// repeat.
pub async fn register_owners_of<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    p: Partition,
) -> RedisResult<usize> {
    let keys = keys(settings);
    let owners: Vec<String> = match redis::cmd("SMEMBERS")
        .arg(keys.owners_in(p))
        .query_async(conn)
        .await
    {
        Ok(owners) => owners,
        Err(e) if e.code() == Some("WRONGTYPE") => return Ok(0),
        Err(e) => return Err(e),
    };
    if !owners.is_empty() {
        redis::cmd("SADD")
            .arg(keys.owners())
            .arg(&owners)
            .query_async::<()>(conn)
            .await?;
    }
    Ok(owners.len())
}

/// What a claim of a dead owner's sagas did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerClaim {
    /// The ids of the sagas moved to the claimer (maybe none).
    Moved(Vec<String>),
    /// The owner's lease is alive after all.
    Alive,
    /// The claimer's own lease is not alive: it claims nothing.
    ClaimerLost,
}

/// Whether `claimer` may take `dead`'s sagas (see `lease_check.lua`).
async fn check<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    dead: &str,
    claimer: &str,
) -> RedisResult<Option<OwnerClaim>> {
    let code: i64 = LEASE_CHECK
        .key(keys.leases())
        .arg(dead)
        .arg(claimer)
        .invoke_async(conn)
        .await?;
    Ok(match code {
        1 => None,
        -1 => Some(OwnerClaim::ClaimerLost),
        _ => Some(OwnerClaim::Alive),
    })
}

/// Moves the sagas of `dead` to `claimer`, partition by partition: each is
/// fenced first, then its sagas are moved; the owner is forgotten once all
/// are done. A claim cut short is finished by the next (the owner is still
/// dead, and a partition done before has nothing left to move).
pub async fn claim_owner<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    dead: &str,
    claimer: &str,
) -> RedisResult<OwnerClaim> {
    let keys = keys(settings);
    if let Some(no) = check(conn, &keys, dead, claimer).await? {
        return Ok(no);
    }
    let mut moved = Vec::new();
    for p in Partition::all() {
        let reply: Vec<redis::Value> = PARTITION_FENCE
            .key(keys.fenced(p))
            .key(keys.owned(p, dead))
            .key(keys.owned(p, claimer))
            .key(keys.owners_in(p))
            .arg(dead)
            .arg(claimer)
            .invoke_async(conn)
            .await?;
        let mut items = reply.into_iter();
        let code: i64 = match items.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => 0,
        };
        match code {
            1 => {}
            -1 => return Ok(OwnerClaim::ClaimerLost),
            // A key of the wrong kind: the partition is skipped; its
            // sagas stay with the dead owner, and `doctor` shows them.
            _ => {
                tracing::error!(partition = p.index(), %dead, "a key of a claim is of the wrong kind; partition skipped");
                continue;
            }
        }
        let ids: Vec<String> = items
            .filter_map(|v| redis::from_redis_value::<String>(v).ok())
            .collect();
        for chunk in ids.chunks(CLAIM_CHUNK) {
            let mut call = PARTITION_CLAIM.prepare_invoke();
            call.key(keys.fenced(p))
                .key(keys.owned(p, dead))
                .key(keys.owned(p, claimer))
                .key(keys.owners_in(p));
            for id in chunk {
                call.key(keys.record(id));
            }
            call.arg(dead).arg(claimer).arg(chunk);
            let reply: Vec<redis::Value> = call.invoke_async(conn).await?;
            let mut items = reply.into_iter();
            let code: i64 = match items.next() {
                Some(v) => redis::from_redis_value(v)?,
                None => 0,
            };
            if code == -1 {
                return Ok(OwnerClaim::ClaimerLost);
            }
            moved.extend(items.filter_map(|v| redis::from_redis_value::<String>(v).ok()));
        }
    }
    LEASE_FORGET
        .key(keys.leases())
        .key(keys.owners())
        .arg(dead)
        .invoke_async::<i64>(conn)
        .await?;
    Ok(OwnerClaim::Moved(moved))
}

/// Whom one saga must be taken from.
#[derive(Clone, Copy, Debug)]
pub enum From<'a> {
    /// Exactly this owner: it must not have changed since it was read.
    Owner(&'a str),
    /// Any owner without a live lease (the saga is an orphan).
    AnyDead,
}

/// What a claim of one saga did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SagaClaim {
    Claimed,
    /// Another daemon has it, or its owner is alive, or it does not exist.
    NotClaimed,
    /// The claimer's own lease is not alive.
    ClaimerLost,
}

/// Makes `claimer` the owner of one saga. With `join`, the saga joins the
/// claimer's set (it will be driven); without, its record is left as it is
/// but for the owner (a saga that ended, taken up for an operator).
/// [`From::AnyDead`] takes it from the owner its record names if that
/// owner's lease is not alive.
pub async fn claim_saga<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga_id: &str,
    claimer: &str,
    from: From<'_>,
    join: bool,
) -> RedisResult<SagaClaim> {
    let keys = keys(settings);
    let record = keys.record(saga_id);
    let expected = match from {
        From::Owner(owner) => owner.to_owned(),
        From::AnyDead => {
            let owner: Option<String> = redis::cmd("HGET")
                .arg(&record)
                .arg("owner")
                .query_async(conn)
                .await
                .or_else(|e| match e.code() {
                    Some("WRONGTYPE") => Ok(None),
                    _ => Err(e),
                })?;
            let Some(owner) = owner else {
                return Ok(SagaClaim::NotClaimed);
            };
            owner
        }
    };
    // The claimer's lease must be alive; for an orphan, the owner's not.
    let dead = match from {
        From::Owner(_) => "",
        From::AnyDead => expected.as_str(),
    };
    match check(conn, &keys, dead, claimer).await? {
        None => {}
        Some(OwnerClaim::ClaimerLost) => return Ok(SagaClaim::ClaimerLost),
        Some(_) => return Ok(SagaClaim::NotClaimed),
    }
    let p = Partition::of(saga_id);
    let code: i64 = SAGA_CLAIM
        .key(&record)
        .key(keys.fenced(p))
        .key(keys.owned(p, claimer))
        .key(keys.owners_in(p))
        .arg(claimer)
        .arg(&expected)
        .arg(saga_id)
        .arg(if join { "1" } else { "" })
        .invoke_async(conn)
        .await?;
    Ok(match code {
        1 => SagaClaim::Claimed,
        -1 => SagaClaim::ClaimerLost,
        _ => SagaClaim::NotClaimed,
    })
}
