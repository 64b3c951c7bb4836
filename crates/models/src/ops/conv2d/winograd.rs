//! Winograd F(2×2, 3×3) forward convolution for 3×3, stride-1 kernels with many channels on large
//! images (the decoder and first-stage ResNet convolutions), used by [`super::kernels`] in place
//! of im2col + gemm: 16 matrix products of `C_out × C_in` by `C_in × tiles` replace one of
//! `C_out × 9·C_in` by `9·C_in × 4·tiles`, i.e. 2.25× fewer multiply-adds.
//!
//! With `g` a 3×3 kernel and `d` a 4×4 input tile, the 2×2 output tile is
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` (Lavin & Gray, 2016), with
//! `Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]]`, `G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]]`,
//! `Aᵀ = [[1,1,1,0],[0,1,−1,−1]]`; the sum over input channels of the element-wise products is a
//! matrix product for each of the 16 positions.
//!
//! Dilation `d` is handled by splitting the output into its `d × d` phases (output rows `≡ a mod
//! d`, columns `≡ b mod d`): each phase is an undilated 3×3 convolution on the input sub-grid of
//! rows `a − p + d·u` and columns `b − p + d·v`. Padding is read as zeros while gathering tiles.

use super::kernels::ConvShape;
use rayon::prelude::*;
use std::cell::RefCell;

/// Smallest channel count (input and output) for which the transforms pay off (measured: 64
/// channels break even at best, 128 gain 1.3×, 256 gain 1.4–1.5×).
const MIN_CHANNELS: usize = 128;
/// Smallest number of 2×2 tiles per image and phase for which the matrix products are efficient.
const MIN_TILES: usize = 256;
/// Target bytes of the per-task transformed input (16 × tiles × channels floats).
const BLOCK_BYTES: usize = 1 << 20;

/// Whether [`conv_forward_winograd`] handles this convolution (and is expected to be faster than
/// im2col + gemm).
pub(crate) fn applies(s: &ConvShape) -> bool {
    if s.kh != 3 || s.kw != 3 || s.stride != 1 || s.c_in < MIN_CHANNELS || s.c_out < MIN_CHANNELS {
        return false;
    }
    // Tiles of the smallest phase.
    let (oh, ow) = (s.oh(), s.ow());
    let (ph, pw) = (oh / s.dil, ow / s.dil);
    ph.div_ceil(2) * pw.div_ceil(2) >= MIN_TILES
}

/// `U[ξ][co][c]` = (G g Gᵀ)[ξ] for the kernel `g = W[co, c]`, `ξ = 4·α + β`.
#[allow(clippy::needless_range_loop)] // matrix maths reads best with indices
fn transform_weights(s: &ConvShape, weight: &[f32]) -> Vec<f32> {
    let (ci, co) = (s.c_in, s.c_out);
    let mut u = vec![0f32; 16 * ci * co];
    for o in 0..co {
        for c in 0..ci {
            let g = &weight[(o * ci + c) * 9..(o * ci + c + 1) * 9];
            let g = |i: usize, j: usize| g[i * 3 + j] as f64;
            // Gg (4×3).
            let mut t = [[0f64; 3]; 4];
            for j in 0..3 {
                t[0][j] = g(0, j);
                t[1][j] = 0.5 * (g(0, j) + g(1, j) + g(2, j));
                t[2][j] = 0.5 * (g(0, j) - g(1, j) + g(2, j));
                t[3][j] = g(2, j);
            }
            for (a, row) in t.iter().enumerate() {
                let v = [
                    row[0],
                    0.5 * (row[0] + row[1] + row[2]),
                    0.5 * (row[0] - row[1] + row[2]),
                    row[2],
                ];
                for (b, &vb) in v.iter().enumerate() {
                    u[((a * 4 + b) * co + o) * ci + c] = vb as f32;
                }
            }
        }
    }
    u
}

