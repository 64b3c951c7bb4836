//! Cross-entropy family: gradients vs finite differences (f64, portable path), fused kernel vs
//! portable path, hand-worked values and the paper's RecallCE identities.
#![allow(clippy::needless_range_loop)]

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use recallseg_losses::LossBuilder;
use recallseg_losses::{
    BalancedCe, CrossEntropy, Focal, Kernel, Ohem, OhemSelection, PrecisionCe, RecallCe, SegLoss,
    WeightMode, WeightedCe,
};

const DIMS: (usize, usize, usize, usize) = (2, 4, 3, 5);
const LDIMS: (usize, usize, usize) = (2, 3, 5);

/// Inputs with ~20% ignored pixels and class 3 absent from the target.
fn inputs(seed: u64) -> (Tensor, Tensor) {
    (logits(seed, DIMS, 3.0), labels(seed, LDIMS, 3, 0.2))
}

type Make = Box<dyn Fn(Kernel) -> Box<dyn SegLoss>>;

fn all_losses() -> Vec<(&'static str, Make)> {
    let w = vec![0.5f64, 2.0, 1.0, 3.0];
    vec![
        (
            "ce",
            Box::new(|k| Box::new(CrossEntropy::new(4).with_kernel(k))),
        ),
        (
            "ce_weighted",
            Box::new(move |k| {
                Box::new(
                    CrossEntropy::new(4)
                        .with_kernel(k)
                        .with_class_weights(w.clone())
                        .unwrap(),
                )
            }),
        ),
        (
            "wce_median",
            Box::new(|k| {
                Box::new(
                    WeightedCe::from_counts(&[100, 10, 40, 0], WeightMode::MedianFrequency)
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "balanced",
            Box::new(|k| {
                Box::new(
                    BalancedCe::from_counts(&[100, 10, 40, 3], None)
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "recall",
            Box::new(|k| Box::new(RecallCe::new(4).with_kernel(k))),
        ),
        (
            "precision",
            Box::new(|k| Box::new(PrecisionCe::new(4).with_kernel(k))),
        ),
        (
            "focal_g1",
            Box::new(|k| Box::new(Focal::new(4).with_gamma(1.0).unwrap().with_kernel(k))),
        ),
        (
            "focal_g2",
            Box::new(|k| Box::new(Focal::new(4).with_gamma(2.0).unwrap().with_kernel(k))),
        ),
        (
            "focal_g0.5",
            Box::new(|k| Box::new(Focal::new(4).with_gamma(0.5).unwrap().with_kernel(k))),
        ),
        (
            "ohem_ratio",
            Box::new(|k| {
                Box::new(
                    Ohem::new(4)
                        .with_selection(OhemSelection::KeepRatio(0.7))
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "ohem_threshold",
            Box::new(|k| {
                Box::new(
                    Ohem::new(4)
                        .with_selection(OhemSelection::Threshold(0.5))
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
    ]
}

#[test]
fn gradients_match_finite_differences() {
    for seed in [1u64, 2] {
        let (x, t) = inputs(seed);
        for (name, make) in all_losses() {
            let mk = || make(Kernel::Portable);
            eprintln!("{name} seed {seed}");
            check_gradient(&mk, &x, &t, 1e-6);
        }
    }
}

/// A NaN or infinite logit must not vanish from the loss: the automatic choice falls back to the
/// portable path (which propagates it, like PyTorch), and a forced fused kernel refuses.
#[test]
fn non_finite_logits_give_a_non_finite_loss() {
    let (x, t) = inputs(5);
    let x = x.to_dtype(DType::F32).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[7] = bad;
        let xb = Tensor::from_vec(v, x.shape(), x.device()).unwrap();
        for (name, make) in all_losses() {
            let loss = make(Kernel::Auto).forward(&xb, &t).unwrap();
            let value = loss.to_scalar::<f32>().unwrap();
            assert!(!value.is_finite(), "{name} with a {bad} logit gave {value}");
            assert!(
                make(Kernel::Fused).forward(&xb, &t).is_err(),
                "{name}: forced fused kernel accepted a {bad} logit"
            );
        }
    }
}

#[test]
fn fused_kernel_matches_portable_path() {
    for seed in [3u64, 4] {
        let (x, t) = inputs(seed);
        for (name, make) in all_losses() {
            eprintln!("{name} seed {seed}");
            check_fused_matches_portable(&|k| make(k), &x, &t, 2e-6);
        }
    }
    // Larger image (several pixel blocks, a partial last block), u32 and i64 targets.
    let x = logits(9, (2, 5, 17, 31), 4.0);
    let t8 = labels(9, (2, 17, 31), 5, 0.1);
    for t in [
        t8.clone(),
        t8.to_dtype(DType::U32).unwrap(),
        t8.to_dtype(DType::I64).unwrap(),
    ] {
        check_fused_matches_portable(&|k| Box::new(RecallCe::new(5).with_kernel(k)), &x, &t, 2e-6);
        check_fused_matches_portable(
            &|k| {
                Box::new(
                    Ohem::new(5)
                        .with_selection(OhemSelection::KeepRatio(0.3))
                        .unwrap()
                        .with_kernel(k),
                )
            },
            &x,
            &t,
            2e-6,
        );
    }
}

#[test]
fn fused_and_portable_report_the_same_class_weights() {
    let (x, t) = inputs(5);
    let x32 = x.to_dtype(DType::F32).unwrap();
    for (name, make) in all_losses() {
        let mut a = make(Kernel::Portable);
        let mut b = make(Kernel::Fused);
        a.forward(&x32, &t).unwrap();
        b.forward(&x32, &t).unwrap();
        let (wa, wb) = (a.last_class_weights(), b.last_class_weights());
        assert_eq!(wa.is_some(), wb.is_some(), "{name}");
        if let (Some(wa), Some(wb)) = (wa, wb) {
            for (p, f) in wa.iter().zip(&wb) {
                assert!(
                    (p.is_nan() && f.is_nan()) || (p - f).abs() < 1e-5,
                    "{name}: {wa:?} vs {wb:?}"
                );
            }
        }
    }
}

/// Plain CE by hand: uniform logits give ln C per valid pixel.
#[test]
fn cross_entropy_by_hand() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
    let t = Tensor::new(&[[[0u8, 1], [2, 255]]], &dev).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        let v = scalar(&CrossEntropy::new(3).with_kernel(k).forward(&x, &t).unwrap());
        assert!((v - 3f64.ln()).abs() < 1e-6, "{v}");
    }
    // One pixel, logits (2, 0): CE of class 1 = ln(1 + e^2) - 0.
    let x = Tensor::new(&[[[[2.0f32]], [[0.0]]]], &dev).unwrap();
    let t = Tensor::new(&[[[1u8]]], &dev).unwrap();
    let want = (1.0 + 2f64.exp()).ln();
    for k in [Kernel::Portable, Kernel::Fused] {
        let v = scalar(&CrossEntropy::new(2).with_kernel(k).forward(&x, &t).unwrap());
        assert!((v - want).abs() < 1e-6);
    }
}

/// Static weights give PyTorch's weighted mean: Σ w_y CE / Σ w_y.
#[test]
fn weighted_mean_by_hand() {
    let dev = Device::Cpu;
    // Two pixels: class 0 with CE a, class 1 with CE b.
    let x = Tensor::new(&[[[[1.0f64, -1.0]], [[0.0, 2.0]]]], &dev).unwrap();
    let t = Tensor::new(&[[[0u8, 1]]], &dev).unwrap();
    let a = (1.0 + (-1f64).exp()).ln();
    let b = (1.0 + (-3f64).exp()).ln();
    let mut l = CrossEntropy::new(2)
        .with_class_weights(vec![3.0, 1.0])
        .unwrap();
    let v = scalar(&l.forward(&x, &t).unwrap());
    assert!((v - (3.0 * a + b) / 4.0).abs() < 1e-12);
    assert_eq!(l.last_class_weights(), Some(vec![3.0, 1.0]));
}

/// Paper identity 1: with every prediction wrong the recall weights are 1 and RecallCE = CE.
#[test]
fn recall_with_all_predictions_wrong_is_cross_entropy() {
    // Labels 0..3, logits make the argmax (label + 1) mod 3 everywhere.
    let (n, c, h, w) = (2, 3, 4, 4);
    let lab: Vec<u8> = (0..n * h * w).map(|i| (i % 3) as u8).collect();
    let mut x = vec![0f64; n * c * h * w];
    let mut rng = 0.3f64;
    for i in 0..n * h * w {
        let (img, p) = (i / (h * w), i % (h * w));
        let wrong = (lab[i] as usize + 1) % 3;
        for k in 0..c {
            rng = (rng * 7.3 + 0.11).fract();
            let v = if k == wrong { 3.0 + rng } else { rng };
            x[img * c * h * w + k * h * w + p] = v;
        }
    }
    let x = Tensor::from_vec(x, (n, c, h, w), &Device::Cpu).unwrap();
    let t = Tensor::from_vec(lab, (n, h, w), &Device::Cpu).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        let xx = if k == Kernel::Fused {
            x.to_dtype(DType::F32).unwrap()
        } else {
            x.clone()
        };
        let mut r = RecallCe::new(3).with_kernel(k);
        let (vr, gr) = value_and_grad(&mut r, &xx, &t);
        let (vc, gc) = value_and_grad(&mut CrossEntropy::new(3).with_kernel(k), &xx, &t);
        assert!((vr - vc).abs() < 1e-6, "{vr} vs {vc}");
        assert!(max_abs_diff(&gr, &gc) < 1e-7);
        assert_eq!(r.last_class_weights(), Some(vec![1.0, 1.0, 1.0]));
    }
}

/// Paper identity 2: with per-class recall r_c the loss is CE weighted by 1 - r_c (Eq. 5),
/// normalised by the number of valid pixels.
#[test]
fn recall_is_cross_entropy_weighted_by_false_negative_rate() {
    let (x, t) = inputs(11);
    // Recall of the batch computed independently on the host.
    let xs = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let ts = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let (n, c, h, w) = DIMS;
    let mut tp = [0f64; 4];
    let mut cnt = [0f64; 4];
    let mut ce = [0f64; 4];
    for i in 0..n * h * w {
        let y = ts[i];
        if y == 255 {
            continue;
        }
        let (img, p) = (i / (h * w), i % (h * w));
        let z: Vec<f64> = (0..c)
            .map(|k| xs[img * c * h * w + k * h * w + p])
            .collect();
        let am = (0..c).fold(0, |b, k| if z[k] > z[b] { k } else { b });
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        cnt[y as usize] += 1.0;
        ce[y as usize] += lse - z[y as usize];
        if am == y as usize {
            tp[y as usize] += 1.0;
        }
    }
    let valid: f64 = cnt.iter().sum();
    let want: f64 = (0..3).map(|k| (1.0 - tp[k] / cnt[k]) * ce[k]).sum::<f64>() / valid;
    let mut r = RecallCe::new(4).with_kernel(Kernel::Portable);
    let v = scalar(&r.forward(&x, &t).unwrap());
    assert!((v - want).abs() < 1e-12, "{v} vs {want}");
    let weights = r.last_class_weights().unwrap();
    for k in 0..3 {
        assert!((weights[k] as f64 - (1.0 - tp[k] / cnt[k])).abs() < 1e-6);
    }
    assert!(weights[3].is_nan(), "absent class reported as NaN");
    // And it equals CE with static weights 1 - r_c in PyTorch's normalisation times Σw/N.
    let wts: Vec<f64> = (0..4)
        .map(|k| if k < 3 { 1.0 - tp[k] / cnt[k] } else { 0.0 })
        .collect();
    let sw: f64 = (0..3).map(|k| wts[k] * cnt[k]).sum();
    let wce = scalar(
        &CrossEntropy::new(4)
            .with_class_weights(wts)
            .unwrap()
            .forward(&x, &t)
            .unwrap(),
    );
    assert!((wce * sw / valid - want).abs() < 1e-6);
}

/// A class predicted perfectly gets weight 0 and stops contributing.
#[test]
fn recall_of_a_perfect_batch_is_zero() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[[[5.0f32, -5.0]], [[-5.0, 5.0]]]], &dev).unwrap();
    let t = Tensor::new(&[[[0u8, 1]]], &dev).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        let mut r = RecallCe::new(2).with_kernel(k);
        assert_eq!(scalar(&r.forward(&x, &t).unwrap()), 0.0);
        assert_eq!(r.last_class_weights(), Some(vec![0.0, 0.0]));
    }
}

#[test]
fn recall_moving_average() {
    let dev = Device::Cpu;
    // Step 1: class 0 right, class 1 wrong. Step 2: both right. Step 3: class 1 absent.
    let t = Tensor::new(&[[[0u8, 1]]], &dev).unwrap();
    let x1 = Tensor::new(&[[[[5.0f32, 5.0]], [[-5.0, -5.0]]]], &dev).unwrap();
    let x2 = Tensor::new(&[[[[5.0f32, -5.0]], [[-5.0, 5.0]]]], &dev).unwrap();
    let t3 = Tensor::new(&[[[0u8, 0]]], &dev).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        let mut r = RecallCe::new(2).with_kernel(k).with_ema(0.9).unwrap();
        r.forward(&x1, &t).unwrap();
        assert_eq!(r.last_class_weights().unwrap(), vec![0.0, 1.0]);
        let v2 = scalar(&r.forward(&x2, &t).unwrap());
        // recall of class 1: 0.9 * 0 + 0.1 * 1 = 0.1 -> weight 0.9.
        let w = r.last_class_weights().unwrap();
        assert!((w[1] - 0.9).abs() < 1e-6, "{w:?}");
        assert_eq!(w[0], 0.0);
        let ce1 = (1.0 + (-10f64).exp()).ln();
        assert!((v2 - 0.9 * ce1 / 2.0).abs() < 1e-6);
        r.forward(&x2, &t3).unwrap();
        let w = r.last_class_weights().unwrap();
        assert!(w[1].is_nan(), "absent class is reported as NaN");
        let avg = r.recall_average().unwrap();
        assert!(
            (avg[1] - 0.1).abs() < 1e-6,
            "absent class keeps its average"
        );
        r.reset();
        assert!(r.recall_average().is_none());
    }
    assert!(RecallCe::new(2).with_ema(1.0).is_err());
}

/// Precision weights FP/(TP+FP) by hand.
#[test]
fn precision_weights_by_hand() {
    let dev = Device::Cpu;
    // Pixels labelled 0,0,1,1; predictions 0,1,1,1 -> class 0: TP 1 FP 0 -> 0;
    // class 1: TP 2 FP 1 -> 1/3.
    let x = Tensor::new(&[[[[2.0f32, 0.0, 0.0, 0.0]], [[0.0, 2.0, 2.0, 2.0]]]], &dev).unwrap();
    let t = Tensor::new(&[[[0u8, 0, 1, 1]]], &dev).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        let mut p = PrecisionCe::new(2).with_kernel(k);
        let v = scalar(&p.forward(&x, &t).unwrap());
        let w = p.last_class_weights().unwrap();
        assert_eq!(w[0], 0.0);
        assert!((w[1] - 1.0 / 3.0).abs() < 1e-7);
        let ce_right = (1.0 + (-2f64).exp()).ln();
        let want = (2.0 * ce_right / 3.0) / 4.0;
        assert!((v - want).abs() < 1e-6, "{v} vs {want}");
    }
}

/// Focal weight report: mean of (1 - p)^γ over each class's pixels.
#[test]
fn focal_by_hand() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[[[0.0f32, 2.0]], [[0.0, 0.0]]]], &dev).unwrap();
    let t = Tensor::new(&[[[0u8, 0]]], &dev).unwrap();
    let p1 = 0.5f64;
    let p2 = 2f64.exp() / (1.0 + 2f64.exp());
    for k in [Kernel::Portable, Kernel::Fused] {
        let mut f = Focal::new(2).with_gamma(2.0).unwrap().with_kernel(k);
        let v = scalar(&f.forward(&x, &t).unwrap());
        let want = ((1.0 - p1).powi(2) * -p1.ln() + (1.0 - p2).powi(2) * -p2.ln()) / 2.0;
        assert!((v - want).abs() < 1e-6, "{v} vs {want}");
        let w = f.last_class_weights().unwrap();
        assert!((w[0] as f64 - ((1.0 - p1).powi(2) + (1.0 - p2).powi(2)) / 2.0).abs() < 1e-6);
        assert!(w[1].is_nan());
    }
    // γ = 0 is cross entropy.
    let (x, t) = inputs(12);
    let a = scalar(
        &Focal::new(4)
            .with_gamma(0.0)
            .unwrap()
            .forward(&x, &t)
            .unwrap(),
    );
    let b = scalar(&CrossEntropy::new(4).forward(&x, &t).unwrap());
    assert!((a - b).abs() < 1e-12);
}

