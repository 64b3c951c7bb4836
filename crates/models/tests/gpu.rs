//! The model on a CUDA device against the CPU (issue 13, item 2): logits of a training-mode and an
//! evaluation-mode forward pass, the gradient of every trainable parameter and the updated
//! BatchNorm running statistics, for DeepLabV3 and DeepLabV3+ at output stride 8 and 16 with
//! dense and depthwise-separable heads (and segmentation_models_pytorch's layout), in `f32`, on a
//! thin ResNet-18 and a tiny batch.
//!
//! The tests need a CUDA device. Where there is none — the default build (no `cuda` feature),
//! which CI runs, or a `--features cuda` build on a machine without a GPU — each test prints
//! `skipped: no CUDA device (reason)` and passes. `RECALLSEG_REQUIRE_CUDA=1` (set by
//! `scripts/gpu-check.sh`) turns a missing device into a failure. `RECALLSEG_GPU_TESTS_ON_CPU=1`
//! is a CPU rehearsal: the "device" side runs on the CPU with the CPU custom ops switched off
//! (`CpuKernels::NONE`, candle's ops as on CUDA), so the comparison and its tolerances are
//! exercised without a GPU.
//!
//! # Tolerances
//! Both sides compute in `f32` with the same formulas; they differ in the order of the sums
//! (im2col/Winograd + `gemm` and the fused BatchNorm on the CPU; candle's CUDA convolution —
//! im2col + cuBLAS, or cuDNN with the `cudnn` feature — and composed BatchNorm ops on the GPU).
//! A sum of `k` terms in another order moves its result by up to `k·2⁻²⁴` relative (`k` ≤ 600
//! here: fan-in 64·9, batch statistics over 2·5·6 pixels); about 25 layers deep forward and
//! again backward, with training-mode BatchNorm dividing by batch standard deviations of a few
//! dozen values, the errors compound to about `1e-5`–`1e-4` relative. Hence:
//! * logits within `1e-4 · max|logits|`;
//! * each parameter's gradient within `1e-3 · max|its gradient| + 1e-5 · max|any gradient|`
//!   (the second term for tensors whose gradient is nearly zero, where only noise remains);
//! * running statistics within `1e-4 · max|statistic| + 1e-6`.
//!
//! TF32: candle runs `f32` matrix products in full `f32` (its `gemm_reduced_precision_f32`
//! switch is off by default and nothing in recallseg turns it on), but cuDNN's default math mode,
//! which candle's `cudnn` feature leaves in place, allows TF32 tensor-core convolutions on Ampere
//! and newer (H100/H200 included). TF32 keeps 10 mantissa bits (`2⁻¹¹ ≈ 5e-4` per product), so
//! a `cudnn` build without `NVIDIA_TF32_OVERRIDE=0` (which forbids TF32 process-wide) is held to
//! `3e-2` relative instead of the figures above; `scripts/gpu-check.sh` sets the override, so
//! the device check holds every build to the `f32` tolerances.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recallseg_models::ops::{with_cpu_kernels, CpuKernels};
use recallseg_models::ParamKind;
use recallseg_models::{Backbone, DeepLab, Head, ModelConfig};

