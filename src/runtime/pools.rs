//! Thread pools by thread count. Plans do not own an executor: each run picks the pool for the
//! thread count the throttle allows and runs under it (tract and the int8 ops read the
//! executor of the running scope), so the thread count can change between calls without
//! rebuilding plans. Pools are created on first use and kept.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use crate::error::{Error, Result};

#[derive(Debug)]
pub(super) struct Pools {
    /// `by_threads[n - 1]` runs with `n` threads.
    by_threads: Vec<OnceLock<Executor>>,
}

impl Pools {
    pub(super) fn new(max_threads: usize) -> Self {
        Pools { by_threads: (0..max_threads.max(1)).map(|_| OnceLock::new()).collect() }
    }

    pub(super) fn max_threads(&self) -> usize {
        self.by_threads.len()
    }

    /// The executor running with `threads` threads (clamped to 1..=max).
    pub(super) fn get(&self, threads: usize) -> Result<Executor> {
        let ix = threads.clamp(1, self.by_threads.len()) - 1;
        if let Some(executor) = self.by_threads[ix].get() {
            return Ok(executor.clone());
        }
        let made = executor(ix + 1)?;
        // Two callers may race to make the same pool; the loser's pool is dropped.
        Ok(self.by_threads[ix].get_or_init(|| made).clone())
    }
}

fn executor(threads: usize) -> Result<Executor> {
    if threads == 1 {
        return Ok(Executor::SingleThread);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("jarvis-perf-{i}"))
        .build()
        .map_err(|e| Error::config("threads", format!("cannot start {threads} threads: {e}")))?;
    Ok(Executor::MultiThread(Arc::new(pool)))
}

/// Inferences running on a multi-threaded pool now, across all runtimes.
static RUNS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Environment variable that turns the spinning workers off (`0`): on a machine whose other
/// programs keep every core busy, a spinning worker only takes time from them.
pub const SPIN_ENV: &str = "JARVIS_PERF_SPIN";

fn spinning_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var(SPIN_ENV).map_or(true, |v| v.trim() != "0"))
}

/// Runs `work` (an inference) on one of `pool`'s workers while its other workers stay awake
/// and take every task it splits off at once. Idle rayon workers fall asleep after a few
/// microseconds, and waking one took longer than a batch-1 layer's parallel section lasts: the
/// second thread ended up doing a quarter of the work. The waiting workers spin (a core each)
/// only while this inference runs, and only when it is the only one running, so concurrent
/// calls never wait for another call's spinning worker. `JARVIS_PERF_SPIN=0` turns them off.
pub(super) fn run_with_workers_awake<R: Send>(
    pool: &rayon::ThreadPool,
    work: impl FnOnce() -> R + Send,
) -> R {
    struct InFlight;
    impl Drop for InFlight {
        fn drop(&mut self) {
            RUNS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let alone = RUNS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel) == 0;
    let _in_flight = InFlight;
    pool.install(|| {
        if !alone || pool.current_num_threads() < 2 || !spinning_allowed() {
            return work();
        }
        let done = AtomicBool::new(false);
        let owner = rayon::current_thread_index();
        rayon::scope(|scope| {
            for _ in 1..pool.current_num_threads() {
                scope.spawn(|_| {
                    // The inference's own worker may run this while it waits in a join:
                    // spinning there would wait for itself.
                    if rayon::current_thread_index() == owner {
                        return;
                    }
                    while !done.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            let _spinning = crate::ops::SpinningWorkers::start();
            // Set even if `work` panics (the caller catches panics), so the scope can end.
            struct Finish<'a>(&'a AtomicBool);
            impl Drop for Finish<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                }
            }
            let _finish = Finish(&done);
            work()
        })
    })
}
