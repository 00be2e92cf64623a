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

/// The reason a signal for a saga that has no record is refused.
pub const NO_SUCH_SAGA: &str = "no such saga";

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
        _ => Accepted::Refused(NO_SUCH_SAGA.into()),
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

/// What a signal's events say of the saga it is for: its definition's
/// name, its correlation id and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaOfSignal {
    pub saga: String,
    pub correlation_id: crate::protocol::CorrelationId,
    pub status: crate::protocol::SagaStatus,
}

/// The saga `saga_id` as a signal's events name it; `None` when it has no
/// record, or one that does not read. Reads the record's state (as large
/// as the saga wrote it: a signal costs one such read).
pub async fn saga_of<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    saga_id: &str,
) -> redis::RedisResult<Option<SagaOfSignal>> {
    #[derive(serde::Deserialize)]
    struct Head {
        saga: String,
        correlation_id: crate::protocol::CorrelationId,
    }
    let read: redis::RedisResult<(Option<String>, Option<String>)> = redis::cmd("HMGET")
        .arg(keys.record(saga_id))
        .arg("state")
        .arg("phase")
        .query_async(conn)
        .await;
    let (state, phase) = match read {
        Ok(read) => read,
        Err(e) if e.code() == Some("WRONGTYPE") => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(head) = state.and_then(|s| serde_json::from_str::<Head>(&s).ok()) else {
        return Ok(None);
    };
    let status = phase
        .and_then(|p| serde_json::from_value(serde_json::Value::String(p)).ok())
        .unwrap_or(crate::protocol::SagaStatus::Running);
    Ok(Some(SagaOfSignal {
        saga: head.saga,
        correlation_id: head.correlation_id,
        status,
    }))
}
