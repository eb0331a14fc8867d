//! Putting it together: build everything from a validated [`Config`], then
//! spawn (providers, pools, the manager, the failure-handler thread, the
//! stats server), then wait for shutdown.

use crate::config::{Config, PoolConfig};
use crate::error::Error;
use crate::failure::{FailureHandler, HandlerContext};
use crate::manager::{Control, Hooks, Manager, NoHooks, ShutdownReport};
use crate::plugin::WorkerSpec;
use crate::pool::Pool;
use crate::provider::{Health, JobStore, Provider, ProviderContext};
use crate::stats::{Snapshot, StatsReader};
use crate::stats_server::StatsServer;
use crate::worker::{PoolInfo, WorkerType};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Builds a [`Service`] from a config plus providers, pools and handlers
/// added in code.
pub struct ServiceBuilder {
    config: Config,
    hooks: Box<dyn Hooks>,
}

impl std::fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl ServiceBuilder {
    /// Adds a provider built in code (e.g. a [`crate::MemoryProvider`]).
    pub fn provider(mut self, name: &str, provider: impl Provider) -> ServiceBuilder {
        self.config.providers.push(crate::config::ProviderConfig {
            name: name.to_string(),
            plugin_type: "custom".into(),
            provider: Box::new(provider),
        });
        self
    }

    /// Adds a pool of `count` threads running workers of type `T` for jobs
    /// whose `type` is `name`.
    ///
    /// # Errors
    /// When `T` rejects its options.
    pub fn pool<T: WorkerType>(
        mut self,
        name: &str,
        count: usize,
        options: T::Options,
    ) -> Result<ServiceBuilder, Error> {
        let info = PoolInfo {
            name: name.to_string(),
            count,
            timeout: None,
            secret_env: self.config.secret_env.clone(),
        };
        let spec: Arc<dyn WorkerSpec> =
            Arc::new(T::from_options(options, &info).map_err(|e| Error::Other(e.to_string()))?);
        self.config.pools.push(PoolConfig {
            name: name.to_string(),
            plugin_type: T::TYPE.to_string(),
            count: count.max(1),
            timeout: None,
            retry: self.config.manager.retry,
            spec,
        });
        Ok(self)
    }

    /// Adds a failure handler (told the config's secret variables, see
    /// [`FailureHandler::hide_env`]).
    pub fn failure_handler(
        mut self,
        name: &str,
        mut handler: impl FailureHandler + 'static,
    ) -> ServiceBuilder {
        handler.hide_env(&self.config.secret_env);
        self.config
            .failure_handlers
            .push(crate::config::HandlerConfig {
                name: name.to_string(),
                plugin_type: "custom".into(),
                handler: Box::new(handler),
            });
        self
    }

    /// Sets the observation hooks (sd_notify, metrics exporters).
    pub fn hooks(mut self, hooks: impl Hooks + 'static) -> ServiceBuilder {
        self.hooks = Box::new(hooks);
        self
    }

    /// Changes the manager settings.
    pub fn manager(mut self, f: impl FnOnce(&mut crate::config::ManagerConfig)) -> ServiceBuilder {
        f(&mut self.config.manager);
        self
    }

    /// Validates what was added and returns the service, not yet started.
    ///
    /// # Errors
    /// Duplicate pool or provider names.
    pub fn build(self) -> Result<Service, Error> {
        let mut seen = HashSet::new();
        for p in &self.config.pools {
            if !seen.insert(p.name.clone()) {
                return Err(Error::Other(format!("duplicate pool name {:?}", p.name)));
            }
        }
        seen.clear();
        for p in &self.config.providers {
            if !seen.insert(p.name.clone()) {
                return Err(Error::Other(format!(
                    "duplicate provider name {:?}",
                    p.name
                )));
            }
        }
        Ok(Service {
            config: self.config,
            hooks: self.hooks,
        })
    }
}

/// A configured service, ready to start.
pub struct Service {
    config: Config,
    hooks: Box<dyn Hooks>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish()
    }
}

impl Service {
    /// A builder starting from a validated config.
    pub fn builder(config: Config) -> ServiceBuilder {
        ServiceBuilder {
            config,
            hooks: Box::new(NoHooks),
        }
    }

