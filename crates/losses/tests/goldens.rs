//! Every loss against golden values and gradients from independent PyTorch implementations
//! (`tests/goldens/make_goldens.py`: torch ops from the papers' formulas, and
//! segmentation_models_pytorch for Dice, Tversky and Lovász-Softmax), through both the portable
//! (f64) and the fused (f32) paths.

mod common;

use candle_core::{DType, Device, Tensor};
use common::value_and_grad;
use recallseg_losses::class_weights::{class_balanced, inverse_frequency, median_frequency};
use recallseg_losses::LossBuilder;
use recallseg_losses::LovaszClasses;
use recallseg_losses::{
    BalancedCe, CrossEntropy, Dice, Focal, Kernel, Lovasz, Ohem, OhemSelection, PrecisionCe,
    RecallCe, SegLoss, SoftIou, Tversky, WeightMode, WeightedCe,
};
use serde_json::Value;

fn goldens() -> Value {
    let text = include_str!("goldens/goldens.json");
    serde_json::from_str(text).expect("goldens.json parses")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn build(name: &str, params: &Value, c: usize, k: Kernel) -> Box<dyn SegLoss> {
    let counts = || -> Vec<u64> {
        params["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let p = |key: &str| params[key].as_f64().unwrap();
    match name {
        "cross_entropy" => Box::new(CrossEntropy::new(c).with_kernel(k)),
        "cross_entropy_weighted" => {
            let w: Vec<f64> = f64s(&params["class_weights"]);
            Box::new(
                CrossEntropy::new(c)
                    .with_kernel(k)
                    .with_class_weights(w)
                    .unwrap(),
            )
        }
        "weighted_ce_median" => Box::new(
            WeightedCe::from_counts(&counts(), WeightMode::MedianFrequency)
                .unwrap()
                .with_kernel(k),
        ),
        "weighted_ce_inverse" => Box::new(
            WeightedCe::from_counts(&counts(), WeightMode::InverseFrequency)
                .unwrap()
                .with_kernel(k),
        ),
        "balanced_ce" => Box::new(
            BalancedCe::from_counts(&counts(), None)
                .unwrap()
                .with_kernel(k),
        ),
        "recall_ce" | "recall_ce_paper_code" => Box::new(RecallCe::new(c).with_kernel(k)),
        "precision_ce" => Box::new(PrecisionCe::new(c).with_kernel(k)),
        "focal_g1" | "focal_g2" => {
            Box::new(Focal::new(c).with_gamma(p("gamma")).unwrap().with_kernel(k))
        }
        "ohem_ratio" => Box::new(
            Ohem::new(c)
                .with_selection(OhemSelection::KeepRatio(p("keep_ratio")))
                .unwrap()
                .with_kernel(k),
        ),
        "ohem_threshold" => Box::new(
            Ohem::new(c)
                .with_selection(OhemSelection::Threshold(p("threshold")))
                .unwrap()
                .with_kernel(k),
        ),
        "soft_iou" => Box::new(SoftIou::new(c).with_kernel(k)),
        "dice" => Box::new(Dice::new(c).with_kernel(k)),
        "tversky" => Box::new(
            Tversky::new(c)
                .with_alpha_beta(p("alpha"), p("beta"))
                .unwrap()
                .with_kernel(k),
        ),
        "lovasz" | "lovasz_all" => Box::new(
            Lovasz::new(c)
                .with_classes(if params["present_only"].as_bool().unwrap() {
                    LovaszClasses::Present
                } else {
                    LovaszClasses::All
                })
                .with_kernel(k),
        ),
        other => panic!("golden case {other} has no loss"),
    }
}

#[test]
fn losses_match_pytorch_goldens() {
    let g = goldens();
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 33, "all golden cases present");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dims: Vec<usize> = case["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        let x = Tensor::from_vec(f64s(&case["logits"]), (n, c, h, w), &Device::Cpu).unwrap();
        let t: Vec<u8> = case["target"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        let t = Tensor::from_vec(t, (n, h, w), &Device::Cpu).unwrap();
        let want_v = case["value"].as_f64().unwrap();
        let want_g = f64s(&case["grad"]);
        let f32_ref = case["reference_dtype"].as_str() == Some("float32");
        for k in [Kernel::Portable, Kernel::Fused] {
            let xx = if k == Kernel::Fused {
                x.to_dtype(DType::F32).unwrap()
            } else {
                x.clone()
            };
            let (v, gr) = value_and_grad(build(name, &case["params"], c, k).as_mut(), &xx, &t);
            // Class weights travel as f32 (the API's type): 1e-7 relative for weighted cases.
            let f32_weights = case["params"].get("counts").is_some();
            let tol = match (k, f32_ref, f32_weights) {
                (Kernel::Portable, false, false) => 1e-10,
                (Kernel::Portable, false, true) => 1e-7,
                _ => 2e-6,
            };
            assert!(
                (v - want_v).abs() <= tol * want_v.abs().max(1.0),
                "{name} {k:?}: value {v} vs golden {want_v}"
            );
            let d = common::max_abs_diff(&gr, &want_g);
            assert!(
                d <= tol,
                "{name} {k:?}: gradient differs from golden by {d:e}"
            );
        }
    }
}

#[test]
fn class_weights_match_the_papers_numpy_code() {
    let g = goldens();
    let w = &g["class_weights"];
    let counts: Vec<u64> = w["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let cb: Vec<u64> = w["counts_balanced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // The weights are f64, not rounded to f32: equal to numpy's to a few ulps.
    let check = |got: Vec<f64>, want: Vec<f64>, what: &str| {
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-14 * b.abs().max(1.0),
                "{what}: {got:?} vs {want:?}"
            );
        }
    };
    check(
        median_frequency(&counts).unwrap(),
        f64s(&w["median_frequency"]),
        "median",
    );
    check(
        inverse_frequency(&counts).unwrap(),
        f64s(&w["inverse_frequency"]),
        "inverse",
    );
    check(
        class_balanced(&cb, None).unwrap(),
        f64s(&w["class_balanced"]),
        "balanced",
    );
    check(
        class_balanced(&cb, Some(0.9)).unwrap(),
        f64s(&w["class_balanced_beta_0.9"]),
        "balanced 0.9",
    );
}