/// The CUDA device, or `None` after printing why `test` is skipped (a panic instead when
/// `RECALLSEG_REQUIRE_CUDA=1`). The same helper sits in each crate's `tests/gpu.rs`, so that every
/// crate's tests build on their own.
///
/// `RECALLSEG_GPU_TESTS_ON_CPU=1` runs the test with the CPU standing in for the device: a
/// rehearsal of the test's plumbing (`scripts/gpu-check.sh --cpu`), not a GPU check.
fn cuda_or_skip(test: &str) -> Option<Device> {
    if std::env::var("RECALLSEG_GPU_TESTS_ON_CPU").as_deref() == Ok("1") {
        println!("{test}: rehearsal: the CPU (candle's ops) stands in for the CUDA device");
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

/// Whether convolutions may run in TF32 (see the module documentation).
fn tf32_possible() -> bool {
    candle_core::cuda::gemm_reduced_precision_f32()
        || (cfg!(feature = "cudnn") && std::env::var("NVIDIA_TF32_OVERRIDE").as_deref() != Ok("0"))
}

/// `(logits, gradient, gradient floor, statistics)` relative tolerances.
fn tolerances() -> (f64, f64, f64, f64) {
    if tf32_possible() {
        (3e-2, 3e-2, 1e-3, 3e-2)
    } else {
        (1e-4, 1e-3, 1e-5, 1e-4)
    }
}

/// Runs `f` as the device side: on the CPU rehearsal with candle's ops only.
fn on_device<R>(dev: &Device, f: impl FnOnce() -> R) -> R {
    if dev.is_cpu() {
        with_cpu_kernels(CpuKernels::NONE, f)
    } else {
        f()
    }
}

fn thin(head: Head, output_stride: usize, separable: bool) -> ModelConfig {
    ModelConfig {
        backbone: Backbone::Resnet18,
        head,
        output_stride,
        n_classes: 3,
        backbone_width: 4,
        head_channels: 8,
        low_level_channels: 4,
        separable,
        ..ModelConfig::default()
    }
}

fn random(seed: u64, shape: &[usize]) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn host(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Largest `|a - b|` and where it is.
fn max_diff(a: &[f64], b: &[f64]) -> (usize, f64) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |m, (k, d)| if d > m.1 || d.is_nan() { (k, d) } else { m },
        )
}

/// The model of `cfg` on the CPU and on `dev`, with the same parameters.
fn pair(cfg: &ModelConfig, dev: &Device) -> ((DeepLab, VarMap), (DeepLab, VarMap)) {
    let build = |d: &Device| {
        let vm = VarMap::new();
        let m = DeepLab::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, d)).unwrap();
        (m, vm)
    };
    let cpu = build(&Device::Cpu);
    let gpu = build(dev);
    let (a, b) = (cpu.0.named_vars(), gpu.0.named_vars());
    assert_eq!(a.len(), b.len());
    for (s, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.name, y.name);
        // Parameters the fill rule varies (initial BatchNorm statistics and affine parameters are
        // 0/1 and would hide mistakes in them).
        let t = match x.kind {
            ParamKind::Weight => x.var.as_tensor().clone(),
            ParamKind::BnAffine | ParamKind::BnStat => {
                let r = random(1000 + s as u64, x.var.dims());
                let base = if x.name.ends_with("weight") || x.name.ends_with("running_var") {
                    1.0
                } else {
                    0.0
                };
                (r * 0.2).unwrap().affine(1.0, base).unwrap()
            }
        };
        if x.kind != ParamKind::Weight {
            x.var.set(&t).unwrap();
        }
        y.var
            .set(&t.copy().unwrap().to_device(dev).unwrap())
            .unwrap();
    }
    (cpu, gpu)
}

