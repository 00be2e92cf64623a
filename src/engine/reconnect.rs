//! The connection of one blocking read loop (starts, replies): made when
//! needed, dropped after an error and made again with capped backoff. An
//! outage is logged once when it starts and once when it ends, not at every
//! attempt.

use super::{pause, Shared, RECONNECT_MAX_DELAY};
use crate::connection::Conn;
use crate::telemetry::metrics;
use std::time::Duration;

const FIRST_DELAY: Duration = Duration::from_millis(100);

pub(super) struct ReadConnection {
    what: &'static str,
    conn: Option<Conn>,
    delay: Duration,
    failing: bool,
}

impl ReadConnection {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            conn: None,
            delay: FIRST_DELAY,
            failing: false,
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
        if self.failing {
            tracing::info!(reader = self.what, "reading from Redis again");
            metrics::redis_reconnected(self.what);
            self.failing = false;
        }
        self.delay = FIRST_DELAY;
    }

    /// Drops the connection and waits before the next try; false if the
    /// daemon stopped meanwhile.
    pub async fn failed(&mut self, shared: &Shared, error: &redis::RedisError) -> bool {
        metrics::redis_error(self.what);
        if !self.failing {
            tracing::warn!(reader = self.what, %error, "cannot read from Redis; retrying");
            self.failing = true;
        }
        self.conn = None;
        let go_on = pause(&shared.shutdown, self.delay).await;
        self.delay = (self.delay * 2).min(RECONNECT_MAX_DELAY);
        go_on
    }
}
