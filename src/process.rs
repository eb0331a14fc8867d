//! The process's own figures for `/metrics` (Prometheus's standard
//! `process_*` metrics), read from `/proc/self` at each scrape.

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// One reading of the process's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessStats {
    pub(crate) start_time_seconds: f64,
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: u64,
    pub(crate) virtual_bytes: u64,
    pub(crate) open_fds: u64,
    pub(crate) max_fds: u64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is no procfs.
    pub(crate) fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: likewise.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let f = stat_fields(&stat)?;
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        let max_fds = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
            0 => limit.rlim_cur,
            _ => 0,
        };
        Some(ProcessStats {
            start_time_seconds: btime + field(19)? as f64 / ticks,
            cpu_seconds: (field(11)? + field(12)?) as f64 / ticks,
            virtual_bytes: field(20)?,
            resident_bytes: field(21)?.saturating_mul(page),
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            max_fds,
        })
    }

    pub(crate) fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        e.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, f64>(&self.cpu_seconds, None)?;
        for (name, help, value) in [
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                self.start_time_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                self.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                self.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                self.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                self.max_fds as f64,
            ),
        ] {
            e.encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        Ok(())
    }
}

/// The fields of `/proc/self/stat` after the command name (which may hold
/// spaces and parentheses), so that index 0 is the state (field 3 of
/// proc(5)).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read().expect("procfs");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes);
        assert!(p.open_fds >= 3 && p.max_fds >= p.open_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0);
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let f = stat_fields("42 (we ird) name)) S 1 2 3").unwrap();
        assert_eq!(f, ["S", "1", "2", "3"]);
        assert!(stat_fields("no parenthesis").is_none());
    }
}
