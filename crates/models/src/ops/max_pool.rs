//! Differentiable 2-D max-pooling for any kernel, stride and padding.
//!
//! candle 0.11's `max_pool2d` only has a backward pass when kernel == stride, while ResNet's stem
//! pools 3×3 with stride 2 and padding 1. This version is built from differentiable candle ops:
//!
//! 1. pad the input with `-∞` (never selected: every window holds at least one real pixel when
//!    `padding < kernel`);
//! 2. gather the `k·k` window candidates of every output pixel with `index_select` (strided rows,
//!    then strided columns) and stack them on a trailing axis;
//! 3. take the `argmax` over that axis (no gradient) and `gather` the winners.
//!
//! The gradient flows through `gather` (scatter-add) and `index_select` (index-add) to exactly one
//! input pixel per output pixel: the first maximum in row-major window order, which is PyTorch's
//! tie-breaking rule too. Works on every device and dtype candle supports.
//!
//! On the CPU in f32 a custom op does the same in one pass each way (scan each window, keep the
//! first maximum and remember where it was; the backward adds each gradient there, without
//! reading the input again); the tests check it against the portable path and PyTorch.

use crate::ops::buffers::zeroed;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use recallseg_kernels::storage::contiguous_f32;
use recallseg_kernels::SavedState;
use std::sync::Arc;

/// Output length of a pooling axis (floor mode, like PyTorch's default `ceil_mode=False`).
pub(crate) fn pooled_len(
    len: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Option<usize> {
    let padded = len + 2 * padding;
    if kernel == 0 || stride == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

fn pad_neg_inf(x: &Tensor, dim: usize, padding: usize) -> Result<Tensor> {
    if padding == 0 {
        return Ok(x.clone());
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = padding;
    let pad = Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[&pad, x, &pad], dim)
}

/// Max-pools `x` `(N, C, H, W)` with a square `kernel`, `stride` and zero-cost `-∞` `padding`.
///
/// Matches PyTorch's `F.max_pool2d(x, kernel, stride, padding)` (floor mode, dilation 1), forward
/// and backward. Errors when `padding * 2 > kernel` (PyTorch's rule) or the window does not fit.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let (_, _, h, w) = x.dims4()?;
        let (ho, wo) = check(h, w, kernel, stride, padding)?;
        let op = MaxPoolCpu {
            kernel,
            stride,
            padding,
            out: (ho, wo),
            winners: SavedState::new(),
        };
        return x.contiguous()?.apply_op1(op);
    }
    max_pool2d_portable(x, kernel, stride, padding)
}

fn check(
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(usize, usize)> {
    if 2 * padding > kernel {
        candle_core::bail!("max_pool2d: padding {padding} must be at most half of kernel {kernel}")
    }
    match (
        pooled_len(h, kernel, stride, padding),
        pooled_len(w, kernel, stride, padding),
    ) {
        (Some(ho), Some(wo)) => Ok((ho, wo)),
        _ => candle_core::bail!(
            "max_pool2d: kernel {kernel} (stride {stride}, padding {padding}) does not fit input {h}x{w}"
        ),
    }
}

/// The portable path of [`max_pool2d`] (candle ops only), used off the CPU or for other dtypes.
pub fn max_pool2d_portable(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (_n, _c, h, w) = x.dims4()?;
    let (ho, wo) = check(h, w, kernel, stride, padding)?;
    let xp = pad_neg_inf(&pad_neg_inf(x, 2, padding)?, 3, padding)?;
    let index = |offset: usize, count: usize| -> Result<Tensor> {
        let ids: Vec<u32> = (0..count).map(|i| (i * stride + offset) as u32).collect();
        Tensor::from_vec(ids, count, &Device::Cpu)?.to_device(x.device())
    };
    let mut candidates = Vec::with_capacity(kernel * kernel);
    for di in 0..kernel {
        let rows = xp.index_select(&index(di, ho)?, 2)?;
        for dj in 0..kernel {
            candidates.push(rows.index_select(&index(dj, wo)?, 3)?);
        }
    }
    let stacked = Tensor::stack(&candidates, 4)?; // (N, C, Ho, Wo, k·k)
    let winner = stacked.detach().argmax_keepdim(4)?;
    let winner = if winner.dtype() == DType::U32 {
        winner
    } else {
        winner.to_dtype(DType::U32)?
    };
    stacked.gather(&winner, 4)?.squeeze(4)
}

struct MaxPoolCpu {
    kernel: usize,
    stride: usize,
    padding: usize,
    out: (usize, usize),
    /// Plane index of each output's first maximum, kept from the forward pass for the backward
    /// pass (which then scatters the gradient without reading the input again).
    winners: SavedState<Arc<Vec<u32>>>,
}

impl MaxPoolCpu {
    /// Index (within the plane) of the first maximum of output pixel `(i, j)`'s window; the
    /// first NaN if there is one (PyTorch propagates NaN). Branch-free selects: which element
    /// wins is data-dependent and unpredictable.
    #[inline]
    fn argmax(&self, plane: &[f32], h: usize, w: usize, i: usize, j: usize) -> usize {
        let (k, s, p) = (
            self.kernel as isize,
            self.stride as isize,
            self.padding as isize,
        );
        let (r0, c0) = (i as isize * s - p, j as isize * s - p);
        let (ra, rb) = (r0.max(0) as usize, (r0 + k).min(h as isize) as usize);
        let (ca, cb) = (c0.max(0) as usize, (c0 + k).min(w as isize) as usize);
        let mut best = ra * w + ca;
        let mut best_v = plane[best];
        for r in ra..rb {
            let row = &plane[r * w + ca..r * w + cb];
            for (c, &v) in row.iter().enumerate() {
                let better = v > best_v || (v.is_nan() && !best_v.is_nan());
                best = if better { r * w + ca + c } else { best };
                best_v = if better { v } else { best_v };
            }
        }
        best
    }
}

impl CustomOp1 for MaxPoolCpu {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "max_pool2d CPU op: input")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (ho, wo) = self.out;
        if h * w > u32::MAX as usize {
            candle_core::bail!("max_pool2d CPU op: a {h}x{w} plane is too large")
        }
        let plane_out = (ho * wo).max(1);
        let mut y = zeroed(n * c * ho * wo);
        let mut winners = vec![0u32; n * c * ho * wo];
        y.par_chunks_mut(plane_out)
            .zip(winners.par_chunks_mut(plane_out))
            .zip(x.par_chunks((h * w).max(1)))
            .for_each(|((yp, ip), xp)| {
                for i in 0..ho {
                    for j in 0..wo {
                        let at = self.argmax(xp, h, w, i, j);
                        yp[i * wo + j] = xp[at];
                        ip[i * wo + j] = at as u32;
                    }
                }
            });
        self.winners.put(Arc::new(winners))?;
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = arg.dims4()?;
        // The forward pass (which candle always runs before this) recorded every winner.
        let winners = self.winners.cloned()?;
        let scatter = MaxPoolScatter {
            winners,
            plane_in: h * w,
            in_shape: (n, c, h, w),
        };
        let g = grad_res.to_dtype(DType::F32)?.contiguous()?;
        Ok(Some(g.apply_op1_no_bwd(&scatter)?))
    }
}

