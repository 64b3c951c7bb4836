//! Winograd F(2×2, 3×3) for 3×3, stride-1 convolutions with many channels, used by
//! [`super::kernels`] in place of im2col + gemm for the forward pass (and so for the stride-1
//! input gradient, a forward convolution with the flipped kernel) and for the weight gradient:
//! 16 matrix products with `C_in·C_out·tiles` multiply-adds each replace one with
//! `9·C_in·C_out·4·tiles`, i.e. 2.25× fewer multiply-adds.
//!
//! With `g` a 3×3 kernel and `d` a 4×4 input tile, the 2×2 output tile is
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` (Lavin & Gray, 2016), with
//! `Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]]`, `G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]]`,
//! `Aᵀ = [[1,1,1,0],[0,1,−1,−1]]`; the sum over input channels of the element-wise products is a
//! matrix product for each of the 16 positions `ξ`: `M[ξ] (tiles × C_out) = V[ξ] (tiles × C_in) ·
//! U[ξ]ᵀ`. Its adjoint gives the weight gradient: with `dM = A dY Aᵀ` (4×4 from each 2×2 tile of
//! the output gradient), `dU[ξ] (C_out × C_in) = dM[ξ]ᵀ · V[ξ]` summed over tiles, and
//! `dW = Gᵀ dU G` for every `(co, ci)`.
//!
//! Dilation `d` is handled by splitting the output into its `d × d` phases (output rows `≡ a mod
//! d`, columns `≡ b mod d`): each phase is an undilated 3×3 convolution on the input sub-grid of
//! rows `a − p + d·u` and columns `b − p + d·v`. Padding is read as zeros while gathering tiles;
//! output pixels of partial tiles beyond the phase are dropped by the forward pass and read as zero
//! output gradient by the weight gradient.
//!
//! The tiles of all images and phases are numbered in one sequence and processed in blocks
//! (sized so the transformed operands stay within a few MiB), so small maps with many channels
//! (12×24 at 256–512 channels, dilated or not) give matrix products as large as big maps do. Each
//! block runs in three parallel steps: transforms of the tiles, the 16 products (parallel over
//! `ξ`, each product a single gemm over all the block's tiles), and the output transform
//! (parallel over output channels). No atomics; every sum has a fixed order
//! (the blocks' weight-gradient products are accumulated in block order; blocks and products are
//! cut by the shape alone), so results are bitwise reproducible and the same for any number of
//! threads. Only the element-wise transforms are split by the thread count ([`ranges`]): each of
//! their outputs is computed by one task with the same arithmetic, whatever the split.

use super::geometry::{depth_blocks, ConvShape};
use crate::ops::buffers::zeroed;
use rayon::prelude::*;
use recallseg_kernels::SyncPtr;
use std::cell::RefCell;

/// Smallest channel count (input and output) for which the transforms pay off (measured, process
/// CPU time on one and two threads, `examples/conv_layers.rs`: 48 and 64 channels gain
/// 1.1–1.6×, 32 channels lose in the forward pass; see `docs/conv.md`).
const MIN_CHANNELS: usize = 64;
/// Smallest number of 2×2 tiles over the whole batch and every dilation phase (measured: 36
/// tiles of 128 or 256 channels still gain 1.2×).
const MIN_TILES: usize = 32;
/// Target bytes of one block's transformed operands (`V` and `M`, 16 floats per tile and
/// channel).
const BLOCK_BYTES: usize = 4 << 20;
/// Smallest number of tiles per block (the inner dimension of the weight gradient's products,
/// the rows of the forward's): below it the products lose more than the cache gains.
const MIN_BLOCK_TILES: usize = 256;

/// Whether the Winograd kernels handle this convolution (and are expected to be faster than
/// im2col + gemm): a 3×3 stride-1 kernel, at least [`MIN_CHANNELS`] input and output channels,
/// at least [`MIN_TILES`] tiles in all, and tiles that do not overhang the output (or its
/// dilation phases) by more than half.
pub(crate) fn applies(s: &ConvShape) -> bool {
    if s.kh != 3 || s.kw != 3 || s.stride != 1 || s.c_in < MIN_CHANNELS || s.c_out < MIN_CHANNELS {
        return false;
    }
    let tiling = Tiling::new(s);
    tiling.total >= MIN_TILES && 4 * tiling.total * 2 <= 3 * s.n * s.oh() * s.ow()
}

/// Distance in floats between the 16 matrices (`ξ`) of a transformed operand of `n` floats each:
/// `n` rounded up to a cache line and moved off multiples of 1 KiB, so that the 16 streams that
/// the transforms read or write side by side do not all map to the same L1 cache sets (with 128
/// channels and a multiple of 8 tiles they otherwise sit exactly 4 KiB apart: 2× slower).
fn xi_stride(n: usize) -> usize {
    let n = n.next_multiple_of(16);
    if n % 256 == 0 {
        n + 16
    } else {
        n
    }
}

/// Channels transformed together by the weight transforms (a transposed copy of their taps stays
/// in L1 and the arithmetic runs across channels, vectorised).
const WCHUNK: usize = 64;

