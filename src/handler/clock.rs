//! Time as Redis tells it. A command's `deadline_ms` is a time on Redis's
//! clock, written by the daemon, and the handler's host may run ahead of or
//! behind it: a host 15 s ahead, comparing with its own clock, would skip
//! every command with a timeout under 15 s. So the runner measures how far
//! Redis's clock (`TIME`) is from the host's when it starts, and again every
//! [`RESYNC_EVERY`], and reads the time as the host's clock plus that
//! offset. The offset is known to within half the round trip of `TIME`.

use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the offset is measured again. The offset changes only when a
/// clock is stepped (an NTP step, a VM resumed, a hand-set clock) or
/// drifts; an undisciplined clock drifts at most about 0.5 ms a second
/// (500 ppm), so within a minute the offset moves by 30 ms at most, little
/// against deadlines of seconds, and a step is caught within a minute. One
/// `TIME` a minute costs nothing worth counting.
pub const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// An offset, or a change of it, from which the log warns that the clocks
/// disagree.
const NOTABLE_OFFSET_MS: i64 = 1_000;

/// The host's clock corrected by the last measured offset to Redis's.
#[derive(Debug, Default)]
pub(crate) struct RedisClock {
    /// Redis's time minus the host's, in ms; 0 until measured.
    offset_ms: AtomicI64,
}

impl RedisClock {
    /// Unix time in ms on Redis's clock, as last measured.
    pub(crate) fn now_ms(&self) -> u64 {
        let host = host_micros() / 1000;
        let now = host + self.offset_ms.load(Ordering::Relaxed);
        now.max(0) as u64
    }

    /// The current offset to Redis's clock, in ms.
    pub(crate) fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Measures the offset with one `TIME` and keeps it; returns it with
    /// the one it replaces.
    pub(crate) async fn sync<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> RedisResult<(i64, i64)> {
        let before = host_micros();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
        let after = host_micros();
        let offset = offset_ms(before, secs * 1_000_000 + micros, after);
        Ok((offset, self.offset_ms.swap(offset, Ordering::Relaxed)))
    }
}

/// Whether an offset, or a change of it, is worth a warning: clocks kept by
/// NTP agree to a few ms.
pub(crate) fn notable(offset_ms: i64) -> bool {
    offset_ms.abs() >= NOTABLE_OFFSET_MS
}

/// Redis's time minus the host's, in ms, from a `TIME` reading taken
/// between two host readings (all in µs): Redis read its clock about half
/// way through the round trip.
fn offset_ms(before_us: i64, redis_us: i64, after_us: i64) -> i64 {
    let host_us = before_us + (after_us - before_us) / 2;
    (redis_us - host_us).div_euclid(1000)
}

fn host_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_at_the_middle_of_the_round_trip() {
        // The host is 15 s ahead; the round trip took 2 ms.
        let before = 1_700_000_015_000_000;
        let redis = 1_700_000_000_001_000;
        assert_eq!(offset_ms(before, redis, before + 2_000), -15_000);
        // Redis ahead by 2.5 s.
        assert_eq!(offset_ms(0, 2_500_000, 0), 2_500);
    }

    #[test]
    fn an_unmeasured_clock_is_the_hosts() {
        let clock = RedisClock::default();
        let host = (host_micros() / 1000) as u64;
        assert!(clock.now_ms().abs_diff(host) < 1_000);
        clock.offset_ms.store(-15_000, Ordering::Relaxed);
        assert!(clock.now_ms().abs_diff(host - 15_000) < 1_000);
    }
}
