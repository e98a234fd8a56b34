//! `cargo bench` (criterion): the int8 kernels in GOPS next to the machine's measured VNNI peak,
//! on every distinct layer shape of ResNet18, MobileNetV2 and EfficientNet-Lite0 (batch 1,
//! 224×224), plus the shipped digits CNN in INT8 against tract's float plan.
//!
//! Criterion's `thrpt` line is in elements per second where one element is one integer
//! operation (a multiply-add counts 2), so `Gelem/s` reads as GOPS. The peak and the layers are
//! timed in **CPU time of the benchmark thread** (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on
//! a shared machine another process taking the core half the time would otherwise halve every
//! figure; this gives the rate while the thread runs (one core).
//!
//! - `vnni peak/vpdpbusd zmm, 1 thread`: 16 independent chains of `vpdpbusd` on 512-bit
//!   registers (16 lanes × 4 u8·i8 products each), nothing loaded or stored: the ceiling of one
//!   core that the kernels are measured against (`vpdpbusd ymm` when the kernels run on
//!   AVX-VNNI: `JARVIS_PERF_ISA=avx_vnni cargo bench` times every group on the 256-bit
//!   kernels).
//! - `layers/…`: one thread, the int8 part of each layer as `Int8Conv` / `Int8Linear` run it
//!   through the public kernel API — `conv_shifted` for stride-1 "same" k×k layers (their planes
//!   read in place), else patches (`im2col_c4`, skipped for unit 1×1 convolutions)
//!   and `conv_planar` for convolutions (a 7×7 or 14×14 plane's last `pixels mod 16` by
//!   `conv_planar_tail`, through `conv_planar_with_tail` as the runtime does), `PhasedPlane::fill`, `accumulate` and `store` per
//!   channel for depthwise ones, reading and storing u8 codes as linked int8 layers do;
//!   `gemm_u8i8` for the classifiers (float input quantization and output not included). Names: kind, channels in→out, input side, kernel, stride, then which models use
//!   the shape and how many times. `cargo bench -- layers/depthwise` runs a subset.
//!
//! - `update 1000x1280/…`: what a live update of EfficientNet-Lite0's classifier costs in the
//!   kernels, per thread: `quantize_weights` (per-channel scales and i8 codes) and
//!   `PackedWeights::pack`; `thrpt` is in weights per second. The whole `Runtime::update`
//!   (master copy, re-planning) is timed by `python -m jarvis_performance.bench --learning`.
//!
//! The shape table is printed by `python scripts/layer_shapes.py`. onnxruntime comparisons live
//! in `python -m jarvis_performance.bench --int8`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jarvis_performance::kernels::{
    conv_planar, conv_planar_with_tail, conv_shifted, gemm_u8i8, im2col_c4, tail_scratch_len,
    tap_words, Activation, ActivationQuant, BytePlane, ConvGeometry, Element, Epilogue, Isa,
    OutputCodes, PackedWeights, PhasedPlane, PlanarWeights, ShiftedOperand, ShiftedPlanes,
    StripPlan, Tier, MAX_TAP_WORDS,
};
use jarvis_performance::quantize::qparams::quantize_weights;
use jarvis_performance::quantize::QuantizeOptions;
use jarvis_performance::{LoadOptions, Runtime};
use tract_onnx::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Conv,
    Depthwise,
    Linear,
}

/// One distinct layer geometry at batch 1 (square inputs and kernels).
#[derive(Debug, Clone, Copy)]
struct Layer {
    /// Models using it, with how many layers each.
    used: &'static str,
    kind: Kind,
    cin: usize,
    cout: usize,
    /// Input height and width.
    hw: usize,
    k: usize,
    stride: usize,
    /// Padding before and after.
    pad: [usize; 2],
}

/// Input/output quantization of the benchmarked layers (stored as codes, as linked layers do).
const CODES: ActivationQuant = ActivationQuant { scale: 0.05, zero_point: 128 };
/// A ReLU6 epilogue with the zero-point correction of a typical layer.
/// How the benchmarked layers store codes: as the runtime does, the layer's activation bounds
/// computed once.
fn codes() -> OutputCodes {
    OutputCodes::from(CODES).with_activation(EPILOGUE.activation)
}

