//! The `file` failure handler: one JSON line per failed job, fsync'd, so
//! an operator can `tail -f` or `jq` the failures without a database.
//!
//! It rotates like logrotate: when the next line would take the file past
//! `max_size`, `path` becomes `path.1`, `path.1` becomes `path.2` and so
//! on; at most `keep` old files are kept. A line is never split across
//! files, so every file holds whole JSON lines.
//!
//! Several processes may share one file: each record is written under an
//! exclusive `flock(2)` on the sibling `PATH.lock` (which never rotates),
//! held across the size check, the rotation and the append. A handler
//! whose open file was rotated away by another process notices (the
//! path's inode changed) and reopens `PATH` before writing.

use super::{FailureHandler, FailureHandlerType};
use crate::error::PluginError;
use crate::job::FailureRecord;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
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

impl FailureHandlerType for FileOptions {
    const TYPE: &'static str = "file";
    const DESCRIPTION: &'static str =
        "appends one JSON line per failed job to a file, fsync'd, rotated at max_size";

    fn build(self, _name: &str) -> Result<Box<dyn FailureHandler>, PluginError> {
        let path = self.path.ok_or("path: required")?;
        if path.as_os_str().is_empty() {
            return Err("path: empty".into());
        }
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        Ok(Box::new(FileHandler {
            path,
            lock_path: PathBuf::from(lock_path),
            max_size: self.max_size,
            keep: self.keep,
            file: None,
            lock: None,
        }))
    }
}

struct FileHandler {
    path: PathBuf,
    /// `PATH.lock`, locked around every write.
    lock_path: PathBuf,
    max_size: u64,
    keep: u32,
    /// The open file.
    file: Option<File>,
    /// The open lock file.
    lock: Option<File>,
}

/// Holds an exclusive `flock` until dropped.
struct Locked(i32);

impl Locked {
    fn take(file: &File) -> std::io::Result<Locked> {
        let fd = file.as_raw_fd();
        loop {
            // SAFETY: flock(2) on a descriptor we own; no memory involved.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                return Ok(Locked(fd));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: as above; the lock file outlives the guard (it stays open
        // in the handler while a record is written).
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
        }
    }
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
    fn ensure_dir(&self) -> Result<(), String> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(ctx(dir))?;
        }
        Ok(())
    }

    /// Takes the lock shared with every process writing `path`.
    fn lock(&mut self) -> Result<Locked, String> {
        if self.lock.is_none() {
            self.ensure_dir()?;
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.lock_path)
                .map_err(ctx(&self.lock_path))?;
            self.lock = Some(f);
        }
        let lock = self.lock.as_ref().ok_or("lock file not open")?;
        Locked::take(lock).map_err(ctx(&self.lock_path))
    }

    /// Opens `path`, or reopens it when another process rotated the file
    /// this handler holds. Called with the lock held.
    fn open(&mut self) -> Result<(), String> {
        if let Some(f) = &self.file {
            let held = f.metadata().map_err(ctx(&self.path))?;
            match std::fs::metadata(&self.path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ctx(&self.path)(e)),
            }
            self.file = None;
        }
        self.ensure_dir()?;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(ctx(&self.path))?;
        self.file = Some(f);
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
        let _locked = self.lock()?;
        self.open()?;
        // The size on disk, not a count of our own writes: other processes
        // append too.
        let size = match &self.file {
            Some(f) => f.metadata().map_err(ctx(&self.path))?.len(),
            None => 0,
        };
        let full = size > 0 && size.saturating_add(line.len() as u64) > self.max_size;
        if self.max_size > 0 && full {
            self.rotate()?;
            self.open()?;
        }
        let f = self.file.as_mut().ok_or("file not open")?;
        f.write_all(line)
            .and_then(|()| f.sync_data())
            .map_err(ctx(&self.path))
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
        FileOptions {
            path: Some(path.to_path_buf()),
            max_size,
            keep,
        }
        .build("file")
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
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        let mut h = handler(&sub, 0, 0); // a directory
        let job = Job::new("http", serde_json::json!({}));
        let err = h
            .handle(&FailureRecord::for_job("m", &job, "x", None))
            .unwrap_err();
        assert!(err.contains(&sub.display().to_string()), "{err}");
    }
}
