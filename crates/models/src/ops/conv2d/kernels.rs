//! Slice-level CPU kernels of the convolution custom op: forward, input gradient, weight gradient
//! and bias gradient of a dense (`groups == 1`) 2-D convolution on contiguous NCHW `f32` buffers.
//!
//! Every kernel is a sequence of large matrix products (the `gemm` crate, single-threaded inside a
//! task) over *tiles* of output rows, with the tiles of all images run in parallel by rayon. The
//! maths is in `docs/conv.md`; in short, with `K = C_in·K_h·K_w` and `col` the im2col matrix
//! (`K × pixels`) of one tile:
//!
//! * forward: `y[:, tile] = W (C_out×K) · col (K×T)` (+ bias, pre-filled so it is fused),
//! * weight gradient: `dW += dy[:, tile] (C_out×T) · colᵀ (T×K)`, one partial sum per chunk of
//!   tiles, the partial sums added in a fixed order,
//! * input gradient, stride 1: a forward convolution of `dy` with the flipped, transposed kernel
//!   (padding `d·(K−1) − p`), so it is as fast as the forward pass;
//! * input gradient, any stride: `dcol = Wᵀ (K×C_out) · dy[:, tile]`, then col2im scatters `dcol`
//!   into `dx`; even tiles and odd tiles run in two parallel phases so that no two running tasks
//!   write the same `dx` row.
//!
//! Before any of these, kernel rows/columns that only ever read padding are dropped
//! ([`LiveTaps`]), and the forward pass (so also the stride-1 input gradient) and the weight
//! gradient of 3×3 stride-1 layers with at least 64 channels go to [`super::winograd`].
//!
//! Every result is bitwise deterministic and independent of the number of rayon threads: no
//! atomics, no work-stealing reductions, and every cut of the work that fixes a summation order
//! (tiles, weight-gradient chunks) depends on the shape only (`MIN_TASKS`, `WEIGHT_GRAD_CHUNKS`).
//! `gemm` is always called single-threaded inside a task.

use super::geometry::{depth_blocks, ConvShape};
use crate::ops::buffers::zeroed;
use rayon::prelude::*;
use recallseg_kernels::SyncPtr;
use std::cell::RefCell;

/// Target size in bytes of one im2col tile (`K × T` floats): small enough to stay in L2 while gemm
/// packs it, large enough for gemm to run at full speed.
const TILE_BYTES: usize = 1 << 20;

/// Upper bound (bytes) on the memory held by the per-chunk partial weight gradients.
const PARTIALS_BYTES: usize = 64 << 20;

/// Fewest (image, tile) tasks a convolution is cut into: small maps get smaller tiles until there
/// are this many. A constant rather than a multiple of rayon's thread count, because the tiles
/// fix the summation order (the weight gradient sums its pixels tile by tile; the forward pass's
/// tile width is `gemm`'s `n`, which can pick its depth blocking; col2im adds overlapping tiles
/// in tile order): with a constant, every result is the same for any number of threads. Eight is
/// what four tasks per thread gave on the two-core machines this crate is tuned on.
const MIN_TASKS: usize = 8;

/// Partial weight gradients of the im2col path (chunks of consecutive tasks, each summed into its
/// own partial, the partials added in chunk order): a constant for the same reason, what two
/// chunks per thread gave on two cores.
const WEIGHT_GRAD_CHUNKS: usize = 4;

impl ConvShape {
    /// A 1×1 convolution with stride 1 and no padding: its im2col matrix is the input itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad_h == 0 && self.pad_w == 0
    }

    /// Output rows per tile for the forward pass and the weight gradient.
    fn rows_per_tile(&self) -> usize {
        let (oh, ow) = (self.oh(), self.ow());
        let per_row = if self.is_pointwise() {
            // No im2col buffer: size the tile by the gemm operand it reads instead.
            4 * self.c_in * ow
        } else {
            4 * self.k() * ow
        };
        let mut rows = (TILE_BYTES / per_row.max(1)).clamp(1, oh.max(1));
        // Enough tasks to keep the threads busy (and balance a noisy machine), chosen from the
        // shape alone: the tiles fix the summation order (see `MIN_TASKS`).
        while rows > 1 && self.n * oh.div_ceil(rows) < MIN_TASKS {
            rows = rows.div_ceil(2);
        }
        rows
    }

    /// Number of input elements of one image.
    fn in_plane(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Valid output-column range `[lo, hi)` for kernel column `j`: the output columns whose input
    /// column `o·s + j·d − p_w` lies inside the image.
    fn ow_range(&self, j: usize) -> (usize, usize, isize) {
        let ow = self.ow();
        let off = (j * self.dil) as isize - self.pad_w as isize;
        let s = self.stride as isize;
        let lo = if off >= 0 { 0 } else { ceil_div(-off, s) } as usize;
        let lim = self.w as isize - off;
        let hi = if lim <= 0 { 0 } else { ceil_div(lim, s) } as usize;
        let lo = lo.min(ow);
        (lo, hi.clamp(lo, ow), off)
    }
}