const EPILOGUE: Epilogue =
    Epilogue { offset: 3000, scale: 1e-4, bias: 0.1, activation: Activation::Clip(0.0, 6.0) };

#[rustfmt::skip]
const SHAPES: &[Layer] = &[
    Layer { used: "resnet18×1", kind: Kind::Conv, cin: 3, cout: 64, hw: 224, k: 7, stride: 2, pad: [3, 3] },
    Layer { used: "resnet18×4", kind: Kind::Conv, cin: 64, cout: 64, hw: 56, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "resnet18×1", kind: Kind::Conv, cin: 64, cout: 128, hw: 56, k: 1, stride: 2, pad: [0, 0] },
    Layer { used: "resnet18×1", kind: Kind::Conv, cin: 64, cout: 128, hw: 56, k: 3, stride: 2, pad: [1, 1] },
    Layer { used: "resnet18×3", kind: Kind::Conv, cin: 128, cout: 128, hw: 28, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "resnet18×1", kind: Kind::Conv, cin: 128, cout: 256, hw: 28, k: 1, stride: 2, pad: [0, 0] },
    Layer { used: "resnet18×1", kind: Kind::Conv, cin: 128, cout: 256, hw: 28, k: 3, stride: 2, pad: [1, 1] },
    Layer { used: "resnet18×3", kind: Kind::Conv, cin: 256, cout: 256, hw: 14, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "resnet18×1", kind: Kind::Conv, cin: 256, cout: 512, hw: 14, k: 1, stride: 2, pad: [0, 0] },
    Layer { used: "resnet18×1", kind: Kind::Conv, cin: 256, cout: 512, hw: 14, k: 3, stride: 2, pad: [1, 1] },
    Layer { used: "resnet18×3", kind: Kind::Conv, cin: 512, cout: 512, hw: 7, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "resnet18×1", kind: Kind::Linear, cin: 512, cout: 1000, hw: 1, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Conv, cin: 3, cout: 32, hw: 224, k: 3, stride: 2, pad: [1, 1] },
    Layer { used: "mobilenet_v2×1 efficientnet_lite0×1", kind: Kind::Depthwise, cin: 32, cout: 32, hw: 112, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "mobilenet_v2×1 efficientnet_lite0×1", kind: Kind::Conv, cin: 32, cout: 16, hw: 112, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1 efficientnet_lite0×1", kind: Kind::Conv, cin: 16, cout: 96, hw: 112, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Depthwise, cin: 96, cout: 96, hw: 112, k: 3, stride: 2, pad: [1, 1] },
    Layer { used: "mobilenet_v2×1 efficientnet_lite0×1", kind: Kind::Conv, cin: 96, cout: 24, hw: 56, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×2 efficientnet_lite0×2", kind: Kind::Conv, cin: 24, cout: 144, hw: 56, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1 efficientnet_lite0×1", kind: Kind::Depthwise, cin: 144, cout: 144, hw: 56, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "mobilenet_v2×1 efficientnet_lite0×1", kind: Kind::Conv, cin: 144, cout: 24, hw: 56, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Depthwise, cin: 144, cout: 144, hw: 56, k: 3, stride: 2, pad: [1, 1] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Conv, cin: 144, cout: 32, hw: 28, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×3", kind: Kind::Conv, cin: 32, cout: 192, hw: 28, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×2", kind: Kind::Depthwise, cin: 192, cout: 192, hw: 28, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "mobilenet_v2×2", kind: Kind::Conv, cin: 192, cout: 32, hw: 28, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Depthwise, cin: 192, cout: 192, hw: 28, k: 3, stride: 2, pad: [1, 1] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Conv, cin: 192, cout: 64, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×4", kind: Kind::Conv, cin: 64, cout: 384, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×4", kind: Kind::Depthwise, cin: 384, cout: 384, hw: 14, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "mobilenet_v2×3", kind: Kind::Conv, cin: 384, cout: 64, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Conv, cin: 384, cout: 96, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×3", kind: Kind::Conv, cin: 96, cout: 576, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×2", kind: Kind::Depthwise, cin: 576, cout: 576, hw: 14, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "mobilenet_v2×2", kind: Kind::Conv, cin: 576, cout: 96, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Depthwise, cin: 576, cout: 576, hw: 14, k: 3, stride: 2, pad: [1, 1] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Conv, cin: 576, cout: 160, hw: 7, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×3", kind: Kind::Conv, cin: 160, cout: 960, hw: 7, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×3", kind: Kind::Depthwise, cin: 960, cout: 960, hw: 7, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "mobilenet_v2×2", kind: Kind::Conv, cin: 960, cout: 160, hw: 7, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1", kind: Kind::Conv, cin: 960, cout: 320, hw: 7, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1 efficientnet_lite0×1", kind: Kind::Conv, cin: 320, cout: 1280, hw: 7, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "mobilenet_v2×1 efficientnet_lite0×1", kind: Kind::Linear, cin: 1280, cout: 1000, hw: 1, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Conv, cin: 3, cout: 32, hw: 224, k: 3, stride: 2, pad: [0, 1] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Depthwise, cin: 96, cout: 96, hw: 112, k: 3, stride: 2, pad: [0, 1] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Depthwise, cin: 144, cout: 144, hw: 56, k: 5, stride: 2, pad: [1, 2] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Conv, cin: 144, cout: 40, hw: 28, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×2", kind: Kind::Conv, cin: 40, cout: 240, hw: 28, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Depthwise, cin: 240, cout: 240, hw: 28, k: 5, stride: 1, pad: [2, 2] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Conv, cin: 240, cout: 40, hw: 28, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Depthwise, cin: 240, cout: 240, hw: 28, k: 3, stride: 2, pad: [0, 1] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Conv, cin: 240, cout: 80, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×3", kind: Kind::Conv, cin: 80, cout: 480, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×2", kind: Kind::Depthwise, cin: 480, cout: 480, hw: 14, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "efficientnet_lite0×2", kind: Kind::Conv, cin: 480, cout: 80, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Depthwise, cin: 480, cout: 480, hw: 14, k: 5, stride: 1, pad: [2, 2] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Conv, cin: 480, cout: 112, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×3", kind: Kind::Conv, cin: 112, cout: 672, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×2", kind: Kind::Depthwise, cin: 672, cout: 672, hw: 14, k: 5, stride: 1, pad: [2, 2] },
    Layer { used: "efficientnet_lite0×2", kind: Kind::Conv, cin: 672, cout: 112, hw: 14, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Depthwise, cin: 672, cout: 672, hw: 14, k: 5, stride: 2, pad: [1, 2] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Conv, cin: 672, cout: 192, hw: 7, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×4", kind: Kind::Conv, cin: 192, cout: 1152, hw: 7, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×3", kind: Kind::Depthwise, cin: 1152, cout: 1152, hw: 7, k: 5, stride: 1, pad: [2, 2] },
    Layer { used: "efficientnet_lite0×3", kind: Kind::Conv, cin: 1152, cout: 192, hw: 7, k: 1, stride: 1, pad: [0, 0] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Depthwise, cin: 1152, cout: 1152, hw: 7, k: 3, stride: 1, pad: [1, 1] },
    Layer { used: "efficientnet_lite0×1", kind: Kind::Conv, cin: 1152, cout: 320, hw: 7, k: 1, stride: 1, pad: [0, 0] },
];

impl Layer {
    fn out_side(&self) -> usize {
        (self.hw + self.pad[0] + self.pad[1] - self.k) / self.stride + 1
    }

    /// Integer operations (2 per multiply-add).
    fn ops(&self) -> u64 {
        let taps = (self.k * self.k) as u64;
        let pixels = (self.out_side() * self.out_side()) as u64;
        let macs = match self.kind {
            Kind::Conv => self.cout as u64 * self.cin as u64 * taps * pixels,
            Kind::Depthwise => self.cin as u64 * taps * pixels,
            Kind::Linear => self.cout as u64 * self.cin as u64,
        };
        2 * macs
    }

    fn name(&self) -> String {
        let kind = match self.kind {
            Kind::Conv => "conv",
            Kind::Depthwise => "depthwise",
            Kind::Linear => "linear",
        };
        format!(
            "{kind} {}->{} {}x{} k{} s{} [{}]",
            self.cin, self.cout, self.hw, self.hw, self.k, self.stride, self.used
        )
    }

    fn geometry(&self) -> ConvGeometry {
        ConvGeometry {
            channels: self.cin,
            height: self.hw,
            width: self.hw,
            kernel: [self.k; 2],
            stride: [self.stride; 2],
            dilation: [1; 2],
            pad: [self.pad[0]; 2],
            out: [self.out_side(); 2],
        }
    }
}

/// Deterministic pseudo-random bytes.
fn bytes(len: usize, seed: u32) -> impl Iterator<Item = u8> {
    (0..len as u32).map(move |i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
}

/// Runs `layer`'s int8 work once per `iter()` call of `bench`.
/// The first `rows × columns` elements of `data` as planes of `columns`.
fn planes<T>(data: &[T], rows: usize, columns: usize) -> ndarray::ArrayView2<'_, T> {
    ndarray::ArrayView2::from_shape((rows, columns), &data[..rows * columns]).unwrap()
}

fn planes_mut<T>(data: &mut [T], rows: usize, columns: usize) -> ndarray::ArrayViewMut2<'_, T> {
    ndarray::ArrayViewMut2::from_shape((rows, columns), &mut data[..rows * columns]).unwrap()
}

fn bench_layer(b: &mut criterion::Bencher<'_, ThreadCpu>, isa: Isa, layer: &Layer) {
    let g = layer.geometry();
    let (pixels_in, pixels) = (layer.hw * layer.hw, layer.out_side() * layer.out_side());
    match layer.kind {
        Kind::Conv => {
            let groups = layer.cin.div_ceil(4);
            let k4 = layer.k * layer.k * groups;
            let x: Vec<u32> = bytes(groups * pixels_in * 4, 1)
                .collect::<Vec<_>>()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let w: Vec<i8> = bytes(layer.cout * k4 * 4, 2).map(|v| v as i8).collect();
            let packed = PlanarWeights::pack(&w, layer.cout, k4);
            let unit = layer.k == 1 && layer.stride == 1 && layer.pad == [0, 0];
            let mut patches = vec![0u32; if unit { 0 } else { k4 * pixels }];
            // Stored as codes for the next layer, as linked layers do.
            let mut out = vec![0u8; layer.cout * pixels];
            let epilogues = vec![EPILOGUE; layer.cout];
            // The last few pixels of a plane (a 7×7 plane's 49th) as dot products, as the
            // runtime runs them, their operand columns transposed into scratch first.
            let mut scratch = vec![0u32; tail_scratch_len(pixels, k4)];
            // A stride-1 "same" layer reads its planes in place, as the runtime does.
            if let Some(layout) =
                ShiftedPlanes::for_conv(&g).filter(|_| isa.tier() == Tier::Avx512Vnni)
            {
                let (fill, mut words) = (u32::from_le_bytes([3; 4]), vec![0u32; layout.len()]);
                for (chunk, plane) in
                    words.chunks_exact_mut(layout.plane_stride()).zip(x.chunks_exact(pixels_in))
                {
                    layout.plane_mut(chunk, fill).copy_from_slice(plane);
                }
                let operand =
                    ShiftedOperand { words: &words, layout, geometry: &g, groups: 0..groups, fill };
                return b.iter(|| {
                    let out_planes = planes_mut(&mut out, layer.cout, pixels);
                    let (e, codes) = (&epilogues, codes());
                    conv_shifted(
                        isa,
                        black_box(&operand),
                        0..pixels,
                        &packed,
                        0..layer.cout,
                        e,
                        codes,
                        out_planes,
                        &mut scratch,
                    );
                    black_box(&out);
                });
            }
            b.iter(|| {
                let operand: &[u32] = if unit {
                    &x
                } else {
                    im2col_c4(&g, black_box(&x), 0..groups, 3, &mut patches);
                    &patches
                };
                let range = 0..layer.cout;
                let operand = planes(operand, k4, pixels);
                let out_planes = planes_mut(&mut out, layer.cout, pixels);
                let (e, codes) = (&epilogues, codes());
                conv_planar_with_tail(
                    isa,
                    operand,
                    &packed,
                    range,
                    e,
                    codes,
                    out_planes,
                    &mut scratch,
                );
                black_box(&out);
            });
        }
        Kind::Depthwise => {
            let taps = layer.k * layer.k;
            let x: Vec<u8> = bytes(layer.cin * pixels_in, 3).collect();
            let w: Vec<f32> = bytes(layer.cin * taps, 4).map(|v| f32::from(v as i8)).collect();
            let mut out = vec![0u8; pixels];
            // The kernel the runtime picks for an input of codes: strips sliding down the
            // plane where the CPU has VNNI and VBMI, else a padded copy or f32 codes.
            let shape = [layer.out_side(), layer.out_side()];
            // Weight words and epilogues packed beforehand, as the runtime does.
            let (codes, zero_point) = (codes(), i32::from(CODES.zero_point));
            let filters: Vec<([i32; MAX_TAP_WORDS], Epilogue)> = (w.chunks_exact(taps))
                .map(|filter| {
                    let mut words = [0; MAX_TAP_WORDS];
                    let sum = tap_words(g.kernel, filter, &mut words);
                    (words, Epilogue { offset: sum * zero_point, ..EPILOGUE })
                })
                .collect();
            if let Some(plan) = StripPlan::new(isa, &g) {
                // All channels in one call, as a task of the runtime runs them.
                let words: Vec<i32> =
                    filters.iter().flat_map(|(w, _)| w[..plan.words_len()].to_vec()).collect();
                let epilogues: Vec<Epilogue> = filters.iter().map(|(_, e)| *e).collect();
                let mut out = vec![0u8; layer.cin * pixels];
                b.iter(|| {
                    let input = black_box(&x[..]);
                    plan.run(isa, input, CODES.zero_point, &words, &epilogues, codes, &mut out);
                    black_box(&out);
                });
                return;
            }
            if let Some(bytes_plane) = BytePlane::new(isa, &g) {
                let mut plane = vec![0u8; bytes_plane.buffer_len()];
                let mut acc = vec![0i32; bytes_plane.flat_len];
                b.iter(|| {
                    for (c, (words, e)) in filters.iter().enumerate() {
                        let input = &x[c * pixels_in..(c + 1) * pixels_in];
                        bytes_plane.fill(isa, black_box(input), CODES, &mut plane);
                        bytes_plane.accumulate(isa, &plane, words, &mut acc);
                        u8::store_rows(isa, &acc, shape, bytes_plane.pitch, *e, codes, &mut out);
                        black_box(&out);
                    }
                });
                return;
            }
            let Some(phased) = PhasedPlane::new(&g) else {
                panic!("no depthwise layout for {g:?}")
            };
            let mut plane = vec![0f32; phased.buffer_len()];
            let mut acc = vec![0f32; phased.flat_len];
            b.iter(|| {
                for c in 0..layer.cin {
                    let input = &x[c * pixels_in..(c + 1) * pixels_in];
                    phased.fill(isa, black_box(input), CODES, &mut plane);
                    phased.accumulate(isa, &plane, &w[c * taps..][..taps], &mut acc);
                    phased.store(isa, &acc, EPILOGUE, codes, &mut out);
                    black_box(&out);
                }
            });
        }
        Kind::Linear => {
            let packed = PackedWeights::pack(
                &bytes(layer.cout * layer.cin, 5).map(|v| v as i8).collect::<Vec<_>>(),
                layer.cout,
                layer.cin,
            );
            let x: Vec<u8> = bytes(packed.k_padded, 6).collect();
            let mut out = vec![0i32; packed.n_padded()];
            b.iter(|| {
                gemm_u8i8(isa, black_box(&x), packed.k_padded, 1, &packed, &mut out);
                black_box(&out);
            });
        }
    }
}

fn layers(c: &mut Criterion<ThreadCpu>) {
    let isa = Isa::detect();
    let mut group = c.benchmark_group("layers");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600));
    for layer in SHAPES {
        group.throughput(Throughput::Elements(layer.ops()));
        group.bench_function(layer.name(), |b| bench_layer(b, isa, layer));
    }
    group.finish();
}

