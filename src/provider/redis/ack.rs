//! Acknowledgements. The manager calls an [`Acker`] on its own thread and
//! must never wait for Redis, so [`RedisAcker`] only sends a command over a
//! channel; the provider's ack thread takes every command waiting, sends
//! them as one `MULTI` pipeline (one round trip for hundreds of acks), and
//! keeps them through a lost connection until Redis is back.
//!
//! An ack is `LREM processing -1 payload`: the search starts at the tail,
//! where the oldest jobs are, so its cost does not grow with the list.
//! Defer and dead go through [`SETTLE`], which stores the job
//! only if it was still held, so a retried pipeline changes nothing twice.

use super::conn::{self, Conn, Redis};
use super::keys::Keys;
use super::options::Settings;
use super::scripts::SETTLE;
use crate::error::Error;
use crate::job::{FailureRecord, Job, Report, time_to_unix};
use crate::provider::{Acker, ProviderContext};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Most commands in one pipeline.
const MAX_BATCH: usize = 2000;
/// How long `finish` keeps trying to deliver acks to an unreachable Redis.
const FLUSH_PATIENCE: Duration = Duration::from_secs(10);

/// What to do with one held job.
#[derive(Debug)]
pub(super) enum AckCmd {
    Ack {
        queue: usize,
        raw: Vec<u8>,
    },
    Defer {
        queue: usize,
        raw: Vec<u8>,
        job: String,
        due: f64,
    },
    Dead {
        queue: usize,
        raw: Vec<u8>,
        record: String,
    },
}

/// The acker of one delivery: the payload exactly as it sits in the
/// processing list, and which queue it came from.
#[derive(Debug)]
pub(super) struct RedisAcker {
    pub(super) tx: Sender<AckCmd>,
    pub(super) queue: usize,
    pub(super) raw: Vec<u8>,
}

impl RedisAcker {
    fn send(self, cmd: impl FnOnce(usize, Vec<u8>) -> AckCmd) {
        // The channel is unbounded: this never blocks. It only fails once
        // the ack thread is gone, after `finish`; the job then stays in the
        // processing list and is recovered.
        let _ = self.tx.send(cmd(self.queue, self.raw));
    }
}

impl Acker for RedisAcker {
    fn ack(self: Box<Self>, _report: &Report) {
        self.send(|queue, raw| AckCmd::Ack { queue, raw });
    }

    fn can_defer(&self) -> bool {
        true
    }

    fn defer(self: Box<Self>, job: &Job, due: SystemTime) {
        let job = job.to_json();
        let due = time_to_unix(due);
        self.send(|queue, raw| AckCmd::Defer {
            queue,
            raw,
            job,
            due,
        });
    }

    fn dead(self: Box<Self>, record: &FailureRecord, _report: &Report) {
        let mut record = record.clone();
        if record.raw.is_none() && record.attempts == 0 {
            // Rejected before it ran (e.g. no pool for its type): keep the
            // payload exactly as the producer wrote it.
            record.raw = Some(String::from_utf8_lossy(&self.raw).into_owned());
        }
        let record = serde_json::to_string(&record).unwrap_or_default();
        self.send(|queue, raw| AckCmd::Dead { queue, raw, record });
    }

    fn release(self: Box<Self>, _job: Option<&Job>) {
        // Nothing to send: the job stays in the processing list, and
        // `finish` moves every held job back to the front of its queue in
        // one atomic step, in their order. Should the process die first,
        // the orphan sweep recovers them the same way.
    }
}

/// Jobs per queue this process holds in its processing list as far as it
/// knows: counted up by the fetcher when it takes jobs, down by the ack
/// thread once their settlement is stored. A fetch whose reply was lost
/// (connection broken after Redis ran it) shows as the processing list
/// being longer than this; see `Fetcher::reclaim`.
pub(super) type Held = Arc<Vec<AtomicUsize>>;

/// The ack thread and the way to it.
#[derive(Debug)]
pub(super) struct AckThread {
    tx: Sender<AckCmd>,
    held: Held,
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
        let held: Held = Arc::new(keys.queues.iter().map(|_| AtomicUsize::new(0)).collect());
        let mut w = AckWriter {
            held: held.clone(),
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
            .spawn(move || w.run())
            .map_err(|e| Error::io("spawn redis ack thread", e))?;
        Ok(AckThread {
            tx,
            held,
            closing,
            handle,
        })
    }

    pub(super) fn sender(&self) -> Sender<AckCmd> {
        self.tx.clone()
    }

    pub(super) fn held(&self) -> Held {
        self.held.clone()
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
    held: Held,
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
                    for c in &pending {
                        self.held[self.queue_of(c)].fetch_sub(1, Ordering::AcqRel);
                    }
                    pending.clear();
                    backoff.reset();
                    retried = false;
                    conn::up(&self.ctx);
                }
                Err(_) if conn::quiet_retry(&mut self.conn, &mut retried) => {}
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

    fn flush(&mut self, batch: &[AckCmd]) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for c in batch {
            self.add(&mut pipe, c);
        }
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self.conn.insert(self.redis.get()?),
        };
        pipe.query::<()>(&mut **conn).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn add(&self, pipe: &mut redis::Pipeline, c: &AckCmd) {
        let q = &self.keys.queues[self.queue_of(c)];
        let (raw, target, what, value, n) = match c {
            AckCmd::Ack { raw, .. } => {
                pipe.cmd("LREM")
                    .arg(&q.processing)
                    .arg(-1)
                    .arg(raw)
                    .ignore();
                return;
            }
            AckCmd::Defer { raw, job, due, .. } => (raw, &q.delayed, "defer", job, due.to_string()),
            AckCmd::Dead { raw, record, .. } => (
                raw,
                &q.dead,
                "dead",
                record,
                self.s.dead_letter_max.to_string(),
            ),
        };
        pipe.cmd("EVAL")
            .arg(SETTLE)
            .arg(2)
            .arg(&q.processing)
            .arg(target)
            .arg(raw)
            .arg(what)
            .arg(value)
            .arg(n)
            .ignore();
    }

    fn queue_of(&self, c: &AckCmd) -> usize {
        match c {
            AckCmd::Ack { queue, .. }
            | AckCmd::Defer { queue, .. }
            | AckCmd::Dead { queue, .. } => *queue,
        }
    }
}
