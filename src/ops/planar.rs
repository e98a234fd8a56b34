//! The planar (GEMM) path of `Int8Conv`: the input quantized into C4 words, then per
//! convolution group the product with the packed weights, directly for 1×1 layers and through
//! blocks of im2col patches otherwise, split across threads by pixels or by output channels.

use std::ops::Range;

use ndarray::{s, ArrayView2, ArrayViewMut2, Axis};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::conv::Int8Conv;
use super::parallel::{for_each_chunk, for_each_part, threads};
use super::scratch;
use crate::kernels::{
    conv_planar_with_tail, conv_shifted, im2col_c4_rows, quantize_c4, quantize_c4_channels,
    tail_scratch_len, ConvGeometry, Element, Epilogue, Isa, OutputPart, PatchFill, PlanarWeights,
    Planes, ShiftedOperand, ShiftedPlanes, SimdElement, VECTOR_PIXELS,
};

/// Fewest output channels per parallel task (one kernel block: a 16-channel projection still
/// splits across two threads).
const MIN_CHANNELS_PER_TASK: usize = 8;

/// Pixels the kernel computes per tile: a band of pixels is at least two.
const TILE_PIXELS: usize = 32;

/// im2col words built at a time (384 KB: the patches stay in a core's 1 MB L2 while the
/// product reads them).
const PATCH_BLOCK_WORDS: usize = 96 * 1024;

impl Int8Conv {
    /// Quantizes `planes` of `image` (channels from `first`) into C4 `words` with the layer's
    /// input parameters: per tensor, or each channel on its own 8-bit lattice (their
    /// accumulator offsets are in the layer's epilogues).
    fn quantize_planes<I: Element>(
        &self,
        isa: Isa,
        image: &[I],
        planes: Planes,
        first: usize,
        words: &mut [u32],
    ) {
        match &self.layer.weights.channel_input {
            Some(c) => {
                let (scales, zps) = (&c.scales[first..], &c.zero_points[first..]);
                quantize_c4_channels(isa, image, planes, scales, zps, words)
            }
            None => quantize_c4(isa, image, planes, self.layer.input, words),
        }
    }

    /// The layout of this layer's C4 input when its k×k product reads the planes in place
    /// ([`conv_shifted`]): stride-1 "same" kernels on the AVX-512 path, with one zero point for
    /// the whole tensor (its fill word); `None` when im2col builds the patches.
    pub(super) fn shifted_layout(&self, g: &ConvGeometry) -> Option<ShiftedPlanes> {
        let per_tensor = self.layer.weights.channel_input.is_none();
        (per_tensor && Isa::detect().tier() == crate::kernels::Tier::Avx512Vnni)
            .then(|| ShiftedPlanes::for_conv(g))?
    }

    /// Quantizes the input into `layout`'s planes of `x`, their guards holding the zero point,
    /// channel groups split across threads.
    fn quantize_shifted<I: Element>(
        &self,
        isa: Isa,
        image: &[I],
        layout: ShiftedPlanes,
        x: &mut [u32],
    ) {
        let (pixels, stride) = (layout.pixels, layout.plane_stride());
        let fill = u32::from_le_bytes([self.layer.input.zero_point; 4]);
        let channels = image.len() / pixels.max(1);
        let groups_per_task = layout.groups.div_ceil(2 * threads()).max(1);
        for_each_chunk(&mut x[..layout.len()], groups_per_task * stride, |task, words| {
            for (j, group_words) in words.chunks_exact_mut(stride).enumerate() {
                let first = 4 * (task * groups_per_task + j);
                let planes = Planes::whole((channels - first).min(4), pixels);
                let plane = layout.plane_mut(group_words, fill);
                self.quantize_planes(isa, &image[first * pixels..], planes, first, plane);
            }
        });
    }