/// OHEM keeps exactly ⌈0.5·N_valid⌉ pixels, the hardest ones.
#[test]
fn ohem_by_hand() {
    let dev = Device::Cpu;
    // Four valid pixels with CE increasing left to right, one ignored.
    let x = Tensor::new(
        &[[[[3.0f32, 1.0, 0.0, -1.0, 9.0]], [[0.0, 0.0, 0.0, 0.0, 0.0]]]],
        &dev,
    )
    .unwrap();
    let t = Tensor::new(&[[[0u8, 0, 0, 0, 255]]], &dev).unwrap();
    let ce = |z: f64| (1.0 + (-z).exp()).ln();
    for k in [Kernel::Portable, Kernel::Fused] {
        let mut o = Ohem::new(2)
            .with_selection(OhemSelection::KeepRatio(0.5))
            .unwrap()
            .with_kernel(k);
        let v = scalar(&o.forward(&x, &t).unwrap());
        assert!((v - (ce(0.0) + ce(-1.0)) / 2.0).abs() < 1e-6);
        assert_eq!(o.last_class_weights().unwrap()[0], 0.5);
        // Threshold 0.6: keep p < 0.6, i.e. the pixels with z = 0 (p = 0.5) and -1.
        let mut o = Ohem::new(2)
            .with_selection(OhemSelection::Threshold(0.6))
            .unwrap()
            .with_kernel(k);
        let v = scalar(&o.forward(&x, &t).unwrap());
        assert!((v - (ce(0.0) + ce(-1.0)) / 2.0).abs() < 1e-6);
    }
    assert!(Ohem::new(2)
        .with_selection(OhemSelection::KeepRatio(0.0))
        .is_err());
    assert!(Ohem::new(2)
        .with_selection(OhemSelection::Threshold(1.5))
        .is_err());
}

