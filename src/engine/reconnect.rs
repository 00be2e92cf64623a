//! The connection of one blocking read loop (starts, replies, operators'
//! requests): made when needed, dropped after an error and made again after
//! the waits of [`Policy::RECONNECT`]. An outage is logged once when it
//! starts and once when it ends, not at every attempt, and counted under
//! the reader's name.

use super::Shared;
use crate::connection::Conn;
use crate::retry::{Backoff, Outage, Policy};
use crate::telemetry::metrics;

pub(super) struct ReadConnection {
    conn: Option<Conn>,
    backoff: Backoff,
    outage: Outage,
}

impl ReadConnection {
    /// `what` names the reader in logs and metrics: `starts`, `replies`,
    /// `control`.
    pub fn new(what: &'static str) -> Self {
        Self {
            conn: None,
            backoff: Backoff::new(Policy::RECONNECT),
            outage: Outage::new(format!("reading Redis ({what})"))
                .metered(metrics::redis_meter(what)),
        }
    }

    /// The connection, made if needed; `None` if the daemon stopped while
    /// Redis could not be reached.
    pub async fn get(&mut self, shared: &Shared) -> Option<&mut Conn> {
        while self.conn.is_none() {
            match shared.client.blocking(shared.settings.block).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    if !self.failed(shared, &e).await {
                        return None;
                    }
                }
            }
        }
        self.conn.as_mut()
    }

    pub fn succeeded(&mut self) {
        self.outage.recovered();
        self.backoff.reset();
    }

    /// Drops the connection and waits before the next try; false if the
    /// daemon stopped meanwhile.
    pub async fn failed(&mut self, shared: &Shared, error: &redis::RedisError) -> bool {
        self.outage.failed(error);
        self.conn = None;
        self.backoff.wait(&shared.shutdown).await
    }
}
