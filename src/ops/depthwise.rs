//! The depthwise path of `Int8Conv`: which kernel runs a layer's geometry on this CPU, built
//! once per input shape, and the per-channel loops around the kernels.

use std::sync::{Arc, Mutex};

use ndarray::Axis;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::conv::Int8Conv;
use super::parallel::{for_each_part, threads};
use super::{scratch, DepthwiseTaps};
use crate::kernels::{
    BytePlane, ConvGeometry, Element, Epilogue, Isa, LanePlanes, OutputPart, PhasedPlane,
    SimdElement, StripPlan, LANE_CHANNELS, MAX_DEPTHWISE_TAPS,
};

/// Most depthwise channels per parallel task (enough to amortise a task's start).
const MAX_DEPTHWISE_BATCH: usize = 32;

/// How a depthwise layer runs on this CPU. With AVX-512 VNNI and VBMI, an input of u8 codes
/// straight into the output plane, strips of outputs sliding down the rows ([`StripPlan`]: every
/// undilated layer). Otherwise, with AVX-512, stride-1 kernels of 5×5 or more on planes up to
/// 14×14 with 16 channels in the lanes of a vector ([`LanePlanes`]); with VNNI and VBMI (float
/// inputs) through a padded copy of codes ([`BytePlane`]); elsewhere on f32 codes
/// ([`PhasedPlane`]).
#[derive(Debug)]
pub enum DepthwiseLayout {
    Strips(StripPlan),
    Lanes(LanePlanes),
    Bytes(BytePlane),
    Floats(PhasedPlane),
}

impl DepthwiseLayout {
    /// The fastest layout for `g`; `codes`: the input is u8 codes (strips need them).
    fn new(g: &ConvGeometry, codes: bool) -> Option<Self> {
        let isa = Isa::detect();
        if let Some(plan) = codes.then(|| StripPlan::new(isa, g)).flatten() {
            return Some(DepthwiseLayout::Strips(plan));
        }
        if let Some(lanes) = LanePlanes::new(isa, g) {
            return Some(DepthwiseLayout::Lanes(lanes));
        }
        let layout = match BytePlane::new(isa, g) {
            Some(bytes) => DepthwiseLayout::Bytes(bytes),
            None => DepthwiseLayout::Floats(PhasedPlane::new(g)?),
        };
        Some(layout)
    }
}

/// The depthwise layout of the last input shape an op ran on, built once: building one
/// allocates its tables, which an inference after warm-up must not. A cache, not part of the
/// op's identity: clones start empty and every cache compares equal.
#[derive(Default)]
pub struct LayoutCache(Mutex<Option<(ConvGeometry, bool, Arc<DepthwiseLayout>)>>);

impl LayoutCache {
    /// The layout for `g` (`codes`: u8 input), from the cache or built; `what` names the layer
    /// in the error when no kernel takes the geometry.
    pub fn get(
        &self,
        g: &ConvGeometry,
        codes: bool,
        what: impl FnOnce() -> String,
    ) -> TractResult<Arc<DepthwiseLayout>> {
        // A poisoned lock only means a panic elsewhere mid-update: the entry is whole or None.
        let mut cached = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((geometry, for_codes, layout)) = cached.as_ref() {
            if geometry == g && *for_codes == codes {
                return Ok(layout.clone());
            }
        }
        let layout = Arc::new(DepthwiseLayout::new(g, codes).with_context(what)?);
        *cached = Some((*g, codes, layout.clone()));
        Ok(layout)
    }
}

impl Clone for LayoutCache {
    fn clone(&self) -> Self {
        LayoutCache::default()
    }
}

impl PartialEq for LayoutCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LayoutCache {}

impl std::fmt::Debug for LayoutCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayoutCache")
    }
}

/// Depthwise channels per parallel task: small planes (7×7, 14×14) are quick, and a task per
/// channel cost as much in dispatch and scratch lookups as the channel itself. A few tasks per
/// thread still balance.
fn channels_per_task(g: &ConvGeometry) -> usize {
    g.channels.div_ceil(4 * threads()).clamp(1, MAX_DEPTHWISE_BATCH)
}

/// A task's output `planes`, initialised by the task's thread, as one run of channel planes.
fn initialized_slice<O: SimdElement>(planes: OutputPart<'_, O>) -> TractResult<&mut [O]> {
    planes.initialize().into_slice().context("depthwise output is not contiguous")
}

/// The (channel, output plane) pairs of a task's output `planes` (`first`: its first channel),
/// initialised by the task's thread.
fn initialized_planes<'a, O: SimdElement>(
    first: usize,
    planes: OutputPart<'a, O>,
) -> TractResult<impl Iterator<Item = (usize, &'a mut [O])>> {
    let pixels = planes.dim().1.max(1);
    let planes = initialized_slice(planes)?;
    Ok(planes.chunks_exact_mut(pixels).enumerate().map(move |(i, plane)| (first + i, plane)))
}

