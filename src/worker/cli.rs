//! The `cli` worker: runs an allow-listed command with argv, never a shell.
//!
//! Each attempt runs in its own process group, so a timeout or shutdown
//! kills the command and every child it started. The worker waits on a
//! pidfd and the output pipe with one `poll(2)`: no extra thread, no
//! polling loop, and the timeout is exact.
//!
//! A job gets only what its pool grants: the variables of `allow_env`, a
//! timeout up to `max_timeout`, and the inherited environment that
//! `inherit_env` names, never the secrets named by the config's `*_env`
//! options.

use super::{JobContext, PoolInfo, Worker, WorkerType, kill_process_group};
use crate::error::PluginError;
use crate::job::{Job, Outcome};
use crate::worker::SecretEnv;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pool's `max_timeout` when it sets neither that nor `timeout`.
pub(crate) const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Options of the `cli` worker type.
#[derive(Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CliOptions {
    /// Commands jobs may run: absolute paths or names looked up in PATH, matched on the resolved path. Empty: nothing runs.
    pub allow: Vec<String>,
    /// What commands inherit from the service's environment: minimal (PATH, HOME, USER, LOGNAME, LANG, LANGUAGE, LC_*, TZ, TMPDIR), all (true), or none (false). Secrets (variables named by any *_env option) are never passed on.
    pub inherit_env: InheritEnv,
    /// Variables a job's params.env may set (exact names). A job setting any other is a final failure. PATH, LD_* and other loader/shell hooks (GLIBC_TUNABLES, GCONV_PATH, LOCPATH, NLSPATH, BASH_ENV, ENV, BASH_FUNC_*) cannot be listed.
    pub allow_env: Vec<String>,
    /// Longest time limit an attempt may have: a job asking for more is a final failure, and an attempt with no timeout at all stops here. Default: the pool's timeout, or 24h when it sets none.
    pub max_timeout: Option<crate::DurationValue>,
}

impl Default for CliOptions {
    fn default() -> CliOptions {
        CliOptions {
            allow: Vec::new(),
            inherit_env: InheritEnv::Minimal,
            allow_env: Vec::new(),
            max_timeout: None,
        }
    }
}

/// Which of the service's environment variables a command inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InheritEnv {
    /// `PATH`, `HOME`, `USER`, `LOGNAME`, `LANG`, `LANGUAGE`, `LC_*`, `TZ`
    /// and `TMPDIR`: enough for `#!/usr/bin/env` scripts and locales.
    Minimal,
    /// Everything (YAML `true` too).
    All,
    /// Nothing (YAML `false` too).
    None,
}

