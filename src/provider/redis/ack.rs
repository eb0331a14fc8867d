//! Acknowledgements. The manager calls an [`Acker`] on its own thread and
//! must never wait for Redis, so [`RedisAcker`] only sends a command over a
//! channel; the provider's ack thread takes every command waiting, sends
//! them as one `MULTI` pipeline (one round trip for hundreds of acks), and
//! keeps them through a lost connection until Redis is back.
//!
//! Acks go as one [`ACK`] script call per queue and batch: the acked
//! deliveries found at the tail of the processing list, where the oldest
//! jobs are, are cut off with one `LTRIM`; any other is removed with
//! `LREM processing -1 <stamped delivery>`. The stamp (see
//! [`super::stamp`]) makes each removal exact: a pipeline resent after a
//! lost reply removes nothing else. Defer and dead go through [`SETTLE`], which stores the job only
//! if the delivery was still held, so a resent pipeline changes nothing
//! twice.
//!
//! Settlements Redis confirmed are remembered for a while ([`Settled`]):
//! should Redis come back from a restart with a delivery this process has
//! already settled (writes lost with the restart), the fetcher finds it and
//! stores the same outcome again instead of running the job again.

use super::conn::{self, Conn, Fail, Redis};
use super::keys::Keys;
use super::options::Settings;
use super::scripts::{ACK, SETTLE};
use crate::error::Error;
use crate::job::{FailureRecord, Job, Report, time_to_unix};
use crate::provider::{Acker, ProviderContext};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Most commands in one pipeline.
const MAX_BATCH: usize = 2000;
/// How long `finish` keeps trying to deliver acks to an unreachable Redis.
const FLUSH_PATIENCE: Duration = Duration::from_secs(10);

/// Confirmed settlements remembered, at most.
const SETTLED_MAX: usize = 20_000;
/// Bytes of confirmed settlements remembered, at most.
const SETTLED_MAX_BYTES: usize = 32 << 20;

/// What to do with one held delivery.
#[derive(Debug, Clone)]
pub(super) struct AckCmd {
    pub(super) queue: usize,
    /// The delivery's sequence number (its stamp).
    pub(super) seq: u64,
    /// The stamped delivery, exactly as it sits in the processing list.
    pub(super) raw: Vec<u8>,
    pub(super) what: Settle,
}

/// How a delivery ended.
#[derive(Debug, Clone)]
pub(super) enum Settle {
    Ack,
    Defer { job: String, due: f64 },
    Dead { record: String },
}

impl AckCmd {
    fn bytes(&self) -> usize {
        self.raw.len()
            + match &self.what {
                Settle::Ack => 0,
                Settle::Defer { job, .. } => job.len(),
                Settle::Dead { record } => record.len(),
            }
    }
}

/// Settlements Redis confirmed, newest last, bounded in count and bytes.
#[derive(Debug, Default)]
pub(super) struct Settled {
    by_seq: HashMap<u64, AckCmd>,
    order: VecDeque<u64>,
    bytes: usize,
}

/// Shared between the ack thread (which adds) and the fetcher (which looks).
pub(super) type SharedSettled = Arc<Mutex<Settled>>;

impl Settled {
    fn add(&mut self, cmds: impl IntoIterator<Item = AckCmd>) {
        for c in cmds {
            let seq = c.seq;
            self.bytes = self.bytes.saturating_add(c.bytes());
            match self.by_seq.insert(seq, c) {
                Some(old) => self.bytes = self.bytes.saturating_sub(old.bytes()),
                None => self.order.push_back(seq),
            }
            while self.order.len() > SETTLED_MAX || self.bytes > SETTLED_MAX_BYTES {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                if let Some(old) = self.by_seq.remove(&oldest) {
                    self.bytes = self.bytes.saturating_sub(old.bytes());
                }
            }
        }
    }

    /// The settlement of delivery `seq`, if still remembered.
    pub(super) fn get(&self, seq: u64) -> Option<AckCmd> {
        self.by_seq.get(&seq).cloned()
    }
}

