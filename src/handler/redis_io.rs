//! The runner's Redis edge: replies written, and retry with backoff.
//! Entries are decoded by [`crate::streams`].

use redis::{RedisError, RedisResult};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs `op` until it succeeds, backing off between failures; gives up
/// (`None`) only when shutdown is requested, leaving the entry pending.
pub(super) async fn retrying<T, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(value) => {
                backoff.succeeded(what);
                return Some(value);
            }
            Err(e) => {
                let delay = backoff.failed(what, &e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Exponential backoff that logs the first error of a streak and the
/// recovery, not every retry.
#[derive(Default)]
pub(super) struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    pub(super) fn failed(&mut self, what: &str, error: &RedisError) -> Duration {
        let delay = match self.delay {
            None => {
                tracing::warn!(%error, "Redis error ({what}); retrying with backoff");
                BACKOFF_MIN
            }
            Some(d) => {
                tracing::debug!(%error, "Redis still failing ({what})");
                (d * 2).min(BACKOFF_MAX)
            }
        };
        self.delay = Some(delay);
        delay
    }

    pub(super) fn succeeded(&mut self, what: &str) {
        if self.delay.take().is_some() {
            tracing::info!("Redis is back ({what})");
        }
    }
}
