//! Differentiable resize and max-pool: forward and gradient against PyTorch goldens
//! (`tests/golden/ops.json`, made by `make_goldens.py`) and gradients against central finite
//! differences in f64.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{assert_matches, fill64, golden};
use recallseg_models::ops::max_pool::max_pool2d;
use recallseg_models::ops::resize::resize_bilinear;

fn maxpool_input() -> Tensor {
    // Quantised to quarters so that windows contain ties.
    fill64("input.maxpool", &[2, 3, 7, 9])
        .affine(4.0, 0.0)
        .unwrap()
        .round()
        .unwrap()
        .affine(0.25, 0.0)
        .unwrap()
}

#[test]
fn resize_matches_pytorch_interpolate() -> Result<()> {
    let g = golden("ops.json");
    let x = fill64("input.resize", &[2, 3, 5, 7]);
    for case in g["resize"].as_array().unwrap() {
        let size = case["size"].as_array().unwrap();
        let (oh, ow) = (
            size[0].as_u64().unwrap() as usize,
            size[1].as_u64().unwrap() as usize,
        );
        let ac = case["align_corners"].as_bool().unwrap();
        let y = resize_bilinear(&x, oh, ow, ac)?;
        assert_matches(
            &format!("resize {oh}x{ow} ac={ac}"),
            &y,
            &case["output"],
            1e-12,
        );
    }
    Ok(())
}

#[test]
fn max_pool_matches_pytorch_forward_and_backward() -> Result<()> {
    let g = golden("ops.json");
    for case in g["max_pool"].as_array().unwrap() {
        let k = case["kernel"].as_u64().unwrap() as usize;
        let s = case["stride"].as_u64().unwrap() as usize;
        let p = case["padding"].as_u64().unwrap() as usize;
        let x = Var::from_tensor(&maxpool_input())?;
        let y = max_pool2d(&x, k, s, p)?;
        let what = format!("max_pool k{k} s{s} p{p}");
        assert_matches(&what, &y, &case["output"], 1e-12);
        let gy = fill64("grad.maxpool", y.dims());
        let grads = (y * gy)?.sum_all()?.backward()?;
        let gx = grads.get(&x).expect("gradient reaches the input");
        assert_matches(&format!("{what} grad"), gx, &case["grad_input"], 1e-12);
    }
    Ok(())
}

/// Checks d(sum(f(x) · w))/dx against central differences, in f64.
fn finite_difference_check(x0: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
    let x = Var::from_tensor(x0)?;
    let y = f(&x)?;
    let w = fill64("grad.fd", y.dims());
    let grads = (&y * &w)?.sum_all()?.backward()?;
    let analytic: Vec<f64> = grads.get(&x).unwrap().flatten_all()?.to_vec1()?;
    let base: Vec<f64> = x0.flatten_all()?.to_vec1()?;
    let eps = 1e-6;
    let objective = |v: &[f64]| -> Result<f64> {
        let t = Tensor::from_vec(v.to_vec(), x0.dims(), &Device::Cpu)?;
        (f(&t)? * &w)?.sum_all()?.to_scalar::<f64>()
    };
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let numeric = (objective(&plus)? - objective(&minus)?) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
            "element {i}: analytic {} vs finite difference {numeric}",
            analytic[i]
        );
    }
    Ok(())
}

#[test]
fn resize_gradient_matches_finite_differences() -> Result<()> {
    let x = fill64("input.fd", &[1, 2, 4, 5]);
    for ac in [false, true] {
        finite_difference_check(&x, |t| resize_bilinear(t, 7, 3, ac))?;
        finite_difference_check(&x, |t| resize_bilinear(t, 2, 9, ac))?;
    }
    Ok(())
}

#[test]
fn max_pool_gradient_matches_finite_differences() -> Result<()> {
    // Distinct values (no ties), so the max is differentiable at x.
    let x = fill64("input.fd", &[1, 2, 7, 6]);
    finite_difference_check(&x, |t| max_pool2d(t, 3, 2, 1))?;
    finite_difference_check(&x, |t| max_pool2d(t, 2, 2, 0))?;
    Ok(())
}

#[test]
fn ops_work_in_f32() -> Result<()> {
    let x = fill64("input.resize", &[2, 3, 5, 7]).to_dtype(DType::F32)?;
    assert_eq!(resize_bilinear(&x, 10, 14, false)?.dims(), &[2, 3, 10, 14]);
    assert_eq!(max_pool2d(&x, 3, 2, 1)?.dims(), &[2, 3, 3, 4]);
    Ok(())
}
