//! The connection pool (r2d2 over the redis crate's sync client) and the
//! reconnect back-off. Connections are taken lazily: Redis may be down at
//! start-up and come and go while the service runs.

use super::options::Settings;
use crate::backoff::{Backoff, Jitter};
use crate::error::Error;
use crate::provider::ProviderContext;
use redis::IntoConnectionInfo;
use std::time::Duration;

/// A pooled connection.
pub(super) type Conn = r2d2::PooledConnection<redis::Client>;

/// How long a reply may take: longer than any blocking command we send.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared pool; cheap to clone.
#[derive(Clone)]
pub(super) struct Redis {
    pool: r2d2::Pool<redis::Client>,
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
        Ok(Redis { pool })
    }

    /// A connection, or why there is none.
    pub(super) fn get(&self) -> Result<Conn, String> {
        let c = self.pool.get().map_err(|e| e.to_string())?;
        let _ = c.set_read_timeout(Some(READ_TIMEOUT));
        Ok(c)
    }
}

/// Reports the connection as lost; logs only on a change of state.
pub(super) fn down(ctx: &ProviderContext, err: &str) {
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

/// Whether a failure deserves one quiet retry: the connection that failed
/// had worked before, and may only have gone stale (Redis restarted while
/// it sat in the pool). Takes the connection out of `slot` either way.
pub(super) fn quiet_retry(slot: &mut Option<Conn>, retried: &mut bool) -> bool {
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
        assert!(!quiet_retry(&mut None, &mut retried));
        assert!(!retried);
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