    /// Opens every provider, then starts all threads.
    ///
    /// # Errors
    /// A provider that cannot open its source (a corrupt database, a port in
    /// use), or a thread that cannot be spawned. Nothing keeps running then.
    pub fn start(self) -> Result<RunningService, Error> {
        let Service { config, hooks } = self;
        let m = config.manager.clone();
        let (del_tx, del_rx) = crossbeam_channel::bounded(m.channel_bound);
        // Outcomes never outnumber tasks in flight, which the manager keeps
        // near `limit`; it never blocks, so a full channel only slows workers.
        let threads: usize = config.pools.iter().map(|p| p.count).sum();
        let limit = threads + m.channel_bound;
        let (done_tx, done_rx) = crossbeam_channel::bounded(limit);
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        let reader = StatsReader::default();
        let (fail_tx, fail_thread) =
            crate::failure::queue(m.failure_queue, reader.failure_handlers_skipped());
        let fail_clock = fail_thread.waiter();
        // Providers' way to the failure handlers; emptied once every
        // provider has finished, so that a context a library user keeps
        // (e.g. in a handle) does not hold the handlers' thread open.
        let provider_failures = Arc::new(std::sync::Mutex::new(Some(fail_tx.clone())));
        let stopping = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let types: Arc<HashSet<String>> =
            Arc::new(config.pools.iter().map(|p| p.name.clone()).collect());

        // Open every provider before any thread runs.
        let mut providers = config.providers;
        let mut healths = Vec::new();
        let mut stores: HashMap<String, Arc<dyn JobStore>> = HashMap::new();
        for p in &mut providers {
            let health = Arc::new(Health::new(&p.name));
            healths.push(health);
            if let Some(s) = p.provider.store() {
                stores.insert(p.name.clone(), s);
            }
        }
        let stores = Arc::new(stores);
        // Dropped by the manager when shutdown begins, waking providers.
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let mut contexts = Vec::new();
        for (i, p) in providers.iter_mut().enumerate() {
            let ctx = ProviderContext {
                index: i,
                sink: del_tx.clone(),
                stopping: stopping.clone(),
                stop_signal: stop_rx.clone(),
                health: healths[i].clone(),
                types: types.clone(),
                stores: stores.clone(),
                failures: provider_failures.clone(),
            };
            p.provider.open(&ctx)?;
            contexts.push(ctx);
        }
        drop(del_tx);

        // The stats server binds now (a port in use stops start-up) and
        // serves once everything runs.
        let mut stats_server = match m.stats_listen {
            Some(addr) => Some(StatsServer::bind(addr)?),
            None => None,
        };

        let mut pools = Vec::new();
        for (i, pc) in config.pools.into_iter().enumerate() {
            let pool = Pool::start(
                i,
                pc,
                limit,
                m.capture_limit,
                done_tx.clone(),
                draining.clone(),
            )
            .map_err(|e| Error::io("spawn pool thread", e))?;
            pools.push(pool);
        }
        drop(done_tx);
        let aborters: Vec<_> = pools.iter().map(Pool::aborter).collect();

        let (fail_done_tx, fail_done) = crossbeam_channel::bounded::<()>(0);
        let failures = spawn("goworker-failures", move || {
            fail_thread.run(config.failure_handlers);
            drop(fail_done_tx);
        })?;

        let (finished_tx, finished_rx) = crossbeam_channel::bounded::<()>(0);
        let mut provider_threads = Vec::new();
        for (p, ctx) in providers.into_iter().zip(contexts) {
            let ctl = ctl_tx.clone();
            let finished = finished_rx.clone();
            let name = format!("goworker-provider-{}", p.name);
            provider_threads.push(spawn(&name, move || {
                run_provider(p.provider, ctx, ctl, finished)
            })?);
        }

        let manager = Manager {
            deliveries: del_rx,
            done: done_rx,
            control: ctl_rx,
            pools,
            providers: healths.clone(),
            failures: fail_tx,
            reader: reader.clone(),
            stopping: stopping.clone(),
            stop_signal: Some(stop_tx),
            draining,
            shutdown_timeout: m.shutdown_timeout,
            channel_bound: m.channel_bound,
            hooks,
        };
        let manager = spawn("goworker-manager", move || manager.run())?;
        if let Some(s) = &mut stats_server {
            s.serve(reader.clone(), healths.clone())?;
        }
        log::info!(
            "goworker started: {} provider(s), {} pool(s)",
            healths.len(),
            aborters.len()
        );
        Ok(RunningService {
            control: ctl_tx,
            reader,
            healths,
            aborters: Arc::new(aborters),
            manager: Some(manager),
            providers: provider_threads,
            finished: Some(finished_tx),
            failures: Some(FailureThread {
                thread: failures,
                done: fail_done,
                clock: fail_clock,
            }),
            provider_failures,
            stopping,
            stats_server,
        })
    }
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, Error> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| Error::io(format!("spawn {name}"), e))
}

