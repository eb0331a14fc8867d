//! `goworker enqueue` and `goworker dead` on a redis provider, run offline
//! (without the service): enqueue `LPUSH`es like any producer; dead
//! letters are read from and re-queued out of every queue's `Q:dead`.

use super::RedisProvider;
use super::conn::Conn;
use super::keys::QueueKeys;
use crate::error::Error;
use crate::job::{FailureRecord, Job};
use crate::provider::{DeadLetters, Enqueue};

impl RedisProvider {
    fn admin_conn(&mut self) -> Result<(Conn, Vec<QueueKeys>), Error> {
        let name = self.settings.name.clone();
        let conn = self
            .redis()?
            .get()
            .map_err(|e| Error::provider(&name, e.message))?;
        let keys = self
            .settings
            .queues
            .iter()
            .map(|q| QueueKeys::new(q, "admin"))
            .collect();
        Ok((conn, keys))
    }

    fn fail(&self, e: redis::RedisError) -> Error {
        Error::provider(&self.settings.name, e.to_string())
    }
}

/// A dead letter as stored, and its parsed record.
fn dead_letters(
    conn: &mut Conn,
    q: &QueueKeys,
) -> redis::RedisResult<Vec<(Vec<u8>, FailureRecord)>> {
    let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&q.dead)
        .arg(0)
        .arg(-1)
        .query(&mut **conn)?;
    Ok(raw
        .into_iter()
        .filter_map(|r| {
            let rec = serde_json::from_slice::<FailureRecord>(&r).ok()?;
            Some((r, rec))
        })
        .collect())
}

/// The payload to queue again: the job with its attempts reset, or the raw
/// payload of one that never parsed.
fn requeue_payload(rec: &FailureRecord) -> Option<Vec<u8>> {
    if let Some(job) = &rec.job {
        if let Ok(mut job) = serde_json::from_value::<Job>(job.clone()) {
            job.attempts = 0;
            job.first_attempt_at = None;
            return Some(job.to_json().into_bytes());
        }
    }
    rec.raw.as_ref().map(|r| r.clone().into_bytes())
}

impl Enqueue for RedisProvider {
    fn enqueue(&mut self, payload: &[u8]) -> Result<String, Error> {
        let job = Job::parse(payload).map_err(|m| Error::Other(m.reason))?;
        let (mut conn, keys) = self.admin_conn()?;
        // Stored with its id, so the id printed is the one it runs under.
        redis::cmd("LPUSH")
            .arg(&keys[0].queue)
            .arg(job.to_json())
            .query::<()>(&mut *conn)
            .map_err(|e| self.fail(e))?;
        Ok(job.id)
    }
}

impl DeadLetters for RedisProvider {
    fn list(&mut self) -> Result<Vec<FailureRecord>, Error> {
        let (mut conn, keys) = self.admin_conn()?;
        let mut all = Vec::new();
        for q in &keys {
            let letters = dead_letters(&mut conn, q).map_err(|e| self.fail(e))?;
            all.extend(letters.into_iter().map(|(_, r)| r));
        }
        all.sort_by(|a, b| b.failed_at.total_cmp(&a.failed_at));
        Ok(all)
    }

    fn retry(&mut self, id: Option<&str>) -> Result<usize, Error> {
        let (mut conn, keys) = self.admin_conn()?;
        let mut n = 0;
        for q in &keys {
            let letters = dead_letters(&mut conn, q).map_err(|e| self.fail(e))?;
            for (stored, rec) in letters {
                if id.is_some() && rec.id.as_deref() != id {
                    continue;
                }
                let Some(payload) = requeue_payload(&rec) else {
                    continue;
                };
                let (removed,): (i64,) = redis::pipe()
                    .atomic()
                    .cmd("LREM")
                    .arg(&q.dead)
                    .arg(1)
                    .arg(&stored)
                    .cmd("LPUSH")
                    .arg(&q.queue)
                    .arg(&payload)
                    .ignore()
                    .query(&mut *conn)
                    .map_err(|e| self.fail(e))?;
                if removed > 0 {
                    n += 1;
                } else {
                    // Someone else re-queued it meanwhile: undo ours.
                    let _: Result<(), _> = redis::cmd("LREM")
                        .arg(&q.queue)
                        .arg(1)
                        .arg(&payload)
                        .query(&mut *conn);
                }
            }
        }
        Ok(n)
    }

    fn purge(&mut self) -> Result<usize, Error> {
        let (mut conn, keys) = self.admin_conn()?;
        let mut n = 0;
        for q in &keys {
            let (len, _): (usize, ()) = redis::pipe()
                .atomic()
                .cmd("LLEN")
                .arg(&q.dead)
                .cmd("DEL")
                .arg(&q.dead)
                .query(&mut *conn)
                .map_err(|e| self.fail(e))?;
            n += len;
        }
        Ok(n)
    }
}
