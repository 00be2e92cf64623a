//! Redis's clock, as this daemon sees it: the host's wall clock plus the
//! offset measured at every lease renewal (the renewal script returns
//! Redis's `TIME`). Deadlines, timestamps and stream-id cut-offs are
//! compared between daemons and handlers on different hosts, so they are
//! all taken on this one clock; a host whose own clock is wrong by minutes
//! still agrees with the others to within a round trip.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The host's wall clock, in unix ms.
pub(crate) fn host_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
pub(crate) struct Clock {
    /// Redis's time minus the host's, in ms.
    offset_ms: AtomicI64,
    /// Half the round trip of the last measurement: how far off the
    /// estimate may be.
    uncertainty_ms: AtomicU64,
}

impl Clock {
    /// Redis's time now, in unix ms (an estimate, see [`Self::uncertainty_ms`]).
    pub fn now_ms(&self) -> u64 {
        host_ms().saturating_add_signed(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn uncertainty_ms(&self) -> u64 {
        self.uncertainty_ms.load(Ordering::Relaxed)
    }

    /// Takes in one reading of Redis's time, asked for at host time `sent`
    /// and answered at `received`: Redis read its clock somewhere between.
    pub fn observe(&self, redis_ms: u64, sent: u64, received: u64) {
        let midpoint = sent / 2 + received / 2;
        let offset = redis_ms as i64 - midpoint as i64;
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.uncertainty_ms
            .store(received.saturating_sub(sent) / 2 + 1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_clock_ahead_is_corrected() {
        let clock = Clock::default();
        let host = host_ms();
        // Redis is 15 s behind this host, answered in 4 ms.
        clock.observe(host - 15_000, host - 2, host + 2);
        let now = clock.now_ms();
        assert!(
            now.abs_diff(host - 15_000) < 1_000,
            "{now} vs {}",
            host - 15_000
        );
        assert_eq!(clock.uncertainty_ms(), 3);
    }
}
