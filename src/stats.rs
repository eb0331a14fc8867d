//! Statistics kept by the manager thread without locks, and the snapshot
//! it publishes for the stats server, sd_notify and library users.

use crate::manager::Decision;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the Prometheus duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    300.0,
];

/// Job counters of one type or one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Jobs received: new jobs, each once (a retry or a recovered job
    /// coming back from its source is counted in `redelivered`).
    pub received: u64,
    /// Deliveries of jobs that had been attempted before: retries stored
    /// by their provider coming due, jobs recovered after a crash.
    pub redelivered: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs that failed for good (dead-lettered).
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Jobs handed back un-finished at shutdown.
    pub released: u64,
}

impl Counters {
    /// Jobs finished: succeeded + failed.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// Attempt durations of one job type.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    /// Exact counts per Prometheus bucket (last = +Inf).
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Durations in microseconds, for quantiles within 1% (HDR histogram,
    /// two significant digits; made at the first record).
    hdr: Option<hdrhistogram::Histogram<u64>>,
    count: u64,
    sum: f64,
}

/// Longest duration the quantiles tell apart (µs): an hour. Longer ones
/// count as an hour there (the Prometheus buckets and the sum are exact).
const HDR_MAX_MICROS: u64 = 3_600_000_000;

impl Histogram {
    pub(crate) fn record(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        if self.hdr.is_none() {
            self.hdr = hdrhistogram::Histogram::new_with_bounds(1, HDR_MAX_MICROS, 2).ok();
        }
        if let Some(h) = &mut self.hdr {
            let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            h.saturating_record(micros.clamp(1, HDR_MAX_MICROS));
        }
        self.count += 1;
        self.sum += secs;
    }

    /// The `q` quantile in seconds, within 1% of an attempt's real
    /// duration (the highest value that shares its 1%-wide slot).
    fn quantile(&self, q: f64) -> f64 {
        match &self.hdr {
            Some(h) if self.count > 0 => h.value_at_quantile(q) as f64 / 1e6,
            _ => 0.0,
        }
    }

    fn snapshot(&self) -> DurationStats {
        let mut cumulative = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(self.buckets.iter())
            .map(|(le, n)| {
                cumulative += n;
                (*le, cumulative)
            })
            .collect();
        DurationStats {
            count: self.count,
            sum_secs: self.sum,
            p50_ms: self.quantile(0.5) * 1e3,
            p90_ms: self.quantile(0.9) * 1e3,
            p99_ms: self.quantile(0.99) * 1e3,
            buckets,
        }
    }
}

/// Duration summary of one job type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DurationStats {
    /// Attempts measured.
    pub count: u64,
    /// Their total duration in seconds.
    pub sum_secs: f64,
    /// Median attempt duration (ms, within 1%).
    pub p50_ms: f64,
    /// 90th percentile (ms).
    pub p90_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Cumulative Prometheus buckets: (upper bound in seconds, count).
    pub buckets: Vec<(f64, u64)>,
}

/// Stats of one job type (= worker pool).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeStats {
    /// Counters.
    #[serde(flatten)]
    pub counters: Counters,
    /// Jobs finished per second over the last few seconds.
    pub jobs_per_sec: f64,
    /// Attempt durations.
    pub duration: DurationStats,
    /// Pool threads.
    pub threads: usize,
    /// Attempts running now.
    pub in_flight: usize,
}

/// Stats of one provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProviderStats {
    /// Counters.
    #[serde(flatten)]
    pub counters: Counters,
    /// Jobs finished per second over the last few seconds.
    pub jobs_per_sec: f64,
    /// Payloads that were not jobs, or named a type with no pool.
    pub rejected: u64,
    /// Whether its source is reachable.
    pub up: bool,
    /// Why it is down.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Jobs waiting at its source (pending and delayed), when it reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// Jobs waiting by queue, for providers with several (redis).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, u64>,
    /// Dead letters its store dropped, oldest first, to stay within its
    /// bound (the redis provider's `dead_letter_max`).
    #[serde(skip_serializing_if = "is_zero")]
    pub dead_letters_trimmed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counters of the jobs of one type that came from one provider (the
/// breakdown behind `goworker_jobs_total{type,provider,outcome}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairStats {
    /// The job type (pool name).
    #[serde(rename = "type")]
    pub job_type: String,
    /// The provider's name.
    pub provider: String,
    /// Only `succeeded`, `failed` and `retried` are counted here.
    #[serde(flatten)]
    pub counters: Counters,
}

/// The delivery channel's fill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChannelFill {
    /// Deliveries waiting.
    pub len: usize,
    /// Its bound.
    pub capacity: usize,
}

