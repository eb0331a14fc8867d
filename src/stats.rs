//! Statistics kept by the manager thread without locks, and the snapshot
//! it publishes for the stats server, sd_notify and library users.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
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
    /// Jobs received (each delivery once; retries are not counted again).
    pub received: u64,
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
    /// Fine log-scale counts (4 per doubling from 1 µs) for quantiles.
    fine: Vec<u64>,
    count: u64,
    sum: f64,
}

const FINE_BUCKETS: usize = 4 * 36;

impl Histogram {
    pub(crate) fn record(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        if self.fine.is_empty() {
            self.fine = vec![0; FINE_BUCKETS + 1];
        }
        let micros = (d.as_nanos() as f64 / 1000.0).max(1.0);
        let f = ((micros.log2() * 4.0).ceil() as usize).min(FINE_BUCKETS);
        self.fine[f] += 1;
        self.count += 1;
        self.sum += secs;
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.fine.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return 2f64.powf(i as f64 / 4.0) / 1e6;
            }
        }
        self.sum / self.count as f64
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
    /// Median attempt duration (ms, upper bound of a 19%-wide bucket).
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
    pub kind: String,
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
    /// By job type.
    pub types: BTreeMap<String, TypeStats>,
    /// By provider.
    pub providers: BTreeMap<String, ProviderStats>,
    /// Totals over all types.
    pub totals: Counters,
    /// All jobs finished per second over the last few seconds.
    pub jobs_per_sec: f64,
    /// Outcomes by (type, provider), for pairs that have seen a job.
    pub by_type_and_provider: Vec<PairStats>,
}

/// Where the manager publishes snapshots; cheap to clone and read.
#[derive(Debug, Clone, Default)]
pub struct StatsReader {
    latest: Arc<Mutex<Arc<Snapshot>>>,
}

impl StatsReader {
    /// The latest snapshot (at most one publish interval old).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.latest.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn publish(&self, s: Snapshot) {
        if let Ok(mut l) = self.latest.lock() {
            *l = Arc::new(s);
        }
    }
}

/// The manager's own, lock-free counters.
#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    pub(crate) types: Vec<Counters>,
    pub(crate) durations: Vec<Histogram>,
    pub(crate) in_flight: Vec<usize>,
    pub(crate) providers: Vec<Counters>,
    pub(crate) rejected: Vec<u64>,
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

    /// The counters of jobs of `pool` from `provider`.
    pub(crate) fn pair(&mut self, pool: usize, provider: usize) -> &mut Counters {
        &mut self.pairs[pool * self.provider_count + provider]
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
            s.types.insert(
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
                    dead_letters_trimmed: h.dead_letters_trimmed(),
                },
            );
        }
        for (i, c) in self.pairs.iter().enumerate() {
            let (pool, provider) = (i / self.provider_count, i % self.provider_count);
            let (Some((kind, _)), Some(h)) = (names.pools.get(pool), names.providers.get(provider))
            else {
                continue;
            };
            if *c == Counters::default() {
                continue; // only pairs that have seen a job
            }
            s.by_type_and_provider.push(PairStats {
                kind: kind.to_string(),
                provider: h.name().to_string(),
                counters: *c,
            });
        }
        s
    }
}

fn add(total: &mut Counters, c: &Counters) {
    total.received += c.received;
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
}
