//! Sums of products of every pair of columns, `Σ_p x_a[p]·x_b[p]` for `a ≤ b`: the second
//! moments of convolution input patches that data-aware weight rounding uses.

use super::quant::multiversion;
use super::Isa;

/// f32 lanes per partial sum (one AVX-512 vector).
const LANES: usize = 16;
/// Columns `b` paired with one column `a` per pass, so `a` is loaded once for all of them.
const BLOCK: usize = 4;

/// Adds `Σ_p x_a[p]·x_b[p]` to `products` (the packed upper triangle, row-major, `a ≤ b`) for
/// the `len` columns of `columns` (each `columns.len() / len` values). Partial sums are f32
/// lanes, added to the f64 totals once per call.
pub fn add_pair_products(isa: Isa, columns: &[f32], len: usize, products: &mut [f64]) {
    let positions = columns.len() / len.max(1);
    if len == 0 || products.len() != len * (len + 1) / 2 {
        return;
    }
    let column = |a: usize| &columns[a * positions..(a + 1) * positions];
    multiversion!(isa, {
        let mut ab = 0;
        for a in 0..len {
            let x = column(a);
            let mut b = a;
            while b < len {
                let count = (len - b).min(BLOCK);
                // Unused slots of a short block pair with `x` again and are discarded.
                let ys: [&[f32]; BLOCK] =
                    std::array::from_fn(|i| if i < count { column(b + i) } else { x });
                let sums = block_products(x, ys);
                for (product, sum) in products[ab..ab + count].iter_mut().zip(sums) {
                    *product += sum;
                }
                ab += count;
                b += count;
            }
        }
    })
}

/// Adds each column's sum `Σ_p x_a[p]` to `sums` (f32 lanes, as [`add_pair_products`]).
pub fn add_column_sums(isa: Isa, columns: &[f32], sums: &mut [f64]) {
    let positions = columns.len() / sums.len().max(1);
    if positions == 0 {
        return;
    }
    multiversion!(isa, {
        for (sum, column) in sums.iter_mut().zip(columns.chunks_exact(positions)) {
            let mut lanes = [0f32; LANES];
            let chunks = column.chunks_exact(LANES);
            let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
            for chunk in chunks {
                for l in 0..LANES {
                    lanes[l] += chunk[l];
                }
            }
            *sum += lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + tail;
        }
    })
}

/// `Σ_p x[p]·ys[i][p]` for each of the `BLOCK` columns `ys` (as long as `x`).
#[inline(always)]
fn block_products(x: &[f32], ys: [&[f32]; BLOCK]) -> [f64; BLOCK] {
    let mut lanes = [[0f32; LANES]; BLOCK];
    let xs = x.chunks_exact(LANES);
    let rest = xs.remainder().len();
    let [y0, y1, y2, y3] = ys.map(|y| y.chunks_exact(LANES));
    for ((((x, y0), y1), y2), y3) in xs.zip(y0).zip(y1).zip(y2).zip(y3) {
        for l in 0..LANES {
            lanes[0][l] += x[l] * y0[l];
            lanes[1][l] += x[l] * y1[l];
            lanes[2][l] += x[l] * y2[l];
            lanes[3][l] += x[l] * y3[l];
        }
    }
    let tail = x.len() - rest;
    std::array::from_fn(|i| {
        let tail: f64 = x[tail..].iter().zip(&ys[i][tail..]).map(|(&p, &q)| f64::from(p * q)).sum();
        lanes[i].iter().map(|&v| f64::from(v)).sum::<f64>() + tail
    })
}

/// The reference: every product summed in f64.
#[cfg(test)]
fn pair_products_f64(columns: &[f32], len: usize) -> Vec<f64> {
    let positions = columns.len() / len;
    let mut out = Vec::new();
    for a in 0..len {
        for b in a..len {
            out.push(
                (0..positions)
                    .map(|p| {
                        f64::from(columns[a * positions + p])
                            * f64::from(columns[b * positions + p])
                    })
                    .sum(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn pair_products_match_f64_reference(
            len in 1usize..30,
            positions in 1usize..100,
            seed in 0u32..1000,
        ) {
            let columns: Vec<f32> = (0..len * positions)
                .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            let expected = pair_products_f64(&columns, len);
            let column_sums: Vec<f64> = columns
                .chunks_exact(positions)
                .map(|c| c.iter().map(|&v| f64::from(v)).sum())
                .collect();
            for isa in Isa::reference_first() {
                let mut got = vec![1.0; expected.len()];
                add_pair_products(isa, &columns, len, &mut got);
                for (g, e) in got.iter().zip(&expected) {
                    prop_assert!((g - 1.0 - e).abs() <= 1e-5 * (1.0 + e.abs()), "{isa:?}: {g} vs {e}");
                }
                let mut sums = vec![1.0; len];
                add_column_sums(isa, &columns, &mut sums);
                for (g, e) in sums.iter().zip(&column_sums) {
                    prop_assert!((g - 1.0 - e).abs() <= 1e-5 * (1.0 + e.abs()), "{isa:?}: {g} vs {e}");
                }
            }
        }
    }
}
