//! What the kernel reports about this process: CPU time used by all its threads (`getrusage`
//! on every Unix), and resident memory (`/proc` on Linux, sysinfo elsewhere). Where a platform
//! reports neither the figures are `None` rather than guesses.

use std::time::Duration;

/// CPU time (user + system) used so far by every thread of this process: what `ps` and `top`
/// divide by wall time for their %CPU.
pub fn cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrusage, UsageWho};
        let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
        Some(timeval(usage.user_time()) + timeval(usage.system_time()))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(unix)]
pub(crate) fn timeval(t: nix::sys::time::TimeVal) -> Duration {
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let micros = u64::try_from(t.tv_usec()).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

/// Resident set size of this process in bytes (`VmRSS` in `/proc/self/status`, else from
/// sysinfo).
pub fn rss_bytes() -> Option<u64> {
    proc_rss_bytes().or_else(super::portable::rss_bytes)
}

pub(super) fn proc_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = cpu_time().expect("getrusage works on Linux");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = cpu_time().expect("getrusage works on Linux") - before;
        assert!(spent >= Duration::from_millis(20), "busy 60 ms counted as {spent:?}");
    }

    #[test]
    fn rss_is_plausible() {
        let rss = rss_bytes().expect("/proc/self/status on Linux");
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
    }
}
