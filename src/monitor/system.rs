//! How busy the whole machine is, to leave room for other processes: CPU busy time of every
//! core from `/proc/stat`, and the load average from `/proc/loadavg` (reported only: it is a
//! one-minute average that counts our own threads too, too slow and too self-referential to
//! steer a throttle). Without `/proc` (macOS) both come from sysinfo.

use std::time::Duration;

/// Cumulative CPU time of all cores: `(busy, total)`, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    pub busy: u64,
    pub total: u64,
}

impl CpuTicks {
    pub fn read() -> Option<CpuTicks> {
        let from_proc = || {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            parse_stat(stat.lines().next()?)
        };
        from_proc().or_else(super::portable::cpu_ticks)
    }

    /// Cores kept busy on average between `earlier` and `self`, by anything on the machine.
    pub fn busy_cores_since(&self, earlier: &CpuTicks, cores: usize) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total).filter(|&t| t > 0)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        Some(busy as f64 / total as f64 * cores as f64)
    }
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice` (guest time is
/// already inside user time, so it is not added again).
fn parse_stat(line: &str) -> Option<CpuTicks> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some(CpuTicks { busy, total: busy + idle + iowait })
}

/// The one-minute load average.
pub fn load_average() -> Option<f64> {
    proc_load_average().or_else(super::portable::load_average)
}

pub(super) fn proc_load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// How often the machine's load is re-read by the throttle.
pub const SYSTEM_SAMPLE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregate_line() {
        let t = parse_stat("cpu  100 5 20 800 10 1 2 3 0 0").unwrap();
        assert_eq!(t, CpuTicks { busy: 131, total: 941 });
        assert!(parse_stat("cpu0 1 2 3 4 5 6 7 8").is_none());
        assert!(parse_stat("cpu  1 2 x").is_none());
    }

    #[test]
    fn busy_cores_between_samples() {
        let a = CpuTicks { busy: 100, total: 400 };
        let b = CpuTicks { busy: 250, total: 600 };
        assert_eq!(b.busy_cores_since(&a, 2), Some(1.5));
        assert_eq!(a.busy_cores_since(&a, 2), None);
        assert!(CpuTicks::read().is_some());
    }
}
