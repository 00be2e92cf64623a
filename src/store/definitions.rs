//! Pinned definitions: the text of every version of a definition a daemon
//! runs, a string per (saga, version) ([`Keys::definition`]), so that a saga
//! finishes on the version it started with even when the file changed and
//! the daemons restarted in between.

use super::keys::Keys;
use crate::connection::Conn;
use crate::definition::SagaDefinition;
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::time::Duration;

/// How long a version's text is kept after a daemon last published it or
/// read it to resume a saga: longer than any saga should run.
pub const KEPT_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Stores the text of each of `defs` under its version, for [`KEPT_FOR`]:
/// one `SET` per definition, pipelined slot by slot (each version's key is
/// in its saga's slot). A version published before is written again with
/// the same text, and kept for longer.
pub async fn publish<'a>(
    conn: &mut Conn,
    keys: &Keys,
    defs: impl IntoIterator<Item = &'a SagaDefinition>,
) -> RedisResult<()> {
    let cmds = defs
        .into_iter()
        .map(|def| {
            let key = keys.definition(&def.name, &def.version);
            let mut set = redis::cmd("SET");
            set.arg(&key)
                .arg(def.text.as_ref())
                .arg("EX")
                .arg(KEPT_FOR.as_secs());
            (key, set)
        })
        .collect();
    conn.run_all(cmds).await
}

/// A version of a definition as Redis keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    /// Its text, and where it was found (to name it in errors).
    Kept { text: String, location: String },
    /// No daemon published it within [`KEPT_FOR`] (or it never existed).
    NotKept,
}

/// The text of `version` of `saga`, kept for another [`KEPT_FOR`] since a
/// saga still runs on it. The text is as large as the definition file was
/// (definitions are loaded from files an operator wrote).
pub async fn fetch<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    saga: &str,
    version: &str,
) -> RedisResult<Version> {
    let key = keys.definition(saga, version);
    let (text,): (Option<String>,) = redis::pipe()
        .cmd("GET")
        .arg(&key)
        .cmd("EXPIRE")
        .arg(&key)
        .arg(KEPT_FOR.as_secs())
        .ignore()
        .query_async(conn)
        .await?;
    Ok(match text {
        Some(text) => Version::Kept {
            text,
            location: key,
        },
        None => Version::NotKept,
    })
}
