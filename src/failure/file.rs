//! The `file` failure handler: one JSON line per failed job, fsync'd.

use super::{FailureHandler, FailureHandlerType};
use crate::job::FailureRecord;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

/// Options of the `file` failure handler.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FileOptions {
    /// File to append failure records to, one JSON object a line. Required.
    pub(crate) path: Option<PathBuf>,
}

/// The `file` failure handler type.
#[derive(Debug)]
pub(crate) struct FileHandlerType;

impl FailureHandlerType for FileHandlerType {
    type Options = FileOptions;
    const TYPE: &'static str = "file";
    const DESCRIPTION: &'static str = "appends one JSON line per failed job to a file, fsync'd";

    fn build(_name: &str, options: FileOptions) -> Result<Box<dyn FailureHandler>, String> {
        let path = options.path.ok_or("path: required")?;
        Ok(Box::new(FileHandler { path, file: None }))
    }
}

struct FileHandler {
    path: PathBuf,
    file: Option<File>,
}

impl FileHandler {
    fn file(&mut self) -> Result<&mut File, String> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| "file not open".to_string())
    }
}

impl FailureHandler for FileHandler {
    fn handle(&mut self, record: &FailureRecord) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let path = self.path.display().to_string();
        let result = self.file().and_then(|f| {
            f.write_all(&line)
                .and_then(|()| f.sync_data())
                .map_err(|e| format!("{path}: {e}"))
        });
        if result.is_err() {
            self.file = None; // reopen next time (rotated away, disk replaced)
        }
        result
    }
}
