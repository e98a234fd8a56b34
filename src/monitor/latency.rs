//! Latency of recent calls and the call count, cheap enough to record on every run: one
//! uncontended mutex around a fixed ring of microsecond figures.

use std::sync::Mutex;
use std::time::Duration;

/// Calls kept for the percentiles.
pub const WINDOW: usize = 1024;

/// The latest [`WINDOW`] call latencies and the number of calls ever recorded.
#[derive(Debug)]
pub struct Latencies {
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    micros: Vec<u32>,
    next: usize,
    count: u64,
}

/// Percentiles of the window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            ring: Mutex::new(Ring { micros: Vec::with_capacity(WINDOW), next: 0, count: 0 }),
        }
    }
}

impl Latencies {
    pub fn record(&self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut ring = self.lock();
        if ring.micros.len() < WINDOW {
            ring.micros.push(micros);
        } else {
            let at = ring.next;
            ring.micros[at] = micros;
        }
        ring.next = (ring.next + 1) % WINDOW;
        ring.count += 1;
    }

    /// Calls recorded since the runtime was made.
    pub fn count(&self) -> u64 {
        self.lock().count
    }

    /// Median and 99th percentile (nearest rank) of the window; `None` before the first call.
    pub fn percentiles(&self) -> Option<Percentiles> {
        let mut values = self.lock().micros.clone();
        if values.is_empty() {
            return None;
        }
        let mut rank = |q: f64| {
            let ix = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            f64::from(*values.select_nth_unstable(ix).1) / 1000.0
        };
        Some(Percentiles { p50: rank(0.50), p99: rank(0.99) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The ring is valid after any panic (plain stores), so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_the_latest_window() {
        let l = Latencies::default();
        assert_eq!(l.percentiles(), None);
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.percentiles(), Some(Percentiles { p50: 50.0, p99: 99.0 }));
        // Older calls leave the window: after WINDOW calls of 2 ms only 2 ms remains.
        for _ in 0..WINDOW {
            l.record(Duration::from_millis(2));
        }
        assert_eq!(l.percentiles(), Some(Percentiles { p50: 2.0, p99: 2.0 }));
        assert_eq!(l.count(), 100 + WINDOW as u64);
    }
}