/// The acker of one delivery.
#[derive(Debug)]
pub(super) struct RedisAcker {
    pub(super) tx: Sender<AckCmd>,
    pub(super) queue: usize,
    pub(super) seq: u64,
    /// The stamped delivery.
    pub(super) raw: Vec<u8>,
    /// Where the producer's payload starts in `raw`.
    pub(super) payload_at: usize,
}

impl RedisAcker {
    fn send(self, what: Settle) {
        // The channel is unbounded: this never blocks. It only fails once
        // the ack thread is gone, after `finish`; the job then stays in the
        // processing list and is recovered.
        let _ = self.tx.send(AckCmd {
            queue: self.queue,
            seq: self.seq,
            raw: self.raw,
            what,
        });
    }
}

impl Acker for RedisAcker {
    fn ack(self: Box<Self>, _report: &Report) {
        self.send(Settle::Ack);
    }

    fn can_defer(&self) -> bool {
        true
    }

    fn defer(self: Box<Self>, job: &Job, due: SystemTime) {
        let job = job.to_json();
        let due = time_to_unix(due);
        self.send(Settle::Defer { job, due });
    }

    fn dead(self: Box<Self>, record: &FailureRecord, _report: &Report) {
        let mut record = record.clone();
        if record.raw.is_none() && record.attempts == 0 {
            // Rejected before it ran (e.g. no pool for its type): keep the
            // payload exactly as the producer wrote it.
            let payload = self.raw.get(self.payload_at..).unwrap_or_default();
            record.raw = Some(String::from_utf8_lossy(payload).into_owned());
        }
        let record = serde_json::to_string(&record).unwrap_or_default();
        self.send(Settle::Dead { record });
    }

    fn release(self: Box<Self>, _job: Option<&Job>) {
        // Nothing to send: the job stays in the processing list, and
        // `finish` moves every held job back to the front of its queue in
        // one atomic step, in their order. Should the process die first,
        // the orphan sweep recovers them the same way.
    }
}

/// The ack thread and the way to it.
#[derive(Debug)]
pub(super) struct AckThread {
    tx: Sender<AckCmd>,
    settled: SharedSettled,
    closing: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl AckThread {
    pub(super) fn start(
        redis: Redis,
        s: Arc<Settings>,
        keys: Arc<Keys>,
        ctx: ProviderContext,
    ) -> Result<AckThread, Error> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let closing = Arc::new(AtomicBool::new(false));
        let settled = SharedSettled::default();
        let mut w = AckWriter {
            settled: settled.clone(),
            last_trim_log: None,
            redis,
            s,
            keys,
            ctx,
            rx,
            closing: closing.clone(),
            conn: None,
        };
        let handle = std::thread::Builder::new()
            .name(format!("goworker-redis-acks-{}", w.s.name))
            .spawn(move || {
                conn::block_signals();
                w.run()
            })
            .map_err(|e| Error::io("spawn redis ack thread", e))?;
        Ok(AckThread {
            tx,
            settled,
            closing,
            handle,
        })
    }

    pub(super) fn sender(&self) -> Sender<AckCmd> {
        self.tx.clone()
    }

    pub(super) fn settled(&self) -> SharedSettled {
        self.settled.clone()
    }

    /// Delivers what is pending (giving up after a while if Redis stays
    /// unreachable) and stops the thread.
    pub(super) fn finish(self) {
        self.closing.store(true, Ordering::Release);
        drop(self.tx);
        let _ = self.handle.join();
    }
}

struct AckWriter {
    settled: SharedSettled,
    /// When trimmed dead letters were last logged.
    last_trim_log: Option<Instant>,
    redis: Redis,
    s: Arc<Settings>,
    keys: Arc<Keys>,
    ctx: ProviderContext,
    rx: Receiver<AckCmd>,
    closing: Arc<AtomicBool>,
    conn: Option<Conn>,
}

