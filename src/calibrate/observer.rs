//! Streaming range observers: exact min/max plus a fixed-size histogram of |x|, from which each
//! calibration method picks the range to quantize to.
//!
//! Memory is fixed per observed tensor (`BINS` counters), whatever the number of samples. When a
//! value exceeds the histogram's range, the range doubles (as often as needed) and pairs of bins
//! merge, so re-binning is exact.

use std::fmt;
use std::str::FromStr;

/// Histogram bins per observed tensor: 2048 × 8 bytes = 16 KiB.
pub const BINS: usize = 2048;

/// How an activation's quantization range is chosen from what calibration observed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// Clip |x| at this percentile (e.g. 99.99) of the observed magnitudes.
    Percentile(f64),
    /// The clipping threshold minimising the KL divergence between the float and the quantized
    /// distributions (TensorRT's entropy calibration).
    Entropy,
    /// The clipping threshold minimising the expected squared quantization error.
    Mse,
}

impl Method {
    /// The method used when none is given: chosen on the accuracy suite.
    pub const DEFAULT: Method = Method::Percentile(99.999);
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::MinMax => f.write_str("minmax"),
            Method::Percentile(p) => write!(f, "percentile({p})"),
            Method::Entropy => f.write_str("entropy"),
            Method::Mse => f.write_str("mse"),
        }
    }
}

impl FromStr for Method {
    type Err = String;

    /// `minmax`, `percentile` (99.999), `percentile:99.9`, `entropy`, `mse`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (name, arg) = text.split_once(':').map_or((text, None), |(n, a)| (n, Some(a)));
        match (name, arg) {
            ("minmax", None) => Ok(Method::MinMax),
            ("percentile", None) => Ok(Method::DEFAULT),
            ("percentile", Some(p)) => match p.parse::<f64>() {
                Ok(p) if p > 50.0 && p <= 100.0 => Ok(Method::Percentile(p)),
                _ => Err(format!("percentile {p:?} is not in (50, 100]")),
            },
            ("entropy", None) => Ok(Method::Entropy),
            ("mse", None) => Ok(Method::Mse),
            _ => Err(format!(
                "unknown calibration method {text:?}: use minmax, percentile[:P], entropy or mse"
            )),
        }
    }
}

/// What has been seen of one tensor.
#[derive(Debug, Clone)]
pub struct Observer {
    min: f32,
    max: f32,
    /// Upper bound of the histogram of |x|; 0 until a non-zero value is seen.
    limit: f32,
    counts: Vec<u64>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer { min: f32::INFINITY, max: f32::NEG_INFINITY, limit: 0.0, counts: vec![0; BINS] }
    }
}