    /// Quantize the whole input into C4 words (`x`), then compute each convolution group.
    pub(super) fn run_planar<I: Element, O: SimdElement>(
        &self,
        g: &ConvGeometry,
        groups: &[PlanarWeights],
        image: &[I],
        x: &mut [u32],
        store: O::Store,
        out: OutputPart<'_, O>,
    ) -> TractResult<()> {
        let layer = &self.layer;
        let w = &*layer.weights;
        let isa = Isa::detect();
        let pixels_in = g.height * g.width;
        let channel_input = w.channel_input.as_ref();
        let channel_groups = g.channels.div_ceil(4);
        let shifted = self.shifted_layout(g);
        let unit = g.kernel == [1, 1] && g.stride == [1, 1] && g.pad == [0, 0];
        if unit && self.group == 1 {
            let (n, pixels) = out.dim();
            let band = pixel_band(pixels);
            if split_by_pixels(pixels, n, band) {
                return self.unit_by_bands(g, &groups[0], image, x, band, store, out);
            }
        }
        if let Some(layout) = shifted {
            self.quantize_shifted(isa, image, layout, x);
        } else if channel_groups == 1 && threads() > 1 {
            // One channel group (a stem's 3 channels): bands of its pixels, else one thread
            // quantized the whole image while the other waited.
            let band = pixels_in.div_ceil(threads());
            for_each_chunk(&mut x[..pixels_in], band, |task, words| {
                let planes =
                    Planes { channels: g.channels, pixels: words.len(), stride: pixels_in };
                self.quantize_planes(isa, &image[task * band..], planes, 0, words)
            });
        } else {
            // Channel groups split across threads: on one thread this pass and im2col below
            // were a fifth of a 3×3 layer's time at two threads.
            let groups_per_task = channel_groups.div_ceil(2 * threads()).max(1);
            for_each_chunk(x, groups_per_task * pixels_in, |task, words| {
                let first = 4 * task * groups_per_task;
                let channels = (g.channels - first).min(4 * groups_per_task);
                let planes = Planes::whole(channels, pixels_in);
                self.quantize_planes(isa, &image[first * pixels_in..], planes, first, words)
            });
        }
        let fill = match channel_input {
            Some(c) => PatchFill::PerGroup(&c.fills),
            None => PatchFill::ZeroPoint(layer.input.zero_point),
        };
        let per_group_out = w.n / self.group;
        let groups_per_conv_group = g.channels.div_ceil(4) / self.group;
        let mut rest = out;
        for (group, weights) in groups.iter().enumerate() {
            let first_group = group * groups_per_conv_group;
            let channels = group * per_group_out..(group + 1) * per_group_out;
            let conv = GroupConv {
                isa,
                g,
                words: x,
                channel_groups: first_group..first_group + groups_per_conv_group,
                fill,
                weights,
                epilogues: &w.epilogues[channels.clone()],
                store,
            };
            let (out, after) = rest.split_at(Axis(0), per_group_out);
            rest = after;
            if let Some(layout) = shifted {
                conv.in_place(layout, out)?;
            } else if unit {
                conv.unit(out)?;
            } else {
                conv.patches(out)?;
            }
        }
        Ok(())
    }

    /// A 1×1 layer split by bands of pixels: each thread quantizes its band's C4 words and
    /// multiplies them, in one parallel section instead of two (a quantize pass over every
    /// channel group, then the product), the band's words staying in that core's cache.
    #[allow(clippy::too_many_arguments)]
    fn unit_by_bands<I: Element, O: SimdElement>(
        &self,
        g: &ConvGeometry,
        weights: &PlanarWeights,
        image: &[I],
        x: &mut [u32],
        band: usize,
        store: O::Store,
        out: OutputPart<'_, O>,
    ) -> TractResult<()> {
        let w = &*self.layer.weights;
        let (channels, pixels) = out.dim();
        let groups = g.channels.div_ceil(4);
        let x = ArrayViewMut2::from_shape((groups, pixels), &mut x[..groups * pixels])?;
        let conv = GroupConv {
            isa: Isa::detect(),
            g,
            words: &[],
            channel_groups: 0..groups,
            fill: PatchFill::ZeroPoint(self.layer.input.zero_point),
            weights,
            epilogues: &w.epilogues,
            store,
        };
        for_each_part((x, out), Axis(1), band, |first, (mut x, out)| {
            for (group, mut row) in x.rows_mut().into_iter().enumerate() {
                let words = row.as_slice_mut().context("C4 band is not contiguous")?;
                let planes = Planes {
                    channels: (g.channels - 4 * group).min(4),
                    pixels: words.len(),
                    stride: pixels,
                };
                let start = 4 * group * pixels + first;
                self.quantize_planes(conv.isa, &image[start..], planes, 4 * group, words);
            }
            conv.product(x.view(), 0..channels, out.initialize());
            Ok(())
        })
    }
}

/// Output channels per part when threads split a product by channel: multiples of 4 rather
/// than of the kernel's 8-channel block (a 24-channel layer splits 12 + 12 on two threads, not
/// 16 + 8).
fn channels_per_part(channels: usize) -> usize {
    channels.div_ceil(threads()).next_multiple_of(4).max(MIN_CHANNELS_PER_TASK)
}

/// Pixels per part when threads split a product by pixels: one band per thread, in whole
/// vectors of pixels.
fn pixel_band(pixels: usize) -> usize {
    pixels.div_ceil(threads()).next_multiple_of(VECTOR_PIXELS)
}

