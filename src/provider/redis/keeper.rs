//! Upkeep on its own thread: this consumer's heartbeat, the periodic orphan
//! sweep and the scheduler that promotes due delayed jobs.
//!
//! Each tick (every 100 ms) does a bounded amount of work: the heartbeat
//! when it is due, one batch of due delayed jobs per queue, and the sweep
//! when it is due, so a deep delayed set never holds the heartbeat back.
//!
//! The sweep runs every `orphan_after / 2` under a short lock per queue, so
//! that one process at a time does it. It finds silent consumers in
//! `Q:consumers` (never by scanning the keyspace) and recovers each one's
//! processing list atomically with [`RECOVER`]. A consumer is judged only
//! on time this process has seen Redis up: the sweep waits until this
//! thread has been connected for `orphan_after` without a break, so after
//! an outage (Redis restarted, network down) every healthy peer has had
//! that long to record its heartbeat again before anyone is judged.

use super::conn::{self, Conn, Fail, Redis};
use super::keys::{Keys, QueueKeys};
use super::options::Settings;
use super::scripts::{HEARTBEAT, PROMOTE, RECOVER, RETURN_ALL, STALE, UNLOCK};
use crate::error::Error;
use crate::job::{FailureRecord, unix_now};
use crate::provider::ProviderContext;
use crossbeam_channel::{RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Due jobs promoted per queue and tick.
const PROMOTE_BATCH: usize = 1000;
/// How often due delayed jobs are looked for.
const SCHEDULER_TICK: Duration = Duration::from_millis(100);
/// The sweep lock expires by itself after this, should its holder die.
const SWEEP_LOCK: Duration = Duration::from_secs(10);
/// Silent consumers recovered per queue and sweep.
const SWEEP_BATCH: usize = 100;

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
            up_since: None,
            next_heartbeat: Instant::now(),
            next_sweep: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("goworker-redis-upkeep-{}", s.name))
            .spawn(move || {
                conn::block_signals();
                let mut retried = false;
                loop {
                    let mut wait = SCHEDULER_TICK;
                    match up.tick(Instant::now()) {
                        Ok(busy) => {
                            retried = false;
                            if busy {
                                wait = Duration::ZERO;
                            }
                        }
                        Err(e) => {
                            up.up_since = None;
                            if !conn::quiet_retry(&mut up.conn, &mut retried, &e) {
                                conn::down(&ctx, &e);
                            } else {
                                continue;
                            }
                        }
                    }
                    match stop_rx.recv_timeout(wait) {
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
    /// Since when this thread has reached Redis without a failure.
    up_since: Option<Instant>,
    next_heartbeat: Instant,
    next_sweep: Instant,
}

impl Upkeep {
    /// One bounded tick; true when due delayed jobs are left for the next.
    fn tick(&mut self, now: Instant) -> Result<bool, Fail> {
        let keys = self.keys.clone();
        let s = self.s.clone();
        if self.conn.is_none() {
            self.conn = Some(self.redis.get()?);
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Fail::other("no connection"))?;
        let up_since = *self.up_since.get_or_insert(now);
        if now >= self.next_heartbeat || now == up_since {
            let mut hb = HEARTBEAT.prepare_invoke();
            for q in &keys.queues {
                hb.key(&q.consumers);
            }
            hb.arg(&keys.consumer).invoke::<()>(&mut **conn)?;
            self.next_heartbeat = now + s.heartbeat;
            // Queue depth for /stats: pending plus delayed, every queue.
            let mut depth = redis::pipe();
            for q in &keys.queues {
                depth.llen(&q.queue).zcard(&q.delayed);
            }
            let counts: Vec<u64> = depth.query(&mut **conn)?;
            let by_queue: Vec<(String, u64)> = keys
                .queues
                .iter()
                .zip(counts.chunks(2))
                .map(|(q, c)| {
                    (
                        q.queue.clone(),
                        c.iter().fold(0u64, |a, &b| a.saturating_add(b)),
                    )
                })
                .collect();
            self.ctx.set_queue_depths(&by_queue);
        }
        let mut busy = false;
        for q in &keys.queues {
            busy |= promote(conn, q)? >= PROMOTE_BATCH;
        }
        // Judge others only on time this thread has seen Redis up.
        if now >= self.next_sweep && now.duration_since(up_since) >= s.orphan_after {
            for q in &keys.queues {
                sweep(conn, q, &keys.consumer, &s, &self.ctx)?;
            }
            self.next_sweep = now + (s.orphan_after / 2).max(Duration::from_millis(500));
        }
        Ok(busy)
    }
}

/// Moves one batch of due jobs of `Q:delayed` to `Q`; returns how many.
fn promote(conn: &mut Conn, q: &QueueKeys) -> Result<usize, Fail> {
    let n: usize = PROMOTE
        .key(&q.delayed)
        .key(&q.queue)
        .arg(unix_now())
        .arg(PROMOTE_BATCH)
        .invoke(&mut **conn)?;
    if n > 0 {
        log::debug!("{}: {n} delayed job(s) due", q.queue);
    }
    Ok(n)
}

/// What [`RECOVER`] did with one consumer's processing list.
#[derive(Debug, PartialEq)]
pub(super) struct Recovered {
    /// The consumer was alive: nothing was done.
    pub(super) alive: bool,
    /// Jobs put back in the queue.
    pub(super) requeued: u64,
    /// Old dead letters trimmed to make room.
    pub(super) trimmed: u64,
    /// Poison pills' dead-letter records, as stored.
    pub(super) records: Vec<Vec<u8>>,
}

/// Reads the reply of [`RECOVER`]: `{recovered, trimmed, record...}`, or
/// `{-1, 0}` for a live consumer.
pub(super) fn decode_recovered(v: &redis::Value) -> Result<Recovered, String> {
    use redis::Value;
    let Value::Array(items) = v else {
        return Err(format!("recover: not an array: {v:?}"));
    };
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(n)) => Ok(*n),
        other => Err(format!("recover: item {i} not a number: {other:?}")),
    };
    let (first, trimmed) = (int(0)?, int(1)?);
    let mut records = Vec::new();
    for item in items.iter().skip(2) {
        match item {
            Value::BulkString(b) => records.push(b.clone()),
            other => return Err(format!("recover: record not a string: {other:?}")),
        }
    }
    Ok(Recovered {
        alive: first < 0,
        requeued: u64::try_from(first).unwrap_or(0),
        trimmed: u64::try_from(trimmed).unwrap_or(0),
        records,
    })
}

/// A poison pill's record as the script stored it, for the failure
/// handlers; the raw text is kept when it does not read as a record.
pub(super) fn decode_record(raw: &[u8], provider: &str) -> FailureRecord {
    serde_json::from_slice(raw).unwrap_or_else(|e| {
        let unreadable = crate::job::Malformed {
            raw: String::from_utf8_lossy(raw).into_owned(),
            reason: format!("poison pill (record unreadable: {e})"),
        };
        FailureRecord::malformed(provider, &unreadable)
    })
}

/// Recovers the processing lists of silent consumers of one queue.
fn sweep(
    conn: &mut Conn,
    q: &QueueKeys,
    me: &str,
    s: &Settings,
    ctx: &ProviderContext,
) -> Result<(), Fail> {
    let locked: Option<String> = redis::cmd("SET")
        .arg(&q.sweep_lock)
        .arg(me)
        .arg("NX")
        .arg("PX")
        .arg(u64::try_from(SWEEP_LOCK.as_millis()).unwrap_or(u64::MAX))
        .query(&mut **conn)?;
    if locked.is_none() {
        return Ok(());
    }
    let orphan_secs = s.orphan_after.as_secs_f64();
    let result = (|| -> Result<(), Fail> {
        let silent: Vec<String> = STALE
            .key(&q.consumers)
            .arg(orphan_secs)
            .arg(SWEEP_BATCH)
            .invoke(&mut **conn)?;
        for consumer in silent {
            if consumer == me {
                continue;
            }
            let reply: redis::Value = RECOVER
                .key(format!("{}{consumer}", q.processing_prefix))
                .key(&q.queue)
                .key(&q.consumers)
                .key(&q.dead)
                .arg(&consumer)
                .arg(orphan_secs)
                .arg(s.max_recoveries)
                .arg(&s.name)
                .arg(s.dead_letter_max)
                .invoke(&mut **conn)?;
            let r = decode_recovered(&reply).map_err(Fail::other)?;
            if r.requeued > 0 {
                log::warn!(
                    "{}: consumer {consumer} is silent: {} job(s) it held are back in the queue",
                    q.queue,
                    r.requeued
                );
            }
            if !r.records.is_empty() {
                log::warn!(
                    "{}: {} job(s) held by dead consumer {consumer} dead-lettered as poison pills \
                     (recovered more than {} times)",
                    q.queue,
                    r.records.len(),
                    s.max_recoveries
                );
            }
            if r.trimmed > 0 {
                ctx.add_dead_letters_trimmed(r.trimmed);
                log::warn!(
                    "{}: {} old dead letter(s) trimmed (dead_letter_max {})",
                    q.queue,
                    r.trimmed,
                    s.dead_letter_max
                );
            }
            for raw in &r.records {
                ctx.report_failure(decode_record(raw, &s.name));
            }
        }
        Ok(())
    })();
    let unlocked = UNLOCK
        .key(&q.sweep_lock)
        .arg(me)
        .invoke::<()>(&mut **conn)
        .map_err(Fail::from);
    result.and(unlocked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redis::Value;

    #[test]
    fn recover_replies() {
        let alive = Value::Array(vec![Value::Int(-1), Value::Int(0)]);
        assert!(decode_recovered(&alive).unwrap().alive);
        let rec = br#"{"id":"x","raw":"{}","error":"poison pill","attempts":0,"failed_at":1.5}"#;
        let v = Value::Array(vec![
            Value::Int(2),
            Value::Int(1),
            Value::BulkString(rec.to_vec()),
        ]);
        let r = decode_recovered(&v).unwrap();
        assert_eq!((r.alive, r.requeued, r.trimmed), (false, 2, 1));
        let f = decode_record(&r.records[0], "main");
        assert_eq!(f.id.as_deref(), Some("x"));
        assert!(decode_recovered(&Value::Nil).is_err());
        let bad = decode_record(b"\xff not json", "main");
        assert!(bad.raw.is_some() && bad.provider == "main");
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::BulkString),
            ".{0,20}".prop_map(Value::SimpleString),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Value::Array)
        })
    }

    proptest! {
        #[test]
        fn decoding_replies_and_records_never_panics(v in value(),
                raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_recovered(&v);
            let _ = decode_record(&raw, "p");
        }
    }
}
