//! Differentiable bilinear resize of `(N, C, H, W)` tensors.
//!
//! candle 0.11's `upsample_bilinear2d` has no backward pass. Bilinear interpolation is separable
//! and linear in the input: every output pixel reads at most two input rows and two input
//! columns, with weights that depend only on the axis lengths. The taps of one axis follow
//! PyTorch's `F.interpolate(mode="bilinear")` conventions exactly ([`axis_taps`]):
//!
//! * `align_corners = false`: source coordinate `s = (d + 0.5) · in / out − 0.5`, clamped at 0;
//! * `align_corners = true`: `s = d · (in − 1) / (out − 1)` (0 when `out == 1`);
//!
//! then `i0 = ⌊s⌋`, `i1 = min(i0 + 1, in − 1)`, `λ = s − i0`, weights `1 − λ` and `λ` (summed into
//! one tap when `i0 == i1`). They are computed in f64 and rounded once to the working precision.
//!
//! Two implementations share these taps:
//!
//! * on the CPU in f32, a custom op ([`resize_bilinear`]'s fast path): per `(n, c)` plane (planes
//!   in parallel), a horizontal pass over the input rows that some output row reads, then a
//!   vertical pass blending two of those rows per output row. Its backward is the adjoint, another
//!   custom op: the output gradient is scattered to the (at most two) source rows, then to the
//!   (at most two) source columns, per plane, in a fixed order (deterministic, race-free);
//! * everywhere else ([`resize_bilinear_portable`]): two dense matrix products with the
//!   interpolation matrices, `out = A_h · x · A_wᵀ` (row `d` of `A_h` holds output row `d`'s taps),
//!   differentiable through candle's matmul backward on every device and dtype. The tests use it
//!   as the reference of the CPU op.

use crate::ops::buffers::zeroed;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use recallseg_kernels::storage::contiguous_f32;

/// The interpolation taps of one output position along one axis: the output value is
/// `w0 · in[i0] + w1 · in[i1]`. When both taps fall on the same input (`i0 == i1`, at the clamped
/// border) their weights are summed into `w0` and `w1` is 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AxisTap {
    /// First source index (`⌊s⌋`).
    pub i0: usize,
    /// Second source index (`min(i0 + 1, in − 1)`).
    pub i1: usize,
    /// Weight of `i0` (`1 − λ`, or 1 when `i0 == i1`).
    pub w0: f64,
    /// Weight of `i1` (`λ`, or 0 when `i0 == i1`).
    pub w1: f64,
}

