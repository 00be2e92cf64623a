//! Delay arithmetic of retry policies.

use crate::definition::{Backoff, RetryPolicy};
use std::time::Duration;

/// The delay before the next attempt, after `attempts_made` (>= 1) attempts:
/// fixed = initial; linear = initial * n; exponential = initial * 2^(n-1);
/// each capped at `max_delay`. There is no jitter: the attempts of one saga
/// are sequential, and many sagas' retries are spread by their own timing.
pub fn retry_delay(policy: &RetryPolicy, attempts_made: u32) -> Duration {
    let n = attempts_made.max(1);
    let delay = match policy.backoff {
        Backoff::Fixed => policy.initial_delay,
        Backoff::Linear => policy.initial_delay.saturating_mul(n),
        Backoff::Exponential => {
            let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
            policy.initial_delay.saturating_mul(factor)
        }
    };
    delay.min(policy.max_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            backoff,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }

    fn ms(p: &RetryPolicy, n: u32) -> u128 {
        retry_delay(p, n).as_millis()
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let p = policy(Backoff::Exponential);
        let got: Vec<u128> = (1..=6).map(|n| ms(&p, n)).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(ms(&p, 200), 1000, "no overflow on huge attempt counts");
    }

    #[test]
    fn linear_grows_by_the_initial_delay() {
        let p = policy(Backoff::Linear);
        let got: Vec<u128> = (1..=12).map(|n| ms(&p, n)).collect();
        assert_eq!(
            got,
            [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1000, 1000]
        );
    }

    #[test]
    fn fixed_stays() {
        let p = policy(Backoff::Fixed);
        assert!((1..=5).all(|n| ms(&p, n) == 100));
    }
}
