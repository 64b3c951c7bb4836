//! The adapter from a fused loss to a candle `CustomOp2`.
//!
//! The fused losses of `recallseg-losses` all take `(logits, target)`: `f32` logits
//! `(N, C, H, W)` and integer labels `(N, H, W)` (`u8`, `u32` or `i64`), both contiguous on the
//! CPU, and return a scalar whose gradient with respect to the logits they compute themselves.
//! What differs between them is the arithmetic of the two passes, the [`FusedLoss`] trait
//! (generic in the label type, so each pass is compiled once per label type). Everything around
//! it (borrowing the operands, checking their shapes, dispatching on the label type, reading the
//! incoming gradient and wrapping the results) is [`cpu_fwd`] and [`bwd`], which [`FusedOp`]
//! turns into the `CustomOp2` implementation.

use crate::storage::{contiguous_f32, Label, Labels};
use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};

/// A loss computed by one fused CPU kernel from `f32` logits `(N, C, H, W)` and integer labels
/// `(N, H, W)`, with its own backward pass. Wrap it in [`FusedOp`] for the `CustomOp2`.
pub trait FusedLoss: Send + Sync {
    /// The op's name in candle's graph.
    const NAME: &'static str;

    /// Number of classes the loss was built for (the logits' `C`).
    fn n_classes(&self) -> usize;

    /// The loss of a batch: contiguous `logits` of dimensions `dims = [N, C, H, W]` and their
    /// `N·H·W` `labels`. The forward pass also saves what the backward pass needs.
    ///
    /// # Errors
    /// Labels out of range and anything else the loss rejects.
    fn forward<L: Label>(&self, logits: &[f32], dims: [usize; 4], labels: &[L]) -> Result<f64>;

    /// `∂(grad · loss)/∂logits` (`N·C·H·W` values in the logits' layout) for the batch the
    /// forward pass saw, `grad` being the incoming gradient of the scalar loss.
    ///
    /// # Errors
    /// No saved state (a backward pass without its forward pass) or a poisoned lock.
    fn backward<L: Label>(
        &self,
        logits: &[f32],
        dims: [usize; 4],
        labels: &[L],
        grad: f32,
    ) -> Result<Vec<f32>>;
}

/// The contiguous `f32` logits and their dimensions `[N, C, H, W]`, checked against the loss's
/// class count, and the `N·H·W` labels.
fn operands<'a, K: FusedLoss>(
    kernel: &K,
    logits: (&'a CpuStorage, &Layout),
    target: (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], [usize; 4], Labels<'a>)> {
    let dims = match logits.1.dims() {
        &[n, c, h, w] => [n, c, h, w],
        d => bail!("fused loss: logits must be rank 4, got {d:?}"),
    };
    if dims[1] != kernel.n_classes() {
        bail!(
            "fused loss: logits have {} channels, the loss has {} classes",
            dims[1],
            kernel.n_classes()
        )
    }
    let x = contiguous_f32(logits.0, logits.1, "fused loss: logits")?;
    let labels = Labels::of(target.0, target.1, "fused loss: target")?;
    let npix = dims[0] * dims[2] * dims[3];
    if labels.len() != npix {
        bail!(
            "fused loss: the target has {} labels, logits {dims:?} need {npix}",
            labels.len()
        )
    }
    Ok((x, dims, labels))
}

/// `CustomOp2::cpu_fwd` of a fused loss: borrows and checks the operands, runs
/// [`FusedLoss::forward`] for the label type and returns the scalar loss (`f32`, shape `()`).
///
/// # Errors
/// Operands that are not contiguous `f32` logits `(N, C, H, W)` with `C` classes and `N·H·W`
/// `u8`/`u32`/`i64` labels, and the errors of [`FusedLoss::forward`].
pub fn cpu_fwd<K: FusedLoss>(
    kernel: &K,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (x, dims, labels) = operands(kernel, (s1, l1), (s2, l2))?;
    let loss = match labels {
        Labels::U8(t) => kernel.forward(x, dims, t)?,
        Labels::U32(t) => kernel.forward(x, dims, t)?,
        Labels::I64(t) => kernel.forward(x, dims, t)?,
    };
    Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
}

