//! Reading sagas: one record by id, and sagas by phase from the
//! partitions' indexes, never by a scan of the keyspace.

use super::keys::{Keys, Partition, INDEXED_PHASES};
use crate::saga::SagaState;
use redis::aio::ConnectionLike;
use redis::RedisResult;

/// A saga's record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Its state, as JSON.
    pub state: String,
    /// The owner token it names.
    pub owner: Option<String>,
    /// The number of its last transition.
    pub seq: u64,
    /// Seconds left before it expires; `None` while it runs.
    pub expires_in: Option<i64>,
}

/// The record of `saga_id`, `None` when there is none (never created,
/// expired, or a key of another kind in its place).
pub async fn load<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    saga_id: &str,
) -> RedisResult<Option<Stored>> {
    let key = keys.record(saga_id);
    type Fields = (Option<String>, Option<String>, Option<u64>);
    let read: RedisResult<(Fields, i64)> = redis::pipe()
        .cmd("HMGET")
        .arg(&key)
        .arg("state")
        .arg("owner")
        .arg("seq")
        .cmd("TTL")
        .arg(&key)
        .query_async(conn)
        .await;
    let ((state, owner, seq), ttl) = match read {
        Ok(read) => read,
        Err(e) if e.code() == Some("WRONGTYPE") => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(state.map(|state| Stored {
        state,
        owner,
        seq: seq.unwrap_or(0),
        expires_in: (ttl >= 0).then_some(ttl),
    }))
}

/// A saga's record, its state decoded.
#[derive(Clone, Debug)]
pub struct Record {
    pub state: SagaState,
    /// The number of its last transition.
    pub seq: u64,
    /// The owner token it names.
    pub owner: Option<String>,
    /// Seconds left before it expires; `None` while it runs.
    pub expires_in: Option<i64>,
}

/// Why a saga's record could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// Its state is not a state this version reads (edited by hand, or
    /// written by an incompatible version): the record is left as it is.
    #[error("the record of saga {saga_id} cannot be read: {source}")]
    Unreadable {
        saga_id: String,
        source: serde_json::Error,
    },
}

/// The record of `saga_id` with its state decoded, `None` when there is
/// none (see [`load`]). The state is as large as the saga wrote it (bounded
/// by the largest transition, [`super::transition::MAX_TRANSITION_BYTES`]).
pub async fn load_state<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    saga_id: &str,
) -> Result<Option<Record>, LoadError> {
    let Some(stored) = load(conn, keys, saga_id).await? else {
        return Ok(None);
    };
    let state = serde_json::from_str(&stored.state).map_err(|source| LoadError::Unreadable {
        saga_id: saga_id.to_owned(),
        source,
    })?;
    Ok(Some(Record {
        state,
        seq: stored.seq,
        owner: stored.owner,
        expires_in: stored.expires_in,
    }))
}

/// The ids of the sagas in `phases` (all of them when empty), those that
/// entered their phase last first, at most `max`: the newest `max` of each
/// partition's indexes, merged.
pub async fn ids<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    phases: &[&str],
    max: usize,
) -> RedisResult<Vec<String>> {
    let phases: Vec<&str> = if phases.is_empty() {
        INDEXED_PHASES.to_vec()
    } else {
        phases.to_vec()
    };
    let last = isize::try_from(max).unwrap_or(isize::MAX).saturating_sub(1);
    let mut all: Vec<(f64, String)> = Vec::new();
    for p in Partition::all() {
        let mut pipe = redis::pipe();
        for phase in &phases {
            pipe.cmd("ZREVRANGE")
                .arg(keys.index(p, phase))
                .arg(0)
                .arg(last)
                .arg("WITHSCORES");
        }
        let rows: Vec<Vec<(String, f64)>> = match pipe.query_async(conn).await {
            Ok(rows) => rows,
            // An index replaced by another kind of key lists nothing.
            Err(e) if e.code() == Some("WRONGTYPE") => continue,
            Err(e) => return Err(e),
        };
        all.extend(rows.into_iter().flatten().map(|(id, at)| (at, id)));
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.truncate(max);
    }
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

/// Records read per pipeline by [`records`]: one partition's at a time.
pub const RECORDS_PER_PIPELINE: usize = 500;

/// The records of `ids` with their states decoded, in the order given;
/// `None` for a saga whose record expired, is missing or cannot be read.
/// Read partition by partition, [`RECORDS_PER_PIPELINE`] per pipeline (a
/// pipeline cannot span slots on a cluster). Expiries are not read.
pub async fn records<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    ids: &[String],
) -> RedisResult<Vec<Option<Record>>> {
    let mut out: Vec<Option<Record>> = vec![None; ids.len()];
    let mut by_partition: std::collections::BTreeMap<Partition, Vec<usize>> = Default::default();
    for (i, id) in ids.iter().enumerate() {
        by_partition.entry(Partition::of(id)).or_default().push(i);
    }
    for chunk in by_partition
        .values()
        .flat_map(|at| at.chunks(RECORDS_PER_PIPELINE))
    {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("HMGET")
                .arg(keys.record(&ids[*i]))
                .arg("state")
                .arg("owner")
                .arg("seq");
        }
        let rows: Vec<(Option<String>, Option<String>, Option<u64>)> =
            pipe.query_async(conn).await?;
        for (i, (state, owner, seq)) in chunk.iter().zip(rows) {
            let Some(state) = state.and_then(|s| serde_json::from_str(&s).ok()) else {
                continue;
            };
            out[*i] = Some(Record {
                state,
                seq: seq.unwrap_or(0),
                owner,
                expires_in: None,
            });
        }
    }
    Ok(out)
}