impl AckWriter {
    fn run(&mut self) {
        let mut pending: Vec<AckCmd> = Vec::new();
        let mut backoff = conn::RECONNECT.steps();
        let mut give_up_at: Option<Instant> = None;
        let mut retried = false;
        loop {
            if pending.is_empty() {
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(c) => pending.push(c),
                    Err(RecvTimeoutError::Timeout) if self.closing.load(Ordering::Acquire) => {
                        return;
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while pending.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => pending.push(c),
                    Err(_) => break,
                }
            }
            match self.flush(&pending) {
                Ok(()) => {
                    if let Ok(mut settled) = self.settled.lock() {
                        settled.add(pending.drain(..));
                    }
                    pending.clear();
                    backoff.reset();
                    retried = false;
                    conn::up(&self.ctx);
                }
                Err(e) if conn::quiet_retry(&mut self.conn, &mut retried, &e) => {}
                Err(e) => {
                    conn::down(&self.ctx, &e);
                    if self.closing.load(Ordering::Acquire) {
                        let at = *give_up_at.get_or_insert(Instant::now() + FLUSH_PATIENCE);
                        if Instant::now() >= at {
                            log::error!(
                                "provider {}: {} acknowledgement(s) not delivered ({e}); \
                                 those jobs stay in the processing list and run again \
                                 once recovered",
                                self.s.name,
                                pending.len() + self.rx.len()
                            );
                            return;
                        }
                    }
                    backoff.sleep(|| false);
                }
            }
        }
    }

    fn flush(&mut self, batch: &[AckCmd]) -> Result<(), Fail> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        // Acks: one script call per queue for the whole batch.
        for (i, q) in self.keys.queues.iter().enumerate() {
            let mut acks = batch
                .iter()
                .filter(|c| c.queue == i && matches!(c.what, Settle::Ack))
                .peekable();
            if acks.peek().is_none() {
                continue;
            }
            let cmd = pipe.cmd("EVAL").arg(ACK).arg(1).arg(&q.processing);
            for c in acks {
                cmd.arg(&c.raw);
            }
            cmd.ignore();
        }
        for c in batch {
            self.add(&mut pipe, c);
        }
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self.conn.insert(self.redis.get()?),
        };
        // One reply per defer or dead letter (acks are ignored): -1 when
        // the delivery was no longer held, else dead letters trimmed.
        let replies: Vec<i64> = pipe.query(&mut **conn)?;
        let trimmed = replies
            .iter()
            .filter_map(|&n| u64::try_from(n).ok())
            .fold(0u64, u64::saturating_add);
        if trimmed > 0 {
            self.ctx.add_dead_letters_trimmed(trimmed);
            let now = Instant::now();
            if self
                .last_trim_log
                .is_none_or(|t| now.duration_since(t) >= TRIM_LOG_EVERY)
            {
                self.last_trim_log = Some(now);
                log::warn!(
                    "provider {}: dead letters over dead_letter_max ({}) trimmed, oldest first \
                     ({} so far)",
                    self.s.name,
                    self.s.dead_letter_max,
                    self.ctx.dead_letters_trimmed()
                );
            }
        }
        Ok(())
    }

    fn add(&self, pipe: &mut redis::Pipeline, c: &AckCmd) {
        let q = &self.keys.queues[c.queue];
        let (target, what, value, n) = match &c.what {
            Settle::Ack => return, // see `flush`
            Settle::Defer { job, due } => (&q.delayed, "defer", job, due.to_string()),
            Settle::Dead { record } => {
                (&q.dead, "dead", record, self.s.dead_letter_max.to_string())
            }
        };
        pipe.cmd("EVAL")
            .arg(SETTLE)
            .arg(2)
            .arg(&q.processing)
            .arg(target)
            .arg(&c.raw)
            .arg(what)
            .arg(value)
            .arg(n);
    }
}

