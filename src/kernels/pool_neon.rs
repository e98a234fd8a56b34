//! [`CodePool`]'s max pool of codes on aarch64 NEON: each output row is the byte-wise maximum
//! of its input rows (a row of up to 127 codes in eight registers), then, per kernel column, a
//! table lookup over the 128 bytes (`tbl` on the first 64, `tbx` on the rest) picks every
//! output's column at once.

use std::arch::aarch64::*;

use super::pool::{CodePool, MAX_POOL_COLUMNS};

/// [`CodePool::run`] on NEON (baseline on aarch64).
pub(super) fn pool_codes(pool: &CodePool, plane: &[u8], out: &mut [u8]) {
    let g = &pool.geometry;
    let [kh, kw] = g.kernel;
    let (width, out_width) = (g.width, g.out[1]);
    assert!(width < 128 && out_width <= 64 && kw <= MAX_POOL_COLUMNS);
    assert!(plane.len() >= g.height * width && out.len() >= g.out[0] * out_width);
    let index: [[uint8x16_t; 4]; MAX_POOL_COLUMNS] = std::array::from_fn(|kx| {
        // SAFETY: NEON is part of every aarch64 target; each index row has 64 bytes.
        std::array::from_fn(|q| unsafe { vld1q_u8(pool.index[kx].as_ptr().add(16 * q)) })
    });
    // SAFETY: NEON is part of every aarch64 target.
    let high_index = unsafe { vdupq_n_u8(64) };
    for (oy, line) in out[..g.out[0] * out_width].chunks_exact_mut(out_width).enumerate() {
        // Code 0 past the row and for rows outside the plane: it never wins.
        let mut maxima = [0u8; 128];
        for ky in 0..kh {
            let Some(iy) = (oy * g.stride[0] + ky).checked_sub(g.pad[0]) else { continue };
            if iy >= g.height {
                continue;
            }
            let row = &plane[iy * width..(iy + 1) * width];
            for (m, &v) in maxima.iter_mut().zip(row) {
                *m = (*m).max(v);
            }
        }
        // SAFETY: NEON is part of every aarch64 target; `maxima` has 128 bytes.
        let table = |half: usize| unsafe {
            let at = maxima.as_ptr().add(64 * half);
            uint8x16x4_t(
                vld1q_u8(at),
                vld1q_u8(at.add(16)),
                vld1q_u8(at.add(32)),
                vld1q_u8(at.add(48)),
            )
        };
        let (low, high) = (table(0), table(1));
        let mut best = [0u8; 64];
        for q in 0..4 {
            // SAFETY: NEON is part of every aarch64 target; `best` has 64 bytes.
            unsafe {
                let mut max = vdupq_n_u8(0);
                for columns in &index[..kw] {
                    // Indices below 64 read `low`; `tbx` keeps those lanes (their index − 64
                    // wraps past the table) and fills the others from `high`.
                    let picked = vqtbl4q_u8(low, columns[q]);
                    let picked = vqtbx4q_u8(picked, high, vsubq_u8(columns[q], high_index));
                    max = vmaxq_u8(max, picked);
                }
                vst1q_u8(best.as_mut_ptr().add(16 * q), max);
            }
        }
        line.copy_from_slice(&best[..out_width]);
    }
}
