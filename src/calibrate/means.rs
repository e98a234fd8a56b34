//! Per-channel means of a layer's input over the calibration data, for bias correction: a
//! layer's quantized weights shift its output's mean by `Σ (Wq − W)·E[x]`, which these give.

/// Which elements of the observed tensor count as one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeanLayout {
    /// Axis 1 of an `N × C × …` tensor (convolutions): one mean per channel.
    Channels,
    /// Everything after the first `kept_axes` axes, flattened (linear layers): one mean per
    /// reduced element.
    Trailing { kept_axes: usize },
}

/// Running sums (f64, so long streams keep their precision) of one tensor's channels.
#[derive(Debug, Clone)]
pub struct ChannelMeans {
    layout: MeanLayout,
    sums: Vec<f64>,
    /// Values added to each channel's sum.
    count: u64,
}

impl ChannelMeans {
    pub fn new(layout: MeanLayout) -> Self {
        ChannelMeans { layout, sums: Vec::new(), count: 0 }
    }

    /// Adds a tensor of `shape` (row-major `values`); non-finite values count as 0. A tensor
    /// whose channel count differs from the first one seen resets nothing and is ignored.
    pub fn observe(&mut self, shape: &[usize], values: &[f32]) {
        let (outer, channels, inner) = match self.layout {
            MeanLayout::Channels if shape.len() >= 2 => {
                (shape[0], shape[1], shape[2..].iter().product::<usize>())
            }
            MeanLayout::Trailing { kept_axes } if shape.len() > kept_axes => {
                (shape[..kept_axes].iter().product(), shape[kept_axes..].iter().product(), 1)
            }
            _ => return,
        };
        if outer * channels * inner != values.len() || channels == 0 {
            return;
        }
        if self.sums.is_empty() {
            self.sums = vec![0.0; channels];
        } else if self.sums.len() != channels {
            return;
        }
        for item in values.chunks_exact(channels * inner) {
            for (sum, plane) in self.sums.iter_mut().zip(item.chunks_exact(inner.max(1))) {
                let finite = plane.iter().filter(|v| v.is_finite());
                *sum += finite.map(|&v| f64::from(v)).sum::<f64>();
            }
        }
        self.count += (outer * inner) as u64;
    }

    /// The mean of each channel (empty if nothing was seen).
    pub fn means(&self) -> Vec<f32> {
        if self.count == 0 {
            return Vec::new();
        }
        self.sums.iter().map(|s| (s / self.count as f64) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_and_trailing_means() {
        // 2 items × 2 channels × 3 pixels.
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut m = ChannelMeans::new(MeanLayout::Channels);
        m.observe(&[2, 2, 3], &values);
        assert_eq!(
            m.means(),
            vec![(0. + 1. + 2. + 6. + 7. + 8.) / 6.0, (3. + 4. + 5. + 9. + 10. + 11.) / 6.0]
        );
        let mut t = ChannelMeans::new(MeanLayout::Trailing { kept_axes: 1 });
        t.observe(&[2, 6], &values);
        assert_eq!(t.means(), vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        t.observe(&[1, 5], &values[..5]); // another width: ignored
        assert_eq!(t.means().len(), 6);
        assert!(ChannelMeans::new(MeanLayout::Channels).means().is_empty());
    }
}
