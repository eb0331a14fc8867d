//! Exponential back-off, the one type for every wait that grows: job retries
//! (per pool, from `manager.retry`), the http failure handler's retries and
//! the redis provider's reconnects. Pure math, with the RNG passed in;
//! every step saturates, so no attempt count or duration can overflow.

use rand::{Rng, RngExt};
use std::time::{Duration, Instant};

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

/// A retry back-off as written, e.g. `{ base: 1s, max: 5m, jitter: full }`,
/// in `manager.retry` and in a pool's `retry`. An unset key keeps the value
/// it overrides: a pool's from `manager.retry`, the manager's from
/// [`Backoff::DEFAULT`].
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetry {
    /// Delay cap of the first retry; doubles each attempt. Default: manager.retry.base.
    pub(crate) base: Option<crate::duration::DurationValue>,
    /// Largest delay. Default: manager.retry.max.
    pub(crate) max: Option<crate::duration::DurationValue>,
    /// full (uniform 0..cap), equal (cap/2..cap) or none (exactly cap). Default: manager.retry.jitter.
    pub(crate) jitter: Option<Jitter>,
}

impl From<Backoff> for RawRetry {
    /// The back-off written out, for the defaults `goworker options` shows.
    fn from(b: Backoff) -> RawRetry {
        let text = |d: Duration| {
            Some(crate::duration::DurationValue::Text(
                humantime::format_duration(d).to_string(),
            ))
        };
        RawRetry {
            base: text(b.base),
            max: text(b.max),
            jitter: Some(b.jitter),
        }
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::DEFAULT
    }
}

impl Backoff {
    /// The job retry back-off when the config sets none: 1 s doubling to
    /// 5 min, full jitter. The only place these defaults are written.
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
        jitter: Jitter::Full,
    };

    /// The longest delay ever returned (100 years): any clock can add it
    /// without overflowing, so a huge `max` waits "forever" instead of
    /// panicking.
    pub const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// The cap before jitter for the retry after failed attempt `attempt`
    /// (1-based; 0 counts as 1), at most `max` and [`Backoff::LONGEST`].
    pub fn cap(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(127);
        let factor = 1u128.checked_shl(shift).unwrap_or(u128::MAX);
        let nanos = self.base.as_nanos().saturating_mul(factor);
        let limit = self.max.min(Backoff::LONGEST).as_nanos();
        // Below LONGEST, so it fits in u64 nanoseconds.
        Duration::from_nanos(u64::try_from(nanos.min(limit)).unwrap_or(u64::MAX))
    }

    /// The delay before the retry that follows failed attempt `attempt`.
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let cap = self.cap(attempt);
        // `cap` is at most LONGEST, about 3.2e18 ns: it fits in u64.
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        match self.jitter {
            Jitter::None => cap,
            Jitter::Full => Duration::from_nanos(rng.random_range(0..=nanos)),
            Jitter::Equal => {
                let half = nanos / 2;
                Duration::from_nanos(half + rng.random_range(0..=nanos - half))
            }
        }
    }

    /// A counter of consecutive failures that yields this back-off's
    /// delays in turn (for reconnect loops).
    pub(crate) fn steps(self) -> Steps {
        Steps {
            backoff: self,
            failures: 0,
        }
    }
}

/// Consecutive failures of one operation and the next wait (see
/// [`Backoff::steps`]).
#[derive(Debug, Clone)]
pub(crate) struct Steps {
    backoff: Backoff,
    failures: u32,
}

impl Steps {
    /// Back to the first delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait after one more failure; the next one grows.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures, &mut rand::rng())
    }

    /// Sleeps the next wait, waking early when `stop()` turns true
    /// (checked every 50 ms).
    pub(crate) fn sleep(&mut self, stop: impl Fn() -> bool) {
        let wait = self.next_delay();
        let start = Instant::now();
        while !stop() {
            let Some(left) = wait.checked_sub(start.elapsed()) else {
                break;
            };
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn exact(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            jitter: Jitter::None,
        }
    }

    #[test]
    fn cap_doubles_then_stops_at_max() {
        let b = exact(Duration::from_millis(100), Duration::from_secs(1));
        let caps: Vec<_> = (1..=6).map(|a| b.cap(a).as_millis()).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.cap(500), Duration::from_secs(1));
        // Attempt 0 is treated as the first.
        assert_eq!(b.cap(0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut rng = StdRng::seed_from_u64(7);
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::None] {
            let b = Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(60),
                jitter,
            };
            for attempt in 1..12 {
                let cap = b.cap(attempt);
                for _ in 0..200 {
                    let d = b.delay(attempt, &mut rng);
                    assert!(d <= cap);
                    match jitter {
                        Jitter::Equal => assert!(d >= cap / 2),
                        Jitter::None => assert_eq!(d, cap),
                        Jitter::Full => {}
                    }
                }
            }
        }
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(1);
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(1),
            jitter: Jitter::Full,
        };
        let d: Vec<_> = (0..400).map(|_| b.delay(1, &mut rng)).collect();
        assert!(d.iter().any(|d| *d < Duration::from_millis(250)));
        assert!(d.iter().any(|d| *d > Duration::from_millis(750)));
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let mut rng = StdRng::seed_from_u64(3);
        let huge = Duration::MAX;
        for b in [
            exact(huge, huge),
            exact(Duration::from_secs(1), huge),
            exact(huge, Duration::from_secs(5)),
            Backoff {
                jitter: Jitter::Full,
                ..exact(huge, huge)
            },
            Backoff {
                jitter: Jitter::Equal,
                ..exact(huge, huge)
            },
        ] {
            for attempt in [0, 1, 2, 63, 64, 65, 128, 1000, u32::MAX - 1, u32::MAX] {
                let d = b.delay(attempt, &mut rng);
                assert!(d <= b.max.min(Backoff::LONGEST), "{b:?} {attempt}: {d:?}");
            }
        }
        assert_eq!(
            exact(Duration::from_secs(1), huge).cap(u32::MAX),
            Backoff::LONGEST
        );
        assert_eq!(
            exact(huge, Duration::from_secs(5)).cap(1),
            Duration::from_secs(5)
        );
        // A zero base or max waits nothing.
        assert_eq!(exact(Duration::ZERO, huge).cap(40), Duration::ZERO);
        assert_eq!(exact(huge, Duration::ZERO).cap(40), Duration::ZERO);
    }

    #[test]
    fn steps_double_to_a_cap_and_reset() {
        let mut s = exact(Duration::from_millis(100), Duration::from_secs(5)).steps();
        let d: Vec<_> = (0..8).map(|_| s.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        s.reset();
        assert_eq!(s.next_delay().as_millis(), 100);
    }

    #[test]
    fn steps_never_overflow_the_failure_count() {
        let mut s = exact(Duration::from_millis(1), Duration::from_millis(2)).steps();
        s.failures = u32::MAX;
        assert_eq!(s.next_delay(), Duration::from_millis(2));
        assert_eq!(s.failures, u32::MAX);
    }

    #[test]
    fn sleep_returns_at_once_when_told_to_stop() {
        let mut s = exact(Duration::from_secs(3600), Duration::from_secs(3600)).steps();
        // Would sleep an hour; the stop check ends it on the first look.
        s.sleep(|| true);
    }
}
