//! Helpers shared by the convolution tests (`conv2d.rs`, `depthwise_conv2d.rs`): deterministic
//! inputs, the value-and-gradients runner, the tolerance rule and the golden loader.
#![allow(dead_code)]

use candle_core::{Device, Tensor, Var};
use recallseg_models::ops::Conv2dGeometry;

/// The crate's test-value generator (xorshift values in [-1, 1)), the same file the unit tests
/// of the CPU kernels use.
#[path = "../../src/ops/test_values.rs"]
mod test_values;
pub(crate) use test_values::values;

/// A CPU tensor of [`values`].
pub(crate) fn tensor(dims: &[usize], seed: u64) -> Tensor {
    let len = dims.iter().product();
    Tensor::from_vec(values(len, seed), dims, &Device::Cpu).unwrap()
}

/// The elements of an `f32` tensor.
pub(crate) fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `max |a − b|`.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    to_vec(a)
        .iter()
        .zip(&to_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `max |a|`.
pub(crate) fn max_abs(a: &Tensor) -> f32 {
    to_vec(a).iter().map(|v| v.abs()).fold(0.0, f32::max)
}

/// Inner product of two tensors, in f64.
pub(crate) fn dot(a: &Tensor, b: &Tensor) -> f64 {
    to_vec(a)
        .iter()
        .zip(&to_vec(b))
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum()
}

/// A convolution entry point (`conv2d`, `conv2d_candle`).
pub(crate) type ConvFn =
    fn(&Tensor, &Tensor, Option<&Tensor>, Conv2dGeometry) -> candle_core::Result<Tensor>;

/// Result and gradients of `sum(conv(x, w, b) * r)` through `f`: `(y, dx, dw, db)`.
pub(crate) type Outputs = (Tensor, Tensor, Tensor, Option<Tensor>);

/// Runs `f` on `(x, w, b)` and back-propagates `sum(y · r)`.
pub(crate) fn run(
    f: ConvFn,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    r: &Tensor,
    g: Conv2dGeometry,
) -> candle_core::Result<Outputs> {
    let x = Var::from_tensor(x)?;
    let w = Var::from_tensor(w)?;
    let b = b.map(Var::from_tensor).transpose()?;
    let y = f(
        x.as_tensor(),
        w.as_tensor(),
        b.as_ref().map(|b| b.as_tensor()),
        g,
    )?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let gx = grads.get(x.as_tensor()).expect("input gradient").clone();
    let gw = grads.get(w.as_tensor()).expect("weight gradient").clone();
    let gb = b.map(|b| grads.get(b.as_tensor()).expect("bias gradient").clone());
    Ok((y, gx, gw, gb))
}

/// Tolerance for sums of `k` products of values of magnitude ≤ 1 compared with `reference`.
pub(crate) fn tol(reference: &Tensor, k: usize) -> f32 {
    3e-7 * (1.0 + max_abs(reference)) * (k as f32).sqrt().max(4.0)
}

/// `got` within [`tol`] of `want`.
pub(crate) fn assert_close(what: &str, label: &str, got: &Tensor, want: &Tensor, k: usize) {
    assert_eq!(got.dims(), want.dims(), "{what} shape, {label}");
    let (d, t) = (max_abs_diff(got, want), tol(want, k));
    assert!(d <= t, "{what}, {label}: max |difference| {d} > {t}");
}

/// The tensors of a golden file in `tests/conv2d_golden/`.
pub(crate) fn golden(file: &str) -> std::collections::HashMap<String, Tensor> {
    let path = format!("{}/tests/conv2d_golden/{file}", env!("CARGO_MANIFEST_DIR"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("golden file {path} (see the make_*golden.py scripts): {e}"))
}
