//! Pinned definitions: every version of a definition a daemon runs is kept
//! in Redis, so that a saga finishes on the version it started with, even
//! when the file changed and the daemons restarted in between.

use super::Shared;
use crate::config::Settings;
use crate::connection::Conn;
use crate::definition::{self, Catalog, SagaDefinition};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a version's text is kept after a daemon last loaded it or
/// resumed a saga on it; longer than any saga should run.
pub const KEPT_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Versions fetched from Redis, by (name, version).
#[derive(Default)]
pub(crate) struct Pinned {
    fetched: Mutex<HashMap<(String, String), Arc<SagaDefinition>>>,
}

/// Stores the text of every loaded definition under its version.
pub(super) async fn publish(
    conn: &mut Conn,
    settings: &Settings,
    catalog: &Catalog,
) -> redis::RedisResult<()> {
    let keys = crate::store::keys::Keys::of(settings);
    let mut cmds = Vec::new();
    for name in catalog.names() {
        let def = catalog.get(name).expect("listed");
        let key = keys.definition(&def.name, &def.version);
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(def.text.as_ref())
            .arg("EX")
            .arg(KEPT_FOR.as_secs());
        cmds.push((key, set));
    }
    conn.run_all(cmds).await
}

/// The definition a saga is pinned to: the loaded one if it is that
/// version, else the version kept in Redis.
pub(super) async fn resolve(
    shared: &Shared,
    name: &str,
    version: &str,
) -> Result<Arc<SagaDefinition>, String> {
    if let Some(def) = shared.catalog.get(name) {
        if version.is_empty() || def.version == version {
            return Ok(def.clone());
        }
    }
    let key = (name.to_owned(), version.to_owned());
    if let Some(def) = shared.pinned.fetched.lock().expect("pinned lock").get(&key) {
        return Ok(def.clone());
    }
    let mut conn = shared.conn.clone();
    let redis_key = crate::store::keys::Keys::of(&shared.settings).definition(name, version);
    let (text,): (Option<String>,) = redis::pipe()
        .cmd("GET")
        .arg(&redis_key)
        .cmd("EXPIRE")
        .arg(&redis_key)
        .arg(KEPT_FOR.as_secs())
        .ignore()
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("cannot read version {version} of saga `{name}`: {e}"))?;
    let text =
        text.ok_or_else(|| format!("version {version} of saga `{name}` is not kept in Redis"))?;
    let source = PathBuf::from(format!("{redis_key} (pinned version)"));
    let def = definition::load_str(&source, &text).map_err(|e| e.to_string())?;
    let def = Arc::new(def);
    shared
        .pinned
        .fetched
        .lock()
        .expect("pinned lock")
        .insert(key, def.clone());
    tracing::info!(
        saga = name,
        version,
        "running a saga on the version it started with"
    );
    Ok(def)
}
