//! The `cli` failure handler: runs an operator's command (a pager script, a
//! ticket tool) with the failure record as JSON on stdin.
//!
//! The command is named in the config, not by a job, so it is the allow
//! list: exactly that program runs, with argv and never a shell, in its
//! own process group (killed with everything it started at `timeout`).
//! Spawning and waiting are the `cli` worker's.

use super::{FailureHandler, FailureHandlerType, HandlerContext};
use crate::error::PluginError;
use crate::job::FailureRecord;
use crate::worker::SecretEnv;
use crate::worker::cli::{InheritEnv, Spawn, resolve, spawn_and_wait};
use crate::worker::http::parse_duration;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Options of the `cli` failure handler.
#[derive(Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CliHandlerOptions {
    /// The program to run: an absolute path, or a name looked up in PATH each time it runs. Required.
    pub(crate) command: Option<String>,
    /// Its arguments (argv, no shell).
    pub(crate) args: Vec<String>,
    /// Extra environment variables.
    pub(crate) env: BTreeMap<String, String>,
    /// Whether it inherits the service's environment. Secrets (variables named by any *_env option) are never passed on.
    pub(crate) inherit_env: bool,
    /// Working directory. Default: the service's.
    pub(crate) cwd: Option<PathBuf>,
    /// Limit on one run; the command's process group is killed then.
    pub(crate) timeout: crate::DurationValue,
}

impl Default for CliHandlerOptions {
    fn default() -> CliHandlerOptions {
        CliHandlerOptions {
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            inherit_env: true,
            cwd: None,
            timeout: "30s".into(),
        }
    }
}

impl FailureHandlerType for CliHandlerOptions {
    const TYPE: &'static str = "cli";
    const DESCRIPTION: &'static str =
        "runs the configured command (argv, no shell) with the failure record as JSON on stdin";

    fn build(self, _name: &str) -> Result<Box<dyn FailureHandler>, PluginError> {
        let command = self.command.ok_or("command: required")?;
        if command.is_empty() {
            return Err("command: empty".into());
        }
        Ok(Box::new(CliHandler {
            command,
            args: self.args,
            env: self.env,
            inherit_env: self.inherit_env,
            cwd: self.cwd,
            timeout: parse_duration("timeout", &self.timeout)?,
            secret_env: SecretEnv::default(),
        }))
    }
}

struct CliHandler {
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    inherit_env: bool,
    cwd: Option<PathBuf>,
    timeout: Duration,
    secret_env: SecretEnv,
}

impl FailureHandler for CliHandler {
    fn hide_env(&mut self, names: &SecretEnv) {
        self.secret_env = names.clone();
    }

    fn handle(&mut self, record: &FailureRecord) -> Result<(), String> {
        self.handle_within(record, &HandlerContext::default())
    }

    fn handle_within(
        &mut self,
        record: &FailureRecord,
        ctx: &HandlerContext,
    ) -> Result<(), String> {
        let json = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let program =
            resolve(&self.command).ok_or_else(|| format!("command not found: {}", self.command))?;
        // At shutdown the command gets what is left of the deadline.
        let timeout = match ctx.remaining() {
            Some(left) => self.timeout.min(left),
            None => self.timeout,
        };
        let spawn = Spawn {
            program: &program,
            arg0: &self.command,
            args: &self.args,
            env: &self.env,
            inherit_env: if self.inherit_env {
                InheritEnv::All
            } else {
                InheritEnv::None
            },
            secret_env: &self.secret_env,
            cwd: self.cwd.as_deref(),
            stdin: Some(json),
            timeout: Some(timeout),
            limit: 4096,
        };
        let run = spawn_and_wait(spawn, &|g| ctx.set_process_group(g))
            .map_err(|e| format!("{}: {e}", self.command))?;
        if run.timed_out.is_some() {
            return Err(format!(
                "{}: timed out after {}",
                self.command,
                humantime::format_duration(timeout)
            ));
        }
        match run.status {
            Some(s) if s.success() => Ok(()),
            Some(s) if ctx.is_aborted() => Err(format!(
                "{}: stopped at the shutdown deadline ({s})",
                self.command
            )),
            Some(s) => {
                let last = run.last_line();
                let mut m = format!("{}: {s}", self.command);
                if !last.is_empty() {
                    m.push_str(": ");
                    m.push_str(&last);
                }
                Err(m)
            }
            None => Err(format!("{}: ended abnormally", self.command)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;

    fn handler(command: &str, args: &[&str]) -> Box<dyn FailureHandler> {
        CliHandlerOptions {
            command: Some(command.into()),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..CliHandlerOptions::default()
        }
        .build("cli")
        .unwrap()
    }

    #[test]
    fn record_reaches_stdin_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("record.json");
        let job = Job::new("http", serde_json::json!({"url": "http://x/"}));
        let rec = FailureRecord::for_job("memory", &job, "HTTP 404 Not Found", None);
        let script = format!("cat > '{}'", out.display());
        handler("sh", &["-c", &script]).handle(&rec).unwrap();
        let got: FailureRecord = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got, rec);

        let err = handler("sh", &["-c", "cat >/dev/null; echo nope >&2; exit 4"])
            .handle(&rec)
            .unwrap_err();
        assert!(
            err.contains("exit status: 4") && err.ends_with("nope"),
            "{err}"
        );
        let err = handler("no-such-handler-cmd", &[])
            .handle(&rec)
            .unwrap_err();
        assert!(err.starts_with("command not found"), "{err}");
    }

    #[test]
    fn secrets_are_kept_from_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let job = Job::new("http", serde_json::json!({}));
        let rec = FailureRecord::for_job("memory", &job, "boom", None);
        let script = format!(
            "cat >/dev/null; echo HOME=${{HOME-unset}} PATH=${{PATH:+set}} > '{}'",
            out.display()
        );
        let mut h = handler("sh", &["-c", &script]);
        h.hide_env(&std::sync::Arc::new(["HOME".to_string()].into()));
        h.handle(&rec).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "HOME=unset PATH=set\n"
        );
    }
}
