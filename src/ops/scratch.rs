//! Per-thread scratch buffers for the int8 ops, reused from call to call: after the first
//! inference no op allocates its working memory again (only tract's output tensors remain).
//!
//! Each buffer keeps the size of the largest layer that used it on its thread, so the memory
//! held is bounded by threads × (the largest layer's quantized input, patches, accumulators).
//! Contents are stale: every user overwrites what it reads.

use std::cell::RefCell;
use std::thread::LocalKey;

thread_local! {
    static INPUT_BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static INPUT_WORDS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static PATCH_WORDS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static TAIL_COLUMNS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static ACCUMULATORS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    static PLANE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static FLAT_SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_buffer<T: Copy + Default, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    work: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, T::default());
            }
            work(&mut buffer[..len])
        }
        // Busy only if a caller nests the same buffer: it then gets a fresh one.
        Err(_) => work(&mut vec![T::default(); len]),
    })
}

/// A linear layer's quantized input rows (u8).
pub fn input_bytes<R>(len: usize, work: impl FnOnce(&mut [u8]) -> R) -> R {
    with_buffer(&INPUT_BYTES, len, work)
}

/// A convolution's quantized C4 input (u32 words).
pub fn input_words<R>(len: usize, work: impl FnOnce(&mut [u32]) -> R) -> R {
    with_buffer(&INPUT_WORDS, len, work)
}

/// im2col patches (u32 words).
pub fn patch_words<R>(len: usize, work: impl FnOnce(&mut [u32]) -> R) -> R {
    with_buffer(&PATCH_WORDS, len, work)
}

/// The operand columns of a plane's last few pixels, transposed (u32 words).
pub fn tail_columns<R>(len: usize, work: impl FnOnce(&mut [u32]) -> R) -> R {
    with_buffer(&TAIL_COLUMNS, len, work)
}

/// GEMM accumulators (i32).
pub fn accumulators<R>(len: usize, work: impl FnOnce(&mut [i32]) -> R) -> R {
    with_buffer(&ACCUMULATORS, len, work)
}

/// A depthwise channel's phased input plane (f32 codes).
pub fn plane<R>(len: usize, work: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&PLANE, len, work)
}

/// A depthwise channel's flat sums (f32).
pub fn flat_sums<R>(len: usize, work: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&FLAT_SUMS, len, work)
}