/// Re-quantizing and re-packing a 1,000 × 1,280 classifier, as an update of it does.
fn update_kernels(c: &mut Criterion<ThreadCpu>) {
    let (n, k) = (1000, 1280);
    let weights: Vec<f32> =
        bytes(n * k, 7).map(|b| (f32::from(b) - 127.5) * 1e-3).collect::<Vec<f32>>();
    let mut group = c.benchmark_group("update 1000x1280");
    group.sample_size(20).throughput(Throughput::Elements((n * k) as u64));
    group.bench_function("quantize_weights", |b| {
        b.iter(|| quantize_weights(black_box(&weights), n, k, true))
    });
    let (codes, _) = quantize_weights(&weights, n, k, true);
    group.bench_function("pack", |b| b.iter(|| PackedWeights::pack(black_box(&codes), n, k)));
    group.finish();
}

/// The peak micro-benchmark: `vpdpbusd` with nothing else in the loop.
#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// Independent accumulator chains: enough to hide the instruction's latency.
    pub const CHAINS: usize = 16;
    /// Integer operations per instruction: 16 lanes × 4 products, 2 operations each.
    pub const OPS: u64 = 16 * 4 * 2;

    /// `iterations` rounds of `CHAINS` independent `vpdpbusd zmm`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512-VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn run(iterations: usize, a: i32, b: i32) -> i32 {
        let (av, bv) = (_mm512_set1_epi32(a), _mm512_set1_epi32(b));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm512_dpbusd_epi32(*r, av, bv);
            }
        }
        let sum = acc.iter().fold(_mm512_setzero_si512(), |s, &r| _mm512_add_epi32(s, r));
        _mm512_reduce_add_epi32(sum)
    }

    /// Chains on 256-bit registers: without AVX-512 there are 16 of them, and 16 chains plus
    /// the two operands spilled to the stack (306 GOPS, below what the GEMM reaches).
    pub const CHAINS_YMM: usize = 12;

    /// [`run`] on 256-bit registers with AVX-VNNI (`vpdpbusd ymm`: half the lanes), the
    /// ceiling of the `avx_vnni` kernels.
    ///
    /// # Safety
    /// The CPU must have AVX2 and AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn run_ymm(iterations: usize, a: i32, b: i32) -> i32 {
        let (av, bv) = (_mm256_set1_epi32(a), _mm256_set1_epi32(b));
        let mut acc = [_mm256_setzero_si256(); CHAINS_YMM];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm256_dpbusd_avx_epi32(*r, av, bv);
            }
        }
        let sum = acc.iter().fold(_mm256_setzero_si256(), |s, &r| _mm256_add_epi32(s, r));
        let mut lanes = [0i32; 8];
        // SAFETY: 8 lanes stored into an 8-element array.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sum) };
        lanes.iter().sum()
    }
}

