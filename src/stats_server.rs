//! The stats server on `manager.stats_listen`: `GET /stats` (the latest
//! [`Snapshot`] as JSON), `GET /metrics` (Prometheus text, encoded by
//! `prometheus-client`) and `GET /healthz` (200, or 503 with the reasons).
//!
//! It only reads what the manager publishes, so it never slows the manager
//! down; two threads serve it, polling a stop flag.

use crate::error::Error;
use crate::provider::Health;
use crate::stats::{Snapshot, StatsReader};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response, Server};

const THREADS: usize = 2;
const POLL: Duration = Duration::from_millis(100);

/// A bound stats listener, not yet serving.
pub(crate) struct StatsServer {
    server: Arc<Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for StatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

struct Source {
    reader: StatsReader,
    healths: Vec<Arc<Health>>,
}

impl StatsServer {
    /// Binds the listener (a port in use is a start-up error).
    pub(crate) fn bind(addr: SocketAddr) -> Result<StatsServer, Error> {
        let server = Server::http(addr)
            .map_err(|e| Error::Other(format!("stats server: listen {addr}: {e}")))?;
        Ok(StatsServer {
            server: Arc::new(server),
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        })
    }

    /// Starts the serving threads.
    pub(crate) fn serve(
        &mut self,
        reader: StatsReader,
        healths: Vec<Arc<Health>>,
    ) -> Result<(), Error> {
        let source = Arc::new(Source { reader, healths });
        for i in 0..THREADS {
            let (server, stop, source) = (self.server.clone(), self.stop.clone(), source.clone());
            let t = std::thread::Builder::new()
                .name(format!("goworker-stats-{i}"))
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match server.recv_timeout(POLL) {
                            Ok(Some(rq)) => source.handle(rq),
                            Ok(None) => {}
                            Err(e) => {
                                log::error!("stats server: {e}");
                                std::thread::sleep(POLL);
                            }
                        }
                    }
                })
                .map_err(|e| Error::io("spawn stats server thread", e))?;
            self.threads.push(t);
        }
        log::info!("stats server on http://{}/stats", self.addr);
        Ok(())
    }

    /// Stops the threads and closes the listener.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Source {
    fn handle(&self, rq: Request) {
        let Some(rq) = crate::provider::http::refuse_absurd_body(rq, 0) else {
            return;
        };
        let path = rq.url().split('?').next().unwrap_or("").to_string();
        let (status, content_type, body) = match (rq.method(), path.as_str()) {
            (Method::Get, "/stats") => (200, "application/json", self.stats()),
            (Method::Get, "/metrics") => self.metrics(),
            (Method::Get, "/healthz") => self.healthz(),
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
        let mut response = Response::from_string(body).with_status_code(status);
        if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
            response.add_header(h);
        }
        if let Err(e) = rq.respond(response) {
            log::debug!("stats server: answering: {e}");
        }
    }

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

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let mut m = e.encode_descriptor(
            "goworker_jobs",
            "Jobs finished by type, provider and outcome (retried counts retries scheduled)",
            None,
            MetricType::Counter,
        )?;
        for p in &s.by_type_and_provider {
            for (outcome, n) in [
                ("succeeded", p.counters.succeeded),
                ("failed", p.counters.failed),
                ("retried", p.counters.retried),
            ] {
                let labels = [
                    ("type", p.kind.as_str()),
                    ("provider", p.provider.as_str()),
                    ("outcome", outcome),
                ];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
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
        for (kind, t) in &s.types {
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
        for (kind, t) in &s.types {
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
        Ok(())
    }
}