impl Observer {
    /// Adds a batch of values; NaN and infinities are ignored (they have no quantized code).
    pub fn observe(&mut self, values: &[f32]) {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (mut lo, mut hi, mut big) = (f32::INFINITY, f32::NEG_INFINITY, 0f32);
        for v in finite.clone() {
            lo = lo.min(v);
            hi = hi.max(v);
            big = big.max(v.abs());
        }
        if lo > hi {
            return;
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        self.grow_to(big);
        if self.limit == 0.0 {
            self.counts[0] += finite.count() as u64;
            return;
        }
        let per_bin = BINS as f32 / self.limit;
        for v in finite {
            let bin = ((v.abs() * per_bin) as usize).min(BINS - 1);
            self.counts[bin] += 1;
        }
    }

    fn grow_to(&mut self, magnitude: f32) {
        if magnitude <= self.limit {
            return;
        }
        if self.limit == 0.0 {
            // First non-zero value: everything seen so far was 0 and stays in bin 0.
            self.limit = magnitude;
            return;
        }
        while self.limit < magnitude {
            for i in 0..BINS / 2 {
                self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
            }
            self.counts[BINS / 2..].fill(0);
            self.limit *= 2.0;
        }
    }

    /// Whether anything finite was observed.
    pub fn is_empty(&self) -> bool {
        self.min > self.max
    }

    /// The range `method` picks: `(low, high)` with `low ≤ 0 ≤ high`, so 0.0 (and padding) is
    /// exactly representable.
    pub fn range(&self, method: Method) -> (f32, f32) {
        if self.is_empty() {
            return (0.0, 0.0);
        }
        let threshold = match method {
            Method::MinMax => f32::INFINITY,
            Method::Percentile(p) => self.percentile_threshold(p),
            Method::Entropy => self.entropy_threshold(),
            Method::Mse => self.mse_threshold(),
        };
        (self.min.max(-threshold).min(0.0), self.max.min(threshold).max(0.0))
    }

    fn bin_width(&self) -> f32 {
        self.limit / BINS as f32
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn percentile_threshold(&self, p: f64) -> f32 {
        let total = self.total();
        let wanted = (total as f64 * p / 100.0).ceil() as u64;
        let mut running = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            running += c;
            if running >= wanted {
                return (i + 1) as f32 * self.bin_width();
            }
        }
        self.limit
    }

    /// Levels available on the side(s) the data occupies: u8 gives 255 steps over the range.
    fn levels(&self) -> usize {
        if self.min >= 0.0 || self.max <= 0.0 {
            255
        } else {
            128
        }
    }

    fn entropy_threshold(&self) -> f32 {
        let levels = self.levels();
        let total = self.total() as f64;
        if total == 0.0 || self.limit == 0.0 {
            return self.limit;
        }
        let mut p_full: Vec<f64> = self.counts.iter().map(|&c| c as f64).collect();
        // The exact zeros after a ReLU (often most values) are represented exactly whatever
        // the threshold; left in, their spike dominates the divergence and hides clipping.
        p_full[0] = 0.0;
        let mut best = (f64::INFINITY, BINS);
        // Candidate thresholds: every 16th bin edge from `levels` bins up, as TensorRT does.
        // Starting lower lets KL prefer clipping a rare but large activation, which the
        // divergence barely sees and the network does (measured: EfficientNet-Lite0 collapsed).
        for edge in (levels..=BINS).step_by(16) {
            let mut p = p_full[..edge].to_vec();
            let outliers: f64 = p_full[edge..].iter().sum();
            p[edge - 1] += outliers;
            let q = quantized_distribution(&p_full[..edge], levels);
            let kl = kl_divergence(&p, &q);
            if kl < best.0 {
                best = (kl, edge);
            }
        }
        best.1 as f32 * self.bin_width()
    }

    fn mse_threshold(&self) -> f32 {
        let width = self.bin_width();
        let levels = self.levels() as f32;
        let mut best = (f64::INFINITY, self.limit);
        for edge in (16..=BINS).step_by(16) {
            let threshold = edge as f32 * width;
            let step = threshold / levels;
            let mut error = 0f64;
            for (i, &c) in self.counts.iter().enumerate() {
                if c == 0 {
                    continue;
                }
                let centre = (i as f32 + 0.5) * width;
                let e = if centre > threshold {
                    (centre - threshold) as f64 // clipped
                } else {
                    0.0
                };
                error += c as f64 * (e * e + (step * step) as f64 / 12.0);
            }
            if error < best.0 {
                best = (error, threshold);
            }
        }
        best.1
    }

    /// Approximate bytes held (the bound calibration memory obeys per observed tensor).
    pub fn bytes() -> usize {
        BINS * std::mem::size_of::<u64>() + std::mem::size_of::<Observer>()
    }
}

/// Merges `p` into `levels` quantization bins and expands back, spreading each bin's mass over
/// its non-empty source bins.
fn quantized_distribution(p: &[f64], levels: usize) -> Vec<f64> {
    let n = p.len();
    let mut q = vec![0.0; n];
    for level in 0..levels {
        let start = level * n / levels;
        let end = ((level + 1) * n / levels).max(start + 1).min(n);
        let mass: f64 = p[start..end].iter().sum();
        let nonzero = p[start..end].iter().filter(|&&v| v > 0.0).count();
        if nonzero == 0 {
            continue;
        }
        for i in start..end {
            if p[i] > 0.0 {
                q[i] = mass / nonzero as f64;
            }
        }
    }
    q
}

fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, b / sq);
            if b <= 0.0 {
                a * (a / 1e-12).ln()
            } else {
                a * (a / b).ln()
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minmax_is_exact_and_includes_zero() {
        let mut o = Observer::default();
        o.observe(&[0.5, 2.0, 1.0]);
        o.observe(&[3.5, f32::NAN, f32::INFINITY]);
        assert_eq!(o.range(Method::MinMax), (0.0, 3.5));
        let mut o = Observer::default();
        o.observe(&[-1.0, -3.0]);
        assert_eq!(o.range(Method::MinMax), (-3.0, 0.0));
    }

    #[test]
    fn regrowing_keeps_every_count() {
        let mut o = Observer::default();
        o.observe(&[0.001; 100]);
        o.observe(&[1000.0]);
        assert_eq!(o.total(), 101);
        assert!(o.limit >= 1000.0);
    }

    #[test]
    fn clipping_methods_cut_a_rare_outlier() {
        let mut o = Observer::default();
        let values: Vec<f32> = (0..100_000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
        o.observe(&values);
        o.observe(&[50.0]);
        assert_eq!(o.range(Method::MinMax).1, 50.0);
        let (low, high) = o.range(Method::Percentile(99.99));
        assert_eq!(low, 0.0);
        assert!(high > 0.9 && high < 5.0, "percentile: {high}");
        // Entropy keeps a lone outlier: moving its mass into an empty bin costs more divergence
        // than coarser steps do. It still returns a valid range holding the data.
        let (low, high) = o.range(Method::Entropy);
        assert_eq!(low, 0.0);
        assert!(high > 0.9, "entropy: {high}");
    }

    #[test]
    fn entropy_and_mse_clip_a_heavy_tail() {
        // Exponential samples: a long thin tail that is cheaper to clip than to resolve.
        let values: Vec<f32> = (1..100_000).map(|i| -((i as f32) / 100_000.0).ln()).collect();
        let mut o = Observer::default();
        o.observe(&values);
        let max = o.range(Method::MinMax).1;
        for method in [Method::Entropy, Method::Mse] {
            let high = o.range(method).1;
            assert!(high < 0.95 * max && high > 2.0, "{method} threshold {high} of max {max}");
        }
    }

    #[test]
    fn methods_parse() {
        assert_eq!("minmax".parse::<Method>(), Ok(Method::MinMax));
        assert_eq!("percentile:99.9".parse::<Method>(), Ok(Method::Percentile(99.9)));
        assert!("percentile:20".parse::<Method>().is_err());
        assert!("kl".parse::<Method>().is_err());
    }
}
