//! Depthwise 2-D convolution on the CPU (`groups == C_in == C_out`, channel multiplier 1): candle
//! custom ops for the forward pass (`apply_op2`, or `apply_op3` with the bias fused), the input
//! gradient and the weight (and bias) gradient, each a direct algorithm on contiguous NCHW `f32`
//! buffers.
//!
//! Every `(image, channel)` plane is an independent single-channel convolution with its own
//! `K_h × K_w` kernel. For kernel tap `(i, j)` the output columns whose input column
//! `o·s + j·d − p` lies inside the image form one contiguous range `[lo, hi)`, computed once per
//! tap ([`TapRange`]); likewise the output rows. The inner loops are therefore branch-free
//! multiply-adds over a contiguous run of output pixels that read (stride 1) a contiguous run of
//! input pixels, or every `s`-th one; taps that only read padding (a large dilation on a small
//! map) cost nothing.
//!
//! * forward: per plane, parallel over planes; `y` starts at the bias, then for every output row
//!   and every live tap `y[r, lo..hi] += W[i, j] · x[r·s + i·d − p, …]`;
//! * input gradient: per plane, parallel over planes; the transpose of the forward pass,
//!   `dx[r·s + i·d − p, …] += W[i, j] · dy[r, lo..hi]` (a scatter inside the plane, so no two
//!   tasks write the same element), skipped when the input does not track gradients;
//! * weight (and bias) gradient: parallel over channels; each channel sums over its images in
//!   order. Each output row's dot product `Σ_o dy[r, o] · x[…]` is accumulated in eight `f32`
//!   lanes (so it vectorises), the lanes are added pairwise, and the per-row results are summed in
//!   `f64`; the bias gradient sums `dy` the same way, in blocks of [`SUM_BLOCK`] elements.
//!
//! The order of every sum is fixed by the shapes alone, so every result is bitwise reproducible,
//! whatever the number of threads. On x86-64 CPUs with AVX2 and FMA the same code is compiled a
//! second time for those features (wider vectors; no fused multiply-adds, so both versions give
//! identical bits).

use super::cpu::{expect_dims, Algo};
use super::Conv2dGeometry;
use crate::ops::buffers::zeroed;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use recallseg_kernels::storage::contiguous_f32;
use recallseg_kernels::{dispatch, simd::use_avx2};

/// Block length (elements) of the bias gradient's `f32` partial sums.
const SUM_BLOCK: usize = 256;

/// The depthwise convolution as a [`super::cpu::Algo`]: the glue of [`super::cpu`] around the
/// kernels of this module.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Depthwise;

/// Geometry of one depthwise convolution on contiguous NCHW buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DwShape {
    /// Batch size.
    pub n: usize,
    /// Channels (input = output = groups).
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding (all four sides).
    pub pad: usize,
    /// Dilation (both directions).
    pub dil: usize,
}

impl DwShape {
    /// Output height. The caller has checked that the dilated kernel fits the padded input.
    pub(super) fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.dil * (self.kh - 1) - 1) / self.stride + 1
    }

    /// Output width.
    pub(super) fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.dil * (self.kw - 1) - 1) / self.stride + 1
    }

    /// Valid output-row ranges, one per kernel row.
    fn row_ranges(&self) -> Vec<TapRange> {
        (0..self.kh)
            .map(|i| TapRange::new(self.h, self.oh(), self.pad, self.stride, i * self.dil))
            .collect()
    }

    /// Valid output-column ranges, one per kernel column.
    fn col_ranges(&self) -> Vec<TapRange> {
        (0..self.kw)
            .map(|j| TapRange::new(self.w, self.ow(), self.pad, self.stride, j * self.dil))
            .collect()
    }
}

/// For one kernel tap along one axis: the output positions `[lo, hi)` whose input position
/// `o·s + t·d − p` lies inside `0..len`, and the input position `start` of `lo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TapRange {
    lo: usize,
    hi: usize,
    start: usize,
}