/// Ignored pixels contribute nothing: changing their logits changes neither loss nor gradient,
/// and their gradient is zero. An all-ignored batch gives 0.
#[test]
fn ignored_pixels_contribute_nothing() {
    let (x, t) = inputs(13);
    let mask: Vec<u8> = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let (n, c, h, w) = DIMS;
    let mut x2 = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for i in 0..n * h * w {
        if mask[i] == 255 {
            let (img, p) = (i / (h * w), i % (h * w));
            for k in 0..c {
                x2[img * c * h * w + k * h * w + p] += 7.0 * (k as f64 - 1.5);
            }
        }
    }
    let x2 = Tensor::from_vec(x2, DIMS, &Device::Cpu).unwrap();
    for (name, make) in all_losses() {
        for k in [Kernel::Portable, Kernel::Fused] {
            let (a, b) = if k == Kernel::Fused {
                (
                    x.to_dtype(DType::F32).unwrap(),
                    x2.to_dtype(DType::F32).unwrap(),
                )
            } else {
                (x.clone(), x2.clone())
            };
            let (va, ga) = value_and_grad(make(k).as_mut(), &a, &t);
            let (vb, gb) = value_and_grad(make(k).as_mut(), &b, &t);
            assert!((va - vb).abs() < 1e-6, "{name}");
            assert!(max_abs_diff(&ga, &gb) < 1e-6, "{name}");
            for i in 0..n * h * w {
                if mask[i] == 255 {
                    let (img, p) = (i / (h * w), i % (h * w));
                    for kk in 0..c {
                        assert_eq!(ga[img * c * h * w + kk * h * w + p], 0.0, "{name}");
                    }
                }
            }
        }
        let all_ignored = Tensor::full(255u8, LDIMS, &Device::Cpu).unwrap();
        let (v, g) = value_and_grad(
            make(Kernel::Auto).as_mut(),
            &x.to_dtype(DType::F32).unwrap(),
            &all_ignored,
        );
        assert_eq!(v, 0.0, "{name}");
        assert!(g.iter().all(|&v| v == 0.0), "{name}");
    }
}

