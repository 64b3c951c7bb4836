//! A convolution followed by a training-mode BatchNorm (and optionally ReLU) as one
//! differentiable CPU op.
//!
//! As two ops, candle's backward pass materialises the gradient of the convolution's output `z`
//! as `zeros_like(z) + ∂z` (an allocation, a memset and a full add over an activation-sized
//! tensor) between the BatchNorm backward and the convolution backward. Fused, the op computes
//! `z = conv(x, W)` with the dense CPU kernels, keeps `z` for the backward pass, and returns
//! `y = BN(z)` (then `max(y, 0)`); its backward runs the BatchNorm backward into `∂z` and hands
//! it straight to the convolution's input and weight gradients. Same kernels, same order: the
//! results equal the two-op composition to the last bit (tests).
//!
//! `γ` and `β` travel as one `(2, C)` operand (`Tensor::stack`, whose backward splits the
//! gradient again). Only for `f32` CPU tensors and dense convolutions without bias; everything
//! else keeps the separate ops (`conv_bn_train_synced` returns `None`).

use crate::ops::batch_norm_cpu::{BatchStats, BnTrain};
use crate::ops::conv2d::cpu::Conv2dCpu;
use crate::ops::conv2d::{dense_cpu_op, Conv2dGeometry};
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use recallseg_distributed::SharedCommunicator;
use recallseg_kernels::SavedState;
use std::sync::Arc;

/// `relu?(BN_train(conv(x, weight)))` with batch statistics, as one op, when the fused CPU path
/// applies (CPU, `f32`, dense convolution, and `conv`, `batch_norm` and `conv_bn` enabled in
/// [`crate::ops::cpu_kernels`]); `None` otherwise, so the caller runs the separate ops. Returns
/// the output and the batch statistics (for the running ones).
///
/// # Errors
/// Shapes that do not describe a convolution, or a `gamma`/`beta` that does not match its
/// output channels.
#[cfg(test)]
pub(crate) fn conv_bn_train(
    x: &Tensor,
    weight: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    geometry: Conv2dGeometry,
    eps: f64,
    relu: bool,
) -> Result<Option<(Tensor, BatchStats)>> {
    Ok(
        conv_bn_train_synced(x, weight, gamma, beta, geometry, eps, relu, None)?
            .map(|(y, stats, _)| (y, stats)),
    )
}

/// `conv_bn_train` with the BatchNorm statistics of the global batch over the ranks of `sync`
/// (SyncBatchNorm, see [`crate::ops::batch_norm_cpu`]); also returns the number of values per
/// channel the statistics were taken over (all ranks together). Every rank must call it, and
/// reach its backward pass, in the same order, and all must take the fused path or none (the
/// choice depends only on the device, dtypes, geometry and the thread's
/// [`crate::ops::cpu_kernels`], the same on every rank of a data-parallel run).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bn_train_synced(
    x: &Tensor,
    weight: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    geometry: Conv2dGeometry,
    eps: f64,
    relu: bool,
    sync: Option<&SharedCommunicator>,
) -> Result<Option<(Tensor, BatchStats, f64)>> {
    let cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    let k = crate::ops::cpu_kernels();
    if !(k.conv_bn && k.batch_norm && cpu_f32(gamma) && cpu_f32(beta)) {
        return Ok(None);
    }
    let Some(conv) = dense_cpu_op(x, weight, geometry)? else {
        return Ok(None);
    };
    let c_out = weight.dim(0)?;
    if gamma.dims() != [c_out] || beta.dims() != [c_out] {
        candle_core::bail!(
            "conv + batch norm: weight {:?} gives {c_out} channels, gamma {:?} and beta {:?}",
            weight.dims(),
            gamma.dims(),
            beta.dims()
        )
    }
    let stats = Arc::new(SavedState::new());
    let op = ConvBnTrain {
        conv,
        bn: BnTrain {
            eps,
            relu,
            stats: stats.clone(),
            fixed: None,
            sync: sync.cloned(),
        },
        saved_z: SavedState::new(),
    };
    let gamma_beta = Tensor::stack(&[gamma, beta], 0)?;
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &gamma_beta, op)?;
    let (s, count) = stats.cloned()?;
    Ok(Some((y, s, count)))
}

