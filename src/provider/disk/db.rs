//! The database file: tables, the transactions the queue needs, and
//! re-opening after an I/O error (redb refuses every call after one until
//! the file is opened again).

// redb's own error type is large; it only travels up one closure before it
// becomes a message, so boxing it buys nothing.
#![allow(clippy::result_large_err)]

use crate::job::unix_now;
use redb::{
    Database, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Jobs waiting to run, by (due time in µs since the epoch, sequence).
const PENDING: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("pending");
/// Jobs handed to the manager: sequence → (due, job JSON).
const IN_FLIGHT: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("in_flight");
/// Dead letters (the record of docs/jobs.md), by (failed at in µs, sequence).
const DEAD: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dead");
/// `next_seq`: the next job sequence number.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most job bytes one fetch moves to in-flight (at least one job).
const FETCH_BYTES: usize = 1 << 20;

/// Free space kept on the queue's file system for fetching and
/// acknowledging the jobs already stored: submissions that would eat into
/// it are refused, so that a full disk still drains.
const RESERVE_BYTES: u64 = 2 << 20;

/// Unix seconds as whole microseconds (negative and NaN: 0).
pub(super) fn micros(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        (secs * 1e6) as u64
    } else {
        0
    }
}

pub(super) fn now_micros() -> u64 {
    micros(unix_now())
}

/// One change the writer thread commits.
#[derive(Debug)]
pub(super) enum Change {
    /// New jobs: (due µs, job JSON).
    Put(Vec<(u64, Vec<u8>)>),
    /// Succeeded: forget the in-flight copy.
    Ack(u64),
    /// Retry later: in-flight → pending at `due` with the updated job.
    Defer(u64, u64, Vec<u8>),
    /// Failed for good: in-flight → dead with this record.
    Dead(u64, Vec<u8>),
    /// Not finished: in-flight → pending, unchanged.
    Release(u64),
}

/// What one fetch moved to in-flight.
#[derive(Debug, Default)]
pub(super) struct Fetched {
    /// (sequence, job JSON), due order.
    pub(super) jobs: Vec<(u64, Vec<u8>)>,
    /// When the earliest job still pending is due (µs).
    pub(super) next_due: Option<u64>,
}

/// The queue database, shared by the fetch loop and the writer thread.
pub(super) struct Store {
    path: PathBuf,
    durability: Durability,
    dead_max: u64,
    db: Mutex<Option<Database>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A message for a database that cannot be opened.
fn open_error(path: &Path, e: redb::DatabaseError) -> String {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => format!(
            "{}: the queue database is in use by another process (is the goworker service \
             running? redb allows one process at a time: stop the service first, or submit \
             jobs through its HTTP provider)",
            path.display()
        ),
        e => format!(
            "{}: cannot open the queue database: {e}; refusing to start with an empty queue \
             (move the file away to start afresh)",
            path.display()
        ),
    }
}

/// Whether redb needs the file re-opened after this error.
fn needs_reopen(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::Corrupted(_)
    )
}

