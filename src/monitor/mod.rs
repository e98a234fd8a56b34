//! Operational figures and the CPU throttle: process CPU and memory, latency of recent calls,
//! machine load (from `/proc` on Linux, sysinfo elsewhere). Nothing here knows about models;
//! the runtime calls [`Monitor::admit`] before and [`Monitor::record`] after each run.

mod latency;
mod portable;
pub mod process;
pub mod system;
mod throttle;
mod usage;

use std::time::Duration;

pub use latency::{Latencies, Percentiles};
pub use throttle::{Throttle, ThrottleStatus};
pub use usage::CpuUsage;

/// The measurements of one runtime.
#[derive(Debug)]
pub struct Monitor {
    pub latencies: Latencies,
    pub cpu: CpuUsage,
    pub throttle: Throttle,
}

impl Monitor {
    pub fn new(max_threads: usize, cpu_limit: Option<f64>) -> Self {
        Monitor {
            latencies: Latencies::default(),
            cpu: CpuUsage::default(),
            throttle: Throttle::new(max_threads, cpu_limit),
        }
    }

    /// Before a run: may pause the caller (throttle); returns the threads to run with.
    pub fn admit(&self) -> usize {
        self.throttle.admit()
    }

    /// After a successful run.
    pub fn record(&self, latency: Duration) {
        self.latencies.record(latency);
        self.cpu.sample();
    }
}
