//! Idempotency keys of starts: a string per (saga, key) naming the saga the
//! first start with that key created ([`Keys::idempotency`]), kept for the
//! retention, so that a start sent again starts nothing.

use super::keys::Keys;
use super::scripts::RELEASE_KEY;
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::time::Duration;

/// Who holds an idempotency key after a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The claim took it: the key names the claiming saga now.
    Ours,
    /// It was held already, by the saga named (empty when it ran out
    /// between the claim and the read of its holder).
    Taken(String),
}

/// Claims `key` of `saga` for `saga_id`, for `retention` (a second at
/// least): `SET NX`, so that of two daemons taking the same key at once one
/// wins. Fails for good (WRONGTYPE) when the key's name holds another kind
/// of key. The retries are the caller's: a claim made twice by the same
/// saga finds it holds the key ([`Claim::Taken`] with its own id).
pub async fn claim<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    saga: &str,
    key: &str,
    saga_id: &str,
    retention: Duration,
) -> RedisResult<Claim> {
    let redis_key = keys.idempotency(saga, key);
    let (set, holder): (Option<String>, Option<String>) = redis::pipe()
        .cmd("SET")
        .arg(&redis_key)
        .arg(saga_id)
        .arg("NX")
        .arg("EX")
        .arg(retention.as_secs().max(1))
        .cmd("GET")
        .arg(&redis_key)
        .query_async(conn)
        .await?;
    Ok(match set {
        Some(_) => Claim::Ours,
        None => Claim::Taken(holder.unwrap_or_default()),
    })
}

/// What a release of an idempotency key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The key named the saga: it is gone, and the start may be sent again.
    Released,
    /// It named another saga, or nothing (ran out, never claimed): kept.
    NotHeld,
}

/// Gives `key` of `saga` back if it still names `saga_id`: the key of a
/// start that could never be created, so that the same start can be sent
/// again once the cause is mended (`scripts/release_key.lua`).
pub async fn release<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    saga: &str,
    key: &str,
    saga_id: &str,
) -> RedisResult<Release> {
    let removed: i64 = RELEASE_KEY
        .key(keys.idempotency(saga, key))
        .arg(saga_id)
        .invoke_async(conn)
        .await?;
    Ok(if removed == 1 {
        Release::Released
    } else {
        Release::NotHeld
    })
}
