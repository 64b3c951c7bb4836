//! Parity with PyTorch reference implementations on identical weights (filled by the formula of
//! `tests/golden/make_goldens.py`): torchvision's ResNet-18, timm's dilated ResNet-18 (output
//! stride 8 and 16), torchvision's DeepLabV3-ResNet-50 (output stride 8) and a plain-PyTorch
//! DeepLabV3+ on timm's ResNet-18 (output stride 16), dense and with segmentation_models_pytorch's
//! depthwise-separable ASPP and decoder, in evaluation and training mode (logits, gradients,
//! BatchNorm running statistics).

mod common;

use candle_core::{DType, Tensor};
use common::{assert_matches, build, build_dtype, fill, fill_model, golden, var_named};
use recallseg_models::{Backbone, Head, ModelConfig};

const TOL: f64 = 1e-4;

fn backbone_cfg(output_stride: usize) -> ModelConfig {
    ModelConfig {
        output_stride,
        n_classes: 2,
        ..ModelConfig::default()
    }
}

#[test]
fn resnet18_matches_torchvision_and_timm() {
    let g = golden("resnet.json");
    let (model, _vm) = build(&backbone_cfg(32));
    fill_model(&model);
    let x = fill("input.resnet", &[1, 3, 64, 64]);
    let f = model.backbone_features(&x, false).unwrap();
    let r = &g["torchvision_resnet18"];
    assert_matches(
        "torchvision resnet18 layer1",
        &f.low_level,
        &r["layer1"],
        TOL,
    );
    assert_matches("torchvision resnet18 layer4", &f.out, &r["layer4"], TOL);
    for os in [8, 16] {
        let (model, _vm) = build(&backbone_cfg(os));
        fill_model(&model);
        let x = fill("input.resnet", &[1, 3, 48, 48]);
        let f = model.backbone_features(&x, false).unwrap();
        let key = format!("timm_resnet18_os{os}");
        assert_matches(&key, &f.out, &g[key.as_str()]["layer4"], TOL);
    }
}

#[test]
fn deeplabv3_resnet50_matches_torchvision() {
    let g = golden("deeplabv3_r50_os8.json");
    let cfg = ModelConfig {
        backbone: Backbone::Resnet50,
        head: Head::DeepLabV3,
        output_stride: 8,
        n_classes: 5,
        ..ModelConfig::default()
    };
    let (model, _vm) = build(&cfg);
    // Same names as torchvision's deeplabv3_resnet50 state dict.
    let names: Vec<&str> = model.named_vars().iter().map(|v| v.name.as_str()).collect();
    for n in [
        "backbone.layer4.2.conv3.weight",
        "classifier.0.convs.4.1.weight",
        "classifier.0.project.1.running_var",
        "classifier.4.bias",
    ] {
        assert!(names.contains(&n), "missing {n}");
    }
    fill_model(&model);
    let x = fill("input.deeplab", &[1, 3, 40, 40]);
    let y = model.forward_t(&x, false).unwrap();
    let w = assert_matches("deeplabv3 r50 logits", &y, &g["logits"], TOL);
    eprintln!("deeplabv3 r50 logits: worst relative error {w:.2e}");
}

#[test]
fn deeplabv3plus_resnet18_matches_reference_in_eval_and_training() {
    let cfg = ModelConfig {
        n_classes: 6,
        dropout: 0.0,
        decoder_dropout: [0.0, 0.0],
        ..ModelConfig::default()
    };
    check_deeplabv3plus("deeplabv3plus_r18_os16.json", &cfg);
}

#[test]
fn separable_deeplabv3plus_matches_smp_layers_in_eval_and_training() {
    let cfg = ModelConfig {
        n_classes: 6,
        dropout: 0.0,
        decoder_dropout: [0.0, 0.0],
        separable: true,
        decoder_convs: 1,
        aspp_rates: Some([1, 2, 3]),
        ..ModelConfig::default()
    };
    let (model, _vm) = build(&cfg);
    let names: Vec<&str> = model.named_vars().iter().map(|v| v.name.as_str()).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("decoder.fuse.4")),
        "{names:?}"
    );
    check_deeplabv3plus("deeplabv3plus_r18_os16_separable.json", &cfg);
}

/// Compares a DeepLabV3+ built from `cfg` with the reference of `file` (`make_goldens.py`):
/// f32 logits in evaluation and training mode, the f32 step's gradients and running statistics,
/// and a float64 training step tightly.
fn check_deeplabv3plus(file: &str, cfg: &ModelConfig) {
    let g = golden(file);
    let cfg = cfg.clone();
    let (model, _vm) = build(&cfg);
    fill_model(&model);
    let x = fill("input.deeplab", &[2, 3, 64, 80]);
    let y = model.forward_t(&x, false).unwrap();
    let w = assert_matches("v3+ eval logits", &y, &g["eval_logits"], TOL);
    eprintln!("v3+ eval logits: worst relative error {w:.2e}");

    let y = model.forward_t(&x, true).unwrap();
    let w = assert_matches("v3+ train logits", &y, &g["train_logits"], TOL);
    eprintln!("v3+ train logits: worst relative error {w:.2e}");
    // The f32 step (production path: fused CPU BatchNorm, CPU convolution op) against the f64
    // reference: running statistics tightly; gradients tightly for the classifier, grossly
    // elsewhere: a ReLU mask flipping at a pre-activation within f32 rounding of zero moves a
    // BatchNorm channel's gradient by ~1/sqrt(values per channel) (docs/models.md, "Precision").
    let by_name = |n: &str| var_named(&model, n);
    for (name, want) in g["running_stats_f64"].as_object().unwrap() {
        assert_matches(
            &format!("f32 running stat {name}"),
            &by_name(name),
            want,
            TOL,
        );
    }
    let gy = fill("grad.deeplab", y.dims());
    let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, want) in g["grads_f64"].as_object().unwrap() {
        let grad: &Tensor = grads.get(&by_name(name)).unwrap();
        let tol = if name.starts_with("classifier.") {
            TOL
        } else {
            1e-1
        };
        let worst = assert_matches(&format!("f32 grad {name}"), grad, want, tol);
        eprintln!("f32 grad {name}: worst relative error {worst:.2e}");
    }

    // One training step in f64 (the reference too): logits, gradients, running statistics.
    let (model, _vm) = build_dtype(&cfg, DType::F64);
    fill_model(&model);
    let x = x.to_dtype(DType::F64).unwrap();
    let y = model.forward_t(&x, true).unwrap();
    assert_matches("v3+ train logits f64", &y, &g["train_logits_f64"], 1e-9);
    let gy = fill("grad.deeplab", y.dims()).to_dtype(DType::F64).unwrap();
    let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    let by_name = |n: &str| var_named(&model, n);
    for (name, want) in g["grads_f64"].as_object().unwrap() {
        let var = by_name(name);
        let grad: &Tensor = grads
            .get(&var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_matches(&format!("grad {name}"), grad, want, 1e-9);
    }
    for (name, want) in g["running_stats_f64"].as_object().unwrap() {
        assert_matches(&format!("running stat {name}"), &by_name(name), want, 1e-9);
    }
}
