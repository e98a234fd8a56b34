//! Second moments of the input patches a small convolution reads, for data-aware weight
//! rounding: the output error that rounding a filter `w` to `w + e` causes is `eᵀx` per patch
//! `x`, so its mean square over the data is `eᵀ E[x xᵀ] e`. Depthwise 3×3/5×5 filters and an
//! RGB stem have few weights per output channel (9–27), so the matrix is small; one is kept per
//! group of output channels that read the same input channels (one per channel when depthwise).

use rayon::prelude::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use crate::kernels::{add_column_sums, add_pair_products, Isa};

/// Values per column summed in one pass, at least (items are batched up to it).
const MIN_COLUMN: usize = 4096;

/// Filters with at most this many weights per output channel get patch moments (a 5×5
/// depthwise filter has 25, a 3×3 stem on RGB 27); the cost grows with its square.
pub const MAX_PATCH_LEN: usize = 32;

/// Which patches a convolution reads: its geometry and group count (kernel column order is
/// tap-major, channel within the group fastest, as the int8 layers store weights).
#[derive(Debug, Clone)]
pub struct PatchLayout {
    pub pool_spec: PoolSpec,
    pub groups: usize,
}

/// Length of the packed upper triangle (row-major, `a ≤ b`) of a `len × len` matrix.
pub fn packed_len(len: usize) -> usize {
    len * (len + 1) / 2
}

/// Running sums of `x_a·x_b` and `x_a` over every patch (padding reads 0) of each group.
#[derive(Debug, Clone)]
pub struct PatchMoments {
    layout: PatchLayout,
    /// Weights per output channel: taps × channels per group.
    len: usize,
    /// Per group: the packed upper triangle of `Σ x_a x_b`.
    products: Vec<f64>,
    /// Per group: `Σ x_a`.
    sums: Vec<f64>,
    /// Patches added to each group.
    count: u64,
    /// Input channels of the first tensor seen (set once shapes disagree: no result).
    channels: Option<usize>,
    failed: bool,
}

impl PatchMoments {
    pub fn new(layout: PatchLayout) -> Self {
        PatchMoments {
            layout,
            len: 0,
            products: Vec::new(),
            sums: Vec::new(),
            count: 0,
            channels: None,
            failed: false,
        }
    }

    /// Adds every patch of an NCHW tensor of `shape`, one group per task on `executor`.
    pub fn observe(&mut self, shape: &[usize], values: &[f32], executor: &Executor) {
        let Some(geometry) = self.geometry(shape, values.len()) else {
            self.failed = true;
            return;
        };
        let (len, packed) = (self.len, packed_len(self.len));
        let image = geometry.channels * geometry.height * geometry.width;
        let per_group = geometry.channels / self.layout.groups;
        // Several items per pass, so short columns (small feature maps) are summed in long runs.
        let positions = geometry.positions();
        let per_pass = (MIN_COLUMN / positions.max(1)).max(1);
        let work = |(g, (products, sums)): (usize, (&mut [f64], &mut [f64]))| {
            let first = g * per_group * geometry.height * geometry.width;
            for items in values.chunks(image * per_pass) {
                let count = items.len() / image;
                let mut columns = vec![0f32; len * count * positions];
                for (i, item) in items.chunks_exact(image).enumerate() {
                    geometry.gather(
                        &item[first..],
                        per_group,
                        &mut columns,
                        count * positions,
                        i * positions,
                    );
                }
                accumulate(&columns, len, products, sums);
            }
        };
        let groups = self.products.chunks_mut(packed).zip(self.sums.chunks_mut(len)).enumerate();
        match executor {
            Executor::MultiThread(pool) => {
                let groups: Vec<_> = groups.collect();
                pool.install(|| groups.into_par_iter().for_each(work));
            }
            _ => groups.for_each(work),
        }
        self.count += (shape[0] * geometry.positions()) as u64;
    }

