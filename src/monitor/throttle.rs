//! The adaptive CPU throttle: keeps this process's CPU at or under a cap (percent of one core)
//! while callers run inference as fast as they can.
//!
//! Two levers, in order: fewer threads inside operators (`ceil(budget / 100)`, so a 25 % cap
//! runs single-threaded), then pacing — a token bucket on *measured* process CPU time: credit
//! accrues at the budget's rate of wall time, each admission pays what the process actually
//! used since the last one (inference, Python, anything), and a caller in debt sleeps before
//! its run until the debt is paid. Measuring rather than predicting keeps the cap honest
//! whatever the model, batch size or number of calling threads.
//!
//! The budget shrinks when other processes keep the machine busy: if the cores they leave free
//! are fewer than the cap, the budget drops to what is free, but never below a quarter of the
//! cap so that inference still progresses on a saturated machine.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process;
use super::system::{CpuTicks, SYSTEM_SAMPLE};

/// Credit that may be saved up while idle, in seconds of wall time at the budget's rate: small,
/// so a burst after idling cannot push the average over the cap.
const BURST: f64 = 0.05;
/// Longest single pause, so a call never looks hung even under a tiny budget.
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// How long `throttled` stays true after the throttle last held work back.
const HELD_RECENTLY: Duration = Duration::from_secs(2);
/// Weight of the newest reading of other processes' load (exponential smoothing).
const SMOOTHING: f64 = 0.5;

/// Throttle settings and state, shared by every caller of one runtime.
#[derive(Debug)]
pub struct Throttle {
    max_threads: usize,
    /// The cap in percent as `f64` bits; 0 means no cap (read without a lock on every call).
    limit: AtomicU64,
    threads: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Wall clock and process CPU time at the last admission.
    last: Option<(Instant, Duration)>,
    /// Seconds of CPU the process may still spend (negative: debt).
    credit: f64,
    /// Last reading of the machine's CPU ticks, with our CPU time then.
    machine: Option<(Instant, CpuTicks, Duration)>,
    /// Cores other processes kept busy lately (smoothed).
    others: f64,
    budget: f64,
    held_at: Option<Instant>,
}

/// What the throttle is doing, for status reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleStatus {
    /// The cap in percent of one core, if any.
    pub limit: Option<f64>,
    /// The cap after backing off for other processes.
    pub budget: Option<f64>,
    /// Threads inference uses now.
    pub threads: usize,
    /// Whether work was held back (fewer threads or a pause) in the last two seconds.
    pub throttled: bool,
    /// Cores other processes kept busy lately, as the throttle last measured.
    pub other_cores: Option<f64>,
}

impl Throttle {
    /// A throttle for a runtime with `max_threads` threads; `limit` must be positive and finite.
    pub fn new(max_threads: usize, limit: Option<f64>) -> Self {
        let throttle = Throttle {
            max_threads: max_threads.max(1),
            limit: AtomicU64::new(0),
            threads: AtomicUsize::new(max_threads.max(1)),
            state: Mutex::new(State::default()),
        };
        throttle.set_limit(limit);
        throttle
    }

    /// Sets or removes the cap; accounting starts afresh.
    pub fn set_limit(&self, limit: Option<f64>) {
        let mut state = self.lock();
        *state = State { budget: limit.unwrap_or(0.0), ..State::default() };
        self.limit.store(limit.map_or(0, f64::to_bits), Ordering::Relaxed);
        self.threads.store(self.threads_for(limit.unwrap_or(f64::INFINITY)), Ordering::Relaxed);
    }