fn ceil_div(a: isize, b: isize) -> isize {
    (a + b - 1) / b
}

thread_local! {
    /// Per-thread scratch for im2col / col2im tiles, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a per-thread scratch buffer of `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        // Re-entered from a nested task on the same thread: use a private buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, single-threaded, strides in elements; the depth
/// summed in the machine-independent blocks of [`depth_blocks`].
///
/// # Safety
/// Every pointer must be valid for the given extents and strides, and `dst` must not alias the
/// operands or be written by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    for (i, (k0, kb)) in depth_blocks(k).enumerate() {
        // SAFETY: the caller upholds this function's `# Safety` contract; block `k0..k0 + kb`
        // lies inside the `k` columns of `lhs` and rows of `rhs`.
        unsafe {
            gemm::gemm(
                m,
                n,
                kb,
                dst,
                dst_cs as isize,
                dst_rs as isize,
                accumulate || i > 0,
                lhs.add(k0 * lhs_cs),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.add(k0 * rhs_rs),
                rhs_cs as isize,
                rhs_rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }
}

/// Writes the im2col matrix of output rows `r0..r1` of one image `x` (`C_in × H × W`) into `col`
/// (`K × T`, `T = (r1 − r0)·OW`, row `kk = (c·K_h + i)·K_w + j`, padding as zeros).
pub(crate) fn im2col_rows(s: &ConvShape, x: &[f32], r0: usize, r1: usize, col: &mut [f32]) {
    let ow = s.ow();
    let t_len = (r1 - r0) * ow;
    debug_assert_eq!(col.len(), s.k() * t_len);
    for c in 0..s.c_in {
        let xc = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for i in 0..s.kh {
            for j in 0..s.kw {
                let kk = (c * s.kh + i) * s.kw + j;
                let row = &mut col[kk * t_len..(kk + 1) * t_len];
                let (lo, hi, off) = s.ow_range(j);
                for r in r0..r1 {
                    let dst = &mut row[(r - r0) * ow..(r - r0 + 1) * ow];
                    let ih = (r * s.stride + i * s.dil) as isize - s.pad_h as isize;
                    if ih < 0 || ih >= s.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let xr = &xc[ih as usize * s.w..(ih as usize + 1) * s.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if lo == hi {
                        continue;
                    }
                    let start = (lo as isize * s.stride as isize + off) as usize;
                    if s.stride == 1 {
                        dst[lo..hi].copy_from_slice(&xr[start..start + (hi - lo)]);
                    } else {
                        let dst = &mut dst[lo..hi];
                        let last = start + (hi - lo - 1) * s.stride;
                        // Whole strides first (a pattern the compiler vectorises), then the last.
                        let whole = xr[start..last].chunks_exact(s.stride);
                        for (d, v) in dst.iter_mut().zip(whole) {
                            *d = v[0];
                        }
                        dst[hi - lo - 1] = xr[last];
                    }
                }
            }
        }
    }
}

/// Adds the im2col-shaped `dcol` (`K × T` for output rows `r0..r1` of one image) back into that
/// image's input gradient `dx` (`C_in × H × W`): the adjoint of [`im2col_rows`].
///
/// # Safety
/// `dx` must point to one image's `C_in·H·W` floats, and no other thread may touch the input rows
/// this tile reaches meanwhile.
unsafe fn col2im_rows(s: &ConvShape, dcol: &[f32], r0: usize, r1: usize, dx: SyncPtr) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let ow = s.ow();
        let t_len = (r1 - r0) * ow;
        for c in 0..s.c_in {
            for i in 0..s.kh {
                for j in 0..s.kw {
                    let kk = (c * s.kh + i) * s.kw + j;
                    let row = &dcol[kk * t_len..(kk + 1) * t_len];
                    let (lo, hi, off) = s.ow_range(j);
                    if lo == hi {
                        continue;
                    }
                    for r in r0..r1 {
                        let ih = (r * s.stride + i * s.dil) as isize - s.pad_h as isize;
                        if ih < 0 || ih >= s.h as isize {
                            continue;
                        }
                        let src = &row[(r - r0) * ow + lo..(r - r0) * ow + hi];
                        let start = (lo as isize * s.stride as isize + off) as usize;
                        let base = dx.add((c * s.h + ih as usize) * s.w + start);
                        let n = hi - lo;
                        let dst = std::slice::from_raw_parts_mut(base, (n - 1) * s.stride + 1);
                        // Whole strides first (a pattern the compiler vectorises), then the last.
                        let (whole, last) = dst.split_at_mut((n - 1) * s.stride);
                        for (d, v) in whole.chunks_exact_mut(s.stride).zip(src) {
                            d[0] += *v;
                        }
                        last[0] += src[n - 1];
                    }
                }
            }
        }
    }
}

