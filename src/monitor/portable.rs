//! The operating-system figures from `sysinfo`, for platforms without `/proc` (macOS, the BSDs,
//! Windows): resident memory of this process, the machine's CPU busy time, the load average.
//! On Linux `/proc` is read directly (one file read instead of sysinfo's process scan); these
//! are its fallback there, and the tests compare the two.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

use super::system::CpuTicks;

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> Option<u64> {
    let pid = sysinfo::get_current_pid().ok()?;
    let mut system = System::new();
    let kind = ProcessRefreshKind::nothing().with_memory();
    system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), false, kind);
    system.process(pid).map(|p| p.memory()).filter(|&bytes| bytes > 0)
}

/// The one-minute load average (`None` where the platform has none: Windows reports zeros).
pub fn load_average() -> Option<f64> {
    let load = System::load_average();
    let reported = load.one > 0.0 || load.five > 0.0 || load.fifteen > 0.0;
    (reported && load.one.is_finite()).then_some(load.one)
}

/// The machine's busy fraction as cumulative [`CpuTicks`] (microseconds of wall time, busy
/// ones weighted by the share of all cores in use): sysinfo reports usage between refreshes,
/// so each read adds the interval since the previous one.
pub fn cpu_ticks() -> Option<CpuTicks> {
    static MACHINE: OnceLock<Mutex<Machine>> = OnceLock::new();
    let machine = MACHINE.get_or_init(|| Mutex::new(Machine::new()));
    // The state is replaced whole; a panic elsewhere cannot leave it half-written.
    let mut machine = machine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    machine.advance()
}

/// sysinfo's view of the cores and the ticks summed so far.
struct Machine {
    system: System,
    last: Instant,
    busy: f64,
    total: f64,
}

impl Machine {
    fn new() -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        Machine { system, last: Instant::now(), busy: 0.0, total: 0.0 }
    }

    fn advance(&mut self) -> Option<CpuTicks> {
        let now = Instant::now();
        // Refreshing sooner than sysinfo's minimum interval would report noise.
        if now.duration_since(self.last) >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            self.system.refresh_cpu_usage();
            let usage = f64::from(self.system.global_cpu_usage()).clamp(0.0, 100.0) / 100.0;
            let micros = now.duration_since(self.last).as_secs_f64() * 1e6;
            self.busy += usage * micros;
            self.total += micros;
            self.last = now;
        }
        let ticks = CpuTicks { busy: self.busy as u64, total: self.total as u64 };
        (!self.system.cpus().is_empty()).then_some(ticks)
    }
}

/// Linux only: the figures compared with `/proc`'s.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn rss_agrees_with_proc() {
        let portable = rss_bytes().expect("sysinfo reports this process");
        let proc = super::super::process::proc_rss_bytes().expect("/proc/self/status on Linux");
        // Two reads a moment apart by different routes: the same order of magnitude.
        let ratio = portable as f64 / proc as f64;
        assert!((0.5..2.0).contains(&ratio), "sysinfo {portable} vs /proc {proc}");
    }

    #[test]
    fn load_average_agrees_with_proc() {
        let portable = load_average().expect("Linux has a load average");
        let proc = super::super::system::proc_load_average().expect("/proc/loadavg");
        assert!((portable - proc).abs() < 4.0, "sysinfo {portable} vs /proc {proc}");
    }

    #[test]
    fn cpu_ticks_accumulate_a_busy_share() {
        let first = cpu_ticks().expect("sysinfo sees the cores");
        let start = Instant::now();
        let mut x = 1u64;
        while start.elapsed() < sysinfo::MINIMUM_CPU_UPDATE_INTERVAL * 2 {
            x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(7));
        }
        let second = cpu_ticks().expect("sysinfo sees the cores");
        assert!(second.total > first.total && second.busy >= first.busy);
        let cores = super::super::process::cores();
        let busy = second.busy_cores_since(&first, cores).expect("time passed");
        // This thread spun the whole interval: at least a sliver of one core, at most all.
        assert!(busy > 0.05 && busy <= cores as f64 + 1e-9, "{busy} of {cores} cores busy");
    }
}