fn vnni_peak(c: &mut Criterion<ThreadCpu>) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().tier() == Tier::Avx512Vnni {
        let mut group = c.benchmark_group("vnni peak");
        group.sample_size(20).measurement_time(Duration::from_secs(1));
        let iterations = 1 << 12;
        group.throughput(Throughput::Elements((iterations * peak::CHAINS) as u64 * peak::OPS));
        group.bench_function("vpdpbusd zmm, 1 thread", |b| {
            // SAFETY: Isa of tier Avx512Vnni is detected only on CPUs with AVX-512F/BW/VNNI.
            b.iter(|| unsafe { peak::run(iterations, black_box(0x0102_0304), black_box(-3)) })
        });
        group.finish();
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().tier() == Tier::AvxVnni {
        // The 256-bit kernels' ceiling (`JARVIS_PERF_ISA=avx_vnni cargo bench` on this machine).
        let mut group = c.benchmark_group("vnni peak");
        group.sample_size(20).measurement_time(Duration::from_secs(1));
        let iterations = 1 << 12;
        let ops = (iterations * peak::CHAINS_YMM) as u64 * peak::OPS / 2;
        group.throughput(Throughput::Elements(ops));
        group.bench_function("vpdpbusd ymm, 1 thread", |b| {
            // SAFETY: Isa of tier AvxVnni is chosen only on CPUs with AVX2 and AVX-VNNI.
            b.iter(|| unsafe { peak::run_ymm(iterations, black_box(0x0102_0304), black_box(-3)) })
        });
        group.finish();
        return;
    }
    eprintln!("vnni peak: this CPU (or JARVIS_PERF_ISA) has no VNNI; nothing to measure");
    let _ = c;
}

