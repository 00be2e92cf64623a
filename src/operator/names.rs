//! What operators do with saga names from outside the daemon: pause every
//! new start of one, resume it, and see what is paused (`sagaflow pause
//! --name`, `resume --name`, `list --paused-names`, and the HTTP API).

use super::redis_now_ms;
use crate::config::Settings;
use crate::protocol::fields as f;
use crate::store::keys::Keys;
use crate::streams::Entry;
use redis::aio::ConnectionLike;
use std::collections::BTreeMap;

/// An operator's request about a saga name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameAction {
    /// Hold every new start of the name until it is resumed.
    Pause,
    /// Take the starts held, in order, then new ones again.
    Resume,
}

impl NameAction {
    /// The action as written on the control stream.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause_name",
            Self::Resume => "resume_name",
        }
    }

    /// Why a name in `paused` (the names paused) is in no state for
    /// this request, if it is not.
    pub fn refused_for(self, name: &str, paused: &BTreeMap<String, PausedName>) -> Option<String> {
        match (self, paused.get(name)) {
            (Self::Pause, Some(p)) => Some(format!(
                "saga `{name}` is paused already, by {} since {}",
                p.pause.by,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(p.pause.since_ms)
                )
            )),
            (Self::Resume, None) => Some(format!("saga `{name}` is not paused")),
            _ => None,
        }
    }
}

/// A saga name paused, as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PausedName {
    pub pause: crate::store::holds::NamePause,
    /// Starts held and not taken yet (those of the trigger streams the
    /// daemon that paused it reads).
    pub held: u64,
}

impl PausedName {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "by": self.pause.by,
            "reason": self.pause.reason,
            "since_ms": self.pause.since_ms,
            "held": self.held,
        })
    }
}

/// The saga names paused, by name (operators pause a handful at most).
pub async fn paused_names<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
) -> Result<BTreeMap<String, PausedName>, String> {
    let keys = Keys::of(settings);
    let failed = |e: redis::RedisError| format!("cannot read the saga names paused: {e}");
    let mut out = BTreeMap::new();
    for (name, pause) in crate::store::holds::paused_names(conn, &keys)
        .await
        .map_err(failed)?
    {
        let mut held = 0;
        for stream in &pause.streams {
            held += crate::store::holds::held_count(conn, &keys, stream, &name)
                .await
                .map_err(failed)?;
        }
        out.insert(name, PausedName { pause, held });
    }
    Ok(out)
}

/// Writes an operator's request about saga name `name`, signed with `key`
/// at Redis's time, to the control stream (capped at `control_maxlen`);
/// the request written (its nonce tells its answer).
pub async fn request_name<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    key: &crate::protocol::control::OperatorKey,
    name: &str,
    action: NameAction,
    reason: &str,
) -> Result<crate::protocol::control::NameRequest, String> {
    let issued_ms = redis_now_ms(conn).await?;
    let request = crate::protocol::control::NameRequest::signed(
        key,
        name,
        action.as_str(),
        reason,
        issued_ms,
    );
    super::write_control(conn, settings, request.to_fields()).await?;
    Ok(request)
}

/// The payload of `entry` when it is the daemons' answer to the request
/// about a saga name whose nonce is `nonce` (an `operator_action` about no
/// saga, with `refused` when it was refused).
pub fn answer_to_name(entry: &Entry, name: &str, nonce: &str) -> Option<serde_json::Value> {
    let text = |k: &str| entry.fields.get(k).map(|v| String::from_utf8_lossy(v));
    let ours = text(f::SAGA).as_deref() == Some(name)
        && text(f::SAGA_ID).as_deref().unwrap_or("").is_empty()
        && text(f::EVENT_TYPE).as_deref() == Some("operator_action");
    if !ours {
        return None;
    }
    let payload: serde_json::Value =
        serde_json::from_str(&text(f::PAYLOAD).unwrap_or_default()).ok()?;
    (payload["nonce"] == nonce).then_some(payload)
}
