//! Random depthwise cases the property tests of the three depthwise kernels share: a geometry
//! from drawn sizes, a plane of codes, a filter, and the naive convolution's centred sums.

use crate::kernels::ConvGeometry;

/// One channel: its geometry, input codes and filter.
pub struct Case {
    pub g: ConvGeometry,
    pub codes: Vec<u8>,
    pub weights: Vec<i8>,
}

impl Case {
    /// A `h × w` plane convolved by a `kh × kw` filter with strides `[sy, sx]`, dilation `d`
    /// and padding `pad` before (and after) each axis; `cut` drops the last output row and
    /// column, as SAME_UPPER-style padding can. `None` when the kernel's span exceeds the
    /// padded plane.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        [h, w]: [usize; 2],
        [kh, kw]: [usize; 2],
        [sy, sx]: [usize; 2],
        d: usize,
        pad: [usize; 2],
        cut: usize,
        seed: u64,
    ) -> Option<Case> {
        let span = [(kh - 1) * d + 1, (kw - 1) * d + 1];
        let padded = [h + 2 * pad[0], w + 2 * pad[1]];
        if padded[0] < span[0] || padded[1] < span[1] {
            return None;
        }
        let out = [
            ((padded[0] - span[0]) / sy + 1).saturating_sub(cut).max(1),
            ((padded[1] - span[1]) / sx + 1).saturating_sub(cut).max(1),
        ];
        let g = ConvGeometry {
            channels: 1,
            height: h,
            width: w,
            kernel: [kh, kw],
            stride: [sy, sx],
            dilation: [d, d],
            pad,
            out,
        };
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let codes = (0..h * w).map(|_| next() as u8).collect();
        let weights = (0..kh * kw).map(|_| next() as i8).collect();
        Some(Case { g, codes, weights })
    }

    /// The filter as the kernels take it: i8 values as f32.
    pub fn taps(&self) -> Vec<f32> {
        self.weights.iter().map(|&v| f32::from(v)).collect()
    }

    /// The naive convolution of the codes centred on `zero_point` (padding contributes 0).
    pub fn centred_sums(&self, zero_point: u8) -> Vec<i32> {
        let g = &self.g;
        let x: Vec<i32> =
            self.codes.iter().map(|&q| i32::from(q) - i32::from(zero_point)).collect();
        let pixels = (0..g.out[0]).flat_map(|oy| (0..g.out[1]).map(move |ox| (oy, ox)));
        let tap = |t: usize| i32::from(self.weights[t]);
        pixels.map(|(oy, ox)| g.window(oy, ox).map(|(t, i)| x[i] * tap(t)).sum()).collect()
    }
}

/// One channel of a `side × side` plane under a "same"-padded `k × k` kernel of stride `s`: the
/// shape of the models' depthwise layers.
pub fn square_plane(side: usize, k: usize, s: usize) -> ConvGeometry {
    ConvGeometry {
        channels: 1,
        height: side,
        width: side,
        kernel: [k, k],
        stride: [s, s],
        dilation: [1, 1],
        pad: [k / 2, k / 2],
        out: [(side - 1) / s + 1; 2],
    }
}
