//! Depthwise convolution (one filter per channel) on u8 NHWC activations: a direct loop, no
//! im2col, vectorised across channels.

use super::Isa;

/// Shape of a depthwise convolution over one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseGeometry {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before the first row / column.
    pub pad: [usize; 2],
    pub out_height: usize,
    pub out_width: usize,
}

/// `acc[p][c] = Σ_taps (x[iy][ix][c] - zero_point) · w[tap][c]` for every output pixel `p`;
/// taps falling in the padding contribute nothing (as if they held the zero point).
/// `x` is one image in HWC order; `w` holds `kernel[0] · kernel[1]` rows of `channels`.
pub fn depthwise_conv(
    isa: Isa,
    g: &DepthwiseGeometry,
    x: &[u8],
    zero_point: i32,
    w: &[i8],
    acc: &mut [i32],
) {
    let c = g.channels;
    assert!(x.len() >= g.height * g.width * c && w.len() >= g.kernel[0] * g.kernel[1] * c);
    assert!(acc.len() >= g.out_height * g.out_width * c);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx512Vnni is only chosen on CPUs with these features.
        Isa::Avx512Vnni => unsafe { depthwise_avx512(g, x, zero_point, w, acc) },
        _ => depthwise_body(g, x, zero_point, w, acc),
    }
}

/// The same loop compiled for AVX-512, so the channel loop vectorises 16 lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn depthwise_avx512(
    g: &DepthwiseGeometry,
    x: &[u8],
    zero_point: i32,
    w: &[i8],
    acc: &mut [i32],
) {
    depthwise_body(g, x, zero_point, w, acc)
}

#[inline(always)]
fn depthwise_body(g: &DepthwiseGeometry, x: &[u8], zero_point: i32, w: &[i8], acc: &mut [i32]) {
    let c = g.channels;
    for oy in 0..g.out_height {
        for ox in 0..g.out_width {
            let out = &mut acc[(oy * g.out_width + ox) * c..][..c];
            out.fill(0);
            for ky in 0..g.kernel[0] {
                let Some(iy) = (oy * g.stride[0] + ky * g.dilation[0]).checked_sub(g.pad[0]) else {
                    continue;
                };
                if iy >= g.height {
                    continue;
                }
                for kx in 0..g.kernel[1] {
                    let Some(ix) = (ox * g.stride[1] + kx * g.dilation[1]).checked_sub(g.pad[1])
                    else {
                        continue;
                    };
                    if ix >= g.width {
                        continue;
                    }
                    let pixel = &x[(iy * g.width + ix) * c..][..c];
                    let taps = &w[(ky * g.kernel[1] + kx) * c..][..c];
                    for ((o, &v), &t) in out.iter_mut().zip(pixel).zip(taps) {
                        *o += (i32::from(v) - zero_point) * i32::from(t);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_padded_convolution() {
        let g = DepthwiseGeometry {
            height: 5,
            width: 4,
            channels: 3,
            kernel: [3, 3],
            stride: [2, 1],
            dilation: [1, 2],
            pad: [1, 2],
            out_height: 3,
            out_width: 4,
        };
        let x: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let w: Vec<i8> = (0..9 * 3).map(|i| (i * 29 % 255 - 127) as i8).collect();
        let zp = 17;
        let mut acc = vec![0; 3 * 4 * 3];
        depthwise_conv(Isa::detect(), &g, &x, zp, &w, &mut acc);
        let mut scalar = vec![0; 3 * 4 * 3];
        depthwise_conv(Isa::Scalar, &g, &x, zp, &w, &mut scalar);
        assert_eq!(acc, scalar);
        for oy in 0..3i64 {
            for ox in 0..4i64 {
                for ch in 0..3usize {
                    let mut want = 0;
                    for ky in 0..3i64 {
                        for kx in 0..3i64 {
                            let (iy, ix) = (oy * 2 + ky - 1, ox + kx * 2 - 2);
                            if (0..5).contains(&iy) && (0..4).contains(&ix) {
                                let v = i32::from(x[((iy * 4 + ix) as usize) * 3 + ch]) - zp;
                                want += v * i32::from(w[((ky * 3 + kx) as usize) * 3 + ch]);
                            }
                        }
                    }
                    assert_eq!(acc[((oy * 4 + ox) as usize) * 3 + ch], want);
                }
            }
        }
    }
}
