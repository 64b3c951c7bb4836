//! `LossConfig`: names, aliases, serde (TOML and JSON), validation, building.

use candle_core::{DType, Device, Tensor};
use recallseg_losses::{LossConfig, LossContext, LossError, RecallVariant, WeightMode};

#[test]
fn names_and_aliases() {
    let cases = [
        ("ce", "cross_entropy"),
        ("Cross-Entropy", "cross_entropy"),
        ("wce", "weighted_ce"),
        ("balanced", "balanced_ce"),
        ("focal", "focal"),
        ("ohem", "ohem"),
        ("iou", "soft_iou"),
        ("lovasz_softmax", "lovasz"),
        ("dice", "dice"),
        ("tversky", "tversky"),
        ("recall", "recall_ce"),
        ("RECALL_CE", "recall_ce"),
        ("precision", "precision_ce"),
    ];
    for (alias, canonical) in cases {
        assert_eq!(
            LossConfig::from_name(alias).unwrap().name(),
            canonical,
            "{alias}"
        );
    }
    let e = LossConfig::from_name("recal").unwrap_err();
    assert!(matches!(e, LossError::UnknownLoss { .. }));
    assert!(
        e.to_string().contains("recall_ce"),
        "error lists the known names: {e}"
    );
}

#[test]
fn defaults_follow_the_paper() {
    assert_eq!(
        LossConfig::from_name("focal").unwrap(),
        LossConfig::Focal {
            gamma: 1.0,
            alpha: None
        }
    );
    assert_eq!(
        LossConfig::from_name("recall").unwrap(),
        LossConfig::RecallCe {
            ema: None,
            variant: RecallVariant::Eq5,
            label_smoothing: 0.0
        }
    );
    assert_eq!(
        LossConfig::from_name("wce").unwrap(),
        LossConfig::WeightedCe {
            mode: WeightMode::MedianFrequency,
            label_smoothing: 0.0
        }
    );
    let c: LossConfig = toml::from_str("name = \"ohem\"").unwrap();
    assert_eq!(
        c,
        LossConfig::Ohem {
            keep_ratio: None,
            keep_count: None,
            threshold: None,
            min_kept: None,
            avg_non_ignore: None
        }
    );
    let c: LossConfig = toml::from_str("name = \"lovasz\"").unwrap();
    assert_eq!(
        c,
        LossConfig::Lovasz {
            present_only: true,
            per_image: false
        }
    );
    let c: LossConfig = toml::from_str("name = \"focal\"").unwrap();
    assert_eq!(
        c,
        LossConfig::Focal {
            gamma: 1.0,
            alpha: None
        }
    );
}

#[test]
fn serde_round_trip_and_errors() {
    let c: LossConfig =
        toml::from_str("name = \"weighted_ce\"\nmode = \"inverse_frequency\"").unwrap();
    assert_eq!(
        c,
        LossConfig::WeightedCe {
            mode: WeightMode::InverseFrequency,
            label_smoothing: 0.0
        }
    );
    let c: LossConfig = toml::from_str("name = \"recall_ce\"\nema = 0.9").unwrap();
    assert_eq!(
        c,
        LossConfig::RecallCe {
            ema: Some(0.9),
            variant: RecallVariant::Eq5,
            label_smoothing: 0.0,
        }
    );
    for cfg in [
        LossConfig::CrossEntropy {
            label_smoothing: 0.0,
        },
        LossConfig::Tversky {
            alpha: 0.2,
            beta: 0.8,
            smooth: 0.0,
            log_loss: false,
            classes: None,
        },
        LossConfig::Ohem {
            keep_ratio: None,
            keep_count: None,
            threshold: Some(0.7),
            min_kept: None,
            avg_non_ignore: None,
        },
        LossConfig::BalancedCe {
            beta: Some(0.99),
            label_smoothing: 0.0,
        },
    ] {
        let s = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<LossConfig>(&s).unwrap(), cfg, "{s}");
        let j = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<LossConfig>(&j).unwrap(), cfg, "{j}");
    }
    // Unknown field, unknown name, wrong type.
    let e = toml::from_str::<LossConfig>("name = \"focal\"\ngama = 2.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gama"), "{e}");
    let e = toml::from_str::<LossConfig>("name = \"cross_entropy\"\ngamma = 2.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gamma"), "{e}");
    let e = toml::from_str::<LossConfig>("name = \"recal_ce\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("recal_ce"), "{e}");
    assert!(toml::from_str::<LossConfig>("name = \"focal\"\ngamma = \"two\"").is_err());
}