thread_local! {
    /// Buffers reused by the Winograd kernels on this thread: the transformed weights, the
    /// channels-last input and the per-block transformed operands are allocated (and zero-filled)
    /// once per size class instead of on every call. Their contents are stale; every user writes
    /// the elements it later reads.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Most buffers the per-thread pool keeps.
const SCRATCH_KEEP: usize = 8;

/// Largest buffer the pool keeps (floats; 64 MiB): bigger ones (channels-last copies of large
/// inputs) are freed after use, so the pool never holds more than 512 MiB per thread.
const SCRATCH_MAX_LEN: usize = 16 << 20;

/// A buffer of `len` floats from this thread's pool, with unspecified (stale or zero) contents;
/// it goes back to the pool when dropped.
struct Scratch(Vec<f32>);

impl Scratch {
    fn new(len: usize) -> Self {
        let mut v = SCRATCH.with(|pool| {
            let mut pool = pool.borrow_mut();
            // The smallest buffer that fits, else the largest one (grown below).
            let pick = (0..pool.len())
                .filter(|&i| pool[i].capacity() >= len)
                .min_by_key(|&i| pool[i].capacity())
                .or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
            pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
        });
        if v.len() < len {
            v.resize(len, 0.0);
        } else {
            v.truncate(len);
        }
        Self(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // `try_with`: nothing to keep once the thread is being torn down.
        let _ = SCRATCH.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < SCRATCH_KEEP && v.capacity() <= SCRATCH_MAX_LEN {
                pool.push(v);
            }
        });
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

/// `(G r)` for the three entries `r` of a kernel row or column, element-wise over channels:
/// `[r0, (r0 + r1 + r2)/2, (r0 − r1 + r2)/2, r2]`.
#[inline(always)]
fn g_times<const L: usize>(r: [&[f32; L]; 3]) -> [[f32; L]; 4] {
    let mut out = [[0f32; L]; 4];
    for l in 0..L {
        let (a, b, c) = (r[0][l], r[1][l], r[2][l]);
        let h = 0.5 * (a + c);
        out[0][l] = a;
        out[1][l] = h + 0.5 * b;
        out[2][l] = h - 0.5 * b;
        out[3][l] = c;
    }
    out
}

/// `(Gᵀ e)` for the four entries `e` of a transformed row or column, element-wise over channels:
/// `[e0 + (e1 + e2)/2, (e1 − e2)/2, (e1 + e2)/2 + e3]`, the adjoint of [`g_times`].
#[inline(always)]
fn gt_times<const L: usize>(e: [&[f32; L]; 4]) -> [[f32; L]; 3] {
    let mut out = [[0f32; L]; 3];
    for l in 0..L {
        let h = 0.5 * (e[1][l] + e[2][l]);
        out[0][l] = e[0][l] + h;
        out[1][l] = 0.5 * (e[1][l] - e[2][l]);
        out[2][l] = h + e[3][l];
    }
    out
}

/// `U[ξ][co][c]` = (G g Gᵀ)[ξ] for the kernel `g = W[co, c]`, `ξ = 4·α + β`; parallel over
/// output channels, vectorised over input channels.
#[allow(clippy::needless_range_loop)] // matrix maths reads best with indices
fn transform_weights(s: &ConvShape, weight: &[f32]) -> Scratch {
    let (ci, co) = (s.c_in, s.c_out);
    let us = xi_stride(ci * co);
    // Every U[ξ][o][c] is written below; the padding between the ξ matrices is never read.
    let mut u = Scratch::new(16 * us);
    let up = SyncPtr::new(u.as_mut_ptr());
    (0..co).into_par_iter().for_each(|o| {
        let mut taps = [[0f32; WCHUNK]; 9];
        for c0 in (0..ci).step_by(WCHUNK) {
            let len = WCHUNK.min(ci - c0);
            for (k, tap) in taps.iter_mut().enumerate() {
                for (l, t) in tap[..len].iter_mut().enumerate() {
                    *t = weight[(o * ci + c0 + l) * 9 + k];
                }
            }
            // G g (4×3): columns j of g → rows α.
            let cols: [[[f32; WCHUNK]; 4]; 3] =
                std::array::from_fn(|j| g_times([&taps[j], &taps[3 + j], &taps[6 + j]]));
            for a in 0..4 {
                // (G g) Gᵀ: row α of G g → positions (α, β).
                let row = g_times([&cols[0][a], &cols[1][a], &cols[2][a]]);
                for (b, vals) in row.iter().enumerate() {
                    // SAFETY: task `o` alone writes U[ξ][o][..].
                    unsafe {
                        let dst = up.add((a * 4 + b) * us + o * ci + c0);
                        std::ptr::copy_nonoverlapping(vals.as_ptr(), dst, len);
                    }
                }
            }
        }
    });
    u
}

/// `dW[co][c] = Gᵀ dU[·][co][c] G` (3×3 from 4×4), the adjoint of [`transform_weights`];
/// parallel over output channels, vectorised over input channels.
fn weight_grad_from_transformed(s: &ConvShape, du: &[f32]) -> Vec<f32> {
    let (ci, co) = (s.c_in, s.c_out);
    let us = xi_stride(ci * co);
    let mut dw = vec![0f32; co * ci * 9];
    dw.par_chunks_mut(ci * 9).enumerate().for_each(|(o, dwo)| {
        let mut e = [[0f32; WCHUNK]; 16];
        for c0 in (0..ci).step_by(WCHUNK) {
            let len = WCHUNK.min(ci - c0);
            for (xi, ex) in e.iter_mut().enumerate() {
                let at = xi * us + o * ci + c0;
                ex[..len].copy_from_slice(&du[at..at + len]);
            }
            // Gᵀ over β for each α (4×3), then over α for each column j (3×3).
            let rows: [[[f32; WCHUNK]; 3]; 4] = std::array::from_fn(|a| {
                gt_times([&e[4 * a], &e[4 * a + 1], &e[4 * a + 2], &e[4 * a + 3]])
            });
            for j in 0..3 {
                let col = gt_times([&rows[0][j], &rows[1][j], &rows[2][j], &rows[3][j]]);
                for (i, vals) in col.iter().enumerate() {
                    for (l, &v) in vals[..len].iter().enumerate() {
                        dwo[(c0 + l) * 9 + i * 3 + j] = v;
                    }
                }
            }
        }
    });
    dw
}

/// One dilation phase of the output: rows `a + d·r'`, columns `b + d·c'`.
#[derive(Clone, Copy, Debug)]
struct Phase {
    a: usize,
    b: usize,
    /// Output rows / columns of the phase.
    rows: usize,
    cols: usize,
    /// Tiles down / across.
    tiles_y: usize,
    tiles_x: usize,
}

/// Every 2×2 tile of every phase of every image, numbered image-major, then phase, then tile row
/// and column.
struct Tiling {
    phases: Vec<Phase>,
    /// First tile of each phase within an image (one more entry: tiles per image).
    starts: Vec<usize>,
    /// Tiles of one image.
    per_image: usize,
    /// Tiles of the batch.
    total: usize,
}

/// The tiles `t0..t1` of phase `pi` of image `img`, stored from position `at` of a block.
#[derive(Clone, Copy, Debug)]
struct Segment {
    img: usize,
    pi: usize,
    t0: usize,
    t1: usize,
    at: usize,
}

impl Tiling {
    fn new(s: &ConvShape) -> Self {
        let (oh, ow, d) = (s.oh(), s.ow(), s.dil);
        let mut phases = Vec::with_capacity(d * d);
        let mut starts = vec![0];
        for a in 0..d.min(oh) {
            for b in 0..d.min(ow) {
                let (rows, cols) = ((oh - a).div_ceil(d), (ow - b).div_ceil(d));
                let ph = Phase {
                    a,
                    b,
                    rows,
                    cols,
                    tiles_y: rows.div_ceil(2),
                    tiles_x: cols.div_ceil(2),
                };
                starts.push(starts[starts.len() - 1] + ph.tiles_y * ph.tiles_x);
                phases.push(ph);
            }
        }
        let per_image = starts[starts.len() - 1];
        Self {
            phases,
            starts,
            per_image,
            total: s.n * per_image,
        }
    }

    /// The segments covering tiles `g0..g1` of the batch, in order, positioned from 0.
    fn segments(&self, g0: usize, g1: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut g = g0;
        while g < g1 {
            let (img, rem) = (g / self.per_image, g % self.per_image);
            let pi = self.starts.partition_point(|&st| st <= rem) - 1;
            let end = g1.min(img * self.per_image + self.starts[pi + 1]);
            let t0 = rem - self.starts[pi];
            out.push(Segment {
                img,
                pi,
                t0,
                t1: t0 + end - g,
                at: g - g0,
            });
            g = end;
        }
        out
    }

    /// Tiles per block: the transformed operands (16 floats per tile and channel of `V` and `M`)
    /// within [`BLOCK_BYTES`] but at least [`MIN_BLOCK_TILES`], blocks of equal size.
    fn block(&self, s: &ConvShape) -> usize {
        let per_tile = 64 * (s.c_in + s.c_out);
        let max = (BLOCK_BYTES / per_tile).max(MIN_BLOCK_TILES);
        let blocks = self.total.div_ceil(max).max(1);
        self.total.div_ceil(blocks).max(1)
    }
}

/// Splits `0..len` into about `4 × threads` ranges of at least `min` elements. Only for the
/// element-wise transforms (input, output-gradient and output transforms), whose results do not
/// depend on the split; work whose summation order follows its cut must not use it.
fn ranges(len: usize, min: usize) -> Vec<(usize, usize)> {
    let parts = (4 * rayon::current_num_threads())
        .min(len.div_ceil(min.max(1)))
        .max(1);
    (0..parts)
        .map(|i| (i * len / parts, (i + 1) * len / parts))
        .filter(|(a, b)| a < b)
        .collect()
}

/// `V[ξ][t][c]` (`ξ` stride [`xi_stride`]`(nt·C_in)`) of every tile of a block, from the channels-last input
/// `xt` (`N × H × W × C_in`); parallel over tiles.
fn transform_inputs(
    s: &ConvShape,
    xt: &[f32],
    tiling: &Tiling,
    g0: usize,
    nt: usize,
    v: &mut [f32],
) {
    debug_assert!(v.len() >= 16 * xi_stride(nt * s.c_in));
    let vp = SyncPtr::new(v.as_mut_ptr());
    let img_len = s.c_in * s.h * s.w;
    ranges(nt, 8).into_par_iter().for_each(|(a, b)| {
        for seg in tiling.segments(g0 + a, g0 + b) {
            let xb = &xt[seg.img * img_len..(seg.img + 1) * img_len];
            // SAFETY: the segment's tiles are this task's alone; `at + a` is within the block.
            unsafe { input_transform(s, xb, tiling.phases[seg.pi], seg, a, nt, vp) };
        }
    });
}

/// `V[ξ][at + t − t0][c]` for the tiles `t0..t1` of one phase of one image `xt` (channels last:
/// `H × W × C_in`); vectorised across channels.
///
/// # Safety
/// `v` must hold `16 · nt · C_in` floats and no other task may write these tiles' entries.
unsafe fn input_transform(
    s: &ConvShape,
    xt: &[f32],
    ph: Phase,
    seg: Segment,
    base_at: usize,
    nt: usize,
    v: SyncPtr,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (d, ci) = (s.dil as isize, s.c_in);
        let (h, w) = (s.h as isize, s.w as isize);
        let zeros = vec![0f32; ci];
        for t in seg.t0..seg.t1 {
            let (ty, tx) = (t / ph.tiles_x, t % ph.tiles_x);
            // Input rows / columns of the tile (actual coordinates, may fall in the padding).
            let row0 = ph.a as isize - s.pad_h as isize + d * (2 * ty) as isize;
            let col0 = ph.b as isize - s.pad_w as isize + d * (2 * tx) as isize;
            let pixel = |e: usize, f: usize| -> *const f32 {
                let (r, c) = (row0 + d * e as isize, col0 + d * f as isize);
                if r < 0 || r >= h || c < 0 || c >= w {
                    zeros.as_ptr()
                } else {
                    xt[(r as usize * s.w + c as usize) * ci..].as_ptr()
                }
            };
            let p: [[*const f32; 4]; 4] =
                std::array::from_fn(|e| std::array::from_fn(|f| pixel(e, f)));
            let pos = base_at + seg.at + t - seg.t0;
            let vs = xi_stride(nt * ci);
            let outs: [*mut f32; 16] = std::array::from_fn(|xi| v.add(xi * vs + pos * ci));
            let mut c = 0;
            // The 16 input pointers address `ci` floats each and the 16 outputs are disjoint runs of
            // `ci` floats inside `v`; chunks stay below `ci`.
            while c + LANES <= ci {
                input_chunk::<LANES>(&p, &outs, c);
                c += LANES;
            }
            while c < ci {
                input_chunk::<1>(&p, &outs, c);
                c += 1;
            }
        }
    }
}

/// `dst[ξ] (rows × cols) = [dst +] lhs[ξ] (rows × k) · rhs[ξ] (k × cols)` for the 16 positions,
/// one single-threaded gemm each, in parallel. (Splitting the columns by the thread count, as an
/// earlier version did on more than two threads, let the thread count change the products'
/// bits: `gemm` picks its depth blocking from the operand sizes.) Operands are given by base
/// pointers, per-`ξ` strides and element strides.
struct Products {
    rows: usize,
    cols: usize,
    k: usize,
    /// (per-ξ stride, row stride, column stride) of each operand.
    dst: (usize, usize, usize),
    lhs: (usize, usize, usize),
    rhs: (usize, usize, usize),
    accumulate: bool,
}

impl Products {
    /// # Safety
    /// The operands must be valid for the extents and strides given, and `dst` must not alias
    /// them.
    unsafe fn run(&self, dst: SyncPtr, lhs: *const f32, rhs: *const f32) {
        let (lhs, rhs) = (SyncPtr::new(lhs as *mut f32), SyncPtr::new(rhs as *mut f32));
        (0..16).into_par_iter().for_each(|xi| {
            // Depth in the machine-independent blocks of `depth_blocks` (same bits on every
            // CPU).
            for (i, (k0, kb)) in depth_blocks(self.k).enumerate() {
                // SAFETY: the ξ tasks write disjoint parts of `dst`; bounds per the caller, and
                // block `k0..k0 + kb` lies inside the depth `k` of both operands.
                unsafe {
                    gemm::gemm(
                        self.rows,
                        self.cols,
                        kb,
                        dst.add(xi * self.dst.0),
                        self.dst.2 as isize,
                        self.dst.1 as isize,
                        self.accumulate || i > 0,
                        lhs.add(xi * self.lhs.0 + k0 * self.lhs.2),
                        self.lhs.2 as isize,
                        self.lhs.1 as isize,
                        rhs.add(xi * self.rhs.0 + k0 * self.rhs.1),
                        self.rhs.2 as isize,
                        self.rhs.1 as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
    }
}

/// Forward convolution by Winograd F(2×2, 3×3); same contract as
/// [`super::kernels::conv_forward`], for 3×3 stride-1 kernels (fastest where [`applies`] holds).
pub(crate) fn conv_forward_winograd(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (oh, ow) = (s.oh(), s.ow());
    let mut y = zeroed(s.n * s.c_out * oh * ow);
    let tiling = Tiling::new(s);
    if y.is_empty() || tiling.total == 0 {
        return y;
    }
    let u = transform_weights(s, weight);
    let xt = to_channels_last(s.c_in, s.h, s.w, x);
    let block = tiling.block(s);
    // V and M of each block are written (input transform, gemm) before they are read.
    let mut v = Scratch::new(16 * xi_stride(block * s.c_in));
    let mut m = Scratch::new(16 * xi_stride(block * s.c_out));
    let out = SyncPtr::new(y.as_mut_ptr());
    for g0 in (0..tiling.total).step_by(block) {
        let nt = block.min(tiling.total - g0);
        transform_inputs(s, &xt, &tiling, g0, nt, &mut v);
        // M[ξ] (C_out × tiles, tiles contiguous) = U[ξ] (C_out × C_in) · V[ξ]ᵀ, computed as its
        // transpose V[ξ] (tiles × C_in) · U[ξ]ᵀ with C_out split into chunks.
        let products = Products {
            rows: nt,
            cols: s.c_out,
            k: s.c_in,
            dst: (xi_stride(nt * s.c_out), 1, nt),
            lhs: (xi_stride(nt * s.c_in), s.c_in, 1),
            rhs: (xi_stride(s.c_in * s.c_out), 1, s.c_in),
            accumulate: false,
        };
        // SAFETY: V, U and M hold 16 × (nt·C_in, C_in·C_out, nt·C_out) floats.
        unsafe { products.run(SyncPtr::new(m.as_mut_ptr()), v.as_ptr(), u.as_ptr()) };
        let segs = tiling.segments(g0, g0 + nt);
        let m = &m[..16 * xi_stride(nt * s.c_out)];
        ranges(s.c_out, 4).into_par_iter().for_each(|(c0, c1)| {
            for seg in &segs {
                // SAFETY: this task alone writes output channels c0..c1.
                unsafe {
                    output_transform(s, m, nt, tiling.phases[seg.pi], *seg, c0..c1, bias, out)
                };
            }
        });
    }
    y
}

/// Weight gradient by Winograd F(2×2, 3×3): `x` (`N × C_in × H × W`) and the output gradient
/// `dy` (`N × C_out × OH × OW`); returns `dW` (`C_out × C_in × 3 × 3`). Same contract as
/// [`super::kernels::conv_weight_grad`] for 3×3 stride-1 kernels.
pub(crate) fn conv_weight_grad_winograd(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let tiling = Tiling::new(s);
    let (ci, co) = (s.c_in, s.c_out);
    if tiling.total == 0 || co * ci == 0 {
        return vec![0f32; co * ci * 9];
    }
    // dU is written by the first block's gemm (`accumulate: false`), then accumulated into.
    let mut du = Scratch::new(16 * xi_stride(co * ci));
    let xt = to_channels_last(ci, s.h, s.w, x);
    let block = tiling.block(s);
    let mut v = Scratch::new(16 * xi_stride(block * ci));
    let mut dm = Scratch::new(16 * xi_stride(block * co));
    for (bi, g0) in (0..tiling.total).step_by(block).enumerate() {
        let nt = block.min(tiling.total - g0);
        transform_inputs(s, &xt, &tiling, g0, nt, &mut v);
        let segs = tiling.segments(g0, g0 + nt);
        let dmp = SyncPtr::new(dm.as_mut_ptr());
        ranges(co, 4).into_par_iter().for_each(|(c0, c1)| {
            for seg in &segs {
                // SAFETY: this task alone writes output channels c0..c1 of dM.
                unsafe { grad_transform(s, dy, nt, tiling.phases[seg.pi], *seg, c0..c1, dmp) };
            }
        });
        // dU[ξ] (C_out × C_in) [+]= dM[ξ]ᵀ (C_out × tiles) · V[ξ] (tiles × C_in); blocks are
        // added in order.
        let products = Products {
            rows: co,
            cols: ci,
            k: nt,
            dst: (xi_stride(co * ci), ci, 1),
            lhs: (xi_stride(nt * co), nt, 1),
            rhs: (xi_stride(nt * ci), ci, 1),
            accumulate: bi > 0,
        };
        // SAFETY: dU, dM and V hold 16 × (C_out·C_in, nt·C_out, nt·C_in) floats.
        unsafe { products.run(SyncPtr::new(du.as_mut_ptr()), dm.as_ptr(), v.as_ptr()) };
    }
    weight_grad_from_transformed(s, &du)
}

/// `dM[ξ][o][at + t − t0] = (A dY Aᵀ)[ξ]` (`ξ` stride [`xi_stride`]`(C_out·nt)`) for the 2×2 output-gradient
/// tiles `t0..t1` of one phase of one image and output channels `chans`; pixels of partial tiles
/// outside the phase read as zero.
///
/// # Safety
/// `dm` must hold `16 · C_out · nt` floats and no other task may write these channels.
unsafe fn grad_transform(
    s: &ConvShape,
    dy: &[f32],
    nt: usize,
    ph: Phase,
    seg: Segment,
    chans: std::ops::Range<usize>,
    dm: SyncPtr,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (oh, ow, d, co) = (s.oh(), s.ow(), s.dil, s.c_out);
        let plane = oh * ow;
        for o in chans {
            let src = &dy[(seg.img * co + o) * plane..(seg.img * co + o + 1) * plane];
            let ms = xi_stride(nt * co);
            let row = |xi: usize| dm.add(xi * ms + o * nt + seg.at);
            let dst: [*mut f32; 16] = std::array::from_fn(row);
            for t in seg.t0..seg.t1 {
                let (ty, tx) = (t / ph.tiles_x, t % ph.tiles_x);
                let g = |e: usize, f: usize| {
                    let (r, c) = (2 * ty + e, 2 * tx + f);
                    if r < ph.rows && c < ph.cols {
                        src[(ph.a + d * r) * ow + ph.b + d * c]
                    } else {
                        0.0
                    }
                };
                let (g00, g01, g10, g11) = (g(0, 0), g(0, 1), g(1, 0), g(1, 1));
                // A g (4×2) with A = [1 0; 1 1; 1 −1; 0 −1], then (A g) Aᵀ (4×4).
                let rows = [
                    [g00, g01],
                    [g00 + g10, g01 + g11],
                    [g00 - g10, g01 - g11],
                    [-g10, -g11],
                ];
                let k = t - seg.t0;
                for (a, [p, q]) in rows.into_iter().enumerate() {
                    *dst[4 * a].add(k) = p;
                    *dst[4 * a + 1].add(k) = p + q;
                    *dst[4 * a + 2].add(k) = p - q;
                    *dst[4 * a + 3].add(k) = -q;
                }
            }
        }
    }
}

/// Channel lanes processed together by the transforms (one AVX2 register, two SSE ones).
const LANES: usize = 8;

/// `Bᵀ p B` for channels `c..c + L` of one tile.
///
/// # Safety
/// Every pointer must be valid for `c + L` floats, and the outputs must not overlap the inputs.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // matrix maths reads best with indices
unsafe fn input_chunk<const L: usize>(p: &[[*const f32; 4]; 4], outs: &[*mut f32; 16], c: usize) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let ld = |e: usize, f: usize| std::ptr::read_unaligned(p[e][f].add(c) as *const [f32; L]);
        // Bᵀ p: combine rows, one column f at a time.
        let mut q = [[[0f32; L]; 4]; 4]; // q[e][f]
        for f in 0..4 {
            let (p0, p1, p2, p3) = (ld(0, f), ld(1, f), ld(2, f), ld(3, f));
            for l in 0..L {
                q[0][f][l] = p0[l] - p2[l];
                q[1][f][l] = p1[l] + p2[l];
                q[2][f][l] = p2[l] - p1[l];
                q[3][f][l] = p1[l] - p3[l];
            }
        }
        // · B: combine columns.
        for (e, qe) in q.iter().enumerate() {
            let mut r = [[0f32; L]; 4];
            for l in 0..L {
                r[0][l] = qe[0][l] - qe[2][l];
                r[1][l] = qe[1][l] + qe[2][l];
                r[2][l] = qe[2][l] - qe[1][l];
                r[3][l] = qe[1][l] - qe[3][l];
            }
            for (f, rf) in r.iter().enumerate() {
                std::ptr::write_unaligned(outs[e * 4 + f].add(c) as *mut [f32; L], *rf);
            }
        }
    }
}

/// Writes `Aᵀ M A` (+ bias) of the tiles of one segment (`M[ξ][co][t]`, `ξ` stride [`xi_stride`]`(C_out·nt)`,
/// tiles contiguous) into output channels `chans` of image `seg.img`, one channel and one run of
/// tiles along a tile row at a time.
///
/// # Safety
/// `out` must hold the whole output and no other task may write these channels of this image.
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    s: &ConvShape,
    m: &[f32],
    nt: usize,
    ph: Phase,
    seg: Segment,
    chans: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: SyncPtr,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (oh, ow, d, co) = (s.oh(), s.ow(), s.dil, s.c_out);
        let len = seg.t1 - seg.t0;
        let plane = oh * ow;
        let mut rows = [vec![0f32; 2 * len], vec![0f32; 2 * len]];
        let ms = xi_stride(nt * co);
        for o in chans {
            let b = bias.map_or(0.0, |b| b[o]);
            let q: [&[f32]; 16] = std::array::from_fn(|xi| {
                let at = xi * ms + o * nt + seg.at;
                &m[at..at + len]
            });
            // Aᵀ q A for every tile of the segment, the two output columns of a tile side by side.
            {
                let [row0, row1] = &mut rows;
                for i in 0..len {
                    let r0: [f32; 4] = std::array::from_fn(|f| q[f][i] + q[4 + f][i] + q[8 + f][i]);
                    let r1: [f32; 4] =
                        std::array::from_fn(|f| q[4 + f][i] - q[8 + f][i] - q[12 + f][i]);
                    row0[2 * i] = r0[0] + r0[1] + r0[2] + b;
                    row0[2 * i + 1] = r0[1] - r0[2] - r0[3] + b;
                    row1[2 * i] = r1[0] + r1[1] + r1[2] + b;
                    row1[2 * i + 1] = r1[1] - r1[2] - r1[3] + b;
                }
            }
            let dst = (seg.img * co + o) * plane;
            let mut t = seg.t0;
            while t < seg.t1 {
                let (ty, tx) = (t / ph.tiles_x, t % ph.tiles_x);
                let end = seg.t1.min((ty + 1) * ph.tiles_x);
                // Phase columns 2·tx .. 2·end_tx, clipped to the phase's width.
                let c_lo = 2 * tx;
                let c_hi = (2 * (tx + end - t)).min(ph.cols);
                for (e, vals) in rows.iter().enumerate() {
                    let r = 2 * ty + e;
                    if r >= ph.rows {
                        continue;
                    }
                    let k = 2 * (t - seg.t0);
                    let src = &vals[k..k + (c_hi - c_lo)];
                    let at = dst + (ph.a + d * r) * ow + ph.b + d * c_lo;
                    // These output pixels are in bounds and belong to this task alone.
                    if d == 1 {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), out.add(at), src.len());
                    } else {
                        for (k, &v) in src.iter().enumerate() {
                            *out.add(at + d * k) = v;
                        }
                    }
                }
                t = end;
            }
        }
    }
}