/// The max-pool backward: each output gradient added to its window's first maximum.
struct MaxPoolScatter {
    winners: Arc<Vec<u32>>,
    plane_in: usize,
    in_shape: (usize, usize, usize, usize),
}

impl CustomOp1 for MaxPoolScatter {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(storage, layout, "max_pool2d backward: gradient")?;
        if g.len() != self.winners.len() {
            candle_core::bail!(
                "max_pool2d backward: {} gradients for {} outputs",
                g.len(),
                self.winners.len()
            )
        }
        let (n, c, h, w) = self.in_shape;
        let planes = n * c;
        let plane_out = g.len().checked_div(planes).unwrap_or(0);
        let mut dx = zeroed(planes * self.plane_in);
        dx.par_chunks_mut(self.plane_in.max(1))
            .zip(g.par_chunks(plane_out.max(1)))
            .zip(self.winners.par_chunks(plane_out.max(1)))
            .for_each(|((dp, gp), ip)| {
                for (&gv, &at) in gp.iter().zip(ip) {
                    dp[at as usize] += gv;
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_length_matches_pytorch_formula() {
        assert_eq!(pooled_len(112, 3, 2, 1), Some(56));
        assert_eq!(pooled_len(7, 3, 2, 1), Some(4));
        assert_eq!(pooled_len(1, 3, 2, 1), Some(1));
        assert_eq!(pooled_len(1, 3, 2, 0), None);
    }

    #[test]
    fn simple_window_max() -> Result<()> {
        let x = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
        let y = max_pool2d(&x, 3, 2, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, vec![5., 7., 13., 15.]);
        Ok(())
    }

    #[test]
    fn ties_send_gradient_to_first_maximum_only() -> Result<()> {
        let x =
            candle_core::Var::from_tensor(&Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu)?)?;
        let y = max_pool2d(&x, 2, 2, 0)?;
        let g = y.sum_all()?.backward()?;
        let gx = g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(gx, vec![1., 0., 0., 0.]);
        Ok(())
    }

    #[test]
    fn nan_wins_its_windows_like_pytorch() -> Result<()> {
        // 1×1×2×4, kernel 2 stride 2: windows [0, NaN | 5, 1] and [2, 3 | 9, NaN].
        let v = [0f32, f32::NAN, 2., 3., 5., 1., 9., f32::NAN];
        let x =
            candle_core::Var::from_tensor(&Tensor::from_slice(&v, (1, 1, 2, 4), &Device::Cpu)?)?;
        let y = max_pool2d(&x, 2, 2, 0)?;
        let yv = y.flatten_all()?.to_vec1::<f32>()?;
        assert!(yv[0].is_nan() && yv[1].is_nan(), "{yv:?}");
        let g = y.sum_all()?.backward()?;
        let gx = g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let hit: Vec<bool> = gx.iter().map(|v| *v != 0.0).collect();
        assert_eq!(hit, [false, true, false, false, false, false, false, true]);
        Ok(())
    }

    #[test]
    fn rejects_bad_geometry() {
        let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool2d(&x, 3, 2, 2).is_err());
    }
}
