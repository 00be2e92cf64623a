//! Pinned definitions: every version of a definition a daemon runs is kept
//! in Redis ([`crate::store::definitions`]), so that a saga finishes on the
//! version it started with, even when the file changed and the daemons
//! restarted in between. A version fetched from Redis is parsed once and
//! kept in memory for the daemon's life.

use super::Shared;
use crate::config::Settings;
use crate::connection::Conn;
use crate::definition::{self, Catalog, SagaDefinition};
use crate::store::definitions::Version;
use crate::store::{self, keys::Keys};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    let defs = catalog
        .names()
        .into_iter()
        .filter_map(|name| catalog.get(name));
    store::definitions::publish(conn, &Keys::of(settings), defs.map(|def| def.as_ref())).await
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
    let keys = Keys::of(&shared.settings);
    let kept = store::definitions::fetch(&mut conn, &keys, name, version)
        .await
        .map_err(|e| format!("cannot read version {version} of saga `{name}`: {e}"))?;
    let Version::Kept { text, location } = kept else {
        return Err(format!(
            "version {version} of saga `{name}` is not kept in Redis"
        ));
    };
    let source = PathBuf::from(format!("{location} (pinned version)"));
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