    /// The geometry of an NCHW tensor of `shape`, checked against what was seen before (and
    /// the sums sized on first use); `None` if it does not fit.
    fn geometry(&mut self, shape: &[usize], values: usize) -> Option<Geometry> {
        if self.failed || shape.len() != 4 || self.layout.pool_spec.kernel_shape.len() != 2 {
            return None;
        }
        let (channels, height, width) = (shape[1], shape[2], shape[3]);
        let groups = self.layout.groups;
        let empty = shape.contains(&0);
        if empty
            || shape.iter().product::<usize>() != values
            || groups == 0
            || channels % groups != 0
        {
            return None;
        }
        let spec = &self.layout.pool_spec;
        let kernel = [spec.kernel_shape[0], spec.kernel_shape[1]];
        let (strides, dilations) = (spec.strides(), spec.dilations());
        let padded = spec.padding.compute(&[height, width], &kernel, &dilations, &strides);
        let len = kernel[0] * kernel[1] * (channels / groups);
        if len == 0 || len > MAX_PATCH_LEN || self.channels.is_some_and(|c| c != channels) {
            return None;
        }
        if self.channels.is_none() {
            self.channels = Some(channels);
            self.len = len;
            self.products = vec![0.0; groups * packed_len(len)];
            self.sums = vec![0.0; groups * len];
        }
        Some(Geometry {
            channels,
            height,
            width,
            kernel,
            stride: [strides[0], strides[1]],
            dilation: [dilations[0], dilations[1]],
            pad: [padded[0].pad_before, padded[1].pad_before],
            out: [padded[0].convoluted, padded[1].convoluted],
        })
    }

    /// Per group, the packed upper triangle of `E[(x_a − μ_a)(x_b − μ_b)]`, where `μ_a` is the
    /// mean of the channel column `a` reads (`means`, one per input channel): the second
    /// moment of what remains once bias correction has removed the mean error. Empty when
    /// nothing usable was seen.
    pub fn centred(&self, means: &[f32]) -> Vec<f32> {
        let Some(channels) = self.channels else { return Vec::new() };
        if self.failed || self.count == 0 || means.len() != channels {
            return Vec::new();
        }
        let per_group = channels / self.layout.groups;
        let (len, count) = (self.len, self.count as f64);
        let mut out = Vec::with_capacity(self.products.len());
        for (g, (products, sums)) in
            self.products.chunks(packed_len(len)).zip(self.sums.chunks(len)).enumerate()
        {
            let mean = |a: usize| f64::from(means[g * per_group + a % per_group]);
            let mut ab = 0;
            for a in 0..len {
                for b in a..len {
                    let (ma, mb) = (mean(a), mean(b));
                    let value = products[ab] / count - ma * sums[b] / count - sums[a] / count * mb
                        + ma * mb;
                    out.push(value as f32);
                    ab += 1;
                }
            }
        }
        out
    }
}

/// Where a convolution's patches lie in one NCHW image.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 2],
    out: [usize; 2],
}

impl Geometry {
    fn positions(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// Column `a` of `columns` (each `column_len` long) receives, from `offset` on, patch
    /// element `a` (tap-major, channel fastest) of the `per_group` channel planes starting at
    /// `planes`, one value per output position.
    fn gather(
        &self,
        planes: &[f32],
        per_group: usize,
        columns: &mut [f32],
        column_len: usize,
        offset: usize,
    ) {
        let plane = self.height * self.width;
        let positions = self.positions();
        for ky in 0..self.kernel[0] {
            for kx in 0..self.kernel[1] {
                let tap = ky * self.kernel[1] + kx;
                for c in 0..per_group {
                    let source = &planes[c * plane..(c + 1) * plane];
                    let start = (tap * per_group + c) * column_len + offset;
                    let column = &mut columns[start..start + positions];
                    for (oy, row) in column.chunks_exact_mut(self.out[1]).enumerate() {
                        let y =
                            (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.pad[0]);
                        let Some(y) = y.filter(|&y| y < self.height) else {
                            row.fill(0.0);
                            continue;
                        };
                        let line = &source[y * self.width..(y + 1) * self.width];
                        self.fill_row(line, kx, row);
                    }
                }
            }
        }
    }

    /// Output row `row` of tap column `kx` from input line `line`: zeros where the tap falls
    /// in the padding, the strided input values elsewhere.
    fn fill_row(&self, line: &[f32], kx: usize, row: &mut [f32]) {
        let (stride, offset) = (self.stride[1].max(1), kx * self.dilation[1]);
        // Outputs whose input `ox·stride + offset − pad` lies in 0..width.
        let first = self.pad[1].saturating_sub(offset).div_ceil(stride).min(row.len());
        let end = (self.width + self.pad[1]).saturating_sub(offset).div_ceil(stride).min(row.len());
        let end = end.max(first);
        row[..first].fill(0.0);
        row[end..].fill(0.0);
        if first == end {
            return; // the whole row reads padding
        }
        let start = first * stride + offset - self.pad[1];
        if stride == 1 {
            row[first..end].copy_from_slice(&line[start..start + (end - first)]);
        } else {
            for (v, &x) in row[first..end].iter_mut().zip(line[start..].iter().step_by(stride)) {
                *v = x;
            }
        }
    }
}

/// Adds the products of every pair of columns (`a ≤ b`) and each column's sum.
fn accumulate(columns: &[f32], len: usize, products: &mut [f64], sums: &mut [f64]) {
    let isa = Isa::detect();
    add_column_sums(isa, &columns[..len * (columns.len() / len.max(1))], sums);
    add_pair_products(isa, columns, len, products);
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    use super::*;

    fn spec(kernel: [usize; 2], stride: usize, padding: PaddingSpec, channels: usize) -> PoolSpec {
        PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: kernel.to_vec().into(),
            padding,
            dilations: None,
            strides: Some(vec![stride; 2].into()),
            input_channels: channels,
            output_channels: channels,
        }
    }