/// A place in the listing of sagas by when they entered their phase,
/// newest first: the saga at it, and when it entered its phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at_ms: u64,
    pub saga_id: String,
}

/// Sagas of one score taken into account at a cursor: more than this many
/// entering one phase in one millisecond in one partition would skip the
/// rest of them.
pub const MAX_TIES: usize = 1_000;

/// Up to `n` sagas in `phases` (all when empty) that entered their phase
/// after `since_ms` and before `before` (in the order newest first, ties by
/// id descending), from the partitions' indexes: each partition's newest
/// `n` merged. Returns them with when they entered their phase.
pub async fn page<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    phases: &[&str],
    since_ms: u64,
    before: Option<&Cursor>,
    n: usize,
) -> RedisResult<Vec<Cursor>> {
    let phases: Vec<&str> = if phases.is_empty() {
        INDEXED_PHASES.to_vec()
    } else {
        phases.to_vec()
    };
    let max = match before {
        Some(c) => format!("({}", c.at_ms),
        None => "+inf".to_owned(),
    };
    let mut all: Vec<Cursor> = Vec::new();
    for p in Partition::all() {
        let mut pipe = redis::pipe();
        for phase in &phases {
            let key = keys.index(p, phase);
            pipe.cmd("ZREVRANGEBYSCORE")
                .arg(&key)
                .arg(&max)
                .arg(since_ms)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(n);
            if let Some(c) = before {
                pipe.cmd("ZREVRANGEBYSCORE")
                    .arg(&key)
                    .arg(c.at_ms)
                    .arg(c.at_ms)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(MAX_TIES);
            }
        }
        let rows: Vec<Vec<(String, f64)>> = match pipe.query_async(conn).await {
            Ok(rows) => rows,
            Err(e) if e.code() == Some("WRONGTYPE") => continue,
            Err(e) => return Err(e),
        };
        all.extend(
            rows.into_iter()
                .flatten()
                .map(|(saga_id, at)| Cursor {
                    at_ms: at as u64,
                    saga_id,
                })
                .filter(|c| before.is_none_or(|b| (c.at_ms, &c.saga_id) < (b.at_ms, &b.saga_id))),
        );
        all.sort_by(|a, b| (b.at_ms, &b.saga_id).cmp(&(a.at_ms, &a.saga_id)));
        all.dedup();
        all.truncate(n);
    }
    Ok(all)
}

/// How many sagas each partition's index holds, by phase, summed.
pub async fn counts<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> RedisResult<Vec<(&'static str, u64)>> {
    let mut totals = vec![0u64; INDEXED_PHASES.len()];
    for p in Partition::all() {
        let mut pipe = redis::pipe();
        for phase in INDEXED_PHASES {
            pipe.cmd("ZCARD").arg(keys.index(p, phase));
        }
        let counts: Vec<u64> = match pipe.query_async(conn).await {
            Ok(counts) => counts,
            Err(e) if e.code() == Some("WRONGTYPE") => continue,
            Err(e) => return Err(e),
        };
        for (total, count) in totals.iter_mut().zip(counts) {
            *total += count;
        }
    }
    Ok(INDEXED_PHASES.into_iter().zip(totals).collect())
}
