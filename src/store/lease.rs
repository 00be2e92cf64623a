//! Leases: which daemon drives which saga. Each daemon holds one lease under
//! an owner token (`<node_id>.<epoch>`), a member of the sorted set
//! `saga:leases` scored by the unix ms, on Redis's clock, at which it runs
//! out. The sagas an owner drives are in its set (`saga:owned:{<owner>}`)
//! and their records name it as `owner`; every owner token ever registered
//! is in `saga:owners` until its sagas have been claimed, so that an owner
//! whose lease is gone without a claim (given up half-way, edited by hand)
//! is still found.
//!
//! Only an owner whose lease is alive on Redis's clock can claim sagas or
//! take new ones: a daemon that was paused, cut off or skewed cannot take a
//! saga it would never drive.

use super::scripts::{
    LEASE_CLAIM, LEASE_DEAD, LEASE_REGISTER, LEASE_RELEASE, LEASE_RENEW, SAGA_CLAIM,
};
use crate::config::Settings;
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::time::Duration;

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
        .key(settings.leases_key())
        .key(settings.owners_key())
        .arg(owner)
        .arg(ms(ttl))
        .invoke_async(conn)
        .await?;
    Ok(super::millis(now))
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
        .key(settings.leases_key())
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
        .key(settings.leases_key())
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
                &[&settings.leases_key(), &settings.owners_key()],
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

/// Moves the sagas of `dead` to `claimer`.
pub async fn claim_owner<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    dead: &str,
    claimer: &str,
) -> RedisResult<OwnerClaim> {
    let reply: Vec<redis::Value> = LEASE_CLAIM
        .key(settings.leases_key())
        .key(settings.owners_key())
        .key(settings.owned_key(dead))
        .key(settings.owned_key(claimer))
        .arg(dead)
        .arg(claimer)
        .arg(&settings.saga_key_prefix)
        .invoke_async(conn)
        .await?;
    let mut items = reply.into_iter();
    let code: i64 = match items.next() {
        Some(v) => redis::from_redis_value(v)?,
        None => 0,
    };
    Ok(match code {
        1 => OwnerClaim::Moved(
            items
                .filter_map(|v| redis::from_redis_value::<String>(v).ok())
                .collect(),
        ),
        -1 => OwnerClaim::ClaimerLost,
        _ => OwnerClaim::Alive,
    })
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
pub async fn claim_saga<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga_id: &str,
    claimer: &str,
    from: From<'_>,
    join: bool,
) -> RedisResult<SagaClaim> {
    let expected = match from {
        From::Owner(owner) => owner,
        From::AnyDead => "",
    };
    let code: i64 = SAGA_CLAIM
        .key(settings.saga_key(saga_id))
        .key(settings.leases_key())
        .key(settings.owned_key(claimer))
        .arg(claimer)
        .arg(expected)
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
