//! The `redis` provider: reliable fetch from one or more Redis lists, so
//! that many goworker processes on many hosts can share one Redis and none
//! of them loses a job when it dies.
//!
//! - [`options`]: the YAML options and their validation.
//! - [`keys`]: the key layout beside each queue (docs/redis.md).
//! - [`stamp`]: the delivery stamp and carried entries around payloads.
//! - [`scripts`]: the Lua scripts (batch fetch, recovery, promotion).
//! - [`conn`]: the r2d2 pool and reconnect back-off.
//! - [`fetch`]: the fetch loop on the provider's thread.
//! - [`ack`]: the acker and the thread that pipelines acknowledgements.
//! - [`keeper`]: heartbeats, the orphan sweep and the delayed-job scheduler.
//! - [`admin`]: `goworker enqueue` and `goworker dead`.

mod ack;
mod admin;
mod conn;
mod fetch;
mod keeper;
mod keys;
mod options;
mod scripts;
mod stamp;

pub(crate) use options::RedisOptions;

use super::{DeadLetters, Enqueue, Provider, ProviderContext, ProviderType};
use crate::error::Error;
use crate::error::PluginError;
use ack::AckThread;
use conn::Redis;
use keeper::Keeper;
use keys::Keys;
use options::Settings;
use std::sync::Arc;

impl ProviderType for RedisOptions {
    const TYPE: &'static str = "redis";
    const DESCRIPTION: &'static str = "reliable fetch from redis lists (LPUSH producers, as GoWorker); \
         durable retries, delays and dead letters; many processes may share one redis";

    fn build(self, name: &str) -> Result<Box<dyn Provider>, PluginError> {
        let settings = Settings::from_options(name, self)?;
        Ok(Box::new(RedisProvider {
            settings: Arc::new(settings),
            redis: None,
            acks: None,
            keeper: None,
        }))
    }
}

/// A configured redis provider.
struct RedisProvider {
    settings: Arc<Settings>,
    redis: Option<Redis>,
    acks: Option<AckThread>,
    keeper: Option<Keeper>,
}

impl RedisProvider {
    /// The pool, built on first use (no connection is made here).
    fn redis(&mut self) -> Result<&Redis, Error> {
        match &mut self.redis {
            Some(r) => Ok(r),
            slot => Ok(slot.insert(Redis::new(&self.settings)?)),
        }
    }
}

impl Provider for RedisProvider {
    fn open(&mut self, _ctx: &ProviderContext) -> Result<(), Error> {
        self.redis()?;
        Ok(())
    }

    fn run(&mut self, ctx: &ProviderContext) -> Result<(), Error> {
        // This thread blocks in socket reads with a timeout: see there.
        conn::block_signals();
        let redis = self.redis()?.clone();
        let s = self.settings.clone();
        let keys = Arc::new(Keys::new(&s));
        log::info!(
            "provider {}: redis {} as consumer {}, queues {:?}",
            s.name,
            s.redacted_url,
            keys.consumer,
            s.queues
        );
        let acks = AckThread::start(redis.clone(), s.clone(), keys.clone(), ctx.clone())?;
        let keeper = Keeper::start(redis.clone(), s.clone(), keys.clone(), ctx.clone())?;
        let sender = acks.sender();
        let settled = acks.settled();
        self.acks = Some(acks);
        self.keeper = Some(keeper);
        fetch::Fetcher::new(redis, s, keys, sender, settled).run(ctx);
        Ok(())
    }

    fn finish(&mut self) {
        if let Some(acks) = self.acks.take() {
            acks.finish();
        }
        if let Some(keeper) = self.keeper.take() {
            keeper.finish();
        }
    }

    fn rate_limit(&self) -> Option<f64> {
        Some(self.settings.rate_limit)
    }

    fn enqueue(&mut self) -> Option<&mut dyn Enqueue> {
        Some(self)
    }

    fn dead_letters(&mut self) -> Option<&mut dyn DeadLetters> {
        Some(self)
    }
}
