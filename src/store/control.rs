//! Operators' requests: the nonce of each request carried out, kept a while
//! ([`Keys::nonce`]), so that a request read from the control stream and
//! written again is known for a replay.

use super::keys::Keys;
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::time::Duration;

/// Whether a nonce was seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceUse {
    /// Never seen: it is recorded now, and the request may be carried out.
    First,
    /// Recorded before: the request is a replay.
    Replayed,
}

/// Records `nonce` as used, for `kept_for` (a second at least), unless it
/// was recorded before: `SET NX`, so that of two daemons checking the same
/// nonce at once one sees it first. A nonce is an operator's random token,
/// its key a few dozen bytes.
pub async fn use_nonce<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    nonce: &str,
    kept_for: Duration,
) -> RedisResult<NonceUse> {
    let set: Option<String> = redis::cmd("SET")
        .arg(keys.nonce(nonce))
        .arg("1")
        .arg("NX")
        .arg("EX")
        .arg(kept_for.as_secs().max(1))
        .query_async(conn)
        .await?;
    Ok(match set {
        Some(_) => NonceUse::First,
        None => NonceUse::Replayed,
    })
}

/// Who carries out a request every daemon may carry out (one about a saga
/// name): the first daemon to record its nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceClaim {
    /// Recorded now, for this entry: carry it out.
    First,
    /// Recorded for this very entry by another daemon, which carries it out.
    Taken,
    /// Recorded for another entry: this one is a replay.
    Replayed,
}

/// Records `nonce` as used by the control stream's entry `entry_id`, for
/// `kept_for`, unless it was recorded before (`SET NX`); if it was, tells
/// a daemon that came second to the same entry from a replay. The value
/// never changes once set, so reading it after is enough.
pub async fn claim_nonce<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    nonce: &str,
    entry_id: &str,
    kept_for: Duration,
) -> RedisResult<NonceClaim> {
    let key = keys.nonce(nonce);
    let set: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(entry_id)
        .arg("NX")
        .arg("EX")
        .arg(kept_for.as_secs().max(1))
        .query_async(conn)
        .await?;
    if set.is_some() {
        return Ok(NonceClaim::First);
    }
    let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
    Ok(match holder {
        Some(id) if id == entry_id => NonceClaim::Taken,
        _ => NonceClaim::Replayed,
    })
}