/// Everything the manager knows, as of `taken`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Seconds since the service started.
    pub uptime_secs: f64,
    /// Attempts running or queued for a pool thread.
    pub in_flight: usize,
    /// Jobs waiting in the manager's retry timer heap.
    pub delayed: usize,
    /// Whether shutdown has begun.
    pub stopping: bool,
    /// The delivery channel.
    pub channel: ChannelFill,
    /// By pool (= job type). Named `types` in the JSON, as before.
    #[serde(rename = "types")]
    pub pools: BTreeMap<String, TypeStats>,
    /// By provider.
    pub providers: BTreeMap<String, ProviderStats>,
    /// Totals over all types.
    pub totals: Counters,
    /// All jobs finished per second over the last few seconds.
    pub jobs_per_sec: f64,
    /// Outcomes by (type, provider), for pairs that have seen a job.
    pub by_type_and_provider: Vec<PairStats>,
    /// Payloads rejected unrun (not a job, or a type with no pool), over
    /// all providers. `totals` cover jobs that reached a pool; a
    /// provider's counters also count its rejected payloads as received
    /// and failed, so the providers add up to `totals` plus these.
    pub rejected: u64,
    /// Failure records that skipped the failure handlers (their queue was
    /// full, or the shutdown deadline passed); their dead-letter records
    /// are stored all the same.
    pub failure_handlers_skipped: u64,
}

/// Where the manager publishes snapshots; cheap to clone and read.
#[derive(Debug, Clone, Default)]
pub struct StatsReader {
    latest: Arc<Mutex<Arc<Snapshot>>>,
    /// Counted by the failure-handler queue, off the manager thread.
    failure_handlers_skipped: Arc<AtomicU64>,
}

impl StatsReader {
    /// The latest snapshot (at most one publish interval old).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.latest.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The counter behind [`Snapshot::failure_handlers_skipped`].
    pub(crate) fn failure_handlers_skipped(&self) -> Arc<AtomicU64> {
        self.failure_handlers_skipped.clone()
    }

    pub(crate) fn publish(&self, mut s: Snapshot) {
        s.failure_handlers_skipped = self.failure_handlers_skipped.load(Ordering::Relaxed);
        if let Ok(mut l) = self.latest.lock() {
            *l = Arc::new(s);
        }
    }
}

/// The manager's own, lock-free counters. The manager reports each event
/// with one call (`on_received`, `on_started`, `on_settled`,
/// `on_released`); the snapshot turns them into [`Snapshot`]s.
#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    types: Vec<Counters>,
    durations: Vec<Histogram>,
    in_flight: Vec<usize>,
    providers: Vec<Counters>,
    rejected: Vec<u64>,
    /// Outcomes by (pool, provider).
    /// Indexed `pool * providers + provider`: no hashing on the hot path.
    pairs: Vec<Counters>,
    provider_count: usize,
    /// (when, finished per type, finished per provider) for rates.
    history: VecDeque<(Instant, Vec<u64>, Vec<u64>)>,
}

impl Stats {
    pub(crate) fn new(pools: usize, providers: usize) -> Stats {
        Stats {
            started: Instant::now(),
            types: vec![Counters::default(); pools],
            durations: vec![Histogram::default(); pools],
            in_flight: vec![0; pools],
            providers: vec![Counters::default(); providers],
            rejected: vec![0; providers],
            pairs: vec![Counters::default(); pools * providers],
            provider_count: providers,
            history: VecDeque::new(),
        }
    }

    /// A delivery from `provider` was taken while running: routed to
    /// `pool`, or (`None`) rejected and dead-lettered unrun because it was
    /// no job or named a type with no pool.
    /// `again`: the job had been attempted before (a stored retry coming
    /// due, a recovered job), counted as `redelivered`, not `received`.
    #[inline]
    pub(crate) fn on_received(&mut self, provider: usize, pool: Option<usize>, again: bool) {
        let field: fn(&mut Counters) -> &mut u64 = match again {
            false => |c| &mut c.received,
            true => |c| &mut c.redelivered,
        };
        *field(&mut self.providers[provider]) += 1;
        match pool {
            Some(pool) => {
                *field(&mut self.types[pool]) += 1;
                *field(&mut self.pairs[pool * self.provider_count + provider]) += 1;
            }
            None => {
                self.providers[provider].failed += 1;
                self.rejected[provider] += 1;
            }
        }
    }

    /// An attempt of a job of `pool` from `provider` was handed to the pool.
    #[inline]
    pub(crate) fn on_started(&mut self, pool: usize, provider: usize) {
        self.in_flight[pool] += 1;
        self.types[pool].attempts += 1;
        self.providers[provider].attempts += 1;
        self.pairs[pool * self.provider_count + provider].attempts += 1;
    }

