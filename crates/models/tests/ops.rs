//! Differentiable resize and max-pool: forward and gradient against PyTorch goldens
//! (`tests/golden/ops.json`, made by `make_goldens.py`) and gradients against central finite
//! differences in f64; the CPU f32 custom ops against their portable candle paths.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{assert_matches, fill64, golden};
use recallseg_models::ops::{max_pool2d, max_pool2d_portable};
use recallseg_models::ops::{resize_bilinear, resize_bilinear_portable};

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
        // f64 takes the portable (matmul) path.
        let y = resize_bilinear(&x, oh, ow, ac)?;
        assert_matches(
            &format!("resize {oh}x{ow} ac={ac}"),
            &y,
            &case["output"],
            1e-12,
        );
        // f32 on the CPU takes the direct custom op; the portable path in f32 for comparison.
        let x32 = x.to_dtype(DType::F32)?;
        let fast = resize_bilinear(&x32, oh, ow, ac)?;
        let slow = resize_bilinear_portable(&x32, oh, ow, ac)?;
        for (path, y) in [("cpu op", fast), ("portable", slow)] {
            let what = format!("resize {oh}x{ow} ac={ac} f32 {path}");
            assert_matches(&what, &y, &case["output"], 1e-6);
        }
    }
    Ok(())
}

/// Largest `|a − b|` relative to `max(1, max |b|)`.
fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale)
}

/// The CPU f32 op of `resize_bilinear` against the matmul path (`resize_bilinear_portable`) in
/// f32 and in f64: output and the input gradient of `sum(y · r)`.
#[test]
fn resize_cpu_op_agrees_with_matmul_path() -> Result<()> {
    // (input N, C, H, W), (output H, W)
    let cases: [([usize; 4], (usize, usize)); 10] = [
        ([2, 3, 5, 7], (11, 16)),   // upsampling, non-integer ratios
        ([2, 3, 12, 24], (48, 96)), // 4x, as the DeepLabV3+ decoder
        ([2, 3, 13, 17], (4, 6)),   // downsampling, non-integer ratios
        ([1, 2, 16, 9], (8, 3)),    // integer downsampling
        ([3, 2, 7, 9], (10, 5)),    // up in H, down in W
        ([2, 2, 1, 1], (3, 4)),     // 1x1 input
        ([2, 3, 5, 7], (1, 1)),     // 1x1 output
        ([1, 2, 1, 6], (4, 3)),     // one input row
        ([1, 1, 6, 1], (2, 5)),     // one input column
        ([2, 1, 4, 4], (4, 9)),     // width only
    ];
    for (shape, (oh, ow)) in cases {
        for ac in [false, true] {
            let what = format!("{shape:?} -> {oh}x{ow} ac={ac}");
            let x64 = fill64("input.rz", &shape);
            let x = Var::from_tensor(&x64.to_dtype(DType::F32)?)?;
            let fast = resize_bilinear(&x, oh, ow, ac)?;
            let slow = resize_bilinear_portable(&x, oh, ow, ac)?;
            let exact = resize_bilinear_portable(&x64, oh, ow, ac)?;
            assert_eq!(fast.dims(), &[shape[0], shape[1], oh, ow], "{what}");
            assert_eq!(fast.dtype(), DType::F32);
            let d = rel_diff(&fast, &slow)?;
            assert!(
                d <= 1e-6,
                "{what}: forward differs from matmul f32 by {d:.2e}"
            );
            let d = rel_diff(&fast, &exact)?;
            assert!(
                d <= 1e-6,
                "{what}: forward differs from matmul f64 by {d:.2e}"
            );

            let r64 = fill64("grad.rz", fast.dims());
            let r = r64.to_dtype(DType::F32)?;
            let gf = (&fast * &r)?.sum_all()?.backward()?;
            let gs = (&slow * &r)?.sum_all()?.backward()?;
            let x64v = Var::from_tensor(&x64)?;
            let ge = (resize_bilinear_portable(&x64v, oh, ow, ac)? * &r64)?
                .sum_all()?
                .backward()?;
            let gfast = gf.get(&x).expect("gradient reaches the input");
            assert_eq!(gfast.dims(), x.dims(), "{what}");
            let d = rel_diff(gfast, gs.get(&x).unwrap())?;
            assert!(
                d <= 1e-6,
                "{what}: gradient differs from matmul f32 by {d:.2e}"
            );
            let d = rel_diff(gfast, ge.get(&x64v).unwrap())?;
            assert!(
                d <= 1e-6,
                "{what}: gradient differs from matmul f64 by {d:.2e}"
            );
        }
    }
    Ok(())
}

#[test]
fn resize_cpu_op_takes_strided_input() -> Result<()> {
    // A transposed (non-contiguous) view gives the same result as its contiguous copy.
    let x = fill64("input.rzt", &[2, 3, 9, 6]).to_dtype(DType::F32)?;
    let xt = x.transpose(2, 3)?;
    assert!(!xt.is_contiguous());
    let a = resize_bilinear(&xt, 13, 4, false)?;
    let b = resize_bilinear(&xt.contiguous()?, 13, 4, false)?;
    assert_eq!(rel_diff(&a, &b)?, 0.0);
    Ok(())
}

#[test]
fn max_pool_matches_pytorch_forward_and_backward() -> Result<()> {
    let g = golden("ops.json");
    for case in g["max_pool"].as_array().unwrap() {
        let k = case["kernel"].as_u64().unwrap() as usize;
        let s = case["stride"].as_u64().unwrap() as usize;
        let p = case["padding"].as_u64().unwrap() as usize;
        // f64 takes the portable path, f32 on the CPU the custom op.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let x = Var::from_tensor(&maxpool_input().to_dtype(dtype)?)?;
            let y = max_pool2d(&x, k, s, p)?;
            let what = format!("max_pool k{k} s{s} p{p} {dtype:?}");
            assert_matches(&what, &y, &case["output"], tol);
            let gy = fill64("grad.maxpool", y.dims()).to_dtype(dtype)?;
            let grads = (y * gy)?.sum_all()?.backward()?;
            let gx = grads.get(&x).expect("gradient reaches the input");
            assert_matches(&format!("{what} grad"), gx, &case["grad_input"], tol);
        }
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

#[test]
fn max_pool_cpu_op_agrees_with_portable_path() -> Result<()> {
    let x = Var::from_tensor(&fill64("input.mp", &[2, 3, 11, 8]).to_dtype(DType::F32)?)?;
    for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0)] {
        let fast = max_pool2d(&x, k, s, p)?;
        let slow = max_pool2d_portable(&x, k, s, p)?;
        let d = (&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "forward k{k} s{s} p{p}");
        let g = fill64("grad.mp", fast.dims()).to_dtype(DType::F32)?;
        let gf = (&fast * &g)?.sum_all()?.backward()?;
        let gs = (&slow * &g)?.sum_all()?.backward()?;
        let d = (gf.get(&x).unwrap() - gs.get(&x).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d <= 1e-6, "backward k{k} s{s} p{p}: {d}");
    }
    Ok(())
}
