//! A command's `progress` replies, on their way to its reply stream.
//!
//! A handler reporting progress does not wait for the write: the reply is
//! queued and written in the background within [`LINGER`]. If the final
//! reply comes first, the queued ones go with it, ahead of it in the same round trip. In
//! both cases every reply reaches the stream in the order it was made: a
//! background write and the final reply take the same write lock, and the
//! final reply takes whatever is still queued.
//!
//! So a handler that answers at once sends `progress` and `completed`
//! together, and the daemon reads and records them together. A background
//! write is one pipeline on one key, the reply stream: one slot, so one
//! round trip on a Redis Cluster too.
//!
//! At most [`MAX_QUEUED_PROGRESS`] replies wait per command: a handler
//! reporting faster than Redis takes the writes (or while Redis is away)
//! has its oldest waiting reports dropped, the newest kept.

use crate::connection::Conn;
use std::sync::{Arc, Mutex};

pub(crate) type Fields = Vec<(&'static str, String)>;

/// How long a queued reply waits for others, or for the final reply, to be
/// written with: a handler that answers within it costs one round trip.
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Progress replies waiting to be written for one command. A background
/// write takes all of them every 2 ms (`LINGER`) plus a round trip, so only a
/// handler reporting hundreds of times a second, or a Redis that is slow or
/// away, fills it. Each report supersedes the ones before, so dropping the
/// oldest loses nothing the daemon needs, and the bound keeps a handler
/// looping on `progress` from growing memory without limit.
pub const MAX_QUEUED_PROGRESS: usize = 16;

#[derive(Clone)]
pub(crate) struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    reply_stream: String,
    request_id: String,
    conn: Conn,
    queued: Mutex<Queued>,
    writing: tokio::sync::Mutex<()>,
}

struct Queued {
    replies: Vec<Fields>,
    /// When a reply was last queued: heartbeats are left out while others
    /// show the handler is alive.
    at: tokio::time::Instant,
}

impl Outbox {
    pub(crate) fn new(reply_stream: &str, request_id: &str, conn: Conn) -> Self {
        Self {
            inner: Arc::new(Inner {
                reply_stream: reply_stream.to_owned(),
                request_id: request_id.to_owned(),
                conn,
                queued: Mutex::new(Queued {
                    replies: Vec::new(),
                    at: tokio::time::Instant::now(),
                }),
                writing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// True when no reply was queued for `period`.
    pub(crate) fn quiet_for(&self, period: std::time::Duration) -> bool {
        self.inner.queued.lock().expect("outbox lock").at.elapsed() >= period
    }

    /// Queues a reply and makes sure a background write will take it.
    pub(crate) fn push(&self, fields: Fields) {
        let first = {
            let mut queued = self.inner.queued.lock().expect("outbox lock");
            queued.at = tokio::time::Instant::now();
            if queued.replies.len() >= MAX_QUEUED_PROGRESS {
                queued.replies.remove(0);
                tracing::debug!(request_id = %self.inner.request_id, "progress reports queue up; the oldest is dropped");
            }
            queued.replies.push(fields);
            queued.replies.len() == 1
        };
        if first {
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.flush().await });
        }
    }

    /// Holds back background writes and takes what is still queued: the
    /// caller writes it ahead of the final reply, then drops the guard.
    pub(crate) async fn take_for_final(&self) -> (tokio::sync::MutexGuard<'_, ()>, Vec<Fields>) {
        let guard = self.inner.writing.lock().await;
        (guard, self.inner.take())
    }
}

impl Inner {
    fn take(&self) -> Vec<Fields> {
        std::mem::take(&mut self.queued.lock().expect("outbox lock").replies)
    }

    async fn flush(&self) {
        tokio::time::sleep(LINGER).await;
        let _writing = self.writing.lock().await;
        let replies = self.take();
        if replies.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for fields in &replies {
            pipe.add_command(xadd(&self.reply_stream, fields)).ignore();
        }
        // Progress is optional in the contract: a failed write is logged
        // and must not fail the work it reports on.
        if let Err(e) = pipe.query_async::<()>(&mut self.conn.clone()).await {
            tracing::warn!(
                request_id = %self.request_id,
                reply_stream = %self.reply_stream,
                error = %e,
                "could not write a progress reply"
            );
        }
    }
}

/// `XADD reply_stream * ...` of one reply.
pub(crate) fn xadd<K: AsRef<str>, V: AsRef<str>>(
    reply_stream: &str,
    fields: &[(K, V)],
) -> redis::Cmd {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(reply_stream).arg("*");
    for (k, v) in fields {
        xadd.arg(k.as_ref()).arg(v.as_ref());
    }
    xadd
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};

    #[tokio::test(start_paused = true)]
    async fn progress_waiting_to_be_written_is_bounded() {
        // Never connected: nothing is written before the queue is taken.
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let conn = ConnectionManager::new_lazy_with_config(client, ConnectionManagerConfig::new())
            .unwrap();
        let outbox = Outbox::new("saga:replies:n.e", "r", Conn::Single(conn));
        for i in 0..1000 {
            outbox.push(vec![("progress", i.to_string())]);
        }
        let (_writing, queued) = outbox.take_for_final().await;
        let kept: Vec<&str> = queued.iter().map(|r| r[0].1.as_str()).collect();
        let newest: Vec<String> = (1000 - MAX_QUEUED_PROGRESS..1000)
            .map(|i| i.to_string())
            .collect();
        assert_eq!(kept, newest);
    }
}