/// The taps of every output position of an axis resized from `in_len` to `out_len`, in f64
/// (PyTorch's source-coordinate rule for `align_corners`; see the module documentation).
/// Empty when either length is 0.
pub(crate) fn axis_taps(in_len: usize, out_len: usize, align_corners: bool) -> Vec<AxisTap> {
    if in_len == 0 || out_len == 0 {
        return Vec::new();
    }
    (0..out_len)
        .map(|d| {
            let src = if align_corners {
                if out_len > 1 {
                    d as f64 * (in_len as f64 - 1.0) / (out_len as f64 - 1.0)
                } else {
                    0.0
                }
            } else {
                ((d as f64 + 0.5) * in_len as f64 / out_len as f64 - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            let lambda = src - i0 as f64;
            if i0 == i1 {
                AxisTap {
                    i0,
                    i1,
                    w0: (1.0 - lambda) + lambda,
                    w1: 0.0,
                }
            } else {
                AxisTap {
                    i0,
                    i1,
                    w0: 1.0 - lambda,
                    w1: lambda,
                }
            }
        })
        .collect()
}

/// The `(out_len × in_len)` interpolation weights for one axis, row-major, in f64: row `d` holds
/// the [`axis_taps`] of output position `d`, every other entry is 0.
pub(crate) fn interpolation_weights(
    in_len: usize,
    out_len: usize,
    align_corners: bool,
) -> Vec<f64> {
    let mut m = vec![0.0f64; out_len * in_len];
    for (d, t) in axis_taps(in_len, out_len, align_corners)
        .into_iter()
        .enumerate()
    {
        m[d * in_len + t.i0] += t.w0;
        m[d * in_len + t.i1] += t.w1;
    }
    m
}

fn weights_tensor(
    in_len: usize,
    out_len: usize,
    align_corners: bool,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let w = interpolation_weights(in_len, out_len, align_corners);
    Tensor::from_vec(w, (out_len, in_len), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// Checks the sizes; `Ok(true)` when the output size equals the input size (nothing to do).
fn check_sizes(x: &Tensor, out_h: usize, out_w: usize) -> Result<bool> {
    let (_, _, h, w) = x.dims4()?;
    if out_h == 0 || out_w == 0 {
        candle_core::bail!("resize_bilinear: output size must be positive, got {out_h}x{out_w}")
    }
    if h == 0 || w == 0 {
        candle_core::bail!(
            "resize_bilinear: input spatial size must be positive, got {h}x{w} (shape {:?})",
            x.dims()
        )
    }
    Ok(h == out_h && w == out_w)
}

/// Bilinearly resizes `x` `(N, C, H, W)` to `(N, C, out_h, out_w)`, differentiably.
///
/// Matches PyTorch's `F.interpolate(x, size=(out_h, out_w), mode="bilinear",
/// align_corners=align_corners)`. Returns `x` unchanged when the size already matches. f32
/// tensors on the CPU take the direct custom op (forward and backward), every other device and
/// dtype [`resize_bilinear_portable`]. Errors when `x` is not 4-D or a size is 0.
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    if check_sizes(x, out_h, out_w)? {
        return Ok(x.clone());
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let (_, _, h, w) = x.dims4()?;
        let plan = Plan::new((h, w), (out_h, out_w), align_corners);
        return x.contiguous()?.apply_op1(ResizeCpu(plan));
    }
    resize_bilinear_portable(x, out_h, out_w, align_corners)
}

/// The portable path of [`resize_bilinear`]: `A_h · x · A_wᵀ` with dense interpolation matrices
/// (candle matmuls, transposes and copies), differentiable on every device and dtype. A 1×1
/// input is a broadcast. Same contract as [`resize_bilinear`].
pub fn resize_bilinear_portable(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    if check_sizes(x, out_h, out_w)? {
        return Ok(x.clone());
    }
    let (n, c, h, w) = x.dims4()?;
    if h == 1 && w == 1 {
        // Every output pixel equals the single input pixel: a broadcast (differentiable).
        return x.broadcast_as((n, c, out_h, out_w))?.contiguous();
    }
    let (dtype, device) = (x.dtype(), x.device());
    // Width: (N·C·H, W) × (W, W_out).
    let aw_t = weights_tensor(w, out_w, align_corners, dtype, device)?.t()?;
    let y = x
        .contiguous()?
        .reshape((n * c * h, w))?
        .matmul(&aw_t.contiguous()?)?;
    // Height: bring H last, (N·C·W_out, H) × (H, H_out), then back.
    let y = y
        .reshape((n * c, h, out_w))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * c * out_w, h))?;
    let ah_t = weights_tensor(h, out_h, align_corners, dtype, device)?
        .t()?
        .contiguous()?;
    y.matmul(&ah_t)?
        .reshape((n * c, out_w, out_h))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, c, out_h, out_w))
}

/// One axis' taps rounded to f32 (once, from the f64 [`axis_taps`], as the portable path rounds
/// its matrices): `(i0, i1, w0, w1)` per output position.
type Taps32 = Vec<(usize, usize, f32, f32)>;

fn taps32(in_len: usize, out_len: usize, align_corners: bool) -> Taps32 {
    axis_taps(in_len, out_len, align_corners)
        .into_iter()
        .map(|t| (t.i0, t.i1, t.w0 as f32, t.w1 as f32))
        .collect()
}