impl TapRange {
    /// The range of tap offset `reach = t·d` on an axis of `len` inputs and `out` outputs.
    fn new(len: usize, out: usize, pad: usize, stride: usize, reach: usize) -> Self {
        // Input position of output o: o·s + reach − pad, which must be ≥ 0 and < len.
        let lo = if reach >= pad {
            0
        } else {
            (pad - reach).div_ceil(stride)
        }
        .min(out);
        let limit = len + pad; // o·s + reach < len + pad
        let hi = if limit <= reach {
            0
        } else {
            (limit - reach).div_ceil(stride)
        }
        .clamp(lo, out);
        let start = if lo < hi {
            lo * stride + reach - pad
        } else {
            0
        };
        Self { lo, hi, start }
    }

    fn is_empty(&self) -> bool {
        self.lo >= self.hi
    }

    fn contains(&self, o: usize) -> bool {
        (self.lo..self.hi).contains(&o)
    }
}

/// `y[k] += a · x[k·s]` for every `k` of `y`.
#[inline(always)]
fn axpy_gather(a: f32, x: &[f32], stride: usize, y: &mut [f32]) {
    if stride == 1 {
        let x = &x[..y.len()];
        for (yv, &xv) in y.iter_mut().zip(x) {
            *yv += a * xv;
        }
    } else {
        for (yv, &xv) in y.iter_mut().zip(x.iter().step_by(stride)) {
            *yv += a * xv;
        }
    }
}

/// `y[k·s] += a · x[k]` for every `k` of `x`.
#[inline(always)]
fn axpy_scatter(a: f32, x: &[f32], stride: usize, y: &mut [f32]) {
    if stride == 1 {
        for (yv, &xv) in y[..x.len()].iter_mut().zip(x) {
            *yv += a * xv;
        }
    } else {
        for (yv, &xv) in y.iter_mut().step_by(stride).zip(x) {
            *yv += a * xv;
        }
    }
}

/// Adds eight lanes pairwise.
#[inline(always)]
fn lane_sum(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// `Σ_k a[k] · b[k·s]` in eight `f32` lanes (element `k` goes to lane `k mod 8`), lanes added
/// pairwise.
#[inline(always)]
fn dot_gather(a: &[f32], b: &[f32], stride: usize) -> f32 {
    if a.is_empty() {
        return 0.0;
    }
    let mut lanes = [0f32; 8];
    let full = a.len() / 8 * 8;
    if stride == 1 {
        let b = &b[..a.len()];
        for (ca, cb) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += ca[l] * cb[l];
            }
        }
        for (l, (&u, &v)) in a[full..].iter().zip(&b[full..]).enumerate() {
            lanes[l] += u * v;
        }
    } else {
        let b = &b[..(a.len() - 1) * stride + 1];
        for (k, ca) in a[..full].chunks_exact(8).enumerate() {
            let cb = &b[k * 8 * stride..];
            for l in 0..8 {
                lanes[l] += ca[l] * cb[l * stride];
            }
        }
        for (l, &u) in a[full..].iter().enumerate() {
            lanes[l] += u * b[(full + l) * stride];
        }
    }
    lane_sum(lanes)
}

/// `Σ a` in eight `f32` lanes per [`SUM_BLOCK`] elements, the blocks summed in `f64`.
#[inline(always)]
fn sum_f64(a: &[f32]) -> f64 {
    let mut total = 0f64;
    for block in a.chunks(SUM_BLOCK) {
        let mut lanes = [0f32; 8];
        let full = block.len() / 8 * 8;
        for c in block[..full].chunks_exact(8) {
            for l in 0..8 {
                lanes[l] += c[l];
            }
        }
        for (l, &v) in block[full..].iter().enumerate() {
            lanes[l] += v;
        }
        total += lane_sum(lanes) as f64;
    }
    total
}

/// Precomputed per-tap ranges of one convolution.
struct Ranges {
    rows: Vec<TapRange>,
    cols: Vec<TapRange>,
}

