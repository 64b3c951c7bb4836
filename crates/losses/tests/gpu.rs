//! Every loss on a CUDA device against the CPU path (issue 13, item 2): value, gradient with
//! respect to the logits, the per-class weights of the step and the state carried across steps,
//! in `f32`, on tiny inputs.
//!
//! The tests need a CUDA device. Where there is none — the default build (no `cuda` feature),
//! which CI runs, or a `--features cuda` build on a machine without a GPU — each test prints
//! `skipped: no CUDA device (reason)` and passes. With `RECALLSEG_REQUIRE_CUDA=1` (set by
//! `scripts/gpu-check.sh`) a missing device fails the test instead, so a device check cannot pass
//! by skipping.
//!
//! # Tolerances
//! The CPU side is what training on the CPU runs (`Kernel::Auto`: the fused CPU kernels, `f32`);
//! the CUDA side is the portable candle-ops path in `f32` (the fused kernels are CPU custom ops).
//! No matrix product is involved, so TF32 plays no part here. The two differ by
//! * the order of the `f32` reductions (≤ 2·5·6·7 = 420 terms per sum: a relative error of at
//!   most `420·2⁻²⁴ ≈ 2.5e-5` in the worst case, about `√420·2⁻²⁴ ≈ 1.2e-6` typically), and
//! * the fused kernels' own `exp`, which `tests/fused_paths.rs`, `ce_family.rs` and `region.rs`
//!   hold to `2e-6` (absolute, on values and gradients) from the exact `f64` result.
//!
//! Hence values must agree within `2e-5 · max(1, |v|) + 2e-6` and every gradient element within
//! `2e-5 · max|g| + 2e-6` (the CPU gradient's largest element sets the scale); the per-class
//! weights and the moving-average state, which are ratios of counts or of sums of
//! probabilities, within `2e-5` absolute (NaN where the CPU has NaN).

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recallseg_losses::{LossConfig, LossContext, SegLoss, LOSS_NAMES};

/// The CUDA device, or `None` after printing why `test` is skipped (a panic instead when
/// `RECALLSEG_REQUIRE_CUDA=1`). The same helper sits in each crate's `tests/gpu.rs`, so that every
/// crate's tests build on their own.
///
/// `RECALLSEG_GPU_TESTS_ON_CPU=1` runs the test with the CPU standing in for the device (the
/// portable path there, see [`step`]): a rehearsal (`scripts/gpu-check.sh --cpu`), not a GPU
/// check.
fn cuda_or_skip(test: &str) -> Option<Device> {
    if std::env::var("RECALLSEG_GPU_TESTS_ON_CPU").as_deref() == Ok("1") {
        println!("{test}: rehearsal: the CPU stands in for the CUDA device");
        return Some(Device::Cpu);
    }
    let reason = if !candle_core::utils::cuda_is_available() {
        "recallseg built without the `cuda` feature".to_string()
    } else {
        match Device::new_cuda(0) {
            Ok(d) => return Some(d),
            // The first line: candle may append a backtrace.
            Err(e) => e.to_string().lines().next().unwrap_or_default().to_string(),
        }
    };
    assert!(
        std::env::var("RECALLSEG_REQUIRE_CUDA").as_deref() != Ok("1"),
        "{test}: RECALLSEG_REQUIRE_CUDA=1 but there is no CUDA device ({reason})"
    );
    println!("{test}: skipped: no CUDA device ({reason})");
    None
}

const DIMS: (usize, usize, usize, usize) = (2, 5, 6, 7);
const VALUE_RTOL: f64 = 2e-5;
const GRAD_RTOL: f64 = 2e-5;
const ATOL: f64 = 2e-6;
const WEIGHT_ATOL: f64 = 2e-5;

/// Random `f32` logits in `[-3, 3)` on the CPU.
fn logits(seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (n, c, h, w) = DIMS;
    let v: Vec<f32> = (0..n * c * h * w)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    Tensor::from_vec(v, DIMS, &Device::Cpu).unwrap()
}