    /// The patches of one channel, by brute force: `(x_a)` for each output position.
    fn patches(
        plane: &[f32],
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Vec<Vec<f32>> {
        let out = |n: usize| (n + 2 * pad - k) / stride + 1;
        let mut all = Vec::new();
        for oy in 0..out(h) {
            for ox in 0..out(w) {
                let mut patch = Vec::new();
                for ky in 0..k {
                    for kx in 0..k {
                        let (y, x) = (
                            (oy * stride + ky) as isize - pad as isize,
                            (ox * stride + kx) as isize - pad as isize,
                        );
                        let inside = (0..h as isize).contains(&y) && (0..w as isize).contains(&x);
                        patch.push(if inside { plane[y as usize * w + x as usize] } else { 0.0 });
                    }
                }
                all.push(patch);
            }
        }
        all
    }

    /// Checks the moments of a depthwise `k×k` conv (stride, symmetric `pad`) on `h × w`
    /// planes against brute-force patches; returns the observer for further checks.
    fn check_against_brute_force(
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> PatchMoments {
        let channels = 3;
        let values: Vec<f32> =
            (0..2 * channels * h * w).map(|i| ((i * 37 % 23) as f32) / 7.0 - 1.0).collect();
        let padding = PaddingSpec::Explicit(vec![pad, pad].into(), vec![pad, pad].into());
        let layout =
            PatchLayout { pool_spec: spec([k, k], stride, padding, channels), groups: channels };
        let mut moments = PatchMoments::new(layout);
        moments.observe(&[2, channels, h, w], &values, &Executor::SingleThread);
        let means = [0.25, -0.5, 1.0];
        let centred = moments.centred(&means);
        let taps = k * k;
        assert_eq!(centred.len(), channels * packed_len(taps));
        for (c, &mean) in means.iter().enumerate() {
            let mut all = Vec::new();
            for item in 0..2 {
                let start = (item * channels + c) * h * w;
                all.extend(patches(&values[start..start + h * w], h, w, k, stride, pad));
            }
            let mut ab = 0;
            for a in 0..taps {
                for b in a..taps {
                    let centre = |p: &Vec<f32>, i: usize| f64::from(p[i]) - f64::from(mean);
                    let expected: f64 =
                        all.iter().map(|p| centre(p, a) * centre(p, b)).sum::<f64>()
                            / all.len() as f64;
                    let got = f64::from(centred[c * packed_len(taps) + ab]);
                    assert!(
                        (got - expected).abs() < 1e-4,
                        "{h}x{w} k{k}: channel {c} ({a}, {b}): {got} vs {expected}"
                    );
                    ab += 1;
                }
            }
        }
        moments
    }

    #[test]
    fn depthwise_moments_equal_brute_force_patches() {
        let mut moments = check_against_brute_force(7, 6, 3, 2, 1);
        // Planes smaller than the kernel: whole rows of patches read padding.
        check_against_brute_force(1, 1, 5, 1, 2);
        check_against_brute_force(3, 2, 5, 1, 2);
        // A tensor of another channel count spoils the result rather than mixing shapes; an
        // empty one is refused without harm.
        let values = vec![0.5; 2 * 7 * 6];
        moments.observe(&[1, 2, 7, 6], &values, &Executor::SingleThread);
        assert!(moments.centred(&[0.25, -0.5, 1.0]).is_empty());
        let layout = PatchLayout { pool_spec: spec([3, 3], 1, PaddingSpec::Valid, 2), groups: 2 };
        let mut empty = PatchMoments::new(layout);
        empty.observe(&[0, 2, 7, 6], &[], &Executor::SingleThread);
        empty.observe(&[1, 2, 0, 6], &[], &Executor::SingleThread);
        assert!(empty.centred(&[0.0, 0.0]).is_empty());
    }
}