/// The kernel taps of a convolution that can ever touch the image: with a large dilation on a small
/// map (ASPP rates 12–36), whole kernel rows or columns only ever read padding. Dropping them (and
/// the padding they stood for) gives a smaller convolution with the same output and, for the
/// kept taps, the same gradients; the dropped taps' weight gradients are exactly zero.
struct LiveTaps {
    /// The convolution restricted to the live taps.
    shape: ConvShape,
    /// First live kernel row and column.
    i_lo: usize,
    j_lo: usize,
}

impl LiveTaps {
    /// `Some` when some kernel rows or columns are dead and dropping them keeps the output size
    /// (symmetric cases, which are the ones that occur).
    fn of(s: &ConvShape) -> Option<Self> {
        // Tap i reads input rows i·d − p + r·s for r in 0..out: live if that range meets 0..len.
        let live = |k: usize, pad: usize, out: usize, len: usize| {
            let is_live = |i: usize| {
                let first = (i * s.dil) as isize - pad as isize;
                let last = first + ((out - 1) * s.stride) as isize;
                last >= 0 && first < len as isize
            };
            let lo = (0..k).find(|&i| is_live(i))?;
            let hi = (0..k).rev().find(|&i| is_live(i))?;
            Some((lo, hi))
        };
        let (oh, ow) = (s.oh(), s.ow());
        let (i_lo, i_hi) = live(s.kh, s.pad_h, oh, s.h)?;
        let (j_lo, j_hi) = live(s.kw, s.pad_w, ow, s.w)?;
        if (i_lo, i_hi, j_lo, j_hi) == (0, s.kh - 1, 0, s.kw - 1) {
            return None;
        }
        let shape = ConvShape {
            kh: i_hi - i_lo + 1,
            kw: j_hi - j_lo + 1,
            pad_h: s.pad_h.checked_sub(i_lo * s.dil)?,
            pad_w: s.pad_w.checked_sub(j_lo * s.dil)?,
            ..*s
        };
        (shape.oh() == oh && shape.ow() == ow).then_some(Self { shape, i_lo, j_lo })
    }

    /// The live part of a full weight tensor.
    fn slice(&self, s: &ConvShape, weight: &[f32]) -> Vec<f32> {
        let r = &self.shape;
        let mut out = Vec::with_capacity(r.c_out * r.k());
        for oc in 0..s.c_out * s.c_in {
            for i in 0..r.kh {
                let row = (oc * s.kh + self.i_lo + i) * s.kw + self.j_lo;
                out.extend_from_slice(&weight[row..row + r.kw]);
            }
        }
        out
    }

    /// A full weight gradient from the live taps' gradient (zeros elsewhere).
    fn expand(&self, s: &ConvShape, dw: &[f32]) -> Vec<f32> {
        let r = &self.shape;
        let mut out = vec![0f32; s.c_out * s.k()];
        for oc in 0..s.c_out * s.c_in {
            for i in 0..r.kh {
                let row = (oc * s.kh + self.i_lo + i) * s.kw + self.j_lo;
                let src = (oc * r.kh + i) * r.kw;
                out[row..row + r.kw].copy_from_slice(&dw[src..src + r.kw]);
            }
        }
        out
    }
}