/// Criterion measurement: CPU time of the calling thread.
struct ThreadCpu;

static WALL: WallTime = WallTime;

fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write into; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time() - start
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

fn kernels(c: &mut Criterion) {
    // A MobileNetV2-sized pointwise convolution: 96 → 24 channels over 56×56 pixels.
    let (n, k4, pixels) = (24, 96 / 4, 56 * 56);
    let x: Vec<u32> = (0..k4 * pixels).map(|i| (i as u32).wrapping_mul(2654435761)).collect();
    let w: Vec<i8> = (0..n * k4 * 4).map(|i| (i as i32 * 37 % 255 - 127) as i8).collect();
    let packed = PlanarWeights::pack(&w, n, k4);
    let mut out = vec![0u8; n * pixels];
    let epilogues = vec![EPILOGUE; n];
    let mut group = c.benchmark_group("conv_planar 96x24x3136");
    for isa in Isa::supported() {
        group.bench_function(isa.name(), |b| {
            b.iter(|| {
                let x = planes(black_box(&x), k4, pixels);
                let out = planes_mut(&mut out, n, pixels);
                conv_planar(isa, x, &packed, 0..n, &epilogues, codes(), out)
            })
        });
    }
    group.finish();
}

fn digits_cnn(c: &mut Criterion) {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let options = LoadOptions { threads: Some(1), ..Default::default() };
    let calib: ndarray::ArrayD<f32> =
        ndarray_npy::read_npy(models.join("digits_calib.npy")).expect("calibration data");
    let calib = Tensor::from(calib);
    let x = calib.slice(0, 0, 8).expect("a batch of 8");
    let float = Runtime::load(&models.join("digits_cnn.onnx"), &options).expect("float model");
    let mut batches = (0..16).map(|i| calib.slice(0, i * 16, i * 16 + 16).map(|t| vec![t]));
    let int8 = Runtime::load_quantized(
        &models.join("digits_cnn.onnx"),
        &options,
        &QuantizeOptions::default(),
        &mut || {
            batches
                .next()
                .transpose()
                .map_err(|e| jarvis_performance::Error::Internal(e.to_string()))
        },
    )
    .expect("int8 model");
    let mut group = c.benchmark_group("digits_cnn batch 8, 1 thread");
    group.bench_function("tract float", |b| b.iter(|| float.run(vec![x.clone()]).expect("runs")));
    group.bench_function("jarvis int8", |b| b.iter(|| int8.run(vec![x.clone()]).expect("runs")));
    group.finish();
}

criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = vnni_peak, layers, update_kernels
}
criterion_group!(wall_time, kernels, digits_cnn);
criterion_main!(cpu_time, wall_time);
