//! The connection pool (r2d2 over the redis crate's sync client) and the
//! reconnect back-off. Connections are taken lazily: Redis may be down at
//! start-up and come and go while the service runs.

use super::options::Settings;
use crate::backoff::{Backoff, Jitter};
use crate::error::Error;
use crate::provider::ProviderContext;
use redis::IntoConnectionInfo;
use std::sync::Arc;
use std::time::Duration;

/// A pooled connection.
pub(super) type Conn = r2d2::PooledConnection<redis::Client>;

/// How long a reply may take: longer than any blocking command we send.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared pool; cheap to clone.
#[derive(Clone)]
pub(super) struct Redis {
    pool: r2d2::Pool<redis::Client>,
    /// Why the last connection attempt failed. r2d2 hands its last error
    /// to one waiter only; the others (fetch, acks, upkeep) would report a
    /// bare "timed out waiting for connection" in `/healthz`.
    last_cause: Arc<std::sync::Mutex<Option<String>>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redis")
    }
}

impl Redis {
    /// Builds the pool without connecting.
    ///
    /// # Errors
    /// A URL the client cannot use, or a `password_env` variable not set.
    pub(super) fn new(s: &Settings) -> Result<Redis, Error> {
        if s.url.starts_with("rediss://") {
            // The TLS client needs a process-wide crypto provider; another
            // part of the binary may have installed one already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut info = s
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| Error::provider(&s.name, format!("url {}: {e}", s.redacted_url)))?;
        if let Some(var) = &s.password_env {
            let password = std::env::var(var).map_err(|_| {
                Error::provider(
                    &s.name,
                    format!("password_env: environment variable {var} is not set"),
                )
            })?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)
            .map_err(|e| Error::provider(&s.name, format!("url {}: {e}", s.redacted_url)))?;
        let pool = r2d2::Pool::builder()
            .max_size(s.pool_size)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(1))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(client);
        Ok(Redis {
            pool,
            last_cause: Arc::default(),
        })
    }

    /// A connection, or why there is none: the cause the connection
    /// attempts met (e.g. "Connection refused"), not only that none came.
    pub(super) fn get(&self) -> Result<Conn, Fail> {
        let c = self.pool.get().map_err(|e| {
            let text = e.to_string();
            let Ok(mut last) = self.last_cause.lock() else {
                return Fail::other(text);
            };
            match text.split_once(": ") {
                Some((_, cause)) => {
                    *last = Some(cause.to_string());
                    Fail::other(text)
                }
                None => match last.as_deref() {
                    Some(cause) => Fail::other(format!("{text}: {cause}")),
                    None => Fail::other(text),
                },
            }
        })?;
        let _ = c.set_read_timeout(Some(READ_TIMEOUT));
        Ok(c)
    }
}

/// Why a command failed.
#[derive(Debug)]
pub(super) struct Fail {
    pub(super) message: String,
    /// A signal interrupted the socket call (EINTR): the connection is
    /// fine, only the reply of the command is unknown.
    pub(super) interrupted: bool,
}

impl Fail {
    pub(super) fn other(message: impl Into<String>) -> Fail {
        Fail {
            message: message.into(),
            interrupted: false,
        }
    }
}

impl From<redis::RedisError> for Fail {
    fn from(e: redis::RedisError) -> Fail {
        type Inner = Arc<dyn std::error::Error + Send + Sync>;
        let io = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<Inner>())
            .and_then(|inner| inner.downcast_ref::<std::io::Error>());
        let interrupted = io.is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted);
        Fail {
            message: e.to_string(),
            interrupted,
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Keeps asynchronous signals away from the calling thread, which blocks
/// in socket reads.
///
/// The connections have a read timeout (`SO_RCVTIMEO`), and a socket read
/// with a timeout fails with EINTR whenever a signal handler runs on its
/// thread, `SA_RESTART` or not (signal(7)). A process-directed signal
/// (SIGHUP for a reload, SIGTERM, a child's SIGCHLD should anything catch
/// it) goes to any thread that does not block it; when the main thread
/// already has one pending, the kernel picks another, such as one waiting
/// in `BLMOVE`. The redis client then reports the read as failed and the
/// reply as lost. With the signals blocked here they are handled on the
/// other threads, and a read on this one is never interrupted. Faults
/// (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS) stay unblocked.
pub(super) fn block_signals() {
    // SAFETY: sigset_t is plain data initialised by sigfillset before use;
    // pthread_sigmask only changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Reports the connection as lost; logs only on a change of state.
pub(super) fn down(ctx: &ProviderContext, err: &Fail) {
    if ctx.set_down(&format!("redis: {err}")) {
        log::warn!(
            "provider {}: redis unreachable: {err}; retrying with back-off",
            ctx.name()
        );
    }
}

/// Reports the connection as working; logs only on a change of state.
pub(super) fn up(ctx: &ProviderContext) {
    if ctx.set_up() {
        log::info!("provider {}: connected to redis", ctx.name());
    }
}

/// Whether a failure deserves a quiet retry: always for an interrupted
/// call (the connection is kept), and once for a connection that had worked
/// before and may only have gone stale (Redis restarted while it sat in the
/// pool). Otherwise the connection is taken out of `slot`.
pub(super) fn quiet_retry(slot: &mut Option<Conn>, retried: &mut bool, e: &Fail) -> bool {
    if e.interrupted && slot.is_some() {
        return true;
    }
    let had = slot.take().is_some();
    let retry = had && !*retried;
    if retry {
        // Until the next success: one quiet retry per outage.
        *retried = true;
    }
    retry
}

/// Reconnect back-off: 100 ms doubling to 5 s, the same every time (no
/// jitter), counted by [`Backoff::steps`] from one outage to the next success.
pub(super) const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
    jitter: Jitter::None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_quiet_retry_without_a_connection_that_worked() {
        let mut retried = false;
        assert!(!quiet_retry(&mut None, &mut retried, &Fail::other("x")));
        assert!(!retried);
    }

    #[test]
    fn an_interrupted_call_is_told_apart_and_keeps_its_connection() {
        let eintr = redis::RedisError::from(std::io::Error::from_raw_os_error(libc::EINTR));
        assert!(Fail::from(eintr).interrupted);
        let reset =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!Fail::from(reset).interrupted);
    }

    #[test]
    fn reconnect_backoff_doubles_to_a_cap() {
        let mut b = RECONNECT.steps();
        let d: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
