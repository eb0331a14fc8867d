//! Shutdown: stop taking work and hand back what waits, let running jobs
//! finish until the deadline, kill them, give up on threads that do not
//! stop, and close and join the pools.

use super::timers::Now;
use super::{Loop, State};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long killed jobs may take to come back before they are handed back
/// without their threads.
const GIVE_UP_AFTER: Duration = Duration::from_secs(5);

impl Loop {
    pub(super) fn begin_shutdown(&mut self) {
        if self.state != State::Running {
            return;
        }
        log::info!(
            "shutting down: {} job(s) running, waiting up to {:?}",
            self.inflight.len(),
            self.m.shutdown_timeout
        );
        let now = Now::read();
        let deadline = now.after(self.m.shutdown_timeout);
        self.state = State::Draining { deadline };
        // Failure handlers share this deadline; they get no second one.
        self.m.failures.begin_shutdown(deadline);
        self.m.stopping.store(true, Ordering::Release);
        self.m.stop_signal = None;
        self.m.draining.store(true, Ordering::Release);
        self.m.hooks.on_stopping();
        while let Some(t) = self.timers.pop_any() {
            self.stats.on_released(t.provider, None);
            self.hand_back(t.acker, Some(&t.job));
        }
        for pool in 0..self.backlog.len() {
            while let Some(task) = self.backlog[pool].pop_front() {
                self.release_unsent(pool, task);
            }
        }
        self.release_waiting_deliveries(now);
        self.publish();
    }

    /// Hands back every delivery in the channel (they raced the stop flag).
    fn release_waiting_deliveries(&mut self, now: Now) {
        while let Ok(d) = self.m.deliveries.try_recv() {
            self.on_delivery(d, now);
        }
    }

    pub(super) fn abort(&mut self) {
        self.begin_shutdown();
        if matches!(self.state, State::Aborted { .. }) {
            return;
        }
        log::warn!(
            "killing {} running job(s); they are handed back",
            self.inflight.len()
        );
        self.report.aborted = true;
        // Workers that do not heed the abort get a little longer, then
        // their jobs are handed back without them.
        self.state = State::Aborted {
            give_up: Now::read().after(GIVE_UP_AFTER),
        };
        for p in &self.m.pools {
            p.abort();
        }
    }

    pub(super) fn check_deadline(&mut self, now: Instant) {
        match self.state {
            State::Draining { deadline } if now >= deadline => self.abort(),
            State::Aborted { give_up } if now >= give_up => {
                log::error!(
                    "{} job(s) did not stop; handing them back without waiting",
                    self.inflight.len()
                );
                self.gave_up = true;
                for (_, f) in std::mem::take(&mut self.inflight) {
                    self.stats.on_released(f.provider, None);
                    self.hand_back(f.acker, None);
                }
            }
            _ => {}
        }
    }

    /// After the loop: hands back late deliveries, publishes the last
    /// snapshot, closes the pools and joins them unless threads are stuck.
    pub(super) fn finish(mut self) -> super::ShutdownReport {
        self.release_waiting_deliveries(Now::read());
        self.publish();
        let stuck = self.gave_up;
        for p in &mut self.m.pools {
            p.close();
        }
        if !stuck {
            for p in &mut self.m.pools {
                p.join();
            }
        }
        self.report
    }
}