fn run_provider(
    mut p: Box<dyn Provider>,
    ctx: ProviderContext,
    ctl: Sender<Control>,
    finished: Receiver<()>,
) {
    if let Err(e) = p.run(&ctx) {
        log::error!("provider {}: {e}", ctx.name());
        ctx.set_down(&e.to_string());
        let _ = ctl.send(Control::ProviderFailed(ctx.name().to_string()));
    }
    // Wait until the manager has settled every delivery, then flush.
    let _ = finished.recv();
    p.finish();
}

/// The failure-handler thread, as `wait` sees it.
struct FailureThread {
    thread: JoinHandle<()>,
    /// Disconnects when the thread ends.
    done: Receiver<()>,
    clock: HandlerContext,
}

impl FailureThread {
    /// Waits for the handlers until what is left of the shutdown deadline,
    /// then kills a handler's child and gives them a moment to notice.
    fn join(self) {
        let finished = match self.clock.deadline() {
            Some(deadline) => {
                if self
                    .done
                    .recv_deadline(deadline)
                    .is_err_and(|e| e.is_timeout())
                {
                    log::warn!(
                        "failure handlers still busy at the shutdown deadline; stopping them"
                    );
                    self.clock.abort();
                    !self
                        .done
                        .recv_timeout(HANDLER_GRACE)
                        .is_err_and(|e| e.is_timeout())
                } else {
                    true
                }
            }
            None => {
                let _ = self.done.recv();
                true
            }
        };
        if finished {
            let _ = self.thread.join();
        } else {
            log::error!("a failure handler did not stop; exiting without it");
        }
    }
}

/// How long handlers may take to give up once the deadline has killed
/// their child or passed.
const HANDLER_GRACE: Duration = Duration::from_secs(2);

/// A running service: read its stats, stop it, wait for it.
pub struct RunningService {
    control: Sender<Control>,
    reader: StatsReader,
    healths: Vec<Arc<Health>>,
    aborters: Arc<Vec<crate::pool::Aborter>>,
    manager: Option<JoinHandle<ShutdownReport>>,
    providers: Vec<JoinHandle<()>>,
    finished: Option<Sender<()>>,
    failures: Option<FailureThread>,
    provider_failures: Arc<std::sync::Mutex<Option<crate::failure::FailureQueue>>>,
    stopping: Arc<AtomicBool>,
    stats_server: Option<StatsServer>,
}

impl std::fmt::Debug for RunningService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningService").finish()
    }
}

/// Asks a running service to stop; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    control: Sender<Control>,
    aborters: Arc<Vec<crate::pool::Aborter>>,
}

impl ShutdownHandle {
    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown);
    }

    /// Kills running jobs now; they are handed back.
    pub fn abort(&self) {
        let _ = self.control.send(Control::Abort);
    }

    /// Changes a pool's thread count while jobs run (a config reload):
    /// see [`Control::Resize`]. The manager logs the change, or why not.
    pub fn resize(&self, pool: &str, count: usize) {
        let _ = self.control.send(Control::Resize {
            pool: pool.to_string(),
            count,
        });
    }

    /// Kills the process groups of running jobs from the calling thread,
    /// without asking the manager (before exiting at once).
    pub fn kill_running(&self) {
        for a in self.aborters.iter() {
            a.abort();
        }
    }
}

