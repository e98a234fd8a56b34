//! Detecting inputs that are 8-bit data in disguise. A normalised image holds, per channel,
//! `x = s_c · (p − m_c)` with `p` an integer pixel: at most 256 values a step `s_c` apart. One
//! per-tensor u8 scale cannot hit those values (the channels' steps and offsets differ), and
//! the rounding noise it adds at the first layer is the largest error of a whole MobileNet-style
//! model. Quantized with the channel's own step instead, the u8 codes are the pixels: lossless.

use std::collections::HashSet;

/// Distinct values a channel may hold and still be 8-bit data.
const LEVELS: usize = 256;
/// How far (in steps) a value may sit from the lattice: f32 rounding of a normalisation moves
/// values by ~1e-4 steps at most.
const TOLERANCE: f64 = 0.002;

/// Per-channel u8 quantization of an input found to lie on per-channel lattices.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelLattice {
    /// The step `s_c` of each channel: its quantization scale.
    pub scales: Vec<f32>,
    /// `z_c`, so `q = round(x / s_c) + z_c` is the channel's 0..=255 code.
    pub zero_points: Vec<u8>,
    /// `s_c·round(x / s_c) − x`, the same for every lattice value of the channel: what
    /// dequantized codes add to the input (bias correction removes it).
    pub shifts: Vec<f32>,
}

/// The distinct values of each channel (axis 1) of a tensor, while there are few enough.
#[derive(Debug, Clone, Default)]
pub struct LatticeObserver {
    channels: Vec<HashSet<u32>>,
    /// Set once a channel shows more values than 8-bit data can, or the shapes disagree.
    failed: bool,
}

impl LatticeObserver {
    /// Adds an `N × C × …` tensor.
    pub fn observe(&mut self, shape: &[usize], values: &[f32]) {
        if self.failed {
            return;
        }
        let (Some(&outer), Some(&channels)) = (shape.first(), shape.get(1)) else {
            self.failed = true;
            return;
        };
        let inner: usize = shape[2..].iter().product();
        if channels == 0 || inner == 0 || outer * channels * inner != values.len() {
            self.failed = true;
            return;
        }
        if self.channels.is_empty() {
            self.channels = vec![HashSet::new(); channels];
        } else if self.channels.len() != channels {
            self.failed = true;
            return;
        }
        for item in values.chunks_exact(channels * inner) {
            for (seen, plane) in self.channels.iter_mut().zip(item.chunks_exact(inner)) {
                for v in plane {
                    if !v.is_finite() {
                        self.failed = true;
                        return;
                    }
                    seen.insert(v.to_bits());
                }
                if seen.len() > LEVELS {
                    self.failed = true;
                    self.channels.clear();
                    return;
                }
            }
        }
    }

    /// The per-channel quantization, if every channel lies on a lattice of at most 256 levels.
    pub fn lattice(&self) -> Option<ChannelLattice> {
        if self.failed || self.channels.is_empty() {
            return None;
        }
        let mut lattice =
            ChannelLattice { scales: Vec::new(), zero_points: Vec::new(), shifts: Vec::new() };
        for seen in &self.channels {
            let mut values: Vec<f64> = seen.iter().map(|&b| f64::from(f32::from_bits(b))).collect();
            values.sort_by(f64::total_cmp);
            let (scale, zero_point, shift) = channel_lattice(&values)?;
            lattice.scales.push(scale);
            lattice.zero_points.push(zero_point);
            lattice.shifts.push(shift);
        }
        Some(lattice)
    }
}

/// `(step, zero point, shift)` of sorted distinct `values`, if they lie on one lattice of at
/// most 256 levels whose codes `round(x / step)` never sit near a rounding tie.
fn channel_lattice(values: &[f64]) -> Option<(f32, u8, f32)> {
    let (&low, &high) = (values.first()?, values.last()?);
    if values.len() < 2 {
        return None;
    }
    let smallest = values.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min);
    if smallest <= 0.0 || !smallest.is_finite() {
        return None;
    }
    let steps = ((high - low) / smallest).round();
    if steps > (LEVELS - 1) as f64 {
        return None;
    }
    // The span over its number of steps: more precise than any one difference.
    let step = (high - low) / steps;
    let on_lattice = values.iter().all(|v| {
        let k = (v - low) / step;
        (k - k.round()).abs() < TOLERANCE
    });
    // Every value must round the same way relative to the lattice, far from a tie.
    let phase = (low / step) - (low / step).floor();
    if !on_lattice || (phase - 0.5).abs() < 5.0 * TOLERANCE {
        return None;
    }
    let step32 = step as f32;
    let (first, last) = ((low / step).round(), (high / step).round());
    // Codes first..=last need zero points in [−first, 255 − last]. As a per-tensor range
    // widened to include 0: the calibrated minimum (or 0.0, if every value is positive) takes
    // code 0 — for an image whose calibration saw black, the codes are the pixels.
    let (min_zp, max_zp) = (-first, 255.0 - last);
    if min_zp > max_zp {
        return None;
    }
    let zero_point = min_zp.max(0.0).min(max_zp).clamp(0.0, 255.0) as u8;
    let shift = (f64::from(step32) * (low / f64::from(step32)).round() - low) as f32;
    Some((step32, zero_point, shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_pixels_are_found_exactly() {
        // Two channels of ImageNet-normalised pixels: every value 0..=255 in one, some in the
        // other.
        let (mean, std) = ([0.406f32, 0.456], [0.225f32, 0.224]);
        let pixels: Vec<u8> = (0..=255).collect();
        let mut values = Vec::new();
        for c in 0..2 {
            for &p in &pixels {
                let p = if c == 1 { p / 2 + 40 } else { p };
                values.push((f32::from(p) / 255.0 - mean[c]) / std[c]);
            }
        }
        let mut observer = LatticeObserver::default();
        observer.observe(&[1, 2, 256], &values);
        let lattice = observer.lattice().expect("a lattice");
        for c in 0..2 {
            for (i, &v) in values[c * 256..(c + 1) * 256].iter().enumerate() {
                let code =
                    crate::kernels::quantize_value(v, lattice.scales[c], lattice.zero_points[c]);
                let dequantized =
                    lattice.scales[c] * (f32::from(code) - f32::from(lattice.zero_points[c]));
                // Codes are the pixels up to one offset, and dequantize to value + shift.
                assert!(
                    (dequantized - v - lattice.shifts[c]).abs() < 1e-4,
                    "channel {c} value {i}"
                );
                if c == 0 {
                    assert_eq!(code, pixels[i], "full-range channel: codes are the pixels");
                }
            }
        }
    }

    #[test]
    fn continuous_data_is_not_a_lattice() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.7311).sin()).collect();
        let mut observer = LatticeObserver::default();
        observer.observe(&[1, 1, 1000], &values);
        assert!(observer.lattice().is_none());
        // Few values but not evenly spaced.
        let mut uneven = LatticeObserver::default();
        uneven.observe(&[1, 1, 4], &[0.0, 1.0, 2.5, 3.7]);
        assert!(uneven.lattice().is_none());
    }
}
