//! Region losses (SoftIoU, Dice, Tversky, Lovász-Softmax): gradients vs finite differences,
//! fused kernel vs portable path, hand-worked values, ignored pixels.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use recallseg_losses::LossBuilder;
use recallseg_losses::LovaszClasses;
use recallseg_losses::{Dice, Kernel, Lovasz, SegLoss, SoftIou, Tversky};

const DIMS: (usize, usize, usize, usize) = (2, 4, 3, 5);
const LDIMS: (usize, usize, usize) = (2, 3, 5);

fn inputs(seed: u64) -> (Tensor, Tensor) {
    (logits(seed, DIMS, 3.0), labels(seed, LDIMS, 3, 0.2))
}

type Make = Box<dyn Fn(Kernel) -> Box<dyn SegLoss>>;

fn all_losses() -> Vec<(&'static str, Make)> {
    vec![
        (
            "soft_iou",
            Box::new(|k| Box::new(SoftIou::new(4).with_kernel(k))),
        ),
        (
            "soft_iou_weighted",
            Box::new(|k| {
                Box::new(
                    SoftIou::new(4)
                        .with_kernel(k)
                        .with_class_weights(vec![1.0, 2.0, 0.5, 1.0])
                        .unwrap(),
                )
            }),
        ),
        ("dice", Box::new(|k| Box::new(Dice::new(4).with_kernel(k)))),
        (
            "dice_weighted",
            Box::new(|k| {
                Box::new(
                    Dice::new(4)
                        .with_kernel(k)
                        .with_class_weights(vec![1.0, 2.0, 0.5, 1.0])
                        .unwrap(),
                )
            }),
        ),
        (
            "tversky",
            Box::new(|k| {
                Box::new(
                    Tversky::new(4)
                        .with_alpha_beta(0.3, 0.7)
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "tversky_fp",
            Box::new(|k| {
                Box::new(
                    Tversky::new(4)
                        .with_alpha_beta(0.9, 0.1)
                        .unwrap()
                        .with_kernel(k),
                )
            }),
        ),
        (
            "lovasz",
            Box::new(|k| Box::new(Lovasz::new(4).with_kernel(k))),
        ),
        (
            "lovasz_all",
            Box::new(|k| {
                Box::new(
                    Lovasz::new(4)
                        .with_classes(LovaszClasses::All)
                        .with_kernel(k),
                )
            }),
        ),
        (
            "lovasz_weighted",
            Box::new(|k| {
                Box::new(
                    Lovasz::new(4)
                        .with_kernel(k)
                        .with_class_weights(vec![1.0, 2.0, 0.5, 1.0])
                        .unwrap(),
                )
            }),
        ),
    ]
}

#[test]
fn gradients_match_finite_differences() {
    for seed in [21u64, 22] {
        let (x, t) = inputs(seed);
        for (name, make) in all_losses() {
            eprintln!("{name} seed {seed}");
            check_gradient(&|| make(Kernel::Portable), &x, &t, 1e-6);
        }
    }
}

#[test]
fn fused_kernel_matches_portable_path() {
    for seed in [23u64, 24] {
        let (x, t) = inputs(seed);
        for (name, make) in all_losses() {
            eprintln!("{name} seed {seed}");
            check_fused_matches_portable(&|k| make(k), &x, &t, 2e-6);
        }
    }
    // Several pixel blocks and a partial one; u32 / i64 targets.
    let x = logits(25, (2, 5, 17, 31), 4.0);
    let t8 = labels(25, (2, 17, 31), 5, 0.1);
    for t in [
        t8.clone(),
        t8.to_dtype(DType::U32).unwrap(),
        t8.to_dtype(DType::I64).unwrap(),
    ] {
        check_fused_matches_portable(&|k| Box::new(Lovasz::new(5).with_kernel(k)), &x, &t, 2e-6);
        check_fused_matches_portable(&|k| Box::new(SoftIou::new(5).with_kernel(k)), &x, &t, 2e-6);
        check_fused_matches_portable(&|k| Box::new(Dice::new(5).with_kernel(k)), &x, &t, 2e-6);
    }
}

/// Uniform predictions over two classes, by hand.
#[test]
fn region_losses_by_hand() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 1, 2), DType::F32, &dev).unwrap();
    let t01 = Tensor::new(&[[[0u8, 1]]], &dev).unwrap();
    let t00 = Tensor::new(&[[[0u8, 0]]], &dev).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        // Dice: I = 0.5, P = 1, G = 1 per class -> dice 0.5.
        let v = scalar(&Dice::new(2).with_kernel(k).forward(&x, &t01).unwrap());
        assert!((v - 0.5).abs() < 1e-6, "{v}");
        // SoftIoU: U = 1 + 1 - 0.5 -> IoU 1/3.
        let v = scalar(&SoftIou::new(2).with_kernel(k).forward(&x, &t01).unwrap());
        assert!((v - 2.0 / 3.0).abs() < 1e-6, "{v}");
        // Lovász: 0.5 per class.
        let v = scalar(&Lovasz::new(2).with_kernel(k).forward(&x, &t01).unwrap());
        assert!((v - 0.5).abs() < 1e-6, "{v}");
        // Tversky(0.3, 0.7), labels (0, 0): class 0 I = 1, FP = 0, FN = 1 -> T = 1/1.7;
        // class 1 is absent and contributes 0 to the mean over 2 classes.
        let v = scalar(
            &Tversky::new(2)
                .with_alpha_beta(0.3, 0.7)
                .unwrap()
                .with_kernel(k)
                .forward(&x, &t00)
                .unwrap(),
        );
        assert!((v - (1.0 - 1.0 / 1.7) / 2.0).abs() < 1e-6, "{v}");
        // Lovász over present classes: class 0 only, errors 0.5, 0.5 -> 0.5.
        // Over all classes: class 1 absent adds max p_1 = 0.5 -> mean 0.5.
        let v = scalar(&Lovasz::new(2).with_kernel(k).forward(&x, &t00).unwrap());
        assert!((v - 0.5).abs() < 1e-6, "{v}");
        let v = scalar(
            &Lovasz::new(2)
                .with_classes(LovaszClasses::All)
                .with_kernel(k)
                .forward(&x, &t00)
                .unwrap(),
        );
        assert!((v - 0.5).abs() < 1e-6, "{v}");
    }
    // Near-perfect predictions: Dice, Tversky and Lovász near 0.
    let x = Tensor::new(&[[[[20.0f32, -20.0]], [[-20.0, 20.0]]]], &dev).unwrap();
    for k in [Kernel::Portable, Kernel::Fused] {
        for mut l in [
            Box::new(Dice::new(2).with_kernel(k)) as Box<dyn SegLoss>,
            Box::new(
                Tversky::new(2)
                    .with_alpha_beta(0.3, 0.7)
                    .unwrap()
                    .with_kernel(k),
            ),
            Box::new(Lovasz::new(2).with_kernel(k)),
        ] {
            let v = scalar(&l.forward(&x, &t01).unwrap());
            assert!(v.abs() < 1e-6, "{} {v}", l.name());
        }
    }
}

