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
