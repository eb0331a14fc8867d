//! Retry back-off: pure math, with the clock and the RNG passed in.

use rand::{Rng, RngExt};
use std::time::Duration;

/// How random a retry delay is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in `[0, cap]` (AWS "full jitter"): spreads a thundering
    /// herd best. The default.
    Full,
    /// Uniform in `[cap/2, cap]`: still spread, but never shorter than half.
    Equal,
    /// Exactly `cap`: deterministic, for tests and debugging.
    None,
}

/// Exponential back-off: `base * 2^(attempt-1)` capped at `max`, then jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay cap of the first retry. Default 1 s.
    pub base: Duration,
    /// Largest delay. Default 5 min.
    pub max: Duration,
    /// Randomisation. Default [`Jitter::Full`].
    pub jitter: Jitter,
}

/// A back-off as written in a pool's `retry:`; unset keys come from
/// `manager.retry`.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetryOverride {
    /// Delay cap of the first retry. Default: manager.retry.base.
    pub(crate) base: Option<crate::duration::Written>,
    /// Largest delay. Default: manager.retry.max.
    pub(crate) max: Option<crate::duration::Written>,
    /// full, equal or none. Default: manager.retry.jitter.
    pub(crate) jitter: Option<Jitter>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The cap before jitter for the retry after failed attempt `attempt` (1-based).
    pub fn cap(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(63);
        let factor = 1u64 << shift;
        let nanos = (self.base.as_nanos()).saturating_mul(factor as u128);
        Duration::from_nanos(nanos.min(self.max.as_nanos()).min(u64::MAX as u128) as u64)
    }

    /// The delay before the retry that follows failed attempt `attempt`.
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let cap = self.cap(attempt);
        let nanos = cap.as_nanos() as u64;
        match self.jitter {
            Jitter::None => cap,
            Jitter::Full => Duration::from_nanos(rng.random_range(0..=nanos)),
            Jitter::Equal => {
                Duration::from_nanos(nanos / 2 + rng.random_range(0..=nanos - nanos / 2))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_doubles_then_stops_at_max() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: Jitter::None,
        };
        let caps: Vec<_> = (1..=6).map(|a| b.cap(a).as_millis()).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.cap(500), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut rng = rand::rng();
        for jitter in [Jitter::Full, Jitter::Equal] {
            let b = Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(60),
                jitter,
            };
            for attempt in 1..8 {
                let cap = b.cap(attempt);
                for _ in 0..200 {
                    let d = b.delay(attempt, &mut rng);
                    assert!(d <= cap);
                    if jitter == Jitter::Equal {
                        assert!(d >= cap / 2);
                    }
                }
            }
        }
    }
}