impl Int8Conv {
    /// One image of a depthwise layer: tasks of whole channels, each channel computed and
    /// stored one after the other in the task's scratch buffers.
    pub(super) fn run_depthwise<I: Element, O: SimdElement>(
        &self,
        g: &ConvGeometry,
        layout: &DepthwiseLayout,
        taps: &DepthwiseTaps,
        image: &[I],
        store: O::Store,
        out: OutputPart<'_, O>,
    ) -> TractResult<()> {
        let layer = &self.layer;
        let w = &*layer.weights;
        let isa = Isa::detect();
        let pixels_in = g.height * g.width;
        let per_channel = g.kernel[0] * g.kernel[1];
        let per_task = channels_per_task(g);
        let input = layer.input;
        let zero_point = i32::from(input.zero_point);
        let plane_of = |c: usize| &image[c * pixels_in..(c + 1) * pixels_in];
        // The epilogue of channel `c` for sums of raw codes (the byte kernels'): their
        // zero-point term subtracted.
        let raw_epilogue = |c: usize| {
            let tap_sum = taps.sums[c];
            Epilogue { offset: zero_point * tap_sum, ..w.epilogues[c] }
        };
        match layout {
            DepthwiseLayout::Strips(plan) => {
                // Chosen only for inputs of codes (see `DepthwiseLayout::new`).
                let codes = I::as_codes(image).context("strip kernels need an input of codes")?;
                let plane_len = plan.plane_len();
                for_each_part(out, Axis(0), per_task, |first, planes| {
                    let count = planes.dim().0;
                    let planes = initialized_slice(planes)?;
                    // Tasks hold at most MAX_DEPTHWISE_BATCH channels (`channels_per_task`).
                    let mut epilogues = [raw_epilogue(first); MAX_DEPTHWISE_BATCH];
                    let epilogues = &mut epilogues[..count.min(MAX_DEPTHWISE_BATCH)];
                    for (j, e) in epilogues.iter_mut().enumerate() {
                        *e = raw_epilogue(first + j);
                    }
                    let channels = first..first + count;
                    let inputs = &codes[channels.start * plane_len..channels.end * plane_len];
                    let words = taps.words_of(channels);
                    plan.run(isa, inputs, input.zero_point, words, epilogues, store, planes);
                    Ok(())
                })
            }
            DepthwiseLayout::Lanes(layout) => {
                // Tasks of whole blocks of 16 channels (each block one vector's lanes).
                let per_task = per_task.next_multiple_of(LANE_CHANNELS);
                let (rows_len, out_pixels) = (layout.rows_len(), layout.out_pixels());
                for_each_part(out, Axis(0), per_task, |first, planes| {
                    let count = planes.dim().0;
                    let planes = initialized_slice(planes)?;
                    scratch::plane(layout.plane_len(), |x| {
                        layout.clear(x);
                        scratch::flat_sums(rows_len + layout.sums_len(), |buffer| {
                            let (rows, sums) = buffer.split_at_mut(rows_len);
                            for block in (0..count).step_by(LANE_CHANNELS) {
                                let (c, n) = (first + block, (count - block).min(LANE_CHANNELS));
                                let inputs = &image[c * pixels_in..(c + n) * pixels_in];
                                layout.fill(isa, inputs, input, rows, x);
                                let weights = taps.lane_block(c / LANE_CHANNELS);
                                layout.accumulate(isa, x, weights, sums);
                                layout.channel_rows(isa, sums, rows);
                                let outputs = &mut planes[block * out_pixels..];
                                let channels = rows.chunks_exact(out_pixels.max(1));
                                let stores =
                                    channels.zip(outputs.chunks_exact_mut(out_pixels.max(1)));
                                for (j, (sums, plane)) in stores.take(n).enumerate() {
                                    O::store_row(isa, sums, w.epilogues[c + j], store, plane);
                                }
                            }
                        })
                    });
                    Ok(())
                })
            }
            DepthwiseLayout::Bytes(layout) => {
                for_each_part(out, Axis(0), per_task, |first, planes| {
                    let planes = initialized_planes(first, planes)?;
                    scratch::input_bytes(layout.buffer_len(), |x| {
                        scratch::accumulators(layout.flat_len, |acc| {
                            for (c, plane) in planes {
                                layout.fill(isa, plane_of(c), input, x);
                                layout.accumulate(isa, x, taps.words(c), acc);
                                let e = raw_epilogue(c);
                                O::store_rows(isa, acc, g.out, layout.pitch, e, store, plane);
                            }
                        })
                    });
                    Ok(())
                })
            }
            DepthwiseLayout::Floats(layout) => {
                for_each_part(out, Axis(0), per_task, |first, planes| {
                    let planes = initialized_planes(first, planes)?;
                    scratch::plane(layout.buffer_len(), |x| {
                        scratch::flat_sums(layout.flat_len, |acc| {
                            let mut filter = [0f32; MAX_DEPTHWISE_TAPS];
                            for (c, plane) in planes {
                                layout.fill(isa, plane_of(c), input, x);
                                let filter = &mut filter[..per_channel];
                                taps.filter(c, filter);
                                layout.accumulate(isa, x, filter, acc);
                                layout.store(isa, acc, w.epilogues[c], store, plane);
                            }
                        })
                    });
                    Ok(())
                })
            }
        }
    }
}
