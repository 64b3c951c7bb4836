//! The trainer on a CUDA device against the CPU (issue 13, item 2): optimiser steps (Adam, AdamW,
//! SGD with Nesterov momentum), a whole tiny training run, evaluation over a loader and
//! single-image prediction, in `f32`, on tiny shapes.
//!
//! The tests need a CUDA device. Where there is none — the default build (no `cuda` feature),
//! which CI runs, or a `--features cuda` build on a machine without a GPU — each test prints
//! `skipped: no CUDA device (reason)` and passes. `RECALLSEG_REQUIRE_CUDA=1` (set by
//! `scripts/gpu-check.sh`) turns a missing device into a failure. `RECALLSEG_GPU_TESTS_ON_CPU=1`
//! is a CPU rehearsal: the "device" side runs on the CPU (the optimisers' portable path, the
//! `cpu` device string), so the plumbing and tolerances are exercised without a GPU.
//!
//! # Tolerances
//! * Optimiser: both sides get bit-identical gradients (`r + θ`, one `f32` addition) and apply
//!   PyTorch's update formula in `f32`; only the evaluation order of a handful of elementwise
//!   operations (and the GPU's `sqrt`/division, correctly rounded or within 2 ulp) differs, so
//!   after two steps every parameter and state value agrees within `1e-6 · max|θ| + 1e-5 · lr`.
//! * Training run: the first logged loss is computed before any update, so it agrees like the
//!   model's forward pass and the loss (`crates/models/tests/gpu.rs`, `crates/losses/tests/gpu.rs`:
//!   `1e-4` relative). The second follows one Adam update, whose first step is close to
//!   `lr · sign(g)` per parameter: a gradient element at the level of `f32` noise may take the
//!   other sign on the other device, which moves that parameter by up to `2·lr`; `1e-2` relative
//!   bounds the effect on a loss of a thin model after one step at lr 1e-3 (and still catches a
//!   wrong update, which moves the loss by far more).
//! * Evaluation and prediction: logits within `1e-4 · max|logit|` (as the model's forward pass;
//!   TF32 — possible only with the `cudnn` feature and without `NVIDIA_TF32_OVERRIDE=0`, see the
//!   models test — raises it to `3e-2`). The argmax may only differ where the CPU's top two
//!   logits are closer than that tolerance (a near tie), and such pixels must stay under 1 %.

mod common;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use common::{quiet, tiny_config, tiny_dataset, train_losses};
use recallseg_data::png_io::RgbImage;
use recallseg_data::Split;
use recallseg_trainer::config::{OptimConfig, OptimKind};
use recallseg_trainer::eval::evaluate;
use recallseg_trainer::optim::{self, NamedVar, StepOutcome};
use recallseg_trainer::predict::{Predictor, PredictorOptions};

/// The CUDA device, or `None` after printing why `test` is skipped (a panic instead when
/// `RECALLSEG_REQUIRE_CUDA=1`). The same helper sits in each crate's `tests/gpu.rs`, so that every
/// crate's tests build on their own.
///
/// `RECALLSEG_GPU_TESTS_ON_CPU=1` runs the test with the CPU standing in for the device: a
/// rehearsal of the test's plumbing (`scripts/gpu-check.sh --cpu`), not a GPU check.
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

/// The `train.device` string of `dev`.
fn device_name(dev: &Device) -> &'static str {
    if dev.is_cpu() {
        "cpu"
    } else {
        "cuda:0"
    }
}

/// Logit tolerance relative to the largest logit (see the module documentation).
fn logit_rtol() -> f64 {
    let tf32 = candle_core::cuda::gemm_reduced_precision_f32()
        || (cfg!(feature = "cudnn") && std::env::var("NVIDIA_TF32_OVERRIDE").as_deref() != Ok("0"));
    if tf32 {
        3e-2
    } else {
        1e-4
    }
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

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| {
        if x.is_nan() || y.is_nan() {
            f64::INFINITY
        } else {
            m.max((x - y).abs())
        }
    })
}

