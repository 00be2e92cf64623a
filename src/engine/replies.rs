//! The reply reader: one loop over this daemon's reply stream (one per
//! lease period), whatever the number of sagas in flight, plus the streams
//! that attempts under way reply to besides it (per-request streams, and
//! those of daemons whose sagas were taken over). Reads are bounded: at
//! most `read_batch` entries, each at most [`MAX_REPLY_ENTRY_BYTES`] (a larger
//! reply never leaves Redis whole; see [`crate::store::read`]). Each entry
//! is parsed once and handed to its saga's task; what belongs to no saga
//! here is stray and skipped.
//!
//! Two promises rest on this reader:
//! - A reply is removed from the stream only once it has been applied (its
//!   transition written, or found to change nothing): the stream is
//!   trimmed up to the oldest reply still in hand ([`Receipt`]), so a
//!   daemon killed while its writes lag loses no reply.
//! - A timeout never wins over a reply that reached Redis before the
//!   deadline: the reader records, per stream, the time (on Redis's clock)
//!   up to which it has read everything ([`ReplyState::read_through`]); a
//!   saga's timeout waits until its reply stream has been read through its
//!   deadline, after any downtime.

use super::reconnect::ReadConnection;
use super::Shared;
use crate::protocol::limits::MAX_REPLY_ENTRY_BYTES;
use crate::protocol::{Reply, SagaId};
use crate::store::transition::WAKE_FIELD;
use crate::store::{maintain, read};
use crate::streams::{Entry, StreamId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of reply entries routed to their sagas and not yet applied, at
/// most: the reader waits (the replies wait in Redis) when sagas are
/// slower than their replies. Parsed, a reply takes at most about twice its
/// entry (its JSON is bounded in values, see
/// [`crate::protocol::limits::MAX_JSON_VALUES`]), so this bounds what
/// replies cost the daemon at about 128 MiB, whatever handlers send.
pub(crate) const IN_HAND_BYTES: usize = 64 << 20;

/// How often entries already applied are trimmed from the reply stream,
/// and its expiry renewed.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// The shortest expiry a reply stream gets: many renewals long.
const MIN_REPLY_TTL: Duration = Duration::from_secs(60);

/// What the reader shares with the saga tasks.
pub(crate) struct ReplyState {
    followed: FollowedStreams,
    /// Per stream, the time (Redis's clock, unix ms) up to which every
    /// entry has been read and routed.
    read_through: Mutex<HashMap<String, u64>>,
    unapplied: Arc<Unapplied>,
    /// What the replies routed and not yet applied may take, in KiB of
    /// their entries (see [`IN_HAND_BYTES`]).
    in_hand: Arc<tokio::sync::Semaphore>,
    /// Host ms of the last successful read.
    read_at: AtomicU64,
}

impl Default for ReplyState {
    fn default() -> Self {
        Self {
            followed: FollowedStreams::default(),
            read_through: Mutex::default(),
            unapplied: Arc::default(),
            in_hand: Arc::new(tokio::sync::Semaphore::new(IN_HAND_BYTES >> 10)),
            // Readable until a read says otherwise.
            read_at: AtomicU64::new(super::clock::host_ms()),
        }
    }
}

impl ReplyState {
    /// The time up to which every reply on `stream` has been routed to its
    /// saga (0 when the stream has not been read yet).
    pub fn read_through(&self, stream: &str) -> u64 {
        let read = self.read_through.lock().expect("read-through lock");
        read.get(stream).copied().unwrap_or(0)
    }

    pub fn follow(&self, stream: &str) {
        self.followed.add(stream);
    }

    pub fn unfollow(&self, stream: &str) {
        self.followed.remove(stream);
    }

    /// False while the reader cannot read (Redis is unreachable).
    pub fn readable(&self, settings: &crate::config::Settings) -> bool {
        let read_at = self.read_at.load(Ordering::Relaxed);
        let stalled_after = settings.block + Duration::from_secs(2);
        super::clock::host_ms().saturating_sub(read_at) <= stalled_after.as_millis() as u64
    }

    fn mark_read(&self, streams: &[&str], through: u64) {
        let mut read = self.read_through.lock().expect("read-through lock");
        read.retain(|stream, _| streams.contains(&stream.as_str()));
        for stream in streams {
            let at = read.entry((*stream).to_owned()).or_insert(0);
            *at = (*at).max(through);
        }
    }
}

/// The reply streams besides this daemon's own that are awaited right now:
/// per-request streams, and the streams of daemons whose sagas were taken
/// over, while the attempts sent by them are under way. Counted, since
/// several sagas may await one stream; the reader follows the set at each
/// read.
#[derive(Default)]
struct FollowedStreams {
    streams: Mutex<HashMap<String, usize>>,
}

impl FollowedStreams {
    fn add(&self, stream: &str) {
        *self
            .streams
            .lock()
            .expect("followed streams lock")
            .entry(stream.to_owned())
            .or_insert(0) += 1;
    }

    fn remove(&self, stream: &str) {
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

/// The replies of this daemon's own stream that are routed and not yet
/// applied, by entry id: the stream is never trimmed past the oldest.
#[derive(Default)]
pub(crate) struct Unapplied {
    inner: Mutex<UnappliedInner>,
}

#[derive(Default)]
struct UnappliedInner {
    /// Bumped when the stream changes (a new lease period): receipts of the
    /// former stream then release nothing.
    generation: u64,
    ids: BTreeMap<StreamId, usize>,
}

impl Unapplied {
    fn hold(self: &Arc<Self>, id: StreamId) -> (Arc<Unapplied>, u64, StreamId) {
        let mut inner = self.inner.lock().expect("unapplied lock");
        *inner.ids.entry(id).or_insert(0) += 1;
        (self.clone(), inner.generation, id)
    }

    fn oldest(&self) -> Option<StreamId> {
        let inner = self.inner.lock().expect("unapplied lock");
        inner.ids.keys().next().copied()
    }

    fn reset(&self) {
        let mut inner = self.inner.lock().expect("unapplied lock");
        inner.generation += 1;
        inner.ids.clear();
    }
}

/// A reply routed and not yet applied: while it lives, its entry stays in
/// this daemon's reply stream (if it came from there) and its share of the
/// budget of replies in hand stays taken. Dropped once the reply's
/// transition is written (or the reply is found to change nothing, or its
/// saga is gone from here).
pub(crate) struct Receipt {
    /// The entry in this daemon's own stream, and the stream's generation.
    held: Option<(Arc<Unapplied>, u64, StreamId)>,
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Receipt {
    /// A receipt that holds nothing.
    #[cfg(test)]
    pub fn none() -> Self {
        Self {
            held: None,
            _budget: None,
        }
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.held {
            Some((_, _, id)) => write!(f, "Receipt({id})"),
            None => f.write_str("Receipt"),
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        let Some((unapplied, generation, id)) = &self.held else {
            return;
        };
        let mut inner = unapplied.inner.lock().expect("unapplied lock");
        if inner.generation != *generation {
            return;
        }
        if let Some(count) = inner.ids.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                inner.ids.remove(id);
            }
        }
    }
}

/// Where the reader stands in each stream it reads.
struct Cursors {
    main: String,
    main_id: String,
    own: BTreeMap<String, String>,
    /// Keys that turned out not to be streams: never read again (there is
    /// nothing to read in them).
    skipped: HashSet<String>,
}

impl Cursors {
    fn new(main: String) -> Self {
        Self {
            main,
            main_id: "0-0".to_owned(),
            own: BTreeMap::new(),
            skipped: HashSet::new(),
        }
    }

    /// Follows the set of awaited streams: new ones are read from their
    /// start, finished ones dropped. True when a stream was added.
    fn follow(&mut self, awaited: BTreeSet<String>) -> bool {
        self.own.retain(|stream, _| awaited.contains(stream));
        let mut added = false;
        for stream in awaited {
            if stream != self.main && !self.own.contains_key(&stream) {
                self.own.insert(stream, "0-0".to_owned());
                added = true;
            }
        }
        added
    }

    /// Every stream read, with the id to read after.
    fn streams(&self) -> Vec<(&str, &str)> {
        std::iter::once((self.main.as_str(), self.main_id.as_str()))
            .chain(self.own.iter().map(|(s, id)| (s.as_str(), id.as_str())))
            .filter(|(s, _)| !self.skipped.contains(*s))
            .collect()
    }

    fn names(&self) -> Vec<&str> {
        std::iter::once(self.main.as_str())
            .chain(self.own.keys().map(String::as_str))
            .collect()
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
    let mut cursors = Cursors::new(shared.epoch().reply_stream.clone());
    let mut trimmed_at = Instant::now();
    let mut trimmed_below: Option<StreamId> = None;
    // Whether the stream has had an expiry since it came to exist.
    let mut expiry_set = false;
    let mut conn = ReadConnection::new("replies");
    let state = &shared.replies;
    // Whether the last read took everything: the next one then waits.
    let mut drained = false;
    loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        let epoch_stream = shared.epoch().reply_stream.clone();
        if epoch_stream != cursors.main {
            // A new lease period: the former stream is left to whoever took
            // its sagas over (they follow it), and expires by itself.
            tidy(&shared, &cursors.main, None).await;
            state.unapplied.reset();
            cursors = Cursors::new(epoch_stream);
            trimmed_below = None;
            expiry_set = false;
            drained = false;
        }
        let Some(c) = conn.get(&shared).await else {
            break;
        };
        // A stream just followed may hold replies already: look before
        // waiting.
        if cursors.follow(state.followed.snapshot()) {
            drained = false;
        }
        // Everything that reached Redis before this moment is in this read
        // or an earlier one, if the read drains the streams.
        let through = shared
            .now_ms()
            .saturating_sub(shared.clock.uncertainty_ms());
        let streams = cursors.streams();
        // A plain XREAD takes nothing from anyone: abandoning it on a stop
        // loses nothing.
        let read = read::after(
            c,
            &streams,
            shared.settings.read_batch,
            shared.settings.block,
            MAX_REPLY_ENTRY_BYTES,
            drained,
        );
        let reply = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            reply = read => reply,
        };
        drained = false;
        let read = match reply {
            Ok(read) => {
                conn.succeeded();
                drained = read.drained;
                read
            }
            Err(e) if crate::retry::is_permanent(&e) => {
                skip_wrong_kinds(&shared, &mut conn, &mut cursors, &e).await;
                continue;
            }
            Err(e) => {
                if !conn.failed(&shared, &e).await {
                    break;
                }
                continue;
            }
        };
        for entry in read.entries {
            cursors.advance(&entry);
            route(&shared, &cursors.main, entry).await;
        }
        // After routing: a saga that sees this time has its replies in hand.
        if drained {
            state.mark_read(&cursors.names(), through);
        }
        state
            .read_at
            .store(super::clock::host_ms(), Ordering::Relaxed);
        let exists = cursors.main_id != "0-0";
        if trimmed_at.elapsed() >= TRIM_EVERY || (exists && !expiry_set) {
            expiry_set |= exists;
            // Up to the oldest reply not yet applied, else all that was read.
            let below = state
                .unapplied
                .oldest()
                .or_else(|| StreamId::parse(&cursors.main_id));
            let progressed = below.is_some() && below != trimmed_below;
            tidy(&shared, &cursors.main, below.filter(|_| progressed)).await;
            trimmed_below = below;
            trimmed_at = Instant::now();
        }
    }
    // A stream left behind expires, even if this daemon never comes back.
    let _ = tokio::time::timeout(Duration::from_secs(1), tidy(&shared, &cursors.main, None)).await;
}

/// A read failed for good: some key read is not a stream (replaced by
/// another kind). Such keys are left out from then on, and count as read
/// through (they hold no reply).
async fn skip_wrong_kinds(
    shared: &Shared,
    conn: &mut ReadConnection,
    cursors: &mut Cursors,
    error: &redis::RedisError,
) {
    let Some(c) = conn.get(shared).await else {
        return;
    };
    let names: Vec<&str> = cursors.names();
    match read::not_streams(c, &names).await {
        Ok(bad) if !bad.is_empty() => {
            tracing::error!(keys = ?bad, %error, "reply streams replaced by other kinds of keys are no longer read");
            cursors.skipped.extend(bad);
        }
        _ => {
            tracing::warn!(%error, "reading the reply streams failed; retrying");
            super::pause(&shared.shutdown, Duration::from_secs(1)).await;
        }
    }
}

/// Reads a reply entry (or the marker of one too large to read).
pub(crate) fn parse_reply(fields: &crate::protocol::RawFields) -> Result<Reply, String> {
    let size = fields
        .get(read::OVERSIZED_FIELD)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    match size {
        Some(size) => Reply::oversized(fields, size),
        None => Reply::from_fields(fields),
    }
}

/// Hands one entry to the saga it is for. A reply for a saga driven here is
/// parsed and delivered, once the budget of replies in hand has room for
/// it (the reader waits meanwhile); one for a saga not driven here is kept
/// unparsed for a while.
async fn route(shared: &Shared, main: &str, entry: Entry) {
    if entry.fields.contains_key(WAKE_FIELD) {
        return;
    }
    if let Some(why) = &entry.malformed {
        tracing::warn!(entry_id = %entry.id, stream = %entry.stream, reason = %why, "skipping a malformed reply");
        return;
    }
    let saga_id = crate::protocol::text_field(&entry.fields, crate::protocol::fields::SAGA_ID)
        .ok()
        .flatten()
        .and_then(SagaId::parse);
    let Some(saga_id) = saga_id else {
        // Without a saga id no saga here can take it.
        return match Reply::from_fields(&entry.fields) {
            Ok(_) => tracing::debug!(entry_id = %entry.id, "reply without a saga id; ignored"),
            Err(why) => {
                tracing::warn!(entry_id = %entry.id, stream = %entry.stream, reason = %why, "skipping a stray reply")
            }
        };
    };
    let bytes = read::entry_bytes(&entry);
    let reached_ms = StreamId::parse(&entry.id).map(StreamId::ms);
    // Only this daemon's own stream is trimmed by it: the replies on it are
    // held until applied.
    let held = (entry.stream == main)
        .then(|| StreamId::parse(&entry.id))
        .flatten()
        .map(|id| shared.replies.unapplied.hold(id));
    if !shared.router.drives(&saga_id) {
        let receipt = Receipt {
            held,
            _budget: None,
        };
        tracing::debug!(entry_id = %entry.id, %saga_id, "reply for no saga driven here; kept for a while");
        return shared
            .router
            .keep(saga_id, entry.fields, reached_ms, receipt, bytes);
    }
    let kib = u32::try_from(bytes >> 10)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let budget = shared
        .replies
        .in_hand
        .clone()
        .acquire_many_owned(kib)
        .await
        .ok();
    let receipt = Receipt {
        held,
        _budget: budget,
    };
    match parse_reply(&entry.fields) {
        Ok(mut reply) => {
            reply.reached_ms = reached_ms;
            if let Err((_, receipt)) = shared.router.deliver(&saga_id, Box::new(reply), receipt) {
                // Its saga went meanwhile: kept, like any reply for no saga.
                shared
                    .router
                    .keep(saga_id, entry.fields, reached_ms, receipt, bytes);
            }
        }
        Err(why) => {
            tracing::warn!(entry_id = %entry.id, stream = %entry.stream, reason = %why, "skipping a stray reply")
        }
    }
}

/// Removes the entries below `below` (routed and applied already), and
/// renews the expiry of the streams read: the stream of a daemon that is
/// gone for good disappears once the reply retention has passed.
async fn tidy(shared: &Shared, stream: &str, below: Option<StreamId>) {
    let mut conn = shared.conn.clone();
    // Never so short that the stream could expire between two renewals
    // while this daemon reads it: unread replies would go with it.
    let ttl = shared.settings.reply_retention.max(MIN_REPLY_TTL);
    let read = std::iter::once(stream.to_owned()).chain(shared.replies.followed.snapshot());
    if let Err(e) = maintain::tidy_replies(&mut conn, stream, below, read, ttl).await {
        tracing::debug!(error = %e, %stream, "tidying the reply streams failed; will try again");
    }
}
