//! Receiving: the loop that takes outcomes, deliveries, control messages
//! and ticks, and reads the clock once per wake-up for everything below.

use super::timers::Now;
use super::{Control, Loop, State};
use crate::stats::{ChannelFill, SnapshotNames};
use crossbeam_channel::select;
use std::time::{Duration, Instant};

/// Outcomes, then deliveries, taken per turn before anything else is looked at.
const BATCH: usize = 256;
/// How often the snapshot is published.
const TICK: Duration = Duration::from_millis(500);

impl Loop {
    pub(super) fn run(&mut self) {
        let tick = crossbeam_channel::tick(TICK);
        let never = crossbeam_channel::never();
        self.publish();
        let mut busy = false;
        loop {
            if self.state != State::Running && self.inflight.is_empty() {
                return;
            }
            // While work is ready, take it without the cost of a select.
            if self.drain() {
                if tick.try_recv().is_ok() {
                    self.publish();
                }
                if let Ok(c) = self.m.control.try_recv() {
                    self.on_control(c);
                }
                self.after_wake();
                busy = true;
                continue;
            }
            // Just out of work: let the workers run once before parking, so
            // the next outcomes arrive as a batch instead of one wake-up each.
            if std::mem::take(&mut busy) {
                std::thread::yield_now();
                continue;
            }
            let now = Instant::now();
            let wait = self.next_wakeup(now).saturating_duration_since(now);
            let deliveries = if self.taking() {
                &self.m.deliveries
            } else {
                &never
            };
            select! {
                recv(self.m.done) -> d => if let Ok(d) = d { self.on_done(d, Now::read()) },
                recv(deliveries) -> d => match d {
                    Ok(d) => self.on_delivery(d, Now::read()),
                    Err(_) => self.deliveries_open = false,
                },
                recv(self.m.control) -> c => if let Ok(c) = c { self.on_control(c) },
                recv(tick) -> _ => self.publish(),
                default(wait) => {},
            }
            self.after_wake();
        }
    }

    /// Whether the manager takes deliveries now: always while stopping (to
    /// hand them back), else while in-flight work is under the limit.
    pub(super) fn taking(&self) -> bool {
        self.deliveries_open && (self.state != State::Running || self.inflight.len() < self.limit)
    }

    /// Handles up to a batch of ready outcomes and deliveries; returns
    /// whether there was any.
    pub(super) fn drain(&mut self) -> bool {
        // The clock is read once, and only when there is work.
        let mut now = None;
        let mut any = false;
        for _ in 0..BATCH {
            match self.m.done.try_recv() {
                Ok(d) => self.on_done(d, *now.get_or_insert_with(Now::read)),
                Err(_) => break,
            }
            any = true;
        }
        for _ in 0..BATCH {
            if !self.taking() {
                break;
            }
            match self.m.deliveries.try_recv() {
                Ok(d) => self.on_delivery(d, *now.get_or_insert_with(Now::read)),
                Err(_) => break,
            }
            any = true;
        }
        any
    }

    /// Fires due timers and checks the shutdown deadlines.
    pub(super) fn after_wake(&mut self) {
        if self.timers.is_empty() && self.state == State::Running {
            return;
        }
        let now = Now::read();
        self.fire_timers(now);
        self.check_deadline(now.mono);
    }

    /// When the loop must wake at the latest: the next timer or deadline.
    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut at = now + Duration::from_secs(3600);
        if let Some(due) = self.timers.next_due() {
            at = at.min(due);
        }
        match self.state {
            State::Draining { deadline } => at.min(deadline),
            State::Aborted { give_up } => at.min(give_up),
            State::Running => at,
        }
    }

    /// Publishes a snapshot for the stats server, hooks and library users.
    pub(super) fn publish(&mut self) {
        let names = SnapshotNames {
            pools: self
                .m
                .pools
                .iter()
                .map(|p| (p.config.name.as_str(), p.config.count))
                .collect(),
            providers: &self.m.providers,
        };
        let channel = ChannelFill {
            len: self.m.deliveries.len(),
            capacity: self.m.deliveries.capacity().unwrap_or(0),
        };
        let snap = self.stats.snapshot(
            &names,
            self.timers.len(),
            self.state != State::Running,
            channel,
        );
        self.m.hooks.on_tick(&snap);
        self.m.reader.publish(snap);
    }

    pub(super) fn on_control(&mut self, c: Control) {
        match c {
            Control::Shutdown => self.begin_shutdown(),
            Control::Abort => self.abort(),
            Control::ProviderFailed(name) => {
                self.report.failed_provider = Some(name);
                self.begin_shutdown();
            }
            Control::Resize { pool, count } => self.resize(&pool, count),
        }
    }

    /// Resizes a pool; refused while shutting down or for an unknown pool.
    fn resize(&mut self, name: &str, count: usize) {
        let Some(i) = self.route(name) else {
            log::warn!("resize refused: no pool named {name:?}");
            return;
        };
        let old = self.m.pools[i].config.count;
        if count == old {
            return;
        }
        if count == 0 {
            log::warn!("resize of pool {name} refused: a pool needs at least 1 thread");
            return;
        }
        if self.state != State::Running {
            log::warn!("resize of pool {name} refused: shutting down");
            return;
        }
        let pool = &mut self.m.pools[i];
        let result = pool.resize(count);
        let new = pool.config.count;
        // The manager holds at most threads + channel bound jobs.
        self.limit = (self.limit + new).saturating_sub(old);
        if !self.backlog[i].is_empty() {
            self.flush_backlog(i);
        }
        match result {
            Ok(()) => log::info!("pool {name}: resized from {old} to {new} thread(s)"),
            Err(e) => {
                log::error!("pool {name}: resized from {old} to {new} thread(s), not {count}: {e}")
            }
        }
        self.publish();
    }
}
