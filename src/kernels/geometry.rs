//! The spatial shape of a 2-D convolution, shared by the convolution, depthwise and pooling
//! kernels.

/// The spatial shape of a 2-D convolution over one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before the first row and column.
    pub pad: [usize; 2],
    /// Output height and width.
    pub out: [usize; 2],
}

impl ConvGeometry {
    /// For output pixel `(oy, ox)`: each kernel tap (row-major index) whose input lies inside
    /// the plane, with that input's index — the naive window walk reference kernels test
    /// against.
    #[cfg(test)]
    pub(crate) fn window(&self, oy: usize, ox: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let [kh, kw] = self.kernel;
        (0..kh * kw).filter_map(move |tap| {
            let (ky, kx) = (tap / kw, tap % kw);
            let iy = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.pad[0])?;
            let ix = (ox * self.stride[1] + kx * self.dilation[1]).checked_sub(self.pad[1])?;
            (iy < self.height && ix < self.width).then_some((tap, iy * self.width + ix))
        })
    }
}
