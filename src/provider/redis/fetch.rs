//! The fetch loop, on the provider's thread. Reliable fetch: every job is
//! moved atomically from its queue into this consumer's processing list
//! before it is handed on, so a crash at any moment leaves it in Redis.
//!
//! When a queue is deep one round trip moves up to `fetch_batch` jobs (the
//! `FETCH` script), never more than the delivery channel has room for, so
//! the provider holds no more un-started jobs than the back-pressure allows.
//! When every queue is empty it blocks in `BLMOVE` on the first queue; with
//! several queues that wait is short and grows to 1 s while idle, so lower
//! queues are still looked at without busy-polling an idle Redis.

use super::ack::{AckCmd, Held, RedisAcker};
use super::conn::{self, Conn, Redis};
use super::keys::Keys;
use super::options::Settings;
use super::scripts::{FETCH, HEARTBEAT};
use crate::job::Job;
use crate::provider::{Delivery, ProviderContext};
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) struct Fetcher {
    redis: Redis,
    s: Arc<Settings>,
    keys: Arc<Keys>,
    acks: Sender<AckCmd>,
    held: Held,
    /// A fetch failed: its reply may have been lost after Redis ran it.
    suspect: bool,
    conn: Option<Conn>,
    limiter: Option<RateLimiter>,
    idle_wait: f64,
    policy_checked: bool,
}

impl Fetcher {
    pub(super) fn new(
        redis: Redis,
        s: Arc<Settings>,
        keys: Arc<Keys>,
        acks: Sender<AckCmd>,
        held: Held,
    ) -> Fetcher {
        let limiter = (s.rate_limit > 0.0).then(|| RateLimiter::new(s.rate_limit, Instant::now()));
        Fetcher {
            redis,
            s,
            keys,
            acks,
            held,
            suspect: false,
            conn: None,
            limiter,
            idle_wait: IDLE_MIN,
            policy_checked: false,
        }
    }

    pub(super) fn run(mut self, ctx: &ProviderContext) {
        let mut backoff = conn::RECONNECT.steps();
        let mut retried = false;
        while !ctx.is_stopping() {
            match self.round(ctx) {
                Ok(()) => {
                    backoff.reset();
                    retried = false;
                }
                Err(_) if conn::quiet_retry(&mut self.conn, &mut retried) => self.suspect = true,
                Err(e) => {
                    self.suspect = true;
                    conn::down(ctx, &e);
                    backoff.sleep(|| ctx.is_stopping());
                }
            }
        }
    }

    /// A connection; a fresh one first records this consumer's heartbeat,
    /// so that no other process takes its processing list for an orphan.
    fn conn(&mut self, ctx: &ProviderContext) -> Result<&mut Conn, String> {
        if self.conn.is_none() {
            let mut c = self.redis.get()?;
            let mut hb = HEARTBEAT.prepare_invoke();
            for q in &self.keys.queues {
                hb.key(&q.consumers);
            }
            hb.arg(&self.keys.consumer)
                .invoke::<()>(&mut *c)
                .map_err(|e| e.to_string())?;
            if !self.policy_checked {
                self.policy_checked = true;
                check_eviction_policy(&mut c, &self.s.name);
            }
            conn::up(ctx);
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    /// One fetch: a batch if any queue has jobs, else one blocking wait.
    fn round(&mut self, ctx: &ProviderContext) -> Result<(), String> {
        let want = self.want(ctx);
        if want == 0 {
            return Ok(());
        }
        let keys = self.keys.clone();
        let multi = keys.queues.len() > 1;
        let idle_wait = self.idle_wait;
        if self.suspect {
            self.reclaim(ctx)?;
        }
        let conn = self.conn(ctx)?;
        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, q) in keys.queues.iter().enumerate() {
            let n = want - got.len();
            if n == 0 {
                break;
            }
            let items: Vec<Vec<u8>> = if n == 1 {
                redis::cmd("LMOVE")
                    .arg(&q.queue)
                    .arg(&q.processing)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .query::<Option<Vec<u8>>>(&mut **conn)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .collect()
            } else {
                FETCH
                    .key(&q.queue)
                    .key(&q.processing)
                    .arg(n)
                    .invoke(&mut **conn)
                    .map_err(|e| e.to_string())?
            };
            got.extend(items.into_iter().map(|raw| (i, raw)));
        }
        if got.is_empty() {
            let q = &keys.queues[0];
            let timeout = if multi { idle_wait } else { 1.0 };
            let one: Option<Vec<u8>> = redis::cmd("BLMOVE")
                .arg(&q.queue)
                .arg(&q.processing)
                .arg("RIGHT")
                .arg("LEFT")
                .arg(timeout)
                .query(&mut **conn)
                .map_err(|e| e.to_string())?;
            match one {
                Some(raw) => got.push((0, raw)),
                None => self.idle_wait = (idle_wait * 2.0).min(IDLE_MAX),
            }
        }
        for (queue, _) in &got {
            self.held[*queue].fetch_add(1, Ordering::AcqRel);
        }
        if !got.is_empty() {
            self.idle_wait = IDLE_MIN;
            if let Some(l) = &mut self.limiter {
                l.take(got.len());
            }
        }
        self.deliver(ctx, got);
        Ok(())
    }

    /// After a failed fetch: jobs Redis moved into the processing list whose
    /// reply never arrived are the newest ones beyond the count this process
    /// knows it holds; deliver them now rather than leave them stranded
    /// until shutdown. (Acks stored but not yet counted down can only make
    /// this find fewer, never a job that is already running.)
    fn reclaim(&mut self, ctx: &ProviderContext) -> Result<(), String> {
        let keys = self.keys.clone();
        let held = self.held.clone();
        let name = self.s.name.clone();
        let conn = self.conn(ctx)?;
        let mut got = Vec::new();
        for (i, q) in keys.queues.iter().enumerate() {
            let len: usize = redis::cmd("LLEN")
                .arg(&q.processing)
                .query(&mut **conn)
                .map_err(|e| e.to_string())?;
            let extra = len.saturating_sub(held[i].load(Ordering::Acquire));
            if extra == 0 {
                continue;
            }
            let newest: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&q.processing)
                .arg(0)
                .arg(extra - 1)
                .query(&mut **conn)
                .map_err(|e| e.to_string())?;
            log::warn!(
                "provider {name}: {} job(s) fetched from {} before the connection broke are delivered now",
                newest.len(),
                q.queue
            );
            // Newest first in the list: deliver oldest first.
            got.extend(newest.into_iter().rev().map(|raw| (i, raw)));
        }
        self.suspect = false;
        for (queue, _) in &got {
            held[*queue].fetch_add(1, Ordering::AcqRel);
        }
        self.deliver(ctx, got);
        Ok(())
    }