impl<'de> serde::Deserialize<'de> for InheritEnv {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<InheritEnv, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = InheritEnv;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("minimal, all, none, true or false")
            }
            fn visit_bool<E>(self, b: bool) -> Result<InheritEnv, E> {
                Ok(if b { InheritEnv::All } else { InheritEnv::None })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<InheritEnv, E> {
                match s {
                    "minimal" => Ok(InheritEnv::Minimal),
                    "all" => Ok(InheritEnv::All),
                    "none" => Ok(InheritEnv::None),
                    _ => Err(E::unknown_variant(s, &["minimal", "all", "none"])),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Variables `inherit_env: minimal` passes on (plus every `LC_*`).
const MINIMAL_ENV: [&str; 8] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

fn minimal_env(name: &str) -> bool {
    MINIMAL_ENV.contains(&name) || name.starts_with("LC_")
}

/// Why `allow_env` may not list a variable: it makes the loader, libc or a
/// shell run code or read files of the job's choosing.
fn never_allowed(name: &str) -> Option<&'static str> {
    const LOADER: [&str; 7] = [
        "PATH",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "BASH_ENV",
        "ENV",
    ];
    if name.starts_with("LD_") {
        Some("LD_* variables steer the dynamic loader")
    } else if name.starts_with("BASH_FUNC_") {
        Some("BASH_FUNC_* variables define shell functions")
    } else if LOADER.contains(&name) {
        Some("it decides which programs, libraries or startup files are loaded")
    } else {
        None
    }
}

/// An environment variable name a process can be given.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// The `cli` worker type: a validated allow list.
#[derive(Debug)]
pub struct Cli {
    shared: Arc<Shared>,
}

/// What every thread of one pool shares.
#[derive(Debug)]
struct Shared {
    allow: Vec<PathBuf>,
    inherit_env: InheritEnv,
    allow_env: BTreeSet<String>,
    max_timeout: Duration,
    secret_env: SecretEnv,
}

impl WorkerType for Cli {
    type Options = CliOptions;
    const TYPE: &'static str = "cli";
    const DESCRIPTION: &'static str =
        "runs an allow-listed command (argv, no shell) in its own process group";

    fn from_options(o: CliOptions, pool: &PoolInfo) -> Result<Cli, PluginError> {
        let mut allow = Vec::new();
        for (i, entry) in o.allow.iter().enumerate() {
            if entry.is_empty() {
                return Err(PluginError::at(format!("allow[{i}]"), "empty command"));
            }
            // An entry that does not exist yet is kept as written: it may be
            // installed later, and matching then resolves the job's command.
            // `check` and `run` say so, since it is more often a typo.
            allow.push(resolve(entry).unwrap_or_else(|| {
                log::warn!(
                    "pool {}: allow[{i}]: {entry:?} names no executable (yet); jobs asking for it fail as not found until it exists",
                    pool.name
                );
                PathBuf::from(entry)
            }));
        }
        let mut allow_env = BTreeSet::new();
        for (i, name) in o.allow_env.iter().enumerate() {
            if !valid_env_name(name) {
                return Err(PluginError::at(
                    format!("allow_env[{i}]"),
                    format!("{name:?} is not a variable name"),
                ));
            }
            if let Some(why) = never_allowed(name) {
                return Err(PluginError::at(
                    format!("allow_env[{i}]"),
                    format!("{name} can never be set by a job: {why}"),
                ));
            }
            allow_env.insert(name.clone());
        }
        let max_timeout = match &o.max_timeout {
            Some(t) => t.parse().map_err(|e| PluginError::at("max_timeout", e))?,
            None => pool.timeout.unwrap_or(DEFAULT_MAX_TIMEOUT),
        };
        if let Some(t) = pool.timeout.filter(|t| *t > max_timeout) {
            return Err(PluginError::new(format!(
                "max_timeout ({}) is shorter than the pool's timeout ({})",
                humantime::format_duration(max_timeout),
                humantime::format_duration(t)
            )));
        }
        Ok(Cli {
            shared: Arc::new(Shared {
                allow,
                inherit_env: o.inherit_env,
                allow_env,
                max_timeout,
                secret_env: pool.secret_env.clone(),
            }),
        })
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(CliWorker {
            shared: self.shared.clone(),
        })
    }
}

/// `params` of a `cli` job.
#[derive(Debug, serde::Deserialize)]
struct CliParams {
    command: String,
    #[serde(default)]
    params: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    stdin: Option<String>,
}

/// Resolves a command the way execvp would, then follows symlinks.
pub(crate) fn resolve(command: &str) -> Option<PathBuf> {
    let candidate = if command.contains('/') {
        PathBuf::from(command)
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        std::env::split_paths(&path)
            .map(|dir| dir.join(command))
            .find(|p| is_executable(p))?
    };
    candidate.canonicalize().ok().filter(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Why a job's `cwd` cannot be used, if it cannot.
fn cwd_problem(dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("cwd {}: not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("cwd {}: no such directory", dir.display()))
        }
        Err(e) => Some(format!("cwd {}: {e}", dir.display())),
    }
}

struct CliWorker {
    shared: Arc<Shared>,
}

impl CliWorker {
    /// Checks what the job asks for against the pool's limits; a refusal
    /// is final, since no retry changes it.
    fn refusal(&self, job: &Job, params: &CliParams) -> Option<String> {
        for (name, value) in &params.env {
            if !self.shared.allow_env.contains(name) {
                return Some(format!(
                    "env: variable {name:?} may not be set by jobs of this pool (not in its allow_env)"
                ));
            }
            if value.contains('\0') {
                return Some(format!("env: the value of {name} contains a NUL byte"));
            }
        }
        if let Some(t) = job.timeout.filter(|t| *t > self.shared.max_timeout) {
            return Some(format!(
                "timeout {} is over the pool's max_timeout of {}",
                humantime::format_duration(t),
                humantime::format_duration(self.shared.max_timeout)
            ));
        }
        if let Some(dir) = &params.cwd {
            return cwd_problem(dir);
        }
        None
    }
}

impl Worker for CliWorker {
    fn run(&mut self, job: &Job, ctx: &JobContext) -> Outcome {
        let params: CliParams = match serde_json::from_value(job.params.clone()) {
            Ok(p) => p,
            Err(e) => return Outcome::fatal(format!("invalid cli params: {e}")),
        };
        let Some(program) = resolve(&params.command) else {
            return Outcome::fatal(format!("command not found: {}", params.command));
        };
        if !self.shared.allow.contains(&program) {
            return Outcome::fatal(format!(
                "command not allowed: {} ({})",
                params.command,
                program.display()
            ));
        }
        if let Some(why) = self.refusal(job, &params) {
            return Outcome::fatal(why);
        }
        let limit = if job.capture_output {
            ctx.capture_limit()
        } else {
            2048
        };
        let spawn = Spawn {
            program: &program,
            arg0: &params.command,
            args: &params.params,
            env: &params.env,
            inherit_env: self.shared.inherit_env,
            secret_env: &self.shared.secret_env,
            cwd: params.cwd.as_deref(),
            stdin: params.stdin.clone().map(String::into_bytes),
            // No attempt runs past max_timeout, whoever set its timeout.
            timeout: Some(
                ctx.timeout()
                    .map_or(self.shared.max_timeout, |t| t.min(self.shared.max_timeout)),
            ),
            limit,
        };
        match spawn_and_wait(spawn, &|g| ctx.set_process_group(g)) {
            Ok(run) => run.into_outcome(job.capture_output, ctx),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The directory may have gone since it was checked.
                match params.cwd.as_deref().and_then(cwd_problem) {
                    Some(why) => Outcome::fatal(why),
                    None => Outcome::fatal(format!("command not found: {}", params.command)),
                }
            }
            // A NUL byte in an argument: no retry helps.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                Outcome::fatal(format!("cannot run {}: {e}", params.command))
            }
            Err(e) => Outcome::failed(format!("cannot run {}: {e}", params.command)),
        }
    }
}

/// How a command run ended.
pub(crate) struct Run {
    /// Its exit status (`None` when it timed out).
    pub(crate) status: Option<ExitStatus>,
    /// Set when it was killed at its timeout.
    pub(crate) timed_out: Option<Duration>,
    /// Kept stdout and stderr.
    pub(crate) output: Vec<u8>,
    /// Whether output past the limit was dropped.
    pub(crate) truncated: bool,
}

impl Run {
    /// The last non-blank output line, for error messages.
    pub(crate) fn last_line(&self) -> String {
        String::from_utf8_lossy(&self.output)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    }

    fn into_outcome(self, capture: bool, ctx: &JobContext) -> Outcome {
        let mut text = String::from_utf8_lossy(&self.output).into_owned();
        if self.truncated {
            text.push_str("\n[output truncated]");
        }
        let last_line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        let output = capture.then_some(text);
        let failed = |m: String| {
            let m = if last_line.is_empty() {
                m
            } else {
                format!("{m}: {last_line}")
            };
            Outcome::failed(m).with_output(output.clone())
        };
        if let Some(t) = self.timed_out {
            return Outcome::failed(format!("timed out after {}", humantime::format_duration(t)))
                .with_output(output.clone());
        }
        if ctx.is_aborted() {
            return Outcome::failed("killed at shutdown").with_output(output.clone());
        }
        match self.status {
            Some(s) if s.success() => Outcome::success().with_output(output),
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => failed(format!("exit status {code}")),
                (None, Some(sig)) => failed(format!("killed by signal {sig}")),
                _ => failed("ended abnormally".into()),
            },
            None => failed("ended abnormally".into()),
        }
    }
}