#[test]
fn ignored_pixels_contribute_nothing() {
    let (x, t) = inputs(26);
    let mask: Vec<u8> = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let (n, c, h, w) = DIMS;
    let mut x2 = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for (i, &m) in mask.iter().enumerate() {
        if m == 255 {
            let (img, p) = (i / (h * w), i % (h * w));
            for k in 0..c {
                x2[img * c * h * w + k * h * w + p] += 5.0 * (k as f64 - 1.5);
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
            assert!((va - vb).abs() < 1e-6, "{name} {k:?}");
            assert!(max_abs_diff(&ga, &gb) < 1e-6, "{name} {k:?}");
            for (i, &m) in mask.iter().enumerate() {
                if m == 255 {
                    let (img, p) = (i / (h * w), i % (h * w));
                    for kk in 0..c {
                        assert_eq!(ga[img * c * h * w + kk * h * w + p], 0.0, "{name}");
                    }
                }
            }
        }
        // All pixels ignored: finite value, zero gradient.
        let all = Tensor::full(255u8, LDIMS, &Device::Cpu).unwrap();
        for k in [Kernel::Portable, Kernel::Fused] {
            let (v, g) = value_and_grad(make(k).as_mut(), &x.to_dtype(DType::F32).unwrap(), &all);
            assert!(v.is_finite(), "{name}");
            assert!(g.iter().all(|&v| v == 0.0), "{name}");
        }
    }
    let _ = n;
}

#[test]
fn bad_labels_are_errors() {
    let xs = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let bad = Tensor::new(&[[[0u8, 9], [1, 255]]], &Device::Cpu).unwrap();
    for (name, make) in all_losses() {
        for k in [Kernel::Portable, Kernel::Fused] {
            let e = make(k).forward(&xs, &bad).unwrap_err().to_string();
            assert!(e.contains("label 9"), "{name} {k:?}: {e}");
        }
    }
    assert!(Tversky::new(4).with_alpha_beta(-1.0, 0.5).is_err());
    assert!(Tversky::new(4).with_alpha_beta(0.0, 0.0).is_err());
}
