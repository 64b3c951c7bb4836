//! `relu(a + b)`: the residual join of every ResNet block, as one differentiable op.
//!
//! Composed from candle ops it costs two full passes forward (add, then ReLU) and, backward,
//! candle's ReLU gradient (a comparison, a cast and a product, each allocating) before the add's
//! gradient. On the CPU in `f32` this custom op does one pass each way: forward writes
//! `y = max(a + b, 0)`; backward computes `g·[y > 0]` once and hands it to both inputs. The
//! gradient at exactly `a + b = 0` is 0, as PyTorch's `threshold_backward` (candle's own ReLU
//! gradient is 1 there). Other devices and dtypes use the candle composition.

use crate::ops::buffers::zeroed;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use recallseg_kernels::storage::contiguous_f32;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `max(a + b, 0)` element-wise for tensors of the same shape; differentiable in both.
///
/// # Errors
/// Shapes, dtypes or devices that differ.
pub(crate) fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("add_relu: shapes differ, {:?} and {:?}", a.dims(), b.dims())
    }
    if a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu);
    }
    (a + b)?.relu()
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "recallseg-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (
            contiguous_f32(s1, l1, "add_relu: a")?,
            contiguous_f32(s2, l2, "add_relu: b")?,
        );
        let mut y = zeroed(a.len());
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                    *y = (a + b).max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&grad_res.contiguous()?, &ReluMask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `g·[y > 0]` from the op's output `y` and incoming gradient `g`.
struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "recallseg-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (
            contiguous_f32(s1, l1, "add_relu backward: output")?,
            contiguous_f32(s2, l2, "add_relu backward: gradient")?,
        );
        let mut out = zeroed(y.len());
        out.par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (y, g))| {
                for ((o, y), g) in o.iter_mut().zip(y).zip(g) {
                    *o = if *y > 0.0 { *g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values::values;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_candle_composition_value_and_gradients() {
        let dev = Device::Cpu;
        // More than one parallel chunk, and a ragged tail.
        let shape = (2, 3, 101, 113);
        let n = 2 * 3 * 101 * 113;
        let a = Var::from_vec(values(n, 1), shape, &dev).unwrap();
        let b = Var::from_vec(values(n, 2), shape, &dev).unwrap();
        let r = Tensor::from_vec(values(n, 3), shape, &dev).unwrap();
        let fused = add_relu(&a, &b).unwrap();
        let reference = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        let diff = (&fused - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let gf = (&fused * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = (&reference * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&a, &b] {
            let (x, y) = (gf.get(v).unwrap(), gr.get(v).unwrap());
            let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    #[test]
    fn gradient_at_zero_is_zero_as_in_pytorch_and_shapes_are_checked() {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, -2.0, 0.5, 3.0], &dev).unwrap();
        let b = Var::new(&[-1f32, 1.0, 0.5, -4.0], &dev).unwrap();
        let y = add_relu(&a, &b).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 1.0, 0.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            assert_eq!(
                g.get(v).unwrap().to_vec1::<f32>().unwrap(),
                [0.0, 0.0, 1.0, 0.0]
            );
        }
        let c = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let e = add_relu(&a, &c).unwrap_err().to_string();
        assert!(e.contains("shapes differ"), "{e}");
    }
}