thread_local! {
    /// Per-thread transformed input and products of one block of tiles, reused across calls.
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One phase of one image: output rows `a + d·r'`, columns `b + d·c'`.
#[derive(Clone, Copy)]
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

/// A raw output pointer shared by tasks writing disjoint output pixels.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint pixels (different images, phases or tiles).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` must be in bounds and no other task may write element `i`.
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

/// Forward convolution by Winograd F(2×2, 3×3); same contract as
/// [`super::kernels::conv_forward`], for shapes where [`applies`] holds.
pub(crate) fn conv_forward_winograd(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (oh, ow, d) = (s.oh(), s.ow(), s.dil);
    let plane = oh * ow;
    let mut y = vec![0f32; s.n * s.c_out * plane];
    let u = transform_weights(s, weight);
    let mut phases = Vec::with_capacity(d * d);
    for a in 0..d.min(oh) {
        for b in 0..d.min(ow) {
            let (rows, cols) = ((oh - a).div_ceil(d), (ow - b).div_ceil(d));
            phases.push(Phase {
                a,
                b,
                rows,
                cols,
                tiles_y: rows.div_ceil(2),
                tiles_x: cols.div_ceil(2),
            });
        }
    }
    let block = (BLOCK_BYTES / (64 * s.c_in.max(s.c_out))).clamp(8, 256);
    // Tasks: (image, phase, block of tiles).
    let mut tasks = Vec::new();
    for img in 0..s.n {
        for (pi, ph) in phases.iter().enumerate() {
            let tiles = ph.tiles_y * ph.tiles_x;
            for t0 in (0..tiles).step_by(block) {
                tasks.push((img, pi, t0, (t0 + block).min(tiles)));
            }
        }
    }
    let xt = to_channels_last(s.c_in, s.h, s.w, x);
    let out = OutPtr(y.as_mut_ptr());
    tasks.par_iter().for_each(|&(img, pi, t0, t1)| {
        let ph = phases[pi];
        let nt = t1 - t0;
        BUFFERS.with(|cell| {
            // Re-entered on the same thread (not expected: nothing below yields to rayon): use
            // private buffers rather than panic.
            let mut private = (Vec::new(), Vec::new());
            let mut guard = cell.try_borrow_mut();
            let (v, m) = match guard.as_deref_mut() {
                Ok(buffers) => buffers,
                Err(_) => &mut private,
            };
            if v.len() < 16 * nt * s.c_in {
                v.resize(16 * nt * s.c_in, 0.0);
            }
            if m.len() < 16 * nt * s.c_out {
                m.resize(16 * nt * s.c_out, 0.0);
            }
            let xb = &xt[img * s.c_in * s.h * s.w..(img + 1) * s.c_in * s.h * s.w];
            input_transform(s, xb, ph, t0, t1, &mut v[..16 * nt * s.c_in]);
            for xi in 0..16 {
                // SAFETY: the slices cover exactly the extents passed; M is private to the task.
                unsafe {
                    // M[ξ] (tiles × C_out, tiles contiguous) = V[ξ] (tiles × C_in) · U[ξ]ᵀ.
                    gemm::gemm(
                        nt,
                        s.c_out,
                        s.c_in,
                        m[xi * nt * s.c_out..].as_mut_ptr(),
                        nt as isize,
                        1,
                        false,
                        v[xi * nt * s.c_in..].as_ptr(),
                        1,
                        s.c_in as isize,
                        u[xi * s.c_in * s.c_out..].as_ptr(),
                        s.c_in as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            output_transform(s, &m[..16 * nt * s.c_out], ph, t0, t1, img, bias, out);
        });
    });
    y
}

/// `V[ξ][t][c]` for tiles `t0..t1` of one phase of one image `xt` (channels last:
/// `H × W × C_in`); vectorised across channels.
fn input_transform(s: &ConvShape, xt: &[f32], ph: Phase, t0: usize, t1: usize, v: &mut [f32]) {
    let (d, ci) = (s.dil as isize, s.c_in);
    let nt = t1 - t0;
    let (h, w) = (s.h as isize, s.w as isize);
    let zeros = vec![0f32; ci];
    for t in t0..t1 {
        let (ty, tx) = (t / ph.tiles_x, t % ph.tiles_x);
        // Input rows / columns of the tile (actual coordinates, may fall in the padding).
        let row0 = ph.a as isize - s.pad_h as isize + d * (2 * ty) as isize;
        let col0 = ph.b as isize - s.pad_w as isize + d * (2 * tx) as isize;
        let pixel = |e: usize, f: usize| -> &[f32] {
            let (r, c) = (row0 + d * e as isize, col0 + d * f as isize);
            if r < 0 || r >= h || c < 0 || c >= w {
                &zeros
            } else {
                let at = (r as usize * s.w + c as usize) * ci;
                &xt[at..at + ci]
            }
        };
        let p: [[*const f32; 4]; 4] =
            std::array::from_fn(|e| std::array::from_fn(|f| pixel(e, f).as_ptr()));
        let base = (t - t0) * ci;
        let outs: [*mut f32; 16] =
            std::array::from_fn(|xi| v[xi * nt * ci + base..xi * nt * ci + base + ci].as_mut_ptr());
        let mut c = 0;
        // SAFETY: the 16 input pointers address `ci` floats each and the 16 outputs are disjoint
        // runs of `ci` floats inside `v`; chunks stay below `ci`.
        unsafe {
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

/// Channel lanes processed together by the transforms (one AVX2 register, two SSE ones).
const LANES: usize = 8;

/// `Bᵀ p B` for channels `c..c + L` of one tile.
///
/// # Safety
/// Every pointer must be valid for `c + L` floats, and the outputs must not overlap the inputs.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // matrix maths reads best with indices
unsafe fn input_chunk<const L: usize>(p: &[[*const f32; 4]; 4], outs: &[*mut f32; 16], c: usize) {
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

/// Writes `Aᵀ M A` (+ bias) of tiles `t0..t1` (`M[ξ][co][t]`, tiles contiguous) into the output
/// of image `img`, one output channel and one run of tiles along a tile row at a time.
#[allow(clippy::too_many_arguments)]
fn output_transform(
    s: &ConvShape,
    m: &[f32],
    ph: Phase,
    t0: usize,
    t1: usize,
    img: usize,
    bias: Option<&[f32]>,
    out: OutPtr,
) {
    let (oh, ow, d, co) = (s.oh(), s.ow(), s.dil, s.c_out);
    let nt = t1 - t0;
    let plane = oh * ow;
    let mut rows = [vec![0f32; 2 * nt], vec![0f32; 2 * nt]];
    for o in 0..co {
        let b = bias.map_or(0.0, |b| b[o]);
        let q: [&[f32]; 16] =
            std::array::from_fn(|xi| &m[(xi * co + o) * nt..(xi * co + o + 1) * nt]);
        // Aᵀ q A for every tile of the block, the two output columns of a tile side by side.
        {
            let [row0, row1] = &mut rows;
            for i in 0..nt {
                let r0: [f32; 4] = std::array::from_fn(|f| q[f][i] + q[4 + f][i] + q[8 + f][i]);
                let r1: [f32; 4] =
                    std::array::from_fn(|f| q[4 + f][i] - q[8 + f][i] - q[12 + f][i]);
                row0[2 * i] = r0[0] + r0[1] + r0[2] + b;
                row0[2 * i + 1] = r0[1] - r0[2] - r0[3] + b;
                row1[2 * i] = r1[0] + r1[1] + r1[2] + b;
                row1[2 * i + 1] = r1[1] - r1[2] - r1[3] + b;
            }
        }
        let dst = (img * co + o) * plane;
        let mut t = t0;
        while t < t1 {
            let (ty, tx) = (t / ph.tiles_x, t % ph.tiles_x);
            let end = t1.min((ty + 1) * ph.tiles_x);
            // Phase columns 2·tx .. 2·end_tx, clipped to the phase's width.
            let c_lo = 2 * tx;
            let c_hi = (2 * (tx + end - t)).min(ph.cols);
            for (e, vals) in rows.iter().enumerate() {
                let r = 2 * ty + e;
                if r >= ph.rows {
                    continue;
                }
                let src = &vals[2 * (t - t0)..2 * (t - t0) + (c_hi - c_lo)];
                let at = dst + (ph.a + d * r) * ow + ph.b + d * c_lo;
                // SAFETY: these output pixels are in bounds and belong to this block alone.
                unsafe {
                    if d == 1 {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), out.0.add(at), src.len());
                    } else {
                        for (k, &v) in src.iter().enumerate() {
                            out.write(at + d * k, v);
                        }
                    }
                }
            }
            t = end;
        }
    }
}

/// Channels-last copy (`N × H × W × C`) of a contiguous NCHW buffer.
fn to_channels_last(c: usize, h: usize, w: usize, x: &[f32]) -> Vec<f32> {
    let mut xt = vec![0f32; x.len()];
    xt.par_chunks_mut(w * c).enumerate().for_each(|(row, dst)| {
        let (img, r) = (row / h, row % h);
        for ch in 0..c {
            let src = &x[((img * c + ch) * h + r) * w..((img * c + ch) * h + r + 1) * w];
            for (col, &v) in src.iter().enumerate() {
                dst[col * c + ch] = v;
            }
        }
    });
    xt
}

#[cfg(test)]
mod tests {
    use super::super::kernels::conv_forward_im2col;
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let v = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(97));
                ((v >> 8) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_im2col_with_padding_dilation_odd_sizes_and_bias() {
        // (h, w, pad, dilation): odd sizes leave partial tiles; padding 0 to 3 and dilation 2 and
        // 3 exercise the border gathers and the phase split. Called directly, below the size
        // thresholds of `applies`.
        for &(h, w, pad, dil) in &[
            (9, 11, 1, 1),
            (10, 9, 0, 1),
            (13, 14, 2, 2),
            (12, 13, 3, 2),
            (11, 16, 3, 3),
        ] {
            let s = ConvShape {
                n: 2,
                c_in: 5,
                h,
                w,
                c_out: 11,
                kh: 3,
                kw: 3,
                stride: 1,
                pad_h: pad,
                pad_w: pad,
                dil,
            };
            let x = data(s.n * s.c_in * h * w, 1);
            let wt = data(s.c_out * s.k(), 2);
            let b = data(s.c_out, 3);
            let got = conv_forward_winograd(&s, &x, &wt, Some(&b));
            let want = conv_forward_im2col(&s, &x, &wt, Some(&b));
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{s:?}: max |difference| {worst}");
        }
    }

    #[test]
    fn applies_only_to_large_3x3_stride_1_convolutions() {
        let s = ConvShape {
            n: 1,
            c_in: 128,
            h: 32,
            w: 32,
            c_out: 128,
            kh: 3,
            kw: 3,
            stride: 1,
            pad_h: 1,
            pad_w: 1,
            dil: 1,
        };
        assert!(applies(&s));
        assert!(!applies(&ConvShape { stride: 2, ..s }));
        assert!(!applies(&ConvShape {
            kh: 1,
            kw: 1,
            pad_h: 0,
            pad_w: 0,
            ..s
        }));
        assert!(!applies(&ConvShape { c_in: 64, ..s }));
        assert!(!applies(&ConvShape { h: 16, w: 16, ..s }));
        // Dilation 2 splits the image into four phases of 16×16: too few tiles each.
        assert!(!applies(&ConvShape {
            dil: 2,
            pad_h: 2,
            pad_w: 2,
            ..s
        }));
    }
}