/// `CustomOp2::bwd` of a fused loss: the incoming scalar gradient as `f32`, then
/// [`FusedLoss::backward`] for the label type on the (CPU) operands; no gradient for the target.
///
/// # Errors
/// Operands off the CPU, as [`cpu_fwd`] for their contents, and the errors of
/// [`FusedLoss::backward`].
pub fn bwd<K: FusedLoss>(
    kernel: &K,
    logits: &Tensor,
    target: &Tensor,
    grad_res: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let g0 = grad_res
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_scalar::<f32>()?;
    let (s1, l1) = logits.storage_and_layout();
    let (s2, l2) = target.storage_and_layout();
    let (Storage::Cpu(s1), Storage::Cpu(s2)) = (&*s1, &*s2) else {
        bail!("fused loss: backward needs CPU tensors")
    };
    let (x, dims, labels) = operands(kernel, (s1, l1), (s2, l2))?;
    let grad = match labels {
        Labels::U8(t) => kernel.backward(x, dims, t, g0)?,
        Labels::U32(t) => kernel.backward(x, dims, t, g0)?,
        Labels::I64(t) => kernel.backward(x, dims, t, g0)?,
    };
    let g = Tensor::from_vec(grad, logits.shape(), logits.device())?;
    Ok((Some(g), None))
}

/// A [`FusedLoss`] as candle's `CustomOp2` (through [`cpu_fwd`] and [`bwd`]):
/// `logits.apply_op2_arc(&target, Arc::new(Box::new(FusedOp(loss))))`.
pub struct FusedOp<L>(pub L);

impl<L: FusedLoss> candle_core::CustomOp2 for FusedOp<L> {
    fn name(&self) -> &'static str {
        L::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        cpu_fwd(&self.0, s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        bwd(&self.0, logits, target, grad_res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SavedState;
    use candle_core::Var;

    /// `Σ_n (z_{n, y_n} − z_{n, 0})` over valid labels (< C), a toy loss with gradient
    /// `[k = y_n] − [k = 0]`.
    #[derive(Default)]
    struct Toy {
        seen: SavedState<usize>,
    }

    impl FusedLoss for Toy {
        const NAME: &'static str = "toy";
        fn n_classes(&self) -> usize {
            3
        }
        fn forward<L: Label>(&self, x: &[f32], dims: [usize; 4], t: &[L]) -> Result<f64> {
            let [_, c, h, w] = dims;
            let hw = h * w;
            let mut s = 0.0;
            for (i, &l) in t.iter().enumerate() {
                let y: i64 = l.into();
                let (img, p) = (i / hw, i % hw);
                s += (x[img * c * hw + y as usize * hw + p] - x[img * c * hw + p]) as f64;
            }
            self.seen.put(t.len())?;
            Ok(s)
        }
        fn backward<L: Label>(
            &self,
            _x: &[f32],
            dims: [usize; 4],
            t: &[L],
            g: f32,
        ) -> Result<Vec<f32>> {
            assert_eq!(self.seen.take()?, t.len());
            let [n, c, h, w] = dims;
            let hw = h * w;
            let mut d = vec![0f32; n * c * hw];
            for (i, &l) in t.iter().enumerate() {
                let y: i64 = l.into();
                let (img, p) = (i / hw, i % hw);
                d[img * c * hw + y as usize * hw + p] += g;
                d[img * c * hw + p] -= g;
            }
            Ok(d)
        }
    }

    #[test]
    fn the_adapter_runs_both_passes_for_every_label_type() {
        let dev = Device::Cpu;
        let x = Var::from_vec((0..24).map(|v| v as f32).collect(), (2, 3, 2, 2), &dev).unwrap();
        for dt in [DType::U8, DType::U32, DType::I64] {
            let t = Tensor::from_vec(vec![0u32, 1, 2, 1, 2, 2, 0, 1], (2, 2, 2), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let loss = x
                .as_tensor()
                .apply_op2(&t, FusedOp(Toy::default()))
                .unwrap();
            assert_eq!(loss.dims(), [0usize; 0]);
            assert_eq!(loss.to_scalar::<f32>().unwrap(), 36.0);
            let g = (loss * 2.0).unwrap().backward().unwrap();
            let gx = g
                .get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(gx[4..8], [0.0, 2.0, 0.0, 2.0]);
        }
    }

    #[test]
    fn bad_operands_are_rejected() {
        let dev = Device::Cpu;
        let t = Tensor::zeros((1, 2, 2), DType::U8, &dev).unwrap();
        let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &dev).unwrap();
        let e = x
            .apply_op2(&t, FusedOp(Toy::default()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("4 channels, the loss has 3 classes"), "{e}");
        let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        let e = x.apply_op2(&t.to_dtype(DType::F32).unwrap(), FusedOp(Toy::default()));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("expected U8, U32 or I64"));
        let xt = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let e = xt
            .apply_op2(&t, FusedOp(Toy::default()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a contiguous layout"), "{e}");
    }
}