impl RunningService {
    /// The latest stats snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.reader.snapshot()
    }

    /// A reader for the stats, for servers on other threads.
    pub fn stats(&self) -> StatsReader {
        self.reader.clone()
    }

    /// Each provider's health.
    pub fn health(&self) -> Vec<Arc<Health>> {
        self.healths.clone()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A handle to stop the service from elsewhere (signal handlers).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            control: self.control.clone(),
            aborters: self.aborters.clone(),
        }
    }

    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown);
    }

    /// Waits until shutdown completes: every delivery settled, providers
    /// flushed, failure handlers done.
    pub fn wait(mut self) -> ShutdownReport {
        let report = self
            .manager
            .take()
            .and_then(|m| m.join().ok())
            .unwrap_or_default();
        drop(self.finished.take());
        for p in self.providers.drain(..) {
            let _ = p.join();
        }
        if let Ok(mut f) = self.provider_failures.lock() {
            f.take();
        }
        if let Some(f) = self.failures.take() {
            f.join();
        }
        if let Some(s) = self.stats_server.take() {
            s.stop();
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;
    use crate::provider::memory::{MemoryProvider, Settled};
    use crate::worker::noop::Noop;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A provider that records the calls the service makes on it.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<&'static str>>>,
        fail_open: bool,
        fail_run: bool,
    }

    impl Provider for Recorder {
        fn open(&mut self, _: &ProviderContext) -> Result<(), Error> {
            self.calls.lock().unwrap().push("open");
            if self.fail_open {
                return Err(Error::provider("rec", "cannot open"));
            }
            Ok(())
        }
        fn run(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
            self.calls.lock().unwrap().push("run");
            if self.fail_run {
                return Err(Error::provider("rec", "source gone"));
            }
            let _ = ctx.stop_signal().recv();
            Ok(())
        }
        fn finish(&mut self) {
            self.calls.lock().unwrap().push("finish");
        }
    }

    fn builder() -> ServiceBuilder {
        Service::builder(Config::empty())
    }

    #[test]
    fn build_refuses_duplicate_names() {
        let e = builder()
            .pool::<Noop>("a", 1, Default::default())
            .unwrap()
            .pool::<Noop>("a", 1, Default::default())
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.to_string(), "duplicate pool name \"a\"");
        let e = builder()
            .provider("p", Recorder::default())
            .provider("p", Recorder::default())
            .build()
            .unwrap_err();
        assert_eq!(e.to_string(), "duplicate provider name \"p\"");
    }

    #[test]
    fn a_provider_that_cannot_open_stops_start_up_before_anything_runs() {
        let ok = Recorder::default();
        let bad = Recorder {
            fail_open: true,
            ..Recorder::default()
        };
        let e = builder()
            .provider("ok", ok.clone())
            .provider("bad", bad.clone())
            .build()
            .unwrap()
            .start()
            .unwrap_err();
        assert!(e.to_string().contains("cannot open"), "{e}");
        assert_eq!(*ok.calls.lock().unwrap(), ["open"]);
        assert_eq!(*bad.calls.lock().unwrap(), ["open"]);
    }

    #[test]
    fn providers_run_then_finish_after_shutdown() {
        let rec = Recorder::default();
        let (memory, handle) = MemoryProvider::new();
        let service = builder()
            .provider("rec", rec.clone())
            .provider("memory", memory)
            .pool::<Noop>("noop", 2, Default::default())
            .unwrap()
            .build()
            .unwrap()
            .start()
            .unwrap();
        handle
            .submit(Job::new("noop", serde_json::json!({})))
            .unwrap();
        let settled = handle.settled().recv_timeout(Duration::from_secs(30));
        assert!(matches!(settled, Ok(Settled::Succeeded(_))), "{settled:?}");
        service.shutdown();
        let report = service.wait();
        assert_eq!(report.failed_provider, None);
        assert_eq!(*rec.calls.lock().unwrap(), ["open", "run", "finish"]);
    }

    #[test]
    fn a_provider_failing_while_running_shuts_the_service_down() {
        let rec = Recorder {
            fail_run: true,
            ..Recorder::default()
        };
        let service = builder()
            .provider("rec", rec.clone())
            .build()
            .unwrap()
            .start()
            .unwrap();
        let health = service.health();
        let report = service.wait();
        assert_eq!(report.failed_provider.as_deref(), Some("rec"));
        assert!(!health[0].is_up());
        assert!(health[0].reason().contains("source gone"));
        assert_eq!(*rec.calls.lock().unwrap(), ["open", "run", "finish"]);
    }
}
