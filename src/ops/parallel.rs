//! Data parallelism inside the int8 ops, on the thread pool of the plan that runs them (one
//! pool per runtime, so ops never oversubscribe the cores).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ndarray::{ArrayBase, ArrayView2, ArrayViewMut2, Axis};
use tract_onnx::prelude::TractResult;
use tract_onnx::tract_core::tract_linalg::multithread::{
    current_tract_executor, multithread_tract_scope, Executor,
};

use crate::kernels::OutputPart;

/// Inferences running now whose idle workers spin (see [`SpinningWorkers`]).
static SPINNING_RUNS: AtomicUsize = AtomicUsize::new(0);

/// While alive, an inference's idle workers spin, and so do its threads that wait for a part
/// another thread took ([`join`]). Made by the runtime around a call whose workers it keeps
/// awake.
pub struct SpinningWorkers(());

impl SpinningWorkers {
    /// Marks an inference as running with awake workers until the value is dropped.
    pub fn start() -> Self {
        SPINNING_RUNS.fetch_add(1, Ordering::AcqRel);
        SpinningWorkers(())
    }
}

impl Drop for SpinningWorkers {
    fn drop(&mut self) {
        SPINNING_RUNS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sets its flag when dropped: when the part finished, or unwound.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// `rayon::join(a, b)`, except that while workers spin ([`SpinningWorkers`]), the calling
/// thread spins until `b` finishes when another thread took it, instead of waiting in rayon:
/// a waiting rayon thread yields its core (a `sched_yield` per round, ~90 per EfficientNet-Lite0
/// call) and falls asleep on a futex after 32 rounds, to be woken when the part is done. With
/// the spin, two-thread batch-1 calls ran 1.5–3.5 % faster. The spin lasts only while `b` runs on
/// another thread; when no thread took `b`, the caller runs it as rayon does.
fn join<RA: Send, RB: Send>(
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    if SPINNING_RUNS.load(Ordering::Acquire) == 0 {
        return rayon::join(a, b);
    }
    let (started, done) = (AtomicBool::new(false), AtomicBool::new(false));
    rayon::join(
        || {
            let result = a();
            while started.load(Ordering::Acquire) && !done.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            result
        },
        || {
            started.store(true, Ordering::Release);
            let _done = SetOnDrop(&done);
            b()
        },
    )
}

/// Calls `work(chunk_index, chunk)` for each `chunk_len`-sized chunk of `data`, in parallel when
/// the running plan has a multi-threaded executor (halved as [`for_each_part`] halves views).
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk_len = chunk_len.max(1);
    // Infallible: `work` reports no error.
    let _ = for_each_part(data, Axis(0), chunk_len, |first, chunk| {
        work(first / chunk_len, chunk);
        Ok(())
    });
}

/// Threads the running plan's executor has (1 outside a multi-threaded plan).
pub fn threads() -> usize {
    match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads().max(1),
        _ => 1,
    }
}

/// Views a parallel section splits along one axis together: a layer's output planes, or those
/// and the input planes each part reads.
pub trait SplitViews: Send + Sized {
    /// The length of `axis` (the same in every view split together).
    fn len_of(&self, axis: Axis) -> usize;
    fn split_at(self, axis: Axis, index: usize) -> (Self, Self);
}

/// A slice: one axis.
impl<T: Send> SplitViews for &mut [T] {
    fn len_of(&self, _: Axis) -> usize {
        self.len()
    }

    fn split_at(self, _: Axis, index: usize) -> (Self, Self) {
        self.split_at_mut(index)
    }
}

impl<T: Send> SplitViews for ArrayViewMut2<'_, T> {
    fn len_of(&self, axis: Axis) -> usize {
        ArrayBase::len_of(self, axis)
    }

    fn split_at(self, axis: Axis, index: usize) -> (Self, Self) {
        ArrayViewMut2::split_at(self, axis, index)
    }
}

impl<T: Sync> SplitViews for ArrayView2<'_, T> {
    fn len_of(&self, axis: Axis) -> usize {
        ArrayBase::len_of(self, axis)
    }

    fn split_at(self, axis: Axis, index: usize) -> (Self, Self) {
        ArrayView2::split_at(self, axis, index)
    }
}

impl<O: Copy + Default + Send + Sync> SplitViews for OutputPart<'_, O> {
    fn len_of(&self, axis: Axis) -> usize {
        let (rows, columns) = self.dim();
        if axis == Axis(0) {
            rows
        } else {
            columns
        }
    }

    fn split_at(self, axis: Axis, index: usize) -> (Self, Self) {
        OutputPart::split_at(self, axis, index)
    }
}

