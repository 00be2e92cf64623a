//! The tail of the events stream, read once per daemon and shared by every
//! request that waits on events: a start waiting to be taken, `?wait`, an
//! operator's request waiting for its answer, and the event streams (SSE)
//! clients follow.
//!
//! One task reads `saga:events` with a blocking `XREAD` and broadcasts each
//! entry to the subscribers through a channel of [`CAPACITY`] entries. A
//! subscriber that falls that far behind (a slow client) is not allowed to
//! hold the daemon's memory: it misses entries on the channel, and reads
//! them again from the stream itself, after the last one it saw, so it
//! still sees every entry in order, once, as long as the stream keeps them
//! (`events_maxlen`).

use crate::connection::{Client, Conn};
use crate::streams::{self, Entry, StreamId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Entries held for subscribers that have not taken them yet. An event
/// entry is a few hundred bytes; those with a step's result can be larger
/// (bounded by the protocol's limits on stored JSON).
pub const CAPACITY: usize = 1024;

/// Entries read from the stream at once, by the tail and by a subscriber
/// catching up.
pub const READ_COUNT: usize = 256;

/// How long one blocking read waits; also how soon the tail sees that the
/// daemon is stopping.
const BLOCK: Duration = Duration::from_secs(1);

/// The first wait after a failed read, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MOST: Duration = Duration::from_secs(5);

/// The shared tail of the events stream.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Entry>>,
    stream: String,
}

impl Feed {
    /// Starts reading `stream` from its end (as it is when this returns),
    /// until `shutdown`. Errors
    /// (Redis gone, a failover, the stream replaced by another kind of key)
    /// are retried after half a second, doubling to 5 s, from the last
    /// entry read, so that nothing between is skipped.
    pub async fn start(
        client: Client,
        stream: String,
        shutdown: CancellationToken,
    ) -> redis::RedisResult<Self> {
        // Where the tail begins is read before anyone can subscribe: an
        // entry written after a subscription began is then always after it.
        let mut first = client.blocking(BLOCK).await?;
        let begin = streams::last_id(&mut first, &stream).await?;
        let (tx, _) = broadcast::channel(CAPACITY);
        let feed = Self {
            tx: tx.clone(),
            stream: stream.clone(),
        };
        tokio::spawn(async move {
            let mut last = begin;
            let mut conn: Option<Conn> = Some(first);
            let mut pause = Duration::ZERO;
            while !shutdown.is_cancelled() {
                let read = async {
                    let c = match &mut conn {
                        Some(c) => c,
                        None => conn.insert(client.blocking(BLOCK).await?),
                    };
                    streams::read_after(c, &stream, &last, Some(READ_COUNT), BLOCK).await
                };
                let entries = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    read = read => read,
                };
                match entries {
                    Ok(entries) => {
                        pause = Duration::ZERO;
                        for entry in entries {
                            last = entry.id.clone();
                            // No subscriber is no error.
                            let _ = tx.send(Arc::new(entry));
                        }
                    }
                    Err(e) => {
                        // Half a second, doubling to 5 s while it lasts.
                        pause = (pause * 2).clamp(RETRY_FIRST, RETRY_MOST);
                        tracing::warn!(
                            error = %e, %stream, retry_in = ?pause,
                            "cannot read the events stream; retrying"
                        );
                        conn = None;
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        });
        Ok(feed)
    }

    /// Every entry written from now on, in order, each once. `conn`
    /// reads the stream when the subscriber falls behind.
    pub async fn subscribe(&self, mut conn: Conn) -> Result<Subscription, FeedError> {
        // Subscribed first: what is written after the last id read now
        // reaches the channel after this, and what came before is skipped.
        let rx = self.tx.subscribe();
        let last = streams::last_id(&mut conn, &self.stream).await?;
        Ok(Subscription {
            rx,
            after: StreamId::parse(&last),
            caught_up: VecDeque::new(),
            catching_up: false,
            conn,
            stream: self.stream.clone(),
        })
    }
}

/// One subscriber's view of the events stream.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Entry>>,
    /// The last entry given out: nothing at or before it is given again.
    after: Option<StreamId>,
    /// Entries read from the stream after falling behind.
    caught_up: VecDeque<Arc<Entry>>,
    /// Behind: the stream is read until a read reaches its end.
    catching_up: bool,
    conn: Conn,
    stream: String,
}

/// Why a subscription gives nothing more.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the daemon is stopping")]
    Closed,
    #[error("cannot read the events stream after falling behind: {0}")]
    Redis(#[from] redis::RedisError),
}

impl Subscription {
    /// Gives out nothing at or before `id` (read from the stream before).
    pub fn skip_to(&mut self, id: &str) {
        self.after = StreamId::parse(id).max(self.after);
    }

    /// The last entry given out, or the end of the stream when subscribed.
    pub fn position(&self) -> Option<StreamId> {
        self.after
    }

    /// The next entry, in stream order.
    pub async fn next(&mut self) -> Result<Arc<Entry>, FeedError> {
        loop {
            let entry = match self.caught_up.pop_front() {
                Some(entry) => entry,
                None if self.catching_up => {
                    self.catch_up().await?;
                    continue;
                }
                None => match self.rx.recv().await {
                    Ok(entry) => entry,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.catch_up().await?;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(FeedError::Closed),
                },
            };
            let Some(id) = StreamId::parse(&entry.id) else {
                continue;
            };
            if self.after.is_some_and(|after| id <= after) {
                continue;
            }
            self.after = Some(id);
            return Ok(entry);
        }
    }

    /// Reads what the channel dropped from the stream itself, [`READ_COUNT`]
    /// entries after the last one given out at a time, until a read
    /// reaches the end of the stream: what is written after that reaches
    /// the channel (or, dropped again, is reported as a lag again).
    async fn catch_up(&mut self) -> Result<(), FeedError> {
        let from = match self.after {
            Some(after) => format!("({after}"),
            None => "-".to_owned(),
        };
        let read = streams::range(&mut self.conn, &self.stream, &from, "+", READ_COUNT).await?;
        self.catching_up = read.len() == READ_COUNT;
        self.caught_up.extend(read.into_iter().map(Arc::new));
        Ok(())
    }
}
