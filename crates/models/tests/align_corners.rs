//! `ModelConfig::align_corners` reaches both bilinear upsamplings of DeepLabV3+ (decoder input and
//! final logits) and the final one of DeepLabV3. The resize kernel itself is checked against
//! PyTorch's `F.interpolate` for both settings in `tests/ops.rs`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use recallseg_models::{Backbone, DeepLab, Head, ModelConfig};

fn logits(head: Head, align_corners: bool, x: &Tensor) -> Vec<f32> {
    let cfg = ModelConfig {
        backbone: Backbone::Resnet18,
        head,
        output_stride: 16,
        n_classes: 3,
        backbone_width: 4,
        head_channels: 8,
        low_level_channels: 4,
        align_corners,
        ..ModelConfig::default()
    };
    let vm = VarMap::new();
    let model = DeepLab::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    model
        .forward_t(x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn align_corners_changes_the_upsampled_logits_only_through_the_resize() {
    let x = Tensor::randn(0f32, 1.0, (1, 3, 45, 61), &Device::Cpu).unwrap();
    for head in [Head::DeepLabV3Plus, Head::DeepLabV3] {
        let off = logits(head, false, &x);
        let on = logits(head, true, &x);
        assert_eq!(off.len(), 3 * 45 * 61);
        // Same weights (same init seed), different sampling grid: the logits differ, and the
        // same setting twice is bitwise the same.
        let max_diff = off
            .iter()
            .zip(&on)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff > 1e-4, "{head:?}: align_corners had no effect");
        assert_eq!(on, logits(head, true, &x));
    }
}

#[test]
fn configs_written_before_the_option_read_as_false() {
    let mut v = serde_json::to_value(ModelConfig::default()).unwrap();
    v.as_object_mut().unwrap().remove("align_corners");
    let c: ModelConfig = serde_json::from_value(v).unwrap();
    assert!(!c.align_corners);
}
