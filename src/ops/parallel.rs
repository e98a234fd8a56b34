//! Data parallelism inside the int8 ops, on the thread pool of the plan that runs them (one
//! pool per runtime, so ops never oversubscribe the cores).

use rayon::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::{current_tract_executor, Executor};

/// Calls `work(chunk_index, chunk)` for each `chunk_len`-sized chunk of `data`, in parallel when
/// the running plan has a multi-threaded executor.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk_len = chunk_len.max(1);
    match current_tract_executor() {
        Executor::MultiThread(pool) if data.len() > chunk_len => pool
            .install(|| data.par_chunks_mut(chunk_len).enumerate().for_each(|(i, c)| work(i, c))),
        _ => data.chunks_mut(chunk_len).enumerate().for_each(|(i, c)| work(i, c)),
    }
}

/// Threads the running plan's executor has (1 outside a multi-threaded plan).
pub fn threads() -> usize {
    match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads().max(1),
        _ => 1,
    }
}
