//! The fetch loop, on the provider's thread. Reliable fetch: every job is
//! moved atomically from its queue into this consumer's processing list,
//! stamped with a delivery id, before it is handed on, so a crash at any
//! moment leaves it in Redis.
//!
//! When a queue is deep one round trip moves up to `fetch_batch` jobs and
//! `fetch_max_bytes` bytes (the `FETCH` script), never more than the
//! delivery channel has room for, so the provider holds no more un-started
//! jobs than the back-pressure allows. When every queue is empty it waits
//! with `BLMOVE Q Q RIGHT RIGHT` on the first queue, which moves nothing
//! (the job stays at the end it was pushed to) and returns as soon as a job
//! arrives; the next round fetches it. With several queues that wait is
//! short and grows to 1 s while idle, so lower queues are still looked at
//! without busy-polling an idle Redis.
//!
//! Deliveries are numbered, counting up per process; each fetch reserves
//! its range of numbers before it is sent. When a fetch fails (its
//! reply may have been lost after Redis ran it), the next round first reads
//! the processing list back and hands on exactly the deliveries of the
//! failed ranges: the ones already handed on are never delivered twice.

use super::ack::{AckCmd, RedisAcker, SharedSettled};
use super::conn::{self, Conn, Fail, Redis};
use super::keys::Keys;
use super::options::Settings;
use super::scripts::{FETCH, HEARTBEAT};
use super::stamp;
use crate::job::Job;
use crate::provider::{Delivery, ProviderContext};
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delivery numbers stay below this, so that Lua (whose numbers are
/// doubles printed with 14 significant digits) writes them exactly; past
/// it (a hundred trillion deliveries of one process) they start again
/// from 1.
const SEQ_LIMIT: u64 = 100_000_000_000_000;
/// Most deliveries read back from a processing list after a failed fetch.
const RECLAIM_SCAN: usize = 100_000;

pub(super) struct Fetcher {
    redis: Redis,
    s: Arc<Settings>,
    keys: Arc<Keys>,
    acks: Sender<AckCmd>,
    settled: SharedSettled,
    conn: Option<Conn>,
    limiter: Option<RateLimiter>,
    idle_wait: f64,
    server_checked: bool,
    /// The tag of this process's delivery ids.
    tag: String,
    /// The last delivery number reserved.
    seq: u64,
    /// Ranges `(queue, first, last)` of delivery numbers reserved by
    /// fetches whose deliveries were not handed on: the reply was lost, or
    /// a later step of the round failed.
    unsettled: Vec<(usize, u64, u64)>,
    /// A round failed: read the processing lists back before the next.
    recheck: bool,
}

impl Fetcher {
    pub(super) fn new(
        redis: Redis,
        s: Arc<Settings>,
        keys: Arc<Keys>,
        acks: Sender<AckCmd>,
        settled: SharedSettled,
    ) -> Fetcher {
        let limiter = (s.rate_limit > 0.0).then(|| RateLimiter::new(s.rate_limit, Instant::now()));
        let tag = keys.tag.clone();
        Fetcher {
            redis,
            s,
            keys,
            acks,
            settled,
            conn: None,
            limiter,
            idle_wait: IDLE_MIN,
            server_checked: false,
            tag,
            seq: 0,
            unsettled: Vec::new(),
            recheck: false,
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
                Err(e) if conn::quiet_retry(&mut self.conn, &mut retried, &e) => {
                    self.recheck = true;
                }
                Err(e) => {
                    self.recheck = true;
                    conn::down(ctx, &e);
                    backoff.sleep(|| ctx.is_stopping());
                }
            }
        }
    }

    /// Makes sure there is a connection; a fresh one first records this
    /// consumer's heartbeat, so that no other process takes its processing
    /// list for an orphan.
    fn connect(&mut self, ctx: &ProviderContext) -> Result<(), Fail> {
        if self.conn.is_none() {
            let mut c = self.redis.get()?;
            let mut hb = HEARTBEAT.prepare_invoke();
            for q in &self.keys.queues {
                hb.key(&q.consumers);
            }
            hb.arg(&self.keys.consumer).invoke::<()>(&mut *c)?;
            if !self.server_checked {
                self.server_checked = true;
                check_server(&mut c, &self.s.name);
            }
            conn::up(ctx);
            self.conn = Some(c);
        }
        Ok(())
    }

    /// Reserves `n` delivery numbers; returns the one before the first.
    fn reserve(&mut self, n: usize) -> u64 {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        if self.seq.saturating_add(n) >= SEQ_LIMIT {
            // Deliveries that old are long settled.
            self.seq = 0;
            if let Ok(mut s) = self.settled.lock() {
                *s = Default::default();
            }
        }
        let base = self.seq;
        self.seq += n;
        base
    }

    /// One fetch: a batch if any queue has jobs, else one blocking wait.
    fn round(&mut self, ctx: &ProviderContext) -> Result<(), Fail> {
        let want = self.want(ctx);
        if want == 0 {
            return Ok(());
        }
        if self.recheck || !self.unsettled.is_empty() {
            self.reclaim(ctx)?;
        }
        self.connect(ctx)?;
        let keys = self.keys.clone();
        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, q) in keys.queues.iter().enumerate() {
            let n = want - got.len();
            if n == 0 {
                break;
            }
            let base = self.reserve(n);
            self.unsettled.push((i, base + 1, base + n as u64));
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| Fail::other("no connection"))?;
            let items: Vec<Vec<u8>> = FETCH
                .key(&q.queue)
                .key(&q.processing)
                .arg(n)
                .arg(base)
                .arg(self.s.fetch_max_bytes)
                .invoke(&mut **conn)?;
            got.extend(items.into_iter().map(|raw| (i, raw)));
        }
        // Every fetch answered: what they took is in `got`.
        self.unsettled.clear();
        if got.is_empty() {
            let q = &keys.queues[0];
            let timeout = if keys.queues.len() > 1 {
                self.idle_wait
            } else {
                1.0
            };
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| Fail::other("no connection"))?;
            let arrived: Option<Vec<u8>> = redis::cmd("BLMOVE")
                .arg(&q.queue)
                .arg(&q.queue)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(timeout)
                .query(&mut **conn)?;
            self.idle_wait = match arrived {
                Some(_) => IDLE_MIN,
                None => (self.idle_wait * 2.0).min(IDLE_MAX),
            };
            return Ok(());
        }
        self.idle_wait = IDLE_MIN;
        if let Some(l) = &mut self.limiter {
            l.take(got.len());
        }
        self.deliver(ctx, got);
        Ok(())
    }

    /// After a failed round (the connection broke, Redis restarted): reads the processing lists back and hands on
    /// the deliveries of the failed fetches (Redis may have run them and
    /// lost only the reply), oldest first. A delivery this process already
    /// settled that is held again (Redis lost the settlement in a restart)
    /// gets the same settlement again; it is not run again. Anything else
    /// there is running or waiting for its ack, and is left alone.
    fn reclaim(&mut self, ctx: &ProviderContext) -> Result<(), Fail> {
        self.connect(ctx)?;
        let keys = self.keys.clone();
        let mut got = Vec::new();
        let mut again = Vec::new();
        for (i, q) in keys.queues.iter().enumerate() {
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| Fail::other("no connection"))?;
            let held: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&q.processing)
                .arg(0)
                .arg(RECLAIM_SCAN - 1)
                .query(&mut **conn)?;
            let mut found = 0;
            // Newest first in the list: hand on oldest first.
            for raw in held.into_iter().rev() {
                let Some(seq) = stamp::stamped(&raw).map(|d| d.seq) else {
                    continue;
                };
                if self
                    .unsettled
                    .iter()
                    .any(|&(qi, lo, hi)| qi == i && (lo..=hi).contains(&seq))
                {
                    found += 1;
                    got.push((i, raw));
                } else if let Some(cmd) = self.settled.lock().ok().and_then(|s| s.get(seq)) {
                    again.push(cmd);
                }
            }
            if found > 0 {
                log::warn!(
                    "provider {}: {found} job(s) fetched from {} before the connection broke are delivered now",
                    self.s.name,
                    q.queue
                );
            }
        }
        self.unsettled.clear();
        self.recheck = false;
        if !again.is_empty() {
            log::warn!(
                "provider {}: redis holds {} settled job(s) again (writes lost in a restart?); \
                 their outcome is stored again, they do not run again",
                self.s.name,
                again.len()
            );
            for cmd in again {
                let _ = self.acks.send(cmd);
            }
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

    /// Hands each job to the manager. A job without an `id` takes the id
    /// it was given at its first fetch (carried with it since), or else
    /// this delivery's id.
    fn deliver(&self, ctx: &ProviderContext, got: Vec<(usize, Vec<u8>)>) {
        for (queue, raw) in got {
            let Some(d) = stamp::stamped(&raw) else {
                continue; // not from the fetch script: cannot happen
            };
            let seq = d.seq;
            let payload_at = raw.len().saturating_sub(d.entry.payload.len());
            let id = || match d.entry.origin {
                Some(origin) => origin.to_string(),
                None => stamp::delivery_id(&self.tag, seq),
            };
            let job = Job::parse_or(d.entry.payload, id);
            let acker = RedisAcker {
                tx: self.acks.clone(),
                queue,
                seq,
                raw,
                payload_at,
            };
            if let Err(d) = ctx.send(Delivery::new(job, Box::new(acker))) {
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

/// One setting of the server (`CONFIG GET`), or `None` when it cannot be
/// read (managed services often refuse `CONFIG`).
fn config_get(c: &mut Conn, name: &str, key: &str) -> Option<String> {
    let reply: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg(key).query(&mut **c);
    match reply {
        Ok(v) => v.into_iter().nth(1),
        Err(e) => {
            log::debug!("provider {name}: cannot read {key}: {e}");
            None
        }
    }
}

/// Warns about a server that can lose jobs: one that may evict keys (an
/// evicted list is lost jobs) or keeps nothing on disk (every job in it
/// vanishes when it restarts).
fn check_server(c: &mut Conn, name: &str) {
    if let Some(p) = config_get(c, name, "maxmemory-policy").filter(|p| p != "noeviction") {
        log::warn!(
            "provider {name}: redis maxmemory-policy is {p}, not noeviction: \
             under memory pressure redis may evict queues and lose jobs"
        );
    }
    let aof = config_get(c, name, "appendonly");
    let save = config_get(c, name, "save");
    if let (Some(aof), Some(save)) = (aof, save) {
        if aof == "no" && save.trim().is_empty() {
            log::warn!(
                "provider {name}: redis has neither AOF (appendonly no) nor RDB snapshots \
                 (save \"\"): every job in it vanishes when it restarts"
            );
        }
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
