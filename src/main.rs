//! The `goworker` binary: subcommands mapped to exit codes. Everything
//! else lives in the library.

use clap::{Parser, Subcommand};
use goworker::{Config, Error, ProviderAdmin, Registry, Service};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Plugin-based work manager: providers bring jobs in, pools of OS-thread
/// workers run them.
#[derive(Parser, Debug)]
#[command(name = "goworker", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service (without -c: the embedded default config).
    Run {
        /// Config file (YAML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file: exit 0, or 2 with the error.
    Check {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print every provider, worker and failure handler type with its options.
    Options,
    /// Submit a job through a configured provider (a file with one job, or
    /// `-` for one JSON job per line on stdin).
    Enqueue {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// Provider name (default: the only provider that takes submissions).
        #[arg(long)]
        provider: Option<String>,
        /// JOB.json, or - for stdin.
        job: String,
    },
    /// Inspect and re-queue dead letters.
    Dead {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// Provider name (default: the only provider with dead letters).
        #[arg(long)]
        provider: Option<String>,
        #[command(subcommand)]
        action: DeadAction,
    },
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

/// An error and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match e {
            Error::Config(_) => 2,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("goworker: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

fn run(args: Args) -> Result<(), Failure> {
    let registry = Registry::with_builtins();
    match args.command {
        Command::Run { config } => serve(load(config.as_deref(), &registry)?),
        Command::Check { config } => {
            let c = load(Some(&config), &registry)?;
            println!(
                "{}: OK ({} provider(s), {} pool(s), {} failure handler(s))",
                config.display(),
                c.providers.len(),
                c.pools.len(),
                c.failure_handlers.len()
            );
            Ok(())
        }
        Command::Options => {
            print_options(&registry);
            Ok(())
        }
        Command::Enqueue {
            config,
            provider,
            job,
        } => {
            let mut c = load(Some(&config), &registry)?;
            let admin = admin(&mut c, provider.as_deref())?;
            enqueue(admin, &job)
        }
        Command::Dead {
            config,
            provider,
            action,
        } => {
            let mut c = load(Some(&config), &registry)?;
            let admin = admin(&mut c, provider.as_deref())?;
            dead(admin, action)
        }
    }
}

fn admin<'a>(c: &'a mut Config, name: Option<&str>) -> Result<&'a mut dyn ProviderAdmin, Failure> {
    let usage = |m: String| Failure {
        code: 2,
        message: m,
    };
    let index = match name {
        Some(n) => c
            .providers
            .iter()
            .position(|p| p.name == n)
            .ok_or_else(|| usage(format!("no provider named {n:?}")))?,
        None => {
            let capable: Vec<usize> = (0..c.providers.len())
                .filter(|i| c.providers[*i].admin().is_some())
                .collect();
            match capable.as_slice() {
                [one] => *one,
                [] => return Err(usage("no provider in this config supports it".into())),
                _ => {
                    return Err(usage(
                        "several providers could; name one with --provider".into(),
                    ));
                }
            }
        }
    };
    let p = &mut c.providers[index];
    let (pname, kind) = (p.name.clone(), p.kind.clone());
    p.admin().ok_or_else(|| {
        usage(format!(
            "provider {pname:?} (type {kind}) does not support it"
        ))
    })
}

fn enqueue(admin: &mut dyn ProviderAdmin, job: &str) -> Result<(), Failure> {
    let payloads: Vec<Vec<u8>> = if job == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| Failure {
            code: 1,
            message: format!("stdin: {e}"),
        })?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect()
    } else {
        vec![std::fs::read(job).map_err(|e| Failure {
            code: 1,
            message: format!("{job}: {e}"),
        })?]
    };
    for (n, payload) in payloads.iter().enumerate() {
        // Refuse what would only be dead-lettered, before it is stored.
        if let Err(m) = goworker::Job::parse(payload) {
            let at = if job == "-" {
                format!("stdin line {}", n + 1)
            } else {
                job.to_string()
            };
            return Err(Failure {
                code: 1,
                message: format!("{at}: {}", m.reason),
            });
        }
        let id = admin.enqueue(payload)?;
        println!("{id}");
    }
    Ok(())
}

fn dead(admin: &mut dyn ProviderAdmin, action: DeadAction) -> Result<(), Failure> {
    match action {
        DeadAction::List => {
            for r in admin.dead_list()? {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            }
        }
        DeadAction::Retry { id, all } => {
            let n = match (id.as_deref(), all) {
                (Some(id), false) => admin.dead_retry(Some(id))?,
                (None, true) => admin.dead_retry(None)?,
                _ => {
                    return Err(Failure {
                        code: 2,
                        message: "give a job id or --all".into(),
                    });
                }
            };
            println!("re-queued {n} job(s)");
        }
        DeadAction::Purge => println!("purged {} dead letter(s)", admin.dead_purge()?),
    }
    Ok(())
}

fn load(path: Option<&Path>, registry: &Registry) -> Result<Config, Failure> {
    let c = match path {
        Some(p) => Config::load(p, registry),
        None => Config::parse(goworker::EXAMPLE_CONFIG, registry).map_err(|mut e| {
            e.file = Some(PathBuf::from("<embedded config.example.yaml>"));
            e
        }),
    };
    c.map_err(|e| Failure {
        code: 2,
        message: e.to_string(),
    })
}

fn serve(config: Config) -> Result<(), Failure> {
    let service = Service::builder(config).build()?;
    // A provider that cannot open its source (corrupt database, port in
    // use) is a start-up failure, like a bad config: exit 2.
    let running = service.start().map_err(|e| Failure {
        code: 2,
        message: e.to_string(),
    })?;
    let handle = running.shutdown_handle();
    let mut signals = 0u32;
    ctrlc::set_handler(move || {
        signals += 1;
        if signals == 1 {
            log::info!("signal received: finishing running jobs (send it again to exit at once)");
            handle.shutdown();
        } else {
            log::warn!(
                "second signal: killing running jobs and exiting; they run again after restart"
            );
            handle.kill_running();
            std::process::exit(1);
        }
    })
    .map_err(|e| Failure {
        code: 1,
        message: format!("cannot install signal handler: {e}"),
    })?;
    let report = running.wait();
    if let Some(p) = report.failed_provider {
        return Err(Failure {
            code: 1,
            message: format!("provider {p} failed; stopped"),
        });
    }
    log::info!("stopped: {} job(s) handed back", report.released);
    Ok(())
}

fn print_options(registry: &Registry) {
    let mut section = "";
    for t in registry.describe() {
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
