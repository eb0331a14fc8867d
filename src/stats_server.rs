//! The stats server on `manager.stats_listen`: `GET /stats` (the latest
//! [`Snapshot`] as JSON), `GET /metrics` (Prometheus text, encoded by
//! `prometheus-client`) and `GET /healthz` (200, or 503 with the reasons).
//!
//! It only reads what the manager publishes, so it never slows the manager
//! down. It runs on [`crate::httpd`] with fixed limits ([`limits`]): the
//! same deadlines, caps and refusals as the `http` provider.

use crate::error::Error;
use crate::httpd::{self, Limits, Request, Response, Server};
use crate::provider::Health;
use crate::stats::{Counters, Snapshot, StatsReader};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The stats server's limits: 10 s deadlines, 16 KiB heads, 64 connections,
/// and no request body (any body over 4 KiB is refused, smaller ones are
/// discarded).
pub(crate) fn limits() -> Limits {
    Limits {
        read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        max_header: 16 << 10,
        max_body: 4 << 10,
        max_connections: 64,
    }
}

/// A bound stats listener, not yet serving.
#[derive(Debug)]
pub(crate) struct StatsServer {
    server: Server,
    addr: SocketAddr,
}

struct Source {
    reader: StatsReader,
    healths: Vec<Arc<Health>>,
}

impl StatsServer {
    /// Binds the listener (a port in use is a start-up error).
    pub(crate) fn bind(addr: SocketAddr) -> Result<StatsServer, Error> {
        let server = Server::bind("stats", addr, limits())
            .map_err(|e| Error::Other(format!("stats server: listen {addr}: {e}")))?;
        Ok(StatsServer { server, addr })
    }

    /// Starts the serving threads.
    pub(crate) fn serve(
        &mut self,
        reader: StatsReader,
        healths: Vec<Arc<Health>>,
    ) -> Result<(), Error> {
        let source = Arc::new(Source { reader, healths });
        self.server
            .start(source)
            .map_err(|e| Error::io("spawn stats server thread", e))?;
        log::info!("stats server on http://{}/stats", self.addr);
        Ok(())
    }

    /// Closes the listener and its connections.
    pub(crate) fn stop(mut self) {
        self.server.stop();
    }
}

impl httpd::Handler for Source {
    fn handle(&self, rq: Request) -> Response {
        let path = rq.path();
        let (status, content_type, body) = match (rq.method.as_str(), path) {
            ("GET", "/stats") => (200, "application/json", self.stats()),
            ("GET", "/metrics") => self.metrics(),
            ("GET", "/healthz") => self.healthz(),
            (_, "/stats" | "/metrics" | "/healthz") => (
                405,
                "application/json",
                json!({"error": "use GET"}).to_string(),
            ),
            _ => (
                404,
                "application/json",
                json!({"error": format!("no such path {path:?}")}).to_string(),
            ),
        };
        Response::new(status, content_type, body.into_bytes())
    }
}

impl Source {
    fn stats(&self) -> String {
        serde_json::to_string(&*self.reader.snapshot()).unwrap_or_default()
    }

    fn metrics(&self) -> (u16, &'static str, String) {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(SnapshotCollector(self.reader.snapshot())));
        let mut text = String::new();
        match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
            Ok(()) => (
                200,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                text,
            ),
            Err(e) => (
                500,
                "application/json",
                json!({"error": format!("encoding metrics: {e}")}).to_string(),
            ),
        }
    }

    fn healthz(&self) -> (u16, &'static str, String) {
        let down: serde_json::Map<String, serde_json::Value> = self
            .healths
            .iter()
            .filter(|h| !h.is_up())
            .map(|h| (h.name().to_string(), json!(h.reason())))
            .collect();
        let stopping = self.reader.snapshot().stopping;
        if down.is_empty() && !stopping {
            return (200, "application/json", json!({"status": "ok"}).to_string());
        }
        let mut body = json!({"status": "down", "providers_down": down});
        if stopping {
            body["reason"] = json!("shutting down");
        }
        (503, "application/json", body.to_string())
    }
}

/// Encodes one snapshot; built per scrape.
#[derive(Debug)]
struct SnapshotCollector(Arc<Snapshot>);

