//! Depthwise convolution of one channel plane, exact in f32.
//!
//! The plane is quantized to centred codes (`q - zero_point`, integers in [-255, 255]) and laid
//! out padded and split into stride phases, so that every tap of the kernel reads one
//! contiguous run of the same length: the output rows, `PhasedPlane::pitch` wide, flattened. The
//! kernel then is a handful of vector multiply-adds per tap with no bounds logic at all.
//!
//! Why f32: products of codes and i8 weights are integers below 2^15 and a sum of at most
//! [`MAX_DEPTHWISE_TAPS`] of them stays below 2^24, where f32 is exact — so the result equals
//! the integer reference bit for bit, while f32 FMAs are the fastest multiply-add on every ISA.

use crate::kernels::quant::{multiversion, ActivationQuant};
use crate::kernels::store::codes::{Element, Epilogue, SimdElement};
use crate::kernels::{ConvGeometry, Isa};

/// Most kernel taps the f32 accumulation stays exact for (`taps · 255 · 128 < 2^24`).
pub const MAX_DEPTHWISE_TAPS: usize = 512;

/// Outputs accumulated together in registers (four 16-lane vectors).
const CHUNK: usize = 64;

/// One vector of accumulators: what the accumulator count is rounded up to.
const LANES: usize = 16;

/// Largest column stride the phased layout is built for (real models use 1 and 2).
pub const MAX_DEPTHWISE_STRIDE: usize = 4;

/// Where each tap reads in a [`PhasedPlane`] buffer, and the buffer's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhasedPlane {
    geometry: ConvGeometry,
    /// Row and column strides (the number of phases along each axis).
    phases: [usize; 2],
    /// Rows of one phase plane.
    rows: usize,
    /// Columns of one phase plane, also the row pitch of the flat accumulators.
    pub pitch: usize,
    /// Start of each tap's contiguous run in the buffer, kernel row-major.
    tap_offsets: Vec<usize>,
    /// Accumulators computed per plane: `out_height · pitch`, rounded up to whole vectors.
    pub flat_len: usize,
}

impl PhasedPlane {
    /// The layout for convolutions of `geometry` (one channel); `None` for more taps than
    /// [`MAX_DEPTHWISE_TAPS`], a column stride above 4, or an empty output.
    pub fn new(geometry: &ConvGeometry) -> Option<Self> {
        let g = *geometry;
        let taps = g.kernel[0] * g.kernel[1];
        if taps == 0
            || taps > MAX_DEPTHWISE_TAPS
            || g.stride[1] > MAX_DEPTHWISE_STRIDE
            || g.out[0] == 0
            || g.out[1] == 0
        {
            return None;
        }
        let [sy, sx] = [g.stride[0].max(1), g.stride[1].max(1)];
        // Offsets (in phase rows / columns) the last kernel row / column reads at.
        let reach = |axis: usize, s: usize| ((g.kernel[axis] - 1) * g.dilation[axis]) / s;
        let pitch = g.out[1] + reach(1, sx);
        let rows = g.out[0] + reach(0, sy);
        let flat_len = (g.out[0] * pitch).div_ceil(LANES) * LANES;
        let plane_len = rows * pitch;
        let mut tap_offsets = Vec::with_capacity(taps);
        for ky in 0..g.kernel[0] {
            let (py, dy) = ((ky * g.dilation[0]) % sy, (ky * g.dilation[0]) / sy);
            for kx in 0..g.kernel[1] {
                let (px, dx) = ((kx * g.dilation[1]) % sx, (kx * g.dilation[1]) / sx);
                tap_offsets.push((py * sx + px) * plane_len + dy * pitch + dx);
            }
        }
        Some(PhasedPlane { geometry: g, phases: [sy, sx], rows, pitch, tap_offsets, flat_len })
    }

    /// Length of the planes [`Self::accumulate`] reads: every phase plane, plus the slack the
    /// last chunk of the last tap reads past the output rows.
    fn planes_len(&self) -> usize {
        let plane_len = self.rows * self.pitch;
        let last = self.tap_offsets.iter().max().copied().unwrap_or(0);
        (self.phases[0] * self.phases[1] * plane_len).max(last + self.flat_len)
    }

    /// Length of the buffer [`Self::fill`] writes: the planes, then (strided layers only) one
    /// padded input row it splits into phases from.
    pub fn buffer_len(&self) -> usize {
        let row = if self.phases[1] > 1 { self.pitch * self.phases[1] } else { 0 };
        self.planes_len() + row
    }

