//! Model construction, shapes, determinism, trainable variables, BatchNorm modes, dropout and
//! checkpoint round trips, on thin models (small shapes, fast).

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{build, fill, var_named};
use recallseg_models::ops::{with_cpu_kernels, CpuKernels};
use recallseg_models::ParamKind;
use recallseg_models::{Backbone, DeepLab, Head, InitScheme, ModelConfig, ModelError};

fn thin(backbone: Backbone, head: Head, output_stride: usize) -> ModelConfig {
    ModelConfig {
        backbone,
        head,
        output_stride,
        n_classes: 3,
        backbone_width: 4,
        head_channels: 8,
        low_level_channels: 4,
        ..ModelConfig::default()
    }
}

fn values(model: &DeepLab) -> Vec<(String, Vec<f32>)> {
    model
        .named_vars()
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.var.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_backbone_head_and_stride_maps_images_to_logits_at_input_size() {
    let x = fill("input.shape", &[2, 3, 35, 50]);
    for backbone in [
        Backbone::Resnet18,
        Backbone::Resnet34,
        Backbone::Resnet50,
        Backbone::Resnet101,
    ] {
        for head in [Head::DeepLabV3, Head::DeepLabV3Plus] {
            for os in [8, 16] {
                let cfg = thin(backbone, head, os);
                let (model, _vm) = build(&cfg);
                let f = model.backbone_features(&x, false).unwrap();
                let (low, high) = (backbone.stage_channels(0, 4), backbone.stage_channels(3, 4));
                assert_eq!(f.low_level.dims(), &[2, low, 9, 13], "{cfg:?}");
                assert_eq!(
                    f.out.dims(),
                    &[2, high, 35usize.div_ceil(os), 50usize.div_ceil(os)]
                );
                let y = model.forward_t(&x, false).unwrap();
                assert_eq!(y.dims(), &[2, 3, 35, 50], "{backbone:?} {head:?} OS{os}");
            }
        }
    }
}

#[test]
fn parameter_names_follow_torchvision() {
    let (model, varmap) = build(&thin(Backbone::Resnet50, Head::DeepLabV3Plus, 16));
    let names: Vec<&str> = model.named_vars().iter().map(|v| v.name.as_str()).collect();
    for n in [
        "backbone.conv1.weight",
        "backbone.bn1.running_mean",
        "backbone.layer1.0.downsample.0.weight",
        "backbone.layer2.0.downsample.1.running_var",
        "backbone.layer4.2.bn3.bias",
        "aspp.convs.0.0.weight",
        "aspp.convs.3.1.weight",
        "aspp.convs.4.1.weight",
        "aspp.project.0.weight",
        "decoder.project.0.weight",
        "decoder.fuse.4.weight",
        "decoder.fuse.5.running_var",
        "classifier.weight",
        "classifier.bias",
    ] {
        assert!(names.contains(&n), "missing {n}");
    }
    // The VarMap holds exactly the model's tensors, running statistics included.
    assert_eq!(varmap.all_vars().len(), names.len());
    // A torchvision ResNet-50 has 53 convs + 53 BNs (×4 tensors) = 265 tensors without `fc`.
    let backbone = names.iter().filter(|n| n.starts_with("backbone.")).count();
    assert_eq!(backbone, 53 + 53 * 4);
}

#[test]
fn same_seed_same_parameters_different_seed_different_parameters() {
    let cfg = thin(Backbone::Resnet18, Head::DeepLabV3Plus, 16);
    let (a, _) = build(&cfg);
    let (b, _) = build(&cfg);
    let (c, _) = build(&ModelConfig {
        init_seed: 1,
        ..cfg.clone()
    });
    assert_eq!(values(&a), values(&b));
    let (va, vc) = (values(&a), values(&c));
    for ((name, x), (_, y)) in va.iter().zip(&vc) {
        if name.ends_with("conv1.weight") {
            assert_ne!(x, y, "{name} should depend on the seed");
        }
    }
    // BatchNorm starts at γ = 1, β = 0, μ = 0, σ² = 1.
    let bn: Vec<_> = va
        .iter()
        .filter(|(n, _)| n.starts_with("backbone.bn1."))
        .collect();
    assert_eq!(bn.len(), 4);
    for (n, v) in bn {
        let want = if n.ends_with("weight") || n.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        assert!(v.iter().all(|&x| x == want), "{n}");
    }
    // Kaiming normal, fan-out: conv1 of width 4 has std sqrt(2 / (4·7·7)).
    let w = &va
        .iter()
        .find(|(n, _)| n == "backbone.layer1.0.conv1.weight")
        .unwrap()
        .1;
    let std = (w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!(
        (std / (2.0f64 / 36.0).sqrt() - 1.0).abs() < 0.35,
        "std {std}"
    );
}

#[test]
fn trainable_vars_exclude_running_stats_and_frozen_bn() {
    let cfg = thin(Backbone::Resnet18, Head::DeepLabV3, 16);
    let (model, _) = build(&cfg);
    let count = |k: ParamKind| model.named_vars().iter().filter(|v| v.kind == k).count();
    let (w, aff, stat) = (
        count(ParamKind::Weight),
        count(ParamKind::BnAffine),
        count(ParamKind::BnStat),
    );
    assert_eq!(aff, stat);
    assert_eq!(model.trainable_vars().len(), w + aff);
    let (frozen, _) = build(&ModelConfig {
        freeze_bn: true,
        ..cfg
    });
    assert_eq!(frozen.trainable_vars().len(), w);
}

#[test]
fn batch_norm_updates_running_stats_in_training_only() {
    let (model, _) = build(&thin(Backbone::Resnet18, Head::DeepLabV3Plus, 16));
    let rm = || {
        model
            .named_vars()
            .iter()
            .find(|v| v.name == "backbone.bn1.running_mean")
            .unwrap()
            .var
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let x = fill("input.bn", &[2, 3, 32, 32]);
    let before = rm();
    model.forward_t(&x, false).unwrap();
    assert_eq!(rm(), before, "evaluation must not touch running statistics");
    model.forward_t(&x, true).unwrap();
    assert_ne!(rm(), before, "training must update running statistics");

    // Frozen BN: training forward equals evaluation forward and leaves the statistics alone.
    let cfg = ModelConfig {
        freeze_bn: true,
        dropout: 0.0,
        decoder_dropout: [0.0, 0.0],
        ..thin(Backbone::Resnet18, Head::DeepLabV3Plus, 16)
    };
    let (frozen, _) = build(&cfg);
    let a = frozen.forward_t(&x, true).unwrap();
    let b = frozen.forward_t(&x, false).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}

#[test]
fn training_with_batch_of_one_pixel_per_channel_is_a_clear_error() {
    let (model, _) = build(&thin(Backbone::Resnet18, Head::DeepLabV3, 16));
    let x = fill("input.bn", &[1, 3, 32, 32]);
    let e = model.forward_t(&x, true).unwrap_err().to_string();
    assert!(e.contains("more than one value per channel"), "{e}");
    let e = model
        .forward_t(&fill("input.bn", &[1, 4, 32, 32]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("(N, 3, H, W)"), "{e}");
}

#[test]
fn dropout_is_seeded_active_in_training_only() {
    let cfg = ModelConfig {
        freeze_bn: true,
        ..thin(Backbone::Resnet18, Head::DeepLabV3Plus, 16)
    };
    let (model, _) = build(&cfg);
    let x = fill("input.dropout", &[2, 3, 32, 32]);
    let v = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let a = v(model.forward_t_with(&x, true, 5).unwrap());
    let b = v(model.forward_t_with(&x, true, 5).unwrap());
    let c = v(model.forward_t_with(&x, true, 6).unwrap());
    let e1 = v(model.forward_t(&x, false).unwrap());
    let e2 = v(model.forward_t(&x, false).unwrap());
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, e1);
    assert_eq!(e1, e2);
    // forward_t draws a new mask per call, reproducibly after set_dropout_seed.
    model.set_dropout_seed(9);
    let s1 = v(model.forward_t(&x, true).unwrap());
    let s2 = v(model.forward_t(&x, true).unwrap());
    model.set_dropout_seed(9);
    assert_eq!(v(model.forward_t(&x, true).unwrap()), s1);
    assert_ne!(s1, s2);
}

#[test]
fn gradients_reach_every_trainable_var() {
    let dense = thin(Backbone::Resnet18, Head::DeepLabV3Plus, 16);
    let separable = ModelConfig {
        separable: true,
        decoder_convs: 1,
        ..dense.clone()
    };
    for cfg in [dense, separable] {
        let (model, _) = build(&cfg);
        let x = fill("input.grad", &[2, 3, 32, 32]);
        let y = model.forward_t_with(&x, true, 1).unwrap();
        let grads = y.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        for v in model.trainable_vars() {
            assert!(
                grads.get(&v).is_some(),
                "no gradient for a trainable var of shape {:?}",
                v.dims()
            );
        }
    }
}

#[test]
fn separable_layouts_have_the_expected_parameters() {
    // segmentation_models_pytorch 0.6's DeepLabV3Plus("resnet18", classes=16) has 12 333 152
    // parameters (count printed by `sum(p.numel() for p in m.parameters())`), 68 352 of them
    // in the separable 3×3 conv + BN after its ASPP projection (`aspp_conv`).
    let cfg = ModelConfig {
        n_classes: 16,
        ..ModelConfig::default()
    }
    .smp_layout();
    let (model, _) = build(&cfg);
    let shape = |n: &str| var_named(&model, n).dims().to_vec();
    let count: usize = model.trainable_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(count, 12_333_152);
    assert_eq!(shape("decoder.aspp_conv.0.0.weight"), [256, 1, 3, 3]);
    assert_eq!(shape("decoder.aspp_conv.0.1.weight"), [256, 256, 1, 1]);
    let without = ModelConfig {
        aspp_conv: false,
        ..cfg.clone()
    };
    let (model_without, _) = build(&without);
    let count_without: usize = model_without
        .trainable_vars()
        .iter()
        .map(|v| v.elem_count())
        .sum();
    assert_eq!(count_without, 12_333_152 - 68_352);
    assert_eq!(shape("aspp.convs.1.0.0.weight"), [512, 1, 3, 3]);
    assert_eq!(shape("aspp.convs.1.0.1.weight"), [256, 512, 1, 1]);
    assert_eq!(shape("decoder.fuse.0.0.weight"), [304, 1, 3, 3]);
    assert_eq!(shape("decoder.fuse.0.1.weight"), [256, 304, 1, 1]);
    assert_eq!(cfg.atrous_rates(), [12, 24, 36]);

    // Separable DeepLabV3: only the ASPP changes; the head's 3×3 conv stays dense.
    let v3 = ModelConfig {
        separable: true,
        ..thin(Backbone::Resnet18, Head::DeepLabV3, 16)
    };
    let (model, _) = build(&v3);
    let names: Vec<&str> = model.named_vars().iter().map(|v| v.name.as_str()).collect();
    assert!(
        names.contains(&"classifier.0.convs.2.0.0.weight"),
        "{names:?}"
    );
    assert!(names.contains(&"classifier.1.weight"), "{names:?}");
    let y = model
        .forward_t(&fill("input.shape", &[2, 3, 35, 50]), true)
        .unwrap();
    assert_eq!(y.dims(), [2, 3, 35, 50]);
}

#[test]
fn varmap_save_and_load_round_trip_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let cfg = thin(Backbone::Resnet18, Head::DeepLabV3, 16);
    let (a, vm_a) = build(&cfg);
    let x = fill("input.rt", &[2, 3, 32, 32]);
    a.forward_t(&x, true).unwrap(); // move the running statistics away from their init
    vm_a.save(&path).unwrap();
    let (b, mut vm_b) = build(&ModelConfig {
        init_seed: 3,
        ..cfg
    });
    vm_b.load(&path).unwrap();
    assert_eq!(values(&a), values(&b));
    let ya = a
        .forward_t(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let yb = b
        .forward_t(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(ya, yb);
}

#[test]
fn invalid_config_and_non_varmap_builder_are_errors() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bad = ModelConfig {
        output_stride: 12,
        ..ModelConfig::default()
    };
    match DeepLab::new(&bad, vb) {
        Err(ModelError::Config { field, .. }) => assert_eq!(field, "output_stride"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let e = DeepLab::new(&thin(Backbone::Resnet18, Head::DeepLabV3, 16), vb).unwrap_err();
    assert!(matches!(e, ModelError::NotAVarMap { .. }), "{e}");
}

#[test]
fn multi_grid_changes_layer4_only() {
    let base = thin(Backbone::Resnet18, Head::DeepLabV3, 16);
    let (a, _) = build(&base);
    let (b, _) = build(&ModelConfig {
        multi_grid: Some(vec![1, 2]),
        ..base
    });
    let x = fill("input.mg", &[1, 3, 64, 64]);
    let fa = a.backbone_features(&x, false).unwrap();
    let fb = b.backbone_features(&x, false).unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&fa.low_level), v(&fb.low_level));
    assert_eq!(fa.out.dims(), fb.out.dims());
    assert_ne!(v(&fa.out), v(&fb.out));
}

#[test]
fn f32_training_gradients_match_f64_in_the_backbone() {
    // Self-consistency of the f32 training path (fused CPU BatchNorm, CPU max-pool) with the f64
    // portable path, which the parity goldens tie to PyTorch. Uses candle's convolution for both
    // (the CPU convolution op is checked by its own tests). On this input no pre-activation lies
    // within f32 rounding of zero; if a change of rounding ever flips a ReLU mask here, the
    // error jumps to ~1/sqrt(values per channel): see docs/models.md, "Precision".
    // The choice of convolution is scoped to this test's thread: tests running beside it keep
    // the CPU kernels.
    let candle_conv = CpuKernels {
        conv: false,
        ..CpuKernels::ALL
    };
    let cfg = ModelConfig {
        n_classes: 3,
        backbone_width: 16,
        ..ModelConfig::default()
    };
    let run = |dtype: DType| {
        let (m, _vm) = common::build_dtype(&cfg, dtype);
        common::fill_model(&m);
        let x = fill("input.deeplab", &[2, 3, 64, 80])
            .to_dtype(dtype)
            .unwrap();
        let f = m.backbone_features(&x, true).unwrap();
        let g = fill("grad.deeplab", f.out.dims()).to_dtype(dtype).unwrap();
        let grads = (&f.out * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        m.named_vars()
            .iter()
            .filter_map(|v| {
                grads.get(&v.var).map(|t| {
                    let d: Vec<f64> = t
                        .flatten_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    (v.name.clone(), d)
                })
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = with_cpu_kernels(candle_conv, || (run(DType::F32), run(DType::F64)));
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 60, "{} gradients", a.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let scale = y.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let err = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
            / scale;
        assert!(
            err < 1e-4,
            "{name}: f32 gradient is {err:.1e} (relative) away from f64"
        );
    }
}

/// Mean cross-entropy of a fresh model's training-mode logits on a fixed input, against labels
/// that cycle through the classes.
fn first_cross_entropy(cfg: &ModelConfig) -> f32 {
    let (model, _) = build(cfg);
    let (n, h, w, k) = (2, 64, 64, cfg.n_classes);
    let logits = model
        .forward_t(&fill("input.x", &[n, 3, h, w]), true)
        .unwrap();
    let flat = logits
        .permute((0, 2, 3, 1))
        .unwrap()
        .reshape((n * h * w, k))
        .unwrap();
    let labels: Vec<u32> = (0..n * h * w).map(|i| (i * 7 % k) as u32).collect();
    let labels = Tensor::from_vec(labels, n * h * w, &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(&flat, &labels)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn pytorch_default_and_paper_code_initialisations_start_near_chance_and_fan_out_does_not() {
    // A well-scaled classifier starts near ln 16 ≈ 2.77; PyTorch's
    // smp.DeepLabV3Plus("resnet18", classes=16) on random 2×3×64×64 inputs starts at about 2.8.
    let chance = (16f32).ln();
    let ce = |init| {
        first_cross_entropy(&ModelConfig {
            n_classes: 16,
            init,
            ..ModelConfig::default().smp_layout()
        })
    };
    let smp = ce(InitScheme::PytorchDefault);
    let paper = ce(InitScheme::PaperCode);
    let fan_out = ce(InitScheme::KaimingFanOut);
    eprintln!("first CE: smp {smp}, paper_code {paper}, kaiming_fan_out {fan_out}");
    assert!((smp - chance).abs() < 0.25, "pytorch_default {smp}");
    assert!((paper - chance).abs() < 0.5, "paper_code {paper}");
    assert!(fan_out > chance + 1.5, "kaiming_fan_out {fan_out}");
}
