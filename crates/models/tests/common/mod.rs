//! Shared helpers of the integration tests: the deterministic fill formula of
//! `tests/golden/make_goldens.py` (kept identical) and golden comparison.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use recallseg_models::{DeepLab, ModelConfig};
use serde_json::Value;

/// 64-bit FNV-1a hash of a string (the crate's parameter-seeding hash, copied: the fill formula of
/// `make_goldens.py` must not change with the crate's internals).
pub(crate) fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser (as in `make_goldens.py`).
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform `[0, 1)` values of the fill formula.
pub(crate) fn uniform(name: &str, n: usize) -> Vec<f64> {
    let h = fnv1a64(name);
    (0..n as u64)
        .map(|i| (splitmix64(h ^ i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64))
        .collect()
}

/// The value rule of `make_goldens.py::fill_value`, in f64 (rounded to f32 by the callers).
pub(crate) fn fill_f64(name: &str, shape: &[usize]) -> Vec<f64> {
    let n: usize = shape.iter().product();
    let u = uniform(name, n);
    let last = name.rsplit('.').next().unwrap_or(name);
    if name.starts_with("input") || name.starts_with("grad") {
        u.iter().map(|u| 2.0 * u - 1.0).collect()
    } else if last == "running_var" || (last == "weight" && shape.len() == 1) {
        u.iter().map(|u| 0.5 + u).collect()
    } else if last == "running_mean" || last == "bias" {
        u.iter().map(|u| 0.1 * (2.0 * u - 1.0)).collect()
    } else if last == "weight" && shape.len() == 4 {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        let s = (3.0 / fan_in).sqrt();
        u.iter().map(|u| (2.0 * u - 1.0) * s).collect()
    } else {
        panic!("no fill rule for {name} {shape:?}")
    }
}

/// The fill formula as an f32 tensor (PyTorch's `astype(float32)` rounding).
pub(crate) fn fill(name: &str, shape: &[usize]) -> Tensor {
    let v: Vec<f32> = fill_f64(name, shape).iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The fill formula as an f64 tensor of f32-rounded values (for f64 reference computations).
pub(crate) fn fill64(name: &str, shape: &[usize]) -> Tensor {
    fill(name, shape).to_dtype(DType::F64).unwrap()
}

/// Builds a model in f32 on the CPU.
pub(crate) fn build(cfg: &ModelConfig) -> (DeepLab, VarMap) {
    build_dtype(cfg, DType::F32)
}

/// Builds a model in `dtype` on the CPU.
pub(crate) fn build_dtype(cfg: &ModelConfig, dtype: DType) -> (DeepLab, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let model = DeepLab::new(cfg, vb).unwrap();
    (model, varmap)
}

/// Sets every parameter of `model` by the fill formula.
pub(crate) fn fill_model(model: &DeepLab) {
    for nv in model.named_vars() {
        let t = fill(&nv.name, nv.var.dims())
            .to_dtype(nv.var.dtype())
            .unwrap();
        nv.var.set(&t).unwrap();
    }
}

/// Reads a golden JSON file of `tests/golden`.
pub(crate) fn golden(file: &str) -> Value {
    let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
    let s = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&s).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Compares `t` with a golden summary (`shape`, `step`, `values`, `sum`, `abs_sum`): every
/// sampled value within `tol · max(1, max |ref|)`, the sums within `tol` relative to `abs_sum`.
/// Returns the largest sampled error relative to that scale.
pub(crate) fn assert_matches(what: &str, t: &Tensor, summary: &Value, tol: f64) -> f64 {
    let shape: Vec<usize> = summary["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(t.dims(), shape.as_slice(), "{what}: shape");
    let step = summary["step"].as_u64().unwrap() as usize;
    let want = f64s(&summary["values"]);
    let got: Vec<f64> = t
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (k, w) in want.iter().enumerate() {
        let g = got[k * step];
        let err = (g - w).abs() / scale;
        worst = worst.max(err);
        assert!(
            err <= tol,
            "{what}: element {} is {g}, reference {w} (relative error {err:.2e} > {tol:.0e})",
            k * step
        );
    }
    let abs_sum = summary["abs_sum"].as_f64().unwrap();
    let sum: f64 = got.iter().sum();
    let asum: f64 = got.iter().map(|v| v.abs()).sum();
    let ref_sum = summary["sum"].as_f64().unwrap();
    assert!(
        (sum - ref_sum).abs() <= tol * abs_sum.max(1.0),
        "{what}: sum {sum} vs reference {ref_sum}"
    );
    assert!(
        (asum - abs_sum).abs() <= tol * abs_sum.max(1.0),
        "{what}: abs sum {asum} vs reference {abs_sum}"
    );
    worst
}

/// The model variable called `name` (panics naming it when there is none).
pub(crate) fn var_named(model: &DeepLab, name: &str) -> candle_core::Var {
    model
        .named_vars()
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
        .var
        .clone()
}