    /// An attempt came back from `pool` and the manager decided: `ran` is
    /// how long it ran, `None` when it was handed back un-run.
    #[inline]
    pub(crate) fn on_settled(
        &mut self,
        pool: usize,
        provider: usize,
        decision: &Decision,
        ran: Option<Duration>,
    ) {
        self.in_flight[pool] = self.in_flight[pool].saturating_sub(1);
        if let Some(d) = ran {
            self.durations[pool].record(d);
        }
        let field: fn(&mut Counters) -> &mut u64 = match decision {
            Decision::Succeeded => |c| &mut c.succeeded,
            Decision::Retry { .. } => |c| &mut c.retried,
            Decision::Dead => |c| &mut c.failed,
            Decision::Release => {
                self.types[pool].released += 1;
                self.pairs[pool * self.provider_count + provider].released += 1;
                return self.on_released(provider, None);
            }
        };
        *field(&mut self.types[pool]) += 1;
        *field(&mut self.providers[provider]) += 1;
        *field(&mut self.pairs[pool * self.provider_count + provider]) += 1;
    }

    /// A job from `provider` was handed back un-finished; `pool` when it
    /// was counted in flight there (queued, never run).
    pub(crate) fn on_released(&mut self, provider: usize, pool: Option<usize>) {
        if let Some(pool) = pool {
            self.in_flight[pool] = self.in_flight[pool].saturating_sub(1);
            self.types[pool].released += 1;
            self.pairs[pool * self.provider_count + provider].released += 1;
        }
        self.providers[provider].released += 1;
    }

    pub(crate) fn snapshot(
        &mut self,
        names: &SnapshotNames<'_>,
        delayed: usize,
        stopping: bool,
        channel: ChannelFill,
    ) -> Snapshot {
        let now = Instant::now();
        let type_done: Vec<u64> = self.types.iter().map(Counters::finished).collect();
        let prov_done: Vec<u64> = self.providers.iter().map(Counters::finished).collect();
        self.history
            .push_back((now, type_done.clone(), prov_done.clone()));
        while self.history.len() > 2
            && now.duration_since(self.history[0].0) > Duration::from_secs(5)
        {
            self.history.pop_front();
        }
        let (t0, old_types, old_provs) = &self.history[0];
        let dt = now.duration_since(*t0).as_secs_f64();
        let rate = |new: u64, old: u64| {
            if dt > 0.0 {
                (new - old) as f64 / dt
            } else {
                0.0
            }
        };
        let mut s = Snapshot {
            uptime_secs: now.duration_since(self.started).as_secs_f64(),
            in_flight: self.in_flight.iter().sum(),
            delayed,
            stopping,
            channel,
            ..Snapshot::default()
        };
        for (i, (name, threads)) in names.pools.iter().enumerate() {
            let c = self.types[i];
            add(&mut s.totals, &c);
            s.jobs_per_sec += rate(type_done[i], old_types.get(i).copied().unwrap_or(0));
            s.pools.insert(
                name.to_string(),
                TypeStats {
                    counters: c,
                    jobs_per_sec: rate(type_done[i], old_types.get(i).copied().unwrap_or(0)),
                    duration: self.durations[i].snapshot(),
                    threads: *threads,
                    in_flight: self.in_flight[i],
                },
            );
        }
        for (i, h) in names.providers.iter().enumerate() {
            s.providers.insert(
                h.name().to_string(),
                ProviderStats {
                    counters: self.providers[i],
                    jobs_per_sec: rate(prov_done[i], old_provs.get(i).copied().unwrap_or(0)),
                    rejected: self.rejected[i],
                    up: h.is_up(),
                    reason: h.reason(),
                    queue_depth: h.queue_depth(),
                    queues: h.queue_depths().into_iter().collect(),
                    dead_letters_trimmed: h.dead_letters_trimmed(),
                },
            );
        }
        s.by_type_and_provider = self.pair_stats(names);
        s.rejected = self.rejected.iter().sum();
        s
    }

    /// The (type, provider) pairs that have seen a job.
    fn pair_stats(&self, names: &SnapshotNames<'_>) -> Vec<PairStats> {
        let mut out = Vec::new();
        for (i, c) in self.pairs.iter().enumerate() {
            let (pool, provider) = (i / self.provider_count, i % self.provider_count);
            let (Some((kind, _)), Some(h)) = (names.pools.get(pool), names.providers.get(provider))
            else {
                continue;
            };
            if *c == Counters::default() {
                continue; // only pairs that have seen a job
            }
            out.push(PairStats {
                job_type: kind.to_string(),
                provider: h.name().to_string(),
                counters: *c,
            });
        }
        out
    }
}

fn add(total: &mut Counters, c: &Counters) {
    total.received += c.received;
    total.redelivered += c.redelivered;
    total.attempts += c.attempts;
    total.succeeded += c.succeeded;
    total.failed += c.failed;
    total.retried += c.retried;
    total.released += c.released;
}

