//! One integration test binary (see STYLE.md): real processes, real
//! signals, real sockets, a real redis-server.

mod util;

mod config_props;
mod core;
mod disk;
mod http;
mod httpworker;
mod redis;
mod soak;
mod systemd;
