//! A user's own provider type, compiled into their own binary: a spool
//! directory, like GoWorker's file provider.
//!
//! Producers drop jobs as JSON files (`*.json`) into a folder. The provider
//! claims each by renaming it into `processing/` (so a crash leaves it
//! there, and the next start puts it back), and when the job has ended
//! moves it to `done/` or, with its dead-letter record beside it, to
//! `failed/`. It offers two capabilities besides bringing jobs in:
//! `goworker enqueue` writes a file into the folder, and `goworker dead`
//! lists, re-queues and purges `failed/`.
//!
//! Run: `cargo run --example custom_provider -- run -c examples/spool.yaml`,
//! then `echo '{"type":"noop"}' > spool/hello.json`.

use goworker::{
    Acker, DeadLetters, Delivery, Enqueue, Error, FailureRecord, Job, PluginError, Provider,
    ProviderContext, ProviderType, Registry, Report,
};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The `spool` provider type: its options, as written in YAML beside `type`
/// and `name`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Spool {
    /// The folder jobs are dropped into (created when missing). Required.
    path: PathBuf,
    /// How often the folder is looked at when it was empty, in
    /// milliseconds. Default: 200.
    #[serde(default = "default_poll_ms")]
    poll_ms: u64,
    /// Largest job file read, in bytes; a larger one goes to `failed/`
    /// unread. Default: 1048576.
    #[serde(default = "default_max_file")]
    max_file: u64,
}

fn default_poll_ms() -> u64 {
    200
}

fn default_max_file() -> u64 {
    1 << 20
}

impl ProviderType for Spool {
    const TYPE: &'static str = "spool";
    const DESCRIPTION: &'static str =
        "jobs dropped as JSON files into a folder; moved to done/ or failed/ when they end";

    fn build(self, name: &str) -> Result<Box<dyn Provider>, PluginError> {
        if self.poll_ms == 0 || self.poll_ms > 60_000 {
            return Err(PluginError::at("poll_ms", "from 1 to 60000"));
        }
        Ok(Box::new(SpoolProvider {
            name: name.to_string(),
            dirs: Dirs(self.path),
            poll: Duration::from_millis(self.poll_ms),
            max_file: self.max_file,
            settle: crossbeam_channel::unbounded(),
        }))
    }
}

/// The folder and its three sub-folders.
#[derive(Debug, Clone)]
struct Dirs(PathBuf);

impl Dirs {
    fn sub(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn create(&self) -> std::io::Result<()> {
        for d in ["processing", "done", "failed"] {
            fs::create_dir_all(self.sub(d))?;
        }
        Ok(())
    }

    /// `*.json` files in `dir`, oldest name first (name files by time, e.g.
    /// with a ULID, for first-in first-out).
    fn jobs_in(dir: &Path) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// How a job ended, sent from the manager thread to the provider's thread,
/// which moves the file (an acker must not block the manager).
enum Settle {
    Done(String),
    Failed(String, Box<FailureRecord>),
    Back(String),
}

struct SpoolProvider {
    name: String,
    dirs: Dirs,
    poll: Duration,
    max_file: u64,
    settle: (
        crossbeam_channel::Sender<Settle>,
        crossbeam_channel::Receiver<Settle>,
    ),
}

impl SpoolProvider {
    fn fail(&self, m: impl std::fmt::Display) -> Error {
        Error::provider(&self.name, m.to_string())
    }

    /// Claims one file: renames it into `processing/` (a rename is atomic,
    /// so two processes never claim the same file), then reads it.
    fn claim(&self, file: &str) -> Option<Vec<u8>> {
        let from = self.dirs.0.join(file);
        let to = self.dirs.sub("processing").join(file);
        fs::rename(&from, &to).ok()?;
        let mut raw = Vec::new();
        let read =
            fs::File::open(&to).and_then(|f| f.take(self.max_file + 1).read_to_end(&mut raw));
        match read {
            Ok(n) if (n as u64) <= self.max_file => Some(raw),
            Ok(_) => {
                let why = format!("larger than max_file ({} bytes)", self.max_file);
                self.apply(Settle::Failed(file.into(), Box::new(self.refused(&why))));
                None
            }
            Err(e) => {
                let why = format!("unreadable: {e}");
                self.apply(Settle::Failed(file.into(), Box::new(self.refused(&why))));
                None
            }
        }
    }

    /// The record of a file refused before it became a job.
    fn refused(&self, why: &str) -> FailureRecord {
        let m = goworker::Malformed {
            raw: String::new(),
            reason: why.to_string(),
        };
        FailureRecord::malformed(&self.name, &m)
    }

    /// Moves a claimed file to where its outcome says.
    fn apply(&self, s: Settle) {
        let processing = self.dirs.sub("processing");
        let result = match &s {
            Settle::Done(f) => fs::rename(processing.join(f), self.dirs.sub("done").join(f)),
            Settle::Back(f) => fs::rename(processing.join(f), self.dirs.0.join(f)),
            Settle::Failed(f, record) => {
                let failed = self.dirs.sub("failed");
                let text = serde_json::to_vec_pretty(record).unwrap_or_default();
                write_atomically(&failed, &format!("{f}.error"), &text)
                    .and_then(|()| fs::rename(processing.join(f), failed.join(f)))
            }
        };
        if let Err(e) = result {
            log::error!("provider {}: cannot move a settled file: {e}", self.name);
        }
    }
}

/// Writes `bytes` as `dir/name` through a hidden temporary file and a
/// rename, so a reader never sees half a file.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))
}

impl Provider for SpoolProvider {
    fn open(&mut self, _ctx: &ProviderContext) -> Result<(), Error> {
        self.dirs
            .create()
            .map_err(|e| self.fail(format!("{}: {e}", self.dirs.0.display())))?;
        // Files left in processing/ by a process that died run again.
        let processing = self.dirs.sub("processing");
        for f in Dirs::jobs_in(&processing).map_err(|e| self.fail(e))? {
            fs::rename(processing.join(&f), self.dirs.0.join(&f)).map_err(|e| self.fail(e))?;
            log::info!(
                "provider {}: {f} was being processed when a process stopped; it runs again",
                self.name
            );
        }
        Ok(())
    }