/// Forward pass: `x` (`N × C_in × H × W`), `weight` (`C_out × C_in × K_h × K_w`), optional `bias`
/// (`C_out`), all contiguous; returns `y` (`N × C_out × OH × OW`). Kernel taps that only read
/// padding are dropped first; then Winograd F(2×2, 3×3) where it applies (3×3, stride 1, many
/// channels, large images), im2col + gemm otherwise.
pub(crate) fn conv_forward(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    if let Some(live) = LiveTaps::of(s) {
        return conv_forward(&live.shape, x, &live.slice(s, weight), bias);
    }
    if super::winograd::applies(s) {
        super::winograd::conv_forward_winograd(s, x, weight, bias)
    } else {
        conv_forward_im2col(s, x, weight, bias)
    }
}

/// [`conv_forward`] by im2col tiles and gemm, for every shape.
pub(crate) fn conv_forward_im2col(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (oh, ow, k) = (s.oh(), s.ow(), s.k());
    let plane = oh * ow;
    let mut y = zeroed(s.n * s.c_out * plane);
    if y.is_empty() {
        return y;
    }
    let rows = s.rows_per_tile();
    let tiles = oh.div_ceil(rows);
    let yp = SyncPtr::new(y.as_mut_ptr());
    (0..s.n * tiles).into_par_iter().for_each(|task| {
        let (b, t) = (task / tiles, task % tiles);
        let (r0, r1) = (t * rows, ((t + 1) * rows).min(oh));
        let t_len = (r1 - r0) * ow;
        let xb = &x[b * s.in_plane()..(b + 1) * s.in_plane()];
        // SAFETY: this task alone writes rows r0..r1 of every channel of image b.
        unsafe {
            let dst = yp.add(b * s.c_out * plane + r0 * ow);
            if let Some(bias) = bias {
                for (co, &bv) in bias.iter().enumerate() {
                    std::slice::from_raw_parts_mut(dst.add(co * plane), t_len).fill(bv);
                }
            }
            let gemm_tile = |rhs: *const f32, rhs_rs: usize| {
                sgemm(
                    s.c_out,
                    t_len,
                    k,
                    dst,
                    plane,
                    1,
                    bias.is_some(),
                    weight.as_ptr(),
                    k,
                    1,
                    rhs,
                    rhs_rs,
                    1,
                )
            };
            if s.is_pointwise() {
                gemm_tile(xb.as_ptr().add(r0 * ow), s.h * s.w);
            } else {
                with_scratch(k * t_len, |col| {
                    im2col_rows(s, xb, r0, r1, col);
                    gemm_tile(col.as_ptr(), t_len);
                });
            }
        }
    });
    y
}

/// Weight gradient: `x` (`N × C_in × H × W`) and the output gradient `dy` (`N × C_out × OH × OW`),
/// both contiguous; returns `dW` (`C_out × C_in × K_h × K_w`). Kernel taps that only read padding
/// are dropped first; then Winograd F(2×2, 3×3) where it applies, im2col + gemm otherwise.
pub(crate) fn conv_weight_grad(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if let Some(live) = LiveTaps::of(s) {
        return live.expand(s, &conv_weight_grad(&live.shape, x, dy));
    }
    if super::winograd::applies(s) {
        return super::winograd::conv_weight_grad_winograd(s, x, dy);
    }
    conv_weight_grad_im2col(s, x, dy)
}