/// Everything the CPU kernels need for one `(H, W) → (H_out, W_out)` resize, shared by the
/// forward op and its adjoint.
#[derive(Debug)]
struct Plan {
    inp: (usize, usize),
    out: (usize, usize),
    rows: Taps32,
    cols: Taps32,
    /// The input rows some output row reads, ascending (all of them unless downsampling).
    used_rows: Vec<usize>,
}

impl Plan {
    fn new(inp: (usize, usize), out: (usize, usize), align_corners: bool) -> std::sync::Arc<Self> {
        let rows = taps32(inp.0, out.0, align_corners);
        let cols = taps32(inp.1, out.1, align_corners);
        let mut used = vec![false; inp.0];
        for &(i0, i1, _, _) in &rows {
            used[i0] = true;
            used[i1] = true;
        }
        let used_rows = (0..inp.0).filter(|&r| used[r]).collect();
        std::sync::Arc::new(Self {
            inp,
            out,
            rows,
            cols,
            used_rows,
        })
    }

    /// Forward on one plane: `x` `H×W` → `y` `H_out×W_out`; `tmp` (`H×W_out`) holds the
    /// horizontally interpolated input rows.
    fn forward_plane(&self, x: &[f32], y: &mut [f32], tmp: &mut [f32]) {
        let ((_, w), (_, wo)) = (self.inp, self.out);
        for &r in &self.used_rows {
            let src = &x[r * w..(r + 1) * w];
            let dst = &mut tmp[r * wo..(r + 1) * wo];
            for (d, &(i0, i1, w0, w1)) in dst.iter_mut().zip(&self.cols) {
                *d = src[i0] * w0 + src[i1] * w1;
            }
        }
        for (dst, &(i0, i1, w0, w1)) in y.chunks_exact_mut(wo).zip(&self.rows) {
            let a = &tmp[i0 * wo..(i0 + 1) * wo];
            let b = &tmp[i1 * wo..(i1 + 1) * wo];
            for ((d, &p), &q) in dst.iter_mut().zip(a).zip(b) {
                *d = p * w0 + q * w1;
            }
        }
    }

    /// The adjoint on one plane: output gradient `g` `H_out×W_out` → input gradient `dx` `H×W`
    /// (zero on entry). `tmp` (`H×W_out`) collects the gradient of the horizontal pass's rows.
    fn backward_plane(&self, g: &[f32], dx: &mut [f32], tmp: &mut [f32]) {
        let ((_, w), (_, wo)) = (self.inp, self.out);
        for &r in &self.used_rows {
            tmp[r * wo..(r + 1) * wo].fill(0.0);
        }
        for (src, &(i0, i1, w0, w1)) in g.chunks_exact(wo).zip(&self.rows) {
            for (t, &v) in tmp[i0 * wo..(i0 + 1) * wo].iter_mut().zip(src) {
                *t += v * w0;
            }
            for (t, &v) in tmp[i1 * wo..(i1 + 1) * wo].iter_mut().zip(src) {
                *t += v * w1;
            }
        }
        for &r in &self.used_rows {
            let t = &tmp[r * wo..(r + 1) * wo];
            let d = &mut dx[r * w..(r + 1) * w];
            for (&v, &(i0, i1, w0, w1)) in t.iter().zip(&self.cols) {
                d[i0] += v * w0;
                d[i1] += v * w1;
            }
        }
    }
}

/// The f32 storage slice of a contiguous input and its `(N, C, H, W)` dims, or an error naming
/// what is wrong.
fn f32_planes<'a>(
    what: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
    hw: (usize, usize),
) -> Result<(&'a [f32], (usize, usize))> {
    let x = contiguous_f32(storage, layout, what)?;
    let (n, c, h, w) = layout.shape().dims4()?;
    if (h, w) != hw {
        candle_core::bail!(
            "{what}: input is {:?}, the op was planned for spatial size {}x{}",
            layout.dims(),
            hw.0,
            hw.1
        )
    }
    Ok((x, (n, c)))
}

