//! The reply reader: one blocking `XREAD` loop over this daemon's reply
//! stream, whatever the number of sagas in flight. Each entry is parsed once
//! and handed to its saga's task; what belongs to no saga here is stray and
//! skipped. Read entries are trimmed away now and then, and the stream
//! expires once its daemon is gone for longer than the retention.

use super::{pause, Shared};
use crate::protocol::Reply;
use crate::streams;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often entries already read are trimmed from the reply stream.
const TRIM_EVERY: Duration = Duration::from_secs(5);

pub(super) async fn run(shared: Arc<Shared>) {
    let stream = shared.settings.reply_stream();
    let mut last_id = "0-0".to_owned();
    let mut trimmed_at = Instant::now();
    let mut trimmed_id = String::new();
    let mut conn = None;
    let mut delay = Duration::from_millis(100);
    let mut failing = false;
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match streams::blocking_connection(&shared.client, shared.settings.block).await
            {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, %stream, "reply reader cannot reach Redis; retrying");
                        failing = true;
                    }
                    if !pause(&shared.shutdown, delay).await {
                        return;
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(shared.settings.read_batch)
            .arg("BLOCK")
            .arg(shared.settings.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last_id);
        let read = cmd.query_async::<redis::Value>(c);
        let reply = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            reply = read => reply,
        };
        let value = match reply {
            Ok(v) => {
                if failing {
                    tracing::info!(%stream, "reply reader reconnected");
                    failing = false;
                }
                delay = Duration::from_millis(100);
                v
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, %stream, "reading replies failed; retrying");
                    failing = true;
                }
                conn = None;
                if !pause(&shared.shutdown, delay).await {
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        for entry in streams::decode_read_reply(&value) {
            last_id = entry.id.clone();
            if let Some(why) = &entry.malformed {
                tracing::warn!(entry_id = %entry.id, %stream, reason = %why, "skipping a malformed reply");
                continue;
            }
            match Reply::from_fields(&entry.fields) {
                Ok(reply) => {
                    if !shared.router.route(reply) {
                        tracing::debug!(entry_id = %entry.id, "reply for no saga driven here; ignored");
                    }
                }
                Err(why) => {
                    tracing::warn!(entry_id = %entry.id, %stream, reason = %why, "skipping a stray reply")
                }
            }
        }
        if trimmed_at.elapsed() >= TRIM_EVERY {
            tidy(
                &shared,
                &stream,
                (last_id != trimmed_id).then_some(last_id.as_str()),
            )
            .await;
            trimmed_id = last_id.clone();
            trimmed_at = Instant::now();
        }
    }
}

/// Removes the entries before `last_id` (they have been routed already),
/// and renews the stream's expiry: the stream of a daemon that is gone for
/// good disappears once the retention has passed.
async fn tidy(shared: &Shared, stream: &str, last_id: Option<&str>) {
    let mut conn = shared.conn.clone();
    let mut pipe = redis::pipe();
    if let Some(last_id) = last_id {
        pipe.cmd("XTRIM")
            .arg(stream)
            .arg("MINID")
            .arg(last_id)
            .ignore();
    }
    pipe.cmd("EXPIRE")
        .arg(stream)
        .arg(shared.settings.retention.as_secs().max(1))
        .ignore();
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        tracing::debug!(error = %e, %stream, "tidying the reply stream failed; will try again");
    }
}