#[test]
fn validation() {
    let bad = [
        LossConfig::Focal {
            gamma: -1.0,
            alpha: None,
        },
        LossConfig::Focal {
            gamma: f64::NAN,
            alpha: None,
        },
        LossConfig::Ohem {
            keep_ratio: Some(0.0),
            keep_count: None,
            threshold: None,
            min_kept: None,
            avg_non_ignore: None,
        },
        LossConfig::Ohem {
            keep_ratio: Some(0.5),
            keep_count: None,
            threshold: Some(0.5),
            min_kept: None,
            avg_non_ignore: None,
        },
        LossConfig::Ohem {
            keep_ratio: None,
            keep_count: None,
            threshold: Some(2.0),
            min_kept: None,
            avg_non_ignore: None,
        },
        LossConfig::Tversky {
            alpha: -0.1,
            beta: 0.5,
            smooth: 0.0,
            log_loss: false,
            classes: None,
        },
        LossConfig::Tversky {
            alpha: 0.0,
            beta: 0.0,
            smooth: 0.0,
            log_loss: false,
            classes: None,
        },
        LossConfig::RecallCe {
            ema: Some(1.0),
            variant: RecallVariant::Eq5,
            label_smoothing: 0.0,
        },
        LossConfig::BalancedCe {
            beta: Some(1.0),
            label_smoothing: 0.0,
        },
    ];
    for c in bad {
        let e = c.validate().unwrap_err();
        assert!(
            matches!(e, LossError::InvalidParameter { .. }),
            "{c:?}: {e}"
        );
        assert!(c
            .build(&LossContext::new(3).with_class_pixel_counts(vec![1, 2, 3]))
            .is_err());
    }
    assert!(LossConfig::from_name("ce").unwrap().validate().is_ok());
}

#[test]
fn building_needs_the_right_context() {
    let ctx = LossContext::new(3);
    let e = LossConfig::from_name("wce")
        .unwrap()
        .build(&ctx)
        .err()
        .unwrap();
    assert_eq!(
        e,
        LossError::MissingPixelCounts {
            loss: "weighted_ce"
        }
    );
    assert!(e.to_string().contains("class_pixel_counts"));
    let e = LossConfig::from_name("balanced")
        .unwrap()
        .build(&ctx)
        .err()
        .unwrap();
    assert_eq!(
        e,
        LossError::MissingPixelCounts {
            loss: "balanced_ce"
        }
    );
    let e = LossConfig::from_name("wce")
        .unwrap()
        .build(&ctx.clone().with_class_pixel_counts(vec![1, 2]))
        .err()
        .unwrap();
    assert!(matches!(
        e,
        LossError::ClassCountMismatch {
            expected: 3,
            got: 2,
            ..
        }
    ));
    let e = LossConfig::from_name("ce")
        .unwrap()
        .build(&LossContext::new(0))
        .err()
        .unwrap();
    assert_eq!(e, LossError::NoClasses);
    let e = LossConfig::from_name("ce")
        .unwrap()
        .build(&ctx.clone().with_class_weights(vec![1.0, f64::NAN, 1.0]))
        .err()
        .unwrap();
    assert!(matches!(e, LossError::InvalidClassWeight { index: 1, .. }));
}

/// Every configured loss builds and runs; names and static weights carry through.
#[test]
fn every_loss_builds_and_runs() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &dev).unwrap();
    let t = Tensor::new(&[[[0u8, 1, 2, 255]; 4]; 2], &dev).unwrap();
    let ctx = LossContext::new(3)
        .with_ignore_index(255)
        .with_class_pixel_counts(vec![100, 10, 1]);
    for name in [
        "ce",
        "wce",
        "balanced",
        "focal",
        "ohem",
        "recall",
        "precision",
    ] {
        let cfg = LossConfig::from_name(name).unwrap();
        let mut loss = cfg.build(&ctx).unwrap();
        assert_eq!(loss.name(), cfg.name());
        let v = loss.forward(&x, &t).unwrap();
        assert_eq!(v.dtype(), DType::F32);
        assert!(v.to_scalar::<f32>().unwrap().is_finite());
    }
    // Static weights from the context multiply the frequency weights.
    let mut wce = LossConfig::WeightedCe {
        mode: WeightMode::InverseFrequency,
        label_smoothing: 0.0,
    }
    .build(&ctx.clone().with_class_weights(vec![2.0, 1.0, 0.0]))
    .unwrap();
    wce.forward(&x, &t).unwrap();
    let w = wce.last_class_weights().unwrap();
    let inv = recallseg_losses::class_weights::inverse_frequency(&[100, 10, 1]).unwrap();
    assert_eq!(w, vec![(2.0 * inv[0]) as f32, inv[1] as f32, 0.0]);
    // Unweighted CE reports nothing.
    let mut ce = LossConfig::from_name("ce").unwrap().build(&ctx).unwrap();
    ce.forward(&x, &t).unwrap();
    assert_eq!(ce.last_class_weights(), None);
}