/// Training-mode forward, backward of `Σ logits · r`, evaluation-mode forward; returns the
/// training logits, every trainable parameter's gradient (by name), the running statistics after
/// the step and the evaluation logits, all on the host.
#[allow(clippy::type_complexity)]
fn run(
    model: &DeepLab,
    x: &Tensor,
    r: &Tensor,
) -> (
    Vec<f64>,
    Vec<(String, Vec<f64>)>,
    Vec<(String, Vec<f64>)>,
    Vec<f64>,
) {
    let logits = model.forward_t_with(x, true, 11).unwrap();
    let grads = (&logits * r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let trainable: Vec<Var> = model.trainable_vars();
    let mut g = Vec::new();
    let mut stats = Vec::new();
    for nv in model.named_vars() {
        match nv.kind {
            ParamKind::BnStat => stats.push((nv.name.clone(), host(nv.var.as_tensor()))),
            _ => {
                assert!(trainable
                    .iter()
                    .any(|v| v.as_tensor().id() == nv.var.as_tensor().id()));
                let gt = grads
                    .get(nv.var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {}", nv.name));
                g.push((nv.name.clone(), host(gt)));
            }
        }
    }
    let eval = model.forward_t(x, false).unwrap();
    (host(&logits), g, stats, host(&eval))
}

fn compare(cfg: &ModelConfig, dev: &Device) {
    let (lt, gt, floor_t, st) = tolerances();
    let what = format!(
        "{:?} OS{} separable={} smp_aspp_conv={}",
        cfg.head, cfg.output_stride, cfg.separable, cfg.aspp_conv
    );
    let ((cpu, _vc), (gpu, _vg)) = pair(cfg, dev);
    let x = random(1, &[2, 3, 37, 45]);
    let r = random(2, &[2, 3, 37, 45]);
    let (l_c, g_c, s_c, e_c) = run(&cpu, &x, &r);
    let (l_g, g_g, s_g, e_g) = on_device(dev, || {
        run(&gpu, &x.to_device(dev).unwrap(), &r.to_device(dev).unwrap())
    });
    // The largest error as a fraction of its tolerance, per kind, printed for calibration.
    let mut worst = [0.0f64; 3];
    for (name, c, g) in [
        ("training logits", &l_c, &l_g),
        ("evaluation logits", &e_c, &e_g),
    ] {
        let scale = max_abs(c);
        assert!(scale > 0.0, "{what}: {name} all zero");
        let (k, d) = max_diff(c, g);
        worst[0] = worst[0].max(d / (lt * scale));
        assert!(
            d <= lt * scale,
            "{what}: {name}[{k}]: CPU {} device {} (max |logit| {scale:e}, tolerance {lt:e})",
            c[k],
            g[k]
        );
    }
    let global = g_c.iter().map(|(_, v)| max_abs(v)).fold(0.0, f64::max);
    assert!(global > 0.0, "{what}: every gradient is zero");
    assert_eq!(g_c.len(), g_g.len());
    for ((name, c), (_, g)) in g_c.iter().zip(&g_g) {
        let (k, d) = max_diff(c, g);
        let tol = gt * max_abs(c) + floor_t * global;
        worst[1] = worst[1].max(d / tol);
        assert!(
            d <= tol,
            "{what}: gradient of {name}[{k}]: CPU {} device {} (tolerance {tol:e})",
            c[k],
            g[k]
        );
    }
    for ((name, c), (_, g)) in s_c.iter().zip(&s_g) {
        let (k, d) = max_diff(c, g);
        let tol = st * max_abs(c) + 1e-6;
        worst[2] = worst[2].max(d / tol);
        assert!(
            d <= tol,
            "{what}: {name}[{k}] after the step: CPU {} device {}",
            c[k],
            g[k]
        );
    }
    println!(
        "{what}: largest error / tolerance: logits {:.3}, gradients {:.3}, statistics {:.3}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn deeplabv3_forward_and_backward_on_cuda_match_the_cpu() {
    let Some(dev) = cuda_or_skip("deeplabv3_forward_and_backward_on_cuda_match_the_cpu") else {
        return;
    };
    for os in [8, 16] {
        for separable in [false, true] {
            compare(&thin(Head::DeepLabV3, os, separable), &dev);
        }
    }
}

#[test]
fn deeplabv3plus_forward_and_backward_on_cuda_match_the_cpu() {
    let Some(dev) = cuda_or_skip("deeplabv3plus_forward_and_backward_on_cuda_match_the_cpu") else {
        return;
    };
    for os in [8, 16] {
        for separable in [false, true] {
            compare(&thin(Head::DeepLabV3Plus, os, separable), &dev);
        }
    }
    // segmentation_models_pytorch's layout: the separable convolution after the ASPP, one
    // decoder convolution, align_corners upsampling.
    compare(&thin(Head::DeepLabV3Plus, 16, true).smp_layout(), &dev);
}