/// Trimmed dead letters are logged at most this often.
const TRIM_LOG_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobStatus;

    fn cmd(seq: u64, raw_len: usize, what: Settle) -> AckCmd {
        AckCmd {
            queue: 0,
            seq,
            raw: vec![b'x'; raw_len],
            what,
        }
    }

    #[test]
    fn settled_remembers_the_newest_within_its_count() {
        let mut s = Settled::default();
        s.add((0..SETTLED_MAX as u64 + 10).map(|i| cmd(i, 1, Settle::Ack)));
        assert_eq!(s.order.len(), SETTLED_MAX);
        assert!(s.get(0).is_none() && s.get(9).is_none());
        assert!(s.get(10).is_some() && s.get(SETTLED_MAX as u64 + 9).is_some());
        assert_eq!(s.bytes, SETTLED_MAX);
    }

    #[test]
    fn settled_stays_within_its_bytes_and_counts_a_replaced_entry_once() {
        let mut s = Settled::default();
        let big = SETTLED_MAX_BYTES / 4 + 1;
        s.add((0..5).map(|i| cmd(i, big, Settle::Ack)));
        assert!(s.bytes <= SETTLED_MAX_BYTES, "{}", s.bytes);
        assert!(s.get(0).is_none() && s.get(4).is_some());
        // The same delivery settled again (a resent batch) replaces itself.
        let mut s = Settled::default();
        s.add([cmd(7, 10, Settle::Ack)]);
        let record = "r".repeat(5);
        s.add([cmd(7, 10, Settle::Dead { record })]);
        assert_eq!((s.order.len(), s.bytes), (1, 15));
        assert!(matches!(
            s.get(7).map(|c| c.what),
            Some(Settle::Dead { .. })
        ));
    }

    fn acker(tx: Sender<AckCmd>) -> Box<RedisAcker> {
        // A stamp, then the producer's payload.
        let raw = b"\x1e42\x1e{\"type\":\"nosuch\"}".to_vec();
        Box::new(RedisAcker {
            tx,
            queue: 1,
            seq: 42,
            raw,
            payload_at: 4,
        })
    }

    fn report() -> Report {
        Report {
            id: "j".into(),
            status: JobStatus::Succeeded,
            attempts: 1,
            duration_ms: 0,
            elapsed_ms: 0,
            output: None,
            error: None,
        }
    }

    #[test]
    fn each_settlement_names_its_own_stamped_delivery() {
        let (tx, rx) = crossbeam_channel::unbounded();
        acker(tx.clone()).ack(&report());
        let c = rx.try_recv().unwrap();
        assert_eq!((c.queue, c.seq), (1, 42));
        assert!(c.raw.starts_with(b"\x1e42\x1e"));
        assert!(matches!(c.what, Settle::Ack));

        let job = Job::new("noop", serde_json::json!({}));
        let due = std::time::UNIX_EPOCH + std::time::Duration::from_secs(100);
        acker(tx.clone()).defer(&job, due);
        match rx.try_recv().unwrap().what {
            Settle::Defer { job: j, due } => {
                assert_eq!(due, 100.0);
                assert!(j.contains("\"type\":\"noop\""), "{j}");
            }
            other => panic!("{other:?}"),
        }

        // A delivery rejected before it ran keeps the payload exactly as
        // the producer pushed it, without the stamp.
        let record = FailureRecord::for_job("main", &job, "no pool", None);
        let record = FailureRecord {
            attempts: 0,
            ..record
        };
        acker(tx.clone()).dead(&record, &report());
        match rx.try_recv().unwrap().what {
            Settle::Dead { record } => {
                let r: FailureRecord = serde_json::from_str(&record).unwrap();
                assert_eq!(r.raw.as_deref(), Some("{\"type\":\"nosuch\"}"));
            }
            other => panic!("{other:?}"),
        }

        // Released deliveries stay held: nothing to send.
        acker(tx).release(None);
        assert!(rx.try_recv().is_err());
    }
}