#[test]
fn the_functions_equal_the_loss_objects() {
    use recallseg_losses::{functional, LossBuilder, LossOptions, RecallCe, SegLoss};
    let dev = candle_core::Device::Cpu;
    let logits = candle_core::Tensor::new(
        &[[[[2f32, -1.0, 0.5]], [[0.0, 1.5, 0.2]], [[-0.3, 0.1, 1.0]]]],
        &dev,
    )
    .unwrap();
    let target = candle_core::Tensor::new(&[[[0u8, 2, 255]]], &dev).unwrap();
    let opts = LossOptions::new(3)
        .with_class_weights(vec![1.0, 2.0, 0.5])
        .unwrap();
    let f = functional::recall_ce(&logits, &target, &opts).unwrap();
    let mut l = RecallCe::new(3).with_options(&opts).unwrap();
    let o = l.forward(&logits, &target).unwrap();
    assert_eq!(
        f.to_scalar::<f32>().unwrap().to_bits(),
        o.to_scalar::<f32>().unwrap().to_bits()
    );
    assert_eq!(l.class_weights(), Some(&[1.0f64, 2.0, 0.5][..]));
    // A class count that does not match is an error, not a silent mix.
    assert!(RecallCe::new(4).with_options(&opts).is_err());
    assert!(functional::focal(&logits, &target, -1.0, &opts).is_err());
}

#[test]
fn forward_output_carries_this_steps_weights() {
    use recallseg_losses::{RecallCe, SegLoss};
    let dev = candle_core::Device::Cpu;
    let logits =
        candle_core::Tensor::new(&[[[[1f32, 0.0]], [[0.0, 1.0]], [[0.5, 0.5]]]], &dev).unwrap();
    let mut loss = RecallCe::new(3);
    let out = loss
        .forward_output(
            &logits,
            &candle_core::Tensor::new(&[[[0u8, 0]]], &dev).unwrap(),
        )
        .unwrap();
    // Class 0: one of its two pixels is predicted right: weight 1 − 1/2; classes 1, 2 absent.
    let w = out.class_weights.unwrap();
    assert_eq!(w[0], 0.5);
    assert!(w[1].is_nan() && w[2].is_nan());
    let none = loss
        .forward_output(
            &logits,
            &candle_core::Tensor::new(&[[[255u8, 255]]], &dev).unwrap(),
        )
        .unwrap();
    assert_eq!(none.class_weights, None);
}

/// The kernel of a loss built from its configuration is the context's: `Fused` refuses logits
/// the fused kernel cannot take (non-contiguous), which `Auto` and `Portable` accept, for every
/// loss name and for the terms of a combined loss.
#[test]
fn the_context_chooses_the_kernel_of_a_built_loss() {
    use candle_core::{DType, Device, Tensor};
    use recallseg_losses::{Kernel, LossConfig, LossContext};
    let dev = Device::Cpu;
    // (N, H, W, C) transposed to (N, C, H, W): not contiguous.
    let logits = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 5.0, &dev)
        .unwrap()
        .reshape((2, 4, 5, 3))
        .unwrap()
        .affine(0.01, 0.0)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap();
    assert!(!logits.is_contiguous());
    let target = Tensor::zeros((2, 4, 5), DType::U8, &dev).unwrap();
    for name in ["cross_entropy", "recall_ce", "focal", "dice", "lovasz"] {
        let cfg = LossConfig::from_name(name).unwrap();
        for (kernel, ok) in [
            (Kernel::Auto, true),
            (Kernel::Portable, true),
            (Kernel::Fused, false),
        ] {
            let mut loss = cfg.build(&LossContext::new(3).with_kernel(kernel)).unwrap();
            let r = loss.forward(&logits, &target);
            assert_eq!(r.is_ok(), ok, "{name} with {kernel:?}: {r:?}");
        }
    }
    let combined: LossConfig =
        toml::from_str("name = \"combined\"\n[[terms]]\nweight = 1.0\nname = \"recall_ce\"\n")
            .unwrap();
    let mut loss = combined
        .build(&LossContext::new(3).with_kernel(Kernel::Fused))
        .unwrap();
    assert!(loss.forward(&logits, &target).is_err());
}