/// One command to run: what the `cli` worker and the `cli` failure
/// handler both spawn.
pub(crate) struct Spawn<'a> {
    /// The resolved program.
    pub(crate) program: &'a Path,
    /// argv[0] as the caller wrote it.
    pub(crate) arg0: &'a str,
    pub(crate) args: &'a [String],
    pub(crate) env: &'a BTreeMap<String, String>,
    /// What it inherits from the service's environment.
    pub(crate) inherit_env: InheritEnv,
    /// Variables never passed on, whatever `inherit_env` says.
    pub(crate) secret_env: &'a BTreeSet<String>,
    pub(crate) cwd: Option<&'a Path>,
    /// DurationValue to the command's stdin from a helper thread; `None`: /dev/null.
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) timeout: Option<Duration>,
    /// Output bytes kept.
    pub(crate) limit: usize,
}

/// Runs a command in its own process group and waits for it (or its
/// timeout), keeping up to `limit` bytes of stdout and stderr together.
/// `on_group` is told the process group while it runs, then `None`.
///
/// Whatever happens once it is started (even a panic here or in
/// `on_group`), its whole process group is killed, the command is reaped
/// and `on_group` is told `None`.
pub(crate) fn spawn_and_wait(s: Spawn<'_>, on_group: &dyn Fn(Option<i32>)) -> std::io::Result<Run> {
    let (reader, writer) = std::io::pipe()?;
    let child = {
        let mut cmd = Command::new(s.program);
        cmd.arg0(s.arg0).args(s.args).process_group(0);
        set_env(&mut cmd, s.inherit_env, s.secret_env);
        cmd.envs(s.env);
        if let Some(dir) = s.cwd {
            cmd.current_dir(dir);
        }
        cmd.stdin(if s.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(writer.try_clone()?).stderr(writer);
        cmd.spawn()?
        // `cmd` drops here, closing our copies of the pipe's write end.
    };
    let mut group = Group {
        pgid: child.id() as i32,
        child,
        on_group,
        ended: false,
    };
    on_group(Some(group.pgid));
    if let (Some(data), Some(mut stdin)) = (s.stdin, group.child.stdin.take()) {
        // A thread, so a command that writes before reading cannot
        // deadlock against us; it ends when the command closes stdin.
        let _ = std::thread::Builder::new()
            .name("goworker-cli-stdin".into())
            .spawn(move || stdin.write_all(&data));
    }
    let result = wait(&mut group.child, reader, s.timeout, s.limit);
    let status = group.end();
    let mut run = result?;
    if run.timed_out.is_none() {
        run.status = Some(status?);
    }
    Ok(run)
}

/// The environment a command starts with, before the job's own `env`.
fn set_env(cmd: &mut Command, inherit: InheritEnv, secret: &BTreeSet<String>) {
    match inherit {
        InheritEnv::All => {
            for name in secret {
                cmd.env_remove(name);
            }
        }
        InheritEnv::Minimal => {
            cmd.env_clear();
            for (name, value) in std::env::vars_os() {
                let keep = name
                    .to_str()
                    .is_some_and(|n| minimal_env(n) && !secret.contains(n));
                if keep {
                    cmd.env(name, value);
                }
            }
        }
        InheritEnv::None => {
            cmd.env_clear();
        }
    }
}

/// A started command's process group. Ending it (or dropping it, as a
/// panic does) kills whatever is left in the group, reaps the command and
/// unregisters the group.
struct Group<'a> {
    pgid: i32,
    child: Child,
    on_group: &'a dyn Fn(Option<i32>),
    ended: bool,
}

