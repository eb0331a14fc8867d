//! The one place that decides how an attempt ends: pure, with the clock
//! and the RNG passed in, so every rule is unit-tested without threads.

use crate::backoff::Backoff;
use crate::job::{Job, Outcome};
use rand::Rng;
use std::time::{Duration, SystemTime};

/// What the manager does with a job whose attempt came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The attempt succeeded: acknowledge it.
    Succeeded,
    /// The attempt failed and retries are left: run it again after `wait`,
    /// at `at` on the wall clock.
    Retry {
        /// The back-off delay.
        wait: Duration,
        /// `now + wait`.
        at: SystemTime,
    },
    /// The attempt failed for good (final failure or no retries left):
    /// dead-letter it.
    Dead,
    /// The job did not finish: it was handed back un-run (draining), or it
    /// was killed by an abort. Give it back to its source un-finished.
    Release,
}

/// Decides the fate of `job` after the attempt numbered `job.attempts`
/// (1-based) came back with `outcome` (`None`: it was handed back un-run).
///
/// A retryable failure is retried while `job.attempts <= job.retries`, so
/// `retries: 2` allows three attempts and `retries: 0` one. The delay comes
/// from `policy` for that attempt; `aborting` (running jobs are being
/// killed) turns every failure into a release instead.
pub(crate) fn decide<R: Rng + ?Sized>(
    job: &Job,
    outcome: Option<&Outcome>,
    policy: &Backoff,
    aborting: bool,
    now: SystemTime,
    rng: &mut R,
) -> Decision {
    let Some(outcome) = outcome else {
        return Decision::Release;
    };
    let failure = match &outcome.result {
        Ok(()) => return Decision::Succeeded,
        Err(_) if aborting => return Decision::Release,
        Err(failure) => failure,
    };
    if !failure.retryable || job.attempts > job.retries {
        return Decision::Dead;
    }
    let wait = policy.delay(job.attempts, rng);
    // `wait` is at most Backoff::LONGEST, which any clock can add; should
    // `now` itself be near the end of time, retry at once.
    let at = now.checked_add(wait).unwrap_or(now);
    Decision::Retry { wait, at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    fn job(attempts: u32, retries: u32) -> Job {
        let mut j = Job::new("t", serde_json::json!({}));
        j.attempts = attempts;
        j.retries = retries;
        j
    }

    fn policy(base_ms: u64, max_ms: u64, jitter: Jitter) -> Backoff {
        Backoff {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
            jitter,
        }
    }

    fn exact() -> Backoff {
        policy(100, 1000, Jitter::None)
    }

    fn run(job: &Job, outcome: Option<&Outcome>, policy: &Backoff, aborting: bool) -> Decision {
        decide(
            job,
            outcome,
            policy,
            aborting,
            now(),
            &mut StdRng::seed_from_u64(9),
        )
    }

    fn retry_after(ms: u64) -> Decision {
        let wait = Duration::from_millis(ms);
        Decision::Retry {
            wait,
            at: now() + wait,
        }
    }

    #[test]
    fn success_is_acked_whatever_the_attempt_or_state() {
        let ok = Outcome::success();
        for (attempts, retries) in [(1, 0), (3, 2), (7, 0), (u32::MAX, 0)] {
            for aborting in [false, true] {
                assert_eq!(
                    run(&job(attempts, retries), Some(&ok), &exact(), aborting),
                    Decision::Succeeded
                );
            }
        }
    }

    #[test]
    fn a_retryable_failure_retries_while_attempts_are_left() {
        let failed = Outcome::failed("boom");
        // retries: 2 means three attempts: after the 1st and 2nd a retry,
        // after the 3rd the job is dead.
        assert_eq!(
            run(&job(1, 2), Some(&failed), &exact(), false),
            retry_after(100)
        );
        assert_eq!(
            run(&job(2, 2), Some(&failed), &exact(), false),
            retry_after(200)
        );
        assert_eq!(
            run(&job(3, 2), Some(&failed), &exact(), false),
            Decision::Dead
        );
        // More attempts than allowed (a job stored by another version).
        assert_eq!(
            run(&job(9, 2), Some(&failed), &exact(), false),
            Decision::Dead
        );
    }

    #[test]
    fn retries_zero_means_one_attempt() {
        let failed = Outcome::failed("boom");
        assert_eq!(
            run(&job(1, 0), Some(&failed), &exact(), false),
            Decision::Dead
        );
    }

    #[test]
    fn a_final_failure_is_dead_at_once() {
        let fatal = Outcome::fatal("command not allowed");
        assert_eq!(
            run(&job(1, 5), Some(&fatal), &exact(), false),
            Decision::Dead
        );
    }

    #[test]
    fn jobs_not_run_or_killed_by_an_abort_are_released() {
        assert_eq!(run(&job(1, 5), None, &exact(), false), Decision::Release);
        for o in [Outcome::failed("killed"), Outcome::fatal("killed")] {
            assert_eq!(run(&job(1, 5), Some(&o), &exact(), true), Decision::Release);
        }
    }

    #[test]
    fn retry_delays_follow_the_pools_policy_and_jitter_bounds() {
        let failed = Outcome::failed("boom");
        let mut rng = StdRng::seed_from_u64(42);
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::None] {
            let p = policy(100, 1000, jitter);
            for attempts in 1..=8u32 {
                let cap = p.cap(attempts);
                for _ in 0..100 {
                    let j = job(attempts, 10);
                    let Decision::Retry { wait, at } =
                        decide(&j, Some(&failed), &p, false, now(), &mut rng)
                    else {
                        panic!("no retry");
                    };
                    assert_eq!(at, now() + wait);
                    assert!(wait <= cap, "{jitter:?} {attempts}: {wait:?} > {cap:?}");
                    match jitter {
                        Jitter::Full => {}
                        Jitter::Equal => assert!(wait >= cap / 2),
                        Jitter::None => assert_eq!(wait, cap),
                    }
                }
            }
        }
    }

    #[test]
    fn huge_policies_and_attempt_counts_saturate_without_panicking() {
        let failed = Outcome::failed("boom");
        let huge = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
            jitter: Jitter::None,
        };
        let d = run(&job(1, u32::MAX), Some(&failed), &huge, false);
        assert_eq!(d, retry_after(Backoff::LONGEST.as_millis() as u64));
        // The last attempt a u32 can count still gets a bounded delay.
        let d = run(&job(u32::MAX, u32::MAX), Some(&failed), &exact(), false);
        assert_eq!(d, retry_after(1000));
        for jitter in [Jitter::Full, Jitter::Equal] {
            let p = Backoff { jitter, ..huge };
            let Decision::Retry { wait, .. } =
                run(&job(u32::MAX - 1, u32::MAX), Some(&failed), &p, false)
            else {
                panic!("no retry");
            };
            assert!(wait <= Backoff::LONGEST);
        }
    }

    #[test]
    fn a_clock_at_the_end_of_time_retries_at_once() {
        let failed = Outcome::failed("boom");
        // The latest time the platform can represent, found by halving.
        let mut end = SystemTime::UNIX_EPOCH;
        let mut step = Duration::from_secs(u64::MAX / 2);
        while step > Duration::from_secs(1) {
            if let Some(t) = end.checked_add(step) {
                end = t;
            } else {
                step /= 2;
            }
        }
        let p = policy(60_000, 60_000, Jitter::None);
        let d = decide(&job(1, 1), Some(&failed), &p, false, end, &mut rand::rng());
        assert_eq!(
            d,
            Decision::Retry {
                wait: Duration::from_secs(60),
                at: end
            }
        );
    }
}