#[test]
fn half_precision_logits_are_computed_in_f32() {
    let (x, t) = inputs(14);
    let x32 = x.to_dtype(DType::F32).unwrap();
    for dt in [DType::F16, DType::BF16] {
        let xh = x32.to_dtype(dt).unwrap();
        let back = xh.to_dtype(DType::F32).unwrap();
        let a = scalar(&RecallCe::new(4).forward(&xh, &t).unwrap());
        let b = scalar(&RecallCe::new(4).forward(&back, &t).unwrap());
        assert!((a - b).abs() < 1e-6);
        let (_, g) = value_and_grad(&mut RecallCe::new(4), &xh, &t);
        assert_eq!(g.len(), 2 * 4 * 3 * 5);
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (x, t) = inputs(15);
    let x32 = x.to_dtype(DType::F32).unwrap();
    let bad = Tensor::new(&[[[0u8, 7], [1, 255]]], &Device::Cpu).unwrap();
    let xs = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        let e = RecallCe::new(4)
            .with_kernel(k)
            .forward(&xs, &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 7"), "{e}");
        let neg = Tensor::new(&[[[0i64, -3], [1, 255]]], &Device::Cpu).unwrap();
        let e = CrossEntropy::new(4)
            .with_kernel(k)
            .forward(&xs, &neg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("label -3"), "{e}");
    }
    let e = CrossEntropy::new(5)
        .forward(&x32, &t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 channels") && e.contains("5 classes"), "{e}");
    let e = CrossEntropy::new(4)
        .forward(&x32, &t.narrow(1, 0, 2).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("target must be (N, H, W)"), "{e}");
    let e = CrossEntropy::new(4)
        .forward(&x32, &t.to_dtype(DType::F32).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("u8, u32 or i64"), "{e}");
    let e = CrossEntropy::new(4)
        .with_kernel(Kernel::Fused)
        .forward(&x, &t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Kernel::Fused"), "{e}");
    assert!(CrossEntropy::new(4)
        .with_class_weights(vec![1.0; 3])
        .is_err());
    assert!(CrossEntropy::new(4)
        .with_class_weights(vec![1.0, -1.0, 1.0, 1.0])
        .is_err());
    assert!(Focal::new(4).with_gamma(-1.0).is_err());
}

/// An ignore index inside the class range masks that class.
#[test]
fn ignore_index_below_class_count() {
    let x = logits(16, DIMS, 3.0);
    let t = labels(16, LDIMS, 4, 0.0);
    let t255 = {
        let t2 = t.to_dtype(DType::U32).unwrap();
        let zero = t2.eq(0u32).unwrap();
        zero.where_cond(&Tensor::full(255u32, LDIMS, &Device::Cpu).unwrap(), &t2)
            .unwrap()
    };
    let xx = x.to_dtype(DType::F32).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        let mut a = RecallCe::new(4).with_kernel(k).with_ignore_index(0);
        let (va, ga) = value_and_grad(&mut a, &xx, &t);
        // Same as relabelling class 0 to the default ignore index 255.
        let (vb, gb) = value_and_grad(&mut RecallCe::new(4).with_kernel(k), &xx, &t255);
        assert!((va - vb).abs() < 1e-6);
        assert!(max_abs_diff(&ga, &gb) < 1e-7);
    }
}

/// The recall moving average survives a checkpoint: `state` / `load_state` round-trip gives the
/// same next step as an uninterrupted run.
#[test]
fn recall_state_round_trip() {
    let (x1, t1) = inputs(41);
    let (x2, t2) = inputs(42);
    let (x3, t3) = inputs(43);
    let mut a = RecallCe::new(4).with_ema(0.8).unwrap();
    assert_eq!(a.state(), None);
    a.forward(&x1, &t1).unwrap();
    a.forward(&x2, &t2).unwrap();
    let saved = a.state().expect("an EMA loss has state after a step");
    assert_eq!(saved.len(), 4);
    assert!(saved[3].is_nan(), "class 3 never seen");
    let va = scalar(&a.forward(&x3, &t3).unwrap());
    let mut b = RecallCe::new(4).with_ema(0.8).unwrap();
    b.load_state(&saved).unwrap();
    let vb = scalar(&b.forward(&x3, &t3).unwrap());
    assert_eq!(va, vb);
    assert_eq!(
        format!("{:?}", a.last_class_weights()),
        format!("{:?}", b.last_class_weights())
    );
    // Without the state the third step differs (the test can fail).
    let mut c = RecallCe::new(4).with_ema(0.8).unwrap();
    let vc = scalar(&c.forward(&x3, &t3).unwrap());
    assert_ne!(va, vc);
    // Errors: wrong length, out of range, state given to a stateless loss.
    assert!(b.load_state(&[0.5; 3]).is_err());
    assert!(b.load_state(&[0.5, 2.0, 0.5, 0.5]).is_err());
    assert!(RecallCe::new(4).load_state(&[0.5; 4]).is_err());
    assert!(CrossEntropy::new(4).load_state(&[0.5; 4]).is_err());
    assert!(CrossEntropy::new(4).load_state(&[]).is_ok());
    assert_eq!(CrossEntropy::new(4).state(), None);
}
