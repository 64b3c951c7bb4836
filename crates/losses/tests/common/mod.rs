//! Helpers shared by the integration tests: deterministic random inputs, autograd gradients and
//! central finite differences.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recallseg_losses::SegLoss;

/// Random logits `(n, c, h, w)` in f64 with spread `scale`.
pub(crate) fn logits(seed: u64, dims: (usize, usize, usize, usize), scale: f64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let len = dims.0 * dims.1 * dims.2 * dims.3;
    let v: Vec<f64> = (0..len).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Random labels `(n, h, w)` in `0..used` with a fraction `ignored` set to 255.
pub(crate) fn labels(seed: u64, dims: (usize, usize, usize), used: u8, ignored: f64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let len = dims.0 * dims.1 * dims.2;
    let v: Vec<u8> = (0..len)
        .map(|_| {
            if rng.random_bool(ignored) {
                255
            } else {
                rng.random_range(0..used)
            }
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Loss value and gradient with respect to the logits through candle's autograd.
pub(crate) fn value_and_grad(loss: &mut dyn SegLoss, x: &Tensor, t: &Tensor) -> (f64, Vec<f64>) {
    let var = Var::from_tensor(x).unwrap();
    let l = loss.forward(var.as_tensor(), t).unwrap();
    assert_eq!(l.dims(), &[] as &[usize], "a loss is a scalar");
    let grads = l.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("the loss must reach the logits")
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    (scalar(&l), g)
}

/// A scalar tensor as f64.
pub(crate) fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Central finite differences (f64 logits) of a freshly built loss.
pub(crate) fn finite_diff(
    make: &dyn Fn() -> Box<dyn SegLoss>,
    x: &Tensor,
    t: &Tensor,
    h: f64,
) -> Vec<f64> {
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let dims = x.dims().to_vec();
    let eval = |v: Vec<f64>| -> f64 {
        let xt = Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).unwrap();
        scalar(&make().forward(&xt, t).unwrap())
    };
    (0..base.len())
        .map(|i| {
            let mut p = base.clone();
            p[i] += h;
            let mut m = base.clone();
            m[i] -= h;
            (eval(p) - eval(m)) / (2.0 * h)
        })
        .collect()
}

/// Max absolute difference.
pub(crate) fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Checks autograd against finite differences for a loss on f64 logits (portable path).
pub(crate) fn check_gradient(
    make: &dyn Fn() -> Box<dyn SegLoss>,
    x: &Tensor,
    t: &Tensor,
    tol: f64,
) {
    let (_, g) = value_and_grad(make().as_mut(), x, t);
    let fd = finite_diff(make, x, t, 1e-6);
    let d = max_abs_diff(&g, &fd);
    let scale = fd.iter().map(|v| v.abs()).fold(0.0, f64::max);
    assert!(
        scale > 0.0,
        "gradient is identically zero: test cannot fail"
    );
    assert!(
        d < tol,
        "autograd vs finite differences: max |diff| = {d:e} (max |fd| {scale:e})"
    );
}

/// Value and gradient of the same inputs through the fused (f32) and portable (f64) paths;
/// asserts they agree within `tol`.
pub(crate) fn check_fused_matches_portable(
    make: &dyn Fn(recallseg_losses::Kernel) -> Box<dyn SegLoss>,
    x64: &Tensor,
    t: &Tensor,
    tol: f64,
) {
    // Round the logits to f32 first so both paths see the same numbers.
    let x32 = x64.to_dtype(DType::F32).unwrap();
    let x64r = x32.to_dtype(DType::F64).unwrap();
    let (vp, gp) = value_and_grad(make(recallseg_losses::Kernel::Portable).as_mut(), &x64r, t);
    let (vf, gf) = value_and_grad(make(recallseg_losses::Kernel::Fused).as_mut(), &x32, t);
    assert!(
        (vp - vf).abs() < tol * vp.abs().max(1.0),
        "values: portable {vp} fused {vf}"
    );
    let d = max_abs_diff(&gp, &gf);
    assert!(d < tol, "gradients differ by {d:e}");
}