/// Names the snapshot needs: pools (name, threads) and provider health.
pub(crate) struct SnapshotNames<'a> {
    pub(crate) pools: Vec<(&'a str, usize)>,
    pub(crate) providers: &'a [Arc<crate::provider::Health>],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_buckets() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert!((45.0..=60.0).contains(&s.p50_ms), "{}", s.p50_ms);
        assert!((88.0..=108.0).contains(&s.p90_ms), "{}", s.p90_ms);
        assert!((97.0..=120.0).contains(&s.p99_ms), "{}", s.p99_ms);
        let le_10ms = s.buckets.iter().find(|(le, _)| *le == 0.01).unwrap().1;
        assert_eq!(le_10ms, 10);
        assert_eq!(s.buckets.last().unwrap().1, 100);
    }

    #[test]
    fn quantiles_are_within_one_percent_of_what_was_measured() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(6390));
        let s = h.snapshot();
        // Not a bucket's upper bound (6.89 ms before): 6.39 ms, within 1%.
        for q in [s.p50_ms, s.p90_ms, s.p99_ms] {
            assert!((6.39..=6.39 * 1.01).contains(&q), "{q}");
        }
        // Nonsense durations neither panic nor poison the quantiles.
        h.record(Duration::MAX);
        h.record(Duration::ZERO);
        assert_eq!(h.snapshot().count, 3);
    }

    #[test]
    fn one_call_per_event_keeps_every_breakdown() {
        use crate::provider::Health;
        use std::time::SystemTime;
        let mut st = Stats::new(2, 2);
        // Pool 1, provider 0: one success, one retry then a dead letter.
        st.on_received(0, Some(1), false);
        st.on_started(1, 0);
        st.on_settled(1, 0, &Decision::Succeeded, Some(Duration::from_millis(3)));
        st.on_received(0, Some(1), false);
        st.on_started(1, 0);
        let retry = Decision::Retry {
            wait: Duration::from_secs(1),
            at: SystemTime::UNIX_EPOCH,
        };
        st.on_settled(1, 0, &retry, Some(Duration::from_millis(5)));
        // The retry comes back from its provider: redelivered, not received.
        st.on_received(0, Some(1), true);
        st.on_started(1, 0);
        st.on_settled(1, 0, &Decision::Dead, Some(Duration::from_millis(5)));
        // Provider 1: a rejected payload, a job handed back unrun, one
        // queued and released at shutdown.
        st.on_received(1, None, false);
        st.on_received(1, Some(0), false);
        st.on_started(0, 1);
        st.on_settled(0, 1, &Decision::Release, None);
        st.on_received(1, Some(0), false);
        st.on_started(0, 1);
        st.on_released(1, Some(0));

        let healths = [Arc::new(Health::new("a")), Arc::new(Health::new("b"))];
        let names = SnapshotNames {
            pools: vec![("x", 1), ("y", 1)],
            providers: &healths,
        };
        let s = st.snapshot(&names, 0, false, ChannelFill::default());
        let y = &s.pools["y"];
        let c = |received, attempts, succeeded, failed, retried, released| Counters {
            received,
            redelivered: 0,
            attempts,
            succeeded,
            failed,
            retried,
            released,
        };
        let again = |c: Counters| Counters {
            redelivered: 1,
            ..c
        };
        assert_eq!(y.counters, again(c(2, 3, 1, 1, 1, 0)));
        assert_eq!((y.duration.count, y.in_flight), (3, 0));
        assert_eq!(s.pools["x"].counters, c(2, 2, 0, 0, 0, 2));
        assert_eq!(s.pools["x"].duration.count, 0);
        assert_eq!(s.providers["a"].counters, again(c(2, 3, 1, 1, 1, 0)));
        assert_eq!(s.providers["b"].counters, c(3, 2, 0, 1, 0, 2));
        assert_eq!(s.providers["b"].rejected, 1);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.totals, again(c(4, 5, 1, 1, 1, 2)));
        // Providers add up to the totals plus the rejected payloads.
        assert_eq!(s.rejected, 1);
        let received: u64 = s.providers.values().map(|p| p.counters.received).sum();
        assert_eq!(received, s.totals.received + s.rejected);
        // Every pair that has seen a job, with every counter.
        assert_eq!(s.by_type_and_provider.len(), 2);
        let pair = |t: &str, p: &str| {
            s.by_type_and_provider
                .iter()
                .find(|x| x.job_type == t && x.provider == p)
                .map(|x| x.counters)
        };
        assert_eq!(pair("y", "a"), Some(again(c(2, 3, 1, 1, 1, 0))));
        assert_eq!(pair("x", "b"), Some(c(2, 2, 0, 0, 0, 2)));
    }
}
