//! The `cli` worker: runs an allow-listed command with argv, never a shell.
//!
//! Each attempt runs in its own process group, so a timeout or shutdown
//! kills the command and every child it started. The worker waits on a
//! pidfd and the output pipe with one `poll(2)`: no extra thread, no
//! polling loop, and the timeout is exact.

use super::{JobContext, PoolInfo, Worker, WorkerType, kill_process_group};
use crate::error::PluginError;
use crate::job::{Job, Outcome};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of the `cli` worker type.
#[derive(Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CliOptions {
    /// Commands jobs may run: absolute paths or names looked up in PATH, matched on the resolved path. Empty: nothing runs.
    pub allow: Vec<String>,
    /// Whether commands inherit the service's environment (the job's env is added on top).
    pub inherit_env: bool,
}

impl Default for CliOptions {
    fn default() -> CliOptions {
        CliOptions {
            allow: Vec::new(),
            inherit_env: true,
        }
    }
}

/// The `cli` worker type: a validated allow list.
#[derive(Debug)]
pub struct Cli {
    allow: Arc<Vec<PathBuf>>,
    inherit_env: bool,
}

impl WorkerType for Cli {
    type Options = CliOptions;
    const TYPE: &'static str = "cli";
    const DESCRIPTION: &'static str =
        "runs an allow-listed command (argv, no shell) in its own process group";

    fn from_options(o: CliOptions, _pool: &PoolInfo) -> Result<Cli, PluginError> {
        let mut allow = Vec::new();
        for (i, entry) in o.allow.iter().enumerate() {
            if entry.is_empty() {
                return Err(PluginError::at(format!("allow[{i}]"), "empty command"));
            }
            // An entry that does not exist yet is kept as written: it may be
            // installed later, and matching then resolves the job's command.
            allow.push(resolve(entry).unwrap_or_else(|| PathBuf::from(entry)));
        }
        Ok(Cli {
            allow: Arc::new(allow),
            inherit_env: o.inherit_env,
        })
    }

    fn new_worker(&self) -> Box<dyn Worker> {
        Box::new(CliWorker {
            allow: self.allow.clone(),
            inherit_env: self.inherit_env,
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

struct CliWorker {
    allow: Arc<Vec<PathBuf>>,
    inherit_env: bool,
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
        if !self.allow.contains(&program) {
            return Outcome::fatal(format!(
                "command not allowed: {} ({})",
                params.command,
                program.display()
            ));
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
            inherit_env: self.inherit_env,
            cwd: params.cwd.as_deref(),
            stdin: params.stdin.clone().map(String::into_bytes),
            timeout: ctx.timeout(),
            limit,
        };
        match spawn_and_wait(spawn, &|g| ctx.set_process_group(g)) {
            Ok(run) => run.into_outcome(job.capture_output, ctx),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Outcome::fatal(format!("command not found: {}", params.command))
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
    pub(crate) inherit_env: bool,
    pub(crate) cwd: Option<&'a Path>,
    /// Written to the command's stdin from a helper thread; `None`: /dev/null.
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) timeout: Option<Duration>,
    /// Output bytes kept.
    pub(crate) limit: usize,
}

/// Runs a command in its own process group and waits for it (or its
/// timeout), keeping up to `limit` bytes of stdout and stderr together.
/// `on_group` is told the process group while it runs, then `None`.
pub(crate) fn spawn_and_wait(s: Spawn<'_>, on_group: &dyn Fn(Option<i32>)) -> std::io::Result<Run> {
    let (reader, writer) = std::io::pipe()?;
    let mut child = {
        let mut cmd = Command::new(s.program);
        cmd.arg0(s.arg0).args(s.args).process_group(0);
        if !s.inherit_env {
            cmd.env_clear();
        }
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
    let pgid = child.id() as i32;
    on_group(Some(pgid));
    if let (Some(data), Some(mut stdin)) = (s.stdin, child.stdin.take()) {
        // A thread, so a command that writes before reading cannot
        // deadlock against us; it ends when the command closes stdin.
        let _ = std::thread::Builder::new()
            .name("goworker-cli-stdin".into())
            .spawn(move || stdin.write_all(&data));
    }
    let result = wait(&mut child, reader, s.timeout, s.limit);
    // Kill whatever the command left behind in its group, before the
    // leader is reaped so the group id cannot have been reused.
    kill_process_group(pgid);
    let status = child.wait();
    on_group(None);
    let mut run = result?;
    if run.timed_out.is_none() {
        run.status = Some(status?);
    }
    Ok(run)
}

/// Waits for the child to exit (or the deadline), reading its output.
fn wait(
    child: &mut Child,
    mut reader: std::io::PipeReader,
    timeout: Option<Duration>,
    limit: usize,
) -> std::io::Result<Run> {
    let deadline = timeout.map(|t| Instant::now() + t);
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
            inherit_env: true,
        };
        let info = PoolInfo {
            name: "cli".into(),
            count: 1,
            timeout: None,
        };
        Cli::from_options(o, &info).unwrap().new_worker()
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
}