/// Channels-last copy (`N × H × W × C`) of a contiguous NCHW buffer.
fn to_channels_last(c: usize, h: usize, w: usize, x: &[f32]) -> Scratch {
    /// Channels copied together: each output pixel's run of `CB` channels is one cache line.
    const CB: usize = 16;
    // Every element is written: each row `(img, r)` gets all `w · c` values.
    let mut xt = Scratch::new(x.len());
    xt.par_chunks_mut(w * c).enumerate().for_each(|(row, dst)| {
        let (img, r) = (row / h, row % h);
        let src = |ch: usize| &x[((img * c + ch) * h + r) * w..((img * c + ch) * h + r + 1) * w];
        for ch0 in (0..c).step_by(CB) {
            let cb = CB.min(c - ch0);
            let rows: [&[f32]; CB] = std::array::from_fn(|k| src(ch0 + k.min(cb - 1)));
            for (col, px) in dst.chunks_exact_mut(c).enumerate() {
                for (k, d) in px[ch0..ch0 + cb].iter_mut().enumerate() {
                    *d = rows[k][col];
                }
            }
        }
    });
    xt
}

#[cfg(test)]
mod tests {
    use super::super::kernels::{conv_forward_im2col, conv_weight_grad_im2col};
    use super::*;
    use crate::ops::test_values::values;

