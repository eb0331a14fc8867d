//! systemd's service notifications (`sd_notify(3)`) as manager [`Hooks`],
//! so a `Type=notify` unit knows when goworker is ready, what it is doing,
//! that its manager loop is alive, and when it is stopping.
//!
//! The protocol is one datagram of `KEY=value` lines to the unix socket
//! named by `NOTIFY_SOCKET`; it is written here by hand because the
//! `sd-notify` crate reads the socket from the environment on every call
//! (an embedding program or a test cannot aim it elsewhere) and does not
//! understand abstract socket names (`@name`).
//!
//! Everything is sent from the manager thread: `WATCHDOG=1` comes from
//! [`Hooks::on_tick`], so a manager that stalls stops pinging and systemd
//! restarts the service after `WatchdogSec`.

use crate::manager::Hooks;
use crate::stats::Snapshot;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Sends `READY=1`, `STATUS=`, `WATCHDOG=1` and `STOPPING=1` to systemd.
///
/// - `READY=1` once, on the first tick at which every provider reports
///   itself up (pools are up before the manager runs), with a `STATUS=`.
/// - `STATUS=` every 2 s: jobs/s, in flight, totals; before `READY=1` it
///   names the providers still down and why.
/// - `WATCHDOG=1` every `WATCHDOG_USEC / 2` (at most once per 500 ms
///   tick) when the watchdog is on.
/// - `STOPPING=1` when shutdown begins.
///
/// A disabled `Notify` (no `NOTIFY_SOCKET`) sends nothing.
///
/// # Examples
/// ```
/// use goworker::{Config, Notify, Service};
///
/// let service = Service::builder(Config::empty())
///     .hooks(Notify::from_env())
///     .build()?;
/// # Ok::<(), goworker::Error>(())
/// ```
#[derive(Debug)]
pub struct Notify {
    target: Option<Target>,
    watchdog: Option<Duration>,
    ready: bool,
    last_ping: Option<Instant>,
    last_status: Option<Instant>,
    send_failed: bool,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notify {
    /// From the environment systemd sets: `NOTIFY_SOCKET` (unset or empty:
    /// disabled), `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog is on
    /// when `WATCHDOG_USEC` is a positive number and `WATCHDOG_PID` is
    /// unset or this process). A socket that cannot be set up is logged
    /// and leaves the notifier disabled.
    pub fn from_env() -> Notify {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let pid_matches = std::env::var("WATCHDOG_PID")
            .map(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && pid_matches)
            .map(Duration::from_micros);
        match socket {
            Some(s) => Notify::new(&s, watchdog).unwrap_or_else(|e| {
                log::error!("NOTIFY_SOCKET {}: {e}; not notifying systemd", s.display());
                Notify::disabled()
            }),
            None => Notify::disabled(),
        }
    }

    /// Notifies the socket at `socket` (a path, or `@name` for an abstract
    /// socket); `watchdog` is systemd's `WatchdogSec` (pings go out at half
    /// of it), `None` for no pings.
    ///
    /// # Errors
    /// When the address is invalid or no socket can be made.
    pub fn new(socket: &OsStr, watchdog: Option<Duration>) -> io::Result<Notify> {
        let addr = match socket.as_bytes().strip_prefix(b"@") {
            Some(name) => abstract_addr(name)?,
            None => SocketAddr::from_pathname(socket)?,
        };
        let socket = UnixDatagram::unbound()?;
        // The manager thread must never block on a slow reader.
        socket.set_nonblocking(true)?;
        Ok(Notify {
            target: Some(Target { socket, addr }),
            watchdog,
            ..Notify::disabled()
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notify {
        Notify {
            target: None,
            watchdog: None,
            ready: false,
            last_ping: None,
            last_status: None,
            send_failed: false,
        }
    }

    /// Whether it sends anything.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The interval between `WATCHDOG=1` pings, when the watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    fn send(&mut self, msg: &str) {
        let Some(t) = &self.target else { return };
        match t.socket.send_to_addr(msg.as_bytes(), &t.addr) {
            Ok(_) => self.send_failed = false,
            // Log a failure once, not on every tick.
            Err(e) if !self.send_failed => {
                self.send_failed = true;
                log::warn!("sd_notify: {e}");
            }
            Err(_) => {}
        }
    }
}

fn due(last: Option<Instant>, every: Duration, now: Instant) -> bool {
    last.is_none_or(|l| now.duration_since(l) >= every)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// The one-line `STATUS=` text for a snapshot.
pub(crate) fn status_line(s: &Snapshot, ready: bool) -> String {
    let down: Vec<String> = s
        .providers
        .iter()
        .filter(|(_, p)| !p.up)
        .map(|(name, p)| match p.reason.as_str() {
            "" => name.clone(),
            why => format!("{name} ({why})"),
        })
        .collect();
    let threads: usize = s.pools.values().map(|t| t.threads).sum();
    let line = if !ready && !s.stopping {
        format!("starting: waiting for provider(s) {}", down.join(", "))
    } else if s.stopping {
        format!("stopping: {} job(s) still running", s.in_flight)
    } else {
        let mut l = format!(
            "{:.1} jobs/s, {} in flight, {} succeeded, {} failed, {} waiting to retry, {} thread(s)",
            s.jobs_per_sec, s.in_flight, s.totals.succeeded, s.totals.failed, s.delayed, threads
        );
        if !down.is_empty() {
            l.push_str(&format!("; down: {}", down.join(", ")));
        }
        l
    };
    // One line: a newline would start a new KEY=value.
    line.replace(['\n', '\r'], " ")
}

impl Hooks for Notify {
    fn on_tick(&mut self, s: &Snapshot) {
        if !self.is_enabled() {
            return;
        }
        let now = Instant::now();
        let mut msg = String::new();
        let mut status = due(self.last_status, STATUS_EVERY, now);
        if !self.ready && !s.stopping && s.providers.values().all(|p| p.up) {
            self.ready = true;
            status = true;
            log::info!("ready: every provider is up; notifying systemd");
            msg.push_str("READY=1\n");
        }
        if status {
            self.last_status = Some(now);
            msg.push_str(&format!("STATUS={}\n", status_line(s, self.ready)));
        }
        if let Some(every) = self.watchdog_interval() {
            if due(self.last_ping, every, now) {
                self.last_ping = Some(now);
                msg.push_str("WATCHDOG=1\n");
            }
        }
        if !msg.is_empty() {
            self.send(&msg);
        }
    }

    fn on_stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=stopping: finishing running jobs\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ProviderStats, TypeStats};

    fn snapshot(up: bool) -> Snapshot {
        let mut s = Snapshot::default();
        s.providers.insert(
            "queue".into(),
            ProviderStats {
                up,
                reason: if up {
                    String::new()
                } else {
                    "refused\nretrying".into()
                },
                ..ProviderStats::default()
            },
        );
        s.pools.insert(
            "cli".into(),
            TypeStats {
                threads: 3,
                ..TypeStats::default()
            },
        );
        s
    }

    #[test]
    fn status_names_providers_still_down_on_one_line() {
        let line = status_line(&snapshot(false), false);
        assert_eq!(
            line,
            "starting: waiting for provider(s) queue (refused retrying)"
        );
    }

    #[test]
    fn status_summarises_when_ready() {
        let line = status_line(&snapshot(true), true);
        assert!(line.starts_with("0.0 jobs/s, 0 in flight"), "{line}");
        assert!(line.ends_with("3 thread(s)"), "{line}");
    }

    #[test]
    fn ready_waits_for_providers_and_pings_follow() {
        let dir = std::env::temp_dir().join(format!("goworker-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = Notify::new(path.as_os_str(), Some(Duration::from_millis(2))).unwrap();
        let mut buf = [0u8; 4096];
        let mut recv = || {
            let len = rx.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..len]).into_owned()
        };
        n.on_tick(&snapshot(false));
        let first = recv();
        assert!(!first.contains("READY=1"), "{first}");
        assert!(first.contains("STATUS=starting"), "{first}");
        assert!(first.contains("WATCHDOG=1"), "{first}");
        std::thread::sleep(Duration::from_millis(2));
        n.on_tick(&snapshot(true));
        let second = recv();
        assert!(second.starts_with("READY=1\nSTATUS=0.0 jobs/s"), "{second}");
        n.on_stopping();
        assert!(recv().starts_with("STOPPING=1\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn disabled_sends_nothing() {
        let mut n = Notify::disabled();
        assert!(!n.is_enabled());
        n.on_tick(&snapshot(true));
        n.on_stopping();
    }
}