impl<A: SplitViews, B: SplitViews> SplitViews for (A, B) {
    fn len_of(&self, axis: Axis) -> usize {
        self.0.len_of(axis)
    }

    fn split_at(self, axis: Axis, index: usize) -> (Self, Self) {
        let (a0, a1) = self.0.split_at(axis, index);
        let (b0, b1) = self.1.split_at(axis, index);
        ((a0, b0), (a1, b1))
    }
}

/// Calls `work(first, part)` for the parts of `views` of `part_len` indices along `axis` (the
/// last one shorter), `first` being the part's first index; in parallel when the running plan
/// has a multi-threaded executor. Unlike [`for_each_chunk`], parts may be strided (column
/// bands of planes). Returns the first error a part reports.
pub fn for_each_part<V: SplitViews>(
    views: V,
    axis: Axis,
    part_len: usize,
    work: impl Fn(usize, V) -> TractResult<()> + Sync,
) -> TractResult<()> {
    /// Halves on part boundaries, each half on its own task.
    fn halves<V: SplitViews>(
        views: V,
        first: usize,
        axis: Axis,
        part_len: usize,
        work: &(impl Fn(usize, V) -> TractResult<()> + Sync),
    ) -> TractResult<()> {
        let len = views.len_of(axis);
        if len <= part_len {
            return work(first, views);
        }
        let at = len.div_ceil(part_len) / 2 * part_len;
        let (low, high) = views.split_at(axis, at);
        let (low, high) = join(
            || halves(low, first, axis, part_len, work),
            || halves(high, first + at, axis, part_len, work),
        );
        low.and(high)
    }

    let part_len = part_len.max(1);
    match current_tract_executor() {
        Executor::MultiThread(pool) if views.len_of(axis) > part_len => {
            pool.install(|| halves(views, 0, axis, part_len, &work))
        }
        _ => {
            let (mut rest, mut first) = (views, 0);
            while rest.len_of(axis) > part_len {
                let (part, tail) = rest.split_at(axis, part_len);
                work(first, part)?;
                (rest, first) = (tail, first + part_len);
            }
            work(first, rest)
        }
    }
}

/// Calls `work(i, item)` for each row (a batch's image) of `items` (rows along `Axis(0)`), in
/// parallel. When the items share out evenly among the threads, each runs on one thread alone,
/// its own parallel sections serial: the image's quantized input, patches and output stay in
/// that core's cache, with no hand-over between threads inside it. Otherwise (a batch of 1 or 3 on two threads) the items'
/// work still splits across threads.
pub fn for_each_item<V: SplitViews>(
    items: V,
    work: impl Fn(usize, V) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let threads = threads();
    let alone = threads > 1 && items.len_of(Axis(0)).is_multiple_of(threads);
    for_each_part(items, Axis(0), 1, |i, item| {
        if alone {
            multithread_tract_scope(Executor::SingleThread, || work(i, item))
        } else {
            work(i, item)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Runs `f` on a pool of two threads, as the executor of the running plan.
    fn on_two_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let pool = Arc::new(pool);
        let executor = Executor::MultiThread(pool.clone());
        pool.install(|| multithread_tract_scope(executor, f))
    }

    #[test]
    fn chunks_keep_their_indices_whether_waits_spin_or_not() {
        for spinning in [false, true] {
            let _spinning = spinning.then(SpinningWorkers::start);
            let mut data = vec![usize::MAX; 1003];
            on_two_threads(|| for_each_chunk(&mut data, 10, |i, chunk| chunk.fill(i)));
            assert!(data.iter().enumerate().all(|(j, &i)| i == j / 10), "spinning: {spinning}");
        }
    }

    #[test]
    fn a_part_that_panics_on_another_thread_unwinds_to_the_caller_while_waits_spin() {
        let _spinning = SpinningWorkers::start();
        let result = std::panic::catch_unwind(|| {
            on_two_threads(|| {
                let mut data = vec![0u8; 2];
                // The first part keeps the calling thread busy until the other thread has
                // taken the second, which panics after the first is done: the caller is then
                // spinning on it.
                for_each_chunk(&mut data, 1, |i, _| {
                    std::thread::sleep(std::time::Duration::from_millis(20 + 30 * i as u64));
                    assert!(i == 0, "the second part fails");
                });
            })
        });
        assert!(result.is_err());
    }
}