impl Ranges {
    fn of(s: &DwShape) -> Self {
        Self {
            rows: s.row_ranges(),
            cols: s.col_ranges(),
        }
    }
}

/// Forward pass of one plane: `x` (`H × W`), kernel `k` (`K_h × K_w`), `y` (`OH × OW`).
#[inline(always)]
fn forward_plane(s: &DwShape, rg: &Ranges, x: &[f32], k: &[f32], bias: f32, y: &mut [f32]) {
    let (ow, st) = (s.ow(), s.stride);
    y.fill(bias);
    for (r, y_row) in y.chunks_exact_mut(ow).enumerate() {
        for (i, rr) in rg.rows.iter().enumerate() {
            if !rr.contains(r) {
                continue;
            }
            let ir = r * st + i * s.dil - s.pad;
            let x_row = &x[ir * s.w..(ir + 1) * s.w];
            for (cr, &kv) in rg.cols.iter().zip(&k[i * s.kw..(i + 1) * s.kw]) {
                if !cr.is_empty() {
                    axpy_gather(kv, &x_row[cr.start..], st, &mut y_row[cr.lo..cr.hi]);
                }
            }
        }
    }
}

/// Input gradient of one plane: `dy` (`OH × OW`), kernel `k`, `dx` (`H × W`, zeroed here).
#[inline(always)]
fn input_grad_plane(s: &DwShape, rg: &Ranges, dy: &[f32], k: &[f32], dx: &mut [f32]) {
    let (ow, st) = (s.ow(), s.stride);
    dx.fill(0.0);
    for (r, dy_row) in dy.chunks_exact(ow).enumerate() {
        for (i, rr) in rg.rows.iter().enumerate() {
            if !rr.contains(r) {
                continue;
            }
            let ir = r * st + i * s.dil - s.pad;
            let dx_row = &mut dx[ir * s.w..(ir + 1) * s.w];
            for (cr, &kv) in rg.cols.iter().zip(&k[i * s.kw..(i + 1) * s.kw]) {
                if !cr.is_empty() {
                    axpy_scatter(kv, &dy_row[cr.lo..cr.hi], st, &mut dx_row[cr.start..]);
                }
            }
        }
    }
}

/// Adds the weight-gradient contributions of one plane to `acc` (`K_h·K_w` taps, then the bias
/// when `acc` has one more element).
#[inline(always)]
fn weight_grad_plane(s: &DwShape, rg: &Ranges, x: &[f32], dy: &[f32], acc: &mut [f64]) {
    let (ow, st, taps) = (s.ow(), s.stride, s.kh * s.kw);
    for (r, dy_row) in dy.chunks_exact(ow).enumerate() {
        for (i, rr) in rg.rows.iter().enumerate() {
            if !rr.contains(r) {
                continue;
            }
            let ir = r * st + i * s.dil - s.pad;
            let x_row = &x[ir * s.w..(ir + 1) * s.w];
            for (cr, a) in rg.cols.iter().zip(&mut acc[i * s.kw..(i + 1) * s.kw]) {
                if !cr.is_empty() {
                    *a += dot_gather(&dy_row[cr.lo..cr.hi], &x_row[cr.start..], st) as f64;
                }
            }
        }
    }
    if let Some(b) = acc.get_mut(taps) {
        *b += sum_f64(dy);
    }
}

dispatch!(forward_plane_dispatch, forward_plane,
    (s: &DwShape, rg: &Ranges, x: &[f32], k: &[f32], bias: f32, y: &mut [f32]));
dispatch!(input_grad_plane_dispatch, input_grad_plane,
    (s: &DwShape, rg: &Ranges, dy: &[f32], k: &[f32], dx: &mut [f32]));
dispatch!(weight_grad_plane_dispatch, weight_grad_plane,
    (s: &DwShape, rg: &Ranges, x: &[f32], dy: &[f32], acc: &mut [f64]));