    /// Quantizes one `height × width` plane (floats, or codes of `input` already) into `dst`
    /// (`buffer_len` values): centred codes at their phase positions, 0 (the zero point) in the
    /// padding.
    pub fn fill<E: Element>(&self, isa: Isa, plane: &[E], input: ActivationQuant, dst: &mut [f32]) {
        let g = &self.geometry;
        let [sy, sx] = self.phases;
        let (plane_len, pitch) = (self.rows * self.pitch, self.pitch);
        assert!(plane.len() >= g.height * g.width && dst.len() >= self.buffer_len());
        // Strided layers only: one padded input row, codes at `pad + x`, the zero point (0)
        // around them, split into phases from there.
        let (dst, padded) = dst.split_at_mut(self.planes_len());
        let padded = &mut padded[..if sx > 1 { pitch * sx } else { 0 }];
        let inside = g.width.min((pitch * sx).saturating_sub(g.pad[1]));
        multiversion!(isa, {
            if sx == 1 && sy == 1 {
                // Rows land in order: zero only the padding between them, not the whole buffer.
                let mut written = 0;
                for y in 0..g.height.min(self.rows.saturating_sub(g.pad[0])) {
                    let start = (y + g.pad[0]) * pitch + g.pad[1];
                    dst[written..start].fill(0.0);
                    let src = &plane[y * g.width..][..inside];
                    E::centred_row(isa, src, input, &mut dst[start..][..inside]);
                    written = start + inside;
                }
                dst[written..].fill(0.0);
                return;
            }
            if sx > 1 {
                // Each phase row an input row lands in is written whole (the padded row carries
                // the padding columns): zero only the rows none lands in, and the slack.
                for (py, qy) in (0..sy).flat_map(|py| (0..self.rows).map(move |qy| (py, qy))) {
                    let row = qy * sy + py;
                    if row < g.pad[0] || row >= g.pad[0] + g.height {
                        for px in 0..sx {
                            dst[(py * sx + px) * plane_len + qy * pitch..][..pitch].fill(0.0);
                        }
                    }
                }
                dst[sy * sx * plane_len..].fill(0.0);
            } else {
                dst.fill(0.0);
            }
            padded.fill(0.0);
            for y in 0..g.height {
                // Padded row y + pad lands in row phase (y + pad) % sy, phase row (y + pad) / sy.
                let (py, qy) = ((y + g.pad[0]) % sy, (y + g.pad[0]) / sy);
                if qy >= self.rows {
                    continue; // a row no output reads (the padding cut it off)
                }
                let src = &plane[y * g.width..][..inside];
                let first = py * sx * plane_len + qy * pitch;
                if sx == 1 {
                    E::centred_row(isa, src, input, &mut dst[first + g.pad[1]..][..inside]);
                    continue;
                }
                E::centred_row(isa, src, input, &mut padded[g.pad[1]..][..inside]);
                // Column phase px, phase column j ← padded column j·sx + px.
                if sx == 2 {
                    // Both phases in one pass: an interleaved pair of loads, which vectorises.
                    let (even, odd) = dst[first..].split_at_mut(plane_len);
                    let pairs = padded.chunks_exact(2);
                    for ((e, o), pair) in even[..pitch].iter_mut().zip(&mut odd[..pitch]).zip(pairs)
                    {
                        *e = pair[0];
                        *o = pair[1];
                    }
                } else {
                    for px in 0..sx {
                        let row = &mut dst[first + px * plane_len..][..pitch];
                        for (d, &v) in row.iter_mut().zip(padded[px..].iter().step_by(sx)) {
                            *d = v;
                        }
                    }
                }
            }
        })
    }

    /// `acc[oy · pitch + ox] = Σ_taps x · w` over the filled buffer (`flat_len` accumulators;
    /// columns `ox ≥ out_width` hold values no output uses).
    pub fn accumulate(&self, isa: Isa, x: &[f32], taps: &[f32], acc: &mut [f32]) {
        assert!(
            x.len() >= self.planes_len()
                && taps.len() == self.tap_offsets.len()
                && acc.len() >= self.flat_len
        );
        let offsets = &self.tap_offsets;
        let whole = self.flat_len / CHUNK * CHUNK;
        multiversion!(isa, {
            for (c, chunk) in acc[..whole].chunks_exact_mut(CHUNK).enumerate() {
                chunk_sums::<CHUNK>(x, offsets, taps, c * CHUNK, chunk);
            }
            // The rest in single vectors: a 7×7 plane with a 5×5 kernel (77 accumulators)
            // would compute 128 in whole chunks.
            for (c, chunk) in acc[whole..self.flat_len].chunks_exact_mut(LANES).enumerate() {
                chunk_sums::<LANES>(x, offsets, taps, whole + c * LANES, chunk);
            }
        })
    }

