//! Upkeep on its own thread: this consumer's heartbeat, the periodic orphan
//! sweep and the scheduler that promotes due delayed jobs.
//!
//! The sweep runs at start and every `orphan_after / 2`, not only at
//! start-up, so a rolling deploy never strands jobs. It runs under a short
//! lock per queue, so that one process at a time does it; it finds
//! processing lists with `SCAN` (never `KEYS`, which blocks Redis) and
//! recovers each dead consumer's list atomically with [`RECOVER`].

use super::conn::{self, Conn, Redis};
use super::keys::{Keys, QueueKeys};
use super::options::Settings;
use super::scripts::{HEARTBEAT, PROMOTE, PRUNE, RECOVER, RETURN_ALL, UNLOCK};
use crate::error::Error;
use crate::job::unix_now;
use crate::provider::ProviderContext;
use crossbeam_channel::{RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Due jobs promoted per script call.
const PROMOTE_BATCH: usize = 1000;
/// How often due delayed jobs are looked for.
const SCHEDULER_TICK: Duration = Duration::from_millis(100);
/// The sweep lock expires by itself after this, should its holder die.
const SWEEP_LOCK: Duration = Duration::from_secs(10);

/// The upkeep thread; stopped by [`Keeper::finish`].
#[derive(Debug)]
pub(super) struct Keeper {
    stop: Sender<()>,
    handle: JoinHandle<()>,
    redis: Redis,
    keys: Arc<Keys>,
    name: String,
}

impl Keeper {
    pub(super) fn start(
        redis: Redis,
        s: Arc<Settings>,
        keys: Arc<Keys>,
        ctx: ProviderContext,
    ) -> Result<Keeper, Error> {
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let mut up = Upkeep {
            redis: redis.clone(),
            s: s.clone(),
            keys: keys.clone(),
            conn: None,
            ctx: ctx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("goworker-redis-upkeep-{}", s.name))
            .spawn(move || {
                let mut next_heartbeat = Instant::now();
                let mut next_sweep = Instant::now();
                let mut retried = false;
                loop {
                    let now = Instant::now();
                    match up.tick(now, &mut next_heartbeat, &mut next_sweep) {
                        Ok(()) => retried = false,
                        Err(_) if conn::quiet_retry(&mut up.conn, &mut retried) => continue,
                        Err(e) => conn::down(&ctx, &e),
                    }
                    match stop_rx.recv_timeout(SCHEDULER_TICK) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .map_err(|e| Error::io("spawn redis upkeep thread", e))?;
        Ok(Keeper {
            stop,
            handle,
            redis,
            keys,
            name: s.name.clone(),
        })
    }

    /// Stops heartbeats and hands back anything still in this consumer's
    /// processing lists (normally nothing: every job was settled).
    pub(super) fn finish(self) {
        drop(self.stop);
        let _ = self.handle.join();
        let mut conn = match self.redis.get() {
            Ok(c) => c,
            Err(e) => {
                log::warn!(
                    "provider {}: redis unreachable at shutdown ({e}); jobs still held are \
                     recovered by another process after orphan_after",
                    self.name
                );
                return;
            }
        };
        for q in &self.keys.queues {
            let moved: Result<usize, _> = RETURN_ALL
                .key(&q.processing)
                .key(&q.queue)
                .key(&q.consumers)
                .arg(&self.keys.consumer)
                .invoke(&mut *conn);
            match moved {
                Ok(0) => {}
                Ok(n) => log::info!(
                    "provider {}: {n} held job(s) handed back to {}",
                    self.name,
                    q.queue
                ),
                Err(e) => log::warn!("provider {}: {}: {e}", self.name, q.queue),
            }
        }
    }
}

struct Upkeep {
    redis: Redis,
    s: Arc<Settings>,
    keys: Arc<Keys>,
    conn: Option<Conn>,
    ctx: ProviderContext,
}

impl Upkeep {
    fn tick(
        &mut self,
        now: Instant,
        next_heartbeat: &mut Instant,
        next_sweep: &mut Instant,
    ) -> Result<(), String> {
        let keys = self.keys.clone();
        let s = self.s.clone();
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self.conn.insert(self.redis.get()?),
        };
        if now >= *next_heartbeat {
            let mut hb = HEARTBEAT.prepare_invoke();
            for q in &keys.queues {
                hb.key(&q.consumers);
            }
            hb.arg(&keys.consumer)
                .invoke::<()>(&mut **conn)
                .map_err(|e| e.to_string())?;
            *next_heartbeat = now + s.heartbeat;
            // Queue depth for /stats: pending plus delayed, every queue.
            let mut depth = redis::pipe();
            for q in &keys.queues {
                depth.llen(&q.queue).zcard(&q.delayed);
            }
            let counts: Vec<u64> = depth.query(&mut **conn).map_err(|e| e.to_string())?;
            self.ctx.set_queue_depth(counts.iter().sum());
        }
        for q in &keys.queues {
            promote(conn, q)?;
        }
        if now >= *next_sweep {
            for q in &keys.queues {
                sweep(conn, q, &keys.consumer, &s)?;
            }
            *next_sweep = now + (s.orphan_after / 2).max(Duration::from_millis(500));
        }
        Ok(())
    }
}

/// Moves every due job of `Q:delayed` to `Q`, in batches.
fn promote(conn: &mut Conn, q: &QueueKeys) -> Result<(), String> {
    loop {
        let n: usize = PROMOTE
            .key(&q.delayed)
            .key(&q.queue)
            .arg(unix_now())
            .arg(PROMOTE_BATCH)
            .invoke(&mut **conn)
            .map_err(|e| e.to_string())?;
        if n > 0 {
            log::debug!("{}: {n} delayed job(s) due", q.queue);
        }
        if n < PROMOTE_BATCH {
            return Ok(());
        }
    }
}

/// Recovers the processing lists of dead consumers of one queue.
fn sweep(conn: &mut Conn, q: &QueueKeys, me: &str, s: &Settings) -> Result<(), String> {
    let err = |e: redis::RedisError| e.to_string();
    let locked: Option<String> = redis::cmd("SET")
        .arg(&q.sweep_lock)
        .arg(me)
        .arg("NX")
        .arg("PX")
        .arg(SWEEP_LOCK.as_millis() as u64)
        .query(&mut **conn)
        .map_err(err)?;
    if locked.is_none() {
        return Ok(());
    }
    let orphan_secs = s.orphan_after.as_secs_f64();
    let result = (|| {
        let mut cursor: u64 = 0;
        loop {
            let (next, lists): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&q.processing_pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut **conn)
                .map_err(err)?;
            for list in lists {
                let Some(consumer) = list.strip_prefix(&q.processing_prefix) else {
                    continue;
                };
                if consumer == me {
                    continue;
                }
                let (recovered, dead): (i64, i64) = RECOVER
                    .key(&list)
                    .key(&q.queue)
                    .key(&q.consumers)
                    .key(&q.dead)
                    .key(&q.recoveries)
                    .arg(consumer)
                    .arg(orphan_secs)
                    .arg(s.max_recoveries)
                    .arg(&s.name)
                    .arg(s.dead_letter_max)
                    .invoke(&mut **conn)
                    .map_err(err)?;
                if recovered > 0 {
                    log::warn!(
                        "{}: consumer {consumer} is silent: {recovered} job(s) it held are back in the queue",
                        q.queue
                    );
                }
                if dead > 0 {
                    log::warn!(
                        "{}: {dead} job(s) held by dead consumer {consumer} dead-lettered as poison pills \
                         (recovered more than {} times)",
                        q.queue,
                        s.max_recoveries
                    );
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        PRUNE
            .key(&q.consumers)
            .arg(orphan_secs)
            .invoke::<()>(&mut **conn)
            .map_err(err)
    })();
    let unlocked = UNLOCK
        .key(&q.sweep_lock)
        .arg(me)
        .invoke::<()>(&mut **conn)
        .map_err(err);
    result.and(unlocked)
}