    fn run(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
        ctx.set_up();
        while !ctx.is_stopping() {
            let files = Dirs::jobs_in(&self.dirs.0).map_err(|e| self.fail(e))?;
            for file in &files {
                let Some(raw) = self.claim(file) else {
                    continue;
                };
                let acker = Box::new(SpoolAcker {
                    file: file.clone(),
                    tx: self.settle.0.clone(),
                });
                if let Err(d) = ctx.send(Delivery::parse(&raw, acker)) {
                    d.release(); // shutting down: back into the folder
                    break;
                }
            }
            // Settle what ended; when the folder was empty, wait a poll
            // interval (or until shutdown begins) before looking again.
            let wait = if files.is_empty() {
                self.poll
            } else {
                Duration::ZERO
            };
            crossbeam_channel::select! {
                recv(self.settle.1) -> s => if let Ok(s) = s { self.apply(s) },
                recv(ctx.stop_signal()) -> _ => {},
                default(wait) => {},
            }
            while let Ok(s) = self.settle.1.try_recv() {
                self.apply(s);
            }
        }
        Ok(())
    }

    fn finish(&mut self) {
        // Every delivery is settled by now: apply what is left.
        while let Ok(s) = self.settle.1.try_recv() {
            self.apply(s);
        }
    }

    fn enqueue(&mut self) -> Option<&mut dyn Enqueue> {
        Some(self)
    }

    fn dead_letters(&mut self) -> Option<&mut dyn DeadLetters> {
        Some(self)
    }
}

struct SpoolAcker {
    file: String,
    tx: crossbeam_channel::Sender<Settle>,
}

impl Acker for SpoolAcker {
    fn ack(self: Box<Self>, _report: &Report) {
        let _ = self.tx.send(Settle::Done(self.file));
    }

    fn dead(self: Box<Self>, record: &FailureRecord, _report: &Report) {
        let _ = self
            .tx
            .send(Settle::Failed(self.file, Box::new(record.clone())));
    }

    fn release(self: Box<Self>, _job: Option<&Job>) {
        let _ = self.tx.send(Settle::Back(self.file));
    }
}

impl Enqueue for SpoolProvider {
    /// Writes the job into the folder as `<id>.json`; the running service
    /// (or the next one started) picks it up.
    fn enqueue(&mut self, payload: &[u8]) -> Result<String, Error> {
        let job = Job::parse(payload).map_err(|m| self.fail(m.reason))?;
        self.dirs.create().map_err(|e| self.fail(e))?;
        let name = format!("{}.json", job.id);
        if name.contains('/') || name.starts_with('.') {
            return Err(self.fail(format!("job id {:?} cannot name a file", job.id)));
        }
        write_atomically(&self.dirs.0, &name, job.to_json().as_bytes())
            .map_err(|e| self.fail(e))?;
        Ok(job.id)
    }
}

impl SpoolProvider {
    /// The dead-letter record kept beside a file in `failed/`.
    fn record(&self, file: &str) -> Result<FailureRecord, Error> {
        let path = self.dirs.sub("failed").join(format!("{file}.error"));
        let text = fs::read(&path).map_err(|e| self.fail(format!("{}: {e}", path.display())))?;
        serde_json::from_slice(&text).map_err(|e| self.fail(format!("{}: {e}", path.display())))
    }
}

impl DeadLetters for SpoolProvider {
    fn list(&mut self) -> Result<Vec<FailureRecord>, Error> {
        let files = Dirs::jobs_in(&self.dirs.sub("failed")).map_err(|e| self.fail(e))?;
        files.iter().rev().map(|f| self.record(f)).collect()
    }

    fn retry(&mut self, id: Option<&str>) -> Result<usize, Error> {
        let failed = self.dirs.sub("failed");
        let mut n = 0;
        for f in Dirs::jobs_in(&failed).map_err(|e| self.fail(e))? {
            let record = self.record(&f)?;
            // A file that never was a job would only fail again.
            if record.job.is_none() || id.is_some_and(|id| record.id.as_deref() != Some(id)) {
                continue;
            }
            fs::rename(failed.join(&f), self.dirs.0.join(&f)).map_err(|e| self.fail(e))?;
            let _ = fs::remove_file(failed.join(format!("{f}.error")));
            n += 1;
        }
        match (n, id) {
            (0, Some(id)) => Err(self.fail(format!("no dead letter with job id {id:?}"))),
            _ => Ok(n),
        }
    }

    fn purge(&mut self) -> Result<usize, Error> {
        let failed = self.dirs.sub("failed");
        let files = Dirs::jobs_in(&failed).map_err(|e| self.fail(e))?;
        for f in &files {
            fs::remove_file(failed.join(f)).map_err(|e| self.fail(e))?;
            let _ = fs::remove_file(failed.join(format!("{f}.error")));
        }
        Ok(files.len())
    }
}

/// The whole program: the built-in types, `spool`, and the stock CLI.
fn main() -> ExitCode {
    let mut registry = Registry::with_builtins();
    registry.register_provider::<Spool>();
    goworker::app::main(registry)
}
