//! The runner's Redis edge: retry with backoff for what may pass, and an
//! end to retrying for what never will. Entries are decoded by
//! [`crate::streams`].

use redis::{RedisError, RedisResult};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two tries: a Redis that comes back is used
/// again within this long.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a retried call ended.
pub(super) enum Tried<T> {
    Done(T),
    /// Redis refused the call itself ([`crate::streams::is_permanent`]):
    /// trying it again cannot help, and would hold up the work behind it.
    Refused(RedisError),
    /// Shutdown was requested while the call was still failing.
    Stopped,
}

/// Runs `op` until it succeeds or fails permanently, backing off between
/// transient failures (Redis away, busy, loading); stops trying when
/// shutdown is requested, leaving the entry pending.
pub(super) async fn retrying<T, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    mut op: F,
) -> Tried<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(value) => {
                backoff.succeeded(what);
                return Tried::Done(value);
            }
            Err(e) if crate::streams::is_permanent(&e) => return Tried::Refused(e),
            Err(e) => {
                let delay = backoff.failed(what, &e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Tried::Stopped,
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