/// [`conv_weight_grad`] by im2col tiles and gemm, for every shape without dead taps.
pub(crate) fn conv_weight_grad_im2col(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (oh, ow, k) = (s.oh(), s.ow(), s.k());
    let plane = oh * ow;
    let wlen = s.c_out * k;
    if wlen == 0 || plane == 0 || s.n == 0 {
        return vec![0f32; wlen];
    }
    let rows = s.rows_per_tile();
    let tiles = oh.div_ceil(rows);
    let tasks = s.n * tiles;
    // Fixed partition of the tasks into chunks (from the shape alone, not the thread count), each
    // summed into its own partial gradient; the partials are added in chunk order below.
    let max_chunks = (PARTIALS_BYTES / (4 * wlen)).max(1);
    let chunks = tasks.min(WEIGHT_GRAD_CHUNKS).min(max_chunks);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|ci| {
            let mut acc = vec![0f32; wlen];
            for task in ci * tasks / chunks..(ci + 1) * tasks / chunks {
                let (b, t) = (task / tiles, task % tiles);
                let (r0, r1) = (t * rows, ((t + 1) * rows).min(oh));
                let t_len = (r1 - r0) * ow;
                let xb = &x[b * s.in_plane()..(b + 1) * s.in_plane()];
                let lhs = dy[b * s.c_out * plane + r0 * ow..].as_ptr();
                // SAFETY: `acc` is private to this chunk; operands are in bounds by construction.
                unsafe {
                    if s.is_pointwise() {
                        let rhs = xb.as_ptr().add(r0 * ow);
                        sgemm(
                            s.c_out,
                            k,
                            t_len,
                            acc.as_mut_ptr(),
                            k,
                            1,
                            true,
                            lhs,
                            plane,
                            1,
                            rhs,
                            1,
                            s.h * s.w,
                        );
                    } else {
                        with_scratch(k * t_len, |col| {
                            im2col_rows(s, xb, r0, r1, col);
                            sgemm(
                                s.c_out,
                                k,
                                t_len,
                                acc.as_mut_ptr(),
                                k,
                                1,
                                true,
                                lhs,
                                plane,
                                1,
                                col.as_ptr(),
                                1,
                                t_len,
                            );
                        });
                    }
                }
            }
            acc
        })
        .collect();
    let mut it = partials.into_iter();
    let mut dw = it.next().unwrap_or_else(|| vec![0f32; wlen]);
    for p in it {
        for (a, b) in dw.iter_mut().zip(&p) {
            *a += *b;
        }
    }
    dw
}

/// ReLU on every element, in parallel (NaN stays NaN, as in PyTorch and candle).
pub(crate) fn relu_in_place(y: &mut [f32]) {
    y.par_chunks_mut(1 << 16).for_each(|chunk| {
        for v in chunk {
            if *v < 0.0 {
                *v = 0.0;
            }
        }
    });
}