impl Group<'_> {
    fn end(&mut self) -> std::io::Result<ExitStatus> {
        self.ended = true;
        // Killed before the leader is reaped, so the group id cannot have
        // been reused.
        kill_process_group(self.pgid);
        let status = self.child.wait();
        (self.on_group)(None);
        status
    }
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.end();
        }
    }
}

/// Waits for the child to exit (or the deadline), reading its output.
fn wait(
    child: &mut Child,
    mut reader: std::io::PipeReader,
    timeout: Option<Duration>,
    limit: usize,
) -> std::io::Result<Run> {
    // Too far to represent: no deadline, which is what it means.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let pidfd = pidfd_open(child.id());
    let mut run = Run {
        status: None,
        timed_out: None,
        output: Vec::new(),
        truncated: false,
    };
    let mut pipe_open = true;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut fds = Vec::with_capacity(2);
        if let Some(fd) = &pidfd {
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if pipe_open {
            fds.push(libc::pollfd {
                fd: reader.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let mut wait_ms = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            None => -1,
        };
        if pidfd.is_none() && !(0..=10).contains(&wait_ms) {
            wait_ms = 10; // no pidfd (old kernel): check the child every 10 ms
        }
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let pipe_ready = pipe_open && fds.last().is_some_and(|f| f.revents != 0);
        if pipe_ready {
            match reader.read(&mut buf) {
                Ok(0) => pipe_open = false,
                Ok(k) => keep(&mut run, &buf[..k], limit),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => pipe_open = false,
            }
        }
        let exited = match &pidfd {
            Some(_) => fds[0].revents != 0,
            None => child.try_wait()?.is_some(),
        };
        if exited {
            drain(&mut reader, &mut run, limit, pipe_open);
            return Ok(run);
        }
        if let Some(d) = deadline {
            if Instant::now() >= d {
                run.timed_out = timeout;
                return Ok(run);
            }
        }
        if !pipe_open && pidfd.is_none() && n == 0 {
            continue;
        }
    }
}

/// Reads what the exited command left in the pipe, without blocking on
/// grandchildren that still hold it open.
fn drain(reader: &mut std::io::PipeReader, run: &mut Run, limit: usize, open: bool) {
    if !open {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut fd = libc::pollfd {
            fd: reader.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        if n <= 0 {
            return;
        }
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => keep(run, &buf[..k], limit),
        }
    }
}

fn keep(run: &mut Run, chunk: &[u8], limit: usize) {
    let room = limit.saturating_sub(run.output.len());
    if chunk.len() > room {
        run.truncated = true;
    }
    run.output
        .extend_from_slice(&chunk[..chunk.len().min(room)]);
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn worker(allow: &[&str]) -> Box<dyn Worker> {
        let o = CliOptions {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            allow_env: vec!["GREETING".into()],
            ..CliOptions::default()
        };
        Cli::from_options(o, &pool(None, &[])).unwrap().new_worker()
    }

    fn pool(timeout: Option<Duration>, secrets: &[&str]) -> PoolInfo {
        PoolInfo {
            name: "cli".into(),
            count: 1,
            timeout,
            secret_env: Arc::new(secrets.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn is_final(out: &Outcome, starts: &str) -> bool {
        matches!(&out.result, Err(f) if !f.retryable && f.message.starts_with(starts))
    }

    fn job(params: serde_json::Value, capture: bool) -> Job {
        let mut j = Job::new("cli", params);
        j.capture_output = capture;
        j
    }

    #[test]
    fn runs_argv_and_captures_output() {
        let mut w = worker(&["echo", "/bin/sh"]);
        let out = w.run(
            &job(
                json!({"command": "echo", "params": ["a b", "$HOME;"]}),
                true,
            ),
            &JobContext::new(None, 1024),
        );
        assert_eq!(
            out,
            Outcome::success().with_output(Some("a b $HOME;\n".into()))
        );
    }

    #[test]
    fn env_cwd_and_stdin_reach_the_command() {
        let mut w = worker(&["sh"]);
        let j = job(
            json!({"command": "sh", "params": ["-c", "pwd; echo $GREETING; cat"], "env": {"GREETING": "hi"}, "cwd": "/tmp", "stdin": "from stdin"}),
            true,
        );
        let out = w.run(&j, &JobContext::new(None, 1024));
        assert_eq!(out.output.as_deref(), Some("/tmp\nhi\nfrom stdin"));
        assert!(out.is_success());
    }

    #[test]
    fn refusals_are_final() {
        let mut w = worker(&["echo"]);
        let ctx = JobContext::new(None, 1024);
        let out = w.run(
            &job(json!({"command": "sh", "params": ["-c", "true"]}), false),
            &ctx,
        );
        assert!(
            matches!(&out.result, Err(f) if !f.retryable && f.message.starts_with("command not allowed")),
            "{out:?}"
        );
        let out = w.run(
            &job(json!({"command": "no-such-command-here"}), false),
            &ctx,
        );
        assert!(
            matches!(&out.result, Err(f) if !f.retryable && f.message.starts_with("command not found")),
            "{out:?}"
        );
        let out = w.run(&job(json!({"params": ["x"]}), false), &ctx);
        assert!(
            matches!(&out.result, Err(f) if !f.retryable && f.message.contains("invalid cli params")),
            "{out:?}"
        );
        // An empty allow list runs nothing.
        let out = worker(&[]).run(&job(json!({"command": "echo"}), false), &ctx);
        assert!(matches!(&out.result, Err(f) if !f.retryable), "{out:?}");
    }

    #[test]
    fn failing_command_is_retryable_with_its_last_line() {
        let mut w = worker(&["sh"]);
        let out = w.run(
            &job(
                json!({"command": "sh", "params": ["-c", "echo boom >&2; exit 3"]}),
                false,
            ),
            &JobContext::new(None, 1024),
        );
        assert_eq!(
            out.result,
            Err(crate::job::Failure {
                message: "exit status 3: boom".into(),
                retryable: true
            })
        );
        assert_eq!(out.output, None);
    }

    #[test]
    fn capture_is_bounded() {
        let mut w = worker(&["sh"]);
        let out = w.run(
            &job(
                json!({"command": "sh", "params": ["-c", "head -c 100000 /dev/zero | tr '\\0' x"]}),
                true,
            ),
            &JobContext::new(None, 1000),
        );
        let text = out.output.unwrap();
        assert!(text.starts_with(&"x".repeat(1000)));
        assert!(text.ends_with("[output truncated]"));
    }

    #[test]
    fn timeout_kills_the_group_and_does_not_wait_for_grandchildren() {
        let mut w = worker(&["sh"]);
        let started = Instant::now();
        let j = job(
            json!({"command": "sh", "params": ["-c", "sleep 30 & sleep 30"]}),
            false,
        );
        let out = w.run(&j, &JobContext::new(Some(Duration::from_millis(300)), 1024));
        assert!(
            matches!(&out.result, Err(f) if f.retryable && f.message.starts_with("timed out")),
            "{out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        // A leader that exits leaves no background child holding the job open.
        let started = Instant::now();
        let out = w.run(
            &job(
                json!({"command": "sh", "params": ["-c", "sleep 30 & echo done"]}),
                true,
            ),
            &JobContext::new(None, 1024),
        );
        assert_eq!(out.output.as_deref(), Some("done\n"));
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn job_env_is_limited_to_the_pools_allow_env() {
        let mut w = worker(&["sh"]);
        let ctx = JobContext::new(None, 1024);
        for name in ["LD_PRELOAD", "PATH", "LD_LIBRARY_PATH", "HOME", "UNLISTED"] {
            let j = job(
                json!({"command": "sh", "params": ["-c", "echo ran"], "env": {"GREETING": "hi", name: "/tmp/x"}}),
                true,
            );
            let out = w.run(&j, &ctx);
            assert!(is_final(&out, "env: variable"), "{name}: {out:?}");
            let Err(f) = &out.result else { unreachable!() };
            assert!(f.message.contains(&format!("{name:?}")), "{f:?}");
            assert_eq!(out.output, None, "nothing ran");
        }
        let j = job(
            json!({"command": "sh", "params": ["-c", "echo x"], "env": {"GREETING": "a\0b"}}),
            false,
        );
        assert!(is_final(&w.run(&j, &ctx), "env: the value of GREETING"));
    }

    #[test]
    fn allow_env_cannot_list_loader_or_shell_hooks() {
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "PATH",
            "GLIBC_TUNABLES",
            "BASH_ENV",
            "BASH_FUNC_ls%%",
            "",
            "A=B",
        ] {
            let o = CliOptions {
                allow_env: vec!["OMP_THREADS".into(), name.into()],
                ..CliOptions::default()
            };
            let e = Cli::from_options(o, &pool(None, &[]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("allow_env[1]: "), "{name}: {e}");
        }
        let o = CliOptions {
            allow_env: vec!["OMP_THREADS".into(), "TZ".into()],
            ..CliOptions::default()
        };
        assert!(Cli::from_options(o, &pool(None, &[])).is_ok());
    }

    fn env_of(inherit: InheritEnv, secrets: &[&str]) -> String {
        let o = CliOptions {
            allow: vec!["sh".into()],
            allow_env: vec!["GREETING".into()],
            inherit_env: inherit,
            ..CliOptions::default()
        };
        let mut w = Cli::from_options(o, &pool(None, secrets))
            .unwrap()
            .new_worker();
        // The test's own environment has PATH and HOME, and cargo adds
        // CARGO_* variables.
        let j = job(
            json!({"command": "sh", "params": ["-c", "echo PATH=${PATH-unset} HOME=${HOME-unset} CARGO=${CARGO-unset} GREETING=$GREETING"], "env": {"GREETING": "hi"}}),
            true,
        );
        let out = w.run(&j, &JobContext::new(None, 4096));
        assert!(out.is_success(), "{out:?}");
        out.output.unwrap_or_default()
    }

    #[test]
    fn inherited_environment_follows_inherit_env_and_never_carries_secrets() {
        let path = std::env::var("PATH").unwrap();
        let home = std::env::var("HOME").unwrap();
        assert!(std::env::var("CARGO").is_ok(), "cargo sets CARGO for tests");
        let out = env_of(InheritEnv::Minimal, &[]);
        assert_eq!(
            out,
            format!("PATH={path} HOME={home} CARGO=unset GREETING=hi\n")
        );
        let out = env_of(InheritEnv::All, &[]);
        assert!(!out.contains("CARGO=unset"), "{out}");
        // Secrets are removed in every mode, even from the minimal set.
        let out = env_of(InheritEnv::All, &["HOME", "CARGO"]);
        assert!(
            out.ends_with("HOME=unset CARGO=unset GREETING=hi\n"),
            "{out}"
        );
        let out = env_of(InheritEnv::Minimal, &["HOME"]);
        assert!(out.contains("HOME=unset"), "{out}");
        // dash and bash set a default PATH of their own when none is given.
        let out = env_of(InheritEnv::None, &[]);
        assert!(out.contains("HOME=unset CARGO=unset GREETING=hi"), "{out}");
        assert!(!out.contains(&format!("PATH={path} ")), "{out}");
    }

    #[test]
    fn inherit_env_accepts_names_and_booleans() {
        for (yaml, want) in [
            ("minimal", InheritEnv::Minimal),
            ("all", InheritEnv::All),
            ("true", InheritEnv::All),
            ("none", InheritEnv::None),
            ("false", InheritEnv::None),
        ] {
            let o: CliOptions = serde_yaml::from_str(&format!("inherit_env: {yaml}")).unwrap();
            assert_eq!(o.inherit_env, want, "{yaml}");
        }
        assert_eq!(CliOptions::default().inherit_env, InheritEnv::Minimal);
        assert!(serde_yaml::from_str::<CliOptions>("inherit_env: some").is_err());
    }

    #[test]
    fn a_job_timeout_over_max_timeout_is_refused_without_running() {
        let mut w = worker(&["sh"]);
        let ctx = JobContext::new(None, 1024);
        // Huge values once overflowed `Instant` and panicked with the
        // command left running.
        for secs in [48 * 3600, 9_300_000_000_000_000_000, u64::MAX] {
            let mut j = job(json!({"command": "sh", "params": ["-c", "echo ran"]}), true);
            j.timeout = Some(Duration::from_secs(secs));
            let out = w.run(&j, &ctx);
            assert!(is_final(&out, "timeout "), "{out:?}");
            let Err(f) = &out.result else { unreachable!() };
            assert!(f.message.contains("max_timeout of 1day"), "{f:?}");
        }
        let mut j = job(json!({"command": "sh", "params": ["-c", "echo ran"]}), true);
        j.timeout = Some(Duration::from_secs(24 * 3600));
        assert!(w.run(&j, &ctx).is_success());
    }

    #[test]
    fn max_timeout_defaults_to_the_pools_timeout_and_cannot_be_shorter() {
        let minute = Some(Duration::from_secs(60));
        let o = CliOptions {
            allow: vec!["sh".into()],
            ..CliOptions::default()
        };
        let mut w = Cli::from_options(o, &pool(minute, &[]))
            .unwrap()
            .new_worker();
        let mut j = job(json!({"command": "sh", "params": ["-c", "true"]}), false);
        j.timeout = Some(Duration::from_secs(61));
        let out = w.run(&j, &JobContext::new(j.timeout, 1024));
        assert!(is_final(&out, "timeout 1m 1s is over"), "{out:?}");

        let o = CliOptions {
            max_timeout: Some("10s".into()),
            ..CliOptions::default()
        };
        let e = Cli::from_options(o, &pool(minute, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter than the pool's timeout"), "{e}");
        let o = CliOptions {
            max_timeout: Some("soon".into()),
            ..CliOptions::default()
        };
        assert!(Cli::from_options(o, &pool(None, &[])).is_err());
    }

    #[test]
    fn an_attempt_without_any_timeout_stops_at_max_timeout() {
        let o = CliOptions {
            allow: vec!["sh".into()],
            max_timeout: Some("300ms".into()),
            ..CliOptions::default()
        };
        let mut w = Cli::from_options(o, &pool(None, &[])).unwrap().new_worker();
        // Nor past it when a caller's context asks for longer.
        for ctx_timeout in [None, Some(Duration::from_secs(3600))] {
            let started = Instant::now();
            let out = w.run(
                &job(
                    json!({"command": "sh", "params": ["-c", "sleep 30"]}),
                    false,
                ),
                &JobContext::new(ctx_timeout, 1024),
            );
            assert_eq!(
                out.result,
                Err(crate::job::Failure {
                    message: "timed out after 300ms".into(),
                    retryable: true
                })
            );
            assert!(started.elapsed() < Duration::from_secs(20));
        }
    }

    #[test]
    fn a_missing_cwd_is_reported_as_such_and_is_final() {
        let mut w = worker(&["sh"]);
        let ctx = JobContext::new(None, 1024);
        let out = w.run(
            &job(
                json!({"command": "sh", "params": ["-c", "true"], "cwd": "/no/such/dir"}),
                false,
            ),
            &ctx,
        );
        assert_eq!(
            out.result,
            Err(crate::job::Failure {
                message: "cwd /no/such/dir: no such directory".into(),
                retryable: false
            })
        );
        let out = w.run(
            &job(
                json!({"command": "sh", "params": ["-c", "true"], "cwd": "/bin/sh"}),
                false,
            ),
            &ctx,
        );
        assert!(is_final(&out, "cwd /bin/sh: not a directory"), "{out:?}");
    }

    /// Whether any process is left in group `pgid`.
    fn group_alive(pgid: i32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(-pgid, 0) == 0 }
    }

    #[test]
    fn a_panic_while_the_command_runs_kills_reaps_and_forgets_its_group() {
        let ctx = JobContext::new(None, 1024);
        let program = resolve("sh").unwrap();
        let args = ["-c".to_string(), "sleep 30 & sleep 30".to_string()];
        let env = BTreeMap::new();
        let secret = BTreeSet::new();
        let spawn = Spawn {
            program: &program,
            arg0: "sh",
            args: &args,
            env: &env,
            inherit_env: InheritEnv::Minimal,
            secret_env: &secret,
            cwd: None,
            stdin: None,
            timeout: None,
            limit: 1024,
        };
        let seen = std::sync::Mutex::new(None);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            spawn_and_wait(spawn, &|g| {
                ctx.set_process_group(g);
                if let Some(g) = g {
                    *seen.lock().unwrap() = Some(g);
                    panic!("worker bug while the command runs");
                }
            })
        }));
        assert!(result.is_err());
        let pgid = seen.lock().unwrap().expect("the group was registered");
        assert_eq!(ctx.abort.pgid.load(std::sync::atomic::Ordering::Acquire), 0);
        // The leader was reaped: not even a zombie is left.
        assert!(!Path::new(&format!("/proc/{pgid}")).exists());
        // Its background child is killed too (init reaps it).
        let deadline = Instant::now() + Duration::from_secs(20);
        while group_alive(pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!group_alive(pgid), "a process of the group survived");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any job timeout, pool timeout and max_timeout: refused or
            /// run, never a panic, and never a wait past max_timeout.
            #[test]
            fn timeouts_never_panic(
                job_secs in any::<u64>(),
                job_nanos in 0u32..1_000_000_000,
                pool_ms in proptest::option::of(any::<u64>()),
                max in proptest::option::of(prop_oneof![
                    ".{0,12}",
                    "[0-9]{1,25}(ms|s|h|y)",
                ]),
            ) {
                let o = CliOptions {
                    allow: vec!["true".into()],
                    max_timeout: max.map(crate::DurationValue::Text),
                    ..CliOptions::default()
                };
                let pool_timeout = pool_ms.map(Duration::from_millis);
                let Ok(cli) = Cli::from_options(o, &pool(pool_timeout, &[])) else {
                    return Ok(());
                };
                let mut w = cli.new_worker();
                let mut j = job(json!({"command": "true"}), false);
                j.timeout = Some(Duration::new(job_secs, job_nanos));
                let out = w.run(&j, &JobContext::new(j.timeout.or(pool_timeout), 64));
                if let Err(f) = &out.result {
                    prop_assert!(
                        f.message.starts_with("timeout ") || f.message.starts_with("timed out"),
                        "{f:?}"
                    );
                }
            }

            #[test]
            fn allow_env_names_never_panic(names in prop::collection::vec(".{0,12}", 0..5)) {
                let o = CliOptions {
                    allow_env: names,
                    ..CliOptions::default()
                };
                let _ = Cli::from_options(o, &pool(None, &[]));
            }
        }
    }
}