/// An outcome's label and how to read it from the counters.
type Outcome = (&'static str, fn(&Counters) -> u64);

/// One counter family by (type, provider, outcome), an outcome a counter.
fn encode_outcomes(
    e: &mut DescriptorEncoder,
    s: &Snapshot,
    name: &str,
    help: &str,
    outcomes: &[Outcome],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for p in &s.by_type_and_provider {
        for (outcome, get) in outcomes {
            let labels = [
                ("type", p.job_type.as_str()),
                ("provider", p.provider.as_str()),
                ("outcome", outcome),
            ];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&get(&p.counters), None)?;
        }
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let finals: &[Outcome] = &[("succeeded", |c| c.succeeded), ("failed", |c| c.failed)];
        encode_outcomes(
            &mut e,
            s,
            "goworker_jobs_finished",
            "Jobs finished for good by type, provider and outcome (succeeded, failed)",
            finals,
        )?;
        for (name, help, get) in [
            (
                "goworker_jobs_received",
                "New jobs received, by type and provider",
                (|c| c.received) as fn(&Counters) -> u64,
            ),
            (
                "goworker_jobs_redelivered",
                "Deliveries of jobs attempted before (stored retries coming due, recovered jobs)",
                |c| c.redelivered,
            ),
            (
                "goworker_job_attempts",
                "Attempts started, by type and provider",
                |c| c.attempts,
            ),
            (
                "goworker_job_retries",
                "Retries scheduled after a failed attempt, by type and provider",
                |c| c.retried,
            ),
            (
                "goworker_jobs_released",
                "Jobs handed back to their source unfinished (shutdown), by type and provider",
                |c| c.released,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &s.by_type_and_provider {
                let labels = [
                    ("type", p.job_type.as_str()),
                    ("provider", p.provider.as_str()),
                ];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&get(&p.counters), None)?;
            }
        }
        // Deprecated alias of goworker_jobs_finished_total and
        // goworker_job_retries_total, kept for one release: its "retried"
        // outcome counts attempts, not jobs.
        encode_outcomes(
            &mut e,
            s,
            "goworker_jobs",
            "Deprecated: use goworker_jobs_finished_total and goworker_job_retries_total",
            &[finals[0], finals[1], ("retried", |c| c.retried)],
        )?;
        let mut m = e.encode_descriptor(
            "goworker_jobs_rejected",
            "Payloads that were not jobs or named a type with no pool, by provider",
            None,
            MetricType::Counter,
        )?;
        for (name, p) in &s.providers {
            m.encode_family(&[("provider", name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&p.rejected, None)?;
        }
        let mut m = e.encode_descriptor(
            "goworker_job_duration_seconds",
            "Attempt durations by job type",
            None,
            MetricType::Histogram,
        )?;
        for (kind, t) in &s.pools {
            let d = &t.duration;
            // The snapshot's buckets are cumulative; the encoder wants
            // per-bucket counts and adds them up itself.
            let mut buckets = Vec::with_capacity(d.buckets.len() + 1);
            let mut below = 0;
            for (le, cumulative) in &d.buckets {
                buckets.push((*le, cumulative.saturating_sub(below)));
                below = *cumulative;
            }
            buckets.push((f64::INFINITY, d.count.saturating_sub(below)));
            m.encode_family(&[("type", kind.as_str())])?
                .encode_histogram::<NoLabelSet>(d.sum_secs, d.count, &buckets, None)?;
        }
        let mut m = e.encode_descriptor(
            "goworker_in_flight",
            "Attempts running or queued for a pool thread, by job type",
            None,
            MetricType::Gauge,
        )?;
        for (kind, t) in &s.pools {
            m.encode_family(&[("type", kind.as_str())])?
                .encode_gauge(&(t.in_flight as i64))?;
        }
        e.encode_descriptor(
            "goworker_delayed",
            "Jobs waiting in the manager's retry timer heap",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(s.delayed as i64))?;
        e.encode_descriptor(
            "goworker_channel_depth",
            "Deliveries waiting in the channel from the providers to the manager",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(s.channel.len as i64))?;
        e.encode_descriptor(
            "goworker_channel_capacity",
            "Bound of the delivery channel",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(s.channel.capacity as i64))?;
        let mut m = e.encode_descriptor(
            "goworker_provider_up",
            "1 when the provider's source is reachable",
            None,
            MetricType::Gauge,
        )?;
        for (name, p) in &s.providers {
            m.encode_family(&[("provider", name.as_str())])?
                .encode_gauge(&i64::from(p.up))?;
        }
        let mut m = e.encode_descriptor(
            "goworker_queue_depth",
            "Jobs waiting at the provider's source (pending and delayed)",
            None,
            MetricType::Gauge,
        )?;
        for (name, p) in &s.providers {
            if let Some(depth) = p.queue_depth {
                m.encode_family(&[("provider", name.as_str())])?
                    .encode_gauge(&(depth as i64))?;
            }
        }
        let mut m = e.encode_descriptor(
            "goworker_queue_depth_by_queue",
            "Jobs waiting at the provider's source, by queue (providers with several)",
            None,
            MetricType::Gauge,
        )?;
        for (name, p) in &s.providers {
            for (queue, depth) in &p.queues {
                let labels = [("provider", name.as_str()), ("queue", queue.as_str())];
                m.encode_family(&labels)?
                    .encode_gauge(&i64::try_from(*depth).unwrap_or(i64::MAX))?;
            }
        }
        e.encode_descriptor(
            "goworker_failure_handler_skipped",
            "Failure records that skipped the failure handlers (queue full or shutdown deadline passed); their dead letters are stored",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&s.failure_handlers_skipped, None)?;
        e.encode_descriptor(
            "goworker_uptime_seconds",
            "Seconds since the service started",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&s.uptime_secs)?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("build", env!("GOWORKER_BUILD")),
        ];
        e.encode_descriptor(
            "goworker_build_info",
            "Always 1; the labels name the version and the build (commit and date)",
            None,
            MetricType::Gauge,
        )?
        .encode_family(&labels)?
        .encode_gauge(&1i64)?;
        if let Some(p) = crate::process::ProcessStats::read() {
            p.encode(&mut e)?;
        }
        Ok(())
    }
}
