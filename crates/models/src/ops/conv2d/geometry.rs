//! The geometry the convolution kernels share: [`ConvShape`] (one dense convolution on NCHW
//! buffers) and [`depth_blocks`] (how every product's depth is cut before it reaches `gemm`).

/// Geometry of one dense convolution on contiguous NCHW buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding above and below.
    pub pad_h: usize,
    /// Zero padding left and right.
    pub pad_w: usize,
    /// Dilation (both directions).
    pub dil: usize,
}

impl ConvShape {
    /// Output height. The caller has checked that the dilated kernel fits the padded input.
    pub(crate) fn oh(&self) -> usize {
        (self.h + 2 * self.pad_h - self.dil * (self.kh - 1) - 1) / self.stride + 1
    }

    /// Output width.
    pub(crate) fn ow(&self) -> usize {
        (self.w + 2 * self.pad_w - self.dil * (self.kw - 1) - 1) / self.stride + 1
    }

    /// Rows of the im2col matrix: `C_in · K_h · K_w`.
    pub(crate) fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
}

/// The depth blocks `(start, len)` every product over `k` is cut into before it reaches `gemm`:
/// `ceil(k / 512)` blocks of equal size (the last one shorter), summed one after another.
///
/// `gemm` sums its depth `k` in blocks whose size it derives from the CPU's L1 cache (at least
/// 512, balanced the same way), so the rounding of a long sum (a weight gradient sums over
/// every pixel of the batch) would depend on the machine: the same run gave other losses from
/// its second step on a CPU with a larger L1. Calls of depth at most 512 are never blocked
/// inside `gemm`, so with the blocks fixed here every machine sums in the same order and gets
/// the same bits (the order `gemm` itself uses where its block size is 512).
pub(crate) fn depth_blocks(k: usize) -> impl Iterator<Item = (usize, usize)> {
    const MAX_DEPTH: usize = 512;
    let blocks = k.div_ceil(MAX_DEPTH).max(1);
    let size = k.div_ceil(blocks).max(1);
    (0..blocks).map(move |b| {
        let start = (b * size).min(k);
        (start, size.min(k - start))
    })
}
