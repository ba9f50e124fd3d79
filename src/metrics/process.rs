//! The process metrics Prometheus users expect from every exporter
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read from
//! `/proc/self` at each scrape. Elsewhere than on Linux there is no `/proc`, and the
//! collector exports nothing.
//!
//! CPU times in `/proc` count clock ticks of `USER_HZ`, which Linux fixes at 100 on
//! every architecture it exposes to user space.

use std::fmt::Error;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

/// `USER_HZ`: clock ticks per second in `/proc/*/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of `/proc/self`.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    start_time_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: u64,
}

impl Sample {
    /// `None` where `/proc` cannot be read.
    fn read() -> Option<Sample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Sample::parse(&stat, &status, &limits, &boot, open_fds)
    }

    fn parse(stat: &str, status: &str, limits: &str, boot: &str, open_fds: u64) -> Option<Sample> {
        // After the command name in parentheses (which may hold spaces), fields
        // from the third on: utime is the 14th, stime the 15th, starttime the 22nd.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let ticks = (field(14)? + field(15)?) as f64;
        let boot_time = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        };
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse::<u64>()
            .ok()?;
        Some(Sample {
            cpu_seconds: ticks / TICKS_PER_SECOND,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / TICKS_PER_SECOND,
            resident_bytes: kib("VmRSS:")? * 1024,
            virtual_bytes: kib("VmSize:")? * 1024,
            open_fds,
            max_fds,
        })
    }
}

/// Registered with the metrics registry: reads `/proc/self` at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let Some(s) = Sample::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                s.start_time_seconds,
            ),
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                s.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                None,
                s.max_fds as f64,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (tele hub) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0 \
                    12345 1000000 2000 18446744073709551615";
        let status = "Name:\ttelehub\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                20000                files\n";
        let boot = "cpu  1 2 3\nbtime 1796000000\n";
        let s = Sample::parse(stat, status, limits, boot, 17).expect("parses");
        assert_eq!(
            s,
            Sample {
                cpu_seconds: 3.0,
                start_time_seconds: 1_796_000_000.0 + 123.45,
                resident_bytes: 10_240 * 1024,
                virtual_bytes: 204_800 * 1024,
                open_fds: 17,
                max_fds: 20_000,
            }
        );
        assert_eq!(Sample::parse("garbage", status, limits, boot, 1), None);
    }

    #[test]
    fn this_process_is_described() {
        let Some(s) = Sample::read() else {
            return; // not Linux
        };
        assert!(s.resident_bytes > 0 && s.open_fds > 0 && s.max_fds >= s.open_fds);
        assert!(s.start_time_seconds > 1_600_000_000.0);
    }
}
