//! One integration test binary (see docs/development.md): real processes,
//! real signals, real sockets, a real redis-server.

mod util;

mod cli;
mod config_props;
mod core;
mod custom_provider;
mod disk;
mod docs;
mod http;
mod http_limits;
mod httpworker;
mod producers;
mod redis;
mod soak;
mod systemd;