/// Forward pass: `x` (`N × C × H × W`), `weight` (`C × 1 × K_h × K_w`), optional `bias` (`C`);
/// returns `y` (`N × C × OH × OW`). Parallel over the `N·C` planes.
pub(crate) fn dw_forward(s: &DwShape, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (plane_in, plane_out, taps) = (s.h * s.w, s.oh() * s.ow(), s.kh * s.kw);
    let (rg, avx2) = (Ranges::of(s), use_avx2());
    let mut y = zeroed(s.n * s.c * plane_out);
    y.par_chunks_mut(plane_out).enumerate().for_each(|(p, yp)| {
        let ch = p % s.c;
        let b = bias.map_or(0.0, |b| b[ch]);
        let (xp, k) = (
            &x[p * plane_in..(p + 1) * plane_in],
            &weight[ch * taps..(ch + 1) * taps],
        );
        forward_plane_dispatch(avx2, s, &rg, xp, k, b, yp);
    });
    y
}

/// Input gradient: `dy` (`N × C × OH × OW`) and `weight` (`C × 1 × K_h × K_w`); returns `dx`
/// (`N × C × H × W`). Parallel over the planes, each scattered into its own `dx` plane.
pub(crate) fn dw_input_grad(s: &DwShape, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    let (plane_in, plane_out, taps) = (s.h * s.w, s.oh() * s.ow(), s.kh * s.kw);
    let (rg, avx2) = (Ranges::of(s), use_avx2());
    let mut dx = zeroed(s.n * s.c * plane_in);
    dx.par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(p, dxp)| {
            let ch = p % s.c;
            let (dyp, k) = (
                &dy[p * plane_out..(p + 1) * plane_out],
                &weight[ch * taps..(ch + 1) * taps],
            );
            input_grad_plane_dispatch(avx2, s, &rg, dyp, k, dxp);
        });
    dx
}

