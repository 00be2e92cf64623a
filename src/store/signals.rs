//! Signals kept for sagas: a hash per saga, in its partition (see
//! [`super::keys::Keys::signals`]), one field per signal name. Kept by
//! [`accept`] (`scripts/signal_accept.lua`) while the saga runs, read by
//! the daemon driving the saga while one of its steps waits for one
//! ([`kept`]); the hash expires with the saga's record (the transition that
//! ends the saga sets its expiry too).

use super::keys::Keys;
use super::scripts::SIGNAL_ACCEPT;
use crate::protocol::signal::{KeptSignal, MAX_SIGNALS_PER_SAGA};
use redis::aio::ConnectionLike;

/// What became of a signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    Kept,
    /// The same signal (name and id) was kept before.
    Duplicate,
    /// Refused, with the reason.
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("`{key}` is not the kind of key signals are kept in (someone replaced it)")]
    WrongType { key: String },
}

/// Keeps `signal` for its saga.
pub async fn accept<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    saga_id: &str,
    signal: &KeptSignal,
) -> Result<Accepted, SignalError> {
    let (code, detail): (i64, String) = SIGNAL_ACCEPT
        .key(keys.record(saga_id))
        .key(keys.signals(saga_id))
        .arg(&signal.name)
        .arg(serde_json::to_string(signal).expect("signals serialize"))
        .arg(&signal.signal_id)
        .arg(MAX_SIGNALS_PER_SAGA)
        .invoke_async(conn)
        .await?;
    Ok(match code {
        1 => Accepted::Kept,
        2 => Accepted::Duplicate,
        3 => Accepted::Refused(format!(
            "signal `{}` was received before, with signal_id `{detail}`: a saga takes one signal of a name",
            signal.name
        )),
        4 => Accepted::Refused(format!(
            "the saga has {MAX_SIGNALS_PER_SAGA} signals already, the most kept for one saga"
        )),
        5 => Accepted::Refused(format!("the saga is {detail}, not running")),
        6 => return Err(SignalError::WrongType { key: detail }),
        _ => Accepted::Refused("no such saga".into()),
    })
}

/// Every signal kept for a saga (at most
/// [`MAX_SIGNALS_PER_SAGA`] are ever kept); fields that do not read are
/// left out.
pub async fn kept<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    saga_id: &str,
) -> redis::RedisResult<Vec<KeptSignal>> {
    let key = keys.signals(saga_id);
    let kind: String = redis::cmd("TYPE").arg(&key).query_async(conn).await?;
    if kind != "hash" {
        return Ok(Vec::new());
    }
    let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
    Ok(all
        .iter()
        .filter_map(|(_, v)| serde_json::from_str(v).ok())
        .collect())
}