/// The CPU f32 forward op of [`resize_bilinear`]; its backward is [`ResizeCpuAdjoint`].
struct ResizeCpu(std::sync::Arc<Plan>);

/// The adjoint (input gradient) of [`ResizeCpu`]; its own backward is [`ResizeCpu`] again.
struct ResizeCpuAdjoint(std::sync::Arc<Plan>);

impl CustomOp1 for ResizeCpu {
    fn name(&self) -> &'static str {
        "resize-bilinear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let (x, (n, c)) = f32_planes("resize_bilinear CPU op", storage, layout, p.inp)?;
        let ((h, w), (ho, wo)) = (p.inp, p.out);
        let mut y = zeroed(n * c * ho * wo);
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each_init(
                || vec![0f32; h * wo],
                |tmp, (yp, xp)| p.forward_plane(xp, yp, tmp),
            );
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let adjoint = ResizeCpuAdjoint(self.0.clone());
        Ok(Some(grad_res.contiguous()?.apply_op1(adjoint)?))
    }
}

impl CustomOp1 for ResizeCpuAdjoint {
    fn name(&self) -> &'static str {
        "resize-bilinear-adjoint"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let what = "resize_bilinear CPU backward";
        let (g, (n, c)) = f32_planes(what, storage, layout, p.out)?;
        let ((h, w), (ho, wo)) = (p.inp, p.out);
        let mut dx = zeroed(n * c * h * w);
        dx.par_chunks_mut(h * w)
            .zip(g.par_chunks(ho * wo))
            .for_each_init(
                || vec![0f32; h * wo],
                |tmp, (dp, gp)| p.backward_plane(gp, dp, tmp),
            );
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let forward = ResizeCpu(self.0.clone());
        Ok(Some(grad_res.contiguous()?.apply_op1(forward)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values::values;
    use candle_core::Var;

    #[test]
    fn rows_sum_to_one() {
        for &(i, o, ac) in &[
            (5, 9, false),
            (5, 9, true),
            (9, 4, false),
            (7, 1, true),
            (1, 3, false),
        ] {
            let m = interpolation_weights(i, o, ac);
            for r in 0..o {
                let s: f64 = m[r * i..(r + 1) * i].iter().sum();
                assert!(
                    (s - 1.0).abs() < 1e-12,
                    "{i}->{o} ac={ac} row {r} sums to {s}"
                );
            }
        }
    }

    #[test]
    fn taps_follow_pytorch_source_rule() {
        // 4 -> 8 without align_corners: s = (d + 0.5) / 2 - 0.5, clamped at 0.
        let t = axis_taps(4, 8, false);
        assert_eq!((t[0].i0, t[0].i1, t[0].w0, t[0].w1), (0, 1, 1.0, 0.0));
        assert_eq!((t[1].i0, t[1].i1, t[1].w0, t[1].w1), (0, 1, 0.75, 0.25));
        assert_eq!((t[2].i0, t[2].i1, t[2].w0, t[2].w1), (0, 1, 0.25, 0.75));
        // The last one clamps: both taps on input 3, merged.
        assert_eq!((t[7].i0, t[7].i1, t[7].w0, t[7].w1), (3, 3, 1.0, 0.0));
        // align_corners: s = d * 3 / 7.
        let t = axis_taps(4, 8, true);
        assert_eq!((t[7].i0, t[7].i1, t[7].w0, t[7].w1), (3, 3, 1.0, 0.0));
        assert_eq!((t[1].i0, t[1].i1), (0, 1));
        assert!((t[1].w1 - 3.0 / 7.0).abs() < 1e-15);
        assert!(axis_taps(0, 3, false).is_empty());
    }

    #[test]
    fn identity_size_is_identity() -> Result<()> {
        let x = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((1, 2, 3, 4))?;
        let y = resize_bilinear(&x, 3, 4, false)?;
        let d = (x - y)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        Ok(())
    }

    #[test]
    fn align_corners_keeps_corners() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?.reshape((1, 1, 2, 2))?;
        for y in [
            resize_bilinear(&x, 3, 3, true)?,
            resize_bilinear_portable(&x.to_dtype(DType::F64)?, 3, 3, true)?,
        ] {
            let y = y.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            assert_eq!(y, vec![1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0]);
        }
        Ok(())
    }

    #[test]
    fn rejects_empty_sizes() {
        let x = Tensor::zeros((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(resize_bilinear(&x, 0, 4, false).is_err());
        let e = Tensor::zeros((1, 1, 0, 3), DType::F32, &Device::Cpu).unwrap();
        let msg = resize_bilinear(&e, 2, 4, false).unwrap_err().to_string();
        assert!(msg.contains("0x3"), "{msg}");
        assert!(resize_bilinear_portable(&e, 2, 4, false).is_err());
        let x3 = Tensor::zeros((1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(resize_bilinear(&x3, 2, 4, false).is_err());
    }

    /// `<A x, g> = <x, Aᵀ g>` for the forward op and its adjoint, summed in f64.
    #[test]
    fn adjoint_op_is_the_transpose() -> Result<()> {
        for &((h, w), (ho, wo), ac) in &[
            ((5, 7), (11, 16), false),
            ((13, 9), (4, 5), true),
            ((1, 6), (3, 1), false),
            ((7, 7), (7, 3), true),
        ] {
            let plan = Plan::new((h, w), (ho, wo), ac);
            let x = Tensor::from_vec(values(2 * 3 * h * w, 1), (2, 3, h, w), &Device::Cpu)?;
            let g = Tensor::from_vec(values(2 * 3 * ho * wo, 2), (2, 3, ho, wo), &Device::Cpu)?;
            let ax = x.apply_op1(ResizeCpu(plan.clone()))?;
            let atg = g.apply_op1(ResizeCpuAdjoint(plan))?;
            assert_eq!(atg.dims(), x.dims());
            let dot = |a: &Tensor, b: &Tensor| -> Result<f64> {
                (a.to_dtype(DType::F64)? * b.to_dtype(DType::F64)?)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            let (l, r) = (dot(&ax, &g)?, dot(&x, &atg)?);
            assert!(
                (l - r).abs() <= 1e-5 * (1.0 + l.abs()),
                "{h}x{w} -> {ho}x{wo} ac={ac}: <Ax, g> = {l}, <x, Aᵀg> = {r}"
            );
        }
        Ok(())
    }

    /// The adjoint op's backward (a second derivative through the resize) is the forward resize.
    #[test]
    fn adjoint_backward_is_the_forward_resize() -> Result<()> {
        let ((h, w), (ho, wo)) = ((4, 6), (9, 5));
        let g = Var::from_tensor(&Tensor::from_vec(
            values(2 * ho * wo, 3),
            (1, 2, ho, wo),
            &Device::Cpu,
        )?)?;
        let r = Tensor::from_vec(values(2 * h * w, 4), (1, 2, h, w), &Device::Cpu)?;
        let dx = g.apply_op1(ResizeCpuAdjoint(Plan::new((h, w), (ho, wo), false)))?;
        let grads = (dx * &r)?.sum_all()?.backward()?;
        let got = grads.get(&g).expect("gradient reaches g");
        let want = resize_bilinear_portable(&r, ho, wo, false)?;
        let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-6, "max difference {d}");
        Ok(())
    }

    #[test]
    fn op_rejects_mismatched_input() {
        let plan = Plan::new((4, 4), (8, 8), false);
        let x = Tensor::zeros((1, 1, 5, 4), DType::F32, &Device::Cpu).unwrap();
        let msg = x.apply_op1(ResizeCpu(plan)).unwrap_err().to_string();
        assert!(msg.contains("4x4"), "{msg}");
    }
}
