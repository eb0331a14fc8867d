//! The `goworker` program as a library call: [`main`] runs every
//! subcommand (`run`, `check`, `options`, `enqueue`, `dead`) with a given
//! [`Registry`], so a binary that registers its own plugin types behaves
//! exactly like the stock one.

use crate::{
    Config, ConfigError, DeadLetters, Error, Health, Notify, Override, Registry, Service,
    ShutdownHandle, StatsReader,
};
use clap::{Args as ClapArgs, Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// `goworker --version`: the crate version, the commit and the build date.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GOWORKER_BUILD"), ")");

/// Plugin-based work manager: providers bring jobs in, pools of OS-thread
/// workers run them.
#[derive(Parser, Debug)]
#[command(name = "goworker", version = VERSION, about)]
struct Args {
    /// Log lines as text (with millisecond timestamps) or as JSON objects,
    /// one a line (`ts`, `level`, `target`, `msg`, and fields such as
    /// `job_id` and `job_type`).
    #[arg(
        long,
        global = true,
        env = "GOWORKER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// `2026-12-02T10:31:12.123Z INFO  goworker::manager] …` (under
    /// systemd: syslog priority prefixes for the journal).
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service (without -c: the embedded default config).
    Run {
        #[command(flatten)]
        source: Source,
    },
    /// Validate a config file as `run` would, short of opening anything:
    /// exit 0, or 2 with the error.
    Check {
        #[command(flatten)]
        source: Source,
    },
    /// Print every provider, worker and failure handler type with its options.
    Options {
        /// One JSON array of every section and type with its options.
        #[arg(long)]
        json: bool,
    },
    /// Submit a job through a configured provider (a file with one job, or
    /// `-` for one JSON job per line on stdin).
    Enqueue {
        #[command(flatten)]
        source: Source,
        /// Provider name (default: the only provider that takes submissions).
        #[arg(long)]
        provider: Option<String>,
        /// JOB.json, or - for stdin.
        job: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `goworker man | man -l -`.
    Man,
    /// Inspect and re-queue dead letters.
    Dead {
        #[command(flatten)]
        source: Source,
        /// Provider name (default: the only provider with dead letters).
        #[arg(long)]
        provider: Option<String>,
        #[command(subcommand)]
        action: DeadAction,
    },
}

/// Where the config comes from: a file (or the embedded default), and
/// options changed on the command line.
#[derive(ClapArgs, Debug, Clone)]
struct Source {
    /// Config file (YAML); `run` without it uses the embedded default.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Changes one option by its key path, e.g. `--set
    /// manager.stats_listen=127.0.0.1:9191` or `--set workers[0].count=8`
    /// (the value is YAML). Repeatable; applied in order.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<Override>,
}

fn parse_override(text: &str) -> Result<Override, String> {
    Override::parse(text).map_err(|e| e.message)
}

impl Source {
    /// Reads, overrides and validates the config; the binary's config is
    /// all there is (no provider is added in code), so references between
    /// entries are checked too.
    fn load(&self, registry: &Registry) -> Result<Config, ConfigError> {
        let c = match &self.config {
            Some(p) => Config::load_with(p, registry, &self.overrides)?,
            None => Config::parse_with(crate::EXAMPLE_CONFIG, registry, &self.overrides).map_err(
                |mut e| {
                    e.file = Some(PathBuf::from("<embedded config.example.yaml>"));
                    e
                },
            )?,
        };
        c.check_references()?;
        Ok(c)
    }

    /// The config file, which commands other than `run` need.
    fn require_file(&self) -> Result<&Path, Exit> {
        self.config
            .as_deref()
            .ok_or_else(|| usage("name the config file with -c FILE".into()))
    }
}

#[derive(Subcommand, Debug)]
enum DeadAction {
    /// Print dead-letter records, newest first, one JSON object a line.
    List,
    /// Re-queue one dead letter by job id, or all with --all.
    Retry {
        /// The job id.
        id: Option<String>,
        /// Re-queue every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead letter.
    Purge,
}

/// How the program ends when it fails: the exit code and one line for stderr.
struct Exit {
    code: u8,
    message: String,
}

impl From<Error> for Exit {
    fn from(e: Error) -> Exit {
        let code = match e {
            Error::Config(_) => 2,
            _ => 1,
        };
        Exit {
            code,
            message: e.to_string(),
        }
    }
}

/// Runs the `goworker` program — every subcommand, logging, signals,
/// sd_notify and exit codes — with the plugin types in `registry`.
///
/// The stock binary calls it with [`Registry::with_builtins`]; a binary
/// with plugins of its own registers them first and gets the same program:
///
/// ```no_run
/// use goworker::Registry;
///
/// fn main() -> std::process::ExitCode {
///     let registry = Registry::with_builtins();
///     // registry.register_worker::<MyWorker>();
///     goworker::app::main(registry)
/// }
/// ```
///
/// Exit codes: 0 after a clean shutdown or a successful command, 2 for a
/// bad config, bad usage or a provider that cannot open its source, 1 for
/// anything else. Errors are printed to stderr as one line.
pub fn main(registry: Registry) -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args, registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("goworker: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        LogFormat::Json => {
            b.format(|buf, r| {
                let mut line = serde_json::Map::new();
                line.insert("ts".into(), buf.timestamp_millis().to_string().into());
                line.insert("level".into(), r.level().as_str().into());
                line.insert("target".into(), r.target().into());
                line.insert("msg".into(), r.args().to_string().into());
                let _ = r.key_values().visit(&mut JsonFields(&mut line));
                writeln!(buf, "{}", serde_json::Value::Object(line))
            });
        }
        LogFormat::Text if stderr_is_journal() => {
            // journald adds the time and reads the level from the `<N>`
            // prefix (syslog priorities), so `journalctl -p warning` works.
            b.format(|buf, r| {
                let level = match r.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                writeln!(buf, "<{level}>{}: {}", r.target(), r.args())
            });
        }
        LogFormat::Text => {
            b.format_timestamp_millis();
        }
    }
    b.init();
}

/// A log record's fields (`job_id`, `job_type`, …) as JSON members.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.0.insert(key.to_string(), value.to_string().into());
        Ok(())
    }
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM`
/// (`DEVICE:INODE`) names stderr itself, not a stream a parent had (as
/// `systemd.exec(5)` advises checking).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(meta) = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| std::fs::File::from(fd).metadata().ok())
    else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

fn run(args: Args, registry: Registry) -> Result<(), Exit> {
    if !matches!(args.command, Command::Run { .. }) {
        // A command whose output is piped into `head` ends quietly when the
        // reader goes, as other command-line tools do, instead of
        // panicking on the failed write. (The service keeps Rust's ignored
        // SIGPIPE: a client hanging up is an error on that socket only.)
        // SAFETY: resetting a signal to its default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match args.command {
        Command::Run { source } => {
            let c = load(&source, &registry)?;
            serve(c, source, registry)
        }
        Command::Check { source } => {
            let file = source.require_file()?.to_path_buf();
            let c = load(&source, &registry)?;
            println!(
                "{}: OK ({} provider(s), {} pool(s), {} failure handler(s))",
                file.display(),
                c.providers.len(),
                c.pools.len(),
                c.failure_handlers.len()
            );
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = <Args as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "goworker", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <Args as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|e| Exit {
                    code: 1,
                    message: format!("writing the manual page: {e}"),
                })
        }
        Command::Options { json } => {
            print_options(&registry, json);
            Ok(())
        }
        Command::Enqueue {
            source,
            provider,
            job,
        } => {
            source.require_file()?;
            let mut c = load(&source, &registry)?;
            let pools: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
            let payloads = read_jobs(&job, &pools)?;
            enqueue(&mut c, provider.as_deref(), &payloads)
        }
        Command::Dead {
            source,
            provider,
            action,
        } => {
            source.require_file()?;
            let mut c = load(&source, &registry)?;
            // Without --provider, the only provider that keeps dead letters.
            let i = pick(&mut c, provider.as_deref(), |c, i| {
                c.providers[i].dead_letters().is_some()
            })?;
            let p = &mut c.providers[i];
            let (name, kind) = (p.name.clone(), p.plugin_type.clone());
            match p.dead_letters() {
                Some(d) => dead(d, action),
                None => Err(unsupported(&name, &kind)),
            }
        }
    }
}

fn usage(message: String) -> Exit {
    Exit { code: 2, message }
}

fn unsupported(name: &str, kind: &str) -> Exit {
    usage(format!(
        "provider {name:?} (type {kind}) does not support it"
    ))
}

/// The index of the provider named `name`, or else of the only provider
/// that `fits`.
fn pick(
    c: &mut Config,
    name: Option<&str>,
    fits: impl Fn(&mut Config, usize) -> bool,
) -> Result<usize, Exit> {
    if let Some(n) = name {
        return c
            .providers
            .iter()
            .position(|p| p.name == n)
            .ok_or_else(|| usage(format!("no provider named {n:?}")));
    }
    let capable: Vec<usize> = (0..c.providers.len()).filter(|i| fits(c, *i)).collect();
    match capable.as_slice() {
        [one] => Ok(*one),
        [] => Err(usage("no provider in this config supports it".into())),
        _ => Err(usage(
            "several providers could; name one with --provider".into(),
        )),
    }
}

/// Submits the payloads to the provider named `target` (or the only one
/// that takes submissions). When another provider of the config puts
/// what it takes into the target's store (an `http` provider's `store:`),
/// the jobs go through that one, so they reach a running service; only
/// when it does not answer are they written to the target directly.
fn enqueue(
    c: &mut Config,
    target: Option<&str>,
    payloads: &[(String, Vec<u8>)],
) -> Result<(), Exit> {
    let fronts = |c: &Config, i: usize| {
        c.providers[i]
            .stores_into()
            .is_some_and(|s| target.is_none_or(|t| t == s || t == c.providers[i].name))
    };
    let front: Vec<usize> = (0..c.providers.len()).filter(|i| fronts(c, *i)).collect();
    let (front, direct) = match front.as_slice() {
        [f] => {
            let store = c.providers[*f]
                .stores_into()
                .unwrap_or_default()
                .to_string();
            let direct = c.providers.iter().position(|p| p.name == store);
            (Some(*f), direct)
        }
        _ => (
            None,
            Some(pick(c, target, |c, i| c.providers[i].enqueue().is_some())?),
        ),
    };
    for (submitted, (at, payload)) in payloads.iter().enumerate() {
        let id = submit(c, front, direct, payload).map_err(|e| Exit {
            code: 1,
            message: match submitted {
                0 => format!("{at}: {e}; nothing was submitted"),
                n => format!("{at}: {e}; the {n} job(s) before it were submitted (ids above)"),
            },
        })?;
        println!("{id}");
    }
    Ok(())
}

/// Submits one payload through `front` (a provider that puts jobs into
/// `direct`'s store, reaching a running service), or straight to `direct`
/// when there is no front or nothing answers there. A front that answers
/// with a refusal is final: the job is not written behind its back.
fn submit(
    c: &mut Config,
    front: Option<usize>,
    direct: Option<usize>,
    payload: &[u8],
) -> Result<String, String> {
    let mut unreachable = None;
    for i in [front, direct].into_iter().flatten() {
        let p = &mut c.providers[i];
        let (name, kind) = (p.name.clone(), p.plugin_type.clone());
        let Some(e) = p.enqueue() else {
            return Err(unsupported(&name, &kind).message);
        };
        match e.enqueue(payload) {
            Ok(id) => return Ok(id),
            Err(err @ Error::Unreachable { .. }) if Some(i) == front && direct.is_some() => {
                unreachable = Some(err.to_string());
            }
            Err(err) => {
                return Err(match unreachable {
                    Some(before) => format!("{before}; and directly: {err}"),
                    None => err.to_string(),
                });
            }
        }
    }
    Err(unreachable.unwrap_or_else(|| "no provider took the job".into()))
}

/// The payloads of `job` (a file, or `-`: one job per stdin line), each
/// with where it came from (`stdin line 3`). All are checked before any is
/// submitted — a job, of a type some pool runs — so that what would only
/// be refused or dead-lettered stops the command with nothing sent.
fn read_jobs(job: &str, pools: &[&str]) -> Result<Vec<(String, Vec<u8>)>, Exit> {
    let fail = |message: String| Exit { code: 1, message };
    let payloads: Vec<(String, Vec<u8>)> = if job == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| fail(format!("stdin: {e}")))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| (format!("stdin line {}", n + 1), l.as_bytes().to_vec()))
            .collect()
    } else {
        let bytes = std::fs::read(job).map_err(|e| fail(format!("{job}: {e}")))?;
        vec![(job.to_string(), bytes)]
    };
    for (at, payload) in &payloads {
        let parsed = crate::Job::parse(payload).map_err(|m| fail(format!("{at}: {}", m.reason)))?;
        if !pools.contains(&parsed.job_type.as_str()) {
            return Err(fail(format!(
                "{at}: no worker pool runs jobs of type {:?} (pools: {}); nothing was submitted",
                parsed.job_type,
                pools.join(", ")
            )));
        }
    }
    Ok(payloads)
}

fn dead(admin: &mut dyn DeadLetters, action: DeadAction) -> Result<(), Exit> {
    match action {
        DeadAction::List => {
            for r in admin.list()? {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            }
        }
        DeadAction::Retry { id, all } => {
            let n = match (id.as_deref(), all) {
                (Some(id), false) => admin.retry(Some(id))?,
                (None, true) => admin.retry(None)?,
                _ => {
                    return Err(Exit {
                        code: 2,
                        message: "give a job id or --all".into(),
                    });
                }
            };
            println!("re-queued {n} job(s)");
        }
        DeadAction::Purge => println!("purged {} dead letter(s)", admin.purge()?),
    }
    Ok(())
}

fn load(source: &Source, registry: &Registry) -> Result<Config, Exit> {
    source.load(registry).map_err(|e| Exit {
        code: 2,
        message: e.to_string(),
    })
}

fn serve(config: Config, source: Source, registry: Registry) -> Result<(), Exit> {
    // Registered before start-up, so an early signal waits for its thread
    // instead of killing the process (SIGHUP's default).
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|e| Exit {
        code: 1,
        message: format!("cannot install signal handlers: {e}"),
    })?;
    let rates: Vec<(String, Option<f64>)> = config
        .providers
        .iter()
        .map(|p| (p.name.clone(), p.rate_limit()))
        .collect();
    let service = Service::builder(config).hooks(Notify::from_env()).build()?;
    // A provider that cannot open its source (corrupt database, port in
    // use) is a start-up failure, like a bad config: exit 2.
    let running = service.start().map_err(|e| Exit {
        code: 2,
        message: e.to_string(),
    })?;
    let reload = Reload {
        source,
        registry,
        stats: running.stats(),
        handle: running.shutdown_handle(),
        providers: running
            .health()
            .into_iter()
            .map(|h| {
                let rate = rates
                    .iter()
                    .find(|(n, _)| n == h.name())
                    .and_then(|(_, r)| *r);
                (h, Mutex::new(rate))
            })
            .collect(),
    };
    std::thread::Builder::new()
        .name("goworker-signals".into())
        .spawn(move || on_signals(signals, reload))
        .map_err(|e| Exit {
            code: 1,
            message: format!("cannot spawn the signal thread: {e}"),
        })?;
    let report = running.wait();
    if let Some(p) = report.failed_provider {
        return Err(Exit {
            code: 1,
            message: format!("provider {p} failed; stopped"),
        });
    }
    log::info!("stopped: {} job(s) handed back", report.released);
    Ok(())
}

/// SIGINT/SIGTERM: first a graceful shutdown, then exit at once. SIGHUP:
/// reload.
fn on_signals(mut signals: Signals, reload: Reload) {
    let mut stops = 0u32;
    for signal in signals.forever() {
        if signal == SIGHUP {
            reload.run();
            continue;
        }
        stops += 1;
        if stops == 1 {
            log::info!("signal received: finishing running jobs (send it again to exit at once)");
            reload.handle.shutdown();
        } else {
            log::warn!(
                "second signal: killing running jobs and exiting; they run again after restart"
            );
            reload.handle.kill_running();
            std::process::exit(1);
        }
    }
}

/// What SIGHUP needs: the config file, the types to validate it with, and
/// the running pools.
struct Reload {
    source: Source,
    registry: Registry,
    stats: StatsReader,
    handle: ShutdownHandle,
    /// Running providers by name, with the rate limit each started with
    /// or was last given.
    providers: Vec<(Arc<Health>, Mutex<Option<f64>>)>,
}

impl Reload {
    /// Re-reads the config and applies its worker counts; a config that
    /// does not validate is refused and the running one stays. Logs go to
    /// stderr (the journal under systemd), so there is no file to reopen.
    fn run(&self) {
        let _ = std::io::stderr().flush();
        let Some(path) = &self.source.config else {
            log::warn!("SIGHUP: running on the embedded config; nothing to re-read");
            return;
        };
        // The same --set overrides apply again.
        log::info!("SIGHUP: re-reading {}", path.display());
        let config = match self.source.load(&self.registry) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload refused, the running config stays: {e}");
                return;
            }
        };
        log::info!(
            "reload: {} is valid; applying worker counts (other changes need a restart)",
            path.display()
        );
        let running = self.stats.snapshot();
        for p in &config.pools {
            if running.pools.contains_key(&p.name) {
                // The manager changes only what differs, and logs it.
                self.handle.resize(&p.name, p.count);
            } else {
                log::warn!(
                    "reload: pool {} is new; adding a pool needs a restart",
                    p.name
                );
            }
        }
        for name in running.pools.keys() {
            if !config.pools.iter().any(|p| &p.name == name) {
                log::warn!(
                    "reload: pool {name} is no longer configured; it keeps running until a restart"
                );
            }
        }
        for p in &config.providers {
            let Some(rate) = p.rate_limit() else { continue };
            let Some((health, applied)) = self.providers.iter().find(|(h, _)| h.name() == p.name)
            else {
                continue;
            };
            let Ok(mut applied) = applied.lock() else {
                continue;
            };
            if *applied != Some(rate) {
                log::info!("reload: provider {}: rate_limit {rate} job(s)/s", p.name);
                health.set_rate_limit(rate);
                *applied = Some(rate);
            }
        }
    }
}

fn print_options(registry: &Registry, json: bool) {
    let docs: Vec<crate::TypeDoc> = std::iter::once(Config::describe_manager())
        .chain(registry.describe())
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&docs).unwrap_or_default()
        );
        return;
    }
    let mut section = "";
    for t in docs {
        if t.section != section {
            section = t.section;
            println!(
                "# {section}{}\n",
                if section == "manager" { "" } else { "s" }
            );
        }
        if section == "manager" {
            println!("manager:\n  {}", t.description);
        } else {
            println!("{section} type: {}\n  {}", t.name, t.description);
        }
        let key_w = t.options.iter().map(|o| o.key.len()).max().unwrap_or(0);
        let ty_w = t.options.iter().map(|o| o.ty.len()).max().unwrap_or(0);
        for o in &t.options {
            println!(
                "  {:key_w$}  {:ty_w$}  default: {}  {}",
                o.key, o.ty, o.default, o.description
            );
        }
        println!();
    }
}
