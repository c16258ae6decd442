//! The reconnect policy both sides follow after losing the broker: exponential backoff from 0.5 s,
//! doubling to a cap of 30 s, with up to 25 % random jitter so that a town's gateways, cut off by the
//! same outage, do not all reconnect in the same instant.

use std::time::Duration;

/// First delay, in milliseconds.
pub const INITIAL_MS: u64 = 500;
/// Largest delay before jitter, in milliseconds.
pub const CAP_MS: u64 = 30_000;

/// Delay before attempt number `failures` (1 = after the first failure). `jitter` in `0.0..1.0`
/// is supplied by the caller (a random number), which keeps this function pure.
pub fn delay(failures: u32, jitter: f64) -> Duration {
    let base = (INITIAL_MS << failures.saturating_sub(1).min(6)).min(CAP_MS);
    let extra = (base as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(base + extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        assert_eq!(delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(delay(2, 0.0), Duration::from_millis(1000));
        assert_eq!(delay(1, 1.0), Duration::from_millis(625));
        assert_eq!(delay(30, 0.0), Duration::from_secs(30));
        assert_eq!(delay(30, 1.0), Duration::from_millis(37_500));
    }
}