    pub fn limit(&self) -> Option<f64> {
        let bits = self.limit.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    /// Called before each run: pauses the caller while the process is over its budget and
    /// returns the thread count to run with.
    pub fn admit(&self) -> usize {
        let Some(limit) = self.limit() else { return self.max_threads };
        let (pause, threads) = self.lock().admit(limit, self.max_threads, |b| self.threads_for(b));
        self.threads.store(threads, Ordering::Relaxed);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        threads
    }

    pub fn status(&self) -> ThrottleStatus {
        let limit = self.limit();
        let state = self.lock();
        ThrottleStatus {
            limit,
            budget: limit.map(|_| state.budget),
            threads: self.threads.load(Ordering::Relaxed),
            throttled: limit.is_some()
                && state.held_at.is_some_and(|t| t.elapsed() < HELD_RECENTLY),
            other_cores: state.machine.map(|_| state.others),
        }
    }

    /// Threads for a budget in percent: whole cores' worth, at least one, at most configured.
    fn threads_for(&self, budget: f64) -> usize {
        let cores = (budget / 100.0).ceil();
        if cores.is_finite() {
            (cores.max(1.0) as usize).min(self.max_threads)
        } else {
            self.max_threads
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every field is valid on its own; a poisoned lock only means a panic elsewhere.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn admit(
        &mut self,
        limit: f64,
        max_threads: usize,
        threads_for: impl Fn(f64) -> usize,
    ) -> (Duration, usize) {
        let Some(cpu) = process::cpu_time() else { return (Duration::ZERO, max_threads) };
        let now = Instant::now();
        self.observe_machine(now, cpu);
        let free = (process::cores() as f64 - self.others).max(0.0) * 100.0;
        self.budget = limit.min(free).max(limit / 4.0);
        let rate = self.budget / 100.0;
        if let Some((wall, used)) = self.last {
            let earned = now.duration_since(wall).as_secs_f64() * rate;
            self.credit += earned - cpu.saturating_sub(used).as_secs_f64();
        }
        self.credit = self.credit.min(BURST * rate);
        self.last = Some((now, cpu));
        let threads = threads_for(self.budget);
        let pause = if self.credit < 0.0 {
            Duration::from_secs_f64(-self.credit / rate).min(MAX_PAUSE)
        } else {
            Duration::ZERO
        };
        if !pause.is_zero() || threads < max_threads {
            self.held_at = Some(now);
        }
        (pause, threads)
    }

    /// Re-reads the machine's load every [`SYSTEM_SAMPLE`]: cores busy minus ours.
    fn observe_machine(&mut self, now: Instant, cpu: Duration) {
        if self.machine.is_some_and(|(t, _, _)| now.duration_since(t) < SYSTEM_SAMPLE) {
            return;
        }
        let Some(ticks) = CpuTicks::read() else { return };
        if let Some((t, earlier, used)) = self.machine {
            let wall = now.duration_since(t).as_secs_f64();
            if let Some(busy) = ticks.busy_cores_since(&earlier, process::cores()) {
                let ours = cpu.saturating_sub(used).as_secs_f64() / wall;
                let others = (busy - ours).max(0.0);
                self.others = SMOOTHING * others + (1.0 - SMOOTHING) * self.others;
            }
        }
        self.machine = Some((now, ticks, cpu));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_follow_the_cap() {
        let t = Throttle::new(4, Some(25.0));
        assert_eq!(t.threads_for(25.0), 1);
        assert_eq!(t.threads_for(150.0), 2);
        assert_eq!(t.threads_for(1000.0), 4);
        assert_eq!(t.status().threads, 1);
        t.set_limit(None);
        assert_eq!(t.admit(), 4);
        assert_eq!(
            t.status(),
            ThrottleStatus {
                limit: None,
                budget: None,
                threads: 4,
                throttled: false,
                other_cores: None
            }
        );
    }

    /// CPU time of the calling thread only: other tests share the process.
    fn thread_cpu() -> Duration {
        use nix::sys::resource::{getrusage, UsageWho};
        let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage(RUSAGE_THREAD)");
        super::super::process::timeval(usage.user_time())
            + super::super::process::timeval(usage.system_time())
    }

    #[test]
    fn pacing_holds_a_spinning_caller_under_the_cap() {
        let t = Throttle::new(1, Some(20.0));
        let start = Instant::now();
        let cpu0 = thread_cpu();
        while start.elapsed() < Duration::from_millis(1500) {
            t.admit();
            let work = Instant::now();
            let mut x = 1u64;
            while work.elapsed() < Duration::from_millis(5) {
                x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(7));
            }
        }
        let percent = (thread_cpu() - cpu0).as_secs_f64() / start.elapsed().as_secs_f64() * 100.0;
        // The throttle paces on the whole process's CPU (other tests included), so this thread
        // alone stays under the cap; unthrottled it would use close to 100 %.
        assert!(t.status().throttled, "not throttled at {percent:.1} %");
        // The slack covers the scheduler's granularity when the other tests load both cores.
        assert!(percent < 20.0 + 10.0, "{percent:.1} %");
    }
}
