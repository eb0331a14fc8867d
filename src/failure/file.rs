//! The `file` failure handler: one JSON line per failed job, fsync'd, so
//! an operator can `tail -f` or `jq` the failures without a database.
//!
//! It rotates like logrotate: when the next line would take the file past
//! `max_size`, `path` becomes `path.1`, `path.1` becomes `path.2` and so
//! on; at most `keep` old files are kept. A line is never split across
//! files, so every file holds whole JSON lines.

use super::{FailureHandler, FailureHandlerType};
use crate::error::PluginError;
use crate::job::FailureRecord;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Options of the `file` failure handler.
#[derive(Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FileOptions {
    /// File to append failure records to, one JSON object a line. Required.
    pub(crate) path: Option<PathBuf>,
    /// Size in bytes at which the file is rotated to `PATH.1`; 0 never rotates.
    pub(crate) max_size: u64,
    /// Rotated files kept (`PATH.1` newest … `PATH.N` oldest); older ones are deleted.
    pub(crate) keep: u32,
}

impl Default for FileOptions {
    fn default() -> FileOptions {
        FileOptions {
            path: None,
            max_size: 100 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// The `file` failure handler type.
#[derive(Debug)]
pub(crate) struct FileHandlerType;

impl FailureHandlerType for FileHandlerType {
    type Options = FileOptions;
    const TYPE: &'static str = "file";
    const DESCRIPTION: &'static str =
        "appends one JSON line per failed job to a file, fsync'd, rotated at max_size";

    fn build(_name: &str, options: FileOptions) -> Result<Box<dyn FailureHandler>, PluginError> {
        let path = options.path.ok_or("path: required")?;
        if path.as_os_str().is_empty() {
            return Err("path: empty".into());
        }
        Ok(Box::new(FileHandler {
            path,
            max_size: options.max_size,
            keep: options.keep,
            file: None,
        }))
    }
}

struct FileHandler {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    /// The open file and its size.
    file: Option<(File, u64)>,
}

fn ctx(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// `path.N`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl FileHandler {
    fn open(&mut self) -> Result<(), String> {
        if self.file.is_some() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(ctx(dir))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(ctx(&self.path))?;
        let size = f.metadata().map_err(ctx(&self.path))?.len();
        self.file = Some((f, size));
        Ok(())
    }

    /// Shifts `path` → `path.1` → … → `path.keep`, dropping the oldest.
    fn rotate(&mut self) -> Result<(), String> {
        self.file = None;
        if self.keep == 0 {
            return std::fs::remove_file(&self.path).map_err(ctx(&self.path));
        }
        let oldest = rotated(&self.path, self.keep);
        match std::fs::remove_file(&oldest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ctx(&oldest)(e)),
            _ => {}
        }
        for n in (1..self.keep).rev() {
            let from = rotated(&self.path, n);
            match std::fs::rename(&from, rotated(&self.path, n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ctx(&from)(e)),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1)).map_err(ctx(&self.path))?;
        // Make the renames durable before new records land in a new file.
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn append(&mut self, line: &[u8]) -> Result<(), String> {
        self.open()?;
        let full = self
            .file
            .as_ref()
            .is_some_and(|(_, size)| *size > 0 && size + line.len() as u64 > self.max_size);
        if self.max_size > 0 && full {
            self.rotate()?;
            self.open()?;
        }
        let (f, size) = self.file.as_mut().ok_or("file not open")?;
        f.write_all(line)
            .and_then(|()| f.sync_data())
            .map_err(ctx(&self.path))?;
        *size += line.len() as u64;
        Ok(())
    }
}

impl FailureHandler for FileHandler {
    fn handle(&mut self, record: &FailureRecord) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let result = self.append(&line);
        if result.is_err() {
            self.file = None; // reopen next time (rotated away, disk replaced)
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;

    fn handler(path: &Path, max_size: u64, keep: u32) -> Box<dyn FailureHandler> {
        FileHandlerType::build(
            "file",
            FileOptions {
                path: Some(path.to_path_buf()),
                max_size,
                keep,
            },
        )
        .unwrap()
    }

    fn lines(path: &Path) -> Vec<FailureRecord> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn rotates_at_max_size_and_keeps_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/failures.jsonl");
        let mut h = handler(&path, 1000, 2);
        let mut ids = Vec::new();
        for i in 0..40 {
            let job = Job::new("http", serde_json::json!({"n": i}));
            ids.push(job.id.clone());
            let rec = FailureRecord::for_job("memory", &job, "boom", None);
            h.handle(&rec).unwrap();
        }
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            let size = std::fs::metadata(&p).unwrap().len();
            assert!(size <= 1000, "{}: {size}", p.display());
            assert!(!lines(&p).is_empty());
        }
        assert!(!rotated(&path, 3).exists());
        // The newest records are in order across path.2, path.1, path.
        let mut seen: Vec<String> = [rotated(&path, 2), rotated(&path, 1), path.clone()]
            .iter()
            .flat_map(|p| lines(p))
            .filter_map(|r| r.id)
            .collect();
        let tail = ids.split_off(ids.len() - seen.len());
        assert_eq!(std::mem::take(&mut seen), tail);
    }

    #[test]
    fn an_unwritable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = handler(dir.path(), 0, 0); // a directory
        let job = Job::new("http", serde_json::json!({}));
        let err = h
            .handle(&FailureRecord::for_job("m", &job, "x", None))
            .unwrap_err();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