    /// How many jobs to take now: room in the channel, the batch size and
    /// the rate limit. 0 after waiting for the rate limit.
    fn want(&mut self, ctx: &ProviderContext) -> usize {
        if let Some(rate) = ctx.rate_limit() {
            let current = self.limiter.as_ref().map_or(0.0, |l| l.rate);
            if rate != current {
                log::info!(
                    "provider {}: rate_limit now {rate} job(s)/s (0 = unlimited)",
                    ctx.name()
                );
                self.limiter = (rate > 0.0).then(|| RateLimiter::new(rate, Instant::now()));
            }
        }
        let (queued, capacity) = ctx.fill();
        let room = if capacity == 0 {
            self.s.fetch_batch
        } else {
            capacity.saturating_sub(queued).max(1)
        };
        let mut want = room.min(self.s.fetch_batch);
        if let Some(l) = &mut self.limiter {
            let now = Instant::now();
            let tokens = l.available(now);
            if tokens == 0 {
                std::thread::sleep(l.wait(now).min(Duration::from_millis(100)));
                return 0;
            }
            want = want.min(tokens);
        }
        want
    }

    /// Hands each job to the manager.
    fn deliver(&self, ctx: &ProviderContext, got: Vec<(usize, Vec<u8>)>) {
        for (queue, raw) in got {
            let payload = Job::parse(&raw);
            let acker = RedisAcker {
                tx: self.acks.clone(),
                queue,
                raw,
            };
            if let Err(d) = ctx.send(Delivery::new(payload, Box::new(acker))) {
                // Shutting down: this job and the rest of the batch stay in
                // the processing list, which `finish` hands back in order.
                d.release();
                return;
            }
        }
    }
}

const IDLE_MIN: f64 = 0.05;
const IDLE_MAX: f64 = 1.0;

/// Warns when Redis may evict keys: an evicted list is lost jobs.
fn check_eviction_policy(c: &mut Conn, name: &str) {
    let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(&mut **c);
    match reply {
        Ok(v) => match v.get(1) {
            Some(p) if p != "noeviction" => log::warn!(
                "provider {name}: redis maxmemory-policy is {p}, not noeviction: \
                 under memory pressure redis may evict queues and lose jobs"
            ),
            _ => {}
        },
        Err(e) => log::debug!("provider {name}: cannot read maxmemory-policy: {e}"),
    }
}

/// A token bucket: `rate` jobs per second, bursts of a tenth of a second.
#[derive(Debug)]
pub(super) struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub(super) fn new(rate: f64, now: Instant) -> RateLimiter {
        let burst = (rate / 10.0).max(1.0);
        RateLimiter {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Whole jobs that may be taken now.
    pub(super) fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0.0).floor() as usize
    }

    /// How long until one job may be taken.
    pub(super) fn wait(&self, _now: Instant) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        // A tiny configured rate makes this too long for a Duration.
        Duration::try_from_secs_f64(missing / self.rate).unwrap_or(Duration::MAX)
    }

    /// Uses `n` tokens.
    pub(super) fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_paces() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(100.0, t0);
        assert_eq!(l.available(t0), 10);
        l.take(10);
        assert_eq!(l.available(t0), 0);
        assert_eq!(l.wait(t0), Duration::from_millis(10));
        assert_eq!(l.available(t0 + Duration::from_millis(50)), 5);
        assert_eq!(l.available(t0 + Duration::from_secs(10)), 10);
    }

    #[test]
    fn a_tiny_rate_waits_long_without_panicking() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1e-30, t0);
        l.take(1);
        assert_eq!(l.wait(t0), Duration::MAX);
    }
}