    /// Direct-loop weight gradient (f64 accumulation), independent of every kernel.
    fn naive_weight_grad(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (oh, ow) = (s.oh(), s.ow());
        let mut dw = vec![0f64; s.c_out * s.k()];
        for b in 0..s.n {
            for co in 0..s.c_out {
                for r in 0..oh {
                    for o in 0..ow {
                        let g = dy[((b * s.c_out + co) * oh + r) * ow + o] as f64;
                        for ci in 0..s.c_in {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let ih = (r + i * s.dil) as isize - s.pad_h as isize;
                                    let iw = (o + j * s.dil) as isize - s.pad_w as isize;
                                    if ih < 0 || iw < 0 || ih >= s.h as isize || iw >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((b * s.c_in + ci) * s.h + ih as usize) * s.w
                                        + iw as usize];
                                    dw[((co * s.c_in + ci) * 3 + i) * 3 + j] += g * xv as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        dw.into_iter().map(|v| v as f32).collect()
    }

    fn worst(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    /// (n, h, w, pad, dilation): odd sizes leave partial tiles; padding 0 to 3 and dilation 1 to
    /// 3 exercise the border gathers and the phase split (with phases of different sizes); pads
    /// of 3 at dilation 1 and 2 at dilation 1 leave kernel taps that read only padding on some
    /// rows; batch 1 and 2 put tiles of several images in one block.
    const SHAPES: [(usize, usize, usize, usize, usize); 9] = [
        (2, 9, 11, 1, 1),
        (1, 10, 9, 0, 1),
        (2, 13, 14, 2, 2),
        (2, 12, 13, 3, 2),
        (1, 11, 16, 3, 3),
        (2, 7, 5, 1, 3),
        (1, 5, 6, 3, 1),
        (2, 4, 9, 2, 1),
        (1, 3, 3, 0, 1),
    ];

    fn shape(
        n: usize,
        c_in: usize,
        c_out: usize,
        h: usize,
        w: usize,
        pad: usize,
        dil: usize,
    ) -> ConvShape {
        ConvShape {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad_h: pad,
            pad_w: pad,
            dil,
        }
    }

    /// The scratch pool hands out stale buffers: fill it with NaN and check that no kernel reads
    /// an element it did not write (a NaN would reach the output).
    #[test]
    fn stale_scratch_buffers_are_never_read() {
        for &(n, h, w, pad, dil) in &SHAPES {
            SCRATCH.with(|pool| {
                let mut pool = pool.borrow_mut();
                pool.clear();
                for len in [1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20] {
                    pool.push(vec![f32::NAN; len]);
                }
            });
            let s = shape(n, 6, 9, h, w, pad, dil);
            let x = values(s.n * s.c_in * h * w, 4);
            let wt = values(s.c_out * s.k(), 5);
            let y = conv_forward_winograd(&s, &x, &wt, None);
            let e = worst(&y, &conv_forward_im2col(&s, &x, &wt, None));
            assert!(e < 1e-5, "{s:?}: forward max |difference| {e}");
            let dy = values(y.len(), 6);
            let dw = conv_weight_grad_winograd(&s, &x, &dy);
            let e = worst(&dw, &naive_weight_grad(&s, &x, &dy));
            assert!(e < 1e-4, "{s:?}: weight gradient max |difference| {e}");
        }
    }

    #[test]
    fn forward_matches_im2col_with_padding_dilation_odd_sizes_and_bias() {
        // Called directly, below the size thresholds of `applies`.
        for &(n, h, w, pad, dil) in &SHAPES {
            let s = shape(n, 5, 11, h, w, pad, dil);
            let x = values(s.n * s.c_in * h * w, 1);
            let wt = values(s.c_out * s.k(), 2);
            let b = values(s.c_out, 3);
            let got = conv_forward_winograd(&s, &x, &wt, Some(&b));
            let want = conv_forward_im2col(&s, &x, &wt, Some(&b));
            let e = worst(&got, &want);
            assert!(e < 1e-5, "{s:?}: max |difference| {e}");
        }
    }

    #[test]
    fn weight_grad_matches_direct_loops_and_im2col() {
        for &(n, h, w, pad, dil) in &SHAPES {
            let s = shape(n, 6, 7, h, w, pad, dil);
            let x = values(s.n * s.c_in * h * w, 4);
            let dy = values(s.n * s.c_out * s.oh() * s.ow(), 5);
            let got = conv_weight_grad_winograd(&s, &x, &dy);
            let want = naive_weight_grad(&s, &x, &dy);
            let scale = 1.0 + want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let e = worst(&got, &want);
            assert!(
                e < 2e-6 * scale,
                "{s:?}: max |difference| {e} (scale {scale})"
            );
            let e = worst(&got, &conv_weight_grad_im2col(&s, &x, &dy));
            assert!(e < 2e-6 * scale, "{s:?} vs im2col: max |difference| {e}");
        }
    }

    #[test]
    fn several_blocks_of_tiles_give_the_same_results() {
        // 56 channels in and out: 4 MiB blocks hold 585 tiles; 2×(60×40) output pixels at
        // dilation 2 give 4 phases of 15×10 tiles per image, 1200 in all, i.e. three blocks of
        // 400 whose boundaries fall inside a phase of the first and of the second image.
        let s = shape(2, 56, 56, 60, 40, 2, 2);
        let tiling = Tiling::new(&s);
        assert_eq!(tiling.total, 1200);
        assert_eq!(tiling.block(&s), 400);
        let x = values(s.n * s.c_in * s.h * s.w, 6);
        let wt = values(s.c_out * s.k(), 7);
        let dy = values(s.n * s.c_out * s.oh() * s.ow(), 8);
        let want = conv_forward_im2col(&s, &x, &wt, None);
        let scale = 1.0 + want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = worst(&conv_forward_winograd(&s, &x, &wt, None), &want);
        assert!(e < 2e-6 * scale, "forward: {e} (scale {scale})");
        let want = conv_weight_grad_im2col(&s, &x, &dy);
        let scale = 1.0 + want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = worst(&conv_weight_grad_winograd(&s, &x, &dy), &want);
        assert!(e < 2e-6 * scale, "weight grad: {e} (scale {scale})");
    }

    #[test]
    fn segments_cover_the_block_in_order() {
        let s = shape(2, 1, 1, 9, 7, 2, 2);
        let t = Tiling::new(&s);
        // Phases of 5×4, 5×3, 4×4, 4×3 output pixels: 6, 6, 4, 4 tiles.
        assert_eq!(t.starts, vec![0, 6, 12, 16, 20]);
        let segs = t.segments(4, 27);
        let got: Vec<_> = segs
            .iter()
            .map(|g| (g.img, g.pi, g.t0, g.t1, g.at))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 4, 6, 0),
                (0, 1, 0, 6, 2),
                (0, 2, 0, 4, 8),
                (0, 3, 0, 4, 12),
                (1, 0, 0, 6, 16),
                (1, 1, 0, 1, 22),
            ]
        );
    }

    #[test]
    fn applies_to_3x3_stride_1_convolutions_with_enough_channels_and_tiles() {
        // layer3 of DeepLabV3+-ResNet-18 at batch 2 (12×24: 72 tiles per image).
        let s = shape(2, 256, 256, 12, 24, 1, 1);
        assert!(applies(&s));
        assert!(!applies(&ConvShape { stride: 2, ..s }));
        assert!(!applies(&ConvShape {
            kh: 1,
            kw: 1,
            pad_h: 0,
            pad_w: 0,
            ..s
        }));
        assert!(!applies(&ConvShape { c_in: 32, ..s }));
        assert!(!applies(&ConvShape { c_out: 32, ..s }));
        // 64 channels (layer1) qualify.
        assert!(applies(&shape(2, 64, 64, 48, 96, 1, 1)));
        // layer4 at output stride 16: dilation 2 on 12×24 gives 4 phases of 3×6 tiles per image,
        // counted over all phases and images; batch 1 as well.
        assert!(applies(&shape(2, 512, 512, 12, 24, 2, 2)));
        assert!(applies(&shape(1, 512, 512, 12, 24, 2, 2)));
        // The Winograd golden cases of tests/conv2d.rs (forward, and the input gradient as the
        // transposed convolution of the same geometry) take this path.
        assert!(applies(&shape(2, 64, 64, 9, 11, 2, 2)));
        assert!(applies(&shape(1, 64, 72, 10, 13, 1, 1)));
        assert!(applies(&shape(1, 72, 64, 10, 13, 1, 1)));
        // Too few tiles in all: a 6×6 map at batch 1 (9 tiles).
        assert!(!applies(&shape(1, 256, 256, 6, 6, 1, 1)));
        // Tiles overhanging the phases by more than half: dilation 5 on a 5×5 output leaves 25
        // one-pixel phases, each a whole 2×2 tile.
        assert!(!applies(&shape(8, 128, 128, 5, 5, 5, 5)));
    }
}