/// Bias gradient: the sum of `dy` (`N × C_out × OH × OW`, contiguous) over batch and pixels.
pub(crate) fn conv_bias_grad(n: usize, c_out: usize, plane: usize, dy: &[f32]) -> Vec<f32> {
    (0..c_out)
        .into_par_iter()
        .map(|co| {
            let mut acc = 0f64;
            for b in 0..n {
                let start = (b * c_out + co) * plane;
                acc += dy[start..start + plane]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            acc as f32
        })
        .collect()
}

/// Whether [`conv_input_grad`] uses the transposed-convolution route (stride 1, padding no larger
/// than the dilated kernel's reach).
fn input_grad_as_conv(s: &ConvShape) -> bool {
    s.stride == 1 && s.pad_h <= s.dil * (s.kh - 1) && s.pad_w <= s.dil * (s.kw - 1)
}

/// Input gradient: the output gradient `dy` (`N × C_out × OH × OW`) and `weight`
/// (`C_out × C_in × K_h × K_w`), both contiguous; returns `dx` (`N × C_in × H × W`).
pub(crate) fn conv_input_grad(s: &ConvShape, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    if let Some(live) = LiveTaps::of(s) {
        return conv_input_grad(&live.shape, dy, &live.slice(s, weight));
    }
    if input_grad_as_conv(s) {
        input_grad_by_conv(s, dy, weight)
    } else {
        input_grad_by_col2im(s, dy, weight)
    }
}

/// Stride 1: `dx = conv(dy, W')` with `W'[ci, co, i, j] = W[co, ci, K_h−1−i, K_w−1−j]` and padding
/// `d·(K−1) − p`, which has exactly the input's size.
fn input_grad_by_conv(s: &ConvShape, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    let (kh, kw) = (s.kh, s.kw);
    let mut wt = vec![0f32; weight.len()];
    for co in 0..s.c_out {
        for ci in 0..s.c_in {
            for i in 0..kh {
                for j in 0..kw {
                    wt[((ci * s.c_out + co) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)] =
                        weight[((co * s.c_in + ci) * kh + i) * kw + j];
                }
            }
        }
    }
    let t = ConvShape {
        n: s.n,
        c_in: s.c_out,
        h: s.oh(),
        w: s.ow(),
        c_out: s.c_in,
        kh,
        kw,
        stride: 1,
        pad_h: s.dil * (kh - 1) - s.pad_h,
        pad_w: s.dil * (kw - 1) - s.pad_w,
        dil: s.dil,
    };
    debug_assert_eq!((t.oh(), t.ow()), (s.h, s.w));
    conv_forward(&t, dy, &wt, None)
}

/// Any stride: per tile of output rows, `dcol = Wᵀ · dy[:, tile]` then col2im into `dx`; even
/// tiles first, then odd tiles, each phase in parallel.
fn input_grad_by_col2im(s: &ConvShape, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    let (oh, ow, k) = (s.oh(), s.ow(), s.k());
    let plane = oh * ow;
    let mut dx = zeroed(s.n * s.in_plane());
    if dx.is_empty() || plane == 0 {
        return dx;
    }
    // Tiles t and t+2 must reach disjoint input rows: rows·s > (K_h − 1)·d − s.
    let reach = (s.dil * (s.kh - 1)).div_ceil(s.stride);
    let rows = s.rows_per_tile().max(reach).max(1);
    let tiles = oh.div_ceil(rows);
    let dxp = SyncPtr::new(dx.as_mut_ptr());
    for phase in 0..2 {
        let phase_tiles: Vec<usize> = (phase..tiles).step_by(2).collect();
        (0..s.n * phase_tiles.len())
            .into_par_iter()
            .for_each(|task| {
                let b = task / phase_tiles.len();
                let t = phase_tiles[task % phase_tiles.len()];
                let (r0, r1) = (t * rows, ((t + 1) * rows).min(oh));
                let t_len = (r1 - r0) * ow;
                let rhs = dy[b * s.c_out * plane + r0 * ow..].as_ptr();
                with_scratch(k * t_len, |dcol| {
                    // SAFETY: operands in bounds; within a phase, tiles of one image reach
                    // disjoint input rows and images are disjoint.
                    unsafe {
                        sgemm(
                            k,
                            t_len,
                            s.c_out,
                            dcol.as_mut_ptr(),
                            t_len,
                            1,
                            false,
                            weight.as_ptr(),
                            1,
                            k,
                            rhs,
                            plane,
                            1,
                        );
                        col2im_rows(s, dcol, r0, r1, SyncPtr::new(dxp.add(b * s.in_plane())));
                    }
                });
            });
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values::values;

    /// Direct-loop reference convolution (f64 accumulation).
    fn naive_forward(s: &ConvShape, x: &[f32], w: &[f32]) -> Vec<f32> {
        let (oh, ow) = (s.oh(), s.ow());
        let mut y = vec![0f32; s.n * s.c_out * oh * ow];
        for b in 0..s.n {
            for co in 0..s.c_out {
                for r in 0..oh {
                    for o in 0..ow {
                        let mut acc = 0f64;
                        for ci in 0..s.c_in {
                            for i in 0..s.kh {
                                for j in 0..s.kw {
                                    let ih = (r * s.stride + i * s.dil) as isize - s.pad_h as isize;
                                    let iw = (o * s.stride + j * s.dil) as isize - s.pad_w as isize;
                                    if ih < 0 || iw < 0 || ih >= s.h as isize || iw >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * s.c_in + ci) * s.h + ih as usize) * s.w
                                        + iw as usize];
                                    let wv = w[((co * s.c_in + ci) * s.kh + i) * s.kw + j];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((b * s.c_out + co) * oh + r) * ow + o] = acc as f32;
                    }
                }
            }
        }
        y
    }

    /// Forward, weight and input gradients on a rayon pool of `threads` threads, as bits.
    fn all_passes_on(threads: usize, s: &ConvShape) -> [Vec<u32>; 3] {
        let x = values(s.n * s.in_plane(), 11);
        let w = values(s.c_out * s.k(), 12);
        let dy = values(s.n * s.c_out * s.oh() * s.ow(), 13);
        let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            [
                bits(conv_forward(s, &x, &w, None)),
                bits(conv_weight_grad(s, &x, &dy)),
                bits(conv_input_grad(s, &dy, &w)),
            ]
        })
    }

    /// Every cut of the work that fixes a summation order depends on the shape only: im2col
    /// tiles and weight-gradient chunks, col2im's tile order, and Winograd's products (with
    /// `C_in > 512` and at most 64 tiles, a column split of the products, as earlier versions
    /// made on three or more threads, changes `gemm`'s depth blocking and so the bits).
    #[test]
    fn results_are_bitwise_the_same_for_one_to_four_threads() {
        let shape = |n, c_in, h, w, c_out, k, stride, pad| ConvShape {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k,
            kw: k,
            stride,
            pad_h: pad,
            pad_w: pad,
            dil: 1,
        };
        for s in [
            shape(2, 16, 20, 30, 24, 3, 1, 1), // im2col, several tiles and chunks
            shape(2, 8, 17, 23, 12, 3, 2, 1),  // strided: col2im input gradient
            shape(2, 32, 9, 11, 24, 1, 1, 0),  // pointwise
            shape(2, 64, 12, 14, 128, 3, 1, 1), // Winograd
            shape(1, 576, 16, 16, 128, 3, 1, 1), // Winograd, deep products on few tiles
        ] {
            let one = all_passes_on(1, &s);
            for threads in 2..=4 {
                assert!(
                    one == all_passes_on(threads, &s),
                    "{s:?}: {threads} threads"
                );
            }
        }
    }

    #[test]
    fn dead_taps_are_found_only_where_they_exist() {
        let s = |h: usize, w: usize, pad: usize, dil: usize| ConvShape {
            n: 1,
            c_in: 2,
            h,
            w,
            c_out: 3,
            kh: 3,
            kw: 3,
            stride: 1,
            pad_h: pad,
            pad_w: pad,
            dil,
        };
        // ASPP rate 12 on a 12×24 map: a 1×3 convolution without vertical padding.
        let live = LiveTaps::of(&s(12, 24, 12, 12)).expect("dead rows");
        assert_eq!(
            (
                live.shape.kh,
                live.shape.kw,
                live.shape.pad_h,
                live.shape.pad_w
            ),
            (1, 3, 0, 12)
        );
        assert_eq!((live.i_lo, live.j_lo), (1, 0));
        // Rate 6 on the same map: every tap touches the image somewhere.
        assert!(LiveTaps::of(&s(12, 24, 6, 6)).is_none());
        assert!(LiveTaps::of(&s(8, 8, 1, 1)).is_none());
        // slice ∘ expand keeps exactly the live taps.
        let full = s(3, 20, 12, 12);
        let live = LiveTaps::of(&full).unwrap();
        let w = values(full.c_out * full.k(), 5);
        let back = live.expand(&full, &live.slice(&full, &w));
        for (idx, (a, b)) in w.iter().zip(&back).enumerate() {
            let i = (idx / 3) % 3;
            assert_eq!(*b, if i == 1 { *a } else { 0.0 });
        }
    }

    #[test]
    fn forward_matches_direct_loops_and_col2im_is_adjoint_of_im2col() {
        for &(kh, kw, stride, pad, dil, h, w) in &[
            (3, 3, 1, 1, 1, 7, 9),
            (3, 2, 2, 0, 1, 8, 5),
            (1, 1, 1, 0, 1, 4, 6),
            (1, 1, 2, 0, 1, 5, 5),
            (3, 3, 2, 3, 2, 9, 6),
            // Dead taps: only the middle kernel row (and all columns) ever touch the image.
            (3, 3, 1, 6, 6, 5, 14),
            (3, 3, 1, 12, 12, 3, 20),
        ] {
            let s = ConvShape {
                n: 2,
                c_in: 3,
                h,
                w,
                c_out: 4,
                kh,
                kw,
                stride,
                pad_h: pad,
                pad_w: pad,
                dil,
            };
            let x = values(s.n * s.in_plane(), 1);
            let wt = values(s.c_out * s.k(), 2);
            let y = conv_forward(&s, &x, &wt, None);
            let r = naive_forward(&s, &x, &wt);
            for (a, b) in y.iter().zip(&r) {
                assert!((a - b).abs() < 1e-4, "{s:?}: {a} vs {b}");
            }
            // <im2col(x), c> == <x, col2im(c)> on one image, all rows.
            let (oh, ow) = (s.oh(), s.ow());
            let mut col = vec![0f32; s.k() * oh * ow];
            im2col_rows(&s, &x[..s.in_plane()], 0, oh, &mut col);
            let c = values(col.len(), 3);
            let mut back = vec![0f32; s.in_plane()];
            // SAFETY: `back` holds one image's input plane and nothing else touches it.
            unsafe { col2im_rows(&s, &c, 0, oh, SyncPtr::new(back.as_mut_ptr())) };
            let lhs: f64 = col.iter().zip(&c).map(|(a, b)| *a as f64 * *b as f64).sum();
            let rhs: f64 = x[..s.in_plane()]
                .iter()
                .zip(&back)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * (1.0 + lhs.abs()),
                "{lhs} vs {rhs}"
            );
        }
    }
}