/// Deterministic values in `[-1, 1)`.
fn values(seed: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut z = ((seed << 32) ^ i).wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

const SHAPES: [&[usize]; 3] = [&[8, 4, 3, 3], &[8], &[3, 8, 1, 1]];

/// Parameters on `dev` and the gradients of `Σ θ·r + ½ Σ θ²` (`r + θ`) at their current values.
fn params(dev: &Device) -> (Vec<NamedVar>, Vec<Tensor>) {
    let vars: Vec<NamedVar> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.iter().product();
            let t = Tensor::from_vec(values(i as u64, n), *s, dev).unwrap();
            NamedVar {
                name: format!("p{i}"),
                var: Var::from_tensor(&t).unwrap(),
            }
        })
        .collect();
    let r = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.iter().product();
            Tensor::from_vec(values(100 + i as u64, n), *s, dev).unwrap()
        })
        .collect();
    (vars, r)
}

fn grads(vars: &[NamedVar], r: &[Tensor]) -> GradStore {
    let mut loss: Option<Tensor> = None;
    for (v, r) in vars.iter().zip(r) {
        let t = v.var.as_tensor();
        let term = ((t * r).unwrap().sum_all().unwrap()
            + (t.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap())
        .unwrap();
        loss = Some(match loss {
            None => term,
            Some(l) => (l + term).unwrap(),
        });
    }
    loss.unwrap().backward().unwrap()
}

#[test]
fn optimiser_steps_on_cuda_match_the_cpu() {
    let Some(dev) = cuda_or_skip("optimiser_steps_on_cuda_match_the_cpu") else {
        return;
    };
    let lr = 1e-2;
    for (kind, weight_decay, nesterov) in [
        (OptimKind::Adam, 1e-2, false),
        (OptimKind::Adamw, 1e-2, false),
        (OptimKind::Sgd, 1e-2, true),
    ] {
        let cfg = OptimConfig {
            kind,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            momentum: 0.9,
            nesterov,
        };
        let (vc, rc) = params(&Device::Cpu);
        let (vg, rg) = params(&dev);
        let mut oc = optim::build(&cfg, vc.clone()).unwrap();
        let mut og = optim::build(&cfg, vg.clone()).unwrap();
        for step in 0..2 {
            assert_eq!(oc.step(&grads(&vc, &rc), lr).unwrap(), StepOutcome::Applied);
            assert_eq!(og.step(&grads(&vg, &rg), lr).unwrap(), StepOutcome::Applied);
            for (a, b) in vc.iter().zip(&vg) {
                let (x, y) = (host(a.var.as_tensor()), host(b.var.as_tensor()));
                let tol = 1e-6 * max_abs(&x) + 1e-5 * lr;
                let d = max_diff(&x, &y);
                assert!(
                    d <= tol,
                    "{kind:?} step {step}: {} differs by {d:e}",
                    a.name
                );
            }
            let ((sc, nc), (sg, ng)) = (oc.state(), og.state());
            assert_eq!(nc, ng);
            assert_eq!(sc.len(), sg.len(), "{kind:?}: state tensors");
            for (k, t) in &sc {
                let (x, y) = (host(t), host(&sg[k]));
                let d = max_diff(&x, &y);
                assert!(
                    d <= 1e-6 * max_abs(&x) + 1e-12,
                    "{kind:?} step {step}: state {k} differs by {d:e}"
                );
            }
        }
    }
}

#[test]
fn a_training_run_on_cuda_matches_the_cpu() {
    let Some(dev) = cuda_or_skip("a_training_run_on_cuda_matches_the_cpu") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_dataset(&data);
    let mut losses = Vec::new();
    for (name, device) in [("cpu", "cpu"), ("device", device_name(&dev))] {
        let out = tmp.path().join(name);
        let dev_opt = format!("train.device={device:?}");
        let cfg = tiny_config(&data, &out, &["train.iters=2", dev_opt.as_str()]);
        recallseg_trainer::train::train(&cfg, &quiet()).unwrap();
        assert!(
            out.join("last.safetensors").is_file(),
            "{name}: no checkpoint"
        );
        losses.push(train_losses(&out));
    }
    let (c, g) = (&losses[0], &losses[1]);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(
        c.iter().map(|s| s.0).collect::<Vec<_>>(),
        g.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for ((step, a), (_, b)) in c.iter().zip(g) {
        let tol = if *step <= 1 { 1e-4 } else { 1e-2 };
        assert!(a.is_finite() && b.is_finite());
        assert!(
            (a - b).abs() <= tol * a.abs().max(1.0),
            "step {step}: CPU loss {a} device loss {b}"
        );
    }
}

#[test]
fn evaluation_and_prediction_on_cuda_match_the_cpu() {
    let Some(dev) = cuda_or_skip("evaluation_and_prediction_on_cuda_match_the_cpu") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_dataset(&data);
    let out = tmp.path().join("run");
    let cfg = tiny_config(&data, &out, &["train.iters=2"]);
    recallseg_trainer::train::train(&cfg, &quiet()).unwrap();
    let open = |device: &Device| {
        Predictor::open(
            &out,
            &PredictorOptions {
                device: device.clone(),
                ..PredictorOptions::default()
            },
        )
        .unwrap()
    };
    let (pc, pg) = (open(&Device::Cpu), open(&dev));
    let rtol = logit_rtol();

    // Prediction of one image at a size other than the network's (both resizes on the path).
    let (w, h) = (50, 27);
    let image = RgbImage {
        data: (0..w * h * 3)
            .map(|i| ((i * 2_654_435_761) >> 7) as u8)
            .collect(),
        width: w,
        height: h,
    };
    let (lc, lg) = (
        pc.predict_logits(&image).unwrap(),
        pg.predict_logits(&image).unwrap(),
    );
    let c_dims = lc.dims().to_vec();
    assert_eq!(c_dims, lg.dims());
    let (xc, xg) = (host(&lc), host(&lg));
    let scale = max_abs(&xc);
    let d = max_diff(&xc, &xg);
    assert!(
        d <= rtol * scale,
        "prediction logits differ by {d:e} (max |logit| {scale:e})"
    );
    let (mc, mg) = (pc.predict(&image).unwrap(), pg.predict(&image).unwrap());
    let classes = c_dims[0];
    let hw = w * h;
    let mut flips = 0;
    for p in 0..hw {
        if mc.label[p] != mg.label[p] {
            let mut v: Vec<f64> = (0..classes).map(|k| xc[k * hw + p]).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            assert!(
                v[0] - v[1] <= 2.0 * rtol * scale,
                "pixel {p}: labels {} vs {} without a near tie",
                mc.label[p],
                mg.label[p]
            );
            flips += 1;
        }
    }
    assert!(
        flips * 100 <= hw,
        "{flips} of {hw} pixels predicted differently"
    );

    // Evaluation over the test split: the same pixels counted, the predictions equal but for
    // near ties.
    let ds = recallseg_trainer::data::open_split(&pc.config().data, Split::Test).unwrap();
    let loader = recallseg_trainer::data::eval_loader(&pc.config().data, ds, 2).unwrap();
    let ec = evaluate(pc.model(), &loader, &Device::Cpu, usize::MAX).unwrap();
    let eg = evaluate(pg.model(), &loader, &dev, usize::MAX).unwrap();
    assert!(ec.images > 0);
    assert_eq!(ec.images, eg.images);
    assert_eq!(ec.matrix.total(), eg.matrix.total());
    let (mut pixels, mut differ) = (0, 0);
    for (a, b) in ec.kept.iter().zip(&eg.kept) {
        assert_eq!(a.0, b.0);
        assert_eq!(a.2, b.2, "ground truth of item {}", a.0);
        pixels += a.3.len();
        differ += a.3.iter().zip(&b.3).filter(|(x, y)| x != y).count();
    }
    assert!(
        differ * 100 <= pixels,
        "{differ} of {pixels} evaluated pixels predicted differently"
    );
}