impl Store {
    /// A store for `path`, not yet opened.
    pub(super) fn new(path: PathBuf, durability: Durability, dead_max: u64) -> Store {
        Store {
            path,
            durability,
            dead_max,
            db: Mutex::new(None),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (or creates) the file and its tables.
    ///
    /// # Errors
    /// A corrupt or unreadable file, or one another process holds.
    pub(super) fn open(&self) -> Result<(), String> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let db = Database::builder()
            .create(&self.path)
            .map_err(|e| open_error(&self.path, e))?;
        let mut slot = self.db.lock().map_err(|_| "lock poisoned".to_string())?;
        *slot = Some(db);
        drop(slot);
        self.with_write(Durability::Immediate, |tx| {
            tx.open_table(PENDING)?;
            tx.open_table(IN_FLIGHT)?;
            tx.open_table(DEAD)?;
            tx.open_table(META)?;
            Ok(())
        })
        .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Closes the file (it is opened again on the next call).
    pub(super) fn close(&self) {
        if let Ok(mut slot) = self.db.lock() {
            *slot = None;
        }
    }

    /// Refuses `bytes` of new jobs when they (twice: copy-on-write) would
    /// leave less than [`RESERVE_BYTES`] free where the file lives.
    pub(super) fn check_room(&self, bytes: u64) -> Result<(), String> {
        let dir = match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let Some(free) = free_bytes(&dir) else {
            return Ok(());
        };
        let need = bytes.saturating_mul(2).saturating_add(RESERVE_BYTES);
        if free < need {
            return Err(format!(
                "{}: no room to store the job(s): {free} bytes free, {need} needed \
                 (a reserve of {RESERVE_BYTES} is kept to finish the stored jobs)",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// Runs `f` on the database, opening it first when an earlier I/O
    /// error closed it; an I/O error closes it again.
    fn with_db<R>(&self, f: impl FnOnce(&Database) -> Result<R, redb::Error>) -> Result<R, String> {
        let mut slot = self.db.lock().map_err(|_| "lock poisoned".to_string())?;
        if slot.is_none() {
            let db = Database::builder()
                .create(&self.path)
                .map_err(|e| open_error(&self.path, e))?;
            log::info!("{}: queue database re-opened", self.path.display());
            *slot = Some(db);
        }
        let Some(db) = slot.as_ref() else {
            return Err("queue database closed".into());
        };
        f(db).map_err(|e| {
            if needs_reopen(&e) {
                *slot = None;
            }
            e.to_string()
        })
    }

    /// Runs `f` in one write transaction and commits it with `durability`.
    fn with_write<R>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, String> {
        self.with_db(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability);
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        })
    }

    /// Runs `f` in one read transaction.
    fn with_read<R>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, String> {
        self.with_db(|db| f(&db.begin_read()?))
    }

    /// At start-up: every in-flight job (a crash left it there) goes back
    /// to pending. Returns how many.
    pub(super) fn recover(&self) -> Result<usize, String> {
        self.with_write(self.durability, |tx| {
            let mut inflight = tx.open_table(IN_FLIGHT)?;
            let mut pending = tx.open_table(PENDING)?;
            let mut n = 0;
            while let Some((k, v)) = inflight.pop_first()? {
                let (due, job) = v.value();
                pending.insert((due, k.value()), job)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Moves up to `max` jobs due by `now` from pending to in-flight.
    /// DurationValue without fsync (`Eventual`): a power loss before the next
    /// durable commit only returns them to pending, where they were. Not
    /// `None`: re-opening after an I/O error would forget such a commit
    /// and deliver the jobs a second time.
    pub(super) fn fetch(&self, now: u64, max: usize) -> Result<Fetched, String> {
        self.with_write(Durability::Eventual, |tx| {
            let mut pending = tx.open_table(PENDING)?;
            let mut inflight = tx.open_table(IN_FLIGHT)?;
            let mut out = Fetched::default();
            let mut taken = Vec::new();
            let mut bytes = 0;
            for item in pending.range(..=(now, u64::MAX))?.take(max) {
                let (k, v) = item?;
                taken.push((k.value(), v.value().to_vec()));
                // Copy-on-write needs room for what moves: keep it bounded.
                bytes += v.value().len();
                if bytes >= FETCH_BYTES {
                    break;
                }
            }
            for ((due, seq), job) in taken {
                pending.remove((due, seq))?;
                inflight.insert(seq, (due, job.as_slice()))?;
                out.jobs.push((seq, job));
            }
            out.next_due = pending.first()?.map(|(k, _)| k.value().0);
            Ok(out)
        })
    }

    /// Commits a batch of changes in one transaction; `next_seq` numbers
    /// new jobs and is stored with them.
    pub(super) fn commit(&self, changes: &[Change], next_seq: &mut u64) -> Result<(), String> {
        let start = *next_seq;
        // Numbers handed out are never reused, even when the commit fails:
        // a failed commit may still have reached the file.
        *next_seq += changes
            .iter()
            .map(|c| match c {
                Change::Put(jobs) => jobs.len() as u64,
                _ => 0,
            })
            .sum::<u64>();
        let end = *next_seq;
        let dead_max = self.dead_max;
        self.with_write(self.durability, |tx| {
            let mut seq = start;
            let mut pending = tx.open_table(PENDING)?;
            let mut inflight = tx.open_table(IN_FLIGHT)?;
            let mut dead = tx.open_table(DEAD)?;
            let mut puts = false;
            for c in changes {
                match c {
                    Change::Put(jobs) => {
                        puts = true;
                        for (due, job) in jobs {
                            pending.insert((*due, seq), job.as_slice())?;
                            seq += 1;
                        }
                    }
                    Change::Ack(s) => {
                        inflight.remove(*s)?;
                    }
                    Change::Defer(s, due, job) => {
                        inflight.remove(*s)?;
                        pending.insert((*due, *s), job.as_slice())?;
                    }
                    Change::Dead(s, record) => {
                        inflight.remove(*s)?;
                        dead.insert((now_micros(), *s), record.as_slice())?;
                    }
                    Change::Release(s) => {
                        if let Some(v) = inflight.remove(*s)? {
                            let (due, job) = v.value();
                            pending.insert((due, *s), job)?;
                        }
                    }
                }
            }
            if dead_max > 0 {
                while dead.len()? > dead_max {
                    dead.pop_first()?;
                }
            }
            if puts {
                tx.open_table(META)?.insert("next_seq", seq)?;
            }
            debug_assert_eq!(seq, end);
            Ok(())
        })
    }

    /// The stored next sequence number.
    pub(super) fn next_seq(&self) -> Result<u64, String> {
        self.with_read(|tx| {
            Ok(tx
                .open_table(META)?
                .get("next_seq")?
                .map_or(0, |v| v.value()))
        })
    }

    /// Dead-letter records (JSON), newest first.
    pub(super) fn dead_list(&self) -> Result<Vec<Vec<u8>>, String> {
        self.with_read(|tx| {
            let dead = tx.open_table(DEAD)?;
            let mut out = Vec::new();
            for item in dead.iter()?.rev() {
                out.push(item?.1.value().to_vec());
            }
            Ok(out)
        })
    }

    /// Moves the dead letters `pick` selects back to pending, as given by
    /// `requeue` (the job JSON to store, or `None` to leave the record).
    /// Returns how many moved.
    pub(super) fn dead_requeue(
        &self,
        requeue: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<usize, String> {
        let now = now_micros();
        self.with_write(self.durability, |tx| {
            let mut dead = tx.open_table(DEAD)?;
            let mut pending = tx.open_table(PENDING)?;
            let mut moved = Vec::new();
            for item in dead.iter()? {
                let (k, v) = item?;
                if let Some(job) = requeue(v.value()) {
                    moved.push((k.value(), job));
                }
            }
            for ((t, seq), job) in &moved {
                dead.remove((*t, *seq))?;
                pending.insert((now, *seq), job.as_slice())?;
            }
            Ok(moved.len())
        })
    }

    /// Deletes every dead letter; returns how many.
    pub(super) fn dead_purge(&self) -> Result<usize, String> {
        self.with_write(self.durability, |tx| {
            let mut dead = tx.open_table(DEAD)?;
            let n = dead.len()?;
            dead.retain(|_, _| false)?;
            Ok(n as usize)
        })
    }

    /// (pending, in-flight, dead) counts.
    pub(super) fn counts(&self) -> Result<(u64, u64, u64), String> {
        self.with_read(|tx| {
            Ok((
                tx.open_table(PENDING)?.len()?,
                tx.open_table(IN_FLIGHT)?.len()?,
                tx.open_table(DEAD)?.len()?,
            ))
        })
    }
}

/// Bytes available to this process on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is written by
    // statvfs before it is read (only when it returns 0).
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, dead_max: u64) -> Store {
        let s = Store::new(dir.join("q.redb"), Durability::Immediate, dead_max);
        s.open().unwrap();
        s
    }

    fn put(s: &Store, seq: &mut u64, jobs: &[(u64, &str)]) {
        let jobs = jobs
            .iter()
            .map(|(d, j)| (*d, j.as_bytes().to_vec()))
            .collect();
        s.commit(&[Change::Put(jobs)], seq).unwrap();
    }

    fn texts(f: &Fetched) -> Vec<&str> {
        f.jobs
            .iter()
            .map(|(_, j)| std::str::from_utf8(j).unwrap())
            .collect()
    }

    #[test]
    fn fetch_takes_due_jobs_in_due_order_up_to_max() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 0);
        let mut seq = s.next_seq().unwrap();
        put(
            &s,
            &mut seq,
            &[(30, "c"), (10, "a"), (20, "b"), (99, "later")],
        );
        assert_eq!(s.next_seq().unwrap(), 4);
        let f = s.fetch(50, 2).unwrap();
        assert_eq!(texts(&f), ["a", "b"]);
        assert_eq!(f.next_due, Some(30));
        let f = s.fetch(50, 10).unwrap();
        assert_eq!(texts(&f), ["c"]);
        assert_eq!(f.next_due, Some(99));
        assert_eq!(s.counts().unwrap(), (1, 3, 0));
        assert!(s.fetch(50, 10).unwrap().jobs.is_empty());
    }

    #[test]
    fn settlements_move_in_flight_jobs_where_they_belong() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 0);
        let mut seq = 0;
        put(
            &s,
            &mut seq,
            &[(1, "ack"), (2, "defer"), (3, "dead"), (4, "release")],
        );
        let f = s.fetch(10, 10).unwrap();
        let seqs: Vec<u64> = f.jobs.iter().map(|(q, _)| *q).collect();
        s.commit(
            &[
                Change::Ack(seqs[0]),
                Change::Defer(seqs[1], 500, b"defer, attempt 2".to_vec()),
                Change::Dead(seqs[2], b"{\"record\":1}".to_vec()),
                Change::Release(seqs[3]),
            ],
            &mut seq,
        )
        .unwrap();
        assert_eq!(s.counts().unwrap(), (2, 0, 1));
        assert_eq!(texts(&s.fetch(10, 10).unwrap()), ["release"]);
        assert_eq!(texts(&s.fetch(500, 10).unwrap()), ["defer, attempt 2"]);
        assert_eq!(s.dead_list().unwrap(), [b"{\"record\":1}".to_vec()]);
        // A release of a job no longer in flight changes nothing.
        s.commit(&[Change::Release(seqs[0])], &mut seq).unwrap();
        assert_eq!(s.counts().unwrap(), (0, 2, 1));
    }

    #[test]
    fn in_flight_jobs_go_back_to_pending_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 0);
        let mut seq = 0;
        put(&s, &mut seq, &[(1, "a"), (2, "b")]);
        assert_eq!(s.fetch(10, 10).unwrap().jobs.len(), 2);
        s.close();
        // A new process opens the file: what was in flight runs again.
        let s = store(dir.path(), 0);
        assert_eq!(s.recover().unwrap(), 2);
        assert_eq!(texts(&s.fetch(10, 10).unwrap()), ["a", "b"]);
        assert_eq!(s.next_seq().unwrap(), 2);
    }

    #[test]
    fn dead_letters_are_capped_requeued_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 2);
        let mut seq = 0;
        put(&s, &mut seq, &[(1, "a"), (2, "b"), (3, "c")]);
        let f = s.fetch(10, 10).unwrap();
        for (q, job) in &f.jobs {
            s.commit(&[Change::Dead(*q, job.clone())], &mut seq)
                .unwrap();
        }
        // Over dead_max the oldest record goes.
        assert_eq!(s.dead_list().unwrap(), [b"c".to_vec(), b"b".to_vec()]);
        let moved = s
            .dead_requeue(&|r| (r == b"b").then(|| b"b again".to_vec()))
            .unwrap();
        assert_eq!(moved, 1);
        assert_eq!(s.dead_list().unwrap(), [b"c".to_vec()]);
        assert_eq!(texts(&s.fetch(u64::MAX, 10).unwrap()), ["b again"]);
        assert_eq!(s.dead_purge().unwrap(), 1);
        assert!(s.dead_list().unwrap().is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_queue_or_is_held_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
        let e = Store::new(path, Durability::Immediate, 0)
            .open()
            .unwrap_err();
        assert!(e.contains("cannot open the queue database"), "{e}");
        assert!(e.contains("move the file away"), "{e}");
        let other = dir.path().join("held.redb");
        let held = Store::new(other.clone(), Durability::Immediate, 0);
        held.open().unwrap();
        let e = Store::new(other, Durability::Immediate, 0)
            .open()
            .unwrap_err();
        assert!(e.contains("in use by another process"), "{e}");
    }

    #[test]
    fn micros_never_panics_and_clamps_nonsense_to_zero() {
        assert_eq!(micros(1.5), 1_500_000);
        for bad in [f64::NAN, -1.0, f64::NEG_INFINITY, 0.0] {
            assert_eq!(micros(bad), 0);
        }
        assert_eq!(micros(f64::INFINITY), 0);
        assert_eq!(micros(1e300), u64::MAX);
    }
}
