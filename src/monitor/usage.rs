//! This process's CPU usage over a recent window, as `top` shows it (100 = one core busy).
//! Samples of (wall clock, process CPU time) are taken at most every [`SAMPLE_EVERY`] — by
//! inference calls and by status reads — and the usage is the CPU time spent between the oldest
//! sample of the window and now.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process;

/// The span `cpu_usage` covers (at least, when samples that old exist).
pub const WINDOW: Duration = Duration::from_secs(2);
/// Least spacing of samples: a `getrusage` per inference would cost more than small models.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct CpuUsage {
    base: Instant,
    /// Milliseconds since `base` of the last sample, read without the lock on every call.
    last_ms: AtomicU64,
    samples: Mutex<VecDeque<(Instant, Duration)>>,
}

impl Default for CpuUsage {
    fn default() -> Self {
        let usage = CpuUsage {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::new()),
        };
        usage.take(Instant::now());
        usage
    }
}

impl CpuUsage {
    /// Takes a sample if the last one is at least [`SAMPLE_EVERY`] old.
    pub fn sample(&self) {
        let now = Instant::now();
        let due = self.millis(now).saturating_sub(self.last_ms.load(Ordering::Relaxed));
        if u128::from(due) >= SAMPLE_EVERY.as_millis() {
            self.take(now);
        }
    }

    /// Percent of one core used by this process over the last [`WINDOW`] or so; `None` where
    /// the platform does not report process CPU time.
    pub fn percent(&self) -> Option<f64> {
        let now = Instant::now();
        let cpu = process::cpu_time()?;
        self.take(now);
        let samples = self.lock();
        let &(t0, c0) = samples.front()?;
        let wall = now.duration_since(t0).as_secs_f64();
        if wall < 1e-3 {
            return Some(0.0);
        }
        Some(cpu.saturating_sub(c0).as_secs_f64() / wall * 100.0)
    }

    fn take(&self, now: Instant) {
        let Some(cpu) = process::cpu_time() else { return };
        self.last_ms.store(self.millis(now), Ordering::Relaxed);
        let mut samples = self.lock();
        samples.push_back((now, cpu));
        // Keep the newest sample at least WINDOW old as the front, so the window spans WINDOW.
        while samples.len() > 2 && samples[1].0 + WINDOW <= now {
            samples.pop_front();
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Duration)>> {
        // Samples are pushed whole; a panic elsewhere cannot leave one half-written.
        self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_shows_as_about_one_core() {
        let usage = CpuUsage::default();
        let start = Instant::now();
        let mut x = 1u64;
        while start.elapsed() < Duration::from_millis(400) {
            x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(7));
            usage.sample();
        }
        let busy = usage.percent().expect("Linux reports CPU time");
        // One spinning thread: near 100 %; other tests share the process and the machine, so
        // only bounds that hold whatever else runs.
        assert!(busy > 30.0 && busy <= 100.0 * process::cores() as f64 + 10.0, "{busy}");
    }
}
