//! Thread pools by thread count. Plans do not own an executor: each run picks the pool for the
//! thread count the throttle allows and runs under it (tract and the int8 ops read the
//! executor of the running scope), so the thread count can change between calls without
//! rebuilding plans. Pools are created on first use and kept.

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