/// Whether threads split a product of `channels` × `pixels` by pixels, in bands of `band`,
/// rather than by output channels. The split whose largest part is smaller wins (196 pixels in
/// bands of 112 + 84 would leave one thread idle an eighth of the time, 96 channels split
/// 48 + 48); when they are even, the pixels if they outnumber the channels: each part reads
/// all of one operand and its share of the other, so splitting the larger one (the pixels'
/// activations or the channels' weights) reads less, and bands of pixels keep each thread's
/// im2col patches in its own cache.
fn split_by_pixels(pixels: usize, channels: usize, band: usize) -> bool {
    let threads = threads();
    if threads < 2 || pixels < 2 * TILE_PIXELS * threads {
        return false;
    }
    let by_pixels = band.min(pixels) * channels;
    let by_channels = channels_per_part(channels).min(channels) * pixels;
    by_pixels < by_channels || (by_pixels == by_channels && pixels >= channels)
}

/// One convolution group of one image.
struct GroupConv<'a, O: SimdElement> {
    isa: Isa,
    g: &'a ConvGeometry,
    /// The image's C4 words (every convolution group's channel groups).
    words: &'a [u32],
    /// This group's channel groups in `words`.
    channel_groups: Range<usize>,
    fill: PatchFill<'a>,
    weights: &'a PlanarWeights,
    /// One per output channel of the group.
    epilogues: &'a [Epilogue],
    store: O::Store,
}

