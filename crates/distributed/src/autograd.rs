//! [`all_reduce_sum_autograd`]: the all-reduce sum as a differentiable candle op.
//!
//! Every rank computes its output as `y = Σ_r x_r` (the same tensor on every rank) and then its
//! own loss `L_k(y, …)`. Training minimises `L = Σ_k L_k`, so the gradient of a rank's own input
//! is `∂L/∂x_local = Σ_k ∂L_k/∂y`: the backward pass is the all-reduce sum of the incoming
//! gradients. That is what SyncBatchNorm needs to backpropagate through batch statistics that
//! span every rank.

use crate::SharedCommunicator;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

/// The sum of `t` over every rank of `comm`, on every rank, with a backward pass that sums the
/// incoming gradients over every rank (see the module documentation).
///
/// `f32` and `f64` tensors are summed in their dtype; `f16` / `bf16` are summed in `f32` and
/// converted back; integer tensors are an error. Off the CPU (CUDA, Metal) the values travel
/// through host memory (`to_device(Cpu)` and back, both differentiable): meant for small
/// tensors such as per-channel statistics. With one rank the result is `t` itself.
///
/// Like every collective, each rank must call it (and, in the backward pass, reach its
/// gradient) in the same order with a tensor of the same shape; a shape mismatch is an error
/// where the backend detects it.
pub fn all_reduce_sum_autograd(comm: &SharedCommunicator, t: &Tensor) -> Result<Tensor> {
    if comm.size() == 1 {
        return Ok(t.clone());
    }
    match t.dtype() {
        DType::F32 | DType::F64 => {}
        DType::F16 | DType::BF16 => {
            let s = all_reduce_sum_autograd(comm, &t.to_dtype(DType::F32)?)?;
            return s.to_dtype(t.dtype());
        }
        other => candle_core::bail!(
            "all_reduce_sum_autograd sums f32 / f64 (or f16 / bf16) tensors, got {other:?}"
        ),
    }
    if !t.device().is_cpu() {
        let s = all_reduce_sum_autograd(comm, &t.to_device(&Device::Cpu)?)?;
        return s.to_device(t.device());
    }
    t.contiguous()?
        .apply_op1(AllReduceSum { comm: comm.clone() })
}

/// The custom op behind [`all_reduce_sum_autograd`] (CPU storage only).
struct AllReduceSum {
    comm: SharedCommunicator,
}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "all-reduce-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("all-reduce-sum: the input must be contiguous")
        };
        let out = match storage {
            CpuStorage::F32(v) => {
                let mut buf = v[start..end].to_vec();
                self.comm.all_reduce_sum_f32(&mut buf)?;
                CpuStorage::F32(buf)
            }
            CpuStorage::F64(v) => {
                let mut buf = v[start..end].to_vec();
                self.comm.all_reduce_sum_f64(&mut buf)?;
                CpuStorage::F64(buf)
            }
            other => candle_core::bail!(
                "all-reduce-sum: f32 or f64 storage expected, got {:?}",
                other.dtype()
            ),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // Through the differentiable op again, so that a second derivative stays exact.
        Ok(Some(all_reduce_sum_autograd(&self.comm, grad_res)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{single_process, LocalGroup};
    use candle_core::Var;
    use std::sync::Arc;

    /// Runs `f` on every rank of a local group of `n` threads.
    fn run<T: Send>(n: usize, f: impl Fn(SharedCommunicator) -> T + Sync) -> Vec<T> {
        let ranks = LocalGroup::new(n);
        std::thread::scope(|s| {
            let hs: Vec<_> = ranks
                .into_iter()
                .map(|c| {
                    let f = &f;
                    s.spawn(move || f(Arc::new(c)))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn values_and_gradients_are_sums_over_ranks() {
        // Rank r holds x_r = (r + 1)·[1, 2, 3]; its loss is L_r = Σ_i w_r,i · y_i with
        // w_r = [r + 1, 10·r, -1], so ∂L/∂x_r = Σ_k w_k for every rank.
        let out = run(3, |comm| {
            let r = comm.rank() as f32;
            let x = Var::new(&[r + 1.0, 2.0 * (r + 1.0), 3.0 * (r + 1.0)], &Device::Cpu).unwrap();
            // A strided view: the op makes it contiguous first.
            let xt = x.as_tensor().reshape((3, 1)).unwrap().t().unwrap();
            let y = all_reduce_sum_autograd(&comm, &xt)
                .unwrap()
                .flatten_all()
                .unwrap();
            let w = Tensor::new(&[r + 1.0, 10.0 * r, -1.0], &Device::Cpu).unwrap();
            let loss = (y.clone() * w).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            (y.to_vec1::<f32>().unwrap(), g)
        });
        for (y, g) in &out {
            assert_eq!(y, &vec![6.0, 12.0, 18.0]);
            assert_eq!(g, &vec![6.0, 30.0, -3.0]);
        }
    }

    #[test]
    fn f64_and_half_precision_and_nonlinear_losses() {
        // L_r = y_0² · (r + 1) with y = Σ x: ∂L/∂x_r,0 = Σ_k 2·y_0·(k + 1) = 2·y_0·3 (2 ranks).
        let out = run(2, |comm| {
            let r = comm.rank() as f64;
            let x = Var::new(&[r + 0.5, -1.0], &Device::Cpu).unwrap();
            let y = all_reduce_sum_autograd(&comm, x.as_tensor()).unwrap();
            let loss = (y.get(0).unwrap().sqr().unwrap() * (r + 1.0)).unwrap();
            let g = loss.backward().unwrap();
            let gx = g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
            let h = Tensor::new(&[1.5f32, 2.0], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let hs = all_reduce_sum_autograd(&comm, &h).unwrap();
            assert_eq!(hs.dtype(), DType::BF16);
            let hs = hs.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
            (y.to_vec1::<f64>().unwrap(), gx, hs)
        });
        for (y, gx, hs) in &out {
            assert_eq!(y, &vec![2.0, -2.0]);
            assert_eq!(gx, &vec![2.0 * 2.0 * 3.0, 0.0]);
            assert_eq!(hs, &vec![3.0, 4.0]);
        }
    }

    #[test]
    fn one_rank_is_the_identity_and_integers_are_an_error() {
        let comm = single_process();
        let t = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let s = all_reduce_sum_autograd(&comm, &t).unwrap();
        assert_eq!(s.id(), t.id());
        let errs = run(2, |comm| {
            let i = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
            all_reduce_sum_autograd(&comm, &i).unwrap_err().to_string()
        });
        for e in errs {
            assert!(e.contains("U32"), "{e}");
        }
    }
}
