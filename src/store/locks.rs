//! Semantic locks: each a list in a slot of its own (see
//! [`super::keys::Keys::lock`]), holder first, waiters after in the order
//! they asked. A saga asks with [`acquire`] (again and again while it
//! waits: the answer is the same, nothing is added twice); it leaves every
//! queue it is in with the transition that ends it (the `unlock` writes of
//! [`super::Transition::unlocks`]), on one Redis in that transition's
//! script, on a cluster through its partition's outbox, exactly as its
//! commands are sent.

use super::keys::Keys;
use super::scripts::LOCK_ACQUIRE;
use crate::connection::Conn;
use crate::protocol::locks::{LockEntry, MAX_LOCK_QUEUE};

/// The answer to a saga asking for a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The saga holds it.
    Held,
    /// `ahead` sagas are before it; `holder` holds it.
    Queued {
        ahead: usize,
        holder: Option<LockEntry>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("`{key}` is not a lock (someone replaced the key)")]
    WrongType { key: String },
    #[error("{MAX_LOCK_QUEUE} sagas already hold or wait for lock `{name}`")]
    Full { name: String },
}

impl LockError {
    /// True when asking again cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            LockError::Redis(e) => crate::streams::is_permanent(e),
            _ => true,
        }
    }
}

fn entry(text: &str) -> Option<LockEntry> {
    serde_json::from_str(text).ok()
}

/// Asks for lock `name` for `who` (or asks again).
pub async fn acquire(
    conn: &mut Conn,
    keys: &Keys,
    name: &str,
    who: &LockEntry,
) -> Result<Acquired, LockError> {
    let key = keys.lock(name);
    let (position, holder): (i64, String) = LOCK_ACQUIRE
        .key(&key)
        .arg(&who.saga_id)
        .arg(serde_json::to_string(who).expect("lock entries serialize"))
        .arg(MAX_LOCK_QUEUE)
        .invoke_async(conn)
        .await?;
    match position {
        0 => Ok(Acquired::Held),
        -1 => Err(LockError::Full { name: name.into() }),
        -2 => Err(LockError::WrongType { key }),
        n => Ok(Acquired::Queued {
            ahead: usize::try_from(n).unwrap_or(0),
            holder: entry(&holder),
        }),
    }
}

/// Who holds lock `name` and who waits for it, in order (at most
/// [`MAX_LOCK_QUEUE`]; entries that do not read are left out). Empty when
/// nobody does, or when the key is not a lock.
pub async fn queue<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    name: &str,
) -> redis::RedisResult<Vec<LockEntry>> {
    let key = keys.lock(name);
    let kind: String = redis::cmd("TYPE").arg(&key).query_async(conn).await?;
    if kind != "list" {
        return Ok(Vec::new());
    }
    let texts: Vec<String> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(MAX_LOCK_QUEUE - 1)
        .query_async(conn)
        .await?;
    Ok(texts.iter().filter_map(|t| entry(t)).collect())
}
