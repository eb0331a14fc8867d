//! `goworker enqueue` and `goworker dead` on a stopped service. redb lets
//! one process open the file at a time, so while the service runs the open
//! fails with a message that says so.

use super::db::{Change, now_micros};
use super::writer::Shared;
use crate::error::Error;
use crate::job::{FailureRecord, Job};
use crate::provider::{DeadLetters, Enqueue};
use std::sync::Arc;

pub(super) struct Admin {
    shared: Arc<Shared>,
    opened: bool,
}

impl Admin {
    pub(super) fn new(shared: Arc<Shared>) -> Admin {
        Admin {
            shared,
            opened: false,
        }
    }

    fn err(&self, m: String) -> Error {
        Error::provider(&self.shared.name, m)
    }

    fn open(&mut self) -> Result<(), Error> {
        if !self.opened {
            self.shared.store.open().map_err(|e| self.err(e))?;
            self.opened = true;
        }
        Ok(())
    }
}

/// The job of a dead letter, ready to run again with fresh attempts, when
/// `id` selects it (`None`: every record that holds a job).
fn requeued(record: &[u8], id: Option<&str>) -> Option<Vec<u8>> {
    let r: FailureRecord = serde_json::from_slice(record).ok()?;
    if id.is_some_and(|id| r.id.as_deref() != Some(id)) {
        return None;
    }
    let mut job: Job = serde_json::from_value(r.job?).ok()?;
    job.attempts = 0;
    job.first_attempt_at = None;
    job.last_error = None;
    Some(job.to_json().into_bytes())
}

impl Enqueue for Admin {
    fn enqueue(&mut self, payload: &[u8]) -> Result<String, Error> {
        let job = Job::parse(payload).map_err(|m| Error::Other(m.reason))?;
        self.open()?;
        let store = &self.shared.store;
        let mut seq = store.next_seq().map_err(|e| self.err(e))?;
        let due = job.run_at.map_or(now_micros(), super::db::micros);
        store
            .commit(
                &[Change::Put(vec![(due, job.to_json().into_bytes())])],
                &mut seq,
            )
            .map_err(|e| self.err(e))?;
        Ok(job.id)
    }
}

impl DeadLetters for Admin {
    fn list(&mut self) -> Result<Vec<FailureRecord>, Error> {
        self.open()?;
        let raw = self.shared.store.dead_list().map_err(|e| self.err(e))?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_slice(r).ok())
            .collect())
    }

    fn retry(&mut self, id: Option<&str>) -> Result<usize, Error> {
        self.open()?;
        let n = self
            .shared
            .store
            .dead_requeue(&|r| requeued(r, id))
            .map_err(|e| self.err(e))?;
        if n == 0 {
            if let Some(id) = id {
                return Err(self.err(format!("no dead letter with job id {id:?}")));
            }
        }
        Ok(n)
    }

    fn purge(&mut self) -> Result<usize, Error> {
        self.open()?;
        self.shared.store.dead_purge().map_err(|e| self.err(e))
    }
}