    /// `out[oy][ox] = act(acc · scale + bias)` for the valid columns of each accumulator row,
    /// stored as floats or as the u8 codes the next int8 layer reads (`store`).
    pub fn store<E: SimdElement>(
        &self,
        isa: Isa,
        acc: &[f32],
        epilogue: Epilogue,
        store: E::Store,
        out: &mut [E],
    ) {
        E::store_rows(isa, acc, self.geometry.out, self.pitch, epilogue, store, out);
    }
}

/// `out[i] = Σ_taps x[offset + start + i] · w` for the `N` accumulators from `start`. Even and
/// odd taps go into separate sums: with four vectors, eight independent FMA chains, enough to
/// hide the FMA latency (four stalled on it). Exact either way, so the split changes nothing.
#[inline(always)]
fn chunk_sums<const N: usize>(
    x: &[f32],
    offsets: &[usize],
    taps: &[f32],
    start: usize,
    out: &mut [f32],
) {
    let (mut even, mut odd) = ([0f32; N], [0f32; N]);
    for (offset, w) in offsets.chunks_exact(2).zip(taps.chunks_exact(2)) {
        let (a, b) = (&x[offset[0] + start..][..N], &x[offset[1] + start..][..N]);
        for ((e, o), (&va, &vb)) in even.iter_mut().zip(&mut odd).zip(a.iter().zip(b)) {
            *e = va.mul_add(w[0], *e);
            *o = vb.mul_add(w[1], *o);
        }
    }
    if let (1, Some(&offset), Some(&w)) = (offsets.len() % 2, offsets.last(), taps.last()) {
        for (e, &v) in even.iter_mut().zip(&x[offset + start..][..N]) {
            *e = v.mul_add(w, *e);
        }
    }
    for ((d, e), o) in out.iter_mut().zip(&even).zip(&odd) {
        *d = e + o;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::depthwise::cases::Case;
    use crate::kernels::{Activation, FloatStore};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Both ISAs give the integer reference's sums exactly, for every stride, dilation and
        /// padding (including asymmetric padding that cuts rows and columns off).
        #[test]
        fn accumulators_equal_the_integer_reference(
            h in 1usize..14, w in 1usize..14, kh in 1usize..4, kw in 1usize..6,
            sy in 1usize..3, sx in 1usize..5, d in 1usize..3,
            pad_top in 0usize..3, pad_left in 0usize..3, cut in 0usize..2,
            zp in any::<u8>(), seed in any::<u64>(),
        ) {
            let case = Case::new([h, w], [kh, kw], [sy, sx], d, [pad_top, pad_left], cut, seed);
            let Some(case) = case else { return Ok(()) };
            let (g, out) = (case.g, case.g.out);
            let plane: Vec<f32> = case.codes.iter().map(|&q| f32::from(q) - f32::from(zp)).collect();
            let want = case.centred_sums(zp);
            let layout = PhasedPlane::new(&g).expect("a valid geometry");
            let taps = case.taps();
            let mut scalar_codes = Vec::new();
            for isa in Isa::reference_first() {
                let mut buffer = vec![f32::NAN; layout.buffer_len()];
                // Scale 1 and the zero point given: quantizing `plane` gives back `codes`.
                layout.fill(isa, &plane, ActivationQuant { scale: 1.0, zero_point: zp }, &mut buffer);
                let mut acc = vec![f32::NAN; layout.flat_len];
                layout.accumulate(isa, &buffer, &taps, &mut acc);
                let mut out = vec![f32::NAN; out[0] * out[1]];
                let e = Epilogue { offset: 0, scale: 1.0, bias: 0.0, activation: Activation::Identity };
                layout.store(isa, &acc, e, FloatStore::Replace, &mut out);
                let got: Vec<i32> = out.iter().map(|&v| v as i32).collect();
                prop_assert_eq!(&got, &want, "{:?}", isa);
                // Stored as codes: the same bytes on every ISA, each the quantized sum.
                let codes = ActivationQuant { scale: 97.0, zero_point: zp };
                let mut stored = vec![0u8; out.len()];
                layout.store(isa, &acc, e, codes.into(), &mut stored);
                let expected: Vec<u8> = want.iter().map(|&v| crate::kernels::quantize_value(v as f32, 97.0, zp)).collect();
                for (&q, &e) in stored.iter().zip(&expected) {
                    prop_assert!(q.abs_diff(e) <= 1, "{:?}: {} vs {}", isa, q, e);
                }
                if isa == Isa::SCALAR {
                    scalar_codes = stored;
                } else {
                    prop_assert_eq!(&stored, &scalar_codes);
                }
            }
        }
    }

    #[test]
    fn too_many_taps_are_refused() {
        let g = ConvGeometry {
            channels: 1,
            height: 40,
            width: 40,
            kernel: [23, 23],
            stride: [1, 1],
            dilation: [1, 1],
            pad: [0, 0],
            out: [18, 18],
        };
        assert!(PhasedPlane::new(&g).is_none());
    }
}
