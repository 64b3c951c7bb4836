//! Reproducer for the f32 training-gradient drift documented in docs/models.md ("Precision"):
//! builds ResNet-18 (OS 16) in f32 and f64 with identical weights (the parity fill formula),
//! runs one training-mode backward pass of `sum(layer4 · G)` and prints, per parameter, the
//! largest f32-vs-f64 gradient difference relative to the gradient's scale.
//!
//! ```text
//! cargo run --release -p recallseg-models --example f32_grad_check
//! NO_CONV_KERNEL=1 …   # candle's convolution instead of the CPU convolution op
//! NO_FUSED_BN=1 …      # the portable BatchNorm instead of the fused CPU op
//! RAYON_NUM_THREADS=4 …
//! WIDTH=16 H=32 W=48 …  # backbone width and input size (default 64, 64×80)
//! ```
//!
//! Differences of a few percent in some parameters come from ReLU masks that flip at
//! pre-activations within f32 rounding of zero (one flip moves its BatchNorm channel's gradient
//! by ~1/√M); which op's rounding triggers a flip varies with the configuration: see the
//! "Precision" section of docs/models.md.

#[path = "../tests/common/mod.rs"]
mod common;

use candle_core::DType;
use recallseg_models::ops::{with_cpu_kernels, CpuKernels};
use recallseg_models::ModelConfig;

fn main() {
    let kernels = CpuKernels {
        conv: std::env::var("NO_CONV_KERNEL").is_err(),
        batch_norm: std::env::var("NO_FUSED_BN").is_err(),
        ..CpuKernels::ALL
    };
    with_cpu_kernels(kernels, run);
}

fn run() {
    let env = |k: &str, d: usize| -> usize {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (width, h, w) = (env("WIDTH", 64), env("H", 64), env("W", 80));
    let cfg = ModelConfig {
        n_classes: 6,
        backbone_width: width,
        ..Default::default()
    };
    let mut runs = vec![];
    for dtype in [DType::F32, DType::F64] {
        let (m, _vm) = common::build_dtype(&cfg, dtype);
        common::fill_model(&m);
        let x = common::fill("input.deeplab", &[2, 3, h, w])
            .to_dtype(dtype)
            .unwrap();
        let f = m.backbone_features(&x, true).unwrap();
        let g = common::fill("grad.deeplab", f.out.dims())
            .to_dtype(dtype)
            .unwrap();
        let grads = (&f.out * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let flat = |t: &candle_core::Tensor| -> Vec<f64> {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let mut out = vec![("layer4 output".to_string(), flat(&f.out))];
        for nv in m.named_vars() {
            if let Some(t) = grads.get(&nv.var) {
                out.push((nv.name.clone(), flat(t)));
            }
        }
        runs.push(out);
    }
    for ((name, a), (_, b)) in runs[0].iter().zip(&runs[1]) {
        let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f64, f64::max)
            / scale;
        println!("{name}: {err:.1e}");
    }
}
