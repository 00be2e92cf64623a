//! The reply reader: one blocking `XREAD` loop over this daemon's reply
//! stream, whatever the number of sagas in flight, plus the streams of the
//! commands that have one of their own (`reply_stream: per_request`). Each
//! entry is parsed once and handed to its saga's task; what belongs to no
//! saga here is stray and skipped. Read entries are trimmed away now and
//! then, and the stream expires once its daemon is gone for longer than the
//! reply retention.

use super::reconnect::ReadConnection;
use super::Shared;
use crate::protocol::Reply;
use crate::streams::{self, Entry};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often entries already read are trimmed from the reply stream, and
/// its expiry renewed.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// The shortest expiry a reply stream gets: many renewals long.
const MIN_REPLY_TTL: Duration = Duration::from_secs(60);

/// The field of the entries the daemon writes to wake its own reply reader
/// (and to create a per-request reply stream); they are no replies.
pub(crate) const WAKE_FIELD: &str = "sagaflow_wake";

/// The reply streams besides this daemon's own that are awaited right now:
/// per-request streams, and the streams of daemons whose sagas were taken
/// over, while the attempts sent by them are under way. Counted, since
/// several sagas may await one stream; the reader follows the set at each
/// read.
#[derive(Default)]
pub(crate) struct FollowedStreams {
    streams: Mutex<HashMap<String, usize>>,
}

impl FollowedStreams {
    pub fn add(&self, stream: &str) {
        *self
            .streams
            .lock()
            .expect("followed streams lock")
            .entry(stream.to_owned())
            .or_insert(0) += 1;
    }

    pub fn remove(&self, stream: &str) {
        let mut streams = self.streams.lock().expect("followed streams lock");
        if let Some(count) = streams.get_mut(stream) {
            *count -= 1;
            if *count == 0 {
                streams.remove(stream);
            }
        }
    }

    fn snapshot(&self) -> BTreeSet<String> {
        self.streams
            .lock()
            .expect("followed streams lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// Where the reader stands in each stream it reads.
struct Cursors {
    main: String,
    main_id: String,
    own: BTreeMap<String, String>,
}

impl Cursors {
    /// Follows the set of awaited per-request streams: new ones are read
    /// from their start, finished ones dropped.
    fn follow(&mut self, awaited: BTreeSet<String>) {
        self.own.retain(|stream, _| awaited.contains(stream));
        for stream in awaited {
            self.own.entry(stream).or_insert_with(|| "0-0".to_owned());
        }
    }

    fn read_command(&self, batch: usize, block: Duration) -> redis::Cmd {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(batch)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.main);
        cmd.arg(self.own.keys().collect::<Vec<_>>());
        cmd.arg(&self.main_id);
        cmd.arg(self.own.values().collect::<Vec<_>>());
        cmd
    }

    fn advance(&mut self, entry: &Entry) {
        if entry.stream == self.main {
            self.main_id = entry.id.clone();
        } else if let Some(id) = self.own.get_mut(&entry.stream) {
            *id = entry.id.clone();
        }
    }
}

pub(super) async fn run(shared: Arc<Shared>) {
    let mut cursors = Cursors {
        main: shared.settings.reply_stream(),
        main_id: "0-0".to_owned(),
        own: BTreeMap::new(),
    };
    let stream = cursors.main.clone();
    let mut trimmed_at = Instant::now();
    let mut trimmed_id = String::new();
    // Whether the stream has had an expiry since it came to exist.
    let mut expiry_set = false;
    let mut conn = ReadConnection::new("replies");
    loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        let Some(c) = conn.get(&shared).await else {
            break;
        };
        cursors.follow(shared.followed.snapshot());
        // A plain XREAD takes nothing from anyone: abandoning it on a stop
        // loses nothing.
        let cmd = cursors.read_command(shared.settings.read_batch, shared.settings.block);
        let read = cmd.query_async::<redis::Value>(c);
        let reply = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            reply = read => reply,
        };
        let value = match reply {
            Ok(v) => {
                conn.succeeded();
                v
            }
            Err(e) => {
                if !conn.failed(&shared, &e).await {
                    break;
                }
                continue;
            }
        };
        for entry in streams::decode_read_reply(&value) {
            cursors.advance(&entry);
            route(&shared, &entry);
        }
        // After routing: a saga that sees this time has its replies in hand.
        shared
            .replies_read_at
            .store(super::now_ms(), Ordering::Relaxed);
        let exists = cursors.main_id != "0-0";
        if trimmed_at.elapsed() >= TRIM_EVERY || (exists && !expiry_set) {
            expiry_set |= exists;
            let progressed = cursors.main_id != trimmed_id;
            tidy(
                &shared,
                &stream,
                progressed.then_some(cursors.main_id.as_str()),
            )
            .await;
            trimmed_id = cursors.main_id.clone();
            trimmed_at = Instant::now();
        }
    }
    // A stream left behind expires, even if this daemon never comes back.
    let _ = tokio::time::timeout(Duration::from_secs(1), tidy(&shared, &stream, None)).await;
}

fn route(shared: &Shared, entry: &Entry) {
    if entry.fields.contains_key(WAKE_FIELD) {
        return;
    }
    if let Some(why) = &entry.malformed {
        tracing::warn!(entry_id = %entry.id, stream = %entry.stream, reason = %why, "skipping a malformed reply");
        return;
    }
    match Reply::from_fields(&entry.fields) {
        Ok(reply) => {
            if !shared.router.route(Box::new(reply)) {
                tracing::debug!(entry_id = %entry.id, "reply for no saga driven here; ignored");
            }
        }
        Err(why) => {
            tracing::warn!(entry_id = %entry.id, stream = %entry.stream, reason = %why, "skipping a stray reply")
        }
    }
}

/// Removes the entries before `last_id` (they have been routed already),
/// and renews the expiry of the streams read: the stream of a daemon that
/// is gone for good disappears once the reply retention has passed.
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
    // Never so short that the stream could expire between two renewals
    // while this daemon reads it: unread replies would go with it.
    let ttl = shared.settings.reply_retention.max(MIN_REPLY_TTL).as_secs();
    pipe.cmd("EXPIRE").arg(stream).arg(ttl).ignore();
    for followed in shared.followed.snapshot() {
        pipe.cmd("EXPIRE").arg(followed).arg(ttl).ignore();
    }
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        tracing::debug!(error = %e, %stream, "tidying the reply streams failed; will try again");
    }
}