struct ConvBnTrain {
    conv: Conv2dCpu,
    bn: BnTrain,
    /// The convolution's output `z`, kept from the forward pass for the backward pass.
    saved_z: SavedState<(Vec<f32>, Shape)>,
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "recallseg-conv-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gbs: &CpuStorage,
        gbl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (z, z_shape) = self.conv.forward(xs, xl, ws, wl, None)?;
        let c = z_shape.dims()[1];
        if gbl.dims() != [2, c] || !gbl.is_contiguous() {
            candle_core::bail!(
                "conv + batch norm: gamma/beta operand {:?}, expected contiguous [2, {c}]",
                gbl.dims()
            )
        }
        let z_layout = Layout::contiguous(&z_shape);
        let gamma = Layout::contiguous_with_offset(c, gbl.start_offset());
        let beta = Layout::contiguous_with_offset(c, gbl.start_offset() + c);
        let y = self.bn.cpu_fwd(&z, &z_layout, gbs, &gamma, gbs, &beta)?;
        if let CpuStorage::F32(z) = z {
            self.saved_z.put((z, z_shape))?;
        }
        Ok(y)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma_beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved_z.take_if_saved()?;
        let z = match saved {
            Some((z, shape)) => Tensor::from_vec(z, shape, x.device())?,
            // A second backward pass over the same graph: recompute the convolution.
            None => x.apply_op2_no_bwd(w, &self.conv)?,
        };
        let gamma = gamma_beta.get(0)?;
        let (dz, dgamma, dbeta) = self.bn.backward(&z, &gamma, res, grad_res)?;
        let (dx, dw, _) = self.conv.grads(x, w, &dz, false)?;
        Ok((dx, Some(dw), Some(Tensor::stack(&[dgamma, dbeta], 0)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::batch_norm_cpu::batch_norm_train;
    use crate::ops::conv2d::conv2d;
    use crate::ops::test_values::values;
    use candle_core::Var;

    fn var(shape: &[usize], seed: u64, offset: f32) -> Var {
        let n = shape.iter().product();
        let v: Vec<f32> = values(n, seed).into_iter().map(|v| v + offset).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The fused op and the two-op composition give the same output, statistics and gradients,
    /// to the bit, for im2col and Winograd-sized convolutions, strides, dilations, with and
    /// without ReLU.
    #[test]
    fn fused_equals_the_composition_bitwise() {
        let cases = [
            // (n, c_in, h, w, c_out, k, stride, pad, dil)
            (2, 3, 11, 9, 5, 3, 1, 1, 1),
            (2, 4, 13, 10, 6, 3, 2, 1, 1),
            (1, 5, 9, 9, 4, 1, 1, 0, 1),
            (2, 8, 12, 14, 7, 3, 1, 2, 2),
            (2, 64, 10, 12, 64, 3, 1, 1, 1), // Winograd-sized
        ];
        for (i, &(n, ci, h, w, co, k, s, p, d)) in cases.iter().enumerate() {
            for relu in [false, true] {
                let x = var(&[n, ci, h, w], 10 + i as u64, 0.0);
                let wt = var(&[co, ci, k, k], 20 + i as u64, 0.0);
                let gamma = var(&[co], 30 + i as u64, 1.5);
                let beta = var(&[co], 40 + i as u64, 0.0);
                let geo = Conv2dGeometry {
                    padding: p,
                    stride: s,
                    dilation: d,
                    groups: 1,
                };
                let (fy, fstats) = conv_bn_train(&x, &wt, &gamma, &beta, geo, 1e-5, relu)
                    .unwrap()
                    .unwrap();
                let z = conv2d(&x, &wt, None, geo).unwrap();
                let (cy, cstats) = batch_norm_train(&z, &gamma, &beta, 1e-5, relu).unwrap();
                assert_eq!(bits(&fy), bits(&cy), "case {i} relu {relu}: output");
                assert_eq!(fstats.mean, cstats.mean, "case {i}: mean");
                assert_eq!(fstats.var, cstats.var, "case {i}: var");
                let r = Tensor::from_vec(values(fy.elem_count(), 50), fy.shape(), &Device::Cpu)
                    .unwrap();
                let fg = (&fy * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let cg = (&cy * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, v) in [("x", &x), ("w", &wt), ("gamma", &gamma), ("beta", &beta)] {
                    assert_eq!(
                        bits(fg.get(v).unwrap()),
                        bits(cg.get(v).unwrap()),
                        "case {i} relu {relu}: gradient of {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_second_backward_pass_recomputes_the_convolution() {
        let x = var(&[2, 3, 8, 8], 1, 0.0);
        let wt = var(&[4, 3, 3, 3], 2, 0.0);
        let (gamma, beta) = (var(&[4], 3, 1.0), var(&[4], 4, 0.0));
        let geo = Conv2dGeometry {
            padding: 1,
            ..Conv2dGeometry::default()
        };
        let (y, _) = conv_bn_train(&x, &wt, &gamma, &beta, geo, 1e-5, true)
            .unwrap()
            .unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let first = loss.backward().unwrap();
        let second = loss.backward().unwrap();
        for v in [&x, &wt, &gamma, &beta] {
            assert_eq!(bits(first.get(v).unwrap()), bits(second.get(v).unwrap()));
        }
    }

    #[test]
    fn declines_what_it_does_not_fuse_and_names_bad_shapes() {
        let x = var(&[2, 4, 6, 6], 1, 0.0);
        let (gamma, beta) = (var(&[4], 3, 1.0), var(&[4], 4, 0.0));
        let depthwise = var(&[4, 1, 3, 3], 2, 0.0);
        let geo = |groups| Conv2dGeometry {
            padding: 1,
            stride: 1,
            dilation: 1,
            groups,
        };
        assert!(
            conv_bn_train(&x, &depthwise, &gamma, &beta, geo(4), 1e-5, false)
                .unwrap()
                .is_none()
        );
        let x64 = x.to_dtype(DType::F64).unwrap();
        let w64 = var(&[4, 4, 3, 3], 5, 0.0).to_dtype(DType::F64).unwrap();
        assert!(
            conv_bn_train(&x64, &w64, &gamma, &beta, geo(1), 1e-5, false)
                .unwrap()
                .is_none()
        );
        let w = var(&[5, 4, 3, 3], 6, 0.0);
        let e = conv_bn_train(&x, &w, &gamma, &beta, geo(1), 1e-5, false).unwrap_err();
        assert!(e.to_string().contains("5 channels"), "{e}");
    }
}
