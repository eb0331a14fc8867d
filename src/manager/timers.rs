//! The manager's own timer heap: jobs waiting for `run_at` or a retry
//! whose provider cannot store them (`Acker::can_defer` is false), and the
//! clock readings the loop passes down instead of reading time itself.

use crate::backoff::Backoff;
use crate::job::{Job, time_to_unix};
use crate::provider::Acker;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant, SystemTime};

/// One reading of both clocks, taken once per wake-up of the loop and
/// passed to everything that needs the time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    /// For timers and deadlines.
    pub(crate) mono: Instant,
    /// For `run_at` and retry times stored by providers.
    pub(crate) wall: SystemTime,
    /// `wall` in Unix seconds, for job timestamps.
    pub(crate) unix: f64,
}

impl Now {
    pub(crate) fn read() -> Now {
        Now::new(Instant::now(), SystemTime::now())
    }

    pub(crate) fn new(mono: Instant, wall: SystemTime) -> Now {
        Now {
            mono,
            wall,
            unix: time_to_unix(wall),
        }
    }

    /// The instant `wait` from now. Waits beyond [`Backoff::LONGEST`] (a
    /// `run_at` or `shutdown_timeout` centuries away) are cut to it, so
    /// the addition cannot overflow.
    pub(crate) fn after(&self, wait: Duration) -> Instant {
        let wait = wait.min(Backoff::LONGEST);
        self.mono.checked_add(wait).unwrap_or(self.mono)
    }
}

/// A job waiting in the heap, with what settles it.
pub(crate) struct Waiting {
    pub(crate) pool: usize,
    pub(crate) job: Job,
    pub(crate) acker: Box<dyn Acker>,
    pub(crate) provider: usize,
}

struct Entry {
    due: Instant,
    seq: u64,
    waiting: Waiting,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Entry) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and the earliest due comes first;
    // equal times keep their insertion order.
    fn cmp(&self, o: &Entry) -> Ordering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// Jobs by due time.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

impl Timers {
    pub(crate) fn push(&mut self, due: Instant, waiting: Waiting) {
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Entry {
            due,
            seq: self.seq,
            waiting,
        });
    }

    /// The next job due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Waiting> {
        if self.heap.peek()?.due > now {
            return None;
        }
        self.heap.pop().map(|e| e.waiting)
    }

    /// Any job, due or not (shutdown hands them all back).
    pub(crate) fn pop_any(&mut self) -> Option<Waiting> {
        self.heap.pop().map(|e| e.waiting)
    }

    /// When the earliest job is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.due)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FailureRecord, Report};

    struct NoAck;
    impl Acker for NoAck {
        fn ack(self: Box<Self>, _: &Report) {}
        fn dead(self: Box<Self>, _: &FailureRecord, _: &Report) {}
        fn release(self: Box<Self>, _: Option<&Job>) {}
    }

    fn waiting(name: &str) -> Waiting {
        let mut job = Job::new("t", serde_json::json!({}));
        job.name = name.into();
        Waiting {
            pool: 0,
            job,
            acker: Box::new(NoAck),
            provider: 0,
        }
    }

    #[test]
    fn jobs_come_out_when_due_earliest_first_then_in_insertion_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        t.push(t0 + 3 * s, waiting("c"));
        t.push(t0 + s, waiting("a1"));
        t.push(t0 + 2 * s, waiting("b"));
        t.push(t0 + s, waiting("a2"));
        assert_eq!(t.len(), 4);
        assert_eq!(t.next_due(), Some(t0 + s));
        assert!(t.pop_due(t0).is_none());
        let due: Vec<_> = std::iter::from_fn(|| t.pop_due(t0 + 2 * s))
            .map(|w| w.job.name)
            .collect();
        assert_eq!(due, ["a1", "a2", "b"]);
        assert_eq!(t.next_due(), Some(t0 + 3 * s));
        assert_eq!(t.pop_any().map(|w| w.job.name).as_deref(), Some("c"));
        assert!(t.is_empty());
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn waits_beyond_the_longest_are_cut_instead_of_overflowing() {
        let now = Now::read();
        assert_eq!(now.after(Duration::MAX), now.mono + Backoff::LONGEST);
        assert_eq!(
            now.after(Duration::from_secs(2)),
            now.mono + Duration::from_secs(2)
        );
    }
}