/// Weight gradient (`C × K_h·K_w`, followed by the bias gradient `C` when `with_bias`) from `x`
/// and `dy`. Parallel over channels; each channel sums its images in order, in `f64`.
pub(crate) fn dw_weight_grad(s: &DwShape, x: &[f32], dy: &[f32], with_bias: bool) -> Vec<f32> {
    let (plane_in, plane_out, taps) = (s.h * s.w, s.oh() * s.ow(), s.kh * s.kw);
    let (rg, avx2) = (Ranges::of(s), use_avx2());
    let per_channel = taps + usize::from(with_bias);
    let sums: Vec<Vec<f64>> = (0..s.c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = vec![0f64; per_channel];
            for img in 0..s.n {
                let p = img * s.c + ch;
                let xp = &x[p * plane_in..(p + 1) * plane_in];
                let dyp = &dy[p * plane_out..(p + 1) * plane_out];
                weight_grad_plane_dispatch(avx2, s, &rg, xp, dyp, &mut acc);
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; s.c * (taps + usize::from(with_bias))];
    for (ch, acc) in sums.iter().enumerate() {
        for (t, &v) in acc[..taps].iter().enumerate() {
            out[ch * taps + t] = v as f32;
        }
        if with_bias {
            out[s.c * taps + ch] = acc[taps] as f32;
        }
    }
    out
}

impl Algo for Depthwise {
    type Shape = DwShape;
    const WHAT: &'static str = "recallseg depthwise conv2d";
    const NAMES: [&'static str; 3] = [
        "recallseg-depthwise-conv2d",
        "recallseg-depthwise-conv2d-bias",
        "recallseg-depthwise-conv2d-input-grad",
    ];

    fn shape(g: Conv2dGeometry, x: [usize; 4], w: [usize; 4]) -> DwShape {
        let ([n, c, h, wd], [_, _, kh, kw]) = (x, w);
        DwShape {
            n,
            c,
            h,
            w: wd,
            kh,
            kw,
            stride: g.stride,
            pad: g.padding,
            dil: g.dilation,
        }
    }

    fn x_dims(s: &DwShape) -> [usize; 4] {
        [s.n, s.c, s.h, s.w]
    }

    fn w_dims(s: &DwShape) -> [usize; 4] {
        [s.c, 1, s.kh, s.kw]
    }

    fn y_dims(s: &DwShape) -> [usize; 4] {
        [s.n, s.c, s.oh(), s.ow()]
    }

    fn forward(s: &DwShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        dw_forward(s, x, w, bias)
    }

    fn relu(y: &mut [f32]) {
        y.par_iter_mut().for_each(|v| *v = v.max(0.0));
    }

    fn input_grad(s: &DwShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
        dw_input_grad(s, dy, w)
    }

    fn param_grads(
        s: &DwShape,
        x: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let flat = x.apply_op2_no_bwd(dy, &DwWeightGrad { s: *s, with_bias })?;
        let (c, taps) = (s.c, s.kh * s.kw);
        let dw = flat
            .narrow(0, 0, c * taps)?
            .reshape(Self::w_dims(s).to_vec())?;
        let db = if with_bias {
            Some(flat.narrow(0, c * taps, c)?)
        } else {
            None
        };
        Ok((dw, db))
    }
}

/// `dW` (and `db`) from (`x`, `dy`), flattened: the `C·K_h·K_w` weight gradient, followed by
/// the `C` bias gradient when `with_bias`.
struct DwWeightGrad {
    s: DwShape,
    with_bias: bool,
}

impl CustomOp2 for DwWeightGrad {
    fn name(&self) -> &'static str {
        "recallseg-depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = &self.s;
        expect_dims::<Depthwise>("input", xl.dims(), Depthwise::x_dims(s))?;
        expect_dims::<Depthwise>("output gradient", dyl.dims(), Depthwise::y_dims(s))?;
        let x = contiguous_f32(xs, xl, "recallseg depthwise conv2d: input")?;
        let dy = contiguous_f32(dys, dyl, "recallseg depthwise conv2d: output gradient")?;
        let out = dw_weight_grad(s, x, dy, self.with_bias);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values::values;

    /// Input position of output `o` for tap `t`, if inside `0..len`.
    fn at(o: usize, t: usize, s: &DwShape, len: usize) -> Option<usize> {
        let p = (o * s.stride + t * s.dil) as isize - s.pad as isize;
        (0..len as isize).contains(&p).then_some(p as usize)
    }

    /// Direct loops in f64 over every (image, channel, output pixel, tap): `(y, dx, dw, db)` of
    /// `sum(conv(x, w, b)·r)`.
    type Reference = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    fn reference(s: &DwShape, x: &[f32], w: &[f32], b: &[f32], r: &[f32]) -> Reference {
        let (oh, ow, taps) = (s.oh(), s.ow(), s.kh * s.kw);
        let mut y = vec![0f64; s.n * s.c * oh * ow];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; w.len()];
        let mut db = vec![0f64; s.c];
        for n in 0..s.n {
            for c in 0..s.c {
                let p = n * s.c + c;
                for r0 in 0..oh {
                    for o in 0..ow {
                        let yi = (p * oh + r0) * ow + o;
                        y[yi] = b[c] as f64;
                        db[c] += r[yi] as f64;
                        for i in 0..s.kh {
                            for j in 0..s.kw {
                                if let (Some(ir), Some(ic)) = (at(r0, i, s, s.h), at(o, j, s, s.w))
                                {
                                    let xi = (p * s.h + ir) * s.w + ic;
                                    let wi = c * taps + i * s.kw + j;
                                    y[yi] += w[wi] as f64 * x[xi] as f64;
                                    dx[xi] += w[wi] as f64 * r[yi] as f64;
                                    dw[wi] += x[xi] as f64 * r[yi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw, db)
    }

    fn close(what: &str, s: &DwShape, got: &[f32], want: &[f64], terms: usize) {
        assert_eq!(got.len(), want.len(), "{what} length, {s:?}");
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        let tol = 3e-7 * scale * (terms as f64).sqrt().max(4.0);
        for (k, (&g, &v)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - v).abs() <= tol,
                "{what}[{k}] = {g}, expected {v}, {s:?}"
            );
        }
    }

    #[test]
    fn tap_ranges_are_exactly_the_in_bounds_outputs() {
        for len in 1..9 {
            for pad in 0..5 {
                for stride in 1..4 {
                    for reach in 0..12 {
                        if reach + 1 > len + 2 * pad {
                            continue;
                        }
                        let out = (len + 2 * pad - reach - 1) / stride + 1;
                        let t = TapRange::new(len, out, pad, stride, reach);
                        for o in 0..out {
                            let p = (o * stride + reach) as isize - pad as isize;
                            let inside = (0..len as isize).contains(&p);
                            assert_eq!(t.contains(o), inside, "{len} {pad} {stride} {reach} {o}");
                            if o == t.lo && inside {
                                assert_eq!(t.start as isize, p);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forward, input gradient, weight and bias gradients against direct f64 loops over many
    /// geometries: kernels 1×1 to 5×4, strides 1–3, paddings 0–4, dilations 1–3, sizes 1–9.
    #[test]
    fn kernels_match_direct_loops() {
        let mut seed = 1;
        for (kh, kw) in [(1, 1), (3, 3), (2, 3), (5, 4), (1, 3)] {
            for stride in 1..4 {
                for pad in [0, 1, 2, 4] {
                    for dil in 1..4 {
                        for (h, w) in [(1, 1), (5, 7), (9, 4)] {
                            let s = DwShape {
                                n: 2,
                                c: 3,
                                h,
                                w,
                                kh,
                                kw,
                                stride,
                                pad,
                                dil,
                            };
                            if dil * (kh - 1) + 1 > h + 2 * pad || dil * (kw - 1) + 1 > w + 2 * pad
                            {
                                continue;
                            }
                            seed += 4;
                            let x = values(s.n * s.c * h * w, seed);
                            let wt = values(s.c * kh * kw, seed + 1);
                            let b = values(s.c, seed + 2);
                            let r = values(s.n * s.c * s.oh() * s.ow(), seed + 3);
                            let (y, dx, dw, db) = reference(&s, &x, &wt, &b, &r);
                            let terms = s.n * s.oh() * s.ow();
                            close("y", &s, &dw_forward(&s, &x, &wt, Some(&b)), &y, kh * kw);
                            close("dx", &s, &dw_input_grad(&s, &r, &wt), &dx, kh * kw);
                            let g = dw_weight_grad(&s, &x, &r, true);
                            close("dw", &s, &g[..s.c * kh * kw], &dw, terms);
                            close("db", &s, &g[s.c * kh * kw..], &db, terms);
                            let g0 = dw_weight_grad(&s, &x, &r, false);
                            assert_eq!(g0, g[..s.c * kh * kw]);
                        }
                    }
                }
            }
        }
    }

    /// The eight-lane dot product and sum against f64 loops, over lengths around the lane count
    /// and strides 1–3.
    #[test]
    fn lane_reductions_match_f64() {
        for len in [1, 7, 8, 9, 17, 300, 1000] {
            let a = values(len, len as u64);
            for stride in 1..4 {
                let b = values((len - 1) * stride + 1, 7 + len as u64);
                let want: f64 = (0..len).map(|k| a[k] as f64 * b[k * stride] as f64).sum();
                let got = dot_gather(&a, &b, stride) as f64;
                assert!(
                    (got - want).abs() < 1e-6 * (len as f64).sqrt() * 4.0,
                    "{len} {stride}"
                );
            }
            let want: f64 = a.iter().map(|&v| v as f64).sum();
            assert!(
                (sum_f64(&a) - want).abs() < 1e-6 * (len as f64).sqrt() * 4.0,
                "{len}"
            );
        }
    }
}