impl<O: SimdElement> GroupConv<'_, O> {
    /// Output `channels` of the group (`out`'s rows) over `out`'s pixels, `x` the operand's
    /// columns for those pixels (a plane's last few pixels as dot products, their columns
    /// transposed into scratch: [`conv_planar_with_tail`]).
    fn product(&self, x: ArrayView2<'_, u32>, channels: Range<usize>, out: ArrayViewMut2<'_, O>) {
        let epilogues = &self.epilogues[channels.clone()];
        let (isa, w, store) = (self.isa, self.weights, self.store);
        scratch::tail_columns(tail_scratch_len(x.ncols(), w.k4), |columns| {
            conv_planar_with_tail(isa, x, w, channels, epilogues, store, out, columns)
        })
    }

    /// The product split by output channels, every part reading all of `x`.
    fn by_channels(&self, x: ArrayView2<'_, u32>, out: OutputPart<'_, O>) -> TractResult<()> {
        let per_part = channels_per_part(out.dim().0);
        for_each_part(out, Axis(0), per_part, |first, out| {
            let out = out.initialize();
            self.product(x.view(), first..first + out.nrows(), out);
            Ok(())
        })
    }

    /// A 1×1 convolution: the C4 words are the operand.
    fn unit(&self, out: OutputPart<'_, O>) -> TractResult<()> {
        let (channels, pixels) = out.dim();
        let x = ArrayView2::from_shape((self.g.channels.div_ceil(4), pixels), self.words)?;
        let x = x.slice_move(s![self.channel_groups.clone(), ..]);
        let band = pixel_band(pixels);
        if !split_by_pixels(pixels, channels, band) {
            return self.by_channels(x, out);
        }
        for_each_part((x, out), Axis(1), band, |_, (x, out)| {
            self.product(x, 0..channels, out.initialize());
            Ok(())
        })
    }

    /// A stride-1 "same" k×k convolution reading its planes in place (`x` laid out as
    /// `layout`): split by bands of pixels or by output channels as a 1×1 product is.
    fn in_place(&self, layout: ShiftedPlanes, out: OutputPart<'_, O>) -> TractResult<()> {
        let (channels, pixels) = out.dim();
        let fill = match self.fill {
            PatchFill::ZeroPoint(zp) => u32::from_le_bytes([zp; 4]),
            PatchFill::PerGroup(_) => {
                tract_onnx::tract_core::internal::bail!("a shifted product needs one zero point")
            }
        };
        let operand = ShiftedOperand {
            words: self.words,
            layout,
            geometry: self.g,
            groups: self.channel_groups.clone(),
            fill,
        };
        let (isa, w, store, k4) = (self.isa, self.weights, self.store, self.weights.k4);
        let product = |pixels: Range<usize>, channels: Range<usize>, out: ArrayViewMut2<'_, O>| {
            let epilogues = &self.epilogues[channels.clone()];
            scratch::tail_columns(tail_scratch_len(pixels.len(), k4), |columns| {
                conv_shifted(isa, &operand, pixels, w, channels, epilogues, store, out, columns)
            })
        };
        let band = pixel_band(pixels);
        if split_by_pixels(pixels, channels, band) {
            return for_each_part(out, Axis(1), band, |first, out| {
                let out = out.initialize();
                product(first..first + out.ncols(), 0..channels, out);
                Ok(())
            });
        }
        let per_part = channels_per_part(channels);
        for_each_part(out, Axis(0), per_part, |first, out| {
            let out = out.initialize();
            product(0..pixels, first..first + out.nrows(), out);
            Ok(())
        })
    }

    /// A k×k (or strided, or padded) convolution: im2col patches for a block of output rows at
    /// a time, so that the product reads them from cache rather than memory (the whole matrix
    /// was 1.8 MB for a 56×56 3×3 layer).
    fn patches(&self, out: OutputPart<'_, O>) -> TractResult<()> {
        let (g, k4) = (self.g, self.weights.k4);
        let (out_height, out_width) = (g.out[0], g.out[1].max(1));
        let (channels, pixels) = out.dim();
        let rows_per_block =
            (PATCH_BLOCK_WORDS / (k4 * out_width).max(1)).clamp(1, out_height.max(1));
        // Bands of whole output rows: each thread builds its own rows' patches and multiplies
        // them while they are in its cache.
        let rows_per_task = out_height.div_ceil(threads());
        if split_by_pixels(pixels, channels, rows_per_task * out_width) {
            return for_each_part(out, Axis(1), rows_per_task * out_width, |first, out| {
                let rows = out.dim().1 / out_width;
                let block_words = k4 * rows_per_block.min(rows) * out_width;
                scratch::patch_words(block_words, |patches| {
                    let mut rest = out;
                    for start in (0..rows).step_by(rows_per_block) {
                        let block = start..(start + rows_per_block).min(rows);
                        let first_row = first / out_width + start;
                        let out_rows = first_row..first_row + block.len();
                        let columns = block.len() * out_width;
                        let patches = &mut patches[..k4 * columns];
                        self.im2col(out_rows, 0..k4, patches);
                        let x = ArrayView2::from_shape((k4, columns), &*patches)?;
                        // Each block's outputs initialised just before its stores, not the whole
                        // band at once: those would leave the cache before their block's turn.
                        let (block_out, after) = rest.split_at(Axis(1), columns);
                        rest = after;
                        self.product(x, 0..channels, block_out.initialize());
                    }
                    Ok(())
                })
            });
        }
        if threads() > 1 && rows_per_block >= out_height {
            // One block (a 7×7 or 14×14 plane): each thread builds all the patches in its own
            // cache and multiplies its channels. Building them twice costs less than a second
            // parallel section and handing half of them across cores (ResNet18 b1 t2 4 % faster
            // with the other core shared, the same on a quiet one).
            let per_part = channels_per_part(channels);
            let columns = out_height * out_width;
            return for_each_part(out, Axis(0), per_part, |first, out| {
                scratch::patch_words(k4 * columns, |patches| {
                    self.im2col(0..out_height, 0..k4, patches);
                    let x = ArrayView2::from_shape((k4, columns), &*patches)?;
                    let out = out.initialize();
                    self.product(x, first..first + out.nrows(), out);
                    Ok(())
                })
            });
        }
        // Blocks of a larger plane shared by the threads: built in parallel by patch rows, then
        // multiplied by channels.
        scratch::patch_words(k4 * rows_per_block * out_width, |patches| {
            let mut rest = out;
            for first_row in (0..out_height).step_by(rows_per_block) {
                let out_rows = first_row..(first_row + rows_per_block).min(out_height);
                let columns = out_rows.len() * out_width;
                let patches = &mut patches[..k4 * columns];
                let rows_per_task = k4.div_ceil(2 * threads()).max(1);
                for_each_chunk(patches, rows_per_task * columns, |task, part| {
                    let first = task * rows_per_task;
                    let rows = first..first + part.len() / columns.max(1);
                    self.im2col(out_rows.clone(), rows, part);
                });
                let x = ArrayView2::from_shape((k4, columns), &*patches)?;
                let (band, after) = rest.split_at(Axis(1), columns);
                rest = after;
                self.by_channels(x, band)?;
            }
            Ok(())
        })
    }

    /// Patch rows `rows` (of every tap and channel group) for output rows `out_rows`.
    fn im2col(&self, out_rows: Range<usize>, rows: Range<usize>, patches: &mut [u32]) {
        let groups = self.channel_groups.clone();
        im2col_c4_rows(self.g, self.words, groups, self.fill, rows, out_rows, patches);
    }
}
