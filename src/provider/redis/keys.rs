//! The key layout beside each queue `Q` (docs/redis.md, "Key layout").

use super::options::Settings;

/// The keys of one queue, as this consumer uses them.
#[derive(Debug)]
pub(super) struct QueueKeys {
    /// `Q`: pending jobs, producers `LPUSH`, consumers take from the right.
    pub(super) queue: String,
    /// `Q:processing:<consumer>`: jobs this process holds.
    pub(super) processing: String,
    /// `Q:consumers`: consumer id -> last heartbeat (server time).
    pub(super) consumers: String,
    /// `Q:delayed`: jobs waiting for `run_at` or a retry, by due time.
    pub(super) delayed: String,
    /// `Q:dead`: dead-letter records, newest first.
    pub(super) dead: String,
    /// `Q:sweep-lock`: held for the few milliseconds of an orphan sweep.
    pub(super) sweep_lock: String,
    /// Prefix of processing lists, to read the consumer id back.
    pub(super) processing_prefix: String,
}

/// Every queue's keys, this process's consumer id and the tag that
/// starts its delivery ids.
#[derive(Debug)]
pub(super) struct Keys {
    pub(super) consumer: String,
    /// The ULID that ends the consumer id: `<tag>.<n>` is the id of this
    /// process's n-th delivery (the id a job without one is given).
    pub(super) tag: String,
    pub(super) queues: Vec<QueueKeys>,
}

impl Keys {
    pub(super) fn new(s: &Settings) -> Keys {
        let tag = ulid::Ulid::generate().to_string();
        let consumer = consumer_id(&tag);
        let queues = s
            .queues
            .iter()
            .map(|q| QueueKeys::new(q, &consumer))
            .collect();
        Keys {
            consumer,
            tag,
            queues,
        }
    }
}

impl QueueKeys {
    pub(super) fn new(q: &str, consumer: &str) -> QueueKeys {
        let processing_prefix = format!("{q}:processing:");
        QueueKeys {
            queue: q.to_string(),
            processing: format!("{processing_prefix}{consumer}"),
            consumers: format!("{q}:consumers"),
            delayed: format!("{q}:delayed"),
            dead: format!("{q}:dead"),
            sweep_lock: format!("{q}:sweep-lock"),
            processing_prefix,
        }
    }
}

/// Unique per process start: host, pid and `tag` (a ULID). The scripts
/// read the tag back as what follows the last `:`.
fn consumer_id(tag: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}:{}:{tag}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = QueueKeys::new("jobs[1]", "h:1:ab");
        assert_eq!(k.processing, "jobs[1]:processing:h:1:ab");
        assert_eq!(k.processing_prefix, "jobs[1]:processing:");
        assert!(consumer_id("01TAG").ends_with(":01TAG"));
    }
}