/// Random `u8` labels in `0..used` with about 10 % set to the ignore index 255.
fn labels(seed: u64, used: u8) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let (n, _, h, w) = DIMS;
    let v: Vec<u8> = (0..n * h * w)
        .map(|_| {
            if rng.random_bool(0.1) {
                255
            } else {
                rng.random_range(0..used)
            }
        })
        .collect();
    Tensor::from_vec(v, (n, h, w), &Device::Cpu).unwrap()
}

/// What one step of a loss gives, copied to the host.
struct Step {
    value: f64,
    grad: Vec<f64>,
    weights: Option<Vec<f32>>,
    state: Option<Vec<f32>>,
}

/// One step of `loss` on `(x, t)`. On the CPU rehearsal's "device" side the logits are handed
/// over as a strided (non-contiguous) view of the same values, which makes the loss take its
/// portable candle-ops path, the one CUDA runs: the rehearsal then compares the fused CPU kernels
/// with the portable path in `f32`, a real check of the tolerances.
fn step(loss: &mut dyn SegLoss, x: &Tensor, t: &Tensor, strided: bool) -> Step {
    let var = Var::from_tensor(x).unwrap();
    let logits = if strided {
        let v = var
            .as_tensor()
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap();
        let v = v.transpose(2, 3).unwrap();
        assert!(!v.is_contiguous());
        v
    } else {
        var.as_tensor().clone()
    };
    let out = loss.forward_output(&logits, t).unwrap();
    let grads = out.loss.backward().unwrap();
    let grad = grads
        .get(var.as_tensor())
        .expect("the loss must reach the logits")
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let value = out
        .loss
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    Step {
        value,
        grad,
        weights: out.class_weights,
        state: loss.state(),
    }
}

fn close_f32(what: &str, cpu: &Option<Vec<f32>>, gpu: &Option<Vec<f32>>) {
    match (cpu, gpu) {
        (None, None) => {}
        (Some(c), Some(g)) => {
            assert_eq!(c.len(), g.len(), "{what}: lengths");
            for (k, (a, b)) in c.iter().zip(g).enumerate() {
                assert!(
                    (a.is_nan() && b.is_nan()) || (a - b).abs() as f64 <= WEIGHT_ATOL,
                    "{what}[{k}]: CPU {a} CUDA {b}"
                );
            }
        }
        _ => panic!("{what}: CPU {cpu:?} but CUDA {gpu:?}"),
    }
}

/// Non-default parameters that change the computation, as in a trainer config's `[loss]`.
const VARIANTS: &[&str] = &[
    "name = 'cross_entropy'\nlabel_smoothing = 0.1",
    "name = 'weighted_ce'\nmode = 'inverse_frequency'",
    "name = 'focal'\ngamma = 2.0",
    "name = 'focal'\nalpha = [0.25, 0.5, 1.0, 1.0, 0.75]",
    "name = 'ohem'\nthreshold = 0.6",
    "name = 'ohem'\nthreshold = 0.6\nmin_kept = 10",
    "name = 'lovasz'\npresent_only = false",
    "name = 'lovasz'\nper_image = true",
    "name = 'dice'\nsmooth = 1.0\nlog_loss = true",
    "name = 'tversky'\nclasses = [0, 2, 4]",
    "name = 'jaccard'\nsmooth = 1.0",
    "name = 'recall_ce'\nema = 0.9",
    "name = 'recall_ce'\nvariant = 'paper_code'",
    "name = 'recall_ce'\nvariant = 'per_image'",
    "name = 'recall_ce'\nvariant = 'paper_loss_py'",
    "name = 'recall_ce'\nvariant = 'paper_loss_py_blend'",
    "name = 'recall_ce'\nlabel_smoothing = 0.1",
    "name = 'combined'\n[[terms]]\nweight = 0.5\nname = 'recall_ce'\n\
     [[terms]]\nweight = 0.5\nname = 'lovasz'",
];

/// The configurations checked: every name of [`LOSS_NAMES`] with its defaults, and
/// [`VARIANTS`].
fn configs() -> Vec<LossConfig> {
    let mut v: Vec<LossConfig> = LOSS_NAMES
        .iter()
        .map(|n| LossConfig::from_name(n.name).unwrap())
        .collect();
    v.extend(
        VARIANTS
            .iter()
            .map(|t| toml::from_str(t).unwrap_or_else(|e| panic!("{t}: {e}"))),
    );
    v
}

