//! Sliding-window and test-time-augmented inference through a real (tiny) DeepLab: one window
//! covering the image is whole-image inference bit for bit, and flip averaging of a
//! mirror-symmetric input through a mirror-equivariant model is plain inference.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use recallseg_models::{DeepLab, ModelConfig};
use recallseg_trainer::inference::{InferenceConfig, InferenceMode};

fn tiny(cfg: ModelConfig) -> (DeepLab, VarMap) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let cfg = ModelConfig {
        n_classes: 3,
        backbone_width: 4,
        head_channels: 8,
        low_level_channels: 4,
        init_seed: 5,
        ..cfg
    };
    (DeepLab::new(&cfg, vb).unwrap(), vm)
}

fn input(h: usize, w: usize) -> Tensor {
    let v: Vec<f32> = (0..3 * h * w)
        .map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn one_window_covering_the_image_is_whole_image_inference() {
    let (model, _vm) = tiny(ModelConfig::default());
    let x = input(32, 48);
    let whole = InferenceConfig::default().plan((32, 48), false).unwrap();
    let slide = InferenceConfig {
        mode: InferenceMode::Slide,
        ..InferenceConfig::default()
    }
    .plan((32, 48), false)
    .unwrap();
    assert_eq!(slide.window(), Some(((32, 48), (21, 32))));
    let a = whole.model_logits(&model, &x).unwrap();
    let b = slide.model_logits(&model, &x).unwrap();
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // Two overlapping windows differ from the whole image (the model sees less context) but
    // keep the shape.
    let two = InferenceConfig {
        mode: InferenceMode::Slide,
        window: Some([32, 32]),
        stride: Some([32, 16]),
        ..InferenceConfig::default()
    }
    .plan((32, 48), false)
    .unwrap();
    let c = two.model_logits(&model, &x).unwrap();
    assert_eq!(c.dims(), a.dims());
    assert!(max_abs_diff(&a, &c) > 1e-4);
}

/// Every kernel made mirror-symmetric along the width: on inputs whose width is 2^k + 1 (each
/// stride-2 layer then samples columns symmetric about the centre) the network commutes with
/// a horizontal flip, up to the order of floating-point sums.
fn symmetrise(vm: &VarMap) {
    for var in vm.all_vars() {
        let t = var.as_tensor();
        if t.rank() == 4 && t.dim(3).unwrap() > 1 {
            let s = ((t + t.flip(&[3]).unwrap()).unwrap() * 0.5).unwrap();
            var.set(&s).unwrap();
        }
    }
}

#[test]
fn flip_averaging_of_a_symmetric_input_is_plain_inference() {
    for cfg in [
        ModelConfig::default(),
        ModelConfig {
            n_classes: 3,
            ..ModelConfig::default()
        }
        .smp_layout(),
    ] {
        let align = cfg.align_corners;
        let (model, vm) = tiny(cfg);
        symmetrise(&vm);
        let x = input(24, 33);
        let x = ((&x + x.flip(&[3]).unwrap()).unwrap() * 0.5).unwrap();
        let plain = InferenceConfig::default()
            .plan((24, 33), align)
            .unwrap()
            .model_logits(&model, &x)
            .unwrap();
        // The setup holds: the plain logits are themselves mirror-symmetric.
        let d = max_abs_diff(&plain, &plain.flip(&[3]).unwrap());
        assert!(d < 1e-5, "model not mirror-equivariant: {d}");
        let flip = InferenceConfig {
            hflip: true,
            ..InferenceConfig::default()
        }
        .plan((24, 33), align)
        .unwrap()
        .model_logits(&model, &x)
        .unwrap();
        let d = max_abs_diff(&plain, &flip);
        assert!(d < 1e-5, "flip TTA moved the logits by {d}");
        // The same through sliding windows placed symmetrically (33 = 3 windows of 17, stride 8).
        let slide = |hflip| {
            InferenceConfig {
                mode: InferenceMode::Slide,
                window: Some([24, 17]),
                stride: Some([24, 8]),
                hflip,
                ..InferenceConfig::default()
            }
            .plan((24, 33), align)
            .unwrap()
            .model_logits(&model, &x)
            .unwrap()
        };
        let d = max_abs_diff(&slide(false), &slide(true));
        assert!(d < 1e-5, "sliding flip TTA moved the logits by {d}");
    }
}