/// Runs two steps (different inputs; class 4 absent from the first) of `cfg` built for `ctx` on
/// the CPU and on `dev`, and compares them.
fn compare(cfg: &LossConfig, ctx: &LossContext, dev: &Device) {
    let mut cpu = cfg.build(ctx).unwrap();
    let mut gpu = cfg.build(ctx).unwrap();
    for (s, used) in [(0u64, 4u8), (1, 5)] {
        let what = format!("{cfg:?} (weights {:?}) step {s}", ctx.class_weights);
        let (x, t) = (logits(100 + s), labels(200 + s, used));
        let c = step(cpu.as_mut(), &x, &t, false);
        let g = step(
            gpu.as_mut(),
            &x.to_device(dev).unwrap(),
            &t.to_device(dev).unwrap(),
            dev.is_cpu(),
        );
        assert!(
            (c.value - g.value).abs() <= VALUE_RTOL * c.value.abs().max(1.0) + ATOL,
            "{what}: value CPU {} CUDA {}",
            c.value,
            g.value
        );
        let scale = c.grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            scale > 0.0,
            "{what}: zero gradient, the comparison means nothing"
        );
        let (k, d) = c
            .grad
            .iter()
            .zip(&g.grad)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0.0f64), |m, (k, d)| if d > m.1 { (k, d) } else { m });
        assert!(
            d <= GRAD_RTOL * scale + ATOL,
            "{what}: gradient element {k}: CPU {} CUDA {} (max |g| {scale:e})",
            c.grad[k],
            g.grad[k]
        );
        close_f32(&format!("{what}: class weights"), &c.weights, &g.weights);
        close_f32(&format!("{what}: state"), &c.state, &g.state);
    }
}

#[test]
fn every_loss_on_cuda_matches_the_cpu_path() {
    let Some(dev) = cuda_or_skip("every_loss_on_cuda_matches_the_cpu_path") else {
        return;
    };
    let mut ctx = LossContext::new(DIMS.1);
    ctx.class_pixel_counts = Some(vec![1000, 200, 50, 10, 5]);
    let configs = configs();
    assert!(configs.len() > LOSS_NAMES.len());
    for cfg in &configs {
        compare(cfg, &ctx, &dev);
    }
    // Static class weights (one zero: a class that contributes nothing) on every loss.
    ctx.class_weights = Some(vec![1.0, 0.5, 2.0, 0.0, 1.5]);
    for cfg in &configs {
        compare(cfg, &ctx, &dev);
    }
}

#[test]
fn u32_and_i64_targets_on_cuda_match_u8_ones() {
    let Some(dev) = cuda_or_skip("u32_and_i64_targets_on_cuda_match_u8_ones") else {
        return;
    };
    let ctx = LossContext::new(DIMS.1);
    let x = logits(7).to_device(&dev).unwrap();
    let t8 = labels(8, 5);
    for name in ["cross_entropy", "recall_ce", "lovasz", "dice"] {
        let cfg = LossConfig::from_name(name).unwrap();
        let base = step(
            cfg.build(&ctx).unwrap().as_mut(),
            &x,
            &t8.to_device(&dev).unwrap(),
            dev.is_cpu(),
        );
        for dt in [DType::U32, DType::I64] {
            let t = t8.to_dtype(dt).unwrap().to_device(&dev).unwrap();
            let s = step(cfg.build(&ctx).unwrap().as_mut(), &x, &t, dev.is_cpu());
            // The same device and arithmetic, only the label dtype differs: equal up to a
            // reduction order candle might pick differently (a few ulps).
            assert!(
                (s.value - base.value).abs() <= 1e-6 * base.value.abs().max(1.0),
                "{name} {dt:?}"
            );
            let d = s
                .grad
                .iter()
                .zip(&base.grad)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(d <= 1e-7, "{name} {dt:?}: gradients differ by {d:e}");
        }
    }
}
